/* json.c — reading and writing the tokenizer as a Hugging Face tokenizer.json
 * (model BPE with vocab + merges, ByteLevel pre-tokenizer and decoder,
 * special tokens as added_tokens). Loading validates every field it uses. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "tokenizer/bpe.h"
#include "util/util.h"

/* Token bytes -> the byte-level string used in tokenizer.json (UTF-8, malloc'd). */
static char *bytes_to_json_str(const char *b, size_t n) {
    char *s = ds4_malloc(n * 2 + 1);   /* every mapped code point is < 0x800: <= 2 bytes */
    if (!s) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)bpe_utf8_encode(bpe_byte_to_cp((uint8_t)b[i]), s + k);
    s[k] = 0;
    return s;
}

/* Byte-level string -> token bytes (out has room for strlen(s) bytes).
 * Returns the byte count, or -1 when s has a character outside the alphabet. */
static long json_str_to_bytes(const char *s, char *out, uint32_t *bad_cp) {
    size_t n = strlen(s), k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)bpe_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        int b = cp == BPE_INVALID_CP ? -1 : bpe_cp_to_byte(cp);
        if (b < 0) { *bad_cp = cp; return -1; }
        out[k++] = (char)b;
    }
    return (long)k;
}

/* ---- save -------------------------------------------------------------- */
static cJSON *byte_level(int prefix_space) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", prefix_space);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", 1);
    return o;
}

int ds4_tokenizer_save(const ds4_tokenizer *t, const char *path) {
    cJSON *root = cJSON_CreateObject();
    char **strs = ds4_calloc((size_t)t->n_model, sizeof *strs);   /* (n_model,) JSON token strings */
    char *text = NULL, *merge = NULL;
    int rc = -1;
    if (!root || !strs) goto done;
    for (int i = 0; i < t->n_model; i++) {
        size_t len;
        const char *b;
        ds4_tokenizer_token_bytes(t, i, &b, &len);
        if (!(strs[i] = bytes_to_json_str(b, len))) goto done;
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int id = t->n_model; id < t->n_total; id++) {
        size_t len;
        const char *b;
        ds4_tokenizer_token_bytes(t, id, &b, &len);
        char *content = ds4_malloc(len + 1);
        if (!content) goto done;
        memcpy(content, b, len);
        content[len] = 0;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", id);
        cJSON_AddStringToObject(a, "content", content);
        free(content);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", byte_level(0));
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", byte_level(1));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int i = 0; i < t->n_model; i++) cJSON_AddNumberToObject(vocab, strs[i], i);
    /* merges as "left right": byte-level strings never contain a plain space */
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (int r = 0; r < t->n_merges; r++) {
        const char *l = strs[t->merge_left[r]], *rr = strs[t->merge_right[r]];
        size_t ll = strlen(l), lr = strlen(rr);
        if (!(merge = ds4_malloc(ll + lr + 2))) goto done;
        memcpy(merge, l, ll);
        merge[ll] = ' ';
        memcpy(merge + ll + 1, rr, lr + 1);
        cJSON_AddItemToArray(merges, cJSON_CreateString(merge));
        free(merge);
        merge = NULL;
    }
    text = cJSON_Print(root);
    if (!text) { ds4_set_error("%s: out of memory formatting tokenizer.json", path); goto done; }
    size_t n = strlen(text);
    text[n] = '\n';   /* replace the NUL: the file ends with a newline */
    rc = ds4_write_file_atomic(path, text, n + 1);
done:
    if (strs) for (int i = 0; i < t->n_model; i++) free(strs[i]);
    free(strs);
    free(text);
    free(merge);
    cJSON_Delete(root);
    return rc;
}

/* ---- load -------------------------------------------------------------- */
#define MAX_VOCAB (1 << 24)

/* obj[key] as an integer in [lo, hi]; 0 ok, -1 with an error naming field. */
static int get_int(const cJSON *v, const char *path, const char *field, long lo, long hi, long *out) {
    if (!cJSON_IsNumber(v)) {
        ds4_set_error("%s: %s must be a number", path, field);
        return -1;
    }
    double d = v->valuedouble;
    if (d != floor(d) || d < (double)lo || d > (double)hi) {
        ds4_set_error("%s: %s must be an integer in [%ld, %ld], got %g", path, field, lo, hi, d);
        return -1;
    }
    *out = (long)d;
    return 0;
}

/* Check an optional boolean field: absent (use dflt) or a bool equal to want. */
static int check_bool(const cJSON *obj, const char *key, int dflt, int want, const char *path,
                      const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    int val = dflt;
    if (v) {
        if (!cJSON_IsBool(v)) {
            ds4_set_error("%s: %s.%s must be true or false", path, where, key);
            return -1;
        }
        val = cJSON_IsTrue(v);
    }
    if (val != want) {
        ds4_set_error("%s: %s.%s must be %s (ds4 supports only the GPT-2 byte-level setup)",
                      path, where, key, want ? "true" : "false");
        return -1;
    }
    return 0;
}

static int check_null_or_absent(const cJSON *obj, const char *key, const char *path, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && !cJSON_IsNull(v)) {
        ds4_set_error("%s: %s%s%s is not supported (must be null)", path, where, *where ? "." : "", key);
        return -1;
    }
    return 0;
}

/* Id of the vocab token whose JSON string is s, or -1 (linear probing on a hash). */
typedef struct {
    const char **key;   /* (cap,) JSON token strings, NULL = empty */
    int32_t *id;        /* (cap,) */
    size_t cap;
} str_map;

static int32_t str_map_find(const str_map *m, const char *s, size_t *slot) {
    size_t n = strlen(s), i = (size_t)bpe_hash_bytes((const uint8_t *)s, n) & (m->cap - 1);
    for (; m->key[i]; i = (i + 1) & (m->cap - 1))
        if (!strcmp(m->key[i], s)) { if (slot) *slot = i; return m->id[i]; }
    if (slot) *slot = i;
    return -1;
}

ds4_tokenizer *ds4_tokenizer_load(const char *path) {
    char *data = NULL;
    size_t len = 0;
    if (ds4_read_file(path, &data, &len) < 0) return NULL;
    ds4_tokenizer *t = NULL;
    cJSON *root = NULL;
    str_map sm = {0};
    char **tok = NULL;          /* (n_total,) token bytes */
    size_t *tok_len = NULL;     /* (n_total,) */
    int32_t *ml = NULL, *mr = NULL, *mo = NULL;   /* (n_merges,) */
    char *buf = NULL;
    const cJSON *added = NULL;
    int n_model = 0, n_total = 0, n_added_max = 0, n_tok = 0;

    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - data) : 0, line = 1;
        for (size_t i = 0; i < off && i < len; i++) line += data[i] == '\n';
        ds4_set_error("%s: not valid JSON (near line %zu, byte %zu)", path, line, off);
        goto done;
    }
    if (!cJSON_IsObject(root)) { ds4_set_error("%s: top level must be a JSON object", path); goto done; }

    /* the pipeline must be the one our encoder implements */
    if (check_null_or_absent(root, "normalizer", path, "") < 0) goto done;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!cJSON_IsObject(pre)) {
        ds4_set_error("%s: pre_tokenizer must be an object of type ByteLevel", path);
        goto done;
    }
    const cJSON *pre_type = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (!cJSON_IsString(pre_type) || strcmp(pre_type->valuestring, "ByteLevel")) {
        ds4_set_error("%s: pre_tokenizer.type must be \"ByteLevel\"", path);
        goto done;
    }
    if (check_bool(pre, "add_prefix_space", 1, 0, path, "pre_tokenizer") < 0 ||
        check_bool(pre, "use_regex", 1, 1, path, "pre_tokenizer") < 0) goto done;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) { ds4_set_error("%s: model is missing or not an object", path); goto done; }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE"))) {
        ds4_set_error("%s: model.type must be \"BPE\"", path);
        goto done;
    }
    if (check_null_or_absent(model, "continuing_subword_prefix", path, "model") < 0 ||
        check_null_or_absent(model, "end_of_word_suffix", path, "model") < 0 ||
        check_bool(model, "ignore_merges", 0, 0, path, "model") < 0) goto done;
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0)) {
        ds4_set_error("%s: model.dropout is not supported (must be null)", path);
        goto done;
    }

    /* vocab: token string -> id, ids exactly 0 .. n_model-1 */
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) { ds4_set_error("%s: model.vocab is missing or not an object", path); goto done; }
    n_model = cJSON_GetArraySize(vocab);
    if (n_model < 256 || n_model > MAX_VOCAB) {
        ds4_set_error("%s: model.vocab has %d tokens; it needs the 256 byte tokens and at most %d",
                      path, n_model, MAX_VOCAB);
        goto done;
    }
    added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        ds4_set_error("%s: added_tokens must be an array", path);
        goto done;
    }
    n_added_max = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    tok = ds4_calloc((size_t)n_model + (size_t)n_added_max, sizeof *tok);
    if (tok) n_tok = n_model + n_added_max;
    tok_len = ds4_calloc((size_t)n_model + (size_t)n_added_max, sizeof *tok_len);
    sm.cap = 16;
    while (sm.cap < (size_t)n_model * 2) sm.cap *= 2;
    sm.key = ds4_calloc(sm.cap, sizeof *sm.key);
    sm.id = ds4_calloc(sm.cap, sizeof *sm.id);
    if (!tok || !tok_len || !sm.key || !sm.id) goto done;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        long id;
        char field[64];
        snprintf(field, sizeof field, "model.vocab[%.40s]", v->string);
        if (get_int(v, path, field, 0, n_model - 1, &id) < 0) goto done;
        if (tok[id]) {
            ds4_set_error("%s: model.vocab: id %ld is given to two tokens", path, id);
            goto done;
        }
        size_t slot;
        if (str_map_find(&sm, v->string, &slot) >= 0) {
            ds4_set_error("%s: model.vocab: token \"%.40s\" appears twice", path, v->string);
            goto done;
        }
        sm.key[slot] = v->string;
        sm.id[slot] = (int32_t)id;
        if (!(tok[id] = ds4_malloc(strlen(v->string) + 1))) goto done;
        uint32_t bad = 0;
        long nb = json_str_to_bytes(v->string, tok[id], &bad);
        if (nb < 0) {
            ds4_set_error("%s: model.vocab: token \"%.40s\" has character U+%04X outside the "
                          "byte-level alphabet", path, v->string, (unsigned)bad);
            goto done;
        }
        if (nb == 0) { ds4_set_error("%s: model.vocab: empty token", path); goto done; }
        tok_len[id] = (size_t)nb;
    }

    /* merges: "left right" strings or [left, right] pairs, in rank order */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) { ds4_set_error("%s: model.merges is missing or not an array", path); goto done; }
    int n_merges = cJSON_GetArraySize(merges);
    ml = ds4_malloc(((size_t)n_merges + 1) * sizeof *ml);
    mr = ds4_malloc(((size_t)n_merges + 1) * sizeof *mr);
    mo = ds4_malloc(((size_t)n_merges + 1) * sizeof *mo);
    if (!ml || !mr || !mo) goto done;
    int r = 0;
    for (const cJSON *m = merges->child; m; m = m->next, r++) {
        const char *a, *b;
        free(buf);
        buf = NULL;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                ds4_set_error("%s: model.merges[%d] must be two tokens separated by one space", path, r);
                goto done;
            }
            if (!(buf = ds4_malloc(strlen(m->valuestring) + 1))) goto done;
            strcpy(buf, m->valuestring);
            buf[sp - m->valuestring] = 0;
            a = buf;
            b = buf + (sp - m->valuestring) + 1;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring;
            b = m->child->next->valuestring;
        } else {
            ds4_set_error("%s: model.merges[%d] must be a string \"a b\" or an array of two strings", path, r);
            goto done;
        }
        int32_t ia = str_map_find(&sm, a, NULL), ib = str_map_find(&sm, b, NULL);
        if (ia < 0 || ib < 0) {
            ds4_set_error("%s: model.merges[%d]: token \"%.40s\" is not in model.vocab", path, r,
                          ia < 0 ? a : b);
            goto done;
        }
        size_t la = strlen(a), lb = strlen(b);
        char *ab = ds4_malloc(la + lb + 1);
        if (!ab) goto done;
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb + 1);
        int32_t io = str_map_find(&sm, ab, NULL);
        if (io < 0) {
            ds4_set_error("%s: model.merges[%d]: the merged token \"%.40s\" is not in model.vocab", path, r, ab);
            free(ab);
            goto done;
        }
        free(ab);
        ml[r] = ia;
        mr[r] = ib;
        mo[r] = io;
    }

    /* added (special) tokens: ids n_model, n_model + 1, ... in any order */
    n_total = n_model;
    if (cJSON_IsArray(added)) {
        int i = 0;
        for (const cJSON *a = added->child; a; a = a->next, i++) {
            char field[64];
            snprintf(field, sizeof field, "added_tokens[%d].id", i);
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
            long id;
            if (!cJSON_IsObject(a)) { ds4_set_error("%s: added_tokens[%d] must be an object", path, i); goto done; }
            if (get_int(cJSON_GetObjectItemCaseSensitive(a, "id"), path, field, 0, MAX_VOCAB, &id) < 0) goto done;
            if (!cJSON_IsString(content) || !content->valuestring[0]) {
                ds4_set_error("%s: added_tokens[%d].content must be a non-empty string", path, i);
                goto done;
            }
            if (id < n_model) continue;   /* already a vocab token (as GPT-2 does it) */
            if (id >= n_model + n_added_max) {
                ds4_set_error("%s: added_tokens[%d].id %ld leaves a gap after the vocab (%d tokens)",
                              path, i, id, n_model);
                goto done;
            }
            if (tok[id]) { ds4_set_error("%s: added_tokens[%d].id %ld is used twice", path, i, id); goto done; }
            size_t l = strlen(content->valuestring);
            if (!(tok[id] = ds4_malloc(l))) goto done;
            memcpy(tok[id], content->valuestring, l);
            tok_len[id] = l;
            if (id + 1 > n_total) n_total = (int)id + 1;
        }
        for (int id = n_model; id < n_total; id++) {
            if (!tok[id]) {
                ds4_set_error("%s: added_tokens: no token has id %d (ids must follow the vocab without gaps)",
                              path, id);
                goto done;
            }
        }
    }
    t = bpe_build(n_model, n_total, (const char *const *)tok, tok_len, n_merges, ml, mr, mo, path);
done:
    for (int i = 0; i < n_tok; i++) free(tok[i]);
    free(tok);
    free(tok_len);
    free(sm.key);
    free(sm.id);
    free(ml); free(mr); free(mo);
    free(buf);
    cJSON_Delete(root);
    free(data);
    return t;
}
