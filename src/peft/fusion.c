/* fusion.c: AdapterFusion's per-layer module over frozen adapters (fusion.h). */
#include "peft/fusion.h"
#include "kernels/kernels.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

uint64_t fusion_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

peftc_status fusion_spec_parse(const char *text, fusion_spec *spec, peftc_error *err)
{
    memset(spec, 0, sizeof *spec);
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters '%s': an empty entry", text);
        if (spec->n >= FUSION_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters: at most %d adapters", FUSION_MAX);
        const char *eq = memchr(p, '=', len);
        char *nm = spec->names[spec->n], *dir = spec->dirs[spec->n];
        size_t nl = eq ? (size_t)(eq - p) : 0, dl = eq ? len - nl - 1 : len;
        if (eq && (nl == 0 || nl >= FUSION_NAME_MAX))
            return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters '%.*s': a name of 1 to %d characters before '='", (int)len, p, FUSION_NAME_MAX - 1);
        if (dl == 0 || dl >= FUSION_DIR_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters '%.*s': no directory, or too long", (int)len, p);
        if (eq) {
            memcpy(nm, p, nl);
            nm[nl] = 0;
            int ok = isalpha((unsigned char)nm[0]) || nm[0] == '_';
            for (size_t i = 1; i < nl; i++) ok = ok && (isalnum((unsigned char)nm[i]) || strchr("_.-", nm[i]));
            if (!ok) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters: '%s' is no adapter name (letters, digits, _ . -, not first a digit)", nm);
        } else {
            snprintf(nm, FUSION_NAME_MAX, "a%d", spec->n);
        }
        memcpy(dir, eq ? eq + 1 : p, dl);
        dir[dl] = 0;
        for (int j = 0; j < spec->n; j++)
            if (!strcmp(spec->names[j], nm)) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapters: the name '%s' is given twice", nm);
        spec->n++;
        p += len;
        if (*p == ',') p++;
    }
    if (spec->n < 2) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion needs at least two adapters, got %d", spec->n);
    return PEFTC_OK;
}

float fusion_temperature(int temperature, long forwards)
{
    if (!temperature) return 1.0f;
    /* BertFusion: T = 50, reduction = T / 1000, T = max(T - reduction, 1)
     * after every forward; here from the count, so a resumed run agrees */
    double t = FUSION_T0 - (double)forwards * (FUSION_T0 / 1000.0);
    return t > 1.0 ? (float)t : 1.0f;
}

/* The one delta of child k at (layer, site), or NULL. */
static const delta *child_delta(const fusion_child *c, int layer, site_id site)
{
    const delta_set *ds = c->ds;
    if (!ds || !ds->site_count || layer < 0 || layer >= ds->n_layers) return NULL;
    size_t cell = (size_t)layer * SITE_COUNT + site;
    if (ds->site_count[cell] != 1) return NULL;
    return &ds->d[ds->order[ds->site_first[cell]]];
}

peftc_status fusion_declare(fusion_module *f, param_block *pb, int n_layers, int C, float dropout,
                            const fusion_child *ch, const char *const *names, int n, peftc_error *err)
{
    memset(f, 0, sizeof *f);
    if (n < 2) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion needs at least two adapters, got %d", n);
    if (n > FUSION_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion: at most %d adapters, got %d", FUSION_MAX, n);
    f->n = n;
    f->L = n_layers;
    f->C = C;
    f->site = SITE_FFN_OUT;
    f->T = 1.0f;
    f->dropout = dropout;
    for (int k = 0; k < n; k++) {
        f->ch[k] = ch[k];
        const delta_set *ds = ch[k].ds;
        /* AdapterHub fuses bottleneck adapters at the FFN output: here, the
         * adapters whose only deltas are one bottleneck per layer at ffn.out,
         * composed by add or a fixed scale (their Jacobian is all backward needs) */
        for (int i = 0; i < ds->n; i++) {
            const delta *d = &ds->d[i];
            const delta_spec *s = &d->spec;
            if (s->site != SITE_FFN_OUT)
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "fusion: adapter '%s' has a delta at %s; fusion fuses bottleneck adapters at ffn.out (adapter-pfeiffer, parallel-adapter, scaled-parallel-adapter)",
                                  names[k], site_name(s->site));
            if (s->kind != DELTA_BOTTLENECK || s->heads > 0 || (s->compose != COMPOSE_ADD && s->compose != COMPOSE_SCALE))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "fusion: adapter '%s' is not a plain bottleneck adapter (a scale, SVD, multi-head, gated or learned-scale delta)", names[k]);
            if (d->in != C || d->out != C)
                return peftc_fail(err, PEFTC_ERR_INPUT, "fusion: adapter '%s' has widths %d -> %d at layer %d, the model %d", names[k], d->in, d->out, d->layer, C);
        }
        for (int l = 0; l < n_layers; l++) {
            int has = ds->site_count && l < ds->n_layers && ds->site_count[(size_t)l * SITE_COUNT + SITE_FFN_OUT] > 0;
            if (has && !child_delta(&ch[k], l, SITE_FFN_OUT))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "fusion: adapter '%s' has several deltas at layer %d ffn.out", names[k], l);
            int has0 = ch[0].ds->site_count && l < ch[0].ds->n_layers && ch[0].ds->site_count[(size_t)l * SITE_COUNT + SITE_FFN_OUT] > 0;
            if (has != has0)
                return peftc_fail(err, PEFTC_ERR_INPUT, "fusion: adapter '%s' %s layer %d, adapter '%s' %s", names[k], has ? "has" : "lacks",
                                  l, names[0], has0 ? "has it" : "does not");
        }
    }
    int *p = malloc((size_t)5 * n_layers * sizeof(int));
    if (!p) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    f->p_qw = p; f->p_qb = p + n_layers; f->p_kw = p + 2 * n_layers; f->p_kb = p + 3 * n_layers; f->p_vw = p + 4 * n_layers;
    int64_t sw[2] = {C, C};
    for (int l = 0; l < n_layers; l++) {
        f->p_qw[l] = f->p_qb[l] = f->p_kw[l] = f->p_kb[l] = f->p_vw[l] = -1;
        if (!child_delta(&ch[0], l, SITE_FFN_OUT)) continue;
        char nm[PARAM_NAME_MAX];
#define DECL(slot, what, nd, nodecay) \
        snprintf(nm, sizeof nm, "fusion.layer.%d.%s", l, what); \
        if ((f->slot[l] = params_add(pb, nm, nd, sw, nodecay)) < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        DECL(p_qw, "query.weight", 2, 0)
        DECL(p_qb, "query.bias", 1, 1)
        DECL(p_kw, "key.weight", 2, 0)
        DECL(p_kb, "key.bias", 1, 1)
        DECL(p_vw, "value.weight", 2, 0)
#undef DECL
        params_set_layer(pb, f->p_qw[l], l);   /* layer l's fusion: its backward alone writes them */
    }
    return PEFTC_OK;
}

void fusion_init_params(fusion_module *f, param_block *pb, peftc_rng *rng)
{
    size_t CC = (size_t)f->C * f->C;
    for (int l = 0; l < f->L; l++) {
        if (f->p_qw[l] < 0) continue;
        /* Adapter.init_bert_weights: N(0, 0.02^2), bias 0 */
        float *qw = params_value(pb, f->p_qw[l]), *kw = params_value(pb, f->p_kw[l]), *vw = params_value(pb, f->p_vw[l]);
        for (size_t i = 0; i < CC; i++) qw[i] = 0.02f * peftc_rng_normal(rng);
        for (size_t i = 0; i < CC; i++) kw[i] = 0.02f * peftc_rng_normal(rng);
        memset(params_value(pb, f->p_qb[l]), 0, (size_t)f->C * sizeof(float));
        memset(params_value(pb, f->p_kb[l]), 0, (size_t)f->C * sizeof(float));
        /* value_initialized: the identity plus 1e-6 everywhere else */
        for (size_t i = 0; i < CC; i++) vw[i] = 1e-6f;
        for (int c = 0; c < f->C; c++) vw[(size_t)c * f->C + c] = 1.0f;
    }
}

void fusion_free(fusion_module *f)
{
    free(f->p_qw);
    free(f->h0); free(f->u); free(f->q); free(f->prob); free(f->keep);
    free(f->kbuf); free(f->vbuf); free(f->dubuf); free(f->tmp); free(f->zbuf);
    free(f->wsum); free(f->wcount);
    memset(f, 0, sizeof *f);
}

peftc_status fusion_acts_alloc(fusion_module *f, int N, peftc_error *err)
{
    if (N <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "fusion: no rows");
    size_t L = (size_t)f->L, n = (size_t)f->n, C = (size_t)f->C, R = (size_t)N;
    /* the largest buffer is L*N*n*C floats: refuse what cannot be addressed */
    if (R > ((size_t)1 << 40) / (L * n * C + 1)) return peftc_fail(err, PEFTC_ERR_NOMEM, "fusion: %d rows too many", N);
    size_t maxr = 1;
    for (int k = 0; k < f->n; k++)
        for (int i = 0; i < f->ch[k].ds->n; i++) if ((size_t)f->ch[k].ds->d[i].spec.r > maxr) maxr = (size_t)f->ch[k].ds->d[i].spec.r;
    free(f->h0); free(f->u); free(f->q); free(f->prob); free(f->keep);
    free(f->kbuf); free(f->vbuf); free(f->dubuf); free(f->tmp); free(f->zbuf);
    f->h0 = peftc_alloc_aligned(L * R * C * sizeof(float));
    f->u = peftc_alloc_aligned(L * R * n * C * sizeof(float));
    f->q = peftc_alloc_aligned(L * R * C * sizeof(float));
    f->prob = malloc(L * R * n * sizeof(float));
    f->keep = malloc(L * R * n);
    f->kbuf = peftc_alloc_aligned(R * n * C * sizeof(float));
    f->vbuf = peftc_alloc_aligned(R * n * C * sizeof(float));
    f->dubuf = peftc_alloc_aligned(R * n * C * sizeof(float));
    f->tmp = peftc_alloc_aligned(R * C * sizeof(float));
    f->zbuf = peftc_alloc_aligned(3 * R * maxr * sizeof(float));
    if (!f->wsum) f->wsum = calloc(L * n, sizeof(double));
    if (!f->wcount) f->wcount = calloc(L, sizeof(int64_t));
    if (!f->h0 || !f->u || !f->q || !f->prob || !f->keep || !f->kbuf || !f->vbuf || !f->dubuf || !f->tmp || !f->zbuf ||
        !f->wsum || !f->wcount)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "fusion: out of memory for %d rows", N);
    f->N = N;
    for (int k = 0; k < f->n; k++) {
        peftc_status rc = delta_acts_alloc(f->ch[k].ds, N, err);
        if (rc) return rc;
    }
    return PEFTC_OK;
}

int fusion_count(const fusion_module *f, int layer, site_id site)
{
    return site == f->site && layer >= 0 && layer < f->L && f->p_qw && f->p_qw[layer] >= 0;
}

static float dotf(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* k_i = u_i Wk^T + bk and v_i = u_i Wv^T for the N*n adapter outputs of a layer */
static void keys_values(fusion_module *f, const param_block *pb, int l, int N)
{
    const float *U = f->u + (size_t)l * f->N * f->n * f->C;
    int rows = N * f->n;
    matmul_forward(f->kbuf, U, params_value(pb, f->p_kw[l]), params_value(pb, f->p_kb[l]), rows, f->C, f->C, 0);
    matmul_forward(f->vbuf, U, params_value(pb, f->p_vw[l]), NULL, rows, f->C, f->C, 0);
}

void fusion_forward(fusion_module *f, const param_block *pb, int l, site_id site, const float *x, float *h,
                    int N, int train, peftc_rng *rng)
{
    if (!fusion_count(f, l, site) || N > f->N) return;
    int n = f->n, C = f->C;
    size_t NC = (size_t)N * C;
    float *H0 = f->h0 + (size_t)l * f->N * C, *U = f->u + (size_t)l * f->N * n * C, *Q = f->q + (size_t)l * f->N * C;
    float *P = f->prob + (size_t)l * f->N * n;
    uint8_t *keep = f->keep + (size_t)l * f->N * n;
    memcpy(H0, h, NC * sizeof(float));
    /* each adapter on its own copy of the sub-layer output: u_k = its change */
    for (int k = 0; k < n; k++) {
        memcpy(f->tmp, H0, NC * sizeof(float));
        delta_forward(f->ch[k].ds, f->ch[k].pb, l, site, x, f->tmp, N, 0, rng, 0);   /* frozen: as at inference */
        for (int i = 0; i < N; i++) {
            float *dst = U + ((size_t)i * n + k) * C;
            const float *a = f->tmp + (size_t)i * C, *b = H0 + (size_t)i * C;
            for (int c = 0; c < C; c++) dst[c] = a[c] - b[c];
        }
    }
    matmul_forward(Q, H0, params_value(pb, f->p_qw[l]), params_value(pb, f->p_qb[l]), N, C, C, 0);
    keys_values(f, pb, l, N);
    float p = train ? f->dropout : 0.0f, inv = p > 0 ? 1.0f / (1.0f - p) : 1.0f, invT = 1.0f / f->T;
    for (int i = 0; i < N; i++) {
        float s[FUSION_MAX], mx = -INFINITY, sum = 0;
        const float *qi = Q + (size_t)i * C;
        for (int k = 0; k < n; k++) {
            s[k] = dotf(qi, f->kbuf + ((size_t)i * n + k) * C, C);
            keep[(size_t)i * n + k] = 1;
            if (p > 0) {
                int kp = peftc_rng_uniform(rng) >= p;
                keep[(size_t)i * n + k] = (uint8_t)kp;
                s[k] = kp ? s[k] * inv : 0.0f;
            }
            s[k] *= invT;
            if (s[k] > mx) mx = s[k];
        }
        for (int k = 0; k < n; k++) { s[k] = expf(s[k] - mx); sum += s[k]; }
        float *hi = h + (size_t)i * C;
        for (int k = 0; k < n; k++) {
            float pk = s[k] / sum;
            P[(size_t)i * n + k] = pk;
            axpy_inplace(hi, pk, f->vbuf + ((size_t)i * n + k) * C, (size_t)C);
        }
    }
    if (f->stats && f->lens && f->Tlen > 0) {
        for (int i = 0; i < N; i++) {
            int b = i / f->Tlen, t = i % f->Tlen;
            if (b >= f->B || t >= f->lens[b]) continue;
            for (int k = 0; k < n; k++) f->wsum[(size_t)l * n + k] += P[(size_t)i * n + k];
            f->wcount[l]++;
        }
    }
}

/* g (N,C) = the gradient w.r.t. a child's change u at this layer; adds its
 * input gradient (through the frozen bottleneck) into dh (sequential: it
 * read h0) or dx (parallel: it read x). */
static void child_backward(fusion_module *f, int k, int l, const float *x, const float *H0, float *g, float *dh,
                           float *dx, int N)
{
    const delta *d = child_delta(&f->ch[k], l, f->site);
    if (!d) return;
    const param_block *pb = f->ch[k].pb;
    const delta_spec *s = &d->spec;
    int r = s->r, C = f->C;
    const float *src = s->insert == INSERT_PARALLEL ? x : H0;
    float *dst = s->insert == INSERT_PARALLEL ? dx : dh;
    if (!dst) return;
    size_t Nr = (size_t)N * r;
    float *z = f->zbuf, *da = z + Nr, *dz = da + Nr;
    if (s->compose == COMPOSE_SCALE) for (size_t i = 0; i < (size_t)N * C; i++) g[i] *= s->scale;
    /* the bottleneck's pre-activation again (the child's buffers are its own) */
    matmul_forward(z, src, params_value(pb, d->p_down), d->p_down_b >= 0 ? params_value(pb, d->p_down_b) : NULL, N, C, r, 0);
    matmul_backward_input(da, g, params_value(pb, d->p_up), N, r, C, 0);
    switch (s->act) {
    case ACT_IDENTITY: memcpy(dz, da, Nr * sizeof(float)); break;
    case ACT_RELU: memset(dz, 0, Nr * sizeof(float)); relu_backward(dz, z, da, Nr); break;
    case ACT_GELU: memset(dz, 0, Nr * sizeof(float)); gelu_backward(dz, z, da, Nr); break;
    case ACT_SILU: memset(dz, 0, Nr * sizeof(float)); silu_backward(dz, z, da, Nr); break;
    case ACT_TANH: tanh_forward(z, z, Nr); memset(dz, 0, Nr * sizeof(float)); tanh_backward(dz, z, da, Nr); break;
    }
    matmul_backward_input(dst, dz, params_value(pb, d->p_down), N, C, r, 1);
}

void fusion_backward(fusion_module *f, param_block *pb, int l, site_id site, const float *x, float *dh,
                     float *dx, int N)
{
    if (!fusion_count(f, l, site) || N > f->N) return;
    int n = f->n, C = f->C;
    const float *H0 = f->h0 + (size_t)l * f->N * C, *U = f->u + (size_t)l * f->N * n * C, *Q = f->q + (size_t)l * f->N * C;
    const float *P = f->prob + (size_t)l * f->N * n;
    const uint8_t *keep = f->keep + (size_t)l * f->N * n;
    keys_values(f, pb, l, N);
    float p = f->dropout, inv = p > 0 ? 1.0f / (1.0f - p) : 1.0f, invT = 1.0f / f->T;
    /* dq into tmp; kbuf becomes dK and vbuf dV, row by row, once read */
    float *dq = f->tmp;
    for (int i = 0; i < N; i++) {
        const float *gi = dh + (size_t)i * C, *qi = Q + (size_t)i * C;
        float dp[FUSION_MAX], dsum = 0;
        for (int k = 0; k < n; k++) {
            float *vk = f->vbuf + ((size_t)i * n + k) * C;
            float pk = P[(size_t)i * n + k];
            dp[k] = dotf(gi, vk, C);
            dsum += pk * dp[k];
            for (int c = 0; c < C; c++) vk[c] = pk * gi[c];   /* dV */
        }
        float *dqi = dq + (size_t)i * C;
        memset(dqi, 0, (size_t)C * sizeof(float));
        for (int k = 0; k < n; k++) {
            float ds = P[(size_t)i * n + k] * (dp[k] - dsum) * invT;
            /* through the scores' dropout (a dropped score is 0 before the softmax) */
            ds = keep[(size_t)i * n + k] ? ds * inv : 0.0f;
            float *kk = f->kbuf + ((size_t)i * n + k) * C;
            axpy_inplace(dqi, ds, kk, (size_t)C);
            for (int c = 0; c < C; c++) kk[c] = ds * qi[c];   /* dK */
        }
    }
    int rows = N * n;
    memset(f->dubuf, 0, (size_t)rows * C * sizeof(float));
    matmul_backward(f->dubuf, params_grad(pb, f->p_kw[l]), params_grad(pb, f->p_kb[l]), f->kbuf, U, params_value(pb, f->p_kw[l]), rows, C, C);
    matmul_backward(f->dubuf, params_grad(pb, f->p_vw[l]), NULL, f->vbuf, U, params_value(pb, f->p_vw[l]), rows, C, C);
    /* dh already holds the residual's gradient; the query's path adds to it */
    matmul_backward(dh, params_grad(pb, f->p_qw[l]), params_grad(pb, f->p_qb[l]), dq, H0, params_value(pb, f->p_qw[l]), N, C, C);
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < N; i++) memcpy(f->tmp + (size_t)i * C, f->dubuf + ((size_t)i * n + k) * C, (size_t)C * sizeof(float));
        child_backward(f, k, l, x, H0, f->tmp, dh, dx, N);
    }
}

double fusion_regularize(const fusion_module *f, param_block *pb)
{
    double loss = 0;
    for (int l = 0; l < f->L; l++) {
        if (f->p_vw[l] < 0) continue;
        const float *w = params_value(pb, f->p_vw[l]);
        float *g = params_grad(pb, f->p_vw[l]);
        for (int r = 0; r < f->C; r++)
            for (int c = 0; c < f->C; c++) {
                size_t i = (size_t)r * f->C + c;
                double e = (double)w[i] - (r == c ? 1.0 : 0.0);
                loss += FUSION_REG * e * e;
                g[i] += (float)(2.0 * FUSION_REG * e);
            }
    }
    return loss;
}
