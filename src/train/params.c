/* params.c: the trainable-parameter block. */
#include "train/params.h"

#include <stdlib.h>
#include <string.h>

int params_add(param_block *pb, const char *name, int ndim, const int64_t *shape, int no_decay)
{
    if (pb->n == pb->cap) {
        int cap = pb->cap ? 2 * pb->cap : 64;
        param_entry *e = realloc(pb->e, (size_t)cap * sizeof *e);
        if (!e) return -1;
        pb->e = e;
        pb->cap = cap;
    }
    param_entry *e = &pb->e[pb->n];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = ndim;
    e->numel = 1;
    for (int d = 0; d < ndim; d++) { e->shape[d] = shape[d]; e->numel *= (size_t)shape[d]; }
    /* 16-float alignment keeps every tensor on its own cache lines */
    e->offset = pb->total;
    pb->total += (e->numel + 15) & ~(size_t)15;
    e->no_decay = no_decay;
    e->layer = -1;   /* the declarer of a layer's tensor says so (params_set_layer) */
    return pb->n++;
}

peftc_status params_alloc(param_block *pb, peftc_error *err)
{
    size_t bytes = (pb->total ? pb->total : 16) * sizeof(float), gbytes = (pb->total + PARAM_G_TAIL) * sizeof(float);
    pb->p = peftc_alloc_aligned(bytes);
    pb->g = peftc_alloc_aligned(gbytes);
    pb->m = peftc_alloc_aligned(bytes);
    pb->v = peftc_alloc_aligned(bytes);
    if (!pb->p || !pb->g || !pb->m || !pb->v)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate %zu trainable parameters", pb->total);
    memset(pb->p, 0, bytes);
    memset(pb->g, 0, gbytes);
    memset(pb->m, 0, bytes);
    memset(pb->v, 0, bytes);
    return PEFTC_OK;
}

void params_set_layer(param_block *pb, int first, int layer)
{
    for (int i = first; i < pb->n; i++) pb->e[i].layer = layer;
}

float *params_value(const param_block *pb, int idx) { return pb->p + pb->e[idx].offset; }
float *params_grad(const param_block *pb, int idx) { return pb->g + pb->e[idx].offset; }

int params_find(const param_block *pb, const char *name)
{
    for (int i = 0; i < pb->n; i++)
        if (strcmp(pb->e[i].name, name) == 0) return i;
    return -1;
}

void params_free(param_block *pb)
{
    free(pb->e);
    free(pb->p);
    free(pb->g);
    free(pb->m);
    free(pb->v);
    memset(pb, 0, sizeof *pb);
}
