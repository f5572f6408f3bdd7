/* methods.c: full fine-tuning, BitFit and LoRA as presets. */
#include "peft/methods.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* peftc's own names of linear sites, beside site_name's and the families' */
static const struct { const char *name; site_id site; } lora_aliases[] = {
    {"attn_out", SITE_ATTN_O}, {"ffn_in", SITE_FFN_IN}, {"ffn_out", SITE_FFN_DOWN},
};

const char *lora_module_name(const model_family *f, site_id s)
{
    return s < SITE_COUNT ? f->site_target[s] : NULL;
}

/* A family's target_modules name of a linear site; 0 if no family has it. */
static int family_target(const char *name, site_id *out)
{
    for (int i = 0; model_families[i]; i++)
        for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s)) {
            const char *t = model_families[i]->site_target[s];
            if (t && !strcmp(t, name)) { *out = (site_id)s; return 1; }
        }
    return 0;
}

peftc_status lora_parse_targets(const char *list, unsigned *mask, peftc_error *err)
{
    *mask = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        site_id s;
        int found = family_target(tok, &s);
        for (size_t i = 0; i < sizeof lora_aliases / sizeof *lora_aliases && !found; i++)
            if (!strcmp(tok, lora_aliases[i].name)) { s = lora_aliases[i].site; found = 1; }
        if (!found && site_parse(tok, &s) && site_is_linear(s)) found = 1;
        if (!found) {
            char names[512] = "";
            size_t len = 0;
            for (int i = 0; model_families[i]; i++)
                for (int k = 0; k < SITE_COUNT; k++) if (site_is_linear(k))
                    if (model_families[i]->site_target[k] && len < sizeof names)
                        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "",
                                                model_families[i]->site_target[k]);
            return peftc_fail(err, PEFTC_ERR_INPUT, "--target-modules: unknown module '%s' (use %s)", tok, names);
        }
        *mask |= 1u << s;
    }
    if (!*mask) return peftc_fail(err, PEFTC_ERR_INPUT, "--target-modules: no module given");
    return PEFTC_OK;
}

/* --target-modules of a model: PEFT's "all-linear" is every linear layer of
 * the blocks the family names (the output head is not one of them). */
static peftc_status lora_targets_for(const char *list, const peftc_config *cfg, unsigned *mask, peftc_error *err)
{
    if (list && !strcmp(list, "all-linear")) {
        const model_family *f = model_family_for_arch(cfg->arch);
        *mask = 0;
        for (int s = 0; f && s < SITE_COUNT; s++)
            if (site_is_linear(s) && f->site_target[s]) *mask |= 1u << s;
        if (!*mask) return peftc_fail(err, PEFTC_ERR_INPUT, "--target-modules all-linear: the model has no linear layers");
        return PEFTC_OK;
    }
    return lora_parse_targets(list ? list : "query,value", mask, err);
}

float lora_scale(const method_opts *mo)
{
    return mo->rslora ? mo->alpha / sqrtf((float)mo->r) : mo->alpha / (float)mo->r;
}

float adalora_scale(const method_opts *mo)
{
    /* ranknum is a float32 parameter: r + 1e-5 rounded to float first */
    return (float)(mo->alpha / (double)((float)mo->r + 1e-5f));
}

int adalora_key_site(const char *key, int *layer, site_id *site)
{
    char full[PARAM_NAME_MAX * 2];
    /* the key is the parameter's name inside PEFT's wrapper, base_model.model. */
    snprintf(full, sizeof full, "base_model.model.%s", key);
    size_t n = strlen(full), tail = strlen(".lora_E");
    if (n <= tail || strcmp(full + n - tail, ".lora_E")) return 0;
    full[n - tail] = 0;
    for (int i = 0; model_families[i]; i++) {
        const model_family *f = model_families[i];
        const char *pct = f->layer_path ? strstr(f->layer_path, "%d") : NULL;
        size_t lp = strlen(f->peft_prefix);
        if (!pct || strncmp(full, f->peft_prefix, lp)) continue;
        const char *p = full + lp;
        size_t pre = (size_t)(pct - f->layer_path);
        if (strncmp(p, f->layer_path, pre)) continue;
        p += pre;
        char *end;
        long l = strtol(p, &end, 10);
        if (end == p || l < 0 || l >= ADALORA_MAX_LAYERS) continue;
        const char *post = pct + 2;
        if (strncmp(end, post, strlen(post)) || end[strlen(post)] != '.') continue;
        const char *mod = end + strlen(post) + 1;
        for (int s = 0; s < SITE_COUNT; s++) if (site_is_linear(s))
            if (f->site_module[s] && !strcmp(mod, f->site_module[s])) { *layer = (int)l; *site = (site_id)s; return 1; }
    }
    return 0;
}

static int base_trains(const method_opts *mo, const model_tensor *r)
{
    if (mo->base == BASE_ALL) return 1;
    if (mo->base == BASE_BIAS && r->is_bias) return 1;
    return mo->train_norms && r->is_norm && r->layer >= 0;   /* the blocks' norms (Houlsby) */
}

/* The model's tensor list (freed by the caller); NULL when out of memory. */
static model_tensor *tensor_list(peftc_model *m, int *n)
{
    *n = m->family->tensors(m, NULL, 0);
    model_tensor *refs = calloc((size_t)(*n > 0 ? *n : 1), sizeof *refs);
    if (refs) m->family->tensors(m, refs, *n);
    return refs;
}

int method_grad_slots(peftc_model *m) { return m->family->tensors(m, NULL, 0); }

/* "<peft_prefix><layer path>.<module>" of a module in block l; module NULL: the block itself */
static void module_name(const model_family *f, int l, const char *module, char *out, size_t cap)
{
    char layer[128];
    snprintf(layer, sizeof layer, f->layer_path, l);
    /* names longer than cap are cut (params_add's names are bounded the same way) */
    if (snprintf(out, cap, "%s%s%s%s", f->peft_prefix, layer, module ? "." : "", module ? module : "") >= (int)cap)
        out[cap - 1] = 0;
}

peftc_status method_declare(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds, peftc_error *err)
{
    const peftc_config *c = &m->cfg;
    const model_family *f = m->family;
    int n;
    model_tensor *refs = tensor_list(m, &n);
    if (!refs) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        if (!base_trains(mo, &refs[i])) continue;
        char name[PARAM_NAME_MAX];
        snprintf(name, sizeof name, "%s%s", f->peft_prefix, refs[i].name);
        if (params_add(pb, name, refs[i].ndim, refs[i].shape, refs[i].is_bias || refs[i].ndim == 1) < 0) {
            free(refs);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
        params_set_layer(pb, pb->n - 1, refs[i].layer);   /* its block's backward writes its gradient */
    }
    free(refs);
    for (int l = 0; l < c->num_layers; l++) {
        if (mo->lora || mo->adalora) {
            for (int st = 0; st < SITE_COUNT; st++) if (site_is_linear(st)) {
                if (!(mo->targets & (1u << st))) continue;
                int in, out;
                if (!f->site(m, l, (site_id)st, &in, &out) || !f->site_module[st])
                    return peftc_fail(err, PEFTC_ERR_INPUT, "LoRA target %s: a %s model has no such linear layer",
                                      site_name((site_id)st), f->name);
                int r_kept = mo->r;   /* a loaded AdaLoRA adapter: the module's kept triplets (0: no module) */
                if (mo->adalora && mo->ada_ranks) {
                    if (l >= ADALORA_MAX_LAYERS)
                        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "AdaLoRA adapters of more than %d layers", ADALORA_MAX_LAYERS);
                    if ((r_kept = mo->ada_rank[l][st]) == 0) continue;
                    if (r_kept > mo->r) return peftc_fail(err, PEFTC_ERR_FORMAT, "rank_pattern: %d kept triplets of init_r %d", r_kept, mo->r);
                }
                if (mo->r <= 0 || mo->r > (in < out ? in : out))
                    return peftc_fail(err, PEFTC_ERR_INPUT, "%s %d must be in [1, %d], the width of %s",
                                      mo->adalora ? "--init-r" : "--r", mo->r,
                                      in < out ? in : out, lora_module_name(f, (site_id)st));
                delta_spec sp = {.kind = DELTA_BOTTLENECK, .site = (site_id)st, .insert = INSERT_PARALLEL,
                                 .act = ACT_IDENTITY, .compose = COMPOSE_SCALE, .scale = lora_scale(mo),
                                 .dropout = mo->dropout, .r = mo->r, .bias = 0, .init_lora = 1, .lora_names = 1};
                if (mo->adalora) { sp.kind = DELTA_SVD; sp.scale = adalora_scale(mo); sp.r = r_kept; }
                char prefix[PARAM_NAME_MAX];
                module_name(f, l, f->site_module[st], prefix, sizeof prefix);
                peftc_status rc = delta_add(ds, pb, l, in, out, &sp, prefix, err);
                if (rc) return rc;
            }
        }
        int at_site[SITE_COUNT] = {0};
        for (int k = 0; k < mo->n_deltas; k++) {
            const delta_spec *sp = &mo->deltas[k];
            int in, out;
            if (!f->site(m, l, sp->site, &in, &out))
                return peftc_fail(err, PEFTC_ERR_INPUT, "delta at %s: a %s model has no such site", site_name(sp->site), f->name);
            int width = sp->insert == INSERT_PARALLEL ? (in < out ? in : out) : out;
            if (sp->kind == DELTA_BOTTLENECK && sp->heads > 0) {
                if (out % sp->heads)
                    return peftc_fail(err, PEFTC_ERR_INPUT, "delta at %s: width %d is not divisible by heads=%d", site_name(sp->site), out, sp->heads);
                width = out / sp->heads;
            }
            if (sp->kind == DELTA_BOTTLENECK && (sp->r <= 0 || sp->r > width))
                return peftc_fail(err, PEFTC_ERR_INPUT, "delta at %s: r=%d must be in [1, %d], the width there", site_name(sp->site), sp->r, width);
            if (sp->kind == DELTA_BOTTLENECK && sp->site == SITE_FFN_ACT)
                return peftc_fail(err, PEFTC_ERR_INPUT, "site ffn.act takes only kind=scale deltas ((IA)^3); put bottlenecks at ffn.in, ffn.down or ffn.out");
            /* ffn.in and ffn.down scale a projection's output as attn.k does (AdapterHub's (IA)^3 on
             * intermediate.dense / output.dense); merge folds them into W's rows and bias alike */
            if (sp->kind == DELTA_SCALE && !(sp->site == SITE_ATTN_K || sp->site == SITE_ATTN_V || sp->site == SITE_ATTN_Q ||
                                             sp->site == SITE_FFN_ACT || sp->site == SITE_ATTN_HEADS || sp->site == SITE_FFN_IN ||
                                             sp->site == SITE_FFN_DOWN))
                return peftc_fail(err, PEFTC_ERR_INPUT, "a scale delta goes at attn.q, attn.k, attn.v, attn.heads, ffn.in, ffn.down or ffn.act, not %s", site_name(sp->site));
            char prefix[PARAM_NAME_MAX];
            if (sp->kind == DELTA_SCALE) { /* PEFT's (IA)^3 key names: ffn.act's vector sits on the down projection's input */
                const char *mod = f->site_module[sp->site == SITE_FFN_ACT ? SITE_FFN_DOWN : sp->site];
                if (!mod) return peftc_fail(err, PEFTC_ERR_INPUT, "scale delta at %s: a %s model has no module there", site_name(sp->site), f->name);
                module_name(f, l, mod, prefix, sizeof prefix);
            } else {
                char dname[64];
                snprintf(dname, sizeof dname, "delta.%s.%d", site_name(sp->site), at_site[sp->site]);
                module_name(f, l, dname, prefix, sizeof prefix);
            }
            at_site[sp->site]++;
            peftc_status rc = delta_add(ds, pb, l, in, out, sp, prefix, err);
            if (rc) return rc;
        }
    }
    return delta_index(ds, c->num_layers, err);
}

peftc_status method_bind(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds,
                         float **grads, peftc_rng *rng, peftc_error *err)
{
    int n;
    model_tensor *refs = tensor_list(m, &n);
    if (!refs) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        grads[i] = NULL;
        if (!base_trains(mo, &refs[i])) continue;
        char name[PARAM_NAME_MAX];
        snprintf(name, sizeof name, "%s%s", m->family->peft_prefix, refs[i].name);
        int k = params_find(pb, name);
        if (k < 0) { free(refs); return peftc_fail(err, PEFTC_ERR_INPUT, "internal: %s not declared", name); }
        float *dst = params_value(pb, k);
        memcpy(dst, *refs[i].w, pb->e[k].numel * sizeof(float));
        *refs[i].w = dst;   /* the model now reads the trainable copy */
        grads[i] = params_grad(pb, k);
    }
    free(refs);
    if (ds) delta_init_params(ds, pb, rng);
    return PEFTC_OK;
}

int method_mergeable(const method_opts *mo)
{
    for (int k = 0; k < mo->n_deltas; k++)
        if (mo->deltas[k].kind != DELTA_SCALE || mo->deltas[k].site == SITE_ATTN_HEADS) return 0;
    return 1;
}

peftc_status method_merge(peftc_model *m, const method_opts *mo, const param_block *pb, const delta_set *ds,
                          int sign, peftc_error *err)
{
    if (!method_mergeable(mo))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "method %s has deltas that cannot be merged into the weights", mo->name);
    const model_family *f = m->family;
    for (int i = 0; i < ds->n; i++) {
        const delta *d = &ds->d[i];
        peftc_status rc;
        float **w, **b;
        if (d->spec.kind == DELTA_SVD) {
            if (!f->linear(m, d->layer, d->spec.site, &w, &b)) continue;
            if ((rc = f->make_writable(m, w, (size_t)d->in * d->out, err))) return rc;
            /* W (out,in) += sign * s * B (out,r) @ (A * E) (r,in): one rank-1 term per triplet */
            const float *A = params_value(pb, d->p_down), *B = params_value(pb, d->p_up), *E = params_value(pb, d->p_sv);
            for (int k = 0; k < d->spec.r; k++)
                if (E[k] != 0.0f)
                    cblas_sger(CblasRowMajor, d->out, d->in, (float)sign * d->spec.scale * E[k], B + k, d->spec.r,
                               A + (size_t)k * d->in, 1, *w, d->in);
            continue;
        }
        if (d->spec.kind == DELTA_BOTTLENECK) {
            if (!f->linear(m, d->layer, d->spec.site, &w, &b)) continue;
            if ((rc = f->make_writable(m, w, (size_t)d->in * d->out, err))) return rc;
            /* W (out,in) += sign * s * B (out,r) @ A (r,in) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->out, d->in, d->spec.r,
                        (float)sign * d->spec.scale, params_value(pb, d->p_up), d->spec.r,
                        params_value(pb, d->p_down), d->in, 1.0f, *w, d->in);
            continue;
        }
        const float *l = params_value(pb, d->p_vec);
        if (d->spec.site == SITE_FFN_ACT) { /* scales the down projection's inputs: its columns */
            int C, F;
            if (!f->linear(m, d->layer, SITE_FFN_DOWN, &w, &b) || !f->site(m, d->layer, SITE_FFN_DOWN, &F, &C))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "a %s model has no down projection to merge ffn.act into", f->name);
            if ((rc = f->make_writable(m, w, (size_t)C * F, err))) return rc;
            float *wf = *w;
            for (int o = 0; o < C; o++)
                for (int j = 0; j < F; j++) wf[(size_t)o * F + j] = sign > 0 ? wf[(size_t)o * F + j] * l[j] : wf[(size_t)o * F + j] / l[j];
        } else { /* scales the projection's outputs: rows of W and the bias */
            if (!f->linear(m, d->layer, d->spec.site, &w, &b))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "a %s model has no linear layer at %s to merge into", f->name, site_name(d->spec.site));
            if ((rc = f->make_writable(m, w, (size_t)d->in * d->out, err)) || (*b && (rc = f->make_writable(m, b, (size_t)d->out, err)))) return rc;
            for (int o = 0; o < d->out; o++) {
                float s = sign > 0 ? l[o] : 1.0f / l[o];
                for (int j = 0; j < d->in; j++) (*w)[(size_t)o * d->in + j] *= s;
                if (*b) (*b)[o] *= s;
            }
        }
    }
    return PEFTC_OK;
}

static int imax(int a, int b) { return a > b ? a : b; }

static delta_spec adapter_spec(site_id site, delta_insert ins, delta_act act, int r)
{
    delta_spec sp = {.kind = DELTA_BOTTLENECK, .site = site, .insert = ins, .act = act, .compose = COMPOSE_ADD,
                     .scale = 1.0f, .r = r, .bias = 1, .init_lora = 0};
    return sp;
}

/* lr: the default learning rate (AdamW, linear decay after 6% warm-up) and
 * where it comes from. The papers' rates, moved towards the high end of their
 * ranges where they trained for many epochs: a default must learn within a
 * few hundred steps (issue 13: at 5e-4 prompt tuning, P-tuning v2 and (IA)^3
 * stayed at chance after 300 steps of SST-2). */
static const struct { const char *name, *expands, *formula; float lr; const char *lr_source; } presets[] = {
    {"full", "every base weight trains", "all parameters", 2e-5f, "BERT/RoBERTa fine-tuning, 1e-5..5e-5"},
    {"bitfit", "every bias and LayerNorm bias trains", "sum of bias sizes", 1e-3f, "Ben Zaken et al., 1e-4..1e-3"},
    {"qlora", "LoRA on every linear layer (r 64, alpha 16, dropout 0.1) of an NF4 base (double quantised, as bitsandbytes)", "L * 6 * r * (in + out)", 2e-4f, "Dettmers et al. (QLoRA), 2e-4 for small models"},
    {"lora", "delta at each target linear: parallel, identity, scale alpha/r (query,value by default)", "L * targets * r * (in + out)", 5e-4f, "Hu et al., RoBERTa-base GLUE 4e-4..5e-4"},
    {"adalora", "SVD deltas P diag(E) Q at each target linear (query,value by default), init_r 12 pruned to an average target_r 8 "
                "by PEFT's RankAllocator (--init-r --target-r --tinit --tfinal --delta-t --beta1 --beta2 --orth-reg-weight --total-step)",
     "L * targets * init_r * (in + out + 1) while training; the kept triplets saved", 5e-4f, "Zhang et al. (AdaLoRA), 5e-4..1e-3"},
    {"ia3", "scale deltas at attn.k, attn.v, ffn.act (init 1, mergeable)", "L * (2d + d_ff)", 3e-2f, "Liu et al. (T-Few) 3e-3 over 1k steps; the SST-2 sweep's best of 1e-3..3e-2 at 160 steps"},
    {"adapter-houlsby", "sequential silu bottlenecks at attn.out and ffn.out, r = d/16; layer LayerNorms train", "L * (2 * (2rd + r + d) + 4d)", 1e-3f, "Houlsby et al. swept 3e-5..3e-3"},
    {"adapter-pfeiffer", "sequential relu bottleneck at ffn.out, r = d/16", "L * (2rd + r + d)", 1e-3f, "Pfeiffer et al. 1e-4 over 20+ epochs; higher for short runs"},
    {"parallel-adapter", "parallel relu bottleneck reading the sub-layer input, at ffn.out (--site attn: attn.out), r = d/16", "L * (2rd + r + d)", 1e-3f, "He et al.'s adapters, short-run end"},
    {"scaled-parallel-adapter", "parallel relu bottleneck at ffn.out composed with scale s = 4 (--scale, --learned-scale)", "L * (2rd + r + d) (+ L)", 5e-4f, "s = 4 already scales the update"},
    {"mh-parallel-adapter", "per-head parallel relu bottlenecks on the heads' outputs (attn.heads), r per head = 2(d/16)/h", "L * (h r d + d r + h r + d)", 1e-3f, "as parallel-adapter"},
    {"prompt", "20 soft-prompt vectors before [CLS] (PEFT's prompt tuning; --num-virtual, --prompt-init-text)", "n * d", 3e-1f, "Lester et al. 0.3 (Adafactor); the SST-2 sweep's best of 3e-2..3e-1 with AdamW"},
    {"ptuning", "virtual tokens at --template positions ('P P {text} P {pair}'; 'P P [CLS] {text}': before the input, PEFT's P_TUNING), from an MLP (or --encoder lstm: bidirectional LSTM + MLP) prompt encoder, folded away on save", "n*d + d*h + h*h + h*d (+ biases) while training; n*d saved", 3e-2f, "Liu et al. / PEFT's examples 1e-3..1e-2; the SST-2 sweep's best of 1e-3..3e-2"},
    {"prefix", "20 key/value vectors per layer prepended to attention (--prefix-len), reparameterised by an MLP while training and folded on save (--no-prefix-projection: plain)", "L * 2 n d", 5e-4f, "Li & Liang (reparameterised); the SST-2 sweep's best at 2%, of 2e-4..5e-3 (2e-3 and up stayed at chance)"},
    {"ptuning-v2", "deep prompts: prefix key/values at every layer, no reparameterisation (--prefix-len, default 20)", "L * 2 n d", 3e-2f, "Liu et al. (P-tuning v2) 5e-3..1e-2; the SST-2 sweep's best at 0.5%, of 3e-3..6e-2"},
    {"mam", "prefix (n = 30) at attention + scaled parallel adapter at the FFN (r = min(512, d), s = 4)", "L * (2 n d + 2rd + r + d)", 1e-3f, "He et al.; the SST-2 sweep chose 3e-3 at 0.6%, 5e-4 at 2%"},
    {"unipelt", "gated LoRA on query,value (r 8, alpha 16) + gated prefix (n = 10) + gated sequential adapter after the FFN (r = d/16)", "L * (4 r d + 2 d + 2 n d + 2 d + 2 + 2 r' d + r' + d + d + 1)", 1e-3f, "Mao et al.'s components, short-run end"},
    {"fusion", "AdapterFusion over frozen bottleneck adapters (peftc fuse --adapters a=DIR,b=DIR,...): per layer query/key/value attention over their ffn.out outputs, W_V = I", "L * (3 d^2 + 2 d)", 1e-4f, "Pfeiffer et al. 5e-5 over 10 epochs; higher for short runs"},
    {"custom", "--delta 'site=...,insert=...,r=...,act=...,compose=...' (repeatable)", "per delta", 5e-4f, "a middle rate for new delta modules"},
};

void method_list(char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof presets / sizeof *presets && n < cap; i++) {
        int w = snprintf(out + n, cap - n, "%-24s %s\n%-24s   params: %s\n%-24s   default lr: %g (%s)\n", presets[i].name,
                         presets[i].expands, "", presets[i].formula, "", (double)presets[i].lr, presets[i].lr_source);
        if (w < 0) break;
        n += (size_t)w;
    }
}

float method_default_lr(const method_opts *mo)
{
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (!strcmp(mo->name, presets[i].name)) return presets[i].lr;
    /* a name that is no preset (an adapter read back): by what trains */
    return mo->base == BASE_ALL ? 2e-5f : mo->base == BASE_BIAS ? 1e-3f : 5e-4f;
}

peftc_base_quant method_base_quant(const char *name)
{
    return name && !strcmp(name, "qlora") ? PEFTC_QUANT_NF4 : PEFTC_QUANT_NONE;
}

peftc_status method_build(const char *name, const method_args *a, const peftc_config *cfg,
                          method_opts *mo, peftc_error *err)
{
    memset(mo, 0, sizeof *mo);
    snprintf(mo->name, sizeof mo->name, "%s", name);
    int C = cfg->hidden_size, NH = cfg->num_heads;
    int r_ad = a->r > 0 ? a->r : imax(1, C / 16);
    peftc_status rc;
    if (!strcmp(name, "fusion")) {
        if (!a->fuse_adapters) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion: --adapters a=DIR,b=DIR,... is required");
        if ((rc = fusion_spec_parse(a->fuse_adapters, &mo->fusion, err))) return rc;
        mo->fusion.temperature = a->fusion_temperature;
    } else if (a->fuse_adapters) {
        return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters is for peftc fuse (method fusion), not method %s", name);
    } else if (!strcmp(name, "full")) {
        mo->base = BASE_ALL;
    } else if (!strcmp(name, "bitfit")) {
        mo->base = BASE_BIAS;
    } else if (!strcmp(name, "qlora")) {
        /* QLoRA (Dettmers et al. 2023): LoRA on every linear layer of an NF4
         * base, r 64, alpha 16, dropout 0.1 (the paper's values for models up
         * to 13B; its qlora.py script has the same r and alpha). The adapter
         * is a plain LoRA one (peft_type LORA). */
        mo->lora = 1;
        mo->r = a->r > 0 ? a->r : 64;
        mo->alpha = a->alpha > 0 ? a->alpha : 16;
        mo->dropout = a->lora_dropout_set ? a->lora_dropout : 0.1f;
        mo->rslora = a->rslora;
        if (mo->dropout < 0 || mo->dropout >= 1) return peftc_fail(err, PEFTC_ERR_INPUT, "--lora-dropout must be in [0, 1)");
        /* every linear layer of the family's blocks (BERT's six, Llama's seven) */
        if ((rc = lora_targets_for(a->targets ? a->targets : "all-linear", cfg, &mo->targets, err))) return rc;
    } else if (!strcmp(name, "lora")) {
        mo->lora = 1;
        mo->r = a->r > 0 ? a->r : 8;
        mo->alpha = a->alpha > 0 ? a->alpha : 8;
        mo->dropout = a->lora_dropout;
        mo->rslora = a->rslora;
        if (mo->dropout < 0 || mo->dropout >= 1) return peftc_fail(err, PEFTC_ERR_INPUT, "--lora-dropout must be in [0, 1)");
        if ((rc = lora_targets_for(a->targets, cfg, &mo->targets, err))) return rc;
    } else if (!strcmp(name, "adalora")) {
        static const peftc_adalora_opts none;
        if ((rc = adalora_resolve(a->adalora ? a->adalora : &none, &mo->ada, err))) return rc;
        mo->adalora = 1;
        if (a->r > 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--method adalora: use --init-r (and --target-r), not --r");
        mo->r = mo->ada.init_r;
        mo->alpha = a->alpha > 0 ? a->alpha : 8;   /* LoraConfig's lora_alpha */
        mo->dropout = a->lora_dropout;
        if (mo->dropout < 0 || mo->dropout >= 1) return peftc_fail(err, PEFTC_ERR_INPUT, "--lora-dropout must be in [0, 1)");
        /* PEFT's TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING: query,value (q_proj,v_proj) */
        if ((rc = lora_parse_targets(a->targets ? a->targets : "query,value", &mo->targets, err))) return rc;
    } else if (!strcmp(name, "ia3")) {
        site_id sites[3] = {SITE_ATTN_K, SITE_ATTN_V, SITE_FFN_ACT};
        for (int i = 0; i < 3; i++) mo->deltas[mo->n_deltas++] = (delta_spec){.kind = DELTA_SCALE, .site = sites[i]};
    } else if (!strcmp(name, "adapter-houlsby")) {
        mo->deltas[mo->n_deltas++] = adapter_spec(SITE_ATTN_OUT, INSERT_SEQUENTIAL, ACT_SILU, r_ad);
        mo->deltas[mo->n_deltas++] = adapter_spec(SITE_FFN_OUT, INSERT_SEQUENTIAL, ACT_SILU, r_ad);
        mo->train_norms = 1;
    } else if (!strcmp(name, "adapter-pfeiffer")) {
        mo->deltas[mo->n_deltas++] = adapter_spec(SITE_FFN_OUT, INSERT_SEQUENTIAL, ACT_RELU, r_ad);
    } else if (!strcmp(name, "parallel-adapter")) {
        site_id st = SITE_FFN_OUT;
        if (a->site && !strcmp(a->site, "attn")) st = SITE_ATTN_OUT;
        else if (a->site && strcmp(a->site, "ffn")) return peftc_fail(err, PEFTC_ERR_INPUT, "--site must be ffn or attn, got '%s'", a->site);
        mo->deltas[mo->n_deltas++] = adapter_spec(st, INSERT_PARALLEL, ACT_RELU, r_ad);
    } else if (!strcmp(name, "scaled-parallel-adapter")) {
        delta_spec sp = adapter_spec(SITE_FFN_OUT, INSERT_PARALLEL, ACT_RELU, r_ad);
        sp.compose = a->learned_scale ? COMPOSE_LEARNED_SCALE : COMPOSE_SCALE;
        sp.scale = a->scale > 0 ? a->scale : 4.0f;
        mo->deltas[mo->n_deltas++] = sp;
    } else if (!strcmp(name, "mh-parallel-adapter")) {
        delta_spec sp = adapter_spec(SITE_ATTN_HEADS, INSERT_PARALLEL, ACT_RELU, a->r > 0 ? a->r : imax(1, 2 * r_ad / NH));
        sp.heads = NH;
        mo->deltas[mo->n_deltas++] = sp;
    } else if (!strcmp(name, "prompt")) {
        mo->prompt.n_virtual = a->num_virtual > 0 ? a->num_virtual : 20;
        mo->prompt.before_cls = 1;
        mo->prompt.encoder = PROMPT_ENC_NONE;
    } else if (!strcmp(name, "ptuning")) {
        int n = a->num_virtual > 0 ? a->num_virtual : 8;
        if (a->template_text) {
            if ((rc = template_parse(a->template_text, &mo->prompt, err))) return rc;
        } else {
            if (n > TEMPLATE_MAX - 2) return peftc_fail(err, PEFTC_ERR_INPUT, "--num-virtual: at most %d", TEMPLATE_MAX - 2);
            for (int i = 0; i < n; i++) mo->prompt.items[mo->prompt.n_items++] = TPL_VIRT;
            mo->prompt.items[mo->prompt.n_items++] = TPL_TEXT;
            mo->prompt.n_virtual = n;
        }
        if (a->encoder && !strcmp(a->encoder, "none")) mo->prompt.encoder = PROMPT_ENC_NONE;
        else if (a->encoder && !strcmp(a->encoder, "lstm")) mo->prompt.encoder = PROMPT_ENC_LSTM;
        else if (!a->encoder || !strcmp(a->encoder, "mlp")) mo->prompt.encoder = PROMPT_ENC_MLP;
        else return peftc_fail(err, PEFTC_ERR_INPUT, "--encoder must be mlp, lstm or none, got '%s'", a->encoder);
        mo->prompt.hidden = a->encoder_hidden > 0 ? a->encoder_hidden : C;
    } else if (!strcmp(name, "prefix") || !strcmp(name, "ptuning-v2")) {
        mo->prefix.n = a->prefix_len > 0 ? a->prefix_len : 20;
        /* Li & Liang reparameterise prefix tuning by default; P-tuning v2 does not */
        mo->prefix.project = a->prefix_projection ? a->prefix_projection > 0 : !strcmp(name, "prefix");
        mo->prefix.hidden = a->encoder_hidden > 0 ? a->encoder_hidden : 0;   /* 0: the prefix width (PEFT: token_dim) */
    } else if (!strcmp(name, "mam")) {
        mo->prefix.n = a->prefix_len > 0 ? a->prefix_len : 30;
        delta_spec sp = adapter_spec(SITE_FFN_OUT, INSERT_PARALLEL, ACT_RELU, a->r > 0 ? a->r : (C < 512 ? C : 512));
        sp.compose = COMPOSE_SCALE;
        sp.scale = a->scale > 0 ? a->scale : 4.0f;
        mo->deltas[mo->n_deltas++] = sp;
    } else if (!strcmp(name, "unipelt")) {
        mo->prefix.n = a->prefix_len > 0 ? a->prefix_len : 10;
        mo->prefix.gate = 1;
        /* gated LoRA (scale alpha/r inside the gate) on query and value */
        int r = a->r > 0 ? a->r : 8;
        float alpha = a->alpha > 0 ? a->alpha : 16;
        site_id qv[2] = {SITE_ATTN_Q, SITE_ATTN_V};
        for (int i = 0; i < 2; i++)
            mo->deltas[mo->n_deltas++] = (delta_spec){.kind = DELTA_BOTTLENECK, .site = qv[i], .insert = INSERT_PARALLEL,
                                                      .act = ACT_IDENTITY, .compose = COMPOSE_GATE, .scale = alpha / r,
                                                      .r = r, .bias = 0, .init_lora = 1};
        delta_spec ad = adapter_spec(SITE_FFN_OUT, INSERT_SEQUENTIAL, ACT_RELU, imax(1, C / 16));
        ad.compose = COMPOSE_GATE;
        mo->deltas[mo->n_deltas++] = ad;
    } else if (!strcmp(name, "custom")) {
        if (a->n_deltas <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--method custom needs at least one --delta");
        if (a->n_deltas > METHOD_MAX_DELTAS) return peftc_fail(err, PEFTC_ERR_INPUT, "at most %d --delta options", METHOD_MAX_DELTAS);
        for (int i = 0; i < a->n_deltas; i++)
            if ((rc = delta_spec_parse(a->deltas[i], &mo->deltas[mo->n_deltas++], err))) return rc;
    } else {
        return peftc_fail(err, PEFTC_ERR_INPUT, "--method: unknown method '%s' (see peftc methods)", name);
    }
    return PEFTC_OK;
}
