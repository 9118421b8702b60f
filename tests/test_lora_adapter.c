/* test_lora_adapter.c — LoRA: gradients of A and B against central finite
 * differences, fine-tuning that lowers the loss with the base bit-identical,
 * merged weights giving the adapter's logits (fp32, batch and token-by-token
 * decode) and a Q8_0 base with the adapter close to merged fp32, save -> load
 * round trip in the PEFT layout, and malformed adapters naming the problem. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "lora/lora.h"
#include "model/forward.h"
#include "model/quantized.h"
#include "util/util.h"
#include "testutil.h"

static int setup(void **s) {
    (void)s;
    return tmpdir_make("lora");
}

static int teardown(void **s) {
    (void)s;
    return tmpdir_remove();
}

/* One dense layer, one MoE layer (4 routed experts, top-2, one shared);
 * widths are multiples of 32 so Q8_0 quantizes every projection. */
static void tiny_cfg(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 64;
    c->hidden_size = 64;
    c->intermediate_size = 96;
    c->moe_intermediate_size = 32;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 2;
    c->num_key_value_heads = 1;
    c->head_dim = 32;
    c->max_position_embeddings = 64;
    c->first_k_dense_replace = 1;
    c->n_routed_experts = 4;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 1;
    c->topk_group = 1;
    c->topk_per_group = 0;
    c->tie_word_embeddings = 0;
}

static ds4_model *tiny_model(uint64_t seed) {
    ds4_config c;
    tiny_cfg(&c);
    ds4_model *m = ds4_model_create(&c, seed);
    assert_non_null(m);
    return m;
}

/* Random B (the fresh B = 0 would make dA = 0 and the adapter a no-op). */
static void randomize_b(ds4_lora *l, uint64_t seed, float std) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    for (int k = 0; k < l->n; k++) {
        const ds4_tensor_info *B = &l->layout.tensors[2 * k + 1];
        for (size_t i = 0; i < B->numel; i++) l->params[B->offset + i] = std * ds4_rng_normal(&r);
    }
}

static void random_ids(int *ids, int n, int V, uint64_t seed) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int)(ds4_rng_u64(&r) % (uint64_t)V);
}

static const ds4_tensor_info *find_pair(const ds4_lora *l, const char *sub, int *k) {
    for (int i = 0; i < l->n; i++)
        if (strstr(l->layout.tensors[2 * i].name, sub)) { *k = i; return &l->layout.tensors[2 * i]; }
    fail_msg("no adapter on %s", sub);
    return NULL;
}

/* ---- gradients ----------------------------------------------------------- */

static void test_grad_fd(void **s) {
    (void)s;
    ds4_model *m = tiny_model(11);
    ds4_lora *l = ds4_lora_create(m, 3, 6.0f, DS4_LORA_ALL, 5);
    assert_non_null(l);
    randomize_b(l, 6, 0.05f);
    const int B = 2, T = 8;
    int ids[2 * 9];
    random_ids(ids, B * (T + 1), m->cfg.vocab_size, 7);
    ds4_lora_ft *f = ds4_lora_ft_create(m, l, B, T);
    assert_non_null(f);
    double loss = ds4_lora_ft_grad(f, ids, 1);
    assert_false(isnan(loss));
    const float *g = ds4_lora_ft_grads(f);
    /* the biggest entry of A and of B on each kind of projection, and one
     * fixed entry each: attention, dense FFN, a routed and the shared expert */
    const char *which[] = {"layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj", "layers.1.self_attn.o_proj",
                           "layers.0.mlp.down_proj", "layers.0.mlp.gate_proj", "layers.1.mlp.experts.0.up_proj",
                           "layers.1.mlp.experts.3.down_proj", "layers.1.mlp.shared_experts.gate_proj"};
    int checked = 0;
    double worst = 0;
    for (size_t w = 0; w < sizeof which / sizeof which[0]; w++) {
        int k = 0;
        find_pair(l, which[w], &k);
        for (int ab = 0; ab < 2; ab++) {
            const ds4_tensor_info *t = &l->layout.tensors[2 * k + ab];
            size_t best = 0;
            for (size_t i = 1; i < t->numel; i++)
                if (fabsf(g[t->offset + i]) > fabsf(g[t->offset + best])) best = i;
            size_t idx[2] = {best, (t->numel * 7) / 11};
            for (int q = 0; q < 2; q++) {
                float *p = l->params + t->offset + idx[q];
                const float p0 = *p, eps = 3e-3f;   /* 1e-2 flips an expert choice */
                *p = p0 + eps;
                double lp = ds4_lora_ft_loss(f, ids);
                *p = p0 - eps;
                double lm = ds4_lora_ft_loss(f, ids);
                *p = p0;
                const double fd = (lp - lm) / (2.0 * eps);
                const double an = g[t->offset + idx[q]];
                const double err = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-3);
                if (err > worst) worst = err;
                if (err > 0.01) fail_msg("%s[%zu]: analytic %.6g, finite difference %.6g", t->name, idx[q], an, fd);
                checked++;
            }
        }
    }
    print_message("lora grad: %d entries, worst relative error %.3g\n", checked, worst);
    /* the analytic gradient is not trivially zero */
    int k = 0;
    const ds4_tensor_info *A = find_pair(l, "layers.0.self_attn.q_proj", &k);
    double na = 0;
    for (size_t i = 0; i < A->numel; i++) na += fabs(g[A->offset + i]);
    assert_true(na > 1e-4);
    ds4_lora_ft_free(f);
    ds4_lora_free(l);
    ds4_model_free(m);
}

/* ---- training ------------------------------------------------------------- */

/* A random model's logits span about +-1.3 (lm_head std 0.02 on a unit-RMS
 * state), too flat for any adapter to fit a sequence: the tests that train
 * give lm_head std 0.2, as a trained model would have. */
static void sharpen_head(ds4_model *m) {
    for (size_t i = 0; i < (size_t)m->cfg.vocab_size * m->cfg.hidden_size; i++) m->w.lm_head[i] *= 10.0f;
}

static void train_pattern(ds4_model *m, double *before, double *after) {
    const int B = 4, T = 16, steps = 30;
    ds4_lora *l = ds4_lora_create(m, 4, 8.0f, DS4_LORA_ALL, 3);
    assert_non_null(l);
    ds4_lora_ft *f = ds4_lora_ft_create(m, l, B, T);
    assert_non_null(f);
    ds4_adamw opt;
    assert_int_equal(ds4_lora_ft_adamw_init(f, &opt), 0);
    opt.beta1 = 0.9f; opt.beta2 = 0.999f; opt.eps = 1e-8f; opt.weight_decay = 0.0f;
    /* a repeated 7-token phrase at random phases */
    static const int phrase[7] = {5, 17, 3, 42, 9, 28, 60};
    int ids[4 * 17];
    ds4_rng r;
    ds4_rng_seed(&r, 9);
    int fixed[4 * 17];
    for (int b = 0; b < B; b++)
        for (int i = 0; i <= T; i++) fixed[b * (T + 1) + i] = phrase[(i + b) % 7];
    *before = ds4_lora_ft_loss(f, fixed);
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++) {
            int ph = (int)(ds4_rng_u64(&r) % 7);
            for (int i = 0; i <= T; i++) ids[b * (T + 1) + i] = phrase[(i + ph) % 7];
        }
        assert_false(isnan(ds4_lora_ft_grad(f, ids, 1)));
        ds4_lora_ft_update(f, &opt, 3e-3f, 1.0f);
    }
    *after = ds4_lora_ft_loss(f, fixed);
    ds4_adamw_free(&opt);
    ds4_lora_ft_free(f);
    ds4_lora_free(l);
}

static void test_training_lowers_loss_base_frozen(void **s) {
    (void)s;
    ds4_model *m = tiny_model(21);
    sharpen_head(m);
    float *copy = malloc(m->layout.n_floats * sizeof(float));
    assert_non_null(copy);
    memcpy(copy, m->params, m->layout.n_floats * sizeof(float));
    double before, after;
    train_pattern(m, &before, &after);
    print_message("lora fp32 base: loss %.4f -> %.4f\n", before, after);
    assert_true(before > 4.0);                 /* above ln 64 for a random model */
    assert_true(after < 0.1 * before);
    assert_memory_equal(m->params, copy, m->layout.n_floats * sizeof(float));
    free(copy);
    ds4_model_free(m);
}

static void test_training_quantized_base(void **s) {
    (void)s;
    ds4_model *m = tiny_model(22);
    sharpen_head(m);
    assert_int_equal(ds4_model_quantize(m, DS4_Q_Q8_0), 0);
    const ds4_tensor_info *q = ds4_layout_find(&m->layout, "model.layers.0.self_attn.q_proj.weight");
    const ds4_qtensor *qt = &m->quant->t[q - m->layout.tensors];
    assert_int_equal(qt->type, DS4_Q_Q8_0);
    size_t qb = qt->row_bytes * (size_t)q->shape[0];
    void *blocks = malloc(qb);
    memcpy(blocks, qt->data, qb);
    double before, after;
    train_pattern(m, &before, &after);
    print_message("lora q8_0 base: loss %.4f -> %.4f\n", before, after);
    assert_true(before > 4.0);
    assert_true(after < 0.1 * before);
    assert_memory_equal(qt->data, blocks, qb);
    free(blocks);
    ds4_model_free(m);
}

/* ---- merge and inference --------------------------------------------------- */

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* Logits [T, V] token by token through the KV cache (the decode path). */
static void decode_logits(const ds4_model *m, const int *ids, int T, float *out) {
    ds4_kv_cache *kv = ds4_kv_cache_create(&m->cfg, 1, T);
    assert_non_null(kv);
    int seq = 0;
    for (int i = 0; i < T; i++) {
        ds4_batch b = {.n = 1, .tokens = ids + i, .seq = &seq};
        assert_int_equal(ds4_forward(m, &b, kv, NULL, 1, out + (size_t)i * m->cfg.vocab_size), 0);
    }
    ds4_kv_cache_free(kv);
}

static void test_merge_matches_adapter(void **s) {
    (void)s;
    const int T = 12;
    ds4_model *base = tiny_model(31), *adapted = tiny_model(31), *merged = tiny_model(31);
    ds4_model *q8 = tiny_model(31);
    assert_int_equal(ds4_model_quantize(q8, DS4_Q_Q8_0), 0);
    ds4_lora *l = ds4_lora_create(base, 4, 8.0f, DS4_LORA_ALL, 32);
    assert_non_null(l);
    randomize_b(l, 33, 0.05f);
    assert_int_equal(ds4_lora_save(l, tmp_path("ad")), 0);
    assert_int_equal(ds4_lora_merge(merged, l), 0);
    ds4_lora_free(l);
    ds4_lora *l1 = ds4_lora_load(adapted, tmp_path("ad")), *l2 = ds4_lora_load(q8, tmp_path("ad"));
    assert_non_null(l1);
    assert_non_null(l2);
    assert_int_equal(ds4_lora_attach(adapted, l1), 0);
    assert_int_equal(ds4_lora_attach(q8, l2), 0);
    ds4_lora *again = ds4_lora_load(adapted, tmp_path("ad"));
    assert_int_equal(ds4_lora_attach(adapted, again), -1);       /* one adapter per model */
    ds4_lora_free(again);

    const int V = base->cfg.vocab_size;
    int ids[12];
    random_ids(ids, T, V, 34);
    size_t n = (size_t)T * V;
    float *lb = malloc(n * 4), *la = malloc(n * 4), *lm = malloc(n * 4), *ld = malloc(n * 4), *lq = malloc(n * 4);
    float *lqd = malloc(n * 4);
    assert_int_equal(ds4_forward_logits(base, ids, T, lb), 0);
    assert_int_equal(ds4_forward_logits(adapted, ids, T, la), 0);
    assert_int_equal(ds4_forward_logits(merged, ids, T, lm), 0);
    assert_int_equal(ds4_forward_logits(q8, ids, T, lq), 0);
    decode_logits(adapted, ids, T, ld);
    decode_logits(q8, ids, T, lqd);
    const double scale = max_abs(lm, n);
    const double d_base = max_diff(lb, lm, n) / scale, d_merge = max_diff(la, lm, n) / scale;
    const double d_dec = max_diff(ld, lm, n) / scale, d_q8 = max_diff(lq, lm, n) / scale;
    const double d_q8dec = max_diff(lqd, lq, n) / scale;
    print_message("logits (relative to max |logit| %.3f): base %.3g, adapter %.3g, adapter decode %.3g, "
                  "q8_0+adapter %.3g (decode vs batch %.3g)\n", scale, d_base, d_merge, d_dec, d_q8, d_q8dec);
    assert_true(d_base > 1e-2);          /* the adapter changes the model */
    assert_true(d_merge < 1e-5);
    assert_true(d_dec < 1e-5);
    assert_true(d_q8 < 2e-2);
    assert_true(d_q8 < 0.5 * d_base);    /* closer to merged than the base is */
    assert_true(d_q8dec < 1e-4);
    free(lb); free(la); free(lm); free(ld); free(lq); free(lqd);
    ds4_model_free(base);
    ds4_model_free(adapted);
    ds4_model_free(merged);
    ds4_model_free(q8);
}

/* A fresh adapter (B = 0) leaves the model exactly as it was. */
static void test_fresh_adapter_is_identity(void **s) {
    (void)s;
    ds4_model *m = tiny_model(41), *b = tiny_model(41);
    ds4_lora *l = ds4_lora_create(m, 2, 4.0f, DS4_LORA_Q | DS4_LORA_V | DS4_LORA_DOWN, 1);
    assert_non_null(l);
    assert_int_equal(l->n, 2 + 2 + 1 + 4 + 1);   /* q,v x 2 layers; dense down; 4 experts; shared */
    assert_int_equal(ds4_lora_attach(m, l), 0);
    int ids[6] = {1, 2, 3, 4, 5, 6};
    float la[6 * 64], lb[6 * 64];
    assert_int_equal(ds4_forward_logits(m, ids, 6, la), 0);
    assert_int_equal(ds4_forward_logits(b, ids, 6, lb), 0);
    assert_memory_equal(la, lb, sizeof la);
    ds4_model_free(m);
    ds4_model_free(b);
}

/* ---- files ------------------------------------------------------------------ */

static void test_save_load_round_trip(void **s) {
    (void)s;
    ds4_model *m = tiny_model(51);
    ds4_lora *l = ds4_lora_create(m, 5, 7.0f, DS4_LORA_Q | DS4_LORA_O | DS4_LORA_UP, 2);
    assert_non_null(l);
    randomize_b(l, 3, 0.1f);
    snprintf(l->base_model, sizeof l->base_model, "some/base");
    assert_int_equal(ds4_lora_save(l, tmp_path("rt")), 0);
    ds4_lora *r = ds4_lora_load(m, tmp_path("rt"));
    assert_non_null(r);
    assert_int_equal(r->rank, 5);
    assert_true(r->alpha == 7.0f && r->scale == 7.0f / 5.0f);
    assert_int_equal(r->targets, DS4_LORA_Q | DS4_LORA_O | DS4_LORA_UP);
    assert_string_equal(r->base_model, "some/base");
    assert_int_equal(r->n, l->n);
    assert_int_equal(r->layout.n_floats, l->layout.n_floats);
    for (int k = 0; k < l->n; k++) assert_int_equal(r->base[k], l->base[k]);
    assert_memory_equal(r->params, l->params, l->layout.n_floats * sizeof(float));
    ds4_lora *u = ds4_lora_load(NULL, tmp_path("rt"));      /* no base: read, not checked */
    assert_non_null(u);
    assert_int_equal(u->n, l->n);
    ds4_lora_free(u);

    /* PEFT names and shapes, and the config fields PEFT reads */
    ds4_safetensors st;
    char p[300];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmp_path("rt"));
    assert_int_equal(ds4_st_open(&st, p), 0);
    const ds4_st_tensor *A = ds4_st_find(&st, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
    const ds4_st_tensor *B = ds4_st_find(&st, "base_model.model.model.layers.1.mlp.experts.2.up_proj.lora_B.weight");
    assert_non_null(A);
    assert_non_null(B);
    assert_int_equal(A->shape[0], 5);
    assert_int_equal(A->shape[1], 64);
    assert_int_equal(B->shape[0], 32);
    assert_int_equal(B->shape[1], 5);
    assert_int_equal(st.n_tensors, 2 * l->n);
    ds4_st_close(&st);
    char *txt;
    snprintf(p, sizeof p, "%s/adapter_config.json", tmp_path("rt"));
    assert_int_equal(ds4_read_file(p, &txt, NULL), 0);
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_string_equal(cJSON_GetObjectItem(j, "task_type")->valuestring, "CAUSAL_LM");
    assert_string_equal(cJSON_GetObjectItem(j, "bias")->valuestring, "none");
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 5);
    assert_true(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 7.0);
    assert_true(cJSON_GetObjectItem(j, "lora_dropout")->valuedouble == 0.0);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "fan_in_fan_out")));
    cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    assert_int_equal(cJSON_GetArraySize(tm), 3);
    assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj");
    cJSON_Delete(j);
    ds4_lora_free(r);
    ds4_lora_free(l);
    ds4_model_free(m);
}

static void write_text(const char *path, const char *txt) {
    assert_int_equal(ds4_write_file_atomic(path, txt, strlen(txt)), 0);
}

/* A copy of adapter dir src in dst with adapter_model.safetensors rewritten
 * from the entries of src minus `drop`, with `reshape` given shape [d0, d1],
 * and an extra tensor `extra` [2, 2] when not NULL. */
static void rewrite(const char *src, const char *dst, const char *drop, const char *reshape, int64_t d0, int64_t d1,
                    const char *extra) {
    char p[300], q[300];
    ds4_safetensors st;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", src);
    assert_int_equal(ds4_st_open(&st, p), 0);
    ds4_st_entry *e = calloc((size_t)st.n_tensors + 1, sizeof *e);
    float *big = calloc(1 << 16, sizeof(float));
    int n = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const ds4_st_tensor *t = &st.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        e[n].name = t->name;
        e[n].dtype = t->dtype;
        e[n].ndim = t->ndim;
        memcpy(e[n].shape, t->shape, sizeof e[n].shape);
        e[n].data = t->data;
        if (reshape && !strcmp(t->name, reshape)) { e[n].shape[0] = d0; e[n].shape[1] = d1; e[n].data = big; }
        n++;
    }
    if (extra) e[n++] = (ds4_st_entry){.name = extra, .dtype = DS4_DT_F32, .ndim = 2, .shape = {2, 2}, .data = big};
    assert_int_equal(ds4_mkdir_p(dst), 0);
    snprintf(q, sizeof q, "%s/adapter_model.safetensors", dst);
    assert_int_equal(ds4_st_write(q, e, n, NULL), 0);
    ds4_st_close(&st);
    free(e);
    free(big);
    char *txt;
    size_t len;
    snprintf(p, sizeof p, "%s/adapter_config.json", src);
    snprintf(q, sizeof q, "%s/adapter_config.json", dst);
    assert_int_equal(ds4_read_file(p, &txt, &len), 0);
    assert_int_equal(ds4_write_file_atomic(q, txt, len), 0);
    free(txt);
}

static void expect_error(const ds4_model *m, const char *dir, const char *want1, const char *want2) {
    ds4_lora *l = ds4_lora_load(m, dir);
    if (l) fail_msg("%s loaded; expected an error with '%s'", dir, want1);
    const char *e = ds4_error();
    if (!strstr(e, want1) || (want2 && !strstr(e, want2)))
        fail_msg("error for %s: '%s' lacks '%s' / '%s'", dir, e, want1, want2 ? want2 : "");
}

static void test_malformed_adapters(void **s) {
    (void)s;
    ds4_model *m = tiny_model(61);
    ds4_lora *l = ds4_lora_create(m, 2, 4.0f, DS4_LORA_Q | DS4_LORA_DOWN, 1);
    assert_non_null(l);
    assert_int_equal(ds4_lora_save(l, tmp_path("good")), 0);
    ds4_lora_free(l);
    const char *qa = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    const char *qb = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    char p[300];

    /* wrong shapes: A's input width, B's output rows, a rank other than r */
    rewrite(tmp_path("good"), tmp_path("shapeA"), NULL, qa, 2, 65, NULL);
    expect_error(m, tmp_path("shapeA"), qa, "must be [2, 64]");
    rewrite(tmp_path("good"), tmp_path("shapeB"), NULL, qb, 63, 2, NULL);
    expect_error(m, tmp_path("shapeB"), qb, "must be [64, 2]");
    rewrite(tmp_path("good"), tmp_path("rank"), NULL, qa, 3, 64, NULL);
    expect_error(m, tmp_path("rank"), qa, "r = 2");
    /* a missing partner, a name that is not LoRA, a module the base lacks */
    rewrite(tmp_path("good"), tmp_path("missing"), qb, NULL, 0, 0, NULL);
    expect_error(m, tmp_path("missing"), "missing", qb);
    rewrite(tmp_path("good"), tmp_path("odd"), NULL, NULL, 0, 0, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude");
    expect_error(m, tmp_path("odd"), "lora_magnitude", "not a LoRA weight");
    rewrite(tmp_path("good"), tmp_path("extra"), NULL, NULL, 0, 0, "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight");
    expect_error(m, tmp_path("extra"), "layers.7", NULL);
    /* truncated safetensors */
    rewrite(tmp_path("good"), tmp_path("trunc"), NULL, NULL, 0, 0, NULL);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmp_path("trunc"));
    assert_int_equal(truncate(p, 200), 0);
    expect_error(m, tmp_path("trunc"), "adapter_model.safetensors", NULL);
    /* config: bad JSON, wrong peft_type, missing r, fan_in_fan_out, missing file */
    rewrite(tmp_path("good"), tmp_path("json"), NULL, NULL, 0, 0, NULL);
    snprintf(p, sizeof p, "%s/adapter_config.json", tmp_path("json"));
    write_text(p, "{\"peft_type\": \"LORA\", \"r\": 2,");
    expect_error(m, tmp_path("json"), "adapter_config.json", "not a valid JSON");
    write_text(p, "{\"peft_type\": \"IA3\", \"r\": 2, \"lora_alpha\": 4}");
    expect_error(m, tmp_path("json"), "adapter_config.json", "peft_type");
    write_text(p, "{\"peft_type\": \"LORA\", \"lora_alpha\": 4}");
    expect_error(m, tmp_path("json"), "adapter_config.json", "'r'");
    write_text(p, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"fan_in_fan_out\": true}");
    expect_error(m, tmp_path("json"), "fan_in_fan_out", NULL);
    remove(p);
    expect_error(m, tmp_path("json"), "no adapter_config.json", NULL);
    /* an adapter for another model: shapes checked at attach too */
    ds4_config c;
    tiny_cfg(&c);
    c.hidden_size = 96;
    ds4_model *other = ds4_model_create(&c, 1);
    assert_non_null(other);
    expect_error(other, tmp_path("good"), qa, "must be [2, 96]");
    ds4_lora *u = ds4_lora_load(NULL, tmp_path("good"));
    assert_non_null(u);
    assert_int_equal(ds4_lora_attach(other, u), -1);
    assert_non_null(strstr(ds4_error(), qa));
    ds4_lora_free(u);
    ds4_model_free(other);
    ds4_model_free(m);
}

static void test_targets(void **s) {
    (void)s;
    unsigned mask;
    assert_int_equal(ds4_lora_parse_targets("q,k,v,o,gate,up,down", &mask), 0);
    assert_int_equal(mask, DS4_LORA_ALL);
    assert_int_equal(ds4_lora_parse_targets("q_proj,down", &mask), 0);
    assert_int_equal(mask, DS4_LORA_Q | DS4_LORA_DOWN);
    assert_int_equal(ds4_lora_parse_targets("all", &mask), 0);
    assert_int_equal(mask, DS4_LORA_ALL);
    assert_int_equal(ds4_lora_parse_targets("q,router", &mask), -1);
    assert_non_null(strstr(ds4_error(), "router"));
    assert_int_equal(ds4_lora_is_target("model.layers.1.mlp.gate.weight", DS4_LORA_ALL), 0);   /* the MoE router */
    assert_int_equal(ds4_lora_is_target("model.layers.1.mlp.experts.3.gate_proj.weight", DS4_LORA_GATE), 1);
    assert_int_equal(ds4_lora_is_target("model.layers.1.self_attn.k_proj.weight", DS4_LORA_Q), 0);
}

/* Tiny shapes: one thread is many times faster on a busy machine (the
 * OpenMP team's wake-ups cost more than the work). The merge test keeps the
 * default team: the adapters run inside the parallel expert loop there. */
static int g_threads;
static int one_thread(void **s) { (void)s; g_threads = omp_get_max_threads(); omp_set_num_threads(1); return 0; }
static int all_threads(void **s) { (void)s; omp_set_num_threads(g_threads); return 0; }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets),
        cmocka_unit_test_setup_teardown(test_grad_fd, one_thread, all_threads),
        cmocka_unit_test_setup_teardown(test_training_lowers_loss_base_frozen, one_thread, all_threads),
        cmocka_unit_test_setup_teardown(test_training_quantized_base, one_thread, all_threads),
        cmocka_unit_test(test_merge_matches_adapter),
        cmocka_unit_test(test_fresh_adapter_is_identity),
        cmocka_unit_test(test_save_load_round_trip),
        cmocka_unit_test(test_malformed_adapters),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
