/* sampler.c: repetition penalty, temperature, top-k, top-p, min-p and the draw
 * (see sampler.h for the order and why).
 *
 * Top-k and top-p need the largest logits in order, but sorting a 49,152-entry
 * vocabulary per token would cost as much as a small model's decode step. So
 * the k largest are found by quickselect (linear) and only those k sorted; for
 * top-p without top-k, k starts at 64 and grows 4x until the kept mass
 * reaches top_p, which is exact and touches a few hundred entries in the usual
 * case. */
#include "train/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void sampler_opts_default(sampler_opts *o)
{
    o->temperature = 0.0f;
    o->top_k = 0;
    o->top_p = 1.0f;
    o->min_p = 0.0f;
    o->repeat_penalty = 1.0f;
    o->repeat_last_n = 64;
    o->seed = 42;
}

peftc_status sampler_opts_check(const sampler_opts *o, peftc_error *err)
{
    if (!(o->temperature == o->temperature))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--temp: not a number");
    if (!(o->top_p > 0.0f && o->top_p <= 1.0f))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--top-p: must be in (0, 1], got %g", (double)o->top_p);
    if (!(o->min_p >= 0.0f && o->min_p < 1.0f))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--min-p: must be in [0, 1), got %g", (double)o->min_p);
    if (!(o->repeat_penalty > 0.0f) || !isfinite(o->repeat_penalty))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--repeat-penalty: must be > 0, got %g", (double)o->repeat_penalty);
    if (o->top_k < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "--top-k: must be >= 0, got %d", o->top_k);
    return PEFTC_OK;
}

peftc_status sampler_init(sampler *s, const sampler_opts *o, int n_vocab, peftc_error *err)
{
    memset(s, 0, sizeof *s);
    peftc_status rc = sampler_opts_check(o, err);
    if (rc) return rc;
    if (n_vocab <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "sampler: empty vocabulary");
    s->o = *o;
    s->n_vocab = n_vocab;
    peftc_rng_seed(&s->rng, o->seed);
    s->idx = malloc((size_t)n_vocab * sizeof *s->idx);
    s->val = malloc((size_t)n_vocab * sizeof *s->val);
    s->seen = calloc((size_t)n_vocab, 1);
    if (!s->idx || !s->val || !s->seen) {
        sampler_free(s);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "sampler: out of memory");
    }
    return PEFTC_OK;
}

void sampler_free(sampler *s)
{
    free(s->idx);
    free(s->val);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

static void apply_penalty(sampler *s, float *logits, const int32_t *hist, int n_hist)
{
    float p = s->o.repeat_penalty;
    if (p == 1.0f || n_hist <= 0) return;
    int from = s->o.repeat_last_n >= 0 && n_hist > s->o.repeat_last_n ? n_hist - s->o.repeat_last_n : 0;
    /* each distinct token once, as HF's gather/scatter does */
    for (int i = from; i < n_hist; i++) {
        int32_t t = hist[i];
        if (t < 0 || t >= s->n_vocab || s->seen[t]) continue;
        s->seen[t] = 1;
        logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
    }
    for (int i = from; i < n_hist; i++)
        if (hist[i] >= 0 && hist[i] < s->n_vocab) s->seen[hist[i]] = 0;
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* "a before b": larger value first, then lower id (a total order, so the
 * result does not depend on the partitioning) */
static inline int before(float va, int32_t ia, float vb, int32_t ib)
{
    return va > vb || (va == vb && ia < ib);
}

static void swap2(float *v, int32_t *id, int a, int b)
{
    float tv = v[a]; v[a] = v[b]; v[b] = tv;
    int32_t ti = id[a]; id[a] = id[b]; id[b] = ti;
}

/* Reorders (v, id)[0..n) so that the k first in "before" order occupy
 * [0, k), sorted. */
static void select_top(float *v, int32_t *id, int n, int k)
{
    if (k > n) k = n;
    int lo = 0, hi = n - 1;
    while (lo < hi && k < n) {
        int mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, moved to hi */
        if (before(v[mid], id[mid], v[lo], id[lo])) swap2(v, id, mid, lo);
        if (before(v[hi], id[hi], v[lo], id[lo])) swap2(v, id, hi, lo);
        if (before(v[mid], id[mid], v[hi], id[hi])) swap2(v, id, mid, hi);
        float pv = v[hi];
        int32_t pi = id[hi];
        int st = lo;
        for (int i = lo; i < hi; i++)
            if (before(v[i], id[i], pv, pi)) swap2(v, id, i, st++);
        swap2(v, id, st, hi);
        if (st == k - 1 || st == k) break;
        if (st < k) lo = st + 1;
        else hi = st - 1;
    }
    /* insertion sort of the k first (k is small in the fast path; when it
     * is not, a heap would do, but top-k that large is rare) */
    if (k > 256) {
        /* shell sort keeps the worst case reasonable for large k */
        for (int gap = k / 2; gap > 0; gap /= 2)
            for (int i = gap; i < k; i++) {
                float tv = v[i];
                int32_t ti = id[i];
                int j = i;
                while (j >= gap && before(tv, ti, v[j - gap], id[j - gap])) {
                    v[j] = v[j - gap]; id[j] = id[j - gap]; j -= gap;
                }
                v[j] = tv; id[j] = ti;
            }
        return;
    }
    for (int i = 1; i < k; i++) {
        float tv = v[i];
        int32_t ti = id[i];
        int j = i;
        while (j > 0 && before(tv, ti, v[j - 1], id[j - 1])) {
            v[j] = v[j - 1]; id[j] = id[j - 1]; j--;
        }
        v[j] = tv; id[j] = ti;
    }
}

/* The kept candidates: (s->idx, s->val)[0..m) hold ids and probabilities
 * (normalised over the kept set), in descending order where top-k/top-p
 * ordered them. Returns m. */
static int filter(sampler *s, float *logits, const int32_t *hist, int n_hist)
{
    apply_penalty(s, logits, hist, n_hist);
    int n = s->n_vocab, m = n;
    float inv_t = 1.0f / s->o.temperature;
    for (int i = 0; i < n; i++) {
        s->idx[i] = i;
        s->val[i] = logits[i] * inv_t;
    }
    int sorted = 0;   /* leading entries known sorted */
    if (s->o.top_k > 0 && s->o.top_k < n) {
        select_top(s->val, s->idx, n, s->o.top_k);
        /* HF keeps every token whose score ties the k-th */
        float kth = s->val[s->o.top_k - 1];
        m = s->o.top_k;
        for (int i = m; i < n; i++)
            if (s->val[i] >= kth) swap2(s->val, s->idx, i, m++);
        sorted = s->o.top_k;
        if (m > sorted) { select_top(s->val, s->idx, m, m); sorted = m; }
    }
    /* softmax over the m candidates */
    float mx = -FLT_MAX;
    for (int i = 0; i < m; i++) mx = s->val[i] > mx ? s->val[i] : mx;
    double z = 0;
    for (int i = 0; i < m; i++) z += exp((double)(s->val[i] - mx));
    if (s->o.top_p < 1.0f) {
        /* keep a token while the mass of the tokens before it is < top_p */
        int k = sorted ? m : 64;
        for (;;) {
            if (k > m) k = m;
            if (!sorted || sorted < k) { select_top(s->val, s->idx, m, k); sorted = k; }
            double cum = 0;
            int keep = -1;
            for (int i = 0; i < k; i++) {
                if (cum >= s->o.top_p * z) { keep = i; break; }
                cum += exp((double)(s->val[i] - mx));
            }
            if (keep < 0 && k == m) keep = m;
            if (keep >= 0) {
                if (keep < 1) keep = 1;
                m = keep;
                break;
            }
            k *= 4;
        }
        z = 0;
        for (int i = 0; i < m; i++) z += exp((double)(s->val[i] - mx));
    }
    /* probabilities; min-p compares each with the most likely (whose
     * normalised probability is exp(0)/z) */
    float thr = s->o.min_p > 0 ? s->o.min_p : 0.0f;
    int w = 0;
    double z2 = 0;
    for (int i = 0; i < m; i++) {
        double e = exp((double)(s->val[i] - mx));
        if (thr > 0 && e < thr) continue;     /* p_i < min_p * p_max  <=>  e_i < min_p * 1 */
        s->idx[w] = s->idx[i];
        s->val[w] = (float)e;
        z2 += e;
        w++;
    }
    (void)z;
    for (int i = 0; i < w; i++) s->val[i] = (float)(s->val[i] / z2);
    return w;
}

int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int n_hist)
{
    if (!(s->o.temperature > 0)) {
        apply_penalty(s, logits, history, n_hist);
        return argmax(logits, s->n_vocab);
    }
    int m = filter(s, logits, history, n_hist);
    float u = peftc_rng_uniform(&s->rng);
    double cum = 0;
    for (int i = 0; i < m; i++) {
        cum += s->val[i];
        if (u < cum) return s->idx[i];
    }
    return s->idx[m - 1];   /* rounding left u past the last bucket */
}

int sampler_distribution(sampler *s, float *logits, const int32_t *history, int n_hist, float *prob)
{
    memset(prob, 0, (size_t)s->n_vocab * sizeof *prob);
    if (!(s->o.temperature > 0)) {
        apply_penalty(s, logits, history, n_hist);
        prob[argmax(logits, s->n_vocab)] = 1.0f;
        return 1;
    }
    int m = filter(s, logits, history, n_hist);
    for (int i = 0; i < m; i++) prob[s->idx[i]] = s->val[i];
    return m;
}
