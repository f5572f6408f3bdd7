/* layernorm.c: LayerNorm over the last axis with biased variance (PyTorch).
 * Row statistics are accumulated in double (two passes: the one-pass
 * E[x^2]-E[x]^2 form cancels badly when |mean| >> std, which residual streams
 * do produce), 16 lanes at a time in GCC vectors, so the result depends only
 * on C and the tier. */
#include <math.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"
#if KERN_X86
#include <immintrin.h>
#endif

/* Channels per task for the dw/db reductions over rows; a task owns whole
 * columns so sums run in row order whatever the thread count. */
#define LN_COLS 64
#define LN_PAR (1u << 14)

#if KERN_X86
/* AVX2 versions of the two row reductions below: GCC -O2 keeps the generic
 * code's double partial sums in memory for that target. 16 partial sums in
 * four ymm, combined in a fixed order. */
KERN_AVX2 static double row_sum_d_avx2(const float *x, int C, double m, int sq)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, vm = _mm256_set1_pd(m);
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c)), vm);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c + 4)), vm);
        __m256d d2 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c + 8)), vm);
        __m256d d3 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c + 12)), vm);
        if (sq) {
            a0 = _mm256_fmadd_pd(d0, d0, a0); a1 = _mm256_fmadd_pd(d1, d1, a1);
            a2 = _mm256_fmadd_pd(d2, d2, a2); a3 = _mm256_fmadd_pd(d3, d3, a3);
        } else {
            a0 = _mm256_add_pd(a0, d0); a1 = _mm256_add_pd(a1, d1);
            a2 = _mm256_add_pd(a2, d2); a3 = _mm256_add_pd(a3, d3);
        }
    }
    __m256d a = _mm256_add_pd(_mm256_add_pd(a0, a2), _mm256_add_pd(a1, a3));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; c < C; c++) {
        double d = (double)x[c] - m;
        s += sq ? d * d : d;
    }
    return s;
}

KERN_AVX2 static void row_bwd_sums_avx2(const float *x, const float *d, const float *w, int C, float m,
                                        float rs, double *s1, double *s2)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
    __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(rs);
    int c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm), vr);
        __m256 dxh = _mm256_mul_ps(_mm256_loadu_ps(d + c), _mm256_loadu_ps(w + c));
        __m256 p = _mm256_mul_ps(dxh, xh);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(dxh)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(dxh, 1)));
        b0 = _mm256_add_pd(b0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
        b1 = _mm256_add_pd(b1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    __m256d a = _mm256_add_pd(a0, a1), b = _mm256_add_pd(b0, b1);
    __m128d ha = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    __m128d hb = _mm_add_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd(b, 1));
    double sa = _mm_cvtsd_f64(_mm_add_sd(ha, _mm_unpackhi_pd(ha, ha)));
    double sb = _mm_cvtsd_f64(_mm_add_sd(hb, _mm_unpackhi_pd(hb, hb)));
    for (; c < C; c++) {
        float xh = (x[c] - m) * rs, dxh = d[c] * w[c];
        sa += dxh;
        sb += (double)(dxh * xh);
    }
    *s1 = sa;
    *s2 = sb;
}
#endif

/* sum_c x[c] (or, if sq, sum_c (x[c] - m)^2), in double: KERN_LANES partial sums
 * combined in a fixed order */
KERN_INLINE double row_sum_d(const float *x, int C, double m, const int sq, const int F)
{
#if KERN_X86
    if (F == 1) return row_sum_d_avx2(x, C, m, sq);
#endif
    const int W = KERN_LANES(F);
    double acc[16] = { 0 }, s;
    int c = 0;
    for (; c + W <= C; c += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) {
            double d = (double)x[c + l] - m;
            acc[l] += sq ? d * d : d;
        }
    }
    KERN_ACC_COMBINE(acc, W, s);
    for (; c < C; c++) {
        double d = (double)x[c] - m;
        s += sq ? d * d : d;
    }
    return s;
}

/* s1 = sum_c dout*w, s2 = sum_c dout*w*xhat, in double */
KERN_INLINE void row_bwd_sums(const float *x, const float *d, const float *w, int C, float m, float rs,
                              double *s1, double *s2, const int F)
{
#if KERN_X86
    if (F == 1) {
        row_bwd_sums_avx2(x, d, w, C, m, rs, s1, s2);
        return;
    }
#endif
    const int W = KERN_LANES(F);
    double a[16] = { 0 }, b[16] = { 0 }, sa, sb;
    int c = 0;
    for (; c + W <= C; c += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) {
            float xh = (x[c + l] - m) * rs, dxh = d[c + l] * w[c + l];
            a[l] += (double)dxh;
            b[l] += (double)(dxh * xh);
        }
    }
    KERN_ACC_COMBINE(a, W, sa);
    KERN_ACC_COMBINE(b, W, sb);
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
        double m = C > 0 ? row_sum_d(x, C, 0.0, 0, F) / C : 0.0;
        double var = C > 0 ? row_sum_d(x, C, m, 1, F) / C : 0.0;
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

KERN_INLINE void ln_apply_body(float *out, const float *inp, const float *mean, const float *rstd, const float *w,
                                const float *b, int n0, int n1, int C, const int F)
{
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float mf = mean[n], rs = rstd[n];
        /* the expression of ln_fwd_body, so the result is the same bits */
        #pragma omp simd
        for (int c = 0; c < C; c++) o[c] = kern_madd((x[c] - mf) * rs, w[c], b[c], F);
    }
}
KERN_TIERS(ln_apply, (float *out, const float *inp, const float *mean, const float *rstd, const float *w,
                      const float *b, int n0, int n1, int C), out, inp, mean, rstd, w, b, n0, n1, C)

void layernorm_apply(float *out, const float *inp, const float *mean, const float *rstd,
                     const float *w, const float *b, int N, int C)
{
    if (N <= 0) return;
    void (*f)(float *, const float *, const float *, const float *, const float *, const float *, int, int, int) =
        KERN_PICK(ln_apply);
    if ((size_t)N * C < LN_PAR) { f(out, inp, mean, rstd, w, b, 0, N, C); return; }
    #pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int n0 = (int)((long long)N * t / nt), n1 = (int)((long long)N * (t + 1) / nt);
        if (n1 > n0) f(out, inp, mean, rstd, w, b, n0, n1, C);
    }
}

KERN_INLINE void ln_bwd_dx_body(float *dinp, const float *dout, const float *inp, const float *w,
                                const float *mean, const float *rstd, int n0, int n1, int C, int acc, const int F)
{
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C;
        const float *d = dout + (size_t)n * C;
        float *di = dinp + (size_t)n * C;
        float m = mean[n], rs = rstd[n];
        double s1, s2;
        row_bwd_sums(x, d, w, C, m, rs, &s1, &s2, F);
        float m1 = (float)(s1 / C), m2 = (float)(s2 / C);
        #pragma omp simd
        for (int c = 0; c < C; c++) {
            float xh = (x[c] - m) * rs;
            float g = (kern_madd(d[c], w[c], -m1, F) - xh * m2) * rs;
            di[c] = acc ? di[c] + g : g;
        }
    }
}
KERN_TIERS(ln_bwd_dx, (float *dinp, const float *dout, const float *inp, const float *w, const float *mean,
                       const float *rstd, int n0, int n1, int C, int acc), dinp, dout, inp, w, mean, rstd, n0, n1, C, acc)

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
                        const float *rstd, int N, int C, int accumulate)
{
    if (N <= 0 || C <= 0) return;
    if (!dinp && !dw && !db) return;
    void (*fdx)(float *, const float *, const float *, const float *, const float *, const float *, int, int, int, int) =
        KERN_PICK(ln_bwd_dx);
    void (*fdw)(float *, float *, const float *, const float *, const float *, const float *, int, int, int, int) =
        KERN_PICK(ln_bwd_dw);
    int ntask = (dw || db) ? (C + LN_COLS - 1) / LN_COLS : 0;
    #pragma omp parallel if ((size_t)N * C >= LN_PAR)
    {
        if (dinp) {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int n0 = (int)((long long)N * t / nt), n1 = (int)((long long)N * (t + 1) / nt);
            if (n1 > n0) fdx(dinp, dout, inp, w, mean, rstd, n0, n1, C, accumulate);
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
