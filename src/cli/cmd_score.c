/* cmd_score.c: `peftc score` — generation metrics of a predictions file
 * against references (the library's peftc_score). */
#include "cli/cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void free_texts(char **t, int n)
{
    for (int i = 0; i < n; i++) free(t[i]);
    free(t);
}

void cli_print_score(const peftc_score_result *r)
{
    printf("\"pairs\": %d", r->n);
    if (r->metrics & PEFTC_METRIC_EM_NUMBER) printf(", \"em_number\": %.10f, \"predictions_with_number\": %d", r->em, r->n_pred_numbers);
    if (r->metrics & PEFTC_METRIC_ROUGE) printf(", \"rouge1\": %.10f, \"rouge2\": %.10f, \"rougeL\": %.10f", r->rouge1, r->rouge2, r->rougeL);
    if (r->metrics & PEFTC_METRIC_BLEU)
        printf(", \"bleu\": %.10f, \"bleu_precisions\": [%.10f, %.10f, %.10f, %.10f], \"bleu_bp\": %.10f, \"sys_len\": %lld, \"ref_len\": %lld",
               r->bleu, r->bleu_precisions[0], r->bleu_precisions[1], r->bleu_precisions[2], r->bleu_precisions[3],
               r->bleu_bp, r->sys_len, r->ref_len);
}

int cmd_score(cli_args *a)
{
    const char *metric = cli_opt(a, "--metric"), *pred = cli_opt(a, "--pred"), *ref = cli_opt(a, "--ref");
    const char *pf = cli_opt(a, "--pred-field"), *rf = cli_opt(a, "--ref-field"), *per_out = cli_opt(a, "--per-example");
    if (cli_check_unused(a, "score")) return 2;
    if (!metric || !pred)
        return cli_errorf(2, "score: --metric em-number|rouge|bleu (or a comma list) and --pred FILE are required");
    int mask = peftc_metric_parse(metric);
    if (!mask) return cli_errorf(2, "--metric '%s': use em-number, rouge, bleu or a comma list of them", metric);
    peftc_error err = {0};
    char **P = NULL, **R = NULL;
    int *pidx = NULL, np = 0, nr = 0, rc = 0;
    if (peftc_score_read(pred, pf ? pf : "prediction", &P, &pidx, &np, &err)) return cli_fail(&err);
    /* without --ref the predictions file carries the references (peftc generate --data writes them) */
    if (peftc_score_read(ref ? ref : pred, ref ? rf : (rf ? rf : "reference"), &R, NULL, &nr, &err)) {
        free_texts(P, np); free(pidx);
        return cli_fail(&err);
    }
    /* predictions of the first records only (generate --limit) pair by their "index" */
    const char **refs = calloc((size_t)np, sizeof *refs);
    if (!refs) rc = cli_errorf(1, "out of memory");
    for (int i = 0; i < np && !rc; i++) {
        int j = ref && pidx[i] >= 0 ? pidx[i] : i;
        if (j >= nr) rc = cli_errorf(1, "%s: record %d has no reference: %s has %d", pred, i + 1, ref ? ref : pred, nr);
        else refs[i] = R[j];
    }
    if (!rc && ref && np != nr && pidx[0] < 0)
        rc = cli_errorf(1, "%s: %d predictions but %s has %d references (and no \"index\" fields to pair them)", pred, np, ref, nr);
    peftc_score_result r;
    double *per = NULL;
    if (!rc && per_out && !(per = malloc((size_t)np * PEFTC_SCORE_PER * sizeof *per))) rc = cli_errorf(1, "out of memory");
    if (!rc && peftc_score(mask, (const char *const *)P, refs, np, &r, per, &err)) rc = cli_fail(&err);
    if (!rc && per) {
        FILE *f = fopen(per_out, "w");
        if (!f) rc = cli_errorf(1, "%s: cannot write", per_out);
        static const char *const names[] = {"em_number", "rouge1", "rouge2", "rougeL"};
        for (int i = 0; i < np && f; i++) {
            fprintf(f, "{\"index\": %d", i);
            for (int k = 0; k < PEFTC_SCORE_PER; k++)
                if (!isnan(per[(size_t)i * PEFTC_SCORE_PER + k])) fprintf(f, ", \"%s\": %.10f", names[k], per[(size_t)i * PEFTC_SCORE_PER + k]);
            fputs("}\n", f);
        }
        if (f && fclose(f)) rc = cli_errorf(1, "%s: write error", per_out);
    }
    if (!rc) {
        putchar('{');
        cli_print_score(&r);
        puts("}");
    }
    free(per);
    free(refs);
    free_texts(P, np);
    free(pidx);
    free_texts(R, nr);
    return rc;
}
