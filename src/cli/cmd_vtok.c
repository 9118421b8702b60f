/* cmd_vtok.c — `ds4 vtok`: the video tokenizer of SPEC §3. train fits one on
 * a `ds4 world gen` dataset, encode turns a clip (GIF or dataset clip) into a
 * codes file, decode turns codes back into a GIF, eval reports PSNR and the
 * ball-centroid error of round trips. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

static void vtok_usage(FILE *f) {
    fprintf(f,
        "usage: ds4 vtok <train|encode|decode|eval> [options]   (ds4 vtok <cmd> --help)\n\n"
        "  train   --data DIR --out DIR [--steps N] [--lr X] [--seed S] ...\n"
        "  encode  --model DIR (--clip CLIP.gif | --shard FILE --clip K) --out codes.bin\n"
        "  decode  --model DIR --codes codes.bin --out clip.gif [--scale 4] [--png DIR]\n"
        "  eval    --model DIR --data DIR [--split val] [--clips N] [--json FILE]\n");
}

static void train_usage(FILE *f) {
    ds4_vtok_train_opts d;
    ds4_vtok_train_opts_defaults(&d);
    fprintf(f,
        "usage: ds4 vtok train --data DIR --out DIR [options]\n\n"
        "Trains the video tokenizer (FSQ autoencoder) on DIR/train-*.ds4w from `ds4 world gen`,\n"
        "validating on DIR/val-*.ds4w when present. Writes OUT/video.safetensors,\n"
        "OUT/video_config.json and OUT/train_log.jsonl.\n\n"
        "  --steps N         optimizer steps (%ld)\n"
        "  --batch B         clip windows per step (%d)\n"
        "  --window W        latent frames per window, 0 = whole clips (%d)\n"
        "  --lr X            peak learning rate (%g), warmup then cosine to lr * %g\n"
        "  --warmup N        warmup steps (%ld)\n"
        "  --wd X            AdamW weight decay (%g)\n"
        "  --clip-grad X     global gradient norm clip, 0 = off (%g)\n"
        "  --seed S          initialisation and sampling seed (%llu)\n"
        "  --no-flip         no random left-right mirroring\n"
        "  --noise-frac X    first fraction X of steps trains with uniform noise of one\n"
        "                    quantization step instead of rounding (%g)\n"
        "  --z-penalty X     weight of the FSQ input range penalty mean(relu(|z| - 2)^2),\n"
        "                    against channels that saturate and die (%g)\n"
        "  --eval-every N    validate and save every N steps (%ld)\n"
        "  --eval-clips N    validation clips per evaluation (%d)\n"
        "  architecture (saved in video_config.json):\n"
        "  --levels 8,5,5,5  FSQ levels (codes = product)\n"
        "  --patch P --tubelet T   pixels per token side (%d), frames per token (%d)\n"
        "  --hidden H        latent-grid channels (%d)\n"
        "  --ffn F           block MLP width (%d)\n"
        "  --head D          decoder head width (%d)\n"
        "  --enc-layers N --dec-layers N   encoder / decoder blocks (%d, %d)\n"
        "  --non-causal      neighbourhoods see latent frame t+1 too\n"
        "  --quiet           no progress line\n",
        d.steps, d.batch, d.window, d.lr, d.min_lr_frac, d.warmup, d.weight_decay, d.grad_clip,
        (unsigned long long)d.seed, d.noise_frac, d.z_penalty, d.eval_every, d.eval_clips, d.cfg.patch, d.cfg.tubelet,
        d.cfg.hidden, d.cfg.ffn, d.cfg.head, d.cfg.enc_layers, d.cfg.dec_layers);
}

typedef struct { double t0; int quiet; long last_print; } train_ui;

static void train_progress(void *user, const ds4_vtok_progress *p) {
    train_ui *ui = user;
    int eval = !isnan(p->val_psnr);
    double eta = p->step > 0 ? p->elapsed_s / p->step * (p->steps - p->step) : 0;
    if (!ui->quiet && (p->step % 10 == 0 || p->step == p->steps || eval)) {
        fprintf(stderr, "\rstep %5ld/%ld  loss %.5f  psnr %5.2f dB  lr %.2e  |g| %.3f  %6.0f tok/s  ETA %4.0fs ",
                p->step, p->steps, p->loss, p->train_psnr, p->lr, p->grad_norm, p->tok_per_s, eta);
        fflush(stderr);
    }
    if (eval) {
        if (!ui->quiet) fputc('\n', stderr);
        printf("step %ld: train psnr %.2f dB, val psnr %.2f dB, val centroid error %.3f px (%.0f s)\n",
               p->step, p->train_psnr, p->val_psnr, p->val_centroid, p->elapsed_s);
        fflush(stdout);
    } else if (p->step == p->steps && !ui->quiet) {
        fputc('\n', stderr);
    }
}

static int parse_levels(const char *s, ds4_vtok_config *c) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 3 || v > 65536 || n == DS4_VTOK_MAX_LEVELS) return -1;
        c->levels[n++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    if (n == 0) return -1;
    c->n_levels = n;
    return 0;
}

static int vtok_train(int argc, char **argv) {
    const char *cmd = "vtok train";
    ds4_vtok_train_opts o;
    ds4_vtok_train_opts_defaults(&o);
    train_ui ui = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        double x;
        if (cli_is_help(a)) { train_usage(stdout); return 0; }
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) return 2; } while (0)
#define INT(lo, hi, dst) do { VAL(); if (cli_int(cmd, a, v, lo, hi, &n)) return 2; dst = n; } while (0)
#define FLT(dst) do { VAL(); if (cli_float(cmd, a, v, &x)) return 2; dst = (float)x; } while (0)
        if (!strcmp(a, "--data")) { VAL(); o.data_dir = v; }
        else if (!strcmp(a, "--out")) { VAL(); o.out_dir = v; }
        else if (!strcmp(a, "--steps")) INT(1, 100000000, o.steps);
        else if (!strcmp(a, "--batch")) INT(1, 4096, o.batch);
        else if (!strcmp(a, "--window")) INT(0, 100000, o.window);
        else if (!strcmp(a, "--lr")) FLT(o.lr);
        else if (!strcmp(a, "--warmup")) INT(0, 100000000, o.warmup);
        else if (!strcmp(a, "--wd")) FLT(o.weight_decay);
        else if (!strcmp(a, "--clip-grad")) FLT(o.grad_clip);
        else if (!strcmp(a, "--seed")) { VAL(); if (cli_int(cmd, a, v, 0, 1L << 52, &n)) return 2; o.seed = (uint64_t)n; }
        else if (!strcmp(a, "--no-flip")) o.flip = 0;
        else if (!strcmp(a, "--noise-frac")) FLT(o.noise_frac);
        else if (!strcmp(a, "--z-penalty")) FLT(o.z_penalty);
        else if (!strcmp(a, "--eval-every")) INT(0, 100000000, o.eval_every);
        else if (!strcmp(a, "--eval-clips")) INT(0, 1000000, o.eval_clips);
        else if (!strcmp(a, "--levels")) {
            VAL();
            if (parse_levels(v, &o.cfg)) {
                fprintf(stderr, "ds4 %s: --levels expects integers >= 3 separated by commas (at most %d), got '%s'\n",
                        cmd, DS4_VTOK_MAX_LEVELS, v);
                return 2;
            }
        }
        else if (!strcmp(a, "--patch")) INT(1, 64, o.cfg.patch);
        else if (!strcmp(a, "--tubelet")) INT(1, 64, o.cfg.tubelet);
        else if (!strcmp(a, "--hidden")) INT(1, 8192, o.cfg.hidden);
        else if (!strcmp(a, "--ffn")) INT(1, 65536, o.cfg.ffn);
        else if (!strcmp(a, "--head")) INT(1, 65536, o.cfg.head);
        else if (!strcmp(a, "--enc-layers")) INT(0, DS4_VTOK_MAX_LAYERS, o.cfg.enc_layers);
        else if (!strcmp(a, "--dec-layers")) INT(0, DS4_VTOK_MAX_LAYERS, o.cfg.dec_layers);
        else if (!strcmp(a, "--non-causal")) o.cfg.causal = 0;
        else if (!strcmp(a, "--quiet")) ui.quiet = 1;
        else return cli_unknown(cmd, a);
#undef VAL
#undef INT
#undef FLT
    }
    if (!o.data_dir || !o.out_dir) {
        fprintf(stderr, "ds4 %s: --data and --out are required (see ds4 vtok train --help)\n", cmd);
        return 2;
    }
    if (o.warmup >= o.steps) o.warmup = o.steps / 10;
    ui.t0 = ds4_time_s();
    o.progress = train_progress;
    o.user = &ui;
    if (ds4_vtok_train(&o) != 0) {
        if (!ui.quiet) fputc('\n', stderr);
        return cli_fail(cmd);
    }
    printf("saved %s/video.safetensors and %s/video_config.json (%.0f s)\n", o.out_dir, o.out_dir,
           ds4_time_s() - ui.t0);
    return 0;
}

/* ---- encode ------------------------------------------------------------------- */

static int vtok_encode(int argc, char **argv) {
    const char *cmd = "vtok encode", *model = NULL, *clip = NULL, *shard = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 vtok encode --model DIR (--clip CLIP.gif | --shard FILE --clip K) --out codes.bin\n\n"
                   "Encodes a clip into FSQ codes [T/tubelet][H/patch][W/patch]. A GIF whose size is an\n"
                   "integer multiple of the model's frame size (ds4 world render --scale k) is first\n"
                   "sampled back down. The codes file format is described in src/video/video.h.\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--clip")) clip = v;
        else if (!strcmp(a, "--shard")) shard = v;
        else if (!strcmp(a, "--out")) out = v;
        else return cli_unknown(cmd, a);
    }
    if (!model || !clip || !out) {
        fprintf(stderr, "ds4 %s: --model, --clip and --out are required (see --help)\n", cmd);
        return 2;
    }
    ds4_vtok *m = ds4_vtok_load(model);
    if (!m) return cli_fail(cmd);
    uint8_t *rgb = NULL;
    int T = 0, H = 0, W = 0, fps = m->cfg.fps, rc = 1;
    ds4_world_shard *sh = NULL;
    int32_t *codes = NULL;
    if (shard) {
        long k;
        if (cli_int(cmd, "--clip", clip, 0, 100000000, &k)) { rc = 2; goto done; }
        if (!(sh = ds4_world_shard_open(shard, 0))) { rc = cli_fail(cmd); goto done; }
        const uint8_t *c = ds4_world_shard_clip(sh, (int)k);
        if (!c) { rc = cli_fail(cmd); goto done; }
        if (ds4_world_shard_verify_clip(sh, (int)k) != 0) { rc = cli_fail(cmd); goto done; }
        T = sh->n_frames; H = sh->height; W = sh->width; fps = sh->fps;
        if (!(rgb = ds4_malloc((size_t)T * H * W * 3))) { rc = cli_fail(cmd); goto done; }
        memcpy(rgb, c, (size_t)T * H * W * 3);
    } else {
        int gfps;
        if (ds4_vtok_read_gif(clip, &rgb, &T, &W, &H, &gfps) != 0) { rc = cli_fail(cmd); goto done; }
        int f = W / m->cfg.width;
        if (f > 1 && W == f * m->cfg.width && H == f * m->cfg.height) {
            uint8_t *small;
            if (ds4_vtok_downscale(rgb, T, H, W, f, &small) != 0) { rc = cli_fail(cmd); goto done; }
            free(rgb);
            rgb = small;
            W /= f;
            H /= f;
        }
    }
    int Tl, Gh, Gw;
    if (ds4_vtok_latent_shape(m, T, H, W, &Tl, &Gh, &Gw) != 0) { rc = cli_fail(cmd); goto done; }
    if (!(codes = ds4_malloc((size_t)Tl * Gh * Gw * sizeof(int32_t)))) { rc = cli_fail(cmd); goto done; }
    double t0 = ds4_time_s();
    if (ds4_vtok_encode(m, rgb, T, H, W, codes) != 0) { rc = cli_fail(cmd); goto done; }
    double el = ds4_time_s() - t0;
    ds4_vtok_codes cf = {.n_frames = T, .tl = Tl, .gh = Gh, .gw = Gw, .n_codes = ds4_vtok_n_codes(m),
                         .tubelet = m->cfg.tubelet, .patch = m->cfg.patch, .fps = fps, .codes = codes};
    if (ds4_vtok_codes_write(out, &cf) != 0) { rc = cli_fail(cmd); goto done; }
    printf("encoded %d frames of %dx%d into %dx%dx%d codes (of %d) in %.3f s: %s\n", T, W, H, Tl, Gh, Gw,
           cf.n_codes, el, out);
    rc = 0;
done:
    free(codes);
    free(rgb);
    if (sh) ds4_world_shard_close(sh);
    ds4_vtok_free(m);
    return rc;
}

/* ---- decode ------------------------------------------------------------------- */

static int vtok_decode(int argc, char **argv) {
    const char *cmd = "vtok decode", *model = NULL, *codes_path = NULL, *out = NULL, *png = NULL;
    long scale = 4;
    int sharp = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--sharp")) { sharp = 1; continue; }
        if (cli_is_help(a)) {
            printf("usage: ds4 vtok decode --model DIR --codes codes.bin --out clip.gif [--scale 4] [--png DIR] [--sharp]\n\n"
                   "Decodes a codes file (from ds4 vtok encode, or a world model) into an animated GIF\n"
                   "(each pixel upscaled --scale times) and optionally PNG frames. --sharp: each pixel\n"
                   "takes its most likely palette colour instead of the expected colour.\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--codes")) codes_path = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--png")) png = v;
        else if (!strcmp(a, "--scale")) { if (cli_int(cmd, a, v, 1, 64, &scale)) return 2; }
        else return cli_unknown(cmd, a);
    }
    if (!model || !codes_path || (!out && !png)) {
        fprintf(stderr, "ds4 %s: --model, --codes and --out (or --png) are required (see --help)\n", cmd);
        return 2;
    }
    ds4_vtok *m = ds4_vtok_load(model);
    if (!m) return cli_fail(cmd);
    m->sharp = sharp;
    ds4_vtok_codes c;
    uint8_t *rgb = NULL;
    int rc = 1;
    if (ds4_vtok_codes_read(codes_path, &c) != 0) { ds4_vtok_free(m); return cli_fail(cmd); }
    if (c.n_codes != ds4_vtok_n_codes(m) || c.tubelet != m->cfg.tubelet || c.patch != m->cfg.patch) {
        fprintf(stderr, "ds4 %s: %s holds %d codes (tubelet %d, patch %d) but the model in %s has %d "
                "(tubelet %d, patch %d)\n", cmd, codes_path, c.n_codes, c.tubelet, c.patch, model,
                ds4_vtok_n_codes(m), m->cfg.tubelet, m->cfg.patch);
        goto done;
    }
    const int H = c.gh * c.patch, W = c.gw * c.patch;
    if (!(rgb = ds4_malloc((size_t)c.tl * c.tubelet * H * W * 3))) { rc = cli_fail(cmd); goto done; }
    double t0 = ds4_time_s();
    if (ds4_vtok_decode(m, c.codes, c.tl, c.gh, c.gw, rgb) != 0) { rc = cli_fail(cmd); goto done; }
    double el = ds4_time_s() - t0;
    int fps = c.fps > 0 ? c.fps : m->cfg.fps;
    if (out && ds4_world_write_gif(out, rgb, c.n_frames, W, H, fps, (int)scale) != 0) { rc = cli_fail(cmd); goto done; }
    if (png && ds4_world_write_png_frames(png, rgb, c.n_frames, W, H) != 0) { rc = cli_fail(cmd); goto done; }
    printf("decoded %dx%dx%d codes into %d frames of %dx%d in %.3f s: %s\n", c.tl, c.gh, c.gw, c.n_frames,
           W, H, el, out ? out : png);
    rc = 0;
done:
    free(rgb);
    ds4_vtok_codes_free(&c);
    ds4_vtok_free(m);
    return rc;
}

/* ---- eval --------------------------------------------------------------------- */

/* fn(clip, shard, k, index, ctx) for every clip (or the first max_clips) of DIR/<split>-*.ds4w */
typedef int (*clip_fn)(const uint8_t *clip, const ds4_world_shard *sh, int k, int index, void *ctx);

static int each_clip(const char *dir, const char *split, int max_clips, clip_fn fn, void *ctx) {
    char **paths = NULL;
    int n = 0, done = 0, rc = 0;
    if (ds4_world_dataset_shards(dir, split, &paths, &n) != 0) return -1;
    for (int i = 0; i < n && rc == 0 && (max_clips <= 0 || done < max_clips); i++) {
        ds4_world_shard *sh = ds4_world_shard_open(paths[i], 0);
        if (!sh) { rc = -1; break; }
        for (int k = 0; k < sh->n_clips && (max_clips <= 0 || done < max_clips); k++, done++) {
            const uint8_t *clip = ds4_world_shard_clip(sh, k);
            if (!clip || fn(clip, sh, k, done, ctx) != 0) {
                rc = -1;
                break;
            }
        }
        ds4_world_shard_close(sh);
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return rc;
}

typedef struct { const ds4_vtok *m; ds4_vtok_eval_stats *st; int tubelet; } eval_ctx;

/* Round trip of one clip, its figures printed, pooled into st. */
static int eval_one(const uint8_t *clip, const ds4_world_shard *sh, int k, int index, void *ctx) {
    const eval_ctx *e = ctx;
    ds4_vtok_eval_stats one = {0};
    if (ds4_vtok_eval_clip(e->m, clip, sh->n_frames, sh->height, sh->width, &one, NULL) != 0) return -1;
    printf("  clip %4d seed %-8llu %s psnr %6.2f dB  centroid %6.3f px (max %6.3f, %ld ball-frames, %ld missed)\n",
           index, (unsigned long long)sh->seeds[k], one.n_clips_water ? "water" : "     ", ds4_vtok_eval_psnr(&one),
           ds4_vtok_eval_centroid(&one), one.cent_max, one.n_matched, one.n_missed);
    ds4_vtok_eval_merge(e->st, &one);
    return 0;
}

/* The water-blur bound (ds4_vtok_water_blur, 4x4 px blocks) of one clip, pooled into st. */
static int bound_one(const uint8_t *clip, const ds4_world_shard *sh, int k, int index, void *ctx) {
    (void)k; (void)index;
    const eval_ctx *e = ctx;
    uint8_t *ref = ds4_malloc((size_t)sh->n_frames * sh->height * sh->width * 3);
    int rc = !ref || ds4_vtok_water_blur(clip, sh->n_frames, sh->height, sh->width, e->tubelet, 4, ref) != 0 ||
             ds4_vtok_eval_compare(clip, ref, sh->n_frames, sh->height, sh->width, e->st) != 0 ? -1 : 0;
    free(ref);
    return rc;
}

static int vtok_eval(int argc, char **argv) {
    const char *cmd = "vtok eval", *model = NULL, *data = NULL, *split = "val", *json = NULL;
    long clips = 0;
    int per_clip = 0, sharp = 0, bound = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--per-clip")) { per_clip = 1; continue; }
        if (!strcmp(a, "--water-bound")) { bound = 1; continue; }
        if (!strcmp(a, "--sharp")) { sharp = 1; continue; }
        if (cli_is_help(a)) {
            printf("usage: ds4 vtok eval --model DIR --data DIR [--split val] [--clips N] [--json FILE] [--per-clip] [--sharp] [--water-bound]\n\n"
                   "Round-trips every clip (or the first N) of DIR/<split>-*.ds4w through the tokenizer and\n"
                   "reports PSNR (from the pooled MSE over all RGB8 values, and the mean of per-clip PSNR)\n"
                   "and the ball-centroid error: in each frame, the largest blob of each ball colour found\n"
                   "by ds4_world_extract (tolerance %d, min area %d px) in the original vs the\n"
                   "reconstruction. Prints a table and a JSON line (also written to --json FILE);\n"
                   "--per-clip also prints one line per clip; --sharp decodes most likely colours.\n"
                   "PSNR is also split by scene (clips with any water pixel vs none) and by the original\n"
                   "pixel's palette colour. --water-bound adds the PSNR of a reference with no model: every\n"
                   "pixel exact except 4x4 px blocks that show water in a tubelet, each pixel there its mean\n"
                   "over the tubelet's frames (particles that move inside a tubelet blur).\n",
                   DS4_VTOK_EVAL_TOL, DS4_VTOK_EVAL_MIN_AREA);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--split")) split = v;
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--clips")) { if (cli_int(cmd, a, v, 0, 100000000, &clips)) return 2; }
        else return cli_unknown(cmd, a);
    }
    if (!model || !data) {
        fprintf(stderr, "ds4 %s: --model and --data are required (see --help)\n", cmd);
        return 2;
    }
    ds4_vtok *m = ds4_vtok_load(model);
    if (!m) return cli_fail(cmd);
    m->sharp = sharp;
    ds4_vtok_eval_stats st = {0};
    if (!per_clip) {
        if (ds4_vtok_eval_dir(m, data, split, (int)clips, &st) != 0) {
            ds4_vtok_free(m);
            return cli_fail(cmd);
        }
    } else if (each_clip(data, split, (int)clips, eval_one, &(eval_ctx){.m = m, .st = &st}) != 0) {
        ds4_vtok_free(m);
        return cli_fail(cmd);
    }
    double psnr = ds4_vtok_eval_psnr(&st), cent = ds4_vtok_eval_centroid(&st);
    double mean_psnr = st.n_clips ? st.psnr_sum / st.n_clips : NAN;
    long balls = st.n_matched + st.n_missed;
    double ms = st.n_clips ? 1e3 * (st.enc_s + st.dec_s) / st.n_clips : 0;
    printf("video tokenizer %s on %s/%s: %d clips, %ld frames\n", model, data, split, st.n_clips, st.n_frames);
    printf("  PSNR (pooled MSE)       %7.2f dB\n", psnr);
    printf("  PSNR (mean per clip)    %7.2f dB\n", mean_psnr);
    double psnr_dry = ds4_vtok_eval_psnr_scenes(&st, 0), psnr_wet = ds4_vtok_eval_psnr_scenes(&st, 1);
    printf("  PSNR balls-only scenes  %7.2f dB (%d clips)\n", psnr_dry, st.n_clips - st.n_clips_water);
    printf("  PSNR water scenes       %7.2f dB (%d clips)\n", psnr_wet, st.n_clips_water);
    printf("  PSNR by true colour    ");
    for (int k = 0; k < DS4_VTOK_EVAL_CLASSES; k++)
        if (st.class_n_values[k] > 0)
            printf(" %s %.1f (%.1f%%)", ds4_world_color_name(k), ds4_vtok_eval_psnr_class(&st, k),
                   100.0 * st.class_n_values[k] / st.n_values);
    printf("\n");
    double bound_all = NAN, bound_wet = NAN;
    if (bound) {
        ds4_vtok_eval_stats bs = {0};
        if (each_clip(data, split, (int)clips, bound_one, &(eval_ctx){.st = &bs, .tubelet = m->cfg.tubelet}) != 0) {
            ds4_vtok_free(m);
            return cli_fail(cmd);
        }
        bound_all = ds4_vtok_eval_psnr(&bs);
        bound_wet = ds4_vtok_eval_psnr_scenes(&bs, 1);
        printf("  water-blur bound        %7.2f dB (water scenes %.2f dB): no model, water blurred over each tubelet\n",
               bound_all, bound_wet);
    }
    double p50 = ds4_vtok_eval_centroid_quantile(&st, 0.5), p95 = ds4_vtok_eval_centroid_quantile(&st, 0.95);
    printf("  centroid error          %7.3f px mean, median <= %.2f, p95 <= %.2f, max %.3f over %ld ball-frames\n",
           cent, p50, p95, st.cent_max, st.n_matched);
    printf("  balls missed / spurious %7ld / %ld (%.2f%% missed)\n", st.n_missed, st.n_spurious,
           balls ? 100.0 * st.n_missed / balls : 0.0);
    printf("  encode + decode         %7.1f ms per clip (%.1f + %.1f)\n", ms,
           st.n_clips ? 1e3 * st.enc_s / st.n_clips : 0, st.n_clips ? 1e3 * st.dec_s / st.n_clips : 0);
    char line[1024];
    snprintf(line, sizeof line,
             "{\"bench\":\"vtok_eval\",\"model\":\"%s\",\"split\":\"%s\",\"clips\":%d,\"frames\":%ld,"
             "\"psnr_db\":%.4f,\"psnr_mean_clip_db\":%.4f,\"psnr_balls_only_db\":%.4f,\"psnr_water_db\":%.4f,\"water_clips\":%d,\"water_bound_db\":%.4f,\"water_bound_water_db\":%.4f,\"centroid_err_px\":%.5f,\"centroid_p50_px\":%.2f,\"centroid_p95_px\":%.2f,\"centroid_max_px\":%.4f,"
             "\"ball_frames\":%ld,\"missed\":%ld,\"spurious\":%ld,\"ms_per_clip\":%.2f,\"n_codes\":%d,\"sharp\":%d}",
             model, split, st.n_clips, st.n_frames, psnr, mean_psnr, isnan(psnr_dry) ? -1.0 : psnr_dry,
             isnan(psnr_wet) ? -1.0 : psnr_wet, st.n_clips_water, isnan(bound_all) ? -1.0 : bound_all,
             isnan(bound_wet) ? -1.0 : bound_wet, isnan(cent) ? -1.0 : cent,
             isnan(p50) ? -1.0 : p50, isnan(p95) ? -1.0 : p95, st.cent_max,
             st.n_matched, st.n_missed, st.n_spurious, ms, ds4_vtok_n_codes(m), sharp);
    printf("%s\n", line);
    int rc = 0;
    if (json) {
        size_t len = strlen(line);
        line[len] = '\n';
        if (ds4_write_file_atomic(json, line, len + 1) != 0) rc = cli_fail(cmd);
    }
    ds4_vtok_free(m);
    return rc;
}

int cmd_vtok(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) {
        vtok_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "train")) return vtok_train(argc - 1, argv + 1);
    if (!strcmp(sub, "encode")) return vtok_encode(argc - 1, argv + 1);
    if (!strcmp(sub, "decode")) return vtok_decode(argc - 1, argv + 1);
    if (!strcmp(sub, "eval")) return vtok_eval(argc - 1, argv + 1);
    fprintf(stderr, "ds4 vtok: unknown subcommand '%s'\n\n", sub);
    vtok_usage(stderr);
    return 2;
}
