#!/usr/bin/env bash
# check_adalora_lm.sh: `peftc train --task causal-lm --method adalora` on a
# decoder against HF PEFT's own AdaLoRA (peft.AdaLoraModel + its
# RankAllocator, float64) on a tiny random LlamaForCausalLM
# (tests/ref_adalora_lm.py is the oracle; tests/check_adalora.sh is the
# encoder's twin):
#   1. the oracle writes the model (GQA 4:2, a byte-level BPE tokenizer of 300
#      tokens), train.jsonl (6 prompt/response records, loss on the
#      responses), an init adapter (non-zero E, A, B) and PEFT's record of 20
#      steps of its documented loop with init_r 4 -> target_r 2 on q_proj,
#      k_proj, v_proj of 2 layers, tinit 3, tfinal 5, deltaT 2, orth_reg 0.5;
#   2. peftc trains the same run 20 times, stopping after step K = 1..20:
#      each checkpoint against PEFT's state after step K (parameters <= 2e-5
#      of each tensor's max, EMAs <= 1e-4, budgets, masks and rank patterns
#      equal), the logged losses and gradient norms; the saved adapter:
#      AdaLoraConfig fields, rank_pattern, cut tensor shapes and values as
#      PEFT's save_pretrained; peft.PeftModel.from_pretrained loads it and
#      gives peftc's eval loss (1e-5 rel) and PEFT's own trained model's;
#   3. peftc loads AdaLoRA causal-LM adapters: eval --task causal-lm of its
#      own (unmerged and merged) equals training's eval_loss, of PEFT's
#      save_pretrained equals PEFT's loss; peftc merge of it gives the run's
#      loss; generate --adapter runs; a run with
#      target_r 1 (a module pruned to rank 0) loads in PEFT and peftc;
#   4. resume: stopped after step 8 and resumed equals the straight run bit for bit;
#   5. bad input: target_r > init_r, no budgeting phase, an init adapter
#      already cut to its rank pattern, a rank_pattern without a module's
#      flags, a tensor without its lora_E: one line, non-zero exit.
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/adalora_lm
. tests/lib.sh
STEPS=20

rm -rf "$FX"
mkdir -p "$FX/runs"
tally "$("$PY" tests/ref_adalora_lm.py gen "$FX" 2>&1)"
[ -f "$FX/ref.safetensors" ] || { bad "the oracle wrote no reference"; finish; }
[ -x ./peftc ] || { bad "./peftc missing: run make"; finish; }
M=$FX/model D=$FX/train.jsonl

args=(train --model "$M" --train "$D" --task causal-lm --method adalora --init-adapter "$FX/init"
      --init-r 4 --target-r 2 --tinit 3 --tfinal 5 --delta-t 2 --orth-reg-weight 0.5 --alpha 8
      --target-modules q_proj,k_proj,v_proj --batch 6 --max-steps $STEPS --lr 1e-2 --schedule constant
      --warmup-ratio 0 --weight-decay 0.01 --clip 1.0 --seed 1 --max-len 64 --save-every 1)
runs_ok=1
for k in $(seq 1 $STEPS); do
    stop=()
    [ "$k" -lt $STEPS ] && stop=(--stop-after "$k")
    extra=()
    [ "$k" -eq $STEPS ] && extra=(--eval "$D")
    if ! timeout 60 ./peftc "${args[@]}" "${stop[@]}" "${extra[@]}" --out "$FX/runs/$k" 2> "$FX/runs/$k.log"; then
        tail -3 "$FX/runs/$k.log"; bad "peftc train --method adalora (causal LM) --stop-after $k exited non-zero"; runs_ok=0; break
    fi
done
[ $runs_ok = 1 ] && ok "peftc train --task causal-lm --method adalora: $STEPS runs, stopped after steps 1..$STEPS"
[ $runs_ok = 1 ] && tally "$("$PY" tests/ref_adalora_lm.py compare "$FX" "$FX/runs" "$FX/runs/$STEPS.log" 2>&1)"

# ---- peftc loads AdaLoRA causal-LM adapters
loss_of() { timeout 60 ./peftc eval --task causal-lm --model "$M" --data "$D" "$@" 2>&1 |
            "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["loss"])' 2>/dev/null; }
close() { [ -n "$1" ] && [ -n "$2" ] && "$PY" -c "import sys; sys.exit(abs($1 - $2) > 2e-6 * abs($2))"; }
want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_loss"])' "$FX/runs/$STEPS/metrics.json" 2>/dev/null)
for mode in unmerged merged; do
    flag=(); [ $mode = merged ] && flag=(--merge)
    got=$(loss_of --adapter "$FX/runs/$STEPS" "${flag[@]}")
    if close "$got" "$want"; then
        ok "peftc eval --task causal-lm of its AdaLoRA adapter ($mode, ranks from rank_pattern): loss $got = training's eval_loss $want"
    else
        bad "peftc eval --task causal-lm ($mode) of the AdaLoRA adapter: loss '$got' vs training's '$want'"
    fi
done
# peftc merge: the AdaLoRA deltas folded into a new HF directory, whose loss is the run's
rm -rf "$FX/merged"
if timeout 60 ./peftc merge --model "$M" --adapter "$FX/runs/$STEPS" --out "$FX/merged" >/dev/null 2>"$FX/merge.log"; then
    cp "$M"/tokenizer.json "$M"/tokenizer_config.json "$FX/merged/"
    got=$(timeout 60 ./peftc eval --task causal-lm --model "$FX/merged" --data "$D" 2>&1 |
          "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["loss"])' 2>/dev/null)
    if close "$got" "$want"; then ok "peftc merge of the AdaLoRA adapter into the base: loss $got = training's eval_loss $want"
    else bad "peftc merge of the AdaLoRA adapter: loss '$got' vs training's '$want'"; fi
else tail -2 "$FX/merge.log"; bad "peftc merge of the AdaLoRA adapter failed"; fi
# PEFT's own save_pretrained (its rank pattern; the oracle ran in float64, peftc reads
# F32/F16/BF16 tensors: saved again as float32) and PEFT's loss with it
rm -rf "$FX/peft_f32" && cp -r "$FX/peft_saved" "$FX/peft_f32"
"$PY" -c 'import sys; from safetensors.numpy import load_file, save_file; f = sys.argv[1]
save_file({k: v.astype("float32") for k, v in load_file(f).items()}, f, metadata={"format": "pt"})' "$FX/peft_f32/adapter_model.safetensors"
want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["final_loss"])' "$FX/ref.json" 2>/dev/null)
got=$(loss_of --adapter "$FX/peft_f32")
if close "$got" "$want"; then
    ok "peftc eval --task causal-lm of PEFT's own trained AdaLoRA adapter: loss $got = PEFT's $want"
else
    bad "peftc eval of PEFT's AdaLoRA adapter: loss '$got' vs PEFT's '$want'"
fi
out=$(timeout 60 ./peftc generate --model "$M" --adapter "$FX/runs/$STEPS" --prompt "the cat" --max-new-tokens 4 --temp 0 2>&1); rc=$?
[ $rc -eq 0 ] && ok "peftc generate --adapter RUN_DIR with the AdaLoRA adapter: exit 0" || bad "generate --adapter: exit $rc: $out"

# a pattern with a module pruned to rank 0 (target_r 1): PEFT and peftc load it
if timeout 60 ./peftc train --model "$M" --train "$D" --method adalora --init-adapter "$FX/init" \
        --target-modules q_proj,k_proj,v_proj --init-r 4 --target-r 1 --tinit 2 --tfinal 3 --delta-t 1 --batch 6 \
        --max-steps 12 --lr 1e-2 --schedule constant --warmup-ratio 0 --max-len 64 --eval "$D" --out "$FX/rank0" 2> "$FX/rank0.log"; then
    zero=$("$PY" -c 'import json,sys; print(sum(1 for v in json.load(open(sys.argv[1]))["rank_pattern"].values() if not any(v)))' "$FX/rank0/adapter_config.json")
    [ "${zero:-0}" -ge 1 ] && ok "target_r 1: $zero module(s) pruned to rank 0" || bad "target_r 1 pruned no module to rank 0 (the case is not exercised)"
    tally "$("$PY" tests/ref_adalora_lm.py load "$FX" "$FX/rank0" 2>&1)"
    got=$(loss_of --adapter "$FX/rank0")
    want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_loss"])' "$FX/rank0/metrics.json" 2>/dev/null)
    if close "$got" "$want"; then ok "peftc eval of an adapter with a rank-0 module: loss $got = training's $want"
    else bad "peftc eval of the rank-0 adapter: '$got' vs '$want'"; fi
else
    tail -3 "$FX/rank0.log"; bad "peftc train --target-r 1 (causal LM) failed"
fi

# ---- resume: stop after 8, resume, equal to the straight run bit for bit
if timeout 60 ./peftc "${args[@]}" --stop-after 8 --out "$FX/resume" 2> "$FX/resume.log" &&
   timeout 60 ./peftc "${args[@]}" --resume "$FX/resume" --out "$FX/resume" --eval "$D" 2>> "$FX/resume.log"; then
    if cmp -s "$FX/resume/adapter_model.safetensors" "$FX/runs/$STEPS/adapter_model.safetensors" &&
       cmp -s "$FX/resume/checkpoint.safetensors" "$FX/runs/$STEPS/checkpoint.safetensors" &&
       cmp -s "$FX/resume/adapter_config.json" "$FX/runs/$STEPS/adapter_config.json"; then
        ok "causal LM resumed after step 8 (masks, EMAs from the checkpoint): adapter, config and checkpoint equal the straight run's bit for bit"
    else
        bad "resumed causal-LM run differs from the straight run"
    fi
else
    tail -3 "$FX/resume.log"; bad "causal-LM stop/resume run failed"
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
base=(train --model "$M" --train "$D" --method adalora --batch 6 --out "$FX/bad")
expect_fail "decoder: target_r > init_r" "target-r 6 exceeds --init-r 4" "${base[@]}" --init-r 4 --target-r 6 --max-steps 10
expect_fail "decoder: tinit + tfinal >= total steps" "no budgeting phase" "${base[@]}" --tinit 6 --tfinal 4 --max-steps 10
expect_fail "decoder: an init adapter already cut to its rank pattern" "already cut to its rank pattern" \
    "${base[@]}" --target-modules q_proj,k_proj,v_proj --init-r 4 --target-r 2 --init-adapter "$FX/runs/$STEPS" --max-steps 10
mkdir -p "$FX/nopat" "$FX/noE"
"$PY" - "$FX/runs/$STEPS" "$FX/nopat" "$FX/noE" <<'PYEOF'
import json, shutil, sys
from safetensors.numpy import load_file, save_file
src, nopat, noe = sys.argv[1:]
c = json.load(open(f"{src}/adapter_config.json"))
k = sorted(c["rank_pattern"])[0]
c2 = dict(c, rank_pattern={a: b for a, b in c["rank_pattern"].items() if a != k})
json.dump(c2, open(f"{nopat}/adapter_config.json", "w"))
shutil.copy(f"{src}/adapter_model.safetensors", f"{nopat}/adapter_model.safetensors")
json.dump(c, open(f"{noe}/adapter_config.json", "w"))
t = load_file(f"{src}/adapter_model.safetensors")
e = [n for n in sorted(t) if n.endswith("lora_E") and t[n].size][0]
save_file({n: v for n, v in t.items() if n != e}, f"{noe}/adapter_model.safetensors", metadata={"format": "pt"})
PYEOF
expect_fail "decoder AdaLoRA adapter: rank_pattern without a module" "rank_pattern has no list of 4 flags" \
    eval --task causal-lm --model "$M" --data "$D" --adapter "$FX/nopat"
expect_fail "decoder AdaLoRA adapter: a module without lora_E" "has no lora_E beside it" \
    generate --model "$M" --adapter "$FX/noE" --prompt hi --max-new-tokens 1
finish
