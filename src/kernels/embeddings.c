/* embeddings.c: token + position + token-type embedding lookup and its scatter
 * gradient. */
#include "kernels/kernels.h"

/* Channels per task in the backward scatter. Repeated token ids make rows of
 * dwte collide, so tasks split the channel axis instead of the rows: a task
 * owns its channel slice of every gradient row, visits positions in order, and
 * the sums are race-free and independent of the thread count. 32 floats = two
 * cache lines, so neighbouring tasks do not share lines. */
#define EMB_COLS 32

/* out (B,T,C) = wte[ids[b,t]] + wpe[pos0 + t] + wtt[type_ids[b,t]]
 * wte (V,C), wpe (P,C) with P >= pos0 + T, wtt (NT,C).
 * type_ids NULL means type 0 everywhere; wpe or wtt NULL leaves that term out
 * (models without learned positions or token types). */
void embeddings_forward(float *out, const int32_t *ids, const int32_t *type_ids,
                        const float *wte, const float *wpe, const float *wtt,
                        int B, int T, int C, int pos0)
{
    #pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * C >= (1u << 15))
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            float *o = out + bt * C;
            const float *e = wte + (size_t)ids[bt] * C;
            for (int c = 0; c < C; c++) o[c] = e[c];
            if (wtt) {
                const float *y = wtt + (size_t)(type_ids ? type_ids[bt] : 0) * C;
                for (int c = 0; c < C; c++) o[c] += y[c];
            }
            if (wpe) {
                const float *p = wpe + (size_t)(pos0 + t) * C;
                for (int c = 0; c < C; c++) o[c] += p[c];
            }
        }
    }
}

/* dwte (V,C) += scatter of dout (B,T,C) by ids; dwpe (P,C) row pos0+t += sum_b dout[b,t];
 * dwtt (NT,C) += scatter by type_ids (type 0 if NULL). */
void embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                         const int32_t *ids, const int32_t *type_ids,
                         int B, int T, int C, int pos0)
{
    if (!dwte && !dwpe && !dwtt) return;
    int ntask = (C + EMB_COLS - 1) / EMB_COLS;
    #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= (1u << 15))
    for (int task = 0; task < ntask; task++) {
        int c0 = task * EMB_COLS;
        int c1 = c0 + EMB_COLS < C ? c0 + EMB_COLS : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                size_t bt = (size_t)b * T + t;
                const float *d = dout + bt * C;
                if (dwte) {
                    float *g = dwte + (size_t)ids[bt] * C;
                    for (int c = c0; c < c1; c++) g[c] += d[c];
                }
                if (dwpe) {
                    float *g = dwpe + (size_t)(pos0 + t) * C;
                    for (int c = c0; c < c1; c++) g[c] += d[c];
                }
                if (dwtt) {
                    float *g = dwtt + (size_t)(type_ids ? type_ids[bt] : 0) * C;
                    for (int c = c0; c < c1; c++) g[c] += d[c];
                }
            }
        }
    }
}
