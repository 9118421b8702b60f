/* decode.h — kernels for batch-1 decode, called inside one OpenMP region per
 * token by model/decode.c: serial row-range matvec, RoPE from a per-token
 * cos/sin table, and one query head's attention over the KV cache. */
#ifndef DS4_KERNELS_DECODE_H
#define DS4_KERNELS_DECODE_H

#include "kernels/kernels.h"

/* y[rows] (+)= w[rows, in] @ x[in] on the calling thread (no OpenMP). */
void ds4_gemv_rows(float *y, const float *x, const float *w, int in, int rows, int acc);

/* cos/sin [hd/2] of position pos, exactly as ds4_rope computes them. */
void ds4_rope_table(float *cs, float *sn, int pos, int hd, float theta);
/* Rotates nh heads x [nh, hd] in place by the table (same result as ds4_rope). */
void ds4_rope_heads(float *x, const float *cs, const float *sn, int nh, int hd);

/* Query head h of a single query (a->n_q == 1) against the visible cached
 * keys of its kv head (with a->sel: only those in the key list a->sel
 * [a->sel_k]): out [Dh] = softmax(q k^T / sqrt(Dh)) v, with the sink as an
 * extra zero-value entry. Online softmax, no scratch. */
void ds4_attn_decode_head(const ds4_attn *a, int h, float *out);

#endif
