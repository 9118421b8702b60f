/* output.c — a generated clip on disk: animated GIF (world library writer),
 * PNG frames, MP4 when ffmpeg is installed, and a JSON file with the ball
 * trajectories extracted from the frames (plus bounces and fitted g). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

static double r4(double v) { return round(v * 1e4) / 1e4 + 0.0; }

static char *trajectories_json(const uint8_t *rgb, int n, int W, int H, int fps, double ppm, int given,
                               const char *caption) {
    ds4_wm_track t;
    if (ds4_wm_track_clip(rgb, n, H, W, ppm, fps, &t) != 0) return NULL;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "fps", fps);
    cJSON_AddNumberToObject(j, "width_px", W);
    cJSON_AddNumberToObject(j, "height_px", H);
    cJSON_AddNumberToObject(j, "px_per_m", ppm);
    cJSON_AddNumberToObject(j, "n_frames", n);
    cJSON_AddNumberToObject(j, "given_frames", given);
    if (caption) cJSON_AddStringToObject(j, "caption", caption);
    cJSON_AddStringToObject(j, "units", "metres, origin bottom-left, y up (SPEC §3 pixel-centre rule)");
    cJSON *balls = cJSON_AddArrayToObject(j, "balls");
    for (int k = 0; k < DS4_WM_COLORS; k++) {
        int frames = 0;
        for (int f = 0; f < n; f++) frames += t.found[(size_t)f * DS4_WM_COLORS + k];
        if (!frames) continue;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "color", ds4_world_color_name(DS4_WC_RED + k));
        cJSON_AddNumberToObject(b, "frames_seen", frames);
        int bf[256];
        int nb = ds4_wm_bounces(&t, k, given, n, bf, 256);
        cJSON *ba = cJSON_AddArrayToObject(b, "bounce_frames");
        for (int i = 0; i < nb && i < 256; i++) cJSON_AddItemToArray(ba, cJSON_CreateNumber(bf[i]));
        double g;
        if (ds4_wm_fit_g(&t, k, given, n, DS4_WORLD_WALL_M, &g, NULL) == 0) cJSON_AddNumberToObject(b, "fitted_g", r4(g));
        else cJSON_AddNullToObject(b, "fitted_g");
        cJSON_AddItemToArray(balls, b);
    }
    cJSON *fr = cJSON_AddArrayToObject(j, "frames");
    for (int f = 0; f < n; f++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "i", f);
        cJSON_AddNumberToObject(o, "blobs", t.count[f]);
        cJSON *arr = cJSON_AddArrayToObject(o, "balls");
        for (int k = 0; k < DS4_WM_COLORS; k++) {
            size_t i = (size_t)f * DS4_WM_COLORS + k;
            if (!t.found[i]) continue;
            cJSON *b = cJSON_CreateObject();
            cJSON_AddStringToObject(b, "color", ds4_world_color_name(DS4_WC_RED + k));
            cJSON_AddNumberToObject(b, "x", r4(t.x[i]));
            cJSON_AddNumberToObject(b, "y", r4(t.y[i]));
            cJSON_AddNumberToObject(b, "r", r4(t.r[i]));
            cJSON_AddItemToArray(arr, b);
        }
        cJSON_AddItemToArray(fr, o);
    }
    ds4_wm_track_free(&t);
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt) ds4_set_error("out of memory writing trajectories");
    return txt;
}

int ds4_wm_write_clip(const ds4_wm_output *o, const uint8_t *rgb, int n_frames, int W, int H,
                      int native_fps, double px_per_m, int given, const char *caption,
                      ds4_wm_output_info *info) {
    memset(info, 0, sizeof *info);
    if (!o->gif) { ds4_set_error("write clip: no GIF path"); return -1; }
    const int fps = o->fps > 0 ? o->fps : native_fps;
    const size_t fb = (size_t)W * H * 3;
    uint8_t *res = NULL;
    const uint8_t *out = rgb;
    int n_out = n_frames;
    if (fps != native_fps) {       /* resample by nearest time */
        n_out = (int)lround((double)n_frames * fps / native_fps);
        if (n_out < 1) n_out = 1;
        if (!(res = ds4_malloc((size_t)n_out * fb))) return -1;
        for (int i = 0; i < n_out; i++) {
            int src = (int)floor((i + 0.5) * native_fps / fps);
            if (src >= n_frames) src = n_frames - 1;
            memcpy(res + (size_t)i * fb, rgb + (size_t)src * fb, fb);
        }
        out = res;
    }
    int rc = -1;
    info->n_frames = n_out;
    info->fps = fps;
    if (ds4_world_write_gif(o->gif, out, n_out, W, H, fps, o->scale > 0 ? o->scale : 4) != 0) goto done;
    if (o->png_dir && ds4_world_write_png_frames(o->png_dir, out, n_out, W, H) != 0) goto done;
    if (o->mp4 && ds4_world_ffmpeg_available()) {
        if (ds4_world_write_mp4(o->mp4, out, n_out, W, H, fps) != 0) goto done;
        info->mp4_written = 1;
    }
    if (o->json) {
        snprintf(info->json, sizeof info->json, "%s", o->json);
    } else {
        snprintf(info->json, sizeof info->json, "%s", o->gif);
        char *dot = strrchr(info->json, '.'), *slash = strrchr(info->json, '/');
        if (dot && (!slash || dot > slash)) *dot = 0;
        size_t l = strlen(info->json);
        if (l + 6 > sizeof info->json) { ds4_set_error("write clip: path too long"); goto done; }
        memcpy(info->json + l, ".json", 6);
    }
    char *txt = trajectories_json(rgb, n_frames, W, H, native_fps, px_per_m, given, caption);
    if (!txt) goto done;
    rc = ds4_write_file_atomic(info->json, txt, strlen(txt));
    free(txt);
done:
    free(res);
    return rc;
}
