/* client.c — a small blocking HTTP/1.1 client for loopback use (the serving
 * benchmark and tests): one request per connection, response body handed
 * over as it arrives, chunked transfer encoding decoded. Not a general
 * client: no TLS, no redirects, numeric hosts only. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "server/server.h"
#include "util/util.h"

typedef struct conn {
    int fd;
    double deadline;
    char buf[16384];             /* received, not yet consumed: [off, len) */
    size_t off, len;
} conn;

/* Wait for fd to be ready until the deadline; -1 with an error on timeout. */
static int wait_fd(conn *c, short ev) {
    for (;;) {
        double left = c->deadline - ds4_time_s();
        if (left <= 0) { ds4_set_error("http: timed out"); return -1; }
        struct pollfd p = {.fd = c->fd, .events = ev};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) { ds4_set_error("http: poll: %s", strerror(errno)); return -1; }
    }
}

static int send_all(conn *c, const char *p, size_t n) {
    while (n) {
        if (wait_fd(c, POLLOUT)) return -1;
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            ds4_set_error("http: send: %s", strerror(errno));
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read more bytes into the buffer (compacting it). 0 on EOF, -1 on error. */
static ssize_t fill(conn *c) {
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == sizeof c->buf) { ds4_set_error("http: a header line is too long"); return -1; }
    for (;;) {
        if (wait_fd(c, POLLIN)) return -1;
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k < 0) { ds4_set_error("http: recv: %s", strerror(errno)); return -1; }
        c->len += (size_t)k;
        return k;
    }
}

/* One CRLF-terminated line (without CRLF) into out[cap]. */
static int read_line(conn *c, char *out, size_t cap) {
    for (;;) {
        char *nl = memchr(c->buf + c->off, '\n', c->len - c->off);
        if (nl) {
            size_t n = (size_t)(nl - (c->buf + c->off));
            size_t m = n && nl[-1] == '\r' ? n - 1 : n;
            if (m >= cap) { ds4_set_error("http: a header line is too long"); return -1; }
            memcpy(out, c->buf + c->off, m);
            out[m] = 0;
            c->off += n + 1;
            return 0;
        }
        ssize_t k = fill(c);
        if (k <= 0) { if (k == 0) ds4_set_error("http: connection closed in the headers"); return -1; }
    }
}

/* Hand up to want bytes (or all until EOF when want < 0) to on_body.
 * Returns 1 if the callback asked to stop, 0 done, -1 error. */
static int pass_body(conn *c, long long want, ds4_http_body_fn on_body, void *user) {
    for (;;) {
        size_t have = c->len - c->off;
        if (want >= 0 && (long long)have > want) have = (size_t)want;
        if (have) {
            int stop = on_body ? on_body(c->buf + c->off, have, user) : 0;
            c->off += have;
            if (want >= 0) want -= (long long)have;
            if (stop) return 1;
        }
        if (want == 0) return 0;
        ssize_t k = fill(c);
        if (k < 0) return -1;
        if (k == 0) {
            if (want < 0) return 0;
            ds4_set_error("http: connection closed inside the body");
            return -1;
        }
    }
}

int ds4_http_request(const char *host, int port, const char *method, const char *path,
                     const char *extra_headers, const char *body, size_t body_len,
                     double timeout_s, ds4_http_body_fn on_body, void *user, int *status) {
    *status = 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        ds4_set_error("http: host '%s' is not a numeric IPv4 address", host);
        return -1;
    }
    conn *c = calloc(1, sizeof *c);
    if (!c) { ds4_set_error("http: out of memory"); return -1; }
    c->deadline = ds4_time_s() + timeout_s;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = -1;
    if (c->fd < 0) { ds4_set_error("http: socket: %s", strerror(errno)); goto out; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno != EINPROGRESS) { ds4_set_error("http: connect to %s:%d: %s", host, port, strerror(errno)); goto out; }
        if (wait_fd(c, POLLOUT)) goto out;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { ds4_set_error("http: connect to %s:%d: %s", host, port, strerror(err)); goto out; }
    }
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, host, port,
                      body ? "Content-Type: application/json\r\n" : "",
                      extra_headers ? extra_headers : "", body ? body_len : 0);
    if (hn < 0 || (size_t)hn >= sizeof head) { ds4_set_error("http: request headers too long"); goto out; }
    if (send_all(c, head, (size_t)hn) || (body && send_all(c, body, body_len))) goto out;

    char line[4096];
    if (read_line(c, line, sizeof line)) goto out;
    int st = 0;
    if (sscanf(line, "HTTP/%*d.%*d %d", &st) != 1 || st < 100 || st > 999) {
        ds4_set_error("http: bad status line '%.80s'", line);
        goto out;
    }
    long long clen = -1;
    int chunked = 0;
    for (;;) {
        if (read_line(c, line, sizeof line)) goto out;
        if (!line[0]) break;
        if (!strncasecmp(line, "Content-Length:", 15)) clen = strtoll(line + 15, NULL, 10);
        if (!strncasecmp(line, "Transfer-Encoding:", 18) && strstr(line + 18, "chunked")) chunked = 1;
    }
    *status = st;
    if (!strcmp(method, "HEAD") || st == 204 || st == 304) { rc = 0; goto out; }
    if (!chunked) {
        rc = pass_body(c, clen, on_body, user) < 0 ? -1 : 0;
        goto out;
    }
    for (;;) {
        if (read_line(c, line, sizeof line)) goto out;
        char *end;
        long long n = strtoll(line, &end, 16);
        if (end == line || n < 0) { ds4_set_error("http: bad chunk size '%.40s'", line); goto out; }
        if (n == 0) { rc = 0; break; }                   /* trailers are not read */
        int r = pass_body(c, n, on_body, user);
        if (r < 0) goto out;
        if (r == 1) { rc = 0; break; }
        if (read_line(c, line, sizeof line)) goto out;   /* CRLF after the chunk */
    }
out:
    if (c->fd >= 0) close(c->fd);
    free(c);
    return rc;
}
