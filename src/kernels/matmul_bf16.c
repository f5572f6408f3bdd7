/* matmul_bf16.c: dense layers with frozen weights held in bf16 (AMX or
 * AVX-512-BF16).
 *
 * The weight is rounded to bf16 (round to nearest even) once and packed into
 * panels of 16 outputs: for each pair of inputs (k, k+1) a panel holds 16
 * 32-bit lanes (w[o][k], w[o][k+1]), the operand layout of vdpbf16ps and of
 * the AMX B tiles. The activations are rounded to bf16 per block of rows (the
 * same rounding) and every product pair is accumulated in fp32. Each output
 * element is computed by one thread in a fixed order, so results do not
 * depend on the thread count. Each finished sum then goes through an
 * epilogue: bias, accumulate, and for the FFN the GELU (forward) or its
 * derivative (backward) while the block is in cache. */
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
static int bf16_on = -1;   /* -1: the default, on where bf16 pays (kernels_bf16_default) */

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

/* Without AMX the answer depends on the core: vdpbf16ps ran at 0.6x
 * OpenBLAS's sgemm on a Sapphire Rapids core with its tiles unused, at 2.2x
 * on a Zen 4 core. So where AMX does not run the default is measured, once
 * per process: the bf16 kernel and cblas_sgemm on one thread (robust to a
 * busy second core), a shape of the encoder's (128 x 384 -> 1536, 151 MFLOP),
 * the best of 4 timed calls each after a warm-up, about 10 ms in all. bf16
 * becomes the default where it is at least 1.3x faster: the two kinds of
 * core measured are far from that line on both sides, so the choice does not
 * flip with noise. */
static double bf16_speedup;   /* bf16 GEMM / sgemm throughput (0: no AVX-512-BF16), once bf16_calibrated */
static int bf16_calibrated = 0;
#define BF16_PAYS 1.3

static double time_best(int which, float *out, const float *inp, const float *w, const matmul_bf16 *p,
                        int N, int IC, int OC)
{
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        if (which) matmul_bf16_forward(out, inp, p, NULL, N, IC, OC, 0);
        else matmul_forward(out, inp, w, NULL, N, IC, OC, 0);
        double t = omp_get_wtime() - t0;
        if (rep > 0 && t < best) best = t;
    }
    return best;
}

static double measure_bf16_speedup(void)
{
    enum { N = 128, IC = 384, OC = 1536 };
    float *w = malloc(sizeof(float) * IC * OC), *x = malloc(sizeof(float) * N * IC),
          *y = malloc(sizeof(float) * N * OC);
    double r = 0;
    if (w && x && y) {
        uint32_t s = 12345u;
        for (int i = 0; i < IC * OC; i++) { s = s * 1664525u + 1013904223u; w[i] = (float)(s >> 8) * 0x1p-24f - 0.5f; }
        for (int i = 0; i < N * IC; i++) { s = s * 1664525u + 1013904223u; x[i] = (float)(s >> 8) * 0x1p-24f - 0.5f; }
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);   /* OpenBLAS's OpenMP build and our kernels both follow it */
        matmul_bf16 *p = matmul_bf16_pack(w, IC, OC);
        if (p) {
            double tf = time_best(0, y, x, w, NULL, N, IC, OC);
            double tb = time_best(1, y, x, w, p, N, IC, OC);
            if (tb > 0) r = tf / tb;
            matmul_bf16_free(p);
        }
        omp_set_num_threads(nt);
    }
    free(w); free(x); free(y);
    return r;
}

double kernels_bf16_speedup(void)
{
    if (!__atomic_load_n(&bf16_calibrated, __ATOMIC_ACQUIRE)) {
        #pragma omp critical(peftc_bf16_calibrate)
        if (!bf16_calibrated) {
            bf16_speedup = kernels_bf16_supported() ? measure_bf16_speedup() : 0;
            __atomic_store_n(&bf16_calibrated, 1, __ATOMIC_RELEASE);
        }
    }
    return bf16_speedup;
}

int kernels_bf16_default(void)
{
    if (kernels_bf16_amx(-1)) return 1;
    return kernels_bf16_supported() && kernels_bf16_speedup() >= BF16_PAYS;
}

int kernels_bf16(void) { return bf16_on < 0 ? kernels_bf16_default() : bf16_on; }
int kernels_bf16_forced(void) { return bf16_on == 1; }

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
/* w fp32 (rounded here) or wb already bf16 (copied: the same bits a bf16
 * file's weights hold) */
static size_t pack_elems(int M, int K) { return (size_t)((M + 31) / 32 * 2) * KPAD(K) * 32; }

/* into d (pack_elems(M, K) elements) */
static void pack_into(uint16_t *d, const float *w, const uint16_t *wb, int M, int K, size_t so, size_t sk)
{
    int np = (M + 31) / 32 * 2, KP = KPAD(K);
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++)
        for (int kp = 0; kp < KP; kp++)
            for (int j = 0; j < 16; j++)
                for (int e = 0; e < 2; e++) {
                    int o = p * 16 + j, k = 2 * kp + e;
                    size_t at = (size_t)o * so + (size_t)k * sk;
                    d[(((size_t)p * KP + kp) * 16 + j) * 2 + e] =
                        o < M && k < K ? (wb ? wb[at] : kernels_f32_to_bf16(w[at])) : 0;
                }
}

static uint16_t *pack_any(const float *w, const uint16_t *wb, int M, int K, size_t so, size_t sk)
{
    size_t n = pack_elems(M, K);
    uint16_t *d = aligned_alloc(64, (n * 2 + 63) / 64 * 64 + 64);
    if (d) pack_into(d, w, wb, M, K, so, sk);
    return d;
}
static uint16_t *pack(const float *w, int M, int K, size_t so, size_t sk) { return pack_any(w, NULL, M, K, so, sk); }

/* the forward pack of w (fp32) or wb (bf16 bits); w NULL: no backward */
static matmul_bf16 *pack_new(const float *w, const uint16_t *wb, int IC, int OC)
{
    if (!kernels_bf16_supported() || IC <= 0 || OC <= 0) return NULL;
    matmul_bf16 *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->IC = IC; p->OC = OC; p->w = w;
    p->fwd = pack_any(w, wb, OC, IC, (size_t)IC, 1);
    if (!p->fwd) { free(p); return NULL; }
    return p;
}

matmul_bf16 *matmul_bf16_pack(const float *w, int IC, int OC) { return w ? pack_new(w, NULL, IC, OC) : NULL; }
matmul_bf16 *matmul_bf16_pack_bf16(const uint16_t *w, int IC, int OC) { return w ? pack_new(NULL, w, IC, OC) : NULL; }

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
#define KERN_BF16 KERN_TARGET_512("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")
#define MR 12

/* What happens to each fp32 sum of products once complete: the epilogue,
 * shared by both kernels and the plain fallback. For output (r, m):
 * v = sum (+ bias[m]) (+ out[r][m] if acc) (* gelu'(gpre[r][m])), stored to
 * out; then act[r][m] = gelu(v). gpre and act have out's layout. The kernels
 * are compiled once per kind of epilogue (EPI_*: the GELU code inlined into
 * the plain GEMM's loops cost it 5-15%). */
typedef struct {
    float *out;
    int ldo, M;
    const float *bias;
    int acc;
    float *act;
    const float *gpre;
} epi;
enum { EPI_PLAIN = 0, EPI_GELU = 1, EPI_GELU_GRAD = 2 };

/* GELU of 16 lanes through kern_gelu (the elementwise kernels' definition;
 * F = 2: the AVX-512 tier's rounding). The `omp simd` loop over a local
 * array compiles to one zmm sequence. */
KERN_INLINE KERN_BF16 __m512 vgelu(__m512 v)
{
    float t[16] __attribute__((aligned(64)));
    _mm512_store_ps(t, v);
    #pragma omp simd
    for (int l = 0; l < 16; l++) t[l] = kern_gelu(t[l], 2);
    return _mm512_load_ps(t);
}
KERN_INLINE KERN_BF16 __m512 vgelu_grad(__m512 v)
{
    float t[16] __attribute__((aligned(64)));
    _mm512_store_ps(t, v);
    #pragma omp simd
    for (int l = 0; l < 16; l++) t[l] = kern_gelu_grad(t[l], 2);
    return _mm512_load_ps(t);
}

/* the epilogue of outputs (r, m .. m+15), lanes in mk; G: EPI_* (constant) */
KERN_INLINE KERN_BF16 void epi_vec(const epi *e, int r, int m, __mmask16 mk, __m512 v, const int G)
{
    size_t at = (size_t)r * e->ldo + m;
    if (e->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, e->bias + m));
    if (e->acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, e->out + at));
    if (G == EPI_GELU_GRAD) v = _mm512_mul_ps(v, vgelu_grad(_mm512_maskz_loadu_ps(mk, e->gpre + at)));
    _mm512_mask_storeu_ps(e->out + at, mk, v);
    if (G == EPI_GELU && e->act) _mm512_mask_storeu_ps(e->act + at, mk, vgelu(v));
}

KERN_INLINE __mmask16 tail_mask(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
}

/* rows [r0, r0+nr) by plain loops, for when no scratch could be had (out of
 * memory): the same rounded operands and epilogue, another summation order */
KERN_BF16 static void block_plain(const epi *e, const float *A, int lda, const uint16_t *Bp, int KPP,
                                  int r0, int nr, int K)
{
    for (int r = r0; r < r0 + nr; r++)
        for (int m = 0; m < e->M; m++) {
            float s = 0;
            for (int k = 0; k < K; k++) {
                uint16_t wb = Bp[(((size_t)(m / 16) * KPP + k / 2) * 16 + m % 16) * 2 + (k & 1)];
                union { uint32_t u; float f; } x = { (uint32_t)kernels_f32_to_bf16(A[(size_t)r * lda + k]) << 16 },
                                              y = { (uint32_t)wb << 16 };
                s += x.f * y.f;
            }
            size_t at = (size_t)r * e->ldo + m;
            if (e->bias) s += e->bias[m];
            if (e->acc) s += e->out[at];
            if (e->gpre) s *= kern_gelu_grad(e->gpre[at], 2);
            e->out[at] = s;
            if (e->act) e->act[at] = kern_gelu(s, 2);
        }
}

/* outputs rows [r0, r0+nr) x columns [m0, m0 + 16*NP) (clipped at M) from the
 * A tile (KP pairs x MR rows, interleaved: pair kp of row r at at[kp*MR + r])
 * and panels b0 (, b1). 24 accumulators in named registers (an array of them
 * is kept in memory by GCC at -O2). */
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
KERN_INLINE KERN_BF16 void micro(const uint32_t *at, int KP, const uint16_t *b0, const uint16_t *b1, const int NP,
                                 const epi *e, int r0, int nr, int m0, const int G)
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
        if (m >= e->M) break;
        __mmask16 mk = tail_mask(e->M - m);
        for (int r = 0; r < nr; r++) epi_vec(e, r0 + r, m, mk, c[r][j], G);
    }
}

/* Rows of A (N,K) times B^T, B packed (panels over M, pairs over K), through
 * the epilogue e (kind G): the calling thread's share of the row blocks (an
 * orphaned `omp for`, inside each wrapper's parallel region). */
KERN_INLINE KERN_BF16 void bf16_rows(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K,
                                     const int G)
{
    const int M = e->M, KP = (K + 1) / 2, KPP = KPAD(K), np = (M + 15) / 16, nrb = (N + MR - 1) / MR;
    uint32_t *at = kern_scratch((size_t)MR * KP * 4);
    /* row blocks handed out one at a time: a thread that another process
     * holds up takes fewer, instead of leaving the other at the barrier
     * (each output is still one thread's sum in a fixed order) */
    #pragma omp for schedule(dynamic)
    for (int rb = 0; rb < nrb; rb++) {
        int r0 = rb * MR, nr = N - r0 < MR ? N - r0 : MR;
        if (!at) {
            block_plain(e, A, lda, Bp, KPP, r0, nr, K);
            continue;
        }
        /* the A tile to bf16 pairs, interleaved by row; rows past N and the
         * odd K tail are zero */
        for (int r = 0; r < MR; r++) {
            if (r >= nr) { for (int kp = 0; kp < KP; kp++) at[(size_t)kp * MR + r] = 0; continue; }
            const float *s = A + (size_t)(r0 + r) * lda;
            for (int k = 0; k < 2 * KP; k += 32) {
                __m512 lo = _mm512_maskz_loadu_ps(tail_mask(K - k), s + k);
                __m512 hi = _mm512_maskz_loadu_ps(tail_mask(K - k - 16), s + k + 16);
                uint32_t tmp[16] __attribute__((aligned(64)));
                _mm512_store_si512(tmp, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                int np2 = KP - k / 2 < 16 ? KP - k / 2 : 16;
                for (int j = 0; j < np2; j++) at[(size_t)(k / 2 + j) * MR + r] = tmp[j];
            }
        }
        int p = 0;
        for (; p + 2 <= np; p += 2)
            micro(at, KP, Bp + (size_t)p * KPP * 32, Bp + (size_t)(p + 1) * KPP * 32, 2, e, r0, nr, p * 16, G);
        if (p < np)
            micro(at, KP, Bp + (size_t)p * KPP * 32, NULL, 1, e, r0, nr, p * 16, G);
    }
}
/* one thread does small products: below this many multiply-adds a parallel
 * region costs more than it saves */
#define GEMM_PAR(N, M, K) ((size_t)(N) * (M) * (K) >= (1u << 18))
KERN_BF16 static void gemm_bf16_plain(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    bf16_rows(e, A, lda, Bp, N, K, EPI_PLAIN);
}
KERN_BF16 static void gemm_bf16_gelu(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    bf16_rows(e, A, lda, Bp, N, K, EPI_GELU);
}
KERN_BF16 static void gemm_bf16_gelu_grad(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    bf16_rows(e, A, lda, Bp, N, K, EPI_GELU_GRAD);
}

/* ---- AMX (TDPBF16PS) ----
 * Four 16 x 16 fp32 accumulator tiles (0-3) make a 32 x 32 output tile, fed
 * by two A tiles (4, 5: 16 rows x 16 pairs each) and two B tiles (6, 7: 16
 * pairs x 16 columns, as packed), over all of K. Threads claim 32-row blocks
 * one at a time from a shared counter: as fast as static halves on an idle
 * machine, and a thread slowed by another process takes fewer blocks instead
 * of leaving the other waiting at the barrier. Every output is still one
 * thread's sum in a fixed order, whichever thread that is.
 *
 * Measured on a Sapphire Rapids core: the tile arithmetic alone runs at ~70%
 * of the TDPBF16PS peak (~2.3 of 3.3 TFLOPS at K = 384), but the fp32 memory
 * traffic (A read and converted, out written) and the epilogue's vector work
 * do not overlap with it by themselves: done after each tile they add their
 * full time, and the whole ran at ~30% of peak. So the kernel is
 * software-pipelined. An output block's tiles are stored to a buffer, and its
 * epilogue runs a few vectors per k step during the NEXT output block's tile
 * loop; the NEXT row block's A is converted to bf16 a row chunk per k step
 * during this one. A blocks and output blocks are double-buffered in the
 * thread's scratch. At the MiniLM shapes (N = 2048, 2 threads) that took
 * 1.4-1.9 to 1.8-2.25 TFLOPS, except 384 x 384 accumulating into out (about
 * 5-10% slower: the epilogue's reads of out, spread over the k loop, are
 * latency-bound). The GELU epilogues' arithmetic (~35 cycles per 16 values)
 * still adds nearly its full time: 512-bit vector work and TDPBF16PS compete
 * for issue ports, so there the fusion saves the memory passes and zeroing,
 * not the arithmetic.
 * The A block is kept in tile order (each 16 x 32 bf16 tile contiguous,
 * 1 KiB), so its tile loads are unit-stride like the B panels'. */
#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>
#define KERN_AMX KERN_TARGET_512("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")
/* Column pairs per output block. Plain epilogues do best with one (a 32 x 32
 * block, 4 KiB, stays in L1: 5-10% over 12 at K = 384). The GELU epilogues
 * read or write a second N x M array, and 32-column strips of it were up to
 * 1.5x slower than runs of 384 columns (12 pairs, 48 KiB) that the hardware
 * prefetcher follows. */
#define AMX_CPP_PLAIN 1
#define AMX_CPP_GELU 12

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

/* row r (0..31) of the A block starting at row r0, pairs [16 kb, 16 kb + 16),
 * to bf16 in tile order; rows past nr and columns past K are zero */
KERN_INLINE KERN_AMX void amx_convert(uint16_t *a16, int nkb, const float *A, int lda, int r0, int r, int nr,
                                      int kb, int K)
{
    uint16_t *d = a16 + ((size_t)(r >> 4) * nkb + kb) * 512 + (r & 15) * 32;
    if (r >= nr) { _mm512_store_si512(d, _mm512_setzero_si512()); return; }
    const float *s = A + (size_t)(r0 + r) * lda + kb * 32;
    int n = K - kb * 32;
    __m512 lo, hi;
    if (n >= 32) { lo = _mm512_loadu_ps(s); hi = _mm512_loadu_ps(s + 16); }
    else { lo = _mm512_maskz_loadu_ps(tail_mask(n), s); hi = _mm512_maskz_loadu_ps(tail_mask(n - 16), s + 16); }
    _mm512_store_si512(d, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* vectors [va, vb) of a finished output block held in cb (32 rows x ldc
 * floats, output columns m0 ..): vector v is row v / vpr, columns
 * m0 + 16 (v % vpr) ..; rows from nr on are padding */
KERN_INLINE KERN_AMX void amx_finish(const epi *e, const float *cb, int ldc, int vpr, int r0, int nr, int m0,
                                     int va, int vb, const int G)
{
    for (int v = va; v < vb; v++) {
        int r = v / vpr, m = (v - r * vpr) * 16;
        if (r >= nr) break;
        epi_vec(e, r0 + r, m0 + m, tail_mask(e->M - m0 - m), _mm512_load_ps(cb + (size_t)r * ldc + m), G);
    }
}

/* Same contract as bf16_rows: the calling thread's part, row blocks claimed
 * through *claimed (shared by the team, starts at 0) */
/* Not inlined under clang: the OpenMP region's outlined function that calls
 * it has no AMX target, and clang 14 cannot select the tile instructions
 * once they are inlined there (GCC inlines with the callee's target). */
#ifdef __clang__
#define AMX_ROWS_INLINE static __attribute__((noinline))
#else
#define AMX_ROWS_INLINE KERN_INLINE
#endif
AMX_ROWS_INLINE KERN_AMX void amx_rows(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K,
                                   int *claimed, const int G)
{
    const int M = e->M, KPP = KPAD(K), nkb = KPP / 16, npp = (M + 31) / 32, nrb = (N + 31) / 32;
    const int rpp = (32 + npp - 1) / npp;   /* rows of the next A block converted per column pair */
    const int cpp0 = G == EPI_PLAIN ? AMX_CPP_PLAIN : AMX_CPP_GELU;
    const int cpp = npp < cpp0 ? npp : cpp0, ldc = cpp * 32;
    const size_t ablk = (size_t)32 * KPP * 2;   /* bf16 elements of an A block */
    const size_t cblk = (size_t)32 * ldc;       /* floats of an output block */
    int rb, nx;
    #pragma omp atomic capture
    rb = (*claimed)++;
    float *cbuf = rb < nrb ? kern_scratch(2 * cblk * sizeof(float) + 2 * ablk * 2) : NULL;
    if (rb < nrb && !cbuf) {   /* out of memory */
        for (; rb < nrb; rb = nx) {
            block_plain(e, A, lda, Bp, KPP, rb * 32, N - rb * 32 < 32 ? N - rb * 32 : 32, K);
            #pragma omp atomic capture
            nx = (*claimed)++;
        }
    } else if (rb < nrb) {
        uint16_t *a16 = (uint16_t *)(cbuf + 2 * cblk);
        amx_cfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
        _tile_loadconfig(&cfg);
        {
            int nr = N - rb * 32 < 32 ? N - rb * 32 : 32;
            for (int r = 0; r < 32; r++)
                for (int kb = 0; kb < nkb; kb++) amx_convert(a16, nkb, A, lda, rb * 32, r, nr, kb, K);
        }
        int ca = 0, cc = 0;   /* the A block and output block buffers in use */
        /* the output block awaiting its epilogue: rows p_r0 + [0, p_nr), columns
         * p_m0 + [0, 16 p_vpr), p_step vectors per k step */
        int pend = 0, p_r0 = 0, p_nr = 0, p_m0 = 0, p_vpr = 0, p_step = 0;
        for (; rb < nrb; rb = nx) {
            #pragma omp atomic capture
            nx = (*claimed)++;
            const int r0 = rb * 32, nr = N - r0 < 32 ? N - r0 : 32;
            const int x0 = nx * 32, xnr = N - x0 < 32 ? N - x0 : 32, more = nx < nrb;
            const uint16_t *acur = a16 + ca * ablk;
            uint16_t *anext = a16 + (1 - ca) * ablk;
            for (int pg = 0; pg < npp; pg += cpp) {
                const int pe = pg + cpp < npp ? pg + cpp : npp;
                float *cb = cbuf + cc * cblk;
                const float *cprev = cbuf + (1 - cc) * cblk;
                int v = 0;
                for (int pp = pg; pp < pe; pp++) {
                    const uint16_t *b0 = Bp + (size_t)(2 * pp) * KPP * 32, *b1 = b0 + (size_t)KPP * 32;
                    int cr0 = pp * rpp, cr1 = more ? (cr0 + rpp < 32 ? cr0 + rpp : 32) : cr0;
                    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                    for (int kb = 0; kb < nkb; kb++) {
                        _tile_loadd(4, acur + (size_t)kb * 512, 64);
                        _tile_loadd(5, acur + (size_t)(nkb + kb) * 512, 64);
                        _tile_loadd(6, b0 + (size_t)kb * 512, 64);
                        _tile_loadd(7, b1 + (size_t)kb * 512, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                        if (pend) {
                            amx_finish(e, cprev, ldc, p_vpr, p_r0, p_nr, p_m0, v, v + p_step, G);
                            v += p_step;
                        }
                        for (int r = cr0; r < cr1; r++) amx_convert(anext, nkb, A, lda, x0, r, xnr, kb, K);
                    }
                    float *c = cb + (pp - pg) * 32;
                    _tile_stored(0, c, (size_t)ldc * 4);
                    _tile_stored(1, c + 16, (size_t)ldc * 4);
                    _tile_stored(2, c + (size_t)16 * ldc, (size_t)ldc * 4);
                    _tile_stored(3, c + (size_t)16 * ldc + 16, (size_t)ldc * 4);
                }
                if (pend)   /* what the pacing left, if anything */
                    amx_finish(e, cprev, ldc, p_vpr, p_r0, p_nr, p_m0, v, 32 * p_vpr, G);
                /* this block's epilogue is paced over the next block's k steps */
                int mw = (M < pe * 32 ? M : pe * 32) - pg * 32;
                int npn = pe < npp ? (npp - pe < cpp ? npp - pe : cpp) : cpp;
                pend = 1; p_r0 = r0; p_nr = nr; p_m0 = pg * 32; p_vpr = (mw + 15) / 16;
                p_step = (32 * p_vpr + npn * nkb - 1) / (npn * nkb);
                cc = 1 - cc;
            }
            ca = 1 - ca;
        }
        if (pend) amx_finish(e, cbuf + (1 - cc) * cblk, ldc, p_vpr, p_r0, p_nr, p_m0, 0, 32 * p_vpr, G);
        _tile_release();
    }
}

KERN_AMX static void gemm_amx_plain(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    int claimed = 0;
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    amx_rows(e, A, lda, Bp, N, K, &claimed, EPI_PLAIN);
}
KERN_AMX static void gemm_amx_gelu(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    int claimed = 0;
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    amx_rows(e, A, lda, Bp, N, K, &claimed, EPI_GELU);
}
KERN_AMX static void gemm_amx_gelu_grad(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    int claimed = 0;
    #pragma omp parallel if (GEMM_PAR(N, e->M, K))
    amx_rows(e, A, lda, Bp, N, K, &claimed, EPI_GELU_GRAD);
}

/* e through AMX if allowed and usable, else AVX-512-BF16 */
static void gemm_run(const epi *e, const float *A, int lda, const uint16_t *Bp, int N, int K)
{
    int amx = amx_on && amx_usable() == 1;
    if (e->gpre) (amx ? gemm_amx_gelu_grad : gemm_bf16_gelu_grad)(e, A, lda, Bp, N, K);
    else if (e->act) (amx ? gemm_amx_gelu : gemm_bf16_gelu)(e, A, lda, Bp, N, K);
    else (amx ? gemm_amx_plain : gemm_bf16_plain)(e, A, lda, Bp, N, K);
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
        epi e = { out, OC, OC, bias, accumulate, NULL, NULL };
        gemm_run(&e, inp, IC, w->fwd, N, IC);
        return;
    }
#endif
    matmul_forward(out, inp, w ? w->w : NULL, bias, N, IC, OC, accumulate);   /* not reached on supported CPUs */
}

void matmul_bf16_forward_gelu(float *pre, float *act, const float *inp, const matmul_bf16 *w,
                              const float *bias, int N, int IC, int OC)
{
    if (N <= 0 || OC <= 0) return;
#if KERN_X86
    if (w && w->IC == IC && w->OC == OC) {
        epi e = { pre, OC, OC, bias, 0, act, NULL };
        gemm_run(&e, inp, IC, w->fwd, N, IC);
        return;
    }
#endif
    matmul_forward_gelu(pre, act, inp, w ? w->w : NULL, bias, N, IC, OC);   /* not reached on supported CPUs */
}

size_t matmul_bf16_chunk_elems(int IC, int nr)
{
    size_t f = pack_elems(nr, IC), b = pack_elems(IC, nr);
    return f > b ? f : b;
}

int matmul_bf16_chunk_scratch(int IC, int nr, float **rows, uint16_t **pack)
{
    if (!kernels_bf16() || !kernels_bf16_supported()) return 0;
    size_t fb = ((size_t)nr * IC * 4 + 63) / 64 * 64;
    char *b = kern_scratch_slot(1, fb + matmul_bf16_chunk_elems(IC, nr) * 2 + 64);
    if (!b) return 0;
    *rows = (float *)b;
    *pack = (uint16_t *)(b + fb);
    return 1;
}

int matmul_bf16_forward_chunk(float *out, int ldo, const float *inp, const float *rows, uint16_t *pack, int N, int IC,
                              int nr)
{
    if (!kernels_bf16_supported() || N <= 0 || IC <= 0 || nr <= 0) return -1;
#if KERN_X86
    pack_into(pack, rows, NULL, nr, IC, (size_t)IC, 1);
    epi e = { out, ldo, nr, NULL, 0, NULL, NULL };
    gemm_run(&e, inp, IC, pack, N, IC);
    return 0;
#else
    (void)out; (void)ldo; (void)inp; (void)rows; (void)pack;
    return -1;
#endif
}

int matmul_bf16_backward_chunk(float *dinp, const float *dout, int ldd, const float *rows, uint16_t *pack, int N,
                               int IC, int nr, int accumulate)
{
    if (!kernels_bf16_supported() || N <= 0 || IC <= 0 || nr <= 0) return -1;
#if KERN_X86
    pack_into(pack, rows, NULL, IC, nr, 1, (size_t)IC);   /* the transpose: IC outputs over nr inputs */
    epi e = { dinp, IC, IC, NULL, accumulate, NULL, NULL };
    gemm_run(&e, dout, ldd, pack, N, nr);
    return 0;
#else
    (void)dinp; (void)dout; (void)ldd; (void)rows; (void)pack; (void)accumulate;
    return -1;
#endif
}

/* the transposed packing, made on the first backward; -1 if out of memory */
static int need_bwd(matmul_bf16 *w, int IC, int OC)
{
    if (!w->bwd && w->w) w->bwd = pack(w->w, IC, OC, 1, (size_t)IC);
    return w->bwd ? 0 : -1;
}

int matmul_bf16_prepare_backward(matmul_bf16 *w)
{
    return need_bwd(w, w->IC, w->OC);
}

int matmul_bf16_backward(float *dinp, float *dbias, const float *dout, matmul_bf16 *w,
                           int N, int IC, int OC, int accumulate)
{
    if (N <= 0) return 0;
    if (dinp && IC > 0 && OC <= 0 && !accumulate)   /* empty product */
        memset(dinp, 0, (size_t)N * IC * sizeof(float));
    if (dinp && IC > 0 && OC > 0) {
        if (need_bwd(w, IC, OC)) return -1;
#if KERN_X86
        epi e = { dinp, IC, IC, NULL, accumulate, NULL, NULL };
        gemm_run(&e, dout, OC, w->bwd, N, OC);
#else
        matmul_backward_input(dinp, dout, w->w, N, IC, OC, accumulate);   /* not reached: no packing here */
#endif
    }
    if (dbias) matmul_backward(NULL, NULL, dbias, dout, NULL, NULL, N, IC, OC);
    return 0;
}

int matmul_bf16_backward_gelu(float *dpre, const float *pre, const float *dout, matmul_bf16 *w,
                              int N, int IC, int OC)
{
    if (N <= 0 || IC <= 0 || !dpre) return 0;
    if (OC <= 0) {   /* empty product: 0 * gelu'(pre) */
        memset(dpre, 0, (size_t)N * IC * sizeof(float));
        return 0;
    }
    if (need_bwd(w, IC, OC)) return -1;
#if KERN_X86
    epi e = { dpre, IC, IC, NULL, 0, NULL, pre };
    gemm_run(&e, dout, OC, w->bwd, N, OC);
#else
    matmul_backward_gelu(dpre, pre, dout, w->w, N, IC, OC);   /* not reached: no packing here */
#endif
    return 0;
}
