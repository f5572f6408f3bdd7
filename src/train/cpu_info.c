/* cpu_info.c: peftc_cpu, what the kernels found on this CPU, for the
 * public header (the kernels layer does not include it). */
#include "peftc.h"
#include "kernels/kernels.h"

void peftc_cpu(peftc_cpu_info *out)
{
    out->isa = kernels_isa_name(kernels_isa());
    out->avx512_bf16 = kernels_bf16_supported();
    out->amx = kernels_bf16_amx(-1);
    out->bf16_speedup = kernels_bf16_speedup();
    out->bf16_default = kernels_bf16_default();
    out->bf16 = kernels_bf16();
}
