/* cost.c — analytic FLOP and byte counts per token for a config (see cost.h). */
#include "model/cost.h"
#include "model/moe.h"

void ds4_cost_per_token(const ds4_config *c, double ctx, ds4_cost *o) {
    const double D = c->hidden_size, Q = (double)c->num_attention_heads * c->head_dim;
    const double KD = (double)c->num_key_value_heads * c->head_dim;
    const double k = ds4_moe_k(c), Fm = c->moe_intermediate_size, S = c->n_shared_experts * Fm;
    *o = (ds4_cost){0};
    double params = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const double ap = D * Q * 2 + D * KD * 2;
        o->attn_proj += 2 * ap;
        o->attn_core += 2.0 * 2.0 * ctx * Q;
        params += ap + 2 * D;
        if (!ds4_layer_is_moe(c, l)) {
            o->ffn += 2 * 3 * D * c->intermediate_size;
            params += 3 * D * c->intermediate_size;
        } else {
            o->router += 2 * D * c->n_routed_experts;
            o->ffn += 2 * 3 * D * (k * Fm + S);
            params += D * c->n_routed_experts + 3 * D * (k * Fm + S);
        }
    }
    o->lm_head = 2 * D * c->vocab_size;
    params += D * c->vocab_size + D + D;    /* lm_head, final norm, one embedding row */
    o->total = o->attn_proj + o->attn_core + o->ffn + o->router + o->lm_head;
    o->weight_bytes = params * 4;
    o->kv_bytes = 2 * KD * 4 * c->num_hidden_layers;
}
