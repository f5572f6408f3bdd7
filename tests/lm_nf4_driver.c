/* lm_nf4_driver.c: the public decoder API's base option (peftc_lm_opts.quantize)
 * for tests/check_llama_nf4.sh: loads MODEL with NF4 block weights and prints
 * peftc_lm_describe (whose weight type must then be nf4); and without, for
 * contrast. Numerics of the NF4 decoder: llama_ref with LLAMA_REF_NF4=1. */
#include <stdio.h>
#include <string.h>
#include "peftc.h"

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: lm_nf4_driver MODEL\n"); return 2; }
    int bad = 0;
    for (int q = 1; q >= 0; q--) {
        peftc_lm_opts o;
        peftc_lm_opts_default(&o);
        o.quantize = q ? PEFTC_QUANT_NF4 : PEFTC_QUANT_NONE;
        peftc_lm *lm;
        peftc_error err = {0};
        if (peftc_lm_load(argv[1], &o, &lm, &err)) { printf("FAIL - load (quantize %d): %s\n", q, err.msg); bad++; continue; }
        const char *d = peftc_lm_describe(lm);
        int has = strstr(d, ", nf4 (token embedding") != NULL;   /* the weights field, not the path */
        printf("%s - quantize %s: %s\n", has == q ? "ok  " : "FAIL", q ? "nf4" : "none", d);
        bad += has != q;
        peftc_lm_free(lm);
    }
    printf("## %d %d\n", 2 - bad, bad);
    return bad != 0;
}
