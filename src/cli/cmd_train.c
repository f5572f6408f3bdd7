/* cmd_train.c: `peftc train`, `peftc eval`, `peftc predict`. */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct progress_ui {
    int tty;
    int every;
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
        if (p->eval && p->eval->task && !strcmp(p->eval->task, "token-cls"))
            fprintf(stderr, "%seval at step %d: entity precision %.4f recall %.4f f1 %.4f token accuracy %.4f loss %.4f\n",
                    ui->tty ? "\n" : "", p->step, p->eval->precision, p->eval->recall, p->eval->entity_f1, p->eval->accuracy, p->eval->loss);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "multi-label"))
            fprintf(stderr, "%seval at step %d: micro f1 %.4f macro f1 %.4f exact match %.4f loss %.4f\n", ui->tty ? "\n" : "", p->step,
                    p->eval->f1, p->eval->macro_f1, p->eval->accuracy, p->eval->loss);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "regression"))
            fprintf(stderr, "%seval at step %d: pearson %.4f spearman %.4f mse %.4f\n", ui->tty ? "\n" : "", p->step,
                    p->eval->pearson, p->eval->spearman, p->eval->loss);
        else
            fprintf(stderr, "%seval at step %d: accuracy %.4f loss %.4f f1 %.4f mcc %.4f\n", ui->tty ? "\n" : "",
                    p->step, p->eval_accuracy, p->eval_loss, p->eval_f1, p->eval_mcc);
        break;
    case PEFTC_PROGRESS_CHECKPOINT:
        if (!ui->tty) fprintf(stderr, "checkpoint at step %d\n", p->step);
        break;
    case PEFTC_PROGRESS_DONE:
        fprintf(stderr, "done: %d steps in %.1f s, %.0f tokens/s", p->step, p->elapsed_s, p->tokens_per_s);
        if (p->eval && p->eval->task && !strcmp(p->eval->task, "token-cls")) fprintf(stderr, ", eval entity f1 %.4f", p->eval->entity_f1);
        else if (p->eval && p->eval->task && !strcmp(p->eval->task, "regression"))
            fprintf(stderr, ", eval pearson %.4f spearman %.4f", p->eval->pearson, p->eval->spearman);
        else if (p->message) fprintf(stderr, ", eval accuracy %.4f", p->eval_accuracy);
        fputc('\n', stderr);
        break;
    }
}

int cmd_train(cli_args *a)
{
    peftc_train_opts o;
    peftc_train_opts_default(&o);
    int ok = 1;
    const char *v;
    o.model_dir = cli_opt(a, "--model");
    o.train_path = cli_opt(a, "--train");
    if (!o.train_path) o.train_path = cli_opt(a, "--data");
    o.eval_path = cli_opt(a, "--eval");
    o.out_dir = cli_opt(a, "--out");
    o.resume_dir = cli_opt(a, "--resume");
    o.init_adapter = cli_opt(a, "--init-adapter");
    if ((v = cli_opt(a, "--method"))) o.method = v;
    o.text_col = cli_opt(a, "--text-col");
    o.pair_col = cli_opt(a, "--text-pair-col");
    o.label_col = cli_opt(a, "--label-col");
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
    if (!ok) return 2;
    if (cli_check_unused(a, "train")) return 2;
    if (!o.model_dir || !*o.model_dir || !o.train_path || !*o.train_path || !o.out_dir || !*o.out_dir)
        return cli_errorf(2, "train: --model DIR, --train FILE and --out RUN_DIR are required");
    progress_ui ui = {isatty(2), 1};
    peftc_error err = {0};
    if (peftc_train(&o, on_progress, &ui, &err)) return cli_fail(&err);
    return 0;
}

int cmd_eval(cli_args *a)
{
    const char *model = cli_opt(a, "--model"), *adapter = cli_opt(a, "--adapter"), *data = cli_opt(a, "--data");
    const char *tc = cli_opt(a, "--text-col"), *pc = cli_opt(a, "--text-pair-col"), *lc = cli_opt(a, "--label-col");
    int merge = cli_flag(a, "--merge");
    const char *task = cli_opt(a, "--task");
    if (cli_check_unused(a, "eval")) return 2;
    if (!model || !*model || !adapter || !*adapter || !data || !*data)
        return cli_errorf(2, "eval: --model DIR, --adapter RUN_DIR and --data FILE are required");
    peftc_error err = {0};
    peftc_classifier *c;
    if (peftc_classifier_load(model, adapter, &c, &err)) return cli_fail(&err);
    if (task && strcmp(task, peftc_classifier_task(c))) {
        int rc = cli_errorf(1, "%s: the adapter was trained for --task %s, not %s", adapter, peftc_classifier_task(c), task);
        peftc_classifier_free(c);
        return rc;
    }
    if (merge && peftc_classifier_merge(c, &err)) { peftc_classifier_free(c); return cli_fail(&err); }
    peftc_eval_result r;
    if (peftc_classifier_eval(c, data, tc, pc, lc, &r, &err)) { peftc_classifier_free(c); return cli_fail(&err); }
    if (!strcmp(r.task, "token-cls")) {
        printf("{\"task\": \"token-cls\", \"sentences\": %d, \"words\": %lld, \"words_cut\": %lld, \"precision\": %.6f, \"recall\": %.6f, "
               "\"f1\": %.6f, \"token_accuracy\": %.6f, \"entities_true\": %lld, \"entities_pred\": %lld, \"entities_correct\": %lld, "
               "\"loss\": %.6f}\n", r.n, r.n_words, r.n_words_cut, r.precision, r.recall, r.entity_f1, r.accuracy, r.n_true,
               r.n_pred, r.n_correct, r.loss);
    } else if (!strcmp(r.task, "multi-label")) {
        printf("{\"task\": \"multi-label\", \"examples\": %d, \"micro_f1\": %.6f, \"macro_f1\": %.6f, \"exact_match\": %.6f, \"loss\": %.6f}\n",
               r.n, r.f1, r.macro_f1, r.accuracy, r.loss);
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

int cmd_predict(cli_args *a)
{
    const char *model = cli_opt(a, "--model"), *adapter = cli_opt(a, "--adapter");
    int with_probs = cli_flag(a, "--probs"), merge = cli_flag(a, "--merge");
    const char *data = cli_opt(a, "--data"), *task = cli_opt(a, "--task");
    if (cli_check_unused(a, "predict")) return 2;
    if (!model || !*model || !adapter || !*adapter) return cli_errorf(2, "predict: --model DIR and --adapter RUN_DIR are required");
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
        if (with_probs) for (int k = 0; k < K; k++) printf("\t%.6f", probs[(size_t)i * K + k]);
        putchar('\n');
    }
    free(texts); free(pairs); free(labels); free(probs);
    cli_lines_free(&L);
    peftc_classifier_free(c);
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
