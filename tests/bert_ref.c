/* bert_ref.c: peftc's BERT encoder forward against the PyTorch oracle
 * (tests/ref_bert.py, float64). Not a test_*.c: it needs the fixture that
 * tests/check_bert.sh generates, builds this file and runs it.
 *
 *   bert_ref [FIXTURE_DIR]   (default tests/out/bert_ref; run from the repo root)
 *
 * FIXTURE_DIR holds ids.txt (token ids per sentence), hidden.f32 (each
 * sentence's real tokens' last hidden states, T_i x H float32, concatenated)
 * and embed.txt (mean-pooled, L2-normalised sentence embeddings). */
#include "peftc.h"
#include "testlib.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MODEL_DIR "models/all-MiniLM-L6-v2"
#define BATCH 8
#define TOL_HIDDEN 1e-4
#define TOL_COS 0.9999
#define TOL_BATCH 1e-5

typedef struct {
    int n;          /* sentences */
    int *len;       /* tokens per sentence */
    int32_t **ids;  /* ids[i][0..len[i]) */
    float **hidden; /* hidden[i]: len[i] x H */
    float **embed;  /* embed[i]: H */
} fixture;

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) { perror("malloc"); exit(2); }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) { perror("realloc"); exit(2); }
    return p;
}

/* Reads the fixture; on a malformed fixture prints one FAIL line and returns 0. */
static int fixture_load(const char *dir, int H, fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    char *p = path_join(dir, "ids.txt");
    FILE *f = fopen(p, "r");
    if (!f) { CHECK(0, "cannot open %s", p); free(p); return 0; }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        int cnt = 0, capi = 16;
        int32_t *ids = xrealloc(NULL, capi * sizeof *ids);
        char *s = line, *end;
        for (;;) {
            long v = strtol(s, &end, 10);
            if (end == s) break;
            if (cnt == capi) ids = xrealloc(ids, (capi *= 2) * sizeof *ids);
            ids[cnt++] = (int32_t)v;
            s = end;
        }
        if (cnt == 0) { free(ids); continue; }
        fx->ids = xrealloc(fx->ids, (fx->n + 1) * sizeof *fx->ids);
        fx->len = xrealloc(fx->len, (fx->n + 1) * sizeof *fx->len);
        fx->ids[fx->n] = ids;
        fx->len[fx->n] = cnt;
        fx->n++;
    }
    free(line);
    fclose(f);
    free(p);
    if (fx->n == 0) { CHECK(0, "%s/ids.txt is empty", dir); return 0; }

    size_t total = 0;
    for (int i = 0; i < fx->n; i++) total += (size_t)fx->len[i] * H;
    p = path_join(dir, "hidden.f32");
    f = fopen(p, "rb");
    if (!f) { CHECK(0, "cannot open %s", p); free(p); return 0; }
    float *all = xrealloc(NULL, total * sizeof *all);
    size_t got = fread(all, sizeof *all, total, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != total || extra) {
        CHECK(0, "%s holds %s floats than ids.txt implies (%zu x %d)", p,
              got != total ? "fewer" : "more", total / H, H);
        free(p); free(all); return 0;
    }
    free(p);
    fx->hidden = xrealloc(NULL, fx->n * sizeof *fx->hidden);
    for (int i = 0, off = 0; i < fx->n; off += fx->len[i] * H, i++) fx->hidden[i] = all + off;

    p = path_join(dir, "embed.txt");
    f = fopen(p, "r");
    if (!f) { CHECK(0, "cannot open %s", p); free(p); return 0; }
    fx->embed = xrealloc(NULL, fx->n * sizeof *fx->embed);
    for (int i = 0; i < fx->n; i++) {
        fx->embed[i] = xrealloc(NULL, H * sizeof(float));
        for (int j = 0; j < H; j++)
            if (fscanf(f, "%f", &fx->embed[i][j]) != 1) {
                CHECK(0, "%s: short at sentence %d, value %d", p, i, j);
                fclose(f); free(p); return 0;
            }
    }
    fclose(f);
    free(p);
    return 1;
}

static void fixture_free(fixture *fx)
{
    for (int i = 0; i < fx->n; i++) {
        free(fx->ids[i]);
        if (fx->embed) free(fx->embed[i]);
    }
    if (fx->hidden) free(fx->hidden[0]);
    free(fx->ids); free(fx->len); free(fx->hidden); free(fx->embed);
}

static double cosine_normalized(const float *a, const float *ref, int H)
{
    double na = 0, nr = 0, dot = 0;
    for (int j = 0; j < H; j++) na += (double)a[j] * a[j];
    na = sqrt(na);
    float *u = malloc(H * sizeof *u);
    if (!u) return NAN;
    for (int j = 0; j < H; j++) u[j] = (float)(a[j] / (na > 1e-12 ? na : 1e-12)); /* L2-normalise */
    na = 0;
    for (int j = 0; j < H; j++) {
        dot += (double)u[j] * ref[j];
        na += (double)u[j] * u[j];
        nr += (double)ref[j] * ref[j];
    }
    free(u);
    return dot / sqrt(na * nr);
}

/* Runs sentences [s0, s0+B) as one padded batch; hidden: B*T*H, pooled: B*H. */
static peftc_status run_batch(peftc_model *m, const fixture *fx, int s0, int B, int H,
                              int *T_out, float **hidden, float **pooled, peftc_error *err)
{
    int T = 0;
    for (int b = 0; b < B; b++) if (fx->len[s0 + b] > T) T = fx->len[s0 + b];
    int32_t *ids = calloc((size_t)B * T, sizeof *ids);
    int32_t *types = calloc((size_t)B * T, sizeof *types);
    int *lens = calloc(B, sizeof *lens);
    *hidden = malloc((size_t)B * T * H * sizeof **hidden);
    *pooled = malloc((size_t)B * H * sizeof **pooled);
    if (!ids || !types || !lens || !*hidden || !*pooled) { perror("alloc"); exit(2); }
    for (int b = 0; b < B; b++) {
        lens[b] = fx->len[s0 + b];
        memcpy(ids + (size_t)b * T, fx->ids[s0 + b], lens[b] * sizeof *ids); /* pad: id 0 */
    }
    /* poison the outputs so that unwritten values cannot pass */
    for (size_t i = 0; i < (size_t)B * T * H; i++) (*hidden)[i] = NAN;
    for (size_t i = 0; i < (size_t)B * H; i++) (*pooled)[i] = NAN;
    peftc_status st = peftc_model_encode(m, ids, types, lens, B, T, PEFTC_POOL_MEAN,
                                         *hidden, *pooled, err);
    free(ids); free(types); free(lens);
    *T_out = T;
    return st;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/out/bert_ref";
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep the lines printed before a crash */
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        printf("FAIL - fixture missing: run tests/check_bert.sh\n");
        return 1;
    }

    peftc_error err = {0};
    peftc_model *m = NULL;
    peftc_status st = peftc_model_load(MODEL_DIR, &m, &err);
    CHECK(st == PEFTC_OK, "peftc_model_load(%s): %s", MODEL_DIR,
          st == PEFTC_OK ? "ok" : err.msg);
    if (st != PEFTC_OK) return tl_finish();
    const peftc_config *cfg = peftc_model_config(m);
    int H = cfg->hidden_size;
    CHECK(H == 384 && cfg->num_layers == 6 && cfg->num_heads == 12 &&
          cfg->intermediate_size == 1536,
          "config: hidden %d, layers %d, heads %d, ffn %d", H, cfg->num_layers,
          cfg->num_heads, cfg->intermediate_size);
    CHECK(cfg->max_seq_len == 256,
          "max_seq_len %d is sentence_bert_config.json's 256 (the oracle truncates there)",
          cfg->max_seq_len);

    fixture fx;
    if (!fixture_load(dir, H, &fx)) { peftc_model_free(m); return tl_finish(); }

    /* every sentence's batched results, kept for the batch-composition check */
    float **hid = calloc(fx.n, sizeof *hid);
    float **pool = calloc(fx.n, sizeof *pool);
    double worst_hidden = 0, worst_cos = 1;
    int worst_hidden_i = -1, worst_cos_i = -1, bad_hidden = 0, bad_cos = 0, encode_fail = 0;
    for (int s0 = 0; s0 < fx.n; s0 += BATCH) {
        int B = fx.n - s0 < BATCH ? fx.n - s0 : BATCH, T;
        float *h, *p;
        st = run_batch(m, &fx, s0, B, H, &T, &h, &p, &err);
        if (st != PEFTC_OK) {
            CHECK(0, "peftc_model_encode(sentences %d..%d, T %d): %s", s0, s0 + B - 1, T, err.msg);
            encode_fail++;
            free(h); free(p);
            continue;
        }
        for (int b = 0; b < B; b++) {
            int i = s0 + b, L = fx.len[i];
            hid[i] = malloc((size_t)L * H * sizeof(float));
            pool[i] = malloc(H * sizeof(float));
            memcpy(hid[i], h + (size_t)b * T * H, (size_t)L * H * sizeof(float));
            memcpy(pool[i], p + (size_t)b * H, H * sizeof(float));
            double d = tl_max_abs_diff(hid[i], fx.hidden[i], (size_t)L * H);
            double c = cosine_normalized(pool[i], fx.embed[i], H);
            if (!(d <= TOL_HIDDEN) && bad_hidden++ < 8) {
                printf("#   sentence %d (%d tokens, batch T %d): hidden max abs diff %.3g\n",
                       i, L, T, d);
            }
            if (!(c >= TOL_COS) && bad_cos++ < 8) {
                printf("#   sentence %d (%d tokens): pooled cosine %.8f\n", i, L, c);
            }
            if (d > worst_hidden) { worst_hidden = d; worst_hidden_i = i; }
            if (c != c || c < worst_cos) { worst_cos = c; worst_cos_i = i; }
        }
        free(h); free(p);
    }
    if (!encode_fail) {
        CHECK(bad_hidden == 0,
              "last hidden states of %d sentences (batches of %d) within %g of the float64 "
              "reference: max abs diff %.3g (sentence %d), %d over", fx.n, BATCH, TOL_HIDDEN,
              worst_hidden, worst_hidden_i, bad_hidden);
        CHECK(bad_cos == 0,
              "mean-pooled, L2-normalised embeddings: min cosine %.8f (sentence %d) >= %g, "
              "%d under", worst_cos, worst_cos_i, TOL_COS, bad_cos);

        /* batch composition: the longest sentence alone (T = its length, no
         * padding), and a short one alone, must match their batched results */
        int longest = 0, shortest = 0;
        for (int i = 1; i < fx.n; i++) {
            if (fx.len[i] > fx.len[longest]) longest = i;
            if (fx.len[i] < fx.len[shortest]) shortest = i;
        }
        int pick[2] = {longest, shortest};
        for (int k = 0; k < 2; k++) {
            int i = pick[k], T;
            float *h, *p;
            st = run_batch(m, &fx, i, 1, H, &T, &h, &p, &err);
            CHECK(st == PEFTC_OK, "encode sentence %d alone: %s", i, st == PEFTC_OK ? "ok" : err.msg);
            if (st == PEFTC_OK) {
                double dh = tl_max_abs_diff(h, hid[i], (size_t)fx.len[i] * H);
                double dp = tl_max_abs_diff(p, pool[i], H);
                CHECK(dh <= TOL_BATCH && dp <= TOL_BATCH,
                      "sentence %d (%d tokens) alone vs in its batch of %d: hidden diff %.3g, "
                      "pooled diff %.3g (<= %g)", i, fx.len[i], BATCH, dh, dp, TOL_BATCH);
            }
            free(h); free(p);
        }

        /* CLS pooling returns position 0's hidden state */
        {
            int i = 0, L = fx.len[0];
            int32_t *types = calloc(L, sizeof *types);
            float *p = malloc(H * sizeof *p);
            st = peftc_model_encode(m, fx.ids[i], types, &L, 1, L, PEFTC_POOL_CLS, NULL, p, &err);
            CHECK(st == PEFTC_OK && tl_max_abs_diff(p, fx.hidden[i], H) <= TOL_HIDDEN,
                  "PEFTC_POOL_CLS (hidden NULL) equals the reference [CLS] state: %s, diff %.3g",
                  st == PEFTC_OK ? "ok" : err.msg,
                  st == PEFTC_OK ? tl_max_abs_diff(p, fx.hidden[i], H) : NAN);
            free(types); free(p);
        }
    }

    for (int i = 0; i < fx.n; i++) { free(hid[i]); free(pool[i]); }
    free(hid); free(pool);
    fixture_free(&fx);
    peftc_model_free(m);
    return tl_finish();
}
