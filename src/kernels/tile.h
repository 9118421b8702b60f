/* tile.h — internal building blocks of the tiled attention kernels: a small
 * register-blocked GEMM on L1-sized tiles, a vectorised exp2 with row sum, and
 * a gather-transpose of key rows. AVX2+FMA when compiled for it, plain C else. */
#ifndef DS4_KERNELS_TILE_H
#define DS4_KERNELS_TILE_H

#include <stddef.h>

/* C[M,N] = A·B (acc = 0) or C += A·B (acc = 1), with
 *   A(m, r) = A[m*am + r*ar]   (row-major [M,Kd]: am = lda, ar = 1;
 *                               transposed, stored [Kd,M]: am = 1, ar = lda)
 *   B[Kd,N] row-major with row stride ldb, C row stride ldc. */
void ds4_tile_gemm(float *C, size_t ldc, const float *A, size_t am, size_t ar,
                   const float *B, size_t ldb, int M, int N, int Kd, int acc);

/* x[i] = exp2(x[i] - sub) for i < n (-inf and anything below -126 give 0);
 * returns the sum of the new values. */
float ds4_tile_exp2_sum(float *x, int n, float sub);

/* dst[d, j] = rows[j][d] for d < dh, j < nk (dst row stride ldd): the
 * transposed tile of nk gathered rows of length dh. */
void ds4_tile_transpose(float *dst, size_t ldd, const float *const *rows, int nk, int dh);

/* S[r, j] = Q[r, :] . rows[j][:] for r < R, j < nk, length dh (S row stride
 * lds, Q row stride ldq): scores without a transposed key tile, for the few
 * rows of decode where transposing would cost more than it saves. */
void ds4_tile_scores_rows(float *S, size_t lds, const float *Q, size_t ldq, int R,
                          const float *const *rows, int nk, int dh);

/* Dot product of length n, in float with several partial sums. */
float ds4_tile_dot(const float *a, const float *b, int n);

#endif
