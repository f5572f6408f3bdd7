/* test_methods.c: every method preset and delta combination on a tiny random
 * BERT, built here: gradients of the whole task against central finite
 * differences (double-checked on sampled entries of every trainable tensor),
 * the start-as-the-base property of each initialisation, merge/unmerge, and
 * template placement of virtual tokens. */
#include "testlib.h"
#include "train/task.h"
#include "model/bert.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

#include <omp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { C = 16, NH = 2, F = 32, L = 2, V = 40, P = 32, B = 3, T = 7, K = 3 };
static char dir[256];

static void make_model(void)
{
    snprintf(dir, sizeof dir, "/tmp/peftc_test_methods_%d", (int)getpid());
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"model_type\":\"bert\",\"vocab_size\":%d,\"hidden_size\":%d,\"num_hidden_layers\":%d,"
               "\"num_attention_heads\":%d,\"intermediate_size\":%d,\"max_position_embeddings\":%d,"
               "\"hidden_dropout_prob\":0.0,\"attention_probs_dropout_prob\":0.0,\"hidden_act\":\"gelu\"}", V, C, L, NH, F, P);
    fclose(f);
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    f = fopen(path, "w");
    fputs("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", f);
    for (int i = 5; i < V; i++) fprintf(f, "w%d\n", i);
    fclose(f);
    /* random weights, LayerNorm weights near 1 */
    static float buf[64][V * C > F * C ? V * C : F * C];
    st_write_item it[64];
    int n = 0;
    peftc_rng r;
    peftc_rng_seed(&r, 11);
    char *names[64];
#define ADD(nm, d0, d1, ln) do { names[n] = strdup(nm); int64_t ne = (int64_t)(d0) * ((d1) ? (d1) : 1); \
        for (int64_t i = 0; i < ne; i++) buf[n][i] = (ln ? 1.0f : 0.0f) + 0.3f * peftc_rng_normal(&r); \
        it[n] = (st_write_item){names[n], (d1) ? 2 : 1, {(d0), (d1)}, buf[n]}; n++; } while (0)
    ADD("embeddings.word_embeddings.weight", V, C, 0);
    ADD("embeddings.position_embeddings.weight", P, C, 0);
    ADD("embeddings.token_type_embeddings.weight", 2, C, 0);
    ADD("embeddings.LayerNorm.weight", C, 0, 1);
    ADD("embeddings.LayerNorm.bias", C, 0, 0);
    for (int l = 0; l < L; l++) {
        char nm[128];
#define LADD(sfx, d0, d1, ln) do { snprintf(nm, sizeof nm, "encoder.layer.%d.%s", l, sfx); ADD(nm, d0, d1, ln); } while (0)
        LADD("attention.self.query.weight", C, C, 0); LADD("attention.self.query.bias", C, 0, 0);
        LADD("attention.self.key.weight", C, C, 0);   LADD("attention.self.key.bias", C, 0, 0);
        LADD("attention.self.value.weight", C, C, 0); LADD("attention.self.value.bias", C, 0, 0);
        LADD("attention.output.dense.weight", C, C, 0); LADD("attention.output.dense.bias", C, 0, 0);
        LADD("attention.output.LayerNorm.weight", C, 0, 1); LADD("attention.output.LayerNorm.bias", C, 0, 0);
        LADD("intermediate.dense.weight", F, C, 0); LADD("intermediate.dense.bias", F, 0, 0);
        LADD("output.dense.weight", C, F, 0); LADD("output.dense.bias", C, 0, 0);
        LADD("output.LayerNorm.weight", C, 0, 1); LADD("output.LayerNorm.bias", C, 0, 0);
    }
    ADD("pooler.dense.weight", C, C, 0);
    ADD("pooler.dense.bias", C, 0, 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    peftc_error err = {0};
    if (st_write_f32(path, it, n, NULL, &err)) { printf("cannot write the model: %s\n", err.msg); exit(1); }
    for (int i = 0; i < n; i++) free(names[i]);
}

/* a padded batch: lengths 7, 5, 3; virtual tokens at fixed places when asked */
static int32_t ids[B * T], tts[B * T];
static int lens[B] = {7, 5, 3}, labels[B] = {0, 2, 1};

static void make_batch(int n_virtual)
{
    peftc_rng r;
    peftc_rng_seed(&r, 5);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            ids[i] = t < lens[b] ? 5 + (int)peftc_rng_below(&r, V - 5) : 0;
            tts[i] = t >= 3 && t < lens[b];
            if (t == 0) ids[i] = 2;
        }
    /* virtual tokens: positions 1.. of every sequence */
    for (int k = 0; k < n_virtual; k++)
        for (int b = 0; b < B; b++) if (1 + k < lens[b]) ids[b * T + 1 + k] = -(k + 1);
}

static double loss_at(task *t)
{
    return task_forward(t, ids, tts, lens, labels, B, T, 1, NULL);
}

/* Builds the task for a method; perturbs every trainable value so no gradient
 * is trivially zero (up projections start at 0). */
static int build(task *t, peftc_model **m, const method_opts *mo, int perturb)
{
    peftc_error err = {0};
    label_set ls = {K, (char *[]){"a", "b", "c"}};
    if (peftc_model_load(dir, m, &err)) { printf("model: %s\n", err.msg); return 0; }
    peftc_rng r;
    peftc_rng_seed(&r, 3);
    if (task_init(t, *m, NULL, mo, &ls, T, &r, &err) || task_alloc(t, B, T, 1, &err)) {
        printf("task %s: %s\n", mo->name, err.msg);
        return 0;
    }
    if (perturb)
        for (size_t i = 0; i < t->pb.total; i++) t->pb.p[i] += 0.1f * peftc_rng_normal(&r);
    return 1;
}

static void check_grads(const char *label, const method_opts *mo)
{
    task t;
    peftc_model *m = NULL;
    if (!build(&t, &m, mo, 1)) { CHECK(0, "%s: build", label); peftc_model_free(m); return; }
    make_batch(mo->prompt.n_virtual);
    memset(t.pb.g, 0, t.pb.total * sizeof(float));
    loss_at(&t);
    task_backward(&t, ids, tts, lens, labels, B, T, 1.0f, NULL);
    double worst = 0;
    const char *worst_name = "";
    int checked = 0, skipped = 0;
    for (int e = 0; e < t.pb.n; e++) {
        const param_entry *pe = &t.pb.e[e];
        size_t step = pe->numel > 6 ? pe->numel / 6 : 1;
        double gmax = 0;
        for (size_t i = 0; i < pe->numel; i++) gmax = fmax(gmax, fabs(t.pb.g[pe->offset + i]));
        for (size_t i = 0; i < pe->numel; i += step) {
            float *p = &t.pb.p[pe->offset + i], keep = *p;
            const float h = 2e-3f;
            *p = keep + h; double lp = loss_at(&t);
            *p = keep - h; double lm = loss_at(&t);
            *p = keep + h / 2; double lp2 = loss_at(&t);
            *p = keep - h / 2; double lm2 = loss_at(&t);
            *p = keep;
            double fd = (lp - lm) / (2.0 * h), fd2 = (lp2 - lm2) / h, an = t.pb.g[pe->offset + i];
            /* a ReLU kink within +-h makes the two step sizes disagree: not a smooth point, skip it */
            if (fabs(fd - fd2) > 0.05 * fabs(fd) + 2e-4) { skipped++; continue; }
            /* float32 loss: central differences carry ~1e-4 absolute noise */
            double rel = fabs(fd - an) / (fmax(gmax, 5e-3));
            if (rel > worst) { worst = rel; worst_name = pe->name; }
            checked++;
        }
    }
    CHECK(worst < 2e-2 && checked > 0 && skipped * 10 < checked, "%s: %d sampled gradients vs finite differences "
          "(%d at non-smooth points skipped), worst rel err %.2e (%s)", label, checked, skipped, worst, worst_name);
    task_free(&t);
    peftc_model_free(m);
}

/* AdaLoRA's init as PEFT's reset_lora_parameters: E = 0, A and B ~ N(0, 0.02^2). */
static void check_adalora_init(const method_opts *mo)
{
    task t;
    peftc_model *m = NULL;
    if (!build(&t, &m, mo, 0)) { CHECK(0, "adalora init: build"); peftc_model_free(m); return; }
    double s2[2] = {0, 0}, mean[2] = {0, 0};
    size_t n[2] = {0, 0}, nonzero_e = 0, n_e = 0;
    for (int e = 0; e < t.pb.n; e++) {
        const param_entry *pe = &t.pb.e[e];
        const float *p = t.pb.p + pe->offset;
        size_t len = strlen(pe->name);
        int which = len > 7 && !strcmp(pe->name + len - 7, ".lora_A") ? 0 : len > 7 && !strcmp(pe->name + len - 7, ".lora_B") ? 1 : -1;
        if (len > 7 && !strcmp(pe->name + len - 7, ".lora_E")) {
            for (size_t i = 0; i < pe->numel; i++) nonzero_e += p[i] != 0.0f;
            n_e += pe->numel;
        }
        if (which < 0) continue;
        for (size_t i = 0; i < pe->numel; i++) { s2[which] += (double)p[i] * p[i]; mean[which] += p[i]; }
        n[which] += pe->numel;
    }
    double sa = sqrt(s2[0] / n[0]), sb = sqrt(s2[1] / n[1]);
    /* std of a sample std of n normals: 0.02 / sqrt(2n); allow 5 of them */
    double tol_a = 5 * 0.02 / sqrt(2.0 * n[0]), tol_b = 5 * 0.02 / sqrt(2.0 * n[1]);
    CHECK(n_e > 0 && nonzero_e == 0 && fabs(sa - 0.02) < tol_a && fabs(sb - 0.02) < tol_b &&
          fabs(mean[0] / n[0]) < 5 * 0.02 / sqrt((double)n[0]) && fabs(mean[1] / n[1]) < 5 * 0.02 / sqrt((double)n[1]),
          "adalora init: E = 0 (%zu values), A std %.4f (%zu values), B std %.4f (%zu), means %.2g %.2g (PEFT: N(0, 0.02^2))",
          n_e, sa, n[0], sb, n[1], mean[0] / n[0], mean[1] / n[1]);
    task_free(&t);
    peftc_model_free(m);
}

/* With its initialisation, a method's model computes exactly the base model's hidden states. */
static void check_starts_as_base(const char *label, const method_opts *mo)
{
    method_opts none = {0};
    snprintf(none.name, sizeof none.name, "none");
    task t0, t1;
    peftc_model *m0 = NULL, *m1 = NULL;
    if (!build(&t0, &m0, &none, 0) || !build(&t1, &m1, mo, 0)) { CHECK(0, "%s: build", label); return; }
    make_batch(0);
    task_forward(&t0, ids, tts, lens, NULL, B, T, 0, NULL);
    task_forward(&t1, ids, tts, lens, NULL, B, T, 0, NULL);
    double d = tl_max_abs_diff(m0->family->hidden(m0, t0.acts), m1->family->hidden(m1, t1.acts), (size_t)B * T * C);
    CHECK(d == 0.0, "%s: hidden states at step 0 equal the base model's (max diff %.3g)", label, d);
    task_free(&t0); task_free(&t1);
    peftc_model_free(m0); peftc_model_free(m1);
}

static void check_merge(const char *label, const method_opts *mo)
{
    task t;
    peftc_model *m = NULL;
    if (!build(&t, &m, mo, 1)) { CHECK(0, "%s: build", label); return; }
    make_batch(0);
    float before[B * K], merged[B * K];
    task_forward(&t, ids, tts, lens, NULL, B, T, 0, NULL);
    memcpy(before, t.head.logits, sizeof before);
    float wq0[C * C], wv0[C * C], wf0[C * F];
    memcpy(wq0, bert_of(m)->layers[1].wq, sizeof wq0);
    memcpy(wv0, bert_of(m)->layers[1].wv, sizeof wv0);
    memcpy(wf0, bert_of(m)->layers[1].wf, sizeof wf0);
    peftc_error err = {0};
    CHECK(method_merge(m, &t.mo, &t.pb, &t.ds, +1, &err) == PEFTC_OK, "%s: merge: %s", label, err.msg);
    t.merged = 1;
    task_forward(&t, ids, tts, lens, NULL, B, T, 0, NULL);
    memcpy(merged, t.head.logits, sizeof merged);
    double d = tl_max_abs_diff(before, merged, B * K);
    CHECK(d <= 1e-5, "%s: merged logits equal unmerged ones (max diff %.3g)", label, d);
    method_merge(m, &t.mo, &t.pb, &t.ds, -1, &err);
    double w = fmax(fmax(tl_max_abs_diff(wq0, bert_of(m)->layers[1].wq, C * C), tl_max_abs_diff(wv0, bert_of(m)->layers[1].wv, C * C)),
                    tl_max_abs_diff(wf0, bert_of(m)->layers[1].wf, C * F));
    CHECK(w <= 1e-6, "%s: unmerge restores the base weights (max diff %.3g)", label, w);
    task_free(&t);
    peftc_model_free(m);
}

static void test_templates(void)
{
    prompt_spec ps = {0};
    peftc_error err = {0};
    /* [CLS] a1 a2 [SEP] b1 [SEP] with types 0 0 0 0 1 1 */
    int32_t in[6] = {101, 7, 8, 102, 9, 102}, it[6] = {0, 0, 0, 0, 1, 1}, out[16], ot[16];
    CHECK(template_parse("P {text} P P {pair} P", &ps, &err) == PEFTC_OK && ps.n_virtual == 4, "template parses");
    int n = template_apply(&ps, in, it, 6, out, ot, 16);
    int32_t want[] = {101, -1, 7, 8, -2, -3, 102, 9, -4, 102}, wt[] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1};
    CHECK(n == 10 && !memcmp(out, want, sizeof want) && !memcmp(ot, wt, sizeof wt), "P-tuning template places virtual tokens exactly");
    prompt_spec pre = {.n_virtual = 2, .before_cls = 1};
    n = template_apply(&pre, in, it, 6, out, ot, 16);
    int32_t want2[] = {-1, -2, 101, 7, 8, 102, 9, 102};
    CHECK(n == 8 && !memcmp(out, want2, sizeof want2), "prompt tuning puts the soft prompt before [CLS]");
    CHECK(template_parse("P P {pair}", &ps, &err) != PEFTC_OK, "a template without {text} is rejected: %s", err.msg);
    CHECK(template_parse("{text} Q", &ps, &err) != PEFTC_OK, "an unknown template item is rejected: %s", err.msg);
}

/* The prefix kernel against the plain one run on [prefix; sequence] with the
 * prefix rows as ordinary (always valid) positions; padding never attended. */
static void test_prefix_attention(void)
{
    enum { Bq = 2, Tq = 5, Pp = 3, Cc = 8, Hh = 2, Tk = Pp + Tq };
    int lq[Bq] = {5, 2}, lfull[Bq] = {Pp + 5, Pp + 2};
    static float q[Bq * Tq * Cc], k[Bq * Tk * Cc], v[Bq * Tk * Cc], out[Bq * Tq * Cc], probs[Bq * Hh * Tq * Tk];
    static float qf[Bq * Tk * Cc], outf[Bq * Tk * Cc], probsf[Bq * Hh * Tk * Tk];
    peftc_rng r;
    peftc_rng_seed(&r, 9);
    for (int i = 0; i < Bq * Tq * Cc; i++) q[i] = peftc_rng_normal(&r);
    for (int i = 0; i < Bq * Tk * Cc; i++) { k[i] = peftc_rng_normal(&r); v[i] = peftc_rng_normal(&r); }
    memset(qf, 0, sizeof qf);
    for (int b = 0; b < Bq; b++) memcpy(qf + ((size_t)b * Tk + Pp) * Cc, q + (size_t)b * Tq * Cc, Tq * Cc * sizeof(float));
    attention_forward_prefix(out, probs, NULL, q, k, v, lq, Bq, Tq, Pp, Cc, Hh, 0.0f, 0);
    attention_forward(outf, probsf, qf, k, v, lfull, Bq, Tk, Cc, Hh);
    double d = 0;
    int pad_zero = 1, prefix_pos = 1;
    for (int b = 0; b < Bq; b++)
        for (int t = 0; t < Tq; t++) {
            d = fmax(d, tl_max_abs_diff(out + ((size_t)b * Tq + t) * Cc, outf + ((size_t)b * Tk + Pp + t) * Cc, Cc));
            for (int h = 0; h < Hh; h++) {
                const float *pr = probs + (((size_t)b * Hh + h) * Tq + t) * Tk;
                for (int j = 0; j < Pp; j++) prefix_pos &= pr[j] > 0;
                for (int j = Pp + lq[b]; j < Tk; j++) pad_zero &= pr[j] == 0;
            }
        }
    CHECK(d < 1e-5, "prefix attention equals plain attention over [prefix; sequence] (max diff %.2g)", d);
    CHECK(prefix_pos && pad_zero, "prefix positions always attended, padding never");
}

/* Loss and every gradient of a training step are the same bits at 1 and 2
 * threads, in fp32 and (where the CPU has it) bf16, on a batch of 180 rows:
 * three blocks of the fused FFN (BERT_FFN_ROWS), or the whole-batch FFN. */
static void check_threads(const char *label, const method_opts *mo)
{
    enum { B2 = 6, T2 = 30 };
    static int32_t ids2[B2 * T2], tts2[B2 * T2];
    int lens2[B2] = {30, 17, 30, 3, 29, 30}, labels2[B2] = {0, 1, 2, 2, 1, 0};
    peftc_rng r;
    peftc_rng_seed(&r, 21);
    for (int i = 0; i < B2 * T2; i++) { ids2[i] = 5 + (int)peftc_rng_below(&r, V - 5); tts2[i] = i % T2 > 12; }
    for (int prec = 0; prec < 2; prec++) {
        if (prec && !kernels_bf16_supported()) break;
        kernels_set_bf16(prec);
        task t;
        peftc_model *m = NULL;
        peftc_error err = {0};
        if (!build(&t, &m, mo, 1) || task_alloc(&t, B2, T2, 1, &err)) {
            CHECK(0, "%s: build: %s", label, err.msg); peftc_model_free(m); break;
        }
        float *g1 = malloc(t.pb.total * sizeof(float));
        double loss[2] = {0};
        int same = 1;
        for (int nt = 1; nt <= 2; nt++) {
            omp_set_num_threads(nt);
            memset(t.pb.g, 0, t.pb.total * sizeof(float));
            loss[nt - 1] = task_forward(&t, ids2, tts2, lens2, labels2, B2, T2, 1, NULL);
            task_backward(&t, ids2, tts2, lens2, labels2, B2, T2, 1.0f, NULL);
            if (nt == 1) memcpy(g1, t.pb.g, t.pb.total * sizeof(float));
            else same = !memcmp(g1, t.pb.g, t.pb.total * sizeof(float));
        }
        CHECK(same && loss[0] == loss[1], "%s (%s): loss and %zu gradients at 1 and 2 threads are the same bits "
              "(loss %.9g vs %.9g)", label, prec ? "bf16" : "fp32", t.pb.total, loss[0], loss[1]);
        free(g1);
        task_free(&t);
        peftc_model_free(m);
    }
    kernels_set_bf16(0);
    omp_set_num_threads(2);
}

/* One delta alone, forward (training, so dropout draws) and backward on fixed
 * random data at N rows: copies h, dh, dx and every gradient into res and
 * returns their count (0 if it could not be built). */
static size_t delta_pass(const char *spec_text, int N, int in, int out, float *res, size_t cap)
{
    delta_set ds = {0};
    param_block pb = {0};
    peftc_error err = {0};
    delta_spec sp;
    size_t count = 0;
    if (delta_spec_parse(spec_text, &sp, &err) || delta_add(&ds, &pb, 0, in, out, &sp, "d", &err) ||
        delta_index(&ds, 1, &err) || params_alloc(&pb, &err) || delta_acts_alloc(&ds, N, &err)) {
        printf("# %s: %s\n", spec_text, err.msg);
        goto done;
    }
    peftc_rng r;
    peftc_rng_seed(&r, 17);
    delta_init_params(&ds, &pb, &r);
    for (size_t i = 0; i < pb.total; i++) pb.p[i] += 0.1f * peftc_rng_normal(&r);   /* up starts at 0 */
    size_t nx = (size_t)N * in, nh = (size_t)N * out;
    count = 2 * nh + nx + pb.total;
    if (count > cap) { count = 0; goto done; }
    float *h = res, *dh = h + nh, *dx = dh + nh, *g = dx + nx;
    float *x = malloc(nx * sizeof(float));
    if (!x) { count = 0; goto done; }
    for (size_t i = 0; i < nx; i++) { x[i] = peftc_rng_normal(&r); dx[i] = 0; }
    for (size_t i = 0; i < nh; i++) { h[i] = peftc_rng_normal(&r); dh[i] = peftc_rng_normal(&r); }
    delta_forward(&ds, &pb, 0, sp.site, x, h, N, 1, &r, 0);
    delta_backward(&ds, &pb, 0, sp.site, x, dh, dx, N);
    memcpy(g, pb.g, pb.total * sizeof(float));
    free(x);
done:
    delta_set_free(&ds);
    params_free(&pb);
    return count;
}

/* The deltas' row sums (gate weight and bias, learned scale, (IA)^3 factors,
 * bias gradients) are formed in fixed blocks of rows: at a size past every
 * parallel threshold, 1 and 2 OpenMP threads give bit-identical results. */
static void test_delta_threads(void)
{
    enum { N = 1000, IN = 96, OUT = 80 };
    const char *specs[] = {
        "site=attn.q,insert=parallel,r=8,act=identity,compose=gate:2,dropout=0.1",   /* UniPELT's gated LoRA */
        "site=ffn.out,insert=sequential,r=6,act=relu,compose=gate",                  /* UniPELT's gated adapter */
        "site=ffn.out,insert=parallel,r=6,act=relu,compose=learned:4",
        "site=attn.q,insert=parallel,r=4,act=identity,compose=scale:2",
        "site=ffn.out,insert=sequential,r=24,act=relu,compose=add,bias=1,dropout=0.1",   /* lowrank kernels */
        "site=attn.k,kind=scale",
        "site=attn.heads,insert=parallel,r=2,act=relu,heads=4",
    };
    size_t cap = 4 * (size_t)N * (IN + OUT);
    float *r1 = malloc(cap * sizeof(float)), *r2 = malloc(cap * sizeof(float));
    int saved = omp_get_max_threads();
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        omp_set_num_threads(1);
        size_t n1 = delta_pass(specs[i], N, IN, OUT, r1, cap);
        omp_set_num_threads(2);
        int two = omp_get_max_threads() == 2;
        size_t n2 = delta_pass(specs[i], N, IN, OUT, r2, cap);
        double d = n1 && n1 == n2 ? tl_max_abs_diff(r1, r2, n1) : INFINITY;
        CHECK(two && n1 && n1 == n2 && !memcmp(r1, r2, n1 * sizeof(float)),
              "[%s] N=%d: forward and gradients bit-identical at 1 and 2 threads (max diff %g over %zu values)",
              specs[i], N, d, n1);
    }
    omp_set_num_threads(saved);
    free(r1); free(r2);
}

/* One delta's forward (training: dropout draws) and backward on fixed
 * random data, parameters filled from a fixed stream; a learned scale starts
 * at the spec's value. Fills h (N,out), dh, dx (N,in) and the gradients of the
 * first n_grad floats of the parameter block (down, up and their biases come
 * first, in the same places whatever the composition). 0 if it failed. */
static int delta_run(const char *spec_text, int N, int in, int out, float *h, float *dh, float *dx, float *g,
                     size_t n_grad)
{
    delta_set ds = {0};
    param_block pb = {0};
    peftc_error err = {0};
    delta_spec sp;
    int ok = 0;
    if (delta_spec_parse(spec_text, &sp, &err) || delta_add(&ds, &pb, 0, in, out, &sp, "d", &err) ||
        delta_index(&ds, 1, &err) || params_alloc(&pb, &err) || delta_acts_alloc(&ds, N, &err) || pb.total < n_grad) {
        printf("# %s: %s\n", spec_text, err.msg);
        goto done;
    }
    peftc_rng r;
    peftc_rng_seed(&r, 23);
    for (size_t i = 0; i < n_grad; i++) pb.p[i] = 0.2f * peftc_rng_normal(&r);
    if (ds.d[0].p_scale >= 0) params_value(&pb, ds.d[0].p_scale)[0] = sp.scale;
    float *x = malloc((size_t)N * in * sizeof(float));
    if (!x) goto done;
    for (size_t i = 0; i < (size_t)N * in; i++) { x[i] = peftc_rng_normal(&r); dx[i] = 0; }
    for (size_t i = 0; i < (size_t)N * out; i++) { h[i] = peftc_rng_normal(&r); dh[i] = peftc_rng_normal(&r); }
    peftc_rng drop;
    peftc_rng_seed(&drop, 29);
    delta_forward(&ds, &pb, 0, sp.site, x, h, N, 1, &drop, 0);
    delta_backward(&ds, &pb, 0, sp.site, x, dh, dx, N);
    memcpy(g, pb.g, n_grad * sizeof(float));
    free(x);
    ok = 1;
done:
    delta_set_free(&ds);
    params_free(&pb);
    return ok;
}

/* Bottlenecks of rank <= 64 composed by a fixed scale (or add) run on the
 * lowrank kernels; a learned scale at the same value takes the matmul path
 * with u in memory. Same parameters, inputs and dropout draws: the outputs
 * and the gradients of down, up and their biases must agree to rounding
 * (dropout on the source, sequential insertion, activations, biases). */
static void test_delta_lowrank_path(void)
{
    enum { N = 300, IN = 48, OUT = 40 };
    const char *specs[][2] = {
        {"site=attn.q,insert=parallel,r=8,act=identity,compose=scale:2,dropout=0.1",
         "site=attn.q,insert=parallel,r=8,act=identity,compose=learned:2,dropout=0.1"},
        {"site=ffn.out,insert=sequential,r=5,act=relu,compose=add,dropout=0.2",
         "site=ffn.out,insert=sequential,r=5,act=relu,compose=learned:1,dropout=0.2"},
        {"site=ffn.out,insert=sequential,r=17,act=gelu,compose=scale:0.5,bias=1",
         "site=ffn.out,insert=sequential,r=17,act=gelu,compose=learned:0.5,bias=1"},
        {"site=attn.v,insert=parallel,r=40,act=silu,compose=add,bias=1,dropout=0.1",
         "site=attn.v,insert=parallel,r=40,act=silu,compose=learned:1,bias=1,dropout=0.1"},
    };
    size_t nh = (size_t)N * OUT, nx = (size_t)N * IN;
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        delta_spec sp;
        peftc_error err = {0};
        delta_spec_parse(specs[i][0], &sp, &err);
        int src_w = sp.insert == INSERT_PARALLEL ? IN : OUT;
        size_t ng = (size_t)sp.r * src_w + (size_t)OUT * sp.r + (sp.bias ? (size_t)sp.r + OUT : 0);
        float *v[2][4];
        int ok = 1;
        for (int k = 0; k < 2; k++) {
            v[k][0] = malloc(nh * sizeof(float)); v[k][1] = malloc(nh * sizeof(float));
            v[k][2] = malloc(nx * sizeof(float)); v[k][3] = malloc(ng * sizeof(float));
            ok = ok && v[k][0] && v[k][1] && v[k][2] && v[k][3] &&
                 delta_run(specs[i][k], N, IN, OUT, v[k][0], v[k][1], v[k][2], v[k][3], ng);
        }
        double e[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
        size_t len[4] = {nh, nh, nx, ng};
        for (int j = 0; ok && j < 4; j++) {
            double m = 0;
            for (size_t q = 0; q < len[j]; q++) m = fmax(m, fabs((double)v[1][j][q]));
            e[j] = tl_max_abs_diff(v[0][j], v[1][j], len[j]) / (m > 1e-3 ? m : 1e-3);
        }
        CHECK(ok && e[0] <= 1e-5 && e[1] <= 1e-5 && e[2] <= 1e-5 && e[3] <= 1e-5,
              "[%s] lowrank kernels vs the matmul path: h, dh, dx, %zu parameter gradients agree "
              "(rel err %.2g %.2g %.2g %.2g)", specs[i][0], ng, e[0], e[1], e[2], e[3]);
        for (int k = 0; k < 2; k++) for (int j = 0; j < 4; j++) free(v[k][j]);
    }
}

/* fp32: the FFN in chunks (several of them) and in per-thread blocks give the
 * same loss and gradients as in one chunk, to rounding */
static void check_ffn_chunks(const method_opts *mo)
{
    enum { B2 = 6, T2 = 30 };
    static int32_t ids2[B2 * T2], tts2[B2 * T2];
    int lens2[B2] = {30, 17, 30, 3, 29, 30}, labels2[B2] = {0, 1, 2, 2, 1, 0};
    for (int i = 0; i < B2 * T2; i++) { ids2[i] = 5 + (i * 7) % (V - 5); tts2[i] = 0; }
    kernels_set_bf16(0);
    task t;
    peftc_model *m = NULL;
    peftc_error err = {0};
    if (!build(&t, &m, mo, 1) || task_alloc(&t, B2, T2, 1, &err)) { CHECK(0, "ffn chunks: build: %s", err.msg); return; }
    int rows[3] = {((bert_acts *)t.acts)->ffn_act_rows, 64, 0};   /* one chunk, three chunks, per-thread blocks */
    float *g[3];
    double loss[3];
    for (int k = 0; k < 3; k++) {
        ((bert_acts *)t.acts)->ffn_act_rows = rows[k];
        memset(t.pb.g, 0, t.pb.total * sizeof(float));
        loss[k] = task_forward(&t, ids2, tts2, lens2, labels2, B2, T2, 1, NULL);
        task_backward(&t, ids2, tts2, lens2, labels2, B2, T2, 1.0f, NULL);
        g[k] = tl_dup_floats(t.pb.g, t.pb.total);
    }
    double gmax = 0, d1 = 0, d2 = 0;
    for (size_t i = 0; i < t.pb.total; i++) gmax = fmax(gmax, fabs(g[0][i]));
    d1 = tl_max_abs_diff(g[0], g[1], t.pb.total) / gmax;
    d2 = tl_max_abs_diff(g[0], g[2], t.pb.total) / gmax;
    CHECK(rows[0] == B2 * T2 && d1 <= 1e-5 && d2 <= 1e-5 && fabs(loss[1] - loss[0]) <= 1e-6 && fabs(loss[2] - loss[0]) <= 1e-6,
          "fp32 FFN in 1 chunk of %d rows, in chunks of 64, in per-thread blocks: gradients agree to %.2g, %.2g of the largest",
          rows[0], d1, d2);
    for (int k = 0; k < 3; k++) free(g[k]);
    task_free(&t);
    peftc_model_free(m);
}

static method_opts preset(const char *name, const method_args *a)
{
    method_opts mo;
    peftc_config cfg = {.hidden_size = C, .num_heads = NH, .intermediate_size = F, .num_layers = L};
    peftc_error err = {0};
    if (method_build(name, a, &cfg, &mo, &err)) printf("preset %s: %s\n", name, err.msg);
    return mo;
}

int main(void)
{
    make_model();
    test_templates();
    test_prefix_attention();
    test_delta_threads();
    test_delta_lowrank_path();
    method_args none = {0}, lora = {.r = 2, .alpha = 4, .targets = "query,key,value,attention.output.dense,intermediate.dense,output.dense"};
    method_args ad = {.r = 4}, pt = {.num_virtual = 2};
    const char *presets[] = {"full", "bitfit", "ia3", "adapter-houlsby", "adapter-pfeiffer", "parallel-adapter",
                             "scaled-parallel-adapter", "mh-parallel-adapter", "prompt", "ptuning"};
    method_opts mo = preset("lora", &lora);
    check_threads("lora (all six linears: whole-batch FFN)", &mo);
    check_grads("lora (all six linears)", &mo);
    check_starts_as_base("lora", &mo);
    check_merge("lora", &mo);
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        const method_args *a = strstr(presets[i], "adapter") ? &ad : strstr(presets[i], "pt") || !strcmp(presets[i], "prompt") ? &pt : &none;
        mo = preset(presets[i], a);
        check_grads(presets[i], &mo);
        if (mo.base == BASE_NONE && mo.prompt.n_virtual == 0) check_starts_as_base(presets[i], &mo);
    }
    mo = preset("ia3", &none);
    check_merge("ia3", &mo);
    /* AdaLoRA's SVD deltas (lora_A, lora_E, lora_B) on every linear: backward, E = 0 start, merge, threads */
    peftc_adalora_opts ada_o = {.init_r = 3, .target_r = 2};
    method_args ada = {.alpha = 4, .adalora = &ada_o, .targets = lora.targets};
    mo = preset("adalora", &ada);
    check_grads("adalora (all six linears)", &mo);
    check_starts_as_base("adalora", &mo);
    check_adalora_init(&mo);
    check_merge("adalora", &mo);
    check_threads("adalora (all six linears)", &mo);
    method_args lora_qv = {.r = 2, .alpha = 4, .targets = "query,value"};
    mo = preset("lora", &lora_qv);
    check_threads("lora (query, value: fused FFN)", &mo);
    check_ffn_chunks(&mo);
    mo = preset("bitfit", &none);
    check_threads("bitfit", &mo);
    method_args pre = {.prefix_len = 3, .r = 2}, proj = {.prefix_len = 2, .prefix_projection = 1, .encoder_hidden = 6};
    const char *prefixed[] = {"prefix", "ptuning-v2", "mam", "unipelt"};
    for (int i = 0; i < 4; i++) {
        mo = preset(prefixed[i], &pre);
        check_grads(prefixed[i], &mo);
    }
    mo = preset("unipelt", &pre);
    check_threads("unipelt (gated prefix, gated adapter, LoRA)", &mo);
    mo = preset("prefix", &proj);
    check_grads("prefix (MLP reparameterisation)", &mo);
    check_threads("prefix (MLP reparameterisation)", &mo);
    method_args lstm = {.num_virtual = 3, .encoder = "lstm", .encoder_hidden = 5};
    mo = preset("ptuning", &lstm);
    check_grads("ptuning (bidirectional LSTM encoder)", &mo);
    method_args learned = {.r = 3, .learned_scale = 1};
    mo = preset("scaled-parallel-adapter", &learned);
    check_grads("scaled-parallel-adapter (learned s)", &mo);
    /* custom combinations across the four dimensions */
    const char *customs[][2] = {
        {"site=attn.v,insert=parallel,r=3,act=identity,compose=gate", "site=ffn.out,insert=sequential,r=2,act=gelu,compose=scale:2,dropout=0"},
        {"site=attn.q,insert=sequential,r=2,act=tanh,compose=add,bias=1", "site=attn.out,insert=parallel,r=3,act=silu,compose=learned:0.5"},
        {"site=ffn.in,insert=parallel,r=2,act=relu,compose=gate", "site=attn.heads,insert=parallel,r=1,act=relu,heads=2"},
        {"site=ffn.down,insert=sequential,r=2,act=identity,compose=scale:4", "site=attn.k,kind=scale"},
    };
    for (size_t i = 0; i < sizeof customs / sizeof *customs; i++) {
        method_args a = {.deltas = customs[i], .n_deltas = 2};
        mo = preset("custom", &a);
        char label[300];
        snprintf(label, sizeof label, "custom [%s] + [%s]", customs[i][0], customs[i][1]);
        check_grads(label, &mo);
        check_starts_as_base(label, &mo);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
    return tl_finish();
}
