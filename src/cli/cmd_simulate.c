/* cmd_simulate.c — `ds4 simulate`: continue a clip with a world model (SPEC
 * §3 simulation by continuation). The first K frames of a GIF are encoded by
 * the video tokenizer, the backbone writes the next latent frames, and the
 * clip (given frames + simulated ones) is written as GIF/PNG/MP4 with a
 * trajectories JSON. When the input runs past K frames, the simulated part is
 * measured against it (and against g from --truth annotations). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

static void help(void) {
    printf("usage: ds4 simulate --model DIR --clip CLIP.gif --given K --out clip.gif [options]\n\n"
           "Continues a clip after its first K frames (K a multiple of 4): the world model\n"
           "simulates what happens next. The output holds the K given frames, then the\n"
           "simulated ones. A GIF written with an integer --scale is read back at the model's size.\n\n"
           "  --model DIR       world model directory (models/default)\n"
           "  --clip FILE       input clip (animated GIF, e.g. from ds4 world render)\n"
           "  --given K         frames to condition on (12)\n"
           "  --seconds S       seconds to simulate after them (2)\n"
           "  --out FILE        animated GIF of given + simulated frames\n"
           "  --scale K         GIF pixel upscale (4)\n"
           "  --png DIR         also PNG frames\n"
           "  --mp4 FILE        also an MP4 (needs ffmpeg; skipped with a note otherwise)\n"
           "  --json FILE       extracted trajectories (default: FILE.json next to --out)\n"
           "  --truth FILE      annotation JSON of the clip (ds4 world render --json): true g\n"
           "  --temp X --top-k K --top-p P --seed S   code sampling (%.1f, 0, 1, 1)\n"
           "  --window N --keep N   rolling context: latent frames held / kept on rebuild\n",
           (double)DS4_WM_TEMP_DEFAULT);
}

static void print_metrics(const ds4_wm_clip_metrics *m, double g_true, int width) {
    double *e = malloc(sizeof(double) * (size_t)(m->n_pairs + 1));
    double med = NAN;
    if (e && m->n_pairs) {
        memcpy(e, m->pos_err_px, sizeof(double) * (size_t)m->n_pairs);
        for (int i = 1; i < m->n_pairs; i++)          /* insertion sort: small n */
            for (int j = i; j > 0 && e[j] < e[j - 1]; j--) { double t = e[j]; e[j] = e[j - 1]; e[j - 1] = t; }
        med = m->n_pairs % 2 ? e[m->n_pairs / 2] : 0.5 * (e[m->n_pairs / 2 - 1] + e[m->n_pairs / 2]);
    }
    free(e);
    printf("physics vs the input clip over the simulated frames:\n");
    printf("  ball position error  median %.2f px (%.1f%% of the width), balls missed in %d of %d (ball, frame) pairs\n",
           med, 100 * med / width, m->n_missed, m->n_pairs);
    printf("  velocity error       mean %.2f m/s over %d pairs\n", m->n_vel ? m->vel_err_sum / m->n_vel : NAN, m->n_vel);
    printf("  bounces              %d simulated vs %d in the clip (%s)\n", m->bounce_pred, m->bounce_ref,
           m->bounce_correct ? "every ball right" : "not every ball right");
    if (m->bounce_matched) printf("  bounce timing        %.1f frames mean error over %d paired bounces\n",
                                  m->bounce_dt_sum / m->bounce_matched, m->bounce_matched);
    printf("  fitted g             simulated %.2f, clip %.2f", m->g_pred, m->g_ref);
    if (g_true > 0) printf(", true %.2f m/s^2 (simulated off by %.0f%%)", g_true, 100 * fabs(m->g_pred - g_true) / g_true);
    printf("\n  object count         right in %d of %d frames (mean |error| %.2f)\n", m->count_equal, m->count_frames,
           m->count_frames ? m->count_abs_sum / m->count_frames : NAN);
}

int cmd_simulate(int argc, char **argv) {
    const char *model = "models/default", *clip = NULL, *truth = NULL;
    long given = 12;
    double seconds = 2;
    ds4_wm_output oo = {.scale = 4};
    ds4_wm_gen_params gp;
    ds4_wm_gen_params_default(&gp);
    const char *cmd = "simulate";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int k;
        if (cli_is_help(a)) { help(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--clip")) clip = v;
        else if (!strcmp(a, "--given")) { if (cli_int(cmd, a, v, 1, 100000, &given)) return 2; }
        else if (!strcmp(a, "--seconds")) {
            if (cli_float(cmd, a, v, &seconds)) return 2;
            if (!(seconds > 0 && seconds <= 600)) { fprintf(stderr, "ds4 simulate: --seconds must be in (0, 600]\n"); return 2; }
        }
        else if (!strcmp(a, "--truth")) truth = v;
        else if ((k = cli_wm_option(cmd, a, v, &gp, &oo)) < 0) return 2;
        else if (k == 0) return cli_unknown(cmd, a);
    }
    if (!clip || !oo.gif) {
        fprintf(stderr, "ds4 simulate: --clip and --out are required (see ds4 simulate --help)\n");
        return 2;
    }
    int rc = 1;
    uint8_t *raw = NULL, *in = NULL, *rgb = NULL, *outc = NULL;
    int32_t *codes = NULL;
    ds4_wm *w = NULL;
    ds4_world_clip tc = {0};
    double g_true = 0;
    int T, gw_px, gh_px, gfps;
    if (ds4_vtok_read_gif(clip, &raw, &T, &gw_px, &gh_px, &gfps) != 0) { rc = cli_fail(cmd); goto out; }
    if (!(w = ds4_wm_open(model))) { rc = cli_fail(cmd); goto out; }
    const ds4_wm_layout *L = &w->L;
    int factor = gw_px / L->width;
    if (factor < 1 || gw_px != factor * L->width || gh_px != factor * L->height) {
        fprintf(stderr, "ds4 simulate: %s is %dx%d; the model takes %dx%d (or an integer upscale of it)\n", clip,
                gw_px, gh_px, L->width, L->height);
        goto out;
    }
    if (factor > 1) {
        if (ds4_vtok_downscale(raw, T, gh_px, gw_px, factor, &in) != 0) { rc = cli_fail(cmd); goto out; }
    } else {
        in = raw;
        raw = NULL;
    }
    if (given % L->tubelet != 0 || given < L->tubelet || given > T) {
        fprintf(stderr, "ds4 simulate: --given %ld must be a multiple of %d in [%d, %d] (the clip has %d frames)\n",
                given, L->tubelet, L->tubelet, T - T % L->tubelet, T);
        goto out;
    }
    if (truth) {
        char *txt;
        if (ds4_read_file(truth, &txt, NULL) != 0 || ds4_world_clip_from_json(&tc, txt, truth) != 0) {
            rc = cli_fail(cmd);
            goto out;
        }
        free(txt);
        g_true = tc.scene.g;
    }
    const int K = (int)given, g_lat = K / L->tubelet;
    const int n_sim = (int)lround(seconds * L->fps), h_lat = (n_sim + L->tubelet - 1) / L->tubelet;
    const int F = K + n_sim, f_lat = g_lat + h_lat;
    const size_t fb = (size_t)L->width * L->height * 3;
    codes = ds4_malloc(sizeof(int32_t) * (size_t)f_lat * L->cpf);
    rgb = ds4_malloc((size_t)f_lat * L->tubelet * fb);
    outc = ds4_malloc((size_t)F * fb);
    if (!codes || !rgb || !outc) goto out;
    if (ds4_wm_encode(w, in, K, codes) != 0) { rc = cli_fail(cmd); goto out; }
    ds4_wm_request rq = {.given = codes, .n_given = g_lat, .n_new = h_lat, .seed = gp.sampler.seed, .out = codes};
    ds4_wm_gen_stats gs;
    double t0 = ds4_time_s();
    if (ds4_wm_generate(w, &rq, 1, &gp, &gs) != 0) { rc = cli_fail(cmd); goto out; }
    if (ds4_wm_decode(w, codes, f_lat, rgb) != 0) { rc = cli_fail(cmd); goto out; }
    double t_all = ds4_time_s() - t0;
    memcpy(outc, in, (size_t)K * fb);                                 /* the given frames as they were */
    memcpy(outc + (size_t)K * fb, rgb + (size_t)K * fb, (size_t)n_sim * fb);
    printf("clip: %s (%d frames), given %d frames (%d latent), simulated %d frames (%.2f s) in %.2f s "
           "(%.2fx real time, %.0f tokens/s, %d context rebuilds)\n", clip, T, K, g_lat, n_sim,
           n_sim / (double)L->fps, t_all, t_all / (n_sim / (double)L->fps),
           gs.seconds > 0 ? (gs.sampled + gs.forced) / gs.seconds : 0, gs.rebuilds);
    ds4_wm_output_info info;
    const double ppm = L->width / DS4_WORLD_WIDTH_M;
    if (ds4_wm_write_clip(&oo, outc, F, L->width, L->height, L->fps, ppm, K, NULL, &info) != 0) {
        rc = cli_fail(cmd);
        goto out;
    }
    printf("wrote %s (%d given + %d simulated frames at %d fps)\n", oo.gif, K, n_sim, info.fps);
    if (oo.png_dir) printf("wrote %s/frame_0000.png ...\n", oo.png_dir);
    if (oo.mp4) printf(info.mp4_written ? "wrote %s\n" : "skipped %s: ffmpeg is not installed\n", oo.mp4);
    printf("wrote %s (ball trajectories)\n", info.json);
    if (T >= F) {            /* the input runs on: measure the simulation against it */
        ds4_wm_track pt, rt;
        ds4_wm_clip_metrics m;
        if (ds4_wm_track_clip(outc, F, L->height, L->width, ppm, L->fps, &pt) != 0) { rc = cli_fail(cmd); goto out; }
        if (ds4_wm_track_clip(in, F, L->height, L->width, ppm, L->fps, &rt) != 0) {
            ds4_wm_track_free(&pt);
            rc = cli_fail(cmd);
            goto out;
        }
        int e = ds4_wm_compare(&pt, &rt, K, F, DS4_WORLD_WALL_M, &m);
        ds4_wm_track_free(&pt);
        ds4_wm_track_free(&rt);
        if (e) { rc = cli_fail(cmd); goto out; }
        print_metrics(&m, g_true, L->width);
        ds4_wm_clip_metrics_free(&m);
    } else {
        printf("(the input has %d frames, fewer than %d: no comparison with it)\n", T, F);
    }
    rc = 0;
out:
    free(raw); free(in); free(rgb); free(outc); free(codes);
    ds4_world_clip_free(&tc);
    ds4_wm_free(w);
    return rc;
}
