#!/usr/bin/env python3
"""ref_peft_prompt_lm.py: HF PEFT's own prompt learning on a Llama (the
reference implementation, not a re-derivation) against peftc's causal-LM loss,
for tests/check_llama_train.sh.

  ref_peft_prompt_lm.py MODEL_DIR CASE_DIR prefix|prompt|saved
      CASE_DIR is tests/lm_grad's output (params.safetensors with peftc's
      training tensors, batch.json). PEFT's PrefixTuningConfig (with or
      without prefix_projection) or PromptTuningConfig for CAUSAL_LM is
      built on the model in float64, its prompt encoder loaded with peftc's
      tensors, and each row run alone (labels -100 off the targets): the
      target-weighted mean loss must equal peftc's within 1e-6 relative.
      This pins what a hand-written oracle could get wrong the same way as
      peftc: GQA's prefix width, positions after the prefix, where the
      virtual tokens go.
      saved: PeftModel.from_pretrained(CASE_DIR/adapter) instead — the
      adapter peftc saved (folded prompt_embeddings, PEFT's config), loaded
      by PEFT itself, must give the same loss."""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import get_peft_model, PrefixTuningConfig, PromptTuningConfig


def main():
    model_dir, case, kind = sys.argv[1:4]
    torch.set_default_dtype(torch.float64)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    P = load_file(f"{case}/params.safetensors")
    bt = json.load(open(f"{case}/batch.json"))
    proj = "prompt_encoder.transform.0.weight" in P
    if kind == "saved":
        from peft import PeftModel
        pm = PeftModel.from_pretrained(m, f"{case}/adapter").double()
        cfg = pm.peft_config["default"]
        proj = False
    elif kind == "prefix":
        n = (P["prompt_encoder.embedding.weight"] if proj else P["prompt_embeddings"]).shape[0]
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=proj,
                                 encoder_hidden_size=P["prompt_encoder.transform.0.weight"].shape[0] if proj else None)
    else:
        n = P["prompt_embeddings"].shape[0]
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
    if kind != "saved":
        pm = get_peft_model(m, cfg).double()
        enc = pm.prompt_encoder["default"]
        sd = enc.state_dict()
        for k in sd:
            sd[k] = (P["prompt_encoder." + k] if proj else P["prompt_embeddings"]).double()
        enc.load_state_dict(sd)
    B, T = bt["B"], bt["T"]
    ids = torch.tensor(bt["ids"]).view(B, T)
    tg = torch.tensor(bt["target"]).view(B, T)
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for b in range(B):
            L = bt["lens"][b]
            lab = torch.where(tg[b, :L] > 0, ids[b, :L], torch.full((L,), -100))
            out = pm(input_ids=ids[b:b + 1, :L], attention_mask=torch.ones(1, L, dtype=torch.long), labels=lab[None])
            k = int((lab[1:] != -100).sum())
            tot += out.loss.item() * k
            cnt += k
    ref = tot / cnt
    rel = abs(ref - bt["loss"]) / abs(ref)
    good = rel <= 1e-6 and cnt == bt["n_targets"]
    print(f"{'ok  ' if good else 'FAIL'} - PEFT's {type(cfg).__name__} ({'the saved adapter' if kind == 'saved' else f'projection {proj}'}) loss {ref:.8f} vs peftc {bt['loss']:.8f} (rel {rel:.1e}, {cnt} targets)")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
