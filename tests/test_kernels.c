/* test_kernels.c: every kernel in src/kernels/kernels.h against naive
 * double-precision references written here.
 *
 * Forwards are compared with the reference on odd sizes. Backwards are compared
 * with central finite differences of L = sum(out * R) (R fixed and random),
 * taken on the double reference forward at the same (float-representable)
 * point, so the numerical gradient is accurate to ~1e-9 and the tolerance can
 * stay tight. Every backward is also checked to accumulate (a second call adds
 * the same amount again) and to honour NULL gradient pointers (each gradient
 * computed alone equals the one computed together with the others). Parallel
 * kernels are run with 1 and 2 OpenMP threads and must agree. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "testlib.h"

/* Every test runs once per instruction-set tier the CPU supports; each result
 * line names the tier. */
static const char *tier_name = "";
#undef CHECK
#define CHECK(cond, ...) do {                                                   \
        if (cond) { tl_passed++; printf("ok   - [%s] ", tier_name); }           \
        else { tl_failed++; printf("FAIL - %s:%d: [%s] ", __FILE__, __LINE__, tier_name); } \
        printf(__VA_ARGS__); printf("\n");                                      \
    } while (0)

/* ------------------------------------------------------------------ helpers */

static peftc_rng rng;

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}
static float *falloc(size_t n) { return xcalloc(n, sizeof(float)); }
static double *dalloc(size_t n) { return xcalloc(n, sizeof(double)); }

static float *frand(size_t n, float lo, float hi)
{
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * peftc_rng_uniform(&rng);
    return x;
}
static float *fcopy(const float *x, size_t n)
{
    float *y = falloc(n);
    memcpy(y, x, n * sizeof(float));
    return y;
}
static double *f2d(const float *x, size_t n)
{
    double *y = dalloc(n);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}
static double maxabs_d(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}
/* max |a - b| relative to the scale of b (floored so all-zero b still works) */
static double rel_err(const float *a, const double *b, size_t n)
{
    double m = 0, s = maxabs_d(b, n);
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m / (s > 1e-2 ? s : 1e-2);
}
/* error of an accumulated gradient: (g - g0) against the expected increment */
static double grad_err(const float *g, const float *g0, const double *want, size_t n)
{
    double *inc = dalloc(n);
    for (size_t i = 0; i < n; i++) inc[i] = (double)g[i] - (double)g0[i];
    double m = 0, s = maxabs_d(want, n);
    for (size_t i = 0; i < n; i++) {
        double d = fabs(inc[i] - want[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    free(inc);
    return m / (s > 1e-2 ? s : 1e-2);
}
/* second-call increment (g2 - g1) against the first (g1 - g0) */
static double accum_err(const float *g2, const float *g1, const float *g0, size_t n)
{
    double *want = dalloc(n);
    for (size_t i = 0; i < n; i++) want[i] = (double)g1[i] - (double)g0[i];
    double e = grad_err(g2, g1, want, n);
    free(want);
    return e;
}
static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* Reference forward: fills out from the inputs held in ctx. */
typedef void (*ref_fwd)(void *ctx, double *out);

static double loss_of(ref_fwd f, void *ctx, double *out, const double *R, size_t nout)
{
    f(ctx, out);
    double s = 0;
    for (size_t i = 0; i < nout; i++) s += out[i] * R[i];
    return s;
}

/* g = dL/dx by central differences, L = sum(out * R), x read by f via ctx */
static void fd_grad(ref_fwd f, void *ctx, double *x, size_t nx, const double *R,
                    size_t nout, double *g)
{
    double *out = dalloc(nout);
    for (size_t i = 0; i < nx; i++) {
        double x0 = x[i], h = 1e-5 * (fabs(x0) > 1 ? fabs(x0) : 1);
        x[i] = x0 + h; double lp = loss_of(f, ctx, out, R, nout);
        x[i] = x0 - h; double lm = loss_of(f, ctx, out, R, nout);
        x[i] = x0;
        g[i] = (lp - lm) / (2 * h);
    }
    free(out);
}

#define FWD_TOL 2e-6
#define GRAD_TOL 2e-4

/* ------------------------------------------------------------------ matmul */

typedef struct { double *inp, *w, *bias; int N, IC, OC; } mm_ctx;

static void ref_matmul(void *vctx, double *out)
{
    mm_ctx *c = vctx;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->bias ? c->bias[o] : 0;
            for (int i = 0; i < c->IC; i++) s += c->inp[n * c->IC + i] * c->w[o * c->IC + i];
            out[n * c->OC + o] = s;
        }
}

static void test_matmul(void)
{
    const int N = 7, IC = 37, OC = 67;   /* OC > 64 crosses a dbias column block */
    size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *inp = frand(ni, -1, 1), *w = frand(nw, -1, 1), *bias = frand(OC, -1, 1);
    mm_ctx ctx = { f2d(inp, ni), f2d(w, nw), f2d(bias, OC), N, IC, OC };
    double *ref = dalloc(no);
    ref_matmul(&ctx, ref);

    float *out = falloc(no);
    for (size_t i = 0; i < no; i++) out[i] = NAN;  /* accumulate=0 must not read out */
    matmul_forward(out, inp, w, bias, N, IC, OC, 0);
    CHECK(rel_err(out, ref, no) <= FWD_TOL, "matmul_forward bias: err %g", rel_err(out, ref, no));

    float *o0 = frand(no, -1, 1), *acc = fcopy(o0, no);
    matmul_forward(acc, inp, w, bias, N, IC, OC, 1);
    CHECK(grad_err(acc, o0, ref, no) <= FWD_TOL, "matmul_forward bias accumulate: err %g",
          grad_err(acc, o0, ref, no));

    mm_ctx nb = ctx; nb.bias = NULL;
    double *refnb = dalloc(no);
    ref_matmul(&nb, refnb);
    for (size_t i = 0; i < no; i++) out[i] = NAN;
    matmul_forward(out, inp, w, NULL, N, IC, OC, 0);
    CHECK(rel_err(out, refnb, no) <= FWD_TOL, "matmul_forward no bias: err %g", rel_err(out, refnb, no));
    memcpy(acc, o0, no * sizeof(float));
    matmul_forward(acc, inp, w, NULL, N, IC, OC, 1);
    CHECK(grad_err(acc, o0, refnb, no) <= FWD_TOL, "matmul_forward no bias accumulate: err %g",
          grad_err(acc, o0, refnb, no));

    /* backward */
    float *R = frand(no, -1, 1);
    double *Rd = f2d(R, no);
    double *gi = dalloc(ni), *gw = dalloc(nw), *gb = dalloc(OC);
    fd_grad(ref_matmul, &ctx, ctx.inp, ni, Rd, no, gi);
    fd_grad(ref_matmul, &ctx, ctx.w, nw, Rd, no, gw);
    fd_grad(ref_matmul, &ctx, ctx.bias, OC, Rd, no, gb);

    float *di0 = frand(ni, -.1f, .1f), *dw0 = frand(nw, -.1f, .1f), *db0 = frand(OC, -.1f, .1f);
    float *di = fcopy(di0, ni), *dw = fcopy(dw0, nw), *db = fcopy(db0, OC);
    matmul_backward(di, dw, db, R, inp, w, N, IC, OC);
    CHECK(grad_err(di, di0, gi, ni) <= GRAD_TOL, "matmul_backward dinp vs FD: err %g", grad_err(di, di0, gi, ni));
    CHECK(grad_err(dw, dw0, gw, nw) <= GRAD_TOL, "matmul_backward dw vs FD: err %g", grad_err(dw, dw0, gw, nw));
    CHECK(grad_err(db, db0, gb, OC) <= GRAD_TOL, "matmul_backward dbias vs FD: err %g", grad_err(db, db0, gb, OC));

    float *di2 = fcopy(di, ni), *dw2 = fcopy(dw, nw), *db2 = fcopy(db, OC);
    matmul_backward(di2, dw2, db2, R, inp, w, N, IC, OC);
    CHECK(accum_err(di2, di, di0, ni) <= 1e-5 && accum_err(dw2, dw, dw0, nw) <= 1e-5 &&
          accum_err(db2, db, db0, OC) <= 1e-5, "matmul_backward accumulates (second call adds again)");

    float *a = fcopy(di0, ni), *b = fcopy(dw0, nw), *c = fcopy(db0, OC);
    matmul_backward(a, NULL, NULL, R, inp, w, N, IC, OC);
    matmul_backward(NULL, b, NULL, R, inp, w, N, IC, OC);
    matmul_backward(NULL, NULL, c, R, inp, w, N, IC, OC);
    matmul_backward(NULL, NULL, NULL, R, inp, w, N, IC, OC);
    CHECK(tl_max_abs_diff(a, di, ni) <= 1e-6 && tl_max_abs_diff(b, dw, nw) <= 1e-6 &&
          same_bits(c, db, OC), "matmul_backward: each gradient alone (others NULL) matches");

    /* the input gradient alone: overwritten (accumulate 0, NaN before) or added */
    float *dx = falloc(ni);
    for (size_t i = 0; i < ni; i++) dx[i] = NAN;
    matmul_backward_input(dx, R, w, N, IC, OC, 0);
    double e0 = rel_err(dx, gi, ni);
    memcpy(dx, di0, ni * sizeof(float));
    matmul_backward_input(dx, R, w, N, IC, OC, 1);
    CHECK(e0 <= GRAD_TOL && grad_err(dx, di0, gi, ni) <= GRAD_TOL,
          "matmul_backward_input vs FD: accumulate 0 err %g, accumulate 1 err %g", e0, grad_err(dx, di0, gi, ni));

    /* the FFN pair: pre is matmul_forward's, act gelu_forward's, bit for bit;
     * dpre = (R w) * gelu'(pre) for a pre of (N, IC) */
    float *pre = falloc(no), *act = falloc(no), *act2 = falloc(no);
    for (size_t i = 0; i < no; i++) pre[i] = act[i] = NAN;
    matmul_forward_gelu(pre, act, inp, w, bias, N, IC, OC);
    matmul_forward(out, inp, w, bias, N, IC, OC, 0);
    gelu_forward(act2, out, no);
    int fwd_same = same_bits(pre, out, no) && same_bits(act, act2, no);
    matmul_forward_gelu(act2, NULL, inp, w, bias, N, IC, OC);
    CHECK(fwd_same && same_bits(act2, pre, no),
          "matmul_forward_gelu = matmul_forward + gelu_forward bit for bit (and act NULL)");
    float *gp = frand(ni, -4, 4), *dpre = falloc(ni);
    double *want = dalloc(ni);
    for (size_t i = 0; i < ni; i++) {
        double x = gp[i], cdf = 0.5 * (1 + erf(x / sqrt(2.0)));
        want[i] = gi[i] * (cdf + x * exp(-0.5 * x * x) / sqrt(2 * M_PI));
        dpre[i] = NAN;
    }
    matmul_backward_gelu(dpre, gp, R, w, N, IC, OC);
    matmul_backward_input(dx, R, w, N, IC, OC, 0);
    gelu_backward_inplace(dx, gp, ni);
    CHECK(rel_err(dpre, want, ni) <= GRAD_TOL && tl_max_abs_diff(dpre, dx, ni) == 0,
          "matmul_backward_gelu vs FD x gelu': err %g; = backward_input + gelu_backward_inplace exactly",
          rel_err(dpre, want, ni));
    free(dx); free(pre); free(act); free(act2); free(gp); free(dpre); free(want);

    free(inp); free(w); free(bias); free(ctx.inp); free(ctx.w); free(ctx.bias);
    free(ref); free(out); free(o0); free(acc); free(refnb); free(R); free(Rd);
    free(gi); free(gw); free(gb); free(di0); free(dw0); free(db0); free(di); free(dw); free(db);
    free(di2); free(dw2); free(db2); free(a); free(b); free(c);
}

/* -------------------------------------------------------------- embeddings */

typedef struct {
    double *wte, *wpe, *wtt;
    const int32_t *ids, *types;
    int B, T, C, pos0;
} emb_ctx;

static void ref_embeddings(void *vctx, double *out)
{
    emb_ctx *e = vctx;
    int C = e->C;
    for (int b = 0; b < e->B; b++)
        for (int t = 0; t < e->T; t++) {
            int bt = b * e->T + t;
            for (int c = 0; c < C; c++) {
                double s = e->wte[e->ids[bt] * C + c];
                if (e->wpe) s += e->wpe[(e->pos0 + t) * C + c];
                if (e->wtt) s += e->wtt[(e->types ? e->types[bt] : 0) * C + c];
                out[bt * C + c] = s;
            }
        }
}

/* bf16 of x as a double (the rounding of the kernels) */
static double bf16d(float x)
{
    union { uint32_t u; float f; } v = { (uint32_t)kernels_f32_to_bf16(x) << 16 };
    return v.f;
}

/* One bf16 forward + backward case: against a double reference computed from
 * the bf16-rounded operands (the kernel's only rounding left is the fp32
 * accumulation: tolerance 1e-5 relative to the sum of |products|), and against
 * the fp32 product (loose: 2^-8 relative rounding of both operands, so
 * |err| <= 2^-7 * sum |a||w| per element, checked with a 1e-2 bound). */
static void bf16_case(int N, int IC, int OC, int nthreads)
{
    int saved = omp_get_max_threads();
    omp_set_num_threads(nthreads);
    size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *inp = frand(ni, -1, 1), *w = frand(nw, -1, 1), *bias = frand(OC, -1, 1);
    float *dout = frand(no, -1, 1), *o0 = frand(no, -1, 1), *d0 = frand(ni, -1, 1);
    matmul_bf16 *p = matmul_bf16_pack(w, IC, OC);
    float *out = falloc(no), *acc = fcopy(o0, no), *dinp = fcopy(d0, ni), *db = falloc(OC);
    for (size_t i = 0; i < no; i++) out[i] = NAN;
    matmul_bf16_forward(out, inp, p, bias, N, IC, OC, 0);
    matmul_bf16_forward(acc, inp, p, NULL, N, IC, OC, 1);
    int rc = matmul_bf16_backward(dinp, db, dout, p, N, IC, OC, 1);
    float *dnew = falloc(ni);   /* accumulate 0: overwritten, NaN must not leak */
    for (size_t i = 0; i < ni; i++) dnew[i] = NAN;
    rc |= matmul_bf16_backward(dnew, NULL, dout, p, N, IC, OC, 0);
    double e_fwd = 0, e_acc = 0, e_bwd = 0, e_new = 0, l_fwd = 0, l_bwd = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0, sa = 0, f = 0;
            for (int k = 0; k < IC; k++) {
                double t = bf16d(inp[(size_t)n * IC + k]) * bf16d(w[(size_t)o * IC + k]);
                s += t; sa += fabs(t);
                f += (double)inp[(size_t)n * IC + k] * w[(size_t)o * IC + k];
            }
            size_t i = (size_t)n * OC + o;
            double sc = sa + 1e-30;
            e_fwd = fmax(e_fwd, fabs(out[i] - (s + bias[o])) / sc);
            e_acc = fmax(e_acc, fabs(acc[i] - (s + o0[i])) / sc);
            l_fwd = fmax(l_fwd, fabs(out[i] - (f + bias[o])) / sc);
            if (out[i] != out[i]) e_fwd = INFINITY;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < IC; k++) {
            double s = 0, sa = 0, f = 0;
            for (int o = 0; o < OC; o++) {
                double t = bf16d(dout[(size_t)n * OC + o]) * bf16d(w[(size_t)o * IC + k]);
                s += t; sa += fabs(t);
                f += (double)dout[(size_t)n * OC + o] * w[(size_t)o * IC + k];
            }
            size_t i = (size_t)n * IC + k;
            e_bwd = fmax(e_bwd, fabs(dinp[i] - (s + d0[i])) / (sa + 1e-30));
            e_new = fmax(e_new, fabs(dnew[i] - s) / (sa + 1e-30));
            if (dnew[i] != dnew[i]) e_new = INFINITY;
            l_bwd = fmax(l_bwd, fabs(dinp[i] - (f + d0[i])) / (sa + 1e-30));
        }
    double e_db = 0;
    for (int o = 0; o < OC; o++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
        e_db = fmax(e_db, fabs(db[o] - s));
    }
    CHECK(p && rc == 0 && e_fwd <= 1e-5 && e_acc <= 1e-5 && e_bwd <= 1e-5 && e_new <= 1e-5 && e_db <= 1e-4,
          "matmul_bf16 N=%d IC=%d OC=%d %d thread(s) vs bf16-rounded double: fwd %.2g, fwd acc %.2g, "
          "bwd acc %.2g, bwd %.2g, dbias %.2g", N, IC, OC, nthreads, e_fwd, e_acc, e_bwd, e_new, e_db);
    CHECK(l_fwd <= 1e-2 && l_bwd <= 1e-2,
          "matmul_bf16 N=%d IC=%d OC=%d vs fp32 (loose, <= 1e-2 of sum|a w|): fwd %.2g, bwd %.2g",
          N, IC, OC, l_fwd, l_bwd);
    /* the pack from weights already in bf16 (a BF16 file's rows): the same
     * forward bit for bit as the pack of the fp32 weights they round from, and
     * no backward (it has no fp32 source) */
    uint16_t *wb = malloc(nw * sizeof *wb);
    for (size_t i = 0; i < nw; i++) wb[i] = kernels_f32_to_bf16(w[i]);
    matmul_bf16 *pb = matmul_bf16_pack_bf16(wb, IC, OC);
    float *out2 = falloc(no);
    for (size_t i = 0; i < no; i++) out2[i] = NAN;
    if (pb) matmul_bf16_forward(out2, inp, pb, bias, N, IC, OC, 0);
    CHECK(pb && memcmp(out, out2, no * sizeof *out) == 0 && matmul_bf16_backward(dnew, NULL, dout, pb, N, IC, OC, 0) != 0,
          "matmul_bf16_pack_bf16 N=%d IC=%d OC=%d: forward = the fp32 pack's bit for bit; backward refused", N, IC, OC);
    matmul_bf16_free(pb);
    free(wb); free(out2);
    matmul_bf16_free(p);
    free(inp); free(w); free(bias); free(dout); free(o0); free(d0); free(out); free(acc); free(dinp); free(db);
    free(dnew);
    omp_set_num_threads(saved);
}

/* ---- the fused GELU kernels (matmul_bf16_forward_gelu / _backward_gelu) ---- */

/* ref (N,M) = sum_k bf16(a[n][k]) bf16(b(m, k)) in double and mag = sum of the
 * |products|; b(m, k) = w[m*IC + k] (forward, M = OC, K = IC) or w[k*IC + m]
 * (backward, M = IC, K = OC) */
static void ref_bf16(double *ref, double *mag, const float *a, const float *w, int N, int IC, int OC, int bwd)
{
    int M = bwd ? IC : OC, K = bwd ? OC : IC;
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                double t = bf16d(a[(size_t)n * K + k]) * bf16d(bwd ? w[(size_t)k * IC + m] : w[(size_t)m * IC + k]);
                s += t; sa += fabs(t);
            }
            ref[(size_t)n * M + m] = s;
            mag[(size_t)n * M + m] = sa + 1e-30;
        }
}

/* One run of every bf16 kernel on fixed inputs: pre/act (fused forward),
 * pre2 (fused forward, act NULL), out (plain forward, bias), dpre (fused
 * backward), d0 (backward, accumulate 0), d1 (backward, accumulate 1 onto
 * dbase). Outputs start as NaN, so one that is not written shows. */
typedef struct { float *pre, *act, *pre2, *out, *dpre, *d0, *d1; } bf16_outs;

static bf16_outs bf16_run(matmul_bf16 *p, const float *inp, const float *bias, const float *dout,
                          const float *gpre, const float *dbase, int N, int IC, int OC, int *rc)
{
    size_t no = (size_t)N * OC, ni = (size_t)N * IC;
    bf16_outs r = { falloc(no), falloc(no), falloc(no), falloc(no), falloc(ni), falloc(ni), fcopy(dbase, ni) };
    for (size_t i = 0; i < no; i++) r.pre[i] = r.act[i] = r.pre2[i] = r.out[i] = NAN;
    for (size_t i = 0; i < ni; i++) r.dpre[i] = r.d0[i] = NAN;
    matmul_bf16_forward_gelu(r.pre, r.act, inp, p, bias, N, IC, OC);
    matmul_bf16_forward_gelu(r.pre2, NULL, inp, p, bias, N, IC, OC);
    matmul_bf16_forward(r.out, inp, p, bias, N, IC, OC, 0);
    *rc |= matmul_bf16_backward_gelu(r.dpre, gpre, dout, p, N, IC, OC);
    *rc |= matmul_bf16_backward(r.d0, NULL, dout, p, N, IC, OC, 0);
    *rc |= matmul_bf16_backward(r.d1, NULL, dout, p, N, IC, OC, 1);
    return r;
}
static void bf16_outs_free(bf16_outs *r)
{
    free(r->pre); free(r->act); free(r->pre2); free(r->out); free(r->dpre); free(r->d0); free(r->d1);
}
static int bf16_outs_same(const bf16_outs *a, const bf16_outs *b, size_t no, size_t ni)
{
    return same_bits(a->pre, b->pre, no) && same_bits(a->act, b->act, no) && same_bits(a->pre2, b->pre2, no) &&
           same_bits(a->out, b->out, no) && same_bits(a->dpre, b->dpre, ni) && same_bits(a->d0, b->d0, ni) &&
           same_bits(a->d1, b->d1, ni);
}

/* The kernels with AMX (if usable) and with AVX-512-BF16, on 1 and 2
 * threads: against the bf16-rounded double reference (1e-5 of the sum of
 * |products|: the fp32 accumulation); the GELU parts bit for bit against
 * gelu_forward / gelu_backward_inplace at the AVX-512 tier on the GEMM's own
 * output; 1 and 2 threads bit for bit. */
static void bf16_fused_case(int N, int IC, int OC)
{
    size_t ni = (size_t)N * IC, no = (size_t)N * OC;
    float *inp = frand(ni, -1, 1), *w = frand((size_t)OC * IC, -1, 1), *bias = frand(OC, -1, 1);
    float *dout = frand(no, -1, 1), *gpre = frand(ni, -4, 4), *dbase = frand(ni, -1, 1);
    double *rf = dalloc(no), *mf = dalloc(no), *rb = dalloc(ni), *mb = dalloc(ni);
    ref_bf16(rf, mf, inp, w, N, IC, OC, 0);
    ref_bf16(rb, mb, dout, w, N, IC, OC, 1);
    matmul_bf16 *p = matmul_bf16_pack(w, IC, OC);
    int saved = omp_get_max_threads(), isa = kernels_isa(), amx0 = kernels_bf16_amx(-1);
    for (int amx = amx0; amx >= 0; amx--) {
        kernels_bf16_amx(amx);
        const char *how = amx ? "AMX" : "AVX-512-BF16";
        int rc = 0;
        omp_set_num_threads(1);
        bf16_outs r1 = bf16_run(p, inp, bias, dout, gpre, dbase, N, IC, OC, &rc);
        omp_set_num_threads(2);
        bf16_outs r2 = bf16_run(p, inp, bias, dout, gpre, dbase, N, IC, OC, &rc);
        omp_set_num_threads(saved);
        double e_pre = 0, e_d0 = 0, e_d1 = 0;
        for (size_t i = 0; i < no; i++) {
            double e = fabs(r1.pre[i] - (rf[i] + bias[i % OC])) / mf[i];
            e_pre = e == e && e < e_pre ? e_pre : e;
        }
        for (size_t i = 0; i < ni; i++) {
            double e = fabs(r1.d0[i] - rb[i]) / mb[i], f = fabs(r1.d1[i] - (rb[i] + dbase[i])) / mb[i];
            e_d0 = e == e && e < e_d0 ? e_d0 : e;
            e_d1 = f == f && f < e_d1 ? e_d1 : f;
        }
        /* the GELU parts, on the kernel's own GEMM output */
        kernels_set_isa(KERNELS_ISA_AVX512);
        float *act = falloc(no), *dpre = fcopy(r1.d0, ni);
        gelu_forward(act, r1.pre, no);
        gelu_backward_inplace(dpre, gpre, ni);
        kernels_set_isa(isa);
        CHECK(rc == 0 && e_pre <= 1e-5 && e_d0 <= 1e-5 && e_d1 <= 1e-5,
              "matmul_bf16 fused %s N=%d IC=%d OC=%d vs bf16-rounded double: pre %.2g, bwd accumulate 0 %.2g, "
              "accumulate 1 %.2g", how, N, IC, OC, e_pre, e_d0, e_d1);
        CHECK(same_bits(r1.pre, r1.out, no) && same_bits(r1.pre2, r1.out, no) && same_bits(r1.act, act, no),
              "matmul_bf16_forward_gelu %s N=%d IC=%d OC=%d: pre = matmul_bf16_forward (also with act NULL), "
              "act = gelu_forward(pre), bit for bit", how, N, IC, OC);
        CHECK(tl_max_abs_diff(r1.dpre, dpre, ni) == 0,
              "matmul_bf16_backward_gelu %s N=%d IC=%d OC=%d = backward (accumulate 0) x gelu_backward_inplace, "
              "bit for bit", how, N, IC, OC);
        CHECK(bf16_outs_same(&r1, &r2, no, ni), "matmul_bf16 (all kernels) %s N=%d IC=%d OC=%d: 1 and 2 threads "
              "agree bit for bit", how, N, IC, OC);
        free(act); free(dpre);
        bf16_outs_free(&r1); bf16_outs_free(&r2);
    }
    kernels_bf16_amx(amx0);
    matmul_bf16_free(p);
    free(inp); free(w); free(bias); free(dout); free(gpre); free(dbase); free(rf); free(mf); free(rb); free(mb);
}

/* kern_scratch (internal to the kernels; declared here to test it): a
 * per-thread buffer, reused, grown, 64-byte aligned */
void *kern_scratch(size_t bytes);
static void test_scratch(void)
{
    char *a = kern_scratch(100), *b = kern_scratch(50);
    int ok = a && a == b && ((uintptr_t)a & 63) == 0;
    char *c = kern_scratch(3u << 20);
    ok = ok && c && ((uintptr_t)c & 63) == 0;
    if (c) { memset(c, 1, 3u << 20); ok = ok && kern_scratch(1000) == c; }
    char *t[2] = { NULL, NULL };
    int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    #pragma omp parallel
    {
        int i = omp_get_thread_num();
        if (i < 2) { t[i] = kern_scratch(4096); if (t[i]) memset(t[i], i, 4096); }
    }
    omp_set_num_threads(saved);
    CHECK(ok && t[0] && t[1] && t[0] != t[1], "kern_scratch: aligned, reused, grown, one buffer per thread");
}

static void test_matmul_bf16(void)
{
    if (!kernels_bf16_supported()) {
        CHECK(matmul_bf16_pack(NULL, 4, 4) == NULL && kernels_set_bf16(1) == 0,
              "matmul_bf16 (no avx512bf16: skipped)");
        return;
    }
    /* rounding: ties to even, NaN stays NaN */
    CHECK(kernels_f32_to_bf16(1.0f) == 0x3F80 && kernels_f32_to_bf16(1.00390625f) == 0x3F80 &&
          kernels_f32_to_bf16(1.01171875f) == 0x3F82 && (kernels_f32_to_bf16(NAN) & 0x7FFF) > 0x7F80,
          "kernels_f32_to_bf16 rounds to nearest even");
    const int sz[][3] = { {1, 1, 1}, {7, 37, 67}, {13, 33, 17}, {25, 64, 48}, {12, 31, 32}, {50, 96, 130},
                          {33, 65, 40}, {64, 96, 64} };
    int amx0 = kernels_bf16_amx(-1);
    if (!amx0) printf("# AMX not usable here (CPU or OS): AVX-512-BF16 only\n");
    for (int amx = amx0; amx >= 0; amx--) {   /* AMX tiles (if usable), then AVX-512-BF16 */
        kernels_bf16_amx(amx);
        printf("# matmul_bf16 with %s\n", kernels_bf16_amx(-1) ? "AMX tiles" : "AVX-512-BF16");
        for (size_t c = 0; c < sizeof sz / sizeof sz[0]; c++)
            for (int t = 1; t <= 2; t++) bf16_case(sz[c][0], sz[c][1], sz[c][2], t);
    }
    kernels_bf16_amx(1);
    /* the thread count does not change a bit of the result */
    int N = 101, IC = 77, OC = 45, saved = omp_get_max_threads();
    float *inp = frand((size_t)N * IC, -1, 1), *w = frand((size_t)OC * IC, -1, 1);
    float *r1 = falloc((size_t)N * OC), *r2 = falloc((size_t)N * OC);
    matmul_bf16 *p = matmul_bf16_pack(w, IC, OC);
    omp_set_num_threads(1); matmul_bf16_forward(r1, inp, p, NULL, N, IC, OC, 0);
    omp_set_num_threads(2); matmul_bf16_forward(r2, inp, p, NULL, N, IC, OC, 0);
    omp_set_num_threads(saved);
    CHECK(tl_max_abs_diff(r1, r2, (size_t)N * OC) == 0, "matmul_bf16: 1 and 2 threads agree exactly");
    matmul_bf16_free(p); free(inp); free(w); free(r1); free(r2);
    /* odd sizes and tails: K odd, not a multiple of 32 or 1536 + 1; M over the
     * AMX GELU block width (384) with a partial block; several row blocks */
    const int fz[][3] = { {1, 1, 1}, {7, 37, 67}, {33, 65, 40}, {101, 77, 45}, {200, 130, 70},
                          {70, 401, 97}, {40, 97, 401}, {37, 1001, 50}, {19, 50, 1537} };
    for (size_t c = 0; c < sizeof fz / sizeof fz[0]; c++) bf16_fused_case(fz[c][0], fz[c][1], fz[c][2]);
}

static void test_embeddings(void)
{
    const int V = 11, P = 16, NT = 2, C = 37, B = 3, T = 5, pos0 = 2;
    size_t nte = (size_t)V * C, npe = (size_t)P * C, ntt = (size_t)NT * C, no = (size_t)B * T * C;
    int32_t ids[15], types[15];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)peftc_rng_below(&rng, 4);   /* few ids: many repeats to scatter */
        types[i] = (int32_t)peftc_rng_below(&rng, NT);
    }
    ids[B * T - 1] = V - 1;
    float *wte = frand(nte, -1, 1), *wpe = frand(npe, -1, 1), *wtt = frand(ntt, -1, 1);
    emb_ctx ctx = { f2d(wte, nte), f2d(wpe, npe), f2d(wtt, ntt), ids, types, B, T, C, pos0 };
    double *ref = dalloc(no);
    float *out = falloc(no);

    ref_embeddings(&ctx, ref);
    embeddings_forward(out, ids, types, wte, wpe, wtt, B, T, C, pos0);
    CHECK(rel_err(out, ref, no) <= FWD_TOL, "embeddings_forward: err %g", rel_err(out, ref, no));

    emb_ctx nt = ctx; nt.types = NULL;
    ref_embeddings(&nt, ref);
    embeddings_forward(out, ids, NULL, wte, wpe, wtt, B, T, C, pos0);
    CHECK(rel_err(out, ref, no) <= FWD_TOL, "embeddings_forward type_ids NULL: err %g", rel_err(out, ref, no));

    emb_ctx np = ctx; np.wpe = NULL; np.wtt = NULL;
    ref_embeddings(&np, ref);
    embeddings_forward(out, ids, types, wte, NULL, NULL, B, T, C, pos0);
    CHECK(rel_err(out, ref, no) <= FWD_TOL, "embeddings_forward wpe, wtt NULL: err %g", rel_err(out, ref, no));

    float *R = frand(no, -1, 1);
    double *Rd = f2d(R, no);
    double *gte = dalloc(nte), *gpe = dalloc(npe), *gtt = dalloc(ntt);
    fd_grad(ref_embeddings, &ctx, ctx.wte, nte, Rd, no, gte);
    fd_grad(ref_embeddings, &ctx, ctx.wpe, npe, Rd, no, gpe);
    fd_grad(ref_embeddings, &ctx, ctx.wtt, ntt, Rd, no, gtt);

    float *te0 = frand(nte, -.1f, .1f), *pe0 = frand(npe, -.1f, .1f), *tt0 = frand(ntt, -.1f, .1f);
    float *te = fcopy(te0, nte), *pe = fcopy(pe0, npe), *tt = fcopy(tt0, ntt);
    embeddings_backward(te, pe, tt, R, ids, types, B, T, C, pos0);
    CHECK(grad_err(te, te0, gte, nte) <= GRAD_TOL, "embeddings_backward dwte vs FD: err %g", grad_err(te, te0, gte, nte));
    CHECK(grad_err(pe, pe0, gpe, npe) <= GRAD_TOL, "embeddings_backward dwpe vs FD: err %g", grad_err(pe, pe0, gpe, npe));
    CHECK(grad_err(tt, tt0, gtt, ntt) <= GRAD_TOL, "embeddings_backward dwtt vs FD: err %g", grad_err(tt, tt0, gtt, ntt));

    float *te2 = fcopy(te, nte), *pe2 = fcopy(pe, npe), *tt2 = fcopy(tt, ntt);
    embeddings_backward(te2, pe2, tt2, R, ids, types, B, T, C, pos0);
    CHECK(accum_err(te2, te, te0, nte) <= 1e-5 && accum_err(pe2, pe, pe0, npe) <= 1e-5 &&
          accum_err(tt2, tt, tt0, ntt) <= 1e-5, "embeddings_backward accumulates");

    float *a = fcopy(te0, nte), *b = fcopy(pe0, npe), *c = fcopy(tt0, ntt);
    embeddings_backward(a, NULL, NULL, R, ids, types, B, T, C, pos0);
    embeddings_backward(NULL, b, NULL, R, ids, types, B, T, C, pos0);
    embeddings_backward(NULL, NULL, c, R, ids, types, B, T, C, pos0);
    embeddings_backward(NULL, NULL, NULL, R, ids, types, B, T, C, pos0);
    CHECK(same_bits(a, te, nte) && same_bits(b, pe, npe) && same_bits(c, tt, ntt),
          "embeddings_backward: each gradient alone (others NULL) matches");

    /* type_ids NULL: everything lands in row 0 of dwtt */
    fd_grad(ref_embeddings, &nt, nt.wtt, ntt, Rd, no, gtt);
    memcpy(c, tt0, ntt * sizeof(float));
    embeddings_backward(NULL, NULL, c, R, ids, NULL, B, T, C, pos0);
    CHECK(grad_err(c, tt0, gtt, ntt) <= GRAD_TOL && same_bits(c + C, tt0 + C, (size_t)C),
          "embeddings_backward type_ids NULL: dwtt row 0 only, err %g", grad_err(c, tt0, gtt, ntt));

    free(wte); free(wpe); free(wtt); free(ctx.wte); free(ctx.wpe); free(ctx.wtt);
    free(ref); free(out); free(R); free(Rd); free(gte); free(gpe); free(gtt);
    free(te0); free(pe0); free(tt0); free(te); free(pe); free(tt);
    free(te2); free(pe2); free(tt2); free(a); free(b); free(c);
}

/* --------------------------------------------------------------- layernorm */

typedef struct { double *inp, *w, *b; int N, C; double eps; double *mean, *rstd; } ln_ctx;

static void ref_layernorm(void *vctx, double *out)
{
    ln_ctx *l = vctx;
    for (int n = 0; n < l->N; n++) {
        const double *x = l->inp + n * l->C;
        double m = 0, v = 0;
        for (int c = 0; c < l->C; c++) m += x[c];
        m /= l->C;
        for (int c = 0; c < l->C; c++) v += (x[c] - m) * (x[c] - m);
        v /= l->C;
        double rs = 1 / sqrt(v + l->eps);
        if (l->mean) { l->mean[n] = m; l->rstd[n] = rs; }
        for (int c = 0; c < l->C; c++) out[n * l->C + c] = (x[c] - m) * rs * l->w[c] + l->b[c];
    }
}

static void test_layernorm(void)
{
    const int N = 7, C = 37;
    const float eps = 1e-5f;
    size_t nx = (size_t)N * C;
    float *inp = frand(nx, -1, 1), *w = frand(C, 0.5f, 1.5f), *bb = frand(C, -1, 1);
    for (size_t i = 0; i < nx; i++) inp[i] += 3.0f;   /* |mean| > std, as in residual streams */
    double *rm = dalloc(N), *rr = dalloc(N);
    ln_ctx ctx = { f2d(inp, nx), f2d(w, C), f2d(bb, C), N, C, eps, rm, rr };
    double *ref = dalloc(nx);
    ref_layernorm(&ctx, ref);
    ctx.mean = ctx.rstd = NULL;

    float *out = falloc(nx), *mean = falloc(N), *rstd = falloc(N);
    layernorm_forward(out, mean, rstd, inp, w, bb, N, C, eps);
    CHECK(rel_err(out, ref, nx) <= 1e-5, "layernorm_forward out: err %g", rel_err(out, ref, nx));
    CHECK(rel_err(mean, rm, N) <= FWD_TOL && rel_err(rstd, rr, N) <= FWD_TOL,
          "layernorm_forward mean/rstd: err %g %g", rel_err(mean, rm, N), rel_err(rstd, rr, N));

    float *R = frand(nx, -1, 1);
    double *Rd = f2d(R, nx);
    double *gi = dalloc(nx), *gw = dalloc(C), *gb = dalloc(C);
    fd_grad(ref_layernorm, &ctx, ctx.inp, nx, Rd, nx, gi);
    fd_grad(ref_layernorm, &ctx, ctx.w, C, Rd, nx, gw);
    fd_grad(ref_layernorm, &ctx, ctx.b, C, Rd, nx, gb);

    float *di0 = frand(nx, -.1f, .1f), *dw0 = frand(C, -.1f, .1f), *db0 = frand(C, -.1f, .1f);
    float *di = fcopy(di0, nx), *dw = fcopy(dw0, C), *db = fcopy(db0, C);
    layernorm_backward(di, dw, db, R, inp, w, mean, rstd, N, C, 1);
    CHECK(grad_err(di, di0, gi, nx) <= GRAD_TOL, "layernorm_backward dinp vs FD: err %g", grad_err(di, di0, gi, nx));
    CHECK(grad_err(dw, dw0, gw, C) <= GRAD_TOL, "layernorm_backward dw vs FD: err %g", grad_err(dw, dw0, gw, C));
    CHECK(grad_err(db, db0, gb, C) <= GRAD_TOL, "layernorm_backward db vs FD: err %g", grad_err(db, db0, gb, C));

    float *di2 = fcopy(di, nx), *dw2 = fcopy(dw, C), *db2 = fcopy(db, C);
    layernorm_backward(di2, dw2, db2, R, inp, w, mean, rstd, N, C, 1);
    CHECK(accum_err(di2, di, di0, nx) <= 1e-5 && accum_err(dw2, dw, dw0, C) <= 1e-5 &&
          accum_err(db2, db, db0, C) <= 1e-5, "layernorm_backward accumulates");

    float *a = fcopy(di0, nx), *b = fcopy(dw0, C), *c = fcopy(db0, C);
    layernorm_backward(a, NULL, NULL, R, inp, w, mean, rstd, N, C, 1);
    layernorm_backward(NULL, b, NULL, R, inp, w, mean, rstd, N, C, 1);
    layernorm_backward(NULL, NULL, c, R, inp, w, mean, rstd, N, C, 1);
    layernorm_backward(NULL, NULL, NULL, R, inp, w, mean, rstd, N, C, 1);
    CHECK(same_bits(a, di, nx) && same_bits(b, dw, C) && same_bits(c, db, C),
          "layernorm_backward: each gradient alone (others NULL) matches");

    /* accumulate 0 overwrites: the same bits as accumulating into zeros */
    float *zs = calloc(nx, sizeof(float)), *ov = frand(nx, -5, 5);
    layernorm_backward(zs, NULL, NULL, R, inp, w, mean, rstd, N, C, 1);
    layernorm_backward(ov, NULL, NULL, R, inp, w, mean, rstd, N, C, 0);
    CHECK(same_bits(ov, zs, nx), "layernorm_backward accumulate 0 = into zeros");
    /* layernorm_apply reproduces the forward output from mean/rstd bit for bit */
    float *ap = frand(nx, -5, 5);
    layernorm_apply(ap, inp, mean, rstd, w, bb, N, C);
    CHECK(same_bits(ap, out, nx), "layernorm_apply = layernorm_forward's output, bit for bit");
    {   /* large enough to run in parallel */
        const int N2 = 301, C2 = 384;
        size_t n2 = (size_t)N2 * C2;
        float *x2 = frand(n2, -2, 4), *o2 = falloc(n2), *m2 = falloc(N2), *r2 = falloc(N2), *a2 = falloc(n2);
        float *w2 = frand(C2, 0.5f, 1.5f), *b2 = frand(C2, -1, 1);
        layernorm_forward(o2, m2, r2, x2, w2, b2, N2, C2, eps);
        layernorm_apply(a2, x2, m2, r2, w2, b2, N2, C2);
        CHECK(same_bits(a2, o2, n2), "layernorm_apply = layernorm_forward (N %d, C %d, parallel)", N2, C2);
        free(x2); free(o2); free(m2); free(r2); free(a2); free(w2); free(b2);
    }
    free(zs); free(ov); free(ap);

    free(inp); free(w); free(bb); free(rm); free(rr); free(ctx.inp); free(ctx.w); free(ctx.b);
    free(ref); free(out); free(mean); free(rstd); free(R); free(Rd); free(gi); free(gw); free(gb);
    free(di0); free(dw0); free(db0); free(di); free(dw); free(db); free(di2); free(dw2); free(db2);
    free(a); free(b); free(c);
}

/* ------------------------------------------------------------- activations */

enum { ACT_GELU, ACT_TANH, ACT_RELU, ACT_SILU, N_ACT };
static const char *act_name[N_ACT] = { "gelu", "tanh", "relu", "silu" };
typedef struct { double *x; size_t n; int kind; } act_ctx;

static void ref_act(void *vctx, double *out)
{
    act_ctx *a = vctx;
    for (size_t i = 0; i < a->n; i++) {
        double x = a->x[i];
        switch (a->kind) {
        case ACT_GELU: out[i] = 0.5 * x * (1 + erf(x / sqrt(2.0))); break;
        case ACT_TANH: out[i] = tanh(x); break;
        case ACT_RELU: out[i] = x > 0 ? x : 0; break;
        default: out[i] = x / (1 + exp(-x)); break;
        }
    }
}

static void act_fwd(int kind, float *out, const float *x, size_t n)
{
    switch (kind) {
    case ACT_GELU: gelu_forward(out, x, n); break;
    case ACT_TANH: tanh_forward(out, x, n); break;
    case ACT_RELU: relu_forward(out, x, n); break;
    default: silu_forward(out, x, n); break;
    }
}

/* tanh_backward takes the forward output, the others the input */
static void act_bwd(int kind, float *dinp, const float *x, const float *y, const float *dout, size_t n)
{
    switch (kind) {
    case ACT_GELU: gelu_backward(dinp, x, dout, n); break;
    case ACT_TANH: tanh_backward(dinp, y, dout, n); break;
    case ACT_RELU: relu_backward(dinp, x, dout, n); break;
    default: silu_backward(dinp, x, dout, n); break;
    }
}

/* GELU forward and backward on a dense grid of [-10, 10] against double:
 * within 1e-6 absolute (the vectorised erf / exp of kernels.h replace libm's) */
static void test_gelu_dense(void)
{
    const size_t n = 2000001;
    float *x = falloc(n), *y = falloc(n), *g = falloc(n), *one = falloc(n);
    for (size_t i = 0; i < n; i++) { x[i] = -10.0f + 20.0f * (float)i / (float)(n - 1); one[i] = 1.0f; }
    gelu_forward(y, x, n);
    gelu_backward(g, x, one, n);
    double ef = 0, eb = 0;
    float af = 0, ab = 0;
    for (size_t i = 0; i < n; i++) {
        double xd = x[i], cdf = 0.5 * (1 + erf(xd / sqrt(2.0)));
        double rf = xd * cdf, rb = cdf + xd * exp(-0.5 * xd * xd) / sqrt(2 * M_PI);
        if (!(fabs(y[i] - rf) <= ef)) { ef = fabs(y[i] - rf); af = x[i]; }
        if (!(fabs(g[i] - rb) <= eb)) { eb = fabs(g[i] - rb); ab = x[i]; }
    }
    CHECK(ef <= 1e-6 && eb <= 1e-6, "gelu on a dense grid of [-10,10]: max abs err fwd %.3g (x=%g), bwd %.3g (x=%g)",
          ef, af, eb, ab);
    /* a NaN stays NaN (so a diverging run shows), +inf passes */
    float sv[2] = { NAN, INFINITY }, so[2], sg[2] = { 0, 0 }, s1[2] = { 1, 1 };
    gelu_forward(so, sv, 2);
    gelu_backward(sg, sv, s1, 2);
    CHECK(isnan(so[0]) && so[1] == INFINITY && isnan(sg[0]), "gelu: f(NaN) = NaN, f(inf) = inf, f'(NaN) = NaN");
    free(x); free(y); free(g); free(one);
}

static void test_activations(void)
{
    const size_t n = 1001;
    float *x = frand(n, -5, 5);
    x[0] = 0; x[1] = -0.0f; x[2] = 8; x[3] = -8; x[4] = 1e-3f; x[5] = -1e-3f;
    for (int kind = 0; kind < N_ACT; kind++) {
        const char *name = act_name[kind];
        act_ctx ctx = { f2d(x, n), n, kind };
        double *ref = dalloc(n);
        ref_act(&ctx, ref);
        float *out = falloc(n);
        act_fwd(kind, out, x, n);
        CHECK(rel_err(out, ref, n) <= FWD_TOL, "%s_forward: err %g", name, rel_err(out, ref, n));

        float *R = frand(n, -1, 1);
        double *Rd = f2d(R, n), *g = dalloc(n);
        fd_grad(ref_act, &ctx, ctx.x, n, Rd, n, g);
        if (kind == ACT_RELU) g[0] = g[1] = 0;   /* kink at 0: derivative taken as 0 (PyTorch) */
        float *d0 = frand(n, -.1f, .1f), *d = fcopy(d0, n);
        act_bwd(kind, d, x, out, R, n);
        CHECK(grad_err(d, d0, g, n) <= GRAD_TOL, "%s_backward vs FD: err %g", name, grad_err(d, d0, g, n));
        float *d2 = fcopy(d, n);
        act_bwd(kind, d2, x, out, R, n);
        CHECK(accum_err(d2, d, d0, n) <= 1e-5, "%s_backward accumulates", name);
        if (kind == ACT_GELU || kind == ACT_TANH) {
            act_bwd(kind, NULL, x, out, R, n);
            CHECK(1, "%s_backward with NULL dinp is a no-op", name);
        }
        if (kind == ACT_GELU) {   /* replacing: R * gelu'(x), what gelu_backward adds to zeros */
            float *z = falloc(n), *ip = fcopy(R, n);
            gelu_backward(z, x, R, n);
            gelu_backward_inplace(ip, x, n);
            CHECK(tl_max_abs_diff(ip, z, n) == 0, "gelu_backward_inplace = gelu_backward into zeros");
            free(z); free(ip);
        }

        /* in place: out == inp is how the model may call it */
        float *y = fcopy(x, n);
        act_fwd(kind, y, y, n);
        CHECK(same_bits(y, out, n), "%s_forward in place", name);
        free(ctx.x); free(ref); free(out); free(R); free(Rd); free(g); free(d0); free(d); free(d2); free(y);
    }
    free(x);
}

/* --------------------------------------------------------------- attention */

/* k, v (B,P+T,C) with P prefix keys every query attends (P = 0: plain
 * self-attention); mask (B,NH,T,P+T) NULL without dropout, else the weights
 * are probs * mask * invk */
typedef struct {
    double *q, *k, *v; const int *lens; int B, T, P, C, NH;
    const uint8_t *mask; double invk;
} att_ctx;

static int clamp_len(const int *lens, int b, int T)
{
    int L = lens ? lens[b] : T;
    return L < 0 ? 0 : L > T ? T : L;
}

/* out (B,T,C), probs (B,NH,T,P+T) or NULL */
static void ref_attention_full(const att_ctx *a, double *out, double *probs)
{
    int B = a->B, T = a->T, P = a->P, Tk = P + T, C = a->C, NH = a->NH, hd = C / NH;
    double sc = 1 / sqrt((double)hd);
    double *p = dalloc(Tk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int L = P + clamp_len(a->lens, b, T);
                const double *qt = a->q + ((size_t)b * T + t) * C + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < L; j++) {
                    const double *kj = a->k + ((size_t)b * Tk + j) * C + h * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += qt[d] * kj[d];
                    p[j] = s * sc;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < L; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                for (int j = 0; j < Tk; j++) p[j] = j < L ? p[j] / sum : 0;
                size_t row = (((size_t)b * NH + h) * T + t) * Tk;
                if (probs) memcpy(probs + row, p, Tk * sizeof(double));
                double *o = out + ((size_t)b * T + t) * C + h * hd;
                for (int d = 0; d < hd; d++) {
                    double s = 0;
                    for (int j = 0; j < L; j++) {
                        double wj = a->mask ? p[j] * a->mask[row + j] * a->invk : p[j];
                        s += wj * a->v[((size_t)b * Tk + j) * C + h * hd + d];
                    }
                    o[d] = s;
                }
            }
    free(p);
}
static void ref_attention(void *vctx, double *out) { ref_attention_full(vctx, out, NULL); }

/* analytic double backward (used where FD would be too slow); overwrites dq
 * (B,T,C), dk and dv (B,P+T,C) */
static void ref_attention_backward(const att_ctx *a, const double *dout,
                                   double *dq, double *dk, double *dv)
{
    int B = a->B, T = a->T, Tk = a->P + T, C = a->C, NH = a->NH, hd = C / NH;
    size_t n = (size_t)B * T * C, nk = (size_t)B * Tk * C;
    double sc = 1 / sqrt((double)hd);
    double *out = dalloc(n), *probs = dalloc((size_t)B * NH * T * Tk), *dp = dalloc(Tk);
    ref_attention_full(a, out, probs);
    memset(dq, 0, n * sizeof(double)); memset(dk, 0, nk * sizeof(double)); memset(dv, 0, nk * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                size_t row = (((size_t)b * NH + h) * T + t) * Tk;
                const double *p = probs + row;
                size_t rt = ((size_t)b * T + t) * C + h * hd;
                double D = 0;
                for (int j = 0; j < Tk; j++) {
                    size_t rj = ((size_t)b * Tk + j) * C + h * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += dout[rt + d] * a->v[rj + d];
                    dp[j] = a->mask ? s * a->mask[row + j] * a->invk : s;   /* dL/dP */
                    D += p[j] * dp[j];
                }
                for (int j = 0; j < Tk; j++) {
                    size_t rj = ((size_t)b * Tk + j) * C + h * hd;
                    double ds = p[j] * (dp[j] - D) * sc;
                    double wj = a->mask ? p[j] * a->mask[row + j] * a->invk : p[j];
                    for (int d = 0; d < hd; d++) {
                        dq[rt + d] += ds * a->k[rj + d];
                        dk[rj + d] += ds * a->q[rt + d];
                        dv[rj + d] += wj * dout[rt + d];
                    }
                }
            }
    free(out); free(probs); free(dp);
}

/* The kernel under test: the prefix entry points if prefix (any P), else the
 * plain / train ones (P must be 0). mask NULL: no dropout. */
static void att_fwd(int prefix, float *out, float *probs, uint8_t *mask, const float *q, const float *k,
                    const float *v, const int *lens, int B, int T, int P, int C, int NH, float p, uint64_t seed)
{
    if (prefix) attention_forward_prefix(out, probs, mask, q, k, v, lens, B, T, P, C, NH, mask ? p : 0.0f, seed);
    else if (mask) attention_forward_train(out, probs, mask, q, k, v, lens, B, T, C, NH, p, seed);
    else attention_forward(out, probs, q, k, v, lens, B, T, C, NH);
}
static void att_bwd(int prefix, float *dq, float *dk, float *dv, const float *dout, const float *probs,
                    const uint8_t *mask, const float *q, const float *k, const float *v, const int *lens,
                    int B, int T, int P, int C, int NH, float p)
{
    if (prefix)
        attention_backward_prefix(dq, dk, dv, dout, probs, mask, q, k, v, lens, B, T, P, C, NH, mask ? p : 0.0f);
    else if (mask) attention_backward_train(dq, dk, dv, dout, probs, mask, q, k, v, lens, B, T, C, NH, p);
    else attention_backward(dq, dk, dv, dout, probs, q, k, v, lens, B, T, C, NH);
}

/* kernel forward+backward on random data against the double reference
 * (forward, probs and analytic backward), plus the NULL-gradient check;
 * P > 0 (or prefix) goes through the prefix entry points */
static void attention_vs_ref(const char *name, int B, int T, int P, int NH, int hd, const int *lens,
                             float pdrop, int prefix)
{
    int C = NH * hd, Tk = P + T;
    prefix = prefix || P > 0;
    size_t n = (size_t)B * T * C, nk = (size_t)B * Tk * C, np = (size_t)B * NH * T * Tk;
    float *q = frand(n, -1, 1), *k = frand(nk, -1, 1), *v = frand(nk, -1, 1), *R = frand(n, -1, 1);
    uint8_t *mask = pdrop > 0 ? xcalloc(np, 1) : NULL;
    float *out = falloc(n), *probs = falloc(np);
    att_fwd(prefix, out, probs, mask, q, k, v, lens, B, T, P, C, NH, pdrop, 77);
    att_ctx ctx = { f2d(q, n), f2d(k, nk), f2d(v, nk), lens, B, T, P, C, NH, mask, 1.0 / (1.0 - pdrop) };
    double *ro = dalloc(n), *rp = dalloc(np), *gq = dalloc(n), *gk = dalloc(nk), *gv = dalloc(nk);
    double *Rd = f2d(R, n);
    ref_attention_full(&ctx, ro, rp);
    ref_attention_backward(&ctx, Rd, gq, gk, gv);
    CHECK(rel_err(out, ro, n) <= 1e-5 && rel_err(probs, rp, np) <= 1e-5,
          "%s: forward out err %g, probs err %g", name, rel_err(out, ro, n), rel_err(probs, rp, np));
    float *z = falloc(nk), *dq = falloc(n), *dk = falloc(nk), *dv = falloc(nk);
    att_bwd(prefix, dq, dk, dv, R, probs, mask, q, k, v, lens, B, T, P, C, NH, pdrop);
    CHECK(grad_err(dq, z, gq, n) <= GRAD_TOL && grad_err(dk, z, gk, nk) <= GRAD_TOL &&
          grad_err(dv, z, gv, nk) <= GRAD_TOL, "%s: backward vs double reference: err dq %g dk %g dv %g",
          name, grad_err(dq, z, gq, n), grad_err(dk, z, gk, nk), grad_err(dv, z, gv, nk));
    float *a = falloc(n), *b = falloc(nk), *c = falloc(nk);
    att_bwd(prefix, a, NULL, NULL, R, probs, mask, q, k, v, lens, B, T, P, C, NH, pdrop);
    att_bwd(prefix, NULL, b, NULL, R, probs, mask, q, k, v, lens, B, T, P, C, NH, pdrop);
    att_bwd(prefix, NULL, NULL, c, R, probs, mask, q, k, v, lens, B, T, P, C, NH, pdrop);
    CHECK(same_bits(a, dq, n) && same_bits(b, dk, nk) && same_bits(c, dv, nk),
          "%s: each gradient alone (others NULL) matches", name);
    free(mask); free(q); free(k); free(v); free(R); free(ctx.q); free(ctx.k); free(ctx.v);
    free(ro); free(rp); free(gq); free(gk); free(gv); free(Rd); free(out); free(probs);
    free(z); free(dq); free(dk); free(dv); free(a); free(b); free(c);
}

static void test_attention(void)
{
    const int B = 4, T = 7, NH = 2, hd = 5, C = NH * hd;
    const int lens[4] = { 7, 4, 1, 0 };
    size_t n = (size_t)B * T * C, np = (size_t)B * NH * T * T;
    float *q = frand(n, -1.5f, 1.5f), *k = frand(n, -1.5f, 1.5f), *v = frand(n, -1, 1);
    att_ctx ctx = { f2d(q, n), f2d(k, n), f2d(v, n), lens, B, T, 0, C, NH, NULL, 1 };
    double *ro = dalloc(n), *rp = dalloc(np);
    ref_attention_full(&ctx, ro, rp);

    float *out = falloc(n), *probs = falloc(np);
    for (size_t i = 0; i < np; i++) probs[i] = NAN;   /* every entry must be written */
    attention_forward(out, probs, q, k, v, lens, B, T, C, NH);
    CHECK(rel_err(out, ro, n) <= 1e-5, "attention_forward out: err %g", rel_err(out, ro, n));
    CHECK(rel_err(probs, rp, np) <= 1e-5, "attention_forward probs: err %g", rel_err(probs, rp, np));

    int masked_zero = 1, rows_ok = 1;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *p = probs + (((size_t)b * NH + h) * T + t) * T;
                double s = 0;
                for (int j = 0; j < T; j++) {
                    if (j >= lens[b] && p[j] != 0.0f) masked_zero = 0;
                    s += p[j];
                }
                if (fabs(s - (lens[b] > 0 ? 1.0 : 0.0)) > 1e-5) rows_ok = 0;
            }
    CHECK(masked_zero, "attention_forward: probs of keys >= lens[b] are exactly 0");
    CHECK(rows_ok, "attention_forward: prob rows sum to 1 (0 for an empty sequence), padded queries too");

    float *R = frand(n, -1, 1);
    double *Rd = f2d(R, n), *gq = dalloc(n), *gk = dalloc(n), *gv = dalloc(n);
    fd_grad(ref_attention, &ctx, ctx.q, n, Rd, n, gq);
    fd_grad(ref_attention, &ctx, ctx.k, n, Rd, n, gk);
    fd_grad(ref_attention, &ctx, ctx.v, n, Rd, n, gv);
    float *dq0 = frand(n, -.1f, .1f), *dk0 = frand(n, -.1f, .1f), *dv0 = frand(n, -.1f, .1f);
    float *dq = fcopy(dq0, n), *dk = fcopy(dk0, n), *dv = fcopy(dv0, n);
    attention_backward(dq, dk, dv, R, probs, q, k, v, lens, B, T, C, NH);
    CHECK(grad_err(dq, dq0, gq, n) <= GRAD_TOL, "attention_backward dq vs FD: err %g", grad_err(dq, dq0, gq, n));
    CHECK(grad_err(dk, dk0, gk, n) <= GRAD_TOL, "attention_backward dk vs FD: err %g", grad_err(dk, dk0, gk, n));
    CHECK(grad_err(dv, dv0, gv, n) <= GRAD_TOL, "attention_backward dv vs FD: err %g", grad_err(dv, dv0, gv, n));

    /* the analytic reference used for the big cases agrees with FD too */
    double *aq = dalloc(n), *ak = dalloc(n), *av = dalloc(n);
    ref_attention_backward(&ctx, Rd, aq, ak, av);
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(aq[i] - gq[i])); m = fmax(m, fabs(ak[i] - gk[i])); m = fmax(m, fabs(av[i] - gv[i]));
    }
    CHECK(m <= 1e-7, "reference attention backward agrees with FD: %g", m);

    float *dq2 = fcopy(dq, n), *dk2 = fcopy(dk, n), *dv2 = fcopy(dv, n);
    attention_backward(dq2, dk2, dv2, R, probs, q, k, v, lens, B, T, C, NH);
    CHECK(accum_err(dq2, dq, dq0, n) <= 1e-5 && accum_err(dk2, dk, dk0, n) <= 1e-5 &&
          accum_err(dv2, dv, dv0, n) <= 1e-5, "attention_backward accumulates");

    float *a = fcopy(dq0, n), *b = fcopy(dk0, n), *c = fcopy(dv0, n);
    attention_backward(a, NULL, NULL, R, probs, q, k, v, lens, B, T, C, NH);
    attention_backward(NULL, b, NULL, R, probs, q, k, v, lens, B, T, C, NH);
    attention_backward(NULL, NULL, c, R, probs, q, k, v, lens, B, T, C, NH);
    attention_backward(NULL, NULL, NULL, R, probs, q, k, v, lens, B, T, C, NH);
    CHECK(same_bits(a, dq, n) && same_bits(b, dk, n) && same_bits(c, dv, n),
          "attention_backward: each gradient alone (others NULL) matches");

    /* lens NULL means no padding */
    int full[4] = { T, T, T, T };
    float *o1 = falloc(n), *p1 = falloc(np);
    attention_forward(o1, p1, q, k, v, NULL, B, T, C, NH);
    attention_forward(out, probs, q, k, v, full, B, T, C, NH);
    CHECK(same_bits(o1, out, n) && same_bits(p1, probs, np), "attention_forward lens NULL = full lengths");

    /* realistic head size with a tail, and the long-sequence backward path
     * (more keys than the kernel keeps dP for on the stack) */
    const int lens2[2] = { 40, 23 };
    attention_vs_ref("attention hd=33 T=40", 2, 40, 0, 3, 33, lens2, 0.0f, 0);
    attention_vs_ref("attention_train p=0.2 hd=33 T=40", 2, 40, 0, 3, 33, lens2, 0.2f, 0);
    const int lens3[3] = { 1100, 512, 513 };   /* either side of the kernel's stack bound */
    attention_vs_ref("attention T=1100 lens 1100/512/513 (both backward paths)", 3, 1100, 0, 2, 3, lens3, 0.0f, 0);
    attention_vs_ref("attention_train p=0.1 T=1100 (both backward paths)", 3, 1100, 0, 2, 3, lens3, 0.1f, 0);
    /* BERT's head size at T = 64 (whole-vector rows, full micro-kernel
     * panels) with padded lengths on and off the 16-lane grid; and T = 300,
     * where the blocked passes take the queries in several blocks */
    const int lens4[3] = { 64, 40, 17 };
    attention_vs_ref("attention hd=32 T=64 lens 64/40/17", 3, 64, 0, 2, 32, lens4, 0.0f, 0);
    attention_vs_ref("attention_train p=0.1 hd=32 T=64 lens 64/40/17", 3, 64, 0, 2, 32, lens4, 0.1f, 0);
    const int lens5[2] = { 300, 161 };
    attention_vs_ref("attention hd=16 T=300 (query blocks)", 2, 300, 0, 2, 16, lens5, 0.0f, 0);
    attention_vs_ref("attention_train p=0.3 hd=16 T=300 (query blocks)", 2, 300, 0, 2, 16, lens5, 0.3f, 0);

    free(q); free(k); free(v); free(ctx.q); free(ctx.k); free(ctx.v); free(ro); free(rp);
    free(out); free(probs); free(R); free(Rd); free(gq); free(gk); free(gv);
    free(dq0); free(dk0); free(dv0); free(dq); free(dk); free(dv); free(aq); free(ak); free(av);
    free(dq2); free(dk2); free(dv2); free(a); free(b); free(c); free(o1); free(p1);
}


static void test_attention_train(void)
{
    const int B = 3, T = 7, NH = 2, hd = 5, C = NH * hd;
    const int lens[3] = { 7, 5, 2 };
    const float p = 0.25f;
    const uint64_t seed = 0xABCDEF12345ull;
    size_t n = (size_t)B * T * C, np = (size_t)B * NH * T * T;
    float *q = frand(n, -1.5f, 1.5f), *k = frand(n, -1.5f, 1.5f), *v = frand(n, -1, 1);
    float *out = falloc(n), *probs = falloc(np), *out0 = falloc(n), *probs0 = falloc(np);
    uint8_t *mask = xcalloc(np, 1);
    memset(mask, 9, np);
    attention_forward_train(out, probs, mask, q, k, v, lens, B, T, C, NH, p, seed);
    attention_forward(out0, probs0, q, k, v, lens, B, T, C, NH);
    CHECK(same_bits(probs, probs0, np), "attention_forward_train: probs are the undropped probabilities");

    /* mask element i is the i-th sequential draw of a peftc_rng with state = seed */
    peftc_rng r = { seed };
    int seq_ok = 1, kept = 0, total = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int j = 0; j < T; j++) {
                    size_t i = (((size_t)b * NH + h) * T + t) * T + j;
                    uint8_t want = peftc_rng_uniform(&r) >= p;
                    if (j >= lens[b]) want = 0;
                    if (mask[i] != want) seq_ok = 0;
                    if (j < lens[b]) { kept += mask[i]; total++; }
                }
    CHECK(seq_ok, "attention_forward_train: mask = counter-based draws keyed by seed (0 on padded keys)");

    att_ctx ctx = { f2d(q, n), f2d(k, n), f2d(v, n), lens, B, T, 0, C, NH, mask, 1.0 / (1.0 - p) };
    double *ro = dalloc(n);
    ref_attention(&ctx, ro);
    CHECK(rel_err(out, ro, n) <= 1e-5, "attention_forward_train out = (probs*mask/(1-p)) v: err %g (kept %d/%d)",
          rel_err(out, ro, n), kept, total);

    float *R = frand(n, -1, 1);
    double *Rd = f2d(R, n), *gq = dalloc(n), *gk = dalloc(n), *gv = dalloc(n);
    fd_grad(ref_attention, &ctx, ctx.q, n, Rd, n, gq);
    fd_grad(ref_attention, &ctx, ctx.k, n, Rd, n, gk);
    fd_grad(ref_attention, &ctx, ctx.v, n, Rd, n, gv);
    float *dq0 = frand(n, -.1f, .1f), *dk0 = frand(n, -.1f, .1f), *dv0 = frand(n, -.1f, .1f);
    float *dq = fcopy(dq0, n), *dk = fcopy(dk0, n), *dv = fcopy(dv0, n);
    attention_backward_train(dq, dk, dv, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    CHECK(grad_err(dq, dq0, gq, n) <= GRAD_TOL, "attention_backward_train dq vs FD: err %g", grad_err(dq, dq0, gq, n));
    CHECK(grad_err(dk, dk0, gk, n) <= GRAD_TOL, "attention_backward_train dk vs FD: err %g", grad_err(dk, dk0, gk, n));
    CHECK(grad_err(dv, dv0, gv, n) <= GRAD_TOL, "attention_backward_train dv vs FD: err %g", grad_err(dv, dv0, gv, n));

    float *dq2 = fcopy(dq, n), *dk2 = fcopy(dk, n), *dv2 = fcopy(dv, n);
    attention_backward_train(dq2, dk2, dv2, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    CHECK(accum_err(dq2, dq, dq0, n) <= 1e-5 && accum_err(dk2, dk, dk0, n) <= 1e-5 &&
          accum_err(dv2, dv, dv0, n) <= 1e-5, "attention_backward_train accumulates");
    float *a = fcopy(dq0, n), *b = fcopy(dk0, n), *c = fcopy(dv0, n);
    attention_backward_train(a, NULL, NULL, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    attention_backward_train(NULL, b, NULL, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    attention_backward_train(NULL, NULL, c, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    attention_backward_train(NULL, NULL, NULL, R, probs, mask, q, k, v, lens, B, T, C, NH, p);
    CHECK(same_bits(a, dq, n) && same_bits(b, dk, n) && same_bits(c, dv, n),
          "attention_backward_train: each gradient alone (others NULL) matches");

    /* p = 0 is plain attention */
    attention_forward_train(out, probs, mask, q, k, v, lens, B, T, C, NH, 0.0f, seed);
    int ones = 1;
    for (int b_ = 0; b_ < B; b_++)
        for (size_t i = 0; i < (size_t)NH * T * T; i++)
            if (mask[(size_t)b_ * NH * T * T + i] != ((int)(i % T) < lens[b_])) ones = 0;
    CHECK(same_bits(out, out0, n) && same_bits(probs, probs0, np) && ones,
          "attention_forward_train p=0 = attention_forward, mask 1 on real keys");
    memcpy(a, dq0, n * sizeof(float)); memcpy(b, dk0, n * sizeof(float)); memcpy(c, dv0, n * sizeof(float));
    memcpy(dq, dq0, n * sizeof(float)); memcpy(dk, dk0, n * sizeof(float)); memcpy(dv, dv0, n * sizeof(float));
    memset(mask, 0, np);   /* at p = 0 the mask is not consulted */
    attention_backward_train(a, b, c, R, probs, mask, q, k, v, lens, B, T, C, NH, 0.0f);
    attention_backward(dq, dk, dv, R, probs, q, k, v, lens, B, T, C, NH);
    CHECK(same_bits(a, dq, n) && same_bits(b, dk, n) && same_bits(c, dv, n),
          "attention_backward_train p=0 = attention_backward (mask ignored)");

    /* keep rate over a bigger draw */
    {
        const int B2 = 1, T2 = 128, NH2 = 2, C2 = 8;
        size_t n2 = (size_t)B2 * T2 * C2, np2 = (size_t)B2 * NH2 * T2 * T2;
        float *x = frand(n2, -1, 1), *o2 = falloc(n2), *p2 = falloc(np2);
        uint8_t *m2 = xcalloc(np2, 1);
        attention_forward_train(o2, p2, m2, x, x, x, NULL, B2, T2, C2, NH2, 0.25f, 5);
        size_t kk = 0;
        for (size_t i = 0; i < np2; i++) kk += m2[i];
        double frac = (double)kk / np2;
        CHECK(fabs(frac - 0.75) < 0.02, "attention_forward_train: kept fraction %.4f ~ 1-p", frac);
        free(x); free(o2); free(p2); free(m2);
    }

    free(q); free(k); free(v); free(out); free(probs); free(out0); free(probs0); free(mask);
    free(ctx.q); free(ctx.k); free(ctx.v); free(ro); free(R); free(Rd); free(gq); free(gk); free(gv);
    free(dq0); free(dk0); free(dv0); free(dq); free(dk); free(dv); free(dq2); free(dk2); free(dv2);
    free(a); free(b); free(c);
}

/* Attention with a prefix (prefix tuning, P-tuning v2, MAM, UniPELT): k and v
 * are (B,P+T,C), their first P rows attended by every query. */
static void test_attention_prefix(void)
{
    /* finite differences on a small case: odd sizes, a padded and an empty
     * sequence (which still attends the prefix) */
    {
        const int B = 3, T = 5, P = 3, NH = 2, hd = 5, C = NH * hd, Tk = P + T;
        const int lens[3] = { 5, 2, 0 };
        const uint64_t seed = 0x5EED0F;
        size_t n = (size_t)B * T * C, nk = (size_t)B * Tk * C, np = (size_t)B * NH * T * Tk;
        float *q = frand(n, -1.5f, 1.5f), *k = frand(nk, -1.5f, 1.5f), *v = frand(nk, -1, 1);
        float *R = frand(n, -1, 1), *out = falloc(n), *probs = falloc(np), *probs0 = falloc(np);
        uint8_t *mask = xcalloc(np, 1);
        double *Rd = f2d(R, n);
        for (int drop = 0; drop <= 1; drop++) {
            const float p = drop ? 0.3f : 0.0f;
            const char *tag = drop ? "prefix attention p=0.3" : "prefix attention";
            for (size_t i = 0; i < np; i++) probs[i] = NAN;   /* every entry must be written */
            memset(mask, 9, np);
            attention_forward_prefix(out, probs, drop ? mask : NULL, q, k, v, lens, B, T, P, C, NH, p, seed);
            att_ctx ctx = { f2d(q, n), f2d(k, nk), f2d(v, nk), lens, B, T, P, C, NH, drop ? mask : NULL,
                            1.0 / (1.0 - p) };
            double *ro = dalloc(n), *rp = dalloc(np);
            ref_attention_full(&ctx, ro, rp);
            CHECK(rel_err(out, ro, n) <= 1e-5 && rel_err(probs, rp, np) <= 1e-5,
                  "%s P=%d: out err %g, probs err %g", tag, P, rel_err(out, ro, n), rel_err(probs, rp, np));
            int rows_ok = 1;
            for (int b = 0; b < B; b++)
                for (size_t r = 0; r < (size_t)NH * T; r++) {
                    const float *pr = probs + ((size_t)b * NH * T + r) * Tk;
                    double sum = 0;
                    for (int j = 0; j < Tk; j++) {
                        if (j < P && !(pr[j] > 0)) rows_ok = 0;
                        if (j >= P + lens[b] && pr[j] != 0.0f) rows_ok = 0;
                        sum += pr[j];
                    }
                    if (fabs(sum - 1) > 1e-5) rows_ok = 0;
                }
            CHECK(rows_ok, "%s: prefix keys always attended, padded keys exactly 0, rows sum to 1", tag);
            if (drop) {
                CHECK(same_bits(probs, probs0, np), "%s: probs are the undropped probabilities", tag);
                /* mask element i is the i-th sequential draw of a peftc_rng with state = seed */
                peftc_rng r = { seed };
                int seq_ok = 1;
                for (size_t i = 0; i < np; i++) {
                    int b = (int)(i / ((size_t)NH * T * Tk)), j = (int)(i % Tk);
                    uint8_t want = peftc_rng_uniform(&r) >= p;
                    if (j >= P + lens[b]) want = 0;
                    if (mask[i] != want) seq_ok = 0;
                }
                CHECK(seq_ok, "%s: mask = counter-based draws over (B,NH,T,P+T) keyed by seed, 0 on padded keys", tag);
            } else {
                memcpy(probs0, probs, np * sizeof(float));
            }

            double *gq = dalloc(n), *gk = dalloc(nk), *gv = dalloc(nk);
            fd_grad(ref_attention, &ctx, ctx.q, n, Rd, n, gq);
            fd_grad(ref_attention, &ctx, ctx.k, nk, Rd, n, gk);
            fd_grad(ref_attention, &ctx, ctx.v, nk, Rd, n, gv);
            float *dq0 = frand(n, -.1f, .1f), *dk0 = frand(nk, -.1f, .1f), *dv0 = frand(nk, -.1f, .1f);
            float *dq = fcopy(dq0, n), *dk = fcopy(dk0, nk), *dv = fcopy(dv0, nk);
            attention_backward_prefix(dq, dk, dv, R, probs, drop ? mask : NULL, q, k, v, lens, B, T, P, C, NH, p);
            CHECK(grad_err(dq, dq0, gq, n) <= GRAD_TOL && grad_err(dk, dk0, gk, nk) <= GRAD_TOL &&
                  grad_err(dv, dv0, gv, nk) <= GRAD_TOL, "%s: backward vs FD: err dq %g dk %g dv %g", tag,
                  grad_err(dq, dq0, gq, n), grad_err(dk, dk0, gk, nk), grad_err(dv, dv0, gv, nk));
            float *dq2 = fcopy(dq, n), *dk2 = fcopy(dk, nk), *dv2 = fcopy(dv, nk);
            attention_backward_prefix(dq2, dk2, dv2, R, probs, drop ? mask : NULL, q, k, v, lens, B, T, P, C, NH, p);
            CHECK(accum_err(dq2, dq, dq0, n) <= 1e-5 && accum_err(dk2, dk, dk0, nk) <= 1e-5 &&
                  accum_err(dv2, dv, dv0, nk) <= 1e-5, "%s: backward accumulates", tag);
            free(ctx.q); free(ctx.k); free(ctx.v); free(ro); free(rp); free(gq); free(gk); free(gv);
            free(dq0); free(dk0); free(dv0); free(dq); free(dk); free(dv); free(dq2); free(dk2); free(dv2);
        }

        /* p >= 1 drops everything: out 0, mask 0, no gradient */
        float *dq = frand(n, -1, 1), *dk = frand(nk, -1, 1), *dv = frand(nk, -1, 1);
        float *dq0 = fcopy(dq, n), *dk0 = fcopy(dk, nk), *dv0 = fcopy(dv, nk);
        attention_forward_prefix(out, probs, mask, q, k, v, lens, B, T, P, C, NH, 1.0f, seed);
        int zero = 1;
        for (size_t i = 0; i < n; i++) zero &= out[i] == 0.0f;
        for (size_t i = 0; i < np; i++) zero &= mask[i] == 0;
        attention_backward_prefix(dq, dk, dv, R, probs, mask, q, k, v, lens, B, T, P, C, NH, 1.0f);
        CHECK(zero && same_bits(dq, dq0, n) && same_bits(dk, dk0, nk) && same_bits(dv, dv0, nk),
              "prefix attention p=1: out and mask 0, gradients untouched");
        free(dq); free(dk); free(dv); free(dq0); free(dk0); free(dv0);
        free(q); free(k); free(v); free(R); free(out); free(probs); free(probs0); free(mask); free(Rd);
    }

    /* P = 0 through the prefix entry points is plain attention, bit for bit */
    {
        const int B = 3, T = 9, NH = 3, hd = 7, C = NH * hd;
        const int lens[3] = { 9, 4, 0 };
        size_t n = (size_t)B * T * C, np = (size_t)B * NH * T * T;
        float *q = frand(n, -1.5f, 1.5f), *k = frand(n, -1.5f, 1.5f), *v = frand(n, -1, 1), *R = frand(n, -1, 1);
        float *o1 = falloc(n), *o2 = falloc(n), *p1 = falloc(np), *p2 = falloc(np);
        uint8_t *m1 = xcalloc(np, 1), *m2 = xcalloc(np, 1);
        float *g1[3], *g2[3];
        for (int i = 0; i < 3; i++) { g1[i] = falloc(n); g2[i] = falloc(n); }
        int same = 1;
        for (int drop = 0; drop <= 1; drop++) {
            float p = drop ? 0.2f : 0.0f;
            for (int i = 0; i < 3; i++) { memset(g1[i], 0, n * sizeof(float)); memset(g2[i], 0, n * sizeof(float)); }
            att_fwd(0, o1, p1, drop ? m1 : NULL, q, k, v, lens, B, T, 0, C, NH, p, 11);
            att_fwd(1, o2, p2, drop ? m2 : NULL, q, k, v, lens, B, T, 0, C, NH, p, 11);
            att_bwd(0, g1[0], g1[1], g1[2], R, p1, drop ? m1 : NULL, q, k, v, lens, B, T, 0, C, NH, p);
            att_bwd(1, g2[0], g2[1], g2[2], R, p2, drop ? m2 : NULL, q, k, v, lens, B, T, 0, C, NH, p);
            same &= same_bits(o1, o2, n) && same_bits(p1, p2, np) && (!drop || !memcmp(m1, m2, np));
            for (int i = 0; i < 3; i++) same &= same_bits(g1[i], g2[i], n);
        }
        CHECK(same, "prefix attention P=0 = attention_forward/_train and attention_backward/_train, bit for bit");
        for (int i = 0; i < 3; i++) { free(g1[i]); free(g2[i]); }
        free(q); free(k); free(v); free(R); free(o1); free(o2); free(p1); free(p2); free(m1); free(m2);
    }

    /* against the analytic reference: P = 0, 1, 5, 20 with odd T and head
     * size (vector tails everywhere), padded and empty sequences */
    const int Ps[4] = { 0, 1, 5, 20 };
    const int lens[3] = { 13, 6, 0 };
    char name[128];
    for (int i = 0; i < 4; i++)
        for (int drop = 0; drop <= 1; drop++) {
            snprintf(name, sizeof name, "prefix attention P=%d T=13 hd=7%s", Ps[i], drop ? " p=0.2" : "");
            attention_vs_ref(name, 3, 13, Ps[i], 3, 7, lens, drop ? 0.2f : 0.0f, 1);
        }
    /* fewer than 16 keys per row in all */
    const int lens2[2] = { 7, 3 };
    attention_vs_ref("prefix attention P=1 T=7 (rows of 8 keys)", 2, 7, 1, 2, 5, lens2, 0.0f, 1);
    attention_vs_ref("prefix attention P=1 T=7 (rows of 8 keys) p=0.2", 2, 7, 1, 2, 5, lens2, 0.2f, 1);
    /* the MiniLM shape: hd = 32, T = 64, P = 20 (84 keys: six vectors, the
     * last partial), padded lengths on and off the 16-lane grid */
    const int lens3[3] = { 64, 44, 17 };
    attention_vs_ref("prefix attention P=20 hd=32 T=64 lens 64/44/17", 3, 64, 20, 2, 32, lens3, 0.0f, 1);
    attention_vs_ref("prefix attention P=20 hd=32 T=64 lens 64/44/17 p=0.1", 3, 64, 20, 2, 32, lens3, 0.1f, 1);
    /* more keys than the rows kept in registers (P + T > 128) and either side
     * of the portable backward's stack bound (P + lens = 520 / 512 / 513) */
    const int lens4[3] = { 500, 492, 493 };
    attention_vs_ref("prefix attention P=20 T=500 (long rows, both backward paths)", 3, 500, 20, 2, 3, lens4, 0.0f, 1);
    attention_vs_ref("prefix attention P=20 T=500 p=0.1 (long rows, both backward paths)", 3, 500, 20, 2, 3, lens4,
                     0.1f, 1);
}

/* ----------------------------------------------------------------- dropout */

static void test_dropout(void)
{
    const size_t n = 10007;
    const float p = 0.3f, scale = 1.0f / (1.0f - p);
    float *x = frand(n, -1, 1), *out = falloc(n);
    uint8_t *mask = xcalloc(n, 1);
    peftc_rng r1, r2;
    peftc_rng_seed(&r1, 1234);
    peftc_rng_seed(&r2, 1234);
    dropout_forward(out, mask, x, p, n, &r1);
    size_t kept = 0;
    int seq_ok = 1, val_ok = 1;
    /* one draw from rng keys a counter-based stream: mask[i] = (draw i of a
     * peftc_rng with state = key) >= p */
    peftc_rng ks = { peftc_rng_u64(&r2) };
    for (size_t i = 0; i < n; i++) {
        uint8_t keep = peftc_rng_uniform(&ks) >= p;
        if (mask[i] != keep) seq_ok = 0;
        if (out[i] != (mask[i] ? x[i] * scale : 0.0f)) val_ok = 0;
        kept += mask[i] == 1;
    }
    CHECK(seq_ok && r1.state == r2.state,
          "dropout_forward: one draw from rng keys the stream, mask[i] = (draw i) >= p");
    CHECK(val_ok, "dropout_forward: out = inp * mask / (1-p)");
    double frac = (double)kept / n;
    CHECK(fabs(frac - 0.7) < 0.02, "dropout_forward: kept fraction %.4f ~ 1-p", frac);

    float *y = fcopy(x, n);
    uint8_t *mask2 = xcalloc(n, 1);
    peftc_rng_seed(&r1, 1234);
    dropout_forward(y, mask2, y, p, n, &r1);
    CHECK(same_bits(y, out, n) && memcmp(mask, mask2, n) == 0, "dropout_forward in place (out == inp)");

    peftc_rng_seed(&r1, 99);
    uint64_t s0 = r1.state;
    memset(mask2, 7, n);
    dropout_forward(y, mask2, x, 0.0f, n, &r1);
    int ones = 1;
    for (size_t i = 0; i < n; i++) if (mask2[i] != 1) ones = 0;
    CHECK(same_bits(y, x, n) && ones && r1.state == s0, "dropout_forward p=0: copy, mask all 1, no draws");

    /* big enough for the parallel path; every thread's chunk continues the
     * same stream; and p = 1 drops everything without a draw */
    {
        const size_t nb = 300007;
        const float pb = 0.1f;
        float *xb = frand(nb, -1, 1), *ob = falloc(nb);
        uint8_t *mb = xcalloc(nb, 1);
        peftc_rng_seed(&r1, 4321);
        peftc_rng_seed(&r2, 4321);
        dropout_forward(ob, mb, xb, pb, nb, &r1);
        peftc_rng kb = { peftc_rng_u64(&r2) };
        int ok = r1.state == r2.state;
        for (size_t i = 0; i < nb; i++) {
            uint8_t keep = peftc_rng_uniform(&kb) >= pb;
            if (mb[i] != keep || ob[i] != (keep ? xb[i] * (1.0f / (1.0f - pb)) : 0.0f)) ok = 0;
        }
        float *ob2 = falloc(nb);
        peftc_rng_seed(&r1, 4321);
        dropout_forward(ob2, NULL, xb, pb, nb, &r1);   /* no mask: same out */
        ok = ok && same_bits(ob, ob2, nb);
        CHECK(ok, "dropout_forward n=%zu (parallel): mask and out follow the keyed stream; mask NULL same out", nb);
        peftc_rng_seed(&r1, 4321);
        s0 = r1.state;
        dropout_forward(ob, mb, xb, 1.0f, nb, &r1);
        int zeros = r1.state == s0;
        for (size_t i = 0; i < nb; i++) if (ob[i] != 0.0f || mb[i] != 0) zeros = 0;
        CHECK(zeros, "dropout_forward p=1: all zero, mask all 0, no draws");
        free(xb); free(ob); free(ob2); free(mb);
    }

    float *dout = frand(n, -1, 1), *d0 = frand(n, -.1f, .1f), *d = fcopy(d0, n);
    dropout_backward(d, mask, dout, p, n, 1);
    double *want = dalloc(n);
    for (size_t i = 0; i < n; i++) want[i] = mask[i] ? (double)dout[i] * scale : 0;
    CHECK(grad_err(d, d0, want, n) <= 1e-6, "dropout_backward: dinp += dout * mask / (1-p): err %g", grad_err(d, d0, want, n));
    float *d2 = fcopy(d, n);
    dropout_backward(d2, mask, dout, p, n, 1);
    dropout_backward(NULL, mask, dout, p, n, 1);
    CHECK(accum_err(d2, d, d0, n) <= 1e-6, "dropout_backward accumulates, NULL dinp is a no-op");
    /* in place: d = d * mask / (1-p), the same values as accumulating into zeros */
    float *ip = fcopy(dout, n), *z = falloc(n);
    dropout_backward_inplace(ip, mask, p, n);
    dropout_backward(z, mask, dout, p, n, 1);
    int ip_ok = same_bits(ip, z, n);
    memcpy(ip, dout, n * sizeof(float));
    dropout_backward_inplace(ip, mask, 0.0f, n);
    ip_ok = ip_ok && same_bits(ip, dout, n);
    dropout_backward_inplace(ip, mask, 1.0f, n);
    dropout_backward_inplace(NULL, mask, p, n);
    for (size_t i = 0; i < n; i++) if (ip[i] != 0.0f) ip_ok = 0;
    CHECK(ip_ok, "dropout_backward_inplace = dropout_backward into zeros; p=0 keeps, p=1 zeroes, NULL is a no-op");
    /* accumulate 0: out of place overwrites; p=1 zeroes; p=0 copies */
    float *ov = frand(n, -5, 5);
    dropout_backward(ov, mask, dout, p, n, 0);
    int ov_ok = same_bits(ov, z, n);
    dropout_backward(ov, mask, dout, 0.0f, n, 0);
    ov_ok = ov_ok && same_bits(ov, dout, n);
    dropout_backward(ov, mask, dout, 1.0f, n, 0);
    for (size_t i = 0; i < n; i++) if (ov[i] != 0.0f) ov_ok = 0;
    CHECK(ov_ok, "dropout_backward accumulate 0 overwrites (p, 0 and 1)");
    free(ip); free(z); free(ov);

    memcpy(d, d0, n * sizeof(float));
    dropout_backward(d, mask2, dout, 0.0f, n, 1);
    for (size_t i = 0; i < n; i++) want[i] = dout[i];
    CHECK(grad_err(d, d0, want, n) <= 1e-6, "dropout_backward p=0 passes dout through");

    {   /* the keyed forms (no stored mask) against the masked ones, 1 and 2
         * threads, on a size that runs in parallel */
        const size_t nb = 100003;
        float *xb = frand(nb, -1, 1), *db = frand(nb, -1, 1), *acc0 = frand(nb, -1, 1);
        float *oa = falloc(nb), *ob = falloc(nb), *ga = falloc(nb), *gb = falloc(nb);
        uint8_t *mb = xcalloc(nb, 1);
        peftc_rng rr, rk;
        peftc_rng_seed(&rr, 77);
        rk = rr;
        uint64_t key = peftc_rng_u64(&rk);
        dropout_forward(oa, mb, xb, p, nb, &rr);
        int ok = 1;
        for (int nt = 1; nt <= 2; nt++) {
            omp_set_num_threads(nt);
            dropout_forward_key(ob, xb, p, nb, key);
            ok = ok && same_bits(oa, ob, nb);
            dropout_backward(ga, mb, db, p, nb, 0);
            dropout_backward_key(gb, db, p, nb, key, 0);
            ok = ok && same_bits(ga, gb, nb);
            memcpy(ga, acc0, nb * sizeof(float)); memcpy(gb, acc0, nb * sizeof(float));
            dropout_backward(ga, mb, db, p, nb, 1);
            dropout_backward_key(gb, db, p, nb, key, 1);
            ok = ok && same_bits(ga, gb, nb);
            memcpy(gb, db, nb * sizeof(float));
            dropout_backward(ga, mb, db, p, nb, 0);
            dropout_backward_key(gb, gb, p, nb, key, 0);   /* in place */
            ok = ok && same_bits(ga, gb, nb);
        }
        omp_set_num_threads(2);
        dropout_forward_key(ob, xb, 0.0f, nb, key);
        dropout_backward_key(gb, db, 1.0f, nb, key, 0);
        int edges = same_bits(ob, xb, nb);
        for (size_t i = 0; i < nb; i++) if (gb[i] != 0.0f) edges = 0;
        CHECK(ok && edges, "dropout_forward_key / dropout_backward_key = the masked forms with the same key "
              "(overwrite, accumulate, in place; 1 and 2 threads); p=0 copies, p=1 zeroes");
        free(xb); free(db); free(acc0); free(oa); free(ob); free(ga); free(gb); free(mb);
    }

    free(x); free(out); free(mask); free(y); free(mask2); free(dout); free(d0); free(d); free(d2); free(want);
}

/* ----------------------------------------------------------------- pooling */

typedef struct { double *x; const int *lens; int B, T, C, cls; } pool_ctx;

static void ref_pool(void *vctx, double *out)
{
    pool_ctx *p = vctx;
    for (int b = 0; b < p->B; b++)
        for (int c = 0; c < p->C; c++) {
            if (p->cls) { out[b * p->C + c] = p->x[(size_t)b * p->T * p->C + c]; continue; }
            int L = clamp_len(p->lens, b, p->T);
            double s = 0;
            for (int t = 0; t < L; t++) s += p->x[((size_t)b * p->T + t) * p->C + c];
            out[b * p->C + c] = L ? s / L : 0;
        }
}

static void test_pooling(void)
{
    const int B = 3, T = 6, C = 37;
    const int lens[3] = { 6, 2, 0 };
    size_t nx = (size_t)B * T * C, no = (size_t)B * C;
    float *x = frand(nx, -1, 1), *out = falloc(no), *R = frand(no, -1, 1);
    double *ref = dalloc(no), *Rd = f2d(R, no), *g = dalloc(nx);
    for (int cls = 0; cls < 2; cls++) {
        const char *name = cls ? "cls_pool" : "mean_pool";
        pool_ctx ctx = { f2d(x, nx), lens, B, T, C, cls };
        ref_pool(&ctx, ref);
        if (cls) cls_pool_forward(out, x, B, T, C); else mean_pool_forward(out, x, lens, B, T, C);
        CHECK(rel_err(out, ref, no) <= FWD_TOL, "%s_forward: err %g", name, rel_err(out, ref, no));
        fd_grad(ref_pool, &ctx, ctx.x, nx, Rd, no, g);
        float *d0 = frand(nx, -.1f, .1f), *d = fcopy(d0, nx);
        if (cls) cls_pool_backward(d, R, B, T, C); else mean_pool_backward(d, R, lens, B, T, C);
        CHECK(grad_err(d, d0, g, nx) <= GRAD_TOL, "%s_backward vs FD: err %g", name, grad_err(d, d0, g, nx));
        float *d2 = fcopy(d, nx);
        if (cls) { cls_pool_backward(d2, R, B, T, C); cls_pool_backward(NULL, R, B, T, C); }
        else { mean_pool_backward(d2, R, lens, B, T, C); mean_pool_backward(NULL, R, lens, B, T, C); }
        CHECK(accum_err(d2, d, d0, nx) <= 1e-5, "%s_backward accumulates, NULL dinp is a no-op", name);
        free(ctx.x); free(d0); free(d); free(d2);
    }
    free(x); free(out); free(R); free(ref); free(Rd); free(g);
}

/* -------------------------------------------------------------- softmax CE */

typedef struct { double *logits; const int *labels; int B, K; } ce_ctx;

static void ref_ce(void *vctx, double *out)  /* out[0] = mean loss */
{
    ce_ctx *e = vctx;
    double tot = 0;
    for (int b = 0; b < e->B; b++) {
        const double *x = e->logits + (size_t)b * e->K;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < e->K; j++) mx = fmax(mx, x[j]);
        for (int j = 0; j < e->K; j++) s += exp(x[j] - mx);
        tot += log(s) + mx - x[e->labels[b]];
    }
    out[0] = tot / e->B;
}

/* lm_ce_rows (the LM loss over a vocabulary, gradient in place) against a
 * double reference and finite differences of ref_ce; softmax_row_inplace with
 * masked (-inf) entries */
static void test_lm_ce_rows(void)
{
    const int B = 4, K = 1003;   /* odd: the vector tails */
    int labels[4] = { 0, 1002, 17, 500 };
    size_t n = (size_t)B * K;
    float *x = frand(n, -6, 6);
    for (int j = 0; j < K; j++) x[3 * K + j] = 40.0f * sinf((float)j);   /* saturated row */
    ce_ctx ctx = { f2d(x, n), labels, B, K };
    double rmean, *rl = dalloc(B);
    ref_ce(&ctx, &rmean);
    for (int b = 0; b < B; b++) {
        ce_ctx one = { ctx.logits + (size_t)b * K, labels + b, 1, K };
        ref_ce(&one, &rl[b]);
    }
    double l[4], l0[4], lerr = 0;
    float *z = fcopy(x, n), *z0 = fcopy(x, n);
    lm_ce_rows(z0, labels, B, K, 0.0f, l0);
    lm_ce_rows(z, labels, B, K, 1.0f / B, l);
    for (int b = 0; b < B; b++) lerr = fmax(lerr, fabs(l[b] - rl[b]) / fmax(1, fabs(rl[b])));
    CHECK(lerr <= 1e-6 && memcmp(l, l0, sizeof l) == 0 && tl_max_abs_diff(z0, x, n) == 0,
          "lm_ce_rows losses vs double: rel err %g; scale 0 leaves the logits alone, same losses", lerr);
    double one = 1, *g = dalloc(n);
    fd_grad(ref_ce, &ctx, ctx.logits, n, &one, 1, g);
    float *zero = falloc(n);
    memset(zero, 0, n * sizeof(float));
    CHECK(grad_err(z, zero, g, n) <= GRAD_TOL, "lm_ce_rows gradient (scale 1/B) vs FD of the mean loss: err %g",
          grad_err(z, zero, g, n));
    /* softmax of a masked row: the masked entries 0, the rest as double's softmax */
    float r[37];
    double want[37], mx = -INFINITY, sum = 0, err = 0;
    for (int j = 0; j < 37; j++) r[j] = (j % 5 == 2) ? -INFINITY : 3.0f * sinf(0.7f * (float)j);
    for (int j = 0; j < 37; j++) if (r[j] > mx) mx = r[j];
    for (int j = 0; j < 37; j++) sum += (want[j] = r[j] == -INFINITY ? 0 : exp(r[j] - mx));
    softmax_row_inplace(r, 37);
    int zeros = 1;
    for (int j = 0; j < 37; j++) {
        err = fmax(err, fabs(r[j] - want[j] / sum));
        if (j % 5 == 2 && r[j] != 0.0f) zeros = 0;
    }
    float allmask[3] = { -INFINITY, -INFINITY, -INFINITY };
    softmax_row_inplace(allmask, 3);
    CHECK(err <= FWD_TOL && zeros && allmask[0] == 0 && allmask[2] == 0,
          "softmax_row_inplace: err %g, masked entries exactly 0, an all-masked row all 0", err);
    free(x); free(ctx.logits); free(rl); free(z); free(z0); free(g); free(zero);
}

static void test_softmax_ce(void)
{
    const int B = 5, K = 7;
    const int labels[5] = { 0, 6, 3, 3, 1 };
    size_t n = (size_t)B * K;
    float *x = frand(n, -3, 3);
    for (int j = 0; j < K; j++) x[2 * K + j] = 60.0f * (j - 3);   /* saturated row: label prob ~ 0 */
    ce_ctx ctx = { f2d(x, n), labels, B, K };
    double rmean;
    ref_ce(&ctx, &rmean);
    double *rl = dalloc(B), *rp = dalloc(n);
    for (int b = 0; b < B; b++) {
        ce_ctx one = { ctx.logits + (size_t)b * K, labels + b, 1, K };
        ref_ce(&one, &rl[b]);
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < K; j++) mx = fmax(mx, one.logits[j]);
        for (int j = 0; j < K; j++) s += exp(one.logits[j] - mx);
        for (int j = 0; j < K; j++) rp[b * K + j] = exp(one.logits[j] - mx) / s;
    }
    float *losses = falloc(B), *probs = falloc(n);
    float mean = softmax_ce_forward(losses, probs, x, labels, B, K);
    CHECK(fabs(mean - rmean) <= 1e-5 * fmax(1, fabs(rmean)), "softmax_ce_forward mean %g vs %g", mean, rmean);
    CHECK(rel_err(losses, rl, B) <= FWD_TOL, "softmax_ce_forward losses (incl. saturated row): err %g", rel_err(losses, rl, B));
    CHECK(rel_err(probs, rp, n) <= FWD_TOL, "softmax_ce_forward probs: err %g", rel_err(probs, rp, n));
    float m2 = softmax_ce_forward(NULL, NULL, x, labels, B, K);
    CHECK(m2 == mean, "softmax_ce_forward with losses, probs NULL gives the same mean");
    {   /* more classes than a vector holds: the vectorised row path */
        const int B2 = 3, K2 = 53;
        const int lab2[3] = { 0, 52, 17 };
        float *x2 = frand((size_t)B2 * K2, -4, 4), *p2 = falloc((size_t)B2 * K2), *l2 = falloc(B2);
        float mean2 = softmax_ce_forward(l2, p2, x2, lab2, B2, K2);
        double want = 0, perr = 0;
        for (int b = 0; b < B2; b++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < K2; j++) mx = fmax(mx, x2[b * K2 + j]);
            for (int j = 0; j < K2; j++) sum += exp(x2[b * K2 + j] - mx);
            want += log(sum) + mx - x2[b * K2 + lab2[b]];
            for (int j = 0; j < K2; j++) perr = fmax(perr, fabs(p2[b * K2 + j] - exp(x2[b * K2 + j] - mx) / sum));
        }
        want /= B2;
        CHECK(fabs(mean2 - want) <= 1e-5 * fmax(1, fabs(want)) && perr <= FWD_TOL &&
              softmax_ce_forward(NULL, NULL, x2, lab2, B2, K2) == mean2,
              "softmax_ce_forward K=53: mean %g vs %g, probs err %g, same mean without losses/probs", mean2, want, perr);
        free(x2); free(p2); free(l2);
    }

    double one = 1, *g = dalloc(n);
    fd_grad(ref_ce, &ctx, ctx.logits, n, &one, 1, g);
    float *d0 = frand(n, -.1f, .1f), *d = fcopy(d0, n);
    softmax_ce_backward(d, probs, labels, B, K, 1.0f / B);
    CHECK(grad_err(d, d0, g, n) <= GRAD_TOL, "softmax_ce_backward vs FD of the mean loss: err %g", grad_err(d, d0, g, n));
    float *d2 = fcopy(d, n);
    softmax_ce_backward(d2, probs, labels, B, K, 1.0f / B);
    softmax_ce_backward(NULL, probs, labels, B, K, 1.0f / B);
    CHECK(accum_err(d2, d, d0, n) <= 1e-5, "softmax_ce_backward accumulates, NULL dlogits is a no-op");
    free(x); free(ctx.logits); free(rl); free(rp); free(losses); free(probs); free(g); free(d0); free(d); free(d2);
}

/* ------------------------------------------------------------------- adamw */

static void test_adamw(void)
{
    enum { n = 6 };
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    float p[n] = { 0.5f, -1.0f, 2.0f, 0.0f, -0.25f, 3.0f }, m[n] = { 0 }, v[n] = { 0 };
    double pd[n], md[n] = { 0 }, vd[n] = { 0 };
    for (int i = 0; i < n; i++) pd[i] = p[i];
    float grads[3][n] = {
        { 0.1f, -0.2f, 0.3f, 0.0f, 1e-4f, -5.0f },
        { -0.3f, 0.2f, 0.1f, 0.5f, 1e-4f, 4.0f },
        { 0.05f, 0.0f, -0.7f, 0.5f, -2e-4f, -3.0f },
    };
    for (int t = 1; t <= 3; t++) {
        adamw_update(p, grads[t - 1], m, v, n, lr, b1, b2, eps, wd, t);
        for (int i = 0; i < n; i++) {
            double g = grads[t - 1][i];
            pd[i] -= (double)lr * wd * pd[i];
            md[i] = (double)b1 * md[i] + (1 - (double)b1) * g;
            vd[i] = (double)b2 * vd[i] + (1 - (double)b2) * g * g;
            double mh = md[i] / (1 - pow(b1, t)), vh = vd[i] / (1 - pow(b2, t));
            pd[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    double ep = 0, em = 0, ev = 0;
    for (int i = 0; i < n; i++) {
        ep = fmax(ep, fabs(p[i] - pd[i]));
        em = fmax(em, fabs(m[i] - md[i]) / fmax(fabs(md[i]), 1e-6));
        ev = fmax(ev, fabs(v[i] - vd[i]) / fmax(fabs(vd[i]), 1e-12));
    }
    CHECK(ep <= 1e-6 && em <= 1e-5 && ev <= 1e-5,
          "adamw_update: 3 steps match a double hand computation (p %g, m %g, v %g)", ep, em, ev);
    /* the first step moves every parameter with a nonzero grad by ~lr */
    float q[1] = { 1.0f }, mq[1] = { 0 }, vq[1] = { 0 }, gq[1] = { 1e-3f };
    adamw_update(q, gq, mq, vq, 1, lr, b1, b2, eps, 0.0f, 1);
    CHECK(fabs((1.0 - q[0]) - lr) <= 1e-5, "adamw_update step 1 bias correction: moved %g", 1.0 - q[0]);
}

/* -------------------------------------------------------------------- misc */

static void test_misc(void)
{
    const int N = 5, C = 37;
    size_t n = (size_t)N * C;
    float *y = frand(n, -1, 1), *x = frand(n, -1, 1), *y0 = fcopy(y, n);
    double *want = dalloc(n);
    for (size_t i = 0; i < n; i++) want[i] = (double)y[i] + x[i];
    add_inplace(y, x, n);
    CHECK(rel_err(y, want, n) <= 1e-7, "add_inplace");
    for (size_t i = 0; i < n; i++) want[i] = (double)y[i] - 0.375 * x[i];
    axpy_inplace(y, -0.375f, x, n);
    CHECK(rel_err(y, want, n) <= 1e-7, "axpy_inplace");

    memset(y0 + 2 * C, 0, C * sizeof(float));  /* a zero row must stay zero */
    for (int r = 0; r < N; r++) {
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)y0[r * C + c] * y0[r * C + c];
        for (int c = 0; c < C; c++) want[r * C + c] = s > 0 ? y0[r * C + c] / sqrt(s) : 0;
    }
    l2_normalize_rows(y0, N, C);
    CHECK(rel_err(y0, want, n) <= FWD_TOL, "l2_normalize_rows (zero row stays 0): err %g", rel_err(y0, want, n));
    free(y); free(x); free(y0); free(want);
}

/* ----------------------------------------------------------------- scaling */

/* Sizes with a partial last block of rows (the kernels sum rows in blocks of 64). */
enum { SC_N = 150, SC_IC = 37, SC_OC = 41 };

/* out (N,OC) = s * sigmoid(x w + b) * u */
typedef struct { double *x, *u, *w, *b; int N, IC, OC; double s; } gate_ctx;

static void ref_gate(void *vctx, double *out)
{
    gate_ctx *c = vctx;
    for (int r = 0; r < c->N; r++) {
        double z = c->b[0];
        for (int j = 0; j < c->IC; j++) z += c->x[r * c->IC + j] * c->w[j];
        double g = 1 / (1 + exp(-z));
        for (int j = 0; j < c->OC; j++) out[r * c->OC + j] = c->s * g * c->u[r * c->OC + j];
    }
}

static void test_gate(void)
{
    const int N = SC_N, IC = SC_IC, OC = SC_OC;
    size_t nx = (size_t)N * IC, no = (size_t)N * OC;
    float *x = frand(nx, -1, 1), *u = frand(no, -1, 1), *w = frand(IC, -.5f, .5f), b = 0.3f, s = 1.5f;
    double bd = b;
    gate_ctx ctx = { f2d(x, nx), f2d(u, no), f2d(w, IC), &bd, N, IC, OC, s };
    double *ref = dalloc(no);
    ref_gate(&ctx, ref);
    float *h0 = frand(no, -1, 1), *h = fcopy(h0, no), *g = falloc(N);
    gate_forward(h, g, x, u, w, b, s, N, IC, OC);
    CHECK(grad_err(h, h0, ref, no) <= FWD_TOL, "gate_forward (h += s g u): err %g", grad_err(h, h0, ref, no));

    float *R = frand(no, -1, 1);
    double *Rd = f2d(R, no), *gx = dalloc(nx), *gu = dalloc(no), *gw = dalloc(IC), gb;
    fd_grad(ref_gate, &ctx, ctx.x, nx, Rd, no, gx);
    fd_grad(ref_gate, &ctx, ctx.u, no, Rd, no, gu);
    fd_grad(ref_gate, &ctx, ctx.w, IC, Rd, no, gw);
    fd_grad(ref_gate, &ctx, ctx.b, 1, Rd, no, &gb);
    float *du = falloc(no), *dx0 = frand(nx, -.1f, .1f), *dw0 = frand(IC, -.1f, .1f), db0 = 0.05f;
    float *dx = fcopy(dx0, nx), *dw = fcopy(dw0, IC), db = db0;
    float *scratch = falloc(scaling_scratch_floats(N, IC));
    for (size_t i = 0; i < no; i++) du[i] = NAN;   /* du is written, never read */
    gate_backward(du, dx, dw, &db, scratch, R, x, u, g, w, s, N, IC, OC);
    CHECK(rel_err(du, gu, no) <= GRAD_TOL, "gate_backward du vs FD: err %g", rel_err(du, gu, no));
    CHECK(grad_err(dx, dx0, gx, nx) <= GRAD_TOL, "gate_backward dx vs FD: err %g", grad_err(dx, dx0, gx, nx));
    CHECK(grad_err(dw, dw0, gw, IC) <= GRAD_TOL, "gate_backward dw vs FD: err %g", grad_err(dw, dw0, gw, IC));
    CHECK(grad_err(&db, &db0, &gb, 1) <= GRAD_TOL, "gate_backward db vs FD: err %g", grad_err(&db, &db0, &gb, 1));

    float *dx2 = fcopy(dx, nx), *dw2 = fcopy(dw, IC), db2 = db, *du2 = falloc(no);
    gate_backward(du2, dx2, dw2, &db2, scratch, R, x, u, g, w, s, N, IC, OC);
    CHECK(accum_err(dx2, dx, dx0, nx) <= 1e-5 && accum_err(dw2, dw, dw0, IC) <= 1e-5 &&
          accum_err(&db2, &db, &db0, 1) <= 1e-5 && same_bits(du2, du, no),
          "gate_backward accumulates dx, dw, db (second call adds again) and rewrites du");

    float *a = fcopy(dx0, nx), *bw = fcopy(dw0, IC), c = db0;
    gate_backward(du2, a, NULL, NULL, scratch, R, x, u, g, w, s, N, IC, OC);
    gate_backward(du2, NULL, bw, NULL, scratch, R, x, u, g, w, s, N, IC, OC);
    gate_backward(du2, NULL, NULL, &c, scratch, R, x, u, g, w, s, N, IC, OC);
    CHECK(same_bits(a, dx, nx) && same_bits(bw, dw, IC) && same_bits(&c, &db, 1) && same_bits(du2, du, no),
          "gate_backward: each gradient alone (others NULL) matches");
    free(ctx.x); free(ctx.u); free(ctx.w); free(x); free(u); free(w); free(ref); free(h0); free(h); free(g);
    free(R); free(Rd); free(gx); free(gu); free(gw); free(du); free(dx0); free(dw0); free(dx); free(dw);
    free(scratch); free(dx2); free(dw2); free(du2); free(a); free(bw);
}

/* out (N,W) = a * x, and out = h * l per channel */
typedef struct { double *x, *a; int N, W; } scal_ctx;

static void ref_axpy(void *vctx, double *out)
{
    scal_ctx *c = vctx;
    for (int i = 0; i < c->N * c->W; i++) out[i] = c->a[0] * c->x[i];
}

static void ref_chscale(void *vctx, double *out)
{
    scal_ctx *c = vctx;
    for (int i = 0; i < c->N * c->W; i++) out[i] = c->x[i] * c->a[i % c->W];
}

static void test_scalings(void)
{
    const int N = SC_N, W = SC_OC;
    size_t n = (size_t)N * W;
    float *x = frand(n, -1, 1), *R = frand(n, -1, 1), a = -0.75f;
    double ad = a, *Rd = f2d(R, n), *gx = dalloc(n), ga;
    scal_ctx ctx = { f2d(x, n), &ad, N, W };
    fd_grad(ref_axpy, &ctx, ctx.x, n, Rd, n, gx);
    fd_grad(ref_axpy, &ctx, ctx.a, 1, Rd, n, &ga);
    float *dx = falloc(n), da0 = 0.25f, da = da0, *scratch = falloc(scaling_scratch_floats(N, W));
    for (size_t i = 0; i < n; i++) dx[i] = NAN;
    axpy_backward(dx, &da, scratch, R, x, a, N, W);
    CHECK(rel_err(dx, gx, n) <= GRAD_TOL && grad_err(&da, &da0, &ga, 1) <= GRAD_TOL,
          "axpy_backward dx, da vs FD: err %g, %g", rel_err(dx, gx, n), grad_err(&da, &da0, &ga, 1));
    float *dx2 = falloc(n), da2 = da;
    axpy_backward(dx2, &da2, scratch, R, x, a, N, W);
    axpy_backward(dx2, NULL, NULL, R, NULL, a, N, W);
    CHECK(accum_err(&da2, &da, &da0, 1) <= 1e-5 && same_bits(dx2, dx, n),
          "axpy_backward accumulates da, rewrites dx; da NULL needs no x or scratch");
    free(ctx.x);

    /* channel scaling: x is h, a is l (W) */
    float *l = frand(W, 0.5f, 1.5f), *h = fcopy(x, n);
    scal_ctx cc = { f2d(x, n), f2d(l, W), N, W };
    double *ref = dalloc(n), *gl = dalloc(W);
    ref_chscale(&cc, ref);
    channel_scale_forward(h, l, N, W);
    CHECK(rel_err(h, ref, n) <= FWD_TOL, "channel_scale_forward: err %g", rel_err(h, ref, n));
    fd_grad(ref_chscale, &cc, cc.x, n, Rd, n, gx);
    fd_grad(ref_chscale, &cc, cc.a, W, Rd, n, gl);
    float *dh = fcopy(R, n), *dl0 = frand(W, -.1f, .1f), *dl = fcopy(dl0, W);
    channel_scale_backward(dh, dl, scratch, x, l, N, W);
    CHECK(rel_err(dh, gx, n) <= GRAD_TOL && grad_err(dl, dl0, gl, W) <= GRAD_TOL,
          "channel_scale_backward dh (in place), dl vs FD: err %g, %g", rel_err(dh, gx, n), grad_err(dl, dl0, gl, W));
    float *dh2 = fcopy(R, n), *dl2 = fcopy(dl, W), *dh3 = fcopy(R, n);
    channel_scale_backward(dh2, dl2, scratch, x, l, N, W);
    channel_scale_backward(dh3, NULL, NULL, x, l, N, W);
    CHECK(accum_err(dl2, dl, dl0, W) <= 1e-5 && same_bits(dh2, dh, n) && same_bits(dh3, dh, n),
          "channel_scale_backward accumulates dl; with dl NULL dh is the same");
    free(x); free(R); free(Rd); free(gx); free(dx); free(scratch); free(dx2); free(l); free(h); free(cc.x);
    free(cc.a); free(ref); free(gl); free(dh); free(dl0); free(dl); free(dh2); free(dl2); free(dh3);
}

/* ----------------------------------------------------------------- lowrank */

/* out (N,O) = alpha (inp (N,I) w (O,I)^T + b (O)): the down-projection
 * (alpha 1) and the up-projection's increment of h are both this */
typedef struct { double *inp, *w, *b; int N, I, O; double alpha; } lr_ctx;

static void ref_lowrank(void *vctx, double *out)
{
    lr_ctx *c = vctx;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->O; o++) {
            double s = c->b ? c->b[o] : 0;
            for (int i = 0; i < c->I; i++) s += c->inp[(size_t)n * c->I + i] * c->w[(size_t)o * c->I + i];
            out[(size_t)n * c->O + o] = c->alpha * s;
        }
}

/* the gradients of L = sum(out * D): dinp = alpha D w, dw = alpha D^T inp, db = alpha colsum(D) */
static void ref_lowrank_grad(const lr_ctx *c, const double *D, double *dinp, double *dw, double *db)
{
    size_t N = (size_t)c->N, I = (size_t)c->I, O = (size_t)c->O;
    memset(dinp, 0, N * I * sizeof(double));
    memset(dw, 0, O * I * sizeof(double));
    memset(db, 0, O * sizeof(double));
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < O; o++) {
            double d = c->alpha * D[n * O + o];
            db[o] += d;
            for (size_t i = 0; i < I; i++) {
                dinp[n * I + i] += d * c->w[o * I + i];
                dw[o * I + i] += d * c->inp[n * I + i];
            }
        }
}

static float *fnan(size_t n)
{
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

/* one shape: N rows, x (N,IC), A (R,IC), B (OC,R); fd: also against finite differences */
static void lowrank_case(int N, int IC, int OC, int R, int fd)
{
    char tag[64];
    snprintf(tag, sizeof tag, "N=%d IC=%d OC=%d R=%d", N, IC, OC, R);
    size_t nx = (size_t)N * IC, nz = (size_t)N * R, nh = (size_t)N * OC, nA = (size_t)R * IC, nB = (size_t)OC * R;
    const float alpha = 0.75f;
    float *x = frand(nx, -1, 1), *A = frand(nA, -.5f, .5f), *bd = frand(R, -.5f, .5f);
    float *a = frand(nz, -1, 1), *B = frand(nB, -.5f, .5f), *bu = frand(OC, -.5f, .5f);
    float *scratch = fnan(lowrank_scratch_floats(N, IC > OC ? IC : OC, R));   /* never read before written */
    lr_ctx dc = { f2d(x, nx), f2d(A, nA), f2d(bd, R), N, IC, R, 1.0 };
    lr_ctx uc = { f2d(a, nz), f2d(B, nB), f2d(bu, OC), N, R, OC, alpha };

    /* forwards, with and without bias */
    double *zr = dalloc(nz), *hr = dalloc(nh);
    float *z = fnan(nz), *h0 = frand(nh, -1, 1), *h = fcopy(h0, nh);
    ref_lowrank(&dc, zr);
    lowrank_down_forward(z, scratch, x, A, bd, N, IC, R);
    double e = rel_err(z, zr, nz);
    double *bsave = dc.b;
    dc.b = NULL;
    ref_lowrank(&dc, zr);
    dc.b = bsave;
    float *z2 = fnan(nz);
    lowrank_down_forward(z2, scratch, x, A, NULL, N, IC, R);
    double e2 = rel_err(z2, zr, nz);
    CHECK(e <= FWD_TOL && e2 <= FWD_TOL, "lowrank_down_forward %s: z vs reference err %g, without bias %g", tag, e, e2);
    ref_lowrank(&uc, hr);
    lowrank_up_forward(h, scratch, a, B, bu, alpha, N, R, OC);
    e = grad_err(h, h0, hr, nh);
    bsave = uc.b;
    uc.b = NULL;
    ref_lowrank(&uc, hr);
    uc.b = bsave;
    float *h2 = fcopy(h0, nh);
    lowrank_up_forward(h2, scratch, a, B, NULL, alpha, N, R, OC);
    e2 = grad_err(h2, h0, hr, nh);
    CHECK(e <= FWD_TOL && e2 <= FWD_TOL, "lowrank_up_forward %s: h += alpha (a B^T + b) err %g, without bias %g",
          tag, e, e2);

    /* up backward: da written, dB and dbias accumulated */
    float *dh = frand(nh, -1, 1), *da = fnan(nz), *dB0 = frand(nB, -.1f, .1f), *dbu0 = frand(OC, -.1f, .1f);
    float *dB = fcopy(dB0, nB), *dbu = fcopy(dbu0, OC);
    double *dhd = f2d(dh, nh), *gda = dalloc(nz), *gdB = dalloc(nB), *gdbu = dalloc(OC);
    ref_lowrank_grad(&uc, dhd, gda, gdB, gdbu);
    lowrank_up_backward(da, dB, dbu, scratch, dh, a, B, alpha, N, R, OC);
    CHECK(rel_err(da, gda, nz) <= FWD_TOL && grad_err(dB, dB0, gdB, nB) <= FWD_TOL &&
          grad_err(dbu, dbu0, gdbu, OC) <= FWD_TOL,
          "lowrank_up_backward %s vs reference: da err %g, dB %g, dbias %g", tag, rel_err(da, gda, nz),
          grad_err(dB, dB0, gdB, nB), grad_err(dbu, dbu0, gdbu, OC));
    if (fd) {
        double *fa = dalloc(nz), *fB = dalloc(nB), *fb = dalloc(OC);
        fd_grad(ref_lowrank, &uc, uc.inp, nz, dhd, nh, fa);
        fd_grad(ref_lowrank, &uc, uc.w, nB, dhd, nh, fB);
        fd_grad(ref_lowrank, &uc, uc.b, OC, dhd, nh, fb);
        CHECK(rel_err(da, fa, nz) <= GRAD_TOL && grad_err(dB, dB0, fB, nB) <= GRAD_TOL &&
              grad_err(dbu, dbu0, fb, OC) <= GRAD_TOL,
              "lowrank_up_backward %s vs finite differences: da err %g, dB %g, dbias %g", tag, rel_err(da, fa, nz),
              grad_err(dB, dB0, fB, nB), grad_err(dbu, dbu0, fb, OC));
        free(fa); free(fB); free(fb);
    }
    float *da2 = fnan(nz), *dB2 = fcopy(dB, nB), *dbu2 = fcopy(dbu, OC);
    lowrank_up_backward(da2, dB2, dbu2, scratch, dh, a, B, alpha, N, R, OC);
    CHECK(same_bits(da2, da, nz) && accum_err(dB2, dB, dB0, nB) <= 1e-5 && accum_err(dbu2, dbu, dbu0, OC) <= 1e-5,
          "lowrank_up_backward %s: rewrites da, accumulates dB and dbias", tag);
    float *da3 = fnan(nz), *dB3 = fcopy(dB0, nB), *dbu3 = fcopy(dbu0, OC);
    lowrank_up_backward(da3, NULL, NULL, scratch, dh, a, B, alpha, N, R, OC);
    lowrank_up_backward(NULL, dB3, NULL, scratch, dh, a, B, alpha, N, R, OC);
    lowrank_up_backward(NULL, NULL, dbu3, scratch, dh, a, B, alpha, N, R, OC);
    CHECK(same_bits(da3, da, nz) && same_bits(dB3, dB, nB) && same_bits(dbu3, dbu, OC),
          "lowrank_up_backward %s: each gradient alone (others NULL) matches", tag);

    /* down backward: everything accumulated */
    float *dz = frand(nz, -1, 1), *dx0 = frand(nx, -.1f, .1f), *dA0 = frand(nA, -.1f, .1f), *dbd0 = frand(R, -.1f, .1f);
    float *dx = fcopy(dx0, nx), *dA = fcopy(dA0, nA), *dbd = fcopy(dbd0, R);
    double *dzd = f2d(dz, nz), *gdx = dalloc(nx), *gdA = dalloc(nA), *gdbd = dalloc(R);
    ref_lowrank_grad(&dc, dzd, gdx, gdA, gdbd);
    lowrank_down_backward(dx, dA, dbd, scratch, dz, x, A, N, IC, R);
    CHECK(grad_err(dx, dx0, gdx, nx) <= FWD_TOL && grad_err(dA, dA0, gdA, nA) <= FWD_TOL &&
          grad_err(dbd, dbd0, gdbd, R) <= FWD_TOL,
          "lowrank_down_backward %s vs reference: dx err %g, dA %g, dbias %g", tag, grad_err(dx, dx0, gdx, nx),
          grad_err(dA, dA0, gdA, nA), grad_err(dbd, dbd0, gdbd, R));
    if (fd) {
        double *fx = dalloc(nx), *fA = dalloc(nA), *fb = dalloc(R);
        fd_grad(ref_lowrank, &dc, dc.inp, nx, dzd, nz, fx);
        fd_grad(ref_lowrank, &dc, dc.w, nA, dzd, nz, fA);
        fd_grad(ref_lowrank, &dc, dc.b, R, dzd, nz, fb);
        CHECK(grad_err(dx, dx0, fx, nx) <= GRAD_TOL && grad_err(dA, dA0, fA, nA) <= GRAD_TOL &&
              grad_err(dbd, dbd0, fb, R) <= GRAD_TOL,
              "lowrank_down_backward %s vs finite differences: dx err %g, dA %g, dbias %g", tag,
              grad_err(dx, dx0, fx, nx), grad_err(dA, dA0, fA, nA), grad_err(dbd, dbd0, fb, R));
        free(fx); free(fA); free(fb);
    }
    float *dx2 = fcopy(dx, nx), *dA2 = fcopy(dA, nA), *dbd2 = fcopy(dbd, R);
    lowrank_down_backward(dx2, dA2, dbd2, scratch, dz, x, A, N, IC, R);
    CHECK(accum_err(dx2, dx, dx0, nx) <= 1e-5 && accum_err(dA2, dA, dA0, nA) <= 1e-5 &&
          accum_err(dbd2, dbd, dbd0, R) <= 1e-5, "lowrank_down_backward %s: accumulates dx, dA, dbias", tag);
    float *dx3 = fcopy(dx0, nx), *dA3 = fcopy(dA0, nA), *dbd3 = fcopy(dbd0, R);
    lowrank_down_backward(dx3, NULL, NULL, scratch, dz, NULL, A, N, IC, R);   /* x unused without dA */
    lowrank_down_backward(NULL, dA3, NULL, scratch, dz, x, A, N, IC, R);
    lowrank_down_backward(NULL, NULL, dbd3, scratch, dz, NULL, A, N, IC, R);
    CHECK(same_bits(dx3, dx, nx) && same_bits(dA3, dA, nA) && same_bits(dbd3, dbd, R),
          "lowrank_down_backward %s: each gradient alone (others NULL, x NULL without dA) matches", tag);

    free(x); free(A); free(bd); free(a); free(B); free(bu); free(scratch);
    free(dc.inp); free(dc.w); free(dc.b); free(uc.inp); free(uc.w); free(uc.b);
    free(zr); free(hr); free(z); free(z2); free(h0); free(h); free(h2);
    free(dh); free(da); free(dB0); free(dbu0); free(dB); free(dbu); free(dhd); free(gda); free(gdB); free(gdbu);
    free(da2); free(dB2); free(dbu2); free(da3); free(dB3); free(dbu3);
    free(dz); free(dx0); free(dA0); free(dbd0); free(dx); free(dA); free(dbd); free(dzd); free(gdx); free(gdA);
    free(gdbd); free(dx2); free(dA2); free(dbd2); free(dx3); free(dA3); free(dbd3);
}

static void test_lowrank(void)
{
    /* ranks 1, 3, 8, 17, 64; widths off the vector width; N past one
     * 128-row block of the gradient sums, with a short last block */
    lowrank_case(1, 1, 1, 1, 1);
    lowrank_case(1, 70, 37, 16, 1);    /* one or two rows (decoding): the direct dots */
    lowrank_case(2, 33, 50, 32, 1);
    lowrank_case(1, 40, 16, 5, 1);
    lowrank_case(7, 19, 23, 3, 1);
    lowrank_case(45, 70, 9, 1, 1);
    lowrank_case(37, 33, 47, 8, 1);
    lowrank_case(131, 17, 40, 17, 1);
    lowrank_case(257, 385, 129, 64, 0);
    lowrank_case(300, 384, 384, 8, 0);

    /* N = 0 touches nothing */
    float h = 1.0f, dB = 2.0f, db = 3.0f, s[64], one = 1.0f;
    lowrank_up_forward(&h, s, &one, &one, &one, 1.0f, 0, 1, 1);
    lowrank_up_backward(NULL, &dB, &db, s, &one, &one, &one, 1.0f, 0, 1, 1);
    lowrank_down_backward(&h, &dB, &db, s, &one, &one, &one, 0, 1, 1);
    CHECK(h == 1.0f && dB == 2.0f && db == 3.0f, "lowrank kernels with N = 0 change nothing");
}

/* ------------------------------------------------- thread-count independence */

/* Each case fills res with every output of a forward+backward on fixed data
 * big enough to take the kernel's parallel path; returns the count. */
typedef size_t (*tcase)(float *res);

static float *trand(peftc_rng *r, size_t n, float lo, float hi)
{
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * peftc_rng_uniform(r);
    return x;
}
#define TCAP (4u << 20)

static size_t tc_matmul(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 1);
    const int N = 600, IC = 70, OC = 131;
    float *inp = trand(&r, (size_t)N * IC, -1, 1), *w = trand(&r, (size_t)OC * IC, -1, 1);
    float *bias = trand(&r, OC, -1, 1), *dout = trand(&r, (size_t)N * OC, -1, 1);
    float *out = res, *di = out + N * OC, *dw = di + N * IC, *db = dw + OC * IC;
    memset(res, 0, (size_t)(N * OC + N * IC + OC * IC + OC) * sizeof(float));
    matmul_forward(out, inp, w, bias, N, IC, OC, 0);
    matmul_backward(di, dw, db, dout, inp, w, N, IC, OC);
    free(inp); free(w); free(bias); free(dout);
    return (size_t)(N * OC + N * IC + OC * IC + OC);
}

static size_t tc_embeddings(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 2);
    const int V = 50, B = 4, T = 64, C = 200, pos0 = 1;
    int32_t ids[256], types[256];
    for (int i = 0; i < B * T; i++) { ids[i] = (int32_t)peftc_rng_below(&r, V); types[i] = i & 1; }
    float *wte = trand(&r, (size_t)V * C, -1, 1), *wpe = trand(&r, (size_t)(T + pos0) * C, -1, 1);
    float *wtt = trand(&r, 2 * C, -1, 1), *dout = trand(&r, (size_t)B * T * C, -1, 1);
    size_t no = (size_t)B * T * C, n = no + (size_t)(V + T + pos0 + 2) * C;
    memset(res, 0, n * sizeof(float));
    float *gte = res + no, *gpe = gte + V * C, *gtt = gpe + (T + pos0) * C;
    embeddings_forward(res, ids, types, wte, wpe, wtt, B, T, C, pos0);
    embeddings_backward(gte, gpe, gtt, dout, ids, types, B, T, C, pos0);
    free(wte); free(wpe); free(wtt); free(dout);
    return n;
}

static size_t tc_layernorm(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 3);
    const int N = 300, C = 130;
    size_t nx = (size_t)N * C;
    float *x = trand(&r, nx, -2, 3), *w = trand(&r, C, 0, 2), *b = trand(&r, C, -1, 1);
    float *dout = trand(&r, nx, -1, 1);
    memset(res, 0, (2 * nx + 2 * N + 2 * C) * sizeof(float));
    float *out = res, *mean = out + nx, *rstd = mean + N, *di = rstd + N, *dw = di + nx, *db = dw + C;
    layernorm_forward(out, mean, rstd, x, w, b, N, C, 1e-5f);
    layernorm_backward(di, dw, db, dout, x, w, mean, rstd, N, C, 1);
    free(x); free(w); free(b); free(dout);
    return 2 * nx + 2 * N + 2 * C;
}

static size_t tc_elementwise(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 4);
    const size_t n = 100003;
    float *x = trand(&r, n, -4, 4), *dout = trand(&r, n, -1, 1), *g = trand(&r, n, -1, 1);
    memset(res, 0, 14 * n * sizeof(float));
    memcpy(res + 13 * n, dout, n * sizeof(float));
    gelu_backward_inplace(res + 13 * n, x, n);
    relu_forward(res + 9 * n, x, n);
    relu_backward(res + 10 * n, x, dout, n);
    silu_forward(res + 11 * n, x, n);
    silu_backward(res + 12 * n, x, dout, n);
    gelu_forward(res, x, n);
    gelu_backward(res + n, x, dout, n);
    tanh_forward(res + 2 * n, x, n);
    tanh_backward(res + 3 * n, res + 2 * n, dout, n);
    memcpy(res + 4 * n, x, n * sizeof(float));
    add_inplace(res + 4 * n, dout, n);
    axpy_inplace(res + 4 * n, 0.5f, g, n);
    memcpy(res + 5 * n, x, n * sizeof(float));
    l2_normalize_rows(res + 5 * n, 313, 319);
    uint8_t *mask = xcalloc(n, 1);
    for (size_t i = 0; i < n; i++) mask[i] = i % 3 != 0;
    dropout_backward(res + 6 * n, mask, dout, 0.25f, n, 1);
    /* adamw: params, m, v after two steps */
    float *p = res + 7 * n, *m = res + 8 * n, *v = falloc(n);
    memcpy(p, x, n * sizeof(float));
    adamw_update(p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    adamw_update(p, dout, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 2);
    for (size_t i = 0; i < n; i++) m[i] += v[i];
    free(x); free(dout); free(g); free(mask); free(v);
    return 14 * n;
}

static size_t tc_dropout_fwd(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 5);
    const size_t n = 100003;
    float *x = trand(&r, n, -1, 1);
    uint8_t *mask = xcalloc(n, 1);
    dropout_forward(res, mask, x, 0.1f, n, &r);
    for (size_t i = 0; i < n; i++) res[n + i] = mask[i];
    memcpy(res + 2 * n, x, n * sizeof(float));
    dropout_backward_inplace(res + 2 * n, mask, 0.1f, n);
    free(x); free(mask);
    return 3 * n;
}

static size_t tc_attention(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 6);
    const int B = 2, T = 64, NH = 4, hd = 16, C = NH * hd;
    const int lens[2] = { 64, 37 };
    size_t n = (size_t)B * T * C, np = (size_t)B * NH * T * T;
    float *q = trand(&r, n, -1, 1), *k = trand(&r, n, -1, 1), *v = trand(&r, n, -1, 1);
    float *dout = trand(&r, n, -1, 1);
    memset(res, 0, (4 * n + np) * sizeof(float));
    float *out = res, *probs = out + n, *dq = probs + np, *dk = dq + n, *dv = dk + n;
    attention_forward(out, probs, q, k, v, lens, B, T, C, NH);
    attention_backward(dq, dk, dv, dout, probs, q, k, v, lens, B, T, C, NH);
    free(q); free(k); free(v); free(dout);
    return 4 * n + np;
}

static size_t tc_attention_train(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 8);
    const int B = 2, T = 64, NH = 4, hd = 16, C = NH * hd;
    const int lens[2] = { 50, 64 };
    size_t n = (size_t)B * T * C, np = (size_t)B * NH * T * T;
    float *q = trand(&r, n, -1, 1), *k = trand(&r, n, -1, 1), *v = trand(&r, n, -1, 1);
    float *dout = trand(&r, n, -1, 1);
    uint8_t *mask = xcalloc(np, 1);
    memset(res, 0, (4 * n + 2 * np) * sizeof(float));
    float *out = res, *probs = out + n, *dq = probs + np, *dk = dq + n, *dv = dk + n, *mf = dv + n;
    attention_forward_train(out, probs, mask, q, k, v, lens, B, T, C, NH, 0.1f, 1234);
    attention_backward_train(dq, dk, dv, dout, probs, mask, q, k, v, lens, B, T, C, NH, 0.1f);
    for (size_t i = 0; i < np; i++) mf[i] = mask[i];
    free(q); free(k); free(v); free(dout); free(mask);
    return 4 * n + 2 * np;
}

static size_t tc_attention_prefix(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 10);
    const int B = 3, T = 45, P = 20, NH = 4, hd = 19, C = NH * hd, Tk = P + T;
    const int lens[3] = { 45, 30, 0 };
    size_t n = (size_t)B * T * C, nk = (size_t)B * Tk * C, np = (size_t)B * NH * T * Tk;
    float *q = trand(&r, n, -1, 1), *k = trand(&r, nk, -1, 1), *v = trand(&r, nk, -1, 1);
    float *dout = trand(&r, n, -1, 1);
    uint8_t *mask = xcalloc(np, 1);
    size_t total = 2 * n + 2 * nk + 3 * np;
    memset(res, 0, total * sizeof(float));
    float *out = res, *probs = out + n, *dq = probs + np, *dk = dq + n, *dv = dk + nk, *mf = dv + nk;
    float *probs0 = mf + np;
    attention_forward_prefix(out, probs, mask, q, k, v, lens, B, T, P, C, NH, 0.1f, 1234);
    attention_backward_prefix(dq, dk, dv, dout, probs, mask, q, k, v, lens, B, T, P, C, NH, 0.1f);
    for (size_t i = 0; i < np; i++) mf[i] = mask[i];
    float *o0 = falloc(n);
    attention_forward_prefix(o0, probs0, NULL, q, k, v, lens, B, T, P, C, NH, 0.0f, 0);
    attention_backward_prefix(dq, dk, dv, o0, probs0, NULL, q, k, v, lens, B, T, P, C, NH, 0.0f);
    free(q); free(k); free(v); free(dout); free(mask); free(o0);
    return total;
}

static size_t tc_pool_ce(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 7);
    const int B = 4, T = 64, C = 200, K = 300, BC = 128;
    const int lens[4] = { 64, 10, 1, 33 };
    size_t nx = (size_t)B * T * C;
    float *x = trand(&r, nx, -1, 1), *dout = trand(&r, (size_t)B * C, -1, 1);
    float *logits = trand(&r, (size_t)BC * K, -5, 5);
    int labels[128];
    for (int b = 0; b < BC; b++) labels[b] = (int)peftc_rng_below(&r, K);
    size_t n = (size_t)B * C + nx + BC + 2 * (size_t)BC * K + 1;
    memset(res, 0, n * sizeof(float));
    float *o = res, *di = o + B * C, *losses = di + nx, *probs = losses + BC, *dl = probs + BC * K;
    mean_pool_forward(o, x, lens, B, T, C);
    mean_pool_backward(di, dout, lens, B, T, C);
    dl[BC * K] = softmax_ce_forward(losses, probs, logits, labels, BC, K);
    softmax_ce_backward(dl, probs, labels, BC, K, 1.0f / BC);
    free(x); free(dout); free(logits);
    return n;
}

static size_t tc_scaling(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 9);
    const int N = 600, IC = 96, OC = 80;   /* past the parallel threshold; 10 row blocks, the last partial */
    size_t nx = (size_t)N * IC, no = (size_t)N * OC;
    float *x = trand(&r, nx, -1, 1), *u = trand(&r, no, -1, 1), *w = trand(&r, IC, -.3f, .3f);
    float *dh = trand(&r, no, -1, 1), *l = trand(&r, OC, 0.5f, 1.5f);
    float *scratch = falloc(scaling_scratch_floats(N, IC > OC ? IC : OC));
    size_t total = 5 * no + N + nx + IC + 1 + 1 + OC;
    memset(res, 0, total * sizeof(float));
    float *h = res, *du = h + no, *dxs = du + no, *chs = dxs + no, *dch = chs + no, *g = dch + no;
    float *dx = g + N, *dw = dx + nx, *db = dw + IC, *da = db + 1, *dl = da + 1;
    gate_forward(h, g, x, u, w, 0.2f, 2.0f, N, IC, OC);
    gate_backward(du, dx, dw, db, scratch, dh, x, u, g, w, 2.0f, N, IC, OC);
    axpy_backward(dxs, da, scratch, dh, u, 0.5f, N, OC);
    memcpy(chs, u, no * sizeof(float));
    channel_scale_forward(chs, l, N, OC);
    memcpy(dch, dh, no * sizeof(float));
    channel_scale_backward(dch, dl, scratch, u, l, N, OC);
    free(x); free(u); free(w); free(dh); free(l); free(scratch);
    return total;
}

static size_t tc_lowrank(float *res)
{
    peftc_rng r; peftc_rng_seed(&r, 11);
    /* past the parallel threshold; 5 row blocks, the last partial; R = 17: masked tiles */
    const int N = 515, IC = 385, OC = 200, R = 17;
    size_t nx = (size_t)N * IC, nz = (size_t)N * R, nh = (size_t)N * OC;
    float *x = trand(&r, nx, -1, 1), *A = trand(&r, (size_t)R * IC, -.3f, .3f), *bd = trand(&r, R, -.3f, .3f);
    float *B = trand(&r, (size_t)OC * R, -.3f, .3f), *bu = trand(&r, OC, -.3f, .3f), *dh = trand(&r, nh, -1, 1);
    float *scratch = falloc(lowrank_scratch_floats(N, IC, R));
    size_t total = 2 * nz + nh + (size_t)OC * R + OC + nx + (size_t)R * IC + R;
    memset(res, 0, total * sizeof(float));
    float *z = res, *h = z + nz, *da = h + nh, *dB = da + nz, *dbu = dB + (size_t)OC * R, *dx = dbu + OC;
    float *dA = dx + nx, *dbd = dA + (size_t)R * IC;
    lowrank_down_forward(z, scratch, x, A, bd, N, IC, R);
    lowrank_up_forward(h, scratch, z, B, bu, 0.5f, N, R, OC);
    lowrank_up_backward(da, dB, dbu, scratch, dh, z, B, 0.5f, N, R, OC);
    lowrank_down_backward(dx, dA, dbd, scratch, da, x, A, N, IC, R);
    free(x); free(A); free(bd); free(B); free(bu); free(dh); free(scratch);
    return total;
}

static void thread_check(const char *name, tcase f, double tol)
{
    int saved = omp_get_max_threads();
    float *r1 = falloc(TCAP), *r2 = falloc(TCAP);
    omp_set_num_threads(1);
    size_t n1 = f(r1);
    omp_set_num_threads(2);
    int two = omp_get_max_threads() == 2;
    size_t n2 = f(r2);
    omp_set_num_threads(saved);
    double d = n1 == n2 && n1 <= TCAP ? tl_max_abs_diff(r1, r2, n1) : INFINITY;
    CHECK(two && d <= tol, "%s: 1 vs 2 threads agree (max diff %g over %zu values)", name, d, n1);
    free(r1); free(r2);
}

static void test_threads(void)
{
    thread_check("matmul fwd/bwd", tc_matmul, 1e-4);  /* BLAS may split sums differently */
    thread_check("embeddings fwd/bwd", tc_embeddings, 0);
    thread_check("layernorm fwd/bwd", tc_layernorm, 0);
    thread_check("gelu/gelu_inplace/tanh/relu/silu/add/axpy/l2/dropout_bwd/adamw", tc_elementwise, 0);
    thread_check("dropout_forward + dropout_backward_inplace", tc_dropout_fwd, 0);
    thread_check("attention fwd/bwd", tc_attention, 0);
    thread_check("attention_train fwd/bwd + mask", tc_attention_train, 0);
    thread_check("attention_prefix fwd/bwd P=20, with and without dropout", tc_attention_prefix, 0);
    thread_check("mean_pool + softmax_ce fwd/bwd", tc_pool_ce, 0);
    thread_check("gate, axpy_backward, channel_scale fwd/bwd", tc_scaling, 0);
    thread_check("lowrank down/up fwd/bwd", tc_lowrank, 0);
}

int main(void)
{
    int top = kernels_isa_max();
    printf("# CPU supports kernel tiers up to %s\n", kernels_isa_name(top));
    for (int isa = top; isa >= KERNELS_ISA_PORTABLE; isa--) {
        int got = kernels_set_isa(isa);
        tier_name = kernels_isa_name(isa);
        CHECK(got == isa && kernels_isa() == isa, "kernels_set_isa(%s)", tier_name);
        peftc_rng_seed(&rng, 20240601);
        test_matmul();
        test_embeddings();
        test_layernorm();
        test_activations();
        test_gelu_dense();
        test_attention();
        test_attention_train();
        test_attention_prefix();
        test_dropout();
        test_pooling();
        test_softmax_ce();
        test_lm_ce_rows();
        test_adamw();
        test_misc();
        test_gate();
        test_scalings();
        test_lowrank();
        test_threads();
    }
    tier_name = "auto";
    CHECK(kernels_set_isa(KERNELS_ISA_AUTO) <= top && kernels_set_isa(top + 1) == top,
          "kernels_set_isa: AUTO restores the default, a tier above the CPU's is lowered");
    kernels_set_isa(KERNELS_ISA_AUTO);
    test_scratch();
    test_matmul_bf16();
    return tl_finish();
}
