/* bpe.c: byte-level BPE (GPT-2 / Llama-3 / SmolLM2), equal to Hugging Face
 * `tokenizers` for these pipelines:
 *
 *   1. the text is validated as UTF-8 (the offset of the first bad byte is
 *      reported);
 *   2. added tokens (special ones only when parse_special) are matched in the
 *      raw text, leftmost-longest as HF's aho-corasick does, honouring
 *      lstrip/rstrip; they become their ids and are never split;
 *   3. every other piece goes through the pre-tokenizer steps: Split(regex or
 *      string, behavior Isolated/Removed/MergedWithPrevious/MergedWithNext/
 *      Contiguous, invert), Digits(individual_digits), ByteLevel(add_prefix_space,
 *      use_regex with GPT-2's pattern); NFC is the one normalizer accepted;
 *   4. each word's bytes are spelled in GPT-2's byte alphabet and merged by
 *      rank (lowest first, leftmost on ties) with a binary heap over a linked
 *      list of symbols, exactly HF's Word::merge_all; with ignore_merges a word
 *      that is itself a token is emitted whole;
 *   5. add_special adds the post-processor's (TemplateProcessing) or the
 *      GGUF flags' BOS/EOS.
 *
 * GGUF pre-tokenizer names (tokenizer.ggml.pre) map to the pipelines that
 * transformers' GGUF converter and llama.cpp use:
 *   gpt2 (also "default", "gpt-2")   ByteLevel(regex = GPT-2's)
 *   smollm                         Digits(individual) + ByteLevel(regex), as in
 *                                  SmolLM2's published tokenizer.json
 *   llama-bpe, llama3, llama-v3, falcon3, dbrx, smaug-bpe, pixtral
 *                                  Split(Llama-3 regex) + ByteLevel(no regex),
 *                                  ignore_merges (as Llama-3's tokenizer.json)
 *   qwen2, deepseek-r1-qwen        Split(Qwen2 regex) + ByteLevel(no regex)
 *   gpt-4o, llama4                 Split(GPT-4o regex) + ByteLevel(no regex)
 *   tekken                         Split(Tekken regex) + ByteLevel(no regex)
 *
 * Regexes run on PCRE2 (UTF + UCP, JIT when available).  HF runs them on
 * Oniguruma, whose Unicode tables could differ from PCRE2's; a sweep of every
 * code point U+0000..U+10FFFF ("a<c>b" words) through the smollm and
 * llama-bpe pipelines gave identical ids (PCRE2 10.42, tokenizers 0.23.3), so
 * no correction table is needed; tests/check_bpe.sh keeps a sample of it.
 * Bytes with no token of their own (SmolLM2 has none for some control bytes)
 * are dropped, as HF's BPE does without an unk_token.
 *
 * No word cache: a built tokenizer is immutable, so encoding needs no lock
 * (about 10 MB/s of English on one core without one).
 */
#include "core/json_file.h"
#include "tokenizer/bpe.h"
#include "core/core.h"
#include "tokenizer/utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------ patterns */

static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_GPT4O[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_TEKKEN[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------ buffers */

typedef struct { char *v; size_t n, cap; } cbuf;
typedef struct { int32_t *v; size_t n, cap; } ibuf;

static int cb_add(cbuf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX / 4 - b->n) return -1;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    if (n) memcpy(b->v + b->n, p, n);
    b->n += n;
    b->v[b->n] = 0;
    return 0;
}

static int ib_push(ibuf *b, int32_t x)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        if (cap > SIZE_MAX / 8) return -1;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = x;
    return 0;
}

/* A list of pieces: byte ranges in a shared character buffer, each either
 * text still to tokenize (id < 0) or an added token (id >= 0). */
typedef struct { size_t off, len; int32_t id; } piece;
typedef struct { cbuf s; piece *p; size_t np, pcap; } plist;

static int pl_add(plist *l, const char *p, size_t n, int32_t id)
{
    if (l->np == l->pcap) {
        size_t cap = l->pcap ? l->pcap * 2 : 64;
        piece *v = realloc(l->p, cap * sizeof *v);
        if (!v) return -1;
        l->p = v;
        l->pcap = cap;
    }
    size_t off = l->s.n;
    if (cb_add(&l->s, p, n)) return -1;
    l->p[l->np++] = (piece){off, n, id};
    return 0;
}

static void pl_free(plist *l)
{
    free(l->s.v);
    free(l->p);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------- UTF-8 */

/* utf8_decode, utf8_check, utf8_encode: tokenizer/utf8.h */

/* Rust's char::is_whitespace (the White_Space property), used by lstrip/rstrip. */
static int is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ------------------------------------------------- GPT-2 byte alphabet */

static uint32_t byte2cp[256];
static int16_t cp2byte[512];   /* the alphabet lies in U+0021..U+0143 */

static pthread_once_t alphabet_once = PTHREAD_ONCE_INIT;

static void alphabet_init(void)
{
    /* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the
     * rest map to U+0100 upwards in byte order.  Filled once (pthread_once,
     * so tokenizers may be built from several threads). */
    int n = 0;
    for (int i = 0; i < 512; i++) cp2byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte2cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        cp2byte[byte2cp[b]] = (int16_t)b;
    }
}

/* Spells raw bytes in the byte alphabet. */
static int bytelevel_spell(cbuf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char u[4];
        size_t k = utf8_encode(byte2cp[(unsigned char)s[i]], u);
        if (cb_add(out, u, k)) return -1;
    }
    return 0;
}

/* Byte-level decoding of a token as HF's ByteLevel decoder: every character
 * mapped back to its byte, or, if any character is outside the alphabet, the
 * token's own UTF-8 bytes. Returns 1 if decoded via the alphabet. */
static int bytelevel_unspell(const char *s, size_t n, cbuf *out)
{
    size_t start = out->n;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = utf8_decode(u + i, n - i, &cp);
        if (!k || cp >= 512 || cp2byte[cp] < 0) {
            out->n = start;
            cb_add(out, s, n);
            return 0;
        }
        char b = (char)cp2byte[cp];
        if (cb_add(out, &b, 1)) return -1;
        i += k;
    }
    return 1;
}

/* --------------------------------------------------------- hash tables */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

typedef struct { uint64_t key; int32_t rank, id; } pair_slot;   /* key 0: empty */

/* --------------------------------------------------------- the object */

enum { ST_SPLIT = 1, ST_BYTELEVEL };
enum { BH_REMOVED, BH_ISOLATED, BH_MERGED_PREV, BH_MERGED_NEXT, BH_CONTIGUOUS };

typedef struct {
    int kind;
    pcre2_code *re;        /* Split; ByteLevel with use_regex (GPT-2's pattern) */
    int behavior, invert;  /* Split */
    int prefix_space;      /* ByteLevel */
} pre_step;

typedef struct {
    char *text;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip;
} added_tok;

struct bpe_tokenizer {
    int n_ids;                 /* largest id + 1 */
    char **tok;                /* byte-level spelling per id (NULL: hole) */
    size_t *tok_len;
    char **raw;                /* decoded bytes per id */
    size_t *raw_len;
    unsigned char *special;    /* per id */
    int32_t *slot_id;          /* vocab hash: slot -> id, -1 empty */
    size_t vmask;
    pair_slot *pairs;
    size_t pmask;
    int32_t byte_id[256];
    int ignore_merges, nfc;
    pre_step steps[16];
    int nsteps;
    char pre_name[128];
    added_tok *added;
    int nadded;
    int added_head[256];       /* first added token starting with a byte, -1 */
    int *added_next;           /* the next one with the same first byte */
    int32_t bos, eos, unk, pad;
    int32_t model_unk;         /* the BPE model's unk_token (tokenizer.json only), -1: none */
    int32_t prefix[8], suffix[8];
    int nprefix, nsuffix;
    char *chat_template;
};

static int32_t vocab_find(const bpe_tokenizer *t, const char *s, size_t n)
{
    if (!t->slot_id) return -1;
    for (size_t h = hash_bytes(s, n) & t->vmask;; h = (h + 1) & t->vmask) {
        int32_t id = t->slot_id[h];
        if (id < 0) return -1;
        if (t->tok_len[id] == n && !memcmp(t->tok[id], s, n)) return id;
    }
}

static const pair_slot *pair_find(const bpe_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    for (size_t h = hash_u64(key) & t->pmask;; h = (h + 1) & t->pmask) {
        if (t->pairs[h].key == key) return &t->pairs[h];
        if (!t->pairs[h].key) return NULL;
    }
}

void bpe_free(bpe_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_ids; i++) {
        free(t->tok[i]);
        free(t->raw[i]);
    }
    free(t->tok);
    free(t->tok_len);
    free(t->raw);
    free(t->raw_len);
    free(t->special);
    free(t->slot_id);
    free(t->pairs);
    for (int i = 0; i < t->nsteps; i++) pcre2_code_free(t->steps[i].re);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].text);
    free(t->added);
    free(t->added_next);
    free(t->chat_template);
    free(t);
}

static bpe_tokenizer *tok_new(int n_ids)
{
    bpe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_ids = n_ids;
    t->tok = calloc((size_t)n_ids, sizeof *t->tok);
    t->tok_len = calloc((size_t)n_ids, sizeof *t->tok_len);
    t->raw = calloc((size_t)n_ids, sizeof *t->raw);
    t->raw_len = calloc((size_t)n_ids, sizeof *t->raw_len);
    t->special = calloc((size_t)n_ids, 1);
    t->bos = t->eos = t->unk = t->pad = t->model_unk = -1;
    if (!t->tok || !t->tok_len || !t->raw || !t->raw_len || !t->special) {
        bpe_free(t);
        return NULL;
    }
    pthread_once(&alphabet_once, alphabet_init);
    return t;
}

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Sets token id's spelling (src names the file/array for errors). */
static peftc_status set_token(bpe_tokenizer *t, int32_t id, const char *s, size_t n, peftc_error *err)
{
    if (t->tok[id]) free(t->tok[id]);
    t->tok[id] = dupn(s, n);
    t->tok_len[id] = n;
    if (!t->tok[id]) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

/* Builds the vocab hash and the decoded bytes; duplicate spellings fail. */
static peftc_status index_vocab(bpe_tokenizer *t, const char *src, peftc_error *err)
{
    size_t cap = 16;
    while (cap < (size_t)t->n_ids * 2) cap *= 2;
    t->slot_id = malloc(cap * sizeof *t->slot_id);
    if (!t->slot_id) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++) t->slot_id[i] = -1;
    t->vmask = cap - 1;
    cbuf b = {0};
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (!t->tok[id]) continue;
        size_t h = hash_bytes(t->tok[id], t->tok_len[id]) & t->vmask;
        for (;; h = (h + 1) & t->vmask) {
            int32_t o = t->slot_id[h];
            if (o < 0) break;
            if (t->tok_len[o] == t->tok_len[id] && !memcmp(t->tok[o], t->tok[id], t->tok_len[id])) {
                free(b.v);
                return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: token %d '%.60s' duplicates token %d",
                                  src, id, t->tok[id], o);
            }
        }
        t->slot_id[h] = id;
        b.n = 0;
        if (bytelevel_unspell(t->tok[id], t->tok_len[id], &b) < 0 ||
            !(t->raw[id] = dupn(b.v ? b.v : "", b.n))) {
            free(b.v);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
        t->raw_len[id] = b.n;
    }
    free(b.v);
    for (int c = 0; c < 256; c++) {
        char u[4];
        size_t k = utf8_encode(byte2cp[c], u);
        t->byte_id[c] = vocab_find(t, u, k);
    }
    return PEFTC_OK;
}

/* Adds merges; get(i, &s, &n) returns the i-th merge. */
typedef struct { const char *s; size_t n; } strv;
static peftc_status add_merges(bpe_tokenizer *t, const strv *m, int nm, const char *src, peftc_error *err)
{
    if (nm <= 0) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: the BPE model has no merges", src);
    size_t cap = 16;
    while (cap < (size_t)nm * 2) cap *= 2;
    t->pairs = calloc(cap, sizeof *t->pairs);
    if (!t->pairs) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    t->pmask = cap - 1;
    cbuf cat = {0};
    for (int r = 0; r < nm; r++) {
        const char *s = m[r].s;
        size_t n = m[r].n;
        /* split at the first space after the first byte (llama.cpp's rule;
         * byte-level tokens never contain a space) */
        const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
        if (!sp) {
            free(cat.v);
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: merge %d '%.60s' is not 'a b'", src, r, s);
        }
        size_t na = (size_t)(sp - s), nb = n - na - 1;
        int32_t a = vocab_find(t, s, na), b = vocab_find(t, sp + 1, nb);
        cat.n = 0;
        if (cb_add(&cat, s, na) || cb_add(&cat, sp + 1, nb)) {
            free(cat.v);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
        int32_t ab = vocab_find(t, cat.v, cat.n);
        if (a < 0 || b < 0 || ab < 0) {
            peftc_fail(err, PEFTC_ERR_FORMAT, "%s: merge %d '%.*s' names a token not in the vocabulary ('%.40s')",
                       src, r, (int)(n > 80 ? 80 : n), s, a < 0 ? s : b < 0 ? sp + 1 : cat.v);
            free(cat.v);
            return PEFTC_ERR_FORMAT;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
        size_t h = hash_u64(key) & t->pmask;
        while (t->pairs[h].key && t->pairs[h].key != key) h = (h + 1) & t->pmask;
        if (!t->pairs[h].key) t->pairs[h] = (pair_slot){key, r, ab};   /* first (best) rank wins */
    }
    free(cat.v);
    return PEFTC_OK;
}

static peftc_status add_step_re(bpe_tokenizer *t, int kind, const char *pat, size_t plen, int literal,
                                int behavior, int invert, int prefix_space, const char *src, peftc_error *err)
{
    if (t->nsteps >= (int)(sizeof t->steps / sizeof t->steps[0]))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: too many pre-tokenizer steps", src);
    pre_step *st = &t->steps[t->nsteps];
    memset(st, 0, sizeof *st);
    st->kind = kind;
    st->behavior = behavior;
    st->invert = invert;
    st->prefix_space = prefix_space;
    if (pat) {
        int ec;
        PCRE2_SIZE eo;
        st->re = pcre2_compile((PCRE2_SPTR)pat, plen, PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP),
                               &ec, &eo, NULL);
        if (!st->re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: pre-tokenizer regex '%.80s' at %zu: %s",
                              src, pat, (size_t)eo, (char *)msg);
        }
        /* JIT is an optimisation only: without it pcre2_match interprets. */
        (void)pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE);
    }
    t->nsteps++;
    size_t l = strlen(t->pre_name);
    const char *nm = kind == ST_BYTELEVEL ? (pat ? "ByteLevel(regex)" : "ByteLevel") : "Split";
    snprintf(t->pre_name + l, sizeof t->pre_name - l, "%s%s", l ? "+" : "", nm);
    return PEFTC_OK;
}

static peftc_status add_bytelevel(bpe_tokenizer *t, int use_regex, int prefix, const char *src, peftc_error *err)
{
    return add_step_re(t, ST_BYTELEVEL, use_regex ? RE_GPT2 : NULL, PCRE2_ZERO_TERMINATED, 0,
                       BH_ISOLATED, 0, prefix, src, err);
}

static peftc_status add_split(bpe_tokenizer *t, const char *re, int beh, const char *src, peftc_error *err)
{
    return add_step_re(t, ST_SPLIT, re, PCRE2_ZERO_TERMINATED, 0, beh, 0, 0, src, err);
}

static peftc_status add_added(bpe_tokenizer *t, const char *s, size_t n, int32_t id, int special,
                              int lstrip, int rstrip)
{
    if (!n) return PEFTC_OK;
    added_tok *a = realloc(t->added, (size_t)(t->nadded + 1) * sizeof *a);
    if (!a) return PEFTC_ERR_NOMEM;
    t->added = a;
    a[t->nadded] = (added_tok){dupn(s, n), n, id, special, lstrip, rstrip};
    if (!a[t->nadded].text) return PEFTC_ERR_NOMEM;
    t->nadded++;
    if (special && id >= 0 && id < t->n_ids) t->special[id] = 1;
    return PEFTC_OK;
}

/* Buckets the added tokens by first byte (Llama-3 has 256 of them; the
 * text scan then looks only at those that can start at a position). */
static peftc_status index_added(bpe_tokenizer *t, peftc_error *err)
{
    for (int c = 0; c < 256; c++) t->added_head[c] = -1;
    if (!t->nadded) return PEFTC_OK;
    t->added_next = malloc((size_t)t->nadded * sizeof *t->added_next);
    if (!t->added_next) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int k = t->nadded - 1; k >= 0; k--) {
        unsigned char c = (unsigned char)t->added[k].text[0];
        t->added_next[k] = t->added_head[c];
        t->added_head[c] = k;
    }
    return PEFTC_OK;
}

/* ------------------------------------------------------ from GGUF arrays */

static int in_alphabet(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode(u + i, n - i, &cp);
        if (!k || cp >= 512 || cp2byte[cp] < 0) return 0;
        i += k;
    }
    return 1;
}

static peftc_status set_pre_by_name(bpe_tokenizer *t, const char *pre, peftc_error *err)
{
    static const char *llama3[] = {"llama-bpe", "llama3", "llama-v3", "falcon3", "dbrx", "smaug-bpe", "pixtral", NULL};
    static const char *qwen2[] = {"qwen2", "deepseek-r1-qwen", NULL};
    static const char *gpt4o[] = {"gpt-4o", "llama4", NULL};
    const char *src = "tokenizer.ggml.pre";
    peftc_status s;
    if (!pre || !*pre || !strcmp(pre, "gpt2") || !strcmp(pre, "gpt-2") || !strcmp(pre, "default"))
        s = add_bytelevel(t, 1, 0, src, err);
    else if (!strcmp(pre, "smollm")) {
        s = add_split(t, "\\p{N}", BH_ISOLATED, src, err);
        if (!s) s = add_bytelevel(t, 1, 0, src, err);
    } else {
        const char *re = NULL;
        for (int i = 0; llama3[i]; i++) if (!strcmp(pre, llama3[i])) { re = RE_LLAMA3; t->ignore_merges = 1; }
        for (int i = 0; qwen2[i]; i++) if (!strcmp(pre, qwen2[i])) re = RE_QWEN2;
        for (int i = 0; gpt4o[i]; i++) if (!strcmp(pre, gpt4o[i])) re = RE_GPT4O;
        if (!strcmp(pre, "tekken")) re = RE_TEKKEN;
        if (!re)
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED,
                              "tokenizer.ggml.pre: unknown pre-tokenizer '%.60s' (supported: gpt2, smollm, "
                              "llama-bpe/llama3/llama-v3/falcon3/dbrx/smaug-bpe/pixtral, qwen2/deepseek-r1-qwen, "
                              "gpt-4o/llama4, tekken)", pre);
        s = add_split(t, re, BH_ISOLATED, src, err);
        if (!s) s = add_bytelevel(t, 0, 0, src, err);
    }
    if (!s) snprintf(t->pre_name, sizeof t->pre_name, "%s", pre && *pre ? pre : "gpt2");
    return s;
}

peftc_status bpe_from_vocab(const bpe_vocab *v, bpe_tokenizer **out, peftc_error *err)
{
    *out = NULL;
    if (!v || v->n_tokens <= 0 || !v->tokens)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.tokens: no tokens");
    if (v->n_merges <= 0 || !v->merges)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.merges: the BPE model has no merges");
    bpe_tokenizer *t = tok_new(v->n_tokens);
    if (!t) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    peftc_status s = PEFTC_OK;
    cbuf sp = {0};
    for (int i = 0; i < v->n_tokens && !s; i++) {
        const char *tk = v->tokens[i];
        if (!tk) { s = peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.tokens: token %d is missing", i); break; }
        size_t n = v->token_lens ? v->token_lens[i] : strlen(tk);
        if (utf8_check(tk, n) != n) {
            s = peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.tokens: token %d is not valid UTF-8", i);
            break;
        }
        if (!n) { s = peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.tokens: token %d is empty", i); break; }
        /* A token outside the byte alphabet is respelled from its UTF-8 bytes,
         * as transformers' GGUF converter does (byte_level_tokenizer). */
        if (in_alphabet(tk, n)) s = set_token(t, i, tk, n, err);
        else {
            sp.n = 0;
            if (bytelevel_spell(&sp, tk, n)) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            else s = set_token(t, i, sp.v, sp.n, err);
        }
    }
    free(sp.v);
    if (!s) s = index_vocab(t, "tokenizer.ggml.tokens", err);
    if (!s) {
        strv *m = malloc((size_t)v->n_merges * sizeof *m);
        if (!m) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        for (int i = 0; m && i < v->n_merges; i++) {
            m[i].s = v->merges[i] ? v->merges[i] : "";
            m[i].n = v->merge_lens ? v->merge_lens[i] : strlen(m[i].s);
        }
        if (m) s = add_merges(t, m, v->n_merges, "tokenizer.ggml.merges", err);
        free(m);
    }
    if (!s) s = set_pre_by_name(t, v->pre, err);
    /* control tokens (3) become special added tokens, user-defined ones (4)
     * plain added tokens -- as transformers' converter does; a control token
     * spelled outside the byte alphabet is a llama.cpp mislabel and skipped. */
    for (int i = 0; !s && v->token_types && i < v->n_tokens; i++) {
        size_t n = v->token_lens ? v->token_lens[i] : strlen(v->tokens[i]);
        int ty = v->token_types[i];
        if (ty == BPE_TOKEN_CONTROL && in_alphabet(v->tokens[i], n)) {
            if (add_added(t, v->tokens[i], n, i, 1, 0, 0)) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        } else if (ty == BPE_TOKEN_USER_DEFINED) {
            if (add_added(t, v->tokens[i], n, i, 0, 0, 0)) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
    }
    int32_t ids[4] = {v->bos_id, v->eos_id, v->unk_id, v->pad_id};
    static const char *names[4] = {"bos", "eos", "unknown", "padding"};
    for (int i = 0; !s && i < 4; i++)
        if (ids[i] < -1 || ids[i] >= v->n_tokens)
            s = peftc_fail(err, PEFTC_ERR_FORMAT, "tokenizer.ggml.%s_token_id: %d is outside the vocabulary (%d tokens)",
                           names[i], ids[i], v->n_tokens);
    if (!s) s = index_added(t, err);
    if (!s) {
        t->bos = v->bos_id; t->eos = v->eos_id; t->unk = v->unk_id; t->pad = v->pad_id;
        if (v->add_bos && t->bos >= 0) t->prefix[t->nprefix++] = t->bos;
        if (v->add_eos && t->eos >= 0) t->suffix[t->nsuffix++] = t->eos;
        if (v->chat_template && !(t->chat_template = strdup(v->chat_template)))
            s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    if (s) { bpe_free(t); return s; }
    *out = t;
    return PEFTC_OK;
}

/* ----------------------------------------------------- from tokenizer.json */

static peftc_status parse_pre(bpe_tokenizer *t, json_t *p, const char *src, peftc_error *err)
{
    if (!json_is_object(p))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: pre_tokenizer is not an object", src);
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: pre_tokenizer without a type", src);
    if (!strcmp(type, "Sequence")) {
        json_t *a = json_object_get(p, "pretokenizers");
        size_t i;
        json_t *e;
        if (!json_is_array(a)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: Sequence without pretokenizers", src);
        json_array_foreach(a, i, e) {
            peftc_status s = parse_pre(t, e, src, err);
            if (s) return s;
        }
        return PEFTC_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        json_t *ur = json_object_get(p, "use_regex");
        int use_regex = ur ? json_is_true(ur) : 1;
        return add_bytelevel(t, use_regex, json_is_true(json_object_get(p, "add_prefix_space")), src, err);
    }
    if (!strcmp(type, "Digits"))
        return add_split(t, json_is_true(json_object_get(p, "individual_digits")) ? "\\p{N}" : "\\p{N}+",
                         BH_ISOLATED, src, err);
    if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        const char *re = json_string_value(json_object_get(pat, "Regex"));
        const char *lit = json_string_value(json_object_get(pat, "String"));
        const char *bh = json_string_value(json_object_get(p, "behavior"));
        static const char *bhs[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int b = -1;
        for (int i = 0; bh && i < 5; i++) if (!strcmp(bh, bhs[i])) b = i;
        if ((!re && !lit) || b < 0)
            return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: Split pre-tokenizer with pattern/behavior not understood", src);
        const char *ps = re ? re : lit;
        return add_step_re(t, ST_SPLIT, ps, strlen(ps), !re, b, json_is_true(json_object_get(p, "invert")), 0,
                           src, err);
    }
    return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: pre_tokenizer type %s is not supported "
                      "(ByteLevel, Split, Digits, Sequence are)", src, type);
}

/* Parses a post_processor into prefix/suffix ids. */
static peftc_status parse_post(bpe_tokenizer *t, json_t *p, const char *src, peftc_error *err)
{
    if (!p || json_is_null(p)) return PEFTC_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: post_processor without a type", src);
    if (!strcmp(type, "ByteLevel")) return PEFTC_OK;   /* offsets only */
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(p, "processors"), i, e) {
            peftc_status s = parse_post(t, e, src, err);
            if (s) return s;
        }
        return PEFTC_OK;
    }
    if (strcmp(type, "TemplateProcessing"))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: post_processor type %s is not supported "
                          "(TemplateProcessing, ByteLevel, Sequence are)", src, type);
    json_t *single = json_object_get(p, "single"), *sp = json_object_get(p, "special_tokens");
    size_t i;
    json_t *e;
    int seen_a = 0;
    t->nprefix = t->nsuffix = 0;
    json_array_foreach(single, i, e) {
        json_t *st = json_object_get(e, "SpecialToken");
        if (json_object_get(e, "Sequence")) { seen_a = 1; continue; }
        const char *name = json_string_value(json_object_get(st, "id"));
        json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids");
        size_t k;
        json_t *x;
        if (!name || !json_is_array(ids))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: TemplateProcessing names special token '%s' without ids",
                              src, name ? name : "?");
        json_array_foreach(ids, k, x) {
            int32_t id = (int32_t)json_integer_value(x);
            int *nn = seen_a ? &t->nsuffix : &t->nprefix;
            int32_t *arr = seen_a ? t->suffix : t->prefix;
            if (*nn >= 8 || id < 0 || id >= t->n_ids)
                return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: TemplateProcessing special token '%s' not usable",
                                  src, name);
            arr[(*nn)++] = id;
        }
    }
    if (!seen_a) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: TemplateProcessing single has no $A", src);
    return PEFTC_OK;
}

static const char *tok_str(json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    return json_string_value(json_object_get(v, "content"));
}

/* tokenizer_config.json's bytes (text, len), named cfg in messages. */
static peftc_status read_config(bpe_tokenizer *t, const char *text, size_t len, const char *cfg, peftc_error *err)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: %s", cfg, je.line, je.text);
    peftc_status s = PEFTC_OK;
    json_t *ct = json_object_get(j, "chat_template");
    const char *tmpl = json_string_value(ct);
    if (json_is_array(ct)) {   /* [{name, template}]: the default one */
        size_t i;
        json_t *e;
        json_array_foreach(ct, i, e) {
            const char *nm = json_string_value(json_object_get(e, "name"));
            if (nm && !strcmp(nm, "default")) tmpl = json_string_value(json_object_get(e, "template"));
        }
    }
    if (tmpl && !(t->chat_template = strdup(tmpl))) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    static const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int32_t *dst[4] = {&t->bos, &t->eos, &t->unk, &t->pad};
    for (int k = 0; k < 4 && !s; k++) {
        const char *v = tok_str(json_object_get(j, keys[k]));
        if (!v) continue;
        int32_t id = vocab_find(t, v, strlen(v));
        for (int i = 0; id < 0 && i < t->nadded; i++)
            if (!strcmp(t->added[i].text, v)) id = t->added[i].id;
        if (id < 0) s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %s '%.60s' is not a token", cfg, keys[k], v);
        else *dst[k] = id;
    }
    /* add_bos_token / add_eos_token: transformers rebuilds the post-processor
     * from these flags when the config sets them. */
    if (!s && json_is_true(json_object_get(j, "add_bos_token")) && t->bos >= 0 &&
        !(t->nprefix && t->prefix[0] == t->bos)) {
        memmove(t->prefix + 1, t->prefix, (size_t)(t->nprefix < 7 ? t->nprefix : 7) * sizeof *t->prefix);
        t->prefix[0] = t->bos;
        if (t->nprefix < 8) t->nprefix++;
    }
    if (!s && json_is_false(json_object_get(j, "add_bos_token")) && t->nprefix && t->prefix[0] == t->bos) {
        memmove(t->prefix, t->prefix + 1, (size_t)(t->nprefix - 1) * sizeof *t->prefix);
        t->nprefix--;
    }
    if (!s && json_is_true(json_object_get(j, "add_eos_token")) && t->eos >= 0 &&
        !(t->nsuffix && t->suffix[t->nsuffix - 1] == t->eos) && t->nsuffix < 8)
        t->suffix[t->nsuffix++] = t->eos;
    json_decref(j);
    return s;
}

peftc_status bpe_from_tokenizer_json(const char *path, bpe_tokenizer **out, peftc_error *err)
{
    *out = NULL;
    if (!peftc_file_exists(path)) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open", path);
    /* tokenizer_config.json beside it, if present */
    char cfg[4096];
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 1;
    int have_cfg = snprintf(cfg, sizeof cfg, "%.*s/tokenizer_config.json", dl, slash ? path : ".") < (int)sizeof cfg &&
                   peftc_file_exists(cfg);
    char *tj = NULL, *ct = NULL;
    size_t tn = 0, cn = 0;
    peftc_status s = peftc_read_file(path, &tj, &tn, err);
    if (!s && have_cfg) s = peftc_read_file(cfg, &ct, &cn, err);
    if (!s) s = bpe_from_tokenizer_json_mem(tj, tn, path, ct, cn, cfg, out, err);
    free(tj);
    free(ct);
    return s;
}

peftc_status bpe_from_tokenizer_json_mem(const char *text, size_t len, const char *path, const char *cfg_text, size_t cfg_len,
                                         const char *cfg_name, bpe_tokenizer **out, peftc_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: %s", path, je.line, je.text);
    bpe_tokenizer *t = NULL;
    peftc_status s = PEFTC_OK;
    json_t *model = json_object_get(j, "model");
    const char *mt = json_string_value(json_object_get(model, "type"));
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(j, "added_tokens");
    json_t *norm = json_object_get(j, "normalizer"), *dec = json_object_get(j, "decoder");
    const char *dt = json_string_value(json_object_get(dec, "type"));
    const char *nt = json_string_value(json_object_get(norm, "type"));
    const char *cwp = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *eow = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if (!mt || strcmp(mt, "BPE")) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: model type %s is not BPE", path, mt ? mt : "(none)");
        goto done;
    }
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model needs vocab (object) and merges (array)", path);
        goto done;
    }
    if (json_is_true(json_object_get(model, "byte_fallback")) || (cwp && *cwp) || (eow && *eow)) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: BPE byte_fallback / continuing_subword_prefix / "
                       "end_of_word_suffix are not supported", path);
        goto done;
    }
    if (norm && !json_is_null(norm) && !(nt && !strcmp(nt, "NFC"))) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: normalizer %s is not supported (none or NFC is)",
                       path, nt ? nt : "?");
        goto done;
    }
    if (dec && !json_is_null(dec) && !(dt && !strcmp(dt, "ByteLevel"))) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: decoder %s is not supported (ByteLevel is)", path, dt ? dt : "?");
        goto done;
    }
    long long maxid = -1;
    const char *key;
    json_t *val;
    size_t i;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > (1 << 24)) {
            s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: vocab entry '%.60s' has a bad id", path, key);
            goto done;
        }
        if (json_integer_value(val) > maxid) maxid = json_integer_value(val);
    }
    json_array_foreach(added, i, val) {
        json_int_t id = json_integer_value(json_object_get(val, "id"));
        if (!json_is_string(json_object_get(val, "content")) || id < 0 || id > (1 << 24)) {
            s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: added_tokens[%zu] needs content and id", path, i);
            goto done;
        }
        if (id > maxid) maxid = id;
    }
    if (maxid < 0) { s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: empty vocabulary", path); goto done; }
    if (!(t = tok_new((int)maxid + 1))) { s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    t->nfc = nt != NULL;
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        if (t->tok[id]) {
            s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: id %d is given to '%.40s' and '%.40s'", path, id, t->tok[id], key);
            goto done;
        }
        if ((s = set_token(t, id, key, strlen(key), err)))
            goto done;
    }
    json_array_foreach(added, i, val) {
        const char *c = json_string_value(json_object_get(val, "content"));
        int32_t id = (int32_t)json_integer_value(json_object_get(val, "id"));
        if (json_is_true(json_object_get(val, "single_word"))) {
            s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: added token '%.40s' has single_word (not supported)", path, c);
            goto done;
        }
        /* an added token not in the model's vocab is spelled as its text
         * (its decode falls back to its raw bytes) */
        if (!t->tok[id] && (s = set_token(t, id, c, strlen(c), err))) goto done;
        if (add_added(t, c, strlen(c), id, json_is_true(json_object_get(val, "special")),
                      json_is_true(json_object_get(val, "lstrip")), json_is_true(json_object_get(val, "rstrip")))) {
            s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((s = index_vocab(t, path, err)) || (s = index_added(t, err))) goto done;
    {
        size_t nm = json_array_size(merges);
        strv *m = calloc(nm ? nm : 1, sizeof *m);
        char **own = calloc(nm ? nm : 1, sizeof *own);
        if (!m || !own) s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        for (i = 0; !s && i < nm; i++) {
            json_t *e = json_array_get(merges, i);
            if (json_is_string(e)) {
                m[i].s = json_string_value(e);
                m[i].n = json_string_length(e);
            } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                       json_is_string(json_array_get(e, 1))) {
                /* [a, b] pair form (tokenizers >= 0.20): joined as "a b" */
                const char *a = json_string_value(json_array_get(e, 0)), *b = json_string_value(json_array_get(e, 1));
                size_t na = strlen(a), nb = strlen(b);
                own[i] = malloc(na + nb + 2);
                if (!own[i]) { s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
                memcpy(own[i], a, na);
                own[i][na] = ' ';
                memcpy(own[i] + na + 1, b, nb + 1);
                m[i].s = own[i];
                m[i].n = na + nb + 1;
            } else
                s = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: merges[%zu] is neither \"a b\" nor [a, b]", path, i);
        }
        if (!s) s = add_merges(t, m, (int)nm, path, err);
        for (i = 0; own && i < nm; i++) free(own[i]);
        free(own);
        free(m);
        if (s) goto done;
    }
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk = t->model_unk = vocab_find(t, unk, strlen(unk));
    json_t *pre = json_object_get(j, "pre_tokenizer");
    if (!pre || json_is_null(pre)) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: no pre_tokenizer: only byte-level BPE is supported", path);
        goto done;
    }
    if ((s = parse_pre(t, pre, path, err))) goto done;
    int has_bl = 0;
    for (int k = 0; k < t->nsteps; k++) has_bl |= t->steps[k].kind == ST_BYTELEVEL;
    if (!has_bl) {
        s = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: pre_tokenizer has no ByteLevel: only byte-level BPE is supported", path);
        goto done;
    }
    if ((s = parse_post(t, json_object_get(j, "post_processor"), path, err))) goto done;
    if (t->nprefix) t->bos = t->prefix[0];
    if (cfg_text) s = read_config(t, cfg_text, cfg_len, cfg_name, err);
done:
    json_decref(j);
    if (s) { bpe_free(t); return s; }
    *out = t;
    return PEFTC_OK;
}

/* ------------------------------------------------------------ accessors */

int bpe_vocab_size(const bpe_tokenizer *t) { return t->n_ids; }
size_t bpe_max_token_bytes(const bpe_tokenizer *t)
{
    size_t m = 1;
    for (int i = 0; i < t->n_ids; i++)
        if (t->raw && t->raw_len[i] > m) m = t->raw_len[i];
    for (int i = 0; i < t->nadded; i++) {
        if (t->added[i].lstrip || t->added[i].rstrip) return 0;   /* absorbs any run of spaces */
        if (t->added[i].len > m) m = t->added[i].len;
    }
    return m;
}

int32_t bpe_bos_id(const bpe_tokenizer *t) { return t->bos; }
int32_t bpe_eos_id(const bpe_tokenizer *t) { return t->eos; }
int32_t bpe_pad_id(const bpe_tokenizer *t) { return t->pad; }
int32_t bpe_unk_id(const bpe_tokenizer *t) { return t->unk; }
int32_t bpe_token_id(const bpe_tokenizer *t, const char *s, size_t n) { return vocab_find(t, s, n); }
int bpe_is_special(const bpe_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->special[id]; }
const char *bpe_pre_name(const bpe_tokenizer *t) { return t->pre_name; }

/* ------------------------------------------------------------- encoding */

typedef struct {
    plist a, b;             /* pre-tokenizer ping-pong */
    cbuf word;              /* byte-level spelling */
    struct sym { int32_t id; int prev, next; } *sym;
    size_t symcap;
    struct hent { int32_t rank, pos, id; } *heap;
    size_t hn, hcap;
    pcre2_match_data *md;
} enc_ctx;

static void ctx_free(enc_ctx *c)
{
    pl_free(&c->a);
    pl_free(&c->b);
    free(c->word.v);
    free(c->sym);
    free(c->heap);
    if (c->md) pcre2_match_data_free(c->md);
}

static int hless(const struct hent *x, const struct hent *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(enc_ctx *c, struct hent e)
{
    if (c->hn == c->hcap) {
        size_t cap = c->hcap ? c->hcap * 2 : 64;
        struct hent *v = realloc(c->heap, cap * sizeof *v);
        if (!v) return -1;
        c->heap = v;
        c->hcap = cap;
    }
    size_t i = c->hn++;
    while (i && hless(&e, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = e;
    return 0;
}

static struct hent heap_pop(enc_ctx *c)
{
    struct hent top = c->heap[0], last = c->heap[--c->hn];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < c->hn && hless(&c->heap[l], &last)) m = l;
        if (l + 1 < c->hn && hless(&c->heap[l + 1], m == i ? &last : &c->heap[l])) m = l + 1;
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (c->hn) c->heap[i] = last;
    return top;
}

static int push_pair(const bpe_tokenizer *t, enc_ctx *c, int pos)
{
    int nx = c->sym[pos].next;
    if (nx < 0) return 0;
    const pair_slot *p = pair_find(t, c->sym[pos].id, c->sym[nx].id);
    if (!p) return 0;
    return heap_push(c, (struct hent){p->rank, pos, p->id});
}

/* BPE on one word (raw bytes w[0..n)), appending ids. */
static peftc_status bpe_word(const bpe_tokenizer *t, enc_ctx *c, const char *w, size_t n, ibuf *out,
                             peftc_error *err)
{
    if (!n) return PEFTC_OK;
    if (t->ignore_merges) {
        c->word.n = 0;
        if (bytelevel_spell(&c->word, w, n)) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        int32_t id = vocab_find(t, c->word.v, c->word.n);
        if (id >= 0) return ib_push(out, id) ? peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory") : PEFTC_OK;
    }
    if (n > c->symcap) {
        void *v = realloc(c->sym, n * sizeof *c->sym);
        if (!v) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        c->sym = v;
        c->symcap = n;
    }
    /* A byte without a token becomes the model's unk_token, or is dropped
     * when there is none -- HF's BPE does the same (SmolLM2's vocabulary has
     * no token for some control bytes, e.g. 0x04, and HF drops them; the GGUF
     * converter builds its BPE without unk_token too). */
    int ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(unsigned char)w[i]];
        if (id < 0) id = t->model_unk;
        if (id < 0) continue;
        c->sym[ns] = (struct sym){id, ns - 1, ns + 1};
        ns++;
    }
    if (!ns) return PEFTC_OK;
    c->sym[ns - 1].next = -1;
    c->hn = 0;
    for (int i = 0; i + 1 < ns; i++)
        if (push_pair(t, c, i)) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    while (c->hn) {
        struct hent top = heap_pop(c);
        struct sym *s = &c->sym[top.pos];
        if (s->id < 0 || s->next < 0) continue;   /* merged away */
        const pair_slot *p = pair_find(t, s->id, c->sym[s->next].id);
        if (!p || p->id != top.id) continue;      /* stale entry */
        int r = s->next;
        s->id = top.id;
        s->next = c->sym[r].next;
        if (s->next >= 0) c->sym[s->next].prev = top.pos;
        c->sym[r].id = -1;
        if ((s->prev >= 0 && push_pair(t, c, s->prev)) || push_pair(t, c, top.pos))
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i >= 0; i = c->sym[i].next)
        if (ib_push(out, c->sym[i].id)) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    return PEFTC_OK;
}

/* One pre-tokenizer step: from c->a (text pieces and added tokens) into c->b. */
static peftc_status run_step(const pre_step *st, enc_ctx *c, peftc_error *err)
{
    plist *in = &c->a, *out = &c->b;
    out->np = 0;
    out->s.n = 0;
    cbuf tmp = {0};
    for (size_t k = 0; k < in->np; k++) {
        piece pc = in->p[k];
        const char *s = in->s.v + pc.off;
        size_t n = pc.len;
        if (pc.id >= 0) {
            if (pl_add(out, s, n, pc.id)) goto nomem;
            continue;
        }
        if (st->kind == ST_BYTELEVEL && st->prefix_space && (n == 0 || s[0] != ' ')) {
            tmp.n = 0;
            if (cb_add(&tmp, " ", 1) || cb_add(&tmp, s, n)) goto nomem;
            s = tmp.v;
            n = tmp.n;
        }
        if (!st->re) {
            if (pl_add(out, s, n, -1)) goto nomem;
            continue;
        }
        /* segments (start, end, is_match) covering s */
        size_t first = out->np, pos = 0, prev = 0;
        int prev_match = 0;
        while (pos <= n) {
            /* the text was validated once (utf8_check); PCRE2 would otherwise check
             * the whole subject again on every call, quadratic in a long piece */
            int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                free(tmp.v);
                return peftc_fail(err, PEFTC_ERR_INPUT, "pre-tokenizer regex failed (PCRE2 error %d)", rc);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) {   /* empty match: HF drops it; move on one character */
                pos = me + 1;
                while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
                continue;
            }
            /* segments: non-match [prev, ms), match [ms, me) */
            for (int seg = 0; seg < 2; seg++) {
                size_t a = seg ? ms : prev, b = seg ? me : ms;
                if (a == b) continue;
                int ism = seg ^ st->invert;
                int beh = st->behavior;
                if (beh == BH_REMOVED && ism) { prev_match = ism; continue; }
                int merge = 0;
                if (out->np > first) {
                    if (beh == BH_MERGED_PREV && ism && !prev_match) merge = 1;
                    if (beh == BH_CONTIGUOUS && ism == prev_match) merge = 1;
                    if (beh == BH_MERGED_NEXT && prev_match && !ism) merge = 1;
                }
                if (merge) {   /* pieces are contiguous in out->s: extend the last one */
                    if (cb_add(&out->s, s + a, b - a)) goto nomem;
                    out->p[out->np - 1].len += b - a;
                } else if (pl_add(out, s + a, b - a, -1)) goto nomem;
                prev_match = ism;
            }
            prev = pos = me;
        }
        if (prev < n) {
            int ism = st->invert;
            int beh = st->behavior;
            if (!(beh == BH_REMOVED && ism)) {
                int merge = out->np > first &&
                            ((beh == BH_MERGED_PREV && ism && !prev_match) ||
                             (beh == BH_CONTIGUOUS && ism == prev_match) ||
                             (beh == BH_MERGED_NEXT && prev_match && !ism));
                if (merge) {
                    if (cb_add(&out->s, s + prev, n - prev)) goto nomem;
                    out->p[out->np - 1].len += n - prev;
                } else if (pl_add(out, s + prev, n - prev, -1)) goto nomem;
            }
        }
    }
    free(tmp.v);
    plist sw = c->a;
    c->a = c->b;
    c->b = sw;
    return PEFTC_OK;
nomem:
    free(tmp.v);
    return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
}

/* Finds the leftmost-longest added token in s[from..n) (special ones only
 * if parse_special); returns its index or -1, with *at its start. */
static int find_added(const bpe_tokenizer *t, const char *s, size_t n, size_t from, int parse_special, size_t *at)
{
    if (!t->nadded) return -1;
    for (size_t i = from; i < n; i++) {
        int best = -1;
        for (int k = t->added_head[(unsigned char)s[i]]; k >= 0; k = t->added_next[k]) {
            const added_tok *a = &t->added[k];
            if (a->special && !parse_special) continue;
            if (a->len > n - i || (best >= 0 && a->len <= t->added[best].len)) continue;
            if (!memcmp(s + i, a->text, a->len)) best = k;
        }
        if (best >= 0) { *at = i; return best; }
    }
    return -1;
}

static peftc_status add_text_piece(const bpe_tokenizer *t, plist *l, const char *s, size_t n, peftc_error *err)
{
    if (!n) return PEFTC_OK;
    if (t->nfc) {
        utf8proc_uint8_t *o = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &o,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "NFC: %s", utf8proc_errmsg(r));
        int bad = pl_add(l, (const char *)o, (size_t)r, -1);
        free(o);
        return bad ? peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory") : PEFTC_OK;
    }
    return pl_add(l, s, n, -1) ? peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory") : PEFTC_OK;
}

static peftc_status encode_buf(const bpe_tokenizer *t, const char *text, size_t len, int add_special,
                               int parse_special, ibuf *out, peftc_error *err)
{
    if (!text && len) return peftc_fail(err, PEFTC_ERR_INPUT, "text is NULL");
    size_t bad = utf8_check(text, len);
    if (bad != len)
        return peftc_fail(err, PEFTC_ERR_INPUT, "invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                          (unsigned char)text[bad]);
    enc_ctx c = {0};
    peftc_status s = PEFTC_OK;
    c.md = pcre2_match_data_create(4, NULL);
    if (!c.md) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    if (add_special)
        for (int i = 0; i < t->nprefix; i++)
            if (ib_push(out, t->prefix[i])) { s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    /* 1. added tokens in the raw text */
    size_t pos = 0;
    while (pos < len) {
        size_t at;
        int k = find_added(t, text, len, pos, parse_special, &at);
        size_t end = k < 0 ? len : at;
        size_t te = end;
        if (k >= 0 && t->added[k].lstrip)
            while (te > pos) {   /* strip whitespace before the token */
                size_t q = te - 1;
                while (q > pos && ((unsigned char)text[q] & 0xC0) == 0x80) q--;
                uint32_t cp;
                utf8_decode((const unsigned char *)text + q, te - q, &cp);
                if (!is_ws(cp)) break;
                te = q;
            }
        if ((s = add_text_piece(t, &c.a, text + pos, te - pos, err))) goto done;
        if (k < 0) break;
        if (pl_add(&c.a, text + at, t->added[k].len, t->added[k].id)) {
            s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            goto done;
        }
        pos = at + t->added[k].len;
        if (t->added[k].rstrip)
            while (pos < len) {
                uint32_t cp;
                size_t q = utf8_decode((const unsigned char *)text + pos, len - pos, &cp);
                if (!is_ws(cp)) break;
                pos += q;
            }
    }
    /* 2. pre-tokenizer steps */
    for (int i = 0; i < t->nsteps; i++)
        if ((s = run_step(&t->steps[i], &c, err))) goto done;
    /* 3. BPE per word */
    for (size_t k = 0; k < c.a.np; k++) {
        piece pc = c.a.p[k];
        if (pc.id >= 0) {
            if (ib_push(out, pc.id)) { s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
        } else if ((s = bpe_word(t, &c, c.a.s.v + pc.off, pc.len, out, err)))
            goto done;
        if (out->n > INT_MAX / 2) { s = peftc_fail(err, PEFTC_ERR_INPUT, "text gives too many tokens"); goto done; }
    }
    if (add_special)
        for (int i = 0; i < t->nsuffix; i++)
            if (ib_push(out, t->suffix[i])) { s = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
done:
    ctx_free(&c);
    return s;
}

peftc_status bpe_encode(const bpe_tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                        int32_t *ids, int cap, int *n, peftc_error *err)
{
    ibuf b = {0};
    *n = 0;
    peftc_status s = encode_buf(t, text, len, add_special, parse_special, &b, err);
    if (!s) {
        *n = (int)b.n;
        size_t k = b.n < (size_t)(cap > 0 ? cap : 0) ? b.n : (size_t)(cap > 0 ? cap : 0);
        if (k) memcpy(ids, b.v, k * sizeof *ids);
        if (b.n > k) s = peftc_fail(err, PEFTC_ERR_INPUT, "text gives %zu tokens, more than the %d that fit", b.n, cap);
    }
    free(b.v);
    return s;
}

peftc_status bpe_encode_alloc(const bpe_tokenizer *t, const char *text, size_t len, int add_special,
                              int parse_special, int32_t **ids, int *n, peftc_error *err)
{
    ibuf b = {0};
    *ids = NULL;
    *n = 0;
    peftc_status s = encode_buf(t, text, len, add_special, parse_special, &b, err);
    if (s) { free(b.v); return s; }
    if (!b.v && !(b.v = malloc(sizeof *b.v))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    *ids = b.v;
    *n = (int)b.n;
    return PEFTC_OK;
}

/* ------------------------------------------------------------- decoding */

peftc_status bpe_decode_token(const bpe_tokenizer *t, int32_t id, char *out, size_t cap, size_t *len,
                              peftc_error *err)
{
    if (id < 0 || id >= t->n_ids || !t->raw[id]) {
        *len = 0;
        return peftc_fail(err, PEFTC_ERR_INPUT, "token id %d is not in the vocabulary (%d ids)", id, t->n_ids);
    }
    *len = t->raw_len[id];
    memcpy(out, t->raw[id], *len < cap ? *len : cap);
    if (*len > cap) return peftc_fail(err, PEFTC_ERR_INPUT, "token %d needs %zu bytes, %zu given", id, *len, cap);
    return PEFTC_OK;
}

peftc_status bpe_decode(const bpe_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out,
                        size_t *len, peftc_error *err)
{
    cbuf b = {0};
    *out = NULL;
    if (cb_add(&b, "", 0)) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->raw[id]) {
            free(b.v);
            return peftc_fail(err, PEFTC_ERR_INPUT, "ids[%d] = %d is not in the vocabulary (%d ids)", i, id, t->n_ids);
        }
        if (skip_special && t->special[id]) continue;
        if (cb_add(&b, t->raw[id], t->raw_len[id])) {
            free(b.v);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        }
    }
    *out = b.v;
    if (len) *len = b.n;
    return PEFTC_OK;
}

/* Length a UTF-8 lead byte announces (1 for ASCII or a stray byte). */
static int utf8_need(unsigned char c)
{
    return c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 1;
}

peftc_status bpe_stream_push(const bpe_tokenizer *t, bpe_stream *st, int32_t id, char *out, size_t cap,
                             size_t *len, peftc_error *err)
{
    *len = 0;
    if (id < 0 || id >= t->n_ids || !t->raw[id])
        return peftc_fail(err, PEFTC_ERR_INPUT, "token id %d is not in the vocabulary (%d ids)", id, t->n_ids);
    size_t tl = t->raw_len[id], total = (size_t)st->npend + tl;
    if (cap < total) return peftc_fail(err, PEFTC_ERR_INPUT, "stream output needs %zu bytes, %zu given", total, cap);
    memcpy(out, st->pend, (size_t)st->npend);
    memcpy(out + st->npend, t->raw[id], tl);
    /* hold back a trailing lead byte + continuation bytes that are still
     * short of the length the lead byte announces */
    size_t keep = 0;
    for (size_t back = 1; back <= 3 && back <= total; back++) {
        unsigned char c = (unsigned char)out[total - back];
        if ((c & 0xC0) == 0x80) continue;
        if (utf8_need(c) > (int)back) keep = back;
        break;
    }
    st->npend = (int)keep;
    memcpy(st->pend, out + total - keep, keep);
    *len = total - keep;
    return PEFTC_OK;
}

size_t bpe_stream_flush(bpe_stream *st, char *out, size_t cap)
{
    size_t n = (size_t)st->npend < cap ? (size_t)st->npend : cap;
    memcpy(out, st->pend, n);
    st->npend = 0;
    return n;
}

/* ------------------------------------------------------- chat templates */

/* Templates are recognised by their exact text (a Jinja interpreter is out of
 * scope); the ChatML-with-default-system family has the default message as a
 * parameter:
 *   chatml-default-system  SmolLM2-Instruct: a system turn with the default
 *                          text when the first message is not system
 *   chatml                 the plain ChatML loop
 *   llama3                 Llama-3-Instruct (bos_token, content | trim)
 *   zephyr                 Zephyr-7B-beta / TinyLlama-Chat (<|user|> ... eos_token)
 * Whitespace is what transformers' Jinja environment makes of them
 * (trim_blocks, lstrip_blocks: the newline after a block tag is dropped).
 */
static const char CHATML_SYS_A[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n";
static const char CHATML_SYS_B[] =
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
static const char LLAMA3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

static const char ZEPHYR[] =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

/* Compares ignoring trailing whitespace of the template (files often end in \n). */
static int same_text(const char *t, const char *want)
{
    size_t n = strlen(t), w = strlen(want);
    while (n > w && (t[n - 1] == '\n' || t[n - 1] == ' ')) n--;
    return n == w && !memcmp(t, want, w);
}

/* For chatml-default-system: the default system text, or NULL. */
static const char *chatml_default_system(const char *t, size_t *len)
{
    size_t na = sizeof CHATML_SYS_A - 1, nb = sizeof CHATML_SYS_B - 1, n = strlen(t);
    while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == ' ')) n--;
    if (n < na + nb || memcmp(t, CHATML_SYS_A, na) || memcmp(t + n - nb, CHATML_SYS_B, nb)) return NULL;
    const char *s = t + na;
    size_t sl = n - na - nb;
    /* a plain string literal: no quote, backslash or Jinja delimiters inside */
    for (size_t i = 0; i < sl; i++)
        if (s[i] == '\'' || s[i] == '\\' || s[i] == '{' || s[i] == '}') return NULL;
    *len = sl;
    return s;
}

const char *bpe_chat_family(const char *tmpl)
{
    size_t l;
    if (!tmpl) return NULL;
    if (chatml_default_system(tmpl, &l)) return "chatml-default-system";
    if (same_text(tmpl, CHATML)) return "chatml";
    if (same_text(tmpl, LLAMA3)) return "llama3";
    if (same_text(tmpl, ZEPHYR)) return "zephyr";
    return NULL;
}

/* Python's str.strip() whitespace (what Jinja's trim filter uses) for ASCII
 * and the common Unicode spaces. */
static void py_strip(const char *s, size_t *a, size_t *b)
{
    size_t i = 0, n = strlen(s);
    uint32_t cp;
    size_t k;
    while (i < n && (k = utf8_decode((const unsigned char *)s + i, n - i, &cp)) &&
           (is_ws(cp) || (cp >= 0x1C && cp <= 0x1F)))
        i += k;
    while (n > i) {
        size_t q = n - 1;
        while (q > i && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
        if (!utf8_decode((const unsigned char *)s + q, n - q, &cp) || !(is_ws(cp) || (cp >= 0x1C && cp <= 0x1F))) break;
        n = q;
    }
    *a = i;
    *b = n;
}

peftc_status bpe_chat_render(const char *tmpl, const char *bos, const char *eos, const bpe_chat_msg *m, int n,
                             int add_gen, char **out, peftc_error *err)
{
    *out = NULL;
    if (!tmpl) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "the tokenizer has no chat template");
    const char *fam = bpe_chat_family(tmpl);
    if (!fam)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "chat template not recognised (supported: ChatML, ChatML with "
                          "a default system message as in SmolLM2, Llama-3, Zephyr): '%.60s...'", tmpl);
    for (int i = 0; i < n; i++)
        if (!m[i].role || !m[i].content)
            return peftc_fail(err, PEFTC_ERR_INPUT, "chat message %d has no role or content", i);
    cbuf b = {0};
    int bad = cb_add(&b, "", 0);
    if (!strcmp(fam, "llama3")) {
        for (int i = 0; i < n && !bad; i++) {
            size_t a, e;
            py_strip(m[i].content, &a, &e);
            if (i == 0 && bos) bad |= cb_add(&b, bos, strlen(bos));
            bad |= cb_add(&b, "<|start_header_id|>", 19) || cb_add(&b, m[i].role, strlen(m[i].role)) ||
                   cb_add(&b, "<|end_header_id|>\n\n", 19) || cb_add(&b, m[i].content + a, e - a) ||
                   cb_add(&b, "<|eot_id|>", 10);
        }
        if (add_gen) bad |= cb_add(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n", 47);
    } else if (!strcmp(fam, "zephyr")) {
        /* per known role "<|role|>\n" content eos "\n"; other roles print
         * nothing; the generation prompt follows the last message only */
        for (int i = 0; i < n && !bad; i++) {
            const char *r = m[i].role;
            if (strcmp(r, "user") && strcmp(r, "system") && strcmp(r, "assistant")) continue;
            bad |= cb_add(&b, "<|", 2) || cb_add(&b, r, strlen(r)) || cb_add(&b, "|>\n", 3) ||
                   cb_add(&b, m[i].content, strlen(m[i].content)) || (eos && cb_add(&b, eos, strlen(eos))) ||
                   cb_add(&b, "\n", 1);
        }
        if (add_gen && n > 0) bad |= cb_add(&b, "<|assistant|>\n", 14);
    } else {
        size_t sl = 0;
        const char *sys = !strcmp(fam, "chatml-default-system") ? chatml_default_system(tmpl, &sl) : NULL;
        for (int i = 0; i < n && !bad; i++) {
            if (i == 0 && sys && strcmp(m[0].role, "system"))
                bad |= cb_add(&b, "<|im_start|>system\n", 19) || cb_add(&b, sys, sl) || cb_add(&b, "<|im_end|>\n", 11);
            bad |= cb_add(&b, "<|im_start|>", 12) || cb_add(&b, m[i].role, strlen(m[i].role)) || cb_add(&b, "\n", 1) ||
                   cb_add(&b, m[i].content, strlen(m[i].content)) || cb_add(&b, "<|im_end|>\n", 11);
        }
        if (add_gen) bad |= cb_add(&b, "<|im_start|>assistant\n", 22);
    }
    if (bad) {
        free(b.v);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    *out = b.v;
    return PEFTC_OK;
}

peftc_status bpe_chat_apply(const bpe_tokenizer *t, const bpe_chat_msg *m, int n, int add_gen, char **out,
                            peftc_error *err)
{
    const char *bos = t->bos >= 0 ? t->raw[t->bos] : NULL;
    const char *eos = t->eos >= 0 ? t->raw[t->eos] : NULL;
    return bpe_chat_render(t->chat_template, bos, eos, m, n, add_gen, out, err);
}
