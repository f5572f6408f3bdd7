#!/usr/bin/env bash
# check_tokenizer.sh: `peftc tokenize` against the Hugging Face reference
# (tests/ref_tokenize.py, HF `tokenizers` loading the model's tokenizer.json),
# line by line, on
#   - the 872 sentences of the SST-2 dev set,
#   - tests/data/tokenizer_hard_cases.txt (also at --max-len 16),
#   - tests/data/tokenizer_pairs.txt with --pairs (also at --max-len 24),
#   - a sweep of every Unicode code point (lines of "a<c>b" words, 16 a line),
#     which checks the Unicode tables (categories, NFD, lowercase) exhaustively.
# Prints one "ok   - ..." or "FAIL - ..." line per comparison (a failure shows
# the first differing line) and ends with "## <passed> <failed>"; exits
# non-zero on failure.  Run from anywhere; works from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
PEFTC=${PEFTC:-./peftc}
SST=${SST:-../shared/data/glue-sst2/dev.tsv}
pass=0
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok()  { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }

# Prints where two id files first differ, with the input line.
first_diff() { # input want got
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys
def lines(p):
    d = open(p, "rb").read().decode("utf-8", "replace").split("\n")
    return d[:-1] if d and d[-1] == "" else d
inp, want, got = (lines(p) for p in sys.argv[1:4])
def short(s, n=160):
    s = s.encode("unicode_escape").decode("ascii")
    return s if len(s) <= n else s[:n] + "..."
for i in range(max(len(want), len(got))):
    w = want[i] if i < len(want) else "<missing>"
    g = got[i] if i < len(got) else "<missing>"
    if w != g:
        x = inp[i] if i < len(inp) else ""
        print("line %d: input '%s' | want %s | got %s" % (i + 1, short(x), short(w), short(g)))
        break
EOF
}

# compare NAME INPUT [peftc tokenize options...]
compare() {
    local name="$1" input="$2"
    shift 2
    local n
    n=$(wc -l <"$input")
    if ! "$PY" tests/ref_tokenize.py "$MODEL" "$@" <"$input" >"$tmp/want" 2>"$tmp/ref.err"; then
        bad "$name: the reference failed: $(head -c 300 "$tmp/ref.err" | tail -1)"
        return
    fi
    local t0 t1
    t0=$(date +%s%N)
    if ! "$PEFTC" tokenize --model "$MODEL" "$@" <"$input" >"$tmp/got" 2>"$tmp/err"; then
        bad "$name: peftc tokenize failed: $(head -1 "$tmp/err")"
        return
    fi
    t1=$(date +%s%N)
    if cmp -s "$tmp/want" "$tmp/got"; then
        ok "$name: $n lines identical ($(( (t1 - t0) / 1000000 )) ms)"
    else
        bad "$name: $(first_diff "$input" "$tmp/want" "$tmp/got")"
    fi
}

if [ ! -x "$PEFTC" ]; then
    bad "$PEFTC not built (run make)"
    echo "## $pass $fail"
    exit 1
fi
if ! "$PY" -c "import tokenizers" 2>/dev/null; then
    bad "the reference needs HF tokenizers for $PY (make setup)"
    echo "## $pass $fail"
    exit 1
fi

# SST-2 dev: column 1 after the header; the sentences end in a space before the TAB.
if [ -f "$SST" ]; then
    tail -n +2 "$SST" | cut -f1 | sed 's/ $//' >"$tmp/sst2.txt"
    n=$(wc -l <"$tmp/sst2.txt")
    if [ "$n" -eq 872 ]; then ok "SST-2 dev has 872 sentences"; else bad "SST-2 dev: $n sentences, expected 872"; fi
    compare "SST-2 dev" "$tmp/sst2.txt"
else
    bad "$SST not found"
fi

compare "hard cases" tests/data/tokenizer_hard_cases.txt
compare "hard cases, --max-len 16" tests/data/tokenizer_hard_cases.txt --max-len 16
compare "pairs" tests/data/tokenizer_pairs.txt --pairs
compare "pairs, --max-len 24" tests/data/tokenizer_pairs.txt --pairs --max-len 24

"$PY" - >"$tmp/sweep.txt" <<'EOF'
import sys
cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and c != 0x0A]
sys.stdout.write("".join(" ".join("a%sb" % chr(c) for c in cps[i:i + 16]) + "\n"
                         for i in range(0, len(cps), 16)))
EOF
compare "every code point (U+0000..U+10FFFF in 'a<c>b' words)" "$tmp/sweep.txt"

echo "## $pass $fail"
[ "$fail" -eq 0 ]
