/* delta.c: forward/backward of the unified delta module and its bookkeeping. */
#include "peft/delta.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *site_names[SITE_COUNT] = {
    "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.down", "attn.out", "ffn.out",
};

const char *site_name(site_id s) { return s < SITE_COUNT ? site_names[s] : "?"; }

int site_parse(const char *name, site_id *out)
{
    for (int i = 0; i < SITE_COUNT; i++)
        if (!strcmp(name, site_names[i])) { *out = (site_id)i; return 1; }
    return 0;
}

static const char *act_names[] = {"identity", "relu", "gelu", "silu", "tanh"};

const char *act_name(delta_act a) { return act_names[a]; }

int act_parse(const char *name, delta_act *out)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, act_names[i])) { *out = (delta_act)i; return 1; }
    if (!strcmp(name, "swish")) { *out = ACT_SILU; return 1; }
    return 0;
}

static int decl(param_block *pb, const char *prefix, const char *what, int ndim, int64_t d0, int64_t d1, int no_decay)
{
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    int64_t shape[2] = {d0, d1};
    return params_add(pb, name, ndim, shape, no_decay);
}

peftc_status delta_add(delta_set *ds, param_block *pb, int layer, int in, int out,
                       const delta_spec *spec, const char *prefix, peftc_error *err)
{
    if (spec->r <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: rank r must be positive, got %d", prefix, spec->r);
    if (ds->n == ds->cap) {
        int cap = ds->cap ? 2 * ds->cap : 32;
        delta *d = realloc(ds->d, (size_t)cap * sizeof *d);
        if (!d) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        ds->d = d;
        ds->cap = cap;
    }
    delta *d = &ds->d[ds->n];
    memset(d, 0, sizeof *d);
    d->spec = *spec;
    d->layer = layer;
    d->in = in;
    d->out = out;
    int src_w = spec->insert == INSERT_PARALLEL ? in : out;
    d->p_down = decl(pb, prefix, spec->lora_names ? "lora_A.weight" : "down", 2, spec->r, src_w, 0);
    d->p_up = decl(pb, prefix, spec->lora_names ? "lora_B.weight" : "up", 2, out, spec->r, 0);
    d->p_down_b = spec->bias ? decl(pb, prefix, "down_bias", 1, spec->r, 0, 1) : -1;
    d->p_up_b = spec->bias ? decl(pb, prefix, "up_bias", 1, out, 0, 1) : -1;
    d->p_gate_w = spec->compose == COMPOSE_GATE ? decl(pb, prefix, "gate", 2, 1, in, 0) : -1;
    d->p_gate_b = spec->compose == COMPOSE_GATE ? decl(pb, prefix, "gate_bias", 1, 1, 0, 1) : -1;
    d->p_scale = spec->compose == COMPOSE_LEARNED_SCALE ? decl(pb, prefix, "scale", 1, 1, 0, 1) : -1;
    if (d->p_down < 0 || d->p_up < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    ds->n++;
    return PEFTC_OK;
}

peftc_status delta_index(delta_set *ds, int n_layers, peftc_error *err)
{
    size_t cells = (size_t)n_layers * SITE_COUNT;
    free(ds->site_first); free(ds->site_count); free(ds->order);
    ds->n_layers = n_layers;
    ds->site_first = calloc(cells + 1, sizeof(int));
    ds->site_count = calloc(cells + 1, sizeof(int));
    ds->order = calloc((size_t)ds->n + 1, sizeof(int));
    if (!ds->site_first || !ds->site_count || !ds->order) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < ds->n; i++) {
        if (ds->d[i].layer < 0 || ds->d[i].layer >= n_layers)
            return peftc_fail(err, PEFTC_ERR_INPUT, "delta at layer %d: the model has %d layers", ds->d[i].layer, n_layers);
        ds->site_count[(size_t)ds->d[i].layer * SITE_COUNT + ds->d[i].spec.site]++;
    }
    int pos = 0;
    for (size_t c = 0; c < cells; c++) { ds->site_first[c] = pos; pos += ds->site_count[c]; ds->site_count[c] = 0; }
    for (int i = 0; i < ds->n; i++) { /* stable: declaration order within a site */
        size_t c = (size_t)ds->d[i].layer * SITE_COUNT + ds->d[i].spec.site;
        ds->order[ds->site_first[c] + ds->site_count[c]++] = i;
    }
    return PEFTC_OK;
}

int delta_count(const delta_set *ds, int layer, site_id site)
{
    if (!ds || !ds->site_count || layer >= ds->n_layers) return 0;
    return ds->site_count[(size_t)layer * SITE_COUNT + site];
}

#define R16(x) (((x) + 15) & ~(size_t)15)

peftc_status delta_acts_alloc(delta_set *ds, int N, peftc_error *err)
{
    free(ds->act_block); free(ds->scratch);
    ds->act_block = NULL; ds->scratch = NULL;
    size_t total = 0, maxw = 1, maxr = 1;
    for (int pass = 0; pass < 2; pass++) {
        float *p = ds->act_block;
        for (int i = 0; i < ds->n; i++) {
            delta *d = &ds->d[i];
            const delta_spec *s = &d->spec;
            size_t src_w = s->insert == INSERT_PARALLEL ? (size_t)d->in : (size_t)d->out;
            size_t need = R16((size_t)N * s->r) * (s->act == ACT_IDENTITY ? 1 : 2)
                        + (s->insert == INSERT_SEQUENTIAL ? R16((size_t)N * d->out) : 0)
                        + (s->dropout > 0 ? R16((size_t)N * src_w) + R16((size_t)N * src_w / 4 + 1) : 0)
                        + (s->compose == COMPOSE_GATE || s->compose == COMPOSE_LEARNED_SCALE ? R16((size_t)N * d->out) : 0)
                        + (s->compose == COMPOSE_GATE ? R16((size_t)N) : 0);
            if (pass == 0) {
                total += need;
                if ((size_t)d->in > maxw) maxw = (size_t)d->in;
                if ((size_t)d->out > maxw) maxw = (size_t)d->out;
                if ((size_t)s->r > maxr) maxr = (size_t)s->r;
                continue;
            }
            d->z = p; p += R16((size_t)N * s->r);
            if (s->act == ACT_IDENTITY) d->a = d->z; else { d->a = p; p += R16((size_t)N * s->r); }
            d->src_copy = NULL; d->xd = NULL; d->mask = NULL; d->u = NULL; d->gate = NULL;
            if (s->insert == INSERT_SEQUENTIAL) { d->src_copy = p; p += R16((size_t)N * d->out); }
            if (s->dropout > 0) {
                d->xd = p; p += R16((size_t)N * src_w);
                d->mask = (uint8_t *)p; p += R16((size_t)N * src_w / 4 + 1);
            }
            if (s->compose == COMPOSE_GATE || s->compose == COMPOSE_LEARNED_SCALE) { d->u = p; p += R16((size_t)N * d->out); }
            if (s->compose == COMPOSE_GATE) { d->gate = p; p += R16((size_t)N); }
        }
        if (pass == 0) {
            ds->act_block = peftc_alloc_aligned((total ? total : 16) * sizeof(float));
            /* scratch: du (N,maxw) | dsrc (N,maxw) | da (N,maxr) | dz (N,maxr);
             * the forward's u uses du's slot */
            ds->maxw = maxw;
            ds->maxr = maxr;
            ds->scratch_floats = 2 * R16((size_t)N * maxw) + 2 * R16((size_t)N * maxr);
            ds->scratch = peftc_alloc_aligned(ds->scratch_floats * sizeof(float));
            if (!ds->act_block || !ds->scratch)
                return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate delta activations for %d rows", N);
        }
    }
    ds->N = N;
    return PEFTC_OK;
}

void delta_init_params(delta_set *ds, param_block *pb, peftc_rng *rng)
{
    for (int i = 0; i < ds->n; i++) {
        delta *d = &ds->d[i];
        const param_entry *e = &pb->e[d->p_down];
        float *w = params_value(pb, d->p_down);
        size_t fan_in = (size_t)e->shape[1];
        if (d->spec.init_lora) {
            /* kaiming_uniform(a=sqrt(5)) as torch.nn.Linear and PEFT's lora_A: bound 1/sqrt(fan_in) */
            float bound = 1.0f / sqrtf((float)fan_in);
            for (size_t j = 0; j < e->numel; j++) w[j] = (2.0f * peftc_rng_uniform(rng) - 1.0f) * bound;
        } else {
            /* BERT-style N(0, 0.02^2) as AdapterHub's default "bert" init */
            for (size_t j = 0; j < e->numel; j++) w[j] = 0.02f * peftc_rng_normal(rng);
        }
        /* up = 0 (and zero biases): every delta starts as the identity on h */
        memset(params_value(pb, d->p_up), 0, pb->e[d->p_up].numel * sizeof(float));
        if (d->p_gate_w >= 0) {
            float *g = params_value(pb, d->p_gate_w);
            for (size_t j = 0; j < pb->e[d->p_gate_w].numel; j++) g[j] = 0.02f * peftc_rng_normal(rng);
        }
        if (d->p_scale >= 0) params_value(pb, d->p_scale)[0] = d->spec.scale;
    }
}

void delta_set_free(delta_set *ds)
{
    free(ds->d); free(ds->site_first); free(ds->site_count); free(ds->order);
    free(ds->act_block); free(ds->scratch);
    memset(ds, 0, sizeof *ds);
}

static void act_forward(delta_act act, float *a, const float *z, size_t n)
{
    switch (act) {
    case ACT_IDENTITY: break; /* a aliases z */
    case ACT_RELU: relu_forward(a, z, n); break;
    case ACT_GELU: gelu_forward(a, z, n); break;
    case ACT_SILU: silu_forward(a, z, n); break;
    case ACT_TANH: tanh_forward(a, z, n); break;
    }
}

/* dz = act'(z) * da (not for identity, where dz is da itself) */
static void act_backward(delta_act act, float *dz, const float *z, const float *a, const float *da, size_t n)
{
    memset(dz, 0, n * sizeof(float));
    switch (act) {
    case ACT_IDENTITY: break;
    case ACT_RELU: relu_backward(dz, z, da, n); break;
    case ACT_GELU: gelu_backward(dz, z, da, n); break;
    case ACT_SILU: silu_backward(dz, z, da, n); break;
    case ACT_TANH: tanh_backward(dz, a, da, n); break;
    }
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void delta_forward(delta_set *ds, const param_block *pb, int layer, site_id site,
                   const float *x, float *h, int N, int train, peftc_rng *rng)
{
    size_t cell = (size_t)layer * SITE_COUNT + site;
    int cnt = ds->site_count[cell];
    for (int k = 0; k < cnt; k++) {
        delta *d = &ds->d[ds->order[ds->site_first[cell] + k]];
        const delta_spec *s = &d->spec;
        int src_w = s->insert == INSERT_PARALLEL ? d->in : d->out;
        const float *src = x;
        if (s->insert == INSERT_SEQUENTIAL) {
            memcpy(d->src_copy, h, (size_t)N * d->out * sizeof(float));
            src = d->src_copy;
        }
        if (s->dropout > 0) {
            dropout_forward(d->xd, d->mask, src, train ? s->dropout : 0.0f, (size_t)N * src_w, rng);
            src = d->xd;
        }
        const float *down_b = d->p_down_b >= 0 ? params_value(pb, d->p_down_b) : NULL;
        const float *up_b = d->p_up_b >= 0 ? params_value(pb, d->p_up_b) : NULL;
        matmul_forward(d->z, src, params_value(pb, d->p_down), down_b, N, src_w, s->r, 0);
        act_forward(s->act, d->a, d->z, (size_t)N * s->r);
        float *u = d->u ? d->u : ds->scratch;
        matmul_forward(u, d->a, params_value(pb, d->p_up), up_b, N, s->r, d->out, 0);
        size_t n = (size_t)N * d->out;
        switch (s->compose) {
        case COMPOSE_ADD: add_inplace(h, u, n); break;
        case COMPOSE_SCALE: axpy_inplace(h, s->scale, u, n); break;
        case COMPOSE_LEARNED_SCALE: axpy_inplace(h, params_value(pb, d->p_scale)[0], u, n); break;
        case COMPOSE_GATE: {
            const float *gw = params_value(pb, d->p_gate_w);
            float gb = params_value(pb, d->p_gate_b)[0];
            #pragma omp parallel for schedule(static)
            for (int r = 0; r < N; r++) {
                const float *xr = x + (size_t)r * d->in;
                float acc = gb;
                for (int j = 0; j < d->in; j++) acc += xr[j] * gw[j];
                float g = sigmoidf(acc);
                d->gate[r] = g;
                float *hr = h + (size_t)r * d->out;
                const float *ur = u + (size_t)r * d->out;
                for (int j = 0; j < d->out; j++) hr[j] += g * ur[j];
            }
            break;
        }
        }
    }
}

void delta_backward(delta_set *ds, param_block *pb, int layer, site_id site,
                    const float *x, float *dh, float *dx, int N)
{
    size_t cell = (size_t)layer * SITE_COUNT + site;
    int cnt = ds->site_count[cell];
    for (int k = cnt - 1; k >= 0; k--) {
        delta *d = &ds->d[ds->order[ds->site_first[cell] + k]];
        const delta_spec *s = &d->spec;
        int src_w = s->insert == INSERT_PARALLEL ? d->in : d->out;
        size_t n = (size_t)N * d->out;
        float *du = ds->scratch;
        float *dsrc = du + R16((size_t)ds->N * ds->maxw);
        float *da = dsrc + R16((size_t)ds->N * ds->maxw);
        float *dz = da + R16((size_t)ds->N * ds->maxr);
        switch (s->compose) {
        case COMPOSE_ADD: memcpy(du, dh, n * sizeof(float)); break;
        case COMPOSE_SCALE:
            for (size_t i = 0; i < n; i++) du[i] = s->scale * dh[i];
            break;
        case COMPOSE_LEARNED_SCALE: {
            float sc = params_value(pb, d->p_scale)[0];
            double dsum = 0;
            for (size_t i = 0; i < n; i++) { dsum += (double)dh[i] * d->u[i]; du[i] = sc * dh[i]; }
            params_grad(pb, d->p_scale)[0] += (float)dsum;
            break;
        }
        case COMPOSE_GATE: {
            const float *gw = params_value(pb, d->p_gate_w);
            float *dgw = params_grad(pb, d->p_gate_w);
            double dgb = 0;
            /* per-row gate gradient; dgw accumulated serially so the sum order is fixed */
            for (int r = 0; r < N; r++) {
                const float *dhr = dh + (size_t)r * d->out, *ur = d->u + (size_t)r * d->out;
                float g = d->gate[r], dg = 0;
                for (int j = 0; j < d->out; j++) { dg += dhr[j] * ur[j]; du[(size_t)r * d->out + j] = g * dhr[j]; }
                float dpre = dg * g * (1.0f - g);
                dgb += dpre;
                const float *xr = x + (size_t)r * d->in;
                for (int j = 0; j < d->in; j++) dgw[j] += dpre * xr[j];
                if (dx) {
                    float *dxr = dx + (size_t)r * d->in;
                    for (int j = 0; j < d->in; j++) dxr[j] += dpre * gw[j];
                }
            }
            params_grad(pb, d->p_gate_b)[0] += (float)dgb;
            break;
        }
        }
        float *dup_b = d->p_up_b >= 0 ? params_grad(pb, d->p_up_b) : NULL;
        float *ddown_b = d->p_down_b >= 0 ? params_grad(pb, d->p_down_b) : NULL;
        /* da (N,r) = du @ up; dup += du^T a */
        memset(da, 0, (size_t)N * s->r * sizeof(float));
        matmul_backward(da, params_grad(pb, d->p_up), dup_b, du, d->a, params_value(pb, d->p_up), N, s->r, d->out);
        if (s->act == ACT_IDENTITY) dz = da;
        else act_backward(s->act, dz, d->z, d->a, da, (size_t)N * s->r);
        const float *src = s->dropout > 0 ? d->xd : (s->insert == INSERT_PARALLEL ? x : d->src_copy);
        int need_dsrc = s->insert == INSERT_SEQUENTIAL || dx;
        if (need_dsrc) memset(dsrc, 0, (size_t)N * src_w * sizeof(float));
        matmul_backward(need_dsrc ? dsrc : NULL, params_grad(pb, d->p_down), ddown_b, dz, src,
                        params_value(pb, d->p_down), N, src_w, s->r);
        if (!need_dsrc) continue;
        if (s->dropout > 0) { /* in place: dsrc = mask * dsrc / (1-p) */
            float keep = 1.0f / (1.0f - s->dropout);
            for (size_t i = 0; i < (size_t)N * src_w; i++) dsrc[i] = d->mask[i] ? dsrc[i] * keep : 0.0f;
        }
        if (s->insert == INSERT_SEQUENTIAL) add_inplace(dh, dsrc, n);
        else add_inplace(dx, dsrc, (size_t)N * d->in);
    }
}
