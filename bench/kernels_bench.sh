#!/usr/bin/env bash
# kernels_bench.sh: builds bench/kernels_bench.c against the kernels of the
# work tree (or, with REV=<git revision>, against src/kernels of that revision,
# for before/after numbers) with the project's flags and runs it.
#   bash bench/kernels_bench.sh [filter] [reps]
#   REV=HEAD bash bench/kernels_bench.sh
#   OMP_NUM_THREADS=1 bash bench/kernels_bench.sh attention
set -euo pipefail
cd "$(dirname "$0")/.."
BLASDIR=${BLASDIR:-/usr/lib/x86_64-linux-gnu/openblas-openmp}
CFLAGS="-std=c11 -O2 -g -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu/openblas-openmp"
LIBS="-L$BLASDIR -Wl,-rpath,$BLASDIR -lopenblas -lm -fopenmp"
if [ -n "${REV:-}" ]; then
    tag=$(git rev-parse --short "$REV")
    SRC=build/bench/kernels-$tag
    rm -rf "$SRC"; mkdir -p "$SRC/kernels" "$SRC/core"
    for f in $(git ls-tree --name-only "$REV" src/kernels/); do
        git show "$REV:$f" > "$SRC/kernels/$(basename "$f")"
    done
    git show "$REV:src/core/rng.h" > "$SRC/core/rng.h"
    INC="-I$SRC"
    KSRC=$(ls "$SRC"/kernels/*.c)
    BIN=build/bench/kernels_bench-$tag
else
    INC=""
    KSRC=$(ls src/kernels/*.c)
    BIN=build/bench/kernels_bench
fi
mkdir -p build/bench
# -I for the revision's headers goes first so its kernels.h is the one seen
cc $INC $CFLAGS -o "$BIN" bench/kernels_bench.c $KSRC $LIBS
"$BIN" "$@"
