/* rng.h: a small seeded generator (splitmix64 stream) for dropout, shuffling
 * and initialisation. Its whole state is one uint64, so checkpoints can save
 * and restore it exactly. */
#ifndef PEFTC_RNG_H
#define PEFTC_RNG_H

#include <stdint.h>
#include <math.h>

typedef struct peftc_rng {
    uint64_t state;
} peftc_rng;

static inline void peftc_rng_seed(peftc_rng *r, uint64_t seed) { r->state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull; }

static inline uint64_t peftc_rng_u64(peftc_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 24 random bits */
static inline float peftc_rng_uniform(peftc_rng *r) { return (float)(peftc_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

/* uniform integer in [0, n) */
static inline uint64_t peftc_rng_below(peftc_rng *r, uint64_t n) { return n ? peftc_rng_u64(r) % n : 0; }

/* standard normal (Box-Muller) */
static inline float peftc_rng_normal(peftc_rng *r)
{
    float u1 = peftc_rng_uniform(r), u2 = peftc_rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

#endif
