/* cmd_merge.c: `peftc merge --model M --adapter A --out DIR|FILE.gguf [--type T]`:
 * the base with the adapter's LoRA / (IA)^3 deltas folded in, as a plain
 * model for transformers (an HF directory) or llama.cpp (a GGUF file). */
#include "cli/cli.h"

int cmd_merge(cli_args *a)
{
    const char *model = cli_opt(a, "--model"), *adapter = cli_opt(a, "--adapter"), *out = cli_opt(a, "--out");
    const char *type = cli_opt(a, "--type");
    if (cli_check_unused(a, "merge")) return 2;
    if (!model || !*model) return cli_errorf(2, "merge: --model DIR|FILE.gguf (the base) is required");
    if (!adapter || !*adapter) return cli_errorf(2, "merge: --adapter DIR|FILE.gguf (a LoRA or (IA)^3 adapter) is required");
    if (!out || !*out) return cli_errorf(2, "merge: --out DIR (FILE.gguf for a GGUF base) is required");
    peftc_error err = {0};
    if (peftc_merge_model(model, adapter, out, type, &err)) return cli_fail(&err);
    fprintf(stderr, "peftc: wrote %s (%s merged into %s%s%s)\n", out, adapter, model, type ? ", " : "", type ? type : "");
    return 0;
}
