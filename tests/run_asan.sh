#!/usr/bin/env bash
# run_asan.sh: what `make test-asan` runs on the AddressSanitizer +
# UndefinedBehaviorSanitizer (+ LeakSanitizer) build in build/asan: every
# unit test binary, the fuzz regression replay, and CLI paths (embed,
# tokenize, train with a checkpoint, resume, eval, predict, bad input) on the
# tiny BERT. Any sanitizer report fails (halt_on_error, exit code 99).
# Prints ok/FAIL lines and "## p f".
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1 GOMP_SPINCOUNT=10000
export ASAN_OPTIONS=halt_on_error=1:exitcode=99:detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:exitcode=99:print_stacktrace=1
# libgomp's thread pool is not freed at exit: not ours
echo "leak:libgomp" > /tmp/peftc_lsan.supp
export LSAN_OPTIONS=suppressions=/tmp/peftc_lsan.supp
B=build/asan
W=$(mktemp -d /tmp/peftc_asan.XXXXXX); trap 'rm -rf "$W"' EXIT
for t in $B/tests/test_*; do
    [ -x "$t" ] || continue
    out=$("$t" 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^## [0-9]+ [0-9]+$' | tail -1)
    if [ "$rc" -eq 0 ] && [ -n "$line" ]; then ok "asan: $(basename "$t") clean ($line)"
    else bad "asan: $(basename "$t") exit $rc: $(printf '%s\n' "$out" | grep -m3 -E 'ERROR|runtime error|FAIL')"; fi
done
out=$($B/tests/fuzz_replay tests/fuzz/regress 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok "asan: fuzz regression replay clean" || bad "asan: fuzz replay exit $rc: $(printf '%s\n' "$out" | grep -m3 -E 'ERROR|runtime error')"
/usr/bin/python3 tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "tiny model"; finish; }
P=$B/peftc; T=$W/tiny/model
echo "a good movie" > "$W/one.txt"
cli() { # name expected-rc cmd...
    local name=$1 want=$2; shift 2
    "$@" <"$W/one.txt" >/dev/null 2>"$W/err"; local rc=$?
    if [ "$rc" -eq "$want" ]; then ok "asan: $name (exit $rc)"; else bad "asan: $name exit $rc: $(grep -m3 -E 'ERROR|runtime error|peftc:' "$W/err")"; fi
}
cli "embed" 0 $P embed --model "$T"
cli "tokenize" 0 $P tokenize --model "$T"
cli "train lora with checkpoints" 0 $P train --model "$T" --train "$W/tiny/train.tsv" --method lora --r 4 --max-steps 6 --stop-after 3 --save-every 1 --batch 8 --out "$W/run"
cli "resume" 0 $P train --model "$T" --train "$W/tiny/train.tsv" --method lora --r 4 --max-steps 6 --save-every 1 --batch 8 --out "$W/run" --resume "$W/run"
cli "eval" 0 $P eval --model "$T" --adapter "$W/run" --data "$W/tiny/dev.tsv"
cli "predict" 0 $P predict --model "$T" --adapter "$W/run"
cli "train adalora" 0 $P train --model "$T" --train "$W/tiny/train.tsv" --method adalora --init-r 2 --target-r 1 --total-step 4 --max-steps 4 --batch 8 --out "$W/ada"
cli "bad delta spec" 1 $P train --model "$T" --train "$W/tiny/train.tsv" --method custom --delta 'site=ffn.out,r=2,r=3' --out "$W/bad"
cli "missing model" 1 $P embed --model "$W/nowhere"
finish
