/* gguf.c: the GGUF reader (see gguf.h for the layout).
 *
 * The file is parsed twice: a first pass walks every key, value and tensor
 * info with a cursor that checks each read against the end of the mapping,
 * and only counts; allocation happens after it, sized by what the file
 * proved it holds. So a count of 2^60 is refused by the first read past the
 * end (each entry takes at least 8 bytes), never by an allocation.
 * Nested arrays are bounded in depth, and the work of walking them is
 * bounded by the file size, because every element consumes bytes. */
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_DEPTH 4          /* arrays of arrays of ... (upstream uses 1 level) */
#define GGUF_MAX_KEY 65536
#define GGUF_MAX_NAME 65536
#define GGUF_MAX_DIMS 4

typedef struct cursor {
    const uint8_t *p, *end, *base;
    const char *path;
    peftc_error *err;
    peftc_status rc;
} cursor;

static int need(cursor *c, uint64_t n, const char *what)
{
    if (c->rc) return 0;
    if ((uint64_t)(c->end - c->p) < n) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: truncated GGUF file: %s needs %" PRIu64 " bytes at offset %zu, %zu left",
                           c->path, what, n, (size_t)(c->p - c->base), (size_t)(c->end - c->p));
        return 0;
    }
    return 1;
}

static uint32_t rd_u32(cursor *c, const char *what)
{
    if (!need(c, 4, what)) return 0;
    uint32_t v;
    memcpy(&v, c->p, 4);
    c->p += 4;
    return v;
}

static uint64_t rd_u64(cursor *c, const char *what)
{
    if (!need(c, 8, what)) return 0;
    uint64_t v;
    memcpy(&v, c->p, 8);
    c->p += 8;
    return v;
}

/* a string: returns its bytes (in the mapping) and length */
static const uint8_t *rd_str(cursor *c, uint64_t *len, uint64_t max, const char *what)
{
    uint64_t n = rd_u64(c, what);
    if (c->rc) return NULL;
    if (n > max) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: %s is %" PRIu64 " bytes long (at most %" PRIu64 ")", c->path, what, n, max);
        return NULL;
    }
    if (!need(c, n, what)) return NULL;
    const uint8_t *s = c->p;
    c->p += n;
    *len = n;
    return s;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_vtype_name(uint32_t t)
{
    static const char *const n[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                    "bool", "string", "array", "uint64", "int64", "float64"};
    return t < GGUF_VTYPE_COUNT ? n[t] : "unknown";
}

/* Skips one value of type t; depth bounds nested arrays. */
static void skip_value(cursor *c, uint32_t t, int depth, const char *key)
{
    if (c->rc) return;
    size_t s = scalar_size(t);
    if (s) { if (need(c, s, key)) c->p += s; return; }
    if (t == GGUF_STRING) { uint64_t l; rd_str(c, &l, UINT64_MAX, key); return; }
    if (t != GGUF_ARRAY) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s' has unknown value type %u", c->path, key, t);
        return;
    }
    if (depth >= GGUF_MAX_DEPTH) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s' nests arrays deeper than %d levels", c->path, key, GGUF_MAX_DEPTH);
        return;
    }
    uint32_t et = rd_u32(c, key);
    uint64_t n = rd_u64(c, key);
    if (c->rc) return;
    size_t es = scalar_size(et);
    if (es) {
        if (n > (uint64_t)(c->end - c->p) / es) {
            c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s': an array of %" PRIu64 " %s values does not fit in the file",
                               c->path, key, n, gguf_vtype_name(et));
            return;
        }
        c->p += n * es;
        return;
    }
    if (et != GGUF_STRING && et != GGUF_ARRAY) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s': array of unknown value type %u", c->path, key, et);
        return;
    }
    /* every string or array element takes at least 8 bytes */
    if (n > (uint64_t)(c->end - c->p) / 8) {
        c->rc = peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s': an array of %" PRIu64 " %ss does not fit in the file",
                           c->path, key, n, gguf_vtype_name(et));
        return;
    }
    for (uint64_t j = 0; j < n && !c->rc; j++) skip_value(c, et, depth + 1, key);
}

int gguf_is_gguf(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4];
    int ok = fread(m, 1, 4, f) == 4 && !memcmp(m, "GGUF", 4);
    fclose(f);
    return ok;
}

void gguf_close(gguf_file *g)
{
    if (!g) return;
    if (g->kv)
        for (int i = 0; i < g->n_kv; i++) free(g->kv[i].arr_str);
    if (g->tensors)
        for (int i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap((void *)g->map, g->size);
    free(g->path);
    free(g);
}

static int key_eq(const gguf_kv *kv, const char *key)
{
    size_t n = strlen(key);
    return kv->key_len == n && !memcmp(kv->key, key, n);
}

int gguf_find(const gguf_file *g, const char *key)
{
    for (int i = 0; i < g->n_kv; i++)
        if (key_eq(&g->kv[i], key)) return i;
    return -1;
}

/* a printable, bounded rendering of a key for messages */
static void key_text(const uint8_t *k, size_t n, char *out, size_t cap)
{
    size_t w = 0;
    for (size_t i = 0; i < n && w + 5 < cap; i++) {
        unsigned char ch = k[i];
        if (ch >= 0x20 && ch < 0x7f) out[w++] = (char)ch;
        else w += (size_t)snprintf(out + w, cap - w, "\\x%02x", ch);
    }
    if (n && w + 5 >= cap && w + 4 <= cap) { memcpy(out + w, "...", 3); w += 3; }
    out[w < cap ? w : cap - 1] = 0;
}

peftc_status gguf_open(const char *path, gguf_file **out, peftc_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 24) {
        close(fd);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %lld bytes is too short for a GGUF header (24)", path, (long long)sb.st_size);
    }
    gguf_file *g = calloc(1, sizeof *g);
    if (!g) { close(fd); return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); }
    g->path = strdup(path);
    g->size = (size_t)sb.st_size;
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED || !g->path) {
        if (m != MAP_FAILED) munmap(m, g->size);
        free(g->path);
        free(g);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    }
    g->map = m;
    peftc_status rc = PEFTC_OK;
    cursor c = {g->map, g->map + g->size, g->map, path, err, PEFTC_OK};
    if (memcmp(g->map, "GGUF", 4)) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a GGUF file (the magic is not \"GGUF\")", path);
        goto fail;
    }
    c.p += 4;
    g->version = rd_u32(&c, "version");
    if (g->version != 2 && g->version != 3) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (peftc reads versions 2 and 3)", path, g->version);
        goto fail;
    }
    uint64_t n_tensors = rd_u64(&c, "tensor count"), n_kv = rd_u64(&c, "key count");
    /* a key-value pair takes >= 8 + 4 + 1 bytes, a tensor info >= 8 + 4 + 4 + 8 */
    if (n_kv > g->size / 13 || n_kv > INT32_MAX) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %" PRIu64 " metadata keys cannot fit in a file of %zu bytes", path, n_kv, g->size);
        goto fail;
    }
    if (n_tensors > g->size / 24 || n_tensors > INT32_MAX) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %" PRIu64 " tensors cannot fit in a file of %zu bytes", path, n_tensors, g->size);
        goto fail;
    }
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); goto fail; }

    char kt[160];
    g->alignment = 32;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint64_t kl;
        const uint8_t *k = rd_str(&c, &kl, GGUF_MAX_KEY, "a metadata key");
        kv->type = rd_u32(&c, "a value type");
        if (c.rc) { rc = c.rc; goto fail; }
        kv->key = (const char *)k;
        kv->key_len = kl;
        g->n_kv = (int)i + 1;
        key_text(k, kl, kt, sizeof kt);
        for (uint64_t j = 0; j < i; j++)
            if (g->kv[j].key_len == kl && !memcmp(g->kv[j].key, k, kl)) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: metadata key '%s' appears twice", path, kt);
                goto fail;
            }
        kv->value = c.p;
        if (kv->type == GGUF_ARRAY) {
            const uint8_t *start = c.p;
            kv->arr_type = rd_u32(&c, kt);
            kv->arr_n = rd_u64(&c, kt);
            c.p = start;
        }
        skip_value(&c, kv->type, 0, kt);
        if (c.rc) { rc = c.rc; goto fail; }
        kv->value_bytes = (size_t)(c.p - kv->value);
        if (kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING) {
            /* index the strings: arr_n is bounded by the bytes they took */
            kv->arr_str = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *kv->arr_str);
            if (!kv->arr_str) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory indexing '%s'", path, kt); goto fail; }
            const uint8_t *q = kv->value + 12;
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                uint64_t l;
                kv->arr_str[j] = q;
                memcpy(&l, q, 8);
                q += 8 + l;
            }
        }
        if (key_eq(kv, "general.alignment")) {
            int64_t a;
            if (kv->type != GGUF_UINT32 && kv->type != GGUF_UINT64 && kv->type != GGUF_INT32 && kv->type != GGUF_INT64) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: general.alignment is a %s, not an integer", path, gguf_vtype_name(kv->type));
                goto fail;
            }
            gguf_get_int(g, "general.alignment", &a);
            if (a <= 0 || a > (1 << 20) || (a & (a - 1))) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: general.alignment %lld is not a power of two in [1, 2^20]", path, (long long)a);
                goto fail;
            }
            g->alignment = (uint64_t)a;
        }
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t nl;
        const uint8_t *name = rd_str(&c, &nl, GGUF_MAX_NAME, "a tensor name");
        uint32_t nd = rd_u32(&c, "a tensor's dimension count");
        if (c.rc) { rc = c.rc; goto fail; }
        key_text(name, nl, kt, sizeof kt);
        if (nd < 1 || nd > GGUF_MAX_DIMS) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1 to %d allowed)", path, kt, nd, GGUF_MAX_DIMS);
            goto fail;
        }
        char *nm = malloc(nl + 1);
        if (!nm) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); goto fail; }
        memcpy(nm, name, nl);
        nm[nl] = 0;
        t->name = nm;
        g->n_tensors = (int)i + 1;
        if (strlen(nm) != nl) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor name '%s' contains a NUL byte", path, kt);
            goto fail;
        }
        t->n_dims = (int)nd;
        uint64_t numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t e = rd_u64(&c, "a tensor dimension");
            if (c.rc) { rc = c.rc; goto fail; }
            if (e > (uint64_t)INT64_MAX || (e && numel > (uint64_t)INT64_MAX / e)) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s': dimension %u (%" PRIu64 ") makes the element count overflow", path, kt, d, e);
                goto fail;
            }
            t->ne[d] = (int64_t)e;
            numel *= e;
        }
        t->type = rd_u32(&c, "a tensor type");
        t->offset = rd_u64(&c, "a tensor offset");
        if (c.rc) { rc = c.rc; goto fail; }
        const ggml_type_traits *tr = ggml_traits(t->type);
        if (!tr) {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' has ggml type %u, which peftc does not know", path, kt, t->type);
            goto fail;
        }
        if (t->ne[0] % tr->block) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s': %lld values per row is not a multiple of the %s block (%d)",
                            path, kt, (long long)t->ne[0], tr->name, tr->block);
            goto fail;
        }
        uint64_t blocks = numel / (uint64_t)tr->block;
        if (blocks > (uint64_t)SIZE_MAX / (uint64_t)tr->bytes) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is too large", path, kt);
            goto fail;
        }
        t->nbytes = (size_t)(blocks * (uint64_t)tr->bytes);
        if (t->offset % g->alignment) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                            path, kt, t->offset, g->alignment);
            goto fail;
        }
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(g->tensors[j].name, nm)) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' appears twice", path, kt);
                goto fail;
            }
    }
    size_t hdr = (size_t)(c.p - g->map);
    uint64_t start = (hdr + g->alignment - 1) / g->alignment * g->alignment;
    if (start > g->size && n_tensors) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated GGUF file: the tensor data would start at %" PRIu64 ", past the end (%zu)", path, start, g->size);
        goto fail;
    }
    g->data_start = (size_t)start;
    for (int i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t avail = g->size - g->data_start;
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' (%zu bytes at offset %" PRIu64 ") lies past the end of the file (%" PRIu64 " data bytes)",
                            path, t->name, t->nbytes, t->offset, avail);
            goto fail;
        }
        t->data = g->map + g->data_start + t->offset;
    }
    *out = g;
    return PEFTC_OK;
fail:
    gguf_close(g);
    return rc;
}

int gguf_get_int(const gguf_file *g, const char *key, int64_t *out)
{
    int i = gguf_find(g, key);
    if (i < 0) return 0;
    const gguf_kv *kv = &g->kv[i];
    const uint8_t *v = kv->value;
    switch (kv->type) {
    case GGUF_UINT8: *out = v[0]; return 1;
    case GGUF_INT8: *out = (int8_t)v[0]; return 1;
    case GGUF_UINT16: { uint16_t x; memcpy(&x, v, 2); *out = x; return 1; }
    case GGUF_INT16: { int16_t x; memcpy(&x, v, 2); *out = x; return 1; }
    case GGUF_UINT32: { uint32_t x; memcpy(&x, v, 4); *out = x; return 1; }
    case GGUF_INT32: { int32_t x; memcpy(&x, v, 4); *out = x; return 1; }
    case GGUF_UINT64: { uint64_t x; memcpy(&x, v, 8); if (x > INT64_MAX) return -1; *out = (int64_t)x; return 1; }
    case GGUF_INT64: { int64_t x; memcpy(&x, v, 8); *out = x; return 1; }
    case GGUF_BOOL: *out = v[0] != 0; return 1;
    default: return -1;
    }
}

int gguf_get_float(const gguf_file *g, const char *key, double *out)
{
    int i = gguf_find(g, key);
    if (i < 0) return 0;
    const gguf_kv *kv = &g->kv[i];
    if (kv->type == GGUF_FLOAT32) { float x; memcpy(&x, kv->value, 4); *out = x; return 1; }
    if (kv->type == GGUF_FLOAT64) { double x; memcpy(&x, kv->value, 8); *out = x; return 1; }
    int64_t iv;
    int r = gguf_get_int(g, key, &iv);
    if (r == 1 && kv->type != GGUF_BOOL) { *out = (double)iv; return 1; }
    return -1;
}

int gguf_get_bool(const gguf_file *g, const char *key, int *out)
{
    int i = gguf_find(g, key);
    if (i < 0) return 0;
    if (g->kv[i].type != GGUF_BOOL) return -1;
    *out = g->kv[i].value[0] != 0;
    return 1;
}

int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len)
{
    int i = gguf_find(g, key);
    if (i < 0) return 0;
    if (g->kv[i].type != GGUF_STRING) return -1;
    uint64_t l;
    memcpy(&l, g->kv[i].value, 8);
    *s = (const char *)g->kv[i].value + 8;
    *len = (size_t)l;
    return 1;
}

void gguf_arr_str(const gguf_file *g, int i, uint64_t j, const char **s, size_t *len)
{
    const uint8_t *q = g->kv[i].arr_str[j];
    uint64_t l;
    memcpy(&l, q, 8);
    *s = (const char *)q + 8;
    *len = (size_t)l;
}

const void *gguf_arr_data(const gguf_file *g, int i)
{
    const gguf_kv *kv = &g->kv[i];
    if (kv->type != GGUF_ARRAY || !scalar_size(kv->arr_type)) return NULL;
    return kv->value + 12;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name)
{
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* ---------------------------------------------------------------- text */

typedef struct sbuf { char *p; size_t n, cap; } sbuf;
static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    if (b->n + 1 >= b->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (w > 0) b->n += (size_t)w < b->cap - b->n ? (size_t)w : b->cap - b->n - 1;
}

static void put_str(sbuf *b, const uint8_t *s, uint64_t n)
{
    put(b, "\"");
    for (uint64_t i = 0; i < n && b->n + 8 < b->cap; i++) {
        unsigned char ch = s[i];
        if (ch == '"' || ch == '\\') put(b, "\\%c", ch);
        else if (ch == '\n') put(b, "\\n");
        else if (ch < 0x20 || ch == 0x7f) put(b, "\\x%02x", ch);
        else put(b, "%c", ch);
    }
    put(b, "\"");
}

/* one value at *p of type t (already validated at open), advancing *p */
static void fmt_value(sbuf *b, const uint8_t **p, const uint8_t *end, uint32_t t, int max_items)
{
    const uint8_t *v = *p;
    switch (t) {
    case GGUF_UINT8: put(b, "%u", v[0]); *p += 1; return;
    case GGUF_INT8: put(b, "%d", (int8_t)v[0]); *p += 1; return;
    case GGUF_BOOL: put(b, "%s", v[0] ? "true" : "false"); *p += 1; return;
    case GGUF_UINT16: { uint16_t x; memcpy(&x, v, 2); put(b, "%u", x); *p += 2; return; }
    case GGUF_INT16: { int16_t x; memcpy(&x, v, 2); put(b, "%d", x); *p += 2; return; }
    case GGUF_UINT32: { uint32_t x; memcpy(&x, v, 4); put(b, "%u", x); *p += 4; return; }
    case GGUF_INT32: { int32_t x; memcpy(&x, v, 4); put(b, "%d", x); *p += 4; return; }
    case GGUF_FLOAT32: { float x; memcpy(&x, v, 4); put(b, "%.9g", (double)x); *p += 4; return; }
    case GGUF_UINT64: { uint64_t x; memcpy(&x, v, 8); put(b, "%" PRIu64, x); *p += 8; return; }
    case GGUF_INT64: { int64_t x; memcpy(&x, v, 8); put(b, "%" PRId64, x); *p += 8; return; }
    case GGUF_FLOAT64: { double x; memcpy(&x, v, 8); put(b, "%.17g", x); *p += 8; return; }
    case GGUF_STRING: { uint64_t l; memcpy(&l, v, 8); put_str(b, v + 8, l); *p += 8 + l; return; }
    case GGUF_ARRAY: {
        uint32_t et;
        uint64_t n;
        memcpy(&et, v, 4);
        memcpy(&n, v + 4, 8);
        *p += 12;
        put(b, "[");
        size_t es = scalar_size(et);
        for (uint64_t j = 0; j < n; j++) {
            if ((int64_t)j >= max_items) {
                /* skip the rest without printing */
                if (es) { *p += (n - j) * es; }
                else { cursor c = {*p, end, *p, "", NULL, PEFTC_OK}; for (; j < n; j++) skip_value(&c, et, 1, ""); *p = c.p; }
                put(b, ", ... (%" PRIu64 " items)", n);
                break;
            }
            if (j) put(b, ", ");
            fmt_value(b, p, end, et, max_items);
        }
        put(b, "]");
        return;
    }
    default: put(b, "?"); return;
    }
}

void gguf_format_value(const gguf_file *g, int i, char *out, size_t cap, int max_items)
{
    if (!cap) return;
    sbuf b = {out, 0, cap};
    out[0] = 0;
    const uint8_t *p = g->kv[i].value;
    fmt_value(&b, &p, g->map + g->size, g->kv[i].type, max_items);
}

/* ------------------------------------------------------- public: inspect */

peftc_status peftc_gguf_describe(const char *path, int max_items, char **out, peftc_error *err)
{
    *out = NULL;
    gguf_file *g;
    peftc_status rc = gguf_open(path, &g, err);
    if (rc) return rc;
    size_t cap = 4096 + (size_t)g->n_kv * 1024 + (size_t)g->n_tensors * 160;
    char *text = malloc(cap);
    if (!text) { gguf_close(g); return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); }
    sbuf b = {text, 0, cap};
    text[0] = 0;
    uint64_t data_bytes = 0;
    for (int i = 0; i < g->n_tensors; i++) data_bytes += g->tensors[i].nbytes;
    put(&b, "file: %s\nformat: GGUF v%u, alignment %llu, %d metadata keys, %d tensors (%.1f MB of tensor data from offset %zu)\n",
        path, g->version, (unsigned long long)g->alignment, g->n_kv, g->n_tensors, data_bytes / 1e6, g->data_start);
    put(&b, "metadata:\n");
    char val[800];
    for (int i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        char kt[160];
        key_text((const uint8_t *)kv->key, kv->key_len, kt, sizeof kt);
        gguf_format_value(g, i, val, sizeof val, max_items);
        if (kv->type == GGUF_ARRAY)
            put(&b, "  %-44s array[%s; %llu] %s\n", kt, gguf_vtype_name(kv->arr_type), (unsigned long long)kv->arr_n, val);
        else
            put(&b, "  %-44s %-7s %s\n", kt, gguf_vtype_name(kv->type), val);
    }
    put(&b, "tensors:\n");
    for (int i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        put(&b, "  %-44s %-5s [", t->name, ggml_traits(t->type)->name);
        for (int d = 0; d < t->n_dims; d++) put(&b, d ? ", %lld" : "%lld", (long long)t->ne[d]);
        put(&b, "] offset %llu, %zu bytes\n", (unsigned long long)t->offset, t->nbytes);
    }
    gguf_close(g);
    *out = text;
    return PEFTC_OK;
}
