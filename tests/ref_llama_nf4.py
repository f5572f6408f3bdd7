"""ref_llama_nf4.py: fixtures of tests/check_llama_nf4.sh. A tiny random
Llama whose linear widths are whole NF4 blocks (hidden 64, head_dim 16, GQA
4:2, intermediate 128, llama3 rope scaling, untied lm_head), written as a
bf16 HF directory (peftc's input, quantised to NF4 at load) and, as the
oracle's model, an fp32 directory whose seven linear weights per block are
bitsandbytes' NF4 round trip (quantize_4bit with double quantisation, then
dequantize_4bit) of the same values; embeddings, lm_head and norms equal.

  ref_llama_nf4.py OUT_BF16 OUT_DEQ
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_llama_hf import write  # noqa: E402

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main(out_bf16, out_deq):
    import bitsandbytes.functional as F
    V, C, L, NH, NKV, HD, FF = 97, 64, 2, 4, 2, 16, 128
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=C, intermediate_size=FF,
               num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128, vocab_size=V,
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
               hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    rng = np.random.default_rng(11)
    w = lambda *s, sc=0.3: rng.standard_normal(s) * sc  # noqa: E731
    t = {"model.embed_tokens.weight": w(V, C, sc=1.0), "model.norm.weight": 1 + w(C, sc=0.1),
         "lm_head.weight": w(V, C)}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "self_attn.q_proj.weight": w(NH * HD, C), p + "self_attn.k_proj.weight": w(NKV * HD, C),
                  p + "self_attn.v_proj.weight": w(NKV * HD, C), p + "self_attn.o_proj.weight": w(C, NH * HD),
                  p + "mlp.gate_proj.weight": w(FF, C), p + "mlp.up_proj.weight": w(FF, C),
                  p + "mlp.down_proj.weight": w(C, FF),
                  p + "input_layernorm.weight": 1 + w(C, sc=0.1),
                  p + "post_attention_layernorm.weight": 1 + w(C, sc=0.1)})
    # the values as bf16 stores them, then exactly those in fp32 for the oracle
    t = {k: torch.tensor(v, dtype=torch.float32).to(torch.bfloat16).to(torch.float32).numpy() for k, v in t.items()}
    write(out_bf16, cfg, t, 1, "bf16")
    deq = {}
    for k, v in t.items():
        if any(f".{n}.weight" in k for n in LINEAR):
            q, s = F.quantize_4bit(torch.from_numpy(v).float(), blocksize=64, quant_type="nf4", compress_statistics=True)
            v = F.dequantize_4bit(q, s).numpy().astype(np.float64)
        deq[k] = v
    write(out_deq, cfg, deq, 1, "f32")
    print(f"tiny Llama (hidden {C}, ffn {FF}): {out_bf16} (bf16), {out_deq} (fp32, NF4 round trip of the linear weights)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
