/* train.c — training the world model: one backbone, rows of text (random
 * windows of a token shard) and rows of video (caption + a window of latent
 * frames of a dataset clip) mixed in every batch, AdamW with warmup + cosine,
 * validation (nats per video code, nats per text token), JSONL log and
 * checkpoints that resume. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "train/train.h"
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

void ds4_wm_train_opts_defaults(ds4_wm_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->steps = 600;
    o->batch = 4;
    o->seq = 847;                /* 3 + 64 caption tokens + 12 x 65 video tokens */
    o->window = 12;
    o->caption_max = 64;         /* cuts three-ball captions (84-107 tokens); 112 was no better (README) */
    o->text_frac = 0.25f;
    o->caption_drop = 0.2f;
    o->start_zero = 0.5f;
    o->lr = 2e-3f;
    o->min_lr_frac = 0.1f;
    o->warmup = 30;
    o->weight_decay = 0.1f;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->eps = 1e-8f;
    o->grad_clip = 1.0f;
    o->seed = 1337;
    o->eval_every = 100;
    o->save_every = 100;
    o->eval_rows = 8;
}

typedef struct wm_state {
    long step;
    ds4_rng rng;
} wm_state;

/* ---- checkpoint ------------------------------------------------------------ */

/* The optimizer (AdamW moments, the step in its metadata) first, the weights and
 * side files next (save_all), trainer_state.json last: an interrupted save leaves
 * the state one checkpoint behind the optimizer, which resuming refuses. */
static int save_optimizer(const char *dir, const ds4_model *m, const ds4_adamw *opt, const wm_state *st) {
    char path[4096];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    return ds4_adamw_save(path, m, opt, st->step);
}

static int save_state(const char *dir, const wm_state *st) {
    char path[4096];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)st->step);
    ds4_json_add_rng(j, "rng", &st->rng);
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    return ds4_json_write_atomic(path, j);
}

static int load_state(const char *dir, const ds4_model *m, ds4_adamw *opt, wm_state *st) {
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    char *txt;
    if (ds4_read_file(path, &txt, NULL) != 0) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    int rc = -1;
    if (!cJSON_IsNumber(step)) ds4_set_error("%s: needs a numeric step", path);
    else if (ds4_json_get_rng(j, "rng", &st->rng, path) == 0) {
        st->step = (long)step->valuedouble;
        rc = 0;
    }
    cJSON_Delete(j);
    if (rc != 0) return -1;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    return ds4_adamw_load(path, m, opt, st->step);
}

static int save_all(const ds4_wm_train_opts *o, const ds4_model *m, const ds4_vtok *vt,
                    const ds4_wm_settings *ws, const ds4_adamw *opt, const wm_state *st, int f16) {
    char path[4096];
    if (opt && save_optimizer(o->out_dir, m, opt, st) != 0) return -1;
    if (f16 ? ds4_wm_save_f16(m, o->out_dir) : ds4_model_save(m, o->out_dir)) return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", o->out_dir);
    if (ds4_copy_file(o->tokenizer_path, path) != 0) return -1;
    if (ds4_vtok_save(vt, o->out_dir) != 0) return -1;
    snprintf(path, sizeof path, "%s/worldmodel.json", o->out_dir);
    if (ds4_wm_settings_save(ws, path) != 0) return -1;
    return opt ? save_state(o->out_dir, st) : 0;
}

/* ---- validation ------------------------------------------------------------- */

/* Mean negative log-likelihood of the targets of row[0..T] selected by want
 * (1 = code targets only, 0 = all); *n receives the count. */
static double row_nll(const ds4_model *m, const ds4_wm_layout *L, const int *row, int T, int codes_only,
                      float *logits, long *n) {
    if (ds4_forward_logits(m, row, T, logits) != 0) return NAN;
    const int V = m->cfg.vocab_size;
    double sum = 0;
    long cnt = 0;
    for (int t = 0; t < T; t++) {
        const int y = row[t + 1];
        if (codes_only && !ds4_wm_is_code(L, y)) continue;
        const float *z = logits + (size_t)t * V;
        float mx = z[0];
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        double s = 0;
        for (int v = 0; v < V; v++) s += exp((double)(z[v] - mx));
        sum += log(s) + mx - z[y];
        cnt++;
    }
    *n = cnt;
    return sum;
}

/* ---- the loop ----------------------------------------------------------------- */

int ds4_wm_train(const ds4_wm_train_opts *oin) {
    ds4_wm_train_opts o = *oin;
    int rc = -1;
    char path[4096];
    ds4_model *m = NULL;
    ds4_tokenizer *tok = NULL;
    ds4_vtok *vt = NULL;
    ds4_wm_clips tr = {0}, va = {0};
    int *text = NULL, *tval = NULL, *buf = NULL;
    size_t n_text = 0, n_tval = 0;
    float *grads = NULL, *vlogits = NULL;
    ds4_adamw opt = {0};
    ds4_train_ctx *ctx = NULL;
    FILE *log = NULL;
    wm_state st = {0};
    ds4_wm_layout L;
    ds4_wm_settings ws;
    ds4_wm_settings_defaults(&ws);
    ws.window = o.window;
    ws.keep = o.window / 2 > 0 ? o.window / 2 : 1;
    ws.caption_max = o.caption_max;

    if (o.batch <= 0 || o.seq <= 0 || o.steps <= 0 || o.window < 2) {
        ds4_set_error("world train: batch, seq, steps must be positive and window >= 2");
        return -1;
    }
    if (!o.tokenizer_path || !o.vtok_dir || !o.data_dir || !o.out_dir || (!o.config_path && !o.resume)) {
        ds4_set_error("world train: config, tokenizer, video tokenizer, data and out are required");
        return -1;
    }
    if (!(tok = ds4_tokenizer_load(o.tokenizer_path))) goto out;
    if (!(vt = ds4_vtok_load(o.vtok_dir))) { ds4_error_prefix("%s: ", o.vtok_dir); goto out; }
    if (o.resume) {
        if (!(m = ds4_model_load(o.out_dir))) { ds4_error_prefix("resuming from %s: ", o.out_dir); goto out; }
    } else {
        ds4_config c;
        if (ds4_config_load(&c, o.config_path) != 0) goto out;
        if (!(m = ds4_model_create(&c, o.seed))) goto out;
        ds4_rng_seed(&st.rng, o.seed ^ 0x3017d5eedULL);
    }
    if (ds4_wm_layout_init(&L, &m->cfg, tok) != 0 || ds4_wm_layout_check_vtok(&L, vt) != 0) goto out;
    if (o.seq > m->cfg.max_position_embeddings) {
        ds4_set_error("--seq %d exceeds max_position_embeddings %d", o.seq, m->cfg.max_position_embeddings);
        goto out;
    }
    const int T = o.seq, T1 = o.seq + 1, B = o.batch;
    if (ds4_wm_seq_len(&L, ws.caption_max, o.window, 1) > T1)
        fprintf(stderr, "world train: note: rows of %d tokens hold fewer than %d latent frames with long captions\n",
                T1, o.window);
    double t_enc = ds4_time_s();
    if (ds4_wm_clips_encode(&tr, vt, tok, &L, o.data_dir, "train", o.max_clips, ws.caption_max) != 0) goto out;
    {
        char **vp = NULL;
        int nv = 0;
        if (ds4_world_dataset_shards(o.data_dir, "val", &vp, &nv) == 0 && nv > 0)
            if (ds4_wm_clips_encode(&va, vt, tok, &L, o.data_dir, "val", o.eval_rows, ws.caption_max) != 0) {
                for (int i = 0; i < nv; i++) free(vp[i]);
                free(vp);
                goto out;
            }
        for (int i = 0; i < nv; i++) free(vp[i]);
        free(vp);
    }
    fprintf(stderr, "world train: encoded %d train clips (%d latent frames each) and %d val clips in %.1f s\n",
            tr.n_clips, tr.n_lat, va.n_clips, ds4_time_s() - t_enc);
    if (o.text_path && o.text_frac > 0) {
        if (ds4_shard_read(o.text_path, &text, &n_text) != 0) goto out;
        if (n_text < (size_t)T1 + 1) { ds4_set_error("%s: fewer than %d tokens", o.text_path, T1 + 1); goto out; }
        for (size_t i = 0; i < n_text; i++)
            if (text[i] < 0 || text[i] >= L.text_vocab) {
                ds4_set_error("%s: token %zu has id %d outside the text vocabulary %d", o.text_path, i, text[i],
                              L.text_vocab);
                goto out;
            }
    }
    if (o.text_val_path && ds4_shard_read(o.text_val_path, &tval, &n_tval) != 0) goto out;
    if (ds4_mkdir_p(o.out_dir) != 0) goto out;
    if (ds4_adamw_init(&opt, m) != 0) goto out;
    opt.beta1 = o.beta1; opt.beta2 = o.beta2; opt.eps = o.eps; opt.weight_decay = o.weight_decay;
    if (o.resume && load_state(o.out_dir, m, &opt, &st) != 0) goto out;
    grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    buf = ds4_malloc(sizeof(int) * (size_t)B * T1);
    vlogits = ds4_malloc(sizeof(float) * (size_t)T * m->cfg.vocab_size);
    if (!grads || !buf || !vlogits || !(ctx = ds4_train_ctx_create(m, B, T))) goto out;
    snprintf(path, sizeof path, "%s/train_log.jsonl", o.out_dir);
    if (!(log = fopen(path, o.resume ? "a" : "w"))) { ds4_set_error("%s: cannot open", path); goto out; }

    fprintf(stderr, "world train: %zu params, %s step %ld of %ld, %d rows x %d tokens, text %.0f%%, "
                    "window %d latent frames\n", ds4_model_n_params(m), o.resume ? "resuming at" : "starting at",
            st.step, o.steps, B, T, (text ? o.text_frac : 0) * 100, o.window);
    const double t0 = ds4_time_s();
    const long first = st.step;
    const int tty = isatty(2) && !o.quiet;
    while (st.step < o.steps) {
        const double ts = ds4_time_s();
        const float lr = ds4_lr_schedule(st.step, o.steps, o.warmup, o.lr, o.min_lr_frac);
        int n_text_rows = 0;
        for (int b = 0; b < B; b++) {
            int *row = buf + (size_t)b * T1;
            if (text && ds4_rng_uniform(&st.rng) < o.text_frac) {
                size_t off = (size_t)(ds4_rng_u64(&st.rng) % (uint64_t)(n_text - (size_t)T1));
                memcpy(row, text + off, sizeof(int) * (size_t)T1);
                n_text_rows++;
                continue;
            }
            int clip = (int)(ds4_rng_u64(&st.rng) % (uint64_t)tr.n_clips);
            int span = tr.n_lat - o.window;
            int start = 0;
            if (span > 0 && ds4_rng_uniform(&st.rng) >= o.start_zero)
                start = (int)(ds4_rng_u64(&st.rng) % (uint64_t)(span + 1));
            int with_cap = ds4_rng_uniform(&st.rng) >= o.caption_drop;
            if (ds4_wm_row_video(&L, &tr, clip, start, o.window, with_cap, row, T1) != 0) goto out;
        }
        memset(grads, 0, m->layout.n_floats * sizeof(float));
        double loss = ds4_train_ctx_step(ctx, m, buf, grads, 1.0f);
        if (isnan(loss)) goto out;
        const float gnorm = ds4_clip_grad_norm(m, grads, o.grad_clip);
        ds4_adamw_step(&opt, m, grads, lr);
        ds4_train_ctx_moe_step(ctx, m, NULL);
        ds4_prune_step_stats ps;
        ds4_train_ctx_prune_step(ctx, &ps);
        st.step++;
        const double now = ds4_time_s();
        const double tps = (double)B * T * (st.step - first) / (now - t0);
        const int last = st.step == o.steps;
        const int timeout = (o.time_limit_s > 0 && now - t0 >= o.time_limit_s) ||
                            (o.stop_after > 0 && st.step - first >= o.stop_after);
        double vcode = NAN, vtext = NAN;
        if (o.eval_every > 0 && (st.step % o.eval_every == 0 || last || timeout)) {
            double s = 0;
            long n = 0;
            for (int i = 0; i < va.n_clips && i < o.eval_rows; i++) {
                long k;
                if (ds4_wm_row_video(&L, &va, i, 0, o.window, 1, buf, T1) != 0) goto out;
                s += row_nll(m, &L, buf, T, 1, vlogits, &k);
                n += k;
            }
            if (n) vcode = s / n;
            s = 0;
            n = 0;
            for (int i = 0; tval && i < o.eval_rows && (size_t)(i + 1) * T1 <= n_tval; i++) {
                long k;
                s += row_nll(m, &L, tval + (size_t)i * T1, T, 0, vlogits, &k);
                n += k;
            }
            if (n) vtext = s / n;
        }
        fprintf(log, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.4f,\"text_rows\":%d,"
                     "\"tokens_per_s\":%.1f,\"step_s\":%.4f,\"elapsed_s\":%.1f",
                st.step, loss, lr, gnorm, n_text_rows, tps, now - ts, now - t0);
        if (!isnan(vcode)) fprintf(log, ",\"val_code_nll\":%.5f", vcode);
        if (!isnan(vtext)) fprintf(log, ",\"val_text_nll\":%.5f", vtext);
        fprintf(log, "}\n");
        fflush(log);
        if (tty || !isnan(vcode) || !isnan(vtext) || last || st.step % 20 == 0 || st.step == first + 1) {
            double eta = (o.steps - st.step) * (now - t0) / (double)(st.step - first);
            fprintf(stderr, "%sstep %ld/%ld | loss %.4f | lr %.2e | %.0f tok/s | %.0f s | ETA %.0f s",
                    tty ? "\r\033[K" : "", st.step, o.steps, loss, lr, tps, now - t0, eta);
            if (!isnan(vcode)) fprintf(stderr, " | val code %.4f", vcode);
            if (!isnan(vtext)) fprintf(stderr, " | val text %.4f", vtext);
            if (!tty || !isnan(vcode) || !isnan(vtext) || last) fprintf(stderr, "\n");
        }
        if (last || timeout || (o.save_every > 0 && st.step % o.save_every == 0))
            if (save_all(&o, m, vt, &ws, &opt, &st, 0) != 0) goto out;
        if (timeout && !last) {
            fprintf(stderr, "world train: stopped with a checkpoint at step %ld of %ld (resume with --resume)\n",
                    st.step, o.steps);
            break;
        }
    }
    if (o.f16) {
        if (save_all(&o, m, vt, &ws, NULL, &st, 1) != 0) goto out;
        snprintf(path, sizeof path, "%s/optimizer.safetensors", o.out_dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/trainer_state.json", o.out_dir);
        unlink(path);
    }
    rc = 0;
out:
    if (log) fclose(log);
    ds4_train_ctx_free(ctx);
    ds4_adamw_free(&opt);
    free(grads); free(buf); free(vlogits); free(text); free(tval);
    ds4_wm_clips_free(&tr);
    ds4_wm_clips_free(&va);
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
    ds4_vtok_free(vt);
    return rc;
}
