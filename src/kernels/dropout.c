/* dropout.c: inverted dropout with a saved byte mask. The mask is counter-based
 * (element i's draw is a function of a key and i alone), so it is generated in
 * parallel and vectorised, yet depends only on the rng state, never on the
 * thread count or the instruction-set tier. */
#include <string.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

#define DROPOUT_PAR (1u << 15)
#define GAMMA 0x9E3779B97F4A7C15ull

/* elements [i0, i0+n) of the stream keyed by key; mask may be NULL */
KERN_INLINE void drop_fwd_body(float *out, uint8_t *mask, const float *inp, size_t n,
                               uint64_t key, size_t i0, uint64_t thr, float scale, const int F)
{
    (void)F;
    uint64_t z0 = key + (uint64_t)(i0 + 1) * GAMMA;
    if (mask) {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) {
            uint64_t z = kern_mix64(z0 + (uint64_t)i * GAMMA);
            uint8_t keep = (z >> 40) >= thr;
            mask[i] = keep;
            out[i] = kern_sel(keep, inp[i] * scale, 0.0f);
        }
    } else {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) {
            uint64_t z = kern_mix64(z0 + (uint64_t)i * GAMMA);
            out[i] = kern_sel((z >> 40) >= thr, inp[i] * scale, 0.0f);
        }
    }
}
KERN_TIERS(drop_fwd, (float *out, uint8_t *mask, const float *inp, size_t n, uint64_t key, size_t i0,
                      uint64_t thr, float scale), out, mask, inp, n, key, i0, thr, scale)

/* out (n) = inp * mask / (1-p); mask[i] = 1 (keep, probability 1-p) or 0.
 * Takes one draw from rng, key = peftc_rng_u64(rng); mask[i] = 1 iff the i-th
 * draw of a peftc_rng with state = key is >= p (draw i is a function of key and
 * i alone, as in attention_forward_train).
 * p <= 0 copies (no draw, mask all 1); p >= 1 zeroes (no draw, mask all 0).
 * out may equal inp. mask may be NULL when no backward follows. */
static void drop_fwd_run(float *out, uint8_t *mask, const float *inp, float p, size_t n, uint64_t key)
{
    uint64_t thr = kern_keep_threshold(p);
    float scale = 1.0f / (1.0f - p);
    void (*f)(float *, uint8_t *, const float *, size_t, uint64_t, size_t, uint64_t, float) = KERN_PICK(drop_fwd);
    if (n < DROPOUT_PAR) { f(out, mask, inp, n, key, 0, thr, scale); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(out + s, mask ? mask + s : NULL, inp + s, e - s, key, s, thr, scale);
    }
}

void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, peftc_rng *rng)
{
    if (p <= 0.0f) {
        if (out != inp) memmove(out, inp, n * sizeof(float));
        if (mask) memset(mask, 1, n);
        return;
    }
    if (p >= 1.0f) {
        memset(out, 0, n * sizeof(float));
        if (mask) memset(mask, 0, n);
        return;
    }
    drop_fwd_run(out, mask, inp, p, n, peftc_rng_u64(rng));
}

void dropout_forward_mask_key(float *out, uint8_t *mask, const float *inp, float p, size_t n, uint64_t key)
{
    if (p <= 0.0f) {
        if (out != inp) memmove(out, inp, n * sizeof(float));
        if (mask) memset(mask, 1, n);
        return;
    }
    if (p >= 1.0f) {
        memset(out, 0, n * sizeof(float));
        if (mask) memset(mask, 0, n);
        return;
    }
    drop_fwd_run(out, mask, inp, p, n, key);
}

void dropout_forward_key(float *out, const float *inp, float p, size_t n, uint64_t key)
{
    if (p <= 0.0f) { if (out != inp) memmove(out, inp, n * sizeof(float)); return; }
    if (p >= 1.0f) { memset(out, 0, n * sizeof(float)); return; }
    drop_fwd_run(out, NULL, inp, p, n, key);
}

/* the backward with the mask drawn again from the key instead of read */
KERN_INLINE void drop_bwd_key_body(float *dinp, const float *dout, size_t n, uint64_t key, size_t i0,
                                   uint64_t thr, float scale, int acc, const int F)
{
    (void)F;
    uint64_t z0 = key + (uint64_t)(i0 + 1) * GAMMA;
    if (acc) {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) {
            uint64_t z = kern_mix64(z0 + (uint64_t)i * GAMMA);
            dinp[i] += kern_sel((z >> 40) >= thr, dout[i] * scale, 0.0f);
        }
    } else {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) {
            uint64_t z = kern_mix64(z0 + (uint64_t)i * GAMMA);
            dinp[i] = kern_sel((z >> 40) >= thr, dout[i] * scale, 0.0f);
        }
    }
}
KERN_TIERS(drop_bwd_key, (float *dinp, const float *dout, size_t n, uint64_t key, size_t i0, uint64_t thr,
                          float scale, int acc), dinp, dout, n, key, i0, thr, scale, acc)

void dropout_backward_key(float *dinp, const float *dout, float p, size_t n, uint64_t key, int accumulate)
{
    if (!dinp) return;
    if (p <= 0.0f) {
        if (accumulate) dropout_backward(dinp, NULL, dout, 0.0f, n, 1);
        else if (dinp != dout) memmove(dinp, dout, n * sizeof(float));
        return;
    }
    if (p >= 1.0f) {
        if (!accumulate) memset(dinp, 0, n * sizeof(float));
        return;
    }
    uint64_t thr = kern_keep_threshold(p);
    float scale = 1.0f / (1.0f - p);
    void (*f)(float *, const float *, size_t, uint64_t, size_t, uint64_t, float, int) = KERN_PICK(drop_bwd_key);
    if (n < DROPOUT_PAR) { f(dinp, dout, n, key, 0, thr, scale, accumulate); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(dinp + s, dout + s, e - s, key, s, thr, scale, accumulate);
    }
}

KERN_INLINE void drop_bwd_body(float *dinp, const uint8_t *mask, const float *dout, size_t n,
                               float scale, int acc, const int F)
{
    (void)F;
    if (mask && acc) {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) dinp[i] += kern_sel(mask[i], dout[i] * scale, 0.0f);
    } else if (mask) {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) dinp[i] = kern_sel(mask[i], dout[i] * scale, 0.0f);
    } else if (acc) {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) dinp[i] += dout[i];
    } else {
        #pragma omp simd
        for (size_t i = 0; i < n; i++) dinp[i] = dout[i];
    }
}
KERN_TIERS(drop_bwd, (float *dinp, const uint8_t *mask, const float *dout, size_t n, float scale, int acc),
           dinp, mask, dout, n, scale, acc)

/* dinp (n) (+)= dout * mask / (1-p); p <= 0 passes dout through (mask unused).
 * dinp may equal dout when !accumulate (the in-place form). */
void dropout_backward(float *dinp, const uint8_t *mask, const float *dout, float p, size_t n, int accumulate)
{
    if (!dinp) return;
    if (p >= 1.0f) {
        if (!accumulate) memset(dinp, 0, n * sizeof(float));
        return;
    }
    if (p <= 0.0f) mask = NULL;
    if (!mask && !accumulate && dinp == dout) return;
    float scale = 1.0f / (1.0f - (p > 0.0f ? p : 0.0f));
    void (*f)(float *, const uint8_t *, const float *, size_t, float, int) = KERN_PICK(drop_bwd);
    if (n < DROPOUT_PAR) { f(dinp, mask, dout, n, scale, accumulate); return; }
    #pragma omp parallel
    {
        size_t s, e;
        kern_split(n, &s, &e);
        if (e > s) f(dinp + s, mask ? mask + s : NULL, dout + s, e - s, scale, accumulate);
    }
}

void dropout_backward_inplace(float *d, const uint8_t *mask, float p, size_t n)
{
    dropout_backward(d, mask, d, p, n, 0);
}
