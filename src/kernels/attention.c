/* attention.c: the softmax(q k^T / sqrt(hd)) v core of multi-head self-attention,
 * with a key padding mask, optionally a prefix of keys every query attends
 * (prefix tuning, P-tuning v2, MAM, UniPELT: the plain kernels are the
 * P = 0 case of the same passes) and, in the training variants, dropout on
 * the probabilities. One OpenMP task per (batch, head) pair: every row a task
 * writes (probs and mask rows, the head's column slice of out/dq/dk/dv) belongs
 * to that pair alone (each sequence has its own copy of the prefix rows in k
 * and v, so also of their gradients), so there are no races and no dependence
 * on thread count (or on which thread runs which head: the schedule is
 * dynamic, which also balances padded sequences).
 *
 * BLAS must not be called from inside our parallel region (OpenBLAS threads
 * itself), and per-head matrices are small (64 x 64 x 32 for BERT at T = 64).
 * cblas_sgemm per head, called serially, takes about as long for the products
 * alone as the kernels below take for everything on one core, and cannot use
 * the second (bench/kernels_bench.c measures both), so the products are ours:
 * - AVX-512 / AVX2 tiers: every product of a head (q k^T, P v, dout v^T,
 *   W^T dout, dS k, dS^T q) is a small GEMM on a register-blocked micro-kernel
 *   (8 x 32 in zmm, 6 x 16 in ymm) reading its operands in place through
 *   strides; only k^T and v^T are packed, a panel at a time on the stack. The
 *   softmax, dropout and dS rows are vectorised with in-register reductions.
 *   Queries go in blocks of up to max(64, 32768 / (P+T)) rows whose dropped
 *   weights and dP live in a per-thread scratch that is kept between calls.
 *   A head's rows are C floats apart, so they are prefetched when the head
 *   starts.
 * - portable tier (and the fall-back should the scratch not be allocated):
 *   hand loops over the rows of the head. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"
#if KERN_X86
#include <immintrin.h>
#endif
#include "core/rng.h"

#define GAMMA 0x9E3779B97F4A7C15ull

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
    peftc_rng r = { seed + (uint64_t)idx * GAMMA };
    return peftc_rng_uniform(&r) >= p;
}

/* Weight factor of a kept/dropped probability: 1 without dropout. */
static inline float keepw(const uint8_t *m, int j, float invk)
{
    return m ? (m[j] ? invk : 0.0f) : 1.0f;
}

/* Shape of a call. Queries (q, out, dout, dq) are (B,T,C); keys and values
 * (k, v, dk, dv) are (B,Tk,C), Tk = P + T, of which key j is attended iff
 * j < P + lens[b]; probs and mask are (B,NH,T,Tk). */
typedef struct {
    int T, P, Tk, C, NH, hd;
    float scale;   /* 1 / sqrt(hd) */
} att_dims;

static att_dims att_make_dims(int T, int P, int C, int NH)
{
    att_dims d = { T, P, P + T, C, NH, C / NH, 1.0f / sqrtf((float)(C / NH)) };
    return d;
}

/* keys sequence b attends: the prefix, then its first lens[b] positions */
static inline int att_keys(const att_dims *d, const int *lens, int b)
{
    return d->P + key_len(lens, b, d->T);
}

/* offsets of head h of sequence b in the query-side and key-side tensors,
 * and the flat probs row of its query 0 */
static inline size_t att_qoff(const att_dims *d, int b, int h)
{
    return (size_t)b * d->T * d->C + (size_t)h * d->hd;
}
static inline size_t att_koff(const att_dims *d, int b, int h)
{
    return (size_t)b * d->Tk * d->C + (size_t)h * d->hd;
}
static inline size_t att_prow(const att_dims *d, int b, int h)
{
    return ((size_t)b * d->NH + h) * d->T;
}

/* ================================================================ portable */

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

/* Forward of head (b, h) attending L keys, hand loops; mask NULL means no dropout. */
static void fwd_head_portable(const att_dims *d, float *out, float *probs, uint8_t *mask,
                              const float *q, const float *k, const float *v, int L, int b, int h,
                              float p, uint64_t seed)
{
    int hd = d->hd, Tk = d->Tk;
    size_t C = (size_t)d->C;
    float invk = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const float *qb = q + att_qoff(d, b, h), *kb = k + att_koff(d, b, h), *vb = v + att_koff(d, b, h);
    float *ob = out + att_qoff(d, b, h);
    size_t prow = att_prow(d, b, h);
    for (int t = 0; t < d->T; t++) {
        const float *qt = qb + (size_t)t * C;
        float *o = ob + (size_t)t * C;
        size_t row = (prow + t) * Tk;
        float *pr = probs + row;
        /* The probs row doubles as the scores buffer: no scratch needed. */
        dot_rows(pr, qt, kb, C, L, hd);
        float mx = -INFINITY;
        for (int j = 0; j < L; j++) {
            pr[j] *= d->scale;
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
        for (int j = L; j < Tk; j++) pr[j] = 0.0f;
        memset(o, 0, (size_t)hd * sizeof(float));
        if (!mask) {
            axpy_rows(o, pr, vb, C, L, hd);
            continue;
        }
        /* probs must stay undropped for the backward, so the dropped
         * weights are built a chunk at a time on the stack */
        uint8_t *m = mask + row;
        for (int j = 0; j < L; j++) m[j] = p <= 0.0f ? 1 : p >= 1.0f ? 0 : attn_keep(seed, row + j, p);
        for (int j = L; j < Tk; j++) m[j] = 0;
        float w[ATT_PV_CHUNK];
        for (int j0 = 0; j0 < L; j0 += ATT_PV_CHUNK) {
            int jn = L - j0 < ATT_PV_CHUNK ? L - j0 : ATT_PV_CHUNK;
            for (int j = 0; j < jn; j++) w[j] = m[j0 + j] ? pr[j0 + j] * invk : 0.0f;
            axpy_rows(o, w, vb + (size_t)j0 * C, C, jn, hd);
        }
    }
}

/* Backward of one (batch, head) attending more than ATT_KEYS_STACK keys: one
 * query at a time, a first pass over the keys for D_t and a second that
 * recomputes dP_tj. Pointers are already offset to the head (probs and mask
 * rows Tk apart); NULL gradients are skipped. */
static void attention_backward_long(const att_dims *d, float *dq, float *dk, float *dv, const float *dout,
                                    const float *probs, const uint8_t *mask, float invk,
                                    const float *q, const float *k, const float *v, int L)
{
    int hd = d->hd;
    size_t C = (size_t)d->C, Tk = (size_t)d->Tk;
    for (int t = 0; t < d->T; t++) {
        const float *p = probs + (size_t)t * Tk;
        const uint8_t *m = mask ? mask + (size_t)t * Tk : NULL;
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
            float ds = p[j] * (keepw(m, j, invk) * dotf(dout_t, v + (size_t)j * C, hd) - Df) * d->scale;
            if (dqt) axpyf(dqt, ds, k + (size_t)j * C, hd);
            if (dk) axpyf(dk + (size_t)j * C, ds, qt, hd);
        }
    }
}

/* Backward of head (b, h) attending L keys, hand loops. Queries go ATT_TQ at
 * a time so each dk_j / dv_j row (strided by C, hence poorly cached) is read
 * and written once per tile rather than once per query. */
static void bwd_head_portable(const att_dims *d, float *dq, float *dk, float *dv, const float *dout,
                              const float *probs, const uint8_t *mask, float invk,
                              const float *q, const float *k, const float *v, int L, int b, int h)
{
    int hd = d->hd, T = d->T;
    size_t C = (size_t)d->C, Tk = (size_t)d->Tk;
    size_t qo = att_qoff(d, b, h), ko = att_koff(d, b, h);
    const float *qb = q + qo, *kb = k + ko, *vb = v + ko, *db = dout + qo;
    const float *pb = probs + att_prow(d, b, h) * Tk;
    const uint8_t *mb = mask ? mask + att_prow(d, b, h) * Tk : NULL;
    float *dqb = dq ? dq + qo : NULL, *dkb = dk ? dk + ko : NULL;
    float *dvb = dv ? dv + ko : NULL;
    if (L > ATT_KEYS_STACK) {
        attention_backward_long(d, dqb, dkb, dvb, db, pb, mb, invk, qb, kb, vb, L);
        return;
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
            p[r] = pb + (size_t)t * Tk;
            m[r] = mb ? mb + (size_t)t * Tk : NULL;
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
            float *s = ds[r];
            dot_rows(s, dt[r], vb, C, L, hd);
            double D = 0.0;
            for (int j = 0; j < L; j++) D += (double)(p[r][j] * keepw(m[r], j, invk)) * s[j];
            float Df = (float)D;
            for (int j = 0; j < L; j++) s[j] = p[r][j] * (keepw(m[r], j, invk) * s[j] - Df) * d->scale;
            if (dqb) axpy_rows(dqb + (size_t)(t0 + r) * C, s, kb, C, L, hd);
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

/* ============================================================ small GEMMs */

/* A micro-kernel computes one tile of at most MR x NR of
 *   C[i*ldc + n] (+)= sum_{k<K} A[i*ars + k*acs] * B[k*ldb + n]
 * (i < mr, n < nr; += if acc, else =). A is read through any strides (so it
 * may be a transposed view); B rows are contiguous. */
typedef void (*att_uk)(int mr, int nr, int K, const float *A, size_t ars, size_t acs,
                       const float *B, size_t ldb, float *C, size_t ldc, int acc);
/* packs B[k*bks + n*bns] (k < kc, n < nr) into P[k*ldp + n] */
typedef void (*att_pack)(float *P, size_t ldp, const float *B, size_t bks, size_t bns, int kc, int nr);

/* depth of a packed panel: ATT_KC x NR floats on the stack (16 KiB for NR = 32) */
#define ATT_KC 128
#define ATT_NR_MAX 32

#if KERN_X86
/* ---- AVX-512: 8 x 32 tile in 16 zmm accumulators */

KERN_INLINE KERN_AVX512 void uk512_body(const int MR, const int NV, int K, const float *A,
                                         size_t ars, size_t acs, const float *B, size_t ldb,
                                         __mmask16 m0, __mmask16 m1, float *C, size_t ldc, int acc)
{
    __m512 c0[8], c1[8];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
        c0[i] = acc ? _mm512_maskz_loadu_ps(m0, C + i * ldc) : _mm512_setzero_ps();
        if (NV > 1) c1[i] = acc ? _mm512_maskz_loadu_ps(m1, C + i * ldc + 16) : _mm512_setzero_ps();
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + (size_t)k * acs;
        __m512 b0 = _mm512_maskz_loadu_ps(m0, B);
        __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(m1, B + 16) : b0;
        B += ldb;
        _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[i * ars]);
            c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
            if (NV > 1) c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(C + i * ldc, m0, c0[i]);
        if (NV > 1) _mm512_mask_storeu_ps(C + i * ldc + 16, m1, c1[i]);
    }
}

#define UK512_CASES(NV)                                                                     \
    switch (mr) {                                                                           \
    case 8: uk512_body(8, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 7: uk512_body(7, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 6: uk512_body(6, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 5: uk512_body(5, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 4: uk512_body(4, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 3: uk512_body(3, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    case 2: uk512_body(2, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;         \
    default: uk512_body(1, NV, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;        \
    }

KERN_AVX512 static void uk_avx512(int mr, int nr, int K, const float *A, size_t ars, size_t acs,
                                  const float *B, size_t ldb, float *C, size_t ldc, int acc)
{
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    if (nr > 16) { UK512_CASES(2) } else { UK512_CASES(1) }
}

KERN_AVX512 static void pack_avx512(float *P, size_t ldp, const float *B, size_t bks, size_t bns,
                                    int kc, int nr)
{
    if (bks != 1 || (size_t)nr * bns >= (1u << 30)) {
        for (int k = 0; k < kc; k++)
            for (int n = 0; n < nr; n++) P[(size_t)k * ldp + n] = B[(size_t)k * bks + (size_t)n * bns];
        return;
    }
    /* column n of the panel is a contiguous run of B: gather 16 columns at once */
    __m512i idx0 = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32((int)bns));
    __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32((int)(16 * bns)));
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    for (int k = 0; k < kc; k++) {
        __m512 g0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, idx0, B + k, 4);
        _mm512_mask_storeu_ps(P + (size_t)k * ldp, m0, g0);
        if (nr > 16) {
            __m512 g1 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, idx1, B + k, 4);
            _mm512_mask_storeu_ps(P + (size_t)k * ldp + 16, m1, g1);
        }
    }
}

/* ---- AVX-512 row operations (masked tails, in-register reductions) */

KERN_INLINE KERN_AVX512 __mmask16 tail16(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* exp on 16 lanes: kern_exp's reduction and polynomial, with 2^n applied by
 * vscalefps; x < -87.33654 gives 0 (no subnormals), overflow gives +inf,
 * NaN stays NaN. */
KERN_INLINE KERN_AVX512 __m512 exp512(__m512 x)
{
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(normal, y, n);
}

/* Row operations load and store whole vectors wherever they lie inside the
 * row's allocation (cap entries: Tk for probs rows, the padded width for
 * scratch rows) and mask lanes >= L in registers: on this hardware a load
 * with a partial mask of data outside L1 costs ~5x a plain one. */
KERN_INLINE KERN_AVX512 __m512 ld16(const float *p, int j, int cap)
{
    return j + 16 <= cap ? _mm512_loadu_ps(p + j) : _mm512_maskz_loadu_ps(tail16(cap - j), p + j);
}
KERN_INLINE KERN_AVX512 void st16(float *p, int j, int cap, __m512 v)
{
    if (j + 16 <= cap) _mm512_storeu_ps(p + j, v);
    else _mm512_mask_storeu_ps(p + j, tail16(cap - j), v);
}

/* Rows of up to ATT_REG_NV vectors (128 keys: a prefix of 20 plus 64
 * positions, or up to 128 positions) are held in registers: one load and one
 * store per vector instead of a pass over memory per step. */
#define ATT_REG_NV 8
_Static_assert(ATT_REG_NV == 8, "softmax_rows_avx512 and ds_rows_avx512 spell out 8 cases");

/* x[0] op x[1] op ... x[NV-1] in a fixed pairwise tree (NV <= 8): pairs,
 * pairs of pairs, then the two halves. For NV <= 4 this is (x0 + x1) + (x2 +
 * x3) with the absent terms left out, i.e. bit for bit the sum with zeros. */
KERN_INLINE KERN_AVX512 __m512 tree8(const int NV, const int MAX, const __m512 *x)
{
    __m512 a[4], b[2];
    int na = 0, nb = 0;
    _Pragma("GCC unroll 4")
    for (int i = 0; i < NV; i += 2)
        a[na++] = i + 1 >= NV ? x[i] : MAX ? _mm512_max_ps(x[i], x[i + 1]) : _mm512_add_ps(x[i], x[i + 1]);
    _Pragma("GCC unroll 2")
    for (int i = 0; i < na; i += 2)
        b[nb++] = i + 1 >= na ? a[i] : MAX ? _mm512_max_ps(a[i], a[i + 1]) : _mm512_add_ps(a[i], a[i + 1]);
    return nb == 1 ? b[0] : MAX ? _mm512_max_ps(b[0], b[1]) : _mm512_add_ps(b[0], b[1]);
}

/* softmax rows of 16 (NV-1) < L <= 16 NV keys in NV registers. A row of Tk
 * >= 16 entries that are not whole vectors ends with a plain store of its
 * last 16 entries (overlapping the vector before) instead of a masked store:
 * the next row's first load touches the 64 bytes a masked store at the end of
 * this row spans, and must wait for that store to reach the cache (rows of 84
 * entries, a prefix of 20 at T = 64, took twice as long). */
KERN_INLINE KERN_AVX512 void softmax_reg(const int NV, float *S, size_t ld, int rows, int L, int Tk, float scale)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY), vs = _mm512_set1_ps(scale), zero = _mm512_setzero_ps();
    const int nfull = Tk / 16, tail = Tk % 16;
    /* lanes tail..tail+15 of two adjacent vectors: the row's last 16 entries */
    const __m512i win = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(tail));
    __mmask16 m[ATT_REG_NV];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < NV; i++) m[i] = tail16(L - 16 * i);
    for (int r = 0; r < rows; r++) {
        float *p = S + (size_t)r * ld;
        __m512 x[ATT_REG_NV];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NV; i++) x[i] = _mm512_mask_mov_ps(ninf, m[i], ld16(p, 16 * i, Tk));
        __m512 nms = _mm512_set1_ps(-_mm512_reduce_max_ps(tree8(NV, 1, x)) * scale);
        /* lanes >= L hold -inf: exp gives 0 there, which also clears them */
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NV; i++) x[i] = exp512(_mm512_fmadd_ps(x[i], vs, nms));
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(tree8(NV, 0, x)));
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NV; i++) {
            x[i] = _mm512_mul_ps(x[i], inv);
            if (i < nfull) _mm512_storeu_ps(p + 16 * i, x[i]);
        }
        for (int j = 16 * NV; j + 16 <= Tk; j += 16) _mm512_storeu_ps(p + j, zero);
        if (!tail) continue;
        if (nfull == 0) {   /* Tk < 16: then NV = 1 */
            _mm512_mask_storeu_ps(p, tail16(Tk), x[0]);
            continue;
        }
        /* vectors nfull-1 and nfull of the row: registers, or zeros past them
         * (the index is clamped only so that NV = 1, where this branch is
         * dead, does not name x[-1]) */
        __m512 lo = zero, hi = zero;
        if (NV >= 2 && nfull == NV - 1) {
            lo = x[NV >= 2 ? NV - 2 : 0];
            hi = x[NV - 1];
        } else if (nfull == NV) {
            lo = x[NV - 1];
        }
        _mm512_storeu_ps(p + Tk - 16, _mm512_permutex2var_ps(lo, win, hi));
    }
}

/* softmax of `rows` rows of S (stride ld, Tk entries each); see att_ops.softmax */
KERN_AVX512 static void softmax_rows_avx512(float *S, size_t ld, int rows, int L, int Tk, float scale)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY), vs = _mm512_set1_ps(scale), zero = _mm512_setzero_ps();
    switch ((L + 15) / 16) {
    case 0:
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < Tk; j += 16) st16(S + (size_t)r * ld, j, Tk, zero);
        return;
    case 1: softmax_reg(1, S, ld, rows, L, Tk, scale); return;
    case 2: softmax_reg(2, S, ld, rows, L, Tk, scale); return;
    case 3: softmax_reg(3, S, ld, rows, L, Tk, scale); return;
    case 4: softmax_reg(4, S, ld, rows, L, Tk, scale); return;
    case 5: softmax_reg(5, S, ld, rows, L, Tk, scale); return;
    case 6: softmax_reg(6, S, ld, rows, L, Tk, scale); return;
    case 7: softmax_reg(7, S, ld, rows, L, Tk, scale); return;
    case 8: softmax_reg(8, S, ld, rows, L, Tk, scale); return;
    default: break;
    }
    for (int r = 0; r < rows; r++) {
        float *p = S + (size_t)r * ld;
        __m512 mx = ninf;
        for (int j = 0; j < L; j += 16)
            mx = _mm512_max_ps(mx, _mm512_mask_mov_ps(ninf, tail16(L - j), ld16(p, j, Tk)));
        __m512 nms = _mm512_set1_ps(-_mm512_reduce_max_ps(mx) * scale);
        __m512 sum = zero;
        for (int j = 0; j < L; j += 16) {
            __m512 e = exp512(_mm512_fmadd_ps(_mm512_mask_mov_ps(ninf, tail16(L - j), ld16(p, j, Tk)), vs, nms));
            st16(p, j, Tk, e);
            sum = _mm512_add_ps(sum, e);
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
        int j = 0;
        for (; j < L; j += 16) st16(p, j, Tk, _mm512_mul_ps(ld16(p, j, Tk), inv));
        for (; j < Tk; j += 16) st16(p, j, Tk, zero);
    }
}

/* dS rows of 16 (NV-1) < L <= 16 NV keys in NV registers */
KERN_INLINE KERN_AVX512 void ds_reg(const int NV, float *dP, size_t ldd, int capd, const float *P, size_t ldp,
                                     int capp, const float *W, size_t ldw, int capw, int rows, int L, float scale)
{
    const __m512 vs = _mm512_set1_ps(scale);
    __mmask16 m[ATT_REG_NV];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < NV; i++) m[i] = tail16(L - 16 * i);
    for (int r = 0; r < rows; r++) {
        float *dp = dP + (size_t)r * ldd;
        const float *pr = P + (size_t)r * ldp, *wr = W + (size_t)r * ldw;
        __m512 d[ATT_REG_NV], w[ATT_REG_NV], wd[ATT_REG_NV];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NV; i++) {
            d[i] = _mm512_maskz_mov_ps(m[i], ld16(dp, 16 * i, capd));
            w[i] = _mm512_maskz_mov_ps(m[i], ld16(wr, 16 * i, capw));
            wd[i] = _mm512_mul_ps(w[i], d[i]);
        }
        __m512 nD = _mm512_set1_ps(-_mm512_reduce_add_ps(tree8(NV, 0, wd)));
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NV; i++) {
            __m512 pd = _mm512_mul_ps(_mm512_maskz_mov_ps(m[i], ld16(pr, 16 * i, capp)), nD);
            st16(dp, 16 * i, capd, _mm512_mul_ps(_mm512_fmadd_ps(w[i], d[i], pd), vs));
        }
    }
}

/* dS rows in place of dP; see att_ops.ds. Row capacities: dP and W rows
 * cap_d / cap_w entries, P rows cap_p. */
KERN_AVX512 static void ds_rows_avx512(float *dP, size_t ldd, int capd, const float *P, size_t ldp, int capp,
                                       const float *W, size_t ldw, int capw, int rows, int L, float scale)
{
    switch ((L + 15) / 16) {
    case 0: return;
    case 1: ds_reg(1, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 2: ds_reg(2, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 3: ds_reg(3, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 4: ds_reg(4, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 5: ds_reg(5, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 6: ds_reg(6, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 7: ds_reg(7, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    case 8: ds_reg(8, dP, ldd, capd, P, ldp, capp, W, ldw, capw, rows, L, scale); return;
    default: break;
    }
    const __m512 vs = _mm512_set1_ps(scale);
    for (int r = 0; r < rows; r++) {
        float *dp = dP + (size_t)r * ldd;
        const float *pr = P + (size_t)r * ldp, *wr = W + (size_t)r * ldw;
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < L; j += 16) {
            __mmask16 m = tail16(L - j);
            acc = _mm512_fmadd_ps(_mm512_maskz_mov_ps(m, ld16(wr, j, capw)), _mm512_maskz_mov_ps(m, ld16(dp, j, capd)), acc);
        }
        __m512 nD = _mm512_set1_ps(-_mm512_reduce_add_ps(acc));
        for (int j = 0; j < L; j += 16) {
            __mmask16 m = tail16(L - j);
            __m512 pd = _mm512_mul_ps(_mm512_maskz_mov_ps(m, ld16(pr, j, capp)), nD);
            __m512 t = _mm512_fmadd_ps(_mm512_maskz_mov_ps(m, ld16(wr, j, capw)), _mm512_maskz_mov_ps(m, ld16(dp, j, capd)), pd);
            st16(dp, j, capd, _mm512_mul_ps(t, vs));
        }
    }
}

KERN_INLINE KERN_AVX512 __m512i mix64_512(__m512i z)
{
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64((long long)0x94D049BB133111EBull));
    return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}

/* mask rows (stride Tk) and dropped weights (stride ldw, capacity capw >= L);
 * see att_ops.dropout */
KERN_AVX512 static void dropout_rows_avx512(uint8_t *mk, float *w, size_t ldw, int capw, const float *P,
                                            size_t ldp, int rows, int L, int Tk, uint64_t seed, size_t idx,
                                            uint64_t thr, float invk)
{
    const __m512i g16 = _mm512_set1_epi64((long long)(16 * GAMMA)), vthr = _mm512_set1_epi64((long long)thr);
    const __m512i lane = _mm512_mullo_epi64(_mm512_setr_epi64(1, 2, 3, 4, 5, 6, 7, 8),
                                            _mm512_set1_epi64((long long)GAMMA));
    const __m512 vk = _mm512_set1_ps(invk);
    for (int r = 0; r < rows; r++) {
        uint8_t *mrow = mk + (size_t)r * Tk;
        float *wr = w + (size_t)r * ldw;
        const float *pr = P + (size_t)r * ldp;
        /* lane l of z0 / z1: seed + (flat index + l + 1) * gamma (l + 8 for z1) */
        __m512i z0 = _mm512_add_epi64(_mm512_set1_epi64((long long)(seed + (uint64_t)(idx + (size_t)r * Tk) * GAMMA)), lane);
        __m512i z1 = _mm512_add_epi64(z0, _mm512_set1_epi64((long long)(8 * GAMMA)));
        int j = 0;
        for (; j < L; j += 16) {
            __mmask8 k0 = _mm512_cmp_epu64_mask(_mm512_srli_epi64(mix64_512(z0), 40), vthr, _MM_CMPINT_NLT);
            __mmask8 k1 = _mm512_cmp_epu64_mask(_mm512_srli_epi64(mix64_512(z1), 40), vthr, _MM_CMPINT_NLT);
            __mmask16 keep = (__mmask16)((((unsigned)k1 << 8) | k0) & tail16(L - j));
            __m128i mb = _mm_maskz_mov_epi8(keep, _mm_set1_epi8(1));
            if (j + 16 <= Tk) _mm_storeu_si128((__m128i *)(mrow + j), mb);
            else _mm_mask_storeu_epi8(mrow + j, tail16(Tk - j), mb);
            st16(wr, j, capw, _mm512_maskz_mul_ps(keep, ld16(pr, j, Tk), vk));
            z0 = _mm512_add_epi64(z0, g16);
            z1 = _mm512_add_epi64(z1, g16);
        }
        if (Tk > j) memset(mrow + j, 0, (size_t)(Tk - j));
    }
}

/* dropped weights from a saved mask (rows of Tk entries); see att_ops.wrow */
KERN_AVX512 static void w_rows_avx512(float *w, size_t ldw, int capw, const float *P, size_t ldp,
                                      const uint8_t *mk, size_t ldm, int rows, int L, int Tk, float invk)
{
    const __m512 vk = _mm512_set1_ps(invk);
    for (int r = 0; r < rows; r++) {
        float *wr = w + (size_t)r * ldw;
        const float *pr = P + (size_t)r * ldp;
        const uint8_t *mrow = mk + (size_t)r * ldm;
        for (int j = 0; j < L; j += 16) {
            __m128i mb = j + 16 <= Tk ? _mm_loadu_si128((const __m128i *)(mrow + j))
                                     : _mm_maskz_loadu_epi8(tail16(Tk - j), mrow + j);
            __mmask16 keep = _mm_mask_test_epi8_mask(tail16(L - j), mb, _mm_set1_epi8(-1));
            st16(wr, j, capw, _mm512_maskz_mul_ps(keep, ld16(pr, j, Tk), vk));
        }
    }
}

/* ---- AVX2 + FMA: 6 x 16 tile in 12 ymm accumulators */

KERN_INLINE KERN_AVX2 __m256i mask8_avx2(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* FULL: nr == 16, plain loads and stores; else masked (masks m0, m1) */
KERN_INLINE KERN_AVX2 void uk256_body(const int MR, const int FULL, int K, const float *A, size_t ars,
                                       size_t acs, const float *B, size_t ldb, __m256i m0, __m256i m1,
                                       float *C, size_t ldc, int acc)
{
    __m256 c0[6], c1[6];
    _Pragma("GCC unroll 6")
    for (int i = 0; i < MR; i++) {
        if (!acc) {
            c0[i] = _mm256_setzero_ps();
            c1[i] = _mm256_setzero_ps();
        } else if (FULL) {
            c0[i] = _mm256_loadu_ps(C + i * ldc);
            c1[i] = _mm256_loadu_ps(C + i * ldc + 8);
        } else {
            c0[i] = _mm256_maskload_ps(C + i * ldc, m0);
            c1[i] = _mm256_maskload_ps(C + i * ldc + 8, m1);
        }
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + (size_t)k * acs;
        __m256 b0 = FULL ? _mm256_loadu_ps(B) : _mm256_maskload_ps(B, m0);
        __m256 b1 = FULL ? _mm256_loadu_ps(B + 8) : _mm256_maskload_ps(B + 8, m1);
        B += ldb;
        _Pragma("GCC unroll 6")
        for (int i = 0; i < MR; i++) {
            __m256 av = _mm256_broadcast_ss(a + i * ars);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
    _Pragma("GCC unroll 6")
    for (int i = 0; i < MR; i++) {
        if (FULL) {
            _mm256_storeu_ps(C + i * ldc, c0[i]);
            _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
        } else {
            _mm256_maskstore_ps(C + i * ldc, m0, c0[i]);
            _mm256_maskstore_ps(C + i * ldc + 8, m1, c1[i]);
        }
    }
}

#define UK256_CASES(FULL)                                                                   \
    switch (mr) {                                                                           \
    case 6: uk256_body(6, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;       \
    case 5: uk256_body(5, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;       \
    case 4: uk256_body(4, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;       \
    case 3: uk256_body(3, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;       \
    case 2: uk256_body(2, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;       \
    default: uk256_body(1, FULL, K, A, ars, acs, B, ldb, m0, m1, C, ldc, acc); break;      \
    }

KERN_AVX2 static void uk_avx2(int mr, int nr, int K, const float *A, size_t ars, size_t acs,
                              const float *B, size_t ldb, float *C, size_t ldc, int acc)
{
    __m256i m0 = mask8_avx2(nr), m1 = mask8_avx2(nr - 8);
    if (nr >= 16) { UK256_CASES(1) } else { UK256_CASES(0) }
}

KERN_AVX2 static void pack_avx2(float *P, size_t ldp, const float *B, size_t bks, size_t bns, int kc, int nr)
{
    for (int k = 0; k < kc; k++)
        for (int n = 0; n < nr; n++) P[(size_t)k * ldp + n] = B[(size_t)k * bks + (size_t)n * bns];
}

/* Row operations for AVX2: elementwise parts as omp simd loops, reductions
 * with intrinsics (8 lanes, then a fixed tree) */

KERN_INLINE KERN_AVX2 float hsum256(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
KERN_INLINE KERN_AVX2 float hmax256(__m256 v)
{
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

KERN_AVX2 static void softmax_rows_avx2(float *S, size_t ld, int rows, int L, int Tk, float scale)
{
    for (int r = 0; r < rows; r++) {
        float *p = S + (size_t)r * ld;
        if (L > 0) {
            __m256 mv = _mm256_set1_ps(-INFINITY);
            int j = 0;
            for (; j + 8 <= L; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(p + j));
            float mx = hmax256(mv);
            for (; j < L; j++) mx = p[j] > mx ? p[j] : mx;
            float ms = mx * scale;
            #pragma omp simd
            for (int i = 0; i < L; i++) p[i] = kern_exp(kern_madd(p[i], scale, -ms, 1), 1);
            __m256 sv = _mm256_setzero_ps();
            for (j = 0; j + 8 <= L; j += 8) sv = _mm256_add_ps(sv, _mm256_loadu_ps(p + j));
            float sum = hsum256(sv);
            for (; j < L; j++) sum += p[j];
            float inv = 1.0f / sum;
            #pragma omp simd
            for (int i = 0; i < L; i++) p[i] *= inv;
        }
        for (int j = L; j < Tk; j++) p[j] = 0.0f;
    }
}

KERN_AVX2 static void dropout_rows_avx2(uint8_t *mk, float *w, size_t ldw, int capw, const float *P,
                                        size_t ldp, int rows, int L, int Tk, uint64_t seed, size_t idx,
                                        uint64_t thr, float invk)
{
    (void)capw;
    for (int r = 0; r < rows; r++) {
        uint8_t *mrow = mk + (size_t)r * Tk;
        float *wr = w + (size_t)r * ldw;
        const float *pr = P + (size_t)r * ldp;
        uint64_t z0 = seed + (uint64_t)(idx + (size_t)r * Tk + 1) * GAMMA;
        #pragma omp simd
        for (int j = 0; j < L; j++) {
            uint8_t keep = (kern_mix64(z0 + (uint64_t)j * GAMMA) >> 40) >= thr;
            mrow[j] = keep;
            wr[j] = kern_sel(keep, pr[j] * invk, 0.0f);
        }
        for (int j = L; j < Tk; j++) mrow[j] = 0;
    }
}

KERN_AVX2 static void w_rows_avx2(float *w, size_t ldw, int capw, const float *P, size_t ldp,
                                  const uint8_t *mk, size_t ldm, int rows, int L, int Tk, float invk)
{
    (void)capw; (void)Tk;
    for (int r = 0; r < rows; r++) {
        float *wr = w + (size_t)r * ldw;
        const float *pr = P + (size_t)r * ldp;
        const uint8_t *mrow = mk + (size_t)r * ldm;
        #pragma omp simd
        for (int j = 0; j < L; j++) wr[j] = kern_sel(mrow[j], pr[j] * invk, 0.0f);
    }
}

KERN_AVX2 static void ds_rows_avx2(float *dP, size_t ldd, int capd, const float *P, size_t ldp, int capp,
                                   const float *W, size_t ldw, int capw, int rows, int L, float scale)
{
    (void)capd; (void)capp; (void)capw;
    for (int r = 0; r < rows; r++) {
        float *dp = dP + (size_t)r * ldd;
        const float *pr = P + (size_t)r * ldp, *wr = W + (size_t)r * ldw;
        __m256 acc = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= L; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(wr + j), _mm256_loadu_ps(dp + j), acc);
        float D = hsum256(acc);
        for (; j < L; j++) D += wr[j] * dp[j];
        #pragma omp simd
        for (int i = 0; i < L; i++) dp[i] = kern_madd(wr[i], dp[i], -pr[i] * D, 1) * scale;
    }
}

#endif /* KERN_X86 */

/* C (M x N) (+)= A (M x K, strides ars/acs) * B (K x N, B[k*bks + n*bns]).
 * bns == 1: B rows are used in place; else B is packed a panel of NR columns
 * by ATT_KC rows at a time. The summation order of every element depends only
 * on M, N, K and the tier. */
KERN_INLINE void att_gemm(att_uk uk, att_pack pack, const int MR, const int NR, int M, int N, int K,
                          const float *A, size_t ars, size_t acs, const float *B, size_t bks,
                          size_t bns, float *C, size_t ldc, int acc)
{
    float panel[ATT_KC * ATT_NR_MAX];
    for (int n0 = 0; n0 < N; n0 += NR) {
        int nr = N - n0 < NR ? N - n0 : NR;
        if (bns == 1 || K == 0) {
            for (int m0 = 0; m0 < M; m0 += MR)
                uk(M - m0 < MR ? M - m0 : MR, nr, K, A + (size_t)m0 * ars, ars, acs, B + n0, bks,
                   C + (size_t)m0 * ldc + n0, ldc, acc);
            continue;
        }
        for (int k0 = 0; k0 < K; k0 += ATT_KC) {
            int kc = K - k0 < ATT_KC ? K - k0 : ATT_KC;
            pack(panel, NR, B + (size_t)k0 * bks + (size_t)n0 * bns, bks, bns, kc, nr);
            for (int m0 = 0; m0 < M; m0 += MR)
                uk(M - m0 < MR ? M - m0 : MR, nr, kc, A + (size_t)m0 * ars + (size_t)k0 * acs, ars, acs,
                   panel, NR, C + (size_t)m0 * ldc + n0, ldc, acc || k0 > 0);
        }
    }
}

/* ====================================================== blocked head passes */

/* Queries go in blocks of up to max(ATT_QB_MIN, ATT_QB_FLOATS / Tk) rows (all
 * T if fewer); a block's scratch rows are att_pad(L) <= att_pad(Tk) floats
 * wide. The block depends on the shape alone, so one scratch size serves
 * every call of a shape whatever the lengths. */
#define ATT_QB_FLOATS 32768
#define ATT_QB_MIN 64

static int att_qblock(const att_dims *d)
{
    int qb = ATT_QB_FLOATS / d->Tk;
    if (qb < ATT_QB_MIN) qb = ATT_QB_MIN;
    return qb < d->T ? qb : d->T;
}

static int att_pad(int L) { return (L + 15) & ~15; }

/* floats of one query block's scratch rows */
static size_t att_block_floats(const att_dims *d)
{
    return (size_t)att_qblock(d) * (size_t)att_pad(d->Tk);
}

/* The tier-specific pieces of the blocked passes. Row operations work on
 * `rows` rows of L keys (row r of a matrix X with stride ldx at X + r*ldx;
 * cap: entries of each row that may be read and written, >= L). Probs and
 * mask rows have Tk entries; scratch rows have stride and capacity att_pad(L). */
typedef struct {
    att_uk uk;
    att_pack pack;
    int MR, NR;   /* micro-kernel tile */
    /* S rows (L scores) -> softmax(S * scale); entries L..Tk-1 set to 0 */
    void (*softmax)(float *S, size_t ld, int rows, int L, int Tk, float scale);
    /* mask rows (stride Tk) of flat indices idx + r*Tk + j: keep draws for
     * j < L, 0 for L <= j < Tk; w[j] = P[j] * mask[j] * invk for j < L */
    void (*dropout)(uint8_t *mask, float *w, size_t ldw, int capw, const float *P, size_t ldp, int rows,
                    int L, int Tk, uint64_t seed, size_t idx, uint64_t thr, float invk);
    /* w[j] = mask[j] ? P[j] * invk : 0, j < L */
    void (*wrow)(float *w, size_t ldw, int capw, const float *P, size_t ldp, const uint8_t *mask,
                 size_t ldm, int rows, int L, int Tk, float invk);
    /* dS in place of dP: with W = P * mask / (1-p) (W = P without dropout)
     * and D = sum_j W_j dP_j, dS_j = (W_j dP_j - P_j D) * scale */
    void (*ds)(float *dP, size_t ldd, int capd, const float *P, size_t ldp, int capp, const float *W,
               size_t ldw, int capw, int rows, int L, float scale);
} att_ops;

#if KERN_X86
static const att_ops ops_avx512 = {
    uk_avx512, pack_avx512, 8, 32, softmax_rows_avx512, dropout_rows_avx512, w_rows_avx512, ds_rows_avx512,
};
static const att_ops ops_avx2 = {
    uk_avx2, pack_avx2, 6, 16, softmax_rows_avx2, dropout_rows_avx2, w_rows_avx2, ds_rows_avx2,
};
#endif

/* C (M x N) (+)= A (M x K) B (K x N) through the tier's micro-kernel; see att_gemm */
static void gemm(const att_ops *o, int M, int N, int K, const float *A, size_t ars, size_t acs,
                 const float *B, size_t bks, size_t bns, float *C, size_t ldc, int acc)
{
    att_gemm(o->uk, o->pack, o->MR, o->NR, M, N, K, A, ars, acs, B, bks, bns, C, ldc, acc);
}

/* Requests rows [0, rows) of a head's column slice (width floats, row stride
 * ld) ahead of use: the rows are C floats apart, a pattern the hardware
 * prefetchers follow poorly, and a head reads each of them many times. */
#define ATT_PREFETCH_T 128
static void prefetch_slice(const float *p, int rows, size_t ld, int width)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < width; c += 16) __builtin_prefetch(p + (size_t)r * ld + c, 0, 3);
}

/* Forward of head (b, h) attending L keys. ws: scratch of att_block_floats
 * floats (dropout only). */
static void fwd_head(const att_ops *o, const att_dims *d, float *out, float *probs, uint8_t *mask,
                     const float *q, const float *k, const float *v, int L, int b, int h,
                     float p, uint64_t seed, float *ws)
{
    int hd = d->hd, T = d->T, Tk = d->Tk;
    size_t C = (size_t)d->C;
    float invk = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    uint64_t thr = kern_keep_threshold(p);
    const float *qb = q + att_qoff(d, b, h), *kb = k + att_koff(d, b, h), *vb = v + att_koff(d, b, h);
    float *ob = out + att_qoff(d, b, h);
    size_t prow = att_prow(d, b, h);
    if (L == 0) {   /* an empty sequence without prefix: zero probs, mask and out rows */
        memset(probs + prow * Tk, 0, (size_t)T * Tk * sizeof(float));
        if (mask) memset(mask + prow * Tk, 0, (size_t)T * Tk);
        for (int t = 0; t < T; t++) memset(ob + (size_t)t * C, 0, (size_t)hd * sizeof(float));
        return;
    }
    int qbl = att_qblock(d), Lp = att_pad(L);
    if (T <= ATT_PREFETCH_T) {
        prefetch_slice(kb, L, C, hd);
        prefetch_slice(qb, T, C, hd);
        prefetch_slice(vb, L, C, hd);
    }
    for (int t0 = 0; t0 < T; t0 += qbl) {
        int tn = T - t0 < qbl ? T - t0 : qbl;
        float *S = probs + (prow + t0) * Tk;
        /* S = q k^T: B[d][j] = k[j*C + d] */
        gemm(o, tn, L, hd, qb + (size_t)t0 * C, C, 1, kb, 1, C, S, (size_t)Tk, 0);
        o->softmax(S, (size_t)Tk, tn, L, Tk, d->scale);
        const float *W = S;
        size_t ldw = (size_t)Tk;
        if (mask) {
            o->dropout(mask + (prow + t0) * Tk, ws, (size_t)Lp, Lp, S, (size_t)Tk, tn, L, Tk, seed,
                       (prow + t0) * Tk, thr, invk);
            W = ws;
            ldw = (size_t)Lp;
        }
        /* out = W v */
        gemm(o, tn, hd, L, W, ldw, 1, vb, C, 1, ob + (size_t)t0 * C, C, 0);
    }
}

/* Backward of head (b, h) attending L keys. ws: scratch of 2 *
 * att_block_floats floats. */
static void bwd_head(const att_ops *o, const att_dims *d, float *dq, float *dk, float *dv,
                     const float *dout, const float *probs, const uint8_t *mask, float invk,
                     const float *q, const float *k, const float *v, int L, int b, int h, float *ws)
{
    if (L == 0) return;
    int hd = d->hd, T = d->T, Tk = d->Tk;
    size_t C = (size_t)d->C;
    size_t qo = att_qoff(d, b, h), ko = att_koff(d, b, h);
    const float *qb = q + qo, *kb = k + ko, *vb = v + ko, *db = dout + qo;
    size_t prow = att_prow(d, b, h);
    int qbl = att_qblock(d), Lp = att_pad(L);
    float *wbuf = ws, *dP = ws + (size_t)qbl * Lp;
    if (T <= ATT_PREFETCH_T) {
        prefetch_slice(db, T, C, hd);
        prefetch_slice(vb, L, C, hd);
        prefetch_slice(kb, L, C, hd);
        prefetch_slice(qb, T, C, hd);
        if (dv) prefetch_slice(dv + ko, L, C, hd);
        if (dk) prefetch_slice(dk + ko, L, C, hd);
        if (dq) prefetch_slice(dq + qo, T, C, hd);
    }
    for (int t0 = 0; t0 < T; t0 += qbl) {
        int tn = T - t0 < qbl ? T - t0 : qbl;
        const float *P = probs + (prow + t0) * Tk;
        const float *W = P;
        size_t ldw = (size_t)Tk;
        int capw = Tk;
        if (mask) {
            o->wrow(wbuf, (size_t)Lp, Lp, P, (size_t)Tk, mask + (prow + t0) * Tk, (size_t)Tk, tn, L, Tk, invk);
            W = wbuf;
            ldw = (size_t)Lp;
            capw = Lp;
        }
        const float *dob = db + (size_t)t0 * C;
        /* dv (L x hd) += W^T dout */
        if (dv) gemm(o, L, hd, tn, W, 1, ldw, dob, C, 1, dv + ko, C, 1);
        if (!dq && !dk) continue;
        /* dP (tn x L) = dout v^T: B[d][j] = v[j*C + d] */
        gemm(o, tn, L, hd, dob, C, 1, vb, 1, C, dP, (size_t)Lp, 0);
        o->ds(dP, (size_t)Lp, Lp, P, (size_t)Tk, Tk, W, ldw, capw, tn, L, d->scale);
        /* dq (tn x hd) += dS k;  dk (L x hd) += dS^T q */
        if (dq) gemm(o, tn, hd, L, dP, (size_t)Lp, 1, kb, C, 1, dq + qo + (size_t)t0 * C, C, 1);
        if (dk) gemm(o, L, hd, tn, dP, 1, (size_t)Lp, qb + (size_t)t0 * C, C, 1, dk + ko, C, 1);
    }
}

/* ============================================================ scratch */

/* The blocked passes' scratch is per thread, allocated on a thread's first
 * call that needs it (or needs more) and then kept: training repeats the same
 * shapes every step, so steps after the first allocate nothing. Thread-
 * specific data rather than a shared pool: no locking, safe whichever threads
 * call the kernels (OpenMP workers persist between parallel regions), and the
 * key's destructor frees a thread's block when the thread exits. */
/* the calling thread's scratch of at least n floats (kern_scratch: kept
 * between calls); NULL if it cannot be had (the caller then takes the
 * portable loops, which need none) */
static float *att_scratch(size_t n)
{
    if (n > SIZE_MAX / sizeof(float)) return NULL;
    return kern_scratch(n * sizeof(float));
}

/* ================================================================ drivers */

/* the blocked passes' ops for the current tier; NULL: portable hand loops */
static const att_ops *pick_ops(void)
{
#if KERN_X86
    return kern_isa_level >= KERNELS_ISA_AVX512 ? &ops_avx512
         : kern_isa_level >= KERNELS_ISA_AVX2 ? &ops_avx2 : NULL;
#else
    return NULL;
#endif
}

/* work below which the kernels stay on the calling thread */
static int att_parallel(const att_dims *d, int B)
{
    return (size_t)B * d->NH * d->T * d->Tk * d->hd >= (1u << 16);
}

/* Shared forward; mask NULL means no dropout (p and seed unused). */
static void attention_fwd(float *out, float *probs, uint8_t *mask, const float *q,
                          const float *k, const float *v, const int *lens,
                          int B, int T, int P, int C, int NH, float p, uint64_t seed)
{
    if (B <= 0 || T <= 0 || NH <= 0 || P < 0) return;
    const att_dims d = att_make_dims(T, P, C, NH);
    const att_ops *fast = pick_ops();
    size_t wsn = mask ? att_block_floats(&d) : 0;
    #pragma omp parallel if (att_parallel(&d, B))
    {
        float *ws = fast && wsn ? att_scratch(wsn) : NULL;
        int ok = fast && (ws || !wsn);
        #pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                int L = att_keys(&d, lens, b);
                if (ok) fwd_head(fast, &d, out, probs, mask, q, k, v, L, b, h, p, seed, ws);
                else fwd_head_portable(&d, out, probs, mask, q, k, v, L, b, h, p, seed);
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
    attention_fwd(out, probs, NULL, q, k, v, lens, B, T, 0, C, NH, 0.0f, 0);
}

/* As attention_forward, plus mask (B,NH,T,T): mask[i] = 1 (keep) iff the i-th
 * draw (i the flat index) of a peftc_rng with state = seed is >= p, for keys
 * j < lens[b]; 0 for j >= lens[b]. probs stays undropped;
 * out[b,t,h] = sum_j probs * mask / (1-p) * v_j. p <= 0 keeps all, p >= 1 drops all. */
void attention_forward_train(float *out, float *probs, uint8_t *mask, const float *q,
                             const float *k, const float *v, const int *lens,
                             int B, int T, int C, int NH, float p, uint64_t seed)
{
    if (p <= 0.0f) {
        /* no dropout: mask 1 on real keys, out and probs as attention_forward */
        attention_fwd(out, probs, NULL, q, k, v, lens, B, T, 0, C, NH, 0.0f, 0);
        for (int b = 0; b < B; b++) {
            int L = key_len(lens, b, T);
            for (size_t r = 0; r < (size_t)NH * T; r++) {
                uint8_t *m = mask + ((size_t)b * NH * T + r) * T;
                memset(m, 1, (size_t)L);
                memset(m + L, 0, (size_t)(T - L));
            }
        }
        return;
    }
    attention_fwd(out, probs, mask, q, k, v, lens, B, T, 0, C, NH, p, seed);
}

/* As attention_forward_train with k, v (B,P+T,C) whose first P rows of each
 * sequence are attended by every query; probs, mask (B,NH,T,P+T), the mask
 * drawn as there (i the flat index into (B,NH,T,P+T)). p <= 0: no dropout,
 * mask is neither read nor written (may be NULL). */
void attention_forward_prefix(float *out, float *probs, uint8_t *mask, const float *q, const float *k,
                              const float *v, const int *lens, int B, int T, int P, int C, int NH,
                              float p, uint64_t seed)
{
    attention_fwd(out, probs, p > 0.0f ? mask : NULL, q, k, v, lens, B, T, P, C, NH, p, seed);
}

/* Shared backward. With P = probs, W = P * mask / (1-p) the weights the
 * forward applied to v (W = P without dropout), dW_tj = dout_t . v_j and
 * D_t = sum_j W_tj dW_tj:
 * dv_j += sum_t W_tj dout_t
 * dS_tj = P_tj (mask_tj / (1-p) * dW_tj - D_t) / sqrt(hd)
 * dq_t += sum_j dS_tj k_j;   dk_j += sum_t dS_tj q_t
 * Only attended keys take part (P is 0 elsewhere). */
static void attention_bwd(float *dq, float *dk, float *dv, const float *dout,
                          const float *probs, const uint8_t *mask, float invk,
                          const float *q, const float *k, const float *v,
                          const int *lens, int B, int T, int P, int C, int NH)
{
    if (B <= 0 || T <= 0 || NH <= 0 || P < 0) return;
    if (!dq && !dk && !dv) return;
    const att_dims d = att_make_dims(T, P, C, NH);
    const att_ops *fast = pick_ops();
    size_t wsn = 2 * att_block_floats(&d);
    #pragma omp parallel if (att_parallel(&d, B))
    {
        float *ws = fast ? att_scratch(wsn) : NULL;
        int ok = fast && ws;
        #pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                int L = att_keys(&d, lens, b);
                if (ok) bwd_head(fast, &d, dq, dk, dv, dout, probs, mask, invk, q, k, v, L, b, h, ws);
                else bwd_head_portable(&d, dq, dk, dv, dout, probs, mask, invk, q, k, v, L, b, h);
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                        const float *probs, const float *q, const float *k,
                        const float *v, const int *lens, int B, int T, int C, int NH)
{
    attention_bwd(dq, dk, dv, dout, probs, NULL, 1.0f, q, k, v, lens, B, T, 0, C, NH);
}

/* Backward of attention_forward_train given its probs and mask (same p). */
void attention_backward_train(float *dq, float *dk, float *dv, const float *dout,
                              const float *probs, const uint8_t *mask, const float *q,
                              const float *k, const float *v, const int *lens,
                              int B, int T, int C, int NH, float p)
{
    if (p >= 1.0f) return;  /* everything was dropped: out did not depend on q, k, v */
    if (p <= 0.0f) mask = NULL;
    attention_bwd(dq, dk, dv, dout, probs, mask, 1.0f / (1.0f - p), q, k, v, lens, B, T, 0, C, NH);
}

/* Backward of attention_forward_prefix given its probs and mask (same p);
 * dq (B,T,C), dk, dv (B,P+T,C) += . */
void attention_backward_prefix(float *dq, float *dk, float *dv, const float *dout, const float *probs,
                               const uint8_t *mask, const float *q, const float *k, const float *v,
                               const int *lens, int B, int T, int P, int C, int NH, float p)
{
    if (p >= 1.0f) return;
    if (p <= 0.0f) mask = NULL;
    attention_bwd(dq, dk, dv, dout, probs, mask, 1.0f / (1.0f - p), q, k, v, lens, B, T, P, C, NH);
}
