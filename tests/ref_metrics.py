#!/usr/bin/env python3
"""Oracle for tests/check_metrics.sh: real texts with perturbed predictions,
scored by Google's rouge-score (use_stemmer=True), sacreBLEU (corpus_bleu,
its defaults) and NLTK's PorterStemmer (the one rouge-score calls).

  gen DATA OUT         writes OUT/{xsum,enro,gsm}.{pred,ref}.jsonl and OUT/words.txt
  rouge PRED REF       per-example ROUGE-1/2/L F as JSON lines, then the means
  bleu PRED REF        sacrebleu's corpus BLEU as JSON
  em PRED REF          the final-number rule, stated independently with re
  stem WORDS           one NLTK stem per line
"""
import json, os, random, re, sys


def jl(path):
    return [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]


def write(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def perturb(rng, text, pool):
    w = text.split()
    k = rng.randrange(7)
    if k == 0 and len(w) > 3:          # drop words
        w = [x for x in w if rng.random() > 0.25]
    elif k == 1 and len(w) > 3:        # swap two spans
        i, j = sorted(rng.sample(range(len(w)), 2))
        w[i], w[j] = w[j], w[i]
    elif k == 2:                       # words from elsewhere
        w = w[: len(w) // 2] + rng.sample(pool, min(len(pool), 6))
    elif k == 3:                       # case and punctuation
        w = [x.upper() if rng.random() < 0.2 else x for x in w]
        w = [x + rng.choice([",", ".", "!", "?", ";", ":", "", ""]) for x in w]
    elif k == 4:                       # numbers, dashes, entities, odd spacing
        w = w + [rng.choice(["3.5", "1,000", "5-6", "2016-2017", "&amp;", "&quot;x&quot;", "<skipped>", "a.b", ",.", "U.S."])]
        return ("\u00a0".join(w) if rng.random() < 0.5 else "  ".join(w)) + rng.choice(["", " ", "\n", "\t"])
    elif k == 5:                       # repeated n-grams
        w = w + w[: max(1, len(w) // 3)]
    return " ".join(w)


def gen(data, out):
    os.makedirs(out, exist_ok=True)
    rng = random.Random(18)
    xs = jl(os.path.join(data, "xsum-test1000", "test.jsonl"))[:260]
    pool = [x for r in xs[:50] for x in r["document"].split()]
    pred, ref = [], []
    for i, r in enumerate(xs):
        s = r["summary"]
        if i % 3 == 0:                 # the lead sentence, a real summariser's baseline
            p = re.split(r"(?<=[.!?])\s", r["document"].strip(), maxsplit=1)[0]
        else:
            p = perturb(rng, s, pool)
        pred.append({"index": i, "prediction": p})
        ref.append({"summary": s})
    # edge cases: empty prediction, only punctuation, Turkish dotted I, the Kelvin sign, one word
    extra = [("", "A summary."), ("!!! ...", "Some words here."), ("\u0130stanbul \u212aelvin caf\u00e9s", "istanbul kelvin cafes"),
             ("running", "runs"), ("generalizations hopefully", "generalization hopeful")]
    for p, s in extra:
        pred.append({"index": len(ref), "prediction": p})
        ref.append({"summary": s})
    write(os.path.join(out, "xsum.pred.jsonl"), pred)
    write(os.path.join(out, "xsum.ref.jsonl"), ref)
    d = os.path.join(data, "tatoeba-eng-ron")
    en = open(os.path.join(d, "tatoeba-test-v2021-08-07.eng"), encoding="utf-8").read().split("\n")
    ro = open(os.path.join(d, "tatoeba-test-v2021-08-07.ron"), encoding="utf-8").read().split("\n")
    idx = rng.sample(range(min(len(en), len(ro)) - 1), 260)
    rpool = [x for i in idx[:40] for x in ro[i].split()]
    pred, ref = [], []
    for i in idx:
        p = en[i] if rng.random() < 0.1 else (ro[i] if rng.random() < 0.15 else perturb(rng, ro[i], rpool))
        pred.append({"prediction": p})
        ref.append({"translation": ro[i]})
    write(os.path.join(out, "enro.pred.jsonl"), pred)
    write(os.path.join(out, "enro.ref.jsonl"), ref)
    gs = jl(os.path.join(data, "gsm8k", "test.jsonl"))[:240]
    pred, ref = [], []
    for i, r in enumerate(gs):
        ans = r["answer"].split("####")[-1].strip()
        k = i % 6
        if k == 0: p = r["answer"]                                   # the worked answer itself
        elif k == 1: p = "The answer is " + ans + "."               # last number right
        elif k == 2: p = "So " + ans.replace(",", "") + ".00 dollars, not 3"   # a later wrong number
        elif k == 3: p = "It is $" + ans + ".0 in total"            # trailing zeros
        elif k == 4: p = "I don't know"                             # no number
        else: p = "#### " + str(int(ans.replace(",", "")) + 1) + "\nthen 5" # the marker wins, wrong
        pred.append({"prediction": p})
        ref.append({"answer": r["answer"]})
    write(os.path.join(out, "gsm.pred.jsonl"), pred)
    write(os.path.join(out, "gsm.ref.jsonl"), ref)
    words = set()
    for r in jl(os.path.join(data, "xsum-test1000", "test.jsonl")):
        words.update(re.sub(r"[^a-z0-9]+", " ", r["document"].lower()).split())
    words.update(["sky", "skies", "dying", "lying", "ties", "news", "innings", "proceed", "exceeded", "caresses",
                  "ponies", "cats", "feed", "agreed", "plastered", "motoring", "sing", "conflated", "troubled",
                  "sized", "hopping", "tanned", "falling", "hissing", "fizzed", "failing", "filing", "happy",
                  "relational", "conditional", "rational", "valenci", "hesitanci", "digitizer", "conformabli",
                  "radicalli", "differentli", "vileli", "analogousli", "vietnamization", "predication",
                  "operator", "feudalism", "decisiveness", "hopefulness", "callousness", "formaliti",
                  "sensitiviti", "sensibiliti", "triplicate", "formative", "formalize", "electriciti",
                  "electrical", "hopeful", "goodness", "revival", "allowance", "inference", "airliner",
                  "gyroscopic", "adjustable", "defensible", "irritant", "replacement", "adjustment",
                  "dependent", "adoption", "homologou", "communism", "activate", "angulariti", "homologous",
                  "effective", "bowdlerize", "probate", "rate", "cease", "controll", "roll", "generously",
                  "yyyy", "sayying", "flyying", "eyes", "dryly", "archaeology", "theology", "fully", "ably"])
    open(os.path.join(out, "words.txt"), "w").write("\n".join(sorted(words)) + "\n")


def pairs(pred, ref):
    P = [r["prediction"] for r in jl(pred)]
    R = []
    for r in jl(ref):
        R.append(next(r[k] for k in ("reference", "summary", "translation", "answer", "response") if k in r))
    return P, R[: len(P)]


def main():
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], sys.argv[3])
    elif cmd == "rouge":
        from rouge_score import rouge_scorer
        sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        P, R = pairs(sys.argv[2], sys.argv[3])
        tot = [0.0, 0.0, 0.0]
        for i, (p, r) in enumerate(zip(P, R)):
            s = sc.score(r, p)    # score(target, prediction)
            v = [s["rouge1"].fmeasure, s["rouge2"].fmeasure, s["rougeL"].fmeasure]
            tot = [a + b for a, b in zip(tot, v)]
            print(json.dumps({"index": i, "rouge1": v[0], "rouge2": v[1], "rougeL": v[2]}))
        print(json.dumps({"pairs": len(P), "rouge1": tot[0] / len(P), "rouge2": tot[1] / len(P), "rougeL": tot[2] / len(P)}))
    elif cmd == "bleu":
        import sacrebleu
        P, R = pairs(sys.argv[2], sys.argv[3])
        b = sacrebleu.corpus_bleu(P, [R])
        print(json.dumps({"pairs": len(P), "bleu": b.score, "bleu_bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len,
                          "bleu_precisions": b.precisions}))
    elif cmd == "em":
        P, R = pairs(sys.argv[2], sys.argv[3])
        num = re.compile(r"-?\d(?:\d|,(?=\d))*(?:\.\d+)?")

        def final(t):
            if "####" in t:
                m = num.search(t.rsplit("####", 1)[1])
                return canon(m.group(0)) if m else None
            ms = num.findall(t)
            return canon(ms[-1]) if ms else None

        def canon(s):
            s = s.replace(",", "")
            if "." in s:
                s = s.rstrip("0").rstrip(".")
            neg = s.startswith("-")
            s = s.lstrip("-").lstrip("0") or "0"
            if s.startswith("."): s = "0" + s
            return "0" if s == "0" else ("-" if neg else "") + s

        hits = [final(p) is not None and final(p) == final(r) for p, r in zip(P, R)]
        print(json.dumps({"pairs": len(P), "em_number": sum(hits) / len(P),
                          "predictions_with_number": sum(final(p) is not None for p in P)}))
    elif cmd == "stem":
        from nltk.stem import porter
        st = porter.PorterStemmer()
        for w in open(sys.argv[2]).read().split():
            print(st.stem(w))


if __name__ == "__main__":
    main()
