#!/usr/bin/env python3
"""interop_peft.py: the Python oracles of tests/check_interop.sh (real `peft`,
`transformers`, `torch`, `gguf` from PyPI).

  interop_peft.py lora HF_DIR OUT_DIR --targets q_proj,v_proj --r 4 --alpha 8
                  [--rslora] [--rank-pattern JSON] [--alpha-pattern JSON] [--seed S]
      a LoRA made by peft itself (get_peft_model + save_pretrained) on the
      LlamaForCausalLM of HF_DIR, its lora_A and lora_B set to random nonzero
      values (PEFT's init leaves B = 0, which would test nothing)
  interop_peft.py adalora HF_DIR OUT_DIR --targets q_proj,v_proj,down_proj --init-r 4 --alpha A [--seed S]
      an AdaLoRA made by peft (AdaLoraConfig, get_peft_model, save_pretrained)
      on the LlamaForCausalLM of HF_DIR: random nonzero A, E, B and a
      rank_pattern as RankAllocator.mask_to_budget leaves it (E zeroed where
      a triplet is pruned; one module pruned to rank 0), so save_pretrained
      writes each module at its kept rank
  interop_peft.py ia3 HF_DIR OUT_DIR [--targets k_proj,v_proj,down_proj --ff down_proj] [--seed S]
      an IA3 made by peft (IA3Config, PEFT's Llama defaults unless given),
      each ia3_l set to 1 + random noise
  interop_peft.py merged-logits HF_DIR ADAPTER IDS.txt OUT.f32 [--save DIR]
      the logits of merge_and_unload() (float32); --save writes the merged
      model with save_pretrained
  interop_peft.py hf-logits MODEL_DIR IDS.txt OUT.f32
      the logits of a plain LlamaForCausalLM directory (no adapter code)
  interop_peft.py lora-smol OUT_DIR [--seed S]
      a peft LoRA (rsLoRA, r 8, six targets) for SmolLM2-135M's shapes
  interop_peft.py logits HF_DIR IDS.txt OUT.f32 [--adapter DIR]
      the first prompt's all-token logits (float32) from transformers, with the
      adapter applied unmerged by peft (PeftModel.from_pretrained)
  interop_peft.py check-gguf ADAPTER_DIR FILE.gguf HF_DIR
      reads FILE.gguf with gguf.GGUFReader and checks its metadata and every
      tensor against the PEFT adapter: lora_a = lora_A, lora_b = the q/k rows
      permuted as convert_hf_to_gguf permutes the base, times
      (trained scale) / (adapter.lora.alpha / r)
  interop_peft.py bert MODEL_DIR OUT TEXTS.txt
      PEFT-made adapters for BertForSequenceClassification (2 labels) on the
      tiny BERT, random nonzero weights, each saved to OUT/<kind> with the
      class probabilities of every line of TEXTS.txt in OUT/<kind>.probs:
      lora (PEFT's defaults: query, value; the classifier in modules_to_save),
      ia3 (PEFT's defaults for BERT: key, value, output.dense, which also
      matches attention.output.dense), ia3_ffn (target and feed-forward
      modules as regexes: key, value and the FFN's output.dense only),
      prompt (PROMPT_TUNING, 4 virtual tokens), ptuning (P_TUNING: an MLP
      prompt encoder of width 16, saved folded as PEFT does), adalora (ADALORA init_r 4 on
      query, key, value and the encoder's dense layers, a rank_pattern with a
      module at rank 0, saved cut to the kept ranks), adalora_pooler (targets
      query, value, dense: also the pooler's dense)
  interop_peft.py peft-probs MODEL_DIR TEXTS.txt ADAPTER... 
      each (peftc-written) adapter loaded by PeftModel.from_pretrained on
      BertForSequenceClassification (as many labels as peftc.labels): the
      class probabilities of every line, in ADAPTER/peft.probs
  interop_peft.py gguf-writer FILE.gguf
      checks the writer test file of interop_driver gguf-write
"""
import argparse, json, math, re, sys
import numpy as np


def lora(a):
    import torch
    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(a.seed)
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, target_modules=a.targets.split(","), use_rslora=a.rslora,
                     rank_pattern=json.loads(a.rank_pattern), alpha_pattern=json.loads(a.alpha_pattern),
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = get_peft_model(m, cfg)
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(a.out)


def adalora(a):
    import torch
    from transformers import LlamaForCausalLM
    from peft import AdaLoraConfig, get_peft_model
    torch.manual_seed(a.seed)
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    cfg = AdaLoraConfig(task_type="CAUSAL_LM", init_r=a.init_r, target_r=max(1, a.init_r // 2), lora_alpha=a.alpha,
                        target_modules=a.targets.split(","), total_step=100, tinit=10, tfinal=10, lora_dropout=0.0)
    pm = get_peft_model(m, cfg)
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    adalora_prune(pm, g)
    pm.save_pretrained(a.out)


def adalora_prune(pm, g):
    """A rank_pattern as RankAllocator.mask_to_budget leaves one: E zeroed
    where a triplet is pruned, the pattern in the config (save_pretrained then
    cuts every module to its kept rank); the second module pruned to rank 0,
    the first kept whole."""
    import torch
    pattern = {}
    with torch.no_grad():
        es = [(n, p) for n, p in pm.named_parameters() if ".lora_E." in n]
        for i, (n, p) in enumerate(es):
            keep = torch.rand(p.shape[0], generator=g) < 0.6
            if i == 1:
                keep[:] = False
            elif i == 0:
                keep[:] = True
            elif not keep.any():
                keep[0] = True
            p.masked_fill_(~keep.view(-1, 1), 0.0)
            # RankAllocator's names: the parameter below the PeftModel wrapper, adapter name dropped on save
            pattern[n[len("base_model.model."):].replace(".default", "")] = keep.tolist()
    pm.peft_config["default"].rank_pattern = pattern


def ia3(a):
    import torch
    from transformers import LlamaForCausalLM
    from peft import IA3Config, get_peft_model
    torch.manual_seed(a.seed)
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    kw = {}
    if a.targets:
        kw = {"target_modules": a.targets.split(","), "feedforward_modules": a.ff.split(",") if a.ff else []}
    pm = get_peft_model(m, IA3Config(task_type="CAUSAL_LM", **kw))
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "ia3_l" in n:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.5)
    pm.save_pretrained(a.out)


def merged_logits(a):
    import torch
    from transformers import LlamaForCausalLM
    from peft import PeftModel
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    m = PeftModel.from_pretrained(m, a.adapter).merge_and_unload()
    m.eval()
    ids = [int(x) for x in open(a.ids).readline().split()]
    with torch.no_grad():
        m(input_ids=torch.tensor([ids])).logits[0].numpy().astype(np.float32).tofile(a.out)
    if a.save:
        m.save_pretrained(a.save)


def hf_logits(a):
    import torch
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32, output_loading_info=True)
    m, info = m
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        print(f"{a.hf}: {bad}")
        sys.exit(1)
    m.eval()
    ids = [int(x) for x in open(a.ids).readline().split()]
    with torch.no_grad():
        m(input_ids=torch.tensor([ids])).logits[0].numpy().astype(np.float32).tofile(a.out)


def lora_smol(a):
    """A peft LoRA for SmolLM2-135M's shapes (the base's weights do not matter
    to the adapter file: a random-init LlamaForCausalLM of its config), small
    random factors so the adapted model still writes text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, head_dim=64, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, use_rslora=True, task_type="CAUSAL_LM",
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    pm.save_pretrained(a.out)


def logits(a):
    import torch
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    if a.adapter:
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, a.adapter)
    m.eval()
    ids = [int(x) for x in open(a.ids).readline().split()]
    with torch.no_grad():
        out = m(input_ids=torch.tensor([ids])).logits[0]
    out.numpy().astype(np.float32).tofile(a.out)


def field(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    return f.contents()


def perm(w, n):
    o, i = w.shape
    return w.reshape(n, 2, o // n // 2, i).swapaxes(1, 2).reshape(o, i)


GG = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
      "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def pattern(pat, mod, default):
    # peft.utils.other.get_pattern_key
    for k, v in pat.items():
        if re.match(rf"(.*\.)?({k})$", mod):
            return v
    return default


def check_gguf(a):
    from gguf import GGUFReader
    from safetensors.numpy import load_file
    cfg = json.load(open(f"{a.adapter}/adapter_config.json"))
    hf = json.load(open(f"{a.hf}/config.json"))
    st = load_file(f"{a.adapter}/adapter_model.safetensors")
    r = GGUFReader(a.gguf)
    fails = []
    for k, want in [("general.type", "adapter"), ("adapter.type", "lora"), ("general.architecture", "llama")]:
        if field(r, k) != want:
            fails.append(f"{k} = {field(r, k)!r}, want {want!r}")
    galpha = field(r, "adapter.lora.alpha")
    if r.fields["adapter.lora.alpha"].types[0].name != "FLOAT32":
        fails.append("adapter.lora.alpha is not float32")
    tensors = {t.name: t for t in r.tensors}
    seen = set()
    maxd = 0.0
    for key, A in st.items():
        mm = re.match(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_A\.weight$", key)
        if not mm:
            continue
        l, mod = int(mm.group(1)), mm.group(3)
        B = st[key.replace("lora_A", "lora_B")].astype(np.float64)
        mpath = f"model.layers.{l}.{mm.group(2)}.{mod}"
        rr = pattern(cfg.get("rank_pattern") or {}, mpath, cfg["r"])
        al = pattern(cfg.get("alpha_pattern") or {}, mpath, cfg["lora_alpha"])
        s = al / math.sqrt(rr) if cfg.get("use_rslora") else al / rr
        if mod == "q_proj":
            B = perm(B, hf["num_attention_heads"])
        elif mod == "k_proj":
            B = perm(B, hf["num_key_value_heads"])
        Bw = B * s / (galpha / rr)
        name = f"blk.{l}.{GG[mod]}.weight"
        ta, tb = tensors.get(name + ".lora_a"), tensors.get(name + ".lora_b")
        if ta is None or tb is None:
            fails.append(f"{name}.lora_a/b missing")
            continue
        seen |= {ta.name, tb.name}
        # GGUFReader shapes are ggml ne (ne[0] first); data is numpy row-major
        if list(ta.shape) != [A.shape[1], A.shape[0]] or list(tb.shape) != [B.shape[1], B.shape[0]]:
            fails.append(f"{name}: ne {list(ta.shape)} / {list(tb.shape)} for A {A.shape} B {B.shape}")
            continue
        da = np.abs(ta.data.reshape(A.shape) - A).max()
        db = np.abs(tb.data.reshape(B.shape) - Bw).max() / max(1e-30, np.abs(Bw).max())
        maxd = max(maxd, float(da), float(db))
        if da > 0 or db > 1e-6:
            fails.append(f"{name}: lora_a differs by {da:.2e}, lora_b by {db:.2e} (relative)")
    extra = set(tensors) - seen
    if extra:
        fails.append(f"tensors not in the source: {sorted(extra)[:3]}")
    if fails:
        print("; ".join(fails[:4]))
        sys.exit(1)
    print(f"{len(seen)} tensors equal the source (max diff {maxd:.1e}), adapter.lora.alpha {galpha}")


def bert(a):
    import os, torch
    from transformers import BertForSequenceClassification, BertTokenizer
    from peft import AdaLoraConfig, LoraConfig, IA3Config, PromptEncoderConfig, PromptTuningConfig, get_peft_model
    texts = [l.rstrip("\n") for l in open(a.texts) if l.strip()]
    tok = BertTokenizer(f"{a.model}/vocab.txt", do_lower_case=True)
    enc = tok(texts, padding=True, return_tensors="pt")
    kinds = {
        "lora": lambda: LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8),
        "ia3": lambda: IA3Config(task_type="SEQ_CLS"),
        "ia3_ffn": lambda: IA3Config(task_type="SEQ_CLS", target_modules=r".*\.(key|value|\d+\.output\.dense)$",
                                     feedforward_modules=r".*\.\d+\.output\.dense$"),
        "prompt": lambda: PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        "ptuning": lambda: PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16),
        "adalora": lambda: AdaLoraConfig(task_type="SEQ_CLS", init_r=4, target_r=2, lora_alpha=6, total_step=100,
                                         tinit=10, tfinal=10, target_modules=r".*encoder.*\.(query|key|value|dense)$"),
        # "dense" as a name also matches the pooler's layer, which peftc does not adapt
        "adalora_pooler": lambda: AdaLoraConfig(task_type="SEQ_CLS", init_r=4, target_r=2, total_step=100,
                                                tinit=10, tfinal=10, target_modules=["query", "value", "dense"]),
    }
    for i, (kind, mk) in enumerate(kinds.items()):
        torch.manual_seed(10 + i)
        m = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)
        pm = get_peft_model(m, mk())
        g = torch.Generator().manual_seed(20 + i)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                # AdaLoRA's ranknum (init_r, not saved: PEFT 0.21 marks it trainable) stays
                if p.requires_grad and "ranknum" not in n:
                    p.copy_((1.0 if "ia3" in n else 0.0) + torch.randn(p.shape, generator=g) * 0.3)
        if kind.startswith("adalora"):
            adalora_prune(pm, g)
        pm.eval()
        with torch.no_grad():
            pr = torch.softmax(pm(**enc).logits, -1)
        pm.save_pretrained(f"{a.out}/{kind}")
        np.savetxt(f"{a.out}/{kind}.probs", pr.numpy(), fmt="%.8f")


def peft_probs(a):
    import torch
    from transformers import BertForSequenceClassification, BertTokenizer
    from peft import PeftModel
    texts = [l.rstrip("\n") for l in open(a.texts) if l.strip()]
    tok = BertTokenizer(f"{a.model}/vocab.txt", do_lower_case=True)
    enc = tok(texts, padding=True, return_tensors="pt")
    for d in a.adapters:
        cfg = json.load(open(f"{d}/adapter_config.json"))
        m = BertForSequenceClassification.from_pretrained(a.model, num_labels=len(cfg["peftc"]["labels"]))
        pm = PeftModel.from_pretrained(m, d)
        pm.eval()
        with torch.no_grad():
            pr = torch.softmax(pm(**enc).logits, -1)
        np.savetxt(f"{d}/peft.probs", pr.numpy(), fmt="%.8f")


def gguf_writer(a):
    from gguf import GGUFReader
    r = GGUFReader(a.gguf)
    want = {"general.architecture": "llama", "t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000,
            "t.u32": 4000000000, "t.i32": -2000000000, "t.u64": 18000000000000000000,
            "t.i64": -9000000000000000000, "t.f32": 0.125, "t.f64": 3.141592653589793, "t.bool": True,
            "t.str": 'h\u00e9llo "w"\n', "t.empty": "", "t.arr_i32": [1, -2, 3, -4, 5],
            "t.arr_f32": [0.5, -1.5, 2.25], "t.arr_bool": [True, False, True, True], "t.arr_empty": [],
            "t.arr_str": ["a", "", "\u20ac"], "general.alignment": 64}
    types = {"t.u8": "UINT8", "t.i8": "INT8", "t.u16": "UINT16", "t.i16": "INT16", "t.u32": "UINT32",
             "t.i32": "INT32", "t.u64": "UINT64", "t.i64": "INT64", "t.f32": "FLOAT32", "t.f64": "FLOAT64",
             "t.bool": "BOOL", "t.str": "STRING"}
    fails = [f"{k}: {field(r, k)!r} != {v!r}" for k, v in want.items() if field(r, k) != v]
    fails += [f"{k} has type {r.fields[k].types[0].name}" for k, v in types.items() if r.fields[k].types[0].name != v]
    t = {x.name: x for x in r.tensors}
    if r.alignment != 64:
        fails.append(f"alignment {r.alignment}")
    for x in r.tensors:
        if (x.data_offset % 64) != 0:
            fails.append(f"{x.name} at {x.data_offset}, not 64-aligned")
    a_ = np.arange(15, dtype=np.float32) * 0.5 - 3
    if not (list(t["a.weight"].shape) == [5, 3] and np.array_equal(t["a.weight"].data.ravel(), a_)):
        fails.append("a.weight")
    if not np.array_equal(t["b.bias"].data.ravel(), np.arange(7, dtype=np.float32)):
        fails.append("b.bias")
    if not (t["h.weight"].data.dtype == np.float16 and np.array_equal(t["h.weight"].data.ravel().astype(np.float32), np.arange(8) - 4.0)):
        fails.append("h.weight")
    from gguf.quants import dequantize
    q = dequantize(t["q.weight"].data, t["q.weight"].tensor_type).ravel()
    if not np.array_equal(q, (np.arange(32) - 16) * 0.5):
        fails.append(f"q.weight dequantises to {q[:4]}")
    if fails:
        print("; ".join(fails[:5]))
        sys.exit(1)
    print(f"{len(want)} keys of every type and {len(t)} tensors (f32, f16, q8_0) read back equal, 64-aligned")


def main():
    ap = argparse.ArgumentParser()
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("lora"); p.add_argument("hf"); p.add_argument("out")
    p.add_argument("--targets", default="q_proj,v_proj"); p.add_argument("--r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8); p.add_argument("--rslora", action="store_true")
    p.add_argument("--rank-pattern", default="{}"); p.add_argument("--alpha-pattern", default="{}")
    p.add_argument("--seed", type=int, default=0)
    p = sp.add_parser("adalora"); p.add_argument("hf"); p.add_argument("out")
    p.add_argument("--targets", default="q_proj,v_proj"); p.add_argument("--init-r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8); p.add_argument("--seed", type=int, default=0)
    p = sp.add_parser("ia3"); p.add_argument("hf"); p.add_argument("out")
    p.add_argument("--targets"); p.add_argument("--ff"); p.add_argument("--seed", type=int, default=0)
    p = sp.add_parser("merged-logits"); p.add_argument("hf"); p.add_argument("adapter"); p.add_argument("ids"); p.add_argument("out")
    p.add_argument("--save")
    p = sp.add_parser("hf-logits"); p.add_argument("hf"); p.add_argument("ids"); p.add_argument("out")
    p = sp.add_parser("logits"); p.add_argument("hf"); p.add_argument("ids"); p.add_argument("out"); p.add_argument("--adapter")
    p = sp.add_parser("check-gguf"); p.add_argument("adapter"); p.add_argument("gguf"); p.add_argument("hf")
    p = sp.add_parser("gguf-writer"); p.add_argument("gguf")
    p = sp.add_parser("lora-smol"); p.add_argument("out"); p.add_argument("--seed", type=int, default=0)
    p = sp.add_parser("peft-probs"); p.add_argument("model"); p.add_argument("texts"); p.add_argument("adapters", nargs="+")
    p = sp.add_parser("bert"); p.add_argument("model"); p.add_argument("out"); p.add_argument("texts")
    a = ap.parse_args()
    {"lora": lora, "logits": logits, "check-gguf": check_gguf, "gguf-writer": gguf_writer, "bert": bert, "peft-probs": peft_probs, "lora-smol": lora_smol,
     "adalora": adalora, "ia3": ia3, "merged-logits": merged_logits, "hf-logits": hf_logits}[a.cmd](a)


if __name__ == "__main__":
    main()
