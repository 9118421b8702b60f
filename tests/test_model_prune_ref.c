/* test_model_prune_ref.c — token pruning and indexed sparse attention against
 * the independent PyTorch reference (tools/reference_prune.py, dense masks and
 * autograd): inference logits under the causal keep rule, and under the
 * training rule the LM loss, each layer's router BCE, kept counts, indexer KL,
 * every gradient, and the indexer warm-up (dense KL) gradients. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/forward.h"
#include "model/prune.h"
#include "util/util.h"

static const ds4_st_tensor *need(const ds4_safetensors *st, const char *name) {
    const ds4_st_tensor *t = ds4_st_find(st, name);
    if (!t) fail_msg("fixture lacks %s", name);
    return t;
}

/* max |a - b| relative to max |b| (floored at floor) */
static double rel_err(const float *a, const float *b, size_t n, double floor) {
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs((double)a[i] - b[i]));
        r = fmax(r, fabs((double)b[i]));
    }
    return m / fmax(r, floor);
}

/* Training forward of the whole fixture batch (top-k rule); returns the LM loss
 * and leaves dlogits (mean over tokens) in acts->logits. */
static double train_forward(const ds4_model *m, ds4_acts *acts, ds4_kv_cache *kv, ds4_batch *b,
                            int *tok, int *seq, int *tgt, const int *ids, int B, int T) {
    for (int s = 0; s < B; s++) {
        ds4_kv_cache_reset_seq(kv, s);
        for (int t = 0; t < T; t++) {
            tok[s * T + t] = ids[s * (T + 1) + t];
            tgt[s * T + t] = ids[s * (T + 1) + t + 1];
            seq[s * T + t] = s;
        }
    }
    *b = (ds4_batch){.n = B * T, .tokens = tok, .seq = seq};
    if (ds4_forward_impl(m, b, kv, acts, NULL, 0, NULL) != 0) fail_msg("forward: %s", ds4_error());
    const int n = B * T;
    return ds4_softmax_xent(acts->logits, acts->logits, tgt, n, m->cfg.vocab_size, 1.0f / n) / n;
}

static void check_variant(const char *name, int indexed) {
    char path[256];
    snprintf(path, sizeof path, "fixtures/prune/%s/model", name);
    ds4_model *m = ds4_model_load(path);
    if (!m) fail_msg("%s", ds4_error());
    const ds4_config *c = &m->cfg;
    snprintf(path, sizeof path, "fixtures/prune/%s/fixture.safetensors", name);
    ds4_safetensors st;
    assert_int_equal(ds4_st_open(&st, path), 0);
    const ds4_st_tensor *in = need(&st, "inputs");
    const int B = (int)in->shape[0], T = (int)in->shape[1] - 1, V = c->vocab_size, L = c->num_hidden_layers;
    const int *ids = in->data;
    printf("[%s]\n", name);

    /* inference: causal keep rule, sparse attention, through the KV cache */
    const float *ref = need(&st, "logits_causal")->data;
    float *lg = malloc(sizeof(float) * (size_t)T * V);
    double worst = 0;
    for (int b = 0; b < B; b++) {
        int x[64];
        for (int t = 0; t < T; t++) x[t] = ids[b * (T + 1) + t];
        assert_int_equal(ds4_forward_logits(m, x, T, lg), 0);
        worst = fmax(worst, rel_err(lg, ref + (size_t)b * T * V, (size_t)T * V, 1.0));
    }
    printf("  causal-rule logits: rel err %.3g\n", worst);
    assert_true(worst < 1e-4);

    /* training rule: losses and gradients */
    const int n = B * T;
    ds4_acts *acts = ds4_acts_create(c, n, L, 1);
    ds4_kv_cache *kv = ds4_kv_cache_create(c, B, T);
    int *tok = malloc(sizeof(int) * n), *seq = malloc(sizeof(int) * n), *tgt = malloc(sizeof(int) * n);
    float *grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    assert_non_null(acts); assert_non_null(kv); assert_non_null(grads);
    ds4_batch b;
    double lm = train_forward(m, acts, kv, &b, tok, seq, tgt, ids, B, T);
    const float ref_lm = *(const float *)need(&st, "loss_lm")->data;
    printf("  LM loss: ds4 %.7f torch %.7f\n", lm, ref_lm);
    assert_true(fabs(lm - ref_lm) < 1e-5);
    const int *kept = need(&st, "kept")->data;
    const float *bce = need(&st, "bce")->data;
    int pi = 0;
    for (int l = 0; l < L; l++) {
        assert_int_equal(acts->l[l].nk, kept[l]);
        if (ds4_prune_ratio(c, l) <= 0) continue;
        const double v = acts->l[l].prune_bce / acts->l[l].prune_bce_n;
        printf("  layer %d: kept %d of %d, BCE ds4 %.6f torch %.6f\n", l, acts->l[l].nk, n, v, bce[pi]);
        assert_true(fabs(v - bce[pi]) < 1e-5);
        pi++;
    }
    assert_int_equal(ds4_backward(m, &b, kv, acts, acts->logits, grads), 0);
    if (indexed) {
        const float *kl = need(&st, "kl")->data;
        for (int l = 0; l < L; l++) {
            const double v = acts->l[l].idx_kl / acts->l[l].idx_kl_n;
            printf("  layer %d: indexer KL ds4 %.6f torch %.6f\n", l, v, kl[l]);
            assert_true(fabs(v - kl[l]) < 1e-4 * fmax(1.0, kl[l]));
        }
    }
    double gworst = 0;
    const char *gname = "";
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        snprintf(path, sizeof path, "grad.%s", t->name);
        const ds4_st_tensor *g = need(&st, path);
        assert_int_equal(g->numel, t->numel);
        double e = rel_err(grads + t->offset, g->data, t->numel, 1e-6);
        if (e > gworst) { gworst = e; gname = t->name; }
        if (e > 2e-3) fail_msg("%s: gradient rel err %.3g", t->name, e);
    }
    printf("  gradients: worst rel err %.3g (%s)\n", gworst, gname);

    /* indexer warm-up: dense attention, only the indexer learns (KL) */
    if (indexed) {
        memset(grads, 0, m->layout.n_floats * sizeof(float));
        acts->indexer_warmup = 1;
        train_forward(m, acts, kv, &b, tok, seq, tgt, ids, B, T);
        assert_int_equal(ds4_backward(m, &b, kv, acts, acts->logits, grads), 0);
        const float *kl = need(&st, "kl_warmup")->data;
        for (int l = 0; l < L; l++) {
            const double v = acts->l[l].idx_kl / acts->l[l].idx_kl_n;
            printf("  layer %d: warm-up KL ds4 %.6f torch %.6f\n", l, v, kl[l]);
            assert_true(fabs(v - kl[l]) < 1e-4 * fmax(1.0, kl[l]));
        }
        gworst = 0;
        for (int i = 0; i < m->layout.n_tensors; i++) {
            const ds4_tensor_info *t = &m->layout.tensors[i];
            const float *g = grads + t->offset;
            if (!strstr(t->name, ".indexer.")) {   /* nothing else gets a gradient */
                for (size_t k = 0; k < t->numel; k++)
                    if (g[k] != 0) fail_msg("warm-up: %s has a gradient", t->name);
                continue;
            }
            snprintf(path, sizeof path, "grad_warmup.%s", t->name);
            double e = rel_err(g, need(&st, path)->data, t->numel, 1e-6);
            gworst = fmax(gworst, e);
            if (e > 2e-3) fail_msg("warm-up %s: gradient rel err %.3g", t->name, e);
        }
        printf("  warm-up indexer gradients: worst rel err %.3g\n", gworst);
    }
    free(tok); free(seq); free(tgt); free(grads); free(lg);
    ds4_kv_cache_free(kv);
    ds4_acts_free(acts);
    ds4_st_close(&st);
    ds4_model_free(m);
}

static void test_window_sinks_pruned(void **state) { (void)state; check_variant("window", 0); }
static void test_indexer_pruned(void **state) { (void)state; check_variant("indexer", 1); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_sinks_pruned),
        cmocka_unit_test(test_indexer_pruned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
