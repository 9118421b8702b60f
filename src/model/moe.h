/* moe.h — Mixture-of-Experts as explicit steps (SPEC §1.2, §5): route →
 * permute tokens by expert → one GEMM per expert → unpermute and combine, so
 * an all-to-all can later slot in between without touching the math. */
#ifndef DS4_MOE_H
#define DS4_MOE_H

#include "model/model.h"

/* Active experts per token: topk_group*topk_per_group (hierarchical) or
 * num_experts_per_tok (flat / DeepSeek-V3 mode). */
int ds4_moe_k(const ds4_config *c);

/* Routing for n tokens. logits [n, E] = W_g x (fp32), bias [E] (NULL = 0).
 * Writes experts [n, k], weights [n, k] (from unbiased scores, normalised if
 * norm_topk_prob, times routed_scaling_factor) and scores [n, E] (s). */
void ds4_moe_route(const ds4_config *c, const float *logits, const float *bias, int n,
                   int *experts, float *weights, float *scores);

/* Permutation by expert: offsets [E+1]; perm_tok/perm_slot [n*k] give the
 * token and slot of each permuted row (stable: tokens in order per expert). */
void ds4_moe_permute(const int *experts, int n, int k, int E, int *offsets,
                     int *perm_tok, int *perm_slot);

/* Routing backward: given dweights [n, k], accumulate dlogits [n, E]. */
void ds4_moe_route_backward(const ds4_config *c, const int *experts, const float *scores,
                            const float *dweights, int n, float *dlogits);

#endif
