/* cmd_sweep.c: `peftc sweep` — methods x budgets x seeds on one model and
 * task, each run trained in a forked child (its own peak RSS; a crash kills
 * one run, not the sweep), resumable, then the report; and `peftc report`. */
#include "core/json_file.h"
#include "cli/cli.h"
#include "cli/sweep.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A sweep's runs are forked children that leave by _exit (not to run the
 * parent's atexit handlers or flush its stdio buffers a second time), which
 * skips LeakSanitizer's check at exit: sanitizer builds run it explicitly. */
#if defined(__SANITIZE_ADDRESS__)
#define PEFTC_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PEFTC_LSAN 1
#endif
#endif
#ifdef PEFTC_LSAN
#include <sanitizer/lsan_interface.h>
#endif

#define SWEEP_MAX_ENTRIES 64
#define SWEEP_MAX_BUDGETS 16
#define SWEEP_MAX_SEEDS 32
#define SWEEP_MAX_LRS 9
#define SWEEP_MAX_DELTAS 16

/* Which option a budget sets. */
typedef enum knob_kind { KNOB_NONE, KNOB_R, KNOB_VIRTUAL, KNOB_PREFIX, KNOB_DELTA_R } knob_kind;
static const char *const knob_names[] = {"", "r", "num_virtual", "prefix_len", "r"};

/* One method line of the sweep: a preset with options, or custom deltas. */
typedef struct sweep_entry {
    char name[48];                    /* run directory prefix and report label */
    char method[48];
    peftc_train_opts opts;            /* the method options (paths and steps are the sweep's) */
    char *delta_text[SWEEP_MAX_DELTAS];   /* custom specs; "{r}" is the budget's knob */
    const char *delta_ptr[SWEEP_MAX_DELTAS];
    char delta_buf[SWEEP_MAX_DELTAS][512];
    int n_deltas;
    knob_kind knob;
    float lrs[SWEEP_MAX_LRS];         /* an explicit lr grid (n_lr > 0) */
    int n_lr;
} sweep_entry;

typedef struct sweep_run {
    char dir[128];
    int entry, budget;                /* budget -1: the method has no size knob */
    int seed_idx;
    uint64_t seed;
    int knob_value;
    float lr;                         /* 0 until the grid has chosen */
    int grid;                         /* 1: an lr-grid run, 2: an lr range test (first seed only) */
    int group;                        /* (entry, budget) index */
    peftc_method_info info;
    char status[16];                  /* "planned", "done", "failed" */
} sweep_run;

typedef struct sweep {
    const char *model, *train, *eval, *out, *metric;
    int steps, batch, max_len, save_every, lr_grid, retry_failed;
    int lr_auto, lr_auto_steps;       /* --lr auto: a range test per method and budget */
    sweep_entry entries[SWEEP_MAX_ENTRIES];
    int n_entries;
    char budget_text[SWEEP_MAX_BUDGETS][16];
    double budget[SWEEP_MAX_BUDGETS];  /* fractions of the base model */
    int n_budgets;
    uint64_t seeds[SWEEP_MAX_SEEDS];
    int n_seeds;
    sweep_run *runs;
    int n_runs;
    int num_labels;
    double t_start;
} sweep;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fmt_time(char *buf, size_t n, double s)
{
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%d:%02d", t / 60, t % 60);
}

int cli_write_atomic(const char *path, const char *data, size_t len)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) { errno = ENAMETOOLONG; return -1; }
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    int bad = w != len || fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0 || bad) { int e = errno; remove(tmp); errno = e ? e : EIO; return -1; }
    if (rename(tmp, path) != 0) { int e = errno; remove(tmp); errno = e; return -1; }
    return 0;
}

/* ------------------------------------------------------------ the plan */

static knob_kind preset_knob(const char *method)
{
    static const char *const r_methods[] = {"lora", "adapter-houlsby", "adapter-pfeiffer", "parallel-adapter",
                                            "scaled-parallel-adapter", "mh-parallel-adapter", "mam", "unipelt"};
    for (size_t i = 0; i < sizeof r_methods / sizeof *r_methods; i++)
        if (!strcmp(method, r_methods[i])) return KNOB_R;
    if (!strcmp(method, "prompt") || !strcmp(method, "ptuning")) return KNOB_VIRTUAL;
    if (!strcmp(method, "prefix") || !strcmp(method, "ptuning-v2")) return KNOB_PREFIX;
    return KNOB_NONE;   /* full, bitfit, ia3: one size each */
}

/* Sets the entry's knob to k in o (custom: "{r}" in the delta specs becomes k). */
static int apply_knob(sweep_entry *e, peftc_train_opts *o, int k)
{
    *o = e->opts;
    switch (e->knob) {
    case KNOB_NONE: break;
    case KNOB_R: o->lora_r = k; break;
    case KNOB_VIRTUAL: o->num_virtual = k; break;
    case KNOB_PREFIX: o->prefix_len = k; break;
    case KNOB_DELTA_R: break;
    }
    for (int i = 0; i < e->n_deltas; i++) {
        const char *src = e->delta_text[i], *at = strstr(src, "{r}");
        if (at) {
            int n = snprintf(e->delta_buf[i], sizeof e->delta_buf[i], "%.*s%d%s", (int)(at - src), src, k, at + 3);
            if (n < 0 || n >= (int)sizeof e->delta_buf[i]) return -1;
            e->delta_ptr[i] = e->delta_buf[i];
        } else {
            e->delta_ptr[i] = src;
        }
    }
    o->deltas = e->delta_ptr;
    o->n_deltas = e->n_deltas;
    return 0;
}

/* The saved parameter count at knob value k; -1 where the method cannot be
 * built with it (a rank above a width, a prefix longer than the positions). */
static int64_t count_at(peftc_model *m, sweep_entry *e, int k, int num_labels, peftc_method_info *info)
{
    peftc_train_opts o;
    if (apply_knob(e, &o, k)) return -1;
    peftc_error err = {0};
    if (peftc_method_info_get(m, &o, num_labels, info, &err)) return -1;
    return info->saved_params;
}

/* The knob value whose saved count is nearest target: the count grows with
 * the knob, so a binary search finds the first value at or above it, and it
 * or its predecessor is the nearest. Returns 0 if even k = 1 cannot be built. */
static int nearest_knob(peftc_model *m, sweep_entry *e, int hi, double target, int num_labels, peftc_method_info *best)
{
    peftc_method_info info;
    int lo = 1;
    if (count_at(m, e, 1, num_labels, &info) < 0) return 0;
    /* the buildable sizes are 1..kmax (a limit is a width or a position
     * count): the largest by binary search */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (count_at(m, e, mid, num_labels, &info) >= 0) lo = mid;
        else hi = mid - 1;
    }
    int a = 1, b = lo;   /* first k in [a, b] with count >= target, or b */
    while (a < b) {
        int mid = a + (b - a) / 2;
        int64_t c = count_at(m, e, mid, num_labels, &info);
        if (c >= 0 && (double)c >= target) b = mid;
        else a = mid + 1;
    }
    int k = a;
    int64_t ck = count_at(m, e, k, num_labels, best);
    if (k > 1) {
        int64_t cp = count_at(m, e, k - 1, num_labels, &info);
        if (cp >= 0 && fabs((double)cp - target) <= fabs((double)ck - target)) { *best = info; return k - 1; }
    }
    return k;
}

static void run_dir_name(char *out, size_t cap, const sweep *s, const sweep_run *r)
{
    const char *b = r->budget < 0 ? "fixed" : s->budget_text[r->budget];
    if (r->grid == 2) snprintf(out, cap, "%s-%s-lrfind", s->entries[r->entry].name, b);
    else if (r->grid) snprintf(out, cap, "%s-%s-s%llu-lr%.3g", s->entries[r->entry].name, b, (unsigned long long)r->seed, (double)r->lr);
    else snprintf(out, cap, "%s-%s-s%llu", s->entries[r->entry].name, b, (unsigned long long)r->seed);
}

/* The lr grid of an entry around its default lr0. */
static int lr_grid(const sweep *s, const sweep_entry *e, float lr0, float *out)
{
    if (e->n_lr > 0) { memcpy(out, e->lrs, (size_t)e->n_lr * sizeof *out); return e->n_lr; }
    int n = s->lr_grid;
    for (int i = 0; i < n; i++) out[i] = lr0 * (float)pow(3.0, i - (n - 1) / 2);
    return n;
}

static int plan(sweep *s)
{
    peftc_error err = {0};
    peftc_model *m;
    if (peftc_model_load(s->model, &m, &err)) return cli_fail(&err);
    const peftc_config *cfg = peftc_model_config(m);
    int cap = s->n_entries * (s->n_budgets > 0 ? s->n_budgets : 1) * (s->n_seeds + SWEEP_MAX_LRS + 1);
    s->runs = calloc((size_t)cap, sizeof *s->runs);
    if (!s->runs) { peftc_model_free(m); return cli_errorf(1, "out of memory"); }
    int group = 0;
    for (int ei = 0; ei < s->n_entries; ei++) {
        sweep_entry *e = &s->entries[ei];
        int nb = e->knob == KNOB_NONE || s->n_budgets == 0 ? 1 : s->n_budgets;
        for (int bi = 0; bi < nb; bi++, group++) {
            peftc_method_info info;
            int k = 0;
            if (e->knob == KNOB_NONE || s->n_budgets == 0) {
                if (count_at(m, e, 0, s->num_labels, &info) < 0) {
                    peftc_train_opts o;
                    apply_knob(e, &o, 0);
                    peftc_method_info_get(m, &o, s->num_labels, &info, &err);
                    peftc_model_free(m);
                    return cli_errorf(1, "sweep: method '%s': %s", e->name, err.msg);
                }
            } else {
                int hi = e->knob == KNOB_VIRTUAL ? s->max_len - 4
                         : e->knob == KNOB_PREFIX ? cfg->max_position : cfg->intermediate_size;
                double target = s->budget[bi] * (double)peftc_model_param_count(m);
                if (!(k = nearest_knob(m, e, hi, target, s->num_labels, &info))) {
                    peftc_train_opts o;
                    apply_knob(e, &o, 1);
                    peftc_method_info_get(m, &o, s->num_labels, &info, &err);
                    peftc_model_free(m);
                    return cli_errorf(1, "sweep: method '%s' cannot be built at %s = 1: %s", e->name, knob_names[e->knob], err.msg);
                }
            }
            int budget = e->knob == KNOB_NONE || s->n_budgets == 0 ? -1 : bi;
            float grid[SWEEP_MAX_LRS];
            int ng = (e->n_lr > 1 || (e->n_lr == 0 && s->lr_grid > 1)) ? lr_grid(s, e, info.lr, grid) : 0;
            if (s->lr_auto && e->n_lr == 0) {
                /* the range test starts at the default lr / 100 (its lr_end: default x 100, at most 1) */
                sweep_run *r = &s->runs[s->n_runs++];
                *r = (sweep_run){.entry = ei, .budget = budget, .seed_idx = 0, .seed = s->seeds[0], .knob_value = k,
                                 .lr = info.lr / 100, .grid = 2, .group = group, .info = info};
                r->info.lr = r->lr;
                run_dir_name(r->dir, sizeof r->dir, s, r);
                ng = 0;
            }
            for (int g = 0; g < ng; g++) {
                sweep_run *r = &s->runs[s->n_runs++];
                *r = (sweep_run){.entry = ei, .budget = budget, .seed_idx = 0, .seed = s->seeds[0], .knob_value = k,
                                 .lr = grid[g], .grid = 1, .group = group, .info = info};
                r->info.lr = grid[g];
                run_dir_name(r->dir, sizeof r->dir, s, r);
            }
            for (int si = 0; si < s->n_seeds; si++) {
                sweep_run *r = &s->runs[s->n_runs++];
                /* with a grid the lr is chosen once the grid has run */
                *r = (sweep_run){.entry = ei, .budget = budget, .seed_idx = si, .seed = s->seeds[si], .knob_value = k,
                                 .lr = ng || (s->lr_auto && e->n_lr == 0) ? 0 : (e->n_lr == 1 ? e->lrs[0] : info.lr),
                                 .grid = 0, .group = group, .info = info};
                r->info.lr = r->lr;
                run_dir_name(r->dir, sizeof r->dir, s, r);
            }
        }
    }
    /* counting is done: the children must not inherit the model's pages
     * (their peak RSS would include them) */
    peftc_model_free(m);
    return 0;
}

/* ---------------------------------------------------------- run state */

static json_t *run_json(const sweep *s, const sweep_run *r)
{
    const sweep_entry *e = &s->entries[r->entry];
    json_t *j = json_object();
    json_object_set_new(j, "dir", json_string(r->dir));
    json_object_set_new(j, "name", json_string(e->name));
    json_object_set_new(j, "method", json_string(e->method));
    json_object_set_new(j, "budget", json_string(r->budget < 0 ? "fixed" : s->budget_text[r->budget]));
    json_object_set_new(j, "budget_fraction", json_real(r->budget < 0 ? 0 : s->budget[r->budget]));
    json_object_set_new(j, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(j, "lr", json_real(r->lr));
    json_object_set_new(j, "grid", json_boolean(r->grid != 0));
    json_object_set_new(j, "lr_find", json_boolean(r->grid == 2));
    json_object_set_new(j, "group", json_integer(r->group));
    json_object_set_new(j, "knob", json_string(knob_names[e->knob]));
    json_object_set_new(j, "knob_value", json_integer(r->knob_value));
    json_object_set_new(j, "spec", json_string(r->info.spec));
    json_object_set_new(j, "trainable_params", json_integer(r->info.trainable_params));
    json_object_set_new(j, "saved_params", json_integer(r->info.saved_params));
    json_object_set_new(j, "total_params", json_integer(r->info.total_params));
    json_object_set_new(j, "saved_percent", json_real(100.0 * (double)r->info.saved_params / (double)r->info.total_params));
    json_object_set_new(j, "insertion", json_string(r->info.insertion));
    json_object_set_new(j, "representation", json_string(r->info.representation));
    json_object_set_new(j, "composition", json_string(r->info.composition));
    json_object_set_new(j, "functional_form", json_string(r->info.functional_form));
    json_object_set_new(j, "status", json_string(r->status));
    return j;
}

static int write_manifest(const sweep *s)
{
    json_t *j = json_object(), *runs = json_array();
    json_object_set_new(j, "model", json_string(s->model));
    json_object_set_new(j, "train", json_string(s->train));
    json_object_set_new(j, "eval", s->eval ? json_string(s->eval) : json_null());
    json_object_set_new(j, "steps", json_integer(s->steps));
    json_object_set_new(j, "batch", json_integer(s->batch));
    json_object_set_new(j, "max_len", json_integer(s->max_len));
    json_object_set_new(j, "metric", json_string(s->metric));
    json_object_set_new(j, "lr_grid", json_integer(s->lr_grid));
    json_object_set_new(j, "lr_auto", json_boolean(s->lr_auto));
    json_object_set_new(j, "lr_auto_steps", json_integer(s->lr_auto_steps));
    json_t *seeds = json_array();
    for (int i = 0; i < s->n_seeds; i++) json_array_append_new(seeds, json_integer((json_int_t)s->seeds[i]));
    json_object_set_new(j, "seeds", seeds);
    for (int i = 0; i < s->n_runs; i++) json_array_append_new(runs, run_json(s, &s->runs[i]));
    json_object_set_new(j, "runs", runs);
    char *text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    char path[4096];
    snprintf(path, sizeof path, "%s/sweep.json", s->out);
    int rc = text && !cli_write_atomic(path, text, strlen(text)) ? 0 : cli_errorf(1, "%s: cannot write: %s", path, strerror(errno));
    free(text);
    return rc;
}

/* "done" / "failed" from DIR/<run>/run.json, "" when it has not finished. */
static void read_status(const sweep *s, sweep_run *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/run.json", s->out, r->dir);
    snprintf(r->status, sizeof r->status, "planned");
    json_t *j = peftc_json_load_file(path, 0, NULL);
    const char *st = j ? json_string_value(json_object_get(j, "status")) : NULL;
    if (st && (!strcmp(st, "done") || !strcmp(st, "failed"))) snprintf(r->status, sizeof r->status, "%s", st);
    json_decref(j);
}

/* The eval metric of a finished run (-1 if none). */
static double run_metric(const sweep *s, const sweep_run *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/metrics.json", s->out, r->dir);
    json_t *j = peftc_json_load_file(path, 0, NULL);
    char key[64];
    snprintf(key, sizeof key, "eval_%s", s->metric);
    json_t *v = j ? json_object_get(j, key) : NULL;
    double x = json_is_number(v) ? json_number_value(v) : -1;
    json_decref(j);
    return x;
}

/* ------------------------------------------------------- the child run */

typedef struct child_ctx {
    FILE *csv;
    const char *label;
    int run_no, n_runs, tty, every;
    double sweep_elapsed, remaining_steps_after, sec_per_step;
} child_ctx;

/* Keeps the rows of an interrupted run's loss.csv up to the step its
 * checkpoint holds (later rows are redone by the resumed run). */
static FILE *open_curve(const char *path, int keep_upto)
{
    char *kept = NULL;
    size_t kept_len = 0;
    FILE *mem = open_memstream(&kept, &kept_len);
    if (!mem) return NULL;
    fputs("step,loss,lr\n", mem);
    FILE *old = keep_upto > 0 ? fopen(path, "r") : NULL;
    if (old) {
        char line[256];
        while (fgets(line, sizeof line, old)) {
            int step;
            if (sscanf(line, "%d,", &step) == 1 && step <= keep_upto) fputs(line, mem);
        }
        fclose(old);
    }
    fclose(mem);
    int rc = cli_write_atomic(path, kept, kept_len);
    free(kept);
    return rc ? NULL : fopen(path, "a");
}

static void child_progress(const peftc_progress *p, void *user)
{
    child_ctx *c = user;
    char eta[32], sweep_eta[32];
    switch (p->kind) {
    case PEFTC_PROGRESS_START: {
        char path[4200];
        snprintf(path, sizeof path, "%s", c->label);   /* label is the run directory: loss.csv beside it */
        strncat(path, "/loss.csv", sizeof path - strlen(path) - 1);
        c->csv = open_curve(path, p->step);
        c->every = p->total_steps / 10 > 0 ? p->total_steps / 10 : 1;
        fprintf(stderr, "[%d/%d] %s\n", c->run_no, c->n_runs, p->message);
        break;
    }
    case PEFTC_PROGRESS_STEP: {
        /* flushed at once: the checkpoint of this step is written before this
         * call returns to the loop, and a kill right after it must find the
         * row on disk (a buffered row would be lost with no redo) */
        if (c->csv) { fprintf(c->csv, "%d,%.6g,%.6g\n", p->step, (double)p->loss, (double)p->lr); fflush(c->csv); }
        double rate = c->sec_per_step > 0 ? c->sec_per_step : p->elapsed_s / (p->step > 0 ? p->step : 1);
        fmt_time(eta, sizeof eta, p->eta_s);
        fmt_time(sweep_eta, sizeof sweep_eta, p->eta_s + c->remaining_steps_after * rate);
        if (c->tty)
            fprintf(stderr, "\r[%d/%d] step %d/%d loss %.4f %.0f tok/s  run ETA %s  sweep ETA %s ", c->run_no, c->n_runs, p->step,
                    p->total_steps, (double)p->loss, p->tokens_per_s, eta, sweep_eta);
        else if (p->step % c->every == 0 || p->step == p->total_steps)
            fprintf(stderr, "[%d/%d] step %d/%d loss %.4f %.0f tok/s run ETA %s sweep ETA %s\n", c->run_no, c->n_runs, p->step,
                    p->total_steps, (double)p->loss, p->tokens_per_s, eta, sweep_eta);
        break;
    }
    case PEFTC_PROGRESS_CHECKPOINT:
        if (c->csv) fflush(c->csv);   /* the curve is on disk up to the checkpoint */
        break;
    case PEFTC_PROGRESS_EVAL:
    case PEFTC_PROGRESS_DONE:
        if (c->tty) fputc('\n', stderr);
        break;
    }
}

/* run.json records the lr and spec the run trained with: a resumed sweep
 * whose plan gives the run another (an edited sweep file, a new default
 * lr) must not keep it under the new label. */
static void write_run_json(const char *dir, const char *status, double peak_mb, double wall, const char *error,
                           const sweep_run *r)
{
    json_t *j = json_object();
    json_object_set_new(j, "status", json_string(status));
    json_object_set_new(j, "lr", json_real(r->lr > 0 ? r->lr : r->info.lr));
    json_object_set_new(j, "spec", json_string(r->info.spec));
    json_object_set_new(j, "peak_rss_mb", json_real(peak_mb));
    json_object_set_new(j, "wall_seconds", json_real(wall));
    if (error) json_object_set_new(j, "error", json_string(error));
    char *text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    char path[4200];
    snprintf(path, sizeof path, "%s/run.json", dir);
    if (text && cli_write_atomic(path, text, strlen(text)))
        fprintf(stderr, "peftc: %s: cannot write: %s\n", path, strerror(errno));
    free(text);
}

/* Trains one run in a child process; returns 0 if it finished. */
static int run_one(sweep *s, sweep_run *r, int run_no, int n_runs, double remaining_after, double sec_per_step)
{
    sweep_entry *e = &s->entries[r->entry];
    char dir[4200], ckpt[4300], errpath[4300];
    snprintf(dir, sizeof dir, "%s/%s", s->out, r->dir);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", dir);
    snprintf(errpath, sizeof errpath, "%s/error.txt", dir);
    if (mkdir(dir, 0777) && errno != EEXIST) return cli_errorf(1, "%s: cannot create: %s", dir, strerror(errno));
    int resume = access(ckpt, R_OK) == 0;
    fflush(NULL);
    double t0 = now_s();
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) return cli_errorf(1, "sweep: fork: %s", strerror(errno));
    if (pid == 0) {
        /* the run dies with the sweep (a killed sweep leaves no orphan
         * training into its directory) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(3);
        peftc_train_opts o;
        apply_knob(e, &o, r->knob_value);
        o.model_dir = s->model;
        o.train_path = s->train;
        o.eval_path = s->eval;
        o.out_dir = dir;
        o.resume_dir = resume ? dir : NULL;
        o.max_steps = s->steps;
        o.batch = s->batch;
        o.max_len = s->max_len;
        o.seed = r->seed;
        o.lr = r->lr;
        o.save_every = s->save_every;
        if (r->grid == 2) { /* the range test: no checkpoint (a rerun starts it again), no eval */
            o.lr_end = fminf(1.0f, r->lr * 1e4f);
            o.max_steps = s->lr_auto_steps;
            o.save_every = 0;
            o.eval_path = NULL;
            o.resume_dir = NULL;
        }
        child_ctx c = {.label = dir, .run_no = run_no, .n_runs = n_runs, .tty = isatty(2),
                       .remaining_steps_after = remaining_after, .sec_per_step = sec_per_step};
        peftc_error err = {0};
        peftc_status rc = peftc_train(&o, child_progress, &c, &err);
        if (c.csv) fclose(c.csv);
        if (rc) {
            FILE *f = fopen(errpath, "w");
            if (f) { fprintf(f, "%s\n", err.msg); fclose(f); }
            fprintf(stderr, "peftc: %s: %s\n", r->dir, err.msg);
        }
        fflush(NULL);
#ifdef PEFTC_LSAN
        __lsan_do_leak_check();
#endif
        _exit(rc ? 1 : 0);
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) return cli_errorf(1, "sweep: wait: %s", strerror(errno));
    double wall = now_s() - t0, peak_mb = ru.ru_maxrss / 1024.0;
    char why[600] = "";
    if (WIFSIGNALED(status)) snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(status));
    else if (WEXITSTATUS(status)) {
        FILE *f = fopen(errpath, "r");
        if (!f || !fgets(why, sizeof why, f)) snprintf(why, sizeof why, "exit code %d", WEXITSTATUS(status));
        if (f) fclose(f);
        why[strcspn(why, "\n")] = 0;
    }
    if (why[0]) {
        write_run_json(dir, "failed", peak_mb, wall, why, r);
        snprintf(r->status, sizeof r->status, "failed");
        fprintf(stderr, "[%d/%d] %s failed: %s\n", run_no, n_runs, r->dir, why);
        return 1;
    }
    /* the checkpoint is only for resuming; the adapter is the result */
    remove(ckpt);
    write_run_json(dir, "done", peak_mb, wall, NULL, r);
    snprintf(r->status, sizeof r->status, "done");
    if (r->grid == 2) fprintf(stderr, "[%d/%d] %s done: range test, %.1f s\n", run_no, n_runs, r->dir, wall);
    else fprintf(stderr, "[%d/%d] %s done: %s %.4f, %.1f s, peak RSS %.0f MB\n", run_no, n_runs, r->dir, s->metric,
                 run_metric(s, r), wall, peak_mb);
    return 0;
}

/* After the grid runs of a group: the lr with the best eval metric for its
 * main runs (first seed: a link to that grid run, not a second training). */
static void choose_lr(sweep *s, int group)
{
    double best = -2;
    int best_i = -1;
    for (int i = 0; i < s->n_runs; i++) {
        sweep_run *r = &s->runs[i];
        if (r->group != group || !r->grid || strcmp(r->status, "done")) continue;
        double v = run_metric(s, r);
        if (v > best) { best = v; best_i = i; }
    }
    for (int i = 0; i < s->n_runs; i++) {
        sweep_run *r = &s->runs[i];
        if (r->group != group || r->grid) continue;
        if (best_i < 0) { r->lr = 0; continue; }   /* every grid run failed: the default */
        r->lr = s->runs[best_i].lr;
        r->info.lr = r->lr;
        if (r->seed_idx == 0) {
            char link[4300];
            snprintf(link, sizeof link, "%s/%s", s->out, r->dir);
            struct stat st;
            if (lstat(link, &st) == 0 && S_ISLNK(st.st_mode)) remove(link);
            if (lstat(link, &st) != 0 && symlink(s->runs[best_i].dir, link) == 0)
                snprintf(r->status, sizeof r->status, "done");
            else read_status(s, r);
        }
    }
}

/* The range test's pick: the loss smoothed by an exponential moving average
 * (beta 0.9, bias-corrected), cut where it diverges (4x its minimum so far);
 * the lr at its minimum / 10 — the steepest fall lies about a decade below
 * the minimum (Smith 2017; fastai's lr_find). 0 if the test has no rows. */
static float lr_from_range_test(const char *csv_path)
{
    FILE *f = fopen(csv_path, "r");
    if (!f) return 0;
    char line[256];
    double avg = 0, best = INFINITY, best_lr = 0, pw = 1;
    while (fgets(line, sizeof line, f)) {
        int step;
        double loss, lr;
        if (sscanf(line, "%d,%lf,%lf", &step, &loss, &lr) != 3 || !isfinite(loss)) continue;
        avg = 0.9 * avg + 0.1 * loss;
        pw *= 0.9;
        double smooth = avg / (1 - pw);
        if (isfinite(best) && smooth > 4 * best) break;
        if (smooth < best) { best = smooth; best_lr = lr; }
    }
    fclose(f);
    return (float)(best_lr / 10);
}

static void choose_lr_auto(sweep *s, int lrfind)
{
    sweep_run *t = &s->runs[lrfind];
    char path[4300];
    snprintf(path, sizeof path, "%s/%s/loss.csv", s->out, t->dir);
    float lr = strcmp(t->status, "done") ? 0 : lr_from_range_test(path);
    if (lr > 0 && lr < t->lr) lr = t->lr;   /* not below the tested range */
    for (int i = 0; i < s->n_runs; i++) {
        sweep_run *r = &s->runs[i];
        if (r->group != t->group || r->grid) continue;
        r->lr = lr;   /* 0 (the test failed): the method's default */
        r->info.lr = lr > 0 ? lr : r->info.lr;
    }
    fprintf(stderr, "sweep: %s: lr %g from the range test\n", t->dir, (double)lr);
}

/* A sweep directory is resumed only with the options its finished runs were
 * trained with (else they would be mixed into one table). */
static int check_same_sweep(const sweep *s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/sweep.json", s->out);
    json_t *j = peftc_json_load_file(path, 0, NULL);
    if (!j) return 0;   /* a new sweep */
    struct { const char *key, *now; } strs[] = {{"model", s->model}, {"train", s->train}, {"eval", s->eval ? s->eval : ""}};
    struct { const char *key, *opt; int now; } ints[] = {{"steps", "--steps", s->steps}, {"batch", "--batch", s->batch},
                                                         {"max_len", "--max-len", s->max_len}};
    int rc = 0;
    for (size_t i = 0; i < sizeof strs / sizeof *strs && !rc; i++) {
        const char *was = json_string_value(json_object_get(j, strs[i].key));
        if (!was) was = "";
        if (strcmp(was, strs[i].now))
            rc = cli_errorf(2, "%s: this sweep was run with --%s '%s', not '%s' (use another --out)", path, strs[i].key, was, strs[i].now);
    }
    for (size_t i = 0; i < sizeof ints / sizeof *ints && !rc; i++) {
        json_int_t was = json_integer_value(json_object_get(j, ints[i].key));
        if (was != ints[i].now)
            rc = cli_errorf(2, "%s: this sweep was run with %s %lld, not %d (use another --out)", path, ints[i].opt, (long long)was, ints[i].now);
    }
    json_decref(j);
    return rc;
}

/* A kept run must be the run the plan describes: its run.json's lr and spec
 * (absent in run.json files of older sweeps: not checked) equal the plan's.
 * Runs whose lr a grid or range test chooses are checked by their name (the
 * grid runs carry the lr in it) and their spec. */
static int check_kept_run(const sweep *s, const sweep_run *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/run.json", s->out, r->dir);
    json_t *j = peftc_json_load_file(path, 0, NULL);
    if (!j) return 0;
    json_t *lr = json_object_get(j, "lr");
    const char *spec = json_string_value(json_object_get(j, "spec"));
    int rc = 0;
    if (json_is_number(lr) && r->lr > 0 && fabs(json_number_value(lr) - r->lr) > 1e-6 * r->lr)
        rc = cli_errorf(2, "%s: this run was trained with lr %g, the sweep now gives it %g (remove the run's directory to retrain it, or use another --out)",
                        path, json_number_value(lr), (double)r->lr);
    else if (spec && strcmp(spec, r->info.spec))
        rc = cli_errorf(2, "%s: this run was trained as '%s', the sweep now plans '%s' (remove the run's directory to retrain it, or use another --out)",
                        path, spec, r->info.spec);
    json_decref(j);
    return rc;
}

static int execute(sweep *s)
{
    int todo = 0, done = 0, failed = 0, skipped = 0;
    double steps_left = 0;
    for (int i = 0; i < s->n_runs; i++) {
        read_status(s, &s->runs[i]);
        if (!strcmp(s->runs[i].status, "failed") && s->retry_failed) snprintf(s->runs[i].status, sizeof s->runs[i].status, "planned");
        if (strcmp(s->runs[i].status, "planned") && check_kept_run(s, &s->runs[i])) return 2;
        if (strcmp(s->runs[i].status, "planned")) skipped++;
        else { todo++; steps_left += s->steps; }
    }
    /* main runs of a grid group that are still to be chosen count as to do */
    fprintf(stderr, "sweep: %d runs, %d finished before (kept), %d to train, %d steps each\n", s->n_runs, skipped, todo, s->steps);
    if (write_manifest(s)) return 1;
    double train_s = 0, train_steps = 0;
    int run_no = 0;
    for (int i = 0; i < s->n_runs; i++) {
        sweep_run *r = &s->runs[i];
        /* the first main run of a group with a grid: choose its lr now */
        if (!r->grid && r->seed_idx == 0 && i > 0 && s->runs[i - 1].grid == 2 && s->runs[i - 1].group == r->group) {
            choose_lr_auto(s, i - 1);
            if (write_manifest(s)) return 1;
        } else if (!r->grid && r->seed_idx == 0 && i > 0 && s->runs[i - 1].grid && s->runs[i - 1].group == r->group) {
            int was_planned = !strcmp(r->status, "planned");
            choose_lr(s, r->group);
            if (was_planned && strcmp(r->status, "planned")) { steps_left -= s->steps; todo--; }
            /* kept runs of the group were checked before the choice, without
             * an lr: a grid edited since (a rate added) may now choose another */
            for (int j = i; j < s->n_runs && s->runs[j].group == r->group; j++)
                if (!s->runs[j].grid && strcmp(s->runs[j].status, "planned") && check_kept_run(s, &s->runs[j])) return 2;
            if (write_manifest(s)) return 1;
        }
        if (strcmp(r->status, "planned")) continue;
        run_no++;
        steps_left -= s->steps;
        double t0 = now_s();
        int rc = run_one(s, r, skipped + run_no, s->n_runs, steps_left, train_steps > 0 ? train_s / train_steps : 0);
        if (rc) failed++;
        else { done++; train_s += now_s() - t0; train_steps += s->steps; }
        if (write_manifest(s)) return 1;
        char el[32], eta[32];
        fmt_time(el, sizeof el, now_s() - s->t_start);
        fmt_time(eta, sizeof eta, train_steps > 0 ? steps_left * train_s / train_steps : 0);
        fprintf(stderr, "sweep: %d/%d runs finished, %d failed, elapsed %s, ETA %s\n", skipped + done + failed, s->n_runs,
                failed, el, eta);
    }
    char el[32];
    fmt_time(el, sizeof el, now_s() - s->t_start);
    fprintf(stderr, "sweep: %d trained, %d kept from before, %d failed in %s\n", done, skipped, failed, el);
    return failed ? 3 : 0;
}

/* ------------------------------------------------------------- options */

static int parse_budget(const char *t, char *label, size_t cap, double *frac)
{
    char *end;
    double v = strtod(t, &end);
    int pct = *end == '%';
    if (end == t || (*end && !(pct && !end[1])) || !(v > 0)) return -1;
    *frac = pct ? v / 100.0 : v;
    if (*frac >= 1) return -1;
    if (strlen(t) >= cap) return -1;
    snprintf(label, cap, "%s", t);
    return 0;
}

static int add_entry(sweep *s, const char *name, const char *method)
{
    if (s->n_entries >= SWEEP_MAX_ENTRIES) return cli_errorf(2, "sweep: at most %d methods", SWEEP_MAX_ENTRIES);
    if (!*name || strlen(name) >= sizeof s->entries[0].name || strpbrk(name, "/ \t"))
        return cli_errorf(2, "sweep: bad run name '%s' (1..47 characters, no '/' or spaces)", name);
    for (int i = 0; i < s->n_entries; i++)
        if (!strcmp(s->entries[i].name, name)) return cli_errorf(2, "sweep: method '%s' listed twice (give each a \"name\")", name);
    sweep_entry *e = &s->entries[s->n_entries++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->method, sizeof e->method, "%s", method);
    peftc_train_opts_default(&e->opts);
    e->opts.method = e->method;
    e->knob = preset_knob(method);
    return 0;
}

static int parse_list(const char *text, const char *opt, char items[][64], int max)
{
    int n = 0;
    char buf[4096];
    if (strlen(text) >= sizeof buf) return cli_errorf(2, "%s: list too long", opt), -1;
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n >= max) return cli_errorf(2, "%s: at most %d items", opt, max), -1;
        if (strlen(t) >= 64) return cli_errorf(2, "%s: item '%s' too long", opt, t), -1;
        snprintf(items[n++], 64, "%s", t);
    }
    if (!n) return cli_errorf(2, "%s: empty list", opt), -1;
    return n;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* The sweep file: {"model", "train", "eval", "steps", "batch", "max_len", "seeds": [..],
 * "budgets": [".."], "lr_grid", "metric", "methods": ["lora", {"name", "method", "r", ...}]}.
 * Strings are kept in the json object (alive for the whole sweep). */
static int load_sweep_file(sweep *s, const char *path, json_t **keep)
{
    json_error_t je;
    json_t *j = peftc_json_load_file(path, 0, &je);
    if (!j) return cli_errorf(2, "%s:%d: %s", path, je.line, je.text);
    *keep = j;
    if (!json_is_object(j)) return cli_errorf(2, "%s: the sweep file must be a JSON object", path);
    static const char *const known[] = {"model", "train", "eval", "steps", "batch", "max_len", "seeds", "budgets",
                                        "lr_grid", "metric", "methods", "save_every"};
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        size_t i = 0;
        while (i < sizeof known / sizeof *known && strcmp(key, known[i])) i++;
        if (i == sizeof known / sizeof *known) return cli_errorf(2, "%s: unknown key \"%s\"", path, key);
    }
    if (jstr(j, "model")) s->model = jstr(j, "model");
    if (jstr(j, "train")) s->train = jstr(j, "train");
    if (jstr(j, "eval")) s->eval = jstr(j, "eval");
    if (jstr(j, "metric")) s->metric = jstr(j, "metric");
    struct { const char *k; int *dst, lo, hi; } ints[] = {{"steps", &s->steps, 1, 1 << 30}, {"batch", &s->batch, 1, 65536},
        {"max_len", &s->max_len, 8, 1 << 20}, {"lr_grid", &s->lr_grid, 1, SWEEP_MAX_LRS}, {"save_every", &s->save_every, 1, 1 << 30}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        json_t *x = json_object_get(j, ints[i].k);
        if (!x) continue;
        if (!json_is_integer(x) || json_integer_value(x) < ints[i].lo || json_integer_value(x) > ints[i].hi)
            return cli_errorf(2, "%s: \"%s\" must be an integer in [%d, %d]", path, ints[i].k, ints[i].lo, ints[i].hi);
        *ints[i].dst = (int)json_integer_value(x);
    }
    json_t *seeds = json_object_get(j, "seeds");
    if (seeds) {
        if (!json_is_array(seeds) || !json_array_size(seeds) || json_array_size(seeds) > SWEEP_MAX_SEEDS)
            return cli_errorf(2, "%s: \"seeds\" must be a list of 1..%d integers", path, SWEEP_MAX_SEEDS);
        s->n_seeds = 0;
        size_t i;
        json_array_foreach(seeds, i, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) return cli_errorf(2, "%s: seeds[%zu] must be a non-negative integer", path, i);
            s->seeds[s->n_seeds++] = (uint64_t)json_integer_value(v);
        }
    }
    json_t *budgets = json_object_get(j, "budgets");
    if (budgets) {
        if (!json_is_array(budgets) || json_array_size(budgets) > SWEEP_MAX_BUDGETS)
            return cli_errorf(2, "%s: \"budgets\" must be a list of at most %d strings like \"0.5%%\"", path, SWEEP_MAX_BUDGETS);
        s->n_budgets = 0;
        size_t i;
        json_array_foreach(budgets, i, v) {
            if (!json_is_string(v) || parse_budget(json_string_value(v), s->budget_text[s->n_budgets], sizeof s->budget_text[0], &s->budget[s->n_budgets]))
                return cli_errorf(2, "%s: budgets[%zu] must be a fraction of the model like \"0.5%%\" (below 100%%)", path, i);
            s->n_budgets++;
        }
    }
    json_t *methods = json_object_get(j, "methods");
    if (methods) {
        if (!json_is_array(methods)) return cli_errorf(2, "%s: \"methods\" must be a list", path);
        size_t i;
        json_array_foreach(methods, i, v) {
            if (json_is_string(v)) { if (add_entry(s, json_string_value(v), json_string_value(v))) return 2; continue; }
            if (!json_is_object(v)) return cli_errorf(2, "%s: methods[%zu] must be a method name or an object", path, i);
            const char *method = jstr(v, "method"), *name = jstr(v, "name");
            if (!method) return cli_errorf(2, "%s: methods[%zu] needs \"method\"", path, i);
            if (add_entry(s, name ? name : method, method)) return 2;
            sweep_entry *e = &s->entries[s->n_entries - 1];
            peftc_train_opts *o = &e->opts;
            json_t *x;
            json_object_foreach(v, key, x) {
                if (!strcmp(key, "method") || !strcmp(key, "name")) continue;
                int isnum = json_is_number(x);
                double num = isnum ? json_number_value(x) : 0;
                if (!strcmp(key, "r") && json_is_integer(x) && num >= 1) { o->lora_r = (int)num; e->knob = KNOB_NONE; }
                else if (!strcmp(key, "prefix_len") && json_is_integer(x) && num >= 1) { o->prefix_len = (int)num; e->knob = KNOB_NONE; }
                else if (!strcmp(key, "num_virtual") && json_is_integer(x) && num >= 1) { o->num_virtual = (int)num; e->knob = KNOB_NONE; }
                else if (!strcmp(key, "alpha") && isnum && num > 0) o->lora_alpha = (float)num;
                else if (!strcmp(key, "scale") && isnum) o->scale = (float)num;
                else if (!strcmp(key, "learned_scale") && json_is_boolean(x)) o->learned_scale = json_is_true(x);
                else if (!strcmp(key, "site") && json_is_string(x)) o->site = json_string_value(x);
                else if (!strcmp(key, "target_modules") && json_is_string(x)) o->lora_targets = json_string_value(x);
                else if (!strcmp(key, "encoder") && json_is_string(x)) o->encoder = json_string_value(x);
                else if (!strcmp(key, "prefix_projection") && json_is_boolean(x)) o->prefix_projection = json_is_true(x) ? 1 : -1;
                else if (!strcmp(key, "lr") && isnum && num > 0 && num < 10) { e->lrs[0] = (float)num; e->n_lr = 1; }
                else if (!strcmp(key, "lr") && json_is_array(x) && json_array_size(x) >= 1 && json_array_size(x) <= SWEEP_MAX_LRS) {
                    size_t k;
                    json_t *y;
                    e->n_lr = 0;
                    json_array_foreach(x, k, y) {
                        if (!json_is_number(y) || !(json_number_value(y) > 0) || json_number_value(y) >= 10)
                            return cli_errorf(2, "%s: methods[%zu].lr[%zu] must be a number in (0, 10)", path, i, k);
                        e->lrs[e->n_lr++] = (float)json_number_value(y);
                    }
                } else if (!strcmp(key, "deltas") && json_is_array(x) && json_array_size(x) >= 1 && json_array_size(x) <= SWEEP_MAX_DELTAS) {
                    size_t k;
                    json_t *y;
                    json_array_foreach(x, k, y) {
                        if (!json_is_string(y) || strlen(json_string_value(y)) >= 400)
                            return cli_errorf(2, "%s: methods[%zu].deltas[%zu] must be a delta spec string (under 400 characters)", path, i, k);
                        e->delta_text[e->n_deltas++] = (char *)json_string_value(y);
                        if (strstr(json_string_value(y), "{r}")) e->knob = KNOB_DELTA_R;
                    }
                } else {
                    return cli_errorf(2, "%s: methods[%zu]: bad or unknown option \"%s\"", path, i, key);
                }
            }
        }
    }
    return 0;
}

int cmd_sweep(cli_args *a)
{
    static sweep s;   /* large (the entries' buffers): not on the stack */
    memset(&s, 0, sizeof s);
    s.steps = 100; s.batch = 32; s.max_len = 128; s.lr_grid = 1; s.metric = "accuracy";
    s.seeds[0] = 1; s.n_seeds = 1;
    int ok = 1;
    json_t *file = NULL;
    const char *path = cli_opt(a, "--sweep");
    if (path && load_sweep_file(&s, path, &file)) { json_decref(file); return 2; }
    const char *v;
    if ((v = cli_opt(a, "--model"))) s.model = v;
    if ((v = cli_opt(a, "--train"))) s.train = v;
    if ((v = cli_opt(a, "--eval"))) s.eval = v;
    if ((v = cli_opt(a, "--out"))) s.out = v;
    if ((v = cli_opt(a, "--metric"))) s.metric = v;
    s.steps = cli_opt_int(a, "--steps", s.steps, 1, 1 << 30, &ok);
    s.batch = cli_opt_int(a, "--batch", s.batch, 1, 65536, &ok);
    s.max_len = cli_opt_int(a, "--max-len", s.max_len, 8, 1 << 20, &ok);
    s.save_every = cli_opt_int(a, "--save-every", s.save_every, 1, 1 << 30, &ok);
    s.lr_grid = cli_opt_int(a, "--lr-grid", s.lr_grid, 1, SWEEP_MAX_LRS, &ok);
    if ((v = cli_opt(a, "--lr"))) {
        if (strcmp(v, "auto")) { cli_errorf(2, "sweep: --lr takes only 'auto' (per-method rates go in a --sweep file)"); ok = 0; }
        s.lr_auto = 1;
    }
    s.lr_auto_steps = cli_opt_int(a, "--lr-auto-steps", s.lr_auto_steps, 5, 1 << 20, &ok);
    s.retry_failed = cli_flag(a, "--retry-failed");
    const char *format = cli_opt(a, "--format");
    char items[SWEEP_MAX_ENTRIES][64];
    int n;
    if ((v = cli_opt(a, "--methods"))) {
        if ((n = parse_list(v, "--methods", items, SWEEP_MAX_ENTRIES)) < 0) ok = 0;
        for (int i = 0; i < n && ok; i++) if (add_entry(&s, items[i], items[i])) ok = 0;
    }
    if (ok && (v = cli_opt(a, "--budgets"))) {
        if ((n = parse_list(v, "--budgets", items, SWEEP_MAX_BUDGETS)) < 0) ok = 0;
        s.n_budgets = 0;
        for (int i = 0; i < n && ok; i++, s.n_budgets++)
            if (parse_budget(items[i], s.budget_text[i], sizeof s.budget_text[i], &s.budget[i])) {
                cli_errorf(2, "--budgets: '%s' is not a fraction of the model like 0.5%% (below 100%%)", items[i]);
                ok = 0;
            }
    }
    if (ok && (v = cli_opt(a, "--seeds"))) {
        if ((n = parse_list(v, "--seeds", items, SWEEP_MAX_SEEDS)) < 0) ok = 0;
        s.n_seeds = 0;
        for (int i = 0; i < n && ok; i++) {
            char *end;
            long long x = strtoll(items[i], &end, 10);
            if (*end || end == items[i] || x < 0) { cli_errorf(2, "--seeds: '%s' is not a non-negative integer", items[i]); ok = 0; }
            s.seeds[s.n_seeds++] = (uint64_t)x;
        }
    }
    if (!ok || cli_check_unused(a, "sweep")) { json_decref(file); return 2; }
    int rc = 2;
    if (!s.model || !*s.model || !s.train || !*s.train || !s.out || !*s.out || !s.n_entries)
        cli_errorf(2, "sweep: --model DIR, --train FILE, --out DIR and --methods LIST (or a --sweep FILE giving them) are required");
    else if (strcmp(s.metric, "accuracy") && strcmp(s.metric, "f1") && strcmp(s.metric, "mcc"))
        cli_errorf(2, "--metric must be accuracy, f1 or mcc, got '%s'", s.metric);
    else if (format && strcmp(format, "html") && strcmp(format, "md"))
        cli_errorf(2, "--format must be html or md, got '%s'", format);
    else if (s.lr_grid > 1 && !s.eval)
        cli_errorf(2, "--lr-grid picks by the eval metric: give --eval FILE");
    else if (s.lr_auto && s.lr_grid > 1)
        cli_errorf(2, "--lr auto and --lr-grid exclude each other");
    else if (s.lr_grid % 2 == 0)
        cli_errorf(2, "--lr-grid must be odd (the default lr in the middle), got %d", s.lr_grid);
    else rc = 0;
    if (rc) { json_decref(file); return rc; }
    if (!s.lr_auto_steps) s.lr_auto_steps = s.steps < 100 ? s.steps : 100;
    if (!s.save_every) s.save_every = s.steps / 4 > 0 ? s.steps / 4 : 1;   /* an interrupted run loses at most a quarter */
    s.t_start = now_s();
    /* the counts include the classifier head: its size needs the labels */
    peftc_error err = {0};
    if (peftc_data_num_labels(s.train, NULL, NULL, NULL, &s.num_labels, &err)) { json_decref(file); return cli_fail(&err); }
    if (mkdir(s.out, 0777) && errno != EEXIST) { json_decref(file); return cli_errorf(1, "%s: cannot create: %s", s.out, strerror(errno)); }
    rc = check_same_sweep(&s);
    if (rc) { json_decref(file); return rc; }
    rc = plan(&s);
    if (!rc) rc = execute(&s);
    /* a report after the runs (3: some failed), not after a refusal */
    if (rc == 0 || rc == 3) {
        int rr = sweep_report(s.out, format ? format : "html", NULL);
        if (!rr && !format) rr = sweep_report(s.out, "md", NULL);
        if (!rr) fprintf(stderr, "sweep: report in %s/report.%s\n", s.out, format ? format : "html");
        if (rr && !rc) rc = rr;
    }
    free(s.runs);
    json_decref(file);
    return rc;
}

int cmd_report(cli_args *a)
{
    const char *format = cli_opt(a, "--format"), *out = cli_opt(a, "--out");
    const char *dir = NULL;
    for (int i = 0; i < a->argc; i++)
        if (!a->used[i] && a->argv[i][0] != '-') { dir = a->argv[i]; a->used[i] = 1; break; }
    if (cli_check_unused(a, "report")) return 2;
    if (!dir || !*dir) return cli_errorf(2, "report: usage: peftc report SWEEP_DIR [--format html|md] [--out FILE]");
    if (format && strcmp(format, "html") && strcmp(format, "md")) return cli_errorf(2, "--format must be html or md, got '%s'", format);
    if (out && !*out) return cli_errorf(2, "--out: a file name is needed");
    return sweep_report(dir, format ? format : "html", out);
}
