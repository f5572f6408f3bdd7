/* train_step.c: the peftc side of bench/run. Times one workload through the
 * library's internal training API (the same calls as src/train/trainer.c's
 * loop) on a synthetic full-length batch, and prints one line
 *   RESULT impl=peftc key=value ...
 * that bench/report.py turns into the table. One workload per process, so
 * that /usr/bin/time -v's peak RSS is that workload's.
 *
 *   train_step train METHOD B T MODEL_DIR   METHOD: lora | adapter-pfeiffer | prefix | full
 *   train_step infer lora|lora-merged B T MODEL_DIR
 *   train_step sgemm N                       cblas_sgemm N^3 (the machine's peak)
 *   train_step bf16gemm N                    matmul_bf16_forward N^3 (the bf16 path's peak;
 *                                            AMX where usable), exit 3 without AVX-512-BF16
 *
 * Precision: PEFTC_BF16=1 runs the frozen weights' matmuls in bf16
 * (kernels_set_bf16(1): AMX tiles where the CPU and kernel allow,
 * PEFTC_BF16_AMX=0 forbids them), PEFTC_BF16=0 in fp32; either is applied
 * here explicitly, so the library's default does not matter (unset: the
 * default). PEFTC_BF16=1 on a CPU without AVX-512-BF16 exits 3. Trainable
 * weights, the deltas, attention, LayerNorm etc. are fp32 either way. The
 * RESULT line says precision=fp32|bf16 and amx=0|1.
 *
 * Shape options (for bench/scaling.sh; defaults = the bench/run workloads):
 *   BENCH_LORA_R   LoRA rank (8; alpha stays 16)
 *   BENCH_LAYERS   use only the first L encoder layers (all): cfg.num_layers
 *                  is lowered after loading and before the method and the
 *                  buffers are built, so everything sized from it (deltas,
 *                  gradients, activations, the FLOP count) sees L layers; the
 *                  pooler reads layer L's output. base_params counts L layers.
 *
 * Training step = zero grads + task_forward(train=1) + task_backward + global
 * grad-norm clipping at 1.0 + adamw_update of every trainable tensor
 * (constant lr 2e-3, full 1e-4; weight decay 0.01, none on biases/norms).
 * Dropout as in the model's config (0.1: hidden, attention probabilities,
 * pooled output); LoRA dropout 0. The same batch every step (the loss must
 * fall: a check that the step really trains). Inference = task_forward
 * (train=0, logits) per batch; merged: method_merge(+1) and t->merged = 1;
 * the line ends with every logit of the batch (torch_step.py, given the same
 * deterministic classifier and LoRA values, must print the same).
 *
 * Timing: BENCH_WARMUP (2) untimed steps, then steps until at least
 * BENCH_MIN_STEPS (5) and BENCH_MIN_SECONDS (3) (at most BENCH_MAX_STEPS, 200);
 * the median and the minimum step are reported.
 *
 * The batch: ids[b][0] = 101 ([CLS]), ids[b][T-1] = 102 ([SEP]), the rest
 * splitmix64-random in [1000, 30000); labels random in {0, 1}; token types 0;
 * every sequence full length (no padding). bench/torch_step.py builds the
 * identical batch. */
#include "peftc.h"
#include "train/task.h"
#include "kernels/kernels.h"
#include "core/rng.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int env_int(const char *name, int def)
{
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

static double env_double(const char *name, double def)
{
    const char *s = getenv(name);
    return s && *s ? atof(s) : def;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* the batch (bench/torch_step.py: make_batch) */
static void make_batch(int32_t *ids, int32_t *tts, int *lens, int *labels, int B, int T)
{
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            ids[i] = t == 0 ? 101 : t == T - 1 ? 102 : (int32_t)(1000 + splitmix64(i) % 29000);
            tts[i] = 0;
        }
        lens[b] = T;
        labels[b] = (int)(splitmix64(1000000007ull + (uint64_t)b) & 1);
    }
}

/* p[i] = scale * u, u in [-1, 1] from splitmix64((salt << 32) ^ i)
 * (torch_step.py: det_fill) */
static void det_fill(float *p, size_t n, uint64_t salt, float scale)
{
    for (size_t i = 0; i < n; i++)
        p[i] = ((float)(splitmix64((salt << 32) ^ i) % 2001) * 1e-3f - 1.0f) * scale;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Matmul FLOPs (2 per multiply-add) of one step. Forward: every linear, the
 * attention's QK^T and PV, the method's deltas, pooler and classifier.
 * Backward: every matmul's activation gradient (all layers, including layer
 * 0's input gradient, which nothing below needs) and the weight gradient only
 * of trainable weights; attention: dQ, dK, dP, dV. Embedding lookups,
 * LayerNorm, GELU, softmax, AdamW: not counted. */
static double step_flops(const char *method, const peftc_config *c, int B, int T, int train, int merged,
                         int r, int n_targets, int n_prefix, int K)
{
    double N = (double)B * T, C = c->hidden_size, F = c->intermediate_size, L = c->num_layers;
    double Tk = T + n_prefix;
    double lin = 2 * N * (4 * C * C + 2 * C * F);          /* q k v o, ffn in, ffn down */
    double att = 2 * 2 * (double)B * T * Tk * C;           /* QK^T, PV over all heads */
    double delta = 0;                                      /* forward of the deltas per layer */
    int full = !strcmp(method, "full");
    if (!strcmp(method, "lora") && !merged) delta = n_targets * 4 * N * C * r;
    if (!strcmp(method, "adapter-pfeiffer")) delta = 4 * N * C * r;
    double head = 2 * B * C * C + 2 * B * C * K;
    double f = L * (lin + att + delta) + head;
    if (!train) return f;
    double b = L * (lin + 2 * att + 2 * delta)             /* dX of all linears, 4 attention matmuls, deltas: dX+dW */
               + 2 * B * C * C + 2 * 2 * B * C * K;        /* pooler dX, classifier dX + dW */
    if (full) b += L * lin + 2 * B * C * C;                /* weight gradients */
    return f + b;
}

static int usage(void)
{
    fprintf(stderr, "usage: train_step train lora|adapter-pfeiffer|prefix|full B T MODEL_DIR\n"
                    "       train_step infer lora|lora-merged B T MODEL_DIR\n"
                    "       train_step sgemm N\n"
                    "       train_step bf16gemm N\n");
    return 2;
}

/* PEFTC_BF16=0|1 applied explicitly (whatever the library's default);
 * returns 0, or 3 when bf16 is asked for and the CPU cannot */
static int set_precision(void)
{
    const char *e = getenv("PEFTC_BF16");
    if (!e || !*e) return 0;
    int want = strcmp(e, "0") != 0;
    if (kernels_set_bf16(want) != want) {
        fprintf(stderr, "train_step: PEFTC_BF16=1 but this CPU lacks AVX-512-BF16\n");
        return 3;
    }
    return 0;
}

/* out (N,N) = in (N,N) @ w^T through the bf16 path (what a frozen linear
 * runs with PEFTC_BF16=1): rounding the activations is part of the time */
static int bench_bf16gemm(int n)
{
    if (!kernels_bf16_supported()) {
        fprintf(stderr, "train_step: this CPU lacks AVX-512-BF16\n");
        return 3;
    }
    float *a = malloc((size_t)n * n * sizeof *a), *w = malloc((size_t)n * n * sizeof *w),
          *c = malloc((size_t)n * n * sizeof *c);
    if (!a || !w || !c) { fprintf(stderr, "out of memory\n"); return 1; }
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(splitmix64(i) % 2001) * 1e-3f - 1.0f;
        w[i] = (float)(splitmix64(i + 7777777) % 2001) * 1e-3f - 1.0f;
    }
    matmul_bf16 *wb = matmul_bf16_pack(w, n, n);
    if (!wb) { fprintf(stderr, "out of memory\n"); return 1; }
    int reps = env_int("BENCH_SGEMM_REPS", 10);
    double best = 1e30, ts[256];
    if (reps > 256) reps = 256;
    if (reps < 1) reps = 1;
    matmul_bf16_forward(c, a, wb, NULL, n, n, n, 0);   /* warm-up */
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        matmul_bf16_forward(c, a, wb, NULL, n, n, n, 0);
        ts[i] = now_s() - t0;
        if (ts[i] < best) best = ts[i];
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
    double fl = 2.0 * n * n * n;
    printf("RESULT impl=peftc workload=bf16gemm precision=bf16 amx=%d n=%d threads=%d reps=%d best_ms=%.3f "
           "median_ms=%.3f peak_gflops=%.2f median_gflops=%.2f check=%.4g\n",
           kernels_bf16_amx(-1), n, omp_get_max_threads(), reps, best * 1e3, ts[reps / 2] * 1e3,
           fl / best * 1e-9, fl / ts[reps / 2] * 1e-9, (double)c[(size_t)n * n / 2]);
    matmul_bf16_free(wb);
    free(a); free(w); free(c);
    return 0;
}

static int bench_sgemm(int n)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    if (!a || !b || !c) { fprintf(stderr, "out of memory\n"); return 1; }
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(splitmix64(i) % 2001) * 1e-3f - 1.0f;
        b[i] = (float)(splitmix64(i + 7777777) % 2001) * 1e-3f - 1.0f;
        c[i] = 0;
    }
    int reps = env_int("BENCH_SGEMM_REPS", 10);
    double best = 1e30, ts[256];
    if (reps > 256) reps = 256;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        ts[i] = now_s() - t0;
        if (ts[i] < best) best = ts[i];
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
    double fl = 2.0 * n * n * n;
    printf("RESULT impl=peftc workload=sgemm n=%d threads=%d reps=%d best_ms=%.3f median_ms=%.3f "
           "peak_gflops=%.2f median_gflops=%.2f check=%.4g\n",
           n, omp_get_max_threads(), reps, best * 1e3, ts[reps / 2] * 1e3, fl / best * 1e-9,
           fl / ts[reps / 2] * 1e-9, (double)c[(size_t)n * n / 2]);
    free(a); free(b); free(c);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = set_precision();
    if (rc) return rc;
    if (argc == 3 && !strcmp(argv[1], "sgemm")) return bench_sgemm(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "bf16gemm")) return bench_bf16gemm(atoi(argv[2]));
    if (argc != 6) return usage();
    int train = !strcmp(argv[1], "train");
    if (!train && strcmp(argv[1], "infer")) return usage();
    const char *method = argv[2];
    int B = atoi(argv[3]), T = atoi(argv[4]);
    const char *model_dir = argv[5];
    int merged = !train && !strcmp(method, "lora-merged");
    const char *preset = merged ? "lora" : method;
    if (B < 1 || T < 2) return usage();
    if (!train && strcmp(preset, "lora")) return usage();

    peftc_error err = {0};
    peftc_model *m = NULL;
    method_opts mo;
    /* LoRA r 8, alpha 16 on query, value; Pfeiffer adapter r = d/16 = 24;
     * prefix 20 vectors per layer, no reparameterisation */
    method_args ma = {.r = 0, .alpha = 16, .targets = "query,value", .prefix_len = 20, .prefix_projection = -1};
    if (!strcmp(preset, "lora") && (ma.r = env_int("BENCH_LORA_R", 8)) < 1) {
        fprintf(stderr, "train_step: BENCH_LORA_R must be >= 1\n");
        return 2;
    }
    double t_load = now_s();
    if (peftc_model_load(model_dir, &m, &err)) {
        fprintf(stderr, "train_step: %s\n", err.msg);
        return 1;
    }
    /* BENCH_LAYERS: only the first L layers; set before anything is sized
     * from cfg.num_layers (the other layers stay mapped, unused) */
    int64_t base_params = peftc_model_param_count(m);
    int L = env_int("BENCH_LAYERS", m->cfg.num_layers);
    if (L < 1 || L > m->cfg.num_layers) {
        fprintf(stderr, "train_step: BENCH_LAYERS must be in [1, %d]\n", m->cfg.num_layers);
        return 2;
    }
    {
        int64_t C = m->cfg.hidden_size, F = m->cfg.intermediate_size;
        int64_t per_layer = 4 * (C * C + C) + 2 * C * F + F + C + 4 * C;   /* q k v o, ffn, 2 LayerNorms */
        base_params -= (int64_t)(m->cfg.num_layers - L) * per_layer;
        m->cfg.num_layers = L;
    }
    if (method_build(preset, &ma, &m->cfg, &mo, &err)) {
        fprintf(stderr, "train_step: %s\n", err.msg);
        return 1;
    }
    mo.prefix.project = 0;   /* plain prefix vectors, whatever the preset's default */
    char *names[2] = {"0", "1"};
    label_set labels = {2, names};
    peftc_rng rng;
    peftc_rng_seed(&rng, 42);
    task t;
    if (task_init(&t, m, NULL, &mo, &labels, T, &rng, &err) || task_alloc(&t, B, T, train, &err)) {
        fprintf(stderr, "train_step: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = malloc((size_t)B * T * sizeof *ids), *tts = malloc((size_t)B * T * sizeof *tts);
    int *lens = malloc((size_t)B * sizeof *lens), *lab = malloc((size_t)B * sizeof *lab);
    if (!ids || !tts || !lens || !lab) { fprintf(stderr, "out of memory\n"); return 1; }
    make_batch(ids, tts, lens, lab, B, T);

    /* deterministic values shared with torch_step.py (det_fill), so that the
     * two sides compute the same function: the classifier, LoRA A, and in
     * inference a non-zero LoRA B (it starts at zero, as in training) */
    det_fill(params_value(&t.pb, t.p_cls_w), (size_t)labels.n * m->cfg.hidden_size, 7, 0.03f);
    memset(params_value(&t.pb, t.p_cls_b), 0, (size_t)labels.n * sizeof(float));
    if (mo.lora) {
        const char *tg[2] = {"query", "value"};
        for (int l = 0; l < m->cfg.num_layers; l++)
            for (int k = 0; k < 2; k++)
                for (int ab = 0; ab < 2; ab++) {
                    char name[PARAM_NAME_MAX];
                    snprintf(name, sizeof name, "%sencoder.layer.%d.attention.self.%s.lora_%c.weight", m->family->peft_prefix,
                             l, tg[k], ab ? 'B' : 'A');
                    int i = params_find(&t.pb, name);
                    if (i < 0) { fprintf(stderr, "train_step: no tensor %s\n", name); return 1; }
                    if (ab && train) continue;
                    det_fill(params_value(&t.pb, i), t.pb.e[i].numel, 1000 + l * 4 + k * 2 + ab, ab ? 0.1f : 0.05f);
                }
    }
    if (merged) {
        if (method_merge(m, &t.mo, &t.pb, &t.ds, +1, &err)) {
            fprintf(stderr, "train_step: merge: %s\n", err.msg);
            return 1;
        }
        t.merged = 1;
    }
    t_load = now_s() - t_load;

    int warm = env_int("BENCH_WARMUP", 2), min_steps = env_int("BENCH_MIN_STEPS", 5);
    int max_steps = env_int("BENCH_MAX_STEPS", 200);
    double min_s = env_double("BENCH_MIN_SECONDS", 3.0);
    if (max_steps < min_steps) max_steps = min_steps;
    /* higher than fine-tuning defaults (5e-4, 2e-5) so that the loss visibly
     * falls on the repeated batch within the few timed steps despite dropout;
     * the speed does not depend on it */
    float lr = !strcmp(preset, "full") ? 1e-4f : 2e-3f;
    double *ts = malloc((size_t)max_steps * sizeof *ts);
    float *losses = malloc((size_t)(warm + max_steps) * sizeof *losses);
    if (!ts || !losses) { fprintf(stderr, "out of memory\n"); return 1; }
    int n = 0, step = 0;
    double t_total = 0;
    float *logits = calloc((size_t)B * labels.n, sizeof *logits);
    if (!logits) { fprintf(stderr, "out of memory\n"); return 1; }
    for (;;) {
        int timed = step >= warm;
        if (timed && n >= min_steps && (t_total >= min_s || n >= max_steps)) break;
        double t0 = now_s();
        float loss;
        if (train) {
            memset(t.pb.g, 0, t.pb.total * sizeof(float));
            loss = task_forward(&t, ids, tts, lens, lab, B, T, 1, &rng);
            task_backward(&t, ids, tts, lens, lab, B, T, 1.0f, &rng);
            double norm2 = 0;
            for (size_t i = 0; i < t.pb.total; i++) norm2 += (double)t.pb.g[i] * t.pb.g[i];
            float norm = (float)sqrt(norm2);
            if (norm > 1.0f) {
                float cl = 1.0f / (norm + 1e-6f);
                for (size_t i = 0; i < t.pb.total; i++) t.pb.g[i] *= cl;
            }
            for (int i = 0; i < t.pb.n; i++) {
                const param_entry *e = &t.pb.e[i];
                adamw_update(t.pb.p + e->offset, t.pb.g + e->offset, t.pb.m + e->offset, t.pb.v + e->offset,
                             e->numel, lr, 0.9f, 0.999f, 1e-8f, e->no_decay ? 0.0f : 0.01f, step + 1);
            }
        } else {
            loss = task_forward(&t, ids, tts, lens, lab, B, T, 0, &rng);
            memcpy(logits, t.head.logits, (size_t)B * labels.n * sizeof(float));
        }
        double dt = now_s() - t0;
        if (!isfinite(loss)) { fprintf(stderr, "train_step: non-finite loss at step %d\n", step + 1); return 1; }
        losses[step] = loss;
        if (timed) { ts[n++] = dt; t_total += dt; }
        step++;
    }
    double med_sorted[256];
    int nm = n < 256 ? n : 256;
    memcpy(med_sorted, ts + (n - nm), (size_t)nm * sizeof(double));
    qsort(med_sorted, (size_t)nm, sizeof(double), cmp_double);
    double med = nm % 2 ? med_sorted[nm / 2] : 0.5 * (med_sorted[nm / 2 - 1] + med_sorted[nm / 2]);
    double fl = step_flops(preset, &m->cfg, B, T, train, merged, mo.r > 0 ? mo.r : (mo.n_deltas ? mo.deltas[0].r : 0),
                           mo.lora ? __builtin_popcount(mo.targets) : 0, mo.prefix.n, labels.n);
    printf("RESULT impl=peftc workload=%s method=%s precision=%s amx=%d B=%d T=%d layers=%d r=%d threads=%d "
           "trainable=%lld base_params=%lld "
           "warmup=%d steps=%d median_ms=%.3f min_ms=%.3f tokens_per_s=%.1f seq_per_s=%.2f "
           "loss_first=%.5f loss_last=%.5f gflop=%.3f gflops=%.2f load_s=%.2f dropout=%.2f isa=%s lr=%g",
           train ? "train" : "infer", method, kernels_bf16() ? "bf16" : "fp32", kernels_bf16() && kernels_bf16_amx(-1),
           B, T, m->cfg.num_layers, mo.lora ? mo.r : 0, omp_get_max_threads(), (long long)task_trainable_count(&t),
           (long long)base_params,
           warm, n, med * 1e3, med_sorted[0] * 1e3, B * T / med, B / med, losses[0], losses[step - 1],
           fl * 1e-9, fl / med * 1e-9, t_load, train ? m->cfg.hidden_dropout : 0.0, kernels_isa_name(kernels_isa()), train ? lr : 0.0);
    if (!train) {
        /* every logit, for the cross-implementation check */
        printf(" logits=");
        for (int i = 0; i < B * labels.n; i++) printf("%s%.6g", i ? "," : "", logits[i]);
    }
    printf("\n");
    free(ts); free(losses); free(logits); free(ids); free(tts); free(lens); free(lab);
    task_free(&t);
    peftc_model_free(m);
    return 0;
}
