/* checkpoint.h: save and resume a training run's state (internal). */
#ifndef PEFTC_CHECKPOINT_H
#define PEFTC_CHECKPOINT_H

#include "core/core.h"
#include "train/params.h"

typedef struct train_state {
    int step, epoch, pos;     /* optimizer steps done; epoch; next row of the epoch order */
    uint64_t rng;
} train_state;

/* out_dir/checkpoint.safetensors: pb's values and moments, s, the run's
 * signature (what the checkpoint belongs to), the method and model names. */
peftc_status checkpoint_save(const char *out_dir, const param_block *pb, const char *method, const char *model,
                             const train_state *s, uint64_t run_sig, peftc_error *err);
/* What the resuming run can reach, to range-check the saved position. */
typedef struct ckpt_limits {
    int n_rows;        /* rows of the training data: pos <= n_rows */
    int grad_accum;    /* micro-batches per step: epoch <= step * grad_accum + 1 */
} ckpt_limits;

/* Reads resume_dir/checkpoint.safetensors into pb and s; refuses one of
 * another method or signature, a tensor of the wrong dtype or size, a field
 * out of range, or a checksum mismatch (pb and s untouched then). */
peftc_status checkpoint_load(const char *resume_dir, param_block *pb, const char *method, uint64_t run_sig,
                             const ckpt_limits *lim, train_state *s, peftc_error *err);
/* checkpoint_load on an open file (path for messages): the fuzz target's entry. */
peftc_status checkpoint_read(const peftc_safetensors *st, const char *path, param_block *pb, const char *method,
                             uint64_t run_sig, const ckpt_limits *lim, train_state *s, peftc_error *err);

#endif
