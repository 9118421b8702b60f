/* sched.c — continuous batching: HTTP threads queue jobs (bounded: 429 when
 * full); one engine thread owns the engine (model + KV cache), admits queued
 * jobs into free slots, and runs ds4_engine_step over every active sequence
 * at once, so a new request joins the running decode batch at the next
 * step. Text goes back through each job's buffer and condition variable;
 * cancelled jobs (client gone, shutdown) leave their slot before the next
 * step. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "server/internal.h"

double srv_now(void) { return ds4_time_s(); }

srv_job *srv_job_new(ds4_server *s, int kind) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) { free(j); return NULL; }
    j->srv = s;
    j->kind = kind;
    j->refs = 1;
    j->state = JOB_QUEUED;
    j->t_arrival = srv_now();
    j->created = (long)time(NULL);
    pthread_mutex_lock(&s->mu);
    uint64_t id = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    /* ids: a per-process random part and a counter */
    snprintf(j->id, sizeof j->id, "%s-%08lx%012llx", kind == API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long)((uintptr_t)s ^ (unsigned long)s->created) & 0xffffffffUL,
             (unsigned long long)id);
    return j;
}

static void job_free(srv_job *j) {
    if (j->seq_live) ds4_seq_release(j->srv->eng, &j->seq);   /* cannot happen: the engine holds a ref */
    free(j->prompt);
    for (int i = 0; i < DS4_MAX_STOP; i++) free(j->stops[i]);
    free(j->text);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void srv_job_unref_locked(srv_job *j) {
    if (--j->refs == 0) job_free(j);
}

void srv_job_unref(srv_job *j) {
    ds4_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    srv_job_unref_locked(j);
    pthread_mutex_unlock(&s->mu);
}

void srv_cancel_locked(srv_job *j) {
    if (j->state == JOB_DONE || j->cancelled) return;
    j->cancelled = 1;
    pthread_cond_signal(&j->srv->engine_cv);
}

void srv_wait_ms(srv_job *j, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&j->cv, &j->srv->mu, &ts);
}

int srv_submit(ds4_server *s, srv_job *j, api_error *e) {
    pthread_mutex_lock(&s->mu);
    if (s->draining || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        api_err(e, 503, "server_error", "server_shutting_down", NULL, "the server is shutting down");
        return -1;
    }
    if (s->q_len + s->n_active >= s->o.slots + s->o.queue) {
        s->met.rejected_queue_full++;
        pthread_mutex_unlock(&s->mu);
        api_err(e, 429, "rate_limit_error", "queue_full", NULL,
                "the server is busy: %d slots running and %d requests queued (limit %d); retry later",
                s->n_active, s->q_len, s->o.queue);
        return -1;
    }
    j->refs++;                                       /* the engine's reference */
    j->next = NULL;
    if (s->q_tail) s->q_tail->next = j; else s->q_head = j;
    s->q_tail = j;
    s->q_len++;
    pthread_cond_signal(&s->engine_cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Text from the engine (engine thread, lock not held). Nonzero stops the
 * sequence: the client is gone or the server stops. */
static int on_text(const char *text, size_t len, void *user) {
    srv_job *j = user;
    ds4_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    if (j->text_len + len + 1 > j->text_cap) {
        size_t cap = j->text_cap ? j->text_cap * 2 : 256;
        while (cap < j->text_len + len + 1) cap *= 2;
        char *p = realloc(j->text, cap);
        if (!p) {
            api_err(&j->err, 500, "server_error", NULL, NULL, "out of memory for the generated text");
            j->cancelled = 1;
        } else {
            j->text = p;
            j->text_cap = cap;
        }
    }
    if (!j->cancelled) {
        memcpy(j->text + j->text_len, text, len);
        j->text_len += len;
        j->text[j->text_len] = 0;
    }
    if (s->stopping) j->cancelled = 1;
    int stop = j->cancelled;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* The job is over (lock held): record, release the slot, wake the waiter,
 * drop the engine's reference. */
static void job_done_locked(ds4_server *s, srv_job *j, double now) {
    if (j->seq_live) {
        j->finish = j->seq.finish;
        j->prompt_tokens = j->seq.n_prompt;
        j->completion_tokens = j->seq.n_generated;
        ds4_seq_release(s->eng, &j->seq);
        j->seq_live = 0;
        s->met.finished[j->finish < 0 || j->finish > DS4_FINISH_ERROR ? DS4_FINISH_ERROR : j->finish]++;
        srv_hist_observe(&s->met.e2e, now - j->t_arrival);
    }
    if (j->cancelled && !j->err.status) {
        s->met.cancelled++;
        if (s->stopping)
            api_err(&j->err, 503, "server_error", "server_shutting_down", NULL,
                    "the server is shutting down: the request was cancelled");
        else
            api_err(&j->err, 499, "invalid_request_error", "client_closed_request", NULL,
                    "the client closed the connection");
    }
    if (j->finish == DS4_FINISH_ABORT && !j->err.status)      /* cannot happen: aborts come from cancels */
        api_err(&j->err, 500, "server_error", NULL, NULL, "generation stopped");
    if (j->finish == DS4_FINISH_ERROR && !j->err.status)
        api_err(&j->err, 500, "server_error", NULL, NULL, "generation failed");
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    srv_job_unref_locked(j);
}

/* KV-cache bytes held by live sequences (engine thread). */
static size_t kv_used(ds4_server *s, int n) {
    const ds4_kv_cache *kv = s->eng->kv;
    size_t rows = 0;
    for (int i = 0; i < n; i++) {
        int slot = s->active[i]->seq.slot;
        for (int l = 0; l < kv->n_layers; l++) rows += (size_t)kv->len[l][slot];
    }
    return rows * (size_t)kv->kv_dim * 2 * sizeof(float);
}

void *srv_engine_main(void *arg) {
    ds4_server *s = arg;
    int slots = s->eng->n_slots, n = 0, idle_trimmed = 1;
    ds4_seq **seqs = s->seqs;
    int *before = s->before;
    char errmsg[512];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        double now = srv_now();
        /* cancelled jobs leave first, so their slot serves the queue */
        for (int i = 0; i < n;) {
            srv_job *j = s->active[i];
            if (j->cancelled || s->stopping) {
                j->cancelled = 1;
                if (j->seq.finish == DS4_FINISH_NONE) j->seq.finish = DS4_FINISH_ABORT;
                job_done_locked(s, j, now);
                s->active[i] = s->active[--n];
            } else i++;
        }
        /* queued jobs whose client left go at once, even when no slot is free */
        for (srv_job **pp = &s->q_head, *prev = NULL; *pp;) {
            srv_job *j = *pp;
            if (j->cancelled || s->stopping) {
                j->cancelled = 1;
                *pp = j->next;
                if (s->q_tail == j) s->q_tail = prev;
                s->q_len--;
                job_done_locked(s, j, now);
            } else {
                prev = j;
                pp = &j->next;
            }
        }
        while (n < slots && s->q_head) {
            srv_job *j = s->q_head;
            s->q_head = j->next;
            if (!s->q_head) s->q_tail = NULL;
            s->q_len--;
            if (j->cancelled || s->stopping) { j->cancelled = 1; job_done_locked(s, j, now); continue; }
            if (ds4_seq_init(s->eng, &j->seq, j->prompt, j->n_prompt, &j->gp, on_text, j)) {
                api_err(&j->err, 400, "invalid_request_error", NULL, NULL, "%s", ds4_error());
                job_done_locked(s, j, now);
                continue;
            }
            j->seq_live = 1;
            j->state = JOB_RUNNING;
            s->met.prompt_tokens += (uint64_t)j->n_prompt;
            if (j->seq.finish != DS4_FINISH_NONE) { job_done_locked(s, j, now); continue; }   /* max_tokens 0 */
            s->active[n++] = j;
        }
        s->n_active = n;
        s->met.kv_used = kv_used(s, n);
        if (n == 0) {
            if (s->stopping) break;
            if (!idle_trimmed) {                     /* give memory back once the load is over */
                idle_trimmed = 1;
                pthread_mutex_unlock(&s->mu);
                malloc_trim(0);
                pthread_mutex_lock(&s->mu);
                continue;
            }
            pthread_cond_wait(&s->engine_cv, &s->mu);
            continue;
        }
        idle_trimmed = 0;
        for (int i = 0; i < n; i++) {
            seqs[i] = &s->active[i]->seq;
            before[i] = s->active[i]->seq.n_generated;
        }
        pthread_mutex_unlock(&s->mu);

        int r = ds4_engine_step(s->eng, seqs, n);
        if (r < 0) snprintf(errmsg, sizeof errmsg, "%s", ds4_error());
        if (s->o.throttle_ms > 0) usleep((useconds_t)s->o.throttle_ms * 1000);

        pthread_mutex_lock(&s->mu);
        now = srv_now();
        s->met.steps++;
        s->met.step_seqs += (uint64_t)n;
        if (n > s->met.max_step_seqs) s->met.max_step_seqs = n;
        for (int i = 0; i < n;) {
            srv_job *j = s->active[i];
            int fresh = j->seq.n_generated - before[i];
            if (fresh > 0) {
                if (before[i] == 0) srv_hist_observe(&s->met.ttft, now - j->t_arrival);
                else srv_hist_observe(&s->met.tpot, (now - j->t_last_token) / fresh);
                j->t_last_token = now;
                srv_metrics_tokens(&s->met, now, fresh);
            }
            if (j->seq.finish != DS4_FINISH_NONE) {
                if (j->seq.finish == DS4_FINISH_ERROR && r < 0)
                    api_err(&j->err, 500, "server_error", NULL, NULL, "generation failed: %s", errmsg);
                job_done_locked(s, j, now);
                s->active[i] = s->active[--n];
                before[i] = before[n];
            } else i++;
        }
        s->n_active = n;
        if (r < 0 && s->o.log) {
            char line[600];
            snprintf(line, sizeof line, "engine step failed: %s", errmsg);
            s->o.log(line, s->o.log_user);
        }
    }
    s->n_active = 0;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
