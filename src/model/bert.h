/* bert.h: the BERT encoder's weights and activations (internal to the
 * family: layers above reach it through model_family_bert, model.h). */
#ifndef PEFTC_BERT_H
#define PEFTC_BERT_H

#include "model/model.h"
#include "io/safetensors.h"

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

/* The base tensors in the order of the tensor list, which is also the index
 * of model_run.grads: the embeddings (BT_*), then BL_COUNT per layer (BL_*). */
enum { BT_WTE, BT_WPE, BT_WTT, BT_EMB_LN_W, BT_EMB_LN_B, BT_COUNT };
enum { BL_WQ, BL_BQ, BL_WK, BL_BK, BL_WV, BL_BV, BL_WO, BL_BO, BL_LN1_W, BL_LN1_B,
       BL_WI, BL_BI, BL_WF, BL_BF, BL_LN2_W, BL_LN2_B, BL_COUNT };

typedef struct bert_model {
    peftc_model base;        /* first: a peftc_model * is a bert_model * */
    peftc_safetensors *st;
    float *wte, *wpe, *wtt, *emb_ln_w, *emb_ln_b;
    bert_layer *layers;
    float *pool_w, *pool_b;  /* pooler.dense (C,C), (C); NULL if absent */
    /* --quantize nf4: the six linear weights of each layer (wq, wk, wv, wo,
     * wi, wf: index l*6 + j, j as bf16[]) in NF4, NULL otherwise. The fp32
     * pointers stay (names, shapes) but frozen NF4 weights are never read
     * through them; their pages are released after quantisation. */
    struct nf4_tensor *nf4;
    int nf4_from_file;       /* borrowed from a peftc quantize file's mapping (no fp32 weights) */
    float **owned;           /* fp32 copies this model must free */
    int n_owned, cap_owned;
} bert_model;

static inline bert_model *bert_of(peftc_model *m) { return (bert_model *)m; }

#endif
