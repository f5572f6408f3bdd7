/* adapter_formats.h: LoRA adapters of a decoder in the two formats of the
 * ecosystem, read into one in-memory form and written to llama.cpp's.
 *   - HF PEFT (a directory: adapter_config.json + adapter_model.safetensors,
 *     keys base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight),
 *     with rsLoRA, rank_pattern and alpha_pattern (PEFT's own matching:
 *     the first key K with re.match("(.*\.)?(K)$", module path)); and
 *     PEFT's ADALORA adapters (keys ...q_proj.lora_A / lora_B / lora_E, each
 *     module at its rank_pattern's kept rank), read as the LoRA pair
 *     (B, diag(E) A) at SVDLinear's scale lora_alpha / (init_r + 1e-5); and
 *     PEFT's IA3 adapters (...k_proj.ia3_l) as (IA)^3 vectors;
 *   - llama.cpp GGUF LoRA (general.type adapter, adapter.type lora,
 *     adapter.lora.alpha, blk.N.attn_q.weight.lora_a ne [in, r] / .lora_b ne
 *     [r, out]; llama.cpp scales every pair by alpha / r, r = lora_b ne[0]).
 * Every tensor of the file must be a factor this model applies: an unknown
 * or unpaired tensor, a wrong shape or layer, is an error naming it. */
#ifndef PEFTC_ADAPTER_FORMATS_H
#define PEFTC_ADAPTER_FORMATS_H

#include "model/decoder.h"

typedef struct lora_factor {
    int layer;
    site_id site;
    int r, in, out;
    float scale;        /* the factor's whole scale: user scale * alpha / r (or / sqrt r) */
    float *a;           /* (r, in) */
    float *b;           /* (out, r), in the model's row order */
} lora_factor;

/* An (IA)^3 vector of PEFT's IA3: it multiplies the output channels of the
 * linear layer at (layer, site) (PEFT's ia3_l (out, 1)), or, for PEFT's
 * feedforward_modules, its input channels (ia3_l (1, in)). */
typedef struct ia3_vector {
    int layer;
    site_id site;
    int input;          /* 1: scales the layer's input, 0: its output */
    int n;              /* in or out */
    float *l;           /* output channels in the model's row order (q/k of a GGUF base permuted) */
} ia3_vector;

typedef struct lora_factors {
    lora_factor *f;
    int n;
    float alpha;        /* the adapter's lora_alpha (GGUF: adapter.lora.alpha) */
    ia3_vector *v;      /* an IA3 adapter's vectors (then n is 0) */
    int nv;
} lora_factors;

/* 1 if path is a GGUF file (by its magic). */
int adapter_is_gguf(const char *path);
/* Reads a PEFT LoRA directory or a GGUF LoRA file for decoder dec. */
peftc_status lora_read(const char *path, const decoder *dec, float user_scale, lora_factors *out, peftc_error *err);
void lora_factors_free(lora_factors *lf);
/* Writes lf as a GGUF LoRA (an IA3 adapter is refused: llama.cpp's
 * adapters are LoRA only) for dec, which must be a GGUF base (its q/k row
 * order is the one the file needs). adapter.lora.alpha = lf->alpha (or 1
 * when 0); each B is multiplied by scale / (alpha / r) so llama.cpp's
 * alpha / r gives each factor its own trained scale (rsLoRA, alpha_pattern,
 * rank_pattern). */
peftc_status lora_write_gguf(const lora_factors *lf, const decoder *dec, const char *out_path, peftc_error *err);

#endif
