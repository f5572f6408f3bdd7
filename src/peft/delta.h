/* delta.h: the unified view's "delta module" (He et al. 2022) made concrete.
 *
 * A site is a place in a transformer block with an input x and an output h.
 * A delta module at a site computes  u = up(f(down(src)))  with src = x
 * (parallel insertion) or src = h (sequential insertion), and composes it into
 * h: h += u (add), h += s*u (fixed or learned scale), h += g*u with
 * g = sigmoid(x w_g + b_g) per token (gate). LoRA, adapters, parallel and
 * scaled adapters are presets of this one module; the architecture calls
 * delta_forward/delta_backward at each site and knows nothing of methods. */
#ifndef PEFTC_DELTA_H
#define PEFTC_DELTA_H

#include "core/core.h"
#include "core/rng.h"
#include "train/params.h"

typedef enum site_id {
    SITE_ATTN_Q, SITE_ATTN_K, SITE_ATTN_V, SITE_ATTN_O,   /* linear layers: x = its input, h = its output */
    SITE_FFN_IN, SITE_FFN_DOWN,
    SITE_ATTN_OUT,   /* attention sub-layer: x = layer input, h = projection output (after dropout, before residual) */
    SITE_FFN_OUT,    /* FFN sub-layer: x = FFN input, h = FFN output (after dropout, before residual) */
    SITE_ATTN_HEADS, /* per-head attention outputs: x = layer input, h = heads concatenated, before the projection */
    SITE_FFN_ACT,    /* FFN inner activation: x = h = GELU output (N, d_ff); scale deltas only */
    SITE_FFN_GATE, SITE_FFN_UP,   /* gated FFNs (Llama's SwiGLU): gate_proj, up_proj (linear sites) */
    SITE_COUNT
} site_id;

const char *site_name(site_id s);
int site_parse(const char *name, site_id *out);   /* 1 if known */

typedef enum delta_act { ACT_IDENTITY, ACT_RELU, ACT_GELU, ACT_SILU, ACT_TANH } delta_act;
typedef enum delta_insert { INSERT_PARALLEL, INSERT_SEQUENTIAL } delta_insert;
typedef enum delta_compose { COMPOSE_ADD, COMPOSE_SCALE, COMPOSE_LEARNED_SCALE, COMPOSE_GATE } delta_compose;

const char *act_name(delta_act a);
int act_parse(const char *name, delta_act *out);

typedef enum delta_kind {
    DELTA_BOTTLENECK,   /* u = up(f(down(src))) composed into h */
    DELTA_SCALE,        /* (IA)^3: h <- h * l, one learned factor per channel, init 1 */
    DELTA_SVD           /* AdaLoRA: h += s * ((x A^T) * E^T) B^T, A (r,in), E (r,1), B (out,r): P Lambda Q (peft/adalora.h) */
} delta_kind;

typedef struct delta_spec {
    delta_kind kind;
    site_id site;
    delta_insert insert;
    delta_act act;
    delta_compose compose;
    float scale;        /* fixed s, or the initial learned s */
    float dropout;      /* dropout on src before down (LoRA's lora_dropout) */
    int r;
    int bias;           /* down/up have biases (adapters) or not (LoRA) */
    int init_lora;      /* down kaiming-uniform(a=sqrt 5) as LoRA's A; else N(0, 0.02^2). up is zero. */
    int lora_names;     /* parameters named lora_A.weight / lora_B.weight (PEFT) instead of down/up */
    int heads;          /* > 0: multi-head form, r per head, up block-diagonal per head (h width = heads * hd) */
} delta_spec;

/* "site=ffn.out,insert=parallel,r=64,act=relu,compose=scale:4[,bias=1][,dropout=0.1][,init=lora|bert][,heads=12]"
 * or "site=attn.k,kind=scale". Unknown keys and values are errors naming the key. */
peftc_status delta_spec_parse(const char *text, delta_spec *spec, peftc_error *err);
/* The inverse of delta_spec_parse (saved in adapter_config.json). */
void delta_spec_format(const delta_spec *spec, char *out, size_t cap);

typedef struct delta {
    delta_spec spec;
    int layer;
    int in, out;        /* widths of x and h at the site */
    /* parameter indices in the trainable block (-1 if absent) */
    int p_down, p_down_b, p_up, p_up_b, p_gate_w, p_gate_b, p_scale;
    int p_vec;          /* DELTA_SCALE: the factors (out) */
    int p_sv;           /* DELTA_SVD: the singular values E (r,1); p_down = A, p_up = B */
    /* activations for backward (capacity N rows), set by delta_acts_bind */
    float *src_copy;    /* (N,out) h before this delta, sequential only */
    /* dropout: the forward's key and rate (0: none, as at inference); the
     * dropped src and the mask are drawn again from the key in the backward
     * (dropout_backward_key), so nothing of N x width is kept for them */
    uint64_t drop_key;
    float drop_p;
    float *z, *a;       /* (N,r) before / after the nonlinearity (a == z for identity; DELTA_SVD: a = z * E) */
    float *u;           /* (N,out) the module's output before composition */
    float *gate;        /* (N) gate values */
    /* inference copies of a LoRA's factors in bf16 (delta_set_freeze_bf16):
     * A (r,in) and B transposed (r,out); NULL: the fp32 parameters are used */
    uint16_t *a16, *bt16;
} delta;

typedef struct delta_set {
    delta *d;
    int n, cap;
    int n_layers;
    /* first-of-site lists: idx[layer*SITE_COUNT + site] -> indices into d */
    int *site_first, *site_count;
    int *order;          /* d indices grouped by (layer, site) */
    float *act_block;    /* activations of all deltas */
    float *scratch;      /* backward scratch shared by all deltas */
    size_t scratch_floats;
    size_t maxw, maxr;   /* widest x/h and largest rank: scratch strides */
    int N;               /* row capacity of the buffers */
    /* non-NULL: this set stands for several adapters combined (peft/compose.h);
     * delta_count/delta_forward dispatch to it, and it holds no deltas itself.
     * Compositions are for inference: delta_backward does nothing on one. */
    struct compose_ctx *comp;
    /* non-NULL: AdapterFusion over frozen adapters (peft/fusion.h) stands
     * for this set; count/forward/backward dispatch to it, with the
     * fusion's parameters in the pb the family passes */
    struct fusion_module *fuse;
    /* AdapterDrop: the deltas of layers below this act in neither forward
     * nor backward (delta_count says 0 there, so the family skips them) */
    int skip_below;
    uint16_t *bf16_block;   /* the storage of every delta's a16/bt16 */
} delta_set;

/* Adds a delta at (layer, site) with the given widths; declares its params in pb
 * under names "<prefix>.<param>" (PEFT-style names are produced when saving). */
peftc_status delta_add(delta_set *ds, param_block *pb, int layer, int in, int out,
                       const delta_spec *spec, const char *prefix, peftc_error *err);
/* Finalises the site index after all delta_add calls. */
peftc_status delta_index(delta_set *ds, int n_layers, peftc_error *err);
/* Allocates activation and scratch buffers for N = B*T rows. */
peftc_status delta_acts_alloc(delta_set *ds, int N, peftc_error *err);
/* The same; one_layer: the deltas of all layers share one layer's buffers
 * (the k-th delta of each layer the same region), for a model that runs a
 * layer's forward again right before its backward (gradient checkpointing). */
peftc_status delta_acts_alloc_ex(delta_set *ds, int N, int one_layer, peftc_error *err);
/* For inference only: every LoRA-form delta (low-rank, no biases) gets bf16
 * copies of its factors, which delta_forward then uses for one or two rows
 * (decoding) when not training. Halves the bytes a token reads from the
 * factors; the copies are not updated if pb's values change afterwards. */
peftc_status delta_set_freeze_bf16(delta_set *ds, const param_block *pb, peftc_error *err);
/* 1 if every delta at (layer, site) is a bf16-frozen LoRA and N <= 2 rows at
 * inference: then delta_forward_cols may stand for delta_forward, split by
 * output columns (inside the threads of the site's own product). */
int delta_cols_ready(const delta_set *ds, int layer, site_id site, int N);
/* columns [o_lo, o_hi) of h (N, out) += the deltas at (layer, site) of x */
void delta_forward_cols(const delta_set *ds, int layer, site_id site, const float *x, float *h, int N,
                        int o_lo, int o_hi);
/* Initialises the parameters of every delta (call after params_alloc). */
void delta_init_params(delta_set *ds, param_block *pb, peftc_rng *rng);
void delta_set_free(delta_set *ds);

/* Applies every delta at (layer, site): x (N,in), h (N,out) modified in place.
 * tok0: the first row's index in the whole batch (model_run.tok0) for dropout. */
void delta_forward(delta_set *ds, const param_block *pb, int layer, site_id site,
                   const float *x, float *h, int N, int train, peftc_rng *rng, int64_t tok0);
/* Backward through every delta at (layer, site), in reverse order.
 * dh (N,out): on entry the gradient w.r.t. the final h; on exit w.r.t. the
 * h before the deltas (sequential deltas add their path). dx (N,in) += the
 * parallel deltas' and gates' input gradients (may be NULL if not needed). */
void delta_backward(delta_set *ds, param_block *pb, int layer, site_id site,
                    const float *x, float *dh, float *dx, int N);
/* Any delta at this site? */
int delta_count(const delta_set *ds, int layer, site_id site);

#endif
