/* task.c: model + method + classification head, and the adapter files. */
#include "core/json_file.h"
#include "train/task.h"
#include "io/safetensors.h"
#include "train/adapterhub.h"
#include "train/adalora_config.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define HEAD_PREFIX "base_model.model."

/* Everything task_init does before the parameter blocks exist: the method's,
 * the virtual tokens' and the head's tensors are declared (shapes only), so
 * task_count_params can count a method without allocating its values. */
const char *task_kind_name(task_kind k)
{
    return k == TASK_TOKEN_CLS ? "token-cls" : k == TASK_REGRESSION ? "regression" : k == TASK_MULTI_LABEL ? "multi-label"
         : k == TASK_EMBEDDING ? "embedding" : "seq-cls";
}

int task_kind_parse(const char *s, task_kind *k)
{
    if (!strcmp(s, "seq-cls")) *k = TASK_SEQ_CLS;
    else if (!strcmp(s, "token-cls")) *k = TASK_TOKEN_CLS;
    else if (!strcmp(s, "regression")) *k = TASK_REGRESSION;
    else if (!strcmp(s, "multi-label")) *k = TASK_MULTI_LABEL;
    else if (!strcmp(s, "embedding")) *k = TASK_EMBEDDING;
    else return 0;
    return 1;
}

char *adapter_base_name(const char *dir)
{
    char path[4096];
    if (peftc_path_join(path, sizeof path, dir, "adapter_config.json", NULL)) return NULL;
    json_t *cfg = json_load_file(path, 0, NULL);
    const char *b = cfg ? json_string_value(json_object_get(cfg, "base_model_name_or_path")) : NULL;
    char *out = NULL;
    if (b && *b) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", b);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
        const char *s = strrchr(tmp, '/');
        out = strdup(s ? s + 1 : tmp);
    }
    json_decref(cfg);
    return out;
}

/* The checksum of an adapter directory: FNV-1a over its config and tensors. */
static peftc_status adapter_checksum(const char *dir, uint64_t *sum, peftc_error *err)
{
    static const char *files[2] = {"adapter_config.json", "adapter_model.safetensors"};
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 2; i++) {
        char path[4096], *data = NULL;
        size_t len = 0;
        peftc_status rc = peftc_path_join(path, sizeof path, dir, files[i], err);
        if (!rc) rc = peftc_read_file(path, &data, &len, err);
        if (rc) return rc;
        h = fusion_fnv(h, data, len);
        free(data);
    }
    *sum = h ? h : 1;
    return PEFTC_OK;
}

/* AdapterFusion: each fused adapter as a task of its own on m (its deltas
 * and parameters, frozen), checked, then the fusion module declared in t->pb. */
static peftc_status fusion_load_children(task *t, peftc_model *m, peftc_tokenizer *tok, int max_len, peftc_error *err)
{
    const fusion_spec *fs = &t->mo.fusion;
    if (fs->n < 2) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion needs at least two adapters, got %d", fs->n);
    if (!(t->fu_child = calloc((size_t)fs->n, sizeof *t->fu_child))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    fusion_child ch[FUSION_MAX];
    const char *names[FUSION_MAX];
    char *base0 = NULL;
    peftc_status rc = PEFTC_OK;
    for (int k = 0; k < fs->n && !rc; k++) {
        const char *dir = fs->dirs[k];
        method_opts cmo;
        label_set cl = {0};
        int cmax = 0;
        uint64_t sum = 0;
        peftc_rng r0;
        peftc_rng_seed(&r0, 0);
        names[k] = fs->names[k];
        if ((rc = adapter_checksum(dir, &sum, err)) || (rc = adapter_read_config(dir, &cmo, &cl, &cmax, err))) {
            labels_free(&cl);
            break;
        }
        if (fs->sums[k] && fs->sums[k] != sum) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "fusion: adapter '%s' (%s) is not the one the fusion was trained with (checksum %016llx, saved %016llx)",
                            fs->names[k], dir, (unsigned long long)sum, (unsigned long long)fs->sums[k]);
        } else if (cmo.fusion.n > 0) {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "fusion: adapter '%s' (%s) is itself a fusion", fs->names[k], dir);
        } else if (cmo.base != BASE_NONE || cmo.train_norms || cmo.prompt.n_virtual > 0 || cmo.prefix.n > 0 || cmo.lora || cmo.adalora) {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "fusion: adapter '%s' (%s) is method %s; fusion fuses bottleneck adapters (adapter-pfeiffer, parallel-adapter, scaled-parallel-adapter)",
                            fs->names[k], dir, cmo.name);
        } else {
            char *b = adapter_base_name(dir);
            if (k == 0) base0 = b;
            else {
                if (base0 && b && strcmp(base0, b))
                    rc = peftc_fail(err, PEFTC_ERR_INPUT, "fusion: adapter '%s' (%s) was trained on base model '%s', adapter '%s' on '%s'",
                                    fs->names[k], dir, b, fs->names[0], base0);
                free(b);
            }
        }
        if (!rc && cl.n == 0) {   /* a config without labels: one placeholder (the child's head is not used) */
            cl.n = 1;
            cl.names = calloc(1, sizeof *cl.names);
            if (!cl.names || !(cl.names[0] = strdup("0"))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
        if (!rc) {
            if ((rc = task_init(&t->fu_child[k], m, tok, &cmo, &cl, max_len, &r0, err))) {
                t->fu_child[k].m = NULL;   /* the shared model's buffers are not the child's */
                task_free(&t->fu_child[k]);
            } else {
                t->fu_n = k + 1;
                rc = task_load_weights(&t->fu_child[k], dir, err);
            }
        }
        labels_free(&cl);
        if (!rc) {
            t->mo.fusion.sums[k] = sum;
            ch[k].ds = &t->fu_child[k].ds;
            ch[k].pb = &t->fu_child[k].pb;
        }
    }
    free(base0);
    if (rc) return rc;
    if ((rc = fusion_declare(&t->fu, &t->pb, m->cfg.num_layers, m->cfg.hidden_size, m->cfg.attention_dropout, ch, names, fs->n, err)))
        return rc;
    t->ds.fuse = &t->fu;
    t->fu.T = fs->T >= 1.0f ? fs->T : 1.0f;
    return PEFTC_OK;
}

static peftc_status task_declare(task *t, task_kind kind, peftc_model *m, peftc_tokenizer *tok, const method_opts *mo,
                                 const label_set *labels, int max_len, peftc_error *err)
{
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->m = m;
    t->tok = tok;
    t->mo = *mo;
    t->max_len = max_len;
    t->p_pool_w = t->p_pool_b = -1;
    const peftc_config *c = &m->cfg;
    int C = c->hidden_size, K = labels->n;
    t->labels.n = labels->n;
    t->labels.names = calloc((size_t)(K > 0 ? K : 1), sizeof(char *));   /* an embedding has no labels */
    if (!t->labels.names) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < K; i++) t->labels.names[i] = strdup(labels->names[i]);
    const model_family *f = m->family;
    int n_slots = method_grad_slots(m);
    t->grads = calloc((size_t)(n_slots > 0 ? n_slots : 1), sizeof *t->grads);
    if (!t->grads) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");

    peftc_status rc = method_declare(m, mo, &t->pb, &t->ds, err);
    if (rc) return rc;
    if (mo->fusion.n > 0 && (rc = fusion_load_children(t, m, tok, max_len, err))) return rc;
    if (mo->prompt.n_virtual > 0) {
        if (mo->prompt.n_virtual + 3 > c->max_position)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%d virtual tokens overflow the model's %d positions", mo->prompt.n_virtual, c->max_position);
        if ((rc = prompt_declare(&t->prompt, &mo->prompt, C, &t->pb, err))) return rc;
    }
    if (mo->prefix.n > 0) {
        if (mo->prefix.n > c->max_position)
            return peftc_fail(err, PEFTC_ERR_INPUT, "--prefix-len %d overflows the model's %d positions", mo->prefix.n, c->max_position);
        if ((rc = prefix_declare(&t->prefix, &mo->prefix, c->num_layers, C, &t->pb, err))) return rc;
    }
    /* an embedding is the mean of the hidden states: no pooler, no head */
    if (kind == TASK_EMBEDDING) return PEFTC_OK;
    /* the pooler trains with the base in full fine-tuning, and always when the
     * checkpoint has none (it must be learned then) */
    const float *m_pool_w = NULL, *m_pool_b = NULL;
    if (!f->pooler(m, &m_pool_w, &m_pool_b))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s of a %s model is not supported yet",
                          kind == TASK_TOKEN_CLS ? "token classification" : "sequence classification", f->name);
    /* a token head reads every position: no pooler */
    /* AdapterHub's head has a dense layer of its own where BERT's pooler is */
    int train_pooler = kind != TASK_TOKEN_CLS && (mo->base == BASE_ALL || !m_pool_w || mo->ahub);
    int64_t sh[2] = {C, C}, shk[2] = {K, C};
    if (train_pooler) {
        char nw[PARAM_NAME_MAX], nb[PARAM_NAME_MAX];
        snprintf(nw, sizeof nw, "%s%s.weight", f->peft_prefix, f->pooler_module);
        snprintf(nb, sizeof nb, "%s%s.bias", f->peft_prefix, f->pooler_module);
        t->p_pool_w = params_add(&t->pb, nw, 2, sh, 0);
        t->p_pool_b = params_add(&t->pb, nb, 1, sh, 1);
    }
    t->p_cls_w = params_add(&t->pb, HEAD_PREFIX "classifier.weight", 2, shk, 0);
    t->p_cls_b = params_add(&t->pb, HEAD_PREFIX "classifier.bias", 1, shk, 1);
    if (t->p_cls_w < 0 || t->p_cls_b < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

peftc_status task_count_params(peftc_model *m, const method_opts *mo, int num_labels, int64_t *count, peftc_error *err)
{
    if (num_labels < 1 || num_labels > 1 << 20) return peftc_fail(err, PEFTC_ERR_INPUT, "number of labels %d out of range", num_labels);
    label_set labels = {num_labels, calloc((size_t)num_labels, sizeof(char *))};
    if (!labels.names) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < num_labels; i++) labels.names[i] = "";
    task t;
    peftc_status rc = task_declare(&t, TASK_SEQ_CLS, m, NULL, mo, &labels, m->cfg.max_position, err);
    *count = rc ? 0 : task_trainable_count(&t);
    free(labels.names);
    t.m = NULL;   /* no activation buffers were made */
    task_free(&t);
    return rc;
}

peftc_status task_init(task *t, peftc_model *m, peftc_tokenizer *tok, const method_opts *mo,
                       const label_set *labels, int max_len, peftc_rng *rng, peftc_error *err)
{
    return task_init_kind(t, TASK_SEQ_CLS, m, tok, mo, labels, max_len, rng, err);
}

peftc_status task_init_kind(task *t, task_kind kind, peftc_model *m, peftc_tokenizer *tok, const method_opts *mo,
                            const label_set *labels, int max_len, peftc_rng *rng, peftc_error *err)
{
    peftc_status rc = task_declare(t, kind, m, tok, mo, labels, max_len, err);
    if (rc) return rc;
    const peftc_config *c = &m->cfg;
    int C = c->hidden_size, K = labels->n;
    const model_family *f = m->family;
    const float *m_pool_w = NULL, *m_pool_b = NULL;
    f->pooler(m, &m_pool_w, &m_pool_b);
    int train_pooler = kind != TASK_TOKEN_CLS && (mo->base == BASE_ALL || !m_pool_w || mo->ahub);
    if ((rc = params_alloc(&t->pb, err))) return rc;
    if ((rc = method_bind(m, mo, &t->pb, &t->ds, t->grads, rng, err))) return rc;
    if (t->ds.fuse) fusion_init_params(&t->fu, &t->pb, rng);
    if (mo->adalora && (rc = adalora_init(&t->ada, &mo->ada, &t->pb, &t->ds, err))) return rc;
    if (mo->prompt.n_virtual > 0) {
        if ((rc = prompt_alloc(&t->prompt, err))) return rc;
        prompt_init(&t->prompt, &t->pb, f->word_embeddings(m), c->vocab_size, NULL, 0, rng);
    }
    if (mo->prefix.n > 0) {
        if ((rc = prefix_alloc(&t->prefix, err))) return rc;
        prefix_init(&t->prefix, &t->pb, rng);
    }

    if (kind == TASK_EMBEDDING) {
        t->ehead.C = C;
        t->ehead.scale = 20.0f;   /* MultipleNegativesRankingLoss's default */
        return PEFTC_OK;
    }
    /* BertFor{Sequence,Token}Classification's init: N(0, 0.02^2) weights, zero bias */
    float *w = params_value(&t->pb, t->p_cls_w);
    for (int i = 0; i < K * C; i++) w[i] = 0.02f * peftc_rng_normal(rng);
    if (train_pooler) {
        float *pw = params_value(&t->pb, t->p_pool_w), *pb = params_value(&t->pb, t->p_pool_b);
        if (m_pool_w) {
            memcpy(pw, m_pool_w, (size_t)C * C * sizeof(float));
            memcpy(pb, m_pool_b, (size_t)C * sizeof(float));
        } else {
            for (int i = 0; i < C * C; i++) pw[i] = 0.02f * peftc_rng_normal(rng);
        }
    }
    cls_head *h = &t->head;
    h->C = C;
    h->K = K;
    h->pool_w = train_pooler ? params_value(&t->pb, t->p_pool_w) : m_pool_w;
    h->pool_b = train_pooler ? params_value(&t->pb, t->p_pool_b) : m_pool_b;
    h->g_pool_w = train_pooler ? params_grad(&t->pb, t->p_pool_w) : NULL;
    h->g_pool_b = train_pooler ? params_grad(&t->pb, t->p_pool_b) : NULL;
    h->cls_w = params_value(&t->pb, t->p_cls_w);
    h->cls_b = params_value(&t->pb, t->p_cls_b);
    h->g_cls_w = params_grad(&t->pb, t->p_cls_w);
    h->g_cls_b = params_grad(&t->pb, t->p_cls_b);
    tok_head *th = &t->thead;
    th->C = C;
    th->K = K;
    th->w = h->cls_w;
    th->b = h->cls_b;
    th->g_w = h->g_cls_w;
    th->g_b = h->g_cls_b;
    return PEFTC_OK;
}

peftc_status encoder_init(encoder_ctx *e, const peftc_tokenizer *tok, const prompt_spec *ps, int max_len, peftc_error *err)
{
    memset(e, 0, sizeof *e);
    e->tok = tok;
    e->ps = *ps;
    e->max_len = max_len;
    if (ps->n_virtual > 0 && max_len - ps->n_virtual < 4)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%d virtual tokens leave no room for the input in --max-len %d", ps->n_virtual, max_len);
    e->tmp_ids = malloc((size_t)max_len * sizeof *e->tmp_ids);
    e->tmp_tts = malloc((size_t)max_len * sizeof *e->tmp_tts);
    if (!e->tmp_ids || !e->tmp_tts) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

peftc_status encoder_bind_model(encoder_ctx *e, const peftc_model *m, const char *model_dir, peftc_error *err)
{
    const peftc_config *c = &m->cfg;
    int nv = peftc_tokenizer_vocab_size(e->tok);
    if (nv > c->vocab_size)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: the tokenizer has %d tokens but config.json's vocab_size (the embedding table) is %d",
                          model_dir, nv, c->vocab_size);
    e->type_vocab = c->type_vocab_size > 0 ? c->type_vocab_size : 1;
    e->model_dir = model_dir;
    return PEFTC_OK;
}

static peftc_status check_types(const encoder_ctx *e, const int32_t *tts, int n, peftc_error *err)
{
    if (e->type_vocab <= 0 || !tts) return PEFTC_OK;
    for (int i = 0; i < n; i++)
        if (tts[i] < 0 || tts[i] >= e->type_vocab)
            return peftc_fail(err, PEFTC_ERR_INPUT, "token type %d (a sentence pair) but %s/config.json has type_vocab_size %d",
                              tts[i], e->model_dir, e->type_vocab);
    return PEFTC_OK;
}

void encoder_free(encoder_ctx *e)
{
    free(e->tmp_ids);
    free(e->tmp_tts);
    memset(e, 0, sizeof *e);
}

peftc_status encoder_encode_batch(const encoder_ctx *e, const char *const *texts, const char *const *pairs, int B, int L,
                                  int32_t *ids, int32_t *tts, int *lens, int32_t *one, int32_t *one_t, int *T,
                                  peftc_error *err)
{
    /* tokenise into fixed-stride rows, then repack at the batch's length */
    int Tb = 1;
    for (int b = 0; b < B; b++) {
        peftc_status rc = encoder_encode(e, texts[b], pairs ? pairs[b] : NULL, ids + (size_t)b * L, tts + (size_t)b * L, &lens[b], err);
        if (rc) return rc;
        if (lens[b] > Tb) Tb = lens[b];
    }
    for (int b = 0; b < B; b++) {
        memcpy(one, ids + (size_t)b * L, (size_t)lens[b] * sizeof *one);
        memcpy(one_t, tts + (size_t)b * L, (size_t)lens[b] * sizeof *one);
        for (int j = lens[b]; j < Tb; j++) one[j] = one_t[j] = 0;
        memcpy(ids + (size_t)b * Tb, one, (size_t)Tb * sizeof *one);
        memcpy(tts + (size_t)b * Tb, one_t, (size_t)Tb * sizeof *one);
    }
    *T = Tb;
    return PEFTC_OK;
}

peftc_status encoder_encode(const void *user, const char *text, const char *pair, int32_t *ids, int32_t *tts,
                            int *n, peftc_error *err)
{
    const encoder_ctx *e = user;
    size_t tl = strlen(text), pl = pair ? strlen(pair) : 0;
    if (e->ps.n_virtual <= 0) {
        peftc_status rc = peftc_tokenizer_encode(e->tok, text, tl, pair, pl, e->max_len, ids, tts, n, err);
        return rc ? rc : check_types(e, tts, *n, err);
    }
    int m;
    peftc_status rc = peftc_tokenizer_encode(e->tok, text, tl, pair, pl, e->max_len - e->ps.n_virtual,
                                             e->tmp_ids, e->tmp_tts, &m, err);
    if (rc) return rc;
    *n = template_apply(&e->ps, e->tmp_ids, e->tmp_tts, m, ids, tts, e->max_len);
    return check_types(e, tts, *n, err);
}

peftc_status task_alloc(task *t, int B, int T, int train, peftc_error *err)
{
    const peftc_config *c = &t->m->cfg;
    peftc_status rc;
    const model_family *f = t->m->family;
    unsigned keep = f->keep_for(t->m, t->ds.n || t->ds.fuse ? &t->ds : NULL, t->grads, t->mo.prompt.n_virtual > 0);
    if ((rc = model_acts_init(t->m, &t->acts, B, T, train, t->mo.prefix.n, keep, err))) return rc;
    if (t->ds.n && (rc = delta_acts_alloc(&t->ds, B * T, err))) return rc;
    if (t->ds.fuse && (rc = fusion_acts_alloc(&t->fu, B * T, err))) return rc;
    if (t->kind == TASK_EMBEDDING) {
        if ((rc = emb_head_alloc(&t->ehead, c->hidden_size, B, err))) return rc;
    } else if (t->kind == TASK_TOKEN_CLS) {
        if ((rc = tok_head_alloc(&t->thead, c->hidden_size, t->labels.n, (size_t)B * T, err))) return rc;
    } else if ((rc = cls_head_alloc(&t->head, c->hidden_size, t->labels.n, B, err))) {
        return rc;
    }
    free(t->d_hidden);
    t->d_hidden = NULL;
    if (train && !(t->d_hidden = peftc_alloc_aligned((size_t)B * T * c->hidden_size * sizeof(float))))
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    t->cap_B = B;
    t->cap_T = T;
    return PEFTC_OK;
}

void task_free(task *t)
{
    if (t->m) t->m->family->acts_free(t->acts);
    for (int k = 0; k < t->fu_n; k++) {
        t->fu_child[k].m = NULL;   /* the shared model's buffers are not the child's */
        task_free(&t->fu_child[k]);
    }
    free(t->fu_child);
    fusion_free(&t->fu);
    delta_set_free(&t->ds);
    cls_head_free(&t->head);
    tok_head_free(&t->thead);
    emb_head_free(&t->ehead);
    params_free(&t->pb);
    labels_free(&t->labels);
    free(t->grads);
    free(t->d_hidden);
    prompt_free(&t->prompt);
    prefix_free(&t->prefix);
    adalora_free(&t->ada);
    memset(t, 0, sizeof *t);
}

static model_run task_run(task *t, int train, peftc_rng *rng, int T)
{
    model_run r = {.train = train, .rng = rng, .deltas = (t->ds.n || t->ds.fuse) && !t->merged ? &t->ds : NULL,
                   .pb = &t->pb, .grads = t->grads, .need_input_grad = 0, .row0 = t->row0, .tok0 = t->row0 * T};
    if (t->mo.prompt.n_virtual > 0) {
        r.virt = t->prompt.out;
        r.d_virt = train ? t->prompt.d_out : NULL;
        r.n_virt = t->mo.prompt.n_virtual;
    }
    if (t->mo.prefix.n > 0) {
        const prefix_module *pm = &t->prefix;
        r.n_prefix = t->mo.prefix.n;
        r.prefix_kv = pm->kv;
        r.d_prefix_kv = train ? pm->d_kv : NULL;
        if (pm->spec.gate) {
            r.prefix_gate_w = params_value(&t->pb, pm->p_gate_w);
            r.prefix_gate_b = params_value(&t->pb, pm->p_gate_b);
            r.d_prefix_gate_w = train ? params_grad(&t->pb, pm->p_gate_w) : NULL;
            r.d_prefix_gate_b = train ? params_grad(&t->pb, pm->p_gate_b) : NULL;
        }
    }
    return r;
}

float task_forward(task *t, const int32_t *ids, const int32_t *tts, const int *lens, const int *labels,
                   int B, int T, int train, peftc_rng *rng)
{
    if (t->mo.prompt.n_virtual > 0) prompt_forward(&t->prompt, &t->pb);
    if (t->mo.prefix.n > 0) prefix_forward(&t->prefix, &t->pb);
    model_run run = task_run(t, train, rng, T);
    t->fu.lens = lens;   /* the fusion's statistics count the real tokens */
    t->fu.B = B;
    t->fu.Tlen = T;
    t->m->family->forward(t->m, t->acts, &run, ids, tts, lens, B, T);
    const float *hidden = t->m->family->hidden(t->m, t->acts);
    if (t->kind == TASK_EMBEDDING) {
        emb_head_forward(&t->ehead, hidden, ids, lens, B, T);
        return labels ? emb_head_loss(&t->ehead, B) : 0.0f;
    }
    if (t->kind == TASK_TOKEN_CLS) {
        tok_head_forward(&t->thead, hidden, (size_t)B * T, t->m->cfg.hidden_dropout, train, rng, t->row0 * T);
        return labels ? tok_head_loss(&t->thead, labels, (size_t)B * T) : 0.0f;
    }
    cls_head_forward(&t->head, hidden, B, T, t->m->cfg.hidden_dropout, train, rng, t->row0);
    if (!labels) return 0.0f;
    if (t->kind == TASK_MULTI_LABEL) return cls_head_bce_loss(&t->head, t->targets, B);
    return t->kind == TASK_REGRESSION ? cls_head_mse_loss(&t->head, t->targets, B) : cls_head_loss(&t->head, labels, B);
}

void task_backward(task *t, const int32_t *ids, const int32_t *tts, const int *lens, const int *labels,
                   int B, int T, float scale, peftc_rng *rng)
{
    model_run run = task_run(t, 1, rng, T);
    run.layer_done = t->layer_done;
    run.layer_done_ctx = t->layer_done_ctx;
    if (t->mo.prompt.n_virtual > 0)
        memset(t->prompt.d_out, 0, (size_t)t->mo.prompt.n_virtual * t->m->cfg.hidden_size * sizeof(float));
    if (t->mo.prefix.n > 0)
        memset(t->prefix.d_kv, 0, (size_t)t->mo.prefix.n * 2 * t->m->cfg.num_layers * t->m->cfg.hidden_size * sizeof(float));
    if (t->kind == TASK_EMBEDDING)
        emb_head_backward(&t->ehead, ids, lens, B, T, scale, t->d_hidden);
    else if (t->kind == TASK_TOKEN_CLS)
        tok_head_backward(&t->thead, labels, (size_t)B * T, t->m->cfg.hidden_dropout, 1, scale, t->d_hidden);
    else if (t->kind == TASK_MULTI_LABEL)
        cls_head_backward_bce(&t->head, t->targets, B, T, t->m->cfg.hidden_dropout, 1, scale, t->d_hidden);
    else if (t->kind == TASK_REGRESSION)
        cls_head_backward_mse(&t->head, t->targets, B, T, t->m->cfg.hidden_dropout, 1, scale, t->d_hidden);
    else
        cls_head_backward(&t->head, labels, B, T, t->m->cfg.hidden_dropout, 1, scale, t->d_hidden);
    t->m->family->backward(t->m, t->acts, &run, ids, tts, lens, B, T, t->d_hidden);
    if (t->mo.prompt.n_virtual > 0) prompt_backward(&t->prompt, &t->pb);
    if (t->mo.prefix.n > 0) prefix_backward(&t->prefix, &t->pb);
}

double task_fusion_regularize(task *t)
{
    return t->ds.fuse ? fusion_regularize(&t->fu, &t->pb) : 0.0;
}

void task_fusion_anneal(task *t, long forwards)
{
    if (t->ds.fuse) t->fu.T = fusion_temperature(t->mo.fusion.temperature, forwards);
}

int64_t task_trainable_count(const task *t)
{
    int64_t n = 0;
    for (int i = 0; i < t->pb.n; i++) n += (int64_t)t->pb.e[i].numel;
    return n;
}

/* ------------------------------------------------------------ adapter files */

static const char *peft_type(const method_opts *mo)
{
    if (mo->adalora && !mo->n_deltas && mo->base == BASE_NONE && !mo->train_norms) return "ADALORA";
    if (mo->lora && !mo->n_deltas && mo->base == BASE_NONE && !mo->train_norms) return "LORA";
    if (!strcmp(mo->name, "ia3")) return "IA3";
    /* prompt tuning / P-tuning exactly as PEFT runs them: virtual tokens
     * before [CLS] (P-tuning: --template 'P ... P [CLS] {text}'), nothing
     * else trained but the head; P-tuning's encoder is folded on save, as
     * PEFT saves it. (P-tuning's other templates place tokens after [CLS],
     * which PEFT's P_TUNING does not: they stay PEFTC.) */
    if (mo->prompt.n_virtual > 0 && mo->prompt.before_cls && !mo->lora && !mo->n_deltas && mo->base == BASE_NONE &&
        !mo->train_norms && mo->prefix.n == 0)
        return mo->prompt.encoder == PROMPT_ENC_NONE ? "PROMPT_TUNING" : "P_TUNING";
    return "PEFTC"; /* this project's own methods: described by the "peftc" object */
}

/* Whether name a equals b or is a dotted suffix of it (PEFT's match of a
 * plain target_modules name against a module path). */
static int suffix_match(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    return la == lb ? !strcmp(a, b) : la < lb && b[lb - la - 1] == '.' && !strcmp(b + lb - la, a);
}

/* A regex-escaped copy of a module path; a printf %d becomes \d+. */
static void regex_escape(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; *in && n + 4 < cap; in++) {
        if (in[0] == '%' && in[1] == 'd') { memcpy(out + n, "\\d+", 3); n += 3; in++; continue; }
        if (*in == '.') out[n++] = '\\';
        out[n++] = *in;
    }
    out[n] = 0;
}

/* PEFT matches a plain name as a suffix of the module path, so a target
 * named like the tail of another linear layer's path ("output.dense" of
 * "attention.output.dense") would catch that one too; where a target's name
 * collides with another linear site's path (either way), a regex (full match)
 * is exact. */
static json_t *target_modules_json(const model_family *f, unsigned mask)
{
    int ambiguous = 0;
    for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s)) {
        if (!(mask & (1u << s)) || !f->site_target[s]) continue;
        for (int o = 0; o < SITE_COUNT; o++) if (site_is_linear(o))
            if (o != s && f->site_target[o] && f->site_module[o] && f->site_module[s] &&
                (suffix_match(f->site_target[s], f->site_module[o]) || suffix_match(f->site_target[o], f->site_module[s])))
                ambiguous = 1;
    }
    if (!ambiguous) {
        json_t *a = json_array();
        for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s))
            if (mask & (1u << s)) json_array_append_new(a, json_string(lora_module_name(f, (site_id)s)));
        return a;
    }
    char re[1024] = ".*", part[256];
    regex_escape(f->layer_path, part, sizeof part);
    strcat(re, part);
    strcat(re, "\\.(");
    int first = 1;
    for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s))
        if ((mask & (1u << s)) && f->site_module[s] && strlen(re) + 2 * strlen(f->site_module[s]) + 4 < sizeof re) {
            regex_escape(f->site_module[s], part, sizeof part);
            strcat(re, first ? "" : "|");
            strcat(re, part);
            first = 0;
        }
    strcat(re, ")");
    return json_string(re);
}

/* src's adapter_config.json and adapter_model.safetensors into
 * dir/adapters/name/ (atomic writes); nothing when src is that directory. */
static peftc_status copy_adapter(const char *src, const char *dir, const char *name, peftc_error *err)
{
    char sub[4096], sub2[4096];
    peftc_status rc = peftc_path_join(sub2, sizeof sub2, dir, "adapters", err);
    if (!rc) rc = peftc_path_join(sub, sizeof sub, sub2, name, err);
    if (!rc) rc = peftc_mkdir_p(sub, err);
    if (rc) return rc;
    struct stat a, b;
    if (!stat(src, &a) && !stat(sub, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino) return PEFTC_OK;
    static const char *files[2] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2 && !rc; i++) {
        char from[4096], to[4096], *data = NULL;
        size_t len = 0;
        if ((rc = peftc_path_join(from, sizeof from, src, files[i], err)) || (rc = peftc_path_join(to, sizeof to, sub, files[i], err)) ||
            (rc = peftc_read_file(from, &data, &len, err)))
            break;
        rc = peftc_write_file_atomic(to, data, len, err);
        free(data);
    }
    return rc;
}

peftc_status task_save_adapter(const task *t, const char *dir, const char *base_model, peftc_error *err)
{
    peftc_status mk = peftc_mkdir_p(dir, err);
    if (mk) return mk;
    const method_opts *mo = &t->mo;
    const model_family *f = t->m->family;
    json_t *cfg = json_object();
    json_object_set_new(cfg, "peft_type", json_string(peft_type(mo)));
    json_object_set_new(cfg, "task_type", json_string(t->kind == TASK_TOKEN_CLS ? "TOKEN_CLS" : t->kind == TASK_EMBEDDING ? "FEATURE_EXTRACTION" : "SEQ_CLS"));
    json_object_set_new(cfg, "base_model_name_or_path", json_string(base_model));
    json_object_set_new(cfg, "revision", json_null());
    json_object_set_new(cfg, "inference_mode", json_true());
    if (t->kind != TASK_EMBEDDING) {   /* an embedding model has no head to save */
        json_t *mts = json_array();
        json_array_append_new(mts, json_string("classifier"));
        json_array_append_new(mts, json_string("score"));
        json_object_set_new(cfg, "modules_to_save", mts);
    } else {
        json_object_set_new(cfg, "modules_to_save", json_null());
    }
    if (!strcmp(peft_type(mo), "IA3")) {
        json_t *tm = json_array(), *ff = json_array();
        /* (IA)^3 on k, v and the FFN's inside, whose vector PEFT puts on the down projection's input */
        json_array_append_new(tm, json_string(lora_module_name(f, SITE_ATTN_K)));
        json_array_append_new(tm, json_string(lora_module_name(f, SITE_ATTN_V)));
        json_array_append_new(tm, json_string(lora_module_name(f, SITE_FFN_DOWN)));
        json_array_append_new(ff, json_string(lora_module_name(f, SITE_FFN_DOWN)));
        json_object_set_new(cfg, "target_modules", tm);
        json_object_set_new(cfg, "feedforward_modules", ff);
        json_object_set_new(cfg, "fan_in_fan_out", json_false());
        json_object_set_new(cfg, "init_ia3_weights", json_true());
    }
    if (mo->lora) {
        json_object_set_new(cfg, "r", json_integer(mo->r));
        json_object_set_new(cfg, "lora_alpha", json_real(mo->alpha));
        json_object_set_new(cfg, "lora_dropout", json_real(mo->dropout));
        json_object_set_new(cfg, "use_rslora", json_boolean(mo->rslora));
        json_object_set_new(cfg, "use_dora", json_false());
        json_object_set_new(cfg, "target_modules", target_modules_json(f, mo->targets));
        json_object_set_new(cfg, "bias", json_string("none"));
        json_object_set_new(cfg, "fan_in_fan_out", json_false());
        json_object_set_new(cfg, "init_lora_weights", json_true());
        json_object_set_new(cfg, "layers_to_transform", json_null());
        json_object_set_new(cfg, "rank_pattern", json_object());
        json_object_set_new(cfg, "alpha_pattern", json_object());
    }
    if (mo->adalora) adalora_config_json(cfg, &t->ada, mo, target_modules_json(f, mo->targets));
    json_t *own = json_object();
    json_object_set_new(own, "method", json_string(mo->name));
    json_object_set_new(own, "base", json_string(mo->base == BASE_ALL ? "all" : mo->base == BASE_BIAS ? "bias" : "none"));
    json_object_set_new(own, "train_norms", json_boolean(mo->train_norms));
    json_t *dl = json_array();
    for (int k = 0; k < mo->n_deltas; k++) {
        char spec[256];
        delta_spec_format(&mo->deltas[k], spec, sizeof spec);
        json_array_append_new(dl, json_string(spec));
    }
    json_object_set_new(own, "deltas", dl);
    if (mo->fusion.n > 0) {
        /* the fused adapters travel with the run: copied under adapters/NAME,
         * each named with the checksum it had when the fusion trained */
        json_t *fj = json_object(), *al = json_array();
        for (int k = 0; k < mo->fusion.n; k++) {
            json_t *aj = json_object();
            char hex[32];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)mo->fusion.sums[k]);
            json_object_set_new(aj, "name", json_string(mo->fusion.names[k]));
            json_object_set_new(aj, "checksum", json_string(hex));
            json_array_append_new(al, aj);
            peftc_status crc = copy_adapter(mo->fusion.dirs[k], dir, mo->fusion.names[k], err);
            if (crc) { json_decref(al); json_decref(fj); json_decref(cfg); return crc; }
        }
        json_object_set_new(fj, "adapters", al);
        json_object_set_new(fj, "config", json_string("dynamic"));
        json_object_set_new(fj, "temperature", json_boolean(mo->fusion.temperature));
        json_object_set_new(fj, "T", json_real(t->fu.T));
        json_object_set_new(fj, "regularization", json_real(FUSION_REG));
        json_object_set_new(own, "fusion", fj);
    }
    if (mo->prompt.n_virtual > 0) {
        json_t *pj = json_object();
        char tpl[1024];
        template_format(&mo->prompt, tpl, sizeof tpl);
        json_object_set_new(pj, "num_virtual_tokens", json_integer(mo->prompt.n_virtual));
        json_object_set_new(pj, "before_cls", json_boolean(mo->prompt.before_cls));
        json_object_set_new(pj, "template", json_string(tpl));
        json_object_set_new(own, "prompt", pj); /* saved folded: the encoder's output only */
        json_object_set_new(cfg, "num_virtual_tokens", json_integer(mo->prompt.n_virtual));
        json_object_set_new(cfg, "token_dim", json_integer(t->m->cfg.hidden_size));
        int ptt = !strcmp(peft_type(mo), "PROMPT_TUNING"), ptu = !strcmp(peft_type(mo), "P_TUNING");
        if (ptt || ptu) {   /* PromptTuningConfig's / PromptEncoderConfig's fields, resolved as PEFT saves them */
            json_object_set_new(cfg, "num_transformer_submodules", json_integer(1));
            json_object_set_new(cfg, "num_attention_heads", json_integer(t->m->cfg.num_heads));
            json_object_set_new(cfg, "num_layers", json_integer(t->m->cfg.num_layers));
        }
        if (ptt) {
            json_object_set_new(cfg, "prompt_tuning_init", json_string("RANDOM"));
            json_object_set_new(cfg, "prompt_tuning_init_text", json_null());
            json_object_set_new(cfg, "tokenizer_name_or_path", json_null());
        }
        if (ptu) {   /* the encoder's shape: PEFT builds none in inference mode, the folded prompt is all it reads */
            json_object_set_new(cfg, "encoder_reparameterization_type", json_string(mo->prompt.encoder == PROMPT_ENC_LSTM ? "LSTM" : "MLP"));
            json_object_set_new(cfg, "encoder_hidden_size", json_integer(mo->prompt.hidden));
            json_object_set_new(cfg, "encoder_num_layers", json_integer(2));
            json_object_set_new(cfg, "encoder_dropout", json_real(0.0));
        }
    }
    if (mo->prefix.n > 0) {
        json_t *pj = json_object();
        json_object_set_new(pj, "num_virtual_tokens", json_integer(mo->prefix.n));
        json_object_set_new(pj, "gate", json_boolean(mo->prefix.gate));
        json_object_set_new(own, "prefix", pj); /* saved folded: the key/values only */
        json_object_set_new(cfg, "num_virtual_tokens", json_integer(mo->prefix.n));
        json_object_set_new(cfg, "token_dim", json_integer(t->m->cfg.hidden_size));
        json_object_set_new(cfg, "num_layers", json_integer(t->m->cfg.num_layers));
        json_object_set_new(cfg, "num_attention_heads", json_integer(t->m->cfg.num_heads));
        json_object_set_new(cfg, "prefix_projection", json_false());
    }
    json_object_set_new(own, "max_len", json_integer(t->max_len));
    json_object_set_new(own, "task", json_string(task_kind_name(t->kind)));
    json_t *labels = json_array();
    for (int i = 0; i < t->labels.n; i++) json_array_append_new(labels, json_string(t->labels.names[i]));
    json_object_set_new(own, "labels", labels);
    if (mo->lora) {
        json_t *tg = json_array();
        for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s))
            if (mo->targets & (1u << s)) json_array_append_new(tg, json_string(site_name((site_id)s)));
        json_object_set_new(own, "lora_sites", tg);
    }
    json_object_set_new(cfg, "peftc", own);
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    if (!text) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (!rc) rc = peftc_write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (rc) return rc;

    st_write_item *items = calloc((size_t)t->pb.n + 1, sizeof *items);
    /* AdaLoRA's tensors cut to the rank pattern, as PEFT saves them */
    float *cut = t->ada.on ? malloc(t->pb.total * sizeof(float)) : NULL;
    if (!items || (t->ada.on && !cut)) { free(items); free(cut); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    int ni = 0;
    for (int i = 0; i < t->pb.n; i++) {
        const param_entry *e = &t->pb.e[i];
        if (!strncmp(e->name, "prompt_encoder.", 15)) continue; /* folded below */
        items[ni].name = e->name;
        /* PEFT's prompt-learning models keep the head at base_model.classifier.* */
        if ((!strcmp(peft_type(mo), "PROMPT_TUNING") || !strcmp(peft_type(mo), "P_TUNING")) &&
            !strncmp(e->name, HEAD_PREFIX "classifier.", strlen(HEAD_PREFIX "classifier.")))
            items[ni].name = !strcmp(e->name, HEAD_PREFIX "classifier.weight") ? "base_model.classifier.weight" : "base_model.classifier.bias";
        items[ni].ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) items[ni].shape[d] = e->shape[d];
        items[ni].data = params_value(&t->pb, i);
        if (cut && adalora_compact(&t->ada, &t->pb, i, cut + e->offset, items[ni].shape)) items[ni].data = cut + e->offset;
        ni++;
    }
    if (mo->prefix.n > 0 && mo->prefix.project) {
        prefix_forward((prefix_module *)&t->prefix, &t->pb);
        items[ni] = (st_write_item){"prompt_embeddings", 2, {mo->prefix.n, 2 * (int64_t)t->m->cfg.num_layers * t->m->cfg.hidden_size},
                                    t->prefix.kv};
        ni++;
    }
    if (mo->prompt.n_virtual > 0 && mo->prompt.encoder != PROMPT_ENC_NONE) {
        prompt_forward((prompt_module *)&t->prompt, &t->pb);
        items[ni] = (st_write_item){"prompt_embeddings", 2, {mo->prompt.n_virtual, t->m->cfg.hidden_size}, t->prompt.out};
        ni++;
    }
    if (!(rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err)))
        rc = st_write_f32(path, items, ni, NULL, err);
    free(items);
    free(cut);
    return rc;
}

/* An integer field of a config from elsewhere: absent -> def; present, it
 * must be an integer in [lo, hi] (not cast: "r": 4294967304 would become 8). */
static peftc_status cfg_int(json_t *obj, const char *key, long long lo, long long hi, int def, int *out,
                            const char *path, peftc_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) { *out = def; return PEFTC_OK; }
    if (!json_is_integer(v))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" must be an integer in [%lld, %lld]", path, key, lo, hi);
    long long x = (long long)json_integer_value(v);
    if (x < lo || x > hi)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" is %lld, outside [%lld, %lld]", path, key, x, lo, hi);
    *out = (int)x;
    return PEFTC_OK;
}

/* A real field: finite and in [lo, hi) (NaN fails every comparison, so it is tested first). */
static peftc_status cfg_real(json_t *obj, const char *key, double lo, double hi, float *out, const char *path, peftc_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return PEFTC_OK;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= lo && x < hi))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" must be a number in [%g, %g)", path, key, lo, hi);
    *out = (float)x;
    return PEFTC_OK;
}

/* An AdaLoraConfig (PEFT's or peftc's): the SVD deltas at init_r's scale,
 * each module at its rank_pattern's kept rank (the saved tensors' rows). */
static peftc_status adalora_read_config(json_t *cfg, method_opts *mo, const char *path, peftc_error *err)
{
    json_t *v, *tm = json_object_get(cfg, "target_modules"), *rp = json_object_get(cfg, "rank_pattern");
    mo->adalora = 1;
    peftc_status rc;
    if ((rc = cfg_int(cfg, "init_r", 1, 1 << 16, 12, &mo->ada.init_r, path, err)) ||
        (rc = cfg_int(cfg, "target_r", 1, 1 << 16, 8, &mo->ada.target_r, path, err)))
        return rc;
    mo->r = mo->ada.init_r;
    mo->alpha = 8.0f;
    if ((rc = cfg_real(cfg, "lora_alpha", -1e6, 1e6, &mo->alpha, path, err)) ||
        (rc = cfg_real(cfg, "lora_dropout", 0, 1, &mo->dropout, path, err)))
        return rc;
    /* scaling = lora_alpha if lora_alpha > 0 else r (SVDLinear.update_layer) */
    if (!(mo->alpha > 0)) mo->alpha = (float)mo->r;
    if (mo->r <= 0 || mo->r > 1 << 16) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: init_r %d out of range", path, mo->r);
    size_t i;
    json_t *e;
    unsigned mask = 0;
    if (json_is_array(tm)) {
        json_array_foreach(tm, i, e) {
            unsigned one;
            if (json_is_string(e) && !lora_parse_targets(json_string_value(e), &one, NULL)) mask |= one;
        }
    }
    if (json_is_object(rp)) {   /* the modules are the pattern's keys; each keeps its true entries */
        const char *key;
        mo->ada_ranks = 1;
        mask = 0;
        json_object_foreach(rp, key, v) {
            int layer;
            site_id site;
            if (!adalora_key_site(key, &layer, &site) || !json_is_array(v) || json_array_size(v) != (size_t)mo->r)
                return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: rank_pattern entry '%s' is not a known module with %d flags",
                                  path, key, mo->r);
            int kept = 0;
            json_array_foreach(v, i, e) kept += json_is_true(e);
            mo->ada_rank[layer][site] = (unsigned short)kept;
            mask |= 1u << site;
        }
    }
    mo->targets = mask;
    if (!mask) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: cannot tell the AdaLoRA target modules", path);
    return PEFTC_OK;
}

/* peftc.fusion of a fusion run: the adapters' names and checksums, the
 * temperature (adapter_read_config places them under RUN/adapters/NAME; the
 * in-memory parse knows no directory). */
static peftc_status fusion_read_config(json_t *fj, fusion_spec *fs, const char *path, peftc_error *err)
{
    json_t *al = json_object_get(fj, "adapters"), *e;
    if (!json_is_object(fj) || !json_is_array(al)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.fusion.adapters is not a list", path);
    if (json_array_size(al) < 2 || json_array_size(al) > FUSION_MAX)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.fusion names %zu adapters (2 to %d)", path, json_array_size(al), FUSION_MAX);
    size_t i;
    json_array_foreach(al, i, e) {
        const char *nm = json_string_value(json_object_get(e, "name")), *cs = json_string_value(json_object_get(e, "checksum"));
        if (!nm || !*nm || strlen(nm) >= FUSION_NAME_MAX || strchr(nm, '/') || !strcmp(nm, "..") || !strcmp(nm, "."))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.fusion.adapters[%zu]: a bad name", path, i);
        char *end = NULL;
        unsigned long long v = cs ? strtoull(cs, &end, 16) : 0;
        if (!cs || !*cs || *end || !v) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.fusion.adapters[%zu]: a bad checksum", path, i);
        snprintf(fs->names[fs->n], FUSION_NAME_MAX, "%s", nm);
        fs->dirs[fs->n][0] = 0;
        fs->sums[fs->n] = v;
        fs->n++;
    }
    fs->temperature = json_is_true(json_object_get(fj, "temperature"));
    json_t *tv = json_object_get(fj, "T");
    fs->T = json_is_number(tv) ? (float)json_number_value(tv) : 1.0f;
    if (!(fs->T >= 1.0f && fs->T <= FUSION_T0)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.fusion.T must be in [1, 50]", path);
    return PEFTC_OK;
}

peftc_status adapter_read_config(const char *dir, method_opts *mo, label_set *labels, int *max_len, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (rc) return rc;
    struct stat sb;
    if (stat(path, &sb) != 0) return peftc_fail(err, PEFTC_ERR_IO, "%s: not found (is %s an adapter directory?)", path, dir);
    char *text;
    size_t len;
    if ((rc = peftc_read_file(path, &text, &len, err))) return rc;
    rc = adapter_parse_config(text, len, path, mo, labels, max_len, err);
    free(text);
    if (!rc && mo->ahub) rc = ahub_read_labels(dir, labels, err);   /* AdapterHub keeps them with its head */
    for (int k = 0; !rc && k < mo->fusion.n; k++) {   /* a fusion run holds its adapters */
        char sub[4096];
        if ((rc = peftc_path_join(sub, sizeof sub, dir, "adapters", err))) break;
        char nm[FUSION_NAME_MAX];   /* a copy: the name and the path are both in *mo (-Wrestrict) */
        memcpy(nm, mo->fusion.names[k], sizeof nm);
        if ((size_t)snprintf(mo->fusion.dirs[k], FUSION_DIR_MAX, "%s/%s", sub, nm) >= FUSION_DIR_MAX)
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: the adapters' path is too long", path);
    }
    if (rc) labels_free(labels);
    return rc;
}

peftc_status adapter_parse_config(const char *text, size_t len, const char *path, method_opts *mo, label_set *labels,
                                  int *max_len, peftc_error *err)
{
    memset(labels, 0, sizeof *labels);
    memset(mo, 0, sizeof *mo);
    json_error_t je;
    json_t *cfg = json_loadb(text, len, 0, &je);
    if (!cfg) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not valid JSON at line %d: %s", path, je.line, je.text);
    json_t *own = json_object_get(cfg, "peftc");
    json_t *pt = json_object_get(cfg, "peft_type");
    const char *type = json_is_string(pt) ? json_string_value(pt) : "";
    json_t *v;
    peftc_status rc2 = PEFTC_OK;
    if (json_is_object(own)) {
        if (json_is_string(v = json_object_get(own, "method"))) snprintf(mo->name, sizeof mo->name, "%s", json_string_value(v));
        /* hand-written configs may name only the method: full and bitfit imply their base */
        const char *base = json_is_string(v = json_object_get(own, "base")) ? json_string_value(v)
                         : !strcmp(mo->name, "full") ? "all" : !strcmp(mo->name, "bitfit") ? "bias" : "none";
        mo->base = !strcmp(base, "all") ? BASE_ALL : !strcmp(base, "bias") ? BASE_BIAS : BASE_NONE;
        mo->train_norms = json_is_true(json_object_get(own, "train_norms"));
        json_t *pj = json_object_get(own, "prompt");
        if (json_is_object(pj)) {
            json_t *tp = json_object_get(pj, "template"), *nv = json_object_get(pj, "num_virtual_tokens");
            mo->prompt.before_cls = json_is_true(json_object_get(pj, "before_cls"));
            mo->prompt.encoder = PROMPT_ENC_NONE;
            (void)nv;
            if (mo->prompt.before_cls) rc2 = cfg_int(pj, "num_virtual_tokens", 1, 4096, 0, &mo->prompt.n_virtual, path, err);
            else {
                peftc_error e2 = {0};
                if (!json_is_string(tp) || template_parse(json_string_value(tp), &mo->prompt, &e2))
                    rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: bad peftc.prompt.template %s", path, e2.msg);
            }
            if (!rc2 && (mo->prompt.n_virtual <= 0 || mo->prompt.n_virtual > 4096))
                rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: bad num_virtual_tokens", path);
        }
        json_t *xj = json_object_get(own, "prefix");
        if (json_is_object(xj)) {
            json_t *nv = json_object_get(xj, "num_virtual_tokens");
            (void)nv;
            if ((rc2 = cfg_int(xj, "num_virtual_tokens", 1, 4096, 0, &mo->prefix.n, path, err))) goto done;
            mo->prefix.gate = json_is_true(json_object_get(xj, "gate"));
            if (mo->prefix.n <= 0 || mo->prefix.n > 4096) rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: bad prefix length", path);
        }
        json_t *fj = json_object_get(own, "fusion");
        if (!rc2 && fj) rc2 = fusion_read_config(fj, &mo->fusion, path, err);
        json_t *dl = json_object_get(own, "deltas"), *e;
        size_t i;
        if (json_is_array(dl)) {
            if (json_array_size(dl) > METHOD_MAX_DELTAS) rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: too many deltas", path);
            json_array_foreach(dl, i, e) {
                if (rc2) break;
                if (!json_is_string(e)) { rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.deltas holds a non-string", path); break; }
                peftc_error e2 = {0};
                if (delta_spec_parse(json_string_value(e), &mo->deltas[mo->n_deltas++], &e2))
                    rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s", path, e2.msg);
            }
        }
    } else if (ahub_config_is(cfg)) {
        rc2 = ahub_parse_config(cfg, path, mo, err);
    } else if (!strcmp(type, "IA3")) {
        snprintf(mo->name, sizeof mo->name, "ia3");
        site_id sites[3] = {SITE_ATTN_K, SITE_ATTN_V, SITE_FFN_ACT};
        for (int i = 0; i < 3; i++) mo->deltas[mo->n_deltas++] = (delta_spec){.kind = DELTA_SCALE, .site = sites[i]};
    } else if (!strcmp(type, "LORA")) {
        snprintf(mo->name, sizeof mo->name, "lora");
    } else if (!strcmp(type, "PROMPT_TUNING") || !strcmp(type, "P_TUNING")) {
        /* as PEFT runs them: the virtual tokens before the whole input; PEFT
         * saves P-tuning's encoder output (prompt_embeddings), used as is */
        snprintf(mo->name, sizeof mo->name, "%s", strcmp(type, "P_TUNING") ? "prompt" : "ptuning");
        json_t *nv = json_object_get(cfg, "num_virtual_tokens");
        (void)nv;
        rc2 = cfg_int(cfg, "num_virtual_tokens", 1, 4096, 0, &mo->prompt.n_virtual, path, err);
        mo->prompt.before_cls = 1;
        mo->prompt.encoder = PROMPT_ENC_NONE;
        if (rc2) {}
        else if (mo->prompt.n_virtual <= 0 || mo->prompt.n_virtual > 4096)
            rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: num_virtual_tokens must be in [1, 4096]", path);
        else if (json_is_integer(v = json_object_get(cfg, "num_transformer_submodules")) && json_integer_value(v) != 1)
            rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: num_transformer_submodules %lld: encoder-decoder prompts do not apply to this model",
                             path, (long long)json_integer_value(v));
    } else if (!strcmp(type, "ADALORA")) {
        snprintf(mo->name, sizeof mo->name, "adalora");
    } else {
        rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: peft_type \"%s\" is not supported", path, type);
    }
    if (!rc2 && !strcmp(type, "ADALORA")) rc2 = adalora_read_config(cfg, mo, path, err);
    if (!rc2 && (!strcmp(type, "LORA") || json_is_array(json_object_get(own, "lora_sites")))) {
        mo->lora = 1;
        mo->r = 8;
        mo->alpha = 8;
        if (!rc2) rc2 = cfg_int(cfg, "r", 1, 1 << 16, 8, &mo->r, path, err);
        if (!rc2) rc2 = cfg_real(cfg, "lora_alpha", -1e6, 1e6, &mo->alpha, path, err);
        if (!rc2) rc2 = cfg_real(cfg, "lora_dropout", 0, 1, &mo->dropout, path, err);
        if (json_is_boolean(v = json_object_get(cfg, "use_rslora"))) mo->rslora = json_is_true(v);
        /* one r and alpha for every module here: a per-module pattern would be applied wrongly, not at all */
        json_t *rp = json_object_get(cfg, "rank_pattern"), *ap = json_object_get(cfg, "alpha_pattern");
        if (strcmp(type, "ADALORA") && ((json_is_object(rp) && json_object_size(rp)) || (json_is_object(ap) && json_object_size(ap))))
            rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: rank_pattern / alpha_pattern (per-module r or alpha) are not supported for encoders", path);
        else if (json_is_true(json_object_get(cfg, "use_dora")))
            rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: use_dora: DoRA adapters are not supported", path);
        else if (json_is_true(json_object_get(cfg, "lora_bias")))
            rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: lora_bias: a LoRA with a bias on B is not supported", path);
        json_t *sites = json_object_get(own, "lora_sites"), *tm = json_object_get(cfg, "target_modules");
        unsigned mask = 0;
        size_t i;
        json_t *e;
        if (json_is_array(sites)) {
            json_array_foreach(sites, i, e) {
                site_id st;
                if (json_is_string(e) && site_parse(json_string_value(e), &st)) mask |= 1u << st;
            }
        } else if (json_is_array(tm)) {
            json_array_foreach(tm, i, e) {
                unsigned one;
                if (json_is_string(e) && !lora_parse_targets(json_string_value(e), &one, NULL)) mask |= one;
            }
        }
        mo->targets = mask;
        if (!rc2 && !mask) rc2 = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: cannot tell the LoRA target modules", path);
        else if (!rc2 && mo->r <= 0) rc2 = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: r must be positive", path);
    }
done:
    if (!rc2 && json_is_object(own)) rc2 = cfg_int(own, "max_len", 0, 1 << 20, 0, max_len, path, err);
    else if (!rc2) *max_len = 0;
    if (rc2) { json_decref(cfg); return rc2; }
    json_t *ls = json_object_get(own, "labels");
    if (json_is_array(ls) && json_array_size(ls) >= 1 && json_array_size(ls) <= 100000) {   /* regression: one */
        labels->n = (int)json_array_size(ls);
        labels->names = calloc((size_t)labels->n, sizeof(char *));
        for (int i = 0; i < labels->n; i++) {
            json_t *e = json_array_get(ls, (size_t)i);
            labels->names[i] = strdup(json_is_string(e) ? json_string_value(e) : "?");
        }
    }
    json_decref(cfg);
    return PEFTC_OK;
}

peftc_status adapter_read_task(const char *dir, task_kind *kind, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (rc) return rc;
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg) {
        if (!peftc_file_exists(path)) return peftc_fail(err, PEFTC_ERR_IO, "%s: not found (is %s an adapter directory?)", path, dir);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not valid JSON at line %d: %s", path, je.line, je.text);
    }
    json_t *own = json_object_get(cfg, "peftc"), *v = json_object_get(own, "task"), *tt = json_object_get(cfg, "task_type");
    *kind = TASK_SEQ_CLS;
    if (json_is_string(v)) {
        if (!task_kind_parse(json_string_value(v), kind))
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: peftc.task '%s' is not seq-cls, token-cls, regression, multi-label or embedding", path, json_string_value(v));
    } else if (json_is_string(tt)) {
        const char *s = json_string_value(tt);
        if (!strcmp(s, "TOKEN_CLS")) *kind = TASK_TOKEN_CLS;
        else if (!strcmp(s, "FEATURE_EXTRACTION")) *kind = TASK_EMBEDDING;
        else if (strcmp(s, "SEQ_CLS"))
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: task_type %s: an encoder adapter here is SEQ_CLS, TOKEN_CLS or FEATURE_EXTRACTION", path, s);
    }
    json_decref(cfg);
    return rc;
}

/* The name PEFT's prompt-learning models give a head parameter
 * ("base_model.classifier.weight" for "base_model.model.classifier.weight"). */
static int head_alias(const char *name, char *out, size_t cap)
{
    size_t hl = strlen(HEAD_PREFIX);
    if (strncmp(name, HEAD_PREFIX "classifier.", hl + 11)) return 0;
    return snprintf(out, cap, "base_model.%s", name + hl) < (int)cap;
}

peftc_status task_load_weights(task *t, const char *dir, peftc_error *err)
{
    char path[4096];
    if (t->mo.ahub) return ahub_load_weights(t, dir, err);
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err);
    if (rc) return rc;
    peftc_safetensors *st;
    if ((rc = peftc_safetensors_open(path, &st, err))) return rc;
    for (int i = 0; i < t->pb.n && !rc; i++) {
        const param_entry *e = &t->pb.e[i];
        const st_tensor *x = st_find(st, e->name);
        char alias[256];
        if (!x && head_alias(e->name, alias, sizeof alias)) x = st_find(st, alias);
        if (!x) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is missing (adapter of another method or model?)", path, e->name); break; }
        int ok = x->ndim == e->ndim;
        for (int d = 0; ok && d < e->ndim; d++) ok = x->shape[d] == e->shape[d];
        if (!ok) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has a shape that does not fit this model (maybe wrong base model?)", path, e->name); break; }
        rc = st_to_f32(st, x, params_value(&t->pb, i), err);
    }
    /* every tensor must be used: one the method does not apply (PEFT's
     * default (IA)^3 also matching attention.output.dense, say) would
     * otherwise be dropped silently and the model would be another one */
    for (int i = 0; i < st->n && !rc; i++) {
        int used = st->t[i].numel == 0;   /* an empty tensor (an AdaLoRA module pruned to rank 0) changes nothing */
        char alias[256];
        for (int k = 0; k < t->pb.n && !used; k++)
            used = !strcmp(t->pb.e[k].name, st->t[i].name) ||
                   (head_alias(t->pb.e[k].name, alias, sizeof alias) && !strcmp(alias, st->t[i].name));
        if (!used)
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not a parameter of method %s on this model (an adapter of another method, targets or model?)",
                            path, st->t[i].name, t->mo.name);
    }
    peftc_safetensors_free(st);
    return rc;
}
