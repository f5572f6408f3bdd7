#!/usr/bin/env bash
# bench/scaling.sh: how peftc's LoRA training step scales, in fp32 and bf16.
# Times bench/train_step.c's step (the same step as bench/run's
# train.lora.32x64: LoRA r 8, alpha 16 on query + value, dropout 0.1, AdamW)
# over four sweeps, each varying one thing from the 32 x 64, r 8, 6-layer point:
#   sequence length 64, 128, 256, 512 at a fixed 2,048 tokens per batch
#                   (batch 32, 16, 8, 4): the attention's T^2 share grows;
#   batch 8, 16, 32, 64 at sequence 64;
#   LoRA rank 4, 8, 16, 64 at 32 x 64 (BENCH_LORA_R; alpha stays 16);
#   layers 1, 2, 3, 6 at 32 x 64 (BENCH_LAYERS: the first L encoder layers).
# Each point is its own process under /usr/bin/time -v, PEFTC_BF16=0 (fp32)
# or 1 (bf16: the frozen weights' matmuls on bf16 AMX tiles); the point shared
# by the sweeps runs once per precision. Prints a markdown report and saves it
# in build/bench/scaling.md (raw lines: build/bench/scaling_raw.txt).
#
#   bash bench/scaling.sh
#
# Environment: THREADS (2), MODEL (models/all-MiniLM-L6-v2), PYTHON
# (/usr/bin/python3, formats the report; no torch needed), BENCH_PRECISION
# ("fp32 bf16"), SWEEPS ("seq batch rank layers"), BENCH_MIN_SECONDS (2),
# BENCH_MIN_STEPS (3), BENCH_WARMUP (1), BENCH_RETRIES (1: reruns of a point
# disturbed by other processes), BENCH_NO_BUILD=1 (skip `make all`).
# OMP_WAIT_POLICY: PASSIVE unless set (bench/run's `peftc PASSIVE` column:
# with libgomp's default active spin-wait, any other load on the 2 cores
# makes a point several times slower; on an idle machine the two are close).
# About 1.5 minutes on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
THREADS=${THREADS:-2}
PRECISIONS=${BENCH_PRECISION:-fp32 bf16}
SWEEPS=${SWEEPS:-seq batch rank layers}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=build/bench
RAW=$OUT/scaling_raw.txt
export BENCH_MIN_STEPS=${BENCH_MIN_STEPS:-3} BENCH_MIN_SECONDS=${BENCH_MIN_SECONDS:-2} BENCH_WARMUP=${BENCH_WARMUP:-1}

die() { echo "bench/scaling.sh: $*" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] || die "$MODEL/model.safetensors missing (make setup fetches it)"
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
for p in $PRECISIONS; do [ "$p" = fp32 ] || [ "$p" = bf16 ] || die "BENCH_PRECISION: fp32 and/or bf16, not '$p'"; done

# ---- build: the library, then bench/train_step.c against it (as bench/run)
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    make -s --no-print-directory all >&2 || die "make all failed"
fi
[ -f build/libpeftc.a ] || die "build/libpeftc.a missing: run make"
mkvar() { make -s --no-print-directory --eval='print-%: ; @echo $($*)' "print-$1"; }
mkdir -p "$OUT"
$(mkvar CC) $(mkvar CFLAGS) -o "$OUT/train_step" bench/train_step.c build/libpeftc.a $(mkvar LDLIBS) ||
    die "bench/train_step.c does not build"
PEFTC=$OUT/train_step
if [[ " $PRECISIONS " == *" bf16 "* ]] && ! PEFTC_BF16=1 BENCH_SGEMM_REPS=1 "$PEFTC" bf16gemm 64 > /dev/null 2>&1; then
    echo "bench/scaling.sh: this CPU lacks AVX-512-BF16: fp32 only" >&2
    PRECISIONS=${PRECISIONS//bf16/}
fi

# the busy fraction of all CPUs over 2 s (nothing of ours running)
busy() {
    local a b
    a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
    awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
        for (i = 2; i <= n && i <= 9; i++) { d = y[i] - x[i]; tot += d; if (i == 5 || i == 6) idle += d }
        printf "%.0f", (tot > 0 ? 100 * (tot - idle) / tot : 0) }'
}

: > "$RAW"
{
    echo "META key=cpu value=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1 | tr ' ' '_')"
    echo "META key=threads value=$THREADS"
    echo "META key=wait value=$OMP_WAIT_POLICY"
    echo "META key=git value=$(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- src include 2>/dev/null || echo +modified)"
    echo "META key=date value=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "META key=busy_before value=$(busy)"
    echo "META key=timing value=${BENCH_WARMUP}_warm-up,_>=_${BENCH_MIN_STEPS}_steps_and_>=_${BENCH_MIN_SECONDS}_s"
} >> "$RAW"

# point PREC B T R L: one train_step process (skipped if already measured);
# its RESULT line + peak RSS + the CPUs other processes used meanwhile go to
# $RAW; a run during which others kept > 0.1 CPU busy is repeated up to
# BENCH_RETRIES times and the least disturbed attempt kept (as bench/run)
declare -A done_points
fails=0
point() {
    local prec=$1 B=$2 T=$3 R=$4 L=$5 key="$1 $2 $3 $4 $5"
    [ -z "${done_points[$key]:-}" ] || return 0
    done_points[$key]=1
    local bf=0; [ "$prec" = bf16 ] && bf=1
    local tf=$OUT/scaling_time.txt so=$OUT/scaling_stdout.txt se=$OUT/scaling_stderr.txt
    local attempt best="" best_other=99 s0 s1 rss line other
    for attempt in $(seq 0 "${BENCH_RETRIES:-1}"); do
        printf '  %-4s B %-3s T %-4s r %-3s L %s%s ' "$prec" "$B" "$T" "$R" "$L" \
            "$([ "$attempt" = 0 ] || echo " (retry $attempt)")" >&2
        s0=$(head -1 /proc/stat)
        if ! env -u PEFTC_BF16 -u PEFTC_BF16_AMX OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
                PEFTC_BF16=$bf BENCH_LORA_R="$R" BENCH_LAYERS="$L" \
                /usr/bin/time -v -o "$tf" "$PEFTC" train lora "$B" "$T" "$MODEL" > "$so" 2> "$se"; then
            echo "FAILED" >&2; tail -5 "$se" >&2
            fails=$((fails + 1))
            return 0
        fi
        s1=$(head -1 /proc/stat)
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf")
        line=$(grep '^RESULT ' "$so" | tail -1)
        other=$(awk -v a="$s0" -v b="$s1" -v hz="$(getconf CLK_TCK)" -F': ' '
            /User time/ { u = $2 } /System time/ { s = $2 }
            /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
            END { split(a, x, " "); split(b, y, " "); busy = 0
                  for (i = 2; i <= 9; i++) if (i != 5 && i != 6) busy += y[i] - x[i]
                  o = busy / hz - u - s; if (o < 0) o = 0
                  printf "%.2f", (w > 0 ? o / w : 0) }' "$tf")
        echo "$line" | tr ' ' '\n' | awk -F= '/^median_ms=/ { printf "%s ms  ", $2 }' >&2
        echo "rss ${rss} KiB  other CPUs ${other}" >&2
        if awk -v o="$other" -v b="$best_other" 'BEGIN { exit !(o < b) }'; then
            best="$line rss_kib=$rss other_cpus=$other"
            best_other=$other
        fi
        awk -v o="$other" 'BEGIN { exit !(o > 0.1) }' || break
    done
    echo "$best" >> "$RAW"
}

for prec in $PRECISIONS; do
    for s in $SWEEPS; do
        case $s in
            seq) for bt in "32 64" "16 128" "8 256" "4 512"; do point "$prec" $bt 8 6; done ;;
            batch) for b in 8 16 32 64; do point "$prec" "$b" 64 8 6; done ;;
            rank) for r in 4 8 16 64; do point "$prec" 32 64 "$r" 6; done ;;
            layers) for l in 1 2 3 6; do point "$prec" 32 64 8 "$l"; done ;;
            *) die "SWEEPS: seq, batch, rank, layers; not '$s'" ;;
        esac
    done
done
echo "META key=busy_after value=$(busy)" >> "$RAW"

"$PY" - "$RAW" "$SWEEPS" > "$OUT/scaling.md" <<'EOF' || fails=$((fails + 1))
import sys

sys.path.insert(0, "bench")
from report import fmt, num  # noqa: E402

OTHER_TOL = 0.1
meta, res = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if not f:
        continue
    kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
    if f[0] == "META":
        meta[kv["key"]] = kv.get("value", "").replace("_", " ")
    elif f[0] == "RESULT":
        res[(kv["precision"], int(kv["B"]), int(kv["T"]), int(kv["r"]), int(kv["layers"]))] = kv
precs = [p for p in ("fp32", "bf16") if any(k[0] == p for k in res)]

out = []
p = out.append
p("# peftc LoRA training step: scaling")
p("")
p(f"- {meta.get('cpu', '?')}, **{meta.get('threads', '?')} threads**, OMP_WAIT_POLICY {meta.get('wait', '?')}; "
  f"peftc {meta.get('git', '?')}, {meta.get('date', '?')}")
p("- the step of bench/run's train.lora.32x64 (all-MiniLM-L6-v2 + 2-label classifier; LoRA alpha 16 on "
  "query + value; dropout 0.1; forward + backward + clipping + AdamW), synthetic full-length batches; "
  f"{meta.get('timing', '?')}, the **median** step")
p("- unless the table varies it: batch 32, sequence 64, LoRA rank 8, all 6 layers")
p("- fp32: `PEFTC_BF16=0`. bf16: `PEFTC_BF16=1`, the frozen weights' matmuls (q, k, v, attention "
  "output, FFN in and out; forward and input gradient) with bf16 operands, fp32 accumulation, AMX tiles; "
  "everything else fp32")
p("- GFLOPS: the matmul FLOPs of the step (bench/README.md) / the median step; RSS: the process's peak")
bb, ba = num(meta, "busy_before"), num(meta, "busy_after")
flagged = sorted(k for k, r in res.items() if num(r, "other_cpus") > OTHER_TOL)
note = f"- machine load: {fmt(bb, 0)}% of the CPUs busy just before, {fmt(ba, 0)}% just after"
if flagged:
    note += f"; **⚠ marks a point measured while other processes kept > {OTHER_TOL:g} CPU busy** ({len(flagged)} of {len(res)})"
p(note)
if not (bb < 15 and ba < 15) or flagged:
    p("")
    p("> **Warning: the machine was busy with other work: rerun on an idle machine.**")
p("")

SWEEPS = {
    "seq": ("Sequence length (2,048 tokens per batch: batch × sequence fixed)", "batch × seq",
            [(32, 64, 8, 6), (16, 128, 8, 6), (8, 256, 8, 6), (4, 512, 8, 6)], lambda k: f"{k[0]} × {k[1]}"),
    "batch": ("Batch (sequence 64)", "batch", [(b, 64, 8, 6) for b in (8, 16, 32, 64)], lambda k: str(k[0])),
    "rank": ("LoRA rank (32 × 64; alpha 16)", "r", [(32, 64, r, 6) for r in (4, 8, 16, 64)], lambda k: str(k[2])),
    "layers": ("Encoder layers (32 × 64; the first L of 6)", "layers", [(32, 64, 8, l) for l in (1, 2, 3, 6)],
               lambda k: str(k[3])),
}
for s in sys.argv[2].split():
    title, col, keys, label = SWEEPS[s]
    p(f"## {title}")
    p("")
    head = f"| {col} | trainable params | GFLOP per step"
    for pr in precs:
        head += f" | {pr} ms | {pr} tok/s | {pr} GFLOPS | {pr} RSS MiB"
    if len(precs) == 2:
        head += " | **bf16 speed-up**"
    p(head + " |")
    p("|---|" + "---:|" * (2 + 4 * len(precs) + (len(precs) == 2)))
    for k in keys:
        rs = [res.get((pr,) + k) for pr in precs]
        any_r = next((r for r in rs if r), None)
        if not any_r:
            continue
        row = f"| {label(k)} | {int(num(any_r, 'trainable')):,} | {fmt(num(any_r, 'gflop'), 1)}"
        for r in rs:
            warn = " ⚠" if r and num(r, "other_cpus") > OTHER_TOL else ""
            row += (f" | {fmt(num(r, 'median_ms'))}{warn} | {fmt(num(r, 'tokens_per_s'), 0)} | {fmt(num(r, 'gflops'))} "
                    f"| {fmt(num(r, 'rss_kib') / 1024, 0)}") if r else " | – | – | – | –"
        if len(precs) == 2:
            a, b = num(rs[0] or {}, "median_ms"), num(rs[1] or {}, "median_ms")
            row += f" | {fmt(a / b, 2)}×" if a == a and b == b and b > 0 else " | –"
        p(row + " |")
    p("")
print("\n".join(out))
EOF
cat "$OUT/scaling.md"
echo "(saved in $OUT/scaling.md; raw lines in $RAW)" >&2
[ "$fails" -eq 0 ] || die "$fails run(s) failed"
