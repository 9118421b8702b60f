/* moe.c — hierarchical two-tier routing (groups, then experts inside groups),
 * capacity rerouting, the routing backward through the unbiased scores, the
 * expert permutation, and the MoE FFN forward/backward built from them (one
 * GEMM per expert, small experts run concurrently). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/moe.h"
#include "model/linear.h"

/* E <= 1024 is checked by config validation; per-token scratch lives on the stack. */
#define MOE_MAX_E 1024

int ds4_moe_k(const ds4_config *c) {
    return c->topk_per_group > 0 ? c->topk_group * c->topk_per_group : c->num_experts_per_tok;
}

/* ---- routing -------------------------------------------------------------- */

/* Indices of the k largest of v[0..n) in descending order of value, ties to
 * the lower index (insertion into a sorted list of k: O(n k)). -inf entries
 * compete like any other value; slots beyond n stay -1. */
static void topk_idx(const float *v, int n, int k, int *out) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m == k && !(v[i] > v[out[k - 1]])) continue;
        int p = m < k ? m++ : k - 1;
        while (p > 0 && v[i] > v[out[p - 1]]) { out[p] = out[p - 1]; p--; }
        out[p] = i;
    }
    for (int j = m; j < k; j++) out[j] = -1;
}

static void scores_of(const ds4_config *c, const float *lg, float *s) {
    const int E = c->n_routed_experts;
    if (c->scoring_func == DS4_SCORE_SOFTMAX) {
        float mx = lg[0];
        for (int e = 1; e < E; e++) mx = fmaxf(mx, lg[e]);
        double sum = 0;
        for (int e = 0; e < E; e++) { s[e] = expf(lg[e] - mx); sum += s[e]; }
        for (int e = 0; e < E; e++) s[e] = (float)(s[e] / sum);
    } else {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-lg[e]));
    }
}

static void biased(const ds4_config *c, const float *s, const float *bias, float *sel) {
    for (int e = 0; e < c->n_routed_experts; e++) sel[e] = s[e] + (bias ? bias[e] : 0.0f);
}

void ds4_moe_route_groups(const ds4_config *c, const float *sel, int *groups) {
    const int G = c->n_group, per = c->n_routed_experts / G, m2 = per < 2 ? per : 2;
    float gs[MOE_MAX_E];
    int top2[2];
    for (int g = 0; g < G; g++) {
        topk_idx(sel + g * per, per, m2, top2);
        gs[g] = 0;
        for (int j = 0; j < m2; j++) gs[g] += sel[g * per + top2[j]];
    }
    topk_idx(gs, G, c->topk_group, groups);
}

void ds4_moe_route_weights(const ds4_config *c, const float *s, const int *experts, float *w) {
    const int k = ds4_moe_k(c);
    double z = 0;
    for (int j = 0; j < k; j++) { w[j] = s[experts[j]]; z += w[j]; }
    const float scale = c->norm_topk_prob ? (float)(c->routed_scaling_factor / (z + 1e-20))
                                          : c->routed_scaling_factor;
    for (int j = 0; j < k; j++) w[j] *= scale;
}

/* Tier 2 for one token: experts [k] from biased scores sel [E] and chosen groups. */
static void route_experts(const ds4_config *c, const float *sel, const int *groups, int *ex) {
    const int E = c->n_routed_experts, per = E / c->n_group, tg = c->topk_group, tpg = c->topk_per_group;
    if (tpg > 0) {
        /* hierarchical: top topk_per_group inside each chosen group */
        for (int j = 0; j < tg; j++) {
            topk_idx(sel + groups[j] * per, per, tpg, ex + j * tpg);
            for (int i = 0; i < tpg; i++) ex[j * tpg + i] += groups[j] * per;
        }
    } else {
        /* DeepSeek-V3 mode: top k among the experts of the chosen groups; the
         * others are -inf, never 0 (biased scores can be negative) */
        float masked[MOE_MAX_E];
        for (int e = 0; e < E; e++) masked[e] = -INFINITY;
        for (int j = 0; j < tg; j++)
            memcpy(masked + groups[j] * per, sel + groups[j] * per, sizeof(float) * (size_t)per);
        topk_idx(masked, E, c->num_experts_per_tok, ex);
    }
}

void ds4_moe_route(const ds4_config *c, const float *logits, const float *bias, int n,
                   int *experts, float *weights, float *scores) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c);
    for (int t = 0; t < n; t++) {
        float *s = scores + (size_t)t * E;               /* [E] */
        scores_of(c, logits + (size_t)t * E, s);
        float sel[MOE_MAX_E];                             /* biased: used only to choose */
        int groups[MOE_MAX_E];
        biased(c, s, bias, sel);
        ds4_moe_route_groups(c, sel, groups);
        route_experts(c, sel, groups, experts + (size_t)t * k);
        ds4_moe_route_weights(c, s, experts + (size_t)t * k, weights + (size_t)t * k);
    }
}

/* ---- capacity ------------------------------------------------------------- */

int ds4_moe_capacity(const ds4_config *c, int n) {
    if (c->expert_capacity_factor <= 0 || c->n_routed_experts <= 0) return 0;
    const double cap = ceil((double)c->expert_capacity_factor * n * ds4_moe_k(c) / c->n_routed_experts);
    return cap < 1 ? 1 : (int)cap;
}

int ds4_moe_apply_capacity(const ds4_config *c, const float *scores, const float *bias, int n, int cap,
                           int *experts, float *weights) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c), per = E / c->n_group, tg = c->topk_group;
    int *count = calloc((size_t)E, sizeof(int));           /* [E] rows assigned so far */
    unsigned char *moved = calloc((size_t)n, 1);           /* [n] token's weights need recomputing */
    if (!count || !moved) { free(count); free(moved); return -1; }
    int over = 0;
    for (int j = 0; j < k; j++)
        for (int t = 0; t < n; t++) {
            int *ex = experts + (size_t)t * k;
            if (count[ex[j]] < cap) { count[ex[j]]++; continue; }
            /* full: best biased score among the chosen groups' experts that are
             * not full and not already taken by this token */
            const float *s = scores + (size_t)t * E;
            float sel[MOE_MAX_E];
            int groups[MOE_MAX_E];
            biased(c, s, bias, sel);
            ds4_moe_route_groups(c, sel, groups);
            int best = -1;
            for (int g = 0; g < tg; g++)
                for (int e = groups[g] * per; e < (groups[g] + 1) * per; e++) {
                    if (count[e] >= cap) continue;
                    int taken = 0;
                    for (int i = 0; i < k; i++) taken |= ex[i] == e;
                    if (taken) continue;
                    if (best < 0 || sel[e] > sel[best] || (sel[e] == sel[best] && e < best)) best = e;
                }
            if (best < 0) {          /* everything reachable is full: keep it, over capacity */
                count[ex[j]]++;
                over++;
                continue;
            }
            ex[j] = best;
            count[best]++;
            moved[t] = 1;
        }
    for (int t = 0; t < n; t++)
        if (moved[t])
            ds4_moe_route_weights(c, scores + (size_t)t * E, experts + (size_t)t * k, weights + (size_t)t * k);
    free(count);
    free(moved);
    return over;
}

/* ---- routing backward, permutation ----------------------------------------- */

void ds4_moe_route_backward(const ds4_config *c, const int *experts, const float *scores,
                            const float *dweights, int n, float *dlogits) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c);
    const float rsf = c->routed_scaling_factor;
    for (int t = 0; t < n; t++) {
        const int *ex = experts + (size_t)t * k;
        const float *s = scores + (size_t)t * E, *dw = dweights + (size_t)t * k;
        float ds[MOE_MAX_E];
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
    int fill[MOE_MAX_E];
    memcpy(fill, offsets, sizeof(int) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int r = fill[experts[t * k + j]]++;
            perm_tok[r] = t;
            perm_slot[r] = j;
        }
}

/* ---- expert execution ------------------------------------------------------
 * One task per expert with rows, plus one for the shared experts (all n
 * rows). A task holding more than one thread's share of all rows runs alone
 * with threaded sgemm; the others run concurrently, largest first, one task
 * per thread with single-threaded sgemm: with 64 experts of ~100 rows each a
 * threaded sgemm per expert spends its time forking and waiting. OpenBLAS's
 * OpenMP build runs calls made inside a parallel region on one thread by
 * itself; its pthreads build is told to for the duration of the region (a
 * process-wide setting, restored after). Every task writes only its own rows
 * and its own weight gradients, so the result does not depend on the schedule. */
typedef void (*task_fn)(int task, void *ctx);

typedef struct { int rows, task; } task_rows;

static int by_rows_desc(const void *a, const void *b) {
    const task_rows *x = a, *y = b;
    return x->rows != y->rows ? y->rows - x->rows : x->task - y->task;
}

/* rows [n_tasks]: rows of each task (0 = nothing to do). */
static void run_tasks(const int *rows, int n_tasks, task_fn fn, void *ctx) {
    const int nt = omp_get_max_threads();
    long total = 0;
    for (int i = 0; i < n_tasks; i++) total += rows[i];
    task_rows small[MOE_MAX_E + 1];
    int ns = 0;
    for (int i = 0; i < n_tasks; i++) {
        if (rows[i] == 0) continue;
        if (nt == 1 || (long)rows[i] * nt > total) fn(i, ctx);
        else small[ns++] = (task_rows){rows[i], i};
    }
    if (ns == 0) return;
    qsort(small, (size_t)ns, sizeof small[0], by_rows_desc);
    const int pthreads_blas = openblas_get_parallel() == 1;
    const int blas_threads = pthreads_blas ? openblas_get_num_threads() : 0;
    if (pthreads_blas) openblas_set_num_threads(1);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < ns; i++) fn(small[i].task, ctx);
    if (pthreads_blas) openblas_set_num_threads(blas_threads);
}

/* Tasks 0..E-1: routed experts (rows from offsets); task E: the shared experts. */
static void expert_tasks(const ds4_config *c, const int *offsets, int n, int *rows) {
    const int E = c->n_routed_experts;
    for (int e = 0; e < E; e++) rows[e] = offsets[e + 1] - offsets[e];
    rows[E] = c->n_shared_experts > 0 ? n : 0;
}

typedef struct {
    const ds4_config *c;
    const ds4_layer *W;
    ds4_layer *G;
    ds4_layer_acts *A;
    ds4_bw_scratch *s;
    const float *x, *dy;     /* [n, D] layer input, output gradient */
    float *dx;               /* [n, D] */
    int n;
} expert_ctx;

static void expert_forward(int e, void *p) {
    const expert_ctx *x = p;
    const ds4_config *c = x->c;
    const int D = c->hidden_size, Fm = c->moe_intermediate_size;
    const ds4_layer *W = x->W;
    ds4_layer_acts *A = x->A;
    if (e == c->n_routed_experts) {          /* shared experts: every token, straight into ffn */
        ds4_swiglu_ffn(A->ffn, x->x, W->sh_gate, W->sh_up, W->sh_down, A->sg, A->su, A->sh, x->n, D,
                       c->n_shared_experts * Fm, 0);
        return;
    }
    const int r0 = A->offsets[e], m = A->offsets[e + 1] - r0;
    const size_t fo = (size_t)e * Fm * D;
    ds4_swiglu_ffn(A->ey + (size_t)r0 * D, A->ex + (size_t)r0 * D, W->exp_gate + fo, W->exp_up + fo,
                   W->exp_down + fo, A->eg + (size_t)r0 * Fm, A->eu + (size_t)r0 * Fm,
                   A->eh + (size_t)r0 * Fm, m, D, Fm, 0);
}

static void expert_backward(int e, void *p) {
    const expert_ctx *x = p;
    const ds4_config *c = x->c;
    const int D = c->hidden_size, Fm = c->moe_intermediate_size;
    const ds4_layer *W = x->W;
    ds4_layer *G = x->G;
    const ds4_layer_acts *A = x->A;
    ds4_bw_scratch *s = x->s;
    if (e == c->n_routed_experts) {          /* shared experts: dx accumulates directly */
        ds4_swiglu_ffn_backward(x->dx, G->sh_gate, G->sh_up, G->sh_down, x->dy, x->x, W->sh_gate, W->sh_up,
                                W->sh_down, A->sg, A->su, A->sh, s->dh, s->dg, s->du, x->n, D,
                                c->n_shared_experts * Fm);
        return;
    }
    const int r0 = A->offsets[e], m = A->offsets[e + 1] - r0;
    const size_t fo = (size_t)e * Fm * D;
    memset(s->dex + (size_t)r0 * D, 0, sizeof(float) * (size_t)m * D);
    ds4_swiglu_ffn_backward(s->dex + (size_t)r0 * D, G->exp_gate + fo, G->exp_up + fo, G->exp_down + fo,
                            s->dey + (size_t)r0 * D, A->ex + (size_t)r0 * D, W->exp_gate + fo,
                            W->exp_up + fo, W->exp_down + fo, A->eg + (size_t)r0 * Fm,
                            A->eu + (size_t)r0 * Fm, A->eh + (size_t)r0 * Fm, s->deh + (size_t)r0 * Fm,
                            s->deg + (size_t)r0 * Fm, s->deu + (size_t)r0 * Fm, m, D, Fm);
}

/* ---- the MoE FFN ------------------------------------------------------------ */

/* The MoE FFN forward as explicit steps: route → dispatch → experts → combine.
 * A training forward (A->seq set) also applies capacity and records the
 * balance statistic; inference is dropless, so a token's experts never depend
 * on the other tokens of the batch (prefill and decode agree). */
void ds4_moe_fwd_route(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const float *x, int n) {
    const int D = c->hidden_size, E = c->n_routed_experts;
    ds4_linear(NULL, A->rlogits, x, W->router, n, D, E, 0);
    ds4_moe_route(c, A->rlogits, W->router_bias, n, A->experts, A->weights, A->scores);
    A->over_capacity = 0;
    if (A->seq) {
        const int cap = ds4_moe_capacity(c, n);
        if (cap > 0) A->over_capacity = ds4_moe_apply_capacity(c, A->scores, W->router_bias, n, cap,
                                                                A->experts, A->weights);
        A->balance = (float)ds4_moe_balance_stat(c, A->scores, A->experts, A->seq, n);
    }
}

void ds4_moe_fwd_dispatch(const ds4_config *c, ds4_layer_acts *A, const float *x, int n) {
    const int D = c->hidden_size, k = ds4_moe_k(c);
    ds4_moe_permute(A->experts, n, k, c->n_routed_experts, A->offsets, A->perm_tok, A->perm_slot);
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < n * k; r++)
        memcpy(A->ex + (size_t)r * D, x + (size_t)A->perm_tok[r] * D, sizeof(float) * D);
}

void ds4_moe_fwd_experts(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const float *x, int n) {
    int rows[MOE_MAX_E + 1];
    expert_tasks(c, A->offsets, n, rows);
    if (c->n_shared_experts == 0) memset(A->ffn, 0, sizeof(float) * (size_t)n * c->hidden_size);
    expert_ctx ctx = {.c = c, .W = W, .A = A, .x = x, .n = n};
    run_tasks(rows, c->n_routed_experts + 1, expert_forward, &ctx);
}

void ds4_moe_fwd_combine(const ds4_config *c, ds4_layer_acts *A, int n) {
    const int D = c->hidden_size, k = ds4_moe_k(c);
    int *row_of = malloc(sizeof(int) * (size_t)n * k);      /* [n, k] permuted row of (token, slot) */
    for (int r = 0; r < n * k; r++) row_of[A->perm_tok[r] * k + A->perm_slot[r]] = r;
    /* each token gathers its k rows (race-free) */
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

void ds4_moe_forward(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const float *x, int n) {
    ds4_moe_fwd_route(c, W, A, x, n);
    ds4_moe_fwd_dispatch(c, A, x, n);
    ds4_moe_fwd_experts(c, W, A, x, n);
    ds4_moe_fwd_combine(c, A, n);
}

/* MoE backward: dy [n,D] is the gradient of the FFN output; dx += into [n,D]. */
void ds4_moe_backward(const ds4_config *c, const ds4_layer *W, ds4_layer *G, const ds4_layer_acts *A,
                      const float *x, const float *dy, float *dx, ds4_bw_scratch *s, int n) {
    const int D = c->hidden_size, E = c->n_routed_experts, k = ds4_moe_k(c);
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
    /* routed experts into dex (zeroed per expert), shared experts into dx, concurrently */
    int rows[MOE_MAX_E + 1];
    expert_tasks(c, A->offsets, n, rows);
    expert_ctx ctx = {.c = c, .W = W, .G = G, .A = (ds4_layer_acts *)A, .s = s, .x = x, .dy = dy, .dx = dx, .n = n};
    run_tasks(rows, E + 1, expert_backward, &ctx);
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
    /* router: weights depend on the unbiased scores of the chosen experts; the
     * aux loss (training, aux_loss_alpha > 0) on all scores */
    memset(s->drlogits, 0, sizeof(float) * (size_t)n * E);
    ds4_moe_route_backward(c, A->experts, A->scores, s->dweights, n, s->drlogits);
    if (A->seq && c->aux_loss_alpha > 0 && A->aux_scale != 0)
        ds4_moe_balance_stat_backward(c, A->scores, A->experts, A->seq, n, c->aux_loss_alpha * A->aux_scale,
                                      s->drlogits);
    ds4_matmul_backward(dx, G->router, s->drlogits, x, W->router, n, D, E);
}
