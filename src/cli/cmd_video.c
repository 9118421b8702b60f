/* cmd_video.c — `ds4 video`: text-to-video with a world model (a clip from a
 * prompt: GIF, PNG frames, MP4, trajectories JSON), and `ds4 video train`,
 * which trains the world model's backbone on text and video together. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

/* ---- ds4 video train ------------------------------------------------------------ */

static void train_help(void) {
    ds4_wm_train_opts d;
    ds4_wm_train_opts_defaults(&d);
    printf("usage: ds4 video train --config F --tokenizer F --vtok DIR --data DIR --out DIR [options]\n\n"
           "Trains the world model of SPEC §3: one backbone on rows of text (random windows of\n"
           "--text) and rows of video (<|bos|> caption <|video|> latent frames <|eov|>, clips of\n"
           "DIR/train-*.ds4w encoded by the video tokenizer --vtok) mixed in every batch.\n"
           "OUT gets config.json, model.safetensors, tokenizer.json, video.safetensors,\n"
           "video_config.json, worldmodel.json and train_log.jsonl.\n\n"
           "  --config F          backbone config.json with a \"video\" object\n"
           "  --tokenizer F       tokenizer.json (its vocabulary size = video.code_offset)\n"
           "  --vtok DIR          trained video tokenizer (ds4 vtok train)\n"
           "  --data DIR          dataset (ds4 world gen): train split, val split for validation\n"
           "  --text SHARD        text tokens (ds4 tokenize) mixed into training\n"
           "  --text-val SHARD    text tokens for validation\n"
           "  --out DIR           output model directory\n"
           "  --clips N           use the first N train clips (all)\n"
           "  --steps N           optimizer steps (%ld)\n"
           "  --batch B           rows per step (%d)\n"
           "  --seq T             tokens per row (%d)\n"
           "  --window N          latent frames per video row (%d)\n"
           "  --caption-max N     caption tokens kept, the rest cut (%d; generation uses the same)\n"
           "  --text-frac X       probability that a row is text (%.2f)\n"
           "  --caption-drop X    probability that a video row has no caption (%.2f)\n"
           "  --start-zero X      probability that a video row starts at the clip's first frame (%.2f)\n"
           "  --lr X              peak learning rate (%g), warmup then cosine to lr*%g\n"
           "  --warmup N          warmup steps (%ld)\n"
           "  --wd X              weight decay (%g)\n"
           "  --seed S            init and sampling seed (%llu)\n"
           "  --eval-every N      validation interval (%ld)\n"
           "  --save-every N      checkpoint interval (%ld)\n"
           "  --time-limit S      stop with a checkpoint after S seconds (off)\n"
           "  --stop-after N      stop with a checkpoint after N steps of this run (off)\n"
           "  --f16               save the final model.safetensors as F16 and drop optimizer state\n"
           "  --resume            continue from OUT\n"
           "  --quiet             no live progress line\n",
           d.steps, d.batch, d.seq, d.window, d.caption_max, d.text_frac, d.caption_drop, d.start_zero, d.lr,
           d.min_lr_frac, d.warmup, d.weight_decay, (unsigned long long)d.seed, d.eval_every, d.save_every);
}

static int video_train(int argc, char **argv) {
    ds4_wm_train_opts o;
    ds4_wm_train_opts_defaults(&o);
    const char *cmd = "video train";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        double x;
        if (cli_is_help(a)) { train_help(); return 0; }
        if (!strcmp(a, "--resume")) { o.resume = 1; continue; }
        if (!strcmp(a, "--quiet")) { o.quiet = 1; continue; }
        if (!strcmp(a, "--f16")) { o.f16 = 1; continue; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--config")) o.config_path = v;
        else if (!strcmp(a, "--tokenizer")) o.tokenizer_path = v;
        else if (!strcmp(a, "--vtok")) o.vtok_dir = v;
        else if (!strcmp(a, "--data")) o.data_dir = v;
        else if (!strcmp(a, "--text")) o.text_path = v;
        else if (!strcmp(a, "--text-val")) o.text_val_path = v;
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--clips")) { if (cli_int(cmd, a, v, 0, 1 << 24, &n)) return 2; o.max_clips = (int)n; }
        else if (!strcmp(a, "--steps")) { if (cli_int(cmd, a, v, 1, 1L << 40, &n)) return 2; o.steps = n; }
        else if (!strcmp(a, "--batch")) { if (cli_int(cmd, a, v, 1, 4096, &n)) return 2; o.batch = (int)n; }
        else if (!strcmp(a, "--seq")) { if (cli_int(cmd, a, v, 8, 1 << 20, &n)) return 2; o.seq = (int)n; }
        else if (!strcmp(a, "--window")) { if (cli_int(cmd, a, v, 2, 4096, &n)) return 2; o.window = (int)n; }
        else if (!strcmp(a, "--caption-max")) { if (cli_int(cmd, a, v, 0, 4096, &n)) return 2; o.caption_max = (int)n; }
        else if (!strcmp(a, "--warmup")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.warmup = n; }
        else if (!strcmp(a, "--seed")) { if (cli_int(cmd, a, v, 0, 1L << 62, &n)) return 2; o.seed = (uint64_t)n; }
        else if (!strcmp(a, "--eval-every")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.eval_every = n; }
        else if (!strcmp(a, "--save-every")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.save_every = n; }
        else if (!strcmp(a, "--text-frac")) { if (cli_float(cmd, a, v, &x)) return 2; o.text_frac = (float)x; }
        else if (!strcmp(a, "--caption-drop")) { if (cli_float(cmd, a, v, &x)) return 2; o.caption_drop = (float)x; }
        else if (!strcmp(a, "--start-zero")) { if (cli_float(cmd, a, v, &x)) return 2; o.start_zero = (float)x; }
        else if (!strcmp(a, "--lr")) { if (cli_float(cmd, a, v, &x)) return 2; o.lr = (float)x; }
        else if (!strcmp(a, "--wd")) { if (cli_float(cmd, a, v, &x)) return 2; o.weight_decay = (float)x; }
        else if (!strcmp(a, "--time-limit")) { if (cli_float(cmd, a, v, &x)) return 2; o.time_limit_s = x; }
        else if (!strcmp(a, "--stop-after")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.stop_after = n; }
        else return cli_unknown(cmd, a);
    }
    if (!o.out_dir || !o.data_dir || !o.vtok_dir || !o.tokenizer_path || (!o.resume && !o.config_path)) {
        fprintf(stderr, "ds4 video train: --out, --data, --vtok, --tokenizer and (new runs) --config are "
                        "required (see --help)\n");
        return 2;
    }
    if (ds4_wm_train(&o) != 0) return cli_fail(cmd);
    printf("wrote the world model to %s\n", o.out_dir);
    return 0;
}

/* ---- ds4 video export ------------------------------------------------------------ */

static int video_export(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 video export --model DIR --out DIR\n\n"
                   "Copies a world model for shipping: model.safetensors as F16 (half the bytes;\n"
                   "ds4 loads it into fp32), config.json, tokenizer.json, video.safetensors,\n"
                   "video_config.json, worldmodel.json; no optimizer state.\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else return cli_unknown("video export", a);
    }
    if (!in || !out) { fprintf(stderr, "ds4 video export: --model and --out are required\n"); return 2; }
    ds4_wm *w = ds4_wm_open(in);
    if (!w) return cli_fail("video export");
    char src[4096], dst[4096];
    int rc = ds4_wm_save_f16(w->m, out);
    const char *files[] = {"tokenizer.json", "worldmodel.json"};
    for (int i = 0; rc == 0 && i < 2; i++) {
        char *data;
        size_t len;
        snprintf(src, sizeof src, "%s/%s", in, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
        if (!ds4_file_exists(src)) continue;
        rc = ds4_read_file(src, &data, &len);
        if (rc == 0) { rc = ds4_write_file_atomic(dst, data, len); free(data); }
    }
    if (rc == 0) rc = ds4_vtok_save(w->vt, out);
    ds4_wm_free(w);
    if (rc != 0) return cli_fail("video export");
    printf("exported %s -> %s (F16 backbone)\n", in, out);
    return 0;
}

/* ---- ds4 video (generation) ------------------------------------------------------- */

static void help(void) {
    printf("usage: ds4 video --model DIR --prompt TEXT [--seconds 10] [--fps 24] --out clip.gif [options]\n"
           "       ds4 video train ...   (train a world model; ds4 video train --help)\n"
           "       ds4 video export --model DIR --out DIR   (F16 copy for shipping)\n\n"
           "Generates a clip from a text prompt with a world model (SPEC §3): the backbone\n"
           "writes video codes after <|bos|> prompt <|video|>, constrained to codes with a\n"
           "<|frame|> after each latent frame; the context rolls (caption + the last latent\n"
           "frames) for clips longer than the training window; the video tokenizer decodes.\n\n"
           "  --model DIR       world model directory (models/default)\n"
           "  --prompt TEXT     caption, e.g. \"a small red ball drops from the upper left\"\n"
           "  --seconds S       clip length (10)\n"
           "  --fps F           output frame rate (the model's native 24; others resample)\n"
           "  --out FILE        animated GIF\n"
           "  --scale K         GIF pixel upscale (4)\n"
           "  --png DIR         also PNG frames DIR/frame_0000.png ...\n"
           "  --mp4 FILE        also an MP4 (needs ffmpeg; skipped with a note otherwise)\n"
           "  --json FILE       extracted ball trajectories (default: FILE.json next to --out)\n"
           "  --temp X --top-k K --top-p P --seed S   code sampling (%.1f, 0, 1, 1)\n"
           "  --cfg X           classifier-free guidance scale: codes from u + X (c - u), c with\n"
           "                    the prompt, u without it (%.1f; 1 = off)\n"
           "  --window N --keep N   rolling context: latent frames held / kept on rebuild\n",
           (double)DS4_WM_T2V_TEMP_DEFAULT, (double)DS4_WM_CFG_DEFAULT);
}

int cmd_video(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "train")) return video_train(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "export")) return video_export(argc - 1, argv + 1);
    ds4_wm_output oo = {.scale = 4};
    const char *model = "models/default", *prompt = NULL;
    double seconds = 10;
    ds4_wm_gen_params gp;
    ds4_wm_gen_params_default(&gp);
    gp.sampler.temperature = DS4_WM_T2V_TEMP_DEFAULT;
    const char *cmd = "video";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        double x;
        int k;
        if (cli_is_help(a)) { help(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--seconds")) {
            if (cli_float(cmd, a, v, &seconds)) return 2;
            if (!(seconds > 0 && seconds <= 600)) { fprintf(stderr, "ds4 video: --seconds must be in (0, 600]\n"); return 2; }
        }
        else if (!strcmp(a, "--fps")) { if (cli_int(cmd, a, v, 1, 240, &n)) return 2; oo.fps = (int)n; }
        else if (!strcmp(a, "--cfg")) { if (cli_float(cmd, a, v, &x)) return 2; gp.cfg_scale = (float)x; }
        else if ((k = cli_wm_option(cmd, a, v, &gp, &oo)) < 0) return 2;
        else if (k == 0) return cli_unknown(cmd, a);
    }
    if (!prompt || !oo.gif) {
        fprintf(stderr, "ds4 video: --prompt and --out are required (see ds4 video --help)\n");
        return 2;
    }
    ds4_wm *w = ds4_wm_open(model);
    if (!w) return cli_fail(cmd);
    const ds4_wm_layout *L = &w->L;
    const int n_frames = (int)lround(seconds * L->fps) < 1 ? 1 : (int)lround(seconds * L->fps);
    const int n_lat = (n_frames + L->tubelet - 1) / L->tubelet;
    int rc = 1;
    int32_t *codes = ds4_malloc((size_t)n_lat * L->cpf * sizeof *codes);
    uint8_t *rgb = ds4_malloc((size_t)n_lat * L->tubelet * L->height * L->width * 3);
    if (!codes || !rgb) goto out;
    ds4_wm_request rq = {.caption = prompt, .n_new = n_lat, .seed = gp.sampler.seed, .out = codes};
    ds4_wm_gen_stats gs;
    double t0 = ds4_time_s();
    if (ds4_wm_generate(w, &rq, 1, &gp, &gs) != 0) { rc = cli_fail(cmd); goto out; }
    double t_gen = ds4_time_s() - t0;
    if (ds4_wm_decode(w, codes, n_lat, rgb) != 0) { rc = cli_fail(cmd); goto out; }
    double t_all = ds4_time_s() - t0;
    printf("prompt: \"%s\"\n", prompt);
    printf("generated %d latent frames (%ld codes, %d context rebuilds) in %.2f s: %.0f tokens/s; "
           "decoded %d frames; total %.2f s for %.2f s of video (%.2fx real time)\n",
           n_lat, gs.sampled, gs.rebuilds, t_gen, (gs.sampled + gs.forced) / (t_gen > 0 ? t_gen : 1), n_frames,
           t_all, n_frames / (double)L->fps, t_all / (n_frames / (double)L->fps));
    ds4_wm_output_info info;
    if (ds4_wm_write_clip(&oo, rgb, n_frames, L->width, L->height, L->fps, L->width / DS4_WORLD_WIDTH_M, 0,
                          prompt, &info) != 0) { rc = cli_fail(cmd); goto out; }
    printf("wrote %s (%d frames at %d fps)\n", oo.gif, info.n_frames, info.fps);
    if (oo.png_dir) printf("wrote %s/frame_0000.png ...\n", oo.png_dir);
    if (oo.mp4) printf(info.mp4_written ? "wrote %s\n" : "skipped %s: ffmpeg is not installed\n", oo.mp4);
    printf("wrote %s (ball trajectories)\n", info.json);
    rc = 0;
out:
    free(codes);
    free(rgb);
    ds4_wm_free(w);
    return rc;
}
