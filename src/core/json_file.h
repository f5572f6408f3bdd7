/* json_file.h: jansson's json_load_file for files from strangers (internal). */
#ifndef PEFTC_JSON_FILE_H
#define PEFTC_JSON_FILE_H

#include <jansson.h>

/* json_load_file, but only of a regular file: a FIFO or device named
 * config.json fails at once (je->text says what it is) instead of blocking
 * or reading without end. */
json_t *peftc_json_load_file(const char *path, size_t flags, json_error_t *je);

#endif
