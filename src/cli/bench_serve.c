/* bench_serve.c — `ds4 bench serve`: starts `ds4 serve` as a child process
 * on a loopback port and drives it with ds4's own HTTP client at 1, 8, 32
 * and 64 concurrent streams for a fixed time each: aggregate tokens/s,
 * time to first token p50/p99, errors, and the server's RSS before and
 * after the load. Targets: no errors, 32 streams >= 3x one stream, RSS back
 * to its idle level. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "model/model.h"
#include "server/server.h"
#include "util/util.h"

#define MAX_PHASES 16
#define MAX_STREAMS 1024

typedef struct phase {
    int streams;
    long requests, errors, tokens;
    double wall_s, tok_s, ttft_p50, ttft_p99;
    double *ttft;                /* [cap] seconds, one per successful request */
    long n_ttft, cap;
    pthread_mutex_t mu;
} phase;

typedef struct bench {
    int port, max_tokens;
    const char *prompt;
    double deadline, timeout_s;
    phase *ph;
} bench;

/* ---- one streamed request --------------------------------------------------- */
typedef struct req_state {
    char  *buf;                  /* [len] bytes not yet split into events */
    size_t len, cap;
    double t0, ttft;             /* ttft < 0 until the first text arrives */
    long   tokens;
    int    done, bad;
} req_state;

static void on_event(req_state *r, char *ev) {
    if (strncmp(ev, "data: ", 6) != 0) return;
    const char *d = ev + 6;
    if (!strcmp(d, "[DONE]")) { r->done = 1; return; }
    cJSON *j = cJSON_Parse(d);
    if (!j) { r->bad = 1; return; }
    if (cJSON_GetObjectItem(j, "error")) r->bad = 1;
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *text = ch ? cJSON_GetObjectItem(ch, "text") : NULL;
    if (r->ttft < 0 && cJSON_IsString(text) && text->valuestring[0]) r->ttft = ds4_time_s() - r->t0;
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    cJSON *ct = u ? cJSON_GetObjectItem(u, "completion_tokens") : NULL;
    if (cJSON_IsNumber(ct)) r->tokens = (long)ct->valuedouble;
    cJSON_Delete(j);
}

static int on_body(const char *data, size_t n, void *user) {
    req_state *r = user;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4096;
        while (cap < r->len + n + 1) cap *= 2;
        char *p = realloc(r->buf, cap);
        if (!p) { r->bad = 1; return 1; }
        r->buf = p;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    r->buf[r->len] = 0;
    char *start = r->buf, *end;
    while ((end = strstr(start, "\n\n"))) {
        *end = 0;
        on_event(r, start);
        start = end + 2;
    }
    r->len -= (size_t)(start - r->buf);
    memmove(r->buf, start, r->len + 1);
    return 0;
}

typedef struct worker { bench *b; int id; } worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    bench *b = w->b;
    phase *ph = b->ph;
    char body[1024];
    for (long k = 0; ds4_time_s() < b->deadline; k++) {
        snprintf(body, sizeof body,
                 "{\"prompt\":\"%s %d.%ld\",\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%ld,"
                 "\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                 b->prompt, w->id, k, b->max_tokens, (long)w->id * 100000 + k);
        req_state r = {.t0 = ds4_time_s(), .ttft = -1};
        int status = 0;
        int rc = ds4_http_request("127.0.0.1", b->port, "POST", "/v1/completions", NULL, body, strlen(body),
                                  b->timeout_s, on_body, &r, &status);
        int ok = rc == 0 && status == 200 && r.done && !r.bad && r.tokens == b->max_tokens && r.ttft >= 0;
        pthread_mutex_lock(&ph->mu);
        ph->requests++;
        if (!ok) ph->errors++;
        if (rc == 0 && status == 200) ph->tokens += r.tokens;
        if (ok && ph->n_ttft < ph->cap) ph->ttft[ph->n_ttft++] = r.ttft;
        pthread_mutex_unlock(&ph->mu);
        free(r.buf);
        if (!ok && rc != 0) usleep(10000);       /* a refused connection: do not spin */
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, long n, double q) {
    if (n == 0) return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return v[i];
}

/* Run `streams` clients for duration_s; fills ph. */
static int run_phase(int port, int streams, double duration_s, int max_tokens, const char *prompt, phase *ph) {
    memset(ph, 0, sizeof *ph);
    pthread_mutex_init(&ph->mu, NULL);
    ph->streams = streams;
    ph->cap = 1 << 20;
    ph->ttft = malloc((size_t)ph->cap * sizeof *ph->ttft);
    if (!ph->ttft) return -1;
    bench b = {.port = port, .max_tokens = max_tokens, .prompt = prompt, .timeout_s = 120, .ph = ph};
    pthread_t th[MAX_STREAMS];
    worker w[MAX_STREAMS];
    double t0 = ds4_time_s();
    b.deadline = t0 + duration_s;
    int started = 0;
    for (int i = 0; i < streams; i++) {
        w[i] = (worker){&b, i};
        if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) break;
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    ph->wall_s = ds4_time_s() - t0;
    ph->tok_s = ph->wall_s > 0 ? ph->tokens / ph->wall_s : 0;
    qsort(ph->ttft, (size_t)ph->n_ttft, sizeof *ph->ttft, cmp_double);
    ph->ttft_p50 = pct(ph->ttft, ph->n_ttft, 0.50);
    ph->ttft_p99 = pct(ph->ttft, ph->n_ttft, 0.99);
    free(ph->ttft);
    ph->ttft = NULL;
    pthread_mutex_destroy(&ph->mu);
    return started == streams ? 0 : -1;
}

/* ---- the server process ------------------------------------------------------ */
static double rss_mib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtod(line + 6, NULL);
    fclose(f);
    return kb / 1024.0;
}

/* Start `ds4 serve` (this same binary); returns its pid and port. */
static pid_t start_server(const char *model, int slots, int ctx, int *port) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) { close(fds[0]); close(fds[1]); return -1; }
    if (pid == 0) {
        dup2(fds[1], 1);
        int null = open("/dev/null", O_WRONLY);          /* the server's log is not the bench's */
        if (null >= 0) dup2(null, 2);
        close(fds[0]);
        close(fds[1]);
        char s_slots[16], s_ctx[16], s_queue[16];
        snprintf(s_slots, sizeof s_slots, "%d", slots);
        snprintf(s_ctx, sizeof s_ctx, "%d", ctx);
        snprintf(s_queue, sizeof s_queue, "%d", MAX_STREAMS);
        char *argv[] = {"ds4", "serve", "--model", (char *)model, "--host", "127.0.0.1", "--port", "0",
                        "--slots", s_slots, "--ctx", s_ctx, "--queue", s_queue, "--quiet", NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    char out[4096];
    size_t n = 0;
    double t_end = ds4_time_s() + 120;
    *port = 0;
    while (!*port && ds4_time_s() < t_end && n + 1 < sizeof out) {
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t k = read(fds[0], out + n, sizeof out - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
        out[n] = 0;
        const char *m = strstr(out, "listening on http://127.0.0.1:");
        if (m && strchr(m, '\n')) *port = atoi(m + strlen("listening on http://127.0.0.1:"));
    }
    close(fds[0]);
    if (!*port) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* SIGTERM and wait (bounded); the exit status or -1. */
static int stop_server(pid_t pid) {
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int server_idle(int port) {
    int st = 0;
    return ds4_http_request("127.0.0.1", port, "GET", "/health", NULL, NULL, 0, 5, NULL, NULL, &st) == 0 && st == 200;
}

/* ---- a random model when none is given ---------------------------------------- */
static int make_model(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/ds4_bench_serve_XXXXXX");
    if (!mkdtemp(dir)) { ds4_set_error("bench serve: mkdtemp: %s", strerror(errno)); return -1; }
    /* a tokenizer from generated sentences, a 17.3M-preset model around it */
    static const char *W[] = {"the", "a", "red", "ball", "drops", "bounces", "on", "floor", "water", "flows",
                              "blue", "small", "large", "left", "right", "and", "then", "wall", "hits", "slowly"};
    size_t n = 0, cap_t = 1 << 20;
    char *text = malloc(cap_t);
    if (!text) return -1;
    ds4_rng r;
    ds4_rng_seed(&r, 1);
    while (n + 32 < cap_t) {
        const char *w = W[ds4_rng_u64(&r) % 20];
        n += (size_t)snprintf(text + n, cap_t - n, "%s%s", w, ds4_rng_u64(&r) % 9 ? " " : ". ");
    }
    ds4_tokenizer *tok = ds4_tokenizer_train(text, n, 1024, 0);
    free(text);
    if (!tok) return -1;
    ds4_config c;
    bench_preset_17m(&c);
    c.vocab_size = ds4_tokenizer_vocab_size(tok);
    ds4_model *m = ds4_model_create(&c, 1);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int rc = m && !ds4_model_save(m, dir) && !ds4_tokenizer_save(tok, path) ? 0 : -1;
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
    return rc;
}

static void remove_model(const char *dir) {
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    char path[600];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void help(void) {
    printf("usage: ds4 bench serve [--model DIR] [--streams LIST] [--duration S] [--max-tokens N]\n"
           "                       [--slots N] [--ctx N] [--warmup S] [--prompt TEXT] [--price-per-hour X]\n\n"
           "Starts `ds4 serve` on 127.0.0.1 (a child process) and drives it with ds4's own HTTP client:\n"
           "for each count in LIST (default 1,8,32,64), that many concurrent streamed completions\n"
           "(ignore_eos, --max-tokens each, default 64) back to back for --duration seconds (default 10).\n"
           "Reports aggregate generated tokens/s, time to first token p50/p99, errors (non-200, no\n"
           "[DONE], wrong usage), and the server's RSS at start, idle after a --warmup (default 3 s)\n"
           "at the largest count, and idle after the load. --model: default a random model of the\n"
           "17.3M preset (SPEC §4) made in a temporary folder. --slots defaults to the largest count.\n"
           "Targets: 0 errors; 32 streams >= 3x the tokens/s of 1 stream; RSS after <= idle + 5%%.\n");
}

int bench_serve(int argc, char **argv) {
    const char *cmd = "bench serve", *model = NULL, *prompt = "the red ball drops";
    int streams[MAX_PHASES] = {1, 8, 32, 64}, n_streams = 4;
    long max_tokens = 64, slots = 0, ctx = 256;
    double duration = 10, warmup = 3, price = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { help(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) {
            for (const char *p = v; *p; p++)
                if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) {
                    fprintf(stderr, "ds4 %s: --prompt must not contain quotes, backslashes or control characters\n", cmd);
                    return 2;
                }
            if (strlen(v) > 500) { fprintf(stderr, "ds4 %s: --prompt is too long\n", cmd); return 2; }
            prompt = v;
        } else if (!strcmp(a, "--streams")) {
            n_streams = 0;
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%s", v);
            for (char *t = strtok(tmp, ","); t; t = strtok(NULL, ",")) {
                long x;
                if (n_streams == MAX_PHASES || cli_int(cmd, a, t, 1, MAX_STREAMS, &x)) {
                    if (n_streams == MAX_PHASES) fprintf(stderr, "ds4 %s: at most %d counts\n", cmd, MAX_PHASES);
                    return 2;
                }
                streams[n_streams++] = (int)x;
            }
            if (!n_streams) { fprintf(stderr, "ds4 %s: --streams needs a list like 1,8,32\n", cmd); return 2; }
        }
        else if (!strcmp(a, "--max-tokens")) { if (cli_int(cmd, a, v, 1, 1 << 20, &max_tokens)) return 2; }
        else if (!strcmp(a, "--slots")) { if (cli_int(cmd, a, v, 1, 4096, &slots)) return 2; }
        else if (!strcmp(a, "--ctx")) { if (cli_int(cmd, a, v, 8, 1 << 20, &ctx)) return 2; }
        else if (!strcmp(a, "--duration")) { if (cli_float(cmd, a, v, &duration)) return 2; }
        else if (!strcmp(a, "--warmup")) { if (cli_float(cmd, a, v, &warmup)) return 2; }
        else if (!strcmp(a, "--price-per-hour")) { if (cli_float(cmd, a, v, &price)) return 2; }
        else return cli_unknown(cmd, a);
    }
    if (duration <= 0 || duration > 3600 || warmup < 0 || warmup > 600) {
        fprintf(stderr, "ds4 %s: --duration must be in (0, 3600] and --warmup in [0, 600]\n", cmd);
        return 2;
    }
    int max_streams = 0;
    for (int i = 0; i < n_streams; i++) max_streams = DS4_MAX(max_streams, streams[i]);
    if (!slots) slots = max_streams;

    char tmpdir[64] = "";
    if (!model) {
        printf("bench serve: making a random 17.3M-preset model ...\n");
        fflush(stdout);
        if (make_model(tmpdir, sizeof tmpdir)) return cli_fail(cmd);
        model = tmpdir;
    }
    int port = 0;
    pid_t pid = start_server(model, (int)slots, (int)ctx, &port);
    if (pid < 0) {
        fprintf(stderr, "ds4 %s: the server did not start (try: ds4 serve --model %s)\n", cmd, model);
        if (tmpdir[0]) remove_model(tmpdir);
        return 1;
    }
    double rss_start = rss_mib(pid);
    phase ph[MAX_PHASES + 1];
    int rc = 0;
    if (warmup > 0 && run_phase(port, max_streams, warmup, (int)max_tokens, prompt, &ph[MAX_PHASES])) rc = 1;
    usleep(1000000);
    double rss_idle = rss_mib(pid);
    for (int i = 0; i < n_streams && !rc; i++) {
        if (run_phase(port, streams[i], duration, (int)max_tokens, prompt, &ph[i])) rc = 1;
        printf("  %3d streams: %8.1f tok/s, %ld requests, %ld errors\n", streams[i], ph[i].tok_s,
               ph[i].requests, ph[i].errors);
        fflush(stdout);
    }
    usleep(1000000);
    int alive = server_idle(port);
    double rss_after = rss_mib(pid);
    int exit_status = stop_server(pid);
    if (tmpdir[0]) remove_model(tmpdir);
    if (rc) { fprintf(stderr, "ds4 %s: could not start the client threads\n", cmd); return 1; }

    struct utsname un;
    uname(&un);
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    printf("\nds4 bench serve — %s, %d slots, ctx %ld, %ld tokens per request, %.0f s per count, "
           "%s %s, %ld cores\n", model == tmpdir ? "random 17.3M-preset model" : model, (int)slots, ctx,
           max_tokens, duration, un.sysname, un.machine, nproc);
    printf("  streams  requests  errors    tokens   wall_s     tok/s  ttft_p50_ms  ttft_p99_ms%s\n",
           price > 0 ? "  $/1M tok" : "");
    long errors = 0;
    double tok1 = 0, tok32 = 0;
    for (int i = 0; i < n_streams; i++) {
        phase *p = &ph[i];
        errors += p->errors;
        if (p->streams == 1) tok1 = p->tok_s;
        if (p->streams == 32) tok32 = p->tok_s;
        printf("  %7d  %8ld  %6ld  %8ld  %7.2f  %8.1f  %11.1f  %11.1f", p->streams, p->requests, p->errors,
               p->tokens, p->wall_s, p->tok_s, p->ttft_p50 * 1e3, p->ttft_p99 * 1e3);
        if (price > 0) printf("  %9.4f", p->tok_s > 0 ? price / (3600 * p->tok_s) * 1e6 : 0.0);
        printf("\n");
    }
    double ratio = tok1 > 0 && tok32 > 0 ? tok32 / tok1 : 0;
    int rss_ok = rss_after <= rss_idle * 1.05 + 1.0;
    printf("  server RSS: %.1f MiB at start, %.1f MiB idle after warm-up, %.1f MiB idle after the load\n",
           rss_start, rss_idle, rss_after);
    printf("  targets: errors %ld (want 0) %s; 32 vs 1 stream %.2fx (want >= 3) %s; RSS after/idle %.3f "
           "(want <= 1.05) %s; server %s, exit status %d after SIGTERM\n",
           errors, errors == 0 ? "PASS" : "FAIL", ratio, ratio >= 3 ? "PASS" : (ratio > 0 ? "FAIL" : "n/a"),
           rss_idle > 0 ? rss_after / rss_idle : 0, rss_ok ? "PASS" : "FAIL", alive ? "alive" : "NOT ANSWERING",
           exit_status);

    printf("{\"bench\":\"serve\",\"model\":\"%s\",\"slots\":%ld,\"ctx\":%ld,\"max_tokens\":%ld,"
           "\"duration_s\":%.1f,\"cores\":%ld,\"phases\":[",
           model == tmpdir ? "random-17m" : model, slots, ctx, max_tokens, duration, nproc);
    for (int i = 0; i < n_streams; i++) {
        phase *p = &ph[i];
        printf("%s{\"streams\":%d,\"requests\":%ld,\"errors\":%ld,\"tokens\":%ld,\"wall_s\":%.3f,"
               "\"tok_s\":%.2f,\"ttft_p50_ms\":%.2f,\"ttft_p99_ms\":%.2f", i ? "," : "", p->streams,
               p->requests, p->errors, p->tokens, p->wall_s, p->tok_s, p->ttft_p50 * 1e3, p->ttft_p99 * 1e3);
        if (price > 0) printf(",\"usd_per_1m_tokens\":%.5f", p->tok_s > 0 ? price / (3600 * p->tok_s) * 1e6 : 0.0);
        printf("}");
    }
    printf("],\"ratio_32_vs_1\":%.3f,\"errors\":%ld,\"rss_start_mib\":%.1f,\"rss_idle_mib\":%.1f,"
           "\"rss_after_mib\":%.1f,\"server_exit\":%d,\"price_per_hour\":%.4f}\n",
           ratio, errors, rss_start, rss_idle, rss_after, exit_status, price);
    return errors == 0 && alive && exit_status == 0 ? 0 : 1;
}
