/* decoder.c: the decoder families behind decoder.h. One family today:
 * Llama (model/llama.c), which covers SmolLM, Llama 2/3, Mistral-style
 * checkpoints with config.json model_type "llama" or GGUF architecture
 * "llama". */
#include "model/decoder.h"
#include "model/llama.h"
#include "kernels/quant.h"

#include <stdlib.h>
#include <string.h>

struct decoder {
    llama_model *m;
    llama_ctx ctx;
    int has_ctx;
    decoder_info info;
    float **owned;          /* fp32 copies made by merges */
    int n_owned;
};

/* PEFT module names of the Llama blocks (LlamaDecoderLayer) and llama.cpp's
 * names of the same weights (blk.N.<gguf>.weight) */
static const struct { const char *module; site_id site; const char *gguf; } llama_modules[] = {
    {"self_attn.q_proj", SITE_ATTN_Q, "attn_q"}, {"self_attn.k_proj", SITE_ATTN_K, "attn_k"},
    {"self_attn.v_proj", SITE_ATTN_V, "attn_v"}, {"self_attn.o_proj", SITE_ATTN_O, "attn_output"},
    {"mlp.gate_proj", SITE_FFN_GATE, "ffn_gate"}, {"mlp.up_proj", SITE_FFN_UP, "ffn_up"},
    {"mlp.down_proj", SITE_FFN_DOWN, "ffn_down"},
};

peftc_status decoder_load(const char *path, decoder **out, peftc_error *err)
{
    return decoder_load_quantized(path, PEFTC_QUANT_NONE, out, err);
}

peftc_status decoder_load_quantized(const char *path, peftc_base_quant q, decoder **out, peftc_error *err)
{
    *out = NULL;
    decoder *d = calloc(1, sizeof *d);
    if (!d) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc = llama_load_ex(path, q == PEFTC_QUANT_NF4 ? LLAMA_LOAD_NF4 : 0, &d->m, err);
    if (rc) { free(d); return rc; }
    const llama_config *c = llama_model_config(d->m);
    d->info.arch = "llama";
    d->info.n_vocab = c->vocab_size;
    d->info.n_layers = c->num_layers;
    d->info.d_model = c->hidden_size;
    d->info.n_ctx_train = c->max_position;
    d->info.from_gguf = llama_model_gguf(d->m) != NULL;
    const llama_layer *l0 = llama_model_layer(d->m, 0);
    const ggml_type_traits *tq = ggml_traits(l0->wq.type), *te = ggml_traits(llama_model_embd_type(d->m));
    uint32_t wt = l0->wq.type;
    d->info.block_quantised = wt != GGML_TYPE_F32 && wt != GGML_TYPE_F16 && wt != GGML_TYPE_BF16;
    snprintf(d->info.weights, sizeof d->info.weights, "%s (token embedding %s)",
             l0->wq.type == QUANT_TYPE_NF4 ? "nf4" : tq ? tq->name : "?", te ? te->name : "?");
    *out = d;
    return PEFTC_OK;
}

void decoder_free(decoder *d)
{
    if (!d) return;
    if (d->has_ctx) llama_ctx_free(&d->ctx);
    llama_free(d->m);
    for (int i = 0; i < d->n_owned; i++) free(d->owned[i]);
    free(d->owned);
    free(d);
}

const decoder_info *decoder_get_info(const decoder *d) { return &d->info; }
const gguf_file *decoder_gguf(const decoder *d) { return (const gguf_file *)llama_model_gguf(d->m); }

peftc_status decoder_ctx_init(decoder *d, int n_ctx, int n_batch, peftc_error *err)
{
    if (d->has_ctx) { llama_ctx_free(&d->ctx); d->has_ctx = 0; }
    peftc_status rc = llama_ctx_init(&d->ctx, d->m, n_ctx, n_batch, err);
    d->has_ctx = rc == PEFTC_OK;
    return rc;
}

peftc_status decoder_eval(decoder *d, const delta_set *ds, const param_block *pb, const int32_t *ids, int n,
                          int pos, float *logits, int all, peftc_error *err)
{
    if (!d->has_ctx) return peftc_fail(err, PEFTC_ERR_INPUT, "decoder: no context (decoder_ctx_init first)");
    llama_run run = {(delta_set *)ds, pb};
    return llama_forward(d->m, &d->ctx, ds ? &run : NULL, ids, n, pos, logits, all, err);
}

int decoder_site_of_module(const decoder *d, const char *module, site_id *s)
{
    (void)d;
    for (size_t i = 0; i < sizeof llama_modules / sizeof *llama_modules; i++)
        if (!strcmp(module, llama_modules[i].module)) { *s = llama_modules[i].site; return 1; }
    return 0;
}

const char *decoder_module_of_site(const decoder *d, site_id s)
{
    (void)d;
    for (size_t i = 0; i < sizeof llama_modules / sizeof *llama_modules; i++)
        if (llama_modules[i].site == s) return llama_modules[i].module;
    return NULL;
}

const char *decoder_peft_layers_prefix(const decoder *d)
{
    (void)d;
    return "base_model.model.model.layers.";
}

static llama_weight *site_weight(llama_layer *l, site_id s)
{
    switch (s) {
    case SITE_ATTN_Q: return &l->wq;
    case SITE_ATTN_K: return &l->wk;
    case SITE_ATTN_V: return &l->wv;
    case SITE_ATTN_O: return &l->wo;
    case SITE_FFN_GATE: return &l->wgate;
    case SITE_FFN_UP: return &l->wup;
    case SITE_FFN_DOWN: return &l->wdown;
    default: return NULL;
    }
}

int decoder_site_dims(const decoder *d, site_id s, int *in, int *out)
{
    llama_weight *w = site_weight(llama_model_layer(d->m, 0), s);
    if (!w) return 0;
    *in = w->in;
    *out = w->out;
    return 1;
}

void decoder_adapt_lora_b(const decoder *d, site_id s, float *b, int out, int r)
{
    const llama_config *c = llama_model_config(d->m);
    if (!c->rope_interleaved || (s != SITE_ATTN_Q && s != SITE_ATTN_K)) return;
    int hd = c->head_dim, heads = out / hd;
    float *tmp = malloc((size_t)hd * r * sizeof *tmp);
    if (!tmp) return;
    /* HF row h*hd + j*(hd/2) + i  ->  GGUF row h*hd + 2i + j (convert_hf_to_gguf's permute) */
    for (int h = 0; h < heads; h++) {
        float *blk = b + (size_t)h * hd * r;
        memcpy(tmp, blk, (size_t)hd * r * sizeof *tmp);
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < hd / 2; i++)
                memcpy(blk + (size_t)(2 * i + j) * r, tmp + (size_t)(j * (hd / 2) + i) * r, (size_t)r * sizeof *tmp);
    }
    free(tmp);
}

const char *decoder_gguf_name_of_site(const decoder *d, site_id s)
{
    (void)d;
    for (size_t i = 0; i < sizeof llama_modules / sizeof *llama_modules; i++)
        if (llama_modules[i].site == s) return llama_modules[i].gguf;
    return NULL;
}

void decoder_lora_b_from_gguf(const decoder *d, site_id s, float *b, int out, int r)
{
    const llama_config *c = llama_model_config(d->m);
    if (c->rope_interleaved || (s != SITE_ATTN_Q && s != SITE_ATTN_K)) return;
    int hd = c->head_dim, heads = out / hd;
    float *tmp = malloc((size_t)hd * r * sizeof *tmp);
    if (!tmp) return;
    /* GGUF row h*hd + 2i + j  ->  HF row h*hd + j*(hd/2) + i (undoing convert_hf_to_gguf's permute) */
    for (int h = 0; h < heads; h++) {
        float *blk = b + (size_t)h * hd * r;
        memcpy(tmp, blk, (size_t)hd * r * sizeof *tmp);
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < hd / 2; i++)
                memcpy(blk + (size_t)(j * (hd / 2) + i) * r, tmp + (size_t)(2 * i + j) * r, (size_t)r * sizeof *tmp);
    }
    free(tmp);
}

/* The F32 weight at (layer, s) replaced by a copy this decoder owns, to be
 * changed in place; quantised weights are refused (they stay quantised). */
static peftc_status owned_weight(decoder *d, int layer, site_id s, llama_weight **out, peftc_error *err)
{
    llama_weight *w = site_weight(llama_model_layer(d->m, layer), s);
    if (!w) return peftc_fail(err, PEFTC_ERR_INPUT, "merge: no linear layer at %s", site_name(s));
    if (w->type != GGML_TYPE_F32) {
        const ggml_type_traits *t = ggml_traits(w->type);
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED,
                          "--merge: the base weights are %s and stay quantised; run the adapter unmerged (without --merge)",
                          t ? t->name : "quantised");
    }
    float **o = realloc(d->owned, (size_t)(d->n_owned + 1) * sizeof *o);
    if (!o) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    d->owned = o;
    size_t n = (size_t)w->in * w->out;
    float *copy = malloc(n * sizeof *copy);
    if (!copy) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory merging a %d x %d weight", w->out, w->in);
    memcpy(copy, w->data, n * sizeof *copy);
    d->owned[d->n_owned++] = copy;
    w->data = copy;
    *out = w;
    return PEFTC_OK;
}

peftc_status decoder_merge_lora(decoder *d, int layer, site_id s, const float *a, const float *b, int r,
                                float scale, peftc_error *err)
{
    llama_weight *w;
    peftc_status rc = owned_weight(d, layer, s, &w, err);
    if (rc) return rc;
    float *copy = (float *)w->data;
    /* W (out, in) += scale * B (out, r) A (r, in) */
    for (int i = 0; i < w->out; i++)
        for (int k = 0; k < r; k++) {
            float bik = scale * b[(size_t)i * r + k];
            const float *ak = a + (size_t)k * w->in;
            float *wi = copy + (size_t)i * w->in;
            for (int j = 0; j < w->in; j++) wi[j] += bik * ak[j];
        }
    return PEFTC_OK;
}

peftc_status decoder_merge_scale(decoder *d, int layer, site_id s, const float *l, int input, peftc_error *err)
{
    llama_weight *w;
    peftc_status rc = owned_weight(d, layer, s, &w, err);
    if (rc) return rc;
    float *copy = (float *)w->data;
    for (int i = 0; i < w->out; i++)
        for (int j = 0; j < w->in; j++) copy[(size_t)i * w->in + j] *= l[input ? j : i];
    return PEFTC_OK;
}
