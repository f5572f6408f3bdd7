#!/usr/bin/env bash
# check_interop.sh: adapters across tools, verified by the tools themselves.
#   - io/gguf_write: a file of every metadata type and f32/f16/q8_0 tensors,
#     64-aligned, read back by the `gguf` PyPI reader (and by peftc's reader);
#   - LoRA adapters made by real `peft` (get_peft_model + save_pretrained,
#     random nonzero factors) on the tiny random Llama: one on all seven
#     linears with rsLoRA, a rank_pattern and an alpha_pattern, one plain on
#     q,v. peftc applies them (PEFT -> peftc) with transformers+peft's logits;
#     `peftc export --format gguf` writes llama.cpp's GGUF LoRA, which `gguf`
#     reads (tensors equal the source, q/k rows permuted, scales folded),
#     peftc loads back (on the GGUF base and on the HF base), and llama.cpp
#     applies unmerged (tests/llamacpp_lora.c linked to the llama.cpp build
#     of bench/llamacpp.sh; skipped, saying so, when that build is absent):
#     its logits match peftc's within 1e-4 and 32 greedy tokens are equal;
#   - AdaLoRA (a rank_pattern with a module at rank 0) and (IA)3 made by
#     peft on the Llama applied by peftc (GGUF and HF bases), the AdaLoRA
#     exported to GGUF and loaded back / applied by llama.cpp, peftc's own
#     decoder (IA)3 loaded by peft;
#   - BERT: adapters made by peft with its defaults (LoRA, (IA)3, prompt
#     tuning, P-tuning, AdaLoRA with a rank_pattern) in peftc without
#     peftc's fields, and adapters trained by peftc (AdaLoRA with its pruned
#     rank_pattern, P-tuning before [CLS]) loaded by peft;
#   - bad input: one line naming the file and the problem, non-zero exit.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
O=tests/out/interop
L=tests/out/llama
. tests/lib.sh
mkdir -p $O $L
run() { local log; if ! log=$("$@" 2>&1); then printf '%s\n' "$log" | tail -5; bad "fixture step failed: $*"; finish; fi; }
[ -x ./peftc ] || { bad "./peftc missing (run make)"; finish; }
build_driver interop_driver || finish
build_driver lm_driver || finish
build_driver lm_grad || finish
P=tests/interop_peft.py
D=build/tests/interop_driver

# 1. the GGUF writer against the gguf reader
if msg=$($D gguf-write $O/all.gguf 2>&1) && msg=$("$PY" $P gguf-writer $O/all.gguf 2>&1); then ok "gguf writer: $msg"; else bad "gguf writer: $msg"; fi

# fixtures (shared with check_llama.sh / check_lm.sh, made here if missing)
fixtures_lock $L
[ -s $L/tiny/config.json ] || run "$PY" tests/make_llama_hf.py tiny $L/tiny
[ -s $L/tiny.gguf ] || run "$PY" tests/make_llama_gguf.py $L/tiny $L/tiny.gguf
[ -s $L/tiny_ids.txt ] || run "$PY" tests/ref_llama.py random $L/tiny_ids.txt --vocab 97
fixtures_unlock
sed -n 5p $L/tiny_ids.txt > $O/ids.txt
rm -rf $O/all7 $O/qv
run "$PY" $P lora $L/tiny $O/all7 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --r 4 --alpha 8 \
    --rslora --rank-pattern '{"layers.1.self_attn.q_proj": 2}' --alpha-pattern '{"v_proj": 3}' --seed 3
run "$PY" $P lora $L/tiny $O/qv --targets q_proj,v_proj --r 8 --alpha 16 --seed 4
run "$PY" $P logits $L/tiny $O/ids.txt $O/hf_all7.f32 --adapter $O/all7
run "$PY" $P logits $L/tiny $O/ids.txt $O/hf_qv.f32 --adapter $O/qv

maxdiff() { # A.f32 B.f32 -> prints the max abs difference (exit 1 on a shape mismatch)
    "$PY" - "$1" "$2" <<'PYEOF'
import sys, numpy as np
a = np.fromfile(sys.argv[1], dtype=np.float32); b = np.fromfile(sys.argv[2], dtype=np.float32)
if a.shape != b.shape or a.size == 0: print(f"shape {a.shape} vs {b.shape}"); sys.exit(1)
print(f"{float(np.abs(a - b).max()):.2e}")
PYEOF
}
close() { # name got ref tol
    local d
    if ! d=$(maxdiff "$2" "$3"); then bad "$1: $d"; return; fi
    if "$PY" -c "import sys; sys.exit(0 if float('$d') <= float('$4') else 1)"; then ok "$1: max abs logit diff $d"; else bad "$1: max abs logit diff $d > $4"; fi
}
peftc_logits() { # out model adapter
    local msg
    if ! msg=$(build/tests/lm_driver logits "$2" $O/ids.txt "$1" --adapter "$3" 2>&1); then bad "peftc with $3 on $2: $msg"; : > "$1"; fi
}

for a in all7 qv; do
    # 2. PEFT -> peftc
    peftc_logits $O/pc_$a.f32 $L/tiny.gguf $O/$a
    close "peft-made $a LoRA in peftc (GGUF base) vs transformers+peft" $O/pc_$a.f32 $O/hf_$a.f32 1e-4
    # 3. peftc -> GGUF LoRA, read by gguf
    if msg=$(./peftc export --format gguf --adapter $O/$a --model $L/tiny.gguf --out $O/$a.gguf 2>&1) &&
       msg=$("$PY" $P check-gguf $O/$a $O/$a.gguf $L/tiny 2>&1); then ok "export $a -> GGUF LoRA, read by gguf: $msg"; else bad "export $a: $msg"; fi
    # 4. GGUF LoRA -> peftc, on the GGUF base and on the HF base (rows un-permuted)
    peftc_logits $O/pcg_$a.f32 $L/tiny.gguf $O/$a.gguf
    close "the GGUF LoRA of $a in peftc (GGUF base) vs transformers+peft" $O/pcg_$a.f32 $O/hf_$a.f32 1e-4
    peftc_logits $O/pch_$a.f32 $L/tiny $O/$a.gguf
    close "the GGUF LoRA of $a in peftc (HF base) vs transformers+peft" $O/pch_$a.f32 $O/hf_$a.f32 1e-4
done
build/tests/lm_driver logits $L/tiny.gguf $O/ids.txt $O/pc_base.f32 2>/dev/null
moves() { # name ref.f32: the adapter moves the logits (so the checks against it can fail)
    local d
    d=$(maxdiff $O/pc_base.f32 "$2")
    if "$PY" -c "import sys; sys.exit(0 if float('$d') > 0.5 else 1)" 2>/dev/null; then ok "the $1 adapter moves the logits by $d (the checks against it can fail)"; else bad "the $1 adapter barely moves the logits: $d"; fi
}
moves all7 $O/hf_all7.f32

# 4b. AdaLoRA and (IA)3 made by peft on the Llama, applied by peftc unmerged:
# AdaLoRA on q, k, v, o, down (init_r 4, lora_alpha 6, a rank_pattern with a
# module at rank 0, saved cut to the kept ranks) also exported to a GGUF LoRA
# (E folded into A) and loaded back; (IA)3 with PEFT's Llama defaults (k, v,
# down_proj's input) and on q, o, gate (outputs) + up, down (inputs), the
# latter refused unmerged (no site at up_proj's input: check_merge_model
# merges it); and an (IA)3 saved by peftc (tests/lm_grad) loaded by peft
rm -rf $O/ada $O/ia3 $O/ia3x $O/pia3
run "$PY" $P adalora $L/tiny $O/ada --targets q_proj,k_proj,v_proj,o_proj,down_proj --init-r 4 --alpha 6 --seed 5
run "$PY" $P ia3 $L/tiny $O/ia3 --seed 6
run "$PY" $P ia3 $L/tiny $O/ia3x --targets q_proj,o_proj,gate_proj,up_proj,down_proj --ff up_proj,down_proj --seed 7
for a in ada ia3; do run "$PY" $P logits $L/tiny $O/ids.txt $O/hf_$a.f32 --adapter $O/$a; done
if "$PY" -c "import json,sys; c=json.load(open('$O/ada/adapter_config.json')); p=c['rank_pattern']; sys.exit(0 if c['peft_type']=='ADALORA' and len(p)==10 and any(not any(v) for v in p.values()) else 1)"; then
    ok "peft's AdaLoRA adapter: ADALORA, a rank_pattern of 10 modules, one at rank 0"
else bad "peft's AdaLoRA adapter has no rank_pattern with a rank-0 module"; fi
for a in ada ia3; do
    for b in $L/tiny.gguf $L/tiny; do
        peftc_logits $O/pc_${a}_$(basename $b).f32 $b $O/$a
        close "peft-made $a in peftc ($(basename $b) base) vs transformers+peft" $O/pc_${a}_$(basename $b).f32 $O/hf_$a.f32 1e-4
    done
    moves $a $O/hf_$a.f32
done
if msg=$(./peftc export --format gguf --adapter $O/ada --model $L/tiny.gguf --out $O/ada.gguf 2>&1); then
    peftc_logits $O/pcg_ada.f32 $L/tiny.gguf $O/ada.gguf
    close "the AdaLoRA adapter exported to a GGUF LoRA, in peftc (GGUF base) vs transformers+peft" $O/pcg_ada.f32 $O/hf_ada.f32 1e-4
else bad "export of the AdaLoRA adapter: $msg"; fi
if msg=$(build/tests/lm_driver logits $L/tiny.gguf $O/ids.txt $O/x.f32 --adapter $O/ia3x 2>&1); then bad "(IA)3 at up_proj's input applied unmerged: $msg"
elif [ "$(printf '%s\n' "$msg" | wc -l)" -eq 1 ] && printf '%s' "$msg" | grep -q "ia3x: its (IA)3 vector scales the input of mlp.up_proj, which is applied merged only"; then ok "(IA)3 at up_proj's input, unmerged: $msg"
else bad "(IA)3 at up_proj's input, unmerged: $msg"; fi
mkdir -p $O/pia3
if msg=$(build/tests/lm_grad $L/tiny ia3 $O/pia3 2>&1) && "$PY" -c "import json,sys; c=json.load(open('$O/pia3/adapter/adapter_config.json')); sys.exit(0 if c['peft_type']=='IA3' and c['feedforward_modules']==['down_proj'] else 1)"; then
    run "$PY" $P logits $L/tiny $O/ids.txt $O/hf_pia3.f32 --adapter $O/pia3/adapter
    peftc_logits $O/pc_pia3.f32 $L/tiny $O/pia3/adapter
    close "peftc's (IA)3 (PEFT's IA3 form, random vectors) loaded by peft vs peftc" $O/hf_pia3.f32 $O/pc_pia3.f32 1e-4
    moves "peftc (IA)3" $O/hf_pia3.f32
else bad "peftc's decoder (IA)3 is not saved as PEFT's IA3: $msg $(cat $O/pia3/adapter/adapter_config.json 2>/dev/null)"; fi

# 5. llama.cpp applies the GGUF LoRA unmerged
ANCHOR=${PEFTC_ANCHOR_DIR:-$HOME/.cache/peftc-anchor}/llama.cpp-${LLAMACPP_PY_VERSION:-0.3.36}
LB=$ANCHOR/build LS=$ANCHOR/sdist/vendor/llama.cpp
if [ -f $LB/src/libllama.a ] && [ -f $LB/ggml/src/libggml-cpu.a ] && [ -f $LS/include/llama.h ]; then
    if msg=$(cc -O1 -c tests/llamacpp_lora.c -I$LS/include -I$LS/ggml/include -o build/tests/llamacpp_lora.o 2>&1 &&
             c++ -o build/tests/llamacpp_lora build/tests/llamacpp_lora.o $LB/src/libllama.a $LB/ggml/src/libggml.a \
                 $LB/ggml/src/libggml-cpu.a $LB/ggml/src/libggml-base.a -fopenmp -lpthread -lm -ldl 2>&1); then
        LC=build/tests/llamacpp_lora
        # llama.cpp wants a tokenizer.ggml.model key; "none" = no vocabulary (token ids only)
        run $D gguf-copy $L/tiny.gguf $O/tiny_novocab.gguf tokenizer.ggml.model none
        for a in all7 qv; do
            if ! msg=$($LC $O/tiny_novocab.gguf $O/$a.gguf $O/ids.txt 32 $O/lc_$a.f32 $O/lc_$a.ids 2>&1); then bad "llama.cpp with $a.gguf: $msg"; continue; fi
            close "llama.cpp applying $a.gguf unmerged vs peftc's unmerged PEFT adapter" $O/lc_$a.f32 $O/pc_$a.f32 1e-4
            close "llama.cpp applying $a.gguf unmerged vs transformers+peft" $O/lc_$a.f32 $O/hf_$a.f32 1e-4
            if msg=$($D greedy $L/tiny.gguf $O/ids.txt 32 $O/pc_$a.ids --adapter $O/$a 2>&1) && cmp -s $O/pc_$a.ids $O/lc_$a.ids; then
                ok "32 greedy tokens equal (llama.cpp + $a.gguf, peftc + the PEFT adapter): $(cut -d' ' -f$(( $(wc -w < $O/ids.txt) + 1 ))-$(( $(wc -w < $O/ids.txt) + 8 )) $O/lc_$a.ids) ..."
            else bad "greedy tokens differ: llama.cpp $(cat $O/lc_$a.ids) / peftc $(cat $O/pc_$a.ids 2>/dev/null) $msg"; fi
        done
        if [ -s $O/ada.gguf ]; then
            if msg=$($LC $O/tiny_novocab.gguf $O/ada.gguf $O/ids.txt 32 $O/lc_ada.f32 $O/lc_ada.ids 2>&1); then
                close "llama.cpp applying the AdaLoRA export unmerged vs transformers+peft" $O/lc_ada.f32 $O/hf_ada.f32 1e-4
            else bad "llama.cpp with ada.gguf: $msg"; fi
        fi
        # a real model: SmolLM2-135M as F32 GGUF (made by bench/llamacpp.sh), a peft LoRA of its shapes
        SG=$ANCHOR/models/SmolLM2-135M-Instruct.F32.gguf
        if [ -s $SG ]; then
            rm -rf $O/smol_lora
            run "$PY" $P lora-smol $O/smol_lora
            run ./peftc export --format gguf --adapter $O/smol_lora --model $SG --out $O/smol_lora.gguf
            run $D tokenize $SG "The capital of France is Paris. The capital of Germany is" $O/smol_ids.txt
            run $LC $SG $O/smol_lora.gguf $O/smol_ids.txt 32 /dev/null $O/smol_lc.ids
            run $LC $SG $O/smol_lora.gguf $O/smol_lc.ids 0 $O/smol_lc.f32 /dev/null
            run build/tests/lm_driver logits $SG $O/smol_lc.ids $O/smol_pc.f32 --adapter $O/smol_lora
            if msg=$("$PY" - $O/smol_lc.f32 $O/smol_pc.f32 $O/smol_lc.ids $O/smol_ids.txt <<'PYEOF'
import sys, numpy as np
x = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, 49152); y = np.fromfile(sys.argv[2], dtype=np.float32).reshape(-1, 49152)
ids = [int(t) for t in open(sys.argv[3]).read().split()]; n = len(open(sys.argv[4]).read().split())
d = float(np.abs(x - y).max())
# peftc's argmax after each prefix of llama.cpp's greedy text = llama.cpp's next token: the greedy texts are equal
same = all(int(y[i].argmax()) == ids[i + 1] for i in range(n - 1, len(ids) - 1))
print(f"max abs logit diff {d:.2e} over {x.size} logits, 32 greedy tokens {'identical' if same else 'DIFFER'}")
sys.exit(0 if d <= 1e-3 and same and len(ids) == n + 32 else 1)
PYEOF
); then ok "SmolLM2-135M F32 + a peft LoRA (rsLoRA, 6 targets) exported: llama.cpp vs peftc: $msg"; else bad "SmolLM2 + LoRA, llama.cpp vs peftc: $msg"; fi
        else
            echo "# $SG missing: the SmolLM2 llama.cpp check is skipped (bash bench/llamacpp.sh --prepare makes it)"
        fi
        cp $O/all7.gguf $O/arch.gguf
        run $D gguf-copy $O/all7.gguf $O/arch.gguf general.architecture gpt2
        if ! $LC $O/tiny_novocab.gguf $O/arch.gguf $O/ids.txt 0 $O/x.f32 $O/x.ids >/dev/null 2>&1; then ok "llama.cpp refuses the adapter relabelled gpt2 too"; else bad "llama.cpp took an adapter for gpt2"; fi
    else
        bad "tests/llamacpp_lora.c does not build against $LB: $msg"
    fi
else
    echo "# llama.cpp is not built ($LB/src/libllama.a missing): the llama.cpp checks are skipped; build it with bash bench/llamacpp.sh --prepare (about 12 min on 2 cores)"
fi

# 6. PEFT -> peftc on BERT (BertForSequenceClassification naming): adapters
# made by peft with its defaults, no peftc-only fields (labels from the head)
mkdir -p $O/bert
[ -s $O/tb/model/config.json ] || run "$PY" tests/make_tiny_bert.py $O/tb
printf 'the film was good .\nthe plot is awful but the actor was nice .\nnot really a great story\n' > $O/texts.txt
rm -rf $O/bert/lora $O/bert/ia3 $O/bert/ia3_ffn $O/bert/prompt $O/bert/ptuning $O/bert/adalora $O/bert/adalora_pooler
run "$PY" $P bert $O/tb/model $O/bert $O/texts.txt
for k in lora ia3_ffn prompt ptuning adalora; do
    if ! out=$(./peftc predict --model $O/tb/model --adapter $O/bert/$k --probs < $O/texts.txt 2>&1); then bad "peft-made BERT $k in peftc: $out"; continue; fi
    printf '%s\n' "$out" | cut -f2- > $O/bert/$k.got
    d=$("$PY" -c "import numpy as np; print(f'{np.abs(np.loadtxt(\"$O/bert/$k.got\") - np.loadtxt(\"$O/bert/$k.probs\")).max():.1e}')")
    if "$PY" -c "import sys; sys.exit(0 if $d <= 1e-5 else 1)" && printf '%s' "$out" | head -1 | grep -q '^LABEL_'; then
        ok "peft-made BERT $k (SEQ_CLS, no peftc fields) in peftc: labels LABEL_0/1 from the head, max abs prob diff $d (6 printed digits)"
    else bad "peft-made BERT $k in peftc: max abs prob diff $d: $(printf '%s' "$out" | head -1)"; fi
done

# peftc -> PEFT on BERT: adapters trained by peftc (4 steps) loaded by PeftModel.from_pretrained
for m in lora ia3 prompt; do
    rm -rf $O/run_$m
    run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method $m --num-virtual 4 --out $O/run_$m --max-steps 4 --lr 5e-2 --batch 4
done
# AdaLoRA: 8 steps, the budget cut from init_r 4 to target_r 2 after step 2 (a rank_pattern in the saved config)
rm -rf $O/run_adalora
run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method adalora --init-r 4 --target-r 2 --tinit 2 --tfinal 2 \
    --delta-t 1 --target-modules query,key,value,intermediate.dense --out $O/run_adalora --max-steps 8 --lr 5e-2 --batch 4
if "$PY" -c "import json,sys; c=json.load(open('$O/run_adalora/adapter_config.json')); sys.exit(0 if c['peft_type']=='ADALORA' and c.get('rank_pattern') and sum(map(sum, c['rank_pattern'].values())) < 4 * len(c['rank_pattern']) else 1)"; then
    ok "peftc's AdaLoRA run saved ADALORA with a rank_pattern below init_r"
else bad "peftc's AdaLoRA run has no pruned rank_pattern"; fi
# P-tuning with its virtual tokens before [CLS] (PEFT's placement): saved as P_TUNING, the MLP encoder folded
rm -rf $O/run_ptuning
run ./peftc train --model $O/tb/model --train $O/tb/train.tsv --method ptuning --template 'P P P P [CLS] {text}' --encoder-hidden 16 \
    --out $O/run_ptuning --max-steps 4 --lr 5e-2 --batch 4
if "$PY" -c "import json,sys; from safetensors.numpy import load_file; c=json.load(open('$O/run_ptuning/adapter_config.json')); t=load_file('$O/run_ptuning/adapter_model.safetensors'); sys.exit(0 if c['peft_type']=='P_TUNING' and c['encoder_reparameterization_type']=='MLP' and c['peftc']['prompt']['template']=='P P P P [CLS] {text}' and sorted(t)==['base_model.classifier.bias', 'base_model.classifier.weight', 'prompt_embeddings'] else 1)"; then
    ok "peftc's P-tuning before [CLS]: P_TUNING, PromptEncoderConfig's fields, the encoder folded into prompt_embeddings"
else bad "peftc's P-tuning before [CLS] is not saved as PEFT's P_TUNING"; fi
run "$PY" $P peft-probs $O/tb/model $O/texts.txt $O/run_lora $O/run_ia3 $O/run_prompt $O/run_adalora $O/run_ptuning
for m in lora ia3 prompt adalora ptuning; do
    if ! out=$(./peftc predict --model $O/tb/model --adapter $O/run_$m --probs < $O/texts.txt 2>&1); then bad "peftc predict $m: $out"; continue; fi
    printf '%s\n' "$out" | cut -f2- > $O/run_$m/peftc.probs
    d=$("$PY" -c "import numpy as np; print(f'{np.abs(np.loadtxt(\"$O/run_$m/peftc.probs\") - np.loadtxt(\"$O/run_$m/peft.probs\")).max():.1e}')")
    if "$PY" -c "import sys; sys.exit(0 if $d <= 1e-5 else 1)"; then ok "peftc-trained BERT $m loaded by peft: max abs prob diff $d (6 printed digits)"
    else bad "peftc-trained BERT $m in peft: max abs prob diff $d"; fi
done

# 7. bad input: one line each, naming the file and the problem
rm -rf $O/x $O/x.gguf
expect_fail() { # name words... -- command...
    local name=$1; shift
    local words=()
    while [ "$1" != "--" ]; do words+=("$1"); shift; done; shift
    local out rc
    out=$("$@" 2>&1 >/dev/null); rc=$?
    local good=1
    [ $rc -ne 0 ] || good=0
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || good=0
    for w in "${words[@]}"; do printf '%s' "$out" | grep -qF -- "$w" || good=0; done
    if [ $good = 1 ]; then ok "$name: $out"; else bad "$name (exit $rc): $out"; fi
}
[ -s $O/arch.gguf ] || run $D gguf-copy $O/all7.gguf $O/arch.gguf general.architecture gpt2
expect_fail "a GGUF LoRA for another architecture" "arch.gguf" "'gpt2'" -- build/tests/lm_driver logits $L/tiny.gguf $O/ids.txt $O/x.f32 --adapter $O/arch.gguf
expect_fail "a base model given as the adapter" "tiny.gguf" "general.type 'adapter'" -- build/tests/lm_driver logits $L/tiny.gguf $O/ids.txt $O/x.f32 --adapter $L/tiny.gguf
rm -rf $O/extra && mkdir -p $O/extra && cp $O/qv/adapter_config.json $O/extra/
run "$PY" - $O/qv/adapter_model.safetensors $O/extra/adapter_model.safetensors <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); t["base_model.model.model.norm.ia3_l"] = np.ones(40, np.float32)
save_file(t, sys.argv[2], metadata={"format": "pt"})
PYEOF
expect_fail "an extra tensor in a PEFT adapter is an error, not ignored" "norm.ia3_l" "not a LoRA factor" -- ./peftc export --format gguf --adapter $O/extra --model $L/tiny.gguf --out $O/x.gguf
expect_fail "export to a Hugging Face base" "--model" "GGUF base" -- ./peftc export --format gguf --adapter $O/qv --model $L/tiny --out $O/x.gguf
expect_fail "an unknown export format" "--format onnx" -- ./peftc export --format onnx --adapter $O/qv --model $L/tiny.gguf --out $O/x.gguf
expect_fail "export without --out" "--out" -- ./peftc export --format gguf --adapter $O/qv --model $L/tiny.gguf
sed 's/"r": 8/"r": 6/' $O/qv/adapter_config.json > $O/extra/adapter_config.json
cp $O/qv/adapter_model.safetensors $O/extra/
expect_fail "r disagreeing with the tensors" "q_proj.lora_A.weight" "maybe wrong base model" -- ./peftc export --format gguf --adapter $O/extra --model $L/tiny.gguf --out $O/x.gguf
expect_fail "PEFT's default (IA)3 for BERT (output.dense also matches attention.output.dense): an error, not a silent drop" \
    "attention.output.dense.ia3_l" "not a parameter of method ia3" -- ./peftc predict --model $O/tb/model --adapter $O/bert/ia3 < $O/texts.txt

expect_fail "a template with P after [CLS]" "--template" "every P goes before it" -- ./peftc train --model $O/tb/model --train $O/tb/train.tsv \
    --method ptuning --template 'P [CLS] P {text}' --out $O/x --max-steps 1
expect_fail "a template with [CLS] after the text" "--template" "[CLS] may come once, right after the leading P's" -- ./peftc train --model $O/tb/model \
    --train $O/tb/train.tsv --method ptuning --template 'P P {text} [CLS]' --out $O/x --max-steps 1
expect_fail "PEFT's AdaLoRA with target 'dense' (also the pooler's): refused, naming the entry" \
    "adalora_pooler/adapter_config.json" "bert.pooler.dense.lora_E" -- ./peftc predict --model $O/tb/model --adapter $O/bert/adalora_pooler < $O/texts.txt
# the decoder's AdaLoRA and (IA)3 readers: a rank_pattern that disagrees with the tensors, a missing lora_E,
# an (IA)3 vector of another width, a LoRA tensor in an IA3 adapter, an (IA)3 adapter for llama.cpp
badcopy() { rm -rf "$2" && cp -r "$1" "$2"; }
badcopy $O/ada $O/ada_rp
"$PY" - $O/ada_rp/adapter_config.json <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1])); k = "model.layers.0.self_attn.q_proj.lora_E"; c["rank_pattern"][k] = [True, False, False, False]
json.dump(c, open(sys.argv[1], "w"))
PYEOF
expect_fail "AdaLoRA: rank_pattern keeps 1 of a module saved at rank 4" "ada_rp/adapter_model.safetensors" "q_proj.lora_A' must be (1, 40)" "rank_pattern's 1 kept" -- \
    build/tests/lm_driver logits $L/tiny.gguf $O/ids.txt $O/x.f32 --adapter $O/ada_rp
badcopy $O/ada $O/ada_ne
"$PY" - $O/ada_ne/adapter_model.safetensors <<'PYEOF'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); del t["base_model.model.model.layers.1.mlp.down_proj.lora_E"]; save_file(t, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_fail "AdaLoRA: a module without lora_E" "ada_ne/adapter_model.safetensors" "layers.1.mlp.down_proj.lora_A' has no lora_E beside it" -- \
    ./peftc merge --model $L/tiny --adapter $O/ada_ne --out $O/x
badcopy $O/ia3 $O/ia3_w
"$PY" - $O/ia3_w/adapter_model.safetensors <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); t["base_model.model.model.layers.0.self_attn.k_proj.ia3_l"] = np.ones((40, 1), np.float32)
save_file(t, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_fail "(IA)3: a vector of another width (another base model)" "ia3_w/adapter_model.safetensors" "k_proj.ia3_l' must be (20, 1)" -- \
    build/tests/lm_driver logits $L/tiny $O/ids.txt $O/x.f32 --adapter $O/ia3_w
badcopy $O/ia3 $O/ia3_x
"$PY" - $O/ia3_x/adapter_model.safetensors <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); t["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = np.ones((2, 40), np.float32)
save_file(t, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_fail "(IA)3: a LoRA tensor in an IA3 adapter" "ia3_x/adapter_model.safetensors" "k_proj.lora_A.weight' is not an (IA)3 vector" -- \
    ./peftc merge --model $L/tiny --adapter $O/ia3_x --out $O/x
expect_fail "(IA)3 exported for llama.cpp: refused (llama.cpp's adapters are LoRA only)" "ia3: an (IA)3 adapter has no GGUF form" "peftc merge" -- \
    ./peftc export --format gguf --adapter $O/ia3 --model $L/tiny.gguf --out $O/x.gguf
rm -rf $O/bert_ap && cp -r $O/bert/lora $O/bert_ap
sed -i 's/"alpha_pattern": {}/"alpha_pattern": {"query": 2}/' $O/bert_ap/adapter_config.json
expect_fail "a BERT LoRA with an alpha_pattern (not applied by the encoder path): refused, not mis-scaled" \
    "bert_ap/adapter_config.json" "alpha_pattern" -- ./peftc predict --model $O/tb/model --adapter $O/bert_ap < $O/texts.txt

# 8. inspect names the format
out=$(./peftc inspect $O/all7.gguf 2>&1 | sed -n 3p)
case "$out" in *"llama.cpp GGUF adapter"*"architecture llama"*"14 lora_a/lora_b pairs, rank 2..4"*) ok "inspect: $out" ;; *) bad "inspect of a GGUF LoRA: $out" ;; esac
out=$(./peftc inspect $O/qv 2>&1 | sed -n 2p)
case "$out" in *"Hugging Face PEFT, peft_type LORA, task_type CAUSAL_LM, r 8, lora_alpha 16"*) ok "inspect: $out" ;; *) bad "inspect of a PEFT adapter: $out" ;; esac
out=$(./peftc inspect $O/ada 2>&1 | sed -n 2p)
case "$out" in *"peft_type ADALORA, task_type CAUSAL_LM, init_r 4, rank_pattern keeps "*" of 40 triplets, lora_alpha 6"*) ok "inspect: $out" ;; *) bad "inspect of an AdaLoRA adapter: $out" ;; esac
rm -rf $O/ah && mkdir -p $O/ah && echo '{"config": {"architecture": "prefix_tuning"}, "model_class": "BertModel", "name": "x"}' > $O/ah/adapter_config.json && : > $O/ah/pytorch_adapter.bin
expect_fail "an AdapterHub pickle is refused" "pytorch_adapter.bin" "use_safetensors=True" -- ./peftc inspect $O/ah
[ ! -e $O/x.gguf ] && ok "no output file after a failed export" || bad "a failed export left $O/x.gguf"
[ ! -e $O/x ] && ok "no output directory after a failed merge" || bad "a failed merge left $O/x"
finish
