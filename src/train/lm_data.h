/* lm_data.h: causal-LM training data (internal): JSONL / JSON-array records
 * -> token ids with a per-token target flag, truncated to max_len, optionally
 * packed several to a row with per-token segment ids.
 *
 * Record formats, recognised from the first record's fields (or forced by
 * naming the fields):
 *   text                      plain text, every token a target
 *   prompt + response         the response tokens (and EOS) are targets
 *   instruction [+ input] + output   Stanford Alpaca's prompt template
 *   messages [{role, content}]       the model's chat template; the
 *                             assistant turns (through their end marker) are
 *                             targets
 *   --prompt-template "...{field}..." + response field: the template filled
 *                             from the record (XSum's document/summary,
 *                             GSM8K's question/answer)
 * Each piece (prompt text, response text, chat spans) is tokenised on its own
 * (special tokens written in the text parsed), then concatenated, with the
 * BOS the tokenizer adds by default in front and EOS after the response of
 * the non-chat formats: so a target span starts at a token boundary whatever
 * the tokenizer's merges across it. loss_on_all makes every token a target. */
#ifndef PEFTC_LM_DATA_H
#define PEFTC_LM_DATA_H

#include "core/core.h"
#include "tokenizer/bpe.h"

typedef enum lm_format {
    LM_FORMAT_AUTO = 0, LM_FORMAT_TEXT, LM_FORMAT_PROMPT_RESPONSE, LM_FORMAT_ALPACA, LM_FORMAT_CHAT,
    LM_FORMAT_TEMPLATE
} lm_format;

typedef struct lm_data_opts {
    lm_format format;
    /* field names; NULL = the format's default (text, prompt, response,
     * instruction, input, output, messages) */
    const char *text_field, *prompt_field, *response_field, *messages_field;
    const char *prompt_template;   /* LM_FORMAT_TEMPLATE: "{document}" etc. substituted */
    int loss_on_all;               /* targets on the prompt tokens too */
    int max_len;                   /* >= 2 */
    int pack;                      /* several examples per row (segments) */
} lm_data_opts;

typedef struct lm_dataset {
    int n;                 /* rows (examples, or packed rows) */
    int n_examples;        /* examples kept */
    int n_truncated;       /* examples cut at max_len (kept if a target remains) */
    int n_dropped;         /* examples with no target left after truncation */
    lm_format format;
    /* row i: len[i] tokens at ids + off[i]; target[t] = 1: token t is
     * predicted from the tokens before it (a loss position); seg[t]: the
     * example index within the row (0 without packing) */
    int32_t *ids, *seg;
    uint8_t *target;
    size_t *off;
    int *len;
    long long n_tokens, n_targets;
    char *path;
} lm_dataset;

peftc_status lm_data_load(const char *path, const bpe_tokenizer *tok, const lm_data_opts *o, lm_dataset *d,
                          peftc_error *err);
/* The same from n bytes at text (path names it in messages). */
peftc_status lm_data_parse(const char *text, size_t n, const char *path, const bpe_tokenizer *tok, const lm_data_opts *o,
                           lm_dataset *d, peftc_error *err);
void lm_data_free(lm_dataset *d);

/* Generation prompts of the same records: each record's prompt tokens as
 * training sees them (BOS, the rendered prompt; a chat up to its last
 * assistant turn with the generation prompt), not truncated, and the
 * reference text (the response field / that assistant turn; "" if none). */
typedef struct lm_prompts {
    int n, cap;
    int32_t **ids;
    int *len;
    int *line;      /* the record's line (JSONL) or 1-based index (array) */
    char **ref;
} lm_prompts;

peftc_status lm_data_prompts(const char *path, const bpe_tokenizer *tok, const lm_data_opts *o, lm_prompts *p,
                             peftc_error *err);
peftc_status lm_data_parse_prompts(const char *text, size_t n, const char *path, const bpe_tokenizer *tok,
                                   const lm_data_opts *o, lm_prompts *p, peftc_error *err);
void lm_prompts_free(lm_prompts *p);
const char *lm_format_name(lm_format f);
/* "text", "prompt-response", "alpaca", "chat", "template" -> 1 and *f; 0 unknown */
int lm_format_parse(const char *name, lm_format *f);

#endif
