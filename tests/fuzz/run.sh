#!/bin/sh
# Runs every fuzz target for SECONDS each (default 60), one after the other,
# and prints libFuzzer's last status line (executions, coverage) per target.
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# Crashes are left in tests/fuzz/artifacts/TARGET/; the script then exits 1.
set -eu
seconds="${1:-60}"
dir="$(cd "$(dirname "$0")" && pwd)"
cd "$dir"
status=0
for target in config dns; do
    mkdir -p "corpus/$target"
    # Seed the loader with the examples, so it starts from valid files.
    if [ "$target" = config ]; then
        cp ../../examples/*.toml "corpus/$target/" 2>/dev/null || true
    fi
    log="$(mktemp)"
    start=$(date +%s)
    if cargo +nightly fuzz run --fuzz-dir "$dir" -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
    fi
    end=$(date +%s)
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "$target: $result, ${runs:-?} executions in $((end - start)) s"
    if [ "$result" = FAILED ]; then
        tail -n 40 "$log"
    fi
    rm -f "$log"
done
exit "$status"
