/* cls_head.c: BertForSequenceClassification's head (pooler + classifier). */
#include "model/cls_head.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status cls_head_alloc(cls_head *h, int C, int K, int B, peftc_error *err)
{
    free(h->block);
    size_t n = 5 * (size_t)B * C + 2 * (size_t)B * K + (size_t)B + ((size_t)B * C / 4 + 1);
    h->block = calloc(n, sizeof(float));
    if (!h->block) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for the classification head");
    float *p = h->block;
    h->cls = p; p += (size_t)B * C;
    h->pooled = p; p += (size_t)B * C;
    h->dropped = p; p += (size_t)B * C;
    h->d_pooled = p; p += (size_t)B * C;
    h->d_cls = p; p += (size_t)B * C;
    h->logits = p; p += (size_t)B * K;
    h->probs = p; p += (size_t)B * K;
    h->losses = p; p += B;
    h->mask = (uint8_t *)p;
    h->C = C;
    h->K = K;
    h->cap_B = B;
    return PEFTC_OK;
}

void cls_head_free(cls_head *h)
{
    free(h->block);
    h->block = NULL;
}

void cls_head_forward(cls_head *h, const float *hidden, int B, int T, float p, int train, peftc_rng *rng, int64_t row0)
{
    int C = h->C;
    cls_pool_forward(h->cls, hidden, B, T, C);
    matmul_forward(h->pooled, h->cls, h->pool_w, h->pool_b, B, C, C, 0);
    tanh_forward(h->pooled, h->pooled, (size_t)B * C);
    /* one draw; the mask at row0 of the whole batch's stream (data parallelism) */
    if (!train) p = 0.0f;
    uint64_t key = p > 0 && p < 1 ? dropout_key_at(peftc_rng_u64(rng), (uint64_t)row0 * (uint64_t)C) : 0;
    dropout_forward_mask_key(h->dropped, h->mask, h->pooled, p, (size_t)B * C, key);
    matmul_forward(h->logits, h->dropped, h->cls_w, h->cls_b, B, C, h->K, 0);
}

float cls_head_loss(cls_head *h, const int *labels, int B)
{
    return softmax_ce_forward(h->losses, h->probs, h->logits, labels, B, h->K);
}

float cls_head_mse_loss(cls_head *h, const float *targets, int B)
{
    double s = 0;
    for (int b = 0; b < B; b++) {
        double e = (double)h->logits[(size_t)b * h->K] - targets[b];
        h->losses[b] = (float)(e * e);
        s += e * e;
    }
    return B ? (float)(s / B) : 0.0f;
}

/* From dlogits (in h->logits) down to d_hidden. */
static void backward_from_logits(cls_head *h, int B, int T, float p, int train, float *d_hidden);

void cls_head_backward_mse(cls_head *h, const float *targets, int B, int T, float p, int train, float scale, float *d_hidden)
{
    /* d(scale * mean (z - y)^2) / dz = scale * 2 (z - y) / B; logits are not needed any more */
    for (int b = 0; b < B; b++) {
        float *z = h->logits + (size_t)b * h->K;
        z[0] = scale * 2.0f * (z[0] - targets[b]) / (float)B;
        for (int k = 1; k < h->K; k++) z[k] = 0;
    }
    backward_from_logits(h, B, T, p, train, d_hidden);
}

float cls_head_bce_loss(cls_head *h, const float *targets, int B)
{
    size_t n = (size_t)B * h->K;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double z = h->logits[i], y = targets[i];
        /* max(z, 0) - z y + log(1 + exp(-|z|)): stable for any z */
        s += (z > 0 ? z : 0) - z * y + log1p(exp(-fabs(z)));
        h->probs[i] = (float)(1.0 / (1.0 + exp(-z)));
    }
    return n ? (float)(s / (double)n) : 0.0f;
}

void cls_head_backward_bce(cls_head *h, const float *targets, int B, int T, float p, int train, float scale, float *d_hidden)
{
    size_t n = (size_t)B * h->K;
    for (size_t i = 0; i < n; i++) h->logits[i] = scale * (h->probs[i] - targets[i]) / (float)n;
    backward_from_logits(h, B, T, p, train, d_hidden);
}

void cls_head_backward(cls_head *h, const int *labels, int B, int T, float p, int train, float scale, float *d_hidden)
{
    int K = h->K;
    float *dlogits = h->logits; /* logits are not needed any more: reuse their buffer */
    memset(dlogits, 0, (size_t)B * K * sizeof(float));
    softmax_ce_backward(dlogits, h->probs, labels, B, K, scale / (float)B); /* d(scale * mean loss) */
    backward_from_logits(h, B, T, p, train, d_hidden);
}

static void backward_from_logits(cls_head *h, int B, int T, float p, int train, float *d_hidden)
{
    int C = h->C, K = h->K;
    float *dlogits = h->logits;
    float *d_dropped = h->d_cls;
    memset(d_dropped, 0, (size_t)B * C * sizeof(float));
    matmul_backward(d_dropped, h->g_cls_w, h->g_cls_b, dlogits, h->dropped, h->cls_w, B, C, K);
    memset(h->d_pooled, 0, (size_t)B * C * sizeof(float));
    dropout_backward(h->d_pooled, h->mask, d_dropped, train ? p : 0.0f, (size_t)B * C, 1);
    /* through tanh, into the pre-activation; reuse d_dropped's buffer */
    float *d_pre = d_dropped;
    memset(d_pre, 0, (size_t)B * C * sizeof(float));
    tanh_backward(d_pre, h->pooled, h->d_pooled, (size_t)B * C);
    memset(d_hidden, 0, (size_t)B * T * C * sizeof(float));
    float *d_cls = h->d_pooled; /* free again */
    memset(d_cls, 0, (size_t)B * C * sizeof(float));
    matmul_backward(d_cls, h->g_pool_w, h->g_pool_b, d_pre, h->cls, h->pool_w, B, C, C);
    cls_pool_backward(d_hidden, d_cls, B, T, C);
}
