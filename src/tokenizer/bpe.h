/* bpe.h — internals of the byte-level BPE tokenizer shared by its files:
 * the tokenizer struct, the GPT-2 byte<->unicode mapping, the GPT-2 regex
 * pre-tokenizer and a pair -> merge rank hash map. Public API is in ds4.h. */
#ifndef DS4_TOKENIZER_BPE_H
#define DS4_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>
#include "ds4.h"

#define BPE_N_SPECIAL 6
/* Special tokens, appended after the learned vocabulary in this order. */
extern const char *const BPE_SPECIALS[BPE_N_SPECIAL];

/* Open-addressing map from a (left, right) token pair to a merge rank. */
typedef struct bpe_pair_map {
    uint64_t *keys;     /* (cap,) (left << 32 | right) + 1; 0 = empty */
    int32_t *vals;      /* (cap,) */
    size_t cap;         /* power of two */
    size_t n;
} bpe_pair_map;

int  bpe_pair_map_init(bpe_pair_map *m, size_t expected);
void bpe_pair_map_free(bpe_pair_map *m);
int  bpe_pair_map_put(bpe_pair_map *m, int32_t left, int32_t right, int32_t val);
/* Value for the pair, or -1. */
int32_t bpe_pair_map_get(const bpe_pair_map *m, int32_t left, int32_t right);

struct ds4_tokenizer {
    int n_model;            /* ids [0, n_model): bytes + merges (+ any extra vocab) */
    int n_total;            /* n_model + special (added) tokens */
    /* Bytes of every token: tok_off (n_total + 1,) offsets into tok_bytes. */
    size_t *tok_off;
    char *tok_bytes;
    int byte_id[256];       /* id of the single-byte token for each byte */
    /* Merges in rank order: merge r joins merge_left[r] + merge_right[r] into merge_out[r]. */
    int n_merges;
    int32_t *merge_left, *merge_right, *merge_out;   /* (n_merges,) */
    bpe_pair_map ranks;     /* (left, right) -> rank */
};

/* Build a tokenizer from token byte strings and merges. tokens[i] (lens[i]
 * bytes) is the byte string of id i, for i < n_total; ids >= n_model are
 * special (added) tokens. Merges are given by ids (rank order). Validates that
 * every byte has a single-byte token, that each merge's output is the
 * concatenation of its inputs, and that no byte string repeats among model
 * tokens. origin names the source in error messages. */
ds4_tokenizer *bpe_build(int n_model, int n_total, const char *const *tokens,
                         const size_t *lens, int n_merges, const int32_t *left,
                         const int32_t *right, const int32_t *out,
                         const char *origin);

/* GPT-2 byte -> code point mapping (bytes_to_unicode) and its inverse
 * (-1 for code points that are not in the alphabet). */
uint32_t bpe_byte_to_cp(uint8_t b);
int bpe_cp_to_byte(uint32_t cp);

/* Decode one UTF-8 code point at s[0..n). Returns its byte length (>= 1) and
 * sets *cp; for an invalid or truncated sequence returns 1 and sets *cp to
 * BPE_INVALID_CP (the byte then counts as "other" for the pre-tokenizer). */
#define BPE_INVALID_CP 0xFFFFFFFFu
int bpe_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* Append cp as UTF-8 to out (room for 4 bytes). Returns bytes written. */
int bpe_utf8_encode(uint32_t cp, char *out);

/* GPT-2 pre-tokenizer: the length of the next piece of text[pos..len), as the
 * regex 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * splits it (pos < len). */
size_t bpe_pretok_next(const uint8_t *text, size_t len, size_t pos);

/* Code point classes used by the pre-tokenizer. */
enum { BPE_CLASS_OTHER = 0, BPE_CLASS_LETTER, BPE_CLASS_NUMBER, BPE_CLASS_SPACE };
int bpe_cp_class(uint32_t cp);

/* 64-bit FNV-1a style hash of bytes (for word maps). */
static inline uint64_t bpe_hash_bytes(const uint8_t *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

#endif
