/* quantized_gguf_tok.c — a ds4 tokenizer from GGUF tokenizer metadata
 * (tokenizer.ggml.model "gpt2": byte-level token texts, token types, merges),
 * and opening a GGUF file as model + tokenizer. */
#include <stdlib.h>
#include <string.h>
#include "model/quantized.h"
#include "tokenizer/bpe.h"
#include "util/util.h"

/* Decode a byte-level token text (UTF-8 of GPT-2 mapped code points) into
 * bytes. Returns the byte count, or -1 if a code point is not in the map. */
static long unmap(const char *s, size_t n, char *out) {
    size_t i = 0;
    long o = 0;
    while (i < n) {
        uint8_t b = (uint8_t)s[i];
        uint32_t cp;
        size_t k;
        if (b < 0x80) { cp = b; k = 1; }
        else if ((b & 0xE0) == 0xC0 && i + 1 < n) { cp = (uint32_t)(b & 31) << 6 | ((uint8_t)s[i + 1] & 63); k = 2; }
        else if ((b & 0xF0) == 0xE0 && i + 2 < n) {
            cp = (uint32_t)(b & 15) << 12 | (uint32_t)((uint8_t)s[i + 1] & 63) << 6 | ((uint8_t)s[i + 2] & 63);
            k = 3;
        } else return -1;
        int by = bpe_cp_to_byte(cp);
        if (by < 0) return -1;
        out[o++] = (char)by;
        i += k;
    }
    return o;
}

typedef struct { const char *s; size_t n; int id; } tok_ref;

static int cmp_ref(const void *a, const void *b) {
    const tok_ref *x = a, *y = b;
    int r = memcmp(x->s, y->s, DS4_MIN(x->n, y->n));
    return r ? r : (x->n < y->n ? -1 : x->n > y->n);
}

static int find_ref(const tok_ref *refs, int n, const char *s, size_t len) {
    tok_ref key = {s, len, 0};
    const tok_ref *r = bsearch(&key, refs, (size_t)n, sizeof *refs, cmp_ref);
    return r ? r->id : -1;
}

ds4_tokenizer *ds4_tokenizer_from_gguf(const ds4_gguf *g) {
    char *model = NULL;
    if (ds4_gguf_get_str(g, "tokenizer.ggml.model", &model)) return NULL;
    if (strcmp(model, "gpt2")) {
        ds4_set_error("%s: tokenizer.ggml.model is '%s'; ds4 reads byte-level BPE ('gpt2')", g->origin, model);
        free(model);
        return NULL;
    }
    free(model);
    const ds4_gguf_kv *tk = ds4_gguf_find(g, "tokenizer.ggml.tokens");
    const ds4_gguf_kv *ty = ds4_gguf_find(g, "tokenizer.ggml.token_type");
    const ds4_gguf_kv *mg = ds4_gguf_find(g, "tokenizer.ggml.merges");
    if (!tk || tk->type != DS4_GGUF_ARR || tk->arr_type != DS4_GGUF_STR || !mg || mg->type != DS4_GGUF_ARR ||
        mg->arr_type != DS4_GGUF_STR) {
        ds4_set_error("%s: tokenizer.ggml.tokens and tokenizer.ggml.merges must be string arrays", g->origin);
        return NULL;
    }
    if (tk->n > (1u << 24) || mg->n > (1u << 24) || (ty && ty->n != tk->n)) {
        ds4_set_error("%s: tokenizer arrays have inconsistent or absurd lengths", g->origin);
        return NULL;
    }
    int n = (int)tk->n, n_model = 0, n_total = 0;
    /* NORMAL (1) tokens first, then CONTROL (3) ones; UNUSED (5) padding last */
    for (int i = 0; i < n; i++) {
        int64_t t = 1;
        if (ty && ds4_gguf_arr_i64(ty, (uint64_t)i, &t)) return NULL;
        if (t == 1 && n_total == n_model) { n_model++; n_total++; }
        else if (t == 3 && n_total == i) n_total++;
        else if (t == 5) continue;
        else if (t == 1 || t == 3) {
            ds4_set_error("%s: token %d has type %lld out of order (ds4 needs normal tokens, then control ones)",
                          g->origin, i, (long long)t);
            return NULL;
        } else {
            ds4_set_error("%s: token %d has type %lld; ds4 reads normal (1), control (3) and unused (5)", g->origin, i,
                          (long long)t);
            return NULL;
        }
    }
    size_t bytes = 0;
    for (int i = 0; i < n_total; i++) bytes += tk->strs[i].len;
    char *pool = ds4_malloc(bytes + 1);
    const char **toks = ds4_calloc((size_t)n_total + 1, sizeof *toks);
    size_t *lens = ds4_calloc((size_t)n_total + 1, sizeof *lens);
    tok_ref *refs = ds4_calloc((size_t)n_total + 1, sizeof *refs);
    int32_t *ml = ds4_calloc(mg->n + 1, 4), *mr = ds4_calloc(mg->n + 1, 4), *mo = ds4_calloc(mg->n + 1, 4);
    ds4_tokenizer *t = NULL;
    if (!pool || !toks || !lens || !refs || !ml || !mr || !mo) goto out;
    size_t o = 0;
    for (int i = 0; i < n_total; i++) {
        const ds4_gguf_str *s = &tk->strs[i];
        toks[i] = pool + o;
        if (i < n_model) {
            long b = unmap(s->s, s->len, pool + o);
            if (b < 0) { ds4_set_error("%s: token %d is not byte-level BPE text", g->origin, i); goto out; }
            lens[i] = (size_t)b;
        } else {
            memcpy(pool + o, s->s, s->len);
            lens[i] = s->len;
        }
        o += lens[i];
        refs[i] = (tok_ref){s->s, s->len, i};
    }
    qsort(refs, (size_t)n_model, sizeof *refs, cmp_ref);
    for (uint64_t r = 0; r < mg->n; r++) {
        const ds4_gguf_str *s = &mg->strs[r];
        const char *sp = memchr(s->s, ' ', s->len);
        if (!sp) { ds4_set_error("%s: merge %llu has no space", g->origin, (unsigned long long)r); goto out; }
        size_t la = (size_t)(sp - s->s), lb = s->len - la - 1;
        int a = find_ref(refs, n_model, s->s, la), b = find_ref(refs, n_model, sp + 1, lb);
        char cat[512];
        int c = -1;
        if (la + lb <= sizeof cat) {
            memcpy(cat, s->s, la);
            memcpy(cat + la, sp + 1, lb);
            c = find_ref(refs, n_model, cat, la + lb);
        }
        if (a < 0 || b < 0 || c < 0) {
            ds4_set_error("%s: merge %llu '%.*s' names tokens that are not in the vocabulary", g->origin,
                          (unsigned long long)r, (int)DS4_MIN(s->len, 80), s->s);
            goto out;
        }
        ml[r] = a;
        mr[r] = b;
        mo[r] = c;
    }
    t = bpe_build(n_model, n_total, toks, lens, (int)mg->n, ml, mr, mo, g->origin);
out:
    free(pool);
    free(toks);
    free(lens);
    free(refs);
    free(ml);
    free(mr);
    free(mo);
    return t;
}

int ds4_model_open_gguf(const char *path, ds4_model **m, ds4_tokenizer **tok) {
    *m = ds4_model_load_gguf(path);
    if (!*m) return -1;
    if (!tok) return 0;
    ds4_gguf g;
    if (ds4_gguf_open(&g, path)) goto fail;
    *tok = ds4_tokenizer_from_gguf(&g);
    ds4_gguf_close(&g);
    if (*tok) return 0;
fail:
    ds4_model_free(*m);
    *m = NULL;
    return -1;
}
