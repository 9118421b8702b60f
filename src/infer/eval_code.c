/* eval_code.c — code problems in the HumanEval layout: loading, sampling n
 * completions per prompt with the generation engine, assembling the program
 * that runs a completion against its tests, and the unbiased pass@k. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "infer/evalh.h"

const char *const ds4_code_stops[] = {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#",
                                      "\nassert "};
const int ds4_code_n_stops = (int)(sizeof ds4_code_stops / sizeof ds4_code_stops[0]);

double ds4_pass_at_k(int n, int c, int k) {
    if (k < 1 || k > n || c < 0 || c > n) return NAN;
    if (n - c < k) return 1.0;
    /* C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i) */
    double p = 1.0;
    for (int i = n - c + 1; i <= n; i++) p *= 1.0 - (double)k / (double)i;
    return 1.0 - p;
}

void ds4_code_free(ds4_code_problem *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) {
        free(p[i].task_id); free(p[i].prompt); free(p[i].canonical_solution);
        free(p[i].test); free(p[i].entry_point);
    }
    free(p);
}

static char *dup_field(const cJSON *o, const char *key, const char *path, int line, int required) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (!required) return strdup("");
        ds4_set_error("%s line %d: missing field \"%s\"", path, line, key);
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        ds4_set_error("%s line %d: field \"%s\" must be a string", path, line, key);
        return NULL;
    }
    char *s = strdup(v->valuestring);
    if (!s) ds4_set_error("%s line %d: out of memory", path, line);
    return s;
}

static int parse_problem(const cJSON *o, void *rec, const char *path, int line) {
    ds4_code_problem *q = rec;
    q->task_id = dup_field(o, "task_id", path, line, 1);
    q->prompt = q->task_id ? dup_field(o, "prompt", path, line, 1) : NULL;
    q->canonical_solution = q->prompt ? dup_field(o, "canonical_solution", path, line, 0) : NULL;
    q->test = q->canonical_solution ? dup_field(o, "test", path, line, 1) : NULL;
    q->entry_point = q->test ? dup_field(o, "entry_point", path, line, 1) : NULL;
    return q->entry_point ? 0 : -1;
}

int ds4_code_load(const char *path, ds4_code_problem **out, int *n_out) {
    void *items;
    int cap;
    if (ds4_jsonl_load(path, sizeof **out, "problems", &items, n_out, &cap, parse_problem)) {
        ds4_code_free(items, cap);     /* unused entries are zeroed: free(NULL) */
        *out = NULL;
        *n_out = 0;
        return -1;
    }
    *out = items;
    return 0;
}

char *ds4_code_program(const ds4_code_problem *p, const char *completion) {
    size_t n = strlen(p->prompt) + strlen(completion) + strlen(p->test) + strlen(p->entry_point) + 16;
    char *s = ds4_malloc(n);
    if (!s) return NULL;
    snprintf(s, n, "%s%s\n%s\ncheck(%s)\n", p->prompt, completion, p->test, p->entry_point);
    return s;
}

/* Growable text sink for one sample. */
typedef struct { char *buf; size_t len, cap; int oom; } text_buf;

static int on_text(const char *t, size_t len, void *user) {
    text_buf *b = user;
    if (b->len + len + 1 > b->cap) {
        size_t cap = DS4_MAX(b->cap * 2, b->len + len + 256);
        char *nb = realloc(b->buf, cap);
        if (!nb) { b->oom = 1; return 1; }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, t, len);
    b->len += len;
    b->buf[b->len] = 0;
    return 0;
}

int ds4_code_generate(ds4_engine *e, const char *prompt, int n, const ds4_gen_params *gp,
                      char **completions, int *truncated) {
    *truncated = 0;
    for (int i = 0; i < n; i++) completions[i] = NULL;
    if (!e->tok) { ds4_set_error("code generation: the engine has no tokenizer"); return -1; }
    if (n < 1 || n > e->n_slots) {
        ds4_set_error("code generation: %d samples for an engine of %d slots", n, e->n_slots);
        return -1;
    }
    ds4_gen_params p = *gp;
    p.n_stop = DS4_MIN(ds4_code_n_stops, DS4_MAX_STOP);
    for (int i = 0; i < p.n_stop; i++) p.stop[i] = ds4_code_stops[i];

    int *ids = NULL;
    size_t n_ids = 0;
    if (ds4_tokenizer_encode(e->tok, prompt, strlen(prompt), &ids, &n_ids)) return -1;
    int bos = p.add_bos && e->bos_id >= 0;
    /* room for the prompt: the context minus the tokens to generate, at least half of it */
    int room = e->capacity - p.max_tokens;
    if (room < e->capacity / 2) room = e->capacity / 2;
    if (room < 1 + bos) room = 1 + bos;
    size_t keep = n_ids;
    if (keep + (size_t)bos > (size_t)room) { keep = (size_t)(room - bos); *truncated = 1; }
    int n_prompt = (int)keep + bos;
    int *all = ds4_malloc(((size_t)n_prompt + 1) * sizeof *all);
    ds4_seq *seqs = ds4_calloc((size_t)n, sizeof *seqs);
    ds4_seq **ptr = ds4_calloc((size_t)n, sizeof *ptr);
    text_buf *bufs = ds4_calloc((size_t)n, sizeof *bufs);
    int rc = -1, n_init = 0;
    if (!all || !seqs || !ptr || !bufs) goto done;
    if (bos) all[0] = e->bos_id;
    if (keep) memcpy(all + bos, ids + (n_ids - keep), keep * sizeof *all);
    if (n_prompt == 0) { ds4_set_error("code generation: empty prompt and no <|bos|>"); goto done; }
    for (int i = 0; i < n; i++) {
        ds4_gen_params pi = p;
        pi.sampler.seed = p.sampler.seed + (uint64_t)i;
        if (ds4_seq_init(e, &seqs[i], all, n_prompt, &pi, on_text, &bufs[i])) goto done;
        ptr[i] = &seqs[i];
        n_init++;
    }
    for (;;) {
        int running = ds4_engine_step(e, ptr, n);
        if (running < 0) goto done;
        if (running == 0) break;
    }
    for (int i = 0; i < n; i++) {
        if (bufs[i].oom) { ds4_set_error("code generation: out of memory"); goto done; }
        completions[i] = bufs[i].buf ? bufs[i].buf : strdup("");
        bufs[i].buf = NULL;
        if (!completions[i]) { ds4_set_error("code generation: out of memory"); goto done; }
    }
    rc = 0;
done:
    for (int i = 0; i < n_init; i++) ds4_seq_release(e, &seqs[i]);
    if (bufs) for (int i = 0; i < n; i++) free(bufs[i].buf);
    if (rc) for (int i = 0; i < n; i++) { free(completions[i]); completions[i] = NULL; }
    free(bufs); free(ptr); free(seqs); free(all); free(ids);
    return rc;
}
