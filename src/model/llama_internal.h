/* llama_internal.h: the Llama model's struct, shared by its two files:
 * llama.c (loading, KV-cache inference) and llama_family.c (the training
 * forward/backward behind the model-family interface). Nothing outside
 * model/llama*.c includes it. */
#ifndef PEFTC_LLAMA_INTERNAL_H
#define PEFTC_LLAMA_INTERNAL_H

#include "model/llama.h"
#include "io/safetensors.h"

#define MAX_SHARDS 64

struct llama_model {
    llama_config cfg;
    char *path;
    peftc_safetensors *st[MAX_SHARDS];
    int n_st;
    gguf_file *gguf;             /* GGUF models */
    const float *rope_ff;        /* GGUF rope_freqs.weight (hd/2) or NULL */
    int dequant;                 /* LLAMA_LOAD_DEQUANT */
    llama_weight tok_embd, output;
    const float *norm;
    llama_layer *layers;
    float *inv_freq;             /* (hd/2) RoPE frequencies after scaling */
    void **owned;
    int n_owned, cap_owned;
    struct nf4_tensor *nf4;      /* LLAMA_LOAD_NF4: 7 per layer, the blocks' weights point here */
};

/* Rotates n rows of nh heads (row stride `stride`) in place; cs: (n, hd)
 * with cos at [i*hd + 2j], sin at [i*hd + 2j + 1]. */
void llama_rope(float *x, int n, int nh, int hd, size_t stride, const float *cs, int interleaved);
/* Row `id` of the token embedding table as fp32 (dequantised if stored so). */
void llama_embed_row(float *dst, const llama_weight *w, int id);

#endif
