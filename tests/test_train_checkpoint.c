/* test_train_checkpoint.c — checkpoints: save/load equality, resume that is
 * bit-for-bit equal to an uninterrupted run, and clear errors (no crash) for
 * broken model directories. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "model/model.h"
#include "train/train.h"
#include "util/util.h"

static const char *TINY =
    "{\"vocab_size\": 50, \"hidden_size\": 16, \"intermediate_size\": 24, \"moe_intermediate_size\": 8,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 8,"
    " \"max_position_embeddings\": 32, \"first_k_dense_replace\": 1, \"n_routed_experts\": 4,"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,"
    " \"topk_per_group\": 2}";

/* The same model with every load-balancing mechanism on (SPEC §1.2). */
static const char *TINY_BALANCED =
    "{\"vocab_size\": 50, \"hidden_size\": 16, \"intermediate_size\": 24, \"moe_intermediate_size\": 8,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 8,"
    " \"max_position_embeddings\": 32, \"first_k_dense_replace\": 1, \"n_routed_experts\": 4,"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,"
    " \"topk_per_group\": 2, \"router_bias_update_rate\": 0.01, \"aux_loss_alpha\": 0.01,"
    " \"expert_capacity_factor\": 1.25}";

static char g_dir[256];

static void path(char *out, const char *name) { snprintf(out, 512, "%s/%s", g_dir, name); }

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ds4-ckpt-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    char p[512];
    path(p, "config.json");
    assert_int_equal(ds4_write_file_atomic(p, TINY, strlen(TINY)), 0);
    path(p, "balanced.json");
    assert_int_equal(ds4_write_file_atomic(p, TINY_BALANCED, strlen(TINY_BALANCED)), 0);
    int ids[3000];
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    for (int i = 0; i < 3000; i++) ids[i] = (int)(ds4_rng_u64(&r) % 7) * 7 % 50;  /* learnable */
    path(p, "data.bin");
    assert_int_equal(ds4_shard_write(p, ids, 3000), 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (getenv("DS4_KEEP_TMP")) return 0;
    return system(cmd) == 0 ? 0 : -1;
}

static const char *g_cfg_name = "config.json";

static void opts(ds4_train_opts *o, const char *out, long steps, int resume, char *cfg, char *data) {
    ds4_train_opts_defaults(o);
    path(cfg, g_cfg_name);
    path(data, "data.bin");
    o->config_path = cfg;
    o->data_path = data;
    o->val_path = data;
    o->out_dir = out;
    o->steps = 6;           /* the schedule always spans 6 steps */
    o->batch = 2;
    o->seq = 16;
    o->lr = 3e-3f;
    o->warmup = 2;
    o->eval_every = 3;
    o->eval_batches = 2;
    o->save_every = 0;
    o->quiet = 1;
    o->resume = resume;
    if (steps < 6) o->steps = steps;
}

static void test_save_load_equal(void **state) {
    (void)state;
    ds4_config c;
    char p[512], d[512];
    path(p, "config.json");
    assert_int_equal(ds4_config_load(&c, p), 0);
    ds4_model *m = ds4_model_create(&c, 3);
    assert_non_null(m);
    path(d, "saved");
    assert_int_equal(ds4_model_save(m, d), 0);
    ds4_model *l = ds4_model_load(d);
    if (!l) fail_msg("%s", ds4_error());
    assert_int_equal(l->layout.n_floats, m->layout.n_floats);
    assert_memory_equal(l->params, m->params, m->layout.n_floats * sizeof(float));
    ds4_model_free(l);
    ds4_model_free(m);
}

/* Reads the "loss" values of a JSONL log into out[]; returns the count. */
static int read_losses(const char *log, double *out, int max) {
    FILE *f = fopen(log, "r");
    if (!f) return 0;
    char line[1024];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        if (p) out[n++] = strtod(p + 7, NULL);
    }
    fclose(f);
    return n;
}

static void resume_case(const char *full_name, const char *part_name) {
    char cfg[512], data[512], full[512], part[512], log[600];
    ds4_train_opts o;
    path(full, full_name);
    path(part, part_name);
    opts(&o, full, 6, 0, cfg, data);
    if (ds4_train_run(&o) != 0) fail_msg("%s", ds4_error());
    /* the same 6-step run, interrupted after 3 steps, then resumed */
    opts(&o, part, 6, 0, cfg, data);
    o.stop_after = 3;
    if (ds4_train_run(&o) != 0) fail_msg("%s", ds4_error());
    opts(&o, part, 6, 1, cfg, data);
    if (ds4_train_run(&o) != 0) fail_msg("%s", ds4_error());

    double lf[16], lp[16];
    snprintf(log, sizeof log, "%s/train_log.jsonl", full);
    int nf = read_losses(log, lf, 16);
    snprintf(log, sizeof log, "%s/train_log.jsonl", part);
    int np = read_losses(log, lp, 16);
    assert_int_equal(nf, 6);
    assert_int_equal(np, 6);
    for (int i = 0; i < 6; i++) {
        printf("step %d: uninterrupted %.6f resumed %.6f\n", i + 1, lf[i], lp[i]);
        assert_true(lf[i] == lp[i]);
    }
    assert_true(lf[5] < lf[0]);               /* it learned something */
    ds4_model *a = ds4_model_load(full), *b = ds4_model_load(part);
    assert_non_null(a);
    assert_non_null(b);
    assert_memory_equal(a->params, b->params, a->layout.n_floats * sizeof(float));
    ds4_model_free(a);
    ds4_model_free(b);
}

static void test_resume_bit_for_bit(void **state) {
    (void)state;
    g_cfg_name = "config.json";
    resume_case("full", "part");
}

/* Bias update, aux loss and capacity on: the bias is part of the checkpoint. */
static void test_resume_balanced(void **state) {
    (void)state;
    g_cfg_name = "balanced.json";
    resume_case("full-bal", "part-bal");
    /* after an odd number of +-u sign updates no bias entry can be 0 (with an
     * even number a bias that flips every step sums back to 0) */
    char cfg[512], data[512], d[512];
    ds4_train_opts o;
    path(d, "odd-bal");
    opts(&o, d, 6, 0, cfg, data);
    o.stop_after = 3;
    if (ds4_train_run(&o) != 0) fail_msg("%s", ds4_error());
    ds4_model *m = ds4_model_load(d);
    assert_non_null(m);
    const ds4_tensor_info *t = ds4_layout_find(&m->layout, "model.layers.1.mlp.gate.e_score_correction_bias");
    assert_non_null(t);
    for (size_t i = 0; i < t->numel; i++) {
        printf("bias[%zu] after 3 steps: %+.4f\n", i, m->params[t->offset + i]);
        assert_true(m->params[t->offset + i] != 0.0f);   /* updated and saved */
    }
    ds4_model_free(m);
    g_cfg_name = "config.json";
}

/* Copies DIR/saved to DIR/NAME and applies a shell edit there. */
static void broken_copy(const char *name, const char *edit, char *out) {
    char cmd[2048];
    path(out, name);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s/saved %s && cd %s && %s", out, g_dir, out, out, edit);
    assert_int_equal(system(cmd), 0);
}

static void expect_load_error(const char *name, const char *edit, const char *needle) {
    char d[512];
    broken_copy(name, edit, d);
    ds4_model *m = ds4_model_load(d);
    if (m) fail_msg("%s: loaded a broken model", name);
    printf("%-14s -> %s\n", name, ds4_error());
    if (!strstr(ds4_error(), needle)) fail_msg("%s: error '%s' lacks '%s'", name, ds4_error(), needle);
}

static void test_broken_model_dirs(void **state) {
    (void)state;
    /* test_save_load_equal wrote DIR/saved */
    expect_load_error("truncated", "truncate -s 2000 model.safetensors", "model.safetensors");
    expect_load_error("empty", ": > model.safetensors", "model.safetensors");
    expect_load_error("no-weights", "rm model.safetensors", "model.safetensors");
    expect_load_error("no-config", "rm config.json", "config.json");
    expect_load_error("bad-json", "printf '{\"vocab_size\": ' > config.json", "config.json");
    expect_load_error("unknown-key", "sed -i 's/\"vocab_size\"/\"vocab_sise\"/' config.json", "vocab_sise");
    /* a config that no longer matches the weights */
    expect_load_error("shape", "sed -i 's/\"intermediate_size\": 24/\"intermediate_size\": 32/' config.json",
                      "gate_proj.weight has shape[0] = 24, config.json implies 32");
    expect_load_error("garbage", "head -c 4096 /dev/urandom > model.safetensors", "model.safetensors");
}

static void test_interrupted_save_detected(void **state) {
    (void)state;
    char cfg[512], data[512], part[512], cmd[1200];
    ds4_train_opts o;
    path(part, "part");
    /* pretend the optimizer file is from another step: trainer_state says 3 */
    snprintf(cmd, sizeof cmd, "sed -i 's/\"step\":\t6/\"step\":\t3/; s/\"step\": 6/\"step\": 3/' %s/trainer_state.json", part);
    assert_int_equal(system(cmd), 0);
    opts(&o, part, 6, 1, cfg, data);
    assert_int_not_equal(ds4_train_run(&o), 0);
    printf("mismatch -> %s\n", ds4_error());
    assert_non_null(strstr(ds4_error(), "optimizer.safetensors"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_load_equal),
        cmocka_unit_test(test_resume_bit_for_bit),
        cmocka_unit_test(test_resume_balanced),
        cmocka_unit_test(test_broken_model_dirs),
        cmocka_unit_test(test_interrupted_save_detected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
