#!/usr/bin/env bash
# Runs every test: the C test binaries (build/tests/test_*) and the tests that
# compare against an independent oracle (tests/*.sh), adds up their counts and
# ends with "N passed, N failed". Exit status is non-zero if any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The oracle comparisons hold fp32 to fp32 tolerances: frozen weights in fp32
# unless a test asks for bf16 (tests/check_bf16.sh tests that path, which is
# the default on CPUs with AMX).
export PEFTC_BF16=0
mkdir -p tests/out
pass=0; fail=0; broken=""
run_one() {
    local name="$1"; shift
    local log="tests/out/$name.log"
    echo "== $name"
    "$@" >"$log" 2>&1
    local rc=$?
    grep -E '^(FAIL|ok  )' "$log" | grep -v '^ok' || true
    local line
    line=$(grep -E '^## [0-9]+ [0-9]+$' "$log" | tail -1)
    if [ -z "$line" ]; then
        echo "FAIL - $name produced no result line (exit $rc); see $log"; tail -5 "$log"
        fail=$((fail + 1)); broken="$broken $name"; return
    fi
    set -- $line
    pass=$((pass + $2)); fail=$((fail + $3))
    if [ "$rc" -ne 0 ] && [ "$3" -eq 0 ]; then
        echo "FAIL - $name exited $rc"; fail=$((fail + 1)); broken="$broken $name"
    fi
    echo "   $2 passed, $3 failed"
}
for t in build/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for t in tests/check_*.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t" .sh)" bash "$t"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
