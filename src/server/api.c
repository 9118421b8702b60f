/* api.c — the OpenAI-compatible bodies: parsing and validating
 * /v1/completions and /v1/chat/completions requests into a job, building
 * responses and streaming chunks, /v1/models, /tokenize, /detokenize,
 * /v1/videos, and OpenAI-style error bodies. Wrong types and values are 400
 * errors naming the field; unknown fields are ignored. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "server/internal.h"

/* ---- small helpers -------------------------------------------------------- */
static void buf_reserve(srv_buf *b, size_t extra) {
    if (b->oom || b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return; }
    b->p = p;
    b->cap = cap;
}

void srv_buf_add(srv_buf *b, const char *s, size_t n) {
    buf_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    buf_reserve(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* At p (n bytes left): the length of a valid UTF-8 sequence (> 0), or minus
 * the length of its maximal invalid subpart (the lead byte and the
 * continuation bytes that were still acceptable), as WHATWG decoders do. NUL
 * counts as invalid: cJSON strings cannot hold it. */
static long utf8_step(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    if (c == 0) return -1;
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;            /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;            /* <= U+10FFFF */
    } else return -1;
    for (size_t i = 1; i < len; i++) {
        if (i >= n || p[i] < lo || p[i] > hi) return -(long)i;
        lo = 0x80;
        hi = 0xBF;
    }
    return (long)len;
}

char *srv_utf8_clean(const char *s, size_t n) {
    char *out = malloc(3 * n + 1);           /* each bad byte becomes at most 3 bytes */
    if (!out) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k = 0;
    while (i < n) {
        long l = utf8_step(u + i, n - i);
        if (l > 0) { memcpy(out + k, u + i, (size_t)l); k += (size_t)l; i += (size_t)l; }
        else { memcpy(out + k, "\xEF\xBF\xBD", 3); k += 3; i += (size_t)-l; }
    }
    out[k] = 0;
    return out;
}

void api_err(api_error *e, int status, const char *type, const char *code,
             const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error *e) {
    cJSON *root = cJSON_CreateObject(), *er = cJSON_AddObjectToObject(root, "error");
    char *msg = srv_utf8_clean(e->msg, strlen(e->msg));
    cJSON_AddStringToObject(er, "message", msg ? msg : "error");
    free(msg);
    cJSON_AddStringToObject(er, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0]) cJSON_AddStringToObject(er, "param", e->param);
    else cJSON_AddNullToObject(er, "param");
    if (e->code) cJSON_AddStringToObject(er, "code", e->code);
    else cJSON_AddNullToObject(er, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static void bad_request(api_error *e, const char *param, const char *fmt, const char *what) {
    api_err(e, 400, "invalid_request_error", NULL, param, fmt, param, what);
}

cJSON *api_parse_object(const char *body, size_t len, api_error *e) {
    if (!body || len == 0) {
        api_err(e, 400, "invalid_request_error", NULL, NULL,
                "the request body is empty: expected a JSON object");
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        api_err(e, 400, "invalid_request_error", NULL, NULL,
                "could not parse the JSON body (error near byte %zu of %zu)", at, len);
        return NULL;
    }
    /* only whitespace may follow the value */
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != 0) {
            api_err(e, 400, "invalid_request_error", NULL, NULL,
                    "could not parse the JSON body: unexpected data after the value at byte %zu",
                    (size_t)(p - body));
            cJSON_Delete(root);
            return NULL;
        }
    if (!cJSON_IsObject(root)) {
        api_err(e, 400, "invalid_request_error", NULL, NULL, "the request body must be a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* A field that is present and not null, or NULL. */
static const cJSON *field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int opt_num(const cJSON *o, const char *k, double lo, double hi, double *out, api_error *e) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        bad_request(e, k, "'%s' must be %s", "a number");
        return -1;
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        api_err(e, 400, "invalid_request_error", NULL, k, "'%s' must be in [%g, %g], got %g",
                k, lo, hi, v->valuedouble);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int is_int(const cJSON *v) {
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
}

static int opt_int(const cJSON *o, const char *k, double lo, double hi, long long *out, api_error *e) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!is_int(v)) { bad_request(e, k, "'%s' must be %s", "an integer"); return -1; }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        api_err(e, 400, "invalid_request_error", NULL, k, "'%s' must be in [%.0f, %.0f], got %.0f",
                k, lo, hi, v->valuedouble);
        return -1;
    }
    *out = (long long)v->valuedouble;
    return 0;
}

static int opt_bool(const cJSON *o, const char *k, int *out, api_error *e) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) { bad_request(e, k, "'%s' must be %s", "a boolean"); return -1; }
    *out = cJSON_IsTrue(v);
    return 0;
}

static int opt_string(const cJSON *o, const char *k, const char **out, api_error *e) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsString(v)) { bad_request(e, k, "'%s' must be %s", "a string"); return -1; }
    *out = v->valuestring;
    return 0;
}

static int unsupported(api_error *e, const char *k, const char *why) {
    api_err(e, 400, "invalid_request_error", "unsupported_parameter", k,
            "'%s' is not supported by this server (%s)", k, why);
    return -1;
}

/* The "model" field: absent is fine, another name is 404. */
static int check_model(ds4_server *s, const cJSON *root, api_error *e) {
    const char *name = NULL;
    if (opt_string(root, "model", &name, e)) return -1;
    if (name && strcmp(name, s->model_name) != 0) {
        api_err(e, 404, "invalid_request_error", "model_not_found", "model",
                "The model '%.200s' does not exist (this server serves '%.200s')", name, s->model_name);
        return -1;
    }
    return 0;
}

/* Parameters a client may send with their neutral value, which this server
 * does not implement otherwise. */
static int check_unsupported(const cJSON *root, int chat, api_error *e) {
    const cJSON *v;
    long long n = 1;
    if (opt_int(root, "n", 1, 128, &n, e)) return -1;
    if (n != 1) return unsupported(e, "n", "one choice per request");
    if (opt_int(root, "best_of", 1, 128, &n, e)) return -1;
    if (n != 1) return unsupported(e, "best_of", "one choice per request");
    const char *pen[2] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        double x = 0;
        if (opt_num(root, pen[i], -2, 2, &x, e)) return -1;
        if (x != 0) return unsupported(e, pen[i], "only 0");
    }
    if ((v = field(root, "logprobs"))) {
        if (chat ? !cJSON_IsBool(v) : !is_int(v)) {
            bad_request(e, "logprobs", "'%s' must be %s", chat ? "a boolean" : "an integer");
            return -1;
        }
        if (chat ? cJSON_IsTrue(v) : v->valuedouble != 0) return unsupported(e, "logprobs", "no log probabilities");
    }
    if ((v = field(root, "top_logprobs")) && !(is_int(v) && v->valuedouble == 0))
        return unsupported(e, "top_logprobs", "no log probabilities");
    int echo = 0;
    if (opt_bool(root, "echo", &echo, e)) return -1;
    if (echo) return unsupported(e, "echo", "the prompt is not echoed");
    const char *suffix = NULL;
    if (opt_string(root, "suffix", &suffix, e)) return -1;
    if (suffix && suffix[0]) return unsupported(e, "suffix", "no insertion");
    if ((v = field(root, "logit_bias"))) {
        if (!cJSON_IsObject(v)) { bad_request(e, "logit_bias", "'%s' must be %s", "an object"); return -1; }
        if (v->child) return unsupported(e, "logit_bias", "no logit bias");
    }
    const char *arrays[3] = {"tools", "functions", "tool_choice"};
    for (int i = 0; i < 3; i++)
        if ((v = field(root, arrays[i])) && !(cJSON_IsArray(v) && !v->child) &&
            !(cJSON_IsString(v) && !strcmp(v->valuestring, "none")))
            return unsupported(e, arrays[i], "no tool calls");
    if ((v = field(root, "response_format"))) {
        const cJSON *t = cJSON_IsObject(v) ? field(v, "type") : NULL;
        if (!cJSON_IsString(t)) {
            bad_request(e, "response_format", "'%s' must be %s", "an object with a string \"type\"");
            return -1;
        }
        if (strcmp(t->valuestring, "text") != 0) return unsupported(e, "response_format", "text only");
    }
    const char *user = NULL;
    return opt_string(root, "user", &user, e);
}

static int parse_stop(srv_job *j, const cJSON *root, api_error *e) {
    const cJSON *v = field(root, "stop");
    int room = DS4_MAX_STOP - (j->kind == API_CHAT);
    const char *list[DS4_MAX_STOP];
    int n = 0;
    if (v) {
        if (cJSON_IsString(v)) list[n++] = v->valuestring;
        else if (cJSON_IsArray(v)) {
            for (const cJSON *x = v->child; x; x = x->next) {
                if (!cJSON_IsString(x)) {
                    bad_request(e, "stop", "'%s' must be %s", "a string or an array of strings");
                    return -1;
                }
                if (n == room) {
                    api_err(e, 400, "invalid_request_error", NULL, "stop",
                            "'stop' holds at most %d strings", room);
                    return -1;
                }
                list[n++] = x->valuestring;
            }
        } else {
            bad_request(e, "stop", "'%s' must be %s", "a string or an array of strings");
            return -1;
        }
    }
    if (j->kind == API_CHAT) list[n++] = SRV_CHAT_STOP;
    for (int i = 0; i < n; i++) {
        if (!list[i][0]) continue;                       /* empty stops mean nothing */
        char *c = strdup(list[i]);
        if (!c) { api_err(e, 500, "server_error", NULL, NULL, "out of memory"); return -1; }
        j->stops[j->gp.n_stop] = c;
        j->gp.stop[j->gp.n_stop++] = c;
    }
    return 0;
}

/* Token ids from a JSON array of integers in [0, V). */
static int parse_ids(const cJSON *arr, int V, const char *param, int **ids, int *n, api_error *e) {
    int count = cJSON_GetArraySize(arr), k = 0;
    *ids = malloc((size_t)(count ? count : 1) * sizeof **ids);
    if (!*ids) { api_err(e, 500, "server_error", NULL, NULL, "out of memory"); return -1; }
    for (const cJSON *x = arr->child; x; x = x->next, k++) {
        if (!is_int(x) || x->valuedouble < 0 || x->valuedouble >= V) {
            api_err(e, 400, "invalid_request_error", NULL, param,
                    "'%s'[%d] must be a token id in [0, %d)", param, k, V);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        (*ids)[k] = (int)x->valuedouble;
    }
    *n = count;
    return 0;
}

/* Encode text, with <|bos|> in front when the engine has one. */
static int encode_prompt(ds4_server *s, const char *text, int add_bos, int **ids, int *n, api_error *e) {
    int *raw = NULL;
    size_t nr = 0;
    if (ds4_tokenizer_encode(s->tok, text, strlen(text), &raw, &nr)) {
        api_err(e, 400, "invalid_request_error", NULL, "prompt", "could not tokenize the prompt: %s", ds4_error());
        return -1;
    }
    int bos = add_bos && s->eng->bos_id >= 0;
    if (nr + (size_t)bos > (size_t)s->eng->capacity) {
        api_err(e, 400, "invalid_request_error", "context_length_exceeded", "prompt",
                "This model's context holds %d tokens per request, but the prompt has %zu tokens",
                s->eng->capacity, nr + (size_t)bos);
        free(raw);
        return -1;
    }
    *ids = malloc((nr + (size_t)bos + 1) * sizeof **ids);
    if (!*ids) { free(raw); api_err(e, 500, "server_error", NULL, NULL, "out of memory"); return -1; }
    if (bos) (*ids)[0] = s->eng->bos_id;
    if (nr) memcpy(*ids + bos, raw, nr * sizeof *raw);
    free(raw);
    *n = (int)nr + bos;
    return 0;
}

static int parse_prompt(ds4_server *s, srv_job *j, const cJSON *root, api_error *e) {
    int V = s->m->cfg.vocab_size;
    if (j->kind == API_CHAT) {
        char *text = srv_chat_render(cJSON_GetObjectItemCaseSensitive(root, "messages"), e);
        if (!text) return -1;
        int r = encode_prompt(s, text, 1, &j->prompt, &j->n_prompt, e);
        free(text);
        return r;
    }
    const cJSON *p = field(root, "prompt");
    if (!p) {
        api_err(e, 400, "invalid_request_error", NULL, "prompt", "'prompt' is required");
        return -1;
    }
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child;                                    /* a batch of one prompt */
    if (cJSON_IsString(p)) return encode_prompt(s, p->valuestring, 1, &j->prompt, &j->n_prompt, e);
    if (!cJSON_IsArray(p)) {
        api_err(e, 400, "invalid_request_error", NULL, "prompt",
                "'prompt' must be a string or an array of token ids");
        return -1;
    }
    if (p->child && (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        return unsupported(e, "prompt", "one prompt per request");
    if (parse_ids(p, V, "prompt", &j->prompt, &j->n_prompt, e)) return -1;
    if (j->n_prompt > s->eng->capacity) {
        api_err(e, 400, "invalid_request_error", "context_length_exceeded", "prompt",
                "This model's context holds %d tokens per request, but the prompt has %d tokens",
                s->eng->capacity, j->n_prompt);
        return -1;
    }
    return 0;
}

int api_parse_generation(ds4_server *s, srv_job *j, const char *body, size_t len, api_error *e) {
    cJSON *root = api_parse_object(body, len, e);
    if (!root) return -1;
    int rc = -1, chat = j->kind == API_CHAT;
    ds4_gen_params_default(&j->gp);
    ds4_gen_params *g = &j->gp;
    g->sampler.temperature = 1.0f;                       /* OpenAI's default */
    g->sampler.seed = (uint64_t)j->t_arrival * 1000003u ^ (uint64_t)(uintptr_t)j;   /* fresh per request */
    g->max_tokens = chat ? s->eng->capacity : 16;
    g->add_bos = 1;
    double x;
    long long n;
    if (check_model(s, root, e) || check_unsupported(root, chat, e)) goto out;
    x = g->sampler.temperature;
    if (opt_num(root, "temperature", 0, 1000, &x, e)) goto out;
    g->sampler.temperature = (float)x;
    x = 1;
    if (opt_num(root, "top_p", 0, 1, &x, e)) goto out;
    if (x <= 0) { api_err(e, 400, "invalid_request_error", NULL, "top_p", "'top_p' must be in (0, 1]"); goto out; }
    g->sampler.top_p = (float)x;
    x = 0;
    if (opt_num(root, "min_p", 0, 1, &x, e)) goto out;
    g->sampler.min_p = (float)x;
    n = 0;
    if (opt_int(root, "top_k", 0, 1 << 30, &n, e)) goto out;
    g->sampler.top_k = (int)n;
    n = (long long)g->sampler.seed;
    if (field(root, "seed")) {
        if (opt_int(root, "seed", -9.2e18, 9.2e18, &n, e)) goto out;
        g->sampler.seed = (uint64_t)n;
    }
    n = g->max_tokens;
    if (opt_int(root, "max_tokens", 0, 1 << 30, &n, e)) goto out;
    if (chat && opt_int(root, "max_completion_tokens", 0, 1 << 30, &n, e)) goto out;
    g->max_tokens = (int)n;
    if (opt_bool(root, "ignore_eos", &g->ignore_eos, e)) goto out;
    if (opt_bool(root, "stream", &j->stream, e)) goto out;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) { bad_request(e, "stream_options", "'%s' must be %s", "an object"); goto out; }
        if (opt_bool(so, "include_usage", &j->include_usage, e)) goto out;
    }
    if (ds4_sampler_params_validate(&g->sampler)) {
        api_err(e, 400, "invalid_request_error", NULL, NULL, "%s", ds4_error());
        goto out;
    }
    if (parse_stop(j, root, e) || parse_prompt(s, j, root, e)) goto out;
    if (j->n_prompt == 0) {
        api_err(e, 400, "invalid_request_error", NULL, chat ? "messages" : "prompt",
                "the prompt is empty (no tokens, and the model has no <|bos|> token)");
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- responses ------------------------------------------------------------ */
const char *api_finish_reason(int finish) {
    switch (finish) {
    case DS4_FINISH_LENGTH: case DS4_FINISH_CONTEXT: return "length";
    default: return "stop";
    }
}

static void add_usage(cJSON *o, const srv_job *j) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
}

static cJSON *head(ds4_server *s, const srv_job *j, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", s->model_name);
    cJSON_AddNullToObject(o, "system_fingerprint");
    return o;
}

static char *print_free(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *api_response_json(ds4_server *s, const srv_job *j, const char *text, size_t len) {
    char *clean = srv_utf8_clean(text ? text : "", text ? len : 0);
    if (!clean) return NULL;
    int chat = j->kind == API_CHAT;
    cJSON *o = head(s, j, chat ? "chat.completion" : "text_completion");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", clean);
    } else {
        cJSON_AddStringToObject(c, "text", clean);
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", api_finish_reason(j->finish));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), c);
    add_usage(o, j);
    free(clean);
    return print_free(o);
}

char *api_chunk_json(ds4_server *s, const srv_job *j, int what, const char *text, size_t len) {
    int chat = j->kind == API_CHAT;
    cJSON *o = head(s, j, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (what == CHUNK_USAGE) {
        add_usage(o, j);
        return print_free(o);
    }
    char *clean = srv_utf8_clean(text ? text : "", text ? len : 0);
    if (!clean) { cJSON_Delete(o); return NULL; }
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (what == CHUNK_ROLE) cJSON_AddStringToObject(d, "role", "assistant");
        if (what != CHUNK_FINISH) cJSON_AddStringToObject(d, "content", clean);
    } else {
        cJSON_AddStringToObject(c, "text", clean);
    }
    free(clean);
    cJSON_AddNullToObject(c, "logprobs");
    if (what == CHUNK_FINISH) cJSON_AddStringToObject(c, "finish_reason", api_finish_reason(j->finish));
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    if (what == CHUNK_FINISH) add_usage(o, j);         /* usage in every response */
    return print_free(o);
}

static cJSON *model_object(ds4_server *s) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "ds4");
    cJSON_AddNumberToObject(m, "context_length", s->eng->capacity);
    cJSON_AddNumberToObject(m, "vocab_size", s->m->cfg.vocab_size);
    cJSON_AddNumberToObject(m, "slots", s->eng->n_slots);
    return m;
}

char *api_models_json(ds4_server *s, const char *only) {
    if (only) return print_free(model_object(s));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), model_object(s));
    return print_free(o);
}

int api_tokenize(ds4_server *s, const char *body, size_t len, char **out, api_error *e) {
    cJSON *root = api_parse_object(body, len, e);
    if (!root) return -1;
    int rc = -1, add_special = 0, *ids = NULL;
    size_t n = 0;
    const char *text = NULL;
    if (check_model(s, root, e) || opt_string(root, "content", &text, e) ||
        opt_bool(root, "add_special", &add_special, e))
        goto out;
    if (!text) { api_err(e, 400, "invalid_request_error", NULL, "content", "'content' (a string) is required"); goto out; }
    if (ds4_tokenizer_encode(s->tok, text, strlen(text), &ids, &n)) {
        api_err(e, 400, "invalid_request_error", NULL, "content", "could not tokenize: %s", ds4_error());
        goto out;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "tokens");
    if (add_special && s->eng->bos_id >= 0) cJSON_AddItemToArray(arr, cJSON_CreateNumber(s->eng->bos_id));
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    *out = print_free(o);
    rc = *out ? 0 : -1;
    if (rc) api_err(e, 500, "server_error", NULL, NULL, "out of memory");
out:
    free(ids);
    cJSON_Delete(root);
    return rc;
}

int api_detokenize(ds4_server *s, const char *body, size_t len, char **out, api_error *e) {
    cJSON *root = api_parse_object(body, len, e);
    if (!root) return -1;
    int rc = -1, *ids = NULL, n = 0;
    char *text = NULL, *clean = NULL;
    size_t tl = 0;
    if (check_model(s, root, e)) goto out;
    const cJSON *t = field(root, "tokens");
    if (!cJSON_IsArray(t)) {
        api_err(e, 400, "invalid_request_error", NULL, "tokens", "'tokens' must be an array of token ids");
        goto out;
    }
    if (parse_ids(t, ds4_tokenizer_vocab_size(s->tok), "tokens", &ids, &n, e)) goto out;
    if (ds4_tokenizer_decode(s->tok, ids, (size_t)n, &text, &tl)) {
        api_err(e, 400, "invalid_request_error", NULL, "tokens", "%s", ds4_error());
        goto out;
    }
    clean = srv_utf8_clean(text, tl);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "content", clean ? clean : "");
    *out = print_free(o);
    rc = *out && clean ? 0 : -1;
    if (rc) api_err(e, 500, "server_error", NULL, NULL, "out of memory");
out:
    free(ids); free(text); free(clean);
    cJSON_Delete(root);
    return rc;
}

static char *base64(const unsigned char *p, size_t n) {
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[k++] = A[v >> 18 & 63];
        out[k++] = A[v >> 12 & 63];
        out[k++] = i + 1 < n ? A[v >> 6 & 63] : '=';
        out[k++] = i + 2 < n ? A[v & 63] : '=';
    }
    out[k] = 0;
    return out;
}

int api_videos(ds4_server *s, const char *body, size_t len, char **out, size_t *out_len,
               const char **ctype, api_error *e) {
    cJSON *root = api_parse_object(body, len, e);
    if (!root) return -1;
    int rc = -1;
    const char *prompt = NULL, *fmt = NULL;
    double seconds = 10, temp = 1, top_p = 1, guidance = -1;
    long long fps = 0, scale = 4, top_k = 0, seed = 42;
    ds4_server_video_out vo = {0};
    if (check_model(s, root, e) || opt_string(root, "prompt", &prompt, e) ||
        opt_num(root, "seconds", 0, 60, &seconds, e) || opt_int(root, "fps", 1, 60, &fps, e) ||
        opt_string(root, "response_format", &fmt, e) || opt_int(root, "scale", 1, 8, &scale, e) ||
        opt_num(root, "temperature", 0, 1000, &temp, e) || opt_num(root, "top_p", 0, 1, &top_p, e) ||
        opt_int(root, "top_k", 0, 1 << 30, &top_k, e) || opt_int(root, "seed", -9.2e18, 9.2e18, &seed, e) ||
        opt_num(root, "guidance_scale", 0, 100, &guidance, e))
        goto out;
    if (!prompt) { api_err(e, 400, "invalid_request_error", NULL, "prompt", "'prompt' (a string) is required"); goto out; }
    if (seconds <= 0) { api_err(e, 400, "invalid_request_error", NULL, "seconds", "'seconds' must be > 0"); goto out; }
    if (top_p <= 0) { api_err(e, 400, "invalid_request_error", NULL, "top_p", "'top_p' must be in (0, 1]"); goto out; }
    if (fmt && strcmp(fmt, "gif") && strcmp(fmt, "b64_json")) {
        api_err(e, 400, "invalid_request_error", NULL, "response_format",
                "'response_format' must be \"gif\" or \"b64_json\"");
        goto out;
    }
    if (!s->o.video) {
        if (!s->m->cfg.video.enabled)
            api_err(e, 400, "invalid_request_error", "video_not_supported", NULL,
                    "the model '%.200s' has no video tokenizer (its config.json has no \"video\" "
                    "section), so it cannot generate videos", s->model_name);
        else
            api_err(e, 400, "invalid_request_error", "video_not_supported", NULL,
                    "the model '%.200s' has a \"video\" section but no world model could be opened "
                    "from its directory (video.safetensors, worldmodel.json)", s->model_name);
        goto out;
    }
    if (pthread_mutex_trylock(&s->video_mu) != 0) {
        api_err(e, 429, "rate_limit_error", "video_busy", NULL,
                "a video is being generated (one at a time); retry later");
        goto out;
    }
    ds4_server_video_req rq = {.prompt = prompt, .seconds = seconds, .fps = (int)fps, .scale = (int)scale,
                               .temperature = (float)temp, .top_p = (float)top_p, .top_k = (int)top_k,
                               .guidance = (float)guidance, .seed = (uint64_t)seed};
    int vr = s->o.video(s->o.video_user, &rq, &vo);
    pthread_mutex_unlock(&s->video_mu);
    if (vr != 0 || !vo.gif) {
        api_err(e, 500, "server_error", NULL, NULL, "video generation failed: %s", ds4_error());
        goto out;
    }
    if (fmt && !strcmp(fmt, "gif")) {
        *out = (char *)vo.gif;
        *out_len = vo.gif_len;
        *ctype = "image/gif";
        vo.gif = NULL;
        rc = 0;
        goto out;
    }
    char *b64 = base64(vo.gif, vo.gif_len);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "video");
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", s->model_name);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    cJSON_AddNumberToObject(o, "fps", vo.fps);
    cJSON_AddNumberToObject(o, "n_frames", vo.n_frames);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "mime_type", "image/gif");
    cJSON_AddStringToObject(d, "b64_json", b64 ? b64 : "");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), d);
    cJSON *tr = vo.trajectories ? cJSON_Parse(vo.trajectories) : NULL;
    if (tr) cJSON_AddItemToObject(o, "trajectories", tr);
    else cJSON_AddNullToObject(o, "trajectories");
    free(b64);
    *out = print_free(o);
    if (!b64 || !*out) { free(*out); *out = NULL; api_err(e, 500, "server_error", NULL, NULL, "out of memory"); goto out; }
    *out_len = strlen(*out);
    *ctype = "application/json";
    rc = 0;
out:
    free(vo.gif);
    free(vo.trajectories);
    cJSON_Delete(root);
    return rc;
}
