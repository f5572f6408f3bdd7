#!/usr/bin/env bash
# AdapterFusion on GLUE RTE (README "AdapterFusion", issue 9 acceptance):
#   stage 1: ST-A Pfeiffer adapters on SST-2, MRPC, CoLA, WNLI and RTE
#            (short budgets), and a short full fine-tuning of RTE;
#   stage 2: `peftc fuse` over the five adapters, trained on RTE;
#   the dev accuracy of RTE's adapter alone, of full fine-tuning and of
#   fusion, and the fusion weight table (`peftc inspect`).
# Usage: bash bench/fusion_rte.sh RUNS_DIR  (runs already in RUNS_DIR are
# reused; STAGE=1 stops after stage 1). OMP_NUM_THREADS defaults to 1.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?runs dir}
M=${MODEL:-models/all-MiniLM-L6-v2}
D=${DATA:-../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$R"
COMMON="--model $M --batch 32 --max-len 128 --seed 1 --threads 1"
train() {   # name task steps [extra options]
    local n=$1 t=$2 s=$3; shift 3
    if [ -f "$R/$n/adapter_config.json" ] || [ -f "$R/$n/DONE" ]; then return; fi
    echo "+ peftc train $n ($t, $s steps)" >&2
    ./peftc train $COMMON --train "$D/glue-$t/train.tsv" --eval "$D/glue-$t/dev.tsv" \
        --max-steps "$s" --out "$R/$n" "$@" > "$R/$n.log" 2>&1
    touch "$R/$n/DONE"
}
train sst2 sst2 200 --method adapter-pfeiffer
train mrpc mrpc 100 --method adapter-pfeiffer
train cola cola 100 --method adapter-pfeiffer --text-col 3 --label-col 1
train wnli wnli 40 --method adapter-pfeiffer
train rte rte 160 --method adapter-pfeiffer
train rte_full rte 160 --method full --lr 3e-5
[ "${STAGE:-2}" = 1 ] && exit 0
FUSE="${FUSE_STEPS:-160}"
if [ ! -f "$R/fusion/DONE" ]; then
    echo "+ peftc fuse (rte, $FUSE steps)" >&2
    ./peftc fuse $COMMON --adapters rte=$R/rte,sst2=$R/sst2,mrpc=$R/mrpc,cola=$R/cola,wnli=$R/wnli \
        --train "$D/glue-rte/train.tsv" --eval "$D/glue-rte/dev.tsv" --max-steps "$FUSE" \
        --out "$R/fusion" > "$R/fusion.log" 2>&1
    touch "$R/fusion/DONE"
fi
echo "## RTE dev accuracy ($(tail -n +2 "$D/glue-rte/dev.tsv" | wc -l) pairs)"
for n in rte rte_full fusion; do
    printf -- "- %s: %s\n" "$n" "$(./peftc eval --model $M --adapter "$R/$n" --data "$D/glue-rte/dev.tsv" --threads 1 2>&1 | grep -o '"accuracy": [0-9.]*' | head -1)"
done
echo
echo "## fusion weights (average over RTE dev tokens)"
./peftc inspect --adapter "$R/fusion" --model $M --data "$D/glue-rte/dev.tsv"
