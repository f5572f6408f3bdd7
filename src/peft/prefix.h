/* prefix.h: prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022):
 * n trainable key and value vectors per layer, prepended to the attention's
 * keys and values (always attended; padding masks only real tokens).
 * Optionally reparameterised in training by an MLP (Embedding(n,d) -> Linear
 * -> tanh -> Linear(2 L d)) that is folded away on save, and optionally gated
 * per sequence as in UniPELT (g = mean over tokens of sigmoid(x W_g + b_g),
 * one factor for the keys, one for the values). */
#ifndef PEFTC_PREFIX_H
#define PEFTC_PREFIX_H

#include "core/core.h"
#include "core/rng.h"
#include "train/params.h"

typedef struct prefix_spec {
    int n;          /* prefix length (0: none) */
    int project;    /* reparameterise through the MLP while training */
    int hidden;     /* the MLP's width */
    int gate;       /* UniPELT's gate */
} prefix_spec;

typedef struct prefix_module {
    prefix_spec spec;
    int L, C;
    int p_kv;                          /* direct: prompt_embeddings (n, 2 L C) (PEFT's layout) */
    int p_emb, p_w1, p_b1, p_w2, p_b2; /* projected */
    int p_gate_w, p_gate_b;            /* (2L, C), (2L): layer l's key gate row 2l, value gate row 2l+1 */
    float *kv, *d_kv;                  /* (n, 2 L C): token i, layer l: keys at [2lC, (2l+1)C), values next */
    float *hid, *act, *d_act;          /* (n, hidden) */
} prefix_module;

peftc_status prefix_declare(prefix_module *pm, const prefix_spec *ps, int L, int C, param_block *pb, peftc_error *err);
peftc_status prefix_alloc(prefix_module *pm, peftc_error *err);
void prefix_init(prefix_module *pm, param_block *pb, peftc_rng *rng);
/* kv = the prefix vectors of every layer (through the MLP when projected). */
void prefix_forward(prefix_module *pm, const param_block *pb);
/* From d_kv into the parameters' gradients. */
void prefix_backward(prefix_module *pm, param_block *pb);
void prefix_free(prefix_module *pm);

#endif
