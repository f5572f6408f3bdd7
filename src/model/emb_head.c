/* emb_head.c: mean pooling and MultipleNegativesRankingLoss (in-batch negatives). */
#include "model/emb_head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status emb_head_alloc(emb_head *h, int C, int B, peftc_error *err)
{
    float scale = h->scale > 0 ? h->scale : 20.0f;
    emb_head_free(h);
    if (B < 1 || C < 1) return peftc_fail(err, PEFTC_ERR_INPUT, "embedding head: %d rows of %d values", B, C);
    int P = B / 2 > 0 ? B / 2 : 1;
    size_t n = (size_t)B * C * 3 + (size_t)B * 2 + (size_t)P * P;
    h->block = calloc(n, sizeof(float));
    if (!h->block) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    float *p = h->block;
    h->emb = p; p += (size_t)B * C;
    h->unit = p; p += (size_t)B * C;
    h->d_unit = p; p += (size_t)B * C;
    h->norm = p; p += B;
    h->count = p; p += B;
    h->probs = p;
    h->C = C;
    h->cap_B = B;
    h->scale = scale;
    return PEFTC_OK;
}

void emb_head_free(emb_head *h)
{
    float scale = h->scale;
    free(h->block);
    memset(h, 0, sizeof *h);
    h->scale = scale;
}

void emb_head_forward(emb_head *h, const float *hidden, const int32_t *ids, const int *lens, int B, int T)
{
    int C = h->C;
    for (int b = 0; b < B; b++) {
        float *e = h->emb + (size_t)b * C;
        int n = 0;
        for (int j = 0; j < lens[b] && j < T; j++) n += ids[(size_t)b * T + j] >= 0;
        for (int c = 0; c < C; c++) {   /* summed in double, token by token */
            double s = 0;
            for (int j = 0; j < lens[b] && j < T; j++)
                if (ids[(size_t)b * T + j] >= 0) s += hidden[((size_t)b * T + j) * C + c];
            e[c] = (float)s;
        }
        /* torch.clamp(sum_mask, min=1e-9): a row of virtual tokens alone pools to 0 */
        float cnt = n > 0 ? (float)n : 1e-9f;
        h->count[b] = cnt;
        double ss = 0;
        for (int c = 0; c < C; c++) { e[c] = e[c] / cnt; ss += (double)e[c] * e[c]; }
        double nr = sqrt(ss);
        if (nr < 1e-12) nr = 1e-12;   /* F.normalize's eps */
        h->norm[b] = (float)nr;
        float *u = h->unit + (size_t)b * C;
        for (int c = 0; c < C; c++) u[c] = (float)(e[c] / nr);
    }
}

static double dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

float emb_head_loss(emb_head *h, int B)
{
    int P = B / 2, C = h->C;
    if (P < 1) return 0.0f;
    const float *A = h->unit, *Q = h->unit + (size_t)P * C;
    double loss = 0;
    for (int i = 0; i < P; i++) {
        float *pr = h->probs + (size_t)i * P;
        double mx = -INFINITY;
        for (int j = 0; j < P; j++) {
            pr[j] = (float)(h->scale * dot(A + (size_t)i * C, Q + (size_t)j * C, C));
            if (pr[j] > mx) mx = pr[j];
        }
        double sum = 0;
        for (int j = 0; j < P; j++) sum += exp(pr[j] - mx);
        loss += mx + log(sum) - pr[i];
        for (int j = 0; j < P; j++) pr[j] = (float)(exp(pr[j] - mx) / sum);
    }
    return (float)(loss / P);
}

void emb_head_backward(emb_head *h, const int32_t *ids, const int *lens, int B, int T, float scale_loss, float *d_hidden)
{
    int P = B / 2, C = h->C;
    const float *A = h->unit, *Q = h->unit + (size_t)P * C;
    float *dA = h->d_unit, *dQ = h->d_unit + (size_t)P * C;
    memset(h->d_unit, 0, (size_t)B * C * sizeof(float));
    /* dS_ij = (softmax_ij - [i == j]) / P; S = scale * A Q^T */
    double k = (double)scale_loss * h->scale / P;
    for (int i = 0; i < P; i++)
        for (int j = 0; j < P; j++) {
            float g = (float)(k * (h->probs[(size_t)i * P + j] - (i == j)));
            const float *a = A + (size_t)i * C, *q = Q + (size_t)j * C;
            float *da = dA + (size_t)i * C, *dq = dQ + (size_t)j * C;
            for (int c = 0; c < C; c++) { da[c] += g * q[c]; dq[c] += g * a[c]; }
        }
    memset(d_hidden, 0, (size_t)B * T * C * sizeof(float));
    for (int b = 0; b < B; b++) {
        const float *u = h->unit + (size_t)b * C;
        float *du = h->d_unit + (size_t)b * C;
        /* through u = e / ||e||: de = (du - u (u . du)) / ||e||, then the mean */
        float ud = (float)dot(u, du, C);
        float inv = 1.0f / (h->norm[b] * h->count[b]);
        if (h->norm[b] <= 1e-12f) ud = 0.0f;   /* clamped: u = e / eps, linear in e */
        for (int c = 0; c < C; c++) du[c] = (du[c] - u[c] * ud) * inv;
        for (int j = 0; j < lens[b] && j < T; j++) {
            if (ids[(size_t)b * T + j] < 0) continue;
            memcpy(d_hidden + ((size_t)b * T + j) * C, du, (size_t)C * sizeof(float));
        }
    }
}
