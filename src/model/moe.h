/* moe.h — Mixture-of-Experts as explicit steps (SPEC §1.2, §5): route →
 * permute tokens by expert → one GEMM per expert → unpermute and combine, so
 * an all-to-all can later slot in between without touching the math. Also the
 * load balancing (bias update, sequence-wise aux loss, capacity) and the
 * utilization / communication metrics. */
#ifndef DS4_MOE_H
#define DS4_MOE_H

#include <stdint.h>
#include "model/model.h"

/* ---- routing (moe.c) ------------------------------------------------------ */

/* Active experts per token: topk_group*topk_per_group (hierarchical) or
 * num_experts_per_tok (flat / DeepSeek-V3 mode). */
int ds4_moe_k(const ds4_config *c);

/* Routing for n tokens. logits [n, E] = W_g x (fp32), bias [E] (NULL = 0).
 * Writes experts [n, k], weights [n, k] (from unbiased scores, normalised if
 * norm_topk_prob, times routed_scaling_factor) and scores [n, E] (s).
 * Ties go to the lower index (groups and experts alike). Experts are listed
 * group by group (chosen groups in descending group score), best first. */
void ds4_moe_route(const ds4_config *c, const float *logits, const float *bias, int n,
                   int *experts, float *weights, float *scores);

/* Tier 1 for one token: the topk_group chosen groups [topk_group] from the
 * biased scores sel [E], by descending sum of each group's top-min(2, E/G). */
void ds4_moe_route_groups(const ds4_config *c, const float *sel, int *groups);

/* Routing weights [k] of one token from its unbiased scores s [E] and experts [k]. */
void ds4_moe_route_weights(const ds4_config *c, const float *s, const int *experts, float *weights);

/* Capacity (expert_capacity_factor > 0) for a batch of n tokens:
 * ceil(capacity_factor * n * k / E), at least 1; 0 when capacity is off. */
int ds4_moe_capacity(const ds4_config *c, int n);

/* Enforce capacity cap on a routing (experts, weights [n, k] from
 * ds4_moe_route with the same scores [n, E] and bias [E]): slots are visited
 * rank by rank (every token's first expert before any second), tokens in
 * order; a slot whose expert already holds cap rows moves to the token's
 * best (biased score) expert inside its chosen groups that is neither full nor
 * already one of its experts, and the token's weights are recomputed. No token
 * is ever dropped: if every candidate is full the slot keeps its expert over
 * capacity. Returns the number of such over-capacity slots. */
int ds4_moe_apply_capacity(const ds4_config *c, const float *scores, const float *bias, int n, int cap,
                           int *experts, float *weights);

/* Permutation by expert: offsets [E+1]; perm_tok/perm_slot [n*k] give the
 * token and slot of each permuted row (stable: tokens in order per expert). */
void ds4_moe_permute(const int *experts, int n, int k, int E, int *offsets,
                     int *perm_tok, int *perm_slot);

/* Routing backward: given dweights [n, k], accumulate dlogits [n, E]. */
void ds4_moe_route_backward(const ds4_config *c, const int *experts, const float *scores,
                            const float *dweights, int n, float *dlogits);

/* ---- the MoE FFN forward as explicit steps (moe.c) ---------------------------
 * ds4_moe_forward (acts.h) runs them in this order; an expert-parallel
 * all-to-all slots in after dispatch and before combine. A is the layer's
 * saved activations, x [n, D] its input. */
struct ds4_layer_acts;
/* Router logits, routing; in a training forward (A->seq set) also capacity
 * and the balance statistic. */
void ds4_moe_fwd_route(const ds4_config *c, const ds4_layer *W, struct ds4_layer_acts *A, const float *x, int n);
/* Permutation by expert and the gathered expert inputs A->ex [n*k, D]. */
void ds4_moe_fwd_dispatch(const ds4_config *c, struct ds4_layer_acts *A, const float *x, int n);
/* Routed expert SwiGLUs into A->ey [n*k, D] and the shared experts into A->ffn
 * [n, D] (zero without shared experts), small experts concurrently. */
void ds4_moe_fwd_experts(const ds4_config *c, const ds4_layer *W, struct ds4_layer_acts *A, const float *x, int n);
/* A->ffn += sum over each token's k slots of weight * expert output. */
void ds4_moe_fwd_combine(const ds4_config *c, struct ds4_layer_acts *A, int n);

/* ---- load balancing (moe_balance.c) --------------------------------------- */

/* Sequence-wise balance statistic (DeepSeek-V3 / Switch form), averaged over
 * the sequences of the batch (runs of equal seq [n]; seq NULL = one sequence):
 *   E * sum_i f_i * P_i,  f_i = (token-slots of the sequence routed to i) / (k T),
 *   P_i = mean over the sequence's T tokens of s_i / sum_j s_j.
 * Balanced routing gives 1; the auxiliary loss is aux_loss_alpha times this.
 * scores [n, E], experts [n, k]. */
double ds4_moe_balance_stat(const ds4_config *c, const float *scores, const int *experts,
                            const int *seq, int n);
/* Its gradient with respect to the router logits (f_i held constant, as in
 * DeepSeek-V3): dlogits [n, E] += scale * d stat / d logits. */
void ds4_moe_balance_stat_backward(const ds4_config *c, const float *scores, const int *experts,
                                   const int *seq, int n, float scale, float *dlogits);

/* Load-bias update of one layer: b_i += u * sign(mean(load) - load_i), with
 * bias [E], load [E] (token-slots per expert over one optimizer step). */
void ds4_moe_bias_update(float *bias, const int64_t *load, int E, float u);

/* Scheduled load-bias rate for optimizer step `step` (0-based) of `total`:
 * u (router_bias_update_rate, SPEC §1.2; constant by default), times
 * lr_frac (the step's learning rate over the peak) when follow_lr, and 0 in
 * the last freeze_frac of the steps (DeepSeek-V3 used 0 for its last ~3% of
 * tokens). The update rule itself stays b_i += rate * sign(mean - load_i). */
float ds4_moe_bias_rate_scheduled(float u, long step, long total, int follow_lr, float lr_frac, float freeze_frac);

/* Options beside the SPEC rule (ds4 bench moe --bias-every / --bias-ema): the
 * sign rule on loads measured over a longer window than one step. win [E]
 * accumulates per-step loads: with beta = 0 it sums them (the caller applies
 * the update every K steps and starts a new window with first = 1), with
 * 0 < beta < 1 it is an EMA, win = beta * win + (1 - beta) * load (first = 1:
 * win = load). ds4_moe_bias_update_window then applies
 * b_i += u * sign(mean(win) - win_i); on one step's loads it equals
 * ds4_moe_bias_update. */
void ds4_moe_load_window_add(double *win, const int64_t *load, int E, double beta, int first);
void ds4_moe_bias_update_window(float *bias, const double *load, int E, float u);

struct ds4_acts;
/* Add the per-expert loads of the last training forward (acts of every
 * layer) into loads [L, E] (rows of dense layers untouched). */
void ds4_moe_loads_add(const ds4_config *c, const struct ds4_acts *a, int64_t *loads);
/* Bias update of every MoE layer of m from loads [L, E], when
 * router_bias_update_rate > 0 (otherwise nothing). */
void ds4_moe_bias_update_model(ds4_model *m, const int64_t *loads);
/* Sum over MoE layers of their balance statistic in the last training forward. */
double ds4_moe_balance_stat_sum(const ds4_config *c, const struct ds4_acts *a);

/* ---- metrics (moe_stats.c) ------------------------------------------------ */

typedef struct ds4_moe_load_stats {
    int64_t total;        /* token-slots */
    double  mean, max, min;
    double  utilization;  /* mean(load) / max(load) = 1 / (1 + max_vio) */
    double  max_vio;      /* (max - mean) / mean */
    double  cv;           /* coefficient of variation: population std / mean */
    int     dead;         /* experts with load 0 */
} ds4_moe_load_stats;

void ds4_moe_load_stats_of(const int64_t *load, int E, ds4_moe_load_stats *st);

/* Expert-parallel placement (SPEC §1.2): R ranks, expert e on rank e / (E/R)
 * (with groups: G/R contiguous groups per rank). A token lives on rank
 * (t mod R), t its index in the evaluated stream: tokens sharded round-robin,
 * as a data-parallel batch would be. Returns -1 (error set) if the placement
 * is impossible: R < 1, or R does not divide n_group (n_routed_experts when
 * n_group is 1). */
int ds4_moe_placement_check(const ds4_config *c, int R);

/* Communication counters, summed over tokens. */
typedef struct ds4_moe_comm {
    int64_t tokens;
    int64_t ranks;        /* distinct ranks holding the token's experts */
    int64_t remote;       /* of those, ranks other than the token's own */
} ds4_moe_comm;
/* Count n tokens (global indices t0 .. t0+n) with experts [n, k] over E experts on R ranks. */
void ds4_moe_comm_add(ds4_moe_comm *acc, const int *experts, int n, int k, int E, int R, int64_t t0);
/* Dispatch bytes per token: remote ranks x hidden x bytes per element (combine is the same). */
double ds4_moe_comm_dispatch_bytes(const ds4_moe_comm *acc, int hidden, int elem_bytes);

/* Expected distinct ranks when m of U units (groups, or experts for flat
 * routing), U/R per rank, are chosen uniformly without replacement:
 * R * (1 - C(U - U/R, m) / C(U, m)). Remote ranks: times (R - 1) / R. */
double ds4_moe_expected_ranks(int U, int R, int m);

/* Flat top-k routing with the same number of active experts as c (for the
 * communication comparison): n_group 1, num_experts_per_tok = ds4_moe_k(c). */
void ds4_moe_flat_config(const ds4_config *c, ds4_config *flat);

#define DS4_MOE_MAX_RANKS 16

/* Routing statistics of a model on a token stream (the inference path,
 * dropless). load [L, E] (zero rows for dense layers); comm / flat_comm per
 * layer and rank count: the model's routing and flat top-k of the same
 * biased scores on the same placement. */
typedef struct ds4_moe_report {
    int     n_layers, E, k, hidden;
    int     is_moe[DS4_MAX_LAYERS];
    int     n_ranks;
    int     ranks[DS4_MOE_MAX_RANKS];
    int64_t tokens;
    int64_t *load;                                       /* [L, E] */
    ds4_moe_comm comm[DS4_MAX_LAYERS][DS4_MOE_MAX_RANKS];
    ds4_moe_comm flat_comm[DS4_MAX_LAYERS][DS4_MOE_MAX_RANKS];
    double  loss;                                        /* mean next-token loss on the stream */
} ds4_moe_report;

/* Run m over ids [n] in windows of seq_len tokens (each from position 0) and
 * fill r; the caller sets r->n_ranks and r->ranks first (each checked with
 * ds4_moe_placement_check). Free with ds4_moe_report_free. */
int  ds4_moe_measure(const ds4_model *m, const int *ids, size_t n, int seq_len, ds4_moe_report *r);
/* Pool src into dst (same model and ranks, both measured): loads and
 * communication counters add, loss becomes the token-weighted mean.
 * Returns -1 (error set) if the shapes or rank lists differ. */
int  ds4_moe_report_add(ds4_moe_report *dst, const ds4_moe_report *src);
void ds4_moe_report_free(ds4_moe_report *r);

#endif
