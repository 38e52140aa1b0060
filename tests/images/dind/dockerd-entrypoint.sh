#!/bin/sh
# A test double of the docker:dind image's `dockerd-entrypoint.sh`, written
# from that image's documented behaviour (not copied from it), for the
# daemon images the test suite builds from Debian's packages. nestdock starts
# the daemon through this script exactly as it does through the real one.
#
# What it does, as documented for docker:dind:
# - no arguments, or a first argument that is a flag: `dockerd` is put first;
# - `dockerd` without any --host/-H: the default listeners are added: the
#   unix socket /var/run/docker.sock and, with DOCKER_TLS_CERTDIR set, TCP
#   :2376 with --tlsverify and certificates generated into that directory
#   (ca/, server/, client/); without it, TCP :2375 (plain; the real image
#   waits 15 s first to discourage it, this double does not);
# - cgroup v2: the entrypoint's own processes move to a child cgroup and the
#   controllers are enabled for nesting (a no-op on cgroup v1 hosts);
# - run as a non-root user (the rootless image), the daemon is started
#   through rootlesskit (dockerd-rootless.sh).
# Where it differs from the real script: no 15 s delay for plain TCP, no
# `dind` hack script (securityfs and /tmp are not remounted), certificates
# made with openssl in one step each, and Debian's paths
# (/usr/share/docker.io/contrib/dockerd-rootless.sh).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- dockerd "$@"
fi

if [ "$1" != dockerd ]; then
	exec "$@"
fi
shift

has_host=no
for arg in "$@"; do
	case "$arg" in
	-H | -H* | --host | --host=*) has_host=yes ;;
	esac
done

certs() {
	dir="$1"
	mkdir -p "$dir/ca" "$dir/server" "$dir/client"
	if [ ! -f "$dir/ca/key.pem" ]; then
		openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=docker:dind CA" \
			-keyout "$dir/ca/key.pem" -out "$dir/ca/cert.pem" 2>/dev/null
	fi
	for who in server client; do
		[ -f "$dir/$who/cert.pem" ] && continue
		openssl req -newkey rsa:2048 -nodes -subj "/CN=docker:dind $who" \
			-keyout "$dir/$who/key.pem" -out "$dir/$who/csr.pem" 2>/dev/null
		ext="$dir/$who/ext.cnf"
		if [ "$who" = server ]; then
			printf 'subjectAltName=DNS:localhost,DNS:docker,DNS:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
				"$(hostname)" >"$ext"
		else
			printf 'extendedKeyUsage=clientAuth\n' >"$ext"
		fi
		openssl x509 -req -days 825 -in "$dir/$who/csr.pem" -CA "$dir/ca/cert.pem" \
			-CAkey "$dir/ca/key.pem" -CAcreateserial -extfile "$ext" -out "$dir/$who/cert.pem" 2>/dev/null
		cp "$dir/ca/cert.pem" "$dir/$who/ca.pem"
		rm -f "$dir/$who/csr.pem" "$ext"
	done
	chmod -R a+rX "$dir/client"
}

if [ "$has_host" = no ]; then
	if [ -n "${DOCKER_TLS_CERTDIR:-}" ]; then
		certs "$DOCKER_TLS_CERTDIR"
		set -- --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2376 --tlsverify \
			--tlscacert="$DOCKER_TLS_CERTDIR/server/ca.pem" \
			--tlscert="$DOCKER_TLS_CERTDIR/server/cert.pem" \
			--tlskey="$DOCKER_TLS_CERTDIR/server/key.pem" "$@"
	else
		set -- --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 "$@"
	fi
fi

# cgroup v2 nesting: only on a unified hierarchy.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
	mkdir -p /sys/fs/cgroup/init
	xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
	sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
		>/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
fi

if [ "$(id -u)" != 0 ]; then
	exec /usr/share/docker.io/contrib/dockerd-rootless.sh "$@"
fi
exec dockerd "$@"
