/* test_sampler.c: the sampler's chain against a naive reference written the
 * way Hugging Face's logits warpers compute it (full sort, ascending
 * cumulative sum for top-p, thresholds on a softmax), on random logits and
 * on ties; and the draws' frequencies against the distribution (chi-square). */
#include "testlib.h"
#include "train/sampler.h"

#include <float.h>

#define V 5003

typedef struct { float v; int id; } pair;
static int desc(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id - y->id;
}

/* HF order: penalty, temperature, top-k (ties with the k-th kept), top-p
 * (sorted ascending, drop while cumsum <= 1 - p, keep >= 1), min-p. */
static void reference(const float *logits_in, const int32_t *hist, int nh, const sampler_opts *o, double *prob)
{
    static float l[V];
    static pair p[V];
    memcpy(l, logits_in, sizeof l);
    if (o->repeat_penalty != 1.0f) {
        static char seen[V];
        memset(seen, 0, sizeof seen);
        int from = nh > o->repeat_last_n ? nh - o->repeat_last_n : 0;
        for (int i = from; i < nh; i++) seen[hist[i]] = 1;
        for (int t = 0; t < V; t++)
            if (seen[t]) l[t] = l[t] > 0 ? l[t] / o->repeat_penalty : l[t] * o->repeat_penalty;
    }
    static double s[V];
    static char keep[V];
    for (int t = 0; t < V; t++) { s[t] = (double)(l[t] * (1.0f / o->temperature)); keep[t] = 1; }
    for (int t = 0; t < V; t++) { p[t].v = (float)s[t]; p[t].id = t; }
    qsort(p, V, sizeof *p, desc);
    if (o->top_k > 0 && o->top_k < V) {
        float kth = p[o->top_k - 1].v;
        for (int t = 0; t < V; t++) if ((float)s[t] < kth) keep[t] = 0;
    }
    double mx = -DBL_MAX;
    for (int t = 0; t < V; t++) if (keep[t] && s[t] > mx) mx = s[t];
    if (o->top_p < 1.0f) {
        double z = 0;
        for (int t = 0; t < V; t++) if (keep[t]) z += exp(s[t] - mx);
        /* ascending over the kept ones */
        double cum = 0;
        int kept_after = 0;
        for (int i = V - 1; i >= 0; i--) {
            int t = p[i].id;
            if (!keep[t]) continue;
            cum += exp(s[t] - mx) / z;
            if (cum <= 1.0 - o->top_p) keep[t] = 0;
            else kept_after++;
        }
        if (!kept_after) keep[p[0].id] = 1;
    }
    double z = 0;
    for (int t = 0; t < V; t++) if (keep[t]) z += exp(s[t] - mx);
    if (o->min_p > 0) {
        double pmax = 1.0 / z;   /* the max has exp(0) */
        for (int t = 0; t < V; t++)
            if (keep[t] && exp(s[t] - mx) / z < o->min_p * pmax) keep[t] = 0;
        z = 0;
        for (int t = 0; t < V; t++) if (keep[t]) z += exp(s[t] - mx);
    }
    for (int t = 0; t < V; t++) prob[t] = keep[t] ? exp(s[t] - mx) / z : 0;
}

static int compare(const char *what, const float *logits, const int32_t *hist, int nh, const sampler_opts *o)
{
    static float l[V], got[V];
    static double want[V];
    sampler s;
    peftc_error err;
    if (sampler_init(&s, o, V, &err)) { CHECK(0, "%s: init: %s", what, err.msg); return 1; }
    memcpy(l, logits, sizeof l);
    int m = sampler_distribution(&s, l, hist, nh, got);
    reference(logits, hist, nh, o, want);
    double worst = 0;
    int support_diff = 0, nref = 0;
    for (int t = 0; t < V; t++) {
        double d = fabs(got[t] - want[t]);
        if (d > worst) worst = d;
        if ((got[t] > 0) != (want[t] > 0)) support_diff++;
        nref += want[t] > 0;
    }
    CHECK(worst < 1e-6 && support_diff == 0 && m == nref, "%s: %d kept (ref %d), max |p - p_ref| %.2e", what, m, nref, worst);
    sampler_free(&s);
    return 0;
}

int main(void)
{
    static float logits[V];
    static int32_t hist[200];
    peftc_rng r;
    peftc_rng_seed(&r, 7);
    for (int t = 0; t < V; t++) logits[t] = 3.0f * peftc_rng_normal(&r);
    for (int i = 0; i < 200; i++) hist[i] = (int32_t)peftc_rng_below(&r, V);

    sampler_opts o;
    struct { const char *name; float temp; int k; float p, minp, pen; } cases[] = {
        {"temperature 1", 1.0f, 0, 1.0f, 0, 1.0f},
        {"temperature 0.7", 0.7f, 0, 1.0f, 0, 1.0f},
        {"top-k 40", 0.8f, 40, 1.0f, 0, 1.0f},
        {"top-k 1", 1.0f, 1, 1.0f, 0, 1.0f},
        {"top-p 0.9", 1.0f, 0, 0.9f, 0, 1.0f},
        {"top-p 0.999 (grows past 64 candidates)", 1.5f, 0, 0.999f, 0, 1.0f},
        {"top-p 0.05", 1.0f, 0, 0.05f, 0, 1.0f},
        {"top-k 50 + top-p 0.95", 0.9f, 50, 0.95f, 0, 1.0f},
        {"min-p 0.05", 1.0f, 0, 1.0f, 0.05f, 1.0f},
        {"top-p 0.9 + min-p 0.1", 1.0f, 0, 0.9f, 0.1f, 1.0f},
        {"repeat penalty 1.3", 1.0f, 0, 1.0f, 0, 1.3f},
        {"everything", 0.8f, 300, 0.92f, 0.02f, 1.15f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        sampler_opts_default(&o);
        o.temperature = cases[c].temp; o.top_k = cases[c].k; o.top_p = cases[c].p;
        o.min_p = cases[c].minp; o.repeat_penalty = cases[c].pen; o.repeat_last_n = 64;
        compare(cases[c].name, logits, hist, 200, &o);
    }

    /* ties at the k-th value are all kept, as HF does */
    static float tied[V];
    for (int t = 0; t < V; t++) tied[t] = (float)(t % 7);
    sampler_opts_default(&o);
    o.temperature = 1.0f; o.top_k = 10;
    compare("top-k with ties", tied, hist, 0, &o);
    o.top_k = 0; o.top_p = 0.5f;
    compare("top-p with ties", tied, hist, 0, &o);

    /* greedy: the argmax after the penalty, lowest id on ties */
    {
        sampler s;
        peftc_error err;
        sampler_opts_default(&o);
        sampler_init(&s, &o, V, &err);
        static float l[V];
        memcpy(l, tied, sizeof l);
        CHECK(sampler_sample(&s, l, NULL, 0) == 6, "greedy picks the lowest id among the maxima");
        int32_t h[1] = {6};
        memcpy(l, tied, sizeof l);
        s.o.repeat_penalty = 2.0f;
        CHECK(sampler_sample(&s, l, h, 1) == 13, "greedy after the penalty moves to the next maximum");
        sampler_free(&s);
    }

    /* draws follow the distribution: chi-square over the kept tokens */
    {
        sampler s;
        peftc_error err;
        sampler_opts_default(&o);
        o.temperature = 1.0f; o.top_k = 20; o.seed = 123;
        sampler_init(&s, &o, V, &err);
        static float l[V], prob[V];
        memcpy(l, logits, sizeof l);
        sampler_distribution(&s, l, NULL, 0, prob);
        static int count[V];
        const int draws = 200000;
        for (int i = 0; i < draws; i++) {
            memcpy(l, logits, sizeof l);
            count[sampler_sample(&s, l, NULL, 0)]++;
        }
        double chi = 0;
        int df = -1, outside = 0;
        for (int t = 0; t < V; t++) {
            if (prob[t] > 0) { double e = prob[t] * draws; chi += (count[t] - e) * (count[t] - e) / e; df++; }
            else outside += count[t];
        }
        /* 19 degrees of freedom: the 0.999 quantile is 43.8 */
        CHECK(outside == 0 && chi < 43.8, "200000 top-k 20 draws: chi-square %.1f on %d df, %d outside the kept set", chi, df, outside);
        /* the same seed gives the same sequence */
        sampler s2;
        sampler_init(&s2, &o, V, &err);
        sampler_free(&s);
        sampler_init(&s, &o, V, &err);
        int same = 1;
        for (int i = 0; i < 1000; i++) {
            memcpy(l, logits, sizeof l);
            int a = sampler_sample(&s, l, NULL, 0);
            memcpy(l, logits, sizeof l);
            same &= a == sampler_sample(&s2, l, NULL, 0);
        }
        CHECK(same, "a seed reproduces the draws");
        sampler_free(&s);
        sampler_free(&s2);
    }

    /* bad options */
    {
        peftc_error err;
        sampler_opts_default(&o);
        o.top_p = 0;
        CHECK(sampler_opts_check(&o, &err) == PEFTC_ERR_INPUT && strstr(err.msg, "--top-p"), "top-p 0 refused: %s", err.msg);
        sampler_opts_default(&o);
        o.min_p = 1.5f;
        CHECK(sampler_opts_check(&o, &err) == PEFTC_ERR_INPUT && strstr(err.msg, "--min-p"), "min-p 1.5 refused: %s", err.msg);
        sampler_opts_default(&o);
        o.repeat_penalty = 0;
        CHECK(sampler_opts_check(&o, &err) == PEFTC_ERR_INPUT, "penalty 0 refused: %s", err.msg);
    }
    return tl_finish();
}
