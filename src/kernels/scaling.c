/* scaling.c: the ways the delta modules (peft/delta.c) scale a hidden state,
 * with their gradients: by one scalar (h += a u: the fixed and learned
 * scaled compositions), per token by a sigmoid gate (h += s g u, UniPELT),
 * per channel (h *= l, (IA)^3).
 *
 * The gradients of the learned a, gate weights and l are sums over all N rows.
 * They are formed in fixed blocks of SCALE_ROWS rows, each block's partial
 * sum going to its own slice of the caller's scratch whichever thread
 * computes it, and the partials are then added in block order: a result
 * depends on N and the tier, never on the thread count. */
#include <math.h>
#include <string.h>
#include <omp.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

#define SCALE_ROWS 64          /* rows per block of the parameter-gradient sums */
#define SCALE_PAR (1u << 15)   /* below this many elements a parallel region costs more than it saves */

static size_t n_blocks(int N) { return ((size_t)N + SCALE_ROWS - 1) / SCALE_ROWS; }
/* a block's partial sums: W columns and one more (the gate bias), whole cache lines */
static size_t part_stride(int W) { return ((size_t)W + 1 + 15) & ~(size_t)15; }

size_t scaling_scratch_floats(int N, int W) { return n_blocks(N) * part_stride(W > 0 ? W : 0); }

/* part[0][j] = part[0][j] + part[1][j] + ... + part[nb-1][j], added in block
 * order, for j < W (rows of part `stride` apart). Called by every thread of
 * the enclosing parallel region (or outside one) once all partials are
 * written; each thread takes its kern_split share of the columns. */
static void sum_blocks(float *part, size_t nb, size_t stride, size_t W)
{
    size_t j0, j1;
    kern_split(W, &j0, &j1);
    for (size_t b = 1; b < nb; b++) {
        const float *p = part + b * stride;
        #pragma omp simd
        for (size_t j = j0; j < j1; j++) part[j] += p[j];
    }
}

/* rows [r0, r1) of (N,W) */
static void block_rows(size_t k, int N, int *r0, int *r1)
{
    *r0 = (int)(k * SCALE_ROWS);
    *r1 = *r0 + SCALE_ROWS < N ? *r0 + SCALE_ROWS : N;
}

/* ---------------------------------------------------------------- scalar */

/* y (n) += a * x */
void axpy_inplace(float *y, float a, const float *x, size_t n)
{
    #pragma omp parallel for simd schedule(static) if (n >= SCALE_PAR)
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* elements [0, n) of one block: dx = a dy; *part = sum dy x if part */
KERN_INLINE void axpy_bwd_body(float *dx, float *part, const float *dy, const float *x, float a, size_t n, const int F)
{
    if (part) *part = kern_vdot(dy, x, (int)n, F);
    #pragma omp simd
    for (size_t i = 0; i < n; i++) dx[i] = a * dy[i];
}
KERN_TIERS(axpy_bwd, (float *dx, float *part, const float *dy, const float *x, float a, size_t n),
           dx, part, dy, x, a, n)

void axpy_backward(float *dx, float *da, float *scratch, const float *dy, const float *x, float a, int N, int W)
{
    if (N <= 0 || W <= 0) return;
    void (*f)(float *, float *, const float *, const float *, float, size_t) = KERN_PICK(axpy_bwd);
    size_t nb = n_blocks(N), stride = part_stride(0);
    #pragma omp parallel for schedule(static) if ((size_t)N * W >= SCALE_PAR)
    for (size_t k = 0; k < nb; k++) {
        int r0, r1;
        block_rows(k, N, &r0, &r1);
        size_t o = (size_t)r0 * W;
        f(dx + o, da ? scratch + k * stride : NULL, dy + o, da ? x + o : NULL, a, (size_t)(r1 - r0) * W);
    }
    if (!da) return;
    double s = 0;   /* a handful of partials; double so their order costs nothing */
    for (size_t k = 0; k < nb; k++) s += scratch[k * stride];
    *da += (float)s;
}

/* ------------------------------------------------------ per-token gate */

/* rows [r0, r1): g = sigmoid(x w + b); h += (s g) u */
KERN_INLINE void gate_fwd_body(float *h, float *g, const float *x, const float *u, const float *w, float b,
                               float s, int r0, int r1, int IC, int OC, const int F)
{
    for (int r = r0; r < r1; r++) {
        float gr = 1.0f / (1.0f + expf(-(b + kern_vdot(x + (size_t)r * IC, w, IC, F))));
        float a = gr * s;
        float *hr = h + (size_t)r * OC;
        const float *ur = u + (size_t)r * OC;
        g[r] = gr;
        #pragma omp simd
        for (int j = 0; j < OC; j++) hr[j] += a * ur[j];
    }
}
KERN_TIERS(gate_fwd, (float *h, float *g, const float *x, const float *u, const float *w, float b, float s,
                      int r0, int r1, int IC, int OC), h, g, x, u, w, b, s, r0, r1, IC, OC)

void gate_forward(float *h, float *g, const float *x, const float *u, const float *w, float b, float s,
                  int N, int IC, int OC)
{
    void (*f)(float *, float *, const float *, const float *, const float *, float, float, int, int, int, int) =
        KERN_PICK(gate_fwd);
    #pragma omp parallel if ((size_t)N * (IC + OC) >= SCALE_PAR)
    {
        size_t r0, r1;
        kern_split(N > 0 ? (size_t)N : 0, &r0, &r1);
        if (r1 > r0) f(h, g, x, u, w, b, s, (int)r0, (int)r1, IC, OC);
    }
}

/* rows [r0, r1) of one block: du = (s g) dh; dpre = s (dh . u) g (1-g);
 * dx += dpre w (if dx); part[0..IC) = sum dpre x and part[IC] = sum dpre (if part) */
KERN_INLINE void gate_bwd_body(float *du, float *dx, float *part, const float *dh, const float *x, const float *u,
                               const float *g, const float *w, float s, int r0, int r1, int IC, int OC, const int F)
{
    if (part) memset(part, 0, ((size_t)IC + 1) * sizeof(float));
    for (int r = r0; r < r1; r++) {
        const float *dhr = dh + (size_t)r * OC;
        float *dur = du + (size_t)r * OC;
        float gr = g[r], a = gr * s;
        float dg = s * kern_vdot(dhr, u + (size_t)r * OC, OC, F);
        float dpre = dg * gr * (1.0f - gr);
        #pragma omp simd
        for (int j = 0; j < OC; j++) dur[j] = a * dhr[j];
        if (part) {
            const float *xr = x + (size_t)r * IC;
            #pragma omp simd
            for (int j = 0; j < IC; j++) part[j] = kern_madd(dpre, xr[j], part[j], F);
            part[IC] += dpre;
        }
        if (dx) {
            float *dxr = dx + (size_t)r * IC;
            #pragma omp simd
            for (int j = 0; j < IC; j++) dxr[j] = kern_madd(dpre, w[j], dxr[j], F);
        }
    }
}
KERN_TIERS(gate_bwd, (float *du, float *dx, float *part, const float *dh, const float *x, const float *u,
                      const float *g, const float *w, float s, int r0, int r1, int IC, int OC),
           du, dx, part, dh, x, u, g, w, s, r0, r1, IC, OC)

void gate_backward(float *du, float *dx, float *dw, float *db, float *scratch, const float *dh, const float *x,
                   const float *u, const float *g, const float *w, float s, int N, int IC, int OC)
{
    if (N <= 0) return;
    void (*f)(float *, float *, float *, const float *, const float *, const float *, const float *, const float *,
              float, int, int, int, int) = KERN_PICK(gate_bwd);
    size_t nb = n_blocks(N), stride = part_stride(IC);
    int sums = dw || db;
    #pragma omp parallel if ((size_t)N * (IC + OC) >= SCALE_PAR)
    {
        #pragma omp for schedule(static)
        for (size_t k = 0; k < nb; k++) {
            int r0, r1;
            block_rows(k, N, &r0, &r1);
            f(du, dx, sums ? scratch + k * stride : NULL, dh, x, u, g, w, s, r0, r1, IC, OC);
        }
        if (sums) sum_blocks(scratch, nb, stride, (size_t)IC + 1);
    }
    if (dw)
        for (int j = 0; j < IC; j++) dw[j] += scratch[j];
    if (db) *db += scratch[IC];
}

/* ----------------------------------------------------------- per channel */

void channel_scale_forward(float *h, const float *l, int N, int W)
{
    #pragma omp parallel for schedule(static) if ((size_t)N * W >= SCALE_PAR)
    for (int r = 0; r < N; r++) {
        float *hr = h + (size_t)r * W;
        #pragma omp simd
        for (int j = 0; j < W; j++) hr[j] *= l[j];
    }
}

void channel_scale_backward(float *dh, float *dl, float *scratch, const float *h_pre, const float *l, int N, int W)
{
    if (N <= 0 || W <= 0) return;
    size_t nb = n_blocks(N), stride = part_stride(W);
    #pragma omp parallel if ((size_t)N * W >= SCALE_PAR)
    {
        #pragma omp for schedule(static)
        for (size_t k = 0; k < nb; k++) {
            int r0, r1;
            block_rows(k, N, &r0, &r1);
            float *part = dl ? scratch + k * stride : NULL;
            if (part) memset(part, 0, (size_t)W * sizeof(float));
            for (int r = r0; r < r1; r++) {
                const float *hr = h_pre + (size_t)r * W;
                float *dr = dh + (size_t)r * W;
                if (part) {
                    #pragma omp simd
                    for (int j = 0; j < W; j++) part[j] += dr[j] * hr[j];
                }
                #pragma omp simd
                for (int j = 0; j < W; j++) dr[j] *= l[j];
            }
        }
        if (dl) sum_blocks(scratch, nb, stride, (size_t)W);
    }
    if (dl)
        for (int j = 0; j < W; j++) dl[j] += scratch[j];
}
