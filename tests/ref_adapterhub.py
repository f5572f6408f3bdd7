#!/usr/bin/env python3
"""AdapterHub's `adapters` (1.3.0, run from the test venv: transformers 4.57)
as the oracle of peftc's AdapterHub format (tests/check_adapterhub.sh).

  logits MODEL SENTENCES AHUB_DIR OUT.f32 [AHUB_DIR OUT.f32 ...]
      model.load_adapter(AHUB_DIR, use_safetensors=True) with its head on
      MODEL (AutoAdapterModel, loaded anew for each), set active; fp32 logits
      of each sentence (one a line) to OUT.f32 (rows of num_labels floats).
  make MODEL SEED [--pickle] KIND OUT [KIND OUT ...]
      an adapter and classification head made by adapters itself (add_adapter
      + add_classification_head, 3 labels), every adapter and head tensor
      replaced by random nonzero values (up projections too, so the adapter
      changes the output), saved with save_adapter(OUT, name, with_head=True,
      use_safetensors=True) (--pickle: use_safetensors=False).
      KIND: seq (Pfeiffer form: BnConfig, output_adapter, relu, original_ln_before
      false), double (double_seq_bn), par (par_bn, scaling 4), learned (par_bn,
      scaling "learned"), seq_default (seq_bn as shipped: original_ln_before true),
      lora (LoRAConfig r 4 alpha 6: query, value), lora_all (r 3 alpha 5: query,
      key, value, intermediate.dense, output.dense), ia3 (IA3Config as shipped:
      key, value, intermediate.dense; vectors 1 + noise), ia3_all (IA3Config
      alpha 2 on query, key, value, intermediate.dense, output.dense), prompt
      (PromptTuningConfig, 3 tokens).
  compare A.f32 B.f32 K
      max abs difference of the logits centred per row (peftc predict gives
      probabilities: their logs are the logits up to a per-row constant)."""
import sys
import numpy as np


def load_model(model):
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer
    m = AutoAdapterModel.from_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)
    return m, tok


def run_logits(m, tok, sents):
    import torch
    m.eval()
    rows = []
    with torch.no_grad():
        for s in sents:
            enc = tok(s, return_tensors="pt")
            out = m(**enc)
            rows.append(out.logits[0].double().numpy())
    return np.array(rows)


def cmd_logits(model, sents_path, ahub, out):
    m, tok = load_model(model)
    name = m.load_adapter(ahub, with_head=True, use_safetensors=True)
    m.set_active_adapters(name)
    sents = [l.rstrip("\n") for l in open(sents_path) if l.strip()]
    lg = run_logits(m, tok, sents)
    lg.astype(np.float32).tofile(out)
    print(f"{len(sents)} sentences, {lg.shape[1]} labels, adapter {name}")


def cmd_make(model, out, kind, seed, pickle=False):
    import torch
    from adapters import BnConfig, DoubleSeqBnConfig, IA3Config, LoRAConfig, ParBnConfig, PromptTuningConfig, SeqBnConfig
    m, _ = load_model(model)
    cfg = {"seq": BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=8, non_linearity="relu", original_ln_before=False),
           "double": DoubleSeqBnConfig(reduction_factor=8),
           "par": ParBnConfig(reduction_factor=4),
           "learned": ParBnConfig(reduction_factor=4, scaling="learned", non_linearity="gelu"),
           "seq_default": SeqBnConfig(reduction_factor=8),
           "lora": LoRAConfig(r=4, alpha=6),
           "lora_all": LoRAConfig(r=3, alpha=5, attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True),
           "ia3": IA3Config(),
           "ia3_all": IA3Config(alpha=2, attn_matrices=["q", "k", "v"], output_lora=True),
           "prompt": PromptTuningConfig(prompt_length=3)}[kind]
    name = f"ah_{kind}"
    m.add_adapter(name, config=cfg)
    m.add_classification_head(name, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for pn, p in m.named_parameters():
            if any(f"{w}.{name}." in pn for w in ("adapters", "loras", "prompt_tunings", "heads")):
                if pn.endswith("scaling"):
                    p.fill_(1.7)
                elif kind.startswith("ia3"):   # (IA)^3 vectors scale: keep them near 1
                    p.copy_(1 + torch.randn(p.shape, generator=g) * 0.3)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                n += 1
    m.save_adapter(out, name, with_head=True, use_safetensors=not pickle)
    print(f"{name}: {n} tensors randomised, saved to {out}")


def cmd_compare(a, b, k):
    k = int(k)
    x = np.fromfile(a, dtype=np.float32).astype(np.float64)
    y = np.fromfile(b, dtype=np.float32).astype(np.float64)
    if x.size == 0 or x.shape != y.shape or x.size % k:
        print(f"shape {x.shape} vs {y.shape}")
        sys.exit(1)
    x = x.reshape(-1, k); y = y.reshape(-1, k)
    x -= x.mean(1, keepdims=True); y -= y.mean(1, keepdims=True)
    print(f"{np.abs(x - y).max():.2e}")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "logits":
        for i in range(3, len(a), 2): cmd_logits(a[1], a[2], a[i], a[i + 1])
    elif a[0] == "make":
        pk = "--pickle" in a
        rest = [x for x in a[3:] if x != "--pickle"]
        for i in range(0, len(rest), 2): cmd_make(a[1], rest[i + 1], rest[i], int(a[2]), pk)
    elif a[0] == "compare": cmd_compare(*a[1:4])
    else: sys.exit(f"unknown command {a[0]}")
