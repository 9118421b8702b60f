/* pretok.c — the GPT-2 pre-tokenizer written out by hand over UTF-8 code
 * points (the split the Hugging Face ByteLevel pre-tokenizer does with
 * use_regex=true), UTF-8 helpers and the GPT-2 byte <-> unicode mapping. */
#include "tokenizer/bpe.h"
#include "tokenizer/unicode_tables.h"

/* ---- GPT-2 bytes_to_unicode --------------------------------------------
 * Printable bytes (33..126, 161..172, 174..255) map to themselves; the other
 * 68 bytes map, in byte order, to 256, 257, ... so every byte is a visible
 * character in tokenizer.json. */
static int byte_is_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t bpe_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++) n += !byte_is_printable(i);
    return 256 + n;
}

int bpe_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable((int)cp) ? (int)cp : -1;
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b)) continue;
        if (256 + n == cp) return b;
        n++;
    }
    return -1;
}

/* ---- UTF-8 ------------------------------------------------------------- */
int bpe_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF)      { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else { *cp = BPE_INVALID_CP; return 1; }
    if ((size_t)len > n) { *cp = BPE_INVALID_CP; return 1; }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) { *cp = BPE_INVALID_CP; return 1; }
        v = (v << 6) | (s[i] & 0x3F);
    }
    /* overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid */
    if (v < min || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) {
        *cp = BPE_INVALID_CP;
        return 1;
    }
    *cp = v;
    return len;
}

int bpe_utf8_encode(uint32_t cp, char *out) {
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- code point classes ------------------------------------------------ */
static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

#define N_RANGES(t) (sizeof(t) / sizeof((t)[0]))

int bpe_cp_class(uint32_t cp) {
    if (cp < 128) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return BPE_CLASS_LETTER;
        if (cp >= '0' && cp <= '9') return BPE_CLASS_NUMBER;
        if (cp == ' ' || (cp >= 9 && cp <= 13)) return BPE_CLASS_SPACE;
        return BPE_CLASS_OTHER;
    }
    if (cp == BPE_INVALID_CP) return BPE_CLASS_OTHER;
    if (in_ranges(UC_LETTER, N_RANGES(UC_LETTER), cp)) return BPE_CLASS_LETTER;
    if (in_ranges(UC_NUMBER, N_RANGES(UC_NUMBER), cp)) return BPE_CLASS_NUMBER;
    if (in_ranges(UC_SPACE, N_RANGES(UC_SPACE), cp)) return BPE_CLASS_SPACE;
    return BPE_CLASS_OTHER;
}

/* ---- the split --------------------------------------------------------- */
static int class_at(const uint8_t *t, size_t len, size_t pos, int *nbytes) {
    uint32_t cp;
    if (t[pos] < 128) { *nbytes = 1; cp = t[pos]; }
    else *nbytes = bpe_utf8_decode(t + pos, len - pos, &cp);
    return bpe_cp_class(cp);
}

/* End of the run of code points of class k starting at pos. */
static size_t run_end(const uint8_t *t, size_t len, size_t pos, int k) {
    while (pos < len) {
        int nb;
        if (class_at(t, len, pos, &nb) != k) break;
        pos += (size_t)nb;
    }
    return pos;
}

size_t bpe_pretok_next(const uint8_t *t, size_t len, size_t pos) {
    /* 's|'t|'re|'ve|'m|'ll|'d  (ASCII, lower case only, tried first) */
    if (t[pos] == '\'' && pos + 1 < len) {
        uint8_t a = t[pos + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if (pos + 2 < len) {
            uint8_t b = t[pos + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
        }
    }
    int n0;
    int k0 = class_at(t, len, pos, &n0);
    /*  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+  with the optional leading space */
    if (t[pos] == ' ' && pos + 1 < len) {
        int n1;
        int k1 = class_at(t, len, pos + 1, &n1);
        if (k1 != BPE_CLASS_SPACE) return run_end(t, len, pos + 1, k1) - pos;
    }
    if (k0 != BPE_CLASS_SPACE) return run_end(t, len, pos, k0) - pos;
    /* \s+(?!\S) | \s+ : a whitespace run; when a non-space follows it, the
     * last whitespace character is left to start the next piece (so " word"
     * keeps its space), unless the run is a single character. */
    size_t end = pos, last = pos;
    while (end < len) {
        int nb;
        if (class_at(t, len, end, &nb) != BPE_CLASS_SPACE) break;
        last = end;
        end += (size_t)nb;
    }
    if (end == len || last == pos) return end - pos;
    return last - pos;
}
