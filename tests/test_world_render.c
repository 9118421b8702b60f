/* test_world_render.c — renderer and extraction against independent checks:
 * disc pixels against a brute-force pixel-centre test, extracted centroids
 * within 0.5 px of the true centre (clean and noisy frames), floor/wall bands
 * where the physics boundary is; GIF read back with giflib (DGifSlurp: frame
 * count, size, exact palette colours, delays); PNG round trip and corrupt
 * PNG; MP4 error without ffmpeg. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <gif_lib.h>
#include "ds4.h"
#include "util/util.h"
#include "testutil.h"
#include "world/world.h"

static int setup(void **state) {
    (void)state;
    return tmpdir_make("world_render");
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

static int is_color(const uint8_t *rgb, int w, int col, int row, int c) {
    return !memcmp(rgb + ((size_t)row * w + col) * 3, ds4_world_palette[c], 3);
}

/* A single ball at random sub-pixel positions and radii: the drawn pixels are
 * exactly those whose centre is in the disc (brute force), and extraction
 * finds one blob whose centroid is within 0.5 px of the true centre. */
static void test_disc_and_extract(void **state) {
    (void)state;
    ds4_rng rng;
    ds4_rng_seed(&rng, 42);
    int sizes[3] = {64, 96, 128};
    double worst = 0, worst_r = 0;
    for (int t = 0; t < 300; t++) {
        int W = sizes[t % 3], H = W;
        double ppm = W / 4.0;
        double r = 0.15 + 0.25 * ds4_rng_uniform(&rng);
        double lo = DS4_WORLD_WALL_M + r;
        double x = lo + (4.0 - 2 * lo) * ds4_rng_uniform(&rng);
        double y = lo + (4.0 - r - lo) * ds4_rng_uniform(&rng);
        ds4_world_scene sc;
        ds4_world_scene_init(&sc, 4.0, 4.0);
        int color = DS4_WC_RED + t % 4;
        ds4_world_scene_add_ball(&sc, color, r, x, y, 0, 0);
        ds4_world_sim *s = ds4_world_sim_new(&sc);
        uint8_t *rgb = malloc((size_t)W * H * 3);
        ds4_world_render(s, rgb, W, H);
        int area = 0;
        for (int row = 0; row < H; row++)
            for (int col = 0; col < W; col++) {
                double cx = (col + 0.5) / ppm, cy = (H - row - 0.5) / ppm;
                int in = (cx - x) * (cx - x) + (cy - y) * (cy - y) <= r * r;
                area += in;
                assert_int_equal(is_color(rgb, W, col, row, color), in);
            }
        ds4_world_blob b[4], water;
        int n = ds4_world_extract(rgb, W, H, ppm, 40, 1, b, 4, &water);
        assert_int_equal(n, 1);
        assert_int_equal(b[0].color, color);
        assert_int_equal(b[0].area, area);
        assert_int_equal(water.area, 0);
        double ex = fabs(b[0].col - x * ppm), ey = fabs(b[0].row - (H - y * ppm));
        assert_true(ex < 0.5 && ey < 0.5);
        assert_true(fabs(b[0].x - x) < 0.5 / ppm && fabs(b[0].y - y) < 0.5 / ppm);
        worst = fmax(worst, fmax(ex, ey));
        worst_r = fmax(worst_r, fabs(b[0].r_px - r * ppm));
        free(rgb);
        ds4_world_sim_free(s);
    }
    assert_true(worst_r < 0.5);
    printf("    centroid error max %.3f px, radius error max %.3f px over 300 discs\n", worst, worst_r);
}

/* Floor and walls are DS4_WORLD_WALL_M thick at every size, and a ball
 * resting on the floor / touching a wall has its pixels right next to them. */
static void test_walls(void **state) {
    (void)state;
    int sizes[2] = {64, 128};
    for (int t = 0; t < 2; t++) {
        int W = sizes[t];
        double ppm = W / 4.0;
        ds4_world_scene sc;
        ds4_world_scene_init(&sc, 4.0, 4.0);
        ds4_world_scene_add_ball(&sc, DS4_WC_BLUE, 0.3, DS4_WORLD_WALL_M + 0.3, DS4_WORLD_WALL_M + 0.3, 0, 0);
        ds4_world_sim *s = ds4_world_sim_new(&sc);
        for (int f = 0; f < 5; f++) ds4_world_sim_step(s);   /* resting: it must not move */
        assert_true(s->sc.balls[0].y == DS4_WORLD_WALL_M + 0.3);
        uint8_t *rgb = malloc((size_t)W * W * 3);
        ds4_world_render(s, rgb, W, W);
        int band = (int)lround(DS4_WORLD_WALL_M * ppm);          /* 2 px at 64, 4 px at 128 */
        for (int i = 0; i < W; i++)
            for (int k = 0; k < band; k++) {
                assert_true(is_color(rgb, W, i, W - 1 - k, DS4_WC_WALL));   /* floor */
                assert_true(is_color(rgb, W, k, i, DS4_WC_WALL));           /* left wall */
                assert_true(is_color(rgb, W, W - 1 - k, i, DS4_WC_WALL));   /* right wall */
            }
        assert_true(is_color(rgb, W, W / 2, W - 1 - band, DS4_WC_BACKGROUND));
        assert_true(is_color(rgb, W, W / 2, 0, DS4_WC_BACKGROUND));           /* no ceiling drawn */
        /* the ball touches the floor and the left wall: its lowest row and its
         * leftmost column are the first pixels inside */
        int low = -1, left = W;
        for (int row = 0; row < W; row++)
            for (int col = 0; col < W; col++)
                if (is_color(rgb, W, col, row, DS4_WC_BLUE)) {
                    if (row > low) low = row;
                    if (col < left) left = col;
                }
        assert_int_equal(low, W - 1 - band);
        assert_int_equal(left, band);
        free(rgb);
        ds4_world_sim_free(s);
    }
}

/* Noisy frames (as a decoder would produce): several balls still found at the
 * right places with a tolerance; blobs below min_area are dropped. */
static void test_extract_noisy(void **state) {
    (void)state;
    ds4_world_scene sc;
    ds4_world_scene_init(&sc, 4.0, 4.0);
    ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.3, 1.0, 2.9, 0, 0);
    ds4_world_scene_add_ball(&sc, DS4_WC_GREEN, 0.2, 2.2, 1.1, 0, 0);
    ds4_world_scene_add_ball(&sc, DS4_WC_YELLOW, 0.35, 3.0, 3.0, 0, 0);
    sc.g = 0;
    ds4_world_sim *s = ds4_world_sim_new(&sc);
    uint8_t rgb[64 * 64 * 3];
    ds4_world_render(s, rgb, 64, 64);
    ds4_rng rng;
    ds4_rng_seed(&rng, 7);
    for (size_t i = 0; i < sizeof rgb; i++) {
        int v = rgb[i] + (int)lround(12.0 * ds4_rng_normal(&rng));
        rgb[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    /* one stray pixel of blue, and water */
    memcpy(rgb + (10 * 64 + 30) * 3, ds4_world_palette[DS4_WC_BLUE], 3);
    ds4_world_draw_disc(rgb, 64, 64, 16.0, 2.0, 0.4, 0.1, ds4_world_palette[DS4_WC_WATER]);
    ds4_world_blob b[8], water;
    int n = ds4_world_extract(rgb, 64, 64, 16.0, 60, 3, b, 8, &water);
    assert_int_equal(n, 3);
    int want[3] = {DS4_WC_RED, DS4_WC_GREEN, DS4_WC_YELLOW};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b[i].color, want[i]);
        assert_true(fabs(b[i].x - sc.balls[i].x) < 0.5 / 16 && fabs(b[i].y - sc.balls[i].y) < 0.5 / 16);
    }
    assert_true(water.area > 0 && fabs(water.x - 2.0) < 0.05 && fabs(water.y - 0.4) < 0.05);
    /* with min_area 1 the stray blue pixel is a blob; max_out smaller than the count */
    n = ds4_world_extract(rgb, 64, 64, 16.0, 60, 1, b, 2, NULL);
    assert_int_equal(n, 4);
    ds4_world_sim_free(s);
}

static void test_gif_roundtrip(void **state) {
    (void)state;
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, 3, 64, 64, 24, 30, 1), 0);
    const char *path = tmp_path("clip.gif");
    assert_int_equal(ds4_world_write_gif(path, c.rgb, 30, 64, 64, 24, 2), 0);
    int err = 0;
    GifFileType *g = DGifOpenFileName(path, &err);
    assert_non_null(g);
    assert_int_equal(DGifSlurp(g), GIF_OK);
    assert_int_equal(g->ImageCount, 30);
    assert_int_equal(g->SWidth, 128);
    assert_int_equal(g->SHeight, 128);
    int total_delay = 0;
    for (int f = 0; f < 30; f++) {
        SavedImage *im = &g->SavedImages[f];
        assert_int_equal(im->ImageDesc.Width, 128);
        assert_int_equal(im->ImageDesc.Height, 128);
        GraphicsControlBlock gcb;
        assert_int_equal(DGifSavedExtensionToGCB(g, f, &gcb), GIF_OK);
        total_delay += gcb.DelayTime;
        ColorMapObject *cm = im->ImageDesc.ColorMap ? im->ImageDesc.ColorMap : g->SColorMap;
        for (int y = 0; y < 128; y++)
            for (int x = 0; x < 128; x++) {
                GifColorType col = cm->Colors[im->RasterBits[y * 128 + x]];
                const uint8_t *want = c.rgb + ((size_t)f * 64 * 64 + (y / 2) * 64 + x / 2) * 3;
                assert_int_equal(col.Red, want[0]);
                assert_int_equal(col.Green, want[1]);
                assert_int_equal(col.Blue, want[2]);
            }
    }
    assert_int_equal(total_delay, 125);   /* 30 frames at 24 fps = 1.25 s */
    DGifCloseFile(g, &err);

    /* an arbitrary (non-palette) gradient is quantized to a near colour */
    uint8_t grad[2 * 32 * 32 * 3];
    for (int i = 0; i < 2 * 32 * 32; i++) {
        grad[3 * i] = (uint8_t)(i * 7);
        grad[3 * i + 1] = (uint8_t)(i * 3);
        grad[3 * i + 2] = (uint8_t)(255 - i % 256);
    }
    assert_int_equal(ds4_world_write_gif(path, grad, 2, 32, 32, 10, 1), 0);
    g = DGifOpenFileName(path, &err);
    assert_non_null(g);
    assert_int_equal(DGifSlurp(g), GIF_OK);
    assert_int_equal(g->ImageCount, 2);
    for (int f = 0; f < 2; f++)
        for (int p = 0; p < 32 * 32; p++) {
            GifColorType col = g->SColorMap->Colors[g->SavedImages[f].RasterBits[p]];
            const uint8_t *want = grad + ((size_t)f * 32 * 32 + p) * 3;
            /* the nearest cube colour is at most 25.5 per channel away; the
             * 5-bit lookup adds at most 4: Euclidean distance <= (25.5 + 4) sqrt(3) */
            int dr = col.Red - want[0], dg = col.Green - want[1], db = col.Blue - want[2];
            assert_true(dr * dr + dg * dg + db * db <= 52 * 52);
        }
    DGifCloseFile(g, &err);
    /* errors */
    assert_int_equal(ds4_world_write_gif(path, grad, 0, 32, 32, 10, 1), -1);
    assert_int_equal(ds4_world_write_gif("/nonexistent-dir/x.gif", grad, 1, 32, 32, 10, 1), -1);
    assert_non_null(strstr(ds4_error(), "/nonexistent-dir/x.gif"));
    ds4_world_clip_free(&c);
}

static void test_png(void **state) {
    (void)state;
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, 11, 64, 48, 24, 3, 1), 0);
    const char *path = tmp_path("f.png");
    assert_int_equal(ds4_world_write_png(path, c.rgb + 2 * 64 * 48 * 3, 64, 48), 0);
    uint8_t *back;
    int w, h;
    assert_int_equal(ds4_world_read_png(path, &back, &w, &h), 0);
    assert_int_equal(w, 64);
    assert_int_equal(h, 48);
    assert_memory_equal(back, c.rgb + 2 * 64 * 48 * 3, 64 * 48 * 3);
    free(back);
    /* frames directory */
    const char *dir = tmp_path("frames");
    assert_int_equal(ds4_world_write_png_frames(dir, c.rgb, 3, 64, 48), 0);
    char p2[600];
    snprintf(p2, sizeof p2, "%s/frame_0002.png", dir);
    assert_int_equal(ds4_world_read_png(p2, &back, &w, &h), 0);
    assert_memory_equal(back, c.rgb + 2 * 64 * 48 * 3, 64 * 48 * 3);
    free(back);
    /* a truncated PNG is an error naming the file, not a crash */
    char *data;
    size_t len;
    assert_int_equal(ds4_read_file(path, &data, &len), 0);
    const char *bad = tmp_path("bad.png");
    assert_int_equal(ds4_write_file_atomic(bad, data, len / 2), 0);
    assert_int_equal(ds4_world_read_png(bad, &back, &w, &h), -1);
    assert_non_null(strstr(ds4_error(), "bad.png"));
    assert_int_equal(ds4_write_file_atomic(bad, "not a png at all", 16), 0);
    assert_int_equal(ds4_world_read_png(bad, &back, &w, &h), -1);
    assert_non_null(strstr(ds4_error(), "not a PNG"));
    free(data);
    ds4_world_clip_free(&c);
}

static void test_mp4(void **state) {
    (void)state;
    uint8_t rgb[2 * 16 * 16 * 3] = {0};
    const char *path = tmp_path("x.mp4");
    if (!ds4_world_ffmpeg_available()) {
        assert_int_equal(ds4_world_write_mp4(path, rgb, 2, 16, 16, 24), -1);
        assert_non_null(strstr(ds4_error(), "ffmpeg"));
        assert_int_equal(access(path, F_OK), -1);
    } else {
        assert_int_equal(ds4_world_write_mp4(path, rgb, 2, 16, 16, 24), 0);
        assert_int_equal(access(path, F_OK), 0);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disc_and_extract),
        cmocka_unit_test(test_walls),
        cmocka_unit_test(test_extract_noisy),
        cmocka_unit_test(test_gif_roundtrip),
        cmocka_unit_test(test_png),
        cmocka_unit_test(test_mp4),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
