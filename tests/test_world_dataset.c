/* test_world_dataset.c — the clip dataset on disk: CRC-32 known value, shard
 * write/read round trip, one case per kind of corrupt shard (each a clear
 * error, never a crash), dataset generation (shards + JSON Lines) checked
 * field by field with cJSON against SPEC §3 and against re-simulated clips,
 * split seed ranges, and annotation parsing errors naming file and line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "ds4.h"
#include "util/util.h"
#include "testutil.h"
#include "world/world.h"

static int setup(void **state) {
    (void)state;
    return tmpdir_make("world_data");
}

static int teardown(void **state) {
    (void)state;
    return tmpdir_remove();
}

static void test_crc32(void **state) {
    (void)state;
    assert_int_equal(ds4_world_crc32(0, "123456789", 9), 0xCBF43926u);   /* the standard check value */
    assert_int_equal(ds4_world_crc32(0, "", 0), 0u);
    /* incremental = one shot, across the 8-byte fast path and the tail */
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (uint8_t)(i * 37 + 11);
    uint32_t one = ds4_world_crc32(0, buf, 1000);
    assert_int_equal(ds4_world_crc32(ds4_world_crc32(0, buf, 13), buf + 13, 987), one);
    /* bytewise reference */
    uint32_t c = 0xFFFFFFFFu;
    for (int i = 0; i < 1000; i++) {
        c ^= buf[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    assert_int_equal(~c, one);
}

/* 3 clips of 5 frames of 12x10: write, read back, compare. */
static const int NF = 5, W = 12, H = 10, NCLIP = 3;

static uint8_t *make_clips(void) {
    size_t n = (size_t)NCLIP * NF * W * H * 3;
    uint8_t *d = malloc(n);
    for (size_t i = 0; i < n; i++) d[i] = (uint8_t)(i * 2654435761u >> 13);
    return d;
}

static void write_shard(const char *path, const uint8_t *clips) {
    ds4_world_shard_writer *w = ds4_world_shard_create(path, NCLIP, NF, W, H, 24);
    assert_non_null(w);
    for (int i = 0; i < NCLIP; i++)
        assert_int_equal(ds4_world_shard_add(w, 100 + 7 * (uint64_t)i, clips + (size_t)i * NF * W * H * 3), 0);
    assert_int_equal(ds4_world_shard_finish(w), 0);
}

static void test_shard_roundtrip(void **state) {
    (void)state;
    uint8_t *clips = make_clips();
    const char *path = tmp_path("a.ds4w");
    write_shard(path, clips);
    ds4_world_shard *s = ds4_world_shard_open(path, 1);
    assert_non_null(s);
    assert_int_equal(s->n_clips, NCLIP);
    assert_int_equal(s->n_frames, NF);
    assert_int_equal(s->width, W);
    assert_int_equal(s->height, H);
    assert_int_equal(s->fps, 24);
    for (int i = 0; i < NCLIP; i++) {
        assert_int_equal(s->seeds[i], 100 + 7 * i);
        assert_memory_equal(ds4_world_shard_clip(s, i), clips + (size_t)i * NF * W * H * 3, (size_t)NF * W * H * 3);
    }
    assert_null(ds4_world_shard_clip(s, NCLIP));
    assert_non_null(strstr(ds4_error(), "out of range"));
    ds4_world_shard_close(s);
    /* exact size on disk: header + table + data */
    char *data;
    size_t len;
    assert_int_equal(ds4_read_file(path, &data, &len), 0);
    assert_int_equal(len, 64 + 16 * NCLIP + (size_t)NCLIP * NF * W * H * 3);
    assert_memory_equal(data, "DS4WCLIP", 8);
    free(data);
    /* a writer finished early leaves no file behind */
    const char *p2 = tmp_path("short.ds4w");
    ds4_world_shard_writer *w = ds4_world_shard_create(p2, 2, NF, W, H, 24);
    assert_int_equal(ds4_world_shard_add(w, 1, clips), 0);
    assert_int_equal(ds4_world_shard_finish(w), -1);
    assert_non_null(strstr(ds4_error(), "1 clips added"));
    assert_int_equal(access(p2, F_OK), -1);
    free(clips);
}

/* Write a modified copy of a good shard and expect open to fail with `what`. */
static void expect_corrupt(const char *data, size_t len, const char *what, int verify) {
    const char *p = tmp_path("bad.ds4w");
    assert_int_equal(ds4_write_file_atomic(p, data, len), 0);
    ds4_world_shard *s = ds4_world_shard_open(p, verify);
    if (s) fprintf(stderr, "expected failure '%s'\n", what);
    assert_null(s);
    if (!strstr(ds4_error(), what)) fprintf(stderr, "error was: %s\n", ds4_error());
    assert_non_null(strstr(ds4_error(), what));
    assert_non_null(strstr(ds4_error(), "bad.ds4w"));
}

static void test_shard_corrupt(void **state) {
    (void)state;
    uint8_t *clips = make_clips();
    const char *path = tmp_path("good.ds4w");
    write_shard(path, clips);
    char *good;
    size_t len;
    assert_int_equal(ds4_read_file(path, &good, &len), 0);
    char *d = malloc(len + 16);

    expect_corrupt(good, 0, "shorter than", 0);                      /* empty */
    expect_corrupt(good, 40, "shorter than", 0);                     /* inside the header */
    expect_corrupt(good, 70, "truncated", 0);                        /* inside the table */
    expect_corrupt(good, len - 1, "truncated", 0);                   /* last byte missing */
    memcpy(d, good, len); memcpy(d + len, "garbage!", 8);
    expect_corrupt(d, len + 8, "trailing garbage", 0);
    memcpy(d, good, len); d[0] = 'X';
    expect_corrupt(d, len, "bad magic", 0);
    memcpy(d, good, len); d[8] = 9;
    expect_corrupt(d, len, "version 9", 0);
    memcpy(d, good, len); d[12] = 2;                                 /* n_clips 3 -> 2 */
    expect_corrupt(d, len, "CRC32", 0);
    memcpy(d, good, len); d[16] = 0;                                 /* frames 0 */
    expect_corrupt(d, len, "frames 0", 0);
    memcpy(d, good, len); d[15] = 0x7f;                              /* n_clips enormous */
    expect_corrupt(d, len, "n_clips", 0);
    memcpy(d, good, len); d[28] = 4;                                 /* channels */
    expect_corrupt(d, len, "channels", 0);
    memcpy(d, good, len); d[64 + 16 + 3] ^= 1;                       /* a seed in the table */
    expect_corrupt(d, len, "header CRC32", 0);
    /* a flipped pixel: the header is fine, the clip CRC catches it */
    memcpy(d, good, len); d[len - 100] ^= 0x40;
    expect_corrupt(d, len, "clip 2 (seed 114) is corrupt", 1);
    const char *p = tmp_path("bad.ds4w");
    ds4_world_shard *s = ds4_world_shard_open(p, 0);
    assert_non_null(s);                                              /* lazy open works ... */
    assert_int_equal(ds4_world_shard_verify_clip(s, 0), 0);
    assert_int_equal(ds4_world_shard_verify_clip(s, 2), -1);         /* ... and the check finds it */
    ds4_world_shard_close(s);
    assert_null(ds4_world_shard_open(tmp_path("missing.ds4w"), 0));
    assert_non_null(strstr(ds4_error(), "cannot open"));
    free(d);
    free(good);
    free(clips);
}

/* ---- generated dataset ---------------------------------------------------- */

static const cJSON *field(const cJSON *o, const char *key, int type_ok) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) fprintf(stderr, "missing field %s\n", key);
    assert_non_null(v);
    assert_true(type_ok == 0 ? cJSON_IsNumber(v) : type_ok == 1 ? cJSON_IsString(v) : cJSON_IsArray(v));
    return v;
}

static int count_keys(const cJSON *o) {
    int n = 0;
    for (const cJSON *c = o->child; c; c = c->next) n++;
    return n;
}

static void check_annotation(const char *line, uint64_t seed, int n_frames, int w, int h) {
    cJSON *root = cJSON_Parse(line);
    assert_non_null(root);
    assert_int_equal(count_keys(root), 11);   /* exactly the SPEC §3 fields */
    assert_true(field(root, "seed", 0)->valuedouble == (double)seed);
    assert_int_equal(field(root, "fps", 0)->valueint, 24);
    assert_int_equal(field(root, "width_px", 0)->valueint, w);
    assert_int_equal(field(root, "height_px", 0)->valueint, h);
    assert_true(fabs(field(root, "px_per_m", 0)->valuedouble - w / 4.0) < 1e-9);
    double g = field(root, "g", 0)->valuedouble, e = field(root, "restitution", 0)->valuedouble;
    assert_true(g >= 6 && g <= 14 && e >= 0.6 && e <= 0.95);
    assert_true(strlen(field(root, "caption", 1)->valuestring) > 10);
    const cJSON *objs = field(root, "objects", 2);
    int n_obj = cJSON_GetArraySize(objs), n_balls = 0;
    assert_true(n_obj >= 1);
    for (int i = 0; i < n_obj; i++) {
        const cJSON *o = cJSON_GetArrayItem(objs, i);
        assert_int_equal(count_keys(o), 5);
        assert_int_equal(field(o, "id", 0)->valueint, i);
        const char *kind = field(o, "kind", 1)->valuestring, *color = field(o, "color", 1)->valuestring;
        assert_true(!strcmp(kind, "ball") || !strcmp(kind, "water"));
        if (!strcmp(kind, "ball")) {
            n_balls++;
            int c = ds4_world_color_from_name(color);
            assert_true(c >= DS4_WC_RED && c <= DS4_WC_YELLOW);
            double r = field(o, "radius_m", 0)->valuedouble, m = field(o, "mass", 0)->valuedouble;
            assert_true(r >= 0.15 && r <= 0.4);
            assert_true(fabs(m - M_PI * r * r) < 1e-6);     /* mass ∝ r² */
        } else {
            assert_string_equal(color, "water");
            field(o, "radius_m", 0);
            field(o, "mass", 0);
        }
    }
    const cJSON *frames = field(root, "frames", 2);
    assert_int_equal(cJSON_GetArraySize(frames), n_frames);
    int i = 0;
    for (const cJSON *fr = frames->child; fr; fr = fr->next, i++) {
        assert_int_equal(field(fr, "i", 0)->valueint, i);
        const cJSON *arr = field(fr, "objects", 2);
        assert_int_equal(cJSON_GetArraySize(arr), n_obj);
        int k = 0;
        for (const cJSON *o = arr->child; o; o = o->next, k++) {
            assert_int_equal(field(o, "id", 0)->valueint, k);
            double x = field(o, "x", 0)->valuedouble, y = field(o, "y", 0)->valuedouble;
            field(o, "vx", 0);
            field(o, "vy", 0);
            if (k >= n_balls) {
                int np = field(o, "particles", 0)->valueint;
                assert_true(np >= 0 && np <= DS4_WORLD_MAX_PARTICLES);
                if (np == 0) continue;
            }
            assert_true(x > DS4_WORLD_WALL_M && x < 4.0 - DS4_WORLD_WALL_M);
            assert_true(y > DS4_WORLD_WALL_M && y < 4.0 * h / w);
        }
    }
    const cJSON *evs = field(root, "events", 2);
    for (const cJSON *ev = evs->child; ev; ev = ev->next) {
        int f = field(ev, "frame", 0)->valueint;
        assert_true(f >= 1 && f < n_frames);
        const char *type = field(ev, "type", 1)->valuestring;
        const cJSON *ids = field(ev, "ids", 2);
        if (!strcmp(type, "collision")) assert_int_equal(cJSON_GetArraySize(ids), 2);
        else if (!strcmp(type, "bounce")) assert_int_equal(cJSON_GetArraySize(ids), 1);
        else { assert_string_equal(type, "pour"); assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, n_obj - 1); }
    }
    cJSON_Delete(root);
}

typedef struct { int n; uint64_t first; } count_state;

static int count_fn(void *user, const ds4_world_clip *c, int index) {
    count_state *cs = user;
    assert_int_equal(c->scene.seed, cs->first + (uint64_t)index);
    cs->n++;
    return 0;
}

static void test_gen_dataset(void **state) {
    (void)state;
    const char *dir = tmp_path("ds");
    ds4_world_gen_opts o = {.out_dir = dir, .split = "val", .n_clips = 7, .width = 32, .height = 32,
                            .fps = 24, .n_frames = 36, .seed = 50, .clips_per_shard = 3, .threads = 2};
    assert_int_equal(ds4_world_gen_dataset(&o, NULL, NULL), 0);
    char **paths;
    int n;
    assert_int_equal(ds4_world_dataset_shards(dir, "val", &paths, &n), 0);
    assert_int_equal(n, 3);
    FILE *f = fopen(tmp_path("ds/val.jsonl"), "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    int clip = 0, water = 0;
    for (int s = 0; s < n; s++) {
        ds4_world_shard *sh = ds4_world_shard_open(paths[s], 1);
        assert_non_null(sh);
        assert_int_equal(sh->n_clips, s < 2 ? 3 : 1);
        for (int i = 0; i < sh->n_clips; i++, clip++) {
            uint64_t seed = DS4_WORLD_SPLIT_STRIDE + 50 + (uint64_t)clip;   /* val range */
            assert_int_equal(sh->seeds[i], seed);
            assert_true(getline(&line, &cap, f) > 0);
            check_annotation(line, seed, 36, 32, 32);
            /* the shard frames and the annotation are those of the seed's clip */
            ds4_world_clip c, back;
            assert_int_equal(ds4_world_clip_make(&c, seed, 32, 32, 24, 36, 1), 0);
            assert_memory_equal(ds4_world_shard_clip(sh, i), c.rgb, (size_t)36 * 32 * 32 * 3);
            char *js = ds4_world_clip_to_json(&c);
            assert_true(strncmp(line, js, strlen(js)) == 0 && line[strlen(js)] == '\n');
            /* parse back: states within the 1e-4 rounding, events and caption identical */
            assert_int_equal(ds4_world_clip_from_json(&back, line, "test"), 0);
            assert_int_equal(back.n_objects, c.n_objects);
            assert_int_equal(back.n_events, c.n_events);
            assert_string_equal(back.caption, c.caption);
            for (size_t k = 0; k < (size_t)36 * c.n_objects; k++) {
                assert_true(fabs(back.states[k].x - c.states[k].x) <= 5e-5 + 1e-12);
                assert_true(fabs(back.states[k].vy - c.states[k].vy) <= 5e-5 + 1e-12);
                assert_int_equal(back.states[k].n, c.states[k].n);
            }
            for (int k = 0; k < c.n_events; k++) {
                assert_int_equal(back.events[k].frame, c.events[k].frame);
                assert_int_equal(back.events[k].type, c.events[k].type);
                assert_int_equal(back.events[k].ids[0], c.events[k].ids[0]);
            }
            for (int b = 0; b < c.scene.n_balls; b++) {     /* initial conditions are exact */
                assert_true(back.scene.balls[b].x == c.scene.balls[b].x);
                assert_true(back.scene.balls[b].r == c.scene.balls[b].r);
            }
            assert_true(back.scene.g == c.scene.g && back.scene.restitution == c.scene.restitution);
            water += c.scene.water.enabled;
            free(js);
            ds4_world_clip_free(&c);
            ds4_world_clip_free(&back);
        }
        ds4_world_shard_close(sh);
    }
    assert_true(getline(&line, &cap, f) < 0);   /* exactly one line per clip */
    fclose(f);
    free(line);
    for (int s = 0; s < n; s++) free(paths[s]);
    free(paths);
    count_state cs = {0, DS4_WORLD_SPLIT_STRIDE + 50};
    assert_int_equal(ds4_world_annotations_foreach(tmp_path("ds/val.jsonl"), count_fn, &cs), 0);
    assert_int_equal(cs.n, 7);

    /* a smaller rerun removes the extra shard of the earlier run */
    o.n_clips = 2;
    assert_int_equal(ds4_world_gen_dataset(&o, NULL, NULL), 0);
    assert_int_equal(ds4_world_dataset_shards(dir, "val", &paths, &n), 0);
    assert_int_equal(n, 1);
    free(paths[0]);
    free(paths);
    (void)water;
}

/* A water clip's annotation has the water object with particle counts. */
static void test_water_annotation(void **state) {
    (void)state;
    uint64_t seed = 0;
    ds4_world_scene sc;
    for (;; seed++) {
        assert_int_equal(ds4_world_scene_random(&sc, seed, 64, 64), 0);
        if (sc.water.enabled && sc.water.t_start < 0.5) break;
    }
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, seed, 64, 64, 24, 48, 0), 0);
    char *js = ds4_world_clip_to_json(&c);
    check_annotation(js, seed, 48, 64, 64);
    cJSON *root = cJSON_Parse(js);
    const cJSON *objs = cJSON_GetObjectItem(root, "objects");
    const cJSON *wobj = cJSON_GetArrayItem(objs, cJSON_GetArraySize(objs) - 1);
    assert_string_equal(cJSON_GetObjectItem(wobj, "kind")->valuestring, "water");
    const cJSON *last = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "frames"), 47);
    const cJSON *lw = cJSON_GetArrayItem(cJSON_GetObjectItem(last, "objects"), c.n_objects - 1);
    assert_true(cJSON_GetObjectItem(lw, "particles")->valueint > 10);
    int pours = 0;
    for (const cJSON *ev = cJSON_GetObjectItem(root, "events")->child; ev; ev = ev->next)
        pours += !strcmp(cJSON_GetObjectItem(ev, "type")->valuestring, "pour");
    assert_int_equal(pours, 1);
    assert_non_null(strstr(c.caption, "water pours in"));
    cJSON_Delete(root);
    free(js);
    ds4_world_clip_free(&c);
}

static void test_splits_and_errors(void **state) {
    (void)state;
    uint64_t first;
    assert_int_equal(ds4_world_split_seed("train", 5, &first), 0);
    assert_int_equal(first, 5);
    assert_int_equal(ds4_world_split_seed("val", 5, &first), 0);
    assert_int_equal(first, 1000005);
    assert_int_equal(ds4_world_split_seed("test", 5, &first), 0);
    assert_int_equal(first, 2000005);
    assert_int_equal(ds4_world_split_seed("dev", 5, &first), -1);
    assert_non_null(strstr(ds4_error(), "dev"));
    ds4_world_gen_opts o = {.out_dir = tmp_path("x"), .split = "train", .n_clips = 0, .width = 32,
                            .height = 32, .fps = 24, .n_frames = 10};
    assert_int_equal(ds4_world_gen_dataset(&o, NULL, NULL), -1);

    /* annotation errors name the file, line and field */
    const char *p = tmp_path("bad.jsonl");
    ds4_world_clip c;
    assert_int_equal(ds4_world_clip_make(&c, 9, 32, 32, 24, 4, 0), 0);
    char *js = ds4_world_clip_to_json(&c);
    ds4_world_clip_free(&c);
    char *text = malloc(2 * strlen(js) + 64);
    char *g = strstr(js, "\"g\":");
    assert_non_null(g);
    sprintf(text, "%s\n%.*s\"G\":%s\n", js, (int)(g - js), js, g + 4);   /* line 2 lacks "g" */
    assert_int_equal(ds4_write_file_atomic(p, text, strlen(text)), 0);
    count_state cs = {0, 9};
    assert_int_equal(ds4_world_annotations_foreach(p, count_fn, &cs), -1);
    assert_int_equal(cs.n, 1);
    assert_non_null(strstr(ds4_error(), "bad.jsonl:2"));
    assert_non_null(strstr(ds4_error(), "\"g\" is missing"));
    assert_int_equal(ds4_world_clip_from_json(&c, "{\"seed\": 1,", "x"), -1);
    assert_non_null(strstr(ds4_error(), "invalid JSON"));
    char *k = strstr(js, "\"kind\":\"ball\"");
    assert_non_null(k);
    memcpy(k, "\"kind\":\"cube\"", 13);
    assert_int_equal(ds4_world_clip_from_json(&c, js, "x"), -1);
    assert_non_null(strstr(ds4_error(), "objects[0]"));
    free(text);
    free(js);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32),
        cmocka_unit_test(test_shard_roundtrip),
        cmocka_unit_test(test_shard_corrupt),
        cmocka_unit_test(test_gen_dataset),
        cmocka_unit_test(test_water_annotation),
        cmocka_unit_test(test_splits_and_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
