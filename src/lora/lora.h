/* lora.h — LoRA adapters for ds4 (W' = W + scale * B A, scale = alpha / r):
 * create, save and load in the Hugging Face PEFT layout, attach to a model for
 * inference (ds4_linear's LoRA slot), merge into fp32 weights, and fine-tune
 * with the base frozen (finetune.c).
 *
 * Files (PEFT): ADAPTER/adapter_model.safetensors holds, for every adapted
 * weight model.X.weight [out, in],
 *   base_model.model.model.X.lora_A.weight  [r, in]
 *   base_model.model.model.X.lora_B.weight  [out, r]
 * and ADAPTER/adapter_config.json holds peft_type "LORA", r, lora_alpha,
 * target_modules, lora_dropout, bias "none", fan_in_fan_out false, task_type
 * "CAUSAL_LM", base_model_name_or_path (use_rslora: scale = alpha / sqrt(r)). */
#ifndef DS4_LORA_H
#define DS4_LORA_H

#include <stdint.h>
#include "model/model.h"
#include "train/train.h"

/* Target projections (--targets q,k,v,o,gate,up,down). gate/up/down cover the
 * dense FFN, the shared experts and every routed expert. */
enum {
    DS4_LORA_Q = 1 << 0, DS4_LORA_K = 1 << 1, DS4_LORA_V = 1 << 2, DS4_LORA_O = 1 << 3,
    DS4_LORA_GATE = 1 << 4, DS4_LORA_UP = 1 << 5, DS4_LORA_DOWN = 1 << 6,
    DS4_LORA_ALL = (1 << 7) - 1,
};

typedef struct ds4_lora {
    int      rank;                /* r (every adapted tensor has this rank) */
    float    alpha;               /* lora_alpha */
    int      rslora;              /* use_rslora: scale = alpha / sqrt(r) */
    float    scale;               /* alpha / r */
    unsigned targets;             /* DS4_LORA_* bits */
    char     base_model[1024];    /* base_model_name_or_path */
    /* A and B tensors under their PEFT names: pair k is tensors[2k] = A [r, in],
     * tensors[2k+1] = B [out, r], over one flat buffer */
    ds4_layout layout;
    float   *params;              /* [layout.n_floats] */
    int      n;                   /* adapted tensors (pairs) */
    int     *base;                /* [n] index of the adapted tensor in the base model's layout */
} ds4_lora;

/* "q,k,v,o,gate,up,down" (also q_proj, ..., and "all") -> DS4_LORA_* bits. */
int  ds4_lora_parse_targets(const char *list, unsigned *mask);
/* "q_proj,k_proj,..." of a mask into buf. */
void ds4_lora_targets_str(unsigned mask, char *buf, size_t n);
/* 1 when base tensor name is one of the targets. */
int  ds4_lora_is_target(const char *name, unsigned mask);

/* A new adapter for m: A uniform in +-1/sqrt(in) (Kaiming-uniform as in
 * PEFT), B zero, so the adapted model equals the base. */
ds4_lora *ds4_lora_create(const ds4_model *m, int rank, float alpha, unsigned targets, uint64_t seed);
void ds4_lora_free(ds4_lora *l);
size_t ds4_lora_n_params(const ds4_lora *l);

/* Write ADAPTER/adapter_model.safetensors and adapter_config.json atomically. */
int ds4_lora_save(const ds4_lora *l, const char *dir);
/* Read an adapter directory. With m, every tensor is checked against m's
 * shapes (errors name the tensor); m NULL skips those checks (base unknown). */
ds4_lora *ds4_lora_load(const ds4_model *m, const char *dir);

/* dst (m's layout) = base + scale * B A on adapted tensors; other tensors of
 * dst are left alone. */
void ds4_lora_effective(const ds4_lora *l, const ds4_model *m, const float *base, float *dst);
/* Chain rule from full weight gradients dW (m's layout) to the adapter:
 * dB = scale * dW A^T, dA = scale * B^T dW; g [l->layout.n_floats] WRITTEN. */
void ds4_lora_grad(const ds4_lora *l, const ds4_model *m, const float *dW, float *g);

/* Attach l to m for inference; m owns l afterwards (freed with m). m may be
 * quantized: the base stays quantized, the adapters run in fp32. */
int ds4_lora_attach(ds4_model *m, ds4_lora *l);
/* The quantized type of m's weight matrices ("q8_0", ...), or NULL when every
 * tensor is fp32 (also for an fp32 GGUF file). */
const char *ds4_model_qtype_name(const ds4_model *m);
/* An fp32 copy of m (quantized tensors dequantized; adapters not copied). */
ds4_model *ds4_model_fp32_copy(const ds4_model *m);
/* W += scale * B A in m's fp32 params; m must not be quantized. */
int ds4_lora_merge(ds4_model *m, const ds4_lora *l);

/* Open a model (ds4_open_model_dir) and, when lora_dir is not NULL, load and
 * attach that adapter. tok may be NULL. */
struct ds4_tokenizer;
int ds4_open_model_lora(const char *dir, const char *lora_dir, ds4_model **m, struct ds4_tokenizer **tok);

/* ---- fine-tuning (finetune.c) --------------------------------------------
 * The base is frozen: each step sets W = W_base + scale * B A in a working
 * copy, runs the training forward/backward (src/train), maps the full weight
 * gradients to A and B (ds4_lora_grad) and updates only those with AdamW. */
typedef struct ds4_lora_ft ds4_lora_ft;

/* base: the frozen model (fp32 or quantized; never written); l: the adapter
 * it trains (kept by the caller). Micro-batches of B sequences of T tokens. */
ds4_lora_ft *ds4_lora_ft_create(const ds4_model *base, ds4_lora *l, int B, int T);
void   ds4_lora_ft_free(ds4_lora_ft *f);
/* Gradient of the mean loss of `accum` micro-batches (ids: accum x B x (T+1)
 * tokens) into the adapter gradient buffer (ds4_lora_ft_grads). Returns the
 * mean loss or NAN. */
double ds4_lora_ft_grad(ds4_lora_ft *f, const int *ids, int accum);
float *ds4_lora_ft_grads(ds4_lora_ft *f);             /* [l->layout.n_floats] */
/* Clip (max_norm > 0) then one AdamW step of A and B; returns the norm before clipping. */
float  ds4_lora_ft_update(ds4_lora_ft *f, ds4_adamw *opt, float lr, float max_norm);
/* Mean loss of one micro-batch with the current adapter (forward only). */
double ds4_lora_ft_loss(ds4_lora_ft *f, const int *ids);
/* The AdamW state sized for the adapter. */
int    ds4_lora_ft_adamw_init(ds4_lora_ft *f, ds4_adamw *opt);
/* That state to / from a safetensors file (ds4_adamw_save / _load). */
int    ds4_lora_ft_adamw_save(ds4_lora_ft *f, const ds4_adamw *opt, const char *path, long step);
int    ds4_lora_ft_adamw_load(ds4_lora_ft *f, ds4_adamw *opt, const char *path, long step);

typedef struct ds4_finetune_opts {
    const char *model_dir;       /* base model directory or GGUF */
    const char *data_path;       /* text (or DS4TOK01 token shard) */
    const char *val_path;        /* text or shard, or NULL */
    const char *out_dir;         /* adapter directory */
    const char *log_path;        /* JSON Lines (default OUT/finetune_log.jsonl) */
    int    rank;
    float  alpha;                /* <= 0: 2 * rank */
    unsigned targets;
    long   steps;
    int    batch, seq, accum;
    float  lr, min_lr_frac;
    long   warmup;               /* -1: 5% of steps */
    float  weight_decay, beta1, beta2, eps, grad_clip;
    uint64_t seed;
    long   eval_every, eval_batches, save_every;
    int    quiet;
    int    resume;               /* continue from out_dir's checkpoint (bit-for-bit) */
    int    rank_given;           /* rank/alpha/targets given on the command line (checked on resume) */
    long   stop_after;           /* stop with a checkpoint after this many steps of this run; 0 = off */
} ds4_finetune_opts;

void ds4_finetune_opts_defaults(ds4_finetune_opts *o);
int  ds4_finetune_run(const ds4_finetune_opts *o);

#endif
