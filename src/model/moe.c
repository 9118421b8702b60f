/* moe.c — hierarchical two-tier routing (groups, then experts inside groups),
 * its backward through the unbiased scores, the expert permutation, and the
 * MoE FFN forward/backward built from them (one GEMM per expert). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/moe.h"

int ds4_moe_k(const ds4_config *c) {
    return c->topk_per_group > 0 ? c->topk_group * c->topk_per_group : c->num_experts_per_tok;
}

/* Indices of the k largest of v[0..n) where allowed (mask NULL = all), ties
 * broken by the lower index; written in descending order of value. */
static void topk_idx(const float *v, const unsigned char *mask, int n, int k, int *out) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (mask && !mask[i]) continue;
            int taken = 0;
            for (int t = 0; t < j; t++) if (out[t] == i) { taken = 1; break; }
            if (taken) continue;
            if (best < 0 || v[i] > v[best]) best = i;
        }
        out[j] = best;
    }
}

void ds4_moe_route(const ds4_config *c, const float *logits, const float *bias, int n,
                   int *experts, float *weights, float *scores) {
    const int E = c->n_routed_experts, G = c->n_group, per = E / G, k = ds4_moe_k(c);
    const int tg = c->topk_group;
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        float *s = scores + (size_t)t * E;
        if (c->scoring_func == DS4_SCORE_SOFTMAX) {
            float mx = lg[0];
            for (int e = 1; e < E; e++) mx = fmaxf(mx, lg[e]);
            double sum = 0;
            for (int e = 0; e < E; e++) { s[e] = expf(lg[e] - mx); sum += s[e]; }
            for (int e = 0; e < E; e++) s[e] = (float)(s[e] / sum);
        } else {
            for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-lg[e]));
        }
        float sel[1024];           /* E <= 1024 checked by config validation */
        for (int e = 0; e < E; e++) sel[e] = s[e] + (bias ? bias[e] : 0.0f);
        /* tier 1: group score = sum of the top-min(2, per) biased scores */
        float gs[1024];
        int top2[2];
        const int m2 = per < 2 ? per : 2;
        for (int g = 0; g < G; g++) {
            topk_idx(sel + g * per, NULL, per, m2, top2);
            gs[g] = 0;
            for (int j = 0; j < m2; j++) gs[g] += sel[g * per + top2[j]];
        }
        int groups[1024];
        topk_idx(gs, NULL, G, tg, groups);
        int *ex = experts + (size_t)t * k;
        if (c->topk_per_group > 0) {
            /* tier 2: top topk_per_group inside each chosen group */
            for (int j = 0; j < tg; j++)
                topk_idx(sel + groups[j] * per, NULL, per, c->topk_per_group, ex + j * c->topk_per_group);
            for (int j = 0; j < tg; j++)
                for (int i = 0; i < c->topk_per_group; i++) ex[j * c->topk_per_group + i] += groups[j] * per;
        } else {
            /* DeepSeek-V3 mode: top k among experts of the chosen groups (others masked) */
            unsigned char mask[1024];
            memset(mask, 0, (size_t)E);
            for (int j = 0; j < tg; j++) memset(mask + groups[j] * per, 1, (size_t)per);
            topk_idx(sel, mask, E, k, ex);
        }
        float *w = weights + (size_t)t * k;
        double z = 0;
        for (int j = 0; j < k; j++) { w[j] = s[ex[j]]; z += w[j]; }
        const float scale = c->norm_topk_prob ? (float)(c->routed_scaling_factor / (z + 1e-20))
                                              : c->routed_scaling_factor;
        for (int j = 0; j < k; j++) w[j] *= scale;
    }
}

void ds4_moe_route_backward(const ds4_config *c, const int *experts, const float *scores,
                            const float *dweights, int n, float *dlogits) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c);
    const float rsf = c->routed_scaling_factor;
    for (int t = 0; t < n; t++) {
        const int *ex = experts + (size_t)t * k;
        const float *s = scores + (size_t)t * E, *dw = dweights + (size_t)t * k;
        float ds[1024];
        memset(ds, 0, sizeof(float) * (size_t)E);
        if (c->norm_topk_prob) {
            /* w_j = rsf * s_j / Z, Z = sum of selected s: ds_j = rsf/Z (dw_j - sum_i dw_i s_i / Z) */
            double z = 0, dot = 0;
            for (int j = 0; j < k; j++) { z += s[ex[j]]; dot += (double)dw[j] * s[ex[j]]; }
            z += 1e-20;
            for (int j = 0; j < k; j++) ds[ex[j]] += (float)(rsf / z * (dw[j] - dot / z));
        } else {
            for (int j = 0; j < k; j++) ds[ex[j]] += rsf * dw[j];
        }
        float *dl = dlogits + (size_t)t * E;
        if (c->scoring_func == DS4_SCORE_SOFTMAX) {
            double dot = 0;
            for (int e = 0; e < E; e++) dot += (double)ds[e] * s[e];
            for (int e = 0; e < E; e++) dl[e] += s[e] * (ds[e] - (float)dot);
        } else {
            for (int e = 0; e < E; e++) dl[e] += ds[e] * s[e] * (1.0f - s[e]);
        }
    }
}

void ds4_moe_permute(const int *experts, int n, int k, int E, int *offsets,
                     int *perm_tok, int *perm_slot) {
    memset(offsets, 0, sizeof(int) * (size_t)(E + 1));
    for (int i = 0; i < n * k; i++) offsets[experts[i] + 1]++;
    for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    int fill[1024];
    memcpy(fill, offsets, sizeof(int) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int r = fill[experts[t * k + j]]++;
            perm_tok[r] = t;
            perm_slot[r] = j;
        }
}

/* MoE FFN: route → permute → per-expert SwiGLU → weighted combine (+ shared). */
void ds4_moe_forward(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const float *x, int n) {
    const int D = c->hidden_size, E = c->n_routed_experts, Fm = c->moe_intermediate_size, k = ds4_moe_k(c);
    ds4_matmul(A->rlogits, x, W->router, n, D, E, 0);
    ds4_moe_route(c, A->rlogits, W->router_bias, n, A->experts, A->weights, A->scores);
    ds4_moe_permute(A->experts, n, k, E, A->offsets, A->perm_tok, A->perm_slot);
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < n * k; r++)
        memcpy(A->ex + (size_t)r * D, x + (size_t)A->perm_tok[r] * D, sizeof(float) * D);
    for (int e = 0; e < E; e++) {
        const int r0 = A->offsets[e], m = A->offsets[e + 1] - r0;
        if (m == 0) continue;
        ds4_swiglu_ffn(A->ey + (size_t)r0 * D, A->ex + (size_t)r0 * D,
                   W->exp_gate + (size_t)e * Fm * D, W->exp_up + (size_t)e * Fm * D,
                   W->exp_down + (size_t)e * D * Fm, A->eg + (size_t)r0 * Fm,
                   A->eu + (size_t)r0 * Fm, A->eh + (size_t)r0 * Fm, m, D, Fm, 0);
    }
    /* combine: each token sums its k expert rows (gather, race-free) */
    int *row_of = malloc(sizeof(int) * (size_t)n * k);      /* [n, k] permuted row of (t, slot) */
    for (int r = 0; r < n * k; r++) row_of[A->perm_tok[r] * k + A->perm_slot[r]] = r;
    const int S = c->n_shared_experts * Fm;
    if (S > 0) ds4_swiglu_ffn(A->ffn, x, W->sh_gate, W->sh_up, W->sh_down, A->sg, A->su, A->sh, n, D, S, 0);
    else memset(A->ffn, 0, sizeof(float) * (size_t)n * D);
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        float *y = A->ffn + (size_t)t * D;
        for (int j = 0; j < k; j++) {
            const float w = A->weights[t * k + j];
            const float *ey = A->ey + (size_t)row_of[t * k + j] * D;
            for (int d = 0; d < D; d++) y[d] += w * ey[d];
        }
    }
    free(row_of);
}

/* MoE backward: dy [n,D] is the gradient of the FFN output; dx += into [n,D]. */
void ds4_moe_backward(const ds4_config *c, const ds4_layer *W, ds4_layer *G, const ds4_layer_acts *A,
                         const float *x, const float *dy, float *dx, ds4_bw_scratch *s, int n) {
    const int D = c->hidden_size, E = c->n_routed_experts, Fm = c->moe_intermediate_size, k = ds4_moe_k(c);
    const int S = c->n_shared_experts * Fm;
    if (S > 0)
        ds4_swiglu_ffn_backward(dx, G->sh_gate, G->sh_up, G->sh_down, dy, x, W->sh_gate, W->sh_up, W->sh_down,
                            A->sg, A->su, A->sh, s->dh, s->dg, s->du, n, D, S);
    /* per permuted row: dey = w * dy[t]; dweight = <dy[t], ey> */
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < n * k; r++) {
        const int t = A->perm_tok[r], j = A->perm_slot[r];
        const float *dyt = dy + (size_t)t * D, *ey = A->ey + (size_t)r * D;
        float *dey = s->dey + (size_t)r * D;
        const float w = A->weights[t * k + j];
        double dot = 0;
        for (int d = 0; d < D; d++) { dey[d] = w * dyt[d]; dot += (double)dyt[d] * ey[d]; }
        s->dweights[t * k + j] = (float)dot;
    }
    memset(s->dex, 0, sizeof(float) * (size_t)n * k * D);
    for (int e = 0; e < E; e++) {
        const int r0 = A->offsets[e], m = A->offsets[e + 1] - r0;
        if (m == 0) continue;
        const size_t fo = (size_t)e * Fm * D;
        ds4_swiglu_ffn_backward(s->dex + (size_t)r0 * D, G->exp_gate + fo, G->exp_up + fo, G->exp_down + fo,
                            s->dey + (size_t)r0 * D, A->ex + (size_t)r0 * D, W->exp_gate + fo,
                            W->exp_up + fo, W->exp_down + fo, A->eg + (size_t)r0 * Fm,
                            A->eu + (size_t)r0 * Fm, A->eh + (size_t)r0 * Fm, s->deh + (size_t)r0 * Fm,
                            s->deg + (size_t)r0 * Fm, s->deu + (size_t)r0 * Fm, m, D, Fm);
    }
    /* unpermute: each token gathers its k rows (race-free) */
    int *row_of = malloc(sizeof(int) * (size_t)n * k);
    for (int r = 0; r < n * k; r++) row_of[A->perm_tok[r] * k + A->perm_slot[r]] = r;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            const float *src = s->dex + (size_t)row_of[t * k + j] * D;
            float *dst = dx + (size_t)t * D;
            for (int d = 0; d < D; d++) dst[d] += src[d];
        }
    free(row_of);
    /* router: weights depend on the unbiased scores of the chosen experts */
    memset(s->drlogits, 0, sizeof(float) * (size_t)n * E);
    ds4_moe_route_backward(c, A->experts, A->scores, s->dweights, n, s->drlogits);
    ds4_matmul_backward(dx, G->router, s->drlogits, x, W->router, n, D, E);
}
