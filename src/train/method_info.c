/* method_info.c: a method's size and its four design dimensions (He et al.
 * 2022's unified view) read off the built preset, without training. A sweep
 * uses the counts to turn a budget (% of the base model) into a rank, prefix
 * length or bottleneck, and the dimensions to group runs in its report. */
#include "train/task.h"

#include <stdarg.h>
#include <string.h>

void method_args_from_opts(const peftc_train_opts *o, method_args *ma)
{
    *ma = (method_args){.r = o->lora_r, .alpha = o->lora_alpha, .lora_dropout = o->lora_dropout,
                        .lora_dropout_set = o->lora_dropout_given, .rslora = o->rslora, .targets = o->lora_targets, .site = o->site, .scale = o->scale, .learned_scale = o->learned_scale,
                        .deltas = o->deltas, .n_deltas = o->n_deltas, .num_virtual = o->num_virtual,
                        .template_text = o->template_text, .encoder = o->encoder, .encoder_hidden = o->encoder_hidden,
                        .prefix_len = o->prefix_len, .prefix_projection = o->prefix_projection, .adalora = &o->adalora,
                        .fuse_adapters = o->fuse_adapters, .fusion_temperature = o->fusion_temperature};
}

/* Appends value to a "+"-joined list unless it is there already. */
static void add_value(char *list, size_t cap, const char *value)
{
    size_t n = strlen(value), len = strlen(list);
    for (const char *p = list; (p = strstr(p, value)); p += n)
        if ((p == list || p[-1] == '+') && (p[n] == 0 || p[n] == '+')) return;
    snprintf(list + len, cap - len, "%s%s", len ? "+" : "", value);
}

static void appendf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *out, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(out);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + len, cap - len, fmt, ap);
    va_end(ap);
}

/* The unified view's "modified representation" is coarse: the attention
 * sub-layer (its projections, heads or output) or the FFN. */
static const char *site_representation(site_id s)
{
    switch (s) {
    case SITE_ATTN_Q: case SITE_ATTN_K: case SITE_ATTN_V: case SITE_ATTN_O: case SITE_ATTN_OUT: case SITE_ATTN_HEADS:
        return "attention";
    default:
        return "FFN";
    }
}

static const char *compose_name(delta_compose c)
{
    switch (c) {
    case COMPOSE_ADD: return "add";
    case COMPOSE_SCALE: return "scaled";
    case COMPOSE_LEARNED_SCALE: return "learned-scale";
    case COMPOSE_GATE: return "gated";
    }
    return "add";
}

static void describe(const method_opts *mo, peftc_method_info *in)
{
    char *ins = in->insertion, *rep = in->representation, *com = in->composition, *fun = in->functional_form;
    size_t ci = sizeof in->insertion, cr = sizeof in->representation, cc = sizeof in->composition, cf = sizeof in->functional_form;
    if (mo->base == BASE_ALL) {
        add_value(ins, ci, "weights"); add_value(rep, cr, "all weights"); add_value(com, cc, "replace"); add_value(fun, cf, "full");
        appendf(in->spec, sizeof in->spec, "every weight; ");
    } else if (mo->base == BASE_BIAS) {
        add_value(ins, ci, "weights"); add_value(rep, cr, "biases"); add_value(com, cc, "add"); add_value(fun, cf, "bias");
        appendf(in->spec, sizeof in->spec, "biases; ");
    }
    if (mo->train_norms) appendf(in->spec, sizeof in->spec, "layer norms; ");
    if (mo->lora || mo->adalora) {
        /* AdaLoRA is LoRA's place in the design space with an SVD form whose
         * rank is pruned while training: counted at init_r */
        if (mo->adalora)
            appendf(in->spec, sizeof in->spec, "AdaLoRA r=%d pruned to %d on average, alpha=%g, on", mo->ada.init_r, mo->ada.target_r,
                    (double)mo->alpha);
        else
            appendf(in->spec, sizeof in->spec, "LoRA r=%d alpha=%g%s on", mo->r, (double)mo->alpha, mo->rslora ? " (rs)" : "");
        for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s)) {
            if (!(mo->targets & (1u << s))) continue;
            appendf(in->spec, sizeof in->spec, " %s", site_name((site_id)s));
            add_value(rep, cr, site_representation((site_id)s));
        }
        appendf(in->spec, sizeof in->spec, "; ");
        add_value(ins, ci, "parallel"); add_value(com, cc, "scaled"); add_value(fun, cf, "identity");
    }
    for (int k = 0; k < mo->n_deltas; k++) {
        const delta_spec *d = &mo->deltas[k];
        add_value(rep, cr, site_representation(d->site));
        if (d->kind == DELTA_SCALE) {
            /* (IA)^3 rescales h itself: it reads h (sequential) and multiplies */
            add_value(ins, ci, "sequential"); add_value(com, cc, "multiply"); add_value(fun, cf, "scale vector");
            appendf(in->spec, sizeof in->spec, "scale %s; ", site_name(d->site));
            continue;
        }
        add_value(ins, ci, d->insert == INSERT_PARALLEL ? "parallel" : "sequential");
        add_value(com, cc, compose_name(d->compose));
        add_value(fun, cf, act_name(d->act));
        appendf(in->spec, sizeof in->spec, "%s %s r=%d%s %s", site_name(d->site), d->insert == INSERT_PARALLEL ? "parallel" : "sequential",
                d->r, d->heads > 0 ? " per head" : "", act_name(d->act));
        if (d->compose == COMPOSE_SCALE || d->compose == COMPOSE_LEARNED_SCALE)
            appendf(in->spec, sizeof in->spec, " %s s=%g", compose_name(d->compose), (double)d->scale);
        else if (d->compose == COMPOSE_GATE) appendf(in->spec, sizeof in->spec, " gated");
        appendf(in->spec, sizeof in->spec, "; ");
    }
    if (mo->prefix.n > 0) {
        /* prefix tuning as a delta: softmax over the prefix keys, parallel to
         * the heads, mixed in by the softmax mass (a gate) */
        add_value(ins, ci, "parallel"); add_value(rep, cr, "attention"); add_value(com, cc, "gated"); add_value(fun, cf, "softmax");
        appendf(in->spec, sizeof in->spec, "prefix n=%d%s%s; ", mo->prefix.n, mo->prefix.project ? " (MLP while training)" : "",
                mo->prefix.gate ? " gated" : "");
    }
    if (mo->prompt.n_virtual > 0) {
        add_value(ins, ci, "input"); add_value(rep, cr, "input embeddings"); add_value(com, cc, "concat"); add_value(fun, cf, "softmax");
        appendf(in->spec, sizeof in->spec, "%d virtual tokens%s; ", mo->prompt.n_virtual,
                mo->prompt.encoder == PROMPT_ENC_MLP ? " (MLP encoder)" : mo->prompt.encoder == PROMPT_ENC_LSTM ? " (LSTM encoder)" : "");
    }
    size_t n = strlen(in->spec);
    if (n >= 2 && in->spec[n - 2] == ';') in->spec[n - 2] = 0;   /* the last separator */
}

peftc_status peftc_method_info_get(peftc_model *m, const peftc_train_opts *o, int num_labels,
                                   peftc_method_info *info, peftc_error *err)
{
    memset(info, 0, sizeof *info);
    if (!m || !o || !o->method) return peftc_fail(err, PEFTC_ERR_INPUT, "peftc_method_info_get: a model and a method are required");
    method_args ma;
    method_args_from_opts(o, &ma);
    method_opts mo;
    peftc_status rc = method_build(o->method, &ma, &m->cfg, &mo, err);
    if (rc) return rc;
    if ((rc = task_count_params(m, &mo, num_labels, &info->trainable_params, err))) return rc;
    /* the saved form: prefixes as plain key/value vectors, virtual tokens as
     * plain vectors (what task_save_adapter folds the MLPs into) */
    method_opts saved = mo;
    saved.prefix.project = 0;
    saved.prompt.encoder = PROMPT_ENC_NONE;
    if ((rc = task_count_params(m, &saved, num_labels, &info->saved_params, err))) return rc;
    info->total_params = peftc_model_param_count(m);
    info->lr = o->lr > 0 ? o->lr : method_default_lr(&mo);
    describe(&mo, info);
    return PEFTC_OK;
}

peftc_status peftc_data_num_labels(const char *path, const char *text_col, const char *pair_col, const char *label_col,
                                   int *num_labels, peftc_error *err)
{
    *num_labels = 0;
    data_cols cols = {text_col, pair_col, label_col};
    dataset d = {0};
    label_set ls = {0};
    peftc_status rc = data_load(path, &cols, 1, &d, err);
    if (!rc) rc = labels_from_data(&d, &ls, err);
    if (!rc) *num_labels = ls.n;
    labels_free(&ls);
    data_free(&d);
    return rc;
}
