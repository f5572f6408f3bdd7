/* cmd_encode.c: `peftc tokenize` and `peftc embed`. */
#include "cli/cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Splits a line at its first TAB when pairs are on. */
static void split_pair(char *line, size_t len, int pairs, const char **a, size_t *alen,
                       const char **b, size_t *blen)
{
    *a = line; *alen = len; *b = NULL; *blen = 0;
    if (!pairs) return;
    char *tab = memchr(line, '\t', len);
    if (!tab) return;
    *alen = (size_t)(tab - line);
    *b = tab + 1;
    *blen = len - *alen - 1;
}

static int encode_line(const peftc_tokenizer *tok, cli_lines *L, int i, int pairs, int max_len,
                       int32_t *ids, int32_t *tt, int *n)
{
    const char *s, *p;
    size_t sl, pl;
    split_pair(L->line[i], L->len[i], pairs, &s, &sl, &p, &pl);
    peftc_error err = {0};
    if (peftc_tokenizer_encode(tok, s, sl, p, pl, max_len, ids, tt, n, &err)) {
        fprintf(stderr, "peftc: stdin:%d: %s\n", i + 1, err.msg);
        return 1;
    }
    return 0;
}

int cmd_tokenize(cli_args *a)
{
    int ok = 1;
    const char *dir = cli_opt(a, "--model");
    int max_len = cli_opt_int(a, "--max-len", 512, 3, 1 << 20, &ok);
    int pairs = cli_flag(a, "--pairs");
    if (!ok) return 2;
    if (cli_check_unused(a, "tokenize")) return 2;
    if (!dir || !*dir) return cli_errorf(2, "tokenize: --model DIR is required");

    peftc_error err = {0};
    peftc_tokenizer *tok;
    if (peftc_tokenizer_load(dir, &tok, &err)) return cli_fail(&err);
    cli_lines L;
    if (cli_read_lines(stdin, "stdin", &L)) { peftc_tokenizer_free(tok); return 1; }
    int32_t *ids = malloc((size_t)max_len * sizeof *ids);
    int rc = ids ? 0 : cli_errorf(1, "out of memory");
    for (int i = 0; i < L.n && !rc; i++) {
        int n;
        if ((rc = encode_line(tok, &L, i, pairs, max_len, ids, NULL, &n))) break;
        for (int j = 0; j < n; j++) printf(j ? " %d" : "%d", ids[j]);
        putchar('\n');
    }
    free(ids);
    cli_lines_free(&L);
    peftc_tokenizer_free(tok);
    return rc;
}

typedef struct { int len, idx; } len_idx;

static int cmp_len(const void *x, const void *y)
{
    const len_idx *a = x, *b = y;
    return a->len != b->len ? a->len - b->len : a->idx - b->idx;
}

static void print_embeddings(float *out, int n, int C, int normalize)
{
    for (int i = 0; i < n; i++) {
        float *v = out + (size_t)i * C;
        if (normalize) {
            double ss = 0;
            for (int j = 0; j < C; j++) ss += (double)v[j] * v[j];
            float inv = (float)(1.0 / fmax(sqrt(ss), 1e-12)); /* torch.nn.functional.normalize's eps */
            for (int j = 0; j < C; j++) v[j] *= inv;
        }
        for (int j = 0; j < C; j++) printf(j ? " %.7g" : "%.7g", v[j]);
        putchar('\n');
    }
}

/* embed --adapter: the adapted model's embeddings, as the adapter was trained
 * (its mean pooling, virtual tokens left out, and its max_len) */
static int embed_adapter(const char *dir, const char *adapter, int normalize)
{
    peftc_error err = {0};
    peftc_classifier *c;
    if (peftc_classifier_load(dir, adapter, &c, &err)) return cli_fail(&err);
    if (strcmp(peftc_classifier_task(c), "embedding")) {
        int rc = cli_errorf(1, "%s: the adapter was trained for --task %s, not embedding (peftc embed --adapter takes a --task embedding run)",
                            adapter, peftc_classifier_task(c));
        peftc_classifier_free(c);
        return rc;
    }
    cli_lines L;
    if (cli_read_lines(stdin, "stdin", &L)) { peftc_classifier_free(c); return 1; }
    int C = peftc_classifier_embedding_dim(c), rc = 0;
    const char **texts = calloc((size_t)L.n + 1, sizeof *texts);
    float *out = calloc((size_t)L.n * C + 1, sizeof *out);
    if (!texts || !out) rc = cli_errorf(1, "out of memory");
    for (int i = 0; i < L.n && !rc; i++) texts[i] = L.line[i];
    if (!rc && peftc_classifier_embed(c, texts, L.n, out, &err)) rc = cli_fail(&err);
    if (!rc) print_embeddings(out, L.n, C, normalize);
    free(texts);
    free(out);
    cli_lines_free(&L);
    peftc_classifier_free(c);
    return rc;
}

int cmd_embed(cli_args *a)
{
    int ok = 1;
    const char *dir = cli_opt(a, "--model");
    const char *pool_s = cli_opt(a, "--pool");
    int normalize = cli_flag(a, "--normalize");
    int pairs = cli_flag(a, "--pairs");
    int batch = cli_opt_int(a, "--batch", 32, 1, 4096, &ok);
    int max_len_opt = cli_opt_int(a, "--max-len", 0, 3, 1 << 20, &ok);
    const char *adapter = cli_opt(a, "--adapter");
    if (!ok) return 2;
    if (cli_check_unused(a, "embed")) return 2;
    if (!dir || !*dir) return cli_errorf(2, "embed: --model DIR is required");
    if (adapter) {
        if (!*adapter) return cli_errorf(2, "embed: --adapter needs a RUN_DIR");
        if ((pool_s && strcmp(pool_s, "mean")) || pairs || max_len_opt)
            return cli_errorf(2, "embed --adapter: the adapter's own pooling (mean) and max_len apply; --pool cls, --pairs and --max-len do not");
        return embed_adapter(dir, adapter, normalize);
    }
    peftc_pool pool = PEFTC_POOL_MEAN;
    if (pool_s) {
        if (!strcmp(pool_s, "mean")) pool = PEFTC_POOL_MEAN;
        else if (!strcmp(pool_s, "cls")) pool = PEFTC_POOL_CLS;
        else return cli_errorf(2, "embed: --pool must be mean or cls, got '%s'", pool_s);
    }

    peftc_error err = {0};
    peftc_tokenizer *tok = NULL;
    peftc_model *m = NULL;
    if (peftc_model_load(dir, &m, &err) || peftc_tokenizer_load(dir, &tok, &err)) {
        peftc_model_free(m);
        return cli_fail(&err);
    }
    const peftc_config *cfg = peftc_model_config(m);
    if (peftc_tokenizer_vocab_size(tok) > cfg->vocab_size) {   /* checked once here, not per batch */
        int nv = peftc_tokenizer_vocab_size(tok), mv = cfg->vocab_size;
        peftc_tokenizer_free(tok); peftc_model_free(m);
        return cli_errorf(1, "%s: the tokenizer has %d tokens but config.json's vocab_size (the embedding table) is %d",
                          dir, nv, mv);
    }
    if (pairs && cfg->type_vocab_size < 2) {
        int tv = cfg->type_vocab_size;
        peftc_tokenizer_free(tok); peftc_model_free(m);
        return cli_errorf(1, "%s/config.json: type_vocab_size %d has no token type for the second text of --pairs", dir, tv);
    }
    int max_len = max_len_opt ? max_len_opt : cfg->max_seq_len;
    if (max_len > cfg->max_position) {
        peftc_tokenizer_free(tok); peftc_model_free(m);
        return cli_errorf(2, "embed: --max-len %d exceeds the model's %d positions", max_len, cfg->max_position);
    }
    int C = cfg->hidden_size, rc = 0;
    cli_lines L;
    if (cli_read_lines(stdin, "stdin", &L)) { peftc_tokenizer_free(tok); peftc_model_free(m); return 1; }

    /* tokenise everything first, then batch by length so padding stays small */
    int32_t *ids = calloc((size_t)L.n * max_len + 1, sizeof *ids);
    int32_t *tts = calloc((size_t)L.n * max_len + 1, sizeof *tts);
    len_idx *order = calloc((size_t)L.n + 1, sizeof *order);
    float *out = calloc((size_t)L.n * C + 1, sizeof *out);
    int32_t *bids = calloc((size_t)batch * max_len, sizeof *bids);
    int32_t *btts = calloc((size_t)batch * max_len, sizeof *btts);
    int *blens = calloc((size_t)batch, sizeof *blens);
    float *bpool = calloc((size_t)batch * C, sizeof *bpool);
    if (!ids || !tts || !order || !out || !bids || !btts || !blens || !bpool) rc = cli_errorf(1, "out of memory");
    for (int i = 0; i < L.n && !rc; i++) {
        int n;
        rc = encode_line(tok, &L, i, pairs, max_len, ids + (size_t)i * max_len, tts + (size_t)i * max_len, &n);
        order[i] = (len_idx){n, i};
    }
    if (!rc) qsort(order, (size_t)L.n, sizeof *order, cmp_len);
    for (int s = 0; s < L.n && !rc; s += batch) {
        int B = L.n - s < batch ? L.n - s : batch, T = 0;
        for (int b = 0; b < B; b++) if (order[s + b].len > T) T = order[s + b].len;
        for (int b = 0; b < B; b++) {
            const len_idx *o = &order[s + b];
            memset(bids + (size_t)b * T, 0, (size_t)T * sizeof *bids);
            memset(btts + (size_t)b * T, 0, (size_t)T * sizeof *btts);
            memcpy(bids + (size_t)b * T, ids + (size_t)o->idx * max_len, (size_t)o->len * sizeof *bids);
            memcpy(btts + (size_t)b * T, tts + (size_t)o->idx * max_len, (size_t)o->len * sizeof *btts);
            blens[b] = o->len;
        }
        if (peftc_model_encode(m, bids, btts, blens, B, T, pool, NULL, bpool, &err)) { rc = cli_fail(&err); break; }
        for (int b = 0; b < B; b++) memcpy(out + (size_t)order[s + b].idx * C, bpool + (size_t)b * C, (size_t)C * sizeof *out);
    }
    if (!rc) print_embeddings(out, L.n, C, normalize);
    free(ids); free(tts); free(order); free(out); free(bids); free(btts); free(blens); free(bpool);
    cli_lines_free(&L);
    peftc_tokenizer_free(tok);
    peftc_model_free(m);
    return rc;
}
