#!/usr/bin/env bash
# check_clang.sh: the second compiler (issue 15: the tree must build with GCC
# and clang, and CI builds with both). Builds library, CLI, unit tests and the
# fuzz replay with clang into build/clang (`make CC=clang B=build/clang all
# tests`) and runs every clang-built unit test binary and the fuzz regression
# replay. About 40 s of build and 50 s of tests on 2 cores (test_kernels most).
# Prints ok/FAIL lines and "## p f".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
command -v clang >/dev/null || { bad "clang is not installed (scripts/setup.sh installs it)"; finish; }
mkdir -p tests/out
if ! make -s --no-print-directory CC=clang B=build/clang all tests > tests/out/clang_build.log 2>&1; then
    bad "the clang build failed (tests/out/clang_build.log): $(grep -m3 -E 'error' tests/out/clang_build.log | tr '\n' ' ')"
    finish
fi
ok "clang build of library, CLI, unit tests and fuzz replay ($(clang --version | head -1))"
for t in build/clang/tests/test_*; do
    [ -x "$t" ] || continue
    out=$("$t" 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^## [0-9]+ [0-9]+$' | tail -1)
    set -- $line
    if [ "$rc" -eq 0 ] && [ -n "$line" ] && [ "$3" -eq 0 ]; then ok "clang: $(basename "$t") ($2 passed)"
    else bad "clang: $(basename "$t") exit $rc: $(printf '%s\n' "$out" | grep -m3 FAIL)"; fi
done
out=$(build/clang/tests/fuzz_replay tests/fuzz/regress 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok "clang: fuzz regression replay" || bad "clang: fuzz replay exit $rc: $(printf '%s\n' "$out" | grep -m3 FAIL)"
finish
