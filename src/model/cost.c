/* cost.c — analytic FLOP and byte counts per token for a config (see cost.h),
 * with token pruning and indexed sparse attention. */
#include <string.h>
#include "model/cost.h"
#include "model/moe.h"
#include "model/prune.h"

void ds4_cost_layers(const ds4_config *c, double ctx, const double *keep, ds4_layer_cost *layers,
                     ds4_cost *o) {
    const double D = c->hidden_size, Q = (double)c->num_attention_heads * c->head_dim;
    const double KD = (double)c->num_key_value_heads * c->head_dim;
    const double k = ds4_moe_k(c), Fm = c->moe_intermediate_size, S = c->n_shared_experts * Fm;
    const int indexed = c->index_topk > 0;
    const double Hi = indexed ? c->index_n_heads : 0, Di = indexed ? c->index_head_dim : 0;
    *o = (ds4_cost){0};
    double params = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        ds4_layer_cost lc;
        memset(&lc, 0, sizeof lc);
        const double rho = ds4_prune_ratio(c, l);
        lc.keep = keep ? keep[l] : 1.0 - rho;
        lc.keys = lc.keep * ctx;
        /* keys a query attends: all cached keys, or the window's kept keys, or top-k + window */
        const double win = c->sliding_window > 0 ? lc.keep * c->sliding_window : 0;
        lc.attended = lc.keys;
        if (indexed) {
            if (lc.keys > c->index_topk) lc.attended = c->index_topk + win < lc.keys ? c->index_topk + win : lc.keys;
        } else if (win > 0 && win < lc.keys) {
            lc.attended = win;
        }
        const double ap = D * Q * 2 + D * KD * 2;
        double lp = ap + 2 * D;                              /* layer weights, excl. router/indexer */
        lc.attn_proj = lc.keep * 2 * ap;
        lc.attn_core = lc.keep * 2.0 * 2.0 * lc.attended * Q;
        if (indexed) {
            const double ip = D * (Hi * Di + Di + Hi) + Di;
            lc.indexer = lc.keep * (2 * ip + 2.0 * (Hi * Di + Hi) * lc.keys);
            lp += ip;
        }
        if (!ds4_layer_is_moe(c, l)) {
            lc.ffn = lc.keep * 2 * 3 * D * c->intermediate_size;
            lp += 3 * D * c->intermediate_size;
        } else {
            lc.router = lc.keep * 2 * D * c->n_routed_experts;
            lc.ffn = lc.keep * 2 * 3 * D * (k * Fm + S);
            lp += D * c->n_routed_experts + 3 * D * (k * Fm + S);
        }
        if (rho > 0) lc.prune_router = 2 * D;
        lc.total = lc.attn_proj + lc.attn_core + lc.indexer + lc.ffn + lc.router + lc.prune_router;
        lc.weight_bytes = 4 * (lc.keep * lp + (rho > 0 ? D : 0));
        lc.kv_bytes = lc.keep * (2 * KD + Di) * 4;
        o->attn_proj += lc.attn_proj;
        o->attn_core += lc.attn_core;
        o->indexer += lc.indexer;
        o->ffn += lc.ffn;
        o->router += lc.router;
        o->prune_router += lc.prune_router;
        o->kv_bytes += lc.kv_bytes;
        params += lc.weight_bytes / 4;
        if (layers) layers[l] = lc;
    }
    o->lm_head = 2 * D * c->vocab_size;
    params += D * c->vocab_size + D + D;    /* lm_head, final norm, one embedding row */
    o->total = o->attn_proj + o->attn_core + o->indexer + o->ffn + o->router + o->prune_router + o->lm_head;
    o->weight_bytes = params * 4;
}

void ds4_cost_per_token(const ds4_config *c, double ctx, ds4_cost *o) {
    ds4_cost_layers(c, ctx, NULL, NULL, o);
}
