#!/usr/bin/env bash
# check_tasks.sh: the tasks beyond sentence classification (issue 12) against
# independent oracles (tests/ref_tasks.py):
#   1. heads, losses and gradients: tests/tasks_grad.c (library API) vs
#      transformers' BertForTokenClassification / BertForSequenceClassification
#      (problem_type regression) in float64 on a tiny random BERT, for full
#      fine-tuning, LoRA (PEFT's LoraModel) and prompt tuning (virtual tokens
#      before [CLS], labelled -100); the token ids and per-token labels vs
#      Hugging Face tokenizers' word alignment (is_split_into_words: first
#      piece labelled, the rest -100), IOB1 -> IOB2, a window ending inside a
#      word; loss <= 1e-5 rel, logits <= 1e-5 abs, every gradient tensor
#      <= 1e-4 of its scale;
#   2. peftc's entity counting vs seqeval on 400 random ill-formed tag
#      sequences (per type too);
#   3. `peftc train --task token-cls` with every method on the tiny model
#      (2 steps): the saved adapter reloads (task_type TOKEN_CLS) and `peftc
#      eval` reproduces the training run's own evaluation;
#   4. real predictions: all-MiniLM-L6-v2 trained 30 steps on CoNLL-2003
#      eng.train, `peftc eval` on 300 sentences of eng.testa vs seqeval
#      (default mode) on `peftc predict`'s columns (equal to 1e-6); the same
#      on WNUT-17 (IOB2) with the tiny model;
#   5. regression on STS-B (MiniLM, 20 steps): eval's Pearson / Spearman vs
#      scipy.stats on `peftc predict`'s scores;
#   6. bad input: one 'peftc:' line naming the file / line, non-zero exit.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/tasks
D=../shared/data
MINI=models/all-MiniLM-L6-v2
. tests/lib.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

rm -rf "$FX"
mkdir -p "$FX"
tally "$("$PY" tests/ref_tasks.py gen "$FX" 2>&1)"
TINY=$FX/model

# ---- 1, 2: the library API against transformers / PEFT / seqeval
if build_driver tasks_grad; then
    for c in tok_full tok_lora tok_prompt reg_full ml_lora; do
        data=$FX/train.conll
        [ $c = reg_full ] && data=$FX/train_reg.tsv
        [ $c = ml_lora ] && data=$FX/train_ml.tsv
        tally "$(timeout 120 build/tests/tasks_grad grad "$TINY" "$data" "$FX/init_$c" "$FX/c_$c.safetensors" 2>&1)"
        [ -f "$FX/c_$c.safetensors" ] && tally "$("$PY" tests/ref_tasks.py compare-grads $c "$FX" "$FX/c_$c.safetensors" 2>&1)"
    done
    tally "$("$PY" tests/ref_tasks.py seqeval-random "$FX" build/tests/tasks_grad 2>&1)"
fi

if [ ! -x ./peftc ]; then bad "./peftc missing: run make"; finish; fi

# ---- 3: every method trains, saves and reloads a token-classification adapter
for m in full lora bitfit ia3 adapter-houlsby adapter-pfeiffer parallel-adapter prompt ptuning prefix ptuning-v2 mam unipelt adalora; do
    out=$FX/m_$m
    if ! timeout 120 ./peftc train --model "$TINY" --task token-cls --train "$FX/train.conll" --eval "$FX/train.conll" \
            --method $m --max-steps 2 --batch 4 --max-len 24 --out "$out" --threads 1 > "$out.log" 2>&1; then
        bad "token-cls --method $m: train exited non-zero: $(tail -1 "$out.log")"; continue
    fi
    ev=$(timeout 60 ./peftc eval --model "$TINY" --adapter "$out" --data "$FX/train.conll" --threads 1 2>&1)
    r=$("$PY" - "$out" "$ev" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1] + "/adapter_config.json"))
met = json.load(open(sys.argv[1] + "/metrics.json"))
try:
    ev = json.loads(sys.argv[2])
except ValueError:
    print("eval printed no JSON: " + sys.argv[2][:200]); sys.exit()
bad = []
if cfg.get("task_type") != "TOKEN_CLS" or cfg["peftc"].get("task") != "token-cls": bad.append("task_type %s" % cfg.get("task_type"))
if met.get("task") != "token-cls": bad.append("metrics task")
for k, e in (("eval_f1", "f1"), ("eval_token_accuracy", "token_accuracy"), ("eval_loss", "loss")):
    if abs(met[k] - ev[e]) > 1e-5: bad.append("%s %.6f vs eval %.6f" % (k, met[k], ev[e]))
print(" ".join(bad) if bad else "same f1 %.4f token accuracy %.4f" % (ev["f1"], ev["token_accuracy"]))
EOF
)
    case "$r" in same*) ok "token-cls --method $m: adapter TOKEN_CLS reloads, eval equals the run's own ($r)";;
                 *) bad "token-cls --method $m: $r";; esac
done

# ---- 4: entity F1 exactly as seqeval computes it, on real predictions
# CoNLL-2003 (IOB1 gold, converted) with MiniLM
if [ -f "$MINI/model.safetensors" ] && [ -f "$D/conll2003/eng.train" ]; then
    awk 'BEGIN{n=0} /^$/{n++} n<=300' "$D/conll2003/eng.testa" > "$FX/testa300"
    if timeout 300 ./peftc train --model "$MINI" --task token-cls --train "$D/conll2003/eng.train" --method lora \
            --max-steps 40 --batch 8 --max-len 256 --lr 1e-2 --out "$FX/conll" --threads 1 > "$FX/conll.log" 2>&1; then
        ./peftc eval --model "$MINI" --adapter "$FX/conll" --data "$FX/testa300" --threads 1 > "$FX/conll_eval.json" 2>"$FX/conll_eval.err"
        ./peftc predict --model "$MINI" --adapter "$FX/conll" --data "$FX/testa300" --threads 1 > "$FX/conll_pred.conll" 2>>"$FX/conll_eval.err"
        tally "$("$PY" tests/ref_tasks.py seqeval-pred "$FX/conll_eval.json" "$FX/conll_pred.conll" 2>&1)"
        n_in=$(grep -c . "$FX/testa300"); n_out=$(grep -c . "$FX/conll_pred.conll")
        n_doc=$(grep -c '^-DOCSTART-' "$FX/testa300")
        [ "$n_out" -eq $((n_in - n_doc)) ] && ok "predict: one line per word ($n_out), the input's columns + the predicted tag" ||
            bad "predict: $n_out lines for $((n_in - n_doc)) words"
    else
        bad "CoNLL-2003 training run failed: $(tail -1 "$FX/conll.log")"
    fi
else
    echo "# skipped: $MINI or $D/conll2003 missing"
fi
# WNUT-17 (IOB2, TAB-separated, 13 labels) on the tiny model: many ill-formed predicted sequences
if [ -f "$D/wnut17/wnut17train.conll" ]; then
    if timeout 300 ./peftc train --model "$TINY" --task token-cls --train "$D/wnut17/wnut17train.conll" --method full \
            --max-steps 30 --batch 16 --max-len 64 --lr 3e-3 --out "$FX/wnut" --threads 1 > "$FX/wnut.log" 2>&1; then
        # the tiny model has 64 positions: words past the window are scored as O by eval, written O by predict
        ./peftc eval --model "$TINY" --adapter "$FX/wnut" --data "$D/wnut17/emerging.dev.conll" --threads 1 > "$FX/wnut_eval.json"
        ./peftc predict --model "$TINY" --adapter "$FX/wnut" --data "$D/wnut17/emerging.dev.conll" --threads 1 > "$FX/wnut_pred.conll"
        tally "$("$PY" tests/ref_tasks.py seqeval-pred "$FX/wnut_eval.json" "$FX/wnut_pred.conll" 2>&1)"
        grep -q '0 tags IOB1 -> IOB2' "$FX/wnut.log" && ok "WNUT-17 is IOB2 already: no tag converted" ||
            bad "WNUT-17: tags were converted: $(grep -o '[0-9]* tags IOB1' "$FX/wnut.log")"
    else
        bad "WNUT-17 training run failed: $(tail -1 "$FX/wnut.log")"
    fi
fi

# ---- 5: regression on STS-B, correlations vs scipy
if [ -f "$MINI/model.safetensors" ] && [ -f "$D/glue-stsb/train.tsv" ]; then
    head -301 "$D/glue-stsb/dev.tsv" > "$FX/stsb300.tsv"
    if timeout 300 ./peftc train --model "$MINI" --task regression --train "$D/glue-stsb/train.tsv" --method lora \
            --max-steps 20 --batch 16 --lr 2e-3 --out "$FX/stsb" --threads 1 > "$FX/stsb.log" 2>&1; then
        ./peftc eval --model "$MINI" --adapter "$FX/stsb" --data "$FX/stsb300.tsv" --threads 1 > "$FX/stsb_eval.json"
        cut -f8,9 "$FX/stsb300.tsv" | tail -n +2 | ./peftc predict --model "$MINI" --adapter "$FX/stsb" --threads 1 > "$FX/stsb_pred.txt"
        tally "$("$PY" tests/ref_tasks.py corr "$FX/stsb_eval.json" "$FX/stsb300.tsv" "$FX/stsb_pred.txt" 2>&1)"
        grep -q '"task_type": "SEQ_CLS"' "$FX/stsb/adapter_config.json" && grep -q '"task": "regression"' "$FX/stsb/adapter_config.json" &&
            ok "regression adapter: task_type SEQ_CLS (PEFT's), peftc.task regression" || bad "regression adapter_config.json"
    else
        bad "STS-B training run failed: $(tail -1 "$FX/stsb.log")"
    fi
fi

# ---- 5b: multi-label (each CoNLL-2003 sentence's entity types), micro / macro F1 vs sklearn
if [ -f "$MINI/model.safetensors" ] && [ -f "$D/conll2003/eng.train" ]; then
    "$PY" tests/ref_tasks.py make-ml "$D/conll2003/eng.train" "$FX/ml_train.tsv" 4000
    "$PY" tests/ref_tasks.py make-ml "$D/conll2003/eng.testa" "$FX/ml_dev.tsv" 300
    if timeout 300 ./peftc train --model "$MINI" --task multi-label --train "$FX/ml_train.tsv" --method lora \
            --max-steps 30 --batch 16 --lr 5e-3 --out "$FX/ml" --threads 1 > "$FX/ml.log" 2>&1; then
        ./peftc eval --model "$MINI" --adapter "$FX/ml" --data "$FX/ml_dev.tsv" --threads 1 > "$FX/ml_eval.json"
        cut -f1 "$FX/ml_dev.tsv" | tail -n +2 | ./peftc predict --model "$MINI" --adapter "$FX/ml" --threads 1 > "$FX/ml_pred.txt"
        tally "$("$PY" tests/ref_tasks.py ml-sklearn "$FX/ml_eval.json" "$FX/ml_dev.tsv" "$FX/ml_pred.txt" 2>&1)"
    else
        bad "multi-label training run failed: $(tail -1 "$FX/ml.log")"
    fi
fi

# ---- 6: bad input
W=$FX/bad
mkdir -p "$W"
expect_fail() {   # NAME NEEDLE -- CMD...: one 'peftc: ' line containing NEEDLE, exit 1..127
    local name="$1" needle="$2"; shift 3
    "$@" < /dev/null > /dev/null 2> "$W/err"; local rc=$?
    local n; n=$(grep -c '^peftc: ' "$W/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$name: exit code $rc"; return; fi
    if [ "$n" -ne 1 ]; then bad "$name: $n error lines: $(cat "$W/err" | head -3)"; return; fi
    grep '^peftc: ' "$W/err" | grep -qF -- "$needle" && ok "$name: $(grep '^peftc: ' "$W/err")" ||
        bad "$name: message lacks '$needle': $(grep '^peftc: ' "$W/err")"
}
TR=(./peftc train --model "$TINY" --task token-cls --max-steps 1 --batch 2 --threads 1 --out "$W/run")
printf 'John NNP I-PER\nSmith NNP\nsaid VBD O\n\n' > "$W/cols.conll"
expect_fail "wrong column count" "cols.conll: line 2 has 2 columns, line 1 has 3" -- "${TR[@]}" --train "$W/cols.conll"
printf 'John S-PER\nsaid O\n\n' > "$W/iobes.conll"
expect_fail "IOBES tags" "iobes.conll: line 1: tag 'S-PER' is IOBES" -- "${TR[@]}" --train "$W/iobes.conll"
printf 'John PER\nsaid O\n\nMary B-PER\n' > "$W/scheme.conll"
expect_fail "unknown tag scheme" "scheme.conll: line 1: tag 'PER' is of an unknown tag scheme" -- "${TR[@]}" --train "$W/scheme.conll"
printf 'John\nsaid\n\n' > "$W/notag.conll"
expect_fail "no tag column" "notag.conll: line 1 has no tag column" -- "${TR[@]}" --train "$W/notag.conll"
printf '\n\n' > "$W/empty.conll"
expect_fail "no sentences" "empty.conll: no sentences" -- "${TR[@]}" --train "$W/empty.conll"
printf 'John O\nsaid O\n\n' > "$W/onetag.conll"
expect_fail "a single tag" "onetag.conll: the training data has fewer than two distinct tags" -- "${TR[@]}" --train "$W/onetag.conll"
printf 'sentence\tlabel\ngood film\t4.5\nbad film\thigh\n' > "$W/reg.tsv"
expect_fail "regression label not a number" "reg.tsv: example 2: label 'high' (column label) is not a number" -- \
    ./peftc train --model "$TINY" --task regression --train "$W/reg.tsv" --max-steps 1 --threads 1 --out "$W/run"
printf 'sentence\tlabel\ngood film\tpos,fun\nbad film\t ,\n' > "$W/ml.tsv"
expect_fail "multi-label: empty label list" "ml.tsv: example 2 has an empty label list" -- \
    ./peftc train --model "$TINY" --task multi-label --train "$W/ml.tsv" --max-steps 1 --threads 1 --out "$W/run"
expect_fail "unknown task" "--task 'ner'" -- ./peftc train --model "$TINY" --task ner --train "$W/reg.tsv" --out "$W/run"
printf 'sentence\tlabel\ngood film\tpos\nbad film\tneg\n' > "$W/cls.tsv"
if [ -d "$FX/m_lora" ]; then
    expect_fail "token-cls adapter, sentence predict" "the adapter was trained for --task token-cls, not seq-cls" -- \
        ./peftc predict --model "$TINY" --adapter "$FX/m_lora" --task seq-cls
    expect_fail "token-cls adapter, table eval" "cls.tsv: this adapter was trained for token classification (TOKEN_CLS)" -- \
        ./peftc eval --model "$TINY" --adapter "$FX/m_lora" --data "$W/cls.tsv"
    expect_fail "token-cls adapter without --data" "token-classification adapter: --data FILE" -- \
        ./peftc predict --model "$TINY" --adapter "$FX/m_lora"
    printf 'Zxq O\n\n' > "$W/newtag.conll"; printf 'John B-FOO\n\n' >> "$W/newtag.conll"
    expect_fail "eval tag outside the training tags" "has tag 'B-FOO', which the training data does not have" -- \
        ./peftc eval --model "$TINY" --adapter "$FX/m_lora" --data "$W/newtag.conll"
    cp -r "$FX/m_lora" "$W/fe"
    "$PY" -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['task_type']='CAUSAL_LM'; del c['peftc']['task']; json.dump(c, open(p,'w'))" "$W/fe/adapter_config.json"
    expect_fail "unsupported task_type" "task_type CAUSAL_LM" -- \
        ./peftc eval --model "$TINY" --adapter "$W/fe" --data "$FX/train.conll"
fi
finish
