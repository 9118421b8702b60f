/* eval.c — the physics evaluation of SPEC §3. Test clips (dataset files, or
 * simulated from the split's seeds) are tracked by colour; the model
 * continues each clip after `given` frames and is compared with the
 * simulator's frames over the horizon, next to three baselines run in the
 * same pass: the true clip through the video tokenizer (upper bound), the last
 * given frame held still, and constant-velocity extrapolation. Captions of
 * the same clips drive text-to-video, checked for colours, count and start
 * region. FVD-proxy on tokenizer-encoder features for every method. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

const char *ds4_wm_method_name(int method) {
    static const char *const N[] = {"model", "tokenizer", "still", "constvel"};
    return method >= 0 && method < DS4_WM_M_COUNT ? N[method] : "?";
}

void ds4_wm_eval_opts_defaults(ds4_wm_eval_opts *o) {
    memset(o, 0, sizeof *o);
    o->split = "test";
    o->n_clips = 32;
    o->given = 12;
    o->horizon = 48;
    o->t2v_clips = 32;
    o->t2v_lat = 6;
    ds4_wm_gen_params_default(&o->gen);
    o->t2v_temp = DS4_WM_T2V_TEMP_DEFAULT;
    o->sample_seed = 1234;
}

/* ---- test clips ------------------------------------------------------------------ */

typedef struct eclip {
    uint8_t *rgb;                 /* [F][H][W][3] */
    int      n_balls;
    int      colors[DS4_WORLD_MAX_BALLS];
    double   g, ppm, wall_m, width_m, height_m;
    double  *bx, *by;             /* [F][n_balls] annotated centres (m) */
    int      sim_bounces[DS4_WORLD_MAX_BALLS];  /* simulator bounce events in the horizon (but its last 2 frames) */
    char     caption[512];
} eclip;

typedef struct load_ctx {
    eclip *c;
    int n, F, f0, f1;
} load_ctx;

static int take_truth(eclip *e, const ds4_world_clip *c, int F, int f0, int f1) {
    e->n_balls = c->scene.n_balls;
    e->g = c->scene.g;
    e->ppm = c->px_per_m;
    e->wall_m = c->scene.wall_m;
    e->width_m = c->scene.width_m;
    e->height_m = c->scene.height_m;
    snprintf(e->caption, sizeof e->caption, "%s", c->caption);
    if (c->n_frames < F) {
        ds4_set_error("test clip seed %llu: %d frames, need %d", (unsigned long long)c->scene.seed, c->n_frames, F);
        return -1;
    }
    e->bx = ds4_malloc(sizeof(double) * (size_t)F * (e->n_balls ? e->n_balls : 1));
    e->by = ds4_malloc(sizeof(double) * (size_t)F * (e->n_balls ? e->n_balls : 1));
    if (!e->bx || !e->by) return -1;
    for (int i = 0; i < e->n_balls; i++) {
        e->colors[i] = c->scene.balls[i].color;
        for (int f = 0; f < F; f++) {
            const ds4_world_state *s = &c->states[(size_t)f * c->n_objects + i];
            e->bx[(size_t)f * e->n_balls + i] = s->x;
            e->by[(size_t)f * e->n_balls + i] = s->y;
        }
    }
    for (int k = 0; k < c->n_events; k++) {
        const ds4_world_event *ev = &c->events[k];
        if (ev->type == DS4_WEV_BOUNCE && ev->frame >= f0 && ev->frame < f1 - 2 && ev->ids[0] < e->n_balls)
            e->sim_bounces[ev->ids[0]]++;
    }
    return 0;
}

static int on_annotation(void *user, const ds4_world_clip *c, int index) {
    load_ctx *x = user;
    if (index >= x->n) return 1;
    return take_truth(&x->c[index], c, x->F, x->f0, x->f1) ? -1 : 0;
}

static void free_clips(eclip *c, int n) {
    for (int i = 0; c && i < n; i++) { free(c[i].rgb); free(c[i].bx); free(c[i].by); }
    free(c);
}

static eclip *load_clips(const ds4_wm *w, const ds4_wm_eval_opts *o, int F, int *n_out) {
    const int W = w->L.width, H = w->L.height;
    const size_t bytes = (size_t)F * H * W * 3;
    int n = o->n_clips;
    eclip *c = ds4_calloc((size_t)n, sizeof *c);
    if (!c) return NULL;
    if (o->data_dir) {
        char **paths = NULL;
        int ns = 0, k = 0;
        if (ds4_world_dataset_shards(o->data_dir, o->split, &paths, &ns) != 0) goto fail;
        for (int s = 0; s < ns && k < n; s++) {
            ds4_world_shard *sh = ds4_world_shard_open(paths[s], 0);
            if (!sh) { k = -1; break; }
            if (sh->width != W || sh->height != H || sh->n_frames < F) {
                ds4_set_error("%s: %dx%d clips of %d frames; the evaluation needs %dx%d and %d frames", paths[s],
                              sh->width, sh->height, sh->n_frames, W, H, F);
                ds4_world_shard_close(sh);
                k = -1;
                break;
            }
            for (int i = 0; i < sh->n_clips && k < n; i++, k++) {
                if (!(c[k].rgb = ds4_malloc(bytes))) { k = -1; break; }
                memcpy(c[k].rgb, ds4_world_shard_clip(sh, i), bytes);
            }
            ds4_world_shard_close(sh);
            if (k < 0) break;
        }
        for (int s = 0; s < ns; s++) free(paths[s]);
        free(paths);
        if (k < 0) goto fail;
        if (k == 0) { ds4_set_error("%s: no %s clips", o->data_dir, o->split); goto fail; }
        n = k;
        char jp[4096];
        snprintf(jp, sizeof jp, "%s/%s.jsonl", o->data_dir, o->split);
        load_ctx x = {c, n, F, o->given, o->given + o->horizon};
        if (ds4_world_annotations_foreach(jp, on_annotation, &x) < 0) goto fail;
        for (int i = 0; i < n; i++)
            if (!c[i].bx) { ds4_set_error("%s: fewer annotation lines than clips", jp); goto fail; }
    } else {
        uint64_t first;
        if (ds4_world_split_seed(o->split, o->seed, &first) != 0) goto fail;
        int rc = 0;
        #pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) {
            ds4_world_clip wc;
            if (rc) continue;
            if (ds4_world_clip_make(&wc, first + (uint64_t)i, W, H, w->L.fps, F, 1) != 0) { rc = -1; continue; }
            c[i].rgb = ds4_malloc(bytes);
            if (!c[i].rgb || take_truth(&c[i], &wc, F, o->given, o->given + o->horizon) != 0) rc = -1;
            else memcpy(c[i].rgb, wc.rgb, bytes);
            ds4_world_clip_free(&wc);
        }
        if (rc) goto fail;
    }
    *n_out = n;
    return c;
fail:
    free_clips(c, n);
    return NULL;
}

/* ---- baselines ------------------------------------------------------------------- */

static int near_ball_colour(const uint8_t *p) {
    for (int k = DS4_WC_RED; k <= DS4_WC_YELLOW; k++) {
        const uint8_t *q = ds4_world_palette[k];
        int d = (p[0] - q[0]) * (p[0] - q[0]) + (p[1] - q[1]) * (p[1] - q[1]) + (p[2] - q[2]) * (p[2] - q[2]);
        if (d <= DS4_WM_TOL * DS4_WM_TOL) return 1;
    }
    return 0;
}

/* Frames [given, F): every ball found in the last two given frames moves on at
 * its last velocity (no gravity, held inside the walls), drawn over the last
 * given frame with its balls painted out. */
static void constvel(const eclip *e, const ds4_wm_track *ref, int given, int F, int W, int H, uint8_t *out) {
    const size_t fb = (size_t)W * H * 3;
    memcpy(out, e->rgb, (size_t)given * fb);
    uint8_t *base = out + (size_t)given * fb;
    memcpy(base, e->rgb + (size_t)(given - 1) * fb, fb);
    for (size_t i = 0; i < (size_t)W * H; i++)
        if (near_ball_colour(base + 3 * i)) memcpy(base + 3 * i, ds4_world_palette[DS4_WC_BACKGROUND], 3);
    for (int f = given + 1; f < F; f++) memcpy(out + (size_t)f * fb, base, fb);
    const int a = given - 2, b = given - 1;
    for (int k = 0; k < DS4_WM_COLORS; k++) {
        const size_t ia = (size_t)a * DS4_WM_COLORS + k, ib = (size_t)b * DS4_WM_COLORS + k;
        if (a < 0 || !ref->found[ia] || !ref->found[ib]) continue;
        const double vx = ref->x[ib] - ref->x[ia], vy = ref->y[ib] - ref->y[ia], r = ref->r[ib];
        for (int f = given; f < F; f++) {
            double x = ref->x[ib] + vx * (f - b), y = ref->y[ib] + vy * (f - b);
            x = fmin(fmax(x, e->wall_m + r), e->width_m - e->wall_m - r);
            y = fmin(fmax(y, e->wall_m + r), e->height_m - r);
            ds4_world_draw_disc(out + (size_t)f * fb, W, H, e->ppm, x, y, r, ds4_world_palette[DS4_WC_RED + k]);
        }
    }
}

/* ---- aggregation ------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, long n) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct agg {
    double *pos; int *dt; long n_pos, cap_pos;
    double *vel; long n_vel, cap_vel;
    double *grel; int n_grel;
    long missed, bounce_ref, bounce_pred, bounce_matched;
    double bounce_dt;
    int clips, bounce_ok, g_clips, g_fitted, g_ok;
    long count_frames, count_equal;
    double count_abs;
} agg;

static int grow(void **p, long *cap, long need, size_t el) {
    if (need <= *cap) return 0;
    long nc = need * 2 + 64;
    void *q = realloc(*p, (size_t)nc * el);
    if (!q) { ds4_set_error("out of memory in evaluation"); return -1; }
    *p = q;
    *cap = nc;
    return 0;
}

static int agg_add(agg *a, const ds4_wm_clip_metrics *m, double g_true) {
    if (grow((void **)&a->pos, &a->cap_pos, a->n_pos + m->n_pairs, sizeof(double))) return -1;
    int *ndt = realloc(a->dt, sizeof(int) * (size_t)a->cap_pos);
    if (!ndt) { ds4_set_error("out of memory in evaluation"); return -1; }
    a->dt = ndt;
    if (m->n_pairs > 0) {
        memcpy(a->pos + a->n_pos, m->pos_err_px, sizeof(double) * (size_t)m->n_pairs);
        memcpy(a->dt + a->n_pos, m->pos_dt, sizeof(int) * (size_t)m->n_pairs);
    }
    a->n_pos += m->n_pairs;
    if (grow((void **)&a->vel, &a->cap_vel, a->n_vel + m->n_vel, sizeof(double))) return -1;
    if (m->n_vel > 0) memcpy(a->vel + a->n_vel, m->vel_err, sizeof(double) * (size_t)m->n_vel);
    a->n_vel += m->n_vel;
    a->missed += m->n_missed;
    a->clips++;
    a->bounce_ok += m->bounce_correct;
    a->bounce_ref += m->bounce_ref;
    a->bounce_pred += m->bounce_pred;
    a->bounce_matched += m->bounce_matched;
    a->bounce_dt += m->bounce_dt_sum;
    if (!isnan(m->g_ref)) {                /* no fit from the method: an infinite error */
        a->g_clips++;
        {
            double rel = INFINITY;
            if (!isnan(m->g_pred)) { a->g_fitted++; rel = fabs(m->g_pred - g_true) / g_true; }
            a->g_ok += rel <= 0.15;
            double *ng = realloc(a->grel, sizeof(double) * (size_t)(a->n_grel + 1));
            if (!ng) { ds4_set_error("out of memory in evaluation"); return -1; }
            a->grel = ng;
            a->grel[a->n_grel++] = rel;
        }
    }
    a->count_frames += m->count_frames;
    a->count_equal += m->count_equal;
    a->count_abs += m->count_abs_sum;
    return 0;
}

static void agg_finish(agg *a, int horizon, int fps, int width, ds4_wm_method_result *r) {
    memset(r, 0, sizeof *r);
    r->n_clips = a->clips;
    r->n_pairs = a->n_pos;
    r->n_missed = a->missed;
    r->miss_rate = a->n_pos ? (double)a->missed / a->n_pos : NAN;
    double s = 0;
    long nf = 0;
    for (long i = 0; i < a->n_pos; i++) if (isfinite(a->pos[i])) { s += a->pos[i]; nf++; }
    r->pos_mean_px = nf ? s / nf : NAN;
    const double at_s[3] = {0.5, 1.0, 2.0};
    double *tmp = malloc(sizeof(double) * (size_t)(a->n_pos + 1));
    for (int j = 0; tmp && j < 3; j++) {
        int dt = (int)lround(at_s[j] * fps) - 1;
        if (dt > horizon - 1) dt = horizon - 1;
        long n = 0;
        for (long i = 0; i < a->n_pos; i++) if (a->dt[i] == dt) tmp[n++] = a->pos[i];
        r->pos_at_px[j] = median(tmp, n);
    }
    free(tmp);
    r->pos_median_px = median(a->pos, a->n_pos);
    r->pos_median_pct = 100.0 * r->pos_median_px / width;
    r->vel_median = median(a->vel, a->n_vel);
    r->bounce_acc = a->clips ? (double)a->bounce_ok / a->clips : NAN;
    r->bounce_dt_mean = a->bounce_matched ? a->bounce_dt / a->bounce_matched : NAN;
    r->bounce_ref = a->bounce_ref;
    r->bounce_pred = a->bounce_pred;
    r->g_clips = a->g_clips;
    r->g_fitted = a->g_fitted;
    r->g_within15 = a->g_clips ? (double)a->g_ok / a->g_clips : NAN;
    r->g_rel_median = median(a->grel, a->n_grel);
    r->count_acc = a->count_frames ? (double)a->count_equal / a->count_frames : NAN;
    r->count_abs_mean = a->count_frames ? a->count_abs / a->count_frames : NAN;
    free(a->pos); free(a->dt); free(a->vel); free(a->grel);
    memset(a, 0, sizeof *a);
}

/* ---- the evaluation ------------------------------------------------------------------ */

int ds4_wm_eval(const ds4_wm *w, const ds4_wm_eval_opts *o, ds4_wm_eval_result *r) {
    memset(r, 0, sizeof *r);
    const ds4_wm_layout *L = &w->L;
    const double t_start = ds4_time_s();
    if (o->given < 2 * L->tubelet || o->given % L->tubelet || o->horizon <= 0 || o->horizon % L->tubelet) {
        ds4_set_error("eval: given (%d) must be a multiple of %d and at least %d; horizon (%d) a positive "
                      "multiple of %d", o->given, L->tubelet, 2 * L->tubelet, o->horizon, L->tubelet);
        return -1;
    }
    const int F = o->given + o->horizon, W = L->width, H = L->height, cpf = L->cpf;
    const int g_lat = o->given / L->tubelet, h_lat = o->horizon / L->tubelet, f_lat = g_lat + h_lat;
    const size_t fb = (size_t)W * H * 3;
    const int C = w->vt->cfg.hidden;
    int n = 0, rc = -1;
    eclip *clips = load_clips(w, o, F, &n);
    if (!clips) return -1;
    r->n_clips = n; r->given = o->given; r->horizon = o->horizon; r->width = W; r->height = H; r->fps = L->fps;
    const int n_t2v = DS4_MIN(o->t2v_clips, n);
    ds4_wm_track *ref = ds4_calloc((size_t)n, sizeof *ref);
    int32_t *codes = ds4_malloc(sizeof(int32_t) * (size_t)n * f_lat * cpf);
    int32_t *t2v_codes = ds4_malloc(sizeof(int32_t) * (size_t)(n_t2v ? n_t2v : 1) * (o->t2v_lat ? o->t2v_lat : 1) * cpf);
    uint8_t *pred = ds4_malloc((size_t)f_lat * L->tubelet * fb);
    ds4_wm_request *req = ds4_calloc((size_t)(n > n_t2v ? n : n_t2v) + 1, sizeof *req);
    float *feat_ref = ds4_malloc(sizeof(float) * (size_t)n * h_lat * C);
    float *feat = ds4_malloc(sizeof(float) * (size_t)n * (h_lat > o->t2v_lat ? h_lat : o->t2v_lat) * C);
    agg A[DS4_WM_M_COUNT];
    memset(A, 0, sizeof A);
    if (!ref || !codes || !t2v_codes || !pred || !req || !feat_ref || !feat) goto out;

    /* the reference: the simulator's frames, tracked; instrument checks */
    double ipos = 0;
    long ipos_n = 0;
    double *ig = ds4_malloc(sizeof(double) * (size_t)n + 8);
    int n_ig = 0, bagree = 0;
    if (!ig) goto out;
    for (int i = 0; i < n; i++) {
        const eclip *e = &clips[i];
        if (ds4_wm_track_clip(e->rgb, F, H, W, e->ppm, L->fps, &ref[i]) != 0) { free(ig); goto out; }
        if (ds4_wm_clip_features(w->vt, e->rgb + (size_t)o->given * fb, o->horizon, H, W,
                                 feat_ref + (size_t)i * h_lat * C) != 0) { free(ig); goto out; }
        int agree = 1;
        for (int b = 0; b < e->n_balls; b++) {
            const int k = e->colors[b] - DS4_WC_RED;
            for (int f = 0; f < F; f++) {
                const size_t j = (size_t)f * DS4_WM_COLORS + k;
                if (!ref[i].found[j]) continue;
                ipos += hypot(ref[i].x[j] - e->bx[(size_t)f * e->n_balls + b],
                              ref[i].y[j] - e->by[(size_t)f * e->n_balls + b]) * e->ppm;
                ipos_n++;
            }
            if (ds4_wm_bounces(&ref[i], k, o->given, F, NULL, 0) != e->sim_bounces[b]) agree = 0;
        }
        bagree += agree;
        double g;
        if (ds4_wm_fit_g(&ref[i], -1, o->given, F, e->wall_m, &g, NULL) == 0) ig[n_ig++] = fabs(g - e->g) / e->g;
    }
    r->ref_pos_err_px = ipos_n ? ipos / ipos_n : NAN;
    r->ref_bounce_agree = (double)bagree / n;
    r->ref_g_rel_median = median(ig, n_ig);
    free(ig);

    /* the model: continue every clip after `given` frames */
    for (int i = 0; i < n; i++) {
        int32_t *c = codes + (size_t)i * f_lat * cpf;
        if (ds4_wm_encode(w, clips[i].rgb, o->given, c) != 0) goto out;
        req[i] = (ds4_wm_request){.given = c, .n_given = g_lat, .n_new = h_lat,
                                  .seed = o->sample_seed + (uint64_t)i, .out = c};
    }
    if (o->verbose) fprintf(stderr, "eval: continuing %d clips (%d latent frames each)...\n", n, h_lat);
    ds4_wm_gen_stats gs;
    if (ds4_wm_generate(w, req, n, &o->gen, &gs) != 0) goto out;
    r->gen_seconds = gs.seconds;
    r->gen_tokens = gs.prefill_tokens + gs.decode_tokens;
    r->gen_tok_s = gs.seconds > 0 ? (gs.sampled + gs.forced) / gs.seconds : 0;

    for (int m = 0; m < DS4_WM_M_COUNT; m++) {
        if (o->verbose) fprintf(stderr, "eval: measuring %s\n", ds4_wm_method_name(m));
        for (int i = 0; i < n; i++) {
            const eclip *e = &clips[i];
            if (m == DS4_WM_M_MODEL) {
                if (ds4_wm_decode(w, codes + (size_t)i * f_lat * cpf, f_lat, pred) != 0) goto out;
            } else if (m == DS4_WM_M_TOKENIZER) {
                int32_t *tc = ds4_malloc(sizeof(int32_t) * (size_t)f_lat * cpf);
                if (!tc) goto out;
                int e1 = ds4_wm_encode(w, e->rgb, F, tc) || ds4_wm_decode(w, tc, f_lat, pred);
                free(tc);
                if (e1) goto out;
            } else if (m == DS4_WM_M_STILL) {
                memcpy(pred, e->rgb, (size_t)o->given * fb);
                for (int f = o->given; f < F; f++) memcpy(pred + (size_t)f * fb, e->rgb + (size_t)(o->given - 1) * fb, fb);
            } else {
                constvel(e, &ref[i], o->given, F, W, H, pred);
            }
            ds4_wm_track pt;
            ds4_wm_clip_metrics cm;
            if (ds4_wm_track_clip(pred, F, H, W, e->ppm, L->fps, &pt) != 0) goto out;
            int e2 = ds4_wm_compare(&pt, &ref[i], o->given, F, e->wall_m, &cm);
            ds4_wm_track_free(&pt);
            if (e2 || agg_add(&A[m], &cm, e->g)) { ds4_wm_clip_metrics_free(&cm); goto out; }
            ds4_wm_clip_metrics_free(&cm);
            if (ds4_wm_clip_features(w->vt, pred + (size_t)o->given * fb, o->horizon, H, W,
                                     feat + (size_t)i * h_lat * C) != 0) goto out;
        }
        agg_finish(&A[m], o->horizon, L->fps, W, &r->m[m]);
        r->m[m].fvd_proxy = ds4_wm_frechet(feat_ref, n * h_lat, feat, n * h_lat, C);
    }

    /* text-to-video: the captions of the first n_t2v clips */
    r->t2v_n = n_t2v;
    if (n_t2v > 0 && o->t2v_lat > 0) {
        const int tl = o->t2v_lat, tf = tl * L->tubelet;
        for (int i = 0; i < n_t2v; i++)
            req[i] = (ds4_wm_request){.caption = clips[i].caption, .n_new = tl,
                                      .seed = o->sample_seed + 7919u * (uint64_t)(i + 1),
                                      .out = t2v_codes + (size_t)i * tl * cpf};
        if (o->verbose) fprintf(stderr, "eval: text-to-video for %d captions (%d latent frames each)...\n", n_t2v, tl);
        ds4_wm_gen_stats ts;
        ds4_wm_gen_params tg = o->gen;
        tg.sampler.temperature = o->t2v_temp;
        if (ds4_wm_generate(w, req, n_t2v, &tg, &ts) != 0) goto out;
        r->gen_seconds += ts.seconds;
        r->gen_tokens += ts.prefill_tokens + ts.decode_tokens;
        int all = 0, col = 0, cnt = 0, reg = 0, ref_all = 0;
        float *fr = ds4_malloc(sizeof(float) * (size_t)n_t2v * tl * C);
        if (!fr) goto out;
        for (int i = 0; i < n_t2v; i++) {
            const eclip *e = &clips[i];
            double x0[DS4_WORLD_MAX_BALLS], y0[DS4_WORLD_MAX_BALLS];
            for (int b = 0; b < e->n_balls; b++) { x0[b] = e->bx[b]; y0[b] = e->by[b]; }
            if (ds4_wm_decode(w, t2v_codes + (size_t)i * tl * cpf, tl, pred) != 0) { free(fr); goto out; }
            ds4_wm_track gt;
            ds4_wm_caption_check cc, rc2;
            if (ds4_wm_track_clip(pred, tf, H, W, e->ppm, L->fps, &gt) != 0) { free(fr); goto out; }
            int e3 = ds4_wm_caption_check_clip(&gt, L->tubelet, e->colors, x0, y0, e->n_balls, e->width_m,
                                               e->height_m, &cc);
            ds4_wm_track_free(&gt);
            int e4 = ds4_wm_caption_check_clip(&ref[i], L->tubelet, e->colors, x0, y0, e->n_balls, e->width_m,
                                               e->height_m, &rc2);
            if (e3 || e4) { free(fr); goto out; }
            all += cc.all_ok; col += cc.colors_ok; cnt += cc.count_ok; reg += cc.region_ok; ref_all += rc2.all_ok;
            if (ds4_wm_clip_features(w->vt, pred, tf, H, W, feat + (size_t)i * tl * C) != 0 ||
                ds4_wm_clip_features(w->vt, e->rgb, tf, H, W, fr + (size_t)i * tl * C) != 0) { free(fr); goto out; }
        }
        r->t2v_all = (double)all / n_t2v;
        r->t2v_colors = (double)col / n_t2v;
        r->t2v_count = (double)cnt / n_t2v;
        r->t2v_region = (double)reg / n_t2v;
        r->t2v_ref_all = (double)ref_all / n_t2v;
        r->t2v_fvd_proxy = ds4_wm_frechet(fr, n_t2v * tl, feat, n_t2v * tl, C);
        free(fr);
    }
    rc = 0;
out:
    for (int m = 0; m < DS4_WM_M_COUNT; m++) { free(A[m].pos); free(A[m].dt); free(A[m].vel); free(A[m].grel); }
    for (int i = 0; ref && i < n; i++) ds4_wm_track_free(&ref[i]);
    free(ref); free(codes); free(t2v_codes); free(pred); free(req); free(feat_ref); free(feat);
    free_clips(clips, n);
    r->eval_seconds = ds4_time_s() - t_start;
    return rc;
}

static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, round(v * 1e5) / 1e5);
    else cJSON_AddNullToObject(o, k);
}

char *ds4_wm_eval_json(const ds4_wm_eval_result *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "clips", r->n_clips);
    cJSON_AddNumberToObject(j, "given_frames", r->given);
    cJSON_AddNumberToObject(j, "horizon_frames", r->horizon);
    cJSON_AddNumberToObject(j, "fps", r->fps);
    cJSON_AddNumberToObject(j, "width_px", r->width);
    cJSON *ms = cJSON_AddObjectToObject(j, "continuation");
    for (int m = 0; m < DS4_WM_M_COUNT; m++) {
        const ds4_wm_method_result *x = &r->m[m];
        cJSON *o = cJSON_AddObjectToObject(ms, ds4_wm_method_name(m));
        add_num(o, "pos_median_px", x->pos_median_px);
        add_num(o, "pos_median_pct_width", x->pos_median_pct);
        add_num(o, "pos_mean_found_px", x->pos_mean_px);
        add_num(o, "pos_median_px_0.5s", x->pos_at_px[0]);
        add_num(o, "pos_median_px_1s", x->pos_at_px[1]);
        add_num(o, "pos_median_px_2s", x->pos_at_px[2]);
        add_num(o, "miss_rate", x->miss_rate);
        add_num(o, "vel_median_m_s", x->vel_median);
        add_num(o, "bounce_count_acc", x->bounce_acc);
        add_num(o, "bounce_frame_err", x->bounce_dt_mean);
        cJSON_AddNumberToObject(o, "bounces_ref", (double)x->bounce_ref);
        cJSON_AddNumberToObject(o, "bounces_pred", (double)x->bounce_pred);
        add_num(o, "g_within_15pct", x->g_within15);
        add_num(o, "g_rel_err_median", x->g_rel_median);
        cJSON_AddNumberToObject(o, "g_clips", x->g_clips);
        cJSON_AddNumberToObject(o, "g_fitted", x->g_fitted);
        add_num(o, "count_acc", x->count_acc);
        add_num(o, "count_abs_err", x->count_abs_mean);
        add_num(o, "fvd_proxy", x->fvd_proxy);
    }
    cJSON *ins = cJSON_AddObjectToObject(j, "instrument");
    add_num(ins, "centre_err_px", r->ref_pos_err_px);
    add_num(ins, "bounce_agree_with_simulator", r->ref_bounce_agree);
    add_num(ins, "g_rel_err_median", r->ref_g_rel_median);
    cJSON *t = cJSON_AddObjectToObject(j, "text_to_video");
    cJSON_AddNumberToObject(t, "clips", r->t2v_n);
    add_num(t, "caption_match", r->t2v_all);
    add_num(t, "colors", r->t2v_colors);
    add_num(t, "count", r->t2v_count);
    add_num(t, "start_region", r->t2v_region);
    add_num(t, "caption_match_true_clips", r->t2v_ref_all);
    add_num(t, "fvd_proxy", r->t2v_fvd_proxy);
    cJSON *s = cJSON_AddObjectToObject(j, "speed");
    add_num(s, "gen_seconds", r->gen_seconds);
    add_num(s, "gen_tokens_per_s", r->gen_tok_s);
    add_num(s, "eval_seconds", r->eval_seconds);
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt) ds4_set_error("out of memory writing the evaluation JSON");
    return txt;
}
