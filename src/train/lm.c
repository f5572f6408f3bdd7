/* lm.c: the public decoder API (peftc_lm_*): a decoder, its tokenizer, LoRA
 * adapters (PEFT directories or GGUF LoRA files) applied unmerged (delta modules at the linear sites, each
 * adapter's own scale) or merged, and the generation loop. */
#include "model/decoder.h"
#include "io/safetensors.h"
#include "tokenizer/bpe.h"
#include "train/adapter_formats.h"
#include "train/generate.h"
#include "train/lm_data.h"
#include "train/team.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

/* Threads for a decoding step (train/team.h). A step is ~10 ms of ~100
 * small products, each a fork and a join: when other processes hold the
 * cores, every join waits for a descheduled thread, and two threads ran
 * several times slower than one. A one-token step gives the same bits with
 * any team (products split by weight rows, fixed-lane sums; attention by
 * heads), so the tokens do not change, only the speed. */

struct peftc_lm {
    team_tuner tune;
    decoder *dec;
    bpe_tokenizer *tok;
    gen_model gen;
    delta_set ds;
    param_block pb;
    int n_ctx, n_batch;
    char path[1024];
    char describe[320];
};

void peftc_lm_opts_default(peftc_lm_opts *o)
{
    memset(o, 0, sizeof *o);
}

void peftc_gen_opts_default(peftc_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    sampler_opts so;
    sampler_opts_default(&so);   /* one place for the sampling defaults */
    o->temperature = so.temperature;
    o->top_k = so.top_k;
    o->top_p = so.top_p;
    o->min_p = so.min_p;
    o->repeat_penalty = so.repeat_penalty;
    o->repeat_last_n = so.repeat_last_n;
    o->seed = so.seed;
    o->max_new_tokens = 256;
    o->add_bos = -1;
}

/* ------------------------------------------------------------ tokenizer */

/* The model's tokenizer; *tok stays NULL when the model has none (a GGUF
 * without tokenizer.* keys, a directory without tokenizer.json): logits
 * from ids still work, text in or out is an error then. */
static peftc_status tokenizer_for(const char *path, const decoder *dec, bpe_tokenizer **tok, peftc_error *err)
{
    *tok = NULL;
    const gguf_file *g = decoder_gguf(dec);
    if (g) return gguf_find_key(g, "tokenizer.ggml.model") < 0 ? PEFTC_OK : bpe_from_gguf(g, tok, err);
    char p[4096];
    peftc_status rc = peftc_path_join(p, sizeof p, path, "tokenizer.json", err);
    if (rc) return rc;
    if (!peftc_file_exists(p)) return PEFTC_OK;
    return bpe_from_tokenizer_json(p, tok, err);
}

static peftc_status need_tokenizer(const peftc_lm *lm, peftc_error *err)
{
    if (lm->tok) return PEFTC_OK;
    return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: the model has no tokenizer (no tokenizer.ggml.* metadata or tokenizer.json): text cannot be encoded",
                      lm->path);
}

/* ------------------------------------------------------------- adapters */

/* Every adapter (a PEFT directory or a GGUF LoRA file, adapter_formats.c)
 * becomes one delta per adapted linear layer, with the factor's own rank and
 * scale (an IA3 adapter: one scale delta per vector); all deltas are declared first, then allocated at once and filled. */
static peftc_status load_adapters(peftc_lm *lm, const peftc_lm_opts *o, peftc_error *err)
{
    peftc_status rc = PEFTC_OK;
    const decoder_info *di = decoder_get_info(lm->dec);
    lora_factors *src = calloc((size_t)(o->n_adapters ? o->n_adapters : 1), sizeof *src);
    if (!src) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int k = 0; k < o->n_adapters && !rc; k++) {
        float us = o->adapter_scales ? o->adapter_scales[k] : 1.0f;
        if ((rc = lora_read(o->adapters[k], lm->dec, us, &src[k], err))) break;
        for (int i = 0; i < src[k].n && !rc; i++) {
            const lora_factor *f = &src[k].f[i];
            delta_spec sp = {.kind = DELTA_BOTTLENECK, .site = f->site, .insert = INSERT_PARALLEL, .act = ACT_IDENTITY,
                             .compose = COMPOSE_SCALE, .scale = f->scale, .r = f->r, .bias = 0, .init_lora = 1, .lora_names = 1};
            char prefix[160];
            snprintf(prefix, sizeof prefix, "adapter%d.%d.%s", k, f->layer, decoder_module_of_site(lm->dec, f->site));
            rc = delta_add(&lm->ds, &lm->pb, f->layer, f->in, f->out, &sp, prefix, err);
        }
        for (int i = 0; i < src[k].nv && !rc; i++) {
            /* (IA)^3: a scale delta on the output channels of its layer, or
             * (PEFT's feed-forward down_proj) on the SwiGLU product that is
             * down_proj's input; another layer's input has no site */
            const ia3_vector *v = &src[k].v[i];
            const char *mod = decoder_module_of_site(lm->dec, v->site);
            if (v->input && v->site != SITE_FFN_DOWN) {
                rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: its (IA)3 vector scales the input of %s, which is applied merged only "
                                "(peftc merge)", o->adapters[k], mod);
                break;
            }
            delta_spec sp = {.kind = DELTA_SCALE, .site = v->input ? SITE_FFN_ACT : v->site};
            char prefix[160];
            snprintf(prefix, sizeof prefix, "adapter%d.%d.%s", k, v->layer, mod);
            rc = delta_add(&lm->ds, &lm->pb, v->layer, v->n, v->n, &sp, prefix, err);
        }
    }
    if (!rc && lm->ds.n) rc = params_alloc(&lm->pb, err);
    for (int k = 0, di_ = 0; k < o->n_adapters && !rc; k++) {
        for (int i = 0; i < src[k].n; i++) {
            const lora_factor *f = &src[k].f[i];
            delta *d = &lm->ds.d[di_++];
            memcpy(params_value(&lm->pb, d->p_down), f->a, (size_t)f->r * f->in * sizeof(float));
            memcpy(params_value(&lm->pb, d->p_up), f->b, (size_t)f->out * f->r * sizeof(float));
        }
        for (int i = 0; i < src[k].nv; i++) {
            delta *d = &lm->ds.d[di_++];
            memcpy(params_value(&lm->pb, d->p_vec), src[k].v[i].l, (size_t)src[k].v[i].n * sizeof(float));
        }
    }
    for (int k = 0; k < o->n_adapters; k++) lora_factors_free(&src[k]);
    free(src);
    if (rc) return rc;
    if (!lm->ds.n) return PEFTC_OK;
    if (o->merge) {
        for (int i = 0; i < lm->ds.n && !rc; i++) {
            delta *d = &lm->ds.d[i];
            if (d->spec.kind == DELTA_SCALE)
                rc = d->spec.site == SITE_FFN_ACT ? decoder_merge_scale(lm->dec, d->layer, SITE_FFN_DOWN, params_value(&lm->pb, d->p_vec), 1, err)
                                                  : decoder_merge_scale(lm->dec, d->layer, d->spec.site, params_value(&lm->pb, d->p_vec), 0, err);
            else
                rc = decoder_merge_lora(lm->dec, d->layer, d->spec.site, params_value(&lm->pb, d->p_down),
                                        params_value(&lm->pb, d->p_up), d->spec.r, d->spec.scale, err);
        }
        delta_set_free(&lm->ds);
        memset(&lm->ds, 0, sizeof lm->ds);
        params_free(&lm->pb);
        memset(&lm->pb, 0, sizeof lm->pb);
        return rc;
    }
    if ((rc = delta_index(&lm->ds, di->n_layers, err))) return rc;
    if ((rc = delta_acts_alloc(&lm->ds, lm->n_batch, err))) return rc;
    /* decoding reads every factor once per token: on a block-quantised base
     * (whose own products round activations to 8 bits) the factors are read
     * as bf16, half the bytes (llama.cpp's GGUF LoRA files are f16 too);
     * float bases keep fp32 factors, exact against --merge */
    return di->block_quantised ? delta_set_freeze_bf16(&lm->ds, &lm->pb, err) : PEFTC_OK;
}

/* ------------------------------------------------------------ the handle */

static peftc_status eval_cb(void *model, const int32_t *ids, int n, int pos, float *logits, peftc_error *err)
{
    peftc_lm *lm = model;
    const delta_set *ds = lm->ds.n ? &lm->ds : NULL;
    if (n != 1)   /* prompt rows: big products, the caller's team */
        return decoder_eval(lm->dec, ds, &lm->pb, ids, n, pos, logits, 0, err);
    if (!lm->tune.every) team_tuner_init(&lm->tune, 0, 512);
    team_tuner_begin(&lm->tune);
    peftc_status rc = decoder_eval(lm->dec, ds, &lm->pb, ids, n, pos, logits, 0, err);
    team_tuner_end(&lm->tune, 1);
    return rc;
}

peftc_status peftc_lm_load(const char *model_path, const peftc_lm_opts *o, peftc_lm **out, peftc_error *err)
{
    *out = NULL;
    peftc_lm_opts def;
    if (!o) { peftc_lm_opts_default(&def); o = &def; }
    if (o->n_adapters < 0 || o->n_adapters > 64)
        return peftc_fail(err, PEFTC_ERR_INPUT, "at most 64 adapters, got %d", o->n_adapters);
    peftc_lm *lm = calloc(1, sizeof *lm);
    if (!lm) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc = decoder_load_quantized(model_path, o->quantize, &lm->dec, err);
    if (rc) { free(lm); return rc; }
    const decoder_info *di = decoder_get_info(lm->dec);
    lm->n_ctx = o->n_ctx > 0 ? o->n_ctx : (di->n_ctx_train > 0 && di->n_ctx_train < 4096 ? di->n_ctx_train : 4096);
    if (di->n_ctx_train > 0 && lm->n_ctx > di->n_ctx_train) {
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "--ctx %d: the model was trained for %d positions", lm->n_ctx, di->n_ctx_train);
        goto fail;
    }
    lm->n_batch = o->n_batch > 0 ? o->n_batch : 512;
    if (lm->n_batch > lm->n_ctx) lm->n_batch = lm->n_ctx;
    snprintf(lm->path, sizeof lm->path, "%s", model_path);
    if ((rc = tokenizer_for(model_path, lm->dec, &lm->tok, err))) goto fail;
    if (lm->tok && bpe_vocab_size(lm->tok) > di->n_vocab) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: the tokenizer has %d tokens but the model's embedding only %d rows",
                        model_path, bpe_vocab_size(lm->tok), di->n_vocab);
        goto fail;
    }
    if ((rc = load_adapters(lm, o, err))) goto fail;
    if ((rc = decoder_ctx_init(lm->dec, lm->n_ctx, lm->n_batch, err))) goto fail;
    if (lm->tok && (rc = gen_model_init(&lm->gen, eval_cb, lm, lm->n_ctx, di->n_vocab, lm->n_batch, lm->tok, err))) goto fail;
    snprintf(lm->describe, sizeof lm->describe, "%s: %s, %d layers, d %d, vocab %d, %s weights, context %d%s%s",
             model_path, di->arch, di->n_layers, di->d_model, di->n_vocab, di->weights, lm->n_ctx,
             o->n_adapters ? (o->merge ? ", adapters merged" : ", adapters unmerged") : "", "");
    *out = lm;
    return PEFTC_OK;
fail:
    peftc_lm_free(lm);
    return rc;
}

void peftc_lm_free(peftc_lm *lm)
{
    if (!lm) return;
    gen_model_free(&lm->gen);
    delta_set_free(&lm->ds);
    params_free(&lm->pb);
    if (lm->tok) bpe_free(lm->tok);
    decoder_free(lm->dec);
    free(lm);
}

const char *peftc_lm_describe(const peftc_lm *lm) { return lm->describe; }
int peftc_lm_n_ctx(const peftc_lm *lm) { return lm->n_ctx; }
int peftc_lm_vocab_size(const peftc_lm *lm) { return decoder_get_info(lm->dec)->n_vocab; }

static int want_bos(const peftc_lm *lm, int add_bos)
{
    (void)lm;
    return add_bos;   /* -1: the tokenizer's own add_bos (bpe_encode's add_special) */
}

peftc_status peftc_lm_tokenize(const peftc_lm *lm, const char *text, size_t len, int add_bos, int parse_special,
                               int32_t **ids, int *n, peftc_error *err)
{
    peftc_status rc = need_tokenizer(lm, err);
    if (rc) return rc;
    return bpe_encode_alloc(lm->tok, text, len, add_bos != 0, parse_special, ids, n, err);
}

peftc_status peftc_lm_generate(peftc_lm *lm, const char *prompt, const peftc_gen_opts *o, peftc_gen_fn fn,
                               void *user, peftc_gen_stats *stats, peftc_error *err)
{
    peftc_gen_opts def;
    if (!o) { peftc_gen_opts_default(&def); o = &def; }
    peftc_status rc = need_tokenizer(lm, err);
    if (rc) return rc;
    int32_t *ids = NULL;
    int n = 0;
    int bos = want_bos(lm, o->add_bos);
    /* a prompt too long for the context even at the longest token per
     * position is refused before tokenising (100 MB took 37 s and 1 GB) */
    size_t plen = strlen(prompt), mt = bpe_max_token_bytes(lm->tok);
    if (mt && plen / (4 * mt) >= (size_t)lm->n_ctx)
        return peftc_fail(err, PEFTC_ERR_INPUT, "generate: the prompt is %zu bytes, at least %zu tokens (no token is longer than %zu bytes), "
                          "the context holds %d (raise --ctx, up to the model's context length)",
                          plen, plen / (4 * mt), mt, lm->n_ctx);
    rc = bpe_encode_alloc(lm->tok, prompt, plen, bos != 0, o->parse_special, &ids, &n, err);
    if (rc) return rc;
    /* add_bos 1 on a tokenizer that adds none by itself: put BOS in front */
    if (bos == 1 && bpe_bos_id(lm->tok) >= 0 && (n == 0 || ids[0] != bpe_bos_id(lm->tok))) {
        int32_t *t = realloc(ids, (size_t)(n + 1) * sizeof *t);
        if (!t) { free(ids); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        ids = t;
        memmove(ids + 1, ids, (size_t)n * sizeof *ids);
        ids[0] = bpe_bos_id(lm->tok);
        n++;
    }
    /* an empty prompt starts from BOS (or, without one, the EOS/pad token
     * that opens documents in GPT-2-style training) */
    if (n == 0) {
        int32_t start = bpe_bos_id(lm->tok) >= 0 ? bpe_bos_id(lm->tok) : bpe_eos_id(lm->tok);
        if (start >= 0) {
            free(ids);
            ids = malloc(sizeof *ids);
            if (!ids) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            ids[0] = start;
            n = 1;
        }
    }
    rc = gen_run(&lm->gen, ids, n, o, fn, user, stats, err);
    free(ids);
    return rc;
}

peftc_status peftc_lm_chat_format(const peftc_lm *lm, const peftc_chat_msg *msgs, int n, int add_generation_prompt,
                                  char **out, peftc_error *err)
{
    peftc_status rc0 = need_tokenizer(lm, err);
    if (rc0) return rc0;
    bpe_chat_msg *m = malloc((size_t)(n > 0 ? n : 1) * sizeof *m);
    if (!m) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) m[i] = (bpe_chat_msg){msgs[i].role, msgs[i].content};
    peftc_status rc = bpe_chat_apply(lm->tok, m, n, add_generation_prompt, out, err);
    free(m);
    /* the tokenizer does not know its file: name the model, so the CLI's one
       line says which file has no (or an unknown) chat template */
    if (rc && err) {
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        peftc_fail(err, rc, "%s: %s", lm->path, why);
    }
    return rc;
}

peftc_status peftc_lm_logits(peftc_lm *lm, const int32_t *ids, int n, int all, float *logits, peftc_error *err)
{
    int V = decoder_get_info(lm->dec)->n_vocab;
    if (n < 1 || n > lm->n_ctx)
        return peftc_fail(err, PEFTC_ERR_INPUT, "logits: %d tokens, the context holds %d", n, lm->n_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return peftc_fail(err, PEFTC_ERR_INPUT, "logits: token id %d outside the vocabulary (%d)", ids[i], V);
    lm->gen.n_cached = 0;   /* the cache is overwritten from position 0 */
    peftc_status rc = PEFTC_OK;
    for (int i = 0; i < n && !rc; i += lm->n_batch) {
        int k = n - i < lm->n_batch ? n - i : lm->n_batch;
        rc = decoder_eval(lm->dec, lm->ds.n ? &lm->ds : NULL, &lm->pb, ids + i, k, i,
                          all ? logits + (size_t)i * V : logits, all, err);
    }
    return rc;
}

/* ------------------------------------------------ evaluation over a data file */

static peftc_status data_opts(const peftc_lm *lm, const peftc_lm_data_opts *d, lm_data_opts *o, peftc_error *err)
{
    memset(o, 0, sizeof *o);
    if (!d) return peftc_fail(err, PEFTC_ERR_INPUT, "no data options");
    if (d->format && !lm_format_parse(d->format, &o->format))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--format '%s': use text, prompt-response, alpaca, chat or template", d->format);
    if (d->max_len < 0 || d->max_len == 1) return peftc_fail(err, PEFTC_ERR_INPUT, "--max-len %d: at least 2", d->max_len);
    o->prompt_template = d->prompt_template;
    o->prompt_field = d->prompt_field;
    o->response_field = d->response_field;
    o->loss_on_all = d->loss_on_all;
    /* examples longer than the KV cache are cut there, as training cuts at --max-len */
    o->max_len = d->max_len > 0 && d->max_len < lm->n_ctx ? d->max_len : lm->n_ctx;
    return PEFTC_OK;
}

peftc_status peftc_lm_eval_loss(peftc_lm *lm, const char *data_path, const peftc_lm_data_opts *d,
                                peftc_lm_eval_result *r, peftc_error *err)
{
    memset(r, 0, sizeof *r);
    peftc_status rc = need_tokenizer(lm, err);
    if (rc) return rc;
    lm_data_opts o;
    if ((rc = data_opts(lm, d, &o, err))) return rc;
    lm_dataset ds;
    if ((rc = lm_data_load(data_path, lm->tok, &o, &ds, err))) return rc;
    int V = decoder_get_info(lm->dec)->n_vocab, T = 1;
    for (int i = 0; i < ds.n; i++) if (ds.len[i] > T) T = ds.len[i];
    float *logits = malloc((size_t)T * V * sizeof *logits);
    if (!logits) { lm_data_free(&ds); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for %d x %d logits", T, V); }
    double sum = 0;
    long long nt = 0;
    for (int i = 0; i < ds.n && !rc; i++) {
        const int32_t *ids = ds.ids + ds.off[i];
        const uint8_t *tg = ds.target + ds.off[i];
        int L = ds.len[i];
        if ((rc = peftc_lm_logits(lm, ids, L, 1, logits, err))) break;
        /* position p predicts token p+1: the loss of every target token */
        for (int p = 0; p + 1 < L; p++) {
            if (!tg[p + 1]) continue;
            const float *z = logits + (size_t)p * V;
            float mx = z[0];
            for (int v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
            double e = 0;
            for (int v = 0; v < V; v++) e += exp((double)(z[v] - mx));
            sum += mx + log(e) - z[ids[p + 1]];
            nt++;
        }
    }
    free(logits);
    r->n_examples = ds.n_examples;
    r->n_truncated = ds.n_truncated;
    r->n_dropped = ds.n_dropped;
    r->n_targets = nt;
    lm_data_free(&ds);
    if (rc) return rc;
    r->loss = nt ? sum / (double)nt : 0;
    r->perplexity = exp(r->loss);
    if (!isfinite(r->loss)) return peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: the loss is not finite", data_path);
    return PEFTC_OK;
}

typedef struct textbuf {
    char *s;
    size_t n, cap;
    int oom;
} textbuf;

static int collect(const char *text, size_t len, void *user)
{
    textbuf *b = user;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->n + len + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) { b->oom = 1; return 1; }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, text, len);
    b->n += len;
    b->s[b->n] = 0;
    return 0;
}

/* The text with every ill-formed UTF-8 sequence (a token that ends a
 * generation inside a character) replaced by U+FFFD, one per maximal
 * subpart, as Rust's from_utf8_lossy (Hugging Face tokenizers' decode) and
 * Python's errors="replace" do; malloc'd, NULL when out of memory. */
static char *utf8_lossy(const char *in)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t n = strlen(in), o = 0;
    char *out = malloc(3 * n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t need = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 99;
        if (need == 0) { out[o++] = (char)c; i++; continue; }
        size_t k = 1;
        if (need != 99)
            for (; k <= need && i + k < n; k++) {
                unsigned lo = 0x80, hi = 0xBF, b = s[i + k];
                if (k == 1) {
                    if (c == 0xE0) lo = 0xA0;
                    else if (c == 0xED) hi = 0x9F;
                    else if (c == 0xF0) lo = 0x90;
                    else if (c == 0xF4) hi = 0x8F;
                }
                if (b < lo || b > hi) break;
            }
        if (need != 99 && k == need + 1) { memcpy(out + o, s + i, k); o += k; i += k; continue; }
        memcpy(out + o, "\xEF\xBF\xBD", 3);   /* U+FFFD for the maximal subpart s[i..i+k) */
        o += 3;
        i += k;
    }
    out[o] = 0;
    return out;
}

peftc_status peftc_lm_generate_data(peftc_lm *lm, const char *data_path, const peftc_lm_data_opts *d,
                                    const peftc_gen_opts *g, int limit, const char *out_path,
                                    peftc_lm_gen_progress fn, void *user, peftc_lm_gen_summary *sum,
                                    char ***predictions, char ***references, peftc_error *err)
{
    peftc_lm_gen_summary s0;
    if (!sum) sum = &s0;
    memset(sum, 0, sizeof *sum);
    if (predictions) *predictions = NULL;
    if (references) *references = NULL;
    peftc_gen_opts gdef;
    if (!g) { peftc_gen_opts_default(&gdef); g = &gdef; }
    peftc_status rc = need_tokenizer(lm, err);
    if (rc) return rc;
    lm_data_opts o;
    if ((rc = data_opts(lm, d, &o, err))) return rc;
    lm_prompts P;
    if ((rc = lm_data_prompts(data_path, lm->tok, &o, &P, err))) return rc;
    int n = limit > 0 && limit < P.n ? limit : P.n;
    char tmp[4200];
    FILE *f = NULL;
    if (out_path) {
        if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", out_path, (int)getpid()) >= (int)sizeof tmp) {
            lm_prompts_free(&P);
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: path too long", out_path);
        }
        if (!(f = fopen(tmp, "w"))) { lm_prompts_free(&P); return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot write", tmp); }
    }
    char **preds = predictions ? calloc((size_t)n, sizeof *preds) : NULL;
    char **refs = references ? calloc((size_t)n, sizeof *refs) : NULL;
    if ((predictions && !preds) || (references && !refs)) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    textbuf tb = {0};
    for (int i = 0; i < n && !rc; i++) {
        tb.n = 0;
        if (tb.s) tb.s[0] = 0;
        peftc_gen_stats st;
        if (P.len[i] >= lm->n_ctx) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: the prompt is %d tokens, the context holds %d (raise --ctx)", data_path,
                            P.line[i], P.len[i], lm->n_ctx);
            break;
        }
        if ((rc = gen_run(&lm->gen, P.ids[i], P.len[i], g, collect, &tb, &st, err))) break;
        if (tb.oom) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
        char *pred = utf8_lossy(tb.s ? tb.s : "");
        if (!pred) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
        sum->n++;
        sum->prompt_tokens += st.prompt_tokens;
        sum->gen_tokens += st.gen_tokens;
        sum->n_eos += !strcmp(st.stop_reason, "eos");
        sum->n_stop += !strcmp(st.stop_reason, "stop");
        sum->n_length += !strcmp(st.stop_reason, "length");
        if (f) {
            json_t *j = json_object();
            json_object_set_new(j, "index", json_integer(i));
            json_object_set_new(j, "prediction", json_string(pred));
            json_object_set_new(j, "reference", json_string(P.ref[i]));
            json_object_set_new(j, "stop", json_string(st.stop_reason));
            json_object_set_new(j, "gen_tokens", json_integer(st.gen_tokens));
            char *line = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
            json_decref(j);
            /* generated bytes that are not valid UTF-8 (a token split) cannot be JSON strings */
            if (!line) { free(pred); rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            int bad = fputs(line, f) < 0 || fputc('\n', f) == EOF;
            free(line);
            if (bad) { free(pred); rc = peftc_fail(err, PEFTC_ERR_IO, "%s: write error", tmp); break; }
        }
        if (preds) preds[i] = pred;
        else free(pred);
        pred = NULL;
        if (refs && !rc && !(refs[i] = strdup(P.ref[i]))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        if (!rc && fn && fn(i, n, preds ? preds[i] : "", &st, user)) break;
    }
    free(tb.s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    sum->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    lm_prompts_free(&P);
    if (f) {
        if (fclose(f) && !rc) rc = peftc_fail(err, PEFTC_ERR_IO, "%s: write error", tmp);
        if (!rc && rename(tmp, out_path)) rc = peftc_fail(err, PEFTC_ERR_IO, "%s: cannot rename into place", out_path);
        if (rc) unlink(tmp);
    }
    if (rc) {
        for (int i = 0; i < n; i++) { if (preds) free(preds[i]); if (refs) free(refs[i]); }
        free(preds);
        free(refs);
        return rc;
    }
    if (predictions) *predictions = preds;
    if (references) *references = refs;
    return PEFTC_OK;
}
