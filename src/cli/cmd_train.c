/* cmd_train.c: `peftc train`, `peftc eval`, `peftc predict`. */
#include "cli/cli.h"

#include <math.h>
#include <signal.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* SIGINT / SIGTERM during training: the handler only records the signal; the
 * library sees the flag at the next step boundary, writes the checkpoint and
 * the adapter and returns, and the command exits 128 + signal. SA_RESETHAND:
 * a second signal kills at once (for a step that never ends). */
static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { g_stop = sig; }

typedef struct progress_ui {
    int tty;
    int every;
    int last_step;
} progress_ui;

static void fmt_time(char *buf, size_t n, double s)
{
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%d:%02d", t / 60, t % 60);
}

static void on_progress(const peftc_progress *p, void *user)
{
    progress_ui *ui = user;
    char eta[32];
    switch (p->kind) {
    case PEFTC_PROGRESS_START:
        fprintf(stderr, "%s\ntrainable params: %lld of %lld (%.4f%%)\n", p->message, (long long)p->trainable_params,
                (long long)p->total_params, 100.0 * p->trainable_params / (double)p->total_params);
        ui->every = p->total_steps / 100 > 0 ? p->total_steps / 100 : 1;
        break;
    case PEFTC_PROGRESS_STEP:
        ui->last_step = p->step;
        fmt_time(eta, sizeof eta, p->eta_s);
        if (ui->tty) {
            int w = 30, done = (int)((double)w * p->step / p->total_steps);
            fprintf(stderr, "\r[%.*s%*s] %d/%d loss %.4f lr %.2e %.0f tok/s ETA %s ", done,
                    "==============================", w - done, "", p->step, p->total_steps, p->loss, p->lr,
                    p->tokens_per_s, eta);
            if (p->step == p->total_steps) fputc('\n', stderr);
        } else if (p->step % ui->every == 0 || p->step == p->total_steps || p->step == 1) {
            fprintf(stderr, "step %d/%d epoch %d loss %.4f lr %.3e grad_norm %.3f tok/s %.0f eta %s\n", p->step,
                    p->total_steps, p->epoch, p->loss, p->lr, p->grad_norm, p->tokens_per_s, eta);
        }
        break;
    case PEFTC_PROGRESS_EVAL:
        if (p->eval_causal_lm) {
            fprintf(stderr, "%seval at step %d: loss %.4f perplexity %.3f\n", ui->tty ? "\n" : "", p->step, p->eval_loss,
                    p->eval_perplexity);
            break;
        }
        if (p->eval && p->eval->task && !strcmp(p->eval->task, "token-cls"))
            fprintf(stderr, "%seval at step %d: entity precision %.4f recall %.4f f1 %.4f token accuracy %.4f loss %.4f\n",
                    ui->tty ? "\n" : "", p->step, p->eval->precision, p->eval->recall, p->eval->entity_f1, p->eval->accuracy, p->eval->loss);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "multi-label"))
            fprintf(stderr, "%seval at step %d: micro f1 %.4f macro f1 %.4f exact match %.4f loss %.4f\n", ui->tty ? "\n" : "", p->step,
                    p->eval->f1, p->eval->macro_f1, p->eval->accuracy, p->eval->loss);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "regression"))
            fprintf(stderr, "%seval at step %d: pearson %.4f spearman %.4f mse %.4f\n", ui->tty ? "\n" : "", p->step,
                    p->eval->pearson, p->eval->spearman, p->eval->loss);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "embedding"))
            fprintf(stderr, "%seval at step %d: cosine pearson %.4f spearman %.4f (%d pairs)\n", ui->tty ? "\n" : "", p->step,
                    p->eval->pearson, p->eval->spearman, p->eval->n);
        else
            fprintf(stderr, "%seval at step %d: accuracy %.4f loss %.4f f1 %.4f mcc %.4f\n", ui->tty ? "\n" : "",
                    p->step, p->eval_accuracy, p->eval_loss, p->eval_f1, p->eval_mcc);
        break;
    case PEFTC_PROGRESS_CHECKPOINT:
        ui->last_step = p->step;
        if (!ui->tty) fprintf(stderr, "checkpoint at step %d\n", p->step);
        break;
    case PEFTC_PROGRESS_DONE:
        fprintf(stderr, "done: %d steps in %.1f s, %.0f tokens/s", p->step, p->elapsed_s, p->tokens_per_s);
        if (p->eval && p->eval->task && !strcmp(p->eval->task, "token-cls")) fprintf(stderr, ", eval entity f1 %.4f", p->eval->entity_f1);
        else if (p->eval && p->eval->task && (!strcmp(p->eval->task, "regression") || !strcmp(p->eval->task, "embedding")))
            fprintf(stderr, ", eval pearson %.4f spearman %.4f", p->eval->pearson, p->eval->spearman);
        else if (p->message) fprintf(stderr, ", eval accuracy %.4f", p->eval_accuracy);
        fputc('\n', stderr);
        break;
    }
}

/* train, or fuse (AdapterFusion stage 2: method fusion over --adapters) */
static int train_main(cli_args *a, int fuse)
{
    peftc_train_opts o;
    peftc_train_opts_default(&o);
    int ok = 1;
    const char *v;
    const char *cmd = fuse ? "fuse" : "train";
    if (fuse) {
        o.method = "fusion";
        o.fuse_adapters = cli_opt(a, "--adapters");
        o.fusion_temperature = cli_flag(a, "--temperature");
        if (!o.fuse_adapters || !*o.fuse_adapters)
            return cli_errorf(2, "fuse: --adapters a=DIR,b=DIR,... (at least two bottleneck adapters) is required");
    }
    o.model_dir = cli_opt(a, "--model");
    o.train_path = cli_opt(a, "--train");
    if (!o.train_path) o.train_path = cli_opt(a, "--data");
    o.eval_path = cli_opt(a, "--eval");
    o.out_dir = cli_opt(a, "--out");
    o.resume_dir = cli_opt(a, "--resume");
    o.init_adapter = cli_opt(a, "--init-adapter");
    o.adapterdrop_train = cli_flag(a, "--adapterdrop-train");
    if ((v = cli_opt(a, "--method"))) {
        if (fuse) return cli_errorf(2, "fuse: --method is fusion; use peftc train for other methods");
        o.method = v;
    }
    o.text_col = cli_opt(a, "--text-col");
    o.pair_col = cli_opt(a, "--text-pair-col");
    o.label_col = cli_opt(a, "--label-col");
    o.min_score = cli_opt_double(a, "--min-score", NAN, -1e30, 1e30, &ok);
    o.has_min_score = !isnan(o.min_score);
    o.lora_r = cli_opt_int(a, "--r", 0, -1000000, 1 << 20, &ok);
    if (o.lora_r < 0) { cli_errorf(2, "option --r: must be positive, got %d", o.lora_r); ok = 0; }
    o.lora_alpha = (float)cli_opt_double(a, "--alpha", o.lora_alpha, 0, 1e6, &ok);
    o.lora_dropout = (float)cli_opt_double(a, "--lora-dropout", -1, 0, 0.99, &ok);
    if (o.lora_dropout < 0) o.lora_dropout = 0;
    else o.lora_dropout_given = 1;
    o.quantize = cli_opt(a, "--quantize");
    o.rslora = cli_flag(a, "--rslora");
    if ((v = cli_opt(a, "--target-modules"))) o.lora_targets = v;
    o.site = cli_opt(a, "--site");
    o.scale = (float)cli_opt_double(a, "--scale", 0, -1e6, 1e6, &ok);
    o.learned_scale = cli_flag(a, "--learned-scale");
    const char *deltas[32];
    while (o.n_deltas < 32 && (v = cli_opt(a, "--delta"))) deltas[o.n_deltas++] = v;
    /* a 33rd would otherwise be left unused and reported as given twice */
    if (o.n_deltas == 32 && cli_opt(a, "--delta")) return cli_errorf(2, "%s: --delta: at most 32 specs", cmd);
    o.deltas = deltas;
    o.num_virtual = cli_opt_int(a, "--num-virtual", 0, 1, 4096, &ok);
    o.template_text = cli_opt(a, "--template");
    o.encoder = cli_opt(a, "--encoder");
    o.encoder_hidden = cli_opt_int(a, "--encoder-hidden", 0, 1, 1 << 16, &ok);
    o.prefix_len = cli_opt_int(a, "--prefix-len", 0, 1, 1 << 20, &ok);
    o.prefix_projection = cli_flag(a, "--prefix-projection") ? 1 : cli_flag(a, "--no-prefix-projection") ? -1 : 0;
    o.adalora.init_r = cli_opt_int(a, "--init-r", 0, 1, 1 << 20, &ok);
    o.adalora.target_r = cli_opt_int(a, "--target-r", 0, 1, 1 << 20, &ok);
    o.adalora.tinit = cli_opt_int(a, "--tinit", 0, 0, 1 << 30, &ok);
    o.adalora.tfinal = cli_opt_int(a, "--tfinal", 0, 0, 1 << 30, &ok);
    o.adalora.delta_t = cli_opt_int(a, "--delta-t", 0, 1, 1 << 30, &ok);
    o.adalora.total_step = cli_opt_int(a, "--total-step", 0, 1, 1 << 30, &ok);
    o.adalora.beta1 = (float)cli_opt_double(a, "--beta1", 0, 1e-6, 0.999999, &ok);
    o.adalora.beta2 = (float)cli_opt_double(a, "--beta2", 0, 1e-6, 0.999999, &ok);
    double orth = cli_opt_double(a, "--orth-reg-weight", -1, 0, 1e6, &ok);   /* -1: unset (0 is a valid weight) */
    o.adalora.orth_reg_set = orth >= 0;
    o.adalora.orth_reg_weight = orth >= 0 ? (float)orth : 0.0f;
    o.epochs = cli_opt_int(a, "--epochs", o.epochs, 1, 100000, &ok);
    o.max_steps = cli_opt_int(a, "--max-steps", 0, 1, 1 << 30, &ok);
    o.batch = cli_opt_int(a, "--batch", o.batch, 1, 65536, &ok);
    o.grad_accum = cli_opt_int(a, "--grad-accum", o.grad_accum, 1, 65536, &ok);
    o.max_len = cli_opt_int(a, "--max-len", o.max_len, 4, 1 << 20, &ok);
    o.lr = (float)cli_opt_double(a, "--lr", 0, 1e-12, 10, &ok);
    o.weight_decay = (float)cli_opt_double(a, "--weight-decay", o.weight_decay, 0, 10, &ok);
    o.warmup_ratio = (float)cli_opt_double(a, "--warmup-ratio", o.warmup_ratio, 0, 1, &ok);
    if ((v = cli_opt(a, "--schedule"))) o.schedule = v;
    o.clip = (float)cli_opt_double(a, "--clip", o.clip, 0, 1e9, &ok);
    o.seed = (uint64_t)cli_opt_int(a, "--seed", (int)o.seed, 0, 2147483647, &ok);
    o.bucket = cli_flag(a, "--bucket");
    o.task = cli_opt(a, "--task");
    o.pack = cli_flag(a, "--pack");
    const char *loss_on = cli_opt(a, "--loss-on");
    o.loss_on_all = loss_on && !strcmp(loss_on, "all");
    o.data_format = cli_opt(a, "--format");
    o.prompt_template = cli_opt(a, "--prompt-template");
    o.prompt_field = cli_opt(a, "--prompt-field");
    o.response_field = cli_opt(a, "--response-field");
    o.save_every = cli_opt_int(a, "--save-every", 0, 1, 1 << 30, &ok);
    o.eval_every = cli_opt_int(a, "--eval-every", 0, 1, 1 << 30, &ok);
    o.stop_after = cli_opt_int(a, "--stop-after", 0, 1, 1 << 30, &ok);
    o.skip_nonfinite = cli_flag(a, "--skip-nonfinite");
    o.gradient_checkpointing = cli_flag(a, "--gradient-checkpointing");
    if ((v = cli_opt(a, "--dp-overlap"))) {
        if (!strcmp(v, "on")) o.dp_overlap = 1;
        else if (!strcmp(v, "off")) o.dp_overlap = -1;
        else if (strcmp(v, "auto")) { cli_errorf(2, "option --dp-overlap: on, off or auto, got '%s'", v); ok = 0; }
    }
    o.dp_bucket_mb = (float)cli_opt_double(a, "--dp-bucket-mb", 0, 1e-3, 1e6, &ok);
    if (!ok) return 2;
    if (cli_check_unused(a, cmd)) return 2;
    if (!o.model_dir || !*o.model_dir || !o.train_path || !*o.train_path || !o.out_dir || !*o.out_dir)
        return cli_errorf(2, "%s: --model DIR, --train FILE and --out RUN_DIR are required", cmd);
    peftc_comm comm;
    int rc = cli_comm_init(&comm);
    if (rc) return rc;
    o.comm = &comm;
    progress_ui ui = {isatty(2), 1, 0};
    peftc_error err = {0};
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    o.stop = &g_stop;
    /* rank 0 alone reports progress; any rank reports its own failure */
    if (peftc_train(&o, comm.rank == 0 ? on_progress : NULL, &ui, &err)) {
        if (comm.size > 1) rc = cli_errorf(1, "rank %d of %d: %s", comm.rank, comm.size, err.msg[0] ? err.msg : peftc_status_name(err.code));
        else rc = cli_fail(&err);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (!rc && g_stop && comm.rank == 0) {
        fprintf(stderr, "%strain: interrupted by %s after step %d: checkpoint and adapter saved in %s (continue with --resume %s)\n",
                ui.tty ? "\n" : "", g_stop == SIGINT ? "SIGINT" : "SIGTERM", ui.last_step, o.out_dir, o.out_dir);
    }
    int stopped = !rc && g_stop;
    cli_comm_finish(&comm, stopped ? 0 : rc);   /* a signalled stop saved its work: no abort of the peers */
    return stopped ? 128 + (int)g_stop : rc;
}

int cmd_train(cli_args *a) { return train_main(a, 0); }
int cmd_fuse(cli_args *a) { return train_main(a, 1); }

/* One line naming the rank when one of several failed. */
static int eval_fail(const peftc_comm *comm, peftc_error *err)
{
    if (comm->size > 1) return cli_errorf(1, "rank %d of %d: %s", comm->rank, comm->size, err->msg[0] ? err->msg : peftc_status_name(err->code));
    return cli_fail(err);
}

static int eval_classifier(const char *model, const char *adapter, const char *data, const char *tc, const char *pc,
                           const char *lc, const char *task, int merge, const peftc_comm *comm);

int cmd_eval(cli_args *a)
{
    /* a decoder (--task causal-lm, or a GGUF file) is evaluated as a language model */
    const char *task = cli_opt(a, "--task");
    if (task && strcmp(task, "causal-lm") && strcmp(task, "seq-cls") && strcmp(task, "token-cls") && strcmp(task, "regression") &&
        strcmp(task, "multi-label") && strcmp(task, "embedding"))
        return cli_errorf(2, "--task '%s': use causal-lm, seq-cls, token-cls, regression, multi-label or embedding", task);
    int lm = task && !strcmp(task, "causal-lm");
    for (int i = 0; !task && i + 1 < a->argc; i++)
        if (!strcmp(a->argv[i], "--model")) {
            size_t n = strlen(a->argv[i + 1]);
            lm = n > 5 && !strcmp(a->argv[i + 1] + n - 5, ".gguf");
        }
    /* a causal LM's evaluation (generation included) is not sharded: under
     * mpirun each rank would run all of it and print it again */
    if (lm && cli_comm_launched() > 1)
        return cli_errorf(2, "eval: a causal LM is evaluated by one process, not under mpirun (%d ranks); "
                             "its held-out loss is sharded in train --eval", cli_comm_launched());
    if (lm) return cmd_eval_lm(a);
    const char *model = cli_opt(a, "--model"), *adapter = cli_opt(a, "--adapter"), *data = cli_opt(a, "--data");
    const char *tc = cli_opt(a, "--text-col"), *pc = cli_opt(a, "--text-pair-col"), *lc = cli_opt(a, "--label-col");
    int merge = cli_flag(a, "--merge");
    if (cli_check_unused(a, "eval")) return 2;
    if (!model || !*model || !adapter || !*adapter || !data || !*data)
        return cli_errorf(2, "eval: --model DIR, --adapter RUN_DIR and --data FILE are required");
    /* under mpirun the ranks share the batches (the result is one
     * process's, bit for bit) and rank 0 prints it */
    peftc_comm comm;
    int rc = cli_comm_init(&comm);
    if (rc) return rc;
    rc = eval_classifier(model, adapter, data, tc, pc, lc, task, merge, &comm);
    cli_comm_finish(&comm, rc);
    return rc;
}

static int eval_classifier(const char *model, const char *adapter, const char *data, const char *tc, const char *pc,
                           const char *lc, const char *task, int merge, const peftc_comm *comm)
{
    peftc_error err = {0};
    peftc_classifier *c;
    if (peftc_classifier_load(model, adapter, &c, &err)) return eval_fail(comm, &err);
    peftc_classifier_set_comm(c, comm);
    if (task && strcmp(task, peftc_classifier_task(c))) {
        int rc = cli_errorf(1, "%s: the adapter was trained for --task %s, not %s", adapter, peftc_classifier_task(c), task);
        peftc_classifier_free(c);
        return rc;
    }
    if (merge && peftc_classifier_merge(c, &err)) { peftc_classifier_free(c); return eval_fail(comm, &err); }
    peftc_eval_result r;
    if (peftc_classifier_eval(c, data, tc, pc, lc, &r, &err)) { peftc_classifier_free(c); return eval_fail(comm, &err); }
    if (comm->rank != 0) { peftc_classifier_free(c); return 0; }   /* rank 0 prints */
    if (!strcmp(r.task, "token-cls")) {
        printf("{\"task\": \"token-cls\", \"sentences\": %d, \"words\": %lld, \"words_cut\": %lld, \"precision\": %.6f, \"recall\": %.6f, "
               "\"f1\": %.6f, \"token_accuracy\": %.6f, \"entities_true\": %lld, \"entities_pred\": %lld, \"entities_correct\": %lld, "
               "\"loss\": %.6f}\n", r.n, r.n_words, r.n_words_cut, r.precision, r.recall, r.entity_f1, r.accuracy, r.n_true,
               r.n_pred, r.n_correct, r.loss);
    } else if (!strcmp(r.task, "multi-label")) {
        printf("{\"task\": \"multi-label\", \"examples\": %d, \"micro_f1\": %.6f, \"macro_f1\": %.6f, \"exact_match\": %.6f, \"loss\": %.6f}\n",
               r.n, r.f1, r.macro_f1, r.accuracy, r.loss);
    } else if (!strcmp(r.task, "embedding")) {
        printf("{\"task\": \"embedding\", \"pairs\": %d, \"cosine_pearson\": %.6f, \"cosine_spearman\": %.6f}\n", r.n, r.pearson, r.spearman);
    } else if (!strcmp(r.task, "regression")) {
        printf("{\"task\": \"regression\", \"examples\": %d, \"pearson\": %.6f, \"spearman\": %.6f, \"mse\": %.6f}\n", r.n,
               r.pearson, r.spearman, r.loss);
    } else {
        printf("{\"examples\": %d, \"accuracy\": %.6f, \"loss\": %.6f", r.n, r.accuracy, r.loss);
        if (r.binary) printf(", \"f1\": %.6f, \"mcc\": %.6f", r.f1, r.mcc);
        printf("}\n");
    }
    peftc_classifier_free(c);
    return 0;
}

static int predict_one(const char *model, const char *adapter, int with_probs, int merge, int hex, const char *data,
                       const char *task)
{
    peftc_error err = {0};
    peftc_classifier *c;
    if (peftc_classifier_load(model, adapter, &c, &err)) return cli_fail(&err);
    const char *kind = peftc_classifier_task(c);
    if (task && strcmp(task, kind)) {
        int rc = cli_errorf(1, "%s: the adapter was trained for --task %s, not %s", adapter, kind, task);
        peftc_classifier_free(c);
        return rc;
    }
    if (merge && peftc_classifier_merge(c, &err)) { peftc_classifier_free(c); return cli_fail(&err); }
    if (!strcmp(kind, "token-cls")) {   /* a CoNLL file in, its lines with a predicted tag column out */
        char *text = NULL;
        int rc = 0;
        if (!data || !*data) rc = cli_errorf(2, "predict: %s is a token-classification adapter: --data FILE (CoNLL, one word per line) is required", adapter);
        else if (peftc_classifier_tag_conll(c, data, &text, &err)) rc = cli_fail(&err);
        else fputs(text, stdout);
        free(text);
        peftc_classifier_free(c);
        return rc;
    }
    if (data) { peftc_classifier_free(c); return cli_errorf(2, "predict: --data is for token-classification adapters; sentences come on stdin"); }
    cli_lines L;
    if (cli_read_lines(stdin, "stdin", &L)) { peftc_classifier_free(c); return 1; }
    int K = peftc_classifier_num_labels(c);
    const char **texts = calloc((size_t)L.n + 1, sizeof *texts), **pairs = calloc((size_t)L.n + 1, sizeof *pairs);
    int *labels = calloc((size_t)L.n + 1, sizeof *labels);
    float *probs = calloc((size_t)(L.n + 1) * K, sizeof *probs);
    int rc = 0;
    if (!texts || !pairs || !labels || !probs) rc = cli_errorf(1, "out of memory");
    for (int i = 0; i < L.n && !rc; i++) {
        char *tab = strchr(L.line[i], '\t'); /* a TAB separates a sentence pair */
        texts[i] = L.line[i];
        if (tab) { *tab = 0; pairs[i] = tab + 1; }
    }
    int scored = !strcmp(kind, "regression");
    if (scored) {
        if (!rc && peftc_classifier_score(c, texts, pairs, L.n, probs, &err)) rc = cli_fail(&err);
        for (int i = 0; i < L.n && !rc; i++) printf("%.6f\n", probs[i]);
    } else if (!rc && peftc_classifier_predict(c, texts, pairs, L.n, labels, probs, &err)) rc = cli_fail(&err);
    int multi = !strcmp(kind, "multi-label");
    for (int i = 0; i < L.n && !rc && multi; i++) {   /* the labels whose sigmoid passes 0.5, comma-separated */
        int any = 0;
        for (int k = 0; k < K; k++)
            if (probs[(size_t)i * K + k] > 0.5f) { printf("%s%s", any ? "," : "", peftc_classifier_label(c, k)); any = 1; }
        if (with_probs) for (int k = 0; k < K; k++) printf("\t%.6f", probs[(size_t)i * K + k]);
        putchar('\n');
    }
    for (int i = 0; i < L.n && !rc && !scored && !multi; i++) {
        fputs(peftc_classifier_label(c, labels[i]), stdout);
        if (with_probs) for (int k = 0; k < K; k++) printf(hex ? "\t%a" : "\t%.6f", probs[(size_t)i * K + k]);
        putchar('\n');
    }
    free(texts); free(pairs); free(labels); free(probs);
    cli_lines_free(&L);
    peftc_classifier_free(c);
    return rc;
}

#define PREDICT_MAX_ADAPTERS 64

/* "name=DIR" (name: letters, digits, _ - .) or a plain DIR */
static void split_named(char *spec, const char **name, const char **dir)
{
    char *eq = strchr(spec, '=');
    *name = NULL;
    *dir = spec;
    if (!eq || eq == spec) return;
    for (char *p = spec; p < eq; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.')) return;
    *eq = 0;
    *name = spec;
    *dir = eq + 1;
}

/* predict with several adapters, a composition, a mixed batch or AdapterDrop */
static int predict_multi(const char *model, char **specs, int n_ad, const char *compose, const char *col_s,
                         int drop, int with_probs, int hex, int stats)
{
    const char *names[PREDICT_MAX_ADAPTERS], *dirs[PREDICT_MAX_ADAPTERS];
    for (int i = 0; i < n_ad; i++) {
        split_named(specs[i], &names[i], &dirs[i]);
        if (!*dirs[i]) return cli_errorf(2, "--adapter %s=: no directory after the name", names[i] ? names[i] : "");
    }
    int col = -1;
    if (col_s) {
        char *end;
        long v = strtol(col_s, &end, 10);
        if (!*col_s || *end || v < 0 || v > 2) return cli_errorf(2, "--adapter-col %s: a field index 0, 1 or 2 of the TAB-separated input", col_s);
        col = (int)v;
        if (compose) return cli_errorf(2, "--adapter-col and --compose exclude each other (each example names its adapter)");
    }
    peftc_error err = {0};
    peftc_multi *mc;
    if (peftc_multi_load(model, names, dirs, n_ad, &mc, &err)) return cli_fail(&err);
    int rc = 0;
    if ((compose && peftc_multi_compose(mc, compose, &err)) || (col >= 0 && peftc_multi_route(mc, &err)) ||
        (drop >= 0 && peftc_multi_drop_layers(mc, drop, &err))) {
        peftc_multi_free(mc);
        return cli_fail(&err);
    }
    cli_lines L;
    if (cli_read_lines(stdin, "stdin", &L)) { peftc_multi_free(mc); return 1; }
    int R = peftc_multi_outputs(mc), K = peftc_multi_max_labels(mc);
    const char **texts = calloc((size_t)L.n + 1, sizeof *texts), **pairs = calloc((size_t)L.n + 1, sizeof *pairs);
    const char **labels = calloc((size_t)(L.n + 1) * R, sizeof *labels);
    float *probs = calloc((size_t)(L.n + 1) * R * K, sizeof *probs);
    int *n_probs = calloc((size_t)(L.n + 1) * R, sizeof *n_probs), *route = calloc((size_t)L.n + 1, sizeof *route);
    if (!texts || !pairs || !labels || !probs || !n_probs || !route) rc = cli_errorf(1, "out of memory");
    for (int i = 0; i < L.n && !rc; i++) {
        /* fields split on TAB: text [TAB pair], the adapter's name at --adapter-col */
        char *f[4];
        int nf = 0;
        for (char *p = L.line[i]; nf < 4;) {
            f[nf++] = p;
            char *tab = strchr(p, '\t');
            if (!tab) break;
            *tab = 0;
            p = tab + 1;
        }
        if (col >= 0) {
            if (col >= nf) { rc = cli_errorf(1, "stdin line %d: no field %d (the adapter's name)", i + 1, col); break; }
            if ((route[i] = peftc_multi_find(mc, f[col])) < 0) {
                rc = cli_errorf(1, "stdin line %d: no adapter named '%.64s' is loaded", i + 1, f[col]);
                break;
            }
            for (int k = col; k + 1 < nf; k++) f[k] = f[k + 1];
            nf--;
        }
        if (nf < 1 || nf > 2) { rc = cli_errorf(1, "stdin line %d: expected a text and at most one TAB-separated pair", i + 1); break; }
        texts[i] = f[0];
        pairs[i] = nf > 1 ? f[1] : NULL;
    }
    if (!rc && peftc_multi_predict(mc, texts, pairs, L.n, col >= 0 ? route : NULL, labels, with_probs ? probs : NULL,
                                   n_probs, &err))
        rc = cli_fail(&err);
    for (int i = 0; i < L.n && !rc; i++) {
        for (int o = 0; o < R; o++) {
            size_t slot = (size_t)i * R + o;
            if (o) putchar('\t');
            if (R > 1) printf("%s=", peftc_multi_output_name(mc, o));
            fputs(labels[slot], stdout);
            if (with_probs) for (int k = 0; k < n_probs[slot]; k++) printf(hex ? "\t%a" : "\t%.6f", probs[slot * K + k]);
        }
        putchar('\n');
    }
    if (!rc && stats) {
        /* the adapter compute per layer: AdapterDrop's saving made visible */
        fprintf(stderr, "adapter rows per layer:");
        for (int l = 0; l < peftc_multi_layers(mc); l++) fprintf(stderr, " %lld", (long long)peftc_multi_rows_applied(mc, l));
        fputc('\n', stderr);
    }
    free(texts); free(pairs); free(labels); free(probs); free(n_probs); free(route);
    cli_lines_free(&L);
    peftc_multi_free(mc);
    return rc;
}

int cmd_predict(cli_args *a)
{
    const char *model = cli_opt(a, "--model");
    char *specs[PREDICT_MAX_ADAPTERS];
    int n_ad = 0;
    const char *v;
    while ((v = cli_opt(a, "--adapter"))) {
        if (n_ad == PREDICT_MAX_ADAPTERS) { for (int i = 0; i < n_ad; i++) free(specs[i]); return cli_errorf(2, "--adapter: at most %d adapters", PREDICT_MAX_ADAPTERS); }
        if (!(specs[n_ad] = strdup(v))) return cli_errorf(1, "out of memory");
        n_ad++;
    }
    const char *compose = cli_opt(a, "--compose"), *col = cli_opt(a, "--adapter-col");
    int ok = 1;
    int drop = cli_opt_int(a, "--drop-layers", -1, 0, 1 << 20, &ok);
    int with_probs = cli_flag(a, "--probs"), merge = cli_flag(a, "--merge"), hex = cli_flag(a, "--hex");
    int stats = cli_flag(a, "--adapter-stats");
    const char *data = cli_opt(a, "--data"), *task = cli_opt(a, "--task");
    int rc;
    if (!ok || cli_check_unused(a, "predict")) { rc = 2; goto done; }
    if (!model || !*model || n_ad == 0 || !*specs[0]) { rc = cli_errorf(2, "predict: --model DIR and --adapter RUN_DIR are required"); goto done; }
    char first[4096];
    snprintf(first, sizeof first, "%s", specs[0]);
    const char *nm, *dir;
    split_named(first, &nm, &dir);
    if (n_ad > 1 || nm || compose || col || drop >= 0 || stats) {
        if (merge) { rc = cli_errorf(2, "predict: --merge takes one adapter (the base is shared by several here)"); goto done; }
        if (data || task) { rc = cli_errorf(2, "predict: --data and --task take one adapter (several adapters predict sentence classes from stdin)"); goto done; }
        rc = predict_multi(model, specs, n_ad, compose, col, drop, with_probs, hex, stats);
        goto done;
    }
    rc = predict_one(model, specs[0], with_probs, merge, hex, data, task);
done:
    for (int i = 0; i < n_ad; i++) free(specs[i]);
    return rc;
}

int cmd_methods(cli_args *a)
{
    if (cli_check_unused(a, "methods")) return 2;
    char buf[16384];
    peftc_method_list(buf, sizeof buf);
    fputs(buf, stdout);
    return 0;
}
