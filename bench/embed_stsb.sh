#!/usr/bin/env bash
# embed_stsb.sh: --task embedding on STS-B (issue 12's acceptance run).
# all-MiniLM-L6-v2's STS-B dev Spearman of the cosine similarities from
# `peftc embed` (scipy.stats on its output) before and after an adapter
# trained with --task embedding on the STS-B train pairs of score >= 4.0
# (MultipleNegativesRankingLoss, in-batch negatives), for each METHODS entry
# at the same steps and batch; also `peftc eval`'s own figure for each run.
#   bash bench/embed_stsb.sh      (STEPS, BATCH, THREADS, METHODS="lora:5e-4 full:2e-5" override)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODEL=models/all-MiniLM-L6-v2
D=../shared/data/glue-stsb
STEPS=${STEPS:-200}
BATCH=${BATCH:-32}
THREADS=${THREADS:-1}
METHODS=${METHODS:-"lora:5e-4 full:2e-5"}
OUT=build/bench/embed_stsb
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS
PEFTC=${PEFTC:-./peftc}
# the dev pairs: sentence1, sentence2, score (columns 8, 9, 10)
tail -n +2 "$D/dev.tsv" | cut -f8 > "$OUT/s1.txt"
tail -n +2 "$D/dev.tsv" | cut -f9 > "$OUT/s2.txt"
tail -n +2 "$D/dev.tsv" | cut -f10 > "$OUT/score.txt"
spearman() {   # NAME [--adapter DIR]: embeds both sides, prints "pearson spearman"
    local name=$1; shift
    "$PEFTC" embed --model "$MODEL" "$@" --threads "$THREADS" < "$OUT/s1.txt" > "$OUT/$name.e1"
    "$PEFTC" embed --model "$MODEL" "$@" --threads "$THREADS" < "$OUT/s2.txt" > "$OUT/$name.e2"
    "$PY" - "$OUT/$name.e1" "$OUT/$name.e2" "$OUT/score.txt" <<'PYEOF'
import sys
import numpy as np
from scipy.stats import pearsonr, spearmanr
a, b = np.loadtxt(sys.argv[1]), np.loadtxt(sys.argv[2])
y = np.loadtxt(sys.argv[3])
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"{pearsonr(cos, y)[0]:.4f} {spearmanr(cos, y)[0]:.4f}")
PYEOF
}
echo "# $(lscpu | grep 'Model name' | sed 's/  */ /g'), $THREADS thread(s); $(date -u +%FT%TZ)"
echo "# STS-B dev (1500 pairs), all-MiniLM-L6-v2, cosine of peftc embed's mean-pooled embeddings vs the gold score"
read -r p s < <(spearman base)
echo "base (no adapter): pearson $p spearman $s"
for ms in $METHODS; do
    m=${ms%%:*}; lr=${ms#*:}
    run=$OUT/$m
    t0=$(date +%s.%N)
    "$PEFTC" train --model "$MODEL" --task embedding --train "$D/train.tsv" --min-score 4.0 --method "$m" --lr "$lr" \
        --max-steps "$STEPS" --batch "$BATCH" --out "$run" --threads "$THREADS" > "$run.log" 2>&1
    t1=$(date +%s.%N)
    read -r p s < <(spearman "$m" --adapter "$run")
    ev=$("$PEFTC" eval --model "$MODEL" --adapter "$run" --data "$D/dev.tsv" --threads "$THREADS")
    printf '%s lr %s, %s steps x %s pairs: pearson %s spearman %s; train %.0f s; peftc eval: %s\n' \
        "$m" "$lr" "$STEPS" "$BATCH" "$p" "$s" "$(echo "$t1 - $t0" | bc -l)" "$ev"
    grep -m1 'examples' "$run.log" || true
done
