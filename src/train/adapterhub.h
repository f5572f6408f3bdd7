/* adapterhub.h: AdapterHub's (`adapters`) bottleneck adapters, LoRA and (IA)^3
 * and their classification head, both ways (internal).
 *
 * AdapterHub saves save_adapter(dir, name, with_head=True) as
 * adapter_config.json ({"config": BnConfig fields, "hidden_size",
 * "model_class", "model_name", "model_type", "name", "version"}),
 * adapter.safetensors (`bert.encoder.layer.N.{attention.output|output}.
 * adapters.NAME.{adapter_down.0,adapter_up}.{weight,bias}` [, `.scaling`];
 * LoRA / (IA)^3: `bert.encoder.layer.N.{attention.self.{query,key,value}|
 * intermediate.dense|output.dense}.loras.NAME.{lora_A,lora_B}`),
 * head_config.json and model_head.safetensors (`heads.NAME.{1,4}.*`). */
#ifndef PEFTC_ADAPTERHUB_H
#define PEFTC_ADAPTERHUB_H

#include <jansson.h>
#include "train/task.h"

/* Whether a parsed adapter_config.json is AdapterHub's (no peft_type, a
 * "config" object and model_class or an "adapters." version). */
int ahub_config_is(json_t *cfg);
/* The bottleneck or LoRA config as peftc deltas / LoRA (mo->ahub set, the adapter's name in
 * mo->ahub_name); anything AdapterHub computes otherwise, or a field not
 * known here, is PEFTC_ERR_UNSUPPORTED naming path and the field. */
peftc_status ahub_parse_config(json_t *cfg, const char *path, method_opts *mo, peftc_error *err);
/* dir/head_config.json: a two-layer tanh classification head on [CLS];
 * its label names (label2id ordered by id, else LABEL_i). */
peftc_status ahub_read_labels(const char *dir, label_set *labels, peftc_error *err);
/* dir/adapter.safetensors + dir/model_head.safetensors into t's parameters;
 * a missing, misshapen or extra tensor is an error naming file and tensor. */
peftc_status ahub_load_weights(task *t, const char *dir, peftc_error *err);

#endif
