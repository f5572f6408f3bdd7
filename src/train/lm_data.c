/* lm_data.c: causal-LM records -> token ids, target flags, rows (lm_data.h). */
#include "train/lm_data.h"

#include <ctype.h>
#include <limits.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const format_names[] = {"auto", "text", "prompt-response", "alpaca", "chat", "template"};

const char *lm_format_name(lm_format f)
{
    return f >= 0 && (size_t)f < sizeof format_names / sizeof *format_names ? format_names[f] : "?";
}

int lm_format_parse(const char *name, lm_format *f)
{
    for (size_t i = 0; i < sizeof format_names / sizeof *format_names; i++)
        if (!strcmp(name, format_names[i])) { *f = (lm_format)i; return 1; }
    return 0;
}

/* Stanford Alpaca's prompts (github.com/tatsu-lab/stanford_alpaca, train.py) */
static const char ALPACA_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char ALPACA_NO_INPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n%s\n\n### Response:\n";

/* A single record larger than this is refused before it is parsed or
 * tokenised: far beyond any training example (a whole book is ~1 MB), and it
 * bounds what one record can make the loader allocate (its JSON tree, the
 * rendered prompt, the token ids: a few times its size). */
#define LM_MAX_RECORD_BYTES ((size_t)100 << 20)

/* The bytes of a parsed record's strings and keys (the array form's records
 * are parsed with the array; nesting past 64 levels counts as too large). */
static size_t record_bytes(json_t *v, int depth)
{
    if (depth > 64) return LM_MAX_RECORD_BYTES + 1;
    size_t n = 0;
    if (json_is_string(v)) return json_string_length(v);
    if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            n += strlen(k) + record_bytes(e, depth + 1);
            if (n > LM_MAX_RECORD_BYTES) break;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            n += record_bytes(e, depth + 1);
            if (n > LM_MAX_RECORD_BYTES) break;
        }
    } else n = 8;
    return n;
}

/* ------------------------------------------------------------ one example */

/* The token sequence of one example being built: ids and target flags. */
typedef struct seqbuf {
    int32_t *ids;
    uint8_t *tgt;
    int n, cap;
    int keep;   /* tokens that can matter: max_len + 1 in training (then
                 * truncation is counted), INT_MAX for generation prompts */
} seqbuf;

static int seq_push(seqbuf *s, int32_t id, int tgt)
{
    if (s->n == s->cap) {
        if (s->cap > (1 << 28)) return -1;
        int cap = s->cap ? 2 * s->cap : 256;
        int32_t *i = realloc(s->ids, (size_t)cap * sizeof *i);
        if (!i) return -1;
        s->ids = i;
        uint8_t *t = realloc(s->tgt, (size_t)cap);
        if (!t) return -1;
        s->tgt = t;
        s->cap = cap;
    }
    s->ids[s->n] = id;
    s->tgt[s->n++] = (uint8_t)tgt;
    return 0;
}

/* The end of a prefix of text[0..len) of at most cap bytes (cap < len) that
 * the byte-level pre-tokenisers split exactly where they split the whole
 * text: just before a space that follows an ASCII letter or digit (every
 * supported regex ends a letter or digit run there and starts the next chunk
 * with the space; NFC composes nothing across a space). 0 if there is none
 * in the prefix's second half. */
static size_t prefix_cut(const char *text, size_t cap)
{
    for (size_t p = cap; p > cap / 2; p--)
        if (text[p] == ' ' && isalnum((unsigned char)text[p - 1])) return p;
    return 0;
}

/* Tokenises text[0..len) on its own and appends it with target flag tgt.
 * Only the first s->keep tokens of an example can matter (truncation keeps
 * max_len): a long text is tokenised from a prefix cut where the
 * pre-tokeniser cuts anyway, grown until it yields the tokens needed, so the
 * ids are those of the whole text, without tokenising 100 MB for 32 tokens;
 * nothing is tokenised once the example is over its length. */
static peftc_status seq_piece(seqbuf *s, const bpe_tokenizer *tok, const char *text, size_t len, int tgt,
                              peftc_error *err)
{
    if (!len || s->n >= s->keep) return PEFTC_OK;
    int need = s->keep - s->n;
    int32_t *ids = NULL;
    int n = 0;
    peftc_status rc = PEFTC_OK;
    size_t cap = need < (1 << 20) ? 4096 + (size_t)64 * (size_t)need : len;
    for (;;) {
        size_t cut = cap < len ? prefix_cut(text, cap) : 0;
        rc = bpe_encode_alloc(tok, text, cut ? cut : len, 0, 1, &ids, &n, err);
        if (rc || !cut || n >= need) break;
        free(ids);
        ids = NULL;
        cap *= 4;
    }
    if (n > need) n = need;
    for (int i = 0; !rc && i < n; i++)
        if (seq_push(s, ids[i], tgt)) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    free(ids);
    return rc;
}

/* The BOS the tokenizer puts in front by default (encoding "" with its
 * special tokens), or -1. */
static int32_t default_bos(const bpe_tokenizer *tok)
{
    int32_t ids[8];
    int n = 0;
    peftc_error e;
    if (bpe_encode(tok, "", 0, 1, 0, ids, 8, &n, &e) || n < 1) return -1;
    return ids[0] == bpe_bos_id(tok) ? ids[0] : -1;
}

/* A string field of a record, NULL if absent or not a string. */
static const char *str_field(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

typedef struct loader {
    const char *path;
    const bpe_tokenizer *tok;
    const lm_data_opts *o;
    lm_format fmt;
    const char *f_text, *f_prompt, *f_resp, *f_msgs, *f_input;
    int32_t bos, eos;
    seqbuf seq;
    /* the examples, before packing */
    int32_t *ids;
    uint8_t *tgt;
    size_t n_ids, cap_ids;
    int *len;
    int n, cap;
    int n_truncated, n_dropped;
    lm_prompts *prompts;   /* prompts mode: each record's prompt ids and reference, no targets */
} loader;

static lm_format detect(json_t *o, const lm_data_opts *opt, const char **why)
{
    if (opt->prompt_template) return LM_FORMAT_TEMPLATE;
    if (json_object_get(o, opt->messages_field ? opt->messages_field : "messages")) return LM_FORMAT_CHAT;
    if (json_object_get(o, "instruction") && json_object_get(o, "output")) return LM_FORMAT_ALPACA;
    if (json_object_get(o, opt->prompt_field ? opt->prompt_field : "prompt") &&
        json_object_get(o, opt->response_field ? opt->response_field : "response"))
        return LM_FORMAT_PROMPT_RESPONSE;
    if (json_object_get(o, opt->text_field ? opt->text_field : "text")) return LM_FORMAT_TEXT;
    *why = "no field of a known format (text; prompt+response; instruction+output; messages; or give --prompt-template)";
    return LM_FORMAT_AUTO;
}

/* Fills "{name}" from the record's string (or integer) fields. */
static peftc_status fill_template(const loader *L, int line, json_t *o, char **out, peftc_error *err)
{
    const char *t = L->o->prompt_template;
    size_t cap = strlen(t) + 1, n = 0;
    char *s = malloc(cap);
    if (!s) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    while (*t) {
        const char *add = t;
        size_t addn = 1;
        char num[32];
        if (*t == '{') {
            const char *close = strchr(t, '}');
            if (!close || close - t > 64) { free(s); return peftc_fail(err, PEFTC_ERR_INPUT, "--prompt-template: '{' without a matching '}'"); }
            char name[72];
            memcpy(name, t + 1, (size_t)(close - t - 1));
            name[close - t - 1] = 0;
            json_t *v = json_object_get(o, name);
            if (json_is_integer(v)) { snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v)); add = num; }
            else if (json_is_string(v)) add = json_string_value(v);
            else { free(s); return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\" (named in --prompt-template)", L->path, line, name); }
            addn = strlen(add);
            t = close + 1;
        } else t++;
        if (n + addn + 1 > cap) {
            while (n + addn + 1 > cap) cap *= 2;
            char *g = realloc(s, cap);
            if (!g) { free(s); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
            s = g;
        }
        memcpy(s + n, add, addn);
        n += addn;
    }
    s[n] = 0;
    *out = s;
    return PEFTC_OK;
}

/* Chat: the rendered conversation in spans; an assistant turn's span (from
 * the end of the generation prompt before it to the end of the turn) is a
 * target. Each prefix rendering must be a prefix of the whole (true of the
 * chat templates peftc renders); a template that is not is an error. */
/* bpe_chat_apply, its error prefixed with FILE:LINE: the tokenizer does not
   know its file, and "no chat template" alone would name nothing */
static peftc_status chat_at(const loader *L, int line, const bpe_chat_msg *m, int n, int add_gen, char **out,
                            peftc_error *err)
{
    peftc_status rc = bpe_chat_apply(L->tok, m, n, add_gen, out, err);
    if (rc && err) {
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        peftc_fail(err, rc, "%s:%d: %s", L->path, line, why);
    }
    return rc;
}

static peftc_status chat_pieces(loader *L, int line, json_t *msgs, peftc_error *err)
{
    size_t nm = json_array_size(msgs);
    if (!json_is_array(msgs) || nm == 0 || nm > 100000)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: \"%s\" is not a non-empty array of messages", L->path, line, L->f_msgs);
    bpe_chat_msg *m = malloc(nm * sizeof *m);
    if (!m) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc = PEFTC_OK;
    int n_asst = 0;
    for (size_t i = 0; i < nm && !rc; i++) {
        json_t *e = json_array_get(msgs, i);
        const char *role = json_is_object(e) ? str_field(e, "role") : NULL, *content = json_is_object(e) ? str_field(e, "content") : NULL;
        if (!role || !content) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: message %zu lacks a string \"role\" or \"content\"", L->path, line, i + 1);
        else { m[i] = (bpe_chat_msg){role, content}; n_asst += !strcmp(role, "assistant"); }
    }
    if (!rc && !n_asst && !L->o->loss_on_all)
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no assistant message (nothing to learn; or give --loss-on all)", L->path, line);
    char *all = NULL;
    if (!rc) rc = chat_at(L, line, m, (int)nm, 0, &all, err);
    size_t done = 0, alen = all ? strlen(all) : 0;
    for (size_t i = 0; i < nm && !rc; i++) {
        if (strcmp(m[i].role, "assistant")) continue;
        char *pre = NULL, *upto = NULL;
        if ((rc = chat_at(L, line, m, (int)i, 1, &pre, err)) || (rc = chat_at(L, line, m, (int)i + 1, 0, &upto, err))) {
            free(pre);
            free(upto);
            break;
        }
        size_t pl = strlen(pre), ul = strlen(upto);
        if (pl < done || pl > ul || ul > alen || memcmp(pre, all, pl) || memcmp(upto, all, ul))
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s:%d: the chat template does not render turn by turn as prefixes of the whole conversation: assistant spans cannot be found",
                            L->path, line);
        else if (!strlen(m[i].content))
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: message %zu: empty assistant content", L->path, line, i + 1);
        else if (!(rc = seq_piece(&L->seq, L->tok, all + done, pl - done, L->o->loss_on_all, err)))
            rc = seq_piece(&L->seq, L->tok, all + pl, ul - pl, 1, err);
        done = ul;
        free(pre);
        free(upto);
    }
    if (!rc) rc = seq_piece(&L->seq, L->tok, all + done, alen - done, L->o->loss_on_all, err);
    free(all);
    free(m);
    return rc;
}

/* Prompts mode: the sequence built so far is the record's prompt. */
static peftc_status keep_prompt(loader *L, int line, const char *ref, peftc_error *err)
{
    lm_prompts *p = L->prompts;
    if (p->n == p->cap) {
        if (p->cap > (1 << 26)) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: more than %d records", L->path, 1 << 26);
        int cap = p->cap ? 2 * p->cap : 256;
        int32_t **ids = realloc(p->ids, (size_t)cap * sizeof *ids);
        if (ids) p->ids = ids;
        int *len = ids ? realloc(p->len, (size_t)cap * sizeof *len) : NULL;
        if (len) p->len = len;
        int *ln = len ? realloc(p->line, (size_t)cap * sizeof *ln) : NULL;
        if (ln) p->line = ln;
        char **r = ln ? realloc(p->ref, (size_t)cap * sizeof *r) : NULL;
        if (!r) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        p->ref = r;
        p->cap = cap;
    }
    int n = L->seq.n;
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    char *rs = strdup(ref ? ref : "");
    if (!ids || !rs) { free(ids); free(rs); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    memcpy(ids, L->seq.ids, (size_t)n * sizeof *ids);
    p->ids[p->n] = ids;
    p->len[p->n] = n;
    p->line[p->n] = line;
    p->ref[p->n++] = rs;
    return PEFTC_OK;
}

/* Prompts mode for a chat: the conversation before its last assistant turn
 * with the generation prompt; the reference is that turn. */
static peftc_status chat_prompt(loader *L, int line, json_t *msgs, peftc_error *err)
{
    size_t nm = json_array_size(msgs);
    if (!json_is_array(msgs) || nm == 0 || nm > 100000)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: \"%s\" is not a non-empty array of messages", L->path, line, L->f_msgs);
    bpe_chat_msg *m = malloc(nm * sizeof *m);
    if (!m) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status rc = PEFTC_OK;
    size_t last = nm;
    for (size_t i = 0; i < nm && !rc; i++) {
        json_t *e = json_array_get(msgs, i);
        const char *role = json_is_object(e) ? str_field(e, "role") : NULL, *content = json_is_object(e) ? str_field(e, "content") : NULL;
        if (!role || !content) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: message %zu lacks a string \"role\" or \"content\"", L->path, line, i + 1);
        else { m[i] = (bpe_chat_msg){role, content}; if (!strcmp(role, "assistant")) last = i; }
    }
    char *pre = NULL;
    if (!rc) rc = chat_at(L, line, m, (int)(last < nm ? last : nm), 1, &pre, err);
    if (!rc) rc = seq_piece(&L->seq, L->tok, pre, strlen(pre), 0, err);
    if (!rc) rc = keep_prompt(L, line, last < nm ? m[last].content : "", err);
    free(pre);
    free(m);
    return rc;
}

static peftc_status add_record(loader *L, int line, json_t *o, peftc_error *err)
{
    if (!json_is_object(o)) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: not a JSON object", L->path, line);
    if (L->fmt == LM_FORMAT_AUTO) {
        const char *why = NULL;
        if ((L->fmt = detect(o, L->o, &why)) == LM_FORMAT_AUTO) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: %s", L->path, line, why);
    }
    L->seq.n = 0;
    peftc_status rc = PEFTC_OK;
    /* a chat template writes the BOS itself where the model wants one */
    if (L->fmt != LM_FORMAT_CHAT && L->bos >= 0 && seq_push(&L->seq, L->bos, 0))
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    int all = L->o->loss_on_all;
    const char *prompt = NULL, *resp = NULL;
    char *owned = NULL;
    switch (L->fmt) {
    case LM_FORMAT_TEXT:
        if (L->prompts)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: plain \"%s\" records have no prompt to continue (give prompt/response fields or --prompt-template)",
                              L->path, line, L->f_text);
        if (!(prompt = str_field(o, L->f_text))) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", L->path, line, L->f_text);
        if (!*prompt) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: empty \"%s\"", L->path, line, L->f_text);
        all = 1;
        break;
    case LM_FORMAT_PROMPT_RESPONSE:
    case LM_FORMAT_TEMPLATE:
        if (!(resp = str_field(o, L->f_resp))) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", L->path, line, L->f_resp);
        if (L->fmt == LM_FORMAT_TEMPLATE) {
            if ((rc = fill_template(L, line, o, &owned, err))) return rc;
            prompt = owned;
        } else if (!(prompt = str_field(o, L->f_prompt)))
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", L->path, line, L->f_prompt);
        break;
    case LM_FORMAT_ALPACA: {
        const char *ins = str_field(o, L->f_prompt), *in = str_field(o, L->f_input);
        if (!ins) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", L->path, line, L->f_prompt);
        if (!(resp = str_field(o, L->f_resp))) return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", L->path, line, L->f_resp);
        size_t cap = strlen(ins) + (in ? strlen(in) : 0) + sizeof ALPACA_INPUT;
        if (!(owned = malloc(cap))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        if (in && *in) snprintf(owned, cap, ALPACA_INPUT, ins, in);
        else snprintf(owned, cap, ALPACA_NO_INPUT, ins);
        prompt = owned;
        break;
    }
    case LM_FORMAT_CHAT:
        if (L->prompts) return chat_prompt(L, line, json_object_get(o, L->f_msgs), err);
        return chat_pieces(L, line, json_object_get(o, L->f_msgs), err);
    default:
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: unknown record format %d", L->path, (int)L->fmt);
    }
    if (resp && !*resp) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: empty \"%s\" (nothing to learn)", L->path, line, L->f_resp);
    if (!rc) rc = seq_piece(&L->seq, L->tok, prompt, strlen(prompt), all, err);
    if (!rc && L->prompts) {
        rc = keep_prompt(L, line, resp, err);
        free(owned);
        return rc;
    }
    if (!rc && resp) rc = seq_piece(&L->seq, L->tok, resp, strlen(resp), 1, err);
    if (!rc && L->eos >= 0 && seq_push(&L->seq, L->eos, 1)) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    free(owned);
    return rc;
}

/* Keeps the example in L->seq: truncated to max_len; dropped if no target
 * is left (the first token is never a target: nothing precedes it). */
static peftc_status keep_example(loader *L, peftc_error *err)
{
    seqbuf *s = &L->seq;
    if (s->n) s->tgt[0] = 0;
    int n = s->n;
    if (n > L->o->max_len) { n = L->o->max_len; L->n_truncated++; }
    int any = 0;
    for (int i = 1; i < n; i++) any |= s->tgt[i];
    if (!any) { L->n_dropped++; return PEFTC_OK; }
    if (L->n_ids + (size_t)n > L->cap_ids) {
        size_t cap = L->cap_ids ? L->cap_ids : 4096;
        while (cap < L->n_ids + (size_t)n) cap *= 2;
        int32_t *ids = realloc(L->ids, cap * sizeof *ids);
        if (!ids) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", L->path);
        L->ids = ids;
        uint8_t *t = realloc(L->tgt, cap);
        if (!t) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", L->path);
        L->tgt = t;
        L->cap_ids = cap;
    }
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 1024;
        int *len = realloc(L->len, (size_t)cap * sizeof *len);
        if (!len) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", L->path);
        L->len = len;
        L->cap = cap;
    }
    memcpy(L->ids + L->n_ids, s->ids, (size_t)n * sizeof *s->ids);
    memcpy(L->tgt + L->n_ids, s->tgt, (size_t)n);
    L->n_ids += (size_t)n;
    L->len[L->n++] = n;
    return PEFTC_OK;
}

/* Rows from the examples: one each, or packed first-fit in file order into
 * rows of up to max_len tokens (an example never splits across rows). */
static peftc_status make_rows(loader *L, lm_dataset *d, peftc_error *err)
{
    int rows = 0;
    if (L->o->pack) {
        int fill = L->o->max_len;
        for (int i = 0; i < L->n; i++) {
            if (fill + L->len[i] > L->o->max_len) { rows++; fill = 0; }
            fill += L->len[i];
        }
    } else rows = L->n;
    d->n = rows;
    d->n_examples = L->n;
    d->n_truncated = L->n_truncated;
    d->n_dropped = L->n_dropped;
    d->format = L->fmt;
    size_t N = L->n_ids ? L->n_ids : 1;
    d->ids = L->ids ? L->ids : malloc(sizeof *d->ids);
    d->target = L->tgt ? L->tgt : malloc(1);
    L->ids = NULL;
    L->tgt = NULL;
    d->seg = malloc(N * sizeof *d->seg);
    d->off = malloc((size_t)(rows ? rows : 1) * sizeof *d->off);
    d->len = malloc((size_t)(rows ? rows : 1) * sizeof *d->len);
    if (!d->ids || !d->target || !d->seg || !d->off || !d->len) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", L->path);
    size_t at = 0;
    int r = -1, fill = L->o->max_len, segi = 0;
    for (int i = 0; i < L->n; i++) {
        if (!L->o->pack || fill + L->len[i] > L->o->max_len) {
            r++;
            d->off[r] = at;
            d->len[r] = 0;
            fill = 0;
            segi = 0;
        }
        for (int t = 0; t < L->len[i]; t++) d->seg[at + (size_t)t] = segi;
        at += (size_t)L->len[i];
        d->len[r] += L->len[i];
        fill += L->len[i];
        segi++;
    }
    d->n_tokens = (long long)L->n_ids;
    d->n_targets = 0;
    for (size_t i = 0; i < L->n_ids; i++) d->n_targets += d->target[i];
    return PEFTC_OK;
}

static peftc_status parse(const char *buf, size_t n, const char *path, const bpe_tokenizer *tok, const lm_data_opts *o,
                          lm_dataset *d, lm_prompts *prompts, peftc_error *err);

static peftc_status load(const char *path, const bpe_tokenizer *tok, const lm_data_opts *o, lm_dataset *d,
                         lm_prompts *prompts, peftc_error *err)
{
    if (d) memset(d, 0, sizeof *d);
    if (o->max_len < 2) return peftc_fail(err, PEFTC_ERR_INPUT, "--max-len %d: a causal-LM example needs at least 2 tokens", o->max_len);
    char *buf = NULL;
    size_t n = 0;
    peftc_status rc = peftc_read_file(path, &buf, &n, err);
    if (rc) return rc;
    rc = parse(buf, n, path, tok, o, d, prompts, err);
    free(buf);
    return rc;
}

peftc_status lm_data_parse(const char *text, size_t n, const char *path, const bpe_tokenizer *tok, const lm_data_opts *o,
                           lm_dataset *d, peftc_error *err)
{
    memset(d, 0, sizeof *d);
    if (o->max_len < 2) return peftc_fail(err, PEFTC_ERR_INPUT, "--max-len %d: a causal-LM example needs at least 2 tokens", o->max_len);
    return parse(text, n, path, tok, o, d, NULL, err);
}

peftc_status lm_data_parse_prompts(const char *text, size_t n, const char *path, const bpe_tokenizer *tok,
                                   const lm_data_opts *o, lm_prompts *p, peftc_error *err)
{
    memset(p, 0, sizeof *p);
    lm_data_opts q = *o;
    if (q.max_len < 2) q.max_len = 2;
    return parse(text, n, path, tok, &q, NULL, p, err);
}

static peftc_status parse(const char *buf, size_t n, const char *path, const bpe_tokenizer *tok, const lm_data_opts *o,
                          lm_dataset *d, lm_prompts *prompts, peftc_error *err)
{
    peftc_status rc = PEFTC_OK;
    loader L = {.path = path, .tok = tok, .o = o, .fmt = o->format, .prompts = prompts};
    L.seq.keep = prompts || o->max_len >= INT_MAX - 1 ? INT_MAX : o->max_len + 1;
    L.f_text = o->text_field ? o->text_field : "text";
    L.f_msgs = o->messages_field ? o->messages_field : "messages";
    L.f_input = "input";
    L.bos = default_bos(tok);
    L.eos = bpe_eos_id(tok);
    /* the format's default field names, unless named */
    lm_format f0 = o->format;
    int alpaca_names = f0 == LM_FORMAT_ALPACA;
    size_t s = 0;
    while (s < n && isspace((unsigned char)buf[s])) s++;
    if (s < n && buf[s] == '[') {
        /* one JSON array of records (Stanford Alpaca's alpaca_data.json) */
        json_error_t je;
        json_t *arr = json_loadb(buf + s, n - s, 0, &je);
        if (!arr || !json_is_array(arr)) {
            json_decref(arr);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s:%d: not a JSON array of records (%s)", path, arr ? 1 : je.line, arr ? "wrong type" : je.text);
        }
        for (size_t i = 0; !rc && i < json_array_size(arr); i++) {
            json_t *rec = json_array_get(arr, i);
            size_t rb = record_bytes(rec, 0);
            if (rb > LM_MAX_RECORD_BYTES) {
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: record %zu holds more than %zu MB of text (the limit of one record)",
                                path, i + 1, LM_MAX_RECORD_BYTES >> 20);
                break;
            }
            if (L.fmt == LM_FORMAT_AUTO && json_is_object(rec)) {
                const char *why;
                L.fmt = detect(rec, o, &why);
                alpaca_names = L.fmt == LM_FORMAT_ALPACA;
            }
            L.f_prompt = o->prompt_field ? o->prompt_field : alpaca_names ? "instruction" : "prompt";
            L.f_resp = o->response_field ? o->response_field : alpaca_names ? "output" : "response";
            /* records of an array are numbered from 1 in messages */
            if (!(rc = add_record(&L, (int)i + 1, rec, err)) && !prompts) rc = keep_example(&L, err);
        }
        json_decref(arr);
    } else {
        size_t pos = 0;
        int line = 0;
        while (!rc && pos < n) {
            char *nl = memchr(buf + pos, '\n', n - pos);
            size_t end = nl ? (size_t)(nl - buf) : n, b = pos;
            line++;
            pos = nl ? end + 1 : n;
            while (b < end && isspace((unsigned char)buf[b])) b++;
            if (b == end) continue;
            if (end - b > LM_MAX_RECORD_BYTES) {
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: a record of %zu bytes, over the %zu MB limit of one record", path, line,
                                end - b, LM_MAX_RECORD_BYTES >> 20);
                break;
            }
            json_error_t je;
            json_t *rec = json_loadb(buf + b, end - b, 0, &je);
            if (!rec) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: not JSON (%s)", path, line, je.text); break; }
            if (L.fmt == LM_FORMAT_AUTO && json_is_object(rec)) {
                const char *why;
                L.fmt = detect(rec, o, &why);
                alpaca_names = L.fmt == LM_FORMAT_ALPACA;
            }
            L.f_prompt = o->prompt_field ? o->prompt_field : alpaca_names ? "instruction" : "prompt";
            L.f_resp = o->response_field ? o->response_field : alpaca_names ? "output" : "response";
            if (!(rc = add_record(&L, line, rec, err)) && !prompts) rc = keep_example(&L, err);
            json_decref(rec);
        }
    }
    if (prompts) {
        if (!rc && prompts->n == 0) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no records", path);
        free(L.seq.ids);
        free(L.seq.tgt);
        if (rc) lm_prompts_free(prompts);
        return rc;
    }
    if (!rc && L.n == 0)
        rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no example with a target token (%d dropped after truncation to %d tokens)", path,
                        L.n_dropped, o->max_len);
    if (!rc) rc = make_rows(&L, d, err);
    if (!rc && !(d->path = strdup(path))) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    free(L.seq.ids);
    free(L.seq.tgt);
    free(L.ids);
    free(L.tgt);
    free(L.len);
    if (rc) lm_data_free(d);
    return rc;
}

peftc_status lm_data_load(const char *path, const bpe_tokenizer *tok, const lm_data_opts *o, lm_dataset *d,
                          peftc_error *err)
{
    return load(path, tok, o, d, NULL, err);
}

peftc_status lm_data_prompts(const char *path, const bpe_tokenizer *tok, const lm_data_opts *o, lm_prompts *p,
                             peftc_error *err)
{
    memset(p, 0, sizeof *p);
    lm_data_opts q = *o;
    if (q.max_len < 2) q.max_len = 2;   /* unused: prompts are not truncated */
    return load(path, tok, &q, NULL, p, err);
}

void lm_prompts_free(lm_prompts *p)
{
    for (int i = 0; i < p->n; i++) { free(p->ids[i]); free(p->ref[i]); }
    free(p->ids); free(p->len); free(p->line); free(p->ref);
    memset(p, 0, sizeof *p);
}

void lm_data_free(lm_dataset *d)
{
    free(d->ids);
    free(d->seg);
    free(d->target);
    free(d->off);
    free(d->len);
    free(d->path);
    memset(d, 0, sizeof *d);
}
