/* test_worldmodel_gen.c — video generation with a tiny random world model:
 * constrained decoding only emits valid structure (codes at code positions,
 * <|frame|> after each latent frame), the batched rolling-context generator
 * equals a naive recompute of every step from scratch, and an end-to-end run
 * from a model directory writes a GIF and trajectories that read back. */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "model/forward.h"
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

static const char *TEXT =
    "a small red ball drops from the upper left and bounces three times. a large blue ball is thrown "
    "right from the lower centre and settles on the floor. two balls: a green ball hits the yellow ball. ";

typedef struct fixture {
    ds4_wm w;
    char dir[64];
} fixture;

static int setup(void **state) {
    fixture *fx = calloc(1, sizeof *fx);
    ds4_wm *w = &fx->w;
    char text[4096] = "";
    for (int i = 0; i < 8; i++) strcat(text, TEXT);
    w->tok = ds4_tokenizer_train(text, strlen(text), 300, 0);
    assert_non_null(w->tok);
    const int tv = ds4_tokenizer_vocab_size(w->tok);
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = tv + 9;
    c.hidden_size = 32; c.intermediate_size = 64; c.num_hidden_layers = 2;
    c.num_attention_heads = 2; c.num_key_value_heads = 2; c.head_dim = 16;
    c.max_position_embeddings = 128;
    c.first_k_dense_replace = 2;
    c.video = (ds4_video_config){.enabled = 1, .width = 16, .height = 16, .fps = 24, .patch = 8, .tubelet = 4,
                                 .n_levels = 2, .levels = {3, 3}, .code_offset = tv, .hidden = 16};
    if (ds4_config_validate(&c) != 0) print_error("config: %s\n", ds4_error());
    assert_int_equal(ds4_config_validate(&c), 0);
    w->m = ds4_model_create(&c, 11);
    assert_non_null(w->m);
    /* sharpen the random model so that its choices depend on the whole context */
    for (size_t i = 0; i < w->m->layout.n_floats; i++) w->m->params[i] *= 12.0f;
    ds4_vtok_config vc;
    ds4_vtok_config_defaults(&vc);
    vc.width = 16; vc.height = 16; vc.n_levels = 2; vc.levels[0] = 3; vc.levels[1] = 3;
    vc.hidden = 16; vc.ffn = 16; vc.head = 16; vc.enc_layers = 1; vc.dec_layers = 1;
    w->vt = ds4_vtok_new(&vc, 5);
    assert_non_null(w->vt);
    assert_int_equal(ds4_wm_layout_init(&w->L, &w->m->cfg, w->tok), 0);
    assert_int_equal(ds4_wm_layout_check_vtok(&w->L, w->vt), 0);
    ds4_wm_settings_defaults(&w->s);
    w->s.window = 3;
    w->s.keep = 1;
    w->s.caption_max = 16;
    /* codes overlapping the tokenizer's ids are refused */
    ds4_config bad = c;
    bad.video.code_offset = tv - 1;
    ds4_wm_layout L;
    assert_int_equal(ds4_wm_layout_init(&L, &bad, w->tok), -1);
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fixture *fx = *state;
    ds4_model_free(fx->w.m);
    ds4_tokenizer_free(fx->w.tok);
    ds4_vtok_free(fx->w.vt);
    free(fx);
    return 0;
}

static int prefix_of(const ds4_wm *w, const char *caption, int *out) {
    int n = 0;
    out[n++] = w->L.bos;
    if (caption) {
        int *ids;
        size_t k;
        assert_int_equal(ds4_tokenizer_encode(w->tok, caption, strlen(caption), &ids, &k), 0);
        if ((int)k > w->s.caption_max) k = (size_t)w->s.caption_max;
        memcpy(out + n, ids, k * sizeof *ids);
        n += (int)k;
        free(ids);
    }
    out[n++] = w->L.video;
    return n;
}

static void test_structure(void **state) {
    fixture *fx = *state;
    const ds4_wm *w = &fx->w;
    const int cpf = w->L.cpf;
    int32_t given[4 * 4];
    for (int i = 0; i < 16; i++) given[i] = (i * 5) % 9;
    ds4_wm_request rq[3] = {
        {.caption = "a small red ball drops", .n_new = 7, .seed = 1},
        {.given = given, .n_given = 2, .n_new = 5, .seed = 2},
        {.caption = "two balls", .given = given, .n_given = 4, .n_new = 3, .seed = 3},
    };
    int32_t out[3][16 * 4];
    int toks[3][16 * 5];
    for (int i = 0; i < 3; i++) { rq[i].out = out[i]; rq[i].tokens = toks[i]; }
    ds4_wm_gen_params p;
    ds4_wm_gen_params_default(&p);
    p.sampler.temperature = 1.5f;   /* spread the draws over every id the model allows */
    ds4_wm_gen_stats st;
    assert_int_equal(ds4_wm_generate(w, rq, 3, &p, &st), 0);
    assert_int_equal(st.sampled, (7 + 5 + 3) * cpf);
    assert_int_equal(st.forced, 7 + 5 + 3);
    assert_true(st.rebuilds > 0);
    for (int i = 0; i < 3; i++) {
        int seq[400];
        int n = prefix_of(w, rq[i].caption, seq);
        for (int f = 0; f < rq[i].n_given; f++) {
            for (int j = 0; j < cpf; j++) seq[n++] = w->L.code_offset + given[f * cpf + j];
            seq[n++] = w->L.frame;
        }
        const int ng = rq[i].n_new * (cpf + 1);
        memcpy(seq + n, toks[i], sizeof(int) * (size_t)ng);
        n += ng;
        int cs, nc, nl, closed;
        int32_t back[16 * 4];
        assert_int_equal(ds4_wm_seq_parse(&w->L, seq, n, &cs, &nc, back, 16, &nl, &closed), 0);
        assert_int_equal(nl, rq[i].n_given + rq[i].n_new);
        assert_memory_equal(back, out[i], sizeof(int32_t) * (size_t)nl * cpf);
        if (rq[i].n_given) assert_memory_equal(out[i], given, sizeof(int32_t) * (size_t)rq[i].n_given * cpf);
    }
}

/* Greedy generation recomputed from scratch at every code (no cache): the
 * context is rebuilt by the documented rule (prefix + at most window
 * complete frames; on reaching window, the last keep). */
/* The code logits after prefix + frames s..f-1 + the first j codes of frame f. */
static void naive_logits(const ds4_wm *w, const int *prefix, int np, const int32_t *out, int s, int f, int j,
                         float *logits, float *z) {
    const ds4_wm_layout *L = &w->L;
    const int V = w->m->cfg.vocab_size, cpf = L->cpf;
    int toks[512], n = np;
    memcpy(toks, prefix, sizeof(int) * (size_t)np);
    for (int g = s; g < f; g++) {
        for (int k = 0; k < cpf; k++) toks[n++] = L->code_offset + out[g * cpf + k];
        toks[n++] = L->frame;
    }
    for (int k = 0; k < j; k++) toks[n++] = L->code_offset + out[f * cpf + k];
    assert_int_equal(ds4_forward_logits(w->m, toks, n, logits), 0);
    memcpy(z, logits + (size_t)(n - 1) * V + L->code_offset, sizeof(float) * (size_t)L->n_codes);
}

/* cfg != 1 with a caption: argmax of u + cfg (c - u), u from the prefix without the caption. */
static void naive(const ds4_wm *w, const char *caption, const int32_t *given, int n_given, int n_new,
                  float cfg, int32_t *out) {
    const ds4_wm_layout *L = &w->L;
    const int V = w->m->cfg.vocab_size, cpf = L->cpf, win = w->s.window, keep = w->s.keep;
    int prefix[64], uprefix[4];
    const int np = prefix_of(w, caption, prefix), nu = prefix_of(w, NULL, uprefix);
    const int guided = caption && cfg != 1.0f;
    memcpy(out, given, sizeof(int32_t) * (size_t)n_given * cpf);
    int s = n_given - (n_given < win ? n_given : win - 1);     /* first frame in context */
    float *logits = malloc(sizeof(float) * 512 * V), z[64], u[64];
    for (int f = n_given; f < n_given + n_new; f++) {
        for (int j = 0; j < cpf; j++) {
            naive_logits(w, prefix, np, out, s, f, j, logits, z);
            if (guided) {
                naive_logits(w, uprefix, nu, out, s, f, j, logits, u);
                for (int c = 0; c < L->n_codes; c++) z[c] = u[c] + cfg * (z[c] - u[c]);
            }
            int best = 0;
            for (int c = 1; c < L->n_codes; c++) if (z[c] > z[best]) best = c;
            out[f * cpf + j] = best;
        }
        if (f + 1 - s >= win) s = f + 1 - keep;
    }
    free(logits);
}

static void test_rolling_equals_naive(void **state) {
    fixture *fx = *state;
    const ds4_wm *w = &fx->w;
    const int cpf = w->L.cpf;
    int32_t given[3 * 4] = {1, 2, 3, 4, 8, 7, 6, 5, 0, 0, 4, 4};
    ds4_wm_request rq[3] = {
        {.caption = "a large blue ball", .given = given, .n_given = 1, .n_new = 6},
        {.caption = "a large blue ball", .given = given, .n_given = 1, .n_new = 6},
        {.given = given, .n_given = 3, .n_new = 5},
    };
    int32_t out[3][12 * 4], ref[12 * 4];
    for (int i = 0; i < 3; i++) rq[i].out = out[i];
    ds4_wm_gen_params p;
    ds4_wm_gen_params_default(&p);
    p.cfg_scale = 1.0f;              /* plain conditional sampling */
    p.sampler.temperature = 0;
    ds4_wm_gen_stats st;
    assert_int_equal(ds4_wm_generate(w, rq, 3, &p, &st), 0);
    for (int i = 0; i < 3; i++) {
        naive(w, rq[i].caption, given, rq[i].n_given, rq[i].n_new, 1.0f, ref);
        assert_memory_equal(out[i], ref, sizeof(int32_t) * (size_t)(rq[i].n_given + rq[i].n_new) * cpf);
    }
    /* one at a time gives the same as the batch */
    p.batch = 1;
    int32_t one[12 * 4];
    rq[2].out = one;
    assert_int_equal(ds4_wm_generate(w, &rq[2], 1, &p, &st), 0);
    assert_memory_equal(one, out[2], sizeof(int32_t) * 8 * cpf);
}

/* Classifier-free guidance: the batched generator (twin sequences in their own
 * cache slots, rolling rebuilds of both) equals the naive guided recompute, and
 * guidance changes what a captioned request generates. */
static void test_guidance_equals_naive(void **state) {
    fixture *fx = *state;
    const ds4_wm *w = &fx->w;
    const int cpf = w->L.cpf;
    int32_t given[4] = {1, 2, 3, 4};
    ds4_wm_request rq[3] = {
        {.caption = "a large blue ball", .n_new = 6},
        {.given = given, .n_given = 1, .n_new = 5},
        {.caption = "two balls: a green ball", .given = given, .n_given = 1, .n_new = 6},
    };
    int32_t out[3][12 * 4], plain[12 * 4], ref[12 * 4];
    for (int i = 0; i < 3; i++) rq[i].out = out[i];
    ds4_wm_gen_params p;
    ds4_wm_gen_params_default(&p);
    p.sampler.temperature = 0;
    p.cfg_scale = 3.0f;
    p.batch = 2;                     /* two groups: twins' slots are reused */
    ds4_wm_gen_stats st;
    assert_int_equal(ds4_wm_generate(w, rq, 3, &p, &st), 0);
    long differ = 0;
    for (int i = 0; i < 3; i++) {
        const int nl = rq[i].n_given + rq[i].n_new;
        naive(w, rq[i].caption, given, rq[i].n_given, rq[i].n_new, 3.0f, ref);
        assert_memory_equal(out[i], ref, sizeof(int32_t) * (size_t)nl * cpf);
        naive(w, rq[i].caption, given, rq[i].n_given, rq[i].n_new, 1.0f, plain);
        for (int k = 0; k < nl * cpf; k++) differ += plain[k] != out[i][k];
    }
    assert_true(differ > 0);
    p.cfg_scale = -1.0f;
    assert_int_equal(ds4_wm_generate(w, rq, 1, &p, &st), -1);
    assert_non_null(strstr(ds4_error(), "guidance"));
}

static void test_end_to_end_gif(void **state) {
    fixture *fx = *state;
    ds4_wm *w = &fx->w;
    char dir[] = "/tmp/ds4-wm-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    assert_int_equal(ds4_model_save(w->m, dir), 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(ds4_tokenizer_save(w->tok, path), 0);
    assert_int_equal(ds4_vtok_save(w->vt, dir), 0);
    snprintf(path, sizeof path, "%s/worldmodel.json", dir);
    assert_int_equal(ds4_wm_settings_save(&w->s, path), 0);
    ds4_wm *m = ds4_wm_open(dir);
    assert_non_null(m);
    assert_int_equal(m->s.window, 3);
    const int n_lat = 5, F = n_lat * 4, fb = 16 * 16 * 3;
    int32_t codes[5 * 4];
    ds4_wm_request rq = {.caption = "a small red ball drops", .n_new = n_lat, .seed = 9, .out = codes};
    ds4_wm_gen_params p;
    ds4_wm_gen_params_default(&p);
    assert_int_equal(ds4_wm_generate(m, &rq, 1, &p, NULL), 0);
    uint8_t *rgb = malloc((size_t)F * fb);
    assert_int_equal(ds4_wm_decode(m, codes, n_lat, rgb), 0);
    snprintf(path, sizeof path, "%s/clip.gif", dir);
    ds4_wm_output o = {.gif = path, .scale = 2};
    ds4_wm_output_info info;
    assert_int_equal(ds4_wm_write_clip(&o, rgb, F, 16, 16, 24, 4.0, 0, rq.caption, &info), 0);
    uint8_t *back = NULL, *small = NULL;
    int n, gw, gh, fps;
    assert_int_equal(ds4_vtok_read_gif(path, &back, &n, &gw, &gh, &fps), 0);
    assert_int_equal(n, F);
    assert_int_equal(gw, 32);
    assert_int_equal(gh, 32);
    assert_int_equal(ds4_vtok_downscale(back, n, gh, gw, 2, &small), 0);
    /* pixels that are exact palette colours come back exactly */
    long exact = 0, same = 0;
    for (long i = 0; i < (long)F * 16 * 16; i++) {
        const uint8_t *a = rgb + 3 * i;
        int pal = 0;
        for (int k = 0; k < DS4_WC_COUNT; k++) pal |= !memcmp(a, ds4_world_palette[k], 3);
        if (!pal) continue;
        exact++;
        same += !memcmp(a, small + 3 * i, 3);
    }
    assert_int_equal(same, exact);
    /* the trajectories file parses and covers every frame */
    char *txt;
    assert_int_equal(ds4_read_file(info.json, &txt, NULL), 0);
    cJSON *j = cJSON_Parse(txt);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "frames")), F);
    cJSON_Delete(j);
    free(txt);
    /* a resampled copy at 12 fps has half the frames */
    o.fps = 12;
    assert_int_equal(ds4_wm_write_clip(&o, rgb, F, 16, 16, 24, 4.0, 0, NULL, &info), 0);
    assert_int_equal(info.n_frames, F / 2);
    free(back); free(small); free(rgb);
    ds4_wm_free(m);
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "video.safetensors",
                           "video_config.json", "worldmodel.json", "clip.gif", "clip.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_rolling_equals_naive),
        cmocka_unit_test(test_guidance_equals_naive),
        cmocka_unit_test(test_end_to_end_gif),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
