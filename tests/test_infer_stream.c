/* test_infer_stream.c — streaming text with stop strings and UTF-8 hold-back:
 * hand-made cases, and random texts split at random points checked against a
 * direct search for the first stop string. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"

/* Push each piece; check what comes out of each push. */
typedef struct { const char *in; const char *out; int ret; } step;

static void run_steps(const char *const *stops, int n_stop, const step *steps, int n,
                      const char *flush_out) {
    ds4_stream s;
    assert_int_equal(ds4_stream_init(&s, stops, n_stop), 0);
    for (int i = 0; i < n; i++) {
        const char *o; size_t ol;
        int r = ds4_stream_push(&s, steps[i].in, strlen(steps[i].in), &o, &ol);
        assert_int_equal(r, steps[i].ret);
        assert_int_equal(ol, strlen(steps[i].out));
        assert_memory_equal(o, steps[i].out, ol);
    }
    const char *o; size_t ol;
    ds4_stream_flush(&s, &o, &ol);
    assert_int_equal(ol, strlen(flush_out));
    assert_memory_equal(o, flush_out, ol);
    ds4_stream_free(&s);
}

static void test_no_stop(void **st) {
    (void)st;
    step steps[] = {{"Hel", "Hel", 0}, {"lo", "lo", 0}, {"", "", 0}, {" world", " world", 0}};
    run_steps(NULL, 0, steps, 4, "");
}

static void test_stop_across_tokens(void **st) {
    (void)st;
    const char *stops[] = {"###"};
    step a[] = {{"ab#", "ab", 0}, {"#", "", 0}, {"#cd", "", 1}, {"more", "", 1}};
    run_steps(stops, 1, a, 4, "");
    /* held back, then it is not a stop after all */
    step b[] = {{"a##", "a", 0}, {"b", "##b", 0}, {"#", "", 0}};
    run_steps(stops, 1, b, 3, "#");
    const char *stops2[] = {"<|end|>"};
    step c[] = {{"Hi <", "Hi ", 0}, {"|", "", 0}, {"end", "", 0}, {"|>", "", 1}};
    run_steps(stops2, 1, c, 4, "");
    /* a stop string inside one token: text before it comes out */
    const char *stops3[] = {"STOP"};
    step d[] = {{"hello STOP world", "hello ", 1}};
    run_steps(stops3, 1, d, 1, "");
    /* overlapping prefixes: "aab" in "aaab" */
    const char *stops4[] = {"aab"};
    step e[] = {{"xa", "x", 0}, {"a", "", 0}, {"a", "a", 0}, {"b", "", 1}};
    run_steps(stops4, 1, e, 4, "");
}

static void test_earliest_stop(void **st) {
    (void)st;
    const char *stops[] = {"a", "bb", ""};                /* empty: ignored */
    ds4_stream s;
    assert_int_equal(ds4_stream_init(&s, stops, 3), 0);
    assert_int_equal(s.n_stop, 2);
    const char *o; size_t ol;
    assert_int_equal(ds4_stream_push(&s, "xb", 2, &o, &ol), 0);
    assert_int_equal(ol, 1);
    assert_int_equal(ds4_stream_push(&s, "ba", 2, &o, &ol), 1);
    assert_int_equal(ol, 0);
    assert_int_equal(s.stop_index, 1);
    ds4_stream_free(&s);
}

static void test_utf8(void **st) {
    (void)st;
    /* é = C3 A9 split in two tokens */
    step a[] = {{"caf\xc3", "caf", 0}, {"\xa9!", "\xc3\xa9!", 0}};
    run_steps(NULL, 0, a, 2, "");
    /* 😀 = F0 9F 98 80 in three pieces */
    step b[] = {{"\xf0", "", 0}, {"\x9f\x98", "", 0}, {"\x80", "\xf0\x9f\x98\x80", 0}};
    run_steps(NULL, 0, b, 3, "");
    /* incomplete at the end: flushed as is */
    step c[] = {{"x\xe2\x82", "x", 0}};
    run_steps(NULL, 0, c, 1, "\xe2\x82");
    /* invalid bytes are not held */
    step d[] = {{"\x80", "\x80", 0}, {"\xff", "\xff", 0}, {"a\xc0", "a\xc0", 0}};
    run_steps(NULL, 0, d, 3, "");
    /* with a stop string made of multibyte characters */
    const char *stops[] = {"\xe2\x80\x94\xe2\x80\x94"};  /* "——" */
    step e[] = {{"a\xe2", "a", 0}, {"\x80\x94", "", 0}, {"b", "\xe2\x80\x94" "b", 0},
                {"\xe2\x80\x94\xe2", "", 0}, {"\x80\x94z", "", 1}};
    run_steps(stops, 1, e, 5, "");
    assert_int_equal(ds4_utf8_incomplete_tail("\xe2\x82\xac", 3), 0);
    assert_int_equal(ds4_utf8_incomplete_tail("\xe2\x82", 2), 2);
    assert_int_equal(ds4_utf8_incomplete_tail("ab", 2), 0);
    assert_int_equal(ds4_utf8_incomplete_tail("", 0), 0);
}

static void test_errors(void **st) {
    (void)st;
    const char *many[DS4_MAX_STOP + 1];
    for (int i = 0; i <= DS4_MAX_STOP; i++) many[i] = "x";
    ds4_stream s;
    assert_int_equal(ds4_stream_init(&s, many, DS4_MAX_STOP + 1), -1);
    assert_int_equal(ds4_stream_init(&s, NULL, 2), -1);
}

/* Longest suffix of t[0, n) that is a proper prefix of a stop string. */
static size_t ref_hold(const char *t, size_t n, char stops[][8], int ns) {
    size_t best = 0;
    for (int i = 0; i < ns; i++) {
        size_t L = strlen(stops[i]);
        for (size_t h = 1; h < L && h <= n; h++)
            if (!memcmp(t + n - h, stops[i], h) && h > best) best = h;
    }
    return best;
}

static void test_random(void **st) {
    (void)st;
    ds4_rng r; ds4_rng_seed(&r, 77);
    char text[200], out[256], stops[3][8];
    for (int trial = 0; trial < 3000; trial++) {
        int n = 1 + (int)(ds4_rng_u64(&r) % 120);
        for (int i = 0; i < n; i++) text[i] = "abc"[ds4_rng_u64(&r) % 3];
        text[n] = 0;
        int ns = (int)(ds4_rng_u64(&r) % 4);
        const char *sp[3];
        for (int k = 0; k < ns; k++) {
            int L = 1 + (int)(ds4_rng_u64(&r) % 5);
            for (int i = 0; i < L; i++) stops[k][i] = "abc"[ds4_rng_u64(&r) % 3];
            stops[k][L] = 0;
            sp[k] = stops[k];
        }
        /* reference: feed bytes one at a time; stop at the first byte that
         * completes a stop string; cut at the start of the longest one
         * ending there */
        size_t end = (size_t)n;
        int stop_at = 0;
        for (size_t e = 1; e <= (size_t)n && !stop_at; e++)
            for (int k = 0; k < ns; k++) {
                size_t L = strlen(stops[k]);
                if (L <= e && !memcmp(text + e - L, stops[k], L)) {
                    if (!stop_at || e - L < end) end = e - L;
                    stop_at = 1;
                }
            }
        ds4_stream s;
        assert_int_equal(ds4_stream_init(&s, sp, ns), 0);
        size_t olen = 0, pos = 0;
        int stopped = 0;
        while (pos < (size_t)n) {
            size_t piece = 1 + ds4_rng_u64(&r) % 6;
            if (pos + piece > (size_t)n) piece = (size_t)n - pos;
            const char *o; size_t ol;
            int ret = ds4_stream_push(&s, text + pos, piece, &o, &ol);
            memcpy(out + olen, o, ol);
            olen += ol;
            pos += piece;
            if (ret == 1) { stopped = 1; break; }
            /* minimal hold: everything but the longest stop-prefix suffix is out */
            assert_int_equal(olen, pos - ref_hold(text, pos, stops, ns));
        }
        if (!stopped) {
            const char *o; size_t ol;
            ds4_stream_flush(&s, &o, &ol);
            memcpy(out + olen, o, ol);
            olen += ol;
        }
        assert_int_equal(stopped, stop_at);
        assert_int_equal(olen, end);
        assert_memory_equal(out, text, end);
        ds4_stream_free(&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stop),
        cmocka_unit_test(test_stop_across_tokens),
        cmocka_unit_test(test_earliest_stop),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
