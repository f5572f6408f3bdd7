/* sampler.h: choosing the next token from a decoder's logits.
 *
 * The chain is Hugging Face generate()'s order, so a user's settings mean
 * what they mean there: repetition penalty (CTRL's rule: a seen token's
 * logit is divided by the penalty if positive, multiplied if negative) ->
 * temperature -> top-k -> top-p (nucleus) -> min-p (relative to the most
 * likely token) -> draw. temperature <= 0 is greedy (argmax after the
 * penalty; ties go to the lowest id, as torch.argmax does).
 *
 * The draw uses the sampler's own seeded stream, so a seed reproduces a
 * generation exactly. Nothing is allocated per token: the candidate buffers
 * are sized for the vocabulary at init. */
#ifndef PEFTC_SAMPLER_H
#define PEFTC_SAMPLER_H

#include "core/core.h"
#include "core/rng.h"

typedef struct sampler_opts {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repeat_penalty;     /* 1: off */
    int repeat_last_n;        /* how many recent tokens the penalty looks at (<0: all given) */
    uint64_t seed;
} sampler_opts;

void sampler_opts_default(sampler_opts *o);   /* greedy, everything off, seed 42 */
/* Checks the values (a negative temperature is greedy; top_p in (0,1],
 * min_p in [0,1), penalty > 0). err names the option. */
peftc_status sampler_opts_check(const sampler_opts *o, peftc_error *err);

typedef struct sampler {
    sampler_opts o;
    int n_vocab;
    peftc_rng rng;
    int32_t *idx;             /* (n_vocab) candidate ids */
    float *val;               /* (n_vocab) candidate logits, then probabilities */
    uint8_t *seen;            /* (n_vocab) marks for the repetition penalty */
} sampler;

peftc_status sampler_init(sampler *s, const sampler_opts *o, int n_vocab, peftc_error *err);
void sampler_free(sampler *s);

/* The next token from logits (n_vocab; modified: the penalty is applied in
 * place). history: the tokens so far (prompt + generated), n_hist of them. */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int n_hist);

/* The distribution the draw would use, for tests: after the whole chain,
 * prob (n_vocab) holds each token's probability (0 outside the kept set).
 * Returns the number of kept tokens. */
int sampler_distribution(sampler *s, float *logits, const int32_t *history, int n_hist, float *prob);

#endif
