/* jsonl.c — JSON Lines files (one object a line) read into a growable array
 * of records by a caller-supplied parser (the evaluation sets), and the JSON
 * pieces of run-state files (atomic write, a random generator's state). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"

int ds4_jsonl_load(const char *path, size_t elem, const char *what, void **items, int *n_out, int *cap_out,
                   int (*parse)(const cJSON *o, void *record, const char *path, int line)) {
    *items = NULL;
    *n_out = *cap_out = 0;
    char *text;
    size_t len;
    if (ds4_read_file(path, &text, &len)) return -1;
    int cap = 16, n = 0, line = 0, rc = -1;
    char *arr = ds4_calloc((size_t)cap, elem);
    if (!arr) { free(text); return -1; }
    for (char *s = text, *e; s && *s; s = e ? e + 1 : NULL) {
        e = strchr(s, '\n');
        if (e) *e = 0;
        line++;
        if (strspn(s, " \t\r") == strlen(s)) continue;
        cJSON *o = cJSON_Parse(s);
        if (!o || !cJSON_IsObject(o)) {
            ds4_set_error("%s line %d: not a JSON object", path, line);
            cJSON_Delete(o);
            goto done;
        }
        if (n == cap) {
            char *q = realloc(arr, (size_t)cap * 2 * elem);
            if (!q) { cJSON_Delete(o); ds4_set_error("%s: out of memory", path); goto done; }
            arr = q;
            memset(arr + (size_t)cap * elem, 0, (size_t)cap * elem);
            cap *= 2;
        }
        int bad = parse(o, arr + (size_t)n++ * elem, path, line);
        cJSON_Delete(o);
        if (bad) goto done;
    }
    if (n == 0) ds4_set_error("%s: no %s", path, what);
    else rc = 0;
done:
    free(text);
    *items = arr;
    *n_out = n;
    *cap_out = cap;
    return rc;
}

int ds4_json_write_atomic(const char *path, struct cJSON *j) {
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt) { ds4_set_error("out of memory writing %s", path); return -1; }
    int rc = ds4_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return rc;
}

void ds4_json_add_rng(struct cJSON *obj, const char *key, const ds4_rng *rng) {
    cJSON *a = cJSON_AddArrayToObject(obj, key);
    char buf[32];
    for (int i = 0; i < 4; i++) {                 /* strings: a double cannot hold 64 bits */
        snprintf(buf, sizeof buf, "%" PRIu64, rng->s[i]);
        cJSON_AddItemToArray(a, cJSON_CreateString(buf));
    }
}

int ds4_json_get_rng(const struct cJSON *obj, const char *key, ds4_rng *rng, const char *path) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 4) {
        ds4_set_error("%s: field '%s' must be an array of 4 strings", path, key);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(v)) { ds4_set_error("%s: %s[%d] is not a string", path, key, i); return -1; }
        rng->s[i] = strtoull(v->valuestring, NULL, 10);
    }
    return 0;
}
