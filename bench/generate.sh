#!/usr/bin/env bash
# bench/generate.sh: peftc's decoder generation against llama.cpp on the same
# GGUF files, same machine, same thread count, in one run, alternating per type:
# llama.cpp TYPE (bench/llamacpp.sh with TYPES=TYPE), then peftc TYPE.
#
# llama.cpp: bench/llamacpp.sh builds it (outside the repo) and makes the
# re-typed models; llama-bench gives pp128, pp512, tg64 (median tok/s of REPS),
# llama-completion's 64-token generation the peak RSS.
# peftc: only when `./peftc generate --help` works (the decoder is being
# written). Per type and prompt length N in 128 512:
#   peftc bench-gen --model FILE --threads THREADS --prompt-tokens N --gen-tokens 64 --reps REPS
# printing one JSON object {"pp_tok_s":..., "tg_tok_s":..., "rss_mb":...}
# (median over the reps). pp128/pp512 come from the two runs, tg64 from the
# N=128 run, rss_mb from the N=128 run's JSON (if absent: its /usr/bin/time -v
# peak RSS). A type peftc rejects is reported as such, not as a failure.
#
# Output: build/bench/generate.json, build/bench/generate.md (printed);
# llama.cpp's per-type details in build/bench/gen/.
#
# Environment: TYPES ("Q4_1 Q4_0 Q8_0 BF16 F32"), THREADS (2), REPS (5),
# MODEL (models/SmolLM2-135M-Instruct.Q4_1.gguf), PEFTC (./peftc),
# BENCH_NO_BUILD=1 (skip `make all`), BENCH_NO_PEFTC=1 (llama.cpp only),
# PYTHON, and bench/llamacpp.sh's (PEFTC_ANCHOR_DIR, LLAMACPP_PY_VERSION, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
export MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export THREADS=${THREADS:-2} REPS=${REPS:-5}
TYPES=${TYPES:-Q4_1 Q4_0 Q8_0 BF16 F32}
PEFTC=${PEFTC:-./peftc}
OUT=build/bench
GEN=$OUT/gen
say() { echo "generate.sh: $*" >&2; }
die() { say "$*"; exit 1; }
mkdir -p "$GEN"

# ---- llama.cpp: build + re-typed models (reused when present)
eval "$(TYPES="$TYPES" bash bench/llamacpp.sh --print-env)"
srctype=$(basename "$MODEL" .gguf); srctype=${srctype##*.}
stem=$(basename "$MODEL" .gguf); stem=${stem%.*}
model_of() { if [ "$1" = "$srctype" ]; then echo "$MODEL"; else echo "$LLAMACPP_MODELS/$stem.$1.gguf"; fi; }

# ---------------------------------------------------------------------------
# peftc side: bench/gen_bench.c (the public peftc_lm_* API, measured as
# llama-bench measures: pp N random tokens from an empty cache, tg 64 tokens
# one at a time after BOS) printing {"pp_tok_s", "tg_tok_s"}; built with the
# Makefile's flags into build/bench/gen_bench.
# ---------------------------------------------------------------------------
have_peftc=0
if [ "${BENCH_NO_PEFTC:-0}" != 1 ]; then
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        make -s --no-print-directory all >&2 || say "make all failed: the peftc side is skipped"
    fi
    mkvar() { make -s --no-print-directory --eval='print-%: ; @echo $($*)' "print-$1"; }
    mkdir -p build/bench
    if [ -f build/libpeftc.a ] && $(mkvar CC) $(mkvar CFLAGS) -o build/bench/gen_bench bench/gen_bench.c build/libpeftc.a $(mkvar LDLIBS); then
        have_peftc=1
        PEFTC_BENCH=build/bench/gen_bench
    else
        say "peftc side SKIPPED: bench/gen_bench.c does not build"
    fi
fi
# peftc_run TYPE FILE: $GEN/peftc.TYPE.pN.{json,time,err} for N in 128 512
peftc_run() {
    local t=$1 f=$2 n
    for n in 128 512; do
        echo "+ $PEFTC_BENCH $f --threads $THREADS --pp $n --tg 64 --reps $REPS" >&2
        if ! /usr/bin/time -v -o "$GEN/peftc.$t.p$n.time" env ${PEFTC_ENV:-GOMP_SPINCOUNT=10000} "$PEFTC_BENCH" "$f" --threads "$THREADS" \
                --pp "$n" --tg 64 --reps "$REPS" > "$GEN/peftc.$t.p$n.json" 2> "$GEN/peftc.$t.p$n.err"; then
            say "peftc bench-gen failed for $t (prompt $n): $(tail -1 "$GEN/peftc.$t.p$n.err")"
            echo '{"error": "'"$(tail -1 "$GEN/peftc.$t.p$n.err" | tr -d '"\\')"'"}' > "$GEN/peftc.$t.p$n.json"
        fi
    done
}

# ---- alternate: llama.cpp TYPE, then peftc TYPE
rm -f "$GEN"/peftc.*
for t in $TYPES; do
    say "== $t: llama.cpp"
    TYPES=$t OUT=$GEN/llamacpp.$t.json bash bench/llamacpp.sh > /dev/null
    if [ "$have_peftc" = 1 ]; then
        say "== $t: peftc"
        peftc_run "$t" "$(model_of "$t")"
    fi
done

# ---- report: llama.cpp and peftc per type, ratios peftc/llama.cpp
"$PY" - "$GEN" "$OUT/generate.json" "$have_peftc" "$LLAMACPP_VERSION" "$THREADS" "$REPS" "$(uptime)" $TYPES << 'EOF' | tee "$OUT/generate.md"
import json, re, sys
gen, out, have_peftc, version, threads, reps, up, types = sys.argv[1], sys.argv[2], sys.argv[3] == "1", \
    sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8:]

def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None

def rss_kib(p):
    try:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(p).read())
        return int(m.group(1)) if m else None
    except OSError:
        return None

res = {"llamacpp": version, "threads": int(threads), "reps": int(reps), "uptime_end": up, "peftc": have_peftc,
       "types": {}}
meta = None
for t in types:
    lj = load(f"{gen}/llamacpp.{t}.json") or {}
    meta = meta or lj
    l = (lj.get("types") or {}).get(t, {})
    row = {"llamacpp": {k: l.get(k) for k in ("pp128", "pp512", "tg64", "rss_mb", "other_cpus", "load_before",
                                              "load_after")}}
    if have_peftc:
        p = {}
        for n in (128, 512):
            j = load(f"{gen}/peftc.{t}.p{n}.json")
            if not isinstance(j, dict) or "error" in j or "pp_tok_s" not in j:
                p["error"] = (j or {}).get("error", "no JSON output") if isinstance(j, dict) else "no JSON output"
                continue
            p[f"pp{n}"] = j.get("pp_tok_s")
            if n == 128:
                p["tg64"] = j.get("tg_tok_s")
                k = rss_kib(f"{gen}/peftc.{t}.p{n}.time")
                p["rss_mb"] = j.get("rss_mb") or (round(k / 1024, 1) if k else None)
            else:
                p["tg64_p512"] = j.get("tg_tok_s")
        row["peftc"] = p
        row["ratio_peftc_over_llamacpp"] = {
            k: (p[k] / row["llamacpp"][k] if p.get(k) and row["llamacpp"].get(k) else None)
            for k in ("pp128", "pp512", "tg64")}
        row["memory_llamacpp_over_peftc"] = (row["llamacpp"]["rss_mb"] / p["rss_mb"]
                                             if p.get("rss_mb") and row["llamacpp"].get("rss_mb") else None)
    res["types"][t] = row
json.dump(res, open(out, "w"), indent=1)

def f(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"
def r(x):
    return "–" if x is None else f"{x:.2f}×"
meta = meta or {}
print(f"# Generation: peftc vs llama.cpp, SmolLM2-135M-Instruct, {threads} threads")
print()
print(f"- llama.cpp: {version}; llama-bench, median tok/s of {reps} repetitions; RSS: llama-completion, 64 tokens")
print(f"- machine: {meta.get('cpu', '?')}, {meta.get('ncpu', '?')} CPUs, AMX {'yes' if meta.get('amx') else 'no'}; "
      f"at the end: `{up.strip()}`")
if not have_peftc:
    print("- **peftc: skipped** (`peftc generate --help` does not work yet): llama.cpp only")
print()
if have_peftc:
    print("| type | pp128 llama.cpp | pp128 peftc | **pp128 peftc/llama.cpp** | pp512 llama.cpp | pp512 peftc "
          "| **pp512 peftc/llama.cpp** | tg64 llama.cpp | tg64 peftc | **tg64 peftc/llama.cpp** "
          "| RSS MiB llama.cpp | RSS MiB peftc | **memory llama.cpp/peftc** |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, row in res["types"].items():
        l, p, q = row["llamacpp"], row["peftc"], row["ratio_peftc_over_llamacpp"]
        warn = " ⚠" if (l.get("other_cpus") or 0) > 0.1 else ""
        note = f" ({p['error']})" if p.get("error") else ""
        print(f"| {t}{warn}{note} | {f(l['pp128'])} | {f(p.get('pp128'))} | {r(q['pp128'])} | {f(l['pp512'])} "
              f"| {f(p.get('pp512'))} | {r(q['pp512'])} | {f(l['tg64'])} | {f(p.get('tg64'))} | {r(q['tg64'])} "
              f"| {f(l['rss_mb'], 0)} | {f(p.get('rss_mb'), 0)} | {r(row['memory_llamacpp_over_peftc'])} |")
    print()
    print("Ratios above 1: peftc is faster (speed) or llama.cpp uses more memory (memory).")
else:
    print("| type | pp128 tok/s | pp512 tok/s | tg64 tok/s | RSS MiB | other CPUs busy | load avg before → after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for t, row in res["types"].items():
        l = row["llamacpp"]
        warn = " ⚠" if (l.get("other_cpus") or 0) > 0.1 else ""
        print(f"| {t} | {f(l['pp128'])} | {f(l['pp512'])} | {f(l['tg64'])} | {f(l['rss_mb'], 0)} "
              f"| {f(l.get('other_cpus'), 2)}{warn} | {l.get('load_before')} → {l.get('load_after')} |")
print()
print("⚠: other processes kept more than 0.1 CPU busy during llama.cpp's llama-bench run of that type.")
EOF
say "saved $OUT/generate.json and $OUT/generate.md"
