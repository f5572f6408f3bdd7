/* core.h: internal helpers shared by every layer (errors, files, allocation). */
#ifndef PEFTC_CORE_H
#define PEFTC_CORE_H

#include "peftc.h"
#include <stdarg.h>
#include <stdio.h>

/* Records code and a printf-style one-line message in err (may be NULL) and
 * returns code, so call sites read `return peftc_fail(err, CODE, "...")`. */
peftc_status peftc_fail(peftc_error *err, peftc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads a whole (small) file into a NUL-terminated malloc'd buffer. */
peftc_status peftc_read_file(const char *path, char **data, size_t *len, peftc_error *err);

/* Joins dir and name into out (size cap); fails on overflow. */
peftc_status peftc_path_join(char *out, size_t cap, const char *dir, const char *name, peftc_error *err);

int peftc_file_exists(const char *path);

/* Opens path for reading only if it is a regular file (a FIFO, device or
 * directory is refused at once, naming what it is): *fd and its size. */
peftc_status peftc_open_regular(const char *path, int *fd, size_t *size, peftc_error *err);
/* The same as a FILE* ("rb"), or NULL (for probes that need no message). */
FILE *peftc_fopen_regular(const char *path);

/* Creates a directory and any missing parents (mkdir -p). */
peftc_status peftc_mkdir_p(const char *dir, peftc_error *err);

/* Writes data to path atomically: path.tmp, fsync, rename. */
peftc_status peftc_write_file_atomic(const char *path, const void *data, size_t len, peftc_error *err);

/* Copies each named file of from/ that exists to to/ (atomically each). */
peftc_status peftc_copy_present_files(const char *from, const char *to, const char *const *names, peftc_error *err);

/* 64-byte aligned allocation (freed with free()). */
void *peftc_alloc_aligned(size_t bytes);

#endif
