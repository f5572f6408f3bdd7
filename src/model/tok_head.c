/* tok_head.c: BertForTokenClassification's head (dropout + classifier on
 * every position). */
#include "model/tok_head.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status tok_head_alloc(tok_head *h, int C, int K, size_t N, peftc_error *err)
{
    tok_head_free(h);
    h->dropped = peftc_alloc_aligned(N * C * sizeof(float));
    h->logits = malloc(N * K * sizeof(float));
    h->probs = malloc(N * K * sizeof(float));
    h->mask = malloc(N * C);
    if (!h->dropped || !h->logits || !h->probs || !h->mask) {
        tok_head_free(h);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for the token-classification head");
    }
    h->C = C;
    h->K = K;
    h->cap_N = N;
    return PEFTC_OK;
}

void tok_head_free(tok_head *h)
{
    free(h->dropped);
    free(h->logits);
    free(h->probs);
    free(h->mask);
    h->dropped = h->logits = h->probs = NULL;
    h->mask = NULL;
    h->cap_N = 0;
}

void tok_head_forward(tok_head *h, const float *hidden, size_t N, float p, int train, peftc_rng *rng, int64_t tok0)
{
    if (!train) p = 0.0f;
    uint64_t key = p > 0 && p < 1 ? dropout_key_at(peftc_rng_u64(rng), (uint64_t)tok0 * (uint64_t)h->C) : 0;
    dropout_forward_mask_key(h->dropped, h->mask, hidden, p, N * h->C, key);
    matmul_forward(h->logits, h->dropped, h->w, h->b, (int)N, h->C, h->K, 0);
}

float tok_head_loss(tok_head *h, const int *labels, size_t N)
{
    int K = h->K;
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < N; i++) {
        if (labels[i] < 0) continue;
        const float *lg = h->logits + i * K;
        float *pr = h->probs + i * K;
        float mx = lg[0];
        for (int k = 1; k < K; k++) if (lg[k] > mx) mx = lg[k];
        double z = 0;
        for (int k = 0; k < K; k++) z += exp((double)lg[k] - mx);
        for (int k = 0; k < K; k++) pr[k] = (float)(exp((double)lg[k] - mx) / z);
        sum += log(z) + mx - lg[labels[i]];
        n++;
    }
    h->n_labelled = n;
    return n ? (float)(sum / n) : 0.0f;
}

void tok_head_backward(tok_head *h, const int *labels, size_t N, float p, int train, float scale, float *d_hidden)
{
    int C = h->C, K = h->K, n = h->n_norm > 0 ? h->n_norm : h->n_labelled;
    float *dlogits = h->logits;   /* not needed any more */
    float s = n ? scale / (float)n : 0.0f;
    for (size_t i = 0; i < N; i++) {
        float *d = dlogits + i * K;
        if (labels[i] < 0) { memset(d, 0, (size_t)K * sizeof *d); continue; }
        const float *pr = h->probs + i * K;
        for (int k = 0; k < K; k++) d[k] = s * (pr[k] - (k == labels[i]));
    }
    memset(d_hidden, 0, N * C * sizeof(float));
    matmul_backward(d_hidden, h->g_w, h->g_b, dlogits, h->dropped, h->w, (int)N, C, K);
    dropout_backward_inplace(d_hidden, h->mask, train ? p : 0.0f, N * C);
}
