#!/usr/bin/env bash
# check_methods_ref.sh: every method preset beyond full/lora/bitfit (those:
# check_train_ref.sh) against an independent PyTorch oracle
# (tests/ref_methods.py, float64 autograd, each method written from its
# definition) on the tiny random BERT of tests/ref_train.py (hidden 32,
# 2 layers, 4 heads, dropout 0): ia3, adapter-houlsby, adapter-pfeiffer,
# parallel-adapter (ffn, attn), scaled-parallel-adapter (fixed, learned
# scale), mh-parallel-adapter, prefix (plain, --prefix-projection),
# ptuning-v2, prompt, ptuning (MLP and LSTM encoders; templates with virtual
# tokens in the middle, sentence pairs with and without {pair}), mam,
# unipelt and custom delta combinations (every site, several deltas at one
# site, gates, learned scales, multi-head, scale deltas at ffn.act).
#   1. the oracle writes the model, the data, random non-zero TRAINING
#      parameters per case (P-tuning's encoder and the prefix MLP, not the
#      folded vectors peftc saves) and its reference, and checks itself
#      (central differences; its LSTM vs torch.nn.LSTM; every tensor's
#      gradient above the comparison's floor);
#   2. tests/methods_grad.c (library API: method_build, task_init, the init
#      loaded by name into the parameter block, task_forward/task_backward):
#      token ids/types with the virtual tokens, loss (<= 1e-5 rel), logits
#      (<= 1e-5 abs) and every trainable tensor's gradient (<= 1e-4 of
#      max(its largest |gradient|, 1e-3 x the largest gradient of all): the
#      floor is for gradients zero in exact arithmetic, such as a bias added
#      to every attention key);
#   3. for the delta methods (LoRA, (IA)^3, adapters, custom deltas): a freshly
#      initialised task (peftc's own init) gives the base model's logits
#      (<= 1e-6), and moving its tensors moves them.
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
# Run from anywhere; PYTHON overrides the interpreter (default /usr/bin/python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/methods_ref
export OMP_WAIT_POLICY=PASSIVE
. tests/lib.sh

# ---- 1. fixture and oracle (always regenerated: a few seconds)
rm -rf "$FX"
mkdir -p "$FX"
tally "$("$PY" tests/ref_methods.py gen "$FX" 2>&1)"
[ -f "$FX/model/model.safetensors" ] || { bad "the oracle wrote no model"; finish; }

# ---- 2 and 3. through the library API (tests/methods_grad.c)
if build_driver methods_grad; then
    tally "$(timeout 300 "$PY" tests/ref_methods.py compare "$FX" build/tests/methods_grad 2>&1)"
fi
finish
