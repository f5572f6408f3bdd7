/* test_nf4.c: the NF4 kernels (src/kernels/nf4.c) against float64 products
 * of the dequantised weight, on every ISA tier, with 1 and 2 threads (the
 * same bits), the input-gradient backward also against central finite
 * differences of the forward, and the bad sizes. (The quantisation itself
 * is checked against bitsandbytes in tests/check_nf4.sh.) N = 1 and 7 run
 * the LUT kernels of each tier, N = 33 and 64 the dequantise-a-chunk + sgemm
 * path (NF4_SGEMM_MIN_N = 16): fp32 (kernels_set_bf16(0)), and, where the
 * CPU has AVX-512-BF16, the bf16 chunks (dequantised rows rounded to bf16,
 * matmul_bf16_*_chunk) against float64 products of the bf16-rounded
 * operands. */
#define PEFTC_KERNELS_INTERNAL
#include <omp.h>
#include "testlib.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

static uint64_t rs = 88172645463325252ull;
static float frand(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2 - 1);
}

/* max |got - ref| / (max |ref| + 1e-30) */
static double rel_err(const float *got, const double *ref, size_t n)
{
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
        if (fabs(ref[i]) > s) s = fabs(ref[i]);
    }
    return m / (s + 1e-30);
}

/* x rounded to bf16 (nearest even), as a float */
static float bf16r(float x)
{
    uint32_t u = (uint32_t)kernels_f32_to_bf16(x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void run_case(int N, int IC, int OC, int dq)
{
    size_t nw = (size_t)OC * IC;
    float *w = malloc(nw * 4), *wd = malloc(nw * 4), *x = malloc((size_t)N * IC * 4), *g = malloc((size_t)N * OC * 4);
    float *out = malloc((size_t)N * OC * 4), *out1 = malloc((size_t)N * OC * 4);
    float *dx = malloc((size_t)N * IC * 4), *dx1 = malloc((size_t)N * IC * 4);
    double *ref = malloc((size_t)N * OC * 8), *dref = malloc((size_t)N * IC * 8);
    for (size_t i = 0; i < nw; i++) w[i] = frand() * 0.05f * (1 + (i % 97 == 0) * 20);
    for (size_t i = 0; i < (size_t)N * IC; i++) x[i] = frand();
    for (size_t i = 0; i < (size_t)N * OC; i++) g[i] = frand();
    nf4_tensor t;
    if (nf4_quantize(&t, w, OC, IC, dq) || nf4_dequantize_rows(&t, 0, OC, wd)) { CHECK(0, "quantise %dx%d", OC, IC); return; }
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int k = 0; k < IC; k++) s += (double)x[(size_t)n * IC + k] * wd[(size_t)o * IC + k];
            ref[(size_t)n * OC + o] = s;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < IC; k++) {
            double s = 0;
            for (int o = 0; o < OC; o++) s += (double)g[(size_t)n * OC + o] * wd[(size_t)o * IC + k];
            dref[(size_t)n * IC + k] = s;
        }
    kernels_set_bf16(0);
    for (int isa = KERNELS_ISA_PORTABLE; isa <= kernels_isa_max(); isa++) {
        kernels_set_isa(isa);
        const char *nm = kernels_isa_name(isa);
        omp_set_num_threads(1);
        int rc = nf4_matmul(out1, x, &t, N) | nf4_matmul_backward_input(dx1, g, &t, N, 0);
        omp_set_num_threads(2);
        rc |= nf4_matmul(out, x, &t, N);
        CHECK(!rc, "%s N=%d %dx%d dq=%d: kernels run", nm, N, OC, IC, dq);
        double e = rel_err(out, ref, (size_t)N * OC);
        CHECK(e < 2e-6, "%s N=%d %dx%d dq=%d: forward vs float64 of the dequantised weight, rel err %.2e", nm, N, OC, IC, dq, e);
        CHECK(!memcmp(out, out1, (size_t)N * OC * 4), "%s N=%d %dx%d: forward 1 thread == 2 threads bit for bit", nm, N, OC, IC);
        for (size_t i = 0; i < (size_t)N * IC; i++) dx[i] = 1.0f;
        rc = nf4_matmul_backward_input(dx, g, &t, N, 0);
        e = rel_err(dx, dref, (size_t)N * IC);
        CHECK(!rc && e < 2e-6, "%s N=%d %dx%d dq=%d: backward (dinp = dout W) vs float64, rel err %.2e", nm, N, OC, IC, dq, e);
        CHECK(!memcmp(dx, dx1, (size_t)N * IC * 4), "%s N=%d %dx%d: backward 1 thread == 2 threads bit for bit", nm, N, OC, IC);
        /* accumulate: += */
        for (size_t i = 0; i < (size_t)N * IC; i++) dx[i] = 1.0f;
        rc = nf4_matmul_backward_input(dx, g, &t, N, 1);
        double m = 0;
        for (size_t i = 0; i < (size_t)N * IC; i++) { double d = fabs(dx[i] - 1.0 - dref[i]); if (d > m) m = d; }
        CHECK(!rc && m < 1e-3, "%s: backward accumulates (max err %.2e)", nm, m);
    }
    kernels_set_isa(KERNELS_ISA_AUTO);
    omp_set_num_threads(2);
    /* finite differences: L(x) = sum g * (x W^T) through the forward kernel;
     * dL/dx[i] from two forwards at x +- h e_i vs the backward's value */
    nf4_matmul_backward_input(dx, g, &t, N, 0);
    double worst = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t i = (size_t)((frand() + 1) * 0.5 * (N * IC - 1));
        const float h = 1e-2f;
        float keep = x[i];
        double L[2];
        for (int s = 0; s < 2; s++) {
            x[i] = keep + (s ? -h : h);
            nf4_matmul(out, x, &t, N);
            double acc = 0;
            for (size_t j = 0; j < (size_t)N * OC; j++) acc += (double)g[j] * out[j];
            L[s] = acc;
        }
        x[i] = keep;
        double fd = (L[0] - L[1]) / (2.0 * h), d = fabs(fd - dx[i]) / (fabs(dx[i]) + 1e-2);
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-2, "N=%d %dx%d: backward vs central differences of the forward, worst rel %.2e", N, OC, IC, worst);
    if (kernels_set_bf16(1)) {
        /* the bf16 path: forward from NF4_SGEMM_MIN_N rows (below, the LUT
         * kernels stay fp32), the backward always; exact products of the
         * rounded operands summed in fp32 */
        float *xb = malloc((size_t)N * IC * 4), *gb = malloc((size_t)N * OC * 4), *wb = malloc(nw * 4);
        int fwd16 = N >= NF4_SGEMM_MIN_N;
        for (size_t i = 0; i < (size_t)N * IC; i++) xb[i] = fwd16 ? bf16r(x[i]) : x[i];
        for (size_t i = 0; i < (size_t)N * OC; i++) gb[i] = bf16r(g[i]);
        for (size_t i = 0; i < nw; i++) wb[i] = bf16r(wd[i]);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double sum = 0;
                for (int k = 0; k < IC; k++) sum += (double)xb[(size_t)n * IC + k] * (fwd16 ? wb : wd)[(size_t)o * IC + k];
                ref[(size_t)n * OC + o] = sum;
            }
        for (int n = 0; n < N; n++)
            for (int k = 0; k < IC; k++) {
                double sum = 0;
                for (int o = 0; o < OC; o++) sum += (double)gb[(size_t)n * OC + o] * wb[(size_t)o * IC + k];
                dref[(size_t)n * IC + k] = sum;
            }
        omp_set_num_threads(1);
        int rc = nf4_matmul(out1, x, &t, N) | nf4_matmul_backward_input(dx1, g, &t, N, 0);
        omp_set_num_threads(2);
        rc |= nf4_matmul(out, x, &t, N) | nf4_matmul_backward_input(dx, g, &t, N, 0);
        double e = rel_err(out, ref, (size_t)N * OC), eb = rel_err(dx, dref, (size_t)N * IC);
        CHECK(!rc && e < 1e-5, "bf16 N=%d %dx%d dq=%d: forward vs float64 of the bf16-rounded operands, rel err %.2e", N, OC, IC, dq, e);
        CHECK(!rc && eb < 1e-5, "bf16 N=%d %dx%d dq=%d: backward vs float64 of the bf16-rounded operands, rel err %.2e", N, OC, IC, dq, eb);
        CHECK(!memcmp(out, out1, (size_t)N * OC * 4) && !memcmp(dx, dx1, (size_t)N * IC * 4),
              "bf16 N=%d %dx%d: forward and backward, 1 thread == 2 threads bit for bit", N, OC, IC);
        for (size_t i = 0; i < (size_t)N * IC; i++) dx1[i] = dx[i] + 1.0f;
        for (size_t i = 0; i < (size_t)N * IC; i++) dx[i] = 1.0f;
        rc = nf4_matmul_backward_input(dx, g, &t, N, 1);
        double m = 0;
        for (size_t i = 0; i < (size_t)N * IC; i++) { double d = fabs(dx[i] - dx1[i]); if (d > m) m = d; }
        CHECK(!rc && m < 1e-5, "bf16 N=%d: backward accumulates (max err %.2e)", N, m);
        free(xb); free(gb); free(wb);
    }
    kernels_set_bf16(-1);
    nf4_free(&t);
    free(w); free(wd); free(x); free(g); free(out); free(out1); free(dx); free(dx1); free(ref); free(dref);
}

int main(void)
{
    run_case(1, 64, 1, 1);
    run_case(7, 384, 37, 1);     /* tails of every tile */
    run_case(33, 128, 300, 0);   /* more than one 256-group of absmax */
    run_case(64, 1536, 96, 1);   /* MiniLM's FFN width; several backward chunks */
    nf4_tensor t;
    float w[96] = {0}, o[4];
    CHECK(nf4_quantize(&t, w, 2, 48, 1) == 0, "a 2x48 tensor quantises (bitsandbytes takes any size)");
    CHECK(nf4_matmul(o, w, &t, 1) == NF4_EINVAL, "matmul refuses a row of 48 (not a multiple of 64)");
    nf4_free(&t);
    CHECK(nf4_quantize(&t, w, 0, 64, 1) == NF4_EINVAL, "an empty tensor is refused");
    /* bytes per parameter of a MiniLM FFN weight */
    float *big = malloc((size_t)1536 * 384 * 4);
    for (size_t i = 0; i < (size_t)1536 * 384; i++) big[i] = frand();
    nf4_quantize(&t, big, 1536, 384, 1);
    double bpp = (double)nf4_bytes(&t) / (1536.0 * 384);
    CHECK(fabs(bpp - (0.5 + 1.0 / 64 + 4.0 / (64 * 256))) < 1e-4, "double quantised: %.4f bytes per parameter", bpp);
    nf4_free(&t);
    nf4_quantize(&t, big, 1536, 384, 0);
    bpp = (double)nf4_bytes(&t) / (1536.0 * 384);
    CHECK(fabs(bpp - 0.5625) < 1e-9, "without double quantisation: %.4f bytes per parameter", bpp);
    nf4_free(&t);
    free(big);
    return tl_finish();
}
