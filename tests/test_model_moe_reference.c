/* test_model_moe_reference.c — one MoE layer of ds4 (ds4_moe_forward /
 * ds4_moe_backward) against the independent PyTorch reference
 * tools/reference_moe.py: chosen experts, output, dx, every weight gradient,
 * and the sequence-wise balance loss with its gradient, for hierarchical
 * sigmoid and softmax routing, DeepSeek-V3 mode and k equal to the group size. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/acts.h"
#include "model/moe.h"
#include "util/util.h"

static const ds4_st_tensor *need(const ds4_safetensors *st, const char *name) {
    const ds4_st_tensor *t = ds4_st_find(st, name);
    if (!t) fail_msg("fixture lacks %s", name);
    return t;
}

/* max |a - b| / max(max |b|, 1e-6): error relative to the tensor's scale */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        r = fmax(r, fabs((double)b[i]));
    }
    return d / fmax(r, 1e-6);
}

static void check(const char *what, const float *got, const ds4_st_tensor *ref, size_t n, double tol) {
    assert_int_equal(ref->numel, n);
    const double e = rel_err(got, ref->data, n);
    printf("  %-10s rel err %.3g\n", what, e);
    if (e > tol) fail_msg("%s: relative error %.3g > %.3g", what, e, tol);
}

static float *falloc(size_t n) { return ds4_alloc_aligned((n ? n : 1) * sizeof(float)); }

static void run_case(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "fixtures/moe/%s.safetensors", name);
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) fail_msg("%s", ds4_error());
    cJSON *meta = cJSON_Parse(st.metadata);
    const cJSON *cj = cJSON_GetObjectItemCaseSensitive(meta, "config");
    const cJSON *sl = cJSON_GetObjectItemCaseSensitive(meta, "seq_len");
    assert_true(cJSON_IsString(cj) && cJSON_IsString(sl));
    ds4_config c;
    if (ds4_config_parse(&c, cj->valuestring, path) != 0) fail_msg("%s", ds4_error());
    const int seq_len = atoi(sl->valuestring);
    cJSON_Delete(meta);
    ds4_model *m = ds4_model_create(&c, 1);
    assert_non_null(m);
    const int D = c.hidden_size, E = c.n_routed_experts, Fm = c.moe_intermediate_size, k = ds4_moe_k(&c);
    const int S = c.n_shared_experts * Fm;
    const ds4_st_tensor *xt = need(&st, "x");
    const int n = (int)xt->shape[0];
    printf("%s: n %d, E %d, G %d, k %d, shared %d, %s\n", name, n, E, c.n_group, k, S,
           c.scoring_func == DS4_SCORE_SOFTMAX ? "softmax" : "sigmoid");

    /* weights from the fixture into the model's buffers */
    ds4_layer *W = &m->w.layers[0];
    struct { const char *name; float *dst; size_t n; } ws[] = {
        {"router", W->router, (size_t)E * D}, {"bias", W->router_bias, (size_t)E},
        {"exp_gate", W->exp_gate, (size_t)E * Fm * D}, {"exp_up", W->exp_up, (size_t)E * Fm * D},
        {"exp_down", W->exp_down, (size_t)E * D * Fm}, {"sh_gate", W->sh_gate, (size_t)S * D},
        {"sh_up", W->sh_up, (size_t)S * D}, {"sh_down", W->sh_down, (size_t)D * S},
    };
    const int nw = S > 0 ? 8 : 5;
    for (int i = 0; i < nw; i++) {
        const ds4_st_tensor *t = need(&st, ws[i].name);
        assert_int_equal(t->numel, ws[i].n);
        memcpy(ws[i].dst, t->data, ws[i].n * sizeof(float));
    }

    /* forward, as in training: two sequences, aux loss on when alpha > 0 */
    ds4_acts *acts = ds4_acts_create(&c, n, 1, 0);
    assert_non_null(acts);
    ds4_layer_acts *A = &acts->l[0];
    int *seq = malloc(sizeof(int) * (size_t)n);
    for (int t = 0; t < n; t++) seq[t] = t / seq_len;
    A->seq = seq;
    A->aux_scale = 1.0f;
    const float *x = xt->data;
    ds4_moe_forward(&c, W, A, x, n);

    const ds4_st_tensor *ex = need(&st, "experts");
    assert_int_equal(ex->numel, (size_t)n * k);
    for (int i = 0; i < n * k; i++)
        if (A->experts[i] != ((const int *)ex->data)[i])
            fail_msg("token %d slot %d: expert %d, reference %d", i / k, i % k, A->experts[i],
                     ((const int *)ex->data)[i]);
    check("y", A->ffn, need(&st, "y"), (size_t)n * D, 1e-5);
    const float ref_bal = *(const float *)need(&st, "balance")->data;
    printf("  balance    ds4 %.6f torch %.6f\n", A->balance, ref_bal);
    assert_true(fabs(A->balance - ref_bal) < 1e-5);

    /* backward of L = sum(y * dy) + alpha * balance */
    float *grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    ds4_weights gw;
    ds4_weights_bind(&gw, &c, &m->layout, grads);
    const size_t nk = (size_t)n * k;
    ds4_bw_scratch s = {
        .dh = falloc((size_t)n * S), .dg = falloc((size_t)n * S), .du = falloc((size_t)n * S),
        .dey = falloc(nk * D), .deh = falloc(nk * Fm), .deg = falloc(nk * Fm), .deu = falloc(nk * Fm),
        .dex = falloc(nk * D), .dweights = falloc(nk), .drlogits = falloc((size_t)n * E),
    };
    float *dx = falloc((size_t)n * D);
    ds4_moe_backward(&c, W, &gw.layers[0], A, x, need(&st, "dy")->data, dx, &s, n);
    check("dx", dx, need(&st, "dx"), (size_t)n * D, 1e-4);
    ds4_layer *G = &gw.layers[0];
    struct { const char *name; const float *g; size_t n; } gs[] = {
        {"grad.router", G->router, (size_t)E * D},
        {"grad.exp_gate", G->exp_gate, (size_t)E * Fm * D}, {"grad.exp_up", G->exp_up, (size_t)E * Fm * D},
        {"grad.exp_down", G->exp_down, (size_t)E * D * Fm}, {"grad.sh_gate", G->sh_gate, (size_t)S * D},
        {"grad.sh_up", G->sh_up, (size_t)S * D}, {"grad.sh_down", G->sh_down, (size_t)D * S},
    };
    /* the router gradient is tight: the aux-loss part of it is small */
    for (int i = 0; i < (S > 0 ? 7 : 4); i++)
        check(gs[i].name + 5, gs[i].g, need(&st, gs[i].name), gs[i].n, i == 0 ? 2e-5 : 1e-4);
    /* the bias is not trained: no gradient */
    for (int e = 0; e < E; e++) assert_true(G->router_bias[e] == 0.0f);

    float *ps[] = {s.dh, s.dg, s.du, s.dey, s.deh, s.deg, s.deu, s.dex, s.dweights, s.drlogits, dx, grads};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    free(seq);
    ds4_acts_free(acts);
    ds4_model_free(m);
    ds4_st_close(&st);
}

static void test_sigmoid_hier(void **state) { (void)state; run_case("sigmoid_hier"); }
static void test_softmax_hier(void **state) { (void)state; run_case("softmax_hier"); }
static void test_dsv3(void **state) { (void)state; run_case("dsv3"); }
static void test_full_group(void **state) { (void)state; run_case("full_group"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigmoid_hier),
        cmocka_unit_test(test_softmax_hier),
        cmocka_unit_test(test_dsv3),
        cmocka_unit_test(test_full_group),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
