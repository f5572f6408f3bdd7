/* bert.c: loading a BERT encoder from config.json + model.safetensors and
 * running its forward pass (post-LN layers, exact GELU, padding mask). */
#include "core/json_file.h"
#include "model/bert.h"
#include "model/cls_head.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static peftc_status own(bert_model *m, float *p, peftc_error *err)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        float **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) { free(p); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return PEFTC_OK;
}

/* Finds `name` (with or without the "bert." prefix that task-head checkpoints
 * use), checks its shape, and points *out at fp32 data. */
/* A NaN or Inf in a weight would turn every output into NaN with exit 0:
 * one pass over the weights at load (tens of ms for MiniLM) names it. */
static peftc_status check_finite(const bert_model *m, const st_tensor *t, const float *p, peftc_error *err)
{
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(p[i]))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (%g) at element %lld",
                              m->st->path, t->name, (double)p[i], (long long)i);
    return PEFTC_OK;
}

static peftc_status load_w(bert_model *m, const char *name, int ndim, int64_t d0, int64_t d1,
                           int optional, float **out, peftc_error *err)
{
    char full[256];
    const st_tensor *t = st_find(m->st, name);
    if (!t) {
        snprintf(full, sizeof full, "bert.%s", name);
        t = st_find(m->st, full);
    }
    *out = NULL;
    if (!t) {
        if (optional) return PEFTC_OK;
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is missing (maybe not a BERT checkpoint?)", m->st->path, name);
    }
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char want[64];
        if (ndim == 2) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has shape [%lld%s...] but config.json implies %s",
                          m->st->path, t->name, (long long)(t->ndim ? t->shape[0] : 0), t->ndim > 1 ? ", " : "", want);
    }
    if (t->dtype == ST_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = (float *)t->data; /* frozen weights stay in the mapping: no copy */
        m->base.n_params += t->numel;
        return check_finite(m, t, *out, err);
    }
    float *p = peftc_alloc_aligned((size_t)t->numel * sizeof(float));
    if (!p) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory for '%s'", m->st->path, name);
    peftc_status rc = st_to_f32(m->st, t, p, err);
    if (rc) { free(p); return rc; }
    if ((rc = own(m, p, err))) return rc;
    *out = p;
    m->base.n_params += t->numel;
    return check_finite(m, t, p, err);
}

/* sentence-transformers models state the length they were trained with. */
static int read_max_seq_len(const char *dir, int max_position)
{
    char path[4096];
    if (peftc_path_join(path, sizeof path, dir, "sentence_bert_config.json", NULL)) return max_position;
    json_t *root = peftc_json_load_file(path, 0, NULL);
    json_t *v = root ? json_object_get(root, "max_seq_length") : NULL;
    int n = json_is_integer(v) ? (int)json_integer_value(v) : max_position;
    json_decref(root);
    return n >= 3 && n <= max_position ? n : max_position;
}

static void bert_free(peftc_model *pm)
{
    bert_model *m = bert_of(pm);
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int l = 0; m->layers && l < m->base.cfg.num_layers; l++)
        for (int j = 0; j < 6; j++) matmul_bf16_free(m->layers[l].bf16[j]);
    for (int i = 0; m->nf4 && i < 6 * m->base.cfg.num_layers; i++) nf4_free(&m->nf4[i]);
    free(m->nf4);
    free(m->layers);
    peftc_safetensors_free(m->st);
    free(m->base.dir);
    free(m);
}

/* An NF4 weight `name` (out d0, in d1) of a peftc quantize file, borrowed
 * from the mapping: NAME.nf4_codes U8 [d0, d1/2], NAME.nf4_absmax U8
 * [blocks], NAME.nf4_absmax2 F32 [ceil(blocks/256)], NAME.nf4_offset F32 [1];
 * every dtype, shape and alignment checked before use. */
static peftc_status load_nf4(bert_model *m, const char *name, int64_t d0, int64_t d1, nf4_tensor *t, peftc_error *err)
{
    static const struct { const char *sfx; st_dtype dt; } parts[4] = {
        {"nf4_codes", ST_U8}, {"nf4_absmax", ST_U8}, {"nf4_absmax2", ST_F32}, {"nf4_offset", ST_F32}};
    int64_t cb, nb, nb2;
    if (d1 % NF4_BLOCK)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' is NF4 but its rows (%lld) are not whole blocks of %d",
                          m->st->path, name, (long long)d1, NF4_BLOCK);
    nf4_sizes(d0, d1, 1, &cb, &nb, &nb2);
    int64_t want[4] = {cb, nb, nb2, 1};
    const st_tensor *p[4];
    for (int i = 0; i < 4; i++) {
        char full[320];
        snprintf(full, sizeof full, "%s.%s", name, parts[i].sfx);
        p[i] = st_find(m->st, full);
        if (!p[i])
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is missing (the file is NF4: every linear weight must be)",
                              m->st->path, full);
        if (p[i]->dtype != parts[i].dt || p[i]->numel != want[i] || (i == 0 && (p[i]->ndim != 2 || p[i]->shape[0] != d0)))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is %s with %lld values, but config.json implies %s with "
                              "%lld (an NF4 file of another model?)", m->st->path, full, st_dtype_name(p[i]->dtype),
                              (long long)p[i]->numel, st_dtype_name(parts[i].dt), (long long)want[i]);
        if (parts[i].dt == ST_F32 && ((uintptr_t)p[i]->data & 3))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not 4-byte aligned", m->st->path, full);
    }
    float offset;
    memcpy(&offset, p[3]->data, 4);
    nf4_borrow(t, d0, d1, 1, p[0]->data, NULL, p[1]->data, p[2]->data, offset);
    return PEFTC_OK;
}

/* The six linear weights of each layer, in the order of bert_layer.bf16[] */
static float **layer_linear(bert_layer *L, int j)
{
    float **w[6] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wi, &L->wf};
    return w[j];
}

/* cfg.quantize = NF4: every layer's linear weights to NF4 (double
 * quantised, bitsandbytes' bytes), the fp32 pages released; the pooler,
 * embeddings, biases and norms stay fp32. Also counts the linear bytes. */
static peftc_status quantize_linears(bert_model *m, peftc_error *err)
{
    const peftc_config *c = &m->base.cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size;
    int nq = c->quantize == PEFTC_QUANT_NF4;
    int64_t dims[6][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {F, C}, {C, F}};
    m->base.linear_params = (int64_t)c->num_layers * (4 * C * C + 2 * C * F);
    m->base.linear_bytes = 4 * m->base.linear_params;
    if (c->quantize == PEFTC_QUANT_NONE) return PEFTC_OK;
    if (!nq) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: unknown base quantisation %d", m->base.dir, (int)c->quantize);
    if (m->nf4_from_file) {
        m->base.linear_bytes = 0;
        for (int i = 0; i < 6 * c->num_layers; i++) m->base.linear_bytes += (int64_t)nf4_bytes(&m->nf4[i]);
        return PEFTC_OK;
    }
    if (C % NF4_BLOCK || F % NF4_BLOCK)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED,
                          "%s: --quantize nf4 needs hidden_size and intermediate_size to be multiples of %d (rows of whole "
                          "blocks), got %lld and %lld", m->base.dir, NF4_BLOCK, (long long)C, (long long)F);
    m->nf4 = calloc((size_t)c->num_layers * 6, sizeof *m->nf4);
    if (!m->nf4) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    m->base.linear_bytes = 0;
    for (int l = 0; l < c->num_layers; l++)
        for (int j = 0; j < 6; j++) {
            float *w = *layer_linear(&m->layers[l], j);
            int q = nf4_quantize(&m->nf4[l * 6 + j], w, dims[j][0], dims[j][1], 1);
            if (q) return peftc_fail(err, q == NF4_ENOMEM ? PEFTC_ERR_NOMEM : PEFTC_ERR_UNSUPPORTED,
                                     "%s: layer %d: cannot quantise a %lldx%lld weight to NF4", m->base.dir, l,
                                     (long long)dims[j][0], (long long)dims[j][1]);
            m->base.linear_bytes += (int64_t)nf4_bytes(&m->nf4[l * 6 + j]);
            /* the fp32 weight is not read again while it is frozen */
            st_release(m->st, w, (size_t)(dims[j][0] * dims[j][1]) * sizeof(float));
        }
    return PEFTC_OK;
}

static peftc_status bert_load(const char *dir, const peftc_config *cfg, peftc_model **out, peftc_error *err)
{
    *out = NULL;
    char path[4096];
    peftc_status rc;
    bert_model *m = calloc(1, sizeof *m);
    if (!m || !(m->base.dir = strdup(dir))) { free(m); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    m->base.cfg = *cfg;
    m->base.family = &model_family_bert;
    if ((rc = peftc_path_join(path, sizeof path, dir, "config.json", err)) ||
        (rc = model_check_size(path, cfg->vocab_size, cfg->hidden_size, cfg->num_layers, cfg->intermediate_size,
                               cfg->max_position, err)) ||
        (rc = peftc_path_join(path, sizeof path, dir, "model.safetensors", err)))
        goto fail;
    m->base.cfg.max_seq_len = read_max_seq_len(dir, m->base.cfg.max_position);
    if (!peftc_file_exists(path)) {
        rc = peftc_fail(err, PEFTC_ERR_IO, "%s: no model.safetensors in this directory (sharded or .bin checkpoints are not supported)", dir);
        goto fail;
    }
    if ((rc = peftc_safetensors_open(path, &m->st, err))) goto fail;

    const peftc_config *c = &m->base.cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size;
    /* a base written by peftc quantize: its linear weights are NF4 already */
    const char *fq = st_metadata(m->st, "peftc_quantize");
    if (fq && strcmp(fq, "nf4")) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: peftc_quantize \"%s\" is not a base quantisation peftc reads (nf4)",
                        m->st->path, fq);
        goto fail;
    }
    if (fq) {
        m->base.cfg.quantize = PEFTC_QUANT_NF4;
        m->nf4_from_file = 1;
        if (!(m->nf4 = calloc((size_t)c->num_layers * 6, sizeof *m->nf4))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto fail; }
    }
    m->layers = calloc((size_t)c->num_layers, sizeof *m->layers);
    if (!m->layers) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto fail; }
    if ((rc = load_w(m, "embeddings.word_embeddings.weight", 2, c->vocab_size, C, 0, &m->wte, err)) ||
        (rc = load_w(m, "embeddings.position_embeddings.weight", 2, c->max_position, C, 0, &m->wpe, err)) ||
        (rc = load_w(m, "embeddings.token_type_embeddings.weight", 2, c->type_vocab_size, C, 0, &m->wtt, err)) ||
        (rc = load_w(m, "embeddings.LayerNorm.weight", 1, C, 0, 0, &m->emb_ln_w, err)) ||
        (rc = load_w(m, "embeddings.LayerNorm.bias", 1, C, 0, 0, &m->emb_ln_b, err)))
        goto fail;
    for (int l = 0; l < c->num_layers; l++) {
        bert_layer *L = &m->layers[l];
        struct { const char *suffix; int ndim; int64_t d0, d1; float **dst; } w[] = {
            {"attention.self.query.weight", 2, C, C, &L->wq}, {"attention.self.query.bias", 1, C, 0, &L->bq},
            {"attention.self.key.weight", 2, C, C, &L->wk},   {"attention.self.key.bias", 1, C, 0, &L->bk},
            {"attention.self.value.weight", 2, C, C, &L->wv}, {"attention.self.value.bias", 1, C, 0, &L->bv},
            {"attention.output.dense.weight", 2, C, C, &L->wo}, {"attention.output.dense.bias", 1, C, 0, &L->bo},
            {"attention.output.LayerNorm.weight", 1, C, 0, &L->ln1_w}, {"attention.output.LayerNorm.bias", 1, C, 0, &L->ln1_b},
            {"intermediate.dense.weight", 2, F, C, &L->wi}, {"intermediate.dense.bias", 1, F, 0, &L->bi},
            {"output.dense.weight", 2, C, F, &L->wf},       {"output.dense.bias", 1, C, 0, &L->bf},
            {"output.LayerNorm.weight", 1, C, 0, &L->ln2_w}, {"output.LayerNorm.bias", 1, C, 0, &L->ln2_b},
        };
        for (size_t i = 0; i < sizeof w / sizeof *w; i++) {
            char name[256];
            snprintf(name, sizeof name, "encoder.layer.%d.%s", l, w[i].suffix);
            /* the six linear weights are w[0, 2, 4, 6, 10, 12] */
            int j = i < 8 && i % 2 == 0 ? (int)i / 2 : i == 10 ? 4 : i == 12 ? 5 : -1;
            if (m->nf4 && j >= 0) {
                if ((rc = load_nf4(m, name, w[i].d0, w[i].d1, &m->nf4[l * 6 + j], err))) goto fail;
                *w[i].dst = NULL;   /* no fp32 copy exists */
                m->base.n_params += w[i].d0 * w[i].d1;
                continue;
            }
            if ((rc = load_w(m, name, w[i].ndim, w[i].d0, w[i].d1, 0, w[i].dst, err))) goto fail;
        }
    }
    if ((rc = load_w(m, "pooler.dense.weight", 2, C, C, 1, &m->pool_w, err)) ||
        (rc = load_w(m, "pooler.dense.bias", 1, C, 0, 1, &m->pool_b, err)))
        goto fail;
    if ((rc = quantize_linears(m, err))) goto fail;
    *out = &m->base;
    return PEFTC_OK;
fail:
    bert_free(&m->base);
    return rc;
}

static void acts_release(bert_acts *a)
{
    free(a->block);
    free(a->layer);
    memset(a, 0, sizeof *a);
}

static void bert_acts_free(model_acts *ma)
{
    if (!ma) return;
    acts_release((bert_acts *)ma);
    free(ma);
}

static peftc_status acts_build(bert_acts *a, const peftc_config *cfg, int B, int T, int train, int n_prefix,
                               unsigned keep, peftc_error *err);

static peftc_status bert_acts_init(const peftc_model *m, model_acts **ma, int B, int T, int train, int n_prefix,
                                   unsigned keep, peftc_error *err)
{
    if (!*ma && !(*ma = calloc(1, sizeof(bert_acts)))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return acts_build((bert_acts *)*ma, &m->cfg, B, T, train, n_prefix, keep, err);
}

static peftc_status acts_build(bert_acts *a, const peftc_config *cfg, int B, int T, int train, int n_prefix,
                               unsigned keep, peftc_error *err)
{
    acts_release(a);
    size_t N = (size_t)B * T, C = (size_t)cfg->hidden_size, F = (size_t)cfg->intermediate_size;
    size_t Tk = (size_t)T + (size_t)n_prefix, NK = (size_t)B * Tk;
    size_t P = (size_t)B * cfg->num_heads * T * Tk;
    /* training keeps every layer's activations and the backward scratch;
     * inference reuses one layer's */
    int n_sets = train ? cfg->num_layers : 1;
    int keep_ctx = train && (keep & BERT_KEEP_CTX), keep_act = train && (keep & BERT_KEEP_FFN_ACT);
    /* whole-batch FFN buffers: where something trains inside the FFN, and in
     * fp32, where OpenBLAS would pack the weight again for every row block */
    int whole = (keep & BERT_FFN_UNFUSED) || !kernels_bf16(), nth = omp_get_max_threads();
    /* sizes rounded to 16 floats so every buffer starts 64-byte aligned;
     * byte masks take a quarter of their count in floats */
#define R16(x) (((x) + 15) & ~(size_t)15)
#define MASKF(n) R16((n) / 4 + 1)
    size_t per_layer = (5 + keep_ctx) * R16(N * C) + R16(P) + (1 + keep_act) * R16(N * F) + 4 * R16(N);
    if (train) per_layer += MASKF(P);
    if (n_prefix) per_layer += 2 * R16(NK * C) + R16(2 * N) + R16(2 * (size_t)B);
    /* emb, emb_ln, xbuf[2], ln1, hidden (+ ctx, ffn_act scratch); in training
     * the forward-only ones (emb unless the embeddings train, xbuf[1], hidden,
     * the ctx scratch) share the backward's d_v, d_q, d_k, d_ctx: the forward
     * is done with them (the head keeps its own copy of the [CLS] rows) before
     * the backward writes those */
    int keep_emb = (keep & BERT_KEEP_EMB) != 0;
    size_t shared = train ? 2 + !keep_ctx + !keep_emb : 0;
    size_t rows = (size_t)nth * R16((size_t)BERT_FFN_ROWS * F);
    /* the shared GELU output holds every row where deltas need the whole batch,
     * else chunks of BERT_FFN_CHUNK rows */
    size_t act_rows = (keep & BERT_FFN_UNFUSED) || N < BERT_FFN_CHUNK ? N : BERT_FFN_CHUNK;
    size_t total = (6 + !keep_ctx - shared) * R16(N * C) + (whole && !keep_act) * R16(act_rows * F) + rows + 3 * R16(N) +
                   (size_t)n_sets * per_layer;
    if (train) total += 6 * R16(N * C) + (whole && keep_act) * R16(N * F) + (n_prefix ? 2 * R16(NK * C) + R16(4 * (size_t)B) : 0);
    a->block = peftc_alloc_aligned(total * sizeof(float));
    a->layer = calloc((size_t)n_sets, sizeof *a->layer);
    if (!a->block || !a->layer) {
        acts_release(a);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate activations for batch %d x %d", B, T);
    }
    float *p = a->block, *ctx_scratch = NULL, *act_scratch = NULL;
#define TAKE(dst, n) do { (dst) = p; p += R16(n); } while (0)
#define TAKEM(dst, n) do { (dst) = (uint8_t *)p; p += MASKF(n); } while (0)
    if (train) {
        TAKE(a->d_a, N * C); TAKE(a->d_b, N * C); TAKE(a->d_ctx, N * C);
        TAKE(a->d_q, N * C); TAKE(a->d_k, N * C); TAKE(a->d_v, N * C);
        a->xbuf[1] = a->d_q;
        a->hidden = a->d_k;
        if (keep_emb) TAKE(a->emb, N * C); else a->emb = a->d_v;
        if (!keep_ctx) ctx_scratch = a->d_ctx;
    } else {
        TAKE(a->emb, N * C); TAKE(a->xbuf[1], N * C); TAKE(a->hidden, N * C); TAKE(ctx_scratch, N * C);
    }
    TAKE(a->emb_ln, N * C); TAKE(a->emb_mean, N); TAKE(a->emb_rstd, N);
    a->ids_clean = (int32_t *)p; p += R16(N);
    TAKE(a->xbuf[0], N * C); TAKE(a->ln1, N * C);
    if (whole && !keep_act) TAKE(act_scratch, act_rows * F);
    a->ffn_act_rows = whole && !keep_act ? (int)act_rows : 0;
    a->ffn_rows = p; p += rows;
    a->ffn_threads = nth;
    for (int l = 0; l < n_sets; l++) {
        bert_layer_acts *L = &a->layer[l];
        TAKE(L->q, N * C); TAKE(L->k, N * C); TAKE(L->v, N * C); TAKE(L->probs, P);
        if (keep_ctx) TAKE(L->ctx, N * C); else L->ctx = ctx_scratch;
        TAKE(L->res1, N * C); TAKE(L->ln1_mean, N); TAKE(L->ln1_rstd, N);
        TAKE(L->ffn_pre, N * F);
        if (keep_act) TAKE(L->ffn_act, N * F); else L->ffn_act = act_scratch;
        TAKE(L->res2, N * C); TAKE(L->ln2_mean, N); TAKE(L->ln2_rstd, N);
        if (train) TAKEM(L->probs_mask, P);
        if (n_prefix) { TAKE(L->k_ext, NK * C); TAKE(L->v_ext, NK * C); TAKE(L->gate_sig, 2 * N); TAKE(L->gate, 2 * (size_t)B); }
    }
    if (train) {
        /* d_f is the forward's GELU output buffer again when that is not kept */
        if (whole) {
            if (keep_act) TAKE(a->d_f, N * F); else a->d_f = act_scratch;
        }
        if (n_prefix) { TAKE(a->d_kext, NK * C); TAKE(a->d_vext, NK * C); a->d_gate = (double *)p; p += R16(4 * (size_t)B); }
    }
#undef TAKE
#undef TAKEM
#undef MASKF
#undef R16
    a->B = B; a->T = T; a->n_sets = n_sets; a->train = train; a->P = n_prefix; a->keep = keep;
    a->floats = total;
    return PEFTC_OK;
}

/* Layer l's gradient slots (BL_*) in a model_run.grads array; NULL if nothing trains. */
static inline float *const *layer_grads(float *const *g, int l)
{
    return g ? g + BT_COUNT + (size_t)BL_COUNT * l : NULL;
}

static int emb_trains(float *const *g)
{
    return g && (g[BT_WTE] || g[BT_WPE] || g[BT_WTT] || g[BT_EMB_LN_W] || g[BT_EMB_LN_B]);
}

static unsigned bert_keep_for(const peftc_model *m, const delta_set *ds, float *const *g, int virt_train)
{
    unsigned keep = 0;
    if (((const bert_model *)m)->nf4) keep |= BERT_FFN_UNFUSED;   /* NF4 FFN weights go through linear_site */
    if (emb_trains(g) || virt_train) keep |= BERT_KEEP_EMB;   /* the embeddings' or the virtual tokens' gradient */
    for (int l = 0; l < m->cfg.num_layers; l++) {
        float *const *G = layer_grads(g, l);
        if ((G && G[BL_WO]) || delta_count(ds, l, SITE_ATTN_O)) keep |= BERT_KEEP_CTX;
        if ((G && G[BL_WF]) || delta_count(ds, l, SITE_FFN_DOWN) || delta_count(ds, l, SITE_FFN_ACT))
            keep |= BERT_KEEP_FFN_ACT;
        if ((G && (G[BL_WI] || G[BL_BI] || G[BL_WF] || G[BL_BF])) || delta_count(ds, l, SITE_FFN_IN) ||
            delta_count(ds, l, SITE_FFN_ACT) || delta_count(ds, l, SITE_FFN_DOWN))
            keep |= BERT_FFN_UNFUSED;
    }
    return keep;
}

static float *bert_hidden(const peftc_model *m, const model_acts *ma)
{
    const bert_acts *a = (const bert_acts *)ma;
    return m->cfg.num_layers ? a->hidden : a->emb_ln;
}

/* The bf16 copy of a frozen weight if the bf16 path is on (packed on first
 * use), else NULL. A trained weight drops its copy (made by an evaluation
 * between steps, say): the optimizer is about to change it. */
static matmul_bf16 *bf16_weight(const peftc_model *m, matmul_bf16 **slot, int frozen, const float *w, int IC, int OC)
{
    if (!frozen && *slot) { matmul_bf16_free(*slot); *slot = NULL; }
    if (!frozen || !kernels_bf16()) return NULL;
    if (!*slot && (*slot = matmul_bf16_pack(w, IC, OC)))   /* NULL (out of memory): fp32 */
        st_release(((const bert_model *)m)->st, w, (size_t)IC * OC * sizeof(float));   /* the fp32 copy is not read again */
    return *slot;
}

/* bf16_weight with the backward's transposed packing made (NULL: fp32) */
static matmul_bf16 *bf16_weight_bwd(const peftc_model *m, matmul_bf16 **slot, uint8_t *bwd_packed, int frozen,
                                    const float *w, int IC, int OC)
{
    matmul_bf16 *wb = bf16_weight(m, slot, frozen, w, IC, OC);
    if (!wb || *bwd_packed) return wb;
    if (matmul_bf16_prepare_backward(wb)) return NULL;
    /* the packing read the fp32 weight again */
    st_release(((const bert_model *)m)->st, w, (size_t)IC * OC * sizeof(float));
    *bwd_packed = 1;
    return wb;
}

/* Floats between the threads' row-block buffers (a multiple of 16: aligned) */
static size_t ffn_rows_stride(int F) { return ((size_t)BERT_FFN_ROWS * F + 15) & ~(size_t)15; }

/* The FFN runs as fused row blocks unless something trains on its inside:
 * trained weights or biases (their gradients sum over all rows), or deltas at
 * ffn.in, ffn.act, ffn.down (they work on whole batches). */
static int ffn_fused(const model_run *run, float *const *G, int l)
{
    if (G && (G[BL_WI] || G[BL_BI] || G[BL_WF] || G[BL_BF])) return 0;
    return !(run && run->deltas && (delta_count(run->deltas, l, SITE_FFN_IN) || delta_count(run->deltas, l, SITE_FFN_ACT) ||
                                    delta_count(run->deltas, l, SITE_FFN_DOWN)));
}

/* ffn_pre = ln1 Wi^T + bi (kept) and res2 = gelu(ffn_pre) Wf^T + bf for rows
 * [r0, r0 + nr), the GELU output in act (nr, F); wi, wf NULL: fp32 */
static void ffn_rows_forward(const bert_acts *a, bert_layer_acts *A, const bert_layer *W, const matmul_bf16 *wi,
                             const matmul_bf16 *wf, float *act, int r0, int nr, int C, int F)
{
    float *pre = A->ffn_pre + (size_t)r0 * F, *o = A->res2 + (size_t)r0 * C;
    const float *x = a->ln1 + (size_t)r0 * C;
    /* the GELU is applied to each output tile while it is in cache */
    if (wi) matmul_bf16_forward_gelu(pre, act, x, wi, W->bi, nr, C, F);
    else matmul_forward_gelu(pre, act, x, W->wi, W->bi, nr, C, F);
    if (wf) matmul_bf16_forward(o, act, wf, W->bf, nr, F, C, 0);
    else matmul_forward(o, act, W->wf, W->bf, nr, F, C, 0);
}

/* Its backward for frozen Wi, Wf: d_ln1 += ((d_blk Wf) * gelu'(ffn_pre)) Wi
 * for rows [r0, r0 + nr), with dpre (nr, F) as scratch */
static void ffn_rows_backward(const bert_layer_acts *A, const bert_layer *W, matmul_bf16 *wi, matmul_bf16 *wf,
                              const float *d_blk, float *d_ln1, float *dpre, int r0, int nr, int C, int F)
{
    const float *dh = d_blk + (size_t)r0 * C, *pre = A->ffn_pre + (size_t)r0 * F;
    /* dpre = (dh Wf) * gelu'(pre), the factor applied per output tile */
    if (!wf || matmul_bf16_backward_gelu(dpre, pre, dh, wf, nr, F, C))
        matmul_backward_gelu(dpre, pre, dh, W->wf, nr, F, C);
    float *dx = d_ln1 + (size_t)r0 * C;
    if (!wi || matmul_bf16_backward(dx, NULL, dpre, wi, nr, C, F, 1))
        matmul_backward_input(dx, dpre, W->wi, nr, C, F, 1);
}

/* The FFN of a layer with nothing trained inside it, by rows. With bf16
 * weights: blocks of BERT_FFN_ROWS rows that each thread takes whole with
 * single-threaded kernels (nested regions run serially), so the GELU output
 * of a block stays in the thread's cache, never the full (N,F) in memory, and
 * there is no barrier between the steps. In fp32 (OpenBLAS would pack the
 * weight again for every small block): chunks of a->ffn_act_rows rows, each
 * step threaded. Block and chunk boundaries do not depend on the thread
 * count, and every row is computed by one thread, so neither do results
 * (whichever thread claims a block: blocks are handed out dynamically). */
static int ffn_blocked(const bert_acts *a, const bert_layer_acts *A) { return kernels_bf16() || !A->ffn_act || !a->ffn_act_rows; }

static void ffn_fused_forward(const peftc_model *m, bert_acts *a, bert_layer_acts *A, bert_layer *W, int N)
{
    int C = m->cfg.hidden_size, F = m->cfg.intermediate_size;
    if (!ffn_blocked(a, A)) {
        for (int r0 = 0; r0 < N; r0 += a->ffn_act_rows)
            ffn_rows_forward(a, A, W, NULL, NULL, A->ffn_act, r0, N - r0 < a->ffn_act_rows ? N - r0 : a->ffn_act_rows, C, F);
        return;
    }
    int R = BERT_FFN_ROWS, nb = (N + R - 1) / R, nth = omp_get_max_threads();
    matmul_bf16 *wi = bf16_weight(m, &W->bf16[4], 1, W->wi, C, F), *wf = bf16_weight(m, &W->bf16[5], 1, W->wf, F, C);
    if (nth > a->ffn_threads) nth = a->ffn_threads;
    size_t stride = ffn_rows_stride(F);
    #pragma omp parallel num_threads(nth)
    {
        float *act = a->ffn_rows + (size_t)omp_get_thread_num() * stride;
        /* dynamic: a thread another process holds up takes fewer blocks */
        #pragma omp for schedule(dynamic)
        for (int b = 0; b < nb; b++)
            ffn_rows_forward(a, A, W, wi, wf, act, b * R, N - b * R < R ? N - b * R : R, C, F);
    }
}

static void ffn_fused_backward(const peftc_model *m, bert_acts *a, bert_layer_acts *A, bert_layer *W,
                               const float *d_blk, float *d_ln1, int N)
{
    int C = m->cfg.hidden_size, F = m->cfg.intermediate_size;
    if (!ffn_blocked(a, A)) {
        for (int r0 = 0; r0 < N; r0 += a->ffn_act_rows)
            ffn_rows_backward(A, W, NULL, NULL, d_blk, d_ln1, a->d_f, r0,
                              N - r0 < a->ffn_act_rows ? N - r0 : a->ffn_act_rows, C, F);
        return;
    }
    int R = BERT_FFN_ROWS, nb = (N + R - 1) / R, nth = omp_get_max_threads();
    matmul_bf16 *wi = bf16_weight_bwd(m, &W->bf16[4], &W->bf16_bwd_packed[4], 1, W->wi, C, F);
    matmul_bf16 *wf = bf16_weight_bwd(m, &W->bf16[5], &W->bf16_bwd_packed[5], 1, W->wf, F, C);
    if (nth > a->ffn_threads) nth = a->ffn_threads;
    size_t stride = ffn_rows_stride(F);
    #pragma omp parallel num_threads(nth)
    {
        float *dpre = a->ffn_rows + (size_t)omp_get_thread_num() * stride;
        #pragma omp for schedule(dynamic)
        for (int b = 0; b < nb; b++)
            ffn_rows_backward(A, W, wi, wf, d_blk, d_ln1, dpre, b * R, N - b * R < R ? N - b * R : R, C, F);
    }
}

/* A linear layer at a site: h = x W^T + b, then the site's deltas. */
/* The NF4 weight at a linear site, if the base is quantised and it is frozen */
static const nf4_tensor *site_nf4(const peftc_model *m, int l, site_id site, int frozen)
{
    const bert_model *bm = (const bert_model *)m;
    if (!bm->nf4 || !frozen) return NULL;
    switch (site) {
    case SITE_ATTN_Q: return &bm->nf4[l * 6 + 0];
    case SITE_ATTN_K: return &bm->nf4[l * 6 + 1];
    case SITE_ATTN_V: return &bm->nf4[l * 6 + 2];
    case SITE_ATTN_O: return &bm->nf4[l * 6 + 3];
    case SITE_FFN_IN: return &bm->nf4[l * 6 + 4];
    case SITE_FFN_DOWN: return &bm->nf4[l * 6 + 5];
    default: return NULL;
    }
}

/* h = x W^T + b with W in NF4 */
static void nf4_linear(float *h, const float *x, const nf4_tensor *q, const float *b, int N, int OC)
{
    nf4_matmul(h, x, q, N);   /* sizes were checked at load: cannot fail */
    if (!b) return;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) h[(size_t)i * OC + o] += b[o];
}

static void linear_site(const peftc_model *m, const model_run *run, int l, site_id site, float *h, const float *x,
                        const float *w, const float *b, matmul_bf16 **bf, int frozen, int N, int IC, int OC)
{
    const nf4_tensor *q = site_nf4(m, l, site, frozen);
    matmul_bf16 *wb = q ? NULL : bf16_weight(m, bf, frozen, w, IC, OC);
    if (q) nf4_linear(h, x, q, b, N, OC);
    else if (wb) matmul_bf16_forward(h, x, wb, b, N, IC, OC, 0);
    else matmul_forward(h, x, w, b, N, IC, OC, 0);
    if (run && run->deltas && delta_count(run->deltas, l, site))
        delta_forward(run->deltas, run->pb, l, site, x, h, N, run->train, run->rng, run->tok0);
}

static void block_site(const model_run *run, int l, site_id site, float *h, const float *x, int N)
{
    if (run && run->deltas && delta_count(run->deltas, l, site))
        delta_forward(run->deltas, run->pb, l, site, x, h, N, run->train, run->rng, run->tok0);
}

/* n = B*T*C elements; the mask at the batch's offset in the whole batch (run->row0) */
static void hidden_dropout(const model_run *run, float *x, uint64_t *key, float p, size_t n, int B)
{
    if (run && run->train && p > 0)
        dropout_forward_key(x, x, p, n, *key = dropout_key_at(peftc_rng_u64(run->rng), (uint64_t)run->row0 * (n / (size_t)B)));
}

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Builds layer l's extended keys/values: per sequence [g * prefix ; own],
 * with the sequence's gates g (1 without gating). width = 2 L C. */
static void prefix_extend(const model_run *run, bert_layer_acts *A, const float *x, const int *lens,
                          int l, int B, int T, int C, size_t width)
{
    int P = run->n_prefix, Tk = P + T;
    /* every sequence on its own: the results do not depend on the threads */
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float gk = 1.0f, gv = 1.0f;
        if (run->prefix_gate_w) {
            /* AdapterHub/UniPELT: the mean over the sequence's tokens of sigmoid(x W_g + b_g) */
            const float *wk = run->prefix_gate_w + (size_t)(2 * l) * C, *wv = wk + C;
            float bk = run->prefix_gate_b[2 * l], bv = run->prefix_gate_b[2 * l + 1];
            double sk = 0, sv = 0;
            for (int t = 0; t < lens[b]; t++) {
                const float *xt = x + ((size_t)b * T + t) * C;
                float ak = bk, av = bv;
                for (int c = 0; c < C; c++) { ak += xt[c] * wk[c]; av += xt[c] * wv[c]; }
                float sgk = sigmoidf_(ak), sgv = sigmoidf_(av);
                A->gate_sig[((size_t)b * T + t) * 2] = sgk;
                A->gate_sig[((size_t)b * T + t) * 2 + 1] = sgv;
                sk += sgk;
                sv += sgv;
            }
            gk = (float)(sk / lens[b]);
            gv = (float)(sv / lens[b]);
        }
        A->gate[2 * b] = gk;
        A->gate[2 * b + 1] = gv;
        float *ke = A->k_ext + (size_t)b * Tk * C, *ve = A->v_ext + (size_t)b * Tk * C;
        for (int i = 0; i < P; i++) {
            const float *src = run->prefix_kv + (size_t)i * width + (size_t)(2 * l) * C;
            for (int c = 0; c < C; c++) {
                ke[(size_t)i * C + c] = gk * src[c];
                ve[(size_t)i * C + c] = gv * src[C + c];
            }
        }
        memcpy(ke + (size_t)P * C, A->k + (size_t)b * T * C, (size_t)T * C * sizeof(float));
        memcpy(ve + (size_t)P * C, A->v + (size_t)b * T * C, (size_t)T * C * sizeof(float));
    }
}

/* Backward of prefix_extend: d_kext/d_vext (B,P+T,C) -> d_k, d_v (N,C) (overwritten),
 * the prefix's and the gates' gradients, and d_x += the gates' input gradient.
 * dgate (2B) is scratch. Sums over sequences and tokens run in a fixed order
 * (per sequence, then per prefix row or weight column), whatever the threads. */
static void prefix_extend_backward(const model_run *run, const bert_layer_acts *A, const float *x, const int *lens,
                                   int l, int B, int T, int C, size_t width, const float *d_kext, const float *d_vext,
                                   float *d_k, float *d_v, float *d_x, double *dgate)
{
    int P = run->n_prefix, Tk = P + T;
    int gated = run->prefix_gate_w && run->d_prefix_gate_w;
    const float *wk = gated ? run->prefix_gate_w + (size_t)(2 * l) * C : NULL, *wv = wk ? wk + C : NULL;
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *dke = d_kext + (size_t)b * Tk * C, *dve = d_vext + (size_t)b * Tk * C;
        memcpy(d_k + (size_t)b * T * C, dke + (size_t)P * C, (size_t)T * C * sizeof(float));
        memcpy(d_v + (size_t)b * T * C, dve + (size_t)P * C, (size_t)T * C * sizeof(float));
        if (!gated) continue;
        double dgk = 0, dgv = 0;
        for (int i = 0; i < P; i++) {
            const float *src = run->prefix_kv + (size_t)i * width + (size_t)(2 * l) * C;
            for (int c = 0; c < C; c++) {
                dgk += (double)dke[(size_t)i * C + c] * src[c];
                dgv += (double)dve[(size_t)i * C + c] * src[C + c];
            }
        }
        dgate[2 * b] = dgk / lens[b];
        dgate[2 * b + 1] = dgv / lens[b];
        if (!d_x) continue;
        for (int t = 0; t < lens[b]; t++) {
            float sk = A->gate_sig[((size_t)b * T + t) * 2], sv = A->gate_sig[((size_t)b * T + t) * 2 + 1];
            float pk = (float)dgate[2 * b] * sk * (1 - sk), pv = (float)dgate[2 * b + 1] * sv * (1 - sv);
            float *dxt = d_x + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) dxt[c] += pk * wk[c] + pv * wv[c];
        }
    }
    /* the prefix rows: each thread owns rows i, summing over the sequences in order */
    if (run->d_prefix_kv) {
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < P; i++) {
            float *dst = run->d_prefix_kv + (size_t)i * width + (size_t)(2 * l) * C;
            for (int b = 0; b < B; b++) {
                const float *dke = d_kext + ((size_t)b * Tk + i) * C, *dve = d_vext + ((size_t)b * Tk + i) * C;
                float gk = A->gate[2 * b], gv = A->gate[2 * b + 1];
                for (int c = 0; c < C; c++) { dst[c] += gk * dke[c]; dst[C + c] += gv * dve[c]; }
            }
        }
    }
    if (!gated) return;
    /* the gate weights: each thread owns columns, summing over (sequence, token) in order */
    float *dwk = run->d_prefix_gate_w + (size_t)(2 * l) * C, *dwv = dwk + C;
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < lens[b]; t++) {
                const float *xt = x + ((size_t)b * T + t) * C;
                float sk = A->gate_sig[((size_t)b * T + t) * 2], sv = A->gate_sig[((size_t)b * T + t) * 2 + 1];
                float pk = (float)dgate[2 * b] * sk * (1 - sk), pv = (float)dgate[2 * b + 1] * sv * (1 - sv);
                for (int c = c0; c < c1; c++) { dwk[c] += pk * xt[c]; dwv[c] += pv * xt[c]; }
            }
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++) {
            float sk = A->gate_sig[((size_t)b * T + t) * 2], sv = A->gate_sig[((size_t)b * T + t) * 2 + 1];
            run->d_prefix_gate_b[2 * l] += (float)dgate[2 * b] * sk * (1 - sk);
            run->d_prefix_gate_b[2 * l + 1] += (float)dgate[2 * b + 1] * sv * (1 - sv);
        }
}

static void bert_forward(peftc_model *pm, model_acts *ma, const model_run *run, const int32_t *ids,
                         const int32_t *type_ids, const int *lens, int B, int T)
{
    bert_model *bm = bert_of(pm);
    peftc_model *m = pm;
    bert_acts *a = (bert_acts *)ma;
    const peftc_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, N = B * T;
    float eps = c->layer_norm_eps;
    int train = run && run->train;
    float ph = train ? c->hidden_dropout : 0.0f, pa = train ? c->attention_dropout : 0.0f;
    size_t NC = (size_t)N * C;
    if (run && run->virt) {
        for (int i = 0; i < N; i++) a->ids_clean[i] = ids[i] < 0 ? 0 : ids[i];
        embeddings_forward(a->emb, a->ids_clean, type_ids, bm->wte, bm->wpe, bm->wtt, B, T, C, 0);
        /* virtual tokens: their own word vector, the usual position and type */
        for (int i = 0; i < N; i++) {
            if (ids[i] >= 0) continue;
            const float *vk = run->virt + (size_t)(-ids[i] - 1) * C, *pe = bm->wpe + (size_t)(i % T) * C;
            const float *te = bm->wtt + (size_t)(type_ids ? type_ids[i] : 0) * C;
            float *row = a->emb + (size_t)i * C;
            for (int c2 = 0; c2 < C; c2++) row[c2] = vk[c2] + pe[c2] + te[c2];
        }
    } else {
        embeddings_forward(a->emb, ids, type_ids, bm->wte, bm->wpe, bm->wtt, B, T, C, 0);
    }
    layernorm_forward(a->emb_ln, a->emb_mean, a->emb_rstd, a->emb, bm->emb_ln_w, bm->emb_ln_b, N, C, eps);
    hidden_dropout(run, a->emb_ln, &a->emb_key, ph, NC, B);
    const float *x = a->emb_ln;
    for (int l = 0; l < c->num_layers; l++) {
        if (run && !train && run->rep > 1 && l == run->rep_at && l > 0) {
            /* the copies of a parallel composition part from here (model.h):
             * x is the previous block's output buffer, sized for B*rep */
            float *xw = (float *)x;
            for (int k = 1; k < run->rep; k++) memcpy(xw + (size_t)k * NC, xw, NC * sizeof(float));
            B *= run->rep;
            N = B * T;
            NC = (size_t)N * C;
        }
        bert_layer *W = &bm->layers[l];
        float *const *G = run ? layer_grads(run->grads, l) : NULL;
        /* in inference one activation set is reused */
        bert_layer_acts *A = &a->layer[a->train ? l : 0];
        float *out = l == c->num_layers - 1 ? a->hidden : a->xbuf[l & 1];   /* never x's buffer */
        linear_site(m, run, l, SITE_ATTN_Q, A->q, x, W->wq, W->bq, &W->bf16[0], !(G && G[BL_WQ]), N, C, C);
        linear_site(m, run, l, SITE_ATTN_K, A->k, x, W->wk, W->bk, &W->bf16[1], !(G && G[BL_WK]), N, C, C);
        linear_site(m, run, l, SITE_ATTN_V, A->v, x, W->wv, W->bv, &W->bf16[2], !(G && G[BL_WV]), N, C, C);
        if (run && run->n_prefix) {
            prefix_extend(run, A, x, lens, l, B, T, C, 2 * (size_t)c->num_layers * C);
            attention_forward_prefix(A->ctx, A->probs, A->probs_mask, A->q, A->k_ext, A->v_ext, lens, B, T,
                                     run->n_prefix, C, NH, pa,
                                     pa > 0 ? dropout_key_at(peftc_rng_u64(run->rng), (uint64_t)run->row0 * NH * T * (run->n_prefix + T)) : 0);
        } else if (pa > 0)
            attention_forward_train(A->ctx, A->probs, A->probs_mask, A->q, A->k, A->v, lens, B, T, C, NH,
                                    pa, dropout_key_at(peftc_rng_u64(run->rng), (uint64_t)run->row0 * NH * T * T));
        else
            attention_forward(A->ctx, A->probs, A->q, A->k, A->v, lens, B, T, C, NH);
        block_site(run, l, SITE_ATTN_HEADS, A->ctx, x, N);
        /* res1 = dropout(ctx Wo^T + bo) (+ attn.out deltas) + x, built in place */
        linear_site(m, run, l, SITE_ATTN_O, A->res1, A->ctx, W->wo, W->bo, &W->bf16[3], !(G && G[BL_WO]), N, C, C);
        hidden_dropout(run, A->res1, &A->attn_key, ph, NC, B);
        block_site(run, l, SITE_ATTN_OUT, A->res1, x, N);
        add_inplace(A->res1, x, NC);
        layernorm_forward(a->ln1, A->ln1_mean, A->ln1_rstd, A->res1, W->ln1_w, W->ln1_b, N, C, eps);
        /* res2 = dropout(gelu(ln1 Wi^T + bi) Wf^T + bf) (+ ffn.out deltas) + ln1 */
        if (!bert_of(m)->nf4 && ffn_fused(run, G, l))   /* NF4: through linear_site */
            ffn_fused_forward(m, a, A, W, N);
        else {
            linear_site(m, run, l, SITE_FFN_IN, A->ffn_pre, a->ln1, W->wi, W->bi, &W->bf16[4], !(G && G[BL_WI]), N, C, F);
            gelu_forward(A->ffn_act, A->ffn_pre, (size_t)N * F);
            block_site(run, l, SITE_FFN_ACT, A->ffn_act, A->ffn_act, N);
            linear_site(m, run, l, SITE_FFN_DOWN, A->res2, A->ffn_act, W->wf, W->bf, &W->bf16[5], !(G && G[BL_WF]), N, F, C);
        }
        hidden_dropout(run, A->res2, &A->ffn_key, ph, NC, B);
        block_site(run, l, SITE_FFN_OUT, A->res2, a->ln1, N);
        add_inplace(A->res2, a->ln1, NC);
        layernorm_forward(out, A->ln2_mean, A->ln2_rstd, A->res2, W->ln2_w, W->ln2_b, N, C, eps);
        x = out;
    }
}

/* Backward of linear_site: dh (N,OC) w.r.t. the site's final output;
 * dx (+)= (accumulate 0: overwritten). */
static void linear_site_backward(const peftc_model *m, const model_run *run, int l, site_id site, float *dh,
                                 float *dx, int accumulate, const float *x, const float *w, float *dw, float *db,
                                 matmul_bf16 **bf, uint8_t *bwd_packed, int N, int IC, int OC)
{
    if (run->deltas && delta_count(run->deltas, l, site)) {
        /* a sequential delta turns dh into the gradient of its input, so it runs first */
        if (dx && !accumulate) memset(dx, 0, (size_t)N * IC * sizeof(float));
        accumulate = 1;
        delta_backward(run->deltas, run->pb, l, site, x, dh, dx, N);
    }
    const nf4_tensor *q = site_nf4(m, l, site, !dw);
    if (q) {
        /* frozen NF4 weight: the input gradient through its blocks; a
         * trained bias (BitFit) sums dh over the rows */
        if (dx) nf4_matmul_backward_input(dx, dh, q, N, accumulate);
        if (db) matmul_backward(NULL, NULL, db, dh, x, w, N, IC, OC);
        return;
    }
    matmul_bf16 *wb = bf16_weight_bwd(m, bf, bwd_packed, !dw, w, IC, OC);
    if (!wb || matmul_bf16_backward(dx, db, dh, wb, N, IC, OC, accumulate)) {
        if (dx) matmul_backward_input(dx, dh, w, N, IC, OC, accumulate);
        if (dw || db) matmul_backward(NULL, dw, db, dh, x, w, N, IC, OC);
    }
}

/* Gradient through a residual block output h (+ deltas at a block site) then
 * hidden dropout: dst = the gradient of the block's output before dropout,
 * from dres (the gradient of the residual sum); the site's deltas add their
 * input gradient into dx. */
static void block_site_backward(const model_run *run, int l, site_id site, float *dst, const float *dres,
                                const float *x, float *dx, uint64_t key, float p, size_t NC, int N)
{
    if (run->deltas && delta_count(run->deltas, l, site)) {
        memcpy(dst, dres, NC * sizeof(float));
        delta_backward(run->deltas, run->pb, l, site, x, dst, dx, N);
        dropout_backward_key(dst, dst, run->train ? p : 0.0f, NC, key, 0);
    } else
        dropout_backward_key(dst, dres, run->train ? p : 0.0f, NC, key, 0);
}

static void bert_backward(peftc_model *pm, model_acts *ma, const model_run *run, const int32_t *ids,
                          const int32_t *type_ids, const int *lens, int B, int T, float *d_hidden)
{
    bert_model *bm = bert_of(pm);
    peftc_model *m = pm;
    bert_acts *a = (bert_acts *)ma;
    const peftc_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, N = B * T;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;
    float ph = run->train ? c->hidden_dropout : 0.0f, pa = run->train ? c->attention_dropout : 0.0f;
    float *const *G = run->grads;
    static float *const none[BL_COUNT];   /* a frozen layer's gradient slots */
    int emb_trainable = emb_trains(G);
    int virt_trainable = run->virt && run->d_virt;
    /* dout: the gradient w.r.t. the current layer's output; the layer's input
     * gradient replaces it in the same buffer */
    float *dout = d_hidden;
    for (int l = c->num_layers - 1; l >= 0; l--) {
        bert_layer *W = &bm->layers[l];
        float *const *g = G ? layer_grads(G, l) : none;
        bert_layer_acts *A = &a->layer[l];
        /* the layer input and ln1, recomputed from the saved sums and statistics */
        const float *x = a->emb_ln;
        if (l) {
            const bert_layer *Wp = &bm->layers[l - 1];
            const bert_layer_acts *Ap = &a->layer[l - 1];
            layernorm_apply(a->xbuf[0], Ap->res2, Ap->ln2_mean, Ap->ln2_rstd, Wp->ln2_w, Wp->ln2_b, N, C);
            x = a->xbuf[0];
        }
        layernorm_apply(a->ln1, A->res1, A->ln1_mean, A->ln1_rstd, W->ln1_w, W->ln1_b, N, C);
        /* the layer input's gradient is needed below layer 0 only if something there trains */
        int need_dx = l > 0 || emb_trainable || virt_trainable || run->need_input_grad;
        float *d_ln1 = a->d_a, *d_blk = a->d_b;
        /* out = LN2(res2), res2 = dropout(ffn) + ln1: d_ln1 starts as d_res2 */
        layernorm_backward(d_ln1, g[BL_LN2_W], g[BL_LN2_B], dout, A->res2, W->ln2_w, A->ln2_mean, A->ln2_rstd, N, C, 0);
        block_site_backward(run, l, SITE_FFN_OUT, d_blk, d_ln1, a->ln1, d_ln1, A->ffn_key, ph, NC, N);
        if (!bm->nf4 && ffn_fused(run, G ? g : NULL, l))
            ffn_fused_backward(m, a, A, W, d_blk, d_ln1, N);
        else {
            linear_site_backward(m, run, l, SITE_FFN_DOWN, d_blk, a->d_f, 0, A->ffn_act, W->wf, g[BL_WF], g[BL_BF],
                                 &W->bf16[5], &W->bf16_bwd_packed[5], N, F, C);
            if (run->deltas && delta_count(run->deltas, l, SITE_FFN_ACT))
                delta_backward(run->deltas, run->pb, l, SITE_FFN_ACT, A->ffn_act, a->d_f, NULL, N);
            gelu_backward_inplace(a->d_f, A->ffn_pre, NF);
            linear_site_backward(m, run, l, SITE_FFN_IN, a->d_f, d_ln1, 1, a->ln1, W->wi, g[BL_WI], g[BL_BI],
                                 &W->bf16[4], &W->bf16_bwd_packed[4], N, C, F);
        }
        /* ln1 = LN1(res1), res1 = dropout(attn) + x: d_x starts as d_res1, in dout's buffer */
        float *d_x = dout;
        layernorm_backward(d_x, g[BL_LN1_W], g[BL_LN1_B], d_ln1, A->res1, W->ln1_w, A->ln1_mean, A->ln1_rstd, N, C, 0);
        block_site_backward(run, l, SITE_ATTN_OUT, d_blk, d_x, x, d_x, A->attn_key, ph, NC, N);
        linear_site_backward(m, run, l, SITE_ATTN_O, d_blk, a->d_ctx, 0, A->ctx, W->wo, g[BL_WO], g[BL_BO], &W->bf16[3], &W->bf16_bwd_packed[3], N, C, C);
        if (run->deltas && delta_count(run->deltas, l, SITE_ATTN_HEADS))
            delta_backward(run->deltas, run->pb, l, SITE_ATTN_HEADS, x, a->d_ctx, d_x, N);
        memset(a->d_q, 0, NC * sizeof(float));
        memset(a->d_k, 0, NC * sizeof(float));
        memset(a->d_v, 0, NC * sizeof(float));
        if (run->n_prefix) {
            size_t NK = (size_t)B * (T + run->n_prefix) * C;
            memset(a->d_kext, 0, NK * sizeof(float));
            memset(a->d_vext, 0, NK * sizeof(float));
            attention_backward_prefix(a->d_q, a->d_kext, a->d_vext, a->d_ctx, A->probs, A->probs_mask, A->q, A->k_ext,
                                      A->v_ext, lens, B, T, run->n_prefix, C, NH, pa);
            prefix_extend_backward(run, A, x, lens, l, B, T, C, 2 * (size_t)c->num_layers * C, a->d_kext, a->d_vext,
                                   a->d_k, a->d_v, need_dx ? d_x : NULL, a->d_gate);
        } else if (pa > 0)
            attention_backward_train(a->d_q, a->d_k, a->d_v, a->d_ctx, A->probs, A->probs_mask, A->q, A->k, A->v,
                                     lens, B, T, C, NH, pa);
        else
            attention_backward(a->d_q, a->d_k, a->d_v, a->d_ctx, A->probs, A->q, A->k, A->v, lens, B, T, C, NH);
        float *dxp = need_dx ? d_x : NULL;
        linear_site_backward(m, run, l, SITE_ATTN_Q, a->d_q, dxp, 1, x, W->wq, g[BL_WQ], g[BL_BQ], &W->bf16[0], &W->bf16_bwd_packed[0], N, C, C);
        linear_site_backward(m, run, l, SITE_ATTN_K, a->d_k, dxp, 1, x, W->wk, g[BL_WK], g[BL_BK], &W->bf16[1], &W->bf16_bwd_packed[1], N, C, C);
        linear_site_backward(m, run, l, SITE_ATTN_V, a->d_v, dxp, 1, x, W->wv, g[BL_WV], g[BL_BV], &W->bf16[2], &W->bf16_bwd_packed[2], N, C, C);
        if (run->layer_done) run->layer_done(run->layer_done_ctx, l);   /* layer l's gradients are final */
        if (!need_dx) return;
    }
    /* embeddings: emb_ln = dropout(LN(emb)) */
    dropout_backward_key(dout, dout, ph, NC, a->emb_key, 0);
    if (!emb_trainable && !virt_trainable) return;
    layernorm_backward(a->d_a, G ? G[BT_EMB_LN_W] : NULL, G ? G[BT_EMB_LN_B] : NULL, dout, a->emb, bm->emb_ln_w,
                       a->emb_mean, a->emb_rstd, N, C, 0);
    if (virt_trainable)
        for (int i = 0; i < N; i++) { /* serially: rows of one virtual token add up in a fixed order */
            if (ids[i] >= 0) continue;
            float *dv = run->d_virt + (size_t)(-ids[i] - 1) * C;
            const float *dr = a->d_a + (size_t)i * C;
            for (int c2 = 0; c2 < C; c2++) dv[c2] += dr[c2];
        }
    if (G && (G[BT_WTE] || G[BT_WPE] || G[BT_WTT]))
        embeddings_backward(G[BT_WTE], G[BT_WPE], G[BT_WTT], a->d_a, run->virt ? a->ids_clean : ids, type_ids, B, T, C, 0);
}

/* The per-layer tensors, indexed by BL_*: the order of the tensor list and
 * of the gradient slots. */
static const struct { const char *suffix; size_t off; int ndim, d0_ffn, d1_ffn, bias, norm; } layer_tensors[BL_COUNT] = {
#define LT(i, sfx, f, nd, d0f, d1f, b, nrm) [i] = {sfx, offsetof(bert_layer, f), nd, d0f, d1f, b, nrm}
    LT(BL_WQ, "attention.self.query.weight", wq, 2, 0, 0, 0, 0),   LT(BL_BQ, "attention.self.query.bias", bq, 1, 0, 0, 1, 0),
    LT(BL_WK, "attention.self.key.weight", wk, 2, 0, 0, 0, 0),     LT(BL_BK, "attention.self.key.bias", bk, 1, 0, 0, 1, 0),
    LT(BL_WV, "attention.self.value.weight", wv, 2, 0, 0, 0, 0),   LT(BL_BV, "attention.self.value.bias", bv, 1, 0, 0, 1, 0),
    LT(BL_WO, "attention.output.dense.weight", wo, 2, 0, 0, 0, 0), LT(BL_BO, "attention.output.dense.bias", bo, 1, 0, 0, 1, 0),
    LT(BL_LN1_W, "attention.output.LayerNorm.weight", ln1_w, 1, 0, 0, 0, 1),
    LT(BL_LN1_B, "attention.output.LayerNorm.bias", ln1_b, 1, 0, 0, 1, 1),
    LT(BL_WI, "intermediate.dense.weight", wi, 2, 1, 0, 0, 0),     LT(BL_BI, "intermediate.dense.bias", bi, 1, 1, 0, 1, 0),
    LT(BL_WF, "output.dense.weight", wf, 2, 0, 1, 0, 0),           LT(BL_BF, "output.dense.bias", bf, 1, 0, 0, 1, 0),
    LT(BL_LN2_W, "output.LayerNorm.weight", ln2_w, 1, 0, 0, 0, 1), LT(BL_LN2_B, "output.LayerNorm.bias", ln2_b, 1, 0, 0, 1, 1),
#undef LT
};

static int bert_tensors(peftc_model *pm, model_tensor *refs, int cap)
{
    bert_model *m = bert_of(pm);
    const peftc_config *c = &pm->cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size;
    int n = 0;
#define REF(nm, wp, nd, d0, d1, bias, norm, lay) do { if (n < cap) { \
        model_tensor *r = &refs[n]; snprintf(r->name, sizeof r->name, "%s", nm); \
        r->w = (wp); r->ndim = (nd); r->shape[0] = (d0); r->shape[1] = (d1); r->is_bias = (bias); \
        r->is_norm = (norm); r->layer = (lay); } n++; } while (0)
    REF("embeddings.word_embeddings.weight", &m->wte, 2, c->vocab_size, C, 0, 0, -1);
    REF("embeddings.position_embeddings.weight", &m->wpe, 2, c->max_position, C, 0, 0, -1);
    REF("embeddings.token_type_embeddings.weight", &m->wtt, 2, c->type_vocab_size, C, 0, 0, -1);
    REF("embeddings.LayerNorm.weight", &m->emb_ln_w, 1, C, 0, 0, 1, -1);
    REF("embeddings.LayerNorm.bias", &m->emb_ln_b, 1, C, 0, 1, 1, -1);
    for (int l = 0; l < c->num_layers; l++) {
        char nm[96];
        for (int j = 0; j < BL_COUNT; j++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.%s", l, layer_tensors[j].suffix);
            float **w = (float **)((char *)&m->layers[l] + layer_tensors[j].off);
            int64_t d0 = layer_tensors[j].d0_ffn ? F : C, d1 = layer_tensors[j].ndim == 2 ? (layer_tensors[j].d1_ffn ? F : C) : 0;
            REF(nm, w, layer_tensors[j].ndim, d0, d1, layer_tensors[j].bias, layer_tensors[j].norm, l);
        }
    }
#undef REF
    return n;
}

static peftc_status bert_make_owned(peftc_model *pm, float **w, size_t numel, peftc_error *err)
{
    bert_model *m = bert_of(pm);
    for (int l = 0; m->nf4 && l < pm->cfg.num_layers; l++)
        for (int j = 0; j < 6; j++)
            if (layer_linear(&m->layers[l], j) == w)
                /* the model's directory first: the CLI's one line names a file */
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: layer %d: the base's linear weights are NF4 (--quantize nf4): "
                                  "they cannot be merged into or trained (use a method that leaves them frozen)",
                                  pm->dir ? pm->dir : "model", l);
    for (int l = 0; l < pm->cfg.num_layers; l++)   /* the weight may change: drop the bf16 copies */
        for (int j = 0; j < 6; j++) { matmul_bf16_free(m->layers[l].bf16[j]); m->layers[l].bf16[j] = NULL; m->layers[l].bf16_bwd_packed[j] = 0; }
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == *w) return PEFTC_OK;
    float *p = peftc_alloc_aligned(numel * sizeof(float));
    if (!p) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory copying a weight");
    memcpy(p, *w, numel * sizeof(float));
    peftc_status rc = own(m, p, err);
    if (rc) return rc;
    *w = p;
    return PEFTC_OK;
}

/* Every site exists in every layer: x and h are C wide except around the FFN's inside. */
static int bert_site(const peftc_model *m, int layer, site_id s, int *in, int *out)
{
    const peftc_config *c = &m->cfg;
    if (layer < 0 || layer >= c->num_layers || (int)s < 0 || s >= SITE_COUNT) return 0;
    *in = *out = c->hidden_size;
    if (s == SITE_FFN_IN) *out = c->intermediate_size;
    if (s == SITE_FFN_DOWN) *in = c->intermediate_size;
    if (s == SITE_FFN_ACT) *in = *out = c->intermediate_size;
    return 1;
}

static int bert_linear(peftc_model *pm, int layer, site_id s, float ***w, float ***b)
{
    if (layer < 0 || layer >= pm->cfg.num_layers) return 0;
    bert_layer *L = &bert_of(pm)->layers[layer];
    switch (s) {
    case SITE_ATTN_Q: *w = &L->wq; *b = &L->bq; return 1;
    case SITE_ATTN_K: *w = &L->wk; *b = &L->bk; return 1;
    case SITE_ATTN_V: *w = &L->wv; *b = &L->bv; return 1;
    case SITE_ATTN_O: *w = &L->wo; *b = &L->bo; return 1;
    case SITE_FFN_IN: *w = &L->wi; *b = &L->bi; return 1;
    case SITE_FFN_DOWN: *w = &L->wf; *b = &L->bf; return 1;
    default: return 0;
    }
}

static const float *bert_word_embeddings(const peftc_model *m) { return ((const bert_model *)m)->wte; }

static int bert_pooler(const peftc_model *m, const float **w, const float **b)
{
    *w = ((const bert_model *)m)->pool_w;
    *b = ((const bert_model *)m)->pool_b;
    return 1;
}

/* the position embeddings' first rows: present in every BERT checkpoint */
static const float *bert_weights_sample(const peftc_model *m, size_t *n)
{
    *n = (size_t)m->cfg.hidden_size * 8;
    return ((const bert_model *)m)->wpe;
}

/* peftc quantize: every tensor of the base, the NF4 linear weights as their
 * codes and constants (load_nf4's layout); fp32 tensors first (aligned) */
static peftc_status bert_save_base(peftc_model *pm, const char *path, peftc_error *err)
{
    bert_model *m = bert_of(pm);
    int n = bert_tensors(pm, NULL, 0);
    model_tensor *refs = calloc((size_t)n, sizeof *refs);
    st_write_raw *it = calloc((size_t)n * 4 + 2, sizeof *it);
    char (*names)[128] = calloc((size_t)n * 4 + 2, sizeof *names);
    if (!refs || !it || !names) { free(refs); free(it); free(names); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    bert_tensors(pm, refs, n);
    int k = 0, nl = pm->cfg.num_layers;
    /* pass 0: fp32 tensors and the NF4 fp32 constants; pass 1: the NF4 bytes */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            const nf4_tensor *q = NULL;
            for (int l = 0; m->nf4 && l < nl && !q; l++)
                for (int j = 0; j < 6; j++)
                    if (refs[i].w == layer_linear(&m->layers[l], j)) q = &m->nf4[l * 6 + j];
            if (!q) {
                if (pass) continue;
                it[k] = (st_write_raw){.name = refs[i].name, .dtype = ST_F32, .ndim = refs[i].ndim, .data = *refs[i].w};
                it[k].shape[0] = refs[i].shape[0]; it[k].shape[1] = refs[i].shape[1];
                k++;
                continue;
            }
            int64_t cb, nb, nb2;
            nf4_sizes(q->rows, q->cols, q->double_quant, &cb, &nb, &nb2);
            if (pass == 0) {
                snprintf(names[k], sizeof names[k], "%s.nf4_absmax2", refs[i].name);
                it[k] = (st_write_raw){.name = names[k], .dtype = ST_F32, .ndim = 1, .shape = {nb2}, .data = q->absmax2};
                k++;
                snprintf(names[k], sizeof names[k], "%s.nf4_offset", refs[i].name);
                it[k] = (st_write_raw){.name = names[k], .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = &q->offset};
                k++;
            } else {
                snprintf(names[k], sizeof names[k], "%s.nf4_codes", refs[i].name);
                it[k] = (st_write_raw){.name = names[k], .dtype = ST_U8, .ndim = 2, .shape = {q->rows, q->cols / 2}, .data = q->codes};
                k++;
                snprintf(names[k], sizeof names[k], "%s.nf4_absmax", refs[i].name);
                it[k] = (st_write_raw){.name = names[k], .dtype = ST_U8, .ndim = 1, .shape = {nb}, .data = q->absmax_q};
                k++;
            }
        }
        if (pass == 0 && m->pool_w) {
            it[k++] = (st_write_raw){.name = "pooler.dense.weight", .dtype = ST_F32, .ndim = 2,
                                     .shape = {pm->cfg.hidden_size, pm->cfg.hidden_size}, .data = m->pool_w};
            it[k++] = (st_write_raw){.name = "pooler.dense.bias", .dtype = ST_F32, .ndim = 1,
                                     .shape = {pm->cfg.hidden_size}, .data = m->pool_b};
        }
    }
    const char *meta[] = {"peftc_quantize", "nf4", "nf4_blocksize", "64", "nf4_double_quant", "1",
                          "nf4_layout", "bitsandbytes quantize_4bit: high nibble first; absmax 8-bit blockwise (256) + offset",
                          NULL};
    peftc_status rc = st_write(path, it, k, m->nf4 ? meta : NULL, err);
    free(refs); free(it); free(names);
    return rc;
}

const model_family model_family_bert = {
    .name = "bert",
    .arch = PEFTC_ARCH_BERT,
    .can_replicate = 1,
    .load = bert_load,
    .free = bert_free,
    .acts_init = bert_acts_init,
    .acts_free = bert_acts_free,
    .keep_for = bert_keep_for,
    .forward = bert_forward,
    .backward = bert_backward,
    .hidden = bert_hidden,
    .site = bert_site,
    .linear = bert_linear,
    .make_writable = bert_make_owned,
    .tensors = bert_tensors,
    .word_embeddings = bert_word_embeddings,
    .pooler = bert_pooler,
    .weights_sample = bert_weights_sample,
    .save_base = bert_save_base,
    .peft_prefix = "base_model.model.bert.",
    .pooler_module = "pooler.dense",
    .layer_path = "encoder.layer.%d",
    .site_module = {
        [SITE_ATTN_Q] = "attention.self.query", [SITE_ATTN_K] = "attention.self.key",
        [SITE_ATTN_V] = "attention.self.value", [SITE_ATTN_O] = "attention.output.dense",
        [SITE_FFN_IN] = "intermediate.dense", [SITE_FFN_DOWN] = "output.dense",
        [SITE_ATTN_HEADS] = "attention.heads",   /* peftc's own: no module in BERT */
    },
    .site_target = {
        [SITE_ATTN_Q] = "query", [SITE_ATTN_K] = "key", [SITE_ATTN_V] = "value",
        [SITE_ATTN_O] = "attention.output.dense", [SITE_FFN_IN] = "intermediate.dense", [SITE_FFN_DOWN] = "output.dense",
    },
};
