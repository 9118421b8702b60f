/* test_infer_cli.c — the `ds4 generate`, `ds4 eval` and `ds4 logits`
 * commands run as a user would (the built binary, $DS4_BIN) on a saved tiny
 * model, checked against the library called in-process; argument errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "infer/infer.h"
#include "testmodel.h"

static const char CORPUS[] =
    "the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat.\n"
    "one two three four five six seven eight nine ten. the cat ran. the dog ran.\n"
    "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9. the end.\n";

typedef struct {
    const char *bin;
    char dir[256], model[300], data[300], out[300], err[300];
    ds4_tokenizer *tok;
    ds4_model *m;
} fixture;

static int setup(void **st) {
    fixture *f = calloc(1, sizeof *f);
    f->bin = getenv("DS4_BIN");
    strcpy(f->dir, "/tmp/ds4_test_infer_cli_XXXXXX");
    if (!mkdtemp(f->dir)) fail_msg("mkdtemp failed");
    snprintf(f->model, sizeof f->model, "%s/model", f->dir);
    snprintf(f->data, sizeof f->data, "%s/data.txt", f->dir);
    snprintf(f->out, sizeof f->out, "%s/logits.bin", f->dir);
    snprintf(f->err, sizeof f->err, "%s/stderr.txt", f->dir);
    f->tok = ds4_tokenizer_train(CORPUS, sizeof CORPUS - 1, 290, 0);
    if (!f->tok) fail_msg("tokenizer: %s", ds4_error());
    f->m = tiny_text_model(f->tok, 48, 5);
    if (!f->m) fail_msg("model: %s", ds4_error());
    char path[400];
    if (ds4_model_save(f->m, f->model)) fail_msg("save: %s", ds4_error());
    snprintf(path, sizeof path, "%s/tokenizer.json", f->model);
    if (ds4_tokenizer_save(f->tok, path)) fail_msg("tokenizer save: %s", ds4_error());
    if (ds4_write_file_atomic(f->data, CORPUS, sizeof CORPUS - 1)) fail_msg("%s", ds4_error());
    *st = f;
    return 0;
}

static int teardown(void **st) {
    fixture *f = *st;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    ds4_model_free(f->m);
    ds4_tokenizer_free(f->tok);
    free(f);
    return 0;
}

/* Run "$DS4_BIN ARGS" (ARGS already shell-quoted), stdout into *out
 * (malloc'd), stderr into f->err. Returns the exit status. */
static int ds4(fixture *f, char **out, const char *fmt, ...) {
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s 2>'%s'", f->bin, args, f->err);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - 1 - n, p)) > 0) n += k;
    buf[n] = 0;
    int status = pclose(p);
    if (out) *out = buf; else free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int err_has(fixture *f, const char *needle) {
    char *e = NULL;
    size_t n;
    if (ds4_read_file(f->err, &e, &n)) return 0;
    int r = strstr(e, needle) != NULL;
    if (!r) print_message("stderr was: %s\n", e);
    free(e);
    return r;
}

static int have_bin(fixture *f) {
    if (f->bin && access(f->bin, X_OK) == 0) return 1;
    print_message("SKIPPED: DS4_BIN is not set to the built ds4 binary\n");
    return 0;
}

static void test_logits(void **st) {
    fixture *f = *st;
    if (!have_bin(f)) return;
    int V = f->m->cfg.vocab_size;
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '3, 17,250,0' --out '%s'", f->model, f->out), 0);
    char *data; size_t n;
    assert_int_equal(ds4_read_file(f->out, &data, &n), 0);
    assert_int_equal(n, (size_t)4 * V * sizeof(float));
    float *ref = malloc((size_t)4 * V * sizeof *ref);
    int ids[4] = {3, 17, 250, 0};
    assert_int_equal(ds4_forward_logits(f->m, ids, 4, ref), 0);
    float d = 0;
    for (int i = 0; i < 4 * V; i++) {
        const unsigned char *b = (const unsigned char *)data + 4 * i;   /* little-endian */
        uint32_t u = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
        float x;
        memcpy(&x, &u, 4);
        d = fmaxf(d, fabsf(x - ref[i]));
    }
    assert_true(d < 1e-5f);
    free(ref); free(data);
    /* argument errors */
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '3,%d' --out '%s'", f->model, V, f->out), 1);
    assert_true(err_has(f, "vocab_size"));
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '' --out '%s'", f->model, f->out), 2);
    assert_true(err_has(f, "empty"));
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '1,x' --out '%s'", f->model, f->out), 2);
    assert_true(err_has(f, "'x'"));
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '1,-4' --out '%s'", f->model, f->out), 2);
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens '1,2,' --out '%s'", f->model, f->out), 2);
    assert_int_equal(ds4(f, NULL, "logits --model '%s/nope' --tokens 1 --out '%s'", f->dir, f->out), 1);
    assert_true(err_has(f, "nope"));
    assert_int_equal(ds4(f, NULL, "logits --model '%s' --tokens 1", f->model), 2);
    assert_true(err_has(f, "--out"));
    assert_int_equal(ds4(f, NULL, "logits --bogus"), 2);
    char *help;
    assert_int_equal(ds4(f, &help, "logits --help"), 0);
    assert_non_null(strstr(help, "--tokens"));
    free(help);
}

typedef struct { char buf[8192]; size_t len; } sink;
static int collect(const char *text, size_t len, void *user) {
    sink *k = user;
    memcpy(k->buf + k->len, text, len);
    k->len += len;
    return 0;
}

static void test_generate(void **st) {
    fixture *f = *st;
    if (!have_bin(f)) return;
    char *out;
    assert_int_equal(ds4(f, &out, "generate --model '%s' --prompt 'the cat' -n 20 --temp 0.8 --seed 7 "
                           "--top-k 40 --top-p 0.95 --min-p 0.01", f->model), 0);
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    p.sampler.temperature = 0.8f; p.sampler.seed = 7; p.sampler.top_k = 40;
    p.sampler.top_p = 0.95f; p.sampler.min_p = 0.01f;
    p.max_tokens = 20;
    sink k = {0};
    ds4_gen_stats gs;
    assert_int_equal(ds4_generate(f->m, f->tok, "the cat", &p, collect, &k, &gs), 0);
    k.buf[k.len++] = '\n';                            /* the command ends with a newline */
    assert_memory_equal(out, k.buf, k.len);
    assert_true(err_has(f, "prompt"));
    free(out);
    /* --stop and --no-bos are accepted; deterministic for a seed */
    char *o1, *o2;
    assert_int_equal(ds4(f, &o1, "generate --model '%s' --prompt x -n 10 --no-bos --stop zz --stop qq --ctx 8",
                         f->model), 0);
    assert_int_equal(ds4(f, &o2, "generate --model '%s' --prompt x -n 10 --no-bos --stop zz --stop qq --ctx 8",
                         f->model), 0);
    assert_string_equal(o1, o2);
    free(o1); free(o2);
    /* errors */
    assert_int_equal(ds4(f, NULL, "generate --model '%s' --prompt x --top-p 1.5", f->model), 1);
    assert_true(err_has(f, "top_p"));
    assert_int_equal(ds4(f, NULL, "generate --model '%s' --prompt x -n -3", f->model), 2);
    assert_int_equal(ds4(f, NULL, "generate --model '%s' --prompt x --temp abc", f->model), 2);
    assert_int_equal(ds4(f, NULL, "generate --model '%s'", f->model), 2);
    assert_true(err_has(f, "--prompt"));
    assert_int_equal(ds4(f, NULL, "generate --model '%s' --prompt x -n", f->model), 2);
    assert_int_equal(ds4(f, NULL, "generate --model '%s' --prompt \"$(head -c 400 /dev/zero | tr '\\0' a)\"",
                         f->model), 1);
    assert_true(err_has(f, "context"));
    char *help;
    assert_int_equal(ds4(f, &help, "generate --help"), 0);
    assert_non_null(strstr(help, "--top-p"));
    free(help);
}

static void test_eval(void **st) {
    fixture *f = *st;
    if (!have_bin(f)) return;
    char *out;
    assert_int_equal(ds4(f, &out, "eval --model '%s' --data '%s' --ctx 16", f->model, f->data), 0);
    const char *j = strstr(out, "{\"loss\": ");
    assert_non_null(j);
    double loss = strtod(j + 9, NULL);
    int *ids; size_t n;
    assert_int_equal(ds4_tokenizer_encode(f->tok, CORPUS, sizeof CORPUS - 1, &ids, &n), 0);
    ds4_eval_result r;
    assert_int_equal(ds4_eval_tokens(f->m, ids, n, 16, 1, &r), 0);
    assert_true(fabs(loss - r.loss) < 1e-5);
    char want[64];
    snprintf(want, sizeof want, "\"tokens\": %ld", r.tokens);
    assert_non_null(strstr(out, want));
    free(out);
    /* --max-tokens, token shard input, batch */
    char shard[400];
    snprintf(shard, sizeof shard, "%s/data.tok", f->dir);
    assert_int_equal(ds4_shard_write(shard, ids, n), 0);
    assert_int_equal(ds4(f, &out, "eval --model '%s' --data '%s' --ctx 16 --batch 3 --max-tokens 40",
                         f->model, shard), 0);
    assert_int_equal(ds4_eval_tokens(f->m, ids, 40, 16, 1, &r), 0);
    j = strstr(out, "{\"loss\": ");
    assert_non_null(j);
    assert_true(fabs(strtod(j + 9, NULL) - r.loss) < 1e-5);
    assert_non_null(strstr(out, "\"tokens\": 39"));
    free(out);
    free(ids);
    /* errors */
    assert_int_equal(ds4(f, NULL, "eval --model '%s' --data '%s/missing.txt'", f->model, f->dir), 1);
    assert_true(err_has(f, "missing.txt"));
    assert_int_equal(ds4(f, NULL, "eval --model '%s' --data '%s' --ctx 49", f->model, f->data), 1);
    assert_true(err_has(f, "max_position_embeddings"));
    assert_int_equal(ds4(f, NULL, "eval --model '%s' --data '%s' --ctx 0", f->model, f->data), 2);
    assert_int_equal(ds4(f, NULL, "eval --data '%s'", f->data), 2);
    char *help;
    assert_int_equal(ds4(f, &help, "eval --help"), 0);
    assert_non_null(strstr(help, "--max-tokens"));
    free(help);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_eval),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
