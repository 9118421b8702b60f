/* settle.c — the MoE load bias settled on the trained, now fixed router:
 * forward-only batches, each followed by the sign rule with u decaying to 0. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/acts.h"
#include "model/moe.h"
#include "train/train.h"
#include "util/util.h"

int ds4_moe_bias_settle(ds4_train_ctx *t, ds4_model *m, const int *data, size_t n, long batches, double ema,
                        ds4_rng *rng) {
    const ds4_config *c = &m->cfg;
    int B, T;
    ds4_train_ctx_shape(t, &B, &T);
    if (batches <= 0) return 0;
    int moe = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) moe |= ds4_layer_is_moe(c, l);
    if (!moe || c->router_bias_update_rate <= 0) {
        ds4_set_error("settling the load bias needs MoE layers and router_bias_update_rate > 0");
        return -1;
    }
    if (!(ema >= 0 && ema < 1)) { ds4_set_error("settle EMA beta %g is outside [0, 1)", ema); return -1; }
    if (n < (size_t)T + 2) { ds4_set_error("settling the load bias: %zu tokens, fewer than seq + 2", n); return -1; }
    const int E = c->n_routed_experts, L = c->num_hidden_layers;
    const size_t LE = (size_t)L * E;
    int64_t *load = ds4_calloc(LE, sizeof(int64_t));   /* [L, E] token-slots of one batch */
    double *win = ds4_calloc(LE, sizeof(double));      /* [L, E] the loads the sign rule sees */
    int *ids = ds4_malloc(sizeof(int) * (size_t)B * (T + 1));
    int rc = -1;
    if (!load || !win || !ids) goto out;
    for (long k = 0; k < batches; k++) {
        for (int b = 0; b < B; b++) {
            const size_t off = (size_t)(ds4_rng_u64(rng) % (uint64_t)(n - (size_t)T - 1));
            memcpy(ids + (size_t)b * (T + 1), data + off, sizeof(int) * (size_t)(T + 1));
        }
        if (isnan(ds4_train_ctx_loss(t, m, ids))) goto out;
        memset(load, 0, LE * sizeof(int64_t));
        ds4_moe_loads_add(c, ds4_train_ctx_acts(t), load);
        const float u = (float)(c->router_bias_update_rate * (1.0 - (double)k / (double)batches));
        for (int l = 0; l < L; l++) {
            if (!ds4_layer_is_moe(c, l)) continue;
            ds4_moe_load_window_add(win + (size_t)l * E, load + (size_t)l * E, E, ema, k == 0 || ema == 0);
            ds4_moe_bias_update_window(m->w.layers[l].router_bias, win + (size_t)l * E, E, u);
        }
    }
    rc = 0;
out:
    free(load); free(win); free(ids);
    return rc;
}
