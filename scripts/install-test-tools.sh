#!/bin/sh
# Install the Debian packages the test suite drives. Tests that need one of these
# skip with a stated reason when it is missing and cannot be installed (no root,
# no apt); CI runs as root, so there they all run.
set -eu
# redis-tools: a Redis built with TLS (as redis-check-rdb; no service comes with it), for
# the TLS recipe of docs/deployment.md (tests/test_valkey.py).
PACKAGES="golang-go golang-golang-x-mod-dev zbar-tools poppler-utils bind9-dnsutils curl chromium fonts-dejavu-core fonts-wqy-microhei redis-tools"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: cannot install$missing (need root and apt-get); tests that need them will skip" >&2
    exit 0
fi
echo "install-test-tools: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
