/* cmd_inspect.c: `peftc inspect FILE_OR_DIR`. */
#include "cli/cli.h"
#include "io/gguf.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* GGUF files are recognised by their magic, whatever their name. */
static int is_gguf(const char *path)
{
    char m[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    if (n == 4 && !memcmp(m, "GGUF", 4)) return 1;
    size_t len = strlen(path);
    return len >= 5 && !strcmp(path + len - 5, ".gguf");
}

static int print_gguf(const char *path)
{
    peftc_error err = {0};
    gguf_file *g;
    if (gguf_open(path, &g, &err)) return cli_fail(&err);
    int nt = gguf_tensor_count(g), nkv = gguf_kv_count(g);
    long long params = 0;
    size_t bytes = 0;
    for (int i = 0; i < nt; i++) {
        params += gguf_tensor_numel(gguf_tensor_at(g, i));
        bytes += gguf_tensor_at(g, i)->nbytes;
    }
    printf("file: %s\nformat: GGUF v%u, alignment %u, data at byte %" PRIu64 "\n", path, gguf_version(g),
           gguf_alignment(g), gguf_data_offset(g));
    printf("metadata: %d keys\n", nkv);
    size_t cap = 4096;
    char *buf = malloc(cap);
    for (int i = 0; buf && i < nkv; i++) {
        char type[32];
        gguf_type t = gguf_kv_type(g, i);
        if (t == GGUF_TYPE_ARRAY) snprintf(type, sizeof type, "array[%s]", gguf_type_name((gguf_type)gguf_arr_type(g, i)));
        else snprintf(type, sizeof type, "%s", gguf_type_name(t));
        gguf_format_value(g, i, buf, cap, 8);   /* abbreviated; long strings cut at cap */
        printf("  %-44s %-15s %s\n", gguf_key(g, i), type, buf);
    }
    free(buf);
    printf("tensors: %d (%lld elements, %.1f MB)\n", nt, params, bytes / 1e6);
    for (int i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        const ggml_type_traits *tr = ggml_traits(t->type);
        char shape[128];
        int n = snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t->n_dims; d++) n += snprintf(shape + n, sizeof shape - n, d ? ", %" PRId64 : "%" PRId64, t->ne[d]);
        snprintf(shape + n, sizeof shape - n, "]");
        printf("  %-44s %-5s %-20s offset %-10" PRIu64 " bytes %zu\n", t->name, tr ? tr->name : "?", shape, t->offset, t->nbytes);
    }
    gguf_close(g);
    return 0;
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
    if (!target) return cli_errorf(2, "inspect: give a model directory, a .safetensors or a .gguf file");
    struct stat sb;
    if (stat(target, &sb) != 0) return cli_errorf(1, "%s: no such file or directory", target);
    if (!S_ISDIR(sb.st_mode)) return is_gguf(target) ? print_gguf(target) : print_tensors(target);

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
