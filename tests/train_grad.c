/* train_grad.c: peftc's loss and the gradient of every trainable tensor at
 * given weights, through the library's internal training API, for the
 * PyTorch oracle (tests/ref_train.py) to check. Not a test_*.c: it needs the
 * fixture that tests/check_train_ref.sh generates, builds this file and runs it.
 *
 *   train_grad MODEL_DIR TRAIN_FILE ADAPTER_DIR OUT.safetensors
 *
 * ADAPTER_DIR's adapter_config.json gives the method; its
 * adapter_model.safetensors the starting weights. The whole training file is
 * one batch, in file order; one forward (train mode; the fixture's dropout is
 * 0) and one backward of the mean loss (scale 1) on zeroed gradients.
 * OUT.safetensors (F32) holds "loss" (1), "logits" (B,K), "input_ids" (B,T) as
 * floats and every trainable tensor's gradient under its own name.
 *
 * For a mergeable LoRA adapter it also checks method_merge: the merged model
 * without the deltas gives the unmerged logits (<= 1e-5), merging twice
 * (merged weights + deltas) does not (the check's sensitivity), only the
 * target weights change, and unmerging restores every base weight (<= 1e-6).
 * The frozen weights' precision is the library's default (PEFTC_BF16 sets it);
 * the first line says which.
 * Prints ok/FAIL lines and "## <passed> <failed>". */
#include "peftc.h"
#include "testlib.h"
#include "train/eval.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_UNMERGE 1e-6
/* with bf16 frozen weights (tests/check_bf16.sh) the merged weight is rounded
 * once as a whole, the unmerged path rounds base and delta apart */
#define TOL_MERGE_LOGITS (kernels_bf16() ? 3e-2 : 1e-5)


/* The six linear weights of every layer: pointers into the model (re-read each
 * time: a merge re-points them at owned copies). */
#define N_LIN 6
static const char *lin_name[N_LIN] = {"query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"};
static const site_id lin_site[N_LIN] = {SITE_ATTN_Q, SITE_ATTN_K, SITE_ATTN_V, SITE_ATTN_O, SITE_FFN_IN, SITE_FFN_DOWN};
static float **lin_slot(peftc_model *m, int l, int k)
{
    float **w, **b;
    return m->family->linear(m, l, lin_site[k], &w, &b) ? w : NULL;
}

static size_t lin_numel(const peftc_config *c, int k)
{
    return (size_t)c->hidden_size * (k >= 4 ? c->intermediate_size : c->hidden_size);
}

static void merge_checks(task *t, const batch_buf *bb, int B, int T, peftc_rng *rng, const float *logits_train)
{
    peftc_model *m = t->m;
    const peftc_config *c = &m->cfg;
    int K = t->labels.n, nl = c->num_layers;
    peftc_error err = {0};

    task_forward(t, bb->ids, bb->tts, bb->lens, NULL, B, T, 0, rng);
    float *unmerged = tl_dup_floats(t->head.logits, (size_t)B * K);
    double d = tl_max_abs_diff(unmerged, logits_train, (size_t)B * K);
    CHECK(d <= 1e-6, "lora: eval-mode and train-mode forward agree with dropout 0: max abs diff %.3g", d);

    float **before = calloc((size_t)nl * N_LIN, sizeof *before);
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < N_LIN; k++) before[l * N_LIN + k] = tl_dup_floats(*lin_slot(m, l, k), lin_numel(c, k));

    peftc_status rc = method_merge(m, &t->mo, &t->pb, &t->ds, +1, &err);
    CHECK(rc == PEFTC_OK, "lora: method_merge(+1) %s", rc ? err.msg : "succeeds");
    if (rc) goto out;
    /* only the targets move, and they move by s B A */
    double moved_t = 0, moved_o = 0;
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < N_LIN; k++) {
            double x = tl_max_abs_diff(*lin_slot(m, l, k), before[l * N_LIN + k], lin_numel(c, k));
            if (t->mo.targets & (1u << lin_site[k])) moved_t = x > moved_t ? x : moved_t;
            else moved_o = x > moved_o ? x : moved_o;
        }
    CHECK(moved_t > 1e-3 && moved_o == 0, "lora: the merge moves the target weights (max %.3g) and no other (max %.3g)",
          moved_t, moved_o);

    t->merged = 1; /* the deltas are skipped */
    task_forward(t, bb->ids, bb->tts, bb->lens, NULL, B, T, 0, rng);
    d = tl_max_abs_diff(t->head.logits, unmerged, (size_t)B * K);
    CHECK(d <= TOL_MERGE_LOGITS, "lora: merged logits (deltas skipped) vs unmerged: max abs diff %.3g (<= %g)", d, TOL_MERGE_LOGITS);
    t->merged = 0; /* merged weights and the deltas: the delta counted twice */
    task_forward(t, bb->ids, bb->tts, bb->lens, NULL, B, T, 0, rng);
    d = tl_max_abs_diff(t->head.logits, unmerged, (size_t)B * K);
    CHECK(d > 1e-3, "lora: sensitivity: merged weights plus the deltas differ from unmerged (max abs diff %.3g > 1e-3)", d);

    rc = method_merge(m, &t->mo, &t->pb, &t->ds, -1, &err);
    CHECK(rc == PEFTC_OK, "lora: method_merge(-1) %s", rc ? err.msg : "succeeds");
    if (rc) goto out;
    double worst = 0;
    const char *wname = "";
    int wl = 0;
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < N_LIN; k++) {
            double x = tl_max_abs_diff(*lin_slot(m, l, k), before[l * N_LIN + k], lin_numel(c, k));
            if (x > worst || x != x) { worst = x; wname = lin_name[k]; wl = l; }
        }
    CHECK(worst <= TOL_UNMERGE, "lora: unmerge restores every base weight: max abs diff %.3g (layer %d %s) (<= %g)",
          worst, wl, wname, TOL_UNMERGE);
    task_forward(t, bb->ids, bb->tts, bb->lens, NULL, B, T, 0, rng);
    d = tl_max_abs_diff(t->head.logits, unmerged, (size_t)B * K);
    CHECK(d <= TOL_MERGE_LOGITS, "lora: after unmerge the logits (with deltas) are back: max abs diff %.3g", d);
out:
    for (int i = 0; i < nl * N_LIN; i++) free(before[i]);
    free(before);
    free(unmerged);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR TRAIN_FILE ADAPTER_DIR OUT.safetensors\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1], *train_path = argv[2], *adapter = argv[3], *out_path = argv[4];
    printf("# frozen weights in %s\n", kernels_bf16() ? "bf16" : "fp32");
    peftc_error err = {0};
    peftc_model *m = NULL;
    peftc_tokenizer *tok = NULL;
    if (peftc_model_load(model_dir, &m, &err)) return tl_die("model", &err);
    if (peftc_tokenizer_load(model_dir, &tok, &err)) return tl_die("tokenizer", &err);

    method_opts mo;
    label_set cfg_labels = {0}, labels = {0};
    int max_len = 0;
    if (adapter_read_config(adapter, &mo, &cfg_labels, &max_len, &err)) return tl_die("adapter_config.json", &err);
    if (max_len <= 0 || max_len > m->cfg.max_position) max_len = m->cfg.max_position;

    dataset d = {0};
    data_cols cols = {0};
    encoder_ctx enc;
    if (data_load(train_path, &cols, 1, &d, &err) || labels_from_data(&d, &labels, &err) ||
        data_map_labels(&d, &labels, &err) || encoder_init(&enc, tok, &mo.prompt, max_len, &err) ||
        data_tokenize(&d, encoder_encode, &enc, max_len, &err))
        return tl_die("training data", &err);
    int same = cfg_labels.n == labels.n;
    for (int i = 0; same && i < labels.n; i++) same = !strcmp(cfg_labels.names[i], labels.names[i]);
    CHECK(same, "%s: the adapter's label set equals the training file's (%d labels)", mo.name, labels.n);

    int B = d.n, T = 1;
    for (int i = 0; i < B; i++) if (d.len[i] > T) T = d.len[i];
    peftc_rng rng;
    peftc_rng_seed(&rng, 1);
    task t;
    batch_buf bb = {0};
    if (task_init(&t, m, tok, &mo, &labels, max_len, &rng, &err) || task_alloc(&t, B, T, 1, &err))
        return tl_die("task", &err);
    if (task_load_weights(&t, adapter, &err)) return tl_die("init weights", &err);
    if (batch_alloc(&bb, B, T, &err)) return tl_die("batch", &err);
    int *rows = malloc((size_t)B * sizeof *rows);
    for (int i = 0; i < B; i++) rows[i] = i;
    int Tb = batch_fill(&bb, &d, rows, B);

    memset(t.pb.g, 0, t.pb.total * sizeof(float));
    float loss = task_forward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1, &rng);
    int K = t.labels.n;
    float *logits = tl_dup_floats(t.head.logits, (size_t)B * K); /* backward reuses the buffer */
    task_backward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1.0f, &rng);

    float *ids_f = malloc((size_t)B * Tb * sizeof *ids_f);
    for (int i = 0; i < B * Tb; i++) ids_f[i] = (float)bb.ids[i];
    st_write_item *items = calloc((size_t)t.pb.n + 3, sizeof *items);
    int ni = 0;
    items[ni++] = (st_write_item){"loss", 1, {1}, &loss};
    items[ni++] = (st_write_item){"logits", 2, {B, K}, logits};
    items[ni++] = (st_write_item){"input_ids", 2, {B, Tb}, ids_f};
    double gn2 = 0;
    for (int i = 0; i < t.pb.n; i++) {
        const param_entry *e = &t.pb.e[i];
        items[ni].name = e->name;
        items[ni].ndim = e->ndim;
        for (int k = 0; k < e->ndim; k++) items[ni].shape[k] = e->shape[k];
        items[ni].data = params_grad(&t.pb, i);
        for (size_t j = 0; j < e->numel; j++) gn2 += (double)items[ni].data[j] * items[ni].data[j];
        ni++;
    }
    peftc_status rc = st_write_f32(out_path, items, ni, NULL, &err);
    CHECK(rc == PEFTC_OK, "%s: loss %.8f, grad norm %.6f, %d trainable tensors (%lld values) written to %s%s%s",
          mo.name, loss, sqrt(gn2), t.pb.n, (long long)task_trainable_count(&t), out_path, rc ? ": " : "", rc ? err.msg : "");

    /* an NF4 base cannot merge (check_qlora.sh checks the refusal) */
    if (mo.lora && method_mergeable(&mo) && t.m->cfg.quantize == PEFTC_QUANT_NONE) merge_checks(&t, &bb, B, Tb, &rng, logits);

    free(items);
    free(ids_f);
    free(logits);
    free(rows);
    batch_free(&bb);
    task_free(&t);
    encoder_free(&enc);
    data_free(&d);
    labels_free(&labels);
    labels_free(&cfg_labels);
    peftc_tokenizer_free(tok);
    peftc_model_free(m);
    return tl_finish();
}
