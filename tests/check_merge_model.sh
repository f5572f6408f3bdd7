#!/usr/bin/env bash
# check_merge_model.sh: `peftc merge` (an adapter folded into its base, written
# as a plain model) against the real tools (tests/ref_merge_model.py):
#   - BERT: LoRA and (IA)3 trained by peftc on the tiny random BERT and LoRA
#     on all-MiniLM-L6-v2; the merged directory loaded by transformers'
#     AutoModelForSequenceClassification (no adapter code, no missing or
#     unexpected weights) gives the logits of peft's merge_and_unload() and of
#     peft applying the adapter unmerged within 1e-4, and the probabilities
#     of `peftc predict` with the adapter unmerged; --type bf16;
#   - Llama, HF base: a peft-made LoRA (all seven linears, rsLoRA, rank and
#     alpha patterns) merged; LlamaForCausalLM on the merged directory vs
#     merge_and_unload() and vs peft unmerged, and peftc on it vs peftc
#     unmerged;
#   - Llama (IA)3 (peft-made with PEFT's defaults, and on q/o/gate outputs
#     plus up/down inputs; peftc's own, saved as PEFT's IA3), merged into the
#     HF and the GGUF base: transformers on the merged directory vs
#     merge_and_unload() and vs peft unmerged, gguf reads the merged weights
#     against merge_and_unload()'s (q rows permuted), peftc and llama.cpp run
#     the merged files;
#   - Llama, GGUF base: the same adapter merged into the tiny F32 GGUF (and
#     --type f16 / bf16): gguf.GGUFReader reads it, every merged weight
#     equals peft's merge_and_unload() weight with q/k rows permuted, every
#     other tensor and key byte-equal, re-encoded weights equal gguf's own
#     quantisers; peftc and (if bench/llamacpp.sh built it) llama.cpp load it
#     and give transformers+peft's logits; SmolLM2-135M Q4_1 with a LoRA merged
#     to f32 and re-quantised to q8_0 / q4_1, checked the same way on block 29
#     and run by peftc and llama.cpp;
#   - bad input: one line each, no output left behind.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
O=tests/out/merge_model
L=tests/out/llama
R=tests/ref_merge_model.py
. tests/lib.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p $O $L
rm -f $O/lc_*.f32 $O/pc_*.f32 $O/hf_*.f32 $O/*.probs $O/m_ia3.f32
run() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -5; bad "fixture step failed: $*"; finish; fi; }
[ -x ./peftc ] || { bad "./peftc missing (run make)"; finish; }
build_driver lm_driver || finish
build_driver lm_grad || finish
build_driver interop_driver || finish
JOBS=$O/jobs.txt
: > $JOBS
job() { # name command args...: a check run later by `ref_merge_model.py jobs` (one Python process)
    local name=$1; shift
    printf '%s\t%s\n' "$name" "$*" >> $JOBS
}
last() { printf '%s\n' "$1" | grep -v -i -E 'warn|loading weights|^\s*$' | tail -1; }
check() { # name command...: ok with the command's last line, or FAIL with it
    local name=$1 out; shift
    if out=$("$@" 2>&1); then ok "$name: $(last "$out")"; else bad "$name: $(printf '%s\n' "$out" | grep -v -i warn | tail -3 | tr '\n' ' ')"; fi
}
probs_close() { # name A B: the probabilities of two files agree to the 6 printed digits
    local d
    d=$("$PY" -c "import numpy as np; print(f'{np.abs(np.loadtxt(\"$2\", ndmin=2) - np.loadtxt(\"$3\", ndmin=2)).max():.1e}')" 2>&1)
    if "$PY" -c "import sys; sys.exit(0 if float('$d') <= 1e-5 else 1)" 2>/dev/null; then ok "$1: max abs prob diff $d"; else bad "$1: $d"; fi
}
maxdiff_le() { # name A.f32 B.f32 tol
    local d
    d=$("$PY" - "$2" "$3" <<'PYEOF'
import sys, numpy as np
a = np.fromfile(sys.argv[1], dtype=np.float32); b = np.fromfile(sys.argv[2], dtype=np.float32)
print(f"{float(np.abs(a - b).max()):.2e}" if a.shape == b.shape and a.size else f"shape {a.shape} vs {b.shape}")
PYEOF
)
    if "$PY" -c "import sys; sys.exit(0 if float('$d') <= float('$4') else 1)" 2>/dev/null; then ok "$1: max abs logit diff $d"; else bad "$1: $d (tolerance $4)"; fi
}

# ---- BERT
[ -s $O/tb/model/config.json ] || run "$PY" tests/make_tiny_bert.py $O/tb
printf 'the film was good .\nthe plot is awful but the actor was nice .\nnot really a great story\n' > $O/texts.txt
for m in lora ia3; do
    rm -rf $O/run_$m $O/m_$m
    run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method $m --out $O/run_$m --max-steps 4 --lr 5e-2 --batch 4
    run ./peftc merge --model $O/tb/model --adapter $O/run_$m --out $O/m_$m
    job "tiny BERT $m merged" bert $O/tb/model $O/run_$m $O/m_$m $O/texts.txt $O/m_$m.probs
    ./peftc predict --model $O/tb/model --adapter $O/run_$m --probs < $O/texts.txt 2>/dev/null | cut -f2- > $O/run_$m.probs
done
# token classification: BertForTokenClassification's head
printf 'the\tB-X\nfilm\tI-X\nwas\tO\ngood\tO\n\nthe\tO\nactor\tB-Y\nwas\tO\nnice\tO\n\na\tO\nplot\tB-X\nis\tO\nawful\tO\n\n' > $O/tok.conll
rm -rf $O/run_tok $O/m_tok
run ./peftc train --model $O/tb/model --task token-cls --train $O/tok.conll --method lora --out $O/run_tok --max-steps 4 --lr 5e-2 --batch 2 --max-len 16
run ./peftc merge --model $O/tb/model --adapter $O/run_tok --out $O/m_tok
job "tiny BERT token-cls lora merged" bert-token $O/tb/model $O/run_tok $O/m_tok $O/texts.txt $O/m_tok.probs
rm -rf $O/m_lora_bf16
run ./peftc merge --model $O/tb/model --adapter $O/run_lora --out $O/m_lora_bf16 --type bf16
if "$PY" -c "import json,sys; from safetensors import safe_open; f=safe_open('$O/m_lora_bf16/model.safetensors','pt'); sys.exit(0 if all(f.get_slice(k).get_dtype()=='BF16' for k in f.keys()) and json.load(open('$O/m_lora_bf16/config.json'))['torch_dtype']=='bfloat16' else 1)"; then
    ok "--type bf16: every tensor BF16, config torch_dtype bfloat16"
    job "tiny BERT lora merged --type bf16 (bf16's rounding)" bert $O/tb/model $O/run_lora $O/m_lora_bf16 $O/texts.txt $O/m_lora_bf16.probs 2e-2
else bad "--type bf16: not every tensor is BF16"; fi

# a real model: all-MiniLM-L6-v2 (no BertForSequenceClassification head in it) with LoRA, 3 steps of SST-2
MINI=models/all-MiniLM-L6-v2
SST=../shared/data/glue-sst2/train.tsv
if [ -s $MINI/config.json ] && [ -s $SST ]; then
    head -65 $SST > $O/sst64.tsv
    head -9 $SST | tail -8 | cut -f1 > $O/sst_texts.txt
    rm -rf $O/run_mini $O/m_mini
    run ./peftc train --model $MINI --train $O/sst64.tsv --method lora --out $O/run_mini --max-steps 3 --lr 5e-3 --batch 8 --max-len 64
    run ./peftc merge --model $MINI --adapter $O/run_mini --out $O/m_mini
    job "all-MiniLM-L6-v2 LoRA merged" bert $MINI $O/run_mini $O/m_mini $O/sst_texts.txt $O/m_mini.probs
    ./peftc predict --model $MINI --adapter $O/run_mini --probs < $O/sst_texts.txt 2>/dev/null | cut -f2- > $O/run_mini.probs
    rm -rf $O/m_other
    out=$(./peftc merge --model $MINI --adapter $O/run_lora --out $O/m_other 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && printf '%s' "$out" | grep -q "run_lora/adapter_model.safetensors: tensor '" && [ ! -e $O/m_other ]; then
        ok "an adapter of another base, refused naming the tensor: $out"
    else bad "adapter of another base (exit $rc): $out"; fi
else
    echo "# $MINI or $SST missing: the all-MiniLM-L6-v2 checks are skipped (scripts/fetch_models.sh)"
fi

# ---- Llama, HF base
fixtures_lock $L
[ -s $L/tiny/config.json ] || run "$PY" tests/make_llama_hf.py tiny $L/tiny
[ -s $L/tiny.gguf ] || run "$PY" tests/make_llama_gguf.py $L/tiny $L/tiny.gguf
[ -s $L/tiny_ids.txt ] || run "$PY" tests/ref_llama.py random $L/tiny_ids.txt --vocab 97
fixtures_unlock
sed -n 5p $L/tiny_ids.txt > $O/ids.txt
rm -rf $O/all7 $O/m_llama
# made here, not copied from check_interop.sh's identical one: tests/run.sh runs
# the two side by side, and a copy could catch that adapter half-written
run "$PY" tests/interop_peft.py lora $L/tiny $O/all7 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --r 4 --alpha 8 \
    --rslora --rank-pattern '{"layers.1.self_attn.q_proj": 2}' --alpha-pattern '{"v_proj": 3}' --seed 3
run ./peftc merge --model $L/tiny --adapter $O/all7 --out $O/m_llama
job "tiny Llama HF + peft LoRA (all 7, rsLoRA, patterns) merged" llama $L/tiny $O/all7 $O/m_llama $O/ids.txt $O/m_llama.f32 $O/hf_all7.f32
run build/tests/lm_driver logits $O/m_llama $O/ids.txt $O/pc_m_llama.f32
run build/tests/lm_driver logits $L/tiny $O/ids.txt $O/pc_all7.f32 --adapter $O/all7

# (IA)3 on the Llama: peft-made with PEFT's defaults (k, v outputs, down_proj's
# input) and on q, o, gate (outputs) + up, down (inputs: columns scaled), and
# peftc's own (tests/lm_grad, PEFT's IA3 form), merged into the HF and the GGUF base
rm -rf $O/ia3 $O/ia3x $O/pia3 $O/lm_ia3 $O/lm_ia3x $O/lm_pia3 $O/lm_*.gguf
run "$PY" tests/interop_peft.py ia3 $L/tiny $O/ia3 --seed 6
run "$PY" tests/interop_peft.py ia3 $L/tiny $O/ia3x --targets q_proj,o_proj,gate_proj,up_proj,down_proj --ff up_proj,down_proj --seed 7
mkdir -p $O/pia3
run build/tests/lm_grad $L/tiny ia3 $O/pia3
cp -r $O/pia3/adapter $O/pia3a
rm -rf $O/pia3 && mv $O/pia3a $O/pia3
for a in ia3 ia3x pia3; do
    run ./peftc merge --model $L/tiny --adapter $O/$a --out $O/lm_$a
    job "tiny Llama HF + (IA)3 $a merged" llama $L/tiny $O/$a $O/lm_$a $O/ids.txt $O/lm_$a.f32 $O/hf_$a.f32
    run ./peftc merge --model $L/tiny.gguf --adapter $O/$a --out $O/lm_$a.gguf
    job "tiny GGUF (F32) + (IA)3 $a merged, read by gguf" gguf $L/tiny.gguf $O/lm_$a.gguf $L/tiny $O/$a none
    run build/tests/lm_driver logits $O/lm_$a.gguf $O/ids.txt $O/pc_lm_$a.f32
    run build/tests/lm_driver logits $O/lm_$a $O/ids.txt $O/pc_lmh_$a.f32
done
run build/tests/lm_driver logits $L/tiny $O/ids.txt $O/pc_ia3.f32 --adapter $O/ia3

# ---- Llama, GGUF base
rm -f $O/m_*.gguf
run ./peftc merge --model $L/tiny.gguf --adapter $O/all7 --out $O/m_f32.gguf
job "tiny GGUF (F32) + the LoRA merged, read by gguf" gguf $L/tiny.gguf $O/m_f32.gguf $L/tiny $O/all7 none
run build/tests/lm_driver logits $O/m_f32.gguf $O/ids.txt $O/pc_m_f32.f32
for t in f16 bf16; do
    run ./peftc merge --model $L/tiny.gguf --adapter $O/all7 --out $O/m_$t.gguf --type $t
    job "tiny GGUF merged --type $t, read by gguf" gguf $L/tiny.gguf $O/m_$t.gguf $L/tiny $O/all7 $t $O/m_f32.gguf
done
run build/tests/lm_driver logits $O/m_f16.gguf $O/ids.txt $O/pc_m_f16.f32

# SmolLM2-135M Q4_1 (the real file) + a LoRA of its shapes
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s $SMOL ]; then
    rm -rf $O/smol_lora
    run "$PY" $R smol-lora $O/smol_lora
    run ./peftc merge --model $SMOL --adapter $O/smol_lora --out $O/smol_f32.gguf
    job "SmolLM2 Q4_1 + LoRA merged to f32 (block 29's weights checked)" gguf $SMOL $O/smol_f32.gguf - $O/smol_lora none - 29
    for t in q8_0 q4_1; do
        run ./peftc merge --model $SMOL --adapter $O/smol_lora --out $O/smol_$t.gguf --type $t
        job "SmolLM2 merged --type $t (block 29's weights checked)" gguf $SMOL $O/smol_$t.gguf - $O/smol_lora $t $O/smol_f32.gguf 29
    done
    run build/tests/interop_driver tokenize $SMOL "The capital of France is Paris. The capital of Germany is" $O/smol_ids.txt
    run build/tests/lm_driver logits $O/smol_f32.gguf $O/smol_ids.txt $O/pc_smol_f32.f32
    run build/tests/lm_driver logits $SMOL $O/smol_ids.txt $O/pc_smol_un.f32 --adapter $O/smol_lora
    run build/tests/lm_driver logits $O/smol_q8_0.gguf $O/smol_ids.txt $O/pc_smol_q8.f32
    run build/tests/lm_driver logits $O/smol_q4_1.gguf $O/smol_ids.txt $O/pc_smol_q41.f32
else
    echo "# $SMOL missing: the SmolLM2 checks are skipped"
fi

# llama.cpp loads the merged GGUF files (only if bench/llamacpp.sh built it; CI does not)
ANCHOR=${PEFTC_ANCHOR_DIR:-$HOME/.cache/peftc-anchor}/llama.cpp-${LLAMACPP_PY_VERSION:-0.3.36}
LB=$ANCHOR/build LS=$ANCHOR/sdist/vendor/llama.cpp
if [ -f $LB/src/libllama.a ] && [ -f $LB/ggml/src/libggml-cpu.a ] && [ -f $LS/include/llama.h ]; then
    if cc -O1 -c tests/llamacpp_lora.c -I$LS/include -I$LS/ggml/include -o $O/llamacpp_lora.o 2>/dev/null &&
       c++ -o $O/llamacpp_lora $O/llamacpp_lora.o $LB/src/libllama.a $LB/ggml/src/libggml.a \
           $LB/ggml/src/libggml-cpu.a $LB/ggml/src/libggml-base.a -fopenmp -lpthread -lm -ldl 2>/dev/null; then
        LC=$O/llamacpp_lora   # its own copy: check_interop.sh may be building build/tests/'s at the same time
        run build/tests/interop_driver gguf-copy $L/tiny.gguf $O/tiny_novocab.gguf tokenizer.ggml.model none
        run ./peftc merge --model $O/tiny_novocab.gguf --adapter $O/all7 --out $O/m_novocab.gguf
        if ! msg=$($LC $O/m_novocab.gguf - $O/ids.txt 0 $O/lc_m.f32 /dev/null 2>&1); then bad "llama.cpp cannot run the merged GGUF: $msg"; fi
        run ./peftc merge --model $O/tiny_novocab.gguf --adapter $O/ia3x --out $O/m_ia3x_novocab.gguf
        if ! msg=$($LC $O/m_ia3x_novocab.gguf - $O/ids.txt 0 $O/lc_m_ia3x.f32 /dev/null 2>&1); then bad "llama.cpp cannot run the (IA)3-merged GGUF: $msg"; fi
        if [ -s $O/smol_q8_0.gguf ] && ! msg=$($LC $O/smol_q8_0.gguf - $O/smol_ids.txt 0 $O/lc_smol_q8.f32 /dev/null 2>&1); then
            bad "llama.cpp cannot run the merged SmolLM2 q8_0 file: $msg"
        fi
    else bad "tests/llamacpp_lora.c does not build against $LB"; fi
else
    echo "# llama.cpp is not built ($LB/src/libllama.a missing): the llama.cpp checks are skipped (bash bench/llamacpp.sh --prepare)"
fi

# ---- the Python checks, in one process
tally "$("$PY" $R jobs < $JOBS 2>/dev/null)"
for m in lora ia3; do
    probs_close "tiny BERT $m: the merged directory in transformers vs peftc predict with the adapter unmerged" $O/m_$m.probs $O/run_$m.probs
done
[ -s $O/run_mini.probs ] && probs_close "all-MiniLM-L6-v2 LoRA: merged directory in transformers vs peftc predict unmerged" $O/m_mini.probs $O/run_mini.probs
maxdiff_le "peftc on the merged HF directory vs peftc with the adapter unmerged" $O/pc_m_llama.f32 $O/pc_all7.f32 1e-4
maxdiff_le "peftc on the merged HF directory vs transformers+peft unmerged" $O/pc_m_llama.f32 $O/hf_all7.f32 1e-4
maxdiff_le "peftc on the merged GGUF vs transformers+peft unmerged" $O/pc_m_f32.f32 $O/hf_all7.f32 1e-4
# f16 weights: the logits move by f16's rounding amplified by the random model (the adapter itself moves them by ~9)
maxdiff_le "peftc on the merged f16 GGUF vs transformers+peft unmerged (f16 rounding)" $O/pc_m_f16.f32 $O/hf_all7.f32 0.2
[ -s $O/lc_m.f32 ] && maxdiff_le "llama.cpp on the merged tiny GGUF vs transformers+peft unmerged" $O/lc_m.f32 $O/hf_all7.f32 1e-4
for a in ia3 ia3x pia3; do
    maxdiff_le "(IA)3 $a: peftc on the merged GGUF vs transformers+peft unmerged" $O/pc_lm_$a.f32 $O/hf_$a.f32 1e-4
    maxdiff_le "(IA)3 $a: peftc on the merged HF directory vs transformers+peft unmerged" $O/pc_lmh_$a.f32 $O/hf_$a.f32 1e-4
done
maxdiff_le "(IA)3 ia3: peftc on the merged HF directory vs peftc with the adapter unmerged" $O/pc_lmh_ia3.f32 $O/pc_ia3.f32 1e-4
[ -s $O/lc_m_ia3x.f32 ] && maxdiff_le "llama.cpp on the tiny GGUF with (IA)3 ia3x merged vs transformers+peft unmerged" $O/lc_m_ia3x.f32 $O/hf_ia3x.f32 1e-4
agree() { # name A.f32 B.f32 MEAN TOP1: SmolLM2 logits (49152 a row) of two quantised runs: mean abs below MEAN,
    # top-1 agreement at least TOP1 (plausibility: the weights' values are checked against gguf above)
    local msg
    if msg=$("$PY" - "$2" "$3" "$4" "$5" <<'PYEOF'
import sys, numpy as np
x = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, 49152); y = np.fromfile(sys.argv[2], dtype=np.float32).reshape(-1, 49152)
agree = float((x.argmax(1) == y.argmax(1)).mean())
print(f"mean abs {np.abs(x - y).mean():.3f}, max {np.abs(x - y).max():.3f}, top-1 agreement {agree:.2f} over {x.shape[0]} positions")
sys.exit(0 if agree >= float(sys.argv[4]) and np.abs(x - y).mean() < float(sys.argv[3]) else 1)
PYEOF
); then ok "$1: $msg"; else bad "$1: $msg"; fi
}
if [ -s $O/pc_smol_un.f32 ]; then
    # the unmerged run multiplies the Q4_1 blocks by Q8_0-quantised activations, the f32 merge does not
    agree "SmolLM2: peftc on the merged f32 GGUF vs peftc with the LoRA unmerged on the Q4_1 base" $O/pc_smol_f32.f32 $O/pc_smol_un.f32 0.3 0.9
    # re-quantised weights: one more rounding of every block weight (q4_1: a second 4-bit rounding)
    agree "SmolLM2: peftc on the merged q8_0 GGUF vs on the merged f32 GGUF" $O/pc_smol_q8.f32 $O/pc_smol_f32.f32 0.6 0.9
    agree "SmolLM2: peftc on the merged q4_1 GGUF vs on the merged f32 GGUF" $O/pc_smol_q41.f32 $O/pc_smol_f32.f32 1.5 0.75
    [ -s $O/lc_smol_q8.f32 ] && agree "llama.cpp on the merged SmolLM2 q8_0 GGUF vs peftc on it" $O/lc_smol_q8.f32 $O/pc_smol_q8.f32 0.3 0.9
fi

# ---- bad input: one line each, naming the file and the problem, nothing written
expect_fail() { # name out-path words... -- command...
    local name=$1 outp=$2; shift 2
    local words=()
    while [ "$1" != "--" ]; do words+=("$1"); shift; done; shift
    rm -rf "$outp"
    local out rc good=1
    out=$("$@" 2>&1 >/dev/null); rc=$?
    [ $rc -ne 0 ] || good=0
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || good=0
    for w in "${words[@]}"; do printf '%s' "$out" | grep -qF -- "$w" || good=0; done
    [ ! -e "$outp" ] || { good=0; out="$out (and $outp was written)"; }
    if [ $good = 1 ]; then ok "$name: $out"; else bad "$name (exit $rc): $out"; fi
}
rm -rf $O/run_prompt
run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method prompt --num-virtual 4 --out $O/run_prompt --max-steps 2 --batch 4
expect_fail "prompt tuning cannot merge" $O/x "run_prompt" "cannot be merged" -- ./peftc merge --model $O/tb/model --adapter $O/run_prompt --out $O/x
rm -rf $O/run_pf
run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method adapter-pfeiffer --out $O/run_pf --max-steps 2 --batch 4
expect_fail "a bottleneck adapter cannot merge" $O/x "run_pf" "cannot be merged" -- ./peftc merge --model $O/tb/model --adapter $O/run_pf --out $O/x
expect_fail "--type q4_1 for a Hugging Face directory" $O/x "--type q4_1" "f32, f16 or bf16" -- ./peftc merge --model $O/tb/model --adapter $O/run_lora --out $O/x --type q4_1
expect_fail "an unknown --type" $O/x "--type q3" "the types are" -- ./peftc merge --model $L/tiny.gguf --adapter $O/all7 --out $O/x --type q3
expect_fail "q8_0 on rows that are no whole blocks" $O/x.gguf "tiny.gguf: tensor blk.0.attn_" "40 values" "q8_0" -- ./peftc merge --model $L/tiny.gguf --adapter $O/all7 --out $O/x.gguf --type q8_0
expect_fail "a GGUF base into a directory" $O/x "--out" ".gguf file" -- ./peftc merge --model $L/tiny.gguf --adapter $O/all7 --out $O/x
expect_fail "--out the model itself" $L/nonexistent "the model itself" -- ./peftc merge --model $L/tiny --adapter $O/all7 --out $L/tiny
expect_fail "a BERT adapter on a Llama" $O/x "run_lora" -- ./peftc merge --model $L/tiny --adapter $O/run_lora --out $O/x
expect_fail "missing --adapter" $O/x "--adapter" -- ./peftc merge --model $L/tiny --out $O/x
finish
