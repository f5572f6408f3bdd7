/* llama_family.c: the Llama decoder behind the model-family interface
 * (model.h): training forward and backward over padded (and packed) batches,
 * the causal-LM head, sites, tensors and PEFT names. Loading and the KV-cache
 * inference are llama.c's; both files share llama_internal.h.
 *
 * A block, pre-norm (x: the residual stream):
 *   xn1 = rmsnorm(x) ; q, k, v = xn1 W^T (+ deltas at attn.q|k|v) ; RoPE(q, k)
 *   ctx = causal GQA attention within each segment ; o = ctx Wo^T (+ attn.o)
 *   (+ deltas at attn.out, whose x is xn1) ; x2 = x + o
 *   xn2 = rmsnorm(x2) ; g, u = xn2 W^T (+ ffn.gate|up) ; a = silu(g) u (+ ffn.act)
 *   d = a Wd^T (+ ffn.down) (+ ffn.out, whose x is xn2) ; x' = x2 + d
 * and hidden = rmsnorm(x_L) with the final norm.
 *
 * Frozen weights stay in their stored type: the forward runs llama_linear
 * (quantised kernels for GGUF blocks), the input gradient
 * quant_matmul_backward_input (a chunk of rows dequantised at a time), and no
 * weight gradient is computed for them. Weight gradients exist for F32
 * weights and the norms (full fine-tuning, trained norms).
 *
 * Memory: every layer keeps its inputs, norms, q/k/v (after RoPE), the
 * attention context and g, u, a; the attention probabilities are recomputed
 * in the backward (B * heads * T * T would dominate otherwise). With
 * MODEL_KEEP_RECOMPUTE (gradient checkpointing) a layer keeps only its input
 * x and the generator's state before it: the backward runs that layer's
 * forward again into one shared set of buffers (the top layer's are still
 * there from the forward), so 30 layers of SmolLM2 at 8 x 256 tokens hold
 * 141 MB of activations instead of 2.1 GB.
 *
 * Prefix keys/values (prefix tuning, P-tuning v2, MAM) are PEFT's
 * past_key_values: per layer n_prefix keys and values of kv_heads * head_dim,
 * not rotated (they stand for cached, already-rotated keys), visible to every
 * query (of every segment of a packed row), and the row's own tokens take
 * positions n_prefix.. as transformers gives them after a cache of that
 * length. Virtual tokens (ids < 0) take their row of model_run.virt as the
 * input vector and receive its gradient.
 *
 * Not yet: UniPELT's prefix gate, the attn.heads site, gradients of the token
 * embedding / output head. */
#include "model/llama_internal.h"
#include "model/model.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kernels/nf4.h"
#include "io/safetensors.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* the tensors of a block, in the order of the family's tensor list */
enum { LT_ATTN_NORM, LT_FFN_NORM, LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP, LT_DOWN, LT_COUNT };

typedef struct llama_fmodel {
    peftc_model base;
    llama_model *lm;
    int (*tidx)[LT_COUNT];      /* per layer: index in the tensor list, -1 if not listed */
    int norm_idx;               /* the final norm's */
    int n_tensors;
    void **owned;               /* writable copies made by make_writable */
    int n_owned;
} llama_fmodel;

static llama_fmodel *fm_of(const peftc_model *m) { return (llama_fmodel *)m; }

static llama_weight *layer_weight(llama_layer *L, int k)
{
    switch (k) {
    case LT_Q: return &L->wq;
    case LT_K: return &L->wk;
    case LT_V: return &L->wv;
    case LT_O: return &L->wo;
    case LT_GATE: return &L->wgate;
    case LT_UP: return &L->wup;
    case LT_DOWN: return &L->wdown;
    default: return NULL;
    }
}

/* every linear weight of the model with the output head (NULL-terminated walk) */
static llama_weight *nth_weight(llama_model *lm, int i)
{
    int L = llama_model_config(lm)->num_layers;
    if (i < 7 * L) return layer_weight(llama_model_layer(lm, i / 7), LT_Q + i % 7);
    return i == 7 * L ? &lm->output : NULL;
}

static void lf_free(peftc_model *pm)
{
    llama_fmodel *m = fm_of(pm);
    if (!m) return;
    llama_weight *w;
    for (int i = 0; m->lm && (w = nth_weight(m->lm, i)); i++) { matmul_bf16_free(w->bf16); w->bf16 = NULL; }
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->tidx);
    llama_free(m->lm);
    free(m->base.dir);
    free(m);
}

static peftc_status lf_load(const char *path, const peftc_config *cfg0, peftc_model **out, peftc_error *err)
{
    *out = NULL;
    /* --quantize nf4 / --method qlora reach the family through the config */
    peftc_base_quant q = cfg0 ? cfg0->quantize : PEFTC_QUANT_NONE;
    llama_fmodel *m = calloc(1, sizeof *m);
    if (!m || !(m->base.dir = strdup(path))) { free(m); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    m->base.family = &model_family_llama;
    peftc_status rc = llama_load_ex(path, q == PEFTC_QUANT_NF4 ? LLAMA_LOAD_NF4 : 0, &m->lm, err);
    if (rc) { lf_free(&m->base); return rc; }
    const llama_config *c = llama_model_config(m->lm);
    peftc_config *pc = &m->base.cfg;
    pc->arch = PEFTC_ARCH_LLAMA;
    pc->quantize = q;
    pc->vocab_size = c->vocab_size;
    pc->hidden_size = c->hidden_size;
    pc->num_layers = c->num_layers;
    pc->num_heads = c->num_heads;
    pc->intermediate_size = c->intermediate_size;
    pc->max_position = c->max_position;
    pc->max_seq_len = c->max_position;
    pc->type_vocab_size = 1;
    pc->pad_token_id = -1;
    pc->layer_norm_eps = c->rms_norm_eps;
    int L = c->num_layers;
    int64_t C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    int64_t QD = c->num_heads * hd, KVD = c->num_kv_heads * hd;
    m->base.n_params = (int64_t)c->vocab_size * C * (c->tie_word_embeddings ? 1 : 2) + C +
                       L * (2 * C + C * QD * 2 + 2 * C * KVD + 3 * C * F);
    if (!(m->tidx = malloc((size_t)L * sizeof *m->tidx))) { lf_free(&m->base); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    int n = 0;
    for (int l = 0; l < L; l++) {
        llama_layer *W = llama_model_layer(m->lm, l);
        for (int k = 0; k < LT_COUNT; k++) {
            llama_weight *w = layer_weight(W, k);
            m->tidx[l][k] = !w || w->type == GGML_TYPE_F32 ? n++ : -1;
        }
    }
    m->norm_idx = n++;
    m->n_tensors = n;
    /* the seven linear weights per block as stored (the bytes per parameter
     * that train reports for an NF4 base) */
    m->base.linear_params = 0;
    m->base.linear_bytes = 0;
    for (int l = 0; l < L; l++)
        for (int k = LT_Q; k < LT_Q + 7; k++) {
            const llama_weight *w = layer_weight(llama_model_layer(m->lm, l), k);
            if (!w) continue;
            m->base.linear_params += (int64_t)w->in * w->out;
            m->base.linear_bytes += w->type == QUANT_TYPE_NF4 ? (int64_t)nf4_bytes(w->data)
                                    : (int64_t)ggml_row_bytes(w->type, w->in) * w->out;
        }
    *out = &m->base;
    return PEFTC_OK;
}

/* ------------------------------------------------------------ activations */

typedef struct lf_layer_acts {
    float *x, *rs1, *xn1, *q, *k, *v, *ctx, *x2, *rs2, *xn2, *g, *u, *a;
} lf_layer_acts;

struct model_acts {
    int B, T, train, P;         /* P: prefix length the buffers hold */
    int recompute;              /* MODEL_KEEP_RECOMPUTE: la[l].x per layer, the rest shared */
    lf_layer_acts *la;          /* num_layers (train) or 1 reused */
    peftc_rng *rng_at;          /* recompute: the run's generator before each layer's forward */
    float *x_out, *rsf, *hidden;    /* the last residual (N,C), its norm's rstd, the hidden states */
    float *cs;                  /* (N, hd) RoPE cos/sin at each token's position */
    int32_t *pos;
    /* backward scratch */
    float *d_res, *d_xn, *d_tmp, *d_q, *d_k, *d_v, *d_ctx, *d_g, *d_u, *d_a;
    float *att;                 /* per thread: T*(P+T) probabilities + their gradients */
    float *d_pre;               /* (B, P, 2 KVD): one layer's prefix-key/value gradients per row */
    int n_threads;
    float *block;
};

#define R16(x) (((size_t)(x) + 15) & ~(size_t)15)

static void lf_acts_free(model_acts *a)
{
    if (!a) return;
    free(a->block);
    free(a->la);
    free(a->rng_at);
    free(a->pos);
    free(a);
}

static peftc_status lf_acts_init(const peftc_model *pm, model_acts **out, int B, int T, int train, int n_prefix,
                                 unsigned keep, peftc_error *err)
{
    const llama_config *c = llama_model_config(fm_of(pm)->lm);
    if (B < 1 || T < 1 || n_prefix < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "empty batch");
    lf_acts_free(*out);
    *out = NULL;
    size_t N = (size_t)B * T, C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    size_t QD = (size_t)c->num_heads * hd, KVD = (size_t)c->num_kv_heads * hd;
    int L = c->num_layers, recompute = train && (keep & MODEL_KEEP_RECOMPUTE) && L > 1;
    int nl = train ? L : 1, nth = omp_get_max_threads();
    size_t per = 4 * R16(N * C) + 2 * R16(N) + 2 * R16(N * QD) + 2 * R16(N * KVD) + 3 * R16(N * F);
    size_t TK = (size_t)T + (size_t)n_prefix;
    /* recompute: one layer's buffers, and every layer's input */
    size_t layers = recompute ? per + (size_t)(L - 1) * R16(N * C) : (size_t)nl * per;
    size_t total = layers + 2 * R16(N * C) + R16(N) + R16(N * hd) + (size_t)nth * 2 * R16((size_t)T * TK);
    if (train) total += 3 * R16(N * C) + 2 * R16(N * QD) + 2 * R16(N * KVD) + 3 * R16(N * F) + R16((size_t)B * n_prefix * 2 * KVD);
    double gib = total * 4.0 / (1 << 30);
    if (gib > 64) return peftc_fail(err, PEFTC_ERR_NOMEM, "a batch of %d x %d tokens needs %.1f GiB of activations", B, T, gib);
    model_acts *a = calloc(1, sizeof *a);
    if (!a) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    a->la = calloc((size_t)nl, sizeof *a->la);
    a->rng_at = recompute ? calloc((size_t)L, sizeof *a->rng_at) : NULL;
    a->pos = malloc(N * sizeof *a->pos);
    a->block = peftc_alloc_aligned(total * sizeof(float));
    if (!a->la || !a->pos || !a->block || (recompute && !a->rng_at)) {
        lf_acts_free(a);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "cannot allocate activations for %d x %d tokens (%.2f GiB)", B, T, gib);
    }
    float *p = a->block;
#define TAKE(dst, n) do { (dst) = p; p += R16(n); } while (0)
    for (int l = 0; l < nl; l++) {
        lf_layer_acts *A = &a->la[l];
        TAKE(A->x, N * C);
        if (recompute && l > 0) {   /* the shared buffers of layer 0 */
            lf_layer_acts *S = &a->la[0];
            A->x2 = S->x2; A->xn1 = S->xn1; A->xn2 = S->xn2; A->rs1 = S->rs1; A->rs2 = S->rs2;
            A->q = S->q; A->ctx = S->ctx; A->k = S->k; A->v = S->v; A->g = S->g; A->u = S->u; A->a = S->a;
            continue;
        }
        TAKE(A->x2, N * C); TAKE(A->xn1, N * C); TAKE(A->xn2, N * C);
        TAKE(A->rs1, N); TAKE(A->rs2, N);
        TAKE(A->q, N * QD); TAKE(A->ctx, N * QD); TAKE(A->k, N * KVD); TAKE(A->v, N * KVD);
        TAKE(A->g, N * F); TAKE(A->u, N * F); TAKE(A->a, N * F);
    }
    TAKE(a->x_out, N * C); TAKE(a->hidden, N * C); TAKE(a->rsf, N); TAKE(a->cs, N * hd);
    if (train) {
        TAKE(a->d_res, N * C); TAKE(a->d_xn, N * C); TAKE(a->d_tmp, N * C);
        TAKE(a->d_q, N * QD); TAKE(a->d_ctx, N * QD); TAKE(a->d_k, N * KVD); TAKE(a->d_v, N * KVD);
        TAKE(a->d_g, N * F); TAKE(a->d_u, N * F); TAKE(a->d_a, N * F);
        TAKE(a->d_pre, (size_t)B * n_prefix * 2 * KVD);
    }
    a->att = p;   /* per thread: probabilities and their gradients */
    p += (size_t)nth * 2 * R16((size_t)T * TK);
#undef TAKE
    a->B = B; a->T = T; a->train = train; a->n_threads = nth; a->P = n_prefix; a->recompute = recompute;
    *out = a;
    return PEFTC_OK;
}

static unsigned lf_keep_for(const peftc_model *m, const delta_set *ds, float *const *grads, int virt_train)
{
    (void)m; (void)ds; (void)grads; (void)virt_train;
    return 0;
}

/* ------------------------------------------------------------- pieces */

static void rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps)
{
    #pragma omp parallel for schedule(static) if (N > 4)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C;
        float *oi = out + (size_t)i * C;
        double ss = 0;
        for (int j = 0; j < C; j++) ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        rstd[i] = r;
        for (int j = 0; j < C; j++) oi[j] = xi[j] * r * w[j];
    }
}

/* dx (=, or += if acc) of y = x r w from dy; dw (may be NULL) += sum_i dy x r */
static void rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *rstd, const float *w, int N,
                        int C, int acc)
{
    #pragma omp parallel for schedule(static) if (N > 4)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C, *dyi = dy + (size_t)i * C;
        float *dxi = dx + (size_t)i * C;
        float r = rstd[i];
        double s = 0;
        for (int j = 0; j < C; j++) s += (double)dyi[j] * w[j] * xi[j];
        float c = (float)(s / C) * r * r * r;
        for (int j = 0; j < C; j++) {
            float v = dyi[j] * w[j] * r - xi[j] * c;
            dxi[j] = acc ? dxi[j] + v : v;
        }
    }
    if (dw)
        for (int i = 0; i < N; i++) {   /* serial over rows: the same bits at any thread count */
            const float *xi = x + (size_t)i * C, *dyi = dy + (size_t)i * C;
            for (int j = 0; j < C; j++) dw[j] += dyi[j] * xi[j] * rstd[i];
        }
}

static void qfail_abort(int rc)
{
    /* llama_linear fails only for a type/size the loader already accepted
     * or when its scratch cannot be allocated; the interface has no error
     * path in forward/backward, so a failure is a hard stop */
    if (rc) abort();
}

/* The bf16 pack of a frozen F32 weight when the bf16 path is on
 * (kernels_bf16(): the default where AMX runs, --bf16 / --fp32), made on
 * first use and kept; NULL: fp32. A trained weight (full fine-tuning) drops
 * its pack: the optimizer changes it. After packing, the fp32 pages of a
 * mapped safetensors file are released (re-read from the file should
 * anything read them again: generation, a merge); the tied output head
 * shares the embedding's rows and keeps them. The transposed pack for the
 * backward is made by the first backward (matmul_bf16_backward). */
static matmul_bf16 *bf16_of(const llama_model *lm, llama_weight *w, int frozen)
{
    if (w->type != GGML_TYPE_F32 || !w->data) return NULL;
    if (!frozen && w->bf16) { matmul_bf16_free(w->bf16); w->bf16 = NULL; }
    if (!frozen || !kernels_bf16()) return NULL;
    if (!w->bf16 && (w->bf16 = matmul_bf16_pack(w->data, w->in, w->out)) && w->data != lm->tok_embd.data)
        for (int i = 0; i < lm->n_st; i++) st_release(lm->st[i], w->data, (size_t)w->in * w->out * sizeof(float));
    return w->bf16;
}

static void lin_fwd(float *h, const float *x, llama_weight *w, int N, matmul_bf16 *wb)
{
    if (wb) matmul_bf16_forward(h, x, wb, NULL, N, w->in, w->out, 0);
    else qfail_abort(llama_linear(h, x, w, N));
}

/* dx (+= if acc) = dh W; dW += dh^T x when dw (F32 weights only); wb: the
 * frozen weight's bf16 pack (NULL: none) */
static void lin_bwd(float *dx, float *dw, const float *dh, const float *x, const llama_weight *w, int N, int acc,
                    matmul_bf16 *wb)
{
    if (wb && !dw && dx && !matmul_bf16_backward(dx, NULL, dh, wb, N, w->in, w->out, acc)) return;
    if (w->type == GGML_TYPE_F32) {
        if (dx) matmul_backward_input(dx, dh, w->data, N, w->in, w->out, acc);
        if (dw) matmul_backward(NULL, dw, NULL, dh, x, w->data, N, w->in, w->out);
    } else if (dx)
        qfail_abort(quant_matmul_backward_input(dx, dh, w->data, w->type, N, w->in, w->out, acc));
}

static int has(const model_run *run, int l, site_id s)
{
    return run && run->deltas && delta_count(run->deltas, l, s);
}

static void site_fwd(const model_run *run, int l, site_id s, const float *x, float *h, int N)
{
    if (has(run, l, s)) delta_forward(run->deltas, run->pb, l, s, x, h, N, run->train, run->rng, run->tok0);
}

static float *grad_of(const llama_fmodel *m, const model_run *run, int idx)
{
    (void)m;
    return idx >= 0 && run && run->grads ? run->grads[idx] : NULL;
}
/* token i may attend to token j (both in row b, j <= i) */
static inline int visible(const int32_t *seg, size_t base, int i, int j)
{
    return !seg || seg[base + (size_t)i] == seg[base + (size_t)j];
}

/* The prefix of one layer (NULL pk: none): P keys at pk, values at pv,
 * row stride ld floats (PEFT's (P, 2 L KVD) table). */
typedef struct prefix_view {
    const float *pk, *pv;
    int P;
    size_t ld;
} prefix_view;

/* probabilities S (T x (P+T)) of head h of row b: the P prefix keys always,
 * the row's own keys causally within the segment; softmax of q k^T / sqrt(hd) */
static void att_probs(float *S, const float *q, const float *k, const prefix_view *pre, const int32_t *seg, int b, int h,
                      int kvh, int T, int hd, size_t QD, size_t KVD)
{
    size_t base = (size_t)b * T;
    int P = pre->P, TK = P + T;
    float sc = 1.0f / sqrtf((float)hd);
    const float *qb = q + base * QD + (size_t)h * hd, *kb = k + base * KVD + (size_t)kvh * hd;
    if (P)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, P, hd, sc, qb, (int)QD, pre->pk + (size_t)kvh * hd,
                    (int)pre->ld, 0.0f, S, TK);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, sc, qb, (int)QD, kb, (int)KVD, 0.0f, S + P, TK);
    for (int i = 0; i < T; i++) {
        float *r = S + (size_t)i * TK, *o = r + P;
        if (seg)   /* packed rows: another segment's keys are masked */
            for (int j = 0; j <= i; j++)
                if (!visible(seg, base, i, j)) o[j] = -INFINITY;
        softmax_row_inplace(r, P + i + 1);   /* the prefix and keys 0..i (causal) */
        memset(o + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
    }
}

static void attention_fwd(float *ctx, const float *q, const float *k, const float *v, const prefix_view *pre,
                          const int32_t *seg, float *scratch, int B, int T, int H, int KV, int hd)
{
    size_t QD = (size_t)H * hd, KVD = (size_t)KV * hd;
    int P = pre->P, TK = P + T;
    size_t TT = R16((size_t)T * TK);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *S = scratch + (size_t)omp_get_thread_num() * 2 * TT;
            int kvh = h / (H / KV);
            att_probs(S, q, k, pre, seg, b, h, kvh, T, hd, QD, KVD);
            size_t base = (size_t)b * T;
            float *cb = ctx + base * QD + (size_t)h * hd;
            if (P)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, P, 1.0f, S, TK, pre->pv + (size_t)kvh * hd,
                            (int)pre->ld, 0.0f, cb, (int)QD);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S + P, TK,
                        v + base * KVD + (size_t)kvh * hd, (int)KVD, P ? 1.0f : 0.0f, cb, (int)QD);
        }
}

/* d_q (=), d_k, d_v (=) from d_ctx, and with a prefix d_pre (B, P, 2 KVD)
 * (=): row b's gradients of the prefix keys (first KVD) and values; parallel
 * over (row, kv head) so that the heads sharing a kv head accumulate in a
 * fixed order */
static void attention_bwd(float *dq, float *dk, float *dv, float *d_pre, const float *dctx, const float *q, const float *k,
                          const float *v, const prefix_view *pre, const int32_t *seg, float *scratch, int B, int T, int H,
                          int KV, int hd)
{
    size_t QD = (size_t)H * hd, KVD = (size_t)KV * hd;
    int P = pre->P, TK = P + T;
    size_t TT = R16((size_t)T * TK);
    int G = H / KV;
    float sc = 1.0f / sqrtf((float)hd);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++) {
            float *S = scratch + (size_t)omp_get_thread_num() * 2 * TT, *dS = S + TT;
            size_t base = (size_t)b * T;
            float *dkb = dk + base * KVD + (size_t)kvh * hd, *dvb = dv + base * KVD + (size_t)kvh * hd;
            const float *kb = k + base * KVD + (size_t)kvh * hd, *vb = v + base * KVD + (size_t)kvh * hd;
            float *dpk = P ? d_pre + (size_t)b * P * 2 * KVD + (size_t)kvh * hd : NULL, *dpv = dpk ? dpk + KVD : NULL;
            for (int t = 0; t < T; t++) {
                memset(dkb + (size_t)t * KVD, 0, (size_t)hd * sizeof(float));
                memset(dvb + (size_t)t * KVD, 0, (size_t)hd * sizeof(float));
            }
            for (int j = 0; j < P; j++) {
                memset(dpk + (size_t)j * 2 * KVD, 0, (size_t)hd * sizeof(float));
                memset(dpv + (size_t)j * 2 * KVD, 0, (size_t)hd * sizeof(float));
            }
            for (int g = 0; g < G; g++) {
                int h = kvh * G + g;
                att_probs(S, q, k, pre, seg, b, h, kvh, T, hd, QD, KVD);
                const float *dcb = dctx + base * QD + (size_t)h * hd, *qb = q + base * QD + (size_t)h * hd;
                float *dqb = dq + base * QD + (size_t)h * hd;
                /* dV += S^T dctx ; dS = dctx V^T (prefix columns first) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, S + P, TK, dcb, (int)QD, 1.0f, dvb, (int)KVD);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dcb, (int)QD, vb, (int)KVD, 0.0f, dS + P, TK);
                if (P) {
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, hd, T, 1.0f, S, TK, dcb, (int)QD, 1.0f, dpv,
                                (int)(2 * KVD));
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, P, hd, 1.0f, dcb, (int)QD,
                                pre->pv + (size_t)kvh * hd, (int)pre->ld, 0.0f, dS, TK);
                }
                /* dZ = S (dS - rowsum(S dS)) * scale over the visible columns */
                for (int i = 0; i < T; i++) {
                    float *pr = S + (size_t)i * TK, *dr = dS + (size_t)i * TK;
                    int nv = P + i + 1;
                    double s = 0;
                    for (int j = 0; j < nv; j++) s += (double)pr[j] * dr[j];
                    for (int j = 0; j < TK; j++) dr[j] = j < nv ? pr[j] * (dr[j] - (float)s) * sc : 0.0f;
                }
                /* dQ = dZ K ; dK += dZ^T Q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, dS + P, TK, kb, (int)KVD, 0.0f, dqb, (int)QD);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, dS + P, TK, qb, (int)QD, 1.0f, dkb, (int)KVD);
                if (P) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, P, 1.0f, dS, TK, pre->pk + (size_t)kvh * hd,
                                (int)pre->ld, 1.0f, dqb, (int)QD);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, hd, T, 1.0f, dS, TK, qb, (int)QD, 1.0f, dpk,
                                (int)(2 * KVD));
                }
            }
        }
}

static prefix_view layer_prefix(const model_run *run, int l, size_t KVD, int L)
{
    prefix_view v = {0};
    if (run && run->n_prefix > 0 && run->prefix_kv) {
        v.P = run->n_prefix;
        v.ld = 2 * (size_t)L * KVD;
        v.pk = run->prefix_kv + (size_t)(2 * l) * KVD;
        v.pv = v.pk + KVD;
    }
    return v;
}

/* RoPE's inverse (a rotation's transpose): the gradient before the rotation */
static void rope_bwd(float *d, int N, int nh, int hd, size_t stride, float *cs, int interleaved)
{
    for (size_t i = 0; i < (size_t)N * hd / 2; i++) cs[2 * i + 1] = -cs[2 * i + 1];
    llama_rope(d, N, nh, hd, stride, cs, interleaved);
    for (size_t i = 0; i < (size_t)N * hd / 2; i++) cs[2 * i + 1] = -cs[2 * i + 1];
}

/* ------------------------------------------------------------- forward */

/* Block l from A->x into A's buffers and `next` (x' = x2 + ffn(rmsnorm(x2))). */
static void layer_fwd(llama_fmodel *m, model_acts *a, lf_layer_acts *A, const model_run *run, int l, int B, int T,
                      float *next)
{
    const llama_config *c = llama_model_config(m->lm);
    int C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim, H = c->num_heads, KV = c->num_kv_heads;
    int N = B * T;
    size_t QD = (size_t)H * hd, KVD = (size_t)KV * hd;
    const int32_t *seg = run ? run->segments : NULL;
    llama_layer *W = llama_model_layer(m->lm, l);
    const int *ti = m->tidx[l];
#define LIN(h, x, wt, k) lin_fwd(h, x, &W->wt, N, bf16_of(m->lm, &W->wt, !grad_of(m, run, ti[k])))
    rmsnorm_fwd(A->xn1, A->rs1, A->x, W->attn_norm, N, C, c->rms_norm_eps);
    LIN(A->q, A->xn1, wq, LT_Q); site_fwd(run, l, SITE_ATTN_Q, A->xn1, A->q, N);
    LIN(A->k, A->xn1, wk, LT_K); site_fwd(run, l, SITE_ATTN_K, A->xn1, A->k, N);
    LIN(A->v, A->xn1, wv, LT_V); site_fwd(run, l, SITE_ATTN_V, A->xn1, A->v, N);
    llama_rope(A->q, N, H, hd, QD, a->cs, c->rope_interleaved);
    llama_rope(A->k, N, KV, hd, KVD, a->cs, c->rope_interleaved);
    prefix_view pre = layer_prefix(run, l, KVD, c->num_layers);
    attention_fwd(A->ctx, A->q, A->k, A->v, &pre, seg, a->att, B, T, H, KV, hd);
    float *o = A->x2;   /* the projection output, then the residual sum in place */
    LIN(o, A->ctx, wo, LT_O); site_fwd(run, l, SITE_ATTN_O, A->ctx, o, N);
    site_fwd(run, l, SITE_ATTN_OUT, A->xn1, o, N);
    for (size_t i = 0; i < (size_t)N * C; i++) o[i] += A->x[i];
    rmsnorm_fwd(A->xn2, A->rs2, A->x2, W->ffn_norm, N, C, c->rms_norm_eps);
    LIN(A->g, A->xn2, wgate, LT_GATE); site_fwd(run, l, SITE_FFN_GATE, A->xn2, A->g, N);
    LIN(A->u, A->xn2, wup, LT_UP); site_fwd(run, l, SITE_FFN_UP, A->xn2, A->u, N);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < (size_t)N * F; i++) {
        float g = A->g[i];
        A->a[i] = g / (1.0f + expf(-g)) * A->u[i];
    }
    site_fwd(run, l, SITE_FFN_ACT, A->a, A->a, N);
    LIN(next, A->a, wdown, LT_DOWN); site_fwd(run, l, SITE_FFN_DOWN, A->a, next, N);
    site_fwd(run, l, SITE_FFN_OUT, A->xn2, next, N);
    for (size_t i = 0; i < (size_t)N * C; i++) next[i] += A->x2[i];
#undef LIN
}

static void lf_forward(peftc_model *pm, model_acts *a, const model_run *run, const int32_t *ids, const int32_t *type_ids,
                       const int *lens, int B, int T)
{
    (void)type_ids; (void)lens;
    llama_fmodel *m = fm_of(pm);
    const llama_config *c = llama_model_config(m->lm);
    int C = c->hidden_size, hd = c->head_dim;
    int N = B * T;
    const int32_t *seg = run ? run->segments : NULL;
    /* positions restart at each segment's first token, after the prefix */
    int P0 = run && run->prefix_kv ? run->n_prefix : 0;
    for (int b = 0; b < B; b++)
        for (int t = 0, p = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            p = t == 0 || (seg && seg[i] != seg[i - 1]) ? 0 : p + 1;
            a->pos[i] = P0 + p;
        }
    const float *inv = m->lm->inv_freq;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        for (int j = 0; j < hd / 2; j++) {
            double ang = (double)a->pos[i] * inv[j];
            a->cs[(size_t)i * hd + 2 * j] = (float)cos(ang);
            a->cs[(size_t)i * hd + 2 * j + 1] = (float)sin(ang);
        }
    const llama_weight *E = &m->lm->tok_embd;
    float *x = a->la[0].x;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0)   /* a virtual token: its prompt vector */
            memcpy(x + (size_t)i * C, run->virt + (size_t)(-ids[i] - 1) * C, (size_t)C * sizeof(float));
        else
            llama_embed_row(x + (size_t)i * C, E, ids[i]);
    }
    for (int l = 0; l < c->num_layers; l++) {
        lf_layer_acts *A = &a->la[a->train ? l : 0];
        float *next = l + 1 < c->num_layers && a->train ? a->la[l + 1].x : a->x_out;
        if (A->x != x) memcpy(A->x, x, (size_t)N * C * sizeof(float));
        if (a->recompute && run && run->rng) a->rng_at[l] = *run->rng;
        layer_fwd(m, a, A, run, l, B, T, next);
        x = next;
    }
    if (x != a->x_out) memcpy(a->x_out, x, (size_t)N * C * sizeof(float));
    rmsnorm_fwd(a->hidden, a->rsf, a->x_out, m->lm->norm, N, C, c->rms_norm_eps);
}

static float *lf_hidden(const peftc_model *m, const model_acts *a)
{
    (void)m;
    return a->hidden;
}

/* ------------------------------------------------------------- backward */

/* the gradient of a linear site's output dh -> dx (=) and dW; the site's
 * deltas first (a sequential delta turns dh into its input's gradient) */
static void lin_site_bwd(const llama_fmodel *m, const model_run *run, int l, site_id s, float *dh, float *dx, int acc,
                         const float *x, llama_weight *w, float *dw, int N)
{
    if (has(run, l, s)) {
        if (!acc) memset(dx, 0, (size_t)N * w->in * sizeof(float));
        acc = 1;
        delta_backward(run->deltas, run->pb, l, s, x, dh, dx, N);
    }
    lin_bwd(dx, dw, dh, x, w, N, acc, bf16_of(m->lm, w, !dw));
}

static void lf_backward(peftc_model *pm, model_acts *a, const model_run *run, const int32_t *ids, const int32_t *type_ids,
                        const int *lens, int B, int T, float *d_hidden)
{
    (void)type_ids; (void)lens;
    llama_fmodel *m = fm_of(pm);
    const llama_config *c = llama_model_config(m->lm);
    int C = c->hidden_size, F = c->intermediate_size, hd = c->head_dim, H = c->num_heads, KV = c->num_kv_heads;
    int N = B * T;
    size_t NC = (size_t)N * C, QD = (size_t)H * hd, KVD = (size_t)KV * hd;
    const int32_t *seg = run->segments;
    float *d_res = a->d_res, *d_xn = a->d_xn, *dt = a->d_tmp;
    rmsnorm_bwd(d_res, grad_of(m, run, m->norm_idx), d_hidden, a->x_out, a->rsf, m->lm->norm, N, C, 0);
    for (int l = c->num_layers - 1; l >= 0; l--) {
        lf_layer_acts *A = &a->la[l];
        llama_layer *W = llama_model_layer(m->lm, l);
        const int *ti = m->tidx[l];
        if (a->recompute && l + 1 < c->num_layers) {
            /* the layer's forward again (its output into the free d_tmp),
             * with the dropout draws it took the first time; then the run's
             * generator where the forward left it */
            peftc_rng now = {0};
            if (run->rng) now = *run->rng, *run->rng = a->rng_at[l];
            layer_fwd(m, a, A, run, l, B, T, dt);
            if (run->rng) *run->rng = now;
        }
        /* ---- FFN: x' = x2 + ffn_out(xn2) */
        memcpy(dt, d_res, NC * sizeof(float));
        memset(d_xn, 0, NC * sizeof(float));
        if (has(run, l, SITE_FFN_OUT)) delta_backward(run->deltas, run->pb, l, SITE_FFN_OUT, A->xn2, dt, d_xn, N);
        lin_site_bwd(m, run, l, SITE_FFN_DOWN, dt, a->d_a, 0, A->a, &W->wdown, grad_of(m, run, ti[LT_DOWN]), N);
        if (has(run, l, SITE_FFN_ACT)) delta_backward(run->deltas, run->pb, l, SITE_FFN_ACT, A->a, a->d_a, NULL, N);
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * F; i++) {
            float g = A->g[i], s = 1.0f / (1.0f + expf(-g)), da = a->d_a[i];
            a->d_u[i] = da * g * s;
            a->d_g[i] = da * A->u[i] * s * (1.0f + g * (1.0f - s));
        }
        lin_site_bwd(m, run, l, SITE_FFN_UP, a->d_u, d_xn, 1, A->xn2, &W->wup, grad_of(m, run, ti[LT_UP]), N);
        lin_site_bwd(m, run, l, SITE_FFN_GATE, a->d_g, d_xn, 1, A->xn2, &W->wgate, grad_of(m, run, ti[LT_GATE]), N);
        /* d_x2 = d_res + norm backward */
        rmsnorm_bwd(d_res, grad_of(m, run, ti[LT_FFN_NORM]), d_xn, A->x2, A->rs2, W->ffn_norm, N, C, 1);
        /* ---- attention: x2 = x + attn_out(xn1) */
        memcpy(dt, d_res, NC * sizeof(float));
        memset(d_xn, 0, NC * sizeof(float));
        if (has(run, l, SITE_ATTN_OUT)) delta_backward(run->deltas, run->pb, l, SITE_ATTN_OUT, A->xn1, dt, d_xn, N);
        lin_site_bwd(m, run, l, SITE_ATTN_O, dt, a->d_ctx, 0, A->ctx, &W->wo, grad_of(m, run, ti[LT_O]), N);
        prefix_view pre = layer_prefix(run, l, KVD, c->num_layers);
        attention_bwd(a->d_q, a->d_k, a->d_v, a->d_pre, a->d_ctx, A->q, A->k, A->v, &pre, seg, a->att, B, T, H, KV, hd);
        if (pre.P && run->d_prefix_kv) {
            /* the rows' prefix gradients summed in row order: the same bits at any thread count */
            size_t ld = pre.ld;
            #pragma omp parallel for schedule(static)
            for (int j = 0; j < pre.P; j++) {
                float *dst = run->d_prefix_kv + (size_t)j * ld + (size_t)(2 * l) * KVD;
                for (int b = 0; b < B; b++) {
                    const float *src = a->d_pre + ((size_t)b * pre.P + j) * 2 * KVD;
                    for (size_t e = 0; e < 2 * KVD; e++) dst[e] += src[e];
                }
            }
        }
        rope_bwd(a->d_q, N, H, hd, QD, a->cs, c->rope_interleaved);
        rope_bwd(a->d_k, N, KV, hd, KVD, a->cs, c->rope_interleaved);
        /* the q/k sites' deltas read xn1 and saw h before RoPE: the
         * rotated-back gradients are theirs */
        lin_site_bwd(m, run, l, SITE_ATTN_Q, a->d_q, d_xn, 1, A->xn1, &W->wq, grad_of(m, run, ti[LT_Q]), N);
        lin_site_bwd(m, run, l, SITE_ATTN_K, a->d_k, d_xn, 1, A->xn1, &W->wk, grad_of(m, run, ti[LT_K]), N);
        lin_site_bwd(m, run, l, SITE_ATTN_V, a->d_v, d_xn, 1, A->xn1, &W->wv, grad_of(m, run, ti[LT_V]), N);
        rmsnorm_bwd(d_res, grad_of(m, run, ti[LT_ATTN_NORM]), d_xn, A->x, A->rs1, W->attn_norm, N, C, 1);
        if (run->layer_done) run->layer_done(run->layer_done_ctx, l);   /* layer l's gradients are final */
    }
    /* d_res is now the gradient of the input vectors: the virtual tokens'
     * (serially, so that the rows of one virtual token add up in a fixed order) */
    if (run->virt && run->d_virt)
        for (int i = 0; i < N; i++)
            if (ids[i] < 0) {
                float *dv = run->d_virt + (size_t)(-ids[i] - 1) * C;
                const float *g = d_res + (size_t)i * C;
                for (int j = 0; j < C; j++) dv[j] += g[j];
            }
}

/* ---------------------------------------------------------------- head */

static void lf_lm_head(const peftc_model *pm, const float *h, int N, float *logits)
{
    llama_model *lm = fm_of(pm)->lm;
    lin_fwd(logits, h, &lm->output, N, bf16_of(lm, &lm->output, 1));
}

static void lf_lm_head_backward(const peftc_model *pm, const float *h, const float *d_logits, int N, float *d_h,
                                float *d_w)
{
    (void)d_w;   /* the output head / tied embedding does not train (model.h says so for decoders) */
    llama_model *lm = fm_of(pm)->lm;
    lin_bwd(d_h, NULL, d_logits, h, &lm->output, N, 1, bf16_of(lm, &lm->output, 1));
}

/* ---------------------------------------------------------- sites, tensors */

static int lf_site(const peftc_model *pm, int layer, site_id s, int *in, int *out)
{
    const llama_config *c = llama_model_config(fm_of(pm)->lm);
    if (layer < 0 || layer >= c->num_layers) return 0;
    int C = c->hidden_size, F = c->intermediate_size, QD = c->num_heads * c->head_dim, KVD = c->num_kv_heads * c->head_dim;
    int i, o;
    switch (s) {
    case SITE_ATTN_Q: i = C; o = QD; break;
    case SITE_ATTN_K: case SITE_ATTN_V: i = C; o = KVD; break;
    case SITE_ATTN_O: i = QD; o = C; break;
    case SITE_FFN_GATE: case SITE_FFN_UP: i = C; o = F; break;
    case SITE_FFN_DOWN: i = F; o = C; break;
    case SITE_ATTN_OUT: case SITE_FFN_OUT: i = C; o = C; break;
    case SITE_FFN_ACT: i = F; o = F; break;
    default: return 0;   /* attn.heads, ffn.in: not in this family */
    }
    if (in) *in = i;
    if (out) *out = o;
    return 1;
}

static llama_weight *site_weight(llama_layer *W, site_id s)
{
    switch (s) {
    case SITE_ATTN_Q: return &W->wq;
    case SITE_ATTN_K: return &W->wk;
    case SITE_ATTN_V: return &W->wv;
    case SITE_ATTN_O: return &W->wo;
    case SITE_FFN_GATE: return &W->wgate;
    case SITE_FFN_UP: return &W->wup;
    case SITE_FFN_DOWN: return &W->wdown;
    default: return NULL;
    }
}

/* Merging folds deltas into F32 weights only (quantised ones stay quantised). */
static int lf_linear(peftc_model *pm, int layer, site_id s, float ***w, float ***b)
{
    const llama_config *c = llama_model_config(fm_of(pm)->lm);
    if (layer < 0 || layer >= c->num_layers) return 0;
    llama_weight *lw = site_weight(llama_model_layer(fm_of(pm)->lm, layer), s);
    if (!lw || lw->type != GGML_TYPE_F32) return 0;
    *w = (float **)(void *)&lw->data;
    *b = NULL;
    return 1;
}

static peftc_status lf_make_writable(peftc_model *pm, float **slot, size_t numel, peftc_error *err)
{
    llama_fmodel *m = fm_of(pm);
    llama_weight *w;
    for (int i = 0; (w = nth_weight(m->lm, i)); i++)   /* its bf16 pack is of the old values */
        if ((const void *)&w->data == (const void *)slot) { matmul_bf16_free(w->bf16); w->bf16 = NULL; }
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == *slot) return PEFTC_OK;
    void **o = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *o);
    if (!o) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    m->owned = o;
    float *copy = malloc(numel * sizeof *copy);
    if (!copy) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory (%zu floats)", numel);
    memcpy(copy, *slot, numel * sizeof *copy);
    m->owned[m->n_owned++] = copy;
    *slot = copy;
    return PEFTC_OK;
}

static const char *const lt_names[LT_COUNT] = {"input_layernorm.weight", "post_attention_layernorm.weight",
                                               "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                               "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                               "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};

static int lf_tensors(peftc_model *pm, model_tensor *out, int cap)
{
    llama_fmodel *m = fm_of(pm);
    const llama_config *c = llama_model_config(m->lm);
    int n = 0;
    for (int l = 0; l < c->num_layers; l++) {
        llama_layer *W = llama_model_layer(m->lm, l);
        for (int k = 0; k < LT_COUNT; k++) {
            if (m->tidx[l][k] < 0) continue;
            if (n < cap) {
                model_tensor *t = &out[n];
                memset(t, 0, sizeof *t);
                snprintf(t->name, sizeof t->name, "layers.%d.%s", l, lt_names[k]);
                t->layer = l;
                if (k == LT_ATTN_NORM || k == LT_FFN_NORM) {
                    t->w = (float **)(void *)(k == LT_ATTN_NORM ? &W->attn_norm : &W->ffn_norm);
                    t->ndim = 1;
                    t->shape[0] = c->hidden_size;
                    t->is_norm = 1;
                } else {
                    llama_weight *w = layer_weight(W, k);
                    t->w = (float **)(void *)&w->data;
                    t->ndim = 2;
                    t->shape[0] = w->out;
                    t->shape[1] = w->in;
                }
            }
            n++;
        }
    }
    if (n < cap) {
        model_tensor *t = &out[n];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "norm.weight");
        t->w = (float **)(void *)&m->lm->norm;
        t->ndim = 1;
        t->shape[0] = c->hidden_size;
        t->is_norm = 1;
        t->layer = -1;
    }
    return n + 1;
}

static const float *lf_word_embeddings(const peftc_model *pm)
{
    const llama_weight *E = &fm_of(pm)->lm->tok_embd;
    return E->type == GGML_TYPE_F32 ? E->data : NULL;
}

static void lf_token_embedding(const peftc_model *pm, int id, float *dst)
{
    llama_embed_row(dst, &fm_of(pm)->lm->tok_embd, id);
}

static int lf_prefix_dim(const peftc_model *pm)
{
    const llama_config *c = llama_model_config(fm_of(pm)->lm);
    return c->num_kv_heads * c->head_dim;
}

static int lf_pooler(const peftc_model *m, const float **w, const float **b)
{
    (void)m; (void)w; (void)b;
    return 0;
}

static const float *lf_weights_sample(const peftc_model *pm, size_t *n)
{
    *n = (size_t)pm->cfg.hidden_size;
    return fm_of(pm)->lm->norm;
}

const model_family model_family_llama = {
    .name = "llama",
    .arch = PEFTC_ARCH_LLAMA,
    .can_recompute = 1,
    .load = lf_load,
    .free = lf_free,
    .acts_init = lf_acts_init,
    .acts_free = lf_acts_free,
    .keep_for = lf_keep_for,
    .forward = lf_forward,
    .backward = lf_backward,
    .hidden = lf_hidden,
    .site = lf_site,
    .linear = lf_linear,
    .make_writable = lf_make_writable,
    .tensors = lf_tensors,
    .word_embeddings = lf_word_embeddings,
    .token_embedding = lf_token_embedding,
    .prefix_dim = lf_prefix_dim,
    .pooler = lf_pooler,
    .weights_sample = lf_weights_sample,
    .lm_head = lf_lm_head,
    .lm_head_backward = lf_lm_head_backward,
    .peft_prefix = "base_model.model.model.",
    .layer_path = "layers.%d",
    .site_module = {
        [SITE_ATTN_Q] = "self_attn.q_proj", [SITE_ATTN_K] = "self_attn.k_proj", [SITE_ATTN_V] = "self_attn.v_proj",
        [SITE_ATTN_O] = "self_attn.o_proj", [SITE_FFN_GATE] = "mlp.gate_proj", [SITE_FFN_UP] = "mlp.up_proj",
        [SITE_FFN_DOWN] = "mlp.down_proj",
    },
    .site_target = {
        [SITE_ATTN_Q] = "q_proj", [SITE_ATTN_K] = "k_proj", [SITE_ATTN_V] = "v_proj", [SITE_ATTN_O] = "o_proj",
        [SITE_FFN_GATE] = "gate_proj", [SITE_FFN_UP] = "up_proj", [SITE_FFN_DOWN] = "down_proj",
    },
};
