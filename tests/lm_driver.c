/* lm_driver.c: the public decoder API (peftc_lm_*) for tests/check_lm.sh.
 *   lm_driver logits MODEL IDS.txt OUT.f32 [--adapter DIR[:SCALE]]... [--merge]
 *       every line's all-token logits (float32), lines one after another */
#include "peftc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[1], "logits")) {
        fprintf(stderr, "usage: lm_driver logits MODEL IDS.txt OUT.f32 [--adapter DIR[:SCALE]]... [--merge]\n");
        return 2;
    }
    const char *dirs[16];
    char *own[16];
    float scales[16];
    int nad = 0, merge = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "--merge")) merge = 1;
        else if (!strcmp(argv[i], "--adapter") && i + 1 < argc && nad < 16) {
            char *d = strdup(argv[++i]), *c = strrchr(d, ':');
            scales[nad] = 1.0f;
            if (c) { scales[nad] = strtof(c + 1, NULL); *c = 0; }
            own[nad] = d;
            dirs[nad++] = d;
        }
    }
    peftc_lm_opts o;
    peftc_lm_opts_default(&o);
    o.adapters = dirs;
    o.adapter_scales = scales;
    o.n_adapters = nad;
    o.merge = merge;
    o.n_ctx = 0;   /* the model's own context (up to 4096) */
    peftc_error err = {0};
    peftc_lm *lm;
    if (peftc_lm_load(argv[2], &o, &lm, &err)) { fprintf(stderr, "peftc: %s\n", err.msg); return 1; }
    FILE *in = fopen(argv[3], "r"), *out = fopen(argv[4], "wb");
    if (!in || !out) { fprintf(stderr, "lm_driver: cannot open files\n"); return 1; }
    int V = peftc_lm_vocab_size(lm);
    char line[65536];
    int32_t ids[4096];
    float *lg = malloc((size_t)4096 * V * sizeof *lg);
    while (fgets(line, sizeof line, in)) {
        int n = 0;
        char *p = line, *end;
        for (long v = strtol(p, &end, 10); end != p && n < 4096; v = strtol(p, &end, 10)) { ids[n++] = (int32_t)v; p = end; }
        if (!n) continue;
        if (peftc_lm_logits(lm, ids, n, 1, lg, &err)) { fprintf(stderr, "peftc: %s\n", err.msg); return 1; }
        fwrite(lg, sizeof *lg, (size_t)n * V, out);
    }
    fclose(in);
    fclose(out);
    free(lg);
    for (int i = 0; i < nad; i++) free(own[i]);
    peftc_lm_free(lm);
    return 0;
}
