/* gguf.h: a read-only view of a GGUF file (llama.cpp's model format), v2
 * and v3, memory-mapped. Every count, length, string and offset is checked
 * against the file when it is opened, before anything is allocated from it:
 * a later accessor never reads outside the mapping.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv;
 * n_kv (key string, u32 value type, value); n_tensors (name string, u32
 * n_dims, n_dims x u64 ne, u32 ggml type, u64 offset); padding to
 * general.alignment (default 32); the tensor data, each tensor at its offset
 * from there. A string is u64 length + bytes (no NUL); an array is u32 element
 * type + u64 count + elements (arrays may nest). */
#ifndef PEFTC_GGUF_H
#define PEFTC_GGUF_H

#include "core/core.h"
#include "io/ggml_types.h"

typedef enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4, GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT
} gguf_vtype;

const char *gguf_vtype_name(uint32_t t);

typedef struct gguf_kv {
    const char *key;        /* into the mapping, key_len bytes, not NUL-terminated */
    size_t key_len;
    uint32_t type;          /* gguf_vtype */
    const uint8_t *value;   /* the value's bytes in the mapping */
    size_t value_bytes;
    /* arrays (type GGUF_ARRAY) */
    uint32_t arr_type;
    uint64_t arr_n;
    const uint8_t **arr_str;   /* string arrays: element j starts at arr_str[j] (u64 length, bytes) */
} gguf_kv;

typedef struct gguf_tensor {
    const char *name;       /* NUL-terminated copy */
    int n_dims;
    int64_t ne[4];          /* ne[0] is the contiguous dimension (ggml order) */
    uint32_t type;          /* ggml_type */
    uint64_t offset;        /* from the data section */
    size_t nbytes;
    const void *data;
} gguf_tensor;

typedef struct gguf_file {
    char *path;
    const uint8_t *map;
    size_t size;
    uint32_t version;
    uint64_t alignment;
    size_t data_start;
    gguf_kv *kv;
    int n_kv;
    gguf_tensor *tensors;
    int n_tensors;
} gguf_file;

/* 1 if the file at path starts with the GGUF magic. */
int gguf_is_gguf(const char *path);
peftc_status gguf_open(const char *path, gguf_file **out, peftc_error *err);
void gguf_close(gguf_file *g);

/* Index of key, or -1. */
int gguf_find(const gguf_file *g, const char *key);
/* Typed getters by key; 0 if absent, 1 if found and converted, -1 if
 * present with a type that does not convert (any integer type converts to
 * int64 if in range; float32/64 to double; bool to int). */
int gguf_get_int(const gguf_file *g, const char *key, int64_t *out);
int gguf_get_float(const gguf_file *g, const char *key, double *out);
int gguf_get_bool(const gguf_file *g, const char *key, int *out);
/* A string value: pointer into the mapping and its length. */
int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len);
/* Element j of a string array (kv index i). */
void gguf_arr_str(const gguf_file *g, int i, uint64_t j, const char **s, size_t *len);
/* Pointer to the raw elements of a numeric array (little-endian), or NULL. */
const void *gguf_arr_data(const gguf_file *g, int i);

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);

/* The value of kv i as text (arrays abbreviated to max_items elements). */
void gguf_format_value(const gguf_file *g, int i, char *out, size_t cap, int max_items);

#endif
