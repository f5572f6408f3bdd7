#!/usr/bin/env python3
"""Writes Llama models as Hugging Face directories for tests/check_llama.sh
(never committed: the outputs go under tests/out/).

  make_llama_hf.py gguf FILE.gguf OUT [--shards N]
      every tensor of a llama GGUF dequantised (gguf.quants.dequantize), q/k
      rows un-permuted to HF order (the inverse of convert_hf_to_gguf's
      permute), written as fp32 model.safetensors (or N shards + index) with a
      config.json of the GGUF's hyper-parameters.
  make_llama_hf.py tiny OUT [--shards N] [--dtype f32|bf16|f16]
      a tiny random Llama: 2 layers, hidden 40, 4 heads / 2 kv heads (GQA),
      head_dim 10, intermediate 70, vocab 97, rope_scaling llama3, untied lm_head.
"""
import argparse, json, os
import numpy as np
import torch
from safetensors.torch import save_file


def unpermute(w, n_head):
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def write(out, cfg, tensors, shards, dtype="f32"):
    os.makedirs(out, exist_ok=True)
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    ts = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(tdt) for k, v in tensors.items()}
    for f in os.listdir(out):
        if f.endswith(".safetensors") or f.endswith(".index.json"):
            os.remove(os.path.join(out, f))
    with open(f"{out}/config.json", "w") as f:
        json.dump(cfg, f, indent=1)
    if shards <= 1:
        save_file(ts, f"{out}/model.safetensors", metadata={"format": "pt"})
        return
    names = sorted(ts)
    wm = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: ts[n] for n in names[s::shards]}
        save_file(part, f"{out}/{fn}", metadata={"format": "pt"})
        wm.update({n: fn for n in part})
    with open(f"{out}/model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in ts.values())},
                   "weight_map": wm}, f, indent=1)


def field(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode()
    return v.tolist()[0] if len(v) == 1 else v.tolist()


def from_gguf(path, out, shards):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    assert arch == "llama", arch
    nh, nkv = field(r, "llama.attention.head_count"), field(r, "llama.attention.head_count_kv")
    C = field(r, "llama.embedding_length")
    vocab = field(r, "llama.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=C,
               intermediate_size=field(r, "llama.feed_forward_length"),
               num_hidden_layers=field(r, "llama.block_count"), num_attention_heads=nh,
               num_key_value_heads=nkv, head_dim=C // nh,
               rms_norm_eps=field(r, "llama.attention.layer_norm_rms_epsilon"),
               rope_theta=field(r, "llama.rope.freq_base") or 10000.0, rope_scaling=None,
               max_position_embeddings=field(r, "llama.context_length"), vocab_size=vocab,
               hidden_act="silu", bos_token_id=field(r, "tokenizer.ggml.bos_token_id"),
               eos_token_id=field(r, "tokenizer.ggml.eos_token_id"), torch_dtype="float32")
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    sub = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    tensors = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        if t.name in names:
            hf = names[t.name]
        else:
            _, i, kind, _ = t.name.split(".")
            hf = f"model.layers.{i}.{sub[kind]}.weight"
            if kind == "attn_q":
                w = unpermute(w, nh)
            elif kind == "attn_k":
                w = unpermute(w, nkv)
        tensors[hf] = w
    cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors
    write(out, cfg, tensors, shards)


def tiny(out, shards, dtype, L=2):
    V, C, NH, NKV, HD, F = 97, 40, 4, 2, 10, 70
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=C, intermediate_size=F,
               num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128, vocab_size=V,
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
               hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    rng = np.random.default_rng(7)
    w = lambda *s, sc=0.3: rng.standard_normal(s) * sc
    t = {"model.embed_tokens.weight": w(V, C, sc=1.0), "model.norm.weight": 1 + w(C, sc=0.1),
         "lm_head.weight": w(V, C)}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "self_attn.q_proj.weight": w(NH * HD, C), p + "self_attn.k_proj.weight": w(NKV * HD, C),
                  p + "self_attn.v_proj.weight": w(NKV * HD, C), p + "self_attn.o_proj.weight": w(C, NH * HD),
                  p + "mlp.gate_proj.weight": w(F, C), p + "mlp.up_proj.weight": w(F, C),
                  p + "mlp.down_proj.weight": w(C, F),
                  p + "input_layernorm.weight": 1 + w(C, sc=0.1),
                  p + "post_attention_layernorm.weight": 1 + w(C, sc=0.1)})
    write(out, cfg, t, shards, dtype)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["gguf", "tiny"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--layers", type=int, default=2)   # tiny: blocks (more than 2: gradient checkpointing's tests)
    a = ap.parse_args()
    if a.what == "gguf":
        from_gguf(a.args[0], a.args[1], a.shards)
    else:
        tiny(a.args[0], a.shards, a.dtype, a.layers)
