#!/usr/bin/env bash
# check_bert.sh: peftc's BERT encoder against the independent PyTorch oracle
# (tests/ref_bert.py) on the first 64 SST-2 dev sentences:
#   1. the oracle's own self-checks (float32 vs float64, padding, nn.TransformerEncoderLayer);
#   2. tests/bert_ref.c through the library API: last hidden states (<= 1e-4),
#      mean-pooled embeddings (cosine >= 0.9999), batch composition;
#   3. the CLI end to end: `peftc embed --normalize` vs the oracle's embeddings.
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
# Run from anywhere; PYTHON overrides the interpreter (default /usr/bin/python3,
# which has torch, tokenizers and safetensors).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODEL=models/all-MiniLM-L6-v2
FX=tests/out/bert_ref
N=64
. tests/lib.sh

# ---- 1. fixture (regenerated when missing or older than the oracle or the model)
mkdir -p tests/out
stale=0
for f in ids.txt hidden.f32 embed.txt sentences.txt; do
    [ -s "$FX/$f" ] || stale=1
done
if [ $stale -eq 0 ]; then
    for dep in tests/ref_bert.py "$MODEL/model.safetensors" "$MODEL/config.json" "$MODEL/tokenizer.json"; do
        [ "$dep" -nt "$FX/embed.txt" ] && stale=1
    done
fi
if [ $stale -eq 1 ]; then
    rm -rf "$FX"
    if ! log=$("$PY" tests/ref_bert.py fixture "$FX" --n $N 2>&1); then
        printf '%s\n' "$log" | tail -5
        bad "ref_bert.py fixture failed"; finish
    fi
    echo "# $log"
fi
[ "$(wc -l < "$FX/ids.txt")" -eq $N ] && ok "fixture $FX: $N sentences" || { bad "fixture $FX is incomplete"; finish; }

tally "$("$PY" tests/ref_bert.py selfcheck --n 16 2>&1)"

# ---- 2. library API (tests/bert_ref.c, built with the Makefile's flags)
if build_driver bert_ref; then
    out=$(timeout 600 build/tests/bert_ref "$FX" 2>&1); rc=$?
    tally "$out"
    if ! printf '%s\n' "$out" | grep -qE '^## [0-9]+ [0-9]+$'; then
        printf '%s\n' "$out" | tail -5; bad "bert_ref produced no result line (exit $rc)"
    elif [ $rc -ne 0 ] && ! printf '%s\n' "$out" | grep -q '^FAIL'; then
        bad "bert_ref exited $rc"
    fi
fi

# ---- 3. the CLI end to end
if [ ! -x ./peftc ]; then
    bad "./peftc missing: run make"
else
    if ! timeout 600 ./peftc embed --model "$MODEL" --normalize < "$FX/sentences.txt" \
            > "$FX/peftc_embed.txt" 2> "$FX/peftc_embed.err"; then
        tail -5 "$FX/peftc_embed.err"; bad "peftc embed --normalize exited non-zero"
    else
        tally "$("$PY" - "$FX/peftc_embed.txt" "$FX/embed.txt" <<'EOF'
import sys
import numpy as np
got_path, ref_path = sys.argv[1], sys.argv[2]
ref = np.loadtxt(ref_path, dtype=np.float64, ndmin=2)
try:
    rows = [np.array(l.split(), dtype=np.float64) for l in open(got_path)]
except ValueError as e:
    print(f"FAIL - peftc embed output is not numbers: {e}"); sys.exit()
shapes = {r.shape for r in rows}
if len(rows) != len(ref) or shapes != {(ref.shape[1],)}:
    print(f"FAIL - peftc embed: {len(rows)} lines of widths {sorted(s[0] for s in shapes)}, "
          f"expected {len(ref)} x {ref.shape[1]}"); sys.exit()
got = np.stack(rows)
print(f"ok   - peftc embed: {got.shape[0]} lines x {got.shape[1]} floats")
norm = np.linalg.norm(got, axis=1)
dn = np.abs(norm - 1).max()
print(("ok   - " if dn < 1e-5 else "FAIL - ") + f"--normalize gives unit vectors: max |norm-1| {dn:.3g}")
cos = (got * ref).sum(1) / (norm * np.linalg.norm(ref, axis=1))
bad = np.flatnonzero(~(cos >= 0.9999))
for i in bad[:10]:
    print(f"#   line {i + 1}: cosine {cos[i]:.8f}")
print(("ok   - " if len(bad) == 0 else "FAIL - ") +
      f"peftc embed vs oracle: min cosine {np.nanmin(cos) if np.isfinite(cos).any() else float('nan'):.8f} "
      f"(line {int(np.nanargmin(cos)) + 1 if np.isfinite(cos).any() else 0}) >= 0.9999, "
      f"{len(bad)} under, max abs diff {np.abs(got - ref).max():.3g}")
EOF
)"
    fi
fi
finish
