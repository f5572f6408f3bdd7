/* fusion.h: AdapterFusion, stage 2 (Pfeiffer et al. 2021), as AdapterHub's
 * `adapters` computes it (BertFusion under DynamicAdapterFusionConfig, its
 * default "dynamic" config).
 *
 * N trained bottleneck adapters sit frozen at one site (ffn.out: the FFN
 * sub-layer's output h, after dropout, before the residual); per layer a
 * fusion module combines their outputs. At each token, with h0 = h the
 * sub-layer output (what every adapter reads: AdapterHub's query, its
 * "residual", with query_before_ln off) and u_k = adapter k's output
 * (its "up", the amount it would add to h0):
 *     q    = h0 Wq^T + bq                  (query, init N(0, 0.02^2), bias 0)
 *     k_k  = u_k Wk^T + bk                 (key, same init)
 *     v_k  = u_k Wv^T                      (value, no bias; value_before_softmax:
 *                                           W_V before the weighting; init I,
 *                                           off-diagonal 1e-6)
 *     s_k  = dropout(q . k_k)              (attention_probs_dropout_prob on the
 *                                           scores, train only)
 *     p    = softmax(s / T)                (over the adapters)
 *     h    = h0 + sum_k p_k v_k            (residual_before off: the residual
 *                                           is added after the weighting)
 * T is 1 in the "dynamic" config (temperature off); with temperature on it
 * starts at 50 and falls by 50/1000 per training forward to 1, as
 * BertFusion.T does. The regulariser 0.01 * ||I - Wv||_F^2 is summed over
 * the layers (get_fusion_regularization_loss).
 *
 * A fusion module stands in for one delta_set at the model's sites
 * (delta_set.fuse), so neither family knows of it. Its backward gives the
 * input gradient through the frozen adapters (their Jacobians) and weight
 * gradients to the fusion's own parameters only. */
#ifndef PEFTC_FUSION_H
#define PEFTC_FUSION_H

#include "peft/delta.h"

#define FUSION_MAX 16
#define FUSION_NAME_MAX 64
#define FUSION_DIR_MAX 1024
#define FUSION_REG 0.01f
#define FUSION_T0 50.0f

/* What a fusion run fuses: names, directories, checksums of the adapters'
 * files (0: not known yet), and the temperature option. */
typedef struct fusion_spec {
    int n;
    char names[FUSION_MAX][FUSION_NAME_MAX];
    char dirs[FUSION_MAX][FUSION_DIR_MAX];
    uint64_t sums[FUSION_MAX];
    int temperature;
    float T;              /* a saved run's final temperature (0: 1) */
} fusion_spec;

typedef struct fusion_child {
    delta_set *ds;
    const param_block *pb;
} fusion_child;

typedef struct fusion_module {
    int n, L, C;
    site_id site;
    fusion_child ch[FUSION_MAX];
    int *p_qw, *p_qb, *p_kw, *p_kb, *p_vw;   /* per layer, into the trainable block */
    float T;                                  /* the softmax temperature now */
    float dropout;                            /* on the scores, training forwards */
    /* the current batch's layout, for the statistics (set before forward) */
    const int *lens;
    int B, Tlen;
    /* activations, N rows (delta_acts_alloc) */
    int N;
    float *h0, *u, *q, *prob;                 /* (L,N,C) (L,N,n,C) (L,N,C) (L,N,n) */
    uint8_t *keep;                            /* (L,N,n) score dropout: kept */
    float *kbuf, *vbuf, *dubuf, *tmp, *zbuf;  /* scratch */
    /* statistics: sum of p over the real tokens, per layer and adapter */
    int stats;
    double *wsum;                             /* (L,n) */
    int64_t *wcount;                          /* (L) */
} fusion_module;

/* Checks the children (bottleneck adapters at one site, composed by add or
 * a fixed scale, every one at the same layers) and declares the fusion's
 * parameters in pb ("fusion.layer.L.{query,key,value}.{weight,bias}"). */
peftc_status fusion_declare(fusion_module *f, param_block *pb, int n_layers, int C, float dropout,
                            const fusion_child *ch, const char *const *names, int n, peftc_error *err);
/* AdapterHub's initialisation (after params_alloc). */
void fusion_init_params(fusion_module *f, param_block *pb, peftc_rng *rng);
peftc_status fusion_acts_alloc(fusion_module *f, int N, peftc_error *err);
void fusion_free(fusion_module *f);
/* Temperature after `forwards` training forwards (temperature on), else 1. */
float fusion_temperature(int temperature, long forwards);

int fusion_count(const fusion_module *f, int layer, site_id site);
void fusion_forward(fusion_module *f, const param_block *pb, int layer, site_id site, const float *x, float *h,
                    int N, int train, peftc_rng *rng);
void fusion_backward(fusion_module *f, param_block *pb, int layer, site_id site, const float *x, float *dh,
                     float *dx, int N);
/* 0.01 * sum_l ||I - Wv_l||^2 into the value matrices' gradients; returns it. */
double fusion_regularize(const fusion_module *f, param_block *pb);
/* "a=DIR,b=DIR,..." into spec (names [A-Za-z_][A-Za-z0-9_.-]*, each once;
 * a plain DIR is named by its position). */
peftc_status fusion_spec_parse(const char *text, fusion_spec *spec, peftc_error *err);
/* FNV-1a 64 of bytes (the adapters' checksums). */
uint64_t fusion_fnv(uint64_t h, const void *p, size_t n);

#endif
