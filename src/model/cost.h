/* cost.h — cost accounting per token: FLOPs by component, weight bytes read
 * and KV-cache bytes, from a config alone, so benchmarks and `ds4 eval`/`ds4
 * info` can show where time and memory go. Token pruning (SPEC §1.3) and
 * indexed sparse attention / sliding windows (SPEC §1.4) are taken into
 * account: a layer that keeps a fraction k of the tokens costs k of its
 * projections, attention and FFN per token (its router is paid by every
 * token) and holds k of the KV rows; a query of an indexed layer attends to
 * at most index_topk keys plus the window, after the indexer scored them all. */
#ifndef DS4_COST_H
#define DS4_COST_H

#include "ds4.h"

typedef struct ds4_cost {
    double attn_proj;       /* q, k, v, o projections */
    double attn_core;       /* QK^T and PV over the attended keys */
    double ffn;             /* dense SwiGLU, routed experts (active only), shared experts */
    double router;          /* MoE router */
    double lm_head;
    double total;           /* forward FLOPs per token */
    double weight_bytes;    /* fp32 weight bytes read per decoded token */
    double kv_bytes;        /* KV-cache bytes per token of context (all layers) */
    double indexer;         /* lightning indexer: projections + scores over the cached keys */
    double prune_router;    /* token-pruning routers (paid by every token) */
} ds4_cost;

/* One layer, per token of the stream at context ctx. */
typedef struct ds4_layer_cost {
    double keep;            /* fraction of tokens the layer processes */
    double keys;            /* rows of its KV cache: keep * ctx */
    double attended;        /* keys one query attends to */
    double attn_proj, attn_core, indexer, ffn, router, prune_router;
    double total;           /* FLOPs per token (all of the above) */
    double weight_bytes;    /* fp32 weight bytes read per decoded token (keep * layer weights + router) */
    double kv_bytes;        /* KV-cache bytes per token of context (K, V, indexer key) */
} ds4_layer_cost;

/* Forward cost of one token at context ctx (keys before it), with the
 * config's nominal keep fractions 1 - prune_ratio. Training ~ 3x forward. */
void ds4_cost_per_token(const ds4_config *c, double ctx, ds4_cost *out);

/* The same with measured keep fractions keep [L] (NULL: nominal), and the
 * per-layer breakdown into layers [L] (may be NULL). */
void ds4_cost_layers(const ds4_config *c, double ctx, const double *keep, ds4_layer_cost *layers,
                     ds4_cost *out);

#endif
