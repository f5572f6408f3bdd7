/* config.h: config.json parsing from memory (internal; peftc_config_load in
 * peftc.h reads the file and calls it). */
#ifndef PEFTC_CONFIG_H
#define PEFTC_CONFIG_H

#include "core/core.h"

/* config.json's len bytes at text (no NUL needed); path names it in messages. */
peftc_status peftc_config_parse(const char *text, size_t len, const char *path, peftc_config *cfg, peftc_error *err);

#endif
