/* pooling.c: sequence pooling (B,T,C) -> (B,C) for sentence embeddings. */
#include <string.h>
#include "kernels/kernels.h"

static inline int pool_len(const int *lens, int b, int T)
{
    int L = lens ? lens[b] : T;
    return L < 0 ? 0 : (L > T ? T : L);
}

/* out (B,C) = mean over t < lens[b] of inp (B,T,C); lens NULL = all T;
 * lens[b] == 0 gives a zero row (not NaN). */
void mean_pool_forward(float *out, const float *inp, const int *lens, int B, int T, int C)
{
    #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= (1u << 15))
    for (int b = 0; b < B; b++) {
        int L = pool_len(lens, b, T);
        float *o = out + (size_t)b * C;
        memset(o, 0, (size_t)C * sizeof(float));
        for (int t = 0; t < L; t++) {
            const float *x = inp + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) o[c] += x[c];
        }
        if (L > 0) {
            float inv = 1.0f / (float)L;
            for (int c = 0; c < C; c++) o[c] *= inv;
        }
    }
}

/* dinp[b,t] (B,T,C) += dout[b] / lens[b] for t < lens[b]; padded rows untouched */
void mean_pool_backward(float *dinp, const float *dout, const int *lens, int B, int T, int C)
{
    if (!dinp) return;
    #pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * C >= (1u << 15))
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int L = pool_len(lens, b, T);
            if (t >= L) continue;
            float inv = 1.0f / (float)L;
            const float *d = dout + (size_t)b * C;
            float *di = dinp + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) di[c] += d[c] * inv;
        }
    }
}

/* out (B,C) = inp[b, 0, :] of inp (B,T,C) */
void cls_pool_forward(float *out, const float *inp, int B, int T, int C)
{
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * C, inp + (size_t)b * T * C, (size_t)C * sizeof(float));
}

/* dinp[b, 0, :] (B,T,C) += dout[b] (B,C) */
void cls_pool_backward(float *dinp, const float *dout, int B, int T, int C)
{
    if (!dinp) return;
    for (int b = 0; b < B; b++) {
        float *di = dinp + (size_t)b * T * C;
        const float *d = dout + (size_t)b * C;
        for (int c = 0; c < C; c++) di[c] += d[c];
    }
}
