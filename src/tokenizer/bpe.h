/* bpe.h: byte-level BPE tokenizer (GPT-2 / Llama-3 / SmolLM2 style), equal to
 * Hugging Face `tokenizers` on the pipelines listed in bpe.c, plus chat
 * templates recognised by their text (no Jinja interpreter).
 *
 * Internal header (not part of include/peftc.h yet): the lead wires it into
 * the CLI and the GGUF reader.  All functions follow the library conventions:
 * a peftc_status return, a one-line message in err, no printing, no exit.
 * A built tokenizer is immutable, so one tokenizer may be used from several
 * threads at once (there is no shared word cache for that reason). */
#ifndef PEFTC_BPE_H
#define PEFTC_BPE_H

#include "peftc.h"

#include <stddef.h>
#include <stdint.h>

typedef struct bpe_tokenizer bpe_tokenizer;

/* GGUF tokenizer.ggml.token_type values */
enum {
    BPE_TOKEN_NORMAL = 1,
    BPE_TOKEN_UNKNOWN = 2,
    BPE_TOKEN_CONTROL = 3,
    BPE_TOKEN_USER_DEFINED = 4,
    BPE_TOKEN_UNUSED = 5,
    BPE_TOKEN_BYTE = 6
};

/* What a GGUF file's tokenizer.* metadata gives (every pointer is only read
 * during bpe_from_vocab; the tokenizer keeps its own copies). */
typedef struct bpe_vocab {
    int n_tokens;
    const char *const *tokens;    /* tokenizer.ggml.tokens, byte-level spelled */
    const size_t *token_lens;     /* may be NULL: NUL-terminated strings */
    int n_merges;
    const char *const *merges;    /* tokenizer.ggml.merges: "a b", best first */
    const size_t *merge_lens;     /* may be NULL */
    const int32_t *token_types;   /* tokenizer.ggml.token_type, may be NULL */
    const char *pre;              /* tokenizer.ggml.pre ("smollm", "gpt2", "llama-bpe", ...) */
    int32_t bos_id, eos_id, unk_id, pad_id;   /* -1: absent */
    int add_bos, add_eos;
    const char *chat_template;    /* tokenizer.chat_template, may be NULL */
} bpe_vocab;

/* Builds a tokenizer from GGUF-style arrays.  Errors (PEFTC_ERR_FORMAT /
 * PEFTC_ERR_UNSUPPORTED) name the offending token, merge or pre-tokenizer. */
peftc_status bpe_from_vocab(const bpe_vocab *v, bpe_tokenizer **out, peftc_error *err);

/* Builds a tokenizer from a Hugging Face tokenizer.json (and the
 * tokenizer_config.json beside it, if any, for chat_template, bos/eos and
 * add_bos_token).  Unsupported constructs are rejected with the file name and
 * the construct. */
peftc_status bpe_from_tokenizer_json(const char *path, bpe_tokenizer **out, peftc_error *err);
/* The same from bytes: tokenizer.json's (text, len) named path, and
 * tokenizer_config.json's (cfg_text, cfg_len; NULL if absent) named cfg_name. */
peftc_status bpe_from_tokenizer_json_mem(const char *text, size_t len, const char *path, const char *cfg_text, size_t cfg_len,
                                         const char *cfg_name, bpe_tokenizer **out, peftc_error *err);

/* From a GGUF file's tokenizer.* metadata (tokenizer/bpe_gguf.c). */
struct gguf_file;
peftc_status bpe_from_gguf(const struct gguf_file *g, bpe_tokenizer **out, peftc_error *err);

void bpe_free(bpe_tokenizer *tok);

int bpe_vocab_size(const bpe_tokenizer *tok);   /* largest id + 1 */
int32_t bpe_bos_id(const bpe_tokenizer *tok);   /* -1 if none */
int32_t bpe_eos_id(const bpe_tokenizer *tok);
int32_t bpe_pad_id(const bpe_tokenizer *tok);
int32_t bpe_unk_id(const bpe_tokenizer *tok);
/* The id of a token spelled as in the vocabulary (byte-level), or -1. */
int32_t bpe_token_id(const bpe_tokenizer *tok, const char *token, size_t len);
/* 1 if id is a special (control) token. */
int bpe_is_special(const bpe_tokenizer *tok, int32_t id);
/* A description of the pre-tokenizer, e.g. "Digits(individual)+ByteLevel(regex)". */
const char *bpe_pre_name(const bpe_tokenizer *tok);

/* Encodes text[0..len) (UTF-8; invalid UTF-8 is PEFTC_ERR_INPUT naming the
 * byte offset).  add_special: add the BOS/EOS (or the tokenizer.json
 * post-processor's) special tokens.  parse_special: special tokens written in
 * the text become their ids; otherwise they are tokenized as plain text
 * (non-special added tokens are always matched, as in HF).
 * Writes up to cap ids; *n is set to the full count, and if it exceeds cap the
 * call fails with PEFTC_ERR_INPUT (ids then holds the first cap ids). */
peftc_status bpe_encode(const bpe_tokenizer *tok, const char *text, size_t len,
                        int add_special, int parse_special,
                        int32_t *ids, int cap, int *n, peftc_error *err);
/* As bpe_encode, into a malloc'd array (*ids, freed by the caller). */
peftc_status bpe_encode_alloc(const bpe_tokenizer *tok, const char *text, size_t len,
                              int add_special, int parse_special,
                              int32_t **ids, int *n, peftc_error *err);

/* The most input bytes one token can stand for: the longest token's bytes
 * (normalisation aside); 0 if unbounded (an added token that strips the
 * spaces beside it). A text of B bytes is at least B / (4 x this) tokens
 * (NFC shrinks text at most 3x), so a prompt that cannot fit a context is
 * refused before it is tokenised. */
size_t bpe_max_token_bytes(const bpe_tokenizer *tok);

/* The raw bytes of one token (byte-level decoded; a special token is its
 * text).  Writes min(len, cap) bytes (no NUL) and sets *len to the full length;
 * fails with PEFTC_ERR_INPUT for an unknown id or when cap is too small. */
peftc_status bpe_decode_token(const bpe_tokenizer *tok, int32_t id, char *out, size_t cap,
                              size_t *len, peftc_error *err);
/* The bytes of ids[0..n) concatenated into a malloc'd NUL-terminated string
 * (skip_special: leave out special tokens).  The bytes are not repaired: an id
 * sequence that splits a UTF-8 character gives invalid UTF-8 (HF would show
 * U+FFFD there). */
peftc_status bpe_decode(const bpe_tokenizer *tok, const int32_t *ids, int n, int skip_special,
                        char **out, size_t *len, peftc_error *err);

/* Streaming output: bytes of generated tokens, holding back a trailing
 * incomplete UTF-8 sequence until the token that completes it arrives.
 * Zero-initialise (bpe_stream s = {0}). */
typedef struct bpe_stream {
    unsigned char pend[4];
    int npend;
} bpe_stream;
/* Appends token id; writes the printable bytes to out (cap >= the token's
 * length + 4 always suffices) and their count to *len. */
peftc_status bpe_stream_push(const bpe_tokenizer *tok, bpe_stream *s, int32_t id,
                             char *out, size_t cap, size_t *len, peftc_error *err);
/* Emits whatever is held back (an incomplete sequence at the end), <= 4 bytes. */
size_t bpe_stream_flush(bpe_stream *s, char *out, size_t cap);

/* ------------------------------------------------------ chat templates */
typedef struct bpe_chat_msg {
    const char *role;      /* "system", "user", "assistant", ... */
    const char *content;
} bpe_chat_msg;

/* Renders messages with the tokenizer's chat template into a malloc'd
 * NUL-terminated string, byte for byte what transformers' apply_chat_template
 * gives.  Supported: the template families listed in bpe.c; any other (or no)
 * template is PEFTC_ERR_UNSUPPORTED. */
peftc_status bpe_chat_apply(const bpe_tokenizer *tok, const bpe_chat_msg *msgs, int n,
                            int add_generation_prompt, char **out, peftc_error *err);
/* The same for a template string with the given bos/eos texts (may be NULL). */
peftc_status bpe_chat_render(const char *tmpl, const char *bos_text, const char *eos_text,
                             const bpe_chat_msg *msgs, int n, int add_generation_prompt,
                             char **out, peftc_error *err);
/* The family a template is recognised as ("chatml-default-system", "chatml",
 * "llama3", "zephyr"), or NULL. */
const char *bpe_chat_family(const char *tmpl);

#endif
