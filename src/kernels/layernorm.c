/* layernorm.c: LayerNorm over the last axis with biased variance (PyTorch).
 * Row statistics are accumulated in double (two passes: the one-pass
 * E[x^2]-E[x]^2 form cancels badly when |mean| >> std, which residual streams
 * do produce), 16 lanes at a time in GCC vectors, so the result depends only
 * on C and the tier. */
#include <math.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

/* Channels per task for the dw/db reductions over rows; a task owns whole
 * columns so sums run in row order whatever the thread count. */
#define LN_COLS 64
#define LN_PAR (1u << 14)

typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

/* sum_c x[c] (+ and, if sq, sum_c (x[c] - m)^2 instead), in double */
KERN_INLINE double row_sum_d(const float *x, int C, double m, const int sq)
{
    v8d a0 = { 0 }, a1 = { 0 };
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        v8f lo, hi;
        __builtin_memcpy(&lo, x + c, sizeof lo);
        __builtin_memcpy(&hi, x + c + 8, sizeof hi);
        v8d dlo = __builtin_convertvector(lo, v8d), dhi = __builtin_convertvector(hi, v8d);
        if (sq) {
            dlo -= m; dhi -= m;
            a0 += dlo * dlo; a1 += dhi * dhi;
        } else {
            a0 += dlo; a1 += dhi;
        }
    }
    a0 += a1;
    const double *l = (const double *)&a0;
    double s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (; c < C; c++) {
        double d = sq ? x[c] - m : x[c];
        s += sq ? d * d : d;
    }
    return s;
}

/* s1 = sum_c dout*w, s2 = sum_c dout*w*xhat, in double */
KERN_INLINE void row_bwd_sums(const float *x, const float *d, const float *w, int C, float m, float rs,
                              double *s1, double *s2)
{
    v8d a0 = { 0 }, a1 = { 0 }, b0 = { 0 }, b1 = { 0 };
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        kern_v16 xv, dv, wv;
        KERN_V16_LOAD(xv, x + c);
        KERN_V16_LOAD(dv, d + c);
        KERN_V16_LOAD(wv, w + c);
        kern_v16 xh = (xv - m) * rs, dxh = dv * wv, p = dxh * xh;
        v8f lo, hi, plo, phi;
        __builtin_memcpy(&lo, &dxh, sizeof lo);
        __builtin_memcpy(&hi, (const float *)&dxh + 8, sizeof hi);
        __builtin_memcpy(&plo, &p, sizeof plo);
        __builtin_memcpy(&phi, (const float *)&p + 8, sizeof phi);
        a0 += __builtin_convertvector(lo, v8d);
        a1 += __builtin_convertvector(hi, v8d);
        b0 += __builtin_convertvector(plo, v8d);
        b1 += __builtin_convertvector(phi, v8d);
    }
    a0 += a1;
    b0 += b1;
    const double *la = (const double *)&a0, *lb = (const double *)&b0;
    double sa = ((la[0] + la[4]) + (la[2] + la[6])) + ((la[1] + la[5]) + (la[3] + la[7]));
    double sb = ((lb[0] + lb[4]) + (lb[2] + lb[6])) + ((lb[1] + lb[5]) + (lb[3] + lb[7]));
    for (; c < C; c++) {
        float xh = (x[c] - m) * rs, dxh = d[c] * w[c];
        sa += dxh;
        sb += (double)(dxh * xh);
    }
    *s1 = sa;
    *s2 = sb;
}

KERN_INLINE void ln_fwd_body(float *out, float *mean, float *rstd, const float *inp, const float *w,
                             const float *b, int n0, int n1, int C, float eps, const int F)
{
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double m = C > 0 ? row_sum_d(x, C, 0.0, 0) / C : 0.0;
        double var = C > 0 ? row_sum_d(x, C, m, 1) / C : 0.0;
        float mf = (float)m;
        float rs = (float)(1.0 / sqrt(var + (double)eps));
        #pragma omp simd
        for (int c = 0; c < C; c++) o[c] = kern_madd((x[c] - mf) * rs, w[c], b[c], F);
        if (mean) mean[n] = mf;
        if (rstd) rstd[n] = rs;
    }
}
KERN_TIERS(ln_fwd, (float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                    int n0, int n1, int C, float eps), out, mean, rstd, inp, w, b, n0, n1, C, eps)

/* out (N,C) = (inp - mean) * rstd * w (C) + b (C); mean (N), rstd (N) saved
 * (either may be NULL when no backward follows). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, float eps)
{
    if (N <= 0) return;
    void (*f)(float *, float *, float *, const float *, const float *, const float *, int, int, int, float) =
        KERN_PICK(ln_fwd);
    if ((size_t)N * C < LN_PAR) { f(out, mean, rstd, inp, w, b, 0, N, C, eps); return; }
    #pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int n0 = (int)((long long)N * t / nt), n1 = (int)((long long)N * (t + 1) / nt);
        if (n1 > n0) f(out, mean, rstd, inp, w, b, n0, n1, C, eps);
    }
}

KERN_INLINE void ln_bwd_dx_body(float *dinp, const float *dout, const float *inp, const float *w,
                                const float *mean, const float *rstd, int n0, int n1, int C, const int F)
{
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C;
        const float *d = dout + (size_t)n * C;
        float *di = dinp + (size_t)n * C;
        float m = mean[n], rs = rstd[n];
        double s1, s2;
        row_bwd_sums(x, d, w, C, m, rs, &s1, &s2);
        float m1 = (float)(s1 / C), m2 = (float)(s2 / C);
        #pragma omp simd
        for (int c = 0; c < C; c++) {
            float xh = (x[c] - m) * rs;
            di[c] += (kern_madd(d[c], w[c], -m1, F) - xh * m2) * rs;
        }
    }
}
KERN_TIERS(ln_bwd_dx, (float *dinp, const float *dout, const float *inp, const float *w, const float *mean,
                       const float *rstd, int n0, int n1, int C), dinp, dout, inp, w, mean, rstd, n0, n1, C)

/* dw/db over all rows for columns [c0, c1), c1 - c0 <= LN_COLS: blocks of
 * LN_ROWS rows summed in float, the block sums in double */
#define LN_ROWS 8
KERN_INLINE void ln_bwd_dw_body(float *dw, float *db, const float *dout, const float *inp, const float *mean,
                                const float *rstd, int N, int C, int c0, int c1, const int F)
{
    double aw[LN_COLS] = { 0 }, ab[LN_COLS] = { 0 };
    int nc = c1 - c0;
    for (int n0 = 0; n0 < N; n0 += LN_ROWS) {
        int n1 = n0 + LN_ROWS < N ? n0 + LN_ROWS : N;
        float fw[LN_COLS] = { 0 }, fb[LN_COLS] = { 0 };
        for (int n = n0; n < n1; n++) {
            const float *x = inp + (size_t)n * C + c0;
            const float *d = dout + (size_t)n * C + c0;
            float m = mean[n], rs = rstd[n];
            #pragma omp simd
            for (int c = 0; c < nc; c++) {
                fw[c] = kern_madd(d[c], (x[c] - m) * rs, fw[c], F);
                fb[c] += d[c];
            }
        }
        #pragma omp simd
        for (int c = 0; c < nc; c++) {
            aw[c] += fw[c];
            ab[c] += fb[c];
        }
    }
    for (int c = 0; c < nc; c++) {
        if (dw) dw[c0 + c] += (float)aw[c];
        if (db) db[c0 + c] += (float)ab[c];
    }
}
KERN_TIERS(ln_bwd_dw, (float *dw, float *db, const float *dout, const float *inp, const float *mean,
                       const float *rstd, int N, int C, int c0, int c1), dw, db, dout, inp, mean, rstd, N, C, c0, c1)

/* dinp (N,C) += ((dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd, dxhat = dout * w
 * dw (C) += sum_n dout * xhat;  db (C) += sum_n dout;   xhat = (inp - mean) * rstd */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C)
{
    if (N <= 0 || C <= 0) return;
    if (!dinp && !dw && !db) return;
    void (*fdx)(float *, const float *, const float *, const float *, const float *, const float *, int, int, int) =
        KERN_PICK(ln_bwd_dx);
    void (*fdw)(float *, float *, const float *, const float *, const float *, const float *, int, int, int, int) =
        KERN_PICK(ln_bwd_dw);
    int ntask = (dw || db) ? (C + LN_COLS - 1) / LN_COLS : 0;
    #pragma omp parallel if ((size_t)N * C >= LN_PAR)
    {
        if (dinp) {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int n0 = (int)((long long)N * t / nt), n1 = (int)((long long)N * (t + 1) / nt);
            if (n1 > n0) fdx(dinp, dout, inp, w, mean, rstd, n0, n1, C);
        }
        /* no barrier needed: the column tasks only read */
        #pragma omp for schedule(dynamic) nowait
        for (int task = 0; task < ntask; task++) {
            int c0 = task * LN_COLS;
            int c1 = c0 + LN_COLS < C ? c0 + LN_COLS : C;
            fdw(dw, db, dout, inp, mean, rstd, N, C, c0, c1);
        }
    }
}
