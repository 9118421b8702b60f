/* test_model_moe.c — MoE routing and balancing against hand-computed cases and
 * independent references: two-tier selection (ties, negative biased scores,
 * -inf masking, one group, k equal to the group size, DeepSeek-V3 mode), a
 * naive sort-based router, the bias update rule and its effect, capacity
 * rerouting that loses no token, the aux loss value and its gradient by
 * finite differences, load metrics and communication counts. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "model/acts.h"
#include "model/moe.h"
#include "util/util.h"

static ds4_config cfg(int E, int G, int tg, int tpg, int k, int scoring) {
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = 16;
    c.hidden_size = 8;
    c.intermediate_size = 8;
    c.moe_intermediate_size = 4;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.head_dim = 4;
    c.max_position_embeddings = 64;
    c.first_k_dense_replace = 0;
    c.n_routed_experts = E;
    c.n_group = G;
    c.topk_group = tg;
    c.topk_per_group = tpg;
    c.num_experts_per_tok = k;
    c.scoring_func = scoring;
    c.norm_topk_prob = 1;
    c.routed_scaling_factor = 1.0f;
    return c;
}

/* Route one token with zero logits (every sigmoid score exactly 0.5), so the
 * dyadic bias alone sets the biased scores: exact ties are possible. */
static void route_bias_only(const ds4_config *c, const float *bias, int *ex, float *w) {
    float lg[64] = {0}, s[64];
    ds4_moe_route(c, lg, bias, 1, ex, w, s);
}

static void expect_experts(const int *got, const int *want, int k) {
    for (int j = 0; j < k; j++)
        if (got[j] != want[j]) fail_msg("slot %d: expert %d, expected %d", j, got[j], want[j]);
}

/* ---- hand-computed routing ------------------------------------------------ */

static void test_group_score_top2_and_ties(void **state) {
    (void)state;
    ds4_config c = cfg(8, 2, 1, 2, 2, DS4_SCORE_SIGMOID);
    int ex[2];
    float w[2];
    /* sel = 0.5 + b: group 0 {0.75, 0, 0.5, 0.625} top-2 sum 1.375; group 1
     * {0.625, 0.75, 0.25, 0.5} also 1.375: the tie goes to group 0 */
    const float b1[8] = {0.25f, -0.5f, 0, 0.125f, 0.125f, 0.25f, -0.25f, 0};
    route_bias_only(&c, b1, ex, w);
    expect_experts(ex, (int[]){0, 3}, 2);
    assert_float_equal(w[0], 0.5f, 1e-7);         /* unbiased scores are all 0.5 */
    assert_float_equal(w[1], 0.5f, 1e-7);
    /* group 0 holds the single best expert (1.0) but its top-2 sum is 1.0;
     * group 1's is 1.5: group 1 wins; its two 0.75 experts tie, lower first */
    const float b2[8] = {0.5f, -0.5f, -0.5f, -0.5f, 0.25f, 0.25f, 0, 0};
    route_bias_only(&c, b2, ex, w);
    expect_experts(ex, (int[]){4, 5}, 2);
    /* all scores equal: lowest indices everywhere */
    const float b0[8] = {0};
    route_bias_only(&c, b0, ex, w);
    expect_experts(ex, (int[]){0, 1}, 2);
}

static void test_weights_from_unbiased_scores(void **state) {
    (void)state;
    ds4_config c = cfg(4, 1, 1, 2, 2, DS4_SCORE_SIGMOID);
    c.routed_scaling_factor = 2.0f;
    const float lg[4] = {2, 1, 0, -1}, bias[4] = {-10, 0, 0, 0.2f};
    int ex[2];
    float w[2], s[4];
    ds4_moe_route(&c, lg, bias, 1, ex, w, s);
    /* biased: {-9.12, 0.731, 0.5, 0.469}: experts 1 and 2 although 0 scores best */
    expect_experts(ex, (int[]){1, 2}, 2);
    const double s1 = 1 / (1 + exp(-1.0)), s2 = 0.5;
    assert_float_equal(w[0], 2 * s1 / (s1 + s2), 1e-6);
    assert_float_equal(w[1], 2 * s2 / (s1 + s2), 1e-6);
    for (int e = 0; e < 4; e++) assert_float_equal(s[e], 1 / (1 + exp(-lg[e])), 1e-6);
    /* without normalisation the weights are the scores times the scale */
    c.norm_topk_prob = 0;
    ds4_moe_route(&c, lg, bias, 1, ex, w, s);
    assert_float_equal(w[0], 2 * s1, 1e-6);
    assert_float_equal(w[1], 2 * s2, 1e-6);
}

static void test_negative_scores_masked_with_minus_inf(void **state) {
    (void)state;
    /* DeepSeek-V3 mode, every biased score negative. sel = 0.5 + b =
     * {-0.5,-0.75 | -0.25,-0.375 | -1.5,-1.5 | -2.5, 0.0}: group sums
     * -1.25, -0.625, -3, -2.5 -> group 1. Masking the other groups with 0
     * instead of -inf would pick experts 0 and 1 (0 > -0.25). */
    ds4_config c = cfg(8, 4, 1, 0, 2, DS4_SCORE_SIGMOID);
    const float bias[8] = {-1, -1.25f, -0.75f, -0.875f, -2, -2, -3, -0.5f};
    int ex[2];
    float w[2];
    route_bias_only(&c, bias, ex, w);
    expect_experts(ex, (int[]){2, 3}, 2);
    /* hierarchical mode chooses the same */
    c.topk_per_group = 2;
    route_bias_only(&c, bias, ex, w);
    expect_experts(ex, (int[]){2, 3}, 2);
}

static void test_one_group_is_flat_topk(void **state) {
    (void)state;
    ds4_config c = cfg(6, 1, 1, 3, 3, DS4_SCORE_SIGMOID);
    const float bias[6] = {0.125f, -0.25f, 0.375f, 0.25f, -0.5f, 0.375f};
    int ex[3];
    float w[3];
    route_bias_only(&c, bias, ex, w);
    expect_experts(ex, (int[]){2, 5, 3}, 3);       /* 0.875, 0.875 (tie: lower first), 0.75 */
    ds4_config d = cfg(6, 1, 1, 0, 3, DS4_SCORE_SIGMOID);
    route_bias_only(&d, bias, ex, w);
    expect_experts(ex, (int[]){2, 5, 3}, 3);
}

static void test_k_equal_to_group_size(void **state) {
    (void)state;
    /* 3 groups of 2, two groups chosen, both experts of each */
    ds4_config c = cfg(6, 3, 2, 2, 4, DS4_SCORE_SIGMOID);
    const float bias[6] = {0, -0.25f, 0.25f, 0.125f, 0.0625f, 0};   /* sums 0.75, 1.375, 1.0625 */
    int ex[4];
    float w[4];
    route_bias_only(&c, bias, ex, w);
    expect_experts(ex, (int[]){2, 3, 4, 5}, 4);
}

static void test_deepseek_v3_mode(void **state) {
    (void)state;
    /* 4 groups of 4, two chosen, top-3 among their 8 experts: all 3 may come
     * from one group. sel: g0 {0.875,0.75,0.625,0}, g1 {0.5,0.5,0.5,0.5},
     * g2 {1.0,0,0,0}, g3 {0.5,0.5,0.25,0} -> sums 1.625, 1.0, 1.0, 1.0: g0
     * then g1 (tie with g2, g3: lower index) */
    ds4_config c = cfg(16, 4, 2, 0, 3, DS4_SCORE_SIGMOID);
    const float bias[16] = {0.375f, 0.25f, 0.125f, -0.5f, 0, 0, 0, 0, 0.5f, -0.5f, -0.5f, -0.5f,
                            0, 0, -0.25f, -0.5f};
    int ex[3];
    float w[3];
    route_bias_only(&c, bias, ex, w);
    expect_experts(ex, (int[]){0, 1, 2}, 3);
    /* the hierarchical mode with 2 per group takes 2 + 2 instead */
    ds4_config h = cfg(16, 4, 2, 2, 4, DS4_SCORE_SIGMOID);
    int eh[4];
    float wh[4];
    route_bias_only(&h, bias, eh, wh);
    expect_experts(eh, (int[]){0, 1, 4, 5}, 4);
}

static void test_softmax_scores(void **state) {
    (void)state;
    ds4_config c = cfg(8, 4, 2, 1, 2, DS4_SCORE_SOFTMAX);
    c.norm_topk_prob = 0;
    const float lg[8] = {1, 0.5f, -1, 2, 0, 0.25f, 3, -2};
    int ex[2];
    float w[2], s[8];
    ds4_moe_route(&c, lg, NULL, 1, ex, w, s);
    double z = 0, sum = 0;
    for (int e = 0; e < 8; e++) z += exp(lg[e]);
    for (int e = 0; e < 8; e++) { assert_float_equal(s[e], exp(lg[e]) / z, 1e-6); sum += s[e]; }
    assert_float_equal(sum, 1.0, 1e-6);
    /* group sums (top-2 of 2): g0 e^1+e^.5, g1 e^-1+e^2, g2 e^0+e^.25, g3 e^3+e^-2: g3, g1 */
    expect_experts(ex, (int[]){6, 3}, 2);
    assert_float_equal(w[0], s[6], 1e-7);
    assert_float_equal(w[1], s[3], 1e-7);
}

/* ---- against a naive sort-based router -------------------------------------- */

typedef struct { float v; int i; } vi;
static int vi_desc(const void *a, const void *b) {
    const vi *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i - y->i;
}

/* Full sorts instead of top-k, from the router's own scores (s) and the bias. */
static void naive_route(const ds4_config *c, const float *s, const float *bias, int *ex) {
    const int E = c->n_routed_experts, G = c->n_group, per = E / G;
    vi sel[256], gs[256], tmp[256];
    for (int e = 0; e < E; e++) sel[e] = (vi){s[e] + bias[e], e};
    for (int g = 0; g < G; g++) {
        memcpy(tmp, sel + g * per, sizeof(vi) * per);
        qsort(tmp, per, sizeof(vi), vi_desc);
        float sum = 0;
        for (int j = 0; j < (per < 2 ? per : 2); j++) sum += tmp[j].v;
        gs[g] = (vi){sum, g};
    }
    qsort(gs, G, sizeof(vi), vi_desc);
    int n = 0;
    if (c->topk_per_group > 0) {
        for (int j = 0; j < c->topk_group; j++) {
            memcpy(tmp, sel + gs[j].i * per, sizeof(vi) * per);
            qsort(tmp, per, sizeof(vi), vi_desc);
            for (int i = 0; i < c->topk_per_group; i++) ex[n++] = tmp[i].i;
        }
    } else {
        int m = 0;
        for (int j = 0; j < c->topk_group; j++)
            for (int e = gs[j].i * per; e < (gs[j].i + 1) * per; e++) tmp[m++] = sel[e];
        qsort(tmp, m, sizeof(vi), vi_desc);
        for (int i = 0; i < c->num_experts_per_tok; i++) ex[n++] = tmp[i].i;
    }
}

static void test_random_vs_naive(void **state) {
    (void)state;
    const int shapes[][5] = {   /* E, G, tg, tpg, k */
        {16, 4, 2, 2, 4}, {16, 4, 2, 0, 3}, {64, 16, 4, 1, 4}, {64, 16, 2, 2, 4}, {12, 3, 1, 4, 4},
        {8, 8, 3, 1, 3}, {32, 1, 1, 0, 5}, {128, 32, 8, 2, 16}, {128, 32, 8, 0, 8}, {6, 2, 2, 3, 6},
    };
    ds4_rng r;
    ds4_rng_seed(&r, 11);
    int checked = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int scoring = 0; scoring < 2; scoring++) {
            const int *sh = shapes[si];
            ds4_config c = cfg(sh[0], sh[1], sh[2], sh[3], sh[4], scoring);
            const int E = sh[0], k = ds4_moe_k(&c), n = 64;
            float *lg = malloc(sizeof(float) * n * E), *s = malloc(sizeof(float) * n * E);
            float *w = malloc(sizeof(float) * n * k), bias[256];
            int *ex = malloc(sizeof(int) * n * k), ref[256];
            for (int i = 0; i < n * E; i++) lg[i] = ds4_rng_normal(&r);
            for (int e = 0; e < E; e++) bias[e] = 0.1f * ds4_rng_normal(&r) - 0.5f;   /* often negative */
            ds4_moe_route(&c, lg, bias, n, ex, w, s);
            for (int t = 0; t < n; t++) {
                naive_route(&c, s + t * E, bias, ref);
                for (int j = 0; j < k; j++)
                    if (ex[t * k + j] != ref[j])
                        fail_msg("shape %zu scoring %d token %d slot %d: %d vs naive %d", si, scoring, t, j,
                                 ex[t * k + j], ref[j]);
                double z = 0;
                for (int j = 0; j < k; j++) z += s[t * E + ref[j]];
                for (int j = 0; j < k; j++) assert_float_equal(w[t * k + j], s[t * E + ref[j]] / z, 1e-6);
                checked++;
            }
            free(lg); free(s); free(w); free(ex);
        }
    printf("%d tokens routed identically to the naive router\n", checked);
}

/* ---- bias update -------------------------------------------------------------- */

static void test_bias_update_rule(void **state) {
    (void)state;
    const int64_t load[5] = {3, 1, 2, 2, 2};           /* mean 2 */
    float b[5] = {0, 0, 0, -0.5f, 0.25f};
    ds4_moe_bias_update(b, load, 5, 1e-3f);
    assert_true(b[0] == -1e-3f);                        /* overloaded: down */
    assert_true(b[1] == 1e-3f);                         /* underloaded: up */
    assert_true(b[2] == 0.0f && b[3] == -0.5f && b[4] == 0.25f);   /* at the mean: unchanged */
    /* a non-integer mean (7/3): nobody sits on it */
    const int64_t l3[3] = {2, 2, 3};
    float b3[3] = {0};
    ds4_moe_bias_update(b3, l3, 3, 0.5f);
    assert_true(b3[0] == 0.5f && b3[1] == 0.5f && b3[2] == -0.5f);
}

static void test_bias_update_model_and_loads(void **state) {
    (void)state;
    ds4_config c = cfg(4, 2, 1, 2, 2, DS4_SCORE_SIGMOID);
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    ds4_model *m = ds4_model_create(&c, 1);
    assert_non_null(m);
    ds4_acts *a = ds4_acts_create(&c, 4, 2, 0);
    assert_non_null(a);
    const int off[5] = {0, 5, 5, 6, 8};                 /* loads 5, 0, 1, 2 */
    memcpy(a->l[1].offsets, off, sizeof off);
    int64_t loads[8] = {0};
    ds4_moe_loads_add(&c, a, loads);
    ds4_moe_loads_add(&c, a, loads);
    const int64_t want[8] = {0, 0, 0, 0, 10, 0, 2, 4};
    for (int i = 0; i < 8; i++) assert_int_equal(loads[i], want[i]);
    ds4_moe_bias_update_model(m, loads);                /* rate 0: off */
    for (int e = 0; e < 4; e++) assert_true(m->w.layers[1].router_bias[e] == 0.0f);
    m->cfg.router_bias_update_rate = 0.25f;
    ds4_moe_bias_update_model(m, loads);                /* mean 4 */
    const float wb[4] = {-0.25f, 0.25f, 0.25f, 0.0f};
    for (int e = 0; e < 4; e++) assert_true(m->w.layers[1].router_bias[e] == wb[e]);
    ds4_acts_free(a);
    ds4_model_free(m);
}

/* The rule balances a skewed router without touching its weights. */
static void test_bias_update_balances(void **state) {
    (void)state;
    ds4_config c = cfg(16, 4, 2, 2, 4, DS4_SCORE_SIGMOID);
    const int E = 16, k = 4, n = 1024;
    float *lg = malloc(sizeof(float) * n * E), *s = malloc(sizeof(float) * n * E), *w = malloc(sizeof(float) * n * k);
    int *ex = malloc(sizeof(int) * n * k);
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++) lg[t * E + e] = 0.5f * ds4_rng_normal(&r) + 0.15f * e;   /* skew to high ids */
    float bias[16] = {0};
    double first = 0, last = 0;
    for (int it = 0; it < 1000; it++) {
        ds4_moe_route(&c, lg, bias, n, ex, w, s);
        int64_t load[16] = {0};
        for (int i = 0; i < n * k; i++) load[ex[i]]++;
        ds4_moe_load_stats st;
        ds4_moe_load_stats_of(load, E, &st);
        if (it == 0) first = st.utilization;
        last = st.utilization;
        ds4_moe_bias_update(bias, load, E, 0.002f);
    }
    printf("utilization %.3f without bias, %.3f after 1000 updates (u = 0.002)\n", first, last);
    assert_true(first < 0.6);
    assert_true(last > 0.9);
    free(lg); free(s); free(w); free(ex);
}

/* --bias-every / --bias-ema: the sign rule on loads over a window of steps. */
static void test_bias_window_rule(void **state) {
    (void)state;
    /* on one step's loads it is the SPEC rule */
    ds4_rng r;
    ds4_rng_seed(&r, 11);
    for (int it = 0; it < 50; it++) {
        int64_t load[7];
        double win[7];
        float b1[7] = {0}, b2[7] = {0};
        for (int e = 0; e < 7; e++) load[e] = (int64_t)(ds4_rng_u64(&r) % 5);
        ds4_moe_load_window_add(win, load, 7, 0.0, 1);
        ds4_moe_bias_update(b1, load, 7, 0.5f);
        ds4_moe_bias_update_window(b2, win, 7, 0.5f);
        for (int e = 0; e < 7; e++) assert_true(b1[e] == b2[e]);
    }
    /* sum over two steps: {3,1,2,2,2} + {1,3,2,2,2} is balanced, nobody moves */
    const int64_t s1[5] = {3, 1, 2, 2, 2}, s2[5] = {1, 3, 2, 2, 2}, s3[5] = {2, 2, 2, 2, 6};
    double w[5];
    float b[5] = {0};
    ds4_moe_load_window_add(w, s1, 5, 0.0, 1);
    ds4_moe_load_window_add(w, s2, 5, 0.0, 0);
    for (int e = 0; e < 5; e++) assert_true(w[e] == 4.0);
    ds4_moe_bias_update_window(b, w, 5, 0.25f);
    for (int e = 0; e < 5; e++) assert_true(b[e] == 0.0f);
    /* EMA, beta 0.5: {3,1,2,2,2} -> {2,2,2,2,2} -> {2,2,2,2,4}; mean 2.4 */
    ds4_moe_load_window_add(w, s1, 5, 0.5, 1);
    for (int e = 0; e < 5; e++) assert_true(w[e] == (double)s1[e]);
    ds4_moe_load_window_add(w, s2, 5, 0.5, 0);
    for (int e = 0; e < 5; e++) assert_true(w[e] == 2.0);
    ds4_moe_load_window_add(w, s3, 5, 0.5, 0);
    assert_true(w[0] == 2.0 && w[4] == 4.0);
    ds4_moe_bias_update_window(b, w, 5, 0.25f);
    assert_true(b[0] == 0.25f && b[3] == 0.25f && b[4] == -0.25f);
    /* a bursty expert (0 in three steps of four, 12 in the fourth: mean 3 > 2 of the
     * others): per step the sign rule raises its bias (below the mean 3 times in 4,
     * i.e. it balances the median), the 4-step window lowers it (balances the mean) */
    float per_step = 0, windowed = 0;
    double acc[3];
    for (int step = 0; step < 8; step++) {
        const int64_t l[3] = {step % 4 == 3 ? 12 : 0, 2, 2};
        float bb[3] = {per_step, 0, 0};
        ds4_moe_bias_update(bb, l, 3, 0.1f);
        per_step = bb[0];
        ds4_moe_load_window_add(acc, l, 3, 0.0, step % 4 == 0);
        if (step % 4 == 3) {
            float bw[3] = {windowed, 0, 0};
            ds4_moe_bias_update_window(bw, acc, 3, 0.1f);
            windowed = bw[0];
        }
    }
    assert_float_equal(per_step, 0.4f, 1e-6);      /* 6 steps up, 2 down */
    assert_float_equal(windowed, -0.2f, 1e-6);     /* 2 windows, both down */
}

/* ---- capacity ---------------------------------------------------------------- */

static void test_capacity_hand(void **state) {
    (void)state;
    /* k = 1, cap = ceil(1.0 * 4 * 1 / 4) = 1: everybody prefers expert 0 */
    ds4_config c = cfg(4, 1, 1, 1, 1, DS4_SCORE_SIGMOID);
    c.expert_capacity_factor = 1.0f;
    c.norm_topk_prob = 0;
    assert_int_equal(ds4_moe_capacity(&c, 4), 1);
    const float sc[16] = {0.9f, 0.8f, 0.1f, 0.2f, 0.9f, 0.1f, 0.8f, 0.2f,
                          0.9f, 0.5f, 0.6f, 0.7f, 0.9f, 0.7f, 0.6f, 0.1f};
    int ex[4] = {0, 0, 0, 0};
    float w[4] = {0.9f, 0.9f, 0.9f, 0.9f};
    assert_int_equal(ds4_moe_apply_capacity(&c, sc, NULL, 4, 1, ex, w), 0);
    expect_experts(ex, (int[]){0, 2, 3, 1}, 4);
    assert_float_equal(w[1], 0.8f, 1e-7);              /* weights follow the new expert */
    assert_float_equal(w[2], 0.7f, 1e-7);
    assert_float_equal(w[3], 0.7f, 1e-7);
    /* two groups of 2, each token's one chosen group is group 0: once both of
     * its experts are full the token keeps its expert over capacity */
    ds4_config d = cfg(4, 2, 1, 1, 1, DS4_SCORE_SIGMOID);
    const float s2[16] = {0.9f, 0.8f, 0.1f, 0.1f, 0.9f, 0.8f, 0.1f, 0.1f,
                          0.9f, 0.8f, 0.1f, 0.1f, 0.9f, 0.8f, 0.1f, 0.1f};
    int e2[4] = {0, 0, 0, 0};
    float w2[4];
    assert_int_equal(ds4_moe_apply_capacity(&d, s2, NULL, 4, 1, e2, w2), 2);
    expect_experts(e2, (int[]){0, 1, 0, 0}, 4);        /* never moved to group 1, never dropped */
}

static void check_capacity_invariants(const ds4_config *c, const float *s, const float *bias, const int *orig,
                                      const float *worig, const int *ex, const float *w, int n, int cap, int over) {
    const int E = c->n_routed_experts, k = ds4_moe_k(c), per = E / c->n_group;
    int64_t load[256] = {0};
    for (int t = 0; t < n; t++) {
        float sel[256];
        int groups[256];
        for (int e = 0; e < E; e++) sel[e] = s[t * E + e] + bias[e];
        ds4_moe_route_groups(c, sel, groups);
        int changed = 0;
        for (int j = 0; j < k; j++) {
            const int e = ex[t * k + j];
            assert_true(e >= 0 && e < E);
            load[e]++;
            int in_group = 0;
            for (int g = 0; g < c->topk_group; g++) in_group |= e / per == groups[g];
            assert_true(in_group);                     /* stays inside the chosen groups */
            for (int i = 0; i < j; i++) assert_int_not_equal(ex[t * k + i], e);   /* distinct */
            changed |= e != orig[t * k + j];
        }
        float wr[64];
        ds4_moe_route_weights(c, s + t * E, ex + t * k, wr);
        for (int j = 0; j < k; j++)
            assert_float_equal(w[t * k + j], changed ? wr[j] : worig[t * k + j], 1e-6);
    }
    int64_t total = 0, excess = 0;
    for (int e = 0; e < E; e++) {
        total += load[e];
        if (load[e] > cap) excess += load[e] - cap;
    }
    assert_int_equal(total, (int64_t)n * k);            /* no token-slot lost */
    assert_int_equal(excess, over);                     /* only the reported overflow exceeds cap */
}

static void test_capacity_no_token_lost(void **state) {
    (void)state;
    const int shapes[][5] = {{16, 4, 2, 2, 4}, {16, 4, 2, 0, 3}, {64, 16, 4, 1, 4}, {8, 1, 1, 2, 2}};
    const float factors[] = {0.5f, 1.0f, 1.25f, 2.0f};
    ds4_rng r;
    ds4_rng_seed(&r, 21);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t fi = 0; fi < sizeof factors / sizeof factors[0]; fi++) {
            const int *sh = shapes[si];
            ds4_config c = cfg(sh[0], sh[1], sh[2], sh[3], sh[4], DS4_SCORE_SIGMOID);
            c.expert_capacity_factor = factors[fi];
            const int E = sh[0], k = ds4_moe_k(&c), n = 300;
            float *lg = malloc(sizeof(float) * n * E), *s = malloc(sizeof(float) * n * E);
            float *w = malloc(sizeof(float) * n * k), *w0 = malloc(sizeof(float) * n * k), bias[256];
            int *ex = malloc(sizeof(int) * n * k), *ex0 = malloc(sizeof(int) * n * k);
            for (int t = 0; t < n; t++)
                for (int e = 0; e < E; e++) lg[t * E + e] = ds4_rng_normal(&r) + 0.1f * (e % 7);   /* skewed */
            for (int e = 0; e < E; e++) bias[e] = 0.05f * ds4_rng_normal(&r);
            ds4_moe_route(&c, lg, bias, n, ex, w, s);
            memcpy(ex0, ex, sizeof(int) * n * k);
            memcpy(w0, w, sizeof(float) * n * k);
            const int cap = ds4_moe_capacity(&c, n);
            const int over = ds4_moe_apply_capacity(&c, s, bias, n, cap, ex, w);
            assert_true(over >= 0);
            check_capacity_invariants(&c, s, bias, ex0, w0, ex, w, n, cap, over);
            if (factors[fi] >= 1.25f && sh[1] == 1) assert_int_equal(over, 0);   /* one group: room for all */
            free(lg); free(s); free(w); free(w0); free(ex); free(ex0);
        }
}

/* The training forward applies capacity; inference stays dropless. */
static void test_capacity_in_forward(void **state) {
    (void)state;
    ds4_config c = cfg(8, 2, 2, 2, 4, DS4_SCORE_SIGMOID);
    c.expert_capacity_factor = 1.0f;
    ds4_model *m = ds4_model_create(&c, 5);
    assert_non_null(m);
    ds4_layer *W = &m->w.layers[0];
    for (int d = 0; d < c.hidden_size; d++) W->router[d] += 0.5f;   /* expert 0 favoured */
    const int n = 32, D = c.hidden_size;
    float *x = malloc(sizeof(float) * n * D);
    ds4_rng r;
    ds4_rng_seed(&r, 9);
    for (int i = 0; i < n * D; i++) x[i] = ds4_rng_normal(&r) + 1.0f;
    int *seq = calloc(n, sizeof(int));
    ds4_acts *a = ds4_acts_create(&c, n, 1, 0);
    ds4_layer_acts *A = &a->l[0];
    ds4_moe_forward(&c, W, A, x, n);                   /* inference: no capacity */
    const int cap = ds4_moe_capacity(&c, n);
    const int load0 = A->offsets[1] - A->offsets[0];
    printf("dropless load of expert 0: %d (capacity %d)\n", load0, cap);
    assert_true(load0 > cap);
    A->seq = seq;                                      /* training forward */
    ds4_moe_forward(&c, W, A, x, n);
    assert_int_equal(A->offsets[8], n * 4);            /* every token still has 4 rows */
    int excess = 0;
    for (int e = 0; e < 8; e++) excess += DS4_MAX(0, A->offsets[e + 1] - A->offsets[e] - cap);
    printf("training forward: largest load %d, %d slots over capacity\n", A->offsets[1] - A->offsets[0],
           A->over_capacity);
    assert_int_equal(excess, A->over_capacity);
    assert_true(A->offsets[1] - A->offsets[0] <= cap + A->over_capacity);
    assert_true(A->over_capacity < load0 - cap);
    ds4_acts_free(a);
    free(x); free(seq);
    ds4_model_free(m);
}

/* ---- auxiliary loss ------------------------------------------------------------- */

static void test_balance_value(void **state) {
    (void)state;
    /* 4 experts, k = 1, every expert once, uniform scores: E * sum f P = 4 * 4 * 1/16 = 1 */
    ds4_config c = cfg(4, 1, 1, 1, 1, DS4_SCORE_SIGMOID);
    float s[16];
    for (int i = 0; i < 16; i++) s[i] = 0.3f;
    const int ex[4] = {0, 1, 2, 3};
    assert_float_equal(ds4_moe_balance_stat(&c, s, ex, NULL, 4), 1.0, 1e-9);
    /* everything on expert 2 with all the score there: E * 1 * 1 = 4 */
    for (int i = 0; i < 16; i++) s[i] = i % 4 == 2 ? 0.9f : 0.0f;
    const int ex2[4] = {2, 2, 2, 2};
    assert_float_equal(ds4_moe_balance_stat(&c, s, ex2, NULL, 4), 4.0, 1e-6);
    /* per sequence: seq A balanced (1), seq B collapsed (4): mean 2.5 */
    float s3[32];
    int ex3[8];
    const int seq[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    for (int t = 0; t < 8; t++) {
        for (int e = 0; e < 4; e++) s3[t * 4 + e] = t < 4 ? 0.3f : (e == 2 ? 0.9f : 0.0f);
        ex3[t] = t < 4 ? t : 2;
    }
    assert_float_equal(ds4_moe_balance_stat(&c, s3, ex3, seq, 8), 2.5, 1e-6);
}

static double stat_of_logits(const ds4_config *c, const double *lg, const int *ex, const int *seq, int n) {
    const int E = c->n_routed_experts;
    float *lf = malloc(sizeof(float) * n * E), *s = malloc(sizeof(float) * n * E);
    int *tmp_ex = malloc(sizeof(int) * n * ds4_moe_k(c));
    float *tmp_w = malloc(sizeof(float) * n * ds4_moe_k(c));
    for (int i = 0; i < n * E; i++) lf[i] = (float)lg[i];
    ds4_moe_route(c, lf, NULL, n, tmp_ex, tmp_w, s);     /* for the scores only */
    const double v = ds4_moe_balance_stat(c, s, ex, seq, n);
    free(lf); free(s); free(tmp_ex); free(tmp_w);
    return v;
}

static void test_aux_gradient_finite_differences(void **state) {
    (void)state;
    for (int scoring = 0; scoring < 2; scoring++) {
        ds4_config c = cfg(8, 4, 2, 1, 2, scoring);
        const int E = 8, k = 2, n = 11;
        const int seq[11] = {0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2};   /* 3 sequences, unequal lengths */
        double lg[88];
        float lf[88], s[88], w[22], dl[88] = {0};
        int ex[22];
        ds4_rng r;
        ds4_rng_seed(&r, 17 + scoring);
        for (int i = 0; i < n * E; i++) { lg[i] = ds4_rng_normal(&r); lf[i] = (float)lg[i]; }
        ds4_moe_route(&c, lf, NULL, n, ex, w, s);
        const float scale = 0.7f;
        ds4_moe_balance_stat_backward(&c, s, ex, seq, n, scale, dl);
        double worst = 0, gmax = 0;
        for (int i = 0; i < n * E; i++) {
            const double h = 1e-2, keep = lg[i];
            lg[i] = keep + h;
            const double fp = stat_of_logits(&c, lg, ex, seq, n);
            lg[i] = keep - h;
            const double fm = stat_of_logits(&c, lg, ex, seq, n);
            lg[i] = keep;
            const double fd = scale * (fp - fm) / (2 * h);
            worst = fmax(worst, fabs(fd - dl[i]));
            gmax = fmax(gmax, fabs(dl[i]));
        }
        (void)k;
        printf("%s: aux gradient max |fd - analytic| %.3g, max |grad| %.3g\n",
               scoring ? "softmax" : "sigmoid", worst, gmax);
        assert_true(gmax > 1e-3);
        assert_true(worst < 5e-3 * gmax);
    }
}

/* ---- metrics --------------------------------------------------------------------- */

static void test_load_stats(void **state) {
    (void)state;
    const int64_t load[4] = {4, 0, 2, 2};
    ds4_moe_load_stats st;
    ds4_moe_load_stats_of(load, 4, &st);
    assert_int_equal(st.total, 8);
    assert_float_equal(st.mean, 2.0, 1e-12);
    assert_float_equal(st.utilization, 0.5, 1e-12);
    assert_float_equal(st.max_vio, 1.0, 1e-12);
    assert_float_equal(st.utilization, 1 / (1 + st.max_vio), 1e-12);
    assert_int_equal(st.dead, 1);
    assert_float_equal(st.cv, sqrt(2.0) / 2, 1e-12);
    const int64_t flat[3] = {5, 5, 5};
    ds4_moe_load_stats_of(flat, 3, &st);
    assert_float_equal(st.utilization, 1.0, 1e-12);
    assert_float_equal(st.cv, 0.0, 1e-12);
    assert_int_equal(st.dead, 0);
}

static void test_comm_counts(void **state) {
    (void)state;
    /* 8 experts on 4 ranks (2 each). Token 0 lives on rank 0, token 1 on rank 1. */
    const int ex[8] = {0, 1, 2, 6,      /* ranks {0, 1, 3}: 3 distinct, 2 remote */
                       2, 3, 4, 7};     /* ranks {1, 2, 3}: 3 distinct, home rank 1 -> 2 remote */
    ds4_moe_comm cm = {0};
    ds4_moe_comm_add(&cm, ex, 2, 4, 8, 4, 0);
    assert_int_equal(cm.tokens, 2);
    assert_int_equal(cm.ranks, 6);
    assert_int_equal(cm.remote, 4);
    assert_float_equal(ds4_moe_comm_dispatch_bytes(&cm, 100, 2), 2.0 * 100 * 2, 1e-9);
    /* the same tokens placed at stream offset 2 and 3: homes 2 and 3 */
    ds4_moe_comm c2 = {0};
    ds4_moe_comm_add(&c2, ex, 2, 4, 8, 4, 2);
    assert_int_equal(c2.remote, 3 + 2);
    /* placement */
    ds4_config c = cfg(64, 16, 2, 2, 4, DS4_SCORE_SIGMOID);
    assert_int_equal(ds4_moe_placement_check(&c, 8), 0);
    assert_int_equal(ds4_moe_placement_check(&c, 16), 0);
    assert_int_equal(ds4_moe_placement_check(&c, 3), -1);
    assert_int_equal(ds4_moe_placement_check(&c, 32), -1);   /* a group cannot be split */
}

static void test_expected_ranks_formula(void **state) {
    (void)state;
    /* 4 units on 2 ranks, 2 chosen: 1 - P(both on one rank) -> 2 (1 - 1/6) */
    assert_float_equal(ds4_moe_expected_ranks(4, 2, 2), 2 * (1 - 1.0 / 6), 1e-12);
    assert_float_equal(ds4_moe_expected_ranks(8, 8, 3), 3.0, 1e-12);          /* one unit per rank */
    assert_float_equal(ds4_moe_expected_ranks(16, 1, 5), 1.0, 1e-12);
    /* Monte Carlo: 128 units on 16 ranks, 8 chosen uniformly without replacement */
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    const int trials = 20000;
    double sum = 0;
    for (int it = 0; it < trials; it++) {
        int pick[128];
        for (int i = 0; i < 128; i++) pick[i] = i;
        unsigned char hit[16] = {0};
        int d = 0;
        for (int j = 0; j < 8; j++) {
            const int q = j + (int)(ds4_rng_u64(&r) % (uint64_t)(128 - j));
            const int u = pick[q];
            pick[q] = pick[j];
            pick[j] = u;
            if (!hit[u / 8]) { hit[u / 8] = 1; d++; }
        }
        sum += d;
    }
    const double mc = sum / trials, f = ds4_moe_expected_ranks(128, 16, 8);
    printf("expected distinct ranks: formula %.4f, Monte Carlo %.4f\n", f, mc);
    assert_true(fabs(mc - f) < 0.02);
}

/* ds4_moe_measure: loads add up, hierarchical routing never touches more
 * ranks than topk_group, flat routing is counted on the same placement. */
static void test_measure(void **state) {
    (void)state;
    ds4_config c = cfg(16, 4, 2, 2, 4, DS4_SCORE_SIGMOID);
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.n_shared_experts = 1;
    ds4_model *m = ds4_model_create(&c, 2);
    assert_non_null(m);
    int ids[100];
    for (int i = 0; i < 100; i++) ids[i] = (i * 7 + 3) % c.vocab_size;
    ds4_moe_report rep = {.n_ranks = 2, .ranks = {2, 4}};
    assert_int_equal(ds4_moe_measure(m, ids, 100, 32, &rep), 0);
    assert_int_equal(rep.tokens, 99);
    assert_false(rep.is_moe[0]);
    assert_true(rep.is_moe[1]);
    int64_t sum = 0;
    for (int e = 0; e < 16; e++) { sum += rep.load[16 + e]; assert_int_equal(rep.load[e], 0); }
    assert_int_equal(sum, 99 * 4);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rep.comm[1][i].tokens, 99);
        assert_true(rep.comm[1][i].ranks <= 99 * 2);       /* at most topk_group ranks per token */
        assert_true(rep.comm[1][i].remote <= rep.comm[1][i].ranks);
        assert_int_equal(rep.flat_comm[1][i].tokens, 99);
    }
    assert_true(isfinite(rep.loss) && rep.loss > 0);
    ds4_moe_report_free(&rep);
    ds4_moe_report bad = {.n_ranks = 1, .ranks = {3}};
    assert_int_equal(ds4_moe_measure(m, ids, 100, 32, &bad), -1);
    ds4_model_free(m);
}

/* Pooling two measurements over consecutive windows gives the measurement of
 * the whole stream: same windows (each from position 0), same rank of each
 * token (64 is a multiple of every R). */
static void test_report_pool(void **state) {
    (void)state;
    ds4_config c = cfg(16, 4, 2, 2, 4, DS4_SCORE_SIGMOID);
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    ds4_model *m = ds4_model_create(&c, 3);
    assert_non_null(m);
    int ids[100];
    for (int i = 0; i < 100; i++) ids[i] = (i * 11 + 5) % c.vocab_size;
    ds4_moe_report all = {.n_ranks = 2, .ranks = {2, 4}}, a = all, b = all;
    assert_int_equal(ds4_moe_measure(m, ids, 100, 32, &all), 0);
    assert_int_equal(ds4_moe_measure(m, ids, 65, 32, &a), 0);          /* windows 0..31, 32..63 */
    assert_int_equal(ds4_moe_measure(m, ids + 64, 36, 32, &b), 0);     /* 64..95, 96..98 */
    assert_int_equal(ds4_moe_report_add(&a, &b), 0);
    assert_int_equal(a.tokens, all.tokens);
    for (int i = 0; i < 2 * 16; i++) assert_int_equal(a.load[i], all.load[i]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(a.comm[1][i].remote, all.comm[1][i].remote);
        assert_int_equal(a.flat_comm[1][i].ranks, all.flat_comm[1][i].ranks);
    }
    assert_float_equal(a.loss, all.loss, 1e-5 * all.loss);
    ds4_moe_report other = {.n_ranks = 1, .ranks = {2}};
    assert_int_equal(ds4_moe_measure(m, ids, 40, 32, &other), 0);
    assert_int_equal(ds4_moe_report_add(&a, &other), -1);            /* different rank lists */
    ds4_moe_report_free(&a); ds4_moe_report_free(&b); ds4_moe_report_free(&all); ds4_moe_report_free(&other);
    ds4_model_free(m);
}

static void test_bias_rate_schedule(void **state) {
    (void)state;
    /* constant (SPEC default): u at every step */
    assert_true(ds4_moe_bias_rate_scheduled(1e-3f, 0, 100, 0, 0.01f, 0) == 1e-3f);
    assert_true(ds4_moe_bias_rate_scheduled(1e-3f, 99, 100, 0, 0.1f, 0) == 1e-3f);
    /* in step with the learning rate */
    assert_true(ds4_moe_bias_rate_scheduled(0.5f, 10, 100, 1, 0.25f, 0) == 0.125f);
    /* frozen for the last 10%: steps 90..99 */
    assert_true(ds4_moe_bias_rate_scheduled(1e-3f, 89, 100, 0, 1, 0.1f) == 1e-3f);
    assert_true(ds4_moe_bias_rate_scheduled(1e-3f, 90, 100, 0, 1, 0.1f) == 0.0f);
    assert_true(ds4_moe_bias_rate_scheduled(1e-3f, 99, 100, 1, 1, 0.1f) == 0.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_pool),
        cmocka_unit_test(test_bias_rate_schedule),
        cmocka_unit_test(test_group_score_top2_and_ties),
        cmocka_unit_test(test_weights_from_unbiased_scores),
        cmocka_unit_test(test_negative_scores_masked_with_minus_inf),
        cmocka_unit_test(test_one_group_is_flat_topk),
        cmocka_unit_test(test_k_equal_to_group_size),
        cmocka_unit_test(test_deepseek_v3_mode),
        cmocka_unit_test(test_softmax_scores),
        cmocka_unit_test(test_random_vs_naive),
        cmocka_unit_test(test_bias_update_rule),
        cmocka_unit_test(test_bias_update_model_and_loads),
        cmocka_unit_test(test_bias_update_balances),
        cmocka_unit_test(test_bias_window_rule),
        cmocka_unit_test(test_capacity_hand),
        cmocka_unit_test(test_capacity_no_token_lost),
        cmocka_unit_test(test_capacity_in_forward),
        cmocka_unit_test(test_balance_value),
        cmocka_unit_test(test_aux_gradient_finite_differences),
        cmocka_unit_test(test_load_stats),
        cmocka_unit_test(test_comm_counts),
        cmocka_unit_test(test_expected_ranks_formula),
        cmocka_unit_test(test_measure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
