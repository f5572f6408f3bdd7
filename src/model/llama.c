/* llama.c: the Llama decoder: HF config/weights, GGUF, KV-cache forward. */
#include "core/json_file.h"
#include "model/llama_internal.h"
#include "model/model.h"
#include "io/safetensors.h"
#include "io/gguf.h"
#include "kernels/nf4.h"
#include "kernels/quant.h"
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>



const llama_config *llama_model_config(const llama_model *m) { return &m->cfg; }
const gguf_file *llama_model_gguf(const llama_model *m) { return m->gguf; }
llama_layer *llama_model_layer(llama_model *m, int i) { return &m->layers[i]; }
uint32_t llama_model_embd_type(const llama_model *m) { return m->tok_embd.type; }

static void *own(llama_model *m, size_t bytes)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return NULL;
        m->owned = o; m->cap_owned = cap;
    }
    void *p = peftc_alloc_aligned(bytes ? bytes : 64);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

static void free_packed(llama_model *m)
{
    if (m->layers)
        for (int l = 0; l < m->cfg.num_layers; l++) {
            llama_layer *L = &m->layers[l];
            llama_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
            for (int i = 0; i < 7; i++) { quant_packed_free(ws[i]->packed); matmul_bf16_free(ws[i]->bf16); ws[i]->bf16 = NULL; }
        }
    quant_packed_free(m->output.packed);
    matmul_bf16_free(m->output.bf16);
    m->output.bf16 = NULL;
}

void llama_free(llama_model *m)
{
    if (!m) return;
    free_packed(m);
    for (int i = 0; m->nf4 && i < 7 * m->cfg.num_layers; i++) nf4_free(&m->nf4[i]);
    free(m->nf4);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_st; i++) peftc_safetensors_free(m->st[i]);
    gguf_close(m->gguf);
    free(m->layers);
    free(m->path);
    free(m);
}

/* ------------------------------------------------------------ HF config */
static peftc_status jint(json_t *root, const char *path, const char *key, int required, int def, int lo, int *out,
                         peftc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        *out = def;
        return PEFTC_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > (1 << 30))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" must be an integer >= %d", path, key, lo);
    *out = (int)json_integer_value(v);
    return PEFTC_OK;
}

static peftc_status jfloat(json_t *root, const char *path, const char *key, float def, float *out, peftc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) { *out = def; return PEFTC_OK; }
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" must be a positive number", path, key);
    *out = (float)json_number_value(v);
    return PEFTC_OK;
}

/* bos/eos: an integer, or a list (the first entry is taken) */
static int jtoken(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    if (json_is_array(v)) v = json_array_get(v, 0);
    return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

static peftc_status check_config(const char *path, llama_config *c, peftc_error *err)
{
    peftc_status rc = model_check_size(path, c->vocab_size, c->hidden_size, c->num_layers, c->intermediate_size, 0, err);
    if (rc) return rc;
    if (c->num_heads <= 0 || c->hidden_size % c->num_heads)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: hidden size %d is not a multiple of the %d heads", path,
                          c->hidden_size, c->num_heads);
    if (c->head_dim <= 0) c->head_dim = c->hidden_size / c->num_heads;
    if (c->head_dim % 2) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: odd head_dim %d", path, c->head_dim);
    if (c->num_kv_heads <= 0) c->num_kv_heads = c->num_heads;
    if (c->num_heads % c->num_kv_heads)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: %d attention heads are not a multiple of %d key/value heads",
                          path, c->num_heads, c->num_kv_heads);
    return PEFTC_OK;
}

static peftc_status hf_config(const char *path, llama_config *c, peftc_error *err)
{
    char *buf;
    size_t n;
    peftc_status rc = peftc_read_file(path, &buf, &n, err);
    if (rc) return rc;
    rc = llama_config_parse(buf, n, path, c, err);
    free(buf);
    return rc;
}

peftc_status llama_config_parse(const char *text, size_t len, const char *path, llama_config *c, peftc_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    peftc_status rc = PEFTC_OK;
    memset(c, 0, sizeof *c);
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing \"model_type\"", path); goto out; }
    if (strcmp(json_string_value(mt), "llama")) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not llama", path, json_string_value(mt));
        goto out;
    }
    if ((rc = jint(root, path, "hidden_size", 1, 0, 1, &c->hidden_size, err)) ||
        (rc = jint(root, path, "intermediate_size", 1, 0, 1, &c->intermediate_size, err)) ||
        (rc = jint(root, path, "num_hidden_layers", 1, 0, 1, &c->num_layers, err)) ||
        (rc = jint(root, path, "num_attention_heads", 1, 0, 1, &c->num_heads, err)) ||
        (rc = jint(root, path, "num_key_value_heads", 0, c->num_heads, 1, &c->num_kv_heads, err)) ||
        (rc = jint(root, path, "head_dim", 0, 0, 1, &c->head_dim, err)) ||
        (rc = jint(root, path, "vocab_size", 1, 0, 1, &c->vocab_size, err)) ||
        (rc = jint(root, path, "max_position_embeddings", 0, 2048, 1, &c->max_position, err)) ||
        (rc = jfloat(root, path, "rms_norm_eps", 1e-6f, &c->rms_norm_eps, err)) ||
        (rc = jfloat(root, path, "rope_theta", 10000.f, &c->rope_theta, err)))
        goto out;
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    c->tie_word_embeddings = tie ? json_is_true(tie) : 1;   /* PretrainedConfig's default */
    c->bos_id = jtoken(root, "bos_token_id");
    c->eos_id = jtoken(root, "eos_token_id");
    json_t *hact = json_object_get(root, "hidden_act");
    if (hact && !(json_is_string(hact) && !strcmp(json_string_value(hact), "silu"))) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (silu only)", path,
                        json_is_string(hact) ? json_string_value(hact) : "?");
        goto out;
    }
    json_t *bias = json_object_get(root, "attention_bias"), *mbias = json_object_get(root, "mlp_bias");
    if (json_is_true(bias) || json_is_true(mbias)) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: attention_bias / mlp_bias are not supported", path);
        goto out;
    }
    json_t *rs = json_object_get(root, "rope_scaling");
    c->rope_factor = 1;
    if (rs && !json_is_null(rs)) {
        json_t *t = json_object_get(rs, "rope_type");
        if (!t) t = json_object_get(rs, "type");
        const char *type = json_is_string(t) ? json_string_value(t) : "(none)";
        if ((rc = jfloat(rs, path, "factor", 1.f, &c->rope_factor, err))) goto out;
        if (!strcmp(type, "default")) {
            c->rope_scaling = LLAMA_ROPE_SCALING_NONE;
        } else if (!strcmp(type, "linear")) {
            c->rope_scaling = LLAMA_ROPE_SCALING_LINEAR;
        } else if (!strcmp(type, "llama3")) {
            c->rope_scaling = LLAMA_ROPE_SCALING_LLAMA3;
            if ((rc = jfloat(rs, path, "low_freq_factor", 1.f, &c->rope_low_freq_factor, err)) ||
                (rc = jfloat(rs, path, "high_freq_factor", 4.f, &c->rope_high_freq_factor, err)) ||
                (rc = jint(rs, path, "original_max_position_embeddings", 0, 8192, 1, &c->rope_orig_ctx, err)))
                goto out;
            if (!(c->rope_high_freq_factor > c->rope_low_freq_factor)) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: rope_scaling: high_freq_factor must exceed low_freq_factor", path);
                goto out;
            }
        } else {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED,
                            "%s: rope_scaling type \"%s\" is not supported (null, linear, llama3)", path, type);
            goto out;
        }
    }
    c->rope_interleaved = 0;
    rc = check_config(path, c, err);
out:
    json_decref(root);
    return rc;
}

/* RoPE inverse frequencies (hd/2), with the configured scaling (as
 * transformers' _compute_default/linear/llama3_parameters). ff: ggml's
 * rope_freqs factors (dividing the frequencies) or NULL. */
static void rope_freqs(const llama_config *c, float *inv, const float *ff)
{
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / hd);
        if (c->rope_scaling == LLAMA_ROPE_SCALING_LINEAR) f /= c->rope_factor;
        else if (c->rope_scaling == LLAMA_ROPE_SCALING_LLAMA3) {
            double lo_wl = c->rope_orig_ctx / c->rope_low_freq_factor;
            double hi_wl = c->rope_orig_ctx / c->rope_high_freq_factor;
            double wl = 2 * M_PI / f;
            if (wl > lo_wl) f /= c->rope_factor;
            else if (wl >= hi_wl) {
                double s = (c->rope_orig_ctx / wl - c->rope_low_freq_factor) /
                           (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - s) * f / c->rope_factor + s * f;
            }
        }
        if (ff) f /= ff[i];
        inv[i] = (float)f;
    }
}

/* ----------------------------------------------------------- HF weights */
static const st_tensor *hf_find(const llama_model *m, const char *name)
{
    for (int i = 0; i < m->n_st; i++) {
        const st_tensor *t = st_find(m->st[i], name);
        if (t) return t;
    }
    return NULL;
}

static const peftc_safetensors *hf_file_of(const llama_model *m, const st_tensor *t)
{
    for (int i = 0; i < m->n_st; i++)
        if ((const char *)t->data >= (const char *)m->st[i]->map &&
            (const char *)t->data < (const char *)m->st[i]->map + m->st[i]->size)
            return m->st[i];
    return m->st[0];
}

/* Tensor `name` of shape (d0) or (d0, d1) as fp32: mapped if F32, else an owned copy. */
/* A NaN or Inf weight would make every logit NaN with exit 0: one pass at load names it. */
static peftc_status hf_finite(const llama_model *m, const char *name, const float *p, int64_t n, peftc_error *err)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s holds a non-finite value (%g) at element %lld", m->path, name,
                              (double)p[i], (long long)i);
    return PEFTC_OK;
}

static peftc_status hf_tensor(llama_model *m, const char *name, int ndim, int64_t d0, int64_t d1, const float **out,
                              peftc_error *err)
{
    const st_tensor *t = hf_find(m, name);
    if (!t) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing tensor %s", m->path, name);
    int shape_ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (!shape_ok) {
        char got[96] = "", *p = got;
        for (int i = 0; i < t->ndim && p < got + 80; i++)
            p += snprintf(p, (size_t)(got + sizeof got - p), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (ndim == 1)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%lld]", m->path, name, got,
                              (long long)d0);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%lld, %lld]", m->path, name,
                          got, (long long)d0, (long long)d1);
    }
    if (t->dtype == ST_F32) { *out = t->data; return hf_finite(m, name, t->data, t->numel, err); }
    if (t->dtype != ST_F16 && t->dtype != ST_BF16)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s (F32, F16, BF16 supported)", m->path,
                          name, st_dtype_name(t->dtype));
    float *dst = own(m, (size_t)t->numel * sizeof(float));
    if (!dst) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory converting %s", name);
    peftc_status rc = st_to_f32(hf_file_of(m, t), t, dst, err);
    if (rc) return rc;
    *out = dst;
    return hf_finite(m, name, dst, t->numel, err);
}

static peftc_status hf_weight(llama_model *m, const char *name, int out_dim, int in_dim, llama_weight *w,
                              peftc_error *err)
{
    const float *p;
    peftc_status rc = hf_tensor(m, name, 2, out_dim, in_dim, &p, err);
    if (rc) return rc;
    /* the finiteness pass read every page of a mapped weight: drop them again
     * (the page cache keeps the file), so that a base stored otherwise in
     * training (NF4, bf16 packs) never holds the whole fp32 file at once */
    const st_tensor *t = hf_find(m, name);
    if (t->dtype == ST_F32) st_release(hf_file_of(m, t), p, (size_t)out_dim * in_dim * sizeof(float));
    w->type = GGML_TYPE_F32; w->data = p; w->in = in_dim; w->out = out_dim; w->bf16 = NULL; w->bf16_failed = 0;
    return PEFTC_OK;
}

static peftc_status hf_open_files(llama_model *m, const char *dir, peftc_error *err)
{
    char path[4096];
    peftc_status rc;
    if ((rc = peftc_path_join(path, sizeof path, dir, "model.safetensors", err))) return rc;
    if (peftc_file_exists(path)) {
        if ((rc = peftc_safetensors_open(path, &m->st[0], err))) return rc;
        m->n_st = 1;
        return PEFTC_OK;
    }
    if ((rc = peftc_path_join(path, sizeof path, dir, "model.safetensors.index.json", err))) return rc;
    if (!peftc_file_exists(path))
        return peftc_fail(err, PEFTC_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *root = peftc_json_load_file(path, 0, &jerr);
    if (!root) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) { json_decref(root); return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no weight_map", path); }
    const char *key;
    json_t *val;
    char names[MAX_SHARDS][256];
    json_object_foreach(wm, key, val) {
        const char *f = json_string_value(val);
        if (!f || strchr(f, '/') || strlen(f) >= 256) {
            json_decref(root);
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: bad file name for %s", path, key);
        }
        int seen = 0;
        for (int i = 0; i < m->n_st && !seen; i++) seen = !strcmp(names[i], f);
        if (seen) continue;
        if (m->n_st == MAX_SHARDS) {
            json_decref(root);
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: more than %d shards", path, MAX_SHARDS);
        }
        char sp[4096];
        if ((rc = peftc_path_join(sp, sizeof sp, dir, f, err)) || (rc = peftc_safetensors_open(sp, &m->st[m->n_st], err))) {
            json_decref(root);
            return rc;
        }
        strcpy(names[m->n_st++], f);
    }
    json_decref(root);
    if (!m->n_st) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: empty weight_map", path);
    return PEFTC_OK;
}

static peftc_status hf_load(llama_model *m, const char *dir, peftc_error *err)
{
    char path[4096];
    peftc_status rc;
    if ((rc = peftc_path_join(path, sizeof path, dir, "config.json", err)) || (rc = hf_config(path, &m->cfg, err)) ||
        (rc = hf_open_files(m, dir, err)))
        return rc;
    const llama_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    int QD = c->num_heads * hd, KVD = c->num_kv_heads * hd;
    if ((rc = hf_weight(m, "model.embed_tokens.weight", c->vocab_size, C, &m->tok_embd, err)) ||
        (rc = hf_tensor(m, "model.norm.weight", 1, C, 0, &m->norm, err)))
        return rc;
    if (c->tie_word_embeddings) m->output = m->tok_embd;
    else if ((rc = hf_weight(m, "lm_head.weight", c->vocab_size, C, &m->output, err))) return rc;
    m->layers = calloc((size_t)c->num_layers, sizeof *m->layers);
    if (!m->layers) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->num_layers; l++) {
        llama_layer *L = &m->layers[l];
        char n[256];
#define HFW(suffix, o, i, dst) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), hf_weight(m, n, o, i, dst, err))
#define HFN(suffix, dst) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), hf_tensor(m, n, 1, C, 0, dst, err))
        if ((rc = HFW("self_attn.q_proj.weight", QD, C, &L->wq)) || (rc = HFW("self_attn.k_proj.weight", KVD, C, &L->wk)) ||
            (rc = HFW("self_attn.v_proj.weight", KVD, C, &L->wv)) || (rc = HFW("self_attn.o_proj.weight", C, QD, &L->wo)) ||
            (rc = HFW("mlp.gate_proj.weight", F, C, &L->wgate)) || (rc = HFW("mlp.up_proj.weight", F, C, &L->wup)) ||
            (rc = HFW("mlp.down_proj.weight", C, F, &L->wdown)) || (rc = HFN("input_layernorm.weight", &L->attn_norm)) ||
            (rc = HFN("post_attention_layernorm.weight", &L->ffn_norm)))
            return rc;
#undef HFW
#undef HFN
    }
    return PEFTC_OK;
}

/* ----------------------------------------------------------------- GGUF */
static peftc_status gg_int(const gguf_file *g, const char *key, int required, int def, int lo, int *out, peftc_error *err)
{
    int64_t v;
    int r = gguf_get_int(g, key, &v);
    if (r == 0) {
        if (required) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing metadata %s", gguf_path(g), key);
        *out = def;
        return PEFTC_OK;
    }
    if (r < 0 || v < lo || v > (1 << 30))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: metadata %s must be an integer >= %d", gguf_path(g), key, lo);
    *out = (int)v;
    return PEFTC_OK;
}

static peftc_status gg_float(const gguf_file *g, const char *key, float def, float *out, peftc_error *err)
{
    double v;
    int r = gguf_get_float(g, key, &v);
    if (r == 0) { *out = def; return PEFTC_OK; }
    if (r < 0 || !(v > 0)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: metadata %s must be a positive number", gguf_path(g), key);
    *out = (float)v;
    return PEFTC_OK;
}

static int gg_streq(const gguf_file *g, const char *key, const char *want, char *got, size_t cap)
{
    const char *s;
    size_t n;
    if (gguf_get_str(g, key, &s, &n) != 1) { snprintf(got, cap, "(none)"); return 0; }
    snprintf(got, cap, "%.*s", (int)(n < cap - 1 ? n : cap - 1), s);
    return n == strlen(want) && !memcmp(s, want, n);
}

peftc_status llama_config_from_gguf(const gguf_file *g, llama_config *c, peftc_error *err)
{
    char arch[128];
    peftc_status rc;
    memset(c, 0, sizeof *c);
    if (!gg_streq(g, "general.architecture", "llama", arch, sizeof arch))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: architecture \"%s\" is not supported (llama only)", gguf_path(g), arch);
    int rope_dim;
    if ((rc = gg_int(g, "llama.block_count", 1, 0, 1, &c->num_layers, err)) ||
        (rc = gg_int(g, "llama.embedding_length", 1, 0, 1, &c->hidden_size, err)) ||
        (rc = gg_int(g, "llama.feed_forward_length", 1, 0, 1, &c->intermediate_size, err)) ||
        (rc = gg_int(g, "llama.attention.head_count", 1, 0, 1, &c->num_heads, err)) ||
        (rc = gg_int(g, "llama.attention.head_count_kv", 0, c->num_heads, 1, &c->num_kv_heads, err)) ||
        (rc = gg_int(g, "llama.attention.key_length", 0, 0, 1, &c->head_dim, err)) ||
        (rc = gg_int(g, "llama.context_length", 0, 2048, 1, &c->max_position, err)) ||
        (rc = gg_float(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &c->rms_norm_eps, err)) ||
        (rc = gg_float(g, "llama.rope.freq_base", 10000.f, &c->rope_theta, err)) ||
        (rc = gg_int(g, "llama.rope.dimension_count", 0, 0, 0, &rope_dim, err)))
        return rc;
    int vt = gguf_find_key(g, "tokenizer.ggml.tokens");
    int nvocab = vt >= 0 && gguf_arr_type(g, vt) >= 0 ? (int)gguf_arr_len(g, vt) : 0;
    if ((rc = gg_int(g, "llama.vocab_size", !nvocab, nvocab, 1, &c->vocab_size, err))) return rc;
    if ((rc = gg_int(g, "tokenizer.ggml.bos_token_id", 0, -1, 0, &c->bos_id, err)) ||
        (rc = gg_int(g, "tokenizer.ggml.eos_token_id", 0, -1, 0, &c->eos_id, err)))
        return rc;
    char st[64];
    c->rope_factor = 1;
    if (gguf_find_key(g, "llama.rope.scaling.type") >= 0 && !gg_streq(g, "llama.rope.scaling.type", "none", st, sizeof st)) {
        if (strcmp(st, "linear"))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: llama.rope.scaling.type \"%s\" is not supported (none, linear)",
                              gguf_path(g), st);
        c->rope_scaling = LLAMA_ROPE_SCALING_LINEAR;
        if ((rc = gg_float(g, "llama.rope.scaling.factor", 1.f, &c->rope_factor, err))) return rc;
    } else if (gguf_find_key(g, "llama.rope.scale_linear") >= 0) {
        if ((rc = gg_float(g, "llama.rope.scale_linear", 1.f, &c->rope_factor, err))) return rc;
        c->rope_scaling = c->rope_factor != 1 ? LLAMA_ROPE_SCALING_LINEAR : LLAMA_ROPE_SCALING_NONE;
    }
    c->rope_interleaved = 1;
    if ((rc = check_config(gguf_path(g), c, err))) return rc;
    if (rope_dim && rope_dim != c->head_dim)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: partial RoPE (llama.rope.dimension_count %d, head size %d)",
                          gguf_path(g), rope_dim, c->head_dim);
    return PEFTC_OK;
}

/* A GGUF tensor of ggml shape (ne0 = in, ne1 = out); ne1 = 0 for a vector. */
static peftc_status gg_tensor(const gguf_file *g, const char *name, int64_t ne0, int64_t ne1, int optional,
                              const gguf_tensor **out, peftc_error *err)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    *out = t;
    if (!t) return optional ? PEFTC_OK : peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing tensor %s", gguf_path(g), name);
    const ggml_type_traits *tr = ggml_traits(t->type);
    if (!tr || !tr->supported || t->type == GGML_TYPE_Q8_K)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor %s has type %s, which peftc cannot compute with", gguf_path(g),
                          name, tr ? tr->name : "(unknown)");
    int nd = ne1 ? 2 : 1;
    int ok = t->ne[0] == ne0 && (nd == 1 ? t->n_dims == 1 || (t->n_dims == 2 && t->ne[1] == 1) : t->n_dims == 2 && t->ne[1] == ne1);
    if (!ok) {
        char got[96] = "", *p = got;
        for (int i = 0; i < t->n_dims && p < got + 80; i++)
            p += snprintf(p, (size_t)(got + sizeof got - p), "%s%lld", i ? ", " : "", (long long)t->ne[i]);
        if (nd == 1)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%lld]", gguf_path(g), name, got,
                              (long long)ne0);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%lld, %lld] (ggml order)",
                          gguf_path(g), name, got, (long long)ne0, (long long)ne1);
    }
    /* a NaN/Inf weight or block scale would make every logit NaN with exit 0:
     * one pass over the scales (a few bytes per block) names it at load */
    const char *field;
    float v;
    int64_t at = quant_find_nonfinite(t->type, t->data, gguf_tensor_numel(t), &field, &v);
    if (at >= 0 && !strcmp(field, "value"))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s holds a non-finite value (%g) at element %lld", gguf_path(g),
                          name, (double)v, (long long)at);
    if (at >= 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s: the %s block of values %lld..%lld has a non-finite scale %s (%g)",
                          gguf_path(g), name, tr->name, (long long)at, (long long)(at + tr->block - 1), field, (double)v);
    return PEFTC_OK;
}

/* A norm or frequency vector as fp32 (converted if stored otherwise). */
static peftc_status gg_vector(llama_model *m, const gguf_file *g, const char *name, int64_t n, int optional,
                              const float **out, peftc_error *err)
{
    const gguf_tensor *t;
    peftc_status rc = gg_tensor(g, name, n, 0, optional, &t, err);
    *out = NULL;
    if (rc || !t) return rc;
    if (t->type == GGML_TYPE_F32) { *out = t->data; return PEFTC_OK; }
    float *dst = own(m, (size_t)n * sizeof(float));
    if (!dst) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    if (quant_dequantize_row(t->type, t->data, dst, n))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor %s: cannot convert its type", gguf_path(g), name);
    *out = dst;
    return PEFTC_OK;
}

static peftc_status gg_weight(llama_model *m, const gguf_file *g, const char *name, int in, int outd, int optional,
                              llama_weight *w, peftc_error *err)
{
    const gguf_tensor *t;
    peftc_status rc = gg_tensor(g, name, in, outd, optional, &t, err);
    if (rc || !t) return rc;
    if (ggml_row_bytes(t->type, in) == 0)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor %s: rows of %d values are not whole %s blocks", gguf_path(g),
                          name, in, ggml_traits(t->type)->name);
    w->type = t->type; w->data = t->data; w->in = in; w->out = outd; w->bf16 = NULL; w->bf16_failed = 0;
    if (quant_act_type(t->type) == 0xFFFFFFFFu)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor %s has type %s, which has no matmul kernel", gguf_path(g), name,
                          ggml_traits(t->type)->name);
    if (m->dequant && t->type != GGML_TYPE_F32) {
        size_t rb = ggml_row_bytes(t->type, in);
        float *dst = own(m, (size_t)in * outd * sizeof(float));
        if (!dst) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory dequantising %s", name);
        for (int r = 0; r < outd; r++)
            quant_dequantize_row(t->type, (const char *)t->data + (size_t)r * rb, dst + (size_t)r * in, in);
        w->type = GGML_TYPE_F32; w->data = dst;
    }
    return PEFTC_OK;
}

/* GGUF files are recognised by their magic, whatever their name */
static int has_gguf_magic(const char *path)
{
    FILE *f = peftc_fopen_regular(path);
    if (!f) return 0;
    char m[4];
    int ok = fread(m, 1, 4, f) == 4 && !memcmp(m, "GGUF", 4);
    fclose(f);
    return ok;
}

static void pack_weight(llama_weight *w, int keep_source);

static peftc_status gguf_load(llama_model *m, const char *path, peftc_error *err)
{
    peftc_status rc;
    gguf_file *g;
    if ((rc = gguf_open(path, &g, err))) return rc;
    m->gguf = g;
    if ((rc = llama_config_from_gguf(g, &m->cfg, err))) return rc;
    llama_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    int QD = c->num_heads * hd, KVD = c->num_kv_heads * hd;
    if ((rc = gg_weight(m, g, "token_embd.weight", C, c->vocab_size, 0, &m->tok_embd, err)) ||
        (rc = gg_vector(m, g, "output_norm.weight", C, 0, &m->norm, err)) ||
        (rc = gg_weight(m, g, "output.weight", C, c->vocab_size, 1, &m->output, err)) ||
        (rc = gg_vector(m, g, "rope_freqs.weight", hd / 2, 1, &m->rope_ff, err)))
        return rc;
    c->tie_word_embeddings = m->output.data == NULL;
    if (c->tie_word_embeddings) m->output = m->tok_embd;
    m->layers = calloc((size_t)c->num_layers, sizeof *m->layers);
    if (!m->layers) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->num_layers; l++) {
        llama_layer *L = &m->layers[l];
        char n[128];
#define GW(suffix, i, o, dst) (snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix), gg_weight(m, g, n, i, o, 0, dst, err))
#define GN(suffix, dst) (snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix), gg_vector(m, g, n, C, 0, dst, err))
        if ((rc = GW("attn_q", C, QD, &L->wq)) || (rc = GW("attn_k", C, KVD, &L->wk)) || (rc = GW("attn_v", C, KVD, &L->wv)) ||
            (rc = GW("attn_output", QD, C, &L->wo)) || (rc = GW("ffn_gate", C, F, &L->wgate)) ||
            (rc = GW("ffn_up", C, F, &L->wup)) || (rc = GW("ffn_down", F, C, &L->wdown)) ||
            (rc = GN("attn_norm", &L->attn_norm)) || (rc = GN("ffn_norm", &L->ffn_norm)))
            return rc;
#undef GW
#undef GN
    }
    /* pack after every check passed (a failed load frees nothing half-made) */
    if (!m->dequant && !getenv("PEFTC_NO_PACK")) {
        for (int l = 0; l < c->num_layers; l++) {
            llama_layer *L = &m->layers[l];
            llama_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
            for (int i = 0; i < 7; i++) pack_weight(ws[i], 0);
        }
        pack_weight(&m->output, c->tie_word_embeddings);
    }
    return PEFTC_OK;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

peftc_status llama_load(const char *path, llama_model **out, peftc_error *err)
{
    return llama_load_ex(path, 0, out, err);
}

/* LLAMA_LOAD_NF4 on an HF base: each block's seven linear weights to NF4
 * (bitsandbytes' bytes), the mapped fp32 pages released */
static peftc_status quantize_blocks_nf4(llama_model *m, peftc_error *err)
{
    const llama_config *c = &m->cfg;
    m->nf4 = calloc((size_t)c->num_layers * 7, sizeof *m->nf4);
    if (!m->nf4) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->num_layers; l++) {
        llama_layer *L = &m->layers[l];
        llama_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
        for (int i = 0; i < 7; i++) {
            llama_weight *w = ws[i];
            if (w->in % NF4_BLOCK)
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: layer %d: --quantize nf4 needs input widths that are "
                                  "multiples of %d, got %d", m->path, l, NF4_BLOCK, w->in);
            nf4_tensor *t = &m->nf4[l * 7 + i];
            int q = nf4_quantize(t, w->data, w->out, w->in, 1);
            if (q) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory quantising layer %d to NF4", m->path, l);
            size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = (size_t)w->in * w->out * sizeof(float);
            uintptr_t a = ((uintptr_t)w->data + pg - 1) & ~(uintptr_t)(pg - 1),
                      e = ((uintptr_t)w->data + bytes) & ~(uintptr_t)(pg - 1);
            if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);   /* mapped or owned: not read again */
            w->type = QUANT_TYPE_NF4;
            w->data = t;
        }
    }
    return PEFTC_OK;
}

peftc_status llama_load_ex(const char *path, unsigned flags, llama_model **out, peftc_error *err)
{
    *out = NULL;
    llama_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) { free(m); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    m->dequant = (flags & LLAMA_LOAD_DEQUANT) != 0;
    int is_gguf = ends_with(path, ".gguf") || has_gguf_magic(path);
    if (is_gguf && (flags & LLAMA_LOAD_NF4)) {
        llama_free(m);
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: --quantize nf4 takes an F32/F16/BF16 safetensors base; this "
                          "GGUF's weights are quantised already", path);
    }
    peftc_status rc = is_gguf ? gguf_load(m, path, err) : hf_load(m, path, err);
    if (!rc && (flags & LLAMA_LOAD_NF4)) rc = quantize_blocks_nf4(m, err);
    if (!rc) {
        const float *ff = m->rope_ff;
        m->inv_freq = own(m, (size_t)m->cfg.head_dim / 2 * sizeof(float));
        if (!m->inv_freq) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        else rope_freqs(&m->cfg, m->inv_freq, ff);
    }
    if (rc) { llama_free(m); return rc; }
    *out = m;
    return PEFTC_OK;
}

/* ------------------------------------------------------------ KV cache */
void llama_ctx_free(llama_ctx *c)
{
    free(c->block);
    free(c->k);
    free(c->v);
    memset(c, 0, sizeof *c);
}

#define R16(x) (((size_t)(x) + 15) & ~(size_t)15)

peftc_status llama_ctx_init(llama_ctx *c, const llama_model *m, int n_ctx, int n_batch, peftc_error *err)
{
    memset(c, 0, sizeof *c);
    const llama_config *cf = &m->cfg;
    if (n_ctx < 1 || n_batch < 1)
        return peftc_fail(err, PEFTC_ERR_INPUT, "context %d and batch %d must be positive", n_ctx, n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx;
    size_t L = (size_t)cf->num_layers, C = (size_t)cf->hidden_size, F = (size_t)cf->intermediate_size;
    size_t hd = (size_t)cf->head_dim, QD = (size_t)cf->num_heads * hd, KVD = (size_t)cf->num_kv_heads * hd;
    size_t NB = (size_t)n_batch;
    int nth = omp_get_max_threads();
    size_t total = 2 * L * R16((size_t)n_ctx * KVD) + 3 * R16(NB * C) + 2 * R16(NB * QD) + 2 * R16(NB * F) +
                   R16(NB * hd) + (size_t)nth * ATTN_KV_QBLOCK * R16(n_ctx);
    c->block = peftc_alloc_aligned(total * sizeof(float));
    c->k = calloc(L, sizeof *c->k);
    c->v = calloc(L, sizeof *c->v);
    if (!c->block || !c->k || !c->v) {
        llama_ctx_free(c);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate a KV cache of %d positions (%.1f MiB)", n_ctx,
                          total * 4.0 / (1 << 20));
    }
    float *p = c->block;
#define TAKE(dst, n) do { (dst) = p; p += R16(n); } while (0)
    for (size_t l = 0; l < L; l++) { TAKE(c->k[l], (size_t)n_ctx * KVD); TAKE(c->v[l], (size_t)n_ctx * KVD); }
    TAKE(c->x, NB * C); TAKE(c->xn, NB * C); TAKE(c->tmp, NB * C);
    TAKE(c->q, NB * QD); TAKE(c->att, NB * QD);
    TAKE(c->g, NB * F); TAKE(c->u, NB * F);
    TAKE(c->rope_cs, NB * hd);
    TAKE(c->scores, (size_t)nth * ATTN_KV_QBLOCK * R16(n_ctx));
#undef TAKE
    c->n_ctx = n_ctx; c->n_batch = n_batch; c->n_threads = nth;
    return PEFTC_OK;
}

/* -------------------------------------------------------------- forward */
/* Prompt rows (N > 4) on BF16 weights with the bf16 path on (the default
 * where it is faster: AMX, Zen 4; --fp32 turns it off), and on F32 weights
 * only with --bf16 asked for (their products stay exact by default: greedy
 * text would change): a bf16 pack of the weight, made on first use and kept
 * beside the file's rows (decoding, N <= 4, still reads those in place,
 * exactly), multiplied with the activations rounded to bf16 — what
 * llama.cpp computes for a BF16 file. Zen 4, SmolLM2-135M BF16, pp128:
 * 300 -> 888 tokens/s (llama.cpp 710). */
static const matmul_bf16 *prefill_bf16(const llama_weight *w)
{
    llama_weight *mw = (llama_weight *)w;   /* the pack is a cache of the weight's own values */
    if (!mw->bf16 && !mw->bf16_failed) {
        if (w->type == GGML_TYPE_BF16) mw->bf16 = matmul_bf16_pack_bf16(w->data, w->in, w->out);
        else mw->bf16 = matmul_bf16_pack(w->data, w->in, w->out);
        mw->bf16_failed = !mw->bf16;
    }
    return mw->bf16;
}

int llama_linear(float *out, const float *in, const llama_weight *w, int N)
{
    if (N > 4 && w->data && ((w->type == GGML_TYPE_BF16 && kernels_bf16()) ||
                             (w->type == GGML_TYPE_F32 && kernels_bf16_forced()))) {
        const matmul_bf16 *p = prefill_bf16(w);
        if (p) { matmul_bf16_forward(out, in, p, NULL, N, w->in, w->out, 0); return 0; }
    }
    /* a few rows (decoding): one pass over the weight rows split between
     * threads by rows (quant_matmul's float path) instead of sgemm */
    if (w->type == GGML_TYPE_F32 && N > 4) {
        matmul_forward(out, in, w->data, NULL, N, w->in, w->out, 0);
        return 0;
    }
    if (w->packed) return quant_matmul_packed(out, in, w->packed, N);
    return quant_matmul(out, in, w->data, w->type, N, w->in, w->out);
}

/* Packs a quantised weight for quant_matmul_packed (5x faster decode than
 * decoding the file's blocks on every call) and, unless the blocks are still
 * needed (the tied embedding's rows), drops the file's pages from the
 * resident set: the weights are then held once, still quantised. */
static void pack_weight(llama_weight *w, int keep_source)
{
    if (w->type == GGML_TYPE_F32 || !w->data) return;
    w->packed = quant_pack(w->data, w->type, w->in, w->out);
    if (!w->packed || keep_source) return;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = ggml_row_bytes(w->type, w->in) * (size_t)w->out;
    uintptr_t a = ((uintptr_t)w->data + pg - 1) & ~(uintptr_t)(pg - 1), e = ((uintptr_t)w->data + bytes) & ~(uintptr_t)(pg - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Row `id` of the token embedding table as fp32. */
void llama_embed_row(float *dst, const llama_weight *w, int id)
{
    if (w->type == GGML_TYPE_F32) memcpy(dst, (const float *)w->data + (size_t)id * w->in, (size_t)w->in * sizeof *dst);
    else quant_dequantize_row(w->type, (const char *)w->data + (size_t)id * ggml_row_bytes(w->type, w->in), dst, w->in);
}

static void rmsnorm(float *out, const float *x, const float *w, int N, int C, float eps)
{
    #pragma omp parallel for schedule(static) if (N > 4)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C;
        float *oi = out + (size_t)i * C;
        double ss = 0;
        for (int j = 0; j < C; j++) ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int j = 0; j < C; j++) oi[j] = xi[j] * r * w[j];
    }
}

/* Rotates n rows of nh heads (row stride `stride`) in place. cs: (n, hd) with
 * cos at [i*hd + 2j], sin at [i*hd + 2j + 1]. */
void llama_rope(float *x, int n, int nh, int hd, size_t stride, const float *cs, int interleaved)
{
    int h2 = hd / 2;
    #pragma omp parallel for collapse(2) schedule(static) if (n * nh > 16)
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            float *v = x + (size_t)i * stride + (size_t)h * hd;
            const float *c = cs + (size_t)i * hd;
            if (interleaved) {
                for (int j = 0; j < h2; j++) {
                    float a = v[2 * j], b = v[2 * j + 1], co = c[2 * j], si = c[2 * j + 1];
                    v[2 * j] = a * co - b * si;
                    v[2 * j + 1] = b * co + a * si;
                }
            } else {
                for (int j = 0; j < h2; j++) {
                    float a = v[j], b = v[j + h2], co = c[2 * j], si = c[2 * j + 1];
                    v[j] = a * co - b * si;
                    v[j + h2] = b * co + a * si;
                }
            }
        }
}

static void site(const llama_run *run, int l, site_id s, const float *x, float *h, int n)
{
    if (run && run->deltas && delta_count(run->deltas, l, s))
        delta_forward(run->deltas, run->pb, l, s, x, h, n, 0, NULL, 0);
}

/* A linear layer and the deltas at its site. At a decoding step, deltas that
 * can be split by output columns (bf16 LoRA factors) run inside the
 * product's own threads, each on the columns it wrote: no extra fork and
 * join per site (210 a token for LoRA on every linear of a 30-layer model,
 * each a wait on a descheduled thread when the machine is busy). */
typedef struct site_cols { const delta_set *ds; int l; site_id s; const float *x; float *h; int n; } site_cols;

static void site_cols_run(void *ctx, int o_lo, int o_hi)
{
    const site_cols *c = ctx;
    delta_forward_cols(c->ds, c->l, c->s, c->x, c->h, c->n, o_lo, o_hi);
}

static int linear_site(const llama_run *run, int l, site_id s, float *out, const float *in, const llama_weight *w,
                       int n)
{
    if (run && run->deltas && w->packed && delta_count(run->deltas, l, s) && delta_cols_ready(run->deltas, l, s, n)) {
        site_cols c = {run->deltas, l, s, in, out, n};
        quant_epilogue e = {site_cols_run, &c};
        return quant_matmul_packed_epi(out, in, w->packed, n, &e);
    }
    int rc = llama_linear(out, in, w, n);
    if (!rc) site(run, l, s, in, out, n);
    return rc;
}

/* causal GQA attention of n queries at positions pos.. over cache rows 0..pos+n-1 */
static void attention(llama_ctx *c, const llama_config *cf, int l, int n, int pos)
{
    attention_kv_forward(c->att, c->q, c->k[l], c->v[l], n, pos, cf->num_heads, cf->num_kv_heads, cf->head_dim,
                         c->scores, (size_t)ATTN_KV_QBLOCK * R16(c->n_ctx));
}

peftc_status llama_forward(llama_model *m, llama_ctx *c, const llama_run *run, const int32_t *ids, int n, int pos,
                           float *logits, int all_logits, peftc_error *err)
{
    const llama_config *cf = &m->cfg;
    if (n < 1 || pos < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "empty batch or negative position");
    if ((int64_t)pos + n > c->n_ctx)
        return peftc_fail(err, PEFTC_ERR_INPUT, "prompt of %d tokens (at position %d) exceeds the context of %d tokens",
                          pos + n, pos, c->n_ctx);
    if (n > c->n_batch)
        return peftc_fail(err, PEFTC_ERR_INPUT, "batch of %d tokens exceeds the context's batch size %d", n, c->n_batch);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cf->vocab_size)
            return peftc_fail(err, PEFTC_ERR_INPUT, "token id %d out of range (vocabulary of %d)", ids[i], cf->vocab_size);
    int C = cf->hidden_size, hd = cf->head_dim, L = cf->num_layers, F = cf->intermediate_size;
    size_t KVD = (size_t)cf->num_kv_heads * hd;
    int qr;
    for (int i = 0; i < n; i++) llama_embed_row(c->x + (size_t)i * C, &m->tok_embd, ids[i]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hd / 2; j++) {
            double a = (double)(pos + i) * m->inv_freq[j];
            c->rope_cs[(size_t)i * hd + 2 * j] = (float)cos(a);
            c->rope_cs[(size_t)i * hd + 2 * j + 1] = (float)sin(a);
        }
    for (int l = 0; l < L; l++) {
        const llama_layer *W = &m->layers[l];
        float *kc = c->k[l] + (size_t)pos * KVD, *vc = c->v[l] + (size_t)pos * KVD;
        rmsnorm(c->xn, c->x, W->attn_norm, n, C, cf->rms_norm_eps);
        if ((qr = linear_site(run, l, SITE_ATTN_Q, c->q, c->xn, &W->wq, n))) goto qfail;
        if ((qr = linear_site(run, l, SITE_ATTN_K, kc, c->xn, &W->wk, n))) goto qfail;
        if ((qr = linear_site(run, l, SITE_ATTN_V, vc, c->xn, &W->wv, n))) goto qfail;
        llama_rope(c->q, n, cf->num_heads, hd, (size_t)cf->num_heads * hd, c->rope_cs, cf->rope_interleaved);
        llama_rope(kc, n, cf->num_kv_heads, hd, KVD, c->rope_cs, cf->rope_interleaved);
        attention(c, cf, l, n, pos);
        if ((qr = linear_site(run, l, SITE_ATTN_O, c->tmp, c->att, &W->wo, n))) goto qfail;
        for (size_t i = 0; i < (size_t)n * C; i++) c->x[i] += c->tmp[i];
        rmsnorm(c->xn, c->x, W->ffn_norm, n, C, cf->rms_norm_eps);
        if ((qr = linear_site(run, l, SITE_FFN_GATE, c->g, c->xn, &W->wgate, n))) goto qfail;
        if ((qr = linear_site(run, l, SITE_FFN_UP, c->u, c->xn, &W->wup, n))) goto qfail;
        #pragma omp parallel for schedule(static) if ((size_t)n * F > 65536)
        for (size_t i = 0; i < (size_t)n * F; i++) {
            float g = c->g[i];
            c->g[i] = g / (1.0f + expf(-g)) * c->u[i];
        }
        site(run, l, SITE_FFN_ACT, c->g, c->g, n);   /* down_proj's input: (IA)^3's feed-forward scale */
        if ((qr = linear_site(run, l, SITE_FFN_DOWN, c->tmp, c->g, &W->wdown, n))) goto qfail;
        for (size_t i = 0; i < (size_t)n * C; i++) c->x[i] += c->tmp[i];
    }
    int first = all_logits ? 0 : n - 1, rows = n - first;
    rmsnorm(c->xn, c->x + (size_t)first * C, m->norm, rows, C, cf->rms_norm_eps);
    if ((qr = llama_linear(logits, c->xn, &m->output, rows))) goto qfail;
    c->n_past = pos + n;
    return PEFTC_OK;
qfail:
    return peftc_fail(err, qr == QUANT_ENOMEM ? PEFTC_ERR_NOMEM : PEFTC_ERR_UNSUPPORTED,
                      "quantised matmul failed (%s)", qr == QUANT_ENOMEM ? "out of memory" : "unsupported type or size");
}
