/* model.h: the model-family interface (internal).
 *
 * A model family (BERT, Llama, ...) is one const struct of function pointers
 * and names, `model_family`, defined by the family's own file in model/. Every
 * layer above (train/, peft/, cli/) reaches a model only through it: the
 * forward and backward, the activation buffers, the sites where deltas act
 * and their widths, the linear weights a merge folds deltas into, the tensors
 * full fine-tuning and BitFit train, and the names PEFT gives all of these.
 * So a method never touches a model file, and a family never touches a method
 * (it calls delta_forward/delta_backward at its sites, knowing no method).
 *
 * The indirection costs one call per forward/backward (and one per merge or
 * tensor list): the hot loops, per layer and per element, stay inside the
 * family's file.
 *
 * ---- How to add a family (e.g. "gpt2")
 *  1. io/config.c: a parser for its config.json fields, added to the table
 *     there under its model_type; a new peftc_arch value in peftc.h. (A new
 *     file format, such as GGUF, is a reader in io/ of its own, whose
 *     architecture key picks the family the same way.)
 *  2. model/gpt2.h + model/gpt2.c: the family's model struct with `peftc_model
 *     base` as its FIRST member (model_of/family casts rely on it), its
 *     activation struct (opaque above: model_acts), and
 *        const model_family model_family_gpt2 = { .name = "gpt2", ... };
 *     filling every field below: load/free from a directory or file, acts
 *     init/free/keep_for, forward/backward/hidden, site/linear/make_writable,
 *     tensors (with the gradient index order forward/backward use),
 *     word_embeddings, pooler, weights_sample, and the PEFT names
 *     (peft_prefix, layer_path, site_module, site_target).
 *  3. model/model.c: add &model_family_gpt2 to the registry array.
 *  train/, peft/ and cli/ need no change.
 */
#ifndef PEFTC_MODEL_H
#define PEFTC_MODEL_H

#include "core/core.h"
#include "core/rng.h"
#include "peft/delta.h"
#include "train/params.h"

/* Linear sites are the site ids below the first block site: [0, SITE_LINEAR_END).
 * (ffn.gate / ffn.up, when added, go at the end of that group.) */
#define SITE_LINEAR_END SITE_ATTN_OUT
/* Every linear site: those below SITE_LINEAR_END and the gated FFN's
 * gate/up projections (added after the block sites). */
static inline int site_is_linear(int s) { return s < SITE_LINEAR_END || s == SITE_FFN_GATE || s == SITE_FFN_UP; }

typedef struct model_family model_family;

/* The family-neutral part of every model: each family's struct starts with it. */
struct peftc_model {
    peftc_config cfg;
    const model_family *family;
    char *dir;                  /* the directory or file it was loaded from */
    int64_t n_params;
    /* the linear weights as loaded (cfg.quantize): bytes and parameters
     * (filled by the family's load; 0 if it does not count them) */
    int64_t linear_bytes, linear_params;
    struct model_acts *infer;   /* inference scratch of peftc_model_encode, grown on demand */
    int infer_B, infer_T;
};

/* A family's activation buffers; each family defines its own struct behind
 * this name and casts (train/ only holds the pointer). */
typedef struct model_acts model_acts;

/* A keep flag every family may honour (can_recompute): gradient
 * checkpointing. Training keeps only each block's input; the backward runs
 * each block's forward again from it (the same dropout draws: the family
 * restores the generator's state), then that block's backward. The
 * gradients are the same bits; the step does about one more forward. The
 * families' own keep flags stay below this bit. */
#define MODEL_KEEP_RECOMPUTE (1u << 30)

/* What a forward/backward needs beyond the weights. */
typedef struct model_run {
    int train;               /* dropout on */
    peftc_rng *rng;
    /* data parallelism: the index, in the whole batch, of this batch's first
     * row (0 in a single process). Dropout masks are drawn at that offset of
     * the whole batch's stream, so the ranks of a job together draw exactly
     * the masks of one process running the whole batch (padded to the same T). */
    int64_t row0;
    int64_t tok0;            /* row0 * T: the first token's index in the whole batch */
    delta_set *deltas;       /* may be NULL */
    param_block *pb;         /* the deltas' parameters */
    /* gradient destinations of the base tensors, indexed as the family's
     * tensor list (model_family.tensors); an entry NULL = that tensor is
     * frozen (no weight gradient is computed at all). The array may be NULL:
     * nothing of the base trains. */
    float *const *grads;
    int need_input_grad;     /* keep the gradient w.r.t. the embeddings output */
    /* virtual tokens (prompt tuning, P-tuning): an id -(k+1) takes row k of
     * virt (n_virt, C) as its word embedding; d_virt (may be NULL) += its gradient */
    const float *virt;
    float *d_virt;
    int n_virt;
    /* prefix keys/values (prefix tuning, P-tuning v2, MAM, UniPELT): n_prefix
     * rows of (2 L C): layer l's keys at columns [2lC, (2l+1)C), values next;
     * optional per-sequence gates (UniPELT): rows 2l, 2l+1 of gate_w (2L, C) */
    int n_prefix;
    const float *prefix_kv;
    float *d_prefix_kv;
    const float *prefix_gate_w, *prefix_gate_b;
    float *d_prefix_gate_w, *d_prefix_gate_b;
    /* decoders: packed rows. segments (B*T; NULL = one sequence per row)
     * gives each token's example index within its row: attention stays
     * inside a segment (and is causal), and positions restart at 0 at each
     * segment's first token. Encoders ignore it. */
    const int32_t *segments;
    /* inference only: before block rep_at (>= 1) the B examples' rows are
     * copied rep times (example k*B + b is copy k of b), so the blocks below
     * run once for all copies (AdapterDrop under parallel(...): no adapter
     * acts there, every copy would compute the same). lens then holds
     * B*rep entries and the activations are sized for B*rep examples; the
     * hidden states have B*rep rows. rep <= 1: none. Only families with
     * can_replicate set honour it. */
    int rep, rep_at;
    /* backward: called (may be NULL) on the calling thread, outside any
     * parallel region, as soon as block l's backward is done (blocks run
     * from the top down): every gradient of the tensors param_entry.layer
     * says are l's is then final for this batch. Data parallelism starts
     * summing them over the ranks there while the blocks below run; the
     * family knows nothing of what the caller does. */
    void (*layer_done)(void *ctx, int layer);
    void *layer_done_ctx;
} model_run;

/* One base tensor: for full fine-tuning, BitFit, trained norms. */
typedef struct model_tensor {
    char name[96];      /* Hugging Face name without the family's prefix ("encoder.layer.0.attention.self.query.weight") */
    float **w;          /* the model's pointer (re-pointable: a trained copy replaces it) */
    int ndim;
    int64_t shape[2];
    int is_bias;        /* a bias or a norm's bias: BitFit's set */
    int is_norm;        /* a norm's weight or bias */
    int layer;          /* its block, -1 outside the blocks (embeddings, final norm) */
} model_tensor;

struct model_family {
    const char *name;           /* config.json model_type (and GGUF general.architecture) */
    peftc_arch arch;
    int can_replicate;          /* forward honours model_run.rep / rep_at */
    int can_recompute;          /* acts_init honours MODEL_KEEP_RECOMPUTE */

    /* ---- loading: a model directory (or file); the config is parsed by io/config.c */
    peftc_status (*load)(const char *path, const peftc_config *cfg, peftc_model **out, peftc_error *err);
    void (*free)(peftc_model *m);

    /* ---- activations. train: keep every layer's activations and the
     * backward scratch (else one layer's buffers are reused); n_prefix: the
     * prefix length the attention buffers hold; keep: the family's flags from
     * keep_for. *a may be NULL (allocated) or a previous buffer set (reused). */
    peftc_status (*acts_init)(const peftc_model *m, model_acts **a, int B, int T, int train, int n_prefix,
                              unsigned keep, peftc_error *err);
    void (*acts_free)(model_acts *a);
    /* The buffers a training run with these deltas and gradients (either may
     * be NULL; virt_train: virtual tokens train) must keep. */
    unsigned (*keep_for)(const peftc_model *m, const delta_set *ds, float *const *grads, int virt_train);

    /* ---- compute. forward: run may be NULL (inference, no deltas). backward
     * from d_hidden (B*T*C, overwritten): accumulates into run->grads, the
     * deltas', virtual tokens' and prefixes' gradients. */
    void (*forward)(peftc_model *m, model_acts *a, const model_run *run, const int32_t *ids,
                    const int32_t *type_ids, const int *lens, int B, int T);
    void (*backward)(peftc_model *m, model_acts *a, const model_run *run, const int32_t *ids,
                     const int32_t *type_ids, const int *lens, int B, int T, float *d_hidden);
    /* The last hidden states (B*T*C) after forward. */
    float *(*hidden)(const peftc_model *m, const model_acts *a);

    /* ---- sites. 1 if (layer, site) exists in this family, with the widths
     * of x and h there; 0 if not. */
    int (*site)(const peftc_model *m, int layer, site_id s, int *in, int *out);
    /* The linear layer at a linear site: the slots of its weight (out, in)
     * and bias (out; *b = NULL: none). 0 if the site is no linear layer here. */
    int (*linear)(peftc_model *m, int layer, site_id s, float ***w, float ***b);
    /* Makes *slot an owned, writable fp32 copy of numel floats (no-op if it
     * is one) and drops what the family derived from weights (bf16 packs):
     * before a weight is changed in place (merges). */
    peftc_status (*make_writable)(peftc_model *m, float **slot, size_t numel, peftc_error *err);

    /* ---- tensors: fills out (capacity cap; may be 0) and returns the count.
     * The order is the index of model_run.grads. */
    int (*tensors)(peftc_model *m, model_tensor *out, int cap);
    /* The word embeddings (vocab_size, C) (prompt tuning's init); NULL when
     * the family stores them otherwise (quantised), then token_embedding
     * gives one row. */
    const float *(*word_embeddings)(const peftc_model *m);
    /* Token id's input vector into dst (C floats); may be NULL when
     * word_embeddings never is. */
    void (*token_embedding)(const peftc_model *m, int id, float *dst);
    /* The width of one layer's prefix keys (= values): C for multi-head
     * attention, kv_heads * head_dim with grouped-query attention (PEFT's
     * token_dim). NULL: hidden_size. */
    int (*prefix_dim)(const peftc_model *m);
    /* A sequence-classification pooler over the first token (tanh(W h + b)):
     * 1 if the family has one, its weights in *w, *b (NULL if the checkpoint
     * lacks them: the task learns it). 0: no pooler. */
    int (*pooler)(const peftc_model *m, const float **w, const float **b);
    /* Some frozen floats that identify the checkpoint (a training run's
     * signature hashes them); *n their count. */
    const float *(*weights_sample)(const peftc_model *m, size_t *n);

    /* ---- the base as loaded, NF4 linear weights included, to one
     * safetensors file (peftc quantize; the layout is in README "NF4 base
     * files"); its load reads that file back without quantising again.
     * NULL: the family cannot. */
    peftc_status (*save_base)(peftc_model *m, const char *path, peftc_error *err);

    /* ---- causal LM head (decoders; NULL in encoders). hidden() is then
     * after the final norm. lm_head: logits (N, vocab) of N hidden rows
     * (N, C), whatever the output weight's storage (tied embedding,
     * quantised). lm_head_backward: d_h (N, C) += d_logits (N, vocab) @ W;
     * d_w (vocab, C; NULL = frozen) += d_logits^T h. The causal-LM task
     * calls them on chunks of the rows that carry a loss only. */
    void (*lm_head)(const peftc_model *m, const float *h, int N, float *logits);
    void (*lm_head_backward)(const peftc_model *m, const float *h, const float *d_logits, int N, float *d_h,
                             float *d_w);

    /* ---- PEFT names (adapter files Hugging Face PEFT loads) */
    const char *peft_prefix;    /* of the base tensors: "base_model.model.bert." */
    const char *pooler_module;  /* "pooler.dense" (if pooler() says 1) */
    const char *layer_path;     /* printf format of a block's module path: "encoder.layer.%d" */
    /* per site: the module path inside a block ("attention.self.query"),
     * NULL where the site is no module; and the target_modules name of a
     * linear site ("query") */
    const char *site_module[SITE_COUNT];
    const char *site_target[SITE_COUNT];
};

extern const model_family model_family_bert;
extern const model_family model_family_llama;

/* The registered families, NULL-terminated. */
extern const model_family *const model_families[];
/* By config.json model_type / GGUF general.architecture; NULL if unknown. */
const model_family *model_family_find(const char *model_type);
/* Resource limits, checked before anything is allocated: a config whose
 * weights (vocab x hidden, positions x hidden, layers x (4 hidden^2 +
 * 3 hidden x intermediate)) could not fit in this machine's memory even at
 * 4 bits per parameter is refused with the number it would need. */
peftc_status model_check_size(const char *path, int64_t vocab, int64_t hidden, int64_t layers, int64_t intermediate,
                              int64_t positions, peftc_error *err);
const model_family *model_family_for_arch(peftc_arch arch);

/* A model's activation buffers through its family (a generic wrapper). */
static inline peftc_status model_acts_init(const peftc_model *m, model_acts **a, int B, int T, int train,
                                           int n_prefix, unsigned keep, peftc_error *err)
{
    return m->family->acts_init(m, a, B, T, train, n_prefix, keep, err);
}

#endif
