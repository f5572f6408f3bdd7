#!/usr/bin/env bash
# check_train_ref.sh: peftc's training maths against an independent PyTorch
# oracle (tests/ref_train.py, float64 autograd + torch.optim.AdamW) on a tiny
# random-weight BERT (hidden 32, 2 layers, dropout 0), for full, lora, bitfit:
#   1. the oracle writes the model, train.tsv (8 sentences), a random init
#      adapter per method (non-zero LoRA B) and its reference, and checks itself
#      (autograd vs central differences, its hand-written AdamW vs torch's,
#      torch float32 vs float64);
#   2. tests/train_grad.c (library API): loss, logits and the gradient of every
#      trainable tensor at the init weights vs the oracle (loss <= 1e-5 rel,
#      logits <= 1e-5 abs, each tensor <= 1e-4 of its largest |gradient|);
#      for lora also method_merge / unmerge (logits <= 1e-5, weights <= 1e-6);
#   3. `peftc train --init-adapter ... --batch 8 --max-steps 5 --lr 1e-2
#      --schedule constant --warmup-ratio 0 --weight-decay 0.01 --clip 1.0`:
#      the saved adapter vs the oracle's parameters after 5 AdamW steps, the
#      logged losses (<= 1e-4) and grad norms (<= 1e-3), metrics.json.
#
# Tolerances and float32. Gradients: the two attention key biases have a
# gradient that is zero in exact arithmetic (softmax ignores a shift shared by
# every key); a relative measure is meaningless there, so every gradient
# tensor is compared relative to max(its largest |value|, 1e-3 x the largest
# gradient of all). Parameters after 5 steps: Adam divides each gradient
# element by its own running magnitude, so elements whose gradient is at
# float32's round-off (those key biases, elements near 0) follow the
# round-off in any float32 implementation: torch's own float32 run is off by
# ~1e-2 there. The oracle therefore also gives each element its float32
# envelope (the first-order effect of a gradient error of 3e-6 x the step's
# largest gradient, through its AdamW, by autograd), and every element must
# satisfy |peftc - ref| <= 1e-4 x max|ref tensor| + envelope (so within
# 1.1e-4 where the envelope is under 1e-5 x max|ref|: most elements). The
# oracle checks that torch's own float32 run satisfies the same bound. The
# losses after step 1 move with those elements too: metrics.json's step-5 loss
# is compared at 1e-4 (relative), the step-1 loss (train_grad) at 1e-5.
#
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
# Run from anywhere; PYTHON overrides the interpreter (default /usr/bin/python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/train_ref
. tests/lib.sh

# ---- 1. fixture and oracle (always regenerated: about a second)
rm -rf "$FX"
mkdir -p "$FX"
tally "$("$PY" tests/ref_train.py gen "$FX" 2>&1)"
[ -f "$FX/ref_full.safetensors" ] && [ -f "$FX/ref_lora.safetensors" ] && [ -f "$FX/ref_bitfit.safetensors" ] ||
    { bad "the oracle wrote no reference"; finish; }

# ---- 2. loss and gradients through the library API (tests/train_grad.c)
if build_driver train_grad; then
    for m in full lora bitfit; do
        out=$(timeout 120 build/tests/train_grad "$FX/model" "$FX/train.tsv" "$FX/init_$m" "$FX/c_grad_$m.safetensors" 2>&1)
        tally "$out"
        [ -f "$FX/c_grad_$m.safetensors" ] || continue
        tally "$("$PY" tests/ref_train.py compare-grads $m "$FX" "$FX/c_grad_$m.safetensors" 2>&1)"
    done
fi

# ---- 3. 5 training steps through the CLI
if [ ! -x ./peftc ]; then
    bad "./peftc missing: run make"
else
    for m in full lora bitfit; do
        extra=()
        [ $m = lora ] && extra=(--r 4 --alpha 8 --target-modules query,value --lora-dropout 0)
        rm -rf "$FX/run_$m"
        if ! timeout 120 ./peftc train --model "$FX/model" --train "$FX/train.tsv" --method $m \
                --init-adapter "$FX/init_$m" --batch 8 --max-steps 5 --lr 1e-2 --schedule constant \
                --warmup-ratio 0 --weight-decay 0.01 --clip 1.0 --seed 1 --max-len 32 \
                --out "$FX/run_$m" "${extra[@]}" 2> "$FX/run_$m.log"; then
            tail -3 "$FX/run_$m.log"; bad "peftc train --method $m exited non-zero"; continue
        fi
        tally "$("$PY" tests/ref_train.py compare-train $m "$FX" "$FX/run_$m" "$FX/run_$m.log" 2>&1)"
    done
fi
finish
