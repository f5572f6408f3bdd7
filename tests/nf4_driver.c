/* nf4_driver.c: NF4 quantisation (src/kernels/nf4.c) of raw float32 tensors
 * for tests/check_nf4.sh, whose oracle is bitsandbytes (tests/ref_nf4.py).
 *   nf4_driver quant LIST
 * LIST: lines "IN ROWS COLS DQ OUT": IN raw float32 (ROWS*COLS values);
 * writes OUT.codes (packed nibbles), OUT.absmax (float32 per block; without
 * double quantisation) or OUT.absq (uint8 per block) + OUT.absmax2 (float32
 * per 256 blocks) + OUT.offset (one float32), and OUT.deq (the dequantised
 * float32 tensor). Prints the tensor count and bytes per parameter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/nf4.h"

static int put(const char *base, const char *ext, const void *p, size_t n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s.%s", base, ext);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { fprintf(stderr, "%s: cannot write\n", path); if (f) fclose(f); return 1; }
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "quant")) { fprintf(stderr, "usage: nf4_driver quant LIST\n"); return 2; }
    FILE *lf = fopen(argv[2], "r");
    if (!lf) { perror(argv[2]); return 2; }
    char in[4096], out[4096];
    long long rows, cols;
    int dq, count = 0;
    double bytes = 0, params = 0;
    while (fscanf(lf, "%4095s %lld %lld %d %4095s", in, &rows, &cols, &dq, out) == 5) {
        size_t n = (size_t)(rows * cols);
        float *w = malloc(n * 4), *d = malloc(n * 4);
        FILE *f = fopen(in, "rb");
        if (!w || !d || !f || fread(w, 4, n, f) != n) { fprintf(stderr, "%s: cannot read %zu floats\n", in, n); return 1; }
        fclose(f);
        nf4_tensor t;
        if (nf4_quantize(&t, w, rows, cols, dq)) { fprintf(stderr, "%s: nf4_quantize failed\n", in); return 1; }
        if (nf4_dequantize_rows(&t, 0, rows, d)) { fprintf(stderr, "%s: dequantize failed\n", in); return 1; }
        int64_t cb, nb, nb2;
        nf4_sizes(rows, cols, dq, &cb, &nb, &nb2);
        int e = put(out, "codes", t.codes, (size_t)cb) || put(out, "deq", d, n * 4);
        if (dq) e = e || put(out, "absq", t.absmax_q, (size_t)nb) || put(out, "absmax2", t.absmax2, (size_t)nb2 * 4) ||
                    put(out, "offset", &t.offset, 4);
        else e = e || put(out, "absmax", t.absmax, (size_t)nb * 4);
        if (e) return 1;
        bytes += (double)nf4_bytes(&t);
        params += (double)n;
        count++;
        nf4_free(&t);
        free(w);
        free(d);
    }
    fclose(lf);
    printf("%d tensors, %.4f bytes per parameter\n", count, params > 0 ? bytes / params : 0);
    return 0;
}
