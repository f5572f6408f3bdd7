/* adapter_formats.c: LoRA adapters of decoders in HF PEFT and llama.cpp GGUF
 * form (adapter_formats.h), and peftc_export_gguf_lora. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "train/adapter_formats.h"
#include "io/gguf_write.h"
#include "io/safetensors.h"
#include "peftc.h"

#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int adapter_is_gguf(const char *path)
{
    char m[4] = {0};
    FILE *f = peftc_fopen_regular(path);
    if (!f) return 0;
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(m, "GGUF", 4);
}

void lora_factors_free(lora_factors *lf)
{
    for (int i = 0; i < lf->n; i++) { free(lf->f[i].a); free(lf->f[i].b); }
    for (int i = 0; i < lf->nv; i++) free(lf->v[i].l);
    free(lf->f);
    free(lf->v);
    memset(lf, 0, sizeof *lf);
}

static peftc_status push_factor(lora_factors *lf, int layer, site_id s, int r, int in, int out, float scale, peftc_error *err)
{
    lora_factor *f = realloc(lf->f, (size_t)(lf->n + 1) * sizeof *f);
    if (!f) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    lf->f = f;
    lora_factor *x = &f[lf->n];
    *x = (lora_factor){layer, s, r, in, out, scale, malloc((size_t)r * in * sizeof(float)), malloc((size_t)out * r * sizeof(float))};
    lf->n++;
    if (!x->a || !x->b) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory for a %d x %d LoRA factor", out, in);
    return PEFTC_OK;
}

/* 1 if lf already holds a factor at (layer, s). */
static int find_duplicate(const lora_factors *lf, int layer, site_id s)
{
    for (int i = 0; i < lf->n; i++)
        if (lf->f[i].layer == layer && lf->f[i].site == s) return 1;
    return 0;
}

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------ HF PEFT */

/* PEFT's get_pattern_key: the first key K of the object with
 * re.match(r"(.*\.)?(K)$", module) (keys are regular expressions). 1 and
 * *value set if one matched, 0 if none, -1 (err set) for a bad pattern. */
static int pattern_value(json_t *obj, const char *module, double *value, const char *path, peftc_error *err)
{
    if (!json_is_object(obj)) return 0;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        size_t len = strlen(k) + 16;
        char *pat = malloc(len);
        if (!pat) { peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); return -1; }
        snprintf(pat, len, "^(.*\\.)?(%s)$", k);
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);
        free(pat);
        if (!re) { peftc_fail(err, PEFTC_ERR_FORMAT, "%s: pattern key '%s' is not a regular expression", path, k); return -1; }
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        int m = md ? pcre2_match(re, (PCRE2_SPTR)module, strlen(module), 0, 0, md, NULL) : -1;
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        if (m >= 0) {
            if (!json_is_number(v)) { peftc_fail(err, PEFTC_ERR_FORMAT, "%s: pattern '%s' must map to a number", path, k); return -1; }
            *value = json_number_value(v);
            return 1;
        }
    }
    return 0;
}

/* "<prefix><layer>.<module>.lora_X.weight" (LoRA) or "...lora_X" (AdaLoRA's
 * parameters, X also E) -> layer, site, X; *xpos: X's offset in key. */
static int parse_peft_key(const decoder *dec, const char *key, int ada, int *layer, site_id *s, char *ab, size_t *xpos,
                          char *module, size_t cap)
{
    const char *pre = decoder_peft_layers_prefix(dec);
    size_t pl = strlen(pre), kl = strlen(key);
    const char *sfx = ada ? "" : ".weight";
    size_t sl = strlen(".lora_X") + strlen(sfx);
    if (kl <= pl + sl || strncmp(key, pre, pl)) return 0;
    const char *tail = key + kl - sl;
    if (strncmp(tail, ".lora_", 6) || strcmp(tail + 7, sfx) || !strchr(ada ? "ABE" : "AB", tail[6]) || !tail[6]) return 0;
    *ab = tail[6];
    *xpos = (size_t)(tail + 6 - key);
    const char *p = key + pl;
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || *end != '.' || l < 0 || l > 100000) return 0;
    size_t ml = (size_t)(tail - (end + 1));
    if (ml == 0 || ml >= cap) return 0;
    memcpy(module, end + 1, ml);
    module[ml] = 0;
    if (!decoder_site_of_module(dec, module, s)) return 0;
    *layer = (int)l;
    return 1;
}

/* AdaLoRA: the kept triplets of module mpath by rank_pattern's
 * "<mpath>.lora_E" flags (PEFT's resize_modules_by_rank_pattern), init_r
 * when there is no pattern yet; -1 (err set) for a malformed entry. */
static int adalora_kept(json_t *rank_pattern, const char *mpath, int init_r, const char *path, peftc_error *err)
{
    if (!json_is_object(rank_pattern)) return init_r;
    char key[300];
    snprintf(key, sizeof key, "%s.lora_E", mpath);
    json_t *v = json_object_get(rank_pattern, key), *e;
    if (!json_is_array(v) || json_array_size(v) != (size_t)init_r) {
        peftc_fail(err, PEFTC_ERR_FORMAT, "%s: rank_pattern has no list of %d flags for '%s'", path, init_r, key);
        return -1;
    }
    size_t i;
    int kept = 0;
    json_array_foreach(v, i, e) kept += json_is_true(e);
    return kept;
}

/* IA3: ia3_l (out, 1) multiplies a layer's output, (1, in) its input (PEFT's
 * feedforward_modules): the shape says which, as PEFT's IA3Layer makes it. */
static peftc_status read_peft_ia3(const char *stpath, const peftc_safetensors *st, const decoder *dec, lora_factors *lf,
                                  peftc_error *err)
{
    static const char sfx[] = ".ia3_l";
    const char *pre = decoder_peft_layers_prefix(dec);
    size_t pl = strlen(pre), sl = sizeof sfx - 1;
    peftc_status rc = PEFTC_OK;
    const decoder_info *di = decoder_get_info(dec);
    if (!(lf->v = calloc((size_t)(st->n ? st->n : 1), sizeof *lf->v))) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < st->n && !rc; i++) {
        const st_tensor *t = &st->t[i];
        size_t kl = strlen(t->name);
        /* "<prefix><layer>.<module>.ia3_l" */
        char module[128];
        char *end = NULL;
        long layer = -1;
        site_id s;
        int ok = kl > pl + sl && !strncmp(t->name, pre, pl) && !strcmp(t->name + kl - sl, sfx);
        if (ok) {
            layer = strtol(t->name + pl, &end, 10);
            size_t ml = ok && end && *end == '.' ? (size_t)(t->name + kl - sl - (end + 1)) : 0;
            ok = end != t->name + pl && layer >= 0 && layer <= 100000 && ml > 0 && ml < sizeof module;
            if (ok) {
                memcpy(module, end + 1, ml);
                module[ml] = 0;
                ok = decoder_site_of_module(dec, module, &s);
            }
        }
        if (!ok) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not an (IA)3 vector (ia3_l) of a linear layer of this %s model (maybe wrong base model?)",
                            stpath, t->name, di->arch);
            break;
        }
        if (layer >= di->n_layers) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is for layer %ld; the model has %d layers (maybe wrong base model?)",
                            stpath, t->name, layer, di->n_layers);
            break;
        }
        int in, out;
        decoder_site_dims(dec, s, &in, &out);
        int input = t->ndim == 2 && t->shape[0] == 1 && t->shape[1] == in && !(in == 1 && out == 1);
        if (!input && !(t->ndim == 2 && t->shape[0] == out && t->shape[1] == 1)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' must be (%d, 1), or (1, %d) for a feed-forward module, for this model (maybe wrong base model?)",
                            stpath, t->name, out, in);
            break;
        }
        ia3_vector *v = &lf->v[lf->nv];
        *v = (ia3_vector){(int)layer, s, input, input ? in : out, malloc((size_t)(input ? in : out) * sizeof(float))};
        lf->nv++;
        if (!v->l) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
        if ((rc = st_to_f32(st, t, v->l, err))) break;
        if (!all_finite(v->l, (size_t)v->n)) { rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: '%s' holds a non-finite value", stpath, t->name); break; }
        if (!input) decoder_adapt_lora_b(dec, s, v->l, out, 1);   /* q/k output rows of a GGUF base */
    }
    if (!rc && !lf->nv) rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no (IA)3 tensors (ia3_l)", stpath);
    return rc;
}

static peftc_status read_peft(const char *dir, const decoder *dec, float us, lora_factors *lf, peftc_error *err)
{
    char path[4096], stpath[4096];
    peftc_status rc = peftc_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (rc || (rc = peftc_path_join(stpath, sizeof stpath, dir, "adapter_model.safetensors", err))) return rc;
    char *text;
    size_t len;
    if ((rc = peftc_read_file(path, &text, &len, err))) return rc;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    free(text);
    if (!j || !json_is_object(j)) {
        if (j) json_decref(j);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
    }
    peftc_safetensors *st = NULL;
    const char *type = json_string_value(json_object_get(j, "peft_type"));
    json_t *jr = json_object_get(j, "r"), *ja = json_object_get(j, "lora_alpha");
    json_t *mts = json_object_get(j, "modules_to_save");
    const char *bias = json_string_value(json_object_get(j, "bias"));
    /* AdaLoRA: SVD factors P diag(E) Q, applied as the LoRA pair (B, diag(E) A) at
     * SVDLinear's scale lora_alpha / (ranknum + 1e-5), ranknum = init_r */
    int ada = type && !strcmp(type, "ADALORA"), ia3 = type && !strcmp(type, "IA3");
    if (ada) jr = json_object_get(j, "init_r");
    if (!type || (strcmp(type, "LORA") && !ada && !ia3)) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: peft_type %s: decoders take LORA, ADALORA and IA3 adapters", path, type ? type : "(missing)");
    } else if (ia3) {
        /* no r or alpha: vectors only; --lora-scale has no meaning PEFT gives them */
        if (json_is_true(json_object_get(j, "fan_in_fan_out")))
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to this model", path);
        else if (mts && !json_is_null(mts) && !(json_is_array(mts) && json_array_size(mts) == 0))
            rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: modules_to_save is not supported for decoders", path);
        else if (us != 1.0f)
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: an (IA)3 adapter has no scale to set (the adapter scale %g applies to LoRA)", dir, us);
        else if (!(rc = peftc_safetensors_open(stpath, &st, err)))
            rc = read_peft_ia3(stpath, st, dec, lf, err);
        goto done;
    } else if (!json_is_integer(jr) || json_integer_value(jr) < 1 || json_integer_value(jr) > 65536) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"%s\" must be an integer in [1, 65536]", path, ada ? "init_r" : "r");
    } else if (ja && !json_is_number(ja)) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: \"lora_alpha\" must be a number", path);
    } else if (json_is_true(json_object_get(j, "use_dora"))) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: use_dora: DoRA adapters are not LoRA factors llama.cpp or this loader applies", path);
    } else if (json_is_true(json_object_get(j, "lora_bias"))) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: lora_bias: a LoRA with a bias on B is not supported", path);
    } else if (json_object_get(j, "layer_replication") && !json_is_null(json_object_get(j, "layer_replication"))) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: layer_replication changes the model's layers and is not supported", path);
    } else if (json_is_true(json_object_get(j, "fan_in_fan_out"))) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to this model", path);
    } else if (bias && strcmp(bias, "none")) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: bias \"%s\": the model has no biases to train (use \"none\")", path, bias);
    } else if (mts && !json_is_null(mts) && !(json_is_array(mts) && json_array_size(mts) == 0)) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: modules_to_save is not supported for decoders", path);
    }
    if (rc) goto done;
    int r0 = (int)json_integer_value(jr);
    double alpha0 = ja ? json_number_value(ja) : 8.0;
    if (ada && !(alpha0 > 0)) alpha0 = r0;   /* SVDLinear: scaling = lora_alpha if lora_alpha > 0 else r */
    int rslora = !ada && json_is_true(json_object_get(j, "use_rslora"));
    json_t *rank_pattern = json_object_get(j, "rank_pattern"), *alpha_pattern = json_object_get(j, "alpha_pattern");
    lf->alpha = (float)alpha0;
    if ((rc = peftc_safetensors_open(stpath, &st, err))) goto done;
    /* the module path PEFT matches patterns against: the key without
     * "base_model.model." and without the lora suffix */
    const char *pre = decoder_peft_layers_prefix(dec);
    const char *mpre = strncmp(pre, "base_model.model.", 17) ? pre : pre + 17;
    for (int i = 0; i < st->n && !rc; i++) {
        const st_tensor *t = &st->t[i];
        int layer;
        site_id s;
        char ab, module[128];
        size_t xpos;
        if (!parse_peft_key(dec, t->name, ada, &layer, &s, &ab, &xpos, module, sizeof module)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not a%s factor of a linear layer of this %s model (maybe wrong base model?)",
                            stpath, t->name, ada ? "n AdaLoRA" : " LoRA", decoder_get_info(dec)->arch);
            break;
        }
        /* its partners (A, B and, AdaLoRA, E of the module), each set handled at its A */
        const st_tensor *part[3] = {NULL, NULL, NULL};
        const char *letters = ada ? "ABE" : "AB";
        for (int q = 0; letters[q]; q++) {
            char other[512];
            snprintf(other, sizeof other, "%s", t->name);
            other[xpos] = letters[q];
            part[q] = st_find(st, other);
            if (!part[q]) break;
        }
        int missing = !part[0] ? 0 : !part[1] ? 1 : ada && !part[2] ? 2 : -1;
        if (missing >= 0) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' has no lora_%c beside it", stpath, t->name, letters[missing]);
            break;
        }
        if (ab != 'A') continue;
        const st_tensor *tb = part[1], *te = part[2];
        if (layer >= decoder_get_info(dec)->n_layers) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is for layer %d; the model has %d layers (maybe wrong base model?)",
                            stpath, t->name, layer, decoder_get_info(dec)->n_layers);
            break;
        }
        char mpath[256];
        snprintf(mpath, sizeof mpath, "%s%d.%s", mpre, layer, module);
        double rv = r0, av = alpha0;
        int got = 0;
        if (ada) {
            int kept = adalora_kept(rank_pattern, mpath, r0, path, err);
            if (kept < 0) { rc = PEFTC_ERR_FORMAT; break; }
            rv = kept;
        } else if ((got = pattern_value(rank_pattern, mpath, &rv, path, err)) < 0 || pattern_value(alpha_pattern, mpath, &av, path, err) < 0) {
            rc = PEFTC_ERR_FORMAT;
            break;
        }
        int r = (int)rv;
        if (got && (rv != r || r < 1 || r > 65536)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: rank_pattern gives %s rank %g", path, mpath, rv); break; }
        int in, out;
        decoder_site_dims(dec, s, &in, &out);
        if (t->ndim != 2 || t->shape[0] != r || t->shape[1] != in || tb->ndim != 2 || tb->shape[0] != out || tb->shape[1] != r ||
            (te && (te->ndim != 2 || te->shape[0] != r || te->shape[1] != 1))) {
            if (ada)
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' must be (%d, %d), its lora_B (%d, %d) and lora_E (%d, 1) for this model and the rank_pattern's %d kept (maybe wrong base model?)",
                                stpath, t->name, r, in, out, r, r, r);
            else
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' must be (%d, %d) and its lora_B (%d, %d) for this model and r %d (maybe wrong base model?)",
                                stpath, t->name, r, in, out, r, r);
            break;
        }
        if (r == 0) continue;   /* an AdaLoRA module pruned to rank 0 adds nothing */
        /* ranknum is a float32 parameter: init_r + 1e-5 rounded to float first (adalora_scale) */
        float scale = ada ? us * (float)(av / (double)((float)r0 + 1e-5f))
                          : us * (float)(rslora ? av / sqrt((double)r) : av / r);
        if ((rc = push_factor(lf, layer, s, r, in, out, scale, err))) break;
        lora_factor *f = &lf->f[lf->n - 1];
        if ((rc = st_to_f32(st, t, f->a, err)) || (rc = st_to_f32(st, tb, f->b, err))) break;
        if (te) {   /* diag(E) A */
            float *e = malloc((size_t)r * sizeof *e);
            if (!e) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            if (!(rc = st_to_f32(st, te, e, err)))
                for (int k = 0; k < r; k++)
                    for (int c = 0; c < in; c++) f->a[(size_t)k * in + c] *= e[k];
            free(e);
            if (rc) break;
        }
        if (!all_finite(f->a, (size_t)r * in) || !all_finite(f->b, (size_t)out * r)) {
            rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: '%s' or its lora_B%s holds a non-finite value", stpath, t->name, ada ? " or lora_E" : "");
            break;
        }
        decoder_adapt_lora_b(dec, s, f->b, out, r);
    }
    /* (an AdaLoRA adapter whose every module was pruned to rank 0 is the base itself) */
    if (!rc && !lf->n && (!ada || !st->n)) rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no %s tensors (lora_A/lora_B%s)", stpath, ada ? "AdaLoRA" : "LoRA", ada ? "/lora_E" : "");
done:
    if (st) peftc_safetensors_free(st);
    json_decref(j);
    return rc;
}

/* ------------------------------------------------------------ GGUF LoRA */

static float half_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (!m) u = s;
        else {   /* subnormal: normalise */
            e = 127 - 15 + 1;
            while (!(m & 0x400)) { m <<= 1; e--; }
            u = s | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 127 - 15) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static peftc_status gguf_to_f32(const char *path, const gguf_tensor *t, float *dst, peftc_error *err)
{
    int64_t n = gguf_tensor_numel(t);
    if (t->type == GGML_TYPE_F32) { memcpy(dst, t->data, (size_t)n * 4); return PEFTC_OK; }
    const uint16_t *h = t->data;
    if (t->type == GGML_TYPE_F16) { for (int64_t i = 0; i < n; i++) dst[i] = half_to_f32(h[i]); return PEFTC_OK; }
    if (t->type == GGML_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) { uint32_t u = (uint32_t)h[i] << 16; memcpy(&dst[i], &u, 4); }
        return PEFTC_OK;
    }
    const ggml_type_traits *tr = ggml_traits(t->type);
    return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; LoRA factors are read as f32, f16 or bf16", path, t->name, tr ? tr->name : "of an unknown type");
}

/* "blk.<layer>.<gguf name>.weight.lora_<x>" -> layer, site, x */
static int parse_gguf_key(const decoder *dec, const char *name, int *layer, site_id *s, char *ab)
{
    size_t n = strlen(name);
    static const char sa[] = ".weight.lora_a";
    size_t sl = sizeof sa - 1;
    if (n <= 4 + sl || strncmp(name, "blk.", 4)) return 0;
    const char *tail = name + n - sl;
    if (strcmp(tail, ".weight.lora_a") && strcmp(tail, ".weight.lora_b")) return 0;
    *ab = tail[sl - 1];
    char *end;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > 100000) return 0;
    const char *g = end + 1;
    size_t gl = (size_t)(tail - g);
    for (int k = 0; k < SITE_COUNT; k++) {
        const char *gn = decoder_gguf_name_of_site(dec, (site_id)k);
        if (gn && strlen(gn) == gl && !strncmp(gn, g, gl)) { *layer = (int)l; *s = (site_id)k; return 1; }
    }
    return 0;
}

static peftc_status read_gguf(const char *path, const decoder *dec, float us, lora_factors *lf, peftc_error *err)
{
    gguf_file *g;
    peftc_status rc = gguf_open(path, &g, err);
    if (rc) return rc;
    const decoder_info *di = decoder_get_info(dec);
    const char *s;
    size_t len;
    char v[64];
    double alpha = 0;
    if (gguf_get_str(g, "general.type", &s, &len) != 1 || !gguf_str_copy(s, len, v, sizeof v) || strcmp(v, "adapter")) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: a GGUF LoRA adapter has general.type 'adapter' (this file: a model, not an adapter?)", path);
    } else if (gguf_get_str(g, "adapter.type", &s, &len) != 1 || !gguf_str_copy(s, len, v, sizeof v) || strcmp(v, "lora")) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: adapter.type must be 'lora'", path);
    } else if (gguf_get_str(g, "general.architecture", &s, &len) != 1 || !gguf_str_copy(s, len, v, sizeof v) || strcmp(v, di->arch)) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: an adapter for architecture '%s'; the model is '%s'", path,
                        gguf_get_str(g, "general.architecture", &s, &len) == 1 ? v : "(missing)", di->arch);
    } else if (gguf_get_float(g, "adapter.lora.alpha", &alpha) < 0 || !isfinite(alpha)) {
        rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: adapter.lora.alpha must be a finite number", path);
    } else if (gguf_find_key(g, "adapter.alora.invocation_tokens") >= 0) {
        rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: activated LoRA (adapter.alora.invocation_tokens) is not supported", path);
    }
    lf->alpha = (float)alpha;
    for (int i = 0; !rc && i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        int layer;
        site_id site;
        char ab;
        if (!parse_gguf_key(dec, t->name, &layer, &site, &ab)) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is not a LoRA factor (blk.N.<weight>.weight.lora_a/lora_b) of this %s model",
                            path, t->name, di->arch);
            break;
        }
        char other[256];
        snprintf(other, sizeof other, "%s", t->name);
        other[strlen(other) - 1] = ab == 'a' ? 'b' : 'a';
        const gguf_tensor *tb = gguf_find_tensor(g, other);
        if (!tb) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' has no %s beside it", path, t->name, ab == 'a' ? "lora_b" : "lora_a"); break; }
        if (ab == 'b') continue;
        if (layer >= di->n_layers) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: tensor '%s' is for layer %d; the model has %d layers (maybe wrong base model?)", path, t->name, layer, di->n_layers);
            break;
        }
        if (find_duplicate(lf, layer, site)) continue;   /* names are unique in a GGUF file; defensive */
        int in, out;
        decoder_site_dims(dec, site, &in, &out);
        int64_t r = t->ne[1];
        /* llama.cpp's checks: a ne [in, r], b ne [r, out] */
        if (t->n_dims != 2 || tb->n_dims != 2 || t->ne[0] != in || tb->ne[1] != out || tb->ne[0] != r || r < 1 || r > 65536) {
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: '%s' must have ne [%d, r] and its lora_b ne [r, %d] (maybe wrong base model?)", path, t->name, in, out);
            break;
        }
        /* llama.cpp: scale = alpha / r, or 1 when alpha is 0 */
        float scale = us * (alpha != 0 ? (float)(alpha / (double)r) : 1.0f);
        if ((rc = push_factor(lf, layer, site, (int)r, in, out, scale, err))) break;
        lora_factor *f = &lf->f[lf->n - 1];
        if ((rc = gguf_to_f32(path, t, f->a, err)) || (rc = gguf_to_f32(path, tb, f->b, err))) break;
        if (!all_finite(f->a, (size_t)r * in) || !all_finite(f->b, (size_t)out * r)) {
            rc = peftc_fail(err, PEFTC_ERR_NUMERIC, "%s: '%s' or its lora_b holds a non-finite value", path, t->name);
            break;
        }
        decoder_lora_b_from_gguf(dec, site, f->b, out, (int)r);
    }
    if (!rc && !lf->n) rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no LoRA tensors (*.lora_a / *.lora_b)", path);
    gguf_close(g);
    return rc;
}

peftc_status lora_read(const char *path, const decoder *dec, float user_scale, lora_factors *out, peftc_error *err)
{
    memset(out, 0, sizeof *out);
    peftc_status rc = adapter_is_gguf(path) ? read_gguf(path, dec, user_scale, out, err) : read_peft(path, dec, user_scale, out, err);
    if (rc) lora_factors_free(out);
    return rc;
}

peftc_status lora_write_gguf(const lora_factors *lf, const decoder *dec, const char *out_path, peftc_error *err)
{
    const decoder_info *di = decoder_get_info(dec);
    if (lf->nv)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "an (IA)3 adapter has no GGUF form (llama.cpp's adapters are LoRA only)");
    if (!decoder_gguf(dec))
        return peftc_fail(err, PEFTC_ERR_INPUT, "--model: a GGUF LoRA is made for a GGUF base (its q/k row order); give the .gguf file llama.cpp will load");
    gguf_writer *w;
    peftc_status rc = gguf_writer_new(&w, err);
    if (rc) return rc;
    float alpha = lf->alpha;
    float **bs = calloc((size_t)(lf->n ? lf->n : 1), sizeof *bs);
    if (!bs) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    if (!rc) rc = gguf_w_str(w, "general.type", "adapter", 7, err);
    if (!rc) rc = gguf_w_str(w, "general.architecture", di->arch, strlen(di->arch), err);
    if (!rc) rc = gguf_w_str(w, "adapter.type", "lora", 4, err);
    if (!rc) rc = gguf_w_f32(w, "adapter.lora.alpha", alpha, err);
    for (int i = 0; !rc && i < lf->n; i++) {
        const lora_factor *f = &lf->f[i];
        const char *gn = decoder_gguf_name_of_site(dec, f->site);
        if (!gn) { rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "a LoRA at %s has no llama.cpp tensor name", site_name(f->site)); break; }
        /* llama.cpp multiplies B A by alpha / r (1 if alpha is 0): fold the
         * rest of the trained scale (rsLoRA, alpha_pattern) into B */
        double applied = alpha != 0 ? (double)alpha / f->r : 1.0;
        float fold = (float)(f->scale / applied);
        if (!(bs[i] = malloc((size_t)f->out * f->r * sizeof(float)))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
        for (size_t j = 0; j < (size_t)f->out * f->r; j++) bs[i][j] = f->b[j] * fold;
        char name[160];
        int64_t ne_a[2] = {f->in, f->r}, ne_b[2] = {f->r, f->out};
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", f->layer, gn);
        if ((rc = gguf_w_tensor(w, name, GGML_TYPE_F32, 2, ne_a, f->a, (size_t)f->in * f->r * 4, err))) break;
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", f->layer, gn);
        rc = gguf_w_tensor(w, name, GGML_TYPE_F32, 2, ne_b, bs[i], (size_t)f->out * f->r * 4, err);
    }
    if (!rc) rc = gguf_writer_write(w, out_path, 0, err);
    for (int i = 0; bs && i < lf->n; i++) free(bs[i]);
    free(bs);
    gguf_writer_free(w);
    return rc;
}

peftc_status peftc_export_gguf_lora(const char *adapter, const char *base_model, const char *out_path, peftc_error *err)
{
    decoder *dec;
    peftc_status rc = decoder_load(base_model, &dec, err);
    if (rc) return rc;
    lora_factors lf;
    if (!(rc = lora_read(adapter, dec, 1.0f, &lf, err))) {
        rc = lf.nv ? peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: an (IA)3 adapter has no GGUF form: llama.cpp's adapters are LoRA "
                                "(lora_a/lora_b) only; merge it into the base instead (peftc merge)", adapter)
                   : lora_write_gguf(&lf, dec, out_path, err);
        lora_factors_free(&lf);
    }
    decoder_free(dec);
    return rc;
}
