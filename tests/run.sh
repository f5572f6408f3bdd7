#!/usr/bin/env bash
# Runs every test: the C test binaries (build/tests/test_*) and the tests that
# compare against an independent oracle (tests/*.sh), adds up their counts and
# ends with "N passed, N failed". Exit status is non-zero if any test failed.
#
# Tests run PEFTC_TEST_JOBS at a time (default: the number of cores, at most
# 2): most of the wall time is single-threaded (Python oracles importing torch,
# one-thread training runs), so two at once on two cores nearly halves it.
# The longest tests start first so the last one does not run alone. Tests that
# time a kill or poll other processes (SERIAL below) run on their own after
# the rest, so a neighbour never shifts their timing.
set -uo pipefail
cd "$(dirname "$0")/.."
# The oracle comparisons hold fp32 to fp32 tolerances: frozen weights in fp32
# unless a test asks for bf16 (tests/check_bf16.sh tests that path, which is
# the default on CPUs with AMX).
export PEFTC_BF16=0
# With two tests sharing two cores, an OpenMP team must not spin on a core the
# other test needs; a test that wants threads sets OMP_NUM_THREADS itself.
export OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000
jobs=${PEFTC_TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -gt 2 ] && jobs=2
[ "$jobs" -lt 1 ] && jobs=1
mkdir -p tests/out
res=$(mktemp -d /tmp/peftc_run.XXXXXX)
trap 'rm -rf "$res"' EXIT

# one test: its log in tests/out/NAME.log, its tally and report in $res/NAME.*
run_one() {
    local name="$1"; shift
    local log="tests/out/$name.log" rep="$res/$name.rep"
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    {
        echo "== $name ($((SECONDS - t0)) s)"
        grep -E '^(FAIL|ok  )' "$log" | grep -v '^ok' || true
        local line p=0 f=0 broken=0
        line=$(grep -E '^## [0-9]+ [0-9]+$' "$log" | tail -1)
        if [ -z "$line" ]; then
            echo "FAIL - $name produced no result line (exit $rc); see $log"; tail -5 "$log"
            f=1; broken=1
        else
            set -- $line
            p=$2; f=$3
            if [ "$rc" -ne 0 ] && [ "$3" -eq 0 ]; then
                echo "FAIL - $name exited $rc"; f=1; broken=1
            fi
            echo "   $2 passed, $3 failed"
        fi
        echo "$p $f $broken" >"$res/$name.tally"
    } >"$rep"
}

SERIAL=" check_mpi check_reliability check_sweep "
# the slowest first (measured on 2 cores); anything not named keeps glob order
FIRST="check_tasks check_embedding check_asan check_llama_train check_interop check_merge_model check_merge check_lm_eval
       check_adapterhub check_nf4 check_fusion check_bpe check_adalora check_adalora_lm"
declare -a names=() cmds=()
add() { names+=("$1"); cmds+=("$2"); }
for n in $FIRST; do [ -f "tests/$n.sh" ] && add "$n" "bash tests/$n.sh"; done
for t in tests/check_*.sh; do
    [ -f "$t" ] || continue
    n=$(basename "$t" .sh)
    case " $FIRST " in *" $n "*) continue;; esac
    case "$SERIAL" in *" $n "*) continue;; esac
    add "$n" "bash $t"
done
for t in build/tests/test_*; do [ -x "$t" ] && add "$(basename "$t")" "$t"; done

shown=" "
show_done() {   # print the reports of tests that have finished, once each
    local r n
    for r in "$res"/*.tally; do
        [ -f "$r" ] || continue
        n=$(basename "$r" .tally)
        case "$shown" in *" $n "*) continue;; esac
        cat "$res/$n.rep"; shown="$shown$n "
    done
}
running=0
for i in "${!names[@]}"; do
    while [ "$running" -ge "$jobs" ]; do wait -n; running=$((running - 1)); show_done; done
    run_one "${names[$i]}" ${cmds[$i]} &
    running=$((running + 1))
done
wait; show_done
for n in $SERIAL; do
    [ -f "tests/$n.sh" ] || continue
    run_one "$n" bash "tests/$n.sh"; show_done
done

pass=0; fail=0
for r in "$res"/*.tally; do
    read -r p f _ <"$r"
    pass=$((pass + p)); fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
