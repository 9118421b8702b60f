/* quant_ref.c — scalar reference for the block formats: quantize and
 * dequantize one row of Q8_0, Q4_0, Q4_K (weights) and Q8_K (activations),
 * and the exact-integer dot products the SIMD kernels must reproduce. */
#include <math.h>
#include <string.h>

#include "quant/quant.h"
#include "util/util.h"

static inline float h2f(uint16_t h) { return ds4_fp16_to_fp32(h); }

/* Smallest fp16 (non-negative) whose value times k is >= v: the stored scale
 * never undershoots, so the largest element still fits on the grid. */
static uint16_t fp16_at_least(float v, float k) {
    uint16_t h = ds4_fp32_to_fp16(v / k);
    while (h < 0x7bff && ds4_fp16_to_fp32(h) * k < v) h++;
    return h;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---- Q8_0 -------------------------------------------------------------------
 * d = amax / 127 rounded up to fp16; q = nearest(x / d) computed with the
 * stored d, so |q| <= 127 and the error is at most d/2 per element. */
void ds4_quantize_row_q8_0(const float *x, ds4_block_q8_0 *y, int n) {
    for (int b = 0; b < n / DS4_QK8_0; b++, x += DS4_QK8_0) {
        float amax = 0.0f;
        for (int i = 0; i < DS4_QK8_0; i++) amax = fmaxf(amax, fabsf(x[i]));
        uint16_t dh = amax > 0.0f ? fp16_at_least(amax, 127.0f) : 0;
        float d = h2f(dh), id = d > 0.0f ? 1.0f / d : 0.0f;
        y[b].d = dh;
        for (int i = 0; i < DS4_QK8_0; i++)
            y[b].qs[i] = (int8_t)clampi((int)rintf(x[i] * id), -127, 127);
    }
}

void ds4_dequantize_row_q8_0(const ds4_block_q8_0 *x, float *y, int n) {
    for (int b = 0; b < n / DS4_QK8_0; b++) {
        float d = h2f(x[b].d);
        for (int i = 0; i < DS4_QK8_0; i++) *y++ = d * x[b].qs[i];
    }
}

/* ---- Q4_0 -------------------------------------------------------------------
 * As ggml: the element of largest magnitude, max, maps to q = 0 with
 * d = max / -8 (magnitude rounded up to fp16), so the grid is d * (-8 .. 7),
 * max sits on it and only elements of the other sign beyond 7|d| clip. */
void ds4_quantize_row_q4_0(const float *x, ds4_block_q4_0 *y, int n) {
    for (int b = 0; b < n / DS4_QK4_0; b++, x += DS4_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < DS4_QK4_0; i++)
            if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }
        uint16_t dh = amax > 0.0f ? fp16_at_least(amax, 8.0f) : 0;
        if (max > 0.0f) dh |= 0x8000;                 /* d = max / -8 */
        float d = h2f(dh), id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = dh;
        for (int j = 0; j < DS4_QK4_0 / 2; j++) {
            int q0 = clampi((int)rintf(x[j] * id) + 8, 0, 15);
            int q1 = clampi((int)rintf(x[j + 16] * id) + 8, 0, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void ds4_dequantize_row_q4_0(const ds4_block_q4_0 *x, float *y, int n) {
    for (int b = 0; b < n / DS4_QK4_0; b++, y += DS4_QK4_0) {
        float d = h2f(x[b].d);
        for (int j = 0; j < DS4_QK4_0 / 2; j++) {
            y[j] = d * ((x[b].qs[j] & 15) - 8);
            y[j + 16] = d * ((x[b].qs[j] >> 4) - 8);
        }
    }
}

/* ---- Q4_K scale packing ------------------------------------------------------ */
void ds4_q4_K_get_scales(const uint8_t p[12], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = p[j] & 63;
        m[j] = p[j + 4] & 63;
        sc[j + 4] = (uint8_t)((p[j + 8] & 15) | ((p[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((p[j + 8] >> 4) | ((p[j + 4] >> 6) << 4));
    }
}

void ds4_q4_K_set_scales(uint8_t p[12], const uint8_t sc[8], const uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        p[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        p[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        p[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* ---- Q4_K quantizer -----------------------------------------------------------
 * Per sub-block j of 32: grid s_j * q - o_j, q in 0..15, s_j = d * sc_j,
 * o_j = dmin * m_j >= 0 (ggml's format cannot shift the grid above 0).
 * 1. A "covering" choice: o_j >= -min(0, min x), s_j * 15 >= max x + o_j, with
 *    dmin = max_j o_j / 63 and d = max_j span_j / (15 * 63) rounded up to fp16
 *    and sc, m rounded up. Every element lies inside its grid, so the
 *    error is at most s_j / 2 <= (span_j / 15 + d) / 2.
 * 2. A least-squares fit of (s, o) per sub-block (several starting grids,
 *    each refined by alternating nearest-q and a linear fit), rounded down
 *    and up to the 6-bit grid.
 * The candidate with the smallest squared error wins (the covering one on
 * ties), so the per-sub-block RMS error never exceeds the covering bound. */

/* Squared error of sub-block x[32] on grid (s, o) with nearest q; fills q.
 * Written so the compiler vectorises it (no serial float reduction). */
static float q4k_sse(const float *x, float s, float o, uint8_t *q) {
    float id = s > 0.0f ? 1.0f / s : 0.0f, r2[32], p[8];
    for (int i = 0; i < 32; i++) {
        int v = clampi((int)rintf((x[i] + o) * id), 0, 15);
        float r = s * (float)v - o - x[i];
        q[i] = (uint8_t)v;
        r2[i] = r * r;
    }
    for (int i = 0; i < 8; i++) p[i] = (r2[i] + r2[i + 8]) + (r2[i + 16] + r2[i + 24]);
    return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
}

/* One least-squares step: the (s, o), o >= 0, that best fit x ≈ s * q - o for
 * fixed q. Returns 0 when the fit is degenerate. */
static int q4k_lsq(const float *x, const uint8_t *q, float *s, float *o) {
    double sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < 32; i++) {
        sq += q[i]; sqq += (double)q[i] * q[i]; sx += x[i]; sqx += (double)q[i] * x[i];
    }
    double det = 32.0 * sqq - sq * sq;
    if (det <= 0.0) return 0;
    double ns = (32.0 * sqx - sq * sx) / det, nb = (sx - ns * sq) / 32.0;
    if (nb > 0.0) { nb = 0.0; ns = sqq > 0.0 ? sqx / sqq : 0.0; }
    if (!(ns > 0.0)) return 0;
    *s = (float)ns; *o = (float)-nb;
    return 1;
}

/* Search effort, tuned on N(0,1) data: 9 starting grids, 2 refinements each,
 * and sc, m in floor-1 .. floor+2 of the fitted values: relative RMS error
 * 0.0704 (21 starts, 3 refinements: 0.0703; 5 starts and floor..floor+1: 0.0710). */
enum { Q4K_STARTS = 8, Q4K_ITERS = 2, Q4K_LO = -1, Q4K_HI = 2 };

/* Best (s, o) found for x: grids from lo spanning the range over 14..16
 * steps (the wider ones clip outliers), each refined by alternating
 * nearest-q and least squares while the error falls. */
static void q4k_fit(const float *x, float lo, float hi, float *s_out, float *o_out) {
    *s_out = 0.0f; *o_out = -lo;
    if (!(hi - lo > 0.0f)) return;
    uint8_t q[32];
    float best = INFINITY;
    for (int k = 0; k <= Q4K_STARTS; k++) {
        float s = (hi - lo) / (14.0f + 2.0f * (float)k / (float)Q4K_STARTS), o = -lo;
        float e = q4k_sse(x, s, o, q);
        if (e < best) { best = e; *s_out = s; *o_out = o; }
        for (int it = 0; it < Q4K_ITERS; it++) {
            float ns, no;
            if (!q4k_lsq(x, q, &ns, &no)) break;
            float ne = q4k_sse(x, ns, no, q);
            if (ne < best) { best = ne; *s_out = ns; *o_out = no; }
            if (!(ne < e)) break;
            e = ne;
        }
    }
}

static void quantize_block_q4_K(const float *x, ds4_block_q4_K *y) {
    float lo[8], hi[8], ls_s[8], ls_o[8], max_o = 0.0f;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float mn = xs[0], mx = xs[0];
        for (int i = 1; i < 32; i++) { mn = fminf(mn, xs[i]); mx = fmaxf(mx, xs[i]); }
        lo[j] = fminf(mn, 0.0f);
        hi[j] = mx;
        max_o = fmaxf(max_o, -lo[j]);
        q4k_fit(xs, lo[j], hi[j], &ls_s[j], &ls_o[j]);
    }
    uint16_t dminh = max_o > 0.0f ? fp16_at_least(max_o, 63.0f) : 0;
    float dmin = h2f(dminh);
    uint8_t mcov[8];
    float span[8], max_span = 0.0f;
    for (int j = 0; j < 8; j++) {
        int m = 0;
        if (dmin > 0.0f) {
            m = clampi((int)ceilf(-lo[j] / dmin), 0, 63);
            while (m < 63 && dmin * (float)m < -lo[j]) m++;
        }
        mcov[j] = (uint8_t)m;
        span[j] = fmaxf(hi[j] + dmin * (float)m, 0.0f);
        max_span = fmaxf(max_span, span[j]);
    }
    uint16_t dh = max_span > 0.0f ? fp16_at_least(max_span, 15.0f * 63.0f) : 0;
    float d = h2f(dh);

    uint8_t sc[8], m[8], q[8][32], tq[32];
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        int c_sc[1 + (Q4K_HI - Q4K_LO + 1) * (Q4K_HI - Q4K_LO + 1)], c_m[sizeof(c_sc) / sizeof(int)], nc = 0;
        int s_cov = 0;
        if (d > 0.0f) {
            s_cov = clampi((int)ceilf(span[j] / (15.0f * d)), 0, 63);
            while (s_cov < 63 && (d * (float)s_cov) * 15.0f - dmin * (float)mcov[j] < hi[j]) s_cov++;
        }
        c_sc[nc] = s_cov; c_m[nc] = mcov[j]; nc++;
        if (d > 0.0f) {
            float fs = ls_s[j] / d, fm = dmin > 0.0f ? ls_o[j] / dmin : 0.0f;
            int s0 = (int)floorf(fs), m0 = (int)floorf(fm);
            for (int a = Q4K_LO; a <= Q4K_HI; a++)
                for (int bb = Q4K_LO; bb <= Q4K_HI; bb++) {
                    c_sc[nc] = clampi(s0 + a, 0, 63); c_m[nc] = clampi(m0 + bb, 0, 63); nc++;
                }
        }
        float best = INFINITY;
        for (int c = 0; c < nc; c++) {
            float e = q4k_sse(xs, d * (float)c_sc[c], dmin * (float)c_m[c], tq);
            if (e < best) {
                best = e; sc[j] = (uint8_t)c_sc[c]; m[j] = (uint8_t)c_m[c];
                memcpy(q[j], tq, 32);
            }
        }
    }
    y->d = dh;
    y->dmin = dminh;
    ds4_q4_K_set_scales(y->scales, sc, m);
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++)
            y->qs[32 * k + l] = (uint8_t)(q[2 * k][l] | (q[2 * k + 1][l] << 4));
}

void ds4_quantize_row_q4_K(const float *x, ds4_block_q4_K *y, int n) {
    for (int b = 0; b < n / DS4_QK_K; b++) quantize_block_q4_K(x + (size_t)b * DS4_QK_K, y + b);
}

void ds4_dequantize_row_q4_K(const ds4_block_q4_K *x, float *y, int n) {
    for (int b = 0; b < n / DS4_QK_K; b++) {
        float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
        uint8_t sc[8], m[8];
        ds4_q4_K_get_scales(x[b].scales, sc, m);
        for (int k = 0; k < 4; k++) {
            float s0 = d * sc[2 * k], o0 = dmin * m[2 * k];
            float s1 = d * sc[2 * k + 1], o1 = dmin * m[2 * k + 1];
            const uint8_t *q = x[b].qs + 32 * k;
            for (int l = 0; l < 32; l++) y[l] = s0 * (float)(q[l] & 15) - o0;
            for (int l = 0; l < 32; l++) y[32 + l] = s1 * (float)(q[l] >> 4) - o1;
            y += 64;
        }
    }
}

/* ---- Q8_K (activations) ------------------------------------------------------- */
void ds4_quantize_row_q8_K(const float *x, ds4_block_q8_K *y, int n) {
    for (int b = 0; b < n / DS4_QK_K; b++, x += DS4_QK_K) {
        float amax = 0.0f;
        for (int i = 0; i < DS4_QK_K; i++) amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = d;
        for (int i = 0; i < DS4_QK_K; i++)
            y[b].qs[i] = (int8_t)clampi((int)rintf(x[i] * id), -127, 127);
        for (int k = 0; k < DS4_QK_K / 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += y[b].qs[16 * k + i];
            y[b].bsums[k] = (int16_t)s;
        }
    }
}

void ds4_dequantize_row_q8_K(const ds4_block_q8_K *x, float *y, int n) {
    for (int b = 0; b < n / DS4_QK_K; b++)
        for (int i = 0; i < DS4_QK_K; i++) *y++ = x[b].d * x[b].qs[i];
}

/* ---- reference dot products: exact integer sums per block ------------------- */
float ds4_vec_dot_q8_0_q8_0_ref(int n, const ds4_block_q8_0 *w, const ds4_block_q8_0 *x) {
    float s = 0.0f;
    for (int b = 0; b < n / DS4_QK8_0; b++) {
        int32_t acc = 0;
        for (int i = 0; i < DS4_QK8_0; i++) acc += (int32_t)w[b].qs[i] * x[b].qs[i];
        s += h2f(w[b].d) * h2f(x[b].d) * (float)acc;
    }
    return s;
}

float ds4_vec_dot_q4_0_q8_0_ref(int n, const ds4_block_q4_0 *w, const ds4_block_q8_0 *x) {
    float s = 0.0f;
    for (int b = 0; b < n / DS4_QK4_0; b++) {
        int32_t acc = 0;
        for (int j = 0; j < DS4_QK4_0 / 2; j++) {
            acc += ((w[b].qs[j] & 15) - 8) * x[b].qs[j];
            acc += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        }
        s += h2f(w[b].d) * h2f(x[b].d) * (float)acc;
    }
    return s;
}

float ds4_vec_dot_q4_K_q8_K_ref(int n, const ds4_block_q4_K *w, const ds4_block_q8_K *x) {
    float s = 0.0f;
    for (int b = 0; b < n / DS4_QK_K; b++) {
        uint8_t sc[8], m[8];
        ds4_q4_K_get_scales(w[b].scales, sc, m);
        int32_t isum = 0, msum = 0;
        for (int k = 0; k < 4; k++) {
            const uint8_t *q = w[b].qs + 32 * k;
            const int8_t *a = x[b].qs + 64 * k;
            int32_t s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 15) * a[l];
                s1 += (q[l] >> 4) * a[32 + l];
            }
            isum += sc[2 * k] * s0 + sc[2 * k + 1] * s1;
        }
        for (int j = 0; j < 8; j++) msum += m[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        s += h2f(w[b].d) * x[b].d * (float)isum - h2f(w[b].dmin) * x[b].d * (float)msum;
    }
    return s;
}
