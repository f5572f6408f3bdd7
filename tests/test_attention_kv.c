/* test_attention_kv.c: the decoder's KV-cache attention (prompt blocks of
 * two sgemms, decode rows) against a float64 reference: GQA, causal masks,
 * a prefix already in the cache, odd sizes, every ISA tier, 1 and 2 threads. */
#include "testlib.h"
#include "kernels/kernels.h"
#include "core/rng.h"

#include <omp.h>

static void reference(double *out, const float *q, const float *K, const float *V, int n, int pos, int H, int KVH, int hd)
{
    int G = H / KVH;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < n; i++) {
            int T = pos + i + 1;
            double s[1024], mx = -1e300, sum = 0;
            for (int t = 0; t < T; t++) {
                double d = 0;
                for (int j = 0; j < hd; j++) d += (double)q[(size_t)i * H * hd + h * hd + j] * K[(size_t)t * KVH * hd + (h / G) * hd + j];
                s[t] = d / sqrt((double)hd);
                if (s[t] > mx) mx = s[t];
            }
            for (int t = 0; t < T; t++) { s[t] = exp(s[t] - mx); sum += s[t]; }
            for (int j = 0; j < hd; j++) {
                double o = 0;
                for (int t = 0; t < T; t++) o += s[t] / sum * V[(size_t)t * KVH * hd + (h / G) * hd + j];
                out[(size_t)i * H * hd + h * hd + j] = o;
            }
        }
}

int main(void)
{
    struct { int n, pos, H, KVH, hd; } cases[] = {{1, 0, 3, 1, 16}, {1, 37, 9, 3, 64}, {16, 0, 4, 2, 20}, {40, 5, 9, 3, 64},
                                                  {70, 100, 6, 6, 33}, {33, 0, 2, 1, 7}};
    peftc_rng r;
    peftc_rng_seed(&r, 3);
    int tiers[] = {KERNELS_ISA_PORTABLE, KERNELS_ISA_AVX2, KERNELS_ISA_AVX512};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int n = cases[c].n, pos = cases[c].pos, H = cases[c].H, KVH = cases[c].KVH, hd = cases[c].hd, T = pos + n;
        size_t QD = (size_t)H * hd, KVD = (size_t)KVH * hd;
        float *q = malloc(n * QD * 4), *K = malloc(T * KVD * 4), *V = malloc(T * KVD * 4), *out = malloc(n * QD * 4);
        double *ref = malloc(n * QD * 8);
        for (size_t i = 0; i < n * QD; i++) q[i] = 2 * peftc_rng_normal(&r);
        for (size_t i = 0; i < T * KVD; i++) { K[i] = peftc_rng_normal(&r); V[i] = peftc_rng_normal(&r); }
        reference(ref, q, K, V, n, pos, H, KVH, hd);
        size_t stride = (size_t)ATTN_KV_QBLOCK * ((T + 15) & ~15);
        float *scores = malloc(4 * stride * sizeof(float));
        for (int ti = 0; ti < 3; ti++)
            for (int th = 1; th <= 2; th++) {
                int tier = kernels_set_isa(tiers[ti]);
                if (tier != tiers[ti]) continue;
                omp_set_num_threads(th);
                attention_kv_forward(out, q, K, V, n, pos, H, KVH, hd, scores, stride);
                double worst = 0;
                for (size_t i = 0; i < n * QD; i++) { double d = fabs(out[i] - ref[i]); if (d > worst || d != d) worst = d != d ? 1e9 : d; }
                CHECK(worst < 2e-5, "n %d pos %d heads %d/%d hd %d, %s, %d thread(s): max abs %.2e", n, pos, H, KVH, hd,
                      kernels_isa_name(tier), th, worst);
            }
        kernels_set_isa(KERNELS_ISA_AUTO);
        free(q); free(K); free(V); free(out); free(ref); free(scores);
    }
    return tl_finish();
}
