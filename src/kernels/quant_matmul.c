/* quant_matmul.c: out = inp @ W^T with W in a GGUF quant type, as integer dot
 * products against 8-bit activations (llama.cpp's scheme: Q8_0 activations
 * for the legacy quants, Q8_K for the K-quants), and the input gradient
 * through a quantised W.
 *
 * One kernel serves every quant type. Each type's block is read as
 *   value = dw * (u - off) + mw   per sub-block of S values,
 * u an unsigned integer of 4..8 bits (Q8_0: q + 128), dw/mw fp32 per
 * sub-block (Q4_K: dw = d*sc, mw = -dmin*m; Q6_K: S = 16, off 32), so a
 * sub-block's dot with activations a = da * q is
 *   dw * da * (sum u q - off sum q) + mw * (da sum q),
 * the integer sum exact. The -off sum q term is where the int32 accumulator
 * starts (vpdpbusd adds onto it), so it costs nothing.
 *
 * Layout (a "panel"): 16 weight rows at a time, each sub-block stored as S/4
 * 64-byte words, word k holding values 4k..4k+3 of each of the 16 rows
 * (row-major within the word): one vpdpbusd of a word with the broadcast 4
 * activation bytes 4k..4k+3 of one token gives the partial sums of all 16
 * rows. Then the sub-block's 16 dw (and mw), fp32. 4-bit types can keep the
 * words as nibbles (word k in the low nibbles, word k + S/8 in the high
 * ones: quant_pack). The micro-kernel runs up to 8 tokens against one panel,
 * so each weight word loaded serves 8 vpdpbusd.
 *
 * quant_matmul decodes each group of 16 rows into a panel in the thread's
 * scratch once per call and reuses it for all the tokens; quant_pack stores
 * the panels so that no call decodes anything.
 *
 * Determinism: an output is accumulated over the sub-blocks in order, by one
 * thread, with the same operations whatever the tile (the token count of a
 * micro-kernel call only changes how many run side by side), so results
 * depend on the tier, never on the thread count. */
#include "kernels/nf4.h"
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"
#if KERN_X86
#include <immintrin.h>
#endif

#define QG 16          /* weight rows per panel */
#define QNB 64         /* tokens per tile of the N > 1 split */

typedef struct {
    int S;             /* values per sub-block */
    int off;           /* u - off is the signed level */
    int min;           /* a per-sub-block additive term mw */
    int nib;           /* u has 4 bits (a packed panel keeps nibbles) */
    uint32_t act;      /* activation type: Q8_0 or Q8_K */
} qinfo;

static int qinfo_get(uint32_t t, qinfo *q)
{
    switch (t) {
    case GGML_TYPE_Q4_0: *q = (qinfo){32, 8, 0, 1, GGML_TYPE_Q8_0}; return 1;
    case GGML_TYPE_Q4_1: *q = (qinfo){32, 0, 1, 1, GGML_TYPE_Q8_0}; return 1;
    case GGML_TYPE_Q5_0: *q = (qinfo){32, 16, 0, 0, GGML_TYPE_Q8_0}; return 1;
    case GGML_TYPE_Q5_1: *q = (qinfo){32, 0, 1, 0, GGML_TYPE_Q8_0}; return 1;
    case GGML_TYPE_Q8_0: *q = (qinfo){32, 128, 0, 0, GGML_TYPE_Q8_0}; return 1;
    case GGML_TYPE_Q4_K: *q = (qinfo){32, 0, 1, 1, GGML_TYPE_Q8_K}; return 1;
    case GGML_TYPE_Q5_K: *q = (qinfo){32, 0, 1, 0, GGML_TYPE_Q8_K}; return 1;
    case GGML_TYPE_Q6_K: *q = (qinfo){16, 32, 0, 0, GGML_TYPE_Q8_K}; return 1;
    default: return 0;
    }
}

uint32_t quant_act_type(uint32_t t)
{
    if (t == QUANT_TYPE_NF4) return t;
    qinfo q;
    if (qinfo_get(t, &q)) return q.act;
    if (t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16) return t;
    return 0xFFFFFFFFu;
}

/* bytes of one sub-block of a panel: the words, then dw[16], then mw[16] */
static size_t sub_bytes(const qinfo *q, int nib)
{
    return (size_t)q->S * (nib ? 8 : 16) + 64 + (q->min ? 64 : 0);
}

/* ------------------------------------------------------ decode to levels */

/* u (IC bytes), dw, mw (IC/S floats) of one row stored as type t */
static void decode_row(uint32_t t, const void *row, int IC, uint8_t *u, float *dw, float *mw)
{
    switch (t) {
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
        for (int b = 0; b < IC / 32; b++) {
            const uint8_t *qs;
            if (t == GGML_TYPE_Q4_0) {
                const blk_q4_0 *x = (const blk_q4_0 *)row + b;
                dw[b] = quant_f16_to_f32(x->d);
                qs = x->qs;
            } else {
                const blk_q4_1 *x = (const blk_q4_1 *)row + b;
                dw[b] = quant_f16_to_f32(x->d);
                mw[b] = quant_f16_to_f32(x->m);
                qs = x->qs;
            }
            for (int j = 0; j < 16; j++) {
                u[32 * b + j] = qs[j] & 0xf;
                u[32 * b + j + 16] = qs[j] >> 4;
            }
        }
        return;
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
        for (int b = 0; b < IC / 32; b++) {
            const uint8_t *qs, *qhb;
            if (t == GGML_TYPE_Q5_0) {
                const blk_q5_0 *x = (const blk_q5_0 *)row + b;
                dw[b] = quant_f16_to_f32(x->d);
                qs = x->qs; qhb = x->qh;
            } else {
                const blk_q5_1 *x = (const blk_q5_1 *)row + b;
                dw[b] = quant_f16_to_f32(x->d);
                mw[b] = quant_f16_to_f32(x->m);
                qs = x->qs; qhb = x->qh;
            }
            uint32_t qh = (uint32_t)qhb[0] | (uint32_t)qhb[1] << 8 | (uint32_t)qhb[2] << 16 | (uint32_t)qhb[3] << 24;
            for (int j = 0; j < 16; j++) {
                u[32 * b + j] = (uint8_t)((qs[j] & 0xf) | ((qh >> j) & 1) << 4);
                u[32 * b + j + 16] = (uint8_t)((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
            }
        }
        return;
    case GGML_TYPE_Q8_0:
        for (int b = 0; b < IC / 32; b++) {
            const blk_q8_0 *x = (const blk_q8_0 *)row + b;
            dw[b] = quant_f16_to_f32(x->d);
            for (int j = 0; j < 32; j++) u[32 * b + j] = (uint8_t)(x->qs[j] ^ 0x80);   /* q + 128 */
        }
        return;
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
        for (int b = 0; b < IC / 256; b++) {
            const uint8_t *scales, *qs, *qh = NULL;
            uint16_t d16, dm16;
            if (t == GGML_TYPE_Q4_K) {
                const blk_q4_k *x = (const blk_q4_k *)row + b;
                scales = x->scales; qs = x->qs; d16 = x->d; dm16 = x->dmin;
            } else {
                const blk_q5_k *x = (const blk_q5_k *)row + b;
                scales = x->scales; qs = x->qs; qh = x->qh; d16 = x->d; dm16 = x->dmin;
            }
            float d = quant_f16_to_f32(d16), dmin = quant_f16_to_f32(dm16);
            for (int j = 0; j < 8; j++) {
                int sc, m;
                quant_k_scale_min(scales, j, &sc, &m);
                dw[8 * b + j] = d * (float)sc;
                mw[8 * b + j] = -(dmin * (float)m);
                const uint8_t *q = qs + (j / 2) * 32;
                int sh = (j & 1) * 4;
                uint8_t *o = u + 256 * b + 32 * j;
                for (int l = 0; l < 32; l++)
                    o[l] = (uint8_t)(((q[l] >> sh) & 0xf) | (qh ? ((qh[l] >> j) & 1) << 4 : 0));
            }
        }
        return;
    case GGML_TYPE_Q6_K:
        for (int b = 0; b < IC / 256; b++) {
            const blk_q6_k *x = (const blk_q6_k *)row + b;
            float d = quant_f16_to_f32(x->d);
            for (int j = 0; j < 16; j++) dw[16 * b + j] = d * (float)x->scales[j];
            for (int v = 0; v < 256; v++) u[256 * b + v] = (uint8_t)quant_q6k_value(x, v);
        }
        return;
    default:
        return;
    }
}

/* one panel (the sub-blocks of 16 rows) from the levels of rows [0, nr);
 * rows nr..15 are zero (their outputs are not stored). u: 16 rows of IC;
 * dw, mw: 16 rows of nsb. */
static void build_panel(uint8_t *P, const qinfo *q, int nib, const uint8_t *u, const float *dw,
                        const float *mw, int nr, int IC)
{
    const int S = q->S, nsb = IC / S, W = S / 4;
    const size_t sb = sub_bytes(q, nib), words = (size_t)S * (nib ? 8 : 16);
    /* 4 values of a row at a time (a 32-bit move); nibble words pair word k
     * (low nibbles) with word k + W/2 (high): levels <= 15, so one shift and
     * or per 4 values, no carries between bytes */
    for (int r = 0; r < QG; r++) {
        const uint8_t *ur = u + (size_t)r * IC;
        for (int s = 0; s < nsb; s++) {
            uint8_t *p = P + (size_t)s * sb + r * 4;
            float *pd = (float *)(P + (size_t)s * sb + words) + r, *pm = pd + 16;
            for (int k = 0; k < (nib ? W / 2 : W); k++) {
                uint32_t v = 0, h = 0;
                if (r < nr) {
                    memcpy(&v, ur + (size_t)s * S + 4 * k, 4);
                    if (nib) {
                        memcpy(&h, ur + (size_t)s * S + 4 * (k + W / 2), 4);
                        v |= h << 4;
                    }
                }
                memcpy(p + (size_t)k * 64, &v, 4);
            }
            *pd = r < nr ? dw[(size_t)r * nsb + s] : 0.0f;
            if (q->min) *pm = r < nr ? mw[(size_t)r * nsb + s] : 0.0f;
        }
    }
}

/* Q4_0 / Q4_1 (nibble panel) and Q8_0 without the detour through levels:
 * a block's qs byte i holds values i and i+16 in its nibbles, which is the
 * nibble word's pairing (word k, k + S/8), so word k of a row is qs[4k..4k+3]
 * as stored; Q8_0's word k is q[4k..4k+3] + 128 (the top bit flipped). */
static int fast_panel(uint8_t *P, const qinfo *q, uint32_t t, const void *w, size_t row_bytes, int r0, int nr,
                      int IC, int nib)
{
    if (!((t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q4_1) && nib) && t != GGML_TYPE_Q8_0) return 0;
    const int nsb = IC / 32;
    const size_t sb = sub_bytes(q, nib), words = (size_t)32 * (nib ? 8 : 16);
    /* row by row, each row read in order; rows nr..15 are zero */
    for (int r = 0; r < QG; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)(r0 + r) * row_bytes;
        for (int s = 0; s < nsb; s++) {
            uint8_t *p = P + (size_t)s * sb + r * 4;
            float *pd = (float *)(P + (size_t)s * sb + words) + r, *pm = pd + 16;
            if (r >= nr) {
                for (int k = 0; k < (nib ? 4 : 8); k++) memset(p + (size_t)k * 64, 0, 4);
                *pd = 0.0f;
                if (q->min) *pm = 0.0f;
            } else if (t == GGML_TYPE_Q8_0) {
                const blk_q8_0 *x = (const blk_q8_0 *)row + s;
                for (int k = 0; k < 8; k++) {
                    uint32_t v;
                    memcpy(&v, x->qs + 4 * k, 4);
                    v ^= 0x80808080u;
                    memcpy(p + (size_t)k * 64, &v, 4);
                }
                *pd = quant_h2f(x->d);
            } else if (t == GGML_TYPE_Q4_0) {
                const blk_q4_0 *x = (const blk_q4_0 *)row + s;
                for (int k = 0; k < 4; k++) memcpy(p + (size_t)k * 64, x->qs + 4 * k, 4);
                *pd = quant_h2f(x->d);
            } else {
                const blk_q4_1 *x = (const blk_q4_1 *)row + s;
                for (int k = 0; k < 4; k++) memcpy(p + (size_t)k * 64, x->qs + 4 * k, 4);
                *pd = quant_h2f(x->d);
                *pm = quant_h2f(x->m);
            }
        }
    }
    return 1;
}

/* the panel of rows [r0, r0 + nr) of a weight in its ggml layout; tmp holds
 * 16 * (IC + 8 nsb) bytes */
static void decode_panel(uint8_t *P, uint8_t *tmp, const qinfo *q, uint32_t t, const void *w,
                         size_t row_bytes, int r0, int nr, int IC, int nib)
{
    if (fast_panel(P, q, t, w, row_bytes, r0, nr, IC, nib)) return;
    const int nsb = IC / q->S;
    uint8_t *u = tmp;
    float *dw = (float *)(tmp + (size_t)QG * IC), *mw = dw + (size_t)QG * nsb;
    for (int r = 0; r < nr; r++)
        decode_row(t, (const uint8_t *)w + (size_t)(r0 + r) * row_bytes, IC, u + (size_t)r * IC,
                   dw + (size_t)r * nsb, mw + (size_t)r * nsb);
    build_panel(P, q, nib, u, dw, mw, nr, IC);
}

/* ---------------------------------------------------- quantised activations */

/* Activations of N tokens: q (N rows of ldq int8), and per token and
 * sub-block da (the dequantisation scale), ac = -off * sum q (where the int32
 * sums start) and as = da * sum q (what mw multiplies). */
typedef struct {
    const int8_t *q;
    const float *ad, *as;
    const int32_t *ac;
    size_t ldq;
    int nsb, S, min, signed8;
} qact;

static size_t act_bytes(int N, int IC, int nsb)
{
    size_t ldq = ((size_t)IC + 63) & ~(size_t)63;
    return (size_t)N * ldq + 3 * (((size_t)N * nsb * 4 + 63) & ~(size_t)63);
}

static void act_layout(qact *a, void *buf, int N, int IC, const qinfo *q)
{
    int nsb = IC / q->S;
    size_t ldq = ((size_t)IC + 63) & ~(size_t)63, fl = ((size_t)N * nsb * 4 + 63) & ~(size_t)63;
    uint8_t *b = buf;
    a->q = (const int8_t *)b;
    a->ad = (const float *)(b + (size_t)N * ldq);
    a->as = (const float *)(b + (size_t)N * ldq + fl);
    a->ac = (const int32_t *)(b + (size_t)N * ldq + 2 * fl);
    a->ldq = ldq;
    a->nsb = nsb;
    a->S = q->S;
    a->min = q->min;
    a->signed8 = q->off == 128;
}

#if KERN_X86
/* round half away from zero, exactly roundf: t = trunc(v), then one more
 * step away from zero where |v - t| >= 0.5 (v - t is exact) */
KERN_AVX512 static inline __m512 round_away512(__m512 v)
{
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_abs_ps(_mm512_sub_ps(v, t));
    __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));
    return _mm512_mask_add_ps(t, up, t, one);
}

/* quant_q8_0_block / quant_q8_k_block on AVX-512, the same bits: the blocks
 * of one row (q: the int8 levels, ad: per block the dequantisation scale) */
KERN_AVX512 static void act_q8_avx512(const float *x, int IC, int8_t *qq, float *ad, int k)
{
    if (!k) {
        for (int b = 0; b < IC / 32; b++) {
            __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m512 vi = _mm512_set1_ps(id);
            __m512i q0 = _mm512_cvttps_epi32(round_away512(_mm512_mul_ps(x0, vi)));
            __m512i q1 = _mm512_cvttps_epi32(round_away512(_mm512_mul_ps(x1, vi)));
            _mm_storeu_si128((__m128i *)(qq + 32 * b), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(qq + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
            ad[b] = quant_f16_to_f32(quant_f32_to_f16(d));
        }
        return;
    }
    for (int b = 0; b < IC / 256; b++) {
        const float *xb = x + 256 * b;
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < 256; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xb + j)));
        float amax = _mm512_reduce_max_ps(m), max = 0.0f;
        for (int j = 0; j < 256; j++)
            if (__builtin_fabsf(xb[j]) == amax) { max = xb[j]; break; }   /* the first of largest magnitude */
        if (max == 0.0f) {
            memset(qq + 256 * b, 0, 256);
            ad[b] = 0.0f;
            continue;
        }
        float iscale = -128.0f / max;
        __m512 vi = _mm512_set1_ps(iscale);
        for (int j = 0; j < 256; j += 16) {
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(vi, _mm512_loadu_ps(xb + j)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_min_ps(v, _mm512_set1_ps(127.0f));
            _mm_storeu_si128((__m128i *)(qq + 256 * b + j), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
        }
        ad[b] = 1.0f / iscale;
    }
}
#endif

/* quantise token n: exactly quant_quantize_row(q->act) */
static void act_quantise_row(const qact *a, const qinfo *q, const float *x, int IC, int n)
{
    int8_t *qq = (int8_t *)a->q + (size_t)n * a->ldq;
    float *ad = (float *)a->ad + (size_t)n * a->nsb, *as = (float *)a->as + (size_t)n * a->nsb;
    int32_t *ac = (int32_t *)a->ac + (size_t)n * a->nsb;
    const int S = q->S;
#if KERN_X86
    if (kern_isa_level >= KERNELS_ISA_AVX512) {
        const int k = q->act == GGML_TYPE_Q8_K;
        act_q8_avx512(x, IC, qq, ad, k);
        if (k)   /* the 256-block scale for each sub-block, last block first (in place) */
            for (int s = IC / S - 1; s >= 0; s--) ad[s] = ad[s / (256 / S)];
    } else
#endif
    if (q->act == GGML_TYPE_Q8_0) {
        for (int b = 0; b < IC / 32; b++) {
            blk_q8_0 blk;
            quant_q8_0_block(x + 32 * b, &blk);
            memcpy(qq + 32 * b, blk.qs, 32);
            ad[b] = quant_f16_to_f32(blk.d);
        }
    } else {
        for (int b = 0; b < IC / 256; b++) {
            blk_q8_k blk;
            quant_q8_k_block(x + 256 * b, &blk);
            memcpy(qq + 256 * b, blk.qs, 256);
            for (int s = 0; s < 256 / S; s++) ad[b * (256 / S) + s] = blk.d;
        }
    }
    for (int s = 0; s < IC / S; s++) {
        int32_t sum = 0;
        for (int j = 0; j < S; j++) sum += qq[s * S + j];
        ac[s] = -q->off * sum;
        as[s] = ad[s] * (float)sum;
    }
}

/* ---------------------------------------------------------- micro-kernels */

/* out[r * ldo + c] for tokens r0 .. r0+R and panel rows c < nc. The portable
 * one does per lane exactly what a vector lane does: int32 sum per
 * sub-block; t = float(sum) * da; acc = acc + t * dw; acc = acc + mw * as. */
static void mk_portable(const qact *a, const uint8_t *P, int nib, int r0, int R, float *out, size_t ldo, int nc)
{
    const int S = a->S, W = S / 4, nsb = a->nsb;
    const size_t sb = (size_t)S * (nib ? 8 : 16) + 64 + (a->min ? 64 : 0);
    for (int r = 0; r < R; r++) {
        const int8_t *aq = a->q + (size_t)(r0 + r) * a->ldq;
        const size_t ai = (size_t)(r0 + r) * nsb;
        float acc[QG] = { 0 };
        for (int s = 0; s < nsb; s++) {
            const uint8_t *p = P + (size_t)s * sb;
            const float *pd = (const float *)(p + (size_t)S * (nib ? 8 : 16)), *pm = pd + 16;
            int32_t isum[QG];
            for (int c = 0; c < QG; c++) isum[c] = a->ac[ai + s];
            for (int k = 0; k < W; k++) {
                const int8_t *x = aq + s * S + 4 * k;
                for (int c = 0; c < QG; c++) {
                    int32_t t = 0;
                    for (int j = 0; j < 4; j++) {
                        int u;
                        if (!nib) u = p[(size_t)k * 64 + c * 4 + j];
                        else if (k < W / 2) u = p[(size_t)k * 64 + c * 4 + j] & 0xf;
                        else u = p[(size_t)(k - W / 2) * 64 + c * 4 + j] >> 4;
                        t += u * x[j];
                    }
                    isum[c] += t;
                }
            }
            float da = a->ad[ai + s], as = a->as[ai + s];
            for (int c = 0; c < QG; c++) {
                float t = (float)isum[c] * da;
                acc[c] = acc[c] + t * pd[c];
                if (a->min) acc[c] = acc[c] + pm[c] * as;
            }
        }
        for (int c = 0; c < nc; c++) out[(size_t)r * ldo + c] = acc[c];
    }
}

#if KERN_X86
static inline int32_t load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* AVX-512: 16 panel rows per zmm, R <= 8 tokens. VNNI: vpdpbusd; else
 * vpmaddubsw + vpmaddwd (pairs of u * q fit int16: u <= 63 and |q| <= 128;
 * for Q8_0, u - 128 is signed and the activations are negated where it is
 * negative so vpmaddubsw sees |u - 128| <= 128 against |q| <= 127). */
#define U8 _Pragma("GCC unroll 8")
#define MK512_BODY(DOT)                                                                     \
    const int S = a->S, W = S / 4, nsb = a->nsb, min = a->min;                              \
    const size_t words = (size_t)S * (NIB ? 8 : 16), sb = words + 64 + (min ? 64 : 0);      \
    const int8_t *aq[8];                                                                    \
    __m512 acc[8];                                                                          \
    U8 for (int r = 0; r < R; r++) {                                                           \
        aq[r] = a->q + (size_t)(r0 + r) * a->ldq;                                           \
        acc[r] = _mm512_setzero_ps();                                                       \
    }                                                                                       \
    const __m512i m4 = _mm512_set1_epi8(0x0f);                                              \
    for (int s = 0; s < nsb; s++) {                                                         \
        const uint8_t *p = P + (size_t)s * sb;                                              \
        /* with few tokens the sums of a sub-block would be one chain of    \
         * dependent vpdpbusd: two chains (added at the end, exactly) */    \
        const int SPLIT = R <= 2;                                                           \
        __m512i is[8], is2[8];                                                              \
        U8 for (int r = 0; r < R; r++) {                                                       \
            is[r] = SIGNED8 ? _mm512_setzero_si512()                                        \
                            : _mm512_set1_epi32(a->ac[(size_t)(r0 + r) * nsb + s]);         \
            is2[r] = _mm512_setzero_si512();                                                \
        }                                                                                   \
        if (NIB) {                                                                          \
            U8 for (int k = 0; k < W / 2; k++) {                                               \
                __m512i x = _mm512_load_si512((const void *)(p + (size_t)k * 64));          \
                __m512i wl = _mm512_and_si512(x, m4);                                       \
                __m512i wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);                 \
                U8 for (int r = 0; r < R; r++) {                                               \
                    DOT(is[r], wl, _mm512_set1_epi32(load4(aq[r] + s * S + 4 * k)));        \
                    if (SPLIT) DOT(is2[r], wh, _mm512_set1_epi32(load4(aq[r] + s * S + 4 * (k + W / 2)))); \
                    else DOT(is[r], wh, _mm512_set1_epi32(load4(aq[r] + s * S + 4 * (k + W / 2)))); \
                }                                                                           \
            }                                                                               \
        } else {                                                                            \
            U8 for (int k = 0; k < W; k++) {                                                   \
                __m512i w = _mm512_load_si512((const void *)(p + (size_t)k * 64));          \
                U8 for (int r = 0; r < R; r++) {                                               \
                    if (SPLIT && (k & 1)) DOT(is2[r], w, _mm512_set1_epi32(load4(aq[r] + s * S + 4 * k))); \
                    else DOT(is[r], w, _mm512_set1_epi32(load4(aq[r] + s * S + 4 * k)));    \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        if (SPLIT) U8 for (int r = 0; r < R; r++) is[r] = _mm512_add_epi32(is[r], is2[r]);    \
        const __m512 dw = _mm512_load_ps((const float *)(p + words));                       \
        U8 for (int r = 0; r < R; r++) {                                                       \
            __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(is[r]),                             \
                                     _mm512_set1_ps(a->ad[(size_t)(r0 + r) * nsb + s]));    \
            acc[r] = _mm512_fmadd_ps(t, dw, acc[r]);                                        \
        }                                                                                   \
        if (min) {                                                                          \
            const __m512 mw = _mm512_load_ps((const float *)(p + words + 64));              \
            U8 for (int r = 0; r < R; r++)                                                     \
                acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(a->as[(size_t)(r0 + r) * nsb + s]), acc[r]); \
        }                                                                                   \
    }                                                                                       \
    const __mmask16 mk = (__mmask16)((1u << nc) - 1);                                       \
    U8 for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(out + (size_t)r * ldo, mk, acc[r]);

#define DOT_VNNI(acc, w, x) ((acc) = _mm512_dpbusd_epi32((acc), (w), (x)))
#define DOT_BW(acc, w, x) do {                                                              \
        __m512i w_ = (w), x_ = (x);                                                         \
        if (SIGNED8) {                                                                      \
            w_ = _mm512_xor_si512(w_, _mm512_set1_epi8((char)0x80));                        \
            __mmask64 neg_ = _mm512_movepi8_mask(w_);                                       \
            x_ = _mm512_mask_sub_epi8(x_, neg_, _mm512_setzero_si512(), x_);                \
            w_ = _mm512_abs_epi8(w_);                                                       \
        }                                                                                   \
        (acc) = _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16(w_, x_),     \
                                                          _mm512_set1_epi16(1)));           \
    } while (0)
#define DOT_VNNI_S(acc, w, x) do {                                                          \
        (void)SIGNED8; DOT_VNNI(acc, w, x);                                                 \
    } while (0)

#define KERN_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")))
KERN_VNNI KERN_INLINE void mk512v_body(const qact *a, const uint8_t *P, int r0, float *out, size_t ldo, int nc,
                                       const int R, const int NIB)
{
    /* VNNI works on u directly: the -off sum q start covers every type */
    const int SIGNED8 = 0;
    MK512_BODY(DOT_VNNI_S)
}
KERN_AVX512 KERN_INLINE void mk512b_body(const qact *a, const uint8_t *P, int r0, float *out, size_t ldo, int nc,
                                         const int R, const int NIB, const int SIGNED8)
{
    MK512_BODY(DOT_BW)
}

KERN_VNNI static void mk_avx512vnni(const qact *a, const uint8_t *P, int nib, int r0, int R, float *out,
                                    size_t ldo, int nc)
{
    for (; R > 0; ) {
        int r = R >= 8 ? 8 : R >= 4 ? 4 : R >= 2 ? 2 : 1;
        if (nib) {
            if (r == 8) mk512v_body(a, P, r0, out, ldo, nc, 8, 1);
            else if (r == 4) mk512v_body(a, P, r0, out, ldo, nc, 4, 1);
            else if (r == 2) mk512v_body(a, P, r0, out, ldo, nc, 2, 1);
            else mk512v_body(a, P, r0, out, ldo, nc, 1, 1);
        } else {
            if (r == 8) mk512v_body(a, P, r0, out, ldo, nc, 8, 0);
            else if (r == 4) mk512v_body(a, P, r0, out, ldo, nc, 4, 0);
            else if (r == 2) mk512v_body(a, P, r0, out, ldo, nc, 2, 0);
            else mk512v_body(a, P, r0, out, ldo, nc, 1, 0);
        }
        R -= r; r0 += r; out += (size_t)r * ldo;
    }
}

KERN_AVX512 static void mk_avx512bw(const qact *a, const uint8_t *P, int nib, int r0, int R, float *out,
                                    size_t ldo, int nc)
{
    for (; R > 0; ) {
        int r = R >= 4 ? 4 : R >= 2 ? 2 : 1;
        if (a->signed8) {
            if (r == 4) mk512b_body(a, P, r0, out, ldo, nc, 4, 0, 1);
            else if (r == 2) mk512b_body(a, P, r0, out, ldo, nc, 2, 0, 1);
            else mk512b_body(a, P, r0, out, ldo, nc, 1, 0, 1);
        } else if (nib) {
            if (r == 4) mk512b_body(a, P, r0, out, ldo, nc, 4, 1, 0);
            else if (r == 2) mk512b_body(a, P, r0, out, ldo, nc, 2, 1, 0);
            else mk512b_body(a, P, r0, out, ldo, nc, 1, 1, 0);
        } else {
            if (r == 4) mk512b_body(a, P, r0, out, ldo, nc, 4, 0, 0);
            else if (r == 2) mk512b_body(a, P, r0, out, ldo, nc, 2, 0, 0);
            else mk512b_body(a, P, r0, out, ldo, nc, 1, 0, 0);
        }
        R -= r; r0 += r; out += (size_t)r * ldo;
    }
}

/* AVX2: the panel's 16 rows as two halves of 8 lanes (bytes 32h..32h+31 of
 * each word), R <= 4 tokens, vpmaddubsw + vpmaddwd as above (psignb for
 * Q8_0). */
KERN_AVX2 KERN_INLINE void mk256_body(const qact *a, const uint8_t *P, int r0, float *out, size_t ldo, int nc,
                                      const int R, const int NIB, const int SIGNED8)
{
    const int S = a->S, W = S / 4, nsb = a->nsb, min = a->min;
    const size_t words = (size_t)S * (NIB ? 8 : 16), sb = words + 64 + (min ? 64 : 0);
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    for (int h = 0; h < 2; h++) {
        const int8_t *aq[4];
        __m256 acc[4];
        U8 for (int r = 0; r < R; r++) {
            aq[r] = a->q + (size_t)(r0 + r) * a->ldq;
            acc[r] = _mm256_setzero_ps();
        }
        for (int s = 0; s < nsb; s++) {
            const uint8_t *p = P + (size_t)s * sb + 32 * h;
            __m256i is[4];
            U8 for (int r = 0; r < R; r++)
                is[r] = SIGNED8 ? _mm256_setzero_si256() : _mm256_set1_epi32(a->ac[(size_t)(r0 + r) * nsb + s]);
            U8 for (int k = 0; k < W; k++) {
                __m256i w;
                if (!NIB) w = _mm256_load_si256((const __m256i *)(p + (size_t)k * 64));
                else if (k < W / 2) w = _mm256_and_si256(_mm256_load_si256((const __m256i *)(p + (size_t)k * 64)), m4);
                else w = _mm256_and_si256(_mm256_srli_epi16(_mm256_load_si256((const __m256i *)(p + (size_t)(k - W / 2) * 64)), 4), m4);
                __m256i wa = w;
                if (SIGNED8) {
                    w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
                    wa = _mm256_abs_epi8(w);
                }
                U8 for (int r = 0; r < R; r++) {
                    __m256i x = _mm256_set1_epi32(load4(aq[r] + s * S + 4 * k));
                    if (SIGNED8) x = _mm256_sign_epi8(x, w);
                    is[r] = _mm256_add_epi32(is[r], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, x), ones));
                }
            }
            const __m256 dw = _mm256_loadu_ps((const float *)(P + (size_t)s * sb + words) + 8 * h);
            U8 for (int r = 0; r < R; r++) {
                __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(is[r]), _mm256_set1_ps(a->ad[(size_t)(r0 + r) * nsb + s]));
                acc[r] = _mm256_fmadd_ps(t, dw, acc[r]);
            }
            if (min) {
                const __m256 mw = _mm256_loadu_ps((const float *)(P + (size_t)s * sb + words + 64) + 8 * h);
                U8 for (int r = 0; r < R; r++)
                    acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a->as[(size_t)(r0 + r) * nsb + s]), acc[r]);
            }
        }
        int n = nc - 8 * h;
        n = n < 0 ? 0 : n > 8 ? 8 : n;
        U8 for (int r = 0; r < R; r++) {
            float tmp[8];
            _mm256_storeu_ps(tmp, acc[r]);
            memcpy(out + (size_t)r * ldo + 8 * h, tmp, (size_t)n * 4);
        }
    }
}

KERN_AVX2 static void mk_avx2(const qact *a, const uint8_t *P, int nib, int r0, int R, float *out, size_t ldo, int nc)
{
    for (; R > 0; ) {
        int r = R >= 4 ? 4 : R >= 2 ? 2 : 1;
        if (a->signed8) {
            if (r == 4) mk256_body(a, P, r0, out, ldo, nc, 4, 0, 1);
            else if (r == 2) mk256_body(a, P, r0, out, ldo, nc, 2, 0, 1);
            else mk256_body(a, P, r0, out, ldo, nc, 1, 0, 1);
        } else if (nib) {
            if (r == 4) mk256_body(a, P, r0, out, ldo, nc, 4, 1, 0);
            else if (r == 2) mk256_body(a, P, r0, out, ldo, nc, 2, 1, 0);
            else mk256_body(a, P, r0, out, ldo, nc, 1, 1, 0);
        } else {
            if (r == 4) mk256_body(a, P, r0, out, ldo, nc, 4, 0, 0);
            else if (r == 2) mk256_body(a, P, r0, out, ldo, nc, 2, 0, 0);
            else mk256_body(a, P, r0, out, ldo, nc, 1, 0, 0);
        }
        R -= r; r0 += r; out += (size_t)r * ldo;
    }
}
#endif

typedef void (*mk_fn)(const qact *, const uint8_t *, int, int, int, float *, size_t, int);

static int vnni_state = -1;   /* -1: not yet asked; 0/1 */
static int vnni_allowed = 1;

static int have_vnni(void)
{
#if KERN_X86
    if (vnni_state < 0) {
        __builtin_cpu_init();
        vnni_state = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    return vnni_state && vnni_allowed;
#else
    return 0;
#endif
}

int quant_set_vnni(int on)
{
    if (on >= 0) vnni_allowed = on != 0;
    return have_vnni();
}

static mk_fn pick_mk(void)
{
#if KERN_X86
    if (kern_isa_level >= KERNELS_ISA_AVX512) return have_vnni() ? mk_avx512vnni : mk_avx512bw;
    if (kern_isa_level >= KERNELS_ISA_AVX2) return mk_avx2;
#endif
    return mk_portable;
}

/* -------------------------------------------------------------- drivers */

struct quant_packed {
    uint32_t type;
    int IC, OC, G, nib;
    qinfo q;
    size_t group_bytes;
    uint8_t *data;
};

/* the quantised path: w raw (ggml rows) or pk packed */
static int qmatmul(float *out, const float *inp, const void *w, const quant_packed *pk, uint32_t type,
                   int N, int IC, int OC, const quant_epilogue *epi)
{
    qinfo q;
    if (!qinfo_get(type, &q)) return QUANT_EUNSUPPORTED;
    const int blk = ggml_traits(type)->block;
    if (N < 0 || IC <= 0 || OC < 0 || IC % blk) return QUANT_EUNSUPPORTED;
    if (N == 0 || OC == 0) return 0;
    const int nsb = IC / q.S, G = (OC + QG - 1) / QG;
    /* the raw path builds the packed layout's panels, so both give the same bits */
    const int nib = q.nib;
    const size_t gbytes = (size_t)nsb * sub_bytes(&q, nib);
    const size_t tmpb = ((size_t)QG * IC + (size_t)QG * nsb * 8 + 63) & ~(size_t)63;
    const size_t per_thread = pk ? 0 : ((gbytes + 63) & ~(size_t)63) + tmpb;
    const size_t abytes = (act_bytes(N, IC, nsb) + 63) & ~(size_t)63;
    const int NC = (N + QNB - 1) / QNB;
    const long tiles = (long)G * NC;
    int nt = omp_get_max_threads();
    if (nt > tiles) nt = (int)tiles;
    /* below ~200k multiply-adds per thread the fork/join costs more than it saves */
    const double macs = (double)N * IC * OC;
    if (nt > 1 && macs < 2e5 * nt) nt = macs < 4e5 ? 1 : (int)(macs / 2e5);
    if (nt < 1) nt = 1;
    uint8_t *buf = kern_scratch(abytes + (size_t)nt * per_thread);
    if (!buf) return QUANT_ENOMEM;
    qact a;
    act_layout(&a, buf, N, IC, &q);
    const mk_fn mk = pick_mk();
    const size_t row_bytes = ggml_row_bytes(type, IC);
    /* one parallel region per call (a fork/join costs microseconds, as much as
     * a small decode-time product): the activations first, then the tiles */
    #pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        for (int n = (int)((long)N * tid / nth); n < (int)((long)N * (tid + 1) / nth); n++)
            act_quantise_row(&a, &q, inp + (size_t)n * IC, IC, n);
        #pragma omp barrier
        uint8_t *panel = buf + abytes + (size_t)tid * per_thread, *tmp = panel + ((gbytes + 63) & ~(size_t)63);
        /* contiguous tiles, group-major: each group decoded once per thread */
        long t0 = tiles * tid / nth, t1 = tiles * (tid + 1) / nth;
        int last = -1;
        for (long t = t0; t < t1; t++) {
            int g = (int)(t / NC), c = (int)(t % NC);
            int nr = OC - g * QG < QG ? OC - g * QG : QG;
            const uint8_t *P;
            if (pk) P = pk->data + (size_t)g * pk->group_bytes;
            else {
                if (g != last) decode_panel(panel, tmp, &q, type, w, row_bytes, g * QG, nr, IC, nib);
                P = panel;
            }
            last = g;
            int n0 = c * QNB, n1 = n0 + QNB < N ? n0 + QNB : N;
            mk(&a, P, nib, n0, n1 - n0, out + (size_t)n0 * OC + (size_t)g * QG, (size_t)OC, nr);
        }
        /* one token chunk: this thread's tiles are whole groups, so the
         * columns [t0 QG, t1 QG) are its alone */
        if (epi && NC == 1 && t1 > t0) {
            int o1 = (int)t1 * QG < OC ? (int)t1 * QG : OC;
            epi->fn(epi->ctx, (int)t0 * QG, o1);
        }
    }
    if (epi && NC > 1) epi->fn(epi->ctx, 0, OC);
    return 0;
}

/* rows [r0, r1) of out (N, OC) = inp (N rows, N <= FROWS_N) . W rows, fp32
 * dots with fixed lanes (OpenBLAS's sgemv splits the sum between threads:
 * results would depend on the thread count). F32 and BF16 rows are read in
 * place (bf16 widened in registers: exact products), 64 lanes at a time so
 * that four vector accumulators hide the FMA latency, the lanes then summed
 * in a fixed tree; F16 rows are widened into tmp (IC floats) first. Decoding
 * is this: every weight byte read once per token, the inputs from L1. */
#define FROWS_N 4
#define FROWS_L 64
KERN_INLINE float frow_lanes_sum(float *acc)
{
    for (int u = 0; u < 16; u++) acc[u] = (acc[u] + acc[u + 16]) + (acc[u + 32] + acc[u + 48]);
    for (int u = 0; u < 8; u++) acc[u] += acc[u + 8];
    for (int u = 0; u < 4; u++) acc[u] += acc[u + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}
KERN_INLINE void fdot_rows_body(float *out, const float *inp, int N, const void *w, uint32_t type, int IC, int OC,
                                int r0, int r1, float *tmp, const int F)
{
    const size_t rb = ggml_row_bytes(type, IC);
    for (int r = r0; r < r1; r++) {
        const void *row = (const uint8_t *)w + (size_t)r * rb;
        const float *wf = type == GGML_TYPE_F32 ? row : tmp;
        const uint16_t *wb = type == GGML_TYPE_BF16 ? row : NULL;
        if (type == GGML_TYPE_F16) quant_dequantize_row(type, row, tmp, IC);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * IC;
            float acc[FROWS_L] = {0}, tail = 0;
            int j = 0;
            if (wb) {
                for (; j + FROWS_L <= IC; j += FROWS_L)
                    for (int u = 0; u < FROWS_L; u++) {
                        union { uint32_t i; float f; } c = { (uint32_t)wb[j + u] << 16 };
                        acc[u] = kern_madd(x[j + u], c.f, acc[u], F);
                    }
                for (; j < IC; j++) {
                    union { uint32_t i; float f; } c = { (uint32_t)wb[j] << 16 };
                    tail = kern_madd(x[j], c.f, tail, F);
                }
            } else {
                for (; j + FROWS_L <= IC; j += FROWS_L)
                    for (int u = 0; u < FROWS_L; u++) acc[u] = kern_madd(x[j + u], wf[j + u], acc[u], F);
                for (; j < IC; j++) tail = kern_madd(x[j], wf[j], tail, F);
            }
            out[(size_t)n * OC + r] = frow_lanes_sum(acc) + tail;
        }
    }
}
KERN_TIERS(fdot_rows, (float *out, const float *inp, int N, const void *w, uint32_t type, int IC, int OC, int r0,
                       int r1, float *tmp), out, inp, N, w, type, IC, OC, r0, r1, tmp)

/* F16 / BF16 / F32 weights: fp32 products */
/* rows [c0, c0+nr) of a block-quantised (or F16/BF16) W into wf (nr, IC) fp32, rows in parallel */
static void dequant_chunk(uint32_t type, const void *w, size_t row_bytes, int c0, int nr, int IC, float *wf)
{
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < nr; r++)
        quant_dequantize_row(type, (const uint8_t *)w + (size_t)(c0 + r) * row_bytes, wf + (size_t)r * IC, IC);
}

static int fmatmul(float *out, const float *inp, const void *w, uint32_t type, int N, int IC, int OC)
{
    if (N < 0 || IC <= 0 || OC < 0) return QUANT_EUNSUPPORTED;
    if (N == 0 || OC == 0) return 0;
    if (N <= FROWS_N) {
        void (*f)(float *, const float *, int, const void *, uint32_t, int, int, int, int, float *) = KERN_PICK(fdot_rows);
        int fail = 0;
        #pragma omp parallel reduction(|: fail) if ((size_t)OC * IC > 65536)
        {
            size_t a, b;
            kern_split((size_t)OC, &a, &b);
            float *tmp = type != GGML_TYPE_F16 || a == b ? NULL : kern_scratch((size_t)IC * 4);
            if (type == GGML_TYPE_F16 && a < b && !tmp) fail = 1;
            else f(out, inp, N, w, type, IC, OC, (int)a, (int)b, tmp);
        }
        return fail ? QUANT_ENOMEM : 0;
    }
    if (type == GGML_TYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, w, IC, 0.0f, out, OC);
        return 0;
    }
    /* fp16/bf16: chunks of rows converted to fp32 (in parallel), then one
     * sgemm per chunk; the chunk boundaries do not depend on the thread count */
    const size_t row_bytes = ggml_row_bytes(type, IC);
    int rc = (int)(262144 / IC);
    rc = rc < 16 ? 16 : rc > 512 ? 512 : rc;
    float *wf = kern_scratch((size_t)rc * IC * 4);
    if (!wf) return QUANT_ENOMEM;
    for (int c0 = 0; c0 < OC; c0 += rc) {
        int nr = OC - c0 < rc ? OC - c0 : rc;
        dequant_chunk(type, w, row_bytes, c0, nr, IC, wf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, nr, IC, 1.0f, inp, IC, wf, IC, 0.0f, out + c0, OC);
    }
    return 0;
}

/* NF4 weights (QUANT_TYPE_NF4): the shapes must be the tensor's */
static int nf4_shape_ok(const void *w, int IC, int OC)
{
    const nf4_tensor *t = w;
    return t && t->cols == IC && t->rows == OC;
}

int quant_matmul(float *out, const float *inp, const void *w, uint32_t type, int N, int IC, int OC)
{
    if (type == QUANT_TYPE_NF4) {
        if (!nf4_shape_ok(w, IC, OC)) return QUANT_EUNSUPPORTED;
        int rc = nf4_matmul(out, inp, w, N);
        return rc == NF4_ENOMEM ? QUANT_ENOMEM : rc ? QUANT_EUNSUPPORTED : 0;
    }
    if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16)
        return fmatmul(out, inp, w, type, N, IC, OC);
    return qmatmul(out, inp, w, NULL, type, N, IC, OC, NULL);
}

int quant_matmul_backward_input(float *dinp, const float *dout, const void *w, uint32_t type,
                                int N, int IC, int OC, int accumulate)
{
    if (type == QUANT_TYPE_NF4) {
        if (!nf4_shape_ok(w, IC, OC)) return QUANT_EUNSUPPORTED;
        int rc = nf4_matmul_backward_input(dinp, dout, w, N, accumulate);
        return rc == NF4_ENOMEM ? QUANT_ENOMEM : rc ? QUANT_EUNSUPPORTED : 0;
    }
    const ggml_type_traits *tr = ggml_traits(type);
    if (!tr || !tr->supported || type == GGML_TYPE_Q8_K || N < 0 || IC <= 0 || OC < 0 || IC % tr->block)
        return QUANT_EUNSUPPORTED;
    if (N == 0) return 0;
    if (OC == 0) {
        if (!accumulate) memset(dinp, 0, (size_t)N * IC * 4);
        return 0;
    }
    if (type == GGML_TYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, w, IC,
                    accumulate ? 1.0f : 0.0f, dinp, IC);
        return 0;
    }
    /* chunks of rows of W dequantised (in parallel) into ~1 MiB, each
     * followed by dinp += dout[:, chunk] @ W[chunk]; fixed chunk boundaries */
    const size_t row_bytes = ggml_row_bytes(type, IC);
    int rc = (int)(262144 / IC);
    rc = rc < 16 ? 16 : rc > 512 ? 512 : rc;
    float *wf;
    uint16_t *pk;
    if (matmul_bf16_chunk_scratch(IC, rc, &wf, &pk)) {   /* the bf16 path: each chunk on the bf16 kernels */
        for (int c0 = 0; c0 < OC; c0 += rc) {
            int nr = OC - c0 < rc ? OC - c0 : rc;
            dequant_chunk(type, w, row_bytes, c0, nr, IC, wf);
            matmul_bf16_backward_chunk(dinp, dout + c0, OC, wf, pk, N, IC, nr, accumulate || c0 > 0);
        }
        return 0;
    }
    wf = kern_scratch((size_t)rc * IC * 4);
    if (!wf) return QUANT_ENOMEM;
    for (int c0 = 0; c0 < OC; c0 += rc) {
        int nr = OC - c0 < rc ? OC - c0 : rc;
        dequant_chunk(type, w, row_bytes, c0, nr, IC, wf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, nr, 1.0f, dout + c0, OC, wf, IC,
                    accumulate || c0 > 0 ? 1.0f : 0.0f, dinp, IC);
    }
    return 0;
}

/* ------------------------------------------------------------- packing */

quant_packed *quant_pack(const void *w, uint32_t type, int IC, int OC)
{
    qinfo q;
    if (!qinfo_get(type, &q) || IC <= 0 || OC <= 0 || IC % ggml_traits(type)->block) return NULL;
    quant_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    const int nsb = IC / q.S;
    p->type = type; p->IC = IC; p->OC = OC; p->q = q; p->nib = q.nib;
    p->G = (OC + QG - 1) / QG;
    p->group_bytes = (size_t)nsb * sub_bytes(&q, p->nib);
    p->data = aligned_alloc(64, (size_t)p->G * p->group_bytes);
    uint8_t *tmp = malloc((size_t)QG * IC + (size_t)QG * nsb * 8);
    if (!p->data || !tmp) {
        free(tmp);
        quant_packed_free(p);
        return NULL;
    }
    const size_t row_bytes = ggml_row_bytes(type, IC);
    for (int g = 0; g < p->G; g++) {
        int nr = OC - g * QG < QG ? OC - g * QG : QG;
        decode_panel(p->data + (size_t)g * p->group_bytes, tmp, &q, type, w, row_bytes, g * QG, nr, IC, p->nib);
    }
    free(tmp);
    return p;
}

void quant_packed_free(quant_packed *p)
{
    if (!p) return;
    free(p->data);
    free(p);
}

size_t quant_packed_bytes(const quant_packed *p)
{
    return p ? sizeof *p + (size_t)p->G * p->group_bytes : 0;
}

int quant_matmul_packed(float *out, const float *inp, const quant_packed *w, int N)
{
    if (!w) return QUANT_EUNSUPPORTED;
    return qmatmul(out, inp, NULL, w, w->type, N, w->IC, w->OC, NULL);
}

int quant_matmul_packed_epi(float *out, const float *inp, const quant_packed *w, int N, const quant_epilogue *epi)
{
    if (!w) return QUANT_EUNSUPPORTED;
    return qmatmul(out, inp, NULL, w, w->type, N, w->IC, w->OC, epi);
}
