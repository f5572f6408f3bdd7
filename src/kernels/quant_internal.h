/* quant_internal.h: block layouts of the GGUF quant types, shared by quant.c
 * (dequantise, quantise) and quant_matmul.c (the kernels). Bytes exactly as
 * ggml stores them; fp16 fields are raw bit patterns. */
#ifndef PEFTC_QUANT_INTERNAL_H
#define PEFTC_QUANT_INTERNAL_H

#include <stdint.h>

/* legacy quants: 32 values per block, value j in the low nibble of qs[j]
 * (j < 16) or the high nibble of qs[j-16]; Q5's fifth bit of value j is bit j
 * of qh (little-endian 32 bits) */
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;             /* d * (q - 8) */
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;          /* d * q + m */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;       /* d * (q - 16) */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;    /* d * q + m */
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;               /* d * q */

/* K-quants: super-blocks of 256. Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit
 * scale sc and min m (quant_k_scale_min): value = (d*sc) q - (dmin*m);
 * sub-block j's 4 low bits are the low (j even) or high (j odd) nibbles of
 * qs[32*(j/2) .. +32), Q5_K's fifth bit of value l of sub-block j is bit j
 * of qh[l]. Q6_K: 16 sub-blocks of 16 with int8 scales, value = (d*sc)(q-32),
 * q's 4 low bits in ql and 2 high bits in qh (quant_q6k_value). Q8_K: fp32 d,
 * int8 q, and the sums of each 16 q (the activation format). */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_k;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_k;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_k;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } blk_q8_k;

void quant_k_scale_min(const uint8_t *scales, int j, int *sc, int *m);

/* the 6-bit q (0..63) of value v (0..255) of a Q6_K block: each half of 128
 * values has 64 ql bytes (values 0..63 of the half in their low nibbles,
 * 64..127 in the high ones) and 32 qh bytes (bits 2g..2g+1 of qh[l] belong
 * to value 32g + l) */
static inline int quant_q6k_value(const blk_q6_k *x, int v)
{
    int h = v >> 7, i = v & 127, g = i >> 5, l = i & 31;
    int lo = (x->ql[h * 64 + (i & 63)] >> ((i >> 6) * 4)) & 0xf;
    int hi = (x->qh[h * 32 + l] >> (2 * g)) & 3;
    return lo | hi << 4;
}

/* fp16 -> fp32 inline (quant_f16_to_f32's bits) for the decoders' inner loops */
static inline float quant_h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
    float f;
    if (e == 0x1f) x = sign | 0x7f800000u | (m << 13);
    else if (e) x = sign | ((e + 112) << 23) | (m << 13);
    else {
        f = (float)m * 5.9604644775390625e-8f;
        __builtin_memcpy(&x, &f, 4);
        x |= sign;
    }
    __builtin_memcpy(&f, &x, 4);
    return f;
}

void quant_q8_0_block(const float *x, blk_q8_0 *y);
void quant_q8_k_block(const float *x, blk_q8_k *y);

#endif
