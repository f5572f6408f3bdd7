/* prefix.c: the prefix parameters and their reparameterisation. */
#include "peft/prefix.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int decl(param_block *pb, const char *name, int64_t d0, int64_t d1, int ndim, int no_decay)
{
    int64_t sh[2] = {d0, d1};
    return params_add(pb, name, ndim, sh, no_decay);
}

peftc_status prefix_declare(prefix_module *pm, const prefix_spec *ps, int L, int C, param_block *pb, peftc_error *err)
{
    memset(pm, 0, sizeof *pm);
    pm->spec = *ps;
    pm->L = L;
    pm->C = C;
    int n = ps->n, h = ps->hidden > 0 ? ps->hidden : C;
    pm->spec.hidden = h;
    pm->p_kv = pm->p_emb = pm->p_w1 = pm->p_b1 = pm->p_w2 = pm->p_b2 = pm->p_gate_w = pm->p_gate_b = -1;
    int64_t W = 2 * (int64_t)L * C;
    if (!ps->project) {
        pm->p_kv = decl(pb, "prompt_embeddings", n, W, 2, 0);
    } else { /* PEFT's PrefixEncoder with prefix_projection */
        pm->p_emb = decl(pb, "prompt_encoder.embedding.weight", n, C, 2, 0);
        pm->p_w1 = decl(pb, "prompt_encoder.transform.0.weight", h, C, 2, 0);
        pm->p_b1 = decl(pb, "prompt_encoder.transform.0.bias", h, 0, 1, 1);
        pm->p_w2 = decl(pb, "prompt_encoder.transform.2.weight", W, h, 2, 0);
        pm->p_b2 = decl(pb, "prompt_encoder.transform.2.bias", W, 0, 1, 1);
    }
    if (ps->gate) {
        pm->p_gate_w = decl(pb, "prefix_gate.weight", 2 * L, C, 2, 0);
        pm->p_gate_b = decl(pb, "prefix_gate.bias", 2 * L, 0, 1, 1);
    }
    if ((!ps->project && pm->p_kv < 0) || (ps->project && pm->p_w2 < 0))
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

peftc_status prefix_alloc(prefix_module *pm, peftc_error *err)
{
    size_t n = (size_t)pm->spec.n, W = 2 * (size_t)pm->L * pm->C, h = (size_t)pm->spec.hidden;
    pm->kv = calloc(n * W, sizeof(float));
    pm->d_kv = calloc(n * W, sizeof(float));
    pm->hid = calloc(n * h, sizeof(float));
    pm->act = calloc(n * h, sizeof(float));
    pm->d_act = calloc(n * h, sizeof(float));
    if (!pm->kv || !pm->d_kv || !pm->hid || !pm->act || !pm->d_act)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for the prefix");
    return PEFTC_OK;
}

void prefix_free(prefix_module *pm)
{
    free(pm->kv); free(pm->d_kv); free(pm->hid); free(pm->act); free(pm->d_act);
    pm->kv = pm->d_kv = pm->hid = pm->act = pm->d_act = NULL;
}

void prefix_init(prefix_module *pm, param_block *pb, peftc_rng *rng)
{
    /* torch.nn.Embedding's N(0, 1) as PEFT; Linear: kaiming-uniform, bound 1/sqrt(fan_in) */
    int e = pm->spec.project ? pm->p_emb : pm->p_kv;
    float *x = params_value(pb, e);
    for (size_t j = 0; j < pb->e[e].numel; j++) x[j] = peftc_rng_normal(rng);
    if (pm->spec.project) {
        int ws[2] = {pm->p_w1, pm->p_w2}, bs[2] = {pm->p_b1, pm->p_b2}, fan[2] = {pm->C, pm->spec.hidden};
        for (int i = 0; i < 2; i++) {
            float bound = 1.0f / sqrtf((float)fan[i]);
            float *w = params_value(pb, ws[i]), *b = params_value(pb, bs[i]);
            for (size_t j = 0; j < pb->e[ws[i]].numel; j++) w[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
            for (size_t j = 0; j < pb->e[bs[i]].numel; j++) b[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
        }
    }
    if (pm->spec.gate) {
        float *g = params_value(pb, pm->p_gate_w);
        for (size_t j = 0; j < pb->e[pm->p_gate_w].numel; j++) g[j] = 0.02f * peftc_rng_normal(rng);
    }
}

void prefix_forward(prefix_module *pm, const param_block *pb)
{
    int n = pm->spec.n, C = pm->C, h = pm->spec.hidden, W = 2 * pm->L * C;
    if (!pm->spec.project) {
        memcpy(pm->kv, params_value(pb, pm->p_kv), (size_t)n * W * sizeof(float));
        return;
    }
    matmul_forward(pm->hid, params_value(pb, pm->p_emb), params_value(pb, pm->p_w1), params_value(pb, pm->p_b1), n, C, h, 0);
    tanh_forward(pm->act, pm->hid, (size_t)n * h);
    matmul_forward(pm->kv, pm->act, params_value(pb, pm->p_w2), params_value(pb, pm->p_b2), n, h, W, 0);
}

void prefix_backward(prefix_module *pm, param_block *pb)
{
    int n = pm->spec.n, C = pm->C, h = pm->spec.hidden, W = 2 * pm->L * C;
    if (!pm->spec.project) {
        add_inplace(params_grad(pb, pm->p_kv), pm->d_kv, (size_t)n * W);
        return;
    }
    memset(pm->d_act, 0, (size_t)n * h * sizeof(float));
    matmul_backward(pm->d_act, params_grad(pb, pm->p_w2), params_grad(pb, pm->p_b2), pm->d_kv, pm->act,
                    params_value(pb, pm->p_w2), n, h, W);
    float *d_hid = pm->d_act; /* in place: d_hid = d_act * (1 - act^2) */
    for (size_t i = 0; i < (size_t)n * h; i++) d_hid[i] *= 1.0f - pm->act[i] * pm->act[i];
    matmul_backward(params_grad(pb, pm->p_emb), params_grad(pb, pm->p_w1), params_grad(pb, pm->p_b1), d_hid,
                    params_value(pb, pm->p_emb), params_value(pb, pm->p_w1), n, C, h);
}
