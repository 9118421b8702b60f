/* metrics.c — the server's counters, gauges and histograms, rendered as
 * Prometheus text at GET /metrics. Everything here runs under srv->mu. */
#include <stdlib.h>
#include <string.h>
#include "server/internal.h"

const char *const srv_endpoint_names[EP_COUNT] = {
    "/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
    "/detokenize", "/metrics", "/v1/videos", "other",
};

static void hist_init(srv_hist *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->n = n;
    memcpy(h->le, le, (size_t)n * sizeof *le);
}

void srv_hist_observe(srv_hist *h, double v) {
    int b = 0;
    while (b < h->n && v > h->le[b]) b++;
    h->cnt[b]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    static const double ttft[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double tpot[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    static const double e2e[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    hist_init(&m->ttft, ttft, (int)(sizeof ttft / sizeof ttft[0]));
    hist_init(&m->tpot, tpot, (int)(sizeof tpot / sizeof tpot[0]));
    hist_init(&m->e2e, e2e, (int)(sizeof e2e / sizeof e2e[0]));
    for (int i = 0; i < SRV_RATE_WINDOW; i++) m->rate_sec[i] = -1;
    m->t_start = srv_now();
}

void srv_metrics_request(srv_metrics *m, int ep, int status) {
    for (int i = 0; i < m->n_req; i++)
        if (m->req[i].ep == ep && m->req[i].status == status) { m->req[i].n++; return; }
    if (m->n_req == SRV_MAX_STATUS) return;            /* table full: cannot happen with real codes */
    m->req[m->n_req].ep = ep;
    m->req[m->n_req].status = status;
    m->req[m->n_req].n = 1;
    m->n_req++;
}

void srv_metrics_tokens(srv_metrics *m, double now, int n) {
    m->generated_tokens += (uint64_t)n;
    long sec = (long)(now - m->t_start);
    int b = (int)(sec % SRV_RATE_WINDOW);
    if (m->rate_sec[b] != sec) { m->rate_sec[b] = sec; m->rate_tok[b] = 0; }
    m->rate_tok[b] += (uint64_t)n;
}

/* Generated tokens per second over the last full SRV_RATE_WINDOW seconds
 * (fewer right after start). */
static double token_rate(const srv_metrics *m, double now) {
    long sec = (long)(now - m->t_start);
    uint64_t tok = 0;
    for (int i = 0; i < SRV_RATE_WINDOW; i++)
        if (m->rate_sec[i] >= sec - SRV_RATE_WINDOW && m->rate_sec[i] < sec) tok += m->rate_tok[i];
    long span = DS4_MIN(sec, (long)SRV_RATE_WINDOW);
    return span > 0 ? (double)tok / (double)span : 0.0;
}

static void hist_render(srv_buf *b, const char *name, const char *help, const srv_hist *h) {
    srv_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->cnt[i];
        srv_buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->cnt[h->n];
    srv_buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                   (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

static void counter(srv_buf *b, const char *name, const char *help, uint64_t v) {
    srv_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
                   (unsigned long long)v);
}

static void gauge(srv_buf *b, const char *name, const char *help, double v) {
    srv_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.6g\n", name, help, name, name, v);
}

char *srv_metrics_render(ds4_server *s) {
    srv_buf b = {0};
    pthread_mutex_lock(&s->mu);
    const srv_metrics *m = &s->met;
    double now = srv_now();
    srv_buf_printf(&b, "# HELP ds4_requests_total HTTP requests answered, by endpoint and status.\n"
                       "# TYPE ds4_requests_total counter\n");
    for (int i = 0; i < m->n_req; i++)
        srv_buf_printf(&b, "ds4_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                       srv_endpoint_names[m->req[i].ep], m->req[i].status,
                       (unsigned long long)m->req[i].n);
    counter(&b, "ds4_prompt_tokens_total", "Prompt tokens admitted (incl. <|bos|>).", m->prompt_tokens);
    counter(&b, "ds4_generated_tokens_total", "Tokens generated.", m->generated_tokens);
    srv_buf_printf(&b, "# HELP ds4_finished_total Generations finished, by reason.\n"
                       "# TYPE ds4_finished_total counter\n");
    for (int f = DS4_FINISH_EOS; f <= DS4_FINISH_ERROR; f++)
        srv_buf_printf(&b, "ds4_finished_total{reason=\"%s\"} %llu\n", ds4_finish_name(f),
                       (unsigned long long)m->finished[f]);
    counter(&b, "ds4_cancelled_total", "Generations cancelled (client disconnected or shutdown).", m->cancelled);
    counter(&b, "ds4_rejected_queue_full_total", "Requests answered 429 because the queue was full.",
            m->rejected_queue_full);
    counter(&b, "ds4_engine_steps_total", "Batched forward steps run by the engine.", m->steps);
    counter(&b, "ds4_engine_step_sequences_total", "Sequences summed over engine steps (mean batch = this / steps).",
            m->step_seqs);
    gauge(&b, "ds4_engine_step_sequences_max", "Most sequences in one engine step so far.", m->max_step_seqs);
    hist_render(&b, "ds4_time_to_first_token_seconds", "From request arrival to the first generated token.", &m->ttft);
    hist_render(&b, "ds4_time_per_output_token_seconds", "Time between consecutive generated tokens of a request.", &m->tpot);
    hist_render(&b, "ds4_request_duration_seconds", "From arrival to the end of a generation request.", &m->e2e);
    gauge(&b, "ds4_tokens_per_second", "Generated tokens per second over the last 10 s.", token_rate(m, now));
    gauge(&b, "ds4_queue_depth", "Requests waiting for a slot.", s->q_len);
    gauge(&b, "ds4_slots_active", "Slots running a sequence.", s->n_active);
    gauge(&b, "ds4_slots_total", "Slots (sequences decoded together).", s->eng->n_slots);
    gauge(&b, "ds4_kv_cache_used_bytes", "KV-cache bytes holding tokens.", (double)m->kv_used);
    gauge(&b, "ds4_kv_cache_capacity_bytes", "KV-cache bytes allocated.", (double)m->kv_total);
    gauge(&b, "ds4_kv_cache_usage_ratio", "Used / allocated KV-cache bytes.",
          m->kv_total ? (double)m->kv_used / (double)m->kv_total : 0.0);
    gauge(&b, "ds4_uptime_seconds", "Seconds since the server started.", now - m->t_start);
    pthread_mutex_unlock(&s->mu);
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
