#!/usr/bin/env bash
# make_seeds.sh OUT: the fuzz seed corpora (tests/fuzz/make_seeds.py) from the
# real files: the MiniLM directory, SmolLM2's GGUF, ../shared/data, and the
# adapters and checkpoints of a few short runs of ./peftc on the tiny BERT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-build/fuzz/seeds}
PY=/usr/bin/python3
rm -rf "$OUT"; mkdir -p "$OUT"
R=$(mktemp -d); trap 'rm -rf "$R"' EXIT
[ -x ./peftc ] || make -s all
$PY tests/make_tiny_bert.py "$R/tiny" >/dev/null
c="--model $R/tiny/model --train $R/tiny/train.tsv --batch 8 --max-steps 2 --save-every 1"
export OMP_NUM_THREADS=1
./peftc train $c --method lora --r 2 --out "$R/runs/lora" 2>/dev/null
./peftc train $c --method ia3 --out "$R/runs/ia3" 2>/dev/null
./peftc train $c --method prompt --num-virtual 2 --out "$R/runs/prompt" 2>/dev/null
./peftc train $c --method prefix --prefix-len 2 --out "$R/runs/prefix" 2>/dev/null
./peftc train $c --method adalora --init-r 2 --target-r 1 --total-step 10 --out "$R/runs/adalora" 2>/dev/null || true
./peftc train $c --method custom --delta 'site=ffn.out,insert=sequential,r=2' --out "$R/runs/custom" 2>/dev/null
$PY tests/fuzz/make_seeds.py "$OUT" models/all-MiniLM-L6-v2 models/SmolLM2-135M-Instruct.Q4_1.gguf ../shared/data "$R/runs"
