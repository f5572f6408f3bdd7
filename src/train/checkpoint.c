/* checkpoint.c: a training run's resumable state in one safetensors file
 * (checkpoint.safetensors in the run directory): the trainable parameters,
 * AdamW's moments, and the loop position as metadata. Independent of the task
 * kind: it sees only the parameter block. Written atomically (st_write_f32:
 * temp + rename). */
#include "train/checkpoint.h"
#include "io/safetensors.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

peftc_status checkpoint_save(const char *out_dir, const param_block *pb, const char *method, const char *model,
                             const train_state *s, uint64_t run_sig, peftc_error *err)
{
    char path[4096], sig[32], step[32], epoch[32], pos[32], rng[32];
    peftc_status rc = peftc_path_join(path, sizeof path, out_dir, "checkpoint.safetensors", err);
    if (rc) return rc;
    snprintf(sig, sizeof sig, "%016" PRIx64, run_sig);
    snprintf(step, sizeof step, "%d", s->step);
    snprintf(epoch, sizeof epoch, "%d", s->epoch);
    snprintf(pos, sizeof pos, "%d", s->pos);
    snprintf(rng, sizeof rng, "%" PRIu64, s->rng);
    const char *meta[] = {"peftc_signature", sig, "step", step, "epoch", epoch, "pos", pos, "rng", rng,
                          "method", method, "model", model, NULL};
    st_write_item items[3 + PARAM_STATE_MAX] = {
        {"params", 1, {(int64_t)pb->total}, pb->p},
        {"adam_m", 1, {(int64_t)pb->total}, pb->m},
        {"adam_v", 1, {(int64_t)pb->total}, pb->v},
    };
    int n = 3;
    for (int i = 0; i < pb->n_state && i < PARAM_STATE_MAX; i++)   /* the method's own state (AdaLoRA's EMAs) */
        items[n++] = (st_write_item){pb->state[i].name, 1, {(int64_t)pb->state[i].numel}, pb->state[i].data};
    return st_write_f32(path, items, n, meta, err);
}

peftc_status checkpoint_load(const char *resume_dir, param_block *pb, const char *method, uint64_t run_sig,
                             train_state *s, peftc_error *err)
{
    char path[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, resume_dir, "checkpoint.safetensors", err);
    if (rc) return rc;
    if (!peftc_file_exists(path)) return peftc_fail(err, PEFTC_ERR_IO, "%s: no checkpoint to resume from (train with --save-every N)", path);
    peftc_safetensors *st;
    if ((rc = peftc_safetensors_open(path, &st, err))) return rc;
    char sig[32];
    snprintf(sig, sizeof sig, "%016" PRIx64, run_sig);
    const char *ssig = st_metadata(st, "peftc_signature"), *meth = st_metadata(st, "method");
    const st_tensor *p = st_find(st, "params"), *m = st_find(st, "adam_m"), *v = st_find(st, "adam_v");
    const char *vals[4] = {st_metadata(st, "step"), st_metadata(st, "epoch"), st_metadata(st, "pos"), st_metadata(st, "rng")};
    if (!ssig || !meth || !p || !m || !v || !vals[0] || !vals[1] || !vals[2] || !vals[3])
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a peftc checkpoint", path);
    else if (strcmp(meth, method))
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint of method '%s', but --method is '%s'", path, meth, method);
    else if (strcmp(ssig, sig) || (size_t)p->numel != pb->total || (size_t)m->numel != pb->total || (size_t)v->numel != pb->total ||
             p->dtype != ST_F32)
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint from another model, method options, batch size or seed", path);
    for (int i = 0; i < pb->n_state && !rc; i++) {
        const st_tensor *x = st_find(st, pb->state[i].name);
        if (!x || x->dtype != ST_F32 || (size_t)x->numel != pb->state[i].numel)
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint lacks %s of %zu values (saved by another version or method options)",
                            path, pb->state[i].name, pb->state[i].numel);
        else if (pb->state[i].match && memcmp(x->data, pb->state[i].data, pb->state[i].numel * sizeof(float)))
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: checkpoint of other %s (resume with the options it was started with)",
                            path, pb->state[i].name);
    }
    if (!rc) {
        for (int i = 0; i < pb->n_state; i++)
            if (!pb->state[i].match) memcpy(pb->state[i].data, st_find(st, pb->state[i].name)->data, pb->state[i].numel * sizeof(float));
        memcpy(pb->p, p->data, pb->total * sizeof(float));
        memcpy(pb->m, m->data, pb->total * sizeof(float));
        memcpy(pb->v, v->data, pb->total * sizeof(float));
        s->step = atoi(vals[0]);
        s->epoch = atoi(vals[1]);
        s->pos = atoi(vals[2]);
        s->rng = strtoull(vals[3], NULL, 10);
    }
    peftc_safetensors_free(st);
    return rc;
}

