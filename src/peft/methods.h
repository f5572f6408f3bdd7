/* methods.h: the named methods as presets — which base tensors train and
 * which delta modules are placed at which sites. */
#ifndef PEFTC_METHODS_H
#define PEFTC_METHODS_H

#include "model/bert.h"
#include "peft/delta.h"
#include "train/params.h"

typedef enum method_kind { METHOD_FULL, METHOD_LORA, METHOD_BITFIT } method_kind;

typedef struct method_opts {
    method_kind kind;
    int r;
    float alpha;
    float dropout;
    int rslora;
    unsigned targets;   /* bit (1 << site_id) per LoRA target */
} method_opts;

const char *method_name(method_kind k);
int method_parse(const char *name, method_kind *k);
void method_defaults(method_opts *mo, method_kind k);
/* "query,value" / "attn.q,attn.v" / "query,key,value,attention.output.dense,intermediate.dense,output.dense" */
peftc_status lora_parse_targets(const char *list, unsigned *mask, peftc_error *err);
/* The Hugging Face module name of a linear site (query, key, ...). */
const char *lora_module_name(site_id s);
float lora_scale(const method_opts *mo);

/* Declares the method's trainable tensors (base copies and deltas) in pb/ds,
 * with PEFT-style names (base_model.model.bert....). */
peftc_status method_declare(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds, peftc_error *err);
/* After params_alloc: copies trainable base tensors into pb, re-points the
 * model at them, fills g (NULL for frozen) and initialises the deltas. */
peftc_status method_bind(peftc_model *m, const method_opts *mo, param_block *pb, delta_set *ds,
                         bert_grads *g, peftc_rng *rng, peftc_error *err);
/* LoRA merge (sign +1) / unmerge (-1): W += sign * s * B A for every LoRA delta. */
peftc_status lora_merge(peftc_model *m, const method_opts *mo, const param_block *pb, const delta_set *ds,
                        int sign, peftc_error *err);

#define PEFT_PREFIX "base_model.model.bert."

#endif
