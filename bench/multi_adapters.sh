#!/usr/bin/env bash
# Many adapters on one base, measured (README "Many adapters on one model"):
#   AdapterDrop: SST-2 dev accuracy and sentences/s for --drop-layers N = 0..L,
#                for an adapter trained with and without --adapterdrop-train;
#   parallel(a,b,c,d) in one pass against the four adapters run one by one;
#   a mixed batch (--adapter-col) against each adapter on its own lines.
# Usage: bash bench/multi_adapters.sh RUNS_DIR  (RUNS_DIR holds sst2, sst2_ad,
# rte, mrpc, cola: Pfeiffer adapters from `peftc train`, see README)
# Wall-clock per command (model load included), OMP_NUM_THREADS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?runs dir}
M=${MODEL:-models/all-MiniLM-L6-v2}
D=${DATA:-../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
tail -n +2 "$D/glue-sst2/dev.tsv" | cut -f1 > "$W/x.txt"
tail -n +2 "$D/glue-sst2/dev.tsv" | cut -f2 > "$W/y.txt"
n=$(wc -l < "$W/x.txt")
L=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$M/config.json")
secs() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
acc() { paste "$1" "$W/y.txt" | awk -F'\t' '{ c += ($1 == $2) } END { printf "%.4f", c / NR }'; }
echo "## AdapterDrop on SST-2 dev ($n sentences, $OMP_NUM_THREADS thread(s))"
echo "| N dropped | acc (plain) | sent/s (plain) | acc (--adapterdrop-train) | sent/s (--adapterdrop-train) |"
echo "|---|---|---|---|---|"
for N in ${NS:-$(seq 0 "$L")}; do
    t1=$(secs sh -c "./peftc predict --model $M --adapter s=$R/sst2 --drop-layers $N < $W/x.txt > $W/p1.txt")
    t2=$(secs sh -c "./peftc predict --model $M --adapter s=$R/sst2_ad --drop-layers $N < $W/x.txt > $W/p2.txt")
    printf "| %d | %s | %.1f | %s | %.1f |\n" "$N" "$(acc "$W/p1.txt")" "$(echo "$n / $t1" | bc -l)" "$(acc "$W/p2.txt")" "$(echo "$n / $t2" | bc -l)"
done
AD="--adapter sst2=$R/sst2 --adapter rte=$R/rte --adapter mrpc=$R/mrpc --adapter cola=$R/cola"
echo
echo "## parallel(sst2,rte,mrpc,cola) in one pass vs one by one ($n sentences)"
for N in 0 3; do
    tp=$(secs sh -c "./peftc predict --model $M $AD --compose 'parallel(sst2,rte,mrpc,cola)' --drop-layers $N < $W/x.txt > /dev/null")
    ts=0
    for a in sst2 rte mrpc cola; do
        t=$(secs sh -c "./peftc predict --model $M --adapter $a=$R/$a --drop-layers $N < $W/x.txt > /dev/null")
        ts=$(echo "$ts + $t" | bc)
    done
    printf -- "- drop %d: parallel %.1f s, one by one %.1f s (%.2fx)\n" "$N" "$tp" "$ts" "$(echo "$ts / $tp" | bc -l)"
done
echo
echo "## mixed batch: each line names one of 4 adapters, one pass vs each adapter on its own lines"
awk '{ split("sst2 rte mrpc cola", a, " "); print a[NR % 4 + 1] "\t" $0 }' "$W/x.txt" > "$W/mixed.txt"
tm=$(secs sh -c "./peftc predict --model $M $AD --adapter-col 0 < $W/mixed.txt > /dev/null")
ts=0
for a in sst2 rte mrpc cola; do
    awk -F'\t' -v a=$a '$1 == a { print $2 }' "$W/mixed.txt" > "$W/only.txt"
    t=$(secs sh -c "./peftc predict --model $M --adapter $R/$a < $W/only.txt > /dev/null")
    ts=$(echo "$ts + $t" | bc)
done
printf -- "- mixed %.1f s, per adapter %.1f s (%.2fx)\n" "$tm" "$ts" "$(echo "$ts / $tm" | bc -l)"
