/* wm.c — a world model directory: the backbone (config.json,
 * model.safetensors, tokenizer.json), the video tokenizer (video.*) and the
 * generation defaults (worldmodel.json); F16 export for shipping; pixels <->
 * codes through the video tokenizer. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/safetensors.h"
#include "util/util.h"
#include "worldmodel/worldmodel.h"

void ds4_wm_settings_defaults(ds4_wm_settings *s) {
    s->window = 12;
    s->keep = 6;
    s->caption_max = 64;
}

int ds4_wm_settings_load(ds4_wm_settings *s, const char *path) {
    ds4_wm_settings_defaults(s);
    if (!ds4_file_exists(path)) return 0;
    char *txt;
    if (ds4_read_file(path, &txt, NULL) != 0) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        ds4_set_error("%s: not a JSON object", path);
        return -1;
    }
    int rc = 0;
    for (const cJSON *f = j->child; f; f = f->next) {
        int *dst = !strcmp(f->string, "window") ? &s->window : !strcmp(f->string, "keep") ? &s->keep
                 : !strcmp(f->string, "caption_max") ? &s->caption_max : NULL;
        if (!dst) {
            if (!strcmp(f->string, "format") || !strcmp(f->string, "note")) continue;
            ds4_set_error("%s: unknown key '%s'", path, f->string);
            rc = -1;
            break;
        }
        if (!cJSON_IsNumber(f) || f->valuedouble < 0 || f->valuedouble > 100000 ||
            f->valuedouble != floor(f->valuedouble)) {
            ds4_set_error("%s: key '%s' must be a non-negative integer", path, f->string);
            rc = -1;
            break;
        }
        *dst = (int)f->valuedouble;
    }
    cJSON_Delete(j);
    if (rc == 0 && (s->window < 1 || s->keep < 1 || s->keep >= s->window)) {
        ds4_set_error("%s: need window >= 2 and 1 <= keep < window (got %d, %d)", path, s->window, s->keep);
        rc = -1;
    }
    return rc;
}

int ds4_wm_settings_save(const ds4_wm_settings *s, const char *path) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"format\": \"ds4-worldmodel\",\n  \"window\": %d,\n  \"keep\": %d,\n"
                     "  \"caption_max\": %d,\n  \"note\": \"window: latent frames per training row and "
                     "the most kept in context; keep: latent frames kept when the context is rebuilt\"\n}\n",
                     s->window, s->keep, s->caption_max);
    return ds4_write_file_atomic(path, buf, (size_t)n);
}

ds4_wm *ds4_wm_open(const char *dir) {
    ds4_wm *w = ds4_calloc(1, sizeof *w);
    if (!w) return NULL;
    char path[4096];
    if (ds4_open_model_dir(dir, &w->m, &w->tok) != 0) goto fail;
    if (!(w->vt = ds4_vtok_load(dir))) { ds4_error_prefix("%s: video tokenizer: ", dir); goto fail; }
    if (ds4_wm_layout_init(&w->L, &w->m->cfg, w->tok) != 0) { ds4_error_prefix("%s: ", dir); goto fail; }
    if (ds4_wm_layout_check_vtok(&w->L, w->vt) != 0) { ds4_error_prefix("%s: ", dir); goto fail; }
    snprintf(path, sizeof path, "%s/worldmodel.json", dir);
    if (ds4_wm_settings_load(&w->s, path) != 0) goto fail;
    return w;
fail:
    ds4_wm_free(w);
    return NULL;
}

void ds4_wm_free(ds4_wm *w) {
    if (!w) return;
    ds4_model_free(w->m);
    ds4_tokenizer_free(w->tok);
    ds4_vtok_free(w->vt);
    free(w);
}

int ds4_wm_save_f16(const ds4_model *m, const char *dir) {
    if (ds4_mkdir_p(dir) != 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ds4_config_save(&m->cfg, path) != 0) return -1;
    const int n = m->layout.n_tensors;
    ds4_st_entry *e = ds4_calloc((size_t)n, sizeof *e);
    uint16_t *half = ds4_malloc(m->layout.n_floats * sizeof(uint16_t) + 1);
    if (!e || !half) { free(e); free(half); return -1; }
    for (size_t k = 0; k < m->layout.n_floats; k++) half[k] = ds4_fp32_to_fp16(m->params[k]);
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        e[i].name = t->name;
        e[i].dtype = DS4_DT_F16;
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = half + t->offset;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = ds4_st_write(path, e, n, "{\"format\":\"pt\",\"producer\":\"ds4\",\"dtype\":\"F16\"}");
    free(e);
    free(half);
    return rc;
}

int ds4_wm_encode(const ds4_wm *w, const uint8_t *rgb, int T, int32_t *codes) {
    return ds4_vtok_encode(w->vt, rgb, T, w->L.height, w->L.width, codes);
}

int ds4_wm_decode(const ds4_wm *w, const int32_t *codes, int n_lat, uint8_t *rgb) {
    return ds4_vtok_decode(w->vt, codes, n_lat, w->L.gh, w->L.gw, rgb);
}
