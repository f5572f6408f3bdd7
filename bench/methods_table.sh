#!/usr/bin/env bash
# The README's methods table, two ways:
#   bench/methods_table.sh --sweep DIR
#       from a finished `peftc sweep` directory (the README's: LANES=2
#       bench/sweep_sst2.sh, build/sweep-sst2): per method, its best
#       (method, budget) at <= 2% of the model's parameters (the 2% budget
#       rounds to the nearest size, up to 2.05%), with the sweep's tuned lr,
#       mean ± sd over the seeds, and the gap to full fine-tuning.
#   bench/methods_table.sh [STEPS] [METHOD...]
#       trains each named method on all-MiniLM-L6-v2 with GLUE SST-2 train,
#       the same seed and step budget, evaluates on SST-2 dev, and prints a
#       markdown table: trainable %, dev accuracy, training tokens/s, wall
#       time, peak RSS (default: 600 steps, every preset), one seed. Learning
#       rates: each method's default (`peftc methods`; the sweep's tuned rates)
#       unless LR_FIXED=1 (the papers' usual rates below, as before).
# Every run sets PEFTC_BF16=$BF16 explicitly (0: fp32, the default here; 1: bf16
# frozen weights; then OUT defaults to runs/methods-STEPS-bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --sweep ]; then
    DIR=${2:?usage: bench/methods_table.sh --sweep DIR}
    exec /usr/bin/python3 - "$DIR" <<'PY'
import json, math, sys
d = sys.argv[1]
man = json.load(open(f"{d}/sweep.json"))
metric = man["metric"]
PAPER = {"adapter-pfeiffer", "prefix", "lora", "parallel-adapter", "scaled-pa-r98", "mh-parallel-adapter", "mam", "pa-attn-r98"}
groups, order, grids = {}, [], {}
for r in man["runs"]:
    key = (r["name"], r["budget"])
    if r["grid"] and not r["lr_find"]:
        grids.setdefault(key, []).append(r["lr"]); continue
    if r["grid"]: continue
    if key not in groups: groups[key] = []; order.append(key)
    try: m = json.load(open(f"{d}/{r['dir']}/metrics.json"))
    except OSError: continue
    if f"eval_{metric}" in m: groups[key].append((r, m))
def stats(key):
    v = [100 * m[f"eval_{metric}"] for _, m in groups[key]]
    n = len(v); mean = sum(v) / n if n else float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, n
def fmt(x, f): return "—" if math.isnan(x) else format(x, f)
full = stats(("full", "fixed"))[0] if groups.get(("full", "fixed")) else float("nan")   # no full run: no gaps
names = []
for k in order:
    if k[0] not in names: names.append(k[0])
print(f"| method | budget | spec | trainable % (saved) | trainable % while training | lr | SST-2 dev {metric} (mean ± sd) | seeds | Δ full | within 1.5 |")
print("|---|---|---|---:|---:|---|---:|---:|---:|---|")
for name in names:
    cands = [k for k in order if k[0] == name and groups[k] and (name == "full" or groups[k][0][0]["saved_percent"] <= 2.05)]
    if not cands:
        print(f"| {name} | — | no finished run at <= 2% | | | | | | | |"); continue
    k = max(cands, key=lambda k: stats(k)[0])
    r, m = groups[k][0]
    mean, sd, n = stats(k)
    g = grids.get(k)
    lr = f"{r['lr']:.3g}" + (f" (of {', '.join(f'{x:.3g}' for x in g)})" if g else "")
    spec = r["spec"].replace("|", "\\|")
    gap = mean - full
    within = "reference" if name == "full" else "—" if math.isnan(gap) else ("yes" if gap >= -1.5 else "no")
    label = name + (" (He et al.)" if name in PAPER else "")
    print(f"| {label} | {k[1]} | {spec} | {r['saved_percent']:.3f} | {m['trainable_percent']:.3f} | {lr} | "
          f"{mean:.2f} ± {fmt(sd, '.2f')} | {n} | {fmt(gap, '+.2f')} | {within} |")
PY
fi
STEPS=${1:-600}; shift || true
METHODS=${*:-"full lora bitfit ia3 adapter-houlsby adapter-pfeiffer parallel-adapter parallel-adapter-attn scaled-parallel-adapter mh-parallel-adapter prefix ptuning-v2 prompt ptuning mam unipelt"}
DATA=${DATA:-../shared/data/glue-sst2}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
BF16=${BF16:-0}
OUT=${OUT:-runs/methods-$STEPS$([ "$BF16" = 0 ] || echo -bf16)}
make -s >/dev/null
mkdir -p "$OUT"
lr_of() {
    case "$1" in
        full) echo 3e-5 ;; lora) echo 2e-3 ;; bitfit) echo 2e-3 ;; ia3) echo 5e-3 ;;
        prompt) echo 3e-2 ;; ptuning) echo 1e-3 ;; prefix) echo 5e-4 ;; ptuning-v2) echo 5e-3 ;;
        *) echo 1e-3 ;;
    esac
}
# the preset a row runs, and its options ("parallel-adapter-attn": the same
# adapter at the attention sub-layer, for the FFN-vs-attention comparison)
method_of() { case "$1" in parallel-adapter-attn) echo parallel-adapter ;; *) echo "$1" ;; esac; }
extra_of() {
    case "$1" in
        lora) echo "--r 8 --alpha 16 --target-modules query,value" ;;
        parallel-adapter-attn) echo "--site attn" ;;
        *) echo "" ;;
    esac
}
for m in $METHODS; do
    run="$OUT/$m"
    if [ -f "$run/metrics.json" ]; then echo "($m: kept $run/metrics.json)" >&2; continue; fi
    echo "== $m" >&2
    PEFTC_BF16=$BF16 /usr/bin/time -v ./peftc train --model "$MODEL" --train "$DATA/train.tsv" --eval "$DATA/dev.tsv" \
        --method "$(method_of "$m")" $(extra_of "$m") $([ "${LR_FIXED:-0}" = 1 ] && echo --lr "$(lr_of "$m")") --bucket --max-steps "$STEPS" --batch 32 --seed 42 \
        --out "$run" 2> "$run.log" || { echo "$m failed: $(tail -1 "$run.log")" >&2; continue; }
done
echo "| method | trainable params | trainable % | SST-2 dev acc | train tokens/s | train s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for m in $METHODS; do
    f="$OUT/$m/metrics.json"
    [ -f "$f" ] || { echo "| $m | failed | | | | | |"; continue; }
    rss=$(grep -E "Maximum resident" "$OUT/$m.log" 2>/dev/null | awk '{print $NF}')
    /usr/bin/python3 - "$f" "$m" "$rss" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); kb = int(sys.argv[3] or 0)
print(f"| {sys.argv[2]} | {m['trainable_params']:,} | {m['trainable_percent']:.3f} | {100*m.get('eval_accuracy', 0):.2f} | "
      f"{m['train_tokens_per_s']:.0f} | {m['train_seconds']:.0f} | {kb/1024:.0f} |")
PY
done
