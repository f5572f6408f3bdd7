/* bert.h: the BERT encoder's weights and activations (internal). */
#ifndef PEFTC_BERT_H
#define PEFTC_BERT_H

#include "core/core.h"
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
} bert_layer;

/* Activations of one layer, kept for backward when training. */
typedef struct bert_layer_acts {
    float *q, *k, *v;        /* (N,C) */
    float *probs;            /* (B,NH,T,T) */
    float *ctx;              /* (N,C) attention output before the projection */
    float *attn;             /* (N,C) projection output (+ dropout) */
    float *res1;             /* (N,C) attn + layer input */
    float *ln1, *ln1_mean, *ln1_rstd;   /* (N,C), (N), (N) */
    float *ffn_pre, *ffn_act;           /* (N,F) */
    float *ffn_out;          /* (N,C) (+ dropout) */
    float *res2;             /* (N,C) ffn_out + ln1 */
    float *out, *ln2_mean, *ln2_rstd;   /* (N,C) layer output, (N), (N) */
} bert_layer_acts;

typedef struct bert_acts {
    int B, T;                /* capacity */
    int n_sets;              /* num_layers when training; 1 in inference (reused) */
    float *emb, *emb_mean, *emb_rstd, *emb_ln;   /* (N,C) (N) (N) (N,C) */
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

peftc_status bert_acts_init(bert_acts *a, const peftc_config *cfg, int B, int T, int n_sets, peftc_error *err);
void bert_acts_free(bert_acts *a);

/* Encoder forward (inference): fills a->layer[last set].out (hidden states). */
void bert_forward(peftc_model *m, bert_acts *a, const int32_t *ids, const int32_t *type_ids,
                  const int *lens, int B, int T);
/* The last hidden states after bert_forward. */
float *bert_hidden(const peftc_model *m, const bert_acts *a);

#endif
