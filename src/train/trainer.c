/* trainer.c: the training loop — batches, AdamW with warm-up and decay,
 * gradient accumulation and clipping, evaluation, atomic checkpoints and
 * bit-exact resume. Nothing is allocated inside a step. */
#include "train/eval.h"
#include "train/conll.h"
#include "train/checkpoint.h"
#include "train/lm_data.h"
#include "train/task_lm.h"
#include "train/team.h"
#include "train/dp.h"
#include "tokenizer/bpe.h"
#include "io/gguf.h"
#include "kernels/kernels.h"
#include "io/safetensors.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

void peftc_train_opts_default(peftc_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->method = "lora";
    o->lora_targets = NULL;
    o->epochs = 1;
    o->batch = 32;
    o->grad_accum = 1;
    o->max_len = 128;
    o->lr = 0;              /* 0: the method's default */
    o->weight_decay = 0.01f;
    o->warmup_ratio = 0.06f;
    o->schedule = "linear";
    o->clip = 1.0f;
    o->adam_beta1 = 0.9f;
    o->adam_beta2 = 0.999f;
    o->adam_eps = 1e-8f;
    o->seed = 42;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* HF transformers' schedules (the scheduler steps after the optimizer, so
 * the update of step s uses lambda(s), s counted from 0). */
static float lr_at(const peftc_train_opts *o, float lr, int step, int total, int warmup)
{
    if (o->lr_end > lr) /* range test: lr * (lr_end / lr)^(step / (total - 1)) */
        return (float)(lr * pow((double)o->lr_end / lr, total > 1 ? (double)step / (total - 1) : 0.0));
    if (step < warmup) return lr * (float)step / (float)(warmup > 1 ? warmup : 1);
    if (!strcmp(o->schedule, "constant")) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup > 1 ? total - warmup : 1);
    if (progress > 1) progress = 1;
    if (!strcmp(o->schedule, "cosine")) return (float)(lr * 0.5 * (1.0 + cos(M_PI * progress)));
    return (float)(lr * (1.0 - progress));
}

/* The order of training rows in one epoch: a permutation drawn from a
 * generator seeded by (seed, epoch) alone, so resuming needs only (epoch, pos).
 * With bucketing, rows are sorted by length inside windows of 50 batches and
 * the batches of a window are shuffled again. */
/* n: the rows to order (an embedding set's pairs: its anchors' rows) */
static void epoch_order(int *order, const dataset *d, int n, uint64_t seed, int epoch, int bucket, int B)
{
    peftc_rng r;
    peftc_rng_seed(&r, seed * 1000003ull + (uint64_t)epoch + 1);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)peftc_rng_below(&r, (uint64_t)i + 1);
        int t = order[i]; order[i] = order[j]; order[j] = t;
    }
    if (!bucket) return;
    int win = 50 * B;
    for (int s = 0; s < n; s += win) {
        int m = n - s < win ? n - s : win;
        /* insertion sort by length: windows are small */
        for (int i = s + 1; i < s + m; i++) {
            int v = order[i], k = i - 1;
            while (k >= s && d->len[order[k]] > d->len[v]) { order[k + 1] = order[k]; k--; }
            order[k + 1] = v;
        }
        int nb = (m + B - 1) / B;
        for (int i = nb - 1; i > 0; i--) { /* shuffle whole batches (last may be short: keep it last) */
            int j = (int)peftc_rng_below(&r, (uint64_t)i + 1);
            if (i == nb - 1 && m % B) continue;
            if (j == nb - 1 && m % B) continue;
            for (int q = 0; q < B; q++) {
                int a = s + i * B + q, b = s + j * B + q;
                int t = order[a]; order[a] = order[b]; order[b] = t;
            }
        }
    }
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) { h ^= c[i]; h *= 1099511628211ull; }
    return h;
}

/* Identifies what a checkpoint belongs to: the parameter layout and the
 * options that change the trajectory. */
static uint64_t run_signature(const task *t, const peftc_train_opts *o)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < t->pb.n; i++) {
        h = fnv(h, t->pb.e[i].name, strlen(t->pb.e[i].name));
        h = fnv(h, t->pb.e[i].shape, sizeof t->pb.e[i].shape);
    }
    /* the base model: its shape and a sample of its frozen weights */
    const peftc_config *c = &t->m->cfg;
    int dims[] = {c->vocab_size, c->hidden_size, c->num_layers, c->num_heads, c->intermediate_size};
    h = fnv(h, dims, sizeof dims);
    size_t sample;
    const float *w = t->m->family->weights_sample(t->m, &sample);
    h = fnv(h, w, sample * sizeof(float));
    int ints[] = {o->batch, o->grad_accum, o->max_len, o->bucket};
    h = fnv(h, ints, sizeof ints);
    h = fnv(h, &o->seed, sizeof o->seed);
    return h;
}

static peftc_status write_metrics(const peftc_train_opts *o, const task *t, const peftc_eval_result *ev, int have_eval,
                                  int steps, int skipped, int epochs_done, double tok_s, double secs, double final_loss, int ranks,
                                  size_t ar_bytes, double ar_secs, const dp_sync *dps, peftc_error *err)
{
    json_t *j = json_object();
    json_object_set_new(j, "method", json_string(t->mo.name));
    json_object_set_new(j, "task", json_string(task_kind_name(t->kind)));
    if (have_eval && t->kind == TASK_TOKEN_CLS) {
        json_object_set_new(j, "eval_precision", json_real(ev->precision));
        json_object_set_new(j, "eval_recall", json_real(ev->recall));
        json_object_set_new(j, "eval_f1", json_real(ev->entity_f1));
        json_object_set_new(j, "eval_token_accuracy", json_real(ev->accuracy));
        json_object_set_new(j, "eval_loss", json_real(ev->loss));
        json_object_set_new(j, "eval_examples", json_integer(ev->n));
        json_object_set_new(j, "eval_words", json_integer(ev->n_words));
        json_object_set_new(j, "eval_words_cut", json_integer(ev->n_words_cut));
    } else if (have_eval && t->kind == TASK_MULTI_LABEL) {
        json_object_set_new(j, "eval_micro_f1", json_real(ev->f1));
        json_object_set_new(j, "eval_macro_f1", json_real(ev->macro_f1));
        json_object_set_new(j, "eval_exact_match", json_real(ev->accuracy));
        json_object_set_new(j, "eval_loss", json_real(ev->loss));
        json_object_set_new(j, "eval_examples", json_integer(ev->n));
    } else if (have_eval && t->kind == TASK_EMBEDDING) {
        /* the cosine similarity of each pair's embeddings against its score */
        json_object_set_new(j, "eval_pearson", json_real(ev->pearson));
        json_object_set_new(j, "eval_spearman", json_real(ev->spearman));
        json_object_set_new(j, "eval_pairs", json_integer(ev->n));
    } else if (have_eval && t->kind == TASK_REGRESSION) {
        json_object_set_new(j, "eval_pearson", json_real(ev->pearson));
        json_object_set_new(j, "eval_spearman", json_real(ev->spearman));
        json_object_set_new(j, "eval_mse", json_real(ev->loss));
        json_object_set_new(j, "eval_loss", json_real(ev->loss));
        json_object_set_new(j, "eval_examples", json_integer(ev->n));
    } else if (have_eval) {
        json_object_set_new(j, "eval_accuracy", json_real(ev->accuracy));
        json_object_set_new(j, "eval_loss", json_real(ev->loss));
        if (ev->binary) {
            json_object_set_new(j, "eval_f1", json_real(ev->f1));
            json_object_set_new(j, "eval_mcc", json_real(ev->mcc));
        }
        json_object_set_new(j, "eval_examples", json_integer(ev->n));
    }
    int64_t trainable = task_trainable_count(t), total = peftc_model_param_count(t->m);
    json_object_set_new(j, "trainable_params", json_integer(trainable));
    json_object_set_new(j, "total_params", json_integer(total));
    json_object_set_new(j, "trainable_percent", json_real(100.0 * trainable / (double)total));
    json_object_set_new(j, "train_tokens_per_s", json_real(tok_s));
    json_object_set_new(j, "train_seconds", json_real(secs));
    json_object_set_new(j, "train_steps", json_integer(steps));
    json_object_set_new(j, "skipped_steps", json_integer(skipped));
    json_object_set_new(j, "epochs", json_integer(epochs_done));
    json_object_set_new(j, "final_train_loss", json_real(final_loss));
    json_object_set_new(j, "ranks", json_integer(ranks));
    json_object_set_new(j, "allreduce_bytes_per_step", json_integer((json_int_t)ar_bytes));
    json_object_set_new(j, "allreduce_seconds", json_real(ar_secs));
    dp_sync_metrics(dps, j);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    json_object_set_new(j, "peak_rss_mb", json_real(ru.ru_maxrss / 1024.0));
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, o->out_dir, "metrics.json", err);
    if (!rc) rc = peftc_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

void peftc_method_list(char *out, size_t cap) { method_list(out, cap); }

static void emit(peftc_progress_fn fn, void *user, peftc_progress *p)
{
    if (fn) fn(p, user);
}

/* ------------------------------------------------------ data parallelism */

static int dp_size(const peftc_comm *c) { return c && c->size > 1 ? c->size : 1; }
static int dp_rank(const peftc_comm *c) { return c && c->size > 1 ? c->rank : 0; }
/* rank 0 alone writes files */
static int dp_writer(const peftc_comm *c) { return dp_rank(c) == 0; }

/* This rank's rows [*r0, *r1) of a micro-batch of n rows: contiguous,
 * balanced, in rank order (so the ranks' shards tile the batch). */
static void dp_shard(const peftc_comm *c, int n, int *r0, int *r1)
{
    int size = dp_size(c), rank = dp_rank(c);
    *r0 = (int)((int64_t)n * rank / size);
    *r1 = (int)((int64_t)n * (rank + 1) / size);
}

/* The step's gradient sum (train/dp.h): the whole block, the step's loss
 * (this rank's share) in the tail. Every shard's gradient is already
 * weighted as in the whole batch, so the sum is the global batch's gradient;
 * every rank then takes the same optimizer step. Overlapped with the
 * backward when asked (dp_overlap 1) or by default across machines (see
 * dp_default_overlap); buckets of dp_bucket_mb MB, 1 MB by default.
 *
 * On one machine the sums go through shared memory, copied and added by the
 * same cores that run the backward (Open MPI has no progress thread: a sum
 * moves on inside the MPI calls between layers), so there is nothing to hide
 * them behind: overlapped, a step of full fine-tuning of MiniLM measured
 * no faster (on/off 0.90-1.64 per round, median 0.96 through shared memory,
 * 1.01 over TCP on the loopback: noise), LoRA's one bucket neither (README),
 * and the blocking sum is one call. Across machines the wire time
 * is the cost the overlap hides (the scaling model there): on, when the
 * block makes more than one bucket (a LoRA block of 0.3 MB is one, started
 * after the backward anyway). */
static int dp_default_overlap(const peftc_comm *c, const param_block *pb, size_t bucket_bytes)
{
    if (!c || c->size <= 1 || c->one_host) return 0;
    return pb->total * sizeof(float) > 2 * bucket_bytes;
}

static peftc_status dp_setup(dp_sync *s, const peftc_train_opts *o, param_block *pb, peftc_error *err)
{
    double mb = o->dp_bucket_mb > 0 ? o->dp_bucket_mb : 1.0;
    size_t bytes = (size_t)(mb * 1048576.0);
    int overlap = o->dp_overlap > 0 ? 1 : o->dp_overlap < 0 ? 0 : dp_default_overlap(o->comm, pb, bytes);
    return dp_sync_init(s, o->comm, pb, overlap, bytes, err);
}

/* Arms the layer hook for a step's last micro-batch (the gradients are final
 * only in its backward), disarms it otherwise. */
#define DP_HOOK(t, dps, last) do { (t).layer_done = (last) && (dps).overlap ? dp_sync_layer_done : NULL; \
        (t).layer_done_ctx = &(dps); } while (0)

static size_t dp_bytes(const peftc_comm *c, const param_block *pb)
{
    return dp_size(c) > 1 ? (pb->total + 1) * sizeof(float) : 0;
}

/* ------------------------------------------------------ causal LM (decoders) */

/* The decoder's tokenizer: its GGUF metadata, or tokenizer.json beside an HF
 * directory's weights. */
static peftc_status lm_tokenizer(const char *path, bpe_tokenizer **tok, peftc_error *err)
{
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) {
        gguf_file *g;
        peftc_status rc = gguf_open(path, &g, err);
        if (rc) return rc;
        rc = bpe_from_gguf(g, tok, err);
        gguf_close(g);
        return rc;
    }
    char p[4096];
    peftc_status rc = peftc_path_join(p, sizeof p, path, "tokenizer.json", err);
    if (rc) return rc;
    if (!peftc_file_exists(p)) return peftc_fail(err, PEFTC_ERR_IO, "%s: no tokenizer.json (the data cannot be tokenised)", path);
    return bpe_from_tokenizer_json(p, tok, err);
}

/* Mean token loss of the causal-LM task over ev (no dropout, no
 * gradients), in batches of at most B rows through the training buffers.
 * Data parallelism: batch k runs on rank k mod size (B is the single
 * process's, whatever the rank count), each rank fills its batches' slots of
 * (loss sum, targets) and leaves the rest 0, one in-place sum gathers them
 * all exactly, and every rank adds them up in batch order: the single
 * process's sum to the bit. slots: 2 per batch. */
static peftc_status lm_eval_loss(lm_task *t, const lm_dataset *ev, int B, int32_t *ids, uint8_t *tgt, int *lens, peftc_rng *rng,
                                 const peftc_comm *comm, double *slots, double *loss, long long *n_targets, peftc_error *err)
{
    int size = dp_size(comm), rank = dp_rank(comm), nb = (ev->n + B - 1) / B;
    memset(slots, 0, (size_t)2 * nb * sizeof *slots);
    for (int s = 0, k = 0; s < ev->n; s += B, k++) {
        if (k % size != rank) continue;
        int n = ev->n - s < B ? ev->n - s : B, Tb = 1;
        for (int i = 0; i < n; i++) if (ev->len[s + i] > Tb) Tb = ev->len[s + i];
        for (int i = 0; i < n; i++) {
            int r = s + i, L = ev->len[r];
            lens[i] = L;
            memcpy(ids + (size_t)i * Tb, ev->ids + ev->off[r], (size_t)L * sizeof *ids);
            memcpy(tgt + (size_t)i * Tb, ev->target + ev->off[r], (size_t)L);
            for (int p = L; p < Tb; p++) { ids[(size_t)i * Tb + p] = 0; tgt[(size_t)i * Tb + p] = 0; }
        }
        long q = 0;
        slots[2 * k] = lm_task_step(t, ids, tgt, NULL, lens, n, Tb, 0.0f, rng, &q);
        slots[2 * k + 1] = (double)q;
    }
    if (size > 1 && nb) {
        peftc_status rc = comm->allreduce_f64(comm->ctx, slots, (size_t)2 * nb, err);
        if (rc) return rc;
    }
    double sum = 0;
    long long nt = 0;
    for (int k = 0; k < nb; k++) { sum += slots[2 * k]; nt += (long long)slots[2 * k + 1]; }
    *n_targets = nt;
    *loss = nt ? sum / (double)nt : 0;
    return PEFTC_OK;
}

static peftc_status train_causal_lm(const peftc_train_opts *o, peftc_model *m, const method_opts *mo, float lr,
                                    peftc_progress_fn progress, void *user, peftc_error *err)
{
    team_tuner tune = {0};   /* a goto out mid-step restores its thread count */
    dp_sync dps = {0};
    bpe_tokenizer *tok = NULL;
    lm_dataset tr = {0};
    lm_task t = {0};
    int32_t *ids = NULL, *seg = NULL;
    uint8_t *tgt = NULL;
    int *lens = NULL, *order = NULL;
    peftc_status rc;
    lm_data_opts dopt = {.prompt_field = o->prompt_field, .response_field = o->response_field,
                         .prompt_template = o->prompt_template, .loss_on_all = o->loss_on_all, .pack = o->pack};
    dopt.max_len = o->max_len < m->cfg.max_position ? o->max_len : m->cfg.max_position;
    /* virtual tokens and a prefix take positions before the text */
    int extra_pos = (mo->prompt.n_virtual > 0 ? mo->prompt.n_virtual : 0) + (mo->prefix.n > 0 ? mo->prefix.n : 0);
    if (dopt.max_len > m->cfg.max_position - extra_pos) dopt.max_len = m->cfg.max_position - extra_pos;
    if (o->pack && mo->prompt.n_virtual > 0)
        return peftc_fail(err, PEFTC_ERR_INPUT, "--pack with --method %s: virtual tokens precede each example, so examples cannot share a row (drop --pack)", mo->name);
    if (o->data_format && !lm_format_parse(o->data_format, &dopt.format))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--format '%s': use text, prompt-response, alpaca, chat or template", o->data_format);
    lm_dataset ev = {0};
    double *ev_loss = NULL, *ev_slots = NULL;
    int *ev_step = NULL, n_ev = 0;
    if ((rc = lm_tokenizer(o->model_dir, &tok, err))) goto out;
    if (bpe_vocab_size(tok) > m->cfg.vocab_size) {   /* every id must index the embedding table */
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: the tokenizer has %d tokens but the model's embedding only %d rows",
                        o->model_dir, bpe_vocab_size(tok), m->cfg.vocab_size);
        goto out;
    }
    if ((rc = lm_data_load(o->train_path, tok, &dopt, &tr, err))) goto out;
    if (o->eval_path) {
        /* the held-out file is read as the training file is, one example a row */
        lm_data_opts eopt = dopt;
        eopt.pack = 0;
        if ((rc = lm_data_load(o->eval_path, tok, &eopt, &ev, err))) goto out;
    }
    int T = 1;
    for (int i = 0; i < tr.n; i++) if (tr.len[i] > T) T = tr.len[i];
    for (int i = 0; i < ev.n; i++) if (ev.len[i] > T) T = ev.len[i];
    int B = o->batch < tr.n ? o->batch : tr.n;
    const peftc_comm *comm = o->comm;
    int Bs = (B + dp_size(comm) - 1) / dp_size(comm);   /* the most rows of a micro-batch this rank runs */
    /* the buffers also hold an eval batch (at most --batch rows, the single
     * process's batches: lm_eval_loss deals them out whole to the ranks) */
    int Bev = ev.n ? (o->batch < ev.n ? o->batch : ev.n) : 0, Bcap = Bev > Bs ? Bev : Bs;
    peftc_rng rng;
    peftc_rng_seed(&rng, o->seed);
    if ((rc = lm_task_init(&t, m, mo, &rng, err))) goto out;
    t.recompute = o->gradient_checkpointing;
    if ((rc = lm_task_alloc(&t, Bcap, T, 1, err)) || (rc = dp_setup(&dps, o, &t.pb, err))) goto out;
    size_t ml = strlen(o->model_dir);
    int gguf_rows = ml > 5 && !strcmp(o->model_dir + ml - 5, ".gguf");
    if (o->init_adapter && (rc = lm_task_load_weights(&t, o->init_adapter, gguf_rows, err))) goto out;
    ids = malloc((size_t)Bcap * T * sizeof *ids);
    seg = malloc((size_t)Bcap * T * sizeof *seg);
    tgt = malloc((size_t)Bcap * T);
    lens = malloc((size_t)Bcap * sizeof *lens);
    order = malloc((size_t)tr.n * sizeof *order);
    if (!ids || !seg || !tgt || !lens || !order) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    if ((rc = peftc_mkdir_p(o->out_dir, err))) goto out;
    int micro = (tr.n + B - 1) / B, per_epoch = (micro + o->grad_accum - 1) / o->grad_accum;
    int total = o->max_steps > 0 ? o->max_steps : o->epochs * per_epoch;
    int warmup = (int)ceil(o->warmup_ratio * total);
    if (ev.n) {
        int cap = (o->eval_every > 0 ? total / o->eval_every : 0) + 3;
        ev_loss = malloc((size_t)cap * sizeof *ev_loss);
        ev_step = malloc((size_t)cap * sizeof *ev_step);
        ev_slots = malloc((size_t)2 * ((ev.n + Bev - 1) / Bev) * sizeof *ev_slots);
        if (!ev_loss || !ev_step || !ev_slots) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    }
    /* held-out loss at the current step: recorded, reported; a copy of the
     * generator keeps the training's random stream (and resumes) unchanged */
#define LM_EVAL() do { peftc_rng er_ = rng; long long nt_ = 0; double l_ = 0; \
        if ((rc = lm_eval_loss(&t, &ev, Bev, ids, tgt, lens, &er_, comm, ev_slots, &l_, &nt_, err))) goto out; \
        if (!isfinite(l_)) { rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: the held-out loss is not finite at step %d", o->eval_path, s.step); goto out; } \
        ev_loss[n_ev] = l_; ev_step[n_ev++] = s.step; \
        peftc_progress ep_ = {.kind = PEFTC_PROGRESS_EVAL, .step = s.step, .total_steps = total, .epoch = s.epoch, \
                              .eval_loss = l_, .eval_causal_lm = 1, .eval_perplexity = exp(l_)}; \
        emit(progress, user, &ep_); } while (0)
    uint64_t run_sig = 0x6c6d;   /* the layout is checked by the checkpoint's tensor sizes and method */
    for (int i = 0; i < t.pb.n; i++) run_sig = fnv(run_sig, t.pb.e[i].name, strlen(t.pb.e[i].name));
    int ints[] = {o->batch, o->grad_accum, dopt.max_len, o->pack, o->loss_on_all};
    run_sig = fnv(run_sig, ints, sizeof ints);
    run_sig = fnv(run_sig, &o->seed, sizeof o->seed);
    train_state s = {0, 0, 0, 0};
    if ((rc = adalora_begin(&t.ada, total, err))) goto out;   /* before a resume checks its options */
    if (o->resume_dir) {
        ckpt_limits lim = {tr.n, o->grad_accum};
        if ((rc = checkpoint_load(o->resume_dir, &t.pb, mo->name, run_sig, &lim, &s, err))) goto out;
        rng.state = s.rng;
    }
    /* the epoch's order: a permutation seeded by (seed, epoch) alone */
#define LM_ORDER(ep) do { peftc_rng r_; peftc_rng_seed(&r_, o->seed * 1000003u + (uint64_t)(ep)); \
        for (int i = 0; i < tr.n; i++) order[i] = i; \
        for (int i = tr.n - 1; i > 0; i--) { int j = (int)(peftc_rng_u64(&r_) % (uint64_t)(i + 1)), x = order[i]; order[i] = order[j]; order[j] = x; } } while (0)
    LM_ORDER(s.epoch);
    /* A micro-batch takes a fixed number of rng draws (one per dropout, whatever
     * its size; splitmix64 advances its state by gamma per draw): a rank whose
     * shard of a short micro-batch is empty advances by as much. Measured on
     * one row, the gradient discarded (each step starts from zero). */
    uint64_t rng_per_batch = 0;
    if (dp_size(comm) > 1 && tr.n > 0) {
        int r = order[0], L = tr.len[r];
        long nt;
        memcpy(ids, tr.ids + tr.off[r], (size_t)L * sizeof *ids);
        memcpy(tgt, tr.target + tr.off[r], (size_t)L);
        peftc_rng probe = rng;
        lm_task_step(&t, ids, tgt, NULL, &L, 1, L, 1.0f, &probe, &nt);
        rng_per_batch = probe.state - rng.state;
    }
    char msg[512];
    char dp_note[128] = "";
    if (dp_size(comm) > 1)
        snprintf(dp_note, sizeof dp_note, ", %d ranks (%zu bytes all-reduced per step)", dp_size(comm), dp_bytes(comm, &t.pb));
    char quant_note[96] = "";
    int64_t lin_bytes, lin_params;
    peftc_model_linear_bytes(m, &lin_bytes, &lin_params);
    if (m->cfg.quantize == PEFTC_QUANT_NF4 && lin_params > 0)
        snprintf(quant_note, sizeof quant_note, ", NF4 base: %.4f bytes per linear parameter",
                 (double)lin_bytes / (double)lin_params);
    snprintf(msg, sizeof msg, "%s (causal LM) on %s: %d examples (%s; %d truncated, %d dropped) in %d rows, %lld targets, %d steps, batch %d x %d, lr %g%s%s%s",
             mo->name, o->train_path, tr.n_examples, lm_format_name(tr.format), tr.n_truncated, tr.n_dropped, tr.n, tr.n_targets,
             total, B, o->grad_accum, lr, o->resume_dir ? ", resumed" : "", quant_note, dp_note);
    peftc_progress pr = {.kind = PEFTC_PROGRESS_START, .message = msg, .total_steps = total, .step = s.step,
                         .trainable_params = lm_task_trainable_count(&t), .total_params = peftc_model_param_count(m)};
    emit(progress, user, &pr);
    if (ev.n && s.step == 0) LM_EVAL();
    double t0 = now_s(), tokens = 0, last_loss = 0;
    int steps_run = 0, skipped = 0;
    /* the step's thread count, timed (train/team.h): two warm-up steps
     * untimed, probes at most 32 steps apart (a minute at most of a poor
     * setting after the machine's load changes) */
    team_tuner_init(&tune, 2, 32);
    while (s.step < total) {
        if (o->stop && *o->stop) {   /* a signal: keep what was done, resumable */
            s.rng = rng.state;
            if (dp_writer(comm) && (rc = checkpoint_save(o->out_dir, &t.pb, mo->name, o->model_dir, &s, run_sig, err))) goto out;
            pr.kind = PEFTC_PROGRESS_CHECKPOINT;
            pr.step = s.step;
            emit(progress, user, &pr);
            break;
        }
        team_tuner_begin(&tune);
        double step_units = 0;
        memset(t.pb.g, 0, t.pb.total * sizeof(float));
        dp_sync_begin(&dps);
        /* the micro-batches of one step first, to weight every target alike */
        int pos0 = s.pos, ep0 = s.epoch;
        long n_step_targets = 0;
        for (int a = 0; a < o->grad_accum; a++) {
            if (s.pos >= tr.n) { s.epoch++; s.pos = 0; LM_ORDER(s.epoch); }
            int n = tr.n - s.pos < B ? tr.n - s.pos : B;
            for (int i = 0; i < n; i++) {
                int r = order[s.pos + i];
                for (int p = 1; p < tr.len[r]; p++) n_step_targets += tr.target[tr.off[r] + (size_t)p];
            }
            s.pos += n;
        }
        s.pos = pos0;
        if (s.epoch != ep0) { s.epoch = ep0; LM_ORDER(s.epoch); }
        double loss_sum = 0;
        for (int a = 0; a < o->grad_accum; a++) {
            if (s.pos >= tr.n) { s.epoch++; s.pos = 0; LM_ORDER(s.epoch); }
            int n = tr.n - s.pos < B ? tr.n - s.pos : B, Tb = 1;
            for (int i = 0; i < n; i++) if (tr.len[order[s.pos + i]] > Tb) Tb = tr.len[order[s.pos + i]];
            for (int i = 0; i < n; i++) tokens += tr.len[order[s.pos + i]];   /* the global batch's */
            /* this rank's shard, padded to the whole micro-batch's length */
            int r0, r1;
            dp_shard(comm, n, &r0, &r1);
            for (int i = 0; i < r1 - r0; i++) {
                int r = order[s.pos + r0 + i], L = tr.len[r];
                lens[i] = L;
                memcpy(ids + (size_t)i * Tb, tr.ids + tr.off[r], (size_t)L * sizeof *ids);
                memcpy(seg + (size_t)i * Tb, tr.seg + tr.off[r], (size_t)L * sizeof *seg);
                memcpy(tgt + (size_t)i * Tb, tr.target + tr.off[r], (size_t)L);
                for (int p = L; p < Tb; p++) { ids[(size_t)i * Tb + p] = 0; seg[(size_t)i * Tb + p] = -1; tgt[(size_t)i * Tb + p] = 0; }
            }
            s.pos += n;
            long nt = 0;
            t.row0 = r0;
            step_units += (double)(r1 - r0) * Tb;
            DP_HOOK(t, dps, a == o->grad_accum - 1);
            if (r1 > r0)
                loss_sum += lm_task_step(&t, ids, tgt, o->pack ? seg : NULL, lens, r1 - r0, Tb,
                                         n_step_targets ? 1.0f / (float)n_step_targets : 0.0f, &rng, &nt);
            else if (n_step_targets)
                rng.state += rng_per_batch;   /* an empty shard: the draws its peers took, to stay in step */
            t.layer_done = NULL;
        }
        t.row0 = 0;
        if ((rc = dp_sync_finish(&dps, &loss_sum, err))) goto out;
        double loss = n_step_targets ? loss_sum / (double)n_step_targets : 0;
        /* AdaLoRA: the orthogonality term, into the loss and the summed gradients (before clipping) */
        if (isfinite(loss)) loss += adalora_regularize(&t.ada, &t.pb);
        double norm2 = 0;
        for (size_t i = 0; i < t.pb.total; i++) norm2 += (double)t.pb.g[i] * t.pb.g[i];
        float norm = (float)sqrt(norm2);
        float lr_now = lr_at(o, lr, s.step, total, warmup);
        int bad = !isfinite(loss) ? 1 : !isfinite(norm) ? 2 : 0;
        if (bad && !o->skip_nonfinite) {
            rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "non-finite %s at step %d (lower --lr, or --skip-nonfinite); the last checkpoint%s is left as it was",
                            bad == 1 ? "loss" : "gradient", s.step + 1, o->save_every > 0 ? "" : " (none: --save-every 0)");
            goto out;
        }
        if (bad) {
            skipped++;   /* the batch is consumed, the schedule goes on, nothing is updated */
        } else {
            if (o->clip > 0 && norm > o->clip)
                for (size_t i = 0; i < t.pb.total; i++) t.pb.g[i] *= o->clip / (norm + 1e-6f);
            for (int i = 0; i < t.pb.n; i++) {
                const param_entry *e = &t.pb.e[i];
                adamw_update(t.pb.p + e->offset, t.pb.g + e->offset, t.pb.m + e->offset, t.pb.v + e->offset, e->numel, lr_now,
                             o->adam_beta1, o->adam_beta2, o->adam_eps, e->no_decay ? 0.0f : o->weight_decay, s.step + 1);
            }
            adalora_update(&t.ada, &t.pb, s.step);   /* AdaLoRA: update_and_allocate(global_step), this step's gradients */
            last_loss = loss;
        }
        team_tuner_end(&tune, step_units);
        s.step++;
        steps_run++;
        double el = now_s() - t0;
        pr = (peftc_progress){.kind = PEFTC_PROGRESS_STEP, .step = s.step, .total_steps = total, .epoch = s.epoch,
                              .loss = (float)loss, .lr = lr_now, .grad_norm = norm, .tokens_per_s = tokens / el,
                              .elapsed_s = el, .eta_s = el / steps_run * (total - s.step)};
        emit(progress, user, &pr);
        int stopping = o->stop_after > 0 && s.step >= o->stop_after && s.step < total;
        if ((o->save_every > 0 && s.step % o->save_every == 0) || stopping) {
            s.rng = rng.state;
            if (dp_writer(comm) && (rc = checkpoint_save(o->out_dir, &t.pb, mo->name, o->model_dir, &s, run_sig, err))) goto out;
            pr.kind = PEFTC_PROGRESS_CHECKPOINT;
            emit(progress, user, &pr);
        }
        if (ev.n && o->eval_every > 0 && s.step % o->eval_every == 0) LM_EVAL();
        if (stopping) break;
    }
    if (ev.n && (n_ev == 0 || ev_step[n_ev - 1] != s.step)) LM_EVAL();
#undef LM_EVAL
#undef LM_ORDER
    double secs = now_s() - t0;
    if (dp_writer(comm) && (rc = lm_task_save_adapter(&t, o->out_dir, o->model_dir, gguf_rows, err)))
        goto out;
    if (dp_writer(comm)) {
        json_t *j = json_object();
        json_object_set_new(j, "method", json_string(mo->name));
        json_object_set_new(j, "task", json_string("causal-lm"));
        int64_t trainable = lm_task_trainable_count(&t), tot = peftc_model_param_count(m);
        json_object_set_new(j, "trainable_params", json_integer(trainable));
        json_object_set_new(j, "total_params", json_integer(tot));
        json_object_set_new(j, "trainable_percent", json_real(100.0 * trainable / (double)tot));
        json_object_set_new(j, "train_tokens_per_s", json_real(secs > 0 ? tokens / secs : 0));
        json_object_set_new(j, "train_seconds", json_real(secs));
        json_object_set_new(j, "train_steps", json_integer(s.step));
        json_object_set_new(j, "skipped_steps", json_integer(skipped));
        json_object_set_new(j, "final_train_loss", json_real(last_loss));
        json_object_set_new(j, "examples", json_integer(tr.n_examples));
        json_object_set_new(j, "truncated", json_integer(tr.n_truncated));
        json_object_set_new(j, "dropped", json_integer(tr.n_dropped));
        if (n_ev) {
            json_t *h = json_array();
            for (int i = 0; i < n_ev; i++) {
                json_t *e = json_object();
                json_object_set_new(e, "step", json_integer(ev_step[i]));
                json_object_set_new(e, "loss", json_real(ev_loss[i]));
                json_object_set_new(e, "perplexity", json_real(exp(ev_loss[i])));
                json_array_append_new(h, e);
            }
            json_object_set_new(j, "eval", h);
            json_object_set_new(j, "eval_loss", json_real(ev_loss[n_ev - 1]));
            json_object_set_new(j, "eval_perplexity", json_real(exp(ev_loss[n_ev - 1])));
            json_object_set_new(j, "eval_examples", json_integer(ev.n_examples));
            json_object_set_new(j, "eval_truncated", json_integer(ev.n_truncated));
            json_object_set_new(j, "eval_dropped", json_integer(ev.n_dropped));
        }
        json_object_set_new(j, "ranks", json_integer(dp_size(comm)));
        json_object_set_new(j, "allreduce_bytes_per_step", json_integer((json_int_t)dp_bytes(comm, &t.pb)));
        json_object_set_new(j, "allreduce_seconds", json_real(dps.secs));
        dp_sync_metrics(&dps, j);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        json_object_set_new(j, "peak_rss_mb", json_real(ru.ru_maxrss / 1024.0));
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        json_decref(j);
        char path[4096];
        rc = peftc_path_join(path, sizeof path, o->out_dir, "metrics.json", err);
        if (!rc) rc = peftc_write_file_atomic(path, text, strlen(text), err);
        free(text);
    }
    if (!rc) {
        pr = (peftc_progress){.kind = PEFTC_PROGRESS_DONE, .step = s.step, .total_steps = total, .epoch = s.epoch,
                              .loss = (float)last_loss, .tokens_per_s = secs > 0 ? tokens / secs : 0, .elapsed_s = secs,
                              .trainable_params = lm_task_trainable_count(&t), .total_params = peftc_model_param_count(m)};
        emit(progress, user, &pr);
    }
out:
    if (tune.cur) omp_set_num_threads(tune.team);
    free(ids); free(seg); free(tgt); free(lens); free(order);
    free(ev_loss); free(ev_step); free(ev_slots);
    lm_task_free(&t);
    dp_sync_free(&dps);
    lm_data_free(&tr);
    lm_data_free(&ev);
    bpe_free(tok);
    return rc;
}

peftc_status peftc_train(const peftc_train_opts *o, peftc_progress_fn progress, void *user, peftc_error *err)
{
    team_tuner tune = {0};   /* a goto out mid-step restores its thread count */
    dp_sync dps = {0};
    peftc_status rc;
    method_opts mo;
    if (!o->model_dir || !o->train_path || !o->out_dir)
        return peftc_fail(err, PEFTC_ERR_INPUT, "--model, --train and --out are required");
    if (o->batch < 1 || o->grad_accum < 1 || o->max_len < 4 || (o->epochs < 1 && o->max_steps < 1))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--batch, --grad-accum must be >= 1, --max-len >= 4, and --epochs or --max-steps >= 1");
    if (strcmp(o->schedule, "linear") && strcmp(o->schedule, "cosine") && strcmp(o->schedule, "constant"))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--schedule must be linear, cosine or constant, got '%s'", o->schedule);
    if (o->comm && o->comm->size > 1 &&
        (!o->comm->allreduce_f32 || !o->comm->allreduce_f64 || o->comm->rank < 0 || o->comm->rank >= o->comm->size))
        return peftc_fail(err, PEFTC_ERR_INPUT, "data parallelism: rank %d of %d, or a missing all-reduce, in the communicator",
                          o->comm->rank, o->comm->size);
    peftc_model *m = NULL;
    peftc_tokenizer *tok = NULL;
    dataset tr = {0}, ev = {0};
    label_set labels = {0};
    task t = {0};
    batch_buf bb = {0};
    encoder_ctx enc = {0};
    int *order = NULL, *pair_rows = NULL, have_eval = o->eval_path != NULL;
    data_cols cols = {o->text_col, o->pair_col, o->label_col};
    method_args ma;
    method_args_from_opts(o, &ma);
    task_kind kind = TASK_SEQ_CLS;
    if (o->task && strcmp(o->task, "causal-lm") && !task_kind_parse(o->task, &kind))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--task '%s': use causal-lm, seq-cls, token-cls, regression, multi-label or embedding", o->task);
    if (o->has_min_score && kind != TASK_EMBEDDING)
        return peftc_fail(err, PEFTC_ERR_INPUT, "--min-score selects embedding pairs: it needs --task embedding");
    if (kind == TASK_EMBEDDING && o->comm && o->comm->size > 1)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--task embedding: the in-batch negatives are the whole batch's, which data parallelism would split (run one process)");
    /* the base's storage: --quantize, else the method's (qlora: NF4) */
    peftc_base_quant bq = method_base_quant(o->method);
    if (o->quantize && (rc = peftc_base_quant_parse(o->quantize, &bq, err))) goto out;
    if ((rc = peftc_model_load_quantized(o->model_dir, bq, &m, err)) || (rc = method_build(o->method, &ma, &m->cfg, &mo, err)))
        goto out;
    if (m->cfg.quantize != PEFTC_QUANT_NONE && mo.base == BASE_ALL) {
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "--quantize nf4: method %s trains the base's weights, which stay NF4 (frozen)",
                        mo.name);
        goto out;
    }
    if (o->gradient_checkpointing && !m->family->can_recompute) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "--gradient-checkpointing: %s models do not recompute their layers yet (decoders do)", m->family->name);
        goto out;
    }
    /* the task: causal LM for decoders (the default there), sequence classification for encoders */
    if (m->family->lm_head ? !(o->task && strcmp(o->task, "causal-lm")) : (o->task && !strcmp(o->task, "causal-lm"))) {
        if (!m->family->lm_head)
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: --task causal-lm needs a decoder; a %s model is an encoder", o->model_dir, m->family->name);
        else
            rc = train_causal_lm(o, m, &mo, o->lr > 0 ? o->lr : method_default_lr(&mo), progress, user, err);
        goto out;
    }
    if (kind == TASK_EMBEDDING && m->family->lm_head) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: --task embedding trains an encoder's sentence embeddings; a %s model is a decoder", o->model_dir, m->family->name);
        goto out;
    }
    if (o->init_adapter) {   /* its head (or none) must be this task's */
        task_kind ik;
        if ((rc = adapter_read_task(o->init_adapter, &ik, err))) goto out;
        if (ik != kind) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: the adapter was trained for --task %s, not %s", o->init_adapter, task_kind_name(ik), task_kind_name(kind));
            goto out;
        }
    }
    if ((rc = peftc_tokenizer_load(o->model_dir, &tok, err))) goto out;
    float lr = o->lr > 0 ? o->lr : method_default_lr(&mo);
    int max_len = o->max_len < m->cfg.max_position ? o->max_len : m->cfg.max_position;
    long converted = 0;
    if ((rc = encoder_init(&enc, tok, &mo.prompt, max_len, err)) || (rc = encoder_bind_model(&enc, m, o->model_dir, err))) goto out;
    if (kind == TASK_TOKEN_CLS) {
        /* CoNLL files: tags per word, IOB1 converted to IOB2 */
        if ((rc = conll_load(o->train_path, 1, &tr, &converted, err)) || (rc = conll_labels(&tr, &labels, err)) ||
            (rc = conll_map_labels(&tr, &labels, err)) || (rc = conll_tokenize(&tr, tok, &mo.prompt, max_len, err)))
            goto out;
        if (have_eval && ((rc = conll_load(o->eval_path, 1, &ev, NULL, err)) || (rc = conll_map_labels(&ev, &labels, err)) ||
                          (rc = conll_tokenize(&ev, tok, &mo.prompt, max_len, err))))
            goto out;
    } else if (kind == TASK_REGRESSION) {
        /* one output: the label column's numbers */
        if ((rc = data_load(o->train_path, &cols, 1, &tr, err)) || (rc = data_map_targets(&tr, err)) ||
            (rc = data_tokenize(&tr, encoder_encode, &enc, max_len, err)))
            goto out;
        labels.n = 1;
        if (!(labels.names = calloc(1, sizeof *labels.names)) || !(labels.names[0] = strdup(tr.label_col[0] ? tr.label_col : "score"))) {
            rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (have_eval && ((rc = data_load(o->eval_path, &cols, 1, &ev, err)) || (rc = data_map_targets(&ev, err)) ||
                          (rc = data_tokenize(&ev, encoder_encode, &enc, max_len, err))))
            goto out;
    } else if (kind == TASK_EMBEDDING) {
        /* (anchor, positive) pairs, each text encoded alone; with --min-score
         * the label column (a score) selects them. The eval file's pairs are
         * scored: the cosine of their embeddings against it. */
        if ((rc = data_load(o->train_path, &cols, o->has_min_score, &tr, err)) ||
            (o->has_min_score && (rc = data_keep_min_score(&tr, o->min_score, err))) || (rc = data_pairs_apart(&tr, err)) ||
            (rc = data_tokenize(&tr, encoder_encode, &enc, max_len, err)))
            goto out;
        if (have_eval && ((rc = data_load(o->eval_path, &cols, 1, &ev, err)) || (rc = data_map_targets(&ev, err)) ||
                          (rc = data_pairs_apart(&ev, err)) || (rc = data_tokenize(&ev, encoder_encode, &enc, max_len, err))))
            goto out;
        if (tr.n_pairs < 2 || o->batch < 2) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: --task embedding takes its negatives from the batch: it needs --batch >= 2 and 2 pairs or more (%d pairs)",
                            o->train_path, tr.n_pairs);
            goto out;
        }
    } else if (kind == TASK_MULTI_LABEL) {
        if ((rc = data_load(o->train_path, &cols, 1, &tr, err)) || (rc = labels_from_multi(&tr, &labels, err)) ||
            (rc = data_map_multi(&tr, &labels, err)) || (rc = data_tokenize(&tr, encoder_encode, &enc, max_len, err)))
            goto out;
        if (have_eval && ((rc = data_load(o->eval_path, &cols, 1, &ev, err)) || (rc = data_map_multi(&ev, &labels, err)) ||
                          (rc = data_tokenize(&ev, encoder_encode, &enc, max_len, err))))
            goto out;
    } else if ((rc = data_load(o->train_path, &cols, 1, &tr, err)) || (rc = labels_from_data(&tr, &labels, err)) ||
               (rc = data_map_labels(&tr, &labels, err)) || (rc = data_tokenize(&tr, encoder_encode, &enc, max_len, err))) {
        goto out;
    }
    if (have_eval && kind == TASK_SEQ_CLS) {
        /* the eval file uses the training file's columns unless they were recognised */
        if ((rc = data_load(o->eval_path, &cols, 1, &ev, err)) || (rc = data_map_labels(&ev, &labels, err)) ||
            (rc = data_tokenize(&ev, encoder_encode, &enc, max_len, err)))
            goto out;
        if (!tr.pair[0] != !ev.pair[0]) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: %s sentence pairs but %s %s", o->eval_path, ev.pair[0] ? "has" : "lacks",
                            o->train_path, tr.pair[0] ? "has them" : "does not");
            goto out;
        }
    }
    /* the rows an epoch goes through: an embedding set's pairs */
    int n_rows = kind == TASK_EMBEDDING ? tr.n_pairs : tr.n;
    /* a batch larger than the data is the data: activations sized for what exists */
    int B = o->batch < n_rows ? o->batch : n_rows;
    int T = 1;
    for (int i = 0; i < tr.n; i++) if (tr.len[i] > T) T = tr.len[i];
    for (int i = 0; i < ev.n; i++) if (ev.len[i] > T) T = ev.len[i];

    const peftc_comm *comm = o->comm;
    int Bs = (B + dp_size(comm) - 1) / dp_size(comm);   /* the most rows of a micro-batch this rank runs */
    int Brows = kind == TASK_EMBEDDING ? 2 * Bs : Bs;   /* an embedding batch: the anchors, then their positives */
    /* the evaluation runs the single process's batches of B rows whatever the
     * rank count (task_evaluate deals them out whole), so that every example's
     * outputs, and the metrics, are the single process's: room for them */
    if (have_eval && Brows < B) Brows = B;
    peftc_rng rng;
    peftc_rng_seed(&rng, o->seed);
    if ((rc = task_init_kind(&t, kind, m, tok, &mo, &labels, max_len, &rng, err)) ||
        (rc = task_alloc(&t, Brows, T, 1, err)) || (rc = batch_alloc(&bb, Brows, T, err)) ||
        (kind == TASK_MULTI_LABEL && (rc = batch_alloc_multi(&bb, labels.n, err))) ||
        (rc = dp_setup(&dps, o, &t.pb, err)))
        goto out;
    /* taken before any weight moves: full fine-tuning trains the sampled ones */
    uint64_t run_sig = run_signature(&t, o);
    if (o->init_adapter && (rc = task_load_weights(&t, o->init_adapter, err))) goto out;
    if (!(order = malloc((size_t)n_rows * sizeof *order)) || !(pair_rows = malloc((size_t)Brows * sizeof *pair_rows))) {
        rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = peftc_mkdir_p(o->out_dir, err))) goto out;

    int micro_per_epoch = (n_rows + B - 1) / B;
    int steps_per_epoch = (micro_per_epoch + o->grad_accum - 1) / o->grad_accum;
    int total = o->max_steps > 0 ? o->max_steps : o->epochs * steps_per_epoch;
    int warmup = (int)ceil(o->warmup_ratio * total);
    train_state s = {0, 0, 0, 0};
    if ((rc = adalora_begin(&t.ada, total, err))) goto out;
    if (o->resume_dir) {
        ckpt_limits lim = {n_rows, o->grad_accum};
        if ((rc = checkpoint_load(o->resume_dir, &t.pb, t.mo.name, run_sig, &lim, &s, err))) goto out;
        rng.state = s.rng;
    }
    epoch_order(order, &tr, n_rows, o->seed, s.epoch, o->bucket, B);
    /* the rng draws of one micro-batch, for a rank whose shard of a short one
     * is empty (see train_causal_lm): a forward on one row, nothing kept */
    uint64_t rng_per_batch = 0;
    if (dp_size(comm) > 1 && tr.n > 0) {
        int Tb = batch_fill(&bb, &tr, order, 1);
        /* regression and multi-label losses read their targets through t.targets,
         * which the loop sets per micro-batch; unset here, it was NULL (a
         * segfault on every rank of a job) */
        t.targets = bb.targets;
        peftc_rng probe = rng;
        task_forward(&t, bb.ids, bb.tts, bb.lens, bb.labels, 1, Tb, 1, &probe);
        task_backward(&t, bb.ids, bb.tts, bb.lens, bb.labels, 1, Tb, 0.0f, &probe);
        rng_per_batch = probe.state - rng.state;
    }

    peftc_progress pr = {0};
    char msg[512];
    int64_t lin_bytes, lin_params;
    peftc_model_linear_bytes(m, &lin_bytes, &lin_params);
    char quant_note[96] = "";
    if (m->cfg.quantize == PEFTC_QUANT_NF4 && lin_params > 0)
        snprintf(quant_note, sizeof quant_note, ", NF4 base: %.4f bytes per linear parameter",
                 (double)lin_bytes / (double)lin_params);
    char dp_note[128] = "";
    if (dp_size(comm) > 1)
        snprintf(dp_note, sizeof dp_note, ", %d ranks (%zu bytes all-reduced per step)", dp_size(comm), dp_bytes(comm, &t.pb));
    char task_note[160] = "";
    if (kind == TASK_TOKEN_CLS)
        snprintf(task_note, sizeof task_note, " (token-cls: %d words, %ld tags IOB1 -> IOB2, %d words cut by --max-len)",
                 tr.n_words, converted, tr.n_words_cut);
    else if (kind == TASK_MULTI_LABEL)
        snprintf(task_note, sizeof task_note, " (multi-label: sigmoid + BCE)");
    else if (kind == TASK_REGRESSION)
        snprintf(task_note, sizeof task_note, " (regression on '%s', MSE)", labels.names[0]);
    else if (kind == TASK_EMBEDDING)
        snprintf(task_note, sizeof task_note, " (embedding: %d pairs%s, mean pooling, MultipleNegativesRankingLoss scale %g, in-batch negatives)",
                 tr.n_pairs, o->has_min_score ? " with a score >= --min-score" : "", t.ehead.scale);
    char label_note[32] = "";
    if (kind != TASK_EMBEDDING) snprintf(label_note, sizeof label_note, ", %d labels", labels.n);
    snprintf(msg, sizeof msg, "%s on %s: %d examples%s%s, %d steps (%d per epoch), batch %d x %d, lr %g%s%s%s",
             mo.name, o->train_path, n_rows, task_note, label_note, total, steps_per_epoch, B, o->grad_accum, lr,
             o->resume_dir ? ", resumed" : "", quant_note, dp_note);
    pr.kind = PEFTC_PROGRESS_START;
    pr.message = msg;
    pr.total_steps = total;
    pr.step = s.step;
    pr.trainable_params = task_trainable_count(&t);
    pr.total_params = peftc_model_param_count(m);
    emit(progress, user, &pr);

    peftc_eval_result er = {0};
    int evaluated_epoch = -1;
    double t0 = now_s(), tokens = 0, last_loss = 0;
    int steps_run = 0, skipped = 0;
    /* the step's thread count, timed (train/team.h): two warm-up steps
     * untimed, probes at most 32 steps apart (a minute at most of a poor
     * setting after the machine's load changes) */
    team_tuner_init(&tune, 2, 32);
    while (s.step < total) {
        if (o->stop && *o->stop) {   /* a signal: keep what was done, resumable */
            s.rng = rng.state;
            if (dp_writer(comm) && (rc = checkpoint_save(o->out_dir, &t.pb, t.mo.name, o->model_dir, &s, run_sig, err))) goto out;
            pr.kind = PEFTC_PROGRESS_CHECKPOINT;
            pr.step = s.step;
            emit(progress, user, &pr);
            break;
        }
        team_tuner_begin(&tune);
        double step_units = 0;
        memset(t.pb.g, 0, t.pb.total * sizeof(float));
        dp_sync_begin(&dps);
        double loss_acc = 0;
        int epoch_ended = 0, bad = 0;
        for (int a = 0; a < o->grad_accum; a++) {
            if (s.pos >= n_rows) {
                s.epoch++;
                s.pos = 0;
                epoch_order(order, &tr, n_rows, o->seed, s.epoch, o->bucket, B);
            }
            int n = n_rows - s.pos < B ? n_rows - s.pos : B;
            const int *rows = order + s.pos;
            int Tb = 1, r0, r1;
            if (kind == TASK_EMBEDDING) {   /* pair k: anchor row k, positive row n_pairs + k */
                for (int i = 0; i < n; i++) { pair_rows[i] = rows[i]; pair_rows[n + i] = rows[i] + tr.n_pairs; }
                rows = pair_rows;
            }
            int nb = kind == TASK_EMBEDDING ? 2 * n : n;   /* the micro-batch's rows */
            for (int i = 0; i < nb; i++) {
                tokens += tr.len[rows[i]];   /* the global batch's */
                if (tr.len[rows[i]] > Tb) Tb = tr.len[rows[i]];
            }
            s.pos += n;
            if (s.pos >= n_rows) epoch_ended = 1;
            /* this rank's shard, padded to the whole micro-batch's length */
            dp_shard(comm, n, &r0, &r1);
            if (r1 == r0) { rng.state += rng_per_batch; continue; }   /* the draws its peers took */
            if (kind == TASK_EMBEDDING) batch_fill_pad(&bb, &tr, rows, nb, Tb);   /* one process (refused otherwise) */
            else batch_fill_pad(&bb, &tr, rows + r0, r1 - r0, Tb);
            t.targets = bb.targets;
            t.row0 = r0;
            if (kind == TASK_TOKEN_CLS) t.thead.n_norm = batch_count_labelled(&tr, rows, n);
            if (o->adapterdrop_train) {
                /* AdapterDrop (Rücklé et al. 2021): this micro-batch drops the
                 * deltas of its lowest n layers, n from the step alone (a
                 * resumed run, and every rank, draws the same) */
                peftc_rng dr;
                peftc_rng_seed(&dr, (uint64_t)o->seed * 1000003u + (uint64_t)s.step * 131u + (uint64_t)a + 0xAD0Du);
                t.ds.skip_below = (int)peftc_rng_below(&dr, (uint64_t)m->cfg.num_layers);
            }
            task_fusion_anneal(&t, (long)s.step * o->grad_accum + a);   /* AdapterFusion's temperature, from the count */
            int rows_run = kind == TASK_EMBEDDING ? nb : r1 - r0;
            step_units += (double)rows_run * Tb;
            float loss = task_forward(&t, bb.ids, bb.tts, bb.lens, bb.labels, rows_run, Tb, 1, &rng);
            if (!isfinite(loss)) {   /* judged after the all-reduce, so that every rank stops or skips alike */
                loss_acc = NAN;
                t.ds.skip_below = 0;
                continue;
            }
            /* the mean over the accumulated micro-batches, weighting each row alike */
            float scale = (float)(r1 - r0) / (float)(B * o->grad_accum);
            double loss_w = scale;
            if (kind == TASK_TOKEN_CLS) {
                /* the loss is a mean over the micro-batch's labelled tokens, not its
                 * rows: a shard's tokens are divided by the whole micro-batch's
                 * count (n_norm) and weighted as the whole micro-batch is, which
                 * is the single process's gradient, token for token */
                scale = (float)n / (float)(B * o->grad_accum);
                loss_w = t.thead.n_norm > 0 ? (double)scale * t.thead.n_labelled / t.thead.n_norm : 0.0;
            }
            DP_HOOK(t, dps, a == o->grad_accum - 1);
            task_backward(&t, bb.ids, bb.tts, bb.lens, bb.labels, rows_run, Tb, scale, &rng);
            t.layer_done = NULL;
            t.ds.skip_below = 0;   /* evaluation and saving see every layer */
            loss_acc += (double)loss * loss_w;
        }
        t.row0 = 0;
        t.thead.n_norm = 0;
        if ((rc = dp_sync_finish(&dps, &loss_acc, err))) goto out;
        if (!isfinite(loss_acc)) {
            if (!o->skip_nonfinite) {
                rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "non-finite loss at step %d (lower --lr, or --skip-nonfinite); the last checkpoint%s is left as it was",
                                s.step + 1, o->save_every > 0 ? "" : " (none: --save-every 0)");
                goto out;
            }
            bad = 1;   /* the step's batches were consumed (and drawn from rng) alike */
        }
        if (!bad) loss_acc += adalora_regularize(&t.ada, &t.pb);
        /* AdapterFusion: 0.01 ||I - W_V||^2 per layer, once per step (AdapterHub
         * adds its gradient at the step's end, to the next step's) */
        if (!bad) loss_acc += task_fusion_regularize(&t);   /* AdaLoRA: the orthogonality term, into loss and gradients */
        double norm2 = 0;
        for (size_t i = 0; i < t.pb.total; i++) norm2 += (double)t.pb.g[i] * t.pb.g[i];
        float norm = (float)sqrt(norm2);
        if (!bad && !isfinite(norm)) {
            if (!o->skip_nonfinite) {
                rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "non-finite gradient at step %d (lower --lr, or --skip-nonfinite); the last checkpoint%s is left as it was",
                                s.step + 1, o->save_every > 0 ? "" : " (none: --save-every 0)");
                goto out;
            }
            bad = 1;
        }
        float lr_now = lr_at(o, lr, s.step, total, warmup);
        if (bad) {
            skipped++;   /* the batches are consumed, the schedule goes on, nothing is updated */
        } else {
            if (o->clip > 0 && norm > o->clip) {
                float c = o->clip / (norm + 1e-6f);
                for (size_t i = 0; i < t.pb.total; i++) t.pb.g[i] *= c;
            }
            for (int i = 0; i < t.pb.n; i++) {
                const param_entry *e = &t.pb.e[i];
                adamw_update(t.pb.p + e->offset, t.pb.g + e->offset, t.pb.m + e->offset, t.pb.v + e->offset, e->numel,
                             lr_now, o->adam_beta1, o->adam_beta2, o->adam_eps, e->no_decay ? 0.0f : o->weight_decay, s.step + 1);
            }
            adalora_update(&t.ada, &t.pb, s.step);   /* AdaLoRA: update_and_allocate(global_step), this step's gradients */
            last_loss = loss_acc;
        }
        team_tuner_end(&tune, step_units);
        s.step++;
        steps_run++;
        double el = now_s() - t0;
        pr = (peftc_progress){.kind = PEFTC_PROGRESS_STEP, .step = s.step, .total_steps = total, .epoch = s.epoch,
                              .loss = (float)loss_acc, .lr = lr_now, .grad_norm = norm, .tokens_per_s = tokens / el,
                              .elapsed_s = el, .eta_s = el / steps_run * (total - s.step)};
        emit(progress, user, &pr);
        int do_eval = have_eval && ((epoch_ended && o->eval_every == 0) || (o->eval_every > 0 && s.step % o->eval_every == 0));
        if (do_eval) {
            if ((rc = task_evaluate(&t, &ev, &bb, comm, &er, err))) goto out;
            evaluated_epoch = s.step;
            pr.kind = PEFTC_PROGRESS_EVAL;
            pr.eval_accuracy = er.accuracy; pr.eval_loss = er.loss; pr.eval_f1 = er.f1; pr.eval_mcc = er.mcc;
            pr.eval = &er;
            emit(progress, user, &pr);
        }
        int stopping = o->stop_after > 0 && s.step >= o->stop_after && s.step < total;
        if ((o->save_every > 0 && s.step % o->save_every == 0) || stopping) {
            s.rng = rng.state;
            if (dp_writer(comm) && (rc = checkpoint_save(o->out_dir, &t.pb, t.mo.name, o->model_dir, &s, run_sig, err))) goto out;
            pr.kind = PEFTC_PROGRESS_CHECKPOINT;
            emit(progress, user, &pr);
        }
        if (stopping) break;
    }
    double secs = now_s() - t0;
    if (have_eval && evaluated_epoch != s.step && s.step == total) {
        if ((rc = task_evaluate(&t, &ev, &bb, comm, &er, err))) goto out;
        evaluated_epoch = s.step;
    }
    if (dp_writer(comm) && (rc = task_save_adapter(&t, o->out_dir, o->model_dir, err))) goto out;
    if (dp_writer(comm))
        rc = write_metrics(o, &t, &er, evaluated_epoch >= 0, s.step, skipped, s.epoch + (s.pos >= n_rows), secs > 0 ? tokens / secs : 0,
                           secs, last_loss, dp_size(comm), dp_bytes(comm, &t.pb), dps.secs, &dps, err);
    if (!rc) {
        pr = (peftc_progress){.kind = PEFTC_PROGRESS_DONE, .step = s.step, .total_steps = total, .epoch = s.epoch,
                              .loss = (float)last_loss, .tokens_per_s = secs > 0 ? tokens / secs : 0, .elapsed_s = secs,
                              .eval_accuracy = er.accuracy, .eval_loss = er.loss, .eval_f1 = er.f1, .eval_mcc = er.mcc,
                              .trainable_params = task_trainable_count(&t), .total_params = peftc_model_param_count(m),
                              .message = evaluated_epoch >= 0 ? "eval" : NULL, .eval = evaluated_epoch >= 0 ? &er : NULL};
        emit(progress, user, &pr);
    }
out:
    if (tune.cur) omp_set_num_threads(tune.team);
    free(order);
    free(pair_rows);
    encoder_free(&enc);
    batch_free(&bb);
    task_free(&t);
    dp_sync_free(&dps);
    labels_free(&labels);
    data_free(&tr);
    data_free(&ev);
    peftc_tokenizer_free(tok);
    peftc_model_free(m);
    return rc;
}
