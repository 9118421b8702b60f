/* cmd_world.c — `ds4 world`: the physics world of SPEC §3. gen writes a
 * dataset split (shards + JSON Lines), render writes one clip for a person to
 * look at, show replays a dataset clip, check validates a dataset; eval
 * measures a world model against the simulator (bench_world.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "ds4.h"
#include "util/util.h"
#include "world/world.h"

static void world_usage(FILE *f) {
    fprintf(f,
        "usage: ds4 world <gen|render|show|check|eval> [options]\n\n"
        "  gen     --n N --out DIR [--split train|val|test] [--seed S] [--size 64 | --width W --height H]\n"
        "          [--seconds 10] [--fps 24] [--shard-clips 64] [--threads T]\n"
        "          writes DIR/<split>-NNNNN.ds4w (raw RGB8 frames) and DIR/<split>.jsonl (annotations);\n"
        "          clip k of a split has seed S+k (train), 1000000+S+k (val), 2000000+S+k (test)\n"
        "  render  --seed S --out clip.gif [--size 64 | --width W --height H] [--seconds 10] [--fps 24]\n"
        "          [--scale 4] [--png DIR] [--mp4 FILE] [--json FILE]\n"
        "          one clip of a seed as an animated GIF (and PNG frames, MP4, annotation JSON)\n"
        "  show    --shard FILE --clip K --out clip.gif [--scale 4]   replay a clip of a shard\n"
        "  check   --data DIR [--split train]   verify every shard CRC and annotation line\n"
        "  eval    --model DIR [--data DIR] [--clips 32] [--given 12] [--horizon 48] [--json FILE]\n"
        "          physics of a world model's continuations vs the simulator, baselines, text-to-video\n");
}

typedef struct { double t0, last; } progress_state;

static void progress_bar(void *user, int done, int total) {
    progress_state *ps = user;
    double now = ds4_time_s();
    if (done < total && now - ps->last < 0.2) return;
    ps->last = now;
    double el = now - ps->t0, rate = el > 0 ? done / el : 0, eta = rate > 0 ? (total - done) / rate : 0;
    int width = 30, fill = (int)((double)width * done / total);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
    bar[width] = 0;
    fprintf(stderr, "\r[%s] %d/%d clips  %.1f clips/s  ETA %.0fs ", bar, done, total, rate, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

/* Options shared by gen and render. */
typedef struct {
    long n, seed, width, height, fps, shard_clips, threads, scale, clip;
    double seconds;
    const char *out, *split, *png, *mp4, *json, *shard, *data;
} world_opts;

static int parse_opts(int argc, char **argv, world_opts *o) {
    const char *cmd = "world";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { world_usage(stdout); return 1; }
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "--n")) { VAL(); if (cli_int(cmd, a, v, 1, 1000000, &o->n)) return 2; }
        else if (!strcmp(a, "--seed")) { VAL(); if (cli_int(cmd, a, v, 0, 1L << 52, &o->seed)) return 2; }
        else if (!strcmp(a, "--size")) {
            VAL();
            if (cli_int(cmd, a, v, 8, 4096, &o->width)) return 2;
            o->height = o->width;
        }
        else if (!strcmp(a, "--width")) { VAL(); if (cli_int(cmd, a, v, 8, 4096, &o->width)) return 2; }
        else if (!strcmp(a, "--height")) { VAL(); if (cli_int(cmd, a, v, 8, 4096, &o->height)) return 2; }
        else if (!strcmp(a, "--fps")) { VAL(); if (cli_int(cmd, a, v, 1, 240, &o->fps)) return 2; }
        else if (!strcmp(a, "--shard-clips")) { VAL(); if (cli_int(cmd, a, v, 1, 100000, &o->shard_clips)) return 2; }
        else if (!strcmp(a, "--threads")) { VAL(); if (cli_int(cmd, a, v, 1, 1024, &o->threads)) return 2; }
        else if (!strcmp(a, "--scale")) { VAL(); if (cli_int(cmd, a, v, 1, 64, &o->scale)) return 2; }
        else if (!strcmp(a, "--clip")) { VAL(); if (cli_int(cmd, a, v, 0, 1000000, &o->clip)) return 2; }
        else if (!strcmp(a, "--seconds")) {
            VAL();
            if (cli_float(cmd, a, v, &o->seconds)) return 2;
            if (!(o->seconds > 0 && o->seconds <= 600)) {
                fprintf(stderr, "ds4 world: --seconds must be in (0, 600], got %s\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--out")) { VAL(); o->out = v; }
        else if (!strcmp(a, "--split")) { VAL(); o->split = v; }
        else if (!strcmp(a, "--png")) { VAL(); o->png = v; }
        else if (!strcmp(a, "--mp4")) { VAL(); o->mp4 = v; }
        else if (!strcmp(a, "--json")) { VAL(); o->json = v; }
        else if (!strcmp(a, "--shard")) { VAL(); o->shard = v; }
        else if (!strcmp(a, "--data")) { VAL(); o->data = v; }
        else return cli_unknown(cmd, a);
#undef VAL
    }
    return 0;
}

static int n_frames_of(const world_opts *o) {
    long n = (long)(o->seconds * o->fps + 0.5);
    return n < 1 ? 1 : (int)n;
}

static int world_gen(const world_opts *o) {
    if (!o->out || o->n <= 0) {
        fprintf(stderr, "ds4 world gen: --n and --out are required (see ds4 world --help)\n");
        return 2;
    }
    ds4_world_gen_opts g = {
        .out_dir = o->out, .split = o->split, .n_clips = (int)o->n,
        .width = (int)o->width, .height = (int)o->height, .fps = (int)o->fps,
        .n_frames = n_frames_of(o), .seed = (uint64_t)o->seed,
        .clips_per_shard = (int)o->shard_clips, .threads = (int)o->threads,
    };
    uint64_t first;
    if (ds4_world_split_seed(g.split, g.seed, &first) != 0) return cli_fail("world gen");
    progress_state ps = {ds4_time_s(), 0};
    if (ds4_world_gen_dataset(&g, progress_bar, &ps) != 0) {
        fputc('\n', stderr);
        return cli_fail("world gen");
    }
    double el = ds4_time_s() - ps.t0;
    int cps = g.clips_per_shard > 0 ? g.clips_per_shard : 64;
    double mb = (double)g.n_clips * g.n_frames * g.width * g.height * 3 / 1e6;
    printf("wrote %d clips (%s, seeds %llu..%llu), %d frames of %dx%d at %d fps: %d shard(s) %s/%s-*.ds4w "
           "(%.1f MB) and %s/%s.jsonl in %.2f s (%.1f ms/clip)\n",
           g.n_clips, g.split, (unsigned long long)first, (unsigned long long)(first + g.n_clips - 1),
           g.n_frames, g.width, g.height, g.fps, (g.n_clips + cps - 1) / cps, g.out_dir, g.split, mb,
           g.out_dir, g.split, el, 1e3 * el / g.n_clips);
    return 0;
}

static int write_outputs(const world_opts *o, const uint8_t *rgb, int n_frames, int w, int h, int fps) {
    if (o->out && ds4_world_write_gif(o->out, rgb, n_frames, w, h, fps, (int)o->scale) != 0) return -1;
    if (o->png && ds4_world_write_png_frames(o->png, rgb, n_frames, w, h) != 0) return -1;
    if (o->mp4 && ds4_world_write_mp4(o->mp4, rgb, n_frames, w, h, fps) != 0) return -1;
    return 0;
}

static int world_render(const world_opts *o) {
    if (!o->out && !o->png && !o->mp4 && !o->json) {
        fprintf(stderr, "ds4 world render: nothing to write: give --out clip.gif (or --png, --mp4, --json)\n");
        return 2;
    }
    ds4_world_clip c;
    double t0 = ds4_time_s();
    if (ds4_world_clip_make(&c, (uint64_t)o->seed, (int)o->width, (int)o->height, (int)o->fps,
                            n_frames_of(o), 1) != 0)
        return cli_fail("world render");
    double t_sim = ds4_time_s() - t0;
    int rc = write_outputs(o, c.rgb, c.n_frames, c.width_px, c.height_px, c.fps);
    if (rc == 0 && o->json) {
        char *js = ds4_world_clip_to_json(&c);
        rc = js ? ds4_write_file_atomic(o->json, js, strlen(js)) : -1;
        free(js);
    }
    if (rc != 0) { ds4_world_clip_free(&c); return cli_fail("world render"); }
    printf("seed %ld: %s\n", o->seed, c.caption);
    printf("%d frames of %dx%d at %d fps, g %.3f, restitution %.3f, %d events; simulated and rendered in %.1f ms\n",
           c.n_frames, c.width_px, c.height_px, c.fps, c.scene.g, c.scene.restitution, c.n_events, 1e3 * t_sim);
    if (o->out) printf("wrote %s\n", o->out);
    ds4_world_clip_free(&c);
    return 0;
}

static int world_show(const world_opts *o) {
    if (!o->shard || (!o->out && !o->png && !o->mp4)) {
        fprintf(stderr, "ds4 world show: --shard FILE and --out clip.gif (or --png, --mp4) are required\n");
        return 2;
    }
    ds4_world_shard *s = ds4_world_shard_open(o->shard, 0);
    if (!s) return cli_fail("world show");
    const uint8_t *rgb = ds4_world_shard_clip(s, (int)o->clip);
    int rc = rgb ? ds4_world_shard_verify_clip(s, (int)o->clip) : -1;
    if (rc == 0) rc = write_outputs(o, rgb, s->n_frames, s->width, s->height, s->fps);
    if (rc == 0)
        printf("clip %ld of %s: seed %llu, %d frames of %dx%d at %d fps\n", o->clip, o->shard,
               (unsigned long long)s->seeds[o->clip], s->n_frames, s->width, s->height, s->fps);
    ds4_world_shard_close(s);
    return rc == 0 ? 0 : cli_fail("world show");
}

typedef struct { uint64_t *seeds; int n_seeds, n_checked; } check_state;

static int check_line(void *user, const ds4_world_clip *c, int index) {
    check_state *cs = user;
    if (index >= cs->n_seeds) {
        ds4_set_error("annotation line %d has no clip in the shards (%d clips)", index + 1, cs->n_seeds);
        return -1;
    }
    if (c->scene.seed != cs->seeds[index]) {
        ds4_set_error("annotation %d has seed %llu, shard clip %d has seed %llu", index + 1,
                      (unsigned long long)c->scene.seed, index, (unsigned long long)cs->seeds[index]);
        return -1;
    }
    cs->n_checked++;
    return 0;
}

static int world_check(const world_opts *o) {
    if (!o->data) { fprintf(stderr, "ds4 world check: --data DIR is required\n"); return 2; }
    char **paths;
    int n;
    if (ds4_world_dataset_shards(o->data, o->split, &paths, &n) != 0) return cli_fail("world check");
    check_state cs = {0};
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        ds4_world_shard *s = ds4_world_shard_open(paths[i], 1);
        if (!s) { rc = -1; break; }
        uint64_t *ns = realloc(cs.seeds, (size_t)(cs.n_seeds + s->n_clips) * sizeof *ns);
        if (!ns) { ds4_set_error("out of memory"); rc = -1; }
        else {
            cs.seeds = ns;
            memcpy(cs.seeds + cs.n_seeds, s->seeds, (size_t)s->n_clips * sizeof *ns);
            cs.n_seeds += s->n_clips;
        }
        ds4_world_shard_close(s);
    }
    char ann[4200];
    snprintf(ann, sizeof ann, "%s/%s.jsonl", o->data, o->split);
    if (rc == 0) rc = ds4_world_annotations_foreach(ann, check_line, &cs);
    if (rc == 0 && cs.n_checked != cs.n_seeds) {
        ds4_set_error("%s: %d annotation lines for %d clips", ann, cs.n_checked, cs.n_seeds);
        rc = -1;
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(cs.seeds);
    if (rc != 0) return cli_fail("world check");
    printf("%s/%s: %d shard(s), %d clips, all CRCs and annotations valid\n", o->data, o->split, n, cs.n_seeds);
    return 0;
}

int cmd_world(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) {
        world_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "eval")) return world_eval(argc - 1, argv + 1);   /* bench_world.c */
    world_opts o = {.seed = 0, .width = 64, .height = 64, .fps = 24, .seconds = 10.0, .scale = 4,
                    .split = "train", .shard_clips = 64};
    int rc = parse_opts(argc - 1, argv + 1, &o);
    if (rc == 1) return 0;
    if (rc != 0) return rc;
    if (!strcmp(sub, "gen")) return world_gen(&o);
    if (!strcmp(sub, "render")) return world_render(&o);
    if (!strcmp(sub, "show")) return world_show(&o);
    if (!strcmp(sub, "check")) return world_check(&o);
    fprintf(stderr, "ds4 world: unknown subcommand '%s'\n", sub);
    world_usage(stderr);
    return 2;
}
