#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, fine-tune all-MiniLM-L6-v2
# with LoRA (r=8, alpha=16, query+value) on GLUE SST-2, evaluate on its dev
# set and classify two sentences. DATA (default ../shared/data/glue-sst2) and
# STEPS (default 600) may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
make -s
DATA=${DATA:-../shared/data/glue-sst2}
STEPS=${STEPS:-600}
if [ ! -f "$DATA/train.tsv" ]; then
    echo "demo: $DATA/train.tsv not found. GLUE SST-2 is published at https://gluebenchmark.com/tasks" >&2
    echo "      (SST-2.zip: train.tsv, dev.tsv); unpack it and run: DATA=path/to/SST-2 make demo" >&2
    exit 1
fi
./peftc train --model models/all-MiniLM-L6-v2 --train "$DATA/train.tsv" --eval "$DATA/dev.tsv" \
    --method lora --r 8 --alpha 16 --target-modules query,value --lr 2e-3 --bucket \
    --max-steps "$STEPS" --batch 32 --seed 42 --out runs/sst2-lora
./peftc eval --model models/all-MiniLM-L6-v2 --adapter runs/sst2-lora --data "$DATA/dev.tsv"
printf 'a gorgeous , witty , seductive movie .\nthe plot is nothing but boilerplate clichés .\n' |
    ./peftc predict --model models/all-MiniLM-L6-v2 --adapter runs/sst2-lora --probs
