/* generate.h: the generation loop of a decoder, above any model family:
 * prompt processing in batches (reusing the prefix the KV cache already
 * holds), sampling, end-of-generation tokens, stop strings and streaming of
 * complete UTF-8 text. The model is reached through one callback, so the
 * loop knows no architecture. */
#ifndef PEFTC_GENERATE_H
#define PEFTC_GENERATE_H

#include "core/core.h"
#include "tokenizer/bpe.h"
#include "train/sampler.h"

/* Evaluates ids[0..n) at positions pos..pos+n-1 (the cache holds 0..pos-1)
 * and writes the logits of the last one (n_vocab floats). */
typedef peftc_status (*gen_eval_fn)(void *model, const int32_t *ids, int n, int pos, float *logits, peftc_error *err);

typedef struct gen_model {
    gen_eval_fn eval;
    void *model;
    int n_ctx, n_vocab, n_batch;
    const bpe_tokenizer *tok;
    /* the tokens whose keys and values the cache holds (capacity n_ctx) */
    int32_t *cache_ids;
    int n_cached;
    float *logits;      /* (n_vocab) scratch */
    int32_t *history;   /* (n_ctx) prompt + generated ids */
} gen_model;

peftc_status gen_model_init(gen_model *g, gen_eval_fn eval, void *model, int n_ctx, int n_vocab, int n_batch,
                            const bpe_tokenizer *tok, peftc_error *err);
void gen_model_free(gen_model *g);

/* Token ids that end a generation: EOS and the end-of-turn / end-of-text
 * special tokens of the common chat formats the vocabulary has. */
int gen_is_end(const bpe_tokenizer *tok, int32_t id);

/* Runs the loop for prompt ids (with BOS already where wanted). fn may be
 * NULL. */
peftc_status gen_run(gen_model *g, const int32_t *prompt, int n_prompt, const peftc_gen_opts *o,
                     peftc_gen_fn fn, void *user, peftc_gen_stats *st, peftc_error *err);

#endif
