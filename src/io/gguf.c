/* gguf.c — GGUF v3 reader (every field bounds-checked against the buffer, so a
 * truncated or hostile file is an error, never a crash) and writer (metadata
 * and tensors collected in memory, then written atomically). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/gguf.h"
#include "util/util.h"

/* ---- ggml types ------------------------------------------------------------ */

int ds4_ggml_block_elems(int t) {
    switch (t) {
    case DS4_GGML_F32: case DS4_GGML_F16: return 1;
    case DS4_GGML_Q4_0: case DS4_GGML_Q8_0: return 32;
    case DS4_GGML_Q4_K: return 256;
    default: return 0;
    }
}

size_t ds4_ggml_block_bytes(int t) {
    switch (t) {
    case DS4_GGML_F32: return 4;
    case DS4_GGML_F16: return 2;
    case DS4_GGML_Q4_0: return 18;
    case DS4_GGML_Q8_0: return 34;
    case DS4_GGML_Q4_K: return 144;
    default: return 0;
    }
}

const char *ds4_ggml_type_name(int t) {
    switch (t) {
    case DS4_GGML_F32: return "F32";
    case DS4_GGML_F16: return "F16";
    case DS4_GGML_Q4_0: return "Q4_0";
    case DS4_GGML_Q8_0: return "Q8_0";
    case DS4_GGML_Q4_K: return "Q4_K";
    default: return "unknown";
    }
}

/* Bytes of one scalar of a metadata type; 0 for STR/ARR/unknown. */
static size_t vsize(int t) {
    switch (t) {
    case DS4_GGUF_U8: case DS4_GGUF_I8: case DS4_GGUF_BOOL: return 1;
    case DS4_GGUF_U16: case DS4_GGUF_I16: return 2;
    case DS4_GGUF_U32: case DS4_GGUF_I32: case DS4_GGUF_F32: return 4;
    case DS4_GGUF_U64: case DS4_GGUF_I64: case DS4_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ---- reader ---------------------------------------------------------------- */

typedef struct { const uint8_t *p; size_t len, pos; const char *origin; } cursor;

static int need(cursor *c, size_t n, const char *what) {
    if (n > c->len - c->pos) {
        ds4_set_error("%s: truncated at byte %zu reading %s (needs %zu bytes, %zu left)", c->origin, c->pos,
                      what, n, c->len - c->pos);
        return -1;
    }
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return -1;
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return -1;
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, ds4_gguf_str *s, const char *what) {
    uint64_t n;
    if (rd_u64(c, &n, what)) return -1;
    if (n > c->len - c->pos) {
        ds4_set_error("%s: %s at byte %zu has length %llu, beyond the end of the file (%zu bytes left)", c->origin,
                      what, c->pos - 8, (unsigned long long)n, c->len - c->pos);
        return -1;
    }
    s->s = (const char *)c->p + c->pos;
    s->len = n;
    c->pos += n;
    return 0;
}

int ds4_gguf_str_eq(ds4_gguf_str a, const char *b) {
    size_t n = strlen(b);
    return a.len == n && memcmp(a.s, b, n) == 0;
}

static void g_free(ds4_gguf *g) {
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].strs);
    free(g->kv);
    free(g->tensors);
    g->kv = NULL;
    g->tensors = NULL;
}

static int parse_value(cursor *c, ds4_gguf_kv *kv, const char *key) {
    char what[160];
    snprintf(what, sizeof what, "the value of key '%s'", key);
    if (kv->type == DS4_GGUF_STR) {
        ds4_gguf_str s;
        if (rd_str(c, &s, what)) return -1;
        kv->n = 1;
        kv->data = (const uint8_t *)s.s - 8;   /* points at the length */
        kv->strs = ds4_malloc(sizeof *kv->strs);
        if (!kv->strs) return -1;
        kv->strs[0] = s;
        return 0;
    }
    if (kv->type == DS4_GGUF_ARR) {
        uint32_t et;
        uint64_t n;
        if (rd_u32(c, &et, what) || rd_u64(c, &n, what)) return -1;
        if (et >= DS4_GGUF_NTYPES || et == DS4_GGUF_ARR) {
            ds4_set_error("%s: key '%s' is an array of type %u (%s)", c->origin, key, et,
                          et == DS4_GGUF_ARR ? "nested arrays are not supported" : "unknown type");
            return -1;
        }
        kv->arr_type = (int)et;
        kv->n = n;
        kv->data = c->p + c->pos;
        if (et == DS4_GGUF_STR) {
            if (n > (c->len - c->pos) / 8) {
                ds4_set_error("%s: key '%s' claims %llu strings, more than the %zu bytes left can hold", c->origin,
                              key, (unsigned long long)n, c->len - c->pos);
                return -1;
            }
            kv->strs = ds4_malloc((size_t)(n ? n : 1) * sizeof *kv->strs);
            if (!kv->strs) return -1;
            for (uint64_t i = 0; i < n; i++)
                if (rd_str(c, &kv->strs[i], what)) return -1;
            return 0;
        }
        size_t es = vsize((int)et);
        if (n > (c->len - c->pos) / es) {
            ds4_set_error("%s: key '%s' claims %llu elements of %zu bytes, beyond the end of the file", c->origin,
                          key, (unsigned long long)n, es);
            return -1;
        }
        c->pos += (size_t)n * es;
        return 0;
    }
    size_t sz = vsize(kv->type);
    if (!sz) {
        ds4_set_error("%s: key '%s' has unknown value type %d", c->origin, key, kv->type);
        return -1;
    }
    if (need(c, sz, what)) return -1;
    kv->n = 1;
    kv->data = c->p + c->pos;
    c->pos += sz;
    return 0;
}

static int cmp_off(const void *a, const void *b) {
    const ds4_gguf_tensor *x = *(ds4_gguf_tensor *const *)a, *y = *(ds4_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_dups_kv(ds4_gguf *g) {
    /* quadratic is fine for metadata (tens of keys); tensors use a sort below */
    for (int64_t i = 0; i < g->n_kv; i++)
        for (int64_t j = i + 1; j < g->n_kv; j++)
            if (g->kv[i].key.len == g->kv[j].key.len &&
                !memcmp(g->kv[i].key.s, g->kv[j].key.s, g->kv[i].key.len)) {
                ds4_set_error("%s: metadata key '%.*s' appears twice", g->origin, (int)DS4_MIN(g->kv[i].key.len, 200),
                              g->kv[i].key.s);
                return -1;
            }
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    const ds4_gguf_tensor *x = *(ds4_gguf_tensor *const *)a, *y = *(ds4_gguf_tensor *const *)b;
    size_t n = DS4_MIN(x->name.len, y->name.len);
    int r = memcmp(x->name.s, y->name.s, n);
    if (r) return r;
    return x->name.len < y->name.len ? -1 : x->name.len > y->name.len;
}

int ds4_gguf_parse(ds4_gguf *g, const void *buf, size_t len, const char *origin) {
    memset(g, 0, sizeof *g);
    snprintf(g->origin, sizeof g->origin, "%s", origin ? origin : "gguf");
    g->base = buf;
    g->size = len;
    g->alignment = DS4_GGUF_ALIGN;
    cursor c = {buf, len, 0, g->origin};
    uint32_t magic;
    if (rd_u32(&c, &magic, "the magic")) return -1;
    if (magic != DS4_GGUF_MAGIC) {
        ds4_set_error("%s: not a GGUF file (magic 0x%08x, expected \"GGUF\")", g->origin, magic);
        return -1;
    }
    if (rd_u32(&c, &g->version, "the version")) return -1;
    if (g->version != 2 && g->version != 3) {
        ds4_set_error("%s: GGUF version %u is not supported (ds4 reads versions 2 and 3)", g->origin, g->version);
        return -1;
    }
    uint64_t nt, nkv;
    if (rd_u64(&c, &nt, "the tensor count") || rd_u64(&c, &nkv, "the metadata count")) return -1;
    /* each key/value takes at least 12 bytes and each tensor info 24: bound the
     * counts by the file size before allocating anything */
    if (nkv > (len - c.pos) / 12 || nt > (len - c.pos) / 24) {
        ds4_set_error("%s: header claims %llu tensors and %llu metadata entries, more than a %zu-byte file can hold",
                      g->origin, (unsigned long long)nt, (unsigned long long)nkv, len);
        return -1;
    }
    g->kv = ds4_calloc(nkv ? nkv : 1, sizeof *g->kv);
    g->tensors = ds4_calloc(nt ? nt : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) goto fail;
    for (uint64_t i = 0; i < nkv; i++) {
        ds4_gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "metadata key #%llu", (unsigned long long)i);
        if (rd_str(&c, &kv->key, what)) goto fail;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)DS4_MIN(kv->key.len, 120), kv->key.s);
        g->n_kv = (int64_t)i + 1;
        uint32_t t;
        if (rd_u32(&c, &t, "a value type")) goto fail;
        if (t >= DS4_GGUF_NTYPES) {
            ds4_set_error("%s: key '%s' has unknown value type %u", g->origin, key, t);
            goto fail;
        }
        kv->type = (int)t;
        if (parse_value(&c, kv, key)) goto fail;
    }
    if (check_dups_kv(g)) goto fail;
    const ds4_gguf_kv *al = ds4_gguf_find(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (al->type != DS4_GGUF_U32) {
            ds4_set_error("%s: general.alignment must be a uint32", g->origin);
            goto fail;
        }
        memcpy(&a, al->data, 4);
        if (a == 0 || (a & (a - 1)) || a > (1u << 20)) {
            ds4_set_error("%s: general.alignment %u is not a power of two up to 1 MiB", g->origin, a);
            goto fail;
        }
        g->alignment = a;
    }
    for (uint64_t i = 0; i < nt; i++) {
        ds4_gguf_tensor *t = &g->tensors[i];
        char what[64];
        snprintf(what, sizeof what, "tensor info #%llu", (unsigned long long)i);
        if (rd_str(&c, &t->name, what)) goto fail;
        g->n_tensors = (int64_t)i + 1;
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)DS4_MIN(t->name.len, 120), t->name.s);
        uint32_t nd, ty;
        if (rd_u32(&c, &nd, "a tensor's dimension count")) goto fail;
        if (nd < 1 || nd > DS4_GGUF_MAX_DIMS) {
            ds4_set_error("%s: tensor '%s' has %u dimensions (1..%d allowed)", g->origin, nm, nd, DS4_GGUF_MAX_DIMS);
            goto fail;
        }
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if (rd_u64(&c, &ne, "a tensor dimension")) goto fail;
            if (ne == 0 || ne > ((uint64_t)1 << 40) || numel > ((uint64_t)1 << 42) / ne) {
                ds4_set_error("%s: tensor '%s' has dimension %u = %llu (zero or absurdly large)", g->origin, nm, d,
                              (unsigned long long)ne);
                goto fail;
            }
            t->ne[d] = (int64_t)ne;
            numel *= ne;
        }
        for (int d = (int)nd; d < DS4_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        if (rd_u32(&c, &ty, "a tensor type") || rd_u64(&c, &t->offset, "a tensor offset")) goto fail;
        t->type = (int)ty;
        int be = ds4_ggml_block_elems(t->type);
        if (!be) {
            ds4_set_error("%s: tensor '%s' has ggml type %u, which ds4 does not read (F32, F16, Q4_0, Q8_0, Q4_K)",
                          g->origin, nm, ty);
            goto fail;
        }
        if (t->ne[0] % be) {
            ds4_set_error("%s: tensor '%s' (%s) has ne[0] = %lld, not a multiple of the block size %d", g->origin,
                          nm, ds4_ggml_type_name(t->type), (long long)t->ne[0], be);
            goto fail;
        }
        t->nbytes = (size_t)(numel / (uint64_t)be) * ds4_ggml_block_bytes(t->type);
        if (t->offset % g->alignment) {
            ds4_set_error("%s: tensor '%s' has offset %llu, not a multiple of the alignment %u", g->origin, nm,
                          (unsigned long long)t->offset, g->alignment);
            goto fail;
        }
    }
    size_t data_start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (nt > 0 && data_start > len) {
        ds4_set_error("%s: file ends (%zu bytes) before the tensor data section (byte %zu)", g->origin, len,
                      data_start);
        goto fail;
    }
    for (uint64_t i = 0; i < nt; i++) {
        ds4_gguf_tensor *t = &g->tensors[i];
        size_t avail = len - data_start;
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            ds4_set_error("%s: tensor '%.*s' data [%llu, +%zu) lies outside the data section (%zu bytes)", g->origin,
                          (int)DS4_MIN(t->name.len, 120), t->name.s, (unsigned long long)t->offset, t->nbytes, avail);
            goto fail;
        }
        t->data = g->base + data_start + t->offset;
    }
    if (nt > 1) {
        ds4_gguf_tensor **ord = ds4_malloc(nt * sizeof *ord);
        if (!ord) goto fail;
        for (uint64_t i = 0; i < nt; i++) ord[i] = &g->tensors[i];
        qsort(ord, nt, sizeof *ord, cmp_off);
        for (uint64_t i = 1; i < nt; i++)
            if (ord[i - 1]->offset + ord[i - 1]->nbytes > ord[i]->offset) {
                ds4_set_error("%s: tensors '%.*s' and '%.*s' overlap", g->origin, (int)DS4_MIN(ord[i - 1]->name.len, 120),
                              ord[i - 1]->name.s, (int)DS4_MIN(ord[i]->name.len, 120), ord[i]->name.s);
                free(ord);
                goto fail;
            }
        qsort(ord, nt, sizeof *ord, cmp_name);
        for (uint64_t i = 1; i < nt; i++)
            if (!cmp_name(&ord[i - 1], &ord[i])) {
                ds4_set_error("%s: tensor '%.*s' appears twice", g->origin, (int)DS4_MIN(ord[i]->name.len, 120),
                              ord[i]->name.s);
                free(ord);
                goto fail;
            }
        free(ord);
    }
    return 0;
fail:
    g_free(g);
    return -1;
}

int ds4_gguf_open(ds4_gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { ds4_set_error("%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ds4_set_error("%s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            ds4_set_error("%s: mmap failed: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    static const uint8_t empty[16];
    if (ds4_gguf_parse(g, map ? map : empty, len, path) != 0) {
        if (map) munmap(map, len);
        return -1;
    }
    g->map = map;
    return 0;
}

void ds4_gguf_close(ds4_gguf *g) {
    if (!g) return;
    g_free(g);
    if (g->map) munmap(g->map, g->size);
    memset(g, 0, sizeof *g);
}

int ds4_gguf_is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint32_t m = 0;
    size_t r = fread(&m, 1, 4, f);
    fclose(f);
    return r == 4 && m == DS4_GGUF_MAGIC;
}

const ds4_gguf_kv *ds4_gguf_find(const ds4_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (ds4_gguf_str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const ds4_gguf_tensor *ds4_gguf_find_tensor(const ds4_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (ds4_gguf_str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* Read element i (0 for scalars) of an integer/bool/float value as both forms. */
static int num_at(int type, const uint8_t *p, int64_t *iv, double *fv, int *is_int) {
    *is_int = 1;
    switch (type) {
    case DS4_GGUF_U8: case DS4_GGUF_BOOL: { uint8_t v = *p; *iv = v; break; }
    case DS4_GGUF_I8: { int8_t v; memcpy(&v, p, 1); *iv = v; break; }
    case DS4_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *iv = v; break; }
    case DS4_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *iv = v; break; }
    case DS4_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *iv = v; break; }
    case DS4_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *iv = v; break; }
    case DS4_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); if (v > INT64_MAX) return -1; *iv = (int64_t)v; break; }
    case DS4_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *iv = v; break; }
    case DS4_GGUF_F32: { float v; memcpy(&v, p, 4); *fv = v; *is_int = 0; return 0; }
    case DS4_GGUF_F64: { double v; memcpy(&v, p, 8); *fv = v; *is_int = 0; return 0; }
    default: return -1;
    }
    *fv = (double)*iv;
    return 0;
}

int ds4_gguf_get_i64(const ds4_gguf *g, const char *key, int64_t *v) {
    const ds4_gguf_kv *kv = ds4_gguf_find(g, key);
    if (!kv) { ds4_set_error("%s: missing metadata key %s", g->origin, key); return -1; }
    double f;
    int isint;
    if (kv->type == DS4_GGUF_ARR || kv->type == DS4_GGUF_STR || num_at(kv->type, kv->data, v, &f, &isint) || !isint) {
        ds4_set_error("%s: metadata key %s is not an integer", g->origin, key);
        return -1;
    }
    return 0;
}

int ds4_gguf_get_f64(const ds4_gguf *g, const char *key, double *v) {
    const ds4_gguf_kv *kv = ds4_gguf_find(g, key);
    if (!kv) { ds4_set_error("%s: missing metadata key %s", g->origin, key); return -1; }
    int64_t iv;
    int isint;
    if (kv->type == DS4_GGUF_ARR || kv->type == DS4_GGUF_STR || num_at(kv->type, kv->data, &iv, v, &isint)) {
        ds4_set_error("%s: metadata key %s is not a number", g->origin, key);
        return -1;
    }
    return 0;
}

int ds4_gguf_get_bool(const ds4_gguf *g, const char *key, int *v) {
    const ds4_gguf_kv *kv = ds4_gguf_find(g, key);
    if (!kv) { ds4_set_error("%s: missing metadata key %s", g->origin, key); return -1; }
    if (kv->type != DS4_GGUF_BOOL) { ds4_set_error("%s: metadata key %s is not a bool", g->origin, key); return -1; }
    *v = kv->data[0] != 0;
    return 0;
}

int ds4_gguf_get_str(const ds4_gguf *g, const char *key, char **s) {
    const ds4_gguf_kv *kv = ds4_gguf_find(g, key);
    if (!kv) { ds4_set_error("%s: missing metadata key %s", g->origin, key); return -1; }
    if (kv->type != DS4_GGUF_STR) { ds4_set_error("%s: metadata key %s is not a string", g->origin, key); return -1; }
    *s = ds4_malloc(kv->strs[0].len + 1);
    if (!*s) return -1;
    memcpy(*s, kv->strs[0].s, kv->strs[0].len);
    (*s)[kv->strs[0].len] = 0;
    return 0;
}

static int arr_num(const ds4_gguf_kv *kv, uint64_t i, int64_t *iv, double *fv, int *isint) {
    if (kv->type != DS4_GGUF_ARR || i >= kv->n || !vsize(kv->arr_type)) {
        ds4_set_error("metadata key %.*s: no numeric element %llu", (int)DS4_MIN(kv->key.len, 120), kv->key.s,
                      (unsigned long long)i);
        return -1;
    }
    if (num_at(kv->arr_type, kv->data + i * vsize(kv->arr_type), iv, fv, isint)) {
        ds4_set_error("metadata key %.*s: element %llu out of range", (int)DS4_MIN(kv->key.len, 120), kv->key.s,
                      (unsigned long long)i);
        return -1;
    }
    return 0;
}

int ds4_gguf_arr_i64(const ds4_gguf_kv *kv, uint64_t i, int64_t *v) {
    double f;
    int isint;
    if (arr_num(kv, i, v, &f, &isint)) return -1;
    if (!isint) { ds4_set_error("metadata key %.*s: not an integer array", (int)DS4_MIN(kv->key.len, 120), kv->key.s); return -1; }
    return 0;
}

int ds4_gguf_arr_f64(const ds4_gguf_kv *kv, uint64_t i, double *v) {
    int64_t iv;
    int isint;
    return arr_num(kv, i, &iv, v, &isint);
}

/* ---- writer ---------------------------------------------------------------- */

typedef struct {
    char *name;
    int type, ndim;
    int64_t ne[DS4_GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
} w_tensor;

struct ds4_gguf_writer {
    uint8_t *kv;            /* serialised key/value pairs */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    w_tensor *t;
    int n_t, cap_t;
    uint32_t alignment;
};

ds4_gguf_writer *ds4_gguf_writer_new(void) {
    ds4_gguf_writer *w = ds4_calloc(1, sizeof *w);
    if (w) w->alignment = DS4_GGUF_ALIGN;
    return w;
}

void ds4_gguf_writer_free(ds4_gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w);
}

static int put(ds4_gguf_writer *w, const void *p, size_t n) {
    if (n == 0) return 0;
    if (w->kv_len + n > w->kv_cap) {
        size_t nc = w->kv_cap ? w->kv_cap : 4096;
        while (nc < w->kv_len + n) nc *= 2;
        uint8_t *b = realloc(w->kv, nc);
        if (!b) { ds4_set_error("out of memory building GGUF metadata"); return -1; }
        w->kv = b;
        w->kv_cap = nc;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

static int put_u32(ds4_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(ds4_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_str(ds4_gguf_writer *w, const char *s, size_t n) { return put_u64(w, n) || put(w, s, n); }

static int put_key(ds4_gguf_writer *w, const char *key, int type) {
    w->n_kv++;
    return put_str(w, key, strlen(key)) || put_u32(w, (uint32_t)type);
}

int ds4_gguf_add_scalar(ds4_gguf_writer *w, const char *key, int type, const void *v) {
    size_t sz = vsize(type);
    if (!sz) { ds4_set_error("GGUF key %s: type %d is not a fixed-size scalar", key, type); return -1; }
    if (!strcmp(key, "general.alignment")) {
        uint32_t a = 0;
        if (type == DS4_GGUF_U32) memcpy(&a, v, 4);
        if (a == 0 || (a & (a - 1))) {
            ds4_set_error("general.alignment must be a uint32 power of two");
            return -1;
        }
        w->alignment = a;
    }
    return put_key(w, key, type) || put(w, v, sz);
}

int ds4_gguf_add_u32(ds4_gguf_writer *w, const char *k, uint32_t v) { return ds4_gguf_add_scalar(w, k, DS4_GGUF_U32, &v); }
int ds4_gguf_add_i32(ds4_gguf_writer *w, const char *k, int32_t v) { return ds4_gguf_add_scalar(w, k, DS4_GGUF_I32, &v); }
int ds4_gguf_add_u64(ds4_gguf_writer *w, const char *k, uint64_t v) { return ds4_gguf_add_scalar(w, k, DS4_GGUF_U64, &v); }
int ds4_gguf_add_f32(ds4_gguf_writer *w, const char *k, float v) { return ds4_gguf_add_scalar(w, k, DS4_GGUF_F32, &v); }
int ds4_gguf_add_bool(ds4_gguf_writer *w, const char *k, int v) {
    uint8_t b = v != 0;
    return ds4_gguf_add_scalar(w, k, DS4_GGUF_BOOL, &b);
}

int ds4_gguf_add_str(ds4_gguf_writer *w, const char *key, const char *v) {
    return put_key(w, key, DS4_GGUF_STR) || put_str(w, v, strlen(v));
}

int ds4_gguf_add_arr(ds4_gguf_writer *w, const char *key, int et, const void *v, uint64_t n) {
    size_t sz = vsize(et);
    if (!sz) { ds4_set_error("GGUF key %s: array element type %d is not fixed-size", key, et); return -1; }
    return put_key(w, key, DS4_GGUF_ARR) || put_u32(w, (uint32_t)et) || put_u64(w, n) || put(w, v, sz * n);
}

int ds4_gguf_add_arr_str(ds4_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens, uint64_t n) {
    if (put_key(w, key, DS4_GGUF_ARR) || put_u32(w, DS4_GGUF_STR) || put_u64(w, n)) return -1;
    for (uint64_t i = 0; i < n; i++)
        if (put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]))) return -1;
    return 0;
}

int ds4_gguf_add_tensor(ds4_gguf_writer *w, const char *name, int type, int ndim, const int64_t *ne,
                        const void *data, size_t nbytes) {
    int be = ds4_ggml_block_elems(type);
    if (!be || ndim < 1 || ndim > DS4_GGUF_MAX_DIMS || ne[0] % be) {
        ds4_set_error("GGUF tensor %s: bad type %d / dims %d / ne[0] %lld", name, type, ndim, (long long)ne[0]);
        return -1;
    }
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (size_t)ne[d];
    if (numel / (size_t)be * ds4_ggml_block_bytes(type) != nbytes) {
        ds4_set_error("GGUF tensor %s: %zu bytes given, %s of this shape needs %zu", name, nbytes,
                      ds4_ggml_type_name(type), numel / (size_t)be * ds4_ggml_block_bytes(type));
        return -1;
    }
    if (w->n_t == w->cap_t) {
        int nc = w->cap_t ? w->cap_t * 2 : 64;
        w_tensor *t = realloc(w->t, (size_t)nc * sizeof *t);
        if (!t) { ds4_set_error("out of memory building GGUF tensors"); return -1; }
        w->t = t;
        w->cap_t = nc;
    }
    w_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) { ds4_set_error("out of memory"); return -1; }
    t->type = type;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->ne[d] = ne[d];
    t->data = data;
    t->nbytes = nbytes;
    w->n_t++;
    return 0;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Header + metadata + tensor infos (+ padding up to the data section). */
static int build_head(const ds4_gguf_writer *w, uint8_t **out, size_t *out_len, size_t *data_len) {
    ds4_gguf_writer h = {0};
    uint32_t magic = DS4_GGUF_MAGIC, ver = DS4_GGUF_VERSION;
    int rc = put(&h, &magic, 4) || put(&h, &ver, 4) || put_u64(&h, (uint64_t)w->n_t) || put_u64(&h, w->n_kv) ||
             put(&h, w->kv, w->kv_len);
    size_t off = 0;
    for (int i = 0; !rc && i < w->n_t; i++) {
        const w_tensor *t = &w->t[i];
        rc = put_str(&h, t->name, strlen(t->name)) || put_u32(&h, (uint32_t)t->ndim);
        for (int d = 0; !rc && d < t->ndim; d++) rc = put_u64(&h, (uint64_t)t->ne[d]);
        rc = rc || put_u32(&h, (uint32_t)t->type) || put_u64(&h, off);
        off = align_up(off + t->nbytes, w->alignment);
    }
    size_t pad = align_up(h.kv_len, w->alignment) - h.kv_len;
    static const uint8_t zeros[64];
    while (!rc && pad > 0) {
        size_t k = DS4_MIN(pad, sizeof zeros);
        rc = put(&h, zeros, k);
        pad -= k;
    }
    if (rc) { free(h.kv); return -1; }
    *out = h.kv;
    *out_len = h.kv_len;
    *data_len = off;
    return 0;
}

int ds4_gguf_writer_to_buffer(const ds4_gguf_writer *w, uint8_t **buf, size_t *len) {
    uint8_t *head;
    size_t hl, dl;
    if (build_head(w, &head, &hl, &dl)) return -1;
    uint8_t *b = ds4_calloc(1, hl + dl + 1);
    if (!b) { free(head); return -1; }
    memcpy(b, head, hl);
    free(head);
    size_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        if (w->t[i].nbytes) memcpy(b + hl + off, w->t[i].data, w->t[i].nbytes);
        off = align_up(off + w->t[i].nbytes, w->alignment);
    }
    *buf = b;
    *len = hl + dl;
    return 0;
}

int ds4_gguf_writer_write(const ds4_gguf_writer *w, const char *path) {
    uint8_t *head;
    size_t hl, dl;
    if (build_head(w, &head, &hl, &dl)) return -1;
    ds4_atomic_file af;
    if (ds4_atomic_open(&af, path)) { free(head); return -1; }
    int rc = ds4_atomic_write(&af, head, hl);
    free(head);
    static const uint8_t zeros[4096];
    size_t off = 0;
    for (int i = 0; !rc && i < w->n_t; i++) {
        rc = ds4_atomic_write(&af, w->t[i].data, w->t[i].nbytes);
        size_t end = off + w->t[i].nbytes, pad = align_up(end, w->alignment) - end;
        while (!rc && pad > 0) {
            size_t k = DS4_MIN(pad, sizeof zeros);
            rc = ds4_atomic_write(&af, zeros, k);
            pad -= k;
        }
        off = align_up(end, w->alignment);
    }
    if (rc) { ds4_atomic_abort(&af); ds4_error_prefix("writing %s: ", path); return -1; }
    return ds4_atomic_commit(&af);
}
