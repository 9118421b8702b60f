/* server.h — the OpenAI-compatible HTTP server (libmicrohttpd): options,
 * start/drain/stop, and a small blocking HTTP client for loopback use by the
 * serving benchmark and tests. Endpoints, chat template and metrics are
 * described in README ("Serving"). */
#ifndef DS4_SERVER_H
#define DS4_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include "ds4.h"
#include "model/model.h"

typedef struct ds4_server ds4_server;

/* Called with one log line (no trailing newline) from any server thread. */
typedef void (*ds4_server_log_fn)(const char *line, void *user);

/* POST /v1/videos is answered by a function the caller provides (the CLI
 * wires the world model), so the server does not depend on it. Called from
 * an HTTP thread, one request at a time; returns 0 with out filled (malloc'd
 * buffers, freed by the server) or -1 after ds4_set_error. */
typedef struct ds4_server_video_req {
    const char *prompt;
    double   seconds;         /* (0, 60] */
    int      fps;             /* output frame rate, 0 = the model's */
    int      scale;           /* GIF pixel upscale, 1..8 */
    float    temperature, top_p;
    int      top_k;
    float    guidance;      /* classifier-free guidance scale (< 0: the model's default) */
    uint64_t seed;
} ds4_server_video_req;

typedef struct ds4_server_video_out {
    unsigned char *gif;       /* [gif_len] animated GIF */
    size_t   gif_len;
    char    *trajectories;    /* JSON text: balls per frame, bounces, fitted g */
    int      n_frames, fps;
} ds4_server_video_out;

typedef int (*ds4_server_video_fn)(void *user, const ds4_server_video_req *r, ds4_server_video_out *out);

typedef struct ds4_server_opts {
    const char *host;         /* numeric IPv4/IPv6 address or "localhost" (default "127.0.0.1") */
    int    port;              /* 0 = any free port, see ds4_server_port (default 8080) */
    const char *api_key;      /* NULL or "": no authentication */
    const char *model_name;   /* id in /v1/models (default "ds4") */
    int    slots;             /* sequences decoded together (KV-cache slots, default 8) */
    int    queue;             /* requests waiting for a slot before 429 (default 64) */
    int    ctx;               /* tokens per slot, 0 = max_position_embeddings */
    int    batch_tokens;      /* tokens per engine step, 0 = no bound (default 256; must
                               * exceed slots: decode tokens go first, prompts fill the rest) */
    size_t max_body;          /* request body limit in bytes before 413 (default 1 MiB) */
    int    max_connections;   /* open connections (default 512) */
    int    throttle_ms;       /* sleep after each engine step: a testing aid (default 0) */
    ds4_server_video_fn video;   /* NULL: /v1/videos answers 400 */
    void  *video_user;
    ds4_server_log_fn log;    /* NULL: silent */
    void  *log_user;
} ds4_server_opts;

void ds4_server_opts_default(ds4_server_opts *o);

/* Start the engine thread and the HTTP listener. The model and tokenizer
 * must outlive the server. NULL on error (bad option, port taken, ...). */
ds4_server *ds4_server_start(const ds4_model *m, const ds4_tokenizer *tok,
                             const ds4_server_opts *o);
int  ds4_server_port(const ds4_server *s);          /* the bound port */
int  ds4_server_slots(const ds4_server *s);
int  ds4_server_capacity(const ds4_server *s);      /* tokens per slot */
/* Stop taking generation requests (they get 503); running ones go on. */
void ds4_server_drain(ds4_server *s);
/* Requests queued or running. */
int  ds4_server_busy(ds4_server *s);
/* Cancel whatever still runs (clients get a 503 error, streams an error
 * event and [DONE]), stop the threads, close the listener, free. */
void ds4_server_stop(ds4_server *s);

/* ---- client (client.c) ----------------------------------------------------
 * One request per connection (HTTP/1.1, "Connection: close"). Body bytes of
 * the response go to on_body as they arrive (chunked transfer decoded); a
 * nonzero return from on_body stops reading and closes the connection (not an
 * error). extra_headers: NULL or complete "Name: value\r\n" lines. Returns 0
 * when a response status was read (*status set), -1 on a connection,
 * timeout or protocol error. */
typedef int (*ds4_http_body_fn)(const char *data, size_t len, void *user);
int ds4_http_request(const char *host, int port, const char *method, const char *path,
                     const char *extra_headers, const char *body, size_t body_len,
                     double timeout_s, ds4_http_body_fn on_body, void *user, int *status);

#endif
