/* elementwise.c: ReLU, SiLU and axpy, used by the delta modules' nonlinearities
 * and scaled composition. */
#include <math.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

/* out, inp: (n) */
void relu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) dinp[i] += kern_sel(inp[i] > 0.0f, dout[i], 0.0f);
}

KERN_INLINE void silu_fwd_body(float *out, const float *inp, size_t n, const int F)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = inp[i] / (1.0f + kern_exp(-inp[i], F));
}
KERN_TIERS(silu_fwd, (float *out, const float *inp, size_t n), out, inp, n)

/* d/dx x*s(x) = s(x) * (1 + x*(1 - s(x))) */
KERN_INLINE void silu_bwd_body(float *dinp, const float *inp, const float *dout, size_t n, const int F)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + kern_exp(-inp[i], F));
        dinp[i] += dout[i] * s * kern_madd(inp[i], 1.0f - s, 1.0f, F);
    }
}
KERN_TIERS(silu_bwd, (float *dinp, const float *inp, const float *dout, size_t n), dinp, inp, dout, n)

void silu_forward(float *out, const float *inp, size_t n)
{
    void (*f)(float *, const float *, size_t) = KERN_PICK(silu_fwd);
    if (n < (1u << 15)) { f(out, inp, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(out + s, inp + s, e - s);
    }
}

void silu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    void (*f)(float *, const float *, const float *, size_t) = KERN_PICK(silu_bwd);
    if (n < (1u << 15)) { f(dinp, inp, dout, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(dinp + s, inp + s, dout + s, e - s);
    }
}

void axpy_inplace(float *y, float a, const float *x, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}
