/* indexer.h — the lightning indexer of indexed sparse attention (SPEC §1.4,
 * DeepSeek-V3.2 DSA form): projections, scores
 *   I[t,s] = sum_h w[t,h] relu(q_I[t,h] · k_I[s]) / sqrt(Di),
 * the per-query key selection (top index_topk causal keys, plus the sliding
 * window, dense while a query has at most index_topk keys), and the
 * training loss KL(p_dense || softmax(I)) with its gradient. Hi =
 * index_n_heads, Di = index_head_dim. */
#ifndef DS4_INDEXER_H
#define DS4_INDEXER_H

#include <stddef.h>
#include "model/model.h"

/* Width of a query's key list: index_topk + sliding_window (0 without indexer). */
int ds4_indexer_sel_k(const ds4_config *c);

/* Projections of n tokens of the layer's normalised input x [n, D] at
 * positions pos [n]: q [n, Hi*Di] = rope(wq x); kraw [n, Di] = wk x,
 * krstd [n] its 1/rms, k [n, Di] = rope(rmsnorm_{k_norm}(kraw));
 * w [n, Hi] = weights_proj x / sqrt(Hi). */
void ds4_indexer_project(const ds4_config *c, const ds4_layer *W, const float *x, const int *pos, int n,
                         float *q, float *k, float *kraw, float *krstd, float *w);

/* Indexer keys of one sequence are stored in blocks of DS4_IDX_BLOCK keys,
 * each block lane-major [Di, DS4_IDX_BLOCK], so scoring streams them with no
 * transpose: element d of key j lives at
 *   (j / B) * B * Di + d * B + j % B,   B = DS4_IDX_BLOCK.
 * A buffer for n keys holds ds4_indexer_keys_floats(n, Di) floats. */
#define DS4_IDX_BLOCK 32
static inline size_t ds4_indexer_keys_floats(int n, int Di) {
    return (size_t)(n + DS4_IDX_BLOCK - 1) / DS4_IDX_BLOCK * DS4_IDX_BLOCK * Di;
}
/* Store key row k [Di] as key j of the blocked buffer kb. */
void ds4_indexer_key_put(float *kb, int j, const float *k, int Di);

/* Scores I [n_kv] of one query (q [Hi*Di], w [Hi]) over the blocked keys kb.
 * Each score is computed the same way whatever the batch (prefill and decode
 * select the same keys). */
void ds4_indexer_scores(const float *q, const float *w, int Hi, int Di, const float *kb, int n_kv, float *I);

/* Indices of the top k of I [n] (ties to the lower index), in increasing
 * index order, into out [k]; n <= k: all of 0..n-1. Returns the count.
 * scratch: at least DS4_IDX_TOPK_SCRATCH(n) bytes. */
#define DS4_IDX_TOPK_SCRATCH(n) (3 * (size_t)(n) * sizeof(float))
int ds4_indexer_topk(const float *I, int n, int k, int *out, void *scratch);

/* Key lists of nq queries (iq [nq, Hi*Di], iw [nq, Hi], positions qpos) over
 * one sequence's n_kv cached keys (kb blocked as above, positions kpos,
 * strictly increasing): sel [nq, ds4_indexer_sel_k(c)], indices into the keys in
 * increasing order, -1 in unused slots. A query whose causal keys (kpos <=
 * qpos) number at most index_topk gets all of them; otherwise the top
 * index_topk of them by I, plus every key with qpos - kpos < sliding_window.
 * Parallel (OpenMP) over queries and, for few queries, over keys. */
int ds4_indexer_select(const ds4_config *c, const float *iq, const float *iw, int nq, const int *qpos,
                       const float *kb, const int *kpos, int n_kv, int *sel);

/* One sequence segment of a training layer, for the indexer loss. */
typedef struct ds4_indexer_seg {
    int nq;                 /* queries */
    const int *qpos;        /* [nq] */
    const float *q;         /* [nq, H*Dh] main attention queries (roped) */
    const float *lse;       /* [nq, H]    their log-sum-exp (incl. sink) */
    int n_kv;               /* keys of the sequence in this layer */
    const int *kpos;        /* [n_kv] */
    const float *k;         /* [n_kv, K*Dh] main keys (roped) */
    const float *iq;        /* [nq, Hi*Di] */
    const float *iw;        /* [nq, Hi] */
    const float *ik;        /* [n_kv, Di] indexer keys, row-major */
    const int *sel;         /* [nq, sel_k] the keys attended; NULL: every causal key (dense) */
    int sel_k;
    int H, K, Dh, Hi, Di;
} ds4_indexer_seg;

/* Sum over the segment's queries of KL(p || softmax(I)) over each query's
 * attended keys, p = sum over heads of the main attention probabilities,
 * normalised (a constant: no gradient reaches the main model). With
 * scale != 0, dI = scale * (softmax(I) - p) is propagated into diq
 * [nq, Hi*Di], diw [nq, Hi] and dik [n_kv, Di] (accumulated). */
double ds4_indexer_kl(const ds4_indexer_seg *s, float scale, float *diq, float *diw, float *dik);

#endif
