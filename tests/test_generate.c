/* test_generate.c: the generation loop with a scripted model (its logits
 * name the next byte of a fixed text at each position) on a byte-level
 * vocabulary: stop strings (inside one token and across tokens), EOS,
 * max_new_tokens, whole UTF-8 characters in every streamed piece, prefix
 * reuse of the KV cache, the context limit, and the callback stopping. */
#include "testlib.h"
#include "train/generate.h"

static char bl[256][3];
static const char *tokens[258];
static int32_t types[258];
static const char *merges[] = {"a b"};

static void make_vocab(void)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)n++;
        if (cp < 0x80) { bl[b][0] = (char)cp; bl[b][1] = 0; }
        else { bl[b][0] = (char)(0xC0 | (cp >> 6)); bl[b][1] = (char)(0x80 | (cp & 0x3F)); bl[b][2] = 0; }
        tokens[b] = bl[b];
        types[b] = BPE_TOKEN_BYTE;
    }
    tokens[256] = "ab"; types[256] = BPE_TOKEN_NORMAL;
    tokens[257] = "</s>"; types[257] = BPE_TOKEN_CONTROL;
}

#define EOS 257
static const char *script = "Hello, world! STOP here \xc3\xa9\xe2\x82\xac ok\n";
static int script_len;
static int evals;

/* the next token after position pos+n-1 is the script's byte at pos+n (EOS at its end) */
static peftc_status scripted(void *model, const int32_t *ids, int n, int pos, float *logits, peftc_error *err)
{
    (void)model; (void)ids; (void)err;
    evals++;
    for (int i = 0; i < 258; i++) logits[i] = 0;
    int q = pos + n;
    logits[q < script_len ? (unsigned char)script[q] : EOS] = 10;
    return PEFTC_OK;
}

typedef struct { char text[512]; size_t n; int pieces, bad_utf8, cancel_after; } sink;
static int utf8_complete(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!l || i + l > n) return 0;
        i += l;
    }
    return 1;
}
static int put(const char *t, size_t n, void *u)
{
    sink *s = u;
    if (!utf8_complete(t, n)) s->bad_utf8++;
    memcpy(s->text + s->n, t, n);
    s->n += n;
    s->text[s->n] = 0;
    s->pieces++;
    return s->cancel_after && s->pieces >= s->cancel_after;
}

int main(void)
{
    make_vocab();
    script_len = (int)strlen(script);
    bpe_vocab v = {.n_tokens = 258, .tokens = tokens, .n_merges = 1, .merges = merges, .token_types = types,
                   .pre = "gpt2", .bos_id = -1, .eos_id = EOS, .unk_id = -1, .pad_id = -1};
    bpe_tokenizer *tok;
    peftc_error err = {0};
    if (bpe_from_vocab(&v, &tok, &err)) return tl_die("bpe_from_vocab", &err);
    gen_model g;
    if (gen_model_init(&g, scripted, NULL, 128, 258, 4, tok, &err)) return tl_die("gen_model_init", &err);
    int32_t prompt[8] = {'H', 'e', 'l'};
    peftc_gen_opts o;
    peftc_gen_stats st;

    memset(&o, 0, sizeof o);
    o.top_p = 1; o.repeat_penalty = 1; o.max_new_tokens = 1000;
    sink s = {0};
    peftc_status rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(s.text, script + 3) && !strcmp(st.stop_reason, "eos"),
          "greedy to EOS gives the rest of the script (%s, %d tokens)", st.stop_reason, st.gen_tokens);
    CHECK(s.bad_utf8 == 0, "every streamed piece is whole UTF-8 (%d pieces)", s.pieces);
    CHECK(st.prompt_tokens == 3 && st.cached_tokens == 0, "the prompt is evaluated (%d tokens, %d cached)", st.prompt_tokens, st.cached_tokens);

    /* the cache holds the prompt and the generated tokens fed back: a prompt
     * repeating them evaluates only its last token (for its logits) */
    int32_t p2[5] = {'H', 'e', 'l', 'l', 'o'};
    memset(&s, 0, sizeof s);
    o.max_new_tokens = 3;
    rc = gen_run(&g, p2, 5, &o, put, &s, &st, &err);
    CHECK(!rc && st.cached_tokens == 4 && st.prompt_tokens == 1 && !strcmp(s.text, ", w") && !strcmp(st.stop_reason, "length"),
          "the cached prefix is reused (%d cached, %d evaluated) and max_new_tokens stops (\"%s\", %s)",
          st.cached_tokens, st.prompt_tokens, s.text, st.stop_reason);

    /* stop strings: one inside the text, one across tokens, none matched */
    const char *stops[] = {"STOP", "zzz"};
    o.stop = stops; o.n_stop = 2; o.max_new_tokens = 1000;
    memset(&s, 0, sizeof s);
    rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(s.text, "lo, world! ") && !strcmp(st.stop_reason, "stop"), "a stop string ends the text before it (\"%s\", %s)", s.text, st.stop_reason);
    const char *stops2[] = {"\xc3\xa9\xe2"};
    o.stop = stops2; o.n_stop = 1;
    memset(&s, 0, sizeof s);
    rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(s.text, "lo, world! STOP here ") && !strcmp(st.stop_reason, "stop") && !s.bad_utf8,
          "a stop string spanning tokens and a split character (\"%s\")", s.text);
    const char *stops3[] = {"here!"};
    o.stop = stops3;
    memset(&s, 0, sizeof s);
    rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(s.text, script + 3), "a stop string's prefix held back is emitted when it does not complete");

    /* ignore_eos runs to max_new_tokens */
    o.n_stop = 0; o.ignore_eos = 1; o.max_new_tokens = 60;
    memset(&s, 0, sizeof s);
    rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && st.gen_tokens == 60 && !strcmp(st.stop_reason, "length"), "ignore_eos generates exactly max_new_tokens (%d)", st.gen_tokens);

    /* the callback stops it */
    o.ignore_eos = 0;
    memset(&s, 0, sizeof s);
    s.cancel_after = 2;
    rc = gen_run(&g, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(st.stop_reason, "callback") && s.pieces == 2, "a callback returning non-zero stops (%s)", st.stop_reason);

    /* context: a small cache stops generation; a prompt that does not fit is an error */
    gen_model small;
    gen_model_init(&small, scripted, NULL, 8, 258, 4, tok, &err);
    memset(&s, 0, sizeof s);
    o.max_new_tokens = 100;
    rc = gen_run(&small, prompt, 3, &o, put, &s, &st, &err);
    CHECK(!rc && !strcmp(st.stop_reason, "context") && st.gen_tokens == 6, "a full context stops generation (%s after %d)", st.stop_reason, st.gen_tokens);
    int32_t longp[8] = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
    rc = gen_run(&small, longp, 8, &o, put, &s, &st, &err);
    CHECK(rc == PEFTC_ERR_INPUT && strstr(err.msg, "8 tokens") && strstr(err.msg, "holds 8"), "a prompt longer than the context: %s", err.msg);
    int32_t badid[1] = {999};
    rc = gen_run(&small, badid, 1, &o, put, &s, &st, &err);
    CHECK(rc == PEFTC_ERR_INPUT && strstr(err.msg, "999"), "an id outside the vocabulary: %s", err.msg);
    gen_model_free(&small);

    /* prompts run in n_batch chunks */
    evals = 0;
    gen_model fresh;
    gen_model_init(&fresh, scripted, NULL, 128, 258, 4, tok, &err);
    int32_t p10[10];
    for (int i = 0; i < 10; i++) p10[i] = (unsigned char)script[i];
    o.max_new_tokens = 1;
    rc = gen_run(&fresh, p10, 10, &o, NULL, NULL, &st, &err);
    CHECK(!rc && evals == 3, "a 10-token prompt runs in 3 batches of at most 4 (%d evals)", evals);
    gen_model_free(&fresh);

    gen_model_free(&g);
    bpe_free(tok);
    return tl_finish();
}
