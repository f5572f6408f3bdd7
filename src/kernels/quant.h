/* quant.h: llama.cpp's GGUF block formats (ggml's bytes exactly) and matmul
 * kernels that multiply by weights stored in them without an fp32 copy.
 *
 * Types are ggml's ids (io/ggml_types.h). A row of n values of type t takes
 * ggml_row_bytes(t, n) bytes; n must be a multiple of the type's block (32
 * for Q4_0 .. Q8_0, 256 for the K-quants, 1 for F32/F16/BF16).
 *
 * Status returns: 0 done; QUANT_EUNSUPPORTED (type not handled by that
 * function, or a size that is not a multiple of the block; nothing done);
 * QUANT_ENOMEM (the scratch could not be allocated; nothing done). The
 * library never prints. */
#ifndef PEFTC_QUANT_H
#define PEFTC_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "io/ggml_types.h"

/* peftc's own weight type beside ggml's (not a GGUF id): QLoRA's NF4 with
 * double quantisation (kernels/nf4.h). The weight pointer of quant_matmul
 * and quant_matmul_backward_input is then a const nf4_tensor * (whose rows
 * and cols must be OC and IC); activations stay fp32 (quant_act_type gives
 * the type itself). No row functions: its constants span rows. */
#define QUANT_TYPE_NF4 0x100u

#define QUANT_EUNSUPPORTED (-1)
#define QUANT_ENOMEM (-2)

/* fp16 <-> fp32 (round to nearest even, subnormals and inf/NaN kept) */
float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_f16(float f);

/* dst (n floats) = the values of a row stored as `type`: F32, F16, BF16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K. The arithmetic is
 * ggml's (e.g. Q4_K: (d*sc)*q - (dmin*m) in fp32), so results are bit for bit
 * those of ggml and of the gguf Python package. */
int quant_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);

/* The first non-finite number a row of n values stored as `type` holds, as
 * the index of the first value it affects (-1: none; -2: type unknown or n
 * not whole blocks). For F32/F16/BF16 the values themselves are checked; for
 * the block types the fp16 (fp32 for Q8_K) fields of each block, i.e. the
 * scales d and mins m/dmin, because the quantised values are small integers:
 * with every scale finite each dequantised value is finite too (at most
 * 65504 * 63 * 63 in magnitude), and with one NaN/Inf scale its whole block
 * is. *field names what was found ("value", "d", "m", "dmin"), *val its value. */
int64_t quant_find_nonfinite(uint32_t type, const void *src, int64_t n, const char **field, float *val);

/* dst = src (n floats) quantised to `type`: F32, F16, BF16, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0 (ggml's reference rounding: the same bytes as the gguf
 * Python package's quantisers) and Q8_K (ggml's activation format: per 256
 * values d = max/-128 at the value of largest magnitude, q = round-to-even
 * (x/d) clamped to 127, and the 16 sums of 16). */
int quant_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* The type the activations are quantised to in quant_matmul for weights of
 * `type`: Q8_0 for Q4_0 .. Q8_0 (ggml's vec_dot_type), Q8_K for the
 * K-quants, the weight type itself for F32/F16/BF16 (no quantisation: fp32
 * activations). 0xFFFFFFFF if the type has no matmul. Exactly the bytes
 * quant_quantize_row(that type) gives are what the integer dots see. */
uint32_t quant_act_type(uint32_t type);

/* out (N,OC) = inp (N,IC) @ W^T, W = OC rows of IC values stored as `type`
 * (row stride ggml_row_bytes(type, IC)): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
 * Q5_K, Q6_K (integer dots against 8-bit activations, see quant_act_type),
 * F32, F16, BF16 (fp32 products). The quantised types use a per-thread
 * scratch of about N*IC + 32*IC bytes allocated on first use and kept.
 * OpenMP-parallel; within one tier (kernels_set_isa) results do not depend on
 * the thread count, and tiers agree to fp32 rounding. */
int quant_matmul(float *out, const float *inp, const void *w, uint32_t type, int N, int IC, int OC);

/* dinp (N,IC) = dout (N,OC) @ W (+= if accumulate), W as in quant_matmul (any
 * type quant_dequantize_row handles but Q8_K), dequantised a chunk of rows
 * (~1 MiB of fp32: 16..512 rows) at a time into the calling thread's scratch
 * (kept; never the whole matrix), then dinp += dout[:, chunk] @ chunk as one
 * sgemm. Results do not depend on the thread count. */
int quant_matmul_backward_input(float *dinp, const float *dout, const void *w, uint32_t type,
                                int N, int IC, int OC, int accumulate);

/* A weight repacked for quant_matmul_packed: groups of 16 rows interleaved
 * 4 values at a time (the operand layout of one vpdpbusd), 4-bit types kept
 * as nibbles, 5/6/8-bit ones as bytes, scales in fp32. Still quantised
 * (Q4_1: 24 bytes per 32 values instead of 20; Q5/Q6: about 1.2-1.6x).
 * The source may be freed afterwards. NULL: unsupported type or sizes, or out
 * of memory. */
typedef struct quant_packed quant_packed;
quant_packed *quant_pack(const void *w, uint32_t type, int IC, int OC);
void quant_packed_free(quant_packed *p);
size_t quant_packed_bytes(const quant_packed *p);
/* quant_matmul with a packed weight: the same results bit for bit (same
 * tier), without decoding the blocks on every call. */
int quant_matmul_packed(float *out, const float *inp, const quant_packed *w, int N);
/* Work done inside the product's threads once each has written its outputs:
 * fn(ctx, o_lo, o_hi) may read and add to columns [o_lo, o_hi) of out (every
 * row), which no other thread touches. An unmerged adapter's delta at a
 * decoding step is this: split with the weight's rows, at no extra fork. */
typedef struct quant_epilogue {
    void (*fn)(void *ctx, int o_lo, int o_hi);
    void *ctx;
} quant_epilogue;
/* quant_matmul_packed, then epi (NULL: none) on every output column */
int quant_matmul_packed_epi(float *out, const float *inp, const quant_packed *w, int N, const quant_epilogue *epi);

/* Whether the AVX-512 tier uses AVX512-VNNI (vpdpbusd) where the CPU has it
 * (default) or AVX-512-BW only (0), for tests and benchmarks; -1 queries.
 * Returns whether VNNI is now used. Same results either way (the integer
 * sums are exact). */
int quant_set_vnni(int on);

#endif
