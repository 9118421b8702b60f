/* test_io_gguf.c — GGUF writer/reader: the writer's bytes against a file laid
 * out by hand from the GGUF v3 spec, a round trip of every metadata type and
 * tensor type, and malformed files (truncation at every offset, bad magic and
 * version, huge counts and string lengths, bad types and dims, offsets out of
 * range, misaligned or overlapping, duplicates, random byte mutations): each
 * fails with a message naming the problem, never a crash (run under ASan). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/gguf.h"
#include "util/util.h"

/* ---- a hand-written GGUF builder (independent of the writer) ---------------- */
typedef struct { uint8_t b[8192]; size_t n; } buf;
static void w8(buf *x, uint8_t v) { x->b[x->n++] = v; }
static void wn(buf *x, const void *p, size_t n) { memcpy(x->b + x->n, p, n); x->n += n; }
static void w32(buf *x, uint32_t v) { wn(x, &v, 4); }
static void w64(buf *x, uint64_t v) { wn(x, &v, 8); }
static void wstr(buf *x, const char *s) { w64(x, strlen(s)); wn(x, s, strlen(s)); }
static void wpad(buf *x) { while (x->n % 32) w8(x, 0); }

/* A valid file: 2 keys (u32, string array), 2 tensors (F32 [4], Q8_0 [32, 2]). */
static size_t off_t1_offset;          /* byte offset of tensor 1's offset field */
static size_t off_t0_type;            /* byte offset of tensor 0's type field */
static size_t off_str_len;            /* byte offset of the first string length */
static void build_valid(buf *x) {
    x->n = 0;
    wn(x, "GGUF", 4);
    w32(x, 3);
    w64(x, 2);                        /* tensors */
    w64(x, 2);                        /* kv */
    off_str_len = x->n;
    wstr(x, "a.n");
    w32(x, DS4_GGUF_U32);
    w32(x, 7);
    wstr(x, "a.strs");
    w32(x, DS4_GGUF_ARR);
    w32(x, DS4_GGUF_STR);
    w64(x, 2);
    wstr(x, "xy");
    wstr(x, "");
    wstr(x, "t0");
    w32(x, 1);
    w64(x, 4);
    off_t0_type = x->n;
    w32(x, DS4_GGML_F32);
    w64(x, 0);
    wstr(x, "t1");
    w32(x, 2);
    w64(x, 32);
    w64(x, 2);
    w32(x, DS4_GGML_Q8_0);
    off_t1_offset = x->n;
    w64(x, 32);                       /* 16 bytes of t0, padded to 32 */
    wpad(x);
    float f[4] = {1, 2, 3, 4};
    wn(x, f, 16);
    for (int i = 0; i < 16; i++) w8(x, 0);
    for (int i = 0; i < 68; i++) w8(x, (uint8_t)i);
}

static void expect_fail(const buf *x, size_t len, const char *needle) {
    ds4_gguf g;
    int rc = ds4_gguf_parse(&g, x->b, len, "bad.gguf");
    if (rc == 0) {
        ds4_gguf_close(&g);
        fail_msg("parse of a malformed file (len %zu) succeeded; wanted an error with '%s'", len, needle ? needle : "(any)");
    }
    if (needle && !strstr(ds4_error(), needle)) fail_msg("error '%s' does not mention '%s'", ds4_error(), needle);
    assert_non_null(strstr(ds4_error(), "bad.gguf"));
}

static void test_hand_file_parses(void **s) {
    (void)s;
    buf x;
    build_valid(&x);
    ds4_gguf g;
    assert_int_equal(ds4_gguf_parse(&g, x.b, x.n, "ok.gguf"), 0);
    assert_int_equal(g.n_kv, 2);
    assert_int_equal(g.n_tensors, 2);
    int64_t v;
    assert_int_equal(ds4_gguf_get_i64(&g, "a.n", &v), 0);
    assert_int_equal(v, 7);
    const ds4_gguf_kv *a = ds4_gguf_find(&g, "a.strs");
    assert_non_null(a);
    assert_int_equal(a->n, 2);
    assert_true(ds4_gguf_str_eq(a->strs[0], "xy"));
    assert_true(ds4_gguf_str_eq(a->strs[1], ""));
    const ds4_gguf_tensor *t0 = ds4_gguf_find_tensor(&g, "t0"), *t1 = ds4_gguf_find_tensor(&g, "t1");
    assert_non_null(t0);
    assert_non_null(t1);
    assert_int_equal(((const float *)t0->data)[3], 4);
    assert_int_equal(t1->nbytes, 68);
    assert_int_equal(((const uint8_t *)t1->data)[67], 67);
    assert_int_equal(ds4_gguf_get_str(&g, "a.n", &(char *){0}), -1);   /* wrong type */
    assert_int_equal(ds4_gguf_get_i64(&g, "missing", &v), -1);
    assert_non_null(strstr(ds4_error(), "missing"));
    ds4_gguf_close(&g);
}

/* The writer produces exactly the hand-laid bytes for the same content. */
static void test_writer_bytes_match_spec(void **s) {
    (void)s;
    buf x;
    build_valid(&x);
    ds4_gguf_writer *w = ds4_gguf_writer_new();
    const char *strs[2] = {"xy", ""};
    float f[4] = {1, 2, 3, 4};
    uint8_t q[68];
    for (int i = 0; i < 68; i++) q[i] = (uint8_t)i;
    assert_int_equal(ds4_gguf_add_u32(w, "a.n", 7), 0);
    assert_int_equal(ds4_gguf_add_arr_str(w, "a.strs", strs, NULL, 2), 0);
    assert_int_equal(ds4_gguf_add_tensor(w, "t0", DS4_GGML_F32, 1, (int64_t[]){4}, f, 16), 0);
    assert_int_equal(ds4_gguf_add_tensor(w, "t1", DS4_GGML_Q8_0, 2, (int64_t[]){32, 2}, q, 68), 0);
    /* wrong byte count is refused */
    assert_int_equal(ds4_gguf_add_tensor(w, "t2", DS4_GGML_Q8_0, 2, (int64_t[]){32, 2}, q, 67), -1);
    uint8_t *b;
    size_t n;
    assert_int_equal(ds4_gguf_writer_to_buffer(w, &b, &n), 0);
    /* the hand file ends with the tensor data unpadded; the writer pads the last tensor */
    assert_true(n >= x.n);
    assert_memory_equal(b, x.b, x.n);
    free(b);
    ds4_gguf_writer_free(w);
}

static void test_roundtrip_all_types(void **s) {
    (void)s;
    ds4_gguf_writer *w = ds4_gguf_writer_new();
    uint8_t u8 = 200; int8_t i8 = -100; uint16_t u16 = 60000; int16_t i16 = -30000;
    int64_t i64 = -(1LL << 40); double f64 = 3.25;
    assert_int_equal(ds4_gguf_add_scalar(w, "k.u8", DS4_GGUF_U8, &u8), 0);
    assert_int_equal(ds4_gguf_add_scalar(w, "k.i8", DS4_GGUF_I8, &i8), 0);
    assert_int_equal(ds4_gguf_add_scalar(w, "k.u16", DS4_GGUF_U16, &u16), 0);
    assert_int_equal(ds4_gguf_add_scalar(w, "k.i16", DS4_GGUF_I16, &i16), 0);
    assert_int_equal(ds4_gguf_add_u32(w, "k.u32", 4000000000u), 0);
    assert_int_equal(ds4_gguf_add_i32(w, "k.i32", -5), 0);
    assert_int_equal(ds4_gguf_add_f32(w, "k.f32", 0.5f), 0);
    assert_int_equal(ds4_gguf_add_bool(w, "k.bool", 1), 0);
    assert_int_equal(ds4_gguf_add_str(w, "k.str", "héllo"), 0);
    assert_int_equal(ds4_gguf_add_u64(w, "k.u64", 1ULL << 50), 0);
    assert_int_equal(ds4_gguf_add_scalar(w, "k.i64", DS4_GGUF_I64, &i64), 0);
    assert_int_equal(ds4_gguf_add_scalar(w, "k.f64", DS4_GGUF_F64, &f64), 0);
    int32_t arr[5] = {1, -2, 3, -4, 5};
    float farr[3] = {0.25f, -1, 7};
    assert_int_equal(ds4_gguf_add_arr(w, "k.arr_i32", DS4_GGUF_I32, arr, 5), 0);
    assert_int_equal(ds4_gguf_add_arr(w, "k.arr_f32", DS4_GGUF_F32, farr, 3), 0);
    assert_int_equal(ds4_gguf_add_arr(w, "k.arr_empty", DS4_GGUF_U8, NULL, 0), 0);
    assert_int_equal(ds4_gguf_add_u32(w, "general.alignment", 64), 0);
    /* tensors of every type ds4 reads, sizes from the ggml block tables */
    static uint8_t data[5][4096];
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 4096; i++) data[k][i] = (uint8_t)(i * 7 + k);
    struct { int type; int64_t ne[3]; int nd; size_t bytes; } ts[5] = {
        {DS4_GGML_F32, {8, 3, 1}, 2, 96},   {DS4_GGML_F16, {10, 1, 1}, 1, 20},
        {DS4_GGML_Q4_0, {64, 2, 1}, 2, 72}, {DS4_GGML_Q8_0, {32, 2, 3}, 3, 204},
        {DS4_GGML_Q4_K, {256, 2, 1}, 2, 288}};
    char nm[5][16];
    for (int k = 0; k < 5; k++) {
        snprintf(nm[k], sizeof nm[k], "t%d", k);
        assert_int_equal(ds4_gguf_add_tensor(w, nm[k], ts[k].type, ts[k].nd, ts[k].ne, data[k], ts[k].bytes), 0);
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/ds4_test_gguf_%d.gguf", (int)getpid());
    assert_int_equal(ds4_gguf_writer_write(w, path), 0);
    ds4_gguf_writer_free(w);
    assert_true(ds4_gguf_is_gguf(path));
    ds4_gguf g;
    assert_int_equal(ds4_gguf_open(&g, path), 0);
    assert_int_equal(g.alignment, 64);
    int64_t v;
    double d;
    int bl;
    assert_int_equal(ds4_gguf_get_i64(&g, "k.u8", &v), 0); assert_int_equal(v, 200);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.i8", &v), 0); assert_int_equal(v, -100);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.u16", &v), 0); assert_int_equal(v, 60000);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.i16", &v), 0); assert_int_equal(v, -30000);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.u32", &v), 0); assert_int_equal(v, 4000000000LL);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.i32", &v), 0); assert_int_equal(v, -5);
    assert_int_equal(ds4_gguf_get_f64(&g, "k.f32", &d), 0); assert_true(d == 0.5);
    assert_int_equal(ds4_gguf_get_bool(&g, "k.bool", &bl), 0); assert_int_equal(bl, 1);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.u64", &v), 0); assert_int_equal(v, 1LL << 50);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.i64", &v), 0); assert_true(v == i64);
    assert_int_equal(ds4_gguf_get_f64(&g, "k.f64", &d), 0); assert_true(d == 3.25);
    assert_int_equal(ds4_gguf_get_i64(&g, "k.f64", &v), -1);   /* float is not an integer */
    char *str;
    assert_int_equal(ds4_gguf_get_str(&g, "k.str", &str), 0);
    assert_string_equal(str, "héllo");
    free(str);
    const ds4_gguf_kv *a = ds4_gguf_find(&g, "k.arr_i32");
    assert_int_equal(a->n, 5);
    for (int i = 0; i < 5; i++) { assert_int_equal(ds4_gguf_arr_i64(a, (uint64_t)i, &v), 0); assert_int_equal(v, arr[i]); }
    assert_int_equal(ds4_gguf_arr_i64(a, 5, &v), -1);           /* out of bounds */
    a = ds4_gguf_find(&g, "k.arr_f32");
    assert_int_equal(ds4_gguf_arr_f64(a, 2, &d), 0);
    assert_true(d == 7);
    assert_int_equal(ds4_gguf_find(&g, "k.arr_empty")->n, 0);
    for (int k = 0; k < 5; k++) {
        const ds4_gguf_tensor *t = ds4_gguf_find_tensor(&g, nm[k]);
        assert_non_null(t);
        assert_int_equal(t->type, ts[k].type);
        assert_int_equal(t->ndim, ts[k].nd);
        for (int dd = 0; dd < ts[k].nd; dd++) assert_int_equal(t->ne[dd], ts[k].ne[dd]);
        assert_int_equal(t->nbytes, ts[k].bytes);
        assert_int_equal((size_t)((const uint8_t *)t->data - g.base) % 64, 0);
        assert_memory_equal(t->data, data[k], ts[k].bytes);
    }
    ds4_gguf_close(&g);
    unlink(path);
}

static void test_truncation_every_offset(void **s) {
    (void)s;
    buf x;
    build_valid(&x);
    for (size_t len = 0; len < x.n; len++) expect_fail(&x, len, NULL);
    /* also through a file, so the mmap path sees it */
    char path[64];
    snprintf(path, sizeof path, "/tmp/ds4_test_gguf_tr_%d.gguf", (int)getpid());
    for (size_t len = 0; len < x.n; len += 37) {
        FILE *f = fopen(path, "wb");
        fwrite(x.b, 1, len, f);
        fclose(f);
        ds4_gguf g;
        assert_int_equal(ds4_gguf_open(&g, path), -1);
        assert_non_null(strstr(ds4_error(), path));
    }
    unlink(path);
}

static void test_bad_header(void **s) {
    (void)s;
    buf x;
    build_valid(&x);
    x.b[0] = 'X';
    expect_fail(&x, x.n, "not a GGUF");
    build_valid(&x);
    x.b[4] = 9;
    expect_fail(&x, x.n, "version 9");
    build_valid(&x);
    uint64_t huge = 1ULL << 60;
    memcpy(x.b + 8, &huge, 8);
    expect_fail(&x, x.n, "claims");
    build_valid(&x);
    memcpy(x.b + 16, &huge, 8);
    expect_fail(&x, x.n, "claims");
    build_valid(&x);
    uint64_t big = 1ULL << 40;                 /* key length beyond the file */
    memcpy(x.b + off_str_len, &big, 8);
    expect_fail(&x, x.n, "length");
    build_valid(&x);
    uint64_t m1 = UINT64_MAX;                  /* length that would overflow pos + len */
    memcpy(x.b + off_str_len, &m1, 8);
    expect_fail(&x, x.n, "length");
}

/* Patch one field of a valid file and expect an error mentioning needle. */
static void patch32(size_t at, uint32_t v, const char *needle) {
    buf x;
    build_valid(&x);
    memcpy(x.b + at, &v, 4);
    expect_fail(&x, x.n, needle);
}
static void patch64(size_t at, uint64_t v, const char *needle) {
    buf x;
    build_valid(&x);
    memcpy(x.b + at, &v, 8);
    expect_fail(&x, x.n, needle);
}

static void test_bad_fields(void **s) {
    (void)s;
    size_t k0type = off_str_len + 8 + 3;                  /* value type of key a.n */
    patch32(k0type, 77, "unknown value type");
    size_t arr_type = off_str_len + 8 + 3 + 4 + 4 + 8 + 6 + 4;
    patch32(arr_type, DS4_GGUF_ARR, "nested");
    patch64(arr_type + 4, 1ULL << 62, "claims");          /* string array count */
    patch32(off_t0_type, 99, "ggml type 99");
    patch32(off_t0_type - 8 - 4, 0, "dimensions");        /* t0 n_dims = 0 */
    patch32(off_t0_type - 8 - 4, 9, "dimensions");
    patch64(off_t0_type - 8, 0, "dimension");             /* ne = 0 */
    patch64(off_t0_type - 8, 1ULL << 62, "dimension");
    patch64(off_t1_offset, 33, "alignment");              /* misaligned */
    patch64(off_t1_offset, 1ULL << 40, "outside");        /* out of range */
    patch64(off_t1_offset, 0, "overlap");                 /* overlaps t0 */
    patch64(off_t1_offset - 4 - 8 - 8, 48, "block size"); /* Q8_0 ne[0] = 48 */
    patch64(off_t1_offset - 4 - 8, 3, "outside");         /* 3 rows: beyond data */
    /* duplicate tensor name: rename t1 to t0 */
    buf x;
    build_valid(&x);
    size_t t1name = off_t1_offset - 4 - 8 - 8 - 4 - 2;
    assert_memory_equal(x.b + t1name, "t1", 2);
    x.b[t1name + 1] = '0';
    expect_fail(&x, x.n, "twice");
    /* duplicate key */
    x.n = 0;
    wn(&x, "GGUF", 4);
    w32(&x, 3);
    w64(&x, 0);
    w64(&x, 2);
    for (int k = 0; k < 2; k++) { wstr(&x, "a.n"); w32(&x, DS4_GGUF_U32); w32(&x, 1); }
    expect_fail(&x, x.n, "twice");
}

static void test_bad_alignment_key(void **s) {
    (void)s;
    ds4_gguf_writer *w = ds4_gguf_writer_new();
    assert_int_equal(ds4_gguf_add_u32(w, "general.alignment", 48), -1);
    assert_int_equal(ds4_gguf_add_i32(w, "general.alignment", 32), -1);
    ds4_gguf_writer_free(w);
    buf x = {{0}, 0};
    wn(&x, "GGUF", 4);
    w32(&x, 3);
    w64(&x, 0);
    w64(&x, 1);
    wstr(&x, "general.alignment");
    w32(&x, DS4_GGUF_U32);
    w32(&x, 3);
    expect_fail(&x, x.n, "power of two");
    x.n -= 8;
    w32(&x, DS4_GGUF_STR);
    expect_fail(&x, x.n, NULL);
}

/* Random byte mutations of a valid file: parse either succeeds or fails with
 * an error; ASan/UBSan catch any out-of-bounds read. */
static void test_mutations(void **s) {
    (void)s;
    buf x, y;
    build_valid(&x);
    ds4_rng r;
    ds4_rng_seed(&r, 7);
    int ok = 0;
    for (int it = 0; it < 20000; it++) {
        y = x;
        int nm = 1 + (int)(ds4_rng_u64(&r) % 4);
        for (int k = 0; k < nm; k++) y.b[ds4_rng_u64(&r) % x.n] = (uint8_t)ds4_rng_u64(&r);
        ds4_gguf g;
        if (ds4_gguf_parse(&g, y.b, y.n, "m.gguf") == 0) {
            ok++;
            for (int64_t i = 0; i < g.n_tensors; i++) {
                const ds4_gguf_tensor *t = &g.tensors[i];
                assert_true((const uint8_t *)t->data + t->nbytes <= g.base + g.size);
            }
            ds4_gguf_close(&g);
        } else {
            assert_true(strlen(ds4_error()) > 0);
        }
    }
    assert_true(ok > 0);    /* mutations of the data bytes stay valid */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_file_parses),   cmocka_unit_test(test_writer_bytes_match_spec),
        cmocka_unit_test(test_roundtrip_all_types), cmocka_unit_test(test_truncation_every_offset),
        cmocka_unit_test(test_bad_header),          cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_bad_alignment_key),  cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
