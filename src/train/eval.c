/* eval.c: batches and evaluation metrics. */
#include "train/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status batch_alloc(batch_buf *b, int B, int T, peftc_error *err)
{
    memset(b, 0, sizeof *b);
    b->ids = calloc((size_t)B * T, sizeof *b->ids);
    b->tts = calloc((size_t)B * T, sizeof *b->tts);
    b->lens = calloc((size_t)B, sizeof *b->lens);
    b->labels = calloc((size_t)B, sizeof *b->labels);
    b->rows = calloc((size_t)B, sizeof *b->rows);
    if (!b->ids || !b->tts || !b->lens || !b->labels || !b->rows) {
        batch_free(b);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for batches");
    }
    b->B = B;
    b->T = T;
    return PEFTC_OK;
}

void batch_free(batch_buf *b)
{
    free(b->ids); free(b->tts); free(b->lens); free(b->labels); free(b->rows);
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
    }
}

static const dataset *sort_ds;
static int cmp_rows_by_len(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    int la = sort_ds->len[a], lb = sort_ds->len[b];
    return la != lb ? la - lb : a - b;
}

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
