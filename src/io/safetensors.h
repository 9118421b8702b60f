/* safetensors.h — read (mmap, fully validated) and write (atomic) the
 * safetensors format: 8-byte LE header length, JSON header, raw data. */
#ifndef DS4_SAFETENSORS_H
#define DS4_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DS4_DT_F32 = 0, DS4_DT_F16, DS4_DT_BF16, DS4_DT_F64,
    DS4_DT_I8, DS4_DT_U8, DS4_DT_I16, DS4_DT_I32, DS4_DT_I64, DS4_DT_BOOL
} ds4_dtype;

size_t      ds4_dtype_size(ds4_dtype t);
const char *ds4_dtype_name(ds4_dtype t);          /* "F32", "BF16", ... */

#define DS4_ST_MAX_DIMS 8
#define DS4_ST_MAX_HEADER (100u * 1000u * 1000u)  /* 100 MB: larger is an error */

typedef struct ds4_st_tensor {
    char      *name;
    ds4_dtype  dtype;
    int        ndim;
    int64_t    shape[DS4_ST_MAX_DIMS];
    size_t     numel;
    size_t     nbytes;
    const void *data;          /* points into the mapping */
} ds4_st_tensor;

typedef struct ds4_safetensors {
    ds4_st_tensor *tensors;
    int            n_tensors;
    char          *metadata;   /* "__metadata__" as a JSON text, or NULL */
    void          *map;
    size_t         map_len;
} ds4_safetensors;

/* Open and validate: header length within file and <= 100 MB, valid JSON,
 * known dtypes, shape product * dtype size == offsets span, offsets inside the
 * data area, no overlap, no duplicate names. Errors name the file and tensor. */
int  ds4_st_open(ds4_safetensors *st, const char *path);
void ds4_st_close(ds4_safetensors *st);
const ds4_st_tensor *ds4_st_find(const ds4_safetensors *st, const char *name);

typedef struct ds4_st_entry {
    const char *name;
    ds4_dtype   dtype;
    int         ndim;
    int64_t     shape[DS4_ST_MAX_DIMS];
    const void *data;          /* numel * dtype size bytes */
} ds4_st_entry;

/* Write atomically (tmp + fsync + rename). metadata_json: a JSON object of
 * string values, or NULL. Data is 8-byte aligned as in the reference writer. */
int ds4_st_write(const char *path, const ds4_st_entry *entries, int n,
                 const char *metadata_json);

#endif
