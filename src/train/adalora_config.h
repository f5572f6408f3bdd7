/* adalora_config.h: the AdaLoraConfig fields of a saved AdaLoRA adapter as
 * HF PEFT's save_pretrained writes them. One writer for the encoder tasks
 * (task.c) and the causal-LM task (task_lm.c), so that both save the same
 * config; the tensors beside it are cut by adalora_compact (peft/adalora.h). */
#ifndef PEFTC_ADALORA_CONFIG_H
#define PEFTC_ADALORA_CONFIG_H

#include "peft/methods.h"

#include <jansson.h>

/* Sets LoraConfig's fields, the schedule and rank_pattern
 * ({"<module>.lora_E": [kept...]}, null before any masking) in cfg (the
 * caller sets peft_type, task_type and the base). a: the run's allocator
 * (its resolved options and last pattern); when off, mo->ada and no pattern.
 * target_modules: the "target_modules" value, owned by cfg afterwards. */
void adalora_config_json(json_t *cfg, const adalora_state *a, const method_opts *mo, json_t *target_modules);

#endif
