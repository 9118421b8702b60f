/* train.c — learning BPE merges from a text corpus: count pre-token pieces
 * in a hash map, then repeatedly merge the most frequent adjacent pair, with
 * pair counts and pair -> word lists updated only for the words a merge touches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer/bpe.h"
#include "util/util.h"

/* ---- unique pieces ----------------------------------------------------- */
typedef struct {
    uint64_t hash;      /* 0 = empty slot */
    size_t pos, len;    /* bytes text[pos, pos + len) */
    int64_t count;
} word_slot;

typedef struct {
    word_slot *s;       /* (cap,) */
    size_t cap, n;
} word_map;

static int word_map_add(word_map *m, const uint8_t *text, size_t pos, size_t len) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1 << 16;
        word_slot *s = ds4_calloc(cap, sizeof *s);
        if (!s) return -1;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->s[i].hash) continue;
            size_t j = (size_t)m->s[i].hash & (cap - 1);
            while (s[j].hash) j = (j + 1) & (cap - 1);
            s[j] = m->s[i];
        }
        free(m->s);
        m->s = s;
        m->cap = cap;
    }
    uint64_t h = bpe_hash_bytes(text + pos, len) | 1;
    size_t j = (size_t)h & (m->cap - 1);
    for (;; j = (j + 1) & (m->cap - 1)) {
        word_slot *w = &m->s[j];
        if (!w->hash) {
            *w = (word_slot){h, pos, len, 1};
            m->n++;
            return 0;
        }
        if (w->hash == h && w->len == len && !memcmp(text + w->pos, text + pos, len)) {
            w->count++;
            return 0;
        }
    }
}

/* ---- pairs ------------------------------------------------------------- */
typedef struct {
    int32_t left, right;
    int64_t count;          /* occurrences weighted by word counts */
    int32_t *words;         /* (n_words,) indices of words that contain (or once contained) the pair */
    int32_t n_words, cap_words;
    int32_t stamp;          /* last merge step that pushed this pair on the heap */
} pair_info;

typedef struct { int64_t count; int32_t left, right, idx; } heap_entry;

typedef struct {
    bpe_pair_map map;       /* (left, right) -> index into p */
    pair_info *p;
    size_t n, cap;
    heap_entry *heap;       /* max-heap by count, then smaller (left, right) */
    size_t nh, caph;
} pair_table;

/* a comes out of the heap before b */
static int entry_before(const heap_entry *a, const heap_entry *b) {
    if (a->count != b->count) return a->count > b->count;
    if (a->left != b->left) return a->left < b->left;
    return a->right < b->right;
}

static int heap_push(pair_table *pt, heap_entry e) {
    if (pt->nh == pt->caph) {
        size_t cap = pt->caph ? pt->caph * 2 : 1024;
        heap_entry *h = realloc(pt->heap, cap * sizeof *h);
        if (!h) { ds4_set_error("out of memory (tokenizer training heap)"); return -1; }
        pt->heap = h;
        pt->caph = cap;
    }
    size_t i = pt->nh++;
    while (i > 0) {
        size_t par = (i - 1) / 2;
        if (!entry_before(&e, &pt->heap[par])) break;
        pt->heap[i] = pt->heap[par];
        i = par;
    }
    pt->heap[i] = e;
    return 0;
}

static heap_entry heap_pop(pair_table *pt) {
    heap_entry top = pt->heap[0], last = pt->heap[--pt->nh];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= pt->nh) break;
        if (c + 1 < pt->nh && entry_before(&pt->heap[c + 1], &pt->heap[c])) c++;
        if (!entry_before(&pt->heap[c], &last)) break;
        pt->heap[i] = pt->heap[c];
        i = c;
    }
    pt->heap[i] = last;
    return top;
}

/* Index of pair (l, r), created with count 0 if new; -1 on allocation failure. */
static int32_t pair_get(pair_table *pt, int32_t l, int32_t r) {
    int32_t idx = bpe_pair_map_get(&pt->map, l, r);
    if (idx >= 0) return idx;
    if (pt->n == pt->cap) {
        size_t cap = pt->cap ? pt->cap * 2 : 4096;
        pair_info *p = realloc(pt->p, cap * sizeof *p);
        if (!p) { ds4_set_error("out of memory (tokenizer training pairs)"); return -1; }
        pt->p = p;
        pt->cap = cap;
    }
    idx = (int32_t)pt->n++;
    pt->p[idx] = (pair_info){l, r, 0, NULL, 0, 0, -1};
    if (bpe_pair_map_put(&pt->map, l, r, idx) < 0) return -1;
    return idx;
}

static int pair_add_word(pair_info *p, int32_t w) {
    if (p->n_words && p->words[p->n_words - 1] == w) return 0;
    if (p->n_words == p->cap_words) {
        int32_t cap = p->cap_words ? p->cap_words * 2 : 4;
        int32_t *ws = realloc(p->words, (size_t)cap * sizeof *ws);
        if (!ws) { ds4_set_error("out of memory (tokenizer training word lists)"); return -1; }
        p->words = ws;
        p->cap_words = cap;
    }
    p->words[p->n_words++] = w;
    return 0;
}

/* Add c to the count of the new pair (l, r), note that word w holds it, and
 * list the pair once per merge step in *touched for the heap. */
static int pair_bump(pair_table *pt, int32_t l, int32_t r, int64_t c, int32_t w, int32_t step,
                     int32_t **touched, size_t *n_touched, size_t *cap_touched) {
    int32_t idx = pair_get(pt, l, r);
    if (idx < 0) return -1;
    pair_info *p = &pt->p[idx];
    p->count += c;
    if (pair_add_word(p, w) < 0) return -1;
    if (p->stamp != step) {
        p->stamp = step;
        if (*n_touched == *cap_touched) {
            size_t cap = *cap_touched ? *cap_touched * 2 : 1024;
            int32_t *tt = realloc(*touched, cap * sizeof *tt);
            if (!tt) { ds4_set_error("out of memory (tokenizer training)"); return -1; }
            *touched = tt;
            *cap_touched = cap;
        }
        (*touched)[(*n_touched)++] = idx;
    }
    return 0;
}

static void pair_table_free(pair_table *pt) {
    for (size_t i = 0; i < pt->n; i++) free(pt->p[i].words);
    free(pt->p);
    free(pt->heap);
    bpe_pair_map_free(&pt->map);
}

/* ---- training ---------------------------------------------------------- */
ds4_tokenizer *ds4_tokenizer_train(const char *text, size_t len, int vocab_size, int verbose) {
    const int n_base = 256;
    if (vocab_size < n_base + BPE_N_SPECIAL) {
        ds4_set_error("tokenizer vocab size %d is too small: it must hold the 256 byte tokens "
                      "and %d special tokens (>= %d)", vocab_size, BPE_N_SPECIAL, n_base + BPE_N_SPECIAL);
        return NULL;
    }
    const uint8_t *u = (const uint8_t *)text;
    int target_merges = vocab_size - n_base - BPE_N_SPECIAL;
    double t0 = ds4_time_s();

    ds4_tokenizer *tok = NULL;
    word_map wm = {0};
    pair_table pt = {0};
    int32_t *sym = NULL;                /* (total symbols,) all words' symbols, back to back */
    size_t *w_off = NULL;               /* (n_words,) start of word w in sym */
    int32_t *w_len = NULL;              /* (n_words,) current symbol count */
    int64_t *w_cnt = NULL;              /* (n_words,) occurrences in the corpus */
    int32_t *m_left = NULL, *m_right = NULL, *m_out = NULL;   /* (target_merges,) */
    int32_t *touched = NULL;            /* pairs created by the current merge */
    size_t n_touched = 0, cap_touched = 0;
    char **tok_str = NULL;
    size_t *tok_len = NULL;
    int n_tok = 0;                      /* entries of tok_str to free */
    int n_merges = 0;

    /* 1. count pieces */
    size_t n_pieces = 0;
    for (size_t pos = 0; pos < len;) {
        size_t n = bpe_pretok_next(u, len, pos);
        if (n > INT32_MAX) { ds4_set_error("tokenizer train: a piece of %zu bytes is too long", n); goto done; }
        if (word_map_add(&wm, u, pos, n) < 0) goto done;
        pos += n;
        n_pieces++;
    }
    size_t n_words = wm.n, total_sym = 0;
    if (n_words > INT32_MAX) { ds4_set_error("tokenizer train: too many distinct pieces"); goto done; }
    w_off = ds4_malloc((n_words + 1) * sizeof *w_off);
    w_len = ds4_malloc((n_words + 1) * sizeof *w_len);
    w_cnt = ds4_malloc((n_words + 1) * sizeof *w_cnt);
    if (!w_off || !w_len || !w_cnt) goto done;
    {
        size_t w = 0;
        for (size_t i = 0; i < wm.cap; i++) {
            if (!wm.s[i].hash) continue;
            w_off[w] = total_sym;
            w_len[w] = (int32_t)wm.s[i].len;
            w_cnt[w] = wm.s[i].count;
            total_sym += wm.s[i].len;
            w++;
        }
        sym = ds4_malloc((total_sym + 1) * sizeof *sym);
        if (!sym) goto done;
        w = 0;
        for (size_t i = 0; i < wm.cap; i++) {
            if (!wm.s[i].hash) continue;
            for (size_t j = 0; j < wm.s[i].len; j++) sym[w_off[w] + j] = u[wm.s[i].pos + j];
            w++;
        }
    }
    free(wm.s);
    wm.s = NULL;
    if (verbose)
        fprintf(stderr, "tokenizer: %zu bytes, %zu pieces, %zu distinct (%.2f s)\n",
                len, n_pieces, n_words, ds4_time_s() - t0);

    /* 2. initial pair counts and word lists */
    if (bpe_pair_map_init(&pt.map, 1 << 15) < 0) goto done;
    for (size_t w = 0; w < n_words; w++) {
        const int32_t *s = sym + w_off[w];
        for (int32_t i = 0; i + 1 < w_len[w]; i++) {
            int32_t idx = pair_get(&pt, s[i], s[i + 1]);
            if (idx < 0) goto done;
            pt.p[idx].count += w_cnt[w];
            if (pair_add_word(&pt.p[idx], (int32_t)w) < 0) goto done;
        }
    }
    for (size_t i = 0; i < pt.n; i++)
        if (heap_push(&pt, (heap_entry){pt.p[i].count, pt.p[i].left, pt.p[i].right, (int32_t)i}) < 0) goto done;

    m_left = ds4_malloc(((size_t)target_merges + 1) * sizeof *m_left);
    m_right = ds4_malloc(((size_t)target_merges + 1) * sizeof *m_right);
    m_out = ds4_malloc(((size_t)target_merges + 1) * sizeof *m_out);
    if (!m_left || !m_right || !m_out) goto done;

    /* 3. merges */
    while (n_merges < target_merges && pt.nh > 0) {
        heap_entry e = heap_pop(&pt);
        int64_t now = pt.p[e.idx].count;
        if (now != e.count) {   /* stale: counts only go down, so re-queue with the true count */
            if (now > 0 && heap_push(&pt, (heap_entry){now, e.left, e.right, e.idx}) < 0) goto done;
            continue;
        }
        if (now <= 0) break;
        const int32_t A = e.left, B = e.right, C = n_base + n_merges;
        m_left[n_merges] = A;
        m_right[n_merges] = B;
        m_out[n_merges] = C;
        n_touched = 0;
        /* the list of (A, B) is not appended to while we walk it: only pairs with C are new */
        int32_t *words = pt.p[e.idx].words;
        int32_t nw = pt.p[e.idx].n_words;
        for (int32_t k = 0; k < nw; k++) {
            int32_t w = words[k];
            int32_t *s = sym + w_off[w];
            int32_t n = w_len[w];   /* a word listed earlier may no longer hold (A, B): then nothing changes */
            int64_t c = w_cnt[w];
            /* merge left to right; at each site only the neighbour pairs change:
             * (x, A) -> (x, C) and (B, y) -> (C, y), x being the already merged
             * left symbol. (A, B) itself is zeroed after the loop. */
            int32_t j = 0;
            for (int32_t i = 0; i < n;) {
                if (i + 1 < n && s[i] == A && s[i + 1] == B) {
                    if (j > 0) {
                        pt.p[bpe_pair_map_get(&pt.map, s[j - 1], A)].count -= c;
                        if (pair_bump(&pt, s[j - 1], C, c, w, n_merges, &touched, &n_touched, &cap_touched) < 0)
                            goto done;
                    }
                    if (i + 2 < n) {
                        pt.p[bpe_pair_map_get(&pt.map, B, s[i + 2])].count -= c;
                        if (pair_bump(&pt, C, s[i + 2], c, w, n_merges, &touched, &n_touched, &cap_touched) < 0)
                            goto done;
                    }
                    s[j++] = C;
                    i += 2;
                } else {
                    s[j++] = s[i++];
                }
            }
            w_len[w] = j;
        }
        pt.p[e.idx].count = 0;
        free(pt.p[e.idx].words);
        pt.p[e.idx].words = NULL;
        pt.p[e.idx].n_words = pt.p[e.idx].cap_words = 0;
        for (size_t i = 0; i < n_touched; i++) {
            pair_info *p = &pt.p[touched[i]];
            if (p->count > 0 && heap_push(&pt, (heap_entry){p->count, p->left, p->right, touched[i]}) < 0)
                goto done;
        }
        n_merges++;
        if (verbose && (n_merges % 256 == 0 || n_merges == target_merges))
            fprintf(stderr, "tokenizer: merge %d/%d (count %lld) %.2f s\n", n_merges, target_merges,
                    (long long)now, ds4_time_s() - t0);
    }
    if (verbose && n_merges < target_merges)
        fprintf(stderr, "tokenizer: the corpus has no more pairs to merge: %d merges instead of %d\n",
                n_merges, target_merges);

    /* 4. token strings: bytes, merges, specials */
    {
        int n_model = n_base + n_merges, n_total = n_model + BPE_N_SPECIAL;
        tok_str = ds4_calloc((size_t)n_total, sizeof *tok_str);
        tok_len = ds4_calloc((size_t)n_total, sizeof *tok_len);
        if (!tok_str || !tok_len) goto done;
        n_tok = n_total;
        for (int b = 0; b < n_base; b++) {
            if (!(tok_str[b] = ds4_malloc(1))) goto done;
            tok_str[b][0] = (char)b;
            tok_len[b] = 1;
        }
        for (int r = 0; r < n_merges; r++) {
            int id = n_base + r;
            size_t ll = tok_len[m_left[r]], lr = tok_len[m_right[r]];
            if (!(tok_str[id] = ds4_malloc(ll + lr))) goto done;
            memcpy(tok_str[id], tok_str[m_left[r]], ll);
            memcpy(tok_str[id] + ll, tok_str[m_right[r]], lr);
            tok_len[id] = ll + lr;
        }
        for (int i = 0; i < BPE_N_SPECIAL; i++) {
            size_t l = strlen(BPE_SPECIALS[i]);
            if (!(tok_str[n_model + i] = ds4_malloc(l))) goto done;
            memcpy(tok_str[n_model + i], BPE_SPECIALS[i], l);
            tok_len[n_model + i] = l;
        }
        tok = bpe_build(n_model, n_total, (const char *const *)tok_str, tok_len, n_merges,
                        m_left, m_right, m_out, "tokenizer train");
    }
    if (verbose && tok)
        fprintf(stderr, "tokenizer: vocab %d (256 bytes + %d merges + %d special) in %.2f s\n",
                tok->n_total, n_merges, BPE_N_SPECIAL, ds4_time_s() - t0);
done:
    free(wm.s);
    pair_table_free(&pt);
    free(sym); free(w_off); free(w_len); free(w_cnt);
    free(m_left); free(m_right); free(m_out);
    free(touched);
    for (int i = 0; i < n_tok; i++) free(tok_str[i]);
    free(tok_str); free(tok_len);
    return tok;
}
