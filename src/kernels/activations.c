/* activations.c: elementwise GELU (exact erf form, as BERT) and tanh. */
#include <math.h>
#include "kernels/kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define ELEMWISE_PAR (1u << 15)

/* out (n) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) */
void gelu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= ELEMWISE_PAR)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    }
}

/* dinp (n) += dout * (Phi(x) + x * phi(x)), phi the standard normal density */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    #pragma omp parallel for schedule(static) if (n >= ELEMWISE_PAR)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

/* out (n) = tanh(inp) */
void tanh_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= ELEMWISE_PAR)
    for (size_t i = 0; i < n; i++) out[i] = tanhf(inp[i]);
}

/* dinp (n) += dout * (1 - out^2); works from the forward output, so the input
 * need not be kept. */
void tanh_backward(float *dinp, const float *out, const float *dout, size_t n)
{
    if (!dinp) return;
    #pragma omp parallel for schedule(static) if (n >= ELEMWISE_PAR)
    for (size_t i = 0; i < n; i++) {
        float y = out[i];
        dinp[i] += dout[i] * (1.0f - y * y);
    }
}
