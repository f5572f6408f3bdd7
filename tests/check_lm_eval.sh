#!/usr/bin/env bash
# check_lm_eval.sh: causal-LM evaluation (peftc eval --task causal-lm, --eval
# during training, generate --data) on a tiny random Llama in HF layout with
# SmolLM2's real tokenizer (49152 tokens), against Hugging Face transformers
# in float64 (tests/ref_lm_eval.py; token rows from tests/ref_lm_data.py):
#   - mean token loss and target count over GSM8K with a --prompt-template,
#     prompt/response records with truncation and --loss-on all, and SAMSum
#     chats (assistant turns through the chat template): <= 1e-6 relative;
#   - with a LoRA adapter on q, v, down (HF PEFT as the oracle), unmerged
#     and --merge;
#   - `train --eval --eval-every 2`: the held-out losses in metrics.json at
#     step 0 equal the base model's oracle loss, the last one the oracle's
#     loss with the saved adapter (PEFT), and the standalone eval's;
#   - `generate --data`: greedy continuations equal transformers' generate()
#     (with the PEFT adapter) text for text; --stop cuts at the stop string;
#     --limit; the reference field is the record's; eval --metric scores the
#     same predictions as `peftc score` on the written file;
#   - bad input: one line naming file:line and field, non-zero exit, no
#     output file left behind.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
O=tests/out/lm_eval
mkdir -p "$O"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
[ -f "$GGUF" ] || { bad "$GGUF missing (scripts/fetch_models.sh)"; finish; }
[ -x ./peftc ] || { bad "./peftc missing: run make"; finish; }
[ -f "$O/tok/tokenizer.json" ] || "$PY" tests/ref_bpe.py hfjson "$GGUF" "$O/tok" 2>"$O/e" || { bad "hfjson: $(tail -1 "$O/e")"; finish; }
[ -f "$O/tiny/model.safetensors" ] || "$PY" tests/ref_lm_eval.py make "$O/tok" "$O/tiny" 2>"$O/e" || { bad "make: $(tail -1 "$O/e")"; finish; }
[ -f "$O/d/pr.jsonl" ] || "$PY" tests/ref_lm_data.py gen "$DATA" "$O/d" 2>"$O/e" || { bad "gen: $(tail -1 "$O/e")"; finish; }
M=$O/tiny
head -10 "$O/d/gsm_raw.jsonl" >"$O/gsm10.jsonl"
tail -16 "$O/d/gsm_raw.jsonl" >"$O/gsm_train.jsonl"
head -10 "$O/d/pr.jsonl" >"$O/pr10.jsonl"
head -8 "$O/d/chat.jsonl" >"$O/chat8.jsonl"
[ -f "$O/lora/adapter_config.json" ] || "$PY" tests/ref_lm_lora.py adapter "$M" "$O/lora" --targets q_proj,v_proj,down_proj --r 4 --alpha 8 --seed 3 2>"$O/e" || { bad "adapter: $(tail -1 "$O/e")"; finish; }
TPL='Question: {question}
Answer:'
cmp_loss() { # name tol peftc.json oracle.json [loss-key]
    "$PY" - "$@" <<'PYEOF'
import json, sys
name, tol, a, b = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
key = sys.argv[5] if len(sys.argv) > 5 else "loss"
try:
    x, y = json.load(open(a)), json.load(open(b))
except Exception as e:
    print(f"FAIL - {name}: unreadable result ({e})"); sys.exit()
got = x[key] if key in x else x["loss"]
rel = abs(got - y["loss"]) / abs(y["loss"])
same = all(x[k] == y[k] for k in ("targets", "examples", "truncated", "dropped") if k in x and k in y)
print(("ok   - " if rel <= tol and same else "FAIL - ") +
      f"{name}: loss {got:.8f} vs {'transformers' if 'targets' in y else 'training'} {y['loss']:.8f} (rel {rel:.1e})"
      + (f", {y['targets']} targets, {y['examples']} examples, {y['truncated']} truncated" if "targets" in y else "")
      + ("" if same else f"; counts differ: {x}"))
PYEOF
}
# every peftc run first, then one oracle process for all cases (loading
# torch and the model once)
: >"$O/spec"; : >"$O/names"
n_case=0
case_() { # name oracle-args -- peftc-args
    local name=$1; shift
    local oa=()
    while [ "$1" != -- ]; do oa+=("$1"); shift; done; shift
    n_case=$((n_case + 1))
    if ./peftc eval --task causal-lm --model "$M" "$@" >"$O/c$n_case.json" 2>"$O/e"; then
        (IFS=$'\t'; echo "loss	$M	${oa[*]}	--out	$O/r$n_case.json") >>"$O/spec"
        printf '%s\t%s\n' "$n_case" "$name" >>"$O/names"
    else bad "$name: $(cat "$O/e")"; fi
}
TE='Question: {question}\nAnswer:'
case_ "GSM8K template" "$O/gsm10.jsonl" template 512 0 --template "$TE" --resp answer -- \
    --data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer
case_ "prompt/response, --max-len 40 (truncation), --loss-on all" "$O/pr10.jsonl" prompt-response 40 1 -- \
    --data "$O/pr10.jsonl" --max-len 40 --loss-on all
case_ "SAMSum chats (assistant turns)" "$O/chat8.jsonl" chat 1024 0 -- --data "$O/chat8.jsonl"
case_ "LoRA q,v,down unmerged (PEFT)" "$O/gsm10.jsonl" template 512 0 --template "$TE" --resp answer --adapter "$O/lora" -- \
    --data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer --adapter "$O/lora"
case_ "LoRA merged (PEFT)" "$O/gsm10.jsonl" template 512 0 --template "$TE" --resp answer --adapter "$O/lora" -- \
    --data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer --adapter "$O/lora" --merge
# --eval during training: its first and last held-out losses become cases too
rm -rf "$O/run"
trained=0
if ./peftc train --model "$M" --train "$O/gsm_train.jsonl" --eval "$O/gsm10.jsonl" --eval-every 2 --prompt-template "$TPL" \
        --response-field answer --method lora --target-modules q_proj,v_proj --lr 1e-2 --max-steps 5 --batch 4 --max-len 96 \
        --out "$O/run" >"$O/train.log" 2>&1; then
    trained=1
    tally "$("$PY" - "$O" <<'PYEOF'
import json, sys
O = sys.argv[1]
m = json.load(open(f"{O}/run/metrics.json"))
steps = [e["step"] for e in m["eval"]]
print(("ok   - " if steps == [0, 2, 4, 5] else "FAIL - ") + f"train --eval-every 2 over 5 steps: held-out losses at steps {steps}")
json.dump({"loss": m["eval"][0]["loss"]}, open(f"{O}/first.json", "w"))
json.dump({"loss": m["eval_loss"]}, open(f"{O}/last.json", "w"))
PYEOF
)"
    printf 'loss\t%s\t%s\ttemplate\t96\t0\t--template\t%s\t--resp\tanswer\t--out\t%s\n' "$M" "$O/gsm10.jsonl" "$TE" "$O/r_first.json" >>"$O/spec"
    printf 'loss\t%s\t%s\ttemplate\t96\t0\t--template\t%s\t--resp\tanswer\t--adapter\t%s\t--out\t%s\n' "$M" "$O/gsm10.jsonl" "$TE" "$O/run" "$O/r_last.json" >>"$O/spec"
    ./peftc eval --task causal-lm --model "$M" --adapter "$O/run" --data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer --max-len 96 >"$O/c_run.json" 2>"$O/e" || bad "eval run: $(cat "$O/e")"
else
    bad "train --eval: $(tail -1 "$O/train.log")"
fi
rm -f "$O"/r*.json
if "$PY" tests/ref_lm_eval.py batch "$O/spec" 2>"$O/e"; then
    while IFS=$'\t' read -r i name; do
        tally "$(cmp_loss "$name" 1e-6 "$O/c$i.json" "$O/r$i.json")"
    done <"$O/names"
    if [ $trained = 1 ]; then
        tally "$(cmp_loss "train --eval: the step-0 held-out loss (base)" 1e-5 "$O/first.json" "$O/r_first.json")"
        tally "$(cmp_loss "train --eval: the last held-out loss (trained adapter, PEFT)" 1e-5 "$O/last.json" "$O/r_last.json")"
        tally "$(cmp_loss "peftc eval of the saved adapter = the training's last held-out loss" 1e-6 "$O/c_run.json" "$O/last.json")"
    fi
else
    bad "oracle: $(tail -1 "$O/e")"
fi
# generate --data: greedy, against transformers
G=(--data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer)
rm -f "$O/p.jsonl"
./peftc generate --model "$M" --adapter "$O/lora" "${G[@]}" --limit 6 --max-new-tokens 12 --out "$O/p.jsonl" >"$O/g.json" 2>"$O/e" || bad "generate --data: $(cat "$O/e")"
"$PY" tests/ref_lm_eval.py generate "$M" "$O/lora" "$O/gsm10.jsonl" 'Question: {question}\nAnswer:' 6 12 >"$O/hf.jsonl" 2>"$O/e" || bad "hf generate: $(tail -1 "$O/e")"
tally "$("$PY" - "$O/p.jsonl" "$O/hf.jsonl" "$O/gsm10.jsonl" <<'PYEOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
g = [json.loads(l) for l in open(sys.argv[3])]
same = len(a) == len(b) == 6 and all(x["prediction"] == y["prediction"] for x, y in zip(a, b))
print(("ok   - " if same else "FAIL - ") + f"generate --data --limit 6 with a LoRA: greedy text equal to transformers+PEFT generate() on {len(b)} prompts"
      + ("" if same else f": {[x['prediction'] for x in a]} vs {[y['prediction'] for y in b]}"))
refs = all(x["reference"] == r["answer"] and x["index"] == i for i, (x, r) in enumerate(zip(a, g)))
print(("ok   - " if refs else "FAIL - ") + "generate --data: index and reference (the response field) of every record")
PYEOF
)"
# a stop string: the prediction ends before its first occurrence
stop=$("$PY" - "$O/p.jsonl" <<'PYEOF'
import json, sys
p = json.loads(open(sys.argv[1]).readline())["prediction"]
w = p.split()
print(w[2] if len(w) > 3 else p[len(p) // 2:len(p) // 2 + 3])
PYEOF
)
./peftc generate --model "$M" --adapter "$O/lora" "${G[@]}" --limit 1 --max-new-tokens 12 --stop "$stop" --out "$O/ps.jsonl" >/dev/null 2>"$O/e" || bad "generate --stop: $(cat "$O/e")"
tally "$("$PY" - "$O" "$stop" <<'PYEOF'
import json, sys
O, stop = sys.argv[1], sys.argv[2]
full = json.loads(open(f"{O}/p.jsonl").readline())["prediction"]
r = json.loads(open(f"{O}/ps.jsonl").readline())
want = full[:full.index(stop)] if stop in full else None
print(("ok   - " if r["prediction"] == want and r["stop"] == "stop" else "FAIL - ") +
      f"generate --data --stop {stop!r}: {r['prediction']!r} (stop {r['stop']})")
PYEOF
)"
# eval --metric: generation and scores in one command = score on the written predictions
./peftc eval --task causal-lm --model "$M" --adapter "$O/lora" "${G[@]}" --metric em-number,rouge,bleu --limit 6 --max-new-tokens 12 --pred-out "$O/pm.jsonl" --no-loss >"$O/em.json" 2>"$O/e" || bad "eval --metric: $(cat "$O/e")"
./peftc score --metric em-number,rouge,bleu --pred "$O/pm.jsonl" >"$O/sc.json" 2>"$O/e" || bad "score: $(cat "$O/e")"
tally "$("$PY" - "$O" <<'PYEOF'
import json, sys
O = sys.argv[1]
try:
    a = json.load(open(f"{O}/em.json")); b = json.load(open(f"{O}/sc.json"))
    same = all(a[k] == b[k] for k in b) and a["generation"]["examples"] == 6
    same = same and open(f"{O}/pm.jsonl").read() == open(f"{O}/p.jsonl").read()
except Exception as e:
    same = False
print(("ok   - " if same else "FAIL - ") + "eval --metric em-number,rouge,bleu: the predictions of generate --data, scored as peftc score scores them")
PYEOF
)"
# bad input
expect_fail() { # name pattern -- command...
    local name=$1 pat=$2; shift 3
    local msg
    if msg=$("$@" 2>&1 >/dev/null); then bad "$name: accepted"; return; fi
    [ "$(printf '%s\n' "$msg" | wc -l)" -eq 1 ] && printf '%s' "$msg" | grep -q -- "$pat" && ok "$name: $msg" || bad "$name: '$msg'"
}
printf '{"question": "a?", "answer": "b"}\n{"question": "c?"}\n' >"$O/bad_missing.jsonl"
printf '{"question": "a?", "answer": ""}\n' >"$O/bad_empty.jsonl"
expect_fail "eval: a record without the response field" 'bad_missing.jsonl:2: no string field "answer"' -- \
    ./peftc eval --task causal-lm --model "$M" --data "$O/bad_missing.jsonl" --prompt-template "$TPL" --response-field answer
expect_fail "eval: an empty response" 'bad_empty.jsonl:1: empty "answer"' -- \
    ./peftc eval --task causal-lm --model "$M" --data "$O/bad_empty.jsonl" --prompt-template "$TPL" --response-field answer
expect_fail "eval: a template field the records lack" 'no string field "q"' -- \
    ./peftc eval --task causal-lm --model "$M" --data "$O/gsm10.jsonl" --prompt-template 'Q: {q}' --response-field answer
rm -f "$O/none.jsonl"
expect_fail "generate --data: plain text records" 'have no prompt to continue' -- \
    ./peftc generate --model "$M" --data "$O/d/text.jsonl" --out "$O/none.jsonl"
[ ! -e "$O/none.jsonl" ] && ! ls "$O"/none.jsonl.tmp* >/dev/null 2>&1 && ok "generate --data: no output file after an error" || bad "generate --data left a file after an error"
expect_fail "train --eval: a bad held-out file" 'bad_missing.jsonl:2: no string field "answer"' -- \
    ./peftc train --model "$M" --train "$O/gsm_train.jsonl" --eval "$O/bad_missing.jsonl" --prompt-template "$TPL" --response-field answer --method lora --max-steps 1 --out "$O/run_bad"
expect_fail "eval: an adapter of another base" 'maybe wrong base model' -- \
    ./peftc eval --task causal-lm --model "$GGUF" --adapter "$O/lora" --data "$O/gsm10.jsonl" --prompt-template "$TPL" --response-field answer
expect_fail "eval: an unknown --metric" "use em-number, rouge, bleu" -- \
    ./peftc eval --task causal-lm --model "$M" --data "$O/gsm10.jsonl" --metric accuracy
finish
