/* cost.h — cost accounting per token: FLOPs by component, weight bytes read
 * and KV-cache bytes, from a config alone, so benchmarks and `ds4 eval`/`ds4
 * info` can show where time and memory go. */
#ifndef DS4_COST_H
#define DS4_COST_H

#include "ds4.h"

typedef struct ds4_cost {
    double attn_proj;       /* q, k, v, o projections */
    double attn_core;       /* QK^T and PV over ctx keys */
    double ffn;             /* dense SwiGLU, routed experts (active only), shared experts */
    double router;          /* MoE router */
    double lm_head;
    double total;           /* forward FLOPs per token */
    double weight_bytes;    /* fp32 weight bytes read per decoded token */
    double kv_bytes;        /* KV-cache bytes per token of context (all layers) */
} ds4_cost;

/* Forward cost of one token attending to ctx keys. Training ~ 3x forward. */
void ds4_cost_per_token(const ds4_config *c, double ctx, ds4_cost *out);

#endif
