/* test_server_unit.c — server pieces checked against hand-computed values
 * (UTF-8 cleaning as a WHATWG decoder does it, the chat template, histogram
 * buckets), and an in-process server on a loopback port exercised with the
 * ds4 HTTP client: plain and streamed completions against ds4_generate,
 * status codes, a stop with a stream in flight (no hang, no leak), and
 * /v1/videos through a stand-in video function (base64 checked against
 * Python's). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "server/internal.h"
#include "testmodel.h"

/* ---- UTF-8 cleaning ---------------------------------------------------------- */
static void check_clean(const char *in, size_t n, const char *want) {
    char *out = srv_utf8_clean(in, n);
    assert_non_null(out);
    if (strcmp(out, want) != 0) {
        print_message("input of %zu bytes: got '%s' want '%s'\n", n, out, want);
        fail();
    }
    free(out);
}

#define R "\xEF\xBF\xBD"   /* U+FFFD */

static void test_utf8_clean(void **st) {
    (void)st;
    check_clean("plain ascii", 11, "plain ascii");
    check_clean("caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80", 14, "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80");
    /* the WHATWG / Unicode "maximal subpart" replacements */
    check_clean("\xF0\x90\x80" "A", 4, R "A");                /* truncated 4-byte: one U+FFFD */
    check_clean("\xE2\x82", 2, R);                            /* truncated at the end */
    check_clean("\xC0\xAF", 2, R R);                          /* overlong lead: never valid */
    check_clean("\xED\xA0\x80", 3, R R R);                    /* a surrogate */
    check_clean("\xF4\x90\x80\x80", 4, R R R R);              /* above U+10FFFF */
    check_clean("\xE0\x80\x80", 3, R R R);                    /* overlong 3-byte */
    check_clean("a\xFF" "b\x80" "c", 5, "a" R "b" R "c");
    check_clean("x\0y", 3, "x" R "y");                        /* NUL cannot go into cJSON */
    check_clean("\xF0\x9F\x98", 3, R);
    check_clean("\xF0\x9F\x98" "\xF0\x9F\x98\x80", 7, R "\xF0\x9F\x98\x80");
    /* random bytes: cleaning is idempotent and valid text passes unchanged */
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    for (int t = 0; t < 2000; t++) {
        unsigned char buf[16];
        size_t n = 1 + ds4_rng_u64(&r) % sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(ds4_rng_u64(&r) % 6 == 0 ? ds4_rng_u64(&r) : 0x80 + ds4_rng_u64(&r) % 0x78);
        char *a = srv_utf8_clean((const char *)buf, n);
        char *b = srv_utf8_clean(a, strlen(a));
        assert_string_equal(a, b);
        free(a); free(b);
    }
}

/* ---- chat template ------------------------------------------------------------- */
static void test_chat_template(void **st) {
    (void)st;
    api_error e = {0};
    cJSON *m = cJSON_Parse("[{\"role\":\"system\",\"content\":\"be brief\"},"
                           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi \"},"
                           "{\"type\":\"text\",\"text\":\"there\"}]},"
                           "{\"role\":\"assistant\",\"content\":null}]");
    char *t = srv_chat_render(m, &e);
    assert_non_null(t);
    assert_string_equal(t, "<|system|>\nbe brief\n<|user|>\nhi there\n<|assistant|>\n\n<|assistant|>\n");
    free(t);
    cJSON_Delete(m);
    const char *bad[] = {"[]", "{}", "[{\"content\":\"x\"}]", "[{\"role\":\"robot\",\"content\":\"x\"}]",
                         "[{\"role\":\"user\",\"content\":5}]", "[3]",
                         "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]",
                         "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        m = cJSON_Parse(bad[i]);
        assert_null(srv_chat_render(m, &e));
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, "messages");
        cJSON_Delete(m);
    }
}

/* ---- histograms ------------------------------------------------------------------- */
static void test_histogram(void **st) {
    (void)st;
    srv_metrics m;
    srv_metrics_init(&m);
    /* ttft buckets: 0.005 0.01 0.025 0.05 0.1 ... 30 */
    double v[] = {0.001, 0.005, 0.0051, 0.2, 100};
    for (int i = 0; i < 5; i++) srv_hist_observe(&m.ttft, v[i]);
    assert_int_equal(m.ttft.cnt[0], 2);          /* le 0.005 includes the bound */
    assert_int_equal(m.ttft.cnt[1], 1);
    assert_int_equal(m.ttft.cnt[5], 1);          /* 0.2 in (0.1, 0.25] */
    assert_int_equal(m.ttft.cnt[m.ttft.n], 1);   /* +Inf */
    assert_int_equal(m.ttft.count, 5);
    assert_true(m.ttft.sum > 100.21 && m.ttft.sum < 100.22);
    srv_metrics_request(&m, EP_CHAT, 200);
    srv_metrics_request(&m, EP_CHAT, 200);
    srv_metrics_request(&m, EP_CHAT, 400);
    assert_int_equal(m.n_req, 2);
    assert_int_equal(m.req[0].n, 2);
}

/* ---- an in-process server ------------------------------------------------------------ */
static const char CORPUS[] =
    "the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat.\n"
    "one two three four five six seven eight nine ten. the cat ran. the dog ran.\n";

typedef struct {
    ds4_tokenizer *tok;
    ds4_model *m;
} fixture;

static int setup(void **st) {
    fixture *f = calloc(1, sizeof *f);
    f->tok = ds4_tokenizer_train(CORPUS, sizeof CORPUS - 1, 280, 0);
    if (!f->tok) fail_msg("tokenizer: %s", ds4_error());
    f->m = tiny_text_model(f->tok, 64, 5);
    if (!f->m) fail_msg("model: %s", ds4_error());
    *st = f;
    return 0;
}

static int teardown(void **st) {
    fixture *f = *st;
    ds4_model_free(f->m);
    ds4_tokenizer_free(f->tok);
    free(f);
    return 0;
}

typedef struct { srv_buf b; int stop_after; int seen; } sink;
static int collect(const char *d, size_t n, void *user) {
    sink *k = user;
    srv_buf_add(&k->b, d, n);
    return k->stop_after && ++k->seen >= k->stop_after;
}

static int post(ds4_server *s, const char *path, const char *body, const char *hdr, sink *k) {
    int status = 0;
    memset(k, 0, sizeof *k);
    int rc = ds4_http_request("127.0.0.1", ds4_server_port(s), "POST", path, hdr, body, strlen(body),
                              20.0, collect, k, &status);
    assert_int_equal(rc, 0);
    return status;
}

static int gen_collect(const char *t, size_t n, void *user) {
    srv_buf_add(user, t, n);
    return 0;
}

static void test_server_roundtrip(void **st) {
    fixture *f = *st;
    ds4_server_opts o;
    ds4_server_opts_default(&o);
    o.port = 0;
    o.slots = 3;
    o.api_key = "k1";
    o.max_body = 4096;
    ds4_server *s = ds4_server_start(f->m, f->tok, &o);
    assert_non_null(s);
    assert_true(ds4_server_port(s) > 0);
    const char *auth = "Authorization: Bearer k1\r\n";
    sink k;

    /* greedy completion = ds4_generate; text through cJSON */
    assert_int_equal(post(s, "/v1/completions", "{\"prompt\":\"the cat\",\"max_tokens\":9,\"temperature\":0,"
                                                 "\"ignore_eos\":true}", auth, &k), 200);
    cJSON *j = cJSON_Parse(k.b.p);
    assert_non_null(j);
    const char *text = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text")->valuestring;
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    p.sampler.temperature = 0;
    p.max_tokens = 9;
    p.ignore_eos = 1;
    srv_buf want = {0};
    srv_buf_add(&want, "", 0);
    assert_int_equal(ds4_generate(f->m, f->tok, "the cat", &p, gen_collect, &want, NULL), 0);
    char *clean = srv_utf8_clean(want.p, want.len);
    assert_string_equal(text, clean);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint, 9);
    cJSON_Delete(j);
    free(k.b.p);

    /* the same streamed (chunked transfer + SSE): the pieces join to the same text */
    assert_int_equal(post(s, "/v1/completions", "{\"prompt\":\"the cat\",\"max_tokens\":9,\"temperature\":0,"
                                                 "\"ignore_eos\":true,\"stream\":true}", auth, &k), 200);
    srv_buf joined = {0};
    srv_buf_add(&joined, "", 0);
    int events = 0, done = 0;
    for (char *line = strtok(k.b.p, "\n"); line; line = strtok(NULL, "\n")) {
        assert_true(!strncmp(line, "data: ", 6));
        events++;
        if (!strcmp(line + 6, "[DONE]")) { done = 1; continue; }
        cJSON *c = cJSON_Parse(line + 6);
        assert_non_null(c);
        cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0);
        const char *t = cJSON_GetObjectItem(ch, "text")->valuestring;
        srv_buf_add(&joined, t, strlen(t));
        cJSON_Delete(c);
    }
    assert_true(done);
    assert_true(events >= 3);
    assert_string_equal(joined.p, clean);
    free(joined.p); free(clean); free(want.p); free(k.b.p);

    /* status codes */
    assert_int_equal(post(s, "/v1/completions", "{\"prompt\":\"x\"}", NULL, &k), 401);
    free(k.b.p);
    assert_int_equal(post(s, "/v1/completions", "{\"prompt\":", auth, &k), 400);
    assert_non_null(strstr(k.b.p, "\"error\""));
    free(k.b.p);
    char big[5000];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(post(s, "/v1/completions", big, auth, &k), 413);
    free(k.b.p);
    assert_int_equal(post(s, "/v1/nope", "{}", auth, &k), 404);
    free(k.b.p);
    int status = 0;
    assert_int_equal(ds4_http_request("127.0.0.1", ds4_server_port(s), "GET", "/health", NULL, NULL, 0, 5.0,
                                      NULL, NULL, &status), 0);
    assert_int_equal(status, 200);

    /* a client that stops reading mid-stream and closes: its slot is freed */
    const char *body = "{\"prompt\":\"the\",\"max_tokens\":60,\"ignore_eos\":true,\"stream\":true}";
    memset(&k, 0, sizeof k);
    k.stop_after = 1;
    ds4_server_stop(s);
    o.throttle_ms = 20;                        /* 60 tokens take 1.2 s */
    s = ds4_server_start(f->m, f->tok, &o);
    assert_non_null(s);
    assert_int_equal(ds4_http_request("127.0.0.1", ds4_server_port(s), "POST", "/v1/completions", auth,
                                      body, strlen(body), 20.0, collect, &k, &status), 0);
    assert_int_equal(status, 200);
    free(k.b.p);
    double t0 = ds4_time_s();
    while (ds4_server_busy(s) > 0 && ds4_time_s() - t0 < 2.0) usleep(5000);
    assert_int_equal(ds4_server_busy(s), 0);
    assert_true(ds4_time_s() - t0 < 0.6);
    ds4_server_stop(s);
}

typedef struct { ds4_server *s; int rc, status; sink k; } bg_req;
static void *bg_stream(void *arg) {
    bg_req *b = arg;
    const char *body = "{\"prompt\":\"the\",\"max_tokens\":60,\"ignore_eos\":true,\"stream\":true}";
    b->rc = ds4_http_request("127.0.0.1", ds4_server_port(b->s), "POST", "/v1/completions", NULL,
                             body, strlen(body), 20.0, collect, &b->k, &b->status);
    return NULL;
}

static void test_server_stop_in_flight(void **st) {
    fixture *f = *st;
    ds4_server_opts o;
    ds4_server_opts_default(&o);
    o.port = 0;
    o.slots = 1;
    o.throttle_ms = 20;
    ds4_server *s = ds4_server_start(f->m, f->tok, &o);
    assert_non_null(s);
    bg_req b = {.s = s};
    pthread_t t;
    pthread_create(&t, NULL, bg_stream, &b);
    for (int i = 0; i < 200 && ds4_server_busy(s) == 0; i++) usleep(5000);
    assert_int_equal(ds4_server_busy(s), 1);
    usleep(100000);
    double t0 = ds4_time_s();
    ds4_server_stop(s);                        /* cancels: the stream gets an error event and [DONE] */
    pthread_join(t, NULL);
    assert_true(ds4_time_s() - t0 < 3.0);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.status, 200);
    if (!strstr(b.k.b.p, "shutting down")) print_message("stream body: %s\n", b.k.b.p);
    assert_non_null(strstr(b.k.b.p, "shutting down"));
    assert_non_null(strstr(b.k.b.p, "data: [DONE]"));
    free(b.k.b.p);

    /* bad options are errors, not crashes */
    o.slots = 0;
    assert_null(ds4_server_start(f->m, f->tok, &o));
    o.slots = 1;
    o.host = "not-an-address";
    assert_null(ds4_server_start(f->m, f->tok, &o));
    assert_non_null(strstr(ds4_error(), "not-an-address"));
    o.host = "127.0.0.1";
    assert_null(ds4_server_start(f->m, NULL, &o));
}

/* ---- /v1/videos through a caller's function ---------------------------------------- */
typedef struct { int calls, fail, sleep_ms; ds4_server_video_req last; char prompt[64]; } fake_video;

static int fake_video_fn(void *user, const ds4_server_video_req *r, ds4_server_video_out *out) {
    fake_video *f = user;
    f->calls++;
    f->last = *r;
    snprintf(f->prompt, sizeof f->prompt, "%s", r->prompt);      /* r->prompt dies with the request */
    if (f->sleep_ms) usleep((useconds_t)f->sleep_ms * 1000);
    if (f->fail) { ds4_set_error("fake failure"); return -1; }
    static const unsigned char gif[] = "GIF89a\x00\xff";            /* 8 bytes, known base64 */
    out->gif = malloc(8);
    memcpy(out->gif, gif, 8);
    out->gif_len = 8;
    out->trajectories = strdup("{\"frames\":[{\"i\":0}],\"g\":9.8}");
    out->n_frames = 24;
    out->fps = 12;
    return 0;
}

typedef struct { ds4_server *s; int status; } bg_video;
static void *bg_video_req(void *arg) {
    bg_video *b = arg;
    const char *body = "{\"prompt\":\"slow\",\"seconds\":1}";
    ds4_http_request("127.0.0.1", ds4_server_port(b->s), "POST", "/v1/videos", NULL, body, strlen(body),
                     20.0, NULL, NULL, &b->status);
    return NULL;
}

static void test_server_videos(void **st) {
    fixture *f = *st;
    fake_video fv = {0};
    ds4_server_opts o;
    ds4_server_opts_default(&o);
    o.port = 0;
    o.video = fake_video_fn;
    o.video_user = &fv;
    ds4_server *s = ds4_server_start(f->m, f->tok, &o);
    assert_non_null(s);
    sink k;
    assert_int_equal(post(s, "/v1/videos", "{\"prompt\":\"a red ball\",\"seconds\":2,\"fps\":12,\"seed\":5,"
                                            "\"temperature\":0.5,\"scale\":2,\"guidance_scale\":2.5}", NULL, &k), 200);
    assert_int_equal(fv.calls, 1);
    assert_string_equal(fv.prompt, "a red ball");
    assert_true(fv.last.seconds == 2 && fv.last.fps == 12 && fv.last.seed == 5 && fv.last.scale == 2);
    assert_true(fv.last.temperature == 0.5f && fv.last.guidance == 2.5f);
    cJSON *j = cJSON_Parse(k.b.p);
    assert_non_null(j);
    cJSON *d = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    assert_string_equal(cJSON_GetObjectItem(d, "b64_json")->valuestring, "R0lGODlhAP8=");   /* python base64 */
    assert_string_equal(cJSON_GetObjectItem(d, "mime_type")->valuestring, "image/gif");
    assert_true(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "trajectories"), "g")->valuedouble == 9.8);
    assert_int_equal(cJSON_GetObjectItem(j, "n_frames")->valueint, 24);
    cJSON_Delete(j);
    free(k.b.p);
    /* raw GIF bytes */
    assert_int_equal(post(s, "/v1/videos", "{\"prompt\":\"x\",\"response_format\":\"gif\"}", NULL, &k), 200);
    assert_int_equal(k.b.len, 8);
    assert_memory_equal(k.b.p, "GIF89a\x00\xff", 8);
    free(k.b.p);
    /* bad requests never reach the function; its failure is a 500 */
    int before = fv.calls;
    const char *bad[] = {"{}", "{\"prompt\":3}", "{\"prompt\":\"x\",\"seconds\":0}", "{\"prompt\":\"x\",\"seconds\":61}",
                         "{\"prompt\":\"x\",\"fps\":0}", "{\"prompt\":\"x\",\"response_format\":\"mp4\"}",
                         "{\"prompt\":\"x\",\"scale\":9}", "{\"prompt\":\"x\",\"top_p\":0}",
                         "{\"prompt\":\"x\",\"guidance_scale\":-1}", "{\"prompt\":\"x\",\"guidance_scale\":\"2\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(post(s, "/v1/videos", bad[i], NULL, &k), 400);
        free(k.b.p);
    }
    assert_int_equal(fv.calls, before);
    fv.fail = 1;
    assert_int_equal(post(s, "/v1/videos", "{\"prompt\":\"x\"}", NULL, &k), 500);
    assert_non_null(strstr(k.b.p, "fake failure"));
    free(k.b.p);
    /* one at a time: a second request while one runs is 429 */
    fv.fail = 0;
    fv.sleep_ms = 400;
    bg_video b = {.s = s};
    pthread_t t;
    pthread_create(&t, NULL, bg_video_req, &b);
    for (int i = 0; i < 200 && fv.calls == before + 1; i++) usleep(5000);
    usleep(50000);
    assert_int_equal(post(s, "/v1/videos", "{\"prompt\":\"x\"}", NULL, &k), 429);
    free(k.b.p);
    pthread_join(t, NULL);
    assert_int_equal(b.status, 200);
    ds4_server_stop(s);
    /* no function: 400 naming the missing video tokenizer */
    o.video = NULL;
    s = ds4_server_start(f->m, f->tok, &o);
    assert_int_equal(post(s, "/v1/videos", "{\"prompt\":\"x\"}", NULL, &k), 400);
    assert_non_null(strstr(k.b.p, "video tokenizer"));
    free(k.b.p);
    ds4_server_stop(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_clean),
        cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test_setup_teardown(test_server_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_stop_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_videos, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
