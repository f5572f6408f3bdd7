#!/usr/bin/env bash
# check_embedding.sh: --task embedding (issue 12) against independent oracles
# (tests/ref_embedding.py):
#   1. the loss and every trainable gradient: tests/emb_grad.c (library API)
#      vs transformers' BertModel in float64 + sentence-transformers' own
#      Pooling(mean) and MultipleNegativesRankingLoss (scale 20, in-batch
#      negatives) on the tiny BERT (tests/make_tiny_bert.py, dropout 0), for
#      full fine-tuning, LoRA (PEFT's, FEATURE_EXTRACTION), prompt tuning
#      (virtual tokens before [CLS]) and a template prompt (virtual tokens
#      inside the text): virtual tokens are left out of the pooling; loss <=
#      1e-5 rel, embeddings <= 1e-5 abs, every gradient <= 1e-4 of its scale;
#   2. every method trains with --task embedding (tiny model, 2 steps), saves
#      a FEATURE_EXTRACTION adapter that reloads: `peftc eval` reproduces the
#      run's own evaluation, and its cosine Pearson / Spearman equal scipy's
#      on `peftc embed --adapter`'s embeddings;
#      `peftc merge` of an embedding LoRA is a plain BertModel (no head)
#      whose transformers embeddings equal `peftc embed --adapter`'s;
#   3. all-MiniLM-L6-v2, 20 steps on STS-B train pairs of score >= 4: the
#      same against scipy on 300 dev pairs;
#   4. bad input: one 'peftc:' line naming the file, non-zero exit.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/embedding
D=../shared/data
MINI=models/all-MiniLM-L6-v2
. tests/lib.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

rm -rf "$FX"
mkdir -p "$FX"
"$PY" tests/make_tiny_bert.py "$FX" > /dev/null
tally "$("$PY" tests/ref_embedding.py gen "$FX" 2>&1)"
TINY=$FX/model

# ---- 1: loss and gradients against sentence-transformers' formula in float64
if "$PY" -c "import sentence_transformers" 2>/dev/null; then
    if build_driver emb_grad; then
        for c in emb_full emb_lora emb_prompt emb_ptpl; do
            tally "$(timeout 120 build/tests/emb_grad "$FX/model0" "$FX/pairs.tsv" "$FX/init_$c" "$FX/c_$c.safetensors" 2>&1)"
            [ -f "$FX/c_$c.safetensors" ] && tally "$("$PY" tests/ref_embedding.py compare-grads $c "$FX" "$FX/c_$c.safetensors" 2>&1)"
        done
    fi
else
    bad "sentence-transformers is not installed (scripts/setup.sh installs it)"
fi

if [ ! -x ./peftc ]; then bad "./peftc missing: run make"; finish; fi

# ---- 2: every method trains an embedding adapter that reloads
tail -n +2 "$FX/pairs.tsv" | cut -f1 > "$FX/s1.txt"
tail -n +2 "$FX/pairs.tsv" | cut -f2 > "$FX/s2.txt"
for m in full lora bitfit ia3 adapter-houlsby adapter-pfeiffer parallel-adapter prompt ptuning prefix ptuning-v2 mam unipelt adalora; do
    out=$FX/m_$m
    if ! timeout 120 ./peftc train --model "$TINY" --task embedding --train "$FX/pairs.tsv" --eval "$FX/pairs.tsv" \
            --method $m --max-steps 2 --batch 4 --max-len 24 --out "$out" --threads 1 > "$out.log" 2>&1; then
        bad "embedding --method $m: train exited non-zero: $(tail -1 "$out.log")"; continue
    fi
    ./peftc eval --model "$TINY" --adapter "$out" --data "$FX/pairs.tsv" --threads 1 > "$out.eval" 2> "$out.err" &&
        ./peftc embed --model "$TINY" --adapter "$out" --threads 1 < "$FX/s1.txt" > "$out.e1" 2>> "$out.err" &&
        ./peftc embed --model "$TINY" --adapter "$out" --threads 1 < "$FX/s2.txt" > "$out.e2" 2>> "$out.err" ||
        { bad "embedding --method $m: eval / embed failed: $(tail -1 "$out.err")"; continue; }
    r=$("$PY" - "$out" <<'PYEOF'
import json, sys
out = sys.argv[1]
cfg = json.load(open(out + "/adapter_config.json"))
met = json.load(open(out + "/metrics.json"))
ev = json.load(open(out + ".eval"))
bad = []
if cfg.get("task_type") != "FEATURE_EXTRACTION" or cfg["peftc"].get("task") != "embedding": bad.append("task_type %s" % cfg.get("task_type"))
if met.get("task") != "embedding": bad.append("metrics task %s" % met.get("task"))
for k, e in (("eval_pearson", "cosine_pearson"), ("eval_spearman", "cosine_spearman")):
    if abs(met[k] - ev[e]) > 1e-5: bad.append("%s %.6f vs eval %.6f" % (k, met[k], ev[e]))
print(" ".join(bad) if bad else "same cosine spearman %.4f" % ev["cosine_spearman"])
PYEOF
)
    case "$r" in same*) ok "embedding --method $m: FEATURE_EXTRACTION adapter reloads, eval equals the run's own ($r)";;
                 *) bad "embedding --method $m: $r";; esac
done
for m in lora prompt ptuning; do
    [ -f "$FX/m_$m.e1" ] && tally "$("$PY" tests/ref_embedding.py corr "$FX/m_$m.eval" "$FX/m_$m.e1" "$FX/m_$m.e2" "$FX/pairs.tsv" 2>&1)"
done
[ -d "$FX/m_lora" ] && tally "$("$PY" tests/ref_embedding.py check-config "$FX/m_lora" 2>&1)"
# merge: an embedding LoRA folded into the weights is a plain BertModel
if [ -f "$FX/m_lora.e1" ] && ./peftc merge --model "$TINY" --adapter "$FX/m_lora" --out "$FX/merged" > /dev/null 2>&1; then
    tally "$("$PY" tests/ref_embedding.py merged "$FX/merged" "$FX/s1.txt" "$FX/m_lora.e1" 2>&1)"
else
    bad "peftc merge of the embedding LoRA failed"
fi
# no adapter and a no-op LoRA (B = 0 at init): embed --adapter equals plain embed
if timeout 60 ./peftc train --model "$TINY" --task embedding --train "$FX/pairs.tsv" --method lora --max-steps 1 --batch 4 \
        --lr 1e-12 --max-len 64 --out "$FX/noop" --threads 1 > "$FX/noop.log" 2>&1; then
    ./peftc embed --model "$TINY" --threads 1 < "$FX/s1.txt" > "$FX/plain.e1"
    ./peftc embed --model "$TINY" --adapter "$FX/noop" --threads 1 < "$FX/s1.txt" > "$FX/noop.e1"
    r=$("$PY" -c "import numpy as np, sys; a=np.loadtxt(sys.argv[1]); b=np.loadtxt(sys.argv[2]); print('%.2e' % np.abs(a-b).max())" "$FX/plain.e1" "$FX/noop.e1")
    "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-5 else 1)" "$r" &&
        ok "embed --adapter (a LoRA with lr 1e-12) equals embed without it: max abs diff $r" ||
        bad "embed --adapter differs from plain embed by $r"
else
    bad "no-op LoRA run failed: $(tail -1 "$FX/noop.log")"
fi

# sentence-transformers' anchor / positive fields (JSONL and TSV) are recognised: the same pairs, the same run
"$PY" - "$FX" <<'PYEOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1] + "/pairs.tsv")][1:]
with open(sys.argv[1] + "/pairs.jsonl", "w") as f:
    for a, b, s in rows:
        f.write(json.dumps({"anchor": a, "positive": b, "score": float(s)}) + "\n")
with open(sys.argv[1] + "/ap.tsv", "w") as f:
    f.write("id\tanchor\tpositive\n" + "".join(f"{i}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
PYEOF
for f in pairs.jsonl ap.tsv; do
    if timeout 60 ./peftc train --model "$TINY" --task embedding --train "$FX/$f" --method lora --max-steps 2 --batch 4             --max-len 24 --out "$FX/ap_$f" --threads 1 > "$FX/ap_$f.log" 2>&1 &&
       cmp -s "$FX/ap_$f/adapter_model.safetensors" "$FX/m_lora/adapter_model.safetensors"; then
        ok "$f: anchor / positive recognised; the adapter is byte-identical to the sentence1 / sentence2 TSV run's"
    else
        bad "$f: $(tail -1 "$FX/ap_$f.log"), or an adapter unlike the TSV run's"
    fi
done
# resume: 2 steps, stop, resume to 4 = 4 steps straight (bit-exact)
R=(./peftc train --model "$TINY" --task embedding --train "$FX/pairs.tsv" --method lora --max-steps 4 --batch 4 --max-len 24 --threads 1 --save-every 1)
if timeout 60 "${R[@]}" --out "$FX/straight" > "$FX/straight.log" 2>&1 &&
   timeout 60 "${R[@]}" --out "$FX/resumed" --stop-after 2 > "$FX/resumed.log" 2>&1 &&
   timeout 60 "${R[@]}" --out "$FX/resumed" --resume "$FX/resumed" >> "$FX/resumed.log" 2>&1 &&
   cmp -s "$FX/straight/adapter_model.safetensors" "$FX/resumed/adapter_model.safetensors"; then
    ok "embedding: 2 steps + --resume to 4 equals 4 steps straight, byte for byte (6 pairs at batch 4: two epochs, each with a short last batch)"
else
    bad "embedding resume: $(tail -1 "$FX/resumed.log")"
fi

# ---- 3: real model, real data
if [ -f "$MINI/model.safetensors" ] && [ -f "$D/glue-stsb/train.tsv" ]; then
    head -301 "$D/glue-stsb/dev.tsv" > "$FX/stsb300.tsv"
    if timeout 300 ./peftc train --model "$MINI" --task embedding --train "$D/glue-stsb/train.tsv" --min-score 4.0 --method lora \
            --max-steps 20 --batch 16 --out "$FX/stsb" --threads 1 > "$FX/stsb.log" 2>&1; then
        ./peftc eval --model "$MINI" --adapter "$FX/stsb" --data "$FX/stsb300.tsv" --threads 1 > "$FX/stsb.eval"
        tail -n +2 "$FX/stsb300.tsv" | cut -f8 | ./peftc embed --model "$MINI" --adapter "$FX/stsb" --threads 1 > "$FX/stsb.e1"
        tail -n +2 "$FX/stsb300.tsv" | cut -f9 | ./peftc embed --model "$MINI" --adapter "$FX/stsb" --threads 1 > "$FX/stsb.e2"
        tally "$("$PY" tests/ref_embedding.py corr "$FX/stsb.eval" "$FX/stsb.e1" "$FX/stsb.e2" "$FX/stsb300.tsv" 2>&1)"
        n=$(awk -F'\t' 'NR > 1 && $10 >= 4.0' "$D/glue-stsb/train.tsv" | wc -l)
        grep -q "embedding: $n pairs with a score >= --min-score" "$FX/stsb.log" &&
            ok "--min-score 4.0 keeps the $n STS-B train pairs awk counts" || bad "--min-score: $(grep -o 'embedding: [0-9]* pairs' "$FX/stsb.log") (awk: $n)"
    else
        bad "STS-B embedding run failed: $(tail -1 "$FX/stsb.log")"
    fi
else
    echo "# skipped: $MINI or $D/glue-stsb missing"
fi

# ---- 4: bad input
W=$FX/bad
mkdir -p "$W"
expect_fail() {   # NAME NEEDLE -- CMD...: one 'peftc: ' line containing NEEDLE, exit 1..127
    local name="$1" needle="$2"; shift 3
    "$@" < /dev/null > /dev/null 2> "$W/err"; local rc=$?
    local n; n=$(grep -c '^peftc: ' "$W/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$name: exit code $rc"; return; fi
    if [ "$n" -ne 1 ]; then bad "$name: $n error lines: $(head -3 "$W/err")"; return; fi
    grep '^peftc: ' "$W/err" | grep -qF -- "$needle" && ok "$name: $(grep '^peftc: ' "$W/err")" ||
        bad "$name: message lacks '$needle': $(grep '^peftc: ' "$W/err")"
}
TR=(./peftc train --model "$TINY" --task embedding --max-steps 1 --batch 2 --threads 1 --out "$W/run")
printf 'sentence\ngood film\nbad film\n' > "$W/one.tsv"
expect_fail "a pairs file with one column" "one.tsv: example 1 has one text; an embedding pair needs two" -- "${TR[@]}" --train "$W/one.tsv"
: > "$W/empty.tsv"
expect_fail "an empty pairs file" "empty.tsv: no examples (empty file?)" -- "${TR[@]}" --train "$W/empty.tsv"
printf 'sentence1\tsentence2\ngood film\tgreat movie\n' > "$W/single.tsv"
expect_fail "a single pair (no in-batch negative)" "single.tsv: --task embedding takes its negatives from the batch" -- "${TR[@]}" --train "$W/single.tsv"
printf 'sentence1\tsentence2\tscore\ngood film\tgreat movie\thigh\n' > "$W/score.tsv"
expect_fail "--min-score on a score that is not a number" "score.tsv: example 1: score 'high' (column score) is not a number" -- \
    "${TR[@]}" --train "$W/score.tsv" --min-score 4
expect_fail "--min-score keeps nothing" "none of the 6 examples has a score >= 5 (--min-score)" -- "${TR[@]}" --train "$FX/pairs.tsv" --min-score 5
expect_fail "--min-score without --task embedding" "--min-score selects embedding pairs: it needs --task embedding" -- \
    ./peftc train --model "$TINY" --task regression --train "$FX/pairs.tsv" --min-score 4 --threads 1 --out "$W/run"
# a regression adapter used with --task embedding: as the starting point, for embed, for eval
printf 'sentence1\tsentence2\tlabel\ngood film\tgreat movie\t4.5\nbad film\tawful plot\t1.0\n' > "$W/reg.tsv"
if timeout 60 ./peftc train --model "$TINY" --task regression --train "$W/reg.tsv" --max-steps 1 --batch 2 --threads 1 \
        --out "$W/reg" > "$W/reg.log" 2>&1; then
    expect_fail "regression adapter as --init-adapter of --task embedding" "reg: the adapter was trained for --task regression, not embedding" -- \
        "${TR[@]}" --train "$FX/pairs.tsv" --init-adapter "$W/reg"
    expect_fail "regression adapter for embed --adapter" "reg: the adapter was trained for --task regression, not embedding" -- \
        ./peftc embed --model "$TINY" --adapter "$W/reg"
    expect_fail "regression adapter, eval --task embedding" "reg: the adapter was trained for --task regression, not embedding" -- \
        ./peftc eval --model "$TINY" --adapter "$W/reg" --task embedding --data "$FX/pairs.tsv"
else
    bad "regression run failed: $(tail -1 "$W/reg.log")"
fi
if [ -d "$FX/m_lora" ]; then
    expect_fail "embedding adapter used for predict" "this adapter was trained for embedding (FEATURE_EXTRACTION), not sentence classification" -- \
        ./peftc predict --model "$TINY" --adapter "$FX/m_lora"
    expect_fail "embed --adapter with --pool cls" "embed --adapter: the adapter's own pooling (mean)" -- \
        ./peftc embed --model "$TINY" --adapter "$FX/m_lora" --pool cls
    printf 'sentence1\tsentence2\tscore\ngood film\tgreat movie\t4.5\n' > "$W/one_pair.tsv"
    printf 'sentence\tscore\ngood film\t4.5\n' > "$W/eval_one.tsv"
    expect_fail "embedding eval on single texts" "eval_one.tsv: example 1 has one text" -- \
        ./peftc eval --model "$TINY" --adapter "$FX/m_lora" --data "$W/eval_one.tsv"
    printf 'sentence1\tsentence2\tscore\ngood film\tgreat movie\tn/a\n' > "$W/eval_nan.tsv"
    expect_fail "embedding eval, a score that is not a number" "eval_nan.tsv: example 1: label 'n/a' (column score) is not a number" -- \
        ./peftc eval --model "$TINY" --adapter "$FX/m_lora" --data "$W/eval_nan.tsv"
fi
finish
