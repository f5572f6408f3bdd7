/* lm_grad.c: tests/check_llama_train.sh's driver: the causal-LM loss and
 * every trainable gradient of a method on a Llama model, through the library
 * (method_build, lm_task_init, lm_task_step), for tests/ref_llama_train.py to
 * compare with float64 autograd.
 *   lm_grad MODEL METHOD OUT [r alpha rslora targets pack threads]
 * Every trainable value is moved by N(0, 0.05^2) (so that LoRA's zero B and
 * (IA)^3's ones give gradients everywhere), a fixed batch of 3 rows x 12 is
 * drawn (lengths 12, 9, 12; targets at random; with pack, row 2 holds two
 * segments 5 + 7), and OUT/params.safetensors, OUT/grads.safetensors (the
 * gradients of the MEAN loss over the targets) and OUT/batch.json are written, and OUT/adapter as peftc train saves it.
 * LM_GRAD_NF4=1 loads the base with its linear weights in NF4 (--quantize nf4).
 * LM_GRAD_RECOMPUTE=1: gradient checkpointing (MODEL_KEEP_RECOMPUTE);
 * LM_GRAD_DROPOUT=P: LoRA dropout P (masks drawn: the recomputed forward
 * must draw the same ones). */
#include "model/model.h"
#include "peft/methods.h"
#include "train/task_lm.h"
#include "io/safetensors.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: lm_grad MODEL METHOD OUT [r alpha rslora targets pack threads]\n"); return 2; }
    peftc_error err = {0};
    peftc_model *m = NULL;
    const char *nf4 = getenv("LM_GRAD_NF4");
    if (peftc_model_load_quantized(argv[1], nf4 && *nf4 == '1' ? PEFTC_QUANT_NF4 : PEFTC_QUANT_NONE, &m, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (nf4 && *nf4 == '1' && m->cfg.quantize != PEFTC_QUANT_NF4) { fprintf(stderr, "the base is not NF4\n"); return 1; }
    method_args ma = {0};
    ma.r = argc > 4 ? atoi(argv[4]) : 0;
    ma.alpha = argc > 5 ? (float)atof(argv[5]) : 0;
    ma.rslora = argc > 6 ? atoi(argv[6]) : 0;
    ma.targets = argc > 7 && strcmp(argv[7], "-") ? argv[7] : NULL;
    const char *dp = getenv("LM_GRAD_DROPOUT"), *rc = getenv("LM_GRAD_RECOMPUTE");
    if (dp && *dp) ma.lora_dropout = (float)atof(dp), ma.lora_dropout_set = 1;
    int pack = argc > 8 ? atoi(argv[8]) : 0;
    if (argc > 9) omp_set_num_threads(atoi(argv[9]));
    method_opts mo;
    if (method_build(argv[2], &ma, &m->cfg, &mo, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    peftc_rng rng;
    peftc_rng_seed(&rng, 7);
    lm_task t;
    enum { B = 3, T = 12 };
    if (lm_task_init(&t, m, &mo, &rng, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    t.recompute = rc && *rc == '1';
    if (lm_task_alloc(&t, B, T, 1, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    for (size_t i = 0; i < t.pb.total; i++) t.pb.p[i] += 0.05f * peftc_rng_normal(&rng);
    int32_t ids[B * T], seg[B * T];
    uint8_t tgt[B * T];
    int lens[B] = {12, 9, 12};
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)(peftc_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size);
        tgt[i] = (uint8_t)(peftc_rng_u64(&rng) % 2);
        seg[i] = 0;
    }
    for (int b = 0; b < B; b++) {
        tgt[b * T] = 0;
        for (int t2 = lens[b]; t2 < T; t2++) ids[b * T + t2] = 0, tgt[b * T + t2] = 0;
    }
    if (pack) {
        for (int t2 = 5; t2 < T; t2++) seg[2 * T + t2] = 1;
        tgt[2 * T + 5] = 0;   /* a segment's first token is never a target */
    }
    /* the count first (the step's gradient scale is 1 / targets) */
    long nt = 0;
    for (int b = 0; b < B; b++)
        for (int p = 0; p + 1 < lens[b]; p++) nt += tgt[b * T + p + 1];
    memset(t.pb.g, 0, t.pb.total * sizeof(float));
    long got = 0;
    double loss = lm_task_step(&t, ids, tgt, pack ? seg : NULL, lens, B, T, 1.0f / (float)nt, &rng, &got);
    char path[4096];
    st_write_item *items = calloc((size_t)t.pb.n, sizeof *items);
    for (int i = 0; i < t.pb.n; i++) {
        const param_entry *e = &t.pb.e[i];
        items[i].name = e->name;
        items[i].ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) items[i].shape[d] = e->shape[d];
        items[i].data = t.pb.p + e->offset;
    }
    snprintf(path, sizeof path, "%s/params.safetensors", argv[3]);
    if (st_write_f32(path, items, t.pb.n, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    for (int i = 0; i < t.pb.n; i++) items[i].data = t.pb.g + t.pb.e[i].offset;
    snprintf(path, sizeof path, "%s/grads.safetensors", argv[3]);
    if (st_write_f32(path, items, t.pb.n, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    snprintf(path, sizeof path, "%s/batch.json", argv[3]);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"loss\": %.9g, \"n_targets\": %ld, \"scale\": %.9g, \"B\": %d, \"T\": %d, \"lens\": [%d, %d, %d], \"pack\": %d, \"ids\": [",
            loss / (double)got, got, mo.lora ? (double)lora_scale(&mo) : 0.0, B, T, lens[0], lens[1], lens[2], pack);
    for (int i = 0; i < B * T; i++) fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fprintf(f, "], \"target\": [");
    for (int i = 0; i < B * T; i++) fprintf(f, "%s%d", i ? "," : "", tgt[i]);
    fprintf(f, "], \"seg\": [");
    for (int i = 0; i < B * T; i++) fprintf(f, "%s%d", i ? "," : "", pack ? seg[i] : 0);
    fprintf(f, "]}\n");
    fclose(f);
    free(items);
    /* the adapter as `peftc train` saves it (PEFT's layout), of these values */
    snprintf(path, sizeof path, "%s/adapter", argv[3]);
    size_t ml = strlen(argv[1]);
    if (lm_task_save_adapter(&t, path, argv[1], ml > 5 && !strcmp(argv[1] + ml - 5, ".gguf"), &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    lm_task_free(&t);
    peftc_model_free(m);
    return 0;
}
