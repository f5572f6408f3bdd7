/* ggml_types.h: the tensor types of GGUF files (ggml's numbering, which the
 * file format stores), their block sizes and bytes per block. Shared by the
 * GGUF reader (io/gguf.c: tensor sizes are checked against the file) and the
 * quantised kernels (kernels/quant.c: block layouts). */
#ifndef PEFTC_GGML_TYPES_H
#define PEFTC_GGML_TYPES_H

#include <stddef.h>
#include <stdint.h>

typedef enum ggml_type {
    GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6, GGML_TYPE_Q5_1 = 7, GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10, GGML_TYPE_Q3_K = 11, GGML_TYPE_Q4_K = 12, GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14, GGML_TYPE_Q8_K = 15, GGML_TYPE_BF16 = 30,
    GGML_TYPE_COUNT = 40   /* upper bound of the numbering (ids up to 39 exist upstream) */
} ggml_type;

#define GGML_QK 32      /* values per block of the legacy quants (Q4_0 .. Q8_1) */
#define GGML_QK_K 256   /* values per super-block of the K-quants */

typedef struct ggml_type_traits {
    const char *name;   /* as ggml spells it: "q4_1" */
    int block;          /* values per block (1 for float types) */
    int bytes;          /* bytes per block */
    int supported;      /* peftc reads it */
} ggml_type_traits;

/* Traits of type t, or NULL if t is not a type peftc knows (any id >= COUNT
 * or a hole in the numbering). */
static inline const ggml_type_traits *ggml_traits(uint32_t t)
{
    static const ggml_type_traits tab[GGML_TYPE_COUNT] = {
        [GGML_TYPE_F32] = {"f32", 1, 4, 1},
        [GGML_TYPE_F16] = {"f16", 1, 2, 1},
        [GGML_TYPE_Q4_0] = {"q4_0", 32, 18, 1},
        [GGML_TYPE_Q4_1] = {"q4_1", 32, 20, 1},
        [GGML_TYPE_Q5_0] = {"q5_0", 32, 22, 1},
        [GGML_TYPE_Q5_1] = {"q5_1", 32, 24, 1},
        [GGML_TYPE_Q8_0] = {"q8_0", 32, 34, 1},
        [GGML_TYPE_Q8_1] = {"q8_1", 32, 36, 0},
        [GGML_TYPE_Q2_K] = {"q2_k", 256, 84, 0},
        [GGML_TYPE_Q3_K] = {"q3_k", 256, 110, 0},
        [GGML_TYPE_Q4_K] = {"q4_k", 256, 144, 1},
        [GGML_TYPE_Q5_K] = {"q5_k", 256, 176, 1},
        [GGML_TYPE_Q6_K] = {"q6_k", 256, 210, 1},
        [GGML_TYPE_Q8_K] = {"q8_k", 256, 292, 1},
        [GGML_TYPE_BF16] = {"bf16", 1, 2, 1},
    };
    if (t >= GGML_TYPE_COUNT || !tab[t].name) return NULL;
    return &tab[t];
}

/* Bytes of a row of n values of type t; 0 if t is unknown or n is not a
 * multiple of its block. */
static inline size_t ggml_row_bytes(uint32_t t, int64_t n)
{
    const ggml_type_traits *tr = ggml_traits(t);
    if (!tr || n < 0 || n % tr->block) return 0;
    return (size_t)(n / tr->block) * (size_t)tr->bytes;
}

#endif
