#!/usr/bin/env bash
# What tests/registry_cache.rs runs besides the daemon root filesystem: the
# registry (Debian's docker-registry package, the distribution registry 2.x
# that the registry:2 image ships) for the stand-in Docker Hub and for the
# pull-through cache, and Debian's busybox-static, the one file of the image
# the test pushes. Both packages are unpacked (dpkg-deb -x) into a directory,
# not installed: installing docker-registry would also start it as a system
# service listening on port 5000.
#
# Everything comes from Debian's archive; nothing prebuilt is downloaded from
# elsewhere. Unpacked once: a stamp keyed on this script makes later runs
# instant. `.ci/run` calls it as a step of its own; the test calls it too.
#
#   scripts/setup-registry.sh            # prints the directory
#   NESTDOCK_IMAGES_DIR=/var/tmp/x scripts/setup-registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${NESTDOCK_IMAGES_DIR:-/var/tmp/nestdock-images}
OUT="$DIR/registry"
STAMP="$DIR/registry.stamp"
want=$(sha256sum <"$0" | cut -d' ' -f1)

log() { printf '== setup-registry: %s\n' "$*" >&2; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] &&
	[ -x "$OUT/usr/bin/docker-registry" ] && [ -x "$OUT/bin/busybox" ]; then
	echo "$OUT"
	exit 0
fi

mkdir -p "$DIR"
work="$OUT.tmp"
rm -rf "$work" "$STAMP"
mkdir -p "$work/debs"
log "downloading docker-registry and busybox-static from Debian's archive"
(cd "$work/debs" && apt-get download docker-registry busybox-static >/dev/null 2>&1) || {
	apt-get update -qq >/dev/null
	(cd "$work/debs" && apt-get download docker-registry busybox-static >/dev/null)
}
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$work"
done
rm -rf "$work/debs"
"$work/usr/bin/docker-registry" --version >&2
rm -rf "$OUT"
mv "$work" "$OUT"
echo "$want" >"$STAMP"
echo "$OUT"
