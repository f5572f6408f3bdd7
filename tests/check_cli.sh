#!/usr/bin/env bash
# Bad input through the command-line tool: every case must exit non-zero (not
# by a signal), print exactly one line on stderr naming the file or option and
# the problem, leak nothing (valgrind, where marked), and leave no half-written
# file. Also: training, eval, predict and bit-exact resume on a tiny model.
set -u
cd "$(dirname "$0")/.."
# set here so peftc does not restart itself to set it (valgrind must see the real process)
export GOMP_SPINCOUNT=10000
PY=/usr/bin/python3
W=$(mktemp -d /tmp/peftc_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0; fail=0
ok()   { pass=$((pass + 1)); echo "ok   - $*"; }
bad()  { fail=$((fail + 1)); echo "FAIL - $*"; }

$PY tests/make_tiny_bert.py "$W/tiny" || { echo "FAIL - cannot build the tiny model"; echo "## 0 1"; exit 1; }
T=$W/tiny/model

# expect_fail NAME NEEDLE  (one 'peftc: ' error line containing NEEDLE)
# expect_fail NAME NEEDLE [valgrind] -- CMD... ; stdin from $STDIN (default /dev/null)
expect_fail() {
    local name="$1" needle="$2" vg="" ; shift 2
    if [ "$1" = valgrind ]; then vg=1; shift; fi
    [ "$1" = -- ] && shift
    local err="$W/err" rc
    if [ -n "$vg" ]; then
        valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
            "$@" <"${STDIN:-/dev/null}" >/dev/null 2>"$err"; rc=$?
    else
        "$@" <"${STDIN:-/dev/null}" >/dev/null 2>"$err"; rc=$?
    fi
    local lines
    lines=$(grep -c '^peftc: ' "$err")   # progress lines of train may precede the error
    if [ "$rc" -eq 99 ]; then bad "$name: valgrind found errors or leaks"; sed 's/^/    /' "$err" | head -20; return; fi
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$name: exit code $rc"; cat "$err"; return; fi
    if [ "$lines" -ne 1 ]; then bad "$name: $lines error lines on stderr"; cat "$err"; return; fi
    if ! grep '^peftc: ' "$err" | grep -qF -- "$needle"; then bad "$name: message lacks '$needle': $(cat "$err")"; return; fi
    ok "$name: $(grep '^peftc: ' "$err")${vg:+ (valgrind clean)}"
}

echo "good text" > "$W/one.txt"
# --- model files (issue: foundation) ---
cp -r "$T" "$W/trunc"; head -c 20000 "$T/model.safetensors" > "$W/trunc/model.safetensors"
STDIN=$W/one.txt expect_fail "truncated safetensors" "trunc/model.safetensors" valgrind -- ./peftc embed --model "$W/trunc"
$PY - "$W" <<'PYEOF'
import json, struct, sys
w = sys.argv[1]
def st(name, header, data=b"", fake_len=None):
    h = json.dumps(header).encode()
    open(f"{w}/{name}", "wb").write(struct.pack("<Q", fake_len if fake_len is not None else len(h)) + h + data)
st("hdrlen.safetensors", {}, fake_len=10**12)
st("offsets.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
st("overlap.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16)
st("dtype.safetensors", {"a": {"dtype": "F8_E9", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
PYEOF
expect_fail "header length past EOF" "header length" valgrind -- ./peftc inspect "$W/hdrlen.safetensors"
expect_fail "offsets outside the data" "outside" -- ./peftc inspect "$W/offsets.safetensors"
expect_fail "overlapping tensors" "overlap" -- ./peftc inspect "$W/overlap.safetensors"
expect_fail "unknown dtype" "unknown dtype" -- ./peftc inspect "$W/dtype.safetensors"
cp -r "$T" "$W/nofield"; $PY -c "import json,sys; c=json.load(open('$T/config.json')); del c['num_hidden_layers']; json.dump(c, open('$W/nofield/config.json','w'))"
STDIN=$W/one.txt expect_fail "config.json missing a field" "num_hidden_layers" valgrind -- ./peftc embed --model "$W/nofield"
cp -r "$T" "$W/gpt2"; $PY -c "import json; c=json.load(open('$T/config.json')); c['model_type']='gpt2'; json.dump(c, open('$W/gpt2/config.json','w'))"
STDIN=$W/one.txt expect_fail "config.json of another architecture" "gpt2" -- ./peftc embed --model "$W/gpt2"
cp -r "$T" "$W/notok"; rm "$W/notok/vocab.txt"
STDIN=$W/one.txt expect_fail "model directory without tokenizer files" "notok" valgrind -- ./peftc embed --model "$W/notok"
expect_fail "missing model directory" "nowhere" -- ./peftc tokenize --model "$W/nowhere"
printf 'good\n\nbad\n' > "$W/empty_line.txt"
STDIN=$W/empty_line.txt expect_fail "empty input line" "stdin:2: empty line" valgrind -- ./peftc embed --model "$T"
$PY -c "import sys; sys.stdout.write('a' * (1 << 20) + 'b\n')" > "$W/long.txt"
STDIN=$W/long.txt expect_fail "over-long input line" "exceeds" -- ./peftc tokenize --model "$T"
printf 'good \xff\xfe movie\n' > "$W/bad_utf8.txt"
STDIN=$W/bad_utf8.txt expect_fail "invalid UTF-8" "invalid UTF-8" valgrind -- ./peftc tokenize --model "$T"
expect_fail "unknown command" "unknown command" -- ./peftc frobnicate
expect_fail "unknown option" "--frob" -- ./peftc embed --model "$T" --frob

# --- training (issue: training engine) ---
common="--model $T --batch 8 --seed 3"
if ./peftc train $common --train "$W/tiny/train.tsv" --eval "$W/tiny/dev.tsv" --method lora --r 4 --epochs 2 --out "$W/run" 2>"$W/log"; then
    ok "train lora on the tiny model"
else bad "train lora: $(tail -1 "$W/log")"; fi
for f in adapter_config.json adapter_model.safetensors metrics.json; do
    [ -s "$W/run/$f" ] && ok "run dir has $f" || bad "run dir lacks $f"
done
if $PY -c "import json,sys; m=json.load(open('$W/run/metrics.json')); sys.exit(0 if all(k in m for k in ('eval_accuracy','eval_loss','trainable_params','total_params','train_tokens_per_s','train_seconds')) else 1)"; then
    ok "metrics.json has the required fields"; else bad "metrics.json lacks fields"; fi
out=$(./peftc eval --model "$T" --adapter "$W/run" --data "$W/tiny/dev.tsv" 2>&1)
echo "$out" | $PY -c "import json,sys; r=json.load(sys.stdin); sys.exit(0 if {'accuracy','loss','f1','mcc'} <= set(r) else 1)" \
    && ok "eval prints accuracy, loss, f1, mcc: $out" || bad "eval output: $out"
n=$(printf 'the film was good .\nthe plot is awful .\n' | ./peftc predict --model "$T" --adapter "$W/run" | grep -cE '^[01]$')
[ "$n" = 2 ] && ok "predict gives one label per line" || bad "predict output lines: $n"

printf '0\tthe movie is good .\t7\n' > "$W/badlabel.tsv"; sed -i '1i index\tsentence\tlabel' "$W/badlabel.tsv"
expect_fail "eval label outside the label set" "outside the label set" valgrind -- ./peftc eval --model "$T" --adapter "$W/run" --data "$W/badlabel.tsv"
printf 'sentence\tlabel\n' > "$W/empty.tsv"
expect_fail "empty training file" "no examples" -- ./peftc train $common --train "$W/empty.tsv" --method lora --out "$W/r_empty"
expect_fail "sentence-pair column missing" "nope" -- ./peftc train $common --train "$W/tiny/pairs.tsv" --text-col sentence1 --text-pair-col nope --label-col label --method lora --out "$W/r_pair"
expect_fail "unknown method" "unknown method" -- ./peftc train $common --train "$W/tiny/train.tsv" --method magic --out "$W/r_m"
expect_fail "LoRA rank larger than the width" "the width of query" -- ./peftc train $common --train "$W/tiny/train.tsv" --method lora --r 64 --out "$W/r_r"

# --- the design space (methods, deltas) ---
tr="$common --train $W/tiny/train.tsv --max-steps 1"
expect_fail "unknown site" "unknown site 'attn.z'" -- ./peftc train $tr --method custom --delta 'site=attn.z,r=2' --out "$W/d1"
expect_fail "rank <= 0" "r must be a positive integer" -- ./peftc train $tr --method custom --delta 'site=ffn.out,r=0' --out "$W/d2"
expect_fail "rank larger than the width" "r=1000 must be in [1, 32]" -- ./peftc train $tr --method adapter-pfeiffer --r 1000 --out "$W/d3"
expect_fail "unknown delta key" "unknown key 'rank'" -- ./peftc train $tr --method custom --delta 'site=ffn.out,rank=4' --out "$W/d4"
expect_fail "bottleneck at ffn.act" "only kind=scale" -- ./peftc train $tr --method custom --delta 'site=ffn.act,r=2' --out "$W/d9"
expect_fail "custom without --delta" "at least one --delta" -- ./peftc train $tr --method custom --out "$W/d5"
expect_fail "prefix overflowing the positions" "overflows" -- ./peftc train $tr --method prefix --prefix-len 100 --out "$W/d6"
expect_fail "prompt overflowing the sequence" "leave no room" -- ./peftc train $tr --method prompt --num-virtual 62 --out "$W/d7"
expect_fail "template without the input placeholder" "no {text} placeholder" -- ./peftc train $tr --method ptuning --template 'P P' --out "$W/d8"
for m in ia3 adapter-houlsby mh-parallel-adapter prefix ptuning mam unipelt; do
    if ./peftc train $common --train "$W/tiny/train.tsv" --method $m --prefix-len 4 --num-virtual 3 --max-steps 2 --out "$W/m_$m" 2>"$W/log" &&
       ./peftc eval --model "$T" --adapter "$W/m_$m" --data "$W/tiny/dev.tsv" >"$W/ev" 2>>"$W/log"; then
        ok "$m: train, save, load, eval: $(cat "$W/ev")"
    else bad "$m: $(tail -1 "$W/log")"; fi
done
$PY - "$T" "$W/wide" <<'PYEOF'
import json, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
c = json.load(open(f"{src}/config.json"))
c["hidden_size"] = 48
json.dump(c, open(f"{dst}/config.json", "w"))
t = load_file(f"{src}/model.safetensors")
def widen(a):
    shape = [48 if d == 32 else d for d in a.shape]
    out = np.zeros(shape, np.float32); out[tuple(slice(0, d) for d in a.shape)] = a
    return out
save_file({k: widen(v) for k, v in t.items()}, f"{dst}/model.safetensors", metadata={"format": "pt"})
PYEOF
expect_fail "adapter whose deltas don't fit the model" "does not fit this model" -- ./peftc eval --model "$W/wide" --adapter "$W/m_adapter-houlsby" --data "$W/tiny/dev.tsv"
expect_fail "merge of a method that cannot merge" "cannot be merged" -- ./peftc eval --model "$T" --adapter "$W/m_mam" --data "$W/tiny/dev.tsv" --merge

# resume: 2N steps == N steps + resume N steps, bit for bit (dropout on)
rc="--train $W/tiny/train.tsv --method lora --r 4 --lora-dropout 0.1 --max-steps 12"
./peftc train $common $rc --out "$W/whole" 2>/dev/null
./peftc train $common $rc --out "$W/half" --stop-after 6 2>/dev/null
./peftc train $common $rc --out "$W/resumed" --resume "$W/half" 2>/dev/null
if [ -f "$W/whole/adapter_model.safetensors" ] && cmp -s "$W/whole/adapter_model.safetensors" "$W/resumed/adapter_model.safetensors"; then
    ok "12 steps == 6 steps + resume 6 steps (identical adapter bytes)"
else bad "resumed run differs from the uninterrupted one"; fi
if ! cmp -s "$W/whole/adapter_model.safetensors" "$W/half/adapter_model.safetensors"; then ok "the half run differs (the comparison can fail)"; else bad "half == whole"; fi
expect_fail "resume with another method" "method" -- ./peftc train $common --train "$W/tiny/train.tsv" --method bitfit --max-steps 12 --out "$W/r2" --resume "$W/half"
$PY - "$T" "$W/other" <<'PYEOF'
import shutil, sys
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
t = load_file(f"{src}/model.safetensors")
t["embeddings.position_embeddings.weight"] = t["embeddings.position_embeddings.weight"] * 1.5
save_file(t, f"{dst}/model.safetensors", metadata={"format": "pt"})
PYEOF
expect_fail "resume with another model" "another model" -- ./peftc train --model "$W/other" --batch 8 --seed 3 $rc --out "$W/r3" --resume "$W/half"
# a non-finite loss stops the run; the checkpoint already there stays intact
$PY - "$W/half" "$W/naninit" <<'PYEOF'
import json, os, sys
import numpy as np
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
t = load_file(f"{src}/adapter_model.safetensors")
t["base_model.model.classifier.bias"] = np.array([np.inf, 0], dtype=np.float32)
save_file(t, f"{dst}/adapter_model.safetensors", metadata={"format": "pt"})
open(f"{dst}/adapter_config.json", "w").write(open(f"{src}/adapter_config.json").read())
PYEOF
cp "$W/half/checkpoint.safetensors" "$W/ckpt.before"
expect_fail "non-finite loss" "non-finite" -- ./peftc train $common $rc --out "$W/half" --init-adapter "$W/naninit" --save-every 1
cmp -s "$W/ckpt.before" "$W/half/checkpoint.safetensors" && ok "the last good checkpoint is intact" || bad "checkpoint changed"
ls "$W/half"/*.tmp >/dev/null 2>&1 && bad "temp files left behind" || ok "no temp files left behind"

# per-command help: peftc CMD --help and peftc help CMD print that command's usage entries only
for c in train generate merge; do
    out=$(./peftc $c --help 2>&1); rc=$?
    first=$(printf '%s\n' "$out" | head -1)
    if [ "$rc" -eq 0 ] && [ "${first#  $c }" != "$first" ] && ! printf '%s\n' "$out" | grep -q '^  tokenize '; then
        ok "peftc $c --help: $(printf '%s\n' "$out" | wc -l) lines, starting '${first:0:40}...'"
    else bad "peftc $c --help: rc $rc, first line '$first'"; fi
done
cmp -s <(./peftc help eval) <(./peftc eval -h) && ok "peftc help eval == peftc eval -h" || bad "peftc help eval differs from eval -h"
expect_fail "help for an unknown command" "unknown command 'nosuch'" -- ./peftc help nosuch

# the step's thread count is chosen by timing (src/train/team.h): a 2-thread
# run, whose probes run steps with 1 thread, must give the bits of a 1-thread
# run and of a 2-thread run with the tuner off (PEFTC_TEAM_TUNE=0); 14 steps:
# probes after the 2 untimed warm-up steps and every 8 then 16. The real model
# (the tiny one runs its kernels single-threaded), fp32 and bf16 where the CPU
# has it, LoRA, a Pfeiffer adapter and prefix tuning.
MINI=models/all-MiniLM-L6-v2
SST=../shared/data/glue-sst2/train.tsv
if [ -f "$MINI/model.safetensors" ] && [ -f "$SST" ]; then
    head -200 "$SST" > "$W/sst200.tsv"
    precs="--fp32"; grep -qw avx512_bf16 /proc/cpuinfo && precs="--fp32 --bf16"
    for p in $precs; do
        for m in lora adapter-pfeiffer prefix; do
            same=1
            for v in "1 1" "2 1" "2 0"; do
                set -- $v
                if ! env PEFTC_TEAM_TUNE=$2 timeout 300 ./peftc train --model "$MINI" --train "$W/sst200.tsv" --method $m \
                        --batch 8 --max-len 32 --max-steps 14 --seed 3 --threads $1 $p --out "$W/team_${m}_$1_$2" > /dev/null 2> "$W/team.err"; then
                    bad "train $m $p --threads $1 (tuner $2): $(tail -1 "$W/team.err")"; same=0; continue
                fi
                cmp -s "$W/team_${m}_1_1/adapter_model.safetensors" "$W/team_${m}_$1_$2/adapter_model.safetensors" || same=0
            done
            [ $same = 1 ] && ok "train $m $p: --threads 2 with the timed team (probes at 1 thread) = --threads 1 = tuner off, bit for bit" ||
                bad "train $m $p: the adapters of --threads 1, 2 (tuned) and 2 (PEFTC_TEAM_TUNE=0) differ"
        done
    done
else
    bad "missing $MINI or $SST (run scripts/setup.sh)"
fi

echo "## $pass $fail"
[ "$fail" -eq 0 ]
