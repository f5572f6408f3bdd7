/* gguf.h: internal read-only view of a memory-mapped GGUF file (v2, v3).
 * Every count, length, offset and shape is checked against the file size when
 * opened, before anything is allocated from it; after a successful open every
 * accessor is O(1) (or O(log n) for lookups by name) and cannot fail on
 * bounds. Strings point into the mapping and are NOT NUL-terminated, except
 * key and tensor names, which are copied (NUL-terminated) at open. */
#ifndef PEFTC_GGUF_H
#define PEFTC_GGUF_H

#include "core/core.h"
#include "io/ggml_types.h"

typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12, GGUF_TYPE_COUNT
} gguf_type;

#define GGUF_MAX_DIMS 4
#define GGUF_MAX_DEPTH 8          /* nesting of arrays of arrays */
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct gguf_tensor {
    const char *name;       /* NUL-terminated copy */
    size_t name_len;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];  /* ggml order: ne[0] is the contiguous dimension; unused = 1 */
    uint32_t type;          /* ggml_type id */
    uint64_t offset;        /* relative to the data section */
    size_t nbytes;
    const void *data;       /* into the mapping */
} gguf_tensor;

typedef struct gguf_file gguf_file;

peftc_status gguf_open(const char *path, gguf_file **out, peftc_error *err);
/* The same over len bytes at buf (borrowed: buf must outlive the view);
 * name stands for the path in messages. The fuzz targets' entry. */
peftc_status gguf_open_mem(const void *buf, size_t len, const char *name, gguf_file **out, peftc_error *err);
void gguf_close(gguf_file *g);

const char *gguf_path(const gguf_file *g);
uint32_t gguf_version(const gguf_file *g);
uint32_t gguf_alignment(const gguf_file *g);
uint64_t gguf_data_offset(const gguf_file *g);   /* start of the data section in the file */
int gguf_kv_count(const gguf_file *g);

/* Index of a key, or -1. */
int gguf_find_key(const gguf_file *g, const char *key);
const char *gguf_key(const gguf_file *g, int i);          /* NUL-terminated */
gguf_type gguf_kv_type(const gguf_file *g, int i);
const char *gguf_type_name(gguf_type t);                  /* "uint8" ... "float64", "?" */

/* Typed getters by key: 1 = found and converted, 0 = absent, -1 = present but
 * of another type (or an integer out of int64 range). get_int accepts any
 * integer type; get_float any integer or float type. */
int gguf_get_int(const gguf_file *g, const char *key, int64_t *out);
int gguf_get_float(const gguf_file *g, const char *key, double *out);
int gguf_get_bool(const gguf_file *g, const char *key, int *out);
int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len);
/* Copies (s, len) into out as a NUL-terminated string of at most cap - 1
 * bytes; returns 1 if it fit, 0 if truncated. */
int gguf_str_copy(const char *s, size_t len, char *out, size_t cap);

/* Arrays (by kv index). arr_type: the element type, or -1 if kv i is not an
 * array. arr_str: element j of a string array in O(1) (1, or 0 if not a string
 * array or j out of range). arr_data: the raw little-endian elements of an
 * array of a numeric or bool type (NULL for strings and arrays of arrays). */
int gguf_arr_type(const gguf_file *g, int i);
uint64_t gguf_arr_len(const gguf_file *g, int i);
int gguf_arr_str(const gguf_file *g, int i, uint64_t j, const char **s, size_t *len);
const void *gguf_arr_data(const gguf_file *g, int i);

/* Writes kv i's value as text like snprintf (returns the length the whole text
 * needs): numbers in decimal (float32 %.9g, float64 %.17g), bool true/false,
 * strings single-quoted with \\ \' \n \t \r and \xNN escapes for other control
 * bytes, arrays "[a, b]"; an array longer than max_items (>= 0) is abbreviated
 * "[N items: a, b, ...]" (max_items < 0: every item). */
size_t gguf_format_value(const gguf_file *g, int i, char *out, size_t cap, int max_items);

int gguf_tensor_count(const gguf_file *g);
const gguf_tensor *gguf_tensor_at(const gguf_file *g, int i);
const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);
/* Elements of a tensor (product of ne). */
int64_t gguf_tensor_numel(const gguf_tensor *t);
/* PEFTC_ERR_UNSUPPORTED naming the tensor and its type if peftc cannot
 * compute with the tensor's type (the bytes are still readable). */
peftc_status gguf_tensor_check_type(const gguf_file *g, const gguf_tensor *t, peftc_error *err);

#endif
