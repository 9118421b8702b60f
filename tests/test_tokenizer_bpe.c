/* test_tokenizer_bpe.c — the byte-level BPE: pre-tokenizer splits worked out
 * by hand, merges learned on tiny corpora computed by hand, the trainer
 * against a naive recount-everything trainer, the encoder against a naive
 * "merge the lowest rank pair" loop, and exact round trips for any bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer/bpe.h"
#include "test_tokenizer_text.h"

/* ---- pre-tokenizer ----------------------------------------------------- */
/* Split text and compare with the expected pieces (NULL-terminated list). */
static void check_split(const char *text, const char *const *want) {
    size_t len = strlen(text), pos = 0;
    int i = 0;
    while (pos < len) {
        size_t n = bpe_pretok_next((const uint8_t *)text, len, pos);
        if (!want[i]) fail_msg("split of \"%s\": extra piece \"%.*s\"", text, (int)n, text + pos);
        if (n != strlen(want[i]) || memcmp(text + pos, want[i], n))
            fail_msg("split of \"%s\": piece %d is \"%.*s\", want \"%s\"", text, i, (int)n, text + pos, want[i]);
        pos += n;
        i++;
    }
    if (want[i]) fail_msg("split of \"%s\": missing piece \"%s\"", text, want[i]);
}

static void test_pretok_ascii(void **state) {
    (void)state;
    check_split("Hello world", (const char *[]){"Hello", " world", NULL});
    check_split("it's they're we've I'm you'll he'd don't",
                (const char *[]){"it", "'s", " they", "'re", " we", "'ve", " I", "'m", " you", "'ll",
                                 " he", "'d", " don", "'t", NULL});
    /* contractions are lower case only; a quote run is "other" */
    check_split("IT'S ''s", (const char *[]){"IT", "'", "S", " ''", "s", NULL});
    check_split("a  b", (const char *[]){"a", " ", " b", NULL});
    check_split("a   \n\n  b  ", (const char *[]){"a", "   \n\n ", " b", "  ", NULL});
    check_split("x\ty", (const char *[]){"x", "\t", "y", NULL});
    check_split("x\t\ty", (const char *[]){"x", "\t", "\t", "y", NULL});
    check_split("abc123 456.7!!?", (const char *[]){"abc", "123", " 456", ".", "7", "!!?", NULL});
    check_split(" !x", (const char *[]){" !", "x", NULL});
    check_split("  ", (const char *[]){"  ", NULL});
    check_split("'", (const char *[]){"'", NULL});
    check_split("'l", (const char *[]){"'", "l", NULL});
}

static void test_pretok_unicode(void **state) {
    (void)state;
    check_split("café naïve", (const char *[]){"café", " naïve", NULL});
    check_split("日本語テキスト", (const char *[]){"日本語テキスト", NULL});
    check_split("a\u2014b", (const char *[]){"a", "\u2014", "b", NULL});           /* em dash: other */
    check_split("x \u00bd2", (const char *[]){"x", " \u00bd2", NULL});            /* ½ is \p{N} */
    check_split("a\u00a0b", (const char *[]){"a", "\u00a0", "b", NULL});          /* NBSP is \s */
    check_split("a \u00a0b", (const char *[]){"a", " ", "\u00a0", "b", NULL});
    check_split("a\u3000\u3000b", (const char *[]){"a", "\u3000", "\u3000", "b", NULL});
    check_split("e\u0301x", (const char *[]){"e", "\u0301", "x", NULL});         /* combining mark: other */
    check_split("€5 ££", (const char *[]){"€", "5", " ££", NULL});
    /* invalid UTF-8 bytes count as "other", one code point each */
    check_split("a\xff\xfe b\xc3", (const char *[]){"a", "\xff\xfe", " b", "\xc3", NULL});
    check_split("\xed\xa0\x80x", (const char *[]){"\xed\xa0\x80", "x", NULL});      /* surrogate */
}

/* ---- the GPT-2 byte mapping ------------------------------------------- */
static void test_byte_mapping(void **state) {
    (void)state;
    int seen[512] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t cp = bpe_byte_to_cp((uint8_t)b);
        assert_true(cp < 512);
        assert_int_equal(seen[cp], 0);
        seen[cp] = 1;
        assert_int_equal(bpe_cp_to_byte(cp), b);
    }
    assert_int_equal(bpe_byte_to_cp(' '), 0x120);   /* 'Ġ' */
    assert_int_equal(bpe_byte_to_cp('\n'), 0x10A);  /* 'Ċ' */
    assert_int_equal(bpe_byte_to_cp('A'), 'A');
    assert_int_equal(bpe_byte_to_cp(0xAD), 0x143);  /* the last remapped byte */
    assert_int_equal(bpe_cp_to_byte(0x144), -1);
}

/* ---- training: hand-computed merges ------------------------------------ */
static ds4_tokenizer *train_or_fail(const char *text, size_t len, int vocab) {
    ds4_tokenizer *t = ds4_tokenizer_train(text, len, vocab, 0);
    if (!t) fail_msg("train: %s", ds4_error());
    return t;
}

static void assert_token(const ds4_tokenizer *t, int id, const char *want) {
    const char *b;
    size_t n;
    assert_int_equal(ds4_tokenizer_token_bytes(t, id, &b, &n), 0);
    if (n != strlen(want) || memcmp(b, want, n)) fail_msg("token %d is \"%.*s\", want \"%s\"", id, (int)n, b, want);
}

static void assert_ids(const ds4_tokenizer *t, const char *text, const int *want, size_t n_want) {
    int *ids;
    size_t n;
    assert_int_equal(ds4_tokenizer_encode(t, text, strlen(text), &ids, &n), 0);
    assert_int_equal(n, n_want);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], want[i]);
    free(ids);
}

static void test_train_aaabdaaabac(void **state) {
    (void)state;
    /* One piece, pairs: aa x4, ab x2, bd da ba ac x1 -> aa (256).
     * Then Z=aa: "Z a b d Z a b a c": Za x2, ab x2 tie -> smaller pair (97,98) = ab (257).
     * Then "Z Y d Z Y a c": ZY x2 -> 258 = "aaab". */
    const char *text = "aaabdaaabac";
    ds4_tokenizer *t = train_or_fail(text, strlen(text), 256 + 3 + BPE_N_SPECIAL);
    assert_int_equal(ds4_tokenizer_vocab_size(t), 265);
    assert_int_equal(t->n_merges, 3);
    assert_token(t, 256, "aa");
    assert_token(t, 257, "ab");
    assert_token(t, 258, "aaab");
    assert_int_equal(t->merge_left[2], 256);
    assert_int_equal(t->merge_right[2], 257);
    assert_ids(t, text, (const int[]){258, 'd', 258, 'a', 'c'}, 5);
    /* leftmost aa first: "aaaab" -> aa aa b (the ab is taken by the second aa) */
    assert_ids(t, "aaaab", (const int[]){256, 256, 'b'}, 3);
    assert_ids(t, "aaa", (const int[]){256, 'a'}, 2);
    ds4_tokenizer_free(t);
}

static void test_train_weighted_words(void **state) {
    (void)state;
    /* Pieces: "ab" x1, " ab" x2, " cd" x1. Pairs: ab 3, " a" 2, " c" 1, cd 1.
     * 256 = ab; then " "+256 (2) = 257; then " c" (32,99) and cd (99,100) tie
     * at 1 -> " c" = 258; then 258 + d = 259 = " cd". No pairs remain. */
    const char *text = "ab ab ab cd";
    ds4_tokenizer *t = train_or_fail(text, strlen(text), 1000);
    assert_int_equal(t->n_merges, 4);
    assert_int_equal(ds4_tokenizer_vocab_size(t), 256 + 4 + BPE_N_SPECIAL);
    assert_token(t, 256, "ab");
    assert_token(t, 257, " ab");
    assert_token(t, 258, " c");
    assert_token(t, 259, " cd");
    assert_ids(t, text, (const int[]){256, 257, 257, 259}, 4);
    /* specials follow the merges, in order, and are never produced by encode */
    for (int i = 0; i < BPE_N_SPECIAL; i++) {
        assert_int_equal(ds4_tokenizer_special(t, BPE_SPECIALS[i]), 260 + i);
        assert_token(t, 260 + i, BPE_SPECIALS[i]);
    }
    assert_int_equal(ds4_tokenizer_special(t, "<|nope|>"), -1);
    int *ids;
    size_t n;
    assert_int_equal(ds4_tokenizer_encode(t, "<|bos|>", 7, &ids, &n), 0);
    for (size_t i = 0; i < n; i++) assert_true(ids[i] < 256);
    free(ids);
    ds4_tokenizer_free(t);
}

static void test_train_errors(void **state) {
    (void)state;
    assert_null(ds4_tokenizer_train("abc", 3, 261, 0));
    assert_non_null(strstr(ds4_error(), "vocab size"));
    /* empty corpus: no merges, just bytes + specials */
    ds4_tokenizer *t = train_or_fail("", 0, 300);
    assert_int_equal(ds4_tokenizer_vocab_size(t), 262);
    ds4_tokenizer_free(t);
}

/* ---- training: against a naive trainer --------------------------------
 * Every step recounts all pairs over all pieces (no incremental update),
 * picks the highest count with the smallest (left, right) on ties, and
 * merges left to right. */
typedef struct { int *s; int n; } naive_word;

static int naive_train(const char *text, size_t len, int n_merges, int *ml, int *mr) {
    size_t cap = len + 1, nw = 0;
    naive_word *w = malloc(cap * sizeof *w);
    for (size_t pos = 0; pos < len;) {
        size_t n = bpe_pretok_next((const uint8_t *)text, len, pos);
        w[nw].s = malloc(n * sizeof(int));
        w[nw].n = (int)n;
        for (size_t i = 0; i < n; i++) w[nw].s[i] = (uint8_t)text[pos + i];
        nw++;
        pos += n;
    }
    int max_id = 256 + n_merges;
    int64_t *cnt = malloc((size_t)max_id * max_id * sizeof *cnt);   /* (max_id, max_id) */
    int m = 0;
    for (; m < n_merges; m++) {
        memset(cnt, 0, (size_t)max_id * max_id * sizeof *cnt);
        for (size_t k = 0; k < nw; k++)
            for (int i = 0; i + 1 < w[k].n; i++) cnt[(size_t)w[k].s[i] * max_id + w[k].s[i + 1]]++;
        int64_t best = 0;
        size_t bi = 0;
        for (size_t i = 0; i < (size_t)max_id * max_id; i++)
            if (cnt[i] > best) { best = cnt[i]; bi = i; }   /* first max = smallest pair */
        if (best == 0) break;
        int a = (int)(bi / max_id), b = (int)(bi % max_id), c = 256 + m;
        ml[m] = a;
        mr[m] = b;
        for (size_t k = 0; k < nw; k++) {
            int j = 0;
            for (int i = 0; i < w[k].n; i++) {
                if (i + 1 < w[k].n && w[k].s[i] == a && w[k].s[i + 1] == b) { w[k].s[j++] = c; i++; }
                else w[k].s[j++] = w[k].s[i];
            }
            w[k].n = j;
        }
    }
    for (size_t k = 0; k < nw; k++) free(w[k].s);
    free(w);
    free(cnt);
    return m;
}

static void check_vs_naive(const char *text, size_t len, int n_merges) {
    ds4_tokenizer *t = train_or_fail(text, len, 256 + n_merges + BPE_N_SPECIAL);
    int *ml = malloc((size_t)n_merges * sizeof *ml), *mr = malloc((size_t)n_merges * sizeof *mr);
    int m = naive_train(text, len, n_merges, ml, mr);
    assert_int_equal(t->n_merges, m);
    for (int r = 0; r < m; r++) {
        if (t->merge_left[r] != ml[r] || t->merge_right[r] != mr[r])
            fail_msg("merge %d: trainer (%d, %d), naive (%d, %d)", r, t->merge_left[r],
                     t->merge_right[r], ml[r], mr[r]);
        assert_int_equal(t->merge_out[r], 256 + r);
    }
    free(ml);
    free(mr);
    ds4_tokenizer_free(t);
}

static void test_train_vs_naive(void **state) {
    (void)state;
    size_t len;
    char *text = tt_text(7, 30000, &len);
    check_vs_naive(text, len, 300);
    /* runs over a two-letter alphabet: overlapping pairs (a a a a, a b a b),
     * merges next to merges, words that run out of pairs */
    ds4_rng r;
    ds4_rng_seed(&r, 8);
    size_t k = 0;
    while (k < 6000) {
        int n = 1 + (int)(ds4_rng_u64(&r) % 40);
        int mode = (int)(ds4_rng_u64(&r) % 3);
        for (int i = 0; i < n; i++)
            text[k++] = mode == 0 ? 'a' : mode == 1 ? "ab"[i & 1] : "ab"[ds4_rng_u64(&r) % 2];
        text[k++] = ' ';
    }
    check_vs_naive(text, k, 150);
    free(text);
}

/* ---- encoding: against a naive loop ------------------------------------ */
/* Encode one piece: repeatedly merge the adjacent pair of lowest rank (the
 * leftmost one on ties) by scanning all merges. */
static int naive_piece(const ds4_tokenizer *t, const uint8_t *p, int n, int *out) {
    for (int i = 0; i < n; i++) out[i] = p[i];
    for (;;) {
        int best_r = -1, best_i = -1;
        for (int i = 0; i + 1 < n; i++)
            for (int r = 0; r < t->n_merges && (best_r < 0 || r < best_r); r++)
                if (t->merge_left[r] == out[i] && t->merge_right[r] == out[i + 1]) { best_r = r; best_i = i; }
        if (best_r < 0) return n;
        out[best_i] = t->merge_out[best_r];
        memmove(out + best_i + 1, out + best_i + 2, (size_t)(n - best_i - 2) * sizeof *out);
        n--;
    }
}

static void test_encode_vs_naive(void **state) {
    (void)state;
    size_t len, len2;
    char *train = tt_text(11, 40000, &len);
    char *text = tt_text(12, 8000, &len2);   /* >= 4096 bytes: the piece cache is used */
    ds4_tokenizer *t = train_or_fail(train, len, 256 + 200 + BPE_N_SPECIAL);
    for (int round = 0; round < 2; round++) {
        size_t n_text = round ? 3000 : len2;   /* second round: no cache */
        int *ids, *want = malloc(n_text * sizeof *want);
        size_t n, k = 0;
        assert_int_equal(ds4_tokenizer_encode(t, text, n_text, &ids, &n), 0);
        for (size_t pos = 0; pos < n_text;) {
            size_t pn = bpe_pretok_next((const uint8_t *)text, n_text, pos);
            k += (size_t)naive_piece(t, (const uint8_t *)text + pos, (int)pn, want + k);
            pos += pn;
        }
        assert_int_equal(n, k);
        for (size_t i = 0; i < n; i++)
            if (ids[i] != want[i]) fail_msg("round %d: id %zu is %d, naive %d", round, i, ids[i], want[i]);
        assert_true(n < n_text / 2);   /* the merges do compress */
        free(ids);
        free(want);
    }
    ds4_tokenizer_free(t);
    free(train);
    free(text);
}

/* ---- round trips -------------------------------------------------------- */
static void round_trip(const ds4_tokenizer *t, const char *s, size_t n) {
    int *ids;
    size_t n_ids;
    char *back;
    size_t back_len;
    assert_int_equal(ds4_tokenizer_encode(t, s, n, &ids, &n_ids), 0);
    assert_true(n_ids <= n);
    for (size_t i = 0; i < n_ids; i++) assert_true(ids[i] >= 0 && ids[i] < ds4_tokenizer_vocab_size(t));
    assert_int_equal(ds4_tokenizer_decode(t, ids, n_ids, &back, &back_len), 0);
    assert_int_equal(back_len, n);
    assert_memory_equal(back, s, n);
    assert_int_equal(back[back_len], 0);
    free(ids);
    free(back);
}

static void test_round_trips(void **state) {
    (void)state;
    size_t len;
    char *train = tt_text(3, 50000, &len);
    ds4_tokenizer *t = train_or_fail(train, len, 512);
    round_trip(t, "", 0);
    round_trip(t, train, len);
    /* invalid UTF-8: lone continuation, overlong, surrogate, > U+10FFFF, truncated, NUL */
    const char *bad[] = {"\x80", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf5\x80",
                         "ab\xe2\x82", "\xe2\x82 x", "\xff\xfe\xfd", "a\0b", " \xc3\xa9\xc3"};
    size_t bad_len[] = {1, 2, 3, 4, 2, 4, 4, 3, 3, 4};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) round_trip(t, bad[i], bad_len[i]);
    /* random bytes, short and long (cache on), and random mixes of text and bytes */
    ds4_rng r;
    ds4_rng_seed(&r, 99);
    char *buf = malloc(20000);
    for (int iter = 0; iter < 300; iter++) {
        size_t n = iter < 290 ? ds4_rng_u64(&r) % 64 : 5000 + ds4_rng_u64(&r) % 15000;
        int mode = (int)(ds4_rng_u64(&r) % 3);
        for (size_t i = 0; i < n; i++) {
            if (mode == 0) buf[i] = (char)ds4_rng_u64(&r);
            else if (mode == 1) buf[i] = " \n\t'aes1.\xc3\xa9\xe2\x80\x94"[ds4_rng_u64(&r) % 14];
            else buf[i] = train[ds4_rng_u64(&r) % len];
        }
        round_trip(t, buf, n);
    }
    /* a long run of one byte class: one huge piece */
    memset(buf, 'a', 20000);
    round_trip(t, buf, 20000);
    memset(buf, ' ', 20000);
    round_trip(t, buf, 20000);
    free(buf);
    /* decode: out-of-range ids are errors; specials decode to their text */
    char *out;
    size_t out_len;
    int badid[] = {5, 512};
    assert_int_equal(ds4_tokenizer_decode(t, badid, 2, &out, &out_len), -1);
    assert_non_null(strstr(ds4_error(), "512"));
    int neg[] = {-1};
    assert_int_equal(ds4_tokenizer_decode(t, neg, 1, &out, &out_len), -1);
    int sp[] = {ds4_tokenizer_special(t, "<|bos|>"), 'h', 'i', ds4_tokenizer_special(t, "<|eos|>")};
    assert_int_equal(ds4_tokenizer_decode(t, sp, 4, &out, &out_len), 0);
    assert_string_equal(out, "<|bos|>hi<|eos|>");
    free(out);
    const char *b;
    size_t bl;
    assert_int_equal(ds4_tokenizer_token_bytes(t, 512, &b, &bl), -1);
    ds4_tokenizer_free(t);
    free(train);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pretok_ascii),
        cmocka_unit_test(test_pretok_unicode),
        cmocka_unit_test(test_byte_mapping),
        cmocka_unit_test(test_train_aaabdaaabac),
        cmocka_unit_test(test_train_weighted_words),
        cmocka_unit_test(test_train_errors),
        cmocka_unit_test(test_train_vs_naive),
        cmocka_unit_test(test_encode_vs_naive),
        cmocka_unit_test(test_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
