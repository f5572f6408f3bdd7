/* safetensors.c: mmap reader that checks every length, offset and shape
 * against the file before anything points into it; fp32 writer. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is not a model file but an attack or corruption. */
#define ST_MAX_HEADER (100u << 20)

static const struct { const char *name; st_dtype d; size_t size; } st_dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2}, {"I8", ST_I8, 1},
    {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};

size_t st_dtype_size(st_dtype d)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
        if (st_dtypes[i].d == d) return st_dtypes[i].size;
    return 0;
}

const char *st_dtype_name(st_dtype d)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
        if (st_dtypes[i].d == d) return st_dtypes[i].name;
    return "?";
}

static int st_parse_dtype(const char *s, st_dtype *d)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
        if (strcmp(st_dtypes[i].name, s) == 0) { *d = st_dtypes[i].d; return 1; }
    return 0;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct { size_t begin, end; int idx; } st_range;

static int cmp_by_begin(const void *a, const void *b)
{
    const st_range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

void peftc_safetensors_free(peftc_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->t);
    for (int i = 0; i < 2 * st->n_meta; i++) free(st->meta[i]);
    free(st->meta);
    if (st->map && st->map != MAP_FAILED && !st->borrowed) munmap(st->map, st->size);
    free(st->path);
    free(st);
}

static peftc_status parse_header(peftc_safetensors *st, const char *hdr, size_t hlen,
                                 const uint8_t *data, size_t data_size, peftc_error *err)
{
    const char *path = st->path;
    json_error_t jerr;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: header is not valid JSON (%s)", path, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    size_t cap = json_object_size(root);
    st->t = calloc(cap ? cap : 1, sizeof *st->t);
    st_range *ranges = calloc(cap ? cap : 1, sizeof *ranges);
    peftc_status rc = PEFTC_OK;
    if (!st->t || !ranges) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); goto out; }

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: __metadata__ is not an object", path); goto out; }
            const char *mk;
            json_t *mv;
            st->meta = calloc(2 * json_object_size(val) + 1, sizeof(char *));
            if (!st->meta) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); goto out; }
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) continue;
                st->meta[2 * st->n_meta] = strdup(mk);
                st->meta[2 * st->n_meta + 1] = strdup(json_string_value(mv));
                st->n_meta++;
            }
            continue;
        }
        if (!json_is_object(val)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' entry is not an object", path, key); goto out; }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets", path, key); goto out;
        }
        st_tensor *t = &st->t[st->n];
        if (!st_parse_dtype(json_string_value(jd), &t->dtype)) {
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown dtype '%s'", path, key, json_string_value(jd)); goto out;
        }
        size_t nd = json_array_size(js);
        if (nd > 8) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has %zu dimensions (max 8)", path, key, nd); goto out; }
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (size_t i = 0; i < nd; i++) {
            json_t *d = json_array_get(js, i);
            if (!json_is_integer(d) || json_integer_value(d) < 0) {
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has an invalid shape", path, key); goto out;
            }
            uint64_t v = (uint64_t)json_integer_value(d);
            if (v && numel > UINT64_MAX / 16 / v) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' shape overflows", path, key); goto out; }
            numel *= v;
            t->shape[i] = (int64_t)v;
        }
        json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
        if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
            json_integer_value(je) < json_integer_value(jb)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' has invalid data_offsets", path, key); goto out;
        }
        uint64_t b = (uint64_t)json_integer_value(jb), e = (uint64_t)json_integer_value(je);
        if (e > data_size) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' data [%llu, %llu) lies outside the file's %zu data bytes (truncated file?)",
                            path, key, (unsigned long long)b, (unsigned long long)e, data_size); goto out;
        }
        if (e - b != numel * st_dtype_size(t->dtype)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' holds %llu bytes but its shape and dtype need %llu",
                            path, key, (unsigned long long)(e - b), (unsigned long long)(numel * st_dtype_size(t->dtype))); goto out;
        }
        t->name = strdup(key);
        if (!t->name) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); goto out; }
        t->numel = (int64_t)numel;
        t->nbytes = (size_t)(e - b);
        t->data = data + b;
        ranges[st->n] = (st_range){(size_t)b, (size_t)e, st->n};
        st->n++;
    }
    /* Overlapping tensors would let a write through one alias another. */
    qsort(ranges, (size_t)st->n, sizeof *ranges, cmp_by_begin);
    for (int i = 1; i < st->n; i++) {
        if (ranges[i].begin < ranges[i - 1].end && ranges[i].end > ranges[i].begin) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path,
                            st->t[ranges[i - 1].idx].name, st->t[ranges[i].idx].name);
            goto out;
        }
    }
    qsort(st->t, (size_t)st->n, sizeof *st->t, cmp_by_name);
out:
    free(ranges);
    json_decref(root);
    return rc;
}

/* The 8-byte header length, the JSON header and the tensors' bounds of the
 * st->size bytes at st->map (a file's mapping or a caller's buffer). */
static peftc_status parse_file(peftc_safetensors *st, peftc_error *err)
{
    const char *path = st->path;
    const uint8_t *p = st->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > ST_MAX_HEADER || hlen > st->size - 8)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: header length %llu runs past the end of the %zu-byte file (truncated or not safetensors)",
                          path, (unsigned long long)hlen, st->size);
    return parse_header(st, (const char *)p + 8, (size_t)hlen, p + 8 + hlen, st->size - 8 - (size_t)hlen, err);
}

peftc_status peftc_safetensors_open(const char *path, peftc_safetensors **out, peftc_error *err)
{
    *out = NULL;
    peftc_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
    }
    int fd;
    peftc_status orc = peftc_open_regular(path, &fd, NULL, err);
    if (orc) {
        peftc_status rc = orc;
        peftc_safetensors_free(st);
        return rc;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        peftc_safetensors_free(st);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: not a regular file", path);
    }
    st->size = (size_t)sb.st_size;
    if (st->size < 8) {
        close(fd);
        peftc_safetensors_free(st);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", path, (size_t)sb.st_size);
    }
    st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        peftc_status rc = peftc_fail(err, PEFTC_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        peftc_safetensors_free(st);
        return rc;
    }
    peftc_status rc = parse_file(st, err);
    if (rc != PEFTC_OK) {
        peftc_safetensors_free(st);
        return rc;
    }
    *out = st;
    return PEFTC_OK;
}

peftc_status st_open_mem(const void *buf, size_t len, const char *name, peftc_safetensors **out, peftc_error *err)
{
    *out = NULL;
    peftc_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(name))) {
        free(st);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", name);
    }
    /* the caller's bytes, not a mapping: free must not unmap them */
    st->map = (void *)buf;
    st->size = len;
    st->borrowed = 1;
    peftc_status rc = len < 8 ? peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", name, len)
                              : parse_file(st, err);
    if (rc != PEFTC_OK) {
        peftc_safetensors_free(st);
        return rc;
    }
    *out = st;
    return PEFTC_OK;
}

int peftc_safetensors_count(const peftc_safetensors *st) { return st->n; }

void peftc_safetensors_info(const peftc_safetensors *st, int i, peftc_tensor_info *info)
{
    const st_tensor *t = &st->t[i];
    info->name = t->name;
    info->dtype = st_dtype_name(t->dtype);
    info->ndim = t->ndim;
    for (int d = 0; d < 8; d++) info->shape[d] = d < t->ndim ? t->shape[d] : 0;
    info->nbytes = t->nbytes;
}

const char *st_metadata(const peftc_safetensors *st, const char *key)
{
    for (int i = 0; i < st->n_meta; i++)
        if (st->meta[2 * i] && !strcmp(st->meta[2 * i], key)) return st->meta[2 * i + 1];
    return NULL;
}

const st_tensor *st_find(const peftc_safetensors *st, const char *name)
{
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(st->t[mid].name, name);
        if (c == 0) return &st->t[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

peftc_status st_to_f32(const peftc_safetensors *st, const st_tensor *t, float *dst, peftc_error *err)
{
    const uint8_t *src = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(dst, src, t->nbytes); return PEFTC_OK;
    case ST_F16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h; memcpy(&h, src + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        return PEFTC_OK;
    case ST_BF16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h; memcpy(&h, src + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return PEFTC_OK;
    default:
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16",
                          st->path, t->name, st_dtype_name(t->dtype));
    }
}

peftc_status st_write_f32(const char *path, const st_write_item *items, int n, const char *const *extra, peftc_error *err)
{
    st_write_raw *raw = calloc((size_t)(n > 0 ? n : 1), sizeof *raw);
    if (!raw) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        raw[i].name = items[i].name; raw[i].dtype = ST_F32; raw[i].ndim = items[i].ndim; raw[i].data = items[i].data;
        memcpy(raw[i].shape, items[i].shape, sizeof raw[i].shape);
    }
    peftc_status rc = st_write(path, raw, n, extra, err);
    free(raw);
    return rc;
}

peftc_status st_write(const char *path, const st_write_raw *items, int n, const char *const *extra, peftc_error *err)
{
    json_t *hdr = json_object();
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    for (int i = 0; extra && extra[i]; i += 2) json_object_set_new(meta, extra[i], json_string(extra[i + 1]));
    json_object_set_new(hdr, "__metadata__", meta);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < items[i].ndim; d++) {
            numel *= items[i].shape[d];
            json_array_append_new(shape, json_integer(items[i].shape[d]));
        }
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(items[i].dtype)));
        json_object_set_new(e, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += (size_t)numel * st_dtype_size(items[i].dtype);
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(hdr, items[i].name, e);
    }
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!js) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: cannot build the header", path);
    size_t hl = strlen(js), padded = (hl + 7) & ~(size_t)7; /* 8-byte aligned data */
    size_t total = 8 + padded + off;
    uint8_t *buf = malloc(total);
    if (!buf) { free(js); return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path); }
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, js, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    free(js);
    size_t pos = 8 + padded;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < items[i].ndim; d++) numel *= items[i].shape[d];
        size_t nb = (size_t)numel * st_dtype_size(items[i].dtype);
        memcpy(buf + pos, items[i].data, nb);
        pos += nb;
    }
    peftc_status rc = peftc_write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

void st_release(const peftc_safetensors *st, const void *p, size_t bytes)
{
    if (!st || !st->map || !p || st->borrowed) return;   /* a caller's buffer is not ours to drop */
    uintptr_t lo = (uintptr_t)st->map, hi = lo + st->size, a = (uintptr_t)p, b = a + bytes;
    if (a < lo || b > hi || b < a) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    a = (a + page - 1) / page * page;
    b = b / page * page;
    /* the mapping is PROT_READ + MAP_PRIVATE: no page holds changes to lose */
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}
