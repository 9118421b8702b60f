/* test_world_sim.c — the simulator against physical invariants and closed
 * forms: energy with restitution 1 and no friction, momentum and the 1D
 * collision formula with no gravity, free fall against the parabola,
 * determinism per seed, bounce events against velocity sign flips, resting,
 * water staying in the box, scene validation and random-scene ranges. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "world/world.h"

static ds4_world_scene empty_scene(double g, double e, double mu, double rolling) {
    ds4_world_scene sc;
    ds4_world_scene_init(&sc, 4.0, 4.0);
    sc.g = g;
    sc.restitution = e;
    sc.friction = mu;
    sc.rolling = rolling;
    return sc;
}

/* One ball, restitution 1, no friction: total energy stays put over 10 s of
 * bounces on the floor, both walls and the ceiling. */
static void test_energy_conserved(void **state) {
    (void)state;
    ds4_world_scene sc = empty_scene(9.81, 1.0, 0.0, 0.0);
    ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.3, 1.3, 2.5, 2.7, 1.0);
    ds4_world_sim *s = ds4_world_sim_new(&sc);
    assert_non_null(s);
    double e0 = ds4_world_sim_energy(s), worst = 0;
    for (int f = 0; f < 240; f++) {
        assert_int_equal(ds4_world_sim_step(s), 0);
        double rel = fabs(ds4_world_sim_energy(s) - e0) / e0;
        if (rel > worst) worst = rel;
    }
    assert_true(worst < 1e-9);
    int floor_b = 0, wall_b = 0;
    for (int k = 0; k < s->n_events; k++) {
        assert_int_equal(s->events[k].type, DS4_WEV_BOUNCE);
        if (s->events[k].surface == DS4_WSURF_FLOOR) floor_b++;
        if (s->events[k].surface == DS4_WSURF_LEFT || s->events[k].surface == DS4_WSURF_RIGHT) wall_b++;
    }
    assert_true(floor_b >= 4);    /* the invariant was tested through real bounces */
    assert_true(wall_b >= 4);
    ds4_world_sim_free(s);

    /* the same throw with restitution 0.8 must lose energy: the check above can fail */
    sc.restitution = 0.8;
    s = ds4_world_sim_new(&sc);
    for (int f = 0; f < 240; f++) ds4_world_sim_step(s);
    assert_true(ds4_world_sim_energy(s) < 0.5 * e0);
    ds4_world_sim_free(s);
}

/* Free flight matches the closed-form parabola between impacts. */
static void test_free_fall(void **state) {
    (void)state;
    ds4_world_scene sc = empty_scene(7.5, 0.9, 0.1, 0.02);
    double x0 = 1.0, y0 = 3.0, vx = 0.8, vy = 1.2;
    ds4_world_scene_add_ball(&sc, DS4_WC_BLUE, 0.2, x0, y0, vx, vy);
    ds4_world_sim *s = ds4_world_sim_new(&sc);
    for (int f = 1; f <= 12; f++) {   /* 0.5 s: still in the air (apex 3.1 m, floor at 0.325 m) */
        ds4_world_sim_step(s);
        double t = f / 24.0;
        assert_true(fabs(s->sc.balls[0].x - (x0 + vx * t)) < 1e-12);
        assert_true(fabs(s->sc.balls[0].y - (y0 + vy * t - 0.5 * 7.5 * t * t)) < 1e-12);
        assert_true(fabs(s->sc.balls[0].vy - (vy - 7.5 * t)) < 1e-12);
    }
    assert_int_equal(s->n_events, 0);
    ds4_world_sim_free(s);
}

/* No gravity: momentum is conserved through a ball-ball collision, and a
 * head-on collision gives the 1D restitution formula. */
static void test_collision_momentum(void **state) {
    (void)state;
    double es[2] = {1.0, 0.55};
    for (int t = 0; t < 2; t++) {
        double e = es[t];
        ds4_world_scene sc = empty_scene(0.0, e, 0.3, 0.0);
        ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.3, 1.0, 2.0, 2.0, 0.0);
        ds4_world_scene_add_ball(&sc, DS4_WC_GREEN, 0.2, 2.5, 2.0, -1.0, 0.0);
        double ma = sc.balls[0].m, mb = sc.balls[1].m;
        double px0 = ma * 2.0 - mb * 1.0, ke0 = 0.5 * ma * 4.0 + 0.5 * mb * 1.0;
        ds4_world_sim *s = ds4_world_sim_new(&sc);
        int collided_at = -1;
        for (int f = 1; f <= 24 && s->n_events == 0; f++) ds4_world_sim_step(s);
        assert_int_equal(s->n_events, 1);
        assert_int_equal(s->events[0].type, DS4_WEV_COLLISION);
        assert_int_equal(s->events[0].n_ids, 2);
        assert_int_equal(s->events[0].ids[0], 0);
        assert_int_equal(s->events[0].ids[1], 1);
        collided_at = s->events[0].frame;
        assert_true(collided_at > 1);
        const ds4_world_ball *a = &s->sc.balls[0], *b = &s->sc.balls[1];
        double px = ma * a->vx + mb * b->vx, py = ma * a->vy + mb * b->vy;
        assert_true(fabs(px - px0) < 1e-12);
        assert_true(fabs(py) < 1e-12);
        /* closed form, head-on: v_a' = (ma va + mb vb - mb e (va - vb)) / (ma + mb) */
        double va = (ma * 2.0 - mb * 1.0 - mb * e * 3.0) / (ma + mb);
        double vb = (ma * 2.0 - mb * 1.0 + ma * e * 3.0) / (ma + mb);
        assert_true(fabs(a->vx - va) < 1e-9);
        assert_true(fabs(b->vx - vb) < 1e-9);
        double ke = 0.5 * ma * (a->vx * a->vx + a->vy * a->vy) + 0.5 * mb * (b->vx * b->vx + b->vy * b->vy);
        if (e == 1.0) assert_true(fabs(ke - ke0) / ke0 < 1e-9);
        else assert_true(ke < 0.9 * ke0);
        ds4_world_sim_free(s);
    }
    /* an oblique hit with friction still conserves momentum in both axes */
    ds4_world_scene sc = empty_scene(0.0, 0.8, 0.3, 0.0);
    ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.25, 1.0, 1.8, 1.5, 0.4);
    ds4_world_scene_add_ball(&sc, DS4_WC_BLUE, 0.35, 2.4, 2.3, -0.7, -0.2);
    double m0 = sc.balls[0].m, m1 = sc.balls[1].m;
    double px0 = m0 * 1.5 + m1 * -0.7, py0 = m0 * 0.4 + m1 * -0.2;
    ds4_world_sim *s = ds4_world_sim_new(&sc);
    for (int f = 0; f < 20; f++) ds4_world_sim_step(s);
    assert_int_equal(s->n_events, 1);
    double px = m0 * s->sc.balls[0].vx + m1 * s->sc.balls[1].vx;
    double py = m0 * s->sc.balls[0].vy + m1 * s->sc.balls[1].vy;
    assert_true(fabs(px - px0) < 1e-12 && fabs(py - py0) < 1e-12);
    ds4_world_sim_free(s);
}

/* Same seed, byte-identical clip (frames, states, events, annotation). */
static void test_determinism(void **state) {
    (void)state;
    for (uint64_t seed = 0; seed < 12; seed++) {
        ds4_world_clip a, b;
        assert_int_equal(ds4_world_clip_make(&a, seed, 64, 64, 24, 120, 1), 0);
        assert_int_equal(ds4_world_clip_make(&b, seed, 64, 64, 24, 120, 1), 0);
        assert_int_equal(a.n_objects, b.n_objects);
        assert_int_equal(a.n_events, b.n_events);
        assert_memory_equal(a.rgb, b.rgb, (size_t)120 * 64 * 64 * 3);
        assert_memory_equal(a.states, b.states, (size_t)120 * a.n_objects * sizeof *a.states);
        if (a.n_events) assert_memory_equal(a.events, b.events, (size_t)a.n_events * sizeof *a.events);
        char *ja = ds4_world_clip_to_json(&a), *jb = ds4_world_clip_to_json(&b);
        assert_string_equal(ja, jb);
        free(ja); free(jb);
        ds4_world_clip c;
        assert_int_equal(ds4_world_clip_make(&c, seed + 1000, 64, 64, 24, 120, 1), 0);
        assert_true(memcmp(a.rgb, c.rgb, (size_t)120 * 64 * 64 * 3) != 0);
        ds4_world_clip_free(&a); ds4_world_clip_free(&b); ds4_world_clip_free(&c);
    }
}

static int has_event(const ds4_world_clip *c, int frame, int type, int id, int surface_kind) {
    for (int k = 0; k < c->n_events; k++) {
        const ds4_world_event *e = &c->events[k];
        if (e->frame != frame || e->type != type) continue;
        if (e->ids[0] != id && e->ids[1] != id) continue;
        if (surface_kind == 1 && e->surface != DS4_WSURF_FLOOR) continue;
        if (surface_kind == 2 && e->surface != DS4_WSURF_LEFT && e->surface != DS4_WSURF_RIGHT) continue;
        return 1;
    }
    return 0;
}

/* Another contact of ball id close to this frame (a collision, or a second
 * bounce in the same frame such as a corner, where friction at the second
 * surface may stop the first flip): the flip test does not apply. */
static int collides_near(const ds4_world_clip *c, int frame, int id) {
    int bounces = 0;
    for (int k = 0; k < c->n_events; k++) {
        const ds4_world_event *e = &c->events[k];
        if (e->ids[0] != id && e->ids[1] != id) continue;
        if (e->type == DS4_WEV_COLLISION && abs(e->frame - frame) <= 1) return 1;
        if (e->type == DS4_WEV_BOUNCE && e->frame == frame) bounces++;
    }
    return bounces > 1;
}

/* Every floor/wall bounce event shows as a velocity sign flip between the
 * frame before and the event frame; every fast sign flip has its event. */
static void test_bounce_events_match_sign_flips(void **state) {
    (void)state;
    int n_events = 0, n_flips = 0;
    for (uint64_t seed = 0; seed < 40; seed++) {
        ds4_world_scene sc;
        assert_int_equal(ds4_world_scene_random(&sc, seed, 64, 64), 0);
        sc.water.enabled = 0;                      /* water pushes balls too: keep it out */
        ds4_world_clip c;
        assert_int_equal(ds4_world_clip_simulate(&c, &sc, 64, 64, 240, 0), 0);
        for (int k = 0; k < c.n_events; k++) {
            const ds4_world_event *e = &c.events[k];
            if (e->type != DS4_WEV_BOUNCE) continue;
            int id = e->ids[0], f = e->frame;
            if (collides_near(&c, f, id)) continue;
            const ds4_world_state *s0 = &c.states[(size_t)(f - 1) * c.n_objects + id];
            const ds4_world_state *s1 = &c.states[(size_t)f * c.n_objects + id];
            if (e->surface == DS4_WSURF_FLOOR) { assert_true(s0->vy < 0); assert_true(s1->vy > 0); }
            if (e->surface == DS4_WSURF_CEILING) { assert_true(s0->vy > 0); assert_true(s1->vy < 0); }
            if (e->surface == DS4_WSURF_LEFT) { assert_true(s0->vx < 0); assert_true(s1->vx > 0); }
            if (e->surface == DS4_WSURF_RIGHT) { assert_true(s0->vx > 0); assert_true(s1->vx < 0); }
            assert_true(e->speed >= DS4_WORLD_BOUNCE_SPEED);
            n_events++;
        }
        for (int f = 1; f < c.n_frames; f++)
            for (int id = 0; id < sc.n_balls; id++) {
                const ds4_world_state *s0 = &c.states[(size_t)(f - 1) * c.n_objects + id];
                const ds4_world_state *s1 = &c.states[(size_t)f * c.n_objects + id];
                if (collides_near(&c, f, id)) continue;
                /* falling at least as fast as the event threshold: the impact is at least that fast */
                if (s0->vy <= -DS4_WORLD_BOUNCE_SPEED && s1->vy > 0) {
                    assert_true(has_event(&c, f, DS4_WEV_BOUNCE, id, 1));
                    n_flips++;
                }
                if (fabs(s0->vx) >= DS4_WORLD_BOUNCE_SPEED && s0->vx * s1->vx < 0) {
                    assert_true(has_event(&c, f, DS4_WEV_BOUNCE, id, 2));
                    n_flips++;
                }
            }
        ds4_world_clip_free(&c);
    }
    assert_true(n_events > 100);
    assert_true(n_flips > 50);
}

/* A dropped ball with restitution < 1 comes to rest exactly on the floor and
 * its bounce count matches its caption. */
static void test_comes_to_rest(void **state) {
    (void)state;
    ds4_world_scene sc = empty_scene(9.81, 0.6, 0.1, 0.02);
    sc.seed = 0;
    ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.2, 0.9, 2.5, 0.0, 0.0);
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_simulate(&c, &sc, 64, 64, 240, 0), 0);
    const ds4_world_state *last = &c.states[(size_t)239 * c.n_objects];
    assert_true(last->vy == 0.0 && last->vx == 0.0);
    assert_true(fabs(last->y - (DS4_WORLD_WALL_M + 0.2)) < 1e-12);
    /* bounce impacts decay by e each time: count those above the threshold */
    double v = sqrt(2 * 9.81 * (2.5 - 0.325));
    int expect = 0;
    while (v >= DS4_WORLD_BOUNCE_SPEED) { expect++; v *= 0.6; }
    assert_int_equal(ds4_world_clip_bounces(&c, 0), expect);
    assert_string_equal(c.caption, "a small red ball drops from the upper left and bounces three times before coming to rest");
    assert_int_equal(expect, 3);
    ds4_world_clip_free(&c);
}

/* Water: particles are poured, stay inside the box, settle, and the pour
 * event comes at the first frame that shows water. */
static void test_water(void **state) {
    (void)state;
    ds4_world_scene sc = empty_scene(9.81, 0.8, 0.1, 0.02);
    sc.water = (ds4_world_pour){1, 2.0, 3.6, 0.3, -1.5, 0.3, 0.5, 2.5, 90.0, 200};
    ds4_world_scene_add_ball(&sc, DS4_WC_YELLOW, 0.3, 1.0, 1.0, 0.0, 0.0);
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_simulate(&c, &sc, 64, 64, 240, 1), 0);
    assert_int_equal(c.n_objects, 2);
    int first = -1, n_pour = 0;
    for (int f = 0; f < 240; f++) {
        const ds4_world_state *w = &c.states[(size_t)f * 2 + 1];
        if (w->n > 0 && first < 0) first = f;
    }
    for (int k = 0; k < c.n_events; k++)
        if (c.events[k].type == DS4_WEV_POUR) { n_pour++; assert_int_equal(c.events[k].frame, first); assert_int_equal(c.events[k].ids[0], 1); }
    assert_int_equal(n_pour, 1);
    assert_int_equal(first, 13);                      /* t_start 0.5 s = frame 12, visible in 13 */
    const ds4_world_state *w = &c.states[(size_t)239 * 2 + 1];
    assert_int_equal(w->n, 180);                      /* 2 s at 90 per second */
    assert_true(w->y > DS4_WORLD_WALL_M && w->y < 0.6);   /* a pool on the floor */
    assert_true(fabs(w->vy) < 0.2);
    ds4_world_sim *s = ds4_world_sim_new(&sc);
    for (int f = 0; f < 239; f++) ds4_world_sim_step(s);
    for (int i = 0; i < s->n_particles; i++) {
        assert_true(s->px[i] > DS4_WORLD_WALL_M && s->px[i] < 4.0 - DS4_WORLD_WALL_M);
        assert_true(s->py[i] > DS4_WORLD_WALL_M && s->py[i] < 4.0);
    }
    /* the last simulated state renders to the clip's last frame */
    uint8_t *rgb = malloc(64 * 64 * 3);
    ds4_world_render(s, rgb, 64, 64);
    assert_memory_equal(rgb, c.rgb + (size_t)239 * 64 * 64 * 3, 64 * 64 * 3);
    free(rgb);
    ds4_world_sim_free(s);
    assert_non_null(strstr(c.caption, "water pours in from the top centre"));
    ds4_world_clip_free(&c);
}

static void test_validation(void **state) {
    (void)state;
    ds4_world_scene sc = empty_scene(9.81, 1.5, 0.1, 0.02);
    assert_null(ds4_world_sim_new(&sc));
    assert_non_null(strstr(ds4_error(), "restitution"));
    sc.restitution = 0.8;
    ds4_world_scene_add_ball(&sc, DS4_WC_RED, 3.0, 2, 2, 0, 0);
    assert_null(ds4_world_sim_new(&sc));
    assert_non_null(strstr(ds4_error(), "ball 0"));
    sc.n_balls = 0;
    for (int i = 0; i < DS4_WORLD_MAX_BALLS; i++) assert_true(ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.2, 1, 1, 0, 0) >= 0);
    assert_int_equal(ds4_world_scene_add_ball(&sc, DS4_WC_RED, 0.2, 1, 1, 0, 0), -1);
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, 1, 64, 32, 24, 10, 0), 0);   /* 4 m x 2 m world */
    assert_true(fabs(c.scene.height_m - 2.0) < 1e-12);
    ds4_world_clip_free(&c);
    ds4_world_scene_init(&sc, 4.0, 4.0);
    assert_int_equal(ds4_world_clip_simulate(&c, &sc, 64, 32, 10, 0), -1);   /* aspect mismatch */
    assert_non_null(strstr(ds4_error(), "aspect"));
}

/* Random scenes stay in the documented ranges; about a quarter have water. */
static void test_random_scenes(void **state) {
    (void)state;
    int water = 0, counts[4] = {0};
    for (uint64_t seed = 0; seed < 400; seed++) {
        ds4_world_scene sc;
        assert_int_equal(ds4_world_scene_random(&sc, seed, 64, 64), 0);
        assert_true(sc.g >= 6 && sc.g <= 14);
        assert_true(sc.restitution >= 0.6 && sc.restitution <= 0.95);
        assert_true(sc.n_balls >= 1 && sc.n_balls <= 3);
        counts[sc.n_balls]++;
        water += sc.water.enabled;
        for (int i = 0; i < sc.n_balls; i++) {
            assert_true(sc.balls[i].r >= 0.15 && sc.balls[i].r <= 0.40);
            assert_true(fabs(sc.balls[i].m - DS4_WORLD_BALL_DENSITY * M_PI * sc.balls[i].r * sc.balls[i].r) < 1e-12);
            for (int j = 0; j < i; j++) {
                assert_int_not_equal(sc.balls[i].color, sc.balls[j].color);
                double d = hypot(sc.balls[i].x - sc.balls[j].x, sc.balls[i].y - sc.balls[j].y);
                assert_true(d > sc.balls[i].r + sc.balls[j].r);
            }
        }
    }
    assert_true(water > 60 && water < 140);
    assert_true(counts[1] > 80 && counts[2] > 80 && counts[3] > 80);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_energy_conserved),
        cmocka_unit_test(test_free_fall),
        cmocka_unit_test(test_collision_momentum),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_bounce_events_match_sign_flips),
        cmocka_unit_test(test_comes_to_rest),
        cmocka_unit_test(test_water),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_random_scenes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
