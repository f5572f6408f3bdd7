/* gguf_dump.c: prints a GGUF file in the canonical text form that
 * tests/ref_gguf.py prints with the PyPI gguf package (tests/check_gguf.sh
 * diffs the two): every key with type and full value, every tensor with type
 * id, shape, absolute offset, size and a position-weighted byte sum. */
#include "io/gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: gguf_dump FILE.gguf\n"); return 2; }
    peftc_error err = {0};
    gguf_file *g;
    if (gguf_open(argv[1], &g, &err)) { fprintf(stderr, "gguf_dump: %s\n", err.msg); return 1; }
    printf("version %u\nalignment %u\n", gguf_version(g), gguf_alignment(g));
    for (int i = 0; i < gguf_kv_count(g); i++) {
        size_t need = gguf_format_value(g, i, NULL, 0, -1);
        char *buf = malloc(need + 1);
        if (!buf) return 2;
        gguf_format_value(g, i, buf, need + 1, -1);
        gguf_type t = gguf_kv_type(g, i);
        if (t == GGUF_TYPE_ARRAY) printf("kv\t%s\tarray[%s]\t%s\n", gguf_key(g, i), gguf_type_name((gguf_type)gguf_arr_type(g, i)), buf);
        else printf("kv\t%s\t%s\t%s\n", gguf_key(g, i), gguf_type_name(t), buf);
        free(buf);
    }
    for (int i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        const uint8_t *p = t->data;
        uint64_t h = 0;
        for (size_t j = 0; j < t->nbytes; j++) h += (uint64_t)p[j] * (2 * (uint64_t)j + 1);
        printf("tensor\t%s\t%u\t", t->name, t->type);
        for (int d = 0; d < t->n_dims; d++) printf(d ? ",%" PRId64 : "%" PRId64, t->ne[d]);
        printf("\t%" PRIu64 "\t%zu\t%016" PRIx64 "\n", gguf_data_offset(g) + t->offset, t->nbytes, h);
    }
    gguf_close(g);
    return 0;
}
