#!/usr/bin/env bash
# check_lm_data.sh: causal-LM data (src/train/lm_data.c) against Hugging Face:
# SmolLM2's tokenizer (tokenizer.json made from the GGUF by transformers'
# converter, tests/ref_bpe.py) and transformers' apply_chat_template, on real
# records of GSM8K (prompt/response and a --prompt-template), Alpaca (its JSON
# array, with and without input), SAMSum as chats (system prompts, two
# assistant turns) and XSum (plain text): every row's token ids, target flags
# and segments equal tests/ref_lm_data.py's, with and without packing, loss on
# responses or on everything, and truncation (counts of truncated and dropped
# examples too; 0.1-1 MB records, whose heads peftc tokenises from a
# prefix, against HF tokenising them whole); bad records give one line naming file:line and field.
# Prints ok/FAIL lines and ends with "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -f "$GGUF" ] || { bad "$GGUF missing (scripts/fetch_models.sh)"; finish; }
build_driver lm_data_driver || finish
"$PY" tests/ref_bpe.py hfjson "$GGUF" "$tmp/tok" 2>"$tmp/e" || { bad "hfjson: $(tail -1 "$tmp/e")"; finish; }
"$PY" tests/ref_lm_data.py gen "$DATA" "$tmp/d" 2>"$tmp/e" || { bad "gen: $(tail -1 "$tmp/e")"; finish; }
D=$tmp/d
T=$(printf '\t')
cat >"$tmp/cases" <<CASES
$D/pr.jsonl${T}auto${T}512${T}0${T}0
$D/pr.jsonl${T}prompt-response${T}96${T}0${T}0
$D/pr.jsonl${T}auto${T}512${T}1${T}0
$D/pr.jsonl${T}auto${T}256${T}1${T}1
$D/alpaca.json${T}auto${T}512${T}0${T}0
$D/alpaca.json${T}alpaca${T}64${T}1${T}0
$D/chat.jsonl${T}auto${T}1024${T}0${T}0
$D/chat.jsonl${T}chat${T}160${T}1${T}0
$D/chat.jsonl${T}chat${T}1024${T}0${T}1
$D/text.jsonl${T}auto${T}512${T}1${T}0
$D/text.jsonl${T}text${T}16${T}0${T}0
$D/gsm_raw.jsonl${T}template${T}512${T}0${T}0${T}Question: {question}\\nAnswer:${T}answer
$D/xsum.jsonl${T}template${T}128${T}0${T}0${T}Summarize: {document}\\nSummary:${T}summary
$D/long.jsonl${T}template${T}64${T}0${T}1${T}Summarize: {document}\\nSummary:${T}summary
$D/long.jsonl${T}template${T}700${T}1${T}1${T}Summarize: {document}\\nSummary:${T}summary
$D/chat_long.jsonl${T}chat${T}128${T}0${T}1
CASES
mkdir -p "$tmp/want"
"$PY" tests/ref_lm_data.py expect "$tmp/tok" "$tmp/cases" "$tmp/want" 2>"$tmp/e" || { bad "expect: $(tail -1 "$tmp/e")"; finish; }
i=0
while IFS="$T" read -r file fmt ml pack all tmpl resp; do
    i=$((i + 1))
    tmpl=${tmpl//\\n/$'\n'}
    name="$(basename "$file") $fmt max_len=$ml pack=$pack loss_all=$all${resp:+ template}"
    if ! build/tests/lm_data_driver "$tmp/tok/tokenizer.json" "$file" "$fmt" "$ml" "$pack" "$all" "$tmpl" ${resp:+"$resp"} >"$tmp/got" 2>"$tmp/e"; then
        bad "$name: $(head -1 "$tmp/e")"; continue
    fi
    if cmp -s <("$PY" -c 'import json,sys; [print(json.dumps(json.loads(l), sort_keys=True)) for l in open(sys.argv[1])]' "$tmp/want/$i.want") \
              <("$PY" -c 'import json,sys; [print(json.dumps(json.loads(l), sort_keys=True)) for l in open(sys.argv[1])]' "$tmp/got"); then
        ok "$name: $(($(wc -l <"$tmp/got") - 1)) rows equal HF's ($(tail -1 "$tmp/got"))"
    else
        bad "$name: differs from HF's: $(diff <(tail -1 "$tmp/want/$i.want") <(tail -1 "$tmp/got") | head -3 | tr '\n' ' ')"
    fi
done <"$tmp/cases"

# the test can fail: a response tokenised together with its prompt differs somewhere
n_rows=$(grep -c '"ids"' "$tmp/want/1.want")
[ "$n_rows" -eq 40 ] && ok "GSM8K prompt/response: 40 rows" || bad "GSM8K prompt/response: $n_rows rows, expected 40"

bad_case() { # file expected-regex
    if build/tests/lm_data_driver "$tmp/tok/tokenizer.json" "$1" auto 512 0 0 >/dev/null 2>"$tmp/e"; then bad "$(basename "$1") accepted"; return; fi
    if [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -qE "$2" "$tmp/e"; then ok "$(basename "$1"): $(cat "$tmp/e")"
    else bad "$(basename "$1"): message '$(head -2 "$tmp/e" | tr '\n' ' ')' does not match '$2'"; fi
}
bad_case "$D/bad_missing.jsonl" 'bad_missing.jsonl:2: no string field "response"'
bad_case "$D/bad_empty.jsonl" 'bad_empty.jsonl:1: empty "response"'
bad_case "$D/bad_unknown.jsonl" 'bad_unknown.jsonl:1: no field of a known format'
bad_case "$D/bad_chat.jsonl" 'bad_chat.jsonl:1: message 1 lacks'
bad_case "$D/bad_json.jsonl" 'bad_json.jsonl:2: not JSON'
finish
