/* test_tokenizer_shard.c — binary token shards: the exact byte layout
 * ("DS4TOK01", uint64 LE count, uint32 LE ids) checked by hand, write/read
 * round trips, and corrupt files (bad magic, truncated header or ids, count
 * mismatch, ids out of range) giving clear errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include "test_tokenizer_text.h"

static void test_layout(void **state) {
    (void)state;
    const int ids[3] = {1, 0x01020304, 70000};
    const char *p = tt_tmp("a.tok");
    assert_int_equal(ds4_shard_write(p, ids, 3), 0);
    char *data;
    size_t len;
    assert_int_equal(ds4_read_file(p, &data, &len), 0);
    const unsigned char want[28] = {'D', 'S', '4', 'T', 'O', 'K', '0', '1',
                                    3, 0, 0, 0, 0, 0, 0, 0,
                                    1, 0, 0, 0,
                                    4, 3, 2, 1,
                                    0x70, 0x11, 0x01, 0};
    assert_int_equal(len, 28);
    assert_memory_equal(data, want, 28);
    free(data);
    remove(p);
}

static void test_round_trip(void **state) {
    (void)state;
    const char *p = tt_tmp("b.tok");
    ds4_rng r;
    ds4_rng_seed(&r, 1);
    size_t sizes[] = {0, 1, 4095, 4096, 4097, 200000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        int *ids = malloc((n ? n : 1) * sizeof *ids);
        for (size_t i = 0; i < n; i++) ids[i] = (int)(ds4_rng_u64(&r) % (i & 1 ? 4096 : 0x7FFFFFFF));
        assert_int_equal(ds4_shard_write(p, ids, n), 0);
        int *back;
        size_t nb;
        if (ds4_shard_read(p, &back, &nb) < 0) fail_msg("read: %s", ds4_error());
        assert_int_equal(nb, n);
        if (n) assert_memory_equal(back, ids, n * sizeof *ids);
        free(back);
        free(ids);
    }
    remove(p);
}

static void expect_read_error(const void *bytes, size_t len, const char *want) {
    const char *p = tt_tmp("bad.tok");
    assert_int_equal(ds4_write_file_atomic(p, bytes, len), 0);
    int *ids = NULL;
    size_t n = 0;
    if (ds4_shard_read(p, &ids, &n) == 0) fail_msg("a corrupt shard was read (want error \"%s\")", want);
    if (!strstr(ds4_error(), want)) fail_msg("error \"%s\" does not mention \"%s\"", ds4_error(), want);
    if (!strstr(ds4_error(), "bad.tok")) fail_msg("error \"%s\" does not name the file", ds4_error());
    remove(p);
}

static void test_corrupt(void **state) {
    (void)state;
    unsigned char good[24] = {'D', 'S', '4', 'T', 'O', 'K', '0', '1', 2, 0, 0, 0, 0, 0, 0, 0,
                              7, 0, 0, 0, 9, 0, 0, 0};
    unsigned char b[32];
    expect_read_error("", 0, "not a token shard");
    expect_read_error("DS4TOK", 6, "not a token shard");
    memcpy(b, good, 24);
    b[7] = '2';
    expect_read_error(b, 24, "not a token shard");
    expect_read_error(good, 12, "header is truncated");
    expect_read_error(good, 20, "truncated");                 /* one id missing */
    memcpy(b, good, 24);
    b[8] = 1;
    expect_read_error(b, 24, "count mismatch");               /* header 1 id, file has 2 */
    memcpy(b, good, 24);
    memcpy(b + 24, "\0\0\0", 3);
    expect_read_error(b, 27, "count mismatch");               /* a stray partial id */
    memcpy(b, good, 24);
    b[15] = 0x80;                                             /* a count near 2^63 */
    expect_read_error(b, 24, "truncated");
    memcpy(b, good, 24);
    b[23] = 0x80;                                             /* id 2^31 + 9 */
    expect_read_error(b, 24, "out of range");
    int *ids;
    size_t n;
    assert_int_equal(ds4_shard_read("/nonexistent/x.tok", &ids, &n), -1);
    assert_non_null(strstr(ds4_error(), "/nonexistent/x.tok"));
    const int neg[2] = {3, -4};
    assert_int_equal(ds4_shard_write(tt_tmp("neg.tok"), neg, 2), -1);
    assert_non_null(strstr(ds4_error(), "negative"));
    assert_false(ds4_file_exists(tt_tmp("neg.tok")));
}

/* Encoding a text into a shard and decoding it back gives the text. */
static void test_text_through_shard(void **state) {
    (void)state;
    size_t len;
    char *text = tt_text(31, 20000, &len);
    ds4_tokenizer *t = ds4_tokenizer_train(text, len, 600, 0);
    assert_non_null(t);
    int *ids, *back;
    size_t n, nb;
    assert_int_equal(ds4_tokenizer_encode(t, text, len, &ids, &n), 0);
    assert_int_equal(ds4_shard_write(tt_tmp("c.tok"), ids, n), 0);
    assert_int_equal(ds4_shard_read(tt_tmp("c.tok"), &back, &nb), 0);
    char *dec;
    size_t dec_len;
    assert_int_equal(ds4_tokenizer_decode(t, back, nb, &dec, &dec_len), 0);
    assert_int_equal(dec_len, len);
    assert_memory_equal(dec, text, len);
    free(dec);
    free(ids);
    free(back);
    free(text);
    ds4_tokenizer_free(t);
    remove(tt_tmp("c.tok"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_text_through_shard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
