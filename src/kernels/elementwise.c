/* elementwise.c: ReLU, SiLU and axpy, used by the delta modules' nonlinearities
 * and scaled composition. */
#include <math.h>
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
    for (size_t i = 0; i < n; i++) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

void silu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) out[i] = inp[i] / (1.0f + expf(-inp[i]));
}

/* d/dx x*s(x) = s(x) * (1 + x*(1 - s(x))) */
void silu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-inp[i]));
        dinp[i] += dout[i] * s * (1.0f + inp[i] * (1.0f - s));
    }
}

void axpy_inplace(float *y, float a, const float *x, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}
