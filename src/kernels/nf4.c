/* nf4.c: NF4 quantisation as bitsandbytes computes it (see nf4.h), its
 * double quantisation, and the matmul kernels over the 4-bit blocks. */
#define PEFTC_KERNELS_INTERNAL
#include "kernels/nf4.h"
#include "kernels/kernels.h"
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && !defined(PEFTC_KERNELS_NO_X86)
#include <immintrin.h>
#endif

/* bitsandbytes' _NF4_QUANT_TABLE (backends/utils.py), float32 */
const float nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* bitsandbytes' create_dynamic_map() (signed, 7 exponent bits, 8 bits) as the
 * float32 tensor it returns: its values depend on torch.linspace's float32
 * rounding, so they are written out rather than recomputed (the test checks
 * every entry against bitsandbytes). */
static const float dynamic_map[256] = {
    -0x1.fc66660000000p-1f, -0x1.f533340000000p-1f, -0x1.ee00000000000p-1f, -0x1.e6cccc0000000p-1f, -0x1.df999a0000000p-1f, -0x1.d866660000000p-1f,
    -0x1.d133340000000p-1f, -0x1.ca00000000000p-1f, -0x1.c2cccc0000000p-1f, -0x1.bb999a0000000p-1f, -0x1.b466660000000p-1f, -0x1.ad33340000000p-1f,
    -0x1.a600000000000p-1f, -0x1.9ecccc0000000p-1f, -0x1.97999a0000000p-1f, -0x1.9066660000000p-1f, -0x1.8933340000000p-1f, -0x1.8200000000000p-1f,
    -0x1.7acccc0000000p-1f, -0x1.73999a0000000p-1f, -0x1.6c66680000000p-1f, -0x1.6533340000000p-1f, -0x1.5e00000000000p-1f, -0x1.56cccc0000000p-1f,
    -0x1.4f999a0000000p-1f, -0x1.4866680000000p-1f, -0x1.4133340000000p-1f, -0x1.3a00000000000p-1f, -0x1.32cccc0000000p-1f, -0x1.2b999a0000000p-1f,
    -0x1.2466680000000p-1f, -0x1.1d33340000000p-1f, -0x1.1600000000000p-1f, -0x1.0ecccc0000000p-1f, -0x1.0799980000000p-1f, -0x1.0066660000000p-1f,
    -0x1.f266640000000p-2f, -0x1.e400000000000p-2f, -0x1.d599980000000p-2f, -0x1.c733340000000p-2f, -0x1.b8cccc0000000p-2f, -0x1.aa66660000000p-2f,
    -0x1.9c00000000000p-2f, -0x1.8d99980000000p-2f, -0x1.7f33340000000p-2f, -0x1.70cccc0000000p-2f, -0x1.6266660000000p-2f, -0x1.5400000000000p-2f,
    -0x1.4599980000000p-2f, -0x1.3733340000000p-2f, -0x1.28cccc0000000p-2f, -0x1.1a66680000000p-2f, -0x1.0c00000000000p-2f, -0x1.fb33320000000p-3f,
    -0x1.de66660000000p-3f, -0x1.c1999a0000000p-3f, -0x1.a4cccc0000000p-3f, -0x1.8800000000000p-3f, -0x1.6b33340000000p-3f, -0x1.4e66660000000p-3f,
    -0x1.31999a0000000p-3f, -0x1.14cccc0000000p-3f, -0x1.f000000000000p-4f, -0x1.b666680000000p-4f, -0x1.93d70a0000000p-4f, -0x1.8851ee0000000p-4f,
    -0x1.7cccce0000000p-4f, -0x1.7147ae0000000p-4f, -0x1.65c2900000000p-4f, -0x1.5a3d700000000p-4f, -0x1.4eb8540000000p-4f, -0x1.4333340000000p-4f,
    -0x1.37ae140000000p-4f, -0x1.2c28f60000000p-4f, -0x1.20a3d60000000p-4f, -0x1.151eba0000000p-4f, -0x1.09999a0000000p-4f, -0x1.fc28f60000000p-5f,
    -0x1.e51eba0000000p-5f, -0x1.ce147a0000000p-5f, -0x1.b70a3e0000000p-5f, -0x1.a000000000000p-5f, -0x1.88f5c20000000p-5f, -0x1.71eb860000000p-5f,
    -0x1.5ae1460000000p-5f, -0x1.43d70a0000000p-5f, -0x1.2cccce0000000p-5f, -0x1.15c2900000000p-5f, -0x1.fd70a40000000p-6f, -0x1.cf5c2a0000000p-6f,
    -0x1.a147ae0000000p-6f, -0x1.7333340000000p-6f, -0x1.451eba0000000p-6f, -0x1.170a3e0000000p-6f, -0x1.d1eb860000000p-7f, -0x1.75c2900000000p-7f,
    -0x1.3e76c80000000p-7f, -0x1.2c08300000000p-7f, -0x1.19999a0000000p-7f, -0x1.072b020000000p-7f, -0x1.e978d40000000p-8f, -0x1.c49ba60000000p-8f,
    -0x1.9fbe760000000p-8f, -0x1.7ae1480000000p-8f, -0x1.56041a0000000p-8f, -0x1.3126e80000000p-8f, -0x1.0c49ba0000000p-8f, -0x1.ced9140000000p-9f,
    -0x1.851eb80000000p-9f, -0x1.3b645a0000000p-9f, -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f, -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f,
    -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f, -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f,
    -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f, -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f,
    -0x1.27476e0000000p-21f, 0x0.0p+0f, 0x1.27476e0000000p-21f, 0x1.b435280000000p-19f, 0x1.040bfe0000000p-17f, 0x1.64840c0000000p-16f,
    0x1.6f00680000000p-15f, 0x1.15df660000000p-14f, 0x1.743e960000000p-14f, 0x1.47ae160000000p-13f, 0x1.19ce0a0000000p-12f, 0x1.8fc5060000000p-12f,
    0x1.02de020000000p-11f, 0x1.3dd9820000000p-11f, 0x1.78d5000000000p-11f, 0x1.b3d07c0000000p-11f, 0x1.eecbfe0000000p-11f, 0x1.4fdf3a0000000p-10f,
    0x1.e353f80000000p-10f, 0x1.3b645a0000000p-9f, 0x1.851eb80000000p-9f, 0x1.ced9140000000p-9f, 0x1.0c49ba0000000p-8f, 0x1.3126e80000000p-8f,
    0x1.56041a0000000p-8f, 0x1.7ae1480000000p-8f, 0x1.9fbe760000000p-8f, 0x1.c49ba60000000p-8f, 0x1.e978d40000000p-8f, 0x1.072b020000000p-7f,
    0x1.19999a0000000p-7f, 0x1.2c08300000000p-7f, 0x1.3e76c80000000p-7f, 0x1.75c2900000000p-7f, 0x1.d1eb860000000p-7f, 0x1.170a3e0000000p-6f,
    0x1.451eba0000000p-6f, 0x1.7333340000000p-6f, 0x1.a147ae0000000p-6f, 0x1.cf5c2a0000000p-6f, 0x1.fd70a40000000p-6f, 0x1.15c2900000000p-5f,
    0x1.2cccce0000000p-5f, 0x1.43d70a0000000p-5f, 0x1.5ae1460000000p-5f, 0x1.71eb860000000p-5f, 0x1.88f5c20000000p-5f, 0x1.a000000000000p-5f,
    0x1.b70a3e0000000p-5f, 0x1.ce147a0000000p-5f, 0x1.e51eba0000000p-5f, 0x1.fc28f60000000p-5f, 0x1.09999a0000000p-4f, 0x1.151eba0000000p-4f,
    0x1.20a3d60000000p-4f, 0x1.2c28f60000000p-4f, 0x1.37ae140000000p-4f, 0x1.4333340000000p-4f, 0x1.4eb8540000000p-4f, 0x1.5a3d700000000p-4f,
    0x1.65c2900000000p-4f, 0x1.7147ae0000000p-4f, 0x1.7cccce0000000p-4f, 0x1.8851ee0000000p-4f, 0x1.93d70a0000000p-4f, 0x1.b666680000000p-4f,
    0x1.f000000000000p-4f, 0x1.14cccc0000000p-3f, 0x1.31999a0000000p-3f, 0x1.4e66660000000p-3f, 0x1.6b33340000000p-3f, 0x1.8800000000000p-3f,
    0x1.a4cccc0000000p-3f, 0x1.c1999a0000000p-3f, 0x1.de66660000000p-3f, 0x1.fb33320000000p-3f, 0x1.0c00000000000p-2f, 0x1.1a66680000000p-2f,
    0x1.28cccc0000000p-2f, 0x1.3733340000000p-2f, 0x1.4599980000000p-2f, 0x1.5400000000000p-2f, 0x1.6266660000000p-2f, 0x1.70cccc0000000p-2f,
    0x1.7f33340000000p-2f, 0x1.8d99980000000p-2f, 0x1.9c00000000000p-2f, 0x1.aa66660000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c733340000000p-2f,
    0x1.d599980000000p-2f, 0x1.e400000000000p-2f, 0x1.f266640000000p-2f, 0x1.0066660000000p-1f, 0x1.0799980000000p-1f, 0x1.0ecccc0000000p-1f,
    0x1.1600000000000p-1f, 0x1.1d33340000000p-1f, 0x1.2466680000000p-1f, 0x1.2b999a0000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3a00000000000p-1f,
    0x1.4133340000000p-1f, 0x1.4866680000000p-1f, 0x1.4f999a0000000p-1f, 0x1.56cccc0000000p-1f, 0x1.5e00000000000p-1f, 0x1.6533340000000p-1f,
    0x1.6c66680000000p-1f, 0x1.73999a0000000p-1f, 0x1.7acccc0000000p-1f, 0x1.8200000000000p-1f, 0x1.8933340000000p-1f, 0x1.9066660000000p-1f,
    0x1.97999a0000000p-1f, 0x1.9ecccc0000000p-1f, 0x1.a600000000000p-1f, 0x1.ad33340000000p-1f, 0x1.b466660000000p-1f, 0x1.bb999a0000000p-1f,
    0x1.c2cccc0000000p-1f, 0x1.ca00000000000p-1f, 0x1.d133340000000p-1f, 0x1.d866660000000p-1f, 0x1.df999a0000000p-1f, 0x1.e6cccc0000000p-1f,
    0x1.ee00000000000p-1f, 0x1.f533340000000p-1f, 0x1.fc66660000000p-1f, 0x1.0000000000000p+0f,
};

const float *nf4_dynamic_code(void) { return dynamic_map; }

/* ------------------------------------------------------------ quantise */

/* torch.bucketize(v, midpoints) with right=False: the number of midpoints
 * strictly below v, the midpoints (c[i] + c[i+1]) / 2 in float32 */
static int nf4_index(float v, const float *mid)
{
    int q = 0;
    while (q < 15 && mid[q] < v) q++;
    return q;
}

/* bitsandbytes' CPU blockwise 8-bit quantiser (csrc/cpu_ops.cpp,
 * quantize_cpu_impl): [-1, 1] cut into 65536 bins, each bin mapped once to
 * the code whose midpoints enclose it; a value v * (1/absmax) then takes its
 * bin's code. (Not always the nearest code: the bins are what bitsandbytes
 * computes, so they are what is reproduced.) */
#define DYN_LUT 65536
static void dyn_lut_build(uint8_t *lut)
{
    float mid[255];
    for (int i = 0; i < 255; i++) mid[i] = 0.5f * (dynamic_map[i] + dynamic_map[i + 1]);
    int c = 0;
    for (int i = 0; i < DYN_LUT; i++) {
        float v = -1.0f + (2.0f * (float)i) / (float)(DYN_LUT - 1);
        while (c < 255 && mid[c] < v) c++;
        lut[i] = (uint8_t)c;
    }
}

static inline int dyn_bin(float v)
{
    v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
    float t = (v + 1.0f) * 0.5f;
    t = t * (float)(DYN_LUT - 1);
    return (int)(t + 0.5f);
}

/* torch.sum of a float32 vector as its CPU kernel adds (SumKernel.cpp,
 * cascade_sum: 8-lane vectors, 4 independent rows of them summed in
 * cascading levels, then the rows, the scalar tail and the lanes), so that
 * the mean is bitsandbytes' offset to the last bit. One chunk: torch splits
 * the sum between threads only above 32768 values. */
#define TS_L 8
static void ts_add(float *a, const float *b) { for (int l = 0; l < TS_L; l++) a[l] += b[l]; }
static float torch_sum_f32(const float *x, int64_t n)
{
    if (n < TS_L) {
        /* fewer values than a vector: the scalar row_sum (4 partial sums
         * of x[4i+k], the tail onto the first, then the other three) */
        float p4[4] = {0};
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int k = 0; k < 4; k++) p4[k] += x[i + k];
        for (; i < n; i++) p4[0] += x[i];
        return ((p4[0] + p4[1]) + p4[2]) + p4[3];
    }
    const int64_t vs = n / TS_L, sil = vs / 4;
    float ps[4][TS_L] = {{0}};
    if (sil > 0) {
        int64_t lp = 0;
        while (((int64_t)1 << lp) < sil) lp++;          /* ceil(log2(sil)) */
        lp = lp / 4 > 4 ? lp / 4 : 4;
        const int64_t step = (int64_t)1 << lp, mask = step - 1;
        float acc[4][4][TS_L] = {{{0}}};               /* level, row, lane */
        int64_t i = 0;
        for (; i + step <= sil;) {
            for (int64_t j = 0; j < step; j++, i++)
                for (int k = 0; k < 4; k++) ts_add(acc[0][k], x + (i * 4 + k) * TS_L);
            for (int j = 1; j < 4; j++) {
                for (int k = 0; k < 4; k++) { ts_add(acc[j][k], acc[j - 1][k]); memset(acc[j - 1][k], 0, sizeof acc[0][0]); }
                if (i & (mask << (j * lp))) break;
            }
        }
        for (; i < sil; i++)
            for (int k = 0; k < 4; k++) ts_add(acc[0][k], x + (i * 4 + k) * TS_L);
        for (int j = 1; j < 4; j++)
            for (int k = 0; k < 4; k++) ts_add(acc[0][k], acc[j][k]);
        memcpy(ps, acc[0], sizeof ps);
    }
    for (int64_t i = sil * 4; i < vs; i++) ts_add(ps[0], x + i * TS_L);
    for (int k = 1; k < 4; k++) ts_add(ps[0], ps[k]);
    float s = 0;
    for (int64_t k = vs * TS_L; k < n; k++) s += x[k];
    for (int l = 0; l < TS_L; l++) s += ps[0][l];
    return s;
}

void nf4_sizes(int64_t rows, int64_t cols, int double_quant, int64_t *code_bytes, int64_t *n_blocks,
               int64_t *n_blocks2)
{
    int64_t n = rows * cols, nb = (n + NF4_BLOCK - 1) / NF4_BLOCK;
    if (code_bytes) *code_bytes = (n + 1) / 2;
    if (n_blocks) *n_blocks = nb;
    if (n_blocks2) *n_blocks2 = double_quant ? (nb + NF4_BLOCK2 - 1) / NF4_BLOCK2 : 0;
}

int nf4_quantize(nf4_tensor *t, const float *w, int64_t rows, int64_t cols, int double_quant)
{
    memset(t, 0, sizeof *t);
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / 8 / cols) return NF4_EINVAL;
    int64_t cb, nb, nb2;
    nf4_sizes(rows, cols, double_quant, &cb, &nb, &nb2);
    size_t bytes = (size_t)cb + (double_quant ? (size_t)nb + 4 * (size_t)nb2 + 4 * (size_t)nb : 4 * (size_t)nb) + 64;
    uint8_t *mem = malloc(bytes);
    if (!mem) return NF4_ENOMEM;
    t->rows = rows; t->cols = cols; t->n_blocks = nb; t->n_blocks2 = nb2; t->double_quant = double_quant;
    t->mem = mem;
    /* fp32 arrays first (aligned), then the bytes */
    float *am = (float *)mem;                      /* absmax: the result, or scratch for double quant */
    float *am2 = am + nb;
    uint8_t *p = (uint8_t *)(am2 + nb2);
    t->codes = p;
    p += cb;
    const int64_t n = rows * cols;
    float mid[15];
    for (int i = 0; i < 15; i++) mid[i] = (nf4_code[i] + nf4_code[i + 1]) / 2.0f;
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * NF4_BLOCK, e = s + NF4_BLOCK < n ? s + NF4_BLOCK : n;
        float mx = 0;
        for (int64_t i = s; i < e; i++) mx = fmaxf(mx, fabsf(w[i]));
        am[b] = mx;
        /* x * (1 / max(absmax, 1e-38)), clamped to [-1, 1], as bitsandbytes */
        float inv = 1.0f / (mx > 1e-38f ? mx : 1e-38f);
        for (int64_t i = s; i < e; i += 2) {
            float v0 = fminf(fmaxf(w[i] * inv, -1.0f), 1.0f);
            /* an odd count pads the last nibble with 0 (torch pad: bucketize(0) = 7) */
            float v1 = i + 1 < e ? fminf(fmaxf(w[i + 1] * inv, -1.0f), 1.0f) : 0.0f;
            t->codes[i / 2] = (uint8_t)(nf4_index(v0, mid) << 4 | nf4_index(v1, mid));
        }
    }
    if (!double_quant) { t->absmax = am; return 0; }
    /* offset = absmax.mean(): torch's float32 sum, then / n */
    float offset = torch_sum_f32(am, nb) / (float)nb;
    uint8_t *lut = malloc(DYN_LUT);
    if (!lut) { nf4_free(t); return NF4_ENOMEM; }
    dyn_lut_build(lut);
    t->absmax_q = p;
    t->absmax2 = am2;
    t->offset = offset;
    for (int64_t c = 0; c < nb2; c++) {
        int64_t s = c * NF4_BLOCK2, e = s + NF4_BLOCK2 < nb ? s + NF4_BLOCK2 : nb;
        float mx = 0;
        for (int64_t i = s; i < e; i++) mx = fmaxf(mx, fabsf(am[i] - offset));
        am2[c] = mx;
        /* an all-equal group (absmax 0) stores code 0, as bitsandbytes */
        float inv = mx > 0 ? 1.0f / mx : 0;
        for (int64_t i = s; i < e; i++) t->absmax_q[i] = mx > 0 ? lut[dyn_bin((am[i] - offset) * inv)] : 0;
    }
    free(lut);
    return 0;
}

void nf4_borrow(nf4_tensor *t, int64_t rows, int64_t cols, int double_quant, const uint8_t *codes,
                const float *absmax, const uint8_t *absmax_q, const float *absmax2, float offset)
{
    memset(t, 0, sizeof *t);
    t->rows = rows; t->cols = cols; t->double_quant = double_quant;
    nf4_sizes(rows, cols, double_quant, NULL, &t->n_blocks, &t->n_blocks2);
    t->codes = (uint8_t *)codes;
    t->absmax = double_quant ? NULL : (float *)absmax;
    t->absmax_q = double_quant ? (uint8_t *)absmax_q : NULL;
    t->absmax2 = double_quant ? (float *)absmax2 : NULL;
    t->offset = offset;
}

void nf4_free(nf4_tensor *t)
{
    if (!t) return;
    free(t->mem);
    memset(t, 0, sizeof *t);
}

size_t nf4_bytes(const nf4_tensor *t)
{
    int64_t cb, nb, nb2;
    nf4_sizes(t->rows, t->cols, t->double_quant, &cb, &nb, &nb2);
    return (size_t)cb + (t->double_quant ? (size_t)nb + 4 * (size_t)nb2 + 4 : 4 * (size_t)nb);
}

float nf4_block_scale(const nf4_tensor *t, int64_t b)
{
    if (!t->double_quant) return t->absmax[b];
    /* dequantize_blockwise (code[q] * absmax2, with the map as stored: entry
     * 0 is bitsandbytes' -0.99296874), then += offset */
    float a = dynamic_map[t->absmax_q[b]] * t->absmax2[b / NF4_BLOCK2];
    return a + t->offset;
}

int nf4_dequantize_rows(const nf4_tensor *t, int64_t r0, int64_t nr, float *dst)
{
    if (r0 < 0 || nr < 0 || r0 + nr > t->rows) return NF4_EINVAL;
    const int64_t n = t->rows * t->cols, s = r0 * t->cols, e = (r0 + nr) * t->cols;
    (void)n;
    for (int64_t i = s; i < e;) {
        int64_t b = i / NF4_BLOCK, be = (b + 1) * NF4_BLOCK < e ? (b + 1) * NF4_BLOCK : e;
        float sc = nf4_block_scale(t, b);
        for (; i < be; i++) {
            uint8_t byte = t->codes[i / 2];
            dst[i - s] = nf4_code[(i & 1) ? byte & 15 : byte >> 4] * sc;
        }
    }
    return 0;
}

/* ------------------------------------------------------------- forward */

/* Tiles: MX activation rows x MW weight rows of accumulators. Each output
 * is the sum over the row's blocks, in order, of a tier-wide vector of
 * partial sums, reduced at the end: the same operations whatever the tile
 * position, so the thread count (which only moves tile boundaries between
 * threads, never within a row of W) cannot change a bit. */
#define NF4_MX 4
#define NF4_MW 4

static void fwd_portable(float *out, const float *inp, const nf4_tensor *w, int N, int w0, int nw)
{
    const int IC = (int)w->cols, nbr = IC / NF4_BLOCK, OC = (int)w->rows;
    for (int o = w0; o < w0 + nw; o++) {
        const uint8_t *c = w->codes + (size_t)o * IC / 2;
        for (int x = 0; x < N; x++) {
            const float *xr = inp + (size_t)x * IC;
            float acc = 0;
            for (int b = 0; b < nbr; b++) {
                float lut[16], sc = nf4_block_scale(w, (int64_t)o * nbr + b);
                for (int k = 0; k < 16; k++) lut[k] = nf4_code[k] * sc;
                const uint8_t *cb = c + b * NF4_BLOCK / 2;
                const float *xb = xr + b * NF4_BLOCK;
                for (int k = 0; k < NF4_BLOCK / 2; k++) {
                    acc += lut[cb[k] >> 4] * xb[2 * k];
                    acc += lut[cb[k] & 15] * xb[2 * k + 1];
                }
            }
            out[(size_t)x * OC + o] = acc;
        }
    }
}

#if defined(__x86_64__) && !defined(PEFTC_KERNELS_NO_X86)
/* 16 code indices (element order) from 8 bytes: high nibble first. Bits
 * above the low 4 are garbage; vpermps reads only the low 4 (AVX-512). */
#define NF4_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
NF4_AVX512 static inline __m512i idx16_avx512(const uint8_t *p)
{
    __m128i v = _mm_loadl_epi64((const __m128i *)p);
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_srli_epi16(v, 4), v));
}

NF4_AVX512 static inline void tile_avx512(float *out, const float *inp, const nf4_tensor *w, int x0, int mx,
                                          int o0, int mw, const int MX, const int MW)
{
    const int IC = (int)w->cols, nbr = IC / NF4_BLOCK, OC = (int)w->rows;
    const __m512 code = _mm512_loadu_ps(nf4_code);
    __m512 acc[NF4_MX][NF4_MW];
    for (int i = 0; i < MX; i++)
        for (int j = 0; j < MW; j++) acc[i][j] = _mm512_setzero_ps();
    for (int b = 0; b < nbr; b++) {
        __m512 lut[NF4_MW];
        for (int j = 0; j < MW; j++) {
            int o = j < mw ? o0 + j : o0;
            lut[j] = _mm512_mul_ps(code, _mm512_set1_ps(nf4_block_scale(w, (int64_t)o * nbr + b)));
        }
        for (int k = 0; k < NF4_BLOCK; k += 16) {
            __m512 wv[NF4_MW];
            for (int j = 0; j < MW; j++) {
                int o = j < mw ? o0 + j : o0;
                wv[j] = _mm512_permutexvar_ps(idx16_avx512(w->codes + ((size_t)o * IC + b * NF4_BLOCK + k) / 2), lut[j]);
            }
            for (int i = 0; i < MX; i++) {
                int x = i < mx ? x0 + i : x0;
                __m512 xv = _mm512_loadu_ps(inp + (size_t)x * IC + b * NF4_BLOCK + k);
                for (int j = 0; j < MW; j++) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mx; i++)
        for (int j = 0; j < mw; j++) out[(size_t)(x0 + i) * OC + o0 + j] = _mm512_reduce_add_ps(acc[i][j]);
}

NF4_AVX512 static void fwd_avx512(float *out, const float *inp, const nf4_tensor *w, int N, int w0, int nw)
{
    for (int x = 0; x < N; x += NF4_MX) {
        int mx = N - x < NF4_MX ? N - x : NF4_MX;
        for (int o = w0; o < w0 + nw; o += NF4_MW) {
            int mw = w0 + nw - o < NF4_MW ? w0 + nw - o : NF4_MW;
            /* a short tile computes its missing rows on row 0 and drops
             * them: the kept sums are the same operations */
            tile_avx512(out, inp, w, x, mx, o, mw, NF4_MX, NF4_MW);
        }
    }
}

/* AVX2: 8 indices from 4 bytes; the 16-entry table as two 8-entry halves,
 * bit 3 of the index (moved to the sign) picking the half */
#define NF4_AVX2 __attribute__((target("avx2,fma")))
#define NF4_MW2 2
NF4_AVX2 static inline __m256i idx8_avx2(const uint8_t *p)
{
    uint32_t u;
    memcpy(&u, p, 4);
    __m128i v = _mm_cvtsi32_si128((int)u);
    return _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15)), v));
}

NF4_AVX2 static inline __m256 lut8_avx2(__m256i idx, __m256 lo, __m256 hi)
{
    __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), sel);
}

NF4_AVX2 static inline void tile_avx2(float *out, const float *inp, const nf4_tensor *w, int x0, int mx, int o0,
                                      int mw, const int MX, const int MW)
{
    const int IC = (int)w->cols, nbr = IC / NF4_BLOCK, OC = (int)w->rows;
    const __m256 clo = _mm256_loadu_ps(nf4_code), chi = _mm256_loadu_ps(nf4_code + 8);
    __m256 acc[NF4_MX][NF4_MW2];
    for (int i = 0; i < MX; i++)
        for (int j = 0; j < MW; j++) acc[i][j] = _mm256_setzero_ps();
    for (int b = 0; b < nbr; b++) {
        __m256 lo[NF4_MW2], hi[NF4_MW2];
        for (int j = 0; j < MW; j++) {
            int o = j < mw ? o0 + j : o0;
            __m256 s = _mm256_set1_ps(nf4_block_scale(w, (int64_t)o * nbr + b));
            lo[j] = _mm256_mul_ps(clo, s);
            hi[j] = _mm256_mul_ps(chi, s);
        }
        for (int k = 0; k < NF4_BLOCK; k += 8) {
            __m256 wv[NF4_MW2];
            for (int j = 0; j < MW; j++) {
                int o = j < mw ? o0 + j : o0;
                wv[j] = lut8_avx2(idx8_avx2(w->codes + ((size_t)o * IC + b * NF4_BLOCK + k) / 2), lo[j], hi[j]);
            }
            for (int i = 0; i < MX; i++) {
                int x = i < mx ? x0 + i : x0;
                __m256 xv = _mm256_loadu_ps(inp + (size_t)x * IC + b * NF4_BLOCK + k);
                for (int j = 0; j < MW; j++) acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mx; i++)
        for (int j = 0; j < mw; j++) {
            /* fixed reduction order: halves, then pairs */
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[i][j]), _mm256_extractf128_ps(acc[i][j], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            out[(size_t)(x0 + i) * OC + o0 + j] = _mm_cvtss_f32(s);
        }
}

NF4_AVX2 static void fwd_avx2(float *out, const float *inp, const nf4_tensor *w, int N, int w0, int nw)
{
    for (int x = 0; x < N; x += NF4_MX) {
        int mx = N - x < NF4_MX ? N - x : NF4_MX;
        for (int o = w0; o < w0 + nw; o += NF4_MW2) {
            int mw = w0 + nw - o < NF4_MW2 ? w0 + nw - o : NF4_MW2;
            tile_avx2(out, inp, w, x, mx, o, mw, NF4_MX, NF4_MW2);
        }
    }
}
#endif

/* Rows of W dequantised per chunk (~1 MiB of fp32), for the sgemm paths */
static int chunk_rows(int IC)
{
    int rc = (int)(262144 / IC);
    return rc < 16 ? 16 : rc > 512 ? 512 : rc;
}

/* rows [c0, c0+nr) of W into wf (nr, cols) fp32, rows in parallel */
static void dequant_chunk(const nf4_tensor *w, int c0, int nr, float *wf)
{
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < nr; r++) nf4_dequantize_rows(w, c0 + r, 1, wf + (size_t)r * w->cols);
}

int nf4_matmul(float *out, const float *inp, const nf4_tensor *w, int N)
{
    if (N < 0 || w->cols <= 0 || w->cols % NF4_BLOCK || w->rows <= 0 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return NF4_EINVAL;
    if (N == 0) return 0;
    if (N >= NF4_SGEMM_MIN_N) {
        /* many rows (training batches, prompts): a chunk of W dequantised
         * once and reused by every row through sgemm beats decoding it again
         * per tile of rows; fixed chunks, so no thread-count dependence */
        const int IC = (int)w->cols, OC = (int)w->rows, rc = chunk_rows(IC);
        float *wf;
        uint16_t *pk;
        if (matmul_bf16_chunk_scratch(IC, rc, &wf, &pk)) {
            for (int c0 = 0; c0 < OC; c0 += rc) {
                int nr = OC - c0 < rc ? OC - c0 : rc;
                dequant_chunk(w, c0, nr, wf);
                matmul_bf16_forward_chunk(out + c0, OC, inp, wf, pk, N, IC, nr);
            }
            return 0;
        }
        wf = kern_scratch((size_t)rc * IC * 4);
        if (wf) {
            for (int c0 = 0; c0 < OC; c0 += rc) {
                int nr = OC - c0 < rc ? OC - c0 : rc;
                dequant_chunk(w, c0, nr, wf);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, nr, IC, 1.0f, inp, IC, wf, IC, 0.0f, out + c0, OC);
            }
            return 0;
        }
        /* no scratch: the LUT kernels need none */
    }
    void (*fn)(float *, const float *, const nf4_tensor *, int, int, int) = fwd_portable;
#if defined(__x86_64__) && !defined(PEFTC_KERNELS_NO_X86)
    if (kern_isa_level >= KERNELS_ISA_AVX512) fn = fwd_avx512;
    else if (kern_isa_level >= KERNELS_ISA_AVX2) fn = fwd_avx2;
#endif
    /* panels of 16 rows of W (a multiple of every tier's tile) per task; the
     * activations stream through each panel (N rows at a time in L2) */
    const int OC = (int)w->rows, P = 16, np = (OC + P - 1) / P;
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++) {
        int w0 = p * P, nw = OC - w0 < P ? OC - w0 : P;
        fn(out, inp, w, N, w0, nw);
    }
    return 0;
}

/* ------------------------------------------------------------ backward */

int nf4_matmul_backward_input(float *dinp, const float *dout, const nf4_tensor *w, int N, int accumulate)
{
    if (N < 0 || w->cols <= 0 || w->rows <= 0 || w->rows > INT32_MAX || w->cols > INT32_MAX) return NF4_EINVAL;
    if (N == 0) return 0;
    const int IC = (int)w->cols, OC = (int)w->rows;
    /* fixed chunk boundaries (~1 MiB of fp32), so the sums do not depend on
     * the thread count */
    const int rc = chunk_rows(IC);
    float *wf;
    uint16_t *pk;
    if (matmul_bf16_chunk_scratch(IC, rc, &wf, &pk)) {
        for (int c0 = 0; c0 < OC; c0 += rc) {
            int nr = OC - c0 < rc ? OC - c0 : rc;
            dequant_chunk(w, c0, nr, wf);
            matmul_bf16_backward_chunk(dinp, dout + c0, OC, wf, pk, N, IC, nr, accumulate || c0 > 0);
        }
        return 0;
    }
    wf = kern_scratch((size_t)rc * IC * 4);
    if (!wf) return NF4_ENOMEM;
    for (int c0 = 0; c0 < OC; c0 += rc) {
        int nr = OC - c0 < rc ? OC - c0 : rc;
        dequant_chunk(w, c0, nr, wf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, nr, 1.0f, dout + c0, OC, wf, IC,
                    accumulate || c0 > 0 ? 1.0f : 0.0f, dinp, IC);
    }
    return 0;
}
