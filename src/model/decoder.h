/* decoder.h: what the layers above need of a decoder language model, for
 * inference with a KV cache, whatever its family. A family (model/llama.c
 * today) is reached through the table in decoder.c, chosen by the GGUF
 * general.architecture or the config.json model_type; generation (train/lm.c)
 * and adapters know sites and PEFT module names only through these calls.
 *
 * Adding a decoder family: its model file in model/ (load, a KV-cache
 * context, eval with delta hooks at its sites), and one entry in decoder.c's
 * table naming its architecture, its PEFT module names per site and its
 * row-order rules. Nothing above model/ changes. */
#ifndef PEFTC_DECODER_H
#define PEFTC_DECODER_H

#include "core/core.h"
#include "io/gguf.h"
#include "peft/delta.h"
#include "train/params.h"

typedef struct decoder decoder;

typedef struct decoder_info {
    const char *arch;            /* "llama" */
    int n_vocab, n_layers, d_model, n_ctx_train;
    char weights[48];            /* the weight types, e.g. "q4_1 (token_embd q8_0)" */
    int from_gguf;
    int block_quantised;         /* the layers' linear weights are in blocks (Q4_1, Q8_0, NF4, ...), not F32/F16/BF16 */
} decoder_info;

peftc_status decoder_load(const char *path, decoder **out, peftc_error *err);
/* decoder_load with the base's block weights stored as q says (NF4: llama's
 * LLAMA_LOAD_NF4) */
peftc_status decoder_load_quantized(const char *path, peftc_base_quant q, decoder **out, peftc_error *err);
void decoder_free(decoder *d);
const decoder_info *decoder_get_info(const decoder *d);
/* The GGUF file the model came from (its tokenizer metadata), or NULL. */
const gguf_file *decoder_gguf(const decoder *d);

/* The KV cache for n_ctx positions and scratch for n_batch tokens per eval
 * (re-init replaces it). */
peftc_status decoder_ctx_init(decoder *d, int n_ctx, int n_batch, peftc_error *err);
/* Tokens ids[0..n) at positions pos.. (the cache holds 0..pos-1): logits of
 * the last (all: of every one, n * n_vocab). ds/pb: unmerged deltas (NULL). */
peftc_status decoder_eval(decoder *d, const delta_set *ds, const param_block *pb, const int32_t *ids, int n,
                          int pos, float *logits, int all, peftc_error *err);

/* PEFT names: the module path of a block's linear layer ("self_attn.q_proj")
 * -> its site (1), else 0; the module name of a site (NULL if none); the
 * prefix of block paths in PEFT keys ("base_model.model.model.layers."). */
int decoder_site_of_module(const decoder *d, const char *module, site_id *s);
const char *decoder_module_of_site(const decoder *d, site_id s);
const char *decoder_peft_layers_prefix(const decoder *d);
/* Widths (in, out) of the linear layer at a site; 0 if the site has none. */
int decoder_site_dims(const decoder *d, site_id s, int *in, int *out);
/* A LoRA B (out, r) trained against the Hugging Face layout, reordered in
 * place to this model's row order (GGUF Llama files permute q and k rows
 * for their RoPE). */
void decoder_adapt_lora_b(const decoder *d, site_id s, float *b, int out, int r);
/* llama.cpp's name of a site's weight in a block ("attn_q": the GGUF tensor
 * blk.N.attn_q.weight), NULL if none; and a LoRA B (out, r) in that GGUF
 * row order (as GGUF LoRA adapters hold it) reordered in place to this
 * model's row order (a no-op for a GGUF base; the inverse permutation of
 * decoder_adapt_lora_b for a Hugging Face directory). */
const char *decoder_gguf_name_of_site(const decoder *d, site_id s);
void decoder_lora_b_from_gguf(const decoder *d, site_id s, float *b, int out, int r);
/* W += scale * B A at (layer, site): PEFTC_ERR_UNSUPPORTED for quantised
 * weights (they stay quantised: use the adapter unmerged). */
peftc_status decoder_merge_lora(decoder *d, int layer, site_id s, const float *a, const float *b, int r,
                                float scale, peftc_error *err);
/* W at (layer, site) with its rows (input 0: l has out values, in the
 * model's row order) or its columns (input 1: l has in values) multiplied
 * by l, as an (IA)^3 vector merges; the same refusal for quantised weights. */
peftc_status decoder_merge_scale(decoder *d, int layer, site_id s, const float *l, int input, peftc_error *err);

#endif
