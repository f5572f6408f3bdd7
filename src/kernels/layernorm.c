/* layernorm.c: LayerNorm over the last axis with biased variance (PyTorch). */
#include <math.h>
#include "kernels/kernels.h"

/* Channels per task for the dw/db reductions over rows; a task owns whole
 * columns so sums run in row order whatever the thread count. */
#define LN_COLS 64

/* out (N,C) = (inp - mean) * rstd * w (C) + b (C); mean (N), rstd (N) saved
 * (either may be NULL when no backward follows). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, float eps)
{
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= (1u << 14))
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        /* Two passes in double: the one-pass E[x^2]-E[x]^2 form cancels badly
         * when |mean| >> std, which residual streams do produce. */
        double s = 0;
        for (int c = 0; c < C; c++) s += x[c];
        double m = C > 0 ? s / C : 0.0;
        double var = 0;
        for (int c = 0; c < C; c++) { double d = x[c] - m; var += d * d; }
        var = C > 0 ? var / C : 0.0;
        float mf = (float)m;
        float rs = (float)(1.0 / sqrt(var + (double)eps));
        for (int c = 0; c < C; c++) o[c] = (x[c] - mf) * rs * w[c] + b[c];
        if (mean) mean[n] = mf;
        if (rstd) rstd[n] = rs;
    }
}

/* dinp (N,C) += ((dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd, dxhat = dout * w
 * dw (C) += sum_n dout * xhat;  db (C) += sum_n dout;   xhat = (inp - mean) * rstd */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C)
{
    if (N <= 0 || C <= 0) return;
    if (dinp) {
        #pragma omp parallel for schedule(static) if ((size_t)N * C >= (1u << 14))
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *d = dout + (size_t)n * C;
            float *di = dinp + (size_t)n * C;
            float m = mean[n], rs = rstd[n];
            double s1 = 0, s2 = 0;
            for (int c = 0; c < C; c++) {
                float xh = (x[c] - m) * rs;
                float dxh = d[c] * w[c];
                s1 += dxh;
                s2 += (double)dxh * xh;
            }
            float m1 = (float)(s1 / C), m2 = (float)(s2 / C);
            for (int c = 0; c < C; c++) {
                float xh = (x[c] - m) * rs;
                di[c] += (d[c] * w[c] - m1 - xh * m2) * rs;
            }
        }
    }
    if (dw || db) {
        int ntask = (C + LN_COLS - 1) / LN_COLS;
        #pragma omp parallel for schedule(static) if ((size_t)N * C >= (1u << 14))
        for (int task = 0; task < ntask; task++) {
            int c0 = task * LN_COLS;
            int c1 = c0 + LN_COLS < C ? c0 + LN_COLS : C;
            double aw[LN_COLS] = {0}, ab[LN_COLS] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C;
                const float *d = dout + (size_t)n * C;
                float m = mean[n], rs = rstd[n];
                for (int c = c0; c < c1; c++) {
                    aw[c - c0] += d[c] * ((x[c] - m) * rs);
                    ab[c - c0] += d[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dw) dw[c] += (float)aw[c - c0];
                if (db) db[c] += (float)ab[c - c0];
            }
        }
    }
}
