#!/usr/bin/env bash
# Builds what the real-node suite (tests/e2e_node.rs) runs besides the
# control plane (scripts/build-kube.sh builds kube-testplane, which also runs
# the kubelet, kube-scheduler, kube-controller-manager and kube-proxy):
#
# - containerd 2.4 (containerd, containerd-shim-runc-v2, ctr) with `go
#   install` from the Go module proxy: kubelet 1.37 needs a runtime with the
#   CRI RuntimeConfig call, which Debian bookworm's containerd 1.6 lacks;
# - Debian's runc and CNI plugins (containernetworking-plugins), iptables for
#   kube-proxy, busybox-static;
# - the images, as one OCI archive that the node imports into containerd
#   (nothing can be pulled here):
#     nestdock.test/pause:1              the sandbox (tests/kube/pause)
#     nestdock.test/docker:dind          Debian trixie's dockerd 26, the
#     nestdock.test/docker:dind-rootless   entrypoint double, as the docker:dind
#                                          images are configured (below)
#     nestdock.test/build:1              the same root filesystem for build
#                                          containers, with /images/tiny.tar and
#                                          testcontainers-python (PyPI) in
#                                          /opt/testcontainers
#     nestdock:0.1.0                     nestdock's release binary, as the
#                                          Dockerfile's image (uid 65532)
#   and in the build image, for `docker load` inside a pod: /images/tiny.tar
#   (nestdock.test/tiny:1, busybox) and /images/ryuk.tar (nestdock.test/ryuk:1,
#   the suite's double of Testcontainers' Ryuk, tests/kube/ryuk).
#
# Everything is built from source or Debian's archive. Stamps keep the
# containerd binaries and the base layer; a changed nestdock binary re-makes
# only the archive. Prints the output directory:
#   OUT/bin/{containerd,containerd-shim-runc-v2,ctr}   OUT/images/node.tar
#
# Environment: NESTDOCK_NODE_OUT (default /var/tmp/nestdock-node).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${NESTDOCK_NODE_OUT:-/var/tmp/nestdock-node}
containerd_version=v2.4.2
export GOTOOLCHAIN=local GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf '== build-node: %s\n' "$*" >&2; }
mkdir -p "$out/bin" "$out/images" "$out/cache"
exec 9>"$out/build.lock"
flock 9

missing=()
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
command -v runc >/dev/null || missing+=(runc)
if ((${#missing[@]})); then
	log "installing ${missing[*]} (Debian)"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# containerd from its Go module.
if [ "$(cat "$out/bin/containerd.stamp" 2>/dev/null)" != "$containerd_version $(go version)" ]; then
	log "building containerd $containerd_version from the Go module proxy (a few minutes, once)"
	rm -f "$out/bin/containerd.stamp"
	(cd "$out" && GOBIN="$out/bin" nice -n 5 go install \
		"github.com/containerd/containerd/v2/cmd/containerd@$containerd_version" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd_version" \
		"github.com/containerd/containerd/v2/cmd/ctr@$containerd_version") >&2
	echo "$containerd_version $(go version)" >"$out/bin/containerd.stamp"
fi

rootfs=$(bash "$root/scripts/build-daemon-rootfs.sh")
nestdock=$(bash "$root/scripts/build-release.sh")

work=$(mktemp -d "$out/cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

(cd "$root/tests/kube" && CGO_ENABLED=0 go build -ldflags='-s -w' -o "$work/pause/pause" ./pause &&
	CGO_ENABLED=0 go build -ldflags='-s -w' -o "$work/ryuk/ryuk" ./ryuk)

# An OCI image layout under $work/oci: content-addressed blobs, one manifest
# per image, and index.json naming them (io.containerd.image.name, the name
# ctr gives the image on import).
oci=$work/oci
mkdir -p "$oci/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
index_entries=()
docker_entries=()

# blob FILE: moves FILE into the layout and prints "sha256:DIGEST SIZE".
blob() {
	local digest size
	digest=$(sha256sum "$1" | cut -d' ' -f1)
	size=$(stat -c %s "$1")
	mv -f "$1" "$oci/blobs/sha256/$digest"
	echo "sha256:$digest $size"
}

# pack DIR FILE: DIR's contents as an uncompressed layer (owners numeric,
# file capabilities kept, names sorted).
pack() {
	tar --numeric-owner --xattrs --xattrs-include='security.capability' \
		--sort=name -C "$1" -cf "$2" .
}

# layer_of DIR: DIR as a layer of the layout; prints "sha256:DIGEST SIZE".
layer_of() {
	pack "$1" "$work/layer.tar"
	blob "$work/layer.tar"
}

# Layers kept between runs in $out/cache, each with the key it was made for:
# cached NAME KEY succeeds when NAME.tar is current; store_cached NAME KEY DIR
# packs DIR as NAME.tar; use_cached NAME links it into the layout and prints
# "sha256:DIGEST SIZE".
cached() { [ "$(cat "$out/cache/$1.key" 2>/dev/null)" = "$2" ]; }
store_cached() {
	pack "$3" "$out/cache/$1.tar"
	sha256sum "$out/cache/$1.tar" | cut -d' ' -f1 >"$out/cache/$1.sha256"
	echo "$2" >"$out/cache/$1.key"
}
use_cached() {
	local digest
	digest=$(cat "$out/cache/$1.sha256")
	ln "$out/cache/$1.tar" "$oci/blobs/sha256/$digest" 2>/dev/null ||
		cp "$out/cache/$1.tar" "$oci/blobs/sha256/$digest"
	echo "sha256:$digest $(stat -c %s "$out/cache/$1.tar")"
}

# image NAME CONFIG LAYER...: CONFIG is the image config's "config" object
# (JSON); each LAYER is "sha256:DIGEST SIZE" from layer_of.
image() {
	local name=$1 config=$2 diff_ids="" layers="" layer_paths="" d s
	shift 2
	for l in "$@"; do
		read -r d s <<<"$l"
		diff_ids+="${diff_ids:+,}\"$d\""
		layer_paths+="${layer_paths:+,}\"blobs/sha256/${d#sha256:}\""
		layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$d\",\"size\":$s}"
	done
	printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]}}' \
		"$config" "$diff_ids" >"$work/config.json"
	read -r d s < <(blob "$work/config.json")
	docker_entries+=("{\"Config\":\"blobs/sha256/${d#sha256:}\",\"RepoTags\":[\"$name\"],\"Layers\":[$layer_paths]}")
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
		"$d" "$s" "$layers" >"$work/manifest.json"
	read -r d s < <(blob "$work/manifest.json")
	index_entries+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$d\",\"size\":$s,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\"}}")
}

# archive FILE [docker]: writes the layout as a tar and starts a new one. The
# tar also has docker save's manifest.json (as docker save writes since 25),
# so that `docker load` of any version reads it as well as `ctr images
# import`; with `docker`, only that (docker save of a classic image store, the
# archive CI jobs cache and load: the guard reads from its Config which image
# each tag gets).
archive() {
	local IFS=, files=(manifest.json blobs)
	printf '[%s]' "${docker_entries[*]}" >"$oci/manifest.json"
	if [ "${2:-}" != docker ]; then
		printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
			"${index_entries[*]}" >"$oci/index.json"
		files=(oci-layout index.json "${files[@]}")
	fi
	tar -C "$oci" -cf "$1.tmp" "${files[@]}" && mv -f "$1.tmp" "$1"
	rm -rf "$oci/blobs" && mkdir -p "$oci/blobs/sha256"
	index_entries=()
	docker_entries=()
}

path_env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'

# tiny: busybox alone, for `docker load` and `docker run` inside a pod.
mkdir -p "$work/tiny/bin"
cp /bin/busybox "$work/tiny/bin/busybox"
for cmd in sh echo true cat sleep ls httpd nc wget; do ln -s busybox "$work/tiny/bin/$cmd"; done
image nestdock.test/tiny:1 "{\"Env\":[$path_env],\"Cmd\":[\"sh\"]}" "$(layer_of "$work/tiny")"
mkdir -p "$work/images-dir/images"
archive "$work/images-dir/images/tiny.tar" docker
# ryuk: the suite's double of Testcontainers' Ryuk (tests/kube/ryuk).
image nestdock.test/ryuk:1 '{"Entrypoint":["/ryuk"]}' "$(layer_of "$work/ryuk")"
archive "$work/images-dir/images/ryuk.tar" docker

# The base layer (the daemon root filesystem, ~500 MB) is kept between runs,
# keyed on the root filesystem's stamp.
base_key=$(sha256sum <"$rootfs.stamp" | cut -d" " -f1)
if ! cached base "$base_key"; then
	log "packing the daemon root filesystem as a layer"
	store_cached base "$base_key" "$rootfs"
fi
base=$(use_cached base)

image nestdock.test/pause:1 '{"Entrypoint":["/pause"]}' "$(layer_of "$work/pause")"

# As the docker:dind image: the entrypoint, TLS certificates generated into
# /certs by default, /var/lib/docker a volume.
image nestdock.test/docker:dind \
	"{\"Env\":[$path_env,\"DOCKER_TLS_CERTDIR=/certs\"],\"Entrypoint\":[\"dockerd-entrypoint.sh\"],\"Volumes\":{\"/var/lib/docker\":{}}}" \
	"$base"
# As docker:dind-rootless: user rootless (uid 1000), its runtime directory
# and socket; Debian's rootlesskit has no vpnkit, so slirp4netns is selected.
image nestdock.test/docker:dind-rootless \
	"{\"User\":\"rootless\",\"Env\":[$path_env,\"DOCKER_TLS_CERTDIR=/certs\",\"XDG_RUNTIME_DIR=/run/user/1000\",\"DOCKER_HOST=unix:///run/user/1000/docker.sock\",\"HOME=/home/rootless\",\"USER=rootless\",\"DOCKERD_ROOTLESS_ROOTLESSKIT_NET=slirp4netns\"],\"Entrypoint\":[\"dockerd-entrypoint.sh\"],\"Volumes\":{\"/home/rootless/.local/share/docker\":{}}}" \
	"$base"
# Testcontainers for the build image: Debian's python3 and testcontainers-python
# (PyPI) in a venv at /opt/testcontainers, installed on top of the daemon root
# filesystem through an overlay whose upper directory becomes one layer (its
# whiteouts, character devices 0:0, turned into OCI `.wh.` entries). Kept
# between runs, keyed on the root filesystem and the version.
tc_version=4.15.0
tc_key=$(printf '%s %s' "$base_key" "$tc_version" | sha256sum | cut -d' ' -f1)
if ! cached testcontainers "$tc_key"; then
	log "installing python3 and testcontainers $tc_version for the build image (a few minutes, once)"
	tc=$work/tc
	mkdir -p "$tc/upper" "$tc/work" "$tc/merged"
	mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$tc/upper,workdir=$tc/work" "$tc/merged"
	mount --bind /etc/resolv.conf "$tc/merged/etc/resolv.conf"
	mount -t proc proc "$tc/merged/proc"
	# The wheels are fetched by this machine's pip (for trixie's Python 3.13)
	# and installed offline: Python 3.13 verifies certificates strictly
	# (VERIFY_X509_STRICT), which a TLS-inspecting proxy's CA may not pass.
	mkdir -p "$tc/merged/tmp/wheels"
	python3 -m pip download -q --dest "$tc/merged/tmp/wheels" --only-binary=:all: \
		--python-version 3.13 --implementation cp --abi cp313 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		"testcontainers==$tc_version" >&2
	status=0
	env -u PIP_FIND_LINKS chroot "$tc/merged" sh -ec "
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
		apt-get clean
		python3 -m venv /opt/testcontainers
		/opt/testcontainers/bin/pip install -q --no-cache-dir --no-index --find-links /tmp/wheels testcontainers==$tc_version
		/opt/testcontainers/bin/python -c 'import testcontainers.core.container'
	" >&2 || status=$?
	umount "$tc/merged/proc" "$tc/merged/etc/resolv.conf" "$tc/merged"
	if [ "$status" != 0 ]; then
		log "installing testcontainers failed ($status)"
		exit 1
	fi
	find "$tc/upper" -type c | while read -r wh; do
		rm -f "$wh" && : >"$(dirname "$wh")/.wh.$(basename "$wh")"
	done
	rm -rf "$tc/upper/etc/resolv.conf" "$tc/upper/proc" "$tc/upper/tmp"/* "$tc/upper/root/.cache"
	store_cached testcontainers "$tc_key" "$tc/upper"
fi
tc_layer=$(use_cached testcontainers)

image nestdock.test/build:1 "{\"Env\":[$path_env],\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\"}" \
	"$base" "$tc_layer" "$(layer_of "$work/images-dir")"

# nestdock: the release binary with the C libraries it links (as the
# Dockerfile's distroless cc image has them), running as uid 65532.
mkdir -p "$work/nestdock/usr/local/bin" "$work/nestdock/etc" "$work/nestdock/tmp"
chmod 1777 "$work/nestdock/tmp"
install -m 0755 "$nestdock" "$work/nestdock/usr/local/bin/nestdock"
for lib in $(ldd "$nestdock" | grep -o '/[^ ]*'); do
	cp --parents -L "$lib" "$work/nestdock/"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/nestdock/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/nestdock/etc/group"
image docker.io/library/nestdock:0.1.0 \
	"{\"User\":\"65532:65532\",\"Env\":[$path_env],\"Entrypoint\":[\"/usr/local/bin/nestdock\"]}" \
	"$(layer_of "$work/nestdock")"

archive "$out/images/node.tar"
echo "$out"
