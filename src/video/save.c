/* save.c — the video tokenizer on disk: DIR/video_config.json (architecture,
 * FSQ levels, sizes) and DIR/video.safetensors (F32 tensors video.*). Loading
 * validates the config, every tensor's presence, dtype and shape, and rejects
 * tensors it does not know. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "io/safetensors.h"
#include "util/util.h"
#include "video/video.h"

int ds4_vtok_save(const ds4_vtok *m, const char *dir) {
    if (ds4_mkdir_p(dir) != 0) return -1;
    char path[4096];
    char *js = ds4_vtok_config_to_json(&m->cfg);
    if (!js) return -1;
    snprintf(path, sizeof path, "%s/video_config.json", dir);
    size_t len = strlen(js);
    int rc = ds4_write_file_atomic(path, js, len);
    free(js);
    if (rc != 0) return -1;
    ds4_st_entry *e = ds4_calloc((size_t)m->n_tensors, sizeof *e);
    if (!e) return -1;
    for (int i = 0; i < m->n_tensors; i++) {
        const ds4_vtok_tensor *t = &m->tensors[i];
        e[i].name = t->name;
        e[i].dtype = DS4_DT_F32;
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = m->params + t->off;
    }
    snprintf(path, sizeof path, "%s/video.safetensors", dir);
    rc = ds4_st_write(path, e, m->n_tensors, "{\"format\":\"ds4-video-tokenizer\"}");
    free(e);
    return rc;
}

ds4_vtok *ds4_vtok_load(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/video_config.json", dir);
    char *js = NULL;
    size_t len;
    if (ds4_read_file(path, &js, &len) != 0) return NULL;
    ds4_vtok_config c;
    int rc = ds4_vtok_config_parse(&c, js, path);
    free(js);
    if (rc != 0) return NULL;
    ds4_vtok *m = ds4_vtok_alloc(&c);
    if (!m) return NULL;
    snprintf(path, sizeof path, "%s/video.safetensors", dir);
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) { ds4_vtok_free(m); return NULL; }
    for (int i = 0; i < st.n_tensors; i++)
        if (!ds4_vtok_find(m, st.tensors[i].name)) {
            ds4_set_error("%s: unexpected tensor '%s' (not part of the configured tokenizer)", path,
                          st.tensors[i].name);
            goto fail;
        }
    for (int i = 0; i < m->n_tensors; i++) {
        const ds4_vtok_tensor *t = &m->tensors[i];
        const ds4_st_tensor *s = ds4_st_find(&st, t->name);
        if (!s) {
            ds4_set_error("%s: missing tensor '%s'", path, t->name);
            goto fail;
        }
        if (s->dtype != DS4_DT_F32) {
            ds4_set_error("%s: tensor '%s' has dtype %s, expected F32", path, t->name,
                          ds4_dtype_name(s->dtype));
            goto fail;
        }
        int ok = s->ndim == t->ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = s->shape[d] == t->shape[d];
        if (!ok) {
            char got[128] = "", want[64];
            size_t o = 0;
            for (int d = 0; d < s->ndim && o < sizeof got - 24; d++)
                o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", d ? ", " : "",
                                      (long long)s->shape[d]);
            if (t->ndim == 2) snprintf(want, sizeof want, "%d, %d", t->shape[0], t->shape[1]);
            else snprintf(want, sizeof want, "%d", t->shape[0]);
            ds4_set_error("%s: tensor '%s' has shape [%s], expected [%s]", path, t->name, got, want);
            goto fail;
        }
        /* memcpy: foreign files need not keep 4-byte alignment */
        memcpy(m->params + t->off, s->data, t->numel * sizeof(float));
        for (size_t k = 0; k < t->numel; k++)
            if (!isfinite(m->params[t->off + k])) {
                ds4_set_error("%s: tensor '%s' holds a non-finite value at index %zu", path,
                              t->name, k);
                goto fail;
            }
    }
    ds4_st_close(&st);
    return m;
fail:
    ds4_st_close(&st);
    ds4_vtok_free(m);
    return NULL;
}
