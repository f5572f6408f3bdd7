/* adalora.c: PEFT's AdaLoRA around the optimizer step — the orthogonality
 * regulariser, the RankAllocator (importance EMAs, cubic budget, masking)
 * and the rank pattern. Follows peft/tuners/adalora/{layer,model,config}.py
 * (PEFT 0.21): the same formulas in the same order, in double where PEFT's
 * float32 would only add round-off. */
#include "peft/adalora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_PREFIX "base_model.model."

peftc_status adalora_resolve(const peftc_adalora_opts *in, peftc_adalora_opts *o, peftc_error *err)
{
    *o = *in;
    if (!o->init_r) o->init_r = 12;
    if (!o->target_r) o->target_r = 8;
    if (!o->delta_t) o->delta_t = 1;
    if (o->beta1 == 0) o->beta1 = 0.85f;
    if (o->beta2 == 0) o->beta2 = 0.85f;
    if (!o->orth_reg_set) o->orth_reg_weight = 0.5f;
    o->orth_reg_set = 1;
    if (o->init_r < 1 || o->target_r < 1 || o->tinit < 0 || o->tfinal < 0 || o->delta_t < 1 || o->total_step < 0)
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --init-r, --target-r, --delta-t must be >= 1 and --tinit, --tfinal, "
                          "--total-step >= 0 (got %d, %d, %d, %d, %d, %d)", o->init_r, o->target_r, o->delta_t, o->tinit,
                          o->tfinal, o->total_step);
    if (o->target_r > o->init_r)
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --target-r %d exceeds --init-r %d (the budget only shrinks)",
                          o->target_r, o->init_r);
    /* RankAllocator asserts 0 < beta < 1 */
    if (!(o->beta1 > 0 && o->beta1 < 1) || !(o->beta2 > 0 && o->beta2 < 1))
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --beta1 and --beta2 must be in (0, 1), got %g and %g",
                          o->beta1, o->beta2);
    if (!(o->orth_reg_weight >= 0))
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --orth-reg-weight must be >= 0, got %g", o->orth_reg_weight);
    if (o->total_step > 0 && o->tinit >= o->total_step - o->tfinal)
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --tinit %d and --tfinal %d leave no budgeting phase in --total-step %d "
                          "(need tinit < total_step - tfinal)", o->tinit, o->tfinal, o->total_step);
    return PEFTC_OK;
}

peftc_status adalora_init(adalora_state *a, const peftc_adalora_opts *o, param_block *pb, const delta_set *ds,
                          peftc_error *err)
{
    memset(a, 0, sizeof *a);
    a->o = *o;
    int n = 0, r_max = 1;
    for (int i = 0; i < ds->n; i++) n += ds->d[i].spec.kind == DELTA_SVD;
    if (!n) return PEFTC_OK;
    a->mod = calloc((size_t)n, sizeof *a->mod);
    if (!a->mod) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < ds->n; i++) {
        const delta *d = &ds->d[i];
        if (d->spec.kind != DELTA_SVD) continue;
        adalora_module *m = &a->mod[a->n_mod++];
        m->delta = i;
        m->p_a = d->p_down;
        m->p_b = d->p_up;
        m->p_e = d->p_sv;
        m->r = d->spec.r;
        m->in = d->in;
        m->out = d->out;
        m->tri = a->init_bgt;
        a->init_bgt += m->r;
        if (m->r > r_max) r_max = m->r;
        /* the key of PEFT's rank_pattern: the parameter's name in the wrapped model (no adapter name) */
        const char *name = pb->e[m->p_e].name;
        if (!strncmp(name, HEAD_PREFIX, strlen(HEAD_PREFIX))) name += strlen(HEAD_PREFIX);
        snprintf(m->key, sizeof m->key, "%s", name);
    }
    a->target_bgt = o->target_r * a->n_mod;
    a->ipt_ema = calloc(pb->total ? pb->total : 1, sizeof(float));
    a->unc_ema = calloc(pb->total ? pb->total : 1, sizeof(float));
    a->keep = malloc((size_t)a->init_bgt * sizeof(float));
    a->score = malloc((size_t)a->init_bgt * sizeof(double));
    a->sorted = malloc((size_t)a->init_bgt * sizeof(double));
    a->cov = malloc((size_t)r_max * r_max * sizeof(double));
    if (!a->ipt_ema || !a->unc_ema || !a->keep || !a->score || !a->sorted || !a->cov)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int k = 0; k < a->init_bgt; k++) a->keep[k] = 1.0f;
    a->flags[1] = (float)a->init_bgt;
    if (pb->n_state + 5 > PARAM_STATE_MAX) return peftc_fail(err, PEFTC_ERR_INPUT, "internal: no room for AdaLoRA's state");
    pb->state[pb->n_state++] = (param_state){"adalora_exp_avg_ipt", a->ipt_ema, pb->total, 0};
    pb->state[pb->n_state++] = (param_state){"adalora_exp_avg_unc", a->unc_ema, pb->total, 0};
    pb->state[pb->n_state++] = (param_state){"adalora_rank_mask", a->keep, (size_t)a->init_bgt, 0};
    pb->state[pb->n_state++] = (param_state){"adalora_flags", a->flags, 2, 0};
    pb->state[pb->n_state++] = (param_state){"adalora_options", a->opts, 9, 1};   /* filled by adalora_begin */
    a->on = 1;
    return PEFTC_OK;
}

peftc_status adalora_begin(adalora_state *a, int run_steps, peftc_error *err)
{
    if (!a->on) return PEFTC_OK;
    if (a->o.total_step <= 0) a->o.total_step = run_steps;
    if (a->o.tinit >= a->o.total_step - a->o.tfinal)
        return peftc_fail(err, PEFTC_ERR_INPUT, "adalora: --tinit %d and --tfinal %d leave no budgeting phase in %d total steps "
                          "(need tinit < total_step - tfinal; set --total-step or train longer)", a->o.tinit, a->o.tfinal,
                          a->o.total_step);
    const peftc_adalora_opts *o = &a->o;
    float opts[9] = {(float)o->init_r, (float)o->target_r, (float)o->tinit, (float)o->tfinal, (float)o->delta_t,
                     (float)o->total_step, o->beta1, o->beta2, o->orth_reg_weight};
    memcpy(a->opts, opts, sizeof opts);
    return PEFTC_OK;
}

void adalora_free(adalora_state *a)
{
    free(a->mod);
    free(a->ipt_ema);
    free(a->unc_ema);
    free(a->keep);
    free(a->score);
    free(a->sorted);
    free(a->cov);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------- regulariser */

/* ||M M^T - I||_F for M (r,w) (rows: A) or ||M^T M - I||_F for M (w,r)
 * (columns: B), and g += c d/dM of it, c = weight / #matrices:
 * d||D||/dM = 2 D M / ||D|| (A) or 2 M D / ||D|| (B), D symmetric. */
static double orth_term(double *cov, const float *M, float *g, int r, int w, int rows, double c)
{
    for (int i = 0; i < r; i++)
        for (int j = 0; j <= i; j++) {
            double acc = 0;
            if (rows) for (int k = 0; k < w; k++) acc += (double)M[(size_t)i * w + k] * M[(size_t)j * w + k];
            else for (int k = 0; k < w; k++) acc += (double)M[(size_t)k * r + i] * M[(size_t)k * r + j];
            if (i == j) acc -= 1.0;
            cov[(size_t)i * r + j] = cov[(size_t)j * r + i] = acc;
        }
    double n2 = 0;
    for (int i = 0; i < r * r; i++) n2 += cov[i] * cov[i];
    double nrm = sqrt(n2);
    if (!(nrm > 0)) return nrm;   /* exactly orthonormal: no gradient */
    double f = 2.0 * c / nrm;
    if (rows) {
        for (int i = 0; i < r; i++)
            for (int k = 0; k < w; k++) {
                double acc = 0;
                for (int j = 0; j < r; j++) acc += cov[(size_t)i * r + j] * M[(size_t)j * w + k];
                g[(size_t)i * w + k] += (float)(f * acc);
            }
    } else {
        for (int k = 0; k < w; k++)
            for (int i = 0; i < r; i++) {
                double acc = 0;
                for (int j = 0; j < r; j++) acc += (double)M[(size_t)k * r + j] * cov[(size_t)j * r + i];
                g[(size_t)k * r + i] += (float)(f * acc);
            }
    }
    return nrm;
}

float adalora_regularize(adalora_state *a, param_block *pb)
{
    if (!a->on || a->o.orth_reg_weight == 0) return 0.0f;
    /* AdaLoraModel.forward: every lora_A and lora_B counts, also of rank 0 */
    int num = 2 * a->n_mod;
    double c = (double)a->o.orth_reg_weight / num, total = 0;
    for (int i = 0; i < a->n_mod; i++) {
        const adalora_module *m = &a->mod[i];
        total += orth_term(a->cov, params_value(pb, m->p_a), params_grad(pb, m->p_a), m->r, m->in, 1, c);
        total += orth_term(a->cov, params_value(pb, m->p_b), params_grad(pb, m->p_b), m->r, m->out, 0, c);
    }
    return (float)(a->o.orth_reg_weight * total / num);
}

/* ------------------------------------------------------- rank allocator */

/* RankAllocator.update_ipt: ipt = |p g|; exp_avg_ipt = b1 e + (1 - b1) ipt;
 * exp_avg_unc = b2 u + (1 - b2) |ipt - exp_avg_ipt| (the updated one). */
static void update_ipt(adalora_state *a, const param_block *pb)
{
    double b1 = a->o.beta1, b2 = a->o.beta2;
    for (int i = 0; i < a->n_mod; i++) {
        const int ps[3] = {a->mod[i].p_a, a->mod[i].p_b, a->mod[i].p_e};
        for (int q = 0; q < 3; q++) {
            const param_entry *e = &pb->e[ps[q]];
            const float *p = pb->p + e->offset, *g = pb->g + e->offset;
            float *ei = a->ipt_ema + e->offset, *eu = a->unc_ema + e->offset;
            for (size_t j = 0; j < e->numel; j++) {
                double ipt = fabs((double)p[j] * g[j]);
                double ne = b1 * ei[j] + (1 - b1) * ipt;
                ei[j] = (float)ne;
                eu[j] = (float)(b2 * eu[j] + (1 - b2) * fabs(ipt - ne));
            }
        }
    }
}

/* RankAllocator.budget_schedule */
static int budget_schedule(const adalora_state *a, int step, int *mask_ind)
{
    int tinit = a->o.tinit, tfinal = a->o.tfinal, total = a->o.total_step;
    if (step <= tinit) { *mask_ind = 0; return a->init_bgt; }
    if (step > total - tfinal) { *mask_ind = 1; return a->target_bgt; }
    double mul = 1.0 - (double)(step - tinit) / (double)(total - tfinal - tinit);
    *mask_ind = step % a->o.delta_t == 0;
    /* Python's int() of a positive float, of (init - target) * mul**3 + target */
    return (int)((double)(a->init_bgt - a->target_bgt) * pow(mul, 3.0) + a->target_bgt);
}

/* Ascending heapsort in place: qsort may allocate, and nothing allocates in a step. */
static void sift_down(double *a, size_t i, size_t n)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && a[c + 1] > a[c]) c++;
        if (!(a[c] > a[i])) return;
        double t = a[i]; a[i] = a[c]; a[c] = t;
        i = c;
    }
}

static void heapsort_double(double *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;) sift_down(a, i, n);
    for (size_t end = n; end-- > 1;) {
        double t = a[0]; a[0] = a[end]; a[end] = t;
        sift_down(a, 0, end);
    }
}

/* RankAllocator.mask_to_budget: the score of triplet k is
 * s(E_k) + mean_j s(A_kj) + mean_o s(B_ok), s = exp_avg_ipt * exp_avg_unc;
 * the (init_bgt - budget)-th smallest is the threshold (torch.kthvalue) and
 * every triplet scoring <= it has E_k set to 0. */
static void mask_to_budget(adalora_state *a, param_block *pb, int budget)
{
    for (int i = 0; i < a->n_mod; i++) {
        const adalora_module *m = &a->mod[i];
        size_t oa = pb->e[m->p_a].offset, ob = pb->e[m->p_b].offset, oe = pb->e[m->p_e].offset;
        for (int k = 0; k < m->r; k++) {
            double sa = 0, sb = 0;
            for (int j = 0; j < m->in; j++) {
                size_t q = oa + (size_t)k * m->in + j;
                sa += (double)a->ipt_ema[q] * a->unc_ema[q];
            }
            for (int o = 0; o < m->out; o++) {
                size_t q = ob + (size_t)o * m->r + k;
                sb += (double)a->ipt_ema[q] * a->unc_ema[q];
            }
            double se = (double)a->ipt_ema[oe + k] * a->unc_ema[oe + k];
            a->score[m->tri + k] = se + (sa / m->in + sb / m->out);
        }
    }
    int kth = a->init_bgt - budget;
    /* kthvalue needs k >= 1 (PEFT raises otherwise: init_r == target_r); nothing is cut then */
    double thr = -INFINITY;
    if (kth >= 1) {
        memcpy(a->sorted, a->score, (size_t)a->init_bgt * sizeof(double));
        heapsort_double(a->sorted, (size_t)a->init_bgt);
        thr = a->sorted[kth - 1];
    }
    for (int i = 0; i < a->n_mod; i++) {
        const adalora_module *m = &a->mod[i];
        float *E = params_value(pb, m->p_e);
        for (int k = 0; k < m->r; k++) {
            int cut = a->score[m->tri + k] <= thr;
            if (cut) E[k] = 0.0f;
            a->keep[m->tri + k] = cut ? 0.0f : 1.0f;
        }
    }
    a->flags[0] = 1.0f;
}

/* AdaLoraModel.update_and_allocate(global_step) */
void adalora_update(adalora_state *a, param_block *pb, int step)
{
    if (!a->on) return;
    int end = a->o.total_step - a->o.tfinal, mask_ind;
    if (step < end) {
        update_ipt(a, pb);
        int budget = budget_schedule(a, step, &mask_ind);
        a->flags[1] = (float)budget;
        if (mask_ind) mask_to_budget(a, pb, budget);
    } else if (step == end) {
        /* the final allocation (force_mask), then RankAllocator.reset_ipt */
        int budget = budget_schedule(a, step, &mask_ind);
        a->flags[1] = (float)budget;
        mask_to_budget(a, pb, budget);
        memset(a->ipt_ema, 0, pb->total * sizeof(float));
        memset(a->unc_ema, 0, pb->total * sizeof(float));
    } else {
        a->flags[1] = (float)a->target_bgt;
        if (a->flags[0] == 0) return;
        /* mask_using_rank_pattern: the optimizer moved the masked E; zero them again */
        for (int i = 0; i < a->n_mod; i++) {
            float *E = params_value(pb, a->mod[i].p_e);
            for (int k = 0; k < a->mod[i].r; k++)
                if (a->keep[a->mod[i].tri + k] == 0.0f) E[k] = 0.0f;
        }
    }
}

int adalora_compact(const adalora_state *a, const param_block *pb, int idx, float *dst, int64_t shape[2])
{
    if (!a->on || a->flags[0] == 0) return 0;
    for (int i = 0; i < a->n_mod; i++) {
        const adalora_module *m = &a->mod[i];
        if (idx != m->p_a && idx != m->p_b && idx != m->p_e) continue;
        const float *src = params_value(pb, idx), *keep = a->keep + m->tri;
        int kept = 0;
        if (idx == m->p_b) { /* columns of B (out, r) */
            for (int o = 0; o < m->out; o++)
                for (int k = 0; k < m->r; k++)
                    if (keep[k] != 0.0f) dst[kept++] = src[(size_t)o * m->r + k];
            shape[0] = m->out;
            shape[1] = m->out ? kept / m->out : 0;
            return 1;
        }
        int w = idx == m->p_a ? m->in : 1;   /* rows of A (r, in), E (r, 1) */
        for (int k = 0; k < m->r; k++)
            if (keep[k] != 0.0f) { memcpy(dst + (size_t)kept * w, src + (size_t)k * w, (size_t)w * sizeof(float)); kept++; }
        shape[0] = kept;
        shape[1] = w;
        return 1;
    }
    return 0;
}
