/* multi.c: several named adapters on one frozen base model, combined by a
 * composition (peft/compose.h), for prediction. Each adapter is a task of
 * its own (parameters, deltas, head) bound to the same peftc_model; the
 * forward runs once over the shared weights with a composed delta_set. */
#include "train/eval.h"
#include "peft/compose.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct peftc_multi {
    peftc_model *m;
    peftc_tokenizer *tok;
    int n;
    char **names;
    task *t;
    int max_len;
    encoder_ctx enc;
    compose_tree tree;
    compose_adapter ad[COMPOSE_MAX_ADAPTERS];
    compose_ctx cc;
    delta_set comp_ds;        /* no deltas: comp = &cc */
    model_acts *acts;
    int B;                    /* examples per forward before replication */
    int cap_rows_B, cap_T;    /* capacity of the buffers (replicated examples, tokens) */
    int n_out;
    char out_names[COMPOSE_MAX_CHILD][128];
    int max_K;
    float *lg_scratch;        /* head logits: (avg_depth + 1) levels of cap_rows_B * max_K */
    int *head_of;             /* per replicated example: the adapter whose labels name its output */
    float *logits;            /* (cap_rows_B, max_K) */
    int routed;
};

void peftc_multi_free(peftc_multi *mc)
{
    if (!mc) return;
    for (int i = 0; i < mc->n; i++) {
        free(mc->names[i]);
        mc->t[i].m = NULL;   /* the shared model's buffers are not the task's */
        task_free(&mc->t[i]);
    }
    free(mc->names);
    free(mc->t);
    if (mc->m && mc->acts) mc->m->family->acts_free(mc->acts);
    compose_ctx_free(&mc->cc);
    encoder_free(&mc->enc);
    free(mc->lg_scratch);
    free(mc->head_of);
    free(mc->logits);
    peftc_tokenizer_free(mc->tok);
    peftc_model_free(mc->m);
    free(mc);
}

peftc_status peftc_multi_load(const char *model_dir, const char *const *names, const char *const *dirs, int n,
                              peftc_multi **out, peftc_error *err)
{
    *out = NULL;
    if (n < 1) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapter: at least one adapter is needed");
    if (n > COMPOSE_MAX_ADAPTERS) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapter: at most %d adapters", COMPOSE_MAX_ADAPTERS);
    peftc_multi *mc = calloc(1, sizeof *mc);
    if (!mc) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    mc->names = calloc((size_t)n, sizeof *mc->names);
    mc->t = calloc((size_t)n, sizeof *mc->t);
    peftc_status rc = PEFTC_OK;
    label_set labels = {0};
    char *base0 = NULL, *base_i = NULL;
    if (!mc->names || !mc->t) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto fail; }
    for (int i = 0; i < n; i++) {
        char def[16];
        snprintf(def, sizeof def, "%d", i);
        const char *nm = names && names[i] && *names[i] ? names[i] : def;
        for (int j = 0; j < i; j++)
            if (!strcmp(mc->names[j], nm)) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "--adapter %s=%s: the name '%s' is given twice", nm, dirs[i], nm); goto fail; }
        if (!(mc->names[i] = strdup(nm))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto fail; }
    }
    peftc_base_quant quant = 0;
    for (int i = 0; i < n; i++) {
        method_opts mo;
        int max_len = 0;
        peftc_rng rng;
        peftc_rng_seed(&rng, 0);
        labels_free(&labels);
        if ((rc = adapter_read_config(dirs[i], &mo, &labels, &max_len, err))) goto fail;
        /* adapters that change the base (its weights, norms) or the input
         * sequence (virtual tokens, prefixes) cannot share one forward */
        if (mo.base != BASE_NONE || mo.train_norms || mo.prompt.n_virtual > 0 || mo.prefix.n > 0) {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: method %s changes the base model or its input; only delta methods "
                            "(LoRA, AdaLoRA, (IA)^3, bottleneck adapters) share one base", dirs[i], mo.name);
            goto fail;
        }
        free(base_i);
        base_i = adapter_base_name(dirs[i]);
        if (i == 0) {
            quant = method_base_quant(mo.name);
            if ((rc = peftc_model_load_quantized(model_dir, quant, &mc->m, err)) ||
                (rc = peftc_tokenizer_load(model_dir, &mc->tok, err)))
                goto fail;
            base0 = base_i;
            base_i = NULL;
        } else {
            if (method_base_quant(mo.name) != quant) {
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: method %s needs a differently stored base (NF4 or not) than %s",
                                dirs[i], mo.name, dirs[0]);
                goto fail;
            }
            if (base0 && base_i && strcmp(base0, base_i)) {
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: trained on base model '%s', %s on '%s'", dirs[i], base_i, dirs[0], base0);
                goto fail;
            }
        }
        if (labels.n == 0 && (rc = classifier_default_labels(model_dir, dirs[i], &labels, err))) goto fail;
        if (max_len <= 0 || max_len > mc->m->cfg.max_position) max_len = mc->m->cfg.max_seq_len;
        if (max_len > mc->max_len) mc->max_len = max_len;
        if ((rc = task_init(&mc->t[i], mc->m, mc->tok, &mo, &labels, max_len, &rng, err)) ||
            (rc = task_load_weights(&mc->t[i], dirs[i], err)))
            goto fail;
        mc->n = i + 1;
        mc->ad[i].ds = &mc->t[i].ds;
        mc->ad[i].pb = &mc->t[i].pb;
        if (labels.n > mc->max_K) mc->max_K = labels.n;
    }
    for (int i = 0; i < n; i++) mc->t[i].max_len = mc->max_len;
    prompt_spec none = {0};
    if ((rc = encoder_init(&mc->enc, mc->tok, &none, mc->max_len, err))) goto fail;
    mc->B = 32;
    mc->cc.ad = mc->ad;
    mc->cc.n_ad = mc->n;
    mc->comp_ds.comp = &mc->cc;
    if ((rc = peftc_multi_compose(mc, mc->names[0], err))) goto fail;
    labels_free(&labels);
    free(base0);
    free(base_i);
    *out = mc;
    return PEFTC_OK;
fail:
    labels_free(&labels);
    free(base0);
    free(base_i);
    if (mc->names) for (int i = mc->n; i < n; i++) free(mc->names[i]);
    if (mc->t && mc->n < n) { mc->t[mc->n].m = NULL; task_free(&mc->t[mc->n]); }
    peftc_multi_free(mc);
    return rc;
}

/* The batch size a tree demands: every batchsplit covers the same number of
 * examples (0: no batchsplit); -1 if two disagree. */
static int batchsplit_size(const compose_tree *t)
{
    int s = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        const compose_node *nd = &t->node[i];
        if (nd->kind != CN_BATCHSPLIT) continue;
        int sum = 0;
        for (int k = 0; k < nd->n; k++) sum += nd->size[k];
        if (s && s != sum) return -1;
        s = sum;
    }
    return s;
}

static void node_text(const peftc_multi *mc, const compose_tree *t, int id, char *out, size_t cap)
{
    const compose_node *nd = &t->node[id];
    if (nd->kind == CN_ADAPTER) { snprintf(out, cap, "%s", mc->names[nd->adapter]); return; }
    static const char *kw[] = {"", "stack", "average", "batchsplit", "split", "parallel", "route"};
    size_t len = (size_t)snprintf(out, cap, "%s(", kw[nd->kind]);
    for (int k = 0; k < nd->n && len < cap; k++) {
        if (k) len += (size_t)snprintf(out + len, cap - len, ",");
        if (len >= cap) break;
        node_text(mc, t, nd->child[k], out + len, cap - len);
        len = strlen(out);
    }
    if (len < cap) snprintf(out + len, cap - len, ")");
}

static peftc_status set_tree(peftc_multi *mc, const compose_tree *t, peftc_error *err)
{
    int bs = batchsplit_size(t);
    if (bs < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--compose: every batchsplit must cover the same number of examples");
    if (bs > 4096) return peftc_fail(err, PEFTC_ERR_INPUT, "--compose: batchsplit over %d examples (at most 4096)", bs);
    mc->tree = *t;
    mc->cc.tree = &mc->tree;
    mc->B = bs ? bs : 32;
    const compose_node *root = &mc->tree.node[mc->tree.root];
    mc->n_out = root->kind == CN_PARALLEL ? root->n : 1;
    for (int o = 0; o < mc->n_out; o++)
        node_text(mc, &mc->tree, root->kind == CN_PARALLEL ? root->child[o] : mc->tree.root, mc->out_names[o],
                  sizeof mc->out_names[o]);
    mc->cap_rows_B = mc->cap_T = 0;   /* buffers are re-made for the new tree */
    return PEFTC_OK;
}

peftc_status peftc_multi_compose(peftc_multi *mc, const char *spec, peftc_error *err)
{
    compose_tree t;
    peftc_status rc = compose_parse(spec, (const char *const *)mc->names, mc->n, &t, err);
    if (rc) return rc;
    mc->routed = 0;
    return set_tree(mc, &t, err);
}

peftc_status peftc_multi_route(peftc_multi *mc, peftc_error *err)
{
    compose_tree t;
    compose_single(&t, -1);
    mc->routed = 1;
    return set_tree(mc, &t, err);
}

peftc_status peftc_multi_drop_layers(peftc_multi *mc, int n, peftc_error *err)
{
    int L = mc->m->cfg.num_layers;
    if (n < 0 || n > L) return peftc_fail(err, PEFTC_ERR_INPUT, "--drop-layers %d: the model has %d layers (0..%d)", n, L, L);
    mc->cc.drop_layers = n;
    return PEFTC_OK;
}

int peftc_multi_find(const peftc_multi *mc, const char *name)
{
    for (int i = 0; i < mc->n; i++) if (!strcmp(mc->names[i], name)) return i;
    return -1;
}
int peftc_multi_count(const peftc_multi *mc) { return mc->n; }
const char *peftc_multi_name(const peftc_multi *mc, int i) { return i >= 0 && i < mc->n ? mc->names[i] : NULL; }
int peftc_multi_outputs(const peftc_multi *mc) { return mc->n_out; }
const char *peftc_multi_output_name(const peftc_multi *mc, int o) { return o >= 0 && o < mc->n_out ? mc->out_names[o] : NULL; }
int peftc_multi_max_labels(const peftc_multi *mc) { return mc->max_K; }
int peftc_multi_layers(const peftc_multi *mc) { return mc->m->cfg.num_layers; }
int64_t peftc_multi_rows_applied(const peftc_multi *mc, int layer)
{
    return mc->cc.rows_applied && layer >= 0 && layer < mc->cc.n_layers ? mc->cc.rows_applied[layer] : 0;
}

/* Buffers for rows_B replicated examples of T tokens. */
static peftc_status ensure(peftc_multi *mc, int rows_B, int T, peftc_error *err)
{
    if (rows_B <= mc->cap_rows_B && T <= mc->cap_T) return PEFTC_OK;
    if (rows_B < mc->cap_rows_B) rows_B = mc->cap_rows_B;
    if (T < mc->cap_T) T = mc->cap_T;
    const model_family *f = mc->m->family;
    peftc_status rc;
    unsigned keep = f->keep_for(mc->m, &mc->comp_ds, NULL, 0);
    if ((rc = model_acts_init(mc->m, &mc->acts, rows_B, T, 0, 0, keep, err))) return rc;
    size_t maxw = 1;
    for (int i = 0; i < mc->n; i++) {
        if (mc->t[i].ds.n && (rc = delta_acts_alloc(&mc->t[i].ds, rows_B * T, err))) return rc;
        if ((rc = cls_head_alloc(&mc->t[i].head, mc->m->cfg.hidden_size, mc->t[i].labels.n, rows_B, err))) return rc;
        if (mc->t[i].ds.maxw > maxw) maxw = mc->t[i].ds.maxw;
    }
    if ((rc = compose_ctx_alloc(&mc->cc, (size_t)rows_B * T, maxw, mc->m->cfg.num_layers, err))) return rc;
    free(mc->lg_scratch); free(mc->head_of); free(mc->logits);
    size_t lg = (size_t)rows_B * (mc->max_K > 0 ? mc->max_K : 1);
    mc->lg_scratch = malloc((size_t)(mc->tree.avg_depth + 1) * lg * sizeof(float));
    mc->head_of = malloc((size_t)rows_B * sizeof(int));
    mc->logits = malloc(lg * sizeof(float));
    if (!mc->lg_scratch || !mc->head_of || !mc->logits) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    mc->cap_rows_B = rows_B;
    mc->cap_T = T;
    return PEFTC_OK;
}

/* The head's logits of node id for examples [ex0, ex0 + nex) into lg (nex,
 * max_K), and which adapter's labels name each (head_of). The head of a
 * stack or split is its last child's; an average's is the weighted average
 * of its children's logits; a batchsplit's part is its child's. */
static peftc_status head_logits(peftc_multi *mc, int id, const float *hidden, int T, int ex0, int nex, float *lg,
                                int lvl, const int *route, peftc_error *err)
{
    const compose_node *nd = &mc->tree.node[id];
    int C = mc->m->cfg.hidden_size, K = mc->max_K;
    switch (nd->kind) {
    case CN_ADAPTER: {
        task *t = &mc->t[nd->adapter];
        cls_head_forward(&t->head, hidden + (size_t)ex0 * T * C, nex, T, 0.0f, 0, NULL, 0);
        for (int e = 0; e < nex; e++) {
            memcpy(lg + (size_t)e * K, t->head.logits + (size_t)e * t->labels.n, (size_t)t->labels.n * sizeof(float));
            mc->head_of[ex0 + e] = nd->adapter;
        }
        return PEFTC_OK;
    }
    case CN_STACK:
    case CN_SPLIT:
        return head_logits(mc, nd->child[nd->n - 1], hidden, T, ex0, nex, lg, lvl, route, err);
    case CN_AVERAGE: {
        float *tmp = mc->lg_scratch + (size_t)(lvl + 1) * mc->cap_rows_B * K;
        memset(lg, 0, (size_t)nex * K * sizeof(float));
        int K0 = -1;
        for (int k = 0; k < nd->n; k++) {
            peftc_status rc = head_logits(mc, nd->child[k], hidden, T, ex0, nex, tmp, lvl + 1, route, err);
            if (rc) return rc;
            int Kk = mc->t[mc->head_of[ex0]].labels.n;
            if (K0 >= 0 && Kk != K0)
                return peftc_fail(err, PEFTC_ERR_INPUT, "--compose average(...): its heads have %d and %d labels", K0, Kk);
            if (K0 < 0) K0 = Kk;
            for (size_t i = 0; i < (size_t)nex * K; i++) lg[i] += nd->weight[k] * tmp[i];
        }
        /* the first child's labels name the averaged output */
        peftc_status rc = head_logits(mc, nd->child[0], hidden, T, ex0, nex, tmp, lvl + 1, route, err);
        if (rc) return rc;
        return PEFTC_OK;
    }
    case CN_BATCHSPLIT:
    case CN_PARALLEL: {
        int off = 0;
        for (int k = 0; k < nd->n && off < nex; k++) {
            int sz = nd->kind == CN_PARALLEL ? nex / nd->n : nd->size[k];
            if (sz > nex - off) sz = nex - off;
            peftc_status rc = head_logits(mc, nd->child[k], hidden, T, ex0 + off, sz, lg + (size_t)off * K, lvl, route, err);
            if (rc) return rc;
            off += sz;
        }
        return PEFTC_OK;
    }
    case CN_ROUTE:
        /* each adapter's head over the whole batch, its rows kept: the
         * head's matrix products see the same batch shape as a run of that
         * adapter alone, so a mixed batch matches those runs bit for bit */
        for (int r = 0; r < mc->n; r++) {
            int any = 0;
            for (int e = 0; e < nex && !any; e++) any = route[ex0 + e] == r;
            if (!any) continue;
            task *t = &mc->t[r];
            cls_head_forward(&t->head, hidden + (size_t)ex0 * T * C, nex, T, 0.0f, 0, NULL, 0);
            for (int e = 0; e < nex; e++) {
                if (route[ex0 + e] != r) continue;
                memcpy(lg + (size_t)e * K, t->head.logits + (size_t)e * t->labels.n, (size_t)t->labels.n * sizeof(float));
                mc->head_of[ex0 + e] = r;
            }
        }
        return PEFTC_OK;
    }
    return PEFTC_OK;
}

peftc_status peftc_multi_predict(peftc_multi *mc, const char *const *texts, const char *const *pairs, int n,
                                 const int *route, const char **labels, float *probs, int *n_probs,
                                 peftc_error *err)
{
    if (mc->routed && !route) return peftc_fail(err, PEFTC_ERR_INPUT, "a mixed batch needs an adapter per example");
    if (route)
        for (int i = 0; i < n; i++)
            if (route[i] < 0 || route[i] >= mc->n) return peftc_fail(err, PEFTC_ERR_INPUT, "example %d: no such adapter (%d)", i + 1, route[i]);
    int bs = batchsplit_size(&mc->tree);
    if (bs > 0 && n % bs)
        return peftc_fail(err, PEFTC_ERR_INPUT, "--compose batchsplit covers %d examples per batch; %d inputs are not a multiple of it", bs, n);
    int L = mc->max_len, R = mc->n_out, K = mc->max_K, C = mc->m->cfg.hidden_size;
    int capB = mc->B * R;
    int32_t *ids = malloc((size_t)capB * L * sizeof *ids), *tts = malloc((size_t)capB * L * sizeof *tts);
    int *lens = malloc((size_t)capB * sizeof *lens);
    int32_t *one = malloc((size_t)L * sizeof *one), *one_t = malloc((size_t)L * sizeof *one_t);
    peftc_status rc = PEFTC_OK;
    if (!ids || !tts || !lens || !one || !one_t) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    for (int s = 0; s < n && !rc; s += mc->B) {
        int B = n - s < mc->B ? n - s : mc->B, T = 1;
        if ((rc = encoder_encode_batch(&mc->enc, texts + s, pairs ? pairs + s : NULL, B, L, ids, tts, lens, one, one_t, &T, err)))
            goto out;
        /* parallel: the batch once per output, copy o through child o. With
         * the lowest layers dropped the family copies the rows only where the
         * first adapters act: the layers below run once for every output */
        int NL = mc->m->cfg.num_layers, rep_at = mc->cc.drop_layers < NL ? mc->cc.drop_layers : NL - 1;
        int share = R > 1 && rep_at >= 1 && mc->m->family->can_replicate && !getenv("PEFTC_NO_SHARED_DROP");
        for (int o = 1; o < R; o++) {
            if (!share) {
                memcpy(ids + (size_t)o * B * T, ids, (size_t)B * T * sizeof *ids);
                memcpy(tts + (size_t)o * B * T, tts, (size_t)B * T * sizeof *tts);
            }
            memcpy(lens + (size_t)o * B, lens, (size_t)B * sizeof *lens);
        }
        int BR = B * R;
        if ((rc = ensure(mc, capB, T, err))) goto out;
        mc->cc.T = T;
        mc->cc.B = BR;
        mc->cc.route = route ? route + s : NULL;
        model_run run = {.train = 0, .deltas = &mc->comp_ds, .rep = share ? R : 0, .rep_at = rep_at};
        mc->m->family->forward(mc->m, mc->acts, &run, ids, tts, lens, share ? B : BR, T);
        const float *hidden = mc->m->family->hidden(mc->m, mc->acts);
        if ((rc = head_logits(mc, mc->tree.root, hidden, T, 0, BR, mc->logits, 0, route ? route + s : NULL, err))) goto out;
        for (int o = 0; o < R; o++)
            for (int b = 0; b < B; b++) {
                int e = o * B + b, a = mc->head_of[e], Ka = mc->t[a].labels.n;
                const float *lg = mc->logits + (size_t)e * K;
                int best = 0;
                for (int k = 1; k < Ka; k++) if (lg[k] > lg[best]) best = k;
                size_t slot = (size_t)(s + b) * R + o;
                labels[slot] = mc->t[a].labels.names[best];
                if (probs) {
                    float mx = lg[best], sum = 0;
                    for (int k = 0; k < Ka; k++) sum += expf(lg[k] - mx);
                    for (int k = 0; k < Ka; k++) probs[slot * K + k] = expf(lg[k] - mx) / sum;
                    if (n_probs) n_probs[slot] = Ka;
                }
            }
    }
    (void)C;
out:
    free(ids); free(tts); free(lens); free(one); free(one_t);
    return rc;
}
