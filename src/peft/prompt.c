/* prompt.c: templates with virtual tokens and the prompt encoder. */
#include "peft/prompt.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status template_parse(const char *text, prompt_spec *ps, peftc_error *err)
{
    ps->n_items = 0;
    int n_virt = 0, have_text = 0, have_pair = 0, cls = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (ps->n_items == TEMPLATE_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: more than %d items", TEMPLATE_MAX);
        if (!strcmp(tok, "P")) {
            if (cls) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: with [CLS], every P goes before it (PEFT's placement: P ... P [CLS] {text})");
            ps->items[ps->n_items++] = TPL_VIRT; n_virt++;
        } else if (!strcmp(tok, "[CLS]")) {
            /* the virtual tokens before the whole input, as PEFT's P_TUNING and
             * PROMPT_TUNING put them: only after the leading P's */
            if (cls || have_text || n_virt != ps->n_items)
                return peftc_fail(err, PEFTC_ERR_INPUT, "--template: [CLS] may come once, right after the leading P's (P ... P [CLS] {text})");
            cls = 1;
        }
        else if (!strcmp(tok, "{text}")) {
            if (have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: {text} appears twice");
            ps->items[ps->n_items++] = TPL_TEXT; have_text = 1;
        } else if (!strcmp(tok, "{pair}")) {
            if (have_pair || !have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template: {pair} must come once, after {text}");
            ps->items[ps->n_items++] = TPL_PAIR; have_pair = 1;
        } else return peftc_fail(err, PEFTC_ERR_INPUT, "--template: unknown item '%s' (use P, [CLS], {text}, {pair})", tok);
    }
    if (!have_text) return peftc_fail(err, PEFTC_ERR_INPUT, "--template '%s' has no {text} placeholder for the input", text);
    if (n_virt == 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--template '%s' has no virtual token P", text);
    ps->n_virtual = n_virt;
    ps->before_cls = cls;
    return PEFTC_OK;
}

void template_format(const prompt_spec *ps, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
    for (int i = 0; i < ps->n_items && n + 8 < cap; i++) {
        const char *s = ps->items[i] == TPL_VIRT ? "P" : ps->items[i] == TPL_TEXT ? "{text}" : "{pair}";
        /* the virtual tokens before the whole input: [CLS] after them */
        int cls = ps->before_cls && ps->items[i] != TPL_VIRT && i > 0 && ps->items[i - 1] == TPL_VIRT;
        n += (size_t)snprintf(out + n, cap - n, "%s%s%s", i ? " " : "", cls ? "[CLS] " : "", s);
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
    } else if (ps->encoder == PROMPT_ENC_LSTM) {
        /* PEFT's PromptEncoder (LSTM): bidirectional LSTM(C, h) x 2 layers, then Linear(2h,2h) ReLU Linear(2h,C) */
        pm->p_emb = decl(pb, "prompt_encoder.embedding.weight", P, C, 2, 0);
        for (int l = 0; l < LSTM_LAYERS; l++)
            for (int d = 0; d < 2; d++) {
                char nm[PARAM_NAME_MAX];
                int in = l == 0 ? C : 2 * h;
                const char *sfx = d ? "_reverse" : "";
                snprintf(nm, sizeof nm, "prompt_encoder.lstm_head.weight_ih_l%d%s", l, sfx);
                pm->p_wih[l][d] = decl(pb, nm, 4 * h, in, 2, 0);
                snprintf(nm, sizeof nm, "prompt_encoder.lstm_head.weight_hh_l%d%s", l, sfx);
                pm->p_whh[l][d] = decl(pb, nm, 4 * h, h, 2, 0);
                snprintf(nm, sizeof nm, "prompt_encoder.lstm_head.bias_ih_l%d%s", l, sfx);
                pm->p_bih[l][d] = decl(pb, nm, 4 * h, 0, 1, 1);
                snprintf(nm, sizeof nm, "prompt_encoder.lstm_head.bias_hh_l%d%s", l, sfx);
                pm->p_bhh[l][d] = decl(pb, nm, 4 * h, 0, 1, 1);
            }
        pm->p_w2 = decl(pb, "prompt_encoder.mlp_head.0.weight", 2 * h, 2 * h, 2, 0);
        pm->p_b2 = decl(pb, "prompt_encoder.mlp_head.0.bias", 2 * h, 0, 1, 1);
        pm->p_w3 = decl(pb, "prompt_encoder.mlp_head.2.weight", C, 2 * h, 2, 0);
        pm->p_b3 = decl(pb, "prompt_encoder.mlp_head.2.bias", C, 0, 1, 1);
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
    if (pm->spec.encoder == PROMPT_ENC_LSTM) {
        size_t ld = (size_t)LSTM_LAYERS * 2;
        pm->lstm_gates = calloc(ld * P * 4 * h, sizeof(float));
        pm->lstm_c = calloc(ld * P * h, sizeof(float));
        pm->lstm_h = calloc(ld * P * h, sizeof(float));
        pm->lstm_out = calloc((size_t)LSTM_LAYERS * P * 2 * h, sizeof(float));
        /* backward scratch: d of a layer's output and input (P,2h) x2, dgates (P,4h), dh, dc (h) */
        pm->lstm_d = calloc(4 * P * 2 * h + P * 4 * h + 2 * h + P * C, sizeof(float));
        if (!pm->lstm_gates || !pm->lstm_c || !pm->lstm_h || !pm->lstm_out || !pm->lstm_d)
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for the prompt encoder");
        /* the head works at width 2h: h1/a1 (P,2h) */
        free(pm->h1); free(pm->a1); free(pm->d_h); free(pm->d_h2);
        pm->h1 = calloc(P * 2 * h, sizeof(float));
        pm->a1 = calloc(P * 2 * h, sizeof(float));
        pm->d_h = calloc(P * 2 * h, sizeof(float));
        pm->d_h2 = calloc(P * 2 * h, sizeof(float));
        if (!pm->h1 || !pm->a1 || !pm->d_h || !pm->d_h2) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    return PEFTC_OK;
}

void prompt_free(prompt_module *pm)
{
    free(pm->out); free(pm->d_out); free(pm->h1); free(pm->a1); free(pm->h2); free(pm->a2);
    free(pm->d_h); free(pm->d_h2);
    free(pm->lstm_gates); free(pm->lstm_c); free(pm->lstm_h); free(pm->lstm_out); free(pm->lstm_d);
    pm->lstm_gates = pm->lstm_c = pm->lstm_h = pm->lstm_out = pm->lstm_d = NULL;
    pm->out = pm->d_out = pm->h1 = pm->a1 = pm->h2 = pm->a2 = pm->d_h = pm->d_h2 = NULL;
}

void prompt_init(prompt_module *pm, param_block *pb, const float *wte, int V, const int32_t *init_ids, int n_init, peftc_rng *rng)
{
    int P = pm->spec.n_virtual, C = pm->C, h = pm->spec.hidden;
    float *e = params_value(pb, pm->p_emb);
    /* from the vocabulary (Lester et al.'s best init): the given text's tokens
     * cyclically, else random rows among the ordinary (non-special) ids */
    for (int k = 0; k < P; k++) {
        int lo = V > 2000 ? 1000 : V / 2; /* BERT vocabularies keep special and unused tokens below 1000 */
        int id = n_init > 0 ? init_ids[k % n_init] : lo + (int)peftc_rng_below(rng, (uint64_t)(V - lo));
        if (id >= V) id = V - 1;
        memcpy(e + (size_t)k * C, wte + (size_t)id * C, (size_t)C * sizeof(float));
    }
    if (pm->spec.encoder == PROMPT_ENC_NONE) return;
    if (pm->spec.encoder == PROMPT_ENC_LSTM) {
        /* torch.nn.LSTM's default: every weight and bias uniform in +-1/sqrt(h) */
        float bound = 1.0f / sqrtf((float)h);
        for (int l = 0; l < LSTM_LAYERS; l++)
            for (int d = 0; d < 2; d++) {
                int ids4[4] = {pm->p_wih[l][d], pm->p_whh[l][d], pm->p_bih[l][d], pm->p_bhh[l][d]};
                for (int q = 0; q < 4; q++) {
                    float *w = params_value(pb, ids4[q]);
                    for (size_t j = 0; j < pb->e[ids4[q]].numel; j++) w[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
                }
            }
        int ws[2] = {pm->p_w2, pm->p_w3}, bs[2] = {pm->p_b2, pm->p_b3};
        for (int i = 0; i < 2; i++) {
            float b2 = 1.0f / sqrtf((float)(2 * h));
            float *w = params_value(pb, ws[i]), *b = params_value(pb, bs[i]);
            for (size_t j = 0; j < pb->e[ws[i]].numel; j++) w[j] = (2 * peftc_rng_uniform(rng) - 1) * b2;
            for (size_t j = 0; j < pb->e[bs[i]].numel; j++) b[j] = (2 * peftc_rng_uniform(rng) - 1) * b2;
        }
        return;
    }
    /* torch.nn.Linear's default: kaiming-uniform weights and uniform biases, bound 1/sqrt(fan_in) */
    int ws[3] = {pm->p_w1, pm->p_w2, pm->p_w3}, bs[3] = {pm->p_b1, pm->p_b2, pm->p_b3}, fan[3] = {C, h, h};
    for (int i = 0; i < 3; i++) {
        float bound = 1.0f / sqrtf((float)fan[i]);
        float *w = params_value(pb, ws[i]), *b = params_value(pb, bs[i]);
        for (size_t j = 0; j < pb->e[ws[i]].numel; j++) w[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
        for (size_t j = 0; j < pb->e[bs[i]].numel; j++) b[j] = (2 * peftc_rng_uniform(rng) - 1) * bound;
    }
}

static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

/* One direction of one LSTM layer over the P steps (PyTorch's gate order i, f, g, o).
 * x (P,in) -> h_all (P,h) and the layer output's column block out (P, ld) at offset. */
static void lstm_dir_forward(const float *x, int P, int in, int h, const float *wih, const float *whh,
                             const float *bih, const float *bhh, int reverse, float *gates, float *c_all,
                             float *h_all, float *out, int ld)
{
    /* input projections for every step at once: gates = x W_ih^T + b_ih */
    matmul_forward(gates, x, wih, bih, P, in, 4 * h, 0);
    for (int s = 0; s < P; s++) {
        int t = reverse ? P - 1 - s : s, tp = reverse ? t + 1 : t - 1;
        float *g = gates + (size_t)t * 4 * h;
        const float *hp = s ? h_all + (size_t)tp * h : NULL, *cp = s ? c_all + (size_t)tp * h : NULL;
        for (int j = 0; j < 4 * h; j++) {
            float acc = g[j] + bhh[j];
            if (hp) for (int k = 0; k < h; k++) acc += whh[(size_t)j * h + k] * hp[k];
            g[j] = acc;
        }
        for (int j = 0; j < h; j++) {
            float ig = sigm(g[j]), fg = sigm(g[h + j]), gg = tanhf(g[2 * h + j]), og = sigm(g[3 * h + j]);
            g[j] = ig; g[h + j] = fg; g[2 * h + j] = gg; g[3 * h + j] = og;
            float c = ig * gg + (cp ? fg * cp[j] : 0.0f);
            c_all[(size_t)t * h + j] = c;
            float hv = og * tanhf(c);
            h_all[(size_t)t * h + j] = hv;
            out[(size_t)t * ld + j] = hv;
        }
    }
}

/* Backward through time: dout (P, ld) column block for this direction -> dx (P,in) +=, parameter gradients +=. */
static void lstm_dir_backward(const float *x, int P, int in, int h, const float *wih, const float *whh,
                              float *dwih, float *dwhh, float *dbih, float *dbhh, int reverse, const float *gates,
                              const float *c_all, const float *h_all, const float *dout, int ld, float *dx,
                              float *dg_all, float *dh, float *dc)
{
    memset(dh, 0, (size_t)h * sizeof(float));
    memset(dc, 0, (size_t)h * sizeof(float));
    for (int s = P - 1; s >= 0; s--) {
        int t = reverse ? P - 1 - s : s, tp = reverse ? t + 1 : t - 1;
        const float *g = gates + (size_t)t * 4 * h;
        const float *cp = s ? c_all + (size_t)tp * h : NULL, *hp = s ? h_all + (size_t)tp * h : NULL;
        float *dg = dg_all + (size_t)t * 4 * h;
        for (int j = 0; j < h; j++) {
            float dhj = dh[j] + dout[(size_t)t * ld + j];
            float c = c_all[(size_t)t * h + j], tc = tanhf(c);
            float ig = g[j], fg = g[h + j], gg = g[2 * h + j], og = g[3 * h + j];
            float dcj = dc[j] + dhj * og * (1 - tc * tc);
            dg[j] = dcj * gg * ig * (1 - ig);
            dg[h + j] = cp ? dcj * cp[j] * fg * (1 - fg) : 0.0f;
            dg[2 * h + j] = dcj * ig * (1 - gg * gg);
            dg[3 * h + j] = dhj * tc * og * (1 - og);
            dc[j] = dcj * fg;  /* to the previous step's cell */
        }
        /* to the previous step's hidden state: dh = dg W_hh; and W_hh's gradient */
        memset(dh, 0, (size_t)h * sizeof(float));
        for (int j = 0; j < 4 * h; j++) {
            dbhh[j] += dg[j];
            if (!hp) continue;
            for (int k = 0; k < h; k++) {
                dh[k] += dg[j] * whh[(size_t)j * h + k];
                dwhh[(size_t)j * h + k] += dg[j] * hp[k];
            }
        }
    }
    /* input side for all steps at once: dx += dG W_ih, dW_ih += dG^T x, db_ih += sum dG */
    matmul_backward(dx, dwih, dbih, dg_all, x, wih, P, in, 4 * h);
}

void prompt_forward(prompt_module *pm, const param_block *pb)
{
    int P = pm->spec.n_virtual, C = pm->C, h = pm->spec.hidden;
    const float *e = params_value(pb, pm->p_emb);
    if (pm->spec.encoder == PROMPT_ENC_NONE) {
        memcpy(pm->out, e, (size_t)P * C * sizeof(float));
        return;
    }
    if (pm->spec.encoder == PROMPT_ENC_LSTM) {
        const float *x = e;
        int in = C;
        for (int l = 0; l < LSTM_LAYERS; l++) {
            float *lo = pm->lstm_out + (size_t)l * P * 2 * h;
            for (int d = 0; d < 2; d++) {
                size_t ld = (size_t)l * 2 + d;
                lstm_dir_forward(x, P, in, h, params_value(pb, pm->p_wih[l][d]), params_value(pb, pm->p_whh[l][d]),
                                 params_value(pb, pm->p_bih[l][d]), params_value(pb, pm->p_bhh[l][d]), d,
                                 pm->lstm_gates + ld * P * 4 * h, pm->lstm_c + ld * P * h, pm->lstm_h + ld * P * h,
                                 lo + (size_t)d * h, 2 * h);
            }
            x = lo;
            in = 2 * h;
        }
        matmul_forward(pm->h1, x, params_value(pb, pm->p_w2), params_value(pb, pm->p_b2), P, 2 * h, 2 * h, 0);
        relu_forward(pm->a1, pm->h1, (size_t)P * 2 * h);
        matmul_forward(pm->out, pm->a1, params_value(pb, pm->p_w3), params_value(pb, pm->p_b3), P, 2 * h, C, 0);
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
    if (pm->spec.encoder == PROMPT_ENC_LSTM) {
        size_t H2 = (size_t)P * 2 * h;
        float *d_lo = pm->lstm_d, *d_in = d_lo + H2, *dg = d_in + 2 * H2, *dh = dg + (size_t)P * 4 * h, *dc = dh + h;
        float *last = pm->lstm_out + (size_t)(LSTM_LAYERS - 1) * H2;
        memset(pm->d_h, 0, H2 * sizeof(float));
        matmul_backward(pm->d_h, params_grad(pb, pm->p_w3), params_grad(pb, pm->p_b3), pm->d_out, pm->a1,
                        params_value(pb, pm->p_w3), P, 2 * h, C);
        memset(pm->d_h2, 0, H2 * sizeof(float));
        relu_backward(pm->d_h2, pm->h1, pm->d_h, H2);
        memset(d_lo, 0, H2 * sizeof(float));
        matmul_backward(d_lo, params_grad(pb, pm->p_w2), params_grad(pb, pm->p_b2), pm->d_h2, last,
                        params_value(pb, pm->p_w2), P, 2 * h, 2 * h);
        for (int l = LSTM_LAYERS - 1; l >= 0; l--) {
            const float *x = l ? pm->lstm_out + (size_t)(l - 1) * H2 : params_value(pb, pm->p_emb);
            int in = l ? 2 * h : C;
            float *dx = l ? d_in : de;
            if (l) memset(d_in, 0, H2 * sizeof(float));
            for (int d = 0; d < 2; d++) {
                size_t ld = (size_t)l * 2 + d;
                lstm_dir_backward(x, P, in, h, params_value(pb, pm->p_wih[l][d]), params_value(pb, pm->p_whh[l][d]),
                                  params_grad(pb, pm->p_wih[l][d]), params_grad(pb, pm->p_whh[l][d]),
                                  params_grad(pb, pm->p_bih[l][d]), params_grad(pb, pm->p_bhh[l][d]), d,
                                  pm->lstm_gates + ld * P * 4 * h, pm->lstm_c + ld * P * h, pm->lstm_h + ld * P * h,
                                  d_lo + (size_t)d * h, 2 * h, dx, dg, dh, dc);
            }
            if (l) memcpy(d_lo, d_in, H2 * sizeof(float));
        }
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
