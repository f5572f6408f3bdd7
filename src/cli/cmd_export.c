/* cmd_export.c: `peftc export --format gguf --adapter A --model BASE.gguf --out X.gguf`:
 * a decoder's LoRA or AdaLoRA adapter (a PEFT directory or a GGUF LoRA) as llama.cpp's GGUF LoRA;
 * `peftc export --format adapterhub --adapter RUN --model BASE --out DIR [--name N]`:
 * a bottleneck, LoRA or (IA)^3 adapter and its head as AdapterHub's save_adapter directory. */
#include "cli/cli.h"

#include <string.h>

static int export_adapterhub(cli_args *a, const char *adapter, const char *model, const char *out)
{
    const char *name = cli_opt(a, "--name");
    if (!adapter || !*adapter) return cli_errorf(2, "export: --adapter RUN_DIR (a peftc bottleneck-adapter, LoRA or (IA)^3 run) is required");
    if (!model || !*model) return cli_errorf(2, "export: --model DIR (the base the adapter was trained on) is required");
    if (!out || !*out) return cli_errorf(2, "export: --out DIR is required");
    if (cli_check_unused(a, "export")) return 2;
    peftc_error err = {0};
    if (peftc_export_adapterhub(adapter, model, out, name, &err)) return cli_fail(&err);
    fprintf(stderr, "peftc: wrote %s (AdapterHub adapter and head '%s': model.load_adapter(\"%s\"))\n", out, name ? name : "peftc", out);
    return 0;
}

int cmd_export(cli_args *a)
{
    const char *format = cli_opt(a, "--format"), *adapter = cli_opt(a, "--adapter");
    const char *model = cli_opt(a, "--model"), *out = cli_opt(a, "--out");
    if (!format) return cli_errorf(2, "export: --format gguf|adapterhub is required");
    if (!strcmp(format, "adapterhub")) return export_adapterhub(a, adapter, model, out);
    if (strcmp(format, "gguf"))
        return cli_errorf(2, "export: --format %s: the formats are: gguf (llama.cpp LoRA), adapterhub (AdapterHub bottleneck adapters, LoRA, (IA)^3); PEFT directories are what train writes", format);
    if (!adapter || !*adapter) return cli_errorf(2, "export: --adapter DIR (a PEFT LoRA or AdaLoRA directory) is required");
    if (!model || !*model) return cli_errorf(2, "export: --model BASE.gguf (the GGUF base llama.cpp will load) is required");
    if (!out || !*out) return cli_errorf(2, "export: --out FILE.gguf is required");
    if (cli_check_unused(a, "export")) return 2;
    peftc_error err = {0};
    if (peftc_export_gguf_lora(adapter, model, out, &err)) return cli_fail(&err);
    fprintf(stderr, "peftc: wrote %s (llama.cpp GGUF LoRA for %s)\n", out, model);
    return 0;
}
