/* caption.c — the text caption of a clip, generated from its annotations only
 * (initial state, events, final state), e.g. "a small red ball drops from the
 * upper left and bounces three times". Deterministic: same clip, same text. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"

static const char *const NUMBERS[] = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty"};

typedef struct { char *buf; size_t cap, len; int overflow; } sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...) {
    if (b->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len) { b->overflow = 1; return; }
    b->len += (size_t)n;
}

static const char *size_word(double r) { return r < 0.23 ? "small" : r < 0.32 ? "medium" : "large"; }

static void region(double x, double y, double w, double h, int vertical, char *out, size_t cap) {
    const char *horiz = x < w / 3 ? "left" : x > 2 * w / 3 ? "right" : "centre";
    if (vertical) snprintf(out, cap, "%s %s", y > h / 2 ? "upper" : "lower", horiz);
    else snprintf(out, cap, "%s", horiz);
}

static void times(sbuf *b, int n) {
    if (n == 1) sb_add(b, "once");
    else if (n == 2) sb_add(b, "twice");
    else if (n <= 20) sb_add(b, "%s times", NUMBERS[n]);
    else sb_add(b, "%d times", n);
}

int ds4_world_caption(const ds4_world_clip *c, char *out, size_t cap) {
    const ds4_world_scene *sc = &c->scene;
    sbuf b = {out, cap, 0, 0};
    if (cap == 0) { ds4_set_error("world caption: empty buffer"); return -1; }
    out[0] = 0;
    int nb = sc->n_balls;
    if (nb > 1) sb_add(&b, "%s balls: ", NUMBERS[nb]);
    else if (nb == 0) sb_add(&b, "an empty box");
    for (int i = 0; i < nb; i++) {
        const ds4_world_state *s0 = &c->states[i];
        const ds4_world_state *s1 = &c->states[(size_t)(c->n_frames - 1) * c->n_objects + i];
        const ds4_world_ball *ball = &sc->balls[i];
        char reg[32];
        region(s0->x, s0->y, sc->width_m, sc->height_m, 1, reg, sizeof reg);
        if (i > 0) sb_add(&b, "; ");
        sb_add(&b, "a %s %s ball ", size_word(ball->r), ds4_world_color_name(ball->color));
        double speed = hypot(s0->vx, s0->vy);
        if (speed < 0.3) sb_add(&b, "drops");
        else if (s0->vy > 1.0 && s0->vy >= fabs(s0->vx)) sb_add(&b, "is tossed up");
        else if (fabs(s0->vx) >= fabs(s0->vy)) sb_add(&b, "is thrown %s", s0->vx < 0 ? "left" : "right");
        else sb_add(&b, "is thrown down");
        sb_add(&b, " from the %s", reg);
        /* the other balls it hits, in id order */
        int hit[DS4_WORLD_MAX_BALLS] = {0}, n_hit = 0, n_hit_done = 0;
        for (int k = 0; k < c->n_events; k++) {
            const ds4_world_event *e = &c->events[k];
            if (e->type != DS4_WEV_COLLISION || (e->ids[0] != i && e->ids[1] != i)) continue;
            int other = e->ids[0] == i ? e->ids[1] : e->ids[0];
            if (other >= 0 && other < nb && !hit[other]) { hit[other] = 1; n_hit++; }
        }
        for (int j = 0; j < nb; j++) {
            if (!hit[j]) continue;
            sb_add(&b, n_hit_done == 0 ? ", hits the " : n_hit_done == n_hit - 1 ? " and the " : ", the ");
            sb_add(&b, "%s ball", ds4_world_color_name(sc->balls[j].color));
            n_hit_done++;
        }
        int bounces = ds4_world_clip_bounces(c, i);
        int rests = hypot(s1->vx, s1->vy) < 0.05 && s1->y <= sc->wall_m + ball->r + 1e-3;
        if (bounces > 0) {
            sb_add(&b, " and bounces ");
            times(&b, bounces);
            if (rests) sb_add(&b, " before coming to rest");
        } else {
            sb_add(&b, rests ? " and settles on the floor" : " and does not bounce");
        }
    }
    if (c->n_objects > nb) {
        /* where the water comes in: its centroid in the first frame that shows it */
        char reg[32] = "centre";
        for (int f = 0; f < c->n_frames; f++) {
            const ds4_world_state *w = &c->states[(size_t)f * c->n_objects + nb];
            if (w->n > 0) { region(w->x, w->y, sc->width_m, sc->height_m, 0, reg, sizeof reg); break; }
        }
        sb_add(&b, nb ? "; water pours in from the top %s" : " and water pours in from the top %s", reg);
    }
    if (b.overflow) {
        ds4_set_error("world caption: longer than %zu bytes", cap - 1);
        return -1;
    }
    return 0;
}
