/* bpe.c — the byte-level BPE tokenizer at run time: building one from tokens
 * and merges, encoding (pre-tokenize, then apply merges by rank with a heap per
 * piece, with a cache of frequent pieces), decoding and token lookups. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer/bpe.h"
#include "util/util.h"

const char *const BPE_SPECIALS[BPE_N_SPECIAL] = {
    "<|bos|>", "<|eos|>", "<|video|>", "<|eov|>", "<|frame|>", "<|pad|>",
};

/* ---- pair map ---------------------------------------------------------- */
static uint64_t pair_key(int32_t l, int32_t r) {
    return (((uint64_t)(uint32_t)l << 32) | (uint32_t)r) + 1;
}

static size_t pair_slot(uint64_t key, size_t mask) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 32)) & mask;
}

int bpe_pair_map_init(bpe_pair_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2) cap *= 2;
    m->keys = ds4_calloc(cap, sizeof *m->keys);
    m->vals = ds4_malloc(cap * sizeof *m->vals);
    m->cap = cap;
    m->n = 0;
    if (!m->keys || !m->vals) { bpe_pair_map_free(m); return -1; }
    return 0;
}

void bpe_pair_map_free(bpe_pair_map *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}

static int pair_map_grow(bpe_pair_map *m) {
    bpe_pair_map big;
    if (bpe_pair_map_init(&big, m->cap) < 0) return -1;   /* doubles capacity */
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t s = pair_slot(m->keys[i], big.cap - 1);
        while (big.keys[s]) s = (s + 1) & (big.cap - 1);
        big.keys[s] = m->keys[i];
        big.vals[s] = m->vals[i];
    }
    big.n = m->n;
    bpe_pair_map_free(m);
    *m = big;
    return 0;
}

int bpe_pair_map_put(bpe_pair_map *m, int32_t l, int32_t r, int32_t val) {
    if ((m->n + 1) * 2 > m->cap && pair_map_grow(m) < 0) return -1;
    uint64_t key = pair_key(l, r);
    size_t s = pair_slot(key, m->cap - 1);
    while (m->keys[s] && m->keys[s] != key) s = (s + 1) & (m->cap - 1);
    if (!m->keys[s]) { m->keys[s] = key; m->n++; }
    m->vals[s] = val;
    return 0;
}

int32_t bpe_pair_map_get(const bpe_pair_map *m, int32_t l, int32_t r) {
    uint64_t key = pair_key(l, r);
    size_t s = pair_slot(key, m->cap - 1);
    while (m->keys[s]) {
        if (m->keys[s] == key) return m->vals[s];
        s = (s + 1) & (m->cap - 1);
    }
    return -1;
}

/* ---- building ---------------------------------------------------------- */
void ds4_tokenizer_free(ds4_tokenizer *t) {
    if (!t) return;
    free(t->tok_off);
    free(t->tok_bytes);
    free(t->merge_left);
    free(t->merge_right);
    free(t->merge_out);
    bpe_pair_map_free(&t->ranks);
    free(t);
}

static const char *tok_ptr(const ds4_tokenizer *t, int id, size_t *len) {
    *len = t->tok_off[id + 1] - t->tok_off[id];
    return t->tok_bytes + t->tok_off[id];
}

ds4_tokenizer *bpe_build(int n_model, int n_total, const char *const *tokens,
                         const size_t *lens, int n_merges, const int32_t *left,
                         const int32_t *right, const int32_t *out,
                         const char *origin) {
    if (n_model < 256 || n_total < n_model || n_merges < 0) {
        ds4_set_error("%s: vocabulary has %d tokens; a byte-level BPE needs all 256 bytes", origin, n_model);
        return NULL;
    }
    ds4_tokenizer *t = ds4_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_model = n_model;
    t->n_total = n_total;
    t->n_merges = n_merges;
    size_t total = 0;
    for (int i = 0; i < n_total; i++) total += lens[i];
    t->tok_off = ds4_malloc((size_t)(n_total + 1) * sizeof *t->tok_off);
    t->tok_bytes = ds4_malloc(total + 1);
    t->merge_left = ds4_malloc((size_t)(n_merges + 1) * sizeof(int32_t));
    t->merge_right = ds4_malloc((size_t)(n_merges + 1) * sizeof(int32_t));
    t->merge_out = ds4_malloc((size_t)(n_merges + 1) * sizeof(int32_t));
    if (!t->tok_off || !t->tok_bytes || !t->merge_left || !t->merge_right || !t->merge_out ||
        bpe_pair_map_init(&t->ranks, (size_t)n_merges + 1) < 0) goto fail;

    size_t off = 0;
    for (int i = 0; i < n_total; i++) {
        t->tok_off[i] = off;
        if (lens[i]) memcpy(t->tok_bytes + off, tokens[i], lens[i]);
        off += lens[i];
    }
    t->tok_off[n_total] = off;

    /* model tokens: non-empty, no byte string twice (checked with a hash set) */
    {
        size_t cap = 16;
        while (cap < (size_t)n_model * 2) cap *= 2;
        int32_t *set = ds4_malloc(cap * sizeof *set);
        if (!set) goto fail;
        memset(set, 0xFF, cap * sizeof *set);
        for (int i = 0; i < n_model; i++) {
            size_t len;
            const char *p = tok_ptr(t, i, &len);
            if (len == 0) {
                free(set);
                ds4_set_error("%s: vocab token with id %d is empty", origin, i);
                goto fail;
            }
            size_t s = (size_t)bpe_hash_bytes((const uint8_t *)p, len) & (cap - 1);
            for (; set[s] >= 0; s = (s + 1) & (cap - 1)) {
                size_t l2;
                const char *q = tok_ptr(t, set[s], &l2);
                if (l2 == len && !memcmp(p, q, len)) {
                    int other = set[s];
                    free(set);
                    ds4_set_error("%s: vocab ids %d and %d are the same token", origin, other, i);
                    goto fail;
                }
            }
            set[s] = i;
        }
        free(set);
    }

    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int i = 0; i < n_model; i++) {
        size_t len;
        const char *p = tok_ptr(t, i, &len);
        if (len == 1) t->byte_id[(uint8_t)p[0]] = i;
    }
    for (int b = 0; b < 256; b++) {
        if (t->byte_id[b] < 0) {
            ds4_set_error("%s: vocab has no token for byte 0x%02X (every byte needs one)", origin, b);
            goto fail;
        }
    }

    for (int r = 0; r < n_merges; r++) {
        int32_t l = left[r], rr = right[r], o = out[r];
        if (l < 0 || l >= n_model || rr < 0 || rr >= n_model || o < 0 || o >= n_model) {
            ds4_set_error("%s: merge %d refers to a token id outside the vocab", origin, r);
            goto fail;
        }
        size_t ll, lr, lo;
        const char *pl = tok_ptr(t, l, &ll), *pr = tok_ptr(t, rr, &lr), *po = tok_ptr(t, o, &lo);
        if (lo != ll + lr || memcmp(po, pl, ll) || memcmp(po + ll, pr, lr)) {
            ds4_set_error("%s: merge %d: token %d is not the concatenation of tokens %d and %d",
                          origin, r, o, l, rr);
            goto fail;
        }
        if (bpe_pair_map_get(&t->ranks, l, rr) >= 0) {
            ds4_set_error("%s: merge %d repeats an earlier merge (tokens %d %d)", origin, r, l, rr);
            goto fail;
        }
        t->merge_left[r] = l;
        t->merge_right[r] = rr;
        t->merge_out[r] = o;
        if (bpe_pair_map_put(&t->ranks, l, rr, r) < 0) goto fail;
    }
    return t;
fail:
    ds4_tokenizer_free(t);
    return NULL;
}

/* ---- queries ----------------------------------------------------------- */
int ds4_tokenizer_vocab_size(const ds4_tokenizer *t) { return t->n_total; }

int ds4_tokenizer_token_bytes(const ds4_tokenizer *t, int id, const char **bytes, size_t *len) {
    if (id < 0 || id >= t->n_total) {
        ds4_set_error("token id %d is outside the vocabulary [0, %d)", id, t->n_total);
        return -1;
    }
    *bytes = tok_ptr(t, id, len);
    return 0;
}

int ds4_tokenizer_special(const ds4_tokenizer *t, const char *name) {
    size_t n = strlen(name);
    for (int id = t->n_model; id < t->n_total; id++) {
        size_t len;
        const char *p = tok_ptr(t, id, &len);
        if (len == n && !memcmp(p, name, n)) return id;
    }
    return -1;
}

int ds4_tokenizer_decode(const ds4_tokenizer *t, const int *ids, size_t n, char **out, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_total) {
            ds4_set_error("decode: id %d at position %zu is outside the vocabulary [0, %d)",
                          ids[i], i, t->n_total);
            return -1;
        }
        total += t->tok_off[ids[i] + 1] - t->tok_off[ids[i]];
    }
    char *buf = ds4_malloc(total + 1);
    if (!buf) return -1;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = tok_ptr(t, ids[i], &l);
        memcpy(buf + off, p, l);
        off += l;
    }
    buf[off] = 0;
    *out = buf;
    *len = off;
    return 0;
}

/* ---- encoding one piece -----------------------------------------------
 * The piece starts as one symbol per byte in a linked list. A min-heap holds
 * candidate merges (rank, position of the left symbol); the lowest rank wins
 * and, for equal ranks, the leftmost position (as Hugging Face does). Stale
 * entries (a symbol that has since changed) are skipped when popped. */
typedef struct { int32_t rank, pos; } heap_item;

static int item_less(heap_item a, heap_item b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_item *h, int *n, heap_item it) {
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!item_less(it, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static heap_item heap_pop(heap_item *h, int *n) {
    heap_item top = h[0], last = h[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && item_less(h[c + 1], h[c])) c++;
        if (!item_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Scratch space for encode_piece, grown as needed. */
typedef struct {
    int32_t *sym, *prev, *next;   /* (cap,) symbol id and list links per byte position */
    heap_item *heap;              /* (3 * cap,) */
    int cap;
} piece_scratch;

static int scratch_reserve(piece_scratch *s, int n) {
    if (n <= s->cap) return 0;
    int cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    free(s->sym); free(s->prev); free(s->next); free(s->heap);
    s->sym = ds4_malloc((size_t)cap * sizeof(int32_t));
    s->prev = ds4_malloc((size_t)cap * sizeof(int32_t));
    s->next = ds4_malloc((size_t)cap * sizeof(int32_t));
    s->heap = ds4_malloc((size_t)cap * 3 * sizeof(heap_item));
    s->cap = (s->sym && s->prev && s->next && s->heap) ? cap : 0;
    return s->cap ? 0 : -1;
}

static void scratch_free(piece_scratch *s) {
    free(s->sym); free(s->prev); free(s->next); free(s->heap);
}

static void push_pair(const ds4_tokenizer *t, piece_scratch *s, int *nh, int pos) {
    int nx = s->next[pos];
    if (nx < 0) return;
    int32_t r = bpe_pair_map_get(&t->ranks, s->sym[pos], s->sym[nx]);
    if (r >= 0) heap_push(s->heap, nh, (heap_item){r, pos});
}

/* Encode n bytes into out (room for n ids). Returns the number of ids. */
static int encode_piece(const ds4_tokenizer *t, piece_scratch *s, const uint8_t *w, int n, int *out) {
    if (n == 1) { out[0] = t->byte_id[w[0]]; return 1; }
    for (int i = 0; i < n; i++) {
        s->sym[i] = t->byte_id[w[i]];
        s->prev[i] = i - 1;
        s->next[i] = i + 1 < n ? i + 1 : -1;
    }
    int nh = 0;
    for (int i = 0; i + 1 < n; i++) push_pair(t, s, &nh, i);
    while (nh > 0) {
        heap_item it = heap_pop(s->heap, &nh);
        int a = it.pos, b = s->next[a];
        /* stale: a was merged away (sym -1), or the pair at a has changed */
        if (s->sym[a] < 0 || b < 0 || s->sym[a] != t->merge_left[it.rank] ||
            s->sym[b] != t->merge_right[it.rank]) continue;
        s->sym[a] = t->merge_out[it.rank];
        s->sym[b] = -1;
        s->next[a] = s->next[b];
        if (s->next[b] >= 0) s->prev[s->next[b]] = a;
        if (s->prev[a] >= 0) push_pair(t, s, &nh, s->prev[a]);
        push_pair(t, s, &nh, a);
    }
    int k = 0;
    for (int i = 0; i >= 0; i = s->next[i]) out[k++] = s->sym[i];
    return k;
}

/* ---- cache of encoded pieces (per encode call) ------------------------- */
#define CACHE_BITS 16
#define CACHE_MAX_PIECE 48      /* longer pieces are rare: not cached */

typedef struct {
    uint64_t hash;              /* 0 = empty */
    uint32_t pos, len;          /* piece bytes: text[pos, pos + len) */
    uint32_t ids_off, n_ids;    /* into pool */
} cache_entry;

typedef struct {
    cache_entry *e;             /* (1 << CACHE_BITS,) */
    int32_t *pool;
    size_t pool_n, pool_cap;
    size_t n;
} piece_cache;

int ds4_tokenizer_encode(const ds4_tokenizer *t, const char *text, size_t len, int **ids, size_t *n_ids) {
    const uint8_t *u = (const uint8_t *)text;
    int *out = ds4_malloc((len ? len : 1) * sizeof *out);   /* at most one id per byte */
    if (!out) return -1;
    piece_scratch s = {0};
    piece_cache c = {0};
    int use_cache = len >= 4096 && len < UINT32_MAX;
    if (use_cache) {
        c.e = calloc((size_t)1 << CACHE_BITS, sizeof *c.e);
        c.pool_cap = (size_t)1 << 18;
        c.pool = malloc(c.pool_cap * sizeof *c.pool);
        if (!c.e || !c.pool) use_cache = 0;   /* the cache is only for speed */
    }
    size_t k = 0, pos = 0;
    int rc = 0;
    while (pos < len) {
        size_t n = bpe_pretok_next(u, len, pos);
        if (n > (size_t)INT32_MAX / 4) {
            ds4_set_error("encode: a single piece of %zu bytes is too long", n);
            rc = -1;
            break;
        }
        cache_entry *slot = NULL;
        uint64_t h = 0;
        if (use_cache && n <= CACHE_MAX_PIECE) {
            h = bpe_hash_bytes(u + pos, n) | 1;
            size_t mask = ((size_t)1 << CACHE_BITS) - 1, i = (size_t)h & mask;
            for (;; i = (i + 1) & mask) {
                cache_entry *e = &c.e[i];
                if (!e->hash) { slot = e; break; }
                if (e->hash == h && e->len == n && !memcmp(u + e->pos, u + pos, n)) {
                    memcpy(out + k, c.pool + e->ids_off, e->n_ids * sizeof *out);
                    k += e->n_ids;
                    goto next;
                }
            }
        }
        if (scratch_reserve(&s, (int)n) < 0) { rc = -1; break; }
        int m = encode_piece(t, &s, u + pos, (int)n, out + k);
        /* remember the piece while the table is at most half full */
        if (slot && c.n * 2 < ((size_t)1 << CACHE_BITS) && c.pool_n + (size_t)m <= c.pool_cap) {
            *slot = (cache_entry){h, (uint32_t)pos, (uint32_t)n, (uint32_t)c.pool_n, (uint32_t)m};
            memcpy(c.pool + c.pool_n, out + k, (size_t)m * sizeof *out);
            c.pool_n += (size_t)m;
            c.n++;
        }
        k += (size_t)m;
    next:
        pos += n;
    }
    scratch_free(&s);
    free(c.e);
    free(c.pool);
    if (rc < 0) { free(out); return -1; }
    int *shrunk = realloc(out, (k ? k : 1) * sizeof *out);
    *ids = shrunk ? shrunk : out;
    *n_ids = k;
    return 0;
}
