/* quant_bench.c: quant_matmul (src/kernels/quant.h) at the shapes of
 * SmolLM2-135M (hidden 576, FFN 1536, 3 KV heads of 64, vocab 49152):
 * N = 1 (decode), 128 and 512 (prompt) tokens x (IC,OC) in {(576,576),
 * (576,192), (576,1536), (1536,576), (576,49152)}, per weight type, raw ggml
 * rows and quant_pack'ed, 1 and 2 threads. Prints us per call and the
 * GFLOPS equivalent (2 N IC OC / time), min over bursts (the machine may be
 * shared), then the matmul time of one SmolLM2 token (30 layers of q,k,v,o,
 * gate,up,down + the Q8_0 output head) as tokens/s.
 * QBENCH_CPU=1 ranks bursts by process CPU time per thread instead (with one
 * thread: the time when it has a core to itself).
 *   quant_bench [types] [reps]   types: comma list (q4_0,q4_1,q8_0,...), default q4_0,q4_1,q8_0
 * Built and run by bench/quant_bench.sh. */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"

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

static int reps = 7;
static int use_cpu;   /* QBENCH_CPU=1: rank by process CPU time / threads (less noisy when shared) */

typedef struct { float *out; const float *inp; const void *w; const quant_packed *p; uint32_t t; int N, IC, OC, bwd; } ctx;

static void call(const ctx *c)
{
    /* backward: out (N,IC) = inp (N,OC) @ W */
    if (c->bwd) quant_matmul_backward_input(c->out, c->inp, c->w, c->t, c->N, c->IC, c->OC, 0);
    else if (c->p) quant_matmul_packed(c->out, c->inp, c->p, c->N);
    else quant_matmul(c->out, c->inp, c->w, c->t, c->N, c->IC, c->OC);
}

/* min over bursts (each ~15 ms) of the time per call */
static double timeit(const ctx *c)
{
    call(c);
    double t0 = now();
    call(c);
    double one = now() - t0;
    int inner = one > 0 ? (int)(0.015 / one) : 1;
    if (inner < 1) inner = 1;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double s = use_cpu ? cpu_now() : now();
        for (int i = 0; i < inner; i++) call(c);
        double t = ((use_cpu ? cpu_now() : now()) - s) / inner / (use_cpu ? omp_get_max_threads() : 1);
        if (t < best) best = t;
    }
    return best;
}

static uint8_t *make_weight(uint32_t t, int IC, int OC, peftc_rng *r)
{
    size_t rb = ggml_row_bytes(t, IC);
    uint8_t *w = malloc(rb * OC);
    float *row = malloc((size_t)IC * 4);
    if (!w || !row) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int o = 0; o < OC; o++) {
        for (int j = 0; j < IC; j++) row[j] = 0.1f * (peftc_rng_uniform(r) - 0.5f);
        if (quant_quantize_row(t, row, w + (size_t)o * rb, IC) != 0) {
            /* K-quants have no quantiser: random bytes with small fp16 scales */
            for (size_t i = 0; i < rb; i++) w[(size_t)o * rb + i] = (uint8_t)peftc_rng_u64(r);
            const ggml_type_traits *tr = ggml_traits(t);
            for (size_t b = 0; b < rb / tr->bytes; b++) {
                uint8_t *x = w + (size_t)o * rb + b * tr->bytes;
                uint16_t d = quant_f32_to_f16(0.001f);
                memcpy(x + (t == GGML_TYPE_Q6_K ? 208 : 0), &d, 2);
                if (t != GGML_TYPE_Q6_K) memcpy(x + 2, &d, 2);
            }
        }
    }
    free(row);
    return w;
}

static uint32_t type_by_name(const char *s)
{
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
        const ggml_type_traits *tr = ggml_traits(t);
        if (tr && strcmp(tr->name, s) == 0) return t;
    }
    return 0xFFFFFFFFu;
}

int main(int argc, char **argv)
{
    const char *types = argc > 1 ? argv[1] : "q4_0,q4_1,q8_0";
    if (argc > 2) reps = atoi(argv[2]);
    use_cpu = getenv("QBENCH_CPU") && atoi(getenv("QBENCH_CPU"));
    static const int shapes[5][2] = { {576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152} };
    static const int Ns[3] = { 1, 128, 512 };
    /* per-token count of each shape in SmolLM2 (q,o; k,v; gate,up; down; head) */
    static const int per_tok[5] = { 60, 60, 60, 30, 1 };
    int maxthr = omp_get_max_threads() >= 2 ? 2 : 1;
    printf("# isa %s%s, up to %d threads\n", kernels_isa_name(kernels_isa()), quant_set_vnni(-1) ? "+vnni" : "", maxthr);
    float *inp = malloc((size_t)512 * 1536 * 4), *out = malloc((size_t)512 * 49152 * 4);
    peftc_rng r;
    peftc_rng_seed(&r, 7);
    for (size_t i = 0; i < (size_t)512 * 1536; i++) inp[i] = peftc_rng_uniform(&r) * 2 - 1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", types);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        uint32_t t = type_by_name(tok);
        if (t == 0xFFFFFFFFu) { fprintf(stderr, "unknown type %s\n", tok); return 2; }
        double model[2][2][3] = { { { 0 } } };   /* [packed][threads-1][N] seconds per token */
        int skipped = 0;
        for (int s = 0; s < 5; s++) {
            int IC = shapes[s][0], OC = shapes[s][1];
            uint32_t tt = t;
            if (OC == 49152 && t != GGML_TYPE_F32 && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16 && ggml_traits(t)->block == 256)
                tt = GGML_TYPE_Q8_0;   /* 576 is no multiple of 256: SmolLM2's head is Q8_0 anyway */
            if (IC % ggml_traits(tt)->block) {
                printf("%-5s %5d x %5d: IC not a multiple of the block, skipped\n", tok, IC, OC);
                skipped = 1;
                continue;
            }
            uint8_t *w = make_weight(tt, IC, OC, &r);
            quant_packed *p = quant_pack(w, tt, IC, OC);
            for (int ni = 0; ni < 3; ni++) {
                int N = Ns[ni];
                for (int th = 1; th <= maxthr; th++) {
                    omp_set_num_threads(th);
                    ctx c = { out, inp, w, NULL, tt, N, IC, OC, 0 };
                    double traw = timeit(&c);
                    double tpk = traw;
                    if (p) { c.p = p; tpk = timeit(&c); }
                    double fl = 2.0 * N * IC * OC;
                    printf("%-5s N=%3d %5d x %5d  %dT: raw %9.1f us %7.1f GFLOPS | packed %9.1f us %7.1f GFLOPS\n",
                           ggml_traits(tt)->name, N, IC, OC, th, traw * 1e6, fl / traw * 1e-9, tpk * 1e6, fl / tpk * 1e-9);
                    fflush(stdout);
                    model[0][th - 1][ni] += per_tok[s] * traw / N;
                    model[1][th - 1][ni] += per_tok[s] * tpk / N;
                }
            }
            /* the input gradient through the frozen quantised weight (QLoRA) */
            if (OC <= 1536)
                for (int th = 1; th <= maxthr; th++) {
                    omp_set_num_threads(th);
                    ctx c = { out, inp, w, NULL, tt, 128, IC, OC, 1 };
                    double tb = timeit(&c);
                    printf("%-5s N=128 %5d x %5d  %dT: backward_input %9.1f us %7.1f GFLOPS\n", ggml_traits(tt)->name,
                           IC, OC, th, tb * 1e6, 2.0 * 128 * IC * OC / tb * 1e-9);
                }
            quant_packed_free(p);
            free(w);
        }
        if (skipped) {
            printf("## %s: some shapes skipped, no SmolLM2 estimate\n", tok);
            continue;
        }
        for (int th = 1; th <= maxthr; th++)
            printf("## %s SmolLM2 matmuls, %dT: tok/s raw N=1 %.0f, N=128 %.0f, N=512 %.0f | packed N=1 %.0f, N=128 %.0f, N=512 %.0f\n",
                   tok, th, 1 / model[0][th - 1][0], 1 / model[0][th - 1][1], 1 / model[0][th - 1][2],
                   1 / model[1][th - 1][0], 1 / model[1][th - 1][1], 1 / model[1][th - 1][2]);
    }
    free(inp);
    free(out);
    return 0;
}
