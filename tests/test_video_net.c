/* test_video_net.c — the tokenizer network against independent checks:
 * backward of the whole encoder -> FSQ -> decoder by central finite
 * differences on tiny nets (causal and not, smooth FSQ path), the straight-
 * through path equal to "smooth backward times FSQ STE", patchify/unpatchify
 * round trip against a naive index formula, chunked encode/decode equal to
 * one whole-clip forward, causality (later frames never change earlier codes). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

static ds4_vtok_config tiny_config(int causal, int palette) {
    ds4_vtok_config c;
    ds4_vtok_config_defaults(&c);
    c.patch = 2;
    c.tubelet = 2;
    c.width = 6;
    c.height = 4;
    c.n_levels = 3;
    c.levels[0] = 5; c.levels[1] = 4; c.levels[2] = 3;
    c.hidden = 6;
    c.ffn = 7;
    c.head = 5;
    c.enc_layers = 2;
    c.dec_layers = 2;
    c.causal = causal;
    c.palette = palette;
    return c;
}

static void fill_uniform(ds4_rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * ds4_rng_uniform(r);
}

/* Loss as a function of the parameter vector, in double for the differences. */
static double loss_at(ds4_vtok *m, ds4_vtok_ws *ws, const float *x, int S, int Tl, int Gh, int Gw,
                      int round) {
    return ds4_vtok_forward_backward(m, ws, x, S, Tl, Gh, Gw, NULL, NULL, NULL, 1.0f, round);
}

static void check_fd(int causal, int palette) {
    ds4_vtok_config c = tiny_config(causal, palette);
    ds4_vtok *m = ds4_vtok_new(&c, 7);
    assert_non_null(m);
    /* larger random weights than the init so every path carries signal, small
     * enough that float rounding and curvature keep eps = 1e-2 differences
     * within 1% (measured worst: 2e-3; 0.6 or eps 3e-2 fail on curvature) */
    ds4_rng r;
    ds4_rng_seed(&r, 11 + causal);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = 0.3f * ds4_rng_normal(&r);
    const int S = 2, Tl = 3, Gh = 2, Gw = 3;
    const size_t N = (size_t)S * Tl * Gh * Gw;
    ds4_vtok_ws *ws = ds4_vtok_ws_new(m, N);
    assert_non_null(ws);
    /* the range penalty is part of the objective: biases push two FSQ inputs
     * around +-2 so some tokens are beyond it */
    const ds4_vtok_tensor *pb = ds4_vtok_find(m, "video.encoder.proj.bias");
    m->params[pb->off] = 2.1f;
    m->params[pb->off + 1] = -2.2f;
    float *x = malloc(N * m->P * sizeof(float)), *g = calloc(m->n_params, sizeof(float));
    fill_uniform(&r, x, N * m->P, -1, 1);
    double l_nopen = loss_at(m, ws, x, S, Tl, Gh, Gw, 0);
    ds4_vtok_ws_options(ws, 1, 0.5f);
    assert_true(loss_at(m, ws, x, S, Tl, Gh, Gw, 0) > l_nopen + 1e-3);
    double l0 = ds4_vtok_forward_backward(m, ws, x, S, Tl, Gh, Gw, NULL, NULL, g, 1.0f, 0);
    assert_true(isfinite(l0));
    /* every coordinate of every tensor, central differences in float (eps 1e-2) */
    double worst = 0;
    size_t checked = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const ds4_vtok_tensor *t = &m->tensors[ti];
        for (size_t k = 0; k < t->numel; k++) {
            size_t i = t->off + k;
            float save = m->params[i];
            const float eps = 1e-2f;
            m->params[i] = save + eps;
            double lp = loss_at(m, ws, x, S, Tl, Gh, Gw, 0);
            m->params[i] = save - eps;
            double lm = loss_at(m, ws, x, S, Tl, Gh, Gw, 0);
            m->params[i] = save;
            double fd = (lp - lm) / (2 * eps);
            double err = fabs(fd - g[i]) / fmax(fabs(fd) + fabs(g[i]), 1e-3);
            if (err > worst) worst = err;
            if (err > 1e-2)
                print_error("%s[%zu]: analytic %.6g, finite difference %.6g\n", t->name, i - t->off,
                            (double)g[i], fd);
            assert_true(err <= 1e-2);
            checked++;
        }
    }
    assert_int_equal(checked, m->n_params);
    print_message("%zu coordinates, worst relative error %.2e\n", checked, worst);
    /* gradients accumulate and scale: a second call with loss_scale 2 triples them */
    float *g2 = malloc(m->n_params * sizeof(float));
    memcpy(g2, g, m->n_params * sizeof(float));
    ds4_vtok_forward_backward(m, ws, x, S, Tl, Gh, Gw, NULL, NULL, g2, 2.0f, 0);
    for (size_t i = 0; i < m->n_params; i += 7) assert_float_equal(g2[i], 3 * g[i], 1e-5 + 1e-4 * fabsf(g[i]));
    free(g2);
    free(x);
    free(g);
    ds4_vtok_ws_free(ws);
    ds4_vtok_free(m);
}

static void test_backward_fd_causal(void **state) { (void)state; check_fd(1, 1); }
static void test_backward_fd_noncausal(void **state) { (void)state; check_fd(0, 1); }
static void test_backward_fd_rgb(void **state) { (void)state; check_fd(1, 0); }

/* With rounding on, decoder gradients are exact (the decoder sees fixed q), and
 * the encoder receives dL/dq * STE: check both against finite differences of
 * the decoder weights and against a smooth-path run on the rounded q. */
static void test_straight_through_path(void **state) {
    (void)state;
    ds4_vtok_config c = tiny_config(1, 1);
    ds4_vtok *m = ds4_vtok_new(&c, 3);
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = 0.6f * ds4_rng_normal(&r);
    const int S = 1, Tl = 2, Gh = 2, Gw = 3;
    const size_t N = (size_t)S * Tl * Gh * Gw;
    ds4_vtok_ws *ws = ds4_vtok_ws_new(m, N);
    float *x = malloc(N * m->P * sizeof(float)), *g = calloc(m->n_params, sizeof(float));
    fill_uniform(&r, x, N * m->P, -1, 1);
    ds4_vtok_forward_backward(m, ws, x, S, Tl, Gh, Gw, NULL, NULL, g, 1.0f, 1);
    int checked = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const ds4_vtok_tensor *t = &m->tensors[ti];
        if (strncmp(t->name, "video.decoder.", 14) != 0) continue;
        for (int k = 0; k < 6; k++) {
            size_t i = t->off + ds4_rng_u64(&r) % t->numel;
            float save = m->params[i];
            const float eps = 1e-2f;
            m->params[i] = save + eps;
            double lp = loss_at(m, ws, x, S, Tl, Gh, Gw, 1);
            m->params[i] = save - eps;
            double lm = loss_at(m, ws, x, S, Tl, Gh, Gw, 1);
            m->params[i] = save;
            double fd = (lp - lm) / (2 * eps);
            assert_true(fabs(fd - g[i]) <= 2e-2 * fmax(fabs(fd) + fabs(g[i]), 1e-3));
            checked++;
        }
    }
    assert_true(checked >= 24);
    /* encoder weights: the rounded loss is flat almost everywhere, so its finite
     * difference is 0 while the STE gradient is not; a small bump of an encoder
     * weight leaves the loss (codes) unchanged. */
    const ds4_vtok_tensor *pw = ds4_vtok_find(m, "video.encoder.patch.weight");
    double l0 = loss_at(m, ws, x, S, Tl, Gh, Gw, 1), gsum = 0;
    for (size_t i = 0; i < pw->numel; i++) gsum += fabs(g[pw->off + i]);
    assert_true(gsum > 0);
    m->params[pw->off] += 1e-6f;
    assert_true(loss_at(m, ws, x, S, Tl, Gh, Gw, 1) == l0);
    free(x);
    free(g);
    ds4_vtok_ws_free(ws);
    ds4_vtok_free(m);
}

/* Naive neighbour of token (s, t, y, x) for offsets (dt, dy, dx): index or -1. */
static long nb(int S, int Tl, int Gh, int Gw, int s, int t, int y, int x, int dt, int dy, int dx) {
    (void)S;
    t += dt; y += dy; x += dx;
    if (t < 0 || t >= Tl || y < 0 || y >= Gh || x < 0 || x >= Gw) return -1;
    return (((long)s * Tl + t) * Gh + y) * Gw + x;
}

/* gather and dwconv against loops over explicit (dt, dy, dx) offsets; their
 * backward passes as exact adjoints (<A a, r> = <a, A^T r>) and naive sums. */
static void test_grid_ops(void **state) {
    (void)state;
    const int S = 2, Tl = 3, Gh = 3, Gw = 4, Ch = 5;
    const long N = (long)S * Tl * Gh * Gw;
    ds4_rng r;
    ds4_rng_seed(&r, 21);
    for (int causal = 0; causal < 2; causal++) {
        const int K = causal ? 18 : 27, dt_hi = causal ? 0 : 1;
        float *h = malloc(N * Ch * sizeof(float)), *col = malloc(N * K * Ch * sizeof(float));
        float *rr = malloc(N * K * Ch * sizeof(float)), *dh = calloc(N * Ch, sizeof(float));
        float *w = malloc(Ch * K * sizeof(float)), *b = malloc(Ch * sizeof(float));
        float *u = malloc(N * Ch * sizeof(float)), *ru = malloc(N * Ch * sizeof(float));
        float *dh2 = calloc(N * Ch, sizeof(float)), *dw = calloc(Ch * K, sizeof(float)), *db = calloc(Ch, sizeof(float));
        fill_uniform(&r, h, N * Ch, -1, 1);
        fill_uniform(&r, rr, N * K * Ch, -1, 1);
        fill_uniform(&r, w, Ch * K, -1, 1);
        fill_uniform(&r, b, Ch, -1, 1);
        fill_uniform(&r, ru, N * Ch, -1, 1);
        ds4_vtok_gather(h, col, S, Tl, Gh, Gw, Ch, K);
        ds4_vtok_gather_backward(rr, dh, S, Tl, Gh, Gw, Ch, K);
        assert_int_equal(ds4_vtok_dwconv(h, w, b, u, S, Tl, Gh, Gw, Ch, K), 0);
        assert_int_equal(ds4_vtok_dwconv_backward(ru, h, w, dh2, dw, db, S, Tl, Gh, Gw, Ch, K), 0);
        double lhs = 0, lhs2 = 0;
        double *dwn = calloc(Ch * K, sizeof(double));
        for (int s = 0; s < S; s++)
            for (int t = 0; t < Tl; t++)
                for (int y = 0; y < Gh; y++)
                    for (int x = 0; x < Gw; x++) {
                        long n = nb(S, Tl, Gh, Gw, s, t, y, x, 0, 0, 0);
                        int k = 0;
                        double uref[8] = {0};
                        for (int c = 0; c < Ch; c++) uref[c] = b[c];
                        for (int dt = -1; dt <= dt_hi; dt++)
                            for (int dy = -1; dy <= 1; dy++)
                                for (int dx = -1; dx <= 1; dx++, k++) {
                                    long m2 = nb(S, Tl, Gh, Gw, s, t, y, x, dt, dy, dx);
                                    for (int c = 0; c < Ch; c++) {
                                        float v = m2 < 0 ? 0.0f : h[m2 * Ch + c];
                                        assert_float_equal(col[(n * K + k) * Ch + c], v, 0);
                                        lhs += (double)v * rr[(n * K + k) * Ch + c];
                                        uref[c] += (double)w[c * K + k] * v;
                                        dwn[c * K + k] += (double)ru[n * Ch + c] * v;
                                    }
                                }
                        assert_int_equal(k, K);
                        for (int c = 0; c < Ch; c++) {
                            assert_float_equal(u[n * Ch + c], uref[c], 1e-5);
                            lhs2 += (uref[c] - b[c]) * ru[n * Ch + c];
                        }
                    }
        double rhs = 0, rhs2 = 0;
        for (long i = 0; i < N * Ch; i++) {
            rhs += (double)h[i] * dh[i];
            rhs2 += (double)h[i] * dh2[i];
        }
        assert_float_equal(lhs, rhs, 1e-4 * (1 + fabs(lhs)));
        assert_float_equal(lhs2, rhs2, 1e-4 * (1 + fabs(lhs2)));
        for (int i = 0; i < Ch * K; i++) assert_float_equal(dw[i], dwn[i], 1e-4);
        for (int c = 0; c < Ch; c++) {
            double sum = 0;
            for (long n = 0; n < N; n++) sum += ru[n * Ch + c];
            assert_float_equal(db[c], sum, 1e-4);
        }
        free(h); free(col); free(rr); free(dh); free(w); free(b); free(u); free(ru); free(dh2);
        free(dw); free(db); free(dwn);
    }
}

/* patchify against the naive index formula, unpatchify as its inverse. */
static void test_patchify(void **state) {
    (void)state;
    const int T = 7, H = 8, W = 12, tub = 2, p = 4, Tl = 4, Gh = 2, Gw = 3, P = tub * p * p * 3;
    uint8_t *rgb = malloc((size_t)T * H * W * 3), *back = malloc((size_t)Tl * tub * H * W * 3);
    for (size_t i = 0; i < (size_t)T * H * W * 3; i++) rgb[i] = (uint8_t)(i * 37 + 11);
    float *x = malloc((size_t)Tl * Gh * Gw * P * sizeof(float));
    for (int flip = 0; flip < 2; flip++) {
        ds4_vtok_patchify(rgb, T, H, W, tub, p, flip, x);
        for (int t = 0; t < Tl; t++)
            for (int gy = 0; gy < Gh; gy++)
                for (int gx = 0; gx < Gw; gx++)
                    for (int f = 0; f < tub; f++)
                        for (int r = 0; r < p; r++)
                            for (int cc = 0; cc < p; cc++)
                                for (int ch = 0; ch < 3; ch++) {
                                    int fr = t * tub + f < T ? t * tub + f : T - 1;
                                    int col = gx * p + cc;
                                    if (flip) col = W - 1 - col;
                                    uint8_t v = rgb[(((size_t)fr * H + gy * p + r) * W + col) * 3 + ch];
                                    size_t tok = ((size_t)t * Gh + gy) * Gw + gx;
                                    float got = x[tok * P + ((f * p + r) * p + cc) * 3 + ch];
                                    assert_float_equal(got, v / 127.5f - 1.0f, 1e-6);
                                }
    }
    ds4_vtok_patchify(rgb, T, H, W, tub, p, 0, x);
    ds4_vtok_unpatchify(x, Tl, H, W, tub, p, back);
    assert_memory_equal(back, rgb, (size_t)T * H * W * 3);
    /* the padded frame repeats the last one */
    assert_memory_equal(back + (size_t)T * H * W * 3, rgb + (size_t)(T - 1) * H * W * 3, (size_t)H * W * 3);
    /* clamping */
    x[0] = 5.0f; x[1] = -5.0f;
    ds4_vtok_unpatchify(x, Tl, H, W, tub, p, back);
    assert_int_equal(back[0], 255);
    assert_int_equal(back[1], 0);
    free(rgb); free(back); free(x);
}

/* Encode/decode of a clip longer than one chunk (16 latent frames) equals one
 * forward over the whole clip; a change in late frames leaves earlier codes
 * alone (causal), and decoding a prefix of the codes gives the same frames. */
static void test_chunked_and_causal(void **state) {
    (void)state;
    ds4_vtok_config c = tiny_config(1, 1);
    c.patch = 4; c.tubelet = 2; c.hidden = 8; c.head = 8;
    c.width = 16; c.height = 8;
    ds4_vtok *m = ds4_vtok_new(&c, 9);
    ds4_rng r;
    ds4_rng_seed(&r, 13);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] *= 3.0f;
    const int T = 2 * 37, H = 8, W = 16, Tl = 37, Gh = 2, Gw = 4;
    const size_t N = (size_t)Tl * Gh * Gw, fr = (size_t)H * W * 3;
    uint8_t *rgb = malloc(T * fr), *out = malloc(T * fr), *out2 = malloc(T * fr);
    for (size_t i = 0; i < T * fr; i++) rgb[i] = (uint8_t)(ds4_rng_u64(&r) & 255);
    int32_t *codes = malloc(N * sizeof(int32_t)), *codes2 = malloc(N * sizeof(int32_t));
    assert_int_equal(ds4_vtok_encode(m, rgb, T, H, W, codes), 0);
    /* reference: one forward over the whole clip with rounding; its q gives codes */
    ds4_vtok_ws *ws = ds4_vtok_ws_new(m, N);
    float *x = malloc(N * m->P * sizeof(float)), *y = malloc(N * m->P * sizeof(float));
    ds4_vtok_patchify(rgb, T, H, W, c.tubelet, c.patch, 0, x);
    ds4_vtok_forward_backward(m, ws, x, 1, Tl, Gh, Gw, y, NULL, NULL, 1.0f, 1);
    /* decode of the chunked codes = the whole-clip reconstruction */
    assert_int_equal(ds4_vtok_decode(m, codes, Tl, Gh, Gw, out), 0);
    ds4_vtok_unpatchify(y, Tl, H, W, c.tubelet, c.patch, out2);
    int diff = 0;
    for (size_t i = 0; i < T * fr; i++) diff += abs((int)out[i] - (int)out2[i]) > 1;
    assert_int_equal(diff, 0);
    int spread = 0;
    for (size_t i = 1; i < N; i++) spread += codes[i] != codes[0];
    assert_true(spread > 0);
    /* causality: change frames from latent 20 on; codes before stay */
    for (size_t i = 40 * fr; i < T * fr; i++) rgb[i] ^= 0x5a;
    assert_int_equal(ds4_vtok_encode(m, rgb, T, H, W, codes2), 0);
    assert_memory_equal(codes, codes2, 20 * Gh * Gw * sizeof(int32_t));
    int changed = 0;
    for (size_t i = 20 * Gh * Gw; i < N; i++) changed += codes[i] != codes2[i];
    assert_true(changed > 0);
    /* sharp decoding gives palette colours only, and the colour of each pixel's
     * largest logit; soft and sharp agree where one colour dominates */
    m->sharp = 1;
    assert_int_equal(ds4_vtok_decode(m, codes, Tl, Gh, Gw, out2), 0);
    m->sharp = 0;
    long agree = 0;
    for (size_t p = 0; p < (size_t)T * H * W; p++) {
        int is_pal = 0;
        for (int k = 0; k < DS4_WC_COUNT; k++) is_pal |= !memcmp(out2 + 3 * p, ds4_world_palette[k], 3);
        assert_true(is_pal);
        agree += abs(out2[3 * p] - out[3 * p]) + abs(out2[3 * p + 1] - out[3 * p + 1]) +
                 abs(out2[3 * p + 2] - out[3 * p + 2]) < 30;
    }
    assert_true(agree > 0);
    /* prefix decode */
    assert_int_equal(ds4_vtok_decode(m, codes, 10, Gh, Gw, out2), 0);
    assert_memory_equal(out2, out, 10 * c.tubelet * fr);
    /* bad sizes and codes */
    assert_int_equal(ds4_vtok_encode(m, rgb, T, 7, W, codes), -1);
    codes[3] = ds4_vtok_n_codes(m);
    assert_int_equal(ds4_vtok_decode(m, codes, Tl, Gh, Gw, out), -1);
    assert_non_null(strstr(ds4_error(), "out of range"));
    free(x); free(y); free(rgb); free(out); free(out2); free(codes); free(codes2);
    ds4_vtok_ws_free(ws);
    ds4_vtok_free(m);
}

/* Parameter count and names from the documented architecture. */
static void test_layout(void **state) {
    (void)state;
    ds4_vtok_config c;
    ds4_vtok_config_defaults(&c);
    ds4_vtok *m = ds4_vtok_new(&c, 1);
    const size_t H = 128, F = 256, D = 256, P = 768, C = 4, K = 18, E = 2, L = 3;
    const size_t O = 4 * 8 * 8 * 7;   /* palette logits per token */
    const size_t block = (H * K + H) + H + (F * H + F) + (H * F + H);
    size_t want = (H * P + H) + E * block + H + (C * H + C) + (H * K * C + H) + L * block + H +
                  (D * H + D) + (O * D + O);
    assert_int_equal(m->n_params, want);
    assert_int_equal(m->n_out, O);
    assert_int_equal(m->n_tensors, 2 + 7 * E + 1 + 2 + 2 + 7 * L + 1 + 2 + 2);
    assert_int_equal(ds4_vtok_n_codes(m), 1000);
    const ds4_vtok_tensor *t = ds4_vtok_find(m, "video.decoder.blocks.2.fc1.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 256);
    assert_int_equal(t->shape[1], 128);
    t = ds4_vtok_find(m, "video.encoder.blocks.1.dw.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 128);
    assert_int_equal(t->shape[1], 18);
    assert_non_null(ds4_vtok_find(m, "video.decoder.out.bias"));
    assert_null(ds4_vtok_find(m, "video.decoder.blocks.3.fc1.weight"));
    /* every tensor is contiguous and in order */
    size_t off = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        assert_int_equal(m->tensors[i].off, off);
        off += m->tensors[i].numel;
    }
    ds4_vtok_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backward_fd_causal),
        cmocka_unit_test(test_backward_fd_noncausal),
        cmocka_unit_test(test_backward_fd_rgb),
        cmocka_unit_test(test_straight_through_path),
        cmocka_unit_test(test_grid_ops),
        cmocka_unit_test(test_patchify),
        cmocka_unit_test(test_chunked_and_causal),
        cmocka_unit_test(test_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
