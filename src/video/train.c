/* train.c — training the video tokenizer: random windows of clips from
 * `ds4 world gen` shards (optionally mirrored left-right), reconstruction MSE,
 * AdamW over the flat parameter buffer with warmup + cosine learning rate and
 * global-norm clipping, periodic validation (PSNR, centroid error) and saves. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

void ds4_vtok_train_opts_defaults(ds4_vtok_train_opts *o) {
    memset(o, 0, sizeof *o);
    ds4_vtok_config_defaults(&o->cfg);
    o->steps = 600;
    o->batch = 4;
    o->window = 6;
    o->lr = 2e-3f;
    o->min_lr_frac = 0.05f;
    o->warmup = 100;
    o->weight_decay = 0.01f;
    o->beta1 = 0.9f;
    o->beta2 = 0.99f;
    o->eps = 1e-8f;
    o->grad_clip = 1.0f;
    o->flip = 1;
    o->z_penalty = 1.0f;
    o->seed = 1;
    o->eval_every = 250;
    o->eval_clips = 16;
}

/* ---- AdamW ------------------------------------------------------------------- */

int ds4_vtok_adamw_init(ds4_vtok_adamw *o, const ds4_vtok *m) {
    o->t = 0;
    o->m = ds4_alloc_aligned(m->n_params * sizeof(float));
    o->v = ds4_alloc_aligned(m->n_params * sizeof(float));
    if (!o->m || !o->v) { ds4_vtok_adamw_free(o); return -1; }
    return 0;
}

void ds4_vtok_adamw_free(ds4_vtok_adamw *o) {
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

void ds4_vtok_adamw_step(ds4_vtok_adamw *o, ds4_vtok *m, const float *grads, float lr) {
    o->t++;
    const float b1 = o->beta1, b2 = o->beta2;
    const float c1 = 1.0f / (1.0f - powf(b1, (float)o->t)), c2 = 1.0f / (1.0f - powf(b2, (float)o->t));
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const ds4_vtok_tensor *t = &m->tensors[ti];
        const float wd = t->decay ? o->weight_decay : 0.0f;
        float *p = m->params + t->off, *mm = o->m + t->off, *vv = o->v + t->off;
        const float *g = grads + t->off;
        const size_t n = t->numel;
#pragma omp parallel for schedule(static) if (n >= (1 << 18))
        for (size_t i = 0; i < n; i++) {
            mm[i] = b1 * mm[i] + (1.0f - b1) * g[i];
            vv[i] = b2 * vv[i] + (1.0f - b2) * g[i] * g[i];
            float upd = (mm[i] * c1) / (sqrtf(vv[i] * c2) + o->eps);
            p[i] -= lr * (upd + wd * p[i]);
        }
    }
}

static float lr_at(const ds4_vtok_train_opts *o, long step) {
    if (o->warmup > 0 && step < o->warmup) return o->lr * (float)(step + 1) / (float)o->warmup;
    long span = o->steps - o->warmup;
    double frac = span > 0 ? (double)(step - o->warmup) / (double)span : 1.0;
    if (frac > 1) frac = 1;
    double cosv = 0.5 * (1.0 + cos(M_PI * frac));
    return (float)(o->lr * (o->min_lr_frac + (1.0 - o->min_lr_frac) * cosv));
}

/* ---- data --------------------------------------------------------------------- */

typedef struct {
    ds4_world_shard **shards;
    int n_shards;
    int *clip_shard, *clip_index;   /* [n_clips] */
    int n_clips, n_frames, width, height, fps;
} train_data;

static void data_close(train_data *d) {
    for (int i = 0; i < d->n_shards; i++) ds4_world_shard_close(d->shards[i]);
    free(d->shards);
    free(d->clip_shard);
    free(d->clip_index);
    memset(d, 0, sizeof *d);
}

static int data_open(train_data *d, const char *dir, const char *split) {
    memset(d, 0, sizeof *d);
    char **paths = NULL;
    int n = 0;
    if (ds4_world_dataset_shards(dir, split, &paths, &n) != 0) return -1;
    int rc = -1;
    d->shards = ds4_calloc((size_t)n, sizeof *d->shards);
    if (!d->shards) goto done;
    for (int i = 0; i < n; i++) {
        ds4_world_shard *s = ds4_world_shard_open(paths[i], 0);
        if (!s) goto done;
        d->shards[d->n_shards++] = s;
        if (i == 0) {
            d->n_frames = s->n_frames; d->width = s->width; d->height = s->height; d->fps = s->fps;
        } else if (s->n_frames != d->n_frames || s->width != d->width || s->height != d->height) {
            ds4_set_error("%s: %d frames of %dx%d, but %s has %d of %dx%d", paths[i], s->n_frames,
                          s->width, s->height, paths[0], d->n_frames, d->width, d->height);
            goto done;
        }
        d->n_clips += s->n_clips;
    }
    d->clip_shard = ds4_malloc((size_t)d->n_clips * sizeof(int));
    d->clip_index = ds4_malloc((size_t)d->n_clips * sizeof(int));
    if (!d->clip_shard || !d->clip_index) goto done;
    for (int i = 0, k = 0; i < d->n_shards; i++)
        for (int j = 0; j < d->shards[i]->n_clips; j++, k++) {
            d->clip_shard[k] = i;
            d->clip_index[k] = j;
        }
    rc = 0;
done:
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    if (rc != 0) data_close(d);
    return rc;
}

/* ---- the loop ------------------------------------------------------------------ */

static int log_line(FILE *f, const ds4_vtok_progress *p) {
    if (!f) return 0;
    fprintf(f, "{\"step\":%ld,\"loss\":%.6g,\"train_psnr\":%.3f,\"lr\":%.4g,\"grad_norm\":%.4g",
            p->step, p->loss, p->train_psnr, p->lr, p->grad_norm);
    if (!isnan(p->val_psnr)) fprintf(f, ",\"val_psnr\":%.3f", p->val_psnr);
    if (!isnan(p->val_centroid)) fprintf(f, ",\"val_centroid_px\":%.4f", p->val_centroid);
    fprintf(f, ",\"elapsed_s\":%.2f}\n", p->elapsed_s);
    return fflush(f);
}

int ds4_vtok_train(const ds4_vtok_train_opts *o) {
    if (!o->data_dir || !o->out_dir) {
        ds4_set_error("video train: data and output directories are required");
        return -1;
    }
    if (o->steps < 1 || o->batch < 1 || o->window < 0) {
        ds4_set_error("video train: steps (%ld) and batch (%d) must be >= 1, window (%d) >= 0",
                      o->steps, o->batch, o->window);
        return -1;
    }
    train_data d;
    if (data_open(&d, o->data_dir, "train") != 0) return -1;
    ds4_vtok_config cfg = o->cfg;
    cfg.width = d.width;
    cfg.height = d.height;
    cfg.fps = d.fps;
    int has_val = 0;
    {
        char **vp = NULL;
        int nv = 0;
        if (ds4_world_dataset_shards(o->data_dir, "val", &vp, &nv) == 0) has_val = 1;
        for (int i = 0; i < nv; i++) free(vp[i]);
        free(vp);
    }
    ds4_vtok *m = NULL;
    ds4_vtok_ws *ws = NULL;
    float *x = NULL, *grads = NULL;
    ds4_vtok_adamw opt = {0};
    FILE *logf = NULL;
    int rc = -1;
    const int tub = cfg.tubelet, Tl_clip = d.n_frames / tub;
    if (cfg.width % cfg.patch || cfg.height % cfg.patch || Tl_clip < 1) {
        ds4_set_error("%s: clips of %d frames of %dx%d do not fit patch %d / tubelet %d", o->data_dir,
                      d.n_frames, d.width, d.height, cfg.patch, tub);
        goto done;
    }
    const int win = (o->window == 0 || o->window > Tl_clip) ? Tl_clip : o->window;
    const int Gh = cfg.height / cfg.patch, Gw = cfg.width / cfg.patch;
    const size_t per = (size_t)Gh * Gw, tok = (size_t)o->batch * win * per;
    if (!(m = ds4_vtok_new(&cfg, o->seed))) goto done;
    if (!(ws = ds4_vtok_ws_new(m, tok))) goto done;
    ds4_vtok_ws_options(ws, o->seed + 1, o->z_penalty);
    x = ds4_alloc_aligned(tok * m->P * sizeof(float));
    grads = ds4_alloc_aligned(m->n_params * sizeof(float));
    if (!x || !grads || ds4_vtok_adamw_init(&opt, m) != 0) goto done;
    opt.beta1 = o->beta1; opt.beta2 = o->beta2; opt.eps = o->eps; opt.weight_decay = o->weight_decay;
    if (ds4_mkdir_p(o->out_dir) != 0) goto done;
    {
        char lp[4096];
        snprintf(lp, sizeof lp, "%s/train_log.jsonl", o->out_dir);
        if (!(logf = fopen(lp, "w"))) {
            ds4_set_error("%s: cannot write the training log", lp);
            goto done;
        }
    }
    ds4_rng rng;
    ds4_rng_seed(&rng, o->seed ^ 0x9e3779b97f4a7c15ULL);
    const size_t frame = (size_t)d.width * d.height * 3;
    double t_start = ds4_time_s();
    for (long step = 0; step < o->steps; step++) {
        for (int b = 0; b < o->batch; b++) {
            int k = (int)(ds4_rng_u64(&rng) % (uint64_t)d.n_clips);
            int t0 = (int)(ds4_rng_u64(&rng) % (uint64_t)(Tl_clip - win + 1));
            int flip = o->flip ? (int)(ds4_rng_u64(&rng) & 1) : 0;
            const uint8_t *clip = ds4_world_shard_clip(d.shards[d.clip_shard[k]], d.clip_index[k]);
            if (!clip) goto done;
            ds4_vtok_patchify(clip + (size_t)t0 * tub * frame, win * tub, d.height, d.width, tub,
                              cfg.patch, flip, x + (size_t)b * win * per * m->P);
        }
        memset(grads, 0, m->n_params * sizeof(float));
        double mse = 0;
        int mode = step < (long)(o->noise_frac * o->steps) ? 2 : 1;
        double loss = ds4_vtok_forward_backward(m, ws, x, o->batch, win, Gh, Gw, NULL, &mse, grads, 1.0f, mode);
        if (!isfinite(loss)) {
            ds4_set_error("video train: loss is not finite at step %ld", step);
            goto done;
        }
        double gn = 0;
        for (size_t i = 0; i < m->n_params; i++) gn += (double)grads[i] * grads[i];
        gn = sqrt(gn);
        if (o->grad_clip > 0 && gn > o->grad_clip) {
            float s = (float)(o->grad_clip / gn);
            for (size_t i = 0; i < m->n_params; i++) grads[i] *= s;
        }
        float lr = lr_at(o, step);
        ds4_vtok_adamw_step(&opt, m, grads, lr);
        ds4_vtok_progress p = {
            .step = step + 1, .steps = o->steps, .loss = loss, .lr = lr, .grad_norm = gn,
            .val_psnr = NAN, .val_centroid = NAN,
        };
        /* input units span 2 for 255 levels: MSE_255 = mse * 127.5^2 (before rounding to RGB8) */
        p.train_psnr = 10.0 * log10(255.0 * 255.0 / (mse * 127.5 * 127.5 + 1e-12));
        int last = step + 1 == o->steps;
        if (last || (o->eval_every > 0 && (step + 1) % o->eval_every == 0)) {
            if (has_val) {
                ds4_vtok_eval_stats st = {0};
                if (ds4_vtok_eval_dir(m, o->data_dir, "val", o->eval_clips, &st) != 0) goto done;
                p.val_psnr = ds4_vtok_eval_psnr(&st);
                p.val_centroid = ds4_vtok_eval_centroid(&st);
            }
            if (ds4_vtok_save(m, o->out_dir) != 0) goto done;
        }
        p.elapsed_s = ds4_time_s() - t_start;
        p.tok_per_s = (double)(step + 1) * tok / p.elapsed_s;
        log_line(logf, &p);
        if (o->progress) o->progress(o->user, &p);
    }
    rc = 0;
done:
    if (logf) fclose(logf);
    ds4_vtok_adamw_free(&opt);
    free(x);
    free(grads);
    ds4_vtok_ws_free(ws);
    ds4_vtok_free(m);
    data_close(&d);
    return rc;
}
