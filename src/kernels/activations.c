/* activations.c: elementwise activations: GELU (exact erf form, as BERT), tanh, ReLU, SiLU.
 * GELU uses the branch-free kern_erf / kern_exp of kernels.h so its loops
 * vectorise (libm's erff does not, and was ~7% of a training step). */
#include <math.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

/* Below this many elements a parallel region costs more than it saves. */
#define ELEMWISE_PAR (1u << 15)

KERN_INLINE void gelu_fwd_body(float *out, const float *inp, size_t n, const int F)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = kern_gelu(inp[i], F);
}
KERN_TIERS(gelu_fwd, (float *out, const float *inp, size_t n), out, inp, n)

KERN_INLINE void gelu_bwd_body(float *dinp, const float *inp, const float *dout, size_t n, const int F)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * kern_gelu_grad(inp[i], F);
}
KERN_TIERS(gelu_bwd, (float *dinp, const float *inp, const float *dout, size_t n), dinp, inp, dout, n)

KERN_INLINE void gelu_bwd_inplace_body(float *d, const float *inp, size_t n, const int F)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) d[i] = d[i] * kern_gelu_grad(inp[i], F);
}
KERN_TIERS(gelu_bwd_inplace, (float *d, const float *inp, size_t n), d, inp, n)

/* out (n) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); out may equal inp */
void gelu_forward(float *out, const float *inp, size_t n)
{
    void (*f)(float *, const float *, size_t) = KERN_PICK(gelu_fwd);
    if (n < ELEMWISE_PAR) { f(out, inp, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(out + s, inp + s, e - s);
    }
}

/* dinp (n) += dout * (Phi(x) + x * phi(x)), phi the standard normal density */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    void (*f)(float *, const float *, const float *, size_t) = KERN_PICK(gelu_bwd);
    if (n < ELEMWISE_PAR) { f(dinp, inp, dout, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(dinp + s, inp + s, dout + s, e - s);
    }
}

/* d (n) = d * (Phi(x) + x * phi(x)) */
void gelu_backward_inplace(float *d, const float *inp, size_t n)
{
    if (!d) return;
    void (*f)(float *, const float *, size_t) = KERN_PICK(gelu_bwd_inplace);
    if (n < ELEMWISE_PAR) { f(d, inp, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(d + s, inp + s, e - s);
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

/* out (n) = max(inp, 0) */
void relu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= ELEMWISE_PAR)
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

/* dinp (n) += dout where inp > 0 */
void relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    #pragma omp parallel for simd schedule(static) if (n >= ELEMWISE_PAR)
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

/* out (n) = x * sigmoid(x); out may equal inp */
void silu_forward(float *out, const float *inp, size_t n)
{
    void (*f)(float *, const float *, size_t) = KERN_PICK(silu_fwd);
    if (n < ELEMWISE_PAR) { f(out, inp, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(out + s, inp + s, e - s);
    }
}

/* dinp (n) += dout * silu'(inp) */
void silu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (!dinp) return;
    void (*f)(float *, const float *, const float *, size_t) = KERN_PICK(silu_bwd);
    if (n < ELEMWISE_PAR) { f(dinp, inp, dout, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(dinp + s, inp + s, dout + s, e - s);
    }
}
