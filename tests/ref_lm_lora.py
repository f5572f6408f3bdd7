#!/usr/bin/env python3
"""ref_lm_lora.py: LoRA adapters for a Llama in Hugging Face PEFT's layout,
and the reference logits of the model with them merged (W + s B A), from the
float64 PyTorch Llama of tests/ref_llama.py.

  ref_lm_lora.py adapter MODEL_DIR OUT_DIR --targets q_proj,v_proj --r 4 --alpha 8 [--seed S] [--rslora]
  ref_lm_lora.py logits MODEL_DIR IDS.txt OUT.f32 [--adapter DIR[:SCALE]]...
      every prompt's all-token logits, float32, prompts one after another
"""
import argparse, json, math, os, sys
import numpy as np
import torch
from safetensors.numpy import save_file, load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama  # noqa: E402

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def adapter(a):
    cfg, t = ref_llama.load(a.model)
    rng = np.random.default_rng(a.seed)
    out = {}
    for l in range(cfg["num_hidden_layers"]):
        for m in a.targets.split(","):
            w = t[f"model.layers.{l}.{MODULES[m]}.{m}.weight"]
            o, i = w.shape
            key = f"base_model.model.model.layers.{l}.{MODULES[m]}.{m}"
            out[key + ".lora_A.weight"] = (rng.standard_normal((a.r, i)) / math.sqrt(i)).astype(np.float32)
            # a trained B is not zero: random, large enough to move the logits
            out[key + ".lora_B.weight"] = (rng.standard_normal((o, a.r)) * 0.05).astype(np.float32)
    os.makedirs(a.out, exist_ok=True)
    save_file(out, f"{a.out}/adapter_model.safetensors", metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.r, "lora_alpha": a.alpha,
               "target_modules": a.targets.split(","), "lora_dropout": 0.0, "bias": "none",
               "fan_in_fan_out": False, "use_rslora": a.rslora, "modules_to_save": None,
               "base_model_name_or_path": a.model}, open(f"{a.out}/adapter_config.json", "w"), indent=2)


def logits(a):
    cfg, t = ref_llama.load(a.model)
    for spec in a.adapter or []:
        d, s = (spec.rsplit(":", 1) + ["1"])[:2] if ":" in spec else (spec, "1")
        ac = json.load(open(f"{d}/adapter_config.json"))
        scale = float(s) * (ac["lora_alpha"] / (math.sqrt(ac["r"]) if ac.get("use_rslora") else ac["r"]))
        w = load_file(f"{d}/adapter_model.safetensors")
        for k, A in w.items():
            if not k.endswith(".lora_A.weight"):
                continue
            base = k[len("base_model.model."):-len(".lora_A.weight")] + ".weight"
            B = w[k.replace("lora_A", "lora_B")]
            t[base] = t[base] + scale * (torch.from_numpy(B).double() @ torch.from_numpy(A).double())
    m = ref_llama.Llama(cfg, t)
    with open(a.out, "wb") as f:
        for line in open(a.ids):
            ids = [int(x) for x in line.split()]
            if ids:
                with torch.no_grad():
                    f.write(m.logits(ids).float().numpy().tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["adapter", "logits"])
    ap.add_argument("model")
    ap.add_argument("rest", nargs="+")
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--r", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rslora", action="store_true")
    ap.add_argument("--adapter", action="append")
    a = ap.parse_args()
    if a.cmd == "adapter":
        a.out = a.rest[0]
        adapter(a)
    else:
        a.ids, a.out = a.rest[0], a.rest[1]
        logits(a)


if __name__ == "__main__":
    main()
