/* internal.h — what the server's files share: the server object, a job (one
 * generation request, handed from an HTTP thread to the engine thread and
 * back), API parsing/response helpers, metrics. Not a public API. */
#ifndef DS4_SERVER_INTERNAL_H
#define DS4_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "server/server.h"
#include "infer/infer.h"

/* ---- growable string ------------------------------------------------------ */
typedef struct srv_buf { char *p; size_t len, cap; int oom; } srv_buf;
void srv_buf_add(srv_buf *b, const char *s, size_t n);
void srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copy of [s, s+n) with every invalid UTF-8 sequence replaced by U+FFFD, so
 * that it can go into JSON. Malloc'd, NUL-terminated; NULL on OOM. */
char *srv_utf8_clean(const char *s, size_t n);

/* ---- errors in OpenAI form ------------------------------------------------
 * {"error": {"message", "type", "param", "code"}} */
typedef struct api_error {
    int  status;              /* HTTP status */
    const char *type;         /* "invalid_request_error", ... */
    const char *code;         /* NULL or "model_not_found", ... */
    char param[64];           /* "" = null */
    char msg[512];
} api_error;
void api_err(api_error *e, int status, const char *type, const char *code,
             const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
char *api_error_json(const api_error *e);      /* malloc'd */

/* ---- jobs ----------------------------------------------------------------- */
enum { API_COMPLETION = 0, API_CHAT = 1 };
enum { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE };

typedef struct srv_job {
    ds4_server *srv;
    struct srv_job *next;            /* queue link */
    /* the request, fixed before the job is queued */
    int    kind;                     /* API_* */
    int   *prompt;                   /* [n_prompt] ids, incl. <|bos|> */
    int    n_prompt;
    ds4_gen_params gp;               /* gp.stop[] point into stops[] */
    char  *stops[DS4_MAX_STOP];
    int    stream, include_usage;
    char   id[48];
    long   created;                  /* unix seconds */
    double t_arrival;
    /* shared with the engine thread, under srv->mu */
    int    state;                    /* JOB_* */
    int    cancelled;                /* the client went away or the server stops */
    int    refs;                     /* HTTP side + engine side */
    char  *text;                     /* [text_len] generated text so far */
    size_t text_len, text_cap;
    int    finish;                   /* DS4_FINISH_* once done */
    int    prompt_tokens, completion_tokens;
    api_error err;                   /* err.status != 0: failed */
    pthread_cond_t cv;               /* signalled on new text and when done */
    /* engine thread only */
    ds4_seq seq;
    int    seq_live;
    double t_last_token;
} srv_job;

/* ---- metrics (metrics.c), all under srv->mu ------------------------------- */
enum { EP_HEALTH, EP_MODELS, EP_COMPLETIONS, EP_CHAT, EP_TOKENIZE, EP_DETOKENIZE,
       EP_METRICS, EP_VIDEOS, EP_OTHER, EP_COUNT };
extern const char *const srv_endpoint_names[EP_COUNT];

#define SRV_HIST_MAX 16
typedef struct srv_hist {
    int n;                           /* finite buckets */
    double le[SRV_HIST_MAX];         /* upper bounds, increasing */
    uint64_t cnt[SRV_HIST_MAX + 1];  /* per bucket (not cumulative), last = +Inf */
    double sum;
    uint64_t count;
} srv_hist;
void srv_hist_observe(srv_hist *h, double v);

#define SRV_MAX_STATUS 64
#define SRV_RATE_WINDOW 10           /* seconds in the tokens/s window */
typedef struct srv_metrics {
    struct { int ep, status; uint64_t n; } req[SRV_MAX_STATUS];
    int n_req;
    uint64_t prompt_tokens, generated_tokens;
    uint64_t finished[DS4_FINISH_ERROR + 1];   /* by DS4_FINISH_* */
    uint64_t cancelled;                        /* client gone or shutdown */
    uint64_t rejected_queue_full;
    uint64_t steps, step_seqs;                 /* engine steps, sequences summed over steps */
    int      max_step_seqs;
    srv_hist ttft, tpot, e2e;
    long     rate_sec[SRV_RATE_WINDOW];        /* which second each bucket holds */
    uint64_t rate_tok[SRV_RATE_WINDOW];
    size_t   kv_used, kv_total;
    double   t_start;
} srv_metrics;
void srv_metrics_init(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, int ep, int status);
void srv_metrics_tokens(srv_metrics *m, double now, int n);
char *srv_metrics_render(ds4_server *s);      /* Prometheus text, malloc'd; takes the lock */

/* ---- the server ----------------------------------------------------------- */
struct MHD_Daemon;
struct ds4_server {
    ds4_server_opts o;
    char  *host, *api_key, *model_name;        /* owned copies */
    const ds4_model *m;
    const ds4_tokenizer *tok;
    ds4_engine *eng;
    struct MHD_Daemon *d;
    int    port;
    pthread_t engine_thread;
    int    engine_started;
    pthread_mutex_t mu;
    pthread_cond_t engine_cv;                  /* work arrived or cancel/stop */
    pthread_mutex_t video_mu;                  /* one video generation at a time */
    srv_job *q_head, *q_tail;
    int    q_len, n_active;
    int    draining, stopping;
    int    http_jobs;                          /* generation responses not yet completed */
    srv_job **active;                          /* [slots] engine thread only */
    ds4_seq **seqs;                            /* [slots] engine thread only */
    int    *before;                            /* [slots] n_generated before a step */
    uint64_t next_id;
    long   created;                            /* unix seconds at start */
    srv_metrics met;
};

/* sched.c */
srv_job *srv_job_new(ds4_server *s, int kind);
void     srv_job_unref(srv_job *j);            /* takes the lock */
void     srv_job_unref_locked(srv_job *j);
/* Queue a parsed job (the engine takes a reference). 0, or -1 with e set
 * (429 queue full, 503 shutting down). */
int      srv_submit(ds4_server *s, srv_job *j, api_error *e);
void     srv_cancel_locked(srv_job *j);        /* mark cancelled, wake the engine */
void    *srv_engine_main(void *arg);
double   srv_now(void);
/* Wait on j->cv up to ms milliseconds (lock held). */
void     srv_wait_ms(srv_job *j, int ms);

/* api.c: parse a completions / chat request into j (prompt ids, sampling,
 * stops, stream flags). 0, or -1 with e set. */
int   api_parse_generation(ds4_server *s, srv_job *j, const char *body, size_t len, api_error *e);
/* Parse a body as a JSON object (400 on failure). */
cJSON *api_parse_object(const char *body, size_t len, api_error *e);
/* The full response of a finished job. */
char *api_response_json(ds4_server *s, const srv_job *j, const char *text, size_t len);
/* One streaming chunk: text (may be empty), finish (NULL while running),
 * role (chat: first chunk announces the assistant), usage_only (the
 * stream_options.include_usage chunk with no choices). */
enum { CHUNK_TEXT = 0, CHUNK_ROLE, CHUNK_FINISH, CHUNK_USAGE };
char *api_chunk_json(ds4_server *s, const srv_job *j, int what, const char *text, size_t len);
const char *api_finish_reason(int finish);
char *api_models_json(ds4_server *s, const char *only);   /* only: one model or NULL */
int   api_tokenize(ds4_server *s, const char *body, size_t len, char **out, api_error *e);
int   api_detokenize(ds4_server *s, const char *body, size_t len, char **out, api_error *e);
/* out: JSON (b64_json, default) or the GIF bytes (response_format "gif"). */
int   api_videos(ds4_server *s, const char *body, size_t len, char **out, size_t *out_len,
                 const char **ctype, api_error *e);

/* chat.c */
#define SRV_CHAT_STOP "\n<|"
/* Render messages (a JSON array) with the chat template; malloc'd text or
 * NULL with e set. */
char *srv_chat_render(const cJSON *messages, api_error *e);

#endif
