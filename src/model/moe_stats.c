/* moe_stats.c — MoE routing metrics (SPEC §1.2): per-expert load,
 * utilization, MaxVio, dead experts, coefficient of variation; expert-parallel
 * communication per token for R ranks against flat top-k on the same
 * placement, its closed form under uniform routing; and the measurement of
 * a model on a token stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/forward.h"
#include "model/moe.h"
#include "util/util.h"

void ds4_moe_load_stats_of(const int64_t *load, int E, ds4_moe_load_stats *st) {
    memset(st, 0, sizeof *st);
    if (E <= 0) return;
    double sum = 0, mx = (double)load[0], mn = (double)load[0];
    for (int e = 0; e < E; e++) {
        sum += (double)load[e];
        mx = fmax(mx, (double)load[e]);
        mn = fmin(mn, (double)load[e]);
        st->dead += load[e] == 0;
    }
    st->total = (int64_t)sum;
    st->mean = sum / E;
    st->max = mx;
    st->min = mn;
    double var = 0;
    for (int e = 0; e < E; e++) var += ((double)load[e] - st->mean) * ((double)load[e] - st->mean);
    var /= E;
    if (st->mean > 0) {
        st->utilization = st->mean / mx;
        st->max_vio = (mx - st->mean) / st->mean;
        st->cv = sqrt(var) / st->mean;
    }
}

int ds4_moe_placement_check(const ds4_config *c, int R) {
    const int E = c->n_routed_experts, G = c->n_group;
    if (E <= 0) { ds4_set_error("expert placement: the model has no routed experts"); return -1; }
    if (R < 1) { ds4_set_error("expert placement: %d ranks", R); return -1; }
    if (G > 1 && G % R != 0) {
        ds4_set_error("expert placement: %d ranks do not divide n_group %d (each rank holds G/R whole groups)", R, G);
        return -1;
    }
    if (E % R != 0) {
        ds4_set_error("expert placement: %d ranks do not divide n_routed_experts %d", R, E);
        return -1;
    }
    return 0;
}

void ds4_moe_comm_add(ds4_moe_comm *acc, const int *experts, int n, int k, int E, int R, int64_t t0) {
    const int per_rank = E / R;
    unsigned char hit[1024];             /* [R], R <= E <= 1024 */
    for (int t = 0; t < n; t++) {
        memset(hit, 0, (size_t)R);
        int distinct = 0;
        for (int j = 0; j < k; j++) {
            const int r = experts[(size_t)t * k + j] / per_rank;
            if (!hit[r]) { hit[r] = 1; distinct++; }
        }
        const int home = (int)((t0 + t) % R);
        acc->tokens++;
        acc->ranks += distinct;
        acc->remote += distinct - hit[home];
    }
}

double ds4_moe_comm_dispatch_bytes(const ds4_moe_comm *acc, int hidden, int elem_bytes) {
    return acc->tokens ? (double)acc->remote / acc->tokens * hidden * elem_bytes : 0.0;
}

double ds4_moe_expected_ranks(int U, int R, int m) {
    if (R <= 0 || U <= 0 || m <= 0) return 0;
    const int a = U / R;                 /* units per rank */
    /* P(a given rank is missed) = C(U - a, m) / C(U, m) = prod_i (U - a - i) / (U - i) */
    double miss = 1;
    for (int i = 0; i < m; i++) miss *= (U - a - i) > 0 ? (double)(U - a - i) / (U - i) : 0.0;
    return R * (1.0 - miss);
}

void ds4_moe_flat_config(const ds4_config *c, ds4_config *flat) {
    *flat = *c;
    flat->num_experts_per_tok = ds4_moe_k(c);
    flat->n_group = 1;
    flat->topk_group = 1;
    flat->topk_per_group = 0;
}

int ds4_moe_report_add(ds4_moe_report *dst, const ds4_moe_report *src) {
    if (dst->n_layers != src->n_layers || dst->E != src->E || dst->k != src->k || dst->n_ranks != src->n_ranks ||
        !dst->load || !src->load) {
        ds4_set_error("moe report: cannot pool reports of different shapes or rank lists");
        return -1;
    }
    for (int i = 0; i < dst->n_ranks; i++)
        if (dst->ranks[i] != src->ranks[i]) {
            ds4_set_error("moe report: cannot pool reports for different rank counts");
            return -1;
        }
    const int64_t n = dst->tokens + src->tokens;
    if (n > 0) dst->loss = (dst->loss * (double)dst->tokens + src->loss * (double)src->tokens) / (double)n;
    dst->tokens = n;
    for (size_t i = 0; i < (size_t)dst->n_layers * dst->E; i++) dst->load[i] += src->load[i];
    for (int l = 0; l < dst->n_layers; l++)
        for (int i = 0; i < dst->n_ranks; i++) {
            ds4_moe_comm *a = &dst->comm[l][i], *b = &dst->flat_comm[l][i];
            const ds4_moe_comm *c = &src->comm[l][i], *d = &src->flat_comm[l][i];
            a->tokens += c->tokens; a->ranks += c->ranks; a->remote += c->remote;
            b->tokens += d->tokens; b->ranks += d->ranks; b->remote += d->remote;
        }
    return 0;
}

void ds4_moe_report_free(ds4_moe_report *r) {
    free(r->load);
    r->load = NULL;
}

int ds4_moe_measure(const ds4_model *m, const int *ids, size_t n, int seq_len, ds4_moe_report *r) {
    const ds4_config *c = &m->cfg;
    const int L = c->num_hidden_layers, E = c->n_routed_experts, k = ds4_moe_k(c);
    if (E <= 0) { ds4_set_error("moe measure: the model has no routed experts (n_routed_experts = 0)"); return -1; }
    if (n < 2 || seq_len < 1) { ds4_set_error("moe measure: need at least 2 tokens and a window of 1"); return -1; }
    if (seq_len > c->max_position_embeddings) seq_len = c->max_position_embeddings;
    if (r->n_ranks < 0 || r->n_ranks > DS4_MOE_MAX_RANKS) {
        ds4_set_error("moe measure: %d rank counts (at most %d)", r->n_ranks, DS4_MOE_MAX_RANKS);
        return -1;
    }
    for (int i = 0; i < r->n_ranks; i++)
        if (ds4_moe_placement_check(c, r->ranks[i]) != 0) return -1;
    r->n_layers = L;
    r->E = E;
    r->k = k;
    r->hidden = c->hidden_size;
    r->tokens = 0;
    r->loss = 0;
    memset(r->comm, 0, sizeof r->comm);
    memset(r->flat_comm, 0, sizeof r->flat_comm);
    for (int l = 0; l < L; l++) r->is_moe[l] = ds4_layer_is_moe(c, l);
    r->load = ds4_calloc((size_t)L * E, sizeof(int64_t));
    ds4_acts *acts = ds4_acts_create(c, seq_len, L, 1);
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, seq_len);
    int *seq = ds4_calloc((size_t)seq_len, sizeof(int));
    int *fex = ds4_malloc(sizeof(int) * (size_t)seq_len * k);          /* [T, k] flat routing */
    float *fw = ds4_malloc(sizeof(float) * (size_t)seq_len * k);       /* [T, k] */
    float *fs = ds4_malloc(sizeof(float) * (size_t)seq_len * E);       /* [T, E] */
    int rc = -1;
    if (!r->load || !acts || !kv || !seq || !fex || !fw || !fs) goto out;
    ds4_config flat;
    ds4_moe_flat_config(c, &flat);
    double loss = 0;
    for (size_t t0 = 0; t0 + 1 < n; t0 += (size_t)seq_len) {
        const int T = (int)DS4_MIN((size_t)seq_len, n - 1 - t0);
        ds4_kv_cache_reset_seq(kv, 0);
        ds4_batch b = {.n = T, .tokens = ids + t0, .seq = seq};
        if (ds4_forward_impl(m, &b, kv, acts, NULL, 0, NULL) != 0) goto out;
        loss += ds4_softmax_xent(NULL, acts->logits, ids + t0 + 1, T, c->vocab_size, 1.0f);
        for (int l = 0; l < L; l++) {
            if (!r->is_moe[l]) continue;
            const ds4_layer_acts *A = &acts->l[l];
            for (int e = 0; e < E; e++) r->load[(size_t)l * E + e] += A->offsets[e + 1] - A->offsets[e];
            ds4_moe_route(&flat, A->rlogits, m->w.layers[l].router_bias, T, fex, fw, fs);
            for (int i = 0; i < r->n_ranks; i++) {
                ds4_moe_comm_add(&r->comm[l][i], A->experts, T, k, E, r->ranks[i], r->tokens);
                ds4_moe_comm_add(&r->flat_comm[l][i], fex, T, k, E, r->ranks[i], r->tokens);
            }
        }
        r->tokens += T;
    }
    r->loss = loss / (double)r->tokens;
    rc = 0;
out:
    if (rc != 0) ds4_moe_report_free(r);
    ds4_acts_free(acts);
    ds4_kv_cache_free(kv);
    free(seq); free(fex); free(fw); free(fs);
    return rc;
}
