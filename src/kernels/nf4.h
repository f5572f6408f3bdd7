/* nf4.h: QLoRA's 4-bit NormalFloat (NF4) weights, exactly as bitsandbytes
 * stores them, and matmul kernels that read the 4-bit blocks directly.
 *
 * Storage (bitsandbytes' quantize_4bit(blocksize=64, quant_type="nf4")): the
 * tensor is flattened (row-major, n = rows*cols values) and cut into blocks
 * of 64; each block keeps absmax = max |x| (fp32) and per value the index of
 * the nearest of the 16 NF4 codes to x * (1/absmax) (nearest by the
 * midpoints between codes, a value on a midpoint goes to the lower code:
 * torch.bucketize, as bitsandbytes' CPU quantiser). Two codes per byte,
 * element 2i in the HIGH nibble, 2i+1 in the low one.
 *
 * Double quantisation (compress_statistics=True): offset = mean of the
 * absmax (fp32, torch's summation order), then absmax - offset quantised
 * 8-bit blockwise in blocks of 256 with bitsandbytes' dynamic map
 * (create_dynamic_map()) the way its CPU quantiser does it (a 65536-bin table
 * over [-1, 1]): per 256 a fp32 absmax2, per block a byte.
 * A block's scale is then code8[q] * absmax2 + offset (fp32, in that order,
 * as bitsandbytes' dequantize_4bit), and a value is nf4_code[q4] * scale.
 *
 * Bytes per parameter: 0.5 (codes) + 4/64 = 0.5625 without double
 * quantisation; 0.5 + 1/64 + 4/(64*256) ~= 0.5157 with it (+4 for the offset).
 *
 * The kernels need cols (the input width) to be a multiple of 64, so that a
 * row holds whole blocks; nf4_quantize itself takes any size (the last block
 * short, as bitsandbytes). */
#ifndef PEFTC_NF4_H
#define PEFTC_NF4_H

#include <stddef.h>
#include <stdint.h>

#define NF4_BLOCK 64        /* values per absmax */
#define NF4_BLOCK2 256      /* absmax per second-level constant (double quantisation) */

#define NF4_EINVAL (-1)     /* sizes the function does not handle (nothing done) */
#define NF4_ENOMEM (-2)

/* bitsandbytes' NF4 code values (float32) and its 8-bit dynamic map */
extern const float nf4_code[16];
const float *nf4_dynamic_code(void);

typedef struct nf4_tensor {
    int64_t rows, cols;     /* the weight's shape (out, in) */
    int64_t n_blocks;       /* ceil(rows*cols / 64) */
    int64_t n_blocks2;      /* ceil(n_blocks / 256) with double quantisation, else 0 */
    int double_quant;
    uint8_t *codes;         /* ceil(n/2) bytes */
    float *absmax;          /* n_blocks, without double quantisation (else NULL) */
    uint8_t *absmax_q;      /* n_blocks, with it (else NULL) */
    float *absmax2;         /* n_blocks2, with it */
    float offset;           /* with it */
    void *mem;              /* the one allocation behind the arrays (NULL: borrowed) */
} nf4_tensor;

/* t = NF4 of w (rows x cols fp32). 0, NF4_EINVAL (empty or overflowing
 * sizes) or NF4_ENOMEM. t owns its memory (nf4_free). */
int nf4_quantize(nf4_tensor *t, const float *w, int64_t rows, int64_t cols, int double_quant);
/* An NF4 tensor over arrays the caller keeps alive (a mapped file): sizes
 * are the caller's to check with nf4_sizes. */
void nf4_borrow(nf4_tensor *t, int64_t rows, int64_t cols, int double_quant, const uint8_t *codes,
                const float *absmax, const uint8_t *absmax_q, const float *absmax2, float offset);
/* element counts of each array for a rows x cols tensor */
void nf4_sizes(int64_t rows, int64_t cols, int double_quant, int64_t *code_bytes, int64_t *n_blocks,
               int64_t *n_blocks2);
void nf4_free(nf4_tensor *t);
/* bytes of the quantised weight (codes and constants) */
size_t nf4_bytes(const nf4_tensor *t);

/* The fp32 scale of block b (bitsandbytes' arithmetic) */
float nf4_block_scale(const nf4_tensor *t, int64_t b);
/* dst (nr * cols floats) = rows r0 .. r0+nr-1 dequantised, bit for bit
 * bitsandbytes' dequantize_4bit. NF4_EINVAL if the rows are out of range. */
int nf4_dequantize_rows(const nf4_tensor *t, int64_t r0, int64_t nr, float *dst);

/* out (N, rows) = inp (N, cols) @ W^T. Below NF4_SGEMM_MIN_N rows (decode,
 * small batches: memory-bound, 0.52 bytes read per weight): fp32 activations
 * times the 16-entry code table scaled per block (AVX-512: vpermps of the
 * 4-bit codes; AVX2: two 8-entry vpermps and a blend; portable: a table
 * lookup), FMA where the tier has it, OpenMP over tiles of rows of W, each
 * output summed by one thread in a fixed order. From NF4_SGEMM_MIN_N rows
 * (compute-bound): chunks of rows of W (~1 MiB of fp32) dequantised into the
 * thread's scratch (kept; never the whole matrix) and multiplied by sgemm.
 * Results do not depend on the thread count; tiers agree to fp32 rounding.
 * NF4_EINVAL if cols % 64. */
#define NF4_SGEMM_MIN_N 16
int nf4_matmul(float *out, const float *inp, const nf4_tensor *w, int N);

/* dinp (N, cols) = dout (N, rows) @ W (+= if accumulate): chunks of rows of
 * W (~1 MiB of fp32) dequantised into the calling thread's scratch (kept;
 * never the whole matrix), each followed by one sgemm. NF4_ENOMEM if the
 * scratch cannot be had (nothing done). */
int nf4_matmul_backward_input(float *dinp, const float *dout, const nf4_tensor *w, int N, int accumulate);

#endif
