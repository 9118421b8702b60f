/* config.c — the video tokenizer's configuration (video_config.json):
 * defaults, validation, JSON text out and a strict parser (unknown keys and
 * wrong types are errors naming the key). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"

#define VTOK_FORMAT "ds4-video-tokenizer"
/* 2: palette logits laid out [colour][pixel] per token (version 1 files used
 * [pixel][colour] with the same tensor shapes, so they are refused) */
#define VTOK_VERSION 2

void ds4_vtok_config_defaults(ds4_vtok_config *c) {
    memset(c, 0, sizeof *c);
    c->width = 64;
    c->height = 64;
    c->fps = 24;
    c->patch = 8;
    c->tubelet = 4;
    c->n_levels = 4;
    c->levels[0] = 8;
    c->levels[1] = 5;
    c->levels[2] = 5;
    c->levels[3] = 5;
    c->hidden = 128;
    c->ffn = 256;
    c->head = 256;
    c->enc_layers = 2;
    c->dec_layers = 3;
    c->causal = 1;
    c->palette = 1;
}

int ds4_vtok_config_validate(const ds4_vtok_config *c) {
#define FAIL(...) do { ds4_set_error(__VA_ARGS__); return -1; } while (0)
    if (c->patch < 1 || c->patch > 64) FAIL("video config: patch must be in [1, 64], got %d", c->patch);
    if (c->tubelet < 1 || c->tubelet > 64)
        FAIL("video config: tubelet must be in [1, 64], got %d", c->tubelet);
    if (c->width < c->patch || c->width > 8192 || c->width % c->patch)
        FAIL("video config: width %d must be a positive multiple of patch %d (<= 8192)", c->width,
             c->patch);
    if (c->height < c->patch || c->height > 8192 || c->height % c->patch)
        FAIL("video config: height %d must be a positive multiple of patch %d (<= 8192)", c->height,
             c->patch);
    if (c->fps < 1 || c->fps > 1000) FAIL("video config: fps must be in [1, 1000], got %d", c->fps);
    if (c->hidden < 1 || c->hidden > 8192) FAIL("video config: hidden must be in [1, 8192], got %d", c->hidden);
    if (c->ffn < 1 || c->ffn > 65536) FAIL("video config: ffn must be in [1, 65536], got %d", c->ffn);
    if (c->head < 1 || c->head > 65536) FAIL("video config: head must be in [1, 65536], got %d", c->head);
    if (c->enc_layers < 0 || c->enc_layers > DS4_VTOK_MAX_LAYERS)
        FAIL("video config: enc_layers must be in [0, %d], got %d", DS4_VTOK_MAX_LAYERS, c->enc_layers);
    if (c->dec_layers < 0 || c->dec_layers > DS4_VTOK_MAX_LAYERS)
        FAIL("video config: dec_layers must be in [0, %d], got %d", DS4_VTOK_MAX_LAYERS, c->dec_layers);
    if (c->causal != 0 && c->causal != 1) FAIL("video config: causal must be 0 or 1, got %d", c->causal);
    if (c->palette != 0 && c->palette != 1) FAIL("video config: palette must be 0 or 1, got %d", c->palette);
    ds4_fsq f;
    if (ds4_fsq_init(&f, c->levels, c->n_levels) != 0) {
        ds4_error_prefix("video config");
        return -1;
    }
    return 0;
#undef FAIL
}

char *ds4_vtok_config_to_json(const ds4_vtok_config *c) {
    ds4_fsq f;
    if (ds4_fsq_init(&f, c->levels, c->n_levels) != 0) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) { ds4_set_error("video config: out of memory"); return NULL; }
    cJSON_AddStringToObject(o, "format", VTOK_FORMAT);
    cJSON_AddNumberToObject(o, "version", VTOK_VERSION);
    cJSON_AddNumberToObject(o, "width", c->width);
    cJSON_AddNumberToObject(o, "height", c->height);
    cJSON_AddNumberToObject(o, "fps", c->fps);
    cJSON_AddNumberToObject(o, "patch", c->patch);
    cJSON_AddNumberToObject(o, "tubelet", c->tubelet);
    cJSON *lv = cJSON_AddArrayToObject(o, "levels");
    for (int i = 0; lv && i < c->n_levels; i++) cJSON_AddItemToArray(lv, cJSON_CreateNumber(c->levels[i]));
    cJSON_AddNumberToObject(o, "n_codes", f.n_codes);
    cJSON_AddNumberToObject(o, "hidden", c->hidden);
    cJSON_AddNumberToObject(o, "ffn", c->ffn);
    cJSON_AddNumberToObject(o, "head", c->head);
    cJSON_AddNumberToObject(o, "enc_layers", c->enc_layers);
    cJSON_AddNumberToObject(o, "dec_layers", c->dec_layers);
    cJSON_AddBoolToObject(o, "causal", c->causal);
    cJSON_AddStringToObject(o, "output", c->palette ? "palette" : "rgb");
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) ds4_set_error("video config: out of memory");
    return s;
}

static int json_int(const cJSON *j, const char *origin, int lo, int hi, int *out) {
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < lo ||
        j->valuedouble > hi) {
        ds4_set_error("%s: key '%s' must be an integer in [%d, %d]", origin, j->string, lo, hi);
        return -1;
    }
    *out = (int)j->valuedouble;
    return 0;
}

int ds4_vtok_config_parse(ds4_vtok_config *c, const char *json, const char *origin) {
    ds4_vtok_config_defaults(c);
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        ds4_set_error("%s: not valid JSON", origin);
        return -1;
    }
    int rc = -1, n_codes = -1;
    if (!cJSON_IsObject(root)) {
        ds4_set_error("%s: expected a JSON object", origin);
        goto done;
    }
    for (const cJSON *k = root->child; k; k = k->next) {
        const char *key = k->string;
        for (const cJSON *k2 = root->child; k2 != k; k2 = k2->next)
            if (strcmp(k2->string, key) == 0) {
                ds4_set_error("%s: duplicate key '%s'", origin, key);
                goto done;
            }
        if (!strcmp(key, "format")) {
            if (!cJSON_IsString(k) || strcmp(k->valuestring, VTOK_FORMAT)) {
                ds4_set_error("%s: key 'format' must be \"%s\"", origin, VTOK_FORMAT);
                goto done;
            }
        } else if (!strcmp(key, "version")) {
            int v;
            if (json_int(k, origin, VTOK_VERSION, VTOK_VERSION, &v)) goto done;
        } else if (!strcmp(key, "levels")) {
            int n = cJSON_GetArraySize(k);
            if (!cJSON_IsArray(k) || n < 1 || n > DS4_VTOK_MAX_LEVELS) {
                ds4_set_error("%s: key 'levels' must be an array of 1 to %d integers", origin,
                              DS4_VTOK_MAX_LEVELS);
                goto done;
            }
            int i = 0;
            for (const cJSON *e = k->child; e; e = e->next, i++) {
                if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                    e->valuedouble < 3 || e->valuedouble > 65536) {
                    ds4_set_error("%s: key 'levels': entry %d must be an integer in [3, 65536]",
                                  origin, i);
                    goto done;
                }
                c->levels[i] = (int)e->valuedouble;
            }
            c->n_levels = n;
        } else if (!strcmp(key, "output")) {
            if (!cJSON_IsString(k) || (strcmp(k->valuestring, "palette") && strcmp(k->valuestring, "rgb"))) {
                ds4_set_error("%s: key 'output' must be \"palette\" or \"rgb\"", origin);
                goto done;
            }
            c->palette = !strcmp(k->valuestring, "palette");
        } else if (!strcmp(key, "causal")) {
            if (!cJSON_IsBool(k)) {
                ds4_set_error("%s: key 'causal' must be true or false", origin);
                goto done;
            }
            c->causal = cJSON_IsTrue(k);
        } else {
            static const struct { const char *name; size_t off; int lo, hi; } ints[] = {
                {"width", offsetof(ds4_vtok_config, width), 1, 8192},
                {"height", offsetof(ds4_vtok_config, height), 1, 8192},
                {"fps", offsetof(ds4_vtok_config, fps), 1, 1000},
                {"patch", offsetof(ds4_vtok_config, patch), 1, 64},
                {"tubelet", offsetof(ds4_vtok_config, tubelet), 1, 64},
                {"hidden", offsetof(ds4_vtok_config, hidden), 1, 8192},
                {"ffn", offsetof(ds4_vtok_config, ffn), 1, 65536},
                {"head", offsetof(ds4_vtok_config, head), 1, 65536},
                {"enc_layers", offsetof(ds4_vtok_config, enc_layers), 0, DS4_VTOK_MAX_LAYERS},
                {"dec_layers", offsetof(ds4_vtok_config, dec_layers), 0, DS4_VTOK_MAX_LAYERS},
            };
            int found = 0;
            for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
                if (!strcmp(key, ints[i].name)) {
                    if (json_int(k, origin, ints[i].lo, ints[i].hi,
                                 (int *)((char *)c + ints[i].off)))
                        goto done;
                    found = 1;
                }
            if (!found && !strcmp(key, "n_codes")) {
                if (json_int(k, origin, 1, INT32_MAX, &n_codes)) goto done;
                found = 1;
            }
            if (!found) {
                ds4_set_error("%s: unknown key '%s'", origin, key);
                goto done;
            }
        }
    }
    if (ds4_vtok_config_validate(c) != 0) {
        ds4_error_prefix("%s", origin);
        goto done;
    }
    if (n_codes >= 0) {
        ds4_fsq f;
        ds4_fsq_init(&f, c->levels, c->n_levels);
        if (n_codes != f.n_codes) {
            ds4_set_error("%s: key 'n_codes' is %d but levels give %d codes", origin, n_codes,
                          (int)f.n_codes);
            goto done;
        }
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}
