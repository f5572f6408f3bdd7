#!/usr/bin/env bash
# run_lsan.sh: what `make test-lsan` runs: the CLI paths of the AddressSanitizer
# + UndefinedBehaviorSanitizer + LeakSanitizer build (build/asan) on the tiny
# fixtures, every command the CLI has, successful and failing: a leak, a
# sanitizer report or an unexpected exit status fails the case. The tiny
# BERT (tests/make_tiny_bert.py): tokenize, embed, inspect, train (several
# methods, checkpoints, resume, --eval, fuse), eval, predict, merge,
# merge-adapters, export adapterhub, sweep and report, score; the tiny Llama
# (tests/make_llama_hf.py / make_llama_gguf.py, a PEFT LoRA from
# tests/ref_lm_lora.py): inspect, merge (directory and GGUF), export gguf; the
# tiny Llama with SmolLM2's tokenizer (tests/ref_lm_eval.py make): generate
# (--chat, --adapter, --merge, --data), chat on stdin, causal-LM train and
# eval; SmolLM2's Q4_1 GGUF: generate two tokens; and the failure paths
# (bad options, missing and corrupt files), which free on the way out too.
# Prints ok/FAIL lines and "## p f".
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
export OMP_NUM_THREADS=1 GOMP_SPINCOUNT=10000
export ASAN_OPTIONS=halt_on_error=1:exitcode=99:detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:exitcode=99:print_stacktrace=1
# libgomp's thread pool is not freed at exit: not ours
SUPP=$(mktemp /tmp/peftc_lsan_supp.XXXXXX)
echo "leak:libgomp" >"$SUPP"
export LSAN_OPTIONS=suppressions=$SUPP:exitcode=98
B=build/asan; P=$B/peftc
[ -x "$P" ] || { bad "$P missing: make test-asan-build"; finish; }
W=$(mktemp -d /tmp/peftc_lsan.XXXXXX); trap 'rm -rf "$W" "$SUPP"' EXIT
# the fixtures (kept between runs in tests/out/lsan; made here if missing)
O=tests/out/lsan; mkdir -p $O
fx() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -3; bad "fixture step failed: $*"; finish; fi; }
fixtures_lock $O
[ -s $O/tb/model/config.json ] || fx $PY tests/make_tiny_bert.py $O/tb
[ -s $O/ll/config.json ] || fx $PY tests/make_llama_hf.py tiny $O/ll
[ -s $O/ll.gguf ] || fx $PY tests/make_llama_gguf.py $O/ll $O/ll.gguf
[ -s $O/all7/adapter_config.json ] || fx $PY tests/ref_lm_lora.py adapter $O/ll $O/all7 --targets q_proj,v_proj,down_proj --r 2 --alpha 4 --seed 1
if [ -f "$GGUF" ]; then
    [ -s $O/tok/tokenizer.json ] || fx $PY tests/ref_bpe.py hfjson "$GGUF" $O/tok
    [ -s $O/lt/model.safetensors ] || fx $PY tests/ref_lm_eval.py make $O/tok $O/lt
fi
fixtures_unlock
T=$O/tb/model; D=$O/tb
printf 'a good movie\nthe plot is bad\n' >"$W/two.txt"
printf 'Say hi.\n\n' >"$W/chat.txt"
head -6 ../shared/data/gsm8k/train.jsonl >"$W/gsm.jsonl"

# lsan NAME RC CMD... : runs CMD (stdin from $STDIN, default two text lines)
# and wants exit status RC and no sanitizer report
lsan() {
    local name=$1 want=$2; shift 2
    "$@" <"${STDIN:-$W/two.txt}" >"$W/out" 2>"$W/err"; local rc=$?
    if grep -q -E 'LeakSanitizer|AddressSanitizer|runtime error' "$W/err"; then
        bad "lsan: $name (exit $rc): $(grep -m1 -E 'SUMMARY|ERROR' "$W/err")"
        grep -E '^    #[0-9]' "$W/err" | grep -v -E 'libasan|libubsan|malloc|calloc|realloc|strdup' | head -6 | sed 's/^/    /'
    elif [ "$rc" -ne "$want" ]; then bad "lsan: $name: exit $rc, not $want: $(grep -m1 'peftc:' "$W/err")"
    else ok "lsan: $name (exit $rc)"; fi
}

# --- the tiny BERT ---
R=$W/runs; mkdir -p $R
c="--model $T --train $D/train.tsv --batch 8 --seed 3"
lsan "tokenize" 0 $P tokenize --model $T
lsan "embed" 0 $P embed --model $T --normalize
STDIN=$W/chat.txt lsan "embed: an empty line" 1 $P embed --model $T
lsan "inspect a model directory" 0 $P inspect $T
lsan "inspect a safetensors file" 0 $P inspect $T/model.safetensors
lsan "train lora, --eval, checkpoints, stopped" 0 $P train $c --eval $D/dev.tsv --method lora --r 4 --max-steps 6 --stop-after 3 --save-every 1 --out $R/lora
lsan "train: resume" 0 $P train $c --eval $D/dev.tsv --method lora --r 4 --max-steps 6 --save-every 1 --out $R/lora --resume $R/lora
for m in ia3 bitfit prefix prompt adapter-pfeiffer adalora; do
    case $m in
        prefix) extra="--prefix-len 2";;
        prompt) extra="--num-virtual 2";;
        adalora) extra="--init-r 2 --target-r 1 --total-step 4";;
        *) extra="";;
    esac
    lsan "train $m" 0 $P train $c --method $m $extra --max-steps 4 --out $R/$m
done
lsan "train custom deltas" 0 $P train $c --method custom --delta 'site=ffn.out,insert=sequential,r=2' --delta 'site=attn.v,r=2' --max-steps 2 --out $R/custom
awk -F'\t' 'BEGIN { OFS = "\t" } NR == 1 { print; next } { $4 = (NR % 5) / 2; print }' $D/pairs.tsv >"$W/scored.tsv"
lsan "train --task regression" 0 $P train --model $T --train "$W/scored.tsv" --task regression --method lora --r 2 --batch 8 --max-steps 2 --out $R/reg
lsan "train --task embedding" 0 $P train --model $T --train $D/pairs.tsv --task embedding --method lora --r 2 --batch 8 --max-steps 2 --out $R/emb
lsan "embed --adapter (embedding task)" 0 $P embed --model $T --adapter $R/emb
lsan "inspect a run directory" 0 $P inspect $R/lora
lsan "eval" 0 $P eval --model $T --adapter $R/lora --data $D/dev.tsv
lsan "eval --merge" 0 $P eval --model $T --adapter $R/lora --data $D/dev.tsv --merge
lsan "predict --probs" 0 $P predict --model $T --adapter $R/lora --probs
lsan "predict two adapters --compose" 0 $P predict --model $T --adapter a=$R/adapter-pfeiffer --adapter b=$R/adapter-pfeiffer --compose 'stack(a,b)'
lsan "merge (BERT, LoRA)" 0 $P merge --model $T --adapter $R/lora --out $R/merged
lsan "embed the merged model" 0 $P embed --model $R/merged
lsan "merge-adapters" 0 $P merge-adapters --adapter $R/lora --adapter $R/lora --out $R/ma
lsan "export adapterhub" 0 $P export --format adapterhub --adapter $R/adapter-pfeiffer --model $T --out $R/ah
lsan "predict an AdapterHub directory" 0 $P predict --model $T --adapter $R/ah
lsan "fuse" 0 $P fuse --model $T --adapters a=$R/adapter-pfeiffer,b=$R/adapter-pfeiffer --train $D/train.tsv --batch 8 --max-steps 2 --out $R/fuse
lsan "sweep and its report" 0 $P sweep --model $T --train $D/train.tsv --eval $D/dev.tsv --methods lora,ia3 --steps 2 --batch 8 --budgets 0.5% --seeds 1 --out $R/sweep
lsan "report --format md" 0 $P report $R/sweep --format md
printf 'the cat sat\n' >"$W/pred.txt"; printf 'the cat sat down\n' >"$W/ref.txt"
lsan "score rouge" 0 $P score --metric rouge --pred "$W/pred.txt" --ref "$W/ref.txt"
lsan "methods" 0 $P methods
lsan "cpu" 0 $P cpu
# failure paths: each must free what it allocated before the error
lsan "fail: option given twice" 2 $P train $c --method lora --method ia3 --out $R/x
lsan "fail: bad delta spec" 1 $P train $c --method custom --delta 'site=ffn.out,r=2,r=3' --out $R/x
lsan "fail: resume with another method" 1 $P train $c --method bitfit --max-steps 6 --out $R/lora2 --resume $R/lora
lsan "fail: label outside the set" 1 $P eval --model $T --adapter $R/lora --data $D/pairs.tsv
lsan "fail: adapter of another method dir" 1 $P merge --model $T --adapter $R/prompt --out $R/x
lsan "fail: missing model" 1 $P embed --model $W/nowhere
head -c 300 $T/model.safetensors >"$W/trunc.safetensors"
lsan "fail: truncated safetensors" 1 $P inspect "$W/trunc.safetensors"
mkdir -p $W/badcfg; cp $T/* $W/badcfg/; echo '{"model_type": "bert"' >$W/badcfg/config.json
lsan "fail: broken config.json" 1 $P embed --model $W/badcfg
mkdir -p $W/badad; cp $R/lora/* $W/badad/ 2>/dev/null; echo '{"peft_type": "LORA", "r": 0}' >$W/badad/adapter_config.json
lsan "fail: bad adapter_config.json" 1 $P predict --model $T --adapter $W/badad

# --- the tiny Llama (no tokenizer): GGUF and HF layouts, a PEFT LoRA ---
lsan "inspect a GGUF" 0 $P inspect $O/ll.gguf
lsan "merge (Llama directory)" 0 $P merge --model $O/ll --adapter $O/all7 --out $R/ll_merged
lsan "merge (GGUF, f16)" 0 $P merge --model $O/ll.gguf --adapter $O/all7 --out $R/ll_f16.gguf --type f16
lsan "export gguf" 0 $P export --format gguf --adapter $O/all7 --model $O/ll.gguf --out $R/all7.gguf
lsan "inspect the exported GGUF LoRA" 0 $P inspect $R/all7.gguf
lsan "merge a GGUF LoRA" 0 $P merge --model $O/ll.gguf --adapter $R/all7.gguf --out $R/ll_m2.gguf
head -c 5000 $O/ll.gguf >"$W/trunc.gguf"
lsan "fail: truncated GGUF" 1 $P inspect "$W/trunc.gguf"
lsan "fail: generate without a tokenizer" 1 $P generate --model $O/ll.gguf --prompt hi

# --- the tiny Llama with SmolLM2's tokenizer, and SmolLM2 itself ---
if [ -f "$GGUF" ]; then
    L=$O/lt
    lt="--prompt-template Q:{question}A: --response-field answer"
    lsan "generate" 0 $P generate --model $L --prompt "Hello there" --max-new-tokens 4
    lsan "generate --chat, sampling" 0 $P generate --model $L --chat --system "Be brief." --prompt "Hi" --max-new-tokens 4 --temp 0.8 --top-k 20 --top-p 0.9 --seed 1
    STDIN=$W/chat.txt lsan "chat (stdin)" 0 $P chat --model $L --max-new-tokens 4
    lsan "train causal-lm lora, --eval, checkpoints" 0 $P train --model $L --train $W/gsm.jsonl --eval $W/gsm.jsonl $lt --method lora --r 2 --batch 2 --max-len 48 --max-steps 3 --save-every 2 --eval-every 2 --out $R/lm
    lsan "train causal-lm: resume" 0 $P train --model $L --train $W/gsm.jsonl $lt --method lora --r 2 --batch 2 --max-len 48 --max-steps 4 --save-every 2 --out $R/lm --resume $R/lm
    lsan "train causal-lm prompt tuning" 0 $P train --model $L --train $W/gsm.jsonl $lt --method prompt --num-virtual 2 --batch 2 --max-len 48 --max-steps 2 --out $R/lmp
    lsan "train causal-lm adalora" 0 $P train --model $L --train $W/gsm.jsonl $lt --method adalora --init-r 2 --target-r 1 --tinit 1 --tfinal 1 --delta-t 1 --total-step 4 --batch 2 --max-len 48 --max-steps 4 --out $R/lmada
    lsan "generate with the decoder AdaLoRA adapter" 0 $P generate --model $L --adapter $R/lmada --prompt hi --max-new-tokens 2
    lsan "eval --task causal-lm with an adapter" 0 $P eval --task causal-lm --model $L --adapter $R/lm --data $W/gsm.jsonl $lt --max-len 48
    lsan "eval --task causal-lm --metric" 0 $P eval --task causal-lm --model $L --data $W/gsm.jsonl $lt --max-len 48 --metric em-number --limit 2 --max-new-tokens 3
    lsan "generate --adapter --merge" 0 $P generate --model $L --adapter $R/lm --merge --prompt "Q: 2+2?" --max-new-tokens 3
    lsan "generate --data" 0 $P generate --model $L --adapter $R/lm:0.5 --data $W/gsm.jsonl $lt --limit 2 --max-new-tokens 3 --stop "." --out $R/gen.jsonl
    lsan "merge (the trained decoder LoRA)" 0 $P merge --model $L --adapter $R/lm --out $R/lm_merged
    lsan "generate SmolLM2 Q4_1 (GGUF vocabulary)" 0 $P generate --model $GGUF --prompt "The capital of France is" --max-new-tokens 2
    lsan "inspect SmolLM2's GGUF" 0 $P inspect $GGUF
    lsan "fail: a prompt longer than the context" 1 $P generate --model $L --ctx 8 --prompt "one two three four five six seven eight nine ten"
    lsan "fail: an adapter of another model" 1 $P generate --model $L --adapter $O/all7 --prompt hi
else bad "$GGUF missing: the decoder paths with a tokenizer are not checked"; fi
finish
