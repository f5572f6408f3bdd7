/* kernels_bench.c: ms per call of the kernels at the shapes of one training
 * step of all-MiniLM-L6-v2 (6 layers, C=384, 12 heads of 32, FFN 1536) at
 * batch 32 x seq 64, plus attention at B=16 x T=128 and B=2 x T=512, and
 * attention with a prefix of 20 keys (prefix tuning) at batch 32 x seq 64.
 *
 * Each kernel is run REPS times in bursts; the minimum time per call over the
 * bursts is printed (other jobs may share the cores). Built and run by
 * bench/kernels_bench.sh, which can also build it against the kernels of an
 * older git revision for before/after numbers.
 *   kernels_bench [filter] [reps]     filter: substring of the kernel names
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
/* CPU time of the whole process (all threads, spinning included) */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *frand(size_t n, float lo, float hi, uint64_t seed)
{
    peftc_rng r;
    peftc_rng_seed(&r, seed);
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * peftc_rng_uniform(&r);
    return x;
}

static const char *filter;
static int reps = 15;

typedef void (*bench_fn)(void *ctx);

/* min over bursts of the time per call; a burst lasts >= ~20 ms. Also the
 * min over bursts of the process CPU time per call divided by the thread
 * count: with one thread it is the time the kernel takes when it has a core to
 * itself, even while other jobs share the machine. */
static void run(const char *name, bench_fn f, void *ctx, double per_step)
{
    if (filter && !strstr(name, filter)) return;
    f(ctx);  /* warm-up: page faults, caches */
    double t0 = now();
    f(ctx);
    double one = now() - t0;
    int inner = one > 0 ? (int)(0.02 / one) : 1;
    if (inner < 1) inner = 1;
    double best = 1e30, bestc = 1e30;
    for (int r = 0; r < reps; r++) {
        double s = now(), c = cpu_now();
        for (int i = 0; i < inner; i++) f(ctx);
        double t = (now() - s) / inner, tc = (cpu_now() - c) / inner / omp_get_max_threads();
        if (t < best) best = t;
        if (tc < bestc) bestc = tc;
    }
    if (per_step > 0)
        printf("%-40s %9.3f ms  (cpu %8.3f)   x%-3g per step = %8.2f ms\n", name, best * 1e3, bestc * 1e3,
               per_step, best * 1e3 * per_step);
    else
        printf("%-40s %9.3f ms  (cpu %8.3f)\n", name, best * 1e3, bestc * 1e3);
    fflush(stdout);
}

/* ------------------------------------------------------------- attention */

typedef struct {
    int B, T, C, NH, P;   /* P: prefix keys (k, v, dk, dv are (B,P+T,C)) */
    float *q, *k, *v, *out, *probs, *dout, *dq, *dk, *dv;
    uint8_t *mask;
    int *lens;
    float p;
} att_ctx;

static void att_init(att_ctx *a, int B, int T, int P, int C, int NH, int padded)
{
    a->B = B; a->T = T; a->P = P; a->C = C; a->NH = NH; a->p = 0.1f;
    size_t n = (size_t)B * T * C, nk = (size_t)B * (P + T) * C, np = (size_t)B * NH * T * (P + T);
    a->q = frand(n, -1, 1, 1); a->k = frand(nk, -1, 1, 2); a->v = frand(nk, -1, 1, 3);
    a->dout = frand(n, -1, 1, 4);
    a->out = calloc(n, sizeof(float)); a->probs = calloc(np, sizeof(float));
    a->dq = calloc(n, sizeof(float)); a->dk = calloc(nk, sizeof(float)); a->dv = calloc(nk, sizeof(float));
    a->mask = calloc(np, 1);
    a->lens = malloc(B * sizeof(int));
    peftc_rng r;
    peftc_rng_seed(&r, 5);
    /* padded: lengths uniform in [T/4, T], as in a batch of sentences */
    for (int b = 0; b < B; b++) a->lens[b] = padded ? T / 4 + (int)peftc_rng_below(&r, T - T / 4 + 1) : T;
}

static void att_free(att_ctx *a)
{
    free(a->q); free(a->k); free(a->v); free(a->dout); free(a->out); free(a->probs);
    free(a->dq); free(a->dk); free(a->dv); free(a->mask); free(a->lens);
}

static void b_att_fwd(void *c)
{
    att_ctx *a = c;
    attention_forward(a->out, a->probs, a->q, a->k, a->v, a->lens, a->B, a->T, a->C, a->NH);
}
static void b_att_bwd(void *c)
{
    att_ctx *a = c;
    attention_backward(a->dq, a->dk, a->dv, a->dout, a->probs, a->q, a->k, a->v, a->lens,
                       a->B, a->T, a->C, a->NH);
}
static void b_att_fwd_train(void *c)
{
    att_ctx *a = c;
    attention_forward_train(a->out, a->probs, a->mask, a->q, a->k, a->v, a->lens, a->B, a->T, a->C,
                            a->NH, a->p, 42);
}
static void b_att_bwd_train(void *c)
{
    att_ctx *a = c;
    attention_backward_train(a->dq, a->dk, a->dv, a->dout, a->probs, a->mask, a->q, a->k, a->v,
                             a->lens, a->B, a->T, a->C, a->NH, a->p);
}

static void b_att_fwd_prefix(void *c)
{
    att_ctx *a = c;
    attention_forward_prefix(a->out, a->probs, a->mask, a->q, a->k, a->v, a->lens, a->B, a->T, a->P, a->C,
                             a->NH, a->p, 42);
}
static void b_att_bwd_prefix(void *c)
{
    att_ctx *a = c;
    attention_backward_prefix(a->dq, a->dk, a->dv, a->dout, a->probs, a->mask, a->q, a->k, a->v, a->lens,
                              a->B, a->T, a->P, a->C, a->NH, a->p);
}
static void b_att_prefix_step(void *c)
{
    b_att_fwd_prefix(c);
    b_att_bwd_prefix(c);
}

/* The alternative considered for attention: cblas_sgemm per (batch, head),
 * serially (BLAS may not be called inside our parallel regions; OpenBLAS
 * threads a call itself when it is big enough), operands strided in place.
 * Only the products are timed (forward: q k^T and P v; backward: dout v^T,
 * W^T dout, dS k, dS^T q); the softmax / dS rows would come on top. */
static void b_att_fwd_blas_gemms(void *c)
{
    att_ctx *a = c;
    int T = a->T, C = a->C, NH = a->NH, hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < NH; h++) {
            int L = a->lens[b];
            size_t off = (size_t)b * T * C + (size_t)h * hd;
            float *S = a->probs + ((size_t)b * NH + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, hd, scale, a->q + off, C,
                        a->k + off, C, 0.0f, S, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, L, 1.0f, S, T, a->v + off, C,
                        0.0f, a->out + off, C);
        }
}
static void b_att_bwd_blas_gemms(void *c)
{
    att_ctx *a = c;
    int T = a->T, C = a->C, NH = a->NH, hd = C / NH;
    float *dP = malloc((size_t)T * T * sizeof(float));
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < NH; h++) {
            int L = a->lens[b];
            size_t off = (size_t)b * T * C + (size_t)h * hd;
            const float *P = a->probs + ((size_t)b * NH + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, T, 1.0f, P, T, a->dout + off, C,
                        1.0f, a->dv + off, C);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, hd, 1.0f, a->dout + off, C,
                        a->v + off, C, 0.0f, dP, L);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, L, 1.0f, dP, L, a->k + off, C,
                        1.0f, a->dq + off, C);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, T, 1.0f, dP, L, a->q + off, C,
                        1.0f, a->dk + off, C);
        }
    free(dP);
}

static void bench_attention(int B, int T, int padded, double per_step)
{
    att_ctx a;
    char name[80];
    att_init(&a, B, T, 0, 384, 12, padded);
    const char *pd = padded ? " pad" : "";
    snprintf(name, sizeof name, "attention_forward B%d T%d%s", B, T, pd);
    run(name, b_att_fwd, &a, per_step);
    snprintf(name, sizeof name, "attention_backward B%d T%d%s", B, T, pd);
    run(name, b_att_bwd, &a, per_step);
    snprintf(name, sizeof name, "attention_forward_train B%d T%d%s", B, T, pd);
    run(name, b_att_fwd_train, &a, per_step);
    snprintf(name, sizeof name, "attention_backward_train B%d T%d%s", B, T, pd);
    run(name, b_att_bwd_train, &a, per_step);
    if (!padded) {
        snprintf(name, sizeof name, "cblas gemms only (fwd) B%d T%d", B, T);
        run(name, b_att_fwd_blas_gemms, &a, 0);
        snprintf(name, sizeof name, "cblas gemms only (bwd) B%d T%d", B, T);
        run(name, b_att_bwd_blas_gemms, &a, 0);
    }
    att_free(&a);
}

/* prefix attention (P-tuning v2 / prefix tuning / MAM / UniPELT), without
 * and with attention dropout */
static void bench_attention_prefix(int B, int T, int P, int padded, double per_step)
{
    att_ctx a;
    char name[80];
    att_init(&a, B, T, P, 384, 12, padded);
    const char *pd = padded ? " pad" : "";
    for (int drop = 0; drop <= 1; drop++) {
        a.p = drop ? 0.1f : 0.0f;
        const char *dn = drop ? " p.1" : "";
        snprintf(name, sizeof name, "attn_prefix fwd B%d T%d P%d%s%s", B, T, P, pd, dn);
        run(name, b_att_fwd_prefix, &a, per_step);
        snprintf(name, sizeof name, "attn_prefix bwd B%d T%d P%d%s%s", B, T, P, pd, dn);
        run(name, b_att_bwd_prefix, &a, per_step);
        snprintf(name, sizeof name, "attn_prefix fwd+bwd B%d T%d P%d%s%s", B, T, P, pd, dn);
        run(name, b_att_prefix_step, &a, per_step);
    }
    att_free(&a);
}

/* ---------------------------------------------------------- elementwise */

typedef struct {
    size_t n;
    int N, C;
    float *x, *y, *d, *g, *w, *b, *mean, *rstd, *dw, *db;
    uint8_t *mask;
    peftc_rng rng;
    int *labels;
} ew_ctx;

static void b_gelu_fwd(void *c) { ew_ctx *e = c; gelu_forward(e->y, e->x, e->n); }
static void b_gelu_bwd(void *c) { ew_ctx *e = c; gelu_backward(e->g, e->x, e->d, e->n); }
static void b_drop_fwd(void *c) { ew_ctx *e = c; dropout_forward(e->y, e->mask, e->x, 0.1f, e->n, &e->rng); }
static void b_drop_bwd(void *c) { ew_ctx *e = c; dropout_backward(e->g, e->mask, e->d, 0.1f, e->n, 1); }
static void b_add(void *c) { ew_ctx *e = c; add_inplace(e->g, e->d, e->n); }
static void b_ln_fwd(void *c)
{
    ew_ctx *e = c;
    layernorm_forward(e->y, e->mean, e->rstd, e->x, e->w, e->b, e->N, e->C, 1e-12f);
}
static void b_ln_bwd(void *c)
{
    ew_ctx *e = c;
    layernorm_backward(e->g, e->dw, e->db, e->d, e->x, e->w, e->mean, e->rstd, e->N, e->C, 1);
}
static void b_ln_bwd_dx(void *c)
{
    ew_ctx *e = c;
    layernorm_backward(e->g, NULL, NULL, e->d, e->x, e->w, e->mean, e->rstd, e->N, e->C, 1);
}
static void b_ce_fwd(void *c)
{
    ew_ctx *e = c;
    softmax_ce_forward(e->mean, e->y, e->x, e->labels, e->N, e->C);
}
static void b_ce_bwd(void *c)
{
    ew_ctx *e = c;
    softmax_ce_backward(e->g, e->y, e->labels, e->N, e->C, 1.0f / e->N);
}
static void b_matmul(void *c)
{
    ew_ctx *e = c;
    matmul_forward(e->y, e->x, e->w, e->b, e->N, e->C, e->C, 0);
}

static ew_ctx ew_make(size_t n, int N, int C)
{
    ew_ctx e;
    memset(&e, 0, sizeof e);
    e.n = n; e.N = N; e.C = C;
    e.x = frand(n, -4, 4, 11); e.y = calloc(n, sizeof(float)); e.d = frand(n, -1, 1, 12);
    e.g = calloc(n, sizeof(float)); e.mask = calloc(n, 1);
    peftc_rng_seed(&e.rng, 9);
    return e;
}
static void ew_free(ew_ctx *e)
{
    free(e->x); free(e->y); free(e->d); free(e->g); free(e->mask);
    free(e->w); free(e->b); free(e->mean); free(e->rstd); free(e->dw); free(e->db); free(e->labels);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "all") != 0) filter = argv[1];
    if (argc > 2) reps = atoi(argv[2]);
    const int B = 32, T = 64, C = 384, F = 1536, L = 6, N = B * T;
    printf("threads %d, B=%d T=%d C=%d F=%d; min over %d bursts\n", omp_get_max_threads(), B, T, C, F, reps);

    /* per training step: each kernel's calls in the 6-layer forward + backward */
    bench_attention(B, T, 0, L);
    bench_attention(B, T, 1, 0);
    bench_attention(16, 128, 0, 0);
    bench_attention(2, 512, 0, 0);
    bench_attention_prefix(B, T, 20, 0, L);
    bench_attention_prefix(B, T, 20, 1, 0);

    ew_ctx e = ew_make((size_t)N * F, N, C);
    run("gelu_forward N*F", b_gelu_fwd, &e, L);
    run("gelu_backward N*F", b_gelu_bwd, &e, L);
    ew_free(&e);

    e = ew_make((size_t)N * C, N, C);
    e.w = frand(C, 0.5f, 1.5f, 13); e.b = frand(C, -1, 1, 14);
    e.mean = calloc(N, sizeof(float)); e.rstd = calloc(N, sizeof(float));
    e.dw = calloc(C, sizeof(float)); e.db = calloc(C, sizeof(float));
    /* 13 hidden dropouts per step (embeddings + 2 per layer) */
    run("dropout_forward N*C", b_drop_fwd, &e, 2 * L + 1);
    run("dropout_backward N*C", b_drop_bwd, &e, 0);
    run("add_inplace N*C", b_add, &e, 2 * L);
    run("layernorm_forward N,C", b_ln_fwd, &e, 2 * L + 1);
    run("layernorm_backward N,C (dx,dw,db)", b_ln_bwd, &e, 2 * L + 1);
    run("layernorm_backward N,C (dx only)", b_ln_bwd_dx, &e, 0);
    float *w = calloc((size_t)C * C, sizeof(float));
    free(e.w); e.w = w;
    run("matmul_forward N,C->C (reference)", b_matmul, &e, 0);
    ew_free(&e);

    /* classification head: B rows of K classes; and a wide one */
    for (int K = 2; K <= 30000; K *= 15000) {
        e = ew_make((size_t)B * K, B, K);
        e.mean = calloc(B, sizeof(float));
        e.labels = calloc(B, sizeof(int));
        for (int b = 0; b < B; b++) e.labels[b] = b % K;
        char name[80];
        snprintf(name, sizeof name, "softmax_ce_forward B%d K%d", B, K);
        run(name, b_ce_fwd, &e, 0);
        snprintf(name, sizeof name, "softmax_ce_backward B%d K%d", B, K);
        run(name, b_ce_bwd, &e, 0);
        ew_free(&e);
    }
    return 0;
}
