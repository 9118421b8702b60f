/* test_worldmodel_seq.c — the world model's sequence layout: special ids and
 * code range from the config, caption + codes -> tokens -> caption + codes
 * round trips, rejection of every malformed structure, and training rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "util/util.h"
#include "worldmodel/worldmodel.h"

/* A config with 300 text ids (specials 294..299) and 1000 codes at 300. */
static void make_layout(ds4_wm_layout *L) {
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = 1300;
    c.video.enabled = 1;
    c.video.width = 64; c.video.height = 32;
    c.video.fps = 24; c.video.patch = 8; c.video.tubelet = 4;
    c.video.n_levels = 4;
    c.video.levels[0] = 8; c.video.levels[1] = 5; c.video.levels[2] = 5; c.video.levels[3] = 5;
    c.video.code_offset = 300;
    c.video.hidden = 16;
    assert_int_equal(ds4_wm_layout_init(L, &c, NULL), 0);
}

static void test_layout(void **state) {
    (void)state;
    ds4_wm_layout L;
    make_layout(&L);
    assert_int_equal(L.text_vocab, 300);
    assert_int_equal(L.bos, 294); assert_int_equal(L.eos, 295); assert_int_equal(L.video, 296);
    assert_int_equal(L.eov, 297); assert_int_equal(L.frame, 298); assert_int_equal(L.pad, 299);
    assert_int_equal(L.n_codes, 1000);
    assert_int_equal(L.gh, 4); assert_int_equal(L.gw, 8); assert_int_equal(L.cpf, 32);
    assert_true(ds4_wm_is_code(&L, 300) && ds4_wm_is_code(&L, 1299));
    assert_false(ds4_wm_is_code(&L, 299) || ds4_wm_is_code(&L, 1300));
    /* without a tokenizer the text vocabulary ends at code_offset; no video object: refused */
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = 1300;
    c.video = (ds4_video_config){.enabled = 1, .width = 64, .height = 32, .fps = 24, .patch = 8, .tubelet = 4,
                                 .n_levels = 4, .levels = {8, 5, 5, 5}, .code_offset = 250, .hidden = 16};
    ds4_wm_layout L2;
    assert_int_equal(ds4_wm_layout_init(&L2, &c, NULL), 0);
    assert_int_equal(L2.text_vocab, 250);
    assert_int_equal(L2.bos, 244);
    c.video.enabled = 0;
    assert_int_equal(ds4_wm_layout_init(&L2, &c, NULL), -1);
}

static void test_round_trip(void **state) {
    (void)state;
    ds4_wm_layout L;
    make_layout(&L);
    ds4_rng r;
    ds4_rng_seed(&r, 7);
    for (int trial = 0; trial < 50; trial++) {
        int nc = (int)(ds4_rng_u64(&r) % 20), nl = (int)(ds4_rng_u64(&r) % 5);
        int cap[20];
        int32_t codes[5 * 32], back[5 * 32];
        for (int i = 0; i < nc; i++) cap[i] = (int)(ds4_rng_u64(&r) % 294);   /* plain text ids */
        for (int i = 0; i < nl * 32; i++) codes[i] = (int32_t)(ds4_rng_u64(&r) % 1000);
        int eov = trial % 2;
        int toks[400];
        int n = ds4_wm_seq_build(&L, cap, nc, codes, nl, eov, toks, 400);
        assert_int_equal(n, ds4_wm_seq_len(&L, nc, nl, eov));
        assert_int_equal(n, 2 + nc + nl * 33 + eov);
        /* the layout, checked by hand */
        assert_int_equal(toks[0], L.bos);
        assert_int_equal(toks[1 + nc], L.video);
        for (int t = 0; t < nl; t++) {
            assert_int_equal(toks[2 + nc + t * 33 + 32], L.frame);
            assert_int_equal(toks[2 + nc + t * 33 + 5], 300 + codes[t * 32 + 5]);
        }
        for (int k = n; k < n + 3 && eov; k++) toks[k] = L.pad;     /* padding after <|eov|> is allowed */
        int cs, ncap, nlat, closed;
        assert_int_equal(ds4_wm_seq_parse(&L, toks, n + (eov ? 3 : 0), &cs, &ncap, back, 5, &nlat, &closed), 0);
        assert_int_equal(ncap, nc);
        assert_int_equal(nlat, nl);
        assert_int_equal(closed, eov);
        assert_memory_equal(toks + cs, cap, sizeof(int) * (size_t)nc);
        if (nl) assert_memory_equal(back, codes, sizeof(int32_t) * (size_t)nl * 32);
    }
}

static void test_rejects(void **state) {
    (void)state;
    ds4_wm_layout L;
    make_layout(&L);
    int32_t codes[64] = {0};
    int cap[2] = {10, 11}, toks[200], tmp[200];
    int n = ds4_wm_seq_build(&L, cap, 2, codes, 2, 1, toks, 200);
    assert_true(n > 0);
    int cs, nc, nl, cl;
    assert_int_equal(ds4_wm_seq_parse(&L, toks, n, &cs, &nc, NULL, 0, &nl, &cl), 0);
    /* each corruption must be caught */
    const int pos_code = 2 + 2 + 3, pos_frame = 2 + 2 + 32, pos_eov = n - 1;
    struct { int at, id; } bad[] = {
        {0, 10},               /* no <|bos|> */
        {pos_code, 50},        /* text id where a code belongs */
        {pos_code, L.frame},   /* <|frame|> too early */
        {pos_frame, 300},      /* code where <|frame|> belongs */
        {pos_frame, L.eov},    /* <|eov|> inside a frame */
        {pos_code, L.bos},
        {1, L.frame},          /* <|frame|> in the caption */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(tmp, toks, sizeof(int) * (size_t)n);
        tmp[bad[i].at] = bad[i].id;
        assert_int_equal(ds4_wm_seq_parse(&L, tmp, n, &cs, &nc, NULL, 0, &nl, &cl), -1);
    }
    /* a half frame at the end, text after <|eov|>, no <|video|> */
    assert_int_equal(ds4_wm_seq_parse(&L, toks, pos_frame, &cs, &nc, NULL, 0, &nl, &cl), -1);
    memcpy(tmp, toks, sizeof(int) * (size_t)n);
    tmp[n] = 12;
    assert_int_equal(ds4_wm_seq_parse(&L, tmp, n + 1, &cs, &nc, NULL, 0, &nl, &cl), -1);
    assert_int_equal(ds4_wm_seq_parse(&L, toks, 3, &cs, &nc, NULL, 0, &nl, &cl), -1);
    (void)pos_eov;
    /* building refuses bad codes, non-text captions and short buffers */
    codes[3] = 1000;
    assert_int_equal(ds4_wm_seq_build(&L, cap, 2, codes, 1, 0, toks, 200), -1);
    codes[3] = -1;
    assert_int_equal(ds4_wm_seq_build(&L, cap, 2, codes, 1, 0, toks, 200), -1);
    codes[3] = 0;
    cap[1] = 300;
    assert_int_equal(ds4_wm_seq_build(&L, cap, 2, codes, 1, 0, toks, 200), -1);
    cap[1] = 11;
    assert_int_equal(ds4_wm_seq_build(&L, cap, 2, codes, 2, 1, toks, 40), -1);
}

static void test_rows(void **state) {
    (void)state;
    ds4_wm_layout L;
    make_layout(&L);
    /* two clips of 6 latent frames, captions of 3 and 40 tokens */
    ds4_wm_clips c = {.n_clips = 2, .n_lat = 6, .cpf = 32};
    c.codes = malloc(sizeof(int32_t) * 2 * 6 * 32);
    c.cap_ids = malloc(sizeof(int) * 43);
    int off[2] = {0, 3}, len[2] = {3, 40};
    c.cap_off = off;
    c.cap_len = len;
    for (int i = 0; i < 2 * 6 * 32; i++) c.codes[i] = (i * 37) % 1000;
    for (int i = 0; i < 43; i++) c.cap_ids[i] = i;
    int row[200];
    /* clip 0 from latent frame 2, window 4: 2 + 3 + 4 * 33 + 1 = 138 tokens, then padding */
    assert_int_equal(ds4_wm_row_video(&L, &c, 0, 2, 4, 1, row, 150), 0);
    int cs, nc, nl, cl;
    int32_t back[6 * 32];
    assert_int_equal(ds4_wm_seq_parse(&L, row, 150, &cs, &nc, back, 6, &nl, &cl), 0);
    assert_int_equal(nc, 3);
    assert_int_equal(nl, 4);
    assert_int_equal(cl, 1);
    assert_memory_equal(back, c.codes + 2 * 32, sizeof(int32_t) * 4 * 32);
    assert_int_equal(row[149], L.pad);
    /* the long caption leaves room for fewer frames; without the caption all 4 fit */
    assert_int_equal(ds4_wm_row_video(&L, &c, 1, 0, 4, 1, row, 150), 0);
    assert_int_equal(ds4_wm_seq_parse(&L, row, 150, &cs, &nc, back, 6, &nl, &cl), 0);
    assert_int_equal(nc, 40);
    assert_int_equal(nl, 3);
    assert_int_equal(ds4_wm_row_video(&L, &c, 1, 0, 4, 0, row, 150), 0);
    assert_int_equal(ds4_wm_seq_parse(&L, row, 150, &cs, &nc, back, 6, &nl, &cl), 0);
    assert_int_equal(nc, 0);
    assert_int_equal(nl, 4);
    /* the window stops at the clip's end */
    assert_int_equal(ds4_wm_row_video(&L, &c, 0, 4, 4, 0, row, 150), 0);
    assert_int_equal(ds4_wm_seq_parse(&L, row, 150, &cs, &nc, back, 6, &nl, &cl), 0);
    assert_int_equal(nl, 2);
    assert_int_equal(ds4_wm_row_video(&L, &c, 2, 0, 4, 0, row, 150), -1);
    assert_int_equal(ds4_wm_row_video(&L, &c, 0, 0, 4, 0, row, 20), -1);
    free(c.codes);
    free(c.cap_ids);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
