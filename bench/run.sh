#!/usr/bin/env bash
# nestdock's benchmark: nestdock side by side with
#   floor    - the same TLS + HTTP stack doing nothing but parse the body into
#              a serde_json::Value and answer a fixed AdmissionReview (bench/floor)
#   baseline - the same injection written the usual kube-rs way (bench/baseline)
# Every server runs pinned to one core, the load generator on the other; the
# servers take turns cell by cell (interleaved), so noise hits all alike.
# Loopback only. Prints the table and writes bench/results/latest.md,
# latest.png (chart), latest.dat (chart data) and latest-samples.tsv (raw).
#
# Settings (environment):
#   BENCH_DURATION  seconds measured per cell          (default 4)
#   BENCH_WARMUP    seconds of warm-up per cell        (default 1)
#   BENCH_ROUNDS    rounds over all cells               (default 2)
#   BENCH_BODIES    subset of "typical c100 1mib"
#   BENCH_PROTOS    subset of "h1 h1-new h2 c1"
#   BENCH_WRK       1: cross-check the typical pod with wrk (default 1)
#   BENCH_SERVER_CPU / BENCH_CLIENT_CPU   cores to pin to (default 0 / 1)
#   BENCH_PORT      first of three loopback ports       (default 18441)
# The default run takes about 8 minutes after the build; BENCH_DURATION=10
# BENCH_ROUNDS=5 is the long one (about 45 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-4}
WARMUP=${BENCH_WARMUP:-1}
ROUNDS=${BENCH_ROUNDS:-2}
BODIES=${BENCH_BODIES:-typical c100 1mib}
PROTOS=${BENCH_PROTOS:-h1 h1-new h2 c1}
WRK=${BENCH_WRK:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
PORT=${BENCH_PORT:-18441}
SERVERS=(floor nestdock baseline)
CONCURRENCY=32

RESULTS=bench/results
FIXTURES=bench/fixtures
WORK=$RESULTS/run.tmp # ignored by git (/bench/results/*.tmp)
TARGET=${CARGO_TARGET_DIR:-target}/release

log() { printf '== %s\n' "$*" >&2; }
die() {
	printf 'bench/run.sh: %s\n' "$*" >&2
	exit 1
}

for v in DURATION WARMUP ROUNDS SERVER_CPU CLIENT_CPU PORT; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, not '${!v}'"
done
((DURATION >= 1 && ROUNDS >= 1)) || die "BENCH_DURATION and BENCH_ROUNDS must be at least 1"

# --- tools -------------------------------------------------------------------
# The load generators and gnuplot come from Debian; installed when missing.
missing=()
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v wrk >/dev/null || missing+=(wrk)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	sudo=()
	((EUID == 0)) || sudo=(sudo)
	if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
		"${sudo[@]}" apt-get update -qq >/dev/null
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
fi

cores=$(nproc)
if ((cores < 2)); then
	log "only $cores core: server and load generator share it (figures are not comparable to 2-core runs)"
	SERVER_CPU=0
	CLIENT_CPU=0
fi

# --- build, fixtures, certificates ------------------------------------------
log "building the three servers (release)"
cargo build --release --quiet --bins -p nestdock \
	-p nestdock-floor -p nestdock-baseline -p nestdock-bench
for bin in nestdock nestdock-floor nestdock-baseline nestdock-bench; do
	[[ -x $TARGET/$bin ]] || die "$TARGET/$bin was not built"
done
BENCH=$TARGET/nestdock-bench

rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS"
log "fixtures"
"$BENCH" fixtures "$FIXTURES" >&2
"$TARGET/nestdock" certs --service nestdock --namespace nestdock-system \
	--out-dir "$WORK/certs" >/dev/null

# --- servers -----------------------------------------------------------------
declare -A PID PORTS BIG
port=$PORT
for s in "${SERVERS[@]}"; do
	PORTS[$s]=$port
	port=$((port + 1))
done

cleanup() {
	local s
	for s in "${!PID[@]}"; do
		kill "${PID[$s]}" 2>/dev/null || true
	done
	for s in "${!PID[@]}"; do
		wait "${PID[$s]}" 2>/dev/null || true
	done
}
trap cleanup EXIT

start_server() {
	local s=$1 addr="127.0.0.1:${PORTS[$1]}"
	local tls=(--tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key")
	if (exec 3<>"/dev/tcp/127.0.0.1/${PORTS[$s]}") 2>/dev/null; then
		die "port ${PORTS[$s]} is in use (set BENCH_PORT)"
	fi
	case $s in
	# nestdock logs one line per review, as deployed; /dev/null keeps the
	# write but not gigabytes of file.
	nestdock) taskset -c "$SERVER_CPU" "$TARGET/nestdock" serve --listen "$addr" "${tls[@]}" \
		--kube=false 2>/dev/null &;;
	floor) taskset -c "$SERVER_CPU" "$TARGET/nestdock-floor" --listen "$addr" "${tls[@]}" \
		2>"$WORK/floor.log" &;;
	baseline) taskset -c "$SERVER_CPU" "$TARGET/nestdock-baseline" --listen "$addr" "${tls[@]}" \
		2>"$WORK/baseline.log" &;;
	esac
	PID[$s]=$!
	local _
	for _ in $(seq 1 100); do
		if curl -sf --max-time 1 --cacert "$WORK/certs/ca.crt" "https://localhost:${PORTS[$s]}/healthz" >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "${PID[$s]}" 2>/dev/null || die "$s exited at start (see $WORK/$s.log, or run it by hand)"
		sleep 0.1
	done
	die "$s did not answer /healthz within 10 s"
}

rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/${PID[$1]}/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${PID[$1]}/stat"; }
# CPU time of this script's finished children (the load generator), and of
# the whole machine: what is left is other work, which makes a run noisy.
client_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
MEM=$WORK/memory.tsv
: >"$MEM"

stop_servers() {
	cleanup
	PID=()
}

log "starting the servers on core $SERVER_CPU: ${SERVERS[*]}"
for s in "${SERVERS[@]}"; do start_server "$s"; done

# --- checks: every server answers every body as the benchmark assumes ---------
log "checking the answers (HTTP 200, AdmissionReview, patch applies, same pod)"
for body in $BODIES; do
	[[ -f $FIXTURES/$body.json ]] || die "unknown body '$body' (typical, c100, 1mib)"
	answers=()
	for s in "${SERVERS[@]}"; do
		out=$WORK/answer-$s-$body.json
		code=$(curl -s --max-time 30 -o "$out" -w '%{http_code}' --cacert "$WORK/certs/ca.crt" \
			-H 'content-type: application/json' --data-binary "@$FIXTURES/$body.json" \
			"https://localhost:${PORTS[$s]}/mutate?timeout=10s")
		answers+=("$s=$code:$out")
	done
	"$BENCH" check "$FIXTURES/$body.json" "${answers[@]}" >&2
done

# Fresh servers for the measurements: memory the allocator kept after the
# checks' 1 MiB reviews must not count as the typical pod's.
stop_servers
for s in "${SERVERS[@]}"; do start_server "$s"; done
sleep 1
for s in "${SERVERS[@]}"; do
	printf '%s\tidle\t%s\n' "$s" "$(rss_kib "$s" VmRSS)" >>"$MEM"
done

# --- measurements --------------------------------------------------------------
SAMPLES=$WORK/samples.tsv
: >"$SAMPLES"
LIMIT=$((DURATION + WARMUP + 60)) # a hard stop for every load-generator run

# h2load's summary line: "finished in 4.00s, 12345.67 req/s, ..."
h2load_rate() { sed -n 's/^finished in [0-9.]*m\{0,1\}s, \([0-9.]*\) req\/s.*/\1/p' "$1"; }

# run_h2load SERVER BODY PROTO LOG OUT: one measured run.
run_h2load() {
	local s=$1 body=$2 proto=$3 logf=$4 out=$5
	local url="https://127.0.0.1:${PORTS[$s]}/mutate?timeout=10s"
	local common=(-d "$FIXTURES/$body.json" -H 'content-type: application/json')
	local gen=(taskset -c "$CLIENT_CPU" timeout "$LIMIT" h2load)
	case $proto in
	h1) "${gen[@]}" --h1 -c "$CONCURRENCY" -D "$DURATION" --warm-up-time "$WARMUP" \
		"${common[@]}" --log-file "$logf" "$url" >"$out" 2>&1 ;;
	h2) "${gen[@]}" -c 1 -m "$CONCURRENCY" -D "$DURATION" --warm-up-time "$WARMUP" \
		"${common[@]}" --log-file "$logf" "$url" >"$out" 2>&1 ;;
	c1) "${gen[@]}" --h1 -c 1 -D "$DURATION" --warm-up-time "$WARMUP" \
		"${common[@]}" --log-file "$logf" "$url" >"$out" 2>&1 ;;
	h1-new)
		# `Connection: close`: the server closes after each answer and h2load
		# makes a new TCP connection and a full TLS handshake (it keeps no
		# session to resume, like the API server's client). h2load hangs at
		# the end of timed runs that reconnect, so this one counts requests:
		# a warm-up run measures the rate, the measured run asks for
		# DURATION seconds of it.
		local n=$((CONCURRENCY * 10 * (WARMUP > 0 ? WARMUP : 1)))
		"${gen[@]}" --h1 -c "$CONCURRENCY" -n "$n" "${common[@]}" -H 'connection: close' \
			"$url" >"$out" 2>&1
		local rate
		rate=$(h2load_rate "$out")
		n=$(awk -v r="${rate:-100}" -v d="$DURATION" -v c="$CONCURRENCY" \
			'BEGIN { n = int(r * d); if (n < c * 4) n = c * 4; print n }')
		"${gen[@]}" --h1 -c "$CONCURRENCY" -n "$n" "${common[@]}" -H 'connection: close' \
			--log-file "$logf" "$url" >"$out" 2>&1 ;;
	*) die "unknown protocol '$proto' (h1, h1-new, h2, c1)" ;;
	esac
}

# run_wrk SERVER BODY PROTO OUT
run_wrk() {
	local s=$1 body=$2 proto=$3 out=$4
	local extra=()
	[[ $proto == h1-new ]] && extra=(-H 'Connection: close')
	BENCH_BODY=$FIXTURES/$body.json taskset -c "$CLIENT_CPU" timeout "$LIMIT" \
		wrk -t1 -c"$CONCURRENCY" -d"$((DURATION + WARMUP))s" --latency "${extra[@]}" \
		-s "$WORK/post.lua" "https://127.0.0.1:${PORTS[$s]}/mutate?timeout=10s" >"$out" 2>&1
}
cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
EOF

# wrk prints latencies as 812.00us, 1.23ms or 1.05s.
wrk_us() {
	awk -v p="$2" '$1 == p {
		v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
		if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else f = 0
		print v * f }' "$1"
}

# measure ROUND SERVER BODY PROTO TOOL: one cell, one line of samples.tsv.
measure() {
	local round=$1 s=$2 body=$3 proto=$4 tool=$5
	local tag=$round-$s-$body-$proto-$tool
	local out=$WORK/$tag.out logf=$WORK/$tag.log
	echo 5 >"/proc/${PID[$s]}/clear_refs" 2>/dev/null || true # resets VmHWM
	local t0 c0 t1 c1 k0 k1 m0 m1
	t0=$(date +%s.%N)
	c0=$(cpu_ticks "$s")
	k0=$(client_ticks)
	m0=$(machine_ticks)
	local rc=0
	if [[ $tool == wrk ]]; then
		run_wrk "$s" "$body" "$proto" "$out" || rc=$?
	else
		run_h2load "$s" "$body" "$proto" "$logf" "$out" || rc=$?
	fi
	c1=$(cpu_ticks "$s")
	k1=$(client_ticks)
	m1=$(machine_ticks)
	t1=$(date +%s.%N)
	kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during $tag"
	((rc == 0)) || die "$tool failed ($rc) on $tag; see $out"
	local hwm
	hwm=$(rss_kib "$s" VmHWM)
	printf '%s\tpeak-all\t%s\n' "$s" "$hwm" >>"$MEM"
	# The typical pod's peak counts only before the server has seen a larger
	# body (the allocator keeps some of what those took).
	if [[ $body != typical ]]; then
		BIG[$s]=1
	elif [[ -z ${BIG[$s]:-} ]]; then
		printf '%s\tpeak-typical\t%s\n' "$s" "$hwm" >>"$MEM"
	fi
	local cpu other
	cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" -v s="$t0" -v e="$t1" \
		'BEGIN { printf "%.1f", (b - a) / t / (e - s) * 100 }')
	other=$(awk -v m="$((m1 - m0))" -v c="$((c1 - c0))" -v k="$((k1 - k0))" -v t="$CLK_TCK" \
		-v n="$cores" -v s="$t0" -v e="$t1" \
		'BEGIN { o = (m - c - k) / t / (e - s) / n * 100; if (o < 0) o = 0; printf "%.1f", o }')
	local rate p50 p99 ok failed
	if [[ $tool == wrk ]]; then
		rate=$(awk '$1 == "Requests/sec:" { print $2 }' "$out")
		p50=$(wrk_us "$out" 50%)
		p99=$(wrk_us "$out" 99%)
		ok=$(awk '/requests in/ { print $1 }' "$out")
		failed=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
	else
		rate=$(h2load_rate "$out")
		read -r p50 p99 ok failed < <("$BENCH" stats "$logf")
		rm -f "$logf"
	fi
	[[ -n $rate && -n $p50 ]] || die "cannot read the result of $tag; see $out"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$round" "$body" "$proto" "$s" "$tool" "$rate" "$p50" "$p99" "$cpu" "$ok" "$failed" "$other" >>"$SAMPLES"
	printf '   %-8s %-7s %-6s %-8s %-6s %10s req/s  p50 %7s µs  p99 %8s µs  cpu %5s %%  other work %4s %%\n' \
		"round $round" "$body" "$proto" "$s" "$tool" "$rate" "$p50" "$p99" "$cpu" "$other" >&2
}

cells=0
for body in $BODIES; do for proto in $PROTOS; do cells=$((cells + 1)); done; done
wrk_cells=0
[[ $WRK == 1 && " $BODIES " == *" typical "* ]] && wrk_cells=2
est=$(((cells + wrk_cells) * ${#SERVERS[@]} * ROUNDS * (DURATION + WARMUP + 1)))
log "measuring: $cells cells x ${#SERVERS[@]} servers x $ROUNDS rounds, ${DURATION}s each (+${WARMUP}s warm-up): about $((est / 60 + 1)) min"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

order=("${SERVERS[@]}")
for round in $(seq 1 "$ROUNDS"); do
	for body in $BODIES; do
		for proto in $PROTOS; do
			for s in "${order[@]}"; do
				measure "$round" "$s" "$body" "$proto" h2load
			done
		done
	done
	if ((wrk_cells)); then
		for proto in h1 h1-new; do
			for s in "${order[@]}"; do
				measure "$round" "$s" typical "$proto" wrk
			done
		done
	fi
	# The next round starts with the next server: no server always goes first.
	order=("${order[@]:1}" "${order[0]}")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${SERVERS[@]}"; do
	printf '%s\tafter\t%s\n' "$s" "$(rss_kib "$s" VmRSS)" >>"$MEM"
done
stop_servers

# --- report --------------------------------------------------------------------
size() { stat -c %s "$FIXTURES/$1.json"; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | head -1)
{
	echo "# nestdock benchmark: latest run"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit${dirty:+ (with uncommitted changes)}," \
		"by \`bench/run.sh\`; see [docs/benchmarks.md](../../docs/benchmarks.md) for what each cell means."
	echo
	echo "- Machine: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $cores cores," \
		"Linux $(uname -r). Load average before/after: $load_before / $load_after" \
		"(other work on the machine makes every figure noisier; the ratios, measured interleaved, less so)."
	echo "- Each server pinned to core $SERVER_CPU (one tokio worker), $(h2load --version | head -1) and" \
		"$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2) on core $CLIENT_CPU; TLS 1.3, ECDSA P-256 certificate from \`nestdock certs\`, loopback."
	echo "- $ROUNDS rounds; per cell ${WARMUP} s warm-up and ${DURATION} s measured; servers interleaved cell by cell."
	echo "- Bodies: typical pod $(size typical) bytes, 100-container pod $(size c100) bytes, 1 MiB review $(size 1mib) bytes."
	echo "- nestdock: \`nestdock serve --kube=false\`, default configuration, its log line per review written to /dev/null."
	echo "- The baseline answers with kube's \`AdmissionResponse\`, which writes the patch as an array of" \
		"numbers (kube-rs issue 1781), not the base64 string the API server reads; it is measured as users get it."
	echo
	echo "![nestdock and the baseline relative to the floor](latest.png)"
} >"$WORK/preamble.md"

cp "$SAMPLES" "$RESULTS/latest-samples.tsv"
"$BENCH" report "$SAMPLES" "$MEM" "$WORK/preamble.md" "$RESULTS/latest.md" "$RESULTS/latest.dat"
gnuplot -e "datafile='$RESULTS/latest.dat'; outfile='$RESULTS/latest.png'" bench/chart.gp
log "wrote $RESULTS/latest.md, latest.png, latest.dat, latest-samples.tsv"
