/* lm_data_driver.c: tests/check_lm_data.sh's view of src/train/lm_data.c.
 *   lm_data_driver TOKENIZER.json DATA FORMAT MAX_LEN PACK LOSS_ALL [TEMPLATE [RESPONSE_FIELD]]
 * prints one JSON line per row: {"ids": [...], "target": [...], "seg": [...]}
 * then {"examples": n, "truncated": n, "dropped": n, "format": "..."};
 * on an error prints the library's message on stderr and exits 1. */
#include "train/lm_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 7) { fprintf(stderr, "usage: lm_data_driver TOKENIZER.json DATA FORMAT MAX_LEN PACK LOSS_ALL [TEMPLATE [RESPONSE_FIELD]]\n"); return 2; }
    peftc_error err = {0};
    bpe_tokenizer *tok = NULL;
    if (bpe_from_tokenizer_json(argv[1], &tok, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    lm_data_opts o = {0};
    if (!lm_format_parse(argv[3], &o.format)) { fprintf(stderr, "unknown format %s\n", argv[3]); return 2; }
    o.max_len = atoi(argv[4]);
    o.pack = atoi(argv[5]);
    o.loss_on_all = atoi(argv[6]);
    if (argc > 7 && argv[7][0]) o.prompt_template = argv[7];
    if (argc > 8) o.response_field = argv[8];
    lm_dataset d;
    if (lm_data_load(argv[2], tok, &o, &d, &err)) { fprintf(stderr, "%s\n", err.msg); bpe_free(tok); return 1; }
    for (int r = 0; r < d.n; r++) {
        const char *keys[3] = {"ids", "target", "seg"};
        printf("{");
        for (int k = 0; k < 3; k++) {
            printf("%s\"%s\": [", k ? ", " : "", keys[k]);
            for (int t = 0; t < d.len[r]; t++) {
                size_t i = d.off[r] + (size_t)t;
                long v = k == 0 ? d.ids[i] : k == 1 ? d.target[i] : d.seg[i];
                printf("%s%ld", t ? "," : "", v);
            }
            printf("]");
        }
        printf("}\n");
    }
    printf("{\"examples\": %d, \"truncated\": %d, \"dropped\": %d, \"format\": \"%s\"}\n", d.n_examples, d.n_truncated,
           d.n_dropped, lm_format_name(d.format));
    lm_data_free(&d);
    bpe_free(tok);
    return 0;
}
