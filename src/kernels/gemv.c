/* gemv.c — fp32 matrix products for a few rows (decode): y[n,out] = x[n,in] @
 * w[out,in]^T reading each weight row once for all n <= 4 inputs, AVX2/FMA,
 * split over output rows by OpenMP. OpenBLAS sgemm packs the whole weight
 * matrix first, which doubles the memory traffic when n is tiny. */
#include <stddef.h>
#include "kernels/decode.h"
#include "kernels/kernels.h"
#include "util/util.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* dot products of one weight row with n (<= 4) input rows */
static inline void row_dots(float *out, const float *w, const float *x, int n, int in) {
    int k = 0;
    float r[4] = {0, 0, 0, 0};
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 a1[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; k + 16 <= in; k += 16) {
        const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
        for (int j = 0; j < n; j++) {
            a0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)j * in + k), a0[j]);
            a1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)j * in + k + 8), a1[j]);
        }
    }
    for (int j = 0; j < n; j++) r[j] = hsum256(_mm256_add_ps(a0[j], a1[j]));
#endif
    for (; k < in; k++)
        for (int j = 0; j < n; j++) r[j] += w[k] * x[(size_t)j * in + k];
    for (int j = 0; j < n; j++) out[j] = r[j];
}

/* One weight row at a time with four accumulator chains: the weights are
 * then read as one sequential stream (rows are contiguous), which measured
 * 1.1-1.5x faster from DRAM on one core than four interleaved row streams,
 * with or without software prefetch. */
static inline float gemv_row(const float *w, const float *x, int in) {
    int k = 0;
    float r = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    for (; k + 32 <= in; k += 32) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), b);
        c = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), c);
        d = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), d);
    }
    for (; k + 8 <= in; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
    r = hsum256(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
#endif
    for (; k < in; k++) r += w[k] * x[k];
    return r;
}

/* Weight rows stream from memory once per token. The L2 stream prefetcher
 * stops at 4 KiB pages, so each row block also prefetches GEMV_PF bytes ahead
 * in all four streams (one line per stream per 64 bytes read). */
#ifndef GEMV_PF
#define GEMV_PF 4096
#endif

/* y[0..4) (+)= w[4 rows of in] . x: four independent streams and
 * accumulator chains in flight (short rows make per-row overhead count). */
static inline void gemv_block4(float *y, const float *x, const float *w0, int in, int acc) {
    const float *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
    float r[4] = {0, 0, 0, 0};
    int k = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    for (; k + 16 <= in; k += 16) {
        _mm_prefetch((const char *)(w0 + k) + GEMV_PF, _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + k) + GEMV_PF, _MM_HINT_T0);
        _mm_prefetch((const char *)(w2 + k) + GEMV_PF, _MM_HINT_T0);
        _mm_prefetch((const char *)(w3 + k) + GEMV_PF, _MM_HINT_T0);
        const __m256 xv = _mm256_loadu_ps(x + k), xw = _mm256_loadu_ps(x + k + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), xv, a3);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), xw, b0);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k + 8), xw, b1);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k + 8), xw, b2);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k + 8), xw, b3);
    }
    a0 = _mm256_add_ps(a0, b0); a1 = _mm256_add_ps(a1, b1);
    a2 = _mm256_add_ps(a2, b2); a3 = _mm256_add_ps(a3, b3);
    for (; k + 8 <= in; k += 8) {
        const __m256 xv = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), xv, a3);
    }
    r[0] = hsum256(a0); r[1] = hsum256(a1); r[2] = hsum256(a2); r[3] = hsum256(a3);
#endif
    for (; k < in; k++) {
        r[0] += w0[k] * x[k]; r[1] += w1[k] * x[k]; r[2] += w2[k] * x[k]; r[3] += w3[k] * x[k];
    }
    for (int j = 0; j < 4; j++) y[j] = acc ? y[j] + r[j] : r[j];
}

/* Rows under 2 KiB: one row at a time; longer rows: blocks of four with
 * prefetch (one core from DRAM, 384-float rows: 0.9-1.0 of a streaming read
 * one row at a time vs 0.5-0.8 in blocks; 1024-float rows: 0.85-0.95 one at a
 * time vs 1.0-1.05 in blocks). */
void ds4_gemv_rows(float *y, const float *x, const float *w, int in, int rows, int acc) {
    int o = 0;
    if (in >= 512)
        for (; o + 4 <= rows; o += 4) gemv_block4(y + o, x, w + (size_t)o * in, in, acc);
    for (; o < rows; o++) {
        const float d = gemv_row(w + (size_t)o * in, x, in);
        y[o] = acc ? y[o] + d : d;
    }
}

/* Weights (floats) from which a product is split over threads: below it a
 * team costs more than it saves, and on a busy machine a preempted member
 * stalls the region for a whole time slice. */
#define GEMV_PAR_MIN (1u << 18)

/* n == 1: blocks of four rows split over threads. */
static void gemv4(float *y, const float *x, const float *w, int in, int out, int acc) {
    const int nb = (out + 3) / 4;
    #pragma omp parallel for schedule(static) if ((size_t)out * in >= GEMV_PAR_MIN)
    for (int b = 0; b < nb; b++) {
        const int o = 4 * b;
        ds4_gemv_rows(y + o, x, w + (size_t)o * in, in, DS4_MIN(4, out - o), acc);
    }
}

void ds4_matmul_small(float *y, const float *x, const float *w, int n, int in, int out, int acc) {
    if (n == 1) { gemv4(y, x, w, in, out, acc); return; }
    for (int j0 = 0; j0 < n; j0 += 4) {
        const int nb = n - j0 < 4 ? n - j0 : 4;
        const float *xb = x + (size_t)j0 * in;
        #pragma omp parallel for schedule(static) if ((size_t)out * in >= GEMV_PAR_MIN)
        for (int o = 0; o < out; o++) {
            float d[4];
            row_dots(d, w + (size_t)o * in, xb, nb, in);
            for (int j = 0; j < nb; j++) {
                float *yy = y + (size_t)(j0 + j) * out + o;
                *yy = acc ? *yy + d[j] : d[j];
            }
        }
    }
}
