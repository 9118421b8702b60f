/* quant_avx2.c — AVX2 int8 dot-product kernels on small tiles: nw weight rows
 * against nx activation rows (nw * nx <= 4), so unpacked weights or loaded
 * activations are shared. Each output equals the scalar reference up to
 * float rounding, and does not depend on the tile it was computed in. */
#include "quant/quant.h"

#ifdef __AVX2__
#include <immintrin.h>
#include <string.h>

#include "util/util.h"

#if defined(__F16C__)
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float h2f(uint16_t h) { return ds4_fp16_to_fp32(h); }
static inline uint16_t f2h(float f) { return ds4_fp32_to_fp16(f); }
#endif

#define INLINE static inline __attribute__((always_inline))

/* fp16 -> fp32 of every half, so a block scale is a broadcast load with no
 * conversion uops in the inner loops (filled before main runs). */
static float h2f_table[1 << 16];

__attribute__((constructor)) static void h2f_table_fill(void) {
    for (int i = 0; i < 1 << 16; i++) h2f_table[i] = ds4_fp16_to_fp32((uint16_t)i);
}

/* [h2f(a) x 4 | h2f(b) x 4]: the scales of two blocks, one per 128-bit lane */
static inline __m256 scale_pair(uint16_t a, uint16_t b) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(&h2f_table[a])),
                                _mm_broadcast_ss(&h2f_table[b]), 1);
}
/* Weights stream from memory once per matvec. The hardware prefetcher alone
 * leaves a core waiting on each row's first lines; prefetching PF_DIST bytes
 * ahead into L2 keeps enough misses in flight to overlap memory and compute
 * (one thread, 4096 x 4096 from DRAM: Q4_0 7 -> 10, Q8_0 11 -> 15 GB/s). */
#ifndef PF_DIST
#define PF_DIST 16384
#endif
#define PREFETCH(p) _mm_prefetch((const char *)(p) + PF_DIST, _MM_HINT_T1)

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Instantiate KERNEL(NW, NX) for every legal tile shape with constant sizes,
 * so the compiler unrolls the row loops and keeps accumulators in registers. */
#define DISPATCH(KERNEL, ...)                                                          \
    switch (nw * 8 + nx) {                                                             \
    case 9: KERNEL(__VA_ARGS__, 1, 1); break;                                          \
    case 10: KERNEL(__VA_ARGS__, 1, 2); break;                                         \
    case 11: KERNEL(__VA_ARGS__, 1, 3); break;                                         \
    case 12: KERNEL(__VA_ARGS__, 1, 4); break;                                         \
    case 17: KERNEL(__VA_ARGS__, 2, 1); break;                                         \
    case 18: KERNEL(__VA_ARGS__, 2, 2); break;                                         \
    case 25: KERNEL(__VA_ARGS__, 3, 1); break;                                         \
    case 33: KERNEL(__VA_ARGS__, 4, 1); break;                                         \
    default:                                                                           \
        for (int k_ = 0; k_ < nw; k_++)                                                \
            for (int r_ = 0; r_ < nx; r_++)                                            \
                KERNEL(n, (const char *)w + k_ * ws, (const char *)x + r_ * xs, ws, xs, \
                       o + r_ * os + k_, os, 1, 1);                                    \
    }

/* ---- fp32 weights ------------------------------------------------------------ */
INLINE void dot_f32(int n, const char *w, const char *x, size_t ws, size_t xs, float *o, size_t os,
                    const int NW, const int NX) {
    __m256 acc[4][4][2];
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) acc[k][r][0] = acc[k][r][1] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 x0[4], x1[4];
        for (int r = 0; r < NX; r++) {
            const float *xr = (const float *)(x + r * xs);
            x0[r] = _mm256_loadu_ps(xr + i);
            x1[r] = _mm256_loadu_ps(xr + i + 8);
        }
        for (int k = 0; k < NW; k++) {
            const float *wk = (const float *)(w + k * ws);
            __m256 w0 = _mm256_loadu_ps(wk + i), w1 = _mm256_loadu_ps(wk + i + 8);
            for (int r = 0; r < NX; r++) {
                acc[k][r][0] = _mm256_fmadd_ps(w0, x0[r], acc[k][r][0]);
                acc[k][r][1] = _mm256_fmadd_ps(w1, x1[r], acc[k][r][1]);
            }
        }
    }
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) {
            const float *wk = (const float *)(w + k * ws), *xr = (const float *)(x + r * xs);
            float s = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1]));
            for (int j = i; j < n; j++) s += wk[j] * xr[j];
            o[r * os + k] = s;
        }
}

void ds4_dot_f32_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx,
                      float *o, size_t os) {
    DISPATCH(dot_f32, n, w, x, ws, xs, o, os)
}

/* ---- Q8_0 x Q8_0 and Q4_0 x Q8_0 ----------------------------------------------------
 * Per block: 8 int32 partial sums -> float, times dw * dx, into one of two
 * accumulators per (weight row, activation row) chosen by block parity (one
 * would make every block wait for the previous FMA). */
INLINE void dot_q8_0(int n, const char *w, const char *x, size_t ws, size_t xs, float *o, size_t os,
                     const int NW, const int NX) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][4][2];
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) acc[k][r][0] = acc[k][r][1] = _mm256_setzero_ps();
    const int nb = n / DS4_QK8_0;
    for (int b0 = 0; b0 < nb; b0 += 2) {
        for (int u = 0; u < 2 && b0 + u < nb; u++) {
            const int b = b0 + u;
            __m256i qx[4];
            float dx[4];
            if (NW > 1)
                for (int r = 0; r < NX; r++) {
                    const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                    qx[r] = _mm256_loadu_si256((const __m256i *)xb->qs);
                    dx[r] = h2f(xb->d);
                }
            for (int k = 0; k < NW; k++) {
                const ds4_block_q8_0 *wb = (const ds4_block_q8_0 *)(w + k * ws) + b;
                if (u == 0) PREFETCH(wb);
                __m256i qw = _mm256_loadu_si256((const __m256i *)wb->qs);
                __m256i aw = _mm256_sign_epi8(qw, qw);      /* |w|, unsigned for maddubs */
                float dw = h2f(wb->d);
                for (int r = 0; r < NX; r++) {
                    const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                    __m256i qxr = NW > 1 ? qx[r] : _mm256_loadu_si256((const __m256i *)xb->qs);
                    float dxr = NW > 1 ? dx[r] : h2f(xb->d);
                    __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qxr, qw));
                    __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc[k][r][u] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dxr), p, acc[k][r][u]);
                }
            }
        }
    }
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) o[r * os + k] = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1]));
}

void ds4_dot_q8_0_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx,
                       float *o, size_t os) {
    DISPATCH(dot_q8_0, n, w, x, ws, xs, o, os)
}

/* Q4_0: two blocks at a time. Their 16 nibble bytes fill the two lanes of one
 * vector; the mask gives elements 0..15 of each block (low nibbles), the
 * shift and mask elements 16..31, as unsigned q in 0..15, against the matching
 * halves of the two activation blocks. Per lane, sum (q - 8) x = maddubs(q_lo,
 * x_lo) + maddubs(q_hi, x_hi) - maddubs(8, x_lo + x_hi), pairwise in int16;
 * then 4 int32 partial sums per block, times [dw dx] of that block's lane.
 * An odd last block goes alone into a second accumulator. */
INLINE void dot_q4_0(int n, const char *w, const char *x, size_t ws, size_t xs, float *o, size_t os,
                     const int NW, const int NX) {
    const __m256i m4 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256 acc[4][4];
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) acc[k][r] = _mm256_setzero_ps();
    const int nb = n / DS4_QK4_0;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        /* with several weight rows the activation side is prepared once per
         * block pair; with one, inline (fewer live registers) */
        __m256i xl[4], xh[4], x8[4];
        __m256 dx[4];
        if (NW > 1)
            for (int r = 0; r < NX; r++) {
                const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[0].qs);
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)xb[1].qs);
                xl[r] = _mm256_permute2x128_si256(a0, a1, 0x20);
                xh[r] = _mm256_permute2x128_si256(a0, a1, 0x31);
                x8[r] = _mm256_add_epi16(_mm256_maddubs_epi16(eight, xl[r]), _mm256_maddubs_epi16(eight, xh[r]));
                dx[r] = scale_pair(xb[0].d, xb[1].d);
            }
        for (int k = 0; k < NW; k++) {
            const ds4_block_q4_0 *wb = (const ds4_block_q4_0 *)(w + k * ws) + b;
            PREFETCH(wb);
            const __m256i raw = _mm256_loadu2_m128i((const __m128i *)wb[1].qs, (const __m128i *)wb[0].qs);
            const __m256i lo = _mm256_and_si256(raw, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            const __m256 dw = scale_pair(wb[0].d, wb[1].d);
            for (int r = 0; r < NX; r++) {
                __m256i xlr, xhr, x8r;
                __m256 dxr;
                if (NW > 1) {
                    xlr = xl[r]; xhr = xh[r]; x8r = x8[r]; dxr = dx[r];
                } else {
                    const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[0].qs);
                    const __m256i a1 = _mm256_loadu_si256((const __m256i *)xb[1].qs);
                    xlr = _mm256_permute2x128_si256(a0, a1, 0x20);
                    xhr = _mm256_permute2x128_si256(a0, a1, 0x31);
                    x8r = _mm256_add_epi16(_mm256_maddubs_epi16(eight, xlr), _mm256_maddubs_epi16(eight, xhr));
                    dxr = scale_pair(xb[0].d, xb[1].d);
                }
                const __m256i p16 = _mm256_sub_epi16(
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlr), _mm256_maddubs_epi16(hi, xhr)), x8r);
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[k][r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dxr), p, acc[k][r]);
            }
        }
    }
    if (b < nb) {                 /* odd block count: the last block alone, in the lower lane */
        const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        for (int k = 0; k < NW; k++) {
            const ds4_block_q4_0 *wb = (const ds4_block_q4_0 *)(w + k * ws) + b;
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)wb->qs));
            const __m256i qw = _mm256_and_si256(_mm256_srlv_epi32(raw, shift), m4);
            for (int r = 0; r < NX; r++) {
                const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)(x + r * xs) + b;
                const __m256i qx = _mm256_loadu_si256((const __m256i *)xb->qs);
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(qw, qx), _mm256_maddubs_epi16(eight, qx));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                const float d = h2f_table[wb->d] * h2f_table[xb->d];
                o[r * os + k] = hsum8(acc[k][r]) + d * hsum8(p);
            }
        }
        return;
    }
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < NX; r++) o[r * os + k] = hsum8(acc[k][r]);
}

void ds4_dot_q4_0_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx,
                       float *o, size_t os) {
    DISPATCH(dot_q4_0, n, w, x, ws, xs, o, os)
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

/* One weight row against NX activation rows (weights unpacked once). */
INLINE void dot_q4_K_row(int n, const char *w, const char *x, size_t xs, float *o, size_t os, const int NX) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4], accm[4];
    for (int r = 0; r < NX; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    const ds4_block_q4_K *wb = (const ds4_block_q4_K *)w;
    for (int b = 0; b < n / DS4_QK_K; b++) {
        PREFETCH(wb + b);
        PREFETCH((const char *)(wb + b) + 64);
        PREFETCH((const char *)(wb + b) + 128);
        uint8_t sc[8], m[8];
        q4k_unpack_scales(wb[b].scales, sc, m);
        float d = h2f(wb[b].d), dmin = h2f(wb[b].dmin);
        /* m_j twice each as int16, against the 16 bsums */
        __m128i m8 = _mm_loadl_epi64((const __m128i *)m);
        __m256i mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        /* the 8 scales as int16 in both lanes; sub-block j's is broadcast by a byte shuffle */
        const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
        __m256i isum[4];
        for (int r = 0; r < NX; r++) isum[r] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(wb[b].qs + 32 * k));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i s0 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k))));
            __m256i s1 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k + 1))));
            for (int r = 0; r < NX; r++) {
                const ds4_block_q8_K *xb = (const ds4_block_q8_K *)(x + r * xs) + b;
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * k));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * k + 32));
                __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p0, p1));
            }
        }
        for (int r = 0; r < NX; r++) {
            const ds4_block_q8_K *xb = (const ds4_block_q8_K *)(x + r * xs) + b;
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            __m256i msum = _mm256_madd_epi16(bs, mins16);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb->d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * xb->d), _mm256_cvtepi32_ps(msum), accm[r]);
        }
    }
    for (int r = 0; r < NX; r++) o[r * os] = hsum8(acc[r]) - hsum8(accm[r]);
}

/* A super-block row is compute-heavy enough that sharing activation loads
 * across weight rows gains little: weight rows go one at a time. */
INLINE void dot_q4_K(int n, const char *w, const char *x, size_t ws, size_t xs, float *o, size_t os,
                     const int NW, const int NX) {
    for (int k = 0; k < NW; k++) dot_q4_K_row(n, w + k * ws, x, xs, o + k, os, NX);
}

void ds4_dot_q4_K_avx2(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx,
                       float *o, size_t os) {
    DISPATCH(dot_q4_K, n, w, x, ws, xs, o, os)
}

/* ---- activation quantization ------------------------------------------------------
 * Same bytes as ds4_quantize_row_q8_0 / ds4_quantize_row_q8_K (same products
 * x * id, same round-to-nearest-even); they run once per matmul input, which
 * for small matrices is a noticeable share of a matvec. */
static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* 32 floats times id -> 32 int8 in order, rounded to nearest even, clamped to +-127 */
static inline __m256i round_pack32(const float *x, __m256 id) {
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[k] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(v), lim), nlim);
    }
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    /* packs work per 128-bit lane: dwords come out as 0 4 1 5 2 6 3 7 */
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

void ds4_quantize_row_q8_0_avx2(const float *x, ds4_block_q8_0 *y, int n) {
    for (int b = 0; b < n / DS4_QK8_0; b++, x += DS4_QK8_0) {
        __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(_mm256_loadu_ps(x)), abs_ps(_mm256_loadu_ps(x + 8))),
                                 _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + 16)), abs_ps(_mm256_loadu_ps(x + 24))));
        float amax = hmax8(m);
        uint16_t dh = 0;
        if (amax > 0.0f) {   /* amax / 127 rounded up to fp16, as the reference */
            dh = f2h(amax / 127.0f);
            while (dh < 0x7bff && h2f(dh) * 127.0f < amax) dh++;
        }
        float d = h2f(dh), id = d > 0.0f ? 1.0f / d : 0.0f;
        y[b].d = dh;
        _mm256_storeu_si256((__m256i *)y[b].qs, round_pack32(x, _mm256_set1_ps(id)));
    }
}

void ds4_quantize_row_q8_K_avx2(const float *x, ds4_block_q8_K *y, int n) {
    for (int b = 0; b < n / DS4_QK_K; b++, x += DS4_QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < DS4_QK_K; i += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + i)));
        float amax = hmax8(m);
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = amax / 127.0f;
        for (int k = 0; k < DS4_QK_K / 32; k++)
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * k), round_pack32(x + 32 * k, _mm256_set1_ps(id)));
        for (int k = 0; k < DS4_QK_K / 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += y[b].qs[16 * k + i];
            y[b].bsums[k] = (int16_t)s;
        }
    }
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ds4_quant_avx2_unused;
#endif
