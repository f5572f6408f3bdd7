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

static peftc_status evaluate_tokens(task *t, const dataset *d, batch_buf *b, const int *order, peftc_eval_result *res, peftc_error *err)
{
    int K = t->labels.n;
    seqeval_acc acc;
    peftc_status rc = seqeval_init(&acc, &t->labels, err);
    if (rc) return rc;
    /* every word is scored, as conlleval and seqeval on the whole file do: a
     * word whose first piece the window cut (or that has no piece) counts as
     * predicted O, which is what `peftc predict` writes for it */
    int cap = 1, o_label = labels_find(&t->labels, "O");
    if (o_label < 0) o_label = 0;
    for (int i = 0; i < d->n; i++) if (d->word_off[i + 1] - d->word_off[i] > cap) cap = d->word_off[i + 1] - d->word_off[i];
    int *gold = malloc((size_t)cap * sizeof *gold), *pred = malloc((size_t)cap * sizeof *pred);
    if (!gold || !pred) { free(gold); free(pred); seqeval_free(&acc); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    long long words = 0, correct = 0, labelled = 0;
    double loss_sum = 0;
    for (int s = 0; s < d->n; s += t->cap_B) {
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        float loss = task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL);
        loss_sum += (double)loss * t->thead.n_labelled;
        labelled += t->thead.n_labelled;
        for (int i = 0; i < n; i++) {
            int r = b->rows[i], w0 = d->word_off[r], m = d->word_off[r + 1] - w0;
            const int32_t *tw = d->tok_word + d->off[r];
            for (int w = 0; w < m; w++) { gold[w] = d->word_label[w0 + w]; pred[w] = o_label; }
            for (int j = 0; j < d->len[r]; j++) {
                if (tw[j] < 0) continue;
                const float *lg = t->thead.logits + ((size_t)i * T + j) * K;
                int best = 0;
                for (int k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
                pred[tw[j]] = best;
            }
            for (int w = 0; w < m; w++) correct += pred[w] == gold[w];
            words += m;
            seqeval_add(&acc, gold, pred, m);
        }
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
    free(gold);
    free(pred);
    seqeval_free(&acc);
    if (!isfinite(res->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
    return PEFTC_OK;
}

static peftc_status evaluate_regression(task *t, const dataset *d, batch_buf *b, const int *order, peftc_eval_result *res, peftc_error *err)
{
    double *x = malloc((size_t)d->n * sizeof *x), *y = malloc((size_t)d->n * sizeof *y);
    if (!x || !y) { free(x); free(y); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    double se = 0;
    for (int s = 0; s < d->n; s += t->cap_B) {
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        t->targets = b->targets;
        task_forward(t, b->ids, b->tts, b->lens, NULL, n, T, 0, NULL);
        for (int i = 0; i < n; i++) {
            x[s + i] = t->head.logits[(size_t)i * t->head.K];
            y[s + i] = b->targets[i];
            se += (x[s + i] - y[s + i]) * (x[s + i] - y[s + i]);
        }
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

static peftc_status evaluate_multi(task *t, const dataset *d, batch_buf *b, const int *order, peftc_eval_result *res, peftc_error *err)
{
    int K = t->labels.n;
    long long *tp = calloc((size_t)K, sizeof *tp), *fp = calloc((size_t)K, sizeof *fp), *fn = calloc((size_t)K, sizeof *fn);
    if (!tp || !fp || !fn) { free(tp); free(fp); free(fn); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    long long exact = 0;
    double loss_sum = 0;
    for (int s = 0; s < d->n; s += t->cap_B) {
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        t->targets = b->targets;
        loss_sum += (double)task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL) * n;
        for (int i = 0; i < n; i++) {
            int all = 1;
            for (int k = 0; k < K; k++) {
                int p = t->head.logits[(size_t)i * K + k] > 0.0f, y = b->targets[(size_t)i * K + k] > 0.5f;   /* sigmoid > 0.5 */
                tp[k] += p && y; fp[k] += p && !y; fn[k] += !p && y;
                all &= p == y;
            }
            exact += all;
        }
    }
    long long TP = 0, FP = 0, FN = 0;
    double macro = 0;
    for (int k = 0; k < K; k++) {
        TP += tp[k]; FP += fp[k]; FN += fn[k];
        /* sklearn's f1_score: 0 where a label has no positives either way */
        macro += tp[k] + fp[k] + fn[k] ? 2.0 * tp[k] / (2.0 * tp[k] + fp[k] + fn[k]) : 0.0;
    }
    res->task = "multi-label";
    res->n = d->n;
    res->accuracy = (double)exact / d->n;   /* subset accuracy: every label right */
    res->loss = loss_sum / d->n;
    res->f1 = TP + FP + FN ? 2.0 * TP / (2.0 * TP + FP + FN) : 0.0;
    res->macro_f1 = macro / K;
    free(tp); free(fp); free(fn);
    if (!isfinite(res->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: evaluation loss is not finite", d->path);
    return PEFTC_OK;
}

/* The cosine similarity of each pair's embeddings (rows i and n_pairs + i)
 * against its score (the targets), as sentence-transformers'
 * EmbeddingSimilarityEvaluator: Pearson and Spearman. */
static peftc_status evaluate_embedding(task *t, const dataset *d, batch_buf *b, const int *order, peftc_eval_result *res, peftc_error *err)
{
    int np = d->n_pairs, C = t->m->cfg.hidden_size;
    if (np < 1 || d->n != 2 * np || !d->target)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: an embedding evaluation needs scored pairs", d->path);
    float *u = malloc((size_t)d->n * C * sizeof *u);
    double *x = malloc((size_t)np * sizeof *x), *y = malloc((size_t)np * sizeof *y);
    if (!u || !x || !y) { free(u); free(x); free(y); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    for (int s = 0; s < d->n; s += t->cap_B) {
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        task_forward(t, b->ids, b->tts, b->lens, NULL, n, T, 0, NULL);
        for (int i = 0; i < n; i++) memcpy(u + (size_t)b->rows[i] * C, t->ehead.unit + (size_t)i * C, (size_t)C * sizeof *u);
    }
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

/* Under data parallelism the sentence-classification pass is sharded and
 * reduced; the token, regression and multi-label passes run whole on every
 * rank (the same result everywhere, no reduction needed). */
peftc_status task_evaluate(task *t, const dataset *d, batch_buf *b, const peftc_comm *comm, peftc_eval_result *res,
                           peftc_error *err)
{
    int rank = comm && comm->size > 1 ? comm->rank : 0, size = comm && comm->size > 1 ? comm->size : 1;
    memset(res, 0, sizeof *res);
    int *order = malloc((size_t)d->n * sizeof *order);
    if (!order) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < d->n; i++) order[i] = i;
    sort_ds = d;
    qsort(order, (size_t)d->n, sizeof *order, cmp_rows_by_len);
    if (t->kind != TASK_SEQ_CLS) {
        peftc_status rc = t->kind == TASK_TOKEN_CLS ? evaluate_tokens(t, d, b, order, res, err)
                        : t->kind == TASK_EMBEDDING ? evaluate_embedding(t, d, b, order, res, err)
                        : t->kind == TASK_MULTI_LABEL ? evaluate_multi(t, d, b, order, res, err)
                        : evaluate_regression(t, d, b, order, res, err);
        free(order);
        return rc;
    }
    res->task = "seq-cls";
    int K = t->labels.n;
    long long correct = 0, tp = 0, fp = 0, fn = 0, tn = 0;
    double loss_sum = 0;
    for (int s = 0, k = 0; s < d->n; s += t->cap_B, k++) {
        if (k % size != rank) continue;
        int n = d->n - s < t->cap_B ? d->n - s : t->cap_B;
        int T = batch_fill(b, d, order + s, n);
        float loss = task_forward(t, b->ids, b->tts, b->lens, b->labels, n, T, 0, NULL);
        loss_sum += (double)loss * n;
        for (int i = 0; i < n; i++) {
            const float *lg = t->head.logits + (size_t)i * K;
            int best = 0;
            for (int k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
            int y = b->labels[i];
            correct += best == y;
            if (K == 2) {
                if (best == 1 && y == 1) tp++;
                else if (best == 1) fp++;
                else if (y == 1) fn++;
                else tn++;
            }
        }
    }
    free(order);
    if (size > 1) {
        /* counts are exact in doubles; the loss sum is summed in rank order */
        double v[6] = {(double)correct, (double)tp, (double)fp, (double)fn, (double)tn, loss_sum};
        peftc_status rc = comm->allreduce_f64(comm->ctx, v, 6, err);
        if (rc) return rc;
        correct = (long long)v[0]; tp = (long long)v[1]; fp = (long long)v[2]; fn = (long long)v[3]; tn = (long long)v[4];
        loss_sum = v[5];
    }
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
