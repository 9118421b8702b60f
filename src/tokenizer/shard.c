/* shard.c — binary token shards: the 8-byte magic "DS4TOK01", a uint64
 * little-endian count, then count uint32 little-endian token ids. */
#include <stdlib.h>
#include <string.h>
#include "util/util.h"

#define SHARD_MAGIC "DS4TOK01"
#define SHARD_HEADER 16

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ds4_shard_write(const char *path, const int *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0) {
            ds4_set_error("%s: token id %d at position %zu is negative", path, ids[i], i);
            return -1;
        }
    }
    ds4_atomic_file af;
    if (ds4_atomic_open(&af, path) < 0) return -1;
    uint8_t head[SHARD_HEADER];
    memcpy(head, SHARD_MAGIC, 8);
    for (int i = 0; i < 8; i++) head[8 + i] = (uint8_t)((uint64_t)n >> (8 * i));
    if (ds4_atomic_write(&af, head, sizeof head) < 0) goto fail;
    uint8_t buf[4 * 4096];   /* ids converted to little-endian in blocks */
    for (size_t i = 0; i < n;) {
        size_t m = DS4_MIN(n - i, (size_t)4096);
        for (size_t j = 0; j < m; j++) put_u32(buf + 4 * j, (uint32_t)ids[i + j]);
        if (ds4_atomic_write(&af, buf, 4 * m) < 0) goto fail;
        i += m;
    }
    return ds4_atomic_commit(&af);
fail:
    ds4_atomic_abort(&af);
    return -1;
}

int ds4_shard_read(const char *path, int **ids, size_t *n) {
    char *data;
    size_t len;
    if (ds4_read_file(path, &data, &len) < 0) return -1;
    const uint8_t *u = (const uint8_t *)data;
    if (len < 8 || memcmp(data, SHARD_MAGIC, 8)) {
        ds4_set_error("%s: not a token shard (the file does not start with \"%s\")", path, SHARD_MAGIC);
        free(data);
        return -1;
    }
    if (len < SHARD_HEADER) {
        ds4_set_error("%s: token shard header is truncated (%zu of %d bytes)", path, len, SHARD_HEADER);
        free(data);
        return -1;
    }
    uint64_t count = 0;
    for (int i = 0; i < 8; i++) count |= (uint64_t)u[8 + i] << (8 * i);
    uint64_t have = (uint64_t)(len - SHARD_HEADER);
    if (count > have / 4) {
        ds4_set_error("%s: token shard is truncated: the header says %llu ids but only %llu bytes of ids follow",
                      path, (unsigned long long)count, (unsigned long long)have);
        free(data);
        return -1;
    }
    if (have != count * 4) {
        ds4_set_error("%s: token shard count mismatch: the header says %llu ids but %llu bytes of ids follow",
                      path, (unsigned long long)count, (unsigned long long)have);
        free(data);
        return -1;
    }
    int *out = ds4_malloc((count ? count : 1) * sizeof *out);
    if (!out) { free(data); return -1; }
    for (uint64_t i = 0; i < count; i++) {
        uint32_t v = get_u32(u + SHARD_HEADER + 4 * i);
        if (v > (uint32_t)INT32_MAX) {
            ds4_set_error("%s: token id %u at position %llu is out of range", path, v, (unsigned long long)i);
            free(out);
            free(data);
            return -1;
        }
        out[i] = (int)v;
    }
    free(data);
    *ids = out;
    *n = (size_t)count;
    return 0;
}
