/* quant_x8_avx2.c — AVX2 kernels for the x8 layout (quant.h): the 8 rows of
 * a group against up to 4 activation rows, each row's dot product in its own
 * 32-bit lane, so a block needs no horizontal sums and its 8 scales convert
 * in one instruction: 1.7-2.2x the row kernels' throughput from L2, one thread. */
#include "quant/quant.h"

#ifdef __AVX2__
#include <immintrin.h>
#include <string.h>

#include "util/util.h"

#define INLINE static inline __attribute__((always_inline))

/* Weights stream from memory once per token; prefetch this far ahead (one
 * group's blocks are contiguous, so this runs into the next group's). */
#ifndef X8_PF
#define X8_PF 1152
#endif
#define PF(p, off) _mm_prefetch((const char *)(p) + X8_PF + (off), _MM_HINT_NTA)

/* 4 activation bytes at p in every 32-bit lane */
INLINE __m256i bc4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* the 8 fp16 scales at p as fp32 */
INLINE __m256 scales8(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* the fp16 scale of an activation block */
#if defined(__F16C__)
INLINE float act_scale_q8_0(const ds4_block_q8_0 *b) { return _cvtsh_ss(b->d); }
#else
INLINE float act_scale_q8_0(const ds4_block_q8_0 *b) { return ds4_fp16_to_fp32(b->d); }
#endif

/* The instantiations with constant NX keep the per-row accumulators in registers. */
#define DISPATCH_NX(KERNEL)                                   \
    switch (nx) {                                             \
    case 1: KERNEL(n, w8, x, xs, aux, o, os, 1); break;       \
    case 2: KERNEL(n, w8, x, xs, aux, o, os, 2); break;       \
    case 3: KERNEL(n, w8, x, xs, aux, o, os, 3); break;       \
    default: KERNEL(n, w8, x, xs, aux, o, os, 4); break;      \
    }

/* ---- Q8_0: unit = d[8] (16 B) + 8 vectors; vector v lane k = qs[4v..4v+3] of row k.
 * Per vector: |w| against x with w's sign, pairwise products in int16 (at most
 * 2 * 127 * 127, no saturation), pairs to int32. */
INLINE void x8_q8_0(int n, const void *w8, const void *x, size_t xs, const int32_t *aux, float *o, size_t os,
                    const int NX) {
    (void)aux;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();
    const char *p = (const char *)w8;
    const int nb = n / DS4_QK8_0;
    for (int b = 0; b < nb; b++, p += 8 * sizeof(ds4_block_q8_0)) {
        PF(p, 0); PF(p, 64); PF(p, 128); PF(p, 192); PF(p, 256);
        __m256i s[4];
        for (int r = 0; r < NX; r++) s[r] = _mm256_setzero_si256();
        for (int v = 0; v < 8; v++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * v));
            const __m256i aw = _mm256_sign_epi8(w, w);
            for (int r = 0; r < NX; r++) {
                const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)((const char *)x + r * xs) + b;
                const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(bc4(xb->qs + 4 * v), w));
                s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p16, ones));
            }
        }
        const __m256 dw = scales8(p);
        for (int r = 0; r < NX; r++) {
            const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)((const char *)x + r * xs) + b;
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(act_scale_q8_0(xb))), _mm256_cvtepi32_ps(s[r]),
                                     acc[r]);
        }
    }
    for (int r = 0; r < NX; r++) _mm256_storeu_ps(o + (size_t)r * os, acc[r]);
}

/* ---- Q4_0: unit = d[8] + 4 vectors; vector v lane k = qs[4v..4v+3] of row k:
 * low nibbles elements 4v.., high nibbles 16+4v... Unsigned q in 0..15 go
 * straight into maddubs; 8 products of a block summed in int16 (at most 8 *
 * 2 * 15 * 127 = 30480); sum (q - 8) x = that - 8 sum x. aux (from
 * ds4_x8_act_aux_avx2, once per activation row) holds per block 8 sum x and
 * the block's scale as float bits. Two blocks per iteration. */
INLINE void x8_q4_0(int n, const void *w8, const void *x, size_t xs, const int32_t *aux, float *o, size_t os,
                    const int NX) {
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();
    const int nb = n / DS4_QK4_0;
    for (int b0 = 0; b0 < nb; b0 += 2) {
        const char *p0 = (const char *)w8 + (size_t)b0 * 8 * sizeof(ds4_block_q4_0);
        PF(p0, 0); PF(p0, 64); PF(p0, 128); PF(p0, 192); PF(p0, 256);
        for (int u = 0; u < 2 && b0 + u < nb; u++) {
            const int b = b0 + u;
            const char *p = p0 + u * 8 * sizeof(ds4_block_q4_0);
            __m256i s[4];
            for (int r = 0; r < NX; r++) s[r] = _mm256_setzero_si256();
            for (int v = 0; v < 4; v++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * v));
                const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                for (int r = 0; r < NX; r++) {
                    const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)((const char *)x + r * xs) + b;
                    s[r] = _mm256_add_epi16(s[r], _mm256_add_epi16(_mm256_maddubs_epi16(lo, bc4(xb->qs + 4 * v)),
                                                                   _mm256_maddubs_epi16(hi, bc4(xb->qs + 16 + 4 * v))));
                }
            }
            const __m256 dw = scales8(p);
            for (int r = 0; r < NX; r++) {
                const int32_t *a = aux + 2 * ((size_t)r * nb + b);
                float dx;
                memcpy(&dx, a + 1, 4);
                const __m256i si = _mm256_sub_epi32(_mm256_madd_epi16(s[r], ones), _mm256_set1_epi32(a[0]));
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(si), acc[r]);
            }
        }
    }
    for (int r = 0; r < NX; r++) _mm256_storeu_ps(o + (size_t)r * os, acc[r]);
}

void ds4_x8_act_aux_avx2(int n, const void *x, size_t xs, int nx, int32_t *aux) {
    const __m256i e8 = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    const int nb = n / DS4_QK8_0;
    for (int r = 0; r < nx; r++)
        for (int b = 0; b < nb; b++) {
            const ds4_block_q8_0 *xb = (const ds4_block_q8_0 *)((const char *)x + r * xs) + b;
            const __m256i t = _mm256_madd_epi16(_mm256_maddubs_epi16(e8, _mm256_loadu_si256((const __m256i *)xb->qs)), ones);
            const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            const __m128i q = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
            int32_t *a = aux + 2 * ((size_t)r * nb + b);
            a[0] = _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1)));
            const float dx = act_scale_q8_0(xb);
            memcpy(a + 1, &dx, 4);
        }
}

/* ---- Q4_K: unit = d[8], dmin[8], the 12 scale bytes as 3 words x 8 rows,
 * then 32 qs words x 8 rows. Words U0, U1, U2 of all 8 rows unpack at once
 * into lanes holding sc[0..3], sc[4..7], m[0..3], m[4..7] of that row.
 * Sub-blocks 2k (low nibbles of qs words 8k..8k+7) and 2k+1 (high): 8
 * maddubs each summed in int16 (at most 30480), then madd by the sub-block's
 * scale, taken into both int16 halves of each lane by a byte shuffle. Mins:
 * sum_j m_j (bsums[2j] + bsums[2j+1]), two sub-blocks per madd. */
INLINE __m256i bytes_pattern(int j0, int j1) {    /* per 32-bit lane: bytes j0, 0, j1, 0 of that lane */
    char c[32];
    for (int l = 0; l < 8; l++) {
        const int base = 4 * (l % 4);
        c[4 * l] = (char)(base + j0);
        c[4 * l + 1] = (char)0x80;
        c[4 * l + 2] = (char)(base + j1);
        c[4 * l + 3] = (char)0x80;
    }
    return _mm256_loadu_si256((const __m256i *)c);
}

INLINE void x8_q4_K(int n, const void *w8, const void *x, size_t xs, const int32_t *aux, float *o, size_t os,
                    const int NX) {
    (void)aux;
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i k3f = _mm256_set1_epi32(0x3f3f3f3f), k0f = _mm256_set1_epi32(0x0f0f0f0f),
                  k03 = _mm256_set1_epi32(0x03030303);
    __m256i sel[4], selp[2];
    for (int j = 0; j < 4; j++) sel[j] = bytes_pattern(j, j);      /* (sc_j, sc_j) */
    selp[0] = bytes_pattern(0, 1);                                  /* (m_0, m_1) */
    selp[1] = bytes_pattern(2, 3);
    __m256 acc[4], accm[4];
    for (int r = 0; r < NX; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    const char *p = (const char *)w8;
    const int nb = n / DS4_QK_K;
    for (int b = 0; b < nb; b++, p += 8 * sizeof(ds4_block_q4_K)) {
        const __m256i u0 = _mm256_loadu_si256((const __m256i *)(p + 32));
        const __m256i u1 = _mm256_loadu_si256((const __m256i *)(p + 64));
        const __m256i u2 = _mm256_loadu_si256((const __m256i *)(p + 96));
        const __m256i sc_lo = _mm256_and_si256(u0, k3f), m_lo = _mm256_and_si256(u1, k3f);
        const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(u2, k0f),
                                              _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), k03), 4));
        const __m256i m_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), k0f),
                                             _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), k03), 4));
        __m256i isum[4];
        for (int r = 0; r < NX; r++) isum[r] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const char *q = p + 128 + 256 * k;
            for (int l = 0; l < 256; l += 64) PF(q, l);
            __m256i a[4], c[4];
            for (int r = 0; r < NX; r++) a[r] = c[r] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(q + 32 * v));
                const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                for (int r = 0; r < NX; r++) {
                    const ds4_block_q8_K *xb = (const ds4_block_q8_K *)((const char *)x + r * xs) + b;
                    a[r] = _mm256_add_epi16(a[r], _mm256_maddubs_epi16(lo, bc4(xb->qs + 64 * k + 4 * v)));
                    c[r] = _mm256_add_epi16(c[r], _mm256_maddubs_epi16(hi, bc4(xb->qs + 64 * k + 32 + 4 * v)));
                }
            }
            const __m256i src = k < 2 ? sc_lo : sc_hi;      /* sub-blocks 2k, 2k+1 */
            const __m256i sa = _mm256_shuffle_epi8(src, sel[(2 * k) % 4]);
            const __m256i sb = _mm256_shuffle_epi8(src, sel[(2 * k + 1) % 4]);
            for (int r = 0; r < NX; r++)
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(_mm256_madd_epi16(a[r], sa),
                                                                     _mm256_madd_epi16(c[r], sb)));
        }
        const __m256i mp[4] = {_mm256_shuffle_epi8(m_lo, selp[0]), _mm256_shuffle_epi8(m_lo, selp[1]),
                               _mm256_shuffle_epi8(m_hi, selp[0]), _mm256_shuffle_epi8(m_hi, selp[1])};
        const __m256 d = scales8(p), dmin = scales8(p + 16);
        for (int r = 0; r < NX; r++) {
            const ds4_block_q8_K *xb = (const ds4_block_q8_K *)((const char *)x + r * xs) + b;
            /* per sub-block sums of x as int16: bsums pairs added */
            const __m128i b0 = _mm_loadu_si128((const __m128i *)xb->bsums);
            const __m128i b1 = _mm_loadu_si128((const __m128i *)(xb->bsums + 8));
            const __m128i sj = _mm_hadd_epi16(b0, b1);          /* S_0..S_7 */
            /* (S_2j, S_2j+1) in every lane, against (m_2j, m_2j+1) */
            const __m256i s01 = _mm256_broadcastd_epi32(sj), s23 = _mm256_broadcastd_epi32(_mm_srli_si128(sj, 4));
            const __m256i s45 = _mm256_broadcastd_epi32(_mm_srli_si128(sj, 8)),
                          s67 = _mm256_broadcastd_epi32(_mm_srli_si128(sj, 12));
            const __m256i ms = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_madd_epi16(mp[0], s01), _mm256_madd_epi16(mp[1], s23)),
                _mm256_add_epi32(_mm256_madd_epi16(mp[2], s45), _mm256_madd_epi16(mp[3], s67)));
            const __m256 dx = _mm256_set1_ps(xb->d);
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum[r]), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(ms), accm[r]);
        }
    }
    for (int r = 0; r < NX; r++) _mm256_storeu_ps(o + (size_t)r * os, _mm256_sub_ps(acc[r], accm[r]));
}

void ds4_dot_x8_q8_0_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o,
                          size_t os) {
    DISPATCH_NX(x8_q8_0)
}
void ds4_dot_x8_q4_0_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o,
                          size_t os) {
    DISPATCH_NX(x8_q4_0)
}
void ds4_dot_x8_q4_K_avx2(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o,
                          size_t os) {
    DISPATCH_NX(x8_q4_K)
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ds4_quant_x8_avx2_unused;
#endif
