/* task_lm.h: a decoder fitted for causal language modelling with a PEFT
 * method (internal): base model + method (trainable block, deltas), the loss
 * the mean cross-entropy of the next token over the target positions.
 *
 * The logits are never materialised for the whole batch (B * T * vocab
 * floats: 200 MB at 8 x 128 on a 49152-token vocabulary): the rows that carry
 * a loss are gathered and run through the model's head LM_TASK_CHUNK rows at a
 * time, each chunk's softmax gradient taken at once and sent back through the
 * head into d_hidden. */
#ifndef PEFTC_TASK_LM_H
#define PEFTC_TASK_LM_H

#include "model/model.h"
#include "peft/methods.h"
#include "peft/prefix.h"
#include "peft/prompt.h"

#define LM_TASK_CHUNK 256

typedef struct lm_task {
    peftc_model *m;
    method_opts mo;
    param_block pb;
    delta_set ds;
    float **grads;           /* base tensors' gradient slots (the family's order; NULL = frozen) */
    model_acts *acts;
    float *d_hidden;         /* (B*T, C) */
    float *h_rows, *d_rows;  /* (CHUNK, C): gathered hidden rows and their gradients */
    float *logits;           /* (CHUNK, vocab) */
    int *rows;               /* (B*T): flat positions whose next token is a target */
    int cap_B, cap_T, train;
    int recompute;           /* gradient checkpointing (MODEL_KEEP_RECOMPUTE), set before lm_task_alloc */
    /* virtual tokens (prompt tuning, P-tuning): n_virt of them before every
     * row, as PEFT's causal-LM prompt learning puts them; the batch is
     * rewritten into (B, n_virt + T) rows (ids -(k+1), no targets there) */
    prompt_module prompt;
    int n_virt;
    int32_t *v_ids, *v_seg;
    uint8_t *v_tgt;
    int *v_lens;
    prefix_module prefix;    /* prefix keys/values (prefix tuning, P-tuning v2, MAM) */
    adalora_state ada;       /* AdaLoRA: the rank allocator (its EMAs and mask in pb.state, checkpointed) */
    int64_t row0;            /* data parallelism: the next batch's first row in the whole batch (model_run.row0) */
    void (*layer_done)(void *ctx, int layer);   /* model_run.layer_done of a training step (NULL: none) */
    void *layer_done_ctx;
} lm_task;

/* The method must fit a decoder (no BitFit on a bias-free family, no
 * UniPELT prefix gate yet). */
peftc_status lm_task_init(lm_task *t, peftc_model *m, const method_opts *mo, peftc_rng *rng, peftc_error *err);
peftc_status lm_task_alloc(lm_task *t, int B, int T, int train, peftc_error *err);
void lm_task_free(lm_task *t);

/* One padded batch: ids, target (B*T; target[b*T+t] = 1: token t is
 * predicted from the tokens before it), seg (B*T or NULL: packed rows), lens.
 * Returns the summed loss over the targets and their count in *n_targets.
 * With grad_scale != 0 (train): the gradients of grad_scale * summed loss are
 * accumulated into the parameter block (the forward, the head's gradient
 * chunk by chunk and the model's backward in one call). */
double lm_task_step(lm_task *t, const int32_t *ids, const uint8_t *target, const int32_t *seg, const int *lens, int B,
                    int T, float grad_scale, peftc_rng *rng, long *n_targets);

int64_t lm_task_trainable_count(const lm_task *t);

/* Writes dir/adapter_config.json and dir/adapter_model.safetensors in HF
 * PEFT's CAUSAL_LM layout (LoRA; AdaLoRA with its tensors cut to the rank
 * pattern as PEFT's save_pretrained cuts them; prefix tuning, P-tuning v2, prompt tuning
 * and P-tuning folded to prompt_embeddings), other methods with peft_type
 * PEFTC and the parameter block as it trains. base: base_model_name_or_path;
 * gguf_rows: the base is a GGUF file (q/k rows in ggml's order, turned back
 * to Hugging Face's in what is saved). */
peftc_status lm_task_save_adapter(lm_task *t, const char *dir, const char *base, int gguf_rows, peftc_error *err);

/* Starts from dir's adapter_model.safetensors (peftc train --init-adapter):
 * every trainable tensor by its saved name and shape, every tensor of the
 * file one of them; gguf_rows: q/k B rows turned from Hugging Face's order
 * to the GGUF base's (the inverse of lm_task_save_adapter's). */
peftc_status lm_task_load_weights(lm_task *t, const char *dir, int gguf_rows, peftc_error *err);

#endif
