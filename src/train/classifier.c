/* classifier.c: a base model with a trained adapter, for eval and predict. */
#include "core/json_file.h"
#include "train/eval.h"
#include "train/conll.h"
#include "io/safetensors.h"

#include <math.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct peftc_classifier {
    peftc_model *m;
    peftc_tokenizer *tok;
    task t;
    encoder_ctx enc;
    int B, T;
    char model_dir[4096];
    const peftc_comm *comm;   /* NULL: one process */
};

void peftc_classifier_set_comm(peftc_classifier *c, const peftc_comm *comm) { c->comm = comm; }

void peftc_classifier_free(peftc_classifier *c)
{
    if (!c) return;
    task_free(&c->t);
    encoder_free(&c->enc);
    peftc_tokenizer_free(c->tok);
    peftc_model_free(c->m);
    free(c);
}

/* Labels of an adapter written without peftc's label list (by PEFT): as
 * many as its classification head has rows, named by the model config's
 * id2label when that has as many entries, else LABEL_0, LABEL_1, ...
 * (transformers' own default names). */
peftc_status classifier_default_labels(const char *model_dir, const char *adapter_dir, label_set *labels, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, adapter_dir, "adapter_model.safetensors", err);
    peftc_safetensors *st;
    if (rc || (rc = peftc_safetensors_open(path, &st, err))) return rc;
    int n = 0;
    static const char *const heads[] = {"classifier.weight", "classifier.out_proj.weight", "score.weight"};
    for (int i = 0; i < st->n && !n; i++)
        for (size_t h = 0; h < sizeof heads / sizeof *heads; h++) {
            size_t nl = strlen(st->t[i].name), hl = strlen(heads[h]);
            if (nl >= hl && !strcmp(st->t[i].name + nl - hl, heads[h]) && st->t[i].ndim == 2) { n = (int)st->t[i].shape[0]; break; }
        }
    peftc_safetensors_free(st);
    if (n < 2 || n > 100000)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s/adapter_config.json: no label list (peftc.labels) and no classification head (classifier.weight) to count them from", adapter_dir);
    labels->names = calloc((size_t)n, sizeof(char *));
    if (!labels->names) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    labels->n = n;
    json_t *cfg = NULL, *id2 = NULL;
    if (!peftc_path_join(path, sizeof path, model_dir, "config.json", NULL)) cfg = peftc_json_load_file(path, 0, NULL);
    if (cfg) id2 = json_object_get(cfg, "id2label");
    int named = json_is_object(id2) && (int)json_object_size(id2) == n;
    for (int i = 0; i < n; i++) {
        char key[32], def[32];
        snprintf(key, sizeof key, "%d", i);
        snprintf(def, sizeof def, "LABEL_%d", i);
        const char *v = named ? json_string_value(json_object_get(id2, key)) : NULL;
        if (!(labels->names[i] = strdup(v ? v : def))) { json_decref(cfg); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    }
    json_decref(cfg);
    return PEFTC_OK;
}

peftc_status peftc_classifier_load(const char *model_dir, const char *adapter_dir,
                                   peftc_classifier **out, peftc_error *err)
{
    *out = NULL;
    peftc_classifier *c = calloc(1, sizeof *c);
    if (!c) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    method_opts mo;
    label_set labels = {0};
    int max_len = 0;
    peftc_rng rng;
    peftc_rng_seed(&rng, 0);
    peftc_status rc;
    snprintf(c->model_dir, sizeof c->model_dir, "%s", model_dir);
    task_kind kind;
    if ((rc = adapter_read_task(adapter_dir, &kind, err)) || (rc = adapter_read_config(adapter_dir, &mo, &labels, &max_len, err)) ||
        /* a qlora adapter was trained on the NF4 base: evaluate on the same */
        (rc = peftc_model_load_quantized(model_dir, method_base_quant(mo.name), &c->m, err)) ||
        (rc = peftc_tokenizer_load(model_dir, &c->tok, err)))
        goto fail;
    /* an embedding adapter has no head, so no labels */
    if (labels.n == 0 && kind != TASK_EMBEDDING && (rc = classifier_default_labels(model_dir, adapter_dir, &labels, err))) goto fail;
    if (max_len <= 0 || max_len > c->m->cfg.max_position) max_len = c->m->cfg.max_seq_len;
    if (kind == TASK_REGRESSION && labels.n != 1) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s/adapter_config.json: a regression adapter has one output, not %d labels", adapter_dir, labels.n);
        goto fail;
    }
    if ((rc = task_init_kind(&c->t, kind, c->m, c->tok, &mo, &labels, max_len, &rng, err)) ||
        (rc = task_load_weights(&c->t, adapter_dir, err)) || (rc = encoder_init(&c->enc, c->tok, &mo.prompt, max_len, err)) ||
        (rc = encoder_bind_model(&c->enc, c->m, c->model_dir, err)))
        goto fail;
    c->B = 32;
    c->T = 0;
    c->t.fu.stats = c->t.ds.fuse != NULL;   /* inference only: the weights per layer for inspect */
    labels_free(&labels);
    *out = c;
    return PEFTC_OK;
fail:
    labels_free(&labels);
    peftc_classifier_free(c);
    return rc;
}

peftc_status peftc_classifier_merge(peftc_classifier *c, peftc_error *err)
{
    if (c->t.merged) return PEFTC_OK;
    if (c->t.mo.prompt.n_virtual > 0 || c->t.mo.prefix.n > 0 || c->t.ds.fuse || !method_mergeable(&c->t.mo))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "method %s cannot be merged into the weights (only LoRA and (IA)^3 can)", c->t.mo.name);
    peftc_status rc = method_merge(c->m, &c->t.mo, &c->t.pb, &c->t.ds, +1, err);
    if (!rc) c->t.merged = 1;
    return rc;
}

int peftc_classifier_num_labels(const peftc_classifier *c) { return c->t.labels.n; }

task *classifier_task(peftc_classifier *c) { return &c->t; }

const char *peftc_classifier_label(const peftc_classifier *c, int k)
{
    return k >= 0 && k < c->t.labels.n ? c->t.labels.names[k] : NULL;
}

/* (Re)allocates activations when a longer batch arrives. */
const char *peftc_classifier_task(const peftc_classifier *c) { return task_kind_name(c->t.kind); }

static peftc_status ensure(peftc_classifier *c, int T, peftc_error *err)
{
    if (T <= c->T) return PEFTC_OK;
    c->T = T;
    return task_alloc(&c->t, c->B, T, 0, err);
}

peftc_status peftc_classifier_eval(peftc_classifier *c, const char *data_path, const char *text_col,
                                   const char *pair_col, const char *label_col,
                                   peftc_eval_result *res, peftc_error *err)
{
    dataset d = {0};
    batch_buf bb = {0};
    data_cols cols = {text_col, pair_col, label_col};
    peftc_status rc;
    task_kind kind = c->t.kind;
    size_t pl = strlen(data_path);
    int table = (pl > 4 && (!strcmp(data_path + pl - 4, ".tsv") || !strcmp(data_path + pl - 4, ".csv"))) ||
                (pl > 6 && !strcmp(data_path + pl - 6, ".jsonl")) || (pl > 5 && !strcmp(data_path + pl - 5, ".json"));
    if (kind == TASK_TOKEN_CLS && table)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: this adapter was trained for token classification (TOKEN_CLS): it tags the words of a CoNLL file, not the rows of a table",
                          data_path);
    if (kind == TASK_TOKEN_CLS)
        rc = conll_load(data_path, 1, &d, NULL, err);
    else
        rc = data_load(data_path, &cols, 1, &d, err);
    if (rc) goto out;
    if (kind == TASK_EMBEDDING && ((rc = data_map_targets(&d, err)) || (rc = data_pairs_apart(&d, err)))) goto out;
    if (kind == TASK_TOKEN_CLS)
        rc = conll_map_labels(&d, &c->t.labels, err);
    else if (kind == TASK_REGRESSION)
        rc = data_map_targets(&d, err);
    else if (kind == TASK_EMBEDDING)
        rc = PEFTC_OK;   /* the scores were read above */
    else if (kind == TASK_MULTI_LABEL)
        rc = data_map_multi(&d, &c->t.labels, err);
    else
        rc = data_map_labels(&d, &c->t.labels, err);
    if (rc) goto out;
    if (kind == TASK_TOKEN_CLS) rc = conll_tokenize(&d, c->tok, &c->t.mo.prompt, c->t.max_len, err);
    else rc = data_tokenize(&d, encoder_encode, &c->enc, c->t.max_len, err);
    if (rc) goto out;
    int T = 1;
    for (int i = 0; i < d.n; i++) if (d.len[i] > T) T = d.len[i];
    if ((rc = ensure(c, T, err)) || (rc = batch_alloc(&bb, c->B, T, err)) ||
        (kind == TASK_MULTI_LABEL && (rc = batch_alloc_multi(&bb, c->t.labels.n, err))))
        goto out;
    rc = task_evaluate(&c->t, &d, &bb, c->comm, res, err);
out:
    batch_free(&bb);
    data_free(&d);
    return rc;
}

static peftc_status predict_rows(peftc_classifier *c, const char *const *texts, const char *const *pairs, int n,
                                 int *labels, float *probs, peftc_error *err);

static peftc_status kind_check(const peftc_classifier *c, task_kind want, const char *what, peftc_error *err)
{
    if (c->t.kind == want) return PEFTC_OK;
    return peftc_fail(err, PEFTC_ERR_INPUT, "this adapter was trained for %s (%s), not %s", task_kind_name(c->t.kind),
                      c->t.kind == TASK_TOKEN_CLS ? "TOKEN_CLS" : c->t.kind == TASK_EMBEDDING ? "FEATURE_EXTRACTION" : "SEQ_CLS", what);
}

peftc_status peftc_classifier_tag_conll(peftc_classifier *c, const char *data_path, char **out, peftc_error *err)
{
    *out = NULL;
    peftc_status rc = kind_check(c, TASK_TOKEN_CLS, "token classification", err);
    if (rc) return rc;
    dataset d = {0};
    batch_buf bb = {0};
    int *pred = NULL;
    char *text = NULL;
    if ((rc = conll_load(data_path, 0, &d, NULL, err)) || (rc = conll_tokenize(&d, c->tok, &c->t.mo.prompt, c->t.max_len, err)))
        goto out;
    int T = 1, K = c->t.labels.n, o_label = labels_find(&c->t.labels, "O");
    for (int i = 0; i < d.n; i++) if (d.len[i] > T) T = d.len[i];
    if ((rc = ensure(c, T, err)) || (rc = batch_alloc(&bb, c->B, T, err))) goto out;
    pred = malloc((size_t)(d.n_words ? d.n_words : 1) * sizeof *pred);
    size_t need = 1;
    for (int w = 0; w < d.n_words; w++) need += strlen(d.word_line[w]) + 2;
    need += (size_t)d.n + (size_t)d.n_words * 0;
    if (!pred) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    /* words the window cut (or that have no pieces) get O, or the first label if there is no O */
    for (int w = 0; w < d.n_words; w++) pred[w] = o_label >= 0 ? o_label : 0;
    int *rows = bb.rows;
    for (int s = 0; s < d.n; s += c->B) {
        int n = d.n - s < c->B ? d.n - s : c->B;
        int idx[256];
        int *ix = c->B <= 256 ? idx : NULL;
        if (!ix) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "batch too large"); goto out; }
        for (int i = 0; i < n; i++) ix[i] = s + i;
        int Tb = batch_fill(&bb, &d, ix, n);
        task_forward(&c->t, bb.ids, bb.tts, bb.lens, NULL, n, Tb, 0, NULL);
        for (int i = 0; i < n; i++) {
            int r = rows[i];
            const int32_t *tw = d.tok_word + d.off[r];
            for (int j = 0; j < d.len[r]; j++) {
                if (tw[j] < 0) continue;
                const float *lg = c->t.thead.logits + ((size_t)i * Tb + j) * K;
                int best = 0;
                for (int k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
                pred[d.word_off[r] + tw[j]] = best;
            }
        }
    }
    size_t maxlab = 0;
    for (int k = 0; k < K; k++) if (strlen(c->t.labels.names[k]) > maxlab) maxlab = strlen(c->t.labels.names[k]);
    need += (size_t)d.n_words * (maxlab + 2);
    if (!(text = malloc(need))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    size_t at = 0;
    for (int s = 0; s < d.n; s++) {
        for (int w = d.word_off[s]; w < d.word_off[s + 1]; w++)
            at += (size_t)sprintf(text + at, "%s\t%s\n", d.word_line[w], c->t.labels.names[pred[w]]);
        text[at++] = '\n';
    }
    text[at] = 0;
    *out = text;
    text = NULL;
out:
    free(text);
    free(pred);
    batch_free(&bb);
    data_free(&d);
    return rc;
}

int peftc_classifier_embedding_dim(const peftc_classifier *c) { return c->m->cfg.hidden_size; }

peftc_status peftc_classifier_embed(peftc_classifier *c, const char *const *texts, int n, float *out, peftc_error *err)
{
    peftc_status rc = kind_check(c, TASK_EMBEDDING, "embedding", err);
    if (rc) return rc;
    int L = c->t.max_len, C = c->m->cfg.hidden_size;
    int32_t *ids = malloc((size_t)c->B * L * sizeof *ids), *tts = malloc((size_t)c->B * L * sizeof *tts);
    int *lens = malloc((size_t)c->B * sizeof *lens);
    int32_t *one = malloc((size_t)L * sizeof *one), *one_t = malloc((size_t)L * sizeof *one_t);
    if (!ids || !tts || !lens || !one || !one_t) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    for (int s = 0; s < n && !rc; s += c->B) {
        int B = n - s < c->B ? n - s : c->B, T = 1;
        if ((rc = encoder_encode_batch(&c->enc, texts + s, NULL, B, L, ids, tts, lens, one, one_t, &T, err))) goto out;
        if ((rc = ensure(c, T, err))) goto out;
        task_forward(&c->t, ids, tts, lens, NULL, B, T, 0, NULL);
        memcpy(out + (size_t)s * C, c->t.ehead.emb, (size_t)B * C * sizeof *out);
    }
out:
    free(ids); free(tts); free(lens); free(one); free(one_t);
    return rc;
}

peftc_status peftc_classifier_score(peftc_classifier *c, const char *const *texts, const char *const *pairs, int n,
                                    float *scores, peftc_error *err)
{
    peftc_status rc = kind_check(c, TASK_REGRESSION, "regression", err);
    if (rc) return rc;
    int *labels = malloc((size_t)(n ? n : 1) * sizeof *labels);
    if (!labels) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    rc = predict_rows(c, texts, pairs, n, labels, scores, err);   /* regression: the raw output, not a softmax */
    free(labels);
    return rc;
}

peftc_status peftc_classifier_predict(peftc_classifier *c, const char *const *texts,
                                      const char *const *pairs, int n, int *labels,
                                      float *probs, peftc_error *err)
{
    peftc_status rc = c->t.kind == TASK_MULTI_LABEL ? PEFTC_OK : kind_check(c, TASK_SEQ_CLS, "sentence classification", err);
    return rc ? rc : predict_rows(c, texts, pairs, n, labels, probs, err);
}

static peftc_status predict_rows(peftc_classifier *c, const char *const *texts, const char *const *pairs, int n,
                                 int *labels, float *probs, peftc_error *err)
{
    int L = c->t.max_len, K = c->t.labels.n;
    int32_t *ids = malloc((size_t)c->B * L * sizeof *ids), *tts = malloc((size_t)c->B * L * sizeof *tts);
    int *lens = malloc((size_t)c->B * sizeof *lens);
    int32_t *one = malloc((size_t)L * sizeof *one), *one_t = malloc((size_t)L * sizeof *one_t);
    peftc_status rc = PEFTC_OK;
    if (!ids || !tts || !lens || !one || !one_t) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    for (int s = 0; s < n && !rc; s += c->B) {
        int B = n - s < c->B ? n - s : c->B, T = 1;
        if ((rc = encoder_encode_batch(&c->enc, texts + s, pairs ? pairs + s : NULL, B, L, ids, tts, lens, one, one_t, &T, err)))
            goto out;
        if ((rc = ensure(c, T, err))) goto out;
        task_forward(&c->t, ids, tts, lens, NULL, B, T, 0, NULL);
        for (int b = 0; b < B; b++) {
            const float *lg = c->t.head.logits + (size_t)b * K;
            int best = 0;
            for (int k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
            labels[s + b] = best;
            if (probs && c->t.kind == TASK_REGRESSION) {
                probs[s + b] = lg[0];
            } else if (probs && c->t.kind == TASK_MULTI_LABEL) {   /* a sigmoid per label */
                for (int k = 0; k < K; k++) probs[(size_t)(s + b) * K + k] = 1.0f / (1.0f + expf(-lg[k]));
            } else if (probs) {
                float mx = lg[best], sum = 0;
                for (int k = 0; k < K; k++) sum += expf(lg[k] - mx);
                for (int k = 0; k < K; k++) probs[(size_t)(s + b) * K + k] = expf(lg[k] - mx) / sum;
            }
        }
    }
out:
    free(ids); free(tts); free(lens); free(one); free(one_t);
    return rc;
}

int peftc_classifier_fusion_count(const peftc_classifier *c) { return c->t.ds.fuse ? c->t.fu.n : 0; }

const char *peftc_classifier_fusion_name(const peftc_classifier *c, int k)
{
    return c->t.ds.fuse && k >= 0 && k < c->t.fu.n ? c->t.mo.fusion.names[k] : NULL;
}

int peftc_classifier_fusion_weights(const peftc_classifier *c, double *w, int *n_layers, int cap_layers)
{
    const fusion_module *f = &c->t.fu;
    if (!c->t.ds.fuse) return -1;
    *n_layers = f->L;
    for (int l = 0; l < f->L && l < cap_layers; l++)
        for (int k = 0; k < f->n; k++)
            w[(size_t)l * f->n + k] = f->wsum && f->wcount && f->wcount[l] ? f->wsum[(size_t)l * f->n + k] / (double)f->wcount[l] : 0.0;
    return 0;
}
