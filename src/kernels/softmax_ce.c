/* softmax_ce.c: softmax cross-entropy classification loss. */
#include <math.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

#define CE_PAR (1u << 14)

/* sum_j exp(x[j] - mx) with KERN_LANES(F) partial sums: the same sums as
 * kern_vsum over the stored exps, without storing them */
KERN_INLINE float sum_exp(const float *x, int K, float mx, const int F)
{
    const int W = KERN_LANES(F);
    float acc[16] = { 0 }, sum = 0.0f;
    int j = 0;
    for (; j + W <= K; j += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) acc[l] += kern_exp(x[j + l] - mx, F);
    }
    KERN_ACC_COMBINE(acc, W, sum);
    for (; j < K; j++) sum += kern_exp(x[j] - mx, F);
    return sum;
}

/* rows [b0, b1): probs (if given), loss (if given) = -log softmax(x)[label];
 * the losses are also returned through tot[b - b0] when tot is given */
KERN_INLINE void ce_rows_body(float *losses, float *probs, const float *logits, const int *labels,
                              int b0, int b1, int K, double *tot, const int F)
{
    for (int b = b0; b < b1; b++) {
        const float *x = logits + (size_t)b * K;
        float *p = probs ? probs + (size_t)b * K : NULL;
        float mx = -INFINITY, sum = 0.0f;
        if (K < 16) {   /* a few classes: plain loops */
            for (int j = 0; j < K; j++) mx = x[j] > mx ? x[j] : mx;
            for (int j = 0; j < K; j++) {
                float e = kern_exp(x[j] - mx, F);
                if (p) p[j] = e;
                sum += e;
            }
            if (p) {
                float inv = 1.0f / sum;
                for (int j = 0; j < K; j++) p[j] *= inv;
            }
        } else {
            mx = kern_vmax(x, K, F);
            if (p) {
                #pragma omp simd
                for (int j = 0; j < K; j++) p[j] = kern_exp(x[j] - mx, F);
                sum = kern_vsum(p, K, F);
                float inv = 1.0f / sum;
                #pragma omp simd
                for (int j = 0; j < K; j++) p[j] *= inv;
            } else {
                sum = sum_exp(x, K, mx, F);
            }
        }
        /* log-sum-exp form: exact even when probs[label] underflows to 0 */
        double loss = log((double)sum) + (double)mx - (double)x[labels[b]];
        if (losses) losses[b] = (float)loss;
        if (tot) tot[b - b0] = loss;
    }
}
KERN_TIERS(ce_rows, (float *losses, float *probs, const float *logits, const int *labels, int b0, int b1,
                     int K, double *tot), losses, probs, logits, labels, b0, b1, K, tot)

/* logits (B,K), labels (B) in [0,K). probs (B,K) = softmax(logits) (may be
 * NULL when no backward follows); losses (B) = -log probs[label] (may be NULL).
 * Returns mean_b losses, summed in row order whatever the thread count. */
float softmax_ce_forward(float *losses, float *probs, const float *logits,
                         const int *labels, int B, int K)
{
    if (B <= 0) return 0.0f;
    void (*f)(float *, float *, const float *, const int *, int, int, int, double *) = KERN_PICK(ce_rows);
    double total = 0.0;
    if (losses && (size_t)B * K >= CE_PAR) {
        #pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++) f(losses, probs, logits, labels, b, b + 1, K, NULL);
        for (int b = 0; b < B; b++) total += losses[b];
    } else {
        /* serial, rows in order, a chunk of rows per call; each loss rounded
         * to float as when stored, so the mean does not depend on whether
         * losses are kept */
        double l[256];
        for (int b0 = 0; b0 < B; b0 += 256) {
            int b1 = b0 + 256 < B ? b0 + 256 : B;
            f(losses, probs, logits, labels, b0, b1, K, l);
            for (int b = b0; b < b1; b++) total += (double)(float)l[b - b0];
        }
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
        #pragma omp simd
        for (int j = 0; j < K; j++) d[j] += p[j] * scale;
        d[labels[b]] -= scale;
    }
}

/* rows [b0, b1) of the language-model loss: loss[b] = logsumexp(z_b) -
 * z_b[label] in double; with scale != 0, z_b is overwritten with its
 * gradient scale * (softmax(z_b) - onehot(label)). Vector lanes for the max,
 * the sum of exps and the exps themselves (a vocabulary of 49,152 per row:
 * libm's scalar exp in double was an eighth of a SmolLM2 training step). */
KERN_INLINE void lm_ce_rows_body(float *z, const int *labels, int b0, int b1, int K, float scale, double *loss,
                                 const int F)
{
    for (int b = b0; b < b1; b++) {
        float *x = z + (size_t)b * K;
        float mx = kern_vmax(x, K, F), sum = sum_exp(x, K, mx, F);
        loss[b] = log((double)sum) + (double)mx - (double)x[labels[b]];
        if (scale != 0.0f) {
            const float g = scale / sum;
            #pragma omp simd
            for (int k = 0; k < K; k++) x[k] = g * kern_exp(x[k] - mx, F);
            x[labels[b]] -= scale;
        }
    }
}
KERN_TIERS(lm_ce_rows, (float *z, const int *labels, int b0, int b1, int K, float scale, double *loss),
           z, labels, b0, b1, K, scale, loss)

void lm_ce_rows(float *z, const int *labels, int n, int K, float scale, double *loss)
{
    if (n <= 0) return;
    void (*f)(float *, const int *, int, int, int, float, double *) = KERN_PICK(lm_ce_rows);
    /* each row on its own: the same bits for any thread count */
    #pragma omp parallel for schedule(static) if ((size_t)n * K >= CE_PAR)
    for (int b = 0; b < n; b++) f(z, labels, b, b + 1, K, scale, loss);
}

/* x (n) = softmax(x) in place; -inf entries (masked) give exactly 0 */
KERN_INLINE void softmax_row_body(float *x, int n, const int F)
{
    float mx = kern_vmax(x, n, F);
    if (mx == -INFINITY) {   /* nothing visible: no probabilities (not NaN) */
        for (int j = 0; j < n; j++) x[j] = 0.0f;
        return;
    }
    #pragma omp simd
    for (int j = 0; j < n; j++) x[j] = kern_exp(x[j] - mx, F);
    float inv = 1.0f / kern_vsum(x, n, F);
    #pragma omp simd
    for (int j = 0; j < n; j++) x[j] *= inv;
}
KERN_TIERS(softmax_row, (float *x, int n), x, n)

void softmax_row_inplace(float *x, int n)
{
    if (n > 0) KERN_PICK(softmax_row)(x, n);
}
