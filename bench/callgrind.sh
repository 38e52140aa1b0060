#!/usr/bin/env bash
# Instructions per review, counted by callgrind: the request path's cost
# without the noise of a busy machine (the same count twice for the same
# binary and input, whatever else runs). Typical pod, HTTP/1.1 keep-alive,
# one connection, loopback only.
#
#   bash bench/callgrind.sh            # this tree: nestdock and the floor
#   bash bench/callgrind.sh REV        # also nestdock at git revision REV
#                                      # (built in a worktree), and the ratio
#   CALLGRIND_REQUESTS=2000 (default)  # requests counted after a warm-up
#   CALLGRIND_BODY=typical             # or c100, 1mib (bench/fixtures)
#
# Prints one line per server and, with REV, "this tree ÷ REV".
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${CALLGRIND_REQUESTS:-2000}
BODY=${CALLGRIND_BODY:-typical}
REV=${1:-}
[[ $REQUESTS =~ ^[0-9]+$ ]] && ((REQUESTS >= 100)) ||
	{ echo "bench/callgrind.sh: CALLGRIND_REQUESTS must be a whole number of at least 100" >&2; exit 2; }
case $BODY in typical | c100 | 1mib) ;; *)
	echo "bench/callgrind.sh: CALLGRIND_BODY must be typical, c100 or 1mib, not '$BODY'" >&2
	exit 2
	;;
esac

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
	echo "== installing ${missing[*]} (Debian)" >&2
	apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -n "$REV" ] && git worktree remove --force "$WORK/rev" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building (release)" >&2
cargo build --release --quiet --bins -p nestdock -p nestdock-floor -p nestdock-bench
"$TARGET/release/nestdock-bench" fixtures bench/fixtures >/dev/null
"$TARGET/release/nestdock" certs --service nestdock --namespace nestdock-system \
	--out-dir "$WORK/certs" >/dev/null
if [ -n "$REV" ]; then
	git worktree add --quiet --detach "$WORK/rev" "$REV"
	echo "== building nestdock at $REV (release, its own target directory)" >&2
	(cd "$WORK/rev" && CARGO_TARGET_DIR="$WORK/rev-target" cargo build --release --quiet --bin nestdock)
fi

# count NAME BINARY ARGS...: runs the server under callgrind, counts the
# instructions of $REQUESTS reviews after a warm-up, prints per review.
count() {
	local name=$1 port=$2
	shift 2
	valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.cg" \
		"$@" --listen "127.0.0.1:$port" --tls-cert "$WORK/certs/tls.crt" \
		--tls-key "$WORK/certs/tls.key" >/dev/null 2>"$WORK/$name.log" &
	local pid=$!
	pids+=("$pid")
	local i
	for i in $(seq 1 600); do
		curl -sk --max-time 1 "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
		kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; echo "bench/callgrind.sh: $name did not start" >&2; exit 1; }
		sleep 0.2
	done
	local url="https://127.0.0.1:$port/mutate"
	h2load --h1 -c 1 -n 300 -d "bench/fixtures/$BODY.json" -H 'content-type: application/json' "$url" >/dev/null
	callgrind_control -i on "$pid" >/dev/null 2>&1
	h2load --h1 -c 1 -n "$REQUESTS" -d "bench/fixtures/$BODY.json" -H 'content-type: application/json' "$url" >"$WORK/$name.h2load"
	callgrind_control -i off "$pid" >/dev/null 2>&1
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	grep -q "succeeded, 0 failed" "$WORK/$name.h2load" || { cat "$WORK/$name.h2load" >&2; echo "bench/callgrind.sh: $name failed requests" >&2; exit 1; }
	local total
	total=$(callgrind_annotate "$WORK/$name.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
	[ -n "$total" ] || { echo "bench/callgrind.sh: no totals for $name" >&2; exit 1; }
	echo $((total / REQUESTS))
}

floor=$(count floor 18461 "$TARGET/release/nestdock-floor")
nestdock=$(count nestdock 18462 "$TARGET/release/nestdock" serve --kube=false)
printf 'instructions per review (%s body, HTTP/1.1 keep-alive, %d reviews)\n' "$BODY" "$REQUESTS"
printf '  floor     %10d\n' "$floor"
printf '  nestdock  %10d  (%.2f× the floor)\n' "$nestdock" "$(echo "$nestdock / $floor" | bc -l)"
if [ -n "$REV" ]; then
	old=$(count rev 18463 "$WORK/rev-target/release/nestdock" serve --kube=false)
	printf '  nestdock at %s %10d  (%.2f× the floor)\n' "$REV" "$old" "$(echo "$old / $floor" | bc -l)"
	printf '  this tree ÷ %s: %.3f×\n' "$REV" "$(echo "$nestdock / $old" | bc -l)"
fi
