#!/usr/bin/env bash
# stsb_regression.sh: STS-B regression (--task regression) on all-MiniLM-L6-v2
# at a longer budget (issue 12's acceptance): each "METHOD:LR" of METHODS for
# STEPS x BATCH, dev Pearson / Spearman / MSE from `peftc eval` on the 1,500
# dev pairs, and the training time.
#   bash bench/stsb_regression.sh   (STEPS=600 BATCH=16 THREADS=1 METHODS="lora:2e-3 adapter-pfeiffer:1e-3 full:5e-5")
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/all-MiniLM-L6-v2
D=../shared/data/glue-stsb
STEPS=${STEPS:-600}
BATCH=${BATCH:-16}
THREADS=${THREADS:-1}
METHODS=${METHODS:-"lora:2e-3 adapter-pfeiffer:1e-3 full:5e-5"}
PEFTC=${PEFTC:-./peftc}
OUT=build/bench/stsb_regression
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS
echo "# $(lscpu | grep 'Model name' | sed 's/  */ /g'), $THREADS thread(s); $(date -u +%FT%TZ)"
for ms in $METHODS; do
    m=${ms%%:*}; lr=${ms#*:}
    t0=$(date +%s.%N)
    "$PEFTC" train --model "$MODEL" --task regression --train "$D/train.tsv" --method "$m" --lr "$lr" \
        --max-steps "$STEPS" --batch "$BATCH" --max-len 128 --seed 42 --out "$OUT/$m" --threads "$THREADS" > "$OUT/$m.log" 2>&1
    t1=$(date +%s.%N)
    ev=$("$PEFTC" eval --model "$MODEL" --adapter "$OUT/$m" --data "$D/dev.tsv" --threads "$THREADS")
    printf '%s lr %s, %s steps x %s: train %.0f s; %s\n' "$m" "$lr" "$STEPS" "$BATCH" "$(echo "$t1 - $t0" | bc -l)" "$ev"
done
