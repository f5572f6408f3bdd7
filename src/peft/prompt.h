/* prompt.h: virtual tokens — prompt tuning (Lester et al.: soft prompt before
 * the input), P-tuning (Liu et al.: virtual tokens at template positions,
 * produced by a prompt encoder). Virtual token k appears in a token-id
 * sequence as the id -(k+1); the model takes its word vector from the prompt
 * table (see model_run.virt). */
#ifndef PEFTC_PROMPT_H
#define PEFTC_PROMPT_H

#include "core/core.h"
#include "core/rng.h"
#include "train/params.h"

typedef enum prompt_encoder { PROMPT_ENC_NONE, PROMPT_ENC_MLP, PROMPT_ENC_LSTM } prompt_encoder;

#define LSTM_LAYERS 2   /* PEFT's encoder_num_layers default */

#define TEMPLATE_MAX 128
typedef enum template_item { TPL_VIRT, TPL_TEXT, TPL_PAIR } template_item;

typedef struct prompt_spec {
    int n_virtual;            /* 0: no virtual tokens */
    int before_cls;           /* prompt tuning (PEFT): all virtual tokens precede [CLS] */
    int n_items;              /* P-tuning template, between [CLS] and the last [SEP] */
    template_item items[TEMPLATE_MAX];
    prompt_encoder encoder;
    int hidden;               /* the MLP encoder's width */
} prompt_spec;

/* "P P {text} P {pair}": P is one virtual token, {text} the input, {pair}
 * the second sentence. The input placeholder is required. */
peftc_status template_parse(const char *text, prompt_spec *ps, peftc_error *err);
void template_format(const prompt_spec *ps, char *out, size_t cap);

/* Rewrites a tokenizer output ([CLS] a [SEP] (b [SEP])) with its type ids into
 * the sequence with virtual tokens; cap bounds the output. Returns the length. */
int template_apply(const prompt_spec *ps, const int32_t *ids, const int32_t *tts, int n, int32_t *out_ids,
                   int32_t *out_tts, int cap);

/* The prompt module's parameters and work buffers. */
typedef struct prompt_module {
    prompt_spec spec;
    int C;
    int p_emb;                /* (P,C): the prompt (no encoder) or the encoder's input */
    int p_w1, p_b1, p_w2, p_b2, p_w3, p_b3;   /* MLP: C->h->h->C; LSTM head: 2h->2h->C (w1 unused) */
    /* LSTM (bidirectional, LSTM_LAYERS layers): [layer][dir] W_ih (4h,in), W_hh (4h,h), b_ih, b_hh */
    int p_wih[LSTM_LAYERS][2], p_whh[LSTM_LAYERS][2], p_bih[LSTM_LAYERS][2], p_bhh[LSTM_LAYERS][2];
    float *lstm_gates;        /* [layer][dir] (P, 4h): i f g o after their nonlinearities */
    float *lstm_c, *lstm_h;   /* [layer][dir] (P, h) cell and hidden states */
    float *lstm_out;          /* [layer] (P, 2h) the layer's output (both directions) */
    float *lstm_d;            /* scratch for backward */
    float *out, *d_out;       /* (P,C) virtual token vectors and their gradient */
    float *h1, *a1, *h2, *a2; /* (P,h) encoder activations */
    float *d_h;               /* (P,h) scratch */
    float *d_h2;
} prompt_module;

peftc_status prompt_declare(prompt_module *pm, const prompt_spec *ps, int C, param_block *pb, peftc_error *err);
peftc_status prompt_alloc(prompt_module *pm, peftc_error *err);
/* init: rows of the word embeddings picked at random (wte (V,C)) or copied from init_ids. */
void prompt_init(prompt_module *pm, param_block *pb, const float *wte, int V, const int32_t *init_ids, int n_init, peftc_rng *rng);
/* out = the virtual token vectors (through the encoder when there is one). */
void prompt_forward(prompt_module *pm, const param_block *pb);
/* Backward from pm->d_out into the parameters' gradients. */
void prompt_backward(prompt_module *pm, param_block *pb);
void prompt_free(prompt_module *pm);

#endif
