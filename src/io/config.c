/* config.c: Hugging Face config.json -> peftc_config: model_type picks the
 * family's parser, which rejects what that family cannot run exactly
 * (activations, embeddings); other model types are rejected by name. */
#include "io/config.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static peftc_status get_int(json_t *root, const char *path, const char *key, int required,
                            int def, int lo, int *out, peftc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        *out = def;
        return PEFTC_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > (1 << 30))
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: field \"%s\" must be an integer >= %d", path, key, lo);
    *out = (int)json_integer_value(v);
    return PEFTC_OK;
}

static peftc_status get_float(json_t *root, const char *path, const char *key, float def,
                              float *out, peftc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) { *out = def; return PEFTC_OK; }
    if (!json_is_number(v) || json_number_value(v) < 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: field \"%s\" must be a non-negative number", path, key);
    *out = (float)json_number_value(v);
    return PEFTC_OK;
}

/* BERT (BertModel, and the task checkpoints around it): every field the
 * encoder reads, and what it cannot run exactly. */
static peftc_status parse_bert(json_t *root, const char *path, peftc_config *cfg, peftc_error *err)
{
    peftc_status rc;
    cfg->arch = PEFTC_ARCH_BERT;
    if ((rc = get_int(root, path, "vocab_size", 1, 0, 1, &cfg->vocab_size, err)) ||
        (rc = get_int(root, path, "hidden_size", 1, 0, 1, &cfg->hidden_size, err)) ||
        (rc = get_int(root, path, "num_hidden_layers", 1, 0, 1, &cfg->num_layers, err)) ||
        (rc = get_int(root, path, "num_attention_heads", 1, 0, 1, &cfg->num_heads, err)) ||
        (rc = get_int(root, path, "intermediate_size", 1, 0, 1, &cfg->intermediate_size, err)) ||
        (rc = get_int(root, path, "max_position_embeddings", 0, 512, 1, &cfg->max_position, err)) ||
        (rc = get_int(root, path, "type_vocab_size", 0, 2, 1, &cfg->type_vocab_size, err)) ||
        (rc = get_int(root, path, "pad_token_id", 0, 0, 0, &cfg->pad_token_id, err)) ||
        (rc = get_float(root, path, "layer_norm_eps", 1e-12f, &cfg->layer_norm_eps, err)) ||
        (rc = get_float(root, path, "hidden_dropout_prob", 0.1f, &cfg->hidden_dropout, err)) ||
        (rc = get_float(root, path, "attention_probs_dropout_prob", 0.1f, &cfg->attention_dropout, err)))
        return rc;
    if (cfg->hidden_size % cfg->num_heads != 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                          path, cfg->hidden_size, cfg->num_heads);
    if (cfg->hidden_dropout >= 1 || cfg->attention_dropout >= 1)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: dropout probabilities must be below 1", path);
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), "gelu") == 0))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: hidden_act %s is not supported (peftc runs the exact \"gelu\")",
                          path, json_is_string(act) ? json_string_value(act) : "(not a string)");
    json_t *pe = json_object_get(root, "position_embedding_type");
    if (pe && !(json_is_string(pe) && strcmp(json_string_value(pe), "absolute") == 0))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: position_embedding_type must be \"absolute\"", path);
    return PEFTC_OK;
}

/* Llama: the architecture only; the family's loader (model/llama.c) reads
 * and checks its own fields from the same config.json. */
static peftc_status parse_llama(json_t *root, const char *path, peftc_config *cfg, peftc_error *err)
{
    (void)root; (void)path; (void)err;
    cfg->arch = PEFTC_ARCH_LLAMA;
    return PEFTC_OK;
}

/* One parser per model_type a family runs (model/model.c registers the
 * families themselves). "llama": added by the Llama family. */
static const struct {
    const char *model_type;
    peftc_status (*parse)(json_t *root, const char *path, peftc_config *cfg, peftc_error *err);
} parsers[] = {
    {"bert", parse_bert},
    {"llama", parse_llama},
};

peftc_status peftc_config_load(const char *path, peftc_config *cfg, peftc_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    char *buf;
    size_t n;
    if (!peftc_file_exists(path)) {
        struct stat sb;
        if (stat(path, &sb) == 0) {   /* there, but a FIFO, device or directory */
            int fd;
            peftc_status rc = peftc_open_regular(path, &fd, NULL, err);
            if (!rc) close(fd);
            return rc ? rc : peftc_fail(err, PEFTC_ERR_IO, "%s: not a regular file", path);
        }
        return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open (is this a model directory?)", path);
    }
    peftc_status rc = peftc_read_file(path, &buf, &n, err);
    if (rc) return rc;
    rc = peftc_config_parse(buf, n, path, cfg, err);
    free(buf);
    return rc;
}

peftc_status peftc_config_parse(const char *text, size_t len, const char *path, peftc_config *cfg, peftc_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not valid JSON at line %d: %s", path, jerr.line, jerr.text);
    peftc_status rc = PEFTC_OK;
    if (!json_is_object(root)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a JSON object", path); goto out; }

    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: missing required field \"model_type\"", path); goto out; }
    const char *type = json_string_value(mt);
    size_t n = sizeof parsers / sizeof *parsers;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(type, parsers[i].model_type)) { rc = parsers[i].parse(root, path, cfg, err); goto out; }
    char list[256] = "";
    for (size_t i = 0, len = 0; i < n && len < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", parsers[i].model_type);
    rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not supported (peftc runs: %s)", path, type, list);
out:
    json_decref(root);
    return rc;
}
