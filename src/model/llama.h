/* llama.h: the Llama decoder (internal): config, weights, KV cache, forward.
 *
 * Loaded from a Hugging Face directory (config.json + model.safetensors, or
 * sharded model-0000i-of-0000N.safetensors with model.safetensors.index.json;
 * F32/F16/BF16, converted to fp32) or from a GGUF file (weights kept as
 * stored, quantised ones multiplied by the quantised kernels).
 *
 * One RoPE convention per model, chosen by where the weights came from, so
 * that the q/k weights are used exactly as stored:
 *   - HF (rope_interleaved = 0): rotate_half pairs (x[i], x[i + hd/2]);
 *   - GGUF (rope_interleaved = 1): ggml's "normal" LLAMA rope, adjacent pairs
 *     (x[2i], x[2i+1]); convert_hf_to_gguf permuted the q/k rows (per head:
 *     w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)) so that both give the
 *     same attention scores.
 * A LoRA delta at attn.q / attn.k adds to the projection output in the
 * model's own row order: an HF-trained adapter applied to a GGUF model must
 * have its lora_B rows (the q/k output dimension) permuted the same way (and
 * back when saving), or the deltas land on the wrong rotary pairs.
 */
#ifndef PEFTC_LLAMA_H
#define PEFTC_LLAMA_H

#include "core/core.h"
#include "io/ggml_types.h"
#include "io/gguf.h"
#include "kernels/kernels.h"
#include "peft/delta.h"

typedef enum llama_rope_scaling {
    LLAMA_ROPE_SCALING_NONE = 0,
    LLAMA_ROPE_SCALING_LINEAR,   /* positions divided by factor */
    LLAMA_ROPE_SCALING_LLAMA3    /* Llama 3.1's per-frequency smooth scaling */
} llama_rope_scaling;

typedef struct llama_config {
    int vocab_size, hidden_size, intermediate_size, num_layers;
    int num_heads, num_kv_heads, head_dim;
    float rms_norm_eps;
    float rope_theta;
    llama_rope_scaling rope_scaling;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;           /* llama3: original_max_position_embeddings */
    int max_position;            /* max_position_embeddings / llama.context_length */
    int tie_word_embeddings;
    int bos_id, eos_id;          /* -1 if not given */
    int rope_interleaved;        /* 1: GGUF weights, adjacent pairs; 0: HF, rotate_half */
} llama_config;

/* A Hugging Face config.json's len bytes (path names it in messages), or a
 * GGUF file's llama.* metadata, -> the checked config (the loaders' first
 * step; the fuzz targets' entries). */
peftc_status llama_config_parse(const char *text, size_t len, const char *path, llama_config *c, peftc_error *err);
peftc_status llama_config_from_gguf(const gguf_file *g, llama_config *c, peftc_error *err);

/* A linear layer's weight (out, in) row-major, in a GGML_TYPE_* encoding:
 * F32 (data is float *) or a quantised block type (rows of in values). */
typedef struct llama_weight {
    uint32_t type;
    const void *data;
    int in, out;
    matmul_bf16 *bf16;           /* a packed bf16 copy: training's frozen F32 weights, and
                                    the prompt rows of F32/BF16 weights (llama_linear) */
    int bf16_failed;             /* packing it failed (out of memory): not tried again */
    struct quant_packed *packed; /* quantised weights in the kernels' interleaved layout
                                    (made once at load; the file's blocks are then not read) */
} llama_weight;

typedef struct llama_layer {
    const float *attn_norm, *ffn_norm;           /* (C) */
    llama_weight wq, wk, wv, wo, wgate, wup, wdown;
} llama_layer;

typedef struct llama_model llama_model;

typedef struct llama_ctx {
    int n_ctx, n_batch;
    int n_past;                  /* informational: positions written so far */
    float **k, **v;              /* per layer (n_ctx, n_kv_heads * hd) */
    /* scratch for n_batch rows */
    float *x, *xn, *q, *att, *tmp, *g, *u, *rope_cs, *scores;
    int n_threads;
    float *block;
} llama_ctx;

/* Deltas (LoRA unmerged, ...) applied at the linear sites; may be NULL. */
typedef struct llama_run {
    delta_set *deltas;
    const param_block *pb;
} llama_run;

/* path: an HF model directory or a .gguf file. */
peftc_status llama_load(const char *path, llama_model **out, peftc_error *err);
/* LLAMA_LOAD_DEQUANT: GGUF weights dequantised to fp32 copies at load (the
 * tests compare that path with the HF directory of the same weights). */
/* LLAMA_LOAD_NF4: the linear weights of every block (q, k, v, o, gate, up,
 * down) of an F32/F16/BF16 safetensors base quantised to NF4 with double
 * quantisation (type QUANT_TYPE_NF4, data a const nf4_tensor *), the fp32
 * pages released; embeddings, lm_head and norms stay. GGUF bases: refused
 * (their weights are quantised already). */
enum { LLAMA_LOAD_DEQUANT = 1, LLAMA_LOAD_NF4 = 2 };
peftc_status llama_load_ex(const char *path, unsigned flags, llama_model **out, peftc_error *err);
void llama_free(llama_model *m);
const llama_config *llama_model_config(const llama_model *m);
/* The GGUF file the model came from, or NULL for an HF directory: its
 * metadata holds the tokenizer (tokenizer.ggml.*). Owned by the model. */
const gguf_file *llama_model_gguf(const llama_model *m);
/* Block i's weights (merges re-point them) and the token embedding's type. */
llama_layer *llama_model_layer(llama_model *m, int i);
uint32_t llama_model_embd_type(const llama_model *m);

/* KV cache for n_ctx positions (<= max_position is not required) and
 * scratch for batches of up to n_batch tokens. */
peftc_status llama_ctx_init(llama_ctx *c, const llama_model *m, int n_ctx, int n_batch, peftc_error *err);
void llama_ctx_free(llama_ctx *c);

/* Runs n tokens (1 <= n <= n_batch) of one sequence at positions
 * pos .. pos+n-1 (the cache holds positions < pos from earlier calls).
 * logits: (vocab) for the last token, or (n, vocab) if all_logits.
 * PEFTC_ERR_INPUT if pos + n > n_ctx, n > n_batch or an id is out of range. */
peftc_status llama_forward(llama_model *m, llama_ctx *c, const llama_run *run, const int32_t *ids, int n,
                           int pos, float *logits, int all_logits, peftc_error *err);

/* out (N, w->out) = in (N, w->in) @ W^T, whatever W's type (F32: BLAS sgemm;
 * F16/BF16/quantised: quant_matmul, 8-bit activations for the quantised
 * types). 0, or a QUANT_E* code (nothing done). */
int llama_linear(float *out, const float *in, const llama_weight *w, int N);

#endif
