#!/usr/bin/env bash
# Builds the e2e suite's test control plane (tests/kube: embedded etcd and
# kube-apiserver from the upstream Go modules, see tests/kube/main.go) and
# prints the path of the binary on standard output.
#
# Nothing prebuilt is downloaded: the Go module proxy serves the sources and
# the machine's Go compiles them (GOTOOLCHAIN=local: no toolchain download
# either). The first build takes a while (see README, "End-to-end suite");
# after that, Go's own caches make a rebuild quick, and a stamp keyed on the
# sha256 of go.mod, go.sum, the Go sources and `go version` skips the build
# entirely when nothing changed. Test binaries (and people) may run it at the
# same time: one builds, the others wait on a lock and then see the stamp.
#
# Environment: NESTDOCK_KUBE_OUT (default <repo>/target/kube), GO (default go).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/tests/kube
out=${NESTDOCK_KUBE_OUT:-$root/target/kube}
go=${GO:-go}
export GOTOOLCHAIN=local GOFLAGS=${GOFLAGS:--buildvcs=false}

if ! command -v "$go" >/dev/null 2>&1; then
    echo "build-kube: $go not found: the e2e suite builds kube-apiserver with Go (1.26 or newer)" >&2
    exit 1
fi

bin=$out/kube-testplane
stamp_file=$out/kube-testplane.stamp
stamp() {
    {
        "$go" version
        sha256sum <"${BASH_SOURCE[0]}"
        cd "$src" && sha256sum go.mod go.sum ./*.go
    } | sha256sum | cut -d' ' -f1
}
want=$(stamp)
built() {
    [[ -x $bin && -f $stamp_file && "$(cat "$stamp_file")" == "$want" ]]
}

if built; then
    echo "$bin"
    exit 0
fi

mkdir -p "$out"
exec 9>"$out/build.lock"
flock 9
if built; then
    echo "$bin"
    exit 0
fi

echo "build-kube: building the test control plane (k8s.io/kubernetes, see tests/kube/go.mod);" \
    "the first build takes 10-20 minutes on 2 cores" >&2
start=$(date +%s)
(
    cd "$src"
    # The version the API server reports (GET /version, what nestdock reads to
    # choose native sidecars, and kubectl checks): the release in go.mod, set
    # the way Kubernetes' own build does. Without it: v0.0.0-master.
    kver=$("$go" list -m -f '{{.Version}}' k8s.io/kubernetes)
    major=${kver#v}
    major=${major%%.*}
    minor=${kver#v*.}
    minor=${minor%%.*}
    pkg=k8s.io/component-base/version
    nice -n 10 "$go" build -o "$bin.tmp" -ldflags "-X $pkg.gitVersion=$kver \
        -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" .
) >&2
mv -f "$bin.tmp" "$bin"
printf '%s' "$want" >"$stamp_file"
echo "build-kube: built $bin in $(($(date +%s) - start)) s" >&2
echo "$bin"
