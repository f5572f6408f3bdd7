/* gguf_write.c: the GGUF v3 writer of gguf_write.h. Metadata values are kept
 * already encoded (the bytes that follow the key and type in the file), so
 * writing is a straight copy; tensor data is borrowed until the write. */
#include "io/gguf_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct wkv {
    char *key;
    uint32_t type;
    unsigned char *val;     /* the encoded value */
    size_t len;
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
} wtensor;

struct gguf_writer {
    wkv *kv;
    int n_kv, cap_kv;
    wtensor *t;
    int n_t, cap_t;
};

/* sizes of the scalar types, by gguf_type (0: not a fixed-size scalar) */
static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

peftc_status gguf_writer_new(gguf_writer **out, peftc_error *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? PEFTC_OK : peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

static int has_key(const gguf_writer *w, const char *key)
{
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) return 1;
    return 0;
}

/* Takes ownership of val (freed on failure too). */
static peftc_status add_kv(gguf_writer *w, const char *key, uint32_t type, unsigned char *val, size_t len, peftc_error *err)
{
    if (!key || !*key) { free(val); return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: empty metadata key"); }
    if (has_key(w, key)) { free(val); return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: metadata key '%s' added twice", key); }
    if (w->n_kv == w->cap_kv) {
        int cap = w->cap_kv ? 2 * w->cap_kv : 16;
        wkv *k = realloc(w->kv, (size_t)cap * sizeof *k);
        if (!k) { free(val); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        w->kv = k;
        w->cap_kv = cap;
    }
    char *kc = strdup(key);
    if (!kc) { free(val); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    w->kv[w->n_kv++] = (wkv){kc, type, val, len};
    return PEFTC_OK;
}

static peftc_status add_scalar(gguf_writer *w, const char *key, uint32_t type, const void *v, peftc_error *err)
{
    size_t n = scalar_size(type);
    unsigned char *b = malloc(n);
    if (!b) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    memcpy(b, v, n);
    return add_kv(w, key, type, b, n, err);
}

peftc_status gguf_w_u8(gguf_writer *w, const char *k, uint8_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_UINT8, &v, e); }
peftc_status gguf_w_i8(gguf_writer *w, const char *k, int8_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_INT8, &v, e); }
peftc_status gguf_w_u16(gguf_writer *w, const char *k, uint16_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_UINT16, &v, e); }
peftc_status gguf_w_i16(gguf_writer *w, const char *k, int16_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_INT16, &v, e); }
peftc_status gguf_w_u32(gguf_writer *w, const char *k, uint32_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_UINT32, &v, e); }
peftc_status gguf_w_i32(gguf_writer *w, const char *k, int32_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_INT32, &v, e); }
peftc_status gguf_w_u64(gguf_writer *w, const char *k, uint64_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_UINT64, &v, e); }
peftc_status gguf_w_i64(gguf_writer *w, const char *k, int64_t v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_INT64, &v, e); }
peftc_status gguf_w_f32(gguf_writer *w, const char *k, float v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_FLOAT32, &v, e); }
peftc_status gguf_w_f64(gguf_writer *w, const char *k, double v, peftc_error *e) { return add_scalar(w, k, GGUF_TYPE_FLOAT64, &v, e); }

peftc_status gguf_w_bool(gguf_writer *w, const char *k, int v, peftc_error *e)
{
    uint8_t b = v != 0;   /* GGUF bools are one byte, 0 or 1 */
    return add_scalar(w, k, GGUF_TYPE_BOOL, &b, e);
}

peftc_status gguf_w_str(gguf_writer *w, const char *key, const char *s, size_t len, peftc_error *err)
{
    unsigned char *b = malloc(8 + len);
    if (!b) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    uint64_t n = len;
    memcpy(b, &n, 8);
    if (len) memcpy(b + 8, s, len);
    return add_kv(w, key, GGUF_TYPE_STRING, b, 8 + len, err);
}

peftc_status gguf_w_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n,
                        peftc_error *err)
{
    size_t es = scalar_size(elem_type);
    if (!es) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: '%s': arrays of %s take gguf_w_arr_str", key, gguf_type_name(elem_type));
    if (n > (SIZE_MAX - 12) / es) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: '%s': %llu elements is too many", key, (unsigned long long)n);
    unsigned char *b = malloc(12 + n * es);
    if (!b) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    uint32_t t = elem_type;
    memcpy(b, &t, 4);
    memcpy(b + 4, &n, 8);
    if (n) memcpy(b + 12, data, n * es);
    return add_kv(w, key, GGUF_TYPE_ARRAY, b, 12 + n * es, err);
}

peftc_status gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *len, uint64_t n,
                            peftc_error *err)
{
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++) {
        size_t l = len ? len[i] : strlen(s[i]);
        if (l > SIZE_MAX - total - 8) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: '%s' is too large", key);
        total += 8 + l;
    }
    unsigned char *b = malloc(total);
    if (!b) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    uint32_t t = GGUF_TYPE_STRING;
    memcpy(b, &t, 4);
    memcpy(b + 4, &n, 8);
    size_t o = 12;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l = len ? len[i] : strlen(s[i]);
        memcpy(b + o, &l, 8);
        if (l) memcpy(b + o + 8, s[i], l);
        o += 8 + l;
    }
    return add_kv(w, key, GGUF_TYPE_ARRAY, b, total, err);
}

peftc_status gguf_w_copy_kv(gguf_writer *w, const gguf_file *g, int i, peftc_error *err)
{
    const char *key = gguf_key(g, i);
    gguf_type t = gguf_kv_type(g, i);
    if (t == GGUF_TYPE_STRING) {
        const char *s;
        size_t len;
        gguf_get_str(g, key, &s, &len);
        return gguf_w_str(w, key, s, len, err);
    }
    if (t == GGUF_TYPE_ARRAY) {
        int at = gguf_arr_type(g, i);
        uint64_t n = gguf_arr_len(g, i);
        if (at == GGUF_TYPE_STRING) {
            const char **s = malloc((size_t)(n ? n : 1) * sizeof *s);
            size_t *len = malloc((size_t)(n ? n : 1) * sizeof *len);
            peftc_status rc = s && len ? PEFTC_OK : peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            for (uint64_t j = 0; !rc && j < n; j++) gguf_arr_str(g, i, j, &s[j], &len[j]);
            if (!rc) rc = gguf_w_arr_str(w, key, s, len, n, err);
            free(s);
            free(len);
            return rc;
        }
        if (!scalar_size((uint32_t)at))
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "gguf writer: '%s' is an array of arrays, which is not copied", key);
        return gguf_w_arr(w, key, (gguf_type)at, gguf_arr_data(g, i), n, err);
    }
    /* scalars: widen through the reader's typed getters, narrow back to the same type */
    int64_t iv = 0;
    double fv = 0;
    int bv = 0;
    switch (t) {
    case GGUF_TYPE_FLOAT32: gguf_get_float(g, key, &fv); return gguf_w_f32(w, key, (float)fv, err);
    case GGUF_TYPE_FLOAT64: gguf_get_float(g, key, &fv); return gguf_w_f64(w, key, fv, err);
    case GGUF_TYPE_BOOL: gguf_get_bool(g, key, &bv); return gguf_w_bool(w, key, bv, err);
    case GGUF_TYPE_UINT64: {
        /* a uint64 above INT64_MAX does not pass through get_int: read its raw bytes */
        if (gguf_get_int(g, key, &iv) != 1)
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "gguf writer: '%s': a uint64 above 2^63 is not copied", key);
        return gguf_w_u64(w, key, (uint64_t)iv, err);
    }
    default: break;
    }
    if (gguf_get_int(g, key, &iv) != 1) return peftc_fail(err, PEFTC_ERR_FORMAT, "gguf writer: '%s' has type %d", key, (int)t);
    switch (t) {
    case GGUF_TYPE_UINT8: return gguf_w_u8(w, key, (uint8_t)iv, err);
    case GGUF_TYPE_INT8: return gguf_w_i8(w, key, (int8_t)iv, err);
    case GGUF_TYPE_UINT16: return gguf_w_u16(w, key, (uint16_t)iv, err);
    case GGUF_TYPE_INT16: return gguf_w_i16(w, key, (int16_t)iv, err);
    case GGUF_TYPE_UINT32: return gguf_w_u32(w, key, (uint32_t)iv, err);
    case GGUF_TYPE_INT32: return gguf_w_i32(w, key, (int32_t)iv, err);
    case GGUF_TYPE_INT64: return gguf_w_i64(w, key, iv, err);
    default: return peftc_fail(err, PEFTC_ERR_FORMAT, "gguf writer: '%s' has type %d", key, (int)t);
    }
}

peftc_status gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                           const void *data, size_t nbytes, peftc_error *err)
{
    if (!name || !*name) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: empty tensor name");
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s': %d dimensions (1..%d)", name, n_dims, GGUF_MAX_DIMS);
    const ggml_type_traits *tr = ggml_traits(type);
    if (!tr) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s': unknown ggml type %u", name, type);
    int64_t rows = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 1 || ne[d] > ((int64_t)1 << 40))
            return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s': dimension %d is %lld", name, d, (long long)ne[d]);
        if (d) rows *= ne[d];
        if (rows > ((int64_t)1 << 40)) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s' is too large", name);
    }
    size_t rb = ggml_row_bytes(type, ne[0]);
    if (!rb) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s': %lld values per row is not a whole number of %s blocks (%d)",
                               name, (long long)ne[0], tr->name, tr->block);
    if (rb * (size_t)rows != nbytes)
        return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s': %zu bytes given, its type and shape need %zu", name, nbytes, rb * (size_t)rows);
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: tensor '%s' added twice", name);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->data = data;
    t->nbytes = nbytes;
    w->n_t++;
    return PEFTC_OK;
}

static size_t pad_to(size_t x, size_t a) { return (x + a - 1) / a * a; }

static int put(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }
static int put_u32(FILE *f, uint32_t v) { return put(f, &v, 4); }
static int put_u64(FILE *f, uint64_t v) { return put(f, &v, 8); }
static int put_str(FILE *f, const char *s) { size_t n = strlen(s); return put_u64(f, n) && put(f, s, n); }
static int put_zeros(FILE *f, size_t n)
{
    static const unsigned char z[64];
    while (n) { size_t k = n < sizeof z ? n : sizeof z; if (!put(f, z, k)) return 0; n -= k; }
    return 1;
}

peftc_status gguf_writer_write(gguf_writer *w, const char *path, uint32_t alignment, peftc_error *err)
{
    if (alignment == 0) alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return peftc_fail(err, PEFTC_ERR_INPUT, "gguf writer: alignment %u is not a power of two", alignment);
    peftc_status rc;
    /* a reader takes the alignment from general.alignment: record it when not the default */
    if (alignment != GGUF_DEFAULT_ALIGNMENT && !has_key(w, "general.alignment") &&
        (rc = gguf_w_u32(w, "general.alignment", alignment, err)))
        return rc;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    int good = put(f, "GGUF", 4) && put_u32(f, 3) && put_u64(f, (uint64_t)w->n_t) && put_u64(f, (uint64_t)w->n_kv);
    for (int i = 0; good && i < w->n_kv; i++)
        good = put_str(f, w->kv[i].key) && put_u32(f, w->kv[i].type) && put(f, w->kv[i].val, w->kv[i].len);
    /* tensor offsets: each one starts aligned, relative to the data section */
    size_t off = 0;
    for (int i = 0; good && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        good = put_str(f, t->name) && put_u32(f, (uint32_t)t->n_dims);
        for (int d = 0; good && d < t->n_dims; d++) good = put_u64(f, (uint64_t)t->ne[d]);
        good = good && put_u32(f, t->type) && put_u64(f, off);
        off = pad_to(off + t->nbytes, alignment);
    }
    long pos = good ? ftell(f) : -1;
    if (pos < 0) good = 0;
    if (good) good = put_zeros(f, pad_to((size_t)pos, alignment) - (size_t)pos);
    for (int i = 0; good && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        good = put(f, t->data, t->nbytes) && put_zeros(f, pad_to(t->nbytes, alignment) - t->nbytes);
    }
    int e = errno;
    if (good && (fflush(f) != 0 || fsync(fileno(f)) != 0)) { good = 0; e = errno; }
    if (fclose(f) != 0 && good) { good = 0; e = errno; }
    if (!good) {
        unlink(tmp);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
    return PEFTC_OK;
}
