#!/usr/bin/env bash
# check_qlora.sh: QLoRA end to end against PyTorch (tests/ref_qlora.py, on
# top of tests/ref_train.py). A tiny random BERT (hidden 64, ffn 128, 2
# layers, dropout 0): `peftc train --method qlora` (NF4 base quantised by
# peftc from the fp32 file, LoRA r 4 alpha 8 on all six linear layers, 5
# AdamW steps with clipping) vs float64 autograd on the same model whose
# linear weights are bitsandbytes' dequantised NF4: the logged losses and
# gradient norms (clipped at 10 in some steps), the loss, logits and every
# LoRA and head gradient at the init weights (tests/train_grad.c), the LoRA and head parameters after 5 steps (ref_train.py's
# tolerances). Then the bad inputs: --quantize with an unknown name, full
# fine-tuning of an NF4 base, a model whose width is not a multiple of 64.
# Prints ok/FAIL lines and "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/qlora_ref
. tests/lib.sh
if ! "$PY" -c "import bitsandbytes, torch" 2>/dev/null; then bad "the oracle needs bitsandbytes and torch for $PY"; finish; fi
if [ ! -x ./peftc ]; then bad "./peftc missing: run make"; finish; fi
rm -rf "$FX"; mkdir -p "$FX"
tally "$("$PY" tests/ref_qlora.py gen "$FX" 2>&1 | grep -v kernels-community)"
[ -f "$FX/ref_lora.safetensors" ] || { bad "the oracle wrote no reference"; finish; }
targets=query,key,value,attention.output.dense,intermediate.dense,output.dense
if timeout 120 ./peftc train --model "$FX/model_fp32" --train "$FX/train.tsv" --method qlora --r 4 --alpha 8 \
        --lora-dropout 0 --init-adapter "$FX/init_lora" --batch 8 --max-steps 5 --lr 1e-2 --schedule constant \
        --warmup-ratio 0 --weight-decay 0.01 --clip 10 --seed 1 --max-len 32 --out "$FX/run" 2> "$FX/run.log"; then
    tally "$("$PY" tests/ref_qlora.py compare-train "$FX" "$FX/run" "$FX/run.log" 2>&1)"
    if grep -q "NF4 base: 0.51" "$FX/run.log"; then ok "the run reports the NF4 base: $(grep -o 'NF4 base: [0-9.]* bytes per linear parameter' "$FX/run.log")"
    else bad "the run log does not report the NF4 base's bytes per parameter"; fi
    if grep -q '"r": 4' "$FX/run/adapter_config.json" && grep -q '"LORA"' "$FX/run/adapter_config.json"; then
        ok "adapter_config.json: a LoRA adapter (PEFT loads it onto the dequantised base)"
    else bad "adapter_config.json: $(head -c 300 "$FX/run/adapter_config.json")"; fi
else
    tail -3 "$FX/run.log"; bad "peftc train --method qlora exited non-zero"
fi
# one thread: the same adapter bit for bit (the NF4 kernels' sums do not depend on the thread count)
if timeout 120 ./peftc train --threads 1 --model "$FX/model_fp32" --train "$FX/train.tsv" --method qlora --r 4 --alpha 8 \
        --lora-dropout 0 --init-adapter "$FX/init_lora" --batch 8 --max-steps 5 --lr 1e-2 --schedule constant \
        --warmup-ratio 0 --weight-decay 0.01 --clip 10 --seed 1 --max-len 32 --out "$FX/run_t1" 2> "$FX/run_t1.log"; then
    tally "$("$PY" tests/ref_qlora.py same-adapter "$FX/run" "$FX/run_t1" 2>&1 | sed 's/training on the saved NF4 base gives/--threads 1 gives/; s/as quantising at load/as 2 threads/')"
else tail -2 "$FX/run_t1.log"; bad "peftc train --threads 1 --method qlora exited non-zero"; fi
# the preset's defaults (QLoRA paper: r 64, alpha 16, dropout 0.1, all linear layers)
if timeout 120 ./peftc train --model "$FX/model_fp32" --train "$FX/train.tsv" --method qlora --batch 8 --max-steps 1 \
        --out "$FX/run_defaults" 2> "$FX/run_defaults.log"; then
    if "$PY" - "$FX/run_defaults/adapter_config.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
ok = c["r"] == 64 and c["lora_alpha"] == 16 and abs(c["lora_dropout"] - 0.1) < 1e-6 and all(m in c["target_modules"] for m in ("query", "key", "value", "attention\\.output\\.dense", "intermediate", "output\\.dense"))
print(c["r"], c["lora_alpha"], c["lora_dropout"], c["target_modules"])
sys.exit(0 if ok else 1)
PYEOF
    then ok "qlora defaults: r 64, alpha 16, dropout 0.1, six target modules"
    else bad "qlora defaults: $(cat "$FX/run_defaults/adapter_config.json" | head -c 400)"; fi
else tail -2 "$FX/run_defaults.log"; bad "peftc train --method qlora (defaults) exited non-zero"; fi
# peftc quantize: the file vs bitsandbytes; a run on it equals the run that quantised at load
if out=$(./peftc quantize --model "$FX/model_fp32" --out "$FX/model_nf4" 2>&1); then
    ok "peftc quantize: $out"
    tally "$("$PY" tests/ref_qlora.py check-file "$FX/model_fp32" "$FX/model_nf4" 2>&1 | grep -v kernels-community)"
    if timeout 120 ./peftc train --model "$FX/model_nf4" --train "$FX/train.tsv" --method qlora --r 4 --alpha 8 \
            --lora-dropout 0 --init-adapter "$FX/init_lora" --batch 8 --max-steps 5 --lr 1e-2 --schedule constant \
            --warmup-ratio 0 --weight-decay 0.01 --clip 10 --seed 1 --max-len 32 --out "$FX/run_file" 2> "$FX/run_file.log"; then
        tally "$("$PY" tests/ref_qlora.py same-adapter "$FX/run" "$FX/run_file" 2>&1)"
    else tail -2 "$FX/run_file.log"; bad "peftc train on the saved NF4 base exited non-zero"; fi
    # loss, logits and every LoRA/head gradient at the init weights through the library API on the NF4 base
    if build_driver train_grad; then
        tally "$(timeout 120 build/tests/train_grad "$FX/model_nf4" "$FX/train.tsv" "$FX/init_lora" "$FX/c_grad.safetensors" 2>&1)"
        [ -f "$FX/c_grad.safetensors" ] && tally "$("$PY" tests/ref_qlora.py compare-grads "$FX" "$FX/c_grad.safetensors" 2>&1)"
    fi
else bad "peftc quantize: $out"; fi
# eval of a qlora adapter runs on the NF4 base, whether it is quantised at load or read from the file
e1=$(./peftc eval --model "$FX/model_fp32" --adapter "$FX/run" --data "$FX/train.tsv" 2>&1)
e2=$(./peftc eval --model "$FX/model_nf4" --adapter "$FX/run" --data "$FX/train.tsv" 2>&1)
if [ -n "$e1" ] && [ "$e1" = "$e2" ] && printf '%s' "$e1" | grep -q accuracy; then ok "eval of the qlora adapter on the NF4 base (at load == from the file): $e1"
else bad "eval of the qlora adapter: at load $e1, from the file $e2"; fi
# bad input: one clear line, non-zero exit
expect_fail() {
    local what=$1 pattern=$2; shift 2
    local out
    if out=$("$@" 2>&1); then bad "$what: exited 0"; return; fi
    if [ "$(printf '%s\n' "$out" | grep -c .)" -eq 1 ] && printf '%s' "$out" | grep -q -- "$pattern"; then ok "$what: $out"
    else bad "$what: $out"; fi
}
expect_fail "--quantize q3" "nf4, none" ./peftc train --model "$FX/model_fp32" --train "$FX/train.tsv" --method lora \
    --quantize q3 --out "$FX/bad1"
expect_fail "full fine-tuning on an NF4 base" "stay NF4" ./peftc train --model "$FX/model_fp32" --train "$FX/train.tsv" \
    --method full --quantize nf4 --out "$FX/bad2"
"$PY" tests/make_tiny_bert.py "$FX/model32" > /dev/null 2>&1
expect_fail "--quantize nf4 on a width-32 model" "multiples of 64" ./peftc train --model "$FX/model32/model" \
    --train "$FX/train.tsv" --method lora --quantize nf4 --out "$FX/bad3"
mkdir -p "$FX/other"; cp "$FX/model_nf4/"* "$FX/other/" 2>/dev/null
sed -i 's/"intermediate_size": 128/"intermediate_size": 256/' "$FX/other/config.json"
expect_fail "an NF4 file for another model" "another model" ./peftc train --model "$FX/other" --train "$FX/train.tsv" \
    --method lora --out "$FX/bad4"
expect_fail "peftc quantize onto its own directory" "model directory itself" ./peftc quantize --model "$FX/model_nf4" \
    --out "$FX/model_nf4"
expect_fail "merging into an NF4 base" "NF4" ./peftc eval --model "$FX/model_nf4" --adapter "$FX/run" --data "$FX/train.tsv" --merge
finish
