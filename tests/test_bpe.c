/* test_bpe.c: unit checks of the byte-level BPE tokenizer (src/tokenizer/bpe.c)
 * on a tiny hand-made vocabulary (so the expected ids are worked out by hand
 * below), plus bad input: no merges, merges naming unknown tokens, duplicate
 * tokens, an unknown pre-tokenizer, invalid UTF-8, empty and huge texts,
 * broken or unsupported tokenizer.json files, unknown chat templates.
 * The comparison against Hugging Face on real text is tests/check_bpe.sh. */
#include "tokenizer/bpe.h"
#include "testlib.h"

#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* GPT-2's bytes_to_unicode, written independently of bpe.c */
static char bl[256][4];
static void make_alphabet(void)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)n++;
        if (cp < 0x80) { bl[b][0] = (char)cp; bl[b][1] = 0; }
        else { bl[b][0] = (char)(0xC0 | (cp >> 6)); bl[b][1] = (char)(0x80 | (cp & 0x3F)); bl[b][2] = 0; }
    }
}

/* ids 0..255: the bytes; then these merges, each adding one token */
static const char *merge_list[] = {
    "h e", "l l", "he ll", "hell o", "\xc4\xa0 w", "o r", "a b", "b c", "a a", "\xc4\xa0 t", "\xc4\xa0t he",
};
enum { N_MERGE = sizeof merge_list / sizeof merge_list[0] };
enum { ID_HE = 256, ID_LL, ID_HELL, ID_HELLO, ID_GW, ID_OR, ID_AB, ID_BC, ID_AA, ID_GT, ID_GTHE, ID_BOS, ID_EOS, ID_USER, N_TOK };
static char merged[N_MERGE][32];
static const char *tokens[N_TOK];
static int32_t types[N_TOK];

static void make_vocab(void)
{
    make_alphabet();
    for (int b = 0; b < 256; b++) { tokens[b] = bl[b]; types[b] = BPE_TOKEN_BYTE; }
    for (int i = 0; i < N_MERGE; i++) {
        const char *sp = strchr(merge_list[i], ' ');
        snprintf(merged[i], sizeof merged[i], "%.*s%s", (int)(sp - merge_list[i]), merge_list[i], sp + 1);
        tokens[256 + i] = merged[i];
        types[256 + i] = BPE_TOKEN_NORMAL;
    }
    tokens[ID_BOS] = "<s>"; types[ID_BOS] = BPE_TOKEN_CONTROL;
    tokens[ID_EOS] = "</s>"; types[ID_EOS] = BPE_TOKEN_CONTROL;
    tokens[ID_USER] = "<think>"; types[ID_USER] = BPE_TOKEN_USER_DEFINED;
}

static bpe_vocab base_vocab(void)
{
    bpe_vocab v;
    memset(&v, 0, sizeof v);
    v.n_tokens = N_TOK;
    v.tokens = tokens;
    v.n_merges = N_MERGE;
    v.merges = merge_list;
    v.token_types = types;
    v.pre = "gpt2";
    v.bos_id = ID_BOS;
    v.eos_id = ID_EOS;
    v.unk_id = v.pad_id = -1;
    return v;
}

static int32_t ids[1 << 16];

static int enc_is(const bpe_tokenizer *t, const char *s, int add, int parse, const int32_t *want, int nw)
{
    peftc_error err = {0};
    int n = -1;
    if (bpe_encode(t, s, strlen(s), add, parse, ids, (int)(sizeof ids / sizeof ids[0]), &n, &err)) {
        printf("#   encode failed: %s\n", err.msg);
        return 0;
    }
    int same = n == nw;
    for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        printf("#   got %d ids:", n);
        for (int i = 0; i < n && i < 30; i++) printf(" %d", ids[i]);
        printf("\n");
    }
    return same;
}
#define ENC(t, s, add, parse, ...) \
    enc_is(t, s, add, parse, (const int32_t[]){__VA_ARGS__}, (int)(sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)))

static peftc_status build(bpe_vocab v, bpe_tokenizer **t, peftc_error *err)
{
    memset(err, 0, sizeof *err);
    return bpe_from_vocab(&v, t, err);
}

static void write_str(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(s, f);
        fclose(f);
    }
}

/* a tokenizer.json with the tiny vocabulary and the given pieces */
static void write_json(const char *path, const char *model_type, const char *pre, const char *extra)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fprintf(f, "{\"model\":{\"type\":\"%s\",\"vocab\":{", model_type);
    for (int i = 0; i < 256 + N_MERGE; i++) {
        const char *t = tokens[i];
        fputs(i ? ",\"" : "\"", f);
        for (const char *p = t; *p; p++) {
            if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
            else fputc(*p, f);
        }
        fprintf(f, "\":%d", i);
    }
    fputs("},\"merges\":[", f);
    for (int i = 0; i < N_MERGE; i++) {
        const char *sp = strchr(merge_list[i], ' ');
        fprintf(f, "%s[\"%.*s\",\"%s\"]", i ? "," : "", (int)(sp - merge_list[i]), merge_list[i], sp + 1);
    }
    fprintf(f, "]},\"added_tokens\":[{\"id\":%d,\"content\":\"<s>\",\"special\":true}],\"pre_tokenizer\":%s%s}",
            ID_BOS, pre, extra);
    fclose(f);
}

int main(void)
{
    make_vocab();
    peftc_error err;
    bpe_tokenizer *t = NULL;
    CHECK(build(base_vocab(), &t, &err) == PEFTC_OK, "tiny vocabulary builds: %s", err.msg);
    if (!t) return tl_finish();

    /* merges by rank */
    CHECK(ENC(t, "hello", 0, 1, ID_HELLO), "'hello' merges h e, l l, he ll, hell o into one token");
    CHECK(ENC(t, "hello world", 0, 1, ID_HELLO, ID_GW, ID_OR, 'l', 'd'), "' world' is Gw or l d");
    CHECK(ENC(t, "abc", 0, 1, ID_AB, 'c'), "'abc': 'a b' (rank 6) before 'b c' (rank 7)");
    CHECK(ENC(t, "aaa", 0, 1, ID_AA, 'a'), "'aaa': equal ranks merge leftmost first");
    CHECK(ENC(t, "the the", 0, 1, 't', ID_HE, ID_GTHE), "'the the': merges follow the pre-tokenizer's words");
    {
        int n = -1;
        memset(&err, 0, sizeof err);
        CHECK(bpe_encode(t, "", 0, 0, 1, ids, 4, &n, &err) == PEFTC_OK && n == 0, "empty text: no ids");
        CHECK(bpe_encode(t, NULL, 0, 0, 1, ids, 4, &n, &err) == PEFTC_OK && n == 0, "NULL text of length 0: no ids");
    }
    /* specials */
    CHECK(ENC(t, "<s>he", 0, 1, ID_BOS, ID_HE), "parse_special: '<s>' in the text is the control token");
    CHECK(ENC(t, "<s>", 0, 0, '<', 's', '>'), "without parse_special '<s>' is plain text");
    CHECK(ENC(t, "a<think>b", 0, 0, 'a', ID_USER, 'b'), "a user-defined token is matched even without parse_special");
    CHECK(ENC(t, "he", 1, 1, ID_HE), "add_bos false in the metadata: no BOS");
    {
        bpe_vocab v = base_vocab();
        v.add_bos = 1;
        v.add_eos = 1;
        bpe_tokenizer *t2 = NULL;
        CHECK(build(v, &t2, &err) == PEFTC_OK, "add_bos/add_eos vocabulary builds");
        if (t2) {
            CHECK(ENC(t2, "he", 1, 1, ID_BOS, ID_HE, ID_EOS), "add_special: BOS text EOS");
            CHECK(ENC(t2, "he", 0, 1, ID_HE), "without add_special: no BOS/EOS");
            CHECK(ENC(t2, "", 1, 1, ID_BOS, ID_EOS), "empty text with add_special: BOS EOS");
        }
        bpe_free(t2);
    }
    /* decoding */
    {
        char buf[64];
        size_t len = 0;
        CHECK(bpe_decode_token(t, ID_GW, buf, sizeof buf, &len, &err) == PEFTC_OK && len == 2 && !memcmp(buf, " w", 2),
              "decode_token(Gw) is ' w'");
        CHECK(bpe_decode_token(t, ID_BOS, buf, sizeof buf, &len, &err) == PEFTC_OK && len == 3 && !memcmp(buf, "<s>", 3),
              "a special token decodes to its text");
        CHECK(bpe_decode_token(t, N_TOK, buf, sizeof buf, &len, &err) == PEFTC_ERR_INPUT, "unknown id: %s", err.msg);
        CHECK(bpe_decode_token(t, -1, buf, sizeof buf, &len, &err) == PEFTC_ERR_INPUT, "negative id rejected");
        CHECK(bpe_decode_token(t, ID_HELLO, buf, 2, &len, &err) == PEFTC_ERR_INPUT && len == 5,
              "too small a buffer: error and the needed length (%zu)", len);
        const char *txt = "Ünïcödé 😀 \t\n mixed  spaces <s> é";
        int32_t *v = NULL;
        int n = 0;
        char *back = NULL;
        size_t bl2 = 0;
        CHECK(bpe_encode_alloc(t, txt, strlen(txt), 0, 1, &v, &n, &err) == PEFTC_OK &&
              bpe_decode(t, v, n, 0, &back, &bl2, &err) == PEFTC_OK && bl2 == strlen(txt) && !memcmp(back, txt, bl2),
              "decode(encode(x)) == x with multi-byte characters, whitespace and a special");
        free(back);
        back = NULL;
        CHECK(bpe_decode(t, v, n, 1, &back, &bl2, &err) == PEFTC_OK && !strstr(back, "<s>") && bl2 == strlen(txt) - 3,
              "skip_special drops '<s>'");
        free(back);
        free(v);
        /* streaming: "é" (C3 A9) is two byte tokens */
        bpe_stream st = {0};
        char o[16];
        size_t l1 = 9, l2 = 9, l3 = 9;
        int32_t c3 = 0xC3, a9 = 0xA9;
        CHECK(bpe_stream_push(t, &st, 'x', o, sizeof o, &l1, &err) == PEFTC_OK && l1 == 1 && o[0] == 'x', "stream: ASCII passes");
        CHECK(bpe_stream_push(t, &st, c3, o, sizeof o, &l2, &err) == PEFTC_OK && l2 == 0, "stream: a lone lead byte is held back");
        CHECK(bpe_stream_push(t, &st, a9, o, sizeof o, &l3, &err) == PEFTC_OK && l3 == 2 && !memcmp(o, "\xc3\xa9", 2),
              "stream: the completing byte releases 'é'");
        bpe_stream_push(t, &st, c3, o, sizeof o, &l1, &err);
        CHECK(bpe_stream_flush(&st, o, sizeof o) == 1 && (unsigned char)o[0] == 0xC3 && st.npend == 0,
              "stream: flush emits what is held back");
        CHECK(bpe_stream_push(t, &st, N_TOK + 5, o, sizeof o, &l1, &err) == PEFTC_ERR_INPUT, "stream: bad id rejected");
    }
    /* invalid UTF-8 */
    {
        int n;
        memset(&err, 0, sizeof err);
        CHECK(bpe_encode(t, "abc\xff" "def", 7, 0, 1, ids, 64, &n, &err) == PEFTC_ERR_INPUT && strstr(err.msg, "offset 3"),
              "invalid UTF-8 names the byte offset: %s", err.msg);
        CHECK(bpe_encode(t, "ab\xc3", 3, 0, 1, ids, 64, &n, &err) == PEFTC_ERR_INPUT && strstr(err.msg, "offset 2"),
              "truncated sequence at the end: %s", err.msg);
        CHECK(bpe_encode(t, "\xed\xa0\x80", 3, 0, 1, ids, 64, &n, &err) == PEFTC_ERR_INPUT, "a surrogate is invalid");
        CHECK(bpe_encode(t, "\xc0\xaf", 2, 0, 1, ids, 64, &n, &err) == PEFTC_ERR_INPUT, "an overlong sequence is invalid");
        CHECK(bpe_encode(t, "a\0b", 3, 0, 1, ids, 64, &n, &err) == PEFTC_OK && n == 3, "NUL bytes are text (3 ids)");
        CHECK(bpe_encode(t, "hello world", 11, 0, 1, ids, 2, &n, &err) == PEFTC_ERR_INPUT && n == 5 && ids[0] == ID_HELLO,
              "cap too small: error, full count (%d) and the first ids: %s", n, err.msg);
    }
    /* huge input: 8 MB of words, one 1 MB word, 1 MB of spaces */
    {
        size_t big = 8u << 20;
        char *s = malloc(big + 1);
        for (size_t i = 0; i < big; i++) s[i] = "hello world, the abc aaa 123\n"[i % 29];
        int32_t *v = NULL;
        int n = 0;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        peftc_status st = bpe_encode_alloc(t, s, big, 0, 1, &v, &n, &err);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
        CHECK(st == PEFTC_OK && n > 2000000 && v[0] == ID_HELLO, "8 MB text: %d ids in %.0f ms (%.1f MB/s)", n, ms,
              8.0 / (ms / 1e3));
        free(v);
        memset(s, 'a', 1 << 20);
        st = bpe_encode_alloc(t, s, 1 << 20, 0, 1, &v, &n, &err);
        CHECK(st == PEFTC_OK && n == 1 << 19 && v[0] == ID_AA, "a 1 MB word: %d ids", n);
        free(v);
        memset(s, ' ', 1 << 20);
        st = bpe_encode_alloc(t, s, 1 << 20, 0, 1, &v, &n, &err);
        CHECK(st == PEFTC_OK && n == 1 << 20, "1 MB of spaces: %d ids", n);
        free(v);
        free(s);
    }
    CHECK(bpe_vocab_size(t) == N_TOK && bpe_bos_id(t) == ID_BOS && bpe_eos_id(t) == ID_EOS && bpe_is_special(t, ID_BOS) &&
          !bpe_is_special(t, ID_USER) && bpe_token_id(t, "hello", 5) == ID_HELLO && bpe_token_id(t, "zz", 2) < 0,
          "accessors");
    bpe_free(t);
    t = NULL;

    /* bad vocabularies */
    {
        bpe_vocab v = base_vocab();
        v.n_merges = 0;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "no merges") && !t, "no merges: %s", err.msg);
        v = base_vocab();
        const char *bad_merges[] = {"h e", "q zz"};
        v.merges = bad_merges;
        v.n_merges = 2;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "merge 1") && strstr(err.msg, "not in the vocabulary"),
              "a merge naming an unknown token: %s", err.msg);
        const char *nospace[] = {"he"};
        v.merges = nospace;
        v.n_merges = 1;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "not 'a b'"), "a merge without a space: %s", err.msg);
        v = base_vocab();
        const char *saved = tokens[ID_USER];
        tokens[ID_USER] = "hello";
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "duplicates"), "duplicate tokens: %s", err.msg);
        tokens[ID_USER] = saved;
        v = base_vocab();
        v.pre = "no-such-pre";
        CHECK(build(v, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "no-such-pre"),
              "unknown pre-tokenizer named: %.90s", err.msg);
        v = base_vocab();
        v.bos_id = N_TOK + 3;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "bos"), "BOS outside the vocabulary: %s", err.msg);
        v = base_vocab();
        v.n_tokens = 0;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT, "no tokens: %s", err.msg);
        v = base_vocab();
        const char *badtok[N_TOK];
        memcpy(badtok, tokens, sizeof badtok);
        badtok[5] = "\xff";
        v.tokens = badtok;
        CHECK(build(v, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "token 5"), "a token that is not UTF-8: %s", err.msg);
        static const char *pres[] = {"smollm", "llama-bpe", "llama3", "qwen2", "gpt-4o", "tekken", "dbrx", "default"};
        int okn = 0;
        for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
            v = base_vocab();
            v.pre = pres[i];
            bpe_tokenizer *t3 = NULL;
            if (build(v, &t3, &err) == PEFTC_OK && ENC(t3, "hello", 0, 1, ID_HELLO)) okn++;
            bpe_free(t3);
        }
        CHECK(okn == (int)(sizeof pres / sizeof pres[0]), "every supported pre-tokenizer name builds (%d)", okn);
    }

    /* tokenizer.json */
    {
        char dir[] = "/tmp/peftc_bpe_XXXXXX", path[256], cfg[256];
        if (!mkdtemp(dir)) return tl_finish();
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
        const char *blv = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}";
        write_json(path, "BPE", blv, "");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_OK, "tokenizer.json with [a, b] merges loads: %s", err.msg);
        if (t) {
            CHECK(ENC(t, "hello world", 0, 1, ID_HELLO, ID_GW, ID_OR, 'l', 'd'), "tokenizer.json: same ids as the arrays");
            char *o = NULL;
            bpe_chat_msg m[1] = {{"user", "hi"}};
            CHECK(bpe_chat_apply(t, m, 1, 1, &o, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "no chat template"),
                  "no chat template: %s", err.msg);
            bpe_free(t);
            t = NULL;
        }
        write_str(cfg, "{\"chat_template\": \"{% for m in messages %}{{ m.content }}{% endfor %}\", \"bos_token\": \"<s>\","
                       " \"add_bos_token\": true}");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_OK, "with tokenizer_config.json: %s", err.msg);
        if (t) {
            CHECK(ENC(t, "he", 1, 1, ID_BOS, ID_HE), "add_bos_token from tokenizer_config.json");
            char *o = NULL;
            bpe_chat_msg m[1] = {{"user", "hi"}};
            CHECK(bpe_chat_apply(t, m, 1, 1, &o, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "not recognised"),
                  "unknown chat template: %.70s", err.msg);
            bpe_free(t);
            t = NULL;
        }
        unlink(cfg);
        write_json(path, "WordPiece", blv, "");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "WordPiece") &&
              strstr(err.msg, path), "model type WordPiece: %s", err.msg);
        write_json(path, "BPE", "{\"type\":\"Whitespace\"}", "");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "Whitespace"),
              "pre_tokenizer Whitespace: %s", err.msg);
        write_json(path, "BPE", "{\"type\":\"Digits\",\"individual_digits\":true}", "");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "no ByteLevel"),
              "no ByteLevel step: %s", err.msg);
        write_json(path, "BPE", blv, ",\"normalizer\":{\"type\":\"Lowercase\"}");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "Lowercase"),
              "normalizer Lowercase: %s", err.msg);
        write_json(path, "BPE", blv, ",\"decoder\":{\"type\":\"WordPiece\"}");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "decoder"),
              "decoder WordPiece: %s", err.msg);
        write_json(path, "BPE", "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}", "");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_UNSUPPORTED && strstr(err.msg, "regex"),
              "a regex PCRE2 rejects: %s", err.msg);
        write_str(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": " 
                        "{\"type\":\"ByteLevel\"}}");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, "no merges"),
              "tokenizer.json without merges: %s", err.msg);
        write_str(path, "{\"model\": {\"type\": \"BPE\", ");
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_FORMAT && strstr(err.msg, path),
              "truncated JSON: %s", err.msg);
        unlink(path);
        CHECK(bpe_from_tokenizer_json(path, &t, &err) == PEFTC_ERR_IO, "missing file: %s", err.msg);
        rmdir(dir);
    }

    /* chat templates, rendered without a tokenizer */
    {
        const char *smol =
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        bpe_chat_msg m[3] = {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
        char *o = NULL;
        CHECK(bpe_chat_family(smol) && !strcmp(bpe_chat_family(smol), "chatml-default-system"), "SmolLM2's template recognised");
        CHECK(bpe_chat_render(smol, NULL, NULL, m, 1, 1, &o, &err) == PEFTC_OK &&
              !strcmp(o, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
              "default system message inserted before a first user message");
        free(o);
        bpe_chat_msg s2[2] = {{"system", "Be brief."}, {"user", "Hi"}};
        CHECK(bpe_chat_render(smol, NULL, NULL, s2, 2, 0, &o, &err) == PEFTC_OK &&
              !strcmp(o, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"),
              "a given system message replaces the default; no generation prompt");
        free(o);
        CHECK(bpe_chat_render("{{ messages }}", NULL, NULL, m, 3, 1, &o, &err) == PEFTC_ERR_UNSUPPORTED, "unknown template: %.60s",
              err.msg);
        CHECK(bpe_chat_render(NULL, NULL, NULL, m, 3, 1, &o, &err) == PEFTC_ERR_UNSUPPORTED, "missing template: %s", err.msg);
        bpe_chat_msg bad[1] = {{"user", NULL}};
        CHECK(bpe_chat_render(smol, NULL, NULL, bad, 1, 1, &o, &err) == PEFTC_ERR_INPUT, "a message without content: %s", err.msg);
    }
    return tl_finish();
}
