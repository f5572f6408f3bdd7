#!/usr/bin/env bash
# run.sh SECONDS TARGET...: runs each built fuzzer (build/fuzz/fuzz_<t>) for
# SECONDS on one core from its seeds (build/fuzz/seeds/<t>, grown into
# build/fuzz/corpus/<t>), keeps crashing inputs in build/fuzz/findings/<t>/,
# and prints the executions per target and in total, with the CPU seconds
# each target got (on a shared machine a target may get much less than its
# SECONDS of one core) and the wall time of the whole run.
set -uo pipefail
cd "$(dirname "$0")/../.."
S=$1; shift
total=0; crashes=0; cpu_all=0; t0=$(date +%s)
printf '%-12s %12s %8s %8s %10s %s\n' target executions exec/s cpu_s exec/cpu_s findings
for t in "$@"; do
    mkdir -p "build/fuzz/corpus/$t" "build/fuzz/findings/$t"
    cp -n build/fuzz/seeds/$t/* tests/fuzz/regress/$t/* "build/fuzz/corpus/$t/" 2>/dev/null || true
    log=build/fuzz/$t.log
    OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
        /usr/bin/time -f '%U %S' -o "build/fuzz/$t.time" "build/fuzz/fuzz_$t" -max_total_time="$S" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="build/fuzz/findings/$t/" -print_final_stats=1 "build/fuzz/corpus/$t" >"$log" 2>&1
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    n=${n:-0}
    f=$(ls "build/fuzz/findings/$t" | wc -l)
    # user + system CPU seconds (the last line: time may note a signal first)
    cpu=$(tail -1 "build/fuzz/$t.time" | awk '{printf "%.0f", $1 + $2}')
    cpu=${cpu:-0}
    total=$((total + n)); crashes=$((crashes + f)); cpu_all=$((cpu_all + cpu))
    printf '%-12s %12d %8d %8d %10d %d\n' "$t" "$n" $((n / S)) "$cpu" $((n / (cpu > 0 ? cpu : 1))) "$f"
done
printf '%-12s %12d %8s %8d %10s %d\n' total "$total" "" "$cpu_all" "" "$crashes"
echo "$# targets x $S s: $(( $(date +%s) - t0 )) s wall, $cpu_all CPU s ($(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
[ "$crashes" -eq 0 ]
