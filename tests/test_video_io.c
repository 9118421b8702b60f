/* test_video_io.c — the tokenizer's files: video_config.json (round trip, one
 * test per malformed key), save/load equality (weights bit for bit, same
 * codes), malformed model directories (missing, truncated, wrong shape,
 * dtype, extra or missing tensor, non-finite value), the codes file (round
 * trip, bad magic, truncation, CRC, out-of-range code), GIFs read back against
 * the frames written, and the evaluation metrics on hand-made frames. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ds4.h"
#include "io/safetensors.h"
#include "util/util.h"
#include "testutil.h"
#include "video/video.h"
#include "world/world.h"

static int setup(void **state) {
    (void)state;
    return tmpdir_make("video_io");
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

#define assert_err_has(sub) do { \
    const char *m_ = ds4_error(); \
    if (!strstr(m_, (sub))) fail_msg("error \"%s\" does not mention \"%s\"", m_, (sub)); \
} while (0)

static ds4_vtok_config small_config(void) {
    ds4_vtok_config c;
    ds4_vtok_config_defaults(&c);
    c.width = 16; c.height = 16;
    c.hidden = 8; c.ffn = 12; c.head = 10; c.enc_layers = 1; c.dec_layers = 2;
    return c;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* ---- config ------------------------------------------------------------------ */

static void test_config_round_trip(void **state) {
    (void)state;
    ds4_vtok_config c = small_config(), back;
    c.levels[0] = 7; c.levels[1] = 6; c.n_levels = 2; c.causal = 0; c.palette = 0;
    char *js = ds4_vtok_config_to_json(&c);
    assert_non_null(js);
    assert_non_null(strstr(js, "\"n_codes\":\t42"));
    assert_int_equal(ds4_vtok_config_parse(&back, js, "x.json"), 0);
    assert_memory_equal(&c, &back, sizeof c);
    free(js);
    /* defaults: the SPEC example */
    assert_int_equal(ds4_vtok_config_parse(&back, "{}", "empty.json"), 0);
    ds4_vtok_config d;
    ds4_vtok_config_defaults(&d);
    assert_memory_equal(&d, &back, sizeof d);
    assert_int_equal(d.patch, 8);
    assert_int_equal(d.tubelet, 4);
    assert_int_equal(d.n_levels, 4);
    ds4_fsq f;
    assert_int_equal(ds4_fsq_init(&f, d.levels, d.n_levels), 0);
    assert_int_equal(f.n_codes, 1000);
}

static void test_config_errors(void **state) {
    (void)state;
    const struct { const char *json, *needle; } cases[] = {
        {"[1]", "expected a JSON object"},
        {"{", "not valid JSON"},
        {"{\"hiden\": 3}", "unknown key 'hiden'"},
        {"{\"hidden\": 3.5}", "'hidden'"},
        {"{\"hidden\": \"8\"}", "'hidden'"},
        {"{\"patch\": 0}", "'patch'"},
        {"{\"levels\": [8, 2, 5]}", "entry 1"},
        {"{\"levels\": []}", "'levels'"},
        {"{\"levels\": [3,3,3,3,3,3,3,3,3]}", "'levels'"},
        {"{\"n_codes\": 999}", "'n_codes' is 999"},
        {"{\"format\": \"other\"}", "'format'"},
        {"{\"version\": 1}", "'version'"},
        {"{\"causal\": 1}", "'causal'"},
        {"{\"output\": \"yuv\"}", "'output'"},
        {"{\"width\": 60}", "multiple of patch"},
        {"{\"hidden\": 4, \"hidden\": 4}", "duplicate key 'hidden'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds4_vtok_config c;
        assert_int_equal(ds4_vtok_config_parse(&c, cases[i].json, "cfg.json"), -1);
        assert_err_has("cfg.json");
        assert_err_has(cases[i].needle);
    }
}

/* ---- save / load --------------------------------------------------------------- */

static void test_save_load_equal(void **state) {
    (void)state;
    ds4_vtok_config c = small_config();
    ds4_vtok *m = ds4_vtok_new(&c, 123);
    assert_non_null(m);
    const char *dir = tmp_path("model");
    assert_int_equal(ds4_vtok_save(m, dir), 0);
    ds4_vtok *b = ds4_vtok_load(dir);
    assert_non_null(b);
    assert_memory_equal(&m->cfg, &b->cfg, sizeof m->cfg);
    assert_int_equal(m->n_params, b->n_params);
    assert_memory_equal(m->params, b->params, m->n_params * sizeof(float));
    /* the file itself: every tensor under video.*, F32, with the layout's shape */
    ds4_safetensors st;
    char path[600];
    snprintf(path, sizeof path, "%s/video.safetensors", dir);
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_int_equal(st.n_tensors, m->n_tensors);
    for (int i = 0; i < st.n_tensors; i++) {
        assert_int_equal(strncmp(st.tensors[i].name, "video.", 6), 0);
        assert_int_equal(st.tensors[i].dtype, DS4_DT_F32);
    }
    ds4_st_close(&st);
    /* same codes and frames from both */
    const int T = 8, H = 16, W = 16;
    uint8_t *rgb = malloc((size_t)T * H * W * 3), *o1 = malloc((size_t)T * H * W * 3),
            *o2 = malloc((size_t)T * H * W * 3);
    for (int i = 0; i < T * H * W * 3; i++) rgb[i] = (uint8_t)(i * 7919 >> 3);
    int32_t c1[2 * 2 * 2], c2[2 * 2 * 2];
    assert_int_equal(ds4_vtok_encode(m, rgb, T, H, W, c1), 0);
    assert_int_equal(ds4_vtok_encode(b, rgb, T, H, W, c2), 0);
    assert_memory_equal(c1, c2, sizeof c1);
    assert_int_equal(ds4_vtok_decode(m, c1, 2, 2, 2, o1), 0);
    assert_int_equal(ds4_vtok_decode(b, c1, 2, 2, 2, o2), 0);
    assert_memory_equal(o1, o2, (size_t)T * H * W * 3);
    free(rgb); free(o1); free(o2);
    ds4_vtok_free(b);
    ds4_vtok_free(m);
}

/* Write DIR with the small model's config and the given tensors. */
static const char *write_model_dir(const char *name, const ds4_st_entry *e, int n) {
    const char *dir = tmp_path(name);
    assert_int_equal(ds4_mkdir_p(dir), 0);
    ds4_vtok_config c = small_config();
    char *js = ds4_vtok_config_to_json(&c);
    char path[600];
    snprintf(path, sizeof path, "%s/video_config.json", dir);
    write_text(path, js);
    free(js);
    snprintf(path, sizeof path, "%s/video.safetensors", dir);
    assert_int_equal(ds4_st_write(path, e, n, NULL), 0);
    return dir;
}

static void test_malformed_models(void **state) {
    (void)state;
    ds4_vtok_config c = small_config();
    ds4_vtok *m = ds4_vtok_new(&c, 5);
    const int n = m->n_tensors;
    ds4_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    for (int i = 0; i < n; i++) {
        e[i].name = m->tensors[i].name;
        e[i].dtype = DS4_DT_F32;
        e[i].ndim = m->tensors[i].ndim;
        for (int d = 0; d < e[i].ndim; d++) e[i].shape[d] = m->tensors[i].shape[d];
        e[i].data = m->params + m->tensors[i].off;
    }
    /* intact: loads */
    ds4_vtok *ok = ds4_vtok_load(write_model_dir("ok", e, n));
    assert_non_null(ok);
    ds4_vtok_free(ok);
    /* missing tensor (drop the last) */
    assert_null(ds4_vtok_load(write_model_dir("missing", e, n - 1)));
    assert_err_has("missing tensor 'video.decoder.out.bias'");
    /* wrong shape */
    ds4_st_entry keep = e[0];
    e[0].shape[0] += 1;
    float *big = calloc((size_t)e[0].shape[0] * e[0].shape[1], sizeof(float));
    e[0].data = big;
    assert_null(ds4_vtok_load(write_model_dir("shape", e, n)));
    assert_err_has("'video.encoder.patch.weight' has shape");
    e[0] = keep;
    free(big);
    /* wrong dtype: the same bytes as F16 with twice the elements */
    keep = e[1];
    e[1].dtype = DS4_DT_F16;
    e[1].shape[0] *= 2;
    assert_null(ds4_vtok_load(write_model_dir("dtype", e, n)));
    assert_err_has("dtype F16");
    e[1] = keep;
    /* an extra tensor */
    float one = 1;
    e[n] = (ds4_st_entry){.name = "video.decoder.extra", .dtype = DS4_DT_F32, .ndim = 1, .shape = {1}, .data = &one};
    assert_null(ds4_vtok_load(write_model_dir("extra", e, n + 1)));
    assert_err_has("unexpected tensor 'video.decoder.extra'");
    /* a NaN weight */
    float save = m->params[m->tensors[2].off + 3];
    m->params[m->tensors[2].off + 3] = NAN;
    assert_null(ds4_vtok_load(write_model_dir("nan", e, n)));
    assert_err_has("non-finite");
    m->params[m->tensors[2].off + 3] = save;
    /* truncated safetensors */
    const char *dir = write_model_dir("trunc", e, n);
    char path[600];
    snprintf(path, sizeof path, "%s/video.safetensors", dir);
    assert_int_equal(truncate(path, 100), 0);
    assert_null(ds4_vtok_load(dir));
    assert_err_has("video.safetensors");
    /* no safetensors, no config, a broken config */
    unlink(path);
    assert_null(ds4_vtok_load(dir));
    assert_err_has("video.safetensors");
    assert_null(ds4_vtok_load(tmp_path("nowhere")));
    assert_err_has("video_config.json");
    dir = write_model_dir("badcfg", e, n);
    snprintf(path, sizeof path, "%s/video_config.json", dir);
    write_text(path, "{\"hidden\": 8, \"levels\": [8, 5], \"bogus\": 1}");
    assert_null(ds4_vtok_load(dir));
    assert_err_has("unknown key 'bogus'");
    /* a config that disagrees with the tensors: shapes are checked */
    write_text(path, "{\"width\": 16, \"height\": 16, \"hidden\": 9, \"ffn\": 12, \"head\": 10, "
                     "\"enc_layers\": 1, \"dec_layers\": 2}");
    assert_null(ds4_vtok_load(dir));
    assert_err_has("has shape");
    free(e);
    ds4_vtok_free(m);
}

/* ---- codes file -------------------------------------------------------------- */

static void test_codes_file(void **state) {
    (void)state;
    int32_t codes[3 * 2 * 4];
    for (int i = 0; i < 24; i++) codes[i] = (i * 97) % 1000;
    ds4_vtok_codes c = {.n_frames = 10, .tl = 3, .gh = 2, .gw = 4, .n_codes = 1000, .tubelet = 4,
                        .patch = 8, .fps = 24, .codes = codes};
    const char *path = tmp_path("c.bin");
    assert_int_equal(ds4_vtok_codes_write(path, &c), 0);
    ds4_vtok_codes r;
    assert_int_equal(ds4_vtok_codes_read(path, &r), 0);
    assert_int_equal(r.n_frames, 10); assert_int_equal(r.tl, 3); assert_int_equal(r.gh, 2);
    assert_int_equal(r.gw, 4); assert_int_equal(r.n_codes, 1000); assert_int_equal(r.tubelet, 4);
    assert_int_equal(r.patch, 8); assert_int_equal(r.fps, 24);
    assert_memory_equal(r.codes, codes, sizeof codes);
    ds4_vtok_codes_free(&r);
    /* the layout of video.h: magic, LE header, codes at byte 64 */
    char *data;
    size_t len;
    assert_int_equal(ds4_read_file(path, &data, &len), 0);
    assert_int_equal(len, 64 + 4 * 24);
    assert_memory_equal(data, "DS4VCODE", 8);
    const uint8_t *u = (const uint8_t *)data;
    assert_int_equal(u[16], 3);
    assert_int_equal(u[28] | u[29] << 8, 1000);
    assert_int_equal(u[64 + 4 * 5] | u[64 + 4 * 5 + 1] << 8, codes[5]);
    /* corruptions */
    const char *bad = tmp_path("bad.bin");
    struct { size_t off; uint8_t val; const char *needle; } cor[] = {
        {0, 'X', "not a ds4 codes file"},
        {8, 2, "version"},
        {64 + 8, 0x55, "CRC"},
        {16, 0, "bad header"},
        {12, 13, "bad header"},       /* 13 frames > 3 latents x 4 */
    };
    for (size_t i = 0; i < sizeof cor / sizeof cor[0]; i++) {
        uint8_t *copy = malloc(len);
        memcpy(copy, data, len);
        copy[cor[i].off] = cor[i].val;
        FILE *f = fopen(bad, "wb");
        fwrite(copy, 1, len, f);
        fclose(f);
        free(copy);
        assert_int_equal(ds4_vtok_codes_read(bad, &r), -1);
        assert_err_has(cor[i].needle);
        assert_null(r.codes);
    }
    FILE *f = fopen(bad, "wb");
    fwrite(data, 1, len - 4, f);
    fclose(f);
    assert_int_equal(ds4_vtok_codes_read(bad, &r), -1);
    assert_err_has("header says");
    /* a code out of range with a valid CRC: n_codes lowered to 500 */
    uint8_t *copy = malloc(len);
    memcpy(copy, data, len);
    copy[28] = 500 & 255; copy[29] = 500 >> 8;
    f = fopen(bad, "wb");
    fwrite(copy, 1, len, f);
    fclose(f);
    free(copy);
    assert_int_equal(ds4_vtok_codes_read(bad, &r), -1);
    assert_err_has("out of range");
    free(data);
    /* writer refuses bad codes */
    codes[7] = 1000;
    assert_int_equal(ds4_vtok_codes_write(path, &c), -1);
    assert_err_has("out of range");
}

/* ---- GIF -------------------------------------------------------------------- */

static void test_gif_read(void **state) {
    (void)state;
    const int T = 5, H = 8, W = 12;
    uint8_t *rgb = malloc((size_t)T * H * W * 3);
    for (int i = 0; i < T * H * W; i++) memcpy(rgb + 3 * i, ds4_world_palette[(i * 13 + i / 50) % DS4_WC_COUNT], 3);
    const char *path = tmp_path("clip.gif");
    assert_int_equal(ds4_world_write_gif(path, rgb, T, W, H, 24, 3), 0);
    uint8_t *back, *small;
    int n, w, h, fps;
    assert_int_equal(ds4_vtok_read_gif(path, &back, &n, &w, &h, &fps), 0);
    assert_int_equal(n, T);
    assert_int_equal(w, 3 * W);
    assert_int_equal(h, 3 * H);
    assert_int_equal(fps, 25);        /* 24 fps is stored as a 4/100 s delay */
    assert_int_equal(ds4_vtok_downscale(back, n, h, w, 3, &small), 0);
    assert_memory_equal(small, rgb, (size_t)T * H * W * 3);
    assert_int_equal(ds4_vtok_downscale(back, n, h, w, 5, &small), -1);
    free(back);
    free(small);
    free(rgb);
    write_text(tmp_path("not.gif"), "GIF89a but not really");
    assert_int_equal(ds4_vtok_read_gif(tmp_path("not.gif"), &back, &n, &w, &h, &fps), -1);
    assert_err_has("not.gif");
    assert_int_equal(ds4_vtok_read_gif(tmp_path("absent.gif"), &back, &n, &w, &h, &fps), -1);
}

/* ---- metrics ---------------------------------------------------------------- */

static void draw_ball(uint8_t *rgb, int W, int H, double col, double row, double r_px, int color) {
    ds4_world_draw_disc(rgb, W, H, W / DS4_WORLD_WIDTH_M, (col) / (W / DS4_WORLD_WIDTH_M),
                        (H - row) / (W / DS4_WORLD_WIDTH_M), r_px / (W / DS4_WORLD_WIDTH_M),
                        ds4_world_palette[color]);
}

/* Two T-frame 64x64 clips on the background: a red ball that moves 3 px a
 * frame, in b 1 px to the right of where it is in a. */
static void red_ball_pair(uint8_t *a, uint8_t *b, int T, int H, int W) {
    const size_t fb = (size_t)H * W * 3;
    for (int t = 0; t < T; t++) {
        for (size_t p = 0; p < (size_t)H * W; p++) {
            memcpy(a + t * fb + 3 * p, ds4_world_palette[DS4_WC_BACKGROUND], 3);
            memcpy(b + t * fb + 3 * p, ds4_world_palette[DS4_WC_BACKGROUND], 3);
        }
        draw_ball(a + t * fb, W, H, 20 + 3 * t, 30, 4.3, DS4_WC_RED);
        draw_ball(b + t * fb, W, H, 21 + 3 * t, 30, 4.3, DS4_WC_RED);
    }
}

/* Identical clips: no error; a ball moved by exactly 1 px in every frame: the
 * centroid error is 1 px and the MSE is the pixels that changed colour. */
static void test_metrics(void **state) {
    (void)state;
    const int T = 4, H = 64, W = 64;
    size_t fb = (size_t)H * W * 3;
    uint8_t *a = malloc(T * fb), *b = malloc(T * fb);
    red_ball_pair(a, b, T, H, W);
    for (int t = 0; t < T; t++) {
        draw_ball(a + t * fb, W, H, 45, 12 + t, 3.1, DS4_WC_BLUE);
        draw_ball(b + t * fb, W, H, 45, 12 + t, 3.1, DS4_WC_BLUE);
    }
    draw_ball(a, W, H, 50, 50, 3, DS4_WC_YELLOW);   /* only in the original: missed */
    ds4_vtok_eval_stats st = {0};
    assert_int_equal(ds4_vtok_eval_compare(a, a, T, H, W, &st), 0);
    assert_float_equal(ds4_vtok_eval_psnr(&st), 100.0, 0);
    assert_float_equal(ds4_vtok_eval_centroid(&st), 0.0, 0);
    assert_int_equal(st.n_matched, 2 * T + 1);
    memset(&st, 0, sizeof st);
    assert_int_equal(ds4_vtok_eval_compare(a, b, T, H, W, &st), 0);
    double se = 0;
    for (size_t i = 0; i < T * fb; i++) se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    assert_float_equal(st.sq_err, se, 0);
    assert_float_equal(ds4_vtok_eval_psnr(&st), 10 * log10(255.0 * 255.0 * T * fb / se), 1e-9);
    assert_int_equal(st.n_matched, 2 * T);
    assert_int_equal(st.n_missed, 1);
    assert_int_equal(st.n_spurious, 0);
    /* red moved by 1 px, blue not at all: mean (1 * T + 0 * T) / 2T */
    assert_float_equal(ds4_vtok_eval_centroid(&st), 0.5, 1e-9);
    assert_float_equal(st.cent_max, 1.0, 1e-9);
    /* half the errors are 0 (bin [0, 0.05)), half 1 (bin [1, 1.05)) */
    assert_float_equal(ds4_vtok_eval_centroid_quantile(&st, 0.5), 0.05, 1e-9);
    assert_float_equal(ds4_vtok_eval_centroid_quantile(&st, 0.95), 1.05, 1e-9);
    ds4_vtok_eval_stats two = st;
    ds4_vtok_eval_merge(&two, &st);
    assert_int_equal(two.n_matched, 2 * st.n_matched);
    assert_float_equal(ds4_vtok_eval_psnr(&two), ds4_vtok_eval_psnr(&st), 1e-9);
    assert_float_equal(ds4_vtok_eval_centroid(&two), 0.5, 1e-9);
    free(a);
    free(b);
}

/* The split figures: by scene (a clip with any water pixel vs none) and by the
 * original pixel's palette colour, against sums over the same pixels here. */
static void test_metrics_split(void **state) {
    (void)state;
    const int T = 4, H = 64, W = 64;
    size_t fb = (size_t)H * W * 3;
    uint8_t *a = malloc(T * fb), *b = malloc(T * fb);
    red_ball_pair(a, b, T, H, W);
    a[5] = 99;   /* one pixel of no palette colour: counted overall, in no class */
    ds4_vtok_eval_stats dry = {0}, wet = {0};
    assert_int_equal(ds4_vtok_eval_compare(a, b, T, H, W, &dry), 0);
    assert_int_equal(dry.n_clips_water, 0);
    assert_true(isnan(ds4_vtok_eval_psnr_scenes(&dry, 1)));
    assert_float_equal(ds4_vtok_eval_psnr_scenes(&dry, 0), ds4_vtok_eval_psnr(&dry), 1e-9);
    double se[DS4_WC_COUNT] = {0}, n[DS4_WC_COUNT] = {0};
    for (size_t i = 0; i < T * fb; i += 3) {
        int k = -1;
        for (int c = 0; c < DS4_WC_COUNT && k < 0; c++)
            if (!memcmp(a + i, ds4_world_palette[c], 3)) k = c;
        if (k < 0) continue;
        for (int c = 0; c < 3; c++) se[k] += ((double)a[i + c] - b[i + c]) * ((double)a[i + c] - b[i + c]);
        n[k] += 3;
    }
    assert_true(se[DS4_WC_RED] > 0 && se[DS4_WC_BACKGROUND] > 0);
    assert_float_equal(n[DS4_WC_BACKGROUND] + n[DS4_WC_RED], T * fb - 3, 0);
    for (int k = 0; k < DS4_WC_COUNT; k++) {
        assert_float_equal(dry.class_n_values[k], n[k], 0);
        if (n[k] == 0) assert_true(isnan(ds4_vtok_eval_psnr_class(&dry, k)));
        else assert_float_equal(ds4_vtok_eval_psnr_class(&dry, k), 10 * log10(255.0 * 255.0 * n[k] / se[k]), 1e-9);
    }
    /* one water pixel in the original makes it a water scene */
    memcpy(a + fb + 3 * (40 * W + 40), ds4_world_palette[DS4_WC_WATER], 3);
    assert_int_equal(ds4_vtok_eval_compare(a, b, T, H, W, &wet), 0);
    assert_int_equal(wet.n_clips_water, 1);
    assert_float_equal(ds4_vtok_eval_psnr_scenes(&wet, 1), ds4_vtok_eval_psnr(&wet), 1e-9);
    assert_true(isnan(ds4_vtok_eval_psnr_scenes(&wet, 0)));
    assert_float_equal(wet.class_n_values[DS4_WC_WATER], 3, 0);
    /* pooled: each group keeps its own figure */
    ds4_vtok_eval_merge(&wet, &dry);
    assert_float_equal(ds4_vtok_eval_psnr_scenes(&wet, 0), ds4_vtok_eval_psnr(&dry), 1e-9);
    assert_int_equal(wet.n_clips_water, 1);
    assert_float_equal(wet.class_n_values[DS4_WC_RED], 2 * n[DS4_WC_RED], 0);
    free(a);
    free(b);
}

/* The water-blur reference: only 4x4 blocks that show water in some frame of a
 * tubelet change, each pixel to its (rounded) mean over the tubelet's frames;
 * a short last tubelet averages the frames it has. */
static void test_water_blur(void **state) {
    (void)state;
    const int T = 6, H = 8, W = 8, tub = 4;
    const size_t fb = (size_t)H * W * 3;
    uint8_t *a = malloc(T * fb), *o = malloc(T * fb);
    for (size_t i = 0; i < T * fb; i++) a[i] = (uint8_t)(i * 7 % 251);
    /* water in frame 2, pixel (1, 5): block (0, 4) of tubelet 0; frame 5 pixel
     * (6, 2): block (4, 0) of the short tubelet 1 */
    memcpy(a + 2 * fb + (1 * W + 5) * 3, ds4_world_palette[DS4_WC_WATER], 3);
    memcpy(a + 5 * fb + (6 * W + 2) * 3, ds4_world_palette[DS4_WC_WATER], 3);
    assert_int_equal(ds4_vtok_water_blur(a, T, H, W, tub, 4, o), 0);
    for (int t = 0; t < T; t++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++) {
                    size_t i = (size_t)t * fb + ((size_t)y * W + x) * 3 + c;
                    int t0 = t < tub ? 0 : tub, nf = t < tub ? tub : T - tub;
                    int wet = (t0 == 0 && y < 4 && x >= 4) || (t0 == tub && y >= 4 && x < 4);
                    if (!wet) {
                        assert_int_equal(o[i], a[i]);
                        continue;
                    }
                    double sum = 0;
                    for (int f = t0; f < t0 + nf; f++) sum += a[i + (size_t)(f - t) * fb];
                    assert_int_equal(o[i], (int)floor(sum / nf + 0.5));
                }
    /* no water: an exact copy */
    for (size_t i = 0; i < T * fb; i++) a[i] = 0;
    assert_int_equal(ds4_vtok_water_blur(a, T, H, W, tub, 4, o), 0);
    assert_memory_equal(a, o, T * fb);
    assert_int_equal(ds4_vtok_water_blur(a, T, H, W, tub, 3, o), -1);
    assert_err_has("block 3");
    free(a);
    free(o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_round_trip),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_save_load_equal),
        cmocka_unit_test(test_malformed_models),
        cmocka_unit_test(test_codes_file),
        cmocka_unit_test(test_gif_read),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_metrics_split),
        cmocka_unit_test(test_water_blur),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
