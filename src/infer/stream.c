/* stream.c — incremental text output of a generation: hold back any suffix
 * that could still become a stop string and any incomplete UTF-8 character,
 * emit the rest, and stop (emitting the text before it) when a stop string
 * completes. The pending buffer stays as short as the longest stop string. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"

int ds4_stream_init(ds4_stream *s, const char *const *stops, int n_stop) {
    memset(s, 0, sizeof *s);
    s->stop_index = -1;
    if (n_stop < 0 || (n_stop > 0 && !stops)) {
        ds4_set_error("stream: bad stop string list (%d entries)", n_stop);
        return -1;
    }
    for (int i = 0; i < n_stop; i++) {
        if (!stops[i] || !stops[i][0]) continue;      /* empty: ignored */
        if (s->n_stop == DS4_MAX_STOP) {
            ds4_set_error("stream: at most %d stop strings are supported", DS4_MAX_STOP);
            ds4_stream_free(s);
            return -1;
        }
        size_t L = strlen(stops[i]);
        char *c = ds4_malloc(L + 1);
        if (!c) { ds4_stream_free(s); return -1; }
        memcpy(c, stops[i], L + 1);
        s->stop[s->n_stop] = c;
        s->stop_len[s->n_stop] = L;
        s->n_stop++;
    }
    return 0;
}

void ds4_stream_free(ds4_stream *s) {
    for (int i = 0; i < s->n_stop; i++) free(s->stop[i]);
    free(s->buf);
    memset(s, 0, sizeof *s);
    s->stop_index = -1;
}

/* Bytes a UTF-8 sequence has, from its lead byte; 0 for a continuation or
 * an invalid lead. */
static int utf8_seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

size_t ds4_utf8_incomplete_tail(const char *p, size_t n) {
    const unsigned char *u = (const unsigned char *)p;
    /* look back at most 3 bytes for the lead byte of the last character */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = u[n - back];
        if ((c & 0xc0) == 0x80) continue;            /* continuation: keep looking */
        int need = utf8_seq_len(c);
        if (need == 0) return 0;                      /* invalid lead: nothing to wait for */
        return (size_t)need > back ? back : 0;        /* incomplete iff more bytes are due */
    }
    return 0;   /* only continuation bytes (or nothing): cannot complete, emit */
}

/* Drop the bytes emitted by the previous call. */
static void stream_consume(ds4_stream *s) {
    if (s->consumed) {
        memmove(s->buf, s->buf + s->consumed, s->len - s->consumed);
        s->len -= s->consumed;
        s->consumed = 0;
    }
}

int ds4_stream_push(ds4_stream *s, const char *bytes, size_t n,
                    const char **out, size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (s->stopped) return 1;
    stream_consume(s);
    if (s->len + n + 1 > s->cap) {
        size_t cap = DS4_MAX(s->len + n + 1, 2 * s->cap);
        if (cap < 64) cap = 64;
        char *b = realloc(s->buf, cap);
        if (!b) { ds4_set_error("stream: out of memory (%zu bytes)", cap); return -1; }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, bytes, n);
    s->len += n;
    s->buf[s->len] = 0;

    /* The stop string that completes first (smallest end; on a tie the one
     * that starts first), as if the bytes had come one at a time, so the
     * result does not depend on how the text was split into tokens. Every
     * occurrence lies inside the pending buffer: its beginning was held back
     * as a possible prefix. */
    size_t first = s->len, first_end = SIZE_MAX;
    for (int i = 0; i < s->n_stop; i++) {
        size_t L = s->stop_len[i];
        for (size_t j = 0; j + L <= s->len && j + L <= first_end; j++)
            if (!memcmp(s->buf + j, s->stop[i], L)) {
                if (j + L < first_end || j < first) {
                    first = j;
                    first_end = j + L;
                    s->stop_index = i;
                }
                break;
            }
    }
    if (first_end != SIZE_MAX) {
        s->stopped = 1;
        *out = s->buf;
        *out_len = first;
        s->consumed = first;
        return 1;
    }

    /* Hold back the longest suffix that is a proper prefix of a stop string. */
    size_t hold = 0;
    for (int i = 0; i < s->n_stop; i++) {
        size_t L = DS4_MIN(s->len, s->stop_len[i] - 1);
        for (size_t h = L; h > hold; h--)
            if (!memcmp(s->buf + s->len - h, s->stop[i], h)) { hold = h; break; }
    }
    size_t emit = s->len - hold;
    emit -= ds4_utf8_incomplete_tail(s->buf, emit);   /* and half a character */
    *out = s->buf;
    *out_len = emit;
    s->consumed = emit;
    return 0;
}

int ds4_stream_flush(ds4_stream *s, const char **out, size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (s->stopped) return 1;
    stream_consume(s);
    *out = s->buf ? s->buf : "";
    *out_len = s->len;
    s->consumed = s->len;
    return 0;
}
