/* test_model_prune.c — token pruning and indexed sparse attention on tiny
 * random models: the selection against a naive one, sparse == dense when
 * index_topk >= T, prune_ratio 0 == the unpruned model (bit for bit),
 * finite-difference gradients through the router gate and the indexer KL,
 * prefill == chunked prefill == token-by-token decode, KV bytes and cost. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/cost.h"
#include "model/forward.h"
#include "model/indexer.h"
#include "model/moe.h"
#include "model/prune.h"
#include "util/util.h"

/* ---- helpers -------------------------------------------------------------- */

static void base_config(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 53;
    c->hidden_size = 32;
    c->intermediate_size = 48;
    c->num_hidden_layers = 4;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = 8;
    c->max_position_embeddings = 128;
    c->tie_word_embeddings = 0;
}

static void set_prune(ds4_config *c, float r2, float r3) {
    c->n_prune_layers = 2;
    c->prune_layers[0] = 2; c->prune_ratio[0] = r2;
    c->prune_layers[1] = 3; c->prune_ratio[1] = r3;
}

static void set_indexer(ds4_config *c, int topk, int window) {
    c->index_n_heads = 2;
    c->index_head_dim = 8;
    c->index_topk = topk;
    c->sliding_window = window;
}

/* Random weights large enough for O(1) logits: N(0, std^2), norms 1 + N(0, 0.1^2). */
static ds4_model *make_model(const ds4_config *c, uint64_t seed, float std) {
    if (ds4_config_validate(c)) fail_msg("config: %s", ds4_error());
    ds4_model *m = ds4_model_create(c, seed);
    if (!m) fail_msg("model: %s", ds4_error());
    ds4_rng r;
    ds4_rng_seed(&r, seed + 77);
    for (int t = 0; t < m->layout.n_tensors; t++) {
        const ds4_tensor_info *ti = &m->layout.tensors[t];
        float *p = m->params + ti->offset;
        const int norm = strstr(ti->name, "norm") != NULL;
        for (size_t i = 0; i < ti->numel; i++) p[i] = norm ? 1.0f + 0.1f * ds4_rng_normal(&r) : std * ds4_rng_normal(&r);
    }
    return m;
}

/* Copy every tensor of src that dst has too (same name and size). */
static void copy_common(ds4_model *dst, const ds4_model *src) {
    for (int i = 0; i < dst->layout.n_tensors; i++) {
        const ds4_tensor_info *d = &dst->layout.tensors[i];
        const ds4_tensor_info *s = ds4_layout_find(&src->layout, d->name);
        if (s && s->numel == d->numel) memcpy(dst->params + d->offset, src->params + s->offset, d->numel * sizeof(float));
    }
}

static void random_ids(int *ids, int n, int V, uint64_t seed) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int)(ds4_rng_u64(&r) % (uint64_t)V);
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* A training batch of B sequences of T tokens (ids [B*T], targets [B*T]). */
typedef struct trainer {
    const ds4_model *m;
    int B, T;
    ds4_acts *acts;
    ds4_kv_cache *kv;
    int *tok, *seq, *tgt;
    float *grads;
    ds4_batch b;
} trainer;

static void trainer_init(trainer *t, const ds4_model *m, int B, int T, uint64_t seed) {
    t->m = m; t->B = B; t->T = T;
    const int n = B * T;
    t->acts = ds4_acts_create(&m->cfg, n, m->cfg.num_hidden_layers, 1);
    t->kv = ds4_kv_cache_create(&m->cfg, B, T);
    t->tok = malloc(sizeof(int) * n); t->seq = malloc(sizeof(int) * n); t->tgt = malloc(sizeof(int) * n);
    t->grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    assert_non_null(t->acts); assert_non_null(t->kv); assert_non_null(t->grads);
    random_ids(t->tok, n, m->cfg.vocab_size, seed);
    random_ids(t->tgt, n, m->cfg.vocab_size, seed + 1);
    for (int i = 0; i < n; i++) t->seq[i] = i / T;
    t->b = (ds4_batch){.n = n, .tokens = t->tok, .seq = t->seq};
}

static void trainer_free(trainer *t) {
    ds4_acts_free(t->acts);
    ds4_kv_cache_free(t->kv);
    free(t->tok); free(t->seq); free(t->tgt); free(t->grads);
}

/* Forward (+ backward into t->grads, zeroed first, when grads != 0). Returns
 * the objective LM mean + prune_loss_weight * sum of mean BCEs + sum of mean
 * KLs (KL only when the backward ran). */
static double trainer_run(trainer *t, int grads) {
    const ds4_config *c = &t->m->cfg;
    for (int s = 0; s < t->B; s++) ds4_kv_cache_reset_seq(t->kv, s);
    if (ds4_forward_impl(t->m, &t->b, t->kv, t->acts, NULL, 0, NULL) != 0) fail_msg("forward: %s", ds4_error());
    const int n = t->b.n;
    double loss = 0;
    if (!t->acts->indexer_warmup)
        loss = ds4_softmax_xent(t->acts->logits, t->acts->logits, t->tgt, n, c->vocab_size, 1.0f / n) / n;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (!t->acts->indexer_warmup && t->acts->l[l].prune_bce_n > 0)
            loss += c->prune_loss_weight * t->acts->l[l].prune_bce / t->acts->l[l].prune_bce_n;
        if (t->acts->l[l].seq && ds4_layer_is_moe(c, l))    /* MoE sequence-wise aux loss */
            loss += c->aux_loss_alpha * t->acts->l[l].balance;
    }
    if (grads) {
        memset(t->grads, 0, t->m->layout.n_floats * sizeof(float));
        if (ds4_backward(t->m, &t->b, t->kv, t->acts, t->acts->logits, t->grads) != 0) fail_msg("backward: %s", ds4_error());
        for (int l = 0; l < c->num_hidden_layers && c->index_topk > 0; l++)
            loss += t->acts->l[l].idx_kl / t->acts->l[l].idx_kl_n;
    }
    return loss;
}

/* ---- selection ---------------------------------------------------------------- */

static void test_topk_naive(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    const int N = 5000;
    float *v = malloc(sizeof(float) * N);
    void *scr = malloc(DS4_IDX_TOPK_SCRATCH(N));
    int *out = malloc(sizeof(int) * N);
    unsigned char *in = malloc(N);
    for (int trial = 0; trial < 60; trial++) {
        const int n = 1 + (int)(ds4_rng_u64(&r) % N), k = 1 + (int)(ds4_rng_u64(&r) % 300);
        const int levels = trial % 3 == 0 ? 7 : 1 << 20;   /* every third trial: heavy ties */
        for (int i = 0; i < n; i++) v[i] = (float)(ds4_rng_u64(&r) % (uint64_t)levels) - levels / 2;
        const int got = ds4_indexer_topk(v, n, k, out, scr);
        assert_int_equal(got, DS4_MIN(n, k));
        /* naive: repeatedly take the largest not yet taken, lowest index first */
        memset(in, 0, (size_t)n);
        for (int j = 0; j < DS4_MIN(n, k); j++) {
            int best = -1;
            for (int i = 0; i < n; i++)
                if (!in[i] && (best < 0 || v[i] > v[best])) best = i;
            in[best] = 1;
        }
        for (int j = 0; j < got; j++) {
            if (!in[out[j]]) fail_msg("trial %d (n %d k %d): index %d not in the naive top-k", trial, n, k, out[j]);
            if (j > 0 && out[j] <= out[j - 1]) fail_msg("trial %d: output not increasing", trial);
        }
    }
    free(v); free(scr); free(out); free(in);
}

/* ds4_indexer_select against scores computed naively in double and a naive
 * top-k + window, over keys with gaps in their positions (as after pruning). */
static void test_select_naive(void **state) {
    (void)state;
    ds4_config c;
    base_config(&c);
    set_indexer(&c, 24, 5);
    const int Hi = 2, Di = 8, nkv = 2600, nq = 40, sk = ds4_indexer_sel_k(&c);
    ds4_rng r;
    ds4_rng_seed(&r, 9);
    float *ik = malloc(sizeof(float) * nkv * Di), *iq = malloc(sizeof(float) * nq * Hi * Di);
    float *iw = malloc(sizeof(float) * nq * Hi), *I = malloc(sizeof(float) * nkv);
    int *kpos = malloc(sizeof(int) * nkv), *qpos = malloc(sizeof(int) * nq), *sel = malloc(sizeof(int) * nq * sk);
    for (int j = 0, p = 0; j < nkv; j++) { p += 1 + (int)(ds4_rng_u64(&r) % 3); kpos[j] = p; }
    for (int i = 0; i < nkv * Di; i++) ik[i] = ds4_rng_normal(&r);
    for (int j = 100; j < 140; j++) memcpy(ik + j * Di, ik + 99 * Di, sizeof(float) * Di);   /* equal scores */
    for (int i = 0; i < nq * Hi * Di; i++) iq[i] = ds4_rng_normal(&r);
    for (int i = 0; i < nq * Hi; i++) iw[i] = ds4_rng_normal(&r);
    for (int i = 0; i < nq; i++) qpos[i] = i < 5 ? kpos[3 * i] : kpos[nkv - 1] - (nq - 1 - i) * 97 + (i % 2);
    float *kb = calloc(ds4_indexer_keys_floats(nkv, Di), sizeof(float));      /* blocked layout */
    for (int j = 0; j < nkv; j++) ds4_indexer_key_put(kb, j, ik + j * Di, Di);
    assert_int_equal(ds4_indexer_select(&c, iq, iw, nq, qpos, kb, kpos, nkv, sel), 0);
    unsigned char *want = malloc(nkv);
    for (int i = 0; i < nq; i++) {
        int hi = 0;
        while (hi < nkv && kpos[hi] <= qpos[i]) hi++;
        ds4_indexer_scores(iq + i * Hi * Di, iw + i * Hi, Hi, Di, kb, hi, I);
        for (int j = 0; j < hi; j++) {     /* the scores themselves, naively in double */
            double s = 0;
            for (int h = 0; h < Hi; h++) {
                double z = 0;
                for (int d = 0; d < Di; d++) z += (double)iq[(i * Hi + h) * Di + d] * ik[j * Di + d];
                s += iw[i * Hi + h] * (z > 0 ? z : 0);
            }
            s /= sqrt((double)Di);
            if (fabs(s - I[j]) > 1e-5 * (1 + fabs(s))) fail_msg("score (%d, %d): %g vs naive %g", i, j, I[j], s);
        }
        memset(want, 0, nkv);
        if (hi <= c.index_topk) {
            for (int j = 0; j < hi; j++) want[j] = 1;
        } else {
            for (int t = 0; t < c.index_topk; t++) {
                int best = -1;
                for (int j = 0; j < hi; j++)
                    if (!want[j] && (best < 0 || I[j] > I[best])) best = j;
                want[best] = 1;
            }
            for (int j = 0; j < hi; j++)
                if (qpos[i] - kpos[j] < c.sliding_window) want[j] = 1;
        }
        int cnt = 0;
        for (int j = 0; j < nkv; j++) cnt += want[j];
        const int *s = sel + i * sk;
        int got = 0;
        for (int e = 0; e < sk; e++) {
            if (s[e] < 0) continue;
            got++;
            if (!want[s[e]]) fail_msg("query %d (pos %d, %d keys): key %d selected, naive says no", i, qpos[i], hi, s[e]);
        }
        assert_int_equal(got, cnt);
    }
    free(ik); free(kb); free(iq); free(iw); free(I); free(kpos); free(qpos); free(sel); free(want);
}

/* ---- equivalences ---------------------------------------------------------------- */

/* With index_topk >= T every query is dense: logits and gradients equal the
 * model without an indexer; with index_topk < T they must differ. */
static void test_sparse_equals_dense(void **state) {
    (void)state;
    const int T = 40;
    ds4_config cd, cs, cx;
    base_config(&cd);
    cd.attention_sinks = 1;
    cs = cd; set_indexer(&cs, 64, 0);
    cx = cd; set_indexer(&cx, 6, 0);
    ds4_model *md = make_model(&cd, 11, 0.25f), *ms = make_model(&cs, 12, 0.25f), *mx = make_model(&cx, 13, 0.25f);
    copy_common(ms, md);
    copy_common(mx, md);
    int ids[64];
    random_ids(ids, T, cd.vocab_size, 3);
    const size_t nl = (size_t)T * cd.vocab_size;
    float *ld = malloc(sizeof(float) * nl), *ls = malloc(sizeof(float) * nl), *lx = malloc(sizeof(float) * nl);
    assert_int_equal(ds4_forward_logits(md, ids, T, ld), 0);
    assert_int_equal(ds4_forward_logits(ms, ids, T, ls), 0);
    assert_int_equal(ds4_forward_logits(mx, ids, T, lx), 0);
    const float d_same = max_abs_diff(ld, ls, nl), d_sparse = max_abs_diff(ld, lx, nl);
    printf("  topk 64 >= T: max |diff| %.2e; topk 6 < T: %.2e\n", d_same, d_sparse);
    assert_true(d_same < 1e-5f);
    assert_true(d_sparse > 1e-2f);

    /* training gradients of the shared tensors agree too */
    trainer td, ts;
    trainer_init(&td, md, 2, 24, 5);
    trainer_init(&ts, ms, 2, 24, 5);
    const double a = trainer_run(&td, 1), b = trainer_run(&ts, 1);
    double worst = 0;
    for (int i = 0; i < md->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &md->layout.tensors[i];
        const ds4_tensor_info *u = ds4_layout_find(&ms->layout, t->name);
        assert_non_null(u);
        double mx_ = 0;
        for (size_t k = 0; k < t->numel; k++) mx_ = fmax(mx_, fabs(td.grads[t->offset + k]));
        worst = fmax(worst, max_abs_diff(td.grads + t->offset, ts.grads + u->offset, t->numel) / fmax(mx_, 1e-6));
    }
    printf("  training: LM %.6f vs %.6f (+KL), worst grad rel diff %.2e\n", a, b, worst);
    assert_true(worst < 1e-4);
    trainer_free(&td); trainer_free(&ts);
    free(ld); free(ls); free(lx);
    ds4_model_free(md); ds4_model_free(ms); ds4_model_free(mx);
}

/* A pruned layer with ratio 0 is the unpruned layer: bit-for-bit logits and gradients. */
static void test_ratio_zero_is_unpruned(void **state) {
    (void)state;
    ds4_config a, z;
    base_config(&a);
    z = a;
    set_prune(&z, 0.0f, 0.0f);
    ds4_model *ma = make_model(&a, 21, 0.25f), *mz = make_model(&z, 22, 0.25f);
    assert_int_equal(ma->layout.n_floats, mz->layout.n_floats);   /* no router tensors */
    memcpy(mz->params, ma->params, ma->layout.n_floats * sizeof(float));
    const int T = 33;
    int ids[64];
    random_ids(ids, T, a.vocab_size, 4);
    const size_t nl = (size_t)T * a.vocab_size;
    float *la = malloc(sizeof(float) * nl), *lz = malloc(sizeof(float) * nl);
    assert_int_equal(ds4_forward_logits(ma, ids, T, la), 0);
    assert_int_equal(ds4_forward_logits(mz, ids, T, lz), 0);
    assert_memory_equal(la, lz, nl * sizeof(float));
    trainer ta, tz;
    trainer_init(&ta, ma, 2, 16, 8);
    trainer_init(&tz, mz, 2, 16, 8);
    assert_true(trainer_run(&ta, 1) == trainer_run(&tz, 1));
    assert_memory_equal(ta.grads, tz.grads, ma->layout.n_floats * sizeof(float));
    /* and a real ratio changes the result (the test can fail) */
    ds4_config p = a;
    set_prune(&p, 0.3f, 0.5f);
    ds4_model *mp = make_model(&p, 23, 0.25f);
    copy_common(mp, ma);
    assert_int_equal(ds4_forward_logits(mp, ids, T, lz), 0);
    assert_true(max_abs_diff(la, lz, nl) > 1e-3f);
    trainer_free(&ta); trainer_free(&tz);
    free(la); free(lz);
    ds4_model_free(ma); ds4_model_free(mz); ds4_model_free(mp);
}

/* ---- finite differences --------------------------------------------------------- */

typedef struct fd_target { const char *name; int count; } fd_target;

/* Central differences of the objective against the backward, for `count`
 * entries of each named tensor. Entries whose perturbation changes a discrete
 * choice (the kept set or, with the indexer, the key lists) are skipped. */
static void fd_check(trainer *t, ds4_model *m, const fd_target *tg, int ntg, float eps, int *checked) {
    const ds4_config *c = &m->cfg;
    const int L = c->num_hidden_layers, n = t->b.n, sk = ds4_indexer_sel_k(c);
    trainer_run(t, 1);
    float *g = malloc(m->layout.n_floats * sizeof(float));
    memcpy(g, t->grads, m->layout.n_floats * sizeof(float));
    /* the discrete choices of the base point */
    int *kid = malloc(sizeof(int) * (size_t)L * n), *nks = malloc(sizeof(int) * L);
    int *sel = sk ? malloc(sizeof(int) * (size_t)L * n * sk) : NULL;
    const int ke = c->n_routed_experts > 0 ? ds4_moe_k(c) : 0;
    int *ex = ke ? malloc(sizeof(int) * (size_t)L * n * ke) : NULL;     /* MoE expert choices */
    for (int l = 0; l < L; l++) {
        if (ex && t->acts->l[l].experts) memcpy(ex + (size_t)l * n * ke, t->acts->l[l].experts, sizeof(int) * (size_t)t->acts->l[l].nk * ke);
        nks[l] = t->acts->l[l].nk;
        if (t->acts->l[l].kidx) memcpy(kid + (size_t)l * n, t->acts->l[l].kidx, sizeof(int) * nks[l]);
        if (sel) memcpy(sel + (size_t)l * n * sk, t->acts->l[l].sel, sizeof(int) * (size_t)nks[l] * sk);
    }
    ds4_rng r;
    ds4_rng_seed(&r, 31);
    for (int k = 0; k < ntg; k++) {
        const ds4_tensor_info *ti = ds4_layout_find(&m->layout, tg[k].name);
        if (!ti) fail_msg("no tensor %s", tg[k].name);
        double worst = 0;
        for (int e = 0; e < tg[k].count; e++) {
            const size_t idx = tg[k].count >= (int)ti->numel ? (size_t)e : (size_t)(ds4_rng_u64(&r) % ti->numel);
            if (idx >= ti->numel) break;
            float *p = m->params + ti->offset + idx;
            const float p0 = *p;
            double f[2];
            int same = 1;
            for (int sgn = 0; sgn < 2; sgn++) {
                *p = p0 + (sgn ? -eps : eps);
                f[sgn] = trainer_run(t, 1);
                for (int l = 0; l < L; l++) {
                    const ds4_layer_acts *A = &t->acts->l[l];
                    if (A->nk != nks[l]) same = 0;
                    else if (A->kidx && memcmp(A->kidx, kid + (size_t)l * n, sizeof(int) * nks[l])) same = 0;
                    else if (sel && memcmp(A->sel, sel + (size_t)l * n * sk, sizeof(int) * (size_t)nks[l] * sk)) same = 0;
                    else if (ex && A->experts && memcmp(A->experts, ex + (size_t)l * n * ke, sizeof(int) * (size_t)nks[l] * ke))
                        same = 0;
                }
            }
            *p = p0;
            if (!same) continue;
            const double fd = (f[0] - f[1]) / (2.0 * eps), an = g[ti->offset + idx];
            const double err = fabs(fd - an) / (1e-3 + fabs(an));
            worst = fmax(worst, err);
            if (fabs(fd - an) > 2e-3 + 3e-2 * fabs(an))
                fail_msg("%s[%zu]: finite difference %.6g, backward %.6g", tg[k].name, idx, fd, an);
            (*checked)++;
        }
        printf("  %-48s worst rel err %.2e\n", tg[k].name, worst);
    }
    trainer_run(t, 1);
    free(g); free(kid); free(nks); free(sel); free(ex);
}

/* The router is on the gradient path through the gate g = sigmoid(r), and its
 * BCE towards top-k membership adds to it. */
static void test_fd_router_gate(void **state) {
    (void)state;
    ds4_config c;
    base_config(&c);
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 3;
    c.n_prune_layers = 2;
    c.prune_layers[0] = 1; c.prune_ratio[0] = 0.3f;
    c.prune_layers[1] = 2; c.prune_ratio[1] = 0.45f;
    c.prune_loss_weight = 0.5f;
    c.attention_sinks = 1;
    ds4_model *m = make_model(&c, 41, 0.3f);
    trainer t;
    trainer_init(&t, m, 2, 12, 6);
    const fd_target tg[] = {
        {"model.layers.1.prune_router.weight", 16}, {"model.layers.2.prune_router.weight", 16},
        {"model.layers.1.input_layernorm.weight", 8}, {"model.layers.2.self_attn.q_proj.weight", 8},
        {"model.layers.2.mlp.down_proj.weight", 8}, {"model.layers.1.self_attn.sinks", 4},
        {"model.embed_tokens.weight", 12},
    };
    int checked = 0;
    fd_check(&t, m, tg, (int)(sizeof tg / sizeof tg[0]), 2e-3f, &checked);
    printf("  %d entries checked\n", checked);
    assert_true(checked >= 50);
    /* without the BCE the router still learns, through the gate alone */
    m->cfg.prune_loss_weight = 0;
    trainer_run(&t, 1);
    const ds4_tensor_info *ti = ds4_layout_find(&m->layout, "model.layers.2.prune_router.weight");
    double gn = 0;
    for (size_t i = 0; i < ti->numel; i++) gn += fabs(t.grads[ti->offset + i]);
    assert_true(gn > 1e-4);
    trainer_free(&t);
    ds4_model_free(m);
}

/* The indexer's KL loss: dense (warm-up) and over the selected keys. */
static void test_fd_indexer_kl(void **state) {
    (void)state;
    ds4_config c;
    base_config(&c);
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 2;
    set_indexer(&c, 4, 2);
    c.n_prune_layers = 1;
    c.prune_layers[0] = 1; c.prune_ratio[0] = 0.25f;
    ds4_model *m = make_model(&c, 51, 0.3f);
    trainer t;
    trainer_init(&t, m, 2, 12, 7);
    const fd_target tg[] = {
        {"model.layers.0.self_attn.indexer.wq.weight", 8}, {"model.layers.1.self_attn.indexer.wk.weight", 8},
        {"model.layers.0.self_attn.indexer.k_norm.weight", 6}, {"model.layers.1.self_attn.indexer.weights_proj.weight", 8},
    };
    int checked = 0;
    t.acts->indexer_warmup = 1;
    printf(" warm-up (dense KL):\n");
    fd_check(&t, m, tg, 4, 2e-3f, &checked);
    assert_true(checked >= 25);
    t.acts->indexer_warmup = 0;
    checked = 0;
    printf(" sparse (KL over the selected keys):\n");
    fd_check(&t, m, tg, 4, 2e-3f, &checked);
    printf("  %d entries checked\n", checked);
    assert_true(checked >= 15);
    trainer_free(&t);
    ds4_model_free(m);
}

/* A pruned MoE layer: the experts, the routing weights and the sequence-wise
 * aux loss see only the kept rows (with their own sequences). */
static void test_fd_pruned_moe(void **state) {
    (void)state;
    ds4_config c;
    base_config(&c);
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.n_routed_experts = 8;
    c.n_shared_experts = 1;
    c.moe_intermediate_size = 16;
    c.n_group = 4;
    c.topk_group = 2;
    c.topk_per_group = 1;
    c.num_experts_per_tok = 2;
    c.aux_loss_alpha = 0.1f;
    c.n_prune_layers = 1;
    c.prune_layers[0] = 1; c.prune_ratio[0] = 0.3f;
    ds4_model *m = make_model(&c, 71, 0.3f);
    trainer t;
    trainer_init(&t, m, 2, 12, 9);
    for (int l = 0; l < 2; l++) t.acts->l[l].seq = t.seq;     /* the training hook of step.c */
    const fd_target tg[] = {
        {"model.layers.1.prune_router.weight", 10}, {"model.layers.1.mlp.gate.weight", 10},
        {"model.layers.1.mlp.experts.3.up_proj.weight", 6}, {"model.layers.1.input_layernorm.weight", 6},
    };
    int checked = 0;
    fd_check(&t, m, tg, 4, 2e-3f, &checked);
    printf("  %d entries checked, layer 1 kept %d of %d rows\n", checked, t.acts->l[1].nk, t.b.n);
    /* its balance statistic is over the kept rows, grouped by their own sequences */
    const ds4_layer_acts *A = &t.acts->l[1];
    int kseq[64];
    for (int j = 0; j < A->nk; j++) kseq[j] = t.seq[A->kidx[j]];
    const double want = ds4_moe_balance_stat(&c, A->scores, A->experts, kseq, A->nk);
    printf("  balance of the pruned MoE layer %.6f (recomputed %.6f)\n", A->balance, want);
    assert_true(fabs(A->balance - want) < 1e-6);
    assert_true(checked >= 20);
    assert_true(t.acts->l[1].nk < t.b.n);
    trainer_free(&t);
    ds4_model_free(m);
}

/* ---- inference paths ------------------------------------------------------------ */

/* Pruning + indexer + window + sinks + GQA: one prefill of two sequences,
 * chunked prefill, and token-by-token decode give the same logits, keep the
 * same tokens per layer, and the pruned layers' caches hold only kept rows. */
static void test_prefill_decode(void **state) {
    (void)state;
    ds4_config c;
    base_config(&c);
    set_prune(&c, 0.2f, 0.4f);
    set_indexer(&c, 6, 3);
    c.attention_sinks = 1;
    ds4_model *m = make_model(&c, 61, 0.25f);
    const int T0 = 50, T1 = 37, V = c.vocab_size, L = c.num_hidden_layers;
    int ids[100], seq[100];
    random_ids(ids, T0 + T1, V, 12);
    for (int i = 0; i < T0 + T1; i++) seq[i] = i < T0 ? 0 : 1;
    float *full = malloc(sizeof(float) * (T0 + T1) * V), *one = malloc(sizeof(float) * V);
    ds4_kv_cache *kp = ds4_kv_cache_create(&c, 2, 64), *kd = ds4_kv_cache_create(&c, 2, 64), *kc = ds4_kv_cache_create(&c, 2, 64);
    ds4_batch b = {.n = T0 + T1, .tokens = ids, .seq = seq};
    assert_int_equal(ds4_forward(m, &b, kp, NULL, 0, full), 0);
    /* decode both sequences token by token, interleaved in one batch when both run */
    float dmax = 0;
    for (int t = 0; t < T0; t++) {
        int tk[2] = {ids[t], t < T1 ? ids[T0 + t] : 0}, sq[2] = {0, 1}, rows[2] = {0, 1};
        float lg[2 * 64];
        ds4_batch d = {.n = t < T1 ? 2 : 1, .tokens = tk, .seq = sq};
        assert_int_equal(ds4_forward(m, &d, kd, rows, d.n, lg), 0);
        dmax = fmaxf(dmax, max_abs_diff(lg, full + (size_t)t * V, V));
        if (t < T1) dmax = fmaxf(dmax, max_abs_diff(lg + V, full + (size_t)(T0 + t) * V, V));
    }
    /* chunked prefill of sequence 0 in chunks of 7 */
    float cmax = 0;
    for (int t0 = 0; t0 < T0; t0 += 7) {
        const int nn = DS4_MIN(7, T0 - t0);
        int sq[7] = {0}, last = nn - 1;
        ds4_batch d = {.n = nn, .tokens = ids + t0, .seq = sq};
        assert_int_equal(ds4_forward(m, &d, kc, &last, 1, one), 0);
        cmax = fmaxf(cmax, max_abs_diff(one, full + (size_t)(t0 + nn - 1) * V, V));
    }
    printf("  decode max |diff| %.2e, chunked prefill %.2e\n", dmax, cmax);
    assert_true(dmax < 1e-4f);
    assert_true(cmax < 1e-4f);
    for (int l = 0; l < L; l++) {
        printf("  layer %d: kept %d/%d and %d/%d rows (prefill), counters %lld/%lld kept, agreement %lld/%lld\n", l,
               kp->len[l][0], T0, kp->len[l][1], T1, (long long)kp->prune[l].kept, (long long)kp->prune[l].tokens,
               (long long)kp->prune[l].agree, (long long)kp->prune[l].scored);
        for (int s = 0; s < 2; s++) {
            assert_int_equal(kp->len[l][s], kd->len[l][s]);
            for (int j = 0; j < kp->len[l][s]; j++) assert_int_equal(kp->pos[l][s * 64 + j], kd->pos[l][s * 64 + j]);
        }
        assert_int_equal(kp->len[l][0], kc->len[l][0]);
        if (ds4_prune_ratio(&c, l) > 0) {
            assert_true(kp->len[l][0] < T0);                     /* some tokens dropped */
            assert_true(kp->len[l][0] > 0);
            assert_int_equal(kp->prune[l].kept, kp->len[l][0] + kp->len[l][1]);
            assert_int_equal(kp->prune[l].kept, kd->prune[l].kept);
            assert_int_equal(kp->prune[l].scored, T0 + T1 - 2);   /* whole sequences: all but position 0 */
            assert_int_equal(kd->prune[l].scored, 0);             /* decode cannot know top-k membership */
        } else {
            assert_int_equal(kp->len[l][0], T0);
        }
    }
    /* ds4_prune_eval over sequence 0 as one window: the same decisions as the prefill */
    ds4_prune_counts pc[DS4_MAX_LAYERS];
    assert_int_equal(ds4_prune_eval(m, ids, T0, T0, pc), 0);
    for (int l = 0; l < L; l++) {
        assert_int_equal(pc[l].kept, ds4_prune_ratio(&c, l) > 0 ? kp->len[l][0] : 0);
        assert_int_equal(pc[l].tokens, ds4_prune_ratio(&c, l) > 0 ? T0 : 0);
        assert_int_equal(pc[l].scored, ds4_prune_ratio(&c, l) > 0 ? T0 - 1 : 0);
    }
    /* ds4_prune_eval_loss over sequence 0 (one window of T0 - 1 tokens predicting the next): the
     * cross-entropy of the prefill's logits, and the prefill's keep decisions on those tokens */
    double loss = 0, ref = 0;
    long predicted = 0;
    assert_int_equal(ds4_prune_eval_loss(m, ids, T0, T0, pc, &loss, &predicted), 0);
    assert_int_equal(predicted, T0 - 1);
    for (int t = 0; t < T0 - 1; t++) {
        const float *row = full + (size_t)t * V;
        double mx = row[0], sum = 0;
        for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
        for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
        ref += mx + log(sum) - row[ids[t + 1]];
    }
    ref /= T0 - 1;
    printf("  ds4_prune_eval_loss %.6f, from the prefill logits %.6f\n", loss, ref);
    assert_true(fabs(loss - ref) < 1e-5);
    for (int l = 0; l < L; l++) {
        if (ds4_prune_ratio(&c, l) <= 0) continue;
        int kept = 0;
        for (int j = 0; j < kp->len[l][0]; j++) kept += kp->pos[l][j] < T0 - 1;
        assert_int_equal(pc[l].kept, kept);
        assert_int_equal(pc[l].tokens, T0 - 1);
    }
    /* KV bytes: exactly the kept rows, and the cost model agrees given the keep fractions */
    size_t rows = 0;
    double keep[DS4_MAX_LAYERS];
    for (int l = 0; l < L; l++) {
        rows += (size_t)kp->len[l][0];
        keep[l] = (double)kp->len[l][0] / T0;
    }
    ds4_kv_cache_reset_seq(kp, 1);
    const size_t row_bytes = (2 * (size_t)c.num_key_value_heads * c.head_dim + c.index_head_dim) * sizeof(float);
    assert_int_equal(ds4_kv_cache_bytes_used(kp), rows * row_bytes);
    ds4_cost cost;
    ds4_cost_layers(&c, T0, keep, NULL, &cost);
    assert_true(fabs(cost.kv_bytes * T0 - (double)rows * row_bytes) < 1e-6 * rows * row_bytes);
    free(full); free(one);
    ds4_kv_cache_free(kp); ds4_kv_cache_free(kd); ds4_kv_cache_free(kc);
    ds4_model_free(m);
}

/* ---- small pieces ------------------------------------------------------------------ */

static void test_rules_and_bce(void **state) {
    (void)state;
    assert_int_equal(ds4_prune_keep_count(0.3f, 10), 7);
    assert_int_equal(ds4_prune_keep_count(0.3f, 256), 180);     /* ceil(179.2) */
    assert_int_equal(ds4_prune_keep_count(0.5f, 1), 1);
    const float r[6] = {0.5f, -1.0f, 2.0f, 2.0f, -3.0f, 0.1f};
    const int pos[6] = {0, 1, 2, 3, 4, 5}, pos1[6] = {7, 8, 9, 10, 11, 12};
    unsigned char keep[6];
    ds4_prune_topk(r, pos, 6, 0.5f, keep);                       /* 3 kept: position 0 + the two 2.0s */
    const unsigned char want[6] = {1, 0, 1, 1, 0, 0};
    assert_memory_equal(keep, want, 6);
    ds4_prune_topk(r, pos1, 6, 0.7f, keep);                      /* 2 kept, no position 0: ties to the earlier */
    const unsigned char want1[6] = {0, 0, 1, 1, 0, 0};
    assert_memory_equal(keep, want1, 6);
    ds4_prune_topk(r, pos1, 6, 0.8f, keep);                      /* 2 of 6 (ceil 1.2) */
    assert_memory_equal(keep, want1, 6);
    assert_true(ds4_prune_causal_keep(-5.0f, 0) && ds4_prune_causal_keep(0.01f, 3) && !ds4_prune_causal_keep(0.0f, 3));
    /* BCE against its definition, including large |r| */
    const float rr[4] = {0.3f, -2.0f, 40.0f, -40.0f}, y[4] = {1, 0, 0, -1};
    float dr[4] = {0};
    int cnt;
    double l = ds4_prune_bce(rr, y, 4, dr, 2.0f, &cnt);
    const double r0 = rr[0];
    double want_l = -log(1 / (1 + exp(-r0))) - log(1 - 1 / (1 + exp(2.0))) + 40.0;
    assert_int_equal(cnt, 3);
    assert_true(fabs(l - want_l) < 1e-9);
    assert_true(fabs(dr[0] - 2 * (1 / (1 + exp(-r0)) - 1)) < 1e-6 && dr[3] == 0.0f && fabs(dr[2] - 2.0f) < 1e-6);
    /* default schedule: nothing in the first half, linear ramp to the max in the last layer */
    ds4_config c;
    base_config(&c);
    c.num_hidden_layers = 8;
    c.first_k_dense_replace = 8;
    ds4_prune_default_schedule(&c, 0.3f);
    assert_int_equal(c.n_prune_layers, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(c.prune_layers[i], 4 + i);
        assert_true(fabsf(c.prune_ratio[i] - 0.075f * (i + 1)) < 1e-6f);
    }
    assert_int_equal(ds4_config_validate(&c), 0);
}

/* Cost: a pruned layer costs keep x its dense cost plus the router; an
 * indexed layer attends to index_topk (+ window) keys once the context is longer. */
static void test_cost(void **state) {
    (void)state;
    ds4_config a, p;
    base_config(&a);
    p = a;
    set_prune(&p, 0.25f, 0.5f);
    set_indexer(&p, 16, 4);
    const double ctx = 1000, D = a.hidden_size, Q = 32, KD = 16, F = a.intermediate_size;
    ds4_layer_cost la[4], lp[4];
    ds4_cost ca, cp;
    ds4_cost_layers(&a, ctx, NULL, la, &ca);
    ds4_cost_layers(&p, ctx, NULL, lp, &cp);
    const double dense_layer = 2 * (2 * D * Q + 2 * D * KD) + 4 * ctx * Q + 6 * D * F;
    assert_true(fabs(la[0].total - dense_layer) < 1e-6);
    assert_true(fabs(ca.total - (4 * dense_layer + 2 * D * a.vocab_size)) < 1e-6);
    assert_true(fabs(ca.kv_bytes - 4 * 2 * KD * 4) < 1e-9);
    const double idx_proj = 2 * (D * (2 * 8 + 8 + 2) + 8);
    for (int l = 0; l < 4; l++) {
        const double keep = l == 2 ? 0.75 : l == 3 ? 0.5 : 1.0;
        assert_true(fabs(lp[l].keep - keep) < 1e-12);
        assert_true(fabs(lp[l].attended - (16 + keep * 4)) < 1e-9);
        const double want = keep * (2 * (2 * D * Q + 2 * D * KD) + 4 * (16 + keep * 4) * Q + 6 * D * F + idx_proj
                                     + 2 * (2 * 8 + 2) * keep * ctx) + (l >= 2 ? 2 * D : 0);
        assert_true(fabs(lp[l].total - want) < 1e-6 * want);
        assert_true(fabs(lp[l].kv_bytes - keep * (2 * KD + 8) * 4) < 1e-9);
    }
    /* short context: dense */
    ds4_cost_layers(&p, 10, NULL, lp, &cp);
    assert_true(fabs(lp[0].attended - 10) < 1e-12 && fabs(lp[3].attended - 5) < 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_and_bce),
        cmocka_unit_test(test_topk_naive),
        cmocka_unit_test(test_select_naive),
        cmocka_unit_test(test_sparse_equals_dense),
        cmocka_unit_test(test_ratio_zero_is_unpruned),
        cmocka_unit_test(test_fd_router_gate),
        cmocka_unit_test(test_fd_indexer_kl),
        cmocka_unit_test(test_fd_pruned_moe),
        cmocka_unit_test(test_prefill_decode),
        cmocka_unit_test(test_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
