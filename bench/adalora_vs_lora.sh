#!/usr/bin/env bash
# AdaLoRA against LoRA at the same final parameter budget on SST-2
# (all-MiniLM-L6-v2, every linear layer of every block): LoRA r 8 against
# AdaLoRA init_r 12 pruned to an average target_r 8 (tinit 10% of the steps,
# tfinal 20%, deltaT 10), the same lr, alpha, seed, batches. Prints dev
# accuracy, the saved parameter counts and AdaLoRA's learned rank per layer
# and matrix (from its rank_pattern).
#   bench/adalora_vs_lora.sh [STEPS]      (default 400)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}
DATA=${DATA:-../shared/data/glue-sst2}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
OUT=${OUT:-runs/adalora-vs-lora-$STEPS}
TARGETS=query,key,value,attention.output.dense,intermediate.dense,output.dense
make -s >/dev/null
mkdir -p "$OUT"
common=(--model "$MODEL" --train "$DATA/train.tsv" --eval "$DATA/dev.tsv" --target-modules "$TARGETS" --alpha 16
        --lr 2e-3 --bucket --max-steps "$STEPS" --batch 32 --seed 42)
[ -f "$OUT/lora/metrics.json" ] || PEFTC_BF16=0 ./peftc train "${common[@]}" --method lora --r 8 --out "$OUT/lora" 2> "$OUT/lora.log"
[ -f "$OUT/adalora/metrics.json" ] || PEFTC_BF16=0 ./peftc train "${common[@]}" --method adalora --init-r 12 --target-r 8 \
    --tinit $((STEPS / 10)) --tfinal $((STEPS / 5)) --delta-t 10 --out "$OUT/adalora" 2> "$OUT/adalora.log"
/usr/bin/python3 - "$OUT" <<'PY'
import json, re, sys
from safetensors.numpy import load_file
out = sys.argv[1]
for m in ("lora", "adalora"):
    mj = json.load(open(f"{out}/{m}/metrics.json"))
    saved = load_file(f"{out}/{m}/adapter_model.safetensors")
    n = sum(v.size for k, v in saved.items() if "lora_" in k)
    print(f"{m}: SST-2 dev accuracy {100 * mj['eval_accuracy']:.2f}, adapter values saved {n:,} (without the head), "
          f"{mj['train_tokens_per_s']:.0f} tokens/s, {mj['train_seconds']:.0f} s")
rp = json.load(open(f"{out}/adalora/adapter_config.json"))["rank_pattern"]
mods = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"]
layers = sorted({int(re.search(r"layer\.(\d+)\.", k).group(1)) for k in rp})
print("| layer | " + " | ".join(("q", "k", "v", "attn.o", "ffn.in", "ffn.down")) + " | sum |")
print("|---" * (len(mods) + 2) + "|")
col = [0] * len(mods)
for l in layers:
    row = [sum(rp.get(f"bert.encoder.layer.{l}.{m}.lora_E", [])) for m in mods]
    col = [a + b for a, b in zip(col, row)]
    print(f"| {l} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
print("| all | " + " | ".join(map(str, col)) + f" | {sum(col)} |")
PY
