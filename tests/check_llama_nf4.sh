#!/usr/bin/env bash
# check_llama_nf4.sh: the Llama decoder with NF4 block weights (llama.c
# LLAMA_LOAD_NF4, through quant_matmul's QUANT_TYPE_NF4) against the PyTorch
# float64 oracle (tests/ref_llama.py) run on the same model with bitsandbytes'
# dequantised NF4 weights (tests/ref_llama_nf4.py): a tiny bf16 Llama (hidden
# 64, GQA, ffn 128): all-token logits and KV-cache decode <= 1e-3 max abs,
# greedy continuations identical (tests/llama_ref.c), on every kernel tier;
# the public decoder option (peftc_lm_opts.quantize, generate --quantize);
# and a GGUF base refused with one line.
# Prints ok/FAIL lines and "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
O=tests/out/llama_nf4
. tests/lib.sh
if ! "$PY" -c "import bitsandbytes, torch, transformers" 2>/dev/null; then bad "the oracle needs bitsandbytes, torch, transformers"; finish; fi
rm -rf $O; mkdir -p $O
run() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -5; bad "fixture step failed: $*"; finish; fi; }
run "$PY" tests/ref_llama_nf4.py $O/bf16 $O/deq
run "$PY" tests/ref_llama.py random $O/ids.txt --vocab 97
run "$PY" tests/ref_llama.py fixture $O/deq $O/ids.txt $O/fx --ngen 2
ok "fixtures: the bf16 model, its NF4 round trip by bitsandbytes, the float64 oracle's logits"
build_driver llama_ref || finish
for isa in portable avx2 avx512; do
    out=$(PEFTC_KERNELS_ISA=$isa LLAMA_REF_NF4=1 timeout 300 build/tests/llama_ref $O/bf16 $O/ids.txt $O/fx 1e-3 2 2>&1)
    tally "$(printf '%s\n' "$out" | sed "s/^\(ok   - \|FAIL - \)/\1[$isa] /")"
done
# training on the NF4 base (--quantize nf4 / --method qlora reach the Llama
# family through the model loader): LoRA's loss and gradients through the NF4
# weights against float64 autograd on bitsandbytes' dequantised weights
build_driver lm_grad || finish
for c in lora_qv:4:8:0:q_proj,v_proj all_linear:4:8:0:all-linear; do
    IFS=: read -r n r a rs tg <<< "$c"
    rm -rf "$O/$n"; mkdir -p "$O/$n"
    if LM_GRAD_NF4=1 timeout 120 build/tests/lm_grad $O/bf16 lora "$O/$n" "$r" "$a" "$rs" "$tg" 0 2 >"$O/$n/log" 2>&1; then
        tally "$("$PY" tests/ref_llama_train.py compare $O/deq "$O/$n" "$r" "$a" "$rs" 2>&1 | sed "s/^\(ok  \|FAIL\) - /\1 - NF4 base, LoRA $n: /")"
    else bad "lm_grad on the NF4 base ($n): $(head -1 "$O/$n/log")"; fi
done
# the public option (peftc_lm_opts.quantize) reaches the loader
build_driver lm_nf4_driver && tally "$(build/tests/lm_nf4_driver $O/bf16 2>&1)"
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f $GGUF ]; then
    out=$(LLAMA_REF_NF4=1 build/tests/llama_ref $GGUF $O/ids.txt $O/fx 1e-3 2>&1)
    if printf '%s' "$out" | grep -q "quantised already"; then ok "a GGUF base with NF4 is refused: $(printf '%s' "$out" | grep -o '[^:]*: --quantize.*' | head -1)"
    else bad "a GGUF base with NF4: $out"; fi
    out=$(./peftc generate --model $GGUF --quantize nf4 --prompt hi 2>&1)
    if [ $? -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c .)" -eq 1 ] && printf '%s' "$out" | grep -q "quantised already"; then
        ok "peftc generate --quantize nf4 on a GGUF: $out"
    else bad "peftc generate --quantize nf4 on a GGUF: $out"; fi
fi
finish
