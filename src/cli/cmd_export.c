/* cmd_export.c: `peftc export --format gguf --adapter A --model BASE.gguf --out X.gguf`:
 * a decoder's LoRA adapter (a PEFT directory or a GGUF LoRA) as llama.cpp's GGUF LoRA. */
#include "cli/cli.h"

#include <string.h>

int cmd_export(cli_args *a)
{
    const char *format = cli_opt(a, "--format"), *adapter = cli_opt(a, "--adapter");
    const char *model = cli_opt(a, "--model"), *out = cli_opt(a, "--out");
    if (!format) return cli_errorf(2, "export: --format gguf is required");
    if (strcmp(format, "gguf"))
        return cli_errorf(2, "export: --format %s: the formats are: gguf (llama.cpp LoRA); PEFT directories are what train writes", format);
    if (!adapter || !*adapter) return cli_errorf(2, "export: --adapter DIR (a PEFT LoRA directory) is required");
    if (!model || !*model) return cli_errorf(2, "export: --model BASE.gguf (the GGUF base llama.cpp will load) is required");
    if (!out || !*out) return cli_errorf(2, "export: --out FILE.gguf is required");
    if (cli_check_unused(a, "export")) return 2;
    peftc_error err = {0};
    if (peftc_export_gguf_lora(adapter, model, out, &err)) return cli_fail(&err);
    fprintf(stderr, "peftc: wrote %s (llama.cpp GGUF LoRA for %s)\n", out, model);
    return 0;
}
