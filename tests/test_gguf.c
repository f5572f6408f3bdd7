/* test_gguf.c: the GGUF reader on synthetic files written here: every value
 * type, nested arrays, v2/v3, alignments 32/64, and malformed input (every
 * truncation of a valid file, hostile counts and lengths, bad shapes,
 * offsets, types, duplicates). Each bad file must fail with the file's name in
 * the message. */
#include "testlib.h"
#include "io/gguf.h"

#include <stdint.h>
#include <unistd.h>

typedef struct buf { uint8_t *p; size_t n, cap; } buf;

static void put(buf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("realloc"); exit(2); }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void u32(buf *b, uint32_t v) { put(b, &v, 4); }   /* the test runs on little-endian x86 */
static void u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void str(buf *b, const char *s) { u64(b, strlen(s)); put(b, s, strlen(s)); }
static void key(buf *b, const char *k, uint32_t type) { str(b, k); u32(b, type); }
static void pad(buf *b, size_t align) { while (b->n % align) u8(b, 0); }

static char dir[64];

static void save(const char *name, const buf *b, char *path)
{
    snprintf(path, 256, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (b->n && fwrite(b->p, 1, b->n, f) != b->n)) { perror(path); exit(2); }
    fclose(f);
}

/* A valid file: 14 keys of every type (nested array included), two tensors. */
static buf make_valid(uint32_t version, uint32_t align)
{
    buf b = {0};
    put(&b, "GGUF", 4); u32(&b, version); u64(&b, 2); u64(&b, 14);
    key(&b, "u8", GGUF_TYPE_UINT8); u8(&b, 200);
    key(&b, "i8", GGUF_TYPE_INT8); u8(&b, (uint8_t)-5);
    key(&b, "u16", GGUF_TYPE_UINT16); u8(&b, 0x34); u8(&b, 0x12);
    key(&b, "i16", GGUF_TYPE_INT16); u8(&b, 0xff); u8(&b, 0xff);
    key(&b, "u32", GGUF_TYPE_UINT32); u32(&b, 4000000000u);
    key(&b, "i32", GGUF_TYPE_INT32); u32(&b, (uint32_t)-7);
    key(&b, "f32", GGUF_TYPE_FLOAT32); { float f = 0.5f; put(&b, &f, 4); }
    key(&b, "bool", GGUF_TYPE_BOOL); u8(&b, 1);
    key(&b, "str", GGUF_TYPE_STRING); str(&b, "it's\n");
    key(&b, "u64", GGUF_TYPE_UINT64); u64(&b, UINT64_MAX);
    key(&b, "i64", GGUF_TYPE_INT64); u64(&b, (uint64_t)-9);
    key(&b, "f64", GGUF_TYPE_FLOAT64); { double d = 0.1; put(&b, &d, 8); }
    key(&b, "general.alignment", GGUF_TYPE_UINT32); u32(&b, align);
    key(&b, "nested", GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_ARRAY); u64(&b, 2);
    u32(&b, GGUF_TYPE_STRING); u64(&b, 2); str(&b, "a"); str(&b, "bc");
    u32(&b, GGUF_TYPE_INT16); u64(&b, 3); u32(&b, 0x00020001); u8(&b, 3); u8(&b, 0);
    /* tensors: f32 [4, 2] at 0, q8_0 [32] at the next aligned offset */
    str(&b, "w"); u32(&b, 2); u64(&b, 4); u64(&b, 2); u32(&b, GGML_TYPE_F32); u64(&b, 0);
    str(&b, "q"); u32(&b, 1); u64(&b, 32); u32(&b, GGML_TYPE_Q8_0); u64(&b, align);
    pad(&b, align);
    for (int i = 0; i < 8; i++) { float f = (float)i; put(&b, &f, 4); }
    pad(&b, align);
    for (int i = 0; i < 34; i++) u8(&b, (uint8_t)i);
    return b;
}

static void check_valid(uint32_t version, uint32_t align)
{
    char path[256], name[64];
    buf b = make_valid(version, align);
    snprintf(name, sizeof name, "v%u_a%u.gguf", version, align);
    save(name, &b, path);
    peftc_error err = {0};
    gguf_file *g;
    if (gguf_open(path, &g, &err)) { CHECK(0, "%s: %s", name, err.msg); free(b.p); return; }
    CHECK(gguf_version(g) == version && gguf_alignment(g) == align && gguf_kv_count(g) == 14 && gguf_tensor_count(g) == 2,
          "%s: header (v%u, alignment %u, %d keys, %d tensors)", name, gguf_version(g), gguf_alignment(g), gguf_kv_count(g), gguf_tensor_count(g));
    int64_t v; double d; int bo; const char *s; size_t n;
    CHECK(gguf_get_int(g, "u8", &v) == 1 && v == 200, "%s: uint8", name);
    CHECK(gguf_get_int(g, "i8", &v) == 1 && v == -5, "%s: int8", name);
    CHECK(gguf_get_int(g, "u16", &v) == 1 && v == 0x1234, "%s: uint16", name);
    CHECK(gguf_get_int(g, "i16", &v) == 1 && v == -1, "%s: int16", name);
    CHECK(gguf_get_int(g, "u32", &v) == 1 && v == 4000000000LL, "%s: uint32", name);
    CHECK(gguf_get_int(g, "i32", &v) == 1 && v == -7, "%s: int32", name);
    CHECK(gguf_get_int(g, "u64", &v) == -1 && gguf_get_float(g, "u64", &d) == 1 && d == 18446744073709551615.0,
          "%s: uint64 beyond int64 refused by get_int, read by get_float", name);
    CHECK(gguf_get_int(g, "i64", &v) == 1 && v == -9, "%s: int64", name);
    CHECK(gguf_get_float(g, "f32", &d) == 1 && d == 0.5 && gguf_get_float(g, "f64", &d) == 1 && d == 0.1, "%s: float32, float64", name);
    CHECK(gguf_get_bool(g, "bool", &bo) == 1 && bo == 1 && gguf_get_bool(g, "u8", &bo) == -1, "%s: bool", name);
    CHECK(gguf_get_str(g, "str", &s, &n) == 1 && n == 5 && !memcmp(s, "it's\n", 5), "%s: string", name);
    CHECK(gguf_get_int(g, "absent", &v) == 0 && gguf_find_key(g, "absent") == -1 && gguf_get_int(g, "str", &v) == -1, "%s: absent key, wrong type", name);
    char small[4];
    CHECK(gguf_str_copy(s, n, small, sizeof small) == 0 && !strcmp(small, "it'"), "%s: str_copy truncates at the cap", name);
    int k = gguf_find_key(g, "nested");
    CHECK(k >= 0 && gguf_arr_type(g, k) == GGUF_TYPE_ARRAY && gguf_arr_len(g, k) == 2 && gguf_arr_data(g, k) == NULL, "%s: nested array", name);
    char out[256];
    size_t need = gguf_format_value(g, k, out, sizeof out, -1);
    CHECK(!strcmp(out, "[['a', 'bc'], [1, 2, 3]]") && need == strlen(out), "%s: nested array as text: %s", name, out);
    gguf_format_value(g, k, out, sizeof out, 1);
    CHECK(!strcmp(out, "[2 items: [2 items: 'a', ...], ...]"), "%s: abbreviated: %s", name, out);
    gguf_format_value(g, gguf_find_key(g, "str"), out, sizeof out, -1);
    CHECK(!strcmp(out, "'it\\'s\\n'"), "%s: string escaped: %s", name, out);
    need = gguf_format_value(g, gguf_find_key(g, "f64"), out, 3, -1);
    CHECK(need == 19 && strlen(out) == 2, "%s: format reports the needed length (%zu)", name, need);
    const gguf_tensor *w = gguf_find_tensor(g, "w"), *q = gguf_find_tensor(g, "q");
    CHECK(w && w->n_dims == 2 && w->ne[0] == 4 && w->ne[1] == 2 && w->nbytes == 32 && ((const float *)w->data)[7] == 7.0f,
          "%s: f32 tensor", name);
    CHECK(q && q->type == GGML_TYPE_Q8_0 && q->nbytes == 34 && q->offset == align && ((const uint8_t *)q->data)[33] == 33 &&
          (size_t)((const uint8_t *)w->data - (const uint8_t *)gguf_tensor_at(g, 0)->data) == 0 && gguf_data_offset(g) % align == 0,
          "%s: q8_0 tensor at an aligned offset", name);
    CHECK(!gguf_find_tensor(g, "nope") && gguf_tensor_check_type(g, q, &err) == PEFTC_OK, "%s: tensor lookup", name);
    gguf_close(g);
    free(b.p);
}

/* expects gguf_open to fail with the path and `needle` in the message */
static void expect_bad(const char *name, const buf *b, const char *needle)
{
    char path[256];
    save(name, b, path);
    peftc_error err = {0};
    gguf_file *g = NULL;
    peftc_status rc = gguf_open(path, &g, &err);
    CHECK(rc != PEFTC_OK && !g && strstr(err.msg, path) && strstr(err.msg, needle), "%s: %s", name, err.msg);
    if (!rc) gguf_close(g);
}

/* a header with n_tensors, n_kv and then raw bytes */
static buf head(uint32_t version, uint64_t nt, uint64_t nkv)
{
    buf b = {0};
    put(&b, "GGUF", 4); u32(&b, version); u64(&b, nt); u64(&b, nkv);
    return b;
}

/* one tensor info after zero kvs, and some data bytes */
static buf one_tensor(uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off, size_t data)
{
    buf b = head(3, 1, 0);
    str(&b, "t"); u32(&b, nd);
    for (uint32_t d = 0; d < nd; d++) u64(&b, ne[d]);
    u32(&b, type); u64(&b, off);
    pad(&b, 32);
    for (size_t i = 0; i < data; i++) u8(&b, 0);
    return b;
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_gguf.XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    check_valid(3, 32);
    check_valid(2, 32);
    check_valid(3, 64);

    /* every truncation of a valid file fails cleanly */
    buf v = make_valid(3, 32);
    int clean = 1;
    size_t first_bad = 0;
    for (size_t n = 0; n < v.n; n++) {
        buf t = {v.p, n, n};
        char path[256];
        save("trunc.gguf", &t, path);
        peftc_error err = {0};
        gguf_file *g = NULL;
        if (gguf_open(path, &g, &err) == PEFTC_OK || !strstr(err.msg, path) || !strstr(err.msg, "truncated")) {
            if (clean) { first_bad = n; printf("# %zu bytes: %s\n", n, err.msg); }
            clean = 0;
            if (g) gguf_close(g);
        }
    }
    CHECK(clean, "each of the %zu truncations fails with 'truncated' and the path (first exception at %zu bytes)", v.n, first_bad);

    buf b = v; memcpy(b.p, "GGUX", 4);
    expect_bad("magic.gguf", &b, "not a GGUF file");
    memcpy(v.p, "GGUF", 4);
    free(v.p);
    b = head(1, 0, 0); expect_bad("v1.gguf", &b, "version 1 is not supported"); free(b.p);
    b = head(4, 0, 0); expect_bad("v4.gguf", &b, "version 4 is not supported"); free(b.p);
    b = head(0x03000000, 0, 0); expect_bad("bigendian.gguf", &b, "big-endian"); free(b.p);
    b = head(3, 0, 1ull << 60); expect_bad("nkv.gguf", &b, "metadata entries cannot fit"); free(b.p);
    b = head(3, 1ull << 60, 0); expect_bad("ntensors.gguf", &b, "tensors cannot fit"); free(b.p);
    b = head(3, 0, 1); u64(&b, 1ull << 62); put(&b, "abcdefgh", 8);
    expect_bad("keylen.gguf", &b, "only 8 bytes follow"); free(b.p);
    b = head(3, 0, 1); key(&b, "s", GGUF_TYPE_STRING); u64(&b, 1ull << 62); put(&b, "abcd", 4);
    expect_bad("strlen.gguf", &b, "has length 4611686018427387904"); free(b.p);
    b = head(3, 0, 1); key(&b, "a", GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_UINT64); u64(&b, 1ull << 61); u64(&b, 0);
    expect_bad("arrlen.gguf", &b, "cannot fit"); free(b.p);
    b = head(3, 0, 1); key(&b, "a", GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_STRING); u64(&b, UINT64_MAX); u64(&b, 0);
    expect_bad("strarrlen.gguf", &b, "cannot fit"); free(b.p);
    b = head(3, 0, 1); key(&b, "a", GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_ARRAY); u64(&b, 2);
    u32(&b, GGUF_TYPE_ARRAY); u64(&b, 1ull << 40); u64(&b, 0);
    expect_bad("nestedlen.gguf", &b, "cannot fit"); free(b.p);
    b = head(3, 0, 1); key(&b, "deep", GGUF_TYPE_ARRAY);
    for (int i = 0; i < 10000; i++) { u32(&b, GGUF_TYPE_ARRAY); u64(&b, 1); }
    u32(&b, GGUF_TYPE_UINT8); u64(&b, 0);
    expect_bad("depth.gguf", &b, "deeper than"); free(b.p);
    b = head(3, 0, 1); key(&b, "x", 13); u64(&b, 0);
    expect_bad("vtype.gguf", &b, "unknown value type 13"); free(b.p);
    b = head(3, 0, 1); key(&b, "x", GGUF_TYPE_ARRAY); u32(&b, 99); u64(&b, 0);
    expect_bad("arrvtype.gguf", &b, "unknown value type 99"); free(b.p);
    b = head(3, 0, 2); key(&b, "k", GGUF_TYPE_UINT8); u8(&b, 1); key(&b, "k", GGUF_TYPE_UINT8); u8(&b, 2);
    expect_bad("dupkey.gguf", &b, "duplicate metadata key 'k'"); free(b.p);
    b = head(3, 0, 1); key(&b, "general.alignment", GGUF_TYPE_UINT32); u32(&b, 48);
    expect_bad("align48.gguf", &b, "not a power of two"); free(b.p);
    b = head(3, 0, 1); key(&b, "general.alignment", GGUF_TYPE_UINT32); u32(&b, 0);
    expect_bad("align0.gguf", &b, "not a power of two"); free(b.p);
    b = head(3, 0, 1); u64(&b, 0); u32(&b, 0); u8(&b, 0);
    expect_bad("emptykey.gguf", &b, "empty metadata key"); free(b.p);

    uint64_t ne5[5] = {1, 1, 1, 1, 1}, neg[1] = {(uint64_t)-4}, big[2] = {1ull << 40, 1ull << 40}, far[2] = {1ull << 20, 1ull << 20},
             ovf[3] = {1ull << 31, 1ull << 31, 1ull << 31}, n4[1] = {4}, n33[1] = {33};
    b = one_tensor(5, ne5, GGML_TYPE_F32, 0, 4); expect_bad("ndims5.gguf", &b, "5 dimensions"); free(b.p);
    b = one_tensor(1, neg, GGML_TYPE_F32, 0, 16); expect_bad("negne.gguf", &b, "invalid shape"); free(b.p);
    b = one_tensor(3, ovf, GGML_TYPE_F32, 0, 16); expect_bad("ovfne.gguf", &b, "invalid shape"); free(b.p);
    b = one_tensor(2, big, GGML_TYPE_F32, 0, 16); expect_bad("hugene.gguf", &b, "invalid shape"); free(b.p);
    b = one_tensor(2, far, GGML_TYPE_F32, 0, 16); expect_bad("hugebytes.gguf", &b, "outside"); free(b.p);
    b = one_tensor(1, n4, GGML_TYPE_F32, 64, 16); expect_bad("offset.gguf", &b, "outside"); free(b.p);
    b = one_tensor(1, n4, GGML_TYPE_F32, 8, 64); expect_bad("misaligned.gguf", &b, "not a multiple of the alignment"); free(b.p);
    b = one_tensor(1, n4, 77, 0, 64); expect_bad("ttype.gguf", &b, "unknown type id 77"); free(b.p);
    b = one_tensor(1, n33, GGML_TYPE_Q8_0, 0, 64); expect_bad("block.gguf", &b, "not a multiple of q8_0's block"); free(b.p);
    b = one_tensor(1, n4, GGML_TYPE_F32, 0, 15); expect_bad("short.gguf", &b, "outside"); free(b.p);
    b = head(3, 2, 0);
    for (int i = 0; i < 2; i++) { str(&b, "t"); u32(&b, 1); u64(&b, 4); u32(&b, GGML_TYPE_F32); u64(&b, 0); }
    pad(&b, 32); u64(&b, 0); u64(&b, 0);
    expect_bad("duptensor.gguf", &b, "duplicate tensor name 't'"); free(b.p);

    /* a known type peftc cannot compute with opens, and fails when asked */
    uint64_t n256[1] = {256};
    b = one_tensor(1, n256, GGML_TYPE_Q2_K, 0, 84);
    char path[256];
    save("q2k.gguf", &b, path);
    free(b.p);
    peftc_error err = {0};
    gguf_file *g;
    if (gguf_open(path, &g, &err) == PEFTC_OK) {
        const gguf_tensor *t = gguf_tensor_at(g, 0);
        CHECK(gguf_tensor_check_type(g, t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "q2_k"), "q2_k opens, check_type: %s", err.msg);
        gguf_close(g);
    } else CHECK(0, "q2_k file: %s", err.msg);
    CHECK(gguf_open("/nonexistent/x.gguf", &g, &err) == PEFTC_ERR_IO && strstr(err.msg, "/nonexistent/x.gguf"), "missing file: %s", err.msg);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
    return tl_finish();
}
