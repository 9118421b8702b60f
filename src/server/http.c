/* http.c — the HTTP side of the server on libmicrohttpd (one thread per
 * connection): routing, API-key check, body limit, JSON responses, the
 * server-sent-events stream of a generation, disconnect detection, and
 * server start/drain/stop. Generation itself runs on the engine thread
 * (sched.c); a connection thread only waits on its job. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include "server/internal.h"

#define WAIT_MS 50          /* how often a waiting thread looks at its socket */

void ds4_server_opts_default(ds4_server_opts *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model_name = "ds4";
    o->slots = 8;
    o->queue = 64;
    o->batch_tokens = 256;
    o->max_body = (size_t)1 << 20;
    o->max_connections = 512;
}

static void logf_(ds4_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(ds4_server *s, const char *fmt, ...) {
    if (!s->o.log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->o.log(line, s->o.log_user);
}

/* ---- per-request state ------------------------------------------------------ */
typedef struct conn_ctx {
    int    ep;
    char   method[8], url[120];
    char  *body;                 /* [len] request body */
    size_t len, cap;
    int    too_big;
    int    status;               /* what was answered */
    double t0;
    srv_job *job;                /* a generation request: one reference */
} conn_ctx;

static int route(const char *url) {
    static const struct { const char *path; int ep; } R[] = {
        {"/health", EP_HEALTH}, {"/v1/models", EP_MODELS}, {"/v1/completions", EP_COMPLETIONS},
        {"/v1/chat/completions", EP_CHAT}, {"/tokenize", EP_TOKENIZE}, {"/detokenize", EP_DETOKENIZE},
        {"/metrics", EP_METRICS}, {"/v1/videos", EP_VIDEOS},
    };
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++)
        if (!strcmp(url, R[i].path)) return R[i].ep;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) return EP_MODELS;
    return EP_OTHER;
}

static int ep_is_post(int ep) {
    return ep == EP_COMPLETIONS || ep == EP_CHAT || ep == EP_TOKENIZE || ep == EP_DETOKENIZE ||
           ep == EP_VIDEOS;
}

static enum MHD_Result respond_n(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc, int status,
                                 const char *ctype, char *body, size_t len);

static enum MHD_Result respond(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc, int status,
                               const char *ctype, char *body) {
    return respond_n(s, c, cc, status, ctype, body, body ? strlen(body) : 0);
}

/* Queue body [len] (malloc'd, taken) with a status; NULL body: a 500. */
static enum MHD_Result respond_n(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc, int status,
                                 const char *ctype, char *body, size_t len) {
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
        ctype = "application/json";
        len = strlen(body);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(body); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (status == 405) MHD_add_response_header(r, "Allow", ep_is_post(cc->ep) ? "POST" : "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    cc->status = status;
    pthread_mutex_lock(&s->mu);
    srv_metrics_request(&s->met, cc->ep, status);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static enum MHD_Result respond_json(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc,
                                    int status, char *body) {
    return respond(s, c, cc, status, "application/json", body);
}

static enum MHD_Result respond_error(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc,
                                     const api_error *e) {
    return respond_json(s, c, cc, e->status ? e->status : 500, api_error_json(e));
}

/* The peer closed its side (or the socket broke). */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static int auth_ok(ds4_server *s, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned char diff = a != b;
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(h[i < a ? i : 0] ^ s->api_key[i]);   /* constant time */
    return diff == 0;
}

/* ---- streaming (server-sent events) --------------------------------------- */
typedef struct stream_ctx {
    ds4_server *s;
    srv_job *job;                /* one reference */
    struct MHD_Connection *conn;
    size_t sent;                 /* bytes of job->text already sent */
    srv_buf out;                 /* formatted events not yet handed to MHD */
    size_t out_off;
    int    phase;                /* 0 start, 1 running, 2 all events formatted */
} stream_ctx;

static void sse_event(srv_buf *b, char *json) {
    if (!json) { b->oom = 1; return; }
    srv_buf_add(b, "data: ", 6);
    srv_buf_add(b, json, strlen(json));
    srv_buf_add(b, "\n\n", 2);
    free(json);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *x = cls;
    srv_job *j = x->job;
    ds4_server *s = x->s;
    for (;;) {
        if (x->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (x->out_off < x->out.len) {
            size_t n = DS4_MIN(max, x->out.len - x->out_off);
            memcpy(buf, x->out.p + x->out_off, n);
            x->out_off += n;
            return (ssize_t)n;
        }
        x->out.len = x->out_off = 0;
        if (x->phase == 2) return MHD_CONTENT_READER_END_OF_STREAM;
        if (x->phase == 0) {
            if (j->kind == API_CHAT) sse_event(&x->out, api_chunk_json(s, j, CHUNK_ROLE, "", 0));
            x->phase = 1;
            continue;
        }
        pthread_mutex_lock(&s->mu);
        while (j->text_len == x->sent && j->state != JOB_DONE) {
            srv_wait_ms(j, WAIT_MS);
            if (j->text_len == x->sent && j->state != JOB_DONE && client_gone(x->conn)) {
                srv_cancel_locked(j);
                pthread_mutex_unlock(&s->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        }
        size_t n = j->text_len - x->sent;
        char *piece = n ? malloc(n) : NULL;
        if (n && piece) memcpy(piece, j->text + x->sent, n);
        x->sent = j->text_len;
        int done = j->state == JOB_DONE;
        api_error err = j->err;
        pthread_mutex_unlock(&s->mu);
        if (n && !piece) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (n) sse_event(&x->out, api_chunk_json(s, j, CHUNK_TEXT, piece, n));
        free(piece);
        if (done) {
            if (err.status) {
                if (err.status == 499) return MHD_CONTENT_READER_END_WITH_ERROR;
                sse_event(&x->out, api_error_json(&err));
            } else {
                sse_event(&x->out, api_chunk_json(s, j, CHUNK_FINISH, "", 0));
                if (j->include_usage) sse_event(&x->out, api_chunk_json(s, j, CHUNK_USAGE, "", 0));
            }
            srv_buf_add(&x->out, "data: [DONE]\n\n", 14);
            x->phase = 2;
        }
    }
}

static void stream_free(void *cls) {
    stream_ctx *x = cls;
    pthread_mutex_lock(&x->s->mu);
    srv_cancel_locked(x->job);                 /* no-op when it is done */
    srv_job_unref_locked(x->job);
    pthread_mutex_unlock(&x->s->mu);
    free(x->out.p);
    free(x);
}

/* ---- generation ---------------------------------------------------------- */
static enum MHD_Result handle_generation(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc) {
    api_error e = {0};
    srv_job *j = srv_job_new(s, cc->ep == EP_CHAT ? API_CHAT : API_COMPLETION);
    if (!j) {
        api_err(&e, 500, "server_error", NULL, NULL, "out of memory");
        return respond_error(s, c, cc, &e);
    }
    cc->job = j;
    pthread_mutex_lock(&s->mu);
    s->http_jobs++;
    pthread_mutex_unlock(&s->mu);
    if (api_parse_generation(s, j, cc->body, cc->len, &e) || srv_submit(s, j, &e))
        return respond_error(s, c, cc, &e);
    if (j->stream) {
        stream_ctx *x = calloc(1, sizeof *x);
        struct MHD_Response *r = x ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, x, stream_free) : NULL;
        if (!r) {
            free(x);
            pthread_mutex_lock(&s->mu);
            srv_cancel_locked(j);
            pthread_mutex_unlock(&s->mu);
            api_err(&e, 500, "server_error", NULL, NULL, "out of memory");
            return respond_error(s, c, cc, &e);
        }
        x->s = s;
        x->conn = c;
        x->job = j;
        pthread_mutex_lock(&s->mu);
        j->refs++;
        pthread_mutex_unlock(&s->mu);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        cc->status = 200;
        pthread_mutex_lock(&s->mu);
        srv_metrics_request(&s->met, cc->ep, 200);
        pthread_mutex_unlock(&s->mu);
        return ret;
    }
    /* not streamed: wait for the whole text, watching the socket */
    pthread_mutex_lock(&s->mu);
    while (j->state != JOB_DONE) {
        srv_wait_ms(j, WAIT_MS);
        if (j->state != JOB_DONE && !j->cancelled && client_gone(c)) srv_cancel_locked(j);
    }
    e = j->err;
    char *text = NULL;
    size_t len = j->text_len;
    if (!e.status && len && !(text = malloc(len)))
        api_err(&e, 500, "server_error", NULL, NULL, "out of memory");
    if (text) memcpy(text, j->text, len);
    pthread_mutex_unlock(&s->mu);
    if (e.status == 499) {
        pthread_mutex_lock(&s->mu);
        srv_metrics_request(&s->met, cc->ep, 499);
        pthread_mutex_unlock(&s->mu);
        cc->status = 499;
        return MHD_NO;                               /* nobody to answer */
    }
    if (e.status) return respond_error(s, c, cc, &e);
    char *body = api_response_json(s, j, text, len);
    free(text);
    return respond_json(s, c, cc, 200, body);
}

/* ---- routing --------------------------------------------------------------- */
static enum MHD_Result dispatch(ds4_server *s, struct MHD_Connection *c, conn_ctx *cc,
                                const char *url, const char *method) {
    api_error e = {0};
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (cc->ep == EP_OTHER) {
        api_err(&e, 404, "invalid_request_error", "unknown_url", NULL,
                "Unknown request URL: %.8s %.200s", method, url);
        return respond_error(s, c, cc, &e);
    }
    if (ep_is_post(cc->ep) ? !post : !get) {
        api_err(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                "%.8s is not allowed on %.200s (use %s)", method, url, ep_is_post(cc->ep) ? "POST" : "GET");
        return respond_error(s, c, cc, &e);
    }
    char *out = NULL;
    switch (cc->ep) {
    case EP_HEALTH: {
        pthread_mutex_lock(&s->mu);
        int draining = s->draining, busy = s->n_active, queued = s->q_len;
        pthread_mutex_unlock(&s->mu);
        char b[160];
        snprintf(b, sizeof b, "{\"status\":\"%s\",\"slots_total\":%d,\"slots_busy\":%d,\"queue\":%d}",
                 draining ? "draining" : "ok", s->eng->n_slots, busy, queued);
        return respond_json(s, c, cc, draining ? 503 : 200, strdup(b));
    }
    case EP_MODELS:
        if (url[10] == '/' && strcmp(url + 11, s->model_name) != 0) {
            api_err(&e, 404, "invalid_request_error", "model_not_found", "model",
                    "The model '%.200s' does not exist (this server serves '%.200s')", url + 11, s->model_name);
            return respond_error(s, c, cc, &e);
        }
        return respond_json(s, c, cc, 200, api_models_json(s, url[10] == '/' ? url + 11 : NULL));
    case EP_METRICS:
        return respond(s, c, cc, 200, "text/plain; version=0.0.4; charset=utf-8", srv_metrics_render(s));
    case EP_COMPLETIONS:
    case EP_CHAT:
        return handle_generation(s, c, cc);
    case EP_TOKENIZE:
        if (api_tokenize(s, cc->body, cc->len, &out, &e)) return respond_error(s, c, cc, &e);
        return respond_json(s, c, cc, 200, out);
    case EP_DETOKENIZE:
        if (api_detokenize(s, cc->body, cc->len, &out, &e)) return respond_error(s, c, cc, &e);
        return respond_json(s, c, cc, 200, out);
    case EP_VIDEOS: {
        size_t n = 0;
        const char *ctype = "application/json";
        if (api_videos(s, cc->body, cc->len, &out, &n, &ctype, &e)) return respond_error(s, c, cc, &e);
        return respond_n(s, c, cc, 200, ctype, out, n);
    }
    }
    return MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    ds4_server *s = cls;
    conn_ctx *cc = *con_cls;
    api_error e = {0};
    if (!cc) {                                           /* headers are in, body not yet */
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        *con_cls = cc;
        cc->ep = route(url);
        cc->t0 = srv_now();
        snprintf(cc->method, sizeof cc->method, "%s", method);
        snprintf(cc->url, sizeof cc->url, "%s", url);
        if (s->api_key && cc->ep != EP_HEALTH && !auth_ok(s, c)) {
            api_err(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                    "missing or incorrect API key: send the header 'Authorization: Bearer <key>'");
            return respond_error(s, c, cc, &e);
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > s->o.max_body) cc->too_big = 1;
        }
        if (cc->too_big) goto too_big;
        return MHD_YES;
    }
    if (cc->status) { *upload_size = 0; return MHD_YES; }   /* already answered: drop the body */
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (cc->too_big || cc->len + n > s->o.max_body) { cc->too_big = 1; return MHD_YES; }
        if (cc->len + n + 1 > cc->cap) {
            size_t cap = cc->cap ? cc->cap : 1024;
            while (cap < cc->len + n + 1) cap *= 2;
            char *p = realloc(cc->body, cap);
            if (!p) { cc->too_big = 1; return MHD_YES; }
            cc->body = p;
            cc->cap = cap;
        }
        memcpy(cc->body + cc->len, upload, n);
        cc->len += n;
        cc->body[cc->len] = 0;
        return MHD_YES;
    }
    if (cc->too_big) goto too_big;
    return dispatch(s, c, cc, url, method);
too_big:
    api_err(&e, 413, "invalid_request_error", "request_too_large", NULL,
            "the request body is larger than the limit of %zu bytes", s->o.max_body);
    return respond_error(s, c, cc, &e);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    ds4_server *s = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    *con_cls = NULL;
    int prompt = 0, gen = 0;
    const char *finish = "";
    if (cc->job) {
        pthread_mutex_lock(&s->mu);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) srv_cancel_locked(cc->job);
        if (cc->job->state == JOB_DONE && !cc->job->err.status) {
            prompt = cc->job->prompt_tokens;
            gen = cc->job->completion_tokens;
            finish = ds4_finish_name(cc->job->finish);
        }
        srv_job_unref_locked(cc->job);
        s->http_jobs--;
        pthread_mutex_unlock(&s->mu);
    }
    logf_(s, "%s %s %d %.3fs%s", cc->method, cc->url, cc->status, srv_now() - cc->t0,
          toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed)");
    if (gen || prompt) logf_(s, "  prompt %d tokens, generated %d tokens, finish %s", prompt, gen, finish);
    free(cc->body);
    free(cc);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    ds4_server *s = cls;
    if (!s->o.log) return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    char full[600];
    snprintf(full, sizeof full, "libmicrohttpd: %s", line);
    s->o.log(full, s->o.log_user);
}

/* ---- life cycle -------------------------------------------------------------- */
static char *dup_or_null(const char *p) { return p && p[0] ? strdup(p) : NULL; }

ds4_server *ds4_server_start(const ds4_model *m, const ds4_tokenizer *tok, const ds4_server_opts *o) {
    if (!m || !tok) { ds4_set_error("server: a model and its tokenizer are required"); return NULL; }
    if (o->slots < 1 || o->slots > 4096) { ds4_set_error("server: slots must be in [1, 4096], got %d", o->slots); return NULL; }
    if (o->queue < 0) { ds4_set_error("server: queue must be >= 0, got %d", o->queue); return NULL; }
    if (o->port < 0 || o->port > 65535) { ds4_set_error("server: port must be in [0, 65535], got %d", o->port); return NULL; }
    if (o->max_body < 16) { ds4_set_error("server: max_body must be at least 16 bytes, got %zu", o->max_body); return NULL; }
    if (o->batch_tokens < 0 || o->throttle_ms < 0 || o->ctx < 0) {
        ds4_set_error("server: batch_tokens, throttle_ms and ctx must be >= 0");
        return NULL;
    }
    if (o->batch_tokens > 0 && o->batch_tokens <= o->slots) {
        ds4_set_error("server: batch_tokens (%d) must be 0 or more than slots (%d): every running "
                      "sequence puts one token in each step, prompts fill the rest", o->batch_tokens, o->slots);
        return NULL;
    }
    if (o->max_connections < 1) { ds4_set_error("server: max_connections must be >= 1"); return NULL; }
    const char *host = o->host && o->host[0] ? o->host : "127.0.0.1";
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    int v6 = 0;
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)o->port);
    } else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        v6 = 1;
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)o->port);
    } else {
        ds4_set_error("server: host '%s' is not a numeric IPv4/IPv6 address or 'localhost'", host);
        return NULL;
    }
    ds4_server *s = calloc(1, sizeof *s);
    if (!s) { ds4_set_error("server: out of memory"); return NULL; }
    s->o = *o;
    s->m = m;
    s->tok = tok;
    s->host = strdup(host);
    s->api_key = dup_or_null(o->api_key);
    s->model_name = strdup(o->model_name && o->model_name[0] ? o->model_name : "ds4");
    s->created = (long)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->video_mu, NULL);
    pthread_cond_init(&s->engine_cv, NULL);
    srv_metrics_init(&s->met);
    if (!s->host || !s->model_name || (o->api_key && o->api_key[0] && !s->api_key)) {
        ds4_set_error("server: out of memory");
        goto fail;
    }
    s->eng = ds4_engine_create(m, tok, o->slots, o->ctx);
    if (!s->eng) { ds4_error_prefix("server: "); goto fail; }
    s->eng->max_batch_tokens = o->batch_tokens;
    s->active = calloc((size_t)o->slots, sizeof *s->active);
    s->seqs = calloc((size_t)o->slots, sizeof *s->seqs);
    s->before = calloc((size_t)o->slots, sizeof *s->before);
    if (!s->active || !s->seqs || !s->before) { ds4_set_error("server: out of memory"); goto fail; }
    const ds4_kv_cache *kv = s->eng->kv;
    s->met.kv_total = (size_t)kv->n_layers * kv->n_seq * kv->capacity * kv->kv_dim * 2 * sizeof(float);
    if (pthread_create(&s->engine_thread, NULL, srv_engine_main, s) != 0) {
        ds4_set_error("server: cannot start the engine thread");
        goto fail;
    }
    s->engine_started = 1;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    errno = 0;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                            MHD_OPTION_SOCK_ADDR, v6 ? (struct sockaddr *)&a6 : (struct sockaddr *)&a4,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20,
                            MHD_OPTION_END);
    if (!s->d) {
        ds4_set_error("server: cannot listen on %s port %d%s%s", host, o->port,
                      errno ? ": " : " (port in use?)", errno ? strerror(errno) : "");
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    return s;
fail:
    ds4_server_stop(s);
    return NULL;
}

int ds4_server_port(const ds4_server *s) { return s->port; }
int ds4_server_slots(const ds4_server *s) { return s->eng->n_slots; }
int ds4_server_capacity(const ds4_server *s) { return s->eng->capacity; }

void ds4_server_drain(ds4_server *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
}

int ds4_server_busy(ds4_server *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->q_len + s->n_active;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void ds4_server_stop(ds4_server *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->draining = s->stopping = 1;
    pthread_cond_signal(&s->engine_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->engine_started) pthread_join(s->engine_thread, NULL);   /* every job is done now */
    /* let the last responses (final events, errors) reach their clients */
    for (int i = 0; i < 300; i++) {
        pthread_mutex_lock(&s->mu);
        int left = s->http_jobs;
        pthread_mutex_unlock(&s->mu);
        if (left == 0) break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (s->d) MHD_stop_daemon(s->d);                               /* joins connection threads */
    ds4_engine_free(s->eng);
    free(s->active); free(s->seqs); free(s->before);
    pthread_cond_destroy(&s->engine_cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->video_mu);
    free(s->host); free(s->api_key); free(s->model_name);
    free(s);
}
