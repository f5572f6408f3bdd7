/* compose.c: composition blocks over named adapters (compose.h). */
#include "peft/compose.h"
#include "kernels/kernels.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ parser */

typedef struct parser {
    const char *text, *p;
    const char *const *names;
    int n_names;
    compose_tree *t;
    peftc_error *err;
} parser;

static void skip_ws(parser *ps) { while (*ps->p == ' ' || *ps->p == '\t') ps->p++; }

static int is_name_start(char ch) { return isalpha((unsigned char)ch) || ch == '_'; }
static int is_name_char(char ch) { return isalnum((unsigned char)ch) || ch == '_' || ch == '-' || ch == '.'; }

static peftc_status perr(parser *ps, const char *what)
{
    return peftc_fail(ps->err, PEFTC_ERR_INPUT, "--compose '%s': %s at offset %d", ps->text, what, (int)(ps->p - ps->text));
}

static int new_node(parser *ps, compose_kind k)
{
    if (ps->t->n_nodes >= COMPOSE_MAX_NODES) return -1;
    int id = ps->t->n_nodes++;
    memset(&ps->t->node[id], 0, sizeof ps->t->node[id]);
    ps->t->node[id].kind = k;
    ps->t->node[id].adapter = -1;
    return id;
}

/* a non-negative integer of at most 9 digits */
static int parse_int(parser *ps, int *out)
{
    skip_ws(ps);
    if (!isdigit((unsigned char)*ps->p)) return 0;
    long v = 0;
    int nd = 0;
    while (isdigit((unsigned char)*ps->p)) {
        if (++nd > 9) return 0;
        v = v * 10 + (*ps->p++ - '0');
    }
    *out = (int)v;
    return 1;
}

static peftc_status parse_expr(parser *ps, int depth, int *out);

static peftc_status parse_block(parser *ps, compose_kind kind, const char *kw, int depth, int *out)
{
    int id = new_node(ps, kind);
    if (id < 0) return perr(ps, "too many blocks (at most 64)");
    compose_node *nd = &ps->t->node[id];
    int n_weights = 0;
    float w[COMPOSE_MAX_CHILD];
    ps->p++;   /* '(' */
    for (;;) {
        skip_ws(ps);
        char ch = *ps->p;
        if (kind == CN_AVERAGE && nd->n > 0 && (isdigit((unsigned char)ch) || ch == '.' || ch == '-' || ch == '+')) {
            char *end;
            double v = strtod(ps->p, &end);
            if (end == ps->p || !(v > -1e6 && v < 1e6)) return perr(ps, "average: a weight must be a number");
            if (n_weights >= COMPOSE_MAX_CHILD) return perr(ps, "average: too many weights");
            w[n_weights++] = (float)v;
            ps->p = end;
        } else {
            if (n_weights) return perr(ps, "average: the weights come after every adapter");
            if (nd->n >= COMPOSE_MAX_CHILD) return perr(ps, "too many children in one block (at most 16)");
            int c;
            peftc_status rc = parse_expr(ps, depth + 1, &c);
            if (rc) return rc;
            nd = &ps->t->node[id];
            nd->child[nd->n] = c;
            skip_ws(ps);
            if (kind == CN_BATCHSPLIT) {
                if (*ps->p != ':') return perr(ps, "batchsplit: expected ':N' (examples of this child)");
                ps->p++;
                int sz;
                if (!parse_int(ps, &sz) || sz <= 0) return perr(ps, "batchsplit: the size must be a positive integer");
                nd->size[nd->n] = sz;
            }
            nd->n++;
            skip_ws(ps);
            if (kind == CN_SPLIT && *ps->p == '@') {
                ps->p++;
                if (nd->n != 2) return perr(ps, "split: '@K' follows the second of exactly two children");
                if (!parse_int(ps, &nd->split_at) || nd->split_at <= 0) return perr(ps, "split: K must be a positive integer");
                skip_ws(ps);
            }
        }
        skip_ws(ps);
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == ')') { ps->p++; break; }
        return perr(ps, *ps->p ? "expected ',' or ')'" : "unclosed '('");
    }
    char msg[128];
    if (nd->n < 2 && kind != CN_STACK) {
        snprintf(msg, sizeof msg, "%s needs at least two children", kw);
        return perr(ps, msg);
    }
    if (nd->n < 1) return perr(ps, "stack needs at least one child");
    if (kind == CN_SPLIT && (nd->n != 2 || nd->split_at <= 0)) return perr(ps, "split takes two children and @K: split(a,b@K)");
    if (kind == CN_AVERAGE) {
        double sum = 0;
        if (n_weights && n_weights != nd->n) {
            snprintf(msg, sizeof msg, "average: %d weights for %d children", n_weights, nd->n);
            return perr(ps, msg);
        }
        for (int k = 0; k < nd->n; k++) sum += n_weights ? w[k] : 1.0;
        if (!(sum > 1e-12 || sum < -1e-12)) return perr(ps, "average: the weights sum to 0");
        /* AdapterHub's Average normalises its weights to sum 1 */
        for (int k = 0; k < nd->n; k++) nd->weight[k] = (float)((n_weights ? w[k] : 1.0) / sum);
    }
    *out = id;
    return PEFTC_OK;
}

static peftc_status parse_expr(parser *ps, int depth, int *out)
{
    if (depth > COMPOSE_MAX_DEPTH) return perr(ps, "nested too deep (at most 6 levels)");
    skip_ws(ps);
    if (!is_name_start(*ps->p)) return perr(ps, *ps->p ? "expected an adapter name or a block" : "unexpected end");
    const char *s = ps->p;
    while (is_name_char(*ps->p)) ps->p++;
    size_t len = (size_t)(ps->p - s);
    skip_ws(ps);
    if (*ps->p == '(') {
        static const struct { const char *kw; compose_kind k; } blocks[] = {
            {"stack", CN_STACK}, {"average", CN_AVERAGE}, {"batchsplit", CN_BATCHSPLIT},
            {"split", CN_SPLIT}, {"parallel", CN_PARALLEL}};
        for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++)
            if (strlen(blocks[i].kw) == len && !strncmp(s, blocks[i].kw, len))
                return parse_block(ps, blocks[i].k, blocks[i].kw, depth, out);
        ps->p = s;
        return perr(ps, "unknown block (stack, average, batchsplit, split, parallel)");
    }
    for (int i = 0; i < ps->n_names; i++)
        if (strlen(ps->names[i]) == len && !strncmp(s, ps->names[i], len)) {
            int id = new_node(ps, CN_ADAPTER);
            if (id < 0) return perr(ps, "too many blocks (at most 64)");
            ps->t->node[id].adapter = i;
            *out = id;
            return PEFTC_OK;
        }
    char msg[160];
    snprintf(msg, sizeof msg, "no adapter named '%.*s' is loaded", (int)(len > 64 ? 64 : len), s);
    ps->p = s;
    return perr(ps, msg);
}

/* PARALLEL only at the root; below a SPLIT only adapters, stacks and averages
 * (a split's children see parts of examples); the nesting of averages. */
static peftc_status check_node(parser *ps, int id, int is_root, int in_split, int avg, int *max_avg)
{
    const compose_node *nd = &ps->t->node[id];
    if (nd->kind == CN_PARALLEL && !is_root) return perr(ps, "parallel(...) must be the outermost block");
    if (in_split && (nd->kind == CN_BATCHSPLIT || nd->kind == CN_SPLIT || nd->kind == CN_PARALLEL))
        return perr(ps, "inside split(...) only adapters, stack and average can go");
    if (nd->kind == CN_AVERAGE) avg++;
    if (avg > *max_avg) *max_avg = avg;
    for (int k = 0; k < nd->n; k++) {
        peftc_status rc = check_node(ps, nd->child[k], 0, in_split || nd->kind == CN_SPLIT, avg, max_avg);
        if (rc) return rc;
    }
    return PEFTC_OK;
}

peftc_status compose_parse(const char *text, const char *const *names, int n_names, compose_tree *t,
                           peftc_error *err)
{
    memset(t, 0, sizeof *t);
    parser ps = {text, text, names, n_names, t, err};
    if (strlen(text) > 4096) return peftc_fail(err, PEFTC_ERR_INPUT, "--compose: longer than 4096 characters");
    peftc_status rc = parse_expr(&ps, 0, &t->root);
    if (rc) return rc;
    skip_ws(&ps);
    if (*ps.p) return perr(&ps, "unexpected text after the composition");
    int max_avg = 0;
    if ((rc = check_node(&ps, t->root, 1, 0, 0, &max_avg))) return rc;
    t->avg_depth = max_avg;
    return PEFTC_OK;
}

void compose_single(compose_tree *t, int adapter)
{
    memset(t, 0, sizeof *t);
    t->n_nodes = 1;
    t->root = 0;
    t->node[0].kind = adapter >= 0 ? CN_ADAPTER : CN_ROUTE;
    t->node[0].adapter = adapter;
}

/* ----------------------------------------------------------------- runtime */

peftc_status compose_ctx_alloc(compose_ctx *c, size_t rows, size_t maxw, int n_layers, peftc_error *err)
{
    int depth = c->tree ? c->tree->avg_depth : 0;
    free(c->scratch);
    c->scratch = NULL;
    if (depth > 0) {
        if (rows > ((size_t)1 << 40) / (maxw ? maxw : 1) / (size_t)(2 * depth))
            return peftc_fail(err, PEFTC_ERR_NOMEM, "average(...): scratch of %zu rows too large", rows);
        c->scratch = peftc_alloc_aligned(2 * (size_t)depth * rows * maxw * sizeof(float));
        if (!c->scratch) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    c->cap_rows = rows;
    c->maxw = maxw;
    if (!c->rows_applied || c->n_layers != n_layers) {
        free(c->rows_applied);
        c->rows_applied = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *c->rows_applied);
        if (!c->rows_applied) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    c->n_layers = n_layers;
    return PEFTC_OK;
}

void compose_ctx_free(compose_ctx *c)
{
    free(c->scratch);
    free(c->rows_applied);
    c->scratch = NULL;
    c->rows_applied = NULL;
}

/* Any adapter of the subtree acts at (layer, site)? */
static int node_count(const compose_ctx *c, int id, int layer, site_id site)
{
    const compose_node *nd = &c->tree->node[id];
    if (nd->kind == CN_ADAPTER) return delta_count(c->ad[nd->adapter].ds, layer, site);
    if (nd->kind == CN_ROUTE) {
        for (int i = 0; i < c->n_ad; i++) if (delta_count(c->ad[i].ds, layer, site)) return 1;
        return 0;
    }
    for (int k = 0; k < nd->n; k++) if (node_count(c, nd->child[k], layer, site)) return 1;
    return 0;
}

int compose_count(const compose_ctx *c, int layer, site_id site)
{
    if (!c->tree || layer < c->drop_layers) return 0;
    return node_count(c, c->tree->root, layer, site);
}

/* The widths of x and h at a site, from any adapter's delta there. */
static int site_widths(const compose_ctx *c, int layer, site_id site, int *in, int *out)
{
    for (int i = 0; i < c->n_ad; i++) {
        const delta_set *ds = c->ad[i].ds;
        if (!delta_count(ds, layer, site)) continue;
        const delta *d = &ds->d[ds->order[ds->site_first[(size_t)layer * SITE_COUNT + site]]];
        *in = d->in;
        *out = d->out;
        return 1;
    }
    return 0;
}

typedef struct apply_args {
    int layer;
    site_id site;
    int in, out, train;
    peftc_rng *rng;
} apply_args;

/* Applies node id to rows [0, rows) of x (rows,in) and h (rows,out). When the
 * rows are whole examples, ex0 is the first one's index in the batch and nex
 * their count; nex < 0 when they are part of an example (inside a split). */
static void apply(compose_ctx *c, const apply_args *a, int id, const float *x, float *h, size_t rows, int ex0,
                  int nex, int lvl)
{
    const compose_node *nd = &c->tree->node[id];
    size_t T = (size_t)c->T, in = (size_t)a->in, out = (size_t)a->out;
    switch (nd->kind) {
    case CN_ADAPTER: {
        const compose_adapter *ad = &c->ad[nd->adapter];
        if (rows == 0 || !delta_count(ad->ds, a->layer, a->site)) return;
        delta_forward(ad->ds, ad->pb, a->layer, a->site, x, h, (int)rows, a->train, a->rng, 0);   /* compositions run inference only: no dropout to key */
        c->rows_applied[a->layer] += (int64_t)rows;
        return;
    }
    case CN_STACK:
        for (int k = 0; k < nd->n; k++) apply(c, a, nd->child[k], x, h, rows, ex0, nex, lvl);
        return;
    case CN_AVERAGE: {
        if (!node_count(c, id, a->layer, a->site)) return;   /* sum_k w_k h = h */
        float *acc = c->scratch + (size_t)(2 * lvl) * c->cap_rows * c->maxw;
        float *tmp = acc + c->cap_rows * c->maxw;
        size_t n = rows * out;
        memset(acc, 0, n * sizeof(float));
        for (int k = 0; k < nd->n; k++) {
            memcpy(tmp, h, n * sizeof(float));
            apply(c, a, nd->child[k], x, tmp, rows, ex0, nex, lvl + 1);
            axpy_inplace(acc, nd->weight[k], tmp, n);
        }
        memcpy(h, acc, n * sizeof(float));
        return;
    }
    case CN_BATCHSPLIT:
    case CN_PARALLEL: {
        /* parallel: the batch is the input replicated n times, copy k through child k */
        int off = 0;
        for (int k = 0; k < nd->n && off < nex; k++) {
            int sz = nd->kind == CN_PARALLEL ? nex / nd->n : nd->size[k];
            if (sz > nex - off) sz = nex - off;
            apply(c, a, nd->child[k], x + (size_t)off * T * in, h + (size_t)off * T * out, (size_t)sz * T, ex0 + off, sz, lvl);
            off += sz;
        }
        return;
    }
    case CN_SPLIT: {
        size_t k = (size_t)nd->split_at < T ? (size_t)nd->split_at : T;
        for (int e = 0; e < nex; e++) {
            const float *xe = x + (size_t)e * T * in;
            float *he = h + (size_t)e * T * out;
            apply(c, a, nd->child[0], xe, he, k, -1, -1, lvl);
            apply(c, a, nd->child[1], xe + k * in, he + k * out, T - k, -1, -1, lvl);
        }
        return;
    }
    case CN_ROUTE:
        /* runs of consecutive examples with the same adapter go through it at once */
        for (int e = 0; e < nex;) {
            int r = c->route[ex0 + e], e1 = e + 1;
            while (e1 < nex && c->route[ex0 + e1] == r) e1++;
            if (r >= 0 && r < c->n_ad && delta_count(c->ad[r].ds, a->layer, a->site)) {
                const compose_adapter *ad = &c->ad[r];
                delta_forward(ad->ds, ad->pb, a->layer, a->site, x + (size_t)e * T * in, h + (size_t)e * T * out,
                              (e1 - e) * c->T, a->train, a->rng, 0);
                c->rows_applied[a->layer] += (int64_t)(e1 - e) * c->T;
            }
            e = e1;
        }
        return;
    }
}

void compose_forward(compose_ctx *c, int layer, site_id site, const float *x, float *h, int N, int train,
                     peftc_rng *rng)
{
    apply_args a = {layer, site, 0, 0, train, rng};
    if (!compose_count(c, layer, site) || !site_widths(c, layer, site, &a.in, &a.out)) return;
    /* every site of an encoder is called with all B*T token rows */
    int nex = c->T > 0 ? N / c->T : 0;
    apply(c, &a, c->tree->root, x, h, (size_t)N, 0, nex, 0);
}
