/* test_video_train.c — training the tokenizer: AdamW against the update
 * formula written out in double, and a short run on a few generated clips
 * (ds4_world_gen_dataset) that must lower the loss and beat the untrained
 * model's PSNR, save a model whose reloaded evaluation matches the one
 * reported, write one log line per step, and repeat bit for bit. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ds4.h"
#include "util/util.h"
#include "testutil.h"
#include "video/video.h"
#include "world/world.h"

static int setup(void **state) {
    (void)state;
    if (tmpdir_make("video_train") != 0) return -1;
    /* 8 train clips and 2 val clips of 16 frames at 32x32 */
    const char *splits[2] = {"train", "val"};
    for (int i = 0; i < 2; i++) {
        ds4_world_gen_opts o = {.out_dir = tmp_path("data"), .split = splits[i], .n_clips = i ? 2 : 8,
                                .width = 32, .height = 32, .fps = 24, .n_frames = 16, .seed = 3,
                                .clips_per_shard = 4, .threads = 1};
        if (ds4_world_gen_dataset(&o, NULL, NULL) != 0) return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

/* AdamW with bias correction; decay only on matrices. */
static void test_adamw_formula(void **state) {
    (void)state;
    ds4_vtok_config c;
    ds4_vtok_config_defaults(&c);
    c.width = 8; c.height = 8; c.hidden = 2; c.ffn = 2; c.head = 2; c.enc_layers = 0; c.dec_layers = 0;
    c.patch = 8; c.tubelet = 1; c.n_levels = 1; c.levels[0] = 3;
    ds4_vtok *m = ds4_vtok_new(&c, 1);
    assert_non_null(m);
    ds4_vtok_adamw o;
    assert_int_equal(ds4_vtok_adamw_init(&o, m), 0);
    o.beta1 = 0.8f; o.beta2 = 0.95f; o.eps = 1e-6f; o.weight_decay = 0.1f;
    const size_t n = m->n_params;
    double *p = malloc(n * sizeof(double)), *mm = calloc(n, sizeof(double)), *vv = calloc(n, sizeof(double));
    float *g = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = m->params[i];
    ds4_rng r;
    ds4_rng_seed(&r, 2);
    for (int step = 1; step <= 4; step++) {
        const double lr = 0.01 * step;
        for (size_t i = 0; i < n; i++) g[i] = ds4_rng_normal(&r);
        ds4_vtok_adamw_step(&o, m, g, (float)lr);
        for (int ti = 0; ti < m->n_tensors; ti++) {
            const ds4_vtok_tensor *t = &m->tensors[ti];
            double wd = t->ndim == 2 ? 0.1 : 0.0;
            for (size_t k = t->off; k < t->off + t->numel; k++) {
                mm[k] = 0.8 * mm[k] + 0.2 * g[k];
                vv[k] = 0.95 * vv[k] + 0.05 * (double)g[k] * g[k];
                double mh = mm[k] / (1 - pow(0.8, step)), vh = vv[k] / (1 - pow(0.95, step));
                p[k] -= lr * (mh / (sqrt(vh) + 1e-6) + wd * p[k]);
            }
        }
        for (size_t i = 0; i < n; i++) assert_float_equal(m->params[i], p[i], 1e-5 * (1 + fabs(p[i])));
    }
    assert_int_equal(o.t, 4);
    free(p); free(mm); free(vv); free(g);
    ds4_vtok_adamw_free(&o);
    ds4_vtok_free(m);
}

typedef struct { double loss[200]; long n; double val_psnr; } trace;

static void on_progress(void *user, const ds4_vtok_progress *p) {
    trace *t = user;
    if (t->n < 200) t->loss[t->n++] = p->loss;
    if (!isnan(p->val_psnr)) t->val_psnr = p->val_psnr;
}

static ds4_vtok_train_opts small_opts(const char *out, long steps, trace *tr) {
    ds4_vtok_train_opts o;
    ds4_vtok_train_opts_defaults(&o);
    o.data_dir = tmp_path("data");
    o.out_dir = out;
    o.cfg.hidden = 16; o.cfg.ffn = 32; o.cfg.head = 32; o.cfg.enc_layers = 1; o.cfg.dec_layers = 1;
    o.steps = steps;
    o.batch = 2;
    o.window = 0;
    o.lr = 3e-3f;
    o.warmup = 5;
    o.eval_every = 0;
    o.eval_clips = 2;
    o.seed = 9;
    o.progress = on_progress;
    o.user = tr;
    return o;
}

static void test_short_run(void **state) {
    (void)state;
    trace tr = {.val_psnr = NAN};
    const long steps = 120;
    ds4_vtok_train_opts o = small_opts(tmp_path("m1"), steps, &tr);
    assert_int_equal(ds4_vtok_train(&o), 0);
    assert_int_equal(tr.n, steps);
    double first = 0, last = 0;
    for (int i = 0; i < 10; i++) { first += tr.loss[i]; last += tr.loss[steps - 10 + i]; }
    print_message("loss: first 10 steps %.4f, last 10 %.4f; val PSNR %.2f dB\n", first / 10, last / 10,
                  tr.val_psnr);
    assert_true(last < 0.6 * first);
    /* the saved model evaluates to the reported PSNR, better than untrained */
    ds4_vtok *m = ds4_vtok_load(tmp_path("m1"));
    assert_non_null(m);
    assert_int_equal(m->cfg.width, 32);
    ds4_vtok_eval_stats st = {0}, st0 = {0};
    assert_int_equal(ds4_vtok_eval_dir(m, tmp_path("data"), "val", 2, &st), 0);
    assert_float_equal(ds4_vtok_eval_psnr(&st), tr.val_psnr, 1e-9);
    ds4_vtok *m0 = ds4_vtok_new(&m->cfg, o.seed);
    assert_int_equal(ds4_vtok_eval_dir(m0, tmp_path("data"), "val", 2, &st0), 0);
    print_message("val PSNR untrained %.2f dB, trained %.2f dB\n", ds4_vtok_eval_psnr(&st0),
                  ds4_vtok_eval_psnr(&st));
    assert_true(ds4_vtok_eval_psnr(&st) > ds4_vtok_eval_psnr(&st0) + 1.0);
    ds4_vtok_free(m0);
    ds4_vtok_free(m);
    /* one JSON line per step */
    char path[600], *log;
    size_t len;
    snprintf(path, sizeof path, "%s/train_log.jsonl", tmp_path("m1"));
    assert_int_equal(ds4_read_file(path, &log, &len), 0);
    long lines = 0;
    for (size_t i = 0; i < len; i++) lines += log[i] == '\n';
    assert_int_equal(lines, steps);
    assert_non_null(strstr(log, "\"val_psnr\":"));
    free(log);
}

/* Same seed, same data: the same weights bit for bit. */
static void test_deterministic(void **state) {
    (void)state;
    trace a = {.val_psnr = NAN}, b = {.val_psnr = NAN};
    ds4_vtok_train_opts oa = small_opts(tmp_path("ra"), 15, &a), ob = small_opts(tmp_path("rb"), 15, &b);
    assert_int_equal(ds4_vtok_train(&oa), 0);
    assert_int_equal(ds4_vtok_train(&ob), 0);
    ds4_vtok *ma = ds4_vtok_load(tmp_path("ra")), *mb = ds4_vtok_load(tmp_path("rb"));
    assert_non_null(ma);
    assert_non_null(mb);
    assert_memory_equal(ma->params, mb->params, ma->n_params * sizeof(float));
    ds4_vtok_free(ma);
    ds4_vtok_free(mb);
    /* errors: no data, bad options */
    oa.data_dir = tmp_path("nodata");
    assert_int_equal(ds4_vtok_train(&oa), -1);
    assert_non_null(strstr(ds4_error(), "nodata"));
    ob.batch = 0;
    assert_int_equal(ds4_vtok_train(&ob), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_formula),
        cmocka_unit_test(test_short_run),
        cmocka_unit_test(test_deterministic),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
