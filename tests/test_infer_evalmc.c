/* test_infer_evalmc.c — multiple-choice scoring: the batched, prefix-shared
 * scorer equals a direct log-softmax sum over ds4_forward_logits of the whole
 * sequence (dense, MoE, pruned + indexed + windowed models), picks an answer
 * made overwhelmingly likely by construction, the text path (template, file
 * loading, truncation, accuracy) and loader errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "infer/evalh.h"
#include "testmodel.h"

enum { V_DENSE, V_MOE, V_SPARSE, N_VARIANTS };

static ds4_model *tiny_model(int variant, int vocab, int maxpos, uint64_t seed) {
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = vocab;
    c.hidden_size = 32; c.intermediate_size = 48; c.moe_intermediate_size = 16;
    c.num_hidden_layers = 3; c.num_attention_heads = 4; c.num_key_value_heads = 2; c.head_dim = 8;
    c.max_position_embeddings = maxpos;
    c.first_k_dense_replace = 3;
    if (variant == V_MOE) {
        c.first_k_dense_replace = 1;
        c.n_routed_experts = 8; c.n_shared_experts = 1; c.num_experts_per_tok = 2;
        c.n_group = 4; c.topk_group = 2; c.topk_per_group = 1;
    } else if (variant == V_SPARSE) {                 /* pruning, indexer, window, sinks */
        c.n_prune_layers = 2;
        c.prune_layers[0] = 1; c.prune_ratio[0] = 0.2f;
        c.prune_layers[1] = 2; c.prune_ratio[1] = 0.3f;
        c.index_n_heads = 2; c.index_head_dim = 8; c.index_topk = 4;
        c.sliding_window = 3;
        c.attention_sinks = 1;
    }
    if (ds4_config_validate(&c)) fail_msg("config %d: %s", variant, ds4_error());
    ds4_model *m = ds4_model_create(&c, seed);
    if (!m) fail_msg("model: %s", ds4_error());
    tiny_randomize(m, seed + 1000);
    return m;
}

/* Reference: sum_j log softmax(logits of the whole sequence)[row n_ctx-1+j][choice[j]],
 * computed naively in double from one ds4_forward_logits call over ctx + choice. */
static double direct_ll(const ds4_model *m, const int *ctx, int n_ctx, const int *ch, int len) {
    int V = m->cfg.vocab_size, T = n_ctx + len - 1;
    int *ids = malloc((size_t)(n_ctx + len) * sizeof *ids);
    float *lg = malloc((size_t)T * V * sizeof *lg);      /* [T, V] */
    memcpy(ids, ctx, (size_t)n_ctx * sizeof *ids);
    memcpy(ids + n_ctx, ch, (size_t)len * sizeof *ids);
    assert_int_equal(ds4_forward_logits(m, ids, T, lg), 0);
    double ll = 0;
    for (int j = 0; j < len; j++) {
        const float *row = lg + (size_t)(n_ctx - 1 + j) * V;
        double z = 0;
        for (int v = 0; v < V; v++) z += exp((double)row[v]);
        ll += (double)row[ch[j]] - log(z);
    }
    free(ids);
    free(lg);
    return ll;
}

/* The scorer (context once, slot copies, one batched call) equals the direct
 * computation within 1e-4 for every variant, choice lengths 1..5. */
static void test_scorer_equals_direct(void **st) {
    (void)st;
    for (int variant = 0; variant < N_VARIANTS; variant++) {
        ds4_model *m = tiny_model(variant, 97, 64, 11 + variant);
        ds4_mc_scorer *s = ds4_mc_scorer_create(m, 5, 40);
        assert_non_null(s);
        ds4_rng r;
        ds4_rng_seed(&r, 5 + variant);
        for (int q = 0; q < 3; q++) {
            int n_ctx = 3 + q * 5;                       /* 3, 8, 13: dense and sparse regimes */
            int ctx[16], chs[5][6], len[5];
            const int *cp[5];
            for (int i = 0; i < n_ctx; i++) ctx[i] = (int)(ds4_rng_u64(&r) % 97);
            int K = 3 + q % 3;
            for (int c = 0; c < K; c++) {
                len[c] = 1 + (c + q) % 5;
                for (int j = 0; j < len[c]; j++) chs[c][j] = (int)(ds4_rng_u64(&r) % 97);
                cp[c] = chs[c];
            }
            double ll[5];
            assert_int_equal(ds4_mc_score_tokens(s, ctx, n_ctx, cp, len, K, ll), 0);
            for (int c = 0; c < K; c++) {
                double want = direct_ll(m, ctx, n_ctx, chs[c], len[c]);
                if (fabs(ll[c] - want) > 1e-4)
                    fail_msg("variant %d q %d choice %d (len %d): scorer %.8f direct %.8f", variant, q,
                             c, len[c], ll[c], want);
            }
        }
        /* errors, not crashes */
        int one = 1, *onep = &one, zero = 0;
        double ll[6];
        assert_int_equal(ds4_mc_score_tokens(s, &one, 1, (const int *const *)&onep, &zero, 1, ll), -1);
        int big = 1000;
        int *bigp = &big;
        assert_int_equal(ds4_mc_score_tokens(s, &one, 1, (const int *const *)&bigp, &one, 1, ll), -1);
        assert_non_null(strstr(ds4_error(), "vocabulary"));
        ds4_mc_scorer_free(s);
        ds4_model_free(m);
    }
}

/* Sharpen the model (lm_head x 8), take the greedy continuation of a context
 * as the right choice and random other tokens as the wrong ones: the scorer
 * must pick it by both scores, by a wide margin. */
static void test_picks_constructed_answer(void **st) {
    (void)st;
    ds4_model *m = tiny_model(V_DENSE, 97, 64, 42);
    int V = 97, D = m->cfg.hidden_size;
    for (size_t i = 0; i < (size_t)V * D; i++) m->w.lm_head[i] *= 8.0f;
    ds4_rng r;
    ds4_rng_seed(&r, 9);
    int correct = 0, trials = 8;
    for (int t = 0; t < trials; t++) {
        int ids[32], n_ctx = 6, L = 4;
        for (int i = 0; i < n_ctx; i++) ids[i] = (int)(ds4_rng_u64(&r) % V);
        float *lg = malloc((size_t)(n_ctx + L) * V * sizeof *lg);
        for (int j = 0; j < L; j++) {                    /* greedy, one token at a time */
            int T = n_ctx + j;
            assert_int_equal(ds4_forward_logits(m, ids, T, lg), 0);
            const float *row = lg + (size_t)(T - 1) * V;
            int b = 0;
            for (int v = 1; v < V; v++) if (row[v] > row[b]) b = v;
            ids[T] = b;
        }
        free(lg);
        int right = (int)(ds4_rng_u64(&r) % 4), chs[4][4];
        const int *cp[4];
        int len[4] = {L, L, L, L};
        for (int c = 0; c < 4; c++) {
            for (int j = 0; j < L; j++) {
                if (c == right) chs[c][j] = ids[n_ctx + j];
                else do chs[c][j] = (int)(ds4_rng_u64(&r) % V); while (chs[c][j] == ids[n_ctx + j]);
            }
            cp[c] = chs[c];
        }
        ds4_mc_scorer *s = ds4_mc_scorer_create(m, 4, 16);
        double ll[4];
        assert_int_equal(ds4_mc_score_tokens(s, ids, n_ctx, cp, len, 4, ll), 0);
        ds4_mc_scorer_free(s);
        int best = 0;
        for (int c = 1; c < 4; c++) if (ll[c] > ll[best]) best = c;
        correct += best == right;
        for (int c = 0; c < 4; c++)
            if (c != right) assert_true(ll[right] > ll[c] + 5.0);   /* overwhelming, not a coin flip */
    }
    assert_int_equal(correct, trials);
    ds4_model_free(m);
}

/* ---- text path ---- */

static const char CORPUS[] =
    "Question: what is the colour of the sky?\nAnswer: blue. the sky is blue and the grass is green.\n"
    "Question: how many legs does a cat have?\nAnswer: four. a cat has four legs and a tail.\n"
    "one two three four five six seven eight nine ten. the cat sat on the mat.\n";

typedef struct { int n; double ll[8][DS4_MC_MAX_CHOICES]; int pred[8], pred_mean[8], cut[8]; } seen;

static void on_item(int index, const ds4_mc_item *it, const ds4_mc_item_result *r, void *user) {
    seen *s = user;
    assert_int_equal(index, s->n);
    for (int c = 0; c < it->n_choices; c++) {
        s->ll[index][c] = r->ll_sum[c];
        assert_true(fabs(r->ll_mean[c] - r->ll_sum[c] / r->n_tokens[c]) < 1e-12);
    }
    s->pred[index] = r->pred_sum;
    s->pred_mean[index] = r->pred_mean;
    s->cut[index] = r->truncated;
    s->n++;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Loading, the template, per-item scores against the direct computation on
 * the encoded texts, accuracy counts, context truncation at a small context. */
static void test_text_path(void **st) {
    (void)st;
    ds4_tokenizer *tok = ds4_tokenizer_train(CORPUS, sizeof CORPUS - 1, 300, 0);
    assert_non_null(tok);
    int V = ds4_tokenizer_vocab_size(tok);
    char path[64];
    snprintf(path, sizeof path, "/tmp/ds4-test-mc-%d.jsonl", (int)getpid());
    write_file(path,
        "{\"question\": \"what is the colour of the sky?\", \"choices\": [\"blue\", \"green\", \"four\"], \"answer\": 0, \"subject\": \"x\"}\n"
        "\n"
        "{\"question\": \"how many legs does a cat have? one two three four five six seven eight nine ten one two three four five six seven eight nine ten\", \"choices\": [\"three\", \"four legs and a tail\"], \"answer\": \"B\"}\n");
    ds4_mc_item *items;
    int n;
    assert_int_equal(ds4_mc_load(path, &items, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(items[0].n_choices, 3);
    assert_int_equal(items[1].answer, 1);
    assert_string_equal(items[0].subject, "x");
    assert_null(items[1].subject);
    char *ctx0 = ds4_mc_context(&items[0]);
    assert_string_equal(ctx0, "Question: what is the colour of the sky?\nAnswer:");
    free(ctx0);

    for (int small = 0; small < 2; small++) {
        int maxpos = small ? 24 : 128;               /* 24: the long question is cut */
        ds4_model *m = tiny_model(V_DENSE, V, maxpos, 3);
        for (int add_bos = 0; add_bos < 2; add_bos++) {
            seen s = {0};
            ds4_mc_result res;
            assert_int_equal(ds4_mc_eval(m, tok, items, n, add_bos, on_item, &s, &res), 0);
            assert_int_equal(res.n_items, 2);
            int bos = ds4_tokenizer_special(tok, "<|bos|>");
            int correct = 0, cuts = 0;
            for (int i = 0; i < n; i++) {
                char *ct = ds4_mc_context(&items[i]);
                int *ids; size_t ni;
                assert_int_equal(ds4_tokenizer_encode(tok, ct, strlen(ct), &ids, &ni), 0);
                free(ct);
                int *cids[4], clen[4], maxlen = 0;
                for (int c = 0; c < items[i].n_choices; c++) {
                    char b[128];
                    snprintf(b, sizeof b, " %s", items[i].choices[c]);
                    size_t nc;
                    assert_int_equal(ds4_tokenizer_encode(tok, b, strlen(b), &cids[c], &nc), 0);
                    clen[c] = (int)nc;
                    if (clen[c] > maxlen) maxlen = clen[c];
                }
                int ctx[128], nctx = 0;
                if (add_bos) ctx[nctx++] = bos;
                size_t keep = ni;
                if (nctx + (int)ni + maxlen - 1 > maxpos) { keep = (size_t)(maxpos - maxlen + 1 - nctx); cuts++; }
                memcpy(ctx + nctx, ids + (ni - keep), keep * sizeof *ctx);
                nctx += (int)keep;
                assert_int_equal(s.cut[i], keep < ni);
                int best = 0;
                double llb = -INFINITY;
                for (int c = 0; c < items[i].n_choices; c++) {
                    double want = direct_ll(m, ctx, nctx, cids[c], clen[c]);
                    if (fabs(s.ll[i][c] - want) > 1e-4)
                        fail_msg("maxpos %d bos %d item %d choice %d: %.8f vs direct %.8f", maxpos,
                                 add_bos, i, c, s.ll[i][c], want);
                    if (want > llb) { llb = want; best = c; }
                    free(cids[c]);
                }
                free(ids);
                assert_int_equal(s.pred[i], best);
                correct += best == items[i].answer;
            }
            assert_int_equal(res.correct_sum, correct);
            assert_true(fabs(res.acc - correct / 2.0) < 1e-12);
            assert_int_equal(res.truncated, cuts);
            assert_int_equal(cuts > 0, small);
        }
        ds4_model_free(m);
    }
    ds4_mc_free(items, n);
    ds4_tokenizer_free(tok);
    unlink(path);
}

static void test_loader_errors(void **st) {
    (void)st;
    char path[64];
    snprintf(path, sizeof path, "/tmp/ds4-test-mc-bad-%d.jsonl", (int)getpid());
    const char *bad[] = {
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}\n",
        "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n",
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": \"AB\"}\n",
        "{\"choices\": [\"a\", \"b\"], \"answer\": 0}\n",
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\nnot json\n",
        "\n\n",
    };
    const char *want[] = {"line 1: \"answer\" 2", "line 1: \"choices\"", "line 1: \"answer\"",
                          "line 1: \"question\"", "line 2: not a JSON", "no questions"};
    for (int i = 0; i < 6; i++) {
        write_file(path, bad[i]);
        ds4_mc_item *items = NULL;
        int n = -1;
        assert_int_equal(ds4_mc_load(path, &items, &n), -1);
        if (!strstr(ds4_error(), want[i])) fail_msg("case %d: error '%s' lacks '%s'", i, ds4_error(), want[i]);
        assert_null(items);
    }
    unlink(path);
    assert_int_equal(ds4_mc_load("/nonexistent/mc.jsonl", &(ds4_mc_item *){0}, &(int){0}), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scorer_equals_direct),
        cmocka_unit_test(test_picks_constructed_answer),
        cmocka_unit_test(test_text_path),
        cmocka_unit_test(test_loader_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
