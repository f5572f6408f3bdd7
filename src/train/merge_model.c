/* merge_model.c: peftc_merge_model, `peftc merge`: a base model with an
 * adapter's mergeable deltas folded in, written as a plain model that tools
 * without adapter code load (transformers' AutoModel*, llama.cpp).
 *   - BERT encoders: the classifier (base + adapter) merged in memory
 *     (method_merge, the same fold `predict --merge` uses), then every base
 *     tensor under transformers' base-model prefix ("bert."), the pooler and
 *     the head as BertFor{Sequence,Token}Classification names them;
 *   - Llama decoders: the LoRA factors as the decoder applies them
 *     (lora_read: rsLoRA, rank/alpha patterns, AdaLoRA, q/k rows in the
 *     base's order) added to the weights they adapt, or an IA3 adapter's
 *     vectors multiplying their rows (outputs) or columns (feed-forward
 *     inputs), as PEFT's merge_and_unload does, read from the base file itself so
 *     that every other tensor and (GGUF) every metadata key passes through
 *     unchanged. */
#include "train/eval.h"
#include "train/adapter_formats.h"
#include "core/json_file.h"
#include "io/gguf_write.h"
#include "io/safetensors.h"
#include "kernels/quant.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct out_type {
    const char *name;
    uint32_t ggml;
    int st;              /* st_dtype, -1: GGUF only */
    int ftype;           /* llama.cpp's general.file_type (LLAMA_FTYPE_ALL_F32, MOSTLY_*) */
} out_type;

static const out_type out_types[] = {
    {"f32", GGML_TYPE_F32, ST_F32, 0},   {"f16", GGML_TYPE_F16, ST_F16, 1},  {"bf16", GGML_TYPE_BF16, ST_BF16, 32},
    {"q8_0", GGML_TYPE_Q8_0, -1, 7},     {"q4_1", GGML_TYPE_Q4_1, -1, 3},
};

static peftc_status parse_type(const char *type, int gguf, const out_type **t, peftc_error *err)
{
    *t = &out_types[0];
    if (!type) return PEFTC_OK;
    for (size_t i = 0; i < sizeof out_types / sizeof *out_types; i++)
        if (!strcmp(type, out_types[i].name)) {
            if (out_types[i].st < 0 && !gguf)
                return peftc_fail(err, PEFTC_ERR_INPUT, "merge: --type %s is a GGUF block type; a Hugging Face directory holds f32, f16 or bf16", type);
            *t = &out_types[i];
            return PEFTC_OK;
        }
    return peftc_fail(err, PEFTC_ERR_INPUT, "merge: --type %s: the types are f32, f16, bf16 (and for a GGUF base q8_0, q4_1)", type);
}

/* n floats as type t: *out = src for f32, else a malloc'd conversion
 * (ggml's rounding: round-to-nearest-even for f16/bf16, as torch's casts) */
static peftc_status encode(const float *src, int64_t rows, int64_t cols, uint32_t type, void **out, size_t *bytes,
                           peftc_error *err)
{
    const ggml_type_traits *tr = ggml_traits(type);
    if (cols % tr->block)
        return peftc_fail(err, PEFTC_ERR_INPUT, "merge: rows of %lld values do not split into %s blocks of %d",
                          (long long)cols, tr->name, tr->block);
    size_t row = (size_t)(cols / tr->block) * (size_t)tr->bytes;
    *bytes = row * (size_t)rows;
    if (type == GGML_TYPE_F32) { *out = (void *)src; return PEFTC_OK; }
    char *d = malloc(*bytes ? *bytes : 1);
    if (!d) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory converting %lld values to %s", (long long)(rows * cols), tr->name);
    for (int64_t r = 0; r < rows; r++) quant_quantize_row(type, src + r * cols, d + (size_t)r * row, cols);
    *out = d;
    return PEFTC_OK;
}

/* buffers kept alive until the output is written */
typedef struct keep_list {
    void **p;
    int n, cap;
} keep_list;

static peftc_status keep(keep_list *k, void *p, peftc_error *err)
{
    if (k->n == k->cap) {
        int cap = k->cap ? 2 * k->cap : 64;
        void **q = realloc(k->p, (size_t)cap * sizeof *q);
        if (!q) { free(p); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        k->p = q;
        k->cap = cap;
    }
    k->p[k->n++] = p;
    return PEFTC_OK;
}

static void keep_free(keep_list *k)
{
    for (int i = 0; i < k->n; i++) free(k->p[i]);
    free(k->p);
}

/* the tokenizer and generation files a loader looks for beside the weights */
static const char *const side_files[] = {"vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "generation_config.json", "added_tokens.json", NULL};

/* config.json of the source with fields replaced (fields: an object whose
 * members overwrite; drop: keys removed), written atomically to out/config.json */
static peftc_status write_config(const char *model, const char *out, json_t *fields, const char *const *drop,
                                 peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, model, "config.json", err);
    if (rc) return rc;
    json_error_t je;
    json_t *cfg = peftc_json_load_file(path, 0, &je);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s", path, je.text);
    }
    for (int i = 0; drop && drop[i]; i++) json_object_del(cfg, drop[i]);
    json_object_update(cfg, fields);
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    if (!text) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    if (!(rc = peftc_path_join(path, sizeof path, out, "config.json", err))) {
        size_t len = strlen(text);
        text[len] = '\n';   /* json_dumps' NUL becomes the final newline */
        rc = peftc_write_file_atomic(path, text, len + 1, err);
    }
    free(text);
    return rc;
}

static const char *st_dtype_torch(int st)
{
    return st == ST_F16 ? "float16" : st == ST_BF16 ? "bfloat16" : "float32";
}

/* ------------------------------------------------------------ encoders */

static peftc_status merge_encoder(const char *model, const char *adapter, const char *out, const out_type *ot,
                                  peftc_error *err)
{
    peftc_classifier *c;
    peftc_status rc = peftc_classifier_load(model, adapter, &c, err);
    if (rc) return rc;
    keep_list kept = {0};
    st_write_raw *items = NULL;
    char (*names)[160] = NULL;
    model_tensor *refs = NULL;
    json_t *fields = NULL;
    if ((rc = peftc_classifier_merge(c, err))) {
        if (rc == PEFTC_ERR_UNSUPPORTED) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
            rc = peftc_fail(err, rc, "%s: %s; run it unmerged (predict --adapter)", adapter, msg);
        }
        goto done;
    }
    task *t = classifier_task(c);
    peftc_model *m = t->m;
    const model_family *f = m->family;
    int C = m->cfg.hidden_size, K = t->labels.n;
    /* transformers' base_model_prefix: PEFT's prefix without "base_model.model." */
    const char *pre = f->peft_prefix;
    if (!strncmp(pre, "base_model.model.", 17)) pre += 17;
    int n = f->tensors(m, NULL, 0);
    refs = calloc((size_t)n + 1, sizeof *refs);
    items = calloc((size_t)n + 4, sizeof *items);
    names = calloc((size_t)n + 4, sizeof *names);
    if (!refs || !items || !names) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    f->tensors(m, refs, n);
    int k = 0;
    struct extra_tensor { const char *name; const float *data; int64_t rows, cols; int ndim; } extra[4];
    int ne = 0;
    int seq = t->kind != TASK_TOKEN_CLS;
    const float *bpw = NULL, *bpb = NULL;
    if (t->kind == TASK_EMBEDDING && f->pooler(m, &bpw, &bpb) && bpw) {   /* unused by the mean pooling; kept so the model is whole */
        extra[ne++] = (struct extra_tensor){"pooler.dense.weight", bpw, C, C, 2};
        extra[ne++] = (struct extra_tensor){"pooler.dense.bias", bpb, 1, C, 1};
    } else if (seq && t->head.pool_w) {
        extra[ne++] = (struct extra_tensor){"pooler.dense.weight", t->head.pool_w, C, C, 2};
        extra[ne++] = (struct extra_tensor){"pooler.dense.bias", t->head.pool_b, 1, C, 1};
    }
    const float *hw = seq ? t->head.cls_w : t->thead.w, *hb = seq ? t->head.cls_b : t->thead.b;
    for (int i = 0; i < n + ne; i++) {
        const float *src = i < n ? *refs[i].w : extra[i - n].data;
        int64_t rows = i < n ? (refs[i].ndim == 2 ? refs[i].shape[0] : 1) : extra[i - n].rows;
        int64_t cols = i < n ? (refs[i].ndim == 2 ? refs[i].shape[1] : refs[i].shape[0]) : extra[i - n].cols;
        snprintf(names[k], sizeof names[k], "%s%s", pre, i < n ? refs[i].name : extra[i - n].name);
        void *data;
        size_t bytes;
        if ((rc = encode(src, rows, cols, ot->ggml, &data, &bytes, err))) goto done;
        if (data != src && (rc = keep(&kept, data, err))) goto done;
        items[k] = (st_write_raw){.name = names[k], .dtype = (st_dtype)ot->st, .ndim = i < n ? refs[i].ndim : extra[i - n].ndim, .data = data};
        items[k].shape[0] = items[k].ndim == 2 ? rows : cols;
        items[k].shape[1] = cols;
        k++;
    }
    /* an embedding adapter (FEATURE_EXTRACTION) has no head: the merged model is a plain BertModel */
    int emb = t->kind == TASK_EMBEDDING;
    for (int j = 0; j < 2 && !emb; j++) {
        void *data;
        size_t bytes;
        if ((rc = encode(j ? hb : hw, j ? 1 : K, j ? K : C, ot->ggml, &data, &bytes, err))) goto done;
        if (data != (j ? hb : hw) && (rc = keep(&kept, data, err))) goto done;
        items[k] = (st_write_raw){.name = j ? "classifier.bias" : "classifier.weight", .dtype = (st_dtype)ot->st,
                                  .ndim = j ? 1 : 2, .shape = {K, C}, .data = data};
        k++;
    }
    if ((rc = peftc_mkdir_p(out, err))) goto done;
    char path[4096];
    if ((rc = peftc_path_join(path, sizeof path, out, "model.safetensors", err)) ||
        (rc = st_write(path, items, k, NULL, err)))
        goto done;
    /* the head's config: labels, and the loss transformers pairs with it */
    fields = json_object();
    json_t *id2 = json_object(), *l2i = json_object();
    for (int i = 0; i < K; i++) {
        char key[24];
        snprintf(key, sizeof key, "%d", i);
        json_object_set_new(id2, key, json_string(t->labels.names[i]));
        json_object_set_new(l2i, t->labels.names[i], json_integer(i));
    }
    if (!emb) {
        json_object_set_new(fields, "id2label", id2);
        json_object_set_new(fields, "label2id", l2i);
    } else {
        json_decref(id2);
        json_decref(l2i);
    }
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(emb ? "BertModel" : seq ? "BertForSequenceClassification" : "BertForTokenClassification"));
    if (strcmp(f->name, "bert")) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "merge: the %s family has no transformers head class here", f->name);
        json_decref(arch);
        goto done;
    }
    json_object_set_new(fields, "architectures", arch);
    if (seq && !emb)
        json_object_set_new(fields, "problem_type", json_string(t->kind == TASK_REGRESSION ? "regression"
                                                                : t->kind == TASK_MULTI_LABEL ? "multi_label_classification"
                                                                                              : "single_label_classification"));
    json_object_set_new(fields, "torch_dtype", json_string(st_dtype_torch(ot->st)));
    static const char *const drop[] = {"dtype", "num_labels", NULL};
    if ((rc = write_config(model, out, fields, drop, err))) goto done;
    rc = peftc_copy_present_files(model, out, side_files, err);
done:
    json_decref(fields);
    keep_free(&kept);
    free(items);
    free(names);
    free(refs);
    peftc_classifier_free(c);
    return rc;
}

/* ------------------------------------------------------------ decoders */

/* W (out, in) += scale * B (out, r) A (r, in) */
static void add_lora(float *w, const lora_factor *f)
{
    for (int i = 0; i < f->out; i++)
        for (int k = 0; k < f->r; k++) {
            float bik = f->scale * f->b[(size_t)i * f->r + k];
            const float *ak = f->a + (size_t)k * f->in;
            float *wi = w + (size_t)i * f->in;
            for (int j = 0; j < f->in; j++) wi[j] += bik * ak[j];
        }
}

/* W (out, in) scaled by an (IA)^3 vector: its rows (output channels) or its
 * columns (input channels), as PEFT's IA3 merge multiplies the weight */
static void scale_ia3(float *w, const ia3_vector *v, int64_t out, int64_t in)
{
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < in; j++) w[i * in + j] *= v->l[v->input ? j : i];
}

/* What the adapter holds for the weight "<prefix>N.<module>.weight" (prefix
 * "model.layers." / "blk.", modules by decoder_module_of_site /
 * decoder_gguf_name_of_site): its LoRA factor and (IA)^3 vector, NULL where
 * none; returns 1 if the name is a block linear weight at all */
static int adapted(const lora_factors *lf, const decoder *dec, const char *name, int gguf, const lora_factor **f,
                   const ia3_vector **v)
{
    *f = NULL;
    *v = NULL;
    const char *pre = gguf ? "blk." : "model.layers.";
    size_t pl = strlen(pre);
    if (strncmp(name, pre, pl)) return 0;
    char *end;
    long layer = strtol(name + pl, &end, 10);
    if (end == name + pl || *end != '.' || layer < 0 || layer > INT_MAX) return 0;
    const char *mod = end + 1;
    for (int s = 0; s < SITE_COUNT; s++) {
        const char *mn = gguf ? decoder_gguf_name_of_site(dec, (site_id)s) : decoder_module_of_site(dec, (site_id)s);
        if (!mn) continue;
        size_t ml = strlen(mn);
        if (strncmp(mod, mn, ml) || strcmp(mod + ml, ".weight")) continue;
        for (int i = 0; i < lf->n && !*f; i++)
            if (lf->f[i].layer == layer && lf->f[i].site == (site_id)s) *f = &lf->f[i];
        for (int i = 0; i < lf->nv && !*v; i++)
            if (lf->v[i].layer == layer && lf->v[i].site == (site_id)s) *v = &lf->v[i];
        return 1;
    }
    return 0;
}

/* a vector must fit the weight it scales */
static peftc_status check_vector(const ia3_vector *v, int64_t out, int64_t in, const char *adapter, const char *name,
                                 peftc_error *err)
{
    if (v->n == (v->input ? in : out)) return PEFTC_OK;
    return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: its (IA)3 vector for %s has %d values, the weight %lld %s (wrong base model?)", adapter,
                      name, v->n, (long long)(v->input ? in : out), v->input ? "inputs" : "outputs");
}

/* every factor and vector must land on a tensor of the file: counted by the callers */
static peftc_status check_all_used(const lora_factors *lf, int used, const char *adapter, peftc_error *err)
{
    if (used == lf->n + lf->nv) return PEFTC_OK;
    if (lf->nv)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %d of its %d (IA)3 vectors scale no weight of the base model (wrong base model?)",
                          adapter, lf->n + lf->nv - used, lf->nv);
    return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %d of its %d LoRA factors adapt no weight of the base model (wrong base model?)",
                      adapter, lf->n - used, lf->n);
}

static peftc_status merge_gguf(const char *model, const char *adapter, const char *out, const out_type *ot, int type_given,
                               decoder *dec, const lora_factors *lf, peftc_error *err)
{
    gguf_file *g;
    peftc_status rc = gguf_open(model, &g, err);
    if (rc) return rc;
    gguf_writer *w = NULL;
    keep_list kept = {0};
    float *tmp = NULL;
    int used = 0;
    if ((rc = gguf_writer_new(&w, err))) goto done;
    for (int i = 0; i < gguf_kv_count(g) && !rc; i++) {
        const char *key = gguf_key(g, i);
        /* the writer records the alignment itself; the file type follows --type */
        if (!strcmp(key, "general.alignment") || (type_given && !strcmp(key, "general.file_type"))) continue;
        rc = gguf_w_copy_kv(w, g, i, err);
    }
    if (!rc && type_given) rc = gguf_w_u32(w, "general.file_type", (uint32_t)ot->ftype, err);
    for (int i = 0; i < gguf_tensor_count(g) && !rc; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        const lora_factor *f;
        const ia3_vector *v;
        int linear = adapted(lf, dec, t->name, 1, &f, &v);
        if (!f && !v && !(linear && type_given)) {
            rc = gguf_w_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes, err);
            continue;
        }
        const ggml_type_traits *tr = ggml_traits(t->type);
        int64_t cols = t->ne[0], rows = t->n_dims >= 2 ? t->ne[1] : 1;
        if (t->n_dims != 2 || !tr || !tr->supported || cols % tr->block) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor %s (ggml type %u, %d dims) cannot be merged into", model, t->name,
                            t->type, t->n_dims);
            break;
        }
        if (f && (f->in != cols || f->out != rows)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: its factor for %s is (%d, %d), the weight is [%lld, %lld]", adapter, t->name,
                            f->out, f->in, (long long)rows, (long long)cols);
            break;
        }
        if (v && (rc = check_vector(v, rows, cols, adapter, t->name, err))) break;
        const ggml_type_traits *to = ggml_traits(ot->ggml);
        if (cols % to->block) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: tensor %s has rows of %lld values, which do not split into %s blocks of %d (--type f32, f16 or bf16)",
                            model, t->name, (long long)cols, to->name, to->block);
            break;
        }
        if (!(tmp = malloc((size_t)rows * (size_t)cols * sizeof *tmp))) {
            rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for %s", t->name);
            break;
        }
        size_t row_bytes = (size_t)(cols / tr->block) * (size_t)tr->bytes;
        for (int64_t r = 0; r < rows; r++)
            quant_dequantize_row(t->type, (const char *)t->data + (size_t)r * row_bytes, tmp + r * cols, cols);
        if (f) { add_lora(tmp, f); used++; }
        if (v) { scale_ia3(tmp, v, rows, cols); used++; }
        /* merged weights default to f32: re-quantising them is the user's choice (--type) */
        void *data;
        size_t bytes;
        if ((rc = encode(tmp, rows, cols, ot->ggml, &data, &bytes, err))) break;
        if (data != tmp) { free(tmp); }
        tmp = NULL;
        if ((rc = keep(&kept, data, err))) break;
        rc = gguf_w_tensor(w, t->name, ot->ggml, 2, t->ne, data, bytes, err);
    }
    if (!rc) rc = check_all_used(lf, used, adapter, err);
    if (!rc) rc = gguf_writer_write(w, out, gguf_alignment(g) == GGUF_DEFAULT_ALIGNMENT ? 0 : gguf_alignment(g), err);
done:
    free(tmp);
    keep_free(&kept);
    gguf_writer_free(w);
    gguf_close(g);
    return rc;
}

/* The safetensors files of an HF directory: model.safetensors, or the shards
 * the index names (each once). */
static peftc_status open_shards(const char *model, peftc_safetensors ***sts, int *n, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, model, "model.safetensors", err);
    if (rc) return rc;
    *sts = calloc(64, sizeof **sts);
    *n = 0;
    if (!*sts) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    if (peftc_file_exists(path)) {
        if ((rc = peftc_safetensors_open(path, &(*sts)[0], err))) return rc;
        *n = 1;
        return PEFTC_OK;
    }
    if ((rc = peftc_path_join(path, sizeof path, model, "model.safetensors.index.json", err))) return rc;
    json_error_t je;
    json_t *idx = peftc_json_load_file(path, 0, &je);
    json_t *map = json_object_get(idx, "weight_map");
    if (!json_is_object(map)) {
        json_decref(idx);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no model.safetensors, and no weight_map in the index", model);
    }
    const char *key;
    json_t *v;
    char seen[64][256];
    json_object_foreach(map, key, v) {
        const char *file = json_string_value(v);
        if (!file || strchr(file, '/') || strlen(file) >= sizeof seen[0]) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: weight_map entry of '%s' is not a file name beside it", path, key);
            break;
        }
        int dup = 0;
        for (int i = 0; i < *n && !dup; i++) dup = !strcmp(seen[i], file);
        if (dup) continue;
        if (*n == 64) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: more than 64 shards", path); break; }
        char sp[4096];
        if ((rc = peftc_path_join(sp, sizeof sp, model, file, err)) || (rc = peftc_safetensors_open(sp, &(*sts)[*n], err))) break;
        strcpy(seen[(*n)++], file);
    }
    json_decref(idx);
    return rc;
}

static peftc_status merge_hf_decoder(const char *model, const char *adapter, const char *out, const out_type *ot,
                                     decoder *dec, const lora_factors *lf, peftc_error *err)
{
    peftc_safetensors **sts = NULL;
    int nst = 0, used = 0, total = 0, k = 0;
    keep_list kept = {0};
    st_write_raw *items = NULL;
    peftc_status rc = open_shards(model, &sts, &nst, err);
    for (int s = 0; !rc && s < nst; s++) total += sts[s]->n;
    if (!rc && !(items = calloc((size_t)total + 1, sizeof *items))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int s = 0; !rc && s < nst; s++)
        for (int i = 0; i < sts[s]->n && !rc; i++) {
            const st_tensor *t = &sts[s]->t[i];
            const lora_factor *f;
            const ia3_vector *iv;
            adapted(lf, dec, t->name, 0, &f, &iv);
            if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
                /* integer buffers (none in Llama checkpoints): passed through */
                items[k] = (st_write_raw){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
                memcpy(items[k].shape, t->shape, sizeof t->shape);
                k++;
                continue;
            }
            if (f && (t->ndim != 2 || t->shape[0] != f->out || t->shape[1] != f->in)) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: its factor for %s is (%d, %d), the weight is not", adapter, t->name, f->out, f->in);
                break;
            }
            if (iv && t->ndim != 2) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s is not a matrix an (IA)3 vector scales", model, t->name); break; }
            if (iv && (rc = check_vector(iv, t->shape[0], t->shape[1], adapter, t->name, err))) break;
            float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *v);
            if (!v) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for %s", t->name); break; }
            if ((rc = keep(&kept, v, err)) || (rc = st_to_f32(sts[s], t, v, err))) break;
            if (f) { add_lora(v, f); used++; }
            if (iv) { scale_ia3(v, iv, t->shape[0], t->shape[1]); used++; }
            void *data;
            size_t bytes;
            if ((rc = encode(v, 1, t->numel, ot->ggml, &data, &bytes, err))) break;
            if (data != v && (rc = keep(&kept, data, err))) break;
            items[k] = (st_write_raw){.name = t->name, .dtype = (st_dtype)ot->st, .ndim = t->ndim, .data = data};
            memcpy(items[k].shape, t->shape, sizeof t->shape);
            k++;
        }
    if (!rc) rc = check_all_used(lf, used, adapter, err);
    char path[4096];
    if (!rc && !(rc = peftc_mkdir_p(out, err)) && !(rc = peftc_path_join(path, sizeof path, out, "model.safetensors", err)))
        rc = st_write(path, items, k, NULL, err);
    if (!rc) {
        json_t *fields = json_object();
        json_object_set_new(fields, "torch_dtype", json_string(st_dtype_torch(ot->st)));
        static const char *const drop[] = {"dtype", "quantization_config", NULL};
        rc = write_config(model, out, fields, drop, err);
        json_decref(fields);
    }
    if (!rc) rc = peftc_copy_present_files(model, out, side_files, err);
    keep_free(&kept);
    free(items);
    for (int s = 0; s < nst; s++) peftc_safetensors_free(sts[s]);
    free(sts);
    return rc;
}

static int is_gguf_path(const char *p)
{
    size_t n = strlen(p);
    return n > 5 && !strcmp(p + n - 5, ".gguf");
}

peftc_status peftc_merge_model(const char *model, const char *adapter, const char *out, const char *type,
                               peftc_error *err)
{
    char rm[PATH_MAX], ro[PATH_MAX];
    if (realpath(model, rm) && realpath(out, ro) && !strcmp(rm, ro))
        return peftc_fail(err, PEFTC_ERR_INPUT, "merge: --out %s is the model itself; give another path", out);
    int gguf = is_gguf_path(model) && peftc_file_exists(model);
    const out_type *ot;
    peftc_status rc = parse_type(type, gguf, &ot, err);
    if (rc) return rc;
    if (gguf && !is_gguf_path(out))
        return peftc_fail(err, PEFTC_ERR_INPUT, "merge: --out %s: a GGUF base merges into a .gguf file", out);
    if (!gguf) {
        char path[4096];
        peftc_config cfg;
        if ((rc = peftc_path_join(path, sizeof path, model, "config.json", err)) || (rc = peftc_config_load(path, &cfg, err)))
            return rc;
        if (cfg.arch != PEFTC_ARCH_LLAMA) return merge_encoder(model, adapter, out, ot, err);
    }
    decoder *dec;
    if ((rc = decoder_load(model, &dec, err))) return rc;
    lora_factors lf = {0};
    if (!(rc = lora_read(adapter, dec, 1.0f, &lf, err)))
        rc = gguf ? merge_gguf(model, adapter, out, ot, type != NULL, dec, &lf, err)
                  : merge_hf_decoder(model, adapter, out, ot, dec, &lf, err);
    lora_factors_free(&lf);
    decoder_free(dec);
    return rc;
}
