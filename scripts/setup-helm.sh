#!/usr/bin/env bash
# Builds a pinned helm from its Go module for the chart tests and the
# manifest renderer, and prints the path of the binary on standard output.
#
# Nothing prebuilt is downloaded: `go install helm.sh/helm/v3/cmd/helm@VERSION`
# fetches the module's source through the Go module proxy and compiles it into
# <repo>/target/helm/bin. A cold build takes several minutes on two cores
# (see the chart section of README.md for the measured figure); afterwards
# a stamp makes this a no-op that only prints the path.
#
# Idempotent and safe to run concurrently: test binaries (and people) may
# start it at the same time; one builds, the others wait on a lock.
#
# Environment: GO (default go), NESTDOCK_HELM_DIR (default <repo>/target/helm).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${NESTDOCK_HELM_DIR:-$root/target/helm}
go=${GO:-go}
# Go's usual install location, for shells whose PATH lacks it.
if ! command -v "$go" >/dev/null 2>&1 && [[ -z ${GO:-} && -x /usr/local/go/bin/go ]]; then
    go=/usr/local/go/bin/go
fi

# The pinned helm release, and the Kubernetes release of the client-go it
# builds with (`go list -m k8s.io/client-go` in helm's module: v0.37 is 1.37).
# Bump them together, here only.
version='v3.22.0'
k8s_major=1
k8s_minor=37
module='helm.sh/helm/v3/cmd/helm'
want="$module@$version k8s=$k8s_major.$k8s_minor"

helm=$dir/bin/helm
stamp=$dir/.nestdock-helm
installed() {
    [[ -x $helm && -f $stamp && "$(cat "$stamp")" == "$want" ]]
}

if installed; then
    echo "$helm"
    exit 0
fi

if ! command -v "$go" >/dev/null 2>&1; then
    echo "setup-helm: $go not found; a Go toolchain is needed to build helm" >&2
    exit 1
fi

mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if installed; then
    echo "$helm"
    exit 0
fi

echo "setup-helm: building $module@$version into $dir/bin (a few minutes, once)" >&2
rm -rf "$dir/bin" "$stamp"
start=$(date +%s)
# GOTOOLCHAIN=local: use the installed Go, never fetch another toolchain.
# CGO_ENABLED=0: a static binary, no C compiler involved.
# The ldflags are those of helm's own Makefile: `helm version` reports the
# release, and `helm template` and `helm lint` assume that Kubernetes release
# (without them, 1.20, which the chart's kubeVersion refuses).
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for pkg in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=$k8s_major"
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
done
if ! GOBIN="$dir/bin" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    nice -n 10 "$go" install -trimpath -ldflags "$ldflags" \
    "$module@$version" >&2; then
    rm -rf "$dir/bin"
    echo "setup-helm: go install $module@$version failed (is the Go module proxy reachable?)" >&2
    exit 1
fi
got=$("$helm" version --template '{{.Version}}' 2>/dev/null || true)
if [[ $got != "$version" ]]; then
    rm -rf "$dir/bin"
    echo "setup-helm: expected helm $version, the build reports '${got:-nothing}'" >&2
    exit 1
fi
printf '%s' "$want" >"$stamp"
echo "setup-helm: helm $got built in $(( $(date +%s) - start ))s" >&2
echo "$helm"
