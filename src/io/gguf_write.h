/* gguf_write.h: a GGUF v3 writer (the format gguf.h reads and llama.cpp and
 * the `gguf` PyPI package load). Keys and tensors are collected in memory
 * (tensor data is borrowed, not copied: it must stay valid until the write),
 * then gguf_writer_write streams header, metadata, tensor infos and the
 * aligned data section to a temporary file that is fsync'ed and renamed over
 * the destination, so a reader never sees a half-written file.
 *
 * Every adder copies its key and string values and fails (PEFTC_ERR_INPUT)
 * on a duplicate key or tensor name, an empty name, more than GGUF_MAX_DIMS
 * dimensions, or a byte count that does not match the type and shape. */
#ifndef PEFTC_GGUF_WRITE_H
#define PEFTC_GGUF_WRITE_H

#include "core/core.h"
#include "io/gguf.h"

typedef struct gguf_writer gguf_writer;

peftc_status gguf_writer_new(gguf_writer **out, peftc_error *err);
void gguf_writer_free(gguf_writer *w);

/* Scalars of every GGUF type. */
peftc_status gguf_w_u8(gguf_writer *w, const char *key, uint8_t v, peftc_error *err);
peftc_status gguf_w_i8(gguf_writer *w, const char *key, int8_t v, peftc_error *err);
peftc_status gguf_w_u16(gguf_writer *w, const char *key, uint16_t v, peftc_error *err);
peftc_status gguf_w_i16(gguf_writer *w, const char *key, int16_t v, peftc_error *err);
peftc_status gguf_w_u32(gguf_writer *w, const char *key, uint32_t v, peftc_error *err);
peftc_status gguf_w_i32(gguf_writer *w, const char *key, int32_t v, peftc_error *err);
peftc_status gguf_w_u64(gguf_writer *w, const char *key, uint64_t v, peftc_error *err);
peftc_status gguf_w_i64(gguf_writer *w, const char *key, int64_t v, peftc_error *err);
peftc_status gguf_w_f32(gguf_writer *w, const char *key, float v, peftc_error *err);
peftc_status gguf_w_f64(gguf_writer *w, const char *key, double v, peftc_error *err);
peftc_status gguf_w_bool(gguf_writer *w, const char *key, int v, peftc_error *err);
peftc_status gguf_w_str(gguf_writer *w, const char *key, const char *s, size_t len, peftc_error *err);
/* An array of n numeric or bool elements of elem_type (little-endian, as in
 * memory on x86/ARM), copied. */
peftc_status gguf_w_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n,
                        peftc_error *err);
/* An array of n strings (s[i], len[i]; len NULL: NUL-terminated), copied. */
peftc_status gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *len, uint64_t n,
                            peftc_error *err);
/* Copies key/value i of an open GGUF file (any type but arrays of arrays). */
peftc_status gguf_w_copy_kv(gguf_writer *w, const gguf_file *g, int i, peftc_error *err);

/* A tensor: ne in ggml order (ne[0] contiguous), data of nbytes bytes of the
 * ggml type (checked against ggml_traits: whole blocks, bytes = rows * row size). */
peftc_status gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                           const void *data, size_t nbytes, peftc_error *err);

/* Writes the file: alignment 0 = GGUF_DEFAULT_ALIGNMENT (32); any other value
 * must be a power of two and is recorded as general.alignment (uint32). */
peftc_status gguf_writer_write(gguf_writer *w, const char *path, uint32_t alignment, peftc_error *err);

#endif
