#!/usr/bin/env bash
# Installs the real Docker Engine the guard tests (tests/guard.rs) put
# `nestdock guard` in front of: Debian bookworm's docker.io (dockerd 20.10,
# its docker CLI, containerd 1.6, runc), docker-compose, and busybox-static, whose single
# binary is the root filesystem of the images the tests build locally
# (nothing can be pulled). Only Debian's archive is used; nothing prebuilt is
# downloaded.
#
# Idempotent: installs only what is missing (one `apt-get update` then), and
# never starts or enables a daemon. The tests start their own dockerd on a
# private socket, data root and network namespace.
#
# The docker CLI in /usr/local/bin (28.x) comes with the machine, not with
# this project; the tests drive Debian's /usr/bin/docker, which this script
# installs, so what they run is reproducible.
#
#   scripts/setup-docker-engine.sh     # prints the dockerd path
set -euo pipefail

log() { printf '== setup-docker-engine: %s\n' "$*" >&2; }

missing=()
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
[ -x /usr/bin/docker ] || missing+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
# Debian's docker compose (1.29, Python): the tests run one compose project
# from two pods at once.
[ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
command -v unshare >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
	# Debian's docker.io starts its service from its postinst when it can;
	# policy-rc.d (exit 101) tells invoke-rc.d not to, so the host never
	# gets a daemon (or its iptables rules) from this script.
	norc=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		norc=1
	fi
	log "installing ${missing[*]} (Debian)"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
	if [ "$norc" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { log "busybox not found after install"; exit 1; }
if ! "$busybox" --list >/dev/null 2>&1; then
	log "$busybox is not the static busybox (no --list)"; exit 1
fi
/usr/sbin/dockerd --version >&2
echo /usr/sbin/dockerd
