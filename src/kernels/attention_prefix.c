/* attention_prefix.c: attention whose keys and values start with a prefix
 * that every query attends (prefix tuning, P-tuning v2, MAM, UniPELT).
 * Straightforward loops, one OpenMP task per (batch, head); correctness first:
 * prefix methods are a small part of the training time. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"

static inline uint8_t prefix_keep(uint64_t seed, size_t idx, float p)
{
    /* counter-based draw (as attention.c): independent of the thread count */
    peftc_rng r = {seed + (uint64_t)idx * 0x9E3779B97F4A7C15ull};
    return peftc_rng_uniform(&r) >= p;
}

/* q, out (B,T,C); k, v (B,P+T,C); probs, mask (B,NH,T,P+T) */
void attention_forward_prefix(float *out, float *probs, uint8_t *mask, const float *q, const float *k,
                              const float *v, const int *lens, int B, int T, int P, int C, int NH,
                              float p, uint64_t seed)
{
    int hd = C / NH, Tk = P + T;
    float scale = 1.0f / sqrtf((float)hd), invk = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int L = P + (lens ? lens[b] : T); /* keys [0, L) are attended */
            const float *kb = k + (size_t)b * Tk * C + (size_t)h * hd, *vb = v + (size_t)b * Tk * C + (size_t)h * hd;
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)b * T + t) * C + (size_t)h * hd;
                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hd;
                size_t row = (((size_t)b * NH + h) * T + t) * Tk;
                float *pr = probs + row;
                float mx = -INFINITY;
                for (int j = 0; j < L; j++) {
                    float s = 0;
                    for (int d = 0; d < hd; d++) s += qt[d] * kb[(size_t)j * C + d];
                    pr[j] = s * scale;
                    if (pr[j] > mx) mx = pr[j];
                }
                float sum = 0;
                for (int j = 0; j < L; j++) { pr[j] = expf(pr[j] - mx); sum += pr[j]; }
                for (int j = 0; j < L; j++) pr[j] /= sum;
                for (int j = L; j < Tk; j++) pr[j] = 0;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int j = 0; j < L; j++) {
                    float w = pr[j];
                    if (p > 0) {
                        uint8_t m = prefix_keep(seed, row + (size_t)j, p);
                        mask[row + (size_t)j] = m;
                        w = m ? w * invk : 0.0f;
                    }
                    for (int d = 0; d < hd; d++) o[d] += w * vb[(size_t)j * C + d];
                }
                if (p > 0) for (int j = L; j < Tk; j++) mask[row + (size_t)j] = 0;
            }
        }
}

/* dq (B,T,C), dk, dv (B,P+T,C) += ; parallel over heads only, so different
 * batch rows never write the same prefix gradient concurrently */
void attention_backward_prefix(float *dq, float *dk, float *dv, const float *dout, const float *probs,
                               const uint8_t *mask, const float *q, const float *k, const float *v,
                               const int *lens, int B, int T, int P, int C, int NH, float p)
{
    int hd = C / NH, Tk = P + T;
    float scale = 1.0f / sqrtf((float)hd), invk = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    #pragma omp parallel for schedule(static)
    for (int h = 0; h < NH; h++)
        for (int b = 0; b < B; b++) {
            int L = P + (lens ? lens[b] : T);
            size_t kb0 = (size_t)b * Tk * C + (size_t)h * hd;
            for (int t = 0; t < T; t++) {
                size_t qo = ((size_t)b * T + t) * C + (size_t)h * hd;
                size_t row = (((size_t)b * NH + h) * T + t) * Tk;
                const float *pr = probs + row, *dot = dout + qo;
                /* dW_j = dout . v_j; dP_j = dW_j * keep_j / (1-p); D = sum P_j dP_j */
                double D = 0;
                for (int j = 0; j < L; j++) {
                    float f = p > 0 ? (mask[row + (size_t)j] ? invk : 0.0f) : 1.0f;
                    float dw = 0;
                    for (int d = 0; d < hd; d++) dw += dot[d] * v[kb0 + (size_t)j * C + d];
                    D += (double)pr[j] * dw * f;
                    if (dv) for (int d = 0; d < hd; d++) dv[kb0 + (size_t)j * C + d] += pr[j] * f * dot[d];
                }
                for (int j = 0; j < L; j++) {
                    float f = p > 0 ? (mask[row + (size_t)j] ? invk : 0.0f) : 1.0f;
                    float dw = 0;
                    for (int d = 0; d < hd; d++) dw += dot[d] * v[kb0 + (size_t)j * C + d];
                    float ds = pr[j] * (dw * f - (float)D) * scale;
                    for (int d = 0; d < hd; d++) {
                        if (dq) dq[qo + d] += ds * k[kb0 + (size_t)j * C + d];
                        if (dk) dk[kb0 + (size_t)j * C + d] += ds * q[qo + d];
                    }
                }
            }
        }
}
