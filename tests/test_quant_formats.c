/* test_quant_formats.c — the Q8_0 / Q4_0 / Q4_K block formats: sizes,
 * hand-checked bytes for one block of each type, exact round trips for values
 * on the grid, and per-element error bounds derived from each format. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "quant/quant.h"
#include "util/util.h"

static void check_bytes(const char *what, const uint8_t *got, const uint8_t *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) fail_msg("%s: byte %zu is 0x%02x, want 0x%02x", what, i, got[i], want[i]);
}

/* ---- sizes and the type table ------------------------------------------------- */
static void test_sizes(void **state) {
    (void)state;
    assert_int_equal(sizeof(ds4_block_q8_0), 34);
    assert_int_equal(sizeof(ds4_block_q4_0), 18);
    assert_int_equal(sizeof(ds4_block_q4_K), 144);
    assert_int_equal(offsetof(ds4_block_q4_K, scales), 4);
    assert_int_equal(offsetof(ds4_block_q4_K, qs), 16);
    assert_int_equal(ds4_q_row_bytes(DS4_Q_F32, 10), 40);
    assert_int_equal(ds4_q_row_bytes(DS4_Q_Q8_0, 64), 68);
    assert_int_equal(ds4_q_row_bytes(DS4_Q_Q4_0, 64), 36);
    assert_int_equal(ds4_q_row_bytes(DS4_Q_Q4_K, 512), 288);
    assert_int_equal(ds4_q_row_bytes(DS4_Q_Q8_0, 48), 0);
    assert_non_null(strstr(ds4_error(), "multiple of 32"));
    assert_int_equal(ds4_q_row_bytes(DS4_Q_Q4_K, 288), 0);
    assert_non_null(strstr(ds4_error(), "multiple of 256"));
    assert_int_equal(ds4_q_row_bytes((ds4_qtype)9, 32), 0);
    assert_int_equal(ds4_q_ggml_type(DS4_Q_Q8_0), 8);
    assert_int_equal(ds4_q_ggml_type(DS4_Q_Q4_0), 2);
    assert_int_equal(ds4_q_ggml_type(DS4_Q_Q4_K), 12);
    for (int t = 0; t < DS4_Q_COUNT; t++)
        assert_int_equal(ds4_q_type_from_name(ds4_q_type_name((ds4_qtype)t)), t);
    assert_int_equal(ds4_q_type_from_name("Q4_K"), DS4_Q_Q4_K);
    assert_int_equal(ds4_q_type_from_name("q4"), -1);
}

/* ---- hand-checked layouts ----------------------------------------------------------- */
static void test_layout_q8_0(void **state) {
    (void)state;
    float x[32];
    x[0] = 31.75f;                                 /* amax: d = 31.75 / 127 = 0.25 */
    for (int i = 1; i < 32; i++) x[i] = (float)(i - 16) * 0.25f;
    static const uint8_t want[34] = {
        0x00, 0x34,                                /* fp16 0.25 */
        0x7f, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f};
    ds4_block_q8_0 b;
    assert_int_equal(ds4_q_quantize(DS4_Q_Q8_0, x, &b, 1, 32), 0);
    check_bytes("q8_0 block", (const uint8_t *)&b, want, 34);
    float y[32];
    ds4_dequantize_row_q8_0((const ds4_block_q8_0 *)want, y, 32);
    for (int i = 0; i < 32; i++) assert_true(y[i] == x[i]);
}

static void test_layout_q4_0(void **state) {
    (void)state;
    float x[32];
    for (int j = 0; j < 16; j++) { x[j] = (float)(j - 8); x[16 + j] = (float)(7 - j); }
    /* max magnitude is x[0] = -8, so d = -8 / -8 = 1 and q = x + 8:
     * byte j = q[j] | q[j+16] << 4 = j | (15 - j) << 4 */
    static const uint8_t want[18] = {
        0x00, 0x3c,                                /* fp16 1.0 */
        0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f};
    ds4_block_q4_0 b;
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_0, x, &b, 1, 32), 0);
    check_bytes("q4_0 block", (const uint8_t *)&b, want, 18);
    float y[32];
    ds4_dequantize_row_q4_0(&b, y, 32);
    for (int i = 0; i < 32; i++) assert_true(y[i] == x[i]);
    /* negated input: max magnitude +8 gives d = -1 and the same nibbles */
    for (int i = 0; i < 32; i++) x[i] = -x[i];
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_0, x, &b, 1, 32), 0);
    assert_int_equal(b.d, 0xbc00);
    check_bytes("q4_0 negated nibbles", b.qs, want + 2, 16);
}

static void test_layout_q4_K(void **state) {
    (void)state;
    /* d = 1/64, dmin = 1/32; the largest scale and min are 63 so the
     * quantizer's super-scales come out exactly these. */
    static const uint8_t sc[8] = {63, 1, 17, 32, 5, 48, 10, 63};
    static const uint8_t m[8] = {0, 63, 12, 3, 40, 16, 63, 7};
    /* Packed by hand from the layout rule:
     * bytes 0-3: sc[j] | (sc[j+4] >> 4) << 6 ; sc[4..7] >> 4 = 0, 3, 0, 3
     * bytes 4-7: m[j] | (m[j+4] >> 4) << 6   ; m[4..7] >> 4 = 2, 1, 3, 0
     * bytes 8-11: (sc[j+4] & 15) | (m[j+4] & 15) << 4 */
    static const uint8_t want_scales[12] = {0x3f, 0xc1, 0x11, 0xe0, 0x80, 0x7f,
                                            0xcc, 0x03, 0x85, 0x00, 0xfa, 0x7f};
    uint8_t packed[12], sc2[8], m2[8];
    ds4_q4_K_set_scales(packed, sc, m);
    check_bytes("q4_K scales", packed, want_scales, 12);
    ds4_q4_K_get_scales(want_scales, sc2, m2);
    assert_memory_equal(sc2, sc, 8);
    assert_memory_equal(m2, m, 8);

    /* element l of sub-block j has q = (l + 3j) % 16: every sub-block uses
     * q = 0 and 15, so the min/max of the data pin the grid exactly. */
    float x[256];
    uint8_t want[144];
    want[0] = 0x00; want[1] = 0x24;               /* fp16 1/64 */
    want[2] = 0x00; want[3] = 0x28;               /* fp16 1/32 */
    memcpy(want + 4, want_scales, 12);
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
            int q = (l + 3 * j) % 16;
            x[32 * j + l] = (float)sc[j] / 64.0f * (float)q - (float)m[j] / 32.0f;
            uint8_t *byte = want + 16 + 32 * (j / 2) + l;
            if (j % 2 == 0) *byte = (uint8_t)q; else *byte |= (uint8_t)(q << 4);
        }
    ds4_block_q4_K b;
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_K, x, &b, 1, 256), 0);
    check_bytes("q4_K block", (const uint8_t *)&b, want, 144);

    /* dequantize the hand-made bytes: element 32 is sub-block 1, q = 3:
     * 1/64 * 1 * 3 - 63/32; element 128 is sub-block 4, q = 12 (low nibble of
     * qs[64]): 5/64 * 12 - 40/32; element 255 is sub-block 7, q = 4 (high
     * nibble of qs[127]): 63/64 * 4 - 7/32. */
    float y[256];
    ds4_dequantize_row_q4_K((const ds4_block_q4_K *)want, y, 256);
    assert_true(y[32] == -1.921875f);
    assert_true(y[128] == -0.3125f);
    assert_true(y[255] == 3.71875f);
    for (int i = 0; i < 256; i++)
        if (y[i] != x[i]) fail_msg("q4_K dequant[%d] = %g, want %g", i, y[i], x[i]);
}

/* ---- exact round trips for values on the grid ---------------------------------------- */
static float fp16_random_scale(ds4_rng *r) {
    /* an fp16 value in [2^-10, 2^2) */
    float v = ldexpf(1.0f + ds4_rng_uniform(r), (int)(ds4_rng_u64(r) % 12) - 10);
    return ds4_fp16_to_fp32(ds4_fp32_to_fp16(v));
}

static void test_grid_round_trip(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 7);
    enum { NB = 64 };
    float x[NB * 32], y[NB * 32];
    uint8_t buf[NB * 34], buf2[NB * 34];
    /* Q8_0: q in -127..127 with one |q| = 127 per block */
    for (int b = 0; b < NB; b++) {
        float d = fp16_random_scale(&r);
        for (int i = 0; i < 32; i++) x[32 * b + i] = d * (float)((int)(ds4_rng_u64(&r) % 255) - 127);
        x[32 * b + (int)(ds4_rng_u64(&r) % 32)] = (b & 1 ? -127.0f : 127.0f) * d;
    }
    assert_int_equal(ds4_q_quantize(DS4_Q_Q8_0, x, buf, 1, NB * 32), 0);
    ds4_dequantize_row_q8_0((const ds4_block_q8_0 *)buf, y, NB * 32);
    assert_memory_equal(x, y, sizeof(x));
    assert_int_equal(ds4_q_quantize(DS4_Q_Q8_0, y, buf2, 1, NB * 32), 0);
    assert_memory_equal(buf, buf2, ds4_q_row_bytes(DS4_Q_Q8_0, NB * 32));
    /* Q4_0: q - 8 in -8..7 with one -8 per block, d of either sign */
    for (int b = 0; b < NB; b++) {
        float d = fp16_random_scale(&r) * (b & 1 ? -1.0f : 1.0f);
        for (int i = 0; i < 32; i++) x[32 * b + i] = d * (float)((int)(ds4_rng_u64(&r) % 16) - 8);
        x[32 * b + (int)(ds4_rng_u64(&r) % 32)] = -8.0f * d;
    }
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_0, x, buf, 1, NB * 32), 0);
    ds4_dequantize_row_q4_0((const ds4_block_q4_0 *)buf, y, NB * 32);
    assert_memory_equal(x, y, sizeof(x));
    /* Q4_K: random super-scales, random sc/m with a 63 in each, every
     * sub-block touching q = 0 and q = 15 */
    for (int b = 0; b < NB * 32 / 256; b++) {
        ds4_block_q4_K blk;
        uint8_t sc[8], m[8];
        /* d and dmin within a factor 8 of each other, so that s * q - o is
         * exact in fp32 and the data really lie on the grid */
        int e = (int)(ds4_rng_u64(&r) % 12) - 16, e2 = e + (int)(ds4_rng_u64(&r) % 5) - 2;
        blk.d = ds4_fp32_to_fp16(ldexpf(1.0f + ds4_rng_uniform(&r), e));
        blk.dmin = ds4_fp32_to_fp16(ldexpf(1.0f + ds4_rng_uniform(&r), e2));
        for (int j = 0; j < 8; j++) { sc[j] = (uint8_t)(1 + ds4_rng_u64(&r) % 63); m[j] = (uint8_t)(ds4_rng_u64(&r) % 64); }
        sc[ds4_rng_u64(&r) % 8] = 63;
        m[ds4_rng_u64(&r) % 8] = 63;
        ds4_q4_K_set_scales(blk.scales, sc, m);
        for (int i = 0; i < 128; i++) blk.qs[i] = (uint8_t)(ds4_rng_u64(&r) & 0xff);
        for (int k = 0; k < 4; k++) { blk.qs[32 * k] = 0xf0; blk.qs[32 * k + 1] = 0x0f; }
        ds4_dequantize_row_q4_K(&blk, x + 256 * b, 256);
    }
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_K, x, buf, 1, NB * 32), 0);
    ds4_dequantize_row_q4_K((const ds4_block_q4_K *)buf, y, NB * 32);
    for (int i = 0; i < NB * 32; i++)
        if (x[i] != y[i]) fail_msg("q4_K grid round trip [%d]: %.9g -> %.9g", i, x[i], y[i]);
}

/* ---- error bounds on random data ---------------------------------------------------------
 * Each row is a different distribution; bounds come from the format alone. */
enum { ROWS = 10, COLS = 1024 };

static void fill_rows(float *x, ds4_rng *r) {
    for (int row = 0; row < ROWS; row++)
        for (int i = 0; i < COLS; i++) {
            float g = ds4_rng_normal(r), u = ds4_rng_uniform(r), v;
            switch (row) {
            case 0: v = g; break;                                  /* N(0,1) */
            case 1: v = 0.02f * g; break;                          /* small weights */
            case 2: v = 2.0f * u - 1.0f; break;                    /* uniform */
            case 3: v = (i % 37 == 0) ? 20.0f * g : g; break;      /* outliers */
            case 4: v = 0.5f + 1.5f * u; break;                    /* all positive */
            case 5: v = -0.5f - 1.5f * u; break;                   /* all negative */
            case 6: v = (i / 32) % 3 == 0 ? 0.0f : g; break;       /* zero blocks */
            case 7: v = 1e-6f * g; break;                          /* fp16-subnormal scales */
            case 8: v = (i / 32) % 2 ? 0.75f : -0.25f; break;      /* constant blocks */
            default: v = g * expf(4.0f * (u - 0.5f)); break;       /* heavy tails */
            }
            x[row * COLS + i] = v;
        }
}

static void test_bounds_q8_0(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 11);
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    void *q = malloc(ds4_q_row_bytes(DS4_Q_Q8_0, COLS) * ROWS);
    fill_rows(x, &r);
    assert_int_equal(ds4_q_quantize(DS4_Q_Q8_0, x, q, ROWS, COLS), 0);
    assert_int_equal(ds4_q_dequantize(DS4_Q_Q8_0, q, y, ROWS, COLS), 0);
    const ds4_block_q8_0 *b = q;
    for (int k = 0; k < ROWS * COLS / 32; k++) {
        float amax = 0.0f, d = ds4_fp16_to_fp32(b[k].d);
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * k + i]));
        /* d is amax/127 rounded up to fp16 (at most one fp16 step above) */
        assert_true(d * 127.0f >= amax);
        assert_true(d <= amax / 127.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
        for (int i = 0; i < 32; i++) {
            float e = fabsf(y[32 * k + i] - x[32 * k + i]);
            if (!(e <= d * 0.5001f + 1e-7f * fabsf(x[32 * k + i])))
                fail_msg("q8_0 block %d elem %d: error %g > d/2 = %g", k, i, e, d / 2);
        }
    }
    free(x); free(y); free(q);
}

static void test_bounds_q4_0(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 12);
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    void *q = malloc(ds4_q_row_bytes(DS4_Q_Q4_0, COLS) * ROWS);
    fill_rows(x, &r);
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_0, x, q, ROWS, COLS), 0);
    assert_int_equal(ds4_q_dequantize(DS4_Q_Q4_0, q, y, ROWS, COLS), 0);
    const ds4_block_q4_0 *b = q;
    for (int k = 0; k < ROWS * COLS / 32; k++) {
        float amax = 0.0f, max = 0.0f, d = ds4_fp16_to_fp32(b[k].d), ad = fabsf(d);
        for (int i = 0; i < 32; i++)
            if (fabsf(x[32 * k + i]) > amax) { amax = fabsf(x[32 * k + i]); max = x[32 * k + i]; }
        /* |d| = amax/8 rounded up to fp16; sign so that max maps to q = 0 */
        assert_true(ad * 8.0f >= amax);
        assert_true(ad <= amax / 8.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
        assert_true(max == 0.0f || (d > 0.0f) == (max < 0.0f));
        for (int i = 0; i < 32; i++) {
            float xi = x[32 * k + i], e = fabsf(y[32 * k + i] - xi);
            /* grid d * (-8..7): inside it, half a step; beyond 7|d| (other
             * sign than max), the distance to the end point 7d */
            float t = d != 0.0f ? xi / d : 0.0f;
            float bound = t <= 7.5f ? ad * 0.5001f : ad * (t - 7.0f) * 1.0001f;
            if (!(e <= bound + 1e-7f * fabsf(xi)))
                fail_msg("q4_0 block %d elem %d: x %g error %g > bound %g (d %g)", k, i, xi, e, bound, d);
            assert_true(e <= ad * 1.001f + 1e-7f * fabsf(xi));
        }
    }
    free(x); free(y); free(q);
}

static void test_bounds_q4_K(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 13);
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    void *q = malloc(ds4_q_row_bytes(DS4_Q_Q4_K, COLS) * ROWS);
    fill_rows(x, &r);
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_K, x, q, ROWS, COLS), 0);
    assert_int_equal(ds4_q_dequantize(DS4_Q_Q4_K, q, y, ROWS, COLS), 0);
    const ds4_block_q4_K *b = q;
    for (int k = 0; k < ROWS * COLS / 256; k++) {
        float d = ds4_fp16_to_fp32(b[k].d), dmin = ds4_fp16_to_fp32(b[k].dmin);
        uint8_t sc[8], m[8];
        ds4_q4_K_get_scales(b[k].scales, sc, m);
        float lo[8], hi[8], max_o = 0.0f, max_span = 0.0f;
        for (int j = 0; j < 8; j++) {
            const float *xs = x + 256 * k + 32 * j;
            lo[j] = 0.0f; hi[j] = xs[0];
            for (int i = 0; i < 32; i++) { lo[j] = fminf(lo[j], xs[i]); hi[j] = fmaxf(hi[j], xs[i]); }
            max_o = fmaxf(max_o, -lo[j]);
            max_span = fmaxf(max_span, hi[j] - lo[j] + dmin);
        }
        /* super-scales no larger than the data needs (one fp16 step of slack) */
        assert_true(dmin <= max_o / 63.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
        assert_true(d <= max_span / 945.0f * (1.0f + 1.0f / 512.0f) + 6e-8f);
        for (int j = 0; j < 8; j++) {
            const float *xs = x + 256 * k + 32 * j, *ys = y + 256 * k + 32 * j;
            float s = d * sc[j], o = dmin * m[j];
            double sse = 0.0;
            for (int i = 0; i < 32; i++) {
                float e = fabsf(ys[i] - xs[i]);
                /* the nibble is the nearest grid point for the stored scales */
                float best = INFINITY;
                for (int qq = 0; qq < 16; qq++) best = fminf(best, fabsf(s * qq - o - xs[i]));
                if (!(e <= best + 1e-6f * (fabsf(xs[i]) + o + 15.0f * s)))
                    fail_msg("q4_K block %d sub %d elem %d: error %g, nearest grid point %g", k, j, i, e, best);
                sse += (double)e * e;
            }
            /* RMS error at most half the step of a grid spanning the data:
             * step <= (hi - min(0, lo) + dmin) / 15 + d */
            double rms = sqrt(sse / 32.0);
            double bound = ((hi[j] - lo[j] + dmin) / 15.0 + d) / 2.0;
            if (!(rms <= bound * 1.0001 + 1e-7 * (fabs(hi[j]) + fabs(lo[j]))))
                fail_msg("q4_K block %d sub %d: rms error %g > bound %g", k, j, rms, bound);
        }
    }
    free(x); free(y); free(q);
}

/* Relative RMS error on N(0,1) weights (measured: q8_0 0.0053, q4_0 0.0859,
 * q4_K 0.0703): Q4_K (4.5 bits) must beat Q4_0 (4.5 bits) and come close to
 * the best affine 16-level grid per 32 weights with unquantized scale and
 * offset (about 0.068, found by brute-force search). */
static double rel_rmse(ds4_qtype t, const float *x, int n) {
    void *q = malloc(ds4_q_row_bytes(t, n));
    float *y = malloc(sizeof(float) * n);
    assert_int_equal(ds4_q_quantize(t, x, q, 1, n), 0);
    assert_int_equal(ds4_q_dequantize(t, q, y, 1, n), 0);
    double se = 0.0, sx = 0.0;
    for (int i = 0; i < n; i++) { se += (double)(y[i] - x[i]) * (y[i] - x[i]); sx += (double)x[i] * x[i]; }
    free(q); free(y);
    return sqrt(se / sx);
}

static void test_quality(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 21);
    int n = 65536;
    float *x = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) x[i] = ds4_rng_normal(&r);
    double e8 = rel_rmse(DS4_Q_Q8_0, x, n), e4 = rel_rmse(DS4_Q_Q4_0, x, n), ek = rel_rmse(DS4_Q_Q4_K, x, n);
    print_message("relative rms error on N(0,1): q8_0 %.5f  q4_0 %.5f  q4_K %.5f\n", e8, e4, ek);
    assert_true(e8 < 0.006);
    assert_true(e4 < 0.09);
    assert_true(ek < 0.072);   /* a free fp32 scale and offset per 32 reach about 0.068 */
    assert_true(ek < e4);
    free(x);
}

static void test_nonfinite(void **state) {
    (void)state;
    float x[2 * 64];
    for (int i = 0; i < 128; i++) x[i] = 0.5f;
    x[64 + 37] = NAN;
    uint8_t buf[2 * 144];
    for (int t = DS4_Q_Q8_0; t <= DS4_Q_Q4_0; t++) {
        assert_int_equal(ds4_q_quantize((ds4_qtype)t, x, buf, 2, 64), -1);
        assert_non_null(strstr(ds4_error(), "row 1, column 37"));
    }
    float z[256] = {0};
    z[255] = INFINITY;
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_K, z, buf, 1, 256), -1);
    assert_non_null(strstr(ds4_error(), "column 255"));
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_K, z, buf, 1, 200), -1);
    z[255] = 1e7f;                                 /* d would overflow fp16 */
    assert_int_equal(ds4_q_quantize(DS4_Q_Q4_0, z, buf, 1, 256), -1);
    assert_non_null(strstr(ds4_error(), "out-of-range"));
    float fbuf[256];
    assert_int_equal(ds4_q_quantize(DS4_Q_F32, z, fbuf, 1, 256), 0);
    z[255] = 8.0e6f;                               /* fits Q8_0: d = 8e6 / 127 < 65504 */
    assert_int_equal(ds4_q_quantize(DS4_Q_Q8_0, z, buf, 1, 256), 0);
    float back[256];
    ds4_dequantize_row_q8_0((const ds4_block_q8_0 *)buf, back, 256);
    assert_true(fabsf(back[255] - 8.0e6f) <= 8.0e6f / 254.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_layout_q8_0),
        cmocka_unit_test(test_layout_q4_0),
        cmocka_unit_test(test_layout_q4_K),
        cmocka_unit_test(test_grid_round_trip),
        cmocka_unit_test(test_bounds_q8_0),
        cmocka_unit_test(test_bounds_q4_0),
        cmocka_unit_test(test_bounds_q4_K),
        cmocka_unit_test(test_quality),
        cmocka_unit_test(test_nonfinite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
