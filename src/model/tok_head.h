/* tok_head.h: a token-classification head over any family's last hidden
 * states (internal): BertForTokenClassification's, logits = W dropout(h) + b
 * at every position, the loss the mean cross-entropy over the positions
 * whose label is not ignored (< 0: padding, [CLS]/[SEP], later sub-word
 * pieces, virtual tokens). */
#ifndef PEFTC_TOK_HEAD_H
#define PEFTC_TOK_HEAD_H

#include "core/core.h"
#include "core/rng.h"

typedef struct tok_head {
    int C, K;
    const float *w, *b;      /* (K,C) (K) */
    float *g_w, *g_b;        /* NULL = frozen */
    float *dropped, *logits, *probs;   /* (N,C) (N,K) (N,K), N = B*T */
    uint8_t *mask;           /* (N,C) */
    int n_labelled;          /* of the last loss */
    /* > 0: the labelled positions of the whole batch this one is a shard of
     * (data parallelism), which the backward's mean divides by instead of
     * n_labelled, so that every labelled token of the global batch weighs
     * alike whichever rank runs it; 0: this batch's own n_labelled */
    int n_norm;
    size_t cap_N;
} tok_head;

peftc_status tok_head_alloc(tok_head *h, int C, int K, size_t N, peftc_error *err);
void tok_head_free(tok_head *h);
/* hidden (N,C) -> h->logits (N,K); dropout p when training, one draw from
 * rng, the mask at position tok0 of the whole batch's stream (a
 * data-parallel shard draws the single process's mask for its rows). */
void tok_head_forward(tok_head *h, const float *hidden, size_t N, float p, int train, peftc_rng *rng, int64_t tok0);
/* Mean cross-entropy over the rows with labels[i] >= 0 (0 if none). */
float tok_head_loss(tok_head *h, const int *labels, size_t N);
/* Backward of scale * mean loss (the mean over n_norm if set): d_hidden (N,C) is overwritten. */
void tok_head_backward(tok_head *h, const int *labels, size_t N, float p, int train, float scale, float *d_hidden);

#endif
