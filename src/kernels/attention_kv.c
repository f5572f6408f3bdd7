/* attention_kv.c: causal attention of a decoder's new tokens over its KV
 * cache (inference), one (head, query) row at a time: scores = q K^T * scale
 * over the first T cached positions, softmax, out = p V.
 *
 * Written with 16 independent partial sums and kern_exp's branch-free
 * polynomial so the compiler vectorises each tier's loops (the dot product
 * of a plain loop is a serial reduction, and libm's expf is scalar: together
 * they made a 512-token prompt's attention cost more than its matmuls). */
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

#include <cblas.h>
#include <float.h>
#include <omp.h>


KERN_INLINE void attn_row_body(float *out, const float *q, const float *K, const float *V, size_t stride, int T,
                               int hd, float scale, float *s, const int F)
{
    float mx = -FLT_MAX;
    for (int t = 0; t < T; t++) {
        float d = kern_dot(q, K + (size_t)t * stride, hd, F) * scale;
        s[t] = d;
        mx = d > mx ? d : mx;
    }
    float sum = 0;
    for (int t = 0; t < T; t++) {
        float e = kern_exp(s[t] - mx, F);
        s[t] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < hd; j++) out[j] = 0;
    for (int t = 0; t < T; t++) {
        const float *v = V + (size_t)t * stride;
        float p = s[t] * inv;
        for (int j = 0; j < hd; j++) out[j] = kern_madd(p, v[j], out[j], F);
    }
}

KERN_TIERS(attn_row, (float *out, const float *q, const float *K, const float *V, size_t stride, int T, int hd,
                      float scale, float *s),
           out, q, K, V, stride, T, hd, scale, s)

/* rows of S (nb, T) already scaled: row r keeps its first len0 + r + 1
 * entries (causal), the rest become 0; softmax in place */
KERN_INLINE void causal_softmax_body(float *S, int nb, int T, int len0, const int F)
{
    for (int r = 0; r < nb; r++) {
        float *s = S + (size_t)r * T;
        int len = len0 + r + 1;
        float mx = -FLT_MAX;
        for (int t = 0; t < len; t++) mx = s[t] > mx ? s[t] : mx;
        float sum = 0;
        for (int t = 0; t < len; t++) {
            float e = kern_exp(s[t] - mx, F);
            s[t] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (int t = 0; t < len; t++) s[t] *= inv;
        for (int t = len; t < T; t++) s[t] = 0;
    }
}
KERN_TIERS(causal_softmax, (float *S, int nb, int T, int len0), S, nb, T, len0)

void attention_kv_forward(float *out, const float *q, const float *K, const float *V, int n, int pos, int n_heads,
                          int n_kv_heads, int hd, float *scores, size_t scores_stride)
{
    int G = n_heads / n_kv_heads;
    size_t QD = (size_t)n_heads * hd, KVD = (size_t)n_kv_heads * hd;
    float scale = 1.0f / sqrtf((float)hd);
    if (n >= ATTN_KV_QBLOCK / 2) {
        /* a prompt: blocks of queries, two sgemms each (OpenBLAS runs
         * single-threaded inside our parallel loop) */
        void (*smax)(float *, int, int, int) = KERN_PICK(causal_softmax);
        int nblk = (n + ATTN_KV_QBLOCK - 1) / ATTN_KV_QBLOCK;
        #pragma omp parallel for collapse(2) schedule(dynamic, 1)
        for (int h = 0; h < n_heads; h++)
            for (int b = nblk - 1; b >= 0; b--) {   /* longest blocks first */
                float *S = scores + (size_t)omp_get_thread_num() * scores_stride;
                int i0 = b * ATTN_KV_QBLOCK, nb = n - i0 < ATTN_KV_QBLOCK ? n - i0 : ATTN_KV_QBLOCK;
                int T = pos + i0 + nb;
                size_t ko = (size_t)(h / G) * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, T, hd, scale, q + (size_t)i0 * QD + (size_t)h * hd,
                            (int)QD, K + ko, (int)KVD, 0.0f, S, T);
                smax(S, nb, T, pos + i0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, T, 1.0f, S, T, V + ko, (int)KVD, 0.0f,
                            out + (size_t)i0 * QD + (size_t)h * hd, (int)QD);
            }
        return;
    }
    void (*row)(float *, const float *, const float *, const float *, size_t, int, int, float, float *) = KERN_PICK(attn_row);
    /* the rows of later queries are longer: dynamic scheduling balances them */
    #pragma omp parallel for collapse(2) schedule(dynamic, 1) if (n * n_heads > 1 && (size_t)n * (pos + n) * n_heads > 4096)
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < n; i++) {
            float *s = scores + (size_t)omp_get_thread_num() * scores_stride;
            size_t ko = (size_t)(h / G) * hd;
            row(out + (size_t)i * QD + (size_t)h * hd, q + (size_t)i * QD + (size_t)h * hd, K + ko, V + ko, KVD,
                pos + i + 1, hd, scale, s);
        }
}
