/* tile.c — the micro-kernels behind attention.c: register-blocked 6x16 GEMM
 * on small tiles, exp2 with a running sum, key-tile transpose, dot product.
 * AVX2+FMA intrinsics when the compiler targets them, portable C otherwise. */
#include <math.h>
#include <string.h>

#include "kernels/tile.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TILE_SIMD 1
#else
#define TILE_SIMD 0
#endif

/* ---- portable versions ----------------------------------------------------- */

static void gemm_scalar(float *C, size_t ldc, const float *A, size_t am, size_t ar,
                        const float *B, size_t ldb, int M, int N, int Kd, int acc) {
    for (int m = 0; m < M; m++) {
        float *c = C + (size_t)m * ldc;
        if (!acc) memset(c, 0, (size_t)N * sizeof(float));
        for (int r = 0; r < Kd; r++) {
            float a = A[(size_t)m * am + (size_t)r * ar];
            const float *b = B + (size_t)r * ldb;
            for (int n = 0; n < N; n++) c[n] += a * b[n];
        }
    }
}

#if TILE_SIMD

/* One MR x (8*NV) block of C (MR <= 6, NV <= 2), accumulators in registers:
 * 12 accumulators + 2 B vectors + 1 broadcast fill the 16 ymm registers, and
 * each step issues 8 loads for 12 FMAs. Inlined with constant MR, NV so the
 * loops unroll and c[][] stays in ymm registers. */
static inline __attribute__((always_inline)) void
micro(const int MR, const int NV, float *C, size_t ldc, const float *A, size_t am, size_t ar,
      const float *B, size_t ldb, int Kd, int acc) {
    __m256 c[6][2];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            c[i][v] = acc ? _mm256_loadu_ps(C + (size_t)i * ldc + 8 * v) : _mm256_setzero_ps();
    for (int r = 0; r < Kd; r++) {
        const float *b = B + (size_t)r * ldb;
        __m256 b0 = _mm256_loadu_ps(b), b1 = NV > 1 ? _mm256_loadu_ps(b + 8) : b0;
        /* keep b0/b1 in registers: otherwise gcc folds them into every FMA
         * as memory operands and the loop becomes load-bound */
        __asm__("" : "+x"(b0), "+x"(b1));
        const float *a = A + (size_t)r * ar;
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + (size_t)i * am);
            c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
            if (NV > 1) c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(C + (size_t)i * ldc + 8 * v, c[i][v]);
}

#define MICRO_CASES(NV)                                                                  \
    switch (mr) {                                                                        \
    case 6: micro(6, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                     \
    case 5: micro(5, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                     \
    case 4: micro(4, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                     \
    case 3: micro(3, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                     \
    case 2: micro(2, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                     \
    default: micro(1, NV, c, ldc, a, am, ar, b, ldb, Kd, acc); break;                    \
    }

void ds4_tile_gemm(float *C, size_t ldc, const float *A, size_t am, size_t ar,
                   const float *B, size_t ldb, int M, int N, int Kd, int acc) {
    if (N % 8 != 0) {
        gemm_scalar(C, ldc, A, am, ar, B, ldb, M, N, Kd, acc);
        return;
    }
    for (int m0 = 0; m0 < M; m0 += 6) {
        int mr = M - m0 < 6 ? M - m0 : 6;
        const float *a = A + (size_t)m0 * am;
        for (int n0 = 0; n0 < N; n0 += 16) {
            float *c = C + (size_t)m0 * ldc + n0;
            const float *b = B + n0;
            if (N - n0 >= 16) {
                MICRO_CASES(2)
            } else {
                MICRO_CASES(1)
            }
        }
    }
}

/* 2^x for 8 lanes: x = n + f, f in [-1/2, 1/2], 2^f by its degree-7 Taylor
 * series in f*ln2 (relative error ~5e-9), 2^n through the exponent bits. */
static inline __m256 exp2_ps(__m256 x) {
    __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_GE_OQ); /* false for NaN, -inf */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.5252733804059841e-05f);               /* ln2^7/7! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381609e-04f)); /* ln2^6/6! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f)); /* ln2^5/5! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-03f)); /* ln2^4/4! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-02f)); /* ln2^3/3! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-01f)); /* ln2^2/2! */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-01f)); /* ln2 */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), ok);
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

float ds4_tile_exp2_sum(float *x, int n, float sub) {
    __m256 vs = _mm256_set1_ps(sub), acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float s = hsum_ps(acc);
    for (; i < n; i++) {
        float d = x[i] - sub;
        x[i] = d >= -126.0f ? exp2f(d) : 0.0f;
        s += x[i];
    }
    return s;
}

float ds4_tile_dot(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void ds4_tile_scores_rows(float *S, size_t lds, const float *Q, size_t ldq, int R,
                          const float *const *rows, int nk, int dh) {
    int j0 = 0;
    if (dh % 8 == 0)
        for (; j0 + 4 <= nk; j0 += 4) {
            const float *k0 = rows[j0], *k1 = rows[j0 + 1], *k2 = rows[j0 + 2], *k3 = rows[j0 + 3];
            for (int r = 0; r < R; r++) {
                const float *q = Q + (size_t)r * ldq;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int d = 0; d < dh; d += 8) {
                    __m256 qv = _mm256_loadu_ps(q + d);
                    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
                    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
                    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
                }
                /* four horizontal sums at once: lanes end up as (s0, s1, s2, s3) */
                __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
                __m256 h = _mm256_hadd_ps(h01, h23);
                __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                _mm_storeu_ps(S + (size_t)r * lds + j0, s4);
            }
        }
    for (int j = j0; j < nk; j++)
        for (int r = 0; r < R; r++) S[(size_t)r * lds + j] = ds4_tile_dot(Q + (size_t)r * ldq, rows[j], dh);
}

/* 8x8 block transpose: dst[d][j] = src_j[d] for 8 rows, 8 columns. */
static inline void transpose8(float *dst, size_t ldd, const float *const *src, int d0) {
    __m256 r0 = _mm256_loadu_ps(src[0] + d0), r1 = _mm256_loadu_ps(src[1] + d0);
    __m256 r2 = _mm256_loadu_ps(src[2] + d0), r3 = _mm256_loadu_ps(src[3] + d0);
    __m256 r4 = _mm256_loadu_ps(src[4] + d0), r5 = _mm256_loadu_ps(src[5] + d0);
    __m256 r6 = _mm256_loadu_ps(src[6] + d0), r7 = _mm256_loadu_ps(src[7] + d0);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

void ds4_tile_transpose(float *dst, size_t ldd, const float *const *rows, int nk, int dh) {
    int j0 = 0;
    if (dh % 8 == 0)
        for (; j0 + 8 <= nk; j0 += 8)
            for (int d0 = 0; d0 < dh; d0 += 8) transpose8(dst + (size_t)d0 * ldd + j0, ldd, rows + j0, d0);
    for (int j = j0; j < nk; j++)
        for (int d = 0; d < dh; d++) dst[(size_t)d * ldd + j] = rows[j][d];
}

#else /* !TILE_SIMD */

void ds4_tile_scores_rows(float *S, size_t lds, const float *Q, size_t ldq, int R,
                          const float *const *rows, int nk, int dh) {
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nk; j++) {
            float s = 0.0f;
            for (int d = 0; d < dh; d++) s += Q[(size_t)r * ldq + d] * rows[j][d];
            S[(size_t)r * lds + j] = s;
        }
}

void ds4_tile_gemm(float *C, size_t ldc, const float *A, size_t am, size_t ar,
                   const float *B, size_t ldb, int M, int N, int Kd, int acc) {
    gemm_scalar(C, ldc, A, am, ar, B, ldb, M, N, Kd, acc);
}

float ds4_tile_exp2_sum(float *x, int n, float sub) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        float d = x[i] - sub;
        x[i] = d >= -126.0f ? exp2f(d) : 0.0f;
        s += x[i];
    }
    return s;
}

float ds4_tile_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void ds4_tile_transpose(float *dst, size_t ldd, const float *const *rows, int nk, int dh) {
    for (int j = 0; j < nk; j++)
        for (int d = 0; d < dh; d++) dst[(size_t)d * ldd + j] = rows[j][d];
}

#endif
