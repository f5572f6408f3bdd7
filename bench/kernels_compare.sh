#!/usr/bin/env bash
# kernels_compare.sh: before/after table of bench/kernels_bench.c for the
# kernels of git revision REV (default e392163, before the kernel speed-ups)
# against the work tree, at 1 and 2 OpenMP threads. The two binaries run in
# alternation ROUNDS times and each cell is the minimum (other jobs may share
# the cores); the "cpu" figure of a 1-thread run is the process CPU time.
#   ROUNDS=3 REV=e392163 bash bench/kernels_compare.sh [filter]
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${REV:-e392163}
ROUNDS=${ROUNDS:-3}
FILTER=${1:-all}
tag=$(git rev-parse --short "$REV")
REV=$REV bash bench/kernels_bench.sh none 1 > /dev/null
bash bench/kernels_bench.sh none 1 > /dev/null
OUT=build/bench/compare
mkdir -p "$OUT"
rm -f "$OUT"/*.txt
for r in $(seq "$ROUNDS"); do
    for th in 1 2; do
        OMP_NUM_THREADS=$th build/bench/kernels_bench-$tag "$FILTER" 5 >> "$OUT/before_$th.txt"
        OMP_NUM_THREADS=$th build/bench/kernels_bench "$FILTER" 5 >> "$OUT/after_$th.txt"
    done
done
# name -> min ms over the rounds
mins() { awk -F'  +' '/ ms/ { n = $1; sub(/^ +/, "", n); split($2, a, " "); v = a[1] + 0;
                                if (!(n in m) || v < m[n]) m[n] = v; if (!(n in o)) o[n] = ++k }
                              END { for (n in m) printf "%d\t%s\t%.3f\n", o[n], n, m[n] }' "$1" | sort -n | cut -f2-; }
mins "$OUT/before_1.txt" > "$OUT/b1"; mins "$OUT/after_1.txt" > "$OUT/a1"
mins "$OUT/before_2.txt" > "$OUT/b2"; mins "$OUT/after_2.txt" > "$OUT/a2"
printf "| kernel | before 1T | after 1T | speed-up | before 2T | after 2T | speed-up |\n|---|---:|---:|---:|---:|---:|---:|\n"
join -t $'\t' -j1 <(awk -F'\t' '{print NR"\t"$0}' "$OUT/a1" | sort -t $'\t' -k2,2) /dev/null > /dev/null 2>&1 || true
awk -F'\t' 'FILENAME==ARGV[1]{b1[$1]=$2; next} FILENAME==ARGV[2]{b2[$1]=$2; next}
            FILENAME==ARGV[3]{a2[$1]=$2; next}
            { n=$1; a=$2; x=(n in b1)?b1[n]:"-"; y=(n in b2)?b2[n]:"-"; z=(n in a2)?a2[n]:"-";
              s1=(x!="-" && a>0)?sprintf("%.1fx", x/a):"";
              s2=(y!="-" && z!="-" && z>0)?sprintf("%.1fx", y/z):"";
              printf "| %s | %s | %s | %s | %s | %s | %s |\n", n, x, a, s1, y, z, s2 }' \
    "$OUT/b1" "$OUT/b2" "$OUT/a2" "$OUT/a1"
