/* finetune.c — LoRA fine-tuning with the base frozen: W = W_base + scale * B A
 * is materialised in a working fp32 copy, the training forward/backward of
 * src/train gives dW, the chain rule gives dA, dB, and AdamW (src/train)
 * updates only A and B. The loop logs like `ds4 train`, saves the adapter,
 * and checkpoints (adapter, optimizer, run state) that resume bit-for-bit. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "infer/infer.h"
#include "lora/lora.h"
#include "model/acts.h"
#include "model/quantized.h"
#include "util/util.h"

struct ds4_lora_ft {
    ds4_lora *l;
    ds4_model *work;             /* fp32 working copy: base + scale * B A on adapted tensors */
    const float *wbase;          /* [n_floats] frozen fp32 base (the model's params, or deq's) */
    ds4_model *deq;              /* dequantized base when the base model is quantized */
    ds4_train_ctx *ctx;
    float *gW;                   /* [work n_floats] full weight gradients */
    float *gL;                   /* [l->layout.n_floats] adapter gradients */
    ds4_model view;              /* the adapter seen as a "model" (layout + params) for AdamW / clipping */
    int B, T;
};

ds4_lora_ft *ds4_lora_ft_create(const ds4_model *base, ds4_lora *l, int B, int T) {
    ds4_lora_ft *f = ds4_calloc(1, sizeof *f);
    if (!f) return NULL;
    f->l = l;
    f->B = B;
    f->T = T;
    if (base->quant) {
        if (!(f->deq = ds4_model_fp32_copy(base))) goto fail;
        f->wbase = f->deq->params;
    } else {
        f->wbase = base->params;
    }
    if (!(f->work = ds4_model_fp32_copy(f->deq ? f->deq : base))) goto fail;
    f->gW = ds4_alloc_aligned(f->work->layout.n_floats * sizeof(float));
    f->gL = ds4_alloc_aligned(l->layout.n_floats * sizeof(float));
    if (!f->gW || !f->gL || !(f->ctx = ds4_train_ctx_create(f->work, B, T))) goto fail;
    f->view.layout = l->layout;
    f->view.params = l->params;
    return f;
fail:
    ds4_lora_ft_free(f);
    return NULL;
}

void ds4_lora_ft_free(ds4_lora_ft *f) {
    if (!f) return;
    ds4_train_ctx_free(f->ctx);
    ds4_model_free(f->work);
    ds4_model_free(f->deq);
    free(f->gW);
    free(f->gL);
    free(f);
}

float *ds4_lora_ft_grads(ds4_lora_ft *f) { return f->gL; }

int ds4_lora_ft_adamw_init(ds4_lora_ft *f, ds4_adamw *opt) { return ds4_adamw_init(opt, &f->view); }

int ds4_lora_ft_adamw_save(ds4_lora_ft *f, const ds4_adamw *opt, const char *path, long step) {
    return ds4_adamw_save(path, &f->view, opt, step);
}

int ds4_lora_ft_adamw_load(ds4_lora_ft *f, ds4_adamw *opt, const char *path, long step) {
    return ds4_adamw_load(path, &f->view, opt, step);
}

double ds4_lora_ft_grad(ds4_lora_ft *f, const int *ids, int accum) {
    ds4_lora_effective(f->l, f->work, f->wbase, f->work->params);
    memset(f->gW, 0, f->work->layout.n_floats * sizeof(float));
    double loss = 0;
    const size_t span = (size_t)f->B * (f->T + 1);
    for (int a = 0; a < accum; a++) {
        double v = ds4_train_ctx_step(f->ctx, f->work, ids + (size_t)a * span, f->gW, 1.0f / (float)accum);
        if (isnan(v)) return NAN;
        loss += v / accum;
    }
    ds4_lora_grad(f->l, f->work, f->gW, f->gL);
    return loss;
}

float ds4_lora_ft_update(ds4_lora_ft *f, ds4_adamw *opt, float lr, float max_norm) {
    const float norm = ds4_clip_grad_norm(&f->view, f->gL, max_norm);
    ds4_adamw_step(opt, &f->view, f->gL, lr);
    return norm;
}

double ds4_lora_ft_loss(ds4_lora_ft *f, const int *ids) {
    ds4_lora_effective(f->l, f->work, f->wbase, f->work->params);
    return ds4_train_ctx_loss(f->ctx, f->work, ids);
}

/* ---- the loop ------------------------------------------------------------ */

void ds4_finetune_opts_defaults(ds4_finetune_opts *o) {
    memset(o, 0, sizeof *o);
    o->rank = 8;
    o->alpha = 0;                /* 2 * rank */
    o->targets = DS4_LORA_ALL;
    o->steps = 200;
    o->batch = 8;
    o->seq = 128;
    o->accum = 1;
    o->lr = 2e-3f;
    o->min_lr_frac = 0.1f;
    o->warmup = -1;
    o->weight_decay = 0.0f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->grad_clip = 1.0f;
    o->seed = 1337;
    o->eval_every = 50;
    o->eval_batches = 8;
    o->save_every = 0;
}

/* Tokens of a text file (model tokenizer, no <|bos|>) or a DS4TOK01 shard. */
static int read_tokens(const char *path, const ds4_tokenizer *tok, int **ids, size_t *n) {
    char *text;
    size_t len;
    if (ds4_read_file(path, &text, &len) != 0) return -1;
    int rc;
    if (len >= 8 && !memcmp(text, "DS4TOK01", 8)) {
        rc = ds4_shard_read(path, ids, n);
    } else {
        rc = ds4_tokenizer_encode(tok, text, len, ids, n);
        if (rc != 0) ds4_error_prefix("tokenizing %s: ", path);
    }
    free(text);
    return rc;
}

static void sample_batch(int *dst, const int *data, size_t n, int B, int T, ds4_rng *rng) {
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)(ds4_rng_u64(rng) % (uint64_t)(n - (size_t)T));
        memcpy(dst + (size_t)b * (T + 1), data + off, sizeof(int) * (size_t)(T + 1));
    }
}

/* Mean loss over fixed, evenly spaced windows (comparable across steps). */
static double val_loss(ds4_lora_ft *f, const int *val, size_t nval, long batches, int *buf) {
    const int B = f->B, T = f->T;
    const size_t span = (size_t)B * (T + 1);
    long nb = (long)(nval / span);
    if (nb > batches) nb = batches;
    if (nb == 0) return NAN;
    ds4_acts *acts = ds4_train_ctx_acts(f->ctx);
    const int causal = acts->prune_causal;
    acts->prune_causal = 1;                /* the deployed model's keep rule */
    double sum = 0;
    for (long i = 0; i < nb; i++) {
        memcpy(buf, val + (size_t)i * span, sizeof(int) * span);
        sum += ds4_lora_ft_loss(f, buf);
    }
    acts->prune_causal = causal;
    return sum / nb;
}

/* ---- checkpoint: ADAPTER/finetune_state.json, written last -------------- */

/* the flags a resumed run must repeat (they shape the data stream and schedule) */
typedef struct { const char *key; double v; } ft_key;

static int ft_keys(const ds4_finetune_opts *o, ft_key *k) {
    int n = 0;
    k[n++] = (ft_key){"steps", (double)o->steps};
    k[n++] = (ft_key){"batch", o->batch};
    k[n++] = (ft_key){"seq", o->seq};
    k[n++] = (ft_key){"accum", o->accum};
    k[n++] = (ft_key){"lr", o->lr};
    k[n++] = (ft_key){"min_lr_frac", o->min_lr_frac};
    k[n++] = (ft_key){"warmup", (double)o->warmup};
    k[n++] = (ft_key){"weight_decay", o->weight_decay};
    k[n++] = (ft_key){"grad_clip", o->grad_clip};
    return n;
}

static int ft_state_save(const char *dir, const ds4_finetune_opts *o, long step, const ds4_rng *rng) {
    char path[4200];
    snprintf(path, sizeof path, "%s/finetune_state.json", dir);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)step);
    ds4_json_add_rng(j, "rng", rng);
    cJSON *oj = cJSON_AddObjectToObject(j, "opts");
    ft_key k[16];
    for (int i = 0, n = ft_keys(o, k); i < n; i++) cJSON_AddNumberToObject(oj, k[i].key, k[i].v);
    return ds4_json_write_atomic(path, j);
}

/* step and data rng of the checkpoint; the flags of this run must match its opts */
static int ft_state_load(const char *dir, const ds4_finetune_opts *o, long *step, ds4_rng *rng) {
    char path[4200], *txt;
    snprintf(path, sizeof path, "%s/finetune_state.json", dir);
    if (ds4_read_file(path, &txt, NULL) != 0) { ds4_error_prefix("resuming: "); return -1; }
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j) { ds4_set_error("%s: not valid JSON", path); return -1; }
    int rc = -1;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step");
    const cJSON *oj = cJSON_GetObjectItemCaseSensitive(j, "opts");
    if (!cJSON_IsNumber(st) || st->valuedouble < 0) { ds4_set_error("%s: field 'step' missing or negative", path); goto out; }
    if (!cJSON_IsObject(oj)) { ds4_set_error("%s: field 'opts' missing", path); goto out; }
    if (ds4_json_get_rng(j, "rng", rng, path) != 0) goto out;
    ft_key k[16];
    for (int i = 0, n = ft_keys(o, k); i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(oj, k[i].key);
        if (!cJSON_IsNumber(v)) { ds4_set_error("%s: opts.%s missing", path, k[i].key); goto out; }
        if ((float)v->valuedouble != (float)k[i].v) {
            ds4_set_error("--resume: %s is %g in this run but %g in %s (give the first run's flags)", k[i].key,
                          k[i].v, v->valuedouble, path);
            goto out;
        }
    }
    *step = (long)st->valuedouble;
    if (*step > o->steps) { ds4_set_error("%s: step %ld is past --steps %ld", path, *step, o->steps); goto out; }
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

/* the optimizer (it carries the step), then the adapter files, then the run state (its
 * presence marks a complete save): a save interrupted after the optimizer leaves the run
 * state behind the optimizer's step, which resuming refuses */
static int ft_checkpoint(ds4_lora_ft *f, const ds4_lora *l, const ds4_adamw *opt, const ds4_finetune_opts *o,
                         long step, const ds4_rng *rng) {
    char path[4200];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", o->out_dir);
    if (ds4_lora_ft_adamw_save(f, opt, path, step) != 0) return -1;
    if (ds4_lora_save(l, o->out_dir) != 0) return -1;
    return ft_state_save(o->out_dir, o, step, rng);
}

int ds4_finetune_run(const ds4_finetune_opts *o_in) {
    ds4_finetune_opts o = *o_in;
    if (o.warmup < 0) o.warmup = o.steps / 20;
    if (o.alpha <= 0) o.alpha = 2.0f * (float)o.rank;
    if (o.batch <= 0 || o.seq <= 0 || o.accum <= 0 || o.steps <= 0) {
        ds4_set_error("batch, seq, accum and steps must be positive");
        return -1;
    }
    ds4_model *m = NULL;
    ds4_tokenizer *tok = NULL;
    ds4_lora *l = NULL;
    ds4_lora_ft *f = NULL;
    ds4_adamw opt = {0};
    int *data = NULL, *val = NULL, *buf = NULL;
    size_t ndata = 0, nval = 0;
    FILE *log = NULL;
    int rc = -1;
    char path[4200];

    if (ds4_open_model_dir(o.model_dir, &m, &tok) != 0) goto out;
    if (o.seq > m->cfg.max_position_embeddings) {
        ds4_set_error("--seq %d exceeds max_position_embeddings %d", o.seq, m->cfg.max_position_embeddings);
        goto out;
    }
    if (read_tokens(o.data_path, tok, &data, &ndata) != 0) goto out;
    if (ndata < (size_t)o.seq + 2) {
        ds4_set_error("%s: %zu tokens, fewer than --seq + 2 = %d", o.data_path, ndata, o.seq + 2);
        goto out;
    }
    if (o.val_path && read_tokens(o.val_path, tok, &val, &nval) != 0) goto out;
    ds4_rng rng;
    ds4_rng_seed(&rng, o.seed ^ 0x5eed5eed5eedULL);
    long first = 0;
    if (o.resume) {             /* the adapter, its rank/alpha/targets, step and data stream from OUT */
        if (ft_state_load(o.out_dir, &o, &first, &rng) != 0) goto out;
        if (!(l = ds4_lora_load(m, o.out_dir))) { ds4_error_prefix("resuming from %s: ", o.out_dir); goto out; }
        if (o.rank_given && (l->rank != o.rank || l->targets != o.targets || l->alpha != o.alpha)) {
            ds4_set_error("--resume: the adapter in %s has r %d, alpha %g; this run asks for r %d, alpha %g "
                          "(or other --targets)", o.out_dir, l->rank, l->alpha, o.rank, o.alpha);
            goto out;
        }
    } else {
        if (!(l = ds4_lora_create(m, o.rank, o.alpha, o.targets, o.seed))) goto out;
        snprintf(l->base_model, sizeof l->base_model, "%s", o.model_dir);
    }
    if (!(f = ds4_lora_ft_create(m, l, o.batch, o.seq))) goto out;
    if (ds4_lora_ft_adamw_init(f, &opt) != 0) goto out;
    opt.beta1 = o.beta1; opt.beta2 = o.beta2; opt.eps = o.eps; opt.weight_decay = o.weight_decay;
    if (o.resume) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", o.out_dir);
        if (ds4_lora_ft_adamw_load(f, &opt, path, first) != 0) goto out;
    }
    if (!(buf = ds4_malloc(sizeof(int) * (size_t)o.accum * o.batch * (o.seq + 1)))) goto out;
    if (ds4_mkdir_p(o.out_dir) != 0) goto out;
    if (o.log_path) snprintf(path, sizeof path, "%s", o.log_path);
    else snprintf(path, sizeof path, "%s/finetune_log.jsonl", o.out_dir);
    if (!(log = fopen(path, o.resume ? "a" : "w"))) { ds4_set_error("%s: cannot open log", path); goto out; }

    char tg[128];
    ds4_lora_targets_str(l->targets, tg, sizeof tg);
    const char *qname = ds4_model_qtype_name(m);
    fprintf(stderr, "ds4 finetune: %s%s%s, %zu adapter params on %d tensors (%.2f%% of %zu), r %d, alpha %g (scale %g), %s\n",
            o.model_dir, qname ? " (quantized " : "", qname ? qname : "", ds4_lora_n_params(l), l->n,
            100.0 * (double)ds4_lora_n_params(l) / (double)ds4_model_n_params(m), ds4_model_n_params(m),
            l->rank, l->alpha, l->scale, tg);
    if (qname) fprintf(stderr, "ds4 finetune: the %s base is dequantized to fp32 for training (memory of an fp32 model)\n", qname);
    fprintf(stderr, "ds4 finetune: %zu training tokens, %d x %d tokens x %d accum, %s step %ld of %ld\n",
            ndata, o.batch, o.seq, o.accum, o.resume ? "resuming at" : "starting at", first, o.steps);

    const int tty = isatty(2) && !o.quiet;
    const double tokens_per_step = (double)o.batch * o.seq * o.accum;
    const size_t span = (size_t)o.batch * (o.seq + 1);
    double v0 = NAN;
    if (val && o.eval_every > 0 && !o.resume) {
        v0 = val_loss(f, val, nval, o.eval_batches, buf);
        if (!isnan(v0)) {
            fprintf(log, "{\"step\":0,\"val_loss\":%.6f}\n", v0);
            fprintf(stderr, "step 0/%ld | val %.4f (ppl %.2f)\n", o.steps, v0, exp(v0));
        }
    }
    const double t0 = ds4_time_s();
    for (long step = first; step < o.steps;) {
        const double ts = ds4_time_s();
        const float lr = ds4_lr_schedule(step, o.steps, o.warmup, o.lr, o.min_lr_frac);
        for (int a = 0; a < o.accum; a++) sample_batch(buf + a * span, data, ndata, o.batch, o.seq, &rng);
        const double loss = ds4_lora_ft_grad(f, buf, o.accum);
        if (isnan(loss)) goto out;
        const float gnorm = ds4_lora_ft_update(f, &opt, lr, o.grad_clip);
        step++;
        const double now = ds4_time_s(), dt = now - ts;
        const double tps = tokens_per_step * (step - first) / (now - t0);
        const int last = step == o.steps;
        double vl = NAN;
        if (val && o.eval_every > 0 && (step % o.eval_every == 0 || last))
            vl = val_loss(f, val, nval, o.eval_batches, buf);
        fprintf(log, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.4f,\"tokens_per_s\":%.1f,\"step_s\":%.4f",
                step, loss, lr, gnorm, tokens_per_step / dt, dt);
        if (!isnan(vl)) fprintf(log, ",\"val_loss\":%.6f", vl);
        fprintf(log, "}\n");
        fflush(log);
        char eta[32];
        ds4_fmt_eta(eta, sizeof eta, (o.steps - step) * tokens_per_step / tps);
        if (tty || !isnan(vl) || last || step % 50 == 0 || step == 1) {
            fprintf(stderr, "%sstep %ld/%ld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s",
                    tty ? "\r\033[K" : "", step, o.steps, loss, lr, tps, eta);
            if (!isnan(vl)) fprintf(stderr, " | val %.4f (ppl %.2f)", vl, exp(vl));
            if (!tty || !isnan(vl) || last) fprintf(stderr, "\n");
        }
        const int stop = o.stop_after > 0 && step - first >= o.stop_after && !last;
        if (last || stop || (o.save_every > 0 && step % o.save_every == 0))
            if (ft_checkpoint(f, l, &opt, &o, step, &rng) != 0) goto out;
        if (stop) {
            fprintf(stderr, "ds4 finetune: stopped after %ld steps at step %ld of %ld; continue with --resume\n",
                    o.stop_after, step, o.steps);
            rc = 0;
            goto out;
        }
    }
    fprintf(stderr, "ds4 finetune: adapter saved to %s (adapter_model.safetensors, adapter_config.json)\n", o.out_dir);
    rc = 0;
out:
    if (log) fclose(log);
    ds4_adamw_free(&opt);
    ds4_lora_ft_free(f);
    ds4_lora_free(l);
    free(data); free(val); free(buf);
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return rc;
}
