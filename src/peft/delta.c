/* delta.c: forward/backward of the unified delta module and its bookkeeping. */
#include "peft/delta.h"
#include "kernels/kernels.h"
#include "peft/compose.h"
#include "peft/fusion.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *site_names[SITE_COUNT] = {
    "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.down", "attn.out", "ffn.out", "attn.heads", "ffn.act",
    "ffn.gate", "ffn.up",
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
    if (spec->kind == DELTA_BOTTLENECK && spec->r <= 0)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: rank r must be positive, got %d", prefix, spec->r);
    if (spec->heads > 0 && (out % spec->heads || spec->insert != INSERT_PARALLEL))
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: a multi-head delta needs a parallel insertion and a width divisible by heads", prefix);
    if (ds->n == ds->cap) {
        int cap = ds->cap ? 2 * ds->cap : 32;
        delta *d = realloc(ds->d, (size_t)cap * sizeof *d);
        if (!d) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        ds->d = d;
        ds->cap = cap;
    }
    delta *d = &ds->d[ds->n];
    int first = pb->n;   /* this delta's tensors: layer's alone */
    memset(d, 0, sizeof *d);
    d->spec = *spec;
    d->layer = layer;
    d->in = in;
    d->out = out;
    d->p_down = d->p_up = d->p_down_b = d->p_up_b = d->p_gate_w = d->p_gate_b = d->p_scale = d->p_vec = d->p_sv = -1;
    if (spec->kind == DELTA_SVD) {
        if (spec->insert != INSERT_PARALLEL || spec->heads > 0)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: an SVD delta is parallel and single-head", prefix);
        /* PEFT's AdaLoRA keys (ParameterDicts: no ".weight") in its declaration order A, B, E */
        d->p_down = decl(pb, prefix, "lora_A", 2, spec->r, in, 0);
        d->p_up = decl(pb, prefix, "lora_B", 2, out, spec->r, 0);
        d->p_sv = decl(pb, prefix, "lora_E", 2, spec->r, 1, 0);
        if (d->p_down < 0 || d->p_up < 0 || d->p_sv < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        params_set_layer(pb, first, layer);
        ds->n++;
        return PEFTC_OK;
    }
    if (spec->kind == DELTA_SCALE) {
        /* PEFT's (IA)^3 shapes: [1, in] for feed-forward inputs, [out, 1] otherwise */
        d->p_vec = spec->site == SITE_FFN_ACT ? decl(pb, prefix, "ia3_l", 2, 1, out, 1) : decl(pb, prefix, "ia3_l", 2, out, 1, 1);
        if (d->p_vec < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        params_set_layer(pb, first, layer);
        ds->n++;
        return PEFTC_OK;
    }
    int src_w = spec->insert == INSERT_PARALLEL ? in : out;
    int r_all = spec->heads > 0 ? spec->heads * spec->r : spec->r;
    d->p_down = decl(pb, prefix, spec->lora_names ? "lora_A.weight" : "down", 2, r_all, src_w, 0);
    d->p_up = decl(pb, prefix, spec->lora_names ? "lora_B.weight" : "up", 2, out, spec->r, 0);
    d->p_down_b = spec->bias ? decl(pb, prefix, "down_bias", 1, r_all, 0, 1) : -1;
    d->p_up_b = spec->bias ? decl(pb, prefix, "up_bias", 1, out, 0, 1) : -1;
    d->p_gate_w = spec->compose == COMPOSE_GATE ? decl(pb, prefix, "gate", 2, 1, in, 0) : -1;
    d->p_gate_b = spec->compose == COMPOSE_GATE ? decl(pb, prefix, "gate_bias", 1, 1, 0, 1) : -1;
    d->p_scale = spec->compose == COMPOSE_LEARNED_SCALE ? decl(pb, prefix, "scale", 1, 1, 0, 1) : -1;
    if (d->p_down < 0 || d->p_up < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    params_set_layer(pb, first, layer);
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
    if (ds && ds->comp) return compose_count(ds->comp, layer, site);
    if (ds && ds->fuse) return fusion_count(ds->fuse, layer, site);
    if (!ds || !ds->site_count || layer >= ds->n_layers || layer < ds->skip_below) return 0;
    return ds->site_count[(size_t)layer * SITE_COUNT + site];
}

#define R16(x) (((x) + 15) & ~(size_t)15)

/* A single-head bottleneck of rank <= LOWRANK_MAX_R composed by a fixed
 * scale (add: 1) runs on the lowrank kernels: the up-projection adds s u
 * into h as it forms u, and its backward reads dh once for da, dup and the
 * bias. Gated and learned-scale compositions need u itself (the gate and the
 * scale's gradient read it) and stay on matmul_forward/backward, as do
 * multi-head deltas (block-diagonal up-projection). */
static int delta_lowrank(const delta_spec *s)
{
    return s->kind == DELTA_BOTTLENECK && s->heads == 0 && s->r <= LOWRANK_MAX_R &&
           (s->compose == COMPOSE_ADD || s->compose == COMPOSE_SCALE);
}

/* An SVD delta keeps both z = x A^T and a = z * E (E's gradient reads z,
 * B's reads a); it runs on the lowrank kernels up to LOWRANK_MAX_R. */
static int delta_two_acts(const delta_spec *s) { return s->act != ACT_IDENTITY || s->kind == DELTA_SVD; }
static int svd_lowrank(const delta_spec *s) { return s->kind == DELTA_SVD && s->r <= LOWRANK_MAX_R; }

/* The floats a delta keeps for its backward at N rows, and their layout. */
static size_t delta_need(const delta *d, size_t N)
{
    const delta_spec *s = &d->spec;
    size_t r_all = s->kind == DELTA_SCALE ? 0 : (size_t)(s->heads > 0 ? s->heads * s->r : s->r);
    if (s->kind == DELTA_SCALE) return R16(N * d->out);   /* only the h before scaling, for the factors' gradient */
    return R16(N * r_all) * (delta_two_acts(s) ? 2 : 1)
           + (s->insert == INSERT_SEQUENTIAL ? R16(N * d->out) : 0)
           + (s->compose == COMPOSE_GATE || s->compose == COMPOSE_LEARNED_SCALE ? R16(N * d->out) : 0)
           + (s->compose == COMPOSE_GATE ? R16(N) : 0);
}

static void delta_bind_acts(delta *d, float *p, size_t N)
{
    const delta_spec *s = &d->spec;
    size_t r_all = s->kind == DELTA_SCALE ? 0 : (size_t)(s->heads > 0 ? s->heads * s->r : s->r);
    if (s->kind == DELTA_SCALE) { d->src_copy = p; return; }
    d->z = p; p += R16(N * r_all);
    if (!delta_two_acts(s)) d->a = d->z; else { d->a = p; p += R16(N * r_all); }
    d->src_copy = NULL; d->u = NULL; d->gate = NULL;
    if (s->insert == INSERT_SEQUENTIAL) { d->src_copy = p; p += R16(N * d->out); }
    if (s->compose == COMPOSE_GATE || s->compose == COMPOSE_LEARNED_SCALE) { d->u = p; p += R16(N * d->out); }
    if (s->compose == COMPOSE_GATE) d->gate = p;
}

peftc_status delta_acts_alloc(delta_set *ds, int N, peftc_error *err)
{
    return delta_acts_alloc_ex(ds, N, 0, err);
}

peftc_status delta_acts_alloc_ex(delta_set *ds, int N, int one_layer, peftc_error *err)
{
    free(ds->act_block); free(ds->scratch);
    ds->act_block = NULL; ds->scratch = NULL;
    size_t maxw = 1, maxr = 1;
    int lr_r = 0;   /* the largest rank on the lowrank kernels */
    /* each delta's region: its own, or (one_layer) the k-th delta of every
     * layer shares one region, as large as the largest of them */
    int n = ds->n > 0 ? ds->n : 1;
    int *slot = malloc((size_t)n * sizeof *slot), *seen = calloc((size_t)(ds->n_layers > 0 ? ds->n_layers : 1) + 1, sizeof *seen);
    size_t *size = calloc((size_t)n, sizeof *size);
    if (!slot || !seen || !size) { free(slot); free(seen); free(size); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    int n_slots = 0;
    for (int i = 0; i < ds->n; i++) {
        delta *d = &ds->d[i];
        const delta_spec *s = &d->spec;
        int li = d->layer >= 0 && d->layer < ds->n_layers ? d->layer : ds->n_layers;   /* out of range: a layer of its own */
        slot[i] = one_layer ? seen[li]++ : i;
        if (slot[i] + 1 > n_slots) n_slots = slot[i] + 1;
        size_t need = delta_need(d, (size_t)N);
        if (need > size[slot[i]]) size[slot[i]] = need;
        if ((size_t)d->in > maxw) maxw = (size_t)d->in;
        if ((size_t)d->out > maxw) maxw = (size_t)d->out;
        size_t r_all = s->kind == DELTA_SCALE ? 0 : (size_t)(s->heads > 0 ? s->heads * s->r : s->r);
        if (r_all > maxr) maxr = r_all;
        if (s->kind != DELTA_SCALE && (delta_lowrank(s) || svd_lowrank(s)) && s->r > lr_r) lr_r = s->r;
    }
    size_t total = 0;
    for (int k = 0; k < n_slots; k++) { size_t z = size[k]; size[k] = total; total += z; }   /* sizes -> offsets */
    ds->act_block = peftc_alloc_aligned((total ? total : 16) * sizeof(float));
    /* scratch: du (N,maxw) | dsrc (N,maxw) | da (N,maxr) | dz (N,maxr) |
     * the row-block partial sums of the scaling or lowrank kernels;
     * the forward's u uses du's slot */
    ds->maxw = maxw;
    ds->maxr = maxr;
    size_t part = scaling_scratch_floats(N, (int)maxw);
    size_t lr = lr_r > 0 ? lowrank_scratch_floats(N, (int)maxw, lr_r) : 0;
    ds->scratch_floats = 2 * R16((size_t)N * maxw) + 2 * R16((size_t)N * maxr) + (part > lr ? part : lr);
    ds->scratch = peftc_alloc_aligned(ds->scratch_floats * sizeof(float));
    if (ds->act_block && ds->scratch)
        for (int i = 0; i < ds->n; i++) delta_bind_acts(&ds->d[i], ds->act_block + size[slot[i]], (size_t)N);
    free(slot); free(seen); free(size);
    if (!ds->act_block || !ds->scratch)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate delta activations for %d rows", N);
    ds->N = N;
    return PEFTC_OK;
}

void delta_init_params(delta_set *ds, param_block *pb, peftc_rng *rng)
{
    for (int i = 0; i < ds->n; i++) {
        delta *d = &ds->d[i];
        if (d->spec.kind == DELTA_SCALE) { /* (IA)^3 starts as the identity */
            float *l = params_value(pb, d->p_vec);
            for (size_t j = 0; j < pb->e[d->p_vec].numel; j++) l[j] = 1.0f;
            continue;
        }
        if (d->spec.kind == DELTA_SVD) { /* PEFT's AdaLoRA: E = 0, A and B ~ N(0, 0.02^2) (A first, then B) */
            float *a = params_value(pb, d->p_down), *b = params_value(pb, d->p_up);
            for (size_t j = 0; j < pb->e[d->p_down].numel; j++) a[j] = 0.02f * peftc_rng_normal(rng);
            for (size_t j = 0; j < pb->e[d->p_up].numel; j++) b[j] = 0.02f * peftc_rng_normal(rng);
            memset(params_value(pb, d->p_sv), 0, pb->e[d->p_sv].numel * sizeof(float));
            continue;
        }
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
    free(ds->act_block); free(ds->scratch); free(ds->bf16_block);
    memset(ds, 0, sizeof *ds);
}

static int delta_bf16_form(const delta *d)
{
    return delta_lowrank(&d->spec) && d->spec.insert == INSERT_PARALLEL && d->spec.act == ACT_IDENTITY &&
           d->p_down_b < 0 && d->p_up_b < 0;
}

peftc_status delta_set_freeze_bf16(delta_set *ds, const param_block *pb, peftc_error *err)
{
    size_t total = 0;
    for (int i = 0; i < ds->n; i++)
        if (delta_bf16_form(&ds->d[i])) total += (size_t)ds->d[i].spec.r * ((size_t)ds->d[i].in + ds->d[i].out);
    free(ds->bf16_block);
    ds->bf16_block = NULL;
    if (!total) return PEFTC_OK;
    if (!(ds->bf16_block = malloc(total * sizeof *ds->bf16_block)))
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory (bf16 copies of the adapters' factors, %zu bytes)",
                          total * sizeof *ds->bf16_block);
    uint16_t *p = ds->bf16_block;
    for (int i = 0; i < ds->n; i++) {
        delta *d = &ds->d[i];
        if (!delta_bf16_form(d)) continue;
        int r = d->spec.r;
        d->a16 = p; p += (size_t)r * d->in;
        d->bt16 = p; p += (size_t)r * d->out;
        lowrank_bf16_pack(d->a16, d->bt16, params_value(pb, d->p_down), params_value(pb, d->p_up), d->in, r, d->out);
    }
    return PEFTC_OK;
}

int delta_cols_ready(const delta_set *ds, int layer, site_id site, int N)
{
    if (ds->comp || ds->fuse || N > 2 || layer < ds->skip_below) return 0;
    size_t cell = (size_t)layer * SITE_COUNT + site;
    int cnt = ds->site_count[cell];
    for (int k = 0; k < cnt; k++)
        if (!ds->d[ds->order[ds->site_first[cell] + k]].a16) return 0;
    return cnt > 0;
}

void delta_forward_cols(const delta_set *ds, int layer, site_id site, const float *x, float *h, int N,
                        int o_lo, int o_hi)
{
    size_t cell = (size_t)layer * SITE_COUNT + site;
    for (int k = 0; k < ds->site_count[cell]; k++) {
        const delta *d = &ds->d[ds->order[ds->site_first[cell] + k]];
        const delta_spec *s = &d->spec;
        float alpha = s->compose == COMPOSE_SCALE ? s->scale : 1.0f;
        for (int n = 0; n < N; n++)
            lowrank_row_bf16(h + (size_t)n * d->out, x + (size_t)n * d->in, d->a16, d->bt16, alpha, d->in, s->r,
                             d->out, o_lo, o_hi);
    }
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

/* u (N,W) += bias (W) on every row */
static void add_bias_rows(float *u, const float *bias, int N, int W)
{
    #pragma omp parallel for schedule(static) if ((size_t)N * W >= (1u << 16))
    for (int n = 0; n < N; n++) {
        float *ur = u + (size_t)n * W;
        #pragma omp simd
        for (int j = 0; j < W; j++) ur[j] += bias[j];
    }
}

/* Multi-head up-projection: head g maps a[:, g*r:(g+1)*r] through its
 * block up[g*hd:(g+1)*hd, :] (hd,r) to u[:, g*hd:(g+1)*hd]. */
static void up_heads_forward(float *u, const float *a, const float *up, const float *bias, int N, int heads, int r, int out)
{
    int hd = out / heads;
    for (int g = 0; g < heads; g++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, hd, r, 1.0f, a + (size_t)g * r, heads * r,
                    up + (size_t)g * hd * r, r, 0.0f, u + (size_t)g * hd, out);
    if (bias) add_bias_rows(u, bias, N, out);
}

static void up_heads_backward(float *da, float *dup, float *dbias, const float *du, const float *a, const float *up,
                              int N, int heads, int r, int out)
{
    int hd = out / heads;
    for (int g = 0; g < heads; g++) {
        /* da_g (N,r) += du_g (N,hd) @ up_g (hd,r); dup_g (hd,r) += du_g^T a_g */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, hd, 1.0f, du + (size_t)g * hd, out,
                    up + (size_t)g * hd * r, r, 1.0f, da + (size_t)g * r, heads * r);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, r, N, 1.0f, du + (size_t)g * hd, out,
                    a + (size_t)g * r, heads * r, 1.0f, dup + (size_t)g * hd * r, r);
    }
    if (dbias) bias_backward(dbias, du, N, out);
}

/* the scratch's last region: row-block partial sums (scaling, lowrank kernels) */
static float *delta_partials(const delta_set *ds)
{
    return ds->scratch + 2 * R16((size_t)ds->N * ds->maxw) + 2 * R16((size_t)ds->N * ds->maxr);
}

/* AdaLoRA's SVDLinear: h += s * ((src A^T) * E^T) B^T, s = alpha / (ranknum + 1e-5).
 * z (N,r) = src A^T; a = z with column k times E_k; then the up-projection. */
static void svd_forward(delta_set *ds, const param_block *pb, delta *d, const float *src, float *h, int N)
{
    const delta_spec *s = &d->spec;
    const float *A = params_value(pb, d->p_down), *B = params_value(pb, d->p_up), *E = params_value(pb, d->p_sv);
    int r = s->r;
    float *lr_scratch = delta_partials(ds);
    if (svd_lowrank(s)) lowrank_down_forward(d->z, lr_scratch, src, A, NULL, N, d->in, r);
    else matmul_forward(d->z, src, A, NULL, N, d->in, r, 0);
    for (int n = 0; n < N; n++) {
        const float *zr = d->z + (size_t)n * r;
        float *ar = d->a + (size_t)n * r;
        for (int k = 0; k < r; k++) ar[k] = zr[k] * E[k];
    }
    if (svd_lowrank(s)) { lowrank_up_forward(h, lr_scratch, d->a, B, NULL, s->scale, N, r, d->out); return; }
    float *u = ds->scratch;
    matmul_forward(u, d->a, B, NULL, N, r, d->out, 0);
    axpy_inplace(h, s->scale, u, (size_t)N * d->out);
}

/* Backward of svd_forward: da = s dh B, dB += s dh^T a; dE_k += sum_n da z;
 * dz = da * E; dA += dz^T src; dx += dz A (through the dropout mask). */
static void svd_backward(delta_set *ds, param_block *pb, delta *d, const float *src, const float *dh, float *dx, int N)
{
    const delta_spec *s = &d->spec;
    const float *A = params_value(pb, d->p_down), *B = params_value(pb, d->p_up), *E = params_value(pb, d->p_sv);
    float *dA = params_grad(pb, d->p_down), *dB = params_grad(pb, d->p_up), *dE = params_grad(pb, d->p_sv);
    int r = s->r;
    float *du = ds->scratch;
    float *dsrc = du + R16((size_t)ds->N * ds->maxw);
    float *da = dsrc + R16((size_t)ds->N * ds->maxw);
    float *dz = da + R16((size_t)ds->N * ds->maxr);
    float *partials = delta_partials(ds);
    if (svd_lowrank(s)) {
        lowrank_up_backward(da, dB, NULL, partials, dh, d->a, B, s->scale, N, r, d->out);
    } else {
        axpy_backward(du, NULL, NULL, dh, NULL, s->scale, N, d->out);
        memset(da, 0, (size_t)N * r * sizeof(float));
        matmul_backward(da, dB, NULL, du, d->a, B, N, r, d->out);
    }
    /* E's gradient summed in double over rows in order: independent of threads */
    for (int k = 0; k < r; k++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)da[(size_t)n * r + k] * d->z[(size_t)n * r + k];
        dE[k] += (float)acc;
    }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) dz[(size_t)n * r + k] = da[(size_t)n * r + k] * E[k];
    float *dgrad = dx;
    if (d->drop_p > 0) {   /* the dropped src again, into du (free from here) */
        dropout_forward_key(du, src, d->drop_p, (size_t)N * d->in, d->drop_key);
        src = du;
        if (dx) {
            dgrad = dsrc;
            memset(dsrc, 0, (size_t)N * d->in * sizeof(float));
        }
    }
    if (svd_lowrank(s)) lowrank_down_backward(dgrad, dA, NULL, partials, dz, src, A, N, d->in, r);
    else matmul_backward(dgrad, dA, NULL, dz, src, A, N, d->in, r);
    if (dgrad != dx) dropout_backward_key(dx, dsrc, d->drop_p, (size_t)N * d->in, d->drop_key, 1);
}

void delta_forward(delta_set *ds, const param_block *pb, int layer, site_id site,
                   const float *x, float *h, int N, int train, peftc_rng *rng, int64_t tok0)
{
    if (ds->comp) { compose_forward(ds->comp, layer, site, x, h, N, train, rng); return; }
    if (ds->fuse) { fusion_forward(ds->fuse, pb, layer, site, x, h, N, train, rng); return; }
    size_t cell = (size_t)layer * SITE_COUNT + site;
    int cnt = ds->site_count[cell];
    for (int k = 0; k < cnt; k++) {
        delta *d = &ds->d[ds->order[ds->site_first[cell] + k]];
        const delta_spec *s = &d->spec;
        if (s->kind == DELTA_SCALE) {
            memcpy(d->src_copy, h, (size_t)N * d->out * sizeof(float));
            channel_scale_forward(h, params_value(pb, d->p_vec), N, d->out);
            continue;
        }
        int src_w = s->insert == INSERT_PARALLEL ? d->in : d->out;
        const float *src = x;
        if (s->insert == INSERT_SEQUENTIAL) {
            memcpy(d->src_copy, h, (size_t)N * d->out * sizeof(float));
            src = d->src_copy;
        }
        d->drop_p = 0;
        if (s->dropout > 0) {
            /* one draw whatever N; the mask at this batch's offset in the whole batch (model_run.row0) */
            float p = train ? s->dropout : 0.0f;
            uint64_t key = p > 0 && p < 1 ? dropout_key_at(peftc_rng_u64(rng), (uint64_t)tok0 * (uint64_t)src_w) : 0;
            if (p > 0) {   /* into the scratch's dsrc slot (the forward's u takes du's) */
                float *xd = ds->scratch + R16((size_t)ds->N * ds->maxw);
                dropout_forward_key(xd, src, p, (size_t)N * src_w, key);
                src = xd;
                d->drop_p = p;
                d->drop_key = key;
            }
        }
        if (s->kind == DELTA_SVD) {
            svd_forward(ds, pb, d, src, h, N);
            continue;
        }
        const float *down_b = d->p_down_b >= 0 ? params_value(pb, d->p_down_b) : NULL;
        const float *up_b = d->p_up_b >= 0 ? params_value(pb, d->p_up_b) : NULL;
        if (d->a16 && !train && N <= 2) {   /* decoding (delta_set_freeze_bf16) */
            float alpha = s->compose == COMPOSE_SCALE ? s->scale : 1.0f;
            for (int n = 0; n < N; n++)
                lowrank_row_bf16(h + (size_t)n * d->out, src + (size_t)n * src_w, d->a16, d->bt16, alpha, src_w,
                                 s->r, d->out, 0, d->out);
            continue;
        }
        if (delta_lowrank(s)) {
            float *lr_scratch = delta_partials(ds);
            lowrank_down_forward(d->z, lr_scratch, src, params_value(pb, d->p_down), down_b, N, src_w, s->r);
            act_forward(s->act, d->a, d->z, (size_t)N * s->r);
            lowrank_up_forward(h, lr_scratch, d->a, params_value(pb, d->p_up), up_b,
                               s->compose == COMPOSE_SCALE ? s->scale : 1.0f, N, s->r, d->out);
            continue;
        }
        int r_all = s->heads > 0 ? s->heads * s->r : s->r;
        matmul_forward(d->z, src, params_value(pb, d->p_down), down_b, N, src_w, r_all, 0);
        act_forward(s->act, d->a, d->z, (size_t)N * r_all);
        float *u = d->u ? d->u : ds->scratch;
        if (s->heads > 0) up_heads_forward(u, d->a, params_value(pb, d->p_up), up_b, N, s->heads, s->r, d->out);
        else matmul_forward(u, d->a, params_value(pb, d->p_up), up_b, N, s->r, d->out, 0);
        size_t n = (size_t)N * d->out;
        switch (s->compose) {
        case COMPOSE_ADD: add_inplace(h, u, n); break;
        case COMPOSE_SCALE: axpy_inplace(h, s->scale, u, n); break;
        case COMPOSE_LEARNED_SCALE: axpy_inplace(h, params_value(pb, d->p_scale)[0], u, n); break;
        case COMPOSE_GATE:
            gate_forward(h, d->gate, x, u, params_value(pb, d->p_gate_w), params_value(pb, d->p_gate_b)[0],
                         s->scale, N, d->in, d->out);
            break;
        }
    }
}

void delta_backward(delta_set *ds, param_block *pb, int layer, site_id site,
                    const float *x, float *dh, float *dx, int N)
{
    if (ds->comp) return;   /* inference only (delta.h) */
    if (ds->fuse) { fusion_backward(ds->fuse, pb, layer, site, x, dh, dx, N); return; }
    size_t cell = (size_t)layer * SITE_COUNT + site;
    int cnt = ds->site_count[cell];
    for (int k = cnt - 1; k >= 0; k--) {
        delta *d = &ds->d[ds->order[ds->site_first[cell] + k]];
        const delta_spec *s = &d->spec;
        float *du = ds->scratch;
        float *dsrc = du + R16((size_t)ds->N * ds->maxw);
        float *da = dsrc + R16((size_t)ds->N * ds->maxw);
        float *dz = da + R16((size_t)ds->N * ds->maxr);
        float *partials = delta_partials(ds);
        if (s->kind == DELTA_SCALE) {
            channel_scale_backward(dh, params_grad(pb, d->p_vec), partials, d->src_copy, params_value(pb, d->p_vec),
                                   N, d->out);
            continue;
        }
        int src_w = s->insert == INSERT_PARALLEL ? d->in : d->out;
        int r_all = s->heads > 0 ? s->heads * s->r : s->r;
        size_t n = (size_t)N * d->out;
        float *dup_b = d->p_up_b >= 0 ? params_grad(pb, d->p_up_b) : NULL;
        float *ddown_b = d->p_down_b >= 0 ? params_grad(pb, d->p_down_b) : NULL;
        /* the source before dropout: dropout is applied again below from its key */
        const float *src = s->insert == INSERT_PARALLEL ? x : d->src_copy;
        if (s->kind == DELTA_SVD) {
            svd_backward(ds, pb, d, src, dh, dx, N);
            continue;
        }
        if (delta_lowrank(s)) {
            lowrank_up_backward(da, params_grad(pb, d->p_up), dup_b, partials, dh, d->a, params_value(pb, d->p_up),
                                s->compose == COMPOSE_SCALE ? s->scale : 1.0f, N, s->r, d->out);
            if (s->act == ACT_IDENTITY) dz = da;
            else act_backward(s->act, dz, d->z, d->a, da, (size_t)N * s->r);
            /* the source's gradient: sequential deltas add it to dh (read
             * for the last time above), parallel ones to dx */
            float *dtarget = s->insert == INSERT_SEQUENTIAL ? dh : dx;
            float *dgrad = dtarget;
            if (d->drop_p > 0) {   /* the dropped src again (du is unused on this path) */
                dropout_forward_key(du, src, d->drop_p, (size_t)N * src_w, d->drop_key);
                src = du;
                if (dtarget) {   /* through the dropout mask first */
                    dgrad = dsrc;
                    memset(dsrc, 0, (size_t)N * src_w * sizeof(float));
                }
            }
            lowrank_down_backward(dgrad, params_grad(pb, d->p_down), ddown_b, partials, dz, src,
                                  params_value(pb, d->p_down), N, src_w, s->r);
            if (dgrad != dtarget) dropout_backward_key(dtarget, dsrc, d->drop_p, (size_t)N * src_w, d->drop_key, 1);
            continue;
        }
        switch (s->compose) {
        case COMPOSE_ADD: memcpy(du, dh, n * sizeof(float)); break;
        case COMPOSE_SCALE: axpy_backward(du, NULL, NULL, dh, NULL, s->scale, N, d->out); break;
        case COMPOSE_LEARNED_SCALE:
            axpy_backward(du, params_grad(pb, d->p_scale), partials, dh, d->u, params_value(pb, d->p_scale)[0],
                          N, d->out);
            break;
        case COMPOSE_GATE:
            gate_backward(du, dx, params_grad(pb, d->p_gate_w), params_grad(pb, d->p_gate_b), partials, dh, x, d->u,
                          d->gate, params_value(pb, d->p_gate_w), s->scale, N, d->in, d->out);
            break;
        }
        /* da (N,r) = du @ up; dup += du^T a */
        memset(da, 0, (size_t)N * r_all * sizeof(float));
        if (s->heads > 0)
            up_heads_backward(da, params_grad(pb, d->p_up), dup_b, du, d->a, params_value(pb, d->p_up), N, s->heads, s->r, d->out);
        else
            matmul_backward(da, params_grad(pb, d->p_up), dup_b, du, d->a, params_value(pb, d->p_up), N, s->r, d->out);
        if (s->act == ACT_IDENTITY) dz = da;
        else act_backward(s->act, dz, d->z, d->a, da, (size_t)N * r_all);
        int need_dsrc = s->insert == INSERT_SEQUENTIAL || dx;
        if (d->drop_p > 0) {   /* the dropped src again, into du (read for the last time above) */
            dropout_forward_key(du, src, d->drop_p, (size_t)N * src_w, d->drop_key);
            src = du;
        }
        if (need_dsrc) memset(dsrc, 0, (size_t)N * src_w * sizeof(float));
        matmul_backward(need_dsrc ? dsrc : NULL, params_grad(pb, d->p_down), ddown_b, dz, src,
                        params_value(pb, d->p_down), N, src_w, r_all);
        if (!need_dsrc) continue;
        if (d->drop_p > 0) dropout_backward_key(dsrc, dsrc, d->drop_p, (size_t)N * src_w, d->drop_key, 0);
        if (s->insert == INSERT_SEQUENTIAL) add_inplace(dh, dsrc, n);
        else add_inplace(dx, dsrc, (size_t)N * d->in);
    }
}

static const char *insert_names[] = {"parallel", "sequential"};

peftc_status delta_spec_parse(const char *text, delta_spec *sp, peftc_error *err)
{
    memset(sp, 0, sizeof *sp);
    sp->kind = DELTA_BOTTLENECK;
    sp->insert = INSERT_PARALLEL;
    sp->act = ACT_RELU;
    sp->compose = COMPOSE_ADD;
    sp->scale = 1.0f;
    sp->r = 0;
    sp->bias = -1;
    int have_site = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    if (strlen(text) >= sizeof buf) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: spec of %zu characters is too long", strlen(text));
    static const char *const keys[] = {"site", "kind", "insert", "r", "act", "compose", "bias", "dropout", "init", "heads"};
    unsigned seen = 0;
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta '%s': '%s' is not key=value", text, kv);
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        char *end;
        /* a key given twice is a typo or a conflict: which one was meant? */
        for (unsigned q = 0; q < sizeof keys / sizeof *keys; q++)
            if (!strcmp(k, keys[q])) {
                if (seen & (1u << q)) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta '%s': key '%s' given twice", text, k);
                seen |= 1u << q;
            }
        if (!strcmp(k, "site")) {
            if (!site_parse(v, &sp->site))
                return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: unknown site '%s' (attn.q attn.k attn.v attn.o ffn.in ffn.down "
                                  "attn.out ffn.out attn.heads ffn.act ffn.gate ffn.up)", v);
            have_site = 1;
        } else if (!strcmp(k, "kind")) {
            if (!strcmp(v, "bottleneck")) sp->kind = DELTA_BOTTLENECK;
            else if (!strcmp(v, "scale")) sp->kind = DELTA_SCALE;
            else return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: kind must be bottleneck or scale, got '%s'", v);
        } else if (!strcmp(k, "insert")) {
            if (!strcmp(v, "parallel")) sp->insert = INSERT_PARALLEL;
            else if (!strcmp(v, "sequential")) sp->insert = INSERT_SEQUENTIAL;
            else return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: insert must be parallel or sequential, got '%s'", v);
        } else if (!strcmp(k, "r")) {
            long r = strtol(v, &end, 10);
            if (*end || r <= 0 || r > 1 << 20) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: r must be a positive integer, got '%s'", v);
            sp->r = (int)r;
        } else if (!strcmp(k, "act")) {
            if (!act_parse(v, &sp->act)) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: act must be identity, relu, gelu, silu or tanh, got '%s'", v);
        } else if (!strcmp(k, "compose")) {
            if (!strcmp(v, "add")) sp->compose = COMPOSE_ADD;
            else if (!strcmp(v, "gate")) sp->compose = COMPOSE_GATE;
            else if (!strncmp(v, "gate:", 5)) { /* gate times a fixed scale (UniPELT's gated LoRA) */
                double x = strtod(v + 5, &end);
                if (*end || !(x > -1e6 && x < 1e6)) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: bad scale in '%s'", v);
                sp->compose = COMPOSE_GATE;
                sp->scale = (float)x;
            }
            else if (!strncmp(v, "scale:", 6) || !strncmp(v, "learned:", 8)) {
                int learned = v[0] == 'l';
                double x = strtod(v + (learned ? 8 : 6), &end);
                if (*end || !(x > -1e6 && x < 1e6)) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: bad scale in '%s'", v);
                sp->compose = learned ? COMPOSE_LEARNED_SCALE : COMPOSE_SCALE;
                sp->scale = (float)x;
            } else return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: compose must be add, scale:S, learned:S or gate, got '%s'", v);
        } else if (!strcmp(k, "bias")) {
            if (!strcmp(v, "1") || !strcmp(v, "true")) sp->bias = 1;
            else if (!strcmp(v, "0") || !strcmp(v, "false")) sp->bias = 0;
            else return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: bias must be 0, 1, true or false, got '%s'", v);
        } else if (!strcmp(k, "dropout")) {
            double x = strtod(v, &end);
            if (*end || !*v || !(x >= 0 && x < 1)) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: dropout must be in [0, 1), got '%s'", v);
            sp->dropout = (float)x;
        } else if (!strcmp(k, "init")) {
            if (!strcmp(v, "lora")) sp->init_lora = 1;
            else if (!strcmp(v, "bert")) sp->init_lora = 0;
            else return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: init must be lora or bert, got '%s'", v);
        } else if (!strcmp(k, "heads")) {
            long hh = strtol(v, &end, 10);
            if (*end || hh <= 0 || hh > 4096) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta: heads must be a positive integer, got '%s'", v);
            sp->heads = (int)hh;
        } else {
            return peftc_fail(err, PEFTC_ERR_INPUT, "--delta '%s': unknown key '%s' (site kind insert r act compose bias dropout init heads)", text, k);
        }
    }
    if (!have_site) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta '%s': site= is required", text);
    if (sp->kind == DELTA_BOTTLENECK && sp->r <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--delta '%s': r= is required", text);
    if (sp->bias < 0) sp->bias = sp->act != ACT_IDENTITY; /* adapters have biases, LoRA-like linear ones not */
    return PEFTC_OK;
}

void delta_spec_format(const delta_spec *sp, char *out, size_t cap)
{
    if (sp->kind == DELTA_SCALE) { snprintf(out, cap, "site=%s,kind=scale", site_name(sp->site)); return; }
    char comp[48];
    switch (sp->compose) {
    case COMPOSE_ADD: snprintf(comp, sizeof comp, "add"); break;
    case COMPOSE_SCALE: snprintf(comp, sizeof comp, "scale:%.9g", sp->scale); break;
    case COMPOSE_LEARNED_SCALE: snprintf(comp, sizeof comp, "learned:%.9g", sp->scale); break;
    case COMPOSE_GATE: snprintf(comp, sizeof comp, sp->scale == 1.0f ? "gate" : "gate:%.9g", sp->scale); break;
    }
    int n = snprintf(out, cap, "site=%s,insert=%s,r=%d,act=%s,compose=%s,bias=%d,dropout=%.9g,init=%s",
                     site_name(sp->site), insert_names[sp->insert], sp->r, act_name(sp->act), comp, sp->bias,
                     sp->dropout, sp->init_lora ? "lora" : "bert");
    if (sp->heads > 0 && n > 0 && (size_t)n < cap) snprintf(out + n, cap - (size_t)n, ",heads=%d", sp->heads);
}
