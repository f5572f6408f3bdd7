#!/usr/bin/env bash
# peftc merge-adapters against HF PEFT's add_weighted_adapter (tests/ref_merge.py)
# on the same LoRA adapters, every combination type; DARE statistically; a
# merged adapter loads and predicts (cat of a and b = stack(a,b)); bad input.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1 GOMP_SPINCOUNT=10000
PY=/usr/bin/python3
W=$(mktemp -d /tmp/peftc_merge.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
$PY tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "cannot build the tiny model"; finish; }
T=$W/tiny/model
if ! out=$($PY tests/ref_merge.py gen "$T" "$W" 2>&1); then printf '%s\n' "$out" | tail -5; bad "ref_merge.py gen"; finish; fi
ok "PEFT oracle: $(printf '%s\n' "$out" | tail -1)"

while read -r case names weights comb dens rank maj; do
    args=()
    for ((i = 0; i < ${#names}; i++)); do x=${names:$i:1}; args+=(--adapter "$x=$W/$x"); done
    args+=(--weights "$weights" --combination "$comb" --majority-sign "$maj")
    [ "$dens" != - ] && args+=(--density "$dens")
    [ "$rank" != - ] && args+=(--svd-rank "$rank")
    if ! ./peftc merge-adapters "${args[@]}" --out "$W/m_$case" 2>"$W/err"; then bad "$case: $(cat "$W/err")"; continue; fi
    if r=$($PY tests/ref_merge.py compare "$case" "$W/ref_$case.safetensors" "$W/m_$case" 2>&1); then ok "$case ($comb of $names): $r"
    else bad "$case ($comb of $names): $r"; fi
done < <($PY tests/ref_merge.py cases)

# DARE (random masks: peftc's generator, not torch's)
for d in 0.3 0.7; do
    ./peftc merge-adapters --adapter "$W/a" --adapter "$W/b" --adapter "$W/c" --weights 1.0,0.7,-0.4 --combination dare_linear --density $d --seed 11 --out "$W/dl$d" &&
    ./peftc merge-adapters --adapter "$W/a" --adapter "$W/b" --adapter "$W/c" --weights 1.0,0.7,-0.4 --combination dare_ties --density $d --seed 11 --out "$W/dt$d" || bad "dare runs"
    if r=$($PY tests/ref_merge.py dare "$W" "$W/dl$d" "$W/dt$d" $d 2>&1); then ok "DARE density $d: $r"; else bad "DARE density $d: $r"; fi
done
./peftc merge-adapters --adapter "$W/a" --adapter "$W/b" --combination dare_linear --density 0.5 --seed 1 --out "$W/s1" &&
./peftc merge-adapters --adapter "$W/a" --adapter "$W/b" --combination dare_linear --density 0.5 --seed 2 --out "$W/s2" &&
./peftc merge-adapters --adapter "$W/a" --adapter "$W/b" --combination dare_linear --density 0.5 --seed 1 --out "$W/s1b" || bad "dare seeds"
if cmp -s "$W/s1/adapter_model.safetensors" "$W/s1b/adapter_model.safetensors" && ! cmp -s "$W/s1/adapter_model.safetensors" "$W/s2/adapter_model.safetensors"; then
    ok "DARE: one seed reproduces its masks, another seed draws others"; else bad "DARE seeds"; fi

# a merged peftc adapter predicts: cat(a, b) with b's head = stack(a,b); b's targets are a regular
# expression (output.dense is ambiguous), a's a list: the union is one expression
c="--model $T --batch 8 --train $W/tiny/train.tsv --epochs 3 --lr 0.01"
./peftc train $c --seed 1 --method lora --r 4 --out "$W/ta" >/dev/null 2>&1 &&
./peftc train $c --seed 2 --method lora --r 2 --target-modules query,key,value,output.dense --out "$W/tb" >/dev/null 2>&1 || bad "train"
cut -f1 "$W/tiny/dev.tsv" | tail -n +2 > "$W/in.txt"
./peftc merge-adapters --adapter a="$W/ta" --adapter b="$W/tb" --combination cat --head b --out "$W/cat_ab" || bad "cat merge"
./peftc predict --model $T --adapter "$W/cat_ab" --probs > "$W/p_cat.txt" < "$W/in.txt"
./peftc predict --model $T --adapter a="$W/ta" --adapter b="$W/tb" --compose 'stack(a,b)' --probs > "$W/p_stack.txt" < "$W/in.txt"
if [ -s "$W/p_cat.txt" ] && $PY tests/ref_multi.py compare "$W/p_cat.txt" "$W/p_stack.txt" 2e-6 >/dev/null; then
    ok "merge-adapters cat (--head b) predicts as stack(a,b)"; else bad "cat merge vs stack(a,b)"; fi

# --- bad input
expect_fail() {
    local name=$1 needle=$2; shift 2
    local rc
    "$@" > /dev/null 2> "$W/err" < /dev/null; rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$name: exit $rc"; return; fi
    if [ "$(grep -c '^peftc: ' "$W/err")" -ne 1 ] || [ "$(wc -l < "$W/err")" -ne 1 ]; then bad "$name: stderr: $(cat "$W/err")"; return; fi
    if grep -qF -- "$needle" "$W/err"; then ok "$name: $(cat "$W/err")"; else bad "$name: lacks '$needle': $(cat "$W/err")"; fi
}
M="./peftc merge-adapters --out $W/bad"
expect_fail "weights of the wrong count" "3 weights for 2 adapters" $M --adapter "$W/a" --adapter "$W/b" --weights 1,2,3
expect_fail "svd rank 0" "--svd-rank 0: must be a positive integer" $M --adapter "$W/a" --adapter "$W/b" --svd-rank 0
expect_fail "svd rank beyond the width" "exceeds min(out, in)" $M --adapter "$W/a" --adapter "$W/b" --svd-rank 999
expect_fail "ties without a density" "needs a density" $M --adapter "$W/a" --adapter "$W/b" --combination ties
expect_fail "unknown combination" "--combination blend" $M --adapter "$W/a" --adapter "$W/b" --combination blend
expect_fail "ranks differ for linear" "needs adapters of one rank" $M --adapter "$W/a" --adapter "$W/d" --combination linear
$PY - "$W" <<'PYEOF'
import json, os, shutil, sys
from safetensors.torch import load_file, save_file
w = sys.argv[1]
shutil.copytree(f"{w}/a", f"{w}/wide")
t = load_file(f"{w}/wide/adapter_model.safetensors")
k = next(k for k in t if k.endswith("lora_A.weight"))
import torch
t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] * 2)
save_file(t, f"{w}/wide/adapter_model.safetensors")
shutil.copytree(f"{w}/a", f"{w}/other")
c = json.load(open(f"{w}/other/adapter_config.json")); c["base_model_name_or_path"] = "/x/roberta-base"
json.dump(c, open(f"{w}/other/adapter_config.json", "w"))
shutil.copytree(f"{w}/a", f"{w}/ia3")
c = json.load(open(f"{w}/ia3/adapter_config.json")); c["peft_type"] = "IA3"
json.dump(c, open(f"{w}/ia3/adapter_config.json", "w"))
PYEOF
expect_fail "shapes that do not fit" "shapes that do not fit" $M --adapter "$W/a" --adapter "$W/wide" --combination cat
expect_fail "adapters of different base models" "trained on base model 'roberta-base'" $M --adapter "$W/a" --adapter "$W/other"
expect_fail "an (IA)^3 adapter" "peft_type IA3: only LoRA adapters" $M --adapter "$W/a" --adapter "$W/ia3"
expect_fail "--head naming no adapter" "--head zz" $M --adapter a="$W/a" --adapter b="$W/b" --head zz
expect_fail "duplicate names" "given twice" $M --adapter a="$W/a" --adapter a="$W/b"
finish
