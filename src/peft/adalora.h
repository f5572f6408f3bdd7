/* adalora.h: AdaLoRA (Zhang et al. 2023) exactly as HF PEFT's
 * tuners/adalora computes it. Each target linear gets an SVD-form delta
 * (DELTA_SVD: lora_A = Q (r,in), lora_E = Lambda (r,1), lora_B = P (out,r),
 * scale alpha / (init_r + 1e-5)); this module adds what PEFT's AdaLoraModel
 * does around the optimizer step:
 *   before it: the orthogonality regulariser
 *     w * mean over the A and B matrices of ||A A^T - I||_F, ||B^T B - I||_F
 *     (its loss and gradients), as AdaLoraModel.forward adds it to the loss;
 *   after it (update_and_allocate(global_step), global_step = optimizer steps
 *   done before this one, with this step's clipped gradients and the updated
 *   values): RankAllocator's sensitivity |p g| with EMA beta1 and uncertainty
 *   EMA beta2, the triplet scores, the cubic budget from init_r to target_r
 *   over tinit, tfinal, deltaT, total_step, masking (E = 0) of the least
 *   important triplets, the final mask at total_step - tfinal and its
 *   re-application after. */
#ifndef PEFTC_ADALORA_H
#define PEFTC_ADALORA_H

#include "peft/delta.h"

typedef struct adalora_module {
    int delta;                 /* index into the delta set */
    int p_a, p_b, p_e;
    int r, in, out;
    int tri;                   /* first triplet in the global list */
    char key[PARAM_NAME_MAX];  /* its rank_pattern key: "<module path>.lora_E" */
} adalora_module;

typedef struct adalora_state {
    int on;
    peftc_adalora_opts o;      /* resolved: PEFT's defaults applied */
    int n_mod;
    adalora_module *mod;
    int init_bgt, target_bgt;  /* total triplets; target_r * modules */
    float *ipt_ema, *unc_ema;  /* (pb->total) exp_avg_ipt, exp_avg_unc in the block's layout */
    float *keep;               /* (init_bgt) 1 kept, 0 masked: the last rank pattern */
    float flags[2];            /* [0]: a rank pattern exists; [1]: the budget of the last step (saved in checkpoints) */
    double *score, *sorted;    /* (init_bgt) triplet scores, kth-value scratch */
    double *cov;               /* (r_max^2) */
    float opts[9];             /* the resolved options, checked on resume */
} adalora_state;

/* PEFT's defaults into o (0 = unset); checks the options (target_r <= init_r,
 * betas in (0, 1), a budgeting phase: tinit < total_step - tfinal when
 * total_step is given). */
peftc_status adalora_resolve(const peftc_adalora_opts *in, peftc_adalora_opts *o, peftc_error *err);
/* After the deltas are declared and the block allocated: collects the SVD
 * deltas, allocates the state and registers it in pb->state (checkpoints). */
peftc_status adalora_init(adalora_state *a, const peftc_adalora_opts *o, param_block *pb, const delta_set *ds,
                          peftc_error *err);
/* Before training: total_step defaults to the run's steps; the schedule must
 * leave a budgeting phase (PEFT's AdaLoraConfig check). */
peftc_status adalora_begin(adalora_state *a, int run_steps, peftc_error *err);
/* After backward, before clipping and the optimizer: adds the regulariser's
 * gradient to pb->g and returns its loss (0 when off). */
float adalora_regularize(adalora_state *a, param_block *pb);
/* After the optimizer step, before the gradients are zeroed. */
void adalora_update(adalora_state *a, param_block *pb, int global_step);
void adalora_free(adalora_state *a);

/* Saving (PEFT resizes the saved tensors by the rank pattern): whether entry
 * i of pb is an AdaLoRA tensor cut by the pattern; if so dst (>= numel
 * floats) gets the kept rows (A, E) or columns (B) and shape their shape. */
int adalora_compact(const adalora_state *a, const param_block *pb, int i, float *dst, int64_t shape[2]);

#endif
