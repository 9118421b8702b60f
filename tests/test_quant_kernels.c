/* test_quant_kernels.c — the int8 dot-product kernels and the matmul driver:
 * SIMD equals the scalar reference, both equal a double-precision dot of the
 * dequantized operands, and the quantized matmul stays within the bound that
 * activation quantization allows of an fp32 matmul on dequantized weights. */
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

static float *randv(ds4_rng *r, size_t n, float s) {
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = s * ds4_rng_normal(r);
    return v;
}

/* Dequantize activations of a weight type's activation format [n, in]. */
static void dequant_act(ds4_qtype t, const void *xq, float *x, int n, int in) {
    size_t rb = ds4_q_act_row_bytes(t, in);
    for (int r = 0; r < n; r++) {
        const void *src = (const char *)xq + r * rb;
        float *dst = x + (size_t)r * in;
        if (t == DS4_Q_F32) memcpy(dst, src, rb);
        else if (t == DS4_Q_Q4_K) ds4_dequantize_row_q8_K(src, dst, in);
        else ds4_dequantize_row_q8_0(src, dst, in);
    }
}

/* Activation block scales: the per-element bound on |x - dequant(quant(x))|
 * is half of them. */
static float act_scale(ds4_qtype t, const void *xq_row, int i) {
    if (t == DS4_Q_F32) return 0.0f;
    if (t == DS4_Q_Q4_K) return ((const ds4_block_q8_K *)xq_row)[i / 256].d;
    return ds4_fp16_to_fp32(((const ds4_block_q8_0 *)xq_row)[i / 32].d);
}

/* ---- vec_dot: SIMD vs scalar vs double on dequantized operands --------------------- */
static void test_vec_dot(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 31);
    static const ds4_qtype types[] = {DS4_Q_F32, DS4_Q_Q8_0, DS4_Q_Q4_0, DS4_Q_Q4_K};
    static const int lens[] = {256, 512, 1280, 4096};
    for (int ti = 0; ti < 4; ti++)
        for (int li = 0; li < 4; li++)
            for (int rep = 0; rep < 8; rep++) {
                ds4_qtype t = types[ti];
                int n = lens[li] + (t == DS4_Q_F32 ? rep : 0);   /* fp32: odd tails too */
                float *w = randv(&r, n, 0.05f * (1 + rep)), *x = randv(&r, n, 1.0f + rep);
                float *wd = malloc(sizeof(float) * n), *xd = malloc(sizeof(float) * n);
                void *wq = malloc(ds4_q_row_bytes(t, n)), *xq = malloc(ds4_q_act_row_bytes(t, n));
                assert_int_equal(ds4_q_quantize(t, w, wq, 1, n), 0);
                assert_int_equal(ds4_q_dequantize(t, wq, wd, 1, n), 0);
                assert_int_equal(ds4_q_quantize_act(t, x, xq, 1, n), 0);
                dequant_act(t, xq, xd, 1, n);
                double want = 0.0, mag = 0.0;
                for (int i = 0; i < n; i++) { want += (double)wd[i] * xd[i]; mag += fabs((double)wd[i] * xd[i]); }
                float simd = ds4_q_vec_dot(t, n, wq, xq), ref = ds4_q_vec_dot_ref(t, n, wq, xq);
                double tol = 1e-5 * mag + 1e-30;
                if (!(fabs(simd - want) <= tol) || !(fabs(ref - want) <= tol))
                    fail_msg("%s n=%d: simd %.8g ref %.8g double %.8g (tol %.3g)", ds4_q_type_name(t), n,
                             simd, ref, want, tol);
                free(w); free(x); free(wd); free(xd); free(wq); free(xq);
            }
}

/* Weights a file may hold but our quantizer never writes: Q8_0 q = -128, and
 * every weight and activation at the extremes (no int16 saturation). */
static void test_vec_dot_extremes(void **state) {
    (void)state;
    enum { N = 512 };
    ds4_block_q8_0 w8[N / 32], x8[N / 32];
    ds4_block_q4_0 w4[N / 32];
    ds4_block_q4_K wk[N / 256];
    ds4_block_q8_K xk[N / 256];
    for (int b = 0; b < N / 32; b++) {
        w8[b].d = x8[b].d = w4[b].d = 0x3c00;     /* 1.0 */
        for (int i = 0; i < 32; i++) {
            w8[b].qs[i] = -128;
            x8[b].qs[i] = (int8_t)(i % 3 ? 127 : -127);
        }
        memset(w4[b].qs, b % 2 ? 0x00 : 0xff, 16); /* q - 8 = -8 or 7 */
    }
    for (int b = 0; b < N / 256; b++) {
        uint8_t sc[8], m[8];
        memset(sc, 63, 8); memset(m, 63, 8);
        wk[b].d = wk[b].dmin = 0x3c00;
        ds4_q4_K_set_scales(wk[b].scales, sc, m);
        memset(wk[b].qs, 0xff, 128);
        xk[b].d = 1.0f;
        for (int i = 0; i < 256; i++) xk[b].qs[i] = (int8_t)(i % 3 ? 127 : -128);
        for (int k = 0; k < 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += xk[b].qs[16 * k + i];
            xk[b].bsums[k] = (int16_t)s;
        }
    }
    double want8 = 0, want4 = 0, wantk = 0;
    for (int b = 0; b < N / 32; b++)
        for (int i = 0; i < 32; i++) {
            want8 += -128.0 * x8[b].qs[i];
            want4 += (b % 2 ? -8.0 : 7.0) * x8[b].qs[i];
        }
    for (int b = 0; b < N / 256; b++)
        for (int i = 0; i < 256; i++) wantk += (63.0 * 15.0 - 63.0) * xk[b].qs[i];
    struct { const char *name; float got, want; } c[] = {
        {"q8_0 simd", ds4_q_vec_dot(DS4_Q_Q8_0, N, w8, x8), (float)want8},
        {"q8_0 ref", ds4_q_vec_dot_ref(DS4_Q_Q8_0, N, w8, x8), (float)want8},
        {"q4_0 simd", ds4_q_vec_dot(DS4_Q_Q4_0, N, w4, x8), (float)want4},
        {"q4_0 ref", ds4_q_vec_dot_ref(DS4_Q_Q4_0, N, w4, x8), (float)want4},
        {"q4_K simd", ds4_q_vec_dot(DS4_Q_Q4_K, N, wk, xk), (float)wantk},
        {"q4_K ref", ds4_q_vec_dot_ref(DS4_Q_Q4_K, N, wk, xk), (float)wantk},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
        if (!(fabsf(c[i].got - c[i].want) <= 1e-6f * fabsf(c[i].want)) || c[i].want == 0.0f)
            fail_msg("%s extremes: %.9g, want %.9g", c[i].name, c[i].got, c[i].want);
}

/* Every kernel tile shape (nw weight rows x nx activation rows) gives exactly
 * the 1 x 1 results: a row's output must not depend on its batch. */
static void test_tiles(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 32);
    static const int shapes[][2] = {{1, 1}, {1, 2}, {1, 3}, {1, 4}, {2, 1}, {2, 2}, {3, 1}, {4, 1}};
    for (int t = 0; t < DS4_Q_COUNT; t++) {
        /* 33 blocks for Q8_0 / Q4_0: the Q4_0 kernel's odd last block too */
        int n = t == DS4_Q_F32 ? 1000 : t == DS4_Q_Q4_K ? 1024 : 1056;
        size_t xb = ds4_q_act_row_bytes((ds4_qtype)t, n), wb = ds4_q_row_bytes((ds4_qtype)t, n);
        float *w = randv(&r, 4 * (size_t)n, 0.1f), *x = randv(&r, 4 * (size_t)n, 1.0f);
        void *wq = malloc(4 * wb), *xq = malloc(4 * xb);
        assert_int_equal(ds4_q_quantize((ds4_qtype)t, w, wq, 4, n), 0);
        assert_int_equal(ds4_q_quantize_act((ds4_qtype)t, x, xq, 4, n), 0);
        for (int simd = 0; simd <= 1; simd++) {
            ds4_q_dot_fn dot = ds4_q_dot_kernel((ds4_qtype)t, simd);
            for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
                int nw = shapes[s][0], nx = shapes[s][1];
                float out[4 * 5] = {0}, one;
                dot(n, wq, wb, nw, xq, xb, nx, out, 5);
                for (int k = 0; k < nw; k++)
                    for (int i = 0; i < nx; i++) {
                        dot(n, (const char *)wq + k * wb, wb, 1, (const char *)xq + i * xb, xb, 1, &one, 1);
                        if (out[i * 5 + k] != one)
                            fail_msg("%s simd=%d tile %dx%d w%d x%d: %.9g vs %.9g", ds4_q_type_name((ds4_qtype)t),
                                     simd, nw, nx, k, i, out[i * 5 + k], one);
                    }
            }
        }
        free(w); free(x); free(wq); free(xq);
    }
}

/* The AVX2 activation quantizers write the same bytes as the scalar ones. */
static void test_act_quant_simd(void **state) {
    (void)state;
#ifdef __AVX2__
    ds4_rng r;
    ds4_rng_seed(&r, 34);
    enum { N = 2048 };
    float x[N];
    for (int rep = 0; rep < 20; rep++) {
        float scale = ldexpf(1.0f, (int)(ds4_rng_u64(&r) % 40) - 30);
        for (int i = 0; i < N; i++) x[i] = scale * ds4_rng_normal(&r);
        for (int i = 0; i < 32; i++) x[i] = 0.0f;                     /* an all-zero block */
        for (int i = 32; i < 64; i++) x[i] = (float)(i - 48) * 0.5f;  /* ties at x / d = k + 1/2 */
        x[100] = -x[100] * 1000.0f;                                  /* an outlier */
        ds4_block_q8_0 a[N / 32], b[N / 32];
        ds4_block_q8_K c[N / 256], d[N / 256];
        ds4_quantize_row_q8_0(x, a, N);
        ds4_quantize_row_q8_0_avx2(x, b, N);
        assert_memory_equal(a, b, sizeof(a));
        ds4_quantize_row_q8_K(x, c, N);
        ds4_quantize_row_q8_K_avx2(x, d, N);
        assert_memory_equal(c, d, sizeof(c));
    }
#else
    skip();
#endif
}

/* ---- matmul on random shapes ----------------------------------------------------------- */
static void check_matmul(ds4_rng *r, ds4_qtype t, int n, int in, int out) {
    float *w = randv(r, (size_t)out * in, 0.05f), *x = randv(r, (size_t)n * in, 1.0f);
    for (int i = 0; i < n * in; i += 17) x[i] *= 8.0f;   /* some activation outliers */
    float *wd = malloc(sizeof(float) * out * in), *xd = malloc(sizeof(float) * n * in);
    float *y = malloc(sizeof(float) * n * out), *yr = malloc(sizeof(float) * n * out);
    float *yq = malloc(sizeof(float) * n * out);
    size_t xb = ds4_q_act_row_bytes(t, in);
    void *wq = malloc(ds4_q_row_bytes(t, in) * out), *xq = malloc(xb * n);
    assert_int_equal(ds4_q_quantize(t, w, wq, out, in), 0);
    assert_int_equal(ds4_q_dequantize(t, wq, wd, out, in), 0);
    assert_int_equal(ds4_q_matmul(t, y, x, wq, n, in, out), 0);
    assert_int_equal(ds4_q_matmul_ref(t, yr, x, wq, n, in, out), 0);
    assert_int_equal(ds4_q_quantize_act(t, x, xq, n, in), 0);
    assert_int_equal(ds4_q_matmul_q(t, yq, xq, wq, n, in, out), 0);
    dequant_act(t, xq, xd, n, in);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            const float *wr = wd + (size_t)o * in;
            double exact = 0, fp32 = 0, mag = 0, abound = 0;
            for (int k = 0; k < in; k++) {
                exact += (double)wr[k] * xd[(size_t)i * in + k];    /* what the int8 sums compute */
                fp32 += (double)wr[k] * x[(size_t)i * in + k];      /* fp32 matmul, dequantized w */
                mag += fabs((double)wr[k] * xd[(size_t)i * in + k]);
                abound += 0.5 * act_scale(t, (const char *)xq + i * xb, k) * fabs(wr[k]);
            }
            float got = y[(size_t)i * out + o];
            double tol = 1e-5 * mag + 1e-6;
            if (!(fabs(got - exact) <= tol) || !(fabs(yr[(size_t)i * out + o] - exact) <= tol))
                fail_msg("%s n=%d in=%d out=%d y[%d,%d]: simd %.8g ref %.8g exact %.8g", ds4_q_type_name(t),
                         n, in, out, i, o, got, yr[(size_t)i * out + o], exact);
            if (!(fabs(got - fp32) <= abound * 1.0001 + tol))
                fail_msg("%s y[%d,%d]: %.8g vs fp32 %.8g beyond the activation bound %.3g", ds4_q_type_name(t),
                         i, o, got, fp32, abound);
            assert_true(yq[(size_t)i * out + o] == got);
        }
    /* one row at a time gives the same bits as the batch */
    for (int i = 0; i < n; i++) {
        assert_int_equal(ds4_q_matmul(t, yr, x + (size_t)i * in, wq, 1, in, out), 0);
        for (int o = 0; o < out; o++)
            if (yr[o] != y[(size_t)i * out + o])
                fail_msg("%s n=%d: row %d alone gives y[%d] = %.9g, in the batch %.9g", ds4_q_type_name(t), n, i, o,
                         yr[o], y[(size_t)i * out + o]);
    }
    free(w); free(x); free(wd); free(xd); free(y); free(yr); free(yq); free(wq); free(xq);
}

static void test_matmul_shapes(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 33);
    static const int sh32[][3] = {{1, 32, 1}, {3, 96, 17}, {5, 288, 33}, {8, 1024, 40},
                                  {13, 160, 100}, {2, 4096, 70}, {1, 2048, 300}};
    static const int sh256[][3] = {{1, 256, 1}, {3, 512, 17}, {6, 768, 33}, {9, 256, 100},
                                   {2, 4096, 70}, {1, 2048, 300}};
    static const int shf[][3] = {{1, 7, 3}, {5, 37, 19}, {4, 100, 65}, {2, 1000, 200}};
    for (size_t s = 0; s < sizeof(sh32) / sizeof(sh32[0]); s++) {
        check_matmul(&r, DS4_Q_Q8_0, sh32[s][0], sh32[s][1], sh32[s][2]);
        check_matmul(&r, DS4_Q_Q4_0, sh32[s][0], sh32[s][1], sh32[s][2]);
    }
    for (size_t s = 0; s < sizeof(sh256) / sizeof(sh256[0]); s++)
        check_matmul(&r, DS4_Q_Q4_K, sh256[s][0], sh256[s][1], sh256[s][2]);
    for (size_t s = 0; s < sizeof(shf) / sizeof(shf[0]); s++)
        check_matmul(&r, DS4_Q_F32, shf[s][0], shf[s][1], shf[s][2]);
}

static void test_matmul_errors(void **state) {
    (void)state;
    float x[2 * 288] = {0}, y[8];
    uint8_t w[4096] = {0};
    assert_int_equal(ds4_q_matmul(DS4_Q_Q8_0, y, x, w, 1, 48, 2), -1);
    assert_non_null(strstr(ds4_error(), "48"));
    assert_non_null(strstr(ds4_error(), "multiple of 32"));
    assert_int_equal(ds4_q_matmul(DS4_Q_Q4_0, y, x, w, 1, 100, 2), -1);
    assert_int_equal(ds4_q_matmul(DS4_Q_Q4_K, y, x, w, 1, 288, 2), -1);
    assert_non_null(strstr(ds4_error(), "multiple of 256"));
    assert_int_equal(ds4_q_matmul(DS4_Q_Q4_K, y, x, w, 2, 0, 2), -1);
    assert_int_equal(ds4_q_matmul((ds4_qtype)7, y, x, w, 1, 32, 2), -1);
    assert_int_equal(ds4_q_matmul(DS4_Q_F32, y, x, w, 1, 33, 2), 0);
    assert_int_equal(ds4_q_matmul(DS4_Q_Q8_0, y, x, w, 0, 64, 2), 0);   /* n = 0: nothing to do */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_vec_dot_extremes),
        cmocka_unit_test(test_tiles),
        cmocka_unit_test(test_act_quant_simd),
        cmocka_unit_test(test_matmul_shapes),
        cmocka_unit_test(test_matmul_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
