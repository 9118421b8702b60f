/* test_io_safetensors.c — safetensors writer/reader round trips, the reader on
 * a fixture written independently by tools/make_io_fixtures.py (Python
 * struct/json), and one test per malformed file: each must fail cleanly with
 * a message naming the file and the tensor/field, never crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "util/util.h"
#include "testutil.h"

static int setup(void **state) {
    (void)state;
    return tmpdir_make("io_st");
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

#define assert_err_has(sub) do { \
    const char *m_ = ds4_error(); \
    if (!strstr(m_, (sub))) fail_msg("error \"%s\" does not mention \"%s\"", m_, (sub)); \
} while (0)

/* Write a file: 8-byte LE length of `header` (or `len_override` when != ~0),
 * the header text, then `data_len` bytes 0..255 repeating. */
static void write_raw(const char *path, const char *header, uint64_t len_override,
                      size_t data_len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = len_override != ~(uint64_t)0 ? len_override : strlen(header);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(hl >> (8 * i));
    assert_int_equal(fwrite(lb, 1, 8, f), 8);
    assert_int_equal(fwrite(header, 1, strlen(header), f), strlen(header));
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 255), f);
    fclose(f);
}

/* Expect ds4_st_open(header + data) to fail, naming the file and each of the
 * NULL-terminated substrings. */
static void expect_bad(const char *header, size_t data_len, ...) {
    const char *path = tmp_path("bad.safetensors");
    write_raw(path, header, ~(uint64_t)0, data_len);
    ds4_safetensors st;
    int rc = ds4_st_open(&st, path);
    if (rc == 0) fail_msg("accepted a bad header: %s", header);
    assert_null(st.tensors);
    assert_null(st.map);
    assert_err_has(path);
    va_list ap;
    va_start(ap, data_len);
    for (const char *s; (s = va_arg(ap, const char *));) assert_err_has(s);
    va_end(ap);
}

/* Plain (non-atomic, no fsync) write, for the thousands of variants below. */
static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static int count_files(void) {
    int n = 0;
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* ---- round trips -------------------------------------------------------- */

static void test_dtype_table(void **state) {
    (void)state;
    assert_int_equal(ds4_dtype_size(DS4_DT_F32), 4);
    assert_int_equal(ds4_dtype_size(DS4_DT_BF16), 2);
    assert_int_equal(ds4_dtype_size(DS4_DT_F64), 8);
    assert_int_equal(ds4_dtype_size(DS4_DT_BOOL), 1);
    assert_int_equal(ds4_dtype_size((ds4_dtype)99), 0);
    assert_string_equal(ds4_dtype_name(DS4_DT_BF16), "BF16");
    assert_string_equal(ds4_dtype_name(DS4_DT_I64), "I64");
}

static void test_roundtrip_basic(void **state) {
    (void)state;
    float w[2][3] = {{1, 2, 3}, {4, 5, 6}};          /* (2, 3) */
    double s = -0.125;                              /* () scalar */
    uint16_t h[5] = {0x3c00, 0xc000, 0, 0x7bff, 1}; /* (5,) F16 bits */
    uint16_t bf[4] = {0x3f80, 0x4049, 0xbf80, 0};   /* (2, 2) BF16 bits */
    int8_t i8[3] = {-128, 0, 127};                  /* (3,) */
    uint8_t b[7] = {1, 0, 1, 1, 0, 0, 1};           /* (7,) BOOL: odd size */
    int64_t i64[2] = {INT64_MIN, INT64_MAX};        /* (1, 2) */
    int32_t i32[24];                                /* (2, 3, 4) */
    for (int i = 0; i < 24; i++) i32[i] = i * 1000 - 7;
    int16_t i16[1] = {-2};                          /* (1, 1, 1, 1, 1, 1, 1, 1) */
    ds4_st_entry e[] = {
        {"model.embed_tokens.weight", DS4_DT_F32, 2, {2, 3}, w},
        {"scalar", DS4_DT_F64, 0, {0}, &s},
        {"half", DS4_DT_F16, 1, {5}, h},
        {"zero.rows", DS4_DT_F32, 2, {0, 3}, NULL},
        {"brain", DS4_DT_BF16, 2, {2, 2}, bf},
        {"i8", DS4_DT_I8, 1, {3}, i8},
        {"mask", DS4_DT_BOOL, 1, {7}, b},
        {"zero.vec", DS4_DT_I64, 1, {0}, NULL},
        {"i64", DS4_DT_I64, 2, {1, 2}, i64},
        {"i32", DS4_DT_I32, 3, {2, 3, 4}, i32},
        {"deep", DS4_DT_I16, 8, {1, 1, 1, 1, 1, 1, 1, 1}, i16},
        {"quote\"back\\slash\nnl", DS4_DT_U8, 1, {3}, b},
    };
    int n = (int)(sizeof e / sizeof e[0]);
    const char *path = tmp_path("rt.safetensors");
    assert_int_equal(ds4_st_write(path, e, n, "{\"format\":\"pt\",\"k\\\"ey\":\"v\\u00e9\"}"), 0);

    /* layout: data starts at a multiple of 8 and the file is exactly
     * 8 + header + sum of tensor bytes (contiguous, no gaps) */
    FILE *f = fopen(path, "rb");
    unsigned char lb[8];
    assert_int_equal(fread(lb, 1, 8, f), 8);
    fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | lb[i];
    assert_int_equal((8 + hl) % 8, 0);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) numel *= (size_t)e[i].shape[d];
        total += numel * ds4_dtype_size(e[i].dtype);
    }
    assert_int_equal(file_size(path), (long)(8 + hl + total));

    ds4_safetensors st;
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_int_equal(st.n_tensors, n);
    assert_non_null(st.metadata);
    assert_non_null(strstr(st.metadata, "\"format\":\"pt\""));
    assert_non_null(strstr(st.metadata, "k\\\"ey"));
    for (int i = 0; i < n; i++) {
        const ds4_st_tensor *t = &st.tensors[i];
        assert_string_equal(t->name, e[i].name);          /* header order = given order */
        assert_ptr_equal(ds4_st_find(&st, e[i].name), t);
        assert_int_equal(t->dtype, e[i].dtype);
        assert_int_equal(t->ndim, e[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], e[i].shape[d]);
            numel *= (size_t)e[i].shape[d];
        }
        assert_int_equal(t->numel, numel);
        assert_int_equal(t->nbytes, numel * ds4_dtype_size(e[i].dtype));
        if (t->nbytes) assert_memory_equal(t->data, e[i].data, t->nbytes);
        assert_true((const char *)t->data >= (const char *)st.map + 8 + hl);
        assert_true((const char *)t->data + t->nbytes <= (const char *)st.map + st.map_len);
    }
    /* the first tensor sits at the start of the 8-aligned data area */
    assert_int_equal(((const char *)st.tensors[0].data - (const char *)st.map) % 8, 0);
    assert_null(ds4_st_find(&st, "missing"));
    assert_null(ds4_st_find(&st, ""));
    ds4_st_close(&st);
    assert_null(st.tensors);
    ds4_st_close(&st);                                     /* idempotent */

    /* no metadata, no tensors: still a valid file */
    assert_int_equal(ds4_st_write(path, NULL, 0, NULL), 0);
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_int_equal(st.n_tensors, 0);
    assert_null(st.metadata);
    assert_null(ds4_st_find(&st, "x"));
    ds4_st_close(&st);
    assert_int_equal(count_files(), 1);                    /* no temporaries left */
}

/* Many random tensors: every header-length residue mod 8 gets exercised. */
static void test_roundtrip_random(void **state) {
    (void)state;
    ds4_rng r;
    ds4_rng_seed(&r, 1234);
    enum { N = 300 };
    ds4_st_entry *e = calloc(N, sizeof *e);
    char (*names)[40] = calloc(N, 40);
    void **bufs = calloc(N, sizeof *bufs);
    for (int iter = 0; iter < 8; iter++) {
        int n = 1 + (int)(ds4_rng_u64(&r) % N);
        for (int i = 0; i < n; i++) {
            snprintf(names[i], 40, "t%d.%llu", i, (unsigned long long)(ds4_rng_u64(&r) % 100000));
            e[i].name = names[i];
            e[i].dtype = (ds4_dtype)(ds4_rng_u64(&r) % 10);
            e[i].ndim = (int)(ds4_rng_u64(&r) % 4);
            size_t numel = 1;
            for (int d = 0; d < e[i].ndim; d++) {
                e[i].shape[d] = (int64_t)(ds4_rng_u64(&r) % 7);
                numel *= (size_t)e[i].shape[d];
            }
            size_t nb = numel * ds4_dtype_size(e[i].dtype);
            bufs[i] = malloc(nb + 1);
            for (size_t k = 0; k < nb; k++) ((unsigned char *)bufs[i])[k] = (unsigned char)ds4_rng_u64(&r);
            e[i].data = bufs[i];
        }
        const char *path = tmp_path("rand.safetensors");
        assert_int_equal(ds4_st_write(path, e, n, NULL), 0);
        ds4_safetensors st;
        assert_int_equal(ds4_st_open(&st, path), 0);
        assert_int_equal(st.n_tensors, n);
        for (int i = 0; i < n; i++) {
            const ds4_st_tensor *t = ds4_st_find(&st, names[i]);
            assert_non_null(t);
            assert_int_equal(t->dtype, e[i].dtype);
            assert_int_equal(t->ndim, e[i].ndim);
            if (t->nbytes) assert_memory_equal(t->data, bufs[i], t->nbytes);
        }
        ds4_st_close(&st);
        for (int i = 0; i < n; i++) free(bufs[i]);
    }
    free(e);
    free(names);
    free(bufs);
}

/* Overwriting an existing file replaces it; a failed write leaves the old
 * file untouched and no temporary behind. */
static void test_write_atomic_and_errors(void **state) {
    (void)state;
    const char *path = tmp_path("atomic.safetensors");
    float a[2] = {1, 2}, b2[3] = {3, 4, 5};
    ds4_st_entry e1 = {"a", DS4_DT_F32, 1, {2}, a};
    assert_int_equal(ds4_st_write(path, &e1, 1, NULL), 0);
    ds4_st_entry e2 = {"b", DS4_DT_F32, 1, {3}, b2};
    assert_int_equal(ds4_st_write(path, &e2, 1, NULL), 0);
    ds4_safetensors st;
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_null(ds4_st_find(&st, "a"));
    assert_non_null(ds4_st_find(&st, "b"));
    ds4_st_close(&st);
    long before = file_size(path);
    int files = count_files();

    ds4_st_entry dup[2] = {{"x", DS4_DT_F32, 1, {2}, a}, {"x", DS4_DT_F32, 1, {2}, a}};
    assert_int_equal(ds4_st_write(path, dup, 2, NULL), -1);
    assert_err_has("'x'");
    assert_err_has("twice");
    ds4_st_entry bad_dt = {"bdt", (ds4_dtype)42, 1, {2}, a};
    assert_int_equal(ds4_st_write(path, &bad_dt, 1, NULL), -1);
    assert_err_has("'bdt'");
    ds4_st_entry neg = {"neg", DS4_DT_F32, 2, {2, -1}, a};
    assert_int_equal(ds4_st_write(path, &neg, 1, NULL), -1);
    assert_err_has("'neg'");
    ds4_st_entry nodata = {"nodata", DS4_DT_F32, 1, {2}, NULL};
    assert_int_equal(ds4_st_write(path, &nodata, 1, NULL), -1);
    assert_err_has("'nodata'");
    ds4_st_entry ndim = {"nd", DS4_DT_F32, 9, {1}, a};
    assert_int_equal(ds4_st_write(path, &ndim, 1, NULL), -1);
    assert_err_has("'nd'");
    ds4_st_entry meta = {"__metadata__", DS4_DT_F32, 1, {2}, a};
    assert_int_equal(ds4_st_write(path, &meta, 1, NULL), -1);
    assert_err_has("__metadata__");
    ds4_st_entry huge = {"huge", DS4_DT_F64, 4, {1LL << 20, 1LL << 20, 1LL << 20, 1LL << 20}, a};
    assert_int_equal(ds4_st_write(path, &huge, 1, NULL), -1);
    assert_err_has("'huge'");
    assert_int_equal(ds4_st_write(path, &e1, 1, "[1]"), -1);
    assert_err_has("metadata");
    assert_int_equal(ds4_st_write(path, &e1, 1, "{\"n\":1}"), -1);
    assert_err_has("'n'");
    assert_int_equal(ds4_st_write(path, &e1, 1, "{bad json"), -1);
    assert_err_has("metadata");
    assert_int_equal(ds4_st_write(tmp_path("no/such/dir.safetensors"), &e1, 1, NULL), -1);
    assert_err_has("no/such/dir");

    assert_int_equal(file_size(path), before);
    assert_int_equal(count_files(), files);
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_non_null(ds4_st_find(&st, "b"));
    ds4_st_close(&st);
}

/* ---- the independent fixture -------------------------------------------- */

static void test_reference_fixture(void **state) {
    (void)state;
    const char *path = "fixtures/io/ref.safetensors";
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) fail_msg("%s", ds4_error());
    assert_int_equal(st.n_tensors, 12);
    assert_non_null(st.metadata);
    assert_non_null(strstr(st.metadata, "\"source\":\"make_io_fixtures.py\""));
    /* header order is the Python dict order */
    assert_string_equal(st.tensors[0].name, "model.embed_tokens.weight");
    assert_string_equal(st.tensors[11].name, "w\xc3\xa9ird \"name\"\t");

    const ds4_st_tensor *t = ds4_st_find(&st, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, DS4_DT_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    const float ref_f32[6] = {0.5f, -1.25f, 3.0f, 1e-3f, -7.5e5f, 42.0f};
    float f32[6];
    memcpy(f32, t->data, sizeof f32);          /* data may be unaligned */
    for (int i = 0; i < 6; i++) assert_true(f32[i] == ref_f32[i]);

    t = ds4_st_find(&st, "half");
    assert_int_equal(t->dtype, DS4_DT_F16);
    assert_int_equal(t->numel, 4);
    const float ref_f16[4] = {1.0f, -2.0f, 0.5f, 65504.0f};
    for (int i = 0; i < 4; i++) {
        uint16_t v;
        memcpy(&v, (const char *)t->data + 2 * i, 2);
        assert_true(ds4_fp16_to_fp32(v) == ref_f16[i]);
    }
    t = ds4_st_find(&st, "brain");
    assert_int_equal(t->dtype, DS4_DT_BF16);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 1);
    const float ref_bf[3] = {1.0f, -3.5f, 0.15625f};
    for (int i = 0; i < 3; i++) {
        uint16_t v;
        memcpy(&v, (const char *)t->data + 2 * i, 2);
        assert_true(ds4_bf16_to_fp32(v) == ref_bf[i]);
    }
    t = ds4_st_find(&st, "scalar");
    assert_int_equal(t->dtype, DS4_DT_F64);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    double d;
    memcpy(&d, t->data, 8);
    assert_true(d == 2.718281828459045);
    t = ds4_st_find(&st, "ids");
    int32_t ids[4], ref_ids[4] = {7, -8, 2147483647, INT32_MIN};
    memcpy(ids, t->data, 16);
    assert_memory_equal(ids, ref_ids, 16);
    t = ds4_st_find(&st, "big");
    int64_t big[2];
    memcpy(big, t->data, 16);
    assert_true(big[0] == (1LL << 40) && big[1] == -(1LL << 62));
    t = ds4_st_find(&st, "bytes");
    assert_int_equal(t->dtype, DS4_DT_U8);
    assert_memory_equal(t->data, ((uint8_t[]){0, 1, 127, 128, 255}), 5);
    t = ds4_st_find(&st, "signed");
    assert_int_equal(t->dtype, DS4_DT_I8);
    assert_memory_equal(t->data, ((int8_t[]){-128, 0, 127}), 3);
    t = ds4_st_find(&st, "shorts");
    int16_t sh[2];
    memcpy(sh, t->data, 4);
    assert_true(sh[0] == -32768 && sh[1] == 12345);
    t = ds4_st_find(&st, "mask");
    assert_int_equal(t->dtype, DS4_DT_BOOL);
    assert_memory_equal(t->data, ((uint8_t[]){1, 0, 0, 1}), 4);
    t = ds4_st_find(&st, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->shape[0], 0);
    t = ds4_st_find(&st, "w\xc3\xa9ird \"name\"\t");
    assert_non_null(t);
    float z;
    memcpy(&z, t->data, 4);
    assert_true(z == 0.0f && signbit(z));
    /* data laid out in reverse header order by the script: the last header
     * tensor comes first in the data area */
    assert_true((const char *)ds4_st_find(&st, "model.embed_tokens.weight")->data >
                (const char *)ds4_st_find(&st, "half")->data);
    ds4_st_close(&st);
}

/* ---- malformed files ---------------------------------------------------- */

static void test_short_and_missing_files(void **state) {
    (void)state;
    ds4_safetensors st;
    for (int n = 0; n < 8; n++) {
        const char *path = tmp_path("short.safetensors");
        FILE *f = fopen(path, "wb");
        for (int i = 0; i < n; i++) fputc(0, f);
        fclose(f);
        assert_int_equal(ds4_st_open(&st, path), -1);
        assert_err_has(path);
        assert_err_has("too short");
    }
    assert_int_equal(ds4_st_open(&st, tmp_path("nope.safetensors")), -1);
    assert_err_has("nope.safetensors");
    assert_int_equal(ds4_st_open(&st, g_dir), -1);
    assert_err_has(g_dir);
}

static void test_header_length(void **state) {
    (void)state;
    ds4_safetensors st;
    const char *path = tmp_path("hl.safetensors");
    const char *h = "{}";
    uint64_t lens[] = {DS4_ST_MAX_HEADER + 1ull, 1ull << 40, ~0ull - 1, 1ull << 63};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        write_raw(path, h, lens[i], 0);
        assert_int_equal(ds4_st_open(&st, path), -1);
        assert_err_has(path);
        assert_err_has("header length");
        assert_err_has("limit");
    }
    write_raw(path, h, 3, 0);                      /* one past the end */
    assert_int_equal(ds4_st_open(&st, path), -1);
    assert_err_has("past the end");
    write_raw(path, h, 0, 0);                      /* empty header */
    assert_int_equal(ds4_st_open(&st, path), -1);
    assert_err_has("JSON");
    write_raw(path, "{}", ~(uint64_t)0, 0);        /* minimal valid file */
    assert_int_equal(ds4_st_open(&st, path), 0);
    assert_int_equal(st.n_tensors, 0);
    ds4_st_close(&st);
}

static void test_bad_json(void **state) {
    (void)state;
    expect_bad("{", 0, "JSON", NULL);
    expect_bad("{\"a\":", 0, "JSON", NULL);
    expect_bad("\xff\xfe\x00garbage", 0, "JSON", NULL);
    expect_bad("[]", 0, "object", NULL);
    expect_bad("\"text\"", 0, "object", NULL);
    expect_bad("42", 0, "object", NULL);
    expect_bad("{} x", 0, "trailing", NULL);
    expect_bad("{}{}", 0, "trailing", NULL);
}

static void test_bad_entries(void **state) {
    (void)state;
    expect_bad("{\"w\":5}", 0, "'w'", "object", NULL);
    expect_bad("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w'", "'dtype'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "'w'", "'shape'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w'", "'dtype'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "'w'",
               "F8_E4M3", NULL);
    expect_bad("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w'", "f32", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, "'w'", "'shape'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "'w'", "'shape'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "'w'", "'shape'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,4]}}", 4, "'w'", "negative", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
               "'w'", "dims", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4, "'w'", "'data_offsets'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4, "'w'",
               "'extra'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               "'w'", "twice", NULL);
}

static void test_bad_sizes_and_offsets(void **state) {
    (void)state;
    /* shape * dtype size != span */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24, "'w'", "24",
               NULL);
    expect_bad("{\"w\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "'w'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4, "'w'", NULL);
    /* products that overflow 64 bits must not wrap around to a match */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
               "'w'", "overflow", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]}}", 0,
               "'w'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4, "'w'", NULL);
    /* offsets outside the data area */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "'w'", "outside", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 8, "'w'", "outside", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9007199254740992,9007199254740996]}}",
               8, "'w'", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9,9]}}", 8, "'w'", "outside", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "'w'", "end", NULL);
}

static void test_overlap_and_duplicates(void **state) {
    (void)state;
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24,
               "overlaps", "'a'", "'b'", NULL);
    /* listed out of order in the header, same overlap */
    expect_bad("{\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 24,
               "overlaps", "'a'", "'b'", NULL);
    /* identical ranges */
    expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
               "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
               "overlaps", "'a'", "'b'", NULL);
    /* c is nested inside a, after a non-overlapping b that starts later than c */
    expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
               "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[32,40]},"
               "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]}}", 40,
               "overlaps", "'c'", "'a'", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "'a'", "twice", NULL);
    expect_bad("{\"__metadata__\":{\"x\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, "__metadata__", "'x'", NULL);
    expect_bad("{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, "__metadata__", NULL);
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__", "twice", NULL);

    /* legal: touching ranges, empty tensors anywhere in range, gaps, tensors
     * listed in any order */
    const char *path = tmp_path("ok.safetensors");
    write_raw(path, "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"__metadata__\":{\"k\":\"v\"},"
                    "\"c\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[20,23]}}   ",
              ~(uint64_t)0, 24);
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) fail_msg("%s", ds4_error());
    assert_int_equal(st.n_tensors, 4);
    assert_string_equal(st.metadata, "{\"k\":\"v\"}");
    const ds4_st_tensor *c = ds4_st_find(&st, "c");
    assert_int_equal(((const unsigned char *)c->data)[0], 20);   /* byte i holds i & 255 */
    assert_int_equal(((const unsigned char *)c->data)[2], 22);
    ds4_st_close(&st);
}

/* Cut a valid file at every length: each shorter file must fail cleanly. In
 * the data area the error names the first tensor (header order) cut off. */
static void test_truncate_everywhere(void **state) {
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6};
    int32_t b[3] = {7, 8, 9};
    uint8_t c[5] = {1, 2, 3, 4, 5};
    ds4_st_entry e[3] = {{"alpha", DS4_DT_F32, 2, {2, 3}, a},
                         {"beta", DS4_DT_I32, 1, {3}, b},
                         {"gamma", DS4_DT_U8, 1, {5}, c}};
    const char *path = tmp_path("full.safetensors");
    assert_int_equal(ds4_st_write(path, e, 3, "{\"m\":\"x\"}"), 0);
    char *buf;
    size_t len;
    assert_int_equal(ds4_read_file(path, &buf, &len), 0);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)buf[i];
    size_t data0 = 8 + (size_t)hl;
    const size_t ends[3] = {24, 36, 41};
    assert_int_equal(len, data0 + 41);
    const char *cut = tmp_path("cut.safetensors");
    for (size_t n = 0; n < len; n++) {
        write_bytes(cut, buf, n);
        ds4_safetensors st;
        if (ds4_st_open(&st, cut) == 0) fail_msg("accepted a file cut at %zu of %zu", n, len);
        assert_err_has(cut);
        if (n >= data0) {
            int k = 0;
            while (ends[k] <= n - data0) k++;
            char want[32];
            snprintf(want, sizeof want, "'%s'", e[k].name);
            assert_err_has(want);
        }
    }
    assert_int_equal(ds4_write_file_atomic(cut, buf, len), 0);
    ds4_safetensors st;
    assert_int_equal(ds4_st_open(&st, cut), 0);
    ds4_st_close(&st);
    free(buf);
}

/* Corrupt every header byte to several values: the reader may accept (e.g. a
 * changed letter in a name) but must never crash or read out of bounds
 * (run under ASan); accepted files must still be self-consistent. */
static void test_corrupt_header_bytes(void **state) {
    (void)state;
    float a[4] = {1, 2, 3, 4};
    int16_t b[3] = {1, 2, 3};
    ds4_st_entry e[2] = {{"w", DS4_DT_F32, 2, {2, 2}, a}, {"v", DS4_DT_I16, 1, {3}, b}};
    const char *path = tmp_path("orig.safetensors");
    assert_int_equal(ds4_st_write(path, e, 2, "{\"k\":\"v\"}"), 0);
    char *buf;
    size_t len;
    assert_int_equal(ds4_read_file(path, &buf, &len), 0);
    const char *bad = tmp_path("corrupt.safetensors");
    const unsigned char vals[] = {0, '"', '{', '}', '[', ']', ',', ':', '-', '9', 'x', 0xff, ' '};
    int accepted = 0, rejected = 0;
    for (size_t pos = 0; pos < len; pos++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            if ((unsigned char)buf[pos] == vals[v]) continue;
            char saved = buf[pos];
            buf[pos] = (char)vals[v];
            write_bytes(bad, buf, len);
            buf[pos] = saved;
            ds4_safetensors st;
            if (ds4_st_open(&st, bad) == 0) {
                accepted++;
                const char *lo = (const char *)st.map, *hi = lo + st.map_len;
                for (int i = 0; i < st.n_tensors; i++) {
                    const ds4_st_tensor *t = &st.tensors[i];
                    assert_true((const char *)t->data >= lo && (const char *)t->data + t->nbytes <= hi);
                    assert_int_equal(t->nbytes, t->numel * ds4_dtype_size(t->dtype));
                }
                ds4_st_close(&st);
            } else {
                rejected++;
                assert_err_has(bad);
            }
        }
    }
    free(buf);
    print_message("corrupted %zu-byte file: %d variants rejected, %d accepted\n", len, rejected,
                  accepted);
    assert_true(rejected > accepted);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_table),
        cmocka_unit_test(test_roundtrip_basic),
        cmocka_unit_test(test_roundtrip_random),
        cmocka_unit_test(test_write_atomic_and_errors),
        cmocka_unit_test(test_reference_fixture),
        cmocka_unit_test(test_short_and_missing_files),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_bad_sizes_and_offsets),
        cmocka_unit_test(test_overlap_and_duplicates),
        cmocka_unit_test(test_truncate_everywhere),
        cmocka_unit_test(test_corrupt_header_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
