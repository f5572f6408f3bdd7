/* fuzz.h: the fuzz targets' table (tests/fuzz/targets.c). */
#ifndef PEFTC_FUZZ_H
#define PEFTC_FUZZ_H
#include <stddef.h>
#include <stdint.h>

typedef struct fuzz_target {
    const char *name;
    int (*run)(const uint8_t *data, size_t n);
} fuzz_target;

extern const fuzz_target fuzz_targets[];
const fuzz_target *fuzz_find(const char *name);
void fuzz_cleanup(void);
#endif
