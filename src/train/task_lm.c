/* task_lm.c: the causal-LM task (task_lm.h). */
#include "train/task_lm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status lm_task_init(lm_task *t, peftc_model *m, const method_opts *mo, peftc_rng *rng, peftc_error *err)
{
    memset(t, 0, sizeof *t);
    t->m = m;
    t->mo = *mo;
    const model_family *f = m->family;
    if (!f->lm_head)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a %s model is an encoder; causal language modelling needs a decoder", m->dir, f->name);
    if (mo->prompt.n_virtual > 0 || mo->prefix.n > 0)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--method %s: virtual tokens and prefixes are not supported on %s models yet (use lora, ia3, adapters, full)",
                          mo->name, f->name);
    if (mo->base == BASE_BIAS)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--method %s: %s models have no biases (BitFit trains biases only)", mo->name, f->name);
    if (mo->adalora)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--method %s: AdaLoRA on decoders is not supported yet", mo->name);
    int n_slots = method_grad_slots(m);
    t->grads = calloc((size_t)(n_slots > 0 ? n_slots : 1), sizeof *t->grads);
    if (!t->grads) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc;
    if ((rc = method_declare(m, mo, &t->pb, &t->ds, err)) || (rc = params_alloc(&t->pb, err)) ||
        (rc = method_bind(m, mo, &t->pb, &t->ds, t->grads, rng, err)))
        return rc;
    return PEFTC_OK;
}

peftc_status lm_task_alloc(lm_task *t, int B, int T, int train, peftc_error *err)
{
    if (t->acts && B <= t->cap_B && T <= t->cap_T && (train <= t->train)) return PEFTC_OK;
    const peftc_config *c = &t->m->cfg;
    size_t N = (size_t)B * T, C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    peftc_status rc = model_acts_init(t->m, &t->acts, B, T, train, 0, 0, err);
    if (rc) return rc;
    if (t->ds.n && (rc = delta_acts_alloc(&t->ds, (int)N, err))) return rc;
    free(t->d_hidden); free(t->h_rows); free(t->d_rows); free(t->logits); free(t->rows);
    t->d_hidden = malloc(N * C * sizeof(float));
    t->h_rows = malloc(LM_TASK_CHUNK * C * sizeof(float));
    t->d_rows = malloc(LM_TASK_CHUNK * C * sizeof(float));
    t->logits = malloc(LM_TASK_CHUNK * V * sizeof(float));
    t->rows = malloc(N * sizeof(int));
    if (!t->d_hidden || !t->h_rows || !t->d_rows || !t->logits || !t->rows)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory (batch %d x %d)", B, T);
    t->cap_B = B; t->cap_T = T; t->train = train;
    return PEFTC_OK;
}

void lm_task_free(lm_task *t)
{
    if (t->m && t->acts) t->m->family->acts_free(t->acts);
    free(t->d_hidden); free(t->h_rows); free(t->d_rows); free(t->logits); free(t->rows);
    free(t->grads);
    delta_set_free(&t->ds);
    params_free(&t->pb);
    memset(t, 0, sizeof *t);
}

int64_t lm_task_trainable_count(const lm_task *t)
{
    int64_t n = 0;
    for (int i = 0; i < t->pb.n; i++) n += t->pb.e[i].numel;
    return n;
}

double lm_task_step(lm_task *t, const int32_t *ids, const uint8_t *target, const int32_t *seg, const int *lens, int B,
                    int T, float grad_scale, peftc_rng *rng, long *n_targets)
{
    peftc_model *m = t->m;
    const model_family *f = m->family;
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size, train = grad_scale != 0;
    model_run run = {.train = train, .rng = rng, .deltas = t->ds.n ? &t->ds : NULL, .pb = &t->pb, .grads = t->grads,
                     .segments = seg, .row0 = t->row0, .tok0 = t->row0 * T};
    f->forward(m, t->acts, &run, ids, NULL, lens, B, T);
    const float *hid = f->hidden(m, t->acts);
    /* position p predicts token p+1 of the same row (and, packed, of the same segment: a target is never a segment's first token) */
    int nr = 0;
    for (int b = 0; b < B; b++)
        for (int p = 0; p + 1 < lens[b]; p++)
            if (target[(size_t)b * T + p + 1]) t->rows[nr++] = b * T + p;
    *n_targets = nr;
    if (train) memset(t->d_hidden, 0, (size_t)B * T * C * sizeof(float));
    double loss = 0;
    for (int r0 = 0; r0 < nr; r0 += LM_TASK_CHUNK) {
        int n = nr - r0 < LM_TASK_CHUNK ? nr - r0 : LM_TASK_CHUNK;
        for (int i = 0; i < n; i++) memcpy(t->h_rows + (size_t)i * C, hid + (size_t)t->rows[r0 + i] * C, (size_t)C * sizeof(float));
        f->lm_head(m, t->h_rows, n, t->logits);
        for (int i = 0; i < n; i++) {
            float *z = t->logits + (size_t)i * V;
            int y = ids[t->rows[r0 + i] + 1];
            float mx = z[0];
            for (int v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
            double s = 0;
            for (int v = 0; v < V; v++) s += exp((double)(z[v] - mx));
            double lse = mx + log(s);
            loss += lse - z[y];
            if (train) {
                /* d loss / d z = softmax(z) - onehot(y), times the scale */
                for (int v = 0; v < V; v++) z[v] = grad_scale * (float)exp((double)z[v] - lse);
                z[y] -= grad_scale;
            }
        }
        if (train) {
            memset(t->d_rows, 0, (size_t)n * C * sizeof(float));
            f->lm_head_backward(m, t->h_rows, t->logits, n, t->d_rows, NULL);
            for (int i = 0; i < n; i++) {
                float *d = t->d_hidden + (size_t)t->rows[r0 + i] * C;
                const float *s = t->d_rows + (size_t)i * C;
                for (int j = 0; j < C; j++) d[j] += s[j];
            }
        }
    }
    if (train) f->backward(m, t->acts, &run, ids, NULL, lens, B, T, t->d_hidden);
    return loss;
}
