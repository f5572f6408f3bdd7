/* generate.c: the decoder's generation loop (see generate.h). */
#include "train/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

peftc_status gen_model_init(gen_model *g, gen_eval_fn eval, void *model, int n_ctx, int n_vocab, int n_batch,
                            const bpe_tokenizer *tok, peftc_error *err)
{
    memset(g, 0, sizeof *g);
    g->eval = eval;
    g->model = model;
    g->n_ctx = n_ctx;
    g->n_vocab = n_vocab;
    g->n_batch = n_batch > 0 ? n_batch : 512;
    g->tok = tok;
    g->cache_ids = malloc((size_t)n_ctx * sizeof *g->cache_ids);
    /* the last sampled token enters the history before the full-context stop: n_ctx + 1 (found by ASan) */
    g->history = malloc(((size_t)n_ctx + 1) * sizeof *g->history);
    g->logits = malloc((size_t)n_vocab * sizeof *g->logits);
    if (!g->cache_ids || !g->history || !g->logits) {
        gen_model_free(g);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "generate: out of memory for a context of %d tokens", n_ctx);
    }
    return PEFTC_OK;
}

void gen_model_free(gen_model *g)
{
    free(g->cache_ids);
    free(g->history);
    free(g->logits);
    memset(g, 0, sizeof *g);
}

int gen_is_end(const bpe_tokenizer *tok, int32_t id)
{
    if (id == bpe_eos_id(tok)) return 1;
    if (!bpe_is_special(tok, id)) return 0;
    /* end-of-turn and end-of-text markers of ChatML, Llama 3, Gemma, GPT-2 */
    static const char *const ends[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>",
                                       "<end_of_turn>", "<|end|>"};
    char buf[32];
    size_t len = 0;
    peftc_error e;
    if (bpe_decode_token(tok, id, buf, sizeof buf, &len, &e)) return 0;
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++)
        if (len == strlen(ends[i]) && !memcmp(buf, ends[i], len)) return 1;
    return 0;
}

/* Text waiting to be streamed: complete UTF-8 that may still be the start of
 * a stop string. */
typedef struct text_out {
    char *s;
    size_t n, cap;
    const peftc_gen_opts *o;
    peftc_gen_fn fn;
    void *user;
    int stopped;        /* a stop string was found */
    int cancelled;      /* the callback asked to stop */
} text_out;

static int out_emit(text_out *t, size_t n)
{
    if (n && t->fn && !t->cancelled && t->fn(t->s, n, t->user)) t->cancelled = 1;
    memmove(t->s, t->s + n, t->n - n);
    t->n -= n;
    return t->cancelled;
}

/* Appends bytes, emits what can no longer be part of a stop string. */
static peftc_status out_push(text_out *t, const char *b, size_t n, peftc_error *err)
{
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n + 1) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) return peftc_fail(err, PEFTC_ERR_NOMEM, "generate: out of memory");
        t->s = s;
        t->cap = cap;
    }
    memcpy(t->s + t->n, b, n);
    t->n += n;
    /* the earliest complete stop string ends the text before it */
    size_t first = t->n;
    for (int k = 0; k < t->o->n_stop; k++) {
        size_t sl = strlen(t->o->stop[k]);
        if (!sl || sl > t->n) continue;
        for (size_t i = 0; i + sl <= t->n && i < first; i++)
            if (!memcmp(t->s + i, t->o->stop[k], sl)) { first = i; break; }
    }
    if (first < t->n) {
        out_emit(t, first);
        t->n = 0;
        t->stopped = 1;
        return PEFTC_OK;
    }
    /* hold back the longest tail that begins some stop string */
    size_t hold = 0;
    for (int k = 0; k < t->o->n_stop; k++) {
        size_t sl = strlen(t->o->stop[k]);
        if (!sl) continue;
        for (size_t h = sl - 1 < t->n ? sl - 1 : t->n; h > hold; h--)
            if (!memcmp(t->s + t->n - h, t->o->stop[k], h)) { hold = h; break; }
    }
    out_emit(t, t->n - hold);
    return PEFTC_OK;
}

peftc_status gen_run(gen_model *g, const int32_t *prompt, int n_prompt, const peftc_gen_opts *o,
                     peftc_gen_fn fn, void *user, peftc_gen_stats *st, peftc_error *err)
{
    peftc_gen_stats s0;
    if (!st) st = &s0;
    memset(st, 0, sizeof *st);
    if (n_prompt < 1)
        return peftc_fail(err, PEFTC_ERR_INPUT, "generate: the prompt is empty and the model adds no BOS token: nothing to continue");
    if (n_prompt >= g->n_ctx)
        return peftc_fail(err, PEFTC_ERR_INPUT, "generate: the prompt is %d tokens, the context holds %d (raise --ctx, up to the model's context length)",
                          n_prompt, g->n_ctx);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= g->n_vocab)
            return peftc_fail(err, PEFTC_ERR_INPUT, "generate: token id %d is outside the model's vocabulary (%d)", prompt[i], g->n_vocab);
    sampler_opts so = {.temperature = o->temperature, .top_k = o->top_k, .top_p = o->top_p, .min_p = o->min_p,
                       .repeat_penalty = o->repeat_penalty, .repeat_last_n = o->repeat_last_n, .seed = o->seed};
    sampler smp;
    peftc_status rc = sampler_init(&smp, &so, g->n_vocab, err);
    if (rc) return rc;

    /* the prefix the cache already holds is kept; at least the last prompt
     * token is evaluated again for its logits */
    int p = 0;
    while (p < g->n_cached && p < n_prompt && g->cache_ids[p] == prompt[p]) p++;
    if (p == n_prompt) p--;
    st->cached_tokens = p;
    st->prompt_tokens = n_prompt - p;
    g->n_cached = p;
    double t0 = now_s();
    for (int i = p; i < n_prompt && !rc; i += g->n_batch) {
        int n = n_prompt - i < g->n_batch ? n_prompt - i : g->n_batch;
        rc = g->eval(g->model, prompt + i, n, i, g->logits, err);
        if (!rc) {
            memcpy(g->cache_ids + i, prompt + i, (size_t)n * sizeof *prompt);
            g->n_cached = i + n;
        }
    }
    double t1 = now_s();
    st->prompt_s = t1 - t0;
    if (rc) { sampler_free(&smp); return rc; }

    memcpy(g->history, prompt, (size_t)n_prompt * sizeof *prompt);
    int n_hist = n_prompt;
    text_out to = {.o = o, .fn = fn, .user = user};
    bpe_stream bs = {0};
    char piece[512];
    st->stop_reason = "length";
    for (int i = 0; i < o->max_new_tokens; i++) {
        int32_t id = sampler_sample(&smp, g->logits, g->history, n_hist);
        if (!o->ignore_eos && gen_is_end(g->tok, id)) { st->stop_reason = "eos"; break; }
        st->gen_tokens++;
        g->history[n_hist++] = id;
        if (!bpe_is_special(g->tok, id)) {
            size_t len = 0;
            if ((rc = bpe_stream_push(g->tok, &bs, id, piece, sizeof piece, &len, err))) break;
            if ((rc = out_push(&to, piece, len, err))) break;
            if (to.stopped) { st->stop_reason = "stop"; break; }
            if (to.cancelled) { st->stop_reason = "callback"; break; }
        }
        if (i + 1 == o->max_new_tokens) break;
        if (g->n_cached >= g->n_ctx) { st->stop_reason = "context"; break; }
        if ((rc = g->eval(g->model, &id, 1, g->n_cached, g->logits, err))) break;
        g->cache_ids[g->n_cached++] = id;
    }
    if (!rc && !to.stopped && !to.cancelled) {
        size_t len = bpe_stream_flush(&bs, piece, sizeof piece);
        if (len) rc = out_push(&to, piece, len, err);
        if (!rc && !to.stopped) out_emit(&to, to.n);
    }
    st->gen_s = now_s() - t1;
    free(to.s);
    sampler_free(&smp);
    return rc;
}
