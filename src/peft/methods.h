/* methods.h: the named methods as presets — which base tensors train and
 * which delta modules are placed at which sites of every layer. */
#ifndef PEFTC_METHODS_H
#define PEFTC_METHODS_H

#include "model/model.h"
#include "peft/delta.h"
#include "peft/adalora.h"
#include "peft/prompt.h"
#include "peft/prefix.h"
#include "peft/fusion.h"
#include "train/params.h"

typedef enum base_train { BASE_NONE, BASE_ALL, BASE_BIAS } base_train;

#define METHOD_MAX_DELTAS 16
#define ADALORA_MAX_LAYERS 256   /* per-module ranks of a loaded AdaLoRA adapter */

typedef struct method_opts {
    char name[32];            /* the preset ("lora", "adapter-houlsby", "custom", ...) */
    base_train base;          /* which base tensors train */
    int train_norms;          /* the layers' LayerNorms train too (Houlsby) */
    int n_deltas;             /* delta modules placed in every layer */
    delta_spec deltas[METHOD_MAX_DELTAS];
    /* LoRA: its deltas are generated from these (PEFT names and config) */
    int lora;
    int r;
    float alpha;
    float dropout;
    int rslora;
    unsigned targets;         /* bit (1 << site_id) per LoRA (or AdaLoRA) target */
    /* AdaLoRA: SVD deltas of rank ada.init_r on the targets (r = init_r, alpha, dropout, targets above) */
    int adalora;
    peftc_adalora_opts ada;
    int ada_ranks;            /* a loaded adapter: each module's kept rank (its rank_pattern) in ada_rank */
    unsigned short ada_rank[ADALORA_MAX_LAYERS][SITE_COUNT];
    prompt_spec prompt;       /* virtual tokens (prompt tuning, P-tuning) */
    prefix_spec prefix;       /* prefix keys/values (prefix tuning, P-tuning v2, MAM, UniPELT) */
    fusion_spec fusion;       /* AdapterFusion: the adapters fused (fusion.n >= 2), else n 0 */
    int ahub;                 /* an AdapterHub adapter (train/adapterhub.h): its head's dense layer is its own, not the pooler */
    char ahub_name[64];       /* its name (tensor keys adapters.NAME.*, heads.NAME.*) */
} method_opts;

/* Options a user gives with --method NAME; zero/NULL means the preset's default. */
typedef struct method_args {
    int r;                    /* LoRA rank, adapter bottleneck */
    float alpha, lora_dropout;
    int lora_dropout_set;     /* lora_dropout given (qlora's default is 0.1, not 0) */
    int rslora;
    const char *targets;      /* LoRA target modules */
    const char *site;         /* parallel-adapter: "ffn" or "attn" */
    float scale;              /* scaled-parallel-adapter's s */
    int learned_scale;
    const char *const *deltas;/* custom: --delta specs */
    int n_deltas;
    int num_virtual;          /* prompt, ptuning: virtual tokens */
    const char *template_text;/* ptuning: "P P {text} P {pair}" */
    const char *encoder;      /* ptuning: "mlp" (default) or "none" */
    int encoder_hidden;
    int prefix_len;           /* prefix, ptuning-v2, mam, unipelt */
    int prefix_projection;    /* 1 / -1: reparameterise with an MLP while training or not; 0: the preset's default */
    const peftc_adalora_opts *adalora;   /* adalora (NULL: PEFT's defaults) */
    const char *fuse_adapters;/* fusion: "a=DIR,b=DIR,..." */
    int fusion_temperature;   /* fusion: anneal the softmax temperature 50 -> 1 */
} method_args;

/* Builds a preset for a model (widths decide the default bottlenecks). */
peftc_status method_build(const char *name, const method_args *args, const peftc_config *cfg,
                          method_opts *mo, peftc_error *err);
/* The preset's default learning rate (see the table in methods.c). */
float method_default_lr(const method_opts *mo);
/* The base storage a preset asks the loader for when the run does not say
 * (qlora: NF4; every other preset: the weights as stored). The method only
 * names it: the model loader does the quantising. */
peftc_base_quant method_base_quant(const char *name);
/* Prints the presets, what each expands to and its parameter formula. */
void method_list(char *out, size_t cap);

/* "query,value" / "attn.q,attn.v" / "query,key,value,attention.output.dense,intermediate.dense,output.dense":
 * site names, peftc's aliases, and every registered family's target_modules
 * names (an adapter config is read before its model is loaded). */
peftc_status lora_parse_targets(const char *list, unsigned *mask, peftc_error *err);
/* The PEFT target_modules name of a linear site in a family (query, key, ...). */
const char *lora_module_name(const model_family *f, site_id s);
float lora_scale(const method_opts *mo);
/* AdaLoRA's SVDLinear scale: lora_alpha / (ranknum + 1e-5), ranknum = init_r */
float adalora_scale(const method_opts *mo);
/* The (layer, site) of a rank_pattern key ("bert.encoder.layer.3.attention.self.value.lora_E")
 * in any registered family; 1 if recognised. */
int adalora_key_site(const char *key, int *layer, site_id *site);

/* Declares the method's trainable tensors (base copies and deltas) in pb/ds,
 * with PEFT-style names (the family's peft_prefix, then its module paths). */
peftc_status method_declare(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds, peftc_error *err);
/* After params_alloc: copies trainable base tensors into pb, re-points the
 * model at them, fills grads (one slot per tensor of the family's list:
 * method_grad_slots; NULL for frozen) and initialises the deltas. */
peftc_status method_bind(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds,
                         float **grads, peftc_rng *rng, peftc_error *err);
/* The number of gradient slots method_bind fills (the model's tensor count). */
int method_grad_slots(peftc_model *m);
/* Merge (sign +1) / unmerge (-1) the mergeable deltas into the base weights:
 * LoRA W += s B A; (IA)^3 on k/v: W, b scaled by l; on the FFN activation:
 * the down projection's columns scaled by l. Unmerge divides back. */
peftc_status method_merge(peftc_model *m, const method_opts *mo, const param_block *pb, const delta_set *ds,
                          int sign, peftc_error *err);
/* Whether every delta of the method can be merged. */
int method_mergeable(const method_opts *mo);

#endif
