/* test_quant_x8.c — the 8-row interleaved layout: conversions are exact
 * inverses that put every byte where quant.h says, and the x8 kernels give
 * the exact integer dot products (checked in double) at the row kernels'
 * accuracy, the same bits for a row alone or in a batch, on random and
 * extreme blocks. */
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

static const ds4_qtype types[] = {DS4_Q_Q8_0, DS4_Q_Q4_0, DS4_Q_Q4_K};

static float *randv(ds4_rng *r, size_t n, float s) {
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = s * ds4_rng_normal(r);
    return v;
}

/* Random bytes (any bytes convert), to x8 and back; in place equals out of
 * place; a few bytes checked against the documented positions. */
static void test_layout(void **state) {
    (void)state;
    if (!ds4_q_x8_usable(DS4_Q_Q4_0, 8)) skip();
    ds4_rng r;
    ds4_rng_seed(&r, 41);
    for (int ti = 0; ti < 3; ti++) {
        const ds4_qtype t = types[ti];
        const int in = t == DS4_Q_Q4_K ? 768 : 96, rows = 24;
        const size_t rb = ds4_q_row_bytes(t, in), n = rb * rows, bb = ds4_q_block_bytes(t);
        uint8_t *a = malloc(n), *x8 = malloc(n), *back = malloc(n), *inpl = malloc(n);
        for (size_t i = 0; i < n; i++) a[i] = (uint8_t)(ds4_rng_u64(&r) >> 56);
        assert_int_equal(ds4_q_to_x8(t, a, x8, rows, in), 0);
        memcpy(inpl, a, n);
        assert_int_equal(ds4_q_to_x8(t, inpl, inpl, rows, in), 0);
        assert_memory_equal(inpl, x8, n);
        assert_int_equal(ds4_q_from_x8(t, x8, back, rows, in), 0);
        assert_memory_equal(back, a, n);
        assert_int_equal(ds4_q_from_x8(t, inpl, inpl, rows, in), 0);
        assert_memory_equal(inpl, a, n);
        const int nh = t == DS4_Q_Q4_K ? 2 : 1, g = 2, b = in / ds4_q_block_elems(t) - 1, row = 5;
        const uint8_t *blk = a + (size_t)(8 * g + row) * rb + (size_t)b * bb;       /* row layout */
        const uint8_t *unit = x8 + (size_t)g * 8 * rb + (size_t)b * 8 * bb;          /* x8 */
        for (int f = 0; f < nh; f++) assert_memory_equal(unit + 16 * f + 2 * row, blk + 2 * f, 2);
        for (int w = 0; w < (int)(bb - 2 * nh) / 4; w++)
            assert_memory_equal(unit + 16 * nh + 32 * w + 4 * row, blk + 2 * nh + 4 * w, 4);
        free(a); free(x8); free(back); free(inpl);
    }
}

/* y = x8 matmul against the exact integer dot products of the dequantized
 * operands, and against ds4_q_matmul (row layout); every row alone and the
 * decode matvec give the batch's bits. */
static void check(ds4_rng *r, ds4_qtype t, int n, int in, int out) {
    float *w = randv(r, (size_t)out * in, 0.05f), *x = randv(r, (size_t)n * in, 1.0f);
    for (int i = 0; i < n * in; i += 13) x[i] *= 8.0f;
    const size_t rb = ds4_q_row_bytes(t, in), xb = ds4_q_act_row_bytes(t, in);
    void *wq = malloc(rb * out), *w8 = malloc(rb * out), *xq = malloc(xb * n);
    float *wd = malloc(sizeof(float) * out * in), *xd = malloc(sizeof(float) * in);
    float *y = malloc(sizeof(float) * n * out), *yrow = malloc(sizeof(float) * n * out), *y1 = malloc(sizeof(float) * out);
    assert_int_equal(ds4_q_quantize(t, w, wq, out, in), 0);
    assert_int_equal(ds4_q_dequantize(t, wq, wd, out, in), 0);
    assert_int_equal(ds4_q_to_x8(t, wq, w8, out, in), 0);
    assert_int_equal(ds4_q_matmul_x8(t, y, x, w8, n, in, out), 0);
    assert_int_equal(ds4_q_matmul(t, yrow, x, wq, n, in, out), 0);
    assert_int_equal(ds4_q_quantize_act(t, x, xq, n, in), 0);
    for (int i = 0; i < n; i++) {
        const void *xr = (const char *)xq + (size_t)i * xb;
        if (t == DS4_Q_Q4_K) ds4_dequantize_row_q8_K(xr, xd, in);
        else ds4_dequantize_row_q8_0(xr, xd, in);
        for (int o = 0; o < out; o++) {
            double exact = 0, mag = 0;
            for (int k = 0; k < in; k++) {
                exact += (double)wd[(size_t)o * in + k] * xd[k];
                mag += fabs((double)wd[(size_t)o * in + k] * xd[k]);
            }
            const float got = y[(size_t)i * out + o], row = yrow[(size_t)i * out + o];
            const double tol = 1e-5 * mag + 1e-6;
            if (!(fabs(got - exact) <= tol) || !(fabs(got - row) <= 2 * tol))
                fail_msg("%s n=%d in=%d out=%d y[%d,%d]: x8 %.8g row layout %.8g exact %.8g", ds4_q_type_name(t), n,
                         in, out, i, o, got, row, exact);
        }
        assert_int_equal(ds4_q_matmul_x8(t, y1, x + (size_t)i * in, w8, 1, in, out), 0);
        assert_memory_equal(y1, y + (size_t)i * out, sizeof(float) * out);
        ds4_q_matvec_rows_x8(t, y1, xr, NULL, w8, in, out);
        assert_memory_equal(y1, y + (size_t)i * out, sizeof(float) * out);
        int32_t sx[2 * 4096 / 32];
        ds4_q_act_aux_x8(xr, in, sx);
        ds4_q_matvec_rows_x8(t, y1, xr, t == DS4_Q_Q4_0 ? sx : NULL, w8, in, out);
        assert_memory_equal(y1, y + (size_t)i * out, sizeof(float) * out);
    }
    free(w); free(x); free(wq); free(w8); free(xq); free(wd); free(xd); free(y); free(yrow); free(y1);
}

static void test_kernels(void **state) {
    (void)state;
    if (!ds4_q_x8_usable(DS4_Q_Q4_0, 8)) skip();
    ds4_rng r;
    ds4_rng_seed(&r, 42);
    static const int sh32[][3] = {{1, 32, 8}, {3, 96, 16}, {5, 288, 40}, {4, 1024, 64}, {9, 160, 24}, {1, 2048, 200}};
    static const int sh256[][3] = {{1, 256, 8}, {3, 512, 16}, {6, 768, 40}, {2, 4096, 24}, {1, 1024, 96}};
    for (size_t s = 0; s < sizeof(sh32) / sizeof(sh32[0]); s++) {
        check(&r, DS4_Q_Q8_0, sh32[s][0], sh32[s][1], sh32[s][2]);
        check(&r, DS4_Q_Q4_0, sh32[s][0], sh32[s][1], sh32[s][2]);
    }
    for (size_t s = 0; s < sizeof(sh256) / sizeof(sh256[0]); s++) check(&r, DS4_Q_Q4_K, sh256[s][0], sh256[s][1], sh256[s][2]);
}

/* The extreme blocks of the row kernels' test, in all 8 rows of a group:
 * q8_0 -128 x +-127, q4_0 nibbles 0 and 15, q4_K scales and mins 63, nibbles
 * 15, activations -128..127. The sums must come out exactly. */
static void test_extremes(void **state) {
    (void)state;
    if (!ds4_q_x8_usable(DS4_Q_Q4_0, 8)) skip();
    enum { N = 512 };
    ds4_block_q8_0 w8[8][N / 32], x8[N / 32];
    ds4_block_q4_0 w4[8][N / 32];
    ds4_block_q4_K wk[8][N / 256];
    ds4_block_q8_K xk[N / 256];
    for (int b = 0; b < N / 32; b++) {
        x8[b].d = 0x3c00;
        for (int i = 0; i < 32; i++) x8[b].qs[i] = (int8_t)(i % 3 ? 127 : -127);
        for (int k = 0; k < 8; k++) {
            w8[k][b].d = w4[k][b].d = 0x3c00;
            for (int i = 0; i < 32; i++) w8[k][b].qs[i] = -128;
            memset(w4[k][b].qs, (b + k) % 2 ? 0x00 : 0xff, 16);
        }
    }
    for (int b = 0; b < N / 256; b++) {
        uint8_t sc[8], m[8];
        memset(sc, 63, 8); memset(m, 63, 8);
        for (int k = 0; k < 8; k++) {
            wk[k][b].d = wk[k][b].dmin = 0x3c00;
            ds4_q4_K_set_scales(wk[k][b].scales, sc, m);
            memset(wk[k][b].qs, 0xff, 128);
        }
        xk[b].d = 1.0f;
        for (int i = 0; i < 256; i++) xk[b].qs[i] = (int8_t)(i % 3 ? 127 : -128);
        for (int k = 0; k < 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += xk[b].qs[16 * k + i];
            xk[b].bsums[k] = (int16_t)s;
        }
    }
    double want8 = 0, want4[2] = {0, 0}, wantk = 0;
    for (int b = 0; b < N / 32; b++)
        for (int i = 0; i < 32; i++) {
            want8 += -128.0 * x8[b].qs[i];
            for (int k = 0; k < 2; k++) want4[k] += ((b + k) % 2 ? -8.0 : 7.0) * x8[b].qs[i];
        }
    for (int b = 0; b < N / 256; b++)
        for (int i = 0; i < 256; i++) wantk += (63.0 * 15.0 - 63.0) * xk[b].qs[i];
    char p8[sizeof w8], p4[sizeof w4], pk[sizeof wk];
    float o[8];
    assert_int_equal(ds4_q_to_x8(DS4_Q_Q8_0, w8, p8, 8, N), 0);
    assert_int_equal(ds4_q_to_x8(DS4_Q_Q4_0, w4, p4, 8, N), 0);
    assert_int_equal(ds4_q_to_x8(DS4_Q_Q4_K, wk, pk, 8, N), 0);
    ds4_q_matvec_rows_x8(DS4_Q_Q8_0, o, x8, NULL, p8, N, 8);
    for (int k = 0; k < 8; k++) assert_float_equal(o[k], want8, 1e-6 * fabs(want8));
    ds4_q_matvec_rows_x8(DS4_Q_Q4_0, o, x8, NULL, p4, N, 8);
    for (int k = 0; k < 8; k++) assert_float_equal(o[k], want4[k % 2], 1e-6 * fabs(want4[k % 2]));
    ds4_q_matvec_rows_x8(DS4_Q_Q4_K, o, xk, NULL, pk, N, 8);
    for (int k = 0; k < 8; k++) assert_float_equal(o[k], wantk, 1e-6 * fabs(wantk));
}

static void test_errors(void **state) {
    (void)state;
    uint8_t w[16 * 34 * 8] = {0};
    float x[64] = {0}, y[16];
    assert_int_equal(ds4_q_x8_usable(DS4_Q_Q8_0, 12), 0);
    assert_int_equal(ds4_q_x8_usable(DS4_Q_F32, 8), 0);
    assert_int_equal(ds4_q_x8_usable(DS4_Q_Q8_0, 0), 0);
    assert_int_equal(ds4_q_to_x8(DS4_Q_Q8_0, w, w, 12, 32), -1);
    assert_non_null(strstr(ds4_error(), "12 rows"));
    assert_int_equal(ds4_q_matmul_x8(DS4_Q_Q4_0, y, x, w, 1, 32, 4), -1);
    assert_int_equal(ds4_q_matmul_x8(DS4_Q_F32, y, x, w, 1, 32, 8), -1);
    if (ds4_q_x8_usable(DS4_Q_Q8_0, 8)) {
        assert_int_equal(ds4_q_to_x8(DS4_Q_Q8_0, w, w, 8, 48), -1);   /* not whole blocks */
        assert_non_null(strstr(ds4_error(), "48"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
