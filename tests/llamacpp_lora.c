/* llamacpp_lora.c: llama.cpp's side of tests/check_interop.sh, linked against
 * the llama.cpp build of bench/llamacpp.sh (not part of peftc):
 *   llamacpp_lora MODEL.gguf LORA.gguf|- IDS.txt N_GEN LOGITS.f32 IDS_OUT.txt
 * loads the model (no weight repacking), applies the GGUF LoRA unmerged with
 * scale 1 (llama_set_adapters_lora), writes the all-token logits of the first
 * line of IDS.txt (float32) and that line followed by N_GEN greedy tokens. */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv)
{
    if (argc != 7) { fprintf(stderr, "usage: llamacpp_lora MODEL LORA|- IDS N_GEN LOGITS IDS_OUT\n"); return 2; }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = false;   /* no CPU repacking (AMX repack crashes on some hosts) */
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "llama.cpp: cannot load %s\n", argv[1]); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 128;
    cp.n_batch = 128;
    cp.n_ubatch = 128;
    cp.n_threads = cp.n_threads_batch = 1;
    /* fp32 to fp32: an F32 KV cache (the default is F16) and no flash attention (its CPU path rounds Q to F16) */
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "llama.cpp: no context\n"); return 1; }
    if (strcmp(argv[2], "-")) {
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, argv[2]);
        if (!ad) { fprintf(stderr, "llama.cpp: cannot load the LoRA %s\n", argv[2]); return 1; }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &ad, 1, &scale)) { fprintf(stderr, "llama.cpp: cannot set the LoRA\n"); return 1; }
    }
    FILE *f = fopen(argv[3], "r");
    if (!f) return 1;
    llama_token ids[256];
    int n = 0, want = atoi(argv[4]);
    char line[16384];
    if (fgets(line, sizeof line, f)) {
        char *p = line, *end;
        for (long v = strtol(p, &end, 10); end != p && n < 128; v = strtol(p, &end, 10)) { ids[n++] = (llama_token)v; p = end; }
    }
    fclose(f);
    const int V = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch b = llama_batch_init(128, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) { fprintf(stderr, "llama.cpp: decode failed\n"); return 1; }
    FILE *lo = fopen(argv[5], "wb");
    if (!lo) return 1;
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t)V, lo);
    fclose(lo);
    int last = n - 1;
    for (int k = 0; k < want && n < 128; k++) {
        const float *lg = llama_get_logits_ith(ctx, last);
        int best = 0;
        for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
        ids[n] = best;
        b.token[0] = best;
        b.pos[0] = n;
        b.n_seq_id[0] = 1;
        b.seq_id[0][0] = 0;
        b.logits[0] = 1;
        b.n_tokens = 1;
        n++;
        if (llama_decode(ctx, b)) { fprintf(stderr, "llama.cpp: decode failed\n"); return 1; }
        last = 0;
    }
    FILE *io = fopen(argv[6], "w");
    if (!io) return 1;
    for (int i = 0; i < n; i++) fprintf(io, i ? " %d" : "%d", ids[i]);
    fputc('\n', io);
    fclose(io);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
