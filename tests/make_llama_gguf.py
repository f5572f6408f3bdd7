#!/usr/bin/env python3
"""Writes a llama GGUF from an HF directory (tests/make_llama_hf.py tiny) the
way convert_hf_to_gguf does: q/k rows permuted for ggml's RoPE, llama3 rope
scaling as a rope_freqs.weight tensor of frequency divisors, tensor names
blk.{i}.*; with --bad, a file peftc must reject:
  arch     general.architecture "gpt2"
  missing  no blk.1.ffn_up.weight
  shape    blk.0.attn_k.weight with the wrong number of rows
  type     token_embd.weight as Q2_K (a type peftc reads but cannot compute with)

  make_llama_gguf.py HF_DIR OUT.gguf [--dtype f32|f16] [--bad KIND]
"""
import argparse, json, math
import numpy as np
import gguf
from safetensors.numpy import load_file


def perm(w, n):
    o, i = w.shape
    return w.reshape(n, 2, o // n // 2, i).swapaxes(1, 2).reshape(o, i)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf"); ap.add_argument("out")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--bad", default="")
    a = ap.parse_args()
    cfg = json.load(open(f"{a.hf}/config.json"))
    t = load_file(f"{a.hf}/model.safetensors")
    nh, nkv, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    w = gguf.GGUFWriter(a.out, "gpt2" if a.bad == "arch" else "llama")
    arch = "llama"
    w.add_uint32(f"{arch}.block_count", L)
    w.add_uint32(f"{arch}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", cfg["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", nh)
    w.add_uint32(f"{arch}.attention.head_count_kv", nkv)
    w.add_uint32(f"{arch}.attention.key_length", hd)
    w.add_uint32(f"{arch}.attention.value_length", hd)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_theta"])
    w.add_uint32(f"{arch}.rope.dimension_count", hd)
    w.add_uint32(f"{arch}.vocab_size", cfg["vocab_size"])
    w.add_uint32("tokenizer.ggml.bos_token_id", cfg["bos_token_id"])
    w.add_uint32("tokenizer.ggml.eos_token_id", cfg["eos_token_id"])
    if a.bad == "type":
        C = 256
        w.add_uint32(f"{arch}.embedding_length", C) if False else None
        q = np.random.default_rng(0).integers(0, 255, (cfg["vocab_size"], C // 256 * 84), dtype=np.uint8)
        w.add_tensor("token_embd.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q2_K)
    rs = cfg.get("rope_scaling")
    tensors = {}
    if rs and rs.get("rope_type") == "llama3":
        fac, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        ff = []
        for i in range(hd // 2):
            f = 1.0 / cfg["rope_theta"] ** (2 * i / hd)
            wl = 2 * math.pi / f
            if wl < old / hi:
                ff.append(1.0)
            elif wl > old / lo:
                ff.append(fac)
            else:
                s = (old / wl - lo) / (hi - lo)
                ff.append(1 / ((1 - s) / fac + s))
        tensors["rope_freqs.weight"] = np.array(ff, dtype=np.float32)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, v in t.items():
        v = v.astype(np.float32)
        if k in names:
            n = names[k]
        else:
            parts = k.split(".")
            i, s = parts[2], ".".join(parts[3:-1])
            n = f"blk.{i}.{sub[s]}.weight"
            if s == "self_attn.q_proj":
                v = perm(v, nh)
            elif s == "self_attn.k_proj":
                v = perm(v, nkv)
        tensors[n] = v
    if a.bad == "missing":
        del tensors["blk.1.ffn_up.weight"]
    if a.bad == "shape":
        tensors["blk.0.attn_k.weight"] = tensors["blk.0.attn_k.weight"][:-2]
    if a.bad == "type":
        del tensors["token_embd.weight"]
    for n in sorted(tensors):
        v = tensors[n]
        if a.dtype == "f16" and v.ndim == 2:
            v = v.astype(np.float16)
        w.add_tensor(n, np.ascontiguousarray(v))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


if __name__ == "__main__":
    main()
