/* matmul_bf16.c: dense layers with frozen weights held in bf16 (AVX-512-BF16).
 *
 * The weight is rounded to bf16 (round to nearest even) once and packed into
 * panels of 16 outputs: for each pair of inputs (k, k+1) a panel holds 16
 * 32-bit lanes (w[o][k], w[o][k+1]), the operand layout of vdpbf16ps. The
 * activations are rounded to bf16 per tile of MR rows (the same rounding) and
 * every product pair is accumulated in fp32. The micro-kernel keeps MR x 32
 * accumulators in registers. Each output element is computed by one thread
 * in a fixed order, so results do not depend on the thread count. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"
#if KERN_X86
#include <immintrin.h>
#endif

struct matmul_bf16 {
    int IC, OC;
    const float *w;       /* the fp32 weight (not owned; needed for the backward packing) */
    uint16_t *fwd;        /* panels over OC, pairs over IC */
    uint16_t *bwd;        /* panels over IC, pairs over OC (packed on first backward) */
};

static int bf16_supported = -1;
static int bf16_on = -1;   /* -1: the default, on where AMX runs (where bf16 pays) */

int kernels_bf16_supported(void)
{
    if (bf16_supported < 0) {
#if KERN_X86
        __builtin_cpu_init();
        bf16_supported = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
        bf16_supported = 0;
#endif
    }
    return bf16_supported;
}

__attribute__((constructor)) static void bf16_init(void)
{
    const char *e = getenv("PEFTC_BF16");
    if (e && (e[0] == '0' || e[0] == '1') && !e[1]) kernels_set_bf16(e[0] == '1');
    e = getenv("PEFTC_BF16_AMX");
    if (e && e[0] == '0' && !e[1]) kernels_bf16_amx(0);
}

int kernels_set_bf16(int on)
{
    bf16_on = on < 0 ? -1 : on && kernels_bf16_supported();
    return kernels_bf16();
}

/* Without AMX, vdpbf16ps runs at about 0.6x OpenBLAS's sgemm here: bf16
 * would cost precision and time, so the default is fp32 there. */
int kernels_bf16(void) { return bf16_on < 0 ? kernels_bf16_amx(-1) : bf16_on; }

/* the public switch of include/peftc.h */
int peftc_set_bf16(int on);
int peftc_set_bf16(int on) { return kernels_set_bf16(on); }

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN */
uint16_t kernels_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

/* M outputs x K inputs, element (o, k) at w[o*so + k*sk] */
/* Panels are padded to an even count and to a multiple of 16 pairs (zeros),
 * the shape of the AMX tiles; the AVX-512 kernel skips the padding pairs. */
#define KPAD(K) (((K) + 31) / 32 * 16)
static uint16_t *pack(const float *w, int M, int K, size_t so, size_t sk)
{
    int np = (M + 31) / 32 * 2, KP = KPAD(K);
    size_t n = (size_t)np * KP * 32;
    uint16_t *d = aligned_alloc(64, (n * 2 + 63) / 64 * 64 + 64);
    if (!d) return NULL;
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++)
        for (int kp = 0; kp < KP; kp++)
            for (int j = 0; j < 16; j++)
                for (int e = 0; e < 2; e++) {
                    int o = p * 16 + j, k = 2 * kp + e;
                    d[(((size_t)p * KP + kp) * 16 + j) * 2 + e] =
                        o < M && k < K ? kernels_f32_to_bf16(w[(size_t)o * so + (size_t)k * sk]) : 0;
                }
    return d;
}

matmul_bf16 *matmul_bf16_pack(const float *w, int IC, int OC)
{
    if (!kernels_bf16_supported() || IC <= 0 || OC <= 0) return NULL;
    matmul_bf16 *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->IC = IC; p->OC = OC; p->w = w;
    p->fwd = pack(w, OC, IC, (size_t)IC, 1);
    if (!p->fwd) { free(p); return NULL; }
    return p;
}

void matmul_bf16_free(matmul_bf16 *p)
{
    if (!p) return;
    free(p->fwd); free(p->bwd); free(p);
}

size_t matmul_bf16_bytes(const matmul_bf16 *p)
{
    if (!p) return 0;
    size_t a = (size_t)((p->OC + 31) / 32 * 2) * KPAD(p->IC) * 64;
    size_t b = (size_t)((p->IC + 31) / 32 * 2) * KPAD(p->OC) * 64;
    return a + (p->bwd ? b : 0);
}

#if KERN_X86
#define KERN_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,prefer-vector-width=512")))
#define MR 12

/* rows [r0, r0+nr) of gemm_bf16 by plain loops (when a tile buffer could not be had) */
static void block_plain(float *out, int ldo, const float *A, int lda, const uint16_t *Bp, int KPP,
                        const float *bias, int r0, int nr, int K, int M, int acc)
{
    for (int r = 0; r < nr; r++)
        for (int m = 0; m < M; m++) {
            float s = 0;
            for (int k = 0; k < K; k++) {
                uint16_t wb = Bp[(((size_t)(m / 16) * KPP + k / 2) * 16 + m % 16) * 2 + (k & 1)];
                union { uint32_t u; float f; } x = { (uint32_t)kernels_f32_to_bf16(A[(size_t)(r0 + r) * lda + k]) << 16 },
                                              y = { (uint32_t)wb << 16 };
                s += x.f * y.f;
            }
            float *o = out + (size_t)(r0 + r) * ldo + m;
            *o = (acc ? *o : 0.0f) + s + (bias ? bias[m] : 0.0f);
        }
}

/* out rows [0, nr) x columns [m0, m0 + 16*NP) (clipped at M) = A tile (KP
 * pairs x MR rows, interleaved: pair kp of row r at at[kp*MR + r]) @ panels
 * b0 (, b1) (+ bias) (+ out if acc). 24 accumulators in named registers
 * (an array of them is kept in memory by GCC at -O2). */
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
KERN_INLINE KERN_BF16 void micro(const uint32_t *at, int KP, const uint16_t *b0, const uint16_t *b1, const int NP,
                                 float *out, int ldo, int nr, int m0, int M, const float *bias, int acc)
{
#define DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
    ROWS(DECL)
#undef DECL
    for (int kp = 0; kp < KP; kp++) {
        __m512bh w0 = (__m512bh)_mm512_load_si512(b0 + (size_t)kp * 32), w1 = w0;
        if (NP == 2) w1 = (__m512bh)_mm512_load_si512(b1 + (size_t)kp * 32);
        const uint32_t *a = at + (size_t)kp * MR;
#define STEP(r) {                                                                 \
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r]);                  \
            c##r##_0 = _mm512_dpbf16_ps(c##r##_0, x, w0);                         \
            if (NP == 2) c##r##_1 = _mm512_dpbf16_ps(c##r##_1, x, w1); }
        ROWS(STEP)
#undef STEP
    }
    __m512 c[MR][2];
#define SAVE(r) c[r][0] = c##r##_0; c[r][1] = c##r##_1;
    ROWS(SAVE)
#undef SAVE
    for (int j = 0; j < NP; j++) {
        int m = m0 + 16 * j;
        if (m >= M) break;
        __mmask16 mk = M - m >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (M - m)) - 1);
        __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + m) : _mm512_setzero_ps();
        for (int r = 0; r < nr; r++) {
            float *o = out + (size_t)r * ldo + m;
            __m512 v = _mm512_add_ps(c[r][j], bv);
            if (acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o));
            _mm512_mask_storeu_ps(o, mk, v);
        }
    }
}

/* out (N,M) [+]= A (N,K) @ B^T with B packed (panels over M, pairs over K) (+ bias) */
KERN_BF16 static void gemm_bf16(float *out, int ldo, const float *A, int lda, const uint16_t *Bp,
                                const float *bias, int N, int K, int M, int acc)
{
    const int KP = (K + 1) / 2, KPP = KPAD(K), np = (M + 15) / 16, nrb = (N + MR - 1) / MR;
    const size_t tile = ((size_t)MR * KP * 4 + 63) / 64 * 64;
    #pragma omp parallel if ((size_t)N * M * K >= (1u << 18))
    {
        uint32_t *at = aligned_alloc(64, tile);
        #pragma omp for schedule(static)
        for (int rb = 0; rb < nrb; rb++) {
            int r0 = rb * MR, nr = N - r0 < MR ? N - r0 : MR;
            if (!at) {   /* out of memory: plain loops on the rounded operands */
                block_plain(out, ldo, A, lda, Bp, KPP, bias, r0, nr, K, M, acc);
                continue;
            }
            /* the A tile to bf16 pairs, interleaved by row; rows past N and the
             * odd K tail are zero */
            for (int r = 0; r < MR; r++) {
                if (r >= nr) { for (int kp = 0; kp < KP; kp++) at[(size_t)kp * MR + r] = 0; continue; }
                const float *s = A + (size_t)(r0 + r) * lda;
                for (int k = 0; k < 2 * KP; k += 32) {
                    int n = K - k;
                    __mmask16 ml = n >= 16 ? (__mmask16)0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
                    __mmask16 mh = n >= 32 ? (__mmask16)0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
                    __m512 lo = _mm512_maskz_loadu_ps(ml, s + k);
                    __m512 hi = _mm512_maskz_loadu_ps(mh, s + k + 16);
                    uint32_t tmp[16] __attribute__((aligned(64)));
                    _mm512_store_si512(tmp, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                    int np2 = KP - k / 2 < 16 ? KP - k / 2 : 16;
                    for (int j = 0; j < np2; j++) at[(size_t)(k / 2 + j) * MR + r] = tmp[j];
                }
            }
            float *o = out + (size_t)r0 * ldo;
            int p = 0;
            for (; p + 2 <= np; p += 2)
                micro(at, KP, Bp + (size_t)p * KPP * 32, Bp + (size_t)(p + 1) * KPP * 32, 2,
                      o, ldo, nr, p * 16, M, bias, acc);
            if (p < np)
                micro(at, KP, Bp + (size_t)p * KPP * 32, NULL, 1, o, ldo, nr, p * 16, M, bias, acc);
        }
        free(at);
    }
}
/* ---- AMX (TDPBF16PS): 32 x 32 output blocks as four 16 x 16 fp32 tiles ---- */
#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>
#define KERN_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")))

static int amx_state = -1;   /* -1 unknown, 0 unusable, 1 usable */
static int amx_on = 1;

static int amx_usable(void)
{
    if (amx_state < 0) {
        unsigned a, b, c, d;
        amx_state = 0;
        if (kernels_bf16_supported() && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
            (d & (1u << 22)) && (d & (1u << 24))) {
            /* Linux: ask for the tile data state (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
            if (syscall(SYS_arch_prctl, 0x1023, 18) == 0) amx_state = 1;
        }
    }
    return amx_state;
}

typedef struct { uint8_t palette, start_row, pad[14]; uint16_t colsb[16]; uint8_t rows[16]; } amx_cfg;

/* Same contract as gemm_bf16; blocks of 32 rows, panels in pairs */
KERN_AMX static void gemm_amx(float *out, int ldo, const float *A, int lda, const uint16_t *Bp,
                              const float *bias, int N, int K, int M, int acc)
{
    const int KPP = KPAD(K), npp = (M + 31) / 32, nrb = (N + 31) / 32;
    const size_t astride = (size_t)KPP * 4;   /* bytes per bf16 row of the A block */
    #pragma omp parallel if ((size_t)N * M * K >= (1u << 18))
    {
        amx_cfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
        _tile_loadconfig(&cfg);
        uint16_t *a16 = aligned_alloc(64, 32 * astride + 64);
        float *ct = aligned_alloc(64, 32 * 32 * sizeof(float));
        #pragma omp for schedule(static)
        for (int rb = 0; rb < nrb; rb++) {
            int r0 = rb * 32, nr = N - r0 < 32 ? N - r0 : 32;
            if (!a16 || !ct) {   /* out of memory */
                block_plain(out, ldo, A, lda, Bp, KPP, bias, r0, nr, K, M, acc);
                continue;
            }
            for (int r = 0; r < 32; r++) {
                uint16_t *d = a16 + (size_t)r * KPP * 2;
                if (r >= nr) { memset(d, 0, astride); continue; }
                const float *src = A + (size_t)(r0 + r) * lda;
                for (int k = 0; k < 2 * KPP; k += 32) {
                    int n = K - k;
                    __mmask16 ml = n >= 16 ? (__mmask16)0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
                    __mmask16 mh = n >= 32 ? (__mmask16)0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
                    __m512 lo = _mm512_maskz_loadu_ps(ml, src + k);
                    __m512 hi = _mm512_maskz_loadu_ps(mh, src + k + 16);
                    _mm512_store_si512(d + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            for (int pp = 0; pp < npp; pp++) {
                const uint16_t *b0 = Bp + (size_t)(2 * pp) * KPP * 32, *b1 = b0 + (size_t)KPP * 32;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int kb = 0; kb < KPP; kb += 16) {
                    _tile_loadd(4, a16 + (size_t)kb * 2, astride);
                    _tile_loadd(5, a16 + 16 * (size_t)KPP * 2 + (size_t)kb * 2, astride);
                    _tile_loadd(6, b0 + (size_t)kb * 32, 64);
                    _tile_loadd(7, b1 + (size_t)kb * 32, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                _tile_stored(0, ct, 128);
                _tile_stored(1, ct + 16, 128);
                _tile_stored(2, ct + 16 * 32, 128);
                _tile_stored(3, ct + 16 * 32 + 16, 128);
                for (int j = 0; j < 2; j++) {
                    int m = pp * 32 + 16 * j;
                    if (m >= M) break;
                    __mmask16 mk = M - m >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (M - m)) - 1);
                    __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + m) : _mm512_setzero_ps();
                    for (int r = 0; r < nr; r++) {
                        float *o = out + (size_t)(r0 + r) * ldo + m;
                        __m512 v = _mm512_add_ps(_mm512_load_ps(ct + r * 32 + 16 * j), bv);
                        if (acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o));
                        _mm512_mask_storeu_ps(o, mk, v);
                    }
                }
            }
        }
        _tile_release();
        free(a16); free(ct);
    }
}

/* returns 1 if AMX ran */
static int try_amx(float *out, int ldo, const float *A, int lda, const uint16_t *Bp,
                   const float *bias, int N, int K, int M, int acc)
{
    if (!amx_on || amx_usable() != 1) return 0;
    gemm_amx(out, ldo, A, lda, Bp, bias, N, K, M, acc);
    return 1;
}
#endif

int kernels_bf16_amx(int on)
{
#if KERN_X86
    if (on >= 0) amx_on = on;
    return amx_on && amx_usable() == 1;
#else
    (void)on;
    return 0;
#endif
}

void matmul_bf16_forward(float *out, const float *inp, const matmul_bf16 *w, const float *bias,
                         int N, int IC, int OC, int accumulate)
{
    if (N <= 0 || OC <= 0) return;
#if KERN_X86
    if (w && w->IC == IC && w->OC == OC) {
        if (!try_amx(out, OC, inp, IC, w->fwd, bias, N, IC, OC, accumulate))
            gemm_bf16(out, OC, inp, IC, w->fwd, bias, N, IC, OC, accumulate);
        return;
    }
#endif
    matmul_forward(out, inp, w ? w->w : NULL, bias, N, IC, OC, accumulate);   /* not reached on supported CPUs */
}

int matmul_bf16_prepare_backward(matmul_bf16 *w)
{
    if (!w->bwd) w->bwd = pack(w->w, w->IC, w->OC, 1, (size_t)w->IC);
    return w->bwd ? 0 : -1;
}

int matmul_bf16_backward(float *dinp, float *dbias, const float *dout, matmul_bf16 *w,
                         int N, int IC, int OC)
{
    if (N <= 0 || OC <= 0) return 0;
    if (dinp) {
        if (!w->bwd) w->bwd = pack(w->w, IC, OC, 1, (size_t)IC);
        if (!w->bwd) return -1;
    }
#if KERN_X86
    if (dinp && !try_amx(dinp, IC, dout, OC, w->bwd, NULL, N, OC, IC, 1))
        gemm_bf16(dinp, IC, dout, OC, w->bwd, NULL, N, OC, IC, 1);
#endif
    if (dbias) matmul_backward(NULL, NULL, dbias, dout, NULL, NULL, N, IC, OC);
    return 0;
}
