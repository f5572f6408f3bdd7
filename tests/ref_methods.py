#!/usr/bin/env python3
"""ref_methods.py: an independent PyTorch oracle for every peftc method preset.

tests/ref_train.py checks full, lora and bitfit; this file checks the rest
(ia3, the adapters, prefix tuning, P-tuning v2, prompt tuning, P-tuning with
MLP and LSTM encoders, MAM, UniPELT, custom delta combinations): the loss and
the gradient of every trainable tensor at random non-zero TRAINING parameters
(P-tuning's encoder and the prefix MLP, not the folded vectors peftc saves),
in float64 autograd, against tests/methods_grad.c (peftc's internal API).

Each method is written here from its definition (README, `peftc methods`,
src/peft/*.h), not from peftc's code:

  BERT     post-LN, exact erf GELU, additive padding mask on the keys,
           logits = classifier(tanh(pooler(h[:, 0]))) (row 0 of the sequence,
           which is a virtual token under prompt tuning, as in PEFT), mean CE
  sites    (x = the site's input, h = its output)
           attn.q/k/v   x = layer input, h = the projection's output
           attn.heads   x = layer input, h = the heads' context (B,T,C), before attn.o
           attn.o       x = the context, h = the attention output projection
           attn.out     x = layer input, h = that projection's output (dropout 0)
           ffn.in       x = ln1 (the FFN input), h = the intermediate projection (pre-GELU)
           ffn.act      x = h = the GELU output; only scale (IA3) deltas go there
           ffn.down     x = the (possibly scaled) GELU output, h = the output dense
           ffn.out      x = ln1, h = the output dense's output (dropout 0)
  delta    the deltas of a site in declaration order; kind=scale: h *= l (per
           channel); bottleneck: src = x (parallel) or the current h
           (sequential); u = up(f(down(src))) (+ biases); h += u (add), s*u
           (scale, fixed or a learned scalar), sigmoid(x w_g + b_g) * s * u
           (gate, one value per token, x the site input). heads=H: down maps
           to H*r units, head g's r units (columns g*r..) go through its own
           up block (rows g*hd.., hd = out/H) to output channels g*hd..
  prefix   per layer l: keys [g_k P_k ; K], values [g_v P_v ; V], P_k the
           columns [2lC, (2l+1)C) of the (n, 2LC) prefix table, P_v the next C
           (PEFT's past_key_values layout); prefix keys are never masked;
           --prefix-projection: table = Linear(h, 2LC)(tanh(Linear(C, h)(E)))
           UniPELT gate: g = mean over the sequence's real tokens of
           sigmoid(x w + b), x the layer input, w/b row 2l (keys), 2l+1 (values)
  prompts  virtual token k has id -(k+1); its input vector is its prompt
           vector + the position embedding of its place + its token type's,
           then the embeddings LayerNorm; prompt tuning: n before [CLS];
           P-tuning: [CLS] then the template ({text}: the sentence; {pair}:
           [SEP] then the second sentence, type 1 from there on; P: the next
           virtual token) then [SEP] (a pair without {pair}: then b [SEP],
           type 1); encoders: PEFT's MLP (Linear C->h, ReLU, Linear h->h, ReLU,
           Linear h->C) and LSTM (torch.nn.LSTM(C, h, 2 layers, bidirectional)
           then Linear 2h->2h, ReLU, Linear 2h->C) over the n prompt rows
  presets  (on this model: C 32, 4 heads, d/16 = 2) as CASES below spells out

Modes (run from the repo root):
  gen OUTDIR            writes the tiny model (ref_train's generator), the
                        single-sentence and sentence-pair data, per case the
                        init parameters (init_CASE.safetensors) and the float64
                        reference (ref_CASE.safetensors: loss, logits, ids,
                        token types, "grad/NAME"); checks itself (autograd vs
                        central differences)
  compare OUTDIR DRIVER runs DRIVER (build of tests/methods_grad.c) per case:
                        `grad` vs the reference, and `fresh` (start as the base)
                        for the delta methods
Output: "ok   - ..." / "FAIL - ..." / "# ..." lines, then "## <passed> <failed>".
"""
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from tokenizers import BertWordPieceTokenizer  # noqa: E402

import ref_train as rt  # noqa: E402
from ref_train import BERT, C, FF, HEAD, L, LN_EPS, NH, Tally  # noqa: E402

MAX_LEN = 48            # methods_grad's default --max-len
TOL_LOSS = 1e-5         # relative
TOL_LOGITS = 1e-5       # max abs
TOL_GRAD = 1e-4         # per tensor: max |c - ref| / max(max |ref|, GRAD_FLOOR * largest gradient)
GRAD_FLOOR = 1e-3
R_AD = max(1, C // 16)  # the adapters' default bottleneck

PAIRS = [(rt.SENTENCES[i][0], rt.SENTENCES[(i + 3) % len(rt.SENTENCES)][0].split(",")[0], rt.SENTENCES[i][1])
         for i in range(len(rt.SENTENCES))]

# the widths (x, h) at each site
SITE_IO = {"attn.q": (C, C), "attn.k": (C, C), "attn.v": (C, C), "attn.o": (C, C), "ffn.in": (C, FF),
           "ffn.down": (FF, C), "attn.out": (C, C), "ffn.out": (C, C), "attn.heads": (C, C), "ffn.act": (FF, FF)}
# PEFT's (IA)^3 module names for scale vectors
IA3_MODULE = {"attn.q": "attention.self.query", "attn.k": "attention.self.key", "attn.v": "attention.self.value",
              "attn.heads": "attention.heads", "ffn.act": "output.dense"}


def gelu(z):
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


ACTS = {"identity": lambda z: z, "relu": torch.relu, "gelu": gelu, "silu": lambda z: z * torch.sigmoid(z),
        "tanh": torch.tanh}


class D:
    """One delta module as a method defines it."""

    def __init__(self, site, kind="bottleneck", insert="parallel", r=0, act="identity", compose="add", s=1.0,
                 bias=False, heads=0):
        self.site, self.kind, self.insert, self.r, self.act = site, kind, insert, r, act
        self.compose, self.s, self.bias, self.heads = compose, s, bias, heads


def adapter(site, insert, act, r, compose="add", s=1.0):
    return D(site, insert=insert, r=r, act=act, compose=compose, s=s, bias=True)


class Case:
    def __init__(self, cid, method, opts=(), deltas=(), train_norms=False, prompt=None, prefix=None, data="single",
                 fresh=False, grad=True):
        self.id, self.method, self.opts = cid, method, list(opts)
        self.deltas, self.train_norms = list(deltas), train_norms
        self.prompt = prompt    # dict(n, before_cls, items, encoder, hidden)
        self.prefix = prefix    # dict(n, project, hidden, gate)
        self.data, self.fresh, self.grad = data, fresh, grad


def ptpl(text, encoder, hidden):
    items = text.split()
    return dict(n=items.count("P"), before_cls=False, items=items, encoder=encoder, hidden=hidden)


CUSTOM1 = ["site=attn.v,insert=parallel,r=3,act=identity,compose=gate",
           "site=ffn.out,insert=sequential,r=2,act=gelu,compose=scale:2"]
CUSTOM2 = ["site=attn.q,kind=scale",
           "site=attn.k,insert=sequential,r=2,act=tanh,compose=learned:0.7",
           "site=attn.heads,kind=scale",
           "site=attn.heads,insert=parallel,r=2,act=tanh,heads=2,compose=gate",
           "site=attn.o,insert=parallel,r=3,act=silu,compose=gate:0.5,bias=1",
           "site=attn.out,insert=sequential,r=2,act=relu,compose=gate",
           "site=ffn.in,insert=parallel,r=4,act=relu,compose=add,bias=0",
           "site=ffn.act,kind=scale",
           "site=ffn.down,insert=parallel,r=2,act=identity,compose=scale:3",
           "site=ffn.down,insert=sequential,r=2,act=gelu,compose=add"]
ALL_LINEAR = "query,key,value,attention.output.dense,intermediate.dense,output.dense"


def dflag(specs):
    out = []
    for s in specs:
        out += ["--delta", s]
    return out


CASES = [
    Case("ia3", "ia3", deltas=[D("attn.k", "scale"), D("attn.v", "scale"), D("ffn.act", "scale")], fresh=True),
    Case("adapter-houlsby", "adapter-houlsby", train_norms=True, fresh=True,
         deltas=[adapter("attn.out", "sequential", "silu", R_AD), adapter("ffn.out", "sequential", "silu", R_AD)]),
    Case("adapter-pfeiffer", "adapter-pfeiffer", deltas=[adapter("ffn.out", "sequential", "relu", R_AD)], fresh=True),
    Case("parallel-adapter", "parallel-adapter", deltas=[adapter("ffn.out", "parallel", "relu", R_AD)], fresh=True),
    Case("parallel-adapter-attn", "parallel-adapter", ["--site", "attn", "--r", "3"],
         deltas=[adapter("attn.out", "parallel", "relu", 3)], fresh=True),
    Case("scaled-parallel-adapter", "scaled-parallel-adapter",
         deltas=[adapter("ffn.out", "parallel", "relu", R_AD, "scale", 4.0)], fresh=True),
    Case("scaled-parallel-adapter-learned", "scaled-parallel-adapter", ["--learned-scale", "--scale", "2.5"],
         deltas=[adapter("ffn.out", "parallel", "relu", R_AD, "learned")], fresh=True),
    Case("mh-parallel-adapter", "mh-parallel-adapter", ["--r", "2"],
         deltas=[D("attn.heads", r=2, act="relu", bias=True, heads=NH)], fresh=True),
    Case("prefix", "prefix", ["--prefix-len", "5", "--no-prefix-projection"], prefix=dict(n=5, project=False, gate=False)),
    Case("prefix-projection", "prefix", ["--prefix-len", "4", "--prefix-projection", "--encoder-hidden", "24"],
         prefix=dict(n=4, project=True, hidden=24, gate=False)),
    Case("ptuning-v2", "ptuning-v2", prefix=dict(n=20, project=False, gate=False)),
    Case("prompt", "prompt", ["--num-virtual", "5"],
         prompt=dict(n=5, before_cls=True, encoder="none")),
    Case("ptuning-mlp", "ptuning", ["--template", "P {text} P P"], prompt=ptpl("P {text} P P", "mlp", C)),
    Case("ptuning-lstm", "ptuning", ["--template", "P {text} P P", "--encoder", "lstm", "--encoder-hidden", "12"],
         prompt=ptpl("P {text} P P", "lstm", 12)),
    Case("ptuning-mlp-pair", "ptuning", ["--template", "P P {text} P {pair} P", "--encoder-hidden", "20"],
         prompt=ptpl("P P {text} P {pair} P", "mlp", 20), data="pair"),
    Case("ptuning-lstm-pair-nopair", "ptuning", ["--template", "P {text} P", "--encoder", "lstm",
                                                 "--encoder-hidden", "8"],
         prompt=ptpl("P {text} P", "lstm", 8), data="pair"),
    Case("mam", "mam", ["--prefix-len", "6"], prefix=dict(n=6, project=False, gate=False),
         deltas=[adapter("ffn.out", "parallel", "relu", min(512, C), "scale", 4.0)]),
    Case("unipelt", "unipelt", prefix=dict(n=10, project=False, gate=True),
         deltas=[D("attn.q", r=8, compose="gate", s=16 / 8), D("attn.v", r=8, compose="gate", s=16 / 8),
                 adapter("ffn.out", "sequential", "relu", R_AD, "gate", 1.0)]),
    Case("custom-gate-v+gelu-ffn", "custom", dflag(CUSTOM1), fresh=True,
         deltas=[D("attn.v", r=3, compose="gate"), D("ffn.out", "bottleneck", "sequential", 2, "gelu", "scale", 2.0, True)]),
    Case("custom-every-site", "custom", dflag(CUSTOM2), fresh=True,
         deltas=[D("attn.q", "scale"),
                 D("attn.k", insert="sequential", r=2, act="tanh", compose="learned", bias=True),
                 D("attn.heads", "scale"),
                 D("attn.heads", r=2, act="tanh", compose="gate", bias=True, heads=2),
                 D("attn.o", r=3, act="silu", compose="gate", s=0.5, bias=True),
                 D("attn.out", insert="sequential", r=2, act="relu", compose="gate", bias=True),
                 D("ffn.in", r=4, act="relu"),
                 D("ffn.act", "scale"),
                 D("ffn.down", r=2, compose="scale", s=3.0),
                 D("ffn.down", insert="sequential", r=2, act="gelu", bias=True)]),
    # start-as-the-base only (lora's gradients: tests/check_train_ref.sh)
    Case("lora-all-targets", "lora", ["--r", "4", "--target-modules", ALL_LINEAR], fresh=True, grad=False),
]


# ------------------------------------------------------------------ parameters
def delta_params(case):
    """name -> (delta, layer, role, shape) for every delta of every layer."""
    out = {}
    for l in range(L):
        count = {}
        for d in case.deltas:
            k = count.get(d.site, 0)
            count[d.site] = k + 1
            xin, hout = SITE_IO[d.site]
            if d.kind == "scale":
                shape = (1, hout) if d.site == "ffn.act" else (hout, 1)
                out[f"{BERT}encoder.layer.{l}.{IA3_MODULE[d.site]}.ia3_l"] = (d, l, "vec", shape)
                continue
            pre = f"{BERT}encoder.layer.{l}.delta.{d.site}.{k}"
            src_w = xin if d.insert == "parallel" else hout
            r_all = d.r * d.heads if d.heads else d.r
            out[pre + ".down"] = (d, l, "down", (r_all, src_w))
            out[pre + ".up"] = (d, l, "up", (hout, d.r))
            if d.bias:
                out[pre + ".down_bias"] = (d, l, "down_bias", (r_all,))
                out[pre + ".up_bias"] = (d, l, "up_bias", (hout,))
            if d.compose == "gate":
                out[pre + ".gate"] = (d, l, "gate", (1, xin))
                out[pre + ".gate_bias"] = (d, l, "gate_bias", (1,))
            if d.compose == "learned":
                out[pre + ".scale"] = (d, l, "scale", (1,))
    return out


def param_shapes(case):
    """Every trainable tensor of the case (peftc's names) and its shape."""
    sh = {n: v[3] for n, v in delta_params(case).items()}
    if case.train_norms:
        for l in range(L):
            for m in ("attention.output.LayerNorm", "output.LayerNorm"):
                sh[f"{BERT}encoder.layer.{l}.{m}.weight"] = (C,)
                sh[f"{BERT}encoder.layer.{l}.{m}.bias"] = (C,)
    pr = case.prompt
    if pr:
        n, h = pr["n"], pr.get("hidden", C)
        if pr["encoder"] == "none":
            sh["prompt_embeddings"] = (n, C)
        else:
            sh["prompt_encoder.embedding.weight"] = (n, C)
        if pr["encoder"] == "mlp":
            for i, (o, ii) in zip((0, 2, 4), ((h, C), (h, h), (C, h))):
                sh[f"prompt_encoder.mlp_head.{i}.weight"] = (o, ii)
                sh[f"prompt_encoder.mlp_head.{i}.bias"] = (o,)
        elif pr["encoder"] == "lstm":
            for l in range(2):
                for sfx in ("", "_reverse"):
                    sh[f"prompt_encoder.lstm_head.weight_ih_l{l}{sfx}"] = (4 * h, C if l == 0 else 2 * h)
                    sh[f"prompt_encoder.lstm_head.weight_hh_l{l}{sfx}"] = (4 * h, h)
                    sh[f"prompt_encoder.lstm_head.bias_ih_l{l}{sfx}"] = (4 * h,)
                    sh[f"prompt_encoder.lstm_head.bias_hh_l{l}{sfx}"] = (4 * h,)
            sh["prompt_encoder.mlp_head.0.weight"] = (2 * h, 2 * h)
            sh["prompt_encoder.mlp_head.0.bias"] = (2 * h,)
            sh["prompt_encoder.mlp_head.2.weight"] = (C, 2 * h)
            sh["prompt_encoder.mlp_head.2.bias"] = (C,)
    px = case.prefix
    if px:
        n, W = px["n"], 2 * L * C
        if px["project"]:
            h = px["hidden"]
            sh["prompt_encoder.embedding.weight"] = (n, C)
            sh["prompt_encoder.transform.0.weight"] = (h, C)
            sh["prompt_encoder.transform.0.bias"] = (h,)
            sh["prompt_encoder.transform.2.weight"] = (W, h)
            sh["prompt_encoder.transform.2.bias"] = (W,)
        else:
            sh["prompt_embeddings"] = (n, W)
        if px["gate"]:
            sh["prefix_gate.weight"] = (2 * L, C)
            sh["prefix_gate.bias"] = (2 * L,)
    sh[HEAD + "classifier.weight"] = (2, C)
    sh[HEAD + "classifier.bias"] = (2,)
    return sh


def init_params(case, base, rng):
    """Random non-zero values for every trainable tensor (float32)."""
    dp = delta_params(case)
    out = {}
    for n, shape in param_shapes(case).items():
        nrm = rng.standard_normal(shape)
        role = dp[n][2] if n in dp else None
        if role == "vec":
            v = 1 + 0.3 * nrm
        elif role == "down":
            v = 1.5 * nrm / math.sqrt(shape[1])
        elif role == "up":
            v = 0.6 * nrm / math.sqrt(shape[1])
        elif role == "down_bias":   # leaning positive: ReLU bottlenecks with every unit dead at the CLS rows would hide their gradients
            v = 0.5 + 0.1 * nrm
        elif role == "up_bias":
            v = 0.1 * nrm
        elif role == "gate":
            v = 1.5 * nrm / math.sqrt(shape[1])
        elif role == "gate_bias":
            v = 0.3 * nrm
        elif role == "scale":
            v = rng.uniform(1.2, 2.0, shape)
        elif "LayerNorm" in n:
            v = base[n[len(BERT):]] + 0.05 * nrm
        elif n == "prompt_embeddings":
            v = (1.0 if case.prefix else 0.3) * nrm
        elif n == "prompt_encoder.embedding.weight":
            v = 0.5 * nrm
        elif ".lstm_head." in n:
            h = case.prompt["hidden"]
            v = rng.uniform(-2, 2, shape) / math.sqrt(h)
        elif n.startswith("prompt_encoder.") and n.endswith(".weight"):
            v = 1.5 * nrm / math.sqrt(shape[1])
        elif n.startswith("prompt_encoder.") and n.endswith(".bias"):
            v = 0.1 * nrm
        elif n == "prefix_gate.weight":
            v = 1.5 * nrm / math.sqrt(shape[1])
        elif n == "prefix_gate.bias":
            v = 0.3 * nrm
        elif n.endswith("classifier.weight"):
            v = 0.3 * nrm
        elif n.endswith("classifier.bias"):
            v = 0.1 * nrm
        else:
            raise ValueError(n)
        out[n] = np.asarray(v, dtype=np.float32).reshape(shape)
    return out


# ------------------------------------------------------------------ model
LSTM_NAMES = [f"{k}_l{l}{s}" for l in range(2) for s in ("", "_reverse")
              for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def lstm_bidir(x, w, h):
    """torch.nn.LSTM(in, h, num_layers=2, bidirectional=True) on one sequence x (n, in), zero initial
    states, written out (gates i, f, g, o; c' = f c + i g; h' = o tanh(c')); checked against
    torch.nn.LSTM itself in `gen`."""
    for l in range(2):
        outs = []
        for sfx in ("", "_reverse"):
            wih, whh = w[f"weight_ih_l{l}{sfx}"], w[f"weight_hh_l{l}{sfx}"]
            b = w[f"bias_ih_l{l}{sfx}"] + w[f"bias_hh_l{l}{sfx}"]
            hs, c, hp = [None] * len(x), torch.zeros(h, dtype=x.dtype), torch.zeros(h, dtype=x.dtype)
            steps = range(len(x) - 1, -1, -1) if sfx else range(len(x))
            for t in steps:
                gi, gf, gg, go = (x[t] @ wih.T + hp @ whh.T + b).split(h)
                c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
                hp = torch.sigmoid(go) * torch.tanh(c)
                hs[t] = hp
            outs.append(torch.stack(hs))
        x = torch.cat(outs, -1)
    return x


class Model:
    def __init__(self, case, base, p):
        self.case, self.base, self.p = case, base, p   # p: trainable tensors by name
        self.sites = {}                                # (layer, site) -> [(delta, name prefix)]
        for l in range(L):
            count = {}
            for d in case.deltas:
                k = count.get(d.site, 0)
                count[d.site] = k + 1
                pre = (f"{BERT}encoder.layer.{l}.{IA3_MODULE[d.site]}" if d.kind == "scale"
                       else f"{BERT}encoder.layer.{l}.delta.{d.site}.{k}")
                self.sites.setdefault((l, d.site), []).append((d, pre))

    def w(self, hf):
        return self.p.get(BERT + hf, self.base.get(hf))

    def lin(self, x, mod):
        return x @ self.w(mod + ".weight").T + self.w(mod + ".bias")

    def ln(self, x, mod):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + LN_EPS) * self.w(mod + ".weight") + self.w(mod + ".bias")

    def site(self, l, site, x, h):
        """The deltas at (l, site) in declaration order; x the site input, h its output."""
        p = self.p
        for d, pre in self.sites.get((l, site), []):
            if d.kind == "scale":
                h = h * p[pre + ".ia3_l"].reshape(-1)
                continue
            src = x if d.insert == "parallel" else h
            z = src @ p[pre + ".down"].T
            if d.bias:
                z = z + p[pre + ".down_bias"]
            a = ACTS[d.act](z)
            up = p[pre + ".up"]
            if d.heads:
                hd = up.shape[0] // d.heads
                u = torch.cat([a[..., g * d.r:(g + 1) * d.r] @ up[g * hd:(g + 1) * hd].T for g in range(d.heads)], -1)
            else:
                u = a @ up.T
            if d.bias:
                u = u + p[pre + ".up_bias"]
            if d.compose == "add":
                h = h + u
            elif d.compose == "scale":
                h = h + d.s * u
            elif d.compose == "learned":
                h = h + p[pre + ".scale"] * u
            elif d.compose == "gate":
                g = torch.sigmoid(x @ p[pre + ".gate"].T + p[pre + ".gate_bias"])   # (..., 1) per token
                h = h + g * d.s * u
            else:
                raise ValueError(d.compose)
        return h

    def virtual(self):
        """The virtual tokens' vectors (n, C)."""
        pr, p = self.case.prompt, self.p
        if pr["encoder"] == "none":
            return p["prompt_embeddings"]
        e = p["prompt_encoder.embedding.weight"]
        if pr["encoder"] == "mlp":
            a = torch.relu(e @ p["prompt_encoder.mlp_head.0.weight"].T + p["prompt_encoder.mlp_head.0.bias"])
            a = torch.relu(a @ p["prompt_encoder.mlp_head.2.weight"].T + p["prompt_encoder.mlp_head.2.bias"])
            return a @ p["prompt_encoder.mlp_head.4.weight"].T + p["prompt_encoder.mlp_head.4.bias"]
        out = lstm_bidir(e, {n: p["prompt_encoder.lstm_head." + n] for n in LSTM_NAMES}, pr["hidden"])
        a = torch.relu(out @ p["prompt_encoder.mlp_head.0.weight"].T + p["prompt_encoder.mlp_head.0.bias"])
        return a @ p["prompt_encoder.mlp_head.2.weight"].T + p["prompt_encoder.mlp_head.2.bias"]

    def prefix_table(self):
        px, p = self.case.prefix, self.p
        if not px["project"]:
            return p["prompt_embeddings"]
        a = torch.tanh(p["prompt_encoder.embedding.weight"] @ p["prompt_encoder.transform.0.weight"].T
                       + p["prompt_encoder.transform.0.bias"])
        return a @ p["prompt_encoder.transform.2.weight"].T + p["prompt_encoder.transform.2.bias"]

    def logits(self, ids, tts, mask):
        B, T = ids.shape
        dh = C // NH
        word = self.w("embeddings.word_embeddings.weight")[ids.clamp(min=0)]
        if self.case.prompt:
            virt = self.virtual()[(-ids - 1).clamp(min=0)]
            word = torch.where((ids < 0)[..., None], virt, word)
        x = (word + self.w("embeddings.position_embeddings.weight")[:T][None]
             + self.w("embeddings.token_type_embeddings.weight")[tts])
        x = self.ln(x, "embeddings.LayerNorm")
        dt = x.dtype
        px = self.case.prefix
        table = self.prefix_table() if px else None
        maskf = mask.to(dt)

        def heads(t):
            return t.view(B, t.shape[1], NH, dh).transpose(1, 2)
        for l in range(L):
            pre = f"encoder.layer.{l}."
            q = self.site(l, "attn.q", x, self.lin(x, pre + "attention.self.query"))
            k = self.site(l, "attn.k", x, self.lin(x, pre + "attention.self.key"))
            v = self.site(l, "attn.v", x, self.lin(x, pre + "attention.self.value"))
            keymask = maskf
            if px:
                n = px["n"]
                pk = table[:, 2 * l * C:(2 * l + 1) * C][None].expand(B, n, C)
                pv = table[:, (2 * l + 1) * C:(2 * l + 2) * C][None].expand(B, n, C)
                if px["gate"]:
                    gw, gb = self.p["prefix_gate.weight"], self.p["prefix_gate.bias"]
                    sk = torch.sigmoid(x @ gw[2 * l] + gb[2 * l])            # (B, T)
                    sv = torch.sigmoid(x @ gw[2 * l + 1] + gb[2 * l + 1])
                    gk = (sk * maskf).sum(1) / maskf.sum(1)                 # over the real tokens
                    gv = (sv * maskf).sum(1) / maskf.sum(1)
                    pk = gk[:, None, None] * pk
                    pv = gv[:, None, None] * pv
                k = torch.cat([pk, k], 1)
                v = torch.cat([pv, v], 1)
                keymask = torch.cat([torch.ones(B, n, dtype=dt), maskf], 1)
            add = (1.0 - keymask[:, None, None, :]) * torch.finfo(dt).min
            probs = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(dh) + add, dim=-1)
            ctx = (probs @ heads(v)).transpose(1, 2).reshape(B, T, C)
            ctx = self.site(l, "attn.heads", x, ctx)
            o = self.site(l, "attn.o", ctx, self.lin(ctx, pre + "attention.output.dense"))
            o = self.site(l, "attn.out", x, o)
            ln1 = self.ln(x + o, pre + "attention.output.LayerNorm")
            f = self.site(l, "ffn.in", ln1, self.lin(ln1, pre + "intermediate.dense"))
            a = gelu(f)
            a = self.site(l, "ffn.act", a, a)
            dn = self.site(l, "ffn.down", a, self.lin(a, pre + "output.dense"))
            dn = self.site(l, "ffn.out", ln1, dn)
            x = self.ln(ln1 + dn, pre + "output.LayerNorm")
        pooled = torch.tanh(self.lin(x[:, 0], "pooler.dense"))
        return pooled @ self.p[HEAD + "classifier.weight"].T + self.p[HEAD + "classifier.bias"]

    def loss(self, ids, tts, mask, labels):
        z = self.logits(ids, tts, mask)
        logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
        return -logp[torch.arange(len(labels)), labels].mean(), z


# ------------------------------------------------------------------ inputs
def rows_of(case):
    return [(s, None, y) for s, y in rt.SENTENCES] if case.data == "single" else PAIRS


def data_file(case):
    return "train.tsv" if case.data == "single" else "pairs.tsv"


def encode(case, out):
    """Token ids (Hugging Face WordPiece) with the method's virtual tokens, padded."""
    tok = BertWordPieceTokenizer(os.path.join(out, "model", "vocab.txt"), lowercase=True)
    pr = case.prompt
    nv = pr["n"] if pr else 0
    tok.enable_truncation(max_length=MAX_LEN - nv)
    cls, sep = rt.VOCAB.index("[CLS]"), rt.VOCAB.index("[SEP]")
    seqs = []
    for a, b, _ in rows_of(case):
        e = tok.encode(a, b) if b is not None else tok.encode(a)
        ids, tts = list(e.ids), list(e.type_ids)
        if pr and pr["before_cls"]:
            ids, tts = [-(k + 1) for k in range(nv)] + ids, [0] * nv + tts
        elif pr:
            na = tts.index(1) - 2 if b is not None else len(ids) - 2
            ta, tb = ids[1:1 + na], ids[na + 2:-1] if b is not None else []
            oi, ot, v, typ = [cls], [0], 0, 0
            for it in pr["items"]:
                if it == "P":
                    oi.append(-(v + 1)); ot.append(typ); v += 1
                elif it == "{text}":
                    oi += ta; ot += [typ] * len(ta)
                elif it == "{pair}":
                    oi.append(sep); ot.append(typ); typ = 1
                    oi += tb; ot += [1] * len(tb)
            oi.append(sep); ot.append(typ)
            if b is not None and "{pair}" not in pr["items"]:
                oi += tb + [sep]; ot += [1] * (len(tb) + 1)
            ids, tts = oi, ot
        seqs.append((ids, tts))
    T = max(len(s) for s, _ in seqs)
    B = len(seqs)
    ids = torch.zeros(B, T, dtype=torch.long)
    tts = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, (s, t) in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        tts[i, :len(s)] = torch.tensor(t)
        mask[i, :len(s)] = 1
    labels = sorted({y for _, _, y in rows_of(case)})
    y = torch.tensor([labels.index(lab) for _, _, lab in rows_of(case)])
    return ids, tts, mask, y


# ------------------------------------------------------------------ gen
def shift_invariant(name):
    """Tensors whose gradient is zero in exact arithmetic: a bias added to every
    key (a sequential/parallel delta's up_bias at attn.k) shifts all of a
    query's scores alike, which softmax ignores."""
    return ".delta.attn.k." in name and name.endswith(".up_bias")


def reference(out, case, base, init):
    ids, tts, mask, y = encode(case, out)
    names = sorted(init)
    p = {n: torch.from_numpy(init[n].astype(np.float64)).requires_grad_(True) for n in names}
    loss, z = Model(case, base, p).loss(ids, tts, mask, y)
    grads = torch.autograd.grad(loss, [p[n] for n in names], allow_unused=True)
    res = {"loss": np.array([loss.item()]), "logits": z.detach().numpy(), "input_ids": ids.numpy(),
           "token_type_ids": tts.numpy(), "lens": mask.sum(1).numpy()}
    unused = [n for n, g in zip(names, grads) if g is None]
    for n, g in zip(names, grads):
        res["grad/" + n] = (g if g is not None else torch.zeros_like(p[n])).detach().numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in res.items()}, os.path.join(out, f"ref_{case.id}.safetensors"))
    return res, unused


def selfcheck(out, case, base, init, res, n_probe=4):
    """Central differences on a few elements (the largest and random ones)."""
    ids, tts, mask, y = encode(case, out)
    names = sorted(init)
    G = max(float(np.abs(res["grad/" + n]).max()) for n in names)
    g = np.random.default_rng(7)
    worst = 0.0
    for k in range(n_probe):
        n = names[int(g.integers(len(names)))]
        gr = res["grad/" + n].reshape(-1)
        j = int(np.abs(gr).argmax()) if k % 2 == 0 else int(g.integers(gr.size))
        vals = []
        for sgn in (1, -1):
            p = {m: torch.from_numpy(init[m].astype(np.float64)) for m in names}
            p[n] = p[n].clone()
            p[n].view(-1)[j] += sgn * 1e-6
            with torch.no_grad():
                vals.append(Model(case, base, p).loss(ids, tts, mask, y)[0].item())
        worst = max(worst, abs((vals[0] - vals[1]) / 2e-6 - gr[j]) / G)
    return worst


def cmd_gen(out):
    tl = Tally()
    os.makedirs(out, exist_ok=True)
    rt.write_model(out, np.random.default_rng(20240607))
    with open(os.path.join(out, "train.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
        for s, y in rt.SENTENCES:
            f.write(f"{s}\t{y}\n")
    with open(os.path.join(out, "pairs.tsv"), "w") as f:
        f.write("sentence1\tsentence2\tlabel\n")
        for a, b, y in PAIRS:
            f.write(f"{a}\t{b}\t{y}\n")
    base = rt.load64(os.path.join(out, "model", "model.safetensors"))
    base32 = load_file(os.path.join(out, "model", "model.safetensors"))
    for i, case in enumerate(CASES):
        if not case.grad:
            continue
        # the init must give every tensor a gradient above the comparison's
        # floor (a ReLU bottleneck whose units are all off at the CLS rows of
        # the last layer has none): up to 6 draws
        for attempt in range(6):
            init = init_params(case, base32, np.random.default_rng(1000 + i + 100 * attempt))
            save_file(init, os.path.join(out, f"init_{case.id}.safetensors"), metadata={"format": "pt"})
            res, unused = reference(out, case, base, init)
            G = max(float(np.abs(res["grad/" + n]).max()) for n in init)
            small = [n for n in init if np.abs(res["grad/" + n]).max() < GRAD_FLOOR * G and not shift_invariant(n)]
            if not small:
                break
        tl.check(not small, f"oracle {case.id}: every gradient tensor is above the floor {GRAD_FLOOR:g} x the "
                            f"largest (but the key shifts softmax ignores) with draw {attempt}"
                            + (f" (NOT: {small[:3]})" if small else ""))
        fd = selfcheck(out, case, base, init, res)
        lens = res["lens"].tolist()
        nvirt = int((res["input_ids"] < 0).sum())
        if case.prompt and case.prompt["encoder"] == "lstm":
            h = case.prompt["hidden"]
            lstm = torch.nn.LSTM(C, h, num_layers=2, bidirectional=True, batch_first=True).double()
            w = {n: torch.from_numpy(init["prompt_encoder.lstm_head." + n].astype(np.float64)) for n in LSTM_NAMES}
            lstm.load_state_dict(w)
            e = torch.from_numpy(init["prompt_encoder.embedding.weight"].astype(np.float64))
            with torch.no_grad():
                d = float((lstm(e[None])[0][0] - lstm_bidir(e, w, h)).abs().max())
            tl.check(d < 1e-12, f"oracle {case.id}: its written-out LSTM equals torch.nn.LSTM(bidirectional, 2 "
                                f"layers) on the init weights: max abs diff {d:.2e}")
        tl.check(fd < 1e-7 and not unused,
                 f"oracle {case.id}: autograd vs central differences, max err {fd:.2e} of the largest gradient "
                 f"(< 1e-7); every one of the {len(init)} tensors is on the loss's path"
                 + (f" (NOT: {unused[:3]})" if unused else ""))
        print(f"# oracle {case.id}: {len(init)} tensors, {sum(v.size for v in init.values())} values, "
              f"loss {res['loss'][0]:.8f}, lengths {lens}, {nvirt} virtual token slots")
    return tl.finish()


# ------------------------------------------------------------------ compare
def run_driver(tl, args, what):
    """Runs the C driver; its ok/FAIL lines join ours."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        tl.check(False, f"{what}: the driver timed out")
        return False
    seen = False
    for line in r.stdout.splitlines():
        if line.startswith("ok   - "):
            tl.p += 1
            print(line)
        elif line.startswith("FAIL - "):
            tl.f += 1
            print(line)
        elif line.startswith("## "):
            seen = True
    if not seen or r.returncode not in (0, 1):
        tl.check(False, f"{what}: the driver exited {r.returncode} without a result line: "
                        f"{(r.stderr or r.stdout).strip().splitlines()[-1:] }")
        return False
    return r.returncode == 0


def compare_case(tl, out, driver, case):
    cpath = os.path.join(out, f"c_grad_{case.id}.safetensors")
    if os.path.exists(cpath):
        os.remove(cpath)
    args = [driver, "grad", os.path.join(out, "model"), os.path.join(out, data_file(case)),
            os.path.join(out, f"init_{case.id}.safetensors"), cpath, case.method] + case.opts + ["--label", case.id]
    if not run_driver(tl, args, case.id) or not os.path.exists(cpath):
        return
    ref = load_file(os.path.join(out, f"ref_{case.id}.safetensors"))
    got = load_file(cpath)
    what = case.id
    same = all(k in got and got[k].shape == ref[k].shape and (got[k] == ref[k]).all()
               for k in ("input_ids", "token_type_ids", "lens"))
    tl.check(same, f"{what}: peftc's token ids, token types and lengths (virtual tokens included) equal the "
                   f"oracle's ({ref['input_ids'].shape[0]} x {ref['input_ids'].shape[1]})")
    if not same and "input_ids" in got:
        print(f"#   peftc ids[0] {got['input_ids'][0].astype(int).tolist()}\n#   ref   ids[0] {ref['input_ids'][0].tolist()}")
        print(f"#   peftc tts[0] {got['token_type_ids'][0].astype(int).tolist()}\n#   ref   tts[0] {ref['token_type_ids'][0].tolist()}")
    lr_ = abs(float(got["loss"][0]) - ref["loss"][0]) / abs(ref["loss"][0])
    dz = np.abs(got["logits"] - ref["logits"]).max() if got["logits"].shape == ref["logits"].shape else math.inf
    tl.check(lr_ <= TOL_LOSS and dz <= TOL_LOGITS,
             f"{what}: loss {float(got['loss'][0]):.8f} vs oracle {ref['loss'][0]:.8f}, rel diff {lr_:.3g} "
             f"(<= {TOL_LOSS:g}); logits max abs diff {dz:.3g} (<= {TOL_LOGITS:g})")
    names = sorted(k[5:] for k in ref if k.startswith("grad/"))
    G = max(np.abs(ref["grad/" + n]).max() for n in names)
    diffs, floored = {}, []
    for n in names:
        if n not in got or got[n].shape != ref["grad/" + n].shape:
            diffs[n] = math.inf
            continue
        r = ref["grad/" + n]
        s = np.abs(r).max()
        if s < GRAD_FLOOR * G:
            floored.append(f"{n.replace(BERT, '')} ({s:.2g})")
        d = np.abs(got[n].astype(np.float64) - r)
        diffs[n] = d.max() / max(s, GRAD_FLOOR * G) if np.isfinite(d).all() else math.inf
    bad = [n for n in names if not diffs[n] <= TOL_GRAD]
    for n in bad[:10]:
        r = ref["grad/" + n]
        if n not in got or got[n].shape != r.shape:
            print(f"#   {n}: missing or shape {got[n].shape if n in got else None} vs {r.shape}")
            continue
        i = np.unravel_index(np.argmax(np.abs(got[n] - r)), r.shape)
        print(f"#   {n}: rel {diffs[n]:.3g}, at {tuple(int(t) for t in i)} peftc {got[n][i]:.8g} vs ref {r[i]:.8g} "
              f"(max |ref| {np.abs(r).max():.4g})")
    if floored:
        print(f"# {what}: {len(floored)} tensors compared at the floor {GRAD_FLOOR:g} x {G:.3g} (zero in exact "
              f"arithmetic or tiny): {', '.join(floored[:6])}{' ...' if len(floored) > 6 else ''}")
    worst = max(names, key=lambda n: diffs[n])
    tl.check(not bad, f"{what}: gradients of all {len(names)} trainable tensors, max rel diff {diffs[worst]:.3g} "
                      f"({worst.replace(BERT, '')}), median {float(np.median(list(diffs.values()))):.3g}; "
                      f"{len(bad)} over {TOL_GRAD:g}")


def cmd_compare(out, driver):
    tl = Tally()
    for case in CASES:
        if case.grad:
            compare_case(tl, out, driver, case)
        if case.fresh:
            run_driver(tl, [driver, "fresh", os.path.join(out, "model"), os.path.join(out, data_file(case)),
                            case.method] + case.opts + ["--label", case.id], case.id + " (fresh)")
    return tl.finish()


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "gen":
        return cmd_gen(a[1])
    if len(a) == 3 and a[0] == "compare":
        return cmd_compare(a[1], a[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
