#!/usr/bin/env bash
# check_metrics.sh: `peftc score` (src/train/metrics.c) against the reference
# packages on real texts with perturbed predictions (tests/ref_metrics.py):
#   - ROUGE-1/2/L F, every pair and the mean, against Google's rouge-score
#     (use_stemmer=True) on 265 XSum summaries (lead sentences of the
#     documents and perturbed summaries; empty, punctuation-only, U+0130 and
#     Kelvin-sign edge cases): |diff| <= 1e-6;
#   - corpus BLEU, its four precisions, brevity penalty and lengths against
#     sacreBLEU's corpus_bleu defaults on 260 Tatoeba en-ro pairs (perturbed
#     Romanian, untranslated English; entities, <skipped>, digits with dots,
#     commas and dashes, no-break spaces, trailing newlines): <= 1e-6;
#   - the Porter stemmer on the 24k distinct words of XSum's 1000 documents
#     plus the algorithm's textbook cases: identical to NLTK's PorterStemmer;
#   - GSM8K final-number exact match on 240 real answers with varied
#     predictions, against the rule restated with Python's re;
#   - bad input: one line naming the file (and line), non-zero exit.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
DATA=${DATA:-../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -x ./peftc ] || { bad "./peftc missing: run make"; finish; }
"$PY" -c 'import rouge_score, sacrebleu, nltk' 2>/dev/null || { bad "rouge-score / sacrebleu missing (scripts/setup.sh)"; finish; }
"$PY" tests/ref_metrics.py gen "$DATA" "$tmp" 2>"$tmp/e" || { bad "gen: $(tail -1 "$tmp/e")"; finish; }
cmpjson() { # name tol a.json b.json: every key of b present in a and within tol
    "$PY" - "$@" <<'PYEOF'
import json, sys
name, tol, a, b = sys.argv[1], float(sys.argv[2]), json.loads(open(sys.argv[3]).read()), json.loads(open(sys.argv[4]).read())
worst = 0.0
for k, v in b.items():
    x = a.get(k)
    vs, xs = (v, x) if isinstance(v, list) else ([v], [x])
    if x is None or len(vs) != len(xs):
        print(f"FAIL - {name}: {k} missing"); sys.exit()
    for p, q in zip(vs, xs):
        worst = max(worst, abs(p - q))
print(("ok   - " if worst <= tol else "FAIL - ") + f"{name}: max |peftc - reference| {worst:.2e} over {', '.join(b)}")
PYEOF
}
# ROUGE
./peftc score --metric rouge --pred "$tmp/xsum.pred.jsonl" --ref "$tmp/xsum.ref.jsonl" --ref-field summary --per-example "$tmp/per.jsonl" >"$tmp/c.json" 2>"$tmp/e" || bad "score rouge: $(cat "$tmp/e")"
"$PY" tests/ref_metrics.py rouge "$tmp/xsum.pred.jsonl" "$tmp/xsum.ref.jsonl" >"$tmp/r.jsonl" 2>"$tmp/e" || bad "rouge-score: $(tail -1 "$tmp/e")"
tail -1 "$tmp/r.jsonl" >"$tmp/r.json"
tally "$(cmpjson "ROUGE-1/2/L mean F on $(grep -c . "$tmp/xsum.ref.jsonl") XSum pairs vs rouge-score" 1e-6 "$tmp/c.json" "$tmp/r.json")"
tally "$("$PY" - "$tmp/per.jsonl" "$tmp/r.jsonl" <<'PYEOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])][:-1]
w = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("rouge1", "rouge2", "rougeL"))
print(("ok   - " if len(a) == len(b) and w <= 1e-6 else "FAIL - ") + f"ROUGE-1/2/L F of each of {len(a)} pairs vs rouge-score: max |diff| {w:.2e}")
PYEOF
)"
# BLEU
./peftc score --metric bleu --pred "$tmp/enro.pred.jsonl" --ref "$tmp/enro.ref.jsonl" --ref-field translation >"$tmp/c.json" 2>"$tmp/e" || bad "score bleu: $(cat "$tmp/e")"
"$PY" tests/ref_metrics.py bleu "$tmp/enro.pred.jsonl" "$tmp/enro.ref.jsonl" >"$tmp/r.json" 2>"$tmp/e" || bad "sacrebleu: $(tail -1 "$tmp/e")"
tally "$(cmpjson "corpus BLEU on 260 Tatoeba en-ro pairs vs sacreBLEU" 1e-6 "$tmp/c.json" "$tmp/r.json")"
# BLEU on XSum (long lead sentences against summaries: a low score, the smoothing-free path)
./peftc score --metric bleu --pred "$tmp/xsum.pred.jsonl" --ref "$tmp/xsum.ref.jsonl" --ref-field summary >"$tmp/c.json" 2>"$tmp/e" || bad "score bleu xsum: $(cat "$tmp/e")"
"$PY" tests/ref_metrics.py bleu "$tmp/xsum.pred.jsonl" "$tmp/xsum.ref.jsonl" >"$tmp/r.json" 2>"$tmp/e" || bad "sacrebleu: $(tail -1 "$tmp/e")"
tally "$(cmpjson "corpus BLEU on 265 XSum pairs vs sacreBLEU" 1e-6 "$tmp/c.json" "$tmp/r.json")"
# sentence-sized corpora: one pair with no 4-gram match (exp smoothing), and one with no match at all
printf '{"prediction": "the cat sat on a mat today"}\n' >"$tmp/s.pred.jsonl"
printf '{"reference": "the cat sat on the mat"}\n' >"$tmp/s.ref.jsonl"
./peftc score --metric bleu --pred "$tmp/s.pred.jsonl" --ref "$tmp/s.ref.jsonl" >"$tmp/c.json" 2>"$tmp/e" || bad "score bleu one: $(cat "$tmp/e")"
"$PY" tests/ref_metrics.py bleu "$tmp/s.pred.jsonl" "$tmp/s.ref.jsonl" >"$tmp/r.json"
tally "$(cmpjson "BLEU of one pair with zero 4-gram matches (exp smoothing) vs sacreBLEU" 1e-6 "$tmp/c.json" "$tmp/r.json")"
# stemmer
build_driver stem_driver || finish
build/tests/stem_driver <"$tmp/words.txt" >"$tmp/c.stem"
"$PY" tests/ref_metrics.py stem "$tmp/words.txt" >"$tmp/p.stem" 2>"$tmp/e" || bad "nltk: $(tail -1 "$tmp/e")"
nd=$(paste "$tmp/c.stem" "$tmp/p.stem" | awk -F'\t' '$1 != $2' | wc -l)
nw=$(grep -c . "$tmp/words.txt")
[ "$nd" -eq 0 ] && [ "$(grep -c . "$tmp/c.stem")" -eq "$nw" ] && ok "Porter stems of $nw words identical to NLTK's" ||
    bad "Porter stems: $nd of $nw differ from NLTK's, e.g. $(paste "$tmp/words.txt" "$tmp/c.stem" "$tmp/p.stem" | awk -F'\t' '$2 != $3' | head -3 | tr '\t\n' ' ')"
# GSM8K exact match
./peftc score --metric em-number --pred "$tmp/gsm.pred.jsonl" --ref "$tmp/gsm.ref.jsonl" --ref-field answer >"$tmp/c.json" 2>"$tmp/e" || bad "score em: $(cat "$tmp/e")"
"$PY" tests/ref_metrics.py em "$tmp/gsm.pred.jsonl" "$tmp/gsm.ref.jsonl" >"$tmp/r.json"
tally "$(cmpjson "GSM8K final-number exact match on 240 answers vs the rule in Python re" 1e-9 "$tmp/c.json" "$tmp/r.json")"
# all three at once, plain-text reference lines
"$PY" -c "
import json,sys
for l in open('$tmp/enro.ref.jsonl'): print(json.loads(l)['translation'].replace('\n',' '))" >"$tmp/enro.ref.txt"
./peftc score --metric bleu --pred "$tmp/enro.pred.jsonl" --ref "$tmp/enro.ref.txt" >"$tmp/c2.json" 2>"$tmp/e" || bad "score plain text refs: $(cat "$tmp/e")"
./peftc score --metric bleu --pred "$tmp/enro.pred.jsonl" --ref "$tmp/enro.ref.jsonl" --ref-field translation >"$tmp/c.json"
cmp -s "$tmp/c.json" "$tmp/c2.json" && ok "plain-text reference lines score as the JSONL field" || bad "plain-text refs differ: $(cat "$tmp/c2.json")"
# bad input
expect_fail() { # name pattern -- command...
    local name=$1 pat=$2; shift 3
    local msg
    if msg=$("$@" 2>&1 >/dev/null); then bad "$name: accepted"; return; fi
    [ "$(printf '%s\n' "$msg" | wc -l)" -eq 1 ] && printf '%s' "$msg" | grep -q -- "$pat" && ok "$name: $msg" || bad "$name: '$msg'"
}
printf '{"prediction": "a"}\n{"prediction": 3}\n' >"$tmp/bad1.jsonl"
printf '{"prediction": "a"}\nnot json\n' >"$tmp/bad2.jsonl"
head -3 "$tmp/enro.pred.jsonl" >"$tmp/short.jsonl"
expect_fail "a record without the field" 'bad1.jsonl:2: no string field "prediction"' -- ./peftc score --metric rouge --pred "$tmp/bad1.jsonl" --ref "$tmp/enro.ref.txt"
expect_fail "a line that is not JSON" 'bad2.jsonl:2: not a JSON object' -- ./peftc score --metric rouge --pred "$tmp/bad2.jsonl" --ref "$tmp/enro.ref.txt"
expect_fail "counts that disagree" '3 predictions but' -- ./peftc score --metric bleu --pred "$tmp/short.jsonl" --ref "$tmp/enro.ref.txt"
expect_fail "an unknown metric" "use em-number, rouge, bleu" -- ./peftc score --metric meteor --pred "$tmp/short.jsonl"
expect_fail "a missing file" "nope.jsonl: cannot open" -- ./peftc score --metric bleu --pred "$tmp/nope.jsonl" --ref "$tmp/enro.ref.txt"
finish
