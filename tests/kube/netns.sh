#!/usr/bin/env bash
# Runs a command (kube-testplane --node) as the first process of the test
# node's network namespace: `unshare --net -- bash tests/kube/netns.sh CMD...`.
#
# The namespace gets loopback and one veth pair: 10.213.0.2/30 here (the
# node's address, where the API server and the kubelet serve) and
# 10.213.0.1/30 on the machine's side, the suite's only way in. There is no
# default route: pods reach the node and each other, and nothing leaves the
# namespace. A pair left by an earlier run whose containers outlived it is
# removed first. The machine's namespace is the caller's (unshare execs
# this script, so its parent is the caller; pid 1's may not be open to us).
set -euo pipefail
outside=$PPID
host_if=ndhost0
node_if=ndnode0
in_machine() { nsenter --net="/proc/$outside/ns/net" -- "$@"; }

ip link set lo up
in_machine ip link del "$host_if" 2>/dev/null || true
ip link add "$node_if" type veth peer name "$host_if" netns "$outside"
ip addr add 10.213.0.2/30 dev "$node_if"
ip link set "$node_if" up
in_machine ip addr add 10.213.0.1/30 dev "$host_if"
in_machine ip link set "$host_if" up
exec "$@"
