#!/usr/bin/env bash
# The README's SST-2 sweep (all-MiniLM-L6-v2): 5 methods x 2 budgets x 2 seeds,
# 300 steps of batch 16, length 64, one thread (the machine is shared).
# Resumable: rerun the same command after an interruption.
# usage: bench/sweep_sst2.sh [OUT_DIR] [extra peftc sweep options]
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-build/sweep-sst2}
shift || true
D=../shared/data/glue-sst2
exec ./peftc sweep --threads 1 --model models/all-MiniLM-L6-v2 --train $D/train.tsv --eval $D/dev.tsv \
    --methods bitfit,lora,adapter-pfeiffer,parallel-adapter,ptuning-v2 --budgets 0.5%,2% --seeds 1,2 \
    --steps 300 --batch 16 --max-len 64 --out "$OUT" "$@"
