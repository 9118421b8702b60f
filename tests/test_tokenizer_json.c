/* test_tokenizer_json.c — tokenizer.json: save -> load gives the same tokens,
 * merges and ids; the file has the Hugging Face layout; malformed files
 * (bad JSON, missing or mistyped fields, merges naming unknown tokens,
 * truncations and byte flips) give an error naming the problem, never a crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer/bpe.h"
#include "test_tokenizer_text.h"

#define GET(o, k) cJSON_GetObjectItemCaseSensitive((o), (k))
#define REPLACE(o, k, v) cJSON_ReplaceItemInObjectCaseSensitive((o), (k), (v))
#define DELETE(o, k) cJSON_DeleteItemFromObjectCaseSensitive((o), (k))

static char *g_train, *g_text;
static size_t g_train_len, g_text_len;
static ds4_tokenizer *g_tok;
static char *g_json;        /* the saved file's text */
static size_t g_json_len;

static int setup(void **state) {
    (void)state;
    g_train = tt_text(21, 40000, &g_train_len);
    g_text = tt_text(22, 6000, &g_text_len);
    g_tok = ds4_tokenizer_train(g_train, g_train_len, 700, 0);
    if (!g_tok) return -1;
    if (ds4_tokenizer_save(g_tok, tt_tmp("tok.json")) < 0) return -1;
    return ds4_read_file(tt_tmp("tok.json"), &g_json, &g_json_len);
}

static int teardown(void **state) {
    (void)state;
    remove(tt_tmp("tok.json"));
    remove(tt_tmp("bad.json"));
    ds4_tokenizer_free(g_tok);
    free(g_train);
    free(g_text);
    free(g_json);
    return 0;
}

static void test_save_load_same(void **state) {
    (void)state;
    ds4_tokenizer *t = ds4_tokenizer_load(tt_tmp("tok.json"));
    if (!t) fail_msg("load: %s", ds4_error());
    assert_int_equal(ds4_tokenizer_vocab_size(t), 700);
    assert_int_equal(t->n_model, g_tok->n_model);
    assert_int_equal(t->n_merges, g_tok->n_merges);
    for (int id = 0; id < 700; id++) {
        const char *a, *b;
        size_t la, lb;
        assert_int_equal(ds4_tokenizer_token_bytes(t, id, &a, &la), 0);
        assert_int_equal(ds4_tokenizer_token_bytes(g_tok, id, &b, &lb), 0);
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, la);
    }
    for (int r = 0; r < t->n_merges; r++) {
        assert_int_equal(t->merge_left[r], g_tok->merge_left[r]);
        assert_int_equal(t->merge_right[r], g_tok->merge_right[r]);
        assert_int_equal(t->merge_out[r], g_tok->merge_out[r]);
    }
    for (int i = 0; i < BPE_N_SPECIAL; i++)
        assert_int_equal(ds4_tokenizer_special(t, BPE_SPECIALS[i]), 700 - BPE_N_SPECIAL + i);
    int *a, *b;
    size_t na, nb;
    assert_int_equal(ds4_tokenizer_encode(t, g_text, g_text_len, &a, &na), 0);
    assert_int_equal(ds4_tokenizer_encode(g_tok, g_text, g_text_len, &b, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(a);
    free(b);
    /* save the loaded one again: byte-identical file */
    assert_int_equal(ds4_tokenizer_save(t, tt_tmp("bad.json")), 0);
    char *again;
    size_t again_len;
    assert_int_equal(ds4_read_file(tt_tmp("bad.json"), &again, &again_len), 0);
    assert_int_equal(again_len, g_json_len);
    assert_memory_equal(again, g_json, g_json_len);
    free(again);
    ds4_tokenizer_free(t);
}

/* The layout Hugging Face expects, checked field by field. */
static void test_hf_layout(void **state) {
    (void)state;
    cJSON *j = cJSON_Parse(g_json);
    assert_non_null(j);
    cJSON *model = GET(j, "model");
    assert_string_equal(GET(model, "type")->valuestring, "BPE");
    cJSON *vocab = GET(model, "vocab");
    assert_int_equal(cJSON_GetArraySize(vocab), 700 - BPE_N_SPECIAL);
    assert_int_equal(GET(vocab, "\xc4\xa0")->valueint, ' ');   /* "Ġ" is the space byte */
    assert_int_equal(GET(vocab, "a")->valueint, 'a');
    assert_int_equal(GET(vocab, "\xc4\x8a")->valueint, '\n');  /* "Ċ" */
    cJSON *merges = GET(model, "merges");
    assert_int_equal(cJSON_GetArraySize(merges), g_tok->n_merges);
    cJSON *pre = GET(j, "pre_tokenizer");
    assert_string_equal(GET(pre, "type")->valuestring, "ByteLevel");
    assert_true(cJSON_IsFalse(GET(pre, "add_prefix_space")));
    assert_true(cJSON_IsTrue(GET(pre, "use_regex")));
    assert_string_equal(GET(GET(j, "decoder"), "type")->valuestring, "ByteLevel");
    cJSON *added = GET(j, "added_tokens");
    assert_int_equal(cJSON_GetArraySize(added), BPE_N_SPECIAL);
    for (int i = 0; i < BPE_N_SPECIAL; i++) {
        cJSON *a = cJSON_GetArrayItem(added, i);
        assert_string_equal(GET(a, "content")->valuestring, BPE_SPECIALS[i]);
        assert_int_equal(GET(a, "id")->valueint, 700 - BPE_N_SPECIAL + i);
        assert_true(cJSON_IsTrue(GET(a, "special")));
    }
    cJSON_Delete(j);
}

/* Write text to bad.json and expect load to fail with an error containing want. */
static void expect_error(const char *text, size_t len, const char *want) {
    assert_int_equal(ds4_write_file_atomic(tt_tmp("bad.json"), text, len), 0);
    ds4_tokenizer *t = ds4_tokenizer_load(tt_tmp("bad.json"));
    if (t) fail_msg("a malformed file loaded (expected an error with \"%s\")", want);
    if (!strstr(ds4_error(), want)) fail_msg("error \"%s\" does not mention \"%s\"", ds4_error(), want);
    if (!strstr(ds4_error(), "bad.json")) fail_msg("error \"%s\" does not name the file", ds4_error());
}

/* Parse the good file, let edit() change it, write it out and expect an error. */
static void expect_edit_error(void (*edit)(cJSON *), const char *want) {
    cJSON *j = cJSON_Parse(g_json);
    edit(j);
    char *s = cJSON_PrintUnformatted(j);
    expect_error(s, strlen(s), want);
    free(s);
    cJSON_Delete(j);
}

static cJSON *model_of(cJSON *j) { return GET(j, "model"); }
static cJSON *vocab_of(cJSON *j) { return GET(model_of(j), "vocab"); }
static cJSON *merges_of(cJSON *j) { return GET(model_of(j), "merges"); }

static void e_no_model(cJSON *j) { DELETE(j, "model"); }
static void e_no_vocab(cJSON *j) { DELETE(model_of(j), "vocab"); }
static void e_vocab_array(cJSON *j) { REPLACE(model_of(j), "vocab", cJSON_CreateArray()); }
static void e_vocab_string_id(cJSON *j) { REPLACE(vocab_of(j), "a", cJSON_CreateString("97")); }
static void e_vocab_frac_id(cJSON *j) { REPLACE(vocab_of(j), "a", cJSON_CreateNumber(97.5)); }
static void e_vocab_big_id(cJSON *j) { REPLACE(vocab_of(j), "a", cJSON_CreateNumber(5000)); }
static void e_vocab_dup_id(cJSON *j) { REPLACE(vocab_of(j), "a", cJSON_CreateNumber(98)); }
static void e_vocab_no_byte(cJSON *j) {
    /* replace the token "ā" for byte 0x01 (in no merge) with one that is not a single byte */
    DELETE(vocab_of(j), "\xc4\x81");
    cJSON_AddNumberToObject(vocab_of(j), "zzzzq", 1);
}
static void e_vocab_bad_char(cJSON *j) {
    DELETE(vocab_of(j), "a");
    cJSON_AddNumberToObject(vocab_of(j), "\xe2\x82\xac", 97);   /* "€" is not a byte-level character */
}
static void e_vocab_empty_token(cJSON *j) {
    DELETE(vocab_of(j), "a");
    cJSON_AddNumberToObject(vocab_of(j), "", 97);
}
static void e_merges_missing(cJSON *j) { DELETE(model_of(j), "merges"); }
static void e_merges_object(cJSON *j) { REPLACE(model_of(j), "merges", cJSON_CreateObject()); }
static void e_merge_no_space(cJSON *j) { cJSON_ReplaceItemInArray(merges_of(j), 3, cJSON_CreateString("ab")); }
static void e_merge_two_spaces(cJSON *j) { cJSON_ReplaceItemInArray(merges_of(j), 3, cJSON_CreateString("a b c")); }
static void e_merge_number(cJSON *j) { cJSON_ReplaceItemInArray(merges_of(j), 0, cJSON_CreateNumber(1)); }
static void e_merge_unknown(cJSON *j) { cJSON_ReplaceItemInArray(merges_of(j), 0, cJSON_CreateString("a zzzzq")); }
static void e_merge_out_missing(cJSON *j) {
    /* "Ā" (byte 0) + "ā" (byte 1): both tokens exist, their concatenation does not */
    cJSON_ReplaceItemInArray(merges_of(j), 0, cJSON_CreateString("\xc4\x80 \xc4\x81"));
}
static void e_merge_dup(cJSON *j) {
    cJSON *first = cJSON_GetArrayItem(merges_of(j), 0);
    cJSON_AddItemToArray(merges_of(j), cJSON_CreateString(first->valuestring));
}
static void e_merge_bad_pair(cJSON *j) {
    cJSON *pair = cJSON_CreateArray();
    cJSON_AddItemToArray(pair, cJSON_CreateString("a"));
    cJSON_ReplaceItemInArray(merges_of(j), 0, pair);
}
static void e_added_object(cJSON *j) { REPLACE(j, "added_tokens", cJSON_CreateObject()); }
static void e_added_gap(cJSON *j) {
    cJSON *a = cJSON_GetArrayItem(GET(j, "added_tokens"), 2);
    REPLACE(a, "id", cJSON_CreateNumber(5000));
}
static void e_added_dup(cJSON *j) {
    cJSON *a = cJSON_GetArrayItem(GET(j, "added_tokens"), 2);
    REPLACE(a, "id", cJSON_CreateNumber(695));
}
static void e_added_content(cJSON *j) {
    cJSON *a = cJSON_GetArrayItem(GET(j, "added_tokens"), 0);
    REPLACE(a, "content", cJSON_CreateNumber(3));
}
static void e_added_no_id(cJSON *j) {
    DELETE(cJSON_GetArrayItem(GET(j, "added_tokens"), 1), "id");
}
static void e_added_not_object(cJSON *j) {
    cJSON_ReplaceItemInArray(GET(j, "added_tokens"), 1, cJSON_CreateNumber(3));
}
static void e_pre_missing(cJSON *j) { DELETE(j, "pre_tokenizer"); }
static void e_pre_type(cJSON *j) {
    REPLACE(GET(j, "pre_tokenizer"), "type", cJSON_CreateString("Whitespace"));
}
static void e_pre_prefix(cJSON *j) {
    REPLACE(GET(j, "pre_tokenizer"), "add_prefix_space", cJSON_CreateTrue());
}
static void e_pre_prefix_type(cJSON *j) {
    REPLACE(GET(j, "pre_tokenizer"), "add_prefix_space", cJSON_CreateNumber(0));
}
static void e_normalizer(cJSON *j) { REPLACE(j, "normalizer", cJSON_CreateObject()); }
static void e_model_type(cJSON *j) { REPLACE(model_of(j), "type", cJSON_CreateString("WordPiece")); }
static void e_ignore_merges(cJSON *j) { REPLACE(model_of(j), "ignore_merges", cJSON_CreateTrue()); }

static void test_malformed(void **state) {
    (void)state;
    expect_error("", 0, "not valid JSON");
    expect_error("{\"model\": ", 10, "not valid JSON");
    expect_error("[1, 2]", 6, "top level");
    expect_error("{\n\"a\": 1,\n\"b\": }", 16, "line 3");
    expect_edit_error(e_no_model, "model");
    expect_edit_error(e_no_vocab, "model.vocab");
    expect_edit_error(e_vocab_array, "model.vocab");
    expect_edit_error(e_vocab_string_id, "model.vocab[a] must be a number");
    expect_edit_error(e_vocab_frac_id, "model.vocab[a] must be an integer");
    expect_edit_error(e_vocab_big_id, "model.vocab[a] must be an integer");
    expect_edit_error(e_vocab_dup_id, "id 98 is given to two tokens");
    expect_edit_error(e_vocab_no_byte, "no token for byte 0x01");
    expect_edit_error(e_vocab_bad_char, "U+20AC");
    expect_edit_error(e_vocab_empty_token, "empty token");
    expect_edit_error(e_merges_missing, "model.merges");
    expect_edit_error(e_merges_object, "model.merges");
    expect_edit_error(e_merge_no_space, "model.merges[3]");
    expect_edit_error(e_merge_two_spaces, "model.merges[3]");
    expect_edit_error(e_merge_number, "model.merges[0]");
    expect_edit_error(e_merge_unknown, "\"zzzzq\" is not in model.vocab");
    expect_edit_error(e_merge_out_missing, "merged token");
    expect_edit_error(e_merge_dup, "repeats");
    expect_edit_error(e_merge_bad_pair, "model.merges[0]");
    expect_edit_error(e_added_object, "added_tokens");
    expect_edit_error(e_added_gap, "added_tokens[2].id");
    expect_edit_error(e_added_dup, "used twice");
    expect_edit_error(e_added_content, "added_tokens[0].content");
    expect_edit_error(e_added_no_id, "added_tokens[1].id");
    expect_edit_error(e_added_not_object, "added_tokens[1]");
    expect_edit_error(e_pre_missing, "pre_tokenizer");
    expect_edit_error(e_pre_type, "pre_tokenizer.type");
    expect_edit_error(e_pre_prefix, "pre_tokenizer.add_prefix_space");
    expect_edit_error(e_pre_prefix_type, "pre_tokenizer.add_prefix_space");
    expect_edit_error(e_normalizer, "normalizer");
    expect_edit_error(e_model_type, "model.type");
    expect_edit_error(e_ignore_merges, "model.ignore_merges");
    assert_null(ds4_tokenizer_load("/nonexistent/dir/tokenizer.json"));
    assert_non_null(strstr(ds4_error(), "/nonexistent/dir/tokenizer.json"));
}

/* Every truncation of the file fails cleanly (many are not JSON; the rest
 * lose fields); random byte flips either fail cleanly or load a tokenizer
 * that still round-trips. Run under the sanitizers this is the crash check. */
static void test_truncated_and_flipped(void **state) {
    (void)state;
    for (size_t cut = 0; cut < g_json_len - 2; cut += 1 + cut / 8) {
        assert_int_equal(ds4_write_file_atomic(tt_tmp("bad.json"), g_json, cut), 0);
        ds4_tokenizer *t = ds4_tokenizer_load(tt_tmp("bad.json"));
        if (t) fail_msg("a file cut at %zu of %zu bytes loaded", cut, g_json_len);
        assert_true(strlen(ds4_error()) > 0);
    }
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    char *buf = malloc(g_json_len);
    int loaded = 0;
    for (int iter = 0; iter < 200; iter++) {
        memcpy(buf, g_json, g_json_len);
        /* half the files get one printable character, half three arbitrary bytes */
        for (int k = 0; k < (iter & 1 ? 3 : 1); k++)
            buf[ds4_rng_u64(&r) % g_json_len] = iter & 1 ? (char)ds4_rng_u64(&r) : (char)(32 + ds4_rng_u64(&r) % 95);
        assert_int_equal(ds4_write_file_atomic(tt_tmp("bad.json"), buf, g_json_len), 0);
        ds4_tokenizer *t = ds4_tokenizer_load(tt_tmp("bad.json"));
        if (!t) continue;
        loaded++;
        int *ids;
        size_t n;
        char *back;
        size_t back_len;
        assert_int_equal(ds4_tokenizer_encode(t, g_text, 2000, &ids, &n), 0);
        assert_int_equal(ds4_tokenizer_decode(t, ids, n, &back, &back_len), 0);
        assert_int_equal(back_len, 2000);
        assert_memory_equal(back, g_text, 2000);
        free(ids);
        free(back);
        ds4_tokenizer_free(t);
    }
    print_message("byte flips: %d of 200 files still loaded (and round-tripped)\n", loaded);
    free(buf);
}

/* A file in the newer merges format (pairs as arrays) loads to the same tokenizer. */
static void test_merges_as_arrays(void **state) {
    (void)state;
    cJSON *j = cJSON_Parse(g_json);
    cJSON *merges = merges_of(j), *pairs = cJSON_CreateArray();
    for (cJSON *m = merges->child; m; m = m->next) {
        char *s = m->valuestring, *sp = strchr(s, ' ');
        *sp = 0;
        cJSON *p = cJSON_CreateArray();
        cJSON_AddItemToArray(p, cJSON_CreateString(s));
        cJSON_AddItemToArray(p, cJSON_CreateString(sp + 1));
        cJSON_AddItemToArray(pairs, p);
    }
    REPLACE(model_of(j), "merges", pairs);
    char *s = cJSON_Print(j);
    assert_int_equal(ds4_write_file_atomic(tt_tmp("bad.json"), s, strlen(s)), 0);
    free(s);
    cJSON_Delete(j);
    ds4_tokenizer *t = ds4_tokenizer_load(tt_tmp("bad.json"));
    if (!t) fail_msg("load: %s", ds4_error());
    assert_int_equal(t->n_merges, g_tok->n_merges);
    for (int r = 0; r < t->n_merges; r++) assert_int_equal(t->merge_out[r], g_tok->merge_out[r]);
    ds4_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_load_same),
        cmocka_unit_test(test_hf_layout),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncated_and_flipped),
        cmocka_unit_test(test_merges_as_arrays),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
