#!/usr/bin/env bash
# check_nf4.sh: NF4 quantisation (src/kernels/nf4.c) against bitsandbytes'
# quantize_4bit / dequantize_4bit on its CPU backend (tests/ref_nf4.py):
# the packed codes, the absmax (plain, or double-quantised: 8-bit codes,
# second-level absmax, offset) and the dequantised values, bit for bit, on
# real MiniLM and SmolLM2 weights and awkward random tensors.
# Prints ok/FAIL lines and "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! "$PY" -c "import bitsandbytes, torch, safetensors" 2>/dev/null; then
    bad "the reference needs bitsandbytes, torch and safetensors for $PY (make setup)"; finish
fi
build_driver nf4_driver || finish
if ! out=$("$PY" tests/ref_nf4.py gen "$MODEL" "$GGUF" "$tmp" 2>&1); then
    printf '%s\n' "$out" | tail -5; bad "ref_nf4.py gen failed"; finish
fi
if out=$(build/tests/nf4_driver quant "$tmp/list" 2>&1); then ok "nf4_driver: $out"; else bad "nf4_driver: $out"; fi
tally "$("$PY" tests/ref_nf4.py cmp "$tmp" 2>&1 | grep -v 'kernels-community')"
finish
