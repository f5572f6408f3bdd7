/* kernels.h: forward/backward kernels of the transformer ops (llm.c contract).
 *
 * - Paired <op>_forward / <op>_backward; outputs first, then inputs, then sizes.
 * - Row-major tensors; N = B*T rows of width C unless said otherwise.
 * - Backward kernels ACCUMULATE (+=) into every gradient they are given,
 *   except where an `accumulate` flag or the name (_inplace, _gelu) says
 *   otherwise. Any gradient pointer may be NULL: that gradient is not computed
 *   at all (frozen weights get no weight gradient; the first layer needs no
 *   input gradient).
 * - Kernels parallelise internally with OpenMP over independent rows/heads and
 *   never allocate except where noted (scratch comes from the caller, or from
 *   a per-thread buffer allocated once and reused: kern_scratch).
 */
#ifndef PEFTC_KERNELS_H
#define PEFTC_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "core/rng.h"
/* Thin SVD M = U diag(S) VT of a row-major (m, n) matrix, k = min(m, n):
 * U (m, k), S (k) descending, VT (k, n), all row-major. 0 on success,
 * -1 if LAPACK fails or memory runs out. Allocates (LAPACK's workspace):
 * for merging adapters, never inside a training step. */
int svd_thin_f64(const double *M, int m, int n, double *U, double *S, double *VT);

#ifdef PEFTC_KERNELS_INTERNAL
#include <math.h>
#endif

/* out (N,OC) = inp (N,IC) @ w(OC,IC)^T + bias(OC); bias may be NULL.
 * If accumulate, out += instead of =. */
void matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    int N, int IC, int OC, int accumulate);
/* dinp (N,IC) += dout @ w; dw (OC,IC) += dout^T @ inp; dbias (OC) += sum_rows dout */
void matmul_backward(float *dinp, float *dw, float *dbias,
                     const float *dout, const float *inp, const float *w,
                     int N, int IC, int OC);
/* dbias (OC) += sum_rows dout (N,OC): the gradient of a bias added to every row */
void bias_backward(float *dbias, const float *dout, int N, int OC);
/* dinp (N,IC) = dout (N,OC) @ w (OC,IC), or += if accumulate: the input
 * gradient alone (frozen weight), with no zeroing pass when it overwrites. */
void matmul_backward_input(float *dinp, const float *dout, const float *w,
                           int N, int IC, int OC, int accumulate);
/* The dense layer in front of a GELU (BERT's FFN: pre = x Wi^T + bi,
 * act = gelu(pre)): pre (N,OC) = inp @ w^T + bias (bias may be NULL), kept
 * for the backward; act (N,OC) = gelu(pre) unless act is NULL. act is what
 * gelu_forward gives. */
void matmul_forward_gelu(float *pre, float *act, const float *inp, const float *w,
                         const float *bias, int N, int IC, int OC);
/* The dense layer behind a GELU (out = act w^T + b, act = gelu(pre)), input
 * gradient only: dpre (N,IC) = (dout (N,OC) @ w (OC,IC)) * gelu'(pre),
 * OVERWRITING dpre (dbias, if wanted, from matmul_backward). */
void matmul_backward_gelu(float *dpre, const float *pre, const float *dout, const float *w,
                          int N, int IC, int OC);

/* bf16 path for frozen weights (AMX or AVX-512-BF16). By default on where
 * it pays (kernels_bf16_default), off elsewhere; kernels_set_bf16(1) / (0)
 * or PEFTC_BF16=1 / 0 in the environment force it on (if the CPU has
 * avx512bf16) / off, kernels_set_bf16(-1) restores the default; it returns
 * what is now in use. The kernels are usable whenever
 * kernels_bf16_supported(), whatever the switch: it is for the model code
 * to consult. */
int kernels_bf16_supported(void);
int kernels_set_bf16(int on);
int kernels_bf16(void);
/* The default: 1 where AMX tiles run, or where the AVX-512-BF16 kernel
 * measured (once per process, ~10 ms) at least 1.3x OpenBLAS's sgemm on one
 * thread (Zen 4: ~2.2x); kernels_bf16_speedup() is that ratio (0: no
 * AVX-512-BF16; measured on first call even where AMX runs). */
int kernels_bf16_default(void);
/* bf16 asked for explicitly (kernels_set_bf16(1), PEFTC_BF16=1, --bf16) */
int kernels_bf16_forced(void);
double kernels_bf16_speedup(void);
/* The matmul_bf16 kernels use AMX tiles (TDPBF16PS) where the CPU and the
 * OS allow (Linux arch_prctl permission, asked on first use), else
 * AVX-512-BF16: same operands, same fp32 accumulation (the order of the
 * additions differs). kernels_bf16_amx(0) / (1) forbids / allows AMX (-1:
 * query); returns whether AMX is now used. PEFTC_BF16_AMX=0 forbids it. */
int kernels_bf16_amx(int on);
/* fp32 -> bf16 bits, round to nearest even (NaN stays NaN) */
uint16_t kernels_f32_to_bf16(float f);
/* A weight w (OC,IC) rounded to bf16 and packed for the kernels (allocates;
 * the packed copy of the transpose, for the backward, is made on the first
 * matmul_bf16_backward). w must stay valid and unchanged. NULL if
 * unsupported or out of memory. */
typedef struct matmul_bf16 matmul_bf16;
matmul_bf16 *matmul_bf16_pack(const float *w, int IC, int OC);
/* the same from weights already in bf16 (a BF16 file's (OC,IC) rows, bits
 * copied); forward only (the backward kernels refuse it) */
matmul_bf16 *matmul_bf16_pack_bf16(const uint16_t *w, int IC, int OC);
void matmul_bf16_free(matmul_bf16 *p);
size_t matmul_bf16_bytes(const matmul_bf16 *p);
/* out (N,OC) = bf16(inp) @ bf16(w)^T + bias, products accumulated in fp32
 * (out += if accumulate). The kernels convert the activations to bf16 in a
 * per-thread scratch that is allocated on first use and kept (grown when a
 * larger layer comes); should that allocation fail they fall back to plain
 * loops (same operands, slower). */
void matmul_bf16_forward(float *out, const float *inp, const matmul_bf16 *w, const float *bias,
                         int N, int IC, int OC, int accumulate);
/* dinp (N,IC) = bf16(dout) @ bf16(w) (+= if accumulate; dinp may be NULL);
 * dbias (OC) += row sums of dout in fp32 (may be NULL; always accumulates).
 * No weight gradient: the weight is frozen. Returns 0, or -1 (nothing done)
 * if the transposed packing ran out of memory. */
int matmul_bf16_backward(float *dinp, float *dbias, const float *dout, matmul_bf16 *w,
                         int N, int IC, int OC, int accumulate);
/* Makes the transposed packing now (0; -1 if out of memory), so that
 * matmul_bf16_backward calls on w from several threads at once only read. */
int matmul_bf16_prepare_backward(matmul_bf16 *w);
/* matmul_forward_gelu with a packed weight: pre and act (may be NULL) are
 * written from each output block while it is in cache; act is bit for bit
 * what gelu_forward at the AVX-512 tier gives on pre. */
void matmul_bf16_forward_gelu(float *pre, float *act, const float *inp, const matmul_bf16 *w,
                              const float *bias, int N, int IC, int OC);
/* matmul_backward_gelu with a packed weight: dpre (N,IC) = (bf16(dout) @
 * bf16(w)) * gelu'(pre), overwritten; the factor is gelu_backward's (AVX-512
 * tier) bit for bit. Returns 0, or -1 (nothing done) as matmul_bf16_backward. */
int matmul_bf16_backward_gelu(float *dpre, const float *pre, const float *dout, matmul_bf16 *w,
                              int N, int IC, int OC);

/* A frozen weight stored in another form (NF4 blocks) through the bf16
 * kernels a chunk at a time, never packed whole: the caller dequantises rows
 * [c0, c0+nr) of W (OC, IC) into `rows` (nr, IC) fp32, and these round them
 * to bf16 into `pack` (matmul_bf16_chunk_elems(IC, nr) elements, 64-byte
 * aligned; not kern_scratch's slot 0, which the kernels use) and multiply:
 *   forward:  out[:, c0:c0+nr] (row stride ldo) = bf16(inp) (N, IC) @ bf16(rows)^T
 *   backward: dinp (N, IC) (+)= bf16(dout[:, c0:c0+nr]) (row stride ldd) @ bf16(rows)
 * Products accumulate in fp32. Return 0, or -1 where the bf16 kernels do
 * not run (nothing done: use fp32). */
size_t matmul_bf16_chunk_elems(int IC, int nr);
/* With the bf16 path on (kernels_bf16(): measured faster here, or asked
 * for) and the CPU able: 1, with *rows (nr, IC) fp32 and *pack for them from
 * the thread's second scratch slot; else 0 (use fp32). */
int matmul_bf16_chunk_scratch(int IC, int nr, float **rows, uint16_t **pack);
int matmul_bf16_forward_chunk(float *out, int ldo, const float *inp, const float *rows, uint16_t *pack, int N, int IC,
                              int nr);
int matmul_bf16_backward_chunk(float *dinp, const float *dout, int ldd, const float *rows, uint16_t *pack, int N,
                               int IC, int nr, int accumulate);

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
/* dinp (+)= (accumulate 0 overwrites dinp: no memset needed) */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int N, int C, int accumulate);
/* out = layernorm_forward's output again from its saved mean and rstd, the
 * same bits: the backward recomputes outputs instead of storing them. */
void layernorm_apply(float *out, const float *inp, const float *mean, const float *rstd,
                     const float *w, const float *b, int N, int C);

/* Elementwise activations (activations.c), n elements; out may equal inp. */
/* exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))) */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
/* In place: d (n) = d * gelu'(inp), the gradient through the GELU when it
 * replaces rather than accumulates (the factor is gelu_backward's). */
void gelu_backward_inplace(float *d, const float *inp, size_t n);

void tanh_forward(float *out, const float *inp, size_t n);
/* uses the forward output y: dinp += dout * (1 - y^2) */
void tanh_backward(float *dinp, const float *out, const float *dout, size_t n);
void relu_forward(float *out, const float *inp, size_t n);
void relu_backward(float *dinp, const float *inp, const float *dout, size_t n);
/* SiLU / swish: x * sigmoid(x) */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *inp, const float *dout, size_t n);

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

/* With a prefix: k, v are (B, P+T, C) where the first P keys of every
 * sequence (the prefix) are always attended and key P+j only if j < lens[b];
 * probs and mask are (B,NH,T,P+T), the mask drawn as in
 * attention_forward_train (i the flat index into (B,NH,T,P+T)).
 * p <= 0: no dropout (mask neither read nor written, may be NULL).
 * With P = 0, out, probs, mask and gradients are bit for bit those of
 * attention_forward (p <= 0) or attention_forward_train and their backwards. */
void attention_forward_prefix(float *out, float *probs, uint8_t *mask, const float *q, const float *k,
                              const float *v, const int *lens, int B, int T, int P, int C, int NH,
                              float p, uint64_t seed);
void attention_backward_prefix(float *dq, float *dk, float *dv, const float *dout, const float *probs,
                               const uint8_t *mask, const float *q, const float *k, const float *v,
                               const int *lens, int B, int T, int P, int C, int NH, float p);
/* (The attention kernels with dropout, and all their backwards, use a
 * per-thread scratch of about 2 x max(32768, 64 (P+T)) floats (256 KiB up to
 * P+T = 512) on the AVX2 / AVX-512 tiers. Each thread allocates it on its
 * first call that needs it or needs more, and keeps it until the thread
 * exits, so repeated calls at one shape, as in training, allocate nothing
 * after the first. Should the allocation fail, they fall back to loops that
 * need none.) */

/* Inverted dropout: out = inp * mask / (1-p), mask (n bytes) drawn from rng
 * and saved. p == 0 copies and sets mask to 1. out may equal inp. */
void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, peftc_rng *rng);
/* (dropout_forward takes exactly one draw, key = peftc_rng_u64(rng), when
 * 0 < p < 1; mask[i] = 1 iff the i-th draw of a peftc_rng with state = key is
 * >= p: counter-based, so the mask does not depend on the thread count.) */
/* dinp (n) += dout * mask / (1-p) (accumulate 0: =, and dinp may equal dout) */
void dropout_backward(float *dinp, const uint8_t *mask, const float *dout, float p, size_t n, int accumulate);
/* Without a stored mask: dropout_forward_key is dropout_forward with the
 * key given (the same stream: dropout_forward's key is its one rng draw);
 * dropout_backward_key draws the mask again from the key, so a training step
 * stores 8 bytes per dropout instead of a byte per element. dinp may equal
 * dout when !accumulate. */
void dropout_forward_key(float *out, const float *inp, float p, size_t n, uint64_t key);
/* dropout_forward with the key given and the mask saved. */
void dropout_forward_mask_key(float *out, uint8_t *mask, const float *inp, float p, size_t n, uint64_t key);
/* The key whose stream starts at draw i0 of key's stream (draw i is a function
 * of key + i * gamma): a data-parallel rank that runs rows [r0, r1) of a batch
 * draws, with key_at(key, r0 * per_row), exactly the masks a single process
 * draws for those rows of the whole batch. Also for the attention kernels' seed. */
static inline uint64_t dropout_key_at(uint64_t key, uint64_t i0) { return key + i0 * 0x9E3779B97F4A7C15ull; }
void dropout_backward_key(float *dinp, const float *dout, float p, size_t n, uint64_t key, int accumulate);
/* In place: d (n) = d * mask / (1-p), the gradient through inverted dropout
 * when it replaces rather than accumulates; p <= 0 leaves d, p >= 1 zeroes it. */
void dropout_backward_inplace(float *d, const uint8_t *mask, float p, size_t n);

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
/* The language-model loss over n rows of K logits: loss[b] (n, double) =
 * logsumexp(z_b) - z_b[labels[b]]; with scale != 0 each row of z is
 * overwritten with scale * (softmax - onehot), its gradient. Rows in
 * parallel, each computed alone (the same bits for any thread count). */
void lm_ce_rows(float *z, const int *labels, int n, int K, float scale, double *loss);
/* x (n) = softmax(x) in place, vectorised; -inf entries (masked) give 0, an
 * all -inf row gives all 0 */
void softmax_row_inplace(float *x, int n);

/* Scalings of a hidden state, as the delta modules use them (scaling.c).
 * The backward kernels WRITE the gradient of the scaled tensor (dx, du: the
 * delta's own output, which nothing else feeds) and accumulate the others.
 * Their sums over rows (da, dw, db, dl) go through `scratch`, at least
 * scaling_scratch_floats(N, W) floats for N rows and W the widest row summed
 * (IC for the gate, W for channel scaling, 0 for axpy), and are formed in
 * fixed blocks of rows added in order: they never depend on the thread count. */
size_t scaling_scratch_floats(int N, int W);
/* y += a * x, n elements */
void axpy_inplace(float *y, float a, const float *x, size_t n);
/* for y (N,W) += a x: dx (N,W) = a dy (written); da (1) += sum dy * x (da may
 * be NULL; then x and scratch are not used) */
void axpy_backward(float *dx, float *da, float *scratch, const float *dy, const float *x, float a, int N, int W);
/* per-token sigmoid gate: g (N) = sigmoid(x (N,IC) . w (IC) + b); h (N,OC) += s * g * u (N,OC) */
void gate_forward(float *h, float *g, const float *x, const float *u, const float *w, float b, float s,
                  int N, int IC, int OC);
/* du (N,OC) = s g dh (written); with dpre = s (dh . u) g (1-g) per row:
 * dx (N,IC) += dpre w, dw (IC) += sum_rows dpre x, db (1) += sum_rows dpre.
 * dx, dw, db may be NULL. */
void gate_backward(float *du, float *dx, float *dw, float *db, float *scratch, const float *dh, const float *x,
                   const float *u, const float *g, const float *w, float s, int N, int IC, int OC);
/* per-channel scaling ((IA)^3): h (N,W) *= l (W) row by row */
void channel_scale_forward(float *h, const float *l, int N, int W);
/* dl (W) += sum_rows dh * h_pre (dl may be NULL); then dh (N,W) *= l in place,
 * becoming the gradient w.r.t. h_pre */
void channel_scale_backward(float *dh, float *dl, float *scratch, const float *h_pre, const float *l, int N, int W);

/* Low-rank products of a rank-R delta module (lowrank.c): the down-projection
 * z = x A^T + b (A (R,IC)) and the up-projection h += alpha (a B^T + b)
 * (B (OC,R)), which adds into h directly (no (N,OC) intermediate, alpha in
 * the same pass). Made for small ranks, R <= LOWRANK_MAX_R (correct for any
 * R >= 1, but the scratch grows as R x width per 128 rows), any widths.
 * `scratch`: at least lowrank_scratch_floats(N, W, R) floats, W >= the width
 * (IC or OC) of the call; no kernel allocates. Each backward reads the wide
 * operands once, a few rows at a time, and sums weight and bias gradients
 * over rows in fixed blocks of rows added in block order: results never
 * depend on the thread count. Optional pointers may be NULL. */
#define LOWRANK_MAX_R 64
size_t lowrank_scratch_floats(int N, int W, int R);
/* z (N,R) = x (N,IC) A^T + bias (R) (written; bias may be NULL) */
void lowrank_down_forward(float *z, float *scratch, const float *x, const float *A, const float *bias,
                          int N, int IC, int R);
/* h (N,OC) += alpha * (a (N,R) B^T + bias (OC)) (bias may be NULL) */
void lowrank_up_forward(float *h, float *scratch, const float *a, const float *B, const float *bias, float alpha,
                        int N, int R, int OC);
/* Backward of lowrank_up_forward for dh (N,OC), one pass over dh:
 * da (N,R) = alpha dh B (WRITTEN: a is the delta's own activation),
 * dB (OC,R) += alpha dh^T a, dbias (OC) += alpha colsum(dh). */
void lowrank_up_backward(float *da, float *dB, float *dbias, float *scratch, const float *dh, const float *a,
                         const float *B, float alpha, int N, int R, int OC);
/* Backward of lowrank_down_forward for dz (N,R), one pass over the rows:
 * dx (N,IC) += dz A, dA (R,IC) += dz^T x, dbias (R) += colsum(dz)
 * (x is read only for dA and may be NULL without it). */
void lowrank_down_backward(float *dx, float *dA, float *dbias, float *scratch, const float *dz, const float *x,
                           const float *A, int N, int IC, int R);

/* The same two products for one row at inference, on factors held in bf16
 * (lowrank_bf16_pack): decoding reads every factor once per token, so the
 * factors' bytes, not their arithmetic, set the cost (fp32 factors of a
 * rank-16 LoRA on all seven linears of SmolLM2 are 20 MB a token, a quarter
 * of its Q4_1 weights). Products of the bf16 values with fp32 activations,
 * summed in fp32 in a fixed order (the tiers differ only by FMA rounding).
 * A16 (R, IC) row-major; Bt16 (R, OC): B transposed, so that the up-product
 * runs along outputs without horizontal sums. */
void lowrank_bf16_pack(uint16_t *A16, uint16_t *Bt16, const float *A, const float *B, int IC, int R, int OC);
/* Columns [o_lo, o_hi) of h (OC) += alpha Bt16^T (A16 x) for one row x (IC),
 * R <= LOWRANK_MAX_R: the R sums are made in full by every call (a few
 * thousand products), so that threads splitting the columns need not share
 * them, and each column's sum does not depend on the split. */
void lowrank_row_bf16(float *h, const float *x, const uint16_t *A16, const uint16_t *Bt16, float alpha,
                      int IC, int R, int OC, int o_lo, int o_hi);

/* y += x, n elements */
void add_inplace(float *y, const float *x, size_t n);

/* L2-normalise each of N rows of width C in place. */
void l2_normalize_rows(float *x, int N, int C);

/* AdamW with decoupled weight decay and bias correction; step t >= 1. */
void adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int t);

/* Causal attention of n new tokens (positions pos..pos+n-1) over a KV cache
 * holding positions 0..pos+n-1: q, out (n, n_heads*hd); K, V (>= pos+n,
 * n_kv_heads*hd), grouped-query (head h reads KV head h / (n_heads /
 * n_kv_heads)); scale 1/sqrt(hd); fp32 softmax. scores: per-thread scratch
 * of scores_stride >= ATTN_KV_QBLOCK * (pos+n) floats for every OpenMP
 * thread. Prompts (n >= ATTN_KV_QBLOCK / 2) run in blocks of ATTN_KV_QBLOCK
 * queries whose scores and weighted sums are two sgemms; decoding runs one
 * row at a time. Inference only. */
#define ATTN_KV_QBLOCK 32
void attention_kv_forward(float *out, const float *q, const float *K, const float *V, int n, int pos, int n_heads,
                          int n_kv_heads, int hd, float *scores, size_t scores_stride);

/* Instruction-set tier of the kernels' inner loops. By default the best the
 * CPU supports is chosen at start-up (AVX-512 F/BW/DQ/VL, else AVX2+FMA, else
 * portable SSE2 code); the environment variable PEFTC_KERNELS_ISA =
 * portable|avx2|avx512 lowers it. kernels_set_isa forces a tier (a tier the
 * CPU lacks is lowered to the best it has; KERNELS_ISA_AUTO restores the
 * default) and returns the tier now in use; for tests and benchmarks, and not
 * to be called while kernels run. Results of different tiers agree to
 * rounding; within one tier they do not depend on the thread count. */
enum { KERNELS_ISA_AUTO = -1, KERNELS_ISA_PORTABLE = 0, KERNELS_ISA_AVX2 = 1, KERNELS_ISA_AVX512 = 2 };
int kernels_set_isa(int isa);
int kernels_isa(void);
/* the best tier this CPU supports */
int kernels_isa_max(void);
const char *kernels_isa_name(int isa);

#ifdef PEFTC_KERNELS_INTERNAL
/* ---- shared by the .c files of src/kernels only ---- */

/* current tier (cpu.c) */
extern int kern_isa_level;

/* Each tiered inner loop is written once as a KERN_INLINE body taking a
 * trailing `const int F` (0 plain, 1 AVX2 + FMA, 2 AVX-512; nonzero means the
 * target has FMA) and instantiated three times by KERN_TIERS: plain,
 * KERN_AVX2 and KERN_AVX512 (GCC compiles the inlined body for each target;
 * the project builds without -march). Off x86 (or with
 * -DPEFTC_KERNELS_NO_X86) only the plain one exists. */
/* clang: not forced. Its OpenMP outlining puts a parallel region's body in a
 * function without the enclosing function's target attribute, and a forced
 * inline of AVX-512 / AMX code there fails in the backend (clang 14); unforced,
 * clang's inliner keeps target-mismatched calls as calls. */
#ifdef __clang__
#define KERN_INLINE static inline
#else
#define KERN_INLINE static inline __attribute__((always_inline))
#endif
#if (defined(__x86_64__) || defined(__i386__)) && !defined(PEFTC_KERNELS_NO_X86)
#define KERN_X86 1
#define KERN_AVX2 __attribute__((target("avx2,fma")))
/* GCC takes the 512-bit preference inside target(); clang rejects it there
 * and spells it min_vector_width(512). Every function using AVX-512
 * intrinsics carries one of these (clang refuses always_inline intrinsics in
 * a function without the matching target). */
#ifdef __clang__
#define KERN_TARGET_512(isa) __attribute__((target(isa), min_vector_width(512)))
#else
#define KERN_TARGET_512(isa) __attribute__((target(isa ",prefer-vector-width=512")))
#endif
#define KERN_AVX512 KERN_TARGET_512("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define KERN_TIERS(name, params, ...)                                                   \
    static void name##_portable params { name##_body(__VA_ARGS__, 0); }                 \
    KERN_AVX2 static void name##_avx2 params { name##_body(__VA_ARGS__, 1); }           \
    KERN_AVX512 static void name##_avx512 params { name##_body(__VA_ARGS__, 2); }
#define KERN_PICK(name) (kern_isa_level >= KERNELS_ISA_AVX512 ? name##_avx512 :        \
                         kern_isa_level >= KERNELS_ISA_AVX2 ? name##_avx2 : name##_portable)
#else
#define KERN_X86 0
#define KERN_TIERS(name, params, ...)                                                   \
    static void name##_portable params { name##_body(__VA_ARGS__, 0); }
#define KERN_PICK(name) name##_portable
#endif

/* a*b + c: one rounding where the target has FMA (F), else two */
KERN_INLINE float kern_madd(float a, float b, float c, const int F)
{
    return F ? __builtin_fmaf(a, b, c) : a * b + c;
}

/* sum a[j] b[j] with 16 partial sums, so each tier vectorises it (a plain
 * loop is a serial reduction the compiler must keep in order) */
KERN_INLINE float kern_dot(const float *a, const float *b, int n, const int F)
{
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int u = 0; u < 16; u++) acc[u] = kern_madd(a[j + u], b[j + u], acc[u], F);
    float d = 0;
    for (int u = 0; u < 16; u++) d += acc[u];
    for (; j < n; j++) d = kern_madd(a[j], b[j], d, F);
    return d;
}

/* a where cond else b, as bit operations: no branch for the compiler to sink work into */
KERN_INLINE float kern_sel(int cond, float a, float b)
{
    union { float f; int32_t i; } ua = { a }, ub = { b }, r;
    int32_t m = -(int32_t)(cond != 0);
    r.i = (ua.i & m) | (ub.i & ~m);
    return r.f;
}

/* exp(x), branch-free so loops around it vectorise: Cody-Waite reduction to
 * r in [-ln2/2, ln2/2] and Cephes' degree-7 polynomial, max error ~1 ulp for
 * x in [-87.33, 88]; 0 below (no subnormals), exp(88) for x in (88, 88.72],
 * +inf above; NaN stays NaN. The low clamp is the same -87.33654 below which
 * the result is replaced by 0, so no intermediate is subnormal either (a
 * clamp at -87.5 made y * 2^n subnormal for every x below -87.34, each a
 * microcode assist of ~100 cycles: gelu_backward on inputs beyond |x| = 13.2
 * ran 2.5x slower). Results are bit for bit those of the -87.5 clamp (checked
 * on all 2^32 inputs). */
KERN_INLINE float kern_exp(float x, const int F)
{
    float xc = kern_sel(x < -87.33654f, -87.33654f, x);
    xc = kern_sel(xc > 88.0f, 88.0f, xc);
    /* n = round(x / ln2) by the 1.5 * 2^23 trick; n also sits in t's low bits */
    float t = kern_madd(xc, 1.44269504088896341f, 12582912.0f, F);
    float n = t - 12582912.0f;
    float r = kern_madd(n, -0.693359375f, xc, F);
    r = kern_madd(n, 2.12194440e-4f, r, F);
    float p = 1.9875691500e-4f;
    p = kern_madd(p, r, 1.3981999507e-3f, F);
    p = kern_madd(p, r, 8.3334519073e-3f, F);
    p = kern_madd(p, r, 4.1665795894e-2f, F);
    p = kern_madd(p, r, 1.6666665459e-1f, F);
    p = kern_madd(p, r, 5.0000001201e-1f, F);
    float y = kern_madd(p, r * r, r, F) + 1.0f;
    union { float f; uint32_t u; } tb = { t };
    union { uint32_t u; float f; } sc = { (tb.u - 0x4B400000u + 127u) << 23 };   /* 2^n */
    y *= sc.f;
    y = kern_sel(x < -87.33654f, 0.0f, y);
    return kern_sel(x > 88.72283f, (float)INFINITY, y);
}

/* erf(x), branch-free; max error 1.3 ulp (relative 1e-7). |x| < 1:
 * x + x * P(x^2); |x| >= 1: 1 - exp(Q(|x|)) with Q ~ log erfc on [1, 4]
 * (erf rounds to 1 beyond 3.92). Minimax-style fits (Lawson iteration). */
KERN_INLINE float kern_erf(float x, const int F)
{
    float s = x * x, t = __builtin_fabsf(x);
    float p = 7.853846910e-05f;
    p = kern_madd(p, s, -8.010189049e-04f, F);
    p = kern_madd(p, s, 5.188327283e-03f, F);
    p = kern_madd(p, s, -2.685381100e-02f, F);
    p = kern_madd(p, s, 1.128358543e-01f, F);
    p = kern_madd(p, s, -3.761262596e-01f, F);
    p = kern_madd(p, s, 1.283791671e-01f, F);
    float small = kern_madd(x, p, x, F);
    float u = kern_sel(t > 4.0f, 4.0f, t);   /* NaN passes through */
    float q = 1.855775190e-04f;
    q = kern_madd(q, u, -2.939640777e-03f, F);
    q = kern_madd(q, u, 2.180544846e-02f, F);
    q = kern_madd(q, u, -1.030376330e-01f, F);
    q = kern_madd(q, u, -6.382253766e-01f, F);
    q = kern_madd(q, u, -1.127040267e+00f, F);
    q = kern_madd(q, u, -3.536774602e-04f, F);
    float big = 1.0f - kern_exp(q, F);
    big = __builtin_copysignf(big, x);
    return kern_sel(t < 1.0f, small, big);
}

/* GELU and its derivative, the one definition of their numerics (elementwise
 * kernels and the fused matmul epilogues): x Phi(x) with Phi(x) =
 * 0.5 (1 + erf(x / sqrt 2)), and Phi(x) + x phi(x) with phi the standard
 * normal density. */
KERN_INLINE float kern_gelu(float x, const int F)
{
    return 0.5f * x * (1.0f + kern_erf(x * 0.70710678118654752f, F));
}
KERN_INLINE float kern_gelu_grad(float x, const int F)
{
    float cdf = 0.5f * (1.0f + kern_erf(x * 0.70710678118654752f, F));
    float pdf = 0.39894228040143268f * kern_exp(-0.5f * x * x, F);
    return kern_madd(x, pdf, cdf, F);
}

/* A 64-byte aligned buffer of at least `bytes` owned by the calling thread
 * (any thread, OpenMP team member or not), reused across calls and grown on
 * demand; freed when the thread exits. NULL if it cannot be had (the caller
 * falls back to code that needs none). Valid until the same thread's next
 * kern_scratch call. */
void *kern_scratch(size_t bytes);
/* The same from another of the thread's buffers (slot 0 is kern_scratch's;
 * slot 1 for a caller that holds its buffer across calls of kernels that
 * use kern_scratch, such as matmul_bf16_*_chunk's callers). */
void *kern_scratch_slot(int slot, size_t bytes);

/* Reductions with KERN_LANES(F) partial sums (an array the `omp simd` lane
 * loop keeps in registers: 16 floats are one zmm, 8 one ymm; the plain SSE2
 * build does best with 16): a `#pragma omp simd reduction` compiles to a slow
 * spill through memory at -O2, and GCC vectors wider than the target go
 * through the stack. The combination order is fixed, so results depend only
 * on n and the tier. */
#define KERN_LANES(F) ((F) == 1 ? 8 : 16)
/* s = the partial sums acc[0..W) combined pairwise (W = 8 or 16) */
#define KERN_ACC_COMBINE(acc, W, s) do {                                     \
        if ((W) == 16) for (int l_ = 0; l_ < 8; l_++) (acc)[l_] += (acc)[l_ + 8]; \
        for (int l_ = 0; l_ < 4; l_++) (acc)[l_] += (acc)[l_ + 4];         \
        (s) = ((acc)[0] + (acc)[2]) + ((acc)[1] + (acc)[3]);               \
    } while (0)
/* sum x[0..n) */
KERN_INLINE float kern_vsum(const float *x, int n, const int F)
{
    const int W = KERN_LANES(F);
    float acc[16] = { 0 }, s;
    int j = 0;
    for (; j + W <= n; j += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) acc[l] += x[j + l];
    }
    KERN_ACC_COMBINE(acc, W, s);
    for (; j < n; j++) s += x[j];
    return s;
}
/* sum a[j] * b[j], j < n */
KERN_INLINE float kern_vdot(const float *a, const float *b, int n, const int F)
{
    const int W = KERN_LANES(F);
    float acc[16] = { 0 }, s;
    int j = 0;
    for (; j + W <= n; j += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) acc[l] += a[j + l] * b[j + l];
    }
    KERN_ACC_COMBINE(acc, W, s);
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}
/* max x[0..n), -inf for n = 0 (NaNs are not propagated) */
KERN_INLINE float kern_vmax(const float *x, int n, const int F)
{
    const int W = KERN_LANES(F);
    float acc[16];
    for (int l = 0; l < 16; l++) acc[l] = -(float)INFINITY;
    int j = 0;
    for (; j + W <= n; j += W) {
        #pragma omp simd
        for (int l = 0; l < W; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
    }
    float m = -(float)INFINITY;
    for (int l = 0; l < W; l++) m = acc[l] > m ? acc[l] : m;
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* [*start, *end) of n elements for the calling thread of the current parallel
 * region: contiguous, in thread order, boundaries on multiples of 16 elements
 * (whole cache lines for 4-byte elements). */
void kern_split(size_t n, size_t *start, size_t *end);

/* Counter-based dropout draws (the scheme of attention_forward_train): draw i
 * of the splitmix64 stream keyed by `key` (a peftc_rng with state = key) is
 * the uniform float (z_i >> 40) / 2^24 with z_i = mix(key + (i+1)*gamma), and
 * it keeps iff >= p, i.e. iff (z_i >> 40) >= kern_keep_threshold(p). */
KERN_INLINE uint64_t kern_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t kern_keep_threshold(float p)
{
    /* u * 2^-24 >= p  <=>  u >= ceil(p * 2^24), exactly (both sides exact) */
    double t = ceil((double)p * 16777216.0);
    return t <= 0.0 ? 0 : t >= 16777216.0 ? 16777216u : (uint64_t)t;
}
#endif /* PEFTC_KERNELS_INTERNAL */

#endif
