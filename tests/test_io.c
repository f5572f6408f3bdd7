/* test_io.c: safetensors reader/writer and config.json parsing, including
 * every kind of malformed file the reader must reject without crashing. */
#include "testlib.h"
#include "io/safetensors.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static void write_raw(const char *name, const void *data, size_t n)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Builds a safetensors file from a header string and `data_bytes` zero bytes. */
static void write_st(const char *name, const char *header, size_t data_bytes, int64_t fake_len)
{
    size_t hl = strlen(header);
    uint8_t *buf = calloc(1, 8 + hl + data_bytes);
    uint64_t len = fake_len >= 0 ? (uint64_t)fake_len : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, hl);
    write_raw(name, buf, 8 + hl + data_bytes);
    free(buf);
}

static peftc_status open_st(const char *name, peftc_error *err, peftc_safetensors **st)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    *st = NULL;
    return peftc_safetensors_open(p, st, err);
}

static void expect_reject(const char *name, peftc_status want, const char *needle)
{
    peftc_error err = {0};
    peftc_safetensors *st;
    peftc_status rc = open_st(name, &err, &st);
    CHECK(rc == want && strstr(err.msg, needle) && strstr(err.msg, name) && !strchr(err.msg, '\n'),
          "reject %s: rc=%d msg='%s'", name, rc, err.msg);
    peftc_safetensors_free(st);
}

static void test_safetensors(void)
{
    /* a valid file written by our writer reads back exactly */
    float a[6] = {1, 2, 3, 4, 5, -6.5f}, b[3] = {0.25f, -1, 7};
    st_write_item items[2] = {{"w.a", 2, {2, 3}, a}, {"w.b", 1, {3}, b}};
    char p[512];
    snprintf(p, sizeof p, "%s/ok.safetensors", tmpdir);
    peftc_error err = {0};
    CHECK(st_write_f32(p, items, 2, NULL, &err) == PEFTC_OK, "write: %s", err.msg);
    peftc_safetensors *st;
    CHECK(peftc_safetensors_open(p, &st, &err) == PEFTC_OK, "open written file: %s", err.msg);
    if (st) {
        const st_tensor *ta = st_find(st, "w.a"), *tb = st_find(st, "w.b");
        CHECK(ta && tb && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 && tb->shape[0] == 3,
              "shapes read back");
        CHECK(ta && !memcmp(ta->data, a, sizeof a) && tb && !memcmp(tb->data, b, sizeof b), "data read back");
        CHECK(((uintptr_t)ta->data & 7) == 0, "data aligned to 8 bytes");
        CHECK(peftc_safetensors_count(st) == 2 && st_find(st, "nope") == NULL, "count and lookup");
        peftc_safetensors_free(st);
    }
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(access(tmp, F_OK) != 0, "no temp file left behind");

    /* F16 / BF16 conversion */
    uint16_t h[4] = {0x3c00, 0xc000, 0x3555, 0x0001}; /* 1, -2, 0.33325, smallest subnormal */
    uint16_t bf[2] = {0x3f80, 0xc0a0};                  /* 1, -5 */
    uint8_t buf[8 + 200];
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}";
    size_t hl = strlen(hdr);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memcpy(buf + 8 + hl, h, 8);
    memcpy(buf + 8 + hl + 8, bf, 4);
    write_raw("half.safetensors", buf, 8 + hl + 12);
    if (open_st("half.safetensors", &err, &st) == PEFTC_OK) {
        float f[4], g[2];
        st_to_f32(st, st_find(st, "h"), f, &err);
        st_to_f32(st, st_find(st, "b"), g, &err);
        CHECK(f[0] == 1 && f[1] == -2 && fabsf(f[2] - 0.333251953f) < 1e-7f && f[3] == ldexpf(1, -24),
              "F16 -> F32 (%g %g %g %g)", f[0], f[1], f[2], f[3]);
        CHECK(g[0] == 1 && g[1] == -5, "BF16 -> F32");
        peftc_safetensors_free(st);
    } else CHECK(0, "open F16/BF16 file: %s", err.msg);

    /* malformed files */
    write_raw("tiny.safetensors", "abc", 3);
    expect_reject("tiny.safetensors", PEFTC_ERR_FORMAT, "too short");
    write_st("hdrlen.safetensors", "{}", 0, 1000000);
    expect_reject("hdrlen.safetensors", PEFTC_ERR_FORMAT, "header length");
    write_st("huge.safetensors", "{}", 0, INT64_MAX);
    expect_reject("huge.safetensors", PEFTC_ERR_FORMAT, "header length");
    write_st("json.safetensors", "{\"a\": [1,", 0, -1);
    expect_reject("json.safetensors", PEFTC_ERR_FORMAT, "not valid JSON");
    write_st("past.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, -1);
    expect_reject("past.safetensors", PEFTC_ERR_FORMAT, "outside");
    write_st("overlap.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, -1);
    expect_reject("overlap.safetensors", PEFTC_ERR_FORMAT, "overlap");
    write_st("dtype.safetensors", "{\"a\":{\"dtype\":\"Q9\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, -1);
    expect_reject("dtype.safetensors", PEFTC_ERR_UNSUPPORTED, "unknown dtype");
    write_st("shape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}", 16, -1);
    expect_reject("shape.safetensors", PEFTC_ERR_FORMAT, "need");
    write_st("neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16, -1);
    expect_reject("neg.safetensors", PEFTC_ERR_FORMAT, "shape");
    write_st("rev.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,8]}}", 16, -1);
    expect_reject("rev.safetensors", PEFTC_ERR_FORMAT, "data_offsets");
    write_st("ovf.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,16]}}", 16, -1);
    expect_reject("ovf.safetensors", PEFTC_ERR_FORMAT, "overflow");
    write_st("dup.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1);
    expect_reject("dup.safetensors", PEFTC_ERR_FORMAT, "JSON");
    write_st("arr.safetensors", "[1,2]", 0, -1);
    expect_reject("arr.safetensors", PEFTC_ERR_FORMAT, "not a JSON object");
    expect_reject("missing.safetensors", PEFTC_ERR_IO, "cannot open");
}

static void expect_config(const char *name, const char *json, peftc_status want, const char *needle)
{
    write_raw(name, json, strlen(json));
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    peftc_config c;
    peftc_error err = {0};
    peftc_status rc = peftc_config_load(p, &c, &err);
    CHECK(rc == want && (want == PEFTC_OK || (strstr(err.msg, needle) && strstr(err.msg, name))),
          "config %s: rc=%d msg='%s'", name, rc, err.msg);
}

static void test_config(void)
{
    const char *good = "{\"model_type\":\"bert\",\"vocab_size\":100,\"hidden_size\":32,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"intermediate_size\":64,\"hidden_act\":\"gelu\"}";
    expect_config("good.json", good, PEFTC_OK, "");
    peftc_config c;
    char p[512];
    snprintf(p, sizeof p, "%s/good.json", tmpdir);
    peftc_config_load(p, &c, NULL);
    CHECK(c.hidden_size == 32 && c.max_position == 512 && c.type_vocab_size == 2 && fabsf(c.layer_norm_eps - 1e-12f) < 1e-18f,
          "config fields and defaults");
    expect_config("gpt2.json", "{\"model_type\":\"gpt2\",\"vocab_size\":100}", PEFTC_ERR_UNSUPPORTED, "not supported");
    expect_config("nohidden.json", "{\"model_type\":\"bert\",\"vocab_size\":100,\"num_hidden_layers\":2,"
                  "\"num_attention_heads\":4,\"intermediate_size\":64}", PEFTC_ERR_FORMAT, "hidden_size");
    expect_config("notype.json", "{\"vocab_size\":100}", PEFTC_ERR_FORMAT, "model_type");
    expect_config("heads.json", "{\"model_type\":\"bert\",\"vocab_size\":100,\"hidden_size\":30,\"num_hidden_layers\":2,"
                  "\"num_attention_heads\":4,\"intermediate_size\":64}", PEFTC_ERR_FORMAT, "multiple");
    expect_config("act.json", "{\"model_type\":\"bert\",\"vocab_size\":100,\"hidden_size\":32,\"num_hidden_layers\":2,"
                  "\"num_attention_heads\":4,\"intermediate_size\":64,\"hidden_act\":\"relu\"}", PEFTC_ERR_UNSUPPORTED, "hidden_act");
    expect_config("strint.json", "{\"model_type\":\"bert\",\"vocab_size\":\"100\",\"hidden_size\":32,\"num_hidden_layers\":2,"
                  "\"num_attention_heads\":4,\"intermediate_size\":64}", PEFTC_ERR_FORMAT, "vocab_size");
    expect_config("broken.json", "{\"model_type\":", PEFTC_ERR_FORMAT, "not valid JSON");
}

static void test_model_dir(void)
{
    /* a directory with a config but no weights, and one whose weights don't fit the config */
    char d[512], p[600];
    snprintf(d, sizeof d, "%s/model", tmpdir);
    mkdir(d, 0755);
    const char *cfg = "{\"model_type\":\"bert\",\"vocab_size\":10,\"hidden_size\":4,\"num_hidden_layers\":1,"
                      "\"num_attention_heads\":2,\"intermediate_size\":8,\"max_position_embeddings\":8}";
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "w"); fputs(cfg, f); fclose(f);
    peftc_model *m = NULL;
    peftc_error err = {0};
    peftc_status rc = peftc_model_load(d, &m, &err);
    CHECK(rc == PEFTC_ERR_IO && strstr(err.msg, "model.safetensors"), "model dir without weights: %s", err.msg);
    float w[40] = {0};
    st_write_item it = {"embeddings.word_embeddings.weight", 2, {10, 3}, w};
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    st_write_f32(p, &it, 1, NULL, &err);
    rc = peftc_model_load(d, &m, &err);
    CHECK(rc == PEFTC_ERR_FORMAT && strstr(err.msg, "word_embeddings") && strstr(err.msg, "shape"), "wrong shape: %s", err.msg);
    it.shape[1] = 4;
    st_write_f32(p, &it, 1, NULL, &err);
    rc = peftc_model_load(d, &m, &err);
    CHECK(rc == PEFTC_ERR_FORMAT && strstr(err.msg, "position_embeddings") && strstr(err.msg, "missing"), "missing tensor: %s", err.msg);
    CHECK(m == NULL, "no model returned on failure");
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/peftc_test_io_%d", (int)getpid());
    mkdir(tmpdir, 0755);
    test_safetensors();
    test_config();
    test_model_dir();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    return tl_finish();
}
