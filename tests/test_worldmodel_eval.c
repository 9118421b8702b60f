/* test_worldmodel_eval.c — the physics instrument against the simulator: a
 * ground-truth clip scores zero error, a shifted clip scores exactly its
 * shift, a removed ball counts as missed; tracked centres match the
 * simulator's annotations; detected bounces match its events; fitted g
 * matches the true g; the Fréchet distance matches closed forms. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

#define W 64
#define H 64
#define FPS 24

static void sim_scene(ds4_world_clip *c, const ds4_world_scene *sc, int frames) {
    assert_int_equal(ds4_world_clip_simulate(c, sc, W, H, frames, 1), 0);
}

static void test_truth_zero_error(void **state) {
    (void)state;
    for (uint64_t seed = 2000000; seed < 2000006; seed++) {
        ds4_world_clip c;
        assert_int_equal(ds4_world_clip_make(&c, seed, W, H, FPS, 60, 1), 0);
        ds4_wm_track t;
        assert_int_equal(ds4_wm_track_clip(c.rgb, 60, H, W, c.px_per_m, FPS, &t), 0);
        ds4_wm_clip_metrics m;
        assert_int_equal(ds4_wm_compare(&t, &t, 12, 60, c.scene.wall_m, &m), 0);
        assert_true(m.n_pairs > 0);
        assert_int_equal(m.n_missed, 0);
        for (int i = 0; i < m.n_pairs; i++) assert_true(m.pos_err_px[i] == 0.0);
        assert_true(m.vel_err_sum == 0.0);
        assert_int_equal(m.bounce_correct, 1);
        assert_int_equal(m.bounce_ref, m.bounce_pred);
        assert_true(m.bounce_dt_sum == 0.0);
        assert_true(isnan(m.g_ref) || m.g_ref == m.g_pred);
        assert_int_equal(m.count_equal, m.count_frames);
        /* independent: the tracked centres are the simulator's, within a pixel */
        for (int f = 0; f < 60; f++)
            for (int b = 0; b < c.scene.n_balls; b++) {
                int k = c.scene.balls[b].color - DS4_WC_RED;
                size_t j = (size_t)f * DS4_WM_COLORS + k;
                if (!t.found[j]) continue;
                const ds4_world_state *s = &c.states[(size_t)f * c.n_objects + b];
                assert_true(hypot(t.x[j] - s->x, t.y[j] - s->y) * c.px_per_m < 1.0);
            }
        ds4_wm_clip_metrics_free(&m);
        ds4_wm_track_free(&t);
        ds4_world_clip_free(&c);
    }
}

/* Shift every frame right by dx pixels (background fills in). */
static void shift_right(uint8_t *rgb, int T, int dx) {
    for (int f = 0; f < T; f++)
        for (int y = 0; y < H; y++) {
            uint8_t *row = rgb + ((size_t)f * H + y) * W * 3;
            memmove(row + 3 * dx, row, (size_t)(W - dx) * 3);
            for (int x = 0; x < dx; x++) memcpy(row + 3 * x, ds4_world_palette[DS4_WC_BACKGROUND], 3);
        }
}

static void test_shift_and_miss(void **state) {
    (void)state;
    ds4_world_scene sc;
    ds4_world_scene_init(&sc, 4.0, 4.0);
    assert_true(ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.3, 1.5, 2.5, 0.3, 1.0) >= 0);
    assert_true(ds4_world_scene_add_ball(&sc, DS4_WC_YELLOW, 0.25, 2.2, 1.2, -0.5, 2.0) >= 0);
    ds4_world_clip c;
    sim_scene(&c, &sc, 36);    /* both balls stay clear of the right wall, so a shift keeps them whole */
    const size_t bytes = (size_t)36 * H * W * 3;
    uint8_t *pred = malloc(bytes);
    memcpy(pred, c.rgb, bytes);
    shift_right(pred, 36, 3);
    ds4_wm_track ref, pt;
    assert_int_equal(ds4_wm_track_clip(c.rgb, 36, H, W, c.px_per_m, FPS, &ref), 0);
    assert_int_equal(ds4_wm_track_clip(pred, 36, H, W, c.px_per_m, FPS, &pt), 0);
    ds4_wm_clip_metrics m;
    assert_int_equal(ds4_wm_compare(&pt, &ref, 8, 36, c.scene.wall_m, &m), 0);
    assert_int_equal(m.n_missed, 0);
    for (int i = 0; i < m.n_pairs; i++) assert_true(fabs(m.pos_err_px[i] - 3.0) < 1e-9);
    /* same motion, so the same velocities and the same gravity */
    assert_true(m.vel_err_sum / m.n_vel < 1e-9);
    ds4_wm_clip_metrics_free(&m);
    ds4_wm_track_free(&pt);

    /* paint the yellow ball out of the second half: missed pairs and a count error */
    memcpy(pred, c.rgb, bytes);
    for (int f = 22; f < 36; f++)
        for (size_t p = 0; p < (size_t)H * W; p++) {
            uint8_t *px = pred + ((size_t)f * H * W + p) * 3;
            if (!memcmp(px, ds4_world_palette[DS4_WC_YELLOW], 3)) memcpy(px, ds4_world_palette[DS4_WC_BACKGROUND], 3);
        }
    assert_int_equal(ds4_wm_track_clip(pred, 36, H, W, c.px_per_m, FPS, &pt), 0);
    assert_int_equal(ds4_wm_compare(&pt, &ref, 8, 36, c.scene.wall_m, &m), 0);
    assert_int_equal(m.n_missed, 14);
    int inf = 0;
    for (int i = 0; i < m.n_pairs; i++) inf += isinf(m.pos_err_px[i]);
    assert_int_equal(inf, 14);
    assert_int_equal(m.count_frames - m.count_equal, 14);
    ds4_wm_clip_metrics_free(&m);
    ds4_wm_track_free(&pt);
    ds4_wm_track_free(&ref);
    free(pred);
    ds4_world_clip_free(&c);
}

static void test_bounces_and_g_vs_simulator(void **state) {
    (void)state;
    /* one ball dropped from 3 m: the simulator's floor bounces and its g */
    const double gs[3] = {6.5, 9.81, 13.0};
    for (int i = 0; i < 3; i++) {
        ds4_world_scene sc;
        ds4_world_scene_init(&sc, 4.0, 4.0);
        sc.g = gs[i];
        sc.restitution = 0.85;
        assert_true(ds4_world_scene_add_ball(&sc, DS4_WC_BLUE, 0.3, 1.3, 3.2, 0.4, 0.0) >= 0);
        ds4_world_clip c;
        sim_scene(&c, &sc, 96);
        ds4_wm_track t;
        assert_int_equal(ds4_wm_track_clip(c.rgb, 96, H, W, c.px_per_m, FPS, &t), 0);
        int frames[32];
        int nd = ds4_wm_bounces(&t, DS4_WC_BLUE - DS4_WC_RED, 0, 96, frames, 32);
        int ns = 0, sim_frames[32];
        for (int k = 0; k < c.n_events; k++)
            if (c.events[k].type == DS4_WEV_BOUNCE && c.events[k].frame >= 2 && c.events[k].frame < 94)
                sim_frames[ns++] = c.events[k].frame;
        assert_true(ns >= 2);
        assert_int_equal(nd, ns);
        for (int k = 0; k < nd; k++) assert_true(abs(frames[k] - sim_frames[k]) <= 1);
        double g;
        int np;
        assert_int_equal(ds4_wm_fit_g(&t, -1, 0, 96, c.scene.wall_m, &g, &np), 0);
        assert_true(np >= 20);
        assert_true(fabs(g - gs[i]) / gs[i] < 0.05);
        ds4_wm_track_free(&t);
        ds4_world_clip_free(&c);
    }
}

static void test_fit_g_exact(void **state) {
    (void)state;
    /* a synthetic track: free flight, a floor bounce at frame 20, free flight */
    ds4_wm_track t = {.n_frames = 40, .width = W, .height = H, .px_per_m = 16, .fps = 24};
    t.found = calloc(40 * 4, 1);
    t.x = calloc(40 * 4, sizeof(double)); t.y = calloc(40 * 4, sizeof(double));
    t.r = calloc(40 * 4, sizeof(double)); t.count = calloc(40, sizeof(int));
    const double g = 8.3, dt = 1.0 / 24;
    for (int f = 0; f < 40; f++) {
        double tt = f < 20 ? f * dt : (f - 20) * dt;
        double y = f < 20 ? 3.0 - 0.5 * g * tt * tt : 3.0 - 0.5 * g * (19 * dt) * (19 * dt) + 2.5 * tt - 0.5 * g * tt * tt;
        size_t j = (size_t)f * 4 + 2;
        t.found[j] = 1; t.x[j] = 2.0; t.y[j] = y; t.r[j] = 0.1;
    }
    double gf;
    assert_int_equal(ds4_wm_fit_g(&t, 2, 0, 40, 0.0, &gf, NULL), 0);
    assert_true(fabs(gf - g) < 1e-6);
    /* a still ball: zero gravity; too few frames: no fit */
    for (int f = 0; f < 40; f++) t.y[(size_t)f * 4 + 2] = 2.0;
    assert_int_equal(ds4_wm_fit_g(&t, 2, 0, 40, 0.0, &gf, NULL), 0);
    assert_true(fabs(gf) < 1e-9);
    assert_int_equal(ds4_wm_fit_g(&t, 2, 0, 5, 0.0, &gf, NULL), -1);
    ds4_wm_track_free(&t);
}

static void test_frechet(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    const int n = 4000, d = 3;
    float *a = malloc(sizeof(float) * n * d), *b = malloc(sizeof(float) * n * d);
    const double sa[3] = {1.0, 2.0, 0.5}, sb[3] = {1.5, 1.0, 0.5}, mb[3] = {1.0, 0.0, -2.0};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < d; k++) {
            a[i * d + k] = (float)(sa[k] * ds4_rng_normal(&r));
            b[i * d + k] = (float)(mb[k] + sb[k] * ds4_rng_normal(&r));
        }
    /* independent Gaussians: sum of (mu_a - mu_b)^2 + (s_a - s_b)^2 per dimension */
    double want = 0;
    for (int k = 0; k < d; k++) want += mb[k] * mb[k] + (sa[k] - sb[k]) * (sa[k] - sb[k]);
    double fd = ds4_wm_frechet(a, n, b, n, d);
    assert_true(fabs(fd - want) < 0.15 * want);
    assert_true(fabs(ds4_wm_frechet(a, n, a, n, d)) < 1e-6);
    /* eigh: A = V diag(w) V^T */
    double A[16], A0[16], w[4], V[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j <= i; j++) A0[i * 4 + j] = A0[j * 4 + i] = ds4_rng_normal(&r);
    memcpy(A, A0, sizeof A);
    ds4_wm_eigh(A, 4, w, V);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double s = 0;
            for (int k = 0; k < 4; k++) s += V[i * 4 + k] * w[k] * V[j * 4 + k];
            assert_true(fabs(s - A0[i * 4 + j]) < 1e-9);
        }
    free(a);
    free(b);
}

static void test_caption_check(void **state) {
    (void)state;
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, 2000011, W, H, FPS, 8, 1), 0);
    ds4_wm_track t;
    assert_int_equal(ds4_wm_track_clip(c.rgb, 8, H, W, c.px_per_m, FPS, &t), 0);
    int colors[4];
    double x[4], y[4];
    const int nb = c.scene.n_balls;
    for (int b = 0; b < nb; b++) { colors[b] = c.scene.balls[b].color; x[b] = c.states[b].x; y[b] = c.states[b].y; }
    ds4_wm_caption_check cc;
    assert_int_equal(ds4_wm_caption_check_clip(&t, 4, colors, x, y, nb, c.scene.width_m, c.scene.height_m, &cc), 0);
    assert_int_equal(cc.all_ok, 1);
    /* the wrong colour, or the ball claimed in the opposite corner */
    int wrong[4];
    memcpy(wrong, colors, sizeof wrong);
    for (int k = DS4_WC_RED; k <= DS4_WC_YELLOW; k++) {
        int used = 0;
        for (int b = 0; b < nb; b++) used |= colors[b] == k;
        if (!used) { wrong[0] = k; break; }
    }
    assert_int_equal(ds4_wm_caption_check_clip(&t, 4, wrong, x, y, nb, c.scene.width_m, c.scene.height_m, &cc), 0);
    assert_int_equal(cc.colors_ok, 0);
    assert_int_equal(cc.all_ok, 0);
    x[0] = c.scene.width_m - x[0];
    y[0] = c.scene.height_m - y[0];
    if (fabs(x[0] - c.scene.width_m / 2) > 0.7) {   /* a different third */
        assert_int_equal(ds4_wm_caption_check_clip(&t, 4, colors, x, y, nb, c.scene.width_m, c.scene.height_m, &cc), 0);
        assert_int_equal(cc.region_ok, 0);
    }
    ds4_wm_track_free(&t);
    ds4_world_clip_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truth_zero_error),
        cmocka_unit_test(test_shift_and_miss),
        cmocka_unit_test(test_bounces_and_g_vs_simulator),
        cmocka_unit_test(test_fit_g_exact),
        cmocka_unit_test(test_frechet),
        cmocka_unit_test(test_caption_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
