/* quant_avx2.c — AVX2 int8 dot-product kernels: one weight row against 1..4
 * quantized activation rows, so the weights are unpacked once per block and
 * read from memory once. Must equal the scalar reference up to float rounding. */
#include "quant/quant.h"

#ifdef __AVX2__
#include <immintrin.h>
#include <string.h>

#include "util/util.h"

#define MAXNX 4

#if defined(__F16C__)
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float h2f(uint16_t h) { return ds4_fp16_to_fp32(h); }
#endif

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 int16 pairs -> 8 int32 sums of products of |w| (unsigned) and sign-moved x. */
static inline __m256i dot_s8(__m256i aw, __m256i sx) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
}

/* ---- fp32 weights ---------------------------------------------------------- */
static inline __attribute__((always_inline)) void dot_f32(int n, const float *w, const char *x,
                                                          size_t xs, int nx, float *o, size_t os) {
    __m256 acc[MAXNX][2];
    for (int r = 0; r < nx; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
        for (int r = 0; r < nx; r++) {
            const float *xr = (const float *)(x + r * xs);
            acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + i), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + i + 8), acc[r][1]);
        }
    }
    for (int r = 0; r < nx; r++) {
        const float *xr = (const float *)(x + r * xs);
        float s = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (int k = i; k < n; k++) s += w[k] * xr[k];
        o[r * os] = s;
    }
}

void ds4_dot_f32_avx2(int n, const void *w, const void *x, size_t xs, int nx, float *o, size_t os) {
    switch (nx) {
    case 1: dot_f32(n, w, x, xs, 1, o, os); break;
    case 2: dot_f32(n, w, x, xs, 2, o, os); break;
    case 3: dot_f32(n, w, x, xs, 3, o, os); break;
    default: dot_f32(n, w, x, xs, 4, o, os); break;
    }
}

/* ---- Q8_0 x Q8_0 ------------------------------------------------------------- */
/* One accumulator per row would make every block wait for the previous
 * block's FMA (4 cycles): blocks alternate between two accumulators. The
 * order of float operations is the same for every nx, so a row's result does
 * not depend on how many rows are batched with it. */
#define ACC(nx) 2

static inline __attribute__((always_inline)) void dot_q8_0(int n, const ds4_block_q8_0 *w, const char *x,
                                                           size_t xs, int nx, float *o, size_t os) {
    __m256 acc[MAXNX][2];
    for (int r = 0; r < nx; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const int nb = n / DS4_QK8_0;
    for (int b0 = 0; b0 < nb; b0 += ACC(nx)) {
        for (int u = 0; u < ACC(nx) && b0 + u < nb; u++) {
            const int b = b0 + u;
            __m256i qw = _mm256_loadu_si256((const __m256i *)w[b].qs);
            __m256i aw = _mm256_sign_epi8(qw, qw);
            float dw = h2f(w[b].d);
            for (int r = 0; r < nx; r++) {
                const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                __m256i qx = _mm256_loadu_si256((const __m256i *)xb->qs);
                __m256 p = _mm256_cvtepi32_ps(dot_s8(aw, _mm256_sign_epi8(qx, qw)));
                acc[r][u] = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(xb->d)), p, acc[r][u]);
            }
        }
    }
    for (int r = 0; r < nx; r++) o[r * os] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
}

void ds4_dot_q8_0_avx2(int n, const void *w, const void *x, size_t xs, int nx, float *o, size_t os) {
    switch (nx) {
    case 1: dot_q8_0(n, w, x, xs, 1, o, os); break;
    case 2: dot_q8_0(n, w, x, xs, 2, o, os); break;
    case 3: dot_q8_0(n, w, x, xs, 3, o, os); break;
    default: dot_q8_0(n, w, x, xs, 4, o, os); break;
    }
}

/* ---- Q4_0 x Q8_0 --------------------------------------------------------------
 * The 16 nibble bytes go to both lanes; the upper lane is shifted right by 4,
 * so after the mask the lower lane holds elements 0..15 (low nibbles) and the
 * upper 16..31 (high nibbles), as unsigned q in 0..15. Then
 * sum (q - 8) x = maddubs(q, x) - maddubs(8, x), pairwise in int16. */
static inline __attribute__((always_inline)) void dot_q4_0(int n, const ds4_block_q4_0 *w, const char *x,
                                                           size_t xs, int nx, float *o, size_t os) {
    const __m256i m4 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4), ones = _mm256_set1_epi16(1);
    __m256 acc[MAXNX][2];
    for (int r = 0; r < nx; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const int nb = n / DS4_QK4_0;
    for (int b0 = 0; b0 < nb; b0 += ACC(nx)) {
        for (int u = 0; u < ACC(nx) && b0 + u < nb; u++) {
            const int b = b0 + u;
            __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w[b].qs));
            __m256i qw = _mm256_and_si256(_mm256_srlv_epi32(raw, shift), m4);
            float dw = h2f(w[b].d);
            for (int r = 0; r < nx; r++) {
                const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                __m256i qx = _mm256_loadu_si256((const __m256i *)xb->qs);
                __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(qw, qx), _mm256_maddubs_epi16(eight, qx));
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][u] = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(xb->d)), p, acc[r][u]);
            }
        }
    }
    for (int r = 0; r < nx; r++) o[r * os] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1]));
}

void ds4_dot_q4_0_avx2(int n, const void *w, const void *x, size_t xs, int nx, float *o, size_t os) {
    switch (nx) {
    case 1: dot_q4_0(n, w, x, xs, 1, o, os); break;
    case 2: dot_q4_0(n, w, x, xs, 2, o, os); break;
    case 3: dot_q4_0(n, w, x, xs, 3, o, os); break;
    default: dot_q4_0(n, w, x, xs, 4, o, os); break;
    }
}

/* ---- Q4_K x Q8_K ----------------------------------------------------------------
 * Per super-block: sum_j sc_j * (q4 . q8 over sub-block j) in int32 (unsigned
 * nibbles straight into maddubs, then madd by the 6-bit scale), times d * dx;
 * minus dmin * dx * sum_j m_j * (bsums of sub-block j). */
static inline void q4k_unpack_scales(const uint8_t *p, uint8_t sc[8], uint8_t m[8]) {
    uint32_t u0, u1, u2;
    memcpy(&u0, p, 4); memcpy(&u1, p + 4, 4); memcpy(&u2, p + 8, 4);
    uint32_t s_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
    uint32_t s_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    memcpy(sc, &s_lo, 4); memcpy(sc + 4, &s_hi, 4);
    memcpy(m, &m_lo, 4); memcpy(m + 4, &m_hi, 4);
}

static inline __attribute__((always_inline)) void dot_q4_K(int n, const ds4_block_q4_K *w, const char *x,
                                                           size_t xs, int nx, float *o, size_t os) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[MAXNX], accm[MAXNX];
    for (int r = 0; r < nx; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    for (int b = 0; b < n / DS4_QK_K; b++) {
        uint8_t sc[8], m[8];
        q4k_unpack_scales(w[b].scales, sc, m);
        float d = h2f(w[b].d), dmin = h2f(w[b].dmin);
        /* m_j twice each as int16, against the 16 bsums */
        __m128i m8 = _mm_loadl_epi64((const __m128i *)m);
        __m256i mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        __m256i isum[MAXNX];
        for (int r = 0; r < nx; r++) isum[r] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i s0 = _mm256_set1_epi16(sc[2 * k]), s1 = _mm256_set1_epi16(sc[2 * k + 1]);
            for (int r = 0; r < nx; r++) {
                const ds4_block_q8_K *xb = (const ds4_block_q8_K *)(x + r * xs) + b;
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * k));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * k + 32));
                __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p0, p1));
            }
        }
        for (int r = 0; r < nx; r++) {
            const ds4_block_q8_K *xb = (const ds4_block_q8_K *)(x + r * xs) + b;
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            __m256i msum = _mm256_madd_epi16(bs, mins16);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb->d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * xb->d), _mm256_cvtepi32_ps(msum), accm[r]);
        }
    }
    for (int r = 0; r < nx; r++) o[r * os] = hsum8(acc[r]) - hsum8(accm[r]);
}

void ds4_dot_q4_K_avx2(int n, const void *w, const void *x, size_t xs, int nx, float *o, size_t os) {
    switch (nx) {
    case 1: dot_q4_K(n, w, x, xs, 1, o, os); break;
    case 2: dot_q4_K(n, w, x, xs, 2, o, os); break;
    case 3: dot_q4_K(n, w, x, xs, 3, o, os); break;
    default: dot_q4_K(n, w, x, xs, 4, o, os); break;
    }
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ds4_quant_avx2_unused;
#endif
