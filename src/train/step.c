/* step.c — one training micro-batch: forward with saved activations, softmax
 * cross-entropy, backward into the gradient buffer; and forward-only loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/forward.h"
#include "model/moe.h"
#include "train/train.h"
#include "util/util.h"

struct ds4_train_ctx {
    int B, T;
    ds4_acts *acts;
    ds4_kv_cache *kv;
    int *tokens, *seq, *targets;     /* [B*T] */
    /* MoE balancing (SPEC §1.2), reset by ds4_train_ctx_moe_step */
    int64_t *moe_loads;              /* [L, E] token-slots per expert over the step's micro-batches */
    double moe_balance;              /* sum over micro-batches of the layers' summed balance statistic */
    long moe_micro;                  /* micro-batches counted */
    /* token pruning / indexer (SPEC §1.3, §1.4), reset by ds4_train_ctx_prune_step */
    ds4_prune_counts prune;          /* keep / agreement counters over pruned layers */
    double prune_bce, idx_kl;        /* sums of the layers' mean BCE / KL over micro-batches */
    long prune_micro;
};

ds4_train_ctx *ds4_train_ctx_create(const ds4_model *m, int B, int T) {
    ds4_train_ctx *t = ds4_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->B = B;
    t->T = T;
    const int n = B * T;
    t->acts = ds4_acts_create(&m->cfg, n, m->cfg.num_hidden_layers, 1);
    t->kv = ds4_kv_cache_create(&m->cfg, B, T);
    t->tokens = ds4_calloc((size_t)n, sizeof(int));
    t->seq = ds4_calloc((size_t)n, sizeof(int));
    t->targets = ds4_calloc((size_t)n, sizeof(int));
    if (!t->acts || !t->kv || !t->tokens || !t->seq || !t->targets) { ds4_train_ctx_free(t); return NULL; }
    for (int i = 0; i < n; i++) t->seq[i] = i / T;
    if (m->cfg.n_routed_experts > 0) {      /* MoE hook: training forwards know their sequences */
        t->moe_loads = ds4_calloc((size_t)m->cfg.num_hidden_layers * m->cfg.n_routed_experts, sizeof(int64_t));
        if (!t->moe_loads) { ds4_train_ctx_free(t); return NULL; }
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) t->acts->l[l].seq = t->seq;
    }
    return t;
}

void ds4_train_ctx_free(ds4_train_ctx *t) {
    if (!t) return;
    ds4_acts_free(t->acts);
    ds4_kv_cache_free(t->kv);
    free(t->tokens); free(t->seq); free(t->targets);
    free(t->moe_loads);
    free(t);
}

static int run_forward(ds4_train_ctx *t, const ds4_model *m, const int *ids, ds4_batch *b) {
    const int B = t->B, T = t->T;
    for (int s = 0; s < B; s++) {
        ds4_kv_cache_reset_seq(t->kv, s);
        for (int i = 0; i < T; i++) {
            t->tokens[s * T + i] = ids[s * (T + 1) + i];
            t->targets[s * T + i] = ids[s * (T + 1) + i + 1];
        }
    }
    for (int i = 0; i < B * T; i++)
        if (t->targets[i] < 0 || t->targets[i] >= m->cfg.vocab_size) {
            ds4_set_error("training data: token id %d outside the vocabulary of %d", t->targets[i], m->cfg.vocab_size);
            return -1;
        }
    *b = (ds4_batch){.n = B * T, .tokens = t->tokens, .seq = t->seq};
    return ds4_forward_impl(m, b, t->kv, t->acts, NULL, 0, NULL);
}

double ds4_train_ctx_step(ds4_train_ctx *t, const ds4_model *m, const int *ids, float *grads,
                          float loss_scale) {
    ds4_batch b;
    if (run_forward(t, m, ids, &b) != 0) return NAN;
    const int n = b.n;
    float *lg = t->acts->logits;          /* [n, V]: becomes dlogits in place */
    double loss = ds4_softmax_xent(lg, lg, t->targets, n, m->cfg.vocab_size, loss_scale / (float)n);
    if (t->moe_loads) {                     /* MoE hook: aux-loss gradient weight, step loads */
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) t->acts->l[l].aux_scale = loss_scale;
        ds4_moe_loads_add(&m->cfg, t->acts, t->moe_loads);
        t->moe_balance += ds4_moe_balance_stat_sum(&m->cfg, t->acts);
        t->moe_micro++;
    }
    /* pruning BCE and indexer KL: their gradients carry the micro-batch's scale too */
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) t->acts->l[l].aux_scale = loss_scale;
    if (ds4_backward(m, &b, t->kv, t->acts, lg, grads) != 0) return NAN;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const ds4_layer_acts *A = &t->acts->l[l];
        if (A->prune_bce_n > 0) {
            t->prune.tokens += A->prune_counts.tokens; t->prune.kept += A->prune_counts.kept;
            t->prune.scored += A->prune_counts.scored; t->prune.agree += A->prune_counts.agree;
            t->prune_bce += A->prune_bce / A->prune_bce_n;
        }
        if (m->cfg.index_topk > 0 && A->idx_kl_n > 0) t->idx_kl += A->idx_kl / A->idx_kl_n;
    }
    t->prune_micro++;
    return loss / n;
}

ds4_acts *ds4_train_ctx_acts(ds4_train_ctx *t) { return t->acts; }

void ds4_train_ctx_shape(const ds4_train_ctx *t, int *B, int *T) { *B = t->B; *T = t->T; }

void ds4_train_ctx_prune_step(ds4_train_ctx *t, ds4_prune_step_stats *st) {
    memset(st, 0, sizeof *st);
    st->counts = t->prune;
    if (t->prune_micro) {
        st->bce = t->prune_bce / t->prune_micro;
        st->kl = t->idx_kl / t->prune_micro;
    }
    st->agreement = t->prune.scored ? (double)t->prune.agree / t->prune.scored : NAN;
    st->kept_frac = t->prune.tokens ? (double)t->prune.kept / t->prune.tokens : NAN;
    memset(&t->prune, 0, sizeof t->prune);
    t->prune_bce = t->idx_kl = 0;
    t->prune_micro = 0;
}

double ds4_train_ctx_loss(ds4_train_ctx *t, const ds4_model *m, const int *ids) {
    ds4_batch b;
    if (run_forward(t, m, ids, &b) != 0) return NAN;
    return ds4_softmax_xent(NULL, t->acts->logits, t->targets, b.n, m->cfg.vocab_size, 1.0f) / b.n;
}

void ds4_train_ctx_moe_step(ds4_train_ctx *t, ds4_model *m, ds4_moe_step_stats *st) {
    if (st) memset(st, 0, sizeof *st);
    if (!t->moe_loads) return;
    const ds4_config *c = &m->cfg;
    const int E = c->n_routed_experts;
    if (st) {
        st->moe = 1;
        st->aux_loss = t->moe_micro ? c->aux_loss_alpha * t->moe_balance / t->moe_micro : 0;
        int nl = 0;
        for (int l = 0; l < c->num_hidden_layers; l++) {
            if (!ds4_layer_is_moe(c, l)) continue;
            ds4_moe_load_stats ls;
            ds4_moe_load_stats_of(t->moe_loads + (size_t)l * E, E, &ls);
            st->utilization += ls.utilization;
            st->max_vio += ls.max_vio;
            nl++;
        }
        if (nl) { st->utilization /= nl; st->max_vio /= nl; }
    }
    ds4_moe_bias_update_model(m, t->moe_loads);
    memset(t->moe_loads, 0, sizeof(int64_t) * (size_t)c->num_hidden_layers * E);
    t->moe_balance = 0;
    t->moe_micro = 0;
}
