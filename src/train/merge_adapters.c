/* merge_adapters.c: several LoRA adapters combined into one new adapter, as
 * HF PEFT 0.21's LoraModel.add_weighted_adapter defines it (and
 * utils/merge_utils.py), formula for formula:
 *
 *   cat          A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] (rows), B = [B_1 B_2 ...]
 *                (columns), rank sum r_k; the adapters that have the module,
 *                in order, from row 0
 *   linear, ties, dare_linear, dare_ties, magnitude_prune
 *                A and B combined separately with weights
 *                wA_k = sign(w_k s_k) sqrt|w_k s_k|, wB_k = sqrt|w_k s_k|
 *                (all ranks equal); each of the task tensors T_k (the A_k, or
 *                the B_k) by
 *                  linear:          sum_k w_k T_k
 *                  magnitude_prune: sum_k w_k top_density(T_k)
 *                  ties:            prune to the top density by |value|, the
 *                                   majority sign per element (sign of sum_k T_k,
 *                                   "total"; or of sum_k sign T_k, "frequency";
 *                                   >= 0 is +), then the mean of w_k T_k over the
 *                                   k that agree with it (count clamped to >= 1)
 *                  dare_linear:     sum_k w_k m_k T_k / density, m ~ Bernoulli(density)
 *                  dare_ties:       the random pruning of dare, then ties' election
 *                density >= 1 prunes nothing
 *   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
 *                the full deltas D_k = s_k B_k A_k combined by the rule above
 *                with the raw weights w_k, then D = U S V^T truncated to the
 *                rank (--svd-rank, default the largest r_k): B = U_r S_r, A = V_r^T
 *
 * The new adapter's config is the head adapter's with r = lora_alpha = the new
 * rank (scale 1), target_modules the union, no rank/alpha patterns, and
 * use_rslora off (PEFT keeps the first adapter's flag, which would scale the
 * stored product by sqrt(r) when that adapter was rsLoRA). Its other tensors
 * (the classification head) are the head adapter's.
 *
 * DARE's masks come from peftc's generator (--seed), not torch.bernoulli's:
 * same distribution, different draws. */
#include "train/task.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MERGE_MAX 64

typedef enum comb_rule { RULE_LINEAR, RULE_TIES, RULE_DARE_LINEAR, RULE_DARE_TIES, RULE_MAGNITUDE } comb_rule;

typedef struct merge_in {
    json_t *cfg;
    peftc_safetensors *st;
    int r;
    double scale;
} merge_in;

typedef struct module_io {
    char *name;              /* the module path: the key without ".lora_A.weight" */
    int in, out;
} module_io;

static const char *A_SUFFIX = ".lora_A.weight", *B_SUFFIX = ".lora_B.weight";

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

static peftc_status read_one(const char *dir, merge_in *mi, peftc_error *err)
{
    char path[4096];
    peftc_status rc;
    if ((rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err))) return rc;
    json_error_t je;
    if (!(mi->cfg = json_load_file(path, 0, &je))) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s", path, je.text);
    const char *pt = json_string_value(json_object_get(mi->cfg, "peft_type"));
    if (!pt || strcmp(pt, "LORA")) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: peft_type %s: only LoRA adapters are combined", path, pt ? pt : "missing");
    json_t *r = json_object_get(mi->cfg, "r"), *al = json_object_get(mi->cfg, "lora_alpha");
    if (!json_is_integer(r) || json_integer_value(r) <= 0 || json_integer_value(r) > 1 << 16)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: r must be a positive integer", path);
    if (!json_is_number(al)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: lora_alpha must be a number", path);
    mi->r = (int)json_integer_value(r);
    double alpha = json_number_value(al);
    mi->scale = json_is_true(json_object_get(mi->cfg, "use_rslora")) ? alpha / sqrt((double)mi->r) : alpha / mi->r;
    json_t *rp = json_object_get(mi->cfg, "rank_pattern"), *ap = json_object_get(mi->cfg, "alpha_pattern");
    if ((json_is_object(rp) && json_object_size(rp)) || (json_is_object(ap) && json_object_size(ap)))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: rank_pattern/alpha_pattern adapters are not combined (one scale per adapter)", path);
    if (json_is_true(json_object_get(mi->cfg, "use_dora"))) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: DoRA adapters are not combined", path);
    json_t *tmod = json_object_get(mi->cfg, "target_modules");
    if (!json_is_array(tmod) && !json_is_string(tmod))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: target_modules must be a list or a regular expression", path);
    if ((rc = peftc_path_join(path, sizeof path, dir, "adapter_model.safetensors", err)) ||
        (rc = peftc_safetensors_open(path, &mi->st, err)))
        return rc;
    return PEFTC_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(((const module_io *)a)->name, ((const module_io *)b)->name); }

/* The union of the adapters' LoRA modules with their widths; every A has a B
 * of matching shape and rank r, and a module has one (in, out) everywhere. */
static peftc_status collect_modules(merge_in *mi, const char *const *dirs, int n, module_io **out, int *n_out,
                                    peftc_error *err)
{
    module_io *mods = NULL;
    int nm = 0, cap = 0;
    for (int k = 0; k < n; k++) {
        const peftc_safetensors *st = mi[k].st;
        for (int i = 0; i < st->n; i++) {
            const st_tensor *t = &st->t[i];
            if (!strstr(t->name, "lora_")) continue;
            if (ends_with(t->name, B_SUFFIX)) continue;   /* checked with its A */
            if (!ends_with(t->name, A_SUFFIX))
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s/adapter_model.safetensors: %s: only lora_A/lora_B weights are combined", dirs[k], t->name);
            size_t pl = strlen(t->name) - strlen(A_SUFFIX);
            char bname[1024];
            if (pl + strlen(B_SUFFIX) >= sizeof bname) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor name too long", dirs[k]);
            memcpy(bname, t->name, pl);
            strcpy(bname + pl, B_SUFFIX);
            const st_tensor *b = st_find(st, bname);
            if (!b) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s/adapter_model.safetensors: %s has no %s", dirs[k], t->name, bname);
            if (t->ndim != 2 || b->ndim != 2 || t->shape[0] != mi[k].r || b->shape[1] != mi[k].r || t->shape[1] <= 0 ||
                b->shape[0] <= 0 || t->shape[1] > 1 << 20 || b->shape[0] > 1 << 20)
                return peftc_fail(err, PEFTC_ERR_FORMAT, "%s/adapter_model.safetensors: %s / lora_B: shapes do not fit rank %d",
                                  dirs[k], t->name, mi[k].r);
            int found = -1;
            for (int j = 0; j < nm; j++) if (strlen(mods[j].name) == pl && !strncmp(mods[j].name, t->name, pl)) { found = j; break; }
            if (found >= 0) {
                if (mods[found].in != (int)t->shape[1] || mods[found].out != (int)b->shape[0])
                    return peftc_fail(err, PEFTC_ERR_INPUT, "%s: module %s is (%d, %d) here and (%d, %d) in another adapter: "
                                      "shapes that do not fit (different base models?)", dirs[k], mods[found].name,
                                      (int)b->shape[0], (int)t->shape[1], mods[found].out, mods[found].in);
                continue;
            }
            if (nm == cap) {
                cap = cap ? 2 * cap : 64;
                module_io *nmods = realloc(mods, (size_t)cap * sizeof *mods);
                if (!nmods) { free(mods); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
                mods = nmods;
            }
            mods[nm].name = strndup(t->name, pl);
            mods[nm].in = (int)t->shape[1];
            mods[nm].out = (int)b->shape[0];
            if (!mods[nm].name) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            nm++;
        }
    }
    if (nm == 0) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: no LoRA weights to combine", dirs[0]);
    qsort(mods, (size_t)nm, sizeof *mods, cmp_str);
    *out = mods;
    *n_out = nm;
    return PEFTC_OK;
}

/* ---- the combination rules of peft/utils/merge_utils.py on n task tensors of numel each */

typedef struct mag_item { float a; size_t i; } mag_item;
static int cmp_mag(const void *x, const void *y)
{
    const mag_item *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? 1 : -1;   /* descending */
    return p->i < q->i ? -1 : p->i > q->i;
}

/* keeps the int(density * numel) largest |t| (torch.topk), zeroes the rest */
static peftc_status magnitude_prune_one(float *t, size_t numel, double density, mag_item *scratch, peftc_error *err)
{
    if (density >= 1) return PEFTC_OK;
    size_t k = (size_t)(density * (double)numel);
    for (size_t i = 0; i < numel; i++) { scratch[i].a = fabsf(t[i]); scratch[i].i = i; }
    qsort(scratch, numel, sizeof *scratch, cmp_mag);
    for (size_t j = k; j < numel; j++) t[scratch[j].i] = 0.0f;
    (void)err;
    return PEFTC_OK;
}

static void random_prune_one(float *t, size_t numel, double density, peftc_rng *rng)
{
    if (density >= 1) return;
    float d = (float)density;
    for (size_t i = 0; i < numel; i++) {
        /* a uniform in [0, 1) below density: kept (torch.bernoulli's rule) */
        int keep = (double)(peftc_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0) < density;
        t[i] = keep ? t[i] / d : 0.0f;
    }
}

static float signf(float x) { return (float)((x > 0) - (x < 0)); }

/* T (n, numel), in place; result in out (numel). */
static peftc_status combine(comb_rule rule, float *T, int n, size_t numel, const float *w, double density,
                            int frequency, peftc_rng *rng, mag_item *scratch, float *out, peftc_error *err)
{
    peftc_status rc;
    for (int k = 0; k < n; k++) {
        float *t = T + (size_t)k * numel;
        if (rule == RULE_TIES || rule == RULE_MAGNITUDE) {
            if ((rc = magnitude_prune_one(t, numel, density, scratch, err))) return rc;
        } else if (rule == RULE_DARE_LINEAR || rule == RULE_DARE_TIES) {
            random_prune_one(t, numel, density, rng);
        }
    }
    if (rule == RULE_LINEAR || rule == RULE_MAGNITUDE || rule == RULE_DARE_LINEAR) {
        for (size_t i = 0; i < numel; i++) {
            float s = 0;
            for (int k = 0; k < n; k++) s += T[(size_t)k * numel + i] * w[k];
            out[i] = s;
        }
        return PEFTC_OK;
    }
    /* ties: the majority sign of the pruned tensors, then the disjoint mean */
    for (size_t i = 0; i < numel; i++) {
        float m = 0;
        for (int k = 0; k < n; k++) {
            float v = T[(size_t)k * numel + i];
            m += frequency ? signf(v) : v;
        }
        float maj = m >= 0 ? 1.0f : -1.0f, s = 0, cnt = 0;
        for (int k = 0; k < n; k++) {
            float v = T[(size_t)k * numel + i];
            if (signf(v) != maj) continue;
            s += v * w[k];
            cnt += 1;
        }
        out[i] = s / (cnt < 1 ? 1.0f : cnt);
    }
    return PEFTC_OK;
}

static int parse_combination(const char *c, comb_rule *rule, int *svd, int *cat)
{
    static const struct { const char *name; comb_rule rule; int svd, cat; } tab[] = {
        {"linear", RULE_LINEAR, 0, 0}, {"cat", RULE_LINEAR, 0, 1}, {"svd", RULE_LINEAR, 1, 0},
        {"ties", RULE_TIES, 0, 0}, {"ties_svd", RULE_TIES, 1, 0},
        {"dare_linear", RULE_DARE_LINEAR, 0, 0}, {"dare_linear_svd", RULE_DARE_LINEAR, 1, 0},
        {"dare_ties", RULE_DARE_TIES, 0, 0}, {"dare_ties_svd", RULE_DARE_TIES, 1, 0},
        {"magnitude_prune", RULE_MAGNITUDE, 0, 0}, {"magnitude_prune_svd", RULE_MAGNITUDE, 1, 0}};
    for (size_t i = 0; i < sizeof tab / sizeof *tab; i++)
        if (!strcmp(c, tab[i].name)) { *rule = tab[i].rule; *svd = tab[i].svd; *cat = tab[i].cat; return 1; }
    return 0;
}

static peftc_status load_f32(const merge_in *mi, const char *name, float *dst, peftc_error *err)
{
    const st_tensor *t = st_find(mi->st, name);
    if (!t) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing", name);
    return st_to_f32(mi->st, t, dst, err);
}

static const char *base_of(const json_t *cfg)
{
    const char *b = json_string_value(json_object_get(cfg, "base_model_name_or_path"));
    if (!b || !*b) return NULL;
    const char *s = b + strlen(b);
    while (s > b && s[-1] == '/') s--;
    const char *e = s;
    while (s > b && s[-1] != '/') s--;
    static __thread char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)(e - s), s);
    return buf;
}

peftc_status peftc_merge_adapters(const peftc_merge_opts *o, peftc_error *err)
{
    int n = o->n;
    if (n < 1 || n > MERGE_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "--adapter: 1 to %d adapters to combine, got %d", MERGE_MAX, n);
    if (o->n_weights != n) return peftc_fail(err, PEFTC_ERR_INPUT, "--weights: %d weights for %d adapters", o->n_weights, n);
    for (int k = 0; k < n; k++)
        if (!isfinite(o->weights[k])) return peftc_fail(err, PEFTC_ERR_INPUT, "--weights: weight %d is not a finite number", k + 1);
    comb_rule rule;
    int svd, cat;
    if (!parse_combination(o->combination, &rule, &svd, &cat))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--combination %s: one of linear cat svd ties ties_svd dare_linear dare_linear_svd "
                          "dare_ties dare_ties_svd magnitude_prune magnitude_prune_svd", o->combination);
    /* PEFT: one adapter can only be combined linearly */
    if (n == 1) { rule = RULE_LINEAR; svd = 0; cat = 0; }
    if (rule != RULE_LINEAR && !(o->density >= 0 && o->density <= 1))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--density: %s needs a density in [0, 1]", o->combination);
    if (o->svd_rank < 0 || (o->svd_rank == 0 && o->svd_rank_given))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--svd-rank %d: must be a positive integer", o->svd_rank);
    if (o->head < 0 || o->head >= n) return peftc_fail(err, PEFTC_ERR_INPUT, "--head: no adapter %d", o->head);
    merge_in mi[MERGE_MAX];
    memset(mi, 0, sizeof mi);
    module_io *mods = NULL;
    int nm = 0;
    peftc_status rc = PEFTC_OK;
    float *bufA = NULL, *bufB = NULL, *T = NULL, *newA = NULL, *newB = NULL;
    double *D = NULL, *U = NULL, *S = NULL, *VT = NULL;
    mag_item *scratch = NULL;
    st_write_item *items = NULL;
    float **owned = NULL;
    int n_items = 0, n_owned = 0;
    json_t *cfg = NULL;
    char *text = NULL;
    for (int k = 0; k < n; k++) if ((rc = read_one(o->dirs[k], &mi[k], err))) goto out;
    for (int k = 1; k < n; k++) {
        const char *b0 = base_of(mi[0].cfg);
        char first[512];
        snprintf(first, sizeof first, "%s", b0 ? b0 : "");
        const char *bk = base_of(mi[k].cfg);
        if (*first && bk && strcmp(first, bk)) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: trained on base model '%s', %s on '%s'", o->dirs[k], bk, o->dirs[0], first);
            goto out;
        }
    }
    int new_rank = 0, max_r = 0;
    for (int k = 0; k < n; k++) {
        if (mi[k].r > max_r) max_r = mi[k].r;
        if (!cat && !svd && mi[k].r != mi[0].r) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: rank %d, %s rank %d: %s needs adapters of one rank (cat and svd do not)",
                            o->dirs[k], mi[k].r, o->dirs[0], mi[0].r, o->combination);
            goto out;
        }
        new_rank += cat ? mi[k].r : 0;
    }
    if (!cat) new_rank = svd ? (o->svd_rank > 0 ? o->svd_rank : max_r) : mi[0].r;
    if ((rc = collect_modules(mi, o->dirs, n, &mods, &nm, err))) goto out;
    size_t max_io = 0;
    int maxw = 0;
    for (int j = 0; j < nm; j++) {
        size_t io = (size_t)mods[j].in * mods[j].out;
        if (io > max_io) max_io = io;
        if (mods[j].in > maxw) maxw = mods[j].in;
        if (mods[j].out > maxw) maxw = mods[j].out;
        int mn = mods[j].in < mods[j].out ? mods[j].in : mods[j].out;
        if (svd && new_rank > mn) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "--svd-rank %d: exceeds min(out, in) = %d of %s", new_rank, mn, mods[j].name);
            goto out;
        }
    }
    size_t rw = (size_t)(max_r > new_rank ? max_r : new_rank) * maxw;
    size_t tn = svd ? max_io : rw;
    bufA = malloc(rw * sizeof *bufA);
    bufB = malloc(rw * sizeof *bufB);
    T = malloc((size_t)n * tn * sizeof *T);
    scratch = malloc(tn * sizeof *scratch);
    owned = calloc((size_t)nm * 2, sizeof *owned);
    items = calloc((size_t)nm * 2 + 64, sizeof *items);
    if (svd) {
        D = malloc(max_io * sizeof *D);
        U = malloc((size_t)maxw * maxw * sizeof *U);
        S = malloc((size_t)maxw * sizeof *S);
        VT = malloc((size_t)maxw * maxw * sizeof *VT);
    }
    if (!bufA || !bufB || !T || !scratch || !owned || !items || (svd && (!D || !U || !S || !VT))) {
        rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        goto out;
    }
    peftc_rng rng;
    peftc_rng_seed(&rng, o->seed);
    for (int j = 0; j < nm; j++) {
        int in = mods[j].in, outw = mods[j].out;
        char an[1100], bn[1100];
        snprintf(an, sizeof an, "%s%s", mods[j].name, A_SUFFIX);
        snprintf(bn, sizeof bn, "%s%s", mods[j].name, B_SUFFIX);
        newA = calloc((size_t)new_rank * in, sizeof *newA);
        newB = calloc((size_t)outw * new_rank, sizeof *newB);
        if (!newA || !newB) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
        owned[n_owned++] = newA;
        owned[n_owned++] = newB;
        float *nA = newA, *nB = newB;
        newA = newB = NULL;
        int present[MERGE_MAX], np = 0;
        for (int k = 0; k < n; k++) if (st_find(mi[k].st, an)) present[np++] = k;
        if (cat) {
            int off = 0;
            for (int q = 0; q < np; q++) {
                int k = present[q], r = mi[k].r;
                if ((rc = load_f32(&mi[k], an, bufA, err)) || (rc = load_f32(&mi[k], bn, bufB, err))) goto out;
                float w = (float)o->weights[k], s = (float)mi[k].scale;
                for (size_t i = 0; i < (size_t)r * in; i++) nA[(size_t)off * in + i] = bufA[i] * w * s;
                for (int row = 0; row < outw; row++)
                    for (int c = 0; c < r; c++) nB[(size_t)row * new_rank + off + c] = bufB[(size_t)row * r + c];
                off += r;
            }
        } else if (!svd) {
            float wA[MERGE_MAX], wB[MERGE_MAX];
            for (int q = 0; q < np; q++) {
                int k = present[q];
                double ws = o->weights[k] * mi[k].scale;
                wA[q] = (float)(sqrt(fabs(ws)) * (ws >= 0 ? 1 : -1));
                wB[q] = (float)sqrt(fabs(ws));
            }
            size_t na = (size_t)new_rank * in, nb = (size_t)outw * new_rank;
            for (int q = 0; q < np; q++) if ((rc = load_f32(&mi[present[q]], an, T + (size_t)q * na, err))) goto out;
            if ((rc = combine(rule, T, np, na, wA, o->density, o->majority_frequency, &rng, scratch, nA, err))) goto out;
            for (int q = 0; q < np; q++) if ((rc = load_f32(&mi[present[q]], bn, T + (size_t)q * nb, err))) goto out;
            if ((rc = combine(rule, T, np, nb, wB, o->density, o->majority_frequency, &rng, scratch, nB, err))) goto out;
        } else {
            /* the full deltas s_k B_k A_k (get_delta_weight), combined, then truncated */
            size_t nd = (size_t)outw * in;
            float wk[MERGE_MAX];
            for (int q = 0; q < np; q++) {
                int k = present[q], r = mi[k].r;
                if ((rc = load_f32(&mi[k], an, bufA, err)) || (rc = load_f32(&mi[k], bn, bufB, err))) goto out;
                float *dk = T + (size_t)q * nd;
                for (int row = 0; row < outw; row++)
                    for (int col = 0; col < in; col++) {
                        float acc = 0;
                        for (int c = 0; c < r; c++) acc += bufB[(size_t)row * r + c] * bufA[(size_t)c * in + col];
                        dk[(size_t)row * in + col] = acc * (float)mi[k].scale;
                    }
                wk[q] = (float)o->weights[k];
            }
            float *res = malloc(nd * sizeof *res);
            if (!res) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
            rc = combine(rule, T, np, nd, wk, o->density, o->majority_frequency, &rng, scratch, res, err);
            if (!rc) {
                for (size_t i = 0; i < nd; i++) D[i] = res[i];
                if (svd_thin_f64(D, outw, in, U, S, VT)) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: the SVD failed", mods[j].name);
            }
            free(res);
            if (rc) goto out;
            int kk = outw < in ? outw : in;
            for (int row = 0; row < outw; row++)
                for (int c = 0; c < new_rank; c++) nB[(size_t)row * new_rank + c] = (float)(U[(size_t)row * kk + c] * S[c]);
            for (int c = 0; c < new_rank; c++)
                for (int col = 0; col < in; col++) nA[(size_t)c * in + col] = (float)VT[(size_t)c * in + col];
        }
        st_write_item *ia = &items[n_items++], *ib = &items[n_items++];
        ia->name = strdup(an);
        ib->name = strdup(bn);
        if (!ia->name || !ib->name) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
        ia->ndim = ib->ndim = 2;
        ia->shape[0] = new_rank; ia->shape[1] = in; ia->data = nA;
        ib->shape[0] = outw; ib->shape[1] = new_rank; ib->data = nB;
    }
    /* the head adapter's other tensors (classification head, pooler) */
    const peftc_safetensors *hs = mi[o->head].st;
    int n_extra = 0;
    for (int i = 0; i < hs->n; i++) if (!strstr(hs->t[i].name, "lora_")) n_extra++;
    if (n_extra > 0) {
        st_write_item *ni = realloc(items, (size_t)(n_items + n_extra) * sizeof *items);
        float **no = realloc(owned, (size_t)(n_owned + n_extra) * sizeof *owned);
        if (ni) items = ni;
        if (no) owned = no;
        if (!ni || !no) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    }
    for (int i = 0; i < hs->n; i++) {
        const st_tensor *t = &hs->t[i];
        if (strstr(t->name, "lora_")) continue;
        if (t->ndim < 1 || t->ndim > 2) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s: not a head tensor", o->dirs[o->head], t->name); goto out; }
        float *d = malloc((size_t)t->numel * sizeof *d);
        if (!d) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
        owned[n_owned++] = d;
        if ((rc = st_to_f32(hs, t, d, err))) goto out;
        st_write_item *it = &items[n_items++];
        it->name = strdup(t->name);
        if (!it->name) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
        it->ndim = t->ndim;
        it->shape[0] = t->shape[0];
        it->shape[1] = t->ndim > 1 ? t->shape[1] : 0;
        it->data = d;
    }
    /* the config: the head adapter's, rank and alpha the new rank, the union of targets */
    cfg = json_deep_copy(mi[o->head].cfg);
    /* target_modules as PEFT combines them: lists into their union, regular
     * expressions into "(re1)|(re2)". A mix (PEFT refuses it; peftc writes a
     * regular expression when a name is ambiguous) turns each list into the
     * expression PEFT's suffix matching means: (.*\.)?(n1|n2) */
    int n_str = 0;
    for (int k = 0; k < n; k++) n_str += json_is_string(json_object_get(mi[k].cfg, "target_modules"));
    json_t *tm = n_str ? NULL : json_array(), *sites = json_array();
    char *re = NULL;
    size_t re_len = 0;
    if ((!n_str && !tm) || !cfg || !sites) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); json_decref(tm); json_decref(sites); goto out; }
    for (int k = 0; k < n; k++) {
        size_t idx;
        json_t *v;
        if (n_str) {
            json_t *tk = json_object_get(mi[k].cfg, "target_modules");
            char lre[4096];
            const char *e = json_string_value(tk);
            if (!e) {
                size_t ll = (size_t)snprintf(lre, sizeof lre, "(.*\\.)?(");
                json_array_foreach(tk, idx, v) {
                    const char *nm = json_string_value(v);
                    if (!nm) continue;
                    if (idx && ll < sizeof lre) lre[ll++] = '|';
                    for (const char *c = nm; *c && ll + 2 < sizeof lre; c++) {
                        if (*c == '.') lre[ll++] = '\\';
                        lre[ll++] = *c;
                    }
                }
                if (ll + 2 >= sizeof lre) { free(re); json_decref(sites); rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: target_modules too long", o->dirs[k]); goto out; }
                lre[ll++] = ')';
                lre[ll] = 0;
                e = lre;
            }
            size_t el = strlen(e);
            char *nre = realloc(re, re_len + el + 4);
            if (!nre) { free(re); json_decref(sites); rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
            re = nre;
            re_len += (size_t)sprintf(re + re_len, "%s(%s)", k ? "|" : "", e);
        } else {
            json_array_foreach(json_object_get(mi[k].cfg, "target_modules"), idx, v) {
                int dup = 0;
                size_t j2;
                json_t *u;
                json_array_foreach(tm, j2, u) if (json_equal(u, v)) dup = 1;
                if (!dup) json_array_append(tm, v);
            }
        }
        json_t *pc = json_object_get(mi[k].cfg, "peftc");
        json_array_foreach(json_object_get(pc, "lora_sites"), idx, v) {
            int dup = 0;
            size_t j2;
            json_t *u;
            json_array_foreach(sites, j2, u) if (json_equal(u, v)) dup = 1;
            if (!dup) json_array_append(sites, v);
        }
    }
    if (n_str) { tm = json_string(re); free(re); }
    json_object_set_new(cfg, "target_modules", tm);
    json_t *pc = json_object_get(cfg, "peftc");
    if (json_is_object(pc) && json_array_size(sites)) json_object_set(pc, "lora_sites", sites);
    json_decref(sites);
    json_object_set_new(cfg, "r", json_integer(new_rank));
    json_object_set_new(cfg, "lora_alpha", json_real((double)new_rank));
    json_object_set_new(cfg, "alpha_pattern", json_object());
    json_object_set_new(cfg, "rank_pattern", json_object());
    json_object_set_new(cfg, "use_rslora", json_false());
    char path[4096];
    if ((rc = peftc_mkdir_p(o->out_dir, err)) ||
        (rc = peftc_path_join(path, sizeof path, o->out_dir, "adapter_model.safetensors", err)) ||
        (rc = st_write_f32(path, items, n_items, NULL, err)))
        goto out;
    if (!(text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto out; }
    if ((rc = peftc_path_join(path, sizeof path, o->out_dir, "adapter_config.json", err)) ||
        (rc = peftc_write_file_atomic(path, text, strlen(text), err)))
        goto out;
out:
    free(text);
    json_decref(cfg);
    for (int i = 0; i < n_items; i++) free((char *)items[i].name);
    free(items);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(newA); free(newB);
    free(bufA); free(bufB); free(T); free(scratch);
    free(D); free(U); free(S); free(VT);
    for (int j = 0; j < nm; j++) free(mods[j].name);
    free(mods);
    for (int k = 0; k < n; k++) { json_decref(mi[k].cfg); if (mi[k].st) peftc_safetensors_free(mi[k].st); }
    return rc;
}
