/* tasks_grad.c: the token-classification and regression tasks through the
 * library's internal API, for the PyTorch / seqeval oracle
 * (tests/ref_tasks.py, run by tests/check_tasks.sh).
 *
 *   tasks_grad grad MODEL_DIR DATA ADAPTER_DIR OUT.safetensors
 *       ADAPTER_DIR's config gives the method and task (token-cls: DATA is a
 *       CoNLL file, mapped through the adapter's label list; regression: a
 *       TSV with a numeric label column; multi-label: a TSV whose label column
 *       lists names, mapped through the adapter's labels); its tensors the
 *       starting weights.
 *       The whole file is one batch, in file order: one forward (train mode;
 *       the fixture's dropout is 0) and one backward of the mean loss.
 *       OUT.safetensors (F32): "loss" (1), "logits" (B*T,K or B,1),
 *       "input_ids" (B,T), "labels" (B,T: token-cls, -100 ignored) as floats,
 *       and every trainable tensor's gradient under its own name.
 *   tasks_grad seqeval LABELS.txt SEQS.txt
 *       LABELS.txt: one label per line; SEQS.txt: one sentence per line,
 *       "gold indices|pred indices" (space-separated). Prints
 *       "<true> <pred> <correct>" and one such line per type ("type T P C").
 * Prints ok/FAIL lines for its own checks. */
#include "peftc.h"
#include "testlib.h"
#include "train/eval.h"
#include "train/conll.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int do_seqeval(const char *labels_path, const char *seqs_path)
{
    FILE *f = fopen(labels_path, "r");
    if (!f) { perror(labels_path); return 2; }
    label_set ls = {0, calloc(1024, sizeof(char *))};
    char line[1 << 16];
    while (ls.n < 1024 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        ls.names[ls.n++] = strdup(line);
    }
    fclose(f);
    seqeval_acc a;
    peftc_error err = {0};
    if (seqeval_init(&a, &ls, &err)) return tl_die("seqeval_init", &err);
    if (!(f = fopen(seqs_path, "r"))) { perror(seqs_path); return 2; }
    int *g = malloc(sizeof(int) * 8192), *p = malloc(sizeof(int) * 8192);
    while (fgets(line, sizeof line, f)) {
        char *bar = strchr(line, '|');
        if (!bar) continue;
        *bar = 0;
        int ng = 0, np = 0;
        for (char *t = strtok(line, " \n"); t && ng < 8192; t = strtok(NULL, " \n")) g[ng++] = atoi(t);
        for (char *t = strtok(bar + 1, " \n"); t && np < 8192; t = strtok(NULL, " \n")) p[np++] = atoi(t);
        if (ng != np) { fprintf(stderr, "length mismatch\n"); return 2; }
        seqeval_add(&a, g, p, ng);
    }
    fclose(f);
    printf("%lld %lld %lld\n", a.n_true, a.n_pred, a.n_correct);
    for (int t = 0; t < a.n_types; t++)
        if (a.t_true[t] || a.t_pred[t]) printf("type %s %lld %lld %lld\n", a.type_name[t], a.t_true[t], a.t_pred[t], a.t_correct[t]);
    free(g);
    free(p);
    seqeval_free(&a);
    labels_free(&ls);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "seqeval")) return do_seqeval(argv[2], argv[3]);
    if (argc != 6 || strcmp(argv[1], "grad")) {
        fprintf(stderr, "usage: %s grad MODEL_DIR DATA ADAPTER_DIR OUT.safetensors | seqeval LABELS SEQS\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[2], *data_path = argv[3], *adapter = argv[4], *out_path = argv[5];
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
    if (max_len <= 0 || max_len > m->cfg.max_position) max_len = m->cfg.max_position;
    dataset d = {0};
    encoder_ctx enc;
    if (encoder_init(&enc, tok, &mo.prompt, max_len, &err)) return tl_die("encoder", &err);
    long conv = 0;
    if (kind == TASK_TOKEN_CLS) {
        if (conll_load(data_path, 1, &d, &conv, &err) || conll_map_labels(&d, &labels, &err) ||
            conll_tokenize(&d, tok, &mo.prompt, max_len, &err))
            return tl_die("CoNLL data", &err);
        printf("# %d sentences, %d words, %ld tags converted IOB1 -> IOB2, %d words cut\n", d.n, d.n_words, conv, d.n_words_cut);
    } else {
        data_cols cols = {0};
        if (data_load(data_path, &cols, 1, &d, &err) ||
            (kind == TASK_MULTI_LABEL ? data_map_multi(&d, &labels, &err) : data_map_targets(&d, &err)) ||
            data_tokenize(&d, encoder_encode, &enc, max_len, &err))
            return tl_die("regression data", &err);
    }
    int B = d.n, T = 1;
    for (int i = 0; i < B; i++) if (d.len[i] > T) T = d.len[i];
    peftc_rng rng;
    peftc_rng_seed(&rng, 1);
    task t;
    batch_buf bb = {0};
    if (task_init_kind(&t, kind, m, tok, &mo, &labels, max_len, &rng, &err) || task_alloc(&t, B, T, 1, &err))
        return tl_die("task", &err);
    if (task_load_weights(&t, adapter, &err)) return tl_die("init weights", &err);
    if (batch_alloc(&bb, B, T, &err) || (kind == TASK_MULTI_LABEL && batch_alloc_multi(&bb, labels.n, &err))) return tl_die("batch", &err);
    int *rows = malloc((size_t)B * sizeof *rows);
    for (int i = 0; i < B; i++) rows[i] = i;
    int Tb = batch_fill(&bb, &d, rows, B);
    t.targets = bb.targets;
    memset(t.pb.g, 0, t.pb.total * sizeof(float));
    float loss = task_forward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1, &rng);
    int K = t.labels.n;
    size_t nlog = kind == TASK_TOKEN_CLS ? (size_t)B * Tb * K : (size_t)B * K;
    float *logits = tl_dup_floats(kind == TASK_TOKEN_CLS ? t.thead.logits : t.head.logits, nlog);
    task_backward(&t, bb.ids, bb.tts, bb.lens, bb.labels, B, Tb, 1.0f, &rng);

    float *ids_f = malloc((size_t)B * Tb * sizeof *ids_f), *lab_f = malloc((size_t)B * Tb * sizeof *lab_f);
    for (int i = 0; i < B * Tb; i++) {
        ids_f[i] = (float)bb.ids[i];
        lab_f[i] = kind == TASK_TOKEN_CLS ? (float)bb.labels[i] : 0.0f;
    }
    st_write_item *items = calloc((size_t)t.pb.n + 4, sizeof *items);
    int ni = 0;
    items[ni++] = (st_write_item){"loss", 1, {1}, &loss};
    items[ni++] = (st_write_item){"logits", 2, {(int64_t)(nlog / K), K}, logits};
    items[ni++] = (st_write_item){"input_ids", 2, {B, Tb}, ids_f};
    items[ni++] = (st_write_item){"labels", 2, {B, Tb}, lab_f};
    for (int i = 0; i < t.pb.n; i++) {
        const param_entry *e = &t.pb.e[i];
        items[ni].name = e->name;
        items[ni].ndim = e->ndim;
        for (int k = 0; k < e->ndim; k++) items[ni].shape[k] = e->shape[k];
        items[ni].data = params_grad(&t.pb, i);
        ni++;
    }
    peftc_status rc = st_write_f32(out_path, items, ni, NULL, &err);
    CHECK(rc == PEFTC_OK, "%s %s: loss %.8f, %d trainable tensors written%s%s", task_kind_name(kind), mo.name, loss, t.pb.n,
          rc ? ": " : "", rc ? err.msg : "");
    free(items); free(ids_f); free(lab_f); free(logits); free(rows);
    batch_free(&bb);
    task_free(&t);
    encoder_free(&enc);
    data_free(&d);
    labels_free(&labels);
    peftc_tokenizer_free(tok);
    peftc_model_free(m);
    return tl_finish();
}
