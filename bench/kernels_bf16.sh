#!/usr/bin/env bash
# kernels_bf16.sh: builds and runs bench/kernels_bf16.c (bf16 kernels vs sgemm)
# on 1 and 2 threads.   bash bench/kernels_bf16.sh [reps]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build/libpeftc.a
BLASDIR=${BLASDIR:-/usr/lib/x86_64-linux-gnu/openblas-openmp}
mkdir -p build/bench
cc -std=c11 -O2 -g -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE -Iinclude -Isrc \
   -o build/bench/kernels_bf16 bench/kernels_bf16.c build/libpeftc.a \
   -L"$BLASDIR" -Wl,-rpath,"$BLASDIR" -lopenblas -lutf8proc -ljansson -lm -fopenmp
for t in ${THREADS:-1 2}; do
    OMP_NUM_THREADS=$t GOMP_SPINCOUNT=10000 build/bench/kernels_bf16 "${1:-20}"
done
# the encoder's accuracy with bf16: KERNELS_BF16_ACC="MODEL_DIR LINES_FILE"
if [ -n "${KERNELS_BF16_ACC:-}" ]; then
    set -- $KERNELS_BF16_ACC
    cc -std=c11 -O2 -g -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE -Iinclude -Isrc \
       -o build/bench/kernels_bf16_accuracy bench/kernels_bf16_accuracy.c build/libpeftc.a \
       -L"$BLASDIR" -Wl,-rpath,"$BLASDIR" -lopenblas -lutf8proc -ljansson -lm -fopenmp
    build/bench/kernels_bf16_accuracy "$1" < "$2"
fi
