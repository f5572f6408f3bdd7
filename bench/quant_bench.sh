#!/usr/bin/env bash
# quant_bench.sh: builds bench/quant_bench.c against the work tree's library
# (make) and runs it with GOMP_SPINCOUNT=10000 as the peftc CLI does.
#   bash bench/quant_bench.sh [types] [reps]     e.g. bash bench/quant_bench.sh q4_1,q4_0 5
#   PEFTC_KERNELS_ISA=avx2 bash bench/quant_bench.sh q4_0
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -j2 build/libpeftc.a
mkvar() { make -s --no-print-directory --eval='print-%: ; @echo $($*)' "print-$1"; }
mkdir -p build/bench
$(mkvar CC) $(mkvar CFLAGS) -o build/bench/quant_bench bench/quant_bench.c build/libpeftc.a $(mkvar LDLIBS)
GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000} build/bench/quant_bench "$@"
