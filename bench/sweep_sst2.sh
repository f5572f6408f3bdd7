#!/usr/bin/env bash
# The README's SST-2 sweep (all-MiniLM-L6-v2): bench/sweep/sst2.json — full
# fine-tuning, BitFit, prompt, prefix, LoRA, Pfeiffer, parallel adapter, MAM,
# UniPELT at 0.5% and 2%, the scaled parallel adapter and the parallel adapter
# at the attention output at 2%, 3 seeds: 51 runs of 160 steps x batch 16,
# length 64, one thread each. Resumable: rerun the same command after an
# interruption (finished runs are kept; a run whose lr or spec changed is
# refused).
# usage: bench/sweep_sst2.sh [OUT_DIR]            one sweep, runs one after another
#        LANES=3 bench/sweep_sst2.sh [OUT_DIR]    three sweeps side by side
#            (bench/sweep/sst2_{a,b,c}.json, each seed 1 first for an early
#            read of every lr), then the combined report in OUT_DIR (the
#            lanes' run directories are copied in and kept by the sweep)
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-build/sweep-sst2}
D=../shared/data/glue-sst2
S="./peftc sweep --threads 1 --model models/all-MiniLM-L6-v2 --train $D/train.tsv --eval $D/dev.tsv"
if [ "${LANES:-1}" = 3 ]; then
    for l in a b c; do
        ( for seeds in 1 1,2,3; do $S --sweep bench/sweep/sst2_$l.json --seeds $seeds --out "$OUT-$l"; done ) \
            > "$OUT-$l.log" 2>&1 &
    done
    wait
    mkdir -p "$OUT"
    for l in a b c; do cp -rn "$OUT-$l"/*-s[0-9] "$OUT"/; done
fi
exec $S --sweep bench/sweep/sst2.json --out "$OUT"
