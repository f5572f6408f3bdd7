#!/usr/bin/env bash
# check_adalora.sh: `peftc train --method adalora` against HF PEFT's own
# AdaLoRA (peft.AdaLoraModel + its RankAllocator, float64) on the tiny random
# BERT of tests/ref_train.py (tests/ref_adalora.py is the oracle):
#   1. the oracle writes the model, train.tsv (8 sentences), an init adapter
#      (non-zero E, A, B, classifier) and PEFT's per-step record of 20 steps of
#      its documented loop (backward, clip 1.0, AdamW, update_and_allocate,
#      zero_grad) with init_r 4 -> target_r 2 on query,value of 2 layers,
#      tinit 3, tfinal 5, deltaT 2, orth_reg_weight 0.5;
#   2. peftc trains the same run 20 times, stopping after step K = 1..20
#      (--stop-after K: its checkpoint holds the parameters, the importance
#      EMAs, the mask and the budget after step K): each against PEFT's state
#      after step K (parameters <= 2e-5 of each tensor's max, EMAs <= 1e-4,
#      budgets, masks and rank patterns equal), the logged losses and gradient
#      norms; the saved adapter: AdaLoraConfig fields, rank_pattern, tensor
#      shapes as PEFT's save_pretrained; peft.PeftModel.from_pretrained loads
#      it and gives peftc's eval loss (1e-5), and PEFT's own model's logits;
#   3. peftc eval loads AdaLoRA adapters (per-module ranks from rank_pattern):
#      its own, unmerged and merged, and PEFT's save_pretrained of the oracle
#      run: the loss equals training's eval_loss / PEFT's (2e-6, printed to 6 places);
#      a run with target_r 1 (a module pruned to rank 0) loads in PEFT and peftc;
#   4. resume: a run stopped after step 8 and resumed equals the straight run
#      bit for bit (adapter and checkpoint, EMAs included);
#   5. bad input: target_r > init_r, no budgeting phase (tinit + tfinal >=
#      total steps), --r with adalora, resume with another schedule: one line, non-zero exit.
# Float32 vs float64: the parameters follow PEFT's to ~1e-6 relative; the
# EMAs are products |p g| of float32 gradients (relative ~1e-4 where
# gradients are small); the masks are decided by score gaps the oracle checks
# to be > 1e-3 relative, far above float32's round-off.
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/adalora
. tests/lib.sh
STEPS=20

rm -rf "$FX"
mkdir -p "$FX/runs"
tally "$("$PY" tests/ref_adalora.py gen "$FX" 2>&1)"
[ -f "$FX/ref.safetensors" ] || { bad "the oracle wrote no reference"; finish; }
[ -x ./peftc ] || { bad "./peftc missing: run make"; finish; }

args=(train --model "$FX/model" --train "$FX/train.tsv" --method adalora --init-adapter "$FX/init"
      --init-r 4 --target-r 2 --tinit 3 --tfinal 5 --delta-t 2 --orth-reg-weight 0.5 --alpha 8
      --target-modules query,value --batch 8 --max-steps $STEPS --lr 1e-2 --schedule constant
      --warmup-ratio 0 --weight-decay 0.01 --clip 1.0 --seed 1 --max-len 32 --save-every 1)
runs_ok=1
for k in $(seq 1 $STEPS); do
    stop=()
    [ "$k" -lt $STEPS ] && stop=(--stop-after "$k")
    extra=()
    [ "$k" -eq $STEPS ] && extra=(--eval "$FX/train.tsv")
    if ! timeout 60 ./peftc "${args[@]}" "${stop[@]}" "${extra[@]}" --out "$FX/runs/$k" 2> "$FX/runs/$k.log"; then
        tail -3 "$FX/runs/$k.log"; bad "peftc train --method adalora --stop-after $k exited non-zero"; runs_ok=0; break
    fi
done
[ $runs_ok = 1 ] && ok "peftc train --method adalora: $STEPS runs, stopped after steps 1..$STEPS"
[ $runs_ok = 1 ] && tally "$("$PY" tests/ref_adalora.py compare "$FX" "$FX/runs" "$FX/runs/$STEPS.log" 2>&1)"

# ---- peftc loads AdaLoRA adapters: its own (unmerged and merged) and PEFT's
# save_pretrained (labels added: PEFT's config has none; float32 tensors), same loss as the
# run's metrics.json / PEFT's own model
loss_of() { timeout 60 ./peftc eval --model "$FX/model" --data "$FX/train.tsv" "$@" 2>&1 |
            "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["loss"])' 2>/dev/null; }
want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_loss"])' "$FX/runs/$STEPS/metrics.json" 2>/dev/null)
for mode in unmerged merged; do
    flag=(); [ $mode = merged ] && flag=(--merge)
    got=$(loss_of --adapter "$FX/runs/$STEPS" "${flag[@]}")
    if [ -n "$got" ] && [ -n "$want" ] && "$PY" -c "import sys; sys.exit(abs($got - $want) > 2e-6)"; then
        ok "peftc eval of its AdaLoRA adapter ($mode, ranks cut by rank_pattern): loss $got = training's eval_loss $want"
    else
        bad "peftc eval ($mode) of the AdaLoRA adapter: loss '$got' vs training's '$want'"
    fi
done
rm -rf "$FX/peft_labelled" && cp -r "$FX/peft_saved" "$FX/peft_labelled"
"$PY" - "$FX/peft_labelled/adapter_config.json" <<'PYEOF'
import json, os, sys
from safetensors.numpy import load_file, save_file
c = json.load(open(sys.argv[1]))
c["peftc"] = {"labels": ["0", "1"], "max_len": 32}
json.dump(c, open(sys.argv[1], "w"))
st = os.path.join(os.path.dirname(sys.argv[1]), "adapter_model.safetensors")   # the oracle ran in float64
save_file({k: v.astype("float32") for k, v in load_file(st).items()}, st, metadata={"format": "pt"})
PYEOF
got=$(loss_of --adapter "$FX/peft_labelled")
want=$("$PY" - "$FX" <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file
sys.path.insert(0, "tests")
import ref_train as R
import torch
z = torch.from_numpy(load_file(sys.argv[1] + "/ref.safetensors")["logits"])
_, _, _, y = R.encode_batch(sys.argv[1])
print(float(torch.nn.functional.cross_entropy(z, y)))
PYEOF
)
if [ -n "$got" ] && [ -n "$want" ] && "$PY" -c "import sys; sys.exit(abs($got - $want) > 2e-6)"; then
    ok "peftc eval of PEFT's own trained AdaLoRA adapter (its rank_pattern, resized tensors): loss $got = PEFT's $want"
else
    bad "peftc eval of PEFT's adapter: loss '$got' vs PEFT's '$want'"
fi

# a pattern with a module pruned to rank 0 (target_r 1): PEFT and peftc load it
if timeout 60 ./peftc train --model "$FX/model" --train "$FX/train.tsv" --method adalora --init-adapter "$FX/init" \
        --init-r 4 --target-r 1 --tinit 2 --tfinal 3 --delta-t 1 --batch 8 --max-steps 12 --lr 1e-2 --schedule constant \
        --warmup-ratio 0 --max-len 32 --eval "$FX/train.tsv" --out "$FX/rank0" 2> "$FX/rank0.log"; then
    tally "$("$PY" tests/ref_adalora.py load "$FX" "$FX/rank0" 2>&1)"
    got=$(loss_of --adapter "$FX/rank0")
    want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_loss"])' "$FX/rank0/metrics.json" 2>/dev/null)
    if [ -n "$got" ] && [ -n "$want" ] && "$PY" -c "import sys; sys.exit(abs($got - $want) > 2e-6)"; then
        ok "peftc eval of an adapter with a rank-0 module: loss $got = training's $want"
    else
        bad "peftc eval of the rank-0 adapter: '$got' vs '$want'"
    fi
else
    tail -3 "$FX/rank0.log"; bad "peftc train --target-r 1 failed"
fi

# ---- resume: stop after 8, resume, equal to the straight run bit for bit
rm -rf "$FX/resume"
if timeout 60 ./peftc "${args[@]}" --stop-after 8 --out "$FX/resume" 2> "$FX/resume.log" &&
   timeout 60 ./peftc "${args[@]}" --resume "$FX/resume" --out "$FX/resume" --eval "$FX/train.tsv" 2>> "$FX/resume.log"; then
    if cmp -s "$FX/resume/adapter_model.safetensors" "$FX/runs/$STEPS/adapter_model.safetensors" &&
       cmp -s "$FX/resume/checkpoint.safetensors" "$FX/runs/$STEPS/checkpoint.safetensors" &&
       cmp -s "$FX/resume/adapter_config.json" "$FX/runs/$STEPS/adapter_config.json"; then
        ok "resumed after step 8 (masks, EMAs from the checkpoint): adapter, config and checkpoint equal the straight run's bit for bit"
    else
        bad "resumed run differs from the straight run"
    fi
else
    tail -3 "$FX/resume.log"; bad "stop/resume run failed"
fi

# ---- bad input: one line naming the problem, non-zero exit
expect_fail() {   # expect_fail WHAT PATTERN ARGS...
    local what=$1 pat=$2; shift 2
    local out rc
    out=$(timeout 60 ./peftc "$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c .)" -eq 1 ] && printf '%s' "$out" | grep -q -- "$pat"; then
        ok "$what: exit $rc, '$out'"
    else
        bad "$what: exit $rc, output: $out"
    fi
}
base=(train --model "$FX/model" --train "$FX/train.tsv" --method adalora --batch 8 --out "$FX/bad")
expect_fail "target_r > init_r" "target-r 6 exceeds --init-r 4" "${base[@]}" --init-r 4 --target-r 6 --max-steps 10
expect_fail "tinit + tfinal >= total steps" "no budgeting phase" "${base[@]}" --tinit 6 --tfinal 4 --max-steps 10
expect_fail "tinit + tfinal >= --total-step" "no budgeting phase" "${base[@]}" --tinit 6 --tfinal 4 --total-step 10 --max-steps 50
expect_fail "--r with adalora" "use --init-r" "${base[@]}" --r 4 --max-steps 10
other=("${args[@]}")   # the same run with --tfinal 4
for i in "${!other[@]}"; do [ "${other[$i]}" = --tfinal ] && other[$((i + 1))]=4; done
expect_fail "resume with another schedule" "checkpoint of other adalora_options" "${other[@]}" --resume "$FX/runs/8" --out "$FX/bad"
finish
