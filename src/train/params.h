/* params.h: every trainable tensor in one contiguous block; gradients and the
 * AdamW moments in blocks of the identical layout, so zero-grad, clipping,
 * the update and checkpointing are flat loops (llm.c's layout). */
#ifndef PEFTC_PARAMS_H
#define PEFTC_PARAMS_H

#include "core/core.h"

#define PARAM_NAME_MAX 160

typedef struct param_entry {
    char name[PARAM_NAME_MAX]; /* the key it is saved under */
    int ndim;
    int64_t shape[4];
    size_t offset, numel;      /* in floats, into the blocks */
    int no_decay;              /* excluded from weight decay (biases, norms, scales) */
    /* the block whose backward alone writes its gradient (a layer's deltas,
     * a base tensor of the layer), -1 if none does (heads, embeddings,
     * prompts, prefixes, shared tensors): data parallelism may start summing
     * a layer's gradients once the backward is below it (train/dp.h) */
    int layer;
} param_entry;

/* State beside the parameters that a checkpoint must carry for resume to be
 * bit-identical (AdaLoRA's importance EMAs); owned by whoever registers it. */
typedef struct param_state {
    const char *name;
    float *data;
    size_t numel;
    int match;                 /* not restored but compared on resume: the options the state belongs to */
} param_state;
#define PARAM_STATE_MAX 6
/* g holds PARAM_G_TAIL floats after the block (zero unless a trainer puts a
 * step's scalars there): data parallelism sums them with the gradient in the
 * same all-reduce. */
#define PARAM_G_TAIL 16

typedef struct param_block {
    param_entry *e;
    int n, cap;
    size_t total;              /* floats */
    float *p, *g, *m, *v;      /* values, gradients, AdamW first and second moments */
    param_state state[PARAM_STATE_MAX];
    int n_state;
} param_block;

/* Declares a tensor; returns its index. Offsets are fixed by declaration order. */
int params_add(param_block *pb, const char *name, int ndim, const int64_t *shape, int no_decay);
/* Marks the tensors declared from index first on as layer's (param_entry.layer). */
void params_set_layer(param_block *pb, int first, int layer);
/* Allocates the four blocks (zeroed) once all tensors are declared. */
peftc_status params_alloc(param_block *pb, peftc_error *err);
float *params_value(const param_block *pb, int idx);
float *params_grad(const param_block *pb, int idx);
int params_find(const param_block *pb, const char *name);
void params_free(param_block *pb);

#endif
