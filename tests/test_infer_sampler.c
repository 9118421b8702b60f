/* test_infer_sampler.c — the sampler against hand-computed distributions, a
 * naive full-sort reference of the same filter chain, and the empirical
 * distribution of many draws (chi-square bound). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"

static ds4_sampler_params params(float temp, int k, float top_p, float min_p, uint64_t seed) {
    ds4_sampler_params p;
    ds4_sampler_params_default(&p);
    p.temperature = temp; p.top_k = k; p.top_p = top_p; p.min_p = min_p; p.seed = seed;
    return p;
}

static void random_logits(ds4_rng *r, float *x, int V, float scale) {
    for (int i = 0; i < V; i++) x[i] = ds4_rng_normal(r) * scale;
}

static int naive_argmax(const float *x, int V) {
    int b = 0;
    for (int i = 1; i < V; i++) if (x[i] > x[b]) b = i;
    return b;
}

static void test_greedy_is_argmax(void **st) {
    (void)st;
    ds4_rng r; ds4_rng_seed(&r, 1);
    int V = 3000;
    float *x = malloc(V * sizeof *x);
    ds4_sampler s;
    ds4_sampler_params p = params(0, 0, 1, 0, 7);
    assert_int_equal(ds4_sampler_init(&s, &p, V), 0);
    ds4_sampler s1;                                   /* top-k = 1 at temperature 1 */
    ds4_sampler_params p1 = params(1.0f, 1, 1, 0, 7);
    assert_int_equal(ds4_sampler_init(&s1, &p1, V), 0);
    ds4_sampler s2;                                   /* top-k = 1 via the general path? no: any k=1 is argmax */
    ds4_sampler_params p2 = params(1.0f, 0, 1e-6f, 0, 7);   /* a tiny nucleus is the argmax too */
    assert_int_equal(ds4_sampler_init(&s2, &p2, V), 0);
    for (int t = 0; t < 50; t++) {
        random_logits(&r, x, V, 3.0f);
        int a = naive_argmax(x, V);
        assert_int_equal(ds4_sampler_sample(&s, x, V), a);
        assert_int_equal(ds4_sampler_sample(&s1, x, V), a);
        assert_int_equal(ds4_sampler_sample(&s2, x, V), a);
    }
    /* ties: the lowest id */
    for (int i = 0; i < V; i++) x[i] = 0;
    x[17] = 5; x[9] = 5; x[2000] = 5;
    assert_int_equal(ds4_sampler_sample(&s, x, V), 9);
    assert_int_equal(ds4_sampler_sample(&s1, x, V), 9);
    ds4_sampler_free(&s); ds4_sampler_free(&s1); ds4_sampler_free(&s2);
    free(x);
}

/* Logits log(p) for given probabilities, placed at a permuted position. */
static void logits_from_probs(const double *p, int V, const int *perm, float *x) {
    for (int i = 0; i < V; i++) x[perm[i]] = (float)log(p[i]);
}

static void expect_dist(ds4_sampler *s, const float *x, int V, int n_exp, const int *ids_exp,
                        const double *p_exp) {
    int ids[64]; float pr[64];
    assert_true(V <= 64);
    int n = ds4_sampler_dist(s, x, V, ids, pr);
    assert_int_equal(n, n_exp);
    for (int j = 0; j < n_exp; j++) {
        int found = -1;
        for (int i = 0; i < n; i++) if (ids[i] == ids_exp[j]) found = i;
        assert_true(found >= 0);
        assert_true(fabs(pr[found] - p_exp[j]) < 1e-5);
    }
}

static void test_top_p_hand(void **st) {
    (void)st;
    double p[5] = {0.5, 0.2, 0.15, 0.1, 0.05};
    int perm[5] = {3, 0, 4, 1, 2};                    /* token of each probability */
    float x[5];
    logits_from_probs(p, 5, perm, x);
    ds4_sampler s;
    ds4_sampler_params sp = params(1.0f, 0, 0.75f, 0, 3);
    assert_int_equal(ds4_sampler_init(&s, &sp, 5), 0);
    /* 0.5 + 0.2 = 0.7 < 0.75, + 0.15 = 0.85: nucleus {3, 0, 4} */
    int ids[3] = {3, 0, 4};
    double pe[3] = {0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85};
    expect_dist(&s, x, 5, 3, ids, pe);
    int count[5] = {0};
    for (int t = 0; t < 20000; t++) {
        int id = ds4_sampler_sample(&s, x, 5);
        assert_true(id >= 0 && id < 5);
        count[id]++;
    }
    assert_int_equal(count[1], 0);                    /* outside the nucleus: never */
    assert_int_equal(count[2], 0);
    assert_true(fabs(count[3] / 20000.0 - 0.5 / 0.85) < 0.02);
    ds4_sampler_free(&s);

    /* top_p = 0.5: exactly the first token (mass reaches 0.5) */
    sp.top_p = 0.5f;
    assert_int_equal(ds4_sampler_init(&s, &sp, 5), 0);
    int ids1[1] = {3}; double pe1[1] = {1.0};
    expect_dist(&s, x, 5, 1, ids1, pe1);
    ds4_sampler_free(&s);
}

static void test_min_p_hand(void **st) {
    (void)st;
    double p[4] = {0.4, 0.3, 0.2, 0.1};
    int perm[4] = {2, 3, 0, 1};
    float x[4];
    logits_from_probs(p, 4, perm, x);
    ds4_sampler s;
    ds4_sampler_params sp = params(1.0f, 0, 1, 0.45f, 3);     /* p >= 0.18: {0.4, 0.3, 0.2} */
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    int ids[3] = {2, 3, 0}; double pe[3] = {0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9};
    expect_dist(&s, x, 4, 3, ids, pe);
    ds4_sampler_free(&s);
    sp.min_p = 0.6f;                                          /* p >= 0.24: {0.4, 0.3} */
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    int ids2[2] = {2, 3}; double pe2[2] = {0.4 / 0.7, 0.3 / 0.7};
    expect_dist(&s, x, 4, 2, ids2, pe2);
    ds4_sampler_free(&s);
}

/* The order matters: top-k renormalises before top-p measures mass. */
static void test_order_hand(void **st) {
    (void)st;
    double p[4] = {0.4, 0.3, 0.2, 0.1};
    int perm[4] = {0, 1, 2, 3};
    float x[4];
    logits_from_probs(p, 4, perm, x);
    ds4_sampler s;
    /* alone, top_p 0.72: 0.4, 0.7 < 0.72, 0.9 -> 3 tokens */
    ds4_sampler_params sp = params(1.0f, 0, 0.72f, 0, 3);
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    int ids3[3] = {0, 1, 2}; double pe3[3] = {0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9};
    expect_dist(&s, x, 4, 3, ids3, pe3);
    ds4_sampler_free(&s);
    /* after top-k 3: 4/9, 7/9 >= 0.72 -> 2 tokens */
    sp.top_k = 3;
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    int ids2[2] = {0, 1}; double pe2[2] = {4.0 / 7, 3.0 / 7};
    expect_dist(&s, x, 4, 2, ids2, pe2);
    ds4_sampler_free(&s);
    /* temperature 2 on probabilities p: q ∝ sqrt(p) */
    sp = params(2.0f, 0, 1, 0, 3);
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    double z = sqrt(0.4) + sqrt(0.3) + sqrt(0.2) + sqrt(0.1);
    int ids4[4] = {0, 1, 2, 3};
    double pe4[4] = {sqrt(0.4) / z, sqrt(0.3) / z, sqrt(0.2) / z, sqrt(0.1) / z};
    expect_dist(&s, x, 4, 4, ids4, pe4);
    ds4_sampler_free(&s);
}

/* Naive reference: full sort, each filter in turn on the renormalised
 * distribution, all in double. Writes probs_ref[V] (0 for removed tokens). */
static const double *g_sort_p;
static int cmp_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (g_sort_p[i] != g_sort_p[j]) return g_sort_p[i] > g_sort_p[j] ? -1 : 1;
    return i - j;
}
static void naive_dist(const float *x, int V, const ds4_sampler_params *sp, double *prob) {
    double *q = malloc(V * sizeof *q);
    int *ord = malloc(V * sizeof *ord);
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) { q[i] = (double)x[i] / sp->temperature; if (q[i] > mx) mx = q[i]; }
    for (int i = 0; i < V; i++) { q[i] = exp(q[i] - mx); z += q[i]; }
    for (int i = 0; i < V; i++) { q[i] /= z; ord[i] = i; }
    g_sort_p = q;
    qsort(ord, V, sizeof *ord, cmp_desc);
    int n = V;
    if (sp->top_k > 0 && sp->top_k < V) n = sp->top_k;
    double m = 0;
    for (int i = 0; i < n; i++) m += q[ord[i]];
    if (sp->top_p < 1) {
        double c = 0;
        for (int i = 0; i < n; i++) { c += q[ord[i]] / m; if (c >= sp->top_p) { n = i + 1; break; } }
    }
    m = 0;
    for (int i = 0; i < n; i++) m += q[ord[i]];
    double pmax = q[ord[0]] / m;
    if (sp->min_p > 0) {
        int j = 0;
        while (j < n && q[ord[j]] / m >= sp->min_p * pmax) j++;
        n = j;
    }
    m = 0;
    for (int i = 0; i < n; i++) m += q[ord[i]];
    for (int i = 0; i < V; i++) prob[i] = 0;
    for (int i = 0; i < n; i++) prob[ord[i]] = q[ord[i]] / m;
    free(q); free(ord);
}

static void test_against_naive(void **st) {
    (void)st;
    ds4_rng r; ds4_rng_seed(&r, 99);
    const int Vs[4] = {7, 100, 4096, 32000};
    const int ks[5] = {0, 1, 5, 40, 1000};
    const float ps[4] = {1.0f, 0.9f, 0.5f, 0.98f};
    const float mps[3] = {0.0f, 0.05f, 0.3f};
    int Vmax = 32000;
    float *x = malloc(Vmax * sizeof *x), *pr = malloc(Vmax * sizeof *pr);
    int *ids = malloc(Vmax * sizeof *ids);
    double *ref = malloc(Vmax * sizeof *ref);
    int trials = 0;
    for (int vi = 0; vi < 4; vi++)
        for (int ki = 0; ki < 5; ki++)
            for (int pi = 0; pi < 4; pi++)
                for (int mi = 0; mi < 3; mi++) {
                    int V = Vs[vi];
                    float temp = 0.5f + ds4_rng_uniform(&r) * 1.5f;
                    random_logits(&r, x, V, 1.0f + 3.0f * ds4_rng_uniform(&r));
                    if (trials % 3 == 0)                  /* some exact ties */
                        for (int i = 0; i < V; i += 3) x[i] = x[0];
                    ds4_sampler_params sp = params(temp, ks[ki], ps[pi], mps[mi], 5);
                    ds4_sampler s;
                    assert_int_equal(ds4_sampler_init(&s, &sp, V), 0);
                    int n = ds4_sampler_dist(&s, x, V, ids, pr);
                    assert_true(n >= 1 && n <= V);
                    naive_dist(x, V, &sp, ref);
                    int n_ref = 0;
                    for (int i = 0; i < V; i++) n_ref += ref[i] > 0;
                    if (ks[ki] == 1) n_ref = 1;
                    double sum = 0;
                    for (int i = 0; i < n; i++) {
                        assert_true(fabs(pr[i] - ref[ids[i]]) < 1e-5);
                        sum += pr[i];
                    }
                    assert_int_equal(n, n_ref);
                    assert_true(fabs(sum - 1) < 1e-5);
                    ds4_sampler_free(&s);
                    trials++;
                }
    free(x); free(pr); free(ids); free(ref);
}

/* Chi-square goodness of fit of many draws against the softmax. */
static void chi_square_check(const float *x, int V, const ds4_sampler_params *sp, int N) {
    double *ref = malloc(V * sizeof *ref);
    long *cnt = calloc(V, sizeof *cnt);
    naive_dist(x, V, sp, ref);
    ds4_sampler s;
    assert_int_equal(ds4_sampler_init(&s, sp, V), 0);
    for (int t = 0; t < N; t++) {
        int id = ds4_sampler_sample(&s, x, V);
        assert_true(id >= 0 && id < V);
        assert_true(ref[id] > 0);                     /* never a filtered token */
        cnt[id]++;
    }
    double chi = 0;
    int df = -1;
    for (int i = 0; i < V; i++) {
        if (ref[i] <= 0) continue;
        double e = ref[i] * N;
        chi += (cnt[i] - e) * (cnt[i] - e) / e;
        df++;
    }
    /* mean df, sd sqrt(2 df): 6 sd above is far outside chance */
    double bound = df + 6 * sqrt(2.0 * (df > 0 ? df : 1)) + 10;
    assert_true(chi < bound);
    /* and the bound can fail: a distorted distribution is rejected */
    double chi_bad = 0;
    for (int i = 0; i < V; i++) {
        if (ref[i] <= 0) continue;
        double e = ref[i] * N * (i % 2 ? 1.05 : 0.95);
        chi_bad += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    if (df >= 10) assert_true(chi_bad > bound);
    ds4_sampler_free(&s);
    free(ref); free(cnt);
}

static void test_empirical(void **st) {
    (void)st;
    ds4_rng r; ds4_rng_seed(&r, 2024);
    int V = 60;
    float x[60];
    random_logits(&r, x, V, 1.0f);
    ds4_sampler_params sp = params(1.0f, 0, 1, 0, 11);
    chi_square_check(x, V, &sp, 300000);
    sp = params(0.7f, 30, 0.9f, 0.02f, 12);
    chi_square_check(x, V, &sp, 300000);
}

static void test_determinism(void **st) {
    (void)st;
    ds4_rng r; ds4_rng_seed(&r, 5);
    int V = 1000;
    float *x = malloc(V * sizeof *x);
    random_logits(&r, x, V, 2.0f);
    ds4_sampler_params sp = params(1.0f, 50, 0.95f, 0, 1234);
    ds4_sampler a, b, c;
    assert_int_equal(ds4_sampler_init(&a, &sp, V), 0);
    assert_int_equal(ds4_sampler_init(&b, &sp, V), 0);
    sp.seed = 1235;
    assert_int_equal(ds4_sampler_init(&c, &sp, V), 0);
    int diff = 0;
    for (int t = 0; t < 500; t++) {
        int ia = ds4_sampler_sample(&a, x, V), ib = ds4_sampler_sample(&b, x, V);
        int ic = ds4_sampler_sample(&c, x, V);
        assert_int_equal(ia, ib);
        diff += ia != ic;
    }
    assert_true(diff > 100);
    ds4_sampler_free(&a); ds4_sampler_free(&b); ds4_sampler_free(&c);
    free(x);
}

static void test_errors(void **st) {
    (void)st;
    ds4_sampler s;
    ds4_sampler_params sp = params(-1, 0, 1, 0, 1);
    assert_int_equal(ds4_sampler_init(&s, &sp, 10), -1);
    sp = params(1, 0, 0, 0, 1);
    assert_int_equal(ds4_sampler_init(&s, &sp, 10), -1);
    sp = params(1, 0, 1, 1.5f, 1);
    assert_int_equal(ds4_sampler_init(&s, &sp, 10), -1);
    sp = params(1, -2, 1, 0, 1);
    assert_int_equal(ds4_sampler_init(&s, &sp, 10), -1);
    sp = params(1, 0, 1, 0, 1);
    assert_int_equal(ds4_sampler_init(&s, &sp, 4), 0);
    float x[5] = {0, 1, NAN, 2, 0};
    assert_int_equal(ds4_sampler_sample(&s, x, 4), -1);
    assert_non_null(strstr(ds4_error(), "NaN"));
    assert_int_equal(ds4_sampler_sample(&s, x, 5), -1);   /* more than the vocab */
    float y[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(ds4_sampler_sample(&s, y, 4), -1);
    float z[4] = {-INFINITY, 3, -INFINITY, -INFINITY};     /* masked tokens are fine */
    assert_int_equal(ds4_sampler_sample(&s, z, 4), 1);
    ds4_sampler_free(&s);
    /* masked tokens never survive, even when top-k asks for more tokens
     * than are unmasked */
    float zz[10];
    for (int i = 0; i < 10; i++) zz[i] = i % 3 ? -INFINITY : (float)i;   /* 0, 3, 6, 9 */
    int ids[10]; float pr[10];
    for (int mode = 0; mode < 4; mode++) {
        sp = params(1, mode & 1 ? 7 : 0, mode & 2 ? 0.99999f : 1.0f, 0, 1);
        assert_int_equal(ds4_sampler_init(&s, &sp, 10), 0);
        int n = ds4_sampler_dist(&s, zz, 10, ids, pr);
        assert_int_equal(n, 4);
        for (int i = 0; i < n; i++) { assert_int_equal(ids[i] % 3, 0); assert_true(pr[i] > 0); }
        for (int t = 0; t < 200; t++) assert_int_equal(ds4_sampler_sample(&s, zz, 10) % 3, 0);
        ds4_sampler_free(&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_top_p_hand),
        cmocka_unit_test(test_min_p_hand),
        cmocka_unit_test(test_order_hand),
        cmocka_unit_test(test_against_naive),
        cmocka_unit_test(test_empirical),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
