/* compose.h: several named adapters on one base model, and how they combine
 * (AdapterHub's composition blocks).
 *
 * Every adapter keeps its own delta_set and parameter block; a compose_ctx
 * stands in for one delta_set at the model's sites (delta_set.comp): the
 * family calls delta_forward/delta_count as always and the context decides
 * which adapters act on which rows. The family stays unaware of adapters
 * and compositions, and a composition needs no change to any family.
 *
 * Blocks (a compose_tree, parsed from "stack(a,average(b,c))" etc.):
 *   a               one adapter
 *   stack(a,b,..)   each site applies a's deltas, then b's (b reads a's output)
 *   average(a,b[,weights=w1;w2])  each child on its own copy of the site's
 *                   output, combined as sum_k w_k h_k (weights normalised to
 *                   sum 1, equal by default: AdapterHub's Average)
 *   batchsplit(a:n,b:m)  examples [0,n) through a, [n,n+m) through b: the
 *                   batch must hold exactly n+m examples
 *   split(a,b@k)    tokens [0,k) of every example through a, the rest
 *                   through b (children: adapters, stack, average only)
 *   parallel(a,b,..) (root only) the input replicated once per child, each
 *                   copy through its child, one output (head) per child
 * Bounds: COMPOSE_MAX_NODES nodes, COMPOSE_MAX_CHILD children, depth
 * COMPOSE_MAX_DEPTH; every violation is an error naming the block. */
#ifndef PEFTC_COMPOSE_H
#define PEFTC_COMPOSE_H

#include "peft/delta.h"

#define COMPOSE_MAX_NODES 64
#define COMPOSE_MAX_CHILD 16
#define COMPOSE_MAX_DEPTH 6
#define COMPOSE_MAX_ADAPTERS 64

typedef enum compose_kind {
    CN_ADAPTER, CN_STACK, CN_AVERAGE, CN_BATCHSPLIT, CN_SPLIT, CN_PARALLEL,
    CN_ROUTE   /* mixed batch: example e through adapter route[e] (-1: the base); built, not parsed */
} compose_kind;

typedef struct compose_node {
    compose_kind kind;
    int adapter;                       /* CN_ADAPTER */
    int n;                             /* children */
    int child[COMPOSE_MAX_CHILD];
    int size[COMPOSE_MAX_CHILD];       /* CN_BATCHSPLIT: examples per child */
    float weight[COMPOSE_MAX_CHILD];   /* CN_AVERAGE: normalised */
    int split_at;                      /* CN_SPLIT: the first token of the second child */
} compose_node;

typedef struct compose_tree {
    compose_node node[COMPOSE_MAX_NODES];
    int n_nodes, root;
    int avg_depth;                     /* nested averages on one path: scratch levels */
} compose_tree;

/* Parses text against the loaded adapter names. */
peftc_status compose_parse(const char *text, const char *const *names, int n_names, compose_tree *t,
                           peftc_error *err);
/* A tree of one adapter, or (adapter < 0) a mixed-batch route. */
void compose_single(compose_tree *t, int adapter);

typedef struct compose_adapter {
    delta_set *ds;
    const param_block *pb;
} compose_adapter;

typedef struct compose_ctx {
    const compose_tree *tree;
    const compose_adapter *ad;
    int n_ad;
    int drop_layers;          /* AdapterDrop: no adapter acts in layers [0, drop_layers) */
    int T;                    /* rows per example of the current forward */
    int B;                    /* examples of the current forward */
    const int *route;         /* CN_ROUTE: adapter per example (B) */
    float *scratch;           /* CN_AVERAGE: 2 * avg_depth buffers of cap_rows * maxw */
    size_t cap_rows, maxw;
    int n_layers;
    int64_t *rows_applied;    /* per layer: rows times adapter applications (compute done) */
} compose_ctx;

/* Scratch for rows rows of widths up to maxw; n_layers for the counters. */
peftc_status compose_ctx_alloc(compose_ctx *c, size_t rows, size_t maxw, int n_layers, peftc_error *err);
void compose_ctx_free(compose_ctx *c);
/* delta_count / delta_forward of a composed delta_set (delta.c dispatches). */
int compose_count(const compose_ctx *c, int layer, site_id site);
void compose_forward(compose_ctx *c, int layer, site_id site, const float *x, float *h, int N, int train,
                     peftc_rng *rng);

#endif
