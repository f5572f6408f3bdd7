/* cpu.c: run-time choice of the kernels' instruction-set tier, and the
 * per-thread split of elementwise loops. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

int kern_isa_level = KERNELS_ISA_PORTABLE;
static int isa_max = KERNELS_ISA_PORTABLE;   /* what the CPU (and OS) support */
static int isa_default = KERNELS_ISA_PORTABLE;

static int detect(void)
{
#if KERN_X86
    __builtin_cpu_init();  /* required when called from a constructor */
    /* libgcc's checks include the OS saving the vector state (XGETBV) */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return KERNELS_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return KERNELS_ISA_AVX2;
#endif
    return KERNELS_ISA_PORTABLE;
}

__attribute__((constructor)) static void kern_isa_init(void)
{
    isa_max = detect();
    isa_default = isa_max;
    const char *e = getenv("PEFTC_KERNELS_ISA");
    if (e) {
        for (int t = KERNELS_ISA_PORTABLE; t <= KERNELS_ISA_AVX512; t++)
            if (strcmp(e, kernels_isa_name(t)) == 0 && t < isa_default) isa_default = t;
    }
    kern_isa_level = isa_default;
}

int kernels_set_isa(int isa)
{
    if (isa < 0) kern_isa_level = isa_default;
    else kern_isa_level = isa < isa_max ? isa : isa_max;
    return kern_isa_level;
}

int kernels_isa(void) { return kern_isa_level; }
int kernels_isa_max(void) { return isa_max; }

const char *kernels_isa_name(int isa)
{
    switch (isa) {
    case KERNELS_ISA_PORTABLE: return "portable";
    case KERNELS_ISA_AVX2: return "avx2";
    case KERNELS_ISA_AVX512: return "avx512";
    default: return "auto";
    }
}

void kern_split(size_t n, size_t *start, size_t *end)
{
    size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
    size_t blocks = (n + 15) / 16;
    size_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    size_t s = b0 * 16, e = b1 * 16;
    *start = s < n ? s : n;
    *end = e < n ? e : n;
}
