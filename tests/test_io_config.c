/* test_io_config.c — config.json: documented defaults and derived keys, save →
 * load round trips (bit-exact floats), and one case per unknown key, wrong
 * JSON type, impossible shape and malformed text, each error naming the key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "ds4.h"
#include "util/util.h"
#include "testutil.h"

static int setup(void **state) {
    (void)state;
    return tmpdir_make("io_cfg");
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

#define assert_err_has(sub) do { \
    const char *m_ = ds4_error(); \
    if (!strstr(m_, (sub))) fail_msg("error \"%s\" does not mention \"%s\"", m_, (sub)); \
} while (0)

/* Parse must fail, and the message must name the origin and each NULL-
 * terminated substring (the key, and sometimes the reason). */
static void expect_bad(const char *json, ...) {
    ds4_config c;
    if (ds4_config_parse(&c, json, "cfg.json") == 0) fail_msg("accepted: %s", json);
    assert_err_has("cfg.json");
    va_list ap;
    va_start(ap, json);
    for (const char *s; (s = va_arg(ap, const char *));) assert_err_has(s);
    va_end(ap);
}

static void parse_ok(ds4_config *c, const char *json) {
    if (ds4_config_parse(c, json, "cfg.json") != 0) fail_msg("%s: %s", json, ds4_error());
}

/* Field-by-field equality (memcmp would also catch padding, so do both). */
static void assert_config_equal(const ds4_config *a, const ds4_config *b) {
#define EQ(f) assert_true(a->f == b->f)
    EQ(vocab_size); EQ(hidden_size); EQ(intermediate_size); EQ(moe_intermediate_size);
    EQ(num_hidden_layers); EQ(num_attention_heads); EQ(num_key_value_heads); EQ(head_dim);
    EQ(max_position_embeddings); EQ(rope_theta); EQ(rms_norm_eps); EQ(tie_word_embeddings);
    EQ(first_k_dense_replace); EQ(n_routed_experts); EQ(n_shared_experts);
    EQ(num_experts_per_tok); EQ(n_group); EQ(topk_group); EQ(topk_per_group);
    EQ(routed_scaling_factor); EQ(norm_topk_prob); EQ(scoring_func);
    EQ(router_bias_update_rate); EQ(aux_loss_alpha); EQ(expert_capacity_factor);
    EQ(n_prune_layers); EQ(prune_loss_weight); EQ(index_n_heads); EQ(index_head_dim);
    EQ(index_topk); EQ(sliding_window); EQ(attention_sinks); EQ(bos_token_id);
    EQ(eos_token_id); EQ(video.enabled); EQ(video.width); EQ(video.height); EQ(video.fps);
    EQ(video.patch); EQ(video.tubelet); EQ(video.n_levels); EQ(video.code_offset);
    EQ(video.hidden);
#undef EQ
    for (int i = 0; i < a->n_prune_layers; i++) {
        assert_int_equal(a->prune_layers[i], b->prune_layers[i]);
        assert_memory_equal(&a->prune_ratio[i], &b->prune_ratio[i], sizeof(float));
    }
    for (int i = 0; i < a->video.n_levels; i++) assert_int_equal(a->video.levels[i], b->video.levels[i]);
    assert_memory_equal(a, b, sizeof *a);
}

/* ---- defaults ----------------------------------------------------------- */

static void test_defaults(void **state) {
    (void)state;
    ds4_config c;
    ds4_config_defaults(&c);
    /* the table at the top of config.c */
    assert_int_equal(c.vocab_size, 4096);
    assert_int_equal(c.hidden_size, 256);
    assert_int_equal(c.intermediate_size, 768);
    assert_int_equal(c.moe_intermediate_size, 256);
    assert_int_equal(c.num_hidden_layers, 4);
    assert_int_equal(c.num_attention_heads, 4);
    assert_int_equal(c.num_key_value_heads, 4);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.max_position_embeddings, 1024);
    assert_true(c.rope_theta == 10000.0f);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.first_k_dense_replace, 4);
    assert_int_equal(c.n_routed_experts, 0);
    assert_int_equal(c.n_shared_experts, 0);
    assert_int_equal(c.num_experts_per_tok, 0);
    assert_int_equal(c.n_group, 1);
    assert_int_equal(c.topk_group, 1);
    assert_int_equal(c.topk_per_group, 0);
    assert_true(c.routed_scaling_factor == 1.0f);
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(c.scoring_func, DS4_SCORE_SIGMOID);
    assert_true(c.router_bias_update_rate == 0.0f);
    assert_true(c.aux_loss_alpha == 0.0f);
    assert_true(c.expert_capacity_factor == 0.0f);
    assert_int_equal(c.n_prune_layers, 0);
    assert_true(c.prune_loss_weight == 0.1f);
    assert_int_equal(c.index_n_heads, 0);
    assert_int_equal(c.index_head_dim, 0);
    assert_int_equal(c.index_topk, 0);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.attention_sinks, 0);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    assert_int_equal(c.video.enabled, 0);
    assert_int_equal(ds4_config_validate(&c), 0);
    for (int l = 0; l < c.num_hidden_layers; l++) assert_false(ds4_layer_is_moe(&c, l));

    /* "{}" and all-null keys give exactly the defaults */
    ds4_config p;
    parse_ok(&p, "{}");
    assert_config_equal(&c, &p);
    parse_ok(&p, "{\"head_dim\": null, \"first_k_dense_replace\": null, \"video\": null,"
                 " \"bos_token_id\": null, \"sliding_window\": null}");
    assert_config_equal(&c, &p);
}

static void test_derived_defaults(void **state) {
    (void)state;
    ds4_config c;
    parse_ok(&c, "{\"hidden_size\": 512, \"num_attention_heads\": 8, \"num_key_value_heads\": 2}");
    assert_int_equal(c.head_dim, 64);
    parse_ok(&c, "{\"hidden_size\": 512, \"num_attention_heads\": 8, \"head_dim\": 32}");
    assert_int_equal(c.head_dim, 32);                      /* explicit value kept */
    parse_ok(&c, "{\"num_hidden_layers\": 6}");
    assert_int_equal(c.first_k_dense_replace, 6);          /* dense: every layer dense */
    parse_ok(&c, "{\"num_hidden_layers\": 6, \"n_routed_experts\": 8,"
                 " \"num_experts_per_tok\": 2}");
    assert_int_equal(c.first_k_dense_replace, 1);
    assert_false(ds4_layer_is_moe(&c, 0));
    assert_true(ds4_layer_is_moe(&c, 1) && ds4_layer_is_moe(&c, 5));
    parse_ok(&c, "{\"num_hidden_layers\": 6, \"n_routed_experts\": 8, \"num_experts_per_tok\": 2,"
                 " \"first_k_dense_replace\": 0}");
    assert_int_equal(c.first_k_dense_replace, 0);          /* explicit 0 kept, not derived */
    assert_true(ds4_layer_is_moe(&c, 0));
    /* the key order does not matter for derived defaults */
    parse_ok(&c, "{\"num_attention_heads\": 2, \"hidden_size\": 96}");
    assert_int_equal(c.head_dim, 48);
    assert_int_equal(c.num_key_value_heads, 2);            /* absent: = num_attention_heads */
    parse_ok(&c, "{\"num_attention_heads\": 8, \"num_key_value_heads\": 8}");
    assert_int_equal(c.num_key_value_heads, 8);
    /* video object with defaults; code_offset puts the codes at the end */
    parse_ok(&c, "{\"vocab_size\": 5000, \"video\": {}}");
    assert_int_equal(c.video.enabled, 1);
    assert_int_equal(c.video.width, 64);
    assert_int_equal(c.video.fps, 24);
    assert_int_equal(c.video.n_levels, 4);
    assert_int_equal(c.video.levels[0] * c.video.levels[1] * c.video.levels[2] * c.video.levels[3],
                     1000);
    assert_int_equal(c.video.code_offset, 4000);
    parse_ok(&c, "{\"vocab_size\": 5000, \"video\": {\"levels\": [7, 5], \"code_offset\": 10}}");
    assert_int_equal(c.video.n_levels, 2);
    assert_int_equal(c.video.levels[1], 5);
    assert_int_equal(c.video.levels[2], 0);
    assert_int_equal(c.video.code_offset, 10);
}

/* Reference shapes from the SPEC: the "paper" preset and DeepSeek-V3's router. */
static void test_reference_shapes(void **state) {
    (void)state;
    ds4_config c;
    parse_ok(&c, "{\"n_routed_experts\": 512, \"n_group\": 128, \"topk_group\": 8,"
                 " \"topk_per_group\": 2, \"num_experts_per_tok\": 16, \"n_shared_experts\": 1}");
    assert_int_equal(c.n_routed_experts / c.n_group, 4);
    parse_ok(&c, "{\"model_type\": \"ds4\", \"architectures\": [\"X\", 1],"
                 " \"n_routed_experts\": 256, \"n_group\": 8, \"topk_group\": 4,"
                 " \"num_experts_per_tok\": 8, \"scoring_func\": \"sigmoid\","
                 " \"routed_scaling_factor\": 2.5, \"norm_topk_prob\": true,"
                 " \"first_k_dense_replace\": 3, \"bos_token_id\": 0, \"eos_token_id\": 1}");
    assert_int_equal(c.topk_per_group, 0);
    assert_true(c.routed_scaling_factor == 2.5f);
    assert_int_equal(c.eos_token_id, 1);
    parse_ok(&c, "{\"scoring_func\": \"softmax\", \"index_topk\": 64, \"index_n_heads\": 4,"
                 " \"index_head_dim\": 32, \"sliding_window\": 16, \"attention_sinks\": true,"
                 " \"prune_layers\": [2, 3], \"prune_ratio\": [0.15, 0.3]}");
    assert_int_equal(c.scoring_func, DS4_SCORE_SOFTMAX);
    assert_int_equal(c.n_prune_layers, 2);
    assert_true(c.prune_ratio[1] == 0.3f);
    assert_int_equal(c.attention_sinks, 1);
}

/* ---- round trip --------------------------------------------------------- */

static void test_roundtrip(void **state) {
    (void)state;
    ds4_config a, b;
    ds4_config_defaults(&a);
    a.vocab_size = 8000; a.hidden_size = 384; a.intermediate_size = 1024;
    a.moe_intermediate_size = 128; a.num_hidden_layers = 8; a.num_attention_heads = 6;
    a.num_key_value_heads = 2; a.head_dim = 80; a.max_position_embeddings = 4096;
    a.rope_theta = 500000.0f; a.rms_norm_eps = 1e-6f; a.tie_word_embeddings = 1;
    a.first_k_dense_replace = 2; a.n_routed_experts = 32; a.n_shared_experts = 2;
    a.n_group = 8; a.topk_group = 3; a.topk_per_group = 2; a.num_experts_per_tok = 6;
    a.routed_scaling_factor = 2.5f; a.norm_topk_prob = 0; a.scoring_func = DS4_SCORE_SOFTMAX;
    a.router_bias_update_rate = 1e-3f; a.aux_loss_alpha = 1e-4f; a.expert_capacity_factor = 1.25f;
    a.n_prune_layers = 3;
    a.prune_layers[0] = 5; a.prune_layers[1] = 6; a.prune_layers[2] = 7;
    a.prune_ratio[0] = 0.1f; a.prune_ratio[1] = 0.2f; a.prune_ratio[2] = 0.3f;
    a.prune_loss_weight = 0.01f; a.index_n_heads = 4; a.index_head_dim = 16; a.index_topk = 128;
    a.sliding_window = 64; a.attention_sinks = 1; a.bos_token_id = 1; a.eos_token_id = 2;
    a.video.enabled = 1; a.video.width = 128; a.video.height = 96; a.video.fps = 12;
    a.video.patch = 16; a.video.tubelet = 2; a.video.n_levels = 3;
    a.video.levels[0] = 7; a.video.levels[1] = 5; a.video.levels[2] = 5; a.video.levels[3] = 0;
    a.video.code_offset = 7000; a.video.hidden = 96;
    assert_int_equal(ds4_config_validate(&a), 0);
    const char *path = tmp_path("config.json");
    assert_int_equal(ds4_config_save(&a, path), 0);
    if (ds4_config_load(&b, path) != 0) fail_msg("%s", ds4_error());
    assert_config_equal(&a, &b);

    /* the file is plain JSON any parser reads, with the HF-style keys */
    char *text;
    assert_int_equal(ds4_read_file(path, &text, NULL), 0);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "model_type")->valuestring, "ds4");
    assert_int_equal(cJSON_GetObjectItem(j, "num_key_value_heads")->valueint, 2);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "norm_topk_prob")));
    assert_string_equal(cJSON_GetObjectItem(j, "scoring_func")->valuestring, "softmax");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "prune_ratio")), 3);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "video"), "hidden")->valueint, 96);
    assert_non_null(strstr(text, "\"rms_norm_eps\": 1e-06"));   /* shortest float text */
    assert_non_null(strstr(text, "\"prune_ratio\": [0.1, 0.2, 0.3]"));
    cJSON_Delete(j);
    free(text);

    /* defaults round trip too: no video object, null special tokens */
    ds4_config_defaults(&a);
    assert_int_equal(ds4_config_save(&a, path), 0);
    assert_int_equal(ds4_config_load(&b, path), 0);
    assert_config_equal(&a, &b);
    assert_int_equal(ds4_read_file(path, &text, NULL), 0);
    assert_null(strstr(text, "\"video\""));
    assert_non_null(strstr(text, "\"bos_token_id\": null"));
    free(text);

    /* saving an invalid config is refused and leaves the old file */
    a.num_key_value_heads = 3;
    assert_int_equal(ds4_config_save(&a, path), -1);
    assert_err_has("num_key_value_heads");
    assert_int_equal(ds4_config_load(&b, path), 0);
    assert_int_equal(b.num_key_value_heads, 4);
}

/* Random floats in every float key survive save → load bit-exactly. */
static void test_roundtrip_random_floats(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 99);
    const char *path = tmp_path("rand.json");
    for (int iter = 0; iter < 40; iter++) {
        ds4_config a, b;
        ds4_config_defaults(&a);
        a.num_hidden_layers = DS4_MAX_LAYERS;
        a.first_k_dense_replace = DS4_MAX_LAYERS;
        a.n_prune_layers = DS4_MAX_LAYERS;
        for (int i = 0; i < DS4_MAX_LAYERS; i++) {
            a.prune_layers[i] = DS4_MAX_LAYERS - 1 - i;
            a.prune_ratio[i] = ds4_rng_uniform(&r) * 0.999f;
        }
        a.rope_theta = expf(ds4_rng_uniform(&r) * 20.0f);
        a.rms_norm_eps = expf(-ds4_rng_uniform(&r) * 30.0f);
        a.routed_scaling_factor = ds4_rng_uniform(&r) * 10.0f + 1e-3f;
        a.router_bias_update_rate = ds4_rng_uniform(&r) * 1e-2f;
        a.aux_loss_alpha = ds4_rng_uniform(&r) * 1e-3f;
        a.expert_capacity_factor = ds4_rng_uniform(&r) * 4.0f;
        a.prune_loss_weight = ds4_rng_uniform(&r);
        assert_int_equal(ds4_config_save(&a, path), 0);
        assert_int_equal(ds4_config_load(&b, path), 0);
        assert_config_equal(&a, &b);
    }
}

/* ---- errors ------------------------------------------------------------- */

static void test_unknown_and_duplicate_keys(void **state) {
    (void)state;
    expect_bad("{\"foo\": 1}", "'foo'", "unknown", NULL);
    expect_bad("{\"hidden_size\": 256, \"hidden_act\": \"silu\"}", "'hidden_act'", NULL);
    expect_bad("{\"Vocab_size\": 10}", "'Vocab_size'", NULL);
    expect_bad("{\"video\": {\"width\": 64, \"depth\": 3}}", "'video.depth'", NULL);
    expect_bad("{\"hidden_size\": 256, \"hidden_size\": 128}", "'hidden_size'", "twice", NULL);
    expect_bad("{\"video\": {\"fps\": 24, \"fps\": 12}}", "'video.fps'", "twice", NULL);
}

static void test_wrong_types(void **state) {
    (void)state;
    static const struct { const char *json, *key; } cases[] = {
        {"{\"vocab_size\": \"4096\"}", "'vocab_size'"},
        {"{\"vocab_size\": 4096.5}", "'vocab_size'"},
        {"{\"vocab_size\": 3e9}", "'vocab_size'"},
        {"{\"vocab_size\": true}", "'vocab_size'"},
        {"{\"num_hidden_layers\": [4]}", "'num_hidden_layers'"},
        {"{\"head_dim\": {}}", "'head_dim'"},
        {"{\"rope_theta\": \"1e4\"}", "'rope_theta'"},
        {"{\"rope_theta\": 1e300}", "'rope_theta'"},
        {"{\"rms_norm_eps\": false}", "'rms_norm_eps'"},
        {"{\"tie_word_embeddings\": 1}", "'tie_word_embeddings'"},
        {"{\"norm_topk_prob\": \"true\"}", "'norm_topk_prob'"},
        {"{\"attention_sinks\": 0}", "'attention_sinks'"},
        {"{\"scoring_func\": \"relu\"}", "'scoring_func'"},
        {"{\"scoring_func\": 1}", "'scoring_func'"},
        {"{\"model_type\": \"deepseek_v3\"}", "'model_type'"},
        {"{\"model_type\": 4}", "'model_type'"},
        {"{\"architectures\": \"DS4\"}", "'architectures'"},
        {"{\"prune_layers\": 3, \"prune_ratio\": 0.1}", "'prune_layers'"},
        {"{\"prune_layers\": [1.5], \"prune_ratio\": [0.1]}", "'prune_layers'"},
        {"{\"prune_layers\": [1], \"prune_ratio\": [\"0.1\"]}", "'prune_ratio'"},
        {"{\"bos_token_id\": \"1\"}", "'bos_token_id'"},
        {"{\"eos_token_id\": 1.5}", "'eos_token_id'"},
        {"{\"video\": [64]}", "'video'"},
        {"{\"video\": true}", "'video'"},
        {"{\"video\": {\"width\": \"64\"}}", "'video.width'"},
        {"{\"video\": {\"levels\": 8}}", "'video.levels'"},
        {"{\"video\": {\"levels\": [8, \"5\"]}}", "'video.levels'"},
        {"{\"video\": {\"levels\": [2,2,2,2,2,2,2,2,2]}}", "'video.levels'"},
        {"{\"video\": {\"levels\": []}}", "'video.levels'"},
        {"{\"aux_loss_alpha\": [0.1]}", "'aux_loss_alpha'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_bad(cases[i].json, cases[i].key, NULL);
}

static void test_impossible_shapes(void **state) {
    (void)state;
    static const struct { const char *json, *key, *why; } cases[] = {
        {"{\"vocab_size\": 0}", "'vocab_size'", "positive"},
        {"{\"hidden_size\": -256}", "'hidden_size'", "positive"},
        {"{\"intermediate_size\": 0}", "'intermediate_size'", NULL},
        {"{\"num_hidden_layers\": 0}", "'num_hidden_layers'", NULL},
        {"{\"num_hidden_layers\": 65}", "'num_hidden_layers'", "64"},
        {"{\"num_attention_heads\": 0}", "'num_attention_heads'", NULL},
        {"{\"num_key_value_heads\": 3}", "'num_key_value_heads'", "multiple"},
        {"{\"num_key_value_heads\": 0}", "'num_key_value_heads'", NULL},
        {"{\"head_dim\": 63}", "'head_dim'", "even"},
        {"{\"hidden_size\": 12, \"num_attention_heads\": 4}", "'head_dim'", "even"},
        {"{\"hidden_size\": 2, \"num_attention_heads\": 4}", "'head_dim'", NULL},
        {"{\"max_position_embeddings\": 0}", "'max_position_embeddings'", NULL},
        {"{\"rope_theta\": 0}", "'rope_theta'", NULL},
        {"{\"rms_norm_eps\": -1e-5}", "'rms_norm_eps'", NULL},
        {"{\"first_k_dense_replace\": 5}", "'first_k_dense_replace'", NULL},
        {"{\"first_k_dense_replace\": -1}", "'first_k_dense_replace'", NULL},
        {"{\"n_routed_experts\": -8}", "'n_routed_experts'", NULL},
        {"{\"n_shared_experts\": -1}", "'n_shared_experts'", NULL},
        {"{\"n_routed_experts\": 10, \"n_group\": 4, \"num_experts_per_tok\": 2}", "'n_group'",
         "multiple"},
        {"{\"n_routed_experts\": 8, \"n_group\": 0, \"num_experts_per_tok\": 2}", "'n_group'", NULL},
        {"{\"n_routed_experts\": 8, \"n_group\": 4, \"topk_group\": 5, \"num_experts_per_tok\": 2}",
         "'topk_group'", NULL},
        {"{\"n_routed_experts\": 8, \"n_group\": 4, \"topk_group\": 0, \"num_experts_per_tok\": 2}",
         "'topk_group'", NULL},
        {"{\"n_routed_experts\": 8, \"n_group\": 4, \"topk_group\": 1, \"topk_per_group\": 3,"
         " \"num_experts_per_tok\": 3}", "'topk_per_group'", "per group"},
        {"{\"n_routed_experts\": 8, \"num_experts_per_tok\": 9}", "'num_experts_per_tok'", NULL},
        {"{\"n_routed_experts\": 8, \"num_experts_per_tok\": 0}", "'num_experts_per_tok'", NULL},
        {"{\"num_experts_per_tok\": 1}", "'num_experts_per_tok'", NULL},
        {"{\"n_routed_experts\": 8, \"n_group\": 4, \"topk_group\": 2, \"topk_per_group\": 2,"
         " \"num_experts_per_tok\": 3}", "'num_experts_per_tok'", "must be equal"},
        {"{\"n_routed_experts\": 8, \"n_group\": 4, \"topk_group\": 1, \"num_experts_per_tok\": 3}",
         "'num_experts_per_tok'", "hold only"},
        {"{\"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 0}",
         "'moe_intermediate_size'", NULL},
        {"{\"routed_scaling_factor\": 0}", "'routed_scaling_factor'", NULL},
        {"{\"router_bias_update_rate\": -0.001}", "'router_bias_update_rate'", NULL},
        {"{\"aux_loss_alpha\": -1}", "'aux_loss_alpha'", NULL},
        {"{\"expert_capacity_factor\": -1.5}", "'expert_capacity_factor'", NULL},
        {"{\"prune_layers\": [4], \"prune_ratio\": [0.1]}", "'prune_layers'", "layer 4"},
        {"{\"prune_layers\": [-1], \"prune_ratio\": [0.1]}", "'prune_layers'", NULL},
        {"{\"prune_layers\": [1, 1], \"prune_ratio\": [0.1, 0.2]}", "'prune_layers'", "twice"},
        {"{\"prune_layers\": [1], \"prune_ratio\": [1.0]}", "'prune_ratio'", "[0, 1)"},
        {"{\"prune_layers\": [1], \"prune_ratio\": [-0.1]}", "'prune_ratio'", NULL},
        {"{\"prune_layers\": [1, 2], \"prune_ratio\": [0.1]}", "'prune_ratio'", "entries"},
        {"{\"prune_layers\": [1]}", "'prune_ratio'", "missing"},
        {"{\"prune_ratio\": [0.1]}", "'prune_layers'", "missing"},
        {"{\"prune_loss_weight\": -0.1}", "'prune_loss_weight'", NULL},
        {"{\"index_topk\": 64}", "'index_n_heads'", NULL},
        {"{\"index_topk\": 64, \"index_n_heads\": 4}", "'index_head_dim'", NULL},
        {"{\"index_topk\": 64, \"index_n_heads\": 4, \"index_head_dim\": 15}", "'index_head_dim'",
         "even"},
        {"{\"index_n_heads\": 4, \"index_head_dim\": 16}", "'index_n_heads'", "index_topk"},
        {"{\"index_topk\": -1}", "'index_topk'", NULL},
        {"{\"sliding_window\": -1}", "'sliding_window'", NULL},
        {"{\"bos_token_id\": 4096}", "'bos_token_id'", NULL},
        {"{\"eos_token_id\": -2}", "'eos_token_id'", NULL},
        {"{\"video\": {\"width\": 60}}", "'video.width'", "multiple"},
        {"{\"video\": {\"height\": 0}}", "'video.height'", NULL},
        {"{\"video\": {\"patch\": 0}}", "'video.patch'", NULL},
        {"{\"video\": {\"fps\": -24}}", "'video.fps'", NULL},
        {"{\"video\": {\"tubelet\": 0}}", "'video.tubelet'", NULL},
        {"{\"video\": {\"hidden\": 0}}", "'video.hidden'", NULL},
        {"{\"video\": {\"levels\": [8, 1]}}", "'video.levels'", NULL},
        {"{\"video\": {\"levels\": [64, 64, 64]}}", "'video.levels'", "vocab_size"},
        {"{\"video\": {\"code_offset\": 3500}}", "'video.code_offset'", NULL},
        {"{\"video\": {\"code_offset\": -1}}", "'video.code_offset'", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_bad(cases[i].json, cases[i].key, cases[i].why, NULL);

    /* validate() on structs built in code names the key too */
    ds4_config c;
    ds4_config_defaults(&c);
    c.scoring_func = 7;
    assert_int_equal(ds4_config_validate(&c), -1);
    assert_err_has("'scoring_func'");
    ds4_config_defaults(&c);
    c.tie_word_embeddings = 2;
    assert_int_equal(ds4_config_validate(&c), -1);
    assert_err_has("'tie_word_embeddings'");
    ds4_config_defaults(&c);
    c.n_prune_layers = DS4_MAX_LAYERS + 1;
    assert_int_equal(ds4_config_validate(&c), -1);
    assert_err_has("'prune_layers'");
    ds4_config_defaults(&c);
    c.prune_ratio[0] = NAN;
    c.n_prune_layers = 1;
    assert_int_equal(ds4_config_validate(&c), -1);
    assert_err_has("'prune_ratio'");
}

/* Every proper prefix of a valid config is malformed JSON; so is trailing text. */
static void test_malformed_json(void **state) {
    (void)state;
    const char *good = "{\n  \"vocab_size\": 1000,\n  \"prune_layers\": [2, 3],\n"
                       "  \"prune_ratio\": [0.1, 0.2],\n  \"video\": {\"levels\": [5, 5]},\n"
                       "  \"scoring_func\": \"softmax\"\n}";
    ds4_config c;
    parse_ok(&c, good);
    size_t n = strlen(good);
    char *buf = malloc(n + 1);
    for (size_t k = 0; k < n; k++) {
        memcpy(buf, good, k);
        buf[k] = 0;
        if (ds4_config_parse(&c, buf, "cut.json") == 0) fail_msg("accepted prefix %zu: %s", k, buf);
        assert_err_has("cut.json");
        assert_err_has("JSON");
    }
    free(buf);
    expect_bad("{} trailing", "JSON", NULL);
    expect_bad("{\"vocab_size\": 1000,}", "JSON", NULL);
    expect_bad("{'vocab_size': 1000}", "JSON", NULL);
    expect_bad("{\"vocab_size\": 1000}\n{}", "JSON", NULL);
    expect_bad("{\n\n  \"a\": 1,\n  \"b\" 2\n}", "line 4", NULL);
    expect_bad("", "JSON", NULL);
    expect_bad("[]", "object", NULL);
    expect_bad("null", "object", NULL);
    expect_bad("\"config\"", "object", NULL);
    assert_int_equal(ds4_config_parse(&c, NULL, "nul.json"), -1);
    assert_err_has("nul.json");
}

static void test_load_errors(void **state) {
    (void)state;
    ds4_config c;
    const char *missing = tmp_path("missing.json");
    assert_int_equal(ds4_config_load(&c, missing), -1);
    assert_err_has(missing);
    const char *path = tmp_path("bad.json");
    const char *text = "{\"n_group\": 3,\n \"n_routed_experts\": 8, \"num_experts_per_tok\": 1}";
    assert_int_equal(ds4_write_file_atomic(path, text, strlen(text)), 0);
    assert_int_equal(ds4_config_load(&c, path), -1);
    assert_err_has(path);
    assert_err_has("'n_group'");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_derived_defaults),
        cmocka_unit_test(test_reference_shapes),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_roundtrip_random_floats),
        cmocka_unit_test(test_unknown_and_duplicate_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_impossible_shapes),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
