/* cls_head.h: a sequence-classification head over any family's last hidden
 * states (internal). */
#ifndef PEFTC_CLS_HEAD_H
#define PEFTC_CLS_HEAD_H

#include "core/core.h"
#include "core/rng.h"

/* The head of BertForSequenceClassification:
 * logits = W_c dropout(tanh(W_p h[CLS] + b_p)) + b_c. */
typedef struct cls_head {
    int C, K;
    const float *pool_w, *pool_b, *cls_w, *cls_b;   /* (C,C) (C) (K,C) (K) */
    float *g_pool_w, *g_pool_b, *g_cls_w, *g_cls_b; /* NULL = frozen */
    /* activations (capacity B rows) */
    float *cls, *pooled, *dropped, *logits, *probs, *losses;   /* (B,C)x3 (B,K)x2 (B) */
    uint8_t *mask;
    float *d_pooled, *d_cls;                                   /* (B,C) */
    float *block;
    int cap_B;
} cls_head;

peftc_status cls_head_alloc(cls_head *h, int C, int K, int B, peftc_error *err);
void cls_head_free(cls_head *h);
/* hidden (B,T,C) -> h->logits (B,K); dropout p when training. */
/* row0: the batch's first row in the whole batch, for a data-parallel rank's
 * shard (0 in one process): the mask is drawn at that offset. */
void cls_head_forward(cls_head *h, const float *hidden, int B, int T, float p, int train, peftc_rng *rng, int64_t row0);
/* Mean cross-entropy of h->logits against labels (B), filling h->probs. */
float cls_head_loss(cls_head *h, const int *labels, int B);
/* Backward of scale * (mean loss over the B rows): d_hidden (B,T,C) is overwritten (zero except the CLS rows). */
void cls_head_backward(cls_head *h, const int *labels, int B, int T, float p, int train, float scale, float *d_hidden);

/* Regression (num_labels 1, MSELoss): mean of (logit - target)^2 over B rows,
 * and its backward as cls_head_backward's. */
float cls_head_mse_loss(cls_head *h, const float *targets, int B);
void cls_head_backward_mse(cls_head *h, const float *targets, int B, int T, float p, int train, float scale, float *d_hidden);

/* Multi-label (problem_type multi_label_classification, BCEWithLogitsLoss):
 * the mean over B*K of the binary cross-entropy of sigmoid(logits) against
 * targets (B,K) in {0,1}; probs receives the sigmoids. */
float cls_head_bce_loss(cls_head *h, const float *targets, int B);
void cls_head_backward_bce(cls_head *h, const float *targets, int B, int T, float p, int train, float scale, float *d_hidden);

#endif
