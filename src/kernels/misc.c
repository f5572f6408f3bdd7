/* misc.c: small vector helpers (residual adds, embedding normalisation). */
#include <math.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

#define ADD_PAR (1u << 15)

KERN_INLINE void add_body(float *y, const float *x, size_t n, const int F)
{
    (void)F;
    #pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}
KERN_TIERS(add, (float *y, const float *x, size_t n), y, x, n)

/* y (n) += x (n) */
void add_inplace(float *y, const float *x, size_t n)
{
    void (*f)(float *, const float *, size_t) = KERN_PICK(add);
    if (n < ADD_PAR) { f(y, x, n); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(y + s, x + s, e - s);
    }
}

/* x (N,C): each row /= max(||row||_2, 1e-12), as torch.nn.functional.normalize,
 * so an all-zero row stays zero instead of turning into NaN. */
void l2_normalize_rows(float *x, int N, int C)
{
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= (1u << 15))
    for (int n = 0; n < N; n++) {
        float *r = x + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)r[c] * r[c];
        double nrm = sqrt(ss);
        float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
        for (int c = 0; c < C; c++) r[c] *= inv;
    }
}
