/* eval.c: batches and evaluation metrics. */
#include "train/eval.h"
#include "train/conll.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status batch_alloc(batch_buf *b, int B, int T, peftc_error *err)
{
    memset(b, 0, sizeof *b);
    b->ids = calloc((size_t)B * T, sizeof *b->ids);
    b->tts = calloc((size_t)B * T, sizeof *b->tts);
    b->lens = calloc((size_t)B, sizeof *b->lens);
    b->labels = calloc((size_t)B * T, sizeof *b->labels);
    b->rows = calloc((size_t)B, sizeof *b->rows);
    b->targets = calloc((size_t)B, sizeof *b->targets);
    if (!b->ids || !b->tts || !b->lens || !b->labels || !b->rows || !b->targets) {
        batch_free(b);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for batches");
    }
    b->B = B;
    b->T = T;
    return PEFTC_OK;
}

peftc_status batch_alloc_multi(batch_buf *b, int K, peftc_error *err)
{
    float *t = calloc((size_t)b->B * (K > 1 ? K : 1), sizeof *t);
    if (!t) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for batches");
    free(b->targets);
    b->targets = t;
    return PEFTC_OK;
}

void batch_free(batch_buf *b)
{
    free(b->ids); free(b->tts); free(b->lens); free(b->labels); free(b->rows); free(b->targets);
    memset(b, 0, sizeof *b);
}

int batch_fill(batch_buf *b, const dataset *d, const int *rows, int n)
{
    int T = 1;
    for (int i = 0; i < n; i++) if (d->len[rows[i]] > T) T = d->len[rows[i]];
    batch_fill_pad(b, d, rows, n, T);
    return T;
}

void batch_fill_pad(batch_buf *b, const dataset *d, const int *rows, int n, int T)
{
    for (int i = 0; i < n; i++) {
        int r = rows[i], L = d->len[r];
        int32_t *ids = b->ids + (size_t)i * T, *tts = b->tts + (size_t)i * T;
        memcpy(ids, d->ids + d->off[r], (size_t)L * sizeof *ids);
        memcpy(tts, d->tts + d->off[r], (size_t)L * sizeof *tts);
        for (int j = L; j < T; j++) { ids[j] = 0; tts[j] = 0; }
        b->lens[i] = L;
        b->labels[i] = d->label[r];
        b->rows[i] = r;
        if (d->multi) memcpy(b->targets + (size_t)i * d->n_multi, d->multi + (size_t)r * d->n_multi, (size_t)d->n_multi * sizeof(float));
        else b->targets[i] = d->target ? d->target[r] : 0.0f;
    }
    if (d->tok_word) /* per token: a word's first piece carries its label, everything else is ignored */
        for (int i = 0; i < n; i++) {
            int r = rows[i], L = d->len[r];
            const int32_t *tw = d->tok_word + d->off[r];
            int *lab = b->labels + (size_t)i * T;
            for (int j = 0; j < T; j++) lab[j] = j < L && tw[j] >= 0 ? d->word_label[d->word_off[r] + tw[j]] : TOK_IGNORE;
            for (int j = 0; j < T; j++) if (lab[j] < 0) lab[j] = TOK_IGNORE;
        }
}

int batch_count_labelled(const dataset *d, const int *rows, int n)
{
    int c = 0;
    if (!d->tok_word) return 0;
    for (int i = 0; i < n; i++) {
        int r = rows[i];
        const int32_t *tw = d->tok_word + d->off[r];
        for (int j = 0; j < d->len[r]; j++) c += tw[j] >= 0 && d->word_label[d->word_off[r] + tw[j]] >= 0;
    }
    return c;
}

static const dataset *sort_ds;
static int cmp_rows_by_len(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    int la = sort_ds->len[a], lb = sort_ds->len[b];
    return la != lb ? la - lb : a - b;
}

static const double *rank_key;
static int cmp_rank(const void *x, const void *y)
{
    double a = rank_key[*(const int *)x], b = rank_key[*(const int *)y];
    return a < b ? -1 : a > b;
}

/* average ranks (1-based) of x into r */
static int ranks(const double *x, int n, double *r)
{
    int *idx = malloc((size_t)n * sizeof *idx);
    if (!idx) return -1;
    for (int i = 0; i < n; i++) idx[i] = i;
    rank_key = x;
    qsort(idx, (size_t)n, sizeof *idx, cmp_rank);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && x[idx[j + 1]] == x[idx[i]]) j++;
        for (int k = i; k <= j; k++) r[idx[k]] = 0.5 * (i + j) + 1.0;
        i = j + 1;
    }
    free(idx);
    return 0;
}

static double pearson_r(const double *x, const double *y, int n)
{
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    mx /= n; my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) { sxy += (x[i] - mx) * (y[i] - my); sxx += (x[i] - mx) * (x[i] - mx); syy += (y[i] - my) * (y[i] - my); }
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

void correlations(const double *x, const double *y, int n, double *pearson, double *spearman)
{
    *pearson = *spearman = NAN;
    if (n < 2) return;
    *pearson = pearson_r(x, y, n);
    double *rx = malloc((size_t)n * sizeof *rx), *ry = malloc((size_t)n * sizeof *ry);
    if (rx && ry && !ranks(x, n, rx) && !ranks(y, n, ry)) *spearman = pearson_r(rx, ry, n);
    free(rx);
    free(ry);
}

/* Data-parallel evaluation. The held-out set is cut into the length-sorted
 * batches of t->cap_B rows a single process runs (the trainer sizes cap_B as
 * one process does, whatever the rank count), and batch k runs on rank k mod
 * size, so every example's outputs are computed from the same batch, bit for
 * bit. What the metrics need is then gathered whole to every rank: each rank
 * fills the slots of its batches (per example: a prediction, an embedding;
 * per batch: its loss) and leaves the others 0, and one in-place sum of the
 * vector gives every rank every slot exactly (x + 0 == x). The metrics are
 * then computed once, from the gathered values in the single process's
 * order, so they are the single process's to the bit: Pearson and Spearman
 * need every prediction, and even a sum of per-rank partial statistics would
 * round differently. */
typedef struct eval_shard {
    const peftc_comm *comm;
    int rank, size;
} eval_shard;

static int shard_mine(const eval_shard *sh, int batch) { return batch % sh->size == sh->rank; }

static peftc_status gather_f64(const eval_shard *sh, double *v, size_t n, peftc_error *err)
{
    return sh->size > 1 && n ? sh->comm->allreduce_f64(sh->comm->ctx, v, n, err) : PEFTC_OK;
}

static peftc_status gather_f32(const eval_shard *sh, float *v, size_t n, peftc_error *err)
{
    return sh->size > 1 && n ? sh->comm->allreduce_f32(sh->comm->ctx, v, n, err) : PEFTC_OK;
}

static int n_batches(const dataset *d, const task *t) { return (d->n + t->cap_B - 1) / t->cap_B; }

/* Per word (d->word_off indexing) the predicted label; per batch the loss
 * sum and the labelled tokens: gathered, then scored in order. */
static peftc_status evaluate_tokens(task *t, const dataset *d, batch_buf *b, const int *order, const eval_shard *sh,
                                    peftc_eval_result *res, peftc_error *err)
{
    int K = t->labels.n, nb = n_batches(d, t);
    seqeval_acc acc;
    peftc_status rc = seqeval_init(&acc, &t->labels, err);
    if (rc) return rc;
    /* every word is scored, as conlleval and seqeval on the whole file do: a
     * word whose first piece the window cut (or that has no piece) counts as
     * predicted O, which is what `peftc predict` writes for it */
    int cap = 1, o_label = labels_find(&t->labels, "O");
    if (o_label < 0) o_label = 0;
    for (int i = 0; i < d->n; i++) if (d->word_off[i + 1] - d->word_off[i] > cap) cap = d->word_off[i + 1] - d->word_off[i];
    size_t n_all_words = (size_t)d->word_off[d->n];
    int *gold = malloc((size_t)cap * sizeof *gold), *pred = malloc((size_t)cap * sizeof *pred);
    /* predictions, then per batch (loss x labelled, labelled) */
    double *g = calloc(n_all_words + 2 * (size_t)nb, sizeof *g);
    if (!gold || !pred || !g) { free(gold); free(pred); free(g); seqeval_free(&acc); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    double *wp = g, *bl = g + n_all_words;
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (!shard_mine(sh, k)) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        float loss = task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL);
        bl[2 * k] = (double)loss * t->thead.n_labelled;
        bl[2 * k + 1] = t->thead.n_labelled;
        for (int i = 0; i < n; i++) {
            int r = b->rows[i], w0 = d->word_off[r], m = d->word_off[r + 1] - w0;
            const int32_t *tw = d->tok_word + d->off[r];
            for (int w = 0; w < m; w++) wp[w0 + w] = o_label;
            for (int j = 0; j < d->len[r]; j++) {
                if (tw[j] < 0) continue;
                const float *lg = t->thead.logits + ((size_t)i * T + j) * K;
                int best = 0;
                for (int q = 1; q < K; q++) if (lg[q] > lg[best]) best = q;
                wp[w0 + tw[j]] = best;
            }
        }
    }
    if ((rc = gather_f64(sh, g, n_all_words + 2 * (size_t)nb, err))) goto done;
    long long words = 0, correct = 0, labelled = 0;
    double loss_sum = 0;
    for (int k = 0; k < nb; k++) { loss_sum += bl[2 * k]; labelled += (long long)bl[2 * k + 1]; }
    for (int s = 0; s < d->n; s++) {
        int r = order[s], w0 = d->word_off[r], m = d->word_off[r + 1] - w0;
        for (int w = 0; w < m; w++) { gold[w] = d->word_label[w0 + w]; pred[w] = (int)wp[w0 + w]; }
        for (int w = 0; w < m; w++) correct += pred[w] == gold[w];
        words += m;
        seqeval_add(&acc, gold, pred, m);
    }
    res->task = "token-cls";
    res->n = d->n;
    res->n_words = words;
    res->n_words_cut = d->n_words_cut;
    res->accuracy = words ? (double)correct / words : 0;
    res->loss = labelled ? loss_sum / labelled : 0;
    res->n_true = acc.n_true;
    res->n_pred = acc.n_pred;
    res->n_correct = acc.n_correct;
    /* seqeval: precision = correct / pred, recall = correct / true, 0 when the denominator is 0 */
    res->precision = acc.n_pred ? (double)acc.n_correct / acc.n_pred : 0;
    res->recall = acc.n_true ? (double)acc.n_correct / acc.n_true : 0;
    res->entity_f1 = res->precision + res->recall > 0 ? 2 * res->precision * res->recall / (res->precision + res->recall) : 0;
    res->f1 = res->entity_f1;
    if (!isfinite(res->loss)) rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
done:
    free(gold);
    free(pred);
    free(g);
    seqeval_free(&acc);
    return rc;
}

/* Every prediction, in the length-sorted order, gathered: the correlations
 * rank all of them. */
static peftc_status evaluate_regression(task *t, const dataset *d, batch_buf *b, const int *order, const eval_shard *sh,
                                        peftc_eval_result *res, peftc_error *err)
{
    double *x = calloc((size_t)d->n, sizeof *x), *y = malloc((size_t)d->n * sizeof *y);
    if (!x || !y) { free(x); free(y); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (!shard_mine(sh, k)) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        t->targets = b->targets;
        task_forward(t, b->ids, b->tts, b->lens, NULL, n, T, 0, NULL);
        for (int i = 0; i < n; i++) x[s + i] = t->head.logits[(size_t)i * t->head.K];
    }
    peftc_status rc = gather_f64(sh, x, (size_t)d->n, err);
    if (rc) { free(x); free(y); return rc; }
    double se = 0;
    for (int s = 0; s < d->n; s++) {
        y[s] = (float)(d->target ? d->target[order[s]] : 0.0f);   /* the batch's float target, as batch_fill copies it */
        se += (x[s] - y[s]) * (x[s] - y[s]);
    }
    res->task = "regression";
    res->n = d->n;
    res->loss = se / d->n;
    correlations(x, y, d->n, &res->pearson, &res->spearman);
    free(x);
    free(y);
    if (!isfinite(res->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
    return PEFTC_OK;
}

/* Per example and label the predicted bit, per batch its loss, gathered. */
static peftc_status evaluate_multi(task *t, const dataset *d, batch_buf *b, const int *order, const eval_shard *sh,
                                   peftc_eval_result *res, peftc_error *err)
{
    int K = t->labels.n, nb = n_batches(d, t);
    long long *tp = calloc((size_t)K, sizeof *tp), *fp = calloc((size_t)K, sizeof *fp), *fn = calloc((size_t)K, sizeof *fn);
    double *g = calloc((size_t)d->n * K + (size_t)nb, sizeof *g);
    if (!tp || !fp || !fn || !g) { free(tp); free(fp); free(fn); free(g); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    double *pr = g, *bl = g + (size_t)d->n * K;
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (!shard_mine(sh, k)) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        t->targets = b->targets;
        bl[k] = (double)task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL) * n;
        for (int i = 0; i < n; i++)
            for (int q = 0; q < K; q++) pr[(size_t)(s + i) * K + q] = t->head.logits[(size_t)i * K + q] > 0.0f;   /* sigmoid > 0.5 */
    }
    peftc_status rc = gather_f64(sh, g, (size_t)d->n * K + (size_t)nb, err);
    if (rc) { free(tp); free(fp); free(fn); free(g); return rc; }
    long long exact = 0;
    double loss_sum = 0;
    for (int k = 0; k < nb; k++) loss_sum += bl[k];
    for (int s = 0; s < d->n; s++) {
        int all = 1;
        const float *yt = d->multi + (size_t)order[s] * d->n_multi;
        for (int q = 0; q < K; q++) {
            int p = pr[(size_t)s * K + q] != 0, y = yt[q] > 0.5f;
            tp[q] += p && y; fp[q] += p && !y; fn[q] += !p && y;
            all &= p == y;
        }
        exact += all;
    }
    long long TP = 0, FP = 0, FN = 0;
    double macro = 0;
    for (int q = 0; q < K; q++) {
        TP += tp[q]; FP += fp[q]; FN += fn[q];
        /* sklearn's f1_score: 0 where a label has no positives either way */
        macro += tp[q] + fp[q] + fn[q] ? 2.0 * tp[q] / (2.0 * tp[q] + fp[q] + fn[q]) : 0.0;
    }
    res->task = "multi-label";
    res->n = d->n;
    res->accuracy = (double)exact / d->n;   /* subset accuracy: every label right */
    res->loss = loss_sum / d->n;
    res->f1 = TP + FP + FN ? 2.0 * TP / (2.0 * TP + FP + FN) : 0.0;
    res->macro_f1 = macro / K;
    free(tp); free(fp); free(fn); free(g);
    if (!isfinite(res->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
    return PEFTC_OK;
}

/* The cosine similarity of each pair's embeddings (rows i and n_pairs + i)
 * against its score (the targets), as sentence-transformers'
 * EmbeddingSimilarityEvaluator: Pearson and Spearman. The embeddings are
 * gathered (a pair's two rows may sit in batches of different ranks). */
static peftc_status evaluate_embedding(task *t, const dataset *d, batch_buf *b, const int *order, const eval_shard *sh,
                                       peftc_eval_result *res, peftc_error *err)
{
    int np = d->n_pairs, C = t->m->cfg.hidden_size;
    if (np < 1 || d->n != 2 * np || !d->target)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: an embedding evaluation needs scored pairs", d->path);
    float *u = calloc((size_t)d->n * C, sizeof *u);
    double *x = malloc((size_t)np * sizeof *x), *y = malloc((size_t)np * sizeof *y);
    if (!u || !x || !y) { free(u); free(x); free(y); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (!shard_mine(sh, k)) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        task_forward(t, b->ids, b->tts, b->lens, NULL, n, T, 0, NULL);
        for (int i = 0; i < n; i++) memcpy(u + (size_t)b->rows[i] * C, t->ehead.unit + (size_t)i * C, (size_t)C * sizeof *u);
    }
    peftc_status rc = gather_f32(sh, u, (size_t)d->n * C, err);
    if (rc) { free(u); free(x); free(y); return rc; }
    for (int i = 0; i < np; i++) {
        const float *a = u + (size_t)i * C, *q = u + (size_t)(np + i) * C;
        double dp = 0;
        for (int c = 0; c < C; c++) dp += (double)a[c] * q[c];
        x[i] = dp;
        y[i] = d->target[i];
    }
    res->task = "embedding";
    res->n = np;
    correlations(x, y, np, &res->pearson, &res->spearman);
    free(u); free(x); free(y);
    return PEFTC_OK;
}

/* Sentence classification: per example the predicted label, per batch its
 * loss, gathered; the counts are then taken in order. */
static peftc_status evaluate_seq(task *t, const dataset *d, batch_buf *b, const int *order, const eval_shard *sh,
                                 peftc_eval_result *res, peftc_error *err)
{
    int K = t->labels.n, nb = n_batches(d, t);
    double *g = calloc((size_t)d->n + (size_t)nb, sizeof *g);
    if (!g) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    double *pr = g, *bl = g + d->n;
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (!shard_mine(sh, k)) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        float loss = task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL);
        bl[k] = (double)loss * n;
        for (int i = 0; i < n; i++) {
            const float *lg = t->head.logits + (size_t)i * K;
            int best = 0;
            for (int q = 1; q < K; q++) if (lg[q] > lg[best]) best = q;
            pr[s + i] = best;
        }
    }
    peftc_status rc = gather_f64(sh, g, (size_t)d->n + (size_t)nb, err);
    if (rc) { free(g); return rc; }
    long long correct = 0, tp = 0, fp = 0, fn = 0, tn = 0;
    double loss_sum = 0;
    for (int k = 0; k < nb; k++) loss_sum += bl[k];
    for (int s = 0; s < d->n; s++) {
        int best = (int)pr[s], y = d->label[order[s]];
        correct += best == y;
        if (K == 2) {
            if (best == 1 && y == 1) tp++;
            else if (best == 1) fp++;
            else if (y == 1) fn++;
            else tn++;
        }
    }
    free(g);
    res->task = "seq-cls";
    res->n = d->n;
    res->accuracy = (double)correct / d->n;
    res->loss = loss_sum / d->n;
    if (!isfinite(res->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
    if (K == 2) {
        res->binary = 1;
        res->f1 = tp ? 2.0 * tp / (2.0 * tp + fp + fn) : 0.0;
        double den = sqrt((double)(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn));
        res->mcc = den > 0 ? ((double)tp * tn - (double)fp * fn) / den : 0.0;
    }
    return PEFTC_OK;
}

peftc_status task_evaluate(task *t, const dataset *d, batch_buf *b, const peftc_comm *comm, peftc_eval_result *res,
                           peftc_error *err)
{
    eval_shard sh = {comm, comm && comm->size > 1 ? comm->rank : 0, comm && comm->size > 1 ? comm->size : 1};
    memset(res, 0, sizeof *res);
    if (sh.size > 1 && (!comm->allreduce_f32 || !comm->allreduce_f64))
        return peftc_fail(err, PEFTC_ERR_INPUT, "data-parallel evaluation: the communicator has no all-reduce");
    int *order = malloc((size_t)(d->n > 0 ? d->n : 1) * sizeof *order);
    if (!order) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < d->n; i++) order[i] = i;
    sort_ds = d;
    qsort(order, (size_t)d->n, sizeof *order, cmp_rows_by_len);
    peftc_status rc = t->kind == TASK_TOKEN_CLS ? evaluate_tokens(t, d, b, order, &sh, res, err)
                    : t->kind == TASK_EMBEDDING ? evaluate_embedding(t, d, b, order, &sh, res, err)
                    : t->kind == TASK_MULTI_LABEL ? evaluate_multi(t, d, b, order, &sh, res, err)
                    : t->kind == TASK_REGRESSION ? evaluate_regression(t, d, b, order, &sh, res, err)
                    : evaluate_seq(t, d, b, order, &sh, res, err);
    free(order);
    return rc;
}
