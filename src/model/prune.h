/* prune.h — dynamic token pruning (SPEC §1.3, Mixture-of-Depths style): the
 * per-layer router r = w_r · x, the training rule (top ceil((1-rho)T) tokens
 * of a sequence), the causal inference rule (sigmoid(r) > 0.5), the BCE loss
 * that teaches the causal rule, agreement counters and the default schedule. */
#ifndef DS4_PRUNE_H
#define DS4_PRUNE_H

#include <stddef.h>
#include <stdint.h>
#include "model/model.h"

/* Ratio rho of layer l (0 when l is not listed or listed with 0: no router). */
float ds4_prune_ratio(const ds4_config *c, int l);
/* 1 if some layer prunes (has a router). */
int ds4_prune_any(const ds4_config *c);

/* Tokens kept by the training rule in a sequence of T tokens:
 * ceil((1 - rho) * T), at least 1 (position 0 is always among them). */
int ds4_prune_keep_count(float rho, int T);

/* Training rule for one sequence segment of T tokens with router logits r [T]
 * and positions pos [T]: keep [T] gets 1 for the top ds4_prune_keep_count(rho,
 * T) tokens by r (ties to the earlier token), 0 for the others. A token at
 * position 0 is always kept and counts towards the budget. */
void ds4_prune_topk(const float *r, const int *pos, int T, float rho, unsigned char *keep);

/* Inference rule (prefill and decode alike): keep iff sigmoid(r) > 0.5, i.e.
 * r > 0. Position 0 is always kept, as in training. */
static inline int ds4_prune_causal_keep(float r, int pos) { return pos == 0 || r > 0.0f; }

/* Binary cross-entropy of sigmoid(r) against targets y [n] (1 = top-k
 * member, 0 = dropped, < 0 = not counted: position 0). Returns the summed
 * loss over counted tokens and their number in *count; if dr != NULL, dr[i]
 * += scale * (sigmoid(r[i]) - y[i]) for counted tokens. Numerically stable
 * for any r. */
double ds4_prune_bce(const float *r, const float *y, int n, float *dr, float scale, int *count);

/* Counters of one layer: tokens seen, kept, and (where top-k membership was
 * known) how often the causal rule agrees with it. */
typedef struct ds4_prune_counts {
    int64_t tokens;     /* tokens that reached the router */
    int64_t kept;       /* tokens the layer processed */
    int64_t scored;     /* tokens compared (position > 0, membership known) */
    int64_t agree;      /* of those, causal decision == top-k membership */
} ds4_prune_counts;

/* Count one segment: r [T], pos [T], the top-k membership topk [T] (NULL:
 * agreement not scored), kept [T] the decisions actually applied. */
void ds4_prune_count(ds4_prune_counts *pc, const float *r, const int *pos, const unsigned char *topk,
                     const unsigned char *kept, int T);

/* Inference-rule statistics of a model on a token stream: ids [n] in windows
 * of T tokens, each fed from position 0 through ds4_forward (causal keep
 * rule, sparse attention, exactly as deployed); per-layer counters into
 * counts [num_hidden_layers] (zeroed first). Agreement with top-k
 * membership is scored within each window. For `ds4 eval` and benchmarks. */
int ds4_prune_eval(const ds4_model *m, const int *ids, size_t n, int T, ds4_prune_counts *counts);

/* The same counters and, in the same pass, the validation loss: windows as
 * ds4_eval_tokens (start every T tokens, feed ids[s .. s+len) with len =
 * min(T, n - 1 - s), predict ids[s+1 .. s+len]); *loss = mean cross-entropy
 * in nats over the *predicted tokens. counts may be NULL. */
int ds4_prune_eval_loss(const ds4_model *m, const int *ids, size_t n, int T, ds4_prune_counts *counts,
                        double *loss, long *predicted);

/* SPEC §1.3 default schedule: no pruning in the first half of the layers
 * (l < L/2), then a linear ramp reaching max_ratio in the last layer.
 * Overwrites c->prune_layers / prune_ratio (max_ratio 0: no pruning). */
void ds4_prune_default_schedule(ds4_config *c, float max_ratio);

/* Freeze every tensor but the lightning indexer for the indexer warm-up
 * (SPEC §1.4): on = 1 saves each tensor's trainable flag into saved
 * [layout.n_tensors] and clears it for non-indexer tensors; on = 0 restores. */
void ds4_layout_indexer_only(ds4_layout *lay, unsigned char *saved, int on);

#endif
