#!/usr/bin/env bash
# check_llama_train.sh: the Llama family's training forward/backward and the
# causal-LM task (tests/lm_grad.c through the library) against float64
# autograd (tests/ref_llama_train.py): loss (<= 1e-5 rel) and every trainable
# gradient (<= 1e-4 of the tensor's scale) of
#   - the tiny random Llama (HF layout, GQA 4:2, llama3 RoPE, untied head):
#     LoRA q,v; rsLoRA on q,k,down; all-linear LoRA; (IA)^3; full fine-tuning
#     (every linear weight and norm); all-linear LoRA on packed rows (two
#     segments in a row: attention within each, positions restarting);
#     the bottleneck adapters, prefix tuning (MLP or not; packed), P-tuning
#     v2, prompt tuning, P-tuning (MLP encoder), MAM; the prompt-learning
#     losses also against HF PEFT's own PrefixTuning / PromptTuning models
#     (tests/ref_peft_prompt_lm.py);
#   - the same weights as a GGUF F32 file (ggml's interleaved RoPE and
#     permuted q/k rows): LoRA on v, o, gate, up, down, packed;
#   - 1 and 2 threads: the same bits;
#   - with SMOL=1: SmolLM2-135M (30 layers) dequantised to an HF directory in
#     F32 (<= 1e-4), and its Q4_1 GGUF kept quantised (8-bit activations
#     emulated in the oracle: loss <= 1e-3 rel, relative L2 error of all
#     gradients <= 1e-1, see ref_llama_train.py).
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
O=tests/out/llama_train
mkdir -p "$O"
export OMP_WAIT_POLICY=PASSIVE
build_driver lm_grad || finish
[ -f "$O/tiny/config.json" ] || "$PY" tests/make_llama_hf.py tiny "$O/tiny" >/dev/null 2>"$O/e" || { bad "make_llama_hf: $(tail -1 "$O/e")"; finish; }
[ -f "$O/tiny.gguf" ] || "$PY" tests/make_llama_gguf.py "$O/tiny" "$O/tiny.gguf" >/dev/null 2>"$O/e" || { bad "make_llama_gguf: $(tail -1 "$O/e")"; finish; }
case_() { # name model oracle-model method r alpha rslora targets pack [--q8]
    local name=$1 model=$2 ref=$3; shift 3
    local d="$O/$name"; rm -rf "$d"; mkdir -p "$d"
    if ! build/tests/lm_grad "$model" "$1" "$d" "$2" "$3" "$4" "$5" "$6" 2 >"$d/log" 2>&1; then bad "$name: $(head -1 "$d/log")"; return; fi
    tally "$("$PY" tests/ref_llama_train.py compare "$ref" "$d" "$2" "$3" "$4" "${@:7}" 2>&1 | sed "s/^\(ok  \|FAIL\) - /\1 - $name: /")"
}
T=$O/tiny
case_ lora_qv "$T" "$T" lora 4 8 0 q_proj,v_proj 0
case_ rslora "$T" "$T" lora 8 16 1 q_proj,k_proj,down_proj 0
case_ all_linear "$T" "$T" lora 4 8 0 all-linear 0
case_ ia3 "$T" "$T" ia3 0 0 0 - 0
case_ full "$T" "$T" full 0 0 0 - 0
# the bottleneck adapters (the presets as `peftc methods` describes them)
case_ houlsby "$T" "$T" adapter-houlsby 0 0 0 - 0 --adapters attn.out:sequential:silu:add,ffn.out:sequential:silu:add
case_ pfeiffer "$T" "$T" adapter-pfeiffer 0 0 0 - 1 --adapters ffn.out:sequential:relu:add
case_ parallel "$T" "$T" parallel-adapter 0 0 0 - 0 --adapters ffn.out:parallel:relu:add
case_ scaled_parallel "$T" "$T" scaled-parallel-adapter 0 0 0 - 1 --adapters ffn.out:parallel:relu:scale:4
# prefix keys/values (with and without the MLP), packed too; virtual tokens; MAM (prefix + scaled parallel adapter)
case_ prefix "$T" "$T" prefix 0 0 0 - 0
case_ prefix_packed "$T" "$T" prefix 0 0 0 - 1
case_ ptuning_v2 "$T" "$T" ptuning-v2 0 0 0 - 0
case_ prompt "$T" "$T" prompt 0 0 0 - 0
case_ ptuning "$T" "$T" ptuning 0 0 0 - 0
case_ mam "$T" "$T" mam 0 0 0 - 1 --adapters ffn.out:parallel:relu:scale:4
case_ prefix_gguf "$O/tiny.gguf" "$T" ptuning-v2 0 0 0 - 0 --gguf-keys
# ... and HF PEFT's own PrefixTuning / PromptTuning models give the same loss
# and the adapters peftc saves (folded prompt_embeddings; a GGUF base's prefix keys back in HF's order) load in PEFT with that loss
for c in prefix:prefix ptuning_v2:prefix prompt:prompt prefix:saved ptuning_v2:saved prompt:saved ptuning:saved prefix_gguf:saved; do
    tally "$("$PY" tests/ref_peft_prompt_lm.py "$T" "$O/${c%%:*}" "${c##*:}" 2>&1 | grep -E '^(ok  |FAIL) - ' | sed "s/^\(ok  \|FAIL\) - /\1 - ${c%%:*}: /" || echo "FAIL - ${c%%:*}: PEFT oracle gave no result")"
done
case_ packed "$T" "$T" lora 4 8 0 all-linear 1
case_ gguf_f32 "$O/tiny.gguf" "$T" lora 4 8 0 v_proj,o_proj,gate_proj,up_proj,down_proj 1
# 1 and 2 threads: the same bits
mkdir -p "$O/t1" "$O/t2"
build/tests/lm_grad "$T" lora "$O/t1" 4 8 0 all-linear 1 1 >/dev/null 2>&1 && build/tests/lm_grad "$T" lora "$O/t2" 4 8 0 all-linear 1 2 >/dev/null 2>&1 &&
    cmp -s "$O/t1/grads.safetensors" "$O/t2/grads.safetensors" && ok "1 and 2 threads: identical gradients" || bad "1 and 2 threads give different gradients"
# gradient checkpointing (--gradient-checkpointing): each block's forward run
# again in the backward gives the same bits as the kept activations, for every
# kind of method (dropout 0.1: the recomputed forward draws the same masks;
# a prefix; virtual tokens; trained base weights), and against the oracle
[ -f "$O/tiny4/config.json" ] || "$PY" tests/make_llama_hf.py tiny "$O/tiny4" --layers 4 >/dev/null 2>"$O/e" || { bad "make_llama_hf --layers 4: $(tail -1 "$O/e")"; finish; }
LM_GRAD_RECOMPUTE=1 case_ recompute_packed "$O/tiny4" "$O/tiny4" lora 4 8 0 all-linear 1
T=$O/tiny4   # four blocks: three recomputed, sharing one layer's buffers
for c in "lora 4 8 0 all-linear 1" "lora 4 8 0 q_proj,v_proj,down_proj 0" "adapter-houlsby 0 0 0 - 1" "prefix 0 0 0 - 1" \
         "ptuning 0 0 0 - 0" "full 0 0 0 - 0" "mam 0 0 0 - 1"; do
    set -- $c
    n=rc_$1_$6; mkdir -p "$O/$n.keep" "$O/$n.re"
    if LM_GRAD_DROPOUT=0.1 build/tests/lm_grad "$T" "$1" "$O/$n.keep" "$2" "$3" "$4" "$5" "$6" 2 >"$O/$n.e" 2>&1 &&
       LM_GRAD_DROPOUT=0.1 LM_GRAD_RECOMPUTE=1 build/tests/lm_grad "$T" "$1" "$O/$n.re" "$2" "$3" "$4" "$5" "$6" 2 >>"$O/$n.e" 2>&1; then
        if cmp -s "$O/$n.keep/grads.safetensors" "$O/$n.re/grads.safetensors" && cmp -s "$O/$n.keep/batch.json" "$O/$n.re/batch.json"; then
            ok "gradient checkpointing, $1 (targets $5, pack $6, dropout 0.1): loss and gradients identical to kept activations"
        else bad "gradient checkpointing, $1 (targets $5, pack $6): gradients differ from kept activations"; fi
    else bad "gradient checkpointing, $1: $(head -1 "$O/$n.e")"; fi
done
T=$O/tiny
# a method that does not fit a decoder: one line
if msg=$(build/tests/lm_grad "$T" bitfit "$O/t1" 2>&1); then bad "bitfit on Llama accepted"
else [ "$(printf '%s\n' "$msg" | wc -l)" -eq 1 ] && printf '%s' "$msg" | grep -q "no biases" && ok "bitfit on Llama: $msg" || bad "bitfit on Llama: '$msg'"; fi
if [ "${SMOL:-0}" = 1 ] && [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    [ -f "$O/smol_hf/config.json" ] || "$PY" tests/make_llama_hf.py gguf models/SmolLM2-135M-Instruct.Q4_1.gguf "$O/smol_hf" >/dev/null
    case_ smol_f32 "$O/smol_hf" "$O/smol_hf" lora 4 8 0 v_proj,o_proj,gate_proj,up_proj,down_proj 1
    case_ smol_q4_1 models/SmolLM2-135M-Instruct.Q4_1.gguf "$O/smol_hf" lora 4 8 0 v_proj,o_proj,gate_proj,up_proj,down_proj 1 --q8
fi
finish
