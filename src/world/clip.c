/* clip.c — one dataset clip: simulate a scene frame by frame, record the
 * per-frame annotations and events, render the frames; and the clip's JSON
 * Lines annotation (SPEC §3 fields), written and parsed back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "util/util.h"
#include "world/world.h"

int ds4_world_clip_simulate(ds4_world_clip *c, const ds4_world_scene *sc,
                            int width_px, int height_px, int n_frames, int render) {
    memset(c, 0, sizeof *c);
    if (width_px < 8 || height_px < 8 || width_px > 4096 || height_px > 4096) {
        ds4_set_error("world clip: frame size %dx%d outside [8, 4096]", width_px, height_px);
        return -1;
    }
    if (n_frames < 1 || n_frames > 100000) {
        ds4_set_error("world clip: %d frames outside [1, 100000]", n_frames);
        return -1;
    }
    double ppm = width_px / sc->width_m;
    if (fabs(sc->height_m * ppm - height_px) > 1e-6 * height_px) {
        ds4_set_error("world clip: scene %gx%g m does not match frame %dx%d px (aspect)",
                      sc->width_m, sc->height_m, width_px, height_px);
        return -1;
    }
    ds4_world_sim *s = ds4_world_sim_new(sc);
    if (!s) return -1;
    c->scene = *sc;
    c->width_px = width_px;
    c->height_px = height_px;
    c->fps = sc->fps;
    c->n_frames = n_frames;
    c->px_per_m = ppm;
    c->n_objects = sc->n_balls + (sc->water.enabled ? 1 : 0);
    size_t frame_bytes = (size_t)width_px * height_px * 3;
    c->states = ds4_calloc((size_t)n_frames * (c->n_objects ? c->n_objects : 1), sizeof *c->states);
    if (render) c->rgb = ds4_malloc((size_t)n_frames * frame_bytes);
    if (!c->states || (render && !c->rgb)) goto fail;
    for (int f = 0; f < n_frames; f++) {
        if (f > 0 && ds4_world_sim_step(s) != 0) goto fail;
        ds4_world_state *st = c->states + (size_t)f * c->n_objects;
        for (int i = 0; i < sc->n_balls; i++) {
            const ds4_world_ball *b = &s->sc.balls[i];
            st[i] = (ds4_world_state){b->x, b->y, b->vx, b->vy, 1};
        }
        if (sc->water.enabled) {
            ds4_world_state *w = &st[sc->n_balls];
            ds4_world_sim_water(s, &w->n, &w->x, &w->y, &w->vx, &w->vy);
        }
        if (render) ds4_world_render(s, c->rgb + (size_t)f * frame_bytes, width_px, height_px);
    }
    c->n_events = s->n_events;
    c->events = ds4_malloc((size_t)(s->n_events ? s->n_events : 1) * sizeof *c->events);
    if (!c->events) goto fail;
    if (s->n_events) memcpy(c->events, s->events, (size_t)s->n_events * sizeof *c->events);
    ds4_world_sim_free(s);
    if (ds4_world_caption(c, c->caption, sizeof c->caption) != 0) { ds4_world_clip_free(c); return -1; }
    return 0;
fail:
    ds4_world_sim_free(s);
    ds4_world_clip_free(c);
    return -1;
}

int ds4_world_clip_make(ds4_world_clip *c, uint64_t seed, int width_px, int height_px,
                        int fps, int n_frames, int render) {
    ds4_world_scene sc;
    memset(c, 0, sizeof *c);
    if (fps < 1 || fps > 1000) { ds4_set_error("world clip: fps %d outside [1, 1000]", fps); return -1; }
    if (ds4_world_scene_random(&sc, seed, width_px, height_px) != 0) return -1;
    if (fps != sc.fps) {   /* keep the physics step near 1/192 s whatever the frame rate */
        sc.substeps = (192 + fps - 1) / fps;
        sc.fps = fps;
        if (sc.water.enabled) {            /* the pour starts on a frame boundary */
            double k = round(sc.water.t_start * fps), dur = sc.water.t_end - sc.water.t_start;
            sc.water.t_start = k / fps;
            sc.water.t_end = sc.water.t_start + dur;
        }
    }
    return ds4_world_clip_simulate(c, &sc, width_px, height_px, n_frames, render);
}

void ds4_world_clip_free(ds4_world_clip *c) {
    if (!c) return;
    free(c->states);
    free(c->events);
    free(c->rgb);
    c->states = NULL; c->events = NULL; c->rgb = NULL;
}

int ds4_world_clip_bounces(const ds4_world_clip *c, int id) {
    int n = 0;
    for (int k = 0; k < c->n_events; k++)
        if (c->events[k].type == DS4_WEV_BOUNCE && c->events[k].ids[0] == id) n++;
    return n;
}

/* ---- JSON ------------------------------------------------------------------- */

static const char *const EVENT_NAMES[] = {"bounce", "collision", "pour"};

static double r4(double v) { return round(v * 1e4) / 1e4 + 0.0; }
static double r6(double v) { return round(v * 1e6) / 1e6 + 0.0; }

char *ds4_world_clip_to_json(const ds4_world_clip *c) {
    const ds4_world_scene *sc = &c->scene;
    cJSON *root = cJSON_CreateObject();
    if (!root) goto oom;
    cJSON_AddNumberToObject(root, "seed", (double)sc->seed);
    cJSON_AddNumberToObject(root, "fps", c->fps);
    cJSON_AddNumberToObject(root, "width_px", c->width_px);
    cJSON_AddNumberToObject(root, "height_px", c->height_px);
    cJSON_AddNumberToObject(root, "px_per_m", r6(c->px_per_m));
    cJSON_AddNumberToObject(root, "g", r6(sc->g));
    cJSON_AddNumberToObject(root, "restitution", r6(sc->restitution));
    cJSON_AddStringToObject(root, "caption", c->caption);
    cJSON *objs = cJSON_AddArrayToObject(root, "objects");
    if (!objs) goto oom;
    for (int i = 0; i < c->n_objects; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) goto oom;
        cJSON_AddItemToArray(objs, o);
        cJSON_AddNumberToObject(o, "id", i);
        int is_ball = i < sc->n_balls;
        cJSON_AddStringToObject(o, "kind", is_ball ? "ball" : "water");
        cJSON_AddStringToObject(o, "color", ds4_world_color_name(is_ball ? sc->balls[i].color : DS4_WC_WATER));
        cJSON_AddNumberToObject(o, "radius_m", r6(is_ball ? sc->balls[i].r : DS4_WORLD_WATER_RADIUS));
        cJSON_AddNumberToObject(o, "mass", r6(is_ball ? sc->balls[i].m : DS4_WORLD_WATER_MASS));
    }
    cJSON *frames = cJSON_AddArrayToObject(root, "frames");
    if (!frames) goto oom;
    for (int f = 0; f < c->n_frames; f++) {
        cJSON *fr = cJSON_CreateObject();
        if (!fr) goto oom;
        cJSON_AddItemToArray(frames, fr);
        cJSON_AddNumberToObject(fr, "i", f);
        cJSON *arr = cJSON_AddArrayToObject(fr, "objects");
        if (!arr) goto oom;
        for (int i = 0; i < c->n_objects; i++) {
            const ds4_world_state *st = &c->states[(size_t)f * c->n_objects + i];
            cJSON *o = cJSON_CreateObject();
            if (!o) goto oom;
            cJSON_AddItemToArray(arr, o);
            cJSON_AddNumberToObject(o, "id", i);
            if (i >= sc->n_balls) cJSON_AddNumberToObject(o, "particles", st->n);
            cJSON_AddNumberToObject(o, "x", r4(st->x));
            cJSON_AddNumberToObject(o, "y", r4(st->y));
            cJSON_AddNumberToObject(o, "vx", r4(st->vx));
            cJSON_AddNumberToObject(o, "vy", r4(st->vy));
        }
    }
    cJSON *evs = cJSON_AddArrayToObject(root, "events");
    if (!evs) goto oom;
    for (int k = 0; k < c->n_events; k++) {
        const ds4_world_event *e = &c->events[k];
        cJSON *o = cJSON_CreateObject();
        if (!o) goto oom;
        cJSON_AddItemToArray(evs, o);
        cJSON_AddNumberToObject(o, "frame", e->frame);
        cJSON_AddStringToObject(o, "type", EVENT_NAMES[e->type]);
        cJSON *ids = cJSON_CreateIntArray(e->ids, e->n_ids);
        if (!ids) goto oom;
        cJSON_AddItemToObject(o, "ids", ids);
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out) ds4_set_error("world annotation: out of memory printing JSON");
    return out;
oom:
    cJSON_Delete(root);
    ds4_set_error("world annotation: out of memory building JSON");
    return NULL;
}

/* Field getters that name what is missing or wrong. */
static int get_num(const cJSON *o, const char *key, double *out, const char *origin, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        ds4_set_error("%s: %s: field \"%s\" %s", origin, where, key, v ? "is not a finite number" : "is missing");
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int get_int(const cJSON *o, const char *key, long lo, long hi, int *out,
                   const char *origin, const char *where) {
    double d;
    if (get_num(o, key, &d, origin, where) != 0) return -1;
    if (d != floor(d) || d < lo || d > hi) {
        ds4_set_error("%s: %s: field \"%s\" = %g is not an integer in [%ld, %ld]", origin, where, key, d, lo, hi);
        return -1;
    }
    *out = (int)d;
    return 0;
}

static const cJSON *get_arr(const cJSON *o, const char *key, const char *origin, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v)) {
        ds4_set_error("%s: %s: field \"%s\" %s", origin, where, key, v ? "is not an array" : "is missing");
        return NULL;
    }
    return v;
}

static const char *get_str(const cJSON *o, const char *key, const char *origin, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) {
        ds4_set_error("%s: %s: field \"%s\" %s", origin, where, key, v ? "is not a string" : "is missing");
        return NULL;
    }
    return v->valuestring;
}

static int parse_clip(ds4_world_clip *c, const cJSON *root, const char *origin) {
    char where[96] = "clip";
    double seed, ppm, g, e;
    int fps, w, h;
    if (!cJSON_IsObject(root)) { ds4_set_error("%s: not a JSON object", origin); return -1; }
    if (get_num(root, "seed", &seed, origin, where) || get_int(root, "fps", 1, 1000, &fps, origin, where) ||
        get_int(root, "width_px", 8, 4096, &w, origin, where) ||
        get_int(root, "height_px", 8, 4096, &h, origin, where) ||
        get_num(root, "px_per_m", &ppm, origin, where) || get_num(root, "g", &g, origin, where) ||
        get_num(root, "restitution", &e, origin, where))
        return -1;
    if (seed < 0 || seed != floor(seed) || seed > 9007199254740992.0) {
        ds4_set_error("%s: field \"seed\" = %g is not a non-negative integer", origin, seed);
        return -1;
    }
    if (!(ppm > 0)) { ds4_set_error("%s: field \"px_per_m\" = %g must be > 0", origin, ppm); return -1; }
    const char *caption = get_str(root, "caption", origin, where);
    if (!caption) return -1;
    const cJSON *objs = get_arr(root, "objects", origin, where), *frames = get_arr(root, "frames", origin, where),
                *evs = get_arr(root, "events", origin, where);
    if (!objs || !frames || !evs) return -1;

    ds4_world_scene_init(&c->scene, w / ppm, h / ppm);
    c->scene.seed = (uint64_t)seed;
    c->scene.g = g;
    c->scene.restitution = e;
    c->scene.fps = fps;
    c->width_px = w; c->height_px = h; c->fps = fps; c->px_per_m = ppm;
    snprintf(c->caption, sizeof c->caption, "%s", caption);
    int n_obj = cJSON_GetArraySize(objs), n_balls = 0;
    if (n_obj > DS4_WORLD_MAX_BALLS + 1) {
        ds4_set_error("%s: %d objects (at most %d)", origin, n_obj, DS4_WORLD_MAX_BALLS + 1);
        return -1;
    }
    for (int i = 0; i < n_obj; i++) {
        const cJSON *o = cJSON_GetArrayItem(objs, i);
        snprintf(where, sizeof where, "objects[%d]", i);
        int id;
        double r, m;
        const char *kind = get_str(o, "kind", origin, where), *color = get_str(o, "color", origin, where);
        if (!kind || !color || get_int(o, "id", 0, 1000, &id, origin, where) ||
            get_num(o, "radius_m", &r, origin, where) || get_num(o, "mass", &m, origin, where))
            return -1;
        if (id != i) { ds4_set_error("%s: %s: id %d, expected %d", origin, where, id, i); return -1; }
        if (!strcmp(kind, "ball")) {
            int col = ds4_world_color_from_name(color);
            if (n_balls != i || col < DS4_WC_RED || col > DS4_WC_YELLOW || !(r > 0) || !(m > 0)) {
                ds4_set_error("%s: %s: bad ball (color \"%s\", radius %g, mass %g; balls come first)",
                              origin, where, color, r, m);
                return -1;
            }
            ds4_world_ball *b = &c->scene.balls[n_balls++];
            b->color = col; b->r = r; b->m = m;
        } else if (!strcmp(kind, "water")) {
            if (i != n_obj - 1) { ds4_set_error("%s: %s: water must be the last object", origin, where); return -1; }
        } else {
            ds4_set_error("%s: %s: kind \"%s\" is neither ball nor water", origin, where, kind);
            return -1;
        }
    }
    c->scene.n_balls = n_balls;
    c->n_objects = n_obj;
    c->n_frames = cJSON_GetArraySize(frames);
    if (c->n_frames < 1) { ds4_set_error("%s: no frames", origin); return -1; }
    c->states = ds4_calloc((size_t)c->n_frames * (n_obj ? n_obj : 1), sizeof *c->states);
    if (!c->states) return -1;
    int f = 0;
    for (const cJSON *fr = frames->child; fr; fr = fr->next, f++) {
        snprintf(where, sizeof where, "frames[%d]", f);
        int idx;
        if (get_int(fr, "i", 0, 1 << 30, &idx, origin, where)) return -1;
        if (idx != f) { ds4_set_error("%s: %s: i = %d, expected %d", origin, where, idx, f); return -1; }
        const cJSON *arr = get_arr(fr, "objects", origin, where);
        if (!arr) return -1;
        if (cJSON_GetArraySize(arr) != n_obj) {
            ds4_set_error("%s: %s: %d objects, expected %d", origin, where, cJSON_GetArraySize(arr), n_obj);
            return -1;
        }
        int k = 0;
        for (const cJSON *o = arr->child; o; o = o->next, k++) {
            ds4_world_state *st = &c->states[(size_t)f * n_obj + k];
            snprintf(where, sizeof where, "frames[%d].objects[%d]", f, k);
            int id;
            if (get_int(o, "id", 0, 1000, &id, origin, where) || get_num(o, "x", &st->x, origin, where) ||
                get_num(o, "y", &st->y, origin, where) || get_num(o, "vx", &st->vx, origin, where) ||
                get_num(o, "vy", &st->vy, origin, where))
                return -1;
            if (id != k) { ds4_set_error("%s: %s: id %d, expected %d", origin, where, id, k); return -1; }
            st->n = 1;
            if (k >= n_balls && get_int(o, "particles", 0, DS4_WORLD_MAX_PARTICLES, &st->n, origin, where))
                return -1;
        }
    }
    for (int i = 0; i < n_balls; i++) {
        ds4_world_ball *b = &c->scene.balls[i];
        b->x = c->states[i].x; b->y = c->states[i].y; b->vx = c->states[i].vx; b->vy = c->states[i].vy;
    }
    c->n_events = cJSON_GetArraySize(evs);
    c->events = ds4_calloc((size_t)(c->n_events ? c->n_events : 1), sizeof *c->events);
    if (!c->events) return -1;
    int k = 0;
    for (const cJSON *o = evs->child; o; o = o->next, k++) {
        ds4_world_event *ev = &c->events[k];
        snprintf(where, sizeof where, "events[%d]", k);
        const char *type = get_str(o, "type", origin, where);
        const cJSON *ids = get_arr(o, "ids", origin, where);
        if (!type || !ids || get_int(o, "frame", 0, c->n_frames - 1, &ev->frame, origin, where)) return -1;
        ev->type = -1;
        for (int t = 0; t < 3; t++) if (!strcmp(type, EVENT_NAMES[t])) ev->type = t;
        if (ev->type < 0) { ds4_set_error("%s: %s: unknown type \"%s\"", origin, where, type); return -1; }
        ev->n_ids = cJSON_GetArraySize(ids);
        int want = ev->type == DS4_WEV_COLLISION ? 2 : 1;
        if (ev->n_ids != want) {
            ds4_set_error("%s: %s: %d ids, a %s has %d", origin, where, ev->n_ids, type, want);
            return -1;
        }
        ev->ids[1] = -1;
        for (int j = 0; j < ev->n_ids; j++) {
            const cJSON *v = cJSON_GetArrayItem(ids, j);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= n_obj || v->valuedouble != floor(v->valuedouble)) {
                ds4_set_error("%s: %s: ids[%d] is not an object id", origin, where, j);
                return -1;
            }
            ev->ids[j] = (int)v->valuedouble;
        }
    }
    return 0;
}

int ds4_world_clip_from_json(ds4_world_clip *c, const char *json, const char *origin) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        ds4_set_error("%s: invalid JSON near offset %ld", origin, at && at >= json ? (long)(at - json) : -1L);
        return -1;
    }
    int rc = parse_clip(c, root, origin);
    cJSON_Delete(root);
    if (rc != 0) ds4_world_clip_free(c);
    return rc;
}

int ds4_world_annotations_foreach(const char *path,
                                  int (*fn)(void *user, const ds4_world_clip *c, int index),
                                  void *user) {
    FILE *f = fopen(path, "rb");
    if (!f) { ds4_set_error("%s: cannot open", path); return -1; }
    char *line = NULL, origin[1100];
    size_t cap = 0;
    ssize_t len;
    int index = 0, lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        snprintf(origin, sizeof origin, "%s:%d", path, lineno);
        ds4_world_clip c;
        if (ds4_world_clip_from_json(&c, line, origin) != 0) { rc = -1; break; }
        rc = fn(user, &c, index++);
        ds4_world_clip_free(&c);
        if (rc != 0) break;
    }
    if (rc == 0 && ferror(f)) { ds4_set_error("%s: read error", path); rc = -1; }
    free(line);
    fclose(f);
    return rc;
}
