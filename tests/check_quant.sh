#!/usr/bin/env bash
# check_quant.sh: the GGUF block formats (src/kernels/quant.c) against the
# PyPI gguf package (tests/ref_quant.py): dequantisation of every tensor of
# the SmolLM2 GGUF file (a sample of rows of each), of real weights
# re-quantised by gguf to each type it can quantise, and of random blocks of
# every supported type (K-quants included); quant_quantize_row's bytes
# against gguf's quantisers on the same real weights. Bit for bit.
# Prints ok/FAIL lines and "## <passed> <failed>".
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
GGUF=${GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$GGUF" ]; then bad "$GGUF not found"; finish; fi
if ! "$PY" -c "import gguf, numpy" 2>/dev/null; then bad "the reference needs the gguf package for $PY (make setup)"; finish; fi
build_driver quant_driver || finish

if ! out=$("$PY" tests/ref_quant.py gen "$GGUF" "$tmp" 2>&1); then
    printf '%s\n' "$out" | tail -5; bad "ref_quant.py gen failed"; finish
fi
ok "gguf-py wrote the cases"
for s in model requant random; do
    if out=$(build/tests/quant_driver dequant "$tmp/$s.idx" "$tmp/$s.in" "$tmp/$s.got" 2>&1); then
        ok "quant_driver dequant $s: $out"
    else
        bad "quant_driver dequant $s: $out"
    fi
done
if out=$(build/tests/quant_driver quant "$tmp/quant.idx" "$tmp/quant.in" "$tmp/quant.got" 2>&1); then
    ok "quant_driver quant: $out"
else
    bad "quant_driver quant: $out"
fi
tally "$("$PY" tests/ref_quant.py cmp "$tmp" 2>&1)"
finish
