/* bpe_driver.c: the C side of tests/check_bpe.sh.
 *
 *   bpe_driver json TOKENIZER_JSON [--special] < texts.jsonl
 *   bpe_driver dump DUMP [--pre NAME] [--special] [--no-roundtrip] [--no-parse] < texts.jsonl
 *       one line of ids per input text (a JSON string per line); checks
 *       decode(encode(x)) == x and prints "roundtrip <bad> <total>" on stderr
 *       (with the first bad line), then the encoding time.  --no-parse:
 *       special tokens in the text are plain text (parse_special = 0).
 *   bpe_driver chat TOKENIZER_JSON | chatdump DUMP < chats.jsonl
 *       the chat template output per line as a JSON string.
 *
 * DUMP is tests/ref_bpe.py's dump of a GGUF's tokenizer metadata (the lead
 * will swap in the C GGUF reader). */
#include "tokenizer/bpe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char *read_all(FILE *f, size_t *n)
{
    size_t cap = 1 << 20, len = 0;
    char *b = malloc(cap);
    size_t k;
    while (b && (k = fread(b + len, 1, cap - len - 1, f)) > 0) {
        len += k;
        if (cap - len < 2) b = realloc(b, cap *= 2);
    }
    if (b) b[len] = 0;
    *n = len;
    return b;
}

/* Parses the dump into a bpe_vocab (strings point into buf). */
static int load_dump(const char *path, bpe_vocab *v, char **keep)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n;
    char *b = read_all(f, &n);
    fclose(f);
    if (!b) return -1;
    *keep = b;
    memset(v, 0, sizeof *v);
    v->bos_id = v->eos_id = v->unk_id = v->pad_id = -1;
    static char pre[64];
    char *p = b, *end = b + n;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break;
        if (!strncmp(p, "tokens ", 7)) {
            int nt = atoi(p + 7);
            char **tok = calloc((size_t)nt, sizeof *tok);
            size_t *len = calloc((size_t)nt, sizeof *len);
            int32_t *ty = calloc((size_t)nt, sizeof *ty);
            p = nl + 1;
            for (int i = 0; i < nt; i++) {
                char *e;
                ty[i] = (int32_t)strtol(p, &e, 10);
                len[i] = strtoul(e, &e, 10);
                tok[i] = e + 1;
                p = e + 1 + len[i] + 1;
            }
            v->n_tokens = nt;
            v->tokens = (const char *const *)tok;
            v->token_lens = len;
            v->token_types = ty;
            continue;
        }
        if (!strncmp(p, "merges ", 7)) {
            int nm = atoi(p + 7);
            char **m = calloc((size_t)nm, sizeof *m);
            size_t *len = calloc((size_t)nm, sizeof *len);
            p = nl + 1;
            for (int i = 0; i < nm; i++) {
                char *e;
                len[i] = strtoul(p, &e, 10);
                m[i] = e + 1;
                p = e + 1 + len[i] + 1;
            }
            v->n_merges = nm;
            v->merges = (const char *const *)m;
            v->merge_lens = len;
            continue;
        }
        if (!strncmp(p, "chat_template ", 14)) {
            char *e;
            size_t l = strtoul(p + 14, &e, 10);
            char *t = malloc(l + 1);
            memcpy(t, e + 1, l);
            t[l] = 0;
            v->chat_template = t;
            p = e + 1 + l + 1;
            continue;
        }
        *nl = 0;
        if (!strncmp(p, "pre ", 4)) { snprintf(pre, sizeof pre, "%s", p + 4); v->pre = pre; }
        else if (!strncmp(p, "bos_token_id ", 13)) v->bos_id = atoi(p + 13);
        else if (!strncmp(p, "eos_token_id ", 13)) v->eos_id = atoi(p + 13);
        else if (!strncmp(p, "unknown_token_id ", 17)) v->unk_id = atoi(p + 17);
        else if (!strncmp(p, "padding_token_id ", 17)) v->pad_id = atoi(p + 17);
        else if (!strncmp(p, "add_bos_token ", 14)) v->add_bos = atoi(p + 14);
        else if (!strncmp(p, "add_eos_token ", 14)) v->add_eos = atoi(p + 14);
        p = nl + 1;
    }
    return 0;
}

static void print_json_string(const char *s)
{
    json_t *j = json_string(s);
    char *d = json_dumps(j, JSON_ENCODE_ANY);
    printf("%s\n", d ? d : "null");
    free(d);
    json_decref(j);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bpe_driver json|dump|chat|chatdump FILE [--pre NAME] [--special]\n");
        return 2;
    }
    const char *mode = argv[1], *path = argv[2], *pre = NULL;
    int special = 0, roundtrip = 1, parse = 1;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--special")) special = 1;
        else if (!strcmp(argv[i], "--no-roundtrip")) roundtrip = 0;
        else if (!strcmp(argv[i], "--no-parse")) parse = 0;
        else if (!strcmp(argv[i], "--pre") && i + 1 < argc) pre = argv[++i];
    }
    peftc_error err = {0};
    bpe_tokenizer *tok = NULL;
    char *keep = NULL;
    peftc_status s;
    bpe_vocab v;
    memset(&v, 0, sizeof v);
    if (!strcmp(mode, "json") || !strcmp(mode, "chat")) s = bpe_from_tokenizer_json(path, &tok, &err);
    else {
        if (load_dump(path, &v, &keep)) {
            fprintf(stderr, "bpe_driver: %s: cannot read\n", path);
            return 1;
        }
        if (pre) v.pre = pre;
        s = bpe_from_vocab(&v, &tok, &err);
    }
    if (s) {
        fprintf(stderr, "bpe_driver: %s\n", err.msg);
        return 1;
    }
    size_t n;
    char *in = read_all(stdin, &n);
    int chat = !strcmp(mode, "chat") || !strcmp(mode, "chatdump");
    long bad = 0, total = 0;
    double secs = 0;
    for (char *line = in; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        json_error_t je;
        json_t *j = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!j) {
            fprintf(stderr, "bpe_driver: bad input line: %s\n", je.text);
            return 1;
        }
        if (chat) {
            json_t *ms = json_object_get(j, "messages");
            int nm = (int)json_array_size(ms);
            bpe_chat_msg *m = calloc((size_t)nm + 1, sizeof *m);
            for (int i = 0; i < nm; i++) {
                m[i].role = json_string_value(json_object_get(json_array_get(ms, i), "role"));
                m[i].content = json_string_value(json_object_get(json_array_get(ms, i), "content"));
            }
            char *o = NULL;
            if (bpe_chat_apply(tok, m, nm, json_is_true(json_object_get(j, "add_generation_prompt")), &o, &err)) {
                fprintf(stderr, "bpe_driver: %s\n", err.msg);
                return 1;
            }
            print_json_string(o);
            free(o);
            free(m);
        } else {
            const char *t = json_string_value(j);
            size_t tl = json_string_length(j);
            int32_t *ids = NULL;
            int k = 0;
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (bpe_encode_alloc(tok, t, tl, special, parse, &ids, &k, &err)) {
                fprintf(stderr, "bpe_driver: line %ld: %s\n", total + 1, err.msg);
                return 1;
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            secs += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
            printf("\n");
            if (!special && roundtrip) {
                char *d = NULL;
                size_t dl = 0;
                if (bpe_decode(tok, ids, k, 0, &d, &dl, &err) || dl != tl || memcmp(d, t, tl)) {
                    if (!bad) fprintf(stderr, "first roundtrip difference: line %ld\n", total + 1);
                    bad++;
                }
                free(d);
            }
            free(ids);
            total++;
        }
        json_decref(j);
        if (!nl) break;
        line = nl + 1;
    }
    if (!chat && roundtrip) fprintf(stderr, "roundtrip %ld %ld\n", bad, total);
    if (!chat) fprintf(stderr, "encode_ms %.0f\n", secs * 1e3);
    free(in);
    bpe_free(tok);
    free(keep);
    free((void *)v.tokens);
    free((void *)v.token_lens);
    free((void *)v.token_types);
    free((void *)v.merges);
    free((void *)v.merge_lens);
    free((void *)v.chat_template);
    return 0;
}
