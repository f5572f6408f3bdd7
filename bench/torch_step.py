#!/usr/bin/env python3
"""torch_step.py: the PyTorch side of bench/run — the same model, method,
batch and step as bench/train_step.c, in plain PyTorch (Debian's
python3-torch), one workload per process; prints one line
    RESULT impl=torch key=value ...

  torch_step.py train lora|adapter-pfeiffer|prefix|full B T [--model DIR] [--threads 2] [--bf16]
  torch_step.py infer lora|lora-merged B T [--bf16]
  torch_step.py mm N [--bf16]  torch.mm N^3 (what torch's BLAS reaches here;
                               --bf16: of bf16 tensors, oneDNN's bf16 GEMM)

--bf16: the forward (and the loss) under torch.autocast("cpu",
dtype=torch.bfloat16), the mixed precision torch 1.13 offers on CPU. Every
linear and matmul (frozen and trainable weights, LoRA, the adapters, the
attention's QK^T and PV) and their backward run on bf16 operands through
oneDNN 2.6 (ONEDNN_VERBOSE=1 on this Xeon: brg:avx512_core_amx_bf16, i.e.
AMX, for all but the GEMMs with an inner dimension of 8 or 2 (LoRA B's
forward, the classifier), which take brg:avx512_core_bf16).
Their bf16 outputs go on through GELU (oneDNN eltwise), softmax and dropout
in bf16; the residual additions promote to fp32 (the residual stream starts
as the fp32 embeddings), so LayerNorm runs in fp32. The parameters, their
gradients and AdamW stay fp32; autocast casts the weights at every forward.
No GradScaler: bf16 has fp32's exponent range.

Model: BertForSequenceClassification (post-LN BERT, exact-erf GELU, pooler
tanh, dropout, classifier; 2 labels) written as nn.Modules from the
definitions (as tests/ref_bert.py / tests/ref_train.py), the weights of
model.safetensors (safetensors.numpy -> torch, float32). Only the method's
parameters and the classifier have requires_grad (full: every tensor and the
pooler), so autograd computes exactly the gradients peftc does:
  lora              y = x W^T + b + (alpha/r) (x A^T) B^T on query and value (r 8, alpha 16)
  adapter-pfeiffer  h = h + up(relu(down(h))) on the FFN output (after its
                    dropout, before the residual + LayerNorm), r = 384/16 = 24
  prefix            20 trainable key and value vectors per layer prepended to
                    the attention's keys and values (no reparameterisation)
  full              every weight
It is written for speed within torch 1.13: F.linear / F.layer_norm / F.gelu,
query/key/value as one fused (3C, C) GEMM (BENCH_TORCH_QKV=fused, the
default) or three (separate), 1/sqrt(dh) folded into q, no attention mask
(every sequence is full length: nothing to mask),
torch.optim.AdamW(foreach=True), zero_grad(set_to_none),
inference under torch.inference_mode() + eval(). Merged LoRA: W + (alpha/r) B A
computed once, no LoRA modules in the forward. The classifier and LoRA A (and
B in inference) get train_step.c's deterministic values, so inference prints
the same logits as peftc (bench/report.py compares them).

Step = forward + cross-entropy + backward + clip_grad_norm_(1.0) + AdamW
(constant lr 2e-3, full 1e-4; weight decay 0.01, none on biases and
LayerNorm weights), dropout 0.1 as in config.json (hidden, attention
probabilities, pooled output); the same batch every step (the loss falls).
Timing as train_step.c: BENCH_WARMUP (2) steps, then >= BENCH_MIN_STEPS (5)
and >= BENCH_MIN_SECONDS (3) s, median and minimum step.
"""
import argparse
import json
import math
import os
import sys
import time

# libgomp reads this when torch loads: Debian's torch runs OpenMP workers
# beside OpenBLAS's own pthread pool, and idle OpenMP workers spinning
# (the default, ACTIVE) take the cores OpenBLAS needs (see tests/ref_bert.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

def splitmix64(x):
    """Vectorised splitmix64 of a uint64 array (wraps mod 2^64, as in C)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def make_batch(B, T):
    """The batch of train_step.c's make_batch: [CLS] random... [SEP], labels 0/1."""
    i = np.arange(B * T, dtype=np.uint64)
    ids = (np.uint64(1000) + splitmix64(i) % np.uint64(29000)).astype(np.int64).reshape(B, T)
    ids[:, 0] = 101
    ids[:, T - 1] = 102
    labels = (splitmix64(np.uint64(1000000007) + np.arange(B, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(labels)


def det_fill(shape, salt, scale):
    """train_step.c's det_fill: scale * u, u in [-1, 1] from splitmix64((salt << 32) ^ i), float32."""
    n = int(np.prod(shape))
    v = splitmix64((np.uint64(salt) << np.uint64(32)) ^ np.arange(n, dtype=np.uint64)) % np.uint64(2001)
    u = v.astype(np.float32) * np.float32(1e-3) - np.float32(1.0)
    return torch.from_numpy((u * np.float32(scale)).reshape(shape))


# ------------------------------------------------------------------ modules
def frozen(t):
    return nn.Parameter(t, requires_grad=False)


class Linear(nn.Module):
    """A linear layer holding the checkpoint's weight, trainable or frozen."""

    def __init__(self, w, b, train):
        super().__init__()
        self.weight = nn.Parameter(w, requires_grad=train)
        self.bias = nn.Parameter(b, requires_grad=train)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LoRA(nn.Module):
    """(alpha/r) (x A^T) B^T, added to a frozen linear's output (PEFT's init:
    A kaiming-uniform, B zero)."""

    def __init__(self, n_in, n_out, r, alpha):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, n_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))
        self.scale = alpha / r

    def forward(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta(self):
        return self.scale * (self.lora_B @ self.lora_A)


class Adapter(nn.Module):
    """Pfeiffer: sequential ReLU bottleneck, h + up(relu(down(h))) (BERT init:
    N(0, 0.02^2) down, zero up, zero biases)."""

    def __init__(self, C, r):
        super().__init__()
        self.down = nn.Linear(C, r)
        self.up = nn.Linear(r, C)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(F.relu(self.down(h)))


class LayerNorm(nn.Module):
    def __init__(self, w, b, eps, train):
        super().__init__()
        self.weight = nn.Parameter(w, requires_grad=train)
        self.bias = nn.Parameter(b, requires_grad=train)
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Layer(nn.Module):
    def __init__(self, w, pre, cfg, method, lora_targets, r, alpha, adapter_r, prefix_len, fused_qkv):
        super().__init__()
        full = method == "full"
        C = cfg["hidden_size"]
        self.C = C
        self.nh = cfg["num_attention_heads"]
        self.dh = C // self.nh
        self.p_hidden = cfg["hidden_dropout_prob"]
        self.p_attn = cfg["attention_probs_dropout_prob"]
        eps = cfg["layer_norm_eps"]

        def lin(*names):  # (pops the checkpoint's tensors: no second copy stays alive)
            ws = [w.pop(pre + n + ".weight") for n in names]
            bs = [w.pop(pre + n + ".bias") for n in names]
            return Linear(torch.cat(ws) if len(ws) > 1 else ws[0], torch.cat(bs) if len(bs) > 1 else bs[0], full)
        qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
        # fused: one (3C, C) projection, one GEMM instead of three (the same
        # function; faster in torch at this width)
        self.fused = fused_qkv
        if fused_qkv:
            self.qkv = lin(*qkv)
        else:
            self.q, self.k, self.v = (lin(n) for n in qkv)
        self.lora = nn.ModuleDict({t: LoRA(C, C, r, alpha) for t in lora_targets} if method == "lora" else {})
        self.o = lin("attention.output.dense")
        self.ln1 = LayerNorm(w[pre + "attention.output.LayerNorm.weight"],
                             w[pre + "attention.output.LayerNorm.bias"], eps, full)
        self.fi = lin("intermediate.dense")
        self.fo = lin("output.dense")
        self.ln2 = LayerNorm(w[pre + "output.LayerNorm.weight"], w[pre + "output.LayerNorm.bias"], eps, full)
        self.adapter = Adapter(C, adapter_r) if method == "adapter-pfeiffer" else None
        self.n_prefix = prefix_len if method == "prefix" else 0
        if self.n_prefix:
            # the prefix keys and values of this layer, (n, C) each (PEFT's
            # prompt_embeddings rows for this layer)
            self.prefix_k = nn.Parameter(torch.randn(self.n_prefix, C) * 0.02)
            self.prefix_v = nn.Parameter(torch.randn(self.n_prefix, C) * 0.02)

    @torch.no_grad()
    def merge(self):
        """W += (alpha/r) B A for every LoRA; the LoRA modules leave the forward."""
        C = self.C
        for i, t in enumerate(("query", "key", "value")):
            if t in self.lora:
                if self.fused:
                    self.qkv.weight[i * C:(i + 1) * C] += self.lora[t].delta()
                else:
                    getattr(self, t[0]).weight += self.lora[t].delta()
        self.lora = nn.ModuleDict({})

    def forward(self, x):
        B, T, C = x.shape
        nh, dh = self.nh, self.dh
        train = self.training
        if self.fused:
            q, k, v = self.qkv(x).split(C, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if self.lora:
            if "query" in self.lora:
                q = q + self.lora["query"](x)
            if "key" in self.lora:
                k = k + self.lora["key"](x)
            if "value" in self.lora:
                v = v + self.lora["value"](x)
        q = q * (1.0 / math.sqrt(dh))
        if self.n_prefix:
            k = torch.cat([self.prefix_k.expand(B, -1, -1), k], dim=1)
            v = torch.cat([self.prefix_v.expand(B, -1, -1), v], dim=1)
        Tk = k.shape[1]
        q = q.reshape(B, T, nh, dh).transpose(1, 2)        # B nh T dh
        k = k.reshape(B, Tk, nh, dh).permute(0, 2, 3, 1)   # B nh dh Tk
        v = v.reshape(B, Tk, nh, dh).transpose(1, 2)       # B nh Tk dh
        probs = torch.softmax(torch.matmul(q, k), dim=-1)  # no mask: no padding
        if train and self.p_attn > 0:
            probs = F.dropout(probs, self.p_attn, True)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, C)
        a = F.dropout(self.o(ctx), self.p_hidden, train)
        x = self.ln1(a + x)
        h = F.dropout(self.fo(F.gelu(self.fi(x))), self.p_hidden, train)
        if self.adapter is not None:
            h = self.adapter(h)
        return self.ln2(h + x)


class BertCls(nn.Module):
    def __init__(self, model_dir, method, n_labels=2, lora_r=8, lora_alpha=16.0,
                 lora_targets=("query", "value"), prefix_len=20, fused_qkv=True):
        super().__init__()
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["model_type"] == "bert" and cfg["hidden_act"] == "gelu"
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        w = {}
        for k, v in raw.items():
            k = k[5:] if k.startswith("bert.") else k
            if v.dtype.kind == "f":
                w[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        del raw
        full = method == "full"
        C = cfg["hidden_size"]
        self.p_hidden = cfg["hidden_dropout_prob"]
        self.wte = nn.Parameter(w["embeddings.word_embeddings.weight"], requires_grad=full)
        self.wpe = nn.Parameter(w["embeddings.position_embeddings.weight"], requires_grad=full)
        self.wtt = nn.Parameter(w["embeddings.token_type_embeddings.weight"], requires_grad=full)
        self.ln_e = LayerNorm(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                              cfg["layer_norm_eps"], full)
        self.layers = nn.ModuleList(
            Layer(w, f"encoder.layer.{i}.", cfg, method, lora_targets, lora_r, lora_alpha,
                  max(1, C // 16), prefix_len, fused_qkv)
            for i in range(cfg["num_hidden_layers"]))
        self.pool = Linear(w["pooler.dense.weight"], w["pooler.dense.bias"], full)
        # BertForSequenceClassification's head init: N(0, 0.02^2), zero bias
        self.cls = nn.Linear(C, n_labels)
        nn.init.normal_(self.cls.weight, std=0.02)
        nn.init.zeros_(self.cls.bias)

    @torch.no_grad()
    def det_init(self, lora_b):
        """The deterministic values train_step.c gives the classifier, LoRA A
        and (inference) LoRA B: both sides then compute the same function."""
        self.cls.weight.copy_(det_fill(self.cls.weight.shape, 7, 0.03))
        self.cls.bias.zero_()
        for l, layer in enumerate(self.layers):
            for k, t in enumerate(("query", "value")):
                if t in layer.lora:
                    lo = layer.lora[t]
                    lo.lora_A.copy_(det_fill(lo.lora_A.shape, 1000 + l * 4 + k * 2, 0.05))
                    if lora_b:
                        lo.lora_B.copy_(det_fill(lo.lora_B.shape, 1000 + l * 4 + k * 2 + 1, 0.1))

    def forward(self, ids):
        B, T = ids.shape
        # token types all 0: row 0 of the type table
        x = F.embedding(ids, self.wte) + self.wpe[:T] + self.wtt[0]
        x = F.dropout(self.ln_e(x), self.p_hidden, self.training)
        for layer in self.layers:
            x = layer(x)
        pooled = torch.tanh(self.pool(x[:, 0]))
        return self.cls(F.dropout(pooled, self.p_hidden, self.training))

    def merge(self):
        for layer in self.layers:
            layer.merge()


def param_groups(model, weight_decay):
    """Hugging Face Trainer's rule: no decay on biases and LayerNorm weights
    (peftc: nor on the adapters' biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_ln = name.startswith("ln_e.") or ".ln1." in name or ".ln2." in name
        (no_decay if name.endswith("bias") or is_ln else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def timed_loop(fn):
    warm = int(os.environ.get("BENCH_WARMUP", "2"))
    min_steps = int(os.environ.get("BENCH_MIN_STEPS", "5"))
    max_steps = max(min_steps, int(os.environ.get("BENCH_MAX_STEPS", "200")))
    min_s = float(os.environ.get("BENCH_MIN_SECONDS", "3"))
    losses, ts = [], []
    step = 0
    while True:
        timed = step >= warm
        if timed and len(ts) >= min_steps and (sum(ts) >= min_s or len(ts) >= max_steps):
            break
        t0 = time.perf_counter()
        loss = fn(step)
        dt = time.perf_counter() - t0
        if not math.isfinite(loss):
            sys.exit(f"torch_step: non-finite loss at step {step + 1}")
        losses.append(loss)
        if timed:
            ts.append(dt)
        step += 1
    return warm, ts, losses


def cmd_mm(a):
    n = a.B
    x = torch.rand(n, n) * 2 - 1
    y = torch.rand(n, n) * 2 - 1
    if a.bf16:
        x, y = x.bfloat16(), y.bfloat16()
    torch.mm(x, y)
    ts = []
    for _ in range(int(os.environ.get("BENCH_SGEMM_REPS", "10"))):
        t0 = time.perf_counter()
        torch.mm(x, y)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    fl = 2.0 * n ** 3
    print(f"RESULT impl=torch workload=mm precision={'bf16' if a.bf16 else 'fp32'} n={n} "
          f"threads={torch.get_num_threads()} reps={len(ts)} "
          f"best_ms={ts[0] * 1e3:.3f} median_ms={ts[len(ts) // 2] * 1e3:.3f} "
          f"peak_gflops={fl / ts[0] * 1e-9:.2f} median_gflops={fl / ts[len(ts) // 2] * 1e-9:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("train", "infer", "mm"))
    ap.add_argument("method", nargs="?", default="")
    ap.add_argument("B", type=int)
    ap.add_argument("T", type=int, nargs="?", default=0)
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true",
                    help="torch.autocast('cpu', dtype=torch.bfloat16) around the forward and the loss")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    if a.mode == "mm":
        return cmd_mm(a)
    train = a.mode == "train"
    method = a.method
    merged = method == "lora-merged"
    preset = "lora" if merged else method
    if preset not in ("lora", "adapter-pfeiffer", "prefix", "full") or (not train and preset != "lora"):
        sys.exit(f"torch_step: unknown workload {a.mode} {method}")
    t_load = time.perf_counter()
    fused = os.environ.get("BENCH_TORCH_QKV", "fused") == "fused"
    model = BertCls(a.model, preset, fused_qkv=fused)
    ids, labels = make_batch(a.B, a.T)
    B, T = a.B, a.T
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("cls.") and ".lora." not in n and "adapter" not in n and "prefix_" not in n)
    model.det_init(lora_b=not train)
    if train:
        # as train_step.c: high enough that the loss visibly falls on the
        # repeated batch in a few steps; the speed does not depend on it
        lr = 1e-4 if preset == "full" else 2e-3
        opt = torch.optim.AdamW(param_groups(model, 0.01), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                foreach=True)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        t_load = time.perf_counter() - t_load

        def step(_):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                loss = F.cross_entropy(model(ids), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss.item()
    else:
        if merged:
            model.merge()
        model.eval()
        t_load = time.perf_counter() - t_load
        out = {}

        def step(_):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                z = model(ids).float()
                out["logits"] = z
                return F.cross_entropy(z, labels).item()
    warm, ts, losses = timed_loop(step)
    s = sorted(ts)
    med = s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])
    print(f"RESULT impl=torch workload={a.mode} method={method} precision={'bf16' if a.bf16 else 'fp32'} "
          f"B={B} T={T} threads={torch.get_num_threads()} "
          f"trainable={trainable} base_params={base} warmup={warm} steps={len(ts)} "
          f"median_ms={med * 1e3:.3f} min_ms={s[0] * 1e3:.3f} tokens_per_s={B * T / med:.1f} "
          f"seq_per_s={B / med:.2f} loss_first={losses[0]:.5f} loss_last={losses[-1]:.5f} "
          f"load_s={t_load:.2f} dropout={model.p_hidden if train else 0.0:.2f} torch={torch.__version__} "
          f"omp_wait={os.environ.get('OMP_WAIT_POLICY', '')} qkv={'fused' if fused else 'separate'}"
          + (f" lr={lr:g}" if train else "")
          + (" logits=" + ",".join("%.6g" % v for v in out["logits"].flatten().tolist()) if not train else ""))


if __name__ == "__main__":
    main()
