#!/usr/bin/env bash
# check_fusion.sh: AdapterFusion (peftc fuse) against an independent float64
# PyTorch oracle (tests/ref_fusion.py: AdapterHub's BertFusion, "dynamic"
# config, written from its definition) on the tiny random BERT of
# tests/ref_methods.py, through tests/methods_grad.c (method fusion): loss,
# logits and every fusion/head tensor's gradient, at T = 1 and T = 2.5, with
# and without the 0.01 ||I - W_V||^2 regulariser, single sentences and pairs;
# then peftc fuse / eval on trained tiny adapters and bad input.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1
PY=${PYTHON:-/usr/bin/python3}
FX=tests/out/fusion_ref
rm -rf "$FX"; mkdir -p "$FX"
tally "$("$PY" tests/ref_fusion.py gen "$FX" 2>&1)"
if build_driver methods_grad; then
    tally "$(timeout 300 "$PY" tests/ref_fusion.py compare "$FX" build/tests/methods_grad 2>&1)"
fi
W=$(mktemp -d /tmp/peftc_fusion.XXXXXX)
trap 'rm -rf "$W"' EXIT
$PY tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "cannot build the tiny model"; finish; }
T=$W/tiny/model
c="--model $T --batch 8 --train $W/tiny/train.tsv --epochs 2 --lr 0.01"
for s in 1 2; do ./peftc train $c --seed $s --method adapter-pfeiffer --out "$W/p$s" >/dev/null 2>&1 || bad "train p$s"; done
./peftc train $c --seed 3 --method lora --out "$W/l" >/dev/null 2>&1 || bad "train lora"
if ./peftc fuse $c --adapters a="$W/p1",b="$W/p2" --eval "$W/tiny/dev.tsv" --out "$W/f" >/dev/null 2>"$W/f.log"; then
    ok "peftc fuse over two adapters"
    e1=$(./peftc eval --model $T --adapter "$W/f" --data "$W/tiny/dev.tsv" | grep -o '"accuracy": [0-9.]*')
    e0=$(grep -o 'eval accuracy [0-9.]*' "$W/f.log" | tail -1 | awk '{print $3}')
    case "$e1" in *"$e0"*) ok "eval --adapter FUSION_RUN gives the training's eval accuracy ($e0)";; *) bad "eval of the fusion run: $e1 vs training $e0";; esac
    [ -f "$W/f/adapters/a/adapter_model.safetensors" ] && ok "the fusion run holds its adapters" || bad "no adapters/a in the run"
    # the fusion weight table: one row per layer, each a distribution over the adapters
    if tab=$(./peftc inspect "$W/f" --model $T --data "$W/tiny/dev.tsv" 2>&1) &&
       printf '%s\n' "$tab" | awk -v L=2 '$1 ~ /^[0-9]+$/ { n++; s = 0; for (i = 2; i <= NF; i++) s += $i;
                                              if (s < 0.999 || s > 1.001 || NF != 3) exit 1 }
                                              END { exit n == L ? 0 : 1 }'; then
        ok "inspect RUN --model --data: a fusion weight row per layer, each summing to 1 ($(printf '%s' "$tab" | grep '^mean'))"
    else bad "inspect of the fusion run: $tab"; fi
else bad "peftc fuse: $(tail -1 "$W/f.log")"; fi
# bad input: one line, non-zero exit
badcase() {   # NAME PATTERN ARGS...
    local name=$1 pat=$2; shift 2
    local out rc
    out=$(./peftc "$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && printf '%s' "$out" | grep -q -- "$pat"; then ok "bad input, $name: $out"
    else bad "bad input, $name: rc $rc, '$out'"; fi
}
badcase "one adapter" "at least two adapters" fuse $c --adapters a="$W/p1" --out "$W/x1"
badcase "duplicate name" "given twice" fuse $c --adapters a="$W/p1",a="$W/p2" --out "$W/x2"
badcase "a LoRA adapter" "fusion fuses bottleneck adapters" fuse $c --adapters a="$W/p1",l="$W/l" --out "$W/x3"
badcase "missing directory" "not found\|cannot open" fuse $c --adapters a="$W/p1",b="$W/nope" --out "$W/x4"
mkdir -p "$W/other"; cp "$W/p2/"* "$W/other/"
sed -i 's|"base_model_name_or_path": "[^"]*"|"base_model_name_or_path": "/elsewhere/bert-base"|' "$W/other/adapter_config.json"
badcase "different base" "trained on base model" fuse $c --adapters a="$W/p1",b="$W/other" --out "$W/x5"
badcase "inspect --data of a non-fusion adapter" "not an AdapterFusion run" inspect "$W/l" --model $T --data "$W/tiny/dev.tsv"
if [ -d "$W/f" ]; then
    cp -r "$W/f" "$W/f2"; printf ' ' >> "$W/f2/adapters/b/adapter_config.json"
    badcase "changed adapter (checksum)" "not the one the fusion was trained with" eval --model $T --adapter "$W/f2" --data "$W/tiny/dev.tsv"
fi
finish
