/* targets.c: the fuzz targets, one function per parser a stranger's file
 * reaches. Built two ways (Makefile): with clang -fsanitize=fuzzer (main.c
 * picks one target by FUZZ_TARGET) for `make fuzz`, and with the normal
 * compiler into build/tests/fuzz_replay (replay.c), which runs every kept
 * regression input and seed through its target in the normal test run.
 * Each target hands the input to the parser's in-memory entry (the bytes a
 * path function would have read: the path functions are thin wrappers over
 * these), calls everything a successful parse enables, and frees. No file
 * is written, so an input costs only the parse. A crash, a sanitizer report,
 * a leak or a hang is a finding. */
#include "fuzz.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "io/gguf.h"
#include "kernels/quant.h"
#include "model/llama.h"
#include "tokenizer/bpe.h"
#include "tokenizer/wordpiece.h"
#include "train/data.h"
#include "train/conll.h"
#include "train/lm_data.h"
#include "train/task.h"
#include "train/checkpoint.h"
#include "peft/compose.h"
#include "peft/delta.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a NUL-terminated copy of at most cap - 1 input bytes */
static char *cstr(const uint8_t *d, size_t n, size_t cap)
{
    size_t l = n < cap - 1 ? n : cap - 1;
    char *s = malloc(l + 1);
    if (!s) return NULL;
    if (l) memcpy(s, d, l);
    s[l] = 0;
    return s;
}

/* ------------------------------------------------------------ safetensors */
static int t_safetensors(const uint8_t *d, size_t n)
{
    peftc_safetensors *st;
    peftc_error err;
    if (!st_open_mem(d, n, "x.safetensors", &st, &err)) {
        for (int i = 0; i < st->n; i++) {
            const st_tensor *t = &st->t[i];
            if ((t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) && t->numel <= (1 << 16)) {
                float *buf = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *buf);
                if (buf) st_to_f32(st, t, buf, &err);
                free(buf);
            }
            peftc_tensor_info info;
            peftc_safetensors_info(st, i, &info);
        }
        st_metadata(st, "format");
        peftc_safetensors_free(st);
    }
    return 0;
}

/* -------------------------------------------------- GGUF (+ its vocabulary) */
static int t_gguf(const uint8_t *d, size_t n)
{
    gguf_file *g;
    peftc_error err;
    if (!gguf_open_mem(d, n, "x.gguf", &g, &err)) {
        int64_t iv;
        gguf_get_int(g, "llama.block_count", &iv);
        llama_config lc;
        llama_config_from_gguf(g, &lc, &err);
        char txt[256];
        for (int i = 0; i < gguf_kv_count(g) && i < 64; i++) gguf_format_value(g, i, txt, sizeof txt, 4);
        /* tensors: the type check, the scan for non-finite values or block
         * scales the loader runs, and the dequantisation of small ones */
        for (int i = 0; i < gguf_tensor_count(g) && i < 64; i++) {
            const gguf_tensor *t = gguf_tensor_at(g, i);
            if (gguf_tensor_check_type(g, t, &err)) continue;
            const char *field;
            float v;
            int64_t ne = gguf_tensor_numel(t);
            quant_find_nonfinite(t->type, t->data, ne, &field, &v);
            if (ne > 0 && ne <= (1 << 14) && t->type != GGML_TYPE_Q8_K) {
                float *buf = malloc((size_t)ne * sizeof *buf);
                if (buf) quant_dequantize_row(t->type, t->data, buf, ne);
                free(buf);
            }
        }
        bpe_tokenizer *tok;
        if (!bpe_from_gguf(g, &tok, &err)) {
            int32_t *ids = NULL;
            int m = 0;
            bpe_encode_alloc(tok, "Hello world, 123 h\xc3\xa9llo!", 24, 1, 1, &ids, &m, &err);
            char out[64];
            size_t ol;
            for (int i = 0; i < m && i < 16; i++) bpe_decode_token(tok, ids[i], out, sizeof out, &ol, &err);
            free(ids);
            bpe_free(tok);
        }
        gguf_close(g);
    }
    return 0;
}

/* ------------------------------------------- config.json (BERT and Llama) */
static int t_config(const uint8_t *d, size_t n)
{
    peftc_config cfg;
    peftc_error err;
    peftc_config_parse((const char *)d, n, "config.json", &cfg, &err);
    /* the Llama family's own reader of the same file */
    llama_config lc;
    llama_config_parse((const char *)d, n, "config.json", &lc, &err);
    return 0;
}

/* ------------------------------ vocab.txt / tokenizer.json (WordPiece, BPE) */
static int t_tokenizer(const uint8_t *d, size_t n)
{
    if (n < 1) return 0;
    int kind = d[0] % 4;
    d++, n--;
    peftc_error err;
    if (kind == 2) {   /* a byte-level BPE tokenizer.json */
        bpe_tokenizer *tok;
        if (!bpe_from_tokenizer_json_mem((const char *)d, n, "tokenizer.json", NULL, 0, NULL, &tok, &err)) {
            int32_t *ids = NULL;
            int m = 0;
            bpe_encode_alloc(tok, "Hello world, 123 <|im_start|> x", 31, 1, 1, &ids, &m, &err);
            char out[256];
            size_t ol;
            for (int i = 0; i < m && i < 16; i++) bpe_decode_token(tok, ids[i], out, sizeof out, &ol, &err);
            free(ids);
            bpe_free(tok);
        }
        return 0;
    }
    /* 0: vocab.txt; 1: tokenizer.json (WordPiece); 3: vocab.txt and, after
     * the first NUL byte, tokenizer_config.json */
    wordpiece_files f = {"vocab.txt", NULL, 0, "tokenizer.json", NULL, 0, "tokenizer_config.json", NULL, 0};
    if (kind == 1) { f.tj = (const char *)d; f.tj_len = n; }
    else {
        f.vocab = (const char *)d;
        f.vocab_len = n;
        const uint8_t *z = kind == 3 ? memchr(d, 0, n) : NULL;
        if (z) { f.vocab_len = (size_t)(z - d); f.cfg = (const char *)z + 1; f.cfg_len = n - f.vocab_len - 1; }
    }
    peftc_tokenizer *tok;
    if (!wordpiece_load_mem(&f, "fuzz", &tok, &err)) {
        int32_t ids[64], tts[64];
        int m;
        static const char hello[] = "Hello, World! na\xc3\xafve \xe6\x9d\xb1\xe4\xba\xac [MASK]";
        peftc_tokenizer_encode(tok, hello, sizeof hello - 1, "a pair", 6, 64, ids, tts, &m, &err);
        /* the input itself as text (bounded) */
        size_t tl = n < 512 ? n : 512;
        peftc_tokenizer_encode(tok, (const char *)d, tl, NULL, 0, 64, ids, tts, &m, &err);
        peftc_tokenizer_free(tok);
    }
    return 0;
}

/* ------------------------------------ adapter_config.json and delta specs */
static int t_adapter(const uint8_t *d, size_t n)
{
    if (n < 1) return 0;
    int kind = d[0] & 1;
    d++, n--;
    peftc_error err;
    if (kind) {   /* a --delta spec */
        char buf[600];
        size_t l = n < sizeof buf - 1 ? n : sizeof buf - 1;
        memcpy(buf, d, l);
        buf[l] = 0;
        delta_spec sp;
        if (!delta_spec_parse(buf, &sp, &err)) {
            char out[512];
            delta_spec_format(&sp, out, sizeof out);
            delta_spec sp2;
            delta_spec_parse(out, &sp2, &err);
        }
        return 0;
    }
    method_opts mo;
    label_set labels;
    int max_len;
    if (!adapter_parse_config((const char *)d, n, "adapter_config.json", &mo, &labels, &max_len, &err)) labels_free(&labels);
    return 0;
}

/* ------------------------------------------------------ checkpoint metadata */
static int t_checkpoint(const uint8_t *d, size_t n)
{
    const char *p = "checkpoint.safetensors";
    peftc_safetensors *st;
    peftc_error err;
    if (st_open_mem(d, n, p, &st, &err)) return 0;
    /* a parameter block of the size the file claims (bounded), the signature
     * and method it names: so the fuzzer reaches the field checks */
    const st_tensor *pt = st_find(st, "params");
    size_t total = pt && pt->numel > 0 && pt->numel <= (1 << 16) ? (size_t)pt->numel : 16;
    const char *sig = st_metadata(st, "peftc_signature"), *meth = st_metadata(st, "method");
    uint64_t run_sig = sig ? strtoull(sig, NULL, 16) : 0;
    param_block pb = {0};
    pb.total = total;
    pb.p = calloc(total, sizeof(float));
    pb.m = calloc(total, sizeof(float));
    pb.v = calloc(total, sizeof(float));
    float ema[4] = {0};
    if (st_find(st, "ada_ipt")) { pb.state[0] = (param_state){"ada_ipt", ema, 4, 0}; pb.n_state = 1; }
    train_state s = {0};
    ckpt_limits lim = {48, 1};
    if (pb.p && pb.m && pb.v) checkpoint_read(st, p, &pb, meth ? meth : "lora", run_sig, &lim, &s, &err);
    free(pb.p); free(pb.m); free(pb.v);
    peftc_safetensors_free(st);
    return 0;
}

/* ------------------------------------- TSV / CSV / JSONL data + tokenising */
static peftc_tokenizer *g_wp;

static peftc_tokenizer *wordpiece(void)
{
    if (g_wp) return g_wp;
    static const char vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\na\nfilm\ngood\nbad\n##s\n.\n,\n!\nmovie\nis\n";
    wordpiece_files f = {"vocab.txt", vocab, sizeof vocab - 1, "tokenizer.json", NULL, 0, "tokenizer_config.json", NULL, 0};
    peftc_error err;
    if (wordpiece_load_mem(&f, "fuzz", &g_wp, &err)) g_wp = NULL;
    return g_wp;
}

static peftc_status enc_fn(const void *user, const char *text, const char *pair, int32_t *ids, int32_t *tts, int *n,
                           peftc_error *err)
{
    return peftc_tokenizer_encode(user, text, strlen(text), pair, pair ? strlen(pair) : 0, 32, ids, tts, n, err);
}

static int t_data(const uint8_t *d, size_t n)
{
    if (n < 1) return 0;
    static const char *const names[] = {"d.tsv", "d.csv", "d.jsonl"};
    const char *name = names[d[0] % 3];
    dataset ds;
    peftc_error err;
    data_cols cols = {NULL, NULL, NULL};
    if (!data_parse((const char *)d + 1, n - 1, name, &cols, 1, &ds, &err)) {
        label_set ls;
        if (!labels_from_data(&ds, &ls, &err)) {
            if (!data_map_labels(&ds, &ls, &err) && wordpiece()) data_tokenize(&ds, enc_fn, wordpiece(), 32, &err);
            labels_free(&ls);
        }
        data_free(&ds);
    }
    return 0;
}

/* --------------------------------------------------------- lm_data (JSONL) */
static bpe_tokenizer *g_bpe;

/* a byte-level BPE vocabulary: the 256 GPT-2 byte symbols and a few merges */
static bpe_tokenizer *bytebpe(void)
{
    if (g_bpe) return g_bpe;
    static char store[300][8];
    static const char *toks[300];
    int nt = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int cp = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE) ? b : 256 + extra++;
        char *o = store[nt];
        if (cp < 0x80) { o[0] = (char)cp; o[1] = 0; }
        else { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); o[2] = 0; }
        toks[nt] = store[nt];
        nt++;
    }
    static const char *const more[] = {"\xC4\xA0t", "he", "\xC4\xA0the", "<|im_start|>", "<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 6; i++) toks[nt++] = more[i];
    static const char *const merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
    int32_t types[300];
    for (int i = 0; i < nt; i++) types[i] = i >= nt - 3 ? BPE_TOKEN_CONTROL : BPE_TOKEN_NORMAL;
    bpe_vocab v = {.n_tokens = nt, .tokens = toks, .n_merges = 3, .merges = merges, .token_types = types, .pre = "gpt2",
                   .bos_id = nt - 1, .eos_id = nt - 2, .unk_id = -1, .pad_id = -1,
                   .chat_template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"};
    peftc_error err;
    if (bpe_from_vocab(&v, &g_bpe, &err)) g_bpe = NULL;
    return g_bpe;
}

static int t_lm_data(const uint8_t *d, size_t n)
{
    if (n < 2 || !bytebpe()) return 0;
    int fmt = d[0] % 6, flags = d[1];
    lm_data_opts o = {0};
    o.format = (lm_format)fmt;
    o.max_len = 2 + (flags >> 4) * 8;
    o.pack = flags & 1;
    o.loss_on_all = (flags >> 1) & 1;
    if (fmt == 5 || (flags & 4)) { o.prompt_template = "Q: {question}\nA:"; o.response_field = "answer"; }
    lm_dataset ds;
    peftc_error err;
    if (!lm_data_parse((const char *)d + 2, n - 2, "lm.jsonl", bytebpe(), &o, &ds, &err)) lm_data_free(&ds);
    if (flags & 8) {   /* the generation prompts of the same records */
        lm_prompts pr;
        if (!lm_data_parse_prompts((const char *)d + 2, n - 2, "lm.jsonl", bytebpe(), &o, &pr, &err)) lm_prompts_free(&pr);
    }
    return 0;
}

/* ------------------------------------------------ CoNLL token-cls files */
static int t_conll(const uint8_t *d, size_t n)
{
    if (n < 1 || !wordpiece()) return 0;
    int flags = d[0];
    dataset ds;
    peftc_error err;
    long conv;
    if (conll_parse((const char *)d + 1, n - 1, "x.conll", flags & 1, &ds, &conv, &err)) return 0;
    label_set ls;
    if (!conll_labels(&ds, &ls, &err)) {
        if (!conll_map_labels(&ds, &ls, &err)) {
            prompt_spec ps;
            memset(&ps, 0, sizeof ps);
            if (flags & 2) template_parse("P P {text} P", &ps, &err);
            if (!conll_tokenize(&ds, wordpiece(), &ps, 4 + (flags >> 2), &err)) {
                seqeval_acc a;
                if (!seqeval_init(&a, &ls, &err)) {
                    for (int i = 0; i < ds.n; i++) {
                        int b = ds.word_off[i], e = ds.word_off[i + 1];
                        seqeval_add(&a, ds.word_label + b, ds.word_label + b, e - b);
                    }
                    seqeval_free(&a);
                }
            }
        }
        labels_free(&ls);
    }
    data_free(&ds);
    return 0;
}

/* ------------------------------------------- the --compose syntax */
static int t_compose(const uint8_t *d, size_t n)
{
    static const char *const names[] = {"a", "b", "c", "sst2", "rte", "mrpc", "x_1"};
    char *text = cstr(d, n, 8192);
    if (!text) return 0;
    compose_tree t;
    peftc_error err;
    compose_parse(text, names, 7, &t, &err);
    free(text);
    return 0;
}

const fuzz_target fuzz_targets[] = {
    {"safetensors", t_safetensors},
    {"gguf", t_gguf},
    {"config", t_config},
    {"tokenizer", t_tokenizer},
    {"adapter", t_adapter},
    {"checkpoint", t_checkpoint},
    {"data", t_data},
    {"lm_data", t_lm_data},
    {"conll", t_conll},
    {"compose", t_compose},
    {NULL, NULL},
};

const fuzz_target *fuzz_find(const char *name)
{
    for (int i = 0; fuzz_targets[i].name; i++)
        if (!strcmp(fuzz_targets[i].name, name)) return &fuzz_targets[i];
    return NULL;
}

void fuzz_cleanup(void)
{
    if (g_wp) peftc_tokenizer_free(g_wp);
    if (g_bpe) bpe_free(g_bpe);
    g_wp = NULL;
    g_bpe = NULL;
}
