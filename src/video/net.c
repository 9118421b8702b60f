/* net.c — the video tokenizer network: parameter layout over one flat buffer,
 * initialisation, forward and backward of encoder -> FSQ -> decoder on latent
 * grids (depthwise-separable residual blocks), and chunked encode/decode of
 * whole clips. The architecture is described in video.h (ds4_vtok_config). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "kernels/kernels.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

#define VTOK_NORM_EPS 1e-5f
#define VTOK_PIXBLK   64     /* pixels per block in the palette softmax */
#define VTOK_PAR_MIN  (1 << 18)  /* elements of work below which loops stay on one thread */
#define VTOK_ZMAX     2.0f   /* FSQ inputs beyond +-2 are penalised (see ds4_vtok_ws_options) */

/* ---- parameter layout ------------------------------------------------------ */

typedef struct { float *w, *b; } vlin;            /* w [out, in], b [out] */
typedef struct {
    vlin   dw;                                     /* w [H, K] depthwise taps, b [H] */
    float *norm;                                   /* [H] */
    vlin   fc1;                                    /* [F, H] */
    vlin   fc2;                                    /* [H, F] */
} vblock;
typedef struct {
    vlin   patch;                                  /* [H, P] */
    vblock eb[DS4_VTOK_MAX_LAYERS];
    float *enorm;                                  /* [H] */
    vlin   proj;                                   /* [C, H] */
    vlin   embed;                                  /* [H, K*C] */
    vblock db[DS4_VTOK_MAX_LAYERS];
    float *dnorm;                                  /* [H] */
    vlin   head;                                   /* [D, H] */
    vlin   out;                                    /* [n_out, D] */
} vtok_w;

static void add_tensor(ds4_vtok *m, size_t *off, const char *name, int d0, int d1) {
    ds4_vtok_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "video.%s", name);
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
    t->numel = (size_t)d0 * (d1 > 0 ? d1 : 1);
    t->off = *off;
    t->decay = t->ndim == 2;
    *off += t->numel;
}

static void add_lin(ds4_vtok *m, size_t *off, const char *name, int out, int in) {
    char n[56];
    snprintf(n, sizeof n, "%s.weight", name);
    add_tensor(m, off, n, out, in);
    snprintf(n, sizeof n, "%s.bias", name);
    add_tensor(m, off, n, out, 0);
}

static void add_block(ds4_vtok *m, size_t *off, const char *prefix, int l) {
    const int H = m->cfg.hidden, F = m->cfg.ffn;
    char n[56];
    snprintf(n, sizeof n, "%s.blocks.%d.dw", prefix, l);
    add_lin(m, off, n, H, m->K);
    snprintf(n, sizeof n, "%s.blocks.%d.norm.weight", prefix, l);
    add_tensor(m, off, n, H, 0);
    snprintf(n, sizeof n, "%s.blocks.%d.fc1", prefix, l);
    add_lin(m, off, n, F, H);
    snprintf(n, sizeof n, "%s.blocks.%d.fc2", prefix, l);
    add_lin(m, off, n, H, F);
}

/* Pointers of every tensor into base (params or grads), in tensor order. */
static void bind(const ds4_vtok *m, float *base, vtok_w *w) {
    int i = 0;
#define LIN(l) do { (l).w = base + m->tensors[i].off; (l).b = base + m->tensors[i + 1].off; i += 2; } while (0)
#define VEC(p) do { (p) = base + m->tensors[i].off; i++; } while (0)
#define BLOCK(bk) do { LIN((bk).dw); VEC((bk).norm); LIN((bk).fc1); LIN((bk).fc2); } while (0)
    LIN(w->patch);
    for (int l = 0; l < m->cfg.enc_layers; l++) BLOCK(w->eb[l]);
    VEC(w->enorm);
    LIN(w->proj);
    LIN(w->embed);
    for (int l = 0; l < m->cfg.dec_layers; l++) BLOCK(w->db[l]);
    VEC(w->dnorm);
    LIN(w->head);
    LIN(w->out);
#undef LIN
#undef VEC
#undef BLOCK
}

static ds4_vtok *vtok_alloc(const ds4_vtok_config *c) {
    if (ds4_vtok_config_validate(c) != 0) return NULL;
    ds4_vtok *m = ds4_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *c;
    ds4_fsq_init(&m->fsq, c->levels, c->n_levels);
    m->P = c->tubelet * c->patch * c->patch * 3;
    m->n_out = c->palette ? m->P / 3 * DS4_WC_COUNT : m->P;
    m->K = c->causal ? 18 : 27;
    const int H = c->hidden, C = c->n_levels, K = m->K;
    size_t off = 0;
    add_lin(m, &off, "encoder.patch", H, m->P);
    for (int l = 0; l < c->enc_layers; l++) add_block(m, &off, "encoder", l);
    add_tensor(m, &off, "encoder.norm.weight", H, 0);
    add_lin(m, &off, "encoder.proj", C, H);
    add_lin(m, &off, "decoder.embed", H, K * C);
    for (int l = 0; l < c->dec_layers; l++) add_block(m, &off, "decoder", l);
    add_tensor(m, &off, "decoder.norm.weight", H, 0);
    add_lin(m, &off, "decoder.head", c->head, H);
    add_lin(m, &off, "decoder.out", m->n_out, c->head);
    m->n_params = off;
    m->params = ds4_alloc_aligned(off * sizeof(float));
    if (!m->params) { free(m); return NULL; }
    return m;
}

ds4_vtok *ds4_vtok_new(const ds4_vtok_config *c, uint64_t seed) {
    ds4_vtok *m = vtok_alloc(c);
    if (!m) return NULL;
    ds4_rng rng;
    ds4_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        const ds4_vtok_tensor *t = &m->tensors[i];
        float *p = m->params + t->off;
        if (t->ndim == 1) {
            /* norm scales 1, biases 0 */
            float v = strstr(t->name, "norm.weight") ? 1.0f : 0.0f;
            for (size_t k = 0; k < t->numel; k++) p[k] = v;
            continue;
        }
        /* LeCun normal; residual branch outputs and the pixel output start smaller */
        float std = 1.0f / sqrtf((float)t->shape[1]);
        if (strstr(t->name, ".fc2.")) std *= 0.25f;
        if (strstr(t->name, "decoder.out.")) std *= 0.5f;
        for (size_t k = 0; k < t->numel; k++) p[k] = std * ds4_rng_normal(&rng);
    }
    /* the output starts at the background colour (palette: p(background) = 0.77) */
    const ds4_vtok_tensor *ob = ds4_vtok_find(m, "video.decoder.out.bias");
    for (size_t k = 0; k < ob->numel; k++)
        m->params[ob->off + k] = c->palette ? (k / (m->P / 3) == DS4_WC_BACKGROUND ? 3.0f : 0.0f)
                                            : ds4_world_palette[DS4_WC_BACKGROUND][k % 3] / 127.5f - 1.0f;
    return m;
}

ds4_vtok *ds4_vtok_alloc(const ds4_vtok_config *c) { return vtok_alloc(c); }

void ds4_vtok_free(ds4_vtok *m) {
    if (!m) return;
    ds4_vtok_ws_free(m->ws_cache);
    free(m->params);
    free(m);
}

int32_t ds4_vtok_n_codes(const ds4_vtok *m) { return m->fsq.n_codes; }

const ds4_vtok_tensor *ds4_vtok_find(const ds4_vtok *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

/* ---- patches ------------------------------------------------------------------ */

void ds4_vtok_patchify(const uint8_t *rgb, int T, int H, int W, int tubelet, int patch,
                       int flip, float *x) {
    const int Tl = (T + tubelet - 1) / tubelet, Gh = H / patch, Gw = W / patch;
    const size_t P = (size_t)tubelet * patch * patch * 3;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)Tl * Gh * Gw * P >= VTOK_PAR_MIN)
    for (int t = 0; t < Tl; t++)
        for (int gy = 0; gy < Gh; gy++)
            for (int gx = 0; gx < Gw; gx++) {
                float *dst = x + (((size_t)t * Gh + gy) * Gw + gx) * P;
                for (int f = 0; f < tubelet; f++) {
                    int fr = DS4_MIN(t * tubelet + f, T - 1);
                    for (int r = 0; r < patch; r++) {
                        const uint8_t *row = rgb + (((size_t)fr * H) + gy * patch + r) * W * 3;
                        for (int c = 0; c < patch; c++) {
                            int col = gx * patch + c;
                            if (flip) col = W - 1 - col;
                            for (int ch = 0; ch < 3; ch++)
                                *dst++ = row[col * 3 + ch] * (1.0f / 127.5f) - 1.0f;
                        }
                    }
                }
            }
}

void ds4_vtok_unpatchify(const float *y, int Tl, int H, int W, int tubelet, int patch,
                         uint8_t *rgb) {
    const int Gh = H / patch, Gw = W / patch;
    const size_t P = (size_t)tubelet * patch * patch * 3;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)Tl * Gh * Gw * P >= VTOK_PAR_MIN)
    for (int t = 0; t < Tl; t++)
        for (int gy = 0; gy < Gh; gy++)
            for (int gx = 0; gx < Gw; gx++) {
                const float *src = y + (((size_t)t * Gh + gy) * Gw + gx) * P;
                for (int f = 0; f < tubelet; f++)
                    for (int r = 0; r < patch; r++) {
                        uint8_t *row = rgb + (((size_t)(t * tubelet + f) * H) + gy * patch + r) * W * 3;
                        for (int c = 0; c < patch * 3; c++) {
                            float v = (*src++ + 1.0f) * 127.5f + 0.5f;   /* round half up */
                            v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
                            row[gx * patch * 3 + c] = (uint8_t)v;
                        }
                    }
            }
}

/* ---- neighbourhood gather on the latent grid -------------------------------- *
 * Grid [S][Tl][Gh][Gw] tokens of Ch channels. Tap k = (dt, dy, dx) with dt in
 * {-1, 0} (causal) or {-1, 0, 1}, dy, dx in {-1, 0, 1}, in that nesting order.
 * dst [N, K*Ch]: dst[n, k*Ch + c] = src[n + offset(k), c], 0 outside the grid. */
typedef struct { int S, Tl, Gh, Gw; } grid;

static inline void grid_tap(int k, int *dt, int *dy, int *dx) {
    *dt = k / 9 - 1;
    *dy = (k / 3) % 3 - 1;
    *dx = k % 3 - 1;
}

static void gather(const grid *g, const float *src, float *dst, int Ch, int K) {
    const int rows = g->S * g->Tl * g->Gh;
#pragma omp parallel for schedule(static) if ((size_t)rows * g->Gw * K * Ch >= VTOK_PAR_MIN)
    for (int row = 0; row < rows; row++) {
        int y = row % g->Gh, t = (row / g->Gh) % g->Tl, s = row / (g->Gh * g->Tl);
        for (int x = 0; x < g->Gw; x++) {
            size_t n = (size_t)row * g->Gw + x;
            float *d = dst + n * K * Ch;
            for (int k = 0; k < K; k++) {
                int dt, dy, dx;
                grid_tap(k, &dt, &dy, &dx);
                int t2 = t + dt, y2 = y + dy, x2 = x + dx;
                if (t2 < 0 || t2 >= g->Tl || y2 < 0 || y2 >= g->Gh || x2 < 0 || x2 >= g->Gw) {
                    memset(d + (size_t)k * Ch, 0, (size_t)Ch * sizeof(float));
                } else {
                    size_t m2 = (((size_t)s * g->Tl + t2) * g->Gh + y2) * g->Gw + x2;
                    memcpy(d + (size_t)k * Ch, src + m2 * Ch, (size_t)Ch * sizeof(float));
                }
            }
        }
    }
}

/* Adjoint of gather: dsrc[m, c] += sum over taps k of ddst[m - offset(k), k*Ch + c]. */
static void scatter_add(const grid *g, const float *ddst, float *dsrc, int Ch, int K) {
    const int rows = g->S * g->Tl * g->Gh;
#pragma omp parallel for schedule(static) if ((size_t)rows * g->Gw * K * Ch >= VTOK_PAR_MIN)
    for (int row = 0; row < rows; row++) {
        int y = row % g->Gh, t = (row / g->Gh) % g->Tl, s = row / (g->Gh * g->Tl);
        for (int x = 0; x < g->Gw; x++) {
            float *d = dsrc + ((size_t)row * g->Gw + x) * Ch;
            for (int k = 0; k < K; k++) {
                int dt, dy, dx;
                grid_tap(k, &dt, &dy, &dx);
                int t2 = t - dt, y2 = y - dy, x2 = x - dx;
                if (t2 < 0 || t2 >= g->Tl || y2 < 0 || y2 >= g->Gh || x2 < 0 || x2 >= g->Gw) continue;
                size_t n = (((size_t)s * g->Tl + t2) * g->Gh + y2) * g->Gw + x2;
                const float *sp = ddst + n * K * Ch + (size_t)k * Ch;
                for (int c = 0; c < Ch; c++) d[c] += sp[c];
            }
        }
    }
}

/* ---- elementwise pieces ---------------------------------------------------- */

static void linear(float *y, const float *x, const vlin *l, size_t n, int in, int out) {
    ds4_matmul(y, x, l->w, (int)n, in, out, 0);
#pragma omp parallel for schedule(static) if (n * out >= VTOK_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        for (int o = 0; o < out; o++) y[i * out + o] += l->b[o];
}

/* dW += dy^T x, db += colsum(dy), dx = dy W (WRITTEN when dx != NULL). */
static void linear_backward(float *dx, const vlin *gl, const float *dy, const float *x,
                            const vlin *l, size_t n, int in, int out) {
    if (dx) memset(dx, 0, n * in * sizeof(float));
    ds4_matmul_backward(dx, gl->w, dy, x, l->w, (int)n, in, out);
    for (size_t i = 0; i < n; i++)
        for (int o = 0; o < out; o++) gl->b[o] += dy[i * out + o];
}

/* exp(x) to ~1e-7 relative in the normal range (3.8e-6 at the edge of
 * denormals), written so loops over it vectorise (libm's expf does not under
 * -fmath-errno): 2^t = 2^floor(t) * p(t - floor(t)) with a degree-5 fit of 2^f
 * on [0, 1). Results saturate near 2^-126 and 2^128 instead of 0 and inf. */
static inline float vexp(float x) {
    float t = x * 1.44269504089f;
    int32_t i = (int32_t)t;            /* |x| < 1e9 */
    i -= t < (float)i;                 /* floor */
    float f = t - (float)i;
    i = i < -126 ? -126 : i;
    i = i > 127 ? 127 : i;
    float p = 1.8775767e-3f;
    p = p * f + 8.9893397e-3f;
    p = p * f + 5.5826318e-2f;
    p = p * f + 2.4015361e-1f;
    p = p * f + 6.9315308e-1f;
    p = p * f + 9.9999994e-1f;
    int32_t bits = (i + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return p * sc;
}

static inline float sigm(float a) { return 1.0f / (1.0f + vexp(-a)); }

/* h = silu(a) (acc = 0) or h += silu(a) (acc = 1) */
static void silu(float *h, const float *a, size_t n, int acc) {
#pragma omp parallel for simd schedule(static) if (n >= VTOK_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float v = a[i] * sigm(a[i]);
        h[i] = acc ? h[i] + v : v;
    }
}

/* da = dh * silu'(a) (WRITTEN) */
static void silu_backward(float *da, const float *dh, const float *a, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= VTOK_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float s = sigm(a[i]);
        da[i] = dh[i] * s * (1.0f + a[i] * (1.0f - s));
    }
}


/* ---- depthwise convolution over the taps of gather() ----------------------- *
 * u[n, c] = b[c] + sum_k w[c, k] h[n + offset(k), c]; wt [K, H] is w transposed. */
static void dwconv(const grid *g, const float *h, const float *wt, const float *b, float *u,
                   int H, int K) {
    const int rows = g->S * g->Tl * g->Gh;
#pragma omp parallel for schedule(static) if ((size_t)rows * g->Gw * K * H >= VTOK_PAR_MIN)
    for (int row = 0; row < rows; row++) {
        int y = row % g->Gh, t = (row / g->Gh) % g->Tl, s = row / (g->Gh * g->Tl);
        for (int x = 0; x < g->Gw; x++) {
            float *ur = u + ((size_t)row * g->Gw + x) * H;
            memcpy(ur, b, (size_t)H * sizeof(float));
            for (int k = 0; k < K; k++) {
                int dt, dy, dx;
                grid_tap(k, &dt, &dy, &dx);
                int t2 = t + dt, y2 = y + dy, x2 = x + dx;
                if (t2 < 0 || t2 >= g->Tl || y2 < 0 || y2 >= g->Gh || x2 < 0 || x2 >= g->Gw) continue;
                const float *hr = h + ((((size_t)s * g->Tl + t2) * g->Gh + y2) * g->Gw + x2) * H;
                const float *wk = wt + (size_t)k * H;
                for (int c = 0; c < H; c++) ur[c] += wk[c] * hr[c];
            }
        }
    }
}

/* dh += adjoint(du) (accumulate), gwt [K, H] = sum_n du[n] * h[n + offset(k)]
 * (WRITTEN), db += colsum(du). */
static void dwconv_backward(const grid *g, const float *du, const float *h, const float *wt,
                            float *dh, float *gwt, float *db, int H, int K) {
    const int rows = g->S * g->Tl * g->Gh;
    const size_t N = (size_t)rows * g->Gw;
#pragma omp parallel for schedule(static) if (N * K * H >= VTOK_PAR_MIN)
    for (int row = 0; row < rows; row++) {
        int y = row % g->Gh, t = (row / g->Gh) % g->Tl, s = row / (g->Gh * g->Tl);
        for (int x = 0; x < g->Gw; x++) {
            float *d = dh + ((size_t)row * g->Gw + x) * H;
            for (int k = 0; k < K; k++) {
                int dt, dy, dx;
                grid_tap(k, &dt, &dy, &dx);
                int t2 = t - dt, y2 = y - dy, x2 = x - dx;
                if (t2 < 0 || t2 >= g->Tl || y2 < 0 || y2 >= g->Gh || x2 < 0 || x2 >= g->Gw) continue;
                const float *dr = du + ((((size_t)s * g->Tl + t2) * g->Gh + y2) * g->Gw + x2) * H;
                const float *wk = wt + (size_t)k * H;
                for (int c = 0; c < H; c++) d[c] += wk[c] * dr[c];
            }
        }
    }
#pragma omp parallel for schedule(static) if (N * K * H >= VTOK_PAR_MIN)
    for (int k = 0; k < K; k++) {
        int dt, dy, dx;
        grid_tap(k, &dt, &dy, &dx);
        float *acc = gwt + (size_t)k * H;
        memset(acc, 0, (size_t)H * sizeof(float));
        for (int row = 0; row < rows; row++) {
            int y = row % g->Gh, t = (row / g->Gh) % g->Tl, s = row / (g->Gh * g->Tl);
            int t2 = t + dt, y2 = y + dy;
            if (t2 < 0 || t2 >= g->Tl || y2 < 0 || y2 >= g->Gh) continue;
            for (int x = 0; x < g->Gw; x++) {
                int x2 = x + dx;
                if (x2 < 0 || x2 >= g->Gw) continue;
                const float *dr = du + ((size_t)row * g->Gw + x) * H;
                const float *hr = h + ((((size_t)s * g->Tl + t2) * g->Gh + y2) * g->Gw + x2) * H;
                for (int c = 0; c < H; c++) acc[c] += dr[c] * hr[c];
            }
        }
    }
    for (size_t n = 0; n < N; n++)
        for (int c = 0; c < H; c++) db[c] += du[n * H + c];
}

static void transpose(float *dst, const float *src, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* ---- the same operators as a public API (tests) ----------------------------- */

void ds4_vtok_gather(const float *src, float *dst, int S, int Tl, int Gh, int Gw, int Ch, int K) {
    grid g = {S, Tl, Gh, Gw};
    gather(&g, src, dst, Ch, K);
}

void ds4_vtok_gather_backward(const float *ddst, float *dsrc, int S, int Tl, int Gh, int Gw,
                              int Ch, int K) {
    grid g = {S, Tl, Gh, Gw};
    scatter_add(&g, ddst, dsrc, Ch, K);
}

int ds4_vtok_dwconv(const float *h, const float *w, const float *b, float *u, int S, int Tl,
                    int Gh, int Gw, int Ch, int K) {
    grid g = {S, Tl, Gh, Gw};
    float *wt = ds4_malloc((size_t)K * Ch * sizeof(float));
    if (!wt) return -1;
    transpose(wt, w, Ch, K);
    dwconv(&g, h, wt, b, u, Ch, K);
    free(wt);
    return 0;
}

int ds4_vtok_dwconv_backward(const float *du, const float *h, const float *w, float *dh,
                             float *dw, float *db, int S, int Tl, int Gh, int Gw, int Ch, int K) {
    grid g = {S, Tl, Gh, Gw};
    float *wt = ds4_malloc(2 * (size_t)K * Ch * sizeof(float));
    if (!wt) return -1;
    float *gwt = wt + (size_t)K * Ch;
    transpose(wt, w, Ch, K);
    dwconv_backward(&g, du, h, wt, dh, gwt, db, Ch, K);
    for (int c = 0; c < Ch; c++)
        for (int k = 0; k < K; k++) dw[(size_t)c * K + k] += gwt[(size_t)k * Ch + c];
    free(wt);
    return 0;
}

/* ---- workspace --------------------------------------------------------------- */

typedef struct {
    float *hin;     /* [N, H] stream entering the block */
    float *u;       /* [N, H] dwconv output */
    float *rstd;    /* [N] */
    float *v;       /* [N, H] normalised */
    float *a, *s;   /* [N, F] fc1 pre-activation, silu */
} bcache;

struct ds4_vtok_ws {
    size_t max_tok;
    ds4_rng rng;                         /* quantization noise (round = 2) */
    float  zpen;                         /* weight of the FSQ input range penalty */
    int    train;                        /* per-block caches (and backward scratch) */
    bcache eb[DS4_VTOK_MAX_LAYERS], db[DS4_VTOK_MAX_LAYERS];  /* inference: all alias [0] */
    float *eh;                           /* [N, H] encoder stream */
    float *en, *ers;                     /* [N, H] normalised stream, [N] rstd */
    float *z, *q;                        /* [N, C] */
    float *dcq;                          /* [N, K*C] gathered codes */
    float *dh;                           /* [N, H] decoder stream */
    float *dn, *drs;                     /* [N, H], [N] */
    float *ha, *hh;                      /* [N, D] head pre-activation / activation */
    float *y;                            /* [N, n_out] decoder outputs (logits or RGB) */
    float *yr;                           /* [N, P] reconstruction in input units; inference: also the input */
    float *gbig;                         /* [N, max(D, F, K*C)] backward scratch */
    float *g1, *g2, *g3;                 /* [N, H] */
    float *gz, *gq;                      /* [N, C] */
    float *wt, *gwt;                     /* [K, H] transposed depthwise taps, their gradient */
    float *mem;
};

static ds4_vtok_ws *ws_new(const ds4_vtok *m, size_t max_tok, int train) {
    const ds4_vtok_config *c = &m->cfg;
    const size_t H = c->hidden, F = c->ffn, D = c->head, P = m->P, C = c->n_levels, K = m->K,
                 N = max_tok;
    const size_t blk = 3 * H + 1 + 2 * F;
    const size_t n_blk = train ? (size_t)c->enc_layers + c->dec_layers : 1;
    const size_t big = DS4_MAX(D, DS4_MAX(F, K * C));
    size_t per = n_blk * blk + H + H + 1 + 2 * C + K * C + H + H + 1 + 2 * D + m->n_out + P;
    if (train) per += big + 3 * H + 2 * C;
    ds4_vtok_ws *w = ds4_calloc(1, sizeof *w);
    if (!w) return NULL;
    size_t bytes;
    if (__builtin_mul_overflow(per * N + 2 * K * H, sizeof(float), &bytes) ||
        !(w->mem = ds4_alloc_aligned(bytes))) {
        if (!w->mem) ds4_error_prefix("video workspace for %zu tokens", N);
        free(w);
        return NULL;
    }
    w->max_tok = N;
    w->train = train;
    ds4_rng_seed(&w->rng, 0x5eed);
    float *p = w->mem;
#define TAKE(ptr, cols) do { (ptr) = p; p += (cols) * N; } while (0)
    for (size_t b = 0; b < n_blk; b++) {
        bcache *bc = b < (size_t)c->enc_layers || !train ? &w->eb[b] : &w->db[b - c->enc_layers];
        TAKE(bc->hin, H); TAKE(bc->u, H); TAKE(bc->rstd, 1); TAKE(bc->v, H); TAKE(bc->a, F); TAKE(bc->s, F);
    }
    if (!train)
        for (int l = 0; l < DS4_VTOK_MAX_LAYERS; l++) w->eb[l] = w->db[l] = w->eb[0];
    TAKE(w->eh, H);
    TAKE(w->en, H);
    TAKE(w->ers, 1);
    TAKE(w->z, C);
    TAKE(w->q, C);
    TAKE(w->dcq, K * C);
    TAKE(w->dh, H);
    TAKE(w->dn, H);
    TAKE(w->drs, 1);
    TAKE(w->ha, D);
    TAKE(w->hh, D);
    TAKE(w->y, (size_t)m->n_out);
    TAKE(w->yr, P);
    if (train) {
        TAKE(w->gbig, big);
        TAKE(w->g1, H);
        TAKE(w->g2, H);
        TAKE(w->g3, H);
        TAKE(w->gz, C);
        TAKE(w->gq, C);
    }
#undef TAKE
    w->wt = p;
    w->gwt = p + K * H;
    return w;
}

ds4_vtok_ws *ds4_vtok_ws_new(const ds4_vtok *m, size_t max_tok) { return ws_new(m, max_tok, 1); }

void ds4_vtok_ws_options(ds4_vtok_ws *w, uint64_t seed, float z_penalty) {
    ds4_rng_seed(&w->rng, seed);
    w->zpen = z_penalty;
}

void ds4_vtok_ws_free(ds4_vtok_ws *w) {
    if (!w) return;
    free(w->mem);
    free(w);
}

/* ---- forward / backward --------------------------------------------------- */

/* h [N, H] += fc2(silu(fc1(rmsnorm(dwconv(h))))) */
static void block_forward(const ds4_vtok *m, const vblock *B, bcache *bc, ds4_vtok_ws *ws,
                          const grid *g, float *h, size_t N) {
    const int H = m->cfg.hidden, F = m->cfg.ffn, K = m->K;
    if (ws->train) memcpy(bc->hin, h, N * H * sizeof(float));
    transpose(ws->wt, B->dw.w, H, K);
    dwconv(g, h, ws->wt, B->dw.b, bc->u, H, K);
    ds4_rmsnorm(bc->v, bc->rstd, bc->u, B->norm, (int)N, H, VTOK_NORM_EPS);
    linear(bc->a, bc->v, &B->fc1, N, H, F);
    silu(bc->s, bc->a, N * F, 0);
    ds4_matmul(h, bc->s, B->fc2.w, (int)N, F, H, 1);
#pragma omp parallel for schedule(static) if (N * H >= VTOK_PAR_MIN)
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < H; c++) h[i * H + c] += B->fc2.b[c];
}

/* dh [N, H]: gradient of the block output, updated in place to that of its input. */
static void block_backward(const ds4_vtok *m, const vblock *B, const vblock *G, const bcache *bc,
                           ds4_vtok_ws *ws, const grid *g, float *dh, size_t N) {
    const int H = m->cfg.hidden, F = m->cfg.ffn, K = m->K;
    float *ds = ws->gbig, *dv = ws->g1, *du = ws->g2;
    linear_backward(ds, &G->fc2, dh, bc->s, &B->fc2, N, F, H);
    silu_backward(ds, ds, bc->a, N * F);
    linear_backward(dv, &G->fc1, ds, bc->v, &B->fc1, N, H, F);
    memset(du, 0, N * H * sizeof(float));
    ds4_rmsnorm_backward(du, G->norm, dv, bc->u, B->norm, bc->rstd, (int)N, H);
    transpose(ws->wt, B->dw.w, H, K);
    dwconv_backward(g, du, bc->hin, ws->wt, dh, ws->gwt, G->dw.b, H, K);
    for (int c = 0; c < H; c++)
        for (int k = 0; k < K; k++) G->dw.w[(size_t)c * K + k] += ws->gwt[(size_t)k * H + c];
}

/* x [N, P] -> ws->z [N, C] (ws->eh holds the encoder stream). */
static void enc_forward(const ds4_vtok *m, const vtok_w *W, ds4_vtok_ws *ws, const grid *g,
                        const float *x, size_t N) {
    const int H = m->cfg.hidden, C = m->cfg.n_levels;
    linear(ws->eh, x, &W->patch, N, m->P, H);
    for (int l = 0; l < m->cfg.enc_layers; l++) block_forward(m, &W->eb[l], &ws->eb[l], ws, g, ws->eh, N);
    ds4_rmsnorm(ws->en, ws->ers, ws->eh, W->enorm, (int)N, H, VTOK_NORM_EPS);
    linear(ws->z, ws->en, &W->proj, N, H, C);
}

/* ws->q [N, C] -> y [N, n_out] */
static void dec_forward(const ds4_vtok *m, const vtok_w *W, ds4_vtok_ws *ws, const grid *g,
                        float *y, size_t N) {
    const int H = m->cfg.hidden, C = m->cfg.n_levels, K = m->K, D = m->cfg.head;
    gather(g, ws->q, ws->dcq, C, K);
    linear(ws->dh, ws->dcq, &W->embed, N, K * C, H);
    for (int l = 0; l < m->cfg.dec_layers; l++) block_forward(m, &W->db[l], &ws->db[l], ws, g, ws->dh, N);
    ds4_rmsnorm(ws->dn, ws->drs, ws->dh, W->dnorm, (int)N, H, VTOK_NORM_EPS);
    linear(ws->ha, ws->dn, &W->head, N, H, D);
    silu(ws->hh, ws->ha, N * D, 0);
    linear(y, ws->hh, &W->out, N, D, m->n_out);
}

/* Palette colours in input units (pixel / 127.5 - 1). */
static void palette_units(float pal[DS4_WC_COUNT][3]) {
    for (int k = 0; k < DS4_WC_COUNT; k++)
        for (int c = 0; c < 3; c++) pal[k][c] = ds4_world_palette[k][c] / 127.5f - 1.0f;
}

/* Decoder outputs y [N, n_out] -> reconstruction yr [N, P] in input units:
 * the expected palette colour under softmax(logits) per pixel, or a copy. */
static void to_pixels(const ds4_vtok *m, const float *y, float *yr, size_t N) {
    if (!m->cfg.palette) {
        memcpy(yr, y, N * m->P * sizeof(float));
        return;
    }
    float pal[DS4_WC_COUNT][3];
    palette_units(pal);
    const int npx = m->P / 3;
    /* per token, logits are [class][pixel]: softmax across 7 rows, vectorised over pixels */
#pragma omp parallel for schedule(static) if (N * m->n_out >= VTOK_PAR_MIN)
    for (size_t n = 0; n < N; n++) {
        const float *L = y + n * m->n_out;   /* [7][npx] */
        float *out = yr + n * m->P;          /* [npx][3] */
        for (int p0 = 0; p0 < npx; p0 += VTOK_PIXBLK) {
            const int nb = DS4_MIN(VTOK_PIXBLK, npx - p0);
            float mx[VTOK_PIXBLK], sum[VTOK_PIXBLK], r[VTOK_PIXBLK], g[VTOK_PIXBLK], b[VTOK_PIXBLK];
            for (int j = 0; j < nb; j++) mx[j] = L[p0 + j];
            for (int k = 1; k < DS4_WC_COUNT; k++)
                for (int j = 0; j < nb; j++) mx[j] = L[k * npx + p0 + j] > mx[j] ? L[k * npx + p0 + j] : mx[j];
            if (m->sharp) {
                for (int j = 0; j < nb; j++) {
                    int best = 0;
                    for (int k = 1; k < DS4_WC_COUNT; k++)
                        if (L[k * npx + p0 + j] > L[best * npx + p0 + j]) best = k;
                    for (int c = 0; c < 3; c++) out[3 * (p0 + j) + c] = pal[best][c];
                }
                continue;
            }
            for (int j = 0; j < nb; j++) sum[j] = r[j] = g[j] = b[j] = 0;
            for (int k = 0; k < DS4_WC_COUNT; k++)
                for (int j = 0; j < nb; j++) {
                    float e = vexp(L[k * npx + p0 + j] - mx[j]);
                    sum[j] += e;
                    r[j] += e * pal[k][0]; g[j] += e * pal[k][1]; b[j] += e * pal[k][2];
                }
            for (int j = 0; j < nb; j++) {
                float inv = 1.0f / sum[j];
                out[3 * (p0 + j)] = r[j] * inv;
                out[3 * (p0 + j) + 1] = g[j] * inv;
                out[3 * (p0 + j) + 2] = b[j] * inv;
            }
        }
    }
}

/* Nearest palette colour of a pixel in input units. */
static int nearest_palette(const float pal[DS4_WC_COUNT][3], const float *px) {
    int best = 0;
    float bd = 1e30f;
    for (int k = 0; k < DS4_WC_COUNT; k++) {
        float d0 = px[0] - pal[k][0], d1 = px[1] - pal[k][1], d2 = px[2] - pal[k][2];
        float d = d0 * d0 + d1 * d1 + d2 * d2;
        if (d < bd) { bd = d; best = k; }
    }
    return best;
}

double ds4_vtok_forward_backward(const ds4_vtok *m, ds4_vtok_ws *ws, const float *x, int S,
                                 int Tl, int Gh, int Gw, float *y_out, double *mse, float *grads,
                                 float loss_scale, int round) {
    const size_t N = (size_t)S * Tl * Gh * Gw;
    if (N == 0 || N > ws->max_tok || !ws->train) {
        ds4_set_error("video forward: %zu tokens (training workspace holds %zu)", N, ws->max_tok);
        return NAN;
    }
    const int H = m->cfg.hidden, C = m->cfg.n_levels, K = m->K, D = m->cfg.head, P = m->P;
    grid g = {S, Tl, Gh, Gw};
    vtok_w W;
    bind(m, m->params, &W);
    enc_forward(m, &W, ws, &g, x, N);
    ds4_fsq_forward(&m->fsq, ws->z, ws->q, NULL, N, round == 1);
    if (round == 2) {
        /* additive uniform noise of one quantization step instead of rounding:
         * q = (bound(z) + u) / (L // 2), u ~ U(-0.5, 0.5); same gradient */
        const int C = m->fsq.n;
        for (size_t i = 0; i < N * C; i++)
            ws->q[i] += (ds4_rng_uniform(&ws->rng) - 0.5f) / (float)m->fsq.hl[i % C];
    }
    float *y = ws->y;
    dec_forward(m, &W, ws, &g, y, N);
    to_pixels(m, y, ws->yr, N);
    const size_t NP = N * P;
    double se = 0;
#pragma omp parallel for reduction(+ : se) schedule(static) if (NP >= VTOK_PAR_MIN)
    for (size_t i = 0; i < NP; i++) {
        double d = (double)ws->yr[i] - x[i];
        se += d * d;
    }
    if (mse) *mse = se / (double)NP;
    if (y_out) memcpy(y_out, ws->yr, NP * sizeof(float));
    double loss = 0;
    if (!m->cfg.palette) {
        loss = se / (double)NP;
        if (grads) {
            /* d loss / d y, in place of y: 2 (y - x) / NP * scale */
            const float sc = 2.0f * loss_scale / (float)NP;
#pragma omp parallel for schedule(static) if (NP >= VTOK_PAR_MIN)
            for (size_t i = 0; i < NP; i++) y[i] = (y[i] - x[i]) * sc;
        }
    } else {
        /* cross-entropy per pixel against the nearest palette colour; in place
         * of the logits ([class][pixel] per token): (softmax - onehot) / npix * scale */
        float pal[DS4_WC_COUNT][3];
        palette_units(pal);
        const int npx = P / 3;
        const size_t npix = N * npx;
        const float sc = loss_scale / (float)npix;
#pragma omp parallel for reduction(+ : loss) schedule(static) if (N * m->n_out >= VTOK_PAR_MIN)
        for (size_t n = 0; n < N; n++) {
            float *L = y + n * m->n_out;
            for (int j = 0; j < npx; j++) {
                int tgt = nearest_palette(pal, x + (n * npx + j) * 3);
                float mx = L[j], e[DS4_WC_COUNT], sum = 0;
                for (int k = 1; k < DS4_WC_COUNT; k++) mx = L[k * npx + j] > mx ? L[k * npx + j] : mx;
                for (int k = 0; k < DS4_WC_COUNT; k++) sum += e[k] = vexp(L[k * npx + j] - mx);
                loss += (double)(logf(sum) + mx - L[tgt * npx + j]);   /* sum >= 1 (the max term) */
                if (grads)
                    for (int k = 0; k < DS4_WC_COUNT; k++) L[k * npx + j] = (e[k] / sum - (k == tgt)) * sc;
            }
        }
        loss /= (double)npix;
    }
    /* range penalty zpen * mean(relu(|z| - VTOK_ZMAX)^2): keeps FSQ inputs where
     * tanh still has a gradient, so no channel saturates for good */
    const size_t NC = N * C;
    if (ws->zpen > 0) {
        double pen = 0;
        for (size_t i = 0; i < NC; i++) {
            float e = fabsf(ws->z[i]) - VTOK_ZMAX;
            if (e > 0) pen += (double)e * e;
        }
        loss += ws->zpen * pen / (double)NC;
    }
    if (!grads) return loss;

    vtok_w G;
    bind(m, grads, &G);
    const float *dy = y;
    /* decoder: head, final norm, blocks, embedding */
    float *dhh = ws->gbig, *dn = ws->g1, *dstream = ws->g3;
    linear_backward(dhh, &G.out, dy, ws->hh, &W.out, N, D, m->n_out);
    silu_backward(dhh, dhh, ws->ha, N * D);
    linear_backward(dn, &G.head, dhh, ws->dn, &W.head, N, H, D);
    memset(dstream, 0, N * H * sizeof(float));
    ds4_rmsnorm_backward(dstream, G.dnorm, dn, ws->dh, W.dnorm, ws->drs, (int)N, H);
    for (int l = m->cfg.dec_layers - 1; l >= 0; l--)
        block_backward(m, &W.db[l], &G.db[l], &ws->db[l], ws, &g, dstream, N);
    linear_backward(ws->gbig, &G.embed, dstream, ws->dcq, &W.embed, N, K * C, H);
    memset(ws->gq, 0, N * C * sizeof(float));
    scatter_add(&g, ws->gbig, ws->gq, C, K);
    /* FSQ: straight-through */
    ds4_fsq_backward(&m->fsq, ws->z, ws->gq, ws->gz, N);
    if (ws->zpen > 0) {
        const float sc = 2.0f * ws->zpen * loss_scale / (float)NC;
        for (size_t i = 0; i < NC; i++) {
            float e = fabsf(ws->z[i]) - VTOK_ZMAX;
            if (e > 0) ws->gz[i] += sc * (ws->z[i] > 0 ? e : -e);
        }
    }
    /* encoder: projection, final norm, blocks, patch embedding */
    linear_backward(dn, &G.proj, ws->gz, ws->en, &W.proj, N, H, C);
    memset(dstream, 0, N * H * sizeof(float));
    ds4_rmsnorm_backward(dstream, G.enorm, dn, ws->eh, W.enorm, ws->ers, (int)N, H);
    for (int l = m->cfg.enc_layers - 1; l >= 0; l--)
        block_backward(m, &W.eb[l], &G.eb[l], &ws->eb[l], ws, &g, dstream, N);
    linear_backward(NULL, &G.patch, dstream, x, &W.patch, N, m->P, H);
    return loss;
}
/* ---- whole clips, in chunks of latent frames ------------------------------- */

#define VTOK_CHUNK 16   /* latent frames computed per chunk (plus the halo) */

int ds4_vtok_latent_shape(const ds4_vtok *m, int T, int H, int W, int *Tl, int *Gh, int *Gw) {
    const int p = m->cfg.patch;
    if (T < 1 || H < p || W < p || H % p || W % p) {
        ds4_set_error("video: clip of %d frames of %dx%d: need >= 1 frame and sizes that are "
                      "positive multiples of patch %d", T, W, H, p);
        return -1;
    }
    *Tl = (T + m->cfg.tubelet - 1) / m->cfg.tubelet;
    *Gh = H / p;
    *Gw = W / p;
    return 0;
}

/* Encoder over latent frames [t0, t1) of x [Tl][Gh][Gw][P], with the halo of
 * earlier (and, non-causal, later) frames its layers need; the results for
 * [t0, t1) land in ws->z / ws->eh starting at row (t0 - a) * Gh * Gw. */
static void chunk_range(const ds4_vtok *m, int layers, int Tl, int t0, int t1, int *a, int *b) {
    *a = DS4_MAX(0, t0 - layers);
    *b = m->cfg.causal ? t1 : DS4_MIN(Tl, t1 + layers);
}

/* The model keeps one inference workspace (most callers encode or decode clip
 * after clip of one size); a concurrent caller gets a private one. */
static ds4_vtok_ws *ws_take(const ds4_vtok *cm, size_t tok) {
    ds4_vtok *m = (ds4_vtok *)cm;   /* the cache is not part of the model's value */
    int expected = 0;
    if (!__atomic_compare_exchange_n(&m->ws_busy, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return ws_new(m, tok, 0);
    if (!m->ws_cache || m->ws_cache->max_tok < tok) {
        ds4_vtok_ws_free(m->ws_cache);
        m->ws_cache = ws_new(m, tok, 0);
        if (!m->ws_cache) {
            __atomic_store_n(&m->ws_busy, 0, __ATOMIC_RELEASE);
            return NULL;
        }
    }
    return m->ws_cache;
}

static void ws_give(const ds4_vtok *cm, ds4_vtok_ws *w) {
    ds4_vtok *m = (ds4_vtok *)cm;
    if (w == m->ws_cache) __atomic_store_n(&m->ws_busy, 0, __ATOMIC_RELEASE);
    else ds4_vtok_ws_free(w);
}

static int run_encoder(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W,
                       int32_t *codes, float *feat) {
    int Tl, Gh, Gw;
    if (ds4_vtok_latent_shape(m, T, H, W, &Tl, &Gh, &Gw) != 0) return -1;
    const size_t per = (size_t)Gh * Gw, frame = (size_t)H * W * 3;
    const int halo = m->cfg.enc_layers, tub = m->cfg.tubelet;
    ds4_vtok_ws *ws = ws_take(m, (size_t)(VTOK_CHUNK + 2 * DS4_MAX(halo, 1 + m->cfg.dec_layers)) * per);
    if (!ws) return -1;
    vtok_w Wt;
    bind(m, m->params, &Wt);
    for (int t0 = 0; t0 < Tl; t0 += VTOK_CHUNK) {
        int t1 = DS4_MIN(Tl, t0 + VTOK_CHUNK), a, b;
        chunk_range(m, halo, Tl, t0, t1, &a, &b);
        grid g = {1, b - a, Gh, Gw};
        /* inputs of latent frames [a, b) (the decoder's buffer is free here) */
        ds4_vtok_patchify(rgb + (size_t)a * tub * frame, DS4_MIN(T, b * tub) - a * tub, H, W, tub,
                          m->cfg.patch, 0, ws->yr);
        enc_forward(m, &Wt, ws, &g, ws->yr, (size_t)(b - a) * per);
        size_t skip = (size_t)(t0 - a) * per, n = (size_t)(t1 - t0) * per;
        if (codes) ds4_fsq_forward(&m->fsq, ws->z + skip * m->fsq.n, NULL, codes + t0 * per, n, 1);
        if (feat)
            memcpy(feat + (size_t)t0 * per * m->cfg.hidden, ws->eh + skip * m->cfg.hidden,
                   n * m->cfg.hidden * sizeof(float));
    }
    ws_give(m, ws);
    return 0;
}

int ds4_vtok_encode(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W, int32_t *codes) {
    return run_encoder(m, rgb, T, H, W, codes, NULL);
}

int ds4_vtok_features(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W, float *feat) {
    return run_encoder(m, rgb, T, H, W, NULL, feat);
}

int ds4_vtok_decode(const ds4_vtok *m, const int32_t *codes, int Tl, int Gh, int Gw, uint8_t *rgb) {
    int tl2, gh2, gw2;
    const int p = m->cfg.patch, tub = m->cfg.tubelet, C = m->fsq.n;
    if (ds4_vtok_latent_shape(m, Tl * tub, Gh * p, Gw * p, &tl2, &gh2, &gw2) != 0) return -1;
    const size_t per = (size_t)Gh * Gw;
    const int halo = 1 + m->cfg.dec_layers;
    ds4_vtok_ws *ws = ws_take(m, (size_t)(VTOK_CHUNK + 2 * DS4_MAX(halo, m->cfg.enc_layers)) * per);
    if (!ws) return -1;
    vtok_w Wt;
    bind(m, m->params, &Wt);
    const size_t frame = (size_t)Gh * p * Gw * p * 3;
    for (int t0 = 0; t0 < Tl; t0 += VTOK_CHUNK) {
        int t1 = DS4_MIN(Tl, t0 + VTOK_CHUNK), a, b;
        chunk_range(m, halo, Tl, t0, t1, &a, &b);
        size_t n = (size_t)(b - a) * per;
        for (size_t i = 0; i < n; i++)
            if (ds4_fsq_code_to_q(&m->fsq, codes[(size_t)a * per + i], ws->q + i * C) != 0) {
                ds4_error_prefix("video decode: latent frame %zu token %zu", a + i / per, i % per);
                ws_give(m, ws);
                return -1;
            }
        grid g = {1, b - a, Gh, Gw};
        dec_forward(m, &Wt, ws, &g, ws->y, n);
        size_t skip = (size_t)(t0 - a) * per;
        to_pixels(m, ws->y + skip * m->n_out, ws->yr + skip * m->P, (size_t)(t1 - t0) * per);
        ds4_vtok_unpatchify(ws->yr + skip * m->P, t1 - t0, Gh * p, Gw * p, tub, p,
                            rgb + (size_t)t0 * tub * frame);
    }
    ws_give(m, ws);
    return 0;
}
