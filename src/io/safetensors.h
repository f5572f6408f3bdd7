/* safetensors.h: internal view of a memory-mapped .safetensors file and a writer. */
#ifndef PEFTC_SAFETENSORS_H
#define PEFTC_SAFETENSORS_H

#include "core/core.h"

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[8];
    int64_t numel;
    size_t nbytes;
    const void *data;   /* points into the mapping */
} st_tensor;

struct peftc_safetensors {
    char *path;
    void *map;
    size_t size;
    int n;
    st_tensor *t;       /* sorted by name for lookup */
    char **meta;        /* __metadata__ key, value pairs (strings) */
    int n_meta;
    int borrowed;       /* map is a caller's buffer (st_open_mem), not unmapped */
};

/* The same view over len bytes at buf (not copied: buf must outlive the
 * view); name stands for the path in messages. The fuzz targets' entry. */
peftc_status st_open_mem(const void *buf, size_t len, const char *name, peftc_safetensors **out, peftc_error *err);

size_t st_dtype_size(st_dtype d);
const char *st_dtype_name(st_dtype d);
const st_tensor *st_find(const peftc_safetensors *st, const char *name);

/* Drops the pages wholly inside [p, p + bytes) from the process's resident
 * set if they lie in st's (read-only) mapping: for weights that were copied
 * (packed to bf16, say) and will not be read again soon. A later read maps
 * them again from the page cache. No-op outside the mapping. */
void st_release(const peftc_safetensors *st, const void *p, size_t bytes);

/* Copies/convert a tensor's elements to fp32 (F32, F16, BF16 sources). */
peftc_status st_to_f32(const peftc_safetensors *st, const st_tensor *t, float *dst, peftc_error *err);

/* Writer: tensors are fp32 arrays; written atomically (temp + fsync + rename)
 * with __metadata__ {"format": "pt"} as PyTorch/PEFT expect. */
typedef struct st_write_item {
    const char *name;
    int ndim;
    int64_t shape[8];
    const float *data;
} st_write_item;

/* meta: extra string key/values for __metadata__ (NULL-terminated pairs, may be NULL). */
peftc_status st_write_f32(const char *path, const st_write_item *items, int n, const char *const *meta, peftc_error *err);
/* Writer of tensors of any dtype (raw little-endian elements), in the order
 * given (put 4-byte types first so they stay aligned in the mapping);
 * atomically, __metadata__ as st_write_f32. */
typedef struct st_write_raw {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[8];
    const void *data;
} st_write_raw;
peftc_status st_write(const char *path, const st_write_raw *items, int n, const char *const *meta, peftc_error *err);
/* The string value of a __metadata__ key, or NULL. */
const char *st_metadata(const peftc_safetensors *st, const char *key);

#endif
