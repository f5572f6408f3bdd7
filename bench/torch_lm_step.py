#!/usr/bin/env python3
"""PyTorch + HF transformers + HF peft side of bench/lm_train.sh: LoRA training
steps of a Llama-family causal LM on the same token rows peftc trains on.

  torch_lm_step.py MODEL_DIR ROWS.json PRECISION R ALPHA TARGETS STEPS THREADS [LR]

MODEL_DIR: an HF directory (config.json, model.safetensors); ROWS.json: a list
of token-id rows, all of one length T (bench/lm_train.sh tokenises them with
the model's tokenizer.json, the ids peftc's own tokenizer gives, and writes
them), taken B at a time (B = len(rows) / STEPS). PRECISION fp32 | bf16
(torch.autocast("cpu", dtype=torch.bfloat16) around forward and loss, master
weights fp32 as usual). A step: zero the gradients, forward, the mean
next-token cross-entropy over every token (labels = input ids, as
transformers shifts them), backward, clip the global norm at 1.0, AdamW (lr
LR, weight decay 0.01) on the LoRA tensors only (PEFT freezes the rest).
LoRA: PEFT's LoraConfig(r, lora_alpha, target_modules, lora_dropout=0).
PRECISION may end in -ckpt: transformers' gradient checkpointing
(gradient_checkpointing_enable(use_reentrant=False), the inputs' gradient
enabled as PEFT does for it), each decoder layer recomputed in the backward.
Prints one JSON line: per-step seconds, the losses, tokens per step."""
import json
import sys
import time

import torch


def main():
    model_dir, rows_path, prec = sys.argv[1], sys.argv[2], sys.argv[3]
    r, alpha, targets = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    steps, threads = int(sys.argv[7]), int(sys.argv[8])
    lr = float(sys.argv[9]) if len(sys.argv) > 9 else 5e-4
    ckpt = prec.endswith("-ckpt")
    prec = prec[:-5] if ckpt else prec
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    rows = json.load(open(rows_path))
    B = len(rows) // steps
    T = len(rows[0])
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    tm = "all-linear" if targets == "all-linear" else targets.split(",")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=tm, lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    times, losses = [], []
    for s in range(steps):
        ids = torch.tensor(rows[s * B:(s + 1) * B], dtype=torch.long)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if prec == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    print(json.dumps({"side": "torch", "precision": prec, "checkpointing": ckpt, "B": B, "T": T, "tokens_per_step": B * T,
                      "step_seconds": times, "losses": losses,
                      "trainable": sum(p.numel() for p in params),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
