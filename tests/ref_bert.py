#!/usr/bin/env python3
"""ref_bert.py: an independent PyTorch reference for the BERT encoder forward.

Written from the BERT architecture (Hugging Face BertModel, post-LayerNorm),
not from peftc's code, and loading the same model.safetensors:

  embeddings = LayerNorm(word[id] + position[t] + token_type[type])
  per layer:   q, k, v = linear(x)            (12 heads of 32 for MiniLM-L6)
               a = softmax(q k^T / sqrt(dh) + mask) v     (mask: 0 / -inf-ish on pads)
               x = LayerNorm(x + dense(a))
               x = LayerNorm(x + dense2(gelu_erf(dense1(x))))
  sentence embedding (sentence-transformers, all-MiniLM-L6-v2):
               mean of the last hidden states over real tokens, then L2-normalised.

Modes (run from the repo root):
  fixture OUTDIR [--n 64]   float64 forward of the first N SST-2 dev sentences;
                            writes ids.txt, hidden.f32, embed.txt, sentences.txt
  embed [--threads N] [--batch B]
                            stdin lines -> one line of %.7g floats each (like
                            `peftc embed --normalize`), float32 through torch's
                            fused ops, batches sorted by length; the model
                            part's sentences/s goes to stderr
  selfcheck [--n 16]        checks the reference against itself: float32 vs
                            float64, fused vs explicit ops, padded batch vs one
                            sentence at a time, the hand-written layer vs
                            torch.nn.TransformerEncoderLayer, and "hello world"
                            against fastembed's published all-MiniLM-L6-v2 vector
  dump OUTDIR TEXT          float64 intermediates of one sentence (embeddings
                            and each layer's output, T x H float32 each), to
                            find where another implementation diverges
"""
import argparse
import math
import os
import sys
import time

# Debian's torch runs its OpenMP workers beside OpenBLAS's own pthread pool;
# with the default active waiting the idle OpenMP workers spin on the cores
# OpenBLAS needs (2 threads: 5-10x slower). libgomp reads this when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

MODEL_DIR = "models/all-MiniLM-L6-v2"
SST2_DEV = "../shared/data/glue-sst2/dev.tsv"
MAX_LEN = 256  # sentence_bert_config.json max_seq_length


# ------------------------------------------------------------------ model
class RefBert:
    def __init__(self, model_dir=MODEL_DIR, dtype=torch.float64, fast=False):
        import json
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["model_type"] == "bert" and cfg["hidden_act"] == "gelu"
        assert cfg.get("position_embedding_type", "absolute") == "absolute"
        self.H = cfg["hidden_size"]
        self.L = cfg["num_hidden_layers"]
        self.nh = cfg["num_attention_heads"]
        self.dh = self.H // self.nh
        self.eps = cfg["layer_norm_eps"]
        self.dtype = dtype
        # fast: the same maths through torch's fused kernels (F.linear,
        # F.layer_norm, F.gelu); used by `embed` so that the benchmark times
        # torch at its best. The fixture uses the explicit formulas below.
        self.fast = fast
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        # Some checkpoints prefix every name with "bert."; this one does not.
        self.w = {}
        for k, v in raw.items():
            k = k[5:] if k.startswith("bert.") else k
            if v.dtype.kind == "f":
                self.w[k] = torch.from_numpy(v.astype(np.float32)).to(dtype)

    def p(self, name):
        return self.w[name]

    def linear(self, x, name):
        if self.fast:
            return F.linear(x, self.p(name + ".weight"), self.p(name + ".bias"))
        return x @ self.p(name + ".weight").T + self.p(name + ".bias")

    def layer_norm(self, x, name):
        if self.fast:
            return F.layer_norm(x, x.shape[-1:], self.p(name + ".weight"), self.p(name + ".bias"), self.eps)
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as nn.LayerNorm
        return (x - mu) / torch.sqrt(var + self.eps) * self.p(name + ".weight") + self.p(name + ".bias")

    def gelu(self, x):  # exact (erf) GELU, hidden_act "gelu"
        if self.fast:
            return F.gelu(x)
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def embed(self, ids, type_ids):
        B, T = ids.shape
        pos = torch.arange(T)
        x = (self.p("embeddings.word_embeddings.weight")[ids]
             + self.p("embeddings.position_embeddings.weight")[pos][None, :, :]
             + self.p("embeddings.token_type_embeddings.weight")[type_ids])
        return self.layer_norm(x, "embeddings.LayerNorm")

    def layer(self, x, add_mask, i):
        B, T, H = x.shape
        pre = f"encoder.layer.{i}."

        def heads(t):  # B,T,H -> B,nh,T,dh
            return t.view(B, T, self.nh, self.dh).transpose(1, 2)
        q = heads(self.linear(x, pre + "attention.self.query"))
        k = heads(self.linear(x, pre + "attention.self.key"))
        v = heads(self.linear(x, pre + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + add_mask  # B,nh,T,T
        probs = torch.softmax(scores, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(B, T, H)
        x = self.layer_norm(x + self.linear(ctx, pre + "attention.output.dense"),
                            pre + "attention.output.LayerNorm")
        h = self.gelu(self.linear(x, pre + "intermediate.dense"))
        x = self.layer_norm(x + self.linear(h, pre + "output.dense"), pre + "output.LayerNorm")
        return x

    @torch.inference_mode()
    def forward(self, ids, mask, type_ids=None, keep=False):
        """ids, mask, type_ids: B x T int tensors (mask 1 = real token).
        Returns the last hidden states (B x T x H), or every stage if keep."""
        if type_ids is None:
            type_ids = torch.zeros_like(ids)
        # HF's extended attention mask: (1 - mask) * finfo.min added to the scores
        add_mask = (1.0 - mask[:, None, None, :].to(self.dtype)) * torch.finfo(self.dtype).min
        x = self.embed(ids, type_ids)
        stages = [x]
        for i in range(self.L):
            x = self.layer(x, add_mask, i)
            stages.append(x)
        return stages if keep else x


def mean_pool_normalize(hidden, mask):
    """sentence-transformers Pooling(mean) + Normalize: sum over real tokens /
    count (clamped at 1e-9), then x / max(||x||, 1e-12)."""
    m = mask[:, :, None].to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


# -------------------------------------------------------------- tokenizer
def load_tokenizer(model_dir=MODEL_DIR):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()  # tokenizer.json ships with fixed padding to 128
    tok.enable_truncation(max_length=MAX_LEN)
    return tok


def pad_batch(seqs):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    return ids, mask


def read_sst2(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = header.index("sentence")
        for line in f:
            if len(out) >= n:
                break
            out.append(line.rstrip("\n").split("\t")[col].strip())
    return out


# ------------------------------------------------------------------ modes
def cmd_fixture(a):
    sents = read_sst2(a.data, a.n)
    tok = load_tokenizer(a.model)
    seqs = [e.ids for e in tok.encode_batch(sents)]
    model = RefBert(a.model, torch.float64)
    ids, mask = pad_batch(seqs)
    hidden = model.forward(ids, mask)
    emb = mean_pool_normalize(hidden, mask)
    os.makedirs(a.outdir, exist_ok=True)
    with open(os.path.join(a.outdir, "sentences.txt"), "w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in sents)
    with open(os.path.join(a.outdir, "ids.txt"), "w") as f:
        f.writelines(" ".join(map(str, s)) + "\n" for s in seqs)
    with open(os.path.join(a.outdir, "hidden.f32"), "wb") as f:
        for b, s in enumerate(seqs):
            f.write(hidden[b, :len(s)].numpy().astype("<f4").tobytes())
    with open(os.path.join(a.outdir, "embed.txt"), "w") as f:
        for row in emb.numpy():
            f.write(" ".join("%.8g" % v for v in row) + "\n")
    print(f"fixture: {len(sents)} sentences, {sum(map(len, seqs))} tokens "
          f"(max {max(map(len, seqs))}) -> {a.outdir}", file=sys.stderr)


def cmd_embed(a):
    torch.set_num_threads(a.threads)
    texts = [line.rstrip("\n") for line in sys.stdin]
    tok = load_tokenizer(a.model)
    model = RefBert(a.model, torch.float32, fast=True)
    t0 = time.perf_counter()
    seqs = [e.ids for e in tok.encode_batch(texts)]
    t1 = time.perf_counter()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [None] * len(seqs)
    for s in range(0, len(order), a.batch):
        idx = order[s:s + a.batch]
        ids, mask = pad_batch([seqs[i] for i in idx])
        emb = mean_pool_normalize(model.forward(ids, mask), mask).numpy()
        for j, i in enumerate(idx):
            out[i] = emb[j]
    t2 = time.perf_counter()
    w = sys.stdout.write
    for row in out:
        w(" ".join("%.7g" % v for v in row) + "\n")
    n = len(texts)
    print(f"ref_bert embed: {n} sentences, tokenize {t1 - t0:.3f}s, model {t2 - t1:.3f}s, "
          f"{n / max(t2 - t1, 1e-9):.1f} sentences/s (threads {a.threads}, batch {a.batch})",
          file=sys.stderr)


def cmd_selfcheck(a):
    """Sanity checks of the oracle itself; prints ok/FAIL lines."""
    fails = 0

    def check(cond, msg):
        nonlocal fails
        print(("ok   - " if cond else "FAIL - ") + msg)
        fails += not cond
    sents = read_sst2(a.data, a.n)
    tok = load_tokenizer(a.model)
    seqs = [e.ids for e in tok.encode_batch(sents)]
    ids, mask = pad_batch(seqs)
    m64 = RefBert(a.model, torch.float64)
    m32 = RefBert(a.model, torch.float32)
    h64 = m64.forward(ids, mask)
    h32 = m32.forward(ids, mask)
    d = max((h64[b, :len(s)] - h32[b, :len(s)].double()).abs().max().item() for b, s in enumerate(seqs))
    check(d < 1e-4, f"float32 vs float64 last hidden: max abs diff {d:.3g}")
    h64f = RefBert(a.model, torch.float64, fast=True).forward(ids, mask)
    d = (h64f - h64)[mask.bool()].abs().max().item()
    check(d < 1e-10, f"fused torch ops (embed mode) vs explicit formulas (float64): max abs diff {d:.3g}")
    # one at a time (no padding at all) vs padded batch
    d = 0.0
    for b, s in enumerate(seqs):
        i1, m1 = pad_batch([s])
        d = max(d, (m64.forward(i1, m1)[0] - h64[b, :len(s)]).abs().max().item())
    check(d < 1e-10, f"padded batch vs single sentences (float64): max abs diff {d:.3g}")
    # an independent formulation of the layer: torch.nn.TransformerEncoderLayer
    H = m64.H
    d = 0.0
    x = m64.embed(ids, torch.zeros_like(ids))
    y = x
    for i in range(m64.L):
        pre = f"encoder.layer.{i}."
        P = lambda n: m64.p(pre + n)  # noqa: E731
        layer = torch.nn.TransformerEncoderLayer(H, m64.nh, P("intermediate.dense.weight").shape[0],
                                                 dropout=0.0, activation="gelu",
                                                 layer_norm_eps=m64.eps, batch_first=True,
                                                 norm_first=False, dtype=torch.float64).eval()
        with torch.no_grad():
            sa = layer.self_attn
            sa.in_proj_weight.copy_(torch.cat([P("attention.self.query.weight"),
                                               P("attention.self.key.weight"),
                                               P("attention.self.value.weight")]))
            sa.in_proj_bias.copy_(torch.cat([P("attention.self.query.bias"),
                                             P("attention.self.key.bias"),
                                             P("attention.self.value.bias")]))
            sa.out_proj.weight.copy_(P("attention.output.dense.weight"))
            sa.out_proj.bias.copy_(P("attention.output.dense.bias"))
            layer.norm1.weight.copy_(P("attention.output.LayerNorm.weight"))
            layer.norm1.bias.copy_(P("attention.output.LayerNorm.bias"))
            layer.linear1.weight.copy_(P("intermediate.dense.weight"))
            layer.linear1.bias.copy_(P("intermediate.dense.bias"))
            layer.linear2.weight.copy_(P("output.dense.weight"))
            layer.linear2.bias.copy_(P("output.dense.bias"))
            layer.norm2.weight.copy_(P("output.LayerNorm.weight"))
            layer.norm2.bias.copy_(P("output.LayerNorm.bias"))
            # train mode skips the fused fast path, which needs nested tensors
            y = layer.train()(y, src_key_padding_mask=(mask == 0))
    real = mask.bool()
    d = (y[real] - h64[real]).abs().max().item()
    check(d < 1e-9, f"hand-written layers vs nn.TransformerEncoderLayer (float64): max abs diff {d:.3g}")
    e = mean_pool_normalize(h64, mask)
    n = e.norm(dim=1)
    check(bool(((n - 1).abs() < 1e-12).all()), "sentence embeddings have unit norm")
    # mean pooling is over real tokens only: equal to the unpadded single-sentence mean
    i1, m1 = pad_batch([seqs[0]])
    e1 = mean_pool_normalize(m64.forward(i1, m1), m1)
    check((e1[0] - e[0]).abs().max().item() < 1e-10, "pooling ignores padding positions")
    # fastembed's canonical values (tests/test_text_onnx_embeddings.py), which
    # come from sentence-transformers' encode(): first 5 dims of "hello world"
    canon = torch.tensor([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362], dtype=torch.float64)
    i1, m1 = pad_batch([tok.encode("hello world").ids])
    e1 = mean_pool_normalize(m64.forward(i1, m1), m1)[0, :5]
    d = (e1 - canon).abs().max().item()
    check(d < 1e-5, f"'hello world' matches sentence-transformers' published embedding: "
          f"max abs diff {d:.3g} over 5 dims")
    print(f"selfcheck: {fails} failed")
    return 1 if fails else 0


def cmd_dump(a):
    tok = load_tokenizer(a.model)
    s = tok.encode(a.text).ids
    model = RefBert(a.model, torch.float64)
    ids, mask = pad_batch([s])
    stages = model.forward(ids, mask, keep=True)
    os.makedirs(a.outdir, exist_ok=True)
    with open(os.path.join(a.outdir, "ids.txt"), "w") as f:
        f.write(" ".join(map(str, s)) + "\n")
    for i, x in enumerate(stages):
        name = "embeddings" if i == 0 else f"layer{i - 1}"
        x[0].numpy().astype("<f4").tofile(os.path.join(a.outdir, name + ".f32"))
    print(f"dump: {len(s)} tokens, {len(stages)} stages (T x {model.H} float32) -> {a.outdir}",
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL_DIR)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("outdir")
    f.add_argument("--n", type=int, default=64)
    f.add_argument("--data", default=SST2_DEV)
    e = sub.add_parser("embed")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--batch", type=int, default=16)
    s = sub.add_parser("selfcheck")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--data", default=SST2_DEV)
    d = sub.add_parser("dump")
    d.add_argument("outdir")
    d.add_argument("text")
    a = ap.parse_args()
    return {"fixture": cmd_fixture, "embed": cmd_embed,
            "selfcheck": cmd_selfcheck, "dump": cmd_dump}[a.mode](a) or 0


if __name__ == "__main__":
    sys.exit(main())
