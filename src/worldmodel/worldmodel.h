/* worldmodel.h — the unified world model of SPEC §3: one ds4 transformer that
 * reads and writes text and video tokens. The sequence layout, the training
 * set (dataset clips -> video codes + captions, mixed with text), the mixed
 * training loop, constrained generation with a rolling context (text-to-video
 * and simulation by continuation), and the physics evaluation against the
 * simulator (ball tracks, bounces, fitted g, baselines, FVD-proxy).
 *
 * Sequence (SPEC §3), per latent frame the Gh*Gw codes in raster order, then
 * <|frame|>:
 *   <|bos|> caption <|video|> c(0,0) .. c(0,63) <|frame|> c(1,0) .. <|frame|> <|eov|>
 * A code c has token id code_offset + c; the codes sit after the whole text
 * vocabulary (code_offset >= tokenizer vocab size). Training rows are padded
 * with <|pad|> after <|eov|>. */
#ifndef DS4_WORLDMODEL_H
#define DS4_WORLDMODEL_H

#include <stddef.h>
#include <stdint.h>
#include "ds4.h"
#include "infer/infer.h"
#include "model/model.h"
#include "video/video.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sequence layout (seq.c) ---------------------------------------------- */
typedef struct ds4_wm_layout {
    int text_vocab;               /* tokenizer vocabulary, specials included */
    int bos, eos, video, eov, frame, pad;   /* special token ids */
    int code_offset, n_codes;     /* codes are ids [code_offset, code_offset + n_codes) */
    int gh, gw, cpf;              /* latent grid of a frame; codes per latent frame = gh * gw */
    int tubelet, patch, fps, width, height;
} ds4_wm_layout;

/* From config.json's "video" object and the tokenizer's special tokens. tok
 * may be NULL: the specials are then the last six ids of the text vocabulary
 * [0, code_offset) in the order of include/ds4.h. Errors: no video object,
 * codes overlapping the text vocabulary, a missing special token. */
int ds4_wm_layout_init(ds4_wm_layout *L, const ds4_config *c, const ds4_tokenizer *tok);
/* The video tokenizer must match the config: patch, tubelet, levels, frame size. */
int ds4_wm_layout_check_vtok(const ds4_wm_layout *L, const ds4_vtok *vt);
static inline int ds4_wm_is_code(const ds4_wm_layout *L, int id) {
    return id >= L->code_offset && id < L->code_offset + L->n_codes;
}
/* Tokens of a sequence: 2 + n_caption + n_lat * (cpf + 1) (+1 with eov). */
static inline int ds4_wm_seq_len(const ds4_wm_layout *L, int n_caption, int n_lat, int eov) {
    return 2 + n_caption + n_lat * (L->cpf + 1) + (eov ? 1 : 0);
}
/* <|bos|> caption <|video|> (codes[t] <|frame|>) x n_lat [<|eov|>] into out[cap];
 * codes [n_lat][cpf]. Returns the length or -1 (too long, code out of range,
 * caption holding a non-text id). */
int ds4_wm_seq_build(const ds4_wm_layout *L, const int *caption, int n_caption,
                     const int32_t *codes, int n_lat, int eov, int *out, int cap);
/* Parse and validate a sequence built as above (trailing <|pad|> allowed after
 * <|eov|>; a sequence may stop after any complete <|frame|>). Fills the
 * caption span [*cap_start, *cap_start + *n_caption) of toks, codes
 * [max_lat][cpf] (may be NULL), *n_lat and *closed (saw <|eov|>). Any
 * structural error (a text id where a code belongs, a missing or misplaced
 * <|frame|>, a half frame) is -1 with the token index in the message. */
int ds4_wm_seq_parse(const ds4_wm_layout *L, const int *toks, int n, int *cap_start,
                     int *n_caption, int32_t *codes, int max_lat, int *n_lat, int *closed);

/* ---- a world model directory (wm.c) --------------------------------------- *
 * DIR/config.json, model.safetensors, tokenizer.json (the backbone),
 * video.safetensors + video_config.json (the video tokenizer) and
 * worldmodel.json (generation defaults; optional). */
typedef struct ds4_wm_settings {
    int window;                   /* latent frames per training row (12): the most kept in context */
    int keep;                     /* latent frames kept when the context is rebuilt (6) */
    int caption_max;              /* caption tokens kept (64) */
} ds4_wm_settings;

void ds4_wm_settings_defaults(ds4_wm_settings *s);
int  ds4_wm_settings_load(ds4_wm_settings *s, const char *path);   /* missing file: defaults */
int  ds4_wm_settings_save(const ds4_wm_settings *s, const char *path);

typedef struct ds4_wm {
    ds4_model     *m;
    ds4_tokenizer *tok;
    ds4_vtok      *vt;
    ds4_wm_layout  L;
    ds4_wm_settings s;
} ds4_wm;

ds4_wm *ds4_wm_open(const char *dir);
void    ds4_wm_free(ds4_wm *w);
/* Save a model with every tensor as F16 (half the bytes of F32; ds4 loads
 * F16 into fp32): config.json + model.safetensors in dir. */
int     ds4_wm_save_f16(const ds4_model *m, const char *dir);

/* ---- training (data.c, train.c) ------------------------------------------- */
/* Clips of a dataset split as codes, with their tokenized captions. */
typedef struct ds4_wm_clips {
    int      n_clips, n_lat, cpf;
    int32_t *codes;               /* [n_clips][n_lat][cpf] */
    int     *cap_ids;             /* all captions, concatenated */
    int     *cap_off, *cap_len;   /* [n_clips] */
} ds4_wm_clips;

/* Encode the first max_clips (0: all) clips of DIR/<split>-*.ds4w with the
 * video tokenizer and tokenize DIR/<split>.jsonl captions (at most
 * caption_max tokens). */
int  ds4_wm_clips_encode(ds4_wm_clips *c, const ds4_vtok *vt, const ds4_tokenizer *tok,
                         const ds4_wm_layout *L, const char *dir, const char *split,
                         int max_clips, int caption_max);
void ds4_wm_clips_free(ds4_wm_clips *c);

/* One training row of T+1 tokens from clip `clip`: latent frames
 * [start, start + n) (n = window, fewer if the caption leaves no room),
 * caption or not, <|eov|>, then <|pad|>. Returns 0 or -1. */
int  ds4_wm_row_video(const ds4_wm_layout *L, const ds4_wm_clips *c, int clip, int start,
                      int window, int with_caption, int *row, int T1);

typedef struct ds4_wm_train_opts {
    const char *config_path;      /* backbone config.json with a "video" object */
    const char *tokenizer_path;   /* tokenizer.json (vocab = video.code_offset) */
    const char *vtok_dir;         /* trained video tokenizer */
    const char *data_dir;         /* `ds4 world gen` dataset: train (and val) splits */
    const char *text_path;        /* token shard of text (ds4 tokenize), or NULL */
    const char *text_val_path;    /* token shard for text validation, or NULL */
    const char *out_dir;
    int    max_clips;             /* 0: all train clips */
    long   steps;
    int    batch, seq;            /* rows per step, tokens per row (T) */
    int    window;                /* latent frames per video row */
    int    caption_max;           /* caption tokens kept (64; the simulator's captions run to 107) */
    float  text_frac;             /* probability that a row is text (0.25) */
    float  caption_drop;          /* probability that a video row has no caption (0.2) */
    float  start_zero;            /* probability that a video row starts at latent frame 0 (0.5) */
    float  lr, min_lr_frac;
    long   warmup;
    float  weight_decay, beta1, beta2, eps, grad_clip;
    uint64_t seed;
    long   eval_every, save_every;
    int    eval_rows;             /* validation rows of each kind (8) */
    int    f16;                   /* save model.safetensors as F16 at the end */
    int    quiet;
    int    resume;                /* continue from out_dir (model, optimizer, state) */
    double time_limit_s;          /* stop (with a checkpoint) after this many seconds; 0 = off */
    long   stop_after;            /* stop (with a checkpoint) after this many steps of this run; 0 = off */
} ds4_wm_train_opts;

void ds4_wm_train_opts_defaults(ds4_wm_train_opts *o);
/* Writes out_dir/{config.json, model.safetensors, tokenizer.json,
 * video.safetensors, video_config.json, worldmodel.json, train_log.jsonl}
 * (+ optimizer.safetensors and trainer_state.json while training). */
int  ds4_wm_train(const ds4_wm_train_opts *o);

/* ---- generation (gen.c) --------------------------------------------------- */
/* Guidance scale of captioned requests by default (1: off); 2 chosen on 16 validation captions
 * of the shipped model (1 / 2 / 3 / 5 at temperature 0.6). */
#define DS4_WM_CFG_DEFAULT 2.0f
/* Sampling temperature of continuation (ds4 simulate, eval's continuation); see gen.c. */
#define DS4_WM_TEMP_DEFAULT 0.3f
/* Sampling temperature of text-to-video (ds4 video, eval's text-to-video); continuation keeps
 * the generation default (0.3, gen.c). 0.8 chosen on 64 validation captions of the shipped model
 * (0.6 / 0.8 / 1.0 / 1.2: colours right 19 / 33 / 38 / 27%, count 30 / 48 / 36 / 23%, whole
 * caption 3 / 5 / 5 / 2%, FVD-proxy 10.7 / 7.0 / 13.1 / 45.3). */
#define DS4_WM_T2V_TEMP_DEFAULT 0.8f

typedef struct ds4_wm_gen_params {
    ds4_sampler_params sampler;   /* over the video codes only */
    int window;                   /* 0: settings.window */
    int keep;                     /* 0: settings.keep */
    int batch;                    /* sequences per forward call (0: all) */
    float cfg_scale;              /* classifier-free guidance of captioned requests: code logits
                                   * u + s·(c − u) from the caption-free twin u (1: off, the default) */
} ds4_wm_gen_params;

void ds4_wm_gen_params_default(ds4_wm_gen_params *p);

typedef struct ds4_wm_request {
    const char    *caption;       /* NULL or "": no caption */
    const int32_t *given;         /* [n_given][cpf] codes to continue, or NULL */
    int            n_given;       /* latent frames given */
    int            n_new;         /* latent frames to generate */
    uint64_t       seed;          /* sampler seed of this request */
    int32_t       *out;           /* [n_given + n_new][cpf], caller's */
    int           *tokens;        /* [n_new * (cpf + 1)] generated tokens (codes and the
                                   * forced <|frame|>s), or NULL */
} ds4_wm_request;

typedef struct ds4_wm_gen_stats {
    long   sampled;               /* codes sampled */
    long   forced;                /* <|frame|> tokens forced */
    long   prefill_tokens;        /* tokens fed by (re)prefills */
    long   decode_tokens;         /* tokens fed one step at a time */
    int    rebuilds;              /* context rebuilds (rolling window) */
    double seconds;
} ds4_wm_gen_stats;

/* Generate every request (batched, constrained: only code ids at code
 * positions, <|frame|> forced after each latent frame). The context holds
 * <|bos|> caption <|video|> and at most `window` latent frames; when it is
 * full it is rebuilt from the prefix and the last `keep` frames (re-prefill,
 * positions restart at 0 as in training). stats may be NULL. */
int ds4_wm_generate(const ds4_wm *w, ds4_wm_request *req, int n, const ds4_wm_gen_params *p,
                    ds4_wm_gen_stats *stats);

/* Pixels <-> codes with the model's video tokenizer. rgb [T][H][W][3]; codes
 * [ceil(T / tubelet)][cpf]. decode writes n_lat * tubelet frames. */
int ds4_wm_encode(const ds4_wm *w, const uint8_t *rgb, int T, int32_t *codes);
int ds4_wm_decode(const ds4_wm *w, const int32_t *codes, int n_lat, uint8_t *rgb);

/* ---- tracks and physics metrics (track.c) --------------------------------- *
 * Balls are found by colour (SPEC palette) in every frame: the largest blob of
 * each ball colour (ds4_world_extract, tolerance DS4_WM_TOL, at least
 * DS4_WM_MIN_AREA pixels). Positions are in metres, y up (SPEC pixel-centre
 * rule); k = colour - DS4_WC_RED indexes red, green, blue, yellow. */
#define DS4_WM_TOL       60
#define DS4_WM_MIN_AREA  3
#define DS4_WM_COLORS    4

typedef struct ds4_wm_track {
    int     n_frames, width, height;
    double  px_per_m, fps;
    uint8_t *found;               /* [n_frames][4] */
    double  *x, *y, *r;           /* [n_frames][4] centre (m) and radius sqrt(area/pi) (m) */
    int     *count;               /* [n_frames] ball blobs of any colour */
} ds4_wm_track;

int  ds4_wm_track_clip(const uint8_t *rgb, int T, int H, int W, double px_per_m, double fps,
                       ds4_wm_track *t);
void ds4_wm_track_free(ds4_wm_track *t);
/* Bounces of colour k among frames [f0, f1): a local minimum of y (floor),
 * maximum of y (ceiling) or extremum of x (walls) with at least
 * DS4_WM_BOUNCE_PX of travel on both sides within 2 frames, and no other ball
 * touching it within a frame (that is a collision). Needs frames f-2..f+2, so
 * bounces in the last 2 frames are not seen. Frame indices go to
 * frames[max] (may be NULL); returns the count. */
#define DS4_WM_BOUNCE_PX 1.5
int  ds4_wm_bounces(const ds4_wm_track *t, int k, int f0, int f1, int *frames, int max);
/* Gravity fitted to colour k's heights (k = -1: all colours) in frames
 * [f0, f1): one parabola curvature shared by the free-flight segments (each
 * segment its own offset and slope; segments of at least 6 frames, cut at
 * bounces, at frames whose second difference of y exceeds 1.5 px, and where
 * the ball rests on the floor). *g (m/s^2, positive down) and *n_points; -1
 * with fewer than 8 usable points (no error set). */
int  ds4_wm_fit_g(const ds4_wm_track *t, int k, int f0, int f1, double wall_m, double *g,
                  int *n_points);

/* Metrics of one predicted clip against the reference (both tracked with the
 * same rules) over frames [f0, f1) of the two tracks. */
typedef struct ds4_wm_clip_metrics {
    int    n_pairs;               /* (ball, frame) pairs visible in the reference */
    int    n_missed;              /* of those, not found in the prediction */
    double *pos_err_px;           /* [n_pairs] error in px, INFINITY when missed (malloc'd) */
    int    *pos_dt;               /* [n_pairs] frames since f0 */
    int    n_vel;
    double vel_err_sum;           /* sum of |v_pred - v_ref| (m/s) over n_vel */
    double *vel_err;              /* [n_vel] (malloc'd) */
    int    bounce_ref, bounce_pred;   /* totals over balls */
    int    bounce_correct;        /* 1 when every ball's count matches */
    int    bounce_matched;        /* bounces paired in order */
    double bounce_dt_sum;         /* sum of |frame difference| over paired bounces */
    double g_pred, g_ref;         /* fitted g (NAN when no fit) */
    int    count_frames, count_equal;  /* frames compared, frames with the same blob count */
    double count_abs_sum;         /* sum of |count_pred - count_ref| */
} ds4_wm_clip_metrics;

int  ds4_wm_compare(const ds4_wm_track *pred, const ds4_wm_track *ref, int f0, int f1,
                    double wall_m, ds4_wm_clip_metrics *m);
void ds4_wm_clip_metrics_free(ds4_wm_clip_metrics *m);

/* Caption match of a generated clip (SPEC §3 text-to-video): the set of ball
 * colours seen in the first latent frame, their count, and each ball's start
 * region (left/centre/right third, upper/lower half, as the captioner words
 * it) against the truth's first frame. */
typedef struct ds4_wm_caption_check {
    int colors_ok, count_ok, region_ok, all_ok;
    int n_true, n_found;
} ds4_wm_caption_check;
int ds4_wm_caption_check_clip(const ds4_wm_track *gen, int n_first, const int *true_colors,
                              const double *true_x, const double *true_y, int n_true,
                              double width_m, double height_m, ds4_wm_caption_check *out);

/* ---- clip files (output.c) -------------------------------------------------- */
typedef struct ds4_wm_output {
    const char *gif;              /* animated GIF (required), through the world library's writer */
    int         scale;            /* GIF pixel upscale (4) */
    const char *png_dir;          /* PNG frames, or NULL */
    const char *mp4;              /* MP4 via ffmpeg, or NULL (skipped when ffmpeg is absent) */
    const char *json;             /* trajectories; NULL: the GIF path with .json */
    int         fps;              /* output frame rate; 0 = native (frames resampled by nearest time) */
} ds4_wm_output;

typedef struct ds4_wm_output_info {
    char json[4096];              /* where the trajectories went */
    int  mp4_written;             /* 0 when skipped (no ffmpeg) */
    int  n_frames;                /* frames written (after resampling) */
    int  fps;
} ds4_wm_output_info;

/* Write a clip rgb [n_frames][H][W][3] at native_fps. `given` frames (0 for
 * text-to-video) came from the input; caption may be NULL. The JSON holds,
 * per frame, every ball found by colour (x, y in metres, y up; radius), and
 * per colour the detected bounces and fitted g. */
int ds4_wm_write_clip(const ds4_wm_output *o, const uint8_t *rgb, int n_frames, int W, int H,
                      int native_fps, double px_per_m, int given, const char *caption,
                      ds4_wm_output_info *info);

/* ---- Fréchet distance (fvd.c) --------------------------------------------- */
/* || mu_a - mu_b ||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2) between the
 * Gaussian fits of two sample sets a [na][d], b [nb][d]. Symmetric Jacobi
 * eigen-decompositions in double. */
double ds4_wm_frechet(const float *a, int na, const float *b, int nb, int d);
/* Symmetric eigen-decomposition of A [n][n] (destroyed): eigenvalues w[n],
 * eigenvectors as columns of V [n][n]. */
void   ds4_wm_eigh(double *A, int n, double *w, double *V);
/* FVD-proxy samples of a clip: ds4_vtok_features averaged over the spatial
 * tokens of each latent frame -> feat [ceil(T / tubelet)][hidden]. */
int    ds4_wm_clip_features(const ds4_vtok *vt, const uint8_t *rgb, int T, int H, int W,
                            float *feat);

/* ---- evaluation (eval.c) -------------------------------------------------- */
enum { DS4_WM_M_MODEL = 0, DS4_WM_M_TOKENIZER, DS4_WM_M_STILL, DS4_WM_M_CONSTVEL, DS4_WM_M_COUNT };
const char *ds4_wm_method_name(int method);   /* "model", "tokenizer", "still", "constvel" */

typedef struct ds4_wm_eval_opts {
    const char *data_dir;         /* dataset dir; NULL: simulate clips of the split's seeds */
    const char *split;            /* "test" */
    uint64_t    seed;             /* dataset base seed when simulating (0) */
    int n_clips;                  /* 32 */
    int given;                    /* conditioning frames (12) */
    int horizon;                  /* predicted frames (48 = 2 s) */
    int t2v_clips;                /* text-to-video prompts (the first n captions), 0 = none */
    int t2v_lat;                  /* latent frames generated per caption (6) */
    ds4_wm_gen_params gen;        /* continuation; text-to-video too, but at t2v_temp */
    float t2v_temp;               /* text-to-video temperature (DS4_WM_T2V_TEMP_DEFAULT) */
    uint64_t sample_seed;         /* per-clip sampler seeds derive from this */
    int verbose;                  /* progress on stderr */
} ds4_wm_eval_opts;

void ds4_wm_eval_opts_defaults(ds4_wm_eval_opts *o);

typedef struct ds4_wm_method_result {
    int    n_clips;
    long   n_pairs, n_missed;
    double pos_median_px, pos_median_pct;     /* over all pairs, misses counted as infinite */
    double pos_mean_px;                       /* over found pairs */
    double pos_at_px[3];                      /* median at +0.5 s, +1 s, +2 s (or the last frame) */
    double miss_rate;
    double vel_median;                        /* m/s */
    double bounce_acc;                        /* clips with every ball's count right */
    double bounce_dt_mean;                    /* frames, over paired bounces */
    long   bounce_ref, bounce_pred;
    double g_within15;                        /* clips with a fit within 15% of the true g / clips with a reference fit */
    double g_rel_median;                      /* median |g_fit - g| / g over clips with a reference fit (no fit: inf) */
    int    g_clips, g_fitted;                 /* clips with a reference fit, of those with a prediction fit */
    double count_acc, count_abs_mean;         /* frames with the right blob count; mean |error| */
    double fvd_proxy;
} ds4_wm_method_result;

typedef struct ds4_wm_eval_result {
    int n_clips, given, horizon, width, height, fps;
    ds4_wm_method_result m[DS4_WM_M_COUNT];
    /* instrument checks on the reference itself */
    double ref_g_rel_median;                  /* fit on the simulator's frames vs the true g */
    double ref_bounce_agree;                  /* clips whose detected bounce count equals the simulator's events */
    double ref_pos_err_px;                    /* mean |extracted - annotated| centre (px) */
    /* text-to-video */
    int    t2v_n;
    double t2v_all, t2v_colors, t2v_count, t2v_region;
    double t2v_ref_all;                       /* the same check on the true clips */
    double t2v_fvd_proxy;
    /* speed */
    double gen_seconds, gen_tok_s;
    long   gen_tokens;
    double eval_seconds;
} ds4_wm_eval_result;

/* Continuation (given -> horizon) on n_clips clips against the simulator,
 * the three baselines, and text-to-video caption checks. */
int ds4_wm_eval(const ds4_wm *w, const ds4_wm_eval_opts *o, ds4_wm_eval_result *r);
/* The result as one JSON object (malloc'd). */
char *ds4_wm_eval_json(const ds4_wm_eval_result *r);

#ifdef __cplusplus
}
#endif
#endif
