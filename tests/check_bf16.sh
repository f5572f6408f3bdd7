#!/usr/bin/env bash
# check_bf16.sh: the bf16 path for frozen weights (the default where it is
# faster: AMX, Zen 4; tests/run.sh runs everything else in fp32) against independent
# references, at bf16's precision:
#   1. training maths: tests/train_grad.c with PEFTC_BF16=1 on the tiny model
#      of check_train_ref.sh, for lora and bitfit (the methods whose base
#      weights are frozen), against the float64 PyTorch oracle
#      (tests/ref_train.py with REF_PRECISION=bf16: loss 1e-2 relative, logits
#      3e-2, each gradient tensor 4e-2 of its largest value); and the bf16
#      gradients must differ from the fp32 ones (the path really ran);
#   1b. the same for the Llama family (LoRA q,v / all-linear / rsLoRA, (IA)^3)
#      against tests/ref_llama_train.py --bf16, which emulates the bf16
#      roundings (loss 1e-4 relative, gradients 5e-3 of their scale);
#   1c. the decoder's prompt rows on BF16 weights through the bf16 kernels
#      (what llama.cpp computes for a BF16 file) against the fp32 oracle;
#   2. the real model: `peftc embed` of 256 SST-2 dev sentences with --bf16
#      and --fp32: every embedding's cosine >= 0.999, and not all identical;
#   3. the default (PEFTC_BF16 unset): `peftc cpu` states one that follows its
#      rule (AMX, or bf16 measured >= 1.3x sgemm), and embed gives exactly
#      that flag's output.
# A CPU without AVX-512-BF16 skips both (one ok line says so).
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/bf16_ref
DATA=../shared/data/glue-sst2/dev.tsv
. tests/lib.sh

if ! grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then
    ok "skipped: this CPU lacks AVX-512-BF16, so peftc runs fp32 only"
    finish
fi

# ---- 1. gradients on the tiny model
rm -rf "$FX"
mkdir -p "$FX"
tally "$("$PY" tests/ref_train.py gen "$FX" 2>&1 | grep -v '^## ')"
if build_driver train_grad; then
    for m in lora bitfit; do
        for p in 1 0; do
            out=$(PEFTC_BF16=$p timeout 120 build/tests/train_grad "$FX/model" "$FX/train.tsv" "$FX/init_$m" \
                  "$FX/grad_${m}_$p.safetensors" 2>&1)
            [ $p = 1 ] && tally "$out"
        done
        [ -f "$FX/grad_${m}_1.safetensors" ] || { bad "$m: train_grad wrote no gradients"; continue; }
        tally "$(REF_PRECISION=bf16 "$PY" tests/ref_train.py compare-grads $m "$FX" "$FX/grad_${m}_1.safetensors" 2>&1)"
        tally "$("$PY" - "$FX/grad_${m}_1.safetensors" "$FX/grad_${m}_0.safetensors" "$m" <<'PYEOF'
import sys
import numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
d = max(float(np.abs(a[k] - b[k]).max()) for k in a if k != "input_ids")
print(("ok   - " if d > 0 else "FAIL - ") + f"{sys.argv[3]}: bf16 and fp32 gradients differ (max {d:.3g}): the bf16 path ran")
PYEOF
)"
    done
fi

# ---- 1b. the Llama family (tests/lm_grad.c) on a tiny random Llama: frozen
# linear weights and the output head through the bf16 kernels, against the
# float64 oracle with bf16 emulated (tests/ref_llama_train.py --bf16: loss
# <= 1e-4 rel, every gradient <= 5e-3 of its scale); without the emulation the
# same gradients are ~5e-2 off, so the check sees which path ran
LT=$FX/llama
if "$PY" tests/make_llama_hf.py tiny "$LT/tiny" >/dev/null 2>"$FX/llama.err" && build_driver lm_grad; then
    for c in lora_qv:lora:4:8:0:q_proj,v_proj all_linear:lora:4:8:0:all-linear rslora:lora:8:16:1:q_proj,k_proj,down_proj ia3:ia3:0:0:0:-; do
        IFS=: read -r n m r a rs tg <<< "$c"
        for p in 1 0; do
            rm -rf "$LT/${n}_$p"; mkdir -p "$LT/${n}_$p"
            PEFTC_BF16=$p timeout 120 build/tests/lm_grad "$LT/tiny" "$m" "$LT/${n}_$p" "$r" "$a" "$rs" "$tg" 0 2 \
                >"$LT/${n}_$p/log" 2>&1 || bad "llama $n (PEFTC_BF16=$p): $(head -1 "$LT/${n}_$p/log")"
        done
        tally "$("$PY" tests/ref_llama_train.py compare "$LT/tiny" "$LT/${n}_1" "$r" "$a" "$rs" --bf16 2>&1 |
                 sed "s/^\(ok  \|FAIL\) - /\1 - llama $n, bf16 path vs the emulating oracle: /")"
        tally "$("$PY" - "$LT/${n}_1/grads.safetensors" "$LT/${n}_0/grads.safetensors" "llama $n" <<'PYEOF'
import sys
import numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
d = max(float(np.abs(a[k] - b[k]).max()) for k in a)
print(("ok   - " if d > 0 else "FAIL - ") + f"{sys.argv[3]}: bf16 and fp32 gradients differ (max {d:.3g}): the bf16 path ran")
PYEOF
)"
    done
else
    bad "tiny Llama for the bf16 check: $(tail -1 "$FX/llama.err")"
fi

# ---- 1c. the decoder's prompt rows on BF16 weights (llama_linear: a bf16
# pack, activations rounded to bf16, as llama.cpp computes a BF16 file):
# a tiny random Llama in bf16 against the fp32 PyTorch oracle's fixture; the
# bf16 run's logits within bf16's reach (max abs <= 0.5, top-1 >= 95%) and
# not the fp32 run's (> 1e-4: the path ran); PEFTC_BF16=0 stays exact (1e-3)
if "$PY" tests/make_llama_hf.py tiny "$LT/tiny_bf16" --dtype bf16 >/dev/null 2>"$FX/llama.err" &&
   "$PY" tests/ref_llama.py random "$LT/ids.txt" --vocab 97 >/dev/null 2>>"$FX/llama.err" &&
   "$PY" tests/ref_llama.py fixture "$LT/tiny_bf16" "$LT/ids.txt" "$LT/fx_bf16" --ngen 2 >/dev/null 2>>"$FX/llama.err" &&
   build_driver llama_ref; then
    exact=$(PEFTC_BF16=0 timeout 120 build/tests/llama_ref "$LT/tiny_bf16" "$LT/ids.txt" "$LT/fx_bf16" 1e-3 2 2>&1)
    grep -q '^## 3 0$' <<< "$exact" && ok "decoder on BF16 weights, PEFTC_BF16=0: exact against the oracle (1e-3)" ||
        bad "decoder on BF16 weights, PEFTC_BF16=0: $(grep -m1 FAIL <<< "$exact")"
    out=$(PEFTC_BF16=1 timeout 120 build/tests/llama_ref "$LT/tiny_bf16" "$LT/ids.txt" "$LT/fx_bf16" 0.5 2 0 2>&1)
    mx=$(sed -n 's/.*all-token logits of .* max abs \([0-9.e+-]*\) .*/\1/p' <<< "$out")
    agree=$(sed -n 's/.*top-1 token agrees on \([0-9]*\) \/ \([0-9]*\) positions.*/\1 \2/p' <<< "$out")
    if [ -n "$mx" ] && [ -n "$agree" ] && awk -v m="$mx" -v a="$agree" 'BEGIN { split(a, x, " "); exit !(m > 1e-4 && m <= 0.5 && x[1] >= 0.95 * x[2]) }'; then
        ok "decoder prompt rows on BF16 weights, bf16 path: max abs logit $mx vs the fp32 oracle (in (1e-4, 0.5]), top-1 $agree"
    else
        bad "decoder prompt rows on BF16 weights, bf16 path: max abs '$mx', top-1 '$agree' (want (1e-4, 0.5], >= 95%)"
    fi
else
    bad "tiny bf16 Llama for the prompt-row check: $(tail -1 "$FX/llama.err")"
fi

# ---- 2. embeddings of the real model
MODEL=models/all-MiniLM-L6-v2
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$DATA" ]; then
    bad "missing $MODEL or $DATA (run scripts/setup.sh)"
    finish
fi
tail -n +2 "$DATA" | cut -f1 | head -256 > "$FX/sentences.txt"
for p in bf16 fp32; do
    if ! timeout 300 ./peftc embed --model "$MODEL" --$p < "$FX/sentences.txt" > "$FX/embed_$p.txt" 2> "$FX/embed_$p.err"; then
        tail -3 "$FX/embed_$p.err"; bad "peftc embed --$p exited non-zero"; finish
    fi
done
tally "$("$PY" - "$FX/embed_bf16.txt" "$FX/embed_fp32.txt" <<'PYEOF'
import sys
import numpy as np
a, b = np.loadtxt(sys.argv[1]), np.loadtxt(sys.argv[2])
if a.shape != b.shape or a.shape[0] != 256:
    print(f"FAIL - embed shapes {a.shape} vs {b.shape}"); sys.exit()
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(("ok   - " if cos.min() >= 0.999 else "FAIL - ") +
      f"embed --bf16 vs --fp32 on 256 SST-2 sentences: min cosine {cos.min():.6f}, mean {cos.mean():.6f} (>= 0.999)")
d = float(np.abs(a - b).max())
print(("ok   - " if d > 0 else "FAIL - ") + f"embed --bf16 differs from --fp32 (max abs {d:.3g}): the bf16 path ran")
PYEOF
)"

# ---- 3. the default precision: `peftc cpu` must state a choice that follows
# its own rule (AMX, or the measured bf16/sgemm ratio >= 1.3), and a run with
# PEFTC_BF16 unset must give exactly the embeddings of that choice's flag
info=$(env -u PEFTC_BF16 ./peftc cpu 2>&1)
amx=$(sed -n 's/^amx: //p' <<< "$info")
ratio=$(sed -n 's/^bf16 kernel \/ sgemm, one thread: \([0-9.]*\)x$/\1/p' <<< "$info")
dflt=$(sed -n 's/^frozen weights: \([a-z0-9]*\) (the default here.*/\1/p' <<< "$info")
if [ -z "$amx" ] || [ -z "$ratio" ] || [ -z "$dflt" ]; then
    bad "peftc cpu: unexpected output: $(tr '\n' ';' <<< "$info")"
else
    want=fp32
    if [ "$amx" = yes ] || awk -v r="$ratio" 'BEGIN { exit !(r >= 1.3) }'; then want=bf16; fi
    [ "$dflt" = "$want" ] && ok "peftc cpu: default $dflt (amx $amx, bf16/sgemm ${ratio}x): follows the rule" ||
        bad "peftc cpu: default $dflt, but amx $amx and bf16/sgemm ${ratio}x say $want"
    forced=$(PEFTC_BF16=0 ./peftc cpu 2>&1 | sed -n 's/^frozen weights: //p')
    [[ $forced == "fp32 (forced; the default here is $dflt)" ]] && ok "peftc cpu under PEFTC_BF16=0: $forced" ||
        bad "peftc cpu under PEFTC_BF16=0 says '$forced'"
    if env -u PEFTC_BF16 timeout 300 ./peftc embed --model "$MODEL" < "$FX/sentences.txt" > "$FX/embed_default.txt" 2> "$FX/embed_default.err"; then
        cmp -s "$FX/embed_default.txt" "$FX/embed_$dflt.txt" && ok "embed with PEFTC_BF16 unset = embed --$dflt, bit for bit" ||
            bad "embed with PEFTC_BF16 unset differs from embed --$dflt (the default that peftc cpu states)"
    else
        bad "peftc embed (default precision) exited non-zero: $(tail -1 "$FX/embed_default.err")"
    fi
fi
finish
