/* dataset.c — the clip dataset on disk: binary shards of raw RGB8 frames
 * (format in world.h: header, clip table with seeds and CRC32s, frames), their
 * validating mmap reader, and the generator that writes shards plus the JSON
 * Lines annotations of a split (seed ranges per split, clips in parallel). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#include "util/util.h"
#include "world/world.h"

/* ---- CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) ------------------- */

static uint32_t crc_table[8][256];   /* slicing-by-8 tables */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t ds4_world_crc32(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint32_t a = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t b = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^ crc_table[5][(a >> 16) & 0xff] ^
              crc_table[4][a >> 24] ^ crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^
              crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
    }
    for (size_t i = 0; i < len; i++) crc = crc_table[0][(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian fields ---------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

#define MAX_CLIPS  1000000u
#define MAX_FRAMES 100000u
#define MAX_SIDE   4096u

/* ---- writer -------------------------------------------------------------------- */

struct ds4_world_shard_writer {
    ds4_atomic_file af;
    int       n_clips, added, n_frames, width, height, fps;
    size_t    clip_bytes;
    uint64_t *seeds;   /* [n_clips] */
    uint32_t *crcs;    /* [n_clips] */
};

static int check_dims(const char *path, long n_clips, long frames, long w, long h, long fps) {
    if (n_clips < 1 || n_clips > (long)MAX_CLIPS) { ds4_set_error("%s: n_clips %ld outside [1, %u]", path, n_clips, MAX_CLIPS); return -1; }
    if (frames < 1 || frames > (long)MAX_FRAMES) { ds4_set_error("%s: frames %ld outside [1, %u]", path, frames, MAX_FRAMES); return -1; }
    if (w < 1 || w > (long)MAX_SIDE || h < 1 || h > (long)MAX_SIDE) {
        ds4_set_error("%s: frame size %ldx%ld outside [1, %u]", path, w, h, MAX_SIDE);
        return -1;
    }
    if (fps < 1 || fps > 1000) { ds4_set_error("%s: fps %ld outside [1, 1000]", path, fps); return -1; }
    return 0;
}

ds4_world_shard_writer *ds4_world_shard_create(const char *path, int n_clips, int n_frames,
                                               int width, int height, int fps) {
    if (check_dims(path, n_clips, n_frames, width, height, fps) != 0) return NULL;
    ds4_world_shard_writer *w = ds4_calloc(1, sizeof *w);
    if (!w) return NULL;
    w->n_clips = n_clips; w->n_frames = n_frames; w->width = width; w->height = height; w->fps = fps;
    w->clip_bytes = (size_t)n_frames * width * height * 3;
    w->seeds = ds4_calloc((size_t)n_clips, sizeof *w->seeds);
    w->crcs = ds4_calloc((size_t)n_clips, sizeof *w->crcs);
    if (!w->seeds || !w->crcs || ds4_atomic_open(&w->af, path) != 0) {
        free(w->seeds); free(w->crcs); free(w);
        return NULL;
    }
    /* placeholder header and table, rewritten by finish */
    uint8_t zero[64] = {0};
    size_t hdr = DS4_WORLD_SHARD_HEADER + 16 * (size_t)n_clips;
    for (size_t off = 0; off < hdr; off += sizeof zero) {
        size_t k = hdr - off < sizeof zero ? hdr - off : sizeof zero;
        if (ds4_atomic_write(&w->af, zero, k) != 0) { ds4_world_shard_abort(w); return NULL; }
    }
    return w;
}

int ds4_world_shard_add(ds4_world_shard_writer *w, uint64_t seed, const uint8_t *rgb) {
    if (w->added >= w->n_clips) {
        ds4_set_error("%s: shard already holds its %d clips", w->af.path, w->n_clips);
        return -1;
    }
    if (ds4_atomic_write(&w->af, rgb, w->clip_bytes) != 0) return -1;
    w->seeds[w->added] = seed;
    w->crcs[w->added] = ds4_world_crc32(0, rgb, w->clip_bytes);
    w->added++;
    return 0;
}

void ds4_world_shard_abort(ds4_world_shard_writer *w) {
    if (!w) return;
    ds4_atomic_abort(&w->af);
    free(w->seeds);
    free(w->crcs);
    free(w);
}

int ds4_world_shard_finish(ds4_world_shard_writer *w) {
    if (w->added != w->n_clips) {
        ds4_set_error("%s: %d clips added, the shard was declared with %d", w->af.path, w->added, w->n_clips);
        ds4_world_shard_abort(w);
        return -1;
    }
    size_t hdr = DS4_WORLD_SHARD_HEADER + 16 * (size_t)w->n_clips;
    uint8_t *h = ds4_calloc(hdr, 1);
    if (!h) { ds4_world_shard_abort(w); return -1; }
    memcpy(h, DS4_WORLD_SHARD_MAGIC, 8);
    put_u32(h + 8, DS4_WORLD_SHARD_VERSION);
    put_u32(h + 12, (uint32_t)w->n_clips);
    put_u32(h + 16, (uint32_t)w->n_frames);
    put_u32(h + 20, (uint32_t)w->width);
    put_u32(h + 24, (uint32_t)w->height);
    put_u32(h + 28, 3);
    put_u32(h + 32, (uint32_t)w->fps);
    put_u64(h + 40, (uint64_t)w->clip_bytes);
    for (int i = 0; i < w->n_clips; i++) {
        put_u64(h + DS4_WORLD_SHARD_HEADER + 16 * (size_t)i, w->seeds[i]);
        put_u32(h + DS4_WORLD_SHARD_HEADER + 16 * (size_t)i + 8, w->crcs[i]);
    }
    uint32_t crc = ds4_world_crc32(0, h, 36);
    crc = ds4_world_crc32(crc, h + 40, hdr - 40);
    put_u32(h + 36, crc);
    int rc = 0;
    if (fseek(w->af.f, 0, SEEK_SET) != 0) {
        ds4_set_error("%s: cannot seek to rewrite the header: %s", w->af.tmp, strerror(errno));
        rc = -1;
    }
    if (rc == 0) rc = ds4_atomic_write(&w->af, h, hdr);
    free(h);
    if (rc != 0) { ds4_world_shard_abort(w); return -1; }
    rc = ds4_atomic_commit(&w->af);
    free(w->seeds);
    free(w->crcs);
    free(w);
    return rc;
}

/* ---- reader -------------------------------------------------------------------- */

void ds4_world_shard_close(ds4_world_shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_len);
    free(s->seeds);
    free(s->crcs);
    free(s);
}

int ds4_world_shard_verify_clip(const ds4_world_shard *s, int i) {
    const uint8_t *p = ds4_world_shard_clip(s, i);
    if (!p) return -1;
    uint32_t crc = ds4_world_crc32(0, p, s->clip_bytes);
    if (crc != s->crcs[i]) {
        ds4_set_error("%s: clip %d (seed %llu) is corrupt: CRC32 %08x, table says %08x",
                      s->path, i, (unsigned long long)s->seeds[i], crc, s->crcs[i]);
        return -1;
    }
    return 0;
}

ds4_world_shard *ds4_world_shard_open(const char *path, int verify) {
    ds4_world_shard *s = ds4_calloc(1, sizeof *s);
    if (!s) return NULL;
    snprintf(s->path, sizeof s->path, "%s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { ds4_set_error("%s: cannot open: %s", path, strerror(errno)); free(s); return NULL; }
    struct stat st;
    if (fstat(fd, &st) != 0) { ds4_set_error("%s: cannot stat: %s", path, strerror(errno)); close(fd); free(s); return NULL; }
    if (st.st_size < DS4_WORLD_SHARD_HEADER) {
        ds4_set_error("%s: %lld bytes, shorter than the %d-byte header (truncated or not a shard)",
                      path, (long long)st.st_size, DS4_WORLD_SHARD_HEADER);
        close(fd); free(s);
        return NULL;
    }
    s->map_len = (size_t)st.st_size;
    s->map = mmap(NULL, s->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        ds4_set_error("%s: cannot mmap: %s", path, strerror(errno));
        free(s);
        return NULL;
    }
    const uint8_t *h = s->map;
    if (memcmp(h, DS4_WORLD_SHARD_MAGIC, 8) != 0) { ds4_set_error("%s: bad magic (not a ds4 world shard)", path); goto fail; }
    uint32_t version = get_u32(h + 8);
    if (version != DS4_WORLD_SHARD_VERSION) {
        ds4_set_error("%s: version %u, this build reads %d", path, version, DS4_WORLD_SHARD_VERSION);
        goto fail;
    }
    uint32_t n = get_u32(h + 12), frames = get_u32(h + 16), w = get_u32(h + 20), hh = get_u32(h + 24);
    uint32_t ch = get_u32(h + 28), fps = get_u32(h + 32);
    uint64_t clip_bytes = get_u64(h + 40);
    if (check_dims(path, (long)n, (long)frames, (long)w, (long)hh, (long)fps) != 0) goto fail;
    if (ch != 3) { ds4_set_error("%s: channels %u, expected 3 (RGB8)", path, ch); goto fail; }
    if (clip_bytes != (uint64_t)frames * w * hh * 3) {
        ds4_set_error("%s: clip_bytes %llu != frames*height*width*3 = %llu", path,
                      (unsigned long long)clip_bytes, (unsigned long long)frames * w * hh * 3);
        goto fail;
    }
    uint64_t table = DS4_WORLD_SHARD_HEADER + 16ull * n;
    uint64_t want = table + (uint64_t)n * clip_bytes;
    if (s->map_len < table) {
        ds4_set_error("%s: truncated inside the clip table (%zu bytes, table ends at %llu)", path,
                      s->map_len, (unsigned long long)table);
        goto fail;
    }
    uint32_t crc = ds4_world_crc32(0, h, 36);
    crc = ds4_world_crc32(crc, h + 40, (size_t)table - 40);
    if (crc != get_u32(h + 36)) {
        ds4_set_error("%s: header CRC32 mismatch (%08x, stored %08x): corrupt header", path, crc, get_u32(h + 36));
        goto fail;
    }
    if ((uint64_t)s->map_len != want) {
        ds4_set_error("%s: %zu bytes, expected %llu for %u clips of %llu bytes (%s)", path, s->map_len,
                      (unsigned long long)want, n, (unsigned long long)clip_bytes,
                      (uint64_t)s->map_len < want ? "truncated" : "trailing garbage");
        goto fail;
    }
    s->n_clips = (int)n; s->n_frames = (int)frames; s->width = (int)w; s->height = (int)hh; s->fps = (int)fps;
    s->clip_bytes = (size_t)clip_bytes;
    s->seeds = ds4_malloc(n * sizeof *s->seeds);
    s->crcs = ds4_malloc(n * sizeof *s->crcs);
    if (!s->seeds || !s->crcs) goto fail;
    for (uint32_t i = 0; i < n; i++) {
        s->seeds[i] = get_u64(h + DS4_WORLD_SHARD_HEADER + 16 * (size_t)i);
        s->crcs[i] = get_u32(h + DS4_WORLD_SHARD_HEADER + 16 * (size_t)i + 8);
    }
    s->data = h + table;
    if (verify)
        for (int i = 0; i < s->n_clips; i++)
            if (ds4_world_shard_verify_clip(s, i) != 0) goto fail;
    return s;
fail:
    ds4_world_shard_close(s);
    return NULL;
}

const uint8_t *ds4_world_shard_clip(const ds4_world_shard *s, int i) {
    if (i < 0 || i >= s->n_clips) {
        ds4_set_error("%s: clip %d out of range [0, %d)", s->path, i, s->n_clips);
        return NULL;
    }
    return s->data + (size_t)i * s->clip_bytes;
}

/* ---- generation ------------------------------------------------------------------ */

int ds4_world_split_seed(const char *split, uint64_t seed, uint64_t *first) {
    static const char *const names[] = {"train", "val", "test"};
    for (int i = 0; i < 3; i++)
        if (split && !strcmp(split, names[i])) { *first = (uint64_t)i * DS4_WORLD_SPLIT_STRIDE + seed; return 0; }
    ds4_set_error("unknown split \"%s\" (train, val or test)", split ? split : "(null)");
    return -1;
}

static void shard_path(char *buf, size_t cap, const char *dir, const char *split, int k) {
    snprintf(buf, cap, "%s/%s-%05d.ds4w", dir, split, k);
}

int ds4_world_dataset_shards(const char *dir, const char *split, char ***paths, int *n) {
    *paths = NULL;
    *n = 0;
    char buf[4200];
    int k = 0, cap = 0;
    for (;; k++) {
        shard_path(buf, sizeof buf, dir, split, k);
        if (!ds4_file_exists(buf)) break;
        if (k == cap) {
            cap = cap ? 2 * cap : 16;
            char **p = realloc(*paths, (size_t)cap * sizeof *p);
            if (!p) goto oom;
            *paths = p;
        }
        if (!((*paths)[k] = strdup(buf))) goto oom;
        *n = k + 1;
    }
    if (k == 0) {
        ds4_set_error("%s: no shards %s-00000.ds4w ...", dir, split);
        return -1;
    }
    return 0;
oom:
    for (int i = 0; i < *n; i++) free((*paths)[i]);
    free(*paths);
    *paths = NULL;
    *n = 0;
    ds4_set_error("out of memory listing shards");
    return -1;
}

int ds4_world_gen_dataset(const ds4_world_gen_opts *o,
                          void (*progress)(void *user, int done, int total), void *user) {
    uint64_t first;
    if (ds4_world_split_seed(o->split, o->seed, &first) != 0) return -1;
    if (o->n_clips < 1 || (uint64_t)o->n_clips > DS4_WORLD_SPLIT_STRIDE) {
        ds4_set_error("world gen: n %d outside [1, %llu] (splits are seed ranges of that size)",
                      o->n_clips, (unsigned long long)DS4_WORLD_SPLIT_STRIDE);
        return -1;
    }
    if (o->seed > (1ull << 52)) { ds4_set_error("world gen: seed %llu above 2^52", (unsigned long long)o->seed); return -1; }
    int cps = o->clips_per_shard > 0 ? o->clips_per_shard : 64;
    int threads = o->threads > 0 ? o->threads : omp_get_max_threads();
    if (check_dims(o->out_dir, o->n_clips, o->n_frames, o->width, o->height, o->fps) != 0) return -1;
    if (ds4_mkdir_p(o->out_dir) != 0) return -1;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.jsonl", o->out_dir, o->split);
    ds4_atomic_file ann;
    if (ds4_atomic_open(&ann, path) != 0) return -1;

    int batch = 2 * threads;
    ds4_world_clip *clips = ds4_calloc((size_t)batch, sizeof *clips);
    char **json = ds4_calloc((size_t)batch, sizeof *json);
    char (*errs)[512] = ds4_calloc((size_t)batch, sizeof *errs);
    if (!clips || !json || !errs) { free(clips); free(json); free(errs); ds4_atomic_abort(&ann); return -1; }
    int n_shards = (o->n_clips + cps - 1) / cps, done = 0, rc = 0;
    ds4_world_shard_writer *w = NULL;
    for (int sh = 0; sh < n_shards && rc == 0; sh++) {
        int c0 = sh * cps, c1 = DS4_MIN(o->n_clips, c0 + cps);
        shard_path(path, sizeof path, o->out_dir, o->split, sh);
        w = ds4_world_shard_create(path, c1 - c0, o->n_frames, o->width, o->height, o->fps);
        if (!w) { rc = -1; break; }
        for (int b0 = c0; b0 < c1 && rc == 0; b0 += batch) {
            int nb = DS4_MIN(batch, c1 - b0);
            #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
            for (int b = 0; b < nb; b++) {
                errs[b][0] = 0;
                json[b] = NULL;
                if (ds4_world_clip_make(&clips[b], first + (uint64_t)(b0 + b), o->width, o->height,
                                        o->fps, o->n_frames, 1) != 0 ||
                    !(json[b] = ds4_world_clip_to_json(&clips[b])))
                    snprintf(errs[b], sizeof errs[b], "clip seed %llu: %s",
                             (unsigned long long)(first + (uint64_t)(b0 + b)), ds4_error());
            }
            for (int b = 0; b < nb; b++) {
                if (rc == 0 && errs[b][0]) { ds4_set_error("%s", errs[b]); rc = -1; }
                if (rc == 0) rc = ds4_world_shard_add(w, clips[b].scene.seed, clips[b].rgb);
                if (rc == 0) rc = ds4_atomic_write(&ann, json[b], strlen(json[b]));
                if (rc == 0) rc = ds4_atomic_write(&ann, "\n", 1);
                free(json[b]);
                ds4_world_clip_free(&clips[b]);
            }
            done += nb;
            if (rc == 0 && progress) progress(user, done, o->n_clips);
        }
        if (rc == 0) rc = ds4_world_shard_finish(w);
        else ds4_world_shard_abort(w);
        w = NULL;
    }
    free(clips); free(json); free(errs);
    if (rc != 0) { ds4_atomic_abort(&ann); return -1; }
    if (ds4_atomic_commit(&ann) != 0) return -1;
    /* shards left over from an earlier, larger run of this split would be read as part of it */
    for (int k = n_shards;; k++) {
        shard_path(path, sizeof path, o->out_dir, o->split, k);
        if (unlink(path) != 0) break;
    }
    return 0;
}
