#!/bin/sh
# apt-install.sh NAME REQUIRED WITHOUT PACKAGE...
# Install the Debian packages not yet installed. Without root or apt-get it says what is
# missing and what that means (WITHOUT) and exits 0. If apt-get fails, it exits 1 when
# REQUIRED is "required", else it says so and exits 0. Another apt may hold the lock
# (unattended upgrades): it waits for it rather than fail.
set -eu
name=$1 required=$2 without=$3
shift 3
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$name: cannot install$missing (need root and apt-get); $without" >&2
    exit 0
fi
echo "$name: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || true
# shellcheck disable=SC2086
if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null; then
    echo "$name: apt-get could not install$missing; $without" >&2
    [ "$required" = required ] && exit 1
fi
exit 0
