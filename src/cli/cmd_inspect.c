/* cmd_inspect.c: `peftc inspect FILE_OR_DIR`. */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int print_gguf(const char *path)
{
    peftc_error err = {0};
    char *text;
    if (peftc_gguf_describe(path, 8, &text, &err)) return cli_fail(&err);
    fputs(text, stdout);
    free(text);
    return 0;
}

static int has_gguf_magic(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4];
    int ok = fread(m, 1, 4, f) == 4 && !memcmp(m, "GGUF", 4);
    fclose(f);
    return ok;
}

static int print_tensors(const char *path)
{
    peftc_error err = {0};
    peftc_safetensors *st;
    if (peftc_safetensors_open(path, &st, &err)) return cli_fail(&err);
    int n = peftc_safetensors_count(st);
    long long params = 0;
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        peftc_tensor_info ti;
        peftc_safetensors_info(st, i, &ti);
        long long numel = 1;
        for (int d = 0; d < ti.ndim; d++) numel *= ti.shape[d];
        params += numel;
        bytes += ti.nbytes;
    }
    printf("file: %s\ntensors: %d (%lld elements, %.1f MB)\n", path, n, params, bytes / 1e6);
    for (int i = 0; i < n; i++) {
        peftc_tensor_info ti;
        peftc_safetensors_info(st, i, &ti);
        printf("  %-60s %-5s [", ti.name, ti.dtype);
        for (int d = 0; d < ti.ndim; d++) printf(d ? ", %lld" : "%lld", (long long)ti.shape[d]);
        printf("]\n");
    }
    peftc_safetensors_free(st);
    return 0;
}

int cmd_inspect(cli_args *a)
{
    const char *target = NULL;
    for (int i = 0; i < a->argc; i++)
        if (!a->used[i] && strncmp(a->argv[i], "--", 2) != 0) { target = a->argv[i]; a->used[i] = 1; break; }
    if (cli_check_unused(a, "inspect")) return 2;
    if (!target) return cli_errorf(2, "inspect: give a model directory, a .safetensors file or a .gguf file");
    struct stat sb;
    if (stat(target, &sb) != 0) return cli_errorf(1, "%s: no such file or directory", target);
    if (!S_ISDIR(sb.st_mode)) {
        size_t n = strlen(target);
        if (has_gguf_magic(target) || (n > 5 && !strcmp(target + n - 5, ".gguf"))) return print_gguf(target);
        return print_tensors(target);
    }

    char path[4096];
    peftc_error err = {0};
    peftc_config c;
    snprintf(path, sizeof path, "%s/config.json", target);
    if (peftc_config_load(path, &c, &err))
        return cli_fail(&err);
    printf("directory: %s\narchitecture: bert\n", target);
    printf("config: vocab_size=%d hidden_size=%d num_layers=%d num_heads=%d intermediate_size=%d "
           "max_position=%d type_vocab_size=%d layer_norm_eps=%g hidden_dropout=%g attention_dropout=%g\n",
           c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.max_position,
           c.type_vocab_size, c.layer_norm_eps, c.hidden_dropout, c.attention_dropout);
    snprintf(path, sizeof path, "%s/model.safetensors", target);
    return print_tensors(path);
}
