/* util.h — small helpers every concern uses: checked allocation, whole-file
 * reads, atomic writes, a deterministic RNG, wall-clock timers. No math here. */
#ifndef DS4_UTIL_H
#define DS4_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "ds4.h"

/* Allocation that records an error (and returns NULL) instead of aborting. */
void *ds4_malloc(size_t n);
void *ds4_calloc(size_t count, size_t size);
/* 64-byte aligned, zeroed; free with free(). */
void *ds4_alloc_aligned(size_t n);

/* Read a whole file into a malloc'd NUL-terminated buffer. */
int ds4_read_file(const char *path, char **data, size_t *len);
/* Atomic write: write to "<path>.tmp.<pid>", fsync, rename over path, fsync dir.
 * A target that exists and is not a regular file (/dev/null, /dev/stdout, a
 * FIFO) is written in place: renaming over it would replace the device. */
int ds4_write_file_atomic(const char *path, const void *data, size_t len);
/* Copies a file whole (read, then an atomic write). */
int ds4_copy_file(const char *src, const char *dst);
/* Streaming atomic writer for big files. */
typedef struct ds4_atomic_file {
    FILE *f;
    int   direct;    /* target is not a regular file (/dev/null, a FIFO): written in place */
    char path[4096];
    char tmp[4160];
} ds4_atomic_file;
int ds4_atomic_open(ds4_atomic_file *af, const char *path);
int ds4_atomic_write(ds4_atomic_file *af, const void *data, size_t len);
int ds4_atomic_commit(ds4_atomic_file *af);   /* fsync + rename */
void ds4_atomic_abort(ds4_atomic_file *af);   /* remove the temporary */
int ds4_mkdir_p(const char *path);

/* JSON Lines into a growable array of records of elem bytes: for each
 * non-blank line, parse(object, record, path, line) fills a zeroed record
 * (errors name path and line). On return *cap records are allocated, the
 * unused ones zeroed, so the caller's free(items, cap) works after a failure
 * too; *items stays allocated on failure for that reason. what names the
 * records in "no <what>" for an empty file. */
struct cJSON;
int ds4_jsonl_load(const char *path, size_t elem, const char *what, void **items, int *n, int *cap,
                   int (*parse)(const struct cJSON *o, void *record, const char *path, int line));
int ds4_file_exists(const char *path);

/* Deterministic RNG (xoshiro256**), state fully serialisable. */
typedef struct ds4_rng { uint64_t s[4]; } ds4_rng;
void     ds4_rng_seed(ds4_rng *r, uint64_t seed);
uint64_t ds4_rng_u64(ds4_rng *r);
float    ds4_rng_uniform(ds4_rng *r);            /* [0, 1) */
float    ds4_rng_normal(ds4_rng *r);             /* N(0, 1) */
/* Run-state files: print j, free it, write path atomically (0 / -1). */
int ds4_json_write_atomic(const char *path, struct cJSON *j);
/* A generator's state as obj[key] = 4 decimal strings, and back (errors name path and key). */
void ds4_json_add_rng(struct cJSON *obj, const char *key, const ds4_rng *rng);
int ds4_json_get_rng(const struct cJSON *obj, const char *key, ds4_rng *rng, const char *path);

double ds4_time_s(void);                          /* monotonic seconds */

/* Half precision conversion (IEEE binary16), used by checkpoints and quant. */
float    ds4_fp16_to_fp32(uint16_t h);
uint16_t ds4_fp32_to_fp16(float f);
float    ds4_bf16_to_fp32(uint16_t h);
uint16_t ds4_fp32_to_bf16(float f);

#define DS4_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DS4_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
