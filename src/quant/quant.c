/* quant.c — the generic quantization API: type table, row sizes, whole-matrix
 * quantize/dequantize, activation quantization and the batched matmul driver
 * y[n,out] = x[n,in] @ w[out,in]^T (OpenMP over tiles of output rows). */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "util/util.h"

static const struct {
    const char *name;
    int elems;        /* weights per block */
    size_t bytes;     /* bytes per block */
    int ggml;         /* ggml_type id */
} qinfo[DS4_Q_COUNT] = {
    [DS4_Q_F32] = {"f32", 1, 4, 0},
    [DS4_Q_Q8_0] = {"q8_0", DS4_QK8_0, sizeof(ds4_block_q8_0), 8},
    [DS4_Q_Q4_0] = {"q4_0", DS4_QK4_0, sizeof(ds4_block_q4_0), 2},
    [DS4_Q_Q4_K] = {"q4_k", DS4_QK_K, sizeof(ds4_block_q4_K), 12},
};

static int valid_type(ds4_qtype t) { return (int)t >= 0 && t < DS4_Q_COUNT; }

const char *ds4_q_type_name(ds4_qtype t) { return valid_type(t) ? qinfo[t].name : "?"; }

int ds4_q_type_from_name(const char *name) {
    for (int t = 0; t < DS4_Q_COUNT; t++) {
        const char *a = qinfo[t].name, *b = name;
        while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) { a++; b++; }
        if (!*a && !*b) return t;
    }
    return -1;
}

int ds4_q_block_elems(ds4_qtype t) { return valid_type(t) ? qinfo[t].elems : 0; }
size_t ds4_q_block_bytes(ds4_qtype t) { return valid_type(t) ? qinfo[t].bytes : 0; }
int ds4_q_ggml_type(ds4_qtype t) { return valid_type(t) ? qinfo[t].ggml : -1; }

/* 0 if (t, n) is a legal row shape; otherwise an error naming the problem. */
static int check_shape(ds4_qtype t, int n, const char *what) {
    if (!valid_type(t)) {
        ds4_set_error("%s: unknown quantization type %d", what, (int)t);
        return -1;
    }
    if (n <= 0 || n % qinfo[t].elems) {
        ds4_set_error("%s: row length %d is not a positive multiple of %d, the %s block size",
                      what, n, qinfo[t].elems, qinfo[t].name);
        return -1;
    }
    return 0;
}

size_t ds4_q_row_bytes(ds4_qtype t, int n) {
    if (check_shape(t, n, "ds4_q_row_bytes")) return 0;
    return (size_t)(n / qinfo[t].elems) * qinfo[t].bytes;
}

static void quantize_row(ds4_qtype t, const float *x, void *y, int n) {
    switch (t) {
    case DS4_Q_F32: memcpy(y, x, (size_t)n * sizeof(float)); break;
    case DS4_Q_Q8_0: ds4_quantize_row_q8_0(x, y, n); break;
    case DS4_Q_Q4_0: ds4_quantize_row_q4_0(x, y, n); break;
    case DS4_Q_Q4_K: ds4_quantize_row_q4_K(x, y, n); break;
    default: break;
    }
}

int ds4_q_quantize(ds4_qtype t, const float *src, void *dst, int rows, int cols) {
    if (check_shape(t, cols, "ds4_q_quantize")) return -1;
    if (rows < 0) { ds4_set_error("ds4_q_quantize: negative row count %d", rows); return -1; }
    size_t rb = ds4_q_row_bytes(t, cols);
    /* the fp16 scales bound what a block can hold: 127, 8 and 63 steps of
     * the largest fp16 (65504); fp32 holds anything finite */
    static const float limit[DS4_Q_COUNT] = {
        [DS4_Q_F32] = 3.4e38f, [DS4_Q_Q8_0] = 127.0f * 65504.0f,
        [DS4_Q_Q4_0] = 8.0f * 65504.0f, [DS4_Q_Q4_K] = 63.0f * 65504.0f};
    const float lim = limit[t];
    long bad = -1;   /* first bad element, as row * cols + col */
#pragma omp parallel for schedule(dynamic, 4) if (rows > 1 && (long)rows * cols > 65536)
    for (int r = 0; r < rows; r++) {
        const float *x = src + (size_t)r * cols;
        int ok = 1;
        for (int c = 0; c < cols; c++) ok &= fabsf(x[c]) <= lim;   /* false for NaN too */
        if (!ok) {
            for (int c = 0; c < cols; c++)
                if (!(fabsf(x[c]) <= lim)) {
#pragma omp critical(ds4_quant_bad)
                    if (bad < 0 || (long)r * cols + c < bad) bad = (long)r * cols + c;
                    break;
                }
            continue;
        }
        quantize_row(t, x, (char *)dst + (size_t)r * rb, cols);
    }
    if (bad >= 0) {
        float v = src[bad];
        ds4_set_error("ds4_q_quantize: %s value %g at row %ld, column %ld%s", isfinite(v) ? "out-of-range" : "non-finite",
                      (double)v, bad / cols, bad % cols, isfinite(v) ? " (beyond what fp16 block scales can hold)" : "");
        return -1;
    }
    return 0;
}

int ds4_q_dequantize(ds4_qtype t, const void *src, float *dst, int rows, int cols) {
    if (check_shape(t, cols, "ds4_q_dequantize")) return -1;
    size_t rb = ds4_q_row_bytes(t, cols);
#pragma omp parallel for schedule(static) if ((long)rows * cols > 65536)
    for (int r = 0; r < rows; r++) {
        const void *x = (const char *)src + (size_t)r * rb;
        float *y = dst + (size_t)r * cols;
        switch (t) {
        case DS4_Q_F32: memcpy(y, x, (size_t)cols * sizeof(float)); break;
        case DS4_Q_Q8_0: ds4_dequantize_row_q8_0(x, y, cols); break;
        case DS4_Q_Q4_0: ds4_dequantize_row_q4_0(x, y, cols); break;
        case DS4_Q_Q4_K: ds4_dequantize_row_q4_K(x, y, cols); break;
        default: break;
        }
    }
    return 0;
}

/* ---- activations ----------------------------------------------------------------- */
size_t ds4_q_act_row_bytes(ds4_qtype t, int in) {
    if (check_shape(t, in, "ds4_q_act_row_bytes")) return 0;
    switch (t) {
    case DS4_Q_F32: return (size_t)in * sizeof(float);
    case DS4_Q_Q8_0:
    case DS4_Q_Q4_0: return (size_t)(in / DS4_QK8_0) * sizeof(ds4_block_q8_0);
    case DS4_Q_Q4_K: return (size_t)(in / DS4_QK_K) * sizeof(ds4_block_q8_K);
    default: return 0;
    }
}

void ds4_q_quantize_act_row(ds4_qtype t, const float *x, void *xq, int in) {
    switch (t) {
#ifdef __AVX2__
    case DS4_Q_Q8_0:
    case DS4_Q_Q4_0: ds4_quantize_row_q8_0_avx2(x, xq, in); break;
    case DS4_Q_Q4_K: ds4_quantize_row_q8_K_avx2(x, xq, in); break;
#else
    case DS4_Q_Q8_0:
    case DS4_Q_Q4_0: ds4_quantize_row_q8_0(x, xq, in); break;
    case DS4_Q_Q4_K: ds4_quantize_row_q8_K(x, xq, in); break;
#endif
    default: memcpy(xq, x, (size_t)in * sizeof(float)); break;
    }
}

int ds4_q_quantize_act(ds4_qtype t, const float *x, void *xq, int n, int in) {
    if (check_shape(t, in, "ds4_q_quantize_act")) return -1;
    size_t rb = ds4_q_act_row_bytes(t, in);
#pragma omp parallel for schedule(static) if ((long)n * in > 65536)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * in;
        void *yr = (char *)xq + (size_t)r * rb;
        switch (t) {
        case DS4_Q_F32: memcpy(yr, xr, rb); break;
#ifdef __AVX2__
        case DS4_Q_Q8_0:
        case DS4_Q_Q4_0: ds4_quantize_row_q8_0_avx2(xr, yr, in); break;
        case DS4_Q_Q4_K: ds4_quantize_row_q8_K_avx2(xr, yr, in); break;
#else
        case DS4_Q_Q8_0:
        case DS4_Q_Q4_0: ds4_quantize_row_q8_0(xr, yr, in); break;
        case DS4_Q_Q4_K: ds4_quantize_row_q8_K(xr, yr, in); break;
#endif
        default: break;
        }
    }
    return 0;
}

/* ---- dot kernels --------------------------------------------------------------------- */
typedef float (*row_dot_fn)(int n, const void *w, const void *x);

static float row_dot_f32(int n, const void *w, const void *x) {
    const float *a = w, *b = x;
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static float row_dot_q8_0(int n, const void *w, const void *x) { return ds4_vec_dot_q8_0_q8_0_ref(n, w, x); }
static float row_dot_q4_0(int n, const void *w, const void *x) { return ds4_vec_dot_q4_0_q8_0_ref(n, w, x); }
static float row_dot_q4_K(int n, const void *w, const void *x) { return ds4_vec_dot_q4_K_q8_K_ref(n, w, x); }

static inline void tile_ref(row_dot_fn f, int n, const void *w, size_t ws, int nw, const void *x,
                            size_t xs, int nx, float *o, size_t os) {
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nx; r++)
            o[r * os + k] = f(n, (const char *)w + k * ws, (const char *)x + r * xs);
}
static void dot_f32_ref(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os) {
    tile_ref(row_dot_f32, n, w, ws, nw, x, xs, nx, o, os);
}
static void dot_q8_0_ref(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os) {
    tile_ref(row_dot_q8_0, n, w, ws, nw, x, xs, nx, o, os);
}
static void dot_q4_0_ref(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os) {
    tile_ref(row_dot_q4_0, n, w, ws, nw, x, xs, nx, o, os);
}
static void dot_q4_K_ref(int n, const void *w, size_t ws, int nw, const void *x, size_t xs, int nx, float *o, size_t os) {
    tile_ref(row_dot_q4_K, n, w, ws, nw, x, xs, nx, o, os);
}

int ds4_q_have_simd(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

ds4_q_dot_fn ds4_q_dot_kernel(ds4_qtype t, int simd) {
#ifdef __AVX2__
    if (simd) {
        switch (t) {
        case DS4_Q_F32: return ds4_dot_f32_avx2;
        case DS4_Q_Q8_0: return ds4_dot_q8_0_avx2;
        case DS4_Q_Q4_0: return ds4_dot_q4_0_avx2;
        case DS4_Q_Q4_K: return ds4_dot_q4_K_avx2;
        default: return NULL;
        }
    }
#else
    (void)simd;
#endif
    switch (t) {
    case DS4_Q_F32: return dot_f32_ref;
    case DS4_Q_Q8_0: return dot_q8_0_ref;
    case DS4_Q_Q4_0: return dot_q4_0_ref;
    case DS4_Q_Q4_K: return dot_q4_K_ref;
    default: return NULL;
    }
}

float ds4_q_vec_dot(ds4_qtype t, int n, const void *w, const void *xq) {
    float s = 0.0f;
    ds4_q_dot_kernel(t, 1)(n, w, 0, 1, xq, 0, 1, &s, 1);
    return s;
}

float ds4_q_vec_dot_ref(ds4_qtype t, int n, const void *w, const void *xq) {
    float s = 0.0f;
    ds4_q_dot_kernel(t, 0)(n, w, 0, 1, xq, 0, 1, &s, 1);
    return s;
}

/* ---- matmul driver ---------------------------------------------------------------------
 * Output rows go in tiles of TILE_OUT (a tile's weights stay in L1/L2 while
 * every group of activation rows passes over them); tiles are shared out
 * dynamically, so a core slowed by another process does not hold the rest.
 * Kernel tiles: 4 activation rows x 1 weight row when the batch allows (the
 * weights are unpacked once for 4 rows), else 4 weight rows x 1 activation
 * row (one activation load serves 4 rows), or 2 x 2. */
#define TILE_OUT 16

static int matmul_q(ds4_qtype t, float *y, const void *xq, const void *w, int n, int in, int out,
                    int simd) {
    if (check_shape(t, in, "ds4_q_matmul")) return -1;
    if (n < 0 || out < 0) {
        ds4_set_error("ds4_q_matmul: negative shape n=%d out=%d", n, out);
        return -1;
    }
    ds4_q_dot_fn dot = ds4_q_dot_kernel(t, simd);
    size_t wb = ds4_q_row_bytes(t, in), xb = ds4_q_act_row_bytes(t, in);
    int ntiles = (out + TILE_OUT - 1) / TILE_OUT;
    int par = simd && (double)n * in * out > 262144.0;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int tile = 0; tile < ntiles; tile++) {
        int o0 = tile * TILE_OUT, o1 = DS4_MIN(out, o0 + TILE_OUT);
        for (int r0 = 0; r0 < n; r0 += 4) {
            int nx = DS4_MIN(4, n - r0), nw = nx == 1 ? 4 : nx == 2 ? 2 : 1;
            const char *xr = (const char *)xq + (size_t)r0 * xb;
            for (int o = o0; o < o1; o += nw)
                dot(in, (const char *)w + (size_t)o * wb, wb, DS4_MIN(nw, o1 - o), xr, xb, nx,
                    y + (size_t)r0 * out + o, (size_t)out);
        }
    }
    return 0;
}

/* One weight row per kernel call: the rows are then read as one sequential
 * stream, which from DRAM measured faster on one core than 4-row tiles (Q8_0
 * ~1.3-2x, Q4_0 about even) although each row reloads the activations (L1). */
void ds4_q_matvec_rows(ds4_qtype t, float *y, const void *xq, const void *w, int in, int rows) {
    ds4_q_dot_fn dot = ds4_q_dot_kernel(t, 1);
    const size_t wb = ds4_q_row_bytes(t, in);
    int o = 0;
    for (; o + 4 <= rows; o += 4) dot(in, (const char *)w + (size_t)o * wb, wb, 4, xq, 0, 1, y + o, 1);
    for (; o < rows; o++) dot(in, (const char *)w + (size_t)o * wb, wb, 1, xq, 0, 1, y + o, 1);
}

int ds4_q_matmul_q(ds4_qtype t, float *y, const void *xq, const void *w, int n, int in, int out) {
    return matmul_q(t, y, xq, w, n, in, out, 1);
}

static int matmul(ds4_qtype t, float *y, const float *x, const void *w, int n, int in, int out,
                  int simd) {
    if (check_shape(t, in, "ds4_q_matmul")) return -1;
    if (n < 0 || out < 0) {
        ds4_set_error("ds4_q_matmul: negative shape n=%d out=%d", n, out);
        return -1;
    }
    if (t == DS4_Q_F32) return matmul_q(t, y, x, w, n, in, out, simd);
    void *xq = ds4_alloc_aligned((size_t)n * ds4_q_act_row_bytes(t, in) + 64);
    if (!xq) return -1;
    int rc = ds4_q_quantize_act(t, x, xq, n, in);
    if (!rc) rc = matmul_q(t, y, xq, w, n, in, out, simd);
    free(xq);
    return rc;
}

int ds4_q_matmul(ds4_qtype t, float *y, const float *x, const void *w, int n, int in, int out) {
    return matmul(t, y, x, w, n, in, out, 1);
}

int ds4_q_matmul_ref(ds4_qtype t, float *y, const float *x, const void *w, int n, int in, int out) {
    return matmul(t, y, x, w, n, in, out, 0);
}
