/* misc.c: small vector helpers (residual adds, embedding normalisation). */
#include <math.h>
#include "kernels/kernels.h"

/* y (n) += x (n) */
void add_inplace(float *y, const float *x, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 15))
    for (size_t i = 0; i < n; i++) y[i] += x[i];
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
