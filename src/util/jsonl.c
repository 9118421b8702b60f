/* jsonl.c — JSON Lines files (one object a line) read into a growable array
 * of records by a caller-supplied parser; used by the evaluation sets. */
#include <cjson/cJSON.h>
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
