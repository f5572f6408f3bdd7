#!/usr/bin/env bash
# bench/qlora_vs_lora.sh: QLoRA (an NF4 base, double quantised) against LoRA
# of the same shape on a float base, issue 10's accuracy comparison, in one
# run on one machine:
#   1. all-MiniLM-L6-v2 on GLUE SST-2 (train -> dev accuracy): LoRA r 64,
#      alpha 16, dropout 0.1 on the six linear layers (QLoRA's shape, what
#      `--method qlora` trains) on the fp32 base (--fp32), on the bf16 path
#      (--bf16, if the CPU has it), and `--method qlora` (its NF4 base);
#      STEPS steps, batch 32, --bucket, seed 42, lr LR;
#   2. SmolLM2-135M (the HF F32 directory dequantised from the shipped GGUF,
#      made by bench/lm_train.sh) on GSM8K: the same LoRA on all seven linear
#      layers on the F32 base (--bf16 where available, else --fp32) against
#      `--method qlora`, LM_STEPS steps of batch 4 x 256 tokens, held-out loss
#      and perplexity on LM_EVAL examples of GSM8K test.
# Per run: the dev metric, trainable parameters, the base's bytes per linear
# parameter, training tokens/s and peak RSS (/usr/bin/time -v).
# Environment: STEPS (400) LR (1e-3) LM_STEPS (40) LM_LR (5e-4) LM_EVAL (64)
#   SEED (42) SKIP_FP32 (0; 1: no --fp32 LoRA run) WORK (build/bench/qlora) PARTS ("bert llama")
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-400} LR=${LR:-1e-3} SEED=${SEED:-42} LM_STEPS=${LM_STEPS:-40} LM_LR=${LM_LR:-5e-4} LM_EVAL=${LM_EVAL:-64}
WORK=${WORK:-build/bench/qlora}
PARTS=${PARTS:-bert llama}
[ -x /usr/bin/time ] || { echo "qlora_vs_lora.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
[ -x ./peftc ] || make -j2 peftc >&2
mkdir -p "$WORK"
BF=$(grep -qw avx512_bf16 /proc/cpuinfo && echo 1 || echo 0)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"

# NAME ARGS... : a run into WORK/NAME (kept if done), its /usr/bin/time log beside it
run() {
    local name=$1; shift
    [ -f "$WORK/$name/metrics.json" ] && return 0
    echo "== $name" >&2
    /usr/bin/time -v ./peftc train "$@" --out "$WORK/$name" 2> "$WORK/$name.log" || { echo "$name failed: $(tail -1 "$WORK/$name.log")" >&2; return 1; }
}
row() {  # NAME LABEL METRIC
    /usr/bin/python3 - "$WORK/$1/metrics.json" "$WORK/$1.log" "$2" "$3" <<'PY'
import json, re, sys
m = json.load(open(sys.argv[1])); log = open(sys.argv[2]).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)) / 1024
bpp = re.search(r"NF4 base: ([0-9.]+) bytes", log)
metric = sys.argv[4]
if metric == "accuracy":
    val = f"{100 * m['eval_accuracy']:.2f}"
else:
    h = m.get("eval") or []   # the held-out loss at step 0, then at the end
    val = f"{h[0]['loss']:.4f} → {m['eval_loss']:.4f} / {m['eval_perplexity']:.2f}" if h else "—"
print(f"| {sys.argv[3]} | {m['trainable_params']:,} | {bpp.group(1) if bpp else '4 (fp32)'} | {val} | "
      f"{m['train_tokens_per_s']:.0f} | {rss:.0f} |")
PY
}

if [[ " $PARTS " == *" bert "* ]]; then
    M=models/all-MiniLM-L6-v2 D=../shared/data/glue-sst2
    SIX=query,key,value,attention.output.dense,intermediate.dense,output.dense
    common=(--model "$M" --train "$D/train.tsv" --eval "$D/dev.tsv" --bucket --max-steps "$STEPS" --batch 32 --seed "$SEED" --lr "$LR")
    lora=(--method lora --r 64 --alpha 16 --lora-dropout 0.1 --target-modules "$SIX")
    [ "${SKIP_FP32:-0}" = 1 ] || run bert-lora-fp32 "${common[@]}" "${lora[@]}" --fp32
    [ "$BF" = 1 ] && run bert-lora-bf16 "${common[@]}" "${lora[@]}" --bf16
    run bert-qlora "${common[@]}" --method qlora
    echo
    echo "all-MiniLM-L6-v2, SST-2 dev accuracy after $STEPS steps (batch 32, lr $LR, seed $SEED), LoRA r 64 alpha 16 dropout 0.1 on the six linear layers"
    echo
    echo "| run | trainable params | base bytes / linear param | SST-2 dev acc | train tokens/s | peak RSS MiB |"
    echo "|---|---:|---:|---:|---:|---:|"
    [ "${SKIP_FP32:-0}" = 1 ] || row bert-lora-fp32 "LoRA, fp32 base (--fp32)" accuracy
    [ "$BF" = 1 ] && row bert-lora-bf16 "LoRA, bf16 path (--bf16)" accuracy
    row bert-qlora "QLoRA (--method qlora: NF4 base)" accuracy
fi

if [[ " $PARTS " == *" llama "* ]]; then
    HF=build/bench/lm/smol_f32
    [ -f "$HF/model.safetensors" ] || { echo "qlora_vs_lora.sh: $HF missing (run bench/lm_train.sh once)" >&2; exit 1; }
    head -n "$LM_EVAL" ../shared/data/gsm8k/test.jsonl > "$WORK/gsm_eval.jsonl"
    P=$([ "$BF" = 1 ] && echo --bf16 || echo --fp32)
    common=(--model "$HF" --train ../shared/data/gsm8k/train.jsonl --eval "$WORK/gsm_eval.jsonl" --prompt-template $'Question: {question}\nAnswer:'
            --response-field answer --max-len 256 --batch 4 --max-steps "$LM_STEPS" --lr "$LM_LR" --seed "$SEED")
    run lm-lora "${common[@]}" --method lora --r 64 --alpha 16 --lora-dropout 0.1 --target-modules all-linear "$P"
    run lm-qlora "${common[@]}" --method qlora
    echo
    echo "SmolLM2-135M on GSM8K train, $LM_STEPS steps of 4 x <= 256 tokens (lr $LM_LR), held-out loss / perplexity on the first $LM_EVAL GSM8K test problems; LoRA r 64 alpha 16 dropout 0.1 on the seven linear layers"
    echo
    echo "| run | trainable params | base bytes / linear param | held-out loss (before → after) / ppl | train tokens/s | peak RSS MiB |"
    echo "|---|---:|---:|---:|---:|---:|"
    row lm-lora "LoRA, F32 base ($P)" loss
    row lm-qlora "QLoRA (--method qlora: NF4 base)" loss
fi
