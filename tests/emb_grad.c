/* emb_grad.c: the embedding task (--task embedding) through the library's
 * internal API, for the PyTorch / sentence-transformers oracle
 * (tests/ref_embedding.py, run by tests/check_embedding.sh).
 *
 *   emb_grad MODEL_DIR PAIRS.tsv ADAPTER_DIR OUT.safetensors
 *       ADAPTER_DIR's config gives the method (its task must be embedding),
 *       its tensors the starting weights. Every pair of PAIRS.tsv (sentence1,
 *       sentence2) is in one batch, in file order: the anchors, then the
 *       positives; one forward (train mode; the fixture's dropout is 0) and
 *       one backward of the loss.
 *       OUT.safetensors (F32): "loss" (1), "emb" (2P, C: the mean-pooled
 *       embeddings, anchors first), "input_ids" (2P, T) as floats, and every
 *       trainable tensor's gradient under its own name.
 * Prints ok/FAIL lines for its own checks. */
#include "peftc.h"
#include "testlib.h"
#include "train/eval.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR PAIRS.tsv ADAPTER_DIR OUT.safetensors\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1], *data_path = argv[2], *adapter = argv[3], *out_path = argv[4];
    peftc_error err = {0};
    peftc_model *m = NULL;
    peftc_tokenizer *tok = NULL;
    if (peftc_model_load(model_dir, &m, &err)) return tl_die("model", &err);
    if (peftc_tokenizer_load(model_dir, &tok, &err)) return tl_die("tokenizer", &err);
    method_opts mo;
    label_set labels = {0};
    int max_len = 0;
    task_kind kind;
    if (adapter_read_task(adapter, &kind, &err) || adapter_read_config(adapter, &mo, &labels, &max_len, &err))
        return tl_die("adapter_config.json", &err);
    CHECK(kind == TASK_EMBEDDING, "%s: task %s (FEATURE_EXTRACTION -> embedding)", adapter, task_kind_name(kind));
    if (max_len <= 0 || max_len > m->cfg.max_position) max_len = m->cfg.max_position;
    dataset d = {0};
    encoder_ctx enc;
    data_cols cols = {0};
    if (encoder_init(&enc, tok, &mo.prompt, max_len, &err)) return tl_die("encoder", &err);
    if (data_load(data_path, &cols, 0, &d, &err) || data_pairs_apart(&d, &err) || data_tokenize(&d, encoder_encode, &enc, max_len, &err))
        return tl_die("pairs", &err);
    int B = d.n, T = 1, C = m->cfg.hidden_size;
    for (int i = 0; i < B; i++) if (d.len[i] > T) T = d.len[i];
    peftc_rng rng;
    peftc_rng_seed(&rng, 1);
    task t;
    batch_buf bb = {0};
    if (task_init_kind(&t, kind, m, tok, &mo, &labels, max_len, &rng, &err) || task_alloc(&t, B, T, 1, &err))
        return tl_die("task", &err);
    if (task_load_weights(&t, adapter, &err)) return tl_die("init weights", &err);
    if (batch_alloc(&bb, B, T, &err)) return tl_die("batch", &err);
    int *rows = malloc((size_t)B * sizeof *rows);
    for (int i = 0; i < B; i++) rows[i] = i;   /* rows 0..P the anchors, P..2P their positives */
    int Tb = batch_fill(&bb, &d, rows, B);
    memset(t.pb.g, 0, t.pb.total * sizeof(float));
    float loss = task_forward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1, &rng);
    float *emb = tl_dup_floats(t.ehead.emb, (size_t)B * C);
    task_backward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1.0f, &rng);

    float *ids_f = malloc((size_t)B * Tb * sizeof *ids_f);
    for (int i = 0; i < B * Tb; i++) ids_f[i] = (float)bb.ids[i];
    st_write_item *items = calloc((size_t)t.pb.n + 3, sizeof *items);
    int ni = 0;
    items[ni++] = (st_write_item){"loss", 1, {1}, &loss};
    items[ni++] = (st_write_item){"emb", 2, {B, C}, emb};
    items[ni++] = (st_write_item){"input_ids", 2, {B, Tb}, ids_f};
    for (int i = 0; i < t.pb.n; i++) {
        const param_entry *e = &t.pb.e[i];
        items[ni].name = e->name;
        items[ni].ndim = e->ndim;
        for (int k = 0; k < e->ndim; k++) items[ni].shape[k] = e->shape[k];
        items[ni].data = params_grad(&t.pb, i);
        ni++;
    }
    peftc_status rc = st_write_f32(out_path, items, ni, NULL, &err);
    CHECK(rc == PEFTC_OK, "embedding %s: %d pairs, loss %.8f, %d trainable tensors written%s%s", mo.name, d.n_pairs, loss, t.pb.n,
          rc ? ": " : "", rc ? err.msg : "");
    free(items); free(ids_f); free(emb); free(rows);
    batch_free(&bb);
    task_free(&t);
    encoder_free(&enc);
    data_free(&d);
    labels_free(&labels);
    peftc_tokenizer_free(tok);
    peftc_model_free(m);
    return tl_finish();
}
