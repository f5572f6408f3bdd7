#!/usr/bin/env bash
# bench/finetune.sh: peftc's LoRA training of SmolLM2-135M against
# llama.cpp's `llama-finetune` (the only C/C++ CPU trainer of this model; it
# trains every parameter in fp32, the tied embedding frozen), on the same
# text in the same 512-token windows, 2 threads, in one run.
#
# llama.cpp is the build of bench/llamacpp.sh (run `bash bench/llamacpp.sh
# --prepare` first: it fetches the llama-cpp-python sdist from PyPI and makes
# the F32 copy of the GGUF); this script adds the llama-finetune target in a
# second build directory beside it (LLAMA_BUILD_EXAMPLES=ON), outside the repo.
#
# The text: the first N_EX Alpaca examples rendered as "instruction\n[input\n]
# output\n\n". llama-finetune cuts its tokens into windows of 512 with a
# stride of 256 (common_opt_dataset_init) and trains one epoch (5% held out);
# its tokens/s = windows trained x 512 / the time of its training epoch. peftc
# trains LoRA r 8 alpha 16 on q_proj,v_proj (and all-linear r 16) on the
# same text as one `text` record per window (the window's 512 tokens decoded;
# re-encoded they are 512 give or take a merge at the ends, `--format text
# --max-len 512 --loss-on all`), batch 1, as many steps as
# llama-finetune trains windows; tokens/s from metrics.json. Peak RSS of both
# from /usr/bin/time -v.
# Environment: N_EX (80) THREADS (2) WORK (build/bench/finetune)
#   KEEP_LLAMA=1: reuse WORK/llama.log of an earlier run (same text) instead of training llama.cpp again
#   PEFTC_ANCHOR_DIR, LLAMACPP_PY_VERSION (as bench/llamacpp.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
N_EX=${N_EX:-80} THREADS=${THREADS:-2} WORK=${WORK:-build/bench/finetune}
VER=${LLAMACPP_PY_VERSION:-0.3.36}
TOP=${PEFTC_ANCHOR_DIR:-$HOME/.cache/peftc-anchor}/llama.cpp-$VER
SRC=$TOP/sdist/vendor/llama.cpp BLD=$TOP/build-ft
F32=$TOP/models/SmolLM2-135M-Instruct.F32.gguf Q41=models/SmolLM2-135M-Instruct.Q4_1.gguf
die() { echo "finetune.sh: $*" >&2; exit 1; }
[ -d "$SRC" ] && [ -f "$F32" ] || die "no llama.cpp sdist or F32 model under $TOP: run bash bench/llamacpp.sh --prepare"
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
[ -x ./peftc ] || make -j2 peftc >&2
[ -f build/bench/lm/smol_f32/tokenizer.json ] || die "build/bench/lm/smol_f32/tokenizer.json missing: run bench/lm_train.sh once"
if [ ! -x "$BLD/bin/llama-finetune" ]; then
    echo "finetune.sh: building llama-finetune in $BLD (several minutes)" >&2
    cmake -S "$SRC" -B "$BLD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF \
        > "$TOP/build-ft.configure.log" 2>&1 || die "cmake configure failed ($TOP/build-ft.configure.log)"
    cmake --build "$BLD" -j2 --target llama-finetune > "$TOP/build-ft.log" 2>&1 || die "build failed ($TOP/build-ft.log)"
fi
mkdir -p "$WORK"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"

# the text, and peftc's records: the windows llama-finetune makes, as text
"$PY" - "$N_EX" "$WORK" <<'PY'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
ex = json.load(open("../shared/data/alpaca-5k/alpaca_data.json"))[:n]
text = "".join(e["instruction"] + "\n" + (e["input"] + "\n" if e["input"] else "") + e["output"] + "\n\n" for e in ex)
open(f"{work}/alpaca.txt", "w").write(text)
from tokenizers import Tokenizer   # the GGUF's vocabulary as tokenizer.json (bench/lm_train.sh made it; tests check it equal)
tok = Tokenizer.from_file("build/bench/lm/smol_f32/tokenizer.json")
ids = tok.encode(text).ids
W, S = 512, 256
wins = [ids[i:i + W] for i in range(0, len(ids) - W + 1, S)]
train = wins[:int(len(wins) * 0.95)]
with open(f"{work}/windows.jsonl", "w") as f:
    for w in train:
        f.write(json.dumps({"text": tok.decode(w)}) + "\n")
json.dump({"tokens": len(ids), "windows": len(wins), "train_windows": len(train)}, open(f"{work}/windows.json", "w"))
print(f"# {len(ids)} tokens, {len(wins)} windows of {W} (stride {S}), {len(train)} trained", file=sys.stderr)
PY
NW=$("$PY" -c "import json; print(json.load(open('$WORK/windows.json'))['train_windows'])")

if [ "${KEEP_LLAMA:-0}" = 1 ] && grep -q 'Maximum resident' "$WORK/llama.log" 2>/dev/null; then
    echo "== llama-finetune: kept $WORK/llama.log (KEEP_LLAMA=1)" >&2
else
    echo "== llama-finetune (F32, all parameters)" >&2
    /usr/bin/time -v "$BLD/bin/llama-finetune" -m "$F32" --file "$WORK/alpaca.txt" -c 512 -b 512 -ub 512 -t "$THREADS" \
        --epochs 1 -o "$WORK/llama-finetuned.gguf" > "$WORK/llama.log" 2>&1 || die "llama-finetune failed ($WORK/llama.log)"
fi
peftc_run() {  # NAME MODEL ARGS...
    local name=$1 model=$2; shift 2
    echo "== peftc $name" >&2
    /usr/bin/time -v ./peftc train --model "$model" --train "$WORK/windows.jsonl" --format text --loss-on all \
        --max-len 512 --batch 1 --max-steps "$NW" --lr 5e-4 --threads "$THREADS" --out "$WORK/$name" "$@" \
        > "$WORK/$name.out" 2> "$WORK/$name.log" || die "peftc $name failed ($WORK/$name.log)"
}
peftc_run lora-q4_1 "$Q41" --method lora --r 8 --alpha 16 --target-modules q_proj,v_proj
peftc_run lora-q4_1-ckpt "$Q41" --method lora --r 8 --alpha 16 --target-modules q_proj,v_proj --gradient-checkpointing
peftc_run lora-f32 "$F32" --method lora --r 8 --alpha 16 --target-modules q_proj,v_proj
peftc_run lora16-all-q4_1 "$Q41" --method lora --r 16 --alpha 32 --target-modules all-linear
"$PY" - "$WORK" "$NW" <<'PY'
import json, re, sys
work, nw = sys.argv[1], int(sys.argv[2])
def rss(log): return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(log).read()).group(1)) / 1024
log = open(f"{work}/llama.log").read()
# its progress bar ends each epoch with the elapsed time t=HH:MM:SS of the training part
ts = re.findall(r"train:.*?data=\s*(\d+)/\s*(\d+).*?t=(\d+):(\d+):(\d+)", log)
if not ts: sys.exit("finetune.sh: no training progress in llama.log")
d, tot, h, m, s = map(int, ts[-1])
secs = h * 3600 + m * 60 + s
ll_tps = d * 512 / secs if secs else float("nan")
ll_rss = rss(f"{work}/llama.log")
print(f"\nSmolLM2-135M on {nw} windows of 512 Alpaca tokens, one epoch, batch 1 window\n")
print("| trainer | what trains | tokens/s | vs llama-finetune | peak RSS MiB | RSS vs llama-finetune |")
print("|---|---|---:|---:|---:|---:|")
print(f"| llama-finetune (F32 GGUF) | every weight (embedding frozen), AdamW | {ll_tps:.1f} | 1.00× | {ll_rss:.0f} | 1.00 |")
for name, what in [("lora-q4_1", "LoRA r 8 q,v; Q4_1 base"), ("lora-q4_1-ckpt", "the same, --gradient-checkpointing"),
                   ("lora-f32", "LoRA r 8 q,v; F32 base"), ("lora16-all-q4_1", "LoRA r 16 all-linear; Q4_1 base")]:
    m = json.load(open(f"{work}/{name}/metrics.json"))
    r = rss(f"{work}/{name}.log")
    print(f"| peftc | {what} | {m['train_tokens_per_s']:.1f} | {m['train_tokens_per_s'] / ll_tps:.2f}× | {r:.0f} | {r / ll_rss:.2f} |")
PY
