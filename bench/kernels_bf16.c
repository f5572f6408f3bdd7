/* kernels_bf16.c: GFLOPS of the bf16 frozen-weight kernels (matmul_bf16_*)
 * against OpenBLAS sgemm (matmul_forward / matmul_backward_input) at the
 * training shapes of all-MiniLM-L6-v2 (N = 32*64 rows), then the FFN with its
 * GELU: the fused kernels (matmul_bf16_forward_gelu / _backward_gelu) against
 * the passes the model ran before them (GEMM, memset, gelu pass). Minimum time
 * over the repeats (the machine may be shared).
 *   bash bench/kernels_bf16.sh [reps]     (OMP_NUM_THREADS=1|2) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"

static double now(void) { return omp_get_wtime(); }

static float *rnd(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX * 2 - 1;
    return x;
}

#define MIN(t, a, b) do { double d_ = (b) - (a); if (d_ < (t)) (t) = d_; } while (0)

/* the FFN of one layer, N x C -> F -> C: forward (pre, act) and the input
 * gradient through the down projection and the GELU */
static void ffn(int N, int C, int F, int reps, int amx)
{
    float *x = rnd((size_t)N * C), *wi = rnd((size_t)F * C), *bi = rnd(F), *wf = rnd((size_t)C * F);
    for (size_t i = 0; i < (size_t)F * C; i++) { wi[i] *= 0.1f; wf[i] *= 0.05f; }
    float *pre = rnd((size_t)N * F), *act = rnd((size_t)N * F), *dout = rnd((size_t)N * C);
    float *dact = rnd((size_t)N * F), *dpre = rnd((size_t)N * F);
    matmul_bf16 *pi = matmul_bf16_pack(wi, C, F), *pf = matmul_bf16_pack(wf, F, C);
    matmul_bf16_backward(dpre, NULL, dout, pf, N, F, C, 0);   /* packs the transpose */
    kernels_bf16_amx(amx);
    double t[6] = { 1e9, 1e9, 1e9, 1e9, 1e9, 1e9 };
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        matmul_bf16_forward(pre, x, pi, bi, N, C, F, 0);
        gelu_forward(act, pre, (size_t)N * F);
        double t1 = now();
        matmul_bf16_forward_gelu(pre, act, x, pi, bi, N, C, F);
        double t2 = now();
        memset(dact, 0, (size_t)N * F * sizeof(float));
        matmul_bf16_backward(dact, NULL, dout, pf, N, F, C, 1);
        memset(dpre, 0, (size_t)N * F * sizeof(float));
        gelu_backward(dpre, pre, dact, (size_t)N * F);
        double t3 = now();
        matmul_bf16_backward_gelu(dpre, pre, dout, pf, N, F, C);
        double t4 = now();
        matmul_forward(pre, x, wi, bi, N, C, F, 0);
        gelu_forward(act, pre, (size_t)N * F);
        double t5 = now();
        matmul_backward_gelu(dpre, pre, dout, wf, N, F, C);
        double t6 = now();
        MIN(t[0], t0, t1); MIN(t[1], t1, t2); MIN(t[2], t2, t3); MIN(t[3], t3, t4);
        MIN(t[4], t4, t5); MIN(t[5], t5, t6);
    }
    printf("FFN %d x %d -> %d with GELU (%s), ms:\n", N, C, F, amx ? "AMX" : "AVX-512-BF16");
    printf("  forward   GEMM + gelu_forward %7.3f   fused %7.3f  (%.2fx)   fp32 matmul_forward_gelu %7.3f\n",
           t[0] * 1e3, t[1] * 1e3, t[0] / t[1], t[4] * 1e3);
    printf("  backward  memset + GEMM + memset + gelu_backward %7.3f   fused %7.3f  (%.2fx)   fp32 matmul_backward_gelu %7.3f\n",
           t[2] * 1e3, t[3] * 1e3, t[2] / t[3], t[5] * 1e3);
    matmul_bf16_free(pi); matmul_bf16_free(pf);
    free(x); free(wi); free(bi); free(wf); free(pre); free(act); free(dout); free(dact); free(dpre);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (!kernels_bf16_supported()) { printf("no avx512bf16: nothing to measure\n"); return 0; }
    const int N = 32 * 64, shapes[3][2] = { {384, 384}, {384, 1536}, {1536, 384} };
    printf("threads %d, N %d, min of %d repeats\n", omp_get_max_threads(), N, reps);
    int amx = kernels_bf16_amx(-1);
    printf("%-12s %-5s %10s %12s %8s %12s %8s\n", "IC x OC", "pass", "sgemm GF", "avx512bf16", "speedup",
           amx ? "AMX GF" : "(no AMX)", "speedup");
    for (int s = 0; s < 3; s++) {
        int IC = shapes[s][0], OC = shapes[s][1];
        float *inp = rnd((size_t)N * IC), *w = rnd((size_t)OC * IC), *b = rnd(OC);
        float *out = rnd((size_t)N * OC), *dout = rnd((size_t)N * OC), *dinp = rnd((size_t)N * IC);
        matmul_bf16 *p = matmul_bf16_pack(w, IC, OC);
        matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC, 0);   /* packs the transpose */
        double fl = 2.0 * N * IC * OC, t[6] = { 1e9, 1e9, 1e9, 1e9, 1e9, 1e9 };
        for (int r = 0; r < reps; r++) {
            double t0 = now(); matmul_forward(out, inp, w, b, N, IC, OC, 0);
            kernels_bf16_amx(0);
            double t1 = now(); matmul_bf16_forward(out, inp, p, b, N, IC, OC, 0);
            double t2 = now(); matmul_backward_input(dinp, dout, w, N, IC, OC, 0);
            double t3 = now(); matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC, 0);
            double t4 = now();
            kernels_bf16_amx(1);
            double t5 = now(); matmul_bf16_forward(out, inp, p, b, N, IC, OC, 0);
            double t6 = now(); matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC, 0);
            double t7 = now();
            MIN(t[0], t0, t1); MIN(t[1], t1, t2); MIN(t[2], t2, t3);
            MIN(t[3], t3, t4); MIN(t[4], t5, t6); MIN(t[5], t6, t7);
        }
        char nm[32]; snprintf(nm, sizeof nm, "%dx%d", IC, OC);
        printf("%-12s %-5s %10.1f %12.1f %7.2fx %12.1f %7.2fx\n", nm, "fwd", fl / t[0] * 1e-9, fl / t[1] * 1e-9,
               t[0] / t[1], fl / t[4] * 1e-9, t[0] / t[4]);
        printf("%-12s %-5s %10.1f %12.1f %7.2fx %12.1f %7.2fx\n", nm, "dinp", fl / t[2] * 1e-9, fl / t[3] * 1e-9,
               t[2] / t[3], fl / t[5] * 1e-9, t[2] / t[5]);
        matmul_bf16_free(p);
        free(inp); free(w); free(b); free(out); free(dout); free(dinp);
    }
    for (int a = amx; a >= 0; a--) ffn(N, 384, 1536, reps, a);
    kernels_bf16_amx(1);
    return 0;
}
