/* video.h — the video tokenizer of SPEC §3: an autoencoder that turns RGB
 * clips into discrete codes (one per tubelet of `tubelet` frames x `patch` x
 * `patch` pixels) with finite scalar quantization (FSQ), and back. Also its
 * training (own AdamW), evaluation (PSNR, ball-centroid error after a round
 * trip), the codes file format and a GIF reader for clips.
 *
 * Frames are RGB8 [T][H][W][3], top row first (as in world/world.h). Codes
 * are int32 in [0, n_codes), laid out [T/tubelet][H/patch][W/patch]. */
#ifndef DS4_VIDEO_H
#define DS4_VIDEO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS4_VTOK_MAX_LEVELS 8
#define DS4_VTOK_MAX_LAYERS 8

/* ---- FSQ (SPEC §3) ----------------------------------------------------------
 * Per channel c with L = levels[c] levels:
 *   half   = (L - 1) * (1 - 1e-3) / 2
 *   offset = 0.5 if L is even else 0
 *   shift  = atanh(offset / half)
 *   bound(z) = tanh(z + shift) * half - offset
 *   q      = round(bound(z)) / (L // 2)        round: half to even (torch.round)
 * Backward is straight-through for round: dq/dz = bound'(z) / (L // 2).
 * Digit d_c = q_c * (L // 2) + L // 2 in [0, L). The code index is the
 * mixed-radix number of the digits with the FIRST channel least significant:
 *   code = d_0 + L_0 * (d_1 + L_1 * (d_2 + ...)),  basis[c] = prod_{j<c} L_j
 * (the same order as vector-quantize-pytorch's FSQ). [8,5,5,5] -> 1000 codes. */
typedef struct ds4_fsq {
    int     n;                              /* channels */
    int     levels[DS4_VTOK_MAX_LEVELS];    /* L per channel */
    int     hl[DS4_VTOK_MAX_LEVELS];        /* L // 2 */
    float   half[DS4_VTOK_MAX_LEVELS], offset[DS4_VTOK_MAX_LEVELS], shift[DS4_VTOK_MAX_LEVELS];
    int32_t basis[DS4_VTOK_MAX_LEVELS];     /* mixed-radix place values, basis[0] = 1 */
    int32_t n_codes;                        /* prod(levels) */
} ds4_fsq;

/* levels: n in [1, 8] entries, each in [3, 65536] (L = 2 makes shift =
 * atanh(0.5 / 0.4995) undefined), product < 2^31. */
int   ds4_fsq_init(ds4_fsq *f, const int *levels, int n);
float ds4_fsq_bound(const ds4_fsq *f, int c, float z);
/* z [n_tok, f->n] -> q [n_tok, f->n] (may be NULL), codes [n_tok] (may be NULL).
 * With round == 0, q = bound(z) / (L // 2) (no rounding; codes still rounded):
 * the smooth path tests use for finite differences. */
void  ds4_fsq_forward(const ds4_fsq *f, const float *z, float *q, int32_t *codes,
                      size_t n_tok, int round);
/* Straight-through backward: dz [n_tok, n] = dq * bound'(z) / (L // 2) (WRITTEN). */
void  ds4_fsq_backward(const ds4_fsq *f, const float *z, const float *dq, float *dz,
                       size_t n_tok);
/* code <-> digits [n] and code -> q [n]. Codes out of range give -1 / an error. */
int     ds4_fsq_code_to_digits(const ds4_fsq *f, int32_t code, int *digits);
int32_t ds4_fsq_digits_to_code(const ds4_fsq *f, const int *digits);
int     ds4_fsq_code_to_q(const ds4_fsq *f, int32_t code, float *q);

/* ---- configuration (video_config.json) -------------------------------------
 * Architecture, all on the latent grid [T/tubelet][H/patch][W/patch] of
 * tokens (one per tubelet of P = tubelet*patch*patch*3 values, pixel/127.5 - 1,
 * laid out [frame][row][col][rgb]):
 *   encoder: h = W_patch x + b                                  [hidden]
 *            enc_layers x block                                 [hidden]
 *            z = W_proj rmsnorm(h) + b                          [n_levels] -> FSQ -> q
 *   decoder: h = W_embed gather(q) + b                          [hidden]
 *            dec_layers x block                                 [hidden]
 *            y = W_out silu(W_head rmsnorm(h) + b) + b          [head] -> [n_out]
 *   block:   h += W_fc2 silu(W_fc1 rmsnorm(dwconv(h)) + b) + b  (ffn wide)
 * gather() stacks a token's neighbourhood: the 3x3 spatial neighbours at
 * latent times t-1 and t (causal: K = 18 taps; codes can be decoded as they
 * arrive) or t-1, t, t+1 (causal = 0: K = 27); outside the grid is zero.
 * dwconv() is the depthwise convolution over the same taps (one weight per
 * channel and tap, plus a bias).
 * Output (key "output"): "palette" (default): n_out = tubelet*patch*patch*7
 * logits per token, laid out [colour][pixel]: a distribution over the 7 SPEC
 * palette colours per pixel (world.h order), trained with cross-entropy
 * against each pixel's nearest palette colour and
 * decoded as the expected colour (sum_k p_k palette_k: the MSE-optimal value
 * under the predicted distribution, exact where the model is sure); "rgb":
 * n_out = P values regressed with MSE. */
typedef struct ds4_vtok_config {
    int width, height;      /* training frame size (64 x 64); encode/decode take any multiple of patch */
    int fps;                /* 24 */
    int patch, tubelet;     /* 8, 4 */
    int n_levels;
    int levels[DS4_VTOK_MAX_LEVELS];  /* 8,5,5,5 */
    int hidden;             /* latent-grid channels (128) */
    int ffn;                /* block MLP width (256) */
    int head;               /* decoder per-token head width (256) */
    int enc_layers, dec_layers;       /* blocks (2, 3) */
    int causal;             /* 1 */
    int palette;            /* 1: palette-distribution output (default), 0: RGB regression */
} ds4_vtok_config;

void ds4_vtok_config_defaults(ds4_vtok_config *c);
int  ds4_vtok_config_validate(const ds4_vtok_config *c);
/* JSON text (malloc'd) / parse. Unknown keys are errors naming the key;
 * missing keys take the defaults; "n_codes", when present, must equal prod(levels). */
char *ds4_vtok_config_to_json(const ds4_vtok_config *c);
int   ds4_vtok_config_parse(ds4_vtok_config *c, const char *json, const char *origin);

/* ---- model ------------------------------------------------------------------ */
typedef struct ds4_vtok_tensor {
    char   name[64];        /* "video.encoder.patch.weight", ... */
    int    ndim;
    int    shape[2];        /* [out, in] for weights, [out] for biases */
    size_t off, numel;      /* into the flat parameter buffer */
    int    decay;           /* 1: AdamW weight decay applies (matrices) */
} ds4_vtok_tensor;

#define DS4_VTOK_MAX_TENSORS (12 + 7 * 2 * DS4_VTOK_MAX_LAYERS)

typedef struct ds4_vtok {
    ds4_vtok_config cfg;
    ds4_fsq  fsq;
    int      P;             /* values per token: tubelet * patch * patch * 3 */
    int      n_out;         /* decoder outputs per token: P (rgb) or P / 3 * 7 (palette) */
    int      K;             /* neighbourhood taps: 18 causal, 27 otherwise */
    size_t   n_params;
    float   *params;        /* [n_params], 64-byte aligned */
    int      n_tensors;
    ds4_vtok_tensor tensors[DS4_VTOK_MAX_TENSORS];
    int      sharp;                 /* runtime, palette output: decode the most likely colour
                                       (argmax) instead of the expected colour (0) */
    struct ds4_vtok_ws *ws_cache;   /* inference workspace kept between calls */
    int      ws_busy;               /* ws_cache in use (atomic) */
} ds4_vtok;

/* A new model with random weights (deterministic from seed). */
ds4_vtok *ds4_vtok_new(const ds4_vtok_config *c, uint64_t seed);
/* The same layout with all weights zero (for loading). */
ds4_vtok *ds4_vtok_alloc(const ds4_vtok_config *c);
void      ds4_vtok_free(ds4_vtok *m);
int32_t   ds4_vtok_n_codes(const ds4_vtok *m);
const ds4_vtok_tensor *ds4_vtok_find(const ds4_vtok *m, const char *name);

/* DIR/video.safetensors (tensors video.*, F32) + DIR/video_config.json, both
 * written atomically. Loading checks every tensor's presence, dtype and shape
 * and rejects tensors it does not know. */
int       ds4_vtok_save(const ds4_vtok *m, const char *dir);
ds4_vtok *ds4_vtok_load(const char *dir);

/* Latent grid of a clip: Tl = ceil(T / tubelet), Gh = H / patch, Gw = W / patch.
 * -1 with an error when H or W is not a positive multiple of patch. */
int ds4_vtok_latent_shape(const ds4_vtok *m, int T, int H, int W, int *Tl, int *Gh, int *Gw);

/* Encode rgb [T][H][W][3] into codes [Tl][Gh][Gw]. When T is not a multiple
 * of tubelet the last frame is repeated to fill the last tubelet. */
int ds4_vtok_encode(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W, int32_t *codes);
/* Decode codes [Tl][Gh][Gw] into rgb [Tl*tubelet][Gh*patch][Gw*patch][3]. */
int ds4_vtok_decode(const ds4_vtok *m, const int32_t *codes, int Tl, int Gh, int Gw, uint8_t *rgb);
/* Encoder features (the stream before the final norm and FSQ projection),
 * feat [Tl*Gh*Gw][hidden] (for the
 * FVD-proxy of SPEC §3). */
int ds4_vtok_features(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W, float *feat);

/* ---- pieces exposed for training and tests -------------------------------- */
/* Tubelets of a clip as model inputs: x [Tl][Gh][Gw][P] = pixel / 127.5 - 1
 * (frames past T repeat frame T-1); flip != 0 mirrors each frame left-right. */
void ds4_vtok_patchify(const uint8_t *rgb, int T, int H, int W, int tubelet, int patch,
                       int flip, float *x);
/* Inverse: y [Tl][Gh][Gw][P] -> rgb [Tl*tubelet][H][W][3], rounded and clamped. */
void ds4_vtok_unpatchify(const float *y, int Tl, int H, int W, int tubelet, int patch,
                         uint8_t *rgb);

/* Latent-grid operators of the blocks (video.h architecture), on S grids of
 * [Tl][Gh][Gw] tokens with Ch channels; K = 18 (causal) or 27 taps, tap k =
 * (dt, dy, dx) = (k / 9 - 1, (k / 3) % 3 - 1, k % 3 - 1); outside is zero.
 * gather: dst [N, K*Ch]; its backward ACCUMULATES dsrc [N, Ch].
 * dwconv: u [N, Ch] = b + sum_k w[c, k] h[n + tap k] with w [Ch, K]; its
 * backward ACCUMULATES dh [N, Ch], dw [Ch, K], db [Ch]. */
void ds4_vtok_gather(const float *src, float *dst, int S, int Tl, int Gh, int Gw, int Ch, int K);
void ds4_vtok_gather_backward(const float *ddst, float *dsrc, int S, int Tl, int Gh, int Gw,
                              int Ch, int K);
int  ds4_vtok_dwconv(const float *h, const float *w, const float *b, float *u, int S, int Tl,
                     int Gh, int Gw, int Ch, int K);
int  ds4_vtok_dwconv_backward(const float *du, const float *h, const float *w, float *dh,
                              float *dw, float *db, int S, int Tl, int Gh, int Gw, int Ch, int K);

/* Forward/backward workspace for up to max_tok tokens. */
typedef struct ds4_vtok_ws ds4_vtok_ws;
ds4_vtok_ws *ds4_vtok_ws_new(const ds4_vtok *m, size_t max_tok);
void         ds4_vtok_ws_free(ds4_vtok_ws *w);
/* Training options of a workspace: the seed of the quantization noise
 * (round = 2) and the weight of the FSQ input range penalty
 * z_penalty * mean(relu(|z| - 2)^2) added to the loss (0 = off, the default):
 * tanh in bound() has almost no gradient beyond |z| ~ 2, and a channel whose
 * inputs all drift there never comes back (a dead channel). Every code stays
 * reachable inside |z| <= 2. */
void         ds4_vtok_ws_options(ds4_vtok_ws *w, uint64_t seed, float z_penalty);

/* x: S sequences of [Tl][Gh][Gw][P] inputs (also the targets). Returns the
 * loss: rgb, mean((y - x)^2) over all S*Tl*Gh*Gw*P values; palette, the mean
 * cross-entropy per pixel against the nearest palette colour of x. y (may be
 * NULL) receives the reconstruction [N, P] in input units; mse (may be NULL)
 * its mean squared error against x. When grads != NULL they ACCUMULATE
 * d loss / d params [n_params] (times loss_scale). round: 1 FSQ as SPEC §3
 * (straight-through); 0 no rounding (smooth path for finite differences);
 * 2 uniform noise of one quantization step in place of rounding (a training
 * warm-up: exact gradients, a decoder that tolerates the rounding). NAN on error. */
double ds4_vtok_forward_backward(const ds4_vtok *m, ds4_vtok_ws *w, const float *x, int S,
                                 int Tl, int Gh, int Gw, float *y, double *mse, float *grads,
                                 float loss_scale, int round);

/* ---- training -------------------------------------------------------------- */
typedef struct ds4_vtok_progress {
    long   step, steps;
    double loss;            /* training loss of this step (cross-entropy, or MSE for rgb) */
    double train_psnr;      /* PSNR of this step's reconstruction (before rounding to RGB8) */
    double lr, grad_norm;
    double val_psnr;        /* NAN unless evaluated at this step */
    double val_centroid;    /* mean centroid error (px), NAN unless evaluated */
    double elapsed_s, tok_per_s;
} ds4_vtok_progress;

typedef struct ds4_vtok_train_opts {
    const char *data_dir;   /* from `ds4 world gen`: train-*.ds4w (+ val-*.ds4w when present) */
    const char *out_dir;    /* video.safetensors + video_config.json (+ train_log.jsonl) */
    ds4_vtok_config cfg;
    long   steps;           /* 600 */
    int    batch;           /* windows per step (4) */
    int    window;          /* latent frames per window (6 = 24 frames); 0 = whole clips */
    float  lr, min_lr_frac; /* 2e-3, 0.05 (cosine) */
    long   warmup;          /* 100 */
    float  weight_decay, beta1, beta2, eps, grad_clip;  /* 0.01, 0.9, 0.99, 1e-8, 1.0 */
    int    flip;            /* random left-right mirroring (1) */
    float  noise_frac;      /* first fraction of steps with noise instead of rounding (0) */
    float  z_penalty;       /* FSQ input range penalty weight (ds4_vtok_ws_options) (1.0) */
    uint64_t seed;
    long   eval_every;      /* 250; 0 = only at the end */
    int    eval_clips;      /* val clips per evaluation (16) */
    void (*progress)(void *user, const ds4_vtok_progress *p);
    void  *user;
} ds4_vtok_train_opts;

void ds4_vtok_train_opts_defaults(ds4_vtok_train_opts *o);
int  ds4_vtok_train(const ds4_vtok_train_opts *o);

/* AdamW over the flat parameter buffer (decay only on tensors with decay = 1). */
typedef struct ds4_vtok_adamw {
    float beta1, beta2, eps, weight_decay;
    long  t;
    float *m, *v;           /* [n_params] */
} ds4_vtok_adamw;
int  ds4_vtok_adamw_init(ds4_vtok_adamw *o, const ds4_vtok *m);
void ds4_vtok_adamw_free(ds4_vtok_adamw *o);
void ds4_vtok_adamw_step(ds4_vtok_adamw *o, ds4_vtok *m, const float *grads, float lr);

/* ---- evaluation -------------------------------------------------------------
 * PSNR = 10 log10(255^2 / MSE) over RGB8 values. Centroid error: in every
 * frame, for each ball colour, the largest blob of that colour found by
 * ds4_world_extract (tolerance DS4_VTOK_EVAL_TOL, min area DS4_VTOK_EVAL_MIN_AREA)
 * in the original and in the reconstruction; the distance between their
 * centroids in pixels. A ball found only in the original is "missed", one
 * found only in the reconstruction "spurious". */
#define DS4_VTOK_EVAL_TOL      60
#define DS4_VTOK_EVAL_MIN_AREA 3
#define DS4_VTOK_CENT_BIN      0.05   /* px per histogram bin of centroid errors */
#define DS4_VTOK_CENT_BINS     512    /* the last bin holds everything >= 25.55 px */
#define DS4_VTOK_EVAL_CLASSES  7      /* palette colours (DS4_WC_COUNT) */

typedef struct ds4_vtok_eval_stats {
    double sq_err;          /* sum of squared errors over RGB8 values */
    double n_values;
    double psnr_sum;        /* sum of per-clip PSNR */
    int    n_clips;
    double cent_sum, cent_max;
    long   cent_hist[DS4_VTOK_CENT_BINS];   /* matched ball-frames by error */
    long   n_matched, n_missed, n_spurious;
    double enc_s, dec_s;    /* time spent */
    long   n_frames;
    /* split by scene: clips whose original shows any water pixel (the exact
     * palette colour) vs clips without water */
    double sq_err_water, n_values_water;
    int    n_clips_water;
    /* split by pixel: squared error and value count over pixels whose original
     * is exactly palette colour k (world.h order; antialiased or foreign colours
     * count nowhere) */
    double class_sq_err[DS4_VTOK_EVAL_CLASSES], class_n_values[DS4_VTOK_EVAL_CLASSES];
} ds4_vtok_eval_stats;

/* Round trip one clip rgb [T][H][W][3] (px_per_m for extraction; <= 0 means
 * W / DS4_WORLD_WIDTH_M) and accumulate into st. recon [T][H][W][3] may be NULL. */
int ds4_vtok_eval_clip(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W,
                       ds4_vtok_eval_stats *st, uint8_t *recon);
/* Compare a clip with a reconstruction (no model): accumulate into st. */
int ds4_vtok_eval_compare(const uint8_t *a, const uint8_t *b, int T, int H, int W,
                          ds4_vtok_eval_stats *st);
/* Round trip the first max_clips (0: all) clips of DIR/<split>-*.ds4w. */
int ds4_vtok_eval_dir(const ds4_vtok *m, const char *dir, const char *split, int max_clips,
                      ds4_vtok_eval_stats *st);
double ds4_vtok_eval_psnr(const ds4_vtok_eval_stats *st);       /* from the pooled MSE */
/* PSNR over the clips with water (water = 1) or without (0); NAN if none. */
double ds4_vtok_eval_psnr_scenes(const ds4_vtok_eval_stats *st, int water);
/* PSNR over the pixels whose original is palette colour k; NAN if none. */
double ds4_vtok_eval_psnr_class(const ds4_vtok_eval_stats *st, int k);
double ds4_vtok_eval_centroid(const ds4_vtok_eval_stats *st);   /* mean px, NAN if none */
/* Quantile q in [0, 1] of the centroid errors, to DS4_VTOK_CENT_BIN (the upper
 * edge of its bin); NAN if none. */
double ds4_vtok_eval_centroid_quantile(const ds4_vtok_eval_stats *st, double q);
/* A reference reconstruction with no model (the "water-blur bound"): rgb
 * [T][H][W][3] with every pixel exact except in water blocks, where each pixel
 * becomes its mean over the tubelet's frames (rounded half up; the last
 * tubelet may be short). A water block is `block` x `block` pixels of one
 * tubelet in which any frame shows the exact water colour. This is what a
 * decoder gets that reproduces everything but the particles' motion inside
 * a tubelet: the ceiling of codes too coarse to place single particles.
 * out [T][H][W][3]; H and W multiples of block. */
int    ds4_vtok_water_blur(const uint8_t *rgb, int T, int H, int W, int tubelet, int block,
                           uint8_t *out);
/* Add the counts of b into a. */
void   ds4_vtok_eval_merge(ds4_vtok_eval_stats *a, const ds4_vtok_eval_stats *b);

/* ---- codes file -------------------------------------------------------------
 * Little-endian:
 *   0  char[8] "DS4VCODE"     8 u32 version (1)     12 u32 n_frames (decoded frames to keep)
 *  16  u32 Tl  20 u32 Gh  24 u32 Gw  28 u32 n_codes
 *  32  u32 tubelet  36 u32 patch  40 u32 fps  44 u32 crc32 of the code bytes
 *  48  u8[16] zero
 *  64  Tl*Gh*Gw u32 codes, [Tl][Gh][Gw] */
#define DS4_VTOK_CODES_MAGIC "DS4VCODE"

typedef struct ds4_vtok_codes {
    int n_frames, tl, gh, gw, n_codes, tubelet, patch, fps;
    int32_t *codes;         /* [tl][gh][gw], malloc'd by read */
} ds4_vtok_codes;

int  ds4_vtok_codes_write(const char *path, const ds4_vtok_codes *c);
int  ds4_vtok_codes_read(const char *path, ds4_vtok_codes *c);
void ds4_vtok_codes_free(ds4_vtok_codes *c);

/* ---- clips from files ----------------------------------------------------- */
/* Read an animated GIF as RGB8 frames [n][h][w][3] (malloc'd); fps from the
 * first frame delay (0 if none). */
int ds4_vtok_read_gif(const char *path, uint8_t **rgb, int *n_frames, int *width,
                      int *height, int *fps);
/* Nearest-sample downscale by an integer factor (the centre pixel of each
 * factor x factor block): a GIF written with --scale k back to its size. */
int ds4_vtok_downscale(const uint8_t *rgb, int T, int H, int W, int factor, uint8_t **out);

#ifdef __cplusplus
}
#endif
#endif
