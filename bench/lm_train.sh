#!/usr/bin/env bash
# bench/lm_train.sh: SmolLM2-135M LoRA training, peftc against PyTorch + HF
# transformers + HF peft (bench/torch_lm_step.py), same weights, token rows,
# batch, sequence length, LoRA shape and threads, in the same run; tokens/s
# and peak RSS (/usr/bin/time -v) as ratios to PyTorch fp32.
#
# Cases (CASES=, comma-separated; bench/lm_train.py runs them):
#   torch-fp32   PyTorch + PEFT LoRA, fp32
#   torch-bf16   the same under torch.autocast("cpu", dtype=torch.bfloat16)
#   peftc-q4_1   peftc LoRA on the Q4_1 GGUF, the base kept quantised
#   peftc-f32    peftc LoRA on the F32 HF base, --fp32
#   peftc-bf16   peftc LoRA on the F32 HF base, --bf16 (frozen weights as bf16, AMX tiles)
#   peftc-nf4    peftc LoRA (same r/targets) on the HF base quantised to NF4 at load (--quantize nf4)
#   peftc-qlora  peftc --method qlora (NF4 base, LoRA r 64 alpha 16 dropout 0.1 on every linear layer)
#   CASE-ckpt    any case with gradient checkpointing (peftc --gradient-checkpointing;
#                torch: transformers' gradient_checkpointing_enable)
# The F32 HF base is the GGUF dequantised (tests/make_llama_hf.py gguf, the
# gguf package) with a tokenizer.json from the GGUF (tests/ref_bpe.py hfjson),
# made once under WORK.
#
# Environment: B (8) T (256) STEPS (3; the first is a warm-up) THREADS (2)
#   R (8) ALPHA (16) TARGETS (q_proj,v_proj) LR (5e-4) CASES WORK (build/bench/lm)
#   DATA (../shared/data/gsm8k/train.jsonl) MODEL (models/SmolLM2-135M-Instruct.Q4_1.gguf)
# Output: the markdown table on stdout and WORK/results.md, WORK/results.json, WORK/CASE.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
WORK=${WORK:-build/bench/lm}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data/gsm8k/train.jsonl}
[ -f "$MODEL" ] || { echo "lm_train.sh: $MODEL missing (scripts/fetch_models.sh)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "lm_train.sh: $DATA missing" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "lm_train.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
[ -x ./peftc ] || make -j2 peftc >&2
HF=$WORK/smol_f32
mkdir -p "$WORK"
if [ ! -f "$HF/model.safetensors" ]; then
    echo "lm_train.sh: dequantising $MODEL to $HF (F32)" >&2
    "$PY" tests/make_llama_hf.py gguf "$MODEL" "$HF" >/dev/null
fi
[ -f "$HF/tokenizer.json" ] || "$PY" tests/ref_bpe.py hfjson "$MODEL" "$HF" >/dev/null
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" | tee "$WORK/results.md"
"$PY" bench/lm_train.py "$WORK" "$MODEL" "$HF" "$DATA" | tee -a "$WORK/results.md"
