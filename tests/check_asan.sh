#!/usr/bin/env bash
# check_asan.sh: the sanitizer run in every test run (and so in CI), as
# `make test-asan` does it: the library, the CLI and the unit tests built
# with AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer) in
# build/asan, then tests/run_asan.sh (every unit test binary, the fuzz
# regression replay, CLI paths on the tiny BERT; any report fails), then
# tests/run_lsan.sh (`make test-lsan`: LeakSanitizer over every CLI command
# on the tiny BERT and Llama fixtures; ~20 s, ~20 CPU s more when it makes
# its fixtures). About 3-5 minutes on 2 cores, most of it the build.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! make -s --no-print-directory test-asan-build > tests/out/asan_build.log 2>&1; then
    echo "FAIL - the sanitizer build failed (tests/out/asan_build.log):"
    grep -m5 -E 'error' tests/out/asan_build.log | sed 's/^/    /'
    echo "## 0 1"; exit 1
fi
. tests/lib.sh
tally "$(bash tests/run_asan.sh 2>&1)"
tally "$(bash tests/run_lsan.sh 2>&1)"
finish
