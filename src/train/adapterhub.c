/* adapterhub.c: AdapterHub's bottleneck adapters (BnConfig), LoRA and (IA)^3
 * (LoRAConfig, see ahub_parse_lora) and classification head, read and written
 * (adapterhub.h); checked against `adapters` 1.3.0 (tests/check_adapterhub.sh).
 *
 * How AdapterHub computes a bottleneck at a BERT sub-layer (BertSelfOutput /
 * BertOutput: h = dropout(dense(.)), x = the sub-layer's residual input, LN the
 * layer's LayerNorm), methods/modeling.py:
 *   sequential, original_ln_before false: LN(x + h + s*up(f(down(h))))
 *   parallel (is_parallel):               LN(x + h + s*up(f(down(x))))
 * which are peftc's sequential / parallel deltas at attn.out (mh_adapter) and
 * ffn.out (output_adapter) with compose scale s. Everything else (the adapter
 * reading LN(x + h) when original_ln_before, new LayerNorms, gates averaged
 * over the sequence, PHM layers, per-channel scaling, layers left out) has no
 * peftc form and is refused, never approximated. */
#include "train/adapterhub.h"
#include "train/eval.h"
#include "core/json_file.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AHUB_VERSION "adapters.1.3.0"

int ahub_config_is(json_t *cfg)
{
    if (!json_is_object(cfg) || json_object_get(cfg, "peft_type") || json_object_get(cfg, "peftc")) return 0;
    const char *v = json_string_value(json_object_get(cfg, "version"));
    return json_is_object(json_object_get(cfg, "config")) &&
           (json_is_string(json_object_get(cfg, "model_class")) || (v && !strncmp(v, "adapters.", 9)));
}

/* AdapterHub names activations by transformers' ACT2FN keys (lower-cased) */
static int ahub_act_parse(const char *s, delta_act *a)
{
    static const struct { const char *name; delta_act act; } map[] = {
        {"relu", ACT_RELU}, {"swish", ACT_SILU}, {"silu", ACT_SILU}, {"gelu", ACT_GELU}, {"tanh", ACT_TANH}, {"linear", ACT_IDENTITY}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strcasecmp(s, map[i].name)) { *a = map[i].act; return 1; }
    return 0;   /* gelu_new (tanh approximation), leakyrelu, ...: other functions than peftc's */
}

static const char *ahub_act_name(delta_act a)
{
    switch (a) {
    case ACT_RELU: return "relu";
    case ACT_SILU: return "swish";
    case ACT_GELU: return "gelu";   /* erf GELU, as transformers' "gelu" */
    case ACT_TANH: return "tanh";
    case ACT_IDENTITY: return "linear";
    }
    return NULL;
}

/* Python's float floor division a // b (Objects/floatobject.c), which
 * AdapterHub's int(hidden_size // reduction_factor) uses */
static double py_floordiv(double a, double b)
{
    double mod = fmod(a, b);
    double div = (a - mod) / b;
    if (mod && ((b < 0) != (mod < 0))) div -= 1.0;
    double fl = floor(div);
    if (div - fl > 0.5) fl += 1.0;
    return div ? fl : copysign(0.0, a / b);
}

/* the first key of object o not in known[0..n) (NULL: none): fields this
 * reader does not know would change what AdapterHub computes */
static const char *unknown_key(json_t *o, const char *const *known, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        size_t i = 0;
        while (i < n && strcmp(key, known[i])) i++;
        if (i == n) return key;
    }
    return NULL;
}

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) >= 64) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-')) return 0;
    return 1;
}

static int is_false(json_t *v) { return !v || json_is_false(v) || json_is_null(v); }

/* The transformers module a LoRA (or (IA)^3) module wraps, below encoder.layer.N */
static const char *ahub_linear_loc(site_id st)
{
    switch (st) {
    case SITE_ATTN_Q: return "attention.self.query";
    case SITE_ATTN_K: return "attention.self.key";
    case SITE_ATTN_V: return "attention.self.value";
    case SITE_FFN_IN: return "intermediate.dense";
    case SITE_FFN_DOWN: return "output.dense";
    default: return NULL;   /* attention.output.dense takes no LoRA in AdapterHub's BERT */
    }
}

/* LoRAConfig (methods/lora.py): at each wrapped linear y = W x + b, composition_mode
 *   "add":   y + (alpha / r) * x A^T B^T     (LoRA: A (r,in), B (out,r))
 *   "scale": y * (alpha * l)                 ((IA)^3, r 1: l = lora_B (out,1))
 * which are peftc's LoRA deltas (scale alpha/r) and its scale deltas (alpha folded into l on load).
 * The modules: selfattn_lora on attn_matrices of q, k, v; intermediate_lora on
 * intermediate.dense (before the GELU, so ffn.in, not peftc's ffn.act); output_lora on output.dense. */
static peftc_status ahub_parse_lora(json_t *c, const char *path, const char *name, method_opts *mo, peftc_error *err)
{
    static const char *const known[] = {"alpha", "architecture", "attn_matrices", "composition_mode", "dropout", "dtype", "init_weights",
        "init_weights_seed", "intermediate_lora", "leave_out", "output_lora", "r", "selfattn_lora", "use_dora", "use_gating", "vera_b", "vera_d"};
    const char *key = unknown_key(c, known, sizeof known / sizeof *known);
    json_t *v;
    if (key) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config field \"%s\" is not known here", path, key);
    if (!is_false(json_object_get(c, "use_gating")))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config use_gating is set: a gate averaged over the sequence has no peftc form", path);
    if (!is_false(json_object_get(c, "use_dora")))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config use_dora is set: DoRA is not supported here", path);
    if (!json_is_null(json_object_get(c, "vera_d")) && json_object_get(c, "vera_d"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config vera_d is set: VeRA is not supported here", path);
    if (!json_is_null(json_object_get(c, "vera_b")) && json_object_get(c, "vera_b"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config vera_b is set: VeRA is not supported here", path);
    const char *dt = json_string_value(json_object_get(c, "dtype"));
    if (json_object_get(c, "dtype") && !json_is_null(json_object_get(c, "dtype")) && !(dt && !strcmp(dt, "float32")))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config dtype %s: the LoRA product would be computed in it; float32 only here", path, dt ? dt : "(not a string)");
    json_t *lo = json_object_get(c, "leave_out");
    if (lo && !(json_is_array(lo) && json_array_size(lo) == 0))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub leave_out: adapters in only some layers are not supported", path);
    json_t *jr = json_object_get(c, "r"), *ja = json_object_get(c, "alpha");
    if (!json_is_integer(jr) || json_integer_value(jr) < 1 || json_integer_value(jr) > 1 << 16)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub r missing or not a positive integer", path);
    double alpha = ja ? json_number_value(ja) : 8.0;
    if ((ja && !json_is_number(ja)) || !isfinite(alpha) || fabs(alpha) > 1e6)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub alpha is not a number in range", path);
    const char *cm = json_string_value(json_object_get(c, "composition_mode"));
    int scale = cm && !strcmp(cm, "scale");
    if (cm && !scale && strcmp(cm, "add"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub composition_mode %s: \"add\" (LoRA) or \"scale\" ((IA)^3) only", path, cm);
    if (scale && json_integer_value(jr) != 1)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub composition_mode \"scale\" needs r 1", path);
    unsigned targets = 0;
    if (!json_is_false(json_object_get(c, "selfattn_lora"))) {   /* LoRAConfig's default: true */
        json_t *am = json_object_get(c, "attn_matrices");
        size_t i;
        if (!am) targets |= 1u << SITE_ATTN_Q | 1u << SITE_ATTN_V;
        else if (!json_is_array(am)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub attn_matrices is not a list", path);
        json_array_foreach(am, i, v) {
            const char *s = json_string_value(v);
            if (s && !strcmp(s, "q")) targets |= 1u << SITE_ATTN_Q;
            else if (s && !strcmp(s, "k")) targets |= 1u << SITE_ATTN_K;
            else if (s && !strcmp(s, "v")) targets |= 1u << SITE_ATTN_V;
            else return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub attn_matrices: %s is not q, k or v", path, s ? s : "(not a string)");
        }
    }
    if (json_is_true(json_object_get(c, "intermediate_lora"))) targets |= 1u << SITE_FFN_IN;
    if (json_is_true(json_object_get(c, "output_lora"))) targets |= 1u << SITE_FFN_DOWN;
    if (!targets) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub LoRA config places no module (selfattn_lora, intermediate_lora, output_lora)", path);
    snprintf(mo->name, sizeof mo->name, "adapterhub");
    mo->ahub = 1;
    snprintf(mo->ahub_name, sizeof mo->ahub_name, "%s", name);
    mo->alpha = (float)alpha;
    if (!scale) {
        mo->lora = 1;
        mo->r = (int)json_integer_value(jr);
        mo->targets = targets;
        mo->dropout = 0;   /* training only */
        return PEFTC_OK;
    }
    for (int st = 0; st < SITE_COUNT; st++)
        if (targets & (1u << st)) mo->deltas[mo->n_deltas++] = (delta_spec){.kind = DELTA_SCALE, .site = (site_id)st};
    return PEFTC_OK;
}

peftc_status ahub_parse_config(json_t *cfg, const char *path, method_opts *mo, peftc_error *err)
{
    static const char *const top_keys[] = {"config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"};
    const char *key = unknown_key(cfg, top_keys, sizeof top_keys / sizeof *top_keys);
    json_t *v;
    if (key) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub field \"%s\" is not known here", path, key);
    const char *name = json_string_value(json_object_get(cfg, "name"));
    if (!valid_name(name)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub \"name\" missing or not a plain name", path);
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    if (mt && strcmp(mt, "bert"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: an AdapterHub adapter for model_type %s (BERT encoders only here)", path, mt);
    json_t *hs = json_object_get(cfg, "hidden_size");
    if (!json_is_integer(hs) || json_integer_value(hs) < 1 || json_integer_value(hs) > 1 << 16)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub \"hidden_size\" missing or out of range", path);
    int C = (int)json_integer_value(hs);
    json_t *c = json_object_get(cfg, "config");
    const char *arch = json_string_value(json_object_get(c, "architecture"));
    if (arch && !strcmp(arch, "lora")) return ahub_parse_lora(c, path, name, mo, err);
    if (arch && !strcmp(arch, "prompt_tuning"))
        /* PromptTuningLayer joins the prompt to the embedding layer's output: the prompt gets no
         * position embedding or LayerNorm and the text keeps positions 0.., while peftc embeds
         * its virtual tokens as words (with positions, the text shifted after them) */
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub architecture \"prompt_tuning\": its prompt is joined to the embedding "
                                                      "layer's output (no position embedding or LayerNorm), which peftc's prompt tuning does not compute", path);
    if (arch && strcmp(arch, "bottleneck"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub architecture \"%s\": only bottleneck, LoRA and (IA)^3 adapters are read here", path, arch);
    /* fields that do not change the model at inference (init, dropout, PHM
     * settings used only with phm_layer, invertible adapter's factor) */
    static const char *const inert[] = {"architecture", "init_weights", "init_weights_seed", "dropout", "stochastic_depth",
        "phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "phm_c_init", "phm_init_range",
        "learn_phm", "hypercomplex_nonlinearity", "phm_rank", "phm_bias", "inv_adapter_reduction_factor",
        "residual_before_ln", "adapter_residual_before_ln"};
    /* fields that must be off: what AdapterHub computes with them has no peftc form */
    static const char *const off[] = {"original_ln_before", "ln_before", "ln_after", "use_gating", "phm_layer", "inv_adapter", "cross_adapter"};
    static const char *const used[] = {"mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_after",
                                       "is_parallel", "scaling", "leave_out"};
    json_object_foreach(c, key, v) {
        int known = 0;
        for (size_t i = 0; i < sizeof inert / sizeof *inert; i++) known |= !strcmp(key, inert[i]);
        for (size_t i = 0; i < sizeof used / sizeof *used; i++) known |= !strcmp(key, used[i]);
        for (size_t i = 0; i < sizeof off / sizeof *off; i++)
            if (!strcmp(key, off[i])) {
                known = 1;
                if (!is_false(v))
                    return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config %s is set: %s", path, key,
                                      !strcmp(key, "original_ln_before") ? "the adapter would read LayerNorm(x + h), which peftc's sequential adapter (reading h) does not compute"
                                                                         : "not supported here");
            }
        if (!known) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config field \"%s\" is not known here", path, key);
    }
    json_t *rb = json_object_get(c, "residual_before_ln");
    if (rb && !json_is_boolean(rb) && !(json_is_string(rb) && !strcmp(json_string_value(rb), "post_add")))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub residual_before_ln must be true, false or \"post_add\"", path);
    if (json_is_false(json_object_get(c, "original_ln_after")))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config original_ln_after is false: the layer's residual and LayerNorm would be dropped", path);
    json_t *lo = json_object_get(c, "leave_out");
    if (lo && !(json_is_array(lo) && json_array_size(lo) == 0))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub leave_out: adapters in only some layers are not supported", path);
    int mh = json_is_true(json_object_get(c, "mh_adapter")), oa = json_is_true(json_object_get(c, "output_adapter"));
    if (!mh && !oa) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub config has neither mh_adapter nor output_adapter", path);
    const char *nl = json_string_value(json_object_get(c, "non_linearity"));
    delta_act act;
    if (!nl || !ahub_act_parse(nl, &act))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub non_linearity %s is not one of relu, swish, silu, gelu, tanh, linear", path, nl ? nl : "(missing)");
    /* one reduction factor for every layer (a mapping whose values agree) */
    json_t *rf = json_object_get(c, "reduction_factor");
    double f = 0;
    if (json_is_number(rf)) f = json_number_value(rf);
    else if (json_is_object(rf)) {
        json_object_foreach(rf, key, v) {
            if (!json_is_number(v)) { f = -1; break; }
            if (f == 0) f = json_number_value(v);
            else if (f != json_number_value(v)) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub reduction_factor differs per layer", path);
        }
    }
    if (!(f > 0) || !isfinite(f)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub reduction_factor must be a positive number", path);
    double rd = py_floordiv((double)C, f);
    int r = rd < 1 ? 1 : rd > C * 64.0 ? -1 : (int)rd;   /* as AdapterHub: at least 1 */
    if (r < 1) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub reduction_factor %g gives no usable bottleneck", path, f);
    delta_spec sp = {.kind = DELTA_BOTTLENECK, .insert = json_is_true(json_object_get(c, "is_parallel")) ? INSERT_PARALLEL : INSERT_SEQUENTIAL,
                     .act = act, .compose = COMPOSE_ADD, .scale = 1.0f, .r = r, .bias = 1};
    json_t *sc = json_object_get(c, "scaling");
    if (!sc || json_is_number(sc)) {
        double s = sc ? json_number_value(sc) : 1.0;
        if (!isfinite(s) || fabs(s) > 1e6) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: AdapterHub scaling out of range", path);
        if (s != 1.0) { sp.compose = COMPOSE_SCALE; sp.scale = (float)s; }
    } else if (json_is_string(sc) && !strcmp(json_string_value(sc), "learned")) {
        sp.compose = COMPOSE_LEARNED_SCALE;
    } else {
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: AdapterHub scaling %s: a float or \"learned\" only (one factor, not per channel)", path,
                          json_is_string(sc) ? json_string_value(sc) : "(not a string)");
    }
    snprintf(mo->name, sizeof mo->name, "adapterhub");
    mo->ahub = 1;
    snprintf(mo->ahub_name, sizeof mo->ahub_name, "%s", name);
    if (mh) { sp.site = SITE_ATTN_OUT; mo->deltas[mo->n_deltas++] = sp; }
    if (oa) { sp.site = SITE_FFN_OUT; mo->deltas[mo->n_deltas++] = sp; }
    return PEFTC_OK;
}

peftc_status ahub_read_labels(const char *dir, label_set *labels, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "head_config.json", err);
    if (rc) return rc;
    if (!peftc_file_exists(path))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing: the classification head is needed (save_adapter(dir, name, with_head=True))", path);
    json_error_t je;
    json_t *j = peftc_json_load_file(path, 0, &je);
    if (!j) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not valid JSON at line %d: %s", path, je.line, je.text);
    json_t *c = json_object_get(j, "config");
    const char *ht = json_string_value(json_object_get(c, "head_type")), *af = json_string_value(json_object_get(c, "activation_function"));
    json_t *nl = json_object_get(c, "num_labels"), *l2i = json_object_get(c, "label2id");
    const char *why = NULL;
    if (!json_is_object(c)) why = "no \"config\" object";
    else if (!ht || strcmp(ht, "classification")) why = "head_type is not \"classification\"";
    else if (!json_is_integer(json_object_get(c, "layers")) || json_integer_value(json_object_get(c, "layers")) != 2) why = "layers must be 2 (dense, tanh, classifier: BERT's pooler and classifier)";
    else if (!af || strcmp(af, "tanh")) why = "activation_function must be tanh";
    else if (json_is_true(json_object_get(c, "use_pooler"))) why = "use_pooler: a head on the pooler's output is not supported";
    else if (json_is_false(json_object_get(c, "bias"))) why = "bias false is not supported";
    else if (!json_is_integer(nl) || json_integer_value(nl) < 1 || json_integer_value(nl) > 100000) why = "num_labels missing or out of range";
    else if (!json_is_null(l2i) && l2i && (!json_is_object(l2i) || (json_int_t)json_object_size(l2i) != json_integer_value(nl)))
        why = "label2id does not name num_labels labels";
    if (why) { json_decref(j); return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: %s", path, why); }
    int n = (int)json_integer_value(nl);
    labels->names = calloc((size_t)n, sizeof(char *));
    if (!labels->names) { json_decref(j); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    labels->n = n;
    const char *key;
    json_t *v;
    if (json_is_object(l2i)) json_object_foreach(l2i, key, v) {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id >= n || labels->names[id]) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: label2id: ids must be 0..%d, each once", path, n - 1); break; }
        if (!(labels->names[id] = strdup(key))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
    }
    for (int i = 0; i < n && !rc; i++)
        if (!labels->names[i]) {
            char def[32];
            snprintf(def, sizeof def, "LABEL_%d", i);
            if (!(labels->names[i] = strdup(def))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
    json_decref(j);
    if (rc) labels_free(labels);
    return rc;
}

/* One AdapterHub tensor: its name (without the model's "bert." prefix for the
 * adapter file), which file, the peftc parameter (-1: data only) and data. */
typedef struct ahub_item {
    char name[320];   /* room for the "bert." prefix */
    int head;
    int param;
    const float *data;
    int ndim;
    int64_t shape[2];
} ahub_item;

static int ahub_items(const task *t, const char *an, ahub_item *it, int cap)
{
    int n = 0;
    for (int i = 0; i < t->ds.n; i++) {
        const delta *d = &t->ds.d[i];
        if (d->spec.kind == DELTA_SCALE || d->spec.lora_names) {   /* LoRA / (IA)^3: loras.NAME.lora_A / lora_B */
            const char *ll = ahub_linear_loc(d->spec.site);
            struct { const char *what; int p; } lp[2] = {{"lora_A", d->spec.kind == DELTA_SCALE ? -1 : d->p_down},
                                                         {"lora_B", d->spec.kind == DELTA_SCALE ? d->p_vec : d->p_up}};
            for (int k = 0; k < 2 && n < cap && ll; k++) {
                if (lp[k].p < 0) continue;
                it[n] = (ahub_item){.head = 0, .param = lp[k].p};
                snprintf(it[n].name, 256, "encoder.layer.%d.%s.loras.%s.%s", d->layer, ll, an, lp[k].what);
                n++;
            }
            continue;
        }
        const char *loc = d->spec.site == SITE_ATTN_OUT ? "attention.output" : "output";
        struct { const char *what; int p; } ps[5] = {{"adapter_down.0.weight", d->p_down}, {"adapter_down.0.bias", d->p_down_b},
                                                     {"adapter_up.weight", d->p_up}, {"adapter_up.bias", d->p_up_b}, {"scaling", d->p_scale}};
        for (int k = 0; k < 5 && n < cap; k++) {
            if (ps[k].p < 0) continue;
            it[n] = (ahub_item){.head = 0, .param = ps[k].p};
            snprintf(it[n].name, 256, "encoder.layer.%d.%s.adapters.%s.%s", d->layer, loc, an, ps[k].what);
            n++;
        }
    }
    int C = t->m->cfg.hidden_size, K = t->labels.n;
    struct { const char *what; int p; const float *data; int ndim; int64_t s0, s1; } hs[4] = {
        {"1.weight", t->p_pool_w, t->head.pool_w, 2, C, C}, {"1.bias", t->p_pool_b, t->head.pool_b, 1, C, 0},
        {"4.weight", t->p_cls_w, t->head.cls_w, 2, K, C}, {"4.bias", t->p_cls_b, t->head.cls_b, 1, K, 0}};
    for (int k = 0; k < 4 && n < cap; k++) {
        it[n] = (ahub_item){.head = 1, .param = hs[k].p, .data = hs[k].data, .ndim = hs[k].ndim, .shape = {hs[k].s0, hs[k].s1}};
        snprintf(it[n].name, 256, "heads.%s.%s", an, hs[k].what);
        n++;
    }
    for (int k = 0; k < n; k++)
        if (it[k].param >= 0) {
            const param_entry *e = &t->pb.e[it[k].param];
            it[k].data = params_value((param_block *)&t->pb, it[k].param);
            it[k].ndim = e->ndim;
            for (int dd = 0; dd < e->ndim && dd < 2; dd++) it[k].shape[dd] = e->shape[dd];
        }
    return n;
}

peftc_status ahub_load_weights(task *t, const char *dir, peftc_error *err)
{
    char path[2][4096];
    peftc_status rc;
    if ((rc = peftc_path_join(path[0], sizeof path[0], dir, "adapter.safetensors", err)) ||
        (rc = peftc_path_join(path[1], sizeof path[1], dir, "model_head.safetensors", err)))
        return rc;
    if (!peftc_file_exists(path[0])) {
        char pk[4096];
        if (!peftc_path_join(pk, sizeof pk, dir, "pytorch_adapter.bin", NULL) && peftc_file_exists(pk))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a pickle, which is not read (loading it could run code); re-save it with "
                                                          "model.save_adapter(dir, name, use_safetensors=True)", pk);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: missing (AdapterHub adapters saved with use_safetensors=True hold their weights there)", path[0]);
    }
    if (!peftc_file_exists(path[1])) {
        char pk[4096];
        if (!peftc_path_join(pk, sizeof pk, dir, "pytorch_model_head.bin", NULL) && peftc_file_exists(pk))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a pickle, which is not read (loading it could run code); re-save it with "
                                                          "model.save_adapter(dir, name, with_head=True, use_safetensors=True)", pk);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: missing (the classification head: save_adapter(..., with_head=True, use_safetensors=True))", path[1]);
    }
    enum { CAP = 4096 };
    ahub_item *it = calloc(CAP, sizeof *it);
    peftc_safetensors *st[2] = {NULL, NULL};
    uint8_t *used[2] = {NULL, NULL};
    if (!it) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    int n = ahub_items(t, t->mo.ahub_name, it, CAP);
    for (int f = 0; f < 2 && !rc; f++) {
        if ((rc = peftc_safetensors_open(path[f], &st[f], err))) break;
        if (!(used[f] = calloc((size_t)st[f]->n + 1, 1))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < n && !rc; k++) {
        if (it[k].param < 0) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: internal: the head's dense layer is not a parameter", path[1]); break; }
        const peftc_safetensors *s = st[it[k].head];
        char pre[330];
        snprintf(pre, sizeof pre, "bert.%s", it[k].name);
        const st_tensor *x = it[k].head ? NULL : st_find(s, pre);
        if (!x) x = st_find(s, it[k].name);
        if (!x) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is missing (an adapter of another config, name or model?)", path[it[k].head], it[k].head ? it[k].name : pre); break; }
        const param_entry *e = &t->pb.e[it[k].param];
        int ok = x->ndim == e->ndim;
        for (int d = 0; ok && d < e->ndim; d++) ok = x->shape[d] == e->shape[d];
        if (!ok) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has a shape that does not fit this model (maybe wrong base model?)", path[it[k].head], x->name); break; }
        used[it[k].head][x - s->t] = 1;
        rc = st_to_f32(s, x, params_value(&t->pb, it[k].param), err);
    }
    /* (IA)^3: AdapterHub multiplies by alpha * l; peftc's scale delta holds that product */
    for (int i = 0; i < t->ds.n && !rc; i++)
        if (t->ds.d[i].spec.kind == DELTA_SCALE && t->mo.alpha != 1.0f) {
            float *l = params_value(&t->pb, t->ds.d[i].p_vec);
            for (int o = 0; o < t->ds.d[i].out; o++) l[o] *= t->mo.alpha;
        }
    /* a tensor AdapterHub would apply that is not mapped would change the model silently */
    for (int f = 0; f < 2 && !rc; f++)
        for (int i = 0; i < st[f]->n && !rc; i++)
            if (!used[f][i])
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not a parameter of this adapter (config %s, name %s)", path[f],
                                st[f]->t[i].name, "adapter_config.json", t->mo.ahub_name);
    for (int f = 0; f < 2; f++) { if (st[f]) peftc_safetensors_free(st[f]); free(used[f]); }
    free(it);
    return rc;
}

/* Whether a peftc adapter has AdapterHub's form: bottlenecks with biases at
 * attn.out and/or ffn.out, one spec for both, nothing else trained. */
enum { AHUB_BN, AHUB_LORA, AHUB_IA3 };

/* LoRA at AdapterHub's linear modules, or scale deltas there only ((IA)^3) */
static peftc_status ahub_check_lora_ia3(const method_opts *mo, const char *dir, int *kind, peftc_error *err)
{
    if (mo->lora) {
        if (mo->n_deltas > 0)
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: method %s: LoRA with other deltas is not one AdapterHub adapter", dir, mo->name);
        for (int st = 0; st < SITE_COUNT; st++)
            if ((mo->targets & (1u << st)) && !ahub_linear_loc((site_id)st))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: LoRA target %s: AdapterHub puts LoRA on query, key, value, "
                                                              "intermediate.dense and output.dense only", dir, site_name((site_id)st));
        *kind = AHUB_LORA;
        return PEFTC_OK;
    }
    unsigned seen = 0;
    for (int k = 0; k < mo->n_deltas; k++) {
        const delta_spec *s = &mo->deltas[k];
        if (s->site == SITE_FFN_ACT)
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: delta site=ffn.act,kind=scale: AdapterHub's (IA)^3 scales intermediate.dense's output "
                                                          "(before the GELU), not the GELU's output (train --delta site=ffn.in,kind=scale for its form)", dir);
        if (!ahub_linear_loc(s->site))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: delta site=%s,kind=scale: AdapterHub's (IA)^3 scales query, key, value, "
                                                          "intermediate.dense and output.dense only", dir, site_name(s->site));
        if (seen & (1u << s->site))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: two scale deltas at %s", dir, site_name(s->site));
        seen |= 1u << s->site;
    }
    *kind = AHUB_IA3;
    return PEFTC_OK;
}

static peftc_status ahub_check_exportable(const method_opts *mo, const char *dir, int *kind, peftc_error *err)
{
    *kind = AHUB_BN;
    int all_scale = mo->n_deltas > 0;
    for (int k = 0; k < mo->n_deltas; k++) all_scale &= mo->deltas[k].kind == DELTA_SCALE;
    if (!mo->train_norms && !mo->adalora && mo->prompt.n_virtual <= 0 && mo->prefix.n <= 0 && mo->fusion.n <= 0 && mo->base == BASE_NONE &&
        (mo->lora || all_scale))
        return ahub_check_lora_ia3(mo, dir, kind, err);
    if (mo->prompt.n_virtual > 0)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: method %s: AdapterHub joins a prompt to the embedding layer's output (no position "
                                                      "embedding or LayerNorm), which peftc's virtual tokens do not compute", dir, mo->name);
    if (mo->train_norms)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: method %s trains the layers' LayerNorms, which an AdapterHub adapter cannot carry "
                                                      "(train --method custom --delta site=attn.out,... --delta site=ffn.out,... for double_seq_bn)", dir, mo->name);
    if (mo->lora || mo->adalora || mo->prompt.n_virtual > 0 || mo->prefix.n > 0 || mo->fusion.n > 0 || mo->base != BASE_NONE || mo->n_deltas < 1)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: method %s: only bottleneck adapters (adapter-pfeiffer, adapter-houlsby, parallel-adapter, "
                                                      "scaled-parallel-adapter), LoRA and (IA)^3 export to AdapterHub so far", dir, mo->name);
    int seen[SITE_COUNT] = {0};
    for (int k = 0; k < mo->n_deltas; k++) {
        const delta_spec *s = &mo->deltas[k], *s0 = &mo->deltas[0];
        const char *why = NULL;
        if (s->kind != DELTA_BOTTLENECK) why = "not a bottleneck";
        else if (s->site != SITE_ATTN_OUT && s->site != SITE_FFN_OUT) why = "AdapterHub places bottlenecks at attn.out and ffn.out only";
        else if (seen[s->site]++) why = "two bottlenecks at one site";
        else if (!s->bias) why = "AdapterHub's bottleneck has biases";
        else if (s->heads > 0) why = "multi-head bottlenecks have no AdapterHub form";
        else if (s->compose == COMPOSE_GATE) why = "peftc's per-token gate is not AdapterHub's gate (averaged over the sequence)";
        else if (!ahub_act_name(s->act)) why = "no AdapterHub name for the activation";
        else if (s->insert != s0->insert || s->act != s0->act || s->r != s0->r || s->compose != s0->compose || s->scale != s0->scale)
            why = "the attn.out and ffn.out bottlenecks differ (AdapterHub uses one config for both)";
        if (why) {
            char spec[256];
            delta_spec_format(s, spec, sizeof spec);
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: delta %s: %s", dir, spec, why);
        }
    }
    return PEFTC_OK;
}

/* reduction_factor such that AdapterHub's int(C // f) is r */
static json_t *ahub_reduction(int C, int r, peftc_error *err, const char *dir)
{
    if (C % r == 0) return json_integer(C / r);
    double f = (double)C / r;
    for (int i = 0; i < 4; i++, f = nextafter(f, 0))
        if (py_floordiv(C, f) == r) return json_real(f);
    peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: no AdapterHub reduction_factor gives a bottleneck of %d on width %d", dir, r, C);
    return NULL;
}

static peftc_status write_json(const char *dir, const char *file, json_t *j, peftc_error *err)
{
    char path[4096];
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (!text) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc = peftc_path_join(path, sizeof path, dir, file, err);
    if (!rc) rc = peftc_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

/* every LoRAConfig / IA3Config field, as adapters 1.3.0's save_adapter writes them */
static json_t *ahub_lora_config(const method_opts *mo, int ia3)
{
    unsigned tg = 0;
    if (ia3) for (int k = 0; k < mo->n_deltas; k++) tg |= 1u << mo->deltas[k].site;
    else tg = mo->targets;
    json_t *c = json_object(), *am = json_array();
    const struct { site_id st; const char *key; } qkv[3] = {{SITE_ATTN_Q, "q"}, {SITE_ATTN_K, "k"}, {SITE_ATTN_V, "v"}};
    for (int i = 0; i < 3; i++)
        if (tg & (1u << qkv[i].st)) json_array_append_new(am, json_string(qkv[i].key));
    /* AdapterHub scales by alpha / r: rsLoRA's alpha / sqrt(r) is alpha * sqrt(r) there; (IA)^3's
     * vectors already hold the whole factor (alpha 1) */
    double alpha = ia3 ? 1.0 : mo->rslora ? (double)mo->alpha * sqrt((double)mo->r) : (double)mo->alpha;
    json_object_set_new(c, "alpha", alpha == floor(alpha) && fabs(alpha) < 1e9 ? json_integer((json_int_t)alpha) : json_real(alpha));
    json_object_set_new(c, "architecture", json_string("lora"));
    json_object_set_new(c, "attn_matrices", am);
    json_object_set_new(c, "composition_mode", json_string(ia3 ? "scale" : "add"));
    json_object_set_new(c, "dropout", json_real(ia3 ? 0.0 : (double)mo->dropout));
    json_object_set_new(c, "dtype", json_null());
    json_object_set_new(c, "init_weights", json_string(ia3 ? "ia3" : "lora"));
    json_object_set_new(c, "init_weights_seed", json_null());
    json_object_set_new(c, "intermediate_lora", json_boolean(tg & (1u << SITE_FFN_IN)));
    json_object_set_new(c, "leave_out", json_array());
    json_object_set_new(c, "output_lora", json_boolean(tg & (1u << SITE_FFN_DOWN)));
    json_object_set_new(c, "r", json_integer(ia3 ? 1 : mo->r));
    json_object_set_new(c, "selfattn_lora", json_boolean(json_array_size(am) > 0));
    json_object_set_new(c, "use_dora", json_false());
    json_object_set_new(c, "use_gating", json_false());
    json_object_set_new(c, "vera_b", json_null());
    json_object_set_new(c, "vera_d", json_null());
    return c;
}

static json_t *ahub_meta(const char *model_dir, const char *name, int C)
{
    json_t *j = json_object();
    json_object_set_new(j, "hidden_size", json_integer(C));
    json_object_set_new(j, "model_class", json_string("BertAdapterModel"));
    json_object_set_new(j, "model_name", json_string(model_dir));
    json_object_set_new(j, "model_type", json_string("bert"));
    json_object_set_new(j, "name", json_string(name));
    json_object_set_new(j, "version", json_string(AHUB_VERSION));
    return j;
}

peftc_status peftc_export_adapterhub(const char *adapter, const char *model_dir, const char *out_dir, const char *name, peftc_error *err)
{
    if (!name) name = "peftc";
    if (!valid_name(name)) return peftc_fail(err, PEFTC_ERR_INPUT, "--name %s: letters, digits, _ and - only (at most 63)", name);
    task_kind kind;
    method_opts mo;
    label_set labels = {0};
    int max_len = 0;
    peftc_status rc = adapter_read_task(adapter, &kind, err);
    if (rc) return rc;
    if (kind != TASK_SEQ_CLS && kind != TASK_REGRESSION)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a %s adapter: AdapterHub export writes sequence-classification (and regression) heads only",
                          adapter, task_kind_name(kind));
    if ((rc = adapter_read_config(adapter, &mo, &labels, &max_len, err))) return rc;
    int akind;
    if ((rc = ahub_check_exportable(&mo, adapter, &akind, err))) { labels_free(&labels); return rc; }
    if (labels.n == 0 && (rc = classifier_default_labels(model_dir, adapter, &labels, err))) return rc;
    peftc_model *m = NULL;
    peftc_tokenizer *tok = NULL;
    task t;
    int t_ok = 0;
    peftc_rng rng;
    peftc_rng_seed(&rng, 0);
    ahub_item *it = NULL;
    st_write_item *w = NULL;
    if ((rc = peftc_model_load(model_dir, &m, err)) || (rc = peftc_tokenizer_load(model_dir, &tok, err))) goto out;
    if (strcmp(m->family->name, "bert")) { rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a %s model: AdapterHub export is for BERT encoders", model_dir, m->family->name); goto out; }
    if (max_len <= 0 || max_len > m->cfg.max_position) max_len = m->cfg.max_seq_len;
    if ((rc = task_init_kind(&t, kind, m, tok, &mo, &labels, max_len, &rng, err))) goto out;
    t_ok = 1;
    if ((rc = task_load_weights(&t, adapter, err))) goto out;
    int C = m->cfg.hidden_size;
    json_t *c;
    if (akind != AHUB_BN) {
        c = ahub_lora_config(&mo, akind == AHUB_IA3);
    } else {
        const delta_spec *s = &mo.deltas[0];
        json_t *red = ahub_reduction(C, s->r, err, adapter);
        if (!red) { rc = PEFTC_ERR_UNSUPPORTED; goto out; }
        c = json_object();
        int mh = 0, oa = 0;
        for (int k = 0; k < mo.n_deltas; k++) { mh |= mo.deltas[k].site == SITE_ATTN_OUT; oa |= mo.deltas[k].site == SITE_FFN_OUT; }
        int par = s->insert == INSERT_PARALLEL;
        /* every BnConfig field, as adapters 1.3.0's save_adapter writes them */
        json_object_set_new(c, "adapter_residual_before_ln", json_false());
        json_object_set_new(c, "cross_adapter", json_false());
        json_object_set_new(c, "dropout", json_real(0.0));
        json_object_set_new(c, "factorized_phm_W", json_true());
        json_object_set_new(c, "factorized_phm_rule", json_false());
        json_object_set_new(c, "hypercomplex_nonlinearity", json_string("glorot-uniform"));
        json_object_set_new(c, "init_weights", json_string(par ? "mam_adapter" : "bert"));
        json_object_set_new(c, "init_weights_seed", json_null());
        json_object_set_new(c, "inv_adapter", json_null());
        json_object_set_new(c, "inv_adapter_reduction_factor", json_null());
        json_object_set_new(c, "is_parallel", json_boolean(par));
        json_object_set_new(c, "learn_phm", json_true());
        json_object_set_new(c, "leave_out", json_array());
        json_object_set_new(c, "ln_after", json_false());
        json_object_set_new(c, "ln_before", json_false());
        json_object_set_new(c, "mh_adapter", json_boolean(mh));
        json_object_set_new(c, "non_linearity", json_string(ahub_act_name(s->act)));
        json_object_set_new(c, "original_ln_after", json_true());
        /* false even for Pfeiffer's sequential adapter: peftc's reads the
         * sub-layer output h, as AdapterHub's does only without original_ln_before */
        json_object_set_new(c, "original_ln_before", json_false());
        json_object_set_new(c, "output_adapter", json_boolean(oa));
        json_object_set_new(c, "phm_bias", json_true());
        json_object_set_new(c, "phm_c_init", json_string("normal"));
        json_object_set_new(c, "phm_dim", json_integer(4));
        json_object_set_new(c, "phm_init_range", json_real(0.0001));
        json_object_set_new(c, "phm_layer", json_false());
        json_object_set_new(c, "phm_rank", json_integer(1));
        json_object_set_new(c, "reduction_factor", red);
        json_object_set_new(c, "residual_before_ln", json_true());
        json_object_set_new(c, "scaling", s->compose == COMPOSE_LEARNED_SCALE ? json_string("learned")
                                          : json_real(s->compose == COMPOSE_SCALE ? (double)s->scale : 1.0));
        json_object_set_new(c, "shared_W_phm", json_false());
        json_object_set_new(c, "shared_phm_rule", json_true());
        json_object_set_new(c, "stochastic_depth", json_real(0.0));
        json_object_set_new(c, "use_gating", json_false());
    }
    json_t *cfg = ahub_meta(model_dir, name, C);
    json_object_set_new(cfg, "config", c);
    json_t *hc = json_object(), *l2i = json_object();
    for (int i = 0; i < t.labels.n; i++) json_object_set_new(l2i, t.labels.names[i], json_integer(i));
    json_object_set_new(hc, "activation_function", json_string("tanh"));
    json_object_set_new(hc, "bias", json_true());
    json_object_set_new(hc, "dropout_prob", json_null());
    json_object_set_new(hc, "head_type", json_string("classification"));
    json_object_set_new(hc, "label2id", l2i);
    json_object_set_new(hc, "layers", json_integer(2));
    json_object_set_new(hc, "num_labels", json_integer(t.labels.n));
    json_object_set_new(hc, "use_pooler", json_false());
    json_t *head = ahub_meta(model_dir, name, C);
    json_object_set_new(head, "config", hc);
    if (json_object_size(l2i) != (size_t)t.labels.n) {
        json_decref(cfg); json_decref(head);
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: two labels have one name: AdapterHub's label2id cannot hold them", adapter);
        goto out;
    }
    if ((rc = peftc_mkdir_p(out_dir, err))) { json_decref(cfg); json_decref(head); goto out; }
    enum { CAP = 4096 };
    it = calloc(CAP, sizeof *it);
    w = calloc(CAP, sizeof *w);
    if (!it || !w) { json_decref(cfg); json_decref(head); rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    int n = ahub_items(&t, name, it, CAP);
    for (int f = 0; f < 2 && !rc; f++) {
        int nw = 0;
        for (int k = 0; k < n; k++)
            if (it[k].head == f) {
                if (!f) {   /* BertAdapterModel's key: the base model's "bert." first */
                    memmove(it[k].name + 5, it[k].name, strlen(it[k].name) + 1);
                    memcpy(it[k].name, "bert.", 5);
                }
                w[nw] = (st_write_item){.name = it[k].name, .ndim = it[k].ndim, .shape = {it[k].shape[0], it[k].shape[1]}, .data = it[k].data};
                nw++;
            }
        char path[4096];
        if (!(rc = peftc_path_join(path, sizeof path, out_dir, f ? "model_head.safetensors" : "adapter.safetensors", err)))
            rc = st_write_f32(path, w, nw, NULL, err);
    }
    if (!rc) rc = write_json(out_dir, "head_config.json", head, err);
    else json_decref(head);
    /* the config last: a directory with it is complete */
    if (!rc) rc = write_json(out_dir, "adapter_config.json", cfg, err);
    else json_decref(cfg);
out:
    free(it);
    free(w);
    if (t_ok) task_free(&t);
    labels_free(&labels);
    if (tok) peftc_tokenizer_free(tok);
    if (m) peftc_model_free(m);
    return rc;
}
