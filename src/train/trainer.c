/* trainer.c — the training loop: data sampling, gradient accumulation, AdamW,
 * validation, a live progress line and a JSON Lines log, and checkpoints
 * (model, optimizer, trainer state) that resume bit-for-bit. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "model/acts.h"
#include "train/train.h"
#include "util/util.h"

void ds4_train_opts_defaults(ds4_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->steps = 1000;
    o->batch = 8;
    o->seq = 256;
    o->accum = 1;
    o->lr = 1e-3f;
    o->min_lr_frac = 0.1f;
    o->warmup = -1;            /* -1: 5% of steps */
    o->weight_decay = 0.1f;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->eps = 1e-8f;
    o->grad_clip = 1.0f;
    o->seed = 1337;
    o->eval_every = 100;
    o->eval_batches = 8;
    o->save_every = 500;
}

typedef struct run_state {
    long step;                 /* optimizer steps done */
    ds4_rng rng;               /* data sampling */
    long seqs_seen;            /* data position: sequences consumed */
} run_state;

/* ---- checkpoint --------------------------------------------------------- */

static int save_state(const char *path, const run_state *rs, const ds4_train_opts *o) {
    cJSON *j = cJSON_CreateObject();
    char buf[64];
    cJSON_AddNumberToObject(j, "step", (double)rs->step);
    cJSON_AddNumberToObject(j, "seqs_seen", (double)rs->seqs_seen);
    ds4_json_add_rng(j, "rng", &rs->rng);
    cJSON *oj = cJSON_AddObjectToObject(j, "opts");
    cJSON_AddNumberToObject(oj, "steps", (double)o->steps);
    cJSON_AddNumberToObject(oj, "batch", o->batch);
    cJSON_AddNumberToObject(oj, "seq", o->seq);
    cJSON_AddNumberToObject(oj, "accum", o->accum);
    cJSON_AddNumberToObject(oj, "lr", o->lr);
    cJSON_AddNumberToObject(oj, "min_lr_frac", o->min_lr_frac);
    cJSON_AddNumberToObject(oj, "warmup", (double)o->warmup);
    cJSON_AddNumberToObject(oj, "weight_decay", o->weight_decay);
    cJSON_AddNumberToObject(oj, "beta1", o->beta1);
    cJSON_AddNumberToObject(oj, "beta2", o->beta2);
    cJSON_AddNumberToObject(oj, "eps", o->eps);
    cJSON_AddNumberToObject(oj, "grad_clip", o->grad_clip);
    snprintf(buf, sizeof buf, "%" PRIu64, o->seed);
    cJSON_AddStringToObject(oj, "seed", buf);
    return ds4_json_write_atomic(path, j);
}

static int load_state(const char *path, run_state *rs) {
    char *txt;
    if (ds4_read_file(path, &txt, NULL) != 0) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j) { ds4_set_error("%s: not valid JSON", path); return -1; }
    int rc = -1;
    cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    cJSON *seen = cJSON_GetObjectItemCaseSensitive(j, "seqs_seen");
    if (!cJSON_IsNumber(step) || step->valuedouble < 0) { ds4_set_error("%s: field 'step' missing or not a number", path); goto out; }
    if (!cJSON_IsNumber(seen)) { ds4_set_error("%s: field 'seqs_seen' missing or not a number", path); goto out; }
    if (ds4_json_get_rng(j, "rng", &rs->rng, path) != 0) goto out;
    rs->step = (long)step->valuedouble;
    rs->seqs_seen = (long)seen->valuedouble;
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

static int save_checkpoint(const char *dir, const ds4_model *m, const ds4_adamw *opt,
                           const run_state *rs, const ds4_train_opts *o) {
    /* the optimizer (it carries the step) first: a save interrupted anywhere after it leaves
     * the run state one checkpoint behind the optimizer, which resuming refuses */
    char path[4096];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (ds4_adamw_save(path, m, opt, rs->step) != 0) return -1;
    if (ds4_model_save(m, dir) != 0) return -1;
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);   /* last: marks the save complete */
    return save_state(path, rs, o);
}

/* ---- data --------------------------------------------------------------- */

/* B windows of T+1 tokens at random offsets. */
static void sample_batch(int *dst, const int *data, size_t n, int B, int T, ds4_rng *rng) {
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)(ds4_rng_u64(rng) % (uint64_t)(n - (size_t)T));
        memcpy(dst + (size_t)b * (T + 1), data + off, sizeof(int) * (size_t)(T + 1));
    }
}

static double val_loss(ds4_train_ctx *ctx, const ds4_model *m, const int *val, size_t nval,
                       int B, int T, long batches, int *buf) {
    /* fixed, evenly spaced windows: comparable across steps and runs */
    const size_t span = (size_t)B * (T + 1);
    long nb = (long)(nval / span);
    if (nb > batches) nb = batches;
    if (nb == 0) return NAN;
    /* validate the deployed model: causal keep rule, sparse attention */
    ds4_acts *acts = ds4_train_ctx_acts(ctx);
    const int warm = acts->indexer_warmup, causal = acts->prune_causal;
    acts->indexer_warmup = 0;
    acts->prune_causal = 1;
    double sum = 0;
    for (long i = 0; i < nb; i++) {
        memcpy(buf, val + (size_t)i * span, sizeof(int) * span);
        sum += ds4_train_ctx_loss(ctx, m, buf);
    }
    acts->indexer_warmup = warm;
    acts->prune_causal = causal;
    return sum / nb;
}

/* ---- the loop ----------------------------------------------------------- */

void ds4_fmt_eta(char *b, size_t n, double s) {
    if (s < 0 || !isfinite(s)) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(b, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(b, n, "%ldm%02lds", t / 60, t % 60);
}

int ds4_train_run(const ds4_train_opts *o_in) {
    ds4_train_opts o = *o_in;
    if (o.warmup < 0) o.warmup = o.steps / 20;
    char path[4096];
    ds4_model *m = NULL;
    ds4_adamw opt = {0};
    ds4_train_ctx *ctx = NULL;
    float *grads = NULL;
    int *data = NULL, *val = NULL, *buf = NULL;
    size_t ndata = 0, nval = 0;
    FILE *log = NULL;
    run_state rs = {0};
    int rc = -1;

    if (o.batch <= 0 || o.seq <= 0 || o.accum <= 0 || o.steps <= 0) {
        ds4_set_error("batch, seq, accum and steps must be positive");
        return -1;
    }
    if (o.resume) {
        if (!(m = ds4_model_load(o.out_dir))) { ds4_error_prefix("resuming from %s", o.out_dir); goto out; }
        snprintf(path, sizeof path, "%s/trainer_state.json", o.out_dir);
        if (load_state(path, &rs) != 0) goto out;
    } else {
        ds4_config c;
        if (ds4_config_load(&c, o.config_path) != 0) goto out;
        if (!(m = ds4_model_create(&c, o.seed))) goto out;
        ds4_rng_seed(&rs.rng, o.seed ^ 0x5eed5eed5eedULL);
    }
    if (o.seq > m->cfg.max_position_embeddings) {
        ds4_set_error("--seq %d exceeds max_position_embeddings %d", o.seq, m->cfg.max_position_embeddings);
        goto out;
    }
    if (o.bias_settle > 0) {
        int moe = 0;
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) moe |= ds4_layer_is_moe(&m->cfg, l);
        if (!moe || m->cfg.router_bias_update_rate <= 0) {
            ds4_set_error("--bias-settle needs a model with MoE layers and router_bias_update_rate > 0");
            goto out;
        }
    }
    if (ds4_shard_read(o.data_path, &data, &ndata) != 0) goto out;
    if (ndata < (size_t)o.seq + 2) { ds4_set_error("%s: %zu tokens, fewer than --seq + 2", o.data_path, ndata); goto out; }
    if (o.val_path && ds4_shard_read(o.val_path, &val, &nval) != 0) goto out;
    if (ds4_mkdir_p(o.out_dir) != 0) goto out;
    if (!o.resume && o.tokenizer_path) {
        snprintf(path, sizeof path, "%s/tokenizer.json", o.out_dir);
        if (ds4_copy_file(o.tokenizer_path, path) != 0) goto out;
    }
    if (ds4_adamw_init(&opt, m) != 0) goto out;
    opt.beta1 = o.beta1; opt.beta2 = o.beta2; opt.eps = o.eps; opt.weight_decay = o.weight_decay;
    if (o.resume) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", o.out_dir);
        if (ds4_adamw_load(path, m, &opt, rs.step) != 0) goto out;
    }
    grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    buf = ds4_malloc(sizeof(int) * (size_t)o.batch * (o.seq + 1));
    if (!grads || !buf || !(ctx = ds4_train_ctx_create(m, o.batch, o.seq))) goto out;
    if (o.log_path) snprintf(path, sizeof path, "%s", o.log_path);
    else snprintf(path, sizeof path, "%s/train_log.jsonl", o.out_dir);
    if (!(log = fopen(path, o.resume ? "a" : "w"))) { ds4_set_error("%s: cannot open log", path); goto out; }

    const int tty = isatty(2) && !o.quiet;
    const double tokens_per_step = (double)o.batch * o.seq * o.accum;
    const double t0 = ds4_time_s();
    const long first = rs.step;
    fprintf(stderr, "ds4 train: %zu params, %s step %ld of %ld, %d x %d tokens x %d accum\n",
            ds4_model_n_params(m), o.resume ? "resuming at" : "starting at", rs.step, o.steps,
            o.batch, o.seq, o.accum);
    while (rs.step < o.steps) {
        const double ts = ds4_time_s();
        const float lr = ds4_lr_schedule(rs.step, o.steps, o.warmup, o.lr, o.min_lr_frac);
        memset(grads, 0, m->layout.n_floats * sizeof(float));
        /* indexer warm-up (SPEC §1.4): dense attention, only the indexer learns */
        const int iwarm = rs.step < o.indexer_warmup && m->cfg.index_topk > 0;
        ds4_train_ctx_acts(ctx)->indexer_warmup = iwarm;
        double loss = 0;
        for (int a = 0; a < o.accum; a++) {
            sample_batch(buf, data, ndata, o.batch, o.seq, &rs.rng);
            rs.seqs_seen += o.batch;
            double l = ds4_train_ctx_step(ctx, m, buf, grads, 1.0f / (float)o.accum);
            if (isnan(l)) goto out;
            loss += l / o.accum;
        }
        const float gnorm = ds4_clip_grad_norm(m, grads, o.grad_clip);
        if (iwarm) {
            unsigned char *saved = ds4_malloc((size_t)m->layout.n_tensors);
            if (!saved) goto out;
            ds4_layout_indexer_only(&m->layout, saved, 1);
            ds4_adamw_step(&opt, m, grads, lr);
            ds4_layout_indexer_only(&m->layout, saved, 0);
            free(saved);
        } else {
            ds4_adamw_step(&opt, m, grads, lr);
        }
        ds4_prune_step_stats ps;                /* pruning / indexer losses and agreement of the step */
        ds4_train_ctx_prune_step(ctx, &ps);
        ds4_moe_step_stats ms;                  /* MoE: load-bias update, aux loss of the step */
        ds4_train_ctx_moe_step(ctx, m, &ms);
        rs.step++;
        const double now = ds4_time_s(), dt = now - ts;
        const double tps = tokens_per_step * (rs.step - first) / (now - t0);
        const int last = rs.step == o.steps;
        if (last && o.bias_settle > 0) {        /* the bias settled on the final router (SPEC §1.2), outside the step's time */
            ds4_rng srng;
            ds4_rng_seed(&srng, o.seed ^ 0x5e771e5e771eULL);
            if (ds4_moe_bias_settle(ctx, m, data, ndata, o.bias_settle, o.settle_ema, &srng) != 0) goto out;
            fprintf(stderr, "%sds4 train: load bias settled on %ld forward-only batches\n", tty ? "\r\033[K" : "",
                    o.bias_settle);
        }
        double vl = NAN;
        if (val && o.eval_every > 0 && (rs.step % o.eval_every == 0 || last))
            vl = val_loss(ctx, m, val, nval, o.batch, o.seq, o.eval_batches, buf);
        fprintf(log, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.4f,\"tokens_per_s\":%.1f,"
                     "\"step_s\":%.4f", rs.step, loss, lr, gnorm, tokens_per_step / dt, dt);
        if (!isnan(vl)) fprintf(log, ",\"val_loss\":%.6f", vl);
        if (ms.moe) fprintf(log, ",\"aux_loss\":%.6f,\"moe_utilization\":%.4f,\"moe_max_vio\":%.4f",
                            ms.aux_loss, ms.utilization, ms.max_vio);
        if (ps.counts.tokens) fprintf(log, ",\"prune_bce\":%.6f,\"prune_agreement\":%.4f,\"prune_kept\":%.4f",
                                      ps.bce, ps.agreement, ps.kept_frac);
        if (m->cfg.index_topk > 0) fprintf(log, ",\"indexer_kl\":%.6f,\"indexer_warmup\":%d", ps.kl, iwarm);
        fprintf(log, "}\n");
        fflush(log);
        char eta[32];
        ds4_fmt_eta(eta, sizeof eta, (o.steps - rs.step) * tokens_per_step / tps);
        if (tty || !isnan(vl) || last || rs.step % 50 == 0 || rs.step == first + 1) {
            fprintf(stderr, "%sstep %ld/%ld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s",
                    tty ? "\r\033[K" : "", rs.step, o.steps, loss, lr, tps, eta);
            if (!isnan(vl)) fprintf(stderr, " | val %.4f (ppl %.2f)", vl, exp(vl));
            if (!tty || !isnan(vl) || last) fprintf(stderr, "\n");
        }
        const int stop = o.stop_after > 0 && rs.step - first >= o.stop_after;
        if (last || stop || (o.save_every > 0 && rs.step % o.save_every == 0))
            if (save_checkpoint(o.out_dir, m, &opt, &rs, &o) != 0) goto out;
        if (stop) break;
    }
    rc = 0;
out:
    if (log) fclose(log);
    ds4_train_ctx_free(ctx);
    ds4_adamw_free(&opt);
    free(grads); free(buf); free(data); free(val);
    ds4_model_free(m);
    return rc;
}
