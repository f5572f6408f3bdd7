#!/usr/bin/env bash
# bench/llamacpp.sh: the llama.cpp anchor for the decoder's generation speed.
#
# Builds llama.cpp's own tools from the llama.cpp source that the PyPI sdist of
# llama-cpp-python carries under vendor/llama.cpp (nothing of llama.cpp is in
# this repository; the build lives outside it), makes re-typed copies of the
# GGUF model with llama-quantize, and times each type with llama-bench:
# prompt processing of 128 and 512 tokens (pp128, pp512) and generation of 64
# tokens (tg64), THREADS threads, REPS repetitions, the median tok/s. Peak RSS
# is /usr/bin/time -v's maximum resident set size of a llama-completion
# process that generates 64 tokens from a short prompt with THREADS threads.
#
# Output: build/bench/llamacpp.json (type -> pp128, pp512, tg64 tok/s, rss_mb
# and the details) and a markdown table on stdout (also build/bench/llamacpp.md).
#
#   bash bench/llamacpp.sh              build if needed, quantize if needed, bench
#   bash bench/llamacpp.sh --prepare    only build + quantize
#   bash bench/llamacpp.sh --print-env  build + quantize, then print LLAMACPP_BIN=,
#                                       LLAMACPP_MODELS=, LLAMACPP_VERSION= (for eval)
#
# Environment:
#   PEFTC_ANCHOR_DIR   where the sdist, the build and the re-typed models go
#                      (default $HOME/.cache/peftc-anchor)
#   LLAMACPP_PY_VERSION  llama-cpp-python sdist version (default 0.3.36)
#   MODEL              the source GGUF (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   TYPES              types to bench (default "Q4_1 Q4_0 Q8_0 BF16 F32"; the source
#                      file's own type is benched as is, the others are made from it)
#   THREADS (2), REPS (5), PP ("128,512"), TG (64), OUT (build/bench/llamacpp.json)
#   PYTHON (/usr/bin/python3), JOBS (2: cmake --build -j)
#   LLAMACPP_NO_RSS=1  skip the llama-completion RSS runs
#   LLAMACPP_ENV       VAR=VALUE... for the llama.cpp processes (default none: its
#                      defaults, e.g. libgomp's active wait; GOMP_SPINCOUNT=10000 is
#                      what peftc sets for itself)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-/usr/bin/python3}
VER=${LLAMACPP_PY_VERSION:-0.3.36}
ANCHOR=${PEFTC_ANCHOR_DIR:-$HOME/.cache/peftc-anchor}
TOP=$ANCHOR/llama.cpp-$VER
SRC=$TOP/sdist/vendor/llama.cpp
BLD=$TOP/build
BIN=$BLD/bin
MODELS=$TOP/models
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TYPES=${TYPES:-Q4_1 Q4_0 Q8_0 BF16 F32}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
PP=${PP:-128,512}
TG=${TG:-64}
OUT=${OUT:-build/bench/llamacpp.json}
JOBS=${JOBS:-2}
LLAMACPP_ENV=${LLAMACPP_ENV:-}
MODE=${1:-run}

say() { echo "llamacpp.sh: $*" >&2; }
die() { say "$*"; exit 1; }
# print a command, then run it
exec 3>&2
run() { echo "+ $*" >&3; "$@"; }

[ -f "$MODEL" ] || die "$MODEL missing"
case $ANCHOR/ in "$REPO"/*) die "PEFTC_ANCHOR_DIR must be outside the repository" ;; esac
command -v cmake > /dev/null || die "cmake missing (apt-get install cmake)"
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"

# ---- 1. source: the llama-cpp-python sdist from PyPI, unpacked beside the build
TOOLS="llama-bench llama-quantize llama-completion"
have_tools() { for t in $TOOLS; do [ -x "$BIN/$t" ] || return 1; done; }
if ! have_tools; then
    mkdir -p "$ANCHOR" "$TOP"
    sd=$ANCHOR/llama_cpp_python-$VER.tar.gz
    if [ ! -f "$sd" ]; then
        say "downloading the llama-cpp-python $VER sdist from PyPI (it vendors llama.cpp's source)"
        run "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$ANCHOR" >&2 ||
            die "pip download failed (pip index versions llama-cpp-python lists the versions)"
    fi
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        rm -rf "$TOP/sdist.tmp" && mkdir -p "$TOP/sdist.tmp"
        run tar xzf "$sd" -C "$TOP/sdist.tmp"
        rm -rf "$TOP/sdist" && mv "$TOP/sdist.tmp/llama_cpp_python-$VER" "$TOP/sdist" && rmdir "$TOP/sdist.tmp"
    fi
fi
[ -f "$SRC/CMakeLists.txt" ] || die "$SRC: no llama.cpp source"
# which llama.cpp: the sdist has no git history, so the commit is the one its
# CHANGELOG names for this version ("update llama.cpp to ggml-org/llama.cpp@C")
COMMIT=$(awk -v v="## [$VER]" '$0 == v { on = 1; next } on && /^## \[/ { exit }
    on && match($0, /llama\.cpp@[0-9a-f]+/) { print substr($0, RSTART + 10, RLENGTH - 10); exit }' \
    "$TOP/sdist/CHANGELOG.md" 2> /dev/null || true)
COMMIT=${COMMIT:-unknown}
GGML_VER=$(awk '/set\(GGML_VERSION_(MAJOR|MINOR|PATCH)/ { gsub(/\)/, "", $2); v = v (v == "" ? "" : ".") $2 }
    END { print v }' "$SRC/ggml/CMakeLists.txt")
VERSION="llama-cpp-python $VER sdist, vendor/llama.cpp @ $COMMIT (ggml $GGML_VER)"

# ---- 2. build llama.cpp's tools (reused when they exist)
if ! have_tools; then
    say "building llama.cpp ($VERSION) in $BLD: $TOOLS (several minutes on 2 cores)"
    run cmake -S "$SRC" -B "$BLD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_COMMIT="$COMMIT" -DLLAMA_BUILD_NUMBER=0 > "$TOP/configure.log" 2>&1 ||
        { tail -20 "$TOP/configure.log" >&2; die "cmake configure failed ($TOP/configure.log)"; }
    run cmake --build "$BLD" -j"$JOBS" --target $TOOLS > "$TOP/build.log" 2>&1 ||
        { tail -20 "$TOP/build.log" >&2; die "build failed ($TOP/build.log)"; }
    have_tools || die "the build did not produce $TOOLS in $BIN"
else
    say "reusing the llama.cpp build in $BLD ($VERSION)"
fi
echo "$VERSION" > "$TOP/VERSION"

# ---- 3. re-typed copies of the model (beside the build, never in the repo)
base=$(basename "$MODEL" .gguf)
stem=${base%.*}                  # SmolLM2-135M-Instruct
srctype=${base##*.}              # Q4_1
mkdir -p "$MODELS"
model_of() { if [ "$1" = "$srctype" ]; then echo "$REPO/$MODEL"; else echo "$MODELS/$stem.$1.gguf"; fi; }
for t in $TYPES; do
    f=$(model_of "$t")
    [ -f "$f" ] && continue
    say "making $t from $srctype with llama-quantize (--allow-requantize: the weights are $srctype's, re-typed)"
    run "$BIN/llama-quantize" --allow-requantize "$REPO/$MODEL" "$f.tmp" "$t" "$THREADS" > "$MODELS/quantize.$t.log" 2>&1 ||
        { tail -5 "$MODELS/quantize.$t.log" >&2; rm -f "$f.tmp"; die "llama-quantize to $t failed"; }
    mv "$f.tmp" "$f"
done

if [ "$MODE" = --prepare ]; then exit 0; fi
if [ "$MODE" = --print-env ]; then
    printf 'LLAMACPP_BIN=%q\nLLAMACPP_MODELS=%q\nLLAMACPP_VERSION=%q\n' "$BIN" "$MODELS" "$VERSION"
    exit 0
fi
[ "$MODE" = run ] || die "unknown argument $MODE (none, --prepare or --print-env)"

# ---- 4. llama-bench per type, and the RSS of a 64-token generation
mkdir -p "$(dirname "$OUT")"
WORK=$(dirname "$OUT")/llamacpp
mkdir -p "$WORK"
# CPUs other processes kept busy during a /usr/bin/time -v run (as bench/run):
# busy time in /proc/stat minus the run's user + system time, per wall second
others() {  # others STAT_BEFORE STAT_AFTER TIMEFILE
    awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" -F': ' '
        /User time/ { u = $2 } /System time/ { s = $2 }
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
        END { split(a, x, " "); split(b, y, " "); busy = 0
              for (i = 2; i <= 9; i++) if (i != 5 && i != 6) busy += y[i] - x[i]
              o = busy / hz - u - s; if (o < 0) o = 0
              printf "%.2f", (w > 0 ? o / w : 0) }' "$3"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
PROMPT="Write a short story about a robot who learns to paint. Once upon a time,"
say "$(uptime)"
say "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs, AMX: $(grep -q amx_tile /proc/cpuinfo && echo yes || echo no)"
for t in $TYPES; do
    f=$(model_of "$t")
    say "$t: llama-bench -t $THREADS -p $PP -n $TG -r $REPS ($(du -h "$f" | cut -f1))"
    echo "$(loadavg)" > "$WORK/$t.load_before"
    # repack 1 (llama.cpp's default: AMX / CPU_REPACK weight layouts). ggml's AMX
    # kernel segfaults here on the quantised types (upstream llama.cpp#20824), so a
    # type whose run dies is rerun with --repack 0 (plain ggml-cpu kernels) and marked
    for rp in 1 0; do
        s0=$(head -1 /proc/stat)
        if run env $LLAMACPP_ENV /usr/bin/time -v -o "$WORK/$t.bench.time" "$BIN/llama-bench" -m "$f" -t "$THREADS" \
                -p "$PP" -n "$TG" -r "$REPS" --repack "$rp" -o json > "$WORK/$t.bench.json" 2> "$WORK/$t.bench.err" &&
                grep -q samples_ts "$WORK/$t.bench.json"; then
            break
        fi
        [ "$rp" = 1 ] || { tail -5 "$WORK/$t.bench.err" >&2; die "llama-bench failed for $t"; }
        say "$t: llama-bench with --repack 1 failed ($(grep -m1 -o 'Command terminated by signal [0-9]*' "$WORK/$t.bench.time" || echo error)): rerun with --repack 0"
    done
    s1=$(head -1 /proc/stat)
    echo "$rp" > "$WORK/$t.repack"
    others "$s0" "$s1" "$WORK/$t.bench.time" > "$WORK/$t.bench.others"
    echo "$(loadavg)" > "$WORK/$t.load_after"
    rm -f "$WORK/$t.gen.time"
    if [ "${LLAMACPP_NO_RSS:-0}" != 1 ]; then
        # greedy, 64 new tokens (--ignore-eos), no conversation mode, THREADS threads
        run env $LLAMACPP_ENV /usr/bin/time -v -o "$WORK/$t.gen.time" "$BIN/llama-completion" -m "$f" -t "$THREADS" \
            -n "$TG" $([ "$rp" = 1 ] || echo --no-repack) --ignore-eos --temp 0 -no-cnv -p "$PROMPT" \
            < /dev/null > "$WORK/$t.gen.out" 2> "$WORK/$t.gen.err" ||
            { tail -5 "$WORK/$t.gen.err" >&2; die "llama-completion failed for $t"; }
    fi
done

# ---- 5. llamacpp.json + the markdown table
"$PY" - "$WORK" "$OUT" "$VERSION" "$THREADS" "$REPS" "$TG" "$(uptime)" "$LLAMACPP_ENV" $TYPES << 'EOF' | tee "${OUT%.json}.md"
import json, os, re, statistics, subprocess, sys
work, out, version, threads, reps, tg, up, types = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[9:]
env = sys.argv[8]

def rd(p, default=""):
    try:
        return open(p).read().strip()
    except OSError:
        return default

def rss_kib(p):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", rd(p))
    return int(m.group(1)) if m else None

cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
amx = "amx_tile" in rd("/proc/cpuinfo")
res = {"llamacpp": version, "threads": threads, "reps": reps, "cpu": cpu, "ncpu": os.cpu_count(), "amx": amx,
       "uptime_end": up, "env": env, "types": {}}
for t in types:
    runs = json.loads(rd(f"{work}/{t}.bench.json", "[]"))
    r = {"model": None}
    for b in runs:
        key = f"pp{b['n_prompt']}" if b["n_gen"] == 0 else f"tg{b['n_gen']}"
        r[key] = statistics.median(b["samples_ts"])
        r[key + "_samples"] = b["samples_ts"]
        r["model"] = b.get("model_filename")
        r["model_type"] = b.get("model_type")
        r["model_size_mb"] = round(b.get("model_size", 0) / 2**20, 1)
        r["build_commit"] = b.get("build_commit")
        r["n_threads"] = b.get("n_threads")
    k = rss_kib(f"{work}/{t}.gen.time")
    r["rss_mb"] = round(k / 1024, 1) if k else None
    # llama-completion's own generation speed (its perf print), for reference
    m = re.search(r"eval time =.*?\(\s*[\d.]+ ms per token,\s*([\d.]+) tokens per second\)",
                  "\n".join(l for l in rd(f"{work}/{t}.gen.err").splitlines() if "prompt eval" not in l))
    r["completion_tg_tok_s"] = float(m.group(1)) if m else None
    r["repack"] = int(rd(f"{work}/{t}.repack", "1"))
    r["other_cpus"] = float(rd(f"{work}/{t}.bench.others", "nan"))
    r["load_before"], r["load_after"] = rd(f"{work}/{t}.load_before"), rd(f"{work}/{t}.load_after")
    res["types"][t] = r
json.dump(res, open(out, "w"), indent=1)

def f(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"
print(f"## llama.cpp anchor: SmolLM2-135M-Instruct, {threads} threads")
print()
print(f"- {version}; llama-bench -t {threads} -p 128,512 -n {tg} -r {reps}: median tok/s of the {reps} repetitions")
print(f"- machine: {cpu}, {os.cpu_count()} CPUs, AMX {'yes' if amx else 'no'}; at the end: `{up.strip()}`")
print(f"- environment of the llama.cpp processes: {env or 'unchanged (its defaults)'}")
print(f"- RSS: peak resident set of llama-completion generating {tg} tokens from a short prompt (`/usr/bin/time -v`)")
print()
print("| type | llama-bench type | file MiB | repack | pp128 tok/s | pp512 tok/s | tg64 tok/s | RSS MiB | other CPUs busy | load avg before → after |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for t, r in res["types"].items():
    warn = " ⚠" if r["other_cpus"] > 0.1 else ""
    print(f"| {t} | {r.get('model_type') or '?'} | {f(r.get('model_size_mb'))} | {r['repack']}{'' if r['repack'] else ' ‡'} | {f(r.get('pp128'))} | {f(r.get('pp512'))} "
          f"| {f(r.get('tg64'))} | {f(r.get('rss_mb'), 0)} | {r['other_cpus']:.2f}{warn} | {r['load_before']} → {r['load_after']} |")
print()
print("⚠: other processes kept more than 0.1 CPU busy during that type's llama-bench run (busy time in "
      "/proc/stat minus llama-bench's own CPU time, per wall second): a disturbed timing.")
if any(not r["repack"] for r in res["types"].values()):
    print("‡ repack 0: llama-bench with llama.cpp's default repack 1 crashed (ggml's AMX mul_mat segfaults on this "
          "machine, upstream llama.cpp#20824), so this type ran without the AMX / CPU_REPACK weight layouts "
          "(`--repack 0`; llama-completion `--no-repack`): plain ggml-cpu AVX-512 kernels.")
EOF
say "saved $OUT and ${OUT%.json}.md"
