#!/usr/bin/env bash
# check_bpe.sh: the byte-level BPE tokenizer (src/tokenizer/bpe.c) against
# Hugging Face `tokenizers` / transformers (tests/ref_bpe.py), on SmolLM2's
# vocabulary from models/SmolLM2-135M-Instruct.Q4_1.gguf:
#   - the reference tokenizer.json is built in a temp dir by transformers' GGUF
#     converter (never committed) and is both the oracle and the input of
#     bpe_from_tokenizer_json; the GGUF arrays (dumped by ref_bpe.py) feed
#     bpe_from_vocab;
#   - texts: GSM8K, Alpaca, XSum, WMT16 en-ro (both sides) from ../shared/data
#     plus tests/data/bpe_hard_cases.txt; ids must be identical, and
#     decode(encode(x)) == x;
#   - the other pre-tokenizers (gpt2, llama-bpe, qwen2, gpt-4o, tekken) on the
#     same vocabulary, and a code point sweep (which checks PCRE2's Unicode
#     tables against Oniguruma's, HF's regex engine);
#   - tokenizer.json constructs one by one (Split behaviors, Digits, NFC,
#     add_prefix_space, TemplateProcessing, lstrip/rstrip added tokens);
#   - chat templates against transformers' apply_chat_template.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh

PY=/usr/bin/python3
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
D=build/tests/bpe_driver

first_diff() { # texts.jsonl want got
    "$PY" - "$1" "$2" "$3" <<'EOF'
import json, sys
inp = [json.loads(x) for x in open(sys.argv[1], encoding="utf-8").read().split("\n") if x]
w = open(sys.argv[2]).read().split("\n"); g = open(sys.argv[3]).read().split("\n")
for i in range(max(len(w), len(g))):
    a = w[i] if i < len(w) else "<missing>"; b = g[i] if i < len(g) else "<missing>"
    if a != b:
        x = inp[i] if i < len(inp) else ""
        print("line %d: %s | want %s | got %s" % (i + 1, ascii(x)[:150], a[:120], b[:120])); break
EOF
}

# cmp_ids NAME TEXTS WANT -- driver args...
cmp_ids() {
    local name="$1" texts="$2" want="$3"
    shift 4
    local n
    n=$(wc -l <"$texts")
    if ! "$D" "$@" <"$texts" >"$tmp/got" 2>"$tmp/err"; then
        bad "$name: driver failed: $(head -1 "$tmp/err")"
        return
    fi
    if cmp -s "$want" "$tmp/got"; then
        ok "$name: $n texts, ids identical ($(grep encode_ms "$tmp/err" | cut -d' ' -f2) ms)"
    else
        bad "$name: $(first_diff "$texts" "$want" "$tmp/got")"
    fi
    local rt
    rt=$(grep '^roundtrip ' "$tmp/err")
    if [ -n "$rt" ]; then
        set -- $rt
        if [ "$2" -eq 0 ]; then ok "$name: decode(encode(x)) == x on $3 texts"
        else bad "$name: decode(encode(x)) != x on $2 of $3 texts ($(head -1 "$tmp/err"))"; fi
    fi
}

if [ ! -f "$GGUF" ]; then bad "$GGUF missing (make setup)"; finish; fi
if ! "$PY" -c "import tokenizers, transformers, gguf" 2>/dev/null; then
    bad "the reference needs tokenizers, transformers and gguf for $PY"; finish
fi
build_driver bpe_driver || finish

export TRANSFORMERS_VERBOSITY=error
# the two GGUF readers side by side (2 cores)
"$PY" tests/ref_bpe.py dump "$GGUF" "$tmp/smol.dump" 2>"$tmp/e1" &
dump_pid=$!
"$PY" tests/ref_bpe.py hfjson "$GGUF" "$tmp/smol" 2>"$tmp/e" || { bad "hfjson: $(tail -1 "$tmp/e")"; finish; }
wait $dump_pid || { bad "dump: $(tail -1 "$tmp/e1")"; finish; }
"$PY" tests/ref_bpe.py texts "$DATA" tests/data/bpe_hard_cases.txt >"$tmp/texts.jsonl" 2>"$tmp/e" ||
    { bad "texts: $(tail -1 "$tmp/e")"; finish; }
n=$(wc -l <"$tmp/texts.jsonl")
if [ "$n" -ge 1000 ]; then ok "$n texts from $DATA + hard cases"; else bad "only $n texts"; fi

# code point sweep, 16 "a<c>b" words a line (as in check_tokenizer.sh):
# every code point of planes 0 and 1 except the big uniform blocks (CJK
# ideographs, Hangul syllables, private use: every 17th there), every 97th of
# planes 2-16 and all of U+E0000..U+E0FFF (tags, variation selectors).  The
# full 1.1M sweep agreed too but takes HF 18 s a pipeline.
"$PY" - >"$tmp/sweep.jsonl" <<'EOF'
import json, sys
uniform = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF)]
def keep(c):
    if 0xD800 <= c <= 0xDFFF: return False
    if c >= 0x20000: return 0xE0000 <= c <= 0xE0FFF or c % 97 == 0
    return not any(a <= c <= b for a, b in uniform) or c % 17 == 0
cps = [c for c in range(0x110000) if keep(c)]
sys.stdout.write("".join(json.dumps(" ".join("a%sb" % chr(c) for c in cps[i:i + 16])) + "\n"
                         for i in range(0, len(cps), 16)))
EOF
pres="gpt2 llama-bpe qwen2 gpt-4o tekken"
"$PY" tests/ref_bpe.py variants "$tmp/smol" "$tmp/v" $pres 2>"$tmp/e" || bad "variants: $(tail -1 "$tmp/e")"
args=("$tmp/smol/tokenizer.json:$tmp/want")
for pre in $pres; do args+=("$tmp/v-$pre/tokenizer.json:$tmp/want_$pre"); done
"$PY" tests/ref_bpe.py encode "$tmp/texts.jsonl" "${args[@]}" 2>"$tmp/e" ||
    { bad "reference encode: $(tail -1 "$tmp/e")"; finish; }
"$PY" tests/ref_bpe.py encode "$tmp/texts.jsonl" --special "$tmp/smol/tokenizer.json:$tmp/want_sp" 2>/dev/null
"$PY" tests/ref_bpe.py encode "$tmp/texts.jsonl" --no-parse "$tmp/smol/tokenizer.json:$tmp/want_np" 2>/dev/null
"$PY" tests/ref_bpe.py encode "$tmp/sweep.jsonl" "$tmp/smol/tokenizer.json:$tmp/want_sw" \
    "$tmp/v-llama-bpe/tokenizer.json:$tmp/want_sw2" 2>/dev/null

cmp_ids "SmolLM2 tokenizer.json" "$tmp/texts.jsonl" "$tmp/want" -- json "$tmp/smol/tokenizer.json"
cmp_ids "SmolLM2 GGUF arrays (pre smollm)" "$tmp/texts.jsonl" "$tmp/want" -- dump "$tmp/smol.dump"
cmp_ids "SmolLM2 tokenizer.json, add_special" "$tmp/texts.jsonl" "$tmp/want_sp" -- json "$tmp/smol/tokenizer.json" --special
cmp_ids "SmolLM2 GGUF arrays, specials as text (encode_special_tokens)" "$tmp/texts.jsonl" "$tmp/want_np" -- \
    dump "$tmp/smol.dump" --no-parse
# the sweep has control bytes SmolLM2's vocabulary lacks (HF drops them), so
# no round trip there
cmp_ids "code point sweep, smollm" "$tmp/sweep.jsonl" "$tmp/want_sw" -- json "$tmp/smol/tokenizer.json" --no-roundtrip
cmp_ids "code point sweep, llama-bpe" "$tmp/sweep.jsonl" "$tmp/want_sw2" -- json "$tmp/v-llama-bpe/tokenizer.json" --no-roundtrip
for pre in $pres; do
    cmp_ids "pre $pre (GGUF arrays)" "$tmp/texts.jsonl" "$tmp/want_$pre" -- dump "$tmp/smol.dump" --pre "$pre"
    cmp_ids "pre $pre (tokenizer.json)" "$tmp/texts.jsonl" "$tmp/want_$pre" -- json "$tmp/v-$pre/tokenizer.json"
done

# tokenizer.json constructs one at a time (see features() in ref_bpe.py):
# prefix space + TemplateProcessing + "a b" merges + lstrip/rstrip added
# tokens; Split with every behavior, invert and a String pattern; Digits;
# NFC.  Round trips do not hold where the pipeline drops or adds text.
feats="t-prefix t-prefix2 t-split t-contig t-removed t-nfc"
"$PY" tests/ref_bpe.py variants "$tmp/smol" "$tmp/v" $feats chat-llama3 chat-zephyr 2>"$tmp/e" ||
    bad "variants: $(tail -1 "$tmp/e")"
args=()
for f in $feats; do args+=("$tmp/v-$f/tokenizer.json:$tmp/want_$f"); done
"$PY" tests/ref_bpe.py encode "$tmp/texts.jsonl" --special "${args[@]}" 2>"$tmp/e" || bad "reference encode: $(tail -1 "$tmp/e")"
for f in $feats; do
    rt=--no-roundtrip
    case $f in t-split|t-contig) rt= ;; esac
    cmp_ids "tokenizer.json $f" "$tmp/texts.jsonl" "$tmp/want_$f" -- json "$tmp/v-$f/tokenizer.json" --special $rt
done

# chat templates
"$PY" - >"$tmp/chats.jsonl" <<'EOF'
import json
U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}
S = lambda c: {"role": "system", "content": c}
convs = [[U("Hi!")], [S("You are terse."), U("2+2?")], [U("Hello"), A("Hi, how can I help?"), U("Tell me a joke.")],
         [S(""), U("")], [U("  padded  \n"), A("\tanswer\n")], [S("Sys"), U("a"), A("b"), U("c"), A("d")],
         [U("Română: ș ț ă î â 😀 <|im_start|>")], [A("assistant first")]]
for c in convs:
    for g in (False, True):
        print(json.dumps({"messages": c, "add_generation_prompt": g}, ensure_ascii=False))
EOF
nc=$(wc -l <"$tmp/chats.jsonl")
if "$PY" tests/ref_bpe.py chat "$tmp/smol" <"$tmp/chats.jsonl" >"$tmp/want_chat" 2>"$tmp/e"; then
    for m in "chat $tmp/smol/tokenizer.json" "chatdump $tmp/smol.dump"; do
        if $D $m <"$tmp/chats.jsonl" >"$tmp/got_chat" 2>"$tmp/e2" && cmp -s "$tmp/want_chat" "$tmp/got_chat"; then
            ok "SmolLM2 chat template (${m%% *}): $nc renderings identical to apply_chat_template"
        else
            bad "SmolLM2 chat template (${m%% *}): $(head -1 "$tmp/e2") $(diff "$tmp/want_chat" "$tmp/got_chat" | head -3)"
        fi
    done
else
    bad "reference chat: $(tail -1 "$tmp/e")"
fi
for c in llama3 zephyr; do
    if ! "$PY" tests/ref_bpe.py chat "$tmp/v-chat-$c" <"$tmp/chats.jsonl" >"$tmp/want_chat" 2>"$tmp/e"; then
        bad "reference chat $c: $(tail -1 "$tmp/e")"; continue
    fi
    if $D chat "$tmp/v-chat-$c/tokenizer.json" <"$tmp/chats.jsonl" >"$tmp/got_chat" 2>"$tmp/e2" &&
        cmp -s "$tmp/want_chat" "$tmp/got_chat"; then
        ok "$c chat template: $nc renderings identical to apply_chat_template"
    else
        bad "$c chat template: $(head -1 "$tmp/e2") $(diff "$tmp/want_chat" "$tmp/got_chat" | head -3)"
    fi
done

finish
