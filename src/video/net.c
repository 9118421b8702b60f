/* net.c — the video tokenizer network: parameter layout over one flat buffer,
 * initialisation, forward and backward of encoder -> FSQ -> decoder on latent
 * grids, and chunked encode/decode of whole clips. The architecture is
 * described in video.h (ds4_vtok_config). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "kernels/kernels.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

/* ---- parameter layout ------------------------------------------------------ */

typedef struct { float *w, *b; } vlin;            /* w [out, in], b [out] */
typedef struct {
    vlin patch;                                    /* [H, P] */
    vlin emix[DS4_VTOK_MAX_LAYERS];                /* [H, K*H] */
    vlin proj;                                     /* [C, H] */
    vlin embed;                                    /* [H, K*C] */
    vlin dmix[DS4_VTOK_MAX_LAYERS];                /* [H, K*H] */
    vlin head;                                     /* [D, H] */
    vlin out;                                      /* [P, D] */
} vtok_w;

static void add_lin(ds4_vtok *m, size_t *off, const char *name, int out, int in) {
    ds4_vtok_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "video.%s.weight", name);
    t->ndim = 2;
    t->shape[0] = out;
    t->shape[1] = in;
    t->numel = (size_t)out * in;
    t->off = *off;
    t->decay = 1;
    *off += t->numel;
    t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "video.%s.bias", name);
    t->ndim = 1;
    t->shape[0] = out;
    t->shape[1] = 0;
    t->numel = (size_t)out;
    t->off = *off;
    t->decay = 0;
    *off += t->numel;
}

/* Pointers of every linear layer into base (params or grads), in tensor order. */
static void bind(const ds4_vtok *m, float *base, vtok_w *w) {
    int i = 0;
#define NEXT(l) do { (l).w = base + m->tensors[i].off; (l).b = base + m->tensors[i + 1].off; i += 2; } while (0)
    NEXT(w->patch);
    for (int l = 0; l < m->cfg.enc_layers; l++) NEXT(w->emix[l]);
    NEXT(w->proj);
    NEXT(w->embed);
    for (int l = 0; l < m->cfg.dec_layers; l++) NEXT(w->dmix[l]);
    NEXT(w->head);
    NEXT(w->out);
#undef NEXT
}

static ds4_vtok *vtok_alloc(const ds4_vtok_config *c) {
    if (ds4_vtok_config_validate(c) != 0) return NULL;
    ds4_vtok *m = ds4_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *c;
    ds4_fsq_init(&m->fsq, c->levels, c->n_levels);
    m->P = c->tubelet * c->patch * c->patch * 3;
    m->K = c->causal ? 18 : 27;
    const int H = c->hidden, C = c->n_levels, K = m->K;
    size_t off = 0;
    char name[48];
    add_lin(m, &off, "encoder.patch", H, m->P);
    for (int l = 0; l < c->enc_layers; l++) {
        snprintf(name, sizeof name, "encoder.mix.%d", l);
        add_lin(m, &off, name, H, K * H);
    }
    add_lin(m, &off, "encoder.proj", C, H);
    add_lin(m, &off, "decoder.embed", H, K * C);
    for (int l = 0; l < c->dec_layers; l++) {
        snprintf(name, sizeof name, "decoder.mix.%d", l);
        add_lin(m, &off, name, H, K * H);
    }
    add_lin(m, &off, "decoder.head", c->head, H);
    add_lin(m, &off, "decoder.out", m->P, c->head);
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
        if (t->ndim == 1) { memset(p, 0, t->numel * sizeof(float)); continue; }
        /* LeCun normal; residual mixing layers and the pixel output start smaller */
        float std = 1.0f / sqrtf((float)t->shape[1]);
        if (strstr(t->name, ".mix.") || strstr(t->name, "decoder.out.")) std *= 0.5f;
        for (size_t k = 0; k < t->numel; k++) p[k] = std * ds4_rng_normal(&rng);
    }
    /* the pixel output starts at the background colour */
    const ds4_vtok_tensor *ob = ds4_vtok_find(m, "video.decoder.out.bias");
    for (size_t k = 0; k < ob->numel; k++)
        m->params[ob->off + k] = ds4_world_palette[DS4_WC_BACKGROUND][k % 3] / 127.5f - 1.0f;
    return m;
}

void ds4_vtok_free(ds4_vtok *m) {
    if (!m) return;
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
#pragma omp parallel for collapse(2) schedule(static)
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
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < Tl; t++)
        for (int gy = 0; gy < Gh; gy++)
            for (int gx = 0; gx < Gw; gx++) {
                const float *src = y + (((size_t)t * Gh + gy) * Gw + gx) * P;
                for (int f = 0; f < tubelet; f++)
                    for (int r = 0; r < patch; r++) {
                        uint8_t *row = rgb + (((size_t)(t * tubelet + f) * H) + gy * patch + r) * W * 3;
                        for (int c = 0; c < patch * 3; c++) {
                            float v = (*src++ + 1.0f) * 127.5f;
                            v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
                            row[gx * patch * 3 + c] = (uint8_t)lrintf(v);
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
#pragma omp parallel for schedule(static)
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
#pragma omp parallel for schedule(static)
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
#pragma omp parallel for schedule(static)
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

static inline float sigm(float a) { return 1.0f / (1.0f + expf(-a)); }

/* h = silu(a) (acc = 0) or h += silu(a) (acc = 1) */
static void silu(float *h, const float *a, size_t n, int acc) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = a[i] * sigm(a[i]);
        h[i] = acc ? h[i] + v : v;
    }
}

/* da = dh * silu'(a) (WRITTEN) */
static void silu_backward(float *da, const float *dh, const float *a, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s = sigm(a[i]);
        da[i] = dh[i] * s * (1.0f + a[i] * (1.0f - s));
    }
}

/* ---- workspace --------------------------------------------------------------- */

struct ds4_vtok_ws {
    size_t max_tok;
    float *ea0;                          /* [N, H] encoder patch pre-activation */
    float *eh;                           /* [N, H] encoder stream (after all layers at the end) */
    float *ec[DS4_VTOK_MAX_LAYERS];      /* [N, K*H] gathered inputs per layer */
    float *ea[DS4_VTOK_MAX_LAYERS];      /* [N, H] pre-activations per layer */
    float *z, *q;                        /* [N, C] */
    float *dcq;                          /* [N, K*C] gathered codes */
    float *da0;                          /* [N, H] decoder embed pre-activation */
    float *dh;                           /* [N, H] decoder stream */
    float *dc[DS4_VTOK_MAX_LAYERS];      /* [N, K*H] */
    float *dA[DS4_VTOK_MAX_LAYERS];      /* [N, H] */
    float *ha, *hh;                      /* [N, D] head pre-activation / activation */
    float *y;                            /* [N, P] reconstruction */
    float *gbig;                         /* [N, max(P, D, K*H)] backward scratch */
    float *g1, *g2;                      /* [N, max(H, D)] */
    float *gz, *gq;                      /* [N, C] */
    float *mem;
};

ds4_vtok_ws *ds4_vtok_ws_new(const ds4_vtok *m, size_t max_tok) {
    const ds4_vtok_config *c = &m->cfg;
    const size_t H = c->hidden, D = c->head, P = m->P, C = c->n_levels, K = m->K, N = max_tok;
    size_t big = DS4_MAX(P, DS4_MAX(D, K * H)), hd = DS4_MAX(H, D);
    size_t per = H + H + (size_t)c->enc_layers * (K * H + H) + 2 * C + K * C + H + H +
                 (size_t)c->dec_layers * (K * H + H) + 2 * D + P + big + 2 * hd + 2 * C;
    ds4_vtok_ws *w = ds4_calloc(1, sizeof *w);
    if (!w) return NULL;
    size_t bytes;
    if (__builtin_mul_overflow(per * N, sizeof(float), &bytes) || !(w->mem = ds4_alloc_aligned(bytes))) {
        if (!w->mem) ds4_error_prefix("video workspace for %zu tokens", N);
        free(w);
        return NULL;
    }
    w->max_tok = N;
    float *p = w->mem;
#define TAKE(ptr, cols) do { (ptr) = p; p += (cols) * N; } while (0)
    TAKE(w->ea0, H);
    TAKE(w->eh, H);
    for (int l = 0; l < c->enc_layers; l++) { TAKE(w->ec[l], K * H); TAKE(w->ea[l], H); }
    TAKE(w->z, C);
    TAKE(w->q, C);
    TAKE(w->dcq, K * C);
    TAKE(w->da0, H);
    TAKE(w->dh, H);
    for (int l = 0; l < c->dec_layers; l++) { TAKE(w->dc[l], K * H); TAKE(w->dA[l], H); }
    TAKE(w->ha, D);
    TAKE(w->hh, D);
    TAKE(w->y, P);
    TAKE(w->gbig, big);
    TAKE(w->g1, hd);
    TAKE(w->g2, hd);
    TAKE(w->gz, C);
    TAKE(w->gq, C);
#undef TAKE
    return w;
}

void ds4_vtok_ws_free(ds4_vtok_ws *w) {
    if (!w) return;
    free(w->mem);
    free(w);
}

/* ---- forward / backward --------------------------------------------------- */

/* x [N, P] -> ws->z [N, C] (ws->eh holds the final encoder stream). */
static void enc_forward(const ds4_vtok *m, const vtok_w *W, ds4_vtok_ws *ws, const grid *g,
                        const float *x, size_t N) {
    const int H = m->cfg.hidden, C = m->cfg.n_levels, K = m->K;
    linear(ws->ea0, x, &W->patch, N, m->P, H);
    silu(ws->eh, ws->ea0, N * H, 0);
    for (int l = 0; l < m->cfg.enc_layers; l++) {
        gather(g, ws->eh, ws->ec[l], H, K);
        linear(ws->ea[l], ws->ec[l], &W->emix[l], N, K * H, H);
        silu(ws->eh, ws->ea[l], N * H, 1);
    }
    linear(ws->z, ws->eh, &W->proj, N, H, C);
}

/* ws->q [N, C] -> y [N, P] */
static void dec_forward(const ds4_vtok *m, const vtok_w *W, ds4_vtok_ws *ws, const grid *g,
                        float *y, size_t N) {
    const int H = m->cfg.hidden, C = m->cfg.n_levels, K = m->K, D = m->cfg.head;
    gather(g, ws->q, ws->dcq, C, K);
    linear(ws->da0, ws->dcq, &W->embed, N, K * C, H);
    silu(ws->dh, ws->da0, N * H, 0);
    for (int l = 0; l < m->cfg.dec_layers; l++) {
        gather(g, ws->dh, ws->dc[l], H, K);
        linear(ws->dA[l], ws->dc[l], &W->dmix[l], N, K * H, H);
        silu(ws->dh, ws->dA[l], N * H, 1);
    }
    linear(ws->ha, ws->dh, &W->head, N, H, D);
    silu(ws->hh, ws->ha, N * D, 0);
    linear(y, ws->hh, &W->out, N, D, m->P);
}

double ds4_vtok_forward_backward(const ds4_vtok *m, ds4_vtok_ws *ws, const float *x, int S,
                                 int Tl, int Gh, int Gw, float *y_out, float *grads,
                                 float loss_scale, int round) {
    const size_t N = (size_t)S * Tl * Gh * Gw;
    if (N == 0 || N > ws->max_tok) {
        ds4_set_error("video forward: %zu tokens (workspace holds %zu)", N, ws->max_tok);
        return NAN;
    }
    const int H = m->cfg.hidden, C = m->cfg.n_levels, K = m->K, D = m->cfg.head, P = m->P;
    grid g = {S, Tl, Gh, Gw};
    vtok_w W;
    bind(m, m->params, &W);
    enc_forward(m, &W, ws, &g, x, N);
    ds4_fsq_forward(&m->fsq, ws->z, ws->q, NULL, N, round);
    float *y = ws->y;
    dec_forward(m, &W, ws, &g, y, N);
    double loss = 0;
    const size_t NP = N * P;
#pragma omp parallel for reduction(+ : loss) schedule(static)
    for (size_t i = 0; i < NP; i++) {
        double d = (double)y[i] - x[i];
        loss += d * d;
    }
    loss /= (double)NP;
    if (y_out) memcpy(y_out, y, NP * sizeof(float));
    if (!grads) return loss;

    vtok_w G;
    bind(m, grads, &G);
    /* d loss / d y, in place of y: 2 (y - x) / NP * scale */
    float *dy = ws->y;
    const float sc = 2.0f * loss_scale / (float)NP;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < NP; i++) dy[i] = (dy[i] - x[i]) * sc;
    /* decoder */
    float *dhh = ws->g1, *dstream = ws->g2;
    linear_backward(dhh, &G.out, dy, ws->hh, &W.out, N, D, P);
    silu_backward(dhh, dhh, ws->ha, N * D);
    linear_backward(dstream, &G.head, dhh, ws->dh, &W.head, N, H, D);
    for (int l = m->cfg.dec_layers - 1; l >= 0; l--) {
        float *da = ws->g1;
        silu_backward(da, dstream, ws->dA[l], N * H);
        linear_backward(ws->gbig, &G.dmix[l], da, ws->dc[l], &W.dmix[l], N, K * H, H);
        scatter_add(&g, ws->gbig, dstream, H, K);  /* residual: dstream stays and gains this */
    }
    silu_backward(ws->g1, dstream, ws->da0, N * H);
    linear_backward(ws->gbig, &G.embed, ws->g1, ws->dcq, &W.embed, N, K * C, H);
    memset(ws->gq, 0, N * C * sizeof(float));
    scatter_add(&g, ws->gbig, ws->gq, C, K);
    /* FSQ straight-through */
    ds4_fsq_backward(&m->fsq, ws->z, ws->gq, ws->gz, N);
    /* encoder */
    linear_backward(dstream, &G.proj, ws->gz, ws->eh, &W.proj, N, H, C);
    /* the stream before each mixing layer is needed for nothing but the gathered copy */
    for (int l = m->cfg.enc_layers - 1; l >= 0; l--) {
        float *da = ws->g1;
        silu_backward(da, dstream, ws->ea[l], N * H);
        linear_backward(ws->gbig, &G.emix[l], da, ws->ec[l], &W.emix[l], N, K * H, H);
        scatter_add(&g, ws->gbig, dstream, H, K);
    }
    silu_backward(ws->g1, dstream, ws->ea0, N * H);
    linear_backward(NULL, &G.patch, ws->g1, x, &W.patch, N, P, H);
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

static int run_encoder(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W,
                       int32_t *codes, float *feat) {
    int Tl, Gh, Gw;
    if (ds4_vtok_latent_shape(m, T, H, W, &Tl, &Gh, &Gw) != 0) return -1;
    const size_t per = (size_t)Gh * Gw, P = m->P;
    const int halo = m->cfg.enc_layers;
    float *x = ds4_malloc((size_t)Tl * per * P * sizeof(float));
    ds4_vtok_ws *ws = ds4_vtok_ws_new(m, (size_t)(VTOK_CHUNK + 2 * halo) * per);
    if (!x || !ws) { free(x); ds4_vtok_ws_free(ws); return -1; }
    ds4_vtok_patchify(rgb, T, H, W, m->cfg.tubelet, m->cfg.patch, 0, x);
    vtok_w Wt;
    bind(m, m->params, &Wt);
    for (int t0 = 0; t0 < Tl; t0 += VTOK_CHUNK) {
        int t1 = DS4_MIN(Tl, t0 + VTOK_CHUNK), a, b;
        chunk_range(m, halo, Tl, t0, t1, &a, &b);
        grid g = {1, b - a, Gh, Gw};
        enc_forward(m, &Wt, ws, &g, x + (size_t)a * per * P, (size_t)(b - a) * per);
        size_t skip = (size_t)(t0 - a) * per, n = (size_t)(t1 - t0) * per;
        if (codes) ds4_fsq_forward(&m->fsq, ws->z + skip * m->fsq.n, NULL, codes + t0 * per, n, 1);
        if (feat)
            memcpy(feat + (size_t)t0 * per * m->cfg.hidden, ws->eh + skip * m->cfg.hidden,
                   n * m->cfg.hidden * sizeof(float));
    }
    free(x);
    ds4_vtok_ws_free(ws);
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
    ds4_vtok_ws *ws = ds4_vtok_ws_new(m, (size_t)(VTOK_CHUNK + 2 * halo) * per);
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
                ds4_vtok_ws_free(ws);
                return -1;
            }
        grid g = {1, b - a, Gh, Gw};
        dec_forward(m, &Wt, ws, &g, ws->y, n);
        ds4_vtok_unpatchify(ws->y + (size_t)(t0 - a) * per * m->P, t1 - t0, Gh * p, Gw * p, tub, p,
                            rgb + (size_t)t0 * tub * frame);
    }
    ds4_vtok_ws_free(ws);
    return 0;
}
