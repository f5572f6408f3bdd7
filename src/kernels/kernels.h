/* kernels.h: forward/backward kernels of the transformer ops (llm.c contract).
 *
 * - Paired <op>_forward / <op>_backward; outputs first, then inputs, then sizes.
 * - Row-major tensors; N = B*T rows of width C unless said otherwise.
 * - Backward kernels ACCUMULATE (+=) into every gradient they are given. Any
 *   gradient pointer may be NULL: that gradient is not computed at all (frozen
 *   weights get no weight gradient; the first layer needs no input gradient).
 * - Kernels parallelise internally with OpenMP over independent rows/heads and
 *   never allocate except where noted (scratch comes from the caller).
 */
#ifndef PEFTC_KERNELS_H
#define PEFTC_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "core/rng.h"

/* out (N,OC) = inp (N,IC) @ w(OC,IC)^T + bias(OC); bias may be NULL.
 * If accumulate, out += instead of =. */
void matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    int N, int IC, int OC, int accumulate);
/* dinp (N,IC) += dout @ w; dw (OC,IC) += dout^T @ inp; dbias (OC) += sum_rows dout */
void matmul_backward(float *dinp, float *dw, float *dbias,
                     const float *dout, const float *inp, const float *w,
                     int N, int IC, int OC);

/* out (B,T,C) = wte[ids] + wpe[pos0 + t] + wtt[type_ids] ; type_ids may be NULL (type 0) */
void embeddings_forward(float *out, const int32_t *ids, const int32_t *type_ids,
                        const float *wte, const float *wpe, const float *wtt,
                        int B, int T, int C, int pos0);
void embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                         const int32_t *ids, const int32_t *type_ids,
                         int B, int T, int C, int pos0);

/* out (N,C) = (inp - mean)/sqrt(var + eps) * w + b; saves mean (N), rstd (N) */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int N, int C, float eps);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C);

/* exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))) */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

void tanh_forward(float *out, const float *inp, size_t n);
/* uses the forward output y: dinp += dout * (1 - y^2) */
void tanh_backward(float *dinp, const float *out, const float *dout, size_t n);

/* Multi-head self-attention core (after the q/k/v projections).
 * q, k, v, out: (B,T,C) with C = NH*hd; probs: (B,NH,T,T) saved for backward.
 * Scores scaled by 1/sqrt(hd); key positions >= lens[b] get probability 0
 * (padding mask); rows of padded query positions are computed like the others. */
void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, const int *lens, int B, int T, int C, int NH);
void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                        const float *probs, const float *q, const float *k,
                        const float *v, const int *lens, int B, int T, int C, int NH);

/* Training variants with dropout p on the attention probabilities: mask
 * (B,NH,T,T) is drawn from a counter-based stream keyed by seed (so it does
 * not depend on the thread count); probs keeps the undropped probabilities;
 * out = (probs * mask / (1-p)) v. */
void attention_forward_train(float *out, float *probs, uint8_t *mask, const float *q,
                             const float *k, const float *v, const int *lens,
                             int B, int T, int C, int NH, float p, uint64_t seed);
void attention_backward_train(float *dq, float *dk, float *dv, const float *dout,
                              const float *probs, const uint8_t *mask, const float *q,
                              const float *k, const float *v, const int *lens,
                              int B, int T, int C, int NH, float p);

/* Inverted dropout: out = inp * mask / (1-p), mask (n bytes) drawn from rng
 * and saved. p == 0 copies and sets mask to 1. out may equal inp. */
void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, peftc_rng *rng);
void dropout_backward(float *dinp, const uint8_t *mask, const float *dout, float p, size_t n);

/* Pooling over the first lens[b] positions of (B,T,C) into (B,C). */
void mean_pool_forward(float *out, const float *inp, const int *lens, int B, int T, int C);
void mean_pool_backward(float *dinp, const float *dout, const int *lens, int B, int T, int C);
/* CLS pooling: out (B,C) = inp[:,0,:] */
void cls_pool_forward(float *out, const float *inp, int B, int T, int C);
void cls_pool_backward(float *dinp, const float *dout, int B, int T, int C);

/* Softmax cross-entropy over K classes. losses (B), probs (B,K) saved.
 * Returns the mean loss over B. */
float softmax_ce_forward(float *losses, float *probs, const float *logits,
                         const int *labels, int B, int K);
/* dlogits (B,K) += (probs - onehot) * scale   (scale = 1/B for a mean loss) */
void softmax_ce_backward(float *dlogits, const float *probs, const int *labels,
                         int B, int K, float scale);

void relu_forward(float *out, const float *inp, size_t n);
void relu_backward(float *dinp, const float *inp, const float *dout, size_t n);
/* SiLU / swish: x * sigmoid(x) */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* y += a * x, n elements */
void axpy_inplace(float *y, float a, const float *x, size_t n);

/* y += x, n elements */
void add_inplace(float *y, const float *x, size_t n);

/* L2-normalise each of N rows of width C in place. */
void l2_normalize_rows(float *x, int N, int C);

/* AdamW with decoupled weight decay and bias correction; step t >= 1. */
void adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int t);

#endif
