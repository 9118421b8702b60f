/* quant.h — quantized weight formats (byte-identical to ggml's Q8_0, Q4_0 and
 * Q4_K blocks), their scalar reference quantizers, and the int8 dot-product
 * kernels (scalar always, AVX2 when compiled in) behind a small generic API. */
#ifndef DS4_QUANT_H
#define DS4_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* ---- types ----------------------------------------------------------------
 * A quantized matrix [rows, cols] is rows × ds4_q_row_bytes(type, cols) bytes,
 * each row a run of blocks; a row holds cols / block_elems blocks. */
typedef enum { DS4_Q_F32 = 0, DS4_Q_Q8_0, DS4_Q_Q4_0, DS4_Q_Q4_K, DS4_Q_COUNT } ds4_qtype;

#define DS4_QK8_0 32    /* weights per Q8_0 block */
#define DS4_QK4_0 32    /* weights per Q4_0 block */
#define DS4_QK_K  256   /* weights per Q4_K / Q8_K super-block */

/* Q8_0: x[i] = d * qs[i]. 34 bytes. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    int8_t qs[DS4_QK8_0];       /* [32] */
} ds4_block_q8_0;

/* Q4_0: x[i] = d * (q[i] - 8), q in 0..15. Byte j of qs holds element j in
 * its low nibble and element j + 16 in its high nibble (ggml's order). 18 bytes. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint8_t qs[DS4_QK4_0 / 2];  /* [16] */
} ds4_block_q4_0;

/* Q4_K: 8 sub-blocks of 32. Sub-block j has 6-bit scale sc[j] and 6-bit min
 * m[j]: x = d * sc[j] * q - dmin * m[j], q in 0..15. scales[12] packs them as
 * ggml does: bytes 0-3 hold sc[0..3] (low 6 bits) and sc[4..7] >> 4 (top 2
 * bits); bytes 4-7 hold m[0..3] and m[4..7] >> 4 likewise; bytes 8-11 hold
 * sc[4..7] & 15 (low nibble) and m[4..7] & 15 (high nibble). qs[32k + l]
 * holds element l of sub-block 2k in its low nibble and element l of
 * sub-block 2k + 1 in its high nibble. 144 bytes. */
typedef struct {
    uint16_t d;                 /* fp16 super-scale of the scales */
    uint16_t dmin;              /* fp16 super-scale of the mins */
    uint8_t scales[12];         /* packed 6-bit sc[8], m[8] */
    uint8_t qs[DS4_QK_K / 2];   /* [128] nibbles */
} ds4_block_q4_K;

/* Q8_K (activations for Q4_K only, never stored in files): x[i] = d * qs[i];
 * bsums[k] = sum of qs[16k .. 16k+15]. 292 bytes. */
typedef struct {
    float d;
    int8_t qs[DS4_QK_K];        /* [256] */
    int16_t bsums[DS4_QK_K / 16]; /* [16] */
} ds4_block_q8_K;

_Static_assert(sizeof(ds4_block_q8_0) == 34, "Q8_0 block must be 34 bytes");
_Static_assert(sizeof(ds4_block_q4_0) == 18, "Q4_0 block must be 18 bytes");
_Static_assert(sizeof(ds4_block_q4_K) == 144, "Q4_K block must be 144 bytes");
_Static_assert(sizeof(ds4_block_q8_K) == 292, "Q8_K block must be 292 bytes");

/* ---- generic API ----------------------------------------------------------
 * Functions returning int give 0 on success, -1 after ds4_set_error(). */
const char *ds4_q_type_name(ds4_qtype t);          /* "f32", "q8_0", "q4_0", "q4_k" */
int ds4_q_type_from_name(const char *name);        /* ds4_qtype, or -1 (case-insensitive) */
int ds4_q_block_elems(ds4_qtype t);                /* 1, 32, 32, 256 */
size_t ds4_q_block_bytes(ds4_qtype t);             /* 4, 34, 18, 144 */
int ds4_q_ggml_type(ds4_qtype t);                  /* ggml type id: 0, 8, 2, 12 */
/* Bytes of one row of n weights; 0 (with an error) if n is not a multiple of
 * the block size or the type is unknown. */
size_t ds4_q_row_bytes(ds4_qtype t, int n);

/* src [rows, cols] fp32 -> dst [rows, row_bytes]. Non-finite input, or a value
 * beyond what the fp16 block scales can hold (|x| > 127, 8, 63 x 65504 for
 * Q8_0, Q4_0, Q4_K), is an error naming its row and column (dst is then
 * partly written). OpenMP over rows. */
int ds4_q_quantize(ds4_qtype t, const float *src, void *dst, int rows, int cols);
/* src [rows, row_bytes] -> dst [rows, cols] fp32. */
int ds4_q_dequantize(ds4_qtype t, const void *src, float *dst, int rows, int cols);

/* y[n, out] = x[n, in] @ w[out, in]^T with w quantized (or fp32 for
 * DS4_Q_F32). x is quantized once per call to the activation format of t
 * (Q8_0 for Q8_0/Q4_0 weights, Q8_K for Q4_K). in must be a multiple of the
 * block size (32, or 256 for Q4_K). OpenMP over output rows. */
int ds4_q_matmul(ds4_qtype t, float *y, const float *x, const void *w, int n, int in, int out);
/* Same on the scalar reference kernels (single thread): the tests' yardstick. */
int ds4_q_matmul_ref(ds4_qtype t, float *y, const float *x, const void *w, int n, int in, int out);
static inline int ds4_q_matvec(ds4_qtype t, float *y, const float *x, const void *w, int in, int out) {
    return ds4_q_matmul(t, y, x, w, 1, in, out);
}

/* Activations quantized ahead of time, for callers that reuse one input for
 * several matrices (q/k/v, gate/up). xq [n, ds4_q_act_row_bytes(t, in)]. */
size_t ds4_q_act_row_bytes(ds4_qtype t, int in);
int ds4_q_quantize_act(ds4_qtype t, const float *x, void *xq, int n, int in);
int ds4_q_matmul_q(ds4_qtype t, float *y, const void *xq, const void *w, int n, int in, int out);

/* One row of ds4_q_quantize_act on the calling thread (no OpenMP, no checks). */
void ds4_q_quantize_act_row(ds4_qtype t, const float *x, void *xq, int in);
/* y[rows] = w[rows, in] . xq (one activation row from ds4_q_quantize_act) on
 * the calling thread, no OpenMP and no checks: the decode step's inner call. */
void ds4_q_matvec_rows(ds4_qtype t, float *y, const void *xq, const void *w, int in, int rows);

/* One quantized row (n weights) · one quantized activation row. */
float ds4_q_vec_dot(ds4_qtype t, int n, const void *w, const void *xq);
float ds4_q_vec_dot_ref(ds4_qtype t, int n, const void *w, const void *xq);
/* 1 when the AVX2 kernels are compiled in (ds4_q_vec_dot/matmul use them). */
int ds4_q_have_simd(void);

/* ---- the 8-row interleaved layout (x8), in memory only ----------------------
 * Files keep ggml's row layout; in memory a Q8_0 / Q4_0 / Q4_K matrix whose
 * row count is a multiple of 8 can be regrouped so that one broadcast of 4
 * activation bytes meets the same 4 weight positions of 8 rows at once (the
 * 8 rows' dot products then sit in the 8 lanes of one AVX2 register). Same
 * bytes as the row layout; a group of 8 rows occupies the bytes those rows
 * did, so row r0 (a multiple of 8) still starts at r0 * row_bytes. Within a
 * group, block b of the 8 rows is stored as one unit of 8 x block_bytes:
 *   the 2-byte header fields, field by field, row by row (d[8]; Q4_K: d[8]
 *   then dmin[8]), then the rest of each block 4 bytes at a time, word by
 *   word, row by row: word w of row r at 16 * fields + 32 w + 4 r.
 * So Q4_0's vector v (32 bytes) holds qs[4v .. 4v+3] of every row (elements
 * 4v.. in the low nibbles, 16+4v.. in the high ones); Q8_0's holds qs[4v ..];
 * Q4_K's first three words are the 12 scale bytes, then its 32 qs words. */
/* 1 when t has an x8 form and rows is a positive multiple of 8 and the x8
 * kernels are compiled in (AVX2); else 0 (callers keep the row layout). */
int ds4_q_x8_usable(ds4_qtype t, int rows);
/* src [rows, row_bytes] row layout -> dst x8 layout, or back; src == dst
 * converts in place. -1 (with an error) when not ds4_q_x8_usable or out of memory. */
int ds4_q_to_x8(ds4_qtype t, const void *src, void *dst, int rows, int in);
int ds4_q_from_x8(ds4_qtype t, const void *src, void *dst, int rows, int in);
/* ds4_q_matmul / ds4_q_matvec_rows on x8 weights (out, rows multiples of 8).
 * The matvec takes Q4_0's per-block activation terms from ds4_q_act_aux_x8
 * (a caller that reuses xq for several matrices computes them once), or NULL. */
int ds4_q_matmul_x8(ds4_qtype t, float *y, const float *x, const void *w8, int n, int in, int out);
void ds4_q_matvec_rows_x8(ds4_qtype t, float *y, const void *xq, const int32_t *aux, const void *w8, int in, int rows);
/* aux [2 * in / 32] for one Q8_0 activation row: per block 8 x its sum (what
 * the Q4_0 x8 kernel subtracts for the -8 offset of its nibbles) and its
 * scale as float bits. */
void ds4_q_act_aux_x8(const void *xq, int in, int32_t *aux);

/* ---- per-type scalar reference (n a multiple of the block size) ---------- */
void ds4_quantize_row_q8_0(const float *x, ds4_block_q8_0 *y, int n);
void ds4_quantize_row_q4_0(const float *x, ds4_block_q4_0 *y, int n);
void ds4_quantize_row_q4_K(const float *x, ds4_block_q4_K *y, int n);
void ds4_quantize_row_q8_K(const float *x, ds4_block_q8_K *y, int n);
void ds4_dequantize_row_q8_0(const ds4_block_q8_0 *x, float *y, int n);
void ds4_dequantize_row_q4_0(const ds4_block_q4_0 *x, float *y, int n);
void ds4_dequantize_row_q4_K(const ds4_block_q4_K *x, float *y, int n);
void ds4_dequantize_row_q8_K(const ds4_block_q8_K *x, float *y, int n);
/* Unpack / pack the 12 scale bytes of a Q4_K block: sc[8], m[8] in 0..63. */
void ds4_q4_K_get_scales(const uint8_t packed[12], uint8_t sc[8], uint8_t m[8]);
void ds4_q4_K_set_scales(uint8_t packed[12], const uint8_t sc[8], const uint8_t m[8]);

float ds4_vec_dot_q8_0_q8_0_ref(int n, const ds4_block_q8_0 *w, const ds4_block_q8_0 *x);
float ds4_vec_dot_q4_0_q8_0_ref(int n, const ds4_block_q4_0 *w, const ds4_block_q8_0 *x);
float ds4_vec_dot_q4_K_q8_K_ref(int n, const ds4_block_q4_K *w, const ds4_block_q8_K *x);

/* ---- internal: kernels over a tile of nw weight rows and nx activation rows
 * (nw * nx <= 4): out[r * out_stride + k] = w_k . x_r, where
 * w_k = (const char *)w + k * w_stride, x_r = (const char *)x + r * x_stride.
 * A result does not depend on the tile shape it was computed in. */
typedef void (*ds4_q_dot_fn)(int n, const void *w, size_t w_stride, int nw, const void *x,
                             size_t x_stride, int nx, float *out, size_t out_stride);
ds4_q_dot_fn ds4_q_dot_kernel(ds4_qtype t, int simd);
#ifdef __AVX2__
void ds4_dot_f32_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os);
void ds4_dot_q8_0_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os);
void ds4_dot_q4_0_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os);
void ds4_dot_q4_K_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os);
/* x8 kernels: the 8 rows of one group (w8) against nx <= 4 activation rows:
 * o[r * os + k] = row k . x_r. Equal to the row kernels up to float rounding.
 * Q4_0 reads aux [nx][2 * n / 32] (ds4_x8_act_aux_avx2); the others take NULL. */
void ds4_dot_x8_q8_0_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o, size_t os);
void ds4_dot_x8_q4_0_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o, size_t os);
void ds4_dot_x8_q4_K_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o, size_t os);
void ds4_x8_act_aux_avx2(int n, const void *x, size_t xs, int nx, int32_t *aux);
/* Byte-identical to the scalar ds4_quantize_row_q8_0 / _q8_K. */
void ds4_quantize_row_q8_0_avx2(const float *x, ds4_block_q8_0 *y, int n);
void ds4_quantize_row_q8_K_avx2(const float *x, ds4_block_q8_K *y, int n);
#endif

#endif
