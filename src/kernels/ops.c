/* ops.c — the dense per-row kernels of ds4: linear layers (OpenBLAS sgemm),
 * RMSNorm, RoPE (rotate-half), SwiGLU and softmax cross-entropy, each with its
 * backward. OpenMP splits rows across threads where the work pays for it;
 * AVX2+FMA paths (exp, dot products) when the compiler targets them. Every
 * result is independent of the thread count. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/tile.h"
#include "util/util.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OPS_SIMD 1
#else
#define OPS_SIMD 0
#endif

/* Below this many floats of work a parallel region costs more than it saves. */
#define OPS_PAR_MIN 32768

/* ---- vector helpers --------------------------------------------------------- */

#if OPS_SIMD
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for 8 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts
 * so r is exact to ~1e-10), e^r by a degree-7 Taylor polynomial (relative
 * error < 2e-8 before rounding), 2^n through the exponent bits. Gives +0
 * below -87.3 and +inf above 88.7; NaN stays NaN (the max/min keep their
 * second operand, x, when it is NaN). */
static inline __m256 exp_ps(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.72283f), lo = _mm256_set1_ps(-87.33654f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);     /* ln2 high bits */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.4286068203094172e-06f), r);        /* ln2 - high */
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n in two halves: n reaches 128 at the top of the range */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    p = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    p = _mm256_andnot_ps(under, p);
    return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
}

/* Sum of a[i] * b[i] * c[i] over n, in float with 16 lanes of partial sums (as ds4_tile_dot). */
static inline float dot3_ps(const float *a, const float *b, const float *c, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)), _mm256_loadu_ps(c + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)),
                             _mm256_loadu_ps(c + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)), _mm256_loadu_ps(c + i), s0);
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i] * c[i];
    return s;
}
#else
static inline float dot3_ps(const float *a, const float *b, const float *c, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i] * c[i];
    return s;
}
#endif

/* ---- linear layers -------------------------------------------------------- */

void ds4_matmul(float *y, const float *x, const float *w, int n, int in, int out, int acc) {
    if (n <= 0 || out <= 0) return;
    if (in <= 0) {                      /* empty contraction: y = 0 (or unchanged) */
        if (!acc) memset(y, 0, (size_t)n * out * sizeof(float));
        return;
    }
    /* y[n,out] = x[n,in] @ w[out,in]^T; a few rows (decode): one pass over w */
    if (n <= 4) { ds4_matmul_small(y, x, w, n, in, out, acc); return; }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in,
                1.0f, x, in, w, in, acc ? 1.0f : 0.0f, y, out);
}

void ds4_matmul_backward(float *dx, float *dw, const float *dy, const float *x,
                         const float *w, int n, int in, int out) {
    ds4_matmul_backward_ex(dx, dw, dy, (size_t)out, x, w, n, in, out, 1);
}

void ds4_matmul_backward_ex(float *dx, float *dw, const float *dy, size_t ldy, const float *x,
                            const float *w, int n, int in, int out, int dx_acc) {
    if (n <= 0 || in <= 0) return;
    if (out <= 0) {                     /* empty contraction: dx = 0 (or unchanged) */
        if (dx && !dx_acc)
            for (int r = 0; r < n; r++) memset(dx + (size_t)r * in, 0, (size_t)in * sizeof(float));
        return;
    }
    /* Two threads: the dx and dw products (equal FLOPs) run side by side,
     * one single-threaded sgemm each, instead of one after the other with
     * OpenBLAS splitting each across both threads: no synchronisation inside
     * the products, which matters when the cores are shared. Deterministic:
     * each product always runs on one thread. */
    if (dx && dw && omp_get_max_threads() == 2 && !omp_in_parallel() &&
        (double)n * in * out >= (double)(1 << 21)) {
        #pragma omp parallel num_threads(2)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            if (t == 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out,
                            1.0f, dy, (int)ldy, w, in, dx_acc ? 1.0f : 0.0f, dx, in);
            if (t == 1 || nt == 1)     /* a team of one does both */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n,
                            1.0f, dy, (int)ldy, x, in, 1.0f, dw, in);
        }
        return;
    }
    if (dx) /* dx[n,in] (+)= dy[n,out] @ w[out,in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out,
                    1.0f, dy, (int)ldy, w, in, dx_acc ? 1.0f : 0.0f, dx, in);
    if (dw) /* dw[out,in] += dy[n,out]^T @ x[n,in] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n,
                    1.0f, dy, (int)ldy, x, in, 1.0f, dw, in);
}

/* ---- RMSNorm -------------------------------------------------------------- */

void ds4_rmsnorm(float *y, float *rstd, const float *x, const float *w, int n, int d, float eps) {
    #pragma omp parallel for schedule(static) if ((size_t)n * d >= OPS_PAR_MIN)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;   /* [d] */
        float *yr = y + (size_t)r * d;         /* [d] */
        float rs = 1.0f / sqrtf(ds4_tile_dot(xr, xr, d) / (float)d + eps);
        if (rstd) rstd[r] = rs;
        for (int j = 0; j < d; j++) yr[j] = xr[j] * rs * w[j];
    }
}

/* y_j = x_j r w_j with r = (mean(x^2) + eps)^(-1/2), so
 * dx_j = r w_j dy_j - x_j r^3/d * sum_k dy_k w_k x_k,  dw_j = sum_rows dy_j x_j r. */
void ds4_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                          const float *w, const float *rstd, int n, int d) {
    int par = (size_t)n * d >= OPS_PAR_MIN;
    if (dx) {
        #pragma omp parallel for schedule(static) if (par)
        for (int r = 0; r < n; r++) {
            const float *xr = x + (size_t)r * d, *dyr = dy + (size_t)r * d;  /* [d] */
            float *dxr = dx + (size_t)r * d;                                /* [d] */
            float rs = rstd[r];
            float c = dot3_ps(dyr, w, xr, d) * rs * rs * rs / (float)d;
            for (int j = 0; j < d; j++) dxr[j] += rs * w[j] * dyr[j] - c * xr[j];
        }
    }
    if (dw) {
        /* Threads own column strips of dw: race-free, deterministic. */
        #pragma omp parallel if (par)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int j0 = (int)((long)d * t / nt), j1 = (int)((long)d * (t + 1) / nt);
            for (int r = 0; r < n; r++) {
                const float *xr = x + (size_t)r * d, *dyr = dy + (size_t)r * d;
                float rs = rstd[r];
                for (int j = j0; j < j1; j++) dw[j] += dyr[j] * xr[j] * rs;
            }
        }
    }
}

/* ---- RoPE ----------------------------------------------------------------- */

/* Rotates the nh heads of one row x [nh, hd] by the angles whose cos/sin
 * (sign applied to sin) are cs, sn [hd/2]. */
static inline void rope_row(float *x, const float *cs, const float *sn, int nh, int hd) {
    int half = hd / 2;
    for (int h = 0; h < nh; h++) {
        float *a = x + (size_t)h * hd, *b = a + half;
        for (int i = 0; i < half; i++) {
            float x1 = a[i], x2 = b[i];
            a[i] = x1 * cs[i] - x2 * sn[i];
            b[i] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

/* Rotates every head of every row by +angle (sign = 1) or -angle (sign = -1).
 * Angles are computed in double: positions reach 1e5+ and a float angle would
 * lose several digits. Rows come in fixed blocks of ROPE_RB: the first row of
 * a block (and any row whose position does not follow the previous row's)
 * takes sincos of pos * theta^(-2i/hd); the next ones rotate the previous
 * (cos, sin) by one position step in double (error ~1e-15 after a block,
 * far below float rounding). Blocks do not depend on the thread count. */
#define ROPE_RB 32
static void rope_apply(float *x, size_t ld, const int *pos, int n, int nh, int hd, float theta, float sign) {
    int half = hd / 2;
    enum { MAXHALF = 256 };
    if (half > MAXHALF) {     /* beyond head_dim 512: sincos per row, pow on the fly */
        #pragma omp parallel for schedule(static) if ((size_t)n * nh * hd >= OPS_PAR_MIN)
        for (int r = 0; r < n; r++) {
            float cs[64], sn[64];
            for (int i0 = 0; i0 < half; i0 += 64) {
                int m = DS4_MIN(64, half - i0);
                for (int i = 0; i < m; i++) {
                    double s, c;
                    sincos((double)pos[r] * pow((double)theta, -2.0 * (double)(i0 + i) / (double)hd), &s, &c);
                    cs[i] = (float)c;
                    sn[i] = sign * (float)s;
                }
                for (int h = 0; h < nh; h++) {
                    float *a = x + (size_t)r * ld + (size_t)h * hd + i0, *b = a + half;
                    for (int i = 0; i < m; i++) {
                        float x1 = a[i], x2 = b[i];
                        a[i] = x1 * cs[i] - x2 * sn[i];
                        b[i] = x2 * cs[i] + x1 * sn[i];
                    }
                }
            }
        }
        return;
    }
    double inv[MAXHALF], cf[MAXHALF], sf[MAXHALF];   /* [hd/2] theta^(-2i/hd), its cos, sin */
    for (int i = 0; i < half; i++) {
        inv[i] = pow((double)theta, -2.0 * (double)i / (double)hd);
        sincos(inv[i], &sf[i], &cf[i]);
    }
    const int nb = (n + ROPE_RB - 1) / ROPE_RB;
    #pragma omp parallel for schedule(static) if ((size_t)n * nh * hd >= OPS_PAR_MIN)
    for (int bk = 0; bk < nb; bk++) {
        double c[MAXHALF], s[MAXHALF];
        float cs[MAXHALF], sn[MAXHALF];
        const int r0 = bk * ROPE_RB, r1 = DS4_MIN(n, r0 + ROPE_RB);
        for (int r = r0; r < r1; r++) {
            if (r == r0 || (long)pos[r] != (long)pos[r - 1] + 1) {
                const double p = (double)pos[r];
                for (int i = 0; i < half; i++) sincos(p * inv[i], &s[i], &c[i]);
            } else {
                for (int i = 0; i < half; i++) {
                    const double c0 = c[i], s0 = s[i];
                    c[i] = c0 * cf[i] - s0 * sf[i];
                    s[i] = s0 * cf[i] + c0 * sf[i];
                }
            }
            for (int i = 0; i < half; i++) {
                cs[i] = (float)c[i];
                sn[i] = sign * (float)s[i];
            }
            rope_row(x + (size_t)r * ld, cs, sn, nh, hd);
        }
    }
}

void ds4_rope(float *x, const int *pos, int n, int nh, int hd, float theta) {
    rope_apply(x, (size_t)nh * hd, pos, n, nh, hd, theta, 1.0f);
}

void ds4_rope_backward(float *dx, const int *pos, int n, int nh, int hd, float theta) {
    /* The rotation is orthogonal: its transpose is the rotation by -angle. */
    rope_apply(dx, (size_t)nh * hd, pos, n, nh, hd, theta, -1.0f);
}

void ds4_rope_backward_ld(float *dx, size_t ld, const int *pos, int n, int nh, int hd, float theta) {
    rope_apply(dx, ld, pos, n, nh, hd, theta, -1.0f);
}

/* ---- SwiGLU --------------------------------------------------------------- */

/* Elements per OpenMP chunk of the flat SwiGLU loops (a multiple of 8). */
#define SWIGLU_CHUNK 4096

/* h = g s u with s = sigmoid(g), for i in [i0, i1). */
static void swiglu_range(float *h, const float *g, const float *u, size_t i0, size_t i1) {
    size_t i = i0;
#if OPS_SIMD
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= i1; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 sv = _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(zero, gv))));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(gv, sv), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < i1; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i]));
        h[i] = g[i] * sg * u[i];
    }
}

void ds4_swiglu(float *h, const float *g, const float *u, size_t n) {
    const size_t nc = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
    #pragma omp parallel for schedule(static) if (n >= 4 * OPS_PAR_MIN)
    for (size_t c = 0; c < nc; c++)
        swiglu_range(h, g, u, c * SWIGLU_CHUNK, DS4_MIN(n, (c + 1) * SWIGLU_CHUNK));
}

/* silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g). */
static void swiglu_backward_range(float *dg, float *du, const float *dh, const float *g, const float *u,
                                  size_t i0, size_t i1) {
    size_t i = i0;
#if OPS_SIMD
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= i1; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i), d = _mm256_loadu_ps(dh + i);
        __m256 sv = _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(zero, gv))));
        __m256 gs = _mm256_mul_ps(gv, sv);
        /* d u s (1 + g (1 - s)) = d u (s + g s (1 - s)) */
        __m256 ds = _mm256_fmadd_ps(gs, _mm256_sub_ps(one, sv), sv);
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(d, uv), ds));
        _mm256_storeu_ps(du + i, _mm256_mul_ps(d, gs));
    }
#endif
    for (; i < i1; i++) {
        float gi = g[i], ui = u[i], d = dh[i];
        float sg = 1.0f / (1.0f + expf(-gi));
        dg[i] = d * ui * sg * (1.0f + gi * (1.0f - sg));
        du[i] = d * gi * sg;
    }
}

void ds4_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                         const float *u, size_t n) {
    const size_t nc = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
    #pragma omp parallel for schedule(static) if (n >= 4 * OPS_PAR_MIN)
    for (size_t c = 0; c < nc; c++)
        swiglu_backward_range(dg, du, dh, g, u, c * SWIGLU_CHUNK, DS4_MIN(n, (c + 1) * SWIGLU_CHUNK));
}

void ds4_swiglu_backward_rows(float *dgu, const float *dh, const float *g, const float *u, int n, int F) {
    #pragma omp parallel for schedule(static) if ((size_t)n * F >= 4 * OPS_PAR_MIN)
    for (int r = 0; r < n; r++) {
        const size_t o = (size_t)r * F;
        float *dg = dgu + 2 * o;
        /* the range kernel indexes its outputs like its inputs: offset them back by o */
        swiglu_backward_range(dg - o, dg + F - o, dh, g, u, o, o + F);
    }
}

/* ---- softmax cross-entropy ------------------------------------------------ */

/* One row: loss = log(sum_j exp(l_j - m)) + m - l_t, max-subtracted. With dl
 * (which may alias l) a single exp pass: dl holds exp(l_j - m) while the sum
 * runs, then is scaled in place. */
static double xent_row(float *dl, const float *l, int t, int V, float scale) {
    if (t < 0) {
        if (dl) memset(dl, 0, (size_t)V * sizeof(float));
        return 0.0;
    }
    const double lt = (double)l[t];
    int j = 0;
    float m = l[0];
#if OPS_SIMD
    if (V >= 8) {
        __m256 mv = _mm256_loadu_ps(l);
        for (j = 8; j + 8 <= V; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(l + j));
        m = hmax8(mv);
    }
#endif
    for (; j < V; j++) m = l[j] > m ? l[j] : m;
    double sum = 0.0;
    j = 0;
#if OPS_SIMD
    const __m256 mv = _mm256_set1_ps(m);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; j + 8 <= V; j += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(l + j), mv));
        if (dl) _mm256_storeu_ps(dl + j, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sv[4];
    _mm256_storeu_pd(sv, _mm256_add_pd(s0, s1));
    sum = (sv[0] + sv[1]) + (sv[2] + sv[3]);
#endif
    for (; j < V; j++) {
        float e = expf(l[j] - m);
        if (dl) dl[j] = e;
        sum += (double)e;
    }
    double loss = log(sum) + (double)m - lt;
    if (dl) {
        float inv = (float)(1.0 / sum) * scale;
        for (j = 0; j < V; j++) dl[j] *= inv;
        dl[t] -= scale;
    }
    return loss;
}

double ds4_softmax_xent(float *dlogits, const float *logits, const int *targets,
                        int n, int V, float scale) {
    if (n <= 0 || V <= 0) return 0.0;
    /* Per-row losses summed in row order: the result does not depend on the
     * thread count. */
    double *rl = ds4_malloc((size_t)n * sizeof(double));
    if (!rl) return NAN;
    #pragma omp parallel for schedule(static) if ((size_t)n * V >= OPS_PAR_MIN)
    for (int r = 0; r < n; r++) {
        int tg = targets[r];
        if (tg >= V) tg = -1;   /* out-of-range target: treated as ignored */
        rl[r] = xent_row(dlogits ? dlogits + (size_t)r * V : NULL, logits + (size_t)r * V, tg, V, scale);
    }
    double loss = 0.0;
    for (int r = 0; r < n; r++) loss += rl[r];
    free(rl);
    return loss;
}
