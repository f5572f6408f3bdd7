/* prompt.c: templates with virtual tokens and the prompt encoder. */
#include "peft/prompt.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status template_parse(const char *text, prompt_spec *ps, peftc_error *err)
{
    ps->n_items = 0;
    int n_virt = 0, have_text = 0, have_pair = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (ps->n_items == TEMPLATE_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: more than %d items", TEMPLATE_MAX);
        if (!strcmp(tok, "P")) { ps->items[ps->n_items++] = TPL_VIRT; n_virt++; }
        else if (!strcmp(tok, "{text}")) {
            if (have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: {text} appears twice");
            ps->items[ps->n_items++] = TPL_TEXT; have_text = 1;
        } else if (!strcmp(tok, "{pair}")) {
            if (have_pair || !have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: {pair} must come once, after {text}");
            ps->items[ps->n_items++] = TPL_PAIR; have_pair = 1;
        } else return peftc_fail(err, PEFTC_ERR_INPUT, "--template: unknown item '%s' (use P, {text}, {pair})", tok);
    }
    if (!have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template '%s' has no {text} placeholder for the input", text);
    if (n_virt == 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--template '%s' has no virtual token P", text);
    ps->n_virtual = n_virt;
    ps->before_cls = 0;
    return PEFTC_OK;
}

void template_format(const prompt_spec *ps, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
    for (int i = 0; i < ps->n_items && n + 8 < cap; i++) {
        const char *s = ps->items[i] == TPL_VIRT ? "P" : ps->items[i] == TPL_TEXT ? "{text}" : "{pair}";
        n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? " " : "", s);
    }
}

int template_apply(const prompt_spec *ps, const int32_t *ids, const int32_t *tts, int n, int32_t *oi,
                   int32_t *ot, int cap)
{
    /* split the tokenizer's output into [CLS], a, [SEP], b, [SEP] by type ids */
    int a0 = 1, a1 = 1;
    while (a1 < n && tts[a1] == 0) a1++;
    a1--;                                   /* a1: the first [SEP] */
    int b0 = a1 + 1, b1 = n - 1;            /* b = [b0, b1) when there is a pair */
    int has_pair = b0 < n;
    int32_t cls = ids[0], sep = ids[a1];
    int k = 0, v = 0, type = 0;
#define PUT(id) do { if (k < cap) { oi[k] = (id); ot[k] = type; k++; } } while (0)
    if (ps->before_cls) {
        for (v = 0; v < ps->n_virtual; v++) PUT(-(v + 1));
        for (int i = 0; i < n; i++) { type = tts[i]; PUT(ids[i]); }
        return k;
    }
    PUT(cls);
    int placed_pair = 0;
    for (int t = 0; t < ps->n_items; t++) {
        switch (ps->items[t]) {
        case TPL_VIRT: PUT(-(v + 1)); v++; break;
        case TPL_TEXT: for (int i = a0; i < a1; i++) PUT(ids[i]); break;
        case TPL_PAIR:
            PUT(sep);
            type = 1;
            if (has_pair) for (int i = b0; i < b1; i++) PUT(ids[i]);
            placed_pair = 1;
            break;
        }
    }
    PUT(sep);
    if (has_pair && !placed_pair) { /* no {pair} in the template: the usual layout */
        type = 1;
        for (int i = b0; i < b1; i++) PUT(ids[i]);
        PUT(sep);
    }
#undef PUT
    return k;
}

static int decl(param_block *pb, const char *name, int64_t d0, int64_t d1, int ndim, int no_decay)
{
    int64_t sh[2] = {d0, d1};
    return params_add(pb, name, ndim, sh, no_decay);
}

peftc_status prompt_declare(prompt_module *pm, const prompt_spec *ps, int C, param_block *pb, peftc_error *err)
{
    memset(pm, 0, sizeof *pm);
    pm->spec = *ps;
    pm->C = C;
    int P = ps->n_virtual, h = ps->hidden > 0 ? ps->hidden : C;
    pm->spec.hidden = h;
    pm->p_w1 = pm->p_b1 = pm->p_w2 = pm->p_b2 = pm->p_w3 = pm->p_b3 = -1;
    if (ps->encoder == PROMPT_ENC_NONE) {
        pm->p_emb = decl(pb, "prompt_embeddings", P, C, 2, 0);
    } else { /* PEFT's PromptEncoder (MLP): Linear(C,h) ReLU Linear(h,h) ReLU Linear(h,C) */
        pm->p_emb = decl(pb, "prompt_encoder.embedding.weight", P, C, 2, 0);
        pm->p_w1 = decl(pb, "prompt_encoder.mlp_head.0.weight", h, C, 2, 0);
        pm->p_b1 = decl(pb, "prompt_encoder.mlp_head.0.bias", h, 0, 1, 1);
        pm->p_w2 = decl(pb, "prompt_encoder.mlp_head.2.weight", h, h, 2, 0);
        pm->p_b2 = decl(pb, "prompt_encoder.mlp_head.2.bias", h, 0, 1, 1);
        pm->p_w3 = decl(pb, "prompt_encoder.mlp_head.4.weight", C, h, 2, 0);
        pm->p_b3 = decl(pb, "prompt_encoder.mlp_head.4.bias", C, 0, 1, 1);
    }
    if (pm->p_emb < 0) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

peftc_status prompt_alloc(prompt_module *pm, peftc_error *err)
{
    size_t P = (size_t)pm->spec.n_virtual, C = (size_t)pm->C, h = (size_t)pm->spec.hidden;
    pm->out = calloc(P * C, sizeof(float));
    pm->d_out = calloc(P * C, sizeof(float));
    pm->h1 = calloc(P * h, sizeof(float));
    pm->a1 = calloc(P * h, sizeof(float));
    pm->h2 = calloc(P * h, sizeof(float));
    pm->a2 = calloc(P * h, sizeof(float));
    pm->d_h = calloc(P * h, sizeof(float));
    pm->d_h2 = calloc(P * h, sizeof(float));
    if (!pm->out || !pm->d_out || !pm->h1 || !pm->a1 || !pm->h2 || !pm->a2 || !pm->d_h || !pm->d_h2)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for the prompt");
    return PEFTC_OK;
}

void prompt_free(prompt_module *pm)
{
    free(pm->out); free(pm->d_out); free(pm->h1); free(pm->a1); free(pm->h2); free(pm->a2);
    free(pm->d_h); free(pm->d_h2);
    pm->out = pm->d_out = pm->h1 = pm->a1 = pm->h2 = pm->a2 = pm->d_h = pm->d_h2 = NULL;
}

void prompt_init(prompt_module *pm, param_block *pb, const float *wte, int V, const int32_t *init_ids, int n_init, peftc_rng *rng)
{
    int P = pm->spec.n_virtual, C = pm->C, h = pm->spec.hidden;
    float *e = params_value(pb, pm->p_emb);
    /* from the vocabulary (Lester et al.'s best init): the given text's tokens
     * cyclically, else random rows among the ordinary (non-special) ids */
    for (int k = 0; k < P; k++) {
        int id = n_init > 0 ? init_ids[k % n_init] : 1000 + (int)peftc_rng_below(rng, (uint64_t)(V > 2000 ? V - 1000 : V));
        if (id >= V) id = V - 1;
        memcpy(e + (size_t)k * C, wte + (size_t)id * C, (size_t)C * sizeof(float));
    }
    if (pm->spec.encoder == PROMPT_ENC_NONE) return;
    /* torch.nn.Linear's default: kaiming-uniform weights and uniform biases, bound 1/sqrt(fan_in) */
    int ws[3] = {pm->p_w1, pm->p_w2, pm->p_w3}, bs[3] = {pm->p_b1, pm->p_b2, pm->p_b3}, fan[3] = {C, h, h};
    for (int i = 0; i < 3; i++) {
        float bound = 1.0f / sqrtf((float)fan[i]);
        float *w = params_value(pb, ws[i]), *b = params_value(pb, bs[i]);
        for (size_t j = 0; j < pb->e[ws[i]].numel; j++) w[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
        for (size_t j = 0; j < pb->e[bs[i]].numel; j++) b[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
    }
}

void prompt_forward(prompt_module *pm, const param_block *pb)
{
    int P = pm->spec.n_virtual, C = pm->C, h = pm->spec.hidden;
    const float *e = params_value(pb, pm->p_emb);
    if (pm->spec.encoder == PROMPT_ENC_NONE) {
        memcpy(pm->out, e, (size_t)P * C * sizeof(float));
        return;
    }
    matmul_forward(pm->h1, e, params_value(pb, pm->p_w1), params_value(pb, pm->p_b1), P, C, h, 0);
    relu_forward(pm->a1, pm->h1, (size_t)P * h);
    matmul_forward(pm->h2, pm->a1, params_value(pb, pm->p_w2), params_value(pb, pm->p_b2), P, h, h, 0);
    relu_forward(pm->a2, pm->h2, (size_t)P * h);
    matmul_forward(pm->out, pm->a2, params_value(pb, pm->p_w3), params_value(pb, pm->p_b3), P, h, C, 0);
}

void prompt_backward(prompt_module *pm, param_block *pb)
{
    int P = pm->spec.n_virtual, C = pm->C, h = pm->spec.hidden;
    float *de = params_grad(pb, pm->p_emb);
    if (pm->spec.encoder == PROMPT_ENC_NONE) {
        add_inplace(de, pm->d_out, (size_t)P * C);
        return;
    }
    memset(pm->d_h, 0, (size_t)P * h * sizeof(float));
    matmul_backward(pm->d_h, params_grad(pb, pm->p_w3), params_grad(pb, pm->p_b3), pm->d_out, pm->a2,
                    params_value(pb, pm->p_w3), P, h, C);
    memset(pm->d_h2, 0, (size_t)P * h * sizeof(float));
    relu_backward(pm->d_h2, pm->h2, pm->d_h, (size_t)P * h);
    memset(pm->d_h, 0, (size_t)P * h * sizeof(float));
    matmul_backward(pm->d_h, params_grad(pb, pm->p_w2), params_grad(pb, pm->p_b2), pm->d_h2, pm->a1,
                    params_value(pb, pm->p_w2), P, h, h);
    memset(pm->d_h2, 0, (size_t)P * h * sizeof(float));
    relu_backward(pm->d_h2, pm->h1, pm->d_h, (size_t)P * h);
    matmul_backward(de, params_grad(pb, pm->p_w1), params_grad(pb, pm->p_b1), pm->d_h2, params_value(pb, pm->p_emb),
                    params_value(pb, pm->p_w1), P, C, h);
}
