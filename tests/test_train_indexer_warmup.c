/* test_train_indexer_warmup.c — the indexer-only warm-up of SPEC §1.4 through
 * ds4_train_run (what `ds4 train --indexer-warmup N` sets): during the warm-up
 * steps only the lightning indexer changes, every other weight stays bit-identical. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "model/model.h"
#include "train/train.h"
#include "util/util.h"
#include "testutil.h"

static ds4_config g_cfg;

static int setup(void **state) {
    (void)state;
    if (tmpdir_make("iwarm") != 0) return -1;
    ds4_config *c = &g_cfg;
    ds4_config_defaults(c);
    c->vocab_size = 40;
    c->hidden_size = 16;
    c->intermediate_size = 24;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 2;
    c->num_attention_heads = 2;
    c->num_key_value_heads = 1;
    c->head_dim = 8;
    c->max_position_embeddings = 32;
    c->index_topk = 4;                   /* sparse attention in training (T = 16 > 4) */
    c->index_n_heads = 2;
    c->index_head_dim = 8;
    c->n_prune_layers = 1;               /* a pruned layer: its router must stay frozen too */
    c->prune_layers[0] = 1;
    c->prune_ratio[0] = 0.25f;
    c->attention_sinks = 1;
    if (ds4_config_validate(c) != 0 || ds4_config_save(c, tmp_path("config.json")) != 0) return -1;
    int ids[2000];
    ds4_rng r;
    ds4_rng_seed(&r, 9);
    for (int i = 0; i < 2000; i++) ids[i] = (int)(ds4_rng_u64(&r) % 8) * 5 % 40;
    return ds4_shard_write(tmp_path("data.bin"), ids, 2000);
}

static int teardown(void **state) {
    (void)state;
    return getenv("DS4_KEEP_TMP") ? 0 : tmpdir_remove();
}

static void opts(ds4_train_opts *o, const char *out, long steps, long warm) {
    ds4_train_opts_defaults(o);
    o->config_path = tmp_path("config.json");
    o->data_path = tmp_path("data.bin");
    o->out_dir = out;
    o->steps = steps;
    o->indexer_warmup = warm;
    o->batch = 2;
    o->seq = 16;
    o->lr = 1e-2f;
    o->warmup = 0;
    o->save_every = 0;
    o->seed = 77;
    o->quiet = 1;
}

static int is_indexer(const char *name) { return strstr(name, ".self_attn.indexer.") != NULL; }

/* Tensors of m that differ from the same-seed initialisation, counted
 * separately for the indexer and everything else. */
static void count_changed(const ds4_model *m, int *idx_changed, int *other_changed, int *idx_total, int verbose) {
    ds4_model *init = ds4_model_create(&m->cfg, 77);
    assert_non_null(init);
    assert_int_equal(init->layout.n_tensors, m->layout.n_tensors);
    *idx_changed = *other_changed = *idx_total = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const int same = !memcmp(m->params + t->offset, init->params + t->offset, t->numel * sizeof(float));
        if (is_indexer(t->name)) {
            (*idx_total)++;
            *idx_changed += !same;
        } else {
            if (!same && verbose) printf("  changed: %s\n", t->name);
            *other_changed += !same;
        }
    }
    ds4_model_free(init);
}

/* Log lines with "indexer_warmup":1 / :0. */
static void count_log(const char *dir, int *on, int *off) {
    char path[600], *txt;
    snprintf(path, sizeof path, "%s/train_log.jsonl", dir);
    assert_int_equal(ds4_read_file(path, &txt, NULL), 0);
    *on = *off = 0;
    for (const char *p = txt; (p = strstr(p, "\"indexer_warmup\":")); p++)
        (p[17] == '1' ? (*on)++ : (*off)++);
    free(txt);
}

/* 4 steps, warm-up 2: the checkpoint after 2 steps has only the indexer
 * changed; resumed to 4 steps, the rest of the model trains as well. */
static void test_warmup_freezes_all_but_indexer(void **state) {
    (void)state;
    char out[512];
    snprintf(out, sizeof out, "%s", tmp_path("run"));       /* tmp_path buffers rotate */
    ds4_train_opts o;
    opts(&o, out, 4, 2);
    o.stop_after = 2;
    assert_int_equal(ds4_train_run(&o), 0);
    ds4_model *m = ds4_model_load(out);
    assert_non_null(m);
    int ic, oc, it;
    count_changed(m, &ic, &oc, &it, 1);
    printf("  after 2 warm-up steps: %d of %d indexer tensors changed, %d other tensors changed\n", ic, it, oc);
    assert_int_equal(it, 8);                    /* wq, wk, k_norm, weights_proj in 2 layers */
    assert_true(ic >= 6);                       /* the projections learn (k_norm may too) */
    assert_int_equal(oc, 0);                    /* every other weight bit-identical */
    ds4_model_free(m);
    int on, off;
    count_log(out, &on, &off);
    assert_int_equal(on, 2);
    assert_int_equal(off, 0);

    opts(&o, out, 4, 2);
    o.resume = 1;
    assert_int_equal(ds4_train_run(&o), 0);
    assert_non_null(m = ds4_model_load(out));
    count_changed(m, &ic, &oc, &it, 0);
    printf("  after 2 more (normal) steps: %d other tensors changed\n", oc);
    assert_true(oc >= 10);                      /* embeddings, attention, FFN, norms, router, sinks */
    ds4_model_free(m);
    count_log(out, &on, &off);
    assert_int_equal(on, 2);
    assert_int_equal(off, 2);
}

/* Without the warm-up the first steps already change the whole model. */
static void test_no_warmup_trains_everything(void **state) {
    (void)state;
    char out[512];
    snprintf(out, sizeof out, "%s", tmp_path("plain"));
    ds4_train_opts o;
    opts(&o, out, 2, 0);
    assert_int_equal(ds4_train_run(&o), 0);
    ds4_model *m = ds4_model_load(out);
    assert_non_null(m);
    int ic, oc, it;
    count_changed(m, &ic, &oc, &it, 0);
    assert_true(ic >= 6);
    assert_true(oc >= 10);
    ds4_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warmup_freezes_all_but_indexer),
        cmocka_unit_test(test_no_warmup_trains_everything),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
