#!/usr/bin/env python3
"""Writes a tiny random-weight BERT model directory and a small labelled data
set (for fast CLI tests): OUT/model/{config.json, model.safetensors, vocab.txt,
tokenizer_config.json}, OUT/train.tsv, OUT/dev.tsv, OUT/pairs.tsv."""
import json, os, random, sys
import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
os.makedirs(f"{out}/model", exist_ok=True)
words = ("good bad great awful fine poor nice terrible movie film plot actor story "
         "the a is was very not really quite and but").split()
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + words
C, L, H, F, V, P = 32, 2, 4, 64, len(vocab), 64
cfg = dict(model_type="bert", architectures=["BertModel"], vocab_size=V, hidden_size=C,
           num_hidden_layers=L, num_attention_heads=H, intermediate_size=F,
           max_position_embeddings=P, type_vocab_size=2, hidden_act="gelu",
           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12,
           pad_token_id=0, position_embedding_type="absolute")
rng = np.random.default_rng(0)
def w(*shape, s=0.2):
    return (rng.standard_normal(shape) * s).astype(np.float32)
t = {"embeddings.word_embeddings.weight": w(V, C), "embeddings.position_embeddings.weight": w(P, C),
     "embeddings.token_type_embeddings.weight": w(2, C),
     "embeddings.LayerNorm.weight": 1 + w(C, s=0.05), "embeddings.LayerNorm.bias": w(C, s=0.05),
     "pooler.dense.weight": w(C, C), "pooler.dense.bias": w(C, s=0.05)}
for l in range(L):
    p = f"encoder.layer.{l}."
    for n, (o, i) in {"attention.self.query": (C, C), "attention.self.key": (C, C), "attention.self.value": (C, C),
                      "attention.output.dense": (C, C), "intermediate.dense": (F, C), "output.dense": (C, F)}.items():
        t[p + n + ".weight"] = w(o, i)
        t[p + n + ".bias"] = w(o, s=0.05)
    for n in ("attention.output.LayerNorm", "output.LayerNorm"):
        t[p + n + ".weight"] = 1 + w(C, s=0.05)
        t[p + n + ".bias"] = w(C, s=0.05)
save_file(t, f"{out}/model/model.safetensors", metadata={"format": "pt"})
json.dump(cfg, open(f"{out}/model/config.json", "w"), indent=2)
open(f"{out}/model/vocab.txt", "w").write("\n".join(vocab) + "\n")
json.dump({"do_lower_case": True}, open(f"{out}/model/tokenizer_config.json", "w"))

r = random.Random(1)
pos, neg = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "terrible"]
def sentence():
    label = r.randrange(2)
    ws = [r.choice(["the", "a"]), r.choice(["movie", "film", "plot", "story", "actor"]),
          r.choice(["is", "was"]), r.choice(["very", "really", "quite", ""]), r.choice(pos if label else neg), "."]
    return " ".join(x for x in ws if x), label
for name, n in (("train", 48), ("dev", 16)):
    with open(f"{out}/{name}.tsv", "w") as f:
        f.write("sentence\tlabel\n")
        for _ in range(n):
            s, y = sentence()
            f.write(f"{s} \t{y}\n")
with open(f"{out}/pairs.tsv", "w") as f:
    f.write("index\tsentence1\tsentence2\tlabel\n")
    for i in range(24):
        (a, y), (b, _) = sentence(), sentence()
        f.write(f"{i}\t{a}\t{b}\t{'entailment' if y else 'not_entailment'}\n")
