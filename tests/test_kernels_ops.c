/* test_kernels_ops.c — checks the dense kernels (matmul, RMSNorm, RoPE,
 * SwiGLU, softmax cross-entropy) against naive double-precision references,
 * hand-computed values and central finite differences of their forwards. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <omp.h>

#include "kernels/kernels.h"
#include "util/util.h"

static float *randv(ds4_rng *r, size_t n, float s) {
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = s * ds4_rng_normal(r);
    return v;
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* |got - want| <= atol + rtol * |want|, with a message naming the entry. */
static void check_close(const char *what, size_t i, double got, double want, double atol, double rtol) {
    if (!(fabs(got - want) <= atol + rtol * fabs(want))) {
        fail_msg("%s[%zu]: got %.7g want %.7g", what, i, got, want);
    }
}

/* ---- matmul --------------------------------------------------------------- */

/* y = x w^T (+ y) against a triple loop in double, for one shape. */
static void check_matmul(ds4_rng *r, int n, int in, int out) {
    float *x = randv(r, (size_t)n * in, 1), *w = randv(r, (size_t)out * in, 1);
    float *y = randv(r, (size_t)n * out, 1), *y0 = malloc((size_t)n * out * sizeof(float));
    memcpy(y0, y, (size_t)n * out * sizeof(float));
    for (int acc = 0; acc <= 1; acc++) {
        memcpy(y, y0, (size_t)n * out * sizeof(float));
        ds4_matmul(y, x, w, n, in, out, acc);
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) {
                double s = acc ? y0[i * out + o] : 0.0;
                for (int k = 0; k < in; k++) s += (double)x[i * in + k] * w[o * in + k];
                check_close("matmul y", (size_t)i * out + o, y[i * out + o], s, 1e-4, 1e-5);
            }
    }
    free(x); free(w); free(y); free(y0);
}

static void test_matmul_naive(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 11);
    /* few rows (the decode path), odd widths, and a bigger block */
    int shapes[][3] = {{1, 13, 9}, {2, 64, 33}, {3, 100, 7}, {4, 37, 50}, {5, 8, 8}, {1, 1, 1}, {7, 13, 9}, {33, 130, 65}};
    for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++)
        check_matmul(&r, shapes[c][0], shapes[c][1], shapes[c][2]);
}

static void test_matmul_backward(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 2);
    int n = 5, in = 11, out = 6;
    float *x = randv(&r, (size_t)n * in, 1), *w = randv(&r, (size_t)out * in, 1);
    float *dy = randv(&r, (size_t)n * out, 1);
    float *dx = randv(&r, (size_t)n * in, 1), *dw = randv(&r, (size_t)out * in, 1);
    float *dx0 = malloc((size_t)n * in * sizeof(float)), *dw0 = malloc((size_t)out * in * sizeof(float));
    memcpy(dx0, dx, (size_t)n * in * sizeof(float));
    memcpy(dw0, dw, (size_t)out * in * sizeof(float));
    ds4_matmul_backward(dx, dw, dy, x, w, n, in, out);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < in; k++) {
            double s = dx0[i * in + k];
            for (int o = 0; o < out; o++) s += (double)dy[i * out + o] * w[o * in + k];
            check_close("dx", (size_t)i * in + k, dx[i * in + k], s, 1e-5, 1e-5);
        }
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double s = dw0[o * in + k];
            for (int i = 0; i < n; i++) s += (double)dy[i * out + o] * x[i * in + k];
            check_close("dw", (size_t)o * in + k, dw[o * in + k], s, 1e-5, 1e-5);
        }
    /* NULL outputs are skipped. */
    memcpy(dx0, dx, (size_t)n * in * sizeof(float));
    ds4_matmul_backward(dx, NULL, dy, x, w, n, in, out);
    ds4_matmul_backward(NULL, NULL, dy, x, w, n, in, out);
    free(x); free(w); free(dy); free(dx); free(dw); free(dx0); free(dw0);
}

/* The strided/written variant: dy as a column block of a wider matrix, dx
 * overwritten (beta 0) or accumulated, against ds4_matmul_backward. */
static void test_matmul_backward_ex(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 12);
    int n = 9, in = 13, out = 7, ld = 20, off = 5;
    float *x = randv(&r, (size_t)n * in, 1), *w = randv(&r, (size_t)out * in, 1);
    float *wide = randv(&r, (size_t)n * ld, 1), *dy = malloc((size_t)n * out * sizeof(float));
    for (int i = 0; i < n; i++) memcpy(dy + (size_t)i * out, wide + (size_t)i * ld + off, out * sizeof(float));
    float *dx = randv(&r, (size_t)n * in, 1), *dw = randv(&r, (size_t)out * in, 1);
    float *ex = malloc((size_t)n * in * sizeof(float)), *ew = malloc((size_t)out * in * sizeof(float));
    memcpy(ew, dw, (size_t)out * in * sizeof(float));
    for (size_t i = 0; i < (size_t)n * in; i++) ex[i] = NAN;     /* written: old contents ignored */
    ds4_matmul_backward_ex(ex, ew, wide + off, (size_t)ld, x, w, n, in, out, 0);
    float *zx = calloc((size_t)n * in, sizeof(float));
    ds4_matmul_backward(zx, dw, dy, x, w, n, in, out);
    for (size_t i = 0; i < (size_t)n * in; i++) check_close("ex dx", i, ex[i], zx[i], 1e-6, 1e-6);
    for (size_t i = 0; i < (size_t)out * in; i++) check_close("ex dw", i, ew[i], dw[i], 1e-6, 1e-6);
    /* accumulated */
    memcpy(ex, dx, (size_t)n * in * sizeof(float));
    ds4_matmul_backward_ex(ex, NULL, wide + off, (size_t)ld, x, w, n, in, out, 1);
    ds4_matmul_backward(dx, NULL, dy, x, w, n, in, out);
    for (size_t i = 0; i < (size_t)n * in; i++) check_close("ex dx acc", i, ex[i], dx[i], 1e-6, 1e-6);
    free(x); free(w); free(wide); free(dy); free(dx); free(dw); free(ex); free(ew); free(zx);
    /* big enough for the two-thread path (dx and dw side by side): against double sums */
    n = 64; in = 128; out = 256;
    x = randv(&r, (size_t)n * in, 1); w = randv(&r, (size_t)out * in, 1); dy = randv(&r, (size_t)n * out, 1);
    dx = randv(&r, (size_t)n * in, 1); dw = randv(&r, (size_t)out * in, 1);
    ew = malloc((size_t)out * in * sizeof(float));
    memcpy(ew, dw, (size_t)out * in * sizeof(float));
    int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    ds4_matmul_backward_ex(dx, dw, dy, (size_t)out, x, w, n, in, out, 0);
    omp_set_num_threads(saved);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < in; k++) {
            double sx = 0;
            for (int o = 0; o < out; o++) sx += (double)dy[i * out + o] * w[o * in + k];
            check_close("2t dx", (size_t)i * in + k, dx[i * in + k], sx, 1e-4, 1e-5);
        }
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double sw = ew[o * in + k];
            for (int i = 0; i < n; i++) sw += (double)dy[i * out + o] * x[i * in + k];
            check_close("2t dw", (size_t)o * in + k, dw[o * in + k], sw, 1e-4, 1e-5);
        }
    free(x); free(w); free(dy); free(dx); free(dw); free(ew);
}

/* ---- RMSNorm -------------------------------------------------------------- */

static double rms_loss(const float *x, const float *w, const float *R, int n, int d) {
    float *y = malloc((size_t)n * d * sizeof(float));
    ds4_rmsnorm(y, NULL, x, w, n, d, 1e-5f);
    double L = dotd(y, R, (size_t)n * d);
    free(y);
    return L;
}

static void test_rmsnorm(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    int n = 4, d = 10;
    float *x = randv(&r, (size_t)n * d, 1), *w = randv(&r, d, 1), *R = randv(&r, (size_t)n * d, 1);
    float *y = malloc((size_t)n * d * sizeof(float)), rstd[4];
    ds4_rmsnorm(y, rstd, x, w, n, d, 1e-5f);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)x[i * d + j] * x[i * d + j];
        double rs = 1.0 / sqrt(ss / d + 1e-5);
        check_close("rstd", i, rstd[i], rs, 0, 1e-5);
        for (int j = 0; j < d; j++)
            check_close("rmsnorm y", (size_t)i * d + j, y[i * d + j], x[i * d + j] * rs * w[j], 1e-6, 1e-5);
    }
    /* gradients vs central differences of sum(y * R) */
    float *dx = calloc((size_t)n * d, sizeof(float)), *dw = calloc(d, sizeof(float));
    ds4_rmsnorm_backward(dx, dw, R, x, w, rstd, n, d);
    const float h = 1e-2f;
    for (int i = 0; i < n * d; i++) {
        float s = x[i];
        x[i] = s + h; double lp = rms_loss(x, w, R, n, d);
        x[i] = s - h; double lm = rms_loss(x, w, R, n, d);
        x[i] = s;
        check_close("rmsnorm dx", i, dx[i], (lp - lm) / (2 * h), 2e-3, 1e-2);
    }
    for (int j = 0; j < d; j++) {
        float s = w[j];
        w[j] = s + h; double lp = rms_loss(x, w, R, n, d);
        w[j] = s - h; double lm = rms_loss(x, w, R, n, d);
        w[j] = s;
        check_close("rmsnorm dw", j, dw[j], (lp - lm) / (2 * h), 2e-3, 1e-2);
    }
    free(x); free(w); free(R); free(y); free(dx); free(dw);
}

/* Larger shape: crosses the parallel threshold; dx accumulates, dw by columns. */
static void test_rmsnorm_backward_large(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 4);
    int n = 97, d = 384;
    size_t nd = (size_t)n * d;
    float *x = randv(&r, nd, 1), *w = randv(&r, d, 1), *dy = randv(&r, nd, 1);
    float *y = malloc(nd * sizeof(float)), *rstd = malloc(n * sizeof(float));
    float *dx = randv(&r, nd, 1), *dw = randv(&r, d, 1);
    float *dx0 = malloc(nd * sizeof(float)), *dw0 = malloc(d * sizeof(float));
    memcpy(dx0, dx, nd * sizeof(float));
    memcpy(dw0, dw, d * sizeof(float));
    ds4_rmsnorm(y, rstd, x, w, n, d, 1e-6f);
    ds4_rmsnorm_backward(dx, dw, dy, x, w, rstd, n, d);
    for (int j = 0; j < d; j++) {
        double s = dw0[j];
        for (int i = 0; i < n; i++) s += (double)dy[(size_t)i * d + j] * x[(size_t)i * d + j] * rstd[i];
        check_close("dw large", j, dw[j], s, 1e-4, 1e-4);
    }
    for (int i = 0; i < n; i++) {
        double dot = 0;
        for (int j = 0; j < d; j++) dot += (double)dy[(size_t)i * d + j] * w[j] * x[(size_t)i * d + j];
        double rs = rstd[i];
        for (int j = 0; j < d; j++) {
            size_t k = (size_t)i * d + j;
            double want = dx0[k] + rs * w[j] * dy[k] - x[k] * rs * rs * rs / d * dot;
            check_close("dx large", k, dx[k], want, 1e-4, 1e-4);
        }
    }
    free(x); free(w); free(dy); free(y); free(rstd); free(dx); free(dw); free(dx0); free(dw0);
}

/* ---- RoPE ----------------------------------------------------------------- */

static void test_rope_known_value(void **state) {
    (void)state;
    /* hd = 4, theta = 100: pair (0,2) turns by pos * 1, pair (1,3) by pos * 0.1. */
    float x[8] = {1, 0, 0, 0, /* head 1 */ 0, 2, 0, 3};
    int pos[1] = {3};
    ds4_rope(x, pos, 1, 2, 4, 100.0f);
    double a0 = 3.0, a1 = 0.3;
    double want[8] = {cos(a0), 0, sin(a0), 0,
                      0, 2 * cos(a1) - 3 * sin(a1), 0, 3 * cos(a1) + 2 * sin(a1)};
    for (int i = 0; i < 8; i++) check_close("rope", i, x[i], want[i], 1e-6, 1e-6);
}

static void test_rope_inverse_and_adjoint(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    int n = 37, nh = 3, hd = 160;   /* hd/2 = 80 > the 64-entry cos/sin chunk */
    size_t sz = (size_t)n * nh * hd;
    int *pos = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) pos[i] = 1000 * i + 7;
    float *x = randv(&r, sz, 1), *y = randv(&r, sz, 1);
    float *x2 = malloc(sz * sizeof(float)), *y2 = malloc(sz * sizeof(float));
    memcpy(x2, x, sz * sizeof(float));
    memcpy(y2, y, sz * sizeof(float));
    ds4_rope(x2, pos, n, nh, hd, 10000.0f);
    /* rotation preserves each row's norm and actually changes the vector */
    double diff = 0;
    for (size_t i = 0; i < sz; i++) diff += fabs(x2[i] - x[i]);
    assert_true(diff > 1.0);
    for (int i = 0; i < n; i++)
        check_close("rope norm", i, dotd(x2 + (size_t)i * nh * hd, x2 + (size_t)i * nh * hd, (size_t)nh * hd),
                    dotd(x + (size_t)i * nh * hd, x + (size_t)i * nh * hd, (size_t)nh * hd), 1e-4, 1e-5);
    /* adjoint: <rope(x), y> == <x, rope_backward(y)> */
    ds4_rope_backward(y2, pos, n, nh, hd, 10000.0f);
    check_close("rope adjoint", 0, dotd(x2, y, sz), dotd(x, y2, sz), 1e-3, 1e-5);
    /* inverse: rope_backward(rope(x)) == x */
    ds4_rope_backward(x2, pos, n, nh, hd, 10000.0f);
    for (size_t i = 0; i < sz; i++) check_close("rope inverse", i, x2[i], x[i], 1e-5, 1e-5);
    free(pos); free(x); free(y); free(x2); free(y2);
}

/* Runs of consecutive positions (the kernel steps the angles from one row to
 * the next within fixed blocks of rows): every element against cos/sin of
 * the angle in double, two sequences, one far from 0, and a row that breaks
 * the run. */
static void test_rope_consecutive_positions(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 11);
    int n = 150, nh = 2, hd = 64, half = 32;
    size_t sz = (size_t)n * nh * hd;
    int *pos = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) pos[i] = i < 70 ? i : 100000 + (i - 70);
    pos[100] = 5;                       /* breaks the run mid-block */
    float *x = randv(&r, sz, 1), *y = malloc(sz * sizeof(float));
    memcpy(y, x, sz * sizeof(float));
    ds4_rope(y, pos, n, nh, hd, 10000.0f);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++)
            for (int k = 0; k < half; k++) {
                double a = pos[i] * pow(10000.0, -2.0 * k / hd), c = cos(a), sn = sin(a);
                size_t o = ((size_t)i * nh + h) * hd + k;
                check_close("rope run a", o, y[o], x[o] * c - x[o + half] * sn, 2e-6, 1e-6);
                check_close("rope run b", o, y[o + half], x[o + half] * c + x[o] * sn, 2e-6, 1e-6);
            }
    free(pos); free(x); free(y);
}

/* The vectorised exp inside SwiGLU over its whole range: large |g|
 * saturate cleanly (no NaN), NaN propagates, and moderate values are
 * accurate to float rounding. */
static void test_swiglu_range(void **state) {
    (void)state;
    enum { N = 1024 };
    float g[N], u[N], h[N], dh[N], dg[N], du[N];
    for (int i = 0; i < N; i++) { g[i] = -120.0f + 240.0f * i / (N - 1); u[i] = 1.0f; dh[i] = 1.0f; }
    g[5] = NAN;
    g[6] = INFINITY;
    g[7] = -1e30f;
    ds4_swiglu(h, g, u, N);
    ds4_swiglu_backward(dg, du, dh, g, u, N);
    assert_true(isnan(h[5]) && isnan(dg[5]) && isnan(du[5]));
    assert_true(h[6] == INFINITY && h[7] == 0.0f && dg[7] == 0.0f && du[7] == 0.0f);
    for (int i = 8; i < N; i++) {
        double gd = g[i], s = 1.0 / (1.0 + exp(-gd));
        check_close("swiglu range h", i, h[i], gd * s, 1e-30, 3e-7);
        check_close("swiglu range du", i, du[i], gd * s, 1e-30, 3e-7);
        check_close("swiglu range dg", i, dg[i], s * (1 + gd * (1 - s)), 1e-6, 1e-6);   /* cancels near g = -1.28 */
    }
}

/* ---- SwiGLU --------------------------------------------------------------- */

static void test_swiglu(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 6);
    size_t n = 50;
    float *g = randv(&r, n, 3), *u = randv(&r, n, 1), *dh = randv(&r, n, 1);
    float *h = malloc(n * sizeof(float)), *dg = malloc(n * sizeof(float)), *du = malloc(n * sizeof(float));
    ds4_swiglu(h, g, u, n);
    for (size_t i = 0; i < n; i++)
        check_close("swiglu", i, h[i], g[i] / (1.0 + exp(-(double)g[i])) * u[i], 1e-6, 1e-5);
    ds4_swiglu_backward(dg, du, dh, g, u, n);
    const double e = 1e-3;
    for (size_t i = 0; i < n; i++) {
        /* elementwise: d/dg of dh*silu(g)*u by central differences in double */
        double gp = g[i] + e, gm = g[i] - e;
        double fd_g = dh[i] * u[i] * (gp / (1 + exp(-gp)) - gm / (1 + exp(-gm))) / (2 * e);
        check_close("swiglu dg", i, dg[i], fd_g, 1e-5, 1e-4);
        check_close("swiglu du", i, du[i], dh[i] * g[i] / (1.0 + exp(-(double)g[i])), 1e-6, 1e-5);
    }
    /* and the float kernel itself under finite differences */
    for (size_t i = 0; i < n; i++) {
        float hp, hm, gs = g[i];
        const float hstep = 1e-2f;
        float gp = gs + hstep, gm = gs - hstep;
        ds4_swiglu(&hp, &gp, &u[i], 1);
        ds4_swiglu(&hm, &gm, &u[i], 1);
        check_close("swiglu dg fd", i, dg[i], dh[i] * ((double)hp - hm) / (2 * hstep), 2e-3, 1e-2);
    }
    free(g); free(u); free(dh); free(h); free(dg); free(du);
}

/* Strided RoPE backward and the row-wise SwiGLU backward equal their flat forms. */
static void test_strided_variants(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 13);
    int n = 40, nh = 3, hd = 16, ld = 70, F = 21;
    int *pos = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) pos[i] = i % 25;
    float *wide = randv(&r, (size_t)n * ld, 1), *flat = malloc((size_t)n * nh * hd * sizeof(float));
    float *keep = malloc((size_t)n * ld * sizeof(float));
    memcpy(keep, wide, (size_t)n * ld * sizeof(float));
    for (int i = 0; i < n; i++) memcpy(flat + (size_t)i * nh * hd, wide + (size_t)i * ld + 3, nh * hd * sizeof(float));
    ds4_rope_backward_ld(wide + 3, (size_t)ld, pos, n, nh, hd, 10000.0f);
    ds4_rope_backward(flat, pos, n, nh, hd, 10000.0f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ld; j++) {
            size_t o = (size_t)i * ld + j;
            float want = (j >= 3 && j < 3 + nh * hd) ? flat[(size_t)i * nh * hd + j - 3] : keep[o];
            assert_memory_equal(&wide[o], &want, sizeof(float));   /* padding untouched */
        }
    float *g = randv(&r, (size_t)n * F, 3), *u = randv(&r, (size_t)n * F, 1), *dh = randv(&r, (size_t)n * F, 1);
    float *dg = malloc((size_t)n * F * sizeof(float)), *du = malloc((size_t)n * F * sizeof(float));
    float *dgu = malloc((size_t)n * 2 * F * sizeof(float));
    ds4_swiglu_backward(dg, du, dh, g, u, (size_t)n * F);
    ds4_swiglu_backward_rows(dgu, dh, g, u, n, F);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < F; j++) {
            check_close("rows dg", (size_t)i * F + j, dgu[(size_t)i * 2 * F + j], dg[(size_t)i * F + j], 1e-7, 1e-6);
            check_close("rows du", (size_t)i * F + j, dgu[(size_t)i * 2 * F + F + j], du[(size_t)i * F + j], 1e-7, 1e-6);
        }
    free(pos); free(wide); free(flat); free(keep); free(g); free(u); free(dh); free(dg); free(du); free(dgu);
}

/* ---- softmax cross-entropy ------------------------------------------------ */

static void test_softmax_xent(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 7);
    int n = 6, V = 17;
    float *l = randv(&r, (size_t)n * V, 2);
    for (int j = 0; j < V; j++) l[2 * V + j] += 5000.0f;   /* needs max-subtraction */
    int t[6] = {3, -1, 16, 0, 5, -7};
    float *dl = malloc((size_t)n * V * sizeof(float));
    float scale = 0.25f;
    double loss = ds4_softmax_xent(dl, l, t, n, V, scale);
    double want = 0;
    for (int i = 0; i < n; i++) {
        if (t[i] < 0) {
            for (int j = 0; j < V; j++) check_close("ignored row grad", (size_t)i * V + j, dl[i * V + j], 0, 0, 0);
            continue;
        }
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, l[i * V + j]);
        for (int j = 0; j < V; j++) s += exp((double)l[i * V + j] - m);
        want += -((double)l[i * V + t[i]] - m - log(s));
        for (int j = 0; j < V; j++) {
            double p = exp((double)l[i * V + j] - m) / s - (j == t[i]);
            check_close("xent grad", (size_t)i * V + j, dl[i * V + j], p * scale, 1e-6, 1e-4);
        }
    }
    assert_true(isfinite(loss));
    check_close("xent loss", 0, loss, want, 1e-5, 1e-5);
    /* loss only, and in place (dlogits aliases logits) */
    check_close("xent loss no grad", 0, ds4_softmax_xent(NULL, l, t, n, V, scale), want, 1e-5, 1e-5);
    float *l2 = malloc((size_t)n * V * sizeof(float));
    memcpy(l2, l, (size_t)n * V * sizeof(float));
    check_close("xent loss in place", 0, ds4_softmax_xent(l2, l2, t, n, V, scale), want, 1e-5, 1e-5);
    for (int i = 0; i < n * V; i++) check_close("xent in place grad", i, l2[i], dl[i], 0, 0);
    /* finite differences of the loss (moderate logits so float rounding is small) */
    for (int i = 0; i < n * V; i++) l[i] = (float)(0.5 * ds4_rng_normal(&r));
    ds4_softmax_xent(dl, l, t, n, V, 1.0f);
    const float h = 1e-2f;
    for (int i = 0; i < n * V; i++) {
        float s = l[i];
        l[i] = s + h; double lp = ds4_softmax_xent(NULL, l, t, n, V, 1.0f);
        l[i] = s - h; double lm = ds4_softmax_xent(NULL, l, t, n, V, 1.0f);
        l[i] = s;
        check_close("xent fd", i, dl[i], (lp - lm) / (2 * h), 1e-3, 1e-2);
    }
    free(l); free(dl); free(l2);
}

/* Many rows over the parallel threshold: sum of per-row losses in double. */
static void test_softmax_xent_large(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 8);
    int n = 64, V = 1000;
    float *l = randv(&r, (size_t)n * V, 3);
    int *t = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) t[i] = (i % 5 == 4) ? -1 : (int)(ds4_rng_u64(&r) % V);
    double want = 0;
    for (int i = 0; i < n; i++) {
        if (t[i] < 0) continue;
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, l[(size_t)i * V + j]);
        for (int j = 0; j < V; j++) s += exp((double)l[(size_t)i * V + j] - m);
        want += log(s) + m - l[(size_t)i * V + t[i]];
    }
    check_close("xent large", 0, ds4_softmax_xent(l, l, t, n, V, 1.0f / n), want, 1e-4, 1e-6);
    /* every counted gradient row sums to zero */
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < V; j++) s += l[(size_t)i * V + j];
        check_close("xent grad row sum", i, s, 0, 1e-6, 0);
    }
    free(l); free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_naive),
        cmocka_unit_test(test_matmul_backward),
        cmocka_unit_test(test_matmul_backward_ex),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rmsnorm_backward_large),
        cmocka_unit_test(test_rope_known_value),
        cmocka_unit_test(test_rope_inverse_and_adjoint),
        cmocka_unit_test(test_rope_consecutive_positions),
        cmocka_unit_test(test_swiglu_range),
        cmocka_unit_test(test_strided_variants),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_softmax_xent),
        cmocka_unit_test(test_softmax_xent_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
