/* track.c — the physics instrument: balls found by colour in every frame,
 * bounces detected from the tracks, gravity fitted to free flight, and the
 * comparison of a predicted clip with the simulator's (positions, velocities,
 * bounce counts and timing, fitted g, object count), plus the caption check
 * of text-to-video clips. The same rules measure predictions and the truth. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

#define MAX_BLOBS 64

int ds4_wm_track_clip(const uint8_t *rgb, int T, int H, int W, double px_per_m, double fps,
                      ds4_wm_track *t) {
    memset(t, 0, sizeof *t);
    if (T <= 0 || H <= 0 || W <= 0 || !(px_per_m > 0)) {
        ds4_set_error("track: bad clip shape %dx%dx%d or px_per_m %g", T, H, W, px_per_m);
        return -1;
    }
    t->n_frames = T; t->width = W; t->height = H; t->px_per_m = px_per_m; t->fps = fps;
    const size_t n = (size_t)T * DS4_WM_COLORS;
    t->found = ds4_calloc(n, 1);
    t->x = ds4_calloc(n, sizeof *t->x);
    t->y = ds4_calloc(n, sizeof *t->y);
    t->r = ds4_calloc(n, sizeof *t->r);
    t->count = ds4_calloc((size_t)T, sizeof *t->count);
    if (!t->found || !t->x || !t->y || !t->r || !t->count) { ds4_wm_track_free(t); return -1; }
    int rc = 0;
    #pragma omp parallel for schedule(dynamic, 4)
    for (int f = 0; f < T; f++) {
        ds4_world_blob b[MAX_BLOBS];
        const int nb = ds4_world_extract(rgb + (size_t)f * H * W * 3, W, H, px_per_m, DS4_WM_TOL,
                                         DS4_WM_MIN_AREA, b, MAX_BLOBS, NULL);
        if (nb < 0) {
            #pragma omp atomic write
            rc = -1;
            continue;
        }
        t->count[f] = nb;
        for (int i = 0; i < nb && i < MAX_BLOBS; i++) {
            const int k = b[i].color - DS4_WC_RED;
            if (k < 0 || k >= DS4_WM_COLORS) continue;
            const size_t j = (size_t)f * DS4_WM_COLORS + k;
            if (t->found[j]) continue;          /* largest blob of the colour comes first */
            t->found[j] = 1;
            t->x[j] = b[i].x;
            t->y[j] = b[i].y;
            t->r[j] = b[i].r_m;
        }
    }
    if (rc != 0) { ds4_error_prefix("track: "); ds4_wm_track_free(t); return -1; }
    return 0;
}

void ds4_wm_track_free(ds4_wm_track *t) {
    free(t->found); free(t->x); free(t->y); free(t->r); free(t->count);
    memset(t, 0, sizeof *t);
}

static int seen(const ds4_wm_track *t, int f, int k) {
    return f >= 0 && f < t->n_frames && t->found[(size_t)f * DS4_WM_COLORS + k];
}
static double X(const ds4_wm_track *t, int f, int k) { return t->x[(size_t)f * DS4_WM_COLORS + k]; }
static double Y(const ds4_wm_track *t, int f, int k) { return t->y[(size_t)f * DS4_WM_COLORS + k]; }

/* 1 if frame f is a bounce of colour k (floor, ceiling or wall reversal). */
static int is_bounce(const ds4_wm_track *t, int f, int k) {
    for (int d = -2; d <= 2; d++) if (!seen(t, f + d, k)) return 0;
    const double thr = DS4_WM_BOUNCE_PX / t->px_per_m;
    const double y = Y(t, f, k), x = X(t, f, k);
    const double ym2 = Y(t, f - 2, k), ym1 = Y(t, f - 1, k), yp1 = Y(t, f + 1, k), yp2 = Y(t, f + 2, k);
    const double xm2 = X(t, f - 2, k), xm1 = X(t, f - 1, k), xp1 = X(t, f + 1, k), xp2 = X(t, f + 2, k);
    if (y < ym1 && y <= yp1 && ym2 - y >= thr && yp2 - y >= thr) return 1;       /* floor */
    if (y > ym1 && y >= yp1 && y - ym2 >= thr && y - yp2 >= thr) return 1;       /* ceiling */
    if (x < xm1 && x <= xp1 && xm2 - x >= thr && xp2 - x >= thr) return 1;       /* left wall */
    if (x > xm1 && x >= xp1 && x - xm2 >= thr && x - xp2 >= thr) return 1;       /* right wall */
    return 0;
}

/* 1 if another ball touches colour k's ball at frame f (a collision, not a bounce). */
static int touching(const ds4_wm_track *t, int f, int k) {
    const size_t j = (size_t)f * DS4_WM_COLORS;
    for (int o = 0; o < DS4_WM_COLORS; o++) {
        if (o == k || !t->found[j + o]) continue;
        double d = hypot(t->x[j + o] - t->x[j + k], t->y[j + o] - t->y[j + k]);
        if (d <= t->r[j + o] + t->r[j + k] + 0.5 / t->px_per_m) return 1;
    }
    return 0;
}

int ds4_wm_bounces(const ds4_wm_track *t, int k, int f0, int f1, int *frames, int max) {
    int n = 0, last = -100;
    if (f0 < 0) f0 = 0;
    if (f1 > t->n_frames) f1 = t->n_frames;
    for (int f = f0; f < f1; f++) {
        if (f - last < 2 || !is_bounce(t, f, k)) continue;
        if (touching(t, f, k)) continue;
        if (frames && n < max) frames[n] = f;
        n++;
        last = f;
    }
    return n;
}

/* Accumulate one segment [a, b] of colour k into the shared-curvature sums. */
static void seg_acc(const ds4_wm_track *t, int k, int a, int b, double *suu, double *sur, int *np) {
    const int n = b - a + 1;
    if (n < 6) return;
    const double dt = 1.0 / t->fps;
    /* centred time: least squares of t^2 and y on (1, t) */
    double st = 0, st2 = 0, sy = 0;
    for (int f = a; f <= b; f++) {
        double tt = (f - a) * dt;
        st += tt; st2 += tt * tt; sy += Y(t, f, k);
    }
    const double mt = st / n, mu = st2 / n, my = sy / n;
    double stt = 0, stu = 0, sty = 0;
    for (int f = a; f <= b; f++) {
        double tt = (f - a) * dt - mt;
        double u = ((f - a) * dt) * ((f - a) * dt) - mu;
        stt += tt * tt; stu += tt * u; sty += tt * (Y(t, f, k) - my);
    }
    const double bu = stt > 0 ? stu / stt : 0, by = stt > 0 ? sty / stt : 0;
    for (int f = a; f <= b; f++) {
        double tt = (f - a) * dt - mt;
        double u = ((f - a) * dt) * ((f - a) * dt) - mu - bu * tt;
        double r = Y(t, f, k) - my - by * tt;
        *suu += u * u;
        *sur += u * r;
    }
    *np += n;
}

int ds4_wm_fit_g(const ds4_wm_track *t, int k, int f0, int f1, double wall_m, double *g, int *n_points) {
    if (f0 < 0) f0 = 0;
    if (f1 > t->n_frames) f1 = t->n_frames;
    double suu = 0, sur = 0;
    int np = 0;
    const double rest = 1.5 / t->px_per_m;
    const double kick = 1.5 / t->px_per_m;   /* free flight bends y by g/fps^2, about 0.3-0.4 px */
    for (int kk = 0; kk < DS4_WM_COLORS; kk++) {
        if (k >= 0 && kk != k) continue;
        int a = -1;
        for (int f = f0; f <= f1; f++) {
            int usable = f < f1 && seen(t, f, kk) && !is_bounce(t, f, kk) &&
                         Y(t, f, kk) - t->r[(size_t)f * DS4_WM_COLORS + kk] > wall_m + rest;
            /* a kick (bounce, collision or glitch the detector missed) ends the segment too */
            if (usable && seen(t, f - 1, kk) && seen(t, f + 1, kk) &&
                fabs(Y(t, f + 1, kk) - 2 * Y(t, f, kk) + Y(t, f - 1, kk)) > kick)
                usable = 0;
            /* a bounce also ends the segment before it (the frame before the contact) */
            if (usable && f + 1 < f1 && is_bounce(t, f + 1, kk)) usable = 0;
            if (usable && a < 0) a = f;
            if (!usable && a >= 0) {
                seg_acc(t, kk, a, f - 1, &suu, &sur, &np);
                a = -1;
            }
        }
    }
    if (n_points) *n_points = np;
    /* at least 8 points and enough curvature leverage (about 0.3 s of flight) */
    if (np < 8 || suu < 1e-5) return -1;
    *g = -2.0 * sur / suu;
    return 0;
}

int ds4_wm_compare(const ds4_wm_track *pred, const ds4_wm_track *ref, int f0, int f1, double wall_m,
                   ds4_wm_clip_metrics *m) {
    memset(m, 0, sizeof *m);
    if (pred->n_frames < f1 || ref->n_frames < f1 || f0 < 0 || f0 >= f1) {
        ds4_set_error("compare: frames [%d, %d) outside the tracks (%d, %d frames)", f0, f1, pred->n_frames,
                      ref->n_frames);
        return -1;
    }
    const size_t cap = (size_t)(f1 - f0) * DS4_WM_COLORS;
    m->pos_err_px = ds4_malloc(cap * sizeof *m->pos_err_px);
    m->pos_dt = ds4_malloc(cap * sizeof *m->pos_dt);
    m->vel_err = ds4_malloc(cap * sizeof *m->vel_err);
    if (!m->pos_err_px || !m->pos_dt || !m->vel_err) { ds4_wm_clip_metrics_free(m); return -1; }
    const double ppm = ref->px_per_m;
    int present[DS4_WM_COLORS] = {0};
    for (int f = f0; f < f1; f++) {
        for (int k = 0; k < DS4_WM_COLORS; k++) {
            if (!seen(ref, f, k)) continue;
            present[k] = 1;
            double e = INFINITY;
            if (seen(pred, f, k)) e = hypot(X(pred, f, k) - X(ref, f, k), Y(pred, f, k) - Y(ref, f, k)) * ppm;
            else m->n_missed++;
            m->pos_err_px[m->n_pairs] = e;
            m->pos_dt[m->n_pairs] = f - f0;
            m->n_pairs++;
            if (seen(ref, f - 1, k) && seen(ref, f + 1, k) && seen(pred, f - 1, k) && seen(pred, f, k) &&
                seen(pred, f + 1, k)) {
                const double h = ref->fps / 2;
                double vxr = (X(ref, f + 1, k) - X(ref, f - 1, k)) * h, vyr = (Y(ref, f + 1, k) - Y(ref, f - 1, k)) * h;
                double vxp = (X(pred, f + 1, k) - X(pred, f - 1, k)) * h, vyp = (Y(pred, f + 1, k) - Y(pred, f - 1, k)) * h;
                double ve = hypot(vxp - vxr, vyp - vyr);
                m->vel_err[m->n_vel++] = ve;
                m->vel_err_sum += ve;
            }
        }
        m->count_frames++;
        m->count_equal += pred->count[f] == ref->count[f];
        m->count_abs_sum += abs(pred->count[f] - ref->count[f]);
    }
    m->bounce_correct = 1;
    for (int k = 0; k < DS4_WM_COLORS; k++) {
        if (!present[k]) continue;
        int fr[64], fp[64];
        int nr = ds4_wm_bounces(ref, k, f0, f1, fr, 64), np = ds4_wm_bounces(pred, k, f0, f1, fp, 64);
        m->bounce_ref += nr;
        m->bounce_pred += np;
        if (nr != np) m->bounce_correct = 0;
        for (int i = 0; i < nr && i < np && i < 64; i++) {
            m->bounce_matched++;
            m->bounce_dt_sum += abs(fr[i] - fp[i]);
        }
    }
    double g;
    m->g_ref = ds4_wm_fit_g(ref, -1, f0, f1, wall_m, &g, NULL) == 0 ? g : NAN;
    m->g_pred = ds4_wm_fit_g(pred, -1, f0, f1, wall_m, &g, NULL) == 0 ? g : NAN;
    return 0;
}

void ds4_wm_clip_metrics_free(ds4_wm_clip_metrics *m) {
    free(m->pos_err_px);
    free(m->pos_dt);
    free(m->vel_err);
    memset(m, 0, sizeof *m);
}

static int region_of(double x, double y, double w, double h) {
    int horiz = x < w / 3 ? 0 : x > 2 * w / 3 ? 2 : 1;
    return horiz + (y > h / 2 ? 3 : 0);
}

int ds4_wm_caption_check_clip(const ds4_wm_track *gen, int n_first, const int *true_colors,
                              const double *true_x, const double *true_y, int n_true,
                              double width_m, double height_m, ds4_wm_caption_check *out) {
    memset(out, 0, sizeof *out);
    if (n_first > gen->n_frames) n_first = gen->n_frames;
    if (n_first <= 0) { ds4_set_error("caption check: empty clip"); return -1; }
    int want[DS4_WM_COLORS] = {0}, got[DS4_WM_COLORS] = {0};
    double gx[DS4_WM_COLORS] = {0}, gy[DS4_WM_COLORS] = {0};
    for (int i = 0; i < n_true; i++) {
        int k = true_colors[i] - DS4_WC_RED;
        if (k < 0 || k >= DS4_WM_COLORS) { ds4_set_error("caption check: colour %d is not a ball colour", true_colors[i]); return -1; }
        want[k] = 1;
    }
    for (int k = 0; k < DS4_WM_COLORS; k++)
        for (int f = 0; f < n_first; f++)
            if (seen(gen, f, k)) { got[k] = 1; gx[k] = X(gen, f, k); gy[k] = Y(gen, f, k); break; }
    out->n_true = n_true;
    out->colors_ok = 1;
    for (int k = 0; k < DS4_WM_COLORS; k++) {
        out->n_found += got[k];
        if (got[k] != want[k]) out->colors_ok = 0;
    }
    /* count: the blob count in most of the first frames */
    int hist[MAX_BLOBS + 1] = {0}, best = 0;
    for (int f = 0; f < n_first; f++) hist[DS4_MIN(gen->count[f], MAX_BLOBS)]++;
    for (int c = 1; c <= MAX_BLOBS; c++) if (hist[c] > hist[best]) best = c;
    out->count_ok = best == n_true;
    out->region_ok = 1;
    for (int i = 0; i < n_true; i++) {
        int k = true_colors[i] - DS4_WC_RED;
        if (!got[k] || region_of(gx[k], gy[k], width_m, height_m) !=
                           region_of(true_x[i], true_y[i], width_m, height_m))
            out->region_ok = 0;
    }
    out->all_ok = out->colors_ok && out->count_ok && out->region_ok;
    return 0;
}
