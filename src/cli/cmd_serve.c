/* cmd_serve.c — `ds4 serve`: load a model directory and run the
 * OpenAI-compatible HTTP server (src/server) until SIGINT/SIGTERM, then
 * finish in-flight requests for up to --grace seconds and cancel the rest.
 * A model with a video tokenizer also gets /v1/videos (world model). */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cli/cli.h"
#include "infer/infer.h"
#include "lora/lora.h"
#include "server/server.h"
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 serve --model DIR [options]\n\n"
        "OpenAI-compatible HTTP server with continuous batching. Endpoints:\n"
        "  GET  /health  /v1/models  /metrics (Prometheus)\n"
        "  POST /v1/completions  /v1/chat/completions (\"stream\": true for SSE)\n"
        "  POST /tokenize  /detokenize\n"
        "  POST /v1/videos  (a world model: its directory has video.safetensors)\n\n"
        "  --model DIR        model directory (config.json, model.safetensors, tokenizer.json)\n"
        "  --lora ADAPTER     apply a LoRA adapter (ds4 finetune, PEFT layout)\n"
        "  --host ADDR        numeric address to listen on (default 127.0.0.1)\n"
        "  --port N           port, 0 = any free one (default 8080)\n"
        "  --api-key KEY      require 'Authorization: Bearer KEY' (also $DS4_API_KEY)\n"
        "  --name NAME        model id in the API (default: the directory's name)\n"
        "  --slots N          sequences decoded together in one batch (default 8)\n"
        "  --queue N          requests waiting for a slot before 429 (default 64)\n"
        "  --ctx N            tokens per sequence, capped at max_position_embeddings (default: that)\n"
        "  --batch-tokens N   tokens per engine step: one per running sequence, prompts fill\n"
        "                     the rest; 0 = no bound (default max(256, 2 x slots))\n"
        "  --max-body BYTES   request body limit before 413 (default 1048576)\n"
        "  --max-connections N  open connections (default 512)\n"
        "  --grace S          on SIGTERM, seconds to let requests finish (default 10)\n"
        "  --throttle-ms MS   sleep after each engine step (testing aid, default 0)\n"
        "  --quiet            no request log on stderr\n\n"
        "Prints 'listening on http://HOST:PORT' on stdout once ready. A second\n"
        "SIGINT/SIGTERM cancels in-flight requests at once. Threads: OMP_NUM_THREADS;\n"
        "OpenMP spin-waiting is bounded (GOMP_SPINCOUNT=10000 unless set; see src/main.c).\n");
}

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void log_line(const char *line, void *user) {
    (void)user;
    time_t t = time(NULL);
    struct tm tm;
    char ts[32];
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "[%s] %s\n", ts, line);
    pthread_mutex_unlock(&log_mu);
}

/* POST /v1/videos through the world model: generate latent frames from the
 * prompt, decode them, write the GIF and trajectories into a temporary folder
 * with the world-model writer, hand the bytes to the server. */
static int serve_video(void *user, const ds4_server_video_req *r, ds4_server_video_out *out) {
    ds4_wm *w = user;
    const ds4_wm_layout *L = &w->L;
    long nf = lround(r->seconds * L->fps);
    int n_frames = nf < 1 ? 1 : (int)nf;
    int n_lat = (n_frames + L->tubelet - 1) / L->tubelet, rc = -1;
    int32_t *codes = ds4_malloc((size_t)n_lat * L->cpf * sizeof *codes);              /* [n_lat, cpf] */
    uint8_t *rgb = ds4_malloc((size_t)n_lat * L->tubelet * L->height * L->width * 3);  /* [T, H, W, 3] */
    char dir[64] = "", gif[128], json[128];
    size_t n;
    if (!codes || !rgb) goto out;
    ds4_wm_gen_params gp;
    ds4_wm_gen_params_default(&gp);
    gp.sampler.temperature = r->temperature;
    gp.sampler.top_p = r->top_p;
    gp.sampler.top_k = r->top_k;
    gp.sampler.seed = r->seed;
    if (r->guidance >= 0) gp.cfg_scale = r->guidance;
    if (ds4_sampler_params_validate(&gp.sampler)) goto out;
    ds4_wm_request rq = {.caption = r->prompt, .n_new = n_lat, .seed = r->seed, .out = codes};
    if (ds4_wm_generate(w, &rq, 1, &gp, NULL) || ds4_wm_decode(w, codes, n_lat, rgb)) goto out;
    snprintf(dir, sizeof dir, "/tmp/ds4_serve_video_XXXXXX");
    if (!mkdtemp(dir)) { dir[0] = 0; ds4_set_error("video: cannot make a temporary folder"); goto out; }
    snprintf(gif, sizeof gif, "%s/clip.gif", dir);
    snprintf(json, sizeof json, "%s/clip.json", dir);
    ds4_wm_output oo = {.gif = gif, .json = json, .scale = r->scale, .fps = r->fps};
    ds4_wm_output_info info;
    if (ds4_wm_write_clip(&oo, rgb, n_frames, L->width, L->height, L->fps, L->width / DS4_WORLD_WIDTH_M, 0,
                          r->prompt, &info))
        goto out;
    if (ds4_read_file(gif, (char **)&out->gif, &out->gif_len) || ds4_read_file(json, &out->trajectories, &n))
        goto out;
    out->n_frames = info.n_frames;
    out->fps = info.fps;
    rc = 0;
out:
    if (dir[0]) {
        unlink(gif);
        unlink(json);
        rmdir(dir);
    }
    free(codes);
    free(rgb);
    return rc;
}

/* The last path component of dir (without trailing slashes) into out. */
static void dir_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
    if (!out[0]) snprintf(out, cap, "ds4");
}

int cmd_serve(int argc, char **argv) {
    const char *cmd = "serve", *model_dir = NULL, *name = NULL, *lora = NULL;
    ds4_server_opts o;
    ds4_server_opts_default(&o);
    o.api_key = getenv("DS4_API_KEY");
    double grace = 10;
    int quiet = 0, batch_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--lora")) lora = v;
        else if (!strcmp(a, "--host")) o.host = v;
        else if (!strcmp(a, "--api-key")) o.api_key = v;
        else if (!strcmp(a, "--name")) name = v;
        else if (!strcmp(a, "--port")) { if (cli_int(cmd, a, v, 0, 65535, &n)) return 2; o.port = (int)n; }
        else if (!strcmp(a, "--slots")) { if (cli_int(cmd, a, v, 1, 4096, &n)) return 2; o.slots = (int)n; }
        else if (!strcmp(a, "--queue")) { if (cli_int(cmd, a, v, 0, 1 << 20, &n)) return 2; o.queue = (int)n; }
        else if (!strcmp(a, "--ctx")) { if (cli_int(cmd, a, v, 1, 1 << 24, &n)) return 2; o.ctx = (int)n; }
        else if (!strcmp(a, "--batch-tokens")) {
            if (cli_int(cmd, a, v, 0, 1 << 24, &n)) return 2;
            o.batch_tokens = (int)n;
            batch_set = 1;
        }
        else if (!strcmp(a, "--max-body")) { if (cli_int(cmd, a, v, 16, 1L << 32, &n)) return 2; o.max_body = (size_t)n; }
        else if (!strcmp(a, "--max-connections")) { if (cli_int(cmd, a, v, 1, 65536, &n)) return 2; o.max_connections = (int)n; }
        else if (!strcmp(a, "--throttle-ms")) { if (cli_int(cmd, a, v, 0, 60000, &n)) return 2; o.throttle_ms = (int)n; }
        else if (!strcmp(a, "--grace")) {
            if (cli_float(cmd, a, v, &grace)) return 2;
            if (grace < 0) { fprintf(stderr, "ds4 %s: --grace must be >= 0\n", cmd); return 2; }
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir) { fprintf(stderr, "ds4 %s: --model DIR is required (see --help)\n", cmd); return 2; }
    if (!batch_set && o.batch_tokens <= o.slots) o.batch_tokens = 2 * o.slots;
    char dname[256];
    dir_name(model_dir, dname, sizeof dname);
    o.model_name = name ? name : dname;
    if (!quiet) o.log = log_line;

    /* Signals go to this thread only (sigwait below): block them before any
     * server thread exists, so every thread inherits the mask. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    ds4_model *m;
    ds4_tokenizer *tok;
    if (ds4_open_model_lora(model_dir, lora, &m, &tok)) return cli_fail(cmd);
    /* a model with a video tokenizer also answers /v1/videos */
    ds4_wm *wm = NULL;
    char vpath[4200];
    snprintf(vpath, sizeof vpath, "%s/video.safetensors", model_dir);
    if (m->cfg.video.enabled && ds4_file_exists(vpath)) {
        if (!(wm = ds4_wm_open(model_dir)))
            fprintf(stderr, "ds4 %s: /v1/videos is off: %s\n", cmd, ds4_error());
        o.video = serve_video;
        o.video_user = wm;
        if (!wm) o.video = NULL;
    }
    ds4_server *s = ds4_server_start(m, tok, &o);
    if (!s) {
        cli_fail(cmd);
        ds4_wm_free(wm);
        ds4_tokenizer_free(tok);
        ds4_model_free(m);
        return 1;
    }
    const ds4_config *c = &m->cfg;
    size_t kv = (size_t)c->num_hidden_layers * ds4_server_slots(s) * ds4_server_capacity(s) *
                c->num_key_value_heads * c->head_dim * 2 * sizeof(float);
    printf("ds4 serve: model '%s' (%.2fM parameters), %d slots x %d tokens, KV cache %.1f MiB\n",
           o.model_name, ds4_model_n_params(m) / 1e6, ds4_server_slots(s), ds4_server_capacity(s),
           kv / 1048576.0);
    int v6 = strchr(o.host, ':') != NULL;
    if (wm) printf("ds4 serve: /v1/videos on (%dx%d at %d fps, video tokenizer in %s)\n",
                   wm->L.width, wm->L.height, wm->L.fps, model_dir);
    printf("listening on http://%s%s%s:%d\n", v6 ? "[" : "", o.host, v6 ? "]" : "", ds4_server_port(s));
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "ds4 serve: %s: finishing in-flight requests (up to %.0f s; again to cancel them)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", grace);
    ds4_server_drain(s);
    double t_end = ds4_time_s() + grace;
    struct timespec tick = {0, 50 * 1000000L};
    while (ds4_server_busy(s) > 0 && ds4_time_s() < t_end) {
        if (sigtimedwait(&sigs, NULL, &tick) > 0) {
            fprintf(stderr, "ds4 serve: cancelling in-flight requests\n");
            break;
        }
    }
    int left = ds4_server_busy(s);
    ds4_server_stop(s);
    fprintf(stderr, "ds4 serve: stopped (%d request%s cancelled)\n", left, left == 1 ? "" : "s");
    ds4_wm_free(wm);
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return 0;
}
