#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) with libFuzzer's coverage
# guidance, on the stable toolchain (no cargo-fuzz or nightly needed).
#   usage: fuzz/run.sh [seconds] [target...]
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}; shift || true
TARGETS=${*:-manifest rules wire http_head dns_query}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
# --target keeps these flags away from build scripts and proc macros.
cargo build --release --target "$TRIPLE"
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t ($SECS s)"
    # Committed seeds and a dictionary, where a target has them.
    extra=()
    [ -d "seeds/$t" ] && extra+=("seeds/$t")
    [ "$t" = http_head ] && extra+=(-dict=http.dict)
    "target/$TRIPLE/release/$t" "corpus/$t" "${extra[@]}" -max_total_time="$SECS" \
        -artifact_prefix="artifacts/$t/" 2>&1 | grep -E "DONE|ERROR|panicked|Test unit written|assertion"
done
