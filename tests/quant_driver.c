/* quant_driver.c: tests/check_quant.sh's C side. Reads an index of cases
 * (one line each: "<type id> <values> <input byte offset> <output byte
 * offset>") and converts a blob of inputs into a blob of outputs:
 *   quant_driver dequant INDEX IN OUT   blocks of `type` -> fp32 (quant_dequantize_row)
 *   quant_driver quant INDEX IN OUT     fp32 -> blocks of `type` (quant_quantize_row)
 * Exits non-zero (with a message) if a call fails or a file cannot be read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quant.h"

static void *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (!p || fread(p, 1, (size_t)sz, f) != (size_t)sz) { fprintf(stderr, "%s: read failed\n", path); exit(2); }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "dequant") && strcmp(argv[1], "quant"))) {
        fprintf(stderr, "usage: quant_driver dequant|quant INDEX IN OUT\n");
        return 2;
    }
    const int deq = strcmp(argv[1], "dequant") == 0;
    size_t nin;
    unsigned char *in = slurp(argv[3], &nin);
    FILE *ix = fopen(argv[2], "r");
    if (!ix) { perror(argv[2]); return 2; }
    unsigned t;
    long long n, io, oo;
    size_t cap = 0;
    unsigned char *out = NULL;
    int cases = 0;
    while (fscanf(ix, "%u %lld %lld %lld", &t, &n, &io, &oo) == 4) {
        size_t need = (size_t)oo + (deq ? (size_t)n * 4 : ggml_row_bytes(t, n));
        if (need > cap) {
            size_t nc = need * 2;
            unsigned char *p = realloc(out, nc);
            if (!p) { fprintf(stderr, "out of memory\n"); return 2; }
            memset(p + cap, 0, nc - cap);
            out = p;
            cap = nc;
        }
        int st = deq ? quant_dequantize_row(t, in + io, (float *)(void *)(out + oo), n)
                     : quant_quantize_row(t, (const float *)(const void *)(in + io), out + oo, n);
        if (st) { fprintf(stderr, "case %d: type %u n %lld: status %d\n", cases, t, n, st); return 1; }
        cases++;
    }
    fclose(ix);
    size_t total = 0;
    /* the output blob ends at the last case's end */
    rewind(ix = fopen(argv[2], "r"));
    while (fscanf(ix, "%u %lld %lld %lld", &t, &n, &io, &oo) == 4) {
        size_t e = (size_t)oo + (deq ? (size_t)n * 4 : ggml_row_bytes(t, n));
        total = e > total ? e : total;
    }
    fclose(ix);
    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(out, 1, total, f) != total || fclose(f)) { perror(argv[4]); return 2; }
    printf("%d cases\n", cases);
    free(in);
    free(out);
    return 0;
}
