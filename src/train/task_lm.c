/* task_lm.c: the causal-LM task (task_lm.h). */
#include "train/task_lm.h"
#include "train/adalora_config.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

#include <jansson.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

peftc_status lm_task_init(lm_task *t, peftc_model *m, const method_opts *mo, peftc_rng *rng, peftc_error *err)
{
    memset(t, 0, sizeof *t);
    t->m = m;
    t->mo = *mo;
    const model_family *f = m->family;
    if (!f->lm_head)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: a %s model is an encoder; causal language modelling needs a decoder", m->dir, f->name);
    if (mo->prefix.gate)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--method %s: UniPELT's prefix gate is not supported on %s models yet", mo->name, f->name);
    if (mo->prompt.n_virtual > 0 && mo->prompt.n_items > mo->prompt.n_virtual + 1)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--template: on a decoder the virtual tokens all precede the input (PEFT's causal-LM prompt learning); a template with {pair} or virtual tokens after {text} does not apply");
    if (mo->prompt.n_virtual > 0 && mo->prompt.n_items > 0 && mo->prompt.items[mo->prompt.n_items - 1] != TPL_TEXT)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--template: on a decoder the virtual tokens all precede the input (PEFT's causal-LM prompt learning); put {text} last");
    if (mo->base == BASE_BIAS)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--method %s: %s models have no biases (BitFit trains biases only)", mo->name, f->name);
    int n_slots = method_grad_slots(m);
    t->grads = calloc((size_t)(n_slots > 0 ? n_slots : 1), sizeof *t->grads);
    if (!t->grads) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc;
    const peftc_config *c = &m->cfg;
    int C = c->hidden_size, KD = f->prefix_dim ? f->prefix_dim(m) : C;
    if ((rc = method_declare(m, mo, &t->pb, &t->ds, err))) return rc;
    if (mo->prompt.n_virtual > 0) {
        if (mo->prompt.n_virtual + 2 > c->max_position)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%d virtual tokens overflow the model's %d positions", mo->prompt.n_virtual, c->max_position);
        if ((rc = prompt_declare(&t->prompt, &mo->prompt, C, &t->pb, err))) return rc;
        t->n_virt = mo->prompt.n_virtual;
    }
    if (mo->prefix.n > 0) {
        if (mo->prefix.n + 2 > c->max_position)
            return peftc_fail(err, PEFTC_ERR_INPUT, "--prefix-len %d overflows the model's %d positions", mo->prefix.n, c->max_position);
        if ((rc = prefix_declare(&t->prefix, &mo->prefix, c->num_layers, KD, &t->pb, err))) return rc;
    }
    if ((rc = params_alloc(&t->pb, err)) || (rc = method_bind(m, mo, &t->pb, &t->ds, t->grads, rng, err))) return rc;
    if (mo->adalora && (rc = adalora_init(&t->ada, &mo->ada, &t->pb, &t->ds, err))) return rc;
    if (t->n_virt) {
        /* rows of random ordinary tokens (Lester et al.'s vocabulary init),
         * gathered first: a quantised embedding table has no float rows */
        if ((rc = prompt_alloc(&t->prompt, err))) return rc;
        int n = t->n_virt, V = c->vocab_size;
        float *rows = malloc((size_t)n * C * sizeof(float));
        int32_t *idx = malloc((size_t)n * sizeof(int32_t));
        if (!rows || !idx) { free(rows); free(idx); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        const float *wte = f->word_embeddings(m);
        for (int k = 0; k < n; k++) {
            int lo = V > 2000 ? 1000 : V / 2;
            int id = lo + (int)peftc_rng_below(rng, (uint64_t)(V - lo));
            if (wte) memcpy(rows + (size_t)k * C, wte + (size_t)id * C, (size_t)C * sizeof(float));
            else f->token_embedding(m, id, rows + (size_t)k * C);
            idx[k] = k;
        }
        prompt_init(&t->prompt, &t->pb, rows, n, idx, n, rng);
        free(rows);
        free(idx);
    }
    if (mo->prefix.n > 0) {
        if ((rc = prefix_alloc(&t->prefix, err))) return rc;
        prefix_init(&t->prefix, &t->pb, rng);
    }
    return PEFTC_OK;
}

peftc_status lm_task_alloc(lm_task *t, int B, int T, int train, peftc_error *err)
{
    if (t->acts && B <= t->cap_B && T <= t->cap_T && (train <= t->train)) return PEFTC_OK;
    const peftc_config *c = &t->m->cfg;
    size_t N = (size_t)B * T, C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    int Tv = T + t->n_virt;
    N = (size_t)B * Tv;
    peftc_status rc = model_acts_init(t->m, &t->acts, B, Tv, train, t->mo.prefix.n, t->recompute ? MODEL_KEEP_RECOMPUTE : 0, err);
    if (rc) return rc;
    /* checkpointed layers run their deltas' forward again before their
     * backward: one layer's delta activations serve them all */
    if (t->ds.n && (rc = delta_acts_alloc_ex(&t->ds, (int)N, t->recompute && t->m->family->can_recompute, err))) return rc;
    free(t->d_hidden); free(t->h_rows); free(t->d_rows); free(t->logits); free(t->rows);
    free(t->v_ids); free(t->v_seg); free(t->v_tgt); free(t->v_lens);
    t->v_ids = NULL; t->v_seg = NULL; t->v_tgt = NULL; t->v_lens = NULL;
    if (t->n_virt) {
        t->v_ids = malloc(N * sizeof(int32_t));
        t->v_seg = malloc(N * sizeof(int32_t));
        t->v_tgt = malloc(N);
        t->v_lens = malloc((size_t)B * sizeof(int));
        if (!t->v_ids || !t->v_seg || !t->v_tgt || !t->v_lens)
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory (batch %d x %d)", B, Tv);
    }
    t->d_hidden = malloc(N * C * sizeof(float));
    t->h_rows = malloc(LM_TASK_CHUNK * C * sizeof(float));
    t->d_rows = malloc(LM_TASK_CHUNK * C * sizeof(float));
    t->logits = malloc(LM_TASK_CHUNK * V * sizeof(float));
    t->rows = malloc(N * sizeof(int));
    if (!t->d_hidden || !t->h_rows || !t->d_rows || !t->logits || !t->rows)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory (batch %d x %d)", B, T);
    t->cap_B = B; t->cap_T = T; t->train = train;
    return PEFTC_OK;
}

void lm_task_free(lm_task *t)
{
    if (t->m && t->acts) t->m->family->acts_free(t->acts);
    free(t->d_hidden); free(t->h_rows); free(t->d_rows); free(t->logits); free(t->rows);
    free(t->grads);
    free(t->v_ids); free(t->v_seg); free(t->v_tgt); free(t->v_lens);
    if (t->n_virt) prompt_free(&t->prompt);
    if (t->mo.prefix.n > 0) prefix_free(&t->prefix);
    adalora_free(&t->ada);
    delta_set_free(&t->ds);
    params_free(&t->pb);
    memset(t, 0, sizeof *t);
}

int64_t lm_task_trainable_count(const lm_task *t)
{
    int64_t n = 0;
    for (int i = 0; i < t->pb.n; i++) n += t->pb.e[i].numel;
    return n;
}

double lm_task_step(lm_task *t, const int32_t *ids, const uint8_t *target, const int32_t *seg, const int *lens, int B,
                    int T, float grad_scale, peftc_rng *rng, long *n_targets)
{
    peftc_model *m = t->m;
    const model_family *f = m->family;
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size, train = grad_scale != 0;
    model_run run = {.train = train, .rng = rng, .deltas = t->ds.n ? &t->ds : NULL, .pb = &t->pb, .grads = t->grads,
                     .segments = seg, .row0 = t->row0, .tok0 = t->row0 * T,
                     .layer_done = train ? t->layer_done : NULL, .layer_done_ctx = t->layer_done_ctx};
    if (t->n_virt) {
        /* n virtual tokens, then the row; a packed row's segments keep their
         * numbers and the virtual tokens join the first one */
        int n = t->n_virt, Tv = T + n;
        for (int b = 0; b < B; b++) {
            int32_t *vi = t->v_ids + (size_t)b * Tv, *vs = t->v_seg + (size_t)b * Tv;
            uint8_t *vt = t->v_tgt + (size_t)b * Tv;
            for (int k = 0; k < n; k++) vi[k] = -(k + 1), vt[k] = 0, vs[k] = seg ? seg[(size_t)b * T] : 0;
            memcpy(vi + n, ids + (size_t)b * T, (size_t)T * sizeof(int32_t));
            memcpy(vt + n, target + (size_t)b * T, (size_t)T);
            if (seg) memcpy(vs + n, seg + (size_t)b * T, (size_t)T * sizeof(int32_t));
            else for (int k = n; k < Tv; k++) vs[k] = 0;
            t->v_lens[b] = lens[b] + n;
        }
        ids = t->v_ids; target = t->v_tgt; lens = t->v_lens; T = Tv;
        run.tok0 = t->row0 * Tv;
        run.segments = seg ? t->v_seg : NULL;
        prompt_forward(&t->prompt, &t->pb);
        run.virt = t->prompt.out;
        run.d_virt = train ? t->prompt.d_out : NULL;
        run.n_virt = n;
        if (train) memset(t->prompt.d_out, 0, (size_t)n * C * sizeof(float));
    }
    if (t->mo.prefix.n > 0) {
        prefix_forward(&t->prefix, &t->pb);
        run.n_prefix = t->mo.prefix.n;
        run.prefix_kv = t->prefix.kv;
        run.d_prefix_kv = train ? t->prefix.d_kv : NULL;
        if (train) memset(t->prefix.d_kv, 0, (size_t)t->prefix.spec.n * 2 * t->prefix.L * t->prefix.C * sizeof(float));
    }
    f->forward(m, t->acts, &run, ids, NULL, lens, B, T);
    const float *hid = f->hidden(m, t->acts);
    /* position p predicts token p+1 of the same row (and, packed, of the same segment: a target is never a segment's first token) */
    int nr = 0;
    for (int b = 0; b < B; b++)
        for (int p = 0; p + 1 < lens[b]; p++)
            if (target[(size_t)b * T + p + 1]) t->rows[nr++] = b * T + p;
    *n_targets = nr;
    if (train) memset(t->d_hidden, 0, (size_t)B * T * C * sizeof(float));
    double loss = 0;
    for (int r0 = 0; r0 < nr; r0 += LM_TASK_CHUNK) {
        int n = nr - r0 < LM_TASK_CHUNK ? nr - r0 : LM_TASK_CHUNK;
        for (int i = 0; i < n; i++) memcpy(t->h_rows + (size_t)i * C, hid + (size_t)t->rows[r0 + i] * C, (size_t)C * sizeof(float));
        f->lm_head(m, t->h_rows, n, t->logits);
        int ys[LM_TASK_CHUNK];
        double rl[LM_TASK_CHUNK];
        for (int i = 0; i < n; i++) ys[i] = ids[t->rows[r0 + i] + 1];
        /* d loss / d z = softmax(z) - onehot(y), times the scale, in place */
        lm_ce_rows(t->logits, ys, n, V, train ? grad_scale : 0.0f, rl);
        for (int i = 0; i < n; i++) loss += rl[i];   /* in row order */
        if (train) {
            memset(t->d_rows, 0, (size_t)n * C * sizeof(float));
            f->lm_head_backward(m, t->h_rows, t->logits, n, t->d_rows, NULL);
            for (int i = 0; i < n; i++) {
                float *d = t->d_hidden + (size_t)t->rows[r0 + i] * C;
                const float *s = t->d_rows + (size_t)i * C;
                for (int j = 0; j < C; j++) d[j] += s[j];
            }
        }
    }
    if (train) {
        f->backward(m, t->acts, &run, ids, NULL, lens, B, T, t->d_hidden);
        if (t->n_virt) prompt_backward(&t->prompt, &t->pb);
        if (t->mo.prefix.n > 0) prefix_backward(&t->prefix, &t->pb);
    }
    return loss;
}

/* GGUF Llama files hold q/k rows permuted for ggml's RoPE (llama.h): a LoRA
 * B trained against them is permuted back to Hugging Face's row order in
 * the saved adapter, which is what PEFT and `peftc generate --adapter` read.
 * Per head of hd rows: GGUF row 2i + j (j = 0, 1) is HF row i + j hd/2. */
static void lora_b_to_hf(float *b, int out, int r, int n_head, float *tmp)
{
    int hd = out / n_head, h2 = hd / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < h2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + ((size_t)h * hd + i + (size_t)j * h2) * r, b + ((size_t)h * hd + 2 * i + j) * r, (size_t)r * sizeof(float));
    memcpy(b, tmp, (size_t)out * r * sizeof(float));
}

/* The inverse: a saved (Hugging Face order) B's rows back to the GGUF base's. */
static void lora_b_from_hf(float *b, int out, int r, int n_head, float *tmp)
{
    int hd = out / n_head, h2 = hd / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < h2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + ((size_t)h * hd + 2 * i + j) * r, b + ((size_t)h * hd + i + (size_t)j * h2) * r, (size_t)r * sizeof(float));
    memcpy(b, tmp, (size_t)out * r * sizeof(float));
}

/* the heads of a q or k projection's B (out rows), 0 if name is neither */
static int qk_heads(const lm_task *t, const char *name, int64_t out)
{
    const peftc_config *c = &t->m->cfg;
    if (strstr(name, "q_proj.lora_B")) return c->num_heads;
    if (strstr(name, "k_proj.lora_B")) return (int)(out / (c->hidden_size / c->num_heads));
    return 0;
}

peftc_status lm_task_load_weights(lm_task *t, const char *dir, int gguf_rows, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err);
    if (rc) return rc;
    peftc_safetensors *st;
    if ((rc = peftc_safetensors_open(path, &st, err))) return rc;
    param_block *pb = &t->pb;
    for (int i = 0; i < pb->n && !rc; i++) {
        const param_entry *e = &pb->e[i];
        const st_tensor *x = st_find(st, e->name);
        if (!x) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is missing (an adapter of another method, targets or model?)", path, e->name); break; }
        int ok = x->ndim == e->ndim;
        for (int d = 0; ok && d < e->ndim; d++) ok = x->shape[d] == e->shape[d];
        if (!ok) {
            /* an AdaLoRA adapter cut to its rank pattern has fewer rows than init_r */
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has a shape that does not fit this run (another base model, r, or an AdaLoRA adapter already cut to its rank pattern?)",
                            path, e->name);
            break;
        }
        float *v = params_value(pb, i);
        if ((rc = st_to_f32(st, x, v, err))) break;
        for (size_t k = 0; k < e->numel; k++)
            if (!isfinite(v[k])) { rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: tensor '%s' holds a non-finite value", path, e->name); break; }
        int heads = e->ndim == 2 ? qk_heads(t, e->name, e->shape[0]) : 0;
        if (!rc && gguf_rows && heads) {   /* saved in Hugging Face's row order (lm_task_save_adapter) */
            float *tmp = malloc(e->numel * sizeof *tmp);
            if (!tmp) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            lora_b_from_hf(v, (int)e->shape[0], (int)e->shape[1], heads, tmp);
            free(tmp);
        }
    }
    /* every tensor of the file must be one this run trains: another would be dropped silently */
    for (int i = 0; i < st->n && !rc; i++) {
        int used = 0;
        for (int k = 0; k < pb->n && !used; k++) used = !strcmp(pb->e[k].name, st->t[i].name);
        if (!used)
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not a parameter of method %s on this model (an adapter of another method, targets or model?)",
                            path, st->t[i].name, t->mo.name);
    }
    peftc_safetensors_free(st);
    return rc;
}

/* prompt_embeddings: the prefix table (n, 2 L KD) or the virtual tokens
 * (n, C) as the encoders make them now; with a GGUF base the prefix keys go
 * back to Hugging Face's order within each head, as LoRA B rows do. */
static peftc_status save_prompt_embeddings(lm_task *t, const char *dir, int gguf_rows, peftc_error *err)
{
    const peftc_config *c = &t->m->cfg;
    int pre = t->mo.prefix.n > 0;
    float *src;
    int64_t rows, cols;
    if (pre) {
        prefix_forward(&t->prefix, &t->pb);
        src = t->prefix.kv;
        rows = t->prefix.spec.n;
        cols = 2 * (int64_t)t->prefix.L * t->prefix.C;
    } else {
        prompt_forward(&t->prompt, &t->pb);
        src = t->prompt.out;
        rows = t->n_virt;
        cols = c->hidden_size;
    }
    float *copy = malloc((size_t)(rows * cols) * sizeof(float)), *tmp = malloc((size_t)t->prefix.C * sizeof(float) + 1);
    if (!copy || !tmp) { free(copy); free(tmp); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    memcpy(copy, src, (size_t)(rows * cols) * sizeof(float));
    if (pre && gguf_rows) {
        int KD = t->prefix.C, hd = c->hidden_size / c->num_heads;
        for (int64_t i = 0; i < rows; i++)
            for (int l = 0; l < t->prefix.L; l++)   /* the keys (values are not rotated) */
                lora_b_to_hf(copy + i * cols + (int64_t)2 * l * KD, KD, 1, KD / hd, tmp);
    }
    st_write_item it = {.name = "prompt_embeddings", .ndim = 2, .shape = {rows, cols}, .data = copy};
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err);
    if (!rc) rc = st_write_f32(path, &it, 1, NULL, err);
    free(copy);
    free(tmp);
    return rc;
}

/* adapter_config.json (PEFT's fields: LoRA, AdaLoRA, (IA)^3 and the prompt-learning
 * methods load in PEFT as CAUSAL_LM adapters; other methods keep peftc's own
 * peft_type) and adapter_model.safetensors (PEFT's names). */
peftc_status lm_task_save_adapter(lm_task *t, const char *dir, const char *base, int gguf_rows, peftc_error *err)
{
    const method_opts *mo = &t->mo;
    const model_family *f = t->m->family;
    int prompt_only = !mo->lora && !mo->adalora && !mo->n_deltas && mo->base == BASE_NONE && !mo->train_norms &&
                      ((mo->prefix.n > 0 && !mo->prefix.gate) != (mo->prompt.n_virtual > 0));
    /* scale deltas alone, each at a linear layer's output or at down_proj's
     * input (ffn.act; not with down_proj's output: PEFT gives a module one
     * form): PEFT's IA3 */
    unsigned ia3_sites = 0;
    int ia3 = !mo->lora && !mo->adalora && mo->n_deltas > 0 && mo->base == BASE_NONE && !mo->train_norms &&
              mo->prompt.n_virtual == 0 && mo->prefix.n == 0;
    for (int i = 0; ia3 && i < mo->n_deltas; i++) {
        const delta_spec *d = &mo->deltas[i];
        site_id s = d->site;
        ia3 = d->kind == DELTA_SCALE && (s == SITE_FFN_ACT || (site_is_linear(s) && f->site_target[s]));
        ia3_sites |= 1u << s;
    }
    if (!ia3 || ((ia3_sites & (1u << SITE_FFN_ACT)) && (ia3_sites & (1u << SITE_FFN_DOWN)))) ia3_sites = 0;
    json_t *cfg = json_object();
    json_object_set_new(cfg, "base_model_name_or_path", json_string(base));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "inference_mode", json_true());
    json_t *tm = json_array();
    for (int s = 0; s < SITE_COUNT; s++)
        if (site_is_linear(s) && (mo->targets & (1u << s)) && f->site_target[s]) json_array_append_new(tm, json_string(f->site_target[s]));
    if (mo->lora) {
        json_object_set_new(cfg, "peft_type", json_string("LORA"));
        json_object_set_new(cfg, "r", json_integer(mo->r));
        json_object_set_new(cfg, "lora_alpha", json_real(mo->alpha));
        json_object_set_new(cfg, "lora_dropout", json_real(mo->dropout));
        json_object_set_new(cfg, "use_rslora", json_boolean(mo->rslora));
        json_object_set_new(cfg, "bias", json_string("none"));
        json_object_set_new(cfg, "target_modules", tm);
    } else if (mo->adalora) {
        json_object_set_new(cfg, "peft_type", json_string("ADALORA"));
        adalora_config_json(cfg, &t->ada, mo, tm);
    } else if (prompt_only) {
        /* PEFT's prompt learning, saved folded as PEFT saves it (the encoder's
         * output as prompt_embeddings) with the config fields PEFT resolves */
        const peftc_config *c = &t->m->cfg;
        int pre = mo->prefix.n > 0, KD = f->prefix_dim ? f->prefix_dim(t->m) : c->hidden_size;
        int n = pre ? mo->prefix.n : mo->prompt.n_virtual;
        json_decref(tm);
        json_object_set_new(cfg, "peft_type", json_string(pre ? "PREFIX_TUNING" : mo->prompt.encoder == PROMPT_ENC_NONE ? "PROMPT_TUNING" : "P_TUNING"));
        json_object_set_new(cfg, "num_virtual_tokens", json_integer(n));
        json_object_set_new(cfg, "num_layers", json_integer(c->num_layers));
        json_object_set_new(cfg, "num_transformer_submodules", json_integer(1));
        json_object_set_new(cfg, "token_dim", json_integer(pre ? KD : c->hidden_size));
        json_object_set_new(cfg, "num_attention_heads", json_integer(pre ? KD / (c->hidden_size / c->num_heads) : c->num_heads));
        if (pre) {
            json_object_set_new(cfg, "prefix_projection", json_false());
            json_object_set_new(cfg, "encoder_hidden_size", json_integer(KD));
        } else if (mo->prompt.encoder == PROMPT_ENC_NONE) {
            json_object_set_new(cfg, "prompt_tuning_init", json_string("RANDOM"));
        } else {
            json_object_set_new(cfg, "encoder_reparameterization_type", json_string(mo->prompt.encoder == PROMPT_ENC_LSTM ? "LSTM" : "MLP"));
            json_object_set_new(cfg, "encoder_hidden_size", json_integer(mo->prompt.hidden));
        }
    } else if (ia3_sites) {
        /* PEFT's IA3: the scaled linear layers; down_proj's input (ffn.act)
         * is its feed-forward form */
        json_decref(tm);
        tm = json_array();
        json_t *ff = json_array();
        for (int s = 0; s < SITE_COUNT; s++) {
            if (!(ia3_sites & (1u << s))) continue;
            site_id ls = s == SITE_FFN_ACT ? SITE_FFN_DOWN : (site_id)s;
            json_array_append_new(tm, json_string(f->site_target[ls]));
            if (s == SITE_FFN_ACT) json_array_append_new(ff, json_string(f->site_target[ls]));
        }
        json_object_set_new(cfg, "peft_type", json_string("IA3"));
        json_object_set_new(cfg, "target_modules", tm);
        json_object_set_new(cfg, "feedforward_modules", ff);
        json_object_set_new(cfg, "fan_in_fan_out", json_false());
        json_object_set_new(cfg, "init_ia3_weights", json_true());
    } else {
        json_decref(tm);
        json_object_set_new(cfg, "peft_type", json_string("PEFTC"));
    }
    json_object_set_new(cfg, "peftc_method", json_string(mo->name));
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    char path[4096];
    peftc_status rc = peftc_mkdir_p(dir, err);
    if (!rc) rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (!rc) rc = peftc_write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (rc) return rc;
    if (prompt_only) return save_prompt_embeddings(t, dir, gguf_rows, err);
    const param_block *pb = &t->pb;
    st_write_item *items = calloc((size_t)(pb->n ? pb->n : 1), sizeof *items);
    float *copy = malloc((pb->total ? pb->total : 1) * sizeof *copy), *tmp = malloc((pb->total ? pb->total : 1) * sizeof *tmp);
    if (!items || !copy || !tmp) { free(items); free(copy); free(tmp); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    memcpy(copy, pb->p, pb->total * sizeof *copy);
    for (int i = 0; i < pb->n; i++) {
        const param_entry *e = &pb->e[i];
        items[i].name = e->name;
        items[i].ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) items[i].shape[d] = e->shape[d];
        items[i].data = copy + e->offset;
        /* AdaLoRA: the kept triplets only (rows of A and E, columns of B), as PEFT saves them */
        adalora_compact(&t->ada, pb, i, copy + e->offset, items[i].shape);
        int heads = e->ndim == 2 ? qk_heads(t, e->name, e->shape[0]) : 0;
        if (gguf_rows && heads) lora_b_to_hf(copy + e->offset, (int)items[i].shape[0], (int)items[i].shape[1], heads, tmp);
    }
    rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err);
    if (!rc) rc = st_write_f32(path, items, pb->n, NULL, err);
    free(items);
    free(copy);
    free(tmp);
    return rc;
}

