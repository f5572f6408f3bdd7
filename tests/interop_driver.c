/* interop_driver.c: the C side of tests/check_interop.sh.
 *   interop_driver gguf-write OUT.gguf
 *       a GGUF of every metadata type (scalars, arrays, strings) and F32/F16/
 *       Q8_0 tensors with alignment 64, for the `gguf` PyPI reader to check
 *   interop_driver gguf-copy IN.gguf OUT.gguf KEY STRING
 *       IN's metadata and tensors copied, plus a string KEY (llama.cpp wants
 *       tokenizer.ggml.model = "none" on a model without a vocabulary)
 *   interop_driver greedy MODEL IDS.txt N OUT.txt [--adapter A]...
 *       the first line of IDS.txt followed by N greedy tokens (argmax of the
 *       logits of the last position), space-separated
 *   interop_driver tokenize MODEL TEXT OUT.txt
 *       the model tokenizer's ids of TEXT (with its BOS rule), space-separated */
#include "io/gguf.h"
#include "io/gguf_write.h"
#include "peftc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if ((x) != PEFTC_OK) { fprintf(stderr, "peftc: %s\n", err.msg); return 1; } } while (0)

static uint16_t f16_of(float x)
{
    /* exact for the small integers and halves written below */
    union { float f; uint32_t u; } v = {x};
    uint32_t s = (v.u >> 16) & 0x8000, e = (v.u >> 23) & 0xff, m = v.u & 0x7fffff;
    if (!e) return (uint16_t)s;
    return (uint16_t)(s | ((e - 127 + 15) << 10) | (m >> 13));
}

static int gguf_write_all(const char *out)
{
    peftc_error err = {0};
    gguf_writer *w;
    CHECK(gguf_writer_new(&w, &err));
    CHECK(gguf_w_str(w, "general.architecture", "llama", 5, &err));
    CHECK(gguf_w_u8(w, "t.u8", 200, &err));
    CHECK(gguf_w_i8(w, "t.i8", -100, &err));
    CHECK(gguf_w_u16(w, "t.u16", 60000, &err));
    CHECK(gguf_w_i16(w, "t.i16", -30000, &err));
    CHECK(gguf_w_u32(w, "t.u32", 4000000000u, &err));
    CHECK(gguf_w_i32(w, "t.i32", -2000000000, &err));
    CHECK(gguf_w_u64(w, "t.u64", 18000000000000000000ull, &err));
    CHECK(gguf_w_i64(w, "t.i64", -9000000000000000000ll, &err));
    CHECK(gguf_w_f32(w, "t.f32", 0.125f, &err));
    CHECK(gguf_w_f64(w, "t.f64", 3.141592653589793, &err));
    CHECK(gguf_w_bool(w, "t.bool", 1, &err));
    CHECK(gguf_w_str(w, "t.str", "h\xc3\xa9llo \"w\"\n", 11, &err));
    CHECK(gguf_w_str(w, "t.empty", "", 0, &err));
    int32_t ai[5] = {1, -2, 3, -4, 5};
    CHECK(gguf_w_arr(w, "t.arr_i32", GGUF_TYPE_INT32, ai, 5, &err));
    float af[3] = {0.5f, -1.5f, 2.25f};
    CHECK(gguf_w_arr(w, "t.arr_f32", GGUF_TYPE_FLOAT32, af, 3, &err));
    uint8_t ab[4] = {1, 0, 1, 1};
    CHECK(gguf_w_arr(w, "t.arr_bool", GGUF_TYPE_BOOL, ab, 4, &err));
    CHECK(gguf_w_arr(w, "t.arr_empty", GGUF_TYPE_UINT64, NULL, 0, &err));
    const char *as[3] = {"a", "", "\xe2\x82\xac"};
    CHECK(gguf_w_arr_str(w, "t.arr_str", as, NULL, 3, &err));
    /* a duplicate key and a wrong byte count are refused */
    if (gguf_w_u8(w, "t.u8", 1, &err) == PEFTC_OK) { fprintf(stderr, "duplicate key accepted\n"); return 1; }
    float a[3 * 5], b[7];
    for (int i = 0; i < 15; i++) a[i] = (float)i * 0.5f - 3.0f;
    for (int i = 0; i < 7; i++) b[i] = (float)i;
    uint16_t h[2 * 4];
    for (int i = 0; i < 8; i++) h[i] = f16_of((float)i - 4.0f);
    /* one Q8_0 block: scale 0.5 (f16 0x3800), values -16..15 */
    unsigned char q[34];
    uint16_t d = 0x3800;
    memcpy(q, &d, 2);
    for (int i = 0; i < 32; i++) q[2 + i] = (unsigned char)(int8_t)(i - 16);
    int64_t ne_a[2] = {5, 3}, ne_b[1] = {7}, ne_h[2] = {4, 2}, ne_q[1] = {32};
    if (gguf_w_tensor(w, "bad", GGML_TYPE_F32, 2, ne_a, a, 10, &err) == PEFTC_OK) { fprintf(stderr, "bad size accepted\n"); return 1; }
    CHECK(gguf_w_tensor(w, "a.weight", GGML_TYPE_F32, 2, ne_a, a, sizeof a, &err));
    CHECK(gguf_w_tensor(w, "b.bias", GGML_TYPE_F32, 1, ne_b, b, sizeof b, &err));
    CHECK(gguf_w_tensor(w, "h.weight", GGML_TYPE_F16, 2, ne_h, h, sizeof h, &err));
    CHECK(gguf_w_tensor(w, "q.weight", GGML_TYPE_Q8_0, 1, ne_q, q, sizeof q, &err));
    CHECK(gguf_writer_write(w, out, 64, &err));
    gguf_writer_free(w);
    /* and peftc's own reader takes it back */
    gguf_file *g;
    CHECK(gguf_open(out, &g, &err));
    int good = gguf_tensor_count(g) == 4 && gguf_alignment(g) == 64 && !memcmp(gguf_find_tensor(g, "a.weight")->data, a, sizeof a);
    gguf_close(g);
    if (!good) { fprintf(stderr, "peftc's reader disagrees\n"); return 1; }
    return 0;
}

static int gguf_copy(const char *in, const char *out, const char *key, const char *val)
{
    peftc_error err = {0};
    gguf_file *g;
    gguf_writer *w;
    CHECK(gguf_open(in, &g, &err));
    CHECK(gguf_writer_new(&w, &err));
    for (int i = 0; i < gguf_kv_count(g); i++)
        if (strcmp(gguf_key(g, i), key) && strcmp(gguf_key(g, i), "general.alignment")) CHECK(gguf_w_copy_kv(w, g, i, &err));
    CHECK(gguf_w_str(w, key, val, strlen(val), &err));
    for (int i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        CHECK(gguf_w_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes, &err));
    }
    CHECK(gguf_writer_write(w, out, gguf_alignment(g), &err));
    gguf_writer_free(w);
    gguf_close(g);
    return 0;
}

static int greedy(int argc, char **argv)
{
    const char *ads[16];
    int nad = 0;
    for (int i = 6; i + 1 < argc && nad < 16; i += 2)
        if (!strcmp(argv[i], "--adapter")) ads[nad++] = argv[i + 1];
    peftc_lm_opts o;
    peftc_lm_opts_default(&o);
    o.adapters = ads;
    o.n_adapters = nad;
    peftc_error err = {0};
    peftc_lm *lm;
    CHECK(peftc_lm_load(argv[2], &o, &lm, &err));
    FILE *in = fopen(argv[3], "r");
    if (!in) { fprintf(stderr, "%s: cannot open\n", argv[3]); return 1; }
    int32_t ids[4096];
    int n = 0, want = atoi(argv[4]);
    char line[65536];
    if (fgets(line, sizeof line, in)) {
        char *p = line, *end;
        for (long v = strtol(p, &end, 10); end != p && n < 2048; v = strtol(p, &end, 10)) { ids[n++] = (int32_t)v; p = end; }
    }
    fclose(in);
    int V = peftc_lm_vocab_size(lm);
    float *lg = malloc((size_t)V * sizeof *lg);
    for (int k = 0; k < want && n < 4096; k++) {
        CHECK(peftc_lm_logits(lm, ids, n, 0, lg, &err));
        int best = 0;
        for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
        ids[n++] = best;
    }
    FILE *out = fopen(argv[5], "w");
    if (!out) return 1;
    for (int i = 0; i < n; i++) fprintf(out, i ? " %d" : "%d", ids[i]);
    fputc('\n', out);
    fclose(out);
    free(lg);
    peftc_lm_free(lm);
    return 0;
}

static int tokenize(const char *model, const char *text, const char *outp)
{
    peftc_error err = {0};
    peftc_lm *lm;
    CHECK(peftc_lm_load(model, NULL, &lm, &err));
    int32_t *ids;
    int n;
    CHECK(peftc_lm_tokenize(lm, text, strlen(text), -1, 0, &ids, &n, &err));
    FILE *out = fopen(outp, "w");
    if (!out) return 1;
    for (int i = 0; i < n; i++) fprintf(out, i ? " %d" : "%d", ids[i]);
    fputc('\n', out);
    fclose(out);
    free(ids);
    peftc_lm_free(lm);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "tokenize")) return tokenize(argv[2], argv[3], argv[4]);
    if (argc == 3 && !strcmp(argv[1], "gguf-write")) return gguf_write_all(argv[2]);
    if (argc == 6 && !strcmp(argv[1], "gguf-copy")) return gguf_copy(argv[2], argv[3], argv[4], argv[5]);
    if (argc >= 6 && !strcmp(argv[1], "greedy")) return greedy(argc, argv);
    fprintf(stderr, "usage: interop_driver gguf-write OUT | gguf-copy IN OUT KEY VALUE | greedy MODEL IDS N OUT [--adapter A]...\n");
    return 2;
}
