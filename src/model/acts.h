/* acts.h — activations saved by the forward pass for the backward pass (and
 * reused as per-layer scratch in inference). n = tokens in the batch. */
#ifndef DS4_ACTS_H
#define DS4_ACTS_H

#include "model/model.h"
#include "model/prune.h"

typedef struct ds4_layer_acts {
    float *x_in;            /* [n, D]    residual stream entering the layer */
    float *xn1, *rstd1;     /* [n, D], [n]  input_layernorm output, 1/rms */
    float *q;               /* [n, H*Dh] roped queries (k, v live in the KV cache) */
    float *kn, *vn;         /* [n, K*Dh] this batch's keys/values (before the cache copy) */
    float *att;             /* [n, H*Dh] attention output */
    float *lse;             /* [n, H]    log-sum-exp per query and head */
    float *x_mid;           /* [n, D]    residual after attention */
    float *xn2, *rstd2;     /* [n, D], [n] post_attention_layernorm output */
    float *g, *u, *h;       /* [n, F]    dense SwiGLU: gate, up, silu(g)*u */
    /* MoE, k = active experts per token */
    float *rlogits;         /* [n, E]    router logits */
    float *scores;          /* [n, E]    unbiased scores */
    int   *experts;         /* [n, k] */
    float *weights;         /* [n, k] */
    int   *offsets;         /* [E+1] */
    int   *perm_tok, *perm_slot; /* [n*k] */
    float *ex;              /* [n*k, D]  gathered inputs */
    float *eg, *eu, *eh;    /* [n*k, Fm] */
    float *ey;              /* [n*k, D]  expert outputs before weighting */
    float *sg, *su, *sh;    /* [n, S*Fm] shared experts */
    float *ffn;             /* [n, D]    FFN output */
    /* MoE training hooks (set by src/train/step.c; NULL/0 in inference) */
    const int *seq;         /* [n] sequence of each token: marks a training forward (aux loss per sequence, capacity) */
    float aux_scale;        /* backward: weight of the aux-loss gradient (the micro-batch's loss scale) */
    float balance;          /* forward output: ds4_moe_balance_stat of this layer (aux loss = alpha * balance) */
    int   over_capacity;    /* forward output: slots kept over capacity (ds4_moe_apply_capacity) */
    /* token pruning (SPEC §1.3), layers with a router. The layer then runs on
     * its nk kept rows only: q, kn, vn, att, lse, x_mid, xn2, g/u/h, MoE and
     * ffn above hold nk compact rows, in batch order. */
    int    nk;              /* rows the layer processed (n when it does not prune) */
    int   *kidx;            /* [n]    batch row of each kept row */
    int   *kpos, *kseq;     /* [n]    position and sequence of each kept row */
    float *prune_r;         /* [n]    router logit r = w_r . xn1 of every token */
    float *prune_y;         /* [n]    top-k membership (1/0), -1 = not a BCE target (position 0) */
    float *gate;            /* [n]    sigmoid(r) of each kept row */
    float *xk;              /* [n, D] xn1 of the kept rows */
    float *ao;              /* [n, D] o_proj(att) of the kept rows, before the gate */
    double prune_bce;       /* forward output: summed BCE over prune_bce_n tokens */
    int    prune_bce_n;
    ds4_prune_counts prune_counts; /* forward output: keep / agreement counters of this forward */
    /* lightning indexer (SPEC §1.4), index_topk > 0; Hi = index_n_heads, Di = index_head_dim */
    float *iq;              /* [n, Hi*Di] roped indexer queries */
    float *ik;              /* [n, Di]    roped, normalised indexer keys (before the cache copy) */
    float *ikraw, *ikrstd;  /* [n, Di], [n] indexer keys before k_norm, 1/rms */
    float *iw;              /* [n, Hi]    head weights (already / sqrt(Hi)) */
    int   *sel;             /* [n, sel_k] keys of each query (rows of its sequence in the cache) */
    double idx_kl;          /* backward output: summed KL(p || softmax(I)) over idx_kl_n queries */
    int    idx_kl_n;
} ds4_layer_acts;

typedef struct ds4_acts {
    int n_cap;                               /* tokens the buffers hold */
    int n_layers;
    ds4_layer_acts l[DS4_MAX_LAYERS];
    float *x_out;                            /* [n, D] final residual stream */
    float *xnf, *rstdf;                      /* [n, D], [n] final norm */
    float *logits;                           /* [n, V] (training; may be NULL in inference) */
    void  *bw;                               /* backward scratch, allocated on first use */
    /* pruning / indexer training modes (SPEC §1.3, §1.4), 0 by default */
    int prune_causal;      /* training forward keeps tokens by the inference rule (validation) */
    int indexer_warmup;    /* dense attention in indexer layers; backward updates only the indexer (KL) */
} ds4_acts;

/* Allocate buffers for n tokens; n_layers = L for training (every layer
 * saved) or 1 for inference scratch (one layer reused). */
ds4_acts *ds4_acts_create(const ds4_config *c, int n, int n_layers, int with_logits);
void ds4_acts_free(ds4_acts *a);

struct ds4_kv_cache;
struct ds4_batch;
/* The one forward pass. acts == NULL: inference (scratch allocated inside).
 * acts != NULL: every layer's activations are saved for ds4_backward and
 * acts->logits gets all n rows (out_rows/logits ignored). */
int ds4_forward_impl(const ds4_model *m, const struct ds4_batch *b, struct ds4_kv_cache *kv,
                     ds4_acts *acts, const int *out_rows, int n_out, float *logits);

/* Backward of ds4_forward_impl for a training batch (every sequence's cache
 * slot was empty before the forward). dlogits [n, V]; grads: a buffer with the
 * model's layout, ACCUMULATED into. */
void ds4_backward_scratch_free(void *bw);

/* Scratch gradients for one layer (n tokens). */
typedef struct ds4_bw_scratch {
    float *dx, *dxn, *datt;                  /* [n,D] [n,D] [n,Q] */
    float *dq, *dk, *dv;                     /* views of one [n, Q+2KD] buffer owned by dq: rows [dq|dk|dv] */
    float *dh, *dg, *du;                     /* [n,F] dense or [n,S] shared; dg holds [n,2F] */
    float *dey, *deh, *deg, *deu, *dex;      /* [n*k,D] [n*k,Fm] x3 [n*k,D] */
    float *dweights, *drlogits;              /* [n,k] [n,E] */
    /* pruned layers: compact d(out), gate-scaled dy, full-row d(xn1), dgate, d(router logit) */
    float *cdx, *cdy, *dxf, *dgate, *dr;     /* [n,D] [n,D] [n,D] [n] [n] */
    /* indexer loss: d q_I, d w, d k_I (post-norm), d k_I (pre-norm) */
    float *diq, *diw, *dik, *dikraw;         /* [n,Hi*Di] [n,Hi] [n,Di] [n,Di] */
} ds4_bw_scratch;

/* SwiGLU FFN y[n,D] = down(silu(gate x) * up x); gate/up [F,D], down [D,F];
 * g, u, h [n,F] saved. acc: y += instead of y =. */
void ds4_swiglu_ffn(float *y, const float *x, const float *wg, const float *wu, const float *wd,
                    float *g, float *u, float *h, int n, int D, int F, int acc);
/* Its backward; dx ACCUMULATES, dh/dg/du are scratch [n,F]. */
void ds4_swiglu_ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, const float *dy,
                             const float *x, const float *wg, const float *wu, const float *wd,
                             const float *g, const float *u, const float *h,
                             float *dh, float *dg, float *du, int n, int D, int F);
/* MoE FFN of layer W on x [n,D] into A->ffn, saving routing and expert activations in A. */
void ds4_moe_forward(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const float *x, int n);
/* Its backward: dy [n,D] gradient of A->ffn; dx [n,D] accumulates; G: gradient pointers. */
void ds4_moe_backward(const ds4_config *c, const ds4_layer *W, ds4_layer *G, const ds4_layer_acts *A,
                      const float *x, const float *dy, float *dx, ds4_bw_scratch *s, int n);
int ds4_backward(const ds4_model *m, const struct ds4_batch *b, const struct ds4_kv_cache *kv,
                 ds4_acts *acts, const float *dlogits, float *grads);

#endif
