/* gguf.h — read (mmap or a memory buffer, fully validated) and write (atomic)
 * GGUF v3 files: "GGUF", version, tensor and metadata counts, typed key/value
 * metadata, tensor infos (name, dims, ggml type, offset), aligned data. */
#ifndef DS4_GGUF_H
#define DS4_GGUF_H

#include <stddef.h>
#include <stdint.h>

#define DS4_GGUF_MAGIC 0x46554747u      /* "GGUF" little-endian */
#define DS4_GGUF_VERSION 3
#define DS4_GGUF_ALIGN 32               /* general.alignment default */
#define DS4_GGUF_MAX_DIMS 4

/* Metadata value types (GGUF spec numbering). */
typedef enum {
    DS4_GGUF_U8 = 0, DS4_GGUF_I8 = 1, DS4_GGUF_U16 = 2, DS4_GGUF_I16 = 3,
    DS4_GGUF_U32 = 4, DS4_GGUF_I32 = 5, DS4_GGUF_F32 = 6, DS4_GGUF_BOOL = 7,
    DS4_GGUF_STR = 8, DS4_GGUF_ARR = 9, DS4_GGUF_U64 = 10, DS4_GGUF_I64 = 11,
    DS4_GGUF_F64 = 12, DS4_GGUF_NTYPES = 13
} ds4_gguf_vtype;

/* ggml tensor types ds4 reads and writes. */
enum { DS4_GGML_F32 = 0, DS4_GGML_F16 = 1, DS4_GGML_Q4_0 = 2, DS4_GGML_Q8_0 = 8, DS4_GGML_Q4_K = 12 };
/* Elements per block and bytes per block of a ggml type; 0 if ds4 does not know it. */
int    ds4_ggml_block_elems(int ggml_type);
size_t ds4_ggml_block_bytes(int ggml_type);
const char *ds4_ggml_type_name(int ggml_type);

/* A string inside the file (not NUL-terminated). */
typedef struct { const char *s; uint64_t len; } ds4_gguf_str;

typedef struct ds4_gguf_kv {
    ds4_gguf_str key;
    int type;                  /* ds4_gguf_vtype */
    int arr_type;              /* element type when type == ARR */
    uint64_t n;                /* array length (1 for scalars) */
    const uint8_t *data;       /* scalar value, or the first array element */
    /* string arrays: strs[n] decoded at open; NULL otherwise */
    ds4_gguf_str *strs;
} ds4_gguf_kv;

typedef struct ds4_gguf_tensor {
    ds4_gguf_str name;
    int ndim;
    int64_t ne[DS4_GGUF_MAX_DIMS];   /* ggml order: ne[0] is the contiguous (row) dim */
    int type;                         /* ggml type */
    uint64_t offset;                  /* from the data section start */
    size_t nbytes;
    const void *data;
} ds4_gguf_tensor;

typedef struct ds4_gguf {
    uint32_t version;
    ds4_gguf_kv *kv;
    int64_t n_kv;
    ds4_gguf_tensor *tensors;
    int64_t n_tensors;
    uint32_t alignment;
    const uint8_t *base;             /* the whole file */
    size_t size;
    void *map;                        /* mmap (ds4_gguf_open), else NULL */
    char origin[256];                 /* file name for error messages */
} ds4_gguf;

/* Parse a GGUF image. Every length, count, type, dimension, offset and size
 * is checked against the buffer: a malformed file gives an error naming the
 * origin, the offset and the field, never a read out of bounds. The buffer
 * must outlive g. */
int  ds4_gguf_parse(ds4_gguf *g, const void *buf, size_t len, const char *origin);
/* mmap path and parse it. */
int  ds4_gguf_open(ds4_gguf *g, const char *path);
void ds4_gguf_close(ds4_gguf *g);
/* 1 if path starts with the GGUF magic. */
int  ds4_gguf_is_gguf(const char *path);

const ds4_gguf_kv *ds4_gguf_find(const ds4_gguf *g, const char *key);
const ds4_gguf_tensor *ds4_gguf_find_tensor(const ds4_gguf *g, const char *name);
int  ds4_gguf_str_eq(ds4_gguf_str a, const char *b);
/* Typed getters: 0 on success; -1 with an error if the key is missing or has
 * another type (integers of any width convert when the value fits). */
int ds4_gguf_get_i64(const ds4_gguf *g, const char *key, int64_t *v);
int ds4_gguf_get_f64(const ds4_gguf *g, const char *key, double *v);
int ds4_gguf_get_bool(const ds4_gguf *g, const char *key, int *v);
/* *s is malloc'd and NUL-terminated. */
int ds4_gguf_get_str(const ds4_gguf *g, const char *key, char **s);
/* Element i of an integer/float array (bounds-checked). */
int ds4_gguf_arr_i64(const ds4_gguf_kv *kv, uint64_t i, int64_t *v);
int ds4_gguf_arr_f64(const ds4_gguf_kv *kv, uint64_t i, double *v);

/* ---- writer ---------------------------------------------------------------
 * Collect metadata and tensors, then write once. Data pointers must stay valid
 * until ds4_gguf_writer_write. */
typedef struct ds4_gguf_writer ds4_gguf_writer;
ds4_gguf_writer *ds4_gguf_writer_new(void);
void ds4_gguf_writer_free(ds4_gguf_writer *w);
int ds4_gguf_add_u32(ds4_gguf_writer *w, const char *key, uint32_t v);
int ds4_gguf_add_i32(ds4_gguf_writer *w, const char *key, int32_t v);
int ds4_gguf_add_u64(ds4_gguf_writer *w, const char *key, uint64_t v);
int ds4_gguf_add_f32(ds4_gguf_writer *w, const char *key, float v);
int ds4_gguf_add_bool(ds4_gguf_writer *w, const char *key, int v);
int ds4_gguf_add_str(ds4_gguf_writer *w, const char *key, const char *v);
/* Generic scalar/array of fixed-size elements (type != STR/ARR). */
int ds4_gguf_add_scalar(ds4_gguf_writer *w, const char *key, int type, const void *v);
int ds4_gguf_add_arr(ds4_gguf_writer *w, const char *key, int elem_type, const void *v, uint64_t n);
/* String array: strs[i] of lens[i] bytes (lens NULL: NUL-terminated). */
int ds4_gguf_add_arr_str(ds4_gguf_writer *w, const char *key, const char *const *strs,
                         const size_t *lens, uint64_t n);
/* ne in ggml order (ne[0] contiguous); nbytes must match type and ne. */
int ds4_gguf_add_tensor(ds4_gguf_writer *w, const char *name, int ggml_type, int ndim,
                        const int64_t *ne, const void *data, size_t nbytes);
/* Serialise into a malloc'd buffer (tests) or atomically into a file. */
int ds4_gguf_writer_to_buffer(const ds4_gguf_writer *w, uint8_t **buf, size_t *len);
int ds4_gguf_writer_write(const ds4_gguf_writer *w, const char *path);

#endif
