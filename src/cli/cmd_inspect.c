/* cmd_inspect.c: `peftc inspect FILE_OR_DIR`. */
#include "core/json_file.h"
#include "cli/cli.h"
#include "core/core.h"
#include "io/gguf.h"

#include <jansson.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* GGUF files are recognised by their magic, whatever their name. */
static int is_gguf(const char *path)
{
    char m[4] = {0};
    FILE *f = peftc_fopen_regular(path);
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
    const char *gt, *at, *ar;
    size_t gl, al, rl;
    double alpha = 0;
    if (gguf_get_str(g, "general.type", &gt, &gl) == 1 && gl == 7 && !memcmp(gt, "adapter", 7)) {
        if (gguf_get_str(g, "adapter.type", &at, &al) != 1) { at = "?"; al = 1; }
        if (gguf_get_str(g, "general.architecture", &ar, &rl) != 1) { ar = "?"; rl = 1; }
        gguf_get_float(g, "adapter.lora.alpha", &alpha);
        int pairs = 0;
        long long rmin = 0, rmax = 0;
        for (int i = 0; i < nt; i++) {
            const gguf_tensor *t = gguf_tensor_at(g, i);
            size_t n = strlen(t->name);
            if (n > 7 && !strcmp(t->name + n - 7, ".lora_b")) {
                long long r = t->ne[0];
                if (!pairs || r < rmin) rmin = r;
                if (!pairs || r > rmax) rmax = r;
                pairs++;
            }
        }
        printf("adapter: llama.cpp GGUF adapter, adapter.type %.*s, for architecture %.*s; %d lora_a/lora_b pairs, rank %lld",
               (int)al, at, (int)rl, ar, pairs, rmin);
        if (rmax != rmin) printf("..%lld", rmax);
        printf(", adapter.lora.alpha %g (llama.cpp scales each pair by alpha / rank)\n", alpha);
    }
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

static int peftc_file_exists_cli(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* An adapter directory: which ecosystem's layout it is and what it holds. */
static int print_adapter_dir(const char *dir, const char *cfg_path)
{
    json_error_t je;
    json_t *j = peftc_json_load_file(cfg_path, 0, &je);
    if (!j || !json_is_object(j)) {
        if (j) json_decref(j);
        return cli_errorf(1, "%s: not a JSON object (line %d: %s)", cfg_path, je.line, je.text);
    }
    char path[4096];
    const char *pt = json_string_value(json_object_get(j, "peft_type"));
    if (pt) {
        const char *tt = json_string_value(json_object_get(j, "task_type"));
        printf("directory: %s\nadapter: Hugging Face PEFT, peft_type %s, task_type %s", dir, pt, tt ? tt : "null");
        json_t *r = json_object_get(j, "r"), *al = json_object_get(j, "lora_alpha"), *nv = json_object_get(j, "num_virtual_tokens");
        json_t *ir = json_object_get(j, "init_r"), *rp = json_object_get(j, "rank_pattern");
        if (pt && !strcmp(pt, "ADALORA") && json_is_integer(ir)) {
            /* AdaLoRA's r is unused: init_r and the ranks its rank_pattern keeps are the adapter's */
            printf(", init_r %lld", (long long)json_integer_value(ir));
            if (json_is_object(rp) && json_object_size(rp)) {
                long long kept = 0;
                const char *k;
                json_t *v, *e;
                size_t i;
                json_object_foreach(rp, k, v) json_array_foreach(v, i, e) kept += json_is_true(e);
                printf(", rank_pattern keeps %lld of %lld triplets", kept, (long long)json_object_size(rp) * json_integer_value(ir));
            }
        } else if (json_is_integer(r)) printf(", r %lld", (long long)json_integer_value(r));
        if (json_is_number(al)) printf(", lora_alpha %g", json_number_value(al));
        if (json_is_true(json_object_get(j, "use_rslora"))) printf(", rsLoRA");
        if (json_is_integer(nv)) printf(", %lld virtual tokens", (long long)json_integer_value(nv));
        json_t *tm = json_object_get(j, "target_modules");
        if (json_is_array(tm)) {
            printf(", target_modules");
            size_t i;
            json_t *v;
            json_array_foreach(tm, i, v) printf("%s%s", i ? "," : " ", json_string_value(v) ? json_string_value(v) : "?");
        } else if (json_is_string(tm)) printf(", target_modules /%s/", json_string_value(tm));
        const char *base = json_string_value(json_object_get(j, "base_model_name_or_path"));
        if (base) printf(", base %s", base);
        printf("\n");
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        json_decref(j);
        if (!peftc_file_exists_cli(path)) return cli_errorf(1, "%s: missing (PEFT adapters hold their weights there)", path);
        return print_tensors(path);
    }
    json_t *c = json_object_get(j, "config");
    if (json_is_object(c) || json_object_get(j, "model_class")) {
        const char *arch = json_string_value(json_object_get(c, "architecture"));
        printf("directory: %s\nadapter: AdapterHub (adapters), name %s, model_class %s, config %s\n", dir,
               json_string_value(json_object_get(j, "name")) ? json_string_value(json_object_get(j, "name")) : "?",
               json_string_value(json_object_get(j, "model_class")) ? json_string_value(json_object_get(j, "model_class")) : "?",
               arch ? arch : "bottleneck");
        json_decref(j);
        snprintf(path, sizeof path, "%s/adapter.safetensors", dir);
        if (peftc_file_exists_cli(path)) return print_tensors(path);
        snprintf(path, sizeof path, "%s/pytorch_adapter.bin", dir);
        if (peftc_file_exists_cli(path))
            return cli_errorf(1, "%s: a pickle, which is not read (loading it could run code); re-save it with "
                                 "model.save_adapter(dir, name, use_safetensors=True)", path);
        return cli_errorf(1, "%s: no adapter.safetensors", dir);
    }
    json_decref(j);
    return cli_errorf(1, "%s: neither a PEFT (peft_type) nor an AdapterHub (config, model_class) adapter config", cfg_path);
}

/* An AdapterFusion run with --model and --data: runs the data through the
 * fused model and prints the average fusion weight per layer and adapter
 * (which task's knowledge each layer uses; Pfeiffer et al. 2021, fig. 5). */
static int print_fusion_weights(const char *run, const char *model, const char *data, const char *tc,
                                const char *pc, const char *lc)
{
    peftc_error err = {0};
    peftc_classifier *c;
    if (peftc_classifier_load(model, run, &c, &err)) return cli_fail(&err);
    int n = peftc_classifier_fusion_count(c);
    if (n == 0) {
        peftc_classifier_free(c);
        return cli_errorf(1, "%s: not an AdapterFusion run (peftc fuse): --data prints fusion weights", run);
    }
    peftc_eval_result r;
    if (peftc_classifier_eval(c, data, tc, pc, lc, &r, &err)) { peftc_classifier_free(c); return cli_fail(&err); }
    enum { MAXL = 256 };
    static double w[MAXL * 16];
    int L = 0;
    peftc_classifier_fusion_weights(c, w, &L, MAXL);
    if (L > MAXL) L = MAXL;
    printf("fusion run: %s, %d adapters, %d layers; accuracy %.4f on %s\n", run, n, L, r.accuracy, data);
    printf("average fusion weight per layer (rows) and adapter (columns), over the data's real tokens\n");
    printf("%-6s", "layer");
    for (int k = 0; k < n; k++) printf(" %10.10s", peftc_classifier_fusion_name(c, k));
    printf("\n");
    for (int l = 0; l < L; l++) {
        printf("%-6d", l);
        for (int k = 0; k < n; k++) printf(" %10.4f", w[(size_t)l * n + k]);
        printf("\n");
    }
    printf("%-6s", "mean");
    for (int k = 0; k < n; k++) {
        double m = 0;
        for (int l = 0; l < L; l++) m += w[(size_t)l * n + k];
        printf(" %10.4f", L ? m / L : 0.0);
    }
    printf("\n");
    peftc_classifier_free(c);
    return 0;
}

int cmd_inspect(cli_args *a)
{
    const char *target = cli_opt(a, "--adapter");
    const char *model = cli_opt(a, "--model"), *data = cli_opt(a, "--data");
    const char *tc = cli_opt(a, "--text-col"), *pc = cli_opt(a, "--text-pair-col"), *lc = cli_opt(a, "--label-col");
    for (int i = 0; !target && i < a->argc; i++)
        if (!a->used[i] && strncmp(a->argv[i], "--", 2) != 0) { target = a->argv[i]; a->used[i] = 1; break; }
    if (cli_check_unused(a, "inspect")) return 2;
    if (!target) return cli_errorf(2, "inspect: give a model directory, a .safetensors or a .gguf file");
    if (data || model) {
        if (!data || !model) return cli_errorf(2, "inspect %s: --model DIR and --data FILE go together (fusion weights)", target);
        return print_fusion_weights(target, model, data, tc, pc, lc);
    }
    struct stat sb;
    if (stat(target, &sb) != 0) return cli_errorf(1, "%s: no such file or directory", target);
    if (!S_ISDIR(sb.st_mode)) return is_gguf(target) ? print_gguf(target) : print_tensors(target);

    char path[4096];
    peftc_error err = {0};
    snprintf(path, sizeof path, "%s/adapter_config.json", target);
    if (peftc_file_exists_cli(path)) return print_adapter_dir(target, path);
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

/* peftc cpu: what the kernels found here; forced: --bf16 / --fp32 given */
int cmd_cpu(cli_args *a, int forced)
{
    if (cli_check_unused(a, "cpu")) return 2;
    peftc_cpu_info c;
    peftc_cpu(&c);
    printf("kernels: %s\navx512-bf16: %s\namx: %s\n", c.isa, c.avx512_bf16 ? "yes" : "no", c.amx ? "yes" : "no");
    if (c.avx512_bf16) printf("bf16 kernel / sgemm, one thread: %.2fx\n", c.bf16_speedup);
    const char *why = c.amx ? "AMX tiles" : c.bf16_default ? "AVX-512-BF16 measured >= 1.3x sgemm"
                      : c.avx512_bf16 ? "AVX-512-BF16 measured < 1.3x sgemm" : "no AVX-512-BF16";
    printf("frozen weights: %s (%s%s)\n", c.bf16 ? "bf16" : "fp32",
           forced || getenv("PEFTC_BF16") ? "forced; the default here is " : "the default here: ",
           forced || getenv("PEFTC_BF16") ? (c.bf16_default ? "bf16" : "fp32") : why);
    return 0;
}
