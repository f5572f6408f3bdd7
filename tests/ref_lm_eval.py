#!/usr/bin/env python3
"""Oracle for tests/check_lm_eval.sh: causal-LM evaluation loss computed by
Hugging Face transformers (LlamaForCausalLM in float64, HF PEFT for LoRA
adapters) on the token rows of tests/ref_lm_data.py (HF's tokenizer and
apply_chat_template).

  make TOKDIR OUT          a tiny random Llama in HF layout with TOKDIR's
                           tokenizer (SmolLM2's vocabulary of 49152 tokens)
  generate MODEL ADAPTER|- DATA TEMPLATE LIMIT MAX_NEW
                           transformers' greedy generate() of each record's prompt
  loss MODEL DATA FMT MAX_LEN LOSS_ALL [--template T --resp F] [--adapter DIR]
                           {"loss", "perplexity", "targets", "examples", "truncated", "dropped"}
  batch SPEC               several loss cases (one a line, TAB-separated, each with --out FILE)
"""
import argparse, contextlib, io, json, math, os, shutil, sys
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llama_hf  # noqa: E402
import ref_lm_data  # noqa: E402


def make(tokdir, out):
    conf = json.load(open(os.path.join(tokdir, "tokenizer_config.json")))
    tj = json.load(open(os.path.join(tokdir, "tokenizer.json"), encoding="utf-8"))
    V = max(len(tj["model"]["vocab"]), max((t["id"] for t in tj.get("added_tokens", [])), default=0) + 1)
    C, L, NH, NKV, HD, F = 48, 2, 4, 2, 12, 96
    tok = ref_lm_data.tokenizer(tokdir)
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=C, intermediate_size=F,
               num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=1024, vocab_size=V,
               hidden_act="silu", tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, torch_dtype="float32")
    rng = np.random.default_rng(18)
    w = lambda *s, sc=0.2: rng.standard_normal(s) * sc
    t = {"model.embed_tokens.weight": w(V, C, sc=0.5), "model.norm.weight": 1 + w(C, sc=0.1)}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "self_attn.q_proj.weight": w(NH * HD, C), p + "self_attn.k_proj.weight": w(NKV * HD, C),
                  p + "self_attn.v_proj.weight": w(NKV * HD, C), p + "self_attn.o_proj.weight": w(C, NH * HD),
                  p + "mlp.gate_proj.weight": w(F, C), p + "mlp.up_proj.weight": w(F, C),
                  p + "mlp.down_proj.weight": w(C, F),
                  p + "input_layernorm.weight": 1 + w(C, sc=0.1),
                  p + "post_attention_layernorm.weight": 1 + w(C, sc=0.1)})
    make_llama_hf.write(out, cfg, t, 1)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokdir, f), os.path.join(out, f))


def rows(model, data, fmt, max_len, loss_all, template, resp):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ref_lm_data.expect(model, data, fmt, max_len, 0, loss_all, template, resp)
    lines = [json.loads(l) for l in buf.getvalue().splitlines() if l.strip()]
    return lines[:-1], lines[-1]


def loss(a, base=None):
    from transformers import LlamaForCausalLM
    m = base if base is not None else LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float64)
    if a.adapter:
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, a.adapter, torch_dtype=torch.float64)
    m = m.double().eval()
    tmpl = a.template.replace("\\n", "\n") if a.template else None
    rs, info = rows(a.model, a.data, a.fmt, a.max_len, a.loss_all, tmpl, a.resp)
    tot, n = 0.0, 0
    with torch.no_grad():
        for r in rs:
            ids = torch.tensor([r["ids"]])
            lg = m(input_ids=ids).logits[0]
            lp = torch.log_softmax(lg, dim=-1)
            for p in range(len(r["ids"]) - 1):
                if r["target"][p + 1]:
                    tot -= lp[p, r["ids"][p + 1]].item()
                    n += 1
    res = {"loss": tot / n, "perplexity": math.exp(tot / n), "targets": n, "examples": info["examples"],
           "truncated": info["truncated"], "dropped": info["dropped"]}
    if a.adapter:
        m.unload()
    return res


def parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("fmt")
    ap.add_argument("max_len", type=int)
    ap.add_argument("loss_all", type=int)
    ap.add_argument("--template")
    ap.add_argument("--resp")
    ap.add_argument("--adapter")
    ap.add_argument("--out")
    return ap


def batch(spec):
    """Each line of spec: the arguments of one `loss` case (shell words
    separated by TABs) and --out FILE; the base model is loaded once."""
    from transformers import LlamaForCausalLM
    base = None
    for line in open(spec, encoding="utf-8"):
        if not line.strip():
            continue
        a = parser().parse_args(line.rstrip("\n").split("\t"))
        if base is None:
            base = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float64)
        r = loss(a, base)
        json.dump(r, open(a.out, "w"))


def generate(model, adapter, data, template, limit, max_new):
    """Greedy continuations by transformers' generate() of each record's prompt
    (BOS + the template filled), decoded without special tokens."""
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float64)
    if adapter != "-":
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, adapter, torch_dtype=torch.float64)
    m = m.double().eval()
    tok = ref_lm_data.tokenizer(model)
    template = template.replace("\\n", "\n")
    for l in open(data, encoding="utf-8").readlines()[:limit]:
        r = json.loads(l)
        ids = tok(template.format(**r), add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            out = m.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        new = out[0, len(ids):].tolist()
        print(json.dumps({"ids": new, "prediction": tok.decode(new, skip_special_tokens=True)}, ensure_ascii=False))


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "generate":
        generate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
        return
    if sys.argv[1] == "batch":
        batch(sys.argv[2])
        return
    print(json.dumps(loss(parser().parse_args())))


if __name__ == "__main__":
    main()
