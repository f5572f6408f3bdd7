/* quant.c: the GGUF block formats (byte layouts of ggml, learnt from the
 * format's description and the gguf Python package's numpy code), fp16
 * conversion, dequantisation of every supported type and the reference
 * quantisers of the types that have one. The matmul kernels are in
 * quant_matmul.c.
 *
 * The layouts are spelt as structs whose sizes are checked against
 * io/ggml_types.h; scales are fp16 bit patterns read through memcpy-free
 * uint16_t fields (every field sits at its natural alignment within the block,
 * and blocks are at least 2-byte aligned in a GGUF file).
 *
 * Numerics: the dequantisers do the same fp32 operations in the same order as
 * ggml (and gguf-py): e.g. Q4_K is (d*sc)*q - (dmin*m), two roundings, never
 * one fused multiply-add (the project builds with -std=c11, which makes GCC
 * keep a*b+c as two roundings unless asked). */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

_Static_assert(sizeof(blk_q4_0) == 18, "q4_0");
_Static_assert(sizeof(blk_q4_1) == 20, "q4_1");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0");
_Static_assert(sizeof(blk_q5_1) == 24, "q5_1");
_Static_assert(sizeof(blk_q8_0) == 34, "q8_0");
_Static_assert(sizeof(blk_q4_k) == 144, "q4_k");
_Static_assert(sizeof(blk_q5_k) == 176, "q5_k");
_Static_assert(sizeof(blk_q6_k) == 210, "q6_k");
_Static_assert(sizeof(blk_q8_k) == 292, "q8_k");

float quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
    if (e == 0x1f) x = sign | 0x7f800000u | (m << 13);          /* inf, NaN */
    else if (e) x = sign | ((e + 112) << 23) | (m << 13);       /* normal: rebias 15 -> 127 */
    else {                                                       /* zero, subnormal: m * 2^-24, exact */
        float f = (float)m * 5.9604644775390625e-8f;
        memcpy(&x, &f, 4);
        x |= sign;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t quant_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);   /* NaN stays NaN */
    if (ax >= 0x477ff000u) return sign | 0x7c00;   /* >= 65520 (halfway past 65504, odd): inf */
    if (ax < 0x38800000u) {
        /* below 2^-14, the half subnormals: v * 2^24 is exact and < 1024, and
         * rounding it to an integer (nearest even, the default mode) is the
         * encoding; 1024 is the smallest normal, also correct */
        float v;
        memcpy(&v, &ax, 4);
        return sign | (uint16_t)nearbyintf(v * 16777216.0f);
    }
    uint32_t r = ax - 0x38000000u;                 /* rebias 127 -> 15 */
    r += 0xfff + ((r >> 13) & 1);                  /* round to nearest even; a carry bumps the exponent */
    return sign | (uint16_t)(r >> 13);
}

static inline float bf16_to_f32(uint16_t b)
{
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);   /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ------------------------------------------------------------ dequantise */

void quant_k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    /* 8 six-bit scales and mins in 12 bytes: the first four of each in the
     * low 6 bits of bytes 0..3 (scales) and 4..7 (mins); the last four split
     * into a nibble of bytes 8..11 and the top 2 bits of bytes 0..7 */
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

int64_t quant_find_nonfinite(uint32_t type, const void *src, int64_t n, const char **field, float *val)
{
    /* the float fields of each block type: byte offset in the block, name;
     * fp16 unless the type is Q8_K (fp32 d) */
    static const struct { uint32_t type; int off[2]; const char *name[2]; int n; } tab[] = {
        {GGML_TYPE_Q4_0, {offsetof(blk_q4_0, d)}, {"d"}, 1},
        {GGML_TYPE_Q4_1, {offsetof(blk_q4_1, d), offsetof(blk_q4_1, m)}, {"d", "m"}, 2},
        {GGML_TYPE_Q5_0, {offsetof(blk_q5_0, d)}, {"d"}, 1},
        {GGML_TYPE_Q5_1, {offsetof(blk_q5_1, d), offsetof(blk_q5_1, m)}, {"d", "m"}, 2},
        {GGML_TYPE_Q8_0, {offsetof(blk_q8_0, d)}, {"d"}, 1},
        {GGML_TYPE_Q4_K, {offsetof(blk_q4_k, d), offsetof(blk_q4_k, dmin)}, {"d", "dmin"}, 2},
        {GGML_TYPE_Q5_K, {offsetof(blk_q5_k, d), offsetof(blk_q5_k, dmin)}, {"d", "dmin"}, 2},
        {GGML_TYPE_Q6_K, {offsetof(blk_q6_k, d)}, {"d"}, 1},
        {GGML_TYPE_Q8_K, {offsetof(blk_q8_k, d)}, {"d"}, 1},
    };
    const ggml_type_traits *tr = ggml_traits(type);
    if (!tr || n < 0 || n % tr->block) return -2;
    const unsigned char *p = src;
    *field = "value";
    if (type == GGML_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) { memcpy(val, &u, 4); return i; }
        }
        return -1;
    }
    if (type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
        uint16_t mask = type == GGML_TYPE_F16 ? 0x7c00 : 0x7f80;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if ((h & mask) == mask) { *val = type == GGML_TYPE_F16 ? quant_f16_to_f32(h) : bf16_to_f32(h); return i; }
        }
        return -1;
    }
    for (size_t k = 0; k < sizeof tab / sizeof tab[0]; k++) {
        if (tab[k].type != type) continue;
        const int64_t nb = n / tr->block;
        for (int64_t b = 0; b < nb; b++) {
            const unsigned char *blk = p + (size_t)b * (size_t)tr->bytes;
            for (int f = 0; f < tab[k].n; f++) {
                if (type == GGML_TYPE_Q8_K) {
                    uint32_t u;
                    memcpy(&u, blk + tab[k].off[f], 4);
                    if ((u & 0x7f800000u) != 0x7f800000u) continue;
                    memcpy(val, &u, 4);
                } else {
                    uint16_t h;
                    memcpy(&h, blk + tab[k].off[f], 2);
                    if ((h & 0x7c00) != 0x7c00) continue;
                    *val = quant_f16_to_f32(h);
                }
                *field = tab[k].name[f];
                return b * tr->block;
            }
        }
        return -1;
    }
    return -2;   /* a type peftc knows but does not read (Q2_K, Q3_K, Q8_1) */
}

int quant_dequantize_row(uint32_t type, const void *src, float *y, int64_t n)
{
    const ggml_type_traits *tr = ggml_traits(type);
    if (!tr || !tr->supported || n < 0 || n % tr->block) return QUANT_EUNSUPPORTED;
    const int64_t nb = n / tr->block;
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(y, src, (size_t)n * 4);
        return 0;
    case GGML_TYPE_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) y[i] = quant_f16_to_f32(h[i]);
        return 0;
    }
    case GGML_TYPE_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(h[i]);
        return 0;
    }
    case GGML_TYPE_Q4_0:
        for (int64_t b = 0; b < nb; b++, y += 32) {
            const blk_q4_0 *x = (const blk_q4_0 *)src + b;
            float d = quant_f16_to_f32(x->d);
            for (int j = 0; j < 16; j++) {
                y[j] = d * (float)((x->qs[j] & 0xf) - 8);
                y[j + 16] = d * (float)((x->qs[j] >> 4) - 8);
            }
        }
        return 0;
    case GGML_TYPE_Q4_1:
        for (int64_t b = 0; b < nb; b++, y += 32) {
            const blk_q4_1 *x = (const blk_q4_1 *)src + b;
            float d = quant_f16_to_f32(x->d), m = quant_f16_to_f32(x->m);
            for (int j = 0; j < 16; j++) {
                y[j] = d * (float)(x->qs[j] & 0xf) + m;
                y[j + 16] = d * (float)(x->qs[j] >> 4) + m;
            }
        }
        return 0;
    case GGML_TYPE_Q5_0:
        for (int64_t b = 0; b < nb; b++, y += 32) {
            const blk_q5_0 *x = (const blk_q5_0 *)src + b;
            float d = quant_f16_to_f32(x->d);
            uint32_t qh = (uint32_t)x->qh[0] | (uint32_t)x->qh[1] << 8 | (uint32_t)x->qh[2] << 16 |
                          (uint32_t)x->qh[3] << 24;
            for (int j = 0; j < 16; j++) {
                int lo = (x->qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
                int hi = (x->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
                y[j] = d * (float)(lo - 16);
                y[j + 16] = d * (float)(hi - 16);
            }
        }
        return 0;
    case GGML_TYPE_Q5_1:
        for (int64_t b = 0; b < nb; b++, y += 32) {
            const blk_q5_1 *x = (const blk_q5_1 *)src + b;
            float d = quant_f16_to_f32(x->d), m = quant_f16_to_f32(x->m);
            uint32_t qh = (uint32_t)x->qh[0] | (uint32_t)x->qh[1] << 8 | (uint32_t)x->qh[2] << 16 |
                          (uint32_t)x->qh[3] << 24;
            for (int j = 0; j < 16; j++) {
                int lo = (x->qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
                int hi = (x->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
                y[j] = d * (float)lo + m;
                y[j + 16] = d * (float)hi + m;
            }
        }
        return 0;
    case GGML_TYPE_Q8_0:
        for (int64_t b = 0; b < nb; b++, y += 32) {
            const blk_q8_0 *x = (const blk_q8_0 *)src + b;
            float d = quant_f16_to_f32(x->d);
            for (int j = 0; j < 32; j++) y[j] = (float)x->qs[j] * d;
        }
        return 0;
    case GGML_TYPE_Q4_K:
        for (int64_t b = 0; b < nb; b++) {
            const blk_q4_k *x = (const blk_q4_k *)src + b;
            float d = quant_f16_to_f32(x->d), dmin = quant_f16_to_f32(x->dmin);
            for (int j = 0; j < 8; j++, y += 32) {
                int sc, m;
                quant_k_scale_min(x->scales, j, &sc, &m);
                float dl = d * (float)sc, ml = dmin * (float)m;
                const uint8_t *q = x->qs + (j / 2) * 32;
                int sh = (j & 1) * 4;
                for (int l = 0; l < 32; l++) y[l] = dl * (float)((q[l] >> sh) & 0xf) - ml;
            }
        }
        return 0;
    case GGML_TYPE_Q5_K:
        for (int64_t b = 0; b < nb; b++) {
            const blk_q5_k *x = (const blk_q5_k *)src + b;
            float d = quant_f16_to_f32(x->d), dmin = quant_f16_to_f32(x->dmin);
            for (int j = 0; j < 8; j++, y += 32) {
                int sc, m;
                quant_k_scale_min(x->scales, j, &sc, &m);
                float dl = d * (float)sc, ml = dmin * (float)m;
                const uint8_t *q = x->qs + (j / 2) * 32;
                int sh = (j & 1) * 4;
                for (int l = 0; l < 32; l++) {
                    int v = ((q[l] >> sh) & 0xf) | ((x->qh[l] >> j) & 1) << 4;
                    y[l] = dl * (float)v - ml;
                }
            }
        }
        return 0;
    case GGML_TYPE_Q6_K:
        for (int64_t b = 0; b < nb; b++) {
            const blk_q6_k *x = (const blk_q6_k *)src + b;
            float d = quant_f16_to_f32(x->d);
            for (int v = 0; v < 256; v++) y[v] = d * (float)x->scales[v / 16] * (float)(quant_q6k_value(x, v) - 32);
            y += 256;
        }
        return 0;
    case GGML_TYPE_Q8_K:
        for (int64_t b = 0; b < nb; b++, y += 256) {
            const blk_q8_k *x = (const blk_q8_k *)src + b;
            for (int j = 0; j < 256; j++) y[j] = x->d * (float)x->qs[j];
        }
        return 0;
    default:
        return QUANT_EUNSUPPORTED;
    }
}

/* -------------------------------------------------------------- quantise */

/* ggml / gguf-py's roundf: half away from zero */
static inline float round_away(float v) { return roundf(v); }

/* the value of largest magnitude (the first of equal magnitudes), with its sign */
static inline float signed_absmax(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        if (a > amax) { amax = a; max = x[j]; }
    }
    return max;
}

void quant_q8_0_block(const float *x, blk_q8_0 *y)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = quant_f32_to_f16(d);
    for (int j = 0; j < 32; j++) y->qs[j] = (int8_t)round_away(x[j] * id);
}

void quant_q8_k_block(const float *x, blk_q8_k *y)
{
    float max = signed_absmax(x, 256);
    if (max == 0.0f) {
        memset(y, 0, sizeof *y);
        return;
    }
    /* -128 at the extreme value: one more level than +-127 on the side that
     * has it; the other side clamps at 127 */
    float iscale = -128.0f / max;
    for (int j = 0; j < 256; j++) {
        float v = nearbyintf(iscale * x[j]);
        y->qs[j] = (int8_t)(v > 127.0f ? 127 : v);
    }
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += y->qs[g * 16 + l];
        y->bsums[g] = (int16_t)s;
    }
    y->d = 1.0f / iscale;
}

/* q = trunc(x * id + bias) clipped to [0, top], as the reference's (uint8) cast */
static inline uint8_t qclip(float v, int top)
{
    float t = truncf(v);
    if (!(t >= 0.0f)) return 0;     /* NaN too */
    return t > (float)top ? (uint8_t)top : (uint8_t)t;
}

int quant_quantize_row(uint32_t type, const float *x, void *dst, int64_t n)
{
    const ggml_type_traits *tr = ggml_traits(type);
    if (!tr || n < 0 || n % tr->block) return QUANT_EUNSUPPORTED;
    const int64_t nb = n / tr->block;
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, x, (size_t)n * 4);
        return 0;
    case GGML_TYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = quant_f32_to_f16(x[i]);
        return 0;
    case GGML_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_bf16(x[i]);
        return 0;
    case GGML_TYPE_Q8_0:
        for (int64_t b = 0; b < nb; b++) quant_q8_0_block(x + 32 * b, (blk_q8_0 *)dst + b);
        return 0;
    case GGML_TYPE_Q8_K:
        for (int64_t b = 0; b < nb; b++) quant_q8_k_block(x + 256 * b, (blk_q8_k *)dst + b);
        return 0;
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q5_0: {
        const int five = type == GGML_TYPE_Q5_0;
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + 32 * b;
            /* the extreme value maps to level 0: d = max / -8 (-16) */
            float d = signed_absmax(xb, 32) / (five ? -16.0f : -8.0f);
            float id = d != 0.0f ? 1.0f / d : 0.0f;
            uint8_t q[32];
            for (int j = 0; j < 32; j++) q[j] = qclip(xb[j] * id + (five ? 16.5f : 8.5f), five ? 31 : 15);
            if (five) {
                blk_q5_0 *y = (blk_q5_0 *)dst + b;
                y->d = quant_f32_to_f16(d);
                uint32_t qh = 0;
                for (int j = 0; j < 32; j++) qh |= (uint32_t)(q[j] >> 4) << j;
                for (int j = 0; j < 4; j++) y->qh[j] = (uint8_t)(qh >> (8 * j));
                for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)((q[j] & 0xf) | (q[j + 16] << 4));
            } else {
                blk_q4_0 *y = (blk_q4_0 *)dst + b;
                y->d = quant_f32_to_f16(d);
                for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
            }
        }
        return 0;
    }
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_1: {
        const int five = type == GGML_TYPE_Q5_1;
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + 32 * b;
            float mn = xb[0], mx = xb[0];
            for (int j = 1; j < 32; j++) {
                mn = xb[j] < mn ? xb[j] : mn;
                mx = xb[j] > mx ? xb[j] : mx;
            }
            float d = (mx - mn) / (five ? 31.0f : 15.0f);
            float id = d != 0.0f ? 1.0f / d : 0.0f;
            uint8_t q[32];
            for (int j = 0; j < 32; j++) q[j] = qclip((xb[j] - mn) * id + 0.5f, five ? 31 : 15);
            if (five) {
                blk_q5_1 *y = (blk_q5_1 *)dst + b;
                y->d = quant_f32_to_f16(d);
                y->m = quant_f32_to_f16(mn);
                uint32_t qh = 0;
                for (int j = 0; j < 32; j++) qh |= (uint32_t)(q[j] >> 4) << j;
                for (int j = 0; j < 4; j++) y->qh[j] = (uint8_t)(qh >> (8 * j));
                for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)((q[j] & 0xf) | (q[j + 16] << 4));
            } else {
                blk_q4_1 *y = (blk_q4_1 *)dst + b;
                y->d = quant_f32_to_f16(d);
                y->m = quant_f32_to_f16(mn);
                for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
            }
        }
        return 0;
    }
    default:
        return QUANT_EUNSUPPORTED;
    }
}
