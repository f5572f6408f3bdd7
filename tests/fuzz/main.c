/* main.c: the libFuzzer entry of one target (FUZZ_TARGET="name" at build). */
#include "fuzz.h"
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const fuzz_target *t;
    if (!t && !(t = fuzz_find(FUZZ_TARGET))) { fprintf(stderr, "no fuzz target %s\n", FUZZ_TARGET); abort(); }
    return t->run(data, size);
}
