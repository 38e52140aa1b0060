#!/usr/bin/env bash
# The guard's figures (issue #13, README "Guarded DooD"): the release
# `nestdock guard` against the raw socket of Debian's dockerd, same run, driven
# by the docker CLI: latency added to `_ping`, a filtered container list and
# `docker ps`; `docker run --rm` wall time; `docker cp` of 100 MiB both ways and
# a 100 MiB build context; the guard's RSS idle and at its peak.
#
# Every run on the raw socket is paired with one on the guard, back to back,
# the pair's order swapped each time; medians over all runs, and the paired
# runs' ratios with their quartiles, because on 2 cores the CLI, dockerd and
# the guard all want one and single runs vary by a third.
#
# Settings (environment):
#   NESTDOCK_BENCH_ROUNDS  rounds counted (default 25; one more warms up); a
#                          round is 20 runs of each request and of `docker ps`,
#                          one of each other command
# Run as root (dockerd). Prints a Markdown table and writes it, with the
# machine's load, to bench/results/guard-latest.md. About 10 s per round.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${NESTDOCK_BENCH_ROUNDS:-25}
[[ $rounds =~ ^[0-9]+$ ]] && ((rounds >= 1 && rounds <= 1000)) ||
	{ echo "bench/guard.sh: NESTDOCK_BENCH_ROUNDS must be a whole number 1-1000, not '$rounds'" >&2; exit 1; }

echo "== release build (scripts/build-release.sh)" >&2
bash scripts/build-release.sh >&2
bin=${CARGO_TARGET_DIR:-target}/release/nestdock
[[ -x $bin ]] || { echo "bench/guard.sh: no release binary at $bin" >&2; exit 1; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log=bench/results/guard.tmp
echo "== $rounds rounds (cargo test --test guard figures -- --ignored; log: $log)" >&2
if ! NESTDOCK_GUARD_BIN=$bin NESTDOCK_BENCH_ROUNDS=$rounds \
	cargo test --test guard figures -- --ignored --nocapture --exact >"$log" 2>&1; then
	tail -n 40 "$log" >&2
	echo "bench/guard.sh: the run failed; the whole log is $log" >&2
	exit 1
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
table=$(grep -E '^\|' "$log")
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD || commit="$commit (with uncommitted changes)"
{
	echo "# nestdock guard: latest run"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, by \`bench/guard.sh\`, $rounds rounds."
	echo
	echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, Linux $(uname -r)."
	echo "- Load average before/after: $load_before / $load_after."
	echo "- Goals (issue #13): added latency < 1 ms, \`docker run\` <= 1.1x the time, throughput >= 0.9x."
	echo
	echo "$table"
} >bench/results/guard-latest.md
echo "$table"
