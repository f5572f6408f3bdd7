/* methods.c: full fine-tuning, BitFit and LoRA as presets. */
#include "peft/methods.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *method_name(method_kind k)
{
    switch (k) {
    case METHOD_FULL: return "full";
    case METHOD_LORA: return "lora";
    case METHOD_BITFIT: return "bitfit";
    }
    return "?";
}

int method_parse(const char *name, method_kind *k)
{
    for (int i = METHOD_FULL; i <= METHOD_BITFIT; i++)
        if (!strcmp(name, method_name((method_kind)i))) { *k = (method_kind)i; return 1; }
    return 0;
}

void method_defaults(method_opts *mo, method_kind k)
{
    memset(mo, 0, sizeof *mo);
    mo->kind = k;
    /* HF PEFT's LoraConfig defaults */
    mo->r = 8;
    mo->alpha = 8;
    mo->dropout = 0.0f;
    mo->targets = (1u << SITE_ATTN_Q) | (1u << SITE_ATTN_V);
}

static const struct { const char *name; site_id site; } lora_aliases[] = {
    {"query", SITE_ATTN_Q}, {"key", SITE_ATTN_K}, {"value", SITE_ATTN_V},
    {"attention.output.dense", SITE_ATTN_O}, {"intermediate.dense", SITE_FFN_IN}, {"output.dense", SITE_FFN_DOWN},
    {"attn_out", SITE_ATTN_O}, {"ffn_in", SITE_FFN_IN}, {"ffn_out", SITE_FFN_DOWN},
};

const char *lora_module_name(site_id s)
{
    for (size_t i = 0; i < 6; i++) if (lora_aliases[i].site == s) return lora_aliases[i].name;
    return NULL;
}

peftc_status lora_parse_targets(const char *list, unsigned *mask, peftc_error *err)
{
    *mask = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        site_id s;
        int found = 0;
        for (size_t i = 0; i < sizeof lora_aliases / sizeof *lora_aliases && !found; i++)
            if (!strcmp(tok, lora_aliases[i].name)) { s = lora_aliases[i].site; found = 1; }
        if (!found && site_parse(tok, &s) && s <= SITE_FFN_DOWN) found = 1;
        if (!found)
            return peftc_fail(err, PEFTC_ERR_INPUT, "--target-modules: unknown module '%s' (use query, key, value, "
                              "attention.output.dense, intermediate.dense, output.dense)", tok);
        *mask |= 1u << s;
    }
    if (!*mask) return peftc_fail(err, PEFTC_ERR_INPUT, "--target-modules: no module given");
    return PEFTC_OK;
}

float lora_scale(const method_opts *mo)
{
    return mo->rslora ? mo->alpha / sqrtf((float)mo->r) : mo->alpha / (float)mo->r;
}

/* The (in, out) widths of a linear site. */
static void site_dims(const peftc_config *c, site_id s, int *in, int *out)
{
    *in = *out = c->hidden_size;
    if (s == SITE_FFN_IN) *out = c->intermediate_size;
    if (s == SITE_FFN_DOWN) *in = c->intermediate_size;
}

static int base_trains(const method_opts *mo, const bert_tensor_ref *r)
{
    return mo->kind == METHOD_FULL || (mo->kind == METHOD_BITFIT && r->is_bias);
}

peftc_status method_declare(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds, peftc_error *err)
{
    const peftc_config *c = &m->cfg;
    bert_grads tmp = {0};
    bert_layer *gl = calloc((size_t)c->num_layers, sizeof *gl);
    if (!gl) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    tmp.layers = gl;
    int n = bert_tensors(m, &tmp, NULL, 0);
    bert_tensor_ref *refs = calloc((size_t)n, sizeof *refs);
    if (!refs) { free(gl); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    bert_tensors(m, &tmp, refs, n);
    for (int i = 0; i < n; i++) {
        if (!base_trains(mo, &refs[i])) continue;
        char name[PARAM_NAME_MAX];
        snprintf(name, sizeof name, PEFT_PREFIX "%s", refs[i].name);
        if (params_add(pb, name, refs[i].ndim, refs[i].shape, refs[i].is_bias || refs[i].ndim == 1) < 0) {
            free(refs); free(gl);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
    }
    free(refs);
    free(gl);
    if (mo->kind != METHOD_LORA) return PEFTC_OK;
    if (mo->r <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--r must be positive, got %d", mo->r);
    for (int l = 0; l < c->num_layers; l++)
        for (int s = 0; s <= SITE_FFN_DOWN; s++) {
            if (!(mo->targets & (1u << s))) continue;
            int in, out;
            site_dims(c, (site_id)s, &in, &out);
            if (mo->r > (in < out ? in : out))
                return peftc_fail(err, PEFTC_ERR_INPUT, "--r %d is larger than the width %d of %s", mo->r, in < out ? in : out,
                                  lora_module_name((site_id)s));
            delta_spec sp = {.site = (site_id)s, .insert = INSERT_PARALLEL, .act = ACT_IDENTITY,
                             .compose = COMPOSE_SCALE, .scale = lora_scale(mo), .dropout = mo->dropout,
                             .r = mo->r, .bias = 0, .init_lora = 1, .lora_names = 1};
            char prefix[PARAM_NAME_MAX];
            const char *mod = lora_module_name((site_id)s);
            snprintf(prefix, sizeof prefix, PEFT_PREFIX "encoder.layer.%d.%s%s", l,
                     s <= SITE_ATTN_V ? "attention.self." : "", mod);
            peftc_status rc = delta_add(ds, pb, l, in, out, &sp, prefix, err);
            if (rc) return rc;
        }
    return delta_index(ds, c->num_layers, err);
}

peftc_status method_bind(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds,
                         bert_grads *g, peftc_rng *rng, peftc_error *err)
{
    int n = bert_tensors(m, g, NULL, 0);
    bert_tensor_ref *refs = calloc((size_t)n, sizeof *refs);
    if (!refs) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    bert_tensors(m, g, refs, n);
    for (int i = 0; i < n; i++) {
        *refs[i].g = NULL;
        if (!base_trains(mo, &refs[i])) continue;
        char name[PARAM_NAME_MAX];
        snprintf(name, sizeof name, PEFT_PREFIX "%s", refs[i].name);
        int k = params_find(pb, name);
        if (k < 0) { free(refs); return peftc_fail(err, PEFTC_ERR_INPUT, "internal: %s not declared", name); }
        float *dst = params_value(pb, k);
        memcpy(dst, *refs[i].w, pb->e[k].numel * sizeof(float));
        *refs[i].w = dst;   /* the model now reads the trainable copy */
        *refs[i].g = params_grad(pb, k);
    }
    free(refs);
    if (ds) delta_init_params(ds, pb, rng);
    return PEFTC_OK;
}

static float **site_weight(bert_layer *L, site_id s)
{
    switch (s) {
    case SITE_ATTN_Q: return &L->wq;
    case SITE_ATTN_K: return &L->wk;
    case SITE_ATTN_V: return &L->wv;
    case SITE_ATTN_O: return &L->wo;
    case SITE_FFN_IN: return &L->wi;
    case SITE_FFN_DOWN: return &L->wf;
    default: return NULL;
    }
}

peftc_status lora_merge(peftc_model *m, const method_opts *mo, const param_block *pb, const delta_set *ds,
                        int sign, peftc_error *err)
{
    if (mo->kind != METHOD_LORA) return PEFTC_OK;
    for (int i = 0; i < ds->n; i++) {
        const delta *d = &ds->d[i];
        float **w = site_weight(&m->layers[d->layer], d->spec.site);
        if (!w) continue;
        peftc_status rc = bert_make_owned(m, w, (size_t)d->in * d->out, err);
        if (rc) return rc;
        /* W (out,in) += sign * s * B (out,r) @ A (r,in) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->out, d->in, d->spec.r,
                    (float)sign * d->spec.scale, params_value(pb, d->p_up), d->spec.r,
                    params_value(pb, d->p_down), d->in, 1.0f, *w, d->in);
    }
    return PEFTC_OK;
}
