/* dp.c: the data-parallel gradient sum of a step (dp.h). */
#include "train/dp.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A transport takes counts below 2^31: a longer range goes in pieces. */
#define DP_CHUNK (((size_t)1 << 30) - 16)

static int emit(dp_sync *s, int *cap, size_t lo, size_t n, int layer)
{
    for (size_t o = 0; o < n; o += DP_CHUNK) {
        if (s->n == *cap) {
            int c2 = *cap ? 2 * *cap : 16;
            dp_range *r = realloc(s->r, (size_t)c2 * sizeof *r);
            if (!r) return -1;
            s->r = r;
            *cap = c2;
        }
        s->r[s->n++] = (dp_range){lo + o, n - o < DP_CHUNK ? n - o : DP_CHUNK, layer, -1};
    }
    return 0;
}

/* the order buckets become final in a top-down backward: the highest lowest
 * layer first; ties (not made by the families' layouts) by offset, downwards */
static int by_ready(const void *a, const void *b)
{
    const dp_range *x = a, *y = b;
    if (x->layer != y->layer) return x->layer > y->layer ? -1 : 1;
    return x->lo > y->lo ? -1 : x->lo < y->lo;
}

static int by_offset(const void *a, const void *b)
{
    const dp_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

peftc_status dp_sync_init(dp_sync *s, const peftc_comm *c, param_block *pb, int overlap, size_t bucket_bytes,
                          peftc_error *err)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->pb = pb;
    if (!c || c->size <= 1) return PEFTC_OK;
    s->overlap = overlap && c->iallreduce_init && c->start && c->progress && c->wait && c->iallreduce_free;
    if (!s->overlap) return PEFTC_OK;
    const param_entry *e = pb->e;
    int cap = 0;
    /* buckets: runs of layer tensors, cut at a layer boundary once big enough */
    for (int i = 0; i < pb->n;) {
        if (e[i].layer < 0) { i++; continue; }
        size_t lo = e[i].offset;
        int lowest = e[i].layer, j = i;
        for (;; j++) {
            if (e[j].layer < lowest) lowest = e[j].layer;
            size_t hi = j + 1 < pb->n ? e[j + 1].offset : pb->total;   /* the padding after a tensor goes with it */
            int run_ends = j + 1 >= pb->n || e[j + 1].layer < 0;
            int layer_ends = run_ends || e[j + 1].layer != e[j].layer;
            if (run_ends || (layer_ends && (hi - lo) * sizeof(float) >= bucket_bytes)) {
                if (emit(s, &cap, lo, hi - lo, lowest)) goto nomem;
                break;
            }
        }
        i = j + 1;
    }
    s->n_bucket = s->n;
    /* the rest: what no bucket covers in [0, total], the loss's tail slot included */
    qsort(s->r, (size_t)s->n_bucket, sizeof *s->r, by_offset);
    size_t at = 0, end = pb->total + 1;
    for (int k = 0; k < s->n_bucket; k++) {
        if (s->r[k].lo > at && emit(s, &cap, at, s->r[k].lo - at, -1)) goto nomem;
        at = s->r[k].lo + s->r[k].n;
    }
    if (at < end && emit(s, &cap, at, end - at, -1)) goto nomem;
    qsort(s->r, (size_t)s->n_bucket, sizeof *s->r, by_ready);
    /* the transport's sums, made here once, in the order they start */
    for (int k = 0; k < s->n; k++) {
        peftc_status rc = c->iallreduce_init(c->ctx, pb->g + s->r[k].lo, s->r[k].n, &s->r[k].handle, err);
        if (rc) return rc;
    }
    return PEFTC_OK;
nomem:
    return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
}

void dp_sync_begin(dp_sync *s)
{
    s->next = 0;
    s->rc = PEFTC_OK;
}

static void start(dp_sync *s)
{
    const dp_range *r = &s->r[s->next++];
    if (!s->rc) s->rc = s->c->start(s->c->ctx, r->handle, &s->err);
}

void dp_sync_layer_done(void *ctx, int layer)
{
    dp_sync *s = ctx;
    if (!s->overlap || s->rc) return;
    double t0 = now_s();
    while (s->next < s->n_bucket && s->r[s->next].layer >= layer) start(s);
    /* the transport moves a sum on only inside its calls (no progress
     * thread): each layer gives those in flight a turn */
    if (!s->rc && s->next) s->rc = s->c->progress(s->c->ctx, &s->err);
    s->secs += now_s() - t0;
}

peftc_status dp_sync_finish(dp_sync *s, double *loss, peftc_error *err)
{
    const peftc_comm *c = s->c;
    if (!c || c->size <= 1) return PEFTC_OK;
    double t0 = now_s();
    param_block *pb = s->pb;
    peftc_status rc;
    if (s->overlap && s->rc) {   /* a sum failed to start inside the backward */
        if (err) *err = s->err;
        return s->rc;
    }
    pb->g[pb->total] = (float)*loss;
    if (!s->overlap) {
        rc = c->allreduce_f32(c->ctx, pb->g, pb->total + 1, err);
    } else {
        for (int k = 0; k < s->next; k++) s->early_floats += (double)s->r[k].n;
        while (s->next < s->n && !s->rc) start(s);
        rc = s->rc;
        if (rc && err) *err = s->err;
        /* started sums are completed even after a failure to start one */
        peftc_status w = c->wait(c->ctx, rc ? NULL : err);
        if (!rc) rc = w;
    }
    if (rc) return rc;
    *loss = pb->g[pb->total];
    pb->g[pb->total] = 0;
    s->secs += now_s() - t0;
    s->steps++;
    return PEFTC_OK;
}

void dp_sync_metrics(const dp_sync *s, void *json_object)
{
    json_t *j = json_object;
    if (!s->c || s->c->size <= 1) return;
    json_object_set_new(j, "allreduce_overlap", json_integer(s->overlap));
    json_object_set_new(j, "allreduce_ranges", json_integer(s->overlap ? s->n : 1));
    json_object_set_new(j, "allreduce_buckets", json_integer(s->overlap ? s->n_bucket : 0));
    json_object_set_new(j, "allreduce_overlapped_bytes_per_step",
                        json_real(s->steps ? s->early_floats * sizeof(float) / (double)s->steps : 0.0));
}

void dp_sync_free(dp_sync *s)
{
    if (s->overlap && s->c->iallreduce_free) s->c->iallreduce_free(s->c->ctx);
    free(s->r);
    memset(s, 0, sizeof *s);
}
