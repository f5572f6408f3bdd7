#!/usr/bin/env bash
# run.sh SECONDS TARGET...: runs each built fuzzer (build/fuzz/fuzz_<t>) for
# SECONDS on one core from its seeds (build/fuzz/seeds/<t>, grown into
# build/fuzz/corpus/<t>), keeps crashing inputs in build/fuzz/findings/<t>/,
# and prints the executions per target and in total.
set -uo pipefail
cd "$(dirname "$0")/../.."
S=$1; shift
total=0; crashes=0
printf '%-12s %12s %8s %s\n' target executions exec/s findings
for t in "$@"; do
    mkdir -p "build/fuzz/corpus/$t" "build/fuzz/findings/$t"
    cp -n build/fuzz/seeds/$t/* tests/fuzz/regress/$t/* "build/fuzz/corpus/$t/" 2>/dev/null || true
    log=build/fuzz/$t.log
    OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
        "build/fuzz/fuzz_$t" -max_total_time="$S" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="build/fuzz/findings/$t/" -print_final_stats=1 "build/fuzz/corpus/$t" >"$log" 2>&1
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    n=${n:-0}
    f=$(ls "build/fuzz/findings/$t" | wc -l)
    total=$((total + n)); crashes=$((crashes + f))
    printf '%-12s %12d %8d %d\n' "$t" "$n" $((n / S)) "$f"
done
printf '%-12s %12d %8s %d\n' total "$total" "" "$crashes"
[ "$crashes" -eq 0 ]
