/* bert.h: the BERT encoder's weights and activations (internal). */
#ifndef PEFTC_BERT_H
#define PEFTC_BERT_H

#include "core/core.h"
#include "io/safetensors.h"
#include "peft/delta.h"

/* Pointers into the mapped file (or into owned fp32 copies where the file holds
 * F16/BF16 or where a method must write the weight: full fine-tuning, merge). */
typedef struct bert_layer {
    float *wq, *bq, *wk, *bk, *wv, *bv;   /* attention.self.{query,key,value}  (C,C), (C) */
    float *wo, *bo;                       /* attention.output.dense            (C,C), (C) */
    float *ln1_w, *ln1_b;                 /* attention.output.LayerNorm        (C) */
    float *wi, *bi;                       /* intermediate.dense                (F,C), (F) */
    float *wf, *bf;                       /* output.dense                      (C,F), (C) */
    float *ln2_w, *ln2_b;                 /* output.LayerNorm                  (C) */
    /* bf16 copies of wq, wk, wv, wo, wi, wf for the --bf16 path (kernels_bf16()):
     * packed on first use while the weight is frozen; freed with the model and
     * by bert_make_owned (a weight about to change) */
    struct matmul_bf16 *bf16[6];
    uint8_t bf16_bwd_packed[6];           /* the backward packing exists (pages released once) */
} bert_layer;

/* Activations of one layer, kept for the backward when training. Only what
 * the backward cannot recompute cheaply is stored: the LayerNorm outputs
 * (ln1, the layer output) are recomputed from their inputs and saved
 * statistics, and the attention and FFN projections are written straight
 * into the residual sums. */
typedef struct bert_layer_acts {
    float *q, *k, *v;        /* (N,C) */
    float *probs;            /* (B,NH,T,T) */
    float *ctx;              /* (N,C) attention output before the projection; the
                                shared scratch unless BERT_KEEP_CTX */
    float *res1;             /* (N,C) dropout(attn proj) + layer input */
    float *ln1_mean, *ln1_rstd;          /* (N) */
    float *ffn_pre;          /* (N,F) */
    float *ffn_act;          /* (N,F) gelu(ffn_pre): with BERT_KEEP_FFN_ACT per layer, else
                                shared scratch if the FFN runs whole-batch, else NULL */
    float *res2;             /* (N,C) dropout(FFN out) + ln1 */
    float *ln2_mean, *ln2_rstd;          /* (N) */
    uint64_t attn_key, ffn_key;         /* hidden dropout streams (training; masks drawn again) */
    uint8_t *probs_mask;                /* (B,NH,T,P+T) attention dropout mask (training) */
    float *k_ext, *v_ext;               /* (B,P+T,C) keys/values after the prefix (P > 0) */
    float *gate_sig, *gate;             /* (B,T,2) per-token sigmoids, (B,2) the prefix gates */
} bert_layer_acts;

/* What the backward must find stored because something trains on it: the
 * attention context (input of attn.o: its weight gradient or deltas there)
 * and the GELU output (input of ffn.down, and ffn.act's scale deltas).
 * BERT_FFN_UNFUSED: some layer's FFN has deltas or trained weights, so it
 * runs whole-batch with (N,F) scratch instead of the fused row blocks (fp32
 * runs whole-batch too: OpenBLAS packs the weight again for every block). */
enum { BERT_KEEP_CTX = 1, BERT_KEEP_FFN_ACT = 2, BERT_FFN_UNFUSED = 4,
       BERT_KEEP_EMB = 8 /* the embeddings' sum (their LayerNorm's input): they or virtual tokens train */ };

/* Rows per block of the fused FFN with bf16 weights, and per chunk in fp32
 * (see bert.c: ffn_fused_forward) */
#define BERT_FFN_ROWS 64
#define BERT_FFN_CHUNK 1024

typedef struct bert_acts {
    int B, T;                /* capacity */
    int P;                   /* prefix length the buffers hold */
    int train;               /* allocated for training (else inference) */
    int n_sets;              /* num_layers when training; 1 in inference (reused) */
    unsigned keep;           /* BERT_KEEP_* */
    float *emb, *emb_mean, *emb_rstd, *emb_ln;   /* (N,C) (N) (N) (N,C) */
    uint64_t emb_key;                            /* embeddings' dropout stream (training) */
    int32_t *ids_clean;                          /* (N) ids with virtual tokens mapped to 0 */
    float *xbuf[2];          /* (N,C) layer outputs in turn; the backward's recomputed inputs */
    float *ln1;              /* (N,C) the current layer's ln1 */
    float *hidden;           /* (N,C) the last layer's output */
    float *ffn_rows;         /* fused FFN: per thread (BERT_FFN_ROWS, F) */
    int ffn_threads;         /* threads ffn_rows has room for */
    int ffn_act_rows;        /* rows the shared GELU output (and d_f) holds; 0: none */
    /* backward scratch (training only) */
    float *d_a, *d_b, *d_ctx, *d_q, *d_k, *d_v;   /* (N,C) */
    float *d_f;                                   /* (N,F) (whole-batch FFN) */
    float *d_kext, *d_vext;                       /* (B,P+T,C) */
    double *d_gate;                               /* (B,2) prefix gates' gradients / length */
    bert_layer_acts *layer;
    float *block;            /* one allocation holding everything above */
    size_t floats;
} bert_acts;

struct peftc_model {
    peftc_config cfg;
    peftc_safetensors *st;
    char *dir;
    float *wte, *wpe, *wtt, *emb_ln_w, *emb_ln_b;
    bert_layer *layers;
    float *pool_w, *pool_b;  /* pooler.dense (C,C), (C); NULL if absent */
    float **owned;           /* fp32 copies this model must free */
    int n_owned, cap_owned;
    int64_t n_params;
    bert_acts infer;         /* inference scratch, grown on demand */
};

/* train: keep every layer's activations and allocate the backward scratch
 * (else one layer's buffers are reused: inference); n_prefix: the
 * prefix length the attention buffers must hold (0: none); keep: BERT_KEEP_*
 * (bert_keep_for tells what a training run needs). */
peftc_status bert_acts_init(bert_acts *a, const peftc_config *cfg, int B, int T, int train, int n_prefix,
                            unsigned keep, peftc_error *err);
void bert_acts_free(bert_acts *a);

/* Gradient destinations of the base weights: NULL = frozen (no weight
 * gradient is computed at all). Same shapes as the weights. */
typedef struct bert_grads {
    float *wte, *wpe, *wtt, *emb_ln_w, *emb_ln_b;
    bert_layer *layers;      /* num_layers entries */
} bert_grads;

/* What a training forward/backward needs beyond the weights. */
typedef struct bert_run {
    int train;               /* dropout on */
    peftc_rng *rng;
    delta_set *deltas;       /* may be NULL */
    param_block *pb;         /* the deltas' parameters */
    bert_grads *grads;       /* may be NULL: nothing of the base is trained */
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
} bert_run;

/* The BERT_KEEP_* flags a training run with these deltas and base-weight
 * gradients (either may be NULL) needs. */
unsigned bert_keep_for(const peftc_config *cfg, const delta_set *ds, const bert_grads *g);

/* Encoder forward. run may be NULL (inference, no deltas). In training
 * (a->train) every layer's activations are kept. */
void bert_forward(peftc_model *m, bert_acts *a, const bert_run *run, const int32_t *ids,
                  const int32_t *type_ids, const int *lens, int B, int T);
/* Backward from d_hidden (B*T*C, the gradient w.r.t. the last hidden states;
 * overwritten). Accumulates into run->grads and the deltas' gradients. */
void bert_backward(peftc_model *m, bert_acts *a, const bert_run *run, const int32_t *ids,
                   const int32_t *type_ids, const int *lens, int B, int T, float *d_hidden);
/* The last hidden states after bert_forward. */
float *bert_hidden(const peftc_model *m, const bert_acts *a);


/* Sequence-classification head of BertForSequenceClassification:
 * logits = W_c dropout(tanh(W_p h[CLS] + b_p)) + b_c. */
typedef struct cls_head {
    int C, K;
    const float *pool_w, *pool_b, *cls_w, *cls_b;   /* (C,C) (C) (K,C) (K) */
    float *g_pool_w, *g_pool_b, *g_cls_w, *g_cls_b; /* NULL = frozen */
    /* activations (capacity B rows) */
    float *cls, *pooled, *dropped, *logits, *probs, *losses;   /* (B,C)x3 (B,K)x2 (B) */
    uint8_t *mask;
    float *d_pooled, *d_cls;                                   /* (B,C) */
    float *block;
    int cap_B;
} cls_head;

peftc_status cls_head_alloc(cls_head *h, int C, int K, int B, peftc_error *err);
void cls_head_free(cls_head *h);
/* hidden (B,T,C) -> h->logits (B,K); dropout p when training. */
void cls_head_forward(cls_head *h, const float *hidden, int B, int T, float p, int train, peftc_rng *rng);
/* Mean cross-entropy of h->logits against labels (B), filling h->probs. */
float cls_head_loss(cls_head *h, const int *labels, int B);
/* Backward of scale * (mean loss over the B rows): d_hidden (B,T,C) is overwritten (zero except the CLS rows). */
void cls_head_backward(cls_head *h, const int *labels, int B, int T, float p, int train, float scale, float *d_hidden);

/* Every base tensor of the encoder, with its Hugging Face name (no "bert."
 * prefix), the model's pointer to it and the matching gradient slot. */
typedef struct bert_tensor_ref {
    char name[96];
    float **w;          /* the model's pointer (re-pointable) */
    float **g;          /* the slot in bert_grads */
    int ndim;
    int64_t shape[2];
    int is_bias;        /* bias or LayerNorm beta: BitFit's set */
} bert_tensor_ref;

/* Fills refs (capacity cap) and returns the count (5 + 16 per layer). */
int bert_tensors(peftc_model *m, bert_grads *g, bert_tensor_ref *refs, int cap);
/* Makes *w point to an owned writable copy (for merges); no-op if already owned. */
peftc_status bert_make_owned(peftc_model *m, float **w, size_t numel, peftc_error *err);

#endif
