/* lowrank.c: the two skinny products of a rank-R delta module (LoRA, adapters),
 * z = x A^T + b and h += alpha (a B^T + b), with their gradients, for small R.
 *
 * Why not cblas_sgemm: with R = 8 and N = 2048 rows each product is a few
 * million FMAs, and OpenBLAS spends more time packing x, dh and h (all
 * N x 384) into its panel layouts than multiplying; the scale alpha then
 * needs a pass of its own over (N, OC). Here every product is one small
 * GEMM with a broadcast left operand and a row-contiguous right one (lr_gemm,
 * register-blocked per tier), reading the wide operands in place, once:
 * - forward: the up-projection accumulates alpha (a B^T + b) straight into h;
 * - backward: each block of LR_ROWS rows is walked in slabs of LR_SLAB rows
 *   small enough for L1, and every product reading the slab (da, the
 *   partials of dB and dbias; dx, dA, dbias) runs while it is there.
 * The products with R <= 8 columns (z, da) take two k per FMA on AVX-512
 * (lr_pairs_avx512), and every kernel prefetches the next slab's wide
 * operands while it works on the current one.
 *
 * Determinism: a row's outputs (z, h, da, dx) are sums over k in order,
 * whatever tile or thread computes them. Weight and bias gradients are sums
 * over rows: each block of LR_ROWS rows sums into its own slice of the
 * caller's scratch (rows in order), and the slices are then added in block
 * order. So results depend on the sizes and the tier, never on the thread
 * count. */
#include <string.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"
#if KERN_X86
#include <immintrin.h>
#endif

#define LR_ROWS 128            /* rows per block of the weight-gradient partial sums */
#define LR_SLAB 32             /* rows per slab: 32 x 384 floats = 48 KiB, one core's L1 */
#define LR_PAR (1u << 17)      /* below this many FMAs a parallel region costs more than it saves */

static size_t lr_blocks(int N) { return N > 0 ? ((size_t)N + LR_ROWS - 1) / LR_ROWS : 1; }
/* one block's partials: R rows of W (the weight gradient), then the bias
 * gradient (W wide for the up-projection, R for the down one), whole cache lines */
static size_t lr_part_stride(int W, int R) { return ((size_t)R * W + (size_t)(W > R ? W : R) + 15) & ~(size_t)15; }

/* a packed copy of a narrow product's right operand (lr_narrow_pack): K rows
 * of nc columns, or K/2 pairs of rows of 16 floats */
static size_t lr_pack_floats(int K, int nc) { return ((size_t)K * (nc > 8 ? nc : 8) + 16 + 15) & ~(size_t)15; }

size_t lowrank_scratch_floats(int N, int W, int R)
{
    if (W < 1) W = 1;
    if (R < 1) R = 1;
    /* the packed weight, then the backward's partials (the forward's
     * transposed weight, R x W, fits in the packed weight's place) */
    return lr_pack_floats(W, R) + lr_blocks(N) * lr_part_stride(W, R);
}

/* ------------------------------------------------------------ small GEMM */

/* C[i*ldc + n] = (acc ? C[i*ldc + n] : 0) + alpha * s[i][n],
 * s[i][n] = (init ? init[n] : 0) + sum_{k<K} A[i*ars + k*acs] * B[k*ldb + n]
 * for i < m, n < nc. The sum runs over k in order (one FMA per k in the
 * AVX tiers), so an element's value does not depend on m, nc or where its
 * tile starts. A is read through strides (it may be a transposed view); B's
 * rows are contiguous; B and C rows may lie anywhere (masked tails). */
typedef void (*lr_gemm_fn)(int m, int nc, int K, const float *A, size_t ars, size_t acs, const float *B,
                           size_t ldb, float *C, size_t ldc, int acc, float alpha, const float *init);

static void lr_gemm_portable(int m, int nc, int K, const float *A, size_t ars, size_t acs, const float *B,
                             size_t ldb, float *C, size_t ldc, int acc, float alpha, const float *init)
{
    /* a row at a time, 64 columns of sums in an array the compiler vectorises */
    for (int i = 0; i < m; i++) {
        const float *ai = A + (size_t)i * ars;
        float *ci = C + (size_t)i * ldc;
        for (int n0 = 0; n0 < nc; n0 += 64) {
            int nr = nc - n0 < 64 ? nc - n0 : 64;
            float s[64];
            for (int n = 0; n < nr; n++) s[n] = init ? init[n0 + n] : 0.0f;
            for (int k = 0; k < K; k++) {
                float av = ai[(size_t)k * acs];
                const float *b = B + (size_t)k * ldb + n0;
                #pragma omp simd
                for (int n = 0; n < nr; n++) s[n] = kern_madd(av, b[n], s[n], 0);
            }
            if (acc) {
                #pragma omp simd
                for (int n = 0; n < nr; n++) ci[n0 + n] = kern_madd(alpha, s[n], ci[n0 + n], 0);
            } else {
                #pragma omp simd
                for (int n = 0; n < nr; n++) ci[n0 + n] = alpha * s[n];
            }
        }
    }
}

#if KERN_X86
/* ---- AVX-512: tiles of up to 8 rows x 32 columns in 16 zmm accumulators.
 * MR, NV (vectors per row) and MASK (whether the columns end inside a
 * vector) are constants in each instantiation; full tiles use plain loads. */

KERN_INLINE KERN_AVX512 __m512 lr_ld512(const int MASK, __mmask16 m, const float *p)
{
    return MASK ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
}
KERN_INLINE KERN_AVX512 void lr_st512(const int MASK, __mmask16 m, float *p, __m512 v)
{
    if (MASK) _mm512_mask_storeu_ps(p, m, v);
    else _mm512_storeu_ps(p, v);
}

KERN_INLINE KERN_AVX512 void lr_tile512(const int MR, const int NV, const int MASK, int K, const float *A,
                                        size_t ars, size_t acs, const float *B, size_t ldb, __mmask16 m0,
                                        __mmask16 m1, float *C, size_t ldc, int acc, float alpha,
                                        const float *init)
{
    __m512 c0[8], c1[8];
    __m512 i0 = init ? lr_ld512(MASK, m0, init) : _mm512_setzero_ps();
    __m512 i1 = NV > 1 && init ? lr_ld512(MASK, m1, init + 16) : _mm512_setzero_ps();
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
        c0[i] = i0;
        if (NV > 1) c1[i] = i1;
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + (size_t)k * acs;
        const float *b = B + (size_t)k * ldb;
        __m512 b0 = lr_ld512(MASK, m0, b);
        __m512 b1 = NV > 1 ? lr_ld512(MASK, m1, b + 16) : b0;
        _Pragma("GCC unroll 8")
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[(size_t)i * ars]);
            c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
            if (NV > 1) c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha);
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
        float *c = C + (size_t)i * ldc;
        __m512 o0 = acc ? _mm512_fmadd_ps(va, c0[i], lr_ld512(MASK, m0, c)) : _mm512_mul_ps(va, c0[i]);
        lr_st512(MASK, m0, c, o0);
        if (NV > 1) {
            __m512 o1 = acc ? _mm512_fmadd_ps(va, c1[i], lr_ld512(MASK, m1, c + 16)) : _mm512_mul_ps(va, c1[i]);
            lr_st512(MASK, m1, c + 16, o1);
        }
    }
}

#define LR512_MR(NV, MASK)                                                                                  \
    switch (mr) {                                                                                           \
    case 8: lr_tile512(8, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 7: lr_tile512(7, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 6: lr_tile512(6, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 5: lr_tile512(5, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 4: lr_tile512(4, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 3: lr_tile512(3, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 2: lr_tile512(2, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    default: lr_tile512(1, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;        \
    }

KERN_AVX512 static void lr_gemm_avx512(int m, int nc, int K, const float *A, size_t ars, size_t acs,
                                       const float *B, size_t ldb, float *C, size_t ldc, int acc, float alpha,
                                       const float *init)
{
    for (int i0 = 0; i0 < m; i0 += 8) {
        int mr = m - i0 < 8 ? m - i0 : 8;
        const float *a = A + (size_t)i0 * ars;
        for (int n0 = 0; n0 < nc; n0 += 32) {
            int nr = nc - n0 < 32 ? nc - n0 : 32;
            const float *b = B + n0, *ini = init ? init + n0 : NULL;
            float *c = C + (size_t)i0 * ldc + n0;
            __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
            __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
            if (nr == 32) { LR512_MR(2, 0) }
            else if (nr > 16) { LR512_MR(2, 1) }
            else if (nr == 16) { LR512_MR(1, 0) }
            else { LR512_MR(1, 1) }
        }
    }
}

/* ---- AVX2: tiles of up to 6 rows x 16 columns in 12 ymm accumulators */

KERN_INLINE KERN_AVX2 __m256i lr_mask256(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
KERN_INLINE KERN_AVX2 __m256 lr_ld256(const int MASK, __m256i m, const float *p)
{
    return MASK ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
}
KERN_INLINE KERN_AVX2 void lr_st256(const int MASK, __m256i m, float *p, __m256 v)
{
    if (MASK) _mm256_maskstore_ps(p, m, v);
    else _mm256_storeu_ps(p, v);
}

KERN_INLINE KERN_AVX2 void lr_tile256(const int MR, const int NV, const int MASK, int K, const float *A,
                                      size_t ars, size_t acs, const float *B, size_t ldb, __m256i m0, __m256i m1,
                                      float *C, size_t ldc, int acc, float alpha, const float *init)
{
    __m256 c0[6], c1[6];
    __m256 i0 = init ? lr_ld256(MASK, m0, init) : _mm256_setzero_ps();
    __m256 i1 = NV > 1 && init ? lr_ld256(MASK, m1, init + 8) : _mm256_setzero_ps();
    _Pragma("GCC unroll 6")
    for (int i = 0; i < MR; i++) {
        c0[i] = i0;
        if (NV > 1) c1[i] = i1;
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + (size_t)k * acs;
        const float *b = B + (size_t)k * ldb;
        __m256 b0 = lr_ld256(MASK, m0, b);
        __m256 b1 = NV > 1 ? lr_ld256(MASK, m1, b + 8) : b0;
        _Pragma("GCC unroll 6")
        for (int i = 0; i < MR; i++) {
            __m256 av = _mm256_set1_ps(a[(size_t)i * ars]);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            if (NV > 1) c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
    __m256 va = _mm256_set1_ps(alpha);
    _Pragma("GCC unroll 6")
    for (int i = 0; i < MR; i++) {
        float *c = C + (size_t)i * ldc;
        __m256 o0 = acc ? _mm256_fmadd_ps(va, c0[i], lr_ld256(MASK, m0, c)) : _mm256_mul_ps(va, c0[i]);
        lr_st256(MASK, m0, c, o0);
        if (NV > 1) {
            __m256 o1 = acc ? _mm256_fmadd_ps(va, c1[i], lr_ld256(MASK, m1, c + 8)) : _mm256_mul_ps(va, c1[i]);
            lr_st256(MASK, m1, c + 8, o1);
        }
    }
}

#define LR256_MR(NV, MASK)                                                                                  \
    switch (mr) {                                                                                           \
    case 6: lr_tile256(6, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 5: lr_tile256(5, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 4: lr_tile256(4, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 3: lr_tile256(3, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    case 2: lr_tile256(2, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;         \
    default: lr_tile256(1, NV, MASK, K, a, ars, acs, b, ldb, m0, m1, c, ldc, acc, alpha, ini); break;        \
    }

KERN_AVX2 static void lr_gemm_avx2(int m, int nc, int K, const float *A, size_t ars, size_t acs,
                                   const float *B, size_t ldb, float *C, size_t ldc, int acc, float alpha,
                                   const float *init)
{
    for (int i0 = 0; i0 < m; i0 += 6) {
        int mr = m - i0 < 6 ? m - i0 : 6;
        const float *a = A + (size_t)i0 * ars;
        for (int n0 = 0; n0 < nc; n0 += 16) {
            int nr = nc - n0 < 16 ? nc - n0 : 16;
            const float *b = B + n0, *ini = init ? init + n0 : NULL;
            float *c = C + (size_t)i0 * ldc + n0;
            __m256i m0 = lr_mask256(nr), m1 = lr_mask256(nr - 8);
            if (nr == 16) { LR256_MR(2, 0) }
            else if (nr > 8) { LR256_MR(2, 1) }
            else if (nr == 8) { LR256_MR(1, 0) }
            else { LR256_MR(1, 1) }
        }
    }
}
/* ---- AVX-512, at most 8 columns (z = x A^T and da = dh B at R <= 8): a
 * plain tile would leave half of every zmm idle. Instead each FMA covers two
 * k: Bp holds B's rows in pairs, interleaved, Bp[p*16 + 2n + t] = B[2p+t][n]
 * (zero where n >= nc), and A's k are contiguous, so one 64-bit broadcast
 * puts (a[2p], a[2p+1]) in every lane pair. Lane 2n sums the even k (from
 * init[n]), lane 2n+1 the odd k; the two are added at the end. */
KERN_INLINE KERN_AVX512 void lr_pairs_tile512(const int MR, int K, const float *A, size_t ars, const float *Bp,
                                              float *C, size_t ldc, int acc, float alpha, __m512 i0, __mmask8 mc)
{
    __m512 c[8];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) c[i] = i0;
    int P = K / 2;
    for (int p = 0; p < P; p++) {
        __m512 b = _mm512_loadu_ps(Bp + (size_t)p * 16);
        _Pragma("GCC unroll 8")
        for (int i = 0; i < MR; i++) {
            double pair;   /* (a[2p], a[2p+1]) as one 64-bit lane */
            memcpy(&pair, A + (size_t)i * ars + 2 * (size_t)p, sizeof pair);
            c[i] = _mm512_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pair)), b, c[i]);
        }
    }
    if (K & 1) {   /* the last k alone: its pair's odd lanes of Bp are zero */
        __m512 b = _mm512_loadu_ps(Bp + (size_t)P * 16);
        _Pragma("GCC unroll 8")
        for (int i = 0; i < MR; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(A[(size_t)i * ars + K - 1]), b, c[i]);
    }
    __m256 va = _mm256_set1_ps(alpha);
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) {
        /* lane 2n + lane 2n+1, then the even lanes packed to the low 8 */
        __m512 s2 = _mm512_add_ps(c[i], _mm512_permute_ps(c[i], 0xB1));
        __m256 s = _mm512_castps512_ps256(_mm512_maskz_compress_ps(0x5555, s2));
        float *ci = C + (size_t)i * ldc;
        __m256 o = acc ? _mm256_fmadd_ps(va, s, _mm256_maskz_loadu_ps(mc, ci)) : _mm256_mul_ps(va, s);
        _mm256_mask_storeu_ps(ci, mc, o);
    }
}

KERN_AVX512 static void lr_pairs_avx512(int m, int nc, int K, const float *A, size_t ars, const float *Bp,
                                        float *C, size_t ldc, int acc, float alpha, const float *init)
{
    __mmask8 mc = (__mmask8)((1u << nc) - 1);
    /* init[n] in lane 2n, zero in the odd lanes */
    __m512 i0 = init ? _mm512_maskz_expand_ps(0x5555, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(mc, init)))
                     : _mm512_setzero_ps();
    for (int i0r = 0; i0r < m; i0r += 8) {
        int mr = m - i0r < 8 ? m - i0r : 8;
        const float *a = A + (size_t)i0r * ars;
        float *c = C + (size_t)i0r * ldc;
        switch (mr) {
        case 8: lr_pairs_tile512(8, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 7: lr_pairs_tile512(7, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 6: lr_pairs_tile512(6, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 5: lr_pairs_tile512(5, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 4: lr_pairs_tile512(4, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 3: lr_pairs_tile512(3, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        case 2: lr_pairs_tile512(2, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        default: lr_pairs_tile512(1, K, a, ars, Bp, c, ldc, acc, alpha, i0, mc); break;
        }
    }
}
#endif

static lr_gemm_fn lr_pick(void)
{
#if KERN_X86
    if (kern_isa_level >= KERNELS_ISA_AVX512) return lr_gemm_avx512;
    if (kern_isa_level >= KERNELS_ISA_AVX2) return lr_gemm_avx2;
#endif
    return lr_gemm_portable;
}

/* ------------------------------------------------------------- helpers */

/* A narrow product C (m, nc) (+)= alpha (init + A B) over K with A's k
 * contiguous (rows of x or dh) and nc = R columns: its right operand B
 * (K, nc), element (k, n) at B[k*bks + n*bns], packed once per call. */
typedef struct { const float *B; int K, nc, pairs; } lr_narrow;

static lr_narrow lr_narrow_pack(float *P, const float *B, size_t bks, size_t bns, int K, int nc)
{
    lr_narrow nw = { P, K, nc, KERN_X86 && kern_isa_level >= KERNELS_ISA_AVX512 && nc <= 8 };
    if (nw.pairs) {
        int npairs = (K + 1) / 2;
        memset(P, 0, (size_t)npairs * 16 * sizeof(float));
        for (int k = 0; k < K; k++)
            for (int n = 0; n < nc; n++) P[(size_t)(k / 2) * 16 + 2 * n + (k & 1)] = B[(size_t)k * bks + (size_t)n * bns];
    } else {
        for (int k = 0; k < K; k++)
            for (int n = 0; n < nc; n++) P[(size_t)k * nc + n] = B[(size_t)k * bks + (size_t)n * bns];
    }
    return nw;
}

static void lr_narrow_run(const lr_narrow *nw, lr_gemm_fn g, int m, const float *A, size_t ars, float *C,
                          size_t ldc, int acc, float alpha, const float *init)
{
#if KERN_X86
    if (nw->pairs) {
        lr_pairs_avx512(m, nw->nc, nw->K, A, ars, nw->B, C, ldc, acc, alpha, init);
        return;
    }
#endif
    g(m, nw->nc, nw->K, A, ars, 1, nw->B, (size_t)nw->nc, C, ldc, acc, alpha, init);
}

/* t (cols, rows) = m (rows, cols)^T */
static void lr_transpose(float *t, const float *m, int rows, int cols)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) t[(size_t)j * rows + i] = m[(size_t)i * cols + j];
}

/* Brings rows [0, rows) of p (cols floats each, ld apart) towards L2, a
 * prefetch per cache line (for writing if `write`). The kernels go through
 * their rows a slab at a time, and fetch the next slab's wide operands while
 * working on this one: the reads of a slab are strided (a tile walks down 8
 * or 32 rows at once) and the hardware prefetchers alone leave the FMAs
 * waiting on x, h, dh and dx. */
static void lr_prefetch(const float *p, size_t ld, int rows, int cols, int write)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c += 16) {
            if (write) __builtin_prefetch(p + (size_t)r * ld + c, 1, 2);
            else __builtin_prefetch(p + (size_t)r * ld + c, 0, 2);
        }
}

/* rows [r0, r1) of block k */
static void lr_block_rows(size_t k, int N, int *r0, int *r1)
{
    *r0 = (int)(k * LR_ROWS);
    *r1 = *r0 + LR_ROWS < N ? *r0 + LR_ROWS : N;
}

/* part (W) (+)= the column sums of rows [0, rows) of d (stride W), rows in order */
static void lr_colsum(float *part, const float *d, int rows, int W, int acc)
{
    if (!acc) memset(part, 0, (size_t)W * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float *dr = d + (size_t)r * W;
        #pragma omp simd
        for (int j = 0; j < W; j++) part[j] += dr[j];
    }
}

/* ------------------------------------------------------------- kernels */

/* A few rows (decoding: one token) read each weight row once, contiguously:
 * packing the operand, as the blocked path does, would cost as much as the
 * product itself. 16 partial sums let each tier vectorise the dots. */
#define LR_SMALL_N 2
KERN_INLINE void lr_small_down_body(float *z, const float *x, const float *A, const float *bias, int N, int IC, int R,
                                    const int F)
{
    for (int n = 0; n < N; n++)
        for (int r = 0; r < R; r++)
            z[(size_t)n * R + r] = kern_dot(x + (size_t)n * IC, A + (size_t)r * IC, IC, F) + (bias ? bias[r] : 0.0f);
}
KERN_TIERS(lr_small_down, (float *z, const float *x, const float *A, const float *bias, int N, int IC, int R),
           z, x, A, bias, N, IC, R)
KERN_INLINE void lr_small_up_body(float *h, const float *a, const float *B, const float *bias, float alpha, int N, int R,
                                  int OC, const int F)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            h[(size_t)n * OC + o] += alpha * (kern_dot(a + (size_t)n * R, B + (size_t)o * R, R, F) + (bias ? bias[o] : 0.0f));
}
KERN_TIERS(lr_small_up, (float *h, const float *a, const float *B, const float *bias, float alpha, int N, int R, int OC),
           h, a, B, bias, alpha, N, R, OC)

void lowrank_down_forward(float *z, float *scratch, const float *x, const float *A, const float *bias,
                          int N, int IC, int R)
{
    if (N <= 0 || R <= 0) return;
    if (N <= LR_SMALL_N) { KERN_PICK(lr_small_down)(z, x, A, bias, N, IC, R); return; }
    lr_gemm_fn g = lr_pick();
    lr_narrow nw = lr_narrow_pack(scratch, A, 1, (size_t)IC, IC, R);   /* B = A^T (IC, R) */
    #pragma omp parallel if ((size_t)N * IC * R >= LR_PAR)
    {
        size_t r0, r1;
        kern_split((size_t)N, &r0, &r1);
        for (size_t s0 = r0; s0 < r1; s0 += LR_SLAB) {
            int rows = r1 - s0 < LR_SLAB ? (int)(r1 - s0) : LR_SLAB;
            int next = r1 - s0 - (size_t)rows < LR_SLAB ? (int)(r1 - s0 - (size_t)rows) : LR_SLAB;
            lr_prefetch(x + (s0 + (size_t)rows) * IC, (size_t)IC, next, IC, 0);
            lr_narrow_run(&nw, g, rows, x + s0 * IC, (size_t)IC, z + s0 * R, (size_t)R, 0, 1.0f, bias);
        }
    }
}

#if KERN_X86
/* h (OC) += alpha (B a + bias) for one row, R a multiple of 16: 16 outputs
 * at a time, each a vector of products, then one transpose-and-add tree
 * turns the 16 vectors into the 16 sums (a horizontal reduction per output
 * would cost more than the products). */
KERN_AVX512 static void lr_up_row_r16_avx512(float *h, const float *a, const float *B, const float *bias, float alpha,
                                             int R, int OC)
{
    int o = 0;
    for (; o + 16 <= OC; o += 16) {
        __m512 v[16];
        for (int u = 0; u < 16; u++) {
            const float *b = B + (size_t)(o + u) * R;
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(b), _mm512_loadu_ps(a));
            for (int r = 16; r < R; r += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(b + r), _mm512_loadu_ps(a + r), acc);
            v[u] = acc;
        }
        __m512 w[8], x[4];
        for (int k = 0; k < 8; k++)   /* per 128-bit lane: v2k, v2k+1 halves summed, interleaved */
            w[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
        for (int k = 0; k < 4; k++) { /* per 128-bit lane: the lane sums of v4k .. v4k+3 */
            __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(w[2 * k]), _mm512_castps_pd(w[2 * k + 1]));
            __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(w[2 * k]), _mm512_castps_pd(w[2 * k + 1]));
            x[k] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
        }
        /* across the four 128-bit lanes */
        __m512 y = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
        __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1)));
        __m512 sum = _mm512_add_ps(_mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(y, z, _MM_SHUFFLE(3, 1, 3, 1)));
        if (bias) sum = _mm512_add_ps(sum, _mm512_loadu_ps(bias + o));
        _mm512_storeu_ps(h + o, _mm512_fmadd_ps(_mm512_set1_ps(alpha), sum, _mm512_loadu_ps(h + o)));
    }
    for (; o < OC; o++) {
        float d = 0;
        for (int r = 0; r < R; r++) d += a[r] * B[(size_t)o * R + r];
        h[o] += alpha * (d + (bias ? bias[o] : 0.0f));
    }
}
#endif

void lowrank_up_forward(float *h, float *scratch, const float *a, const float *B, const float *bias, float alpha,
                        int N, int R, int OC)
{
    if (N <= 0 || OC <= 0 || R <= 0) return;
#if KERN_X86
    if (N <= LR_SMALL_N && R % 16 == 0 && kern_isa_level >= KERNELS_ISA_AVX512) {
        for (int n = 0; n < N; n++) lr_up_row_r16_avx512(h + (size_t)n * OC, a + (size_t)n * R, B, bias, alpha, R, OC);
        return;
    }
#endif
    if (N <= LR_SMALL_N) { KERN_PICK(lr_small_up)(h, a, B, bias, alpha, N, R, OC); return; }
    lr_gemm_fn g = lr_pick();
    float *Bt = scratch;   /* (R, OC) */
    lr_transpose(Bt, B, OC, R);
    #pragma omp parallel if ((size_t)N * OC * R >= LR_PAR)
    {
        size_t r0, r1;
        kern_split((size_t)N, &r0, &r1);
        for (size_t s0 = r0; s0 < r1; s0 += LR_SLAB) {
            int rows = r1 - s0 < LR_SLAB ? (int)(r1 - s0) : LR_SLAB;
            int next = r1 - s0 - (size_t)rows < LR_SLAB ? (int)(r1 - s0 - (size_t)rows) : LR_SLAB;
            lr_prefetch(h + (s0 + (size_t)rows) * OC, (size_t)OC, next, OC, 1);
            g(rows, OC, R, a + s0 * R, (size_t)R, 1, Bt, (size_t)OC, h + s0 * OC, (size_t)OC, 1, alpha, bias);
        }
    }
}

void lowrank_up_backward(float *da, float *dB, float *dbias, float *scratch, const float *dh, const float *a,
                         const float *B, float alpha, int N, int R, int OC)
{
    if (N <= 0 || OC <= 0 || R <= 0) return;
    lr_gemm_fn g = lr_pick();
    size_t nb = lr_blocks(N), stride = lr_part_stride(OC, R);
    lr_narrow nw = { NULL, 0, 0, 0 };
    if (da) nw = lr_narrow_pack(scratch, B, (size_t)R, 1, OC, R);
    scratch += lr_pack_floats(OC, R);
    #pragma omp parallel if ((size_t)N * OC * R >= LR_PAR)
    {
        #pragma omp for schedule(static)
        for (size_t k = 0; k < nb; k++) {
            int b0, b1;
            lr_block_rows(k, N, &b0, &b1);
            float *part = scratch + k * stride;   /* dB^T (R, OC), then colsum(dh) (OC) */
            for (int s0 = b0; s0 < b1; s0 += LR_SLAB) {
                int rows = b1 - s0 < LR_SLAB ? b1 - s0 : LR_SLAB;
                const float *d = dh + (size_t)s0 * OC;
                int next = N - s0 - rows < LR_SLAB ? N - s0 - rows : LR_SLAB;
                lr_prefetch(d + (size_t)rows * OC, (size_t)OC, next, OC, 0);
                /* da (rows, R) = alpha dh B */
                if (da) lr_narrow_run(&nw, g, rows, d, (size_t)OC, da + (size_t)s0 * R, (size_t)R, 0, alpha, NULL);
                /* part (R, OC) (+)= a^T dh: left operand a^T read through strides */
                if (dB) g(R, OC, rows, a + (size_t)s0 * R, 1, (size_t)R, d, (size_t)OC, part, (size_t)OC, s0 > b0,
                          1.0f, NULL);
                if (dbias) lr_colsum(part + (size_t)R * OC, d, rows, OC, s0 > b0);
            }
        }
        /* add the blocks' partials in block order, each thread a range of columns */
        if (dB || dbias) {
            size_t j0, j1;
            kern_split((size_t)OC, &j0, &j1);
            for (size_t j = j0; j < j1; j++) {
                for (int r = 0; r <= R; r++) {   /* rows r < R: dB^T, row R: the bias */
                    float *dst = r < R ? (dB ? dB + j * R + r : NULL) : (dbias ? dbias + j : NULL);
                    if (!dst) continue;
                    const float *p = scratch + (size_t)r * OC + j;
                    float s = p[0];
                    for (size_t k = 1; k < nb; k++) s += p[k * stride];
                    *dst += alpha * s;
                }
            }
        }
    }
}

void lowrank_down_backward(float *dx, float *dA, float *dbias, float *scratch, const float *dz, const float *x,
                           const float *A, int N, int IC, int R)
{
    if (N <= 0 || R <= 0) return;
    lr_gemm_fn g = lr_pick();
    size_t nb = lr_blocks(N), stride = lr_part_stride(IC, R);
    #pragma omp parallel if ((size_t)N * IC * R >= LR_PAR)
    {
        #pragma omp for schedule(static)
        for (size_t k = 0; k < nb; k++) {
            int b0, b1;
            lr_block_rows(k, N, &b0, &b1);
            float *part = scratch + k * stride;   /* dA (R, IC), then colsum(dz) (R) */
            for (int s0 = b0; s0 < b1; s0 += LR_SLAB) {
                int rows = b1 - s0 < LR_SLAB ? b1 - s0 : LR_SLAB;
                const float *d = dz + (size_t)s0 * R;
                const float *xs = x ? x + (size_t)s0 * IC : NULL;
                int next = N - s0 - rows < LR_SLAB ? N - s0 - rows : LR_SLAB;
                if (dx) lr_prefetch(dx + (size_t)(s0 + rows) * IC, (size_t)IC, next, IC, 1);
                if (dA) lr_prefetch(xs + (size_t)rows * IC, (size_t)IC, next, IC, 0);
                /* dx (rows, IC) += dz A */
                if (dx && IC > 0)
                    g(rows, IC, R, d, (size_t)R, 1, A, (size_t)IC, dx + (size_t)s0 * IC, (size_t)IC, 1, 1.0f, NULL);
                /* part (R, IC) (+)= dz^T x */
                if (dA && IC > 0)
                    g(R, IC, rows, d, 1, (size_t)R, xs, (size_t)IC, part, (size_t)IC, s0 > b0, 1.0f, NULL);
                if (dbias) lr_colsum(part + (size_t)R * IC, d, rows, R, s0 > b0);
            }
        }
        if (dA && IC > 0) {
            size_t e0, e1;
            kern_split((size_t)R * IC, &e0, &e1);
            for (size_t k = 1; k < nb; k++) {
                const float *p = scratch + k * stride;
                #pragma omp simd
                for (size_t e = e0; e < e1; e++) scratch[e] += p[e];
            }
            #pragma omp simd
            for (size_t e = e0; e < e1; e++) dA[e] += scratch[e];
        }
    }
    if (dbias) {
        /* IC may be 0: the bias row then starts at the block's slice */
        for (int r = 0; r < R; r++) {
            const float *p = scratch + (size_t)R * IC + r;
            float s = p[0];
            for (size_t k = 1; k < nb; k++) s += p[k * stride];
            dbias[r] += s;
        }
    }
}

/* ------------------------------------------------- one row, bf16 factors */

void lowrank_bf16_pack(uint16_t *A16, uint16_t *Bt16, const float *A, const float *B, int IC, int R, int OC)
{
    for (size_t i = 0; i < (size_t)R * IC; i++) A16[i] = kernels_f32_to_bf16(A[i]);
    for (int o = 0; o < OC; o++)
        for (int r = 0; r < R; r++) Bt16[(size_t)r * OC + o] = kernels_f32_to_bf16(B[(size_t)o * R + r]);
}

KERN_INLINE float bf16_value(uint16_t v)
{
    union { uint32_t u; float f; } c = { (uint32_t)v << 16 };
    return c.f;
}

/* 16 partial sums per row of A, as kern_dot, so each tier vectorises */
KERN_INLINE void lr_down_row_bf16_body(float *z, const float *x, const uint16_t *A16, int IC, int R, const int F)
{
    for (int r = 0; r < R; r++) {
        const uint16_t *a = A16 + (size_t)r * IC;
        float acc[16] = {0};
        int j = 0;
        for (; j + 16 <= IC; j += 16)
            for (int u = 0; u < 16; u++) acc[u] = kern_madd(x[j + u], bf16_value(a[j + u]), acc[u], F);
        float d = 0;
        for (; j < IC; j++) d = kern_madd(x[j], bf16_value(a[j]), d, F);
        for (int u = 0; u < 16; u++) d += acc[u];
        z[r] = d;
    }
}
KERN_TIERS(lr_down_row_bf16, (float *z, const float *x, const uint16_t *A16, int IC, int R), z, x, A16, IC, R)

/* outputs [o_lo, o_hi) of h (OC) += alpha Bt16^T a; Bt16 rows of stride OC.
 * 64 outputs at a time (four 512-bit accumulators), r in order */
#define LR_UP_COLS 64
KERN_INLINE void lr_up_row_bf16_body(float *h, const float *a, const uint16_t *Bt16, float alpha, int R, int OC,
                                     int o_lo, int o_hi, const int F)
{
    for (int o0 = o_lo; o0 < o_hi; o0 += LR_UP_COLS) {
        int n = o_hi - o0 < LR_UP_COLS ? o_hi - o0 : LR_UP_COLS;
        float acc[LR_UP_COLS] = {0};
        if (n == LR_UP_COLS) {
            for (int r = 0; r < R; r++) {
                const uint16_t *b = Bt16 + (size_t)r * OC + o0;
                for (int u = 0; u < LR_UP_COLS; u++) acc[u] = kern_madd(a[r], bf16_value(b[u]), acc[u], F);
            }
        } else {
            for (int r = 0; r < R; r++) {
                const uint16_t *b = Bt16 + (size_t)r * OC + o0;
                for (int u = 0; u < n; u++) acc[u] = kern_madd(a[r], bf16_value(b[u]), acc[u], F);
            }
        }
        for (int u = 0; u < n; u++) h[o0 + u] = kern_madd(alpha, acc[u], h[o0 + u], F);
    }
}
KERN_TIERS(lr_up_row_bf16, (float *h, const float *a, const uint16_t *Bt16, float alpha, int R, int OC, int o_lo,
                            int o_hi), h, a, Bt16, alpha, R, OC, o_lo, o_hi)

void lowrank_row_bf16(float *h, const float *x, const uint16_t *A16, const uint16_t *Bt16, float alpha,
                      int IC, int R, int OC, int o_lo, int o_hi)
{
    if (IC <= 0 || R <= 0 || R > LOWRANK_MAX_R || o_lo < 0 || o_hi > OC || o_lo >= o_hi) return;
    float z[LOWRANK_MAX_R];
    KERN_PICK(lr_down_row_bf16)(z, x, A16, IC, R);
    KERN_PICK(lr_up_row_bf16)(h, z, Bt16, alpha, R, OC, o_lo, o_hi);
}
