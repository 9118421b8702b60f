/* test_infer_text.c — text generation with a real (small, freshly trained)
 * BPE tokenizer and a tiny random model: streamed text equals the decoded
 * tokens, <|bos|> handling, stop strings, abort, ds4_generate wrapper. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"
#include "testmodel.h"

static const char CORPUS[] =
    "the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat.\n"
    "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xe2\x80\x94 the end. \xf0\x9f\x98\x80 smile.\n"
    "one two three four five six seven eight nine ten. the cat ran. the dog ran.\n";

typedef struct { ds4_tokenizer *tok; ds4_model *m; } fixture;

static int setup(void **st) {
    fixture *f = calloc(1, sizeof *f);
    f->tok = ds4_tokenizer_train(CORPUS, sizeof CORPUS - 1, 300, 0);
    if (!f->tok) fail_msg("tokenizer: %s", ds4_error());
    f->m = tiny_text_model(f->tok, 128, 77);
    if (!f->m) fail_msg("model: %s", ds4_error());
    *st = f;
    return 0;
}

static int teardown(void **st) {
    fixture *f = *st;
    ds4_model_free(f->m);
    ds4_tokenizer_free(f->tok);
    free(f);
    return 0;
}

/* Collects streamed text; optionally asks to stop after max_pieces. */
typedef struct { char buf[8192]; size_t len; int pieces, max_pieces; } sink;

static int collect(const char *text, size_t len, void *user) {
    sink *k = user;
    assert_true(k->len + len < sizeof k->buf);
    memcpy(k->buf + k->len, text, len);
    k->len += len;
    k->pieces++;
    return k->max_pieces && k->pieces >= k->max_pieces;
}

static int run(ds4_engine *e, const char *prompt, const ds4_gen_params *p, sink *k, ds4_seq *s) {
    if (ds4_seq_init_text(e, s, prompt, p, collect, k)) return -1;
    ds4_seq *one = s;
    while (s->finish == DS4_FINISH_NONE) assert_true(ds4_engine_step(e, &one, 1) >= 0);
    return s->finish;
}

static void test_stream_equals_decode(void **st) {
    fixture *f = *st;
    ds4_engine *e = ds4_engine_create(f->m, f->tok, 1, 0);
    assert_non_null(e);
    int bos = ds4_tokenizer_special(f->tok, "<|bos|>");
    assert_true(bos >= 0);
    assert_int_equal(e->bos_id, bos);
    assert_int_equal(e->eos_id, ds4_tokenizer_special(f->tok, "<|eos|>"));
    for (int trial = 0; trial < 6; trial++) {
        ds4_gen_params p;
        ds4_gen_params_default(&p);
        p.sampler.temperature = 1.0f;
        p.sampler.seed = 10 + trial;
        p.max_tokens = 60;
        p.ignore_eos = 1;
        p.add_bos = trial % 2 == 0;
        sink k = {0};
        ds4_seq s;
        assert_int_equal(run(e, "the cat", &p, &k, &s), DS4_FINISH_LENGTH);
        int *ids; size_t n;
        assert_int_equal(ds4_tokenizer_encode(f->tok, "the cat", 7, &ids, &n), 0);
        assert_int_equal(s.n_prompt, (int)n + p.add_bos);
        if (p.add_bos) assert_int_equal(s.tokens[0], bos);
        assert_memory_equal(s.tokens + p.add_bos, ids, n * sizeof *ids);
        free(ids);
        char *dec; size_t dl;
        assert_int_equal(ds4_tokenizer_decode(f->tok, s.tokens + s.n_prompt, (size_t)s.n_generated,
                                              &dec, &dl), 0);
        assert_int_equal(k.len, dl);
        assert_memory_equal(k.buf, dec, dl);
        free(dec);
        ds4_seq_release(e, &s);
    }
    ds4_engine_free(e);
}

static void test_stop_and_abort(void **st) {
    fixture *f = *st;
    ds4_engine *e = ds4_engine_create(f->m, f->tok, 1, 0);
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    p.sampler.temperature = 0.9f;
    p.sampler.seed = 3;
    p.max_tokens = 80;
    p.ignore_eos = 1;
    sink full = {0};
    ds4_seq s;
    assert_int_equal(run(e, "the dog", &p, &full, &s), DS4_FINISH_LENGTH);
    ds4_seq_release(e, &s);
    /* a stop string taken from the middle of the output (no NUL bytes) */
    size_t at = full.len / 2;
    while (at + 3 < full.len && memchr(full.buf + at, 0, 3)) at++;
    assert_true(at + 3 < full.len);
    char stop[4];
    memcpy(stop, full.buf + at, 3);
    stop[3] = 0;
    const char *first = memmem(full.buf, full.len, stop, 3);
    size_t expect = (size_t)(first - full.buf);
    p.stop[0] = "never-appears-in-output";
    p.stop[1] = stop;
    p.n_stop = 2;
    sink k = {0};
    assert_int_equal(run(e, "the dog", &p, &k, &s), DS4_FINISH_STOP);
    assert_int_equal(k.len, expect);
    assert_memory_equal(k.buf, full.buf, expect);
    assert_true(s.n_generated < 80);
    ds4_seq_release(e, &s);
    /* the callback asks to stop after 3 pieces */
    p.n_stop = 0;
    sink a = {.max_pieces = 3};
    assert_int_equal(run(e, "the dog", &p, &a, &s), DS4_FINISH_ABORT);
    assert_int_equal(a.pieces, 3);
    ds4_seq_release(e, &s);
    /* empty prompt: fine with <|bos|>, an error without */
    sink b = {0};
    p.max_tokens = 5;
    assert_int_equal(run(e, "", &p, &b, &s), DS4_FINISH_LENGTH);
    assert_int_equal(s.n_prompt, 1);
    ds4_seq_release(e, &s);
    p.add_bos = 0;
    assert_int_equal(ds4_seq_init_text(e, &s, "", &p, collect, &b), -1);
    assert_non_null(strstr(ds4_error(), "empty"));
    ds4_engine_free(e);
}

/* ds4_generate streams the same text as the engine path; stats add up. */
static void test_generate_wrapper(void **st) {
    fixture *f = *st;
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    p.sampler.temperature = 0;
    p.max_tokens = 40;
    p.ignore_eos = 1;
    p.ctx = 32;
    sink a = {0}, b = {0};
    ds4_gen_stats gs;
    assert_int_equal(ds4_generate(f->m, f->tok, "one two", &p, collect, &a, &gs), 0);
    ds4_engine *e = ds4_engine_create(f->m, f->tok, 1, 32);
    ds4_seq s;
    int fin = run(e, "one two", &p, &b, &s);
    assert_int_equal(gs.finish, fin);
    assert_int_equal(gs.prompt_tokens, s.n_prompt);
    assert_int_equal(gs.generated_tokens, s.n_generated);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.buf, b.buf, a.len);
    /* ctx 32: prompt + generated is 33 at most, so the context ends it */
    assert_int_equal(fin, DS4_FINISH_CONTEXT);
    assert_int_equal(gs.prompt_tokens + gs.generated_tokens, 33);
    assert_true(gs.prefill_tok_s > 0 && gs.decode_tok_s > 0);
    ds4_seq_release(e, &s);
    ds4_engine_free(e);
    /* a bad sampler setting is an error, not a crash */
    p.sampler.top_p = 0;
    assert_int_equal(ds4_generate(f->m, f->tok, "x", &p, collect, &a, &gs), -1);
}

/* A model whose vocabulary is larger than the tokenizer's (a world model's
 * video codes sit above the text ids) never samples those ids as text. With
 * the final norm zeroed every logit is 0: the full distribution is uniform, so
 * 200 draws without the mask would hit the upper half with certainty. */
static void test_text_ids_only(void **st) {
    fixture *f = *st;
    const int Vt = ds4_tokenizer_vocab_size(f->tok);
    ds4_config c = f->m->cfg;
    c.vocab_size = 2 * Vt;
    ds4_model *m = ds4_model_create(&c, 5);
    assert_non_null(m);
    const ds4_tensor_info *norm = ds4_layout_find(&m->layout, "model.norm.weight");
    assert_non_null(norm);
    memset(m->params + norm->offset, 0, norm->numel * sizeof(float));
    ds4_engine *e = ds4_engine_create(m, f->tok, 1, 0);
    assert_non_null(e);
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    p.sampler.temperature = 1.0f;
    p.sampler.seed = 3;
    p.max_tokens = 100;
    p.ignore_eos = 1;
    int seen = 0;
    for (int trial = 0; trial < 2; trial++) {
        sink k = {0};
        ds4_seq s;
        p.sampler.seed = 3 + trial;
        run(e, "the", &p, &k, &s);
        for (int i = s.n_prompt; i < s.n_tokens; i++) {
            assert_true(s.tokens[i] >= 0 && s.tokens[i] < Vt);
            seen++;
        }
        ds4_seq_release(e, &s);
    }
    assert_int_equal(seen, 200);
    ds4_engine_free(e);
    ds4_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_equals_decode),
        cmocka_unit_test(test_stop_and_abort),
        cmocka_unit_test(test_generate_wrapper),
        cmocka_unit_test(test_text_ids_only),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
