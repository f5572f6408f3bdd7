/* test_quant.c: the GGUF quant kernels (src/kernels/quant.h) against
 * double-precision references written here.
 *
 * quant_matmul quantises the activations (Q8_0 / Q8_K, quant_act_type) and
 * sums exact integer products per sub-block, so it is compared twice:
 * - "tight": against sum_j W_oj A'_nj in double, W the dequantised weights
 *   and A' the quantised-then-dequantised activations. The only differences
 *   are fp32 roundings: one per sub-block product (float(isum) * da), one per
 *   FMA adding it (and the min term's) into the accumulator, and the
 *   reference's own rounding of each dequantised weight. Each is at most
 *   u = 2^-24 relative to a term bounded by B_j |A'_j| with B_j the largest
 *   magnitude a level or min of that sub-block can take (|hi| + |lo| +
 *   |hi - lo| from the all-lowest and all-highest levels of the same block),
 *   so |err| <= (2 nsb + 8) u sum_j B_j |A'_nj| to first order.
 * - "loose": against the same sum with the unquantised activations A. Then
 *   also sum_j |W_oj| |A_j - A'_j| enters; rounding to nearest gives
 *   |A - A'| <= d/2 per value, plus up to 127 |d - fp16(d)| <= 127 d 2^-11
 *   for Q8_0 (the quantiser divides by the unrounded d), and up to d for
 *   Q8_K (the +128 level is clamped to 127): 0.6 d and 1.0 d are used.
 * F32/F16/BF16 weights (no quantised activations) and backward_input (fp32
 * sgemm over dequantised rows) are held to the classic bound (K + 4) u
 * sum |w||a| for K-term fp32 sums.
 * Every check runs on every tier (and AVX-512 without VNNI), with 1 and 2
 * threads (bit for bit equal), and the packed weights must give the raw
 * ones' results bit for bit. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "testlib.h"

static peftc_rng rng;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static float urand(float lo, float hi) { return lo + (hi - lo) * peftc_rng_uniform(&rng); }

static int is_kquant(uint32_t t) { return t == GGML_TYPE_Q4_K || t == GGML_TYPE_Q5_K || t == GGML_TYPE_Q6_K; }
static int is_float(uint32_t t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

/* where a block's level bytes are, for the all-lowest / all-highest copies */
static void level_bytes(uint32_t t, int *lo, int *hi)
{
    switch (t) {
    case GGML_TYPE_Q4_0: *lo = 2; *hi = 18; break;
    case GGML_TYPE_Q4_1: *lo = 4; *hi = 20; break;
    case GGML_TYPE_Q5_0: *lo = 2; *hi = 22; break;
    case GGML_TYPE_Q5_1: *lo = 4; *hi = 24; break;
    case GGML_TYPE_Q8_0: *lo = 2; *hi = 34; break;
    case GGML_TYPE_Q4_K: *lo = 16; *hi = 144; break;
    case GGML_TYPE_Q5_K: *lo = 16; *hi = 176; break;
    case GGML_TYPE_Q6_K: *lo = 0; *hi = 192; break;
    default: *lo = *hi = 0;
    }
}

/* a random fp16 bit pattern of a positive value in [lo, hi) */
static uint16_t rand_f16(float lo, float hi) { return quant_f32_to_f16(urand(lo, hi)); }

/* OC rows of IC values stored as t: quantised random floats for the types
 * with a quantiser, random bytes with sane fp16 scales for the K-quants */
static uint8_t *make_weight(uint32_t t, int IC, int OC)
{
    size_t rb = ggml_row_bytes(t, IC);
    uint8_t *w = xmalloc(rb * OC);
    if (is_kquant(t)) {
        const ggml_type_traits *tr = ggml_traits(t);
        for (size_t i = 0; i < rb * OC; i++) w[i] = (uint8_t)peftc_rng_u64(&rng);
        for (size_t b = 0; b < rb * OC / tr->bytes; b++) {
            uint8_t *x = w + b * tr->bytes;
            uint16_t d = rand_f16(0.0005f, 0.004f), dm = rand_f16(0.0005f, 0.004f);
            if (t == GGML_TYPE_Q6_K) memcpy(x + 208, &d, 2);
            else { memcpy(x, &d, 2); memcpy(x + 2, &dm, 2); }
        }
    } else {
        float *row = xmalloc((size_t)IC * 4);
        for (int o = 0; o < OC; o++) {
            float sc = urand(0.02f, 0.2f), sh = urand(-0.05f, 0.05f);
            for (int j = 0; j < IC; j++) row[j] = sh + sc * urand(-1, 1);
            if (quant_quantize_row(t, row, w + (size_t)o * rb, IC) != 0) { fprintf(stderr, "quantise %u\n", t); exit(2); }
        }
        free(row);
    }
    return w;
}

/* dequantised weights W (OC, IC), and B (OC, IC): the bound on the
 * magnitude of each value's level and min terms */
static void weight_ref(uint32_t t, const uint8_t *w, int IC, int OC, float *W, float *B)
{
    size_t rb = ggml_row_bytes(t, IC);
    int lo, hi;
    level_bytes(t, &lo, &hi);
    const ggml_type_traits *tr = ggml_traits(t);
    uint8_t *c0 = xmalloc(rb), *c1 = xmalloc(rb);
    float *v0 = xmalloc((size_t)IC * 4), *v1 = xmalloc((size_t)IC * 4);
    for (int o = 0; o < OC; o++) {
        const uint8_t *r = w + (size_t)o * rb;
        quant_dequantize_row(t, r, W + (size_t)o * IC, IC);
        if (is_float(t)) {
            for (int j = 0; j < IC; j++) B[(size_t)o * IC + j] = fabsf(W[(size_t)o * IC + j]);
            continue;
        }
        memcpy(c0, r, rb);
        memcpy(c1, r, rb);
        for (size_t b = 0; b < rb / tr->bytes; b++) {
            memset(c0 + b * tr->bytes + lo, t == GGML_TYPE_Q8_0 ? 0x80 : 0x00, hi - lo);
            memset(c1 + b * tr->bytes + lo, t == GGML_TYPE_Q8_0 ? 0x7f : 0xff, hi - lo);
        }
        quant_dequantize_row(t, c0, v0, IC);
        quant_dequantize_row(t, c1, v1, IC);
        for (int j = 0; j < IC; j++)
            B[(size_t)o * IC + j] = fabsf(v0[j]) + fabsf(v1[j]) + fabsf(v1[j] - v0[j]);
    }
    free(c0); free(c1); free(v0); free(v1);
}

/* A' (the activations as the kernel sees them) and D (the scale d of each
 * value's block: |A - A'| <= cA * D) */
static void act_ref(uint32_t t, const float *A, int N, int IC, float *Aq, float *D)
{
    uint32_t at = quant_act_type(t);
    if (is_float(t)) {
        memcpy(Aq, A, (size_t)N * IC * 4);
        memset(D, 0, (size_t)N * IC * 4);
        return;
    }
    size_t rb = ggml_row_bytes(at, IC);
    int blk = ggml_traits(at)->block, bb = ggml_traits(at)->bytes;
    uint8_t *q = xmalloc(rb);
    for (int n = 0; n < N; n++) {
        quant_quantize_row(at, A + (size_t)n * IC, q, IC);
        quant_dequantize_row(at, q, Aq + (size_t)n * IC, IC);
        for (int j = 0; j < IC; j++) {
            const uint8_t *b = q + (size_t)(j / blk) * bb;
            float d;
            if (at == GGML_TYPE_Q8_0) { uint16_t h; memcpy(&h, b, 2); d = quant_f16_to_f32(h); }
            else memcpy(&d, b, 4);
            D[(size_t)n * IC + j] = fabsf(d);
        }
    }
    free(q);
}

typedef struct { double worst_tight, worst_loose, worst_bwd; int bad_threads, bad_pack, bad_status, runs; } tally;

static const uint32_t types[] = {
    GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,
    GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16,
};

static void run_shape(uint32_t t, int N, int IC, int OC, tally *ta)
{
    const double u = 1.0 / 16777216.0;
    uint8_t *w = make_weight(t, IC, OC);
    float *W = xmalloc((size_t)OC * IC * 4), *B = xmalloc((size_t)OC * IC * 4);
    float *A = xmalloc((size_t)N * IC * 4), *Aq = xmalloc((size_t)N * IC * 4), *D = xmalloc((size_t)N * IC * 4);
    float *out1 = xmalloc((size_t)N * OC * 4), *out2 = xmalloc((size_t)N * OC * 4), *outp = xmalloc((size_t)N * OC * 4);
    float *dout = xmalloc((size_t)N * OC * 4);
    float *di1 = xmalloc((size_t)N * IC * 4), *di2 = xmalloc((size_t)N * IC * 4), *base = xmalloc((size_t)N * IC * 4);
    weight_ref(t, w, IC, OC, W, B);
    for (size_t i = 0; i < (size_t)N * IC; i++) A[i] = urand(-1, 1) * (i % 7 == 0 ? 3.0f : 1.0f);
    for (size_t i = 0; i < (size_t)N * OC; i++) dout[i] = urand(-1, 1);
    for (size_t i = 0; i < (size_t)N * IC; i++) base[i] = urand(-1, 1);
    act_ref(t, A, N, IC, Aq, D);
    const double cA = quant_act_type(t) == GGML_TYPE_Q8_K ? 1.0 : 0.6;
    const int S = t == GGML_TYPE_Q6_K ? 16 : 32, nsb = IC / S;

    omp_set_num_threads(1);
    int st = quant_matmul(out1, A, w, t, N, IC, OC);
    st |= quant_matmul_backward_input(di1, dout, w, t, N, IC, OC, 0);
    omp_set_num_threads(2);
    st |= quant_matmul(out2, A, w, t, N, IC, OC);
    memcpy(di2, base, (size_t)N * IC * 4);
    st |= quant_matmul_backward_input(di2, dout, w, t, N, IC, OC, 1);
    if (st) ta->bad_status++;
    if (memcmp(out1, out2, (size_t)N * OC * 4)) { ta->bad_threads++; if (getenv("QDEBUG")) printf("# fwd threads differ %s N=%d IC=%d OC=%d\n", ggml_traits(t)->name, N, IC, OC); }
    if (!is_float(t)) {
        quant_packed *p = quant_pack(w, t, IC, OC);
        if (!p || quant_matmul_packed(outp, A, p, N) != 0 || memcmp(out1, outp, (size_t)N * OC * 4)) ta->bad_pack++;
        quant_packed_free(p);
    }
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            const float *wr = W + (size_t)o * IC, *br = B + (size_t)o * IC;
            const float *aq = Aq + (size_t)n * IC, *a = A + (size_t)n * IC, *d = D + (size_t)n * IC;
            double sq = 0, s = 0, eq = 0, e = 0, ea = 0;
            for (int j = 0; j < IC; j++) {
                sq += (double)wr[j] * aq[j];
                s += (double)wr[j] * a[j];
                eq += (double)br[j] * fabs(aq[j]);
                e += (double)br[j] * fabs(a[j]);
                ea += fabs((double)wr[j]) * cA * d[j];
            }
            double tolq = (is_float(t) ? IC + 4 : 2 * nsb + 8) * u * eq + 1e-30;
            double tol = (is_float(t) ? IC + 4 : 2 * nsb + 8) * u * e + ea + 1e-30;
            double got = out1[(size_t)n * OC + o];
            double rq = fabs(got - sq) / tolq, r = fabs(got - s) / tol;
            if (!(rq <= ta->worst_tight)) ta->worst_tight = rq != rq ? INFINITY : rq;
            if (!(r <= ta->worst_loose)) ta->worst_loose = r != r ? INFINITY : r;
        }
    }
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < IC; j++) {
            double s = 0, e = 0;
            for (int o = 0; o < OC; o++) {
                s += (double)dout[(size_t)n * OC + o] * W[(size_t)o * IC + j];
                e += fabs((double)dout[(size_t)n * OC + o] * W[(size_t)o * IC + j]);
            }
            double tol = (OC + 4) * u * e + 1e-30;
            double r1 = fabs(di1[(size_t)n * IC + j] - s) / tol;
            double r2 = fabs(di2[(size_t)n * IC + j] - (s + base[(size_t)n * IC + j])) /
                        (tol + 2 * u * (fabs(s) + fabs(base[(size_t)n * IC + j])));
            double r = r1 > r2 ? r1 : r2;
            if (!(r <= ta->worst_bwd)) ta->worst_bwd = r != r ? INFINITY : r;
        }
    }
    /* backward bit for bit across thread counts (overwrite mode) */
    omp_set_num_threads(2);
    quant_matmul_backward_input(di2, dout, w, t, N, IC, OC, 0);
    if (memcmp(di1, di2, (size_t)N * IC * 4)) { ta->bad_threads++; if (getenv("QDEBUG")) printf("# bwd threads differ %s N=%d IC=%d OC=%d\n", ggml_traits(t)->name, N, IC, OC); }
    ta->runs++;
    free(w); free(W); free(B); free(A); free(Aq); free(D); free(out1); free(out2); free(outp);
    free(dout); free(di1); free(di2); free(base);
}

static void test_matmul_tier(const char *tier)
{
    static const int Ns[] = { 1, 3, 17, 65 }, OCs[] = { 1, 7, 33 };
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        uint32_t t = types[ti];
        int ICs[2];
        if (is_kquant(t)) { ICs[0] = 256; ICs[1] = 512; }
        else { ICs[0] = 96; ICs[1] = 512; }
        tally ta = { 0 };
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 2; b++)
                for (int c = 0; c < 3; c++) run_shape(t, Ns[a], ICs[b], OCs[c], &ta);
        const char *nm = ggml_traits(t)->name;
        CHECK(ta.bad_status == 0, "[%s] %s: every call returned 0 (%d shapes)", tier, nm, ta.runs);
        CHECK(ta.worst_tight <= 1.0, "[%s] %s matmul vs reference on quantised activations: worst err/bound %.3g",
              tier, nm, ta.worst_tight);
        CHECK(ta.worst_loose <= 1.0, "[%s] %s matmul vs reference on fp32 activations: worst err/bound %.3g",
              tier, nm, ta.worst_loose);
        CHECK(ta.worst_bwd <= 1.0, "[%s] %s backward_input (= and +=) vs reference: worst err/bound %.3g",
              tier, nm, ta.worst_bwd);
        CHECK(ta.bad_threads == 0, "[%s] %s 1 and 2 threads bit for bit (%d shapes differ)", tier, nm, ta.bad_threads);
        if (!is_float(t))
            CHECK(ta.bad_pack == 0, "[%s] %s packed == raw bit for bit (%d shapes differ)", tier, nm, ta.bad_pack);
    }
}

/* the tiers agree to rounding: same inputs, outputs within 2 x the tight bound
 * of each other (checked through the reference above); here the big shape of
 * the model once per tier against the portable result */
static void test_tiers_agree(void)
{
    const int N = 9, IC = 576, OC = 200;
    uint32_t ts[] = { GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0, GGML_TYPE_Q5_1 };
    for (size_t i = 0; i < 4; i++) {
        uint8_t *w = make_weight(ts[i], IC, OC);
        float *A = xmalloc((size_t)N * IC * 4), *o0 = xmalloc((size_t)N * OC * 4), *o1 = xmalloc((size_t)N * OC * 4);
        for (size_t j = 0; j < (size_t)N * IC; j++) A[j] = urand(-2, 2);
        kernels_set_isa(KERNELS_ISA_PORTABLE);
        quant_matmul(o0, A, w, ts[i], N, IC, OC);
        double worst = 0, scale = 0;
        for (size_t j = 0; j < (size_t)N * OC; j++) scale = fmax(scale, fabs(o0[j]));
        for (int isa = KERNELS_ISA_AVX2; isa <= kernels_isa_max(); isa++) {
            kernels_set_isa(isa);
            for (int v = 0; v < 2; v++) {
                quant_set_vnni(v);
                quant_matmul(o1, A, w, ts[i], N, IC, OC);
                worst = fmax(worst, tl_max_abs_diff(o0, o1, (size_t)N * OC));
            }
            quant_set_vnni(1);
        }
        kernels_set_isa(KERNELS_ISA_AUTO);
        CHECK(worst <= 1e-5 * scale, "%s (%d,%d,%d): tiers within %.2g of the portable one (max |out| %.3g)",
              ggml_traits(ts[i])->name, N, IC, OC, worst, scale);
        free(w); free(A); free(o0); free(o1);
    }
}

/* the shapes above are small enough that quant_matmul may run them on one
 * thread: 1 vs 2 threads again on shapes big enough to be split, both
 * splits (decode: OC across threads; prompt: tiles of tokens x rows) */
static void test_threads_big(void)
{
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        uint32_t t = types[ti];
        int bad = 0;
        static const int Ns[] = { 1, 2, 100 };
        for (int k = 0; k < 3; k++) {
            const int N = Ns[k], IC = 512, OC = N == 1 ? 1000 : 150;
            uint8_t *w = make_weight(t, IC, OC);
            float *A = xmalloc((size_t)N * IC * 4), *o1 = xmalloc((size_t)N * OC * 4), *o2 = xmalloc((size_t)N * OC * 4);
            for (size_t j = 0; j < (size_t)N * IC; j++) A[j] = urand(-2, 2);
            omp_set_num_threads(1);
            quant_matmul(o1, A, w, t, N, IC, OC);
            omp_set_num_threads(2);
            quant_matmul(o2, A, w, t, N, IC, OC);
            bad += memcmp(o1, o2, (size_t)N * OC * 4) != 0;
            free(w); free(A); free(o1); free(o2);
        }
        CHECK(bad == 0, "%s: N=1,2,100 x 512 x (1000,150,150): 1 and 2 threads bit for bit", ggml_traits(t)->name);
    }
}

/* An unmerged LoRA at a decoding step (lowrank_row_bf16 as the epilogue of
 * quant_matmul_packed_epi, split by the product's threads): against a double
 * reference on the bf16-rounded factors, every tier; bit for bit across 1 and
 * 2 threads and equal to the product followed by the whole-row delta. */
typedef struct { const float *x; float *h; const uint16_t *A16, *Bt16; float alpha; int N, IC, R, OC; int calls; } lora_epi;
static void lora_epi_fn(void *ctx, int lo, int hi)
{
    lora_epi *e = ctx;
    __atomic_fetch_add(&e->calls, 1, __ATOMIC_RELAXED);
    for (int n = 0; n < e->N; n++)
        lowrank_row_bf16(e->h + (size_t)n * e->OC, e->x + (size_t)n * e->IC, e->A16, e->Bt16, e->alpha, e->IC, e->R,
                         e->OC, lo, hi);
}
static double bf16_round_d(float f) { uint16_t b = kernels_f32_to_bf16(f); union { uint32_t u; float f; } c = { (uint32_t)b << 16 }; return c.f; }

static void test_lora_epilogue(const char *tier)
{
    static const int ICs[] = { 96, 512, 1536 }, OCs[] = { 7, 33, 1000, 1536 }, Rs[] = { 1, 8, 16, 20 };
    const uint32_t ts[] = { GGML_TYPE_Q4_1, GGML_TYPE_Q8_0 };
    const double u = 1.0 / 16777216.0;
    double worst = 0;
    int bad_threads = 0, bad_seq = 0, runs = 0, split_calls = 0;
    for (int ti = 0; ti < 2; ti++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 4; c++)
                    for (int N = 1; N <= 2; N++) {
                        const int IC = ICs[a], OC = OCs[b], R = Rs[c];
                        uint8_t *w = make_weight(ts[ti], IC, OC);
                        quant_packed *pk = quant_pack(w, ts[ti], IC, OC);
                        float *x = xmalloc((size_t)N * IC * 4), *A = xmalloc((size_t)R * IC * 4), *B = xmalloc((size_t)OC * R * 4);
                        float *base = xmalloc((size_t)N * OC * 4), *h1 = xmalloc((size_t)N * OC * 4), *h2 = xmalloc((size_t)N * OC * 4);
                        float *hs = xmalloc((size_t)N * OC * 4);
                        uint16_t *A16 = xmalloc((size_t)R * IC * 2), *Bt16 = xmalloc((size_t)R * OC * 2);
                        for (size_t i = 0; i < (size_t)N * IC; i++) x[i] = urand(-2, 2);
                        for (size_t i = 0; i < (size_t)R * IC; i++) A[i] = urand(-0.1f, 0.1f);
                        for (size_t i = 0; i < (size_t)OC * R; i++) B[i] = urand(-0.1f, 0.1f);
                        lowrank_bf16_pack(A16, Bt16, A, B, IC, R, OC);
                        const float alpha = 2.0f;
                        lora_epi e = { x, h1, A16, Bt16, alpha, N, IC, R, OC, 0 };
                        quant_epilogue qe = { lora_epi_fn, &e };
                        omp_set_num_threads(1);
                        quant_matmul_packed(base, x, pk, N);
                        quant_matmul_packed_epi(h1, x, pk, N, &qe);
                        omp_set_num_threads(2);
                        e.h = h2; e.calls = 0;
                        quant_matmul_packed_epi(h2, x, pk, N, &qe);
                        if (e.calls > 1) split_calls++;
                        memcpy(hs, base, (size_t)N * OC * 4);
                        for (int n = 0; n < N; n++)
                            lowrank_row_bf16(hs + (size_t)n * OC, x + (size_t)n * IC, A16, Bt16, alpha, IC, R, OC, 0, OC);
                        bad_threads += memcmp(h1, h2, (size_t)N * OC * 4) != 0;
                        bad_seq += memcmp(h1, hs, (size_t)N * OC * 4) != 0;
                        for (int n = 0; n < N; n++) {
                            double z[64], za[64];
                            for (int r = 0; r < R; r++) {
                                z[r] = za[r] = 0;
                                for (int j = 0; j < IC; j++) {
                                    double p = (double)x[(size_t)n * IC + j] * bf16_round_d(A[(size_t)r * IC + j]);
                                    z[r] += p; za[r] += fabs(p);
                                }
                            }
                            for (int o = 0; o < OC; o++) {
                                /* the delta against the reference; its bound: the fp32 sums of z (IC terms)
                                 * carried through B, then R terms and the add into h */
                                double d = 0, da = 0;
                                for (int r = 0; r < R; r++) {
                                    double bq = bf16_round_d(B[(size_t)o * R + r]);
                                    d += bq * z[r];
                                    da += fabs(bq) * (za[r] * (IC + 2) * u + fabs(z[r]) * (R + 2) * u);
                                }
                                double want = base[(size_t)n * OC + o] + alpha * d;
                                double tol = alpha * da + 2 * u * (fabs(base[(size_t)n * OC + o]) + fabs(alpha * d)) + 1e-30;
                                double r_ = fabs(h1[(size_t)n * OC + o] - want) / tol;
                                if (!(r_ <= worst)) worst = r_ != r_ ? INFINITY : r_;
                            }
                        }
                        runs++;
                        quant_packed_free(pk);
                        free(w); free(x); free(A); free(B); free(base); free(h1); free(h2); free(hs); free(A16); free(Bt16);
                    }
    CHECK(worst <= 1.0, "[%s] LoRA epilogue (bf16 factors) vs double reference on the rounded factors: worst err/bound %.3g (%d shapes)",
          tier, worst, runs);
    CHECK(bad_threads == 0, "[%s] LoRA epilogue 1 and 2 threads bit for bit (%d of %d differ)", tier, bad_threads, runs);
    CHECK(bad_seq == 0, "[%s] LoRA epilogue == product then the whole-row delta, bit for bit (%d of %d differ)", tier, bad_seq, runs);
    CHECK(split_calls > 0, "[%s] the epilogue was split between threads on some shapes (%d)", tier, split_calls);
}

/* the hardware's conversions, the reference for quant_f16_to_f32 / quant_f32_to_f16 */
__attribute__((target("f16c"))) static float ref_h2f(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t ref_f2h(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static void test_roundtrip(void)
{
    const int n = 256 * 8;
    float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
    uint8_t *q = xmalloc((size_t)n * 4);
    uint32_t ts[] = { GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q8_K,
                      GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_F32 };
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
        uint32_t t = ts[i];
        for (int j = 0; j < n; j++) x[j] = urand(-1, 1) * (j % 37 == 0 ? 5.0f : 1.0f) + (j / 32 % 3 == 0 ? 0.5f : 0.0f);
        for (int j = 64; j < 96; j++) x[j] = 0.0f;   /* an all-zero block */
        int st = quant_quantize_row(t, x, q, n) | quant_dequantize_row(t, q, y, n);
        int blk = ggml_traits(t)->block;
        double worst = 0;
        for (int b = 0; b < n / blk; b++) {
            float mx = 0, mn = x[b * blk], mxv = x[b * blk];
            for (int j = 0; j < blk; j++) {
                mx = fmaxf(mx, fabsf(x[b * blk + j]));
                mn = fminf(mn, x[b * blk + j]);
                mxv = fmaxf(mxv, x[b * blk + j]);
            }
            /* the step d of each scheme and how many steps the error may reach
             * (see the loose bound above; Q4_0/Q5_0: the level opposite the
             * extreme one is clamped, a full step) */
            double d, k;
            switch (t) {
            case GGML_TYPE_Q4_0: d = mx / 8; k = 1.01; break;
            case GGML_TYPE_Q5_0: d = mx / 16; k = 1.01; break;
            case GGML_TYPE_Q4_1: d = (mxv - mn) / 15; k = 0.51; break;
            case GGML_TYPE_Q5_1: d = (mxv - mn) / 31; k = 0.55; break;
            case GGML_TYPE_Q8_0: d = mx / 127; k = 0.6; break;
            case GGML_TYPE_Q8_K: d = mx / 128; k = 1.0; break;
            case GGML_TYPE_F16: d = mx * (1.0 / 1024); k = 0.5; break;
            case GGML_TYPE_BF16: d = mx * (1.0 / 128); k = 0.5; break;
            default: d = 0; k = 0;
            }
            for (int j = 0; j < blk; j++) {
                double e = fabs((double)x[b * blk + j] - y[b * blk + j]);
                double tol = k * d + 1e-3 * fabs(mn) * (t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_1) + 1e-30;
                if (t == GGML_TYPE_F32) tol = 0;
                if (!(e <= tol)) worst = fmax(worst, e / (tol + 1e-30) + 1);
            }
        }
        CHECK(st == 0 && worst == 0, "%s: quantise/dequantise round trip within its step (worst excess %.3g)",
              ggml_traits(t)->name, worst);
    }
    CHECK(quant_quantize_row(GGML_TYPE_Q4_K, x, q, 256) == QUANT_EUNSUPPORTED, "q4_k has no quantiser: unsupported");
    CHECK(quant_dequantize_row(GGML_TYPE_Q2_K, q, y, 256) == QUANT_EUNSUPPORTED, "q2_k: unsupported");
    CHECK(quant_dequantize_row(GGML_TYPE_Q4_0, q, y, 33) == QUANT_EUNSUPPORTED, "33 values of q4_0: unsupported");
    CHECK(quant_matmul(y, x, q, GGML_TYPE_Q8_K, 1, 256, 1) == QUANT_EUNSUPPORTED, "q8_k weights: unsupported");
    /* fp16: every half survives f16 -> f32 -> f16; conversions agree with the compiler's
     * (the CPU's F16C instructions: clang 14 has no _Float16 on x86, and its __fp16
     * needs compiler-rt) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = quant_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) { bad += f == f; continue; }   /* NaN */
        bad += quant_f32_to_f16(f) != h || f != ref_h2f((uint16_t)h);
    }
    for (int i = 0; i < 1000000; i++) {
        uint32_t b = (uint32_t)peftc_rng_u64(&rng);
        float f;
        memcpy(&f, &b, 4);
        if (f != f) continue;
        bad += quant_f32_to_f16(f) != ref_f2h(f);
    }
    CHECK(bad == 0, "fp16 conversions: all 65536 halves round trip, 1e6 random floats round as F16C's vcvtps2ph (%d bad)", bad);
    free(x); free(y); free(q);
}

/* The input gradient on the bf16 path (kernels_set_bf16(1): the dequantised
 * chunks rounded to bf16 and multiplied on the bf16 kernels) against float64
 * products of the bf16-rounded operands, = and +=, and 1 vs 2 threads bit for
 * bit; skipped where the CPU has no AVX-512-BF16. */
static void test_backward_bf16(void)
{
    if (!kernels_set_bf16(1)) { kernels_set_bf16(-1); return; }
    static const uint32_t ts[] = { GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K,
                                   GGML_TYPE_F16, GGML_TYPE_BF16 };
    for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) {
        uint32_t t = ts[k];
        int N = 37, IC = 512, OC = 600;   /* two chunks of 512 rows of W, a tail of rows */
        uint8_t *w = make_weight(t, IC, OC);
        float *W = xmalloc((size_t)OC * IC * 4), *B = xmalloc((size_t)OC * IC * 4), *dout = xmalloc((size_t)N * OC * 4);
        float *d1 = xmalloc((size_t)N * IC * 4), *d2 = xmalloc((size_t)N * IC * 4);
        weight_ref(t, w, IC, OC, W, B);
        for (size_t i = 0; i < (size_t)N * OC; i++) dout[i] = urand(-1, 1);
        omp_set_num_threads(1);
        int st = quant_matmul_backward_input(d1, dout, w, t, N, IC, OC, 0);
        omp_set_num_threads(2);
        for (size_t i = 0; i < (size_t)N * IC; i++) d2[i] = 0.5f;
        st |= quant_matmul_backward_input(d2, dout, w, t, N, IC, OC, 1);
        double worst = 0, worst_acc = 0;
        for (int n = 0; n < N; n++)
            for (int j = 0; j < IC; j++) {
                double s = 0, e = 0;
                for (int o = 0; o < OC; o++) {
                    double p = bf16_round_d(dout[(size_t)n * OC + o]) * bf16_round_d(W[(size_t)o * IC + j]);
                    s += p;
                    e += fabs(p);
                }
                double tol = (OC + 4) / 16777216.0 * e + 1e-30;
                double r = fabs(d1[(size_t)n * IC + j] - s) / tol, ra = fabs(d2[(size_t)n * IC + j] - 0.5 - s) / (tol + 1e-7);
                if (!(r <= worst)) worst = r != r ? INFINITY : r;
                if (!(ra <= worst_acc)) worst_acc = ra != ra ? INFINITY : ra;
            }
        omp_set_num_threads(2);
        quant_matmul_backward_input(d2, dout, w, t, N, IC, OC, 0);
        CHECK(!st && worst <= 1.0 && worst_acc <= 1.0, "bf16 path: %s backward_input (= and +=) vs float64 of the bf16-rounded operands: worst err/bound %.3g, %.3g",
              ggml_traits(t)->name, worst, worst_acc);
        CHECK(!memcmp(d1, d2, (size_t)N * IC * 4), "bf16 path: %s backward_input 1 thread == 2 threads bit for bit", ggml_traits(t)->name);
        free(w); free(W); free(B); free(dout); free(d1); free(d2);
    }
    kernels_set_bf16(-1);
}

int main(void)
{
    peftc_rng_seed(&rng, 1234);
    test_roundtrip();
    for (int isa = KERNELS_ISA_PORTABLE; isa <= kernels_isa_max(); isa++) {
        kernels_set_isa(isa);
        if (isa == KERNELS_ISA_AVX512 && quant_set_vnni(-1)) {
            test_matmul_tier("avx512-vnni");
            quant_set_vnni(0);
            test_matmul_tier("avx512-bw");
            quant_set_vnni(1);
        } else {
            test_matmul_tier(kernels_isa_name(isa));
        }
    }
    for (int isa = KERNELS_ISA_PORTABLE; isa <= kernels_isa_max(); isa++) {
        kernels_set_isa(isa);
        test_lora_epilogue(kernels_isa_name(isa));
    }
    kernels_set_isa(KERNELS_ISA_AUTO);
    test_threads_big();
    test_tiers_agree();
    test_backward_bf16();
    return tl_finish();
}
