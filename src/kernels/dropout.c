/* dropout.c: inverted dropout with a saved byte mask. */
#include <string.h>
#include "kernels/kernels.h"

/* out (n) = inp * mask / (1-p); mask[i] = 1 (keep, probability 1-p) or 0.
 * Draws one uniform per element from rng in index order, on one thread, so the
 * mask depends only on the rng state, never on the thread count.
 * p <= 0 copies (no draws, mask all 1); p >= 1 zeroes (no draws, mask all 0).
 * out may equal inp. mask may be NULL when no backward follows. */
void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, peftc_rng *rng)
{
    if (p <= 0.0f) {
        if (out != inp) memmove(out, inp, n * sizeof(float));
        if (mask) memset(mask, 1, n);
        return;
    }
    if (p >= 1.0f) {
        for (size_t i = 0; i < n; i++) out[i] = 0.0f;
        if (mask) memset(mask, 0, n);
        return;
    }
    float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++) {
        uint8_t keep = peftc_rng_uniform(rng) >= p;
        if (mask) mask[i] = keep;
        out[i] = keep ? inp[i] * scale : 0.0f;
    }
}

/* dinp (n) += dout * mask / (1-p); p <= 0 passes dout through (mask unused). */
void dropout_backward(float *dinp, const uint8_t *mask, const float *dout, float p, size_t n)
{
    if (!dinp) return;
    if (p <= 0.0f) {
        #pragma omp parallel for schedule(static) if (n >= (1u << 15))
        for (size_t i = 0; i < n; i++) dinp[i] += dout[i];
        return;
    }
    if (p >= 1.0f) return;
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if (n >= (1u << 15))
    for (size_t i = 0; i < n; i++)
        if (mask[i]) dinp[i] += dout[i] * scale;
}
