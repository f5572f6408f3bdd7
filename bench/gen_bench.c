/* gen_bench.c: decoder speed as llama-bench measures it, through peftc's
 * public API, so the two can be compared in one run:
 *   pp N: N prompt tokens evaluated from an empty cache, in batches
 *         (peftc_lm_logits: the last position's logits, as llama-bench);
 *   tg N: N tokens generated one at a time after BOS (greedy, EOS ignored).
 * Each figure is the median of REPS runs after one warm-up; prints one JSON
 * object.
 *
 * usage: gen_bench MODEL [--pp 128,512] [--tg 64] [--reps 5] [--adapter DIR]...
 *        [--threads N] */
#include "peftc.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int count_tok(const char *t, size_t l, void *u) { (void)t; (void)l; (void)u; return 0; }

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: gen_bench MODEL [--pp 128,512] [--tg 64] [--reps 5] [--adapter DIR]... [--threads N]\n");
        return 2;
    }
    const char *model = argv[1], *pp_list = "128,512";
    int tg = 64, reps = 5;
    const char *adapters[8];
    int n_adapters = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--pp") && i + 1 < argc) pp_list = argv[++i];
        else if (!strcmp(argv[i], "--tg") && i + 1 < argc) tg = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) omp_set_num_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--adapter") && i + 1 < argc && n_adapters < 8) adapters[n_adapters++] = argv[++i];
        else { fprintf(stderr, "gen_bench: unknown argument %s\n", argv[i]); return 2; }
    }
    if (reps < 1 || reps > 100) reps = 5;
    peftc_lm_opts lo;
    peftc_lm_opts_default(&lo);
    lo.adapters = adapters;
    lo.n_adapters = n_adapters;
    lo.n_ctx = 1024;
    peftc_error err = {0};
    peftc_lm *lm = NULL;
    if (peftc_lm_load(model, &lo, &lm, &err)) { fprintf(stderr, "gen_bench: %s\n", err.msg); return 1; }
    int V = peftc_lm_vocab_size(lm);
    float *logits = malloc((size_t)V * sizeof *logits);
    printf("{\"model\": \"%s\", \"describe\": \"%s\", \"threads\": %d, \"reps\": %d", model, peftc_lm_describe(lm),
           omp_get_max_threads(), reps);
    /* pp: random ids in [100, V) from splitmix64 */
    char list[256];
    snprintf(list, sizeof list, "%s", pp_list);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int n = atoi(tok);
        if (n < 1 || n > 1000) continue;
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        uint64_t s = 1234;
        for (int i = 0; i < n; i++) {
            uint64_t z = (s += 0x9E3779B97F4A7C15ull);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            ids[i] = (int32_t)(100 + (z ^ (z >> 31)) % (uint64_t)(V - 100));
        }
        double t[101];
        for (int r = -1; r < reps; r++) {
            double t0 = now();
            if (peftc_lm_logits(lm, ids, n, 0, logits, &err)) { fprintf(stderr, "gen_bench: %s\n", err.msg); return 1; }
            if (r >= 0) t[r] = now() - t0;
        }
        printf(", \"pp%d_tok_s\": %.2f, \"pp_tok_s\": %.2f", n, n / median(t, reps), n / median(t, reps));
        free(ids);
    }
    if (tg > 0) {
        peftc_gen_opts go;
        peftc_gen_opts_default(&go);
        go.max_new_tokens = tg;
        go.ignore_eos = 1;
        double t[101];
        for (int r = -1; r < reps; r++) {
            peftc_gen_stats st;
            /* a different empty-looking prompt each time would be reused from the cache; "" is BOS only */
            if (peftc_lm_generate(lm, "", &go, count_tok, NULL, &st, &err)) { fprintf(stderr, "gen_bench: %s\n", err.msg); return 1; }
            /* gen_s covers the decode forwards (one per generated token but the
             * last, which is sampled and not fed back) and the sampling */
            if (r >= 0) t[r] = st.gen_s / (st.gen_tokens > 1 ? st.gen_tokens - 1 : 1);
        }
        printf(", \"tg%d_tok_s\": %.2f, \"tg_tok_s\": %.2f", tg, 1.0 / median(t, reps), 1.0 / median(t, reps));
    }
    printf("}\n");
    free(logits);
    peftc_lm_free(lm);
    return 0;
}
