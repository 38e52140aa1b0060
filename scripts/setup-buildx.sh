#!/usr/bin/env bash
# Builds docker buildx, pinned, from its Go module (github.com/docker/buildx,
# through the Go module proxy: nothing prebuilt is downloaded) for the guard
# test that runs BuildKit builds through `nestdock guard` (tests/guard.rs):
# buildx's docker driver talks to dockerd's own BuildKit over the hijacked
# `/grpc` and `/session` endpoints, as `docker build` of Docker 23+ does.
# Prints the binary's path on standard output.
#
# Built once (a few minutes): a stamp with the version makes a later run a
# no-op that only prints the path; concurrent runs wait on a lock.
#
# Environment: NESTDOCK_BUILDX_DIR (default /var/tmp/nestdock-buildx, outside
# target/ so that `cargo clean` keeps it).
set -euo pipefail

dir=${NESTDOCK_BUILDX_DIR:-/var/tmp/nestdock-buildx}
# The pinned release; bump it here only.
version=v0.38.2
bin=$dir/bin/buildx
stamp=$dir/.nestdock-buildx

built() {
	[[ -x $bin && -f $stamp && "$(cat "$stamp")" == "$version" ]]
}

if built; then
	echo "$bin"
	exit 0
fi
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if built; then
	echo "$bin"
	exit 0
fi

command -v go >/dev/null || {
	echo "setup-buildx: the go command is needed to build buildx" >&2
	exit 1
}
echo "setup-buildx: building github.com/docker/buildx/cmd/buildx@$version (once, a few minutes)" >&2
rm -f "$stamp"
if ! GOBIN=$dir/bin GOFLAGS=-mod=mod go install "github.com/docker/buildx/cmd/buildx@$version" >"$dir/build.log" 2>&1; then
	tail -20 "$dir/build.log" >&2
	echo "setup-buildx: go install failed (log: $dir/build.log)" >&2
	exit 1
fi
echo "$version" >"$stamp"
echo "$bin"
