#!/usr/bin/env bash
# Trains each named method on all-MiniLM-L6-v2 with GLUE SST-2 train, the same
# seed and step budget, evaluates on SST-2 dev, and prints a markdown table:
# trainable %, dev accuracy, training tokens/s, wall time, peak RSS.
#   bench/methods_table.sh [STEPS] [METHOD...]      (default: 600 steps, every preset)
# Learning rates per method are fixed below (the usual ranges of the papers; not tuned).
# Every run sets PEFTC_BF16=$BF16 explicitly (0: fp32, the default here; 1: bf16
# frozen weights; then OUT defaults to runs/methods-STEPS-bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}; shift || true
METHODS=${*:-"full lora bitfit ia3 adapter-houlsby adapter-pfeiffer parallel-adapter parallel-adapter-attn scaled-parallel-adapter mh-parallel-adapter prefix ptuning-v2 prompt ptuning mam unipelt"}
DATA=${DATA:-../shared/data/glue-sst2}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
BF16=${BF16:-0}
OUT=${OUT:-runs/methods-$STEPS$([ "$BF16" = 0 ] || echo -bf16)}
make -s >/dev/null
mkdir -p "$OUT"
lr_of() {
    case "$1" in
        full) echo 3e-5 ;; lora) echo 2e-3 ;; bitfit) echo 2e-3 ;; ia3) echo 5e-3 ;;
        prompt) echo 3e-2 ;; ptuning) echo 1e-3 ;; prefix) echo 5e-4 ;; ptuning-v2) echo 5e-3 ;;
        *) echo 1e-3 ;;
    esac
}
# the preset a row runs, and its options ("parallel-adapter-attn": the same
# adapter at the attention sub-layer, for the FFN-vs-attention comparison)
method_of() { case "$1" in parallel-adapter-attn) echo parallel-adapter ;; *) echo "$1" ;; esac; }
extra_of() {
    case "$1" in
        lora) echo "--r 8 --alpha 16 --target-modules query,value" ;;
        parallel-adapter-attn) echo "--site attn" ;;
        *) echo "" ;;
    esac
}
for m in $METHODS; do
    run="$OUT/$m"
    if [ -f "$run/metrics.json" ]; then echo "($m: kept $run/metrics.json)" >&2; continue; fi
    echo "== $m" >&2
    PEFTC_BF16=$BF16 /usr/bin/time -v ./peftc train --model "$MODEL" --train "$DATA/train.tsv" --eval "$DATA/dev.tsv" \
        --method "$(method_of "$m")" $(extra_of "$m") --lr "$(lr_of "$m")" --bucket --max-steps "$STEPS" --batch 32 --seed 42 \
        --out "$run" 2> "$run.log" || { echo "$m failed: $(tail -1 "$run.log")" >&2; continue; }
done
echo "| method | trainable params | trainable % | SST-2 dev acc | train tokens/s | train s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for m in $METHODS; do
    f="$OUT/$m/metrics.json"
    [ -f "$f" ] || { echo "| $m | failed | | | | | |"; continue; }
    rss=$(grep -E "Maximum resident" "$OUT/$m.log" 2>/dev/null | awk '{print $NF}')
    /usr/bin/python3 - "$f" "$m" "$rss" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); kb = int(sys.argv[3] or 0)
print(f"| {sys.argv[2]} | {m['trainable_params']:,} | {m['trainable_percent']:.3f} | {100*m.get('eval_accuracy', 0):.2f} | "
      f"{m['train_tokens_per_s']:.0f} | {m['train_seconds']:.0f} | {kb/1024:.0f} |")
PY
done
