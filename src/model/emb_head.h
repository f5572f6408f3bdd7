/* emb_head.h: sentence embeddings over any family's last hidden states and
 * the contrastive loss that trains them (internal). */
#ifndef PEFTC_EMB_HEAD_H
#define PEFTC_EMB_HEAD_H

#include "core/core.h"

/* sentence-transformers' Pooling(mode "mean") and
 * MultipleNegativesRankingLoss(scale 20, cos_sim). A batch of 2P rows holds
 * P anchors (rows 0..P) then their P positives (rows P..2P): anchor i's
 * positive is row P + i, every other positive is one of its negatives. */
typedef struct emb_head {
    int C;
    float scale;
    /* activations (capacity cap_B rows) */
    float *emb;     /* (B,C) mean of the pooled tokens */
    float *unit;    /* (B,C) emb / ||emb|| */
    float *norm;    /* (B) ||emb|| (clamped as F.normalize: >= 1e-12) */
    float *count;   /* (B) pooled tokens (clamped >= 1e-9, as Pooling's) */
    float *probs;   /* (P,P) softmax of each anchor's scaled similarities */
    float *d_unit;  /* (B,C) */
    float *block;
    int cap_B;
} emb_head;

peftc_status emb_head_alloc(emb_head *h, int C, int B, peftc_error *err);
void emb_head_free(emb_head *h);
/* hidden (B,T,C) -> h->emb, h->unit: the mean of the hidden states of each
 * row's first lens[b] tokens whose id is not a virtual token's (ids < 0:
 * prompt tuning's and P-tuning's vectors are not part of the sentence). */
void emb_head_forward(emb_head *h, const float *hidden, const int32_t *ids, const int *lens, int B, int T);
/* The mean over the P = B/2 anchors of cross_entropy(scale * cos(anchor_i,
 * positive_j) over j, target i); fills h->probs. B must be even. */
float emb_head_loss(emb_head *h, int B);
/* Backward of scale_loss * loss: d_hidden (B,T,C) is overwritten (1/count of
 * each pooled token's row gradient, zero elsewhere). */
void emb_head_backward(emb_head *h, const int32_t *ids, const int *lens, int B, int T, float scale_loss, float *d_hidden);

#endif
