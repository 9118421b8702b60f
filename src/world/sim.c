/* sim.c — the deterministic 2D physics of SPEC §3: random scenes from a seed;
 * balls under gravity with exact (time-of-impact) wall/floor bounces,
 * restitution, Coulomb friction and rolling resistance; impulse ball–ball
 * collisions with positional correction; and a poured particle fluid
 * (double-density relaxation, Clavet et al. 2005 style) on a spatial hash. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"

/* Fluid constants (metres, seconds). The fluid steps once per FL_EVERY ball
 * substeps: with 24 fps x 8 that is 48 fluid steps per second. */
#define FL_H        0.20     /* interaction radius */
#define FL_RHO0     1.6      /* rest density (sum of (1-q)^2): about 0.1 m spacing */
#define FL_K        15.0     /* pressure stiffness, m/s^2 per unit density (stable: dt^2 k ~ 0.0065) */
#define FL_KNEAR    25.0     /* near-pressure stiffness */
#define FL_VISC_LIN 4.0      /* linear viscosity, 1/s */
#define FL_VISC_QUAD 0.5     /* quadratic viscosity, 1/m */
#define FL_PR       0.05     /* particle collision radius against walls and balls */
#define FL_VMAX     12.0     /* speed cap, m/s */
#define FL_EVERY    4
#define FL_MAX_PAIRS_PER 24  /* pair storage per particle */

/* ---- scenes ---------------------------------------------------------------- */

void ds4_world_scene_init(ds4_world_scene *s, double width_m, double height_m) {
    memset(s, 0, sizeof *s);
    s->width_m = width_m;
    s->height_m = height_m;
    s->wall_m = DS4_WORLD_WALL_M;
    s->g = 9.81;
    s->restitution = 0.8;
    s->friction = 0.1;
    s->rolling = 0.02;
    s->fps = 24;
    s->substeps = 8;
}

int ds4_world_scene_add_ball(ds4_world_scene *s, int color, double r,
                             double x, double y, double vx, double vy) {
    if (s->n_balls >= DS4_WORLD_MAX_BALLS) {
        ds4_set_error("world scene: more than %d balls", DS4_WORLD_MAX_BALLS);
        return -1;
    }
    ds4_world_ball *b = &s->balls[s->n_balls];
    b->color = color;
    b->r = r;
    b->m = DS4_WORLD_BALL_DENSITY * M_PI * r * r;
    b->x = x; b->y = y; b->vx = vx; b->vy = vy;
    return s->n_balls++;
}

static double rnd(ds4_rng *r, double lo, double hi) { return lo + (hi - lo) * ds4_rng_uniform(r); }
static double q3(double v) { return round(v * 1000.0) / 1000.0 + 0.0; }   /* + 0.0: no -0 */

int ds4_world_scene_random(ds4_world_scene *s, uint64_t seed, int width_px, int height_px) {
    if (width_px <= 0 || height_px <= 0) {
        ds4_set_error("world scene: bad frame size %dx%d", width_px, height_px);
        return -1;
    }
    ds4_world_scene_init(s, DS4_WORLD_WIDTH_M, DS4_WORLD_WIDTH_M * height_px / width_px);
    s->seed = seed;
    ds4_rng rng;
    ds4_rng_seed(&rng, seed ^ 0x5eedc0ffee123457ULL);
    s->g = q3(rnd(&rng, 6.0, 14.0));
    s->restitution = q3(rnd(&rng, 0.6, 0.95));
    double xmin = s->wall_m, xmax = s->width_m - s->wall_m;
    double ymin = s->wall_m, ymax = s->height_m;

    int colors[4] = {DS4_WC_RED, DS4_WC_GREEN, DS4_WC_BLUE, DS4_WC_YELLOW};
    for (int i = 3; i > 0; i--) {                         /* Fisher-Yates */
        int j = (int)(ds4_rng_u64(&rng) % (uint64_t)(i + 1));
        int t = colors[i]; colors[i] = colors[j]; colors[j] = t;
    }
    int n = 1 + (int)(ds4_rng_u64(&rng) % 3);
    for (int i = 0; i < n; i++) {
        double r = q3(rnd(&rng, 0.15, 0.40));
        if (xmax - xmin < 2 * r + 0.01 || ymax - ymin < 2 * r + 0.01) continue;
        double x = 0, y = 0;
        int placed = 0;
        for (int tries = 0; tries < 200 && !placed; tries++) {
            x = q3(rnd(&rng, xmin + r, xmax - r));
            double ylo = ymin + r, yhi = ymax - r;
            y = q3(rnd(&rng, ylo + 0.35 * (yhi - ylo), yhi));
            placed = 1;
            for (int j = 0; j < s->n_balls; j++) {
                double dx = x - s->balls[j].x, dy = y - s->balls[j].y, rr = r + s->balls[j].r + 0.05;
                if (dx * dx + dy * dy < rr * rr) { placed = 0; break; }
            }
        }
        if (!placed) continue;
        double vx = 0, vy = 0;
        if (ds4_rng_uniform(&rng) >= 0.4) {                /* 40% are dropped at rest */
            vx = q3(rnd(&rng, -2.5, 2.5));
            vy = q3(rnd(&rng, -1.5, 2.5));
            double vmax = sqrt(2.0 * s->g * fmax(0.0, ymax - r - y));   /* apex below the top */
            if (vy > vmax) vy = floor(vmax * 1000.0) / 1000.0;
        }
        ds4_world_scene_add_ball(s, colors[i], r, x, y, vx, vy);
    }
    if (ds4_rng_uniform(&rng) < 0.25) {
        ds4_world_pour *w = &s->water;
        w->enabled = 1;
        w->x = q3(rnd(&rng, xmin + 0.5, xmax - 0.5));
        w->y = q3(s->height_m - 0.2);
        w->vx = q3(rnd(&rng, -0.6, 0.6));
        w->vy = -1.5;
        w->width = 0.3;
        w->t_start = (double)(ds4_rng_u64(&rng) % (uint64_t)(s->fps + 1)) / s->fps;
        w->t_end = w->t_start + q3(rnd(&rng, 1.5, 3.0));
        w->rate = 90.0;
        w->max_particles = 240;
    }
    return ds4_world_scene_validate(s);
}

int ds4_world_scene_validate(const ds4_world_scene *s) {
    if (!(s->width_m > 2 * s->wall_m) || !(s->height_m > s->wall_m) || s->wall_m < 0) {
        ds4_set_error("world scene: bad size %gx%g m (wall %g m)", s->width_m, s->height_m, s->wall_m);
        return -1;
    }
    if (!(s->g >= 0 && s->g < 1000) || !(s->restitution >= 0 && s->restitution <= 1) ||
        !(s->friction >= 0) || !(s->rolling >= 0)) {
        ds4_set_error("world scene: bad constants g %g, restitution %g, friction %g, rolling %g",
                      s->g, s->restitution, s->friction, s->rolling);
        return -1;
    }
    if (s->fps < 1 || s->fps > 1000 || s->substeps < 1 || s->substeps > 1000) {
        ds4_set_error("world scene: bad fps %d or substeps %d", s->fps, s->substeps);
        return -1;
    }
    if (s->n_balls < 0 || s->n_balls > DS4_WORLD_MAX_BALLS) {
        ds4_set_error("world scene: %d balls (max %d)", s->n_balls, DS4_WORLD_MAX_BALLS);
        return -1;
    }
    for (int i = 0; i < s->n_balls; i++) {
        const ds4_world_ball *b = &s->balls[i];
        if (b->color < DS4_WC_RED || b->color > DS4_WC_YELLOW || !(b->r > 0) || !(b->m > 0) ||
            2 * b->r > s->width_m - 2 * s->wall_m || 2 * b->r > s->height_m - s->wall_m ||
            !isfinite(b->x) || !isfinite(b->y) || !isfinite(b->vx) || !isfinite(b->vy)) {
            ds4_set_error("world scene: ball %d invalid (color %d, r %g, m %g)", i, b->color, b->r, b->m);
            return -1;
        }
    }
    const ds4_world_pour *w = &s->water;
    if (w->enabled && (w->max_particles < 1 || w->max_particles > DS4_WORLD_MAX_PARTICLES ||
                       !(w->rate > 0) || !(w->t_end >= w->t_start) || !(w->width >= 0))) {
        ds4_set_error("world scene: bad water source (max_particles %d, rate %g)", w->max_particles, w->rate);
        return -1;
    }
    return 0;
}

/* ---- simulator state ------------------------------------------------------- */

ds4_world_sim *ds4_world_sim_new(const ds4_world_scene *sc) {
    if (ds4_world_scene_validate(sc) != 0) return NULL;
    ds4_world_sim *s = ds4_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->sc = *sc;
    int np = sc->water.enabled ? sc->water.max_particles : 1;
    s->grid_w = (int)ceil(sc->width_m / FL_H);
    s->grid_h = (int)ceil(sc->height_m / FL_H);
    int ncell = s->grid_w * s->grid_h;
    s->px = ds4_calloc((size_t)np * 6, sizeof(double));
    s->cell_start = ds4_calloc((size_t)ncell * 2 + 1, sizeof(int));
    s->cell_items = ds4_calloc((size_t)np * 2, sizeof(int));
    s->max_pairs = np * FL_MAX_PAIRS_PER;
    s->pairs = ds4_calloc((size_t)s->max_pairs * 2, sizeof(int));
    s->fscratch = ds4_calloc((size_t)np * 4 + (size_t)s->max_pairs * 3, sizeof(double));
    if (!s->px || !s->cell_start || !s->cell_items || !s->pairs || !s->fscratch) {
        ds4_world_sim_free(s);
        return NULL;
    }
    s->py = s->px + np;     s->pvx = s->px + 2 * np; s->pvy = s->px + 3 * np;
    s->qx = s->px + 4 * np; s->qy = s->px + 5 * np;
    s->cell_of = s->cell_items + np;
    s->emit_acc = 0.0;
    return s;
}

void ds4_world_sim_free(ds4_world_sim *s) {
    if (!s) return;
    free(s->px);
    free(s->cell_start);
    free(s->cell_items);
    free(s->pairs);
    free(s->fscratch);
    free(s->events);
    free(s);
}

static int push_event(ds4_world_sim *s, int frame, int type, int a, int b, int surface, double speed) {
    if (s->n_events == s->cap_events) {
        int cap = s->cap_events ? 2 * s->cap_events : 32;
        ds4_world_event *e = realloc(s->events, (size_t)cap * sizeof *e);
        if (!e) { ds4_set_error("world sim: out of memory for events"); return -1; }
        s->events = e;
        s->cap_events = cap;
    }
    ds4_world_event *e = &s->events[s->n_events++];
    e->frame = frame;
    e->type = type;
    e->n_ids = b >= 0 ? 2 : 1;
    e->ids[0] = b >= 0 && b < a ? b : a;
    e->ids[1] = b >= 0 ? (b < a ? a : b) : -1;
    e->surface = surface;
    e->speed = speed;
    return 0;
}

double ds4_world_sim_energy(const ds4_world_sim *s) {
    double e = 0;
    for (int i = 0; i < s->sc.n_balls; i++) {
        const ds4_world_ball *b = &s->sc.balls[i];
        e += 0.5 * b->m * (b->vx * b->vx + b->vy * b->vy) + b->m * s->sc.g * b->y;
    }
    return e;
}

void ds4_world_sim_water(const ds4_world_sim *s, int *n, double *x, double *y,
                         double *vx, double *vy) {
    double sx = 0, sy = 0, svx = 0, svy = 0;
    int k = s->n_particles;
    for (int i = 0; i < k; i++) { sx += s->px[i]; sy += s->py[i]; svx += s->pvx[i]; svy += s->pvy[i]; }
    *n = k;
    *x = k ? sx / k : 0; *y = k ? sy / k : 0;
    *vx = k ? svx / k : 0; *vy = k ? svy / k : 0;
}

/* ---- balls ------------------------------------------------------------------ */

/* Move ball i through one substep of length dt, bouncing exactly at the time
 * of impact with the floor, the walls and the (invisible) ceiling at the top
 * of the frame. Between impacts the motion is the exact parabola. A ball
 * resting on the floor (y at the floor, vy == 0) feels no gravity, only
 * rolling resistance. */
static int ball_substep(ds4_world_sim *s, int i, double dt, int frame) {
    const ds4_world_scene *sc = &s->sc;
    ds4_world_ball *b = &s->sc.balls[i];
    const double e = sc->restitution, mu = sc->friction;
    const double xmin = sc->wall_m + b->r, xmax = sc->width_m - sc->wall_m - b->r;
    const double ymin = sc->wall_m + b->r, ymax = sc->height_m - b->r;
    if (b->y <= ymin && b->vy == 0.0) {                    /* rolling resistance */
        double dv = sc->rolling * sc->g * dt;
        b->vx = fabs(b->vx) <= dv ? 0.0 : b->vx - (b->vx > 0 ? dv : -dv);
    }
    double rem = dt;
    for (int it = 0; it < 8 && rem > 0; it++) {
        int resting = b->y <= ymin && b->vy == 0.0;
        double g = resting ? 0.0 : sc->g;
        double th = rem;
        int hit = DS4_WSURF_NONE;
        if (!resting) {                                      /* floor */
            double c = fmax(0.0, b->y - ymin), tf = INFINITY;
            if (g > 0) {
                double sq = sqrt(b->vy * b->vy + 2.0 * g * c);
                if (b->vy <= 0) tf = sq - b->vy > 0 ? 2.0 * c / (sq - b->vy) : 0.0;
                else tf = (b->vy + sq) / g;
            } else if (b->vy < 0) tf = c / -b->vy;
            if (tf <= th) { th = tf; hit = DS4_WSURF_FLOOR; }
        }
        if (b->vy > 0) {                                     /* ceiling */
            double c = fmax(0.0, ymax - b->y), tc = INFINITY;
            if (g > 0) {
                double disc = b->vy * b->vy - 2.0 * g * c;
                if (disc >= 0) tc = 2.0 * c / (b->vy + sqrt(disc));
            } else tc = c / b->vy;
            if (tc < th) { th = tc; hit = DS4_WSURF_CEILING; }
        }
        if (b->vx < 0) {                                     /* left wall */
            double tl = fmax(0.0, b->x - xmin) / -b->vx;
            if (tl < th) { th = tl; hit = DS4_WSURF_LEFT; }
        } else if (b->vx > 0) {                              /* right wall */
            double tr = fmax(0.0, xmax - b->x) / b->vx;
            if (tr < th) { th = tr; hit = DS4_WSURF_RIGHT; }
        }
        b->x += b->vx * th;
        b->y += b->vy * th - 0.5 * g * th * th;
        b->vy -= g * th;
        rem -= th;
        if (hit == DS4_WSURF_NONE) break;
        /* vn: speed into the surface; vt: tangential velocity component */
        double *vn_p = hit == DS4_WSURF_FLOOR || hit == DS4_WSURF_CEILING ? &b->vy : &b->vx;
        double *vt_p = vn_p == &b->vy ? &b->vx : &b->vy;
        double sign = hit == DS4_WSURF_FLOOR || hit == DS4_WSURF_LEFT ? -1.0 : 1.0;
        double vn = sign * *vn_p;
        if (hit == DS4_WSURF_FLOOR) b->y = ymin;
        else if (hit == DS4_WSURF_CEILING) b->y = ymax;
        else if (hit == DS4_WSURF_LEFT) b->x = xmin;
        else b->x = xmax;
        if (vn <= 0) continue;
        double dvt = mu * (1.0 + e) * vn;
        *vt_p = fabs(*vt_p) <= dvt ? 0.0 : *vt_p - (*vt_p > 0 ? dvt : -dvt);
        *vn_p = -sign * e * vn;
        if (hit == DS4_WSURF_FLOOR && e * vn < DS4_WORLD_STICK_SPEED) b->vy = 0.0;
        if (vn >= DS4_WORLD_BOUNCE_SPEED &&
            push_event(s, frame, DS4_WEV_BOUNCE, i, -1, hit, vn) != 0) return -1;
    }
    /* numerical safety: never leave the box */
    if (b->x < xmin) b->x = xmin;
    if (b->x > xmax) b->x = xmax;
    if (b->y < ymin) b->y = ymin;
    if (b->y > ymax) b->y = ymax;
    return 0;
}

static void clamp_ball(const ds4_world_scene *sc, ds4_world_ball *b) {
    double xmin = sc->wall_m + b->r, xmax = sc->width_m - sc->wall_m - b->r;
    double ymin = sc->wall_m + b->r, ymax = sc->height_m - b->r;
    if (b->x < xmin) b->x = xmin;
    if (b->x > xmax) b->x = xmax;
    if (b->y < ymin) b->y = ymin;
    if (b->y > ymax) b->y = ymax;
}

/* Ball–ball contacts: a restitution impulse along the normal for approaching
 * pairs (restitution 0 below the stick speed, so resting stacks settle), a
 * Coulomb-limited tangential impulse, then positional correction split by
 * inverse mass. A few sweeps so that chains of contacts settle. */
static int balls_collide(ds4_world_sim *s, int frame) {
    ds4_world_scene *sc = &s->sc;
    int n = sc->n_balls;
    for (int sweep = 0; sweep < 3; sweep++) {
        int any = 0;
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) {
                ds4_world_ball *a = &sc->balls[i], *b = &sc->balls[j];
                double dx = b->x - a->x, dy = b->y - a->y, R = a->r + b->r;
                double d2 = dx * dx + dy * dy;
                if (d2 >= R * R) continue;
                any = 1;
                double d = sqrt(d2), nx = 1.0, ny = 0.0;
                if (d > 1e-12) { nx = dx / d; ny = dy / d; }
                double wa = 1.0 / a->m, wb = 1.0 / b->m;
                double vrel = (b->vx - a->vx) * nx + (b->vy - a->vy) * ny;
                if (vrel < 0) {
                    double e = -vrel < DS4_WORLD_STICK_SPEED ? 0.0 : sc->restitution;
                    double jn = -(1.0 + e) * vrel / (wa + wb);
                    double tx = -ny, ty = nx;
                    double vt = (b->vx - a->vx) * tx + (b->vy - a->vy) * ty;
                    double jt = -vt / (wa + wb), jmax = sc->friction * jn;
                    if (jt > jmax) jt = jmax;
                    if (jt < -jmax) jt = -jmax;
                    double ix = jn * nx + jt * tx, iy = jn * ny + jt * ty;
                    a->vx -= ix * wa; a->vy -= iy * wa;
                    b->vx += ix * wb; b->vy += iy * wb;
                    if (-vrel >= DS4_WORLD_COLLIDE_SPEED &&
                        push_event(s, frame, DS4_WEV_COLLISION, i, j, DS4_WSURF_NONE, -vrel) != 0)
                        return -1;
                }
                double pen = R - d;
                double move = pen / (wa + wb);
                a->x -= nx * move * wa; a->y -= ny * move * wa;
                b->x += nx * move * wb; b->y += ny * move * wb;
                clamp_ball(sc, a);
                clamp_ball(sc, b);
            }
        if (!any) break;
    }
    return 0;
}

/* ---- water ------------------------------------------------------------------ */

static void fluid_hash(ds4_world_sim *s) {
    int n = s->n_particles, gw = s->grid_w, gh = s->grid_h, ncell = gw * gh;
    int *start = s->cell_start, *cursor = s->cell_start + ncell + 1;
    memset(start, 0, (size_t)(ncell + 1) * sizeof(int));
    for (int i = 0; i < n; i++) {
        int cx = (int)(s->px[i] / FL_H), cy = (int)(s->py[i] / FL_H);
        cx = cx < 0 ? 0 : cx >= gw ? gw - 1 : cx;
        cy = cy < 0 ? 0 : cy >= gh ? gh - 1 : cy;
        s->cell_of[i] = cy * gw + cx;
        start[cy * gw + cx + 1]++;
    }
    for (int c = 0; c < ncell; c++) start[c + 1] += start[c];
    memcpy(cursor, start, (size_t)ncell * sizeof(int));
    for (int i = 0; i < n; i++) s->cell_items[cursor[s->cell_of[i]]++] = i;
}

/* All pairs (i < j) closer than FL_H into s->pairs: each cell against itself
 * and its four forward neighbours, so every pair is examined once. */
static void fluid_pairs(ds4_world_sim *s) {
    const int gw = s->grid_w, gh = s->grid_h;
    static const int FWD[4][2] = {{1, 0}, {-1, 1}, {0, 1}, {1, 1}};
    int np = 0;
    fluid_hash(s);
    for (int cy = 0; cy < gh; cy++)
        for (int cx = 0; cx < gw; cx++) {
            int c = cy * gw + cx;
            for (int a = s->cell_start[c]; a < s->cell_start[c + 1]; a++) {
                int i = s->cell_items[a];
                double xi = s->px[i], yi = s->py[i];
                for (int nb = -1; nb < 4; nb++) {
                    int lo, hi;
                    if (nb < 0) { lo = a + 1; hi = s->cell_start[c + 1]; }
                    else {
                        int xx = cx + FWD[nb][0], yy = cy + FWD[nb][1];
                        if (xx < 0 || xx >= gw || yy >= gh) continue;
                        lo = s->cell_start[yy * gw + xx]; hi = s->cell_start[yy * gw + xx + 1];
                    }
                    for (int b = lo; b < hi; b++) {
                        int j = s->cell_items[b];
                        double dx = s->px[j] - xi, dy = s->py[j] - yi;
                        if (dx * dx + dy * dy < FL_H * FL_H && np < s->max_pairs) {
                            s->pairs[2 * np] = i < j ? i : j;
                            s->pairs[2 * np + 1] = i < j ? j : i;
                            np++;
                        }
                    }
                }
            }
        }
    s->n_pairs = np;
}

static void fluid_emit(ds4_world_sim *s, double t, double dt, int frame, int water_id, int *err) {
    const ds4_world_pour *w = &s->sc.water;
    if (t < w->t_start || t >= w->t_end) return;
    s->emit_acc += w->rate * dt;
    while (s->emit_acc >= 1.0 && s->n_particles < w->max_particles) {
        s->emit_acc -= 1.0;
        int k = s->n_particles++;
        /* spread across the nozzle by the golden-ratio sequence (deterministic, no repeats) */
        double u = fmod(0.5 + 0.6180339887498949 * s->emitted, 1.0);
        s->px[k] = w->x + w->width * (u - 0.5);
        s->py[k] = w->y;
        s->pvx[k] = w->vx;
        s->pvy[k] = w->vy;
        if (s->emitted++ == 0 && push_event(s, frame, DS4_WEV_POUR, water_id, -1, DS4_WSURF_NONE, 0) != 0)
            *err = 1;
    }
}

static int water_substep(ds4_world_sim *s, double t, double dt, int frame) {
    int err = 0;
    fluid_emit(s, t, dt, frame, s->sc.n_balls, &err);
    if (err) return -1;
    int n = s->n_particles;
    if (n <= 0) return 0;
    ds4_world_scene *sc = &s->sc;
    double *rho = s->fscratch, *rhon = rho + n, *dx = rho + 2 * n, *dy = rho + 3 * n;
    double *geo = s->fscratch + 4 * (size_t)s->sc.water.max_particles;   /* [n_pairs][3]: q, unit vector */
    const int *pairs = s->pairs;

    for (int i = 0; i < n; i++) s->pvy[i] -= sc->g * dt;
    /* predict positions */
    for (int i = 0; i < n; i++) {
        double v2 = s->pvx[i] * s->pvx[i] + s->pvy[i] * s->pvy[i];
        if (v2 > FL_VMAX * FL_VMAX) { double f = FL_VMAX / sqrt(v2); s->pvx[i] *= f; s->pvy[i] *= f; }
        s->qx[i] = s->px[i]; s->qy[i] = s->py[i];
        s->px[i] += dt * s->pvx[i];
        s->py[i] += dt * s->pvy[i];
    }
    /* double-density relaxation (Jacobi, symmetric: momentum-conserving) */
    fluid_pairs(s);
    const int np = s->n_pairs;
    memset(rho, 0, (size_t)4 * n * sizeof(double));
    for (int p = 0; p < np; p++) {
        int i = pairs[2 * p], j = pairs[2 * p + 1];
        double rx = s->px[j] - s->px[i], ry = s->py[j] - s->py[i], r = sqrt(rx * rx + ry * ry);
        double q = 1.0 - r / FL_H;
        if (r < 1e-9) { rx = (i & 1) ? 1.0 : -1.0; ry = 0.0; r = 1.0; }   /* coincident: any direction */
        geo[3 * p] = q; geo[3 * p + 1] = rx / r; geo[3 * p + 2] = ry / r;
        if (q <= 0) continue;
        rho[i] += q * q; rho[j] += q * q;
        rhon[i] += q * q * q; rhon[j] += q * q * q;
    }
    for (int p = 0; p < np; p++) {
        int i = pairs[2 * p], j = pairs[2 * p + 1];
        double q = geo[3 * p];
        if (q <= 0) continue;
        double P = 0.5 * FL_K * ((rho[i] - FL_RHO0) + (rho[j] - FL_RHO0));
        double Pn = 0.5 * FL_KNEAR * (rhon[i] + rhon[j]);
        double D = 0.5 * dt * dt * (P * q + Pn * q * q);
        double ux = geo[3 * p + 1] * D, uy = geo[3 * p + 2] * D;
        dx[i] -= ux; dy[i] -= uy;
        dx[j] += ux; dy[j] += uy;
    }
    for (int i = 0; i < n; i++) { s->px[i] += dx[i]; s->py[i] += dy[i]; }
    /* collisions: balls (two-way: the ball takes the opposite momentum), then the box */
    for (int k = 0; k < sc->n_balls; k++) {
        ds4_world_ball *b = &sc->balls[k];
        double R = b->r + FL_PR, jx = 0, jy = 0;
        for (int i = 0; i < n; i++) {
            double rx = s->px[i] - b->x, ry = s->py[i] - b->y, d2 = rx * rx + ry * ry;
            if (d2 >= R * R) continue;
            double d = sqrt(d2);
            if (d < 1e-9) { rx = 0; ry = 1; d = 1; }
            double push = R - d;
            double ox = rx / d * push, oy = ry / d * push;
            s->px[i] += ox; s->py[i] += oy;
            jx += ox; jy += oy;
        }
        double f = DS4_WORLD_WATER_MASS / (b->m * dt);
        b->vx -= f * jx;
        b->vy -= f * jy;
    }
    double xlo = sc->wall_m + FL_PR, xhi = sc->width_m - sc->wall_m - FL_PR;
    double ylo = sc->wall_m + FL_PR, yhi = sc->height_m - FL_PR;
    for (int i = 0; i < n; i++) {
        if (s->px[i] < xlo) s->px[i] = xlo;
        if (s->px[i] > xhi) s->px[i] = xhi;
        if (s->py[i] < ylo) s->py[i] = ylo;
        if (s->py[i] > yhi) s->py[i] = yhi;
        s->pvx[i] = (s->px[i] - s->qx[i]) / dt;
        s->pvy[i] = (s->py[i] - s->qy[i]) / dt;
    }
    /* viscosity impulses between approaching neighbours (Jacobi, reusing the
     * pair geometry of the relaxation) */
    memset(dx, 0, (size_t)2 * n * sizeof(double));
    for (int p = 0; p < np; p++) {
        int i = pairs[2 * p], j = pairs[2 * p + 1];
        double q = geo[3 * p], rx = geo[3 * p + 1], ry = geo[3 * p + 2];
        double u = (s->pvx[i] - s->pvx[j]) * rx + (s->pvy[i] - s->pvy[j]) * ry;
        if (q <= 0 || u <= 0) continue;
        double imp = dt * q * (FL_VISC_LIN * u + FL_VISC_QUAD * u * u);
        imp = 0.5 * (imp < 0.5 * u ? imp : 0.5 * u);       /* never reverse the approach */
        dx[i] -= imp * rx; dy[i] -= imp * ry;
        dx[j] += imp * rx; dy[j] += imp * ry;
    }
    for (int i = 0; i < n; i++) { s->pvx[i] += dx[i]; s->pvy[i] += dy[i]; }
    return 0;
}

int ds4_world_sim_step(ds4_world_sim *s) {
    const int sub = s->sc.substeps, next = s->frame + 1;
    const double dt = 1.0 / ((double)s->sc.fps * sub);
    int rc = 0, fluid_from = 0;
    for (int k = 0; k < sub && rc == 0; k++) {
        for (int i = 0; i < s->sc.n_balls && rc == 0; i++) rc = ball_substep(s, i, dt, next);
        if (rc == 0) rc = balls_collide(s, next);
        if (rc == 0 && s->sc.water.enabled && ((k + 1) % FL_EVERY == 0 || k == sub - 1)) {
            /* one fluid step covers substeps fluid_from..k; emission time is its start */
            long step0 = (long)s->frame * sub + fluid_from;
            double t = (double)step0 / ((double)s->sc.fps * sub);
            rc = water_substep(s, t, (k + 1 - fluid_from) * dt, next);
            fluid_from = k + 1;
        }
    }
    if (rc == 0) s->frame = next;
    return rc;
}
