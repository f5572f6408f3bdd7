#!/usr/bin/env python3
"""Writes the data sets of tests/check_mpi.sh's task checks, in the words of
tests/make_tiny_bert.py's vocabulary (so the tiny model sees real tokens, not
[UNK]): OUT/{tok_train,tok_dev}.conll (token classification, IOB2 tags of
sentiment words and their intensifiers), OUT/{reg_train,reg_dev}.tsv
(regression: a noisy sentiment score), OUT/{ml_train,ml_dev}.tsv
(multi-label: the comma list of the kinds of words a sentence holds),
OUT/{sts_train,sts_dev}.tsv (scored sentence pairs, for embeddings) and
OUT/cls_dev.tsv (sentence classification). The held-out sets have 80 rows
(sts: 40 pairs, 80 texts) so that `peftc eval`'s batches of 32 are more than
one and ranks share them."""
import os, random, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
r = random.Random(7)
POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "terrible"]
THINGS = ["movie", "film", "plot", "story", "actor"]


def sentence():
    """(words, tags, score, kinds): a sentence of one or two clauses."""
    words, tags, score, kinds = [], [], 0.0, set()
    for c in range(r.choice([1, 1, 2])):
        if c:
            words.append(r.choice(["and", "but"])); tags.append("O")
        thing = r.choice(THINGS)
        words += [r.choice(["the", "a"]), thing, r.choice(["is", "was"])]
        tags += ["O", "B-OBJ", "O"]
        kinds.add("obj")
        neg = r.random() < 0.25
        if neg:
            words.append("not"); tags.append("O")
        intens = r.choice(["very", "really", "quite", "", ""])
        good = r.random() < 0.5
        adj = r.choice(POS if good else NEG)
        kind = "POS" if good != neg else "NEG"
        if intens:
            words += [intens, adj]; tags += ["B-" + kind, "I-" + kind]
        else:
            words.append(adj); tags.append("B-" + kind)
        kinds.add(kind.lower())
        if intens:
            kinds.add("intens")
        score += (1.0 if kind == "POS" else -1.0) * (1.5 if intens else 1.0)
    words.append("."); tags.append("O")
    return words, tags, score + r.gauss(0, 0.3), sorted(kinds)


def conll(path, n):
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for _ in range(n):
            w, t, _, _ = sentence()
            for a, b in zip(w, t):
                f.write(f"{a} NN O {b}\n")
            f.write("\n")


def table(path, n, kind):
    with open(path, "w") as f:
        f.write("sentence\tlabel\n")
        for _ in range(n):
            w, _, s, k = sentence()
            y = f"{s:.3f}" if kind == "reg" else ",".join(k) if kind == "ml" else str(int(s > 0))
            f.write(" ".join(w) + f"\t{y}\n")


def pairs(path, n):
    with open(path, "w") as f:
        f.write("sentence1\tsentence2\tscore\n")
        for _ in range(n):
            a, _, sa, _ = sentence()
            b, _, sb, _ = sentence()
            f.write(" ".join(a) + "\t" + " ".join(b) + f"\t{5.0 - min(5.0, abs(sa - sb)):.3f}\n")


conll(f"{out}/tok_train.conll", 48)
conll(f"{out}/tok_dev.conll", 80)
for k in ("reg", "ml"):
    table(f"{out}/{k}_train.tsv", 48, k)
    table(f"{out}/{k}_dev.tsv", 80, k)
table(f"{out}/cls_dev.tsv", 80, "cls")
pairs(f"{out}/sts_train.tsv", 48)
pairs(f"{out}/sts_dev.tsv", 40)
