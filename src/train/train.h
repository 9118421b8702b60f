/* train.h — training: AdamW with warmup + cosine schedule and global-norm
 * clipping, the training loop with gradient accumulation, validation, JSONL
 * logging, and atomic checkpoints that resume bit-for-bit. */
#ifndef DS4_TRAIN_H
#define DS4_TRAIN_H

#include <stdint.h>
#include "ds4.h"
#include "model/model.h"
#include "model/prune.h"
#include "util/util.h"

typedef struct ds4_train_opts {
    const char *config_path;     /* config.json for a new run (NULL with resume) */
    const char *tokenizer_path;  /* tokenizer.json copied into the checkpoint */
    const char *data_path;       /* token shard */
    const char *val_path;        /* token shard or NULL */
    const char *out_dir;         /* checkpoint directory */
    const char *log_path;        /* JSON Lines log (default OUT/train_log.jsonl) */
    int    resume;               /* continue from out_dir */
    long   steps;                /* total optimizer steps */
    int    batch, seq;           /* micro-batch B sequences of T tokens */
    int    accum;                /* micro-batches per optimizer step */
    float  lr, min_lr_frac;      /* peak lr; final lr = lr * min_lr_frac */
    long   warmup;               /* warmup steps */
    float  weight_decay, beta1, beta2, eps, grad_clip;
    uint64_t seed;
    long   eval_every, eval_batches, save_every;
    long   stop_after;           /* stop (with a checkpoint) after this many steps in this run; 0 = off */
    int    quiet;                /* no live progress line */
    long   indexer_warmup;       /* first steps train only the lightning indexer (SPEC §1.4); 0 = off */
    long   bias_settle;          /* MoE: after the last step, batches that settle the load bias (0 = off) */
    double settle_ema;           /* their sign rule on an EMA (beta) of the batch loads; 0 = each batch's own */
} ds4_train_opts;

void ds4_train_opts_defaults(ds4_train_opts *o);
/* Runs (or resumes) training; returns 0 on success. Progress on stderr. */
int  ds4_train_run(const ds4_train_opts *o);

/* ---- pieces, exposed for tests and benchmarks ---------------------------- */

typedef struct ds4_adamw {
    float  lr, beta1, beta2, eps, weight_decay;
    long   t;                    /* steps taken */
    float *m, *v;                /* [layout.n_floats] */
} ds4_adamw;

int   ds4_adamw_init(ds4_adamw *o, const ds4_model *m);
void  ds4_adamw_free(ds4_adamw *o);
/* One update of the trainable tensors with lr; grads unchanged. */
void  ds4_adamw_step(ds4_adamw *o, ds4_model *m, const float *grads, float lr);
/* Save / load both moments of every tensor of m's layout (m: a model, or any
 * layout + params view such as a LoRA adapter's) and the step counters to a
 * safetensors file. load checks that the file was written at trainer step
 * `step` and that every tensor is present with its size (errors name it). */
int   ds4_adamw_save(const char *path, const ds4_model *m, const ds4_adamw *o, long step);
int   ds4_adamw_load(const char *path, const ds4_model *m, ds4_adamw *o, long step);
float ds4_lr_schedule(long step, long total, long warmup, float lr, float min_frac);
/* Seconds as "1h02m" / "3m07s" for progress lines (negative or NaN: 0). */
void  ds4_fmt_eta(char *buf, size_t n, double seconds);
/* Scale grads so their global L2 norm is at most max_norm (0: no clip).
 * Returns the norm before clipping. */
float ds4_clip_grad_norm(const ds4_model *m, float *grads, float max_norm);

/* One forward+backward of a batch of B sequences of T+1 tokens each
 * (inputs ids[b*(T+1) .. +T], targets shifted by one). grads accumulate,
 * loss scaled by loss_scale. Returns the mean loss of the batch, or NAN on error. */
typedef struct ds4_train_ctx ds4_train_ctx;
ds4_train_ctx *ds4_train_ctx_create(const ds4_model *m, int B, int T);
void  ds4_train_ctx_free(ds4_train_ctx *t);
double ds4_train_ctx_step(ds4_train_ctx *t, const ds4_model *m, const int *ids, float *grads,
                          float loss_scale);
/* Forward only: mean loss of a batch (for validation). */
double ds4_train_ctx_loss(ds4_train_ctx *t, const ds4_model *m, const int *ids);

/* MoE load balancing (SPEC §1.2), called once after each optimizer step:
 * applies the load-bias update b_i += u * sign(mean_load - load_i) to every
 * MoE layer from the loads counted by ds4_train_ctx_step since the last call
 * (all micro-batches), when router_bias_update_rate > 0; fills st (may be
 * NULL) and resets the counts. Nothing for a dense model (st->moe = 0). */
typedef struct ds4_moe_step_stats {
    int    moe;              /* the model has MoE layers */
    double aux_loss;         /* aux_loss_alpha x balance statistic, summed over MoE layers, mean over micro-batches */
    double utilization;      /* mean over MoE layers of mean(load) / max(load) in the step */
    double max_vio;          /* mean over MoE layers of (max - mean) / mean */
} ds4_moe_step_stats;
void ds4_train_ctx_moe_step(ds4_train_ctx *t, ds4_model *m, ds4_moe_step_stats *st);

/* The load bias settled on the trained, now fixed router (SPEC §1.2's sign
 * rule, after the last optimizer step; only the bias moves, no weight):
 * `batches` forward-only batches of the context's B x T tokens sampled from
 * data[n] with rng, each followed by b_i += u * sign(mean_load - load_i) in
 * every MoE layer with u = router_bias_update_rate x (1 - k / batches), on
 * the batch's own loads (ema 0) or on an EMA (beta ema) of them. The bias a
 * moving router leaves balances the loads only on average over steps; this
 * one balances the final router's. Returns 0, or -1 with the error set
 * (a dense model, rate 0, too little data). */
int ds4_moe_bias_settle(ds4_train_ctx *t, ds4_model *m, const int *data, size_t n, long batches, double ema,
                        ds4_rng *rng);
/* The context's micro-batch shape. */
void ds4_train_ctx_shape(const ds4_train_ctx *t, int *B, int *T);

/* Token pruning and indexer statistics (SPEC §1.3, §1.4) over the micro-batches
 * since the last call (then reset): pruned layers' keep and agreement
 * counters (causal decision sigmoid(r) > 0.5 vs top-k membership), the sum
 * over layers of the mean router BCE and of the mean indexer KL. */
typedef struct ds4_prune_step_stats {
    ds4_prune_counts counts;
    double agreement;        /* agree / scored (NAN without pruned layers) */
    double kept_frac;        /* kept / tokens in pruned layers */
    double bce, kl;          /* mean over micro-batches */
} ds4_prune_step_stats;
void ds4_train_ctx_prune_step(ds4_train_ctx *t, ds4_prune_step_stats *st);
/* The context's activations, to set the training modes acts->indexer_warmup
 * (only the indexer learns, attention dense) and acts->prune_causal (forward
 * keeps tokens by the inference rule: validation of the deployed model). */
struct ds4_acts *ds4_train_ctx_acts(ds4_train_ctx *t);

#endif
