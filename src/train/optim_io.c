/* optim_io.c — the AdamW state on disk: both moments of every tensor of a
 * layout in a safetensors file (NAME.exp_avg, NAME.exp_avg_sq), with the
 * optimizer step and the trainer step in its metadata. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/safetensors.h"
#include "train/train.h"
#include "util/util.h"

int ds4_adamw_save(const char *path, const ds4_model *m, const ds4_adamw *o, long step) {
    const int n = m->layout.n_tensors;
    ds4_st_entry *e = ds4_calloc((size_t)n * 2, sizeof *e);
    char (*names)[128] = ds4_calloc((size_t)n * 2, 128);
    if (!e || !names) { free(e); free(names); return -1; }
    int k = 0;
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        for (int which = 0; which < 2; which++) {
            snprintf(names[k], 128, "%s.%s", t->name, which ? "exp_avg_sq" : "exp_avg");
            e[k].name = names[k];
            e[k].dtype = DS4_DT_F32;
            e[k].ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
            e[k].data = (which ? o->v : o->m) + t->offset;
            k++;
        }
    }
    char meta[128];
    snprintf(meta, sizeof meta, "{\"step\":\"%ld\",\"adam_t\":\"%ld\"}", step, o->t);
    int rc = ds4_st_write(path, e, k, meta);
    free(e);
    free(names);
    return rc;
}

static int meta_step(const ds4_safetensors *st, const char *key, long *out) {
    cJSON *j = st->metadata ? cJSON_Parse(st->metadata) : NULL;
    cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, key) : NULL;
    int rc = -1;
    if (cJSON_IsString(v)) { *out = strtol(v->valuestring, NULL, 10); rc = 0; }
    cJSON_Delete(j);
    return rc;
}

int ds4_adamw_load(const char *path, const ds4_model *m, ds4_adamw *o, long step) {
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) return -1;
    long s = -1, t = -1;
    if (meta_step(&st, "step", &s) != 0 || meta_step(&st, "adam_t", &t) != 0) {
        ds4_set_error("%s: metadata lacks step/adam_t", path);
        goto fail;
    }
    if (s != step) {
        ds4_set_error("%s: written at step %ld but the run state says step %ld (interrupted save?)", path, s, step);
        goto fail;
    }
    o->t = t;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *ti = &m->layout.tensors[i];
        for (int which = 0; which < 2; which++) {
            char name[160];
            snprintf(name, sizeof name, "%s.%s", ti->name, which ? "exp_avg_sq" : "exp_avg");
            const ds4_st_tensor *x = ds4_st_find(&st, name);
            if (!x) { ds4_set_error("%s: missing tensor %s", path, name); goto fail; }
            if (x->dtype != DS4_DT_F32 || x->numel != ti->numel) {
                ds4_set_error("%s: tensor %s has the wrong dtype or size", path, name);
                goto fail;
            }
            memcpy((which ? o->v : o->m) + ti->offset, x->data, ti->numel * sizeof(float));
        }
    }
    ds4_st_close(&st);
    return 0;
fail:
    ds4_st_close(&st);
    return -1;
}

