/* bpe_gguf.c: a byte-level BPE tokenizer from a GGUF file's tokenizer.*
 * metadata (tokenizer.ggml.model "gpt2": tokens, merges, token types, the
 * pre-tokenizer name, special ids, add_bos/add_eos, the chat template). */
#include "io/gguf.h"
#include "tokenizer/bpe.h"

#include <stdlib.h>
#include <string.h>

static int32_t get_id(const gguf_file *g, const char *key)
{
    int64_t v;
    return gguf_get_int(g, key, &v) == 1 && v >= 0 && v < INT32_MAX ? (int32_t)v : -1;
}

peftc_status bpe_from_gguf(const gguf_file *g, bpe_tokenizer **out, peftc_error *err)
{
    *out = NULL;
    const char *model;
    size_t ml;
    if (gguf_get_str(g, "tokenizer.ggml.model", &model, &ml) != 1)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no tokenizer (tokenizer.ggml.model is missing)", gguf_path(g));
    if (ml != 4 || memcmp(model, "gpt2", 4))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%.*s\" is not supported (peftc reads byte-level BPE: \"gpt2\")",
                          gguf_path(g), (int)(ml < 40 ? ml : 40), model);
    int it = gguf_find_key(g, "tokenizer.ggml.tokens"), im = gguf_find_key(g, "tokenizer.ggml.merges"),
        ity = gguf_find_key(g, "tokenizer.ggml.token_type");
    if (it < 0 || gguf_arr_type(g, it) != GGUF_TYPE_STRING)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tokenizer.ggml.tokens is missing or not an array of strings", gguf_path(g));
    if (im < 0 || gguf_arr_type(g, im) != GGUF_TYPE_STRING || gguf_arr_len(g, im) == 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: a BPE tokenizer without merges (tokenizer.ggml.merges is missing or empty)", gguf_path(g));
    uint64_t nt = gguf_arr_len(g, it), nm = gguf_arr_len(g, im);
    if (nt == 0 || nt > (1u << 24) || nm > (1u << 24))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: %llu tokens and %llu merges: out of range (1 to 2^24)", gguf_path(g),
                          (unsigned long long)nt, (unsigned long long)nm);
    const int32_t *types = NULL;
    int32_t *types_copy = NULL;
    if (ity >= 0) {
        if (gguf_arr_len(g, ity) != nt || (gguf_arr_type(g, ity) != GGUF_TYPE_INT32 && gguf_arr_type(g, ity) != GGUF_TYPE_UINT32))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be %llu int32 values", gguf_path(g), (unsigned long long)nt);
        types_copy = malloc(nt * sizeof *types_copy);
        if (!types_copy) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        memcpy(types_copy, gguf_arr_data(g, ity), nt * sizeof *types_copy);
        types = types_copy;
    }
    const char **tok = malloc(nt * sizeof *tok), **mer = malloc((nm ? nm : 1) * sizeof *mer);
    size_t *tl = malloc(nt * sizeof *tl), *mlen = malloc((nm ? nm : 1) * sizeof *mlen);
    char *pre = NULL, *tmpl = NULL;
    peftc_status rc = PEFTC_OK;
    if (!tok || !mer || !tl || !mlen) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    for (uint64_t j = 0; j < nt; j++) gguf_arr_str(g, it, j, &tok[j], &tl[j]);
    for (uint64_t j = 0; j < nm; j++) gguf_arr_str(g, im, j, &mer[j], &mlen[j]);
    const char *s;
    size_t sl;
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s, &sl) == 1) {
        if (!(pre = strndup(s, sl))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    }
    if (gguf_get_str(g, "tokenizer.chat_template", &s, &sl) == 1) {
        if (!(tmpl = strndup(s, sl))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); goto done; }
    }
    int add_bos = 0, add_eos = 0;
    gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &add_eos);
    bpe_vocab v = {
        .n_tokens = (int)nt, .tokens = tok, .token_lens = tl, .n_merges = (int)nm, .merges = mer, .merge_lens = mlen,
        .token_types = types, .pre = pre ? pre : "default",
        .bos_id = get_id(g, "tokenizer.ggml.bos_token_id"), .eos_id = get_id(g, "tokenizer.ggml.eos_token_id"),
        .unk_id = get_id(g, "tokenizer.ggml.unknown_token_id"), .pad_id = get_id(g, "tokenizer.ggml.padding_token_id"),
        .add_bos = add_bos, .add_eos = add_eos, .chat_template = tmpl,
    };
    rc = bpe_from_vocab(&v, out, err);
    if (rc && err) {
        /* name the file: bpe_from_vocab cannot know it */
        char msg[sizeof err->msg];
        memcpy(msg, err->msg, sizeof msg);
        msg[200] = 0;   /* the file name and a bounded message fit */
        snprintf(err->msg, sizeof err->msg, "%.300s: %.200s", gguf_path(g), msg);
    }
done:
    free(types_copy);
    free(tok); free(mer); free(tl); free(mlen);
    free(pre); free(tmpl);
    return rc;
}
