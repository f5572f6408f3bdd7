/* test_tokenizer.c: the WordPiece tokenizer against ids from the Hugging Face
 * reference, plus bad input (missing or broken tokenizer files, invalid
 * UTF-8, tiny max_len, a 1 MB line, random bytes).
 *
 * Run from the repository root (it loads models/all-MiniLM-L6-v2).  The
 * reference ids below were produced with tests/ref_tokenize.py (HF tokenizers
 * 0.23.3), e.g.
 *   printf 'Hello, world!\n' | /usr/bin/python3 tests/ref_tokenize.py models/all-MiniLM-L6-v2 --type-ids
 * with --pairs (a TAB separates the pair) and --max-len N where noted. */
#include "peftc.h"
#include "testlib.h"

#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MODEL "models/all-MiniLM-L6-v2"
#define MAXT 512

static int32_t ids[MAXT], types[MAXT];

/* Encodes and compares with want[0..nwant) (and want_types if not NULL). */
static int encode_is(const peftc_tokenizer *tok, const char *text, size_t tl, const char *pair, size_t pl,
                     int max_len, const int32_t *want, int nwant, const int32_t *want_types)
{
    peftc_error err = {0};
    int n = -1;
    if (peftc_tokenizer_encode(tok, text, tl, pair, pl, max_len, ids, types, &n, &err) != PEFTC_OK) {
        printf("#   encode failed: %s\n", err.msg);
        return 0;
    }
    int same = n == nwant;
    for (int i = 0; same && i < n; i++) same = ids[i] == want[i] && (!want_types || types[i] == want_types[i]);
    if (!same) {
        printf("#   got %d ids:", n);
        for (int i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
        printf("\n");
    }
    return same;
}

#define ENC(tok, text, want) encode_is(tok, text, strlen(text), NULL, 0, MAXT, want, (int)(sizeof want / sizeof want[0]), NULL)

static void write_file(const char *dir, const char *name, const char *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("#   cannot write %s\n", path);
        return;
    }
    fwrite(data, 1, n, f);
    fclose(f);
}

static void write_str(const char *dir, const char *name, const char *s) { write_file(dir, name, s, strlen(s)); }

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static char *make_dir(void)
{
    static char buf[8][64];
    static int k;
    char *p = buf[k++ % 8];
    strcpy(p, "/tmp/peftc_tok_XXXXXX");
    return mkdtemp(p);
}

/* Loads dir and expects failure code with a message containing needle. */
static void load_fails(const char *dir, peftc_status code, const char *needle, const char *what)
{
    peftc_tokenizer *tok = (peftc_tokenizer *)1;
    peftc_error err = {0};
    peftc_status st = peftc_tokenizer_load(dir, &tok, &err);
    CHECK(st == code && tok == NULL && strstr(err.msg, needle) && !strchr(err.msg, '\n'),
          "%s: %s (status %d, \"%s\")", what, peftc_status_name(code), (int)st, err.msg);
    if (st == PEFTC_OK) peftc_tokenizer_free(tok);
}

static const char *TINY_JSON =
    "{\"version\": \"1.0\", \"added_tokens\": ["
    "{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
    "{\"id\": 1, \"content\": \"[UNK]\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
    "{\"id\": 2, \"content\": \"[CLS]\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
    "{\"id\": 3, \"content\": \"[SEP]\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],"
    " \"normalizer\": {\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true, \"strip_accents\": null, \"lowercase\": true},"
    " \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"},"
    " \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"continuing_subword_prefix\": \"##\", \"max_input_chars_per_word\": 100,"
    " \"vocab\": {\"[PAD]\": 0, \"[UNK]\": 1, \"[CLS]\": 2, \"[SEP]\": 3, \"un\": 4, \"##aff\": 5, \"##able\": 6, \"a\": 7, \"!\": 8, \"##a\": 9, \"e\": 10}}}";

static void test_model(void)
{
    peftc_tokenizer *tok = NULL;
    peftc_error err = {0};
    peftc_status st = peftc_tokenizer_load(MODEL, &tok, &err);
    CHECK(st == PEFTC_OK && tok, "load %s (%s)", MODEL, err.msg);
    if (!tok) return;

    CHECK(peftc_tokenizer_vocab_size(tok) == 30522, "vocab size 30522 (%d)", peftc_tokenizer_vocab_size(tok));
    CHECK(peftc_tokenizer_token_id(tok, "[CLS]") == 101 && peftc_tokenizer_token_id(tok, "[SEP]") == 102 &&
              peftc_tokenizer_token_id(tok, "[PAD]") == 0 && peftc_tokenizer_token_id(tok, "[UNK]") == 100,
          "special token ids");
    CHECK(peftc_tokenizer_token_id(tok, "hello") == 7592 && peftc_tokenizer_token_id(tok, "##ing") == 2075,
          "token_id(hello) = 7592, token_id(##ing) = 2075");
    CHECK(peftc_tokenizer_token_id(tok, "no-such-token-xyz") == -1 && peftc_tokenizer_token_id(tok, "") == -1,
          "token_id of unknown text is -1");
    const char *t101 = peftc_tokenizer_token_text(tok, 101), *t7592 = peftc_tokenizer_token_text(tok, 7592);
    CHECK(t101 && !strcmp(t101, "[CLS]") && t7592 && !strcmp(t7592, "hello"), "token_text(101), token_text(7592)");
    CHECK(!peftc_tokenizer_token_text(tok, -1) && !peftc_tokenizer_token_text(tok, 30522) &&
              !peftc_tokenizer_token_text(tok, INT32_MAX),
          "token_text out of range is NULL");
    int roundtrip = 1;
    for (int32_t i = 0; i < 30522; i++) {
        const char *s = peftc_tokenizer_token_text(tok, i);
        if (!s || peftc_tokenizer_token_id(tok, s) != i) { roundtrip = 0; break; }
    }
    CHECK(roundtrip, "token_id(token_text(i)) == i for the whole vocabulary");

    /* printf 'Hello, world!\n' | ref_tokenize.py MODEL --type-ids */
    static const int32_t hello[] = {101, 7592, 1010, 2088, 999, 102};
    static const int32_t zeros[MAXT];
    CHECK(encode_is(tok, "Hello, world!", 13, NULL, 0, MAXT, hello, 6, zeros), "Hello, world!");
    /* printf 'Café déjà vu, İstanbul ΣΟΦΟΣ Straße!\n' | ref_tokenize.py MODEL */
    static const int32_t accents[] = {101, 7668, 2139, 3900, 24728, 1010, 9960, 1173, 29730, 29736, 29730, 29733, 2358, 27807, 999, 102};
    CHECK(ENC(tok, "Café déjà vu, İstanbul ΣΟΦΟΣ Straße!", accents), "accents, Turkish İ, Greek, ß");
    /* printf '我爱NLP 😍 [MASK] [cls]\n' | ref_tokenize.py MODEL: CJK split, emoji [UNK],
     * [MASK] recognised in the raw text, [cls] is not a special token */
    static const int32_t cjk[] = {101, 1855, 100, 17953, 2361, 100, 103, 1031, 18856, 2015, 1033, 102};
    CHECK(ENC(tok, "我爱NLP 😍 [MASK] [cls]", cjk), "CJK, emoji, special tokens in text");
    /* printf 'ctrl\x01chars\x7f zero\xe2\x80\x8bwidth\xc2\xa0nbsp\n' | ref_tokenize.py MODEL */
    static const int32_t ctrl[] = {101, 14931, 12190, 7507, 2869, 5717, 9148, 11927, 2232, 1050, 5910, 2361, 102};
    CHECK(ENC(tok, "ctrl\x01" "chars\x7f zero\xe2\x80\x8bwidth\xc2\xa0nbsp", ctrl), "control, zero-width and no-break space");
    /* printf 'a\x00b c\n' | ref_tokenize.py MODEL: NUL is dropped */
    static const int32_t nul[] = {101, 11113, 1039, 102};
    CHECK(encode_is(tok, "a\0b c", 5, NULL, 0, MAXT, nul, 4, NULL), "embedded NUL is dropped");
    /* printf 'How old are you?\tWhat is your age?\n' | ref_tokenize.py MODEL --pairs --type-ids */
    static const int32_t pair_ids[] = {101, 2129, 2214, 2024, 2017, 1029, 102, 2054, 2003, 2115, 2287, 1029, 102};
    static const int32_t pair_types[] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
    CHECK(encode_is(tok, "How old are you?", 16, "What is your age?", 17, MAXT, pair_ids, 13, pair_types),
          "sentence pair with type ids");
    /* printf 'the quick brown fox jumps over the lazy dog\tyes it does indeed\n' |
     *   ref_tokenize.py MODEL --pairs --type-ids --max-len 10 */
    static const int32_t tr_ids[] = {101, 1996, 4248, 2829, 4419, 102, 2748, 2009, 2515, 102};
    static const int32_t tr_types[] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1};
    const char *fox = "the quick brown fox jumps over the lazy dog", *yes = "yes it does indeed";
    CHECK(encode_is(tok, fox, strlen(fox), yes, strlen(yes), 10, tr_ids, 10, tr_types), "longest-first pair truncation");
    /* printf 'the quick brown fox jumps over the lazy dog\n' | ref_tokenize.py MODEL --max-len 5 */
    static const int32_t tr1[] = {101, 1996, 4248, 2829, 102};
    CHECK(encode_is(tok, fox, strlen(fox), NULL, 0, 5, tr1, 5, NULL), "single text truncation");
    /* printf '\tb\n' | ref_tokenize.py MODEL --pairs --type-ids: empty first text */
    static const int32_t empty_a[] = {101, 102, 1038, 102};
    static const int32_t empty_a_t[] = {0, 0, 1, 1};
    CHECK(encode_is(tok, "", 0, "b", 1, MAXT, empty_a, 4, empty_a_t), "empty first text of a pair");
    static const int32_t empty[] = {101, 102};
    CHECK(encode_is(tok, "", 0, NULL, 0, MAXT, empty, 2, NULL) && encode_is(tok, NULL, 0, NULL, 0, 3, empty, 2, NULL),
          "empty text is [CLS] [SEP]");
    static const int32_t minimal[] = {101, 1037, 102}, minimal_pair[] = {101, 1037, 102, 1038, 102};
    CHECK(encode_is(tok, "a b c", 5, NULL, 0, 3, minimal, 3, NULL), "max_len 3 keeps one token of a text");
    CHECK(encode_is(tok, "a b c", 5, "b c d", 5, 5, minimal_pair, 5, NULL), "max_len 5 keeps one token of each");
    /* words of 100 and 101 code points (after normalisation) */
    char w[512];
    memset(w, 'a', 101);
    w[101] = 0;
    int n = 0;
    peftc_tokenizer_encode(tok, w, 101, NULL, 0, MAXT, ids, NULL, &n, &err);
    CHECK(n == 3 && ids[1] == 100, "a 101-character word is [UNK] (type_ids may be NULL)");
    peftc_tokenizer_encode(tok, w, 100, NULL, 0, MAXT, ids, NULL, &n, &err);
    CHECK(n > 3 && ids[1] != 100, "a 100-character word is split into pieces (%d ids)", n);
    size_t k = 0;
    for (int i = 0; i < 60; i++) k += (size_t)sprintf(w + k, "e\xcc\x81"); /* e + U+0301: 120 code points */
    peftc_tokenizer_encode(tok, w, k, NULL, 0, MAXT, ids, NULL, &n, &err);
    CHECK(n > 3 && ids[1] != 100, "the length limit counts code points after accent stripping");

    /* ---- invalid input */
    struct { const char *s; size_t n; size_t at; const char *what; } bad[] = {
        {"\xff", 1, 0, "0xFF"},
        {"abc\xc3", 4, 3, "truncated 2-byte sequence"},
        {"ok \xe2\x82", 5, 3, "truncated 3-byte sequence"},
        {"\xc0\xaf", 2, 0, "overlong '/'"},
        {"xx\xe0\x80\xaf", 5, 2, "overlong 3-byte"},
        {"\xed\xa0\x80", 3, 0, "UTF-16 surrogate"},
        {"0123456789abcdef\x80", 17, 16, "lone continuation byte at 16"},
        {"a\xf4\x90\x80\x80", 5, 1, "code point past U+10FFFF"},
        {"\xf8\x88\x80\x80\x80", 5, 0, "5-byte sequence"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "invalid UTF-8 at byte %zu", bad[i].at);
        err.msg[0] = 0;
        n = 99;
        st = peftc_tokenizer_encode(tok, bad[i].s, bad[i].n, NULL, 0, MAXT, ids, types, &n, &err);
        CHECK(st == PEFTC_ERR_INPUT && n == 0 && strstr(err.msg, want), "%s: %s", bad[i].what, err.msg);
    }
    st = peftc_tokenizer_encode(tok, "fine", 4, "bad \xff", 5, MAXT, ids, types, &n, &err);
    CHECK(st == PEFTC_ERR_INPUT && strstr(err.msg, "pair") && strstr(err.msg, "byte 4"), "invalid UTF-8 in the pair: %s", err.msg);
    st = peftc_tokenizer_encode(tok, "a", 1, NULL, 0, 2, ids, types, &n, &err);
    CHECK(st == PEFTC_ERR_INPUT && strstr(err.msg, "max_len"), "max_len 2 for a text: %s", err.msg);
    st = peftc_tokenizer_encode(tok, "a", 1, "b", 1, 3, ids, types, &n, &err);
    CHECK(st == PEFTC_ERR_INPUT && strstr(err.msg, "max_len"), "max_len 3 for a pair: %s", err.msg);
    st = peftc_tokenizer_encode(tok, "a", 1, NULL, 0, -5, ids, types, &n, &err);
    CHECK(st == PEFTC_ERR_INPUT, "negative max_len");
    CHECK(peftc_tokenizer_encode(NULL, "a", 1, NULL, 0, MAXT, ids, types, &n, &err) == PEFTC_ERR_INPUT &&
              peftc_tokenizer_encode(tok, "a", 1, NULL, 0, MAXT, NULL, types, &n, &err) == PEFTC_ERR_INPUT &&
              peftc_tokenizer_encode(tok, "a", 1, NULL, 0, MAXT, ids, types, NULL, &err) == PEFTC_ERR_INPUT &&
              peftc_tokenizer_encode(tok, NULL, 4, NULL, 0, MAXT, ids, types, &n, &err) == PEFTC_ERR_INPUT &&
              peftc_tokenizer_encode(tok, "a", 1, NULL, 3, MAXT, ids, types, &n, &err) == PEFTC_ERR_INPUT,
          "NULL tokenizer, outputs or text are rejected");
    CHECK(peftc_tokenizer_encode(tok, "a", 1, NULL, 0, MAXT, ids, types, &n, NULL) == PEFTC_OK, "err may be NULL");

    /* ---- a 1 MB line: words, one huge word, CJK */
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    const char *words[] = {"the ", "movie ", "was ", "surprisingly ", "good, ", "naïve ", "漢字 ", "😍 "};
    k = 0;
    for (int i = 0; k + 16 < big; i++) {
        size_t l = strlen(words[i % 8]);
        memcpy(s + k, words[i % 8], l);
        k += l;
    }
    clock_t c0 = clock();
    st = peftc_tokenizer_encode(tok, s, k, NULL, 0, MAXT, ids, types, &n, &err);
    double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK(st == PEFTC_OK && n == MAXT && ids[0] == 101 && ids[1] == 1996 && ids[MAXT - 1] == 102,
          "1 MB line of words is truncated to 512 (%.3f s)", secs);
    size_t half = k / 2;
    while (((unsigned char)s[half] & 0xC0) == 0x80) half--; /* cut at a character boundary */
    st = peftc_tokenizer_encode(tok, s, k, s, half, MAXT, ids, types, &n, &err);
    CHECK(st == PEFTC_OK && n == MAXT && types[256] == 0 && types[257] == 1 && ids[MAXT - 1] == 102,
          "1 MB + 0.5 MB pair is truncated to 256 + 256");
    memset(s, 'x', big);
    st = peftc_tokenizer_encode(tok, s, big, NULL, 0, MAXT, ids, types, &n, &err);
    CHECK(st == PEFTC_OK && n == 3 && ids[1] == 100, "1 MB single word is [UNK]");
    k = 0;
    while (k + 3 <= big) { memcpy(s + k, "\xe4\xb8\x80", 3); k += 3; } /* U+4E00 */
    st = peftc_tokenizer_encode(tok, s, k, NULL, 0, MAXT, ids, types, &n, &err);
    CHECK(st == PEFTC_OK && n == MAXT && ids[1] == 1740, "1 MB of CJK is truncated to 512");
    memset(s, ' ', big);
    st = peftc_tokenizer_encode(tok, s, big, NULL, 0, MAXT, ids, types, &n, &err);
    CHECK(st == PEFTC_OK && n == 2, "1 MB of spaces is [CLS] [SEP]");
    free(s);

    /* ---- random bytes and random valid text: never crash, never overflow */
    uint64_t rng = 12345;
    int ok = 1;
    char buf[300];
    for (int it = 0; it < 3000 && ok; it++) {
        size_t len = (size_t)(it % 300);
        for (size_t i = 0; i < len; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            int r = (int)(rng >> 33);
            /* mostly plausible bytes: ASCII, UTF-8 lead and continuation bytes */
            buf[i] = (char)(it % 3 == 0 ? r & 0xFF : (r % 5 == 0 ? 0x80 | (r >> 8 & 0x3F) : r % 7 == 0 ? 0xE0 | (r >> 8 & 0xF) : 32 + (r >> 8) % 95));
        }
        int ml = 3 + it % 20;
        int32_t small[32];
        st = peftc_tokenizer_encode(tok, buf, len, it % 2 ? buf : NULL, it % 2 ? len / 2 : 0, ml + (it % 2), small, NULL, &n, &err);
        if (st == PEFTC_OK) ok = n >= 2 && n <= ml + (it % 2);
        else ok = st == PEFTC_ERR_INPUT && strstr(err.msg, "invalid UTF-8") != NULL;
    }
    CHECK(ok, "3000 random byte strings: valid ids within max_len or an invalid UTF-8 error");

    peftc_tokenizer_free(tok);
    peftc_tokenizer_free(NULL);
}

static void test_bad_dirs(void)
{
    load_fails("/nonexistent/peftc/model", PEFTC_ERR_IO, "no vocab.txt or tokenizer.json", "missing directory");
    char *d = make_dir();
    load_fails(d, PEFTC_ERR_IO, "no vocab.txt or tokenizer.json (is this a model directory?)", "empty directory");

    write_str(d, "vocab.txt", "");
    load_fails(d, PEFTC_ERR_FORMAT, "empty vocabulary", "empty vocab.txt");

    write_str(d, "vocab.txt", "[PAD]\n[UNK]\n[SEP]\nhello\n");
    load_fails(d, PEFTC_ERR_FORMAT, "no [CLS]", "vocab.txt without [CLS]");

    write_str(d, "vocab.txt", "[PAD]\n[UNK]\n[CLS]\nhello\n");
    load_fails(d, PEFTC_ERR_FORMAT, "no [SEP]", "vocab.txt without [SEP]");

    write_str(d, "vocab.txt", "[PAD]\n[CLS]\n[SEP]\nhello\n");
    load_fails(d, PEFTC_ERR_FORMAT, "no [UNK]", "vocab.txt without [UNK]");

    write_str(d, "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nbad\xff\n");
    load_fails(d, PEFTC_ERR_FORMAT, "line 5: invalid UTF-8", "vocab.txt with invalid UTF-8");

    /* CRLF line endings and no final newline; special tokens matched raw */
    write_str(d, "vocab.txt", "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\n##s\r\n!\r\n[MASK]");
    write_str(d, "tokenizer_config.json", "{\"do_lower_case\": true}");
    peftc_tokenizer *tok = NULL;
    peftc_error err = {0};
    peftc_status st = peftc_tokenizer_load(d, &tok, &err);
    CHECK(st == PEFTC_OK, "vocab.txt with CRLF loads (%s)", err.msg);
    if (tok) {
        static const int32_t want[] = {2, 4, 5, 6, 7, 1, 6, 1, 1, 1, 3};
        CHECK(peftc_tokenizer_vocab_size(tok) == 8 && peftc_tokenizer_token_id(tok, "hello") == 4 &&
                  !strcmp(peftc_tokenizer_token_text(tok, 7), "[MASK]"),
              "CRLF stripped from vocab entries");
        CHECK(ENC(tok, "HELLOs! [MASK] hellox![mask]", want), "tiny vocab: pieces, [MASK], unknown words");
        peftc_tokenizer_free(tok);
    }
    write_str(d, "tokenizer_config.json", "{\"do_lower_case\": \"yes\"}");
    load_fails(d, PEFTC_ERR_FORMAT, "must be booleans", "tokenizer_config.json with a string flag");
    write_str(d, "tokenizer_config.json", "{\"do_lower_case\": false}");
    tok = NULL;
    st = peftc_tokenizer_load(d, &tok, &err);
    if (tok) {
        static const int32_t want[] = {2, 1, 4, 3};
        CHECK(ENC(tok, "HELLO hello", want), "do_lower_case false keeps case");
        peftc_tokenizer_free(tok);
    }
    CHECK(st == PEFTC_OK, "do_lower_case false loads");
    write_str(d, "tokenizer_config.json", "{not json");
    load_fails(d, PEFTC_ERR_FORMAT, "invalid JSON", "broken tokenizer_config.json");
    remove_dir(d);

    /* tokenizer.json only */
    d = make_dir();
    write_str(d, "tokenizer.json", TINY_JSON);
    tok = NULL;
    st = peftc_tokenizer_load(d, &tok, &err);
    CHECK(st == PEFTC_OK, "tokenizer.json without vocab.txt loads (%s)", err.msg);
    if (tok) {
        /* greedy longest match: unaffable -> un ##aff ##able; "aaa" -> a ##a ##a;
         * "unaffablex" has an unmatchable piece -> [UNK]; É -> e */
        static const int32_t want[] = {2, 4, 5, 6, 8, 7, 9, 9, 1, 10, 3};
        CHECK(ENC(tok, "UnAffable! aaa unaffablex \xc3\x89", want), "tiny tokenizer.json vocabulary");
        CHECK(peftc_tokenizer_vocab_size(tok) == 11 && peftc_tokenizer_token_id(tok, "##able") == 6,
              "tiny vocabulary size and lookup");
        peftc_tokenizer_free(tok);
    }
    write_str(d, "tokenizer.json", "{\"model\": {\"vocab\": {}}");
    load_fails(d, PEFTC_ERR_FORMAT, "invalid JSON", "truncated tokenizer.json");
    write_str(d, "tokenizer.json", "[1, 2]");
    load_fails(d, PEFTC_ERR_FORMAT, "not a JSON object", "tokenizer.json that is an array");
    write_str(d, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    load_fails(d, PEFTC_ERR_FORMAT, "model.vocab is missing or empty", "tokenizer.json with an empty vocab");
    write_str(d, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": -3}}}");
    load_fails(d, PEFTC_ERR_FORMAT, "invalid id", "tokenizer.json with a negative id");
    write_str(d, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": \"x\"}}}");
    load_fails(d, PEFTC_ERR_FORMAT, "invalid id", "tokenizer.json with a string id");
    write_str(d, "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}");
    load_fails(d, PEFTC_ERR_UNSUPPORTED, "model type BPE", "tokenizer.json with a BPE model");
    write_str(d, "tokenizer.json", "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"vocab\": {\"a\": 0}}}");
    load_fails(d, PEFTC_ERR_UNSUPPORTED, "normalizer type NFKC", "tokenizer.json with another normalizer");
    write_str(d, "tokenizer.json", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"vocab\": {\"a\": 0}}}");
    load_fails(d, PEFTC_ERR_UNSUPPORTED, "pre_tokenizer ByteLevel", "tokenizer.json with another pre-tokenizer");
    write_str(d, "tokenizer.json", "{\"model\": {\"vocab\": {\"[CLS]\": 0, \"[SEP]\": 1, \"[UNK]\": 2}}}");
    load_fails(d, PEFTC_ERR_FORMAT, "no [PAD]", "tokenizer.json vocabulary without [PAD]");
    write_str(d, "tokenizer.json", "{\"added_tokens\": [{\"content\": 5}], \"model\": {\"vocab\": "
                                   "{\"[CLS]\": 0, \"[SEP]\": 1, \"[UNK]\": 2, \"[PAD]\": 3}}}");
    load_fails(d, PEFTC_ERR_FORMAT, "added_tokens[0]", "tokenizer.json with a bad added token");
    write_str(d, "tokenizer.json", "");
    load_fails(d, PEFTC_ERR_FORMAT, "invalid JSON", "empty tokenizer.json");
    remove_dir(d);

    CHECK(peftc_tokenizer_load(NULL, &tok, &err) == PEFTC_ERR_INPUT, "NULL directory");
    CHECK(peftc_tokenizer_vocab_size(NULL) == 0 && peftc_tokenizer_token_id(NULL, "a") == -1 &&
              peftc_tokenizer_token_text(NULL, 0) == NULL,
          "NULL tokenizer queries");
}

int main(void)
{
    test_model();
    test_bad_dirs();
    return tl_finish();
}
