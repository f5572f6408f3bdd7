#!/usr/bin/env bash
# embed.sh: sentence-embedding throughput of `peftc embed --normalize` against
# the PyTorch reference (tests/ref_bert.py embed, float32) on the 872 SST-2 dev
# sentences, both with 2 threads, best of 3 runs each, peak RSS from
# /usr/bin/time -v. Also checks that both produce the same embeddings
# (cosine >= 0.999), so that the comparison is of the same work.
#   bash bench/embed.sh            (RUNS, THREADS, PYTHON override the defaults)
# peftc runs with PEFTC_BF16=$BF16 (0: fp32, the default here; 1: bf16 frozen
# weights), set explicitly whatever the library's default.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODEL=models/all-MiniLM-L6-v2
DATA=../shared/data/glue-sst2/dev.tsv
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
OUT=build/bench/embed
mkdir -p "$OUT"
PEFTC=${PEFTC:-./peftc}
BF16=${BF16:-0}
[ -x "$PEFTC" ] || { echo "embed.sh: $PEFTC missing: run make" >&2; exit 1; }

# the sentences, without the header and the space before the TAB
tail -n +2 "$DATA" | cut -f1 | sed 's/[[:space:]]*$//' > "$OUT/sentences.txt"
N=$(wc -l < "$OUT/sentences.txt")

# run NAME CMD...: RUNS timed runs, stdin the sentences; keeps the last output
# and one line per run "wall_seconds peak_rss_kib" in $OUT/NAME.runs
run() {
    local name="$1"; shift
    : > "$OUT/$name.runs"
    for i in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s.%N)
        if ! /usr/bin/time -v -o "$OUT/$name.time" "$@" < "$OUT/sentences.txt" \
                > "$OUT/$name.out" 2> "$OUT/$name.err"; then
            echo "embed.sh: $name failed:" >&2; tail -5 "$OUT/$name.err" "$OUT/$name.time" >&2; exit 1
        fi
        t1=$(date +%s.%N)
        echo "$(echo "$t1 - $t0" | bc -l) $(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/$name.time")" \
            >> "$OUT/$name.runs"
        # the reference also reports its model-only time on stderr
        grep -o 'model [0-9.]*s' "$OUT/$name.err" | awk '{sub("s","",$2); print $2}' >> "$OUT/$name.model" || true
    done
}
rm -f "$OUT"/*.model
PEFTC_BF16=$BF16 OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS run peftc "$PEFTC" embed --model "$MODEL" --normalize
OMP_NUM_THREADS=$THREADS run torch "$PY" tests/ref_bert.py --model "$MODEL" embed --threads "$THREADS"

"$PY" - "$OUT" "$N" "$THREADS" "$BF16" <<'EOF'
import os, sys
import numpy as np
out, n, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prec = "fp32" if sys.argv[4] == "0" else "bf16"

def runs(name):
    rows = [l.split() for l in open(os.path.join(out, name + ".runs"))]
    wall = min(float(r[0]) for r in rows)
    rss = max(int(r[1]) for r in rows) / 1024
    p = os.path.join(out, name + ".model")
    times = [float(t) for t in open(p).read().split()] if os.path.exists(p) else []
    model = min(times) if times else None
    return wall, rss, model

def load(name):
    return np.array([l.split() for l in open(os.path.join(out, name + ".out"))], dtype=np.float64)

pw, prss, _ = runs("peftc")
tw, trss, tmodel = runs("torch")
a, b = load("peftc"), load("torch")
ok = a.shape == b.shape == (n, b.shape[1])
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)) if ok else np.zeros(1)
print(f"embed: {n} SST-2 dev sentences, all-MiniLM-L6-v2, {threads} threads, peftc {prec} (PEFTC_BF16), best of "
      f"{len(open(os.path.join(out, 'peftc.runs')).readlines())}")
print(f"{'':28s} {'sent/s':>9s} {'wall s':>8s} {'peak RSS MiB':>13s}")
print(f"{'peftc embed (process)':28s} {n / pw:9.1f} {pw:8.3f} {prss:13.1f}")
print(f"{'torch ref (process)':28s} {n / tw:9.1f} {tw:8.3f} {trss:13.1f}")
if tmodel:
    print(f"{'torch ref (model part only)':28s} {n / tmodel:9.1f} {tmodel:8.3f} {'':>13s}")
print(f"ratio peftc/torch: {tw / pw:.2f}x (whole process)"
      + (f", {tmodel / pw:.2f}x (vs torch's model part alone)" if tmodel else ""))
if not ok:
    print(f"FAIL - outputs differ in shape: peftc {a.shape}, torch {b.shape}")
    sys.exit(1)
print(f"outputs agree: min cosine {cos.min():.6f} (>= 0.999: {'yes' if cos.min() >= 0.999 else 'NO'})")
sys.exit(0 if cos.min() >= 0.999 else 1)
EOF
