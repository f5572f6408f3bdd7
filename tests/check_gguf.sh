#!/usr/bin/env bash
# check_gguf.sh: the GGUF reader (io/gguf.c, through tests/gguf_dump.c) against
# the PyPI gguf package's GGUFReader (tests/ref_gguf.py): every key's type and
# value, every tensor's name, type, shape, offset, size and a hash of its bytes,
# on the real SmolLM2 Q4_1 file and on v2/v3 files written by GGUFWriter (every
# value type, nested arrays, F32/F16/Q8_0); `peftc inspect` on them; and bad
# GGUF files through the CLI (one error line, non-zero exit, valgrind clean).
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
PY=/usr/bin/python3
REAL=${REAL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
W=$(mktemp -d /tmp/check_gguf.XXXXXX)
trap 'rm -rf "$W"' EXIT

build_driver gguf_dump || finish
if ! $PY -c "import gguf" 2>/dev/null; then bad "the reference needs the gguf package for $PY"; finish; fi

compare() { # NAME FILE [VERSION]
    if ! $PY tests/ref_gguf.py dump "$2" >"$W/want" 2>"$W/ref.err"; then bad "$1: reference failed: $(tail -1 "$W/ref.err")"; return; fi
    if ! build/tests/gguf_dump "$2" >"$W/got" 2>"$W/err"; then bad "$1: gguf_dump failed: $(cat "$W/err")"; return; fi
    local nk nt
    nk=$(grep -c '^kv' "$W/want"); nt=$(grep -c '^tensor' "$W/want")
    if cmp -s "$W/want" "$W/got"; then ok "$1: $nk keys and $nt tensors identical to gguf.GGUFReader"
    else bad "$1: differs from gguf.GGUFReader: $(diff "$W/want" "$W/got" | head -4 | cut -c1-300 | tr '\n' '|')"; fi
    if [ -n "${3:-}" ]; then
        if grep -qx "version $3" "$W/got"; then ok "$1: reads as version $3"; else bad "$1: not read as version $3"; fi
    fi
    if ./peftc inspect "$2" >"$W/insp" 2>"$W/err" && grep -q "^tensors: $nt " "$W/insp"; then ok "$1: peftc inspect lists $nt tensors"
    else bad "$1: peftc inspect: $(head -2 "$W/err" "$W/insp" | tr '\n' '|')"; fi
}

if [ -f "$REAL" ]; then compare "$(basename "$REAL")" "$REAL"; else bad "$REAL not found"; fi
if $PY tests/ref_gguf.py write "$W" 2>"$W/w.err"; then
    compare "GGUFWriter v2" "$W/v2.gguf" 2
    compare "GGUFWriter v3" "$W/v3.gguf" 3
else bad "GGUFWriter failed: $(tail -1 "$W/w.err")"; fi

# bad files through the CLI: one line 'peftc: <file>: <problem>', exit 1
export GOMP_SPINCOUNT=10000
expect_fail() { # NAME FILE NEEDLE
    valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 ./peftc inspect "$2" >/dev/null 2>"$W/err"
    local rc=$? lines
    lines=$(wc -l <"$W/err")
    if [ "$rc" -eq 99 ]; then bad "$1: valgrind: $(head -3 "$W/err")"; return; fi
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$1: exit code $rc"; return; fi
    if [ "$lines" -ne 1 ] || ! grep -q "^peftc: $2: .*$3" "$W/err"; then bad "$1: stderr: $(cat "$W/err")"; return; fi
    ok "$1: $(cat "$W/err") (valgrind clean)"
}
head -c 1000 "$REAL" >"$W/trunc.gguf"
expect_fail "truncated real file" "$W/trunc.gguf" "truncated"
printf 'GGUF\001\000\000\000' >"$W/v1.gguf"; head -c 16 /dev/zero >>"$W/v1.gguf"
expect_fail "GGUF v1" "$W/v1.gguf" "version 1 is not supported"
$PY - "$W" <<'PYEOF'
import struct, sys
w = sys.argv[1]
open(w + "/count.gguf", "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60) + b"\0" * 32)
open(w + "/magic.gguf", "wb").write(b"GGML" + struct.pack("<IQQ", 3, 0, 0))
PYEOF
expect_fail "n_kv = 2^60" "$W/count.gguf" "cannot fit"
expect_fail "wrong magic, .gguf name" "$W/magic.gguf" "not a GGUF file"
finish
