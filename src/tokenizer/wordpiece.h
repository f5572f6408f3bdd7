/* wordpiece.h: the WordPiece tokenizer's loader from memory (internal;
 * peftc_tokenizer_load in peftc.h reads a model directory's files and calls it). */
#ifndef PEFTC_WORDPIECE_H
#define PEFTC_WORDPIECE_H

#include "core/core.h"

/* A model directory's tokenizer files as bytes: vocab.txt, tokenizer.json,
 * tokenizer_config.json (each NULL if absent; the config is read only
 * without tokenizer.json); the names stand for their paths in messages. */
typedef struct wordpiece_files {
    const char *vocab_name, *vocab;
    size_t vocab_len;
    const char *tj_name, *tj;
    size_t tj_len;
    const char *cfg_name, *cfg;
    size_t cfg_len;
} wordpiece_files;

peftc_status wordpiece_load_mem(const wordpiece_files *f, const char *model_dir, peftc_tokenizer **out, peftc_error *err);

#endif
