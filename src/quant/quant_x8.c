/* quant_x8.c — the 8-row interleaved in-memory layout (x8, see quant.h):
 * conversion from and to ggml's row layout, and its matmul drivers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "quant/quant.h"
#include "util/util.h"

/* 2-byte header fields per block: d (Q8_0, Q4_0) or d and dmin (Q4_K) */
static int head_fields(ds4_qtype t) { return t == DS4_Q_Q4_K ? 2 : 1; }

int ds4_q_x8_usable(ds4_qtype t, int rows) {
#ifdef __AVX2__
    return (t == DS4_Q_Q8_0 || t == DS4_Q_Q4_0 || t == DS4_Q_Q4_K) && rows > 0 && rows % 8 == 0;
#else
    (void)t; (void)rows;
    return 0;
#endif
}

/* one group of 8 rows (rb bytes each, nb blocks): row layout <-> x8; to_x8
 * selects the direction. The two buffers must not overlap. */
static void group_convert(ds4_qtype t, const char *src, char *dst, size_t rb, int nb, int to_x8) {
    const size_t bb = ds4_q_block_bytes(t);
    const int nh = head_fields(t), nw = (int)(bb - 2 * (size_t)nh) / 4;
    for (int b = 0; b < nb; b++) {
        const size_t unit = (size_t)b * 8 * bb;      /* block b of the group, x8 */
        for (int r = 0; r < 8; r++) {
            const size_t row = (size_t)r * rb + (size_t)b * bb;   /* block b of row r, row layout */
            for (int f = 0; f < nh; f++) {
                const size_t xo = unit + 16 * (size_t)f + 2 * (size_t)r, ro = row + 2 * (size_t)f;
                memcpy(to_x8 ? dst + xo : dst + ro, to_x8 ? src + ro : src + xo, 2);
            }
            for (int w = 0; w < nw; w++) {
                const size_t xo = unit + 16 * (size_t)nh + 32 * (size_t)w + 4 * (size_t)r;
                const size_t ro = row + 2 * (size_t)nh + 4 * (size_t)w;
                memcpy(to_x8 ? dst + xo : dst + ro, to_x8 ? src + ro : src + xo, 4);
            }
        }
    }
}

static int convert(ds4_qtype t, const void *src, void *dst, int rows, int in, int to_x8) {
    if (!ds4_q_x8_usable(t, rows)) {
        ds4_set_error("x8 layout: %s with %d rows has none (a multiple of 8 rows of q8_0/q4_0/q4_k, AVX2)",
                      ds4_q_type_name(t), rows);
        return -1;
    }
    const size_t rb = ds4_q_row_bytes(t, in);
    if (!rb) return -1;
    const int nb = in / ds4_q_block_elems(t);
    char *tmp = NULL;
    if (src == dst && !(tmp = malloc(8 * rb))) {
        ds4_set_error("x8 layout: out of memory");
        return -1;
    }
    for (int g = 0; g < rows / 8; g++) {
        const char *s = (const char *)src + (size_t)g * 8 * rb;
        char *d = (char *)dst + (size_t)g * 8 * rb;
        if (tmp) {
            memcpy(tmp, s, 8 * rb);
            s = tmp;
        }
        group_convert(t, s, d, rb, nb, to_x8);
    }
    free(tmp);
    return 0;
}

int ds4_q_to_x8(ds4_qtype t, const void *src, void *dst, int rows, int in) { return convert(t, src, dst, rows, in, 1); }
int ds4_q_from_x8(ds4_qtype t, const void *src, void *dst, int rows, int in) { return convert(t, src, dst, rows, in, 0); }

#ifdef __AVX2__
typedef void (*x8_fn)(int n, const void *w8, const void *x, size_t xs, int nx, const int32_t *aux, float *o, size_t os);

static x8_fn x8_kernel(ds4_qtype t) {
    return t == DS4_Q_Q8_0 ? ds4_dot_x8_q8_0_avx2 : t == DS4_Q_Q4_0 ? ds4_dot_x8_q4_0_avx2 : ds4_dot_x8_q4_K_avx2;
}

/* Q4_0's per-block activation terms for rows xq [nx, xb]: a per-thread buffer,
 * grown as needed; NULL for the other types, and when out of memory. */
static _Thread_local int32_t *tl_aux;
static _Thread_local size_t tl_aux_cap;

static const int32_t *act_aux(ds4_qtype t, const void *xq, size_t xb, int nx, int in, int *oom) {
    *oom = 0;
    if (t != DS4_Q_Q4_0) return NULL;
    const size_t need = 2 * (size_t)nx * (size_t)(in / DS4_QK8_0);
    if (need > tl_aux_cap) {
        free(tl_aux);
        tl_aux_cap = need + need / 2 + 64;
        if (!(tl_aux = malloc(tl_aux_cap * sizeof *tl_aux))) {
            tl_aux_cap = 0;
            *oom = 1;
            return NULL;
        }
    }
    ds4_x8_act_aux_avx2(in, xq, xb, nx, tl_aux);
    return tl_aux;
}
#endif

void ds4_q_act_aux_x8(const void *xq, int in, int32_t *aux) {
#ifdef __AVX2__
    ds4_x8_act_aux_avx2(in, xq, 0, 1, aux);
#else
    (void)xq; (void)in; (void)aux;
#endif
}

void ds4_q_matvec_rows_x8(ds4_qtype t, float *y, const void *xq, const int32_t *aux, const void *w8, int in, int rows) {
#ifdef __AVX2__
    const x8_fn dot = x8_kernel(t);
    const size_t gb = 8 * ds4_q_row_bytes(t, in);
    int oom = 0;
    const int32_t *sx = aux || t != DS4_Q_Q4_0 ? aux : act_aux(t, xq, 0, 1, in, &oom);
    if (oom) {                      /* no checks here: a failure shows as NaN outputs */
        for (int i = 0; i < rows; i++) y[i] = NAN;
        return;
    }
    for (int g = 0; g < rows / 8; g++) dot(in, (const char *)w8 + (size_t)g * gb, xq, 0, 1, sx, y + 8 * g, 1);
#else
    (void)t; (void)xq; (void)aux; (void)w8; (void)in;
    for (int i = 0; i < rows; i++) y[i] = NAN;
#endif
}

/* Groups of 8 output rows are shared out dynamically two at a time; each
 * group meets the activation rows 4 at a time (the unpacked weights serve 4). */
int ds4_q_matmul_x8(ds4_qtype t, float *y, const float *x, const void *w8, int n, int in, int out) {
    if (!ds4_q_x8_usable(t, out) || n < 0) {
        ds4_set_error("ds4_q_matmul_x8: %s weights with %d rows, batch %d: no x8 form", ds4_q_type_name(t), out, n);
        return -1;
    }
#ifdef __AVX2__
    const size_t rb = ds4_q_row_bytes(t, in), xb = ds4_q_act_row_bytes(t, in);
    if (!rb || !xb) return -1;
    const size_t nsx = t == DS4_Q_Q4_0 ? 2 * (size_t)n * (size_t)(in / DS4_QK8_0) : 0;
    char *xq = ds4_alloc_aligned((size_t)n * xb + nsx * sizeof(int32_t) + 64);
    if (!xq) return -1;
    int32_t *sx = nsx ? (int32_t *)(void *)(xq + ((size_t)n * xb + 63) / 64 * 64) : NULL;
    if (ds4_q_quantize_act(t, x, xq, n, in)) { free(xq); return -1; }
    if (sx) ds4_x8_act_aux_avx2(in, xq, xb, n, sx);
    const x8_fn dot = x8_kernel(t);
    const int ng = out / 8, nb = in / ds4_q_block_elems(t);
    const int par = (double)n * in * out > 262144.0;
#pragma omp parallel for schedule(dynamic, 2) if (par)
    for (int g = 0; g < ng; g++)
        for (int r0 = 0; r0 < n; r0 += 4)
            dot(in, (const char *)w8 + (size_t)g * 8 * rb, xq + (size_t)r0 * xb, xb, DS4_MIN(4, n - r0),
                sx ? sx + 2 * (size_t)r0 * nb : NULL, y + (size_t)r0 * out + 8 * (size_t)g, (size_t)out);
    free(xq);
    return 0;
#else
    (void)y; (void)x; (void)w8; (void)in;
    return -1;
#endif
}
