#!/usr/bin/env bash
# Fuzzes nestdock with libFuzzer on the stable toolchain (see fuzz/README.md).
#
#   bash fuzz/run.sh                    # CI: 30 s per target, 6 targets
#   FUZZ_SECONDS=3600 bash fuzz/run.sh  # a longer run
#   FUZZ_TARGETS="engine" FUZZ_SECONDS=600 bash fuzz/run.sh
#
# It builds the targets with the flags `cargo fuzz build --sanitizer none`
# uses (SanitizerCoverage, no AddressSanitizer: that one needs nightly, and
# the code under test has no `unsafe`), writes the seed corpora from
# examples/ and tests/fixtures/, then runs each target for FUZZ_SECONDS.
# A crash, a panic or a timeout fails the script and leaves the input in
# fuzz/artifacts/TARGET/; replay it with `fuzz/run.sh --replay FILE TARGET`.
# Inputs worth keeping (past findings) live in fuzz/regressions/TARGET/ and
# are run first, every time.
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-review engine inject query guard_body guard_path}"
host="$(rustc -vV | sed -n 's/^host: //p')"

# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo fuzz does.
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "== fuzz: building the targets (release, SanitizerCoverage, $host)"
cargo build --release --locked --target "$host" --bins
bin="target/$host/release"

if [ "${1:-}" = "--replay" ]; then
    file="$(cd "$caller" && realpath "${2:?usage: run.sh --replay FILE TARGET}")"
    target="${3:?usage: run.sh --replay FILE TARGET}"
    exec "$bin/$target" "$file"
fi

"$bin/seed" .. corpus

for target in $targets; do
    echo "== fuzz: $target for ${seconds} s"
    mkdir -p "artifacts/$target" "corpus/$target"
    # -timeout: one input taking over 10 s is a hang worth failing on.
    log="artifacts/$target.log"
    if ! "$bin/$target" \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" \
        "corpus/$target" $(ls -d "regressions/$target" 2>/dev/null) >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/, the log in fuzz/$log" >&2
        exit 1
    fi
    grep -E '^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -n 5 "$log"
done
echo "fuzz: ${targets// /, }: no crash in ${seconds} s each"
