/* gguf.c: mmap reader of GGUF v2/v3 files. The header is walked once with a
 * cursor that checks each read against the file size; counts and lengths are
 * compared with the bytes left (divided by the smallest possible entry) before
 * anything is allocated from them, so a hostile header cannot make us allocate
 * or loop more than the file's size allows. */
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Keys longer than this are not metadata names (the spec caps them at 65535). */
#define GGUF_MAX_KEY 65535u
/* Smallest encodings: a kv is a key (8-byte length + >= 1 byte), a type and a
 * 1-byte value; a tensor info is a name, n_dims, type and offset. */
#define GGUF_MIN_KV 13u
#define GGUF_MIN_TENSOR 25u

typedef struct gguf_kv {
    const char *key;
    uint32_t type;
    size_t pos;            /* value's offset in the file */
    uint32_t arr_type;
    uint64_t arr_len;
    size_t arr_pos;        /* first element's offset */
    size_t *str_pos;       /* string arrays: each element's length field */
} gguf_kv;

struct gguf_file {
    char *path;
    const uint8_t *map;
    size_t size;
    uint32_t version, alignment;
    uint64_t data_start;
    int n_kv, n_tensors;
    gguf_kv *kv;
    int *kv_sorted;        /* kv indices sorted by key */
    gguf_tensor *t;
    int *t_sorted;
    int borrowed;          /* map is a caller's buffer (gguf_open_mem) */
};

static const size_t scalar_size[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = 1, [GGUF_TYPE_INT8] = 1, [GGUF_TYPE_UINT16] = 2, [GGUF_TYPE_INT16] = 2,
    [GGUF_TYPE_UINT32] = 4, [GGUF_TYPE_INT32] = 4, [GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1,
    [GGUF_TYPE_UINT64] = 8, [GGUF_TYPE_INT64] = 8, [GGUF_TYPE_FLOAT64] = 8,
};

const char *gguf_type_name(gguf_type t)
{
    static const char *names[GGUF_TYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
        "string", "array", "uint64", "int64", "float64"};
    return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "?";
}

/* ------------------------------------------------------------ the cursor */
typedef struct cursor {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
    peftc_error *err;
} cursor;

static size_t left(const cursor *c) { return c->size - c->pos; }

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static peftc_status truncated(cursor *c, const char *what)
{
    return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: truncated: the file ends (%zu bytes) inside %s at byte %zu",
                      c->path, c->size, what, c->pos);
}

static peftc_status rd32(cursor *c, const char *what, uint32_t *v)
{
    if (left(c) < 4) return truncated(c, what);
    *v = le32(c->p + c->pos);
    c->pos += 4;
    return PEFTC_OK;
}

static peftc_status rd64(cursor *c, const char *what, uint64_t *v)
{
    if (left(c) < 8) return truncated(c, what);
    *v = le64(c->p + c->pos);
    c->pos += 8;
    return PEFTC_OK;
}

/* A length-prefixed string; (s, len) point into the file. */
static peftc_status rdstr(cursor *c, const char *what, const char **s, uint64_t *len)
{
    peftc_status rc = rd64(c, what, len);
    if (rc) return rc;
    if (*len > left(c))
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: truncated or corrupt: %s at byte %zu has length %" PRIu64 " but only %zu bytes follow",
                          c->path, what, c->pos - 8, *len, left(c));
    *s = (const char *)c->p + c->pos;
    c->pos += (size_t)*len;
    return PEFTC_OK;
}

/* Checks a value of type `type` at the cursor and steps over it. Every loop
 * iteration consumes at least 8 bytes, so the work is bounded by the file. */
static peftc_status skip_value(cursor *c, uint32_t type, int depth, const char *key)
{
    if (type >= GGUF_TYPE_COUNT)
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s' has unknown value type %u", c->path, key, type);
    if (type == GGUF_TYPE_STRING) {
        const char *s;
        uint64_t n;
        return rdstr(c, "a string value", &s, &n);
    }
    if (type != GGUF_TYPE_ARRAY) {
        if (left(c) < scalar_size[type]) return truncated(c, "a value");
        c->pos += scalar_size[type];
        return PEFTC_OK;
    }
    if (depth >= GGUF_MAX_DEPTH)
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s' nests arrays deeper than %d levels", c->path, key, GGUF_MAX_DEPTH);
    uint32_t et;
    uint64_t n;
    peftc_status rc;
    if ((rc = rd32(c, "an array's element type", &et)) || (rc = rd64(c, "an array's length", &n))) return rc;
    if (et >= GGUF_TYPE_COUNT)
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: key '%s' is an array of unknown value type %u", c->path, key, et);
    size_t min = et == GGUF_TYPE_STRING ? 8 : et == GGUF_TYPE_ARRAY ? 12 : scalar_size[et];
    if (n > left(c) / min)
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: truncated or corrupt: key '%s': array of %" PRIu64 " %s items cannot fit in the %zu bytes left",
                          c->path, key, n, gguf_type_name(et), left(c));
    if (et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY) {
        c->pos += (size_t)n * min;
        return PEFTC_OK;
    }
    for (uint64_t j = 0; j < n; j++)
        if ((rc = skip_value(c, et, depth + 1, key))) return rc;
    return PEFTC_OK;
}

/* ------------------------------------------------------------ open/close */
void gguf_close(gguf_file *g)
{
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) { free((char *)g->kv[i].key); free(g->kv[i].str_pos); }
    free(g->kv);
    free(g->kv_sorted);
    for (int i = 0; i < g->n_tensors; i++) free((char *)g->t[i].name);
    free(g->t);
    free(g->t_sorted);
    if (g->map && !g->borrowed) munmap((void *)g->map, g->size);
    free(g->path);
    free(g);
}

static int cmp_kv(const void *a, const void *b, void *ctx)
{
    const gguf_file *g = ctx;
    return strcmp(g->kv[*(const int *)a].key, g->kv[*(const int *)b].key);
}
static int cmp_t(const void *a, const void *b, void *ctx)
{
    const gguf_file *g = ctx;
    return strcmp(g->t[*(const int *)a].name, g->t[*(const int *)b].name);
}

/* A NUL-terminated copy of a name; names with a NUL byte inside are refused
 * because lookups by C string could never find them. */
static peftc_status copy_name(cursor *c, const char *what, const char *s, uint64_t len, const char **out)
{
    if (len == 0) return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: empty %s at byte %zu", c->path, what, c->pos - 8);
    if (memchr(s, 0, (size_t)len))
        return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: %s at byte %zu contains a NUL byte", c->path, what, c->pos - (size_t)len - 8);
    char *d = malloc((size_t)len + 1);
    if (!d) return peftc_fail(c->err, PEFTC_ERR_NOMEM, "%s: out of memory", c->path);
    memcpy(d, s, (size_t)len);
    d[len] = 0;
    *out = d;
    return PEFTC_OK;
}

static peftc_status parse_kvs(gguf_file *g, cursor *c, uint64_t n_kv)
{
    peftc_status rc;
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    if (!g->kv) return peftc_fail(c->err, PEFTC_ERR_NOMEM, "%s: out of memory", c->path);
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *s;
        uint64_t len;
        if ((rc = rdstr(c, "a metadata key", &s, &len))) return rc;
        if (len > GGUF_MAX_KEY)
            return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: metadata key at byte %zu is %" PRIu64 " bytes long (max %u)",
                              c->path, c->pos - (size_t)len - 8, len, GGUF_MAX_KEY);
        gguf_kv *kv = &g->kv[i];
        if ((rc = copy_name(c, "metadata key", s, len, &kv->key))) return rc;
        g->n_kv = (int)i + 1;
        if ((rc = rd32(c, "a metadata value type", &kv->type))) return rc;
        kv->pos = c->pos;
        if ((rc = skip_value(c, kv->type, 0, kv->key))) return rc;
        if (kv->type != GGUF_TYPE_ARRAY) continue;
        kv->arr_type = le32(g->map + kv->pos);
        kv->arr_len = le64(g->map + kv->pos + 4);
        kv->arr_pos = kv->pos + 12;
        if (kv->arr_type != GGUF_TYPE_STRING) continue;
        /* the array was checked: arr_len * 8 bytes fit in the file */
        kv->str_pos = malloc((kv->arr_len ? kv->arr_len : 1) * sizeof *kv->str_pos);
        if (!kv->str_pos) return peftc_fail(c->err, PEFTC_ERR_NOMEM, "%s: out of memory", c->path);
        size_t p = kv->arr_pos;
        for (uint64_t j = 0; j < kv->arr_len; j++) { kv->str_pos[j] = p; p += 8 + (size_t)le64(g->map + p); }
    }
    return PEFTC_OK;
}

static peftc_status parse_tensors(gguf_file *g, cursor *c, uint64_t n_t)
{
    peftc_status rc;
    g->t = calloc(n_t ? n_t : 1, sizeof *g->t);
    if (!g->t) return peftc_fail(c->err, PEFTC_ERR_NOMEM, "%s: out of memory", c->path);
    for (uint64_t i = 0; i < n_t; i++) {
        gguf_tensor *t = &g->t[i];
        const char *s;
        uint64_t len;
        if ((rc = rdstr(c, "a tensor name", &s, &len))) return rc;
        if ((rc = copy_name(c, "tensor name", s, len, &t->name))) return rc;
        t->name_len = (size_t)len;
        g->n_tensors = (int)i + 1;
        uint32_t nd;
        if ((rc = rd32(c, "a tensor's n_dims", &nd))) return rc;
        if (nd > GGUF_MAX_DIMS)
            return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (max %d)", c->path, t->name, nd, GGUF_MAX_DIMS);
        t->n_dims = (int)nd;
        int64_t numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            uint64_t v = 1;
            if (d < t->n_dims && (rc = rd64(c, "a tensor's shape", &v))) return rc;
            if (v > INT64_MAX || __builtin_mul_overflow(numel, (int64_t)v, &numel))
                return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has an invalid shape (dimension %d is %" PRId64 ")",
                                  c->path, t->name, d, (int64_t)v);
            t->ne[d] = (int64_t)v;
        }
        if ((rc = rd32(c, "a tensor's type", &t->type)) || (rc = rd64(c, "a tensor's offset", &t->offset))) return rc;
        const ggml_type_traits *tr = ggml_traits(t->type);
        if (!tr)
            return peftc_fail(c->err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown type id %u", c->path, t->name, t->type);
        if (t->ne[0] % tr->block)
            return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: tensor '%s': ne[0] = %" PRId64 " is not a multiple of %s's block of %d",
                              c->path, t->name, t->ne[0], tr->name, tr->block);
        uint64_t nb;
        if (__builtin_mul_overflow((uint64_t)(numel / tr->block), (uint64_t)tr->bytes, &nb))
            return peftc_fail(c->err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is too large", c->path, t->name);
        t->nbytes = (size_t)nb;
    }
    return PEFTC_OK;
}

static peftc_status check_unique(gguf_file *g, peftc_error *err)
{
    g->kv_sorted = malloc((g->n_kv ? g->n_kv : 1) * sizeof(int));
    g->t_sorted = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof(int));
    if (!g->kv_sorted || !g->t_sorted) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", g->path);
    for (int i = 0; i < g->n_kv; i++) g->kv_sorted[i] = i;
    for (int i = 0; i < g->n_tensors; i++) g->t_sorted[i] = i;
    /* qsort_r (glibc): a context argument keeps gguf_open thread-safe */
    qsort_r(g->kv_sorted, (size_t)g->n_kv, sizeof(int), cmp_kv, g);
    qsort_r(g->t_sorted, (size_t)g->n_tensors, sizeof(int), cmp_t, g);
    for (int i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv[g->kv_sorted[i]].key, g->kv[g->kv_sorted[i - 1]].key))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: duplicate metadata key '%s'", g->path, g->kv[g->kv_sorted[i]].key);
    for (int i = 1; i < g->n_tensors; i++)
        if (!strcmp(g->t[g->t_sorted[i]].name, g->t[g->t_sorted[i - 1]].name))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: duplicate tensor name '%s'", g->path, g->t[g->t_sorted[i]].name);
    return PEFTC_OK;
}

static peftc_status parse(gguf_file *g, peftc_error *err)
{
    cursor c = {g->map, g->size, 0, g->path, err};
    peftc_status rc;
    uint32_t magic;
    if ((rc = rd32(&c, "the magic", &magic))) return rc;
    if (memcmp(g->map, "GGUF", 4))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a GGUF file (the magic is not 'GGUF')", g->path);
    if ((rc = rd32(&c, "the version", &g->version))) return rc;
    if (g->version == 1)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (only v2 and v3; re-convert the model)", g->path);
    if ((g->version & 0xffff) == 0 && g->version)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: big-endian GGUF is not supported", g->path);
    if (g->version != 2 && g->version != 3)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (only v2 and v3)", g->path, g->version);
    uint64_t n_t, n_kv;
    if ((rc = rd64(&c, "the tensor count", &n_t)) || (rc = rd64(&c, "the metadata count", &n_kv))) return rc;
    if (n_kv > left(&c) / GGUF_MIN_KV || n_kv > INT32_MAX)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated or corrupt: %" PRIu64 " metadata entries cannot fit in the file's %zu bytes", g->path, n_kv, g->size);
    if (n_t > (left(&c) - n_kv * GGUF_MIN_KV) / GGUF_MIN_TENSOR || n_t > INT32_MAX)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated or corrupt: %" PRIu64 " tensors cannot fit in the file's %zu bytes", g->path, n_t, g->size);
    if ((rc = parse_kvs(g, &c, n_kv))) return rc;

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (int i = 0; i < g->n_kv; i++) {
        if (strcmp(g->kv[i].key, "general.alignment")) continue;
        const gguf_kv *kv = &g->kv[i];
        uint64_t a = kv->type == GGUF_TYPE_UINT32 ? le32(g->map + kv->pos)
                   : kv->type == GGUF_TYPE_UINT64 ? le64(g->map + kv->pos) : 0;
        if (kv->type != GGUF_TYPE_UINT32 && kv->type != GGUF_TYPE_UINT64)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: general.alignment is a %s, not an unsigned integer", g->path, gguf_type_name(kv->type));
        if (a == 0 || (a & (a - 1)) || a > (1u << 30))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: general.alignment = %" PRIu64 " is not a power of two", g->path, a);
        g->alignment = (uint32_t)a;
    }
    if ((rc = parse_tensors(g, &c, n_t))) return rc;
    if ((rc = check_unique(g, err))) return rc;
    /* the data section starts at the next multiple of the alignment */
    g->data_start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors && g->data_start > g->size)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated: the data section would start at byte %" PRIu64 ", past the end (%zu bytes)",
                          g->path, g->data_start, g->size);
    for (int i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->t[i];
        if (t->offset % g->alignment)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' offset %" PRIu64 " is not a multiple of the alignment %u",
                              g->path, t->name, t->offset, g->alignment);
        size_t room = g->size - (size_t)g->data_start;
        if (t->offset > room || t->nbytes > room - t->offset)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated or corrupt: tensor '%s' bytes [%" PRIu64 ", +%zu) lie outside the data section (%zu bytes)",
                              g->path, t->name, t->offset, t->nbytes, room);
        t->data = g->map + g->data_start + t->offset;
    }
    return PEFTC_OK;
}

peftc_status gguf_open(const char *path, gguf_file **out, peftc_error *err)
{
    *out = NULL;
    gguf_file *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
    }
    int fd;
    peftc_status orc = peftc_open_regular(path, &fd, NULL, err);
    if (orc) {
        peftc_status rc = orc;
        gguf_close(g);
        return rc;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        gguf_close(g);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: not a regular file", path);
    }
    g->size = (size_t)sb.st_size;
    if (g->size < 24) {
        /* still say why precisely: wrong magic beats "too short" */
        unsigned char head[4] = {0};
        ssize_t n = pread(fd, head, sizeof head, 0);
        close(fd);
        peftc_status rc = (n == 4 && memcmp(head, "GGUF", 4))
             ? peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a GGUF file (the magic is not 'GGUF')", path)
             : peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated: %zu bytes is too short for a GGUF header", path, g->size);
        gguf_close(g);
        return rc;
    }
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        peftc_status rc = peftc_fail(err, PEFTC_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        gguf_close(g);
        return rc;
    }
    g->map = m;
    peftc_status rc = parse(g, err);
    if (rc) { gguf_close(g); return rc; }
    *out = g;
    return PEFTC_OK;
}

peftc_status gguf_open_mem(const void *buf, size_t len, const char *name, gguf_file **out, peftc_error *err)
{
    *out = NULL;
    gguf_file *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", name);
    }
    g->map = buf;
    g->size = len;
    g->borrowed = 1;
    peftc_status rc = len < 24 ? (len >= 4 && memcmp(buf, "GGUF", 4)
                                      ? peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a GGUF file (the magic is not 'GGUF')", name)
                                      : peftc_fail(err, PEFTC_ERR_FORMAT, "%s: truncated: %zu bytes is too short for a GGUF header", name, len))
                               : parse(g, err);
    if (rc) { gguf_close(g); return rc; }
    *out = g;
    return PEFTC_OK;
}

/* ------------------------------------------------------------ accessors */
const char *gguf_path(const gguf_file *g) { return g->path; }
uint32_t gguf_version(const gguf_file *g) { return g->version; }
uint32_t gguf_alignment(const gguf_file *g) { return g->alignment; }
uint64_t gguf_data_offset(const gguf_file *g) { return g->data_start; }
int gguf_kv_count(const gguf_file *g) { return g->n_kv; }
int gguf_tensor_count(const gguf_file *g) { return g->n_tensors; }
const char *gguf_key(const gguf_file *g, int i) { return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL; }
gguf_type gguf_kv_type(const gguf_file *g, int i) { return i >= 0 && i < g->n_kv ? (gguf_type)g->kv[i].type : GGUF_TYPE_COUNT; }

int gguf_find_key(const gguf_file *g, const char *key)
{
    int lo = 0, hi = g->n_kv - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(g->kv[g->kv_sorted[mid]].key, key);
        if (!c) return g->kv_sorted[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *g, int i) { return i >= 0 && i < g->n_tensors ? &g->t[i] : NULL; }

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name)
{
    int lo = 0, hi = g->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(g->t[g->t_sorted[mid]].name, name);
        if (!c) return &g->t[g->t_sorted[mid]];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

int64_t gguf_tensor_numel(const gguf_tensor *t)
{
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];   /* checked at open */
}

peftc_status gguf_tensor_check_type(const gguf_file *g, const gguf_tensor *t, peftc_error *err)
{
    const ggml_type_traits *tr = ggml_traits(t->type);
    if (!tr || !tr->supported)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s (id %u), which peftc cannot compute with",
                          g->path, t->name, tr ? tr->name : "?", t->type);
    return PEFTC_OK;
}

/* integer scalar at p of type t; 0 if t is not an integer type */
static int read_int(const uint8_t *p, uint32_t t, int64_t *v, int *big)
{
    *big = 0;
    switch (t) {
    case GGUF_TYPE_UINT8: *v = p[0]; return 1;
    case GGUF_TYPE_INT8: *v = (int8_t)p[0]; return 1;
    case GGUF_TYPE_UINT16: *v = (uint16_t)(p[0] | p[1] << 8); return 1;
    case GGUF_TYPE_INT16: *v = (int16_t)(uint16_t)(p[0] | p[1] << 8); return 1;
    case GGUF_TYPE_UINT32: *v = le32(p); return 1;
    case GGUF_TYPE_INT32: *v = (int32_t)le32(p); return 1;
    case GGUF_TYPE_UINT64: { uint64_t u = le64(p); *big = u > INT64_MAX; *v = (int64_t)u; return 1; }
    case GGUF_TYPE_INT64: *v = (int64_t)le64(p); return 1;
    default: return 0;
    }
}

int gguf_get_int(const gguf_file *g, const char *key, int64_t *out)
{
    int i = gguf_find_key(g, key), big;
    if (i < 0) return 0;
    int64_t v;
    if (!read_int(g->map + g->kv[i].pos, g->kv[i].type, &v, &big) || big) return -1;
    *out = v;
    return 1;
}

int gguf_get_float(const gguf_file *g, const char *key, double *out)
{
    int i = gguf_find_key(g, key), big;
    if (i < 0) return 0;
    const uint8_t *p = g->map + g->kv[i].pos;
    int64_t v;
    if (g->kv[i].type == GGUF_TYPE_FLOAT32) { uint32_t u = le32(p); float f; memcpy(&f, &u, 4); *out = f; return 1; }
    if (g->kv[i].type == GGUF_TYPE_FLOAT64) { uint64_t u = le64(p); memcpy(out, &u, 8); return 1; }
    if (!read_int(p, g->kv[i].type, &v, &big)) return -1;
    *out = big ? (double)(uint64_t)v : (double)v;
    return 1;
}

int gguf_get_bool(const gguf_file *g, const char *key, int *out)
{
    int i = gguf_find_key(g, key);
    if (i < 0) return 0;
    if (g->kv[i].type != GGUF_TYPE_BOOL) return -1;
    *out = g->map[g->kv[i].pos] != 0;
    return 1;
}

int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len)
{
    int i = gguf_find_key(g, key);
    if (i < 0) return 0;
    if (g->kv[i].type != GGUF_TYPE_STRING) return -1;
    *len = (size_t)le64(g->map + g->kv[i].pos);
    *s = (const char *)g->map + g->kv[i].pos + 8;
    return 1;
}

int gguf_str_copy(const char *s, size_t len, char *out, size_t cap)
{
    if (!cap) return 0;
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(out, s, n);
    out[n] = 0;
    return n == len;
}

int gguf_arr_type(const gguf_file *g, int i)
{
    return i >= 0 && i < g->n_kv && g->kv[i].type == GGUF_TYPE_ARRAY ? (int)g->kv[i].arr_type : -1;
}

uint64_t gguf_arr_len(const gguf_file *g, int i)
{
    return gguf_arr_type(g, i) >= 0 ? g->kv[i].arr_len : 0;
}

int gguf_arr_str(const gguf_file *g, int i, uint64_t j, const char **s, size_t *len)
{
    if (gguf_arr_type(g, i) != GGUF_TYPE_STRING || j >= g->kv[i].arr_len) return 0;
    size_t p = g->kv[i].str_pos[j];
    *len = (size_t)le64(g->map + p);
    *s = (const char *)g->map + p + 8;
    return 1;
}

const void *gguf_arr_data(const gguf_file *g, int i)
{
    int t = gguf_arr_type(g, i);
    if (t < 0 || t == GGUF_TYPE_STRING || t == GGUF_TYPE_ARRAY) return NULL;
    return g->map + g->kv[i].arr_pos;
}

/* ------------------------------------------------------------ formatting */
typedef struct sbuf { char *out; size_t cap, n; } sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++, b->n++)
        if (b->n + 1 < b->cap) b->out[b->n] = s[i];
}

static void putf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(sbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void put_str(sbuf *b, const uint8_t *s, size_t n)
{
    put(b, "'", 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = s[i];
        if (ch == '\\') put(b, "\\\\", 2);
        else if (ch == '\'') put(b, "\\'", 2);
        else if (ch == '\n') put(b, "\\n", 2);
        else if (ch == '\t') put(b, "\\t", 2);
        else if (ch == '\r') put(b, "\\r", 2);
        else if (ch < 0x20 || ch == 0x7f) putf(b, "\\x%02x", ch);
        else put(b, (const char *)&ch, 1);
    }
    put(b, "'", 1);
}

/* Formats the value of type t at file offset p (already validated at open);
 * returns the offset just past it. */
static size_t fmt_value(const gguf_file *g, sbuf *b, size_t p, uint32_t t, int max_items)
{
    const uint8_t *q = g->map + p;
    int64_t v;
    int big;
    if (read_int(q, t, &v, &big)) {
        if (big) putf(b, "%" PRIu64, (uint64_t)v); else putf(b, "%" PRId64, v);
        return p + scalar_size[t];
    }
    switch (t) {
    case GGUF_TYPE_FLOAT32: { uint32_t u = le32(q); float f; memcpy(&f, &u, 4); putf(b, "%.9g", (double)f); return p + 4; }
    case GGUF_TYPE_FLOAT64: { uint64_t u = le64(q); double d; memcpy(&d, &u, 8); putf(b, "%.17g", d); return p + 8; }
    case GGUF_TYPE_BOOL: put(b, q[0] ? "true" : "false", q[0] ? 4 : 5); return p + 1;
    case GGUF_TYPE_STRING: { size_t n = (size_t)le64(q); put_str(b, q + 8, n); return p + 8 + n; }
    default: break;
    }
    /* array */
    uint32_t et = le32(q);
    uint64_t n = le64(q + 4);
    p += 12;
    uint64_t shown = max_items >= 0 && n > (uint64_t)max_items ? (uint64_t)max_items : n;
    put(b, "[", 1);
    if (shown < n) putf(b, "%" PRIu64 " items: ", n);
    for (uint64_t j = 0; j < shown; j++) {
        if (j) put(b, ", ", 2);
        p = fmt_value(g, b, p, et, max_items);
    }
    if (shown < n) {
        put(b, shown ? ", ...]" : "...]", shown ? 6 : 4);
        /* step over the rest so an enclosing array can go on */
        if (et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY) return p + (size_t)(n - shown) * scalar_size[et];
        sbuf none = {NULL, 0, 0};
        for (uint64_t j = shown; j < n; j++) p = fmt_value(g, &none, p, et, 0);
        return p;
    }
    put(b, "]", 1);
    return p;
}

size_t gguf_format_value(const gguf_file *g, int i, char *out, size_t cap, int max_items)
{
    sbuf b = {out, cap, 0};
    if (i >= 0 && i < g->n_kv) fmt_value(g, &b, g->kv[i].pos, g->kv[i].type, max_items);
    if (cap) out[b.n < cap ? b.n : cap - 1] = 0;
    return b.n;
}
