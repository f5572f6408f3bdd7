/* dp.h: the data-parallel sum of one optimizer step's gradient block
 * (internal), blocking or overlapped with the backward.
 *
 * Overlapped, the block is cut once, before training, into ranges:
 *  - buckets of whole layers: consecutive tensors that only their layer's
 *    backward writes (param_entry.layer >= 0), closed at a layer boundary
 *    once at least bucket_bytes; a bucket is final when the backward is done
 *    with its lowest layer, and the model's layer_done hook (model_run)
 *    starts it there with the transport's non-blocking sum, while the layers
 *    below run (and drives the sums in flight at every later layer);
 *  - the rest (embeddings, heads, prompts, prefixes, shared tensors, the
 *    padding between, the loss in the tail): started after the backward.
 * Every rank starts the same ranges in the same order (buckets from the top
 * layer down, then the rest by offset): a rank whose last micro-batch runs no
 * backward (an empty shard, a non-finite loss) starts its buckets after the
 * micro-batches instead. Each element is summed once over the same ranks
 * whichever range holds it, so the result is the blocking sum's to the bit. */
#ifndef PEFTC_DP_H
#define PEFTC_DP_H

#include "peftc.h"
#include "train/params.h"

typedef struct dp_range {
    size_t lo, n;     /* floats of pb->g */
    int layer;        /* a bucket: starts when this layer's backward is done; -1: after the backward */
    int handle;       /* the transport's (peftc_comm.iallreduce_init) */
} dp_range;

typedef struct dp_sync {
    const peftc_comm *c;
    param_block *pb;
    int overlap;       /* 0: one blocking all-reduce of the whole block */
    dp_range *r;       /* in the order they are started */
    int n, n_bucket;   /* all ranges; the layer buckets among them (r[0..n_bucket)) */
    int next;          /* the next range to start in this step */
    peftc_status rc;   /* the first failure inside the hook, reported by dp_sync_finish */
    peftc_error err;
    double secs;       /* time inside the transport, the run's total */
    /* what the backward started (overlapped): floats summed over the run's
     * steps, and the steps */
    double early_floats;
    long steps;
} dp_sync;

/* overlap: ask for the overlapped sum (granted only with more than one rank
 * and a transport that has the non-blocking calls); bucket_bytes: the
 * smallest bucket. Allocates everything a step needs. */
peftc_status dp_sync_init(dp_sync *s, const peftc_comm *c, param_block *pb, int overlap, size_t bucket_bytes,
                          peftc_error *err);
/* Before a step's micro-batches. */
void dp_sync_begin(dp_sync *s);
/* model_run.layer_done (ctx: the dp_sync), for the step's last micro-batch's
 * backward: starts the buckets now final, drives those in flight. */
void dp_sync_layer_done(void *ctx, int layer);
/* After the micro-batches: *loss (this rank's share) rides in the block's
 * tail; starts what is left, waits for everything; *loss is then the sum. */
peftc_status dp_sync_finish(dp_sync *s, double *loss, peftc_error *err);
void dp_sync_free(dp_sync *s);
/* metrics.json's fields of data parallelism (none in one process):
 * allreduce_overlap (0/1), allreduce_ranges (the sums a step starts),
 * allreduce_buckets (those of them the backward may start) and
 * allreduce_overlapped_bytes_per_step (what the backward started, mean) */
void dp_sync_metrics(const dp_sync *s, void *json_object);

#endif
