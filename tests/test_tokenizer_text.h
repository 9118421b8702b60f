/* test_tokenizer_text.h — deterministic English-like text for the tokenizer
 * tests (the project ships no third-party text): words from syllables,
 * punctuation, numbers, contractions, whitespace runs and some non-ASCII. */
#ifndef TEST_TOKENIZER_TEXT_H
#define TEST_TOKENIZER_TEXT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/util.h"

static const char *const TT_SYLLABLES[] = {
    "th", "e", "an", "d", "in", "g", "re", "st", "o", "on", "er", "a", "ly", "ing",
    "wa", "ter", "ball", "red", "bl", "ue", "ce", "fa", "ll", "s", "ou", "nd", "ti",
};
static const char *const TT_EXTRAS[] = {
    ", ", ". ", "! ", "? ", "; ", " - ", "'s ", "'t ", "'re ", "'ll ", " (", ") ", "\n", "\n\n",
    "  ", "\t", " 42 ", " 1999", " 3.14 ", " café ", " naïve ", " 日本語 ", " Привет ", " — ",
    " ½ ", " €5 ", "\u00a0", " \"quoted\" ", "...", " #tag ", " $100 ",
};

/* Fill a malloc'd buffer with about n bytes of text (NUL-terminated). */
static inline char *tt_text(uint64_t seed, size_t n, size_t *len) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    char *s = malloc(n + 64);
    size_t k = 0;
    const size_t n_syl = sizeof TT_SYLLABLES / sizeof TT_SYLLABLES[0];
    const size_t n_ext = sizeof TT_EXTRAS / sizeof TT_EXTRAS[0];
    while (k < n) {
        int nsyl = 1 + (int)(ds4_rng_u64(&r) % 3);
        if (ds4_rng_u64(&r) % 9 == 0 && k + 1 < n) s[k++] = (char)('A' + ds4_rng_u64(&r) % 26);
        for (int i = 0; i < nsyl && k + 8 < n + 48; i++) {
            const char *p = TT_SYLLABLES[ds4_rng_u64(&r) % n_syl];
            size_t l = strlen(p);
            memcpy(s + k, p, l);
            k += l;
        }
        const char *sep = ds4_rng_u64(&r) % 4 ? " " : TT_EXTRAS[ds4_rng_u64(&r) % n_ext];
        size_t l = strlen(sep);
        if (k + l >= n + 60) break;
        memcpy(s + k, sep, l);
        k += l;
    }
    s[k] = 0;
    *len = k;
    return s;
}

/* A per-process temporary path "/tmp/ds4_tok_<pid>_<name>". */
static inline const char *tt_tmp(const char *name) {
    static char buf[4][256];
    static int which;
    char *p = buf[which++ & 3];
    snprintf(p, 256, "/tmp/ds4_tok_%d_%s", (int)getpid(), name);
    return p;
}

#endif
