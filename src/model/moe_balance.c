/* moe_balance.c — load balancing of the MoE router (SPEC §1.2): the
 * sequence-wise auxiliary loss (value and gradient into the router logits),
 * the gradient-free load-bias update, and the per-step load counts. */
#include <math.h>
#include <string.h>
#include "model/acts.h"
#include "model/moe.h"

/* End of the sequence starting at row t0: rows t0 .. end-1 share seq[t0]. */
static int seq_end(const int *seq, int n, int t0) {
    if (!seq) return n;
    int t1 = t0 + 1;
    while (t1 < n && seq[t1] == seq[t0]) t1++;
    return t1;
}

static int n_sequences(const int *seq, int n) {
    int ns = 0;
    for (int t0 = 0; t0 < n; t0 = seq_end(seq, n, t0)) ns++;
    return ns;
}

/* f [E]: token-slots of rows t0..t1 routed to each expert / (k T). */
static void slot_fractions(const int *experts, int k, int E, int t0, int t1, double *f) {
    memset(f, 0, sizeof(double) * (size_t)E);
    for (int t = t0; t < t1; t++)
        for (int j = 0; j < k; j++) f[experts[(size_t)t * k + j]] += 1.0;
    const double inv = 1.0 / ((double)k * (t1 - t0));
    for (int e = 0; e < E; e++) f[e] *= inv;
}

double ds4_moe_balance_stat(const ds4_config *c, const float *scores, const int *experts,
                            const int *seq, int n) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c);
    if (n <= 0) return 0;
    double f[1024], P[1024];             /* [E] */
    double total = 0;
    int ns = 0;
    for (int t0 = 0, t1; t0 < n; t0 = t1, ns++) {
        t1 = seq_end(seq, n, t0);
        slot_fractions(experts, k, E, t0, t1, f);
        memset(P, 0, sizeof(double) * (size_t)E);
        for (int t = t0; t < t1; t++) {
            const float *s = scores + (size_t)t * E;
            double z = 0;
            for (int e = 0; e < E; e++) z += s[e];
            for (int e = 0; e < E; e++) P[e] += s[e] / z;
        }
        double acc = 0;
        for (int e = 0; e < E; e++) acc += f[e] * P[e] / (t1 - t0);
        total += E * acc;
    }
    return total / ns;
}

/* stat = (1/S) sum_seq E sum_i f_i P_i with P_i = (1/T) sum_t s_ti / Z_t, so
 * d stat / d s'_ti = E f_i / (S T) =: g_i, and through s' = s / Z:
 * ds_tj = (g_j - sum_i g_i s'_ti) / Z_t; then the score function's backward. */
void ds4_moe_balance_stat_backward(const ds4_config *c, const float *scores, const int *experts,
                                   const int *seq, int n, float scale, float *dlogits) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c);
    if (n <= 0) return;
    const int ns = n_sequences(seq, n);
    double f[1024], g[1024], ds[1024];   /* [E] */
    for (int t0 = 0, t1; t0 < n; t0 = t1) {
        t1 = seq_end(seq, n, t0);
        slot_fractions(experts, k, E, t0, t1, f);
        for (int e = 0; e < E; e++) g[e] = (double)scale * E * f[e] / ((double)ns * (t1 - t0));
        for (int t = t0; t < t1; t++) {
            const float *s = scores + (size_t)t * E;
            float *dl = dlogits + (size_t)t * E;
            double z = 0, gs = 0;
            for (int e = 0; e < E; e++) z += s[e];
            for (int e = 0; e < E; e++) gs += g[e] * s[e] / z;
            for (int e = 0; e < E; e++) ds[e] = (g[e] - gs) / z;
            if (c->scoring_func == DS4_SCORE_SOFTMAX) {
                double dot = 0;
                for (int e = 0; e < E; e++) dot += ds[e] * s[e];
                for (int e = 0; e < E; e++) dl[e] += (float)(s[e] * (ds[e] - dot));
            } else {
                for (int e = 0; e < E; e++) dl[e] += (float)(ds[e] * s[e] * (1.0 - s[e]));
            }
        }
    }
}

void ds4_moe_bias_update(float *bias, const int64_t *load, int E, float u) {
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    /* sign(mean - load_i) compared exactly in integers: load_i * E vs total */
    for (int e = 0; e < E; e++) {
        const int64_t scaled = load[e] * (int64_t)E;
        if (scaled < total) bias[e] += u;
        else if (scaled > total) bias[e] -= u;
    }
}

void ds4_moe_bias_update_window(float *bias, const double *load, int E, float u) {
    double total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    for (int e = 0; e < E; e++) {
        const double scaled = load[e] * (double)E;
        if (scaled < total) bias[e] += u;
        else if (scaled > total) bias[e] -= u;
    }
}

void ds4_moe_load_window_add(double *win, const int64_t *load, int E, double beta, int first) {
    for (int e = 0; e < E; e++)
        win[e] = first ? (double)load[e] : (beta > 0 ? beta * win[e] + (1 - beta) * (double)load[e]
                                                     : win[e] + (double)load[e]);
}

float ds4_moe_bias_rate_scheduled(float u, long step, long total, int follow_lr, float lr_frac, float freeze_frac) {
    if (freeze_frac > 0 && total > 0 && (double)step >= (1.0 - freeze_frac) * (double)total) return 0.0f;
    return follow_lr ? u * lr_frac : u;
}

void ds4_moe_loads_add(const ds4_config *c, const ds4_acts *a, int64_t *loads) {
    const int E = c->n_routed_experts;
    for (int l = 0; l < c->num_hidden_layers && l < a->n_layers; l++) {
        if (!ds4_layer_is_moe(c, l)) continue;
        const int *off = a->l[l].offsets;             /* [E+1] */
        for (int e = 0; e < E; e++) loads[(size_t)l * E + e] += off[e + 1] - off[e];
    }
}

void ds4_moe_bias_update_model(ds4_model *m, const int64_t *loads) {
    const ds4_config *c = &m->cfg;
    if (c->router_bias_update_rate <= 0) return;
    const int E = c->n_routed_experts;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (ds4_layer_is_moe(c, l))
            ds4_moe_bias_update(m->w.layers[l].router_bias, loads + (size_t)l * E, E, c->router_bias_update_rate);
}

double ds4_moe_balance_stat_sum(const ds4_config *c, const ds4_acts *a) {
    double s = 0;
    for (int l = 0; l < c->num_hidden_layers && l < a->n_layers; l++)
        if (ds4_layer_is_moe(c, l)) s += a->l[l].balance;
    return s;
}
