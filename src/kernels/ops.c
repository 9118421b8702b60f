/* ops.c — the dense per-row kernels of ds4: linear layers (OpenBLAS sgemm),
 * RMSNorm, RoPE (rotate-half), SwiGLU and softmax cross-entropy, each with its
 * backward. OpenMP splits rows across threads where the work pays for it. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/kernels.h"
#include "util/util.h"

/* Below this many floats of work a parallel region costs more than it saves. */
#define OPS_PAR_MIN 32768

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
    if (n <= 0 || in <= 0 || out <= 0) return;
    if (dx) /* dx[n,in] += dy[n,out] @ w[out,in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out,
                    1.0f, dy, out, w, in, 1.0f, dx, in);
    if (dw) /* dw[out,in] += dy[n,out]^T @ x[n,in] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n,
                    1.0f, dy, out, x, in, 1.0f, dw, in);
}

/* ---- RMSNorm -------------------------------------------------------------- */

void ds4_rmsnorm(float *y, float *rstd, const float *x, const float *w, int n, int d, float eps) {
    #pragma omp parallel for schedule(static) if ((size_t)n * d >= OPS_PAR_MIN)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;   /* [d] */
        float *yr = y + (size_t)r * d;         /* [d] */
        float ss = 0.0f;
        for (int j = 0; j < d; j++) ss += xr[j] * xr[j];
        float rs = 1.0f / sqrtf(ss / (float)d + eps);
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
            float dot = 0.0f;
            for (int j = 0; j < d; j++) dot += dyr[j] * w[j] * xr[j];
            float c = dot * rs * rs * rs / (float)d;
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

/* Rotates every head of every row by +angle (sign = 1) or -angle (sign = -1).
 * Angles are computed in double: positions reach 1e5+ and a float angle would
 * lose several digits. cos/sin are computed once per (row, i) in chunks and
 * applied to all heads. */
static void rope_apply(float *x, const int *pos, int n, int nh, int hd, float theta, float sign) {
    int half = hd / 2;
    enum { CH = 64, MAXHALF = 512 };
    double inv[MAXHALF];   /* [hd/2] theta^(-2i/hd); beyond head_dim 1024, pow on the fly */
    int tab = half <= MAXHALF;
    for (int i = 0; tab && i < half; i++) inv[i] = pow((double)theta, -2.0 * (double)i / (double)hd);
    #pragma omp parallel for schedule(static) if ((size_t)n * nh * hd >= OPS_PAR_MIN)
    for (int r = 0; r < n; r++) {
        float cs[CH], sn[CH];
        float *xr = x + (size_t)r * nh * hd;  /* [nh, hd] */
        double p = (double)pos[r];
        for (int i0 = 0; i0 < half; i0 += CH) {
            int m = DS4_MIN(CH, half - i0);
            for (int i = 0; i < m; i++) {
                double f = tab ? inv[i0 + i] : pow((double)theta, -2.0 * (double)(i0 + i) / (double)hd);
                double s, c;
                sincos(p * f, &s, &c);
                cs[i] = (float)c;
                sn[i] = sign * (float)s;
            }
            for (int h = 0; h < nh; h++) {
                float *a = xr + (size_t)h * hd + i0, *b = a + half;
                for (int i = 0; i < m; i++) {
                    float x1 = a[i], x2 = b[i];
                    a[i] = x1 * cs[i] - x2 * sn[i];
                    b[i] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
    }
}

void ds4_rope(float *x, const int *pos, int n, int nh, int hd, float theta) {
    rope_apply(x, pos, n, nh, hd, theta, 1.0f);
}

void ds4_rope_backward(float *dx, const int *pos, int n, int nh, int hd, float theta) {
    /* The rotation is orthogonal: its transpose is the rotation by -angle. */
    rope_apply(dx, pos, n, nh, hd, theta, -1.0f);
}

/* ---- SwiGLU --------------------------------------------------------------- */

void ds4_swiglu(float *h, const float *g, const float *u, size_t n) {
    #pragma omp parallel for schedule(static) if (n >= 4 * OPS_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        h[i] = g[i] * s * u[i];
    }
}

/* silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g). */
void ds4_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                         const float *u, size_t n) {
    #pragma omp parallel for schedule(static) if (n >= 4 * OPS_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], ui = u[i], d = dh[i];
        float s = 1.0f / (1.0f + expf(-gi));
        dg[i] = d * ui * s * (1.0f + gi * (1.0f - s));
        du[i] = d * gi * s;
    }
}

/* ---- softmax cross-entropy ------------------------------------------------ */

/* One row: loss = log(sum_j exp(l_j - m)) + m - l_t, max-subtracted. Writes
 * dlogits (which may alias logits) after everything is read. */
static double xent_row(float *dl, const float *l, int t, int V, float scale) {
    if (t < 0) {
        if (dl) memset(dl, 0, (size_t)V * sizeof(float));
        return 0.0;
    }
    float m = l[0];
    for (int j = 1; j < V; j++) m = l[j] > m ? l[j] : m;
    double sum = 0.0;
    for (int j = 0; j < V; j++) sum += (double)expf(l[j] - m);
    double lt = (double)l[t];
    double loss = log(sum) + (double)m - lt;
    if (dl) {
        float inv = (float)(1.0 / sum) * scale;
        for (int j = 0; j < V; j++) dl[j] = expf(l[j] - m) * inv;
        dl[t] -= scale;
    }
    return loss;
}

double ds4_softmax_xent(float *dlogits, const float *logits, const int *targets,
                        int n, int V, float scale) {
    if (n <= 0 || V <= 0) return 0.0;
    /* Per-thread partial sums over static row blocks, added in thread order:
     * the result depends only on the thread count, not on timing. */
    enum { MAXT = 256 };
    double part[MAXT];
    int nt_used = 1;
    #pragma omp parallel if ((size_t)n * V >= OPS_PAR_MIN) num_threads(DS4_MIN(omp_get_max_threads(), MAXT))
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int r0 = (int)((long)n * t / nt), r1 = (int)((long)n * (t + 1) / nt);
        double acc = 0.0;
        for (int r = r0; r < r1; r++) {
            int tg = targets[r];
            if (tg >= V) tg = -1;   /* out-of-range target: treated as ignored */
            acc += xent_row(dlogits ? dlogits + (size_t)r * V : NULL,
                            logits + (size_t)r * V, tg, V, scale);
        }
        part[t] = acc;
        if (t == 0) nt_used = nt;
    }
    double loss = 0.0;
    for (int t = 0; t < nt_used; t++) loss += part[t];
    return loss;
}
