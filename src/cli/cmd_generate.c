/* cmd_generate.c: `peftc generate` (one prompt, streamed to stdout) and
 * `peftc chat` (an interactive conversation with the model's chat template). */
#include "cli/cli.h"
#include "core/core.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ADAPTERS 16
#define MAX_STOPS 16

typedef struct gen_cli {
    peftc_lm_opts lo;
    peftc_gen_opts go;
    const char *adapters[MAX_ADAPTERS];
    char *adapter_buf[MAX_ADAPTERS];
    float scales[MAX_ADAPTERS];
    const char *stops[MAX_STOPS];
    const char *model;
    int timings;
} gen_cli;

static void gen_cli_free(gen_cli *g)
{
    for (int i = 0; i < g->lo.n_adapters; i++) free(g->adapter_buf[i]);
}

/* The options generate and chat share; 0 on a bad option (message printed). */
static int parse_common(cli_args *a, gen_cli *g, const char *cmd)
{
    memset(g, 0, sizeof *g);
    peftc_lm_opts_default(&g->lo);
    peftc_gen_opts_default(&g->go);
    int ok = 1;
    g->model = cli_opt(a, "--model");
    if (!g->model || !*g->model) { cli_errorf(2, "%s: --model FILE.gguf|DIR is required", cmd); return 0; }
    const char *v;
    if ((v = cli_opt(a, "--quantize"))) {   /* the base's block weights in NF4 (safetensors bases) */
        peftc_error qe = {0};
        if (peftc_base_quant_parse(v, &g->lo.quantize, &qe)) { cli_fail(&qe); return 0; }
    }
    while ((v = cli_opt(a, "--adapter"))) {
        if (!*v) { cli_errorf(2, "--adapter: expected DIR or DIR:SCALE"); return 0; }
        if (g->lo.n_adapters == MAX_ADAPTERS) { cli_errorf(2, "--adapter: at most %d adapters", MAX_ADAPTERS); return 0; }
        char *dir = strdup(v);
        if (!dir) { cli_errorf(1, "out of memory"); return 0; }
        float scale = 1.0f;
        char *colon = strrchr(dir, ':');
        if (colon && colon[1]) {
            char *end;
            double s = strtod(colon + 1, &end);
            if (!*end) {   /* a directory name with a colon and no number stays whole */
                if (!(s == s) || s < -100 || s > 100) {
                    free(dir);
                    cli_errorf(2, "--adapter %s: the scale must be a number in [-100, 100]", v);
                    return 0;
                }
                scale = (float)s;
                *colon = 0;
            }
        }
        g->adapter_buf[g->lo.n_adapters] = dir;
        g->adapters[g->lo.n_adapters] = dir;
        g->scales[g->lo.n_adapters] = scale;
        g->lo.n_adapters++;
    }
    g->lo.adapters = g->adapters;
    g->lo.adapter_scales = g->scales;
    g->lo.merge = cli_flag(a, "--merge");
    g->lo.n_ctx = cli_opt_int(a, "--ctx", 0, 1, 1 << 20, &ok);
    g->lo.n_batch = cli_opt_int(a, "--batch", 0, 1, 1 << 16, &ok);
    g->go.temperature = (float)cli_opt_double(a, "--temp", g->go.temperature, -1, 100, &ok);
    g->go.top_k = cli_opt_int(a, "--top-k", g->go.top_k, 0, 1 << 24, &ok);
    g->go.top_p = (float)cli_opt_double(a, "--top-p", g->go.top_p, 1e-6, 1, &ok);
    g->go.min_p = (float)cli_opt_double(a, "--min-p", g->go.min_p, 0, 0.999999, &ok);
    g->go.repeat_penalty = (float)cli_opt_double(a, "--repeat-penalty", g->go.repeat_penalty, 1e-3, 100, &ok);
    g->go.repeat_last_n = cli_opt_int(a, "--repeat-last-n", g->go.repeat_last_n, -1, 1 << 20, &ok);
    g->go.seed = (uint64_t)cli_opt_double(a, "--seed", (double)g->go.seed, 0, 9007199254740992.0, &ok);
    g->go.max_new_tokens = cli_opt_int(a, "--max-new-tokens", g->go.max_new_tokens, 0, 1 << 20, &ok);
    while ((v = cli_opt(a, "--stop"))) {
        if (!*v) { cli_errorf(2, "--stop: expected a non-empty string"); return 0; }
        if (g->go.n_stop == MAX_STOPS) { cli_errorf(2, "--stop: at most %d stop strings", MAX_STOPS); return 0; }
        g->stops[g->go.n_stop++] = v;
    }
    g->go.stop = g->stops;
    if (cli_flag(a, "--no-bos")) g->go.add_bos = 0;
    g->timings = cli_flag(a, "--timings");
    return ok;
}

static int write_out(const char *text, size_t len, void *user)
{
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* appends generated text to a growable buffer and streams it */
typedef struct sink { char *s; size_t n, cap; int echo; } sink;
static int sink_put(const char *text, size_t len, void *user)
{
    sink *k = user;
    if (k->n + len + 1 > k->cap) {
        size_t cap = k->cap ? k->cap : 1024;
        while (cap < k->n + len + 1) cap *= 2;
        char *s = realloc(k->s, cap);
        if (!s) return 1;
        k->s = s;
        k->cap = cap;
    }
    memcpy(k->s + k->n, text, len);
    k->n += len;
    k->s[k->n] = 0;
    if (k->echo) write_out(text, len, NULL);
    return 0;
}

static void print_timings(const peftc_gen_stats *st)
{
    fprintf(stderr,
            "{\"prompt_tokens\": %d, \"cached_tokens\": %d, \"prompt_s\": %.4f, \"prompt_tok_s\": %.1f, "
            "\"gen_tokens\": %d, \"gen_s\": %.4f, \"gen_tok_s\": %.1f, \"stop\": \"%s\"}\n",
            st->prompt_tokens, st->cached_tokens, st->prompt_s,
            st->prompt_s > 0 ? st->prompt_tokens / st->prompt_s : 0.0, st->gen_tokens, st->gen_s,
            st->gen_s > 0 ? st->gen_tokens / st->gen_s : 0.0, st->stop_reason ? st->stop_reason : "");
}

static char *read_file_text(const char *path)
{
    FILE *f = peftc_fopen_regular(path);
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    for (;;) {
        if (!s) break;
        if (n + 4096 + 1 > cap) {
            if (cap > (64u << 20)) { free(s); s = NULL; break; }
            char *t = realloc(s, cap * 2);
            if (!t) { free(s); s = NULL; break; }
            s = t;
            cap *= 2;
        }
        size_t r = fread(s + n, 1, 4096, f);
        n += r;
        if (r < 4096) break;
    }
    fclose(f);
    if (s) s[n] = 0;
    return s;
}

/* The data options of `peftc train` on a decoder (peftc_lm_data_opts). */
static int parse_data(cli_args *a, peftc_lm_data_opts *d)
{
    int ok = 1;
    memset(d, 0, sizeof *d);
    d->format = cli_opt(a, "--format");
    d->prompt_template = cli_opt(a, "--prompt-template");
    d->prompt_field = cli_opt(a, "--prompt-field");
    d->response_field = cli_opt(a, "--response-field");
    const char *loss_on = cli_opt(a, "--loss-on");
    if (loss_on && strcmp(loss_on, "all") && strcmp(loss_on, "response")) {
        cli_errorf(2, "--loss-on '%s': use response or all", loss_on);
        return 0;
    }
    d->loss_on_all = loss_on && !strcmp(loss_on, "all");
    d->max_len = cli_opt_int(a, "--max-len", 0, 2, 1 << 20, &ok);
    return ok;
}

typedef struct data_ui {
    int tty;
    double t0;
} data_ui;

static int on_example(int i, int n, const char *pred, const peftc_gen_stats *st, void *user)
{
    data_ui *ui = user;
    (void)pred;
    if (ui->tty) fprintf(stderr, "\r%d/%d (%d tokens, %s)   ", i + 1, n, st->gen_tokens, st->stop_reason);
    else if ((i + 1) % 10 == 0 || i + 1 == n) fprintf(stderr, "generated %d/%d\n", i + 1, n);
    if (ui->tty && i + 1 == n) fputc('\n', stderr);
    return 0;
}

static void print_gen_summary(const peftc_lm_gen_summary *s)
{
    printf("\"examples\": %d, \"prompt_tokens\": %lld, \"gen_tokens\": %lld, \"seconds\": %.2f, \"gen_tok_s\": %.1f, "
           "\"stopped_eos\": %d, \"stopped_stop\": %d, \"stopped_length\": %d",
           s->n, s->prompt_tokens, s->gen_tokens, s->seconds, s->seconds > 0 ? s->gen_tokens / s->seconds : 0.0, s->n_eos,
           s->n_stop, s->n_length);
}

static void free_strs(char **t, int n)
{
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i]);
    free(t);
}

/* `peftc eval --task causal-lm`: loss and perplexity over the targets; with
 * --metric also generation over the records and its scores. */
int cmd_eval_lm(cli_args *a)
{
    gen_cli g;
    if (!parse_common(a, &g, "eval")) { gen_cli_free(&g); return 2; }
    peftc_lm_data_opts d;
    int ok = parse_data(a, &d);
    const char *data = cli_opt(a, "--data"), *metric = cli_opt(a, "--metric"), *pred_out = cli_opt(a, "--pred-out");
    int limit = cli_opt_int(a, "--limit", 0, 1, 1 << 30, &ok);
    int no_loss = cli_flag(a, "--no-loss");
    if (!ok || cli_check_unused(a, "eval")) { gen_cli_free(&g); return 2; }
    if (!data || !*data) { gen_cli_free(&g); return cli_errorf(2, "eval: --data FILE.jsonl is required"); }
    int mask = metric ? peftc_metric_parse(metric) : 0;
    if (metric && !mask) { gen_cli_free(&g); return cli_errorf(2, "--metric '%s': use em-number, rouge, bleu or a comma list of them", metric); }
    if ((pred_out || limit) && !metric) { gen_cli_free(&g); return cli_errorf(2, "eval: --pred-out and --limit go with --metric"); }
    peftc_error err = {0};
    peftc_lm *lm = NULL;
    int rc = 0;
    char **P = NULL, **R = NULL;
    peftc_lm_gen_summary gs = {0};
    if (peftc_lm_load(g.model, &g.lo, &lm, &err)) { rc = cli_fail(&err); goto done; }
    peftc_lm_eval_result r = {0};
    if (!no_loss && peftc_lm_eval_loss(lm, data, &d, &r, &err)) { rc = cli_fail(&err); goto done; }
    peftc_score_result sr = {0};
    if (mask) {
        data_ui ui = {isatty(2), 0};
        if (peftc_lm_generate_data(lm, data, &d, &g.go, limit, pred_out, on_example, &ui, &gs, &P, &R, &err) ||
            peftc_score(mask, (const char *const *)P, (const char *const *)R, gs.n, &sr, NULL, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
    }
    printf("{");
    if (!no_loss)
        printf("\"examples\": %d, \"truncated\": %d, \"dropped\": %d, \"targets\": %lld, \"loss\": %.8f, \"perplexity\": %.6f%s",
               r.n_examples, r.n_truncated, r.n_dropped, r.n_targets, r.loss, r.perplexity, mask ? ", " : "");
    if (mask) {
        printf("\"generation\": {");
        print_gen_summary(&gs);
        printf("}, ");
        cli_print_score(&sr);
    }
    printf("}\n");
done:
    free_strs(P, gs.n);
    free_strs(R, gs.n);
    peftc_lm_free(lm);
    gen_cli_free(&g);
    return rc;
}

/* `peftc generate --data FILE --out preds.jsonl`: every record's prompt. */
static int generate_data(cli_args *a, gen_cli *g, const char *data)
{
    peftc_lm_data_opts d;
    int ok = parse_data(a, &d);
    const char *out = cli_opt(a, "--out");
    int limit = cli_opt_int(a, "--limit", 0, 1, 1 << 30, &ok);
    if (!ok || cli_check_unused(a, "generate")) return 2;
    if (!out || !*out) return cli_errorf(2, "generate: --data needs --out preds.jsonl");
    peftc_error err = {0};
    peftc_lm *lm = NULL;
    int rc = 0;
    if (peftc_lm_load(g->model, &g->lo, &lm, &err)) return cli_fail(&err);
    data_ui ui = {isatty(2), 0};
    peftc_lm_gen_summary gs;
    if (peftc_lm_generate_data(lm, data, &d, &g->go, limit, out, on_example, &ui, &gs, NULL, NULL, &err)) rc = cli_fail(&err);
    else {
        printf("{");
        print_gen_summary(&gs);
        printf("}\n");
    }
    peftc_lm_free(lm);
    return rc;
}

int cmd_generate(cli_args *a)
{
    gen_cli g;
    if (!parse_common(a, &g, "generate")) { gen_cli_free(&g); return 2; }
    const char *data = cli_opt(a, "--data");
    if (data) {
        int rc = generate_data(a, &g, data);
        gen_cli_free(&g);
        return rc;
    }
    const char *prompt = cli_opt(a, "--prompt");
    const char *prompt_file = cli_opt(a, "--prompt-file");
    int chat = cli_flag(a, "--chat");
    const char *system = cli_opt(a, "--system");
    if (cli_check_unused(a, "generate")) { gen_cli_free(&g); return 2; }
    if (!!prompt + !!prompt_file != 1) {
        gen_cli_free(&g);
        return cli_errorf(2, "generate: give exactly one of --prompt TEXT and --prompt-file FILE");
    }
    if (system && !chat) { gen_cli_free(&g); return cli_errorf(2, "generate: --system needs --chat"); }
    char *file_text = NULL;
    if (prompt_file) {
        file_text = read_file_text(prompt_file);
        if (!file_text) { gen_cli_free(&g); return cli_errorf(1, "%s: cannot read the prompt file (or over 64 MiB)", prompt_file); }
        prompt = file_text;
    }
    peftc_error err = {0};
    peftc_lm *lm = NULL;
    int rc = 0;
    char *formatted = NULL;
    if (peftc_lm_load(g.model, &g.lo, &lm, &err)) { rc = cli_fail(&err); goto done; }
    if (chat) {
        peftc_chat_msg msgs[2];
        int n = 0;
        if (system) msgs[n++] = (peftc_chat_msg){"system", system};
        msgs[n++] = (peftc_chat_msg){"user", prompt};
        if (peftc_lm_chat_format(lm, msgs, n, 1, &formatted, &err)) { rc = cli_fail(&err); goto done; }
        prompt = formatted;
        g.go.parse_special = 1;
        if (g.go.add_bos < 0) g.go.add_bos = 0;   /* the template writes what the model wants */
    }
    peftc_gen_stats st;
    if (peftc_lm_generate(lm, prompt, &g.go, write_out, NULL, &st, &err)) {
        fflush(stdout);
        rc = cli_fail(&err);
        goto done;
    }
    if (isatty(STDOUT_FILENO) || chat) fputc('\n', stdout);
    fflush(stdout);
    if (g.timings) print_timings(&st);
done:
    free(formatted);
    free(file_text);
    peftc_lm_free(lm);
    gen_cli_free(&g);
    return rc;
}

int cmd_chat(cli_args *a)
{
    gen_cli g;
    if (!parse_common(a, &g, "chat")) { gen_cli_free(&g); return 2; }
    const char *system = cli_opt(a, "--system");
    if (cli_check_unused(a, "chat")) { gen_cli_free(&g); return 2; }
    peftc_error err = {0};
    peftc_lm *lm = NULL;
    int rc = 0, n = 0, cap = 0, tty = isatty(STDIN_FILENO);
    peftc_chat_msg *msgs = NULL;
    char **owned = NULL;   /* message texts this loop allocated */
    if (peftc_lm_load(g.model, &g.lo, &lm, &err)) { rc = cli_fail(&err); goto done; }
    g.go.parse_special = 1;
    if (g.go.add_bos < 0) g.go.add_bos = 0;
    if (tty) fprintf(stderr, "%s\n(an empty line or end of input quits)\n", peftc_lm_describe(lm));
    for (;;) {
        if (n + 3 > cap) {
            cap = cap ? cap * 2 : 16;
            peftc_chat_msg *m = realloc(msgs, (size_t)cap * sizeof *m);
            char **o = realloc(owned, (size_t)cap * sizeof *o);
            if (m) msgs = m;
            if (o) owned = o;
            if (!m || !o) { rc = cli_errorf(1, "chat: out of memory"); goto done; }
        }
        if (n == 0 && system) { msgs[n] = (peftc_chat_msg){"system", system}; owned[n++] = NULL; }
        if (tty) { fputs("> ", stderr); fflush(stderr); }
        char *line = NULL;
        size_t lcap = 0;
        ssize_t len = getline(&line, &lcap, stdin);
        if (len <= 0) { free(line); break; }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) { free(line); break; }
        msgs[n] = (peftc_chat_msg){"user", line};
        owned[n++] = line;
        char *prompt = NULL;
        if (peftc_lm_chat_format(lm, msgs, n, 1, &prompt, &err)) { rc = cli_fail(&err); goto done; }
        sink reply = {.echo = 1};
        peftc_gen_stats st;
        peftc_status s = peftc_lm_generate(lm, prompt, &g.go, sink_put, &reply, &st, &err);
        free(prompt);
        fputc('\n', stdout);
        fflush(stdout);
        if (s) { free(reply.s); rc = cli_fail(&err); goto done; }
        if (g.timings) print_timings(&st);
        msgs[n] = (peftc_chat_msg){"assistant", reply.s ? reply.s : ""};
        owned[n++] = reply.s;
    }
done:
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(msgs);
    peftc_lm_free(lm);
    gen_cli_free(&g);
    return rc;
}
