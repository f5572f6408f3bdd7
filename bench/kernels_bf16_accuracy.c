/* kernels_bf16_accuracy.c: the bf16 path's effect on the encoder: the last
 * hidden states (every real token) and the mean-pooled embeddings of the
 * lines of a file, fp32 vs bf16.
 *   build: see bench/kernels_bf16.sh;  run: kernels_bf16_accuracy MODEL_DIR < lines.txt */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "peftc.h"

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s MODEL_DIR < lines\n", argv[0]); return 2; }
    peftc_error err;
    peftc_tokenizer *tok; peftc_model *m;
    if (peftc_tokenizer_load(argv[1], &tok, &err) || peftc_model_load(argv[1], &m, &err)) {
        fprintf(stderr, "%s\n", err.msg); return 1;
    }
    enum { MAXB = 256, T = 128 };
    static int32_t ids[MAXB * T], tt[MAXB * T];
    static int lens[MAXB];
    static char line[65536];
    int B = 0;
    while (B < MAXB && fgets(line, sizeof line, stdin)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = 0;
        if (peftc_tokenizer_encode(tok, line, n, NULL, 0, T, ids + B * T, tt + B * T, &lens[B], &err)) {
            fprintf(stderr, "%s\n", err.msg); return 1;
        }
        B++;
    }
    int Tm = 0;
    for (int b = 0; b < B; b++) Tm = lens[b] > Tm ? lens[b] : Tm;
    for (int b = 0; b < B; b++)   /* repack to T = Tm */
        for (int t = 0; t < Tm; t++) {
            ids[b * Tm + t] = t < lens[b] ? ids[b * T + t] : 0;
            tt[b * Tm + t] = 0;
        }
    int C = peftc_model_config(m)->hidden_size;
    float *h0 = malloc(sizeof(float) * B * Tm * C), *h1 = malloc(sizeof(float) * B * Tm * C);
    float *p0 = malloc(sizeof(float) * B * C), *p1 = malloc(sizeof(float) * B * C);
    peftc_set_bf16(0);
    if (peftc_model_encode(m, ids, tt, lens, B, Tm, PEFTC_POOL_MEAN, h0, p0, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    if (!peftc_set_bf16(1)) { printf("no avx512bf16\n"); return 0; }
    if (peftc_model_encode(m, ids, tt, lens, B, Tm, PEFTC_POOL_MEAN, h1, p1, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    double mab = 0, mref = 0, mrow = 0, mincos = 1;
    long cnt = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++, cnt++) {
            const float *x = h0 + ((size_t)b * Tm + t) * C, *y = h1 + ((size_t)b * Tm + t) * C;
            double dd = 0, xx = 0, yy = 0, xy = 0;
            for (int c = 0; c < C; c++) {
                double d = fabs((double)x[c] - y[c]);
                mab = d > mab ? d : mab;
                mref = fabs(x[c]) > mref ? fabs(x[c]) : mref;
                dd += d * d; xx += (double)x[c] * x[c]; yy += (double)y[c] * y[c]; xy += (double)x[c] * y[c];
            }
            double r = sqrt(dd / xx), cs = xy / sqrt(xx * yy);
            mrow = r > mrow ? r : mrow;
            mincos = cs < mincos ? cs : mincos;
        }
    printf("hidden states: %d sentences, %ld tokens x %d: max abs diff %.4g (max |h| %.3g), "
           "max per-token |dh|/|h| %.4g, min per-token cosine %.7f\n", B, cnt, C, mab, mref, mrow, mincos);
    double pab = 0, pmin = 1;
    for (int b = 0; b < B; b++) {
        double xx = 0, yy = 0, xy = 0;
        for (int c = 0; c < C; c++) {
            double x = p0[b * C + c], y = p1[b * C + c];
            pab = fabs(x - y) > pab ? fabs(x - y) : pab;
            xx += x * x; yy += y * y; xy += x * y;
        }
        double cs = xy / sqrt(xx * yy);
        pmin = cs < pmin ? cs : pmin;
    }
    printf("mean-pooled embeddings: max abs diff %.4g, min cosine %.7f\n", pab, pmin);
    peftc_model_free(m); peftc_tokenizer_free(tok);
    free(h0); free(h1); free(p0); free(p1);
    return 0;
}
