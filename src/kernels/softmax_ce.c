/* softmax_ce.c: softmax cross-entropy classification loss. */
#include <math.h>
#include "kernels/kernels.h"

/* One row: writes probs (if given) and returns -log softmax(x)[label]. */
static double ce_row(float *p, const float *x, int label, int K)
{
    float mx = -INFINITY;
    for (int j = 0; j < K; j++) if (x[j] > mx) mx = x[j];
    double sum = 0.0;
    if (p) {
        for (int j = 0; j < K; j++) { p[j] = expf(x[j] - mx); sum += p[j]; }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < K; j++) p[j] *= inv;
    } else {
        for (int j = 0; j < K; j++) sum += expf(x[j] - mx);
    }
    /* log-sum-exp form: exact even when probs[label] underflows to 0 */
    return log(sum) + (double)mx - (double)x[label];
}

/* logits (B,K), labels (B) in [0,K). probs (B,K) = softmax(logits) (may be
 * NULL when no backward follows); losses (B) = -log probs[label] (may be NULL).
 * Returns mean_b losses, summed in row order whatever the thread count. */
float softmax_ce_forward(float *losses, float *probs, const float *logits,
                         const int *labels, int B, int K)
{
    if (B <= 0) return 0.0f;
    double total = 0.0;
    if (losses) {
        #pragma omp parallel for schedule(static) if ((size_t)B * K >= (1u << 14))
        for (int b = 0; b < B; b++)
            losses[b] = (float)ce_row(probs ? probs + (size_t)b * K : NULL,
                                      logits + (size_t)b * K, labels[b], K);
        for (int b = 0; b < B; b++) total += losses[b];
    } else {
        /* nowhere to park per-row losses: stay serial to keep the sum ordered */
        for (int b = 0; b < B; b++)
            total += ce_row(probs ? probs + (size_t)b * K : NULL,
                            logits + (size_t)b * K, labels[b], K);
    }
    return (float)(total / B);
}

/* dlogits (B,K) += (probs - onehot(labels)) * scale */
void softmax_ce_backward(float *dlogits, const float *probs, const int *labels,
                         int B, int K, float scale)
{
    if (!dlogits) return;
    #pragma omp parallel for schedule(static) if ((size_t)B * K >= (1u << 15))
    for (int b = 0; b < B; b++) {
        const float *p = probs + (size_t)b * K;
        float *d = dlogits + (size_t)b * K;
        for (int j = 0; j < K; j++) d[j] += p[j] * scale;
        d[labels[b]] -= scale;
    }
}
