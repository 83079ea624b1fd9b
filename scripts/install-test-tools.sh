#!/bin/sh
# Install the Debian packages the test suite drives. Tests that need one of these
# skip with a stated reason when it is missing and cannot be installed (no root,
# no apt); CI runs as root, so there they all run.
#
# redis-tools: a Redis built with TLS (as redis-check-rdb; no service comes with it), for
# the TLS recipe of docs/deployment.md (tests/test_valkey.py).
# unbound: a validating resolver for the DNS front's DNSSEC (tests/test_dnssec.py runs its
# own). On a host with systemd, Debian also starts unbound.service on port 53; stop it with
# `systemctl disable --now unbound` if that host needs the port. (dnsviz is not used: its
# probe hangs against loopback name servers, see docs/dns.md.)
exec sh "$(dirname "$0")/apt-install.sh" install-test-tools required \
    "tests that need them will skip" \
    golang-go golang-golang-x-mod-dev zbar-tools poppler-utils bind9-dnsutils curl chromium \
    fonts-dejavu-core fonts-wqy-microhei redis-tools unbound
