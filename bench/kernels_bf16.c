/* kernels_bf16.c: GFLOPS of the bf16 frozen-weight kernels (matmul_bf16_*)
 * against OpenBLAS sgemm (matmul_forward / matmul_backward's dinp) at the
 * training shapes of all-MiniLM-L6-v2 (N = 32*64 rows). Minimum time over
 * the repeats (the machine may be shared).
 *   bash bench/kernels_bf16.sh [reps]     (OMP_NUM_THREADS=1|2) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "kernels/kernels.h"

static double now(void) { return omp_get_wtime(); }

static float *rnd(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX * 2 - 1;
    return x;
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
        matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC);   /* packs the transpose */
        double fl = 2.0 * N * IC * OC, t[6] = { 1e9, 1e9, 1e9, 1e9, 1e9, 1e9 };
        for (int r = 0; r < reps; r++) {
            double t0 = now(); matmul_forward(out, inp, w, b, N, IC, OC, 0);
            kernels_bf16_amx(0);
            double t1 = now(); matmul_bf16_forward(out, inp, p, b, N, IC, OC, 0);
            double t2 = now(); matmul_backward(dinp, NULL, NULL, dout, inp, w, N, IC, OC);
            double t3 = now(); matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC);
            double t4 = now();
            kernels_bf16_amx(1);
            double t5 = now(); matmul_bf16_forward(out, inp, p, b, N, IC, OC, 0);
            double t6 = now(); matmul_bf16_backward(dinp, NULL, dout, p, N, IC, OC);
            double t7 = now();
            if (t1 - t0 < t[0]) t[0] = t1 - t0;
            if (t2 - t1 < t[1]) t[1] = t2 - t1;
            if (t3 - t2 < t[2]) t[2] = t3 - t2;
            if (t4 - t3 < t[3]) t[3] = t4 - t3;
            if (t6 - t5 < t[4]) t[4] = t6 - t5;
            if (t7 - t6 < t[5]) t[5] = t7 - t6;
        }
        char nm[32]; snprintf(nm, sizeof nm, "%dx%d", IC, OC);
        printf("%-12s %-5s %10.1f %12.1f %7.2fx %12.1f %7.2fx\n", nm, "fwd", fl / t[0] * 1e-9, fl / t[1] * 1e-9,
               t[0] / t[1], fl / t[4] * 1e-9, t[0] / t[4]);
        printf("%-12s %-5s %10.1f %12.1f %7.2fx %12.1f %7.2fx\n", nm, "dinp", fl / t[2] * 1e-9, fl / t[3] * 1e-9,
               t[2] / t[3], fl / t[5] * 1e-9, t[2] / t[5]);
        matmul_bf16_free(p);
        free(inp); free(w); free(b); free(out); free(dout); free(dinp);
    }
    return 0;
}
