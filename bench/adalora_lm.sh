#!/usr/bin/env bash
# AdaLoRA against LoRA at the same final parameter budget on a causal-LM
# task: SmolLM2-135M (the HF F32 directory bench/lm_train.sh makes from the
# shipped GGUF) on GSM8K train, every linear layer of every block: LoRA r 8
# against AdaLoRA init_r 12 pruned to an average target_r 8 (tinit 10% of the
# steps, tfinal 20%, deltaT 5), the same lr, alpha, seed, batches. Prints the
# held-out loss before and after (the first EVAL GSM8K test problems), the
# saved adapter values, tokens/s, and AdaLoRA's learned rank per layer and
# matrix (from its rank_pattern), summed by matrix and by layer third.
#   bench/adalora_lm.sh [STEPS]      (default 60)
# Environment: EVAL (64) OUT (runs/adalora-lm-STEPS) PEFTC_BF16 (the default if unset)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
EVAL=${EVAL:-64}
HF=build/bench/lm/smol_f32
OUT=${OUT:-runs/adalora-lm-$STEPS}
[ -f "$HF/model.safetensors" ] || { echo "adalora_lm.sh: $HF missing (run bench/lm_train.sh once)" >&2; exit 1; }
make -s >/dev/null
mkdir -p "$OUT"
head -n "$EVAL" ../shared/data/gsm8k/test.jsonl > "$OUT/eval.jsonl"
common=(--model "$HF" --train ../shared/data/gsm8k/train.jsonl --eval "$OUT/eval.jsonl"
        --prompt-template $'Question: {question}\nAnswer:' --response-field answer --max-len 256 --batch 4
        --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --alpha 16 --lr 1e-3 --max-steps "$STEPS" --seed 42)
[ -f "$OUT/lora/metrics.json" ] || ./peftc train "${common[@]}" --method lora --r 8 --out "$OUT/lora" 2> "$OUT/lora.log"
[ -f "$OUT/adalora/metrics.json" ] || ./peftc train "${common[@]}" --method adalora --init-r 12 --target-r 8 \
    --tinit $((STEPS / 10)) --tfinal $((STEPS / 5)) --delta-t 5 --out "$OUT/adalora" 2> "$OUT/adalora.log"
/usr/bin/python3 - "$OUT" <<'PY'
import json, re, sys
from safetensors.numpy import load_file
out = sys.argv[1]
for m in ("lora", "adalora"):
    mj = json.load(open(f"{out}/{m}/metrics.json"))
    saved = load_file(f"{out}/{m}/adapter_model.safetensors")
    n = sum(v.size for k, v in saved.items() if "lora_" in k)
    h = mj["eval"]
    print(f"{m}: held-out loss {h[0]['loss']:.4f} -> {mj['eval_loss']:.4f} (perplexity {mj['eval_perplexity']:.3f}), "
          f"adapter values saved {n:,}, {mj['train_tokens_per_s']:.0f} tokens/s, {mj['train_seconds']:.0f} s")
rp = json.load(open(f"{out}/adalora/adapter_config.json"))["rank_pattern"]
mods = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
layers = sorted({int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in rp})
print("\n| layer | " + " | ".join(("q", "k", "v", "o", "gate", "up", "down")) + " | sum |")
print("|---" * (len(mods) + 2) + "|")
col = [0] * len(mods)
thirds = [0, 0, 0]
for l in layers:
    row = [sum(rp.get(f"model.layers.{l}.{m}.lora_E", [])) for m in mods]
    col = [a + b for a, b in zip(col, row)]
    thirds[min(2, 3 * l // len(layers))] += sum(row)
    print(f"| {l} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
print("| all | " + " | ".join(map(str, col)) + f" | {sum(col)} |")
att, ffn = sum(col[:4]), sum(col[4:])
print(f"\nattention (q,k,v,o) {att} of {12 * 4 * len(layers)} initial, FFN (gate,up,down) {ffn} of {12 * 3 * len(layers)}; "
      f"by layer third (bottom, middle, top): {thirds}")
PY
