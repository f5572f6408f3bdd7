#!/usr/bin/env bash
# check_reliability.sh: issue 15. Files from strangers and runs that die.
#  - tokenizer vs model: ids past the embedding table, token types past
#    type_vocab_size (BERT: train/eval/predict/embed; Llama: BPE vocab vs
#    embedding rows) refused once at load, naming the directory;
#  - checkpoints: every metadata field and tensor dtype/size checked, a
#    checksum (recomputed independently by tests/ckpt_tool.py) verified;
#  - SIGINT / SIGTERM save a resumable checkpoint and the adapter (classifier
#    and causal-LM trainers); SIGKILL at random moments, resumed each time,
#    ends byte-identical to an uninterrupted run;
#  - non-finite loss stops with the step and leaves the checkpoint as it was;
#    --skip-nonfinite skips instead;
#  - FIFO / device files, a 100 MB TSV line, a 20 MB CSV line of commas,
#    --batch 65536, bad delta specs and adapter configs, 64-bit-overflowing
#    labels, NaN weights (and NaN/Inf GGUF block scales), impossible sizes: one line, bounded memory;
#  - 100 MB records and prompts to the decoder paths: refused or handled,
#    bounded RSS;
#  - a full disk (tmpfs ENOSPC, ulimit -f EFBIG) at a checkpoint or adapter
#    write leaves the previous files intact;
#  - the README's Errors table, row by row: each row no other check
#    demonstrates provoked through the CLI (exit status, one line, the phrase);
#  - the fuzzers' regression inputs (tests/fuzz/regress/) replayed.
# Every case: exit non-zero (not a signal) with one 'peftc: ' line naming the
# file or option. Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000
PY=/usr/bin/python3
W=$(mktemp -d /tmp/peftc_rel.XXXXXX)
trap 'umount "$W/disk" 2>/dev/null; rm -rf "$W"' EXIT
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf

# expect_fail NAME NEEDLE -- CMD...   (stdin from $STDIN, default /dev/null)
expect_fail() {
    local name="$1" needle="$2"; shift 2
    [ "$1" = -- ] && shift
    local rc
    timeout 60 "$@" <"${STDIN:-/dev/null}" >/dev/null 2>"$W/err"; rc=$?
    local lines
    lines=$(grep -c '^peftc: ' "$W/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then bad "$name: exit code $rc"; tail -3 "$W/err"; return; fi
    if [ "$lines" -ne 1 ]; then bad "$name: $lines error lines on stderr"; tail -3 "$W/err"; return; fi
    if ! grep '^peftc: ' "$W/err" | grep -qF -- "$needle"; then bad "$name: message lacks '$needle': $(grep '^peftc: ' "$W/err")"; return; fi
    ok "$name: $(grep '^peftc: ' "$W/err")"
}

$PY tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "cannot build the tiny model"; finish; }
T=$W/tiny/model
common="--model $T --batch 8 --seed 3"
echo "good movie" > "$W/one.txt"
printf 'good movie\tbad plot\n' > "$W/pair.txt"
./peftc train $common --train "$W/tiny/train.tsv" --method lora --r 4 --max-steps 3 --out "$W/good" 2>/dev/null || bad "training the reference adapter"

# --- 1. tokenizer vs model ---
cp -r "$T" "$W/bigvocab"; printf 'extra1\nextra2\nextra3\n' >> "$W/bigvocab/vocab.txt"
expect_fail "train: vocab.txt longer than the embedding" "the tokenizer has 33 tokens but config.json's vocab_size" -- \
    ./peftc train --model "$W/bigvocab" --train "$W/tiny/train.tsv" --method full --max-steps 1 --out "$W/bv"
expect_fail "eval: vocab.txt longer than the embedding" "bigvocab: the tokenizer has 33 tokens" -- \
    ./peftc eval --model "$W/bigvocab" --adapter "$W/good" --data "$W/tiny/dev.tsv"
STDIN=$W/one.txt expect_fail "predict: vocab.txt longer than the embedding" "bigvocab: the tokenizer has 33 tokens" -- \
    ./peftc predict --model "$W/bigvocab" --adapter "$W/good"
STDIN=$W/one.txt expect_fail "embed: vocab.txt longer than the embedding" "bigvocab: the tokenizer has 33 tokens but config.json's vocab_size (the embedding table) is 30" -- \
    ./peftc embed --model "$W/bigvocab"
cp -r "$T" "$W/onetype"
$PY - "$W/onetype" <<'PYEOF'
import json, sys
from safetensors.numpy import load_file, save_file
d = sys.argv[1]
t = load_file(f"{d}/model.safetensors")
for k in list(t):
    if k.endswith("token_type_embeddings.weight"): t[k] = t[k][:1].copy()
save_file(t, f"{d}/model.safetensors", metadata={"format": "pt"})
c = json.load(open(f"{d}/config.json")); c["type_vocab_size"] = 1; json.dump(c, open(f"{d}/config.json", "w"))
PYEOF
expect_fail "train: sentence pairs on type_vocab_size 1" "config.json has type_vocab_size 1" -- \
    ./peftc train --model "$W/onetype" --train "$W/tiny/pairs.tsv" --text-col sentence1 --text-pair-col sentence2 --label-col label --method lora --max-steps 1 --out "$W/ot"
STDIN=$W/pair.txt expect_fail "embed --pairs on type_vocab_size 1" "type_vocab_size 1" -- ./peftc embed --model "$W/onetype" --pairs
expect_fail "train --gradient-checkpointing on an encoder" "--gradient-checkpointing: bert models do not recompute their layers yet (decoders do)" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --method lora --max-steps 1 --gradient-checkpointing --out "$W/gc"
STDIN=$W/one.txt ./peftc embed --model "$W/onetype" >/dev/null 2>&1 && ok "type_vocab_size 1 still embeds single texts" || bad "type_vocab_size 1 refuses single texts"
if [ -f "$GGUF" ] && $PY tests/make_llama_hf.py tiny "$W/ll" >/dev/null 2>&1 && $PY tests/ref_bpe.py hfjson "$GGUF" "$W/tok" >/dev/null 2>&1; then
    cp "$W/tok/tokenizer.json" "$W/ll/"
    head -40 ../shared/data/gsm8k/train.jsonl > "$W/gsm.jsonl"
    expect_fail "train causal-lm: BPE vocabulary past the embedding rows" "the tokenizer has 49152 tokens but the model's embedding only 97 rows" -- \
        ./peftc train --model "$W/ll" --train "$W/gsm.jsonl" --prompt-template 'Q: {question}\nA:' --response-field answer --method lora --max-steps 1 --out "$W/llv"
    expect_fail "generate: BPE vocabulary past the embedding rows" "49152 tokens" -- ./peftc generate --model "$W/ll" --prompt hi --max-new-tokens 1
else bad "tiny Llama or SmolLM2's tokenizer.json could not be made"; fi

# --- 2. checkpoint metadata ---
rc_="--train $W/tiny/train.tsv --method lora --r 4 --lora-dropout 0.1 --max-steps 12"
./peftc train $common $rc_ --out "$W/half" --stop-after 6 2>/dev/null
CK=$W/half/checkpoint.safetensors
if $PY tests/ckpt_tool.py verify "$CK" >"$W/v" 2>&1; then ok "checkpoint checksum equals the independent recomputation ($(cat "$W/v"))"
else bad "checkpoint checksum: $(cat "$W/v")"; fi
ck_case() { # name needle edits...
    local name="$1" needle="$2"; shift 2
    rm -rf "$W/ck"; mkdir -p "$W/ck"
    $PY tests/ckpt_tool.py edit "$CK" "$W/ck/checkpoint.safetensors" "$@" || { bad "$name: ckpt_tool"; return; }
    expect_fail "resume: $name" "$needle" -- ./peftc train $common $rc_ --out "$W/ck" --resume "$W/ck"
}
ck_case "pos=-100000" "pos '-100000' is not an integer in [0, 48]" pos=-100000
ck_case "pos=2147483647" "pos '2147483647' is not an integer" pos=2147483647
ck_case "step=-1000" "step '-1000' is not an integer" step=-1000
ck_case "epoch=-3" "epoch '-3' is not an integer" epoch=-3
ck_case "rng=zz" "rng 'zz' is not an unsigned 64-bit integer" rng=zz
ck_case "step=6x" "step '6x' is not an integer" step=6x
ck_case "adam_v stored as U8" "tensor adam_v is U8" --u8 adam_v
ck_case "one bit flipped in params" "checksum mismatch" --flip
ck_case "step edited (checksum kept)" "checksum mismatch" step=5
ck_case "no checksum" "no peftc_checksum" --no-sum
ck_case "method edited" "checkpoint of method 'bitfit'" method=bitfit
# an edit that passes every check resumes (the checks do not refuse good files)
rm -rf "$W/ck"; mkdir -p "$W/ck"; $PY tests/ckpt_tool.py edit "$CK" "$W/ck/checkpoint.safetensors" --resum
./peftc train $common $rc_ --out "$W/ck" --resume "$W/ck" 2>/dev/null && ok "a checkpoint rewritten by the independent writer resumes" || bad "independently rewritten checkpoint refused"

# --- 3. signals ---
long="$common --train $W/tiny/train.tsv --method lora --r 4 --lora-dropout 0.1 --max-steps 600 --save-every 5"
t_start=$(date +%s%N)
./peftc train $long --out "$W/whole" 2>/dev/null
whole_ms=$(( ($(date +%s%N) - t_start) / 1000000 ))
for sig in TERM INT; do
    d=$W/sig_$sig; rm -rf "$d"
    ./peftc train $long --out "$d" 2>"$d.log" & pid=$!
    ms=$((whole_ms / 3 + 20)); sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"   # mid-run on any machine
    kill -$sig $pid; wait $pid; rc=$?
    want=$([ $sig = TERM ] && echo 143 || echo 130)
    if [ "$rc" -eq "$want" ] && grep -q "interrupted by SIG$sig after step [0-9]*: checkpoint and adapter saved" "$d.log" &&
       [ -s "$d/adapter_model.safetensors" ] && $PY tests/ckpt_tool.py verify "$d/checkpoint.safetensors" >/dev/null; then
        st=$($PY tests/ckpt_tool.py step "$d/checkpoint.safetensors")
        ok "SIG$sig: exit $rc, checkpoint (step $st) and adapter saved: $(grep interrupted "$d.log")"
    else bad "SIG$sig: exit $rc; $(tail -1 "$d.log")"; fi
    ./peftc train $long --out "$d" --resume "$d" 2>/dev/null
    cmp -s "$W/whole/adapter_model.safetensors" "$d/adapter_model.safetensors" && ok "SIG$sig then resume: adapter identical to the uninterrupted run" ||
        bad "SIG$sig then resume: adapter differs"
done
# SIGKILL at random moments (RANDOM seeded per run), resumed each time
d=$W/kill; rm -rf "$d"; kills=0; starts=0; lost_ok=1; corrupt=0
RANDOM=$$
while [ $starts -lt 40 ]; do
    starts=$((starts + 1))
    res=""; [ -f "$d/checkpoint.safetensors" ] && res="--resume $d"
    ./peftc train $long --out "$d" $res 2>"$W/klog" & pid=$!
    if [ $kills -lt 6 ]; then
        # a random moment within a seventh of an uninterrupted run: six kills
        # land before the work is done however fast this machine is
        ms=$(( (whole_ms / 7) * (RANDOM % 90 + 5) / 100 + 5 ))
        sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
        if kill -KILL $pid 2>/dev/null; then wait $pid 2>/dev/null; kills=$((kills + 1))
            if [ -f "$d/checkpoint.safetensors" ]; then
                $PY tests/ckpt_tool.py verify "$d/checkpoint.safetensors" >/dev/null || corrupt=$((corrupt + 1))
                # progress lost <= one checkpoint interval: the file holds the last checkpoint logged
                last=$(grep -o 'checkpoint at step [0-9]*' "$W/klog" | tail -1 | grep -o '[0-9]*$')
                st=$($PY tests/ckpt_tool.py step "$d/checkpoint.safetensors")
                [ -z "$last" ] || [ "$st" -ge "$last" ] || lost_ok=0
            fi
            continue
        fi
    fi
    wait $pid && break
done
if [ $kills -ge 5 ] && [ $corrupt -eq 0 ] && [ $lost_ok -eq 1 ] && cmp -s "$W/whole/adapter_model.safetensors" "$d/adapter_model.safetensors"; then
    ok "SIGKILL $kills times at random moments, resumed each time: no corrupt checkpoint, none lost, adapter byte-identical"
else bad "SIGKILL test: $kills kills, $corrupt corrupt, lost_ok $lost_ok, identical: $(cmp "$W/whole/adapter_model.safetensors" "$d/adapter_model.safetensors" 2>&1)"; fi
echo "# kill-resume: $kills kills survived"
if [ -f "$GGUF" ]; then   # the causal-LM trainer (SmolLM2, a few 64-token steps)
    lm="--model $GGUF --train $W/gsm.jsonl --prompt-template Q:{question}A: --response-field answer --method lora --r 2 --batch 1 --max-len 32 --max-steps 4 --seed 1"
    ./peftc train $lm --out "$W/lm_whole" 2>/dev/null
    ./peftc train $lm --out "$W/lm_term" 2>"$W/lm.log" & pid=$!
    for i in $(seq 1 120); do grep -q "^step [0-9]" "$W/lm.log" 2>/dev/null && break; sleep 0.5; done
    kill -TERM $pid; wait $pid; rc=$?
    if [ "$rc" -eq 143 ] && [ -s "$W/lm_term/adapter_model.safetensors" ] && $PY tests/ckpt_tool.py verify "$W/lm_term/checkpoint.safetensors" >/dev/null; then
        ok "causal LM, SIGTERM: exit 143, $(grep -o 'after step [0-9]*' "$W/lm.log"), checkpoint and adapter saved"
    else bad "causal LM SIGTERM: exit $rc; $(tail -1 "$W/lm.log")"; fi
    ./peftc train $lm --out "$W/lm_term" --resume "$W/lm_term" 2>/dev/null
    cmp -s "$W/lm_whole/adapter_model.safetensors" "$W/lm_term/adapter_model.safetensors" && ok "causal LM: SIGTERM then resume == uninterrupted (identical bytes)" ||
        bad "causal LM: resumed adapter differs"
fi

# --- 4. non-finite loss ---
rm -rf "$W/nan"; mkdir -p "$W/nan"
$PY tests/ckpt_tool.py edit "$CK" "$W/nan/checkpoint.safetensors" --nan params --resum
cp "$W/nan/checkpoint.safetensors" "$W/nan_before"
expect_fail "NaN in the parameters: stops" "non-finite loss at step 7" -- ./peftc train $common $rc_ --save-every 1 --out "$W/nan" --resume "$W/nan"
cmp -s "$W/nan_before" "$W/nan/checkpoint.safetensors" && ok "non-finite loss: the last checkpoint is left intact (same bytes)" || bad "non-finite loss changed the checkpoint"
if ./peftc train $common $rc_ --skip-nonfinite --out "$W/nan" --resume "$W/nan" 2>"$W/log" &&
   [ "$($PY -c "import json; print(json.load(open('$W/nan/metrics.json'))['skipped_steps'])")" = 6 ]; then
    ok "--skip-nonfinite: the 6 non-finite steps skipped, run completed"
else bad "--skip-nonfinite: $(tail -1 "$W/log")"; fi

# --- 5. files, sizes, values ---
cp -r "$T" "$W/fifo"; rm "$W/fifo/config.json"; mkfifo "$W/fifo/config.json"
STDIN=$W/one.txt expect_fail "config.json is a FIFO (no hang)" "config.json: not a regular file (a FIFO)" -- ./peftc embed --model "$W/fifo"
expect_fail "--train /dev/zero" "/dev/zero: not a regular file (a character device)" -- ./peftc train $common --train /dev/zero --method lora --out "$W/z"
cp -r "$T" "$W/devvocab"; rm "$W/devvocab/vocab.txt"; ln -s /dev/zero "$W/devvocab/vocab.txt"
STDIN=$W/one.txt expect_fail "vocab.txt -> /dev/zero (not read)" "no vocab.txt or tokenizer.json" -- ./peftc embed --model "$W/devvocab"
$PY - "$W" <<'PYEOF'
import sys
w = sys.argv[1]
with open(f"{w}/huge.tsv", "w") as f:
    f.write("sentence\tlabel\n")
    f.write("a good movie " * (100 * 1024 * 1024 // 13) + "\t1\n")
    f.write("a bad movie\t0\n" * 8 + "a good film\t1\n" * 8)
with open(f"{w}/commas.csv", "w") as f:
    f.write("sentence,label\n")
    f.write("," * (20 * 1024 * 1024) + "\n")
PYEOF
/usr/bin/time -f %M -o "$W/rss" ./peftc train $common --train "$W/huge.tsv" --method lora --max-steps 1 --max-len 32 --out "$W/huge" 2>"$W/log"; rc=$?
rss=$(tail -1 "$W/rss")
[ "$rc" -eq 0 ] && [ "$rss" -lt 700000 ] && ok "100 MB TSV line: trained, peak RSS $((rss / 1024)) MB (3 copies of the line at most; was 1.4 GB)" ||
    bad "100 MB TSV line: exit $rc, peak RSS $((rss / 1024)) MB: $(tail -1 "$W/log")"
rm -f "$W/huge.tsv"
/usr/bin/time -f %M -o "$W/rss" ./peftc train $common --train "$W/commas.csv" --method lora --max-steps 1 --out "$W/commas" 2>"$W/log"; rc=$?
rss=$(tail -1 "$W/rss")
[ "$rc" -eq 1 ] && grep -q "commas.csv:2: more than 4096 fields" "$W/log" && [ "$rss" -lt 200000 ] &&
    ok "20 MB CSV line of commas: refused, peak RSS $((rss / 1024)) MB (was 846 MB): $(tail -1 "$W/log")" || bad "CSV commas: exit $rc, RSS $((rss / 1024)) MB: $(tail -1 "$W/log")"
rm -f "$W/commas.csv"
if ./peftc train --model "$T" --seed 3 --train "$W/tiny/train.tsv" --method lora --max-steps 2 --batch 65536 --out "$W/bigbatch" 2>"$W/log"; then
    rss=$($PY -c "import json; print(int(json.load(open('$W/bigbatch/metrics.json'))['peak_rss_mb']))")
    [ "$rss" -lt 300 ] && ok "--batch 65536 on 48 rows: capped at the data (peak RSS $rss MB)" || bad "--batch 65536: peak RSS $rss MB"
else bad "--batch 65536: $(tail -1 "$W/log")"; fi
tr_="$common --train $W/tiny/train.tsv --max-steps 1"
expect_fail "--delta dropout=nan" "dropout must be in [0, 1), got 'nan'" -- ./peftc train $tr_ --method custom --delta 'site=ffn.out,r=2,dropout=nan' --out "$W/d1"
expect_fail "--delta duplicate key" "key 'r' given twice" -- ./peftc train $tr_ --method custom --delta 'site=ffn.out,r=2,r=4' --out "$W/d2"
expect_fail "--delta bias=banana" "bias must be 0, 1, true or false" -- ./peftc train $tr_ --method custom --delta 'site=ffn.out,r=2,bias=banana' --out "$W/d3"
cp -r "$W/good" "$W/r_over"; $PY -c "import json; c=json.load(open('$W/r_over/adapter_config.json')); c['r']=4294967304; json.dump(c, open('$W/r_over/adapter_config.json','w'))"
expect_fail "adapter_config r 4294967304" "\"r\" is 4294967304, outside [1, 65536]" -- ./peftc eval --model "$T" --adapter "$W/r_over" --data "$W/tiny/dev.tsv"
cp -r "$W/good" "$W/drop_bad"; $PY -c "import json; c=json.load(open('$W/drop_bad/adapter_config.json')); c['lora_dropout']=3; json.dump(c, open('$W/drop_bad/adapter_config.json','w'))"
expect_fail "adapter_config lora_dropout 3" "\"lora_dropout\" must be a number in [0, 1)" -- ./peftc eval --model "$T" --adapter "$W/drop_bad" --data "$W/tiny/dev.tsv"
printf 'sentence\tlabel\ngood\t99999999999999999999\nbad\t99999999999999999998\nfine\t1\n' > "$W/biglab.tsv"
expect_fail "labels beyond 64 bits" "label '99999999999999999999' is an integer beyond 64 bits" -- ./peftc train $common --train "$W/biglab.tsv" --method lora --out "$W/bl"
cp -r "$T" "$W/nanw"
$PY - "$W/nanw" <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
d = sys.argv[1]; t = load_file(f"{d}/model.safetensors")
k = [k for k in t if k.endswith("attention.self.query.weight")][0]; t[k][3, 5] = np.nan
save_file(t, f"{d}/model.safetensors", metadata={"format": "pt"})
PYEOF
STDIN=$W/one.txt expect_fail "NaN in a weight (embed)" "holds a non-finite value (nan)" -- ./peftc embed --model "$W/nanw"
STDIN=$W/one.txt expect_fail "NaN in a weight (predict)" "holds a non-finite value" -- ./peftc predict --model "$W/nanw" --adapter "$W/good"
if [ -f "$GGUF" ] && [ -d "$W/ll" ]; then
    cp -r "$W/ll" "$W/llnan"; rm -f "$W/llnan/tokenizer.json"
    $PY - "$W/llnan" <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
d = sys.argv[1]; t = load_file(f"{d}/model.safetensors")
k = [k for k in t if k.endswith("mlp.up_proj.weight")][0]; t[k][0, 1] = np.inf
save_file(t, f"{d}/model.safetensors", metadata={"format": "pt"})
PYEOF
    expect_fail "Inf in a Llama weight" "holds a non-finite value (inf)" -- ./peftc generate --model "$W/llnan" --prompt hi
fi
# NaN/Inf in a quantised GGUF tensor: a block's fp16 scale (d, m, dmin) or an
# F32 value, patched into a copy of SmolLM2's GGUF (Q4_1, Q8_0; one tensor
# re-typed Q4_K). tests/gguf_bad_scale.py asserts with the gguf package's
# dequantize() that the patch makes exactly the named values non-finite.
if [ -f "$GGUF" ]; then
    for k in q4_1_d q4_1_m q8_0_d f32 q4_k_d q4_k_dmin; do
        want=$($PY tests/gguf_bad_scale.py "$GGUF" "$W/bad.gguf" $k 2>"$W/err") || { bad "gguf_bad_scale $k: $(tail -1 "$W/err")"; continue; }
        set -- $want
        if [ "$3" = value ]; then needle="tensor $1 holds a non-finite value (nan) at element ${2%%..*}"
        else needle="tensor $1: the ${k%_*} block of values $2 has a non-finite scale $3"; fi
        expect_fail "GGUF $k: non-finite ${3} in $1" "$needle" -- ./peftc generate --model "$W/bad.gguf" --prompt hi --max-new-tokens 1
    done
    # the control: the same re-typed Q4_K tensor with finite scales loads
    if $PY tests/gguf_bad_scale.py "$GGUF" "$W/bad.gguf" q4_k >/dev/null 2>"$W/err" &&
        ./peftc generate --model "$W/bad.gguf" --prompt hi --max-new-tokens 1 >/dev/null 2>"$W/err"; then
        ok "GGUF with a re-typed Q4_K tensor of finite scales loads and generates (the refusals are the scales')"
    else bad "GGUF q4_k control: $(tail -1 "$W/err")"; fi
    rm -f "$W/bad.gguf"
fi
for f in "{'num_hidden_layers': 10**9}" "{'vocab_size': 2**30, 'hidden_size': 1024}" "{'max_position_embeddings': 2**30, 'hidden_size': 1024}"; do
    cp -r "$T" "$W/huge_cfg"
    $PY -c "import json; c=json.load(open('$W/huge_cfg/config.json')); c.update($f); json.dump(c, open('$W/huge_cfg/config.json','w'))"
    STDIN=$W/one.txt expect_fail "config.json $f" "GB even at 4 bits, but this machine has" -- ./peftc embed --model "$W/huge_cfg"
    rm -rf "$W/huge_cfg"
done

# 100 MB records and inputs to the decoder paths (peak RSS and time by
# /usr/bin/time): a JSONL line over lm_data's 100 MB record limit is refused
# before parsing; a 99 MB record trains (only the head truncation keeps is
# tokenised: was 62.7 s and 1.33 GB); a 99 MB --prompt-file is refused before
# tokenising (was 37 s, 1.07 GB); a 99 MB stdin line to embed is refused.
if [ -f "$GGUF" ]; then
    $PY - "$W" <<'PYEOF'
import json, sys
w = sys.argv[1]
text = "a good movie " * (99 * 1024 * 1024 // 13)
qa = json.dumps({"question": "What is 2+2?", "answer": "4"}) + "\n"
with open(f"{w}/lm99.jsonl", "w") as f:
    f.write(qa + json.dumps({"question": text, "answer": "4"}) + "\n" + qa)
with open(f"{w}/lm101.jsonl", "w") as f:
    f.write(qa + json.dumps({"question": text + "x" * (2 << 20), "answer": "4"}) + "\n")
with open(f"{w}/p99.txt", "w") as f:
    f.write(text)
PYEOF
    lm100="--model $GGUF --prompt-template Q:{question}A: --response-field answer --method lora --r 2 --batch 1 --max-len 32 --max-steps 1 --seed 1"
    /usr/bin/time -f '%M %e' -o "$W/rss" ./peftc train $lm100 --train "$W/lm101.jsonl" --out "$W/lm101" 2>"$W/log"; rc=$?
    set -- $(tail -1 "$W/rss")
    [ "$rc" -eq 1 ] && grep -q 'lm101.jsonl:2: a record of [0-9]* bytes, over the 100 MB limit' "$W/log" && [ "$1" -lt 450000 ] &&
        ok "causal LM: 101 MB JSONL line refused before parsing, peak RSS $(($1 / 1024)) MB, $2 s: $(grep '^peftc:' "$W/log")" ||
        bad "causal LM 101 MB line: exit $rc, RSS $(($1 / 1024)) MB: $(tail -1 "$W/log")"
    /usr/bin/time -f '%M %e' -o "$W/rss" ./peftc train $lm100 --train "$W/lm99.jsonl" --out "$W/lm99" 2>"$W/log"; rc=$?
    set -- $(tail -1 "$W/rss")
    [ "$rc" -eq 0 ] && grep -q '1 truncated' "$W/log" && [ "$1" -lt 800000 ] &&
        ok "causal LM: 99 MB JSONL record trained (its head), peak RSS $(($1 / 1024)) MB, $2 s (was 1.33 GB, 62.7 s)" ||
        bad "causal LM 99 MB record: exit $rc, RSS $(($1 / 1024)) MB: $(tail -1 "$W/log")"
    /usr/bin/time -f '%M %e' -o "$W/rss" ./peftc generate --model "$GGUF" --prompt-file "$W/p99.txt" --max-new-tokens 1 >/dev/null 2>"$W/log"; rc=$?
    set -- $(tail -1 "$W/rss")
    [ "$rc" -eq 1 ] && grep -q 'the prompt is 103809[0-9]* bytes, at least [0-9]* tokens' "$W/log" && [ "$1" -lt 450000 ] &&
        ok "generate: 99 MB prompt refused before tokenising, peak RSS $(($1 / 1024)) MB, $2 s (was 1.07 GB, 37 s): $(grep '^peftc:' "$W/log")" ||
        bad "generate 99 MB prompt: exit $rc, RSS $(($1 / 1024)) MB: $(tail -1 "$W/log")"
    /usr/bin/time -f '%M %e' -o "$W/rss" ./peftc embed --model "$T" <"$W/p99.txt" >/dev/null 2>"$W/log"; rc=$?
    set -- $(tail -1 "$W/rss")
    [ "$rc" -eq 1 ] && grep -q 'stdin:1: line of [0-9]* bytes exceeds the 1048576-byte limit' "$W/log" && [ "$1" -lt 450000 ] &&
        ok "embed: 99 MB input line refused, peak RSS $(($1 / 1024)) MB, $2 s" || bad "embed 99 MB line: exit $rc, RSS $(($1 / 1024)) MB: $(tail -1 "$W/log")"
    rm -f "$W/lm99.jsonl" "$W/lm101.jsonl" "$W/p99.txt"
fi

# --- full disk: a checkpoint or adapter write that fails (ENOSPC on a 1 MB
# tmpfs when mount is permitted, as root here; EFBIG under ulimit -f, with
# SIGXFSZ ignored so write() returns the error, everywhere) leaves the
# previous files byte for byte, no temp file, one line, exit 1; the kept
# checkpoint then resumes to the uninterrupted run's adapter ---
fd_base="--model $T --batch 8 --train $W/tiny/train.tsv --method lora --r 4 --max-steps 6"
fd_opts="$fd_base --seed 3 --save-every 1"
./peftc train $fd_opts --out "$W/fd_whole" 2>/dev/null || bad "full disk: the uninterrupted run"
disk_check() { # NAME DIR KEEP(dir of the previous files) LOG RC
    local name=$1 d=$2 keep=$3 log=$4 rc=$5 same=1 f
    for f in "$keep"/*; do cmp -s "$f" "$d/$(basename "$f")" || same=0; done
    local tmps; tmps=$(ls "$d" | grep -c '\.tmp')
    if [ "$rc" -eq 1 ] && [ "$(grep -c '^peftc: ' "$log")" -eq 1 ] && grep -q 'is left as it was' "$log" && [ $same -eq 1 ] && [ "$tmps" -eq 0 ]; then
        ok "$name: exit 1, previous checkpoint/adapter byte-identical, no temp file: $(grep '^peftc: ' "$log")"
    else bad "$name: exit $rc, same $same, temp files $tmps: $(tail -1 "$log")"; fi
}
mkdir -p "$W/disk"
if mount -t tmpfs -o size=1m tmpfs "$W/disk" 2>/dev/null; then
    d=$W/disk/run
    ./peftc train $fd_opts --stop-after 3 --out "$d" 2>/dev/null
    mkdir -p "$W/fd_keep"; cp "$d"/* "$W/fd_keep/"
    avail=$(df -k --output=avail "$W/disk" | tail -1)
    dd if=/dev/zero of="$W/disk/fill" bs=1k count=$((avail - 4)) 2>/dev/null
    ./peftc train $fd_opts --out "$d" --resume "$d" 2>"$W/log"; rc=$?
    grep -q 'No space left on device' "$W/log" || bad "full tmpfs: not ENOSPC: $(tail -1 "$W/log")"
    disk_check "full tmpfs (ENOSPC) at a checkpoint" "$d" "$W/fd_keep" "$W/log" $rc
    rm -f "$W/disk/fill"
    if ./peftc train $fd_opts --out "$d" --resume "$d" 2>/dev/null && cmp -s "$W/fd_whole/adapter_model.safetensors" "$d/adapter_model.safetensors"; then
        ok "full tmpfs: space freed, resumed from the kept checkpoint: adapter identical to the uninterrupted run"
    else bad "full tmpfs: resume after freeing space did not reproduce the uninterrupted adapter"; fi
    # the adapter write of a run without checkpoints into a full disk
    rm -rf "$d" "$W/fd_keep"; mkdir -p "$W/fd_keep"
    ./peftc train $fd_base --seed 3 --out "$d" 2>/dev/null; cp "$d"/* "$W/fd_keep/"
    avail=$(df -k --output=avail "$W/disk" | tail -1)
    dd if=/dev/zero of="$W/disk/fill" bs=1k count=$((avail - 4)) 2>/dev/null
    ./peftc train $fd_base --seed 4 --out "$d" 2>"$W/log"; rc=$?
    disk_check "full tmpfs (ENOSPC) at the adapter" "$d" "$W/fd_keep" "$W/log" $rc
    umount "$W/disk"
else echo "# full disk: mount -t tmpfs not permitted here; the EFBIG case below stands in"; fi
d=$W/fd_efbig; rm -rf "$W/fd_keep"; mkdir -p "$W/fd_keep"
./peftc train $fd_opts --stop-after 3 --out "$d" 2>/dev/null; cp "$d"/* "$W/fd_keep/"
# ulimit -f counts 1024-byte blocks in bash: 8 KB holds the adapter (5.6 KB), not the checkpoint (13 KB)
(ulimit -f 8; trap '' XFSZ; exec ./peftc train $fd_opts --out "$d" --resume "$d") 2>"$W/log"; rc=$?
grep -q 'File too large' "$W/log" || bad "ulimit -f: not EFBIG: $(tail -1 "$W/log")"
disk_check "file size limit (EFBIG) at a checkpoint" "$d" "$W/fd_keep" "$W/log" $rc

# --- 7. the README's "## Errors" table, row by row ---
# Each row that no other check demonstrates, provoked through the CLI with a
# tiny fixture. Stricter than expect_fail: the exit status exactly (1; 2 for
# usage errors), stderr exactly one line, 'peftc: ' first, and every NEEDLE
# (the row's phrase and the file or option it names) in it.
row_fail() { # NAME RC NEEDLE... -- CMD...   (stdin from $STDIN, default /dev/null)
    local name="$1" want="$2"; shift 2
    local needles=() n rc msg nl
    while [ "$1" != -- ]; do needles+=("$1"); shift; done; shift
    timeout 60 "$@" <"${STDIN:-/dev/null}" >/dev/null 2>"$W/err"; rc=$?
    msg=$(head -1 "$W/err"); nl=$(wc -l <"$W/err")
    if [ "$rc" -ne "$want" ]; then bad "$name: exit $rc, not $want: $msg"; return; fi
    if [ "$nl" -ne 1 ]; then bad "$name: $nl lines on stderr: $(head -3 "$W/err" | tr '\n' '|')"; return; fi
    case $msg in "peftc: "*) ;; *) bad "$name: does not start with 'peftc: ': $msg"; return;; esac
    for n in "${needles[@]}"; do
        case $msg in *"$n"*) ;; *) bad "$name: lacks '$n': $msg"; return;; esac
    done
    ok "$name: $msg"
}
E=$W/errors; mkdir -p "$E"
# safetensors: a header length past the end, a tensor's data past the end
$PY - "$E" <<'PYEOF'
import json, struct, sys
e = sys.argv[1]
h = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
open(f"{e}/hdr.safetensors", "wb").write(struct.pack("<Q", 1000000) + h + b"\0" * 16)
h = json.dumps({"a": {"dtype": "F32", "shape": [250], "data_offsets": [0, 1000]}}).encode()
open(f"{e}/out.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 16)
# GGUF: a tensor of ggml type 99, a key of value type 99
def s(x): x = x.encode(); return struct.pack("<Q", len(x)) + x
open(f"{e}/type.gguf", "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + s("t") + struct.pack("<IQIQ", 1, 32, 99, 0) + b"\0" * 64)
open(f"{e}/vtype.gguf", "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + s("k") + struct.pack("<I", 99) + b"\0" * 16)
PYEOF
row_fail "safetensors header length past the end" 1 "hdr.safetensors: header length 1000000 runs past the end" -- ./peftc inspect "$E/hdr.safetensors"
row_fail "safetensors tensor data past the end" 1 "out.safetensors: tensor 'a' data [0, 1000) lies outside" -- ./peftc inspect "$E/out.safetensors"
row_fail "GGUF tensor of an unknown type" 1 "type.gguf: tensor 't' has unknown type id 99" -- ./peftc inspect "$E/type.gguf"
row_fail "GGUF key of an unknown value type" 1 "vtype.gguf: key 'k' has unknown value type 99" -- ./peftc inspect "$E/vtype.gguf"
# config.json of another model, or without a required field
cp -r "$T" "$E/gpt2"; sed -i 's/"model_type": "bert"/"model_type": "gpt2"/' "$E/gpt2/config.json"
cp -r "$T" "$E/nohid"; $PY -c "import json, sys; c = json.load(open(sys.argv[1])); del c['hidden_size']; json.dump(c, open(sys.argv[1], 'w'))" "$E/nohid/config.json"
STDIN=$W/one.txt row_fail "config.json of another model" 1 'gpt2/config.json: model_type "gpt2" is not supported' -- ./peftc embed --model "$E/gpt2"
STDIN=$W/one.txt row_fail "config.json without hidden_size" 1 'nohid/config.json: missing required field "hidden_size"' -- ./peftc embed --model "$E/nohid"
# a missing data column; resuming with another method
row_fail "train: a missing pair column" 1 "train.tsv: sentence-pair column 'nosuch' not found" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --text-pair-col nosuch --method lora --max-steps 1 --out "$E/r"
row_fail "train: a missing text column" 1 "train.tsv: text column 'nosuch' not found" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --text-col nosuch --method lora --max-steps 1 --out "$E/r"
cp -r "$W/half" "$E/half"
row_fail "resume with another --method" 1 "half/checkpoint.safetensors: checkpoint of method 'lora', but --method is 'bitfit'" -- \
    ./peftc train $common ${rc_/--method lora/--method bitfit} --out "$E/half" --resume "$E/half"
# an option that takes one value given twice (was "unknown option '--method'"),
# a flag given twice; repeatable options (--adapter, --delta) still repeat
row_fail "train --method given twice" 2 "train: option --method given twice ('lora', then 'ia3')" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --method lora --method ia3 --max-steps 1 --out "$E/r"
row_fail "train: a flag given twice" 2 "train: option --bucket given twice" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --method lora --bucket --bucket --max-steps 1 --out "$E/r"
STDIN=$W/one.txt row_fail "embed --model given twice" 2 "embed: option --model given twice ('$T', then '$W/good')" -- \
    ./peftc embed --model "$T" --model "$W/good"
STDIN=$W/one.txt row_fail "predict: --adapter repeats, --drop-layers given twice" 2 "predict: option --drop-layers given twice ('1', then '2')" -- \
    ./peftc predict --model "$T" --adapter "$W/good" --adapter "$W/good" --drop-layers 1 --drop-layers 2
if ./peftc train $common --train "$W/tiny/train.tsv" --method custom --delta 'site=ffn.out,r=2' --delta 'site=attn.out,r=2' \
    --max-steps 1 --out "$E/two_deltas" 2>"$W/err"; then ok "train: --delta given twice is two deltas"
else bad "train: two --delta specs refused: $(head -1 "$W/err")"; fi
# an encoder adapter tensor the method does not use
./peftc train $common --train "$W/tiny/train.tsv" --method ia3 --max-steps 1 --out "$E/ia3" 2>/dev/null
$PY - "$E/ia3/adapter_model.safetensors" <<'PYEOF'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); t["base_model.model.bert.pooler.dense.ia3_l.weight"] = np.ones((1, 32), np.float32); save_file(t, sys.argv[1])
PYEOF
row_fail "an adapter tensor the method does not use" 1 "ia3/adapter_model.safetensors: tensor 'base_model.model.bert.pooler.dense.ia3_l.weight' is not a parameter of method ia3 on this model" -- \
    ./peftc eval --model "$T" --adapter "$E/ia3" --data "$W/tiny/dev.tsv"
# --quantize: an unknown kind, widths not whole blocks, full fine-tuning, a
# merge, an NF4 file of another model, quantize onto its input (a 64-wide model)
row_fail "--quantize q3" 1 '"q3" is not a base quantisation (nf4, none)' -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --quantize q3 --method lora --max-steps 1 --out "$E/r"
row_fail "--quantize nf4 on width 32" 1 "tiny/model: --quantize nf4 needs hidden_size and intermediate_size to be multiples of 64" "got 32 and 64" -- \
    ./peftc train $common --train "$W/tiny/train.tsv" --quantize nf4 --method lora --max-steps 1 --out "$E/r"
sed 's/^C, L, H, F, V, P = 32, 2, 4, 64,/C, L, H, F, V, P = 64, 2, 4, 128,/' tests/make_tiny_bert.py >"$E/mk64.py"
if grep -q '^C, L, H, F, V, P = 64, 2, 4, 128,' "$E/mk64.py" && $PY "$E/mk64.py" "$E/t64" >/dev/null 2>&1 &&
   ./peftc quantize --model "$E/t64/model" --out "$E/q64" >/dev/null 2>&1 &&
   ./peftc train --model "$E/q64" --train "$E/t64/train.tsv" --method lora --max-steps 1 --out "$E/q64r" 2>/dev/null; then
    row_fail "--quantize nf4 --method full" 1 "--quantize nf4: method full trains the base's weights, which stay NF4" -- \
        ./peftc train --model "$E/t64/model" --train "$E/t64/train.tsv" --quantize nf4 --method full --max-steps 1 --out "$E/r"
    row_fail "--merge on an NF4 base" 1 "q64: layer 0: the base's linear weights are NF4 (--quantize nf4): they cannot be merged into or trained" -- \
        ./peftc eval --model "$E/q64" --adapter "$E/q64r" --data "$E/t64/dev.tsv" --merge
    cp -r "$E/q64" "$E/q64x"
    $PY -c "import json, sys; c = json.load(open(sys.argv[1])); c['intermediate_size'] = 192; json.dump(c, open(sys.argv[1], 'w'))" "$E/q64x/config.json"
    row_fail "an NF4 file of another model" 1 "q64x/model.safetensors: tensor 'encoder.layer.0.intermediate.dense.weight.nf4_codes' is U8 with 4096 values, but config.json implies U8 with 6144 (an NF4 file of another model?)" -- \
        ./peftc train --model "$E/q64x" --train "$E/t64/train.tsv" --method lora --max-steps 1 --out "$E/r"
    row_fail "peftc quantize onto its input" 2 "quantize: --out $E/t64/model is the model directory itself" -- ./peftc quantize --model "$E/t64/model" --out "$E/t64/model"
else bad "the 64-wide tiny model or its NF4 copy could not be made"; fi
# decoders: a GGUF of another architecture, a missing or mis-shaped tensor
if $PY tests/make_llama_hf.py tiny "$E/llh" >/dev/null 2>&1; then
    for b in arch missing shape; do $PY tests/make_llama_gguf.py "$E/llh" "$E/ll_$b.gguf" --bad $b >/dev/null 2>&1 || bad "make_llama_gguf --bad $b"; done
    row_fail "GGUF of another architecture" 1 'll_arch.gguf: architecture "gpt2" is not supported' -- ./peftc generate --model "$E/ll_arch.gguf" --prompt hi
    row_fail "GGUF without a tensor" 1 "ll_missing.gguf: missing tensor blk.1.ffn_up.weight" -- ./peftc generate --model "$E/ll_missing.gguf" --prompt hi
    row_fail "GGUF with a mis-shaped tensor" 1 "ll_shape.gguf: tensor blk.0.attn_k.weight has shape [40, 18], expected [40, 20]" -- ./peftc generate --model "$E/ll_shape.gguf" --prompt hi
    # tokenizer.json: a BPE model without merges, a pre-tokenizer peftc does not know
    if [ -s "$W/tok/tokenizer.json" ]; then
        $PY - "$W/tok/tokenizer.json" "$E" <<'PYEOF'
import json, shutil, sys
t = json.load(open(sys.argv[1])); e = sys.argv[2]
for name, key, val in (("nomerges", "model", dict(t["model"], merges=[])), ("pretok", "pre_tokenizer", {"type": "Bogus"})):
    shutil.copytree(f"{e}/llh", f"{e}/{name}")
    json.dump(dict(t, **{key: val}), open(f"{e}/{name}/tokenizer.json", "w"))
PYEOF
        row_fail "tokenizer.json: BPE without merges" 1 "nomerges/tokenizer.json: the BPE model has no merges" -- ./peftc generate --model "$E/nomerges" --prompt hi
        row_fail "tokenizer.json: unknown pre-tokenizer" 1 "pretok/tokenizer.json: pre_tokenizer type Bogus is not supported" -- ./peftc generate --model "$E/pretok" --prompt hi
    else bad "no tokenizer.json from SmolLM2 for the BPE cases"; fi
else bad "the tiny Llama could not be made"; fi
if [ -f "$GGUF" ]; then
    # SmolLM2's GGUF with one key renamed or one string overwritten in place
    # (same length): no merges, an unknown pre-tokenizer, no or an unknown chat template
    $PY - "$GGUF" "$E" <<'PYEOF'
import struct, sys
g, e = sys.argv[1], sys.argv[2]
d = open(g, "rb").read()
def key(k):   # the offset just past key k's name
    kb = k.encode(); i = d.find(struct.pack("<Q", len(kb)) + kb); assert i > 0, k; return i + 8 + len(kb)
def put(name, off, new):
    b = bytearray(d); b[off:off + len(new)] = new; open(f"{e}/{name}.gguf", "wb").write(b)
def sval(i):  # a string value after its u32 type: (offset, bytes)
    n = struct.unpack("<Q", d[i + 4:i + 12])[0]; return i + 12, d[i + 12:i + 12 + n]
put("nomerges", key("tokenizer.ggml.merges") - 1, b"x")
o, v = sval(key("tokenizer.ggml.pre")); put("pretok", o, b"z" * len(v))
i = key("tokenizer.chat_template"); put("notmpl", i - 1, b"x")
o, v = sval(i); put("badtmpl", o, v.replace(b"im_start", b"xx_start").replace(b"im_end", b"xx_end"))
PYEOF
    row_fail "GGUF: BPE without merges" 1 "nomerges.gguf: a BPE tokenizer without merges" -- ./peftc generate --model "$E/nomerges.gguf" --prompt hi
    row_fail "GGUF: unknown pre-tokenizer" 1 "pretok.gguf: tokenizer.ggml.pre: unknown pre-tokenizer 'zzzzzz'" -- ./peftc generate --model "$E/pretok.gguf" --prompt hi
    row_fail "--chat without a chat template" 1 "notmpl.gguf: the tokenizer has no chat template" -- ./peftc generate --model "$E/notmpl.gguf" --chat --prompt hi --max-new-tokens 1
    printf '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' >"$E/chat.jsonl"
    row_fail "chat-format data without a chat template" 1 "chat.jsonl:1: the tokenizer has no chat template" -- ./peftc train --model "$E/notmpl.gguf" --train "$E/chat.jsonl" --method lora --max-steps 1 --out "$E/r"
    row_fail "--chat with an unknown chat template" 1 "badtmpl.gguf: chat template not recognised" -- ./peftc generate --model "$E/badtmpl.gguf" --chat --prompt hi --max-new-tokens 1
    rm -f "$E"/nomerges.gguf "$E"/pretok.gguf "$E"/notmpl.gguf "$E"/badtmpl.gguf
    # decoder adapters: of another type, DoRA and kin, a model given as the
    # adapter, a GGUF LoRA of another architecture, --merge on Q4_1 weights
    mkdir -p "$E/ia3dec" "$E/lohadec"; echo '{"peft_type": "IA3", "target_modules": ["q_proj"]}' >"$E/ia3dec/adapter_config.json"
    echo '{"peft_type": "LOHA", "target_modules": ["q_proj"]}' >"$E/lohadec/adapter_config.json"
    $PY -c "import sys, numpy as np; from safetensors.numpy import save_file; save_file({'x': np.zeros(1, np.float32)}, sys.argv[1])" "$E/ia3dec/adapter_model.safetensors"
    cp "$E/ia3dec/adapter_model.safetensors" "$E/lohadec/"
    row_fail "a LoHa adapter on a decoder" 1 "lohadec/adapter_config.json: peft_type LOHA: decoders take LORA, ADALORA and IA3 adapters" -- ./peftc generate --model "$GGUF" --adapter "$E/lohadec" --prompt hi --max-new-tokens 1
    row_fail "an IA3 adapter with a stray tensor on a decoder" 1 "ia3dec/adapter_model.safetensors: tensor 'x' is not an (IA)3 vector (ia3_l)" -- ./peftc generate --model "$GGUF" --adapter "$E/ia3dec" --prompt hi --max-new-tokens 1
    for k in use_dora:true:"use_dora: DoRA" lora_bias:true:"lora_bias: " layer_replication:'[[0, 2]]':"layer_replication " fan_in_fan_out:true:"fan_in_fan_out "; do
        f=${k%%:*}; rest=${k#*:}; v=${rest%%:*}; want=${rest#*:}
        mkdir -p "$E/$f"; cp "$E/ia3dec/adapter_model.safetensors" "$E/$f/"
        echo "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"], \"$f\": $v}" >"$E/$f/adapter_config.json"
        row_fail "a decoder LoRA with $f" 1 "$f/adapter_config.json: $want" -- ./peftc generate --model "$GGUF" --adapter "$E/$f" --prompt hi --max-new-tokens 1
    done
    row_fail "a model given as the adapter" 1 "$GGUF: a GGUF LoRA adapter has general.type 'adapter'" -- ./peftc generate --model "$GGUF" --adapter "$GGUF" --prompt hi --max-new-tokens 1
    lmt="--prompt-template Q:{question}A: --response-field answer"
    if ./peftc train --model "$GGUF" --train "$W/gsm.jsonl" $lmt --method lora --r 2 --batch 1 --max-len 64 --max-steps 1 --out "$E/lmr" 2>/dev/null &&
       ./peftc export --format gguf --adapter "$E/lmr" --model "$GGUF" --out "$E/lmr.gguf" 2>/dev/null; then
        $PY - "$E/lmr.gguf" "$E/lmr_arch.gguf" <<'PYEOF'
import struct, sys
d = bytearray(open(sys.argv[1], "rb").read()); k = b"general.architecture"
i = d.find(struct.pack("<Q", len(k)) + k) + 8 + len(k)
assert d[i + 12:i + 17] == b"llama"; d[i + 12:i + 17] = b"mamba"; open(sys.argv[2], "wb").write(d)
PYEOF
        row_fail "a GGUF LoRA of another architecture" 1 "lmr_arch.gguf: an adapter for architecture 'mamba'; the model is 'llama'" -- \
            ./peftc generate --model "$GGUF" --adapter "$E/lmr_arch.gguf" --prompt hi --max-new-tokens 1
        row_fail "generate --merge on Q4_1 weights" 1 "--merge: the base weights are q4_1 and stay quantised" -- \
            ./peftc generate --model "$GGUF" --adapter "$E/lmr" --merge --prompt hi --max-new-tokens 1
        row_fail "eval --merge on Q4_1 weights" 1 "--merge: the base weights are q4_1 and stay quantised" -- \
            ./peftc eval --task causal-lm --model "$GGUF" $lmt --adapter "$E/lmr" --merge --data "$W/gsm.jsonl" --max-len 64
    else bad "a SmolLM2 LoRA (train, export) for the adapter cases"; fi
else bad "$GGUF missing: the GGUF rows of the Errors table are not checked"; fi

# --- 6. the fuzzers' findings, replayed ---
if [ -x build/tests/fuzz_replay ] || make -s build/tests/fuzz_replay >/dev/null 2>&1; then
    tally "$(build/tests/fuzz_replay tests/fuzz/regress build/fuzz/seeds 2>&1)"
else bad "build/tests/fuzz_replay does not build"; fi
finish
