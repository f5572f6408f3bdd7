#!/usr/bin/env bash
# check_adapterhub.sh: AdapterHub's format both ways, verified by AdapterHub's
# own `adapters` 1.3.0 (with transformers 4.57, in the venv build/ahub-venv
# that scripts/setup.sh makes: tests/ref_adapterhub.py) on a tiny random BERT:
#   - peftc -> AdapterHub: bottleneck adapters trained by peftc (Pfeiffer's
#     sequential adapter, also with a bottleneck C/r that is no integer factor,
#     the Houlsby form, parallel at ffn and at attn, scaled parallel with a
#     fixed and a learned scale; LoRA on query/value and rsLoRA on q, k, v,
#     intermediate.dense and output.dense; (IA)^3 in AdapterHub's form, scale
#     deltas at k, v, ffn.in, and at q, k, v, ffn.in, ffn.down), `peftc export
#     --format adapterhub`, loaded by model.load_adapter + set_active_adapters:
#     logits equal peftc's (1e-4; 1e-5 for LoRA and (IA)^3);
#     peftc reads its own export back with identical probabilities;
#   - AdapterHub -> peftc: adapters and heads made by adapters itself (BnConfig
#     sequential, double_seq_bn, par_bn, par_bn with a learned scale and GELU;
#     LoRAConfig on q, v and on q, k, v, intermediate, output; IA3Config as
#     shipped and with alpha 2 on q, k, v, intermediate, output; every tensor
#     random and nonzero), saved with use_safetensors=True, run by peftc
#     predict: the same logits (1e-4; 1e-5 for LoRA and (IA)^3); peftc eval reads one;
#   - bad input: one line naming the file and the problem, non-zero exit.
# Logits are compared centred per row (peftc predict prints probabilities,
# whose logs are the logits up to a constant per row).
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1
PY=${PYTHON:-/usr/bin/python3}
VPY=build/ahub-venv/bin/python
R=tests/ref_adapterhub.py
[ -x ./peftc ] || { bad "./peftc missing (run make)"; finish; }
if ! "$VPY" -c "import adapters, transformers, sys; sys.exit(adapters.__version__ != '1.3.0' or not transformers.__version__.startswith('4.57.'))" 2>/dev/null; then
    bad "the AdapterHub oracle venv $VPY (adapters 1.3.0, transformers 4.57) is missing or broken: scripts/setup.sh makes it (it needs PyPI)"
    finish
fi
W=$(mktemp -d /tmp/peftc_ahub.XXXXXX)
trap 'rm -rf "$W"' EXIT
"$PY" tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "cannot build the tiny model"; finish; }
M=$W/tiny/model
tail -n +2 "$W/tiny/dev.tsv" | cut -f1 | head -16 > "$W/sents.txt"
c="--model $M --batch 8 --train $W/tiny/train.tsv --epochs 1 --lr 0.01"

peftc_logits() {   # ADAPTER OUT.f32: log-probabilities of peftc predict
    local out
    if ! out=$(./peftc predict --model "$M" --adapter "$1" --probs --hex < "$W/sents.txt" 2>&1); then
        echo "$out" | tail -1; return 1
    fi
    printf '%s\n' "$out" > "$2.txt"
    "$PY" - "$2.txt" "$2" <<'PYEOF'
import sys, numpy as np
rows = [[float.fromhex(x) for x in l.rstrip("\n").split("\t")[1:]] for l in open(sys.argv[1]) if l.strip()]
np.log(np.array(rows, dtype=np.float64)).astype(np.float32).tofile(sys.argv[2])
PYEOF
}
close() {   # NAME A.f32 B.f32 K TOL
    local d
    if ! d=$("$VPY" $R compare "$2" "$3" "$4" 2>&1); then bad "$1: $d"; return; fi
    if "$PY" -c "import sys; sys.exit(0 if float('$d') <= float('$5') else 1)"; then ok "$1: max abs logit diff $d"; echo "$1 $d" >> "$W/diffs"
    else bad "$1: max abs logit diff $d > $5"; fi
}

# 1. peftc -> AdapterHub
declare -A TRAIN=(
    [pfeiffer]="--method adapter-pfeiffer"
    [pfeiffer_r3]="--method adapter-pfeiffer --r 3"
    [houlsby_form]="--method custom --delta site=attn.out,insert=sequential,r=2,act=silu,bias=1 --delta site=ffn.out,insert=sequential,r=2,act=silu,bias=1"
    [parallel]="--method parallel-adapter"
    [parallel_attn]="--method parallel-adapter --site attn"
    [scaled]="--method scaled-parallel-adapter"
    [scaled_learned]="--method scaled-parallel-adapter --learned-scale"
    [lora]="--method lora"
    [lora_all]="--method lora --r 3 --alpha 5 --rslora --target-modules query,key,value,intermediate.dense,output.dense"
    [ia3_form]="--method custom --delta site=attn.k,kind=scale --delta site=attn.v,kind=scale --delta site=ffn.in,kind=scale"
    [ia3_all]="--method custom --delta site=attn.q,kind=scale --delta site=attn.k,kind=scale --delta site=attn.v,kind=scale --delta site=ffn.in,kind=scale --delta site=ffn.down,kind=scale"
)
KINDS="pfeiffer pfeiffer_r3 houlsby_form parallel parallel_attn scaled scaled_learned lora lora_all ia3_form ia3_all"
tol() { case $1 in *lora*|*ia3*) echo 1e-5 ;; *) echo 1e-4 ;; esac; }
pairs=()
for k in $KINDS; do
    if ! log=$(nice ./peftc train $c --seed 7 ${TRAIN[$k]} --out "$W/run_$k" 2>&1); then bad "train $k: $(echo "$log" | tail -1)"; continue; fi
    if ! log=$(./peftc export --format adapterhub --adapter "$W/run_$k" --model "$M" --out "$W/ah_$k" --name "pc_$k" 2>&1); then
        bad "export $k: $log"; continue
    fi
    pairs+=("$W/ah_$k" "$W/hub_$k.f32")
done
if [ ${#pairs[@]} -gt 0 ]; then
    hub=$(nice "$VPY" $R logits "$M" "$W/sents.txt" "${pairs[@]}" 2>&1) || { printf '%s\n' "$hub" | tail -3; bad "adapters could not load the exported adapters"; }
fi
for k in $KINDS; do
    [ -s "$W/hub_$k.f32" ] || { [ -d "$W/ah_$k" ] && bad "adapters gave no logits for $k"; continue; }
    if msg=$(peftc_logits "$W/run_$k" "$W/pc_$k.f32"); then
        close "peftc $k -> export -> adapters load_adapter: logits vs peftc" "$W/pc_$k.f32" "$W/hub_$k.f32" 2 "$(tol $k)"
    else bad "peftc predict $k: $msg"; fi
    if msg=$(peftc_logits "$W/ah_$k" "$W/pcx_$k.f32") && cmp -s "$W/pc_$k.f32.txt" "$W/pcx_$k.f32.txt"; then
        ok "peftc reads its own AdapterHub export of $k: identical probabilities"
    else bad "peftc on its export of $k: ${msg:-probabilities differ}"; fi
done
# the exported config is AdapterHub's (BnConfig fields, the scaling, the bottleneck)
if [ -s "$W/ah_scaled_learned/adapter_config.json" ] &&
   "$PY" - "$W/ah_scaled_learned/adapter_config.json" "$W/ah_pfeiffer_r3/adapter_config.json" <<'PYEOF'
import json, sys
a = json.load(open(sys.argv[1]))["config"]; b = json.load(open(sys.argv[2]))["config"]
assert a["is_parallel"] and a["scaling"] == "learned" and a["output_adapter"] and not a["mh_adapter"], a
assert not b["is_parallel"] and not b["original_ln_before"] and b["non_linearity"] == "relu", b
assert int(32 // b["reduction_factor"]) == 3, b["reduction_factor"]
PYEOF
then ok "exported configs: par with scaling learned; sequential with original_ln_before false, relu, 32 // reduction_factor = 3"
else bad "exported adapter_config.json fields"; fi
# LoRA / (IA)^3 exports: LoRAConfig's fields, alpha / r as peftc's scale, and
# trained (nonzero B, vectors away from 1) so that the logit checks above see them
if [ -s "$W/ah_lora_all/adapter_config.json" ] && [ -s "$W/ah_ia3_form/adapter_config.json" ] &&
   "$VPY" - "$W" <<'PYEOF'
import json, sys
from safetensors.torch import load_file
W = sys.argv[1]
a = json.load(open(f"{W}/ah_lora_all/adapter_config.json"))["config"]
assert a["architecture"] == "lora" and a["composition_mode"] == "add" and a["r"] == 3, a
assert abs(a["alpha"] / a["r"] - 5 / 3 ** 0.5) < 1e-12, a["alpha"]          # rsLoRA's alpha / sqrt(r)
assert a["attn_matrices"] == ["q", "k", "v"] and a["intermediate_lora"] and a["output_lora"], a
b = json.load(open(f"{W}/ah_ia3_form/adapter_config.json"))["config"]
assert b["composition_mode"] == "scale" and b["r"] == 1 and b["alpha"] == 1 and b["attn_matrices"] == ["k", "v"], b
assert b["intermediate_lora"] and not b["output_lora"], b
t = load_file(f"{W}/ah_lora/adapter.safetensors")
assert sorted({k.split(".loras.")[0].split(".")[-1] for k in t}) == ["query", "value"], list(t)
assert min(v.abs().max().item() for k, v in t.items() if k.endswith("lora_B")) > 1e-4
t = load_file(f"{W}/ah_ia3_form/adapter.safetensors")
assert len(t) == 6 and all(v.shape[1] == 1 for v in t.values()), {k: v.shape for k, v in t.items()}
assert max((v - 1).abs().max().item() for v in t.values()) > 1e-4
PYEOF
then ok "exported LoRA / (IA)^3 configs: rsLoRA alpha = 5 sqrt(3), q k v intermediate output; scale r 1 alpha 1 on k v intermediate; trained tensors"
else bad "exported LoRA / (IA)^3 adapter_config.json or tensors"; fi

# 2. AdapterHub -> peftc
MK="seq double par learned lora lora_all ia3 ia3_all"
args=(); for k in $MK; do args+=("$k" "$W/m_$k"); done
if ! log=$(nice "$VPY" $R make "$M" 11 "${args[@]}" 2>&1); then printf '%s\n' "$log" | tail -3; bad "adapters could not make its adapters"; fi
lp=(); for k in $MK; do [ -d "$W/m_$k" ] && lp+=("$W/m_$k" "$W/hubm_$k.f32"); done
[ ${#lp[@]} -gt 0 ] && { nice "$VPY" $R logits "$M" "$W/sents.txt" "${lp[@]}" >/dev/null 2>&1 || bad "adapters could not run its own adapters"; }
for k in $MK; do
    [ -s "$W/hubm_$k.f32" ] || { bad "no adapters logits for $k"; continue; }
    if msg=$(peftc_logits "$W/m_$k" "$W/pcm_$k.f32"); then
        close "adapters-made $k (random, nonzero) -> peftc predict: logits vs adapters" "$W/pcm_$k.f32" "$W/hubm_$k.f32" 3 "$(tol $k)"
    else bad "peftc predict on adapters-made $k: $msg"; fi
done
printf 'sentence\tlabel\nthe film is good .\tpos\nthe plot is awful .\tneg\na movie .\tneu\n' > "$W/lab.tsv"
if out=$(./peftc eval --model "$M" --adapter "$W/m_double" --data "$W/lab.tsv" 2>&1) && printf '%s' "$out" | grep -q '"accuracy"'; then
    ok "peftc eval --adapter ADAPTERHUB_DIR runs with the head's labels (neg, neu, pos)"
else bad "peftc eval on an AdapterHub directory: $(echo "$out" | tail -1)"; fi

# 3. bad input: one line, non-zero exit
badcase() {   # NAME PATTERN ARGS...
    local name=$1 pat=$2; shift 2
    local out rc
    out=$(./peftc "$@" 2>&1 >/dev/null < "$W/sents.txt"); rc=$?
    if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && printf '%s' "$out" | grep -q -- "$pat"; then ok "bad input, $name: $out"
    else bad "bad input, $name: rc $rc, '$out'"; fi
}
P="predict --model $M --adapter"
nice "$VPY" $R make "$M" 12 seq_default "$W/b_lnbefore" >/dev/null 2>&1
nice "$VPY" $R make "$M" 12 --pickle seq "$W/b_pickle" >/dev/null 2>&1
badcase "seq_bn as shipped (original_ln_before)" "adapter_config.json: AdapterHub config original_ln_before is set" $P "$W/b_lnbefore"
badcase "a pickle only" "pytorch_adapter.bin: a pickle, which is not read.*use_safetensors=True" $P "$W/b_pickle"
edit() {   # SRC DST PYTHON-on-(cfg, head, ad, hd) : a changed copy
    rm -rf "$2"; cp -r "$1" "$2"
    "$VPY" - "$2" "$3" <<'PYEOF'
import json, os, sys
from safetensors.torch import load_file, save_file
d, code = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{d}/adapter_config.json")); head = json.load(open(f"{d}/head_config.json"))
ad = load_file(f"{d}/adapter.safetensors"); hd = load_file(f"{d}/model_head.safetensors")
exec(code)
json.dump(cfg, open(f"{d}/adapter_config.json", "w")); json.dump(head, open(f"{d}/head_config.json", "w"))
save_file(ad, f"{d}/adapter.safetensors"); save_file(hd, f"{d}/model_head.safetensors")
if os.path.exists(f"{d}/drop_head"): os.remove(f"{d}/head_config.json"); os.remove(f"{d}/drop_head")
PYEOF
}
if [ -d "$W/m_seq" ]; then
    S=$W/m_seq
    edit $S "$W/b_extra" 'import torch; ad["bert.encoder.layer.0.output.adapters.ah_seq.adapter_norm_after.weight"] = torch.ones(32)'
    badcase "an extra tensor" "adapter.safetensors: tensor 'bert.encoder.layer.0.output.adapters.ah_seq.adapter_norm_after.weight' is not a parameter" $P "$W/b_extra"
    edit $S "$W/b_miss" 'del ad["bert.encoder.layer.1.output.adapters.ah_seq.adapter_up.weight"]'
    badcase "a missing tensor" "adapter.safetensors: tensor 'bert.encoder.layer.1.output.adapters.ah_seq.adapter_up.weight' is missing" $P "$W/b_miss"
    edit $S "$W/b_headx" 'import torch; hd["heads.ah_seq.7.weight"] = torch.ones(3, 3)'
    badcase "an extra head tensor" "model_head.safetensors: tensor 'heads.ah_seq.7.weight' is not a parameter" $P "$W/b_headx"
    edit $S "$W/b_shape" 'cfg["config"]["reduction_factor"] = 4'
    badcase "another bottleneck size (shape)" "adapter.safetensors: tensor '.*adapter_down.0.weight' has a shape that does not fit" $P "$W/b_shape"
    edit $S "$W/b_field" 'cfg["config"]["new_option"] = True'
    badcase "an unknown config field" "adapter_config.json: AdapterHub config field \"new_option\" is not known here" $P "$W/b_field"
    edit $S "$W/b_chan" 'cfg["config"]["scaling"] = "channel"'
    badcase "per-channel scaling" "adapter_config.json: AdapterHub scaling channel" $P "$W/b_chan"
    edit $S "$W/b_gate" 'cfg["config"]["use_gating"] = True'
    badcase "a gated adapter" "adapter_config.json: AdapterHub config use_gating is set" $P "$W/b_gate"
    edit $S "$W/b_act" 'cfg["config"]["non_linearity"] = "gelu_new"'
    badcase "an activation peftc lacks" "non_linearity gelu_new is not one of" $P "$W/b_act"
    edit $S "$W/b_arch" 'cfg["config"]["architecture"] = "prefix_tuning"'
    badcase "another architecture" "architecture \"prefix_tuning\": only bottleneck, LoRA and (IA)^3 adapters" $P "$W/b_arch"
    edit $S "$W/b_nohead" 'open(f"{d}/drop_head", "w").close()'
    badcase "no head_config.json" "head_config.json: missing" $P "$W/b_nohead"
    edit $S "$W/b_pooler" 'head["config"]["use_pooler"] = True'
    badcase "a head on the pooler" "head_config.json: use_pooler" $P "$W/b_pooler"
else bad "no adapters-made seq adapter for the bad-input cases"; fi
nice "$VPY" $R make "$M" 12 prompt "$W/b_prompt" >/dev/null 2>&1
badcase "prompt tuning (the prompt after the embedding LayerNorm)" "adapter_config.json: AdapterHub architecture \"prompt_tuning\": its prompt is joined to the embedding layer's output" $P "$W/b_prompt"
if [ -d "$W/m_lora" ] && [ -d "$W/m_ia3" ]; then
    S=$W/m_lora
    edit $S "$W/b_lgate" 'cfg["config"]["use_gating"] = True'
    badcase "LoRA with a gate" "adapter_config.json: AdapterHub config use_gating is set" $P "$W/b_lgate"
    edit $S "$W/b_dora" 'cfg["config"]["use_dora"] = True'
    badcase "DoRA" "adapter_config.json: AdapterHub config use_dora is set" $P "$W/b_dora"
    edit $S "$W/b_vera" 'cfg["config"]["vera_d"] = 0.1'
    badcase "VeRA" "adapter_config.json: AdapterHub config vera_d is set" $P "$W/b_vera"
    edit $S "$W/b_dtype" 'cfg["config"]["dtype"] = "bfloat16"'
    badcase "LoRA in bfloat16" "adapter_config.json: AdapterHub config dtype bfloat16" $P "$W/b_dtype"
    edit $S "$W/b_lleave" 'cfg["config"]["leave_out"] = [0]'
    badcase "LoRA in some layers" "adapter_config.json: AdapterHub leave_out" $P "$W/b_lleave"
    edit $S "$W/b_lfield" 'cfg["config"]["lora_new"] = 1'
    badcase "an unknown LoRA field" "adapter_config.json: AdapterHub config field \"lora_new\" is not known here" $P "$W/b_lfield"
    edit $S "$W/b_lk" 'cfg["config"]["attn_matrices"] = ["q", "v", "k"]'
    badcase "LoRA config naming a module the file lacks" "adapter.safetensors: tensor '.*attention.self.key.loras.ah_lora.lora_A' is missing" $P "$W/b_lk"
    edit "$W/m_ia3" "$W/b_ir" 'cfg["config"]["r"] = 2'
    badcase "(IA)^3 with r 2" "adapter_config.json: AdapterHub composition_mode \"scale\" needs r 1" $P "$W/b_ir"
    edit "$W/m_ia3" "$W/b_ishape" 'import torch; ad["bert.encoder.layer.0.attention.self.key.loras.ah_ia3.lora_B"] = torch.ones(1, 32)'
    badcase "(IA)^3 vector of another shape" "adapter.safetensors: tensor 'bert.encoder.layer.0.attention.self.key.loras.ah_ia3.lora_B' has a shape" $P "$W/b_ishape"
else bad "no adapters-made LoRA / (IA)^3 adapters for the bad-input cases"; fi
E="export --format adapterhub --model $M --out $W/x"
nice ./peftc train $c --seed 7 --method adapter-houlsby --out "$W/run_houlsby" >/dev/null 2>&1
nice ./peftc train $c --seed 7 --method ia3 --out "$W/run_ia3" >/dev/null 2>&1
nice ./peftc train $c --seed 7 --method lora --target-modules query,attention.output.dense --out "$W/run_lora_o" >/dev/null 2>&1
nice ./peftc train $c --seed 7 --method prompt --num-virtual 2 --out "$W/run_prompt" >/dev/null 2>&1
nice ./peftc train $c --seed 7 --method mh-parallel-adapter --out "$W/run_mh" >/dev/null 2>&1
badcase "export of the Houlsby preset (trained LayerNorms)" "trains the layers' LayerNorms, which an AdapterHub adapter cannot carry" $E --adapter "$W/run_houlsby"
badcase "export of peftc's ia3 preset (ffn.act, after the GELU)" "delta site=ffn.act,kind=scale: AdapterHub's (IA)^3 scales intermediate.dense's output" $E --adapter "$W/run_ia3"
badcase "export of LoRA on attention.output.dense" "LoRA target attn.o: AdapterHub puts LoRA on query, key, value" $E --adapter "$W/run_lora_o"
badcase "export of prompt tuning" "AdapterHub joins a prompt to the embedding layer's output" $E --adapter "$W/run_prompt"
badcase "export of a multi-head adapter" "AdapterHub places bottlenecks at attn.out and ffn.out only" $E --adapter "$W/run_mh"
badcase "export, a bad name" "letters, digits" $E --adapter "$W/run_pfeiffer" --name "a.b"
[ -s "$W/diffs" ] && { echo "# max abs logit differences:"; sed 's/^/#   /' "$W/diffs"; }
finish
