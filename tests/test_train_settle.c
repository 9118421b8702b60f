/* test_train_settle.c — the load bias settled on a fixed router (SPEC §1.2's
 * sign rule after the last step): it balances a skewed router, moves the bias
 * and nothing else, and `ds4 train --bias-settle` changes only the bias. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "model/acts.h"
#include "model/model.h"
#include "model/moe.h"
#include "train/train.h"
#include "util/util.h"
#include "testutil.h"

enum { NDATA = 4000, B = 4, T = 16 };
static int g_data[NDATA];

static void moe_config(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 40;
    c->hidden_size = 16;
    c->intermediate_size = 24;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 1;
    c->num_attention_heads = 2;
    c->num_key_value_heads = 1;
    c->head_dim = 8;
    c->max_position_embeddings = 32;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->moe_intermediate_size = 8;
    c->n_group = 4;
    c->topk_group = 2;
    c->topk_per_group = 1;
    c->num_experts_per_tok = 2;
    c->scoring_func = DS4_SCORE_SIGMOID;
    c->norm_topk_prob = 1;
    c->router_bias_update_rate = 0.01f;
}

static int setup(void **state) {
    (void)state;
    if (tmpdir_make("settle") != 0) return -1;
    ds4_rng r;
    ds4_rng_seed(&r, 21);
    for (int i = 0; i < NDATA; i++) g_data[i] = (int)(ds4_rng_u64(&r) % 40);
    ds4_config c;
    moe_config(&c);
    if (ds4_config_validate(&c) != 0 || ds4_config_save(&c, tmp_path("moe.json")) != 0) return -1;
    c.first_k_dense_replace = 2;                  /* both layers dense */
    if (ds4_config_save(&c, tmp_path("dense.json")) != 0) return -1;
    return ds4_shard_write(tmp_path("data.bin"), g_data, NDATA);
}

static int teardown(void **state) {
    (void)state;
    return getenv("DS4_KEEP_TMP") ? 0 : tmpdir_remove();
}

/* Utilization (mean / max load) of layer 1 over 24 fixed batches of g_data. */
static double layer1_utilization(ds4_train_ctx *ctx, ds4_model *m) {
    const int E = m->cfg.n_routed_experts;
    int64_t load[2 * 8] = {0};
    int ids[B * (T + 1)];
    ds4_rng r;
    ds4_rng_seed(&r, 4242);
    for (int k = 0; k < 24; k++) {
        for (int b = 0; b < B; b++) {
            const size_t off = (size_t)(ds4_rng_u64(&r) % (NDATA - T - 1));
            memcpy(ids + b * (T + 1), g_data + off, sizeof(int) * (T + 1));
        }
        assert_false(isnan(ds4_train_ctx_loss(ctx, m, ids)));
        ds4_moe_loads_add(&m->cfg, ds4_train_ctx_acts(ctx), load);
    }
    ds4_moe_load_stats st;
    ds4_moe_load_stats_of(load + E, E, &st);
    return st.utilization;
}

static int is_bias(const char *name) { return strstr(name, "e_score_correction_bias") != NULL; }

/* Tensors that differ between a and b: load biases and the others. */
static void count_diff(const ds4_model *a, const ds4_model *b, int *bias, int *other) {
    assert_int_equal(a->layout.n_tensors, b->layout.n_tensors);
    *bias = *other = 0;
    for (int i = 0; i < a->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &a->layout.tensors[i];
        const int diff = memcmp(a->params + t->offset, b->params + t->offset, t->numel * sizeof(float)) != 0;
        if (is_bias(t->name)) *bias += diff;
        else *other += diff;
    }
}

/* Layer 1's router: random rows of sd 0.5 (tokens prefer different experts,
 * as after training), and experts 0 and 2 favoured by a bias of +0.6. */
static void skew_router(ds4_model *m) {
    const ds4_config *c = &m->cfg;
    ds4_rng r;
    ds4_rng_seed(&r, 17);
    for (int i = 0; i < c->n_routed_experts * c->hidden_size; i++)
        m->w.layers[1].router[i] = 0.5f * (float)ds4_rng_normal(&r);
    m->w.layers[1].router_bias[0] = m->w.layers[1].router_bias[2] = 0.6f;
}

/* A skewed router: settling brings layer 1's utilization near balance; only
 * the bias moved. */
static void test_settle_balances_a_skewed_router(void **state) {
    (void)state;
    ds4_config c;
    moe_config(&c);
    ds4_model *m = ds4_model_create(&c, 5), *ref = ds4_model_create(&c, 5);
    assert_non_null(m);
    assert_non_null(ref);
    skew_router(m);
    skew_router(ref);
    ds4_train_ctx *ctx = ds4_train_ctx_create(m, B, T);
    assert_non_null(ctx);
    const double before = layer1_utilization(ctx, m);
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    assert_int_equal(ds4_moe_bias_settle(ctx, m, g_data, NDATA, 400, 0.0, &r), 0);
    const double after = layer1_utilization(ctx, m);
    printf("  layer 1 utilization on 1536 tokens: %.3f before settling, %.3f after\n", before, after);
    assert_true(before < 0.45);               /* experts 0 and 2 take (nearly) every token of their groups */
    assert_true(after > 0.75);                /* balanced up to the noise of 3072 token-slots over 8 experts */
    double rest = 0;                          /* the favoured experts' lead over the others' mean bias */
    for (int e = 0; e < 8; e++) rest += e == 0 || e == 2 ? 0 : m->w.layers[1].router_bias[e] / 6.0;
    printf("  lead of experts 0 and 2 over the others' mean bias: 0.6 -> %.3f, %.3f\n",
           m->w.layers[1].router_bias[0] - rest, m->w.layers[1].router_bias[2] - rest);
    assert_true(m->w.layers[1].router_bias[0] - rest < 0.3 && m->w.layers[1].router_bias[2] - rest < 0.3);
    int nb, no;
    count_diff(m, ref, &nb, &no);
    assert_int_equal(nb, 1);                  /* the one MoE layer's bias */
    assert_int_equal(no, 0);                  /* no weight moved */

    /* the EMA variant balances too */
    ds4_model *m2 = ds4_model_create(&c, 5);
    skew_router(m2);
    ds4_rng_seed(&r, 3);
    assert_int_equal(ds4_moe_bias_settle(ctx, m2, g_data, NDATA, 400, 0.8, &r), 0);
    const double after2 = layer1_utilization(ctx, m2);
    printf("  with the EMA (beta 0.8) of the batch loads: %.3f\n", after2);
    assert_true(after2 > 0.75);
    ds4_train_ctx_free(ctx);
    ds4_model_free(m);
    ds4_model_free(m2);
    ds4_model_free(ref);
}

/* What it cannot settle is an error naming why; 0 batches is no change. */
static void test_settle_errors(void **state) {
    (void)state;
    ds4_config c;
    moe_config(&c);
    ds4_model *m = ds4_model_create(&c, 5);
    ds4_train_ctx *ctx = ds4_train_ctx_create(m, B, T);
    assert_non_null(ctx);
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    assert_int_equal(ds4_moe_bias_settle(ctx, m, g_data, NDATA, 0, 0.0, &r), 0);
    assert_int_equal(ds4_moe_bias_settle(ctx, m, g_data, NDATA, 5, 1.0, &r), -1);
    assert_non_null(strstr(ds4_error(), "EMA"));
    assert_int_equal(ds4_moe_bias_settle(ctx, m, g_data, T + 1, 5, 0.0, &r), -1);
    assert_non_null(strstr(ds4_error(), "fewer than seq"));
    m->cfg.router_bias_update_rate = 0;
    assert_int_equal(ds4_moe_bias_settle(ctx, m, g_data, NDATA, 5, 0.0, &r), -1);
    assert_non_null(strstr(ds4_error(), "router_bias_update_rate"));
    ds4_train_ctx_free(ctx);
    ds4_model_free(m);
}

static void train_opts(ds4_train_opts *o, const char *config, const char *out, long settle) {
    ds4_train_opts_defaults(o);
    o->config_path = config;
    o->data_path = tmp_path("data.bin");
    o->out_dir = out;
    o->steps = 3;
    o->batch = B;
    o->seq = T;
    o->lr = 1e-2f;
    o->warmup = 0;
    o->save_every = 0;
    o->seed = 11;
    o->quiet = 1;
    o->bias_settle = settle;
}

/* Through ds4_train_run (`ds4 train --bias-settle N`): the same 3 steps with
 * and without settling give the same weights and different biases; a dense
 * model is refused before training. */
static void test_train_run_settles(void **state) {
    (void)state;
    char cfg[512], out0[512], out1[512];
    snprintf(cfg, sizeof cfg, "%s", tmp_path("moe.json"));
    snprintf(out0, sizeof out0, "%s", tmp_path("run0"));
    snprintf(out1, sizeof out1, "%s", tmp_path("run1"));
    ds4_train_opts o;
    train_opts(&o, cfg, out0, 0);
    assert_int_equal(ds4_train_run(&o), 0);
    train_opts(&o, cfg, out1, 50);
    assert_int_equal(ds4_train_run(&o), 0);
    ds4_model *a = ds4_model_load(out0), *b = ds4_model_load(out1);
    assert_non_null(a);
    assert_non_null(b);
    int nb, no;
    count_diff(a, b, &nb, &no);
    assert_int_equal(nb, 1);
    assert_int_equal(no, 0);
    ds4_model_free(a);
    ds4_model_free(b);

    char dcfg[512];
    snprintf(dcfg, sizeof dcfg, "%s", tmp_path("dense.json"));
    train_opts(&o, dcfg, tmp_path("run2"), 5);
    assert_int_equal(ds4_train_run(&o), -1);
    assert_non_null(strstr(ds4_error(), "--bias-settle"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settle_balances_a_skewed_router),
        cmocka_unit_test(test_settle_errors),
        cmocka_unit_test(test_train_run_settles),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
