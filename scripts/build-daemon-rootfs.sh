#!/usr/bin/env bash
# Builds the root filesystem the daemon tests run nestdock's daemon container
# from: Debian trixie (dockerd 26, which knows every flag nestdock passes),
# the docker CLI (the startup probe runs it), iptables, openssl (TLS mode's
# certificates), and for rootless rootlesskit, slirp4netns and uidmap with a
# user `rootless` (uid 1000) and its subordinate ids, as the
# docker:dind-rootless image has them. Debian's rootlesskit has no vpnkit:
# the tests select slirp4netns (DOCKERD_ROOTLESS_ROOTLESSKIT_NET), as the
# image's environment would. The image's `dockerd-entrypoint.sh` is the test
# double in tests/images/dind/ (written from the documented behaviour).
#
# Everything comes from Debian's archive (debootstrap); nothing prebuilt is
# downloaded. Built once: a stamp keyed on this script and the entrypoint
# makes later runs instant. Also installs what the tests run it with on the
# host: containerd and runc (Debian's), and debootstrap.
#
#   scripts/build-daemon-rootfs.sh            # prints the rootfs directory
#   NESTDOCK_IMAGES_DIR=/var/tmp/x scripts/build-daemon-rootfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${NESTDOCK_IMAGES_DIR:-/var/tmp/nestdock-images}
ROOTFS="$DIR/daemon-rootfs"
ENTRYPOINT=tests/images/dind/dockerd-entrypoint.sh
STAMP="$DIR/daemon-rootfs.stamp"
want=$(cat "$0" "$ENTRYPOINT" | sha256sum | cut -d' ' -f1)

log() { printf '== build-daemon-rootfs: %s\n' "$*" >&2; }

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
command -v setpriv >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
	log "installing ${missing[*]} (Debian)"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$ROOTFS/usr/sbin/dockerd" ]; then
	echo "$ROOTFS"
	exit 0
fi

log "debootstrap trixie into $ROOTFS (a few minutes, once)"
rm -rf "$ROOTFS" "$STAMP"
mkdir -p "$DIR"
work="$ROOTFS.tmp"
rm -rf "$work"
debootstrap --variant=minbase \
	--include=docker.io,docker-cli,iptables,openssl,ca-certificates,procps,iproute2,rootlesskit,slirp4netns,uidmap \
	trixie "$work" http://deb.debian.org/debian >"$DIR/debootstrap.log" 2>&1 || {
	tail -20 "$DIR/debootstrap.log" >&2
	log "debootstrap failed (log: $DIR/debootstrap.log)"
	exit 1
}
chroot "$work" sh -ec '
	useradd -u 1000 -m -s /bin/sh rootless
	echo "rootless:100000:65536" >/etc/subuid
	echo "rootless:100000:65536" >/etc/subgid
	mkdir -p /run/user/1000 /home/rootless/.local/share/docker
	chown -R 1000:1000 /run/user/1000 /home/rootless
	apt-get clean
'
install -m 0755 "$ENTRYPOINT" "$work/usr/local/bin/dockerd-entrypoint.sh"
"$work/usr/sbin/dockerd" --version >&2
mv "$work" "$ROOTFS"
echo "$want" >"$STAMP"
echo "$ROOTFS"
