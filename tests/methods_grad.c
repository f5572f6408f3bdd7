/* methods_grad.c: peftc's loss and the gradient of every trainable tensor for
 * any method preset, at given TRAINING parameters, through the library's
 * internal API, for the PyTorch oracle (tests/ref_methods.py) to check; and
 * the start-as-the-base check of a freshly initialised task. Not a test_*.c:
 * tests/check_methods_ref.sh generates the fixture, builds this file and runs
 * it (through tests/ref_methods.py).
 *
 *   methods_grad grad  MODEL_DIR DATA_FILE INIT.safetensors OUT.safetensors METHOD [OPTIONS]
 *   methods_grad fresh MODEL_DIR DATA_FILE METHOD [OPTIONS]
 *
 * OPTIONS are `peftc train`'s method options, filling method_args:
 *   --r N --alpha A --lora-dropout P --target-modules LIST --site ffn|attn
 *   --scale S --learned-scale --delta SPEC (repeatable) --num-virtual N
 *   --template T --encoder mlp|lstm|none --encoder-hidden H --prefix-len N
 *   --prefix-projection --max-len N (default 48); and --label NAME (names the
 *   check lines; default: METHOD)
 *
 * grad: method_build + task_init, then every trainable tensor of the task's
 * parameter block (the training form: P-tuning's encoder, the prefix MLP,
 * never the folded vectors peftc saves) is loaded by name from INIT (which
 * must hold exactly those tensors, in their shapes). The whole data file is
 * one batch, in file order; one train-mode forward (the fixture's dropout is
 * 0) and one backward of the mean loss on zeroed gradients. OUT (F32) holds
 * "loss" (1), "logits" (B,K), "input_ids" and "token_type_ids" (B,T) as
 * floats (virtual token k is -(k+1)), "lens" (B) and every trainable
 * tensor's gradient under its own name.
 *
 * fresh: the task with its own initialisation (task_init, seed 1): its first
 * forward (train mode and eval mode) must give the logits of the base model
 * (a second, untouched load of MODEL_DIR run with no method at all) through
 * the same classification head, within 1e-6; and, so that this is not
 * vacuous, moving every trainable tensor but the head by N(0, 0.05^2) noise
 * must move the logits (> 1e-4).
 *
 * Prints ok/FAIL lines and "## <passed> <failed>". */
#include "peftc.h"
#include "testlib.h"
#include "train/eval.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_BASE 1e-6
#define MAX_DELTAS 32


/* AdapterFusion (method fusion): --adapters SPEC, --fusion-T T (the softmax
 * temperature), --fusion-reg (the 0.01 ||I - W_V||^2 term into loss and gradients) */
static float g_fusion_T;
static int g_fusion_reg;

/* Parses OPTIONS into a; returns 0 or prints the problem and returns -1. */
static int parse_opts(int argc, char **argv, method_args *a, const char **deltas, int *max_len, const char **label)
{
    memset(a, 0, sizeof *a);
    a->deltas = deltas;
    for (int i = 0; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int flag = !strcmp(k, "--learned-scale") || !strcmp(k, "--prefix-projection") || !strcmp(k, "--no-prefix-projection") ||
                   !strcmp(k, "--fusion-reg");
        if (!flag && !v) { fprintf(stderr, "option %s needs a value\n", k); return -1; }
        if (!strcmp(k, "--r")) a->r = atoi(v);
        else if (!strcmp(k, "--alpha")) a->alpha = (float)atof(v);
        else if (!strcmp(k, "--lora-dropout")) a->lora_dropout = (float)atof(v);
        else if (!strcmp(k, "--target-modules")) a->targets = v;
        else if (!strcmp(k, "--site")) a->site = v;
        else if (!strcmp(k, "--scale")) a->scale = (float)atof(v);
        else if (!strcmp(k, "--learned-scale")) a->learned_scale = 1;
        else if (!strcmp(k, "--delta")) {
            if (a->n_deltas == MAX_DELTAS) { fprintf(stderr, "too many --delta\n"); return -1; }
            deltas[a->n_deltas++] = v;
        } else if (!strcmp(k, "--num-virtual")) a->num_virtual = atoi(v);
        else if (!strcmp(k, "--template")) a->template_text = v;
        else if (!strcmp(k, "--encoder")) a->encoder = v;
        else if (!strcmp(k, "--encoder-hidden")) a->encoder_hidden = atoi(v);
        else if (!strcmp(k, "--prefix-len")) a->prefix_len = atoi(v);
        else if (!strcmp(k, "--prefix-projection")) a->prefix_projection = 1;
        else if (!strcmp(k, "--no-prefix-projection")) a->prefix_projection = -1;
        else if (!strcmp(k, "--max-len")) *max_len = atoi(v);
        else if (!strcmp(k, "--label")) *label = v;
        else if (!strcmp(k, "--adapters")) a->fuse_adapters = v;
        else if (!strcmp(k, "--fusion-T")) g_fusion_T = (float)atof(v);
        else if (!strcmp(k, "--fusion-reg")) g_fusion_reg = 1;
        else { fprintf(stderr, "unknown option %s\n", k); return -1; }
        if (!flag) i++;
    }
    return 0;
}

typedef struct setup {
    peftc_model *m;
    peftc_tokenizer *tok;
    method_opts mo;
    label_set labels;
    dataset d;
    encoder_ctx enc;
    task t;
    batch_buf bb;
    int B, T;
    peftc_rng rng;
    const char *label;   /* --label, else the method name */
} setup;

/* Model, method, data (one batch of the whole file) and the task. */
static int build(setup *s, const char *model_dir, const char *data_path, const char *method, int argc, char **argv,
                 const char **what, peftc_error *err)
{
    memset(s, 0, sizeof *s);
    method_args a;
    const char *deltas[MAX_DELTAS];
    int max_len = 48;
    *what = "options";
    s->label = method;
    if (parse_opts(argc, argv, &a, deltas, &max_len, &s->label)) { snprintf(err->msg, sizeof err->msg, "bad options"); return -1; }
    *what = "model";
    if (peftc_model_load(model_dir, &s->m, err) || peftc_tokenizer_load(model_dir, &s->tok, err)) return -1;
    *what = "method_build";
    if (method_build(method, &a, &s->m->cfg, &s->mo, err)) return -1;
    data_cols cols = {0};
    *what = "data";
    if (data_load(data_path, &cols, 1, &s->d, err) || labels_from_data(&s->d, &s->labels, err) ||
        data_map_labels(&s->d, &s->labels, err) || encoder_init(&s->enc, s->tok, &s->mo.prompt, max_len, err) ||
        data_tokenize(&s->d, encoder_encode, &s->enc, max_len, err))
        return -1;
    s->B = s->d.n;
    s->T = 1;
    for (int i = 0; i < s->B; i++) if (s->d.len[i] > s->T) s->T = s->d.len[i];
    peftc_rng_seed(&s->rng, 1);
    *what = "task";
    if (task_init(&s->t, s->m, s->tok, &s->mo, &s->labels, max_len, &s->rng, err) ||
        task_alloc(&s->t, s->B, s->T, 1, err) || batch_alloc(&s->bb, s->B, s->T, err))
        return -1;
    if (g_fusion_T > 0) s->t.fu.T = g_fusion_T;
    int *rows = malloc((size_t)s->B * sizeof *rows);
    for (int i = 0; i < s->B; i++) rows[i] = i;
    int Tb = batch_fill(&s->bb, &s->d, rows, s->B);
    free(rows);
    if (Tb != s->T) { snprintf(err->msg, sizeof err->msg, "batch_fill padded to %d, expected %d", Tb, s->T); return -1; }
    return 0;
}

static void teardown(setup *s)
{
    batch_free(&s->bb);
    task_free(&s->t);
    encoder_free(&s->enc);
    data_free(&s->d);
    labels_free(&s->labels);
    if (s->tok) peftc_tokenizer_free(s->tok);
    if (s->m) peftc_model_free(s->m);
}

/* Loads every tensor of the parameter block from INIT by name; INIT must hold no other. */
static int load_init(task *t, const char *path, peftc_error *err)
{
    peftc_safetensors *st;
    if (peftc_safetensors_open(path, &st, err)) return -1;
    int bad = 0;
    for (int i = 0; i < t->pb.n && !bad; i++) {
        const param_entry *e = &t->pb.e[i];
        const st_tensor *x = st_find(st, e->name);
        if (!x) { snprintf(err->msg, sizeof err->msg, "peftc trains '%s', which the init file lacks", e->name); bad = 1; break; }
        int ok = x->ndim == e->ndim;
        for (int d = 0; ok && d < e->ndim; d++) ok = x->shape[d] == e->shape[d];
        if (!ok) {
            snprintf(err->msg, sizeof err->msg, "'%s': peftc's shape [%lld, %lld] (ndim %d) differs from the init file's [%lld, %lld] (ndim %d)",
                     e->name, (long long)e->shape[0], (long long)(e->ndim > 1 ? e->shape[1] : 0), e->ndim,
                     (long long)x->shape[0], (long long)(x->ndim > 1 ? x->shape[1] : 0), x->ndim);
            bad = 1;
            break;
        }
        if (st_to_f32(st, x, params_value(&t->pb, i), err)) { bad = 1; break; }
    }
    for (int i = 0; i < st->n && !bad; i++)
        if (params_find(&t->pb, st->t[i].name) < 0) {
            snprintf(err->msg, sizeof err->msg, "the init file holds '%s', which peftc does not train", st->t[i].name);
            bad = 1;
        }
    int n = st->n;
    peftc_safetensors_free(st);
    if (!bad && n != t->pb.n) { snprintf(err->msg, sizeof err->msg, "%d tensors in the init file, %d trained", n, t->pb.n); bad = 1; }
    return bad ? -1 : 0;
}

static int cmd_grad(int argc, char **argv)
{
    const char *model_dir = argv[0], *data_path = argv[1], *init = argv[2], *out_path = argv[3], *method = argv[4];
    peftc_error err = {0};
    setup s;
    const char *what;
    if (build(&s, model_dir, data_path, method, argc - 5, argv + 5, &what, &err)) return tl_die(what, &err);
    task *t = &s.t;
    int B = s.B, T = s.T, K = t->labels.n;
    int rc0 = load_init(t, init, &err);
    CHECK(rc0 == 0, "%s: peftc's %d trainable tensors are exactly the init file's, in the same shapes%s%s", s.label,
          t->pb.n, rc0 ? ": " : "", rc0 ? err.msg : "");
    if (rc0) { teardown(&s); return tl_finish(); }

    memset(t->pb.g, 0, t->pb.total * sizeof(float));
    float loss = task_forward(t, s.bb.ids, s.bb.tts, s.bb.lens, s.bb.labels, B, T, 1, &s.rng);
    float *logits = tl_dup_floats(t->head.logits, (size_t)B * K);
    task_backward(t, s.bb.ids, s.bb.tts, s.bb.lens, s.bb.labels, B, T, 1.0f, &s.rng);
    if (g_fusion_reg) loss += (float)task_fusion_regularize(t);

    float *ids_f = malloc((size_t)B * T * sizeof *ids_f), *tts_f = malloc((size_t)B * T * sizeof *tts_f);
    float *lens_f = malloc((size_t)B * sizeof *lens_f);
    for (int i = 0; i < B * T; i++) { ids_f[i] = (float)s.bb.ids[i]; tts_f[i] = (float)s.bb.tts[i]; }
    for (int i = 0; i < B; i++) lens_f[i] = (float)s.bb.lens[i];
    st_write_item *items = calloc((size_t)t->pb.n + 5, sizeof *items);
    int ni = 0;
    items[ni++] = (st_write_item){"loss", 1, {1}, &loss};
    items[ni++] = (st_write_item){"logits", 2, {B, K}, logits};
    items[ni++] = (st_write_item){"input_ids", 2, {B, T}, ids_f};
    items[ni++] = (st_write_item){"token_type_ids", 2, {B, T}, tts_f};
    items[ni++] = (st_write_item){"lens", 1, {B}, lens_f};
    double gn2 = 0;
    for (int i = 0; i < t->pb.n; i++) {
        const param_entry *e = &t->pb.e[i];
        items[ni].name = e->name;
        items[ni].ndim = e->ndim;
        for (int k = 0; k < e->ndim; k++) items[ni].shape[k] = e->shape[k];
        items[ni].data = params_grad(&t->pb, i);
        for (size_t j = 0; j < e->numel; j++) gn2 += (double)items[ni].data[j] * items[ni].data[j];
        ni++;
    }
    peftc_status rc = st_write_f32(out_path, items, ni, NULL, &err);
    CHECK(rc == PEFTC_OK, "%s: loss %.8f, grad norm %.6f, %d trainable tensors (%lld values) written%s%s",
          s.label, loss, sqrt(gn2), t->pb.n, (long long)task_trainable_count(t), rc ? ": " : "", rc ? err.msg : "");
    free(items);
    free(ids_f);
    free(tts_f);
    free(lens_f);
    free(logits);
    teardown(&s);
    return tl_finish();
}

static int cmd_fresh(int argc, char **argv)
{
    const char *model_dir = argv[0], *data_path = argv[1], *method = argv[2];
    peftc_error err = {0};
    setup s;
    const char *what;
    if (build(&s, model_dir, data_path, method, argc - 3, argv + 3, &what, &err)) return tl_die(what, &err);
    task *t = &s.t;
    int B = s.B, T = s.T, K = t->labels.n, C = s.m->cfg.hidden_size;

    /* the base: a second load of the model, never touched by a method, no model_run at all */
    peftc_model *m0 = NULL;
    model_acts *a0 = NULL;
    cls_head h0;
    memset(&h0, 0, sizeof h0);
    if (peftc_model_load(model_dir, &m0, &err) || model_acts_init(m0, &a0, B, T, 0, 0, 0, &err) ||
        cls_head_alloc(&h0, C, K, B, &err))
        return tl_die("base model", &err);
    m0->family->forward(m0, a0, NULL, s.bb.ids, s.bb.tts, s.bb.lens, B, T);
    h0.C = C;
    h0.K = K;
    m0->family->pooler(m0, &h0.pool_w, &h0.pool_b);
    h0.cls_w = params_value(&t->pb, t->p_cls_w); /* the task's own (random) classifier */
    h0.cls_b = params_value(&t->pb, t->p_cls_b);
    cls_head_forward(&h0, m0->family->hidden(m0, a0), B, T, 0.0f, 0, NULL, 0);
    float *base = tl_dup_floats(h0.logits, (size_t)B * K);
    double bmax = 0;
    for (int i = 0; i < B * K; i++) bmax = fmax(bmax, fabs(base[i]));

    int n_method = 0;
    for (int i = 0; i < t->pb.n; i++) n_method += i != t->p_cls_w && i != t->p_cls_b;
    task_forward(t, s.bb.ids, s.bb.tts, s.bb.lens, s.bb.labels, B, T, 1, &s.rng);
    double d_train = tl_max_abs_diff(t->head.logits, base, (size_t)B * K);
    task_forward(t, s.bb.ids, s.bb.tts, s.bb.lens, NULL, B, T, 0, &s.rng);
    double d_eval = tl_max_abs_diff(t->head.logits, base, (size_t)B * K);
    CHECK(d_train <= TOL_BASE && d_eval <= TOL_BASE && n_method > 0,
          "%s: a fresh task (its own init, %d method tensors) gives the base model's logits: max abs diff %.3g "
          "(train-mode forward), %.3g (eval) (<= %g; |logits| up to %.3g)", s.label, n_method, d_train, d_eval, TOL_BASE, bmax);

    /* sensitivity: the method's tensors are on the forward path (random
     * moves: a shift shared by all channels would vanish in the LayerNorm) */
    for (int i = 0; i < t->pb.n; i++) {
        if (i == t->p_cls_w || i == t->p_cls_b) continue;
        float *p = params_value(&t->pb, i);
        for (size_t j = 0; j < t->pb.e[i].numel; j++) p[j] += 0.05f * peftc_rng_normal(&s.rng);
    }
    task_forward(t, s.bb.ids, s.bb.tts, s.bb.lens, NULL, B, T, 0, &s.rng);
    double d_moved = tl_max_abs_diff(t->head.logits, base, (size_t)B * K);
    CHECK(d_moved > 1e-4, "%s: sensitivity: moving the method's tensors by N(0, 0.05^2) moves the logits by %.3g (> 1e-4)",
          s.label, d_moved);

    free(base);
    cls_head_free(&h0);
    m0->family->acts_free(a0);
    peftc_model_free(m0);
    teardown(&s);
    return tl_finish();
}

int main(int argc, char **argv)
{
    if (argc >= 7 && !strcmp(argv[1], "grad")) return cmd_grad(argc - 2, argv + 2);
    if (argc >= 5 && !strcmp(argv[1], "fresh")) return cmd_fresh(argc - 2, argv + 2);
    fprintf(stderr, "usage: %s grad MODEL_DIR DATA_FILE INIT.safetensors OUT.safetensors METHOD [OPTIONS]\n"
                    "       %s fresh MODEL_DIR DATA_FILE METHOD [OPTIONS]\n", argv[0], argv[0]);
    return 2;
}
