#!/usr/bin/env bash
# check_lm.sh: LoRA adapters on a decoder through the public API (peftc_lm_*)
# against the float64 PyTorch Llama with the adapters merged (W + s B A):
#   - a random LoRA on all seven linear layers of the tiny random Llama
#     (tests/make_llama_hf.py), unmerged and --merge, from the HF directory
#     and from its GGUF (q/k rows permuted: the adapter's lora_B rows must be
#     permuted the same way when applied);
#   - two adapters at once with scales 0.5 and 1.5 (one rsLoRA);
#   - bad adapters: one line naming the file and the problem;
#   - peftc generate / chat on SmolLM2: greedy output streamed, the chat
#     template applied, stop strings, and the bad-input messages.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
O=tests/out/lm
L=tests/out/llama
. tests/lib.sh
mkdir -p $O $L
run() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -5; bad "fixture step failed: $*"; finish; fi; }

# fixtures (shared with check_llama.sh, made here if missing)
fixtures_lock $L
[ -s $L/tiny/config.json ] || run "$PY" tests/make_llama_hf.py tiny $L/tiny
[ -s $L/tiny.gguf ] || run "$PY" tests/make_llama_gguf.py $L/tiny $L/tiny.gguf
[ -s $L/tiny_ids.txt ] || run "$PY" tests/ref_llama.py random $L/tiny_ids.txt --vocab 97
fixtures_unlock
head -4 $L/tiny_ids.txt > $O/ids.txt
R=tests/ref_lm_lora.py
run "$PY" $R adapter $L/tiny $O/all7 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --r 4 --alpha 8 --seed 1
run "$PY" $R adapter $L/tiny $O/qv --targets q_proj,v_proj --r 2 --alpha 4 --seed 2 --rslora
run "$PY" $R logits $L/tiny $O/ids.txt $O/ref_base.f32
run "$PY" $R logits $L/tiny $O/ids.txt $O/ref_all7.f32 --adapter $O/all7
run "$PY" $R logits $L/tiny $O/ids.txt $O/ref_two.f32 --adapter $O/all7:0.5 --adapter $O/qv:1.5
build_driver lm_driver || finish

cmp_logits() { # name got ref tol
    "$PY" - "$2" "$3" "$4" <<'PYEOF'
import sys, numpy as np
g = np.fromfile(sys.argv[1], dtype=np.float32); r = np.fromfile(sys.argv[2], dtype=np.float32)
if g.shape != r.shape: print(f"shape {g.shape} vs {r.shape}"); sys.exit(1)
d = float(np.abs(g - r).max()); print(f"max abs {d:.2e} over {g.size} logits"); sys.exit(0 if d <= float(sys.argv[3]) else 1)
PYEOF
}
# lm_driver takes MODEL IDS OUT then options; wrap to keep that order
drv() { local m=$1; shift; build/tests/lm_driver logits "$m" $O/ids.txt $O/got.f32 "$@"; }
check2() { # name ref tol model options...
    local name=$1 ref=$2 tol=$3 m=$4; shift 4
    local msg
    if ! msg=$(drv "$m" "$@" 2>&1); then bad "$name: $msg"; return; fi
    if msg=$(cmp_logits "$name" $O/got.f32 $ref $tol); then ok "$name: $msg"; else bad "$name: $msg"; fi
}
check2 "tiny HF, no adapter" $O/ref_base.f32 1e-3 $L/tiny
check2 "tiny HF, LoRA on 7 linears unmerged" $O/ref_all7.f32 1e-3 $L/tiny --adapter $O/all7
check2 "tiny HF, LoRA merged" $O/ref_all7.f32 1e-3 $L/tiny --adapter $O/all7 --merge
check2 "tiny GGUF (q/k permuted), LoRA unmerged" $O/ref_all7.f32 1e-3 $L/tiny.gguf --adapter $O/all7
check2 "tiny GGUF, LoRA merged" $O/ref_all7.f32 1e-3 $L/tiny.gguf --adapter $O/all7 --merge
check2 "two adapters, scales 0.5 and 1.5 (rsLoRA)" $O/ref_two.f32 1e-3 $L/tiny --adapter $O/all7:0.5 --adapter $O/qv:1.5
# the adapter must change the logits (else the checks above could not fail)
if cmp_logits x $O/ref_base.f32 $O/ref_all7.f32 1e-2 >/dev/null; then bad "the test adapter barely moves the logits"; else ok "the test adapter moves the logits by more than 1e-2"; fi

# bad adapters
mkdir -p $O/bad_type $O/bad_shape
cp $O/all7/adapter_model.safetensors $O/bad_type/
sed 's/"LORA"/"IA3"/' $O/all7/adapter_config.json > $O/bad_type/adapter_config.json
cp $O/all7/adapter_model.safetensors $O/bad_shape/
sed 's/"r": 4/"r": 3/' $O/all7/adapter_config.json > $O/bad_shape/adapter_config.json
expect_fail() { # name words... -- command...
    local name=$1; shift
    local words=()
    while [ "$1" != "--" ]; do words+=("$1"); shift; done; shift
    local out rc
    out=$("$@" 2>&1 >/dev/null); rc=$?
    local good=1
    [ $rc -ne 0 ] || good=0
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || good=0
    for w in "${words[@]}"; do printf '%s' "$out" | grep -qF -- "$w" || good=0; done
    if [ $good = 1 ]; then ok "$name: $out"; else bad "$name (exit $rc): $out"; fi
}
expect_fail "an IA3-typed adapter holding LoRA tensors on a decoder" "bad_type/adapter_model.safetensors" "not an (IA)3 vector" -- drv $L/tiny --adapter $O/bad_type
expect_fail "r disagreeing with the tensors" "bad_shape" "maybe wrong base model" -- drv $L/tiny --adapter $O/bad_shape
expect_fail "a missing adapter" "nonexistent/adapter_config.json" -- drv $L/tiny --adapter $O/nonexistent

# the CLI on SmolLM2
G=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s $G ] && [ -x ./peftc ]; then
    out=$(./peftc generate --model $G --prompt "The capital of France is" --max-new-tokens 8 --threads 2 2>&1); rc=$?
    if [ $rc -eq 0 ] && printf '%s' "$out" | grep -q "Paris"; then ok "generate: greedy continuation names Paris: $(printf '%s' "$out" | head -1)"; else bad "generate (exit $rc): $out"; fi
    out=$(./peftc generate --model $G --chat --prompt "What is 2+2? Answer with one number." --max-new-tokens 12 2>&1); rc=$?
    if [ $rc -eq 0 ] && printf '%s' "$out" | grep -q "4"; then ok "generate --chat answers: $(printf '%s' "$out" | tr '\n' ' ' | head -c 80)"; else bad "generate --chat (exit $rc): $out"; fi
    out=$(./peftc generate --model $G --prompt "1, 2, 3, 4, 5," --max-new-tokens 30 --stop " 9" 2>&1); rc=$?
    if [ $rc -eq 0 ] && printf '%s' "$out" | grep -q "8," && ! printf '%s' "$out" | grep -q " 9"; then ok "a stop string ends the output before it: $out"; else bad "stop string (exit $rc): $out"; fi
    out=$(printf 'Say hi.\n\n' | ./peftc chat --model $G --max-new-tokens 8 2>&1); rc=$?
    if [ $rc -eq 0 ] && [ -n "$out" ]; then ok "chat: one turn from stdin: $(printf '%s' "$out" | tr '\n' ' ' | head -c 60)"; else bad "chat (exit $rc): $out"; fi
    long=$(yes "word" | head -300 | tr '\n' ' ')
    expect_fail "a prompt longer than the context" "301 tokens" "holds 64" -- ./peftc generate --model $G --ctx 64 --prompt "$long"
    expect_fail "a model without a tokenizer" "no tokenizer" -- ./peftc generate --model $L/tiny.gguf --prompt hi
    expect_fail "an encoder given to generate" "all-MiniLM-L6-v2" -- ./peftc generate --model models/all-MiniLM-L6-v2 --prompt hi
    expect_fail "--top-p out of range" "--top-p" -- ./peftc generate --model $G --prompt hi --top-p 2
    printf 'GGUF\x03\x00\x00\x00' > $O/trunc.gguf
    expect_fail "a truncated GGUF" "trunc.gguf" "truncated" -- ./peftc generate --model $O/trunc.gguf --prompt hi
else
    bad "models/SmolLM2-135M-Instruct.Q4_1.gguf or ./peftc missing (run make)"
fi
finish
