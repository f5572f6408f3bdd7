/* adalora_config.c: AdaLoraConfig as PEFT saves it (adalora_config.h). */
#include "train/adalora_config.h"

#include <stdio.h>
#include <stdlib.h>

/* a float option as the decimal it was given as (0.85, not 0.850000024) */
static json_t *json_float(float x)
{
    char b[32];
    snprintf(b, sizeof b, "%.7g", x);
    return json_real(strtod(b, NULL));
}

void adalora_config_json(json_t *cfg, const adalora_state *a, const method_opts *mo, json_t *target_modules)
{
    const peftc_adalora_opts *o = a->on ? &a->o : &mo->ada;
    json_object_set_new(cfg, "r", json_integer(8));   /* LoraConfig's default: AdaLoRA ignores r */
    json_object_set_new(cfg, "init_r", json_integer(o->init_r));
    json_object_set_new(cfg, "target_r", json_integer(o->target_r));
    json_object_set_new(cfg, "tinit", json_integer(o->tinit));
    json_object_set_new(cfg, "tfinal", json_integer(o->tfinal));
    json_object_set_new(cfg, "deltaT", json_integer(o->delta_t));
    json_object_set_new(cfg, "beta1", json_float(o->beta1));
    json_object_set_new(cfg, "beta2", json_float(o->beta2));
    json_object_set_new(cfg, "orth_reg_weight", json_float(o->orth_reg_weight));
    json_object_set_new(cfg, "total_step", o->total_step > 0 ? json_integer(o->total_step) : json_null());
    json_object_set_new(cfg, "lora_alpha", json_float(mo->alpha));
    json_object_set_new(cfg, "lora_dropout", json_float(mo->dropout));
    json_object_set_new(cfg, "use_rslora", json_false());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "target_modules", target_modules);
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out", json_false());
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "layers_to_transform", json_null());
    json_object_set_new(cfg, "alpha_pattern", json_object());
    if (!a->on || a->flags[0] == 0) { json_object_set_new(cfg, "rank_pattern", json_null()); return; }
    json_t *rp = json_object();
    for (int i = 0; i < a->n_mod; i++) {
        const adalora_module *m = &a->mod[i];
        json_t *row = json_array();
        for (int k = 0; k < m->r; k++) json_array_append_new(row, json_boolean(a->keep[m->tri + k] != 0.0f));
        json_object_set_new(rp, m->key, row);
    }
    json_object_set_new(cfg, "rank_pattern", rp);
}
