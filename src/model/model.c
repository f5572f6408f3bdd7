/* model.c: the family registry and the public model API over the family
 * interface (model.h): loading picks the family, encoding runs its forward. */
#include "model/model.h"
#include "kernels/kernels.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every family peftc runs; a new one is added here (model.h says how). */
const model_family *const model_families[] = {
    &model_family_bert,
    &model_family_llama,
    NULL,
};

const model_family *model_family_find(const char *model_type)
{
    for (int i = 0; model_families[i]; i++)
        if (!strcmp(model_families[i]->name, model_type)) return model_families[i];
    return NULL;
}

const model_family *model_family_for_arch(peftc_arch arch)
{
    for (int i = 0; model_families[i]; i++)
        if (model_families[i]->arch == arch) return model_families[i];
    return NULL;
}

/* A model is a Hugging Face directory (config.json's model_type picks the
 * family) or a single file. GGUF files will name their family by
 * general.architecture (model_family_find) once io/ reads them. */
peftc_status peftc_model_load(const char *dir, peftc_model **out, peftc_error *err)
{
    return peftc_model_load_quantized(dir, PEFTC_QUANT_NONE, out, err);
}

peftc_status peftc_base_quant_parse(const char *name, peftc_base_quant *q, peftc_error *err)
{
    if (!strcmp(name, "nf4")) *q = PEFTC_QUANT_NF4;
    else if (!strcmp(name, "none")) *q = PEFTC_QUANT_NONE;
    else return peftc_fail(err, PEFTC_ERR_INPUT, "quantize: \"%s\" is not a base quantisation (nf4, none)", name);
    return PEFTC_OK;
}

/* the small files of a model directory a saved base keeps beside its weights */
static const char *const side_files[] = {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "sentence_bert_config.json", "modules.json",
                                         "config_sentence_transformers.json", "generation_config.json", NULL};

peftc_status peftc_model_save_base(peftc_model *m, const char *out_dir, peftc_error *err)
{
    if (!m->family->save_base)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: the %s family cannot save its base", m->dir, m->family->name);
    peftc_status rc;
    char dst[4096];
    if ((rc = peftc_mkdir_p(out_dir, err)) || (rc = peftc_copy_present_files(m->dir, out_dir, side_files, err))) return rc;
    if ((rc = peftc_path_join(dst, sizeof dst, out_dir, "model.safetensors", err))) return rc;
    return m->family->save_base(m, dst, err);
}

void peftc_model_linear_bytes(const peftc_model *m, int64_t *bytes, int64_t *params)
{
    *bytes = m->linear_bytes;
    *params = m->linear_params;
}

/* The base option reaches the family through the config it loads with: the
 * family decides how its linear weights are stored. */
peftc_status peftc_model_load_quantized(const char *dir, peftc_base_quant q, peftc_model **out, peftc_error *err)
{
    *out = NULL;
    size_t len = strlen(dir);
    /* a GGUF file names its family by general.architecture: Llama's loader
     * reads and checks it */
    if (len > 5 && !strcmp(dir + len - 5, ".gguf") && peftc_file_exists(dir)) {
        peftc_config gc = {0};
        gc.quantize = q;   /* NF4 of a GGUF base: the loader refuses it by name */
        return model_family_llama.load(dir, &gc, out, err);
    }
    char path[4096];
    peftc_config cfg;
    peftc_status rc;
    if ((rc = peftc_path_join(path, sizeof path, dir, "config.json", err)) || (rc = peftc_config_load(path, &cfg, err)))
        return rc;
    const model_family *f = model_family_for_arch(cfg.arch);
    /* config.c accepts only the families it parses; this catches a parser without a family */
    if (!f) return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: no model family runs this architecture", path);
    cfg.quantize = q;
    return f->load(dir, &cfg, out, err);
}

void peftc_model_free(peftc_model *m)
{
    if (!m) return;
    m->family->acts_free(m->infer);
    m->family->free(m);
}

const peftc_config *peftc_model_config(const peftc_model *m) { return &m->cfg; }

const char *peftc_model_family(const peftc_model *m) { return m->family->name; }

int64_t peftc_model_param_count(const peftc_model *m) { return m->n_params; }

peftc_status peftc_model_encode(peftc_model *m, const int32_t *ids, const int32_t *type_ids,
                                const int *lens, int B, int T, peftc_pool pool,
                                float *hidden, float *pooled, peftc_error *err)
{
    const peftc_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return peftc_fail(err, PEFTC_ERR_INPUT, "empty batch");
    if (T > c->max_position)
        return peftc_fail(err, PEFTC_ERR_INPUT, "sequence length %d exceeds the model's %d positions", T, c->max_position);
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1 || lens[b] > T) return peftc_fail(err, PEFTC_ERR_INPUT, "sequence %d has length %d outside [1, %d]", b, lens[b], T);
        for (int t = 0; t < T; t++) {
            int32_t id = ids[(size_t)b * T + t], tt = type_ids ? type_ids[(size_t)b * T + t] : 0;
            if (id < 0 || id >= c->vocab_size) return peftc_fail(err, PEFTC_ERR_INPUT, "token id %d outside the vocabulary (%d)", id, c->vocab_size);
            if (tt < 0 || tt >= (c->type_vocab_size > 0 ? c->type_vocab_size : 1))
                return peftc_fail(err, PEFTC_ERR_INPUT, "token type %d outside [0, %d)", tt, c->type_vocab_size);
        }
    }
    if (!m->infer || m->infer_B < B || m->infer_T < T || (size_t)m->infer_B * m->infer_T < (size_t)B * T) {
        int nB = B > m->infer_B ? B : m->infer_B, nT = T > m->infer_T ? T : m->infer_T;
        peftc_status rc = model_acts_init(m, &m->infer, nB, nT, 0, 0, 0, err);
        if (rc) { m->infer_B = m->infer_T = 0; return rc; }   /* the old buffers are gone */
        m->infer_B = nB;
        m->infer_T = nT;
    }
    m->family->forward(m, m->infer, NULL, ids, type_ids, lens, B, T);
    const float *h = m->family->hidden(m, m->infer);
    int C = c->hidden_size;
    if (hidden) memcpy(hidden, h, (size_t)B * T * C * sizeof(float));
    if (pooled) {
        if (pool == PEFTC_POOL_CLS) cls_pool_forward(pooled, h, B, T, C);
        else mean_pool_forward(pooled, h, lens, B, T, C);
    }
    return PEFTC_OK;
}

peftc_status model_check_size(const char *path, int64_t vocab, int64_t hidden, int64_t layers, int64_t intermediate,
                              int64_t positions, peftc_error *err)
{
    /* doubles: a crafted config must not overflow the estimate itself */
    double C = (double)hidden, params = (double)vocab * C + (double)positions * C +
                                        (double)layers * (4.0 * C * C + 3.0 * C * (double)intermediate);
    double need = params * 0.5;   /* the smallest storage peftc reads: 4-bit weights */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 1e18;
    if (need > have)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED,
                          "%s: %lld layers of hidden size %lld (intermediate %lld), vocabulary %lld, %lld positions: %.3g parameters, "
                          "at least %.1f GB even at 4 bits, but this machine has %.1f GB",
                          path, (long long)layers, (long long)hidden, (long long)intermediate, (long long)vocab, (long long)positions,
                          params, need / 1e9, have / 1e9);
    return PEFTC_OK;
}
