/* safetensors.c — read (mmap, every field validated, never trusting the file)
 * and write (atomic, header padded so data starts 8-byte aligned) the
 * safetensors format: u64 LE header length N, N bytes of JSON, raw data.
 * Lenient where harmless: gaps between tensors and unused trailing data are
 * accepted (the HF reader rejects them; our writer never produces them).
 * Alignment: the data area starts 8-byte aligned in files we write and
 * tensors are contiguous in the given order, so a tensor's data pointer is
 * aligned only if the tensors before it have sizes that keep it so (all-F32
 * files: always). Readers of foreign files should memcpy or check. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "util/util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (tensor data is stored LE)"
#endif

/* ---- dtypes ------------------------------------------------------------- */

static const struct { const char *name; size_t size; } k_dtypes[] = {
    [DS4_DT_F32] = {"F32", 4},  [DS4_DT_F16] = {"F16", 2}, [DS4_DT_BF16] = {"BF16", 2},
    [DS4_DT_F64] = {"F64", 8},  [DS4_DT_I8] = {"I8", 1},   [DS4_DT_U8] = {"U8", 1},
    [DS4_DT_I16] = {"I16", 2},  [DS4_DT_I32] = {"I32", 4}, [DS4_DT_I64] = {"I64", 8},
    [DS4_DT_BOOL] = {"BOOL", 1},
};
#define N_DTYPES ((int)(sizeof k_dtypes / sizeof k_dtypes[0]))

static int dtype_valid(ds4_dtype t) { return (int)t >= 0 && (int)t < N_DTYPES; }

size_t ds4_dtype_size(ds4_dtype t) { return dtype_valid(t) ? k_dtypes[t].size : 0; }

const char *ds4_dtype_name(ds4_dtype t) { return dtype_valid(t) ? k_dtypes[t].name : "?"; }

static int dtype_from_name(const char *s, ds4_dtype *out) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, k_dtypes[i].name) == 0) { *out = (ds4_dtype)i; return 0; }
    return -1;
}

/* numel and nbytes of a shape, or -1 on a negative dim or size_t overflow. */
static int shape_bytes(const int64_t *shape, int ndim, size_t esize, size_t *numel,
                       size_t *nbytes) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return -1;
        if (__builtin_mul_overflow(n, (uint64_t)shape[d], &n)) return -1;
    }
    size_t b;
    if (__builtin_mul_overflow(n, esize, &b)) return -1;
    *numel = n;
    *nbytes = b;
    return 0;
}

/* ---- reader ------------------------------------------------------------- */

/* The tensors array is allocated with n ints after the n structs: the indices
 * of the tensors sorted by name, used by ds4_st_find's binary search. */
static int *name_index(const ds4_safetensors *st) { return (int *)(st->tensors + st->n_tensors); }

static int cmp_tensor_name(const void *a, const void *b) {
    const ds4_st_tensor *x = *(ds4_st_tensor *const *)a, *y = *(ds4_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_tensor_data(const void *a, const void *b) {
    const ds4_st_tensor *x = *(ds4_st_tensor *const *)a, *y = *(ds4_st_tensor *const *)b;
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* A JSON number that is a non-negative integer that a double holds exactly. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!isfinite(v) || v < 0 || v != floor(v) || v > 9007199254740992.0) return -1;
    *out = (uint64_t)v;
    return 0;
}

static const char *json_kind(const cJSON *j) {
    if (!j) return "nothing";
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    return "an invalid value";
}

/* Parse one tensor entry {"dtype", "shape", "data_offsets"} into t. */
static int parse_tensor(const char *path, const cJSON *e, ds4_st_tensor *t,
                        const char *data, size_t data_len) {
    const char *name = t->name;
    if (!cJSON_IsObject(e)) {
        ds4_set_error("%s: tensor '%s': entry must be an object, got %s", path, name,
                      json_kind(e));
        return -1;
    }
    const cJSON *jd = NULL, *js = NULL, *jo = NULL;
    for (const cJSON *f = e->child; f; f = f->next) {
        const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &jd
                             : strcmp(f->string, "shape") == 0        ? &js
                             : strcmp(f->string, "data_offsets") == 0 ? &jo
                                                                      : NULL;
        if (!slot) {
            ds4_set_error("%s: tensor '%s': unknown field '%s'", path, name, f->string);
            return -1;
        }
        if (*slot) {
            ds4_set_error("%s: tensor '%s': field '%s' appears twice", path, name, f->string);
            return -1;
        }
        *slot = f;
    }
    if (!jd || !js || !jo) {
        ds4_set_error("%s: tensor '%s': missing field '%s'", path, name,
                      !jd ? "dtype" : !js ? "shape" : "data_offsets");
        return -1;
    }
    if (!cJSON_IsString(jd)) {
        ds4_set_error("%s: tensor '%s': field 'dtype' must be a string, got %s", path, name,
                      json_kind(jd));
        return -1;
    }
    if (dtype_from_name(jd->valuestring, &t->dtype) != 0) {
        ds4_set_error("%s: tensor '%s': field 'dtype': unsupported dtype '%s'", path, name,
                      jd->valuestring);
        return -1;
    }
    if (!cJSON_IsArray(js)) {
        ds4_set_error("%s: tensor '%s': field 'shape' must be an array, got %s", path, name,
                      json_kind(js));
        return -1;
    }
    int nd = cJSON_GetArraySize(js);
    if (nd > DS4_ST_MAX_DIMS) {
        ds4_set_error("%s: tensor '%s': field 'shape' has %d dims, at most %d supported", path,
                      name, nd, DS4_ST_MAX_DIMS);
        return -1;
    }
    t->ndim = nd;
    int d = 0;
    for (const cJSON *x = js->child; x; x = x->next, d++) {
        uint64_t v;
        if (json_u64(x, &v) != 0) {
            if (cJSON_IsNumber(x) && x->valuedouble < 0)
                ds4_set_error("%s: tensor '%s': field 'shape': dim %d is negative (%g)", path,
                              name, d, x->valuedouble);
            else
                ds4_set_error("%s: tensor '%s': field 'shape': dim %d must be a non-negative "
                              "integer, got %s", path, name, d, json_kind(x));
            return -1;
        }
        t->shape[d] = (int64_t)v;
    }
    if (shape_bytes(t->shape, nd, ds4_dtype_size(t->dtype), &t->numel, &t->nbytes) != 0) {
        ds4_set_error("%s: tensor '%s': field 'shape': element count overflows", path, name);
        return -1;
    }
    uint64_t off[2];
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_u64(jo->child, &off[0]) != 0 ||
        json_u64(jo->child->next, &off[1]) != 0) {
        ds4_set_error("%s: tensor '%s': field 'data_offsets' must be [begin, end] of "
                      "non-negative integers", path, name);
        return -1;
    }
    if (off[1] < off[0]) {
        ds4_set_error("%s: tensor '%s': field 'data_offsets': end %llu < begin %llu", path,
                      name, (unsigned long long)off[1], (unsigned long long)off[0]);
        return -1;
    }
    if (off[1] > data_len) {
        ds4_set_error("%s: tensor '%s': field 'data_offsets' [%llu, %llu] outside the data "
                      "area of %zu bytes", path, name, (unsigned long long)off[0],
                      (unsigned long long)off[1], data_len);
        return -1;
    }
    if (off[1] - off[0] != t->nbytes) {
        ds4_set_error("%s: tensor '%s': shape and dtype %s give %zu bytes but "
                      "data_offsets span %llu", path, name, k_dtypes[t->dtype].name, t->nbytes,
                      (unsigned long long)(off[1] - off[0]));
        return -1;
    }
    t->data = data + off[0];
    return 0;
}

static int parse_metadata(const char *path, const cJSON *m, char **out) {
    if (!cJSON_IsObject(m)) {
        ds4_set_error("%s: '__metadata__' must be an object, got %s", path, json_kind(m));
        return -1;
    }
    for (const cJSON *f = m->child; f; f = f->next) {
        if (!cJSON_IsString(f)) {
            ds4_set_error("%s: '__metadata__': key '%s' must be a string, got %s", path,
                          f->string, json_kind(f));
            return -1;
        }
    }
    char *s = cJSON_PrintUnformatted(m);
    if (!s) { ds4_set_error("%s: out of memory printing '__metadata__'", path); return -1; }
    *out = strdup(s);
    cJSON_free(s);
    if (!*out) { ds4_set_error("%s: out of memory", path); return -1; }
    return 0;
}

/* Map the file read-only; when mmap is unavailable, read it into an anonymous
 * mapping so that ds4_st_close can always munmap. */
static void *map_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { ds4_set_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        ds4_set_error("%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        ds4_set_error("%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)sb.st_size;
    if (n < 8) {
        ds4_set_error("%s: file is %zu bytes, too short for the 8-byte header length", path, n);
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            ds4_set_error("%s: cannot map %zu bytes: %s", path, n, strerror(errno));
            close(fd);
            return NULL;
        }
        size_t got = 0;
        while (got < n) {
            ssize_t r = read(fd, (char *)p + got, n - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                ds4_set_error("%s: read failed at byte %zu: %s", path, got,
                              r < 0 ? strerror(errno) : "unexpected end of file");
                munmap(p, n);
                close(fd);
                return NULL;
            }
            got += (size_t)r;
        }
    }
    close(fd);
    *len = n;
    return p;
}

static int parse_file(ds4_safetensors *st, const char *path) {
    const unsigned char *b = st->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > DS4_ST_MAX_HEADER) {
        ds4_set_error("%s: header length %llu is over the %u byte limit", path,
                      (unsigned long long)hlen, DS4_ST_MAX_HEADER);
        return -1;
    }
    if (hlen > st->map_len - 8) {
        ds4_set_error("%s: header length %llu runs past the end of the %zu byte file", path,
                      (unsigned long long)hlen, st->map_len);
        return -1;
    }
    const char *hdr = (const char *)b + 8;
    const char *data = hdr + hlen;
    size_t data_len = st->map_len - 8 - (size_t)hlen;

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr ? (size_t)(end - hdr) : 0;
        ds4_set_error("%s: header is not valid JSON (near byte %zu of %llu)", path, at,
                      (unsigned long long)hlen);
        return -1;
    }
    int rc = -1;
    ds4_st_tensor **order = NULL;
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            ds4_set_error("%s: header has trailing bytes after the JSON object (byte %zu)", path,
                          (size_t)(p - hdr));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        ds4_set_error("%s: header must be a JSON object, got %s", path, json_kind(root));
        goto done;
    }
    int n = 0, n_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) n_meta++;
        else n++;
    }
    if (n_meta > 1) { ds4_set_error("%s: '__metadata__' appears twice", path); goto done; }
    st->tensors = calloc(1, (size_t)n * (sizeof(ds4_st_tensor) + sizeof(int)) + 1);
    order = calloc((size_t)n + 1, sizeof *order);
    if (!st->tensors || !order) { ds4_set_error("%s: out of memory for %d tensors", path, n); goto done; }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (parse_metadata(path, e, &st->metadata) != 0) goto done;
            continue;
        }
        ds4_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = strdup(e->string);
        if (!t->name) { ds4_set_error("%s: out of memory", path); goto done; }
        st->n_tensors++;
        if (parse_tensor(path, e, t, data, data_len) != 0) goto done;
    }

    /* duplicate names: sort by name, compare neighbours */
    for (int i = 0; i < n; i++) order[i] = &st->tensors[i];
    qsort(order, (size_t)n, sizeof *order, cmp_tensor_name);
    for (int i = 1; i < n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            ds4_set_error("%s: tensor '%s' appears twice in the header", path, order[i]->name);
            goto done;
        }
    }
    int *idx = name_index(st);
    for (int i = 0; i < n; i++) idx[i] = (int)(order[i] - st->tensors);

    /* overlap: sort by begin; a non-empty tensor may not start before the
     * furthest end seen so far (empty tensors overlap nothing) */
    qsort(order, (size_t)n, sizeof *order, cmp_tensor_data);
    const char *max_end = data;
    const ds4_st_tensor *owner = NULL;
    for (int i = 0; i < n; i++) {
        const ds4_st_tensor *t = order[i];
        if (t->nbytes == 0) continue;
        const char *tb = t->data;
        if (owner && tb < max_end) {
            ds4_set_error("%s: tensor '%s' (bytes %zu..%zu) overlaps tensor '%s' (bytes "
                          "%zu..%zu)", path, t->name, (size_t)(tb - data),
                          (size_t)(tb - data) + t->nbytes, owner->name,
                          (size_t)((const char *)owner->data - data),
                          (size_t)((const char *)owner->data - data) + owner->nbytes);
            goto done;
        }
        if (tb + t->nbytes > max_end) { max_end = tb + t->nbytes; owner = t; }
    }
    rc = 0;
done:
    free(order);
    cJSON_Delete(root);
    return rc;
}

int ds4_st_open(ds4_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->map = map_file(path, &st->map_len);
    if (!st->map) return -1;
    if (parse_file(st, path) != 0) {
        ds4_st_close(st);
        return -1;
    }
    return 0;
}

void ds4_st_close(ds4_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    free(st->metadata);
    if (st->map) munmap(st->map, st->map_len);
    memset(st, 0, sizeof *st);
}

const ds4_st_tensor *ds4_st_find(const ds4_safetensors *st, const char *name) {
    if (!st || !st->tensors || !name) return NULL;
    const int *idx = name_index(st);
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const ds4_st_tensor *t = &st->tensors[idx[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

/* ---- writer ------------------------------------------------------------- */

typedef struct { char *p; size_t len, cap; int oom; } strbuf;

static void sb_put(strbuf *s, const char *x, size_t n) {
    if (s->oom) return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n + 1) cap *= 2;
        char *q = realloc(s->p, cap);
        if (!q) { s->oom = 1; return; }
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->len, x, n);
    s->len += n;
    s->p[s->len] = 0;
}

static void sb_str(strbuf *s, const char *x) { sb_put(s, x, strlen(x)); }

/* A JSON string literal: quotes, backslashes and control bytes escaped. */
static void sb_json_string(strbuf *s, const char *x) {
    sb_put(s, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)x; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; sb_put(s, esc, 2); }
        else if (*p < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *p); sb_put(s, esc, 6); }
        else sb_put(s, (const char *)p, 1);
    }
    sb_put(s, "\"", 1);
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp((*(const ds4_st_entry *const *)a)->name, (*(const ds4_st_entry *const *)b)->name);
}

int ds4_st_write(const char *path, const ds4_st_entry *entries, int n,
                 const char *metadata_json) {
    if (n < 0 || (n > 0 && !entries)) {
        ds4_set_error("%s: writing safetensors: bad tensor count %d", path, n);
        return -1;
    }
    strbuf h = {0};
    size_t *nbytes = calloc((size_t)n + 1, sizeof *nbytes);
    const ds4_st_entry **order = calloc((size_t)n + 1, sizeof *order);
    cJSON *meta = NULL;
    int rc = -1;
    if (!nbytes || !order) { ds4_set_error("%s: out of memory", path); goto done; }

    /* validate every entry before touching the disk */
    for (int i = 0; i < n; i++) {
        const ds4_st_entry *e = &entries[i];
        const char *name = e->name ? e->name : "(null)";
        size_t numel;
        if (!e->name || strcmp(e->name, "__metadata__") == 0) {
            ds4_set_error("%s: writing tensor %d: invalid name '%s'", path, i, name);
            goto done;
        }
        if (!dtype_valid(e->dtype)) {
            ds4_set_error("%s: writing tensor '%s': invalid dtype %d", path, name, (int)e->dtype);
            goto done;
        }
        if (e->ndim < 0 || e->ndim > DS4_ST_MAX_DIMS) {
            ds4_set_error("%s: writing tensor '%s': ndim %d not in [0, %d]", path, name, e->ndim,
                          DS4_ST_MAX_DIMS);
            goto done;
        }
        if (shape_bytes(e->shape, e->ndim, ds4_dtype_size(e->dtype), &numel, &nbytes[i]) != 0) {
            ds4_set_error("%s: writing tensor '%s': negative dim or size overflow", path, name);
            goto done;
        }
        if (nbytes[i] > 0 && !e->data) {
            ds4_set_error("%s: writing tensor '%s': data is NULL", path, name);
            goto done;
        }
        order[i] = e;
    }
    qsort(order, (size_t)n, sizeof *order, cmp_entry_name);
    for (int i = 1; i < n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            ds4_set_error("%s: writing tensor '%s': name given twice", path, order[i]->name);
            goto done;
        }
    }

    /* header: metadata first, then tensors in the given order, contiguous */
    sb_str(&h, "{");
    int first = 1;
    if (metadata_json) {
        meta = cJSON_Parse(metadata_json);
        if (!cJSON_IsObject(meta)) {
            ds4_set_error("%s: writing safetensors: metadata is not a JSON object", path);
            goto done;
        }
        sb_str(&h, "\"__metadata__\":{");
        for (const cJSON *f = meta->child; f; f = f->next) {
            if (!cJSON_IsString(f)) {
                ds4_set_error("%s: writing safetensors: metadata key '%s' is not a string",
                              path, f->string);
                goto done;
            }
            if (f != meta->child) sb_str(&h, ",");
            sb_json_string(&h, f->string);
            sb_str(&h, ":");
            sb_json_string(&h, f->valuestring);
        }
        sb_str(&h, "}");
        first = 0;
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const ds4_st_entry *e = &entries[i];
        char num[64];
        if (!first) sb_str(&h, ",");
        first = 0;
        sb_json_string(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, k_dtypes[e->dtype].name);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)e->shape[d]);
            sb_str(&h, num);
        }
        if (__builtin_add_overflow(off, nbytes[i], &off)) {
            ds4_set_error("%s: writing safetensors: total size overflows", path);
            goto done;
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off - nbytes[i], off);
        sb_str(&h, num);
    }
    sb_str(&h, "}");
    while ((8 + h.len) % 8 != 0) sb_str(&h, " ");
    if (h.oom) { ds4_set_error("%s: out of memory building the header", path); goto done; }
    if (h.len > DS4_ST_MAX_HEADER) {
        ds4_set_error("%s: writing safetensors: header of %zu bytes is over the limit", path,
                      h.len);
        goto done;
    }

    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    ds4_atomic_file af;
    if (ds4_atomic_open(&af, path) != 0) goto done;
    if (ds4_atomic_write(&af, lenb, 8) != 0 || ds4_atomic_write(&af, h.p, h.len) != 0) {
        ds4_atomic_abort(&af);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        if (ds4_atomic_write(&af, entries[i].data, nbytes[i]) != 0) {
            ds4_error_prefix("writing tensor '%s'", entries[i].name);
            ds4_atomic_abort(&af);
            goto done;
        }
    }
    if (ds4_atomic_commit(&af) != 0) goto done;
    rc = 0;
done:
    cJSON_Delete(meta);
    free(h.p);
    free(nbytes);
    free(order);
    return rc;
}
