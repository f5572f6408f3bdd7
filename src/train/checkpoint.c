/* checkpoint.c: a training run's resumable state in one safetensors file
 * (checkpoint.safetensors in the run directory): the trainable parameters,
 * AdamW's moments, the method's own state, and the loop position as metadata.
 * Independent of the task kind: it sees only the parameter block.
 *
 * Written atomically (st_write: temp + fsync + rename + directory fsync), so
 * a kill at any moment leaves the previous checkpoint or the new one. A file
 * from elsewhere is not trusted: every tensor's dtype and size and every
 * metadata field's syntax and range are checked, then a checksum over the
 * metadata and the tensor bytes (a truncated, bit-flipped or hand-edited file
 * is refused instead of resuming from garbage). */
#include "train/checkpoint.h"
#include "io/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a 64 over 64-bit little-endian words (a byte-wise tail): the byte-wise
 * FNV's mixing at an eighth of the multiplications, which keeps checksumming a
 * full fine-tuning checkpoint (hundreds of MB) well under a second. */
static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, c + i, 8);
        h ^= w;
        h *= 1099511628211ull;
    }
    for (; i < n; i++) { h ^= c[i]; h *= 1099511628211ull; }
    return h;
}

static uint64_t meta_hash(uint64_t h, const char *key, const char *val)
{
    h = fnv64(h, key, strlen(key) + 1);
    return fnv64(h, val, strlen(val) + 1);
}

/* the fields covered by the checksum, in this order */
static const char *const sum_keys[] = {"peftc_signature", "step", "epoch", "pos", "rng", "method"};
#define N_SUM_KEYS (int)(sizeof sum_keys / sizeof *sum_keys)

peftc_status checkpoint_save(const char *out_dir, const param_block *pb, const char *method, const char *model,
                             const train_state *s, uint64_t run_sig, peftc_error *err)
{
    char path[4096], sig[32], step[32], epoch[32], pos[32], rng[32], sum[32];
    peftc_status rc = peftc_path_join(path, sizeof path, out_dir, "checkpoint.safetensors", err);
    if (rc) return rc;
    snprintf(sig, sizeof sig, "%016" PRIx64, run_sig);
    snprintf(step, sizeof step, "%d", s->step);
    snprintf(epoch, sizeof epoch, "%d", s->epoch);
    snprintf(pos, sizeof pos, "%d", s->pos);
    snprintf(rng, sizeof rng, "%" PRIu64, s->rng);
    st_write_item items[3 + PARAM_STATE_MAX] = {
        {"params", 1, {(int64_t)pb->total}, pb->p},
        {"adam_m", 1, {(int64_t)pb->total}, pb->m},
        {"adam_v", 1, {(int64_t)pb->total}, pb->v},
    };
    int n = 3;
    for (int i = 0; i < pb->n_state && i < PARAM_STATE_MAX; i++)   /* the method's own state (AdaLoRA's EMAs) */
        items[n++] = (st_write_item){pb->state[i].name, 1, {(int64_t)pb->state[i].numel}, pb->state[i].data};
    const char *vals[N_SUM_KEYS] = {sig, step, epoch, pos, rng, method};
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < N_SUM_KEYS; i++) h = meta_hash(h, sum_keys[i], vals[i]);
    for (int i = 0; i < n; i++) {
        h = fnv64(h, items[i].name, strlen(items[i].name) + 1);
        h = fnv64(h, items[i].data, (size_t)items[i].shape[0] * sizeof(float));
    }
    snprintf(sum, sizeof sum, "%016" PRIx64, h);
    const char *meta[] = {"peftc_signature", sig, "step", step, "epoch", epoch, "pos", pos, "rng", rng,
                          "method", method, "model", model, "peftc_checksum", sum, NULL};
    return st_write_f32(path, items, n, meta, err);
}

/* A decimal integer in [lo, hi], the whole string, no sign tricks or spaces. */
static int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    if (!s || !*s || strlen(s) > 20) return 0;
    const char *p = s + (*s == '-');
    for (const char *q = p; *q; q++) if (*q < '0' || *q > '9') return 0;
    if (!*p) return 0;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || strlen(s) > 20) return 0;
    for (const char *q = s; *q; q++) if (*q < '0' || *q > '9') return 0;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return 0;
    *out = v;
    return 1;
}

static const char *dtype_of(const st_tensor *t) { return st_dtype_name(t->dtype); }

peftc_status checkpoint_load(const char *resume_dir, param_block *pb, const char *method, uint64_t run_sig,
                             const ckpt_limits *lim, train_state *s, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, resume_dir, "checkpoint.safetensors", err);
    if (rc) return rc;
    if (!peftc_file_exists(path)) return peftc_fail(err, PEFTC_ERR_IO, "%s: no checkpoint to resume from (train with --save-every N)", path);
    peftc_safetensors *st;
    if ((rc = peftc_safetensors_open(path, &st, err))) return rc;
    rc = checkpoint_read(st, path, pb, method, run_sig, lim, s, err);
    peftc_safetensors_free(st);
    return rc;
}

peftc_status checkpoint_read(const peftc_safetensors *st, const char *path, param_block *pb, const char *method,
                             uint64_t run_sig, const ckpt_limits *lim, train_state *s, peftc_error *err)
{
    char sig[32];
    snprintf(sig, sizeof sig, "%016" PRIx64, run_sig);
    const char *vals[N_SUM_KEYS];
    for (int i = 0; i < N_SUM_KEYS; i++)
        if (!(vals[i] = st_metadata(st, sum_keys[i])))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a peftc checkpoint (no metadata field %s)", path, sum_keys[i]);
    const char *sum = st_metadata(st, "peftc_checksum");
    if (!sum) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no peftc_checksum (written by an older peftc, or edited); start the run again", path);
    const char *meth = vals[5];
    if (strcmp(meth, method))
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint of method '%.64s', but --method is '%s'", path, meth, method);
    if (strcmp(vals[0], sig))
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint from another model, method options, batch size or seed", path);
    /* every tensor: present, F32, exactly the parameter block's size (the
     * reader has checked that its bytes lie inside the file) */
    const char *names[3] = {"params", "adam_m", "adam_v"};
    float *dst[3] = {pb->p, pb->m, pb->v};
    const st_tensor *tt[3 + PARAM_STATE_MAX];
    for (int i = 0; i < 3; i++) {
        const st_tensor *x = st_find(st, names[i]);
        if (!x) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a peftc checkpoint (no tensor %s)", path, names[i]);
        if (x->dtype != ST_F32 || x->nbytes != pb->total * sizeof(float) || (size_t)x->numel != pb->total)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: tensor %s is %s with %" PRId64 " values (%zu bytes); this run needs F32 with %zu "
                              "(a checkpoint of another model or method options)", path, names[i], dtype_of(x), x->numel, x->nbytes, pb->total);
        tt[i] = x;
    }
    int n_state = pb->n_state < PARAM_STATE_MAX ? pb->n_state : PARAM_STATE_MAX;
    for (int i = 0; i < n_state; i++) {
        const st_tensor *x = st_find(st, pb->state[i].name);
        if (!x || x->dtype != ST_F32 || (size_t)x->numel != pb->state[i].numel || x->nbytes != pb->state[i].numel * sizeof(float))
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint lacks %s as F32 with %zu values (saved by another version or method options)",
                              path, pb->state[i].name, pb->state[i].numel);
        tt[3 + i] = x;
    }
    /* the loop position: each field in the range a run can reach */
    long long step, epoch, pos;
    uint64_t rng;
    int ga = lim && lim->grad_accum > 0 ? lim->grad_accum : 1;
    long long max_pos = lim && lim->n_rows > 0 ? lim->n_rows : INT_MAX;
    if (!parse_int(vals[1], 0, INT_MAX / 2, &step))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: step '%.32s' is not an integer in [0, %d]", path, vals[1], INT_MAX / 2);
    /* an epoch ends at most once per micro-batch */
    long long max_epoch = step * ga + 1 < INT_MAX ? step * ga + 1 : INT_MAX;
    if (!parse_int(vals[2], 0, max_epoch, &epoch))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: epoch '%.32s' is not an integer in [0, %lld] (step %lld)", path, vals[2], max_epoch, step);
    if (!parse_int(vals[3], 0, max_pos, &pos))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: pos '%.32s' is not an integer in [0, %lld] (the training rows)", path, vals[3], max_pos);
    if (!parse_u64(vals[4], &rng))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: rng '%.32s' is not an unsigned 64-bit integer", path, vals[4]);
    if (step > 0 && pos == 0 && epoch == 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: step %lld at epoch 0, row 0: inconsistent position", path, step);
    /* the checksum last: it covers what was checked above and every tensor byte */
    uint64_t h = 1469598103934665603ull, want;
    for (int i = 0; i < N_SUM_KEYS; i++) h = meta_hash(h, sum_keys[i], vals[i]);
    for (int i = 0; i < 3 + n_state; i++) {
        h = fnv64(h, tt[i]->name, strlen(tt[i]->name) + 1);
        h = fnv64(h, tt[i]->data, tt[i]->nbytes);
    }
    char *end;
    errno = 0;
    want = strtoull(sum, &end, 16);
    if (strlen(sum) != 16 || errno || *end || want != h)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: checksum mismatch (the file is corrupt or was edited); resume from another checkpoint or start again", path);
    for (int i = 0; i < n_state; i++)
        if (pb->state[i].match && memcmp(tt[3 + i]->data, pb->state[i].data, pb->state[i].numel * sizeof(float)))
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint of other %s (resume with the options it was started with)",
                              path, pb->state[i].name);
    for (int i = 0; i < n_state; i++)
        if (!pb->state[i].match) memcpy(pb->state[i].data, tt[3 + i]->data, pb->state[i].numel * sizeof(float));
    for (int i = 0; i < 3; i++) memcpy(dst[i], tt[i]->data, pb->total * sizeof(float));
    s->step = (int)step;
    s->epoch = (int)epoch;
    s->pos = (int)pos;
    s->rng = rng;
    return PEFTC_OK;
}
