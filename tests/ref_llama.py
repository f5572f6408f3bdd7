#!/usr/bin/env python3
"""Independent PyTorch (float64) Llama reference for tests/check_llama.sh.

Plain PyTorch, written from the architecture (transformers' modelling code
needs torch >= 2.6): RMSNorm, RoPE in HF's rotate_half convention with the
default / linear / llama3 frequency scaling, GQA causal attention, SwiGLU,
final norm, lm_head (or the tied embedding).

  ref_llama.py prompts FILE.gguf OUT.txt [--n 16] [--max-tokens 48]
      16 real texts (gsm8k questions, alpaca instructions, xsum documents from
      ../shared/data) tokenised with the GGUF's BPE vocabulary (tokenizers'
      byte-level BPE built from tokenizer.ggml.tokens/merges): one id line each.
  ref_llama.py random OUT.txt --vocab V [--n 16]
      random id lines of lengths 1..40 (the tiny model).
  ref_llama.py fixture MODEL_DIR IDS.txt FX [--gen 64] [--ngen 4]
      FX/logits.f32: every prompt's all-token logits (float32, prompts in
      order); FX/gen.txt: greedy continuations (gen tokens) of the first ngen
      prompts, computed with the reference's own KV cache.
  ref_llama.py selfcheck MODEL_DIR IDS.txt
      the reference against itself: incremental (KV cache) decode == full
      forward; the ggml convention (q/k rows permuted, adjacent-pair RoPE)
      gives the same logits as HF's; float32 vs float64.
"""
import argparse, json, math, os, sys
import numpy as np
import torch
from safetensors.torch import load_file


def load(model_dir, dtype=torch.float64):
    cfg = json.load(open(f"{model_dir}/config.json"))
    if os.path.exists(f"{model_dir}/model.safetensors"):
        t = load_file(f"{model_dir}/model.safetensors")
    else:
        idx = json.load(open(f"{model_dir}/model.safetensors.index.json"))
        t = {}
        for f in sorted(set(idx["weight_map"].values())):
            t.update(load_file(f"{model_dir}/{f}"))
    t = {k: v.to(dtype) for k, v in t.items()}
    if cfg.get("tie_word_embeddings", True) or "lm_head.weight" not in t:
        t["lm_head.weight"] = t["model.embed_tokens.weight"]
    return cfg, t


def inv_freq(cfg):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg.get("rope_theta", 10000.0)
    f = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            f = f / rs["factor"]
        elif kind == "llama3":
            fac, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], \
                rs["original_max_position_embeddings"]
            lo_wl, hi_wl = old / lo, old / hi
            wl = 2 * math.pi / f
            g = torch.where(wl > lo_wl, f / fac, f)
            s = (old / wl - lo) / (hi - lo)
            sm = (1 - s) * g / fac + s * g
            med = ~(wl < hi_wl) & ~(wl > lo_wl)
            f = torch.where(med, sm, g)
        elif kind != "default":
            raise ValueError(kind)
    return f, hd


class Llama:
    def __init__(self, cfg, t, interleaved=False):
        self.cfg, self.t, self.il = cfg, t, interleaved
        self.f, self.hd = inv_freq(cfg)
        self.nh, self.nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.L = cfg["num_hidden_layers"]

    q8act = False   # emulate ggml's Q8_0 activation quantisation at every matmul input

    def lin(self, x, w):
        if self.q8act:
            n, k = x.shape
            b = x.reshape(n, k // 32, 32)
            d = b.abs().amax(-1, keepdim=True).float() / 127
            idd = torch.where(d > 0, 1 / d, torch.zeros_like(d))
            q = torch.round(b.float() * idd)
            x = (q.double() * d.half().double()).reshape(n, k)
        return x @ w.T

    def norm(self, x, w):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):   # x (n, H, hd)
        ang = pos[:, None].to(x.dtype) * self.f.to(x.dtype)[None, :]
        c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        if self.il:
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * c - b * s, b * c + a * s], -1).flatten(-2)
        h = self.hd // 2
        a, b = x[..., :h], x[..., h:]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    def forward(self, ids, cache, pos0):
        """ids (n,), cache: list of [K, V] per layer (n_past, nkv, hd) or None; returns logits (n, V)."""
        t, hd, n = self.t, self.hd, len(ids)
        pos = torch.arange(pos0, pos0 + n)
        x = t["model.embed_tokens.weight"][torch.tensor(ids)]
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = self.norm(x, t[p + "input_layernorm.weight"])
            q = (self.lin(h, t[p + "self_attn.q_proj.weight"])).view(n, self.nh, hd)
            k = (self.lin(h, t[p + "self_attn.k_proj.weight"])).view(n, self.nkv, hd)
            v = (self.lin(h, t[p + "self_attn.v_proj.weight"])).view(n, self.nkv, hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if cache[l] is not None:
                k = torch.cat([cache[l][0], k]); v = torch.cat([cache[l][1], v])
            cache[l] = [k, v]
            T = k.shape[0]
            g = self.nh // self.nkv
            kk = k.repeat_interleave(g, dim=1).permute(1, 2, 0)   # (H, hd, T)
            vv = v.repeat_interleave(g, dim=1).permute(1, 0, 2)   # (H, T, hd)
            sc = torch.einsum("nhd,hdt->hnt", q, kk) / math.sqrt(hd)
            mask = torch.arange(T)[None, :] > (pos[:, None])
            sc = sc.masked_fill(mask[None], float("-inf"))
            a = torch.softmax(sc, -1) @ vv                        # (H, n, hd)
            a = a.permute(1, 0, 2).reshape(n, self.nh * hd)
            x = x + self.lin(a, t[p + "self_attn.o_proj.weight"])
            h = self.norm(x, t[p + "post_attention_layernorm.weight"])
            gt = self.lin(h, t[p + "mlp.gate_proj.weight"])
            up = self.lin(h, t[p + "mlp.up_proj.weight"])
            x = x + self.lin(torch.nn.functional.silu(gt) * up, t[p + "mlp.down_proj.weight"])
        return self.lin(self.norm(x, t["model.norm.weight"]), t["lm_head.weight"])

    def logits(self, ids):
        return self.forward(ids, [None] * self.L, 0)

    def greedy(self, ids, n):
        cache = [None] * self.L
        lg = self.forward(ids, cache, 0)[-1]
        out, pos = [], len(ids)
        for _ in range(n):
            tok = int(torch.argmax(lg))
            out.append(tok)
            lg = self.forward([tok], cache, pos)[-1]
            pos += 1
        return out


def read_ids(path):
    return [[int(x) for x in l.split()] for l in open(path) if l.strip()]


def texts(n):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
    if not os.path.isdir(root):
        root = "/work/shared/data"
    gs = [json.loads(l)["question"] for l, _ in zip(open(f"{root}/gsm8k/test.jsonl"), range(6))]
    al = [r["instruction"] + (" " + r["input"] if r.get("input") else "")
          for r in json.load(open(f"{root}/alpaca-5k/alpaca_data.json"))[:5]]
    xs = [json.loads(l) for l, _ in zip(open(f"{root}/xsum-sample/sample.json"), range(n))]
    xs = [r.get("document") for r in xs]
    out = gs + al + [x for x in xs if x]
    return out[:n]


def gguf_tokenizer(path):
    from gguf import GGUFReader
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    r = GGUFReader(path)
    f = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(f.parts[i]).decode() for i in f.data]
    f = r.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(f.parts[i]).decode().split(" ", 1)) for i in f.data]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    return tk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("args", nargs="*")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=97)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--ngen", type=int, default=4)
    ap.add_argument("--q8act", action="store_true", help="activations rounded to Q8_0 at every matmul (as quant_matmul)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.cmd == "prompts":
        tk = gguf_tokenizer(a.args[0])
        with open(a.args[1], "w") as f:
            for s in texts(a.n):
                ids = tk.encode(s).ids[:a.max_tokens]
                f.write(" ".join(map(str, ids)) + "\n")
    elif a.cmd == "random":
        rng = np.random.default_rng(3)
        with open(a.args[0], "w") as f:
            for i in range(a.n):
                ids = rng.integers(0, a.vocab, 1 + (i * 7) % 40)
                f.write(" ".join(map(str, ids)) + "\n")
    elif a.cmd == "fixture":
        mdir, idp, fx = a.args
        os.makedirs(fx, exist_ok=True)
        cfg, t = load(mdir)
        m = Llama(cfg, t)
        m.q8act = a.q8act
        prompts = read_ids(idp)
        with torch.no_grad():
            lg = [m.logits(p).float().numpy() for p in prompts]
            np.concatenate(lg).astype(np.float32).tofile(f"{fx}/logits.f32")
            with open(f"{fx}/gen.txt", "w") as f:
                for p in prompts[:a.ngen]:
                    f.write(" ".join(map(str, m.greedy(p, a.gen))) + "\n")
        print(f"fixture {fx}: {len(prompts)} prompts, {sum(map(len, prompts))} tokens, {min(a.ngen, len(prompts))} x {a.gen} generated")
    elif a.cmd == "selfcheck":
        mdir, idp = a.args
        cfg, t = load(mdir)
        m = Llama(cfg, t)
        p = read_ids(idp)[:a.n]
        with torch.no_grad():
            worst = 0.0
            for ids in p:
                full = m.logits(ids)
                cache, inc = [None] * m.L, []
                half = max(1, len(ids) // 2)
                inc.append(m.forward(ids[:half], cache, 0))
                for i in range(half, len(ids)):
                    inc.append(m.forward([ids[i]], cache, i))
                worst = max(worst, float((torch.cat(inc) - full).abs().max()))
            print(("ok   - " if worst < 1e-9 else "FAIL - ") + f"oracle: KV-cache decode == full forward (max abs {worst:.2g})")
            tp = dict(t)
            nh, nkv = m.nh, m.nkv
            def perm(w, n):
                o, i = w.shape
                return w.reshape(n, 2, o // n // 2, i).swapaxes(1, 2).reshape(o, i)
            for l in range(m.L):
                pre = f"model.layers.{l}.self_attn."
                tp[pre + "q_proj.weight"] = perm(t[pre + "q_proj.weight"], nh)
                tp[pre + "k_proj.weight"] = perm(t[pre + "k_proj.weight"], nkv)
            mg = Llama(cfg, tp, interleaved=True)
            d = max(float((mg.logits(ids) - m.logits(ids)).abs().max()) for ids in p)
            print(("ok   - " if d < 1e-9 else "FAIL - ") + f"oracle: permuted q/k + adjacent-pair RoPE (GGUF) == HF rotate_half (max abs {d:.2g})")
            cfg32, t32 = load(mdir, torch.float32)
            m32 = Llama(cfg32, t32)
            d = max(float((m32.logits(ids).double() - m.logits(ids)).abs().max()) for ids in p)
            print(("ok   - " if d < 1e-3 else "FAIL - ") + f"oracle: float32 vs float64 (max abs {d:.2g})")
    else:
        sys.exit(f"unknown command {a.cmd}")


if __name__ == "__main__":
    main()
