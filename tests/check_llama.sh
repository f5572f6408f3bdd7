#!/usr/bin/env bash
# check_llama.sh: peftc's Llama decoder (src/model/llama.c) against the
# independent PyTorch float64 oracle (tests/ref_llama.py):
#   1. the oracle's self-checks (KV cache == full forward, the GGUF permuted-q/k
#      + adjacent-pair RoPE convention == HF's rotate_half, float32 vs float64);
#   2. a tiny random Llama (2 layers, hidden 40, GQA 4:2, head_dim 10, llama3
#      rope scaling, untied lm_head): fp32 HF dir, bf16 in 3 shards, GGUF f32
#      (q/k permuted, rope_freqs tensor), GGUF f16: all-token logits and KV-cache
#      decode <= 1e-3 max abs, greedy 64-token continuations identical;
#   3. SmolLM2-135M-Instruct: the Q4_1 GGUF dequantised into an fp32 HF dir
#      (tests/make_llama_hf.py), 16 real prompts (gsm8k, alpaca, xsum; ids from
#      the GGUF's BPE vocabulary): HF dir <= 1e-3; the GGUF loaded directly with
#      its weights dequantised at load <= 1e-3; the GGUF as stored (quantised
#      matmuls, 8-bit activations) within a looser, stated tolerance;
#   4. bad input: each rejected with one line naming the problem.
# Prints ok/FAIL lines and ends with "## <passed> <failed>"; exit 1 on failure.
# Fixtures go to tests/out/llama (regenerated when missing or older than the
# scripts). Part 3 runs with SMOL=1 only: on this shared 2-core machine one
# fp32 decode step of the 135M model takes ~0.4 s, so it needs minutes (and
# the float64 fixture ~8 minutes once); parts 1, 2 and 4 take seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
O=tests/out/llama
. tests/lib.sh
mkdir -p $O

# stale FILE DEPS...: FILE is missing or older than a dependency
stale() { local f=$1; shift; [ -s "$f" ] || return 0; for d in "$@"; do [ "$d" -nt "$f" ] && return 0; done; return 1; }
run() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -5; bad "fixture step failed: $*"; finish; fi; }
MK=tests/make_llama_hf.py; MG=tests/make_llama_gguf.py; REF=tests/ref_llama.py

# ---- fixtures
fixtures_lock $O
stale $O/tiny/config.json $MK && run "$PY" $MK tiny $O/tiny
stale $O/tiny_sharded/config.json $MK && run "$PY" $MK tiny $O/tiny_sharded --shards 3 --dtype bf16
stale $O/tiny_f16/config.json $MK && run "$PY" $MK tiny $O/tiny_f16 --dtype f16
stale $O/tiny_ids.txt $REF && run "$PY" $REF random $O/tiny_ids.txt --vocab 97
stale $O/fx_tiny/gen.txt $REF $O/tiny/config.json && run "$PY" $REF fixture $O/tiny $O/tiny_ids.txt $O/fx_tiny --ngen 16
stale $O/fx_tiny_sharded/gen.txt $REF $O/tiny_sharded/config.json && run "$PY" $REF fixture $O/tiny_sharded $O/tiny_ids.txt $O/fx_tiny_sharded --ngen 2
stale $O/fx_tiny_f16/gen.txt $REF $O/tiny_f16/config.json && run "$PY" $REF fixture $O/tiny_f16 $O/tiny_ids.txt $O/fx_tiny_f16 --ngen 2
stale $O/tiny.gguf $MG $O/tiny/config.json && run "$PY" $MG $O/tiny $O/tiny.gguf
stale $O/tiny_f16.gguf $MG $O/tiny_f16/config.json && run "$PY" $MG $O/tiny_f16 $O/tiny_f16.gguf --dtype f16
for b in arch missing shape type; do
    stale $O/tiny_$b.gguf $MG $O/tiny/config.json && run "$PY" $MG $O/tiny $O/tiny_$b.gguf --bad $b
done
# bad HF directories: a missing tensor, a wrong shape, an unsupported dtype, rope scaling, architecture
if stale $O/bad_hf/rope/config.json $MK $O/tiny/config.json; then
    run "$PY" - $O <<'PYEOF'
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
o = sys.argv[1]
cfg = json.load(open(f"{o}/tiny/config.json")); t = load_file(f"{o}/tiny/model.safetensors")
def mk(name, c, ts):
    d = f"{o}/bad_hf/{name}"; os.makedirs(d, exist_ok=True)
    json.dump(c, open(f"{d}/config.json", "w")); save_file(ts, f"{d}/model.safetensors")
mk("missing", cfg, {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
mk("shape", cfg, {**t, "model.layers.0.self_attn.k_proj.weight": t["model.layers.0.self_attn.k_proj.weight"][:-2]})
mk("dtype", cfg, {**t, "model.norm.weight": t["model.norm.weight"].astype(np.float64)})
mk("arch", {**cfg, "model_type": "mistral"}, t)
mk("rope", {**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, t)
PYEOF
fi
fixtures_unlock

# ---- 1. the oracle against itself
tally "$("$PY" $REF selfcheck $O/tiny $O/tiny_ids.txt --n 4 2>&1)"

build_driver llama_ref || finish
drv() { local out rc; out=$(timeout 300 build/tests/llama_ref "$@" 2>&1); rc=$?; tally "$out"
        printf '%s\n' "$out" | grep -qE '^## [0-9]+ [0-9]+$' || bad "llama_ref $* exited $rc without a result"; }

# ---- 2. the tiny model
echo "# tiny Llama, fp32 HF directory"; drv $O/tiny $O/tiny_ids.txt $O/fx_tiny 1e-3 16
echo "# tiny Llama, bf16 in 3 shards + index"; drv $O/tiny_sharded $O/tiny_ids.txt $O/fx_tiny_sharded 1e-3 2
echo "# tiny Llama, GGUF f32 (q/k permuted, adjacent-pair RoPE, rope_freqs)"; drv $O/tiny.gguf $O/tiny_ids.txt $O/fx_tiny 1e-3 16
echo "# tiny Llama, GGUF f16 (quant_matmul's f16 path)"; drv $O/tiny_f16.gguf $O/tiny_ids.txt $O/fx_tiny_f16 1e-3 2

# ---- 3. SmolLM2-135M
if [ "${SMOL:-0}" = 1 ]; then
    if [ ! -f $GGUF ]; then bad "$GGUF missing (scripts/fetch_models.sh)"; finish; fi
    stale $O/smol/config.json $MK $GGUF && run "$PY" $MK gguf $GGUF $O/smol
    stale $O/smol_ids.txt $REF $GGUF && run "$PY" $REF prompts $GGUF $O/smol_ids.txt --n 16
    stale $O/fx_smol/gen.txt $REF $O/smol/config.json $O/smol_ids.txt && run "$PY" $REF fixture $O/smol $O/smol_ids.txt $O/fx_smol --ngen 4
    echo "# SmolLM2-135M, fp32 HF directory (dequantised from the GGUF)"
    drv $O/smol $O/smol_ids.txt $O/fx_smol 1e-3 4 4 8
    echo "# SmolLM2-135M, the GGUF with weights dequantised at load"
    LLAMA_REF_DEQUANT=1 drv $GGUF $O/smol_ids.txt $O/fx_smol 1e-3 1 1 8
    # As stored: Q4_1 / Q8_0 weights times activations rounded to Q8_0 (32
    # values per fp16 scale) by quant_matmul. The oracle run with that
    # rounding emulated at every matmul input (ref_llama.py --q8act) moves
    # away from the fp32 oracle by as much (measured: mean abs 0.19, max 3.4,
    # top-1 agreement 96.6%) but does not track peftc's run closely either:
    # where a block holds one of SmolLM2's huge activations its step d is
    # large, and the odd value on the other side of a rounding boundary
    # (fp32 vs float64 inputs) grows chaotically over 30 layers. So the bound
    # is statistical: mean abs <= 0.3, top-1 agreement >= 90% (peftc
    # measured: 0.19, 95.1%), greedy continuations identical on >= 1 of 4.
    echo "# SmolLM2-135M, the GGUF as stored vs the fp32 oracle"
    LLAMA_REF_STAT=${QSTAT:-0.3,0.9} drv $GGUF $O/smol_ids.txt $O/fx_smol 0 4 1 4
fi

# ---- 4. bad input
for b in arch missing shape type; do
    case $b in arch) w="gpt2";; missing) w="blk.1.ffn_up.weight";; shape) w="blk.0.attn_k.weight [40, 18] [40, 20]";;
                type) w="token_embd.weight q2_k";; esac
    drv bad $O/tiny_$b.gguf $w
done
drv bad $O/bad_hf/missing model.layers.1.mlp.up_proj.weight
drv bad $O/bad_hf/shape model.layers.0.self_attn.k_proj.weight "[18, 40]" "[20, 40]"
drv bad $O/bad_hf/dtype model.norm.weight F64
drv bad $O/bad_hf/arch mistral
drv bad $O/bad_hf/rope yarn
drv ctx $O/tiny
finish
