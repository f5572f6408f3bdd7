/* cmd_quantize.c: `peftc quantize --model DIR --out DIR [--type nf4]`: the
 * base with its linear weights in NF4 (QLoRA's storage, bitsandbytes'
 * bytes), written once so that later runs load it without quantising. */
#include "cli/cli.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_quantize(cli_args *a)
{
    const char *model = cli_opt(a, "--model"), *out = cli_opt(a, "--out"), *type = cli_opt(a, "--type");
    if (cli_check_unused(a, "quantize")) return 2;
    if (!model || !*model || !out || !*out) return cli_errorf(2, "quantize: --model DIR and --out DIR are required");
    peftc_error err = {0};
    peftc_base_quant q;
    if (peftc_base_quant_parse(type ? type : "nf4", &q, &err)) return cli_fail(&err);
    if (q == PEFTC_QUANT_NONE) return cli_errorf(2, "quantize: --type none writes nothing new (nf4)");
    /* the output replaces model.safetensors: never the file being read */
    char rm[PATH_MAX], ro[PATH_MAX];
    if (realpath(model, rm) && realpath(out, ro) && !strcmp(rm, ro))
        return cli_errorf(2, "quantize: --out %s is the model directory itself; give another directory", out);
    peftc_model *m;
    if (peftc_model_load_quantized(model, q, &m, &err)) return cli_fail(&err);
    int64_t bytes, params;
    peftc_model_linear_bytes(m, &bytes, &params);
    int rc = 0;
    if (peftc_model_save_base(m, out, &err)) rc = cli_fail(&err);
    else
        printf("%s: %lld linear parameters in NF4, %lld bytes (%.4f bytes per parameter; fp32: %lld bytes)\n", out,
               (long long)params, (long long)bytes, params ? (double)bytes / (double)params : 0.0,
               (long long)params * 4);
    peftc_model_free(m);
    return rc;
}
