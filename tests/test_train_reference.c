/* test_train_reference.c — ds4 against the independent PyTorch reference
 * (tools/reference.py): logits, loss, every gradient, and 10 AdamW steps of a
 * tiny dense + hierarchical-MoE model, in the style of llm.c's test_gpt2.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "io/safetensors.h"
#include "model/forward.h"
#include "train/train.h"
#include "util/util.h"

#define DIR "fixtures/ref"

static double max_abs_diff(const float *a, const float *b, size_t n, double *max_ref) {
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs((double)a[i] - b[i]));
        r = fmax(r, fabs((double)b[i]));
    }
    if (max_ref) *max_ref = r;
    return m;
}

static const ds4_st_tensor *need(const ds4_safetensors *st, const char *name) {
    const ds4_st_tensor *t = ds4_st_find(st, name);
    if (!t) fail_msg("fixture lacks %s", name);
    return t;
}

static void test_logits_loss_grads(void **state) {
    (void)state;
    ds4_model *m = ds4_model_load(DIR "/model");
    if (!m) fail_msg("%s", ds4_error());
    ds4_safetensors st;
    assert_int_equal(ds4_st_open(&st, DIR "/fixture.safetensors"), 0);
    const ds4_st_tensor *in = need(&st, "inputs");
    const int B = (int)in->shape[0], T = (int)in->shape[1] - 1, V = m->cfg.vocab_size;
    const int *ids = in->data;

    /* logits through the inference path (KV cache), one sequence at a time */
    const float *ref = need(&st, "logits")->data;
    float *lg = malloc(sizeof(float) * (size_t)T * V);
    double worst = 0, scale = 0;
    for (int b = 0; b < B; b++) {
        int x[64];
        for (int t = 0; t < T; t++) x[t] = ids[b * (T + 1) + t];
        assert_int_equal(ds4_forward_logits(m, x, T, lg), 0);
        worst = fmax(worst, max_abs_diff(lg, ref + (size_t)b * T * V, (size_t)T * V, &scale));
    }
    printf("logits: max abs err %.3g (max |logit| %.3g)\n", worst, scale);
    assert_true(worst < 1e-4);

    /* loss and every gradient through the training path */
    ds4_train_ctx *ctx = ds4_train_ctx_create(m, B, T);
    float *grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    double loss = ds4_train_ctx_step(ctx, m, ids, grads, 1.0f);
    const float ref_loss = *(const float *)need(&st, "loss")->data;
    printf("loss: ds4 %.7f torch %.7f\n", loss, ref_loss);
    assert_true(fabs(loss - ref_loss) < 1e-5);
    double gworst = 0;
    const char *gname = "";
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (!t->trainable) continue;
        char name[160];
        snprintf(name, sizeof name, "grad.%s", t->name);
        const ds4_st_tensor *g = need(&st, name);
        assert_int_equal(g->numel, t->numel);
        double gmax;
        double d = max_abs_diff(grads + t->offset, g->data, t->numel, &gmax);
        /* relative to the tensor's largest gradient, as in llm.c's checks */
        double rel = d / fmax(gmax, 1e-6);
        if (rel > gworst) { gworst = rel; gname = t->name; }
        if (rel > 2e-3) fail_msg("%s: max abs err %.3g vs max |grad| %.3g", t->name, d, gmax);
    }
    printf("gradients: worst relative err %.3g (%s)\n", gworst, gname);

    /* 10 AdamW steps with clipping at constant lr */
    const ds4_st_tensor *lt = need(&st, "losses");
    const float *ref_losses = lt->data;
    ds4_adamw opt = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    assert_int_equal(ds4_adamw_init(&opt, m), 0);
    for (int s = 0; s < (int)lt->numel; s++) {
        memset(grads, 0, m->layout.n_floats * sizeof(float));
        double l = ds4_train_ctx_step(ctx, m, ids, grads, 1.0f);
        ds4_clip_grad_norm(m, grads, 1.0f);
        ds4_adamw_step(&opt, m, grads, 1e-2f);
        printf("step %d: loss ds4 %.6f torch %.6f\n", s, l, ref_losses[s]);
        assert_true(fabs(l - ref_losses[s]) < 1e-3 * fmax(1.0, fabs(ref_losses[s])));
    }
    ds4_adamw_free(&opt);
    free(grads);
    free(lg);
    ds4_train_ctx_free(ctx);
    ds4_st_close(&st);
    ds4_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_logits_loss_grads)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
