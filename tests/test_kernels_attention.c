/* test_kernels_attention.c — checks the tiled attention kernel against the
 * naive reference (dense, GQA, windows, sinks, sel lists, decode offsets,
 * several thread counts) and its backward against central differences of an
 * independent double-precision attention written here. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels/kernels.h"
#include "util/util.h"

/* A test case owns every array an ds4_attn points to. */
typedef struct tcase {
    ds4_attn a;
    float *q, *k, *v, *sinks;   /* [n_q,H*Dh], [n_kv,K*Dh] x2, [H] */
    int *qpos, *kpos, *sel;     /* [n_q], [n_kv], [n_q,sel_k] */
} tcase;

typedef struct spec {
    int n_q, n_kv, H, K, Dh, window;
    int sinks;        /* 1: random sink logits */
    int gaps;         /* 1: kpos with random gaps */
    int qoff;         /* queries are the last n_q key positions (decode); else qpos = kpos[i] */
    int sel_k;        /* > 0: random sel lists of this width */
    float qscale;     /* spread of q (sharper softmax when larger) */
} spec;

static float *randv(ds4_rng *r, size_t n, float s) {
    float *v = malloc(DS4_MAX(n, 1) * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = s * ds4_rng_normal(r);
    return v;
}

static void tcase_make(tcase *t, const spec *sp, uint64_t seed) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    memset(t, 0, sizeof(*t));
    int H = sp->H, K = sp->K, Dh = sp->Dh;
    t->q = randv(&r, (size_t)sp->n_q * H * Dh, sp->qscale > 0 ? sp->qscale : 1.0f);
    t->k = randv(&r, (size_t)sp->n_kv * K * Dh, 1.0f);
    t->v = randv(&r, (size_t)sp->n_kv * K * Dh, 1.0f);
    t->sinks = sp->sinks ? randv(&r, H, 1.0f) : NULL;
    t->kpos = malloc(DS4_MAX(sp->n_kv, 1) * sizeof(int));
    t->qpos = malloc(DS4_MAX(sp->n_q, 1) * sizeof(int));
    int p = 5;
    for (int j = 0; j < sp->n_kv; j++) {
        t->kpos[j] = p;
        p += sp->gaps ? 1 + (int)(ds4_rng_u64(&r) % 3) : 1;
    }
    for (int i = 0; i < sp->n_q; i++) {
        if (sp->qoff) t->qpos[i] = t->kpos[sp->n_kv - sp->n_q + i];
        else t->qpos[i] = i < sp->n_kv ? t->kpos[i] : p + i;
    }
    if (sp->sel_k > 0) {
        t->sel = malloc((size_t)sp->n_q * sp->sel_k * sizeof(int));
        for (int i = 0; i < sp->n_q * sp->sel_k; i++) {
            uint64_t u = ds4_rng_u64(&r);
            /* mostly valid indices (some future / outside the window), some -1,
             * and duplicates by chance */
            t->sel[i] = (u % 7 == 0) ? -1 : (int)((u >> 8) % (uint64_t)sp->n_kv);
        }
    }
    t->a = (ds4_attn){.n_q = sp->n_q, .q = t->q, .qpos = t->qpos, .n_kv = sp->n_kv, .k = t->k,
                      .v = t->v, .kpos = t->kpos, .n_heads = H, .n_kv_heads = K, .head_dim = Dh,
                      .window = sp->window, .sinks = t->sinks, .sel = t->sel, .sel_k = sp->sel_k};
}

static void tcase_free(tcase *t) {
    free(t->q); free(t->k); free(t->v); free(t->sinks);
    free(t->qpos); free(t->kpos); free(t->sel);
}

/* log-sum-exp per (query, head) including the sink, in double, computed
 * directly (for checking the lse output). */
static double lse_direct(const ds4_attn *a, int i, int h) {
    int Dh = a->head_dim, G = a->n_heads / a->n_kv_heads;
    char *cand = calloc(DS4_MAX(a->n_kv, 1), 1);
    for (int j = 0; j < a->n_kv; j++) cand[j] = a->sel ? 0 : 1;
    if (a->sel)
        for (int e = 0; e < a->sel_k; e++) {
            int j = a->sel[(size_t)i * a->sel_k + e];
            if (j >= 0) cand[j] = 1;
        }
    double mx = a->sinks ? a->sinks[h] : -INFINITY, s = 0;
    double *sc = malloc(DS4_MAX(a->n_kv, 1) * sizeof(double));
    for (int j = 0; j < a->n_kv; j++) {
        long d = (long)a->qpos[i] - a->kpos[j];
        if (!cand[j] || d < 0 || (a->window > 0 && d >= a->window)) { cand[j] = 0; continue; }
        double x = 0;
        for (int e = 0; e < Dh; e++)
            x += (double)a->q[((size_t)i * a->n_heads + h) * Dh + e] * a->k[((size_t)j * a->n_kv_heads + h / G) * Dh + e];
        sc[j] = x / sqrt(Dh);
        mx = fmax(mx, sc[j]);
    }
    if (mx == -INFINITY) { free(cand); free(sc); return -INFINITY; }
    if (a->sinks) s += exp(a->sinks[h] - mx);
    for (int j = 0; j < a->n_kv; j++) if (cand[j]) s += exp(sc[j] - mx);
    free(cand); free(sc);
    return mx + log(s);
}

/* Forward against the reference (and lse against lse_direct), returning
 * the max abs difference. */
static double check_forward(const spec *sp, uint64_t seed, int nthreads) {
    tcase t;
    tcase_make(&t, sp, seed);
    size_t no = (size_t)sp->n_q * sp->H * sp->Dh;
    float *out = malloc(no * sizeof(float)), *ref = malloc(no * sizeof(float));
    float *lse = malloc((size_t)sp->n_q * sp->H * sizeof(float));
    for (size_t i = 0; i < no; i++) out[i] = NAN;   /* every entry must be written */
    int saved = omp_get_max_threads();
    omp_set_num_threads(nthreads);
    ds4_attention_forward(&t.a, out, lse);
    omp_set_num_threads(saved);
    ds4_attention_reference(&t.a, ref);
    double err = 0;
    for (size_t i = 0; i < no; i++) {
        double e = fabs((double)out[i] - ref[i]);
        if (!(e <= 2e-5 + 2e-5 * fabs(ref[i])))
            fail_msg("n_q=%d n_kv=%d H=%d K=%d Dh=%d win=%d sel_k=%d threads=%d: out[%zu] %.7g ref %.7g",
                     sp->n_q, sp->n_kv, sp->H, sp->K, sp->Dh, sp->window, sp->sel_k, nthreads, i,
                     out[i], ref[i]);
        err = fmax(err, e);
    }
    for (int i = 0; i < sp->n_q; i++)
        for (int h = 0; h < sp->H; h++) {
            double want = lse_direct(&t.a, i, h), got = lse[(size_t)i * sp->H + h];
            if (want == -INFINITY) assert_true(got == -INFINITY);
            else if (!(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want)))
                fail_msg("lse[%d,%d] %.7g want %.7g", i, h, got, want);
        }
    free(out); free(ref); free(lse);
    tcase_free(&t);
    return err;
}

static void test_forward_dense(void **state) {
    (void)state;
    spec cases[] = {
        /* n_q n_kv H K Dh win sinks gaps qoff sel_k qscale */
        {150, 150, 4, 2, 16, 0, 0, 0, 0, 0, 1},      /* > one tile, non-multiple */
        {150, 150, 4, 1, 16, 0, 1, 1, 0, 0, 1},      /* MQA, sinks, position gaps */
        {131, 131, 4, 4, 12, 0, 0, 0, 0, 0, 2},      /* Dh not a multiple of 8 */
        {100, 100, 4, 2, 24, 37, 1, 0, 0, 0, 1},     /* sliding window */
        {200, 200, 6, 2, 64, 50, 0, 1, 0, 0, 3},     /* window + gaps, sharp softmax */
        {1, 1, 2, 1, 8, 0, 0, 0, 0, 0, 1},           /* a single key */
        {70, 70, 128, 1, 8, 0, 1, 0, 0, 0, 1},       /* G > 64 rows per tile */
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) check_forward(&cases[c], 100 + c, 2);
}

static void test_forward_decode(void **state) {
    (void)state;
    spec cases[] = {
        {1, 3000, 6, 2, 64, 0, 0, 0, 1, 0, 1},       /* decode at the end of a long kv */
        {1, 3000, 6, 2, 64, 0, 1, 1, 1, 0, 2},       /* + sinks, gaps */
        {1, 3000, 4, 4, 32, 700, 1, 0, 1, 0, 1},     /* + window */
        {3, 2500, 8, 2, 64, 0, 0, 0, 1, 0, 1},       /* a few queries at the end */
        {65, 1000, 4, 2, 16, 0, 1, 0, 1, 0, 1},      /* a chunk of prefill after a cache */
    };
    int threads[] = {1, 2, 5};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        for (int t = 0; t < 3; t++) check_forward(&cases[c], 200 + c, threads[t]);
}

static void test_forward_sparse(void **state) {
    (void)state;
    spec cases[] = {
        {90, 90, 4, 2, 16, 0, 0, 0, 0, 20, 1},       /* random lists, -1, duplicates, future keys */
        {90, 90, 4, 1, 16, 30, 1, 1, 0, 40, 1},      /* + window, sinks, gaps */
        {1, 2000, 6, 2, 64, 0, 1, 0, 1, 700, 1},     /* decode with a long list (splits) */
        {40, 40, 4, 4, 12, 0, 0, 0, 0, 100, 1},      /* Dh % 8 != 0, list wider than n_kv */
    };
    int threads[] = {1, 3};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        for (int t = 0; t < 2; t++) check_forward(&cases[c], 300 + c, threads[t]);
}

/* Every key selected (in shuffled order) gives exactly the dense answer. */
static void test_sparse_equals_dense(void **state) {
    (void)state;
    spec sp = {77, 77, 4, 2, 16, 0, 1, 1, 0, 0, 1};
    tcase t;
    tcase_make(&t, &sp, 400);
    size_t no = (size_t)sp.n_q * sp.H * sp.Dh;
    float *dense = malloc(no * sizeof(float)), *sparse = malloc(no * sizeof(float));
    ds4_attention_forward(&t.a, dense, NULL);
    int sel_k = sp.n_kv + 3;
    int *sel = malloc((size_t)sp.n_q * sel_k * sizeof(int));
    ds4_rng r;
    ds4_rng_seed(&r, 401);
    for (int i = 0; i < sp.n_q; i++) {
        int *s = sel + (size_t)i * sel_k;
        for (int j = 0; j < sp.n_kv; j++) s[j] = j;
        s[sp.n_kv] = -1; s[sp.n_kv + 1] = 3; s[sp.n_kv + 2] = -1;   /* unused slots, a duplicate */
        for (int j = sel_k - 1; j > 0; j--) {
            int u = (int)(ds4_rng_u64(&r) % (uint64_t)(j + 1)), x = s[j];
            s[j] = s[u]; s[u] = x;
        }
    }
    t.a.sel = sel;
    t.a.sel_k = sel_k;
    ds4_attention_forward(&t.a, sparse, NULL);
    for (size_t i = 0; i < no; i++)
        if (!(fabs(dense[i] - sparse[i]) <= 1e-6 + 1e-5 * fabs(dense[i])))
            fail_msg("sparse[%zu] %.7g dense %.7g", i, sparse[i], dense[i]);
    free(dense); free(sparse); free(sel);
    tcase_free(&t);
}

/* Queries before every key see nothing: output 0 (with or without sinks). */
static void test_no_visible_key(void **state) {
    (void)state;
    float q[2 * 8], k[3 * 8], v[3 * 8], out[2 * 8], lse[2], sinks[1] = {0.5f};
    for (int i = 0; i < 16; i++) q[i] = 1.0f + i;
    for (int i = 0; i < 24; i++) { k[i] = 0.1f * i; v[i] = 1.0f; }
    int qpos[2] = {0, 1}, kpos[3] = {2, 3, 4};
    ds4_attn a = {.n_q = 2, .q = q, .qpos = qpos, .n_kv = 3, .k = k, .v = v, .kpos = kpos,
                  .n_heads = 1, .n_kv_heads = 1, .head_dim = 8};
    for (int s = 0; s < 2; s++) {
        a.sinks = s ? sinks : NULL;
        for (int i = 0; i < 16; i++) out[i] = NAN;
        ds4_attention_forward(&a, out, lse);
        for (int i = 0; i < 16; i++) assert_true(out[i] == 0.0f);
        assert_true(s ? fabsf(lse[0] - 0.5f) < 1e-6f : lse[0] == -INFINITY);
    }
    /* no keys at all (empty cache): the same, forward and backward */
    a.n_kv = 0;
    a.kpos = NULL;
    for (int s = 0; s < 2; s++) {
        a.sinks = s ? sinks : NULL;
        for (int i = 0; i < 16; i++) out[i] = NAN;
        ds4_attention_forward(&a, out, lse);
        for (int i = 0; i < 16; i++) assert_true(out[i] == 0.0f);
        float dq[16] = {0}, ds[1] = {0}, dout[16];
        for (int i = 0; i < 16; i++) dout[i] = 1.0f;
        ds4_attention_backward(&a, out, lse, dout, dq, NULL, NULL, ds);
        for (int i = 0; i < 16; i++) assert_true(dq[i] == 0.0f);
        assert_true(ds[0] == 0.0f);   /* D = dout . out = 0 */
    }
    a.n_kv = 3;
    a.kpos = kpos;
    /* one visible key with value 1 and a sink: out = 1 * p_key */
    qpos[1] = 2;
    a.sinks = sinks;
    ds4_attention_forward(&a, out, lse);
    double s = 0;
    for (int e = 0; e < 8; e++) s += (double)q[8 + e] * k[e];
    s /= sqrt(8.0);
    double p = exp(s) / (exp(s) + exp(0.5));
    for (int e = 0; e < 8; e++) assert_true(fabs(out[8 + e] - p) < 1e-6);
}

/* ---- backward against finite differences of a double attention ------------- */

/* sum(R * attention(q, k, v, sinks)) in double, with the kernel's rules. */
static double dloss(const tcase *t, const double *q, const double *k, const double *v,
                    const double *sinks, const float *R) {
    const ds4_attn *a = &t->a;
    int H = a->n_heads, K = a->n_kv_heads, Dh = a->head_dim, G = H / K;
    double L = 0;
    char *cand = malloc(DS4_MAX(a->n_kv, 1));
    double *sc = malloc(DS4_MAX(a->n_kv, 1) * sizeof(double));
    for (int i = 0; i < a->n_q; i++) {
        for (int j = 0; j < a->n_kv; j++) cand[j] = a->sel ? 0 : 1;
        if (a->sel)
            for (int e = 0; e < a->sel_k; e++) {
                int j = a->sel[(size_t)i * a->sel_k + e];
                if (j >= 0) cand[j] = 1;
            }
        for (int j = 0; j < a->n_kv; j++) {
            long d = (long)a->qpos[i] - a->kpos[j];
            if (d < 0 || (a->window > 0 && d >= a->window)) cand[j] = 0;
        }
        for (int h = 0; h < H; h++) {
            double mx = sinks ? sinks[h] : -INFINITY, den = 0;
            for (int j = 0; j < a->n_kv; j++) {
                if (!cand[j]) continue;
                double x = 0;
                for (int e = 0; e < Dh; e++) x += q[((size_t)i * H + h) * Dh + e] * k[((size_t)j * K + h / G) * Dh + e];
                sc[j] = x / sqrt(Dh);
                mx = fmax(mx, sc[j]);
            }
            if (mx == -INFINITY) continue;
            if (sinks) den += exp(sinks[h] - mx);
            for (int j = 0; j < a->n_kv; j++) if (cand[j]) den += exp(sc[j] - mx);
            for (int j = 0; j < a->n_kv; j++) {
                if (!cand[j]) continue;
                double p = exp(sc[j] - mx) / den, pv = 0;
                for (int e = 0; e < Dh; e++) pv += R[((size_t)i * H + h) * Dh + e] * v[((size_t)j * K + h / G) * Dh + e];
                L += p * pv;
            }
        }
    }
    free(cand); free(sc);
    return L;
}

static double *to_double(const float *x, size_t n) {
    double *d = malloc(DS4_MAX(n, 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x ? x[i] : 0;
    return d;
}

/* Checks the gradient g (float, [n]) of one input against central
 * differences of dloss in double, h = 1e-5, on up to ~250 entries spread
 * over the array (every entry when it is small). */
static void fd_check(const char *what, const tcase *t, double *arrs[4], int which, size_t n,
                     const float *g, const float *R) {
    double *x = arrs[which];
    size_t step = n > 250 ? n / 250 : 1;
    for (size_t i = (step > 1 ? 7 % step : 0); i < n; i += step) {
        double s = x[i];
        x[i] = s + 1e-5;
        double lp = dloss(t, arrs[0], arrs[1], arrs[2], arrs[3], R);
        x[i] = s - 1e-5;
        double lm = dloss(t, arrs[0], arrs[1], arrs[2], arrs[3], R);
        x[i] = s;
        double fd = (lp - lm) / 2e-5;
        if (!(fabs(g[i] - fd) <= 2e-4 + 2e-3 * fabs(fd))) fail_msg("%s[%zu]: backward %.7g fd %.7g", what, i, g[i], fd);
    }
}

static void check_backward(const spec *sp, uint64_t seed) {
    tcase t;
    tcase_make(&t, sp, seed);
    int H = sp->H, K = sp->K, Dh = sp->Dh;
    size_t nq = (size_t)sp->n_q * H * Dh, nk = (size_t)sp->n_kv * K * Dh;
    ds4_rng r;
    ds4_rng_seed(&r, seed + 1);
    float *R = randv(&r, nq, 1.0f);
    float *out = malloc(nq * sizeof(float)), *lse = malloc((size_t)sp->n_q * H * sizeof(float));
    ds4_attention_forward(&t.a, out, lse);
    /* gradients start from known values: backward accumulates */
    float *dq = randv(&r, nq, 1), *dk = randv(&r, nk, 1), *dv = randv(&r, nk, 1), *ds = randv(&r, H, 1);
    float *dq0 = malloc(nq * sizeof(float)), *dk0 = malloc(nk * sizeof(float)), *dv0 = malloc(nk * sizeof(float)), ds0[64];
    memcpy(dq0, dq, nq * sizeof(float)); memcpy(dk0, dk, nk * sizeof(float)); memcpy(dv0, dv, nk * sizeof(float));
    memcpy(ds0, ds, H * sizeof(float));
    ds4_attention_backward(&t.a, out, lse, R, dq, dk, dv, ds);
    for (size_t i = 0; i < nq; i++) dq[i] -= dq0[i];
    for (size_t i = 0; i < nk; i++) { dk[i] -= dk0[i]; dv[i] -= dv0[i]; }
    for (int h = 0; h < H; h++) ds[h] -= ds0[h];

    /* same gradients with 1 and 3 threads, bit for bit */
    for (int nt = 1; nt <= 3; nt += 2) {
        float *eq = calloc(nq, sizeof(float)), *ek = calloc(nk, sizeof(float)), *ev = calloc(nk, sizeof(float));
        int saved = omp_get_max_threads();
        omp_set_num_threads(nt);
        ds4_attention_backward(&t.a, out, lse, R, eq, ek, ev, NULL);
        omp_set_num_threads(saved);
        for (size_t i = 0; i < nq; i++) assert_true(fabsf(eq[i] - dq[i]) <= 1e-5f * (1 + fabsf(dq[i])));
        for (size_t i = 0; i < nk; i++) assert_true(fabsf(ek[i] - dk[i]) <= 1e-5f * (1 + fabsf(dk[i])));
        if (nt == 1) {   /* deterministic regardless of the thread count */
            float *fq = calloc(nq, sizeof(float)), *fk = calloc(nk, sizeof(float)), *fv = calloc(nk, sizeof(float));
            omp_set_num_threads(3);
            ds4_attention_backward(&t.a, out, lse, R, fq, fk, fv, NULL);
            omp_set_num_threads(saved);
            assert_memory_equal(fq, eq, nq * sizeof(float));
            assert_memory_equal(fk, ek, nk * sizeof(float));
            assert_memory_equal(fv, ev, nk * sizeof(float));
            /* strided outputs (views into one [n, Q + 2 KD] buffer): same values, gaps untouched */
            size_t Q = (size_t)H * Dh, KD = (size_t)K * Dh, ld = Q + 2 * KD + 3;
            size_t nr = (size_t)DS4_MAX(sp->n_q, sp->n_kv);
            float *wb = malloc(nr * ld * sizeof(float));
            for (size_t i = 0; i < nr * ld; i++) wb[i] = 7.0f;
            for (size_t i = 0; i < nr; i++) {
                for (size_t e = 0; e < Q; e++) wb[i * ld + e] = 0.0f;
                for (size_t e = Q; e < Q + 2 * KD; e++) wb[i * ld + e] = 0.0f;
            }
            for (size_t i = (size_t)sp->n_q; i < nr; i++) for (size_t e = 0; e < Q; e++) wb[i * ld + e] = 7.0f;
            for (size_t i = (size_t)sp->n_kv; i < nr; i++) for (size_t e = Q; e < Q + 2 * KD; e++) wb[i * ld + e] = 7.0f;
            ds4_attention_backward_ld(&t.a, out, lse, R, wb, ld, wb + Q, wb + Q + KD, ld, NULL);
            for (size_t i = 0; i < nr; i++)
                for (size_t e = 0; e < ld; e++) {
                    float want = 7.0f;
                    if (e < Q && i < (size_t)sp->n_q) want = eq[i * Q + e];
                    else if (e >= Q && e < Q + KD && i < (size_t)sp->n_kv) want = ek[i * KD + e - Q];
                    else if (e >= Q + KD && e < Q + 2 * KD && i < (size_t)sp->n_kv) want = ev[i * KD + e - Q - KD];
                    assert_memory_equal(&wb[i * ld + e], &want, sizeof(float));
                }
            free(wb);
            free(fq); free(fk); free(fv);
        }
        free(eq); free(ek); free(ev);
    }

    double *arrs[4] = {to_double(t.q, nq), to_double(t.k, nk), to_double(t.v, nk),
                       t.sinks ? to_double(t.sinks, H) : NULL};
    fd_check("dq", &t, arrs, 0, nq, dq, R);
    fd_check("dk", &t, arrs, 1, nk, dk, R);
    fd_check("dv", &t, arrs, 2, nk, dv, R);
    if (t.sinks) fd_check("dsinks", &t, arrs, 3, H, ds, R);
    else for (int h = 0; h < H; h++) assert_true(ds[h] == 0.0f);
    for (int i = 0; i < 4; i++) free(arrs[i]);
    free(R); free(out); free(lse); free(dq); free(dk); free(dv); free(ds); free(dq0); free(dk0); free(dv0);
    tcase_free(&t);
}

static void test_backward_dense(void **state) {
    (void)state;
    spec cases[] = {
        {70, 70, 4, 2, 8, 0, 1, 0, 0, 0, 1},         /* crosses a 64-key tile, GQA, sinks */
        {70, 70, 2, 1, 16, 23, 1, 1, 0, 0, 2},       /* window, gaps, MQA */
        {5, 90, 4, 4, 12, 0, 0, 0, 1, 0, 1},         /* decode-like offset, Dh % 8 != 0 */
        {30, 30, 3, 1, 8, 0, 1, 0, 0, 0, 1},         /* G = 3 */
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) check_backward(&cases[c], 500 + c);
}

static void test_backward_sparse(void **state) {
    (void)state;
    spec cases[] = {
        {40, 40, 4, 2, 8, 0, 1, 0, 0, 12, 1},        /* random lists with -1 and duplicates */
        {40, 40, 2, 1, 16, 15, 1, 1, 0, 20, 1},      /* + window, gaps */
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) check_backward(&cases[c], 600 + c);
}

/* dk (or dv) alone still gets the right values. */
static void test_backward_partial_outputs(void **state) {
    (void)state;
    for (int sparse = 0; sparse <= 1; sparse++) {
        spec sp = {33, 33, 4, 2, 8, 0, 1, 0, 0, sparse ? 10 : 0, 1};
        tcase t;
        tcase_make(&t, &sp, 700 + sparse);
        size_t nq = (size_t)sp.n_q * sp.H * sp.Dh, nk = (size_t)sp.n_kv * sp.K * sp.Dh;
        ds4_rng r;
        ds4_rng_seed(&r, 9);
        float *R = randv(&r, nq, 1), *out = malloc(nq * sizeof(float)), *lse = malloc((size_t)sp.n_q * sp.H * sizeof(float));
        ds4_attention_forward(&t.a, out, lse);
        float *dk = calloc(nk, sizeof(float)), *dv = calloc(nk, sizeof(float));
        float *dk1 = calloc(nk, sizeof(float)), *dv1 = calloc(nk, sizeof(float));
        ds4_attention_backward(&t.a, out, lse, R, NULL, dk, dv, NULL);
        ds4_attention_backward(&t.a, out, lse, R, NULL, dk1, NULL, NULL);
        ds4_attention_backward(&t.a, out, lse, R, NULL, NULL, dv1, NULL);
        assert_memory_equal(dk, dk1, nk * sizeof(float));
        assert_memory_equal(dv, dv1, nk * sizeof(float));
        free(R); free(out); free(lse); free(dk); free(dv); free(dk1); free(dv1);
        tcase_free(&t);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_dense),
        cmocka_unit_test(test_forward_decode),
        cmocka_unit_test(test_forward_sparse),
        cmocka_unit_test(test_sparse_equals_dense),
        cmocka_unit_test(test_no_visible_key),
        cmocka_unit_test(test_backward_dense),
        cmocka_unit_test(test_backward_sparse),
        cmocka_unit_test(test_backward_partial_outputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
