/* attention.c: the softmax(q k^T / sqrt(hd)) v core of multi-head self-attention,
 * with a key padding mask and, in the training variants, dropout on the
 * probabilities. One OpenMP task per (batch, head) pair: every row a task
 * writes (probs and mask rows, the head's column slice of out/dq/dk/dv) belongs
 * to that pair alone, so there are no races and no dependence on thread count.
 * Hand-written loops rather than sgemm, because BLAS must not be called from
 * inside our parallel region (OpenBLAS threads itself). */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "core/rng.h"

/* The backward keeps the dS rows of ATT_TQ queries on the stack, for up to
 * ATT_KEYS_STACK keys: 4 x 512 floats = 8 KiB per thread, which covers BERT's
 * 512 positions. Longer key ranges take a slower path that recomputes dP
 * instead of storing it. ATT_TQ is wired to 4 in the tile loops below. */
#define ATT_TQ 4
#define ATT_KEYS_STACK 512
_Static_assert(ATT_TQ == 4, "the tile loops in attention_backward spell out 4 rows");
/* Chunk of dropped-out weights the training forward builds on the stack (1 KiB). */
#define ATT_PV_CHUNK 256

static inline float dotf(const float *a, const float *b, int n)
{
    float s = 0.0f;
    /* simd reduction: vectorised, and the order depends only on the build,
     * not on the thread count */
    #pragma omp simd reduction(+:s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpyf(float *y, float a, const float *x, int n)
{
    #pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* out[j] = x . rows[j*ld], j < L. Four rows per pass so each load of x feeds
 * four products (about 1.4x over one dot at a time). */
static inline void dot_rows(float *out, const float *x, const float *rows, size_t ld,
                            int L, int n)
{
    int j = 0;
    for (; j + 4 <= L; j += 4) {
        const float *r0 = rows + (size_t)j * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        #pragma omp simd reduction(+:s0, s1, s2, s3)
        for (int i = 0; i < n; i++) {
            float xi = x[i];
            s0 += xi * r0[i]; s1 += xi * r1[i]; s2 += xi * r2[i]; s3 += xi * r3[i];
        }
        out[j] = s0; out[j + 1] = s1; out[j + 2] = s2; out[j + 3] = s3;
    }
    for (; j < L; j++) out[j] = dotf(x, rows + (size_t)j * ld, n);
}

/* y += sum_{j<L} a[j] rows[j*ld]; four rows per pass so y is loaded and stored
 * once per four rows. */
static inline void axpy_rows(float *y, const float *a, const float *rows, size_t ld,
                             int L, int n)
{
    int j = 0;
    for (; j + 4 <= L; j += 4) {
        const float *r0 = rows + (size_t)j * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
        float a0 = a[j], a1 = a[j + 1], a2 = a[j + 2], a3 = a[j + 3];
        #pragma omp simd
        for (int i = 0; i < n; i++)
            y[i] += a0 * r0[i] + a1 * r1[i] + a2 * r2[i] + a3 * r3[i];
    }
    for (; j < L; j++) axpyf(y, a[j], rows + (size_t)j * ld, n);
}

static inline int key_len(const int *lens, int b, int T)
{
    int L = lens ? lens[b] : T;
    return L < 0 ? 0 : (L > T ? T : L);
}

/* Dropout decision for flat probs index idx. splitmix64 is counter-based: the
 * idx-th draw of a peftc_rng whose state is seed needs only seed + idx*gamma,
 * so any thread can draw any element and the mask is the same for every
 * thread count (and equals sequential draws from {state = seed}). */
static inline uint8_t attn_keep(uint64_t seed, size_t idx, float p)
{
    peftc_rng r = { seed + (uint64_t)idx * 0x9E3779B97F4A7C15ull };
    return peftc_rng_uniform(&r) >= p;
}

/* Weight factor of a kept/dropped probability: 1 without dropout. */
static inline float keepw(const uint8_t *m, int j, float invk)
{
    return m ? (m[j] ? invk : 0.0f) : 1.0f;
}

/* Shared forward; mask NULL means no dropout (p and seed unused). */
static void attention_fwd(float *out, float *probs, uint8_t *mask, const float *q,
                          const float *k, const float *v, const int *lens,
                          int B, int T, int C, int NH, float p, uint64_t seed)
{
    if (B <= 0 || T <= 0 || NH <= 0) return;
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    float invk = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    #pragma omp parallel for collapse(2) schedule(static) \
        if ((size_t)B * NH * T * T * hd >= (1u << 16))
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            int L = key_len(lens, b, T);
            const float *kb = k + (size_t)b * T * C + (size_t)h * hd;
            const float *vb = v + (size_t)b * T * C + (size_t)h * hd;
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)b * T + t) * C + (size_t)h * hd;
                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hd;
                size_t row = (((size_t)b * NH + h) * T + t) * T;
                float *pr = probs + row;
                /* The probs row doubles as the scores buffer: no scratch needed. */
                dot_rows(pr, qt, kb, (size_t)C, L, hd);
                float mx = -INFINITY;
                for (int j = 0; j < L; j++) {
                    pr[j] *= scale;
                    if (pr[j] > mx) mx = pr[j];
                }
                float sum = 0.0f;
                for (int j = 0; j < L; j++) {
                    float e = expf(pr[j] - mx);
                    pr[j] = e;
                    sum += e;
                }
                float inv = L > 0 ? 1.0f / sum : 0.0f;
                for (int j = 0; j < L; j++) pr[j] *= inv;
                for (int j = L; j < T; j++) pr[j] = 0.0f;
                memset(o, 0, (size_t)hd * sizeof(float));
                if (!mask) {
                    axpy_rows(o, pr, vb, (size_t)C, L, hd);
                    continue;
                }
                /* probs must stay undropped for the backward, so the dropped
                 * weights are built a chunk at a time on the stack */
                uint8_t *m = mask + row;
                for (int j = 0; j < L; j++) m[j] = p <= 0.0f ? 1 : p >= 1.0f ? 0 : attn_keep(seed, row + j, p);
                for (int j = L; j < T; j++) m[j] = 0;
                float w[ATT_PV_CHUNK];
                for (int j0 = 0; j0 < L; j0 += ATT_PV_CHUNK) {
                    int jn = L - j0 < ATT_PV_CHUNK ? L - j0 : ATT_PV_CHUNK;
                    for (int j = 0; j < jn; j++) w[j] = m[j0 + j] ? pr[j0 + j] * invk : 0.0f;
                    axpy_rows(o, w, vb + (size_t)j0 * C, (size_t)C, jn, hd);
                }
            }
        }
    }
}

/* q, k, v, out (B,T,C), C = NH*hd, head h in columns [h*hd, (h+1)*hd);
 * probs (B,NH,T,T): probs[b,h,t,j] = softmax_j(q_t . k_j / sqrt(hd)) over j < lens[b],
 * exactly 0 for j >= lens[b]; out[b,t,h] = sum_j probs[b,h,t,j] v_j.
 * lens NULL means no padding. A sequence with lens[b] == 0 gets zero rows. */
void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, const int *lens, int B, int T, int C, int NH)
{
    attention_fwd(out, probs, NULL, q, k, v, lens, B, T, C, NH, 0.0f, 0);
}

/* As attention_forward, plus mask (B,NH,T,T): mask[i] = 1 (keep) iff the i-th
 * draw (i the flat index) of a peftc_rng with state = seed is >= p, for keys
 * j < lens[b]; 0 for j >= lens[b]. probs stays undropped;
 * out[b,t,h] = sum_j probs * mask / (1-p) * v_j. p <= 0 keeps all, p >= 1 drops all. */
void attention_forward_train(float *out, float *probs, uint8_t *mask, const float *q,
                             const float *k, const float *v, const int *lens,
                             int B, int T, int C, int NH, float p, uint64_t seed)
{
    attention_fwd(out, probs, mask, q, k, v, lens, B, T, C, NH, p, seed);
}

/* Backward of one (batch, head) with more than ATT_KEYS_STACK keys: one query
 * at a time, a first pass over the keys for D_t and a second that recomputes
 * dP_tj. Pointers are already offset to the head; NULL gradients are skipped. */
static void attention_backward_long(float *dq, float *dk, float *dv, const float *dout,
                                    const float *probs, const uint8_t *mask, float invk,
                                    const float *q, const float *k, const float *v,
                                    int L, int T, int C, int hd, float scale)
{
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * T;
        const uint8_t *m = mask ? mask + (size_t)t * T : NULL;
        const float *dout_t = dout + (size_t)t * C, *qt = q + (size_t)t * C;
        if (dv)
            for (int j = 0; j < L; j++) axpyf(dv + (size_t)j * C, p[j] * keepw(m, j, invk), dout_t, hd);
        if (!dq && !dk) continue;
        float *dqt = dq ? dq + (size_t)t * C : NULL;
        double D = 0.0;
        for (int j = 0; j < L; j++)
            D += (double)(p[j] * keepw(m, j, invk)) * dotf(dout_t, v + (size_t)j * C, hd);
        float Df = (float)D;
        for (int j = 0; j < L; j++) {
            float ds = p[j] * (keepw(m, j, invk) * dotf(dout_t, v + (size_t)j * C, hd) - Df) * scale;
            if (dqt) axpyf(dqt, ds, k + (size_t)j * C, hd);
            if (dk) axpyf(dk + (size_t)j * C, ds, qt, hd);
        }
    }
}

/* Shared backward. With P = probs, W = P * mask / (1-p) the weights the
 * forward applied to v (W = P without dropout), dW_tj = dout_t . v_j and
 * D_t = sum_j W_tj dW_tj:
 * dv_j += sum_t W_tj dout_t
 * dS_tj = P_tj (mask_tj / (1-p) * dW_tj - D_t) / sqrt(hd)
 * dq_t += sum_j dS_tj k_j;   dk_j += sum_t dS_tj q_t
 * Only keys j < lens[b] take part (P is 0 elsewhere). All (B,T,C).
 * Queries go ATT_TQ at a time so each dk_j / dv_j row (strided by C, hence
 * poorly cached) is read and written once per tile rather than once per query. */
static void attention_bwd(float *dq, float *dk, float *dv, const float *dout,
                          const float *probs, const uint8_t *mask, float invk,
                          const float *q, const float *k, const float *v,
                          const int *lens, int B, int T, int C, int NH)
{
    if (B <= 0 || T <= 0 || NH <= 0) return;
    if (!dq && !dk && !dv) return;
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    #pragma omp parallel for collapse(2) schedule(static) \
        if ((size_t)B * NH * T * T * hd >= (1u << 16))
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            int L = key_len(lens, b, T);
            size_t off = (size_t)b * T * C + (size_t)h * hd;
            const float *qb = q + off, *kb = k + off, *vb = v + off, *db = dout + off;
            const float *pb = probs + ((size_t)b * NH + h) * T * T;
            const uint8_t *mb = mask ? mask + ((size_t)b * NH + h) * T * T : NULL;
            float *dqb = dq ? dq + off : NULL, *dkb = dk ? dk + off : NULL;
            float *dvb = dv ? dv + off : NULL;
            if (L > ATT_KEYS_STACK) {
                attention_backward_long(dqb, dkb, dvb, db, pb, mb, invk, qb, kb, vb, L, T, C, hd, scale);
                continue;
            }
            /* dS rows of the current query tile (dP first, then dS in place) */
            float ds[ATT_TQ][ATT_KEYS_STACK];
            for (int t0 = 0; t0 < T; t0 += ATT_TQ) {
                int tn = T - t0 < ATT_TQ ? T - t0 : ATT_TQ;
                const float *p[ATT_TQ], *dt[ATT_TQ], *qt[ATT_TQ];
                const uint8_t *m[ATT_TQ];
                for (int r = 0; r < ATT_TQ; r++) {
                    /* a short last tile repeats its last row with weight 0 below */
                    int t = t0 + (r < tn ? r : tn - 1);
                    p[r] = pb + (size_t)t * T;
                    m[r] = mb ? mb + (size_t)t * T : NULL;
                    dt[r] = db + (size_t)t * C;
                    qt[r] = qb + (size_t)t * C;
                }
                if (dvb) {
                    for (int j = 0; j < L; j++) {
                        float w[ATT_TQ];
                        for (int r = 0; r < ATT_TQ; r++) w[r] = r < tn ? p[r][j] * keepw(m[r], j, invk) : 0.0f;
                        float *y = dvb + (size_t)j * C;
                        #pragma omp simd
                        for (int i = 0; i < hd; i++)
                            y[i] += w[0] * dt[0][i] + w[1] * dt[1][i] + w[2] * dt[2][i] + w[3] * dt[3][i];
                    }
                }
                if (!dqb && !dkb) continue;
                for (int r = 0; r < tn; r++) {
                    float *d = ds[r];
                    dot_rows(d, dt[r], vb, (size_t)C, L, hd);
                    double D = 0.0;
                    for (int j = 0; j < L; j++) D += (double)(p[r][j] * keepw(m[r], j, invk)) * d[j];
                    float Df = (float)D;
                    for (int j = 0; j < L; j++) d[j] = p[r][j] * (keepw(m[r], j, invk) * d[j] - Df) * scale;
                    if (dqb) axpy_rows(dqb + (size_t)(t0 + r) * C, d, kb, (size_t)C, L, hd);
                }
                if (dkb) {
                    for (int j = 0; j < L; j++) {
                        float w[ATT_TQ];
                        for (int r = 0; r < ATT_TQ; r++) w[r] = r < tn ? ds[r][j] : 0.0f;
                        float *y = dkb + (size_t)j * C;
                        #pragma omp simd
                        for (int i = 0; i < hd; i++)
                            y[i] += w[0] * qt[0][i] + w[1] * qt[1][i] + w[2] * qt[2][i] + w[3] * qt[3][i];
                    }
                }
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                        const float *probs, const float *q, const float *k,
                        const float *v, const int *lens, int B, int T, int C, int NH)
{
    attention_bwd(dq, dk, dv, dout, probs, NULL, 1.0f, q, k, v, lens, B, T, C, NH);
}

/* Backward of attention_forward_train given its probs and mask (same p). */
void attention_backward_train(float *dq, float *dk, float *dv, const float *dout,
                              const float *probs, const uint8_t *mask, const float *q,
                              const float *k, const float *v, const int *lens,
                              int B, int T, int C, int NH, float p)
{
    if (p >= 1.0f) return;  /* everything was dropped: out did not depend on q, k, v */
    if (p <= 0.0f) mask = NULL;
    attention_bwd(dq, dk, dv, dout, probs, mask, 1.0f / (1.0f - p), q, k, v, lens, B, T, C, NH);
}
