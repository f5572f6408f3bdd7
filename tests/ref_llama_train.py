#!/usr/bin/env python3
"""float64 autograd oracle of the Llama family's training forward/backward
(src/model/llama_family.c) and the causal-LM task (src/train/task_lm.c), for
tests/check_llama_train.sh.

  ref_llama_train.py compare MODEL_DIR CASE_DIR R ALPHA RSLORA [--q8]
      CASE_DIR holds lm_grad's params.safetensors (peftc's trainable values,
      PEFT names), grads.safetensors (peftc's gradients) and batch.json (ids,
      lengths, target flags, segments). The model is rebuilt here from the HF
      directory in float64 (tests/ref_llama.py's RMSNorm/RoPE/GQA, written
      from the architecture), the trained tensors put in by name: LoRA
      (x A^T B^T * alpha/r, or alpha/sqrt(r) with rsLoRA) and (IA)^3 (k, v
      outputs and the down projection's input scaled) as PEFT defines them,
      base tensors of full fine-tuning replacing the model's; packed rows
      attend within their segment with positions restarting there. The loss is
      the mean next-token cross-entropy over the targets; every gradient is
      compared: max |peftc - torch| <= 1e-4 * max(max |torch|, 1e-3 * the
      largest gradient of all). --adapters SITE:INSERT:ACT:COMPOSE[:S],...:
      bottleneck deltas at attn.out (x = the attention's normed input, h =
      o_proj's output) and ffn.out (x = the FFN's normed input, h = down_proj's
      output), in declaration order per site (peftc's names
      model.layers.L.delta.SITE.I.{down,up,down_bias,up_bias}): src = x
      (parallel) or the current h (sequential), u = up(act(down(src))) + bias,
      h += u (add) or s*u (scale). Prefix tuning / P-tuning v2 (PEFT's
      past_key_values for a Llama: token_dim = kv_heads * head_dim): the
      table (n, 2 L KVD) is prompt_embeddings, or with the reparameterisation
      transform.2(tanh(transform.0(embedding))); layer l's keys are columns
      [2l KVD, (2l+1) KVD), values the next KVD, never rotated, always
      visible; the row's tokens take positions n.. (as transformers numbers
      them after a cache of n). Prompt tuning / P-tuning: n virtual vectors
      (prompt_embeddings, or PEFT's P-tuning MLP over the embedding: Linear,
      ReLU, Linear, ReLU, Linear) before each row, positions 0..n-1, no
      targets. --gguf-keys: the model ran from GGUF (prefix keys in ggml's
      row order). --q8: the matmul inputs quantised to Q8_0 as
      ggml does in the forward (straight-through in the backward, as peftc's
      backward multiplies by the dequantised weights).
      --bf16: peftc's bf16 path (PEFTC_BF16=1: AMX / AVX-512-BF16) emulated:
      every frozen linear weight and the output head rounded to bf16 (round to
      nearest even), the activations they multiply rounded the same way in the
      forward, and the incoming gradient rounded in the activation-gradient
      backward (dx = bf16(dy) bf16(W)); products accumulate in float64 here
      and fp32 there, so the tolerances are bf16's (see the end).
Prints ok/FAIL lines."""
import json, math, os, sys
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_llama import load, inv_freq   # noqa: E402

torch.set_default_dtype(torch.float64)


def q8(x):
    n, k = x.shape
    b = x.reshape(n, k // 32, 32)
    d = b.abs().amax(-1, keepdim=True).float() / 127
    idd = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(b.float() * idd)
    return (q.double() * d.half().double()).reshape(n, k)


def bf(t):
    """round to bf16 (nearest even), back in float64"""
    return t.to(torch.bfloat16).to(torch.float64)


class BfLinear(torch.autograd.Function):
    """y = bf16(x) bf16(W)^T; dx = bf16(dy) bf16(W); no weight gradient (frozen)"""
    @staticmethod
    def forward(ctx, x, w):
        wb = bf(w)
        ctx.save_for_backward(wb)
        return bf(x) @ wb.T

    @staticmethod
    def backward(ctx, g):
        (wb,) = ctx.saved_tensors
        return bf(g) @ wb, None


def main():
    model_dir, case, r, alpha, rslora = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    use_q8 = "--q8" in sys.argv
    use_bf16 = "--bf16" in sys.argv
    adapters = {}
    if "--adapters" in sys.argv:
        for spec in sys.argv[sys.argv.index("--adapters") + 1].split(","):
            f5 = spec.split(":")
            adapters.setdefault(f5[0], []).append((f5[1], f5[2], f5[3], float(f5[4]) if len(f5) > 4 else 1.0))
    ACT = {"relu": torch.relu, "silu": torch.nn.functional.silu, "identity": lambda z: z,
           "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))}
    cfg, t = load(model_dir)
    f, hd = inv_freq(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    eps, L = cfg.get("rms_norm_eps", 1e-6), cfg["num_hidden_layers"]
    P = {k: v.double().requires_grad_(True) for k, v in load_file(f"{case}/params.safetensors").items()}
    G = load_file(f"{case}/grads.safetensors")
    bt = json.load(open(f"{case}/batch.json"))
    pre = "base_model.model."
    W = dict(t)
    for k, v in P.items():   # full fine-tuning: the base tensor itself
        if k.startswith(pre) and k[len(pre):] in W:
            W[k[len(pre):]] = v
    scale = alpha / (math.sqrt(r) if rslora else r) if r else 0

    def lin(x, w, mod):
        xe = x + (q8(x) - x).detach() if use_q8 else x
        y = BfLinear.apply(xe, w) if use_bf16 and not w.requires_grad else xe @ w.T
        a, b = P.get(f"{pre}model.{mod}.lora_A.weight"), P.get(f"{pre}model.{mod}.lora_B.weight")
        if a is not None:
            y = y + (x @ a.T) @ b.T * scale
        l = P.get(f"{pre}model.{mod}.ia3_l")
        if l is not None and "down_proj" not in mod:
            y = y * l.reshape(-1)
        return y

    def site(l, name, x, h):
        for i, (insert, act, compose, sc) in enumerate(adapters.get(name, [])):
            p = f"{pre}model.layers.{l}.delta.{name}.{i}."
            src = x if insert == "parallel" else h
            u = ACT[act](src @ P[p + "down"].T + P[p + "down_bias"]) @ P[p + "up"].T + P[p + "up_bias"]
            h = h + (sc * u if compose == "scale" else u)
        return h

    def norm(x, w):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(x, pos):
        ang = pos[:, None].double() * f[None, :]
        c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        h = hd // 2
        a, b = x[..., :h], x[..., h:]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    KVD = nkv * hd
    prefix = None
    if "prompt_embeddings" in P and P["prompt_embeddings"].shape[1] == 2 * L * KVD:
        prefix = P["prompt_embeddings"]
    elif "prompt_encoder.transform.0.weight" in P:
        e = P["prompt_encoder.embedding.weight"]
        hmid = torch.tanh(e @ P["prompt_encoder.transform.0.weight"].T + P["prompt_encoder.transform.0.bias"])
        prefix = hmid @ P["prompt_encoder.transform.2.weight"].T + P["prompt_encoder.transform.2.bias"]
    virt = None
    if "prompt_embeddings" in P and P["prompt_embeddings"].shape[1] == cfg["hidden_size"]:
        virt = P["prompt_embeddings"]
    elif "prompt_encoder.mlp_head.0.weight" in P:
        z = P["prompt_encoder.embedding.weight"]
        for i in (0, 2, 4):
            z = z @ P[f"prompt_encoder.mlp_head.{i}.weight"].T + P[f"prompt_encoder.mlp_head.{i}.bias"]
            if i < 4:
                z = torch.relu(z)
        virt = z
    if prefix is not None and "--gguf-keys" in sys.argv:
        # a GGUF base keeps q/k rows in ggml's order (pairs rotated together):
        # peftc's prefix keys are in that order too; HF's is half-split
        kv = prefix.view(prefix.shape[0], L, 2, nkv, hd // 2, 2)
        prefix = torch.stack([kv[:, :, 0].transpose(-1, -2).reshape(prefix.shape[0], L, nkv, hd),
                              kv[:, :, 1].reshape(prefix.shape[0], L, nkv, hd)], 2).reshape(prefix.shape[0], -1)
    npre = prefix.shape[0] if prefix is not None else 0
    nv = virt.shape[0] if virt is not None else 0

    B, T = bt["B"], bt["T"]
    ids = torch.tensor(bt["ids"]).view(B, T)
    tg = torch.tensor(bt["target"]).view(B, T)
    seg = torch.tensor(bt["seg"]).view(B, T)
    total, count = 0, 0
    for b in range(B):
        n = bt["lens"][b]
        row, sg = ids[b, :n], seg[b, :n]
        pos = torch.zeros(n, dtype=torch.long)
        for i in range(1, n):
            pos[i] = 0 if sg[i] != sg[i - 1] else pos[i - 1] + 1
        x = W["model.embed_tokens.weight"][row]
        if nv:   # virtual tokens first (no packing with them)
            x = torch.cat([virt, x], 0)
            pos = torch.arange(nv + n)
            sg = torch.zeros(nv + n, dtype=torch.long)
        n_all = x.shape[0]
        pos = pos + npre
        allowed = (torch.arange(n_all)[None, :] <= torch.arange(n_all)[:, None]) & (sg[None, :] == sg[:, None])
        if npre:
            allowed = torch.cat([torch.ones(n_all, npre, dtype=torch.bool), allowed], 1)
        for l in range(L):
            p = f"model.layers.{l}."
            h = norm(x, W[p + "input_layernorm.weight"])
            q = lin(h, W[p + "self_attn.q_proj.weight"], f"layers.{l}.self_attn.q_proj").view(n_all, nh, hd)
            k = lin(h, W[p + "self_attn.k_proj.weight"], f"layers.{l}.self_attn.k_proj").view(n_all, nkv, hd)
            v = lin(h, W[p + "self_attn.v_proj.weight"], f"layers.{l}.self_attn.v_proj").view(n_all, nkv, hd)
            q, k = rope(q, pos), rope(k, pos)
            if npre:
                k = torch.cat([prefix[:, 2 * l * KVD:(2 * l + 1) * KVD].reshape(npre, nkv, hd), k], 0)
                v = torch.cat([prefix[:, (2 * l + 1) * KVD:(2 * l + 2) * KVD].reshape(npre, nkv, hd), v], 0)
            g = nh // nkv
            kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            sc = torch.einsum("ihd,jhd->hij", q, kk) / math.sqrt(hd)
            sc = sc.masked_fill(~allowed[None], float("-inf"))
            a = torch.einsum("hij,jhd->ihd", torch.softmax(sc, -1), vv).reshape(n_all, nh * hd)
            x = x + site(l, "attn.out", h, lin(a, W[p + "self_attn.o_proj.weight"], f"layers.{l}.self_attn.o_proj"))
            h = norm(x, W[p + "post_attention_layernorm.weight"])
            gt = lin(h, W[p + "mlp.gate_proj.weight"], f"layers.{l}.mlp.gate_proj")
            up = lin(h, W[p + "mlp.up_proj.weight"], f"layers.{l}.mlp.up_proj")
            act = torch.nn.functional.silu(gt) * up
            l3 = P.get(f"{pre}model.layers.{l}.mlp.down_proj.ia3_l")
            if l3 is not None:
                act = act * l3.reshape(-1)
            x = x + site(l, "ffn.out", h, lin(act, W[p + "mlp.down_proj.weight"], f"layers.{l}.mlp.down_proj"))
        hn = norm(x, W["model.norm.weight"])
        if use_q8:
            hn = hn + (q8(hn) - hn).detach()
        for i in range(n - 1):
            if tg[b, i + 1]:
                hw = W["lm_head.weight"]
                z = BfLinear.apply(hn[nv + i][None], hw)[0] if use_bf16 and not hw.requires_grad else hn[nv + i] @ hw.T
                total = total + torch.logsumexp(z, 0) - z[row[i + 1]]
                count += 1
    loss = total / count
    loss.backward()
    fails = 0
    rel = abs(loss.item() - bt["loss"]) / abs(loss.item())
    ltol = 1e-4 if use_bf16 else 1e-5
    if rel <= ltol and count == bt["n_targets"]:
        print(f"ok   - loss {bt['loss']:.7f} vs torch {loss.item():.7f} (rel {rel:.1e}), {count} targets")
    else:
        print(f"FAIL - loss {bt['loss']:.7f} vs torch {loss.item():.7f} (rel {rel:.1e}), targets {bt['n_targets']} vs {count}")
        fails += 1
    gmax = max(v.grad.abs().max().item() for v in P.values() if v.grad is not None)
    worst, wname, missing = 0, "", []
    for k, v in P.items():
        if v.grad is None:
            missing.append(k)
            continue
        ref = v.grad.reshape(G[k].shape)
        floor = max(ref.abs().max().item(), 1e-3 * gmax)
        e = (G[k].double() - ref).abs().max().item() / floor
        if e > worst:
            worst, wname = e, k
    if missing:
        print(f"FAIL - no torch gradient for {len(missing)} tensors, e.g. {missing[0]}")
        fails += 1
    if use_q8:
        # through quantised weights the forward's 8-bit activations round at
        # float32 in peftc and float64 here: a few of the millions of
        # roundings land on the other side, so the comparison is of the whole
        # gradient: relative L2 error over every tensor, and the loss
        num = sum(((G[k].double() - v.grad.reshape(G[k].shape)) ** 2).sum().item() for k, v in P.items() if v.grad is not None)
        den = sum((v.grad ** 2).sum().item() for v in P.values() if v.grad is not None)
        e2 = math.sqrt(num / den)
        good = e2 <= 1e-1 and rel <= 1e-3 and count == bt["n_targets"]
        print(f"{'ok  ' if good else 'FAIL'} - quantised base: loss rel {rel:.1e} (<= 1e-3), all {len(P)} gradients: relative L2 error {e2:.2e} (<= 1e-1)")
        sys.exit(0 if good else 1)
    # bf16 (emulated, above): what is left is fp32 against float64
    # accumulation of bf16-rounded operands and the roundings that land on the
    # other side: relative 2^-9 per operand where they differ
    tol = 5e-3 if use_bf16 else 1e-4
    print(f"{'ok  ' if worst <= tol else 'FAIL'} - {len(P)} gradients, worst {worst:.2e} of the scale at {wname.replace(pre, '')} (<= {tol})")
    sys.exit(1 if fails or worst > tol else 0)


if __name__ == "__main__":
    main()
