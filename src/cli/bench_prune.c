/* bench_prune.c — `ds4 bench prune`: the sparse-attention and token-pruning
 * study of SPEC §1.3-1.4. One small model trained five ways on the same data
 * and token budget (unpruned; pruning ramps to 10/20/30%; 30% + the lightning
 * indexer), then validation loss, causal-decision agreement, FLOPs, KV bytes,
 * prefill/decode wall time and peak memory at 512..8192 context, and an
 * attention-only benchmark at 4k..32k (indexed vs dense tiled decode, memory
 * of dense tiled prefill attention vs the naive T x T score matrix). Wall
 * times and peak memory come from child processes (one per measurement), so
 * each has its own peak RSS. */
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "infer/infer.h"
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/cost.h"
#include "model/forward.h"
#include "model/indexer.h"
#include "model/prune.h"
#include "train/train.h"
#include "util/util.h"

extern char **environ;

#define CMD "bench prune"
#define N_RUNS 5
#define MAX_CTX 16

typedef struct prune_opts {
    const char *data, *val, *tokenizer, *work;
    long vocab, hidden, layers, heads, head_dim, ffn;
    long steps, batch, seq, seed, eval_tokens, indexer_warmup;
    double lr, ratios[N_RUNS - 1], loss_weight, price;
    long index_topk, index_heads, index_dim, window;
    long ctx[MAX_CTX], n_ctx, decode;
    long attn_ctx[MAX_CTX], n_attn_ctx, attn_heads, attn_kv_heads, attn_head_dim, attn_topk, attn_idx_heads,
         attn_idx_dim, attn_mem_heads, attn_mem_dim;
    long seeds;                 /* trainings of dense and 30% (seeds seed, seed+1, ...), paired across runs */
    long ramp_seeds;            /* trainings of the 10%, 20% and 30% + indexer runs (the first seeds) */
    unsigned runs;              /* bit r: train run r */
    int do_study, do_timing, do_attn;
} prune_opts;

static const char *RUN_NAME[N_RUNS] = {"dense (unpruned)", "prune ramp to 10%", "prune ramp to 20%",
                                       "prune ramp to 30%", "30% + indexer"};
static const char *RUN_DIR[N_RUNS] = {"dense", "prune10", "prune20", "prune30", "prune30-indexer"};

static void opts_defaults(prune_opts *o) {
    memset(o, 0, sizeof *o);
    o->data = "../shared/data/brown/train.txt";
    o->val = "../shared/data/brown/val.txt";
    o->work = "bench-prune.work";
    o->vocab = 2048;
    o->hidden = 128;
    o->layers = 4;
    o->heads = 2;
    o->head_dim = 64;
    o->ffn = 384;
    o->steps = 200;
    o->batch = 8;
    o->seq = 256;
    o->seed = 1;
    o->eval_tokens = 0;             /* 0: every held-out token */
    o->indexer_warmup = -1;         /* -1: 5% of the steps */
    o->lr = 2e-3;
    o->ratios[0] = 0; o->ratios[1] = 0.1; o->ratios[2] = 0.2; o->ratios[3] = 0.3;
    o->loss_weight = 0.1;
    o->index_topk = 64;
    o->index_heads = 2;
    o->index_dim = 16;
    o->window = 0;
    const long ctx[] = {512, 1024, 2048, 4096, 8192};
    o->n_ctx = 5;
    memcpy(o->ctx, ctx, sizeof ctx);
    o->decode = 32;
    const long actx[] = {4096, 8192, 16384, 32768};
    o->n_attn_ctx = 4;
    memcpy(o->attn_ctx, actx, sizeof actx);
    o->attn_heads = 6; o->attn_kv_heads = 6; o->attn_head_dim = 64;
    o->attn_topk = 2048; o->attn_idx_heads = 4; o->attn_idx_dim = 32;
    o->attn_mem_heads = 2; o->attn_mem_dim = 32;
    o->seeds = 3;
    o->ramp_seeds = 1;
    o->runs = (1u << N_RUNS) - 1;
    o->do_study = o->do_timing = o->do_attn = 1;
}

static void help(void) {
    printf("usage: ds4 bench prune [--study] [--timing] [--attn] [options]\n\n"
           "Sparse attention with dynamic token pruning (SPEC 1.3, 1.4). Default: all three parts.\n"
           "  --study     train one model five ways, same data and token budget: unpruned; pruning with\n"
           "              the default schedule (none in the first half of the layers, linear ramp) to\n"
           "              10%%, 20%%, 30%%; 30%% + the lightning indexer. Validation loss (inference path:\n"
           "              causal keep rule, sparse attention), agreement of the causal decision with\n"
           "              top-k membership, kept fractions. Models are saved under --work.\n"
           "  --timing    for each saved model and context: prefill and decode wall time per token,\n"
           "              FLOPs per token (cost model with the measured keep fractions), KV-cache bytes,\n"
           "              peak RSS (one child process per measurement)\n"
           "  --attn      attention alone at 4k..32k keys: indexed sparse decode (indexer scores +\n"
           "              top-k + sparse attention) vs dense tiled decode; peak memory of dense tiled\n"
           "              prefill attention vs the naive T x T score matrix\n"
           "options (defaults in brackets; scale up for a longer study):\n"
           "  --data F --val F          text [../shared/data/brown/train.txt, val.txt]\n"
           "  --tokenizer F             tokenizer.json [trained on --data, --vocab 2048; cached in --work]\n"
           "  --work DIR                models and token shards [bench-prune.work]\n"
           "  --hidden 128 --layers 4 --heads 2 --head-dim 64 --ffn 384\n"
           "  --steps 200 --batch 8 --seq 256 --lr 2e-3 --seed 1 --prune-loss-weight 0.1\n"
           "  --index-topk 64 --index-heads 2 --index-dim 16 --window 0 --indexer-warmup [steps/20]\n"
           "  --eval-tokens N           held-out tokens for validation and agreement [0: all of --val]\n"
           "  --seeds 3                 train dense and the 30%% run with N seeds each (seed, seed+1, ...;\n"
           "                            the same batches and init seed in every run): val loss mean +- std,\n"
           "                            relative difference of the means with its standard error, and\n"
           "                            the per-seed (paired) ratios; the first seed's models are timed\n"
           "  --ramp-seeds 1            seeds for the 10%%, 20%% and 30%% + indexer runs (at most --seeds)\n"
           "  --runs 0,1,2,3,4          which of the five runs to train (0 dense ... 4 30%% + indexer)\n"
           "  --ctx 512,1024,2048,4096,8192 --decode 32\n"
           "  --attn-ctx 4096,8192,16384,32768 --attn-heads 6 --attn-kv-heads 6 --attn-head-dim 64\n"
           "  --attn-topk 2048 --attn-index-heads 4 --attn-index-dim 32\n"
           "  --attn-mem-heads 2 --attn-mem-dim 32   (shape of the prefill memory check)\n"
           "  --price-per-hour X        also print $ per 1M tokens (SPEC 4)\n"
           "Threads: OMP_NUM_THREADS. On a machine shared with other jobs, OMP_NUM_THREADS=1 gives\n"
           "steadier timings (a 2-thread region waits for its slower, preempted thread).\n");
}

static int parse_list(const char *s, long *out, long *n, long lo, long hi) {
    *n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || *n >= MAX_CTX) return -1;
        out[(*n)++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *n > 0 ? 0 : -1;
}

/* ---- configs and data ----------------------------------------------------------- */

static void run_config(ds4_config *c, const prune_opts *o, int vocab, int run) {
    ds4_config_defaults(c);
    c->vocab_size = vocab;
    c->hidden_size = (int)o->hidden;
    c->intermediate_size = (int)o->ffn;
    c->num_hidden_layers = (int)o->layers;
    c->first_k_dense_replace = (int)o->layers;
    c->num_attention_heads = (int)o->heads;
    c->num_key_value_heads = (int)o->heads;
    c->head_dim = (int)o->head_dim;
    long maxctx = o->seq;
    for (int i = 0; i < o->n_ctx; i++) maxctx = DS4_MAX(maxctx, o->ctx[i] + o->decode);
    c->max_position_embeddings = (int)maxctx;
    c->tie_word_embeddings = 1;
    c->prune_loss_weight = (float)o->loss_weight;
    c->sliding_window = (int)o->window;
    ds4_prune_default_schedule(c, (float)o->ratios[run < N_RUNS - 1 ? run : N_RUNS - 2]);
    if (run == N_RUNS - 1) {
        c->index_topk = (int)o->index_topk;
        c->index_n_heads = (int)o->index_heads;
        c->index_head_dim = (int)o->index_dim;
    }
}

static int tokenize_file(const ds4_tokenizer *tok, const char *path, int **ids, size_t *n) {
    char *text;
    size_t len;
    if (ds4_read_file(path, &text, &len) != 0) return -1;
    int rc = ds4_tokenizer_encode(tok, text, len, ids, n);
    free(text);
    return rc;
}

static ds4_tokenizer *study_tokenizer(const prune_opts *o);

static int load_data(const prune_opts *o, int **train, size_t *ntrain, int **val, size_t *nval, int *vocab) {
    ds4_tokenizer *tok = study_tokenizer(o);
    if (!tok) return -1;
    int rc = tokenize_file(tok, o->data, train, ntrain) || tokenize_file(tok, o->val, val, nval) ? -1 : 0;
    *vocab = ds4_tokenizer_vocab_size(tok);
    ds4_tokenizer_free(tok);
    return rc;
}

/* ---- study: training and validation ----------------------------------------------- */

typedef struct run_result {
    double val_loss, val_topk, train_loss, seconds, tokens_per_s;
    double train_agree, train_kl;            /* over the last quarter of the steps */
    ds4_prune_counts eval[DS4_MAX_LAYERS];   /* inference rule on held-out windows */
    double keep[DS4_MAX_LAYERS];             /* measured kept fraction per layer */
    double agree;                            /* eval agreement over pruned layers */
} run_result;

#define TOPK_EVAL_WINDOWS 128      /* the top-k-rule reference loss: first 128 windows */

/* Held-out windows through the inference path, one pass: validation loss and
 * per-layer keep and agreement counters of the causal rule (top-k membership
 * known: whole windows). */
static int eval_inference(const ds4_model *m, const int *val, size_t nval, int T, run_result *r) {
    const ds4_config *c = &m->cfg;
    if (ds4_prune_eval_loss(m, val, nval, T, r->eval, &r->val_loss, NULL) != 0) return -1;
    int64_t scored = 0, agree = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        r->keep[l] = r->eval[l].tokens ? (double)r->eval[l].kept / r->eval[l].tokens : 1.0;
        if (ds4_prune_ratio(c, l) <= 0) continue;
        scored += r->eval[l].scored;
        agree += r->eval[l].agree;
    }
    r->agree = scored ? (double)agree / scored : NAN;
    return 0;
}

static int train_one(const prune_opts *o, const ds4_config *cfg, const int *train, size_t ntrain,
                     const int *val, size_t nval, int run, long seed, int save, run_result *res) {
    const int B = (int)o->batch, T = (int)o->seq;
    ds4_model *m = ds4_model_create(cfg, (uint64_t)seed);
    ds4_train_ctx *ctx = m ? ds4_train_ctx_create(m, B, T) : NULL;
    float *grads = m ? ds4_alloc_aligned(m->layout.n_floats * sizeof(float)) : NULL;
    int *buf = ds4_malloc(sizeof(int) * (size_t)B * (T + 1));
    unsigned char *saved = m ? ds4_malloc((size_t)m->layout.n_tensors) : NULL;
    ds4_adamw opt = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    int rc = -1;
    if (!m || !ctx || !grads || !buf || !saved || ds4_adamw_init(&opt, m) != 0) goto out;
    ds4_rng rng;
    ds4_rng_seed(&rng, (uint64_t)seed * 7919 + 17);               /* same batches for every run */
    const long iwarm = cfg->index_topk > 0 ? (o->indexer_warmup < 0 ? o->steps / 20 : o->indexer_warmup) : 0;
    const double t0 = ds4_time_s();
    double tail_loss = 0, agree_sum = 0, kl_sum = 0;
    long tail = 0, agree_n = 0;
    for (long step = 0; step < o->steps; step++) {
        const float lr = ds4_lr_schedule(step, o->steps, o->steps / 20, (float)o->lr, 0.1f);
        const int warm = step < iwarm;
        ds4_train_ctx_acts(ctx)->indexer_warmup = warm;
        for (int b = 0; b < B; b++) {
            size_t off = (size_t)(ds4_rng_u64(&rng) % (uint64_t)(ntrain - (size_t)T - 1));
            memcpy(buf + (size_t)b * (T + 1), train + off, sizeof(int) * (size_t)(T + 1));
        }
        memset(grads, 0, m->layout.n_floats * sizeof(float));
        double loss = ds4_train_ctx_step(ctx, m, buf, grads, 1.0f);
        if (isnan(loss)) goto out;
        ds4_clip_grad_norm(m, grads, 1.0f);
        if (warm) ds4_layout_indexer_only(&m->layout, saved, 1);
        ds4_adamw_step(&opt, m, grads, lr);
        if (warm) ds4_layout_indexer_only(&m->layout, saved, 0);
        ds4_prune_step_stats ps;
        ds4_train_ctx_prune_step(ctx, &ps);
        if (step >= o->steps - DS4_MAX(1, o->steps / 4)) {
            tail_loss += loss;
            tail++;
            if (!isnan(ps.agreement)) { agree_sum += ps.agreement; agree_n++; }
            kl_sum += ps.kl;
        }
        if ((step + 1) % 50 == 0 || step + 1 == o->steps)
            fprintf(stderr, "  [%s seed %ld] step %ld/%ld loss %.4f%s (%.0f s)\n", RUN_DIR[run], seed, step + 1,
                    o->steps, loss, warm ? " (indexer warm-up)" : "", ds4_time_s() - t0);
    }
    res->seconds = ds4_time_s() - t0;
    res->tokens_per_s = (double)o->steps * B * T / res->seconds;
    res->train_loss = tail_loss / tail;
    res->train_agree = agree_n ? agree_sum / agree_n : NAN;
    res->train_kl = kl_sum / tail;
    /* validation: the inference path (causal keep rule, sparse attention) */
    const size_t ne = nval;                  /* the caller passes the held-out tokens to use */
    if (eval_inference(m, val, ne, T, res) != 0) goto out;
    /* the same held-out tokens under the training rule (top-k per window), for
     * reference; first seed only (one more pass over them) */
    res->val_topk = NAN;
    if (save) {
        /* the eval windows (start every T, T + 1 tokens with the targets), B at a
         * time; a last incomplete group of B is left out */
        const size_t nw = DS4_MIN((ne - 1) / (size_t)T, (size_t)TOPK_EVAL_WINDOWS);
        double sum = 0;
        long nb = 0;
        for (size_t w0 = 0; w0 + (size_t)B <= nw; w0 += (size_t)B, nb++) {
            for (int b = 0; b < B; b++)
                memcpy(buf + (size_t)b * (T + 1), val + (w0 + (size_t)b) * T, sizeof(int) * (size_t)(T + 1));
            const double l = ds4_train_ctx_loss(ctx, m, buf);
            if (isnan(l)) goto out;
            sum += l;
        }
        res->val_topk = nb ? sum / nb : NAN;
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", o->work, RUN_DIR[run]);
    if (save && ds4_model_save(m, dir) != 0) goto out;
    rc = 0;
out:
    ds4_adamw_free(&opt);
    free(grads); free(buf); free(saved);
    ds4_train_ctx_free(ctx);
    ds4_model_free(m);
    return rc;
}

/* ---- child processes ------------------------------------------------------------------ */

/* Peak resident set of this process image: VmHWM of /proc/self/status (the
 * high-water mark of the current address space; getrusage's ru_maxrss would
 * carry the spawning parent's peak across exec). */
static long peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kb = ru.ru_maxrss;
    }
    return kb * 1024L;
}

/* Runs `ds4 bench prune ARGS...` in a fresh process and returns its stdout
 * (malloc'd) or NULL. A fresh process gives each measurement its own peak RSS. */
static char *run_child(char **args) {
    int fd[2];
    if (pipe(fd) != 0) { ds4_set_error("pipe failed"); return NULL; }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    pid_t pid;
    int err = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (err != 0) { close(fd[0]); ds4_set_error("cannot start a child process (error %d)", err); return NULL; }
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    ssize_t k;
    while (out && (k = read(fd[0], out + len, cap - len - 1)) > 0) {
        len += (size_t)k;
        if (cap - len < 2) { char *p = realloc(out, cap *= 2); if (!p) { free(out); out = NULL; } else out = p; }
    }
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (!out || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(out);
        ds4_set_error("child measurement failed (%s)", args[3]);
        return NULL;
    }
    out[len] = 0;
    return out;
}

static double jnum(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Child: load a model, prefill ctx tokens of the shard (repeated as needed),
 * then decode n tokens one at a time. Prints one JSON line: the fastest of
 * 3 prefills and of the n decode steps (wall and process CPU time; the
 * fastest is the least disturbed by other load), KV bytes, peak RSS and the
 * kept fraction per layer. */
static int child_model_run(const char *dir, const char *shard, long ctx, long n) {
    ds4_model *m = ds4_model_load(dir);
    if (!m) return cli_fail(CMD);
    int *ids;
    size_t nid;
    if (ds4_shard_read(shard, &ids, &nid) != 0 || nid < 2) return cli_fail(CMD);
    const long total = ctx + n;
    int *seq = calloc((size_t)total, sizeof(int)), *tok = malloc(sizeof(int) * (size_t)total);
    float *lg = malloc(sizeof(float) * m->cfg.vocab_size);
    ds4_kv_cache *kv = ds4_kv_cache_create(&m->cfg, 1, (int)total);
    if (!seq || !tok || !lg || !kv) return cli_fail(CMD);
    for (long i = 0; i < total; i++) tok[i] = ids[(size_t)i % nid];
    double pw = 1e30, pc = 1e30;
    for (int r = 0; r < 3; r++) {
        ds4_kv_cache_reset_seq(kv, 0);
        ds4_kv_cache_reset_stats(kv);
        ds4_batch b = {.n = (int)ctx, .tokens = tok, .seq = seq};
        int last = (int)ctx - 1;
        const double t0 = ds4_time_s(), c0 = cpu_s();
        if (ds4_forward(m, &b, kv, &last, 1, lg) != 0) return cli_fail(CMD);
        pw = fmin(pw, ds4_time_s() - t0);
        pc = fmin(pc, cpu_s() - c0);
    }
    const size_t kv_bytes = ds4_kv_cache_bytes_used(kv);
    double keep[DS4_MAX_LAYERS];
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        keep[l] = kv->prune[l].tokens ? (double)kv->prune[l].kept / kv->prune[l].tokens : 1.0;
    double dw = n > 0 ? 1e30 : 0, dc = n > 0 ? 1e30 : 0;
    for (long i = 0; i < n; i++) {
        ds4_batch b = {.n = 1, .tokens = tok + ctx + i, .seq = seq};
        const double t0 = ds4_time_s(), c0 = cpu_s();
        if (ds4_forward(m, &b, kv, NULL, 1, lg) != 0) return cli_fail(CMD);
        dw = fmin(dw, ds4_time_s() - t0);
        dc = fmin(dc, cpu_s() - c0);
    }
    printf("{\"prefill_s\":%.6f,\"prefill_cpu_s\":%.6f,\"decode_s\":%.7f,\"decode_cpu_s\":%.7f,\"kv_bytes\":%zu,"
           "\"peak_rss\":%ld,\"keep\":[", pw, pc, dw, dc, kv_bytes, peak_rss_bytes());
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) printf("%s%.5f", l ? "," : "", keep[l]);
    printf("]}\n");
    free(seq); free(tok); free(lg); free(ids);
    ds4_kv_cache_free(kv);
    ds4_model_free(m);
    return 0;
}

/* Child: dense tiled causal prefill attention over T tokens (H heads of Dh);
 * prints the peak RSS before and after. */
static int child_attn_mem(long T, long H, long Dh) {
    const long base = peak_rss_bytes();
    const size_t qs = (size_t)H * Dh;
    float *q = ds4_alloc_aligned((size_t)T * qs * sizeof(float)), *k = ds4_alloc_aligned((size_t)T * qs * sizeof(float));
    float *v = ds4_alloc_aligned((size_t)T * qs * sizeof(float)), *out = ds4_alloc_aligned((size_t)T * qs * sizeof(float));
    float *lse = ds4_alloc_aligned((size_t)T * H * sizeof(float));
    int *pos = malloc(sizeof(int) * (size_t)T);
    if (!q || !k || !v || !out || !lse || !pos) return cli_fail(CMD);
    ds4_rng r;
    ds4_rng_seed(&r, 3);
    for (size_t i = 0; i < (size_t)T * qs; i++) { q[i] = ds4_rng_normal(&r); k[i] = ds4_rng_normal(&r); v[i] = ds4_rng_normal(&r); }
    for (long i = 0; i < T; i++) pos[i] = (int)i;
    const long inputs = peak_rss_bytes();
    ds4_attn a = {.n_q = (int)T, .q = q, .qpos = pos, .n_kv = (int)T, .k = k, .v = v, .kpos = pos,
                  .n_heads = (int)H, .n_kv_heads = (int)H, .head_dim = (int)Dh};
    const double t0 = ds4_time_s();
    ds4_attention_forward(&a, out, lse);
    const double dt = ds4_time_s() - t0;
    printf("{\"base\":%ld,\"inputs\":%ld,\"peak\":%ld,\"seconds\":%.4f}\n", base, inputs, peak_rss_bytes(), dt);
    free(q); free(k); free(v); free(out); free(lse); free(pos);
    return 0;
}

/* ---- study report ------------------------------------------------------------------------- */

#define MAX_SEEDS 16

/* acc += w * one, field by field (counters summed). */
static void result_add(run_result *acc, const run_result *one, double w, int L) {
    acc->val_loss += w * one->val_loss;
    if (!isnan(one->val_topk)) acc->val_topk = one->val_topk;     /* first seed only */
    acc->train_loss += w * one->train_loss;
    acc->seconds += w * one->seconds;
    acc->tokens_per_s += w * one->tokens_per_s;
    acc->train_agree += w * one->train_agree;
    acc->train_kl += w * one->train_kl;
    acc->agree += w * one->agree;
    for (int l = 0; l < L; l++) {
        acc->keep[l] += w * one->keep[l];
        acc->eval[l].tokens += one->eval[l].tokens;
        acc->eval[l].kept += one->eval[l].kept;
        acc->eval[l].scored += one->eval[l].scored;
        acc->eval[l].agree += one->eval[l].agree;
    }
}

static double val_by_seed[N_RUNS][MAX_SEEDS];
static long eval_tokens_used;      /* held-out tokens of the study's validation */

/* Seeds trained for run r: --seeds for dense and the 30% schedule (the
 * comparison the target is about), --ramp-seeds for the others. */
static long run_seeds(const prune_opts *o, int r) {
    return r == 0 || r == 3 ? o->seeds : DS4_MIN(o->ramp_seeds, o->seeds);
}

/* Held-out tokens evaluated: --eval-tokens, 0 = all of them. */
static size_t eval_count(const prune_opts *o, size_t nval) {
    return o->eval_tokens > 0 ? DS4_MIN(nval, (size_t)o->eval_tokens) : nval;
}

/* Validation-loss statistics of one run against dense, over its seeds. */
typedef struct val_stats {
    long n;                  /* seeds */
    double mean, sd;         /* val loss: mean, sample standard deviation (NAN for n = 1) */
    double rel, rel_se;      /* mean(run) / mean(dense over the same seeds) - 1 and its standard
                                error (delta method, runs independent; NAN for n = 1) */
    double paired, paired_se;/* mean over seeds i of val(run, i) / val(dense, i) - 1, standard error
                                sd / sqrt(n) (NAN for n = 1) */
    double lo, hi;           /* min / max of the per-seed ratios - 1 */
} val_stats;

static void mean_sd(const double *v, long n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (long i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (long i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : NAN;
}

static val_stats study_stats(const prune_opts *o, int r) {
    val_stats s;
    const long n = run_seeds(o, r), n0 = n;      /* dense over the same seeds */
    double m0, s0, ratio[MAX_SEEDS];
    s.n = n;
    mean_sd(val_by_seed[r], n, &s.mean, &s.sd);
    mean_sd(val_by_seed[0], n0, &m0, &s0);
    s.rel = s.mean / m0 - 1;
    /* var(a / b) ~ var(a) / b^2 + a^2 var(b) / b^4 with var of a mean = sd^2 / n */
    s.rel_se = n > 1 && n0 > 1 ? sqrt(s.sd * s.sd / n / (m0 * m0) + s.mean * s.mean * s0 * s0 / n0 / (m0 * m0 * m0 * m0))
                               : NAN;
    s.lo = 1e30; s.hi = -1e30;
    for (long i = 0; i < n; i++) {
        ratio[i] = val_by_seed[r][i] / val_by_seed[0][i] - 1;
        s.lo = fmin(s.lo, ratio[i]); s.hi = fmax(s.hi, ratio[i]);
    }
    double psd;
    mean_sd(ratio, n, &s.paired, &psd);
    s.paired_se = n > 1 ? psd / sqrt((double)n) : NAN;
    return s;
}

/* ,"key":[v0,...] over the runs, null where not a number */
static void json_array(const char *key, const double *v) {
    printf(",\"%s\":[", key);
    for (int r = 0; r < N_RUNS; r++) {
        if (isnan(v[r])) printf("%snull", r ? "," : "");
        else printf("%s%.5f", r ? "," : "", v[r]);
    }
    printf("]");
}

/* Loads --tokenizer, or the one cached in --work for this --data and --vocab,
 * or trains one on --data and caches it there. */
static ds4_tokenizer *study_tokenizer(const prune_opts *o) {
    if (o->tokenizer) return ds4_tokenizer_load(o->tokenizer);
    char path[4300], key[4400];
    snprintf(path, sizeof path, "%s/tokenizer-%ld.json", o->work, o->vocab);
    snprintf(key, sizeof key, "%s/tokenizer-%ld.source", o->work, o->vocab);
    char *src = NULL;
    if (ds4_file_exists(path) && ds4_read_file(key, &src, NULL) == 0 && !strcmp(src, o->data)) {
        free(src);
        fprintf(stderr, "tokenizer: %s (cached; trained on %s)\n", path, o->data);
        return ds4_tokenizer_load(path);
    }
    free(src);
    char *text;
    size_t len;
    if (ds4_read_file(o->data, &text, &len) != 0) return NULL;
    fprintf(stderr, "training a %ld-token BPE tokenizer on %s...\n", o->vocab, o->data);
    ds4_tokenizer *tok = ds4_tokenizer_train(text, len, (int)o->vocab, 0);
    free(text);
    if (tok && ds4_mkdir_p(o->work) == 0 && ds4_tokenizer_save(tok, path) == 0)
        ds4_write_file_atomic(key, o->data, strlen(o->data));
    return tok;
}

static int run_study(const prune_opts *o, int *vocab_out, run_result *res, val_stats *vs) {
    int *train = NULL, *val = NULL;
    size_t ntrain = 0, nval = 0;
    int vocab;
    const double t_start = ds4_time_s();
    if (load_data(o, &train, &ntrain, &val, &nval, &vocab) != 0) return cli_fail(CMD);
    *vocab_out = vocab;
    if (ntrain < (size_t)o->seq + 2 || nval < (size_t)o->seq + 1) {
        fprintf(stderr, "ds4 %s: too few tokens (train %zu, val %zu) for --seq %ld\n", CMD, ntrain, nval, o->seq);
        free(train); free(val);
        return 1;
    }
    char path[4200];
    if (ds4_mkdir_p(o->work) != 0) { free(train); free(val); return cli_fail(CMD); }
    snprintf(path, sizeof path, "%s/val.bin", o->work);
    if (ds4_shard_write(path, val, nval) != 0) { free(train); free(val); return cli_fail(CMD); }
    ds4_config cfgs[N_RUNS];
    for (int r = 0; r < N_RUNS; r++) {
        run_config(&cfgs[r], o, vocab, r);
        if (ds4_config_validate(&cfgs[r]) != 0) { free(train); free(val); return cli_fail(CMD); }
    }
    const size_t ne = eval_count(o, nval);
    eval_tokens_used = (long)ne;
    /* reference: cross-entropy of the held-out tokens under the training
     * tokens' unigram frequencies (add-one), what a model that learned no
     * context would reach */
    double unigram = 0;
    {
        double *cnt = ds4_calloc((size_t)vocab, sizeof(double));
        if (!cnt) { free(train); free(val); return cli_fail(CMD); }
        for (size_t i = 0; i < ntrain; i++) cnt[train[i]] += 1;
        for (size_t i = 1; i < ne; i++) unigram -= log((cnt[val[i]] + 1) / ((double)ntrain + vocab));
        unigram /= (double)(ne - 1);
        free(cnt);
    }
    fprintf(stderr, "ds4 %s --study: %zu train / %zu val tokens (vocab %d), %ld steps x %ld x %ld = %.2fM tokens per run,"
            " %ld seeds (dense, 30%%), %ld (others)\n", CMD, ntrain, nval, vocab, o->steps, o->batch, o->seq,
            o->steps * o->batch * o->seq / 1e6, o->seeds, run_seeds(o, 1));
    /* seed-major: an interrupted study still has whole seeds of every run */
    for (long sd = 0; sd < o->seeds; sd++)
        for (int r = 0; r < N_RUNS; r++) {
            if (!(o->runs >> r & 1) || sd >= run_seeds(o, r)) continue;
            run_result one;
            memset(&one, 0, sizeof one);
            if (train_one(o, &cfgs[r], train, ntrain, val, ne, r, o->seed + sd, sd == 0, &one) != 0) {
                free(train); free(val);
                return cli_fail(CMD);
            }
            val_by_seed[r][sd] = one.val_loss;
            fprintf(stderr, "  [%s seed %ld] val loss %.4f (%zu held-out tokens), %.0f s\n", RUN_DIR[r], o->seed + sd,
                    one.val_loss, ne, one.seconds);
            result_add(&res[r], &one, 1.0 / run_seeds(o, r), cfgs[r].num_hidden_layers);
        }
    const int have_dense = o->runs & 1;
    for (int r = 0; r < N_RUNS; r++) {
        if (!(o->runs >> r & 1)) continue;
        if (have_dense) { vs[r] = study_stats(o, r); continue; }
        vs[r].n = run_seeds(o, r);                 /* no dense run: mean and sd only */
        mean_sd(val_by_seed[r], vs[r].n, &vs[r].mean, &vs[r].sd);
        vs[r].rel = vs[r].rel_se = vs[r].paired = vs[r].paired_se = vs[r].lo = vs[r].hi = NAN;
    }
    const ds4_config *cf = &cfgs[N_RUNS - 1];
    printf("ds4 bench prune --study (%d threads, %.0f s)\n", omp_get_max_threads(), ds4_time_s() - t_start);
    printf("  model: V %d, D %d, L %d, %d heads x %d, FFN %d, tied embeddings; %.2fM training tokens per run\n"
           "  (%ld steps x %ld x %ld, lr %g, same batches); held-out: %zu tokens of %s\n",
           vocab, cf->hidden_size, cf->num_hidden_layers, cf->num_attention_heads, cf->head_dim,
           cf->intermediate_size, o->steps * o->batch * o->seq / 1e6, o->steps, o->batch, o->seq, o->lr, ne, o->val);
    printf("  pruning: default schedule (no pruning in layers < L/2, linear ramp to the max ratio in the\n"
           "  last layer), router BCE weight %g; indexer: top-%d keys, %d heads x %d, window %d, %ld warm-up steps\n"
           "  val loss: the inference path (keep iff sigmoid(r) > 0.5, indexed sparse attention); (top-k): the\n"
           "  first 128 windows under the training rule (first seed); train loss: mean of the last quarter of the steps;\n"
           "  agree: causal decision vs top-k membership in pruned layers (tr: last quarter of training,\n"
           "  ev: held-out); kept: mean over all layers of the tokens the causal rule keeps (held-out).\n",
           o->loss_weight, cf->index_topk, cf->index_n_heads, cf->index_head_dim, cf->sliding_window,
           o->indexer_warmup < 0 ? o->steps / 20 : o->indexer_warmup);
    printf("  seeds %ld..: the same batches and init seed in every run (the init of the tensors after a\n"
           "  router or indexer differs: one random stream); other columns are means over seeds.\n"
           "  reference: unigram cross-entropy of the held-out tokens (training frequencies) %.4f\n\n", o->seed, unigram);
    printf("  %-20s %5s %17s %9s %10s %9s %9s %7s %7s %6s\n", "run", "seeds", "val loss (+-sd)", "(top-k)",
           "train loss", "agree(tr)", "agree(ev)", "kept", "tok/s", "time");
    for (int r = 0; r < N_RUNS; r++) {
        if (!(o->runs >> r & 1)) continue;
        double kept = 0;
        for (int l = 0; l < cfgs[r].num_hidden_layers; l++) kept += res[r].keep[l];
        kept /= cfgs[r].num_hidden_layers;
        char atr[16] = "-", aev[16] = "-", vtk[16] = "-", vl[32];
        if (!isnan(res[r].train_agree)) snprintf(atr, sizeof atr, "%.1f%%", 100 * res[r].train_agree);
        if (!isnan(res[r].agree)) snprintf(aev, sizeof aev, "%.1f%%", 100 * res[r].agree);
        if (!isnan(res[r].val_topk)) snprintf(vtk, sizeof vtk, "%.4f", res[r].val_topk);
        if (run_seeds(o, r) > 1) snprintf(vl, sizeof vl, "%.4f +- %.4f", res[r].val_loss, vs[r].sd);
        else snprintf(vl, sizeof vl, "%.4f", res[r].val_loss);
        printf("  %-20s %5ld %17s %9s %10.4f %9s %9s %6.1f%% %7.0f %5.0fs\n", RUN_NAME[r], run_seeds(o, r), vl, vtk,
               res[r].train_loss, atr, aev, 100 * kept, res[r].tokens_per_s, res[r].seconds);
    }
    if (have_dense) {
        printf("\n  val loss vs dense (relative):\n");
        printf("  %-20s %22s %22s %18s  %s\n", "run", "diff of means +- se", "paired mean +- se", "[min, max]",
               "per-seed val loss");
        printf("  %-20s %22s %22s %18s ", RUN_NAME[0], "", "", "");
        for (long i = 0; i < run_seeds(o, 0); i++) printf(" %.4f", val_by_seed[0][i]);
        printf("\n");
        for (int r = 1; r < N_RUNS; r++) {
            if (!(o->runs >> r & 1)) continue;
            const val_stats *s = &vs[r];
            char a[40], b[40], c[40];
            if (isnan(s->rel_se)) snprintf(a, sizeof a, "%+.2f%%", 100 * s->rel);
            else snprintf(a, sizeof a, "%+.2f%% +- %.2f%%", 100 * s->rel, 100 * s->rel_se);
            if (isnan(s->paired_se)) snprintf(b, sizeof b, "%+.2f%%", 100 * s->paired);
            else snprintf(b, sizeof b, "%+.2f%% +- %.2f%%", 100 * s->paired, 100 * s->paired_se);
            snprintf(c, sizeof c, "[%+.2f%%, %+.2f%%]", 100 * s->lo, 100 * s->hi);
            printf("  %-20s %22s %22s %18s ", RUN_NAME[r], a, b, c);
            for (long i = 0; i < s->n; i++) printf(" %.4f", val_by_seed[r][i]);
            printf("\n");
        }
        printf("  (diff of means: mean(run) / mean(dense, same seeds) - 1, se by the delta method treating the runs as\n"
               "  independent; paired: mean over seeds of val(run, seed) / val(dense, seed) - 1, se = sd / sqrt(n);\n"
               "  a run and dense with the same seed share the batches and part of the init)\n");
    }
    printf("\n  per pruned layer on held-out windows (ratio: kept by the causal rule, agreement with top-k):\n");
    for (int r = 1; r < N_RUNS; r++) {
        if (!(o->runs >> r & 1)) continue;
        printf("  %-20s", RUN_NAME[r]);
        for (int l = 0; l < cfgs[r].num_hidden_layers; l++) {
            const float rho = ds4_prune_ratio(&cfgs[r], l);
            if (rho <= 0) continue;
            const ds4_prune_counts *pc = &res[r].eval[l];
            printf("  L%d %2.0f%%: %4.1f%% %5.1f%%", l, 100 * rho, 100 * res[r].keep[l],
                   pc->scored ? 100.0 * pc->agree / pc->scored : NAN);
        }
        printf("\n");
    }
    if (o->runs >> (N_RUNS - 1) & 1)
        printf("  indexer KL(p || softmax(I)) over the last quarter of training: %.4f (sum over layers)\n",
               res[N_RUNS - 1].train_kl);
    free(train); free(val);
    return 0;
}

/* ---- timing ------------------------------------------------------------------------------------- */

typedef struct timing { double prefill, prefill_cpu, decode, decode_cpu, kv_bytes, rss, keep[DS4_MAX_LAYERS]; } timing;

static int run_timing(const prune_opts *o, int *pass) {
    ds4_config cfgs[N_RUNS];
    int present = 0, have[N_RUNS];
    for (int r = 0; r < N_RUNS; r++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/%s/config.json", o->work, RUN_DIR[r]);
        have[r] = ds4_file_exists(path) && ds4_config_load(&cfgs[r], path) == 0;
        present += have[r];
    }
    if (!have[0] || !have[N_RUNS - 1]) {
        fprintf(stderr, "ds4 %s --timing: needs at least %s/%s and %s/%s (run --study first, same --work)\n", CMD,
                o->work, RUN_DIR[0], o->work, RUN_DIR[N_RUNS - 1]);
        return 1;
    }
    timing tm[N_RUNS][MAX_CTX];
    char shard[4200];
    snprintf(shard, sizeof shard, "%s/val.bin", o->work);
    fprintf(stderr, "timing prefill + %ld decode steps at %ld contexts x %d models (one process each)...\n",
            o->decode, o->n_ctx, present);
    for (int ci = 0; ci < o->n_ctx; ci++)            /* contexts outside, models inside: drift hits all alike */
        for (int r = 0; r < N_RUNS; r++) {
            if (!have[r]) continue;
            char dir[4300], sctx[32], sdec[32];
            snprintf(dir, sizeof dir, "%s/%s", o->work, RUN_DIR[r]);
            snprintf(sctx, sizeof sctx, "%ld", o->ctx[ci]);
            snprintf(sdec, sizeof sdec, "%ld", o->decode);
            char *args[] = {"ds4", "bench", "prune", "--child-model", dir, "--child-ids", shard, "--child-ctx", sctx,
                            "--child-decode", sdec, NULL};
            char *out = run_child(args);
            if (!out) return cli_fail(CMD);
            cJSON *j = cJSON_Parse(out);
            free(out);
            if (!j) { fprintf(stderr, "ds4 %s: unreadable child output\n", CMD); return 1; }
            timing *t = &tm[r][ci];
            t->prefill = jnum(j, "prefill_s") / o->ctx[ci];
            t->prefill_cpu = jnum(j, "prefill_cpu_s") / o->ctx[ci];
            t->decode = jnum(j, "decode_s");
            t->decode_cpu = jnum(j, "decode_cpu_s");
            t->kv_bytes = jnum(j, "kv_bytes");
            t->rss = jnum(j, "peak_rss");
            const cJSON *kp = cJSON_GetObjectItemCaseSensitive(j, "keep");
            for (int l = 0; l < cfgs[r].num_hidden_layers; l++) {
                const cJSON *x = cJSON_GetArrayItem(kp, l);
                t->keep[l] = cJSON_IsNumber(x) ? x->valuedouble : 1.0;
            }
            cJSON_Delete(j);
            fprintf(stderr, "  ctx %5ld %-18s prefill %.3f ms/tok, decode %.3f ms/tok\n", o->ctx[ci], RUN_DIR[r],
                    1e3 * t->prefill, 1e3 * t->decode);
        }
    printf("\nds4 bench prune --timing (%d threads, one process per measurement)\n", omp_get_max_threads());
    printf("  wall / cpu: fastest of 3 prefills and of %ld decode steps (least disturbed by other load on a\n"
           "  shared machine; cpu = process CPU time). FLOPs: forward per token at that context from the cost\n"
           "  model with the keep fractions the prefill measured (cost.h). KV: filled cache after the prefill.\n"
           "  peak: VmHWM of the child (weights + cache + scratch).\n\n", o->decode);
    printf("  %-6s %-16s %9s %8s %10s %10s %10s %10s %8s %13s\n", "ctx", "model", "MFLOP/tok", "KV MB", "prefill",
           "(cpu)", "decode", "(cpu)", "peak MB", "wall vs dense");
    printf("  %-6s %-16s %9s %8s %10s %10s %10s %10s %8s %13s\n", "", "", "", "", "ms/tok", "ms/tok", "ms/tok",
           "ms/tok", "", "prefill/decode");
    for (int ci = 0; ci < o->n_ctx; ci++)
        for (int r = 0; r < N_RUNS; r++) {
            if (!have[r]) continue;
            ds4_cost cst;
            ds4_cost_layers(&cfgs[r], (double)o->ctx[ci], tm[r][ci].keep, NULL, &cst);
            const timing *t = &tm[r][ci], *d = &tm[0][ci];
            printf("  %-6ld %-16s %9.2f %8.2f %10.4f %10.4f %10.4f %10.4f %8.1f %+6.0f%%/%+4.0f%%\n", o->ctx[ci],
                   RUN_DIR[r], cst.total / 1e6, t->kv_bytes / 1e6, 1e3 * t->prefill, 1e3 * t->prefill_cpu,
                   1e3 * t->decode, 1e3 * t->decode_cpu, t->rss / 1e6, 100 * (t->prefill / d->prefill - 1),
                   100 * (t->decode / d->decode - 1));
        }
    printf("  (vs dense: prefill / decode wall time per token)\n");
    const int last = (int)o->n_ctx - 1, F = N_RUNS - 1;
    const double pre = 1 - tm[F][last].prefill / tm[0][last].prefill, dec = 1 - tm[F][last].decode / tm[0][last].decode;
    ds4_cost cd, cfl;
    ds4_cost_layers(&cfgs[0], (double)o->ctx[last], tm[0][last].keep, NULL, &cd);
    ds4_cost_layers(&cfgs[F], (double)o->ctx[last], tm[F][last].keep, NULL, &cfl);
    const double prec = 1 - tm[F][last].prefill_cpu / tm[0][last].prefill_cpu;
    const double decc = 1 - tm[F][last].decode_cpu / tm[0][last].decode_cpu;
    printf("\n  at %ld context, 30%% + indexer vs dense: prefill %.1f%% less wall time per token (cpu %.1f%%),\n"
           "  decode %.1f%% less (cpu %.1f%%), %.1f%% fewer FLOPs per token, %.1f%% fewer KV bytes\n"
           "  (target: >= 40%% less wall time)\n", o->ctx[last], 100 * pre, 100 * prec, 100 * dec, 100 * decc,
           100 * (1 - cfl.total / cd.total), 100 * (1 - tm[F][last].kv_bytes / tm[0][last].kv_bytes));
    pass[0] = pre >= 0.4 && dec >= 0.4;
    if (o->price > 0)     /* SPEC §4: $ per 1M tokens = price_per_hour / (3600 * tokens_per_second) * 1e6 */
        printf("  cost at $%.3f/h, %ld context: prefill $%.4f (dense) vs $%.4f, decode $%.4f vs $%.4f per 1M tokens\n",
               o->price, o->ctx[last], o->price * tm[0][last].prefill / 3600 * 1e6, o->price * tm[F][last].prefill / 3600 * 1e6,
               o->price * tm[0][last].decode / 3600 * 1e6, o->price * tm[F][last].decode / 3600 * 1e6);
    printf("{\"bench\":\"prune_timing\",\"threads\":%d,\"ctx\":%ld,\"prefill_saving\":%.4f,\"decode_saving\":%.4f,"
           "\"flops_saving\":%.4f,\"kv_saving\":%.4f,\"dense_prefill_ms\":%.5f,\"full_prefill_ms\":%.5f,"
           "\"dense_decode_ms\":%.5f,\"full_decode_ms\":%.5f,\"prefill_cpu_saving\":%.4f,\"decode_cpu_saving\":%.4f}\n",
           omp_get_max_threads(), o->ctx[last], pre, dec,
           1 - cfl.total / cd.total, 1 - tm[F][last].kv_bytes / tm[0][last].kv_bytes, 1e3 * tm[0][last].prefill,
           1e3 * tm[F][last].prefill, 1e3 * tm[0][last].decode, 1e3 * tm[F][last].decode, prec, decc);
    return 0;
}

/* ---- attention alone ------------------------------------------------------------------------------- */

static double fastest(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = fmin(m, v[i]);
    return m;
}

static int run_attn(const prune_opts *o, double *speedup_out) {
    const int H = (int)o->attn_heads, K = (int)o->attn_kv_heads, Dh = (int)o->attn_head_dim;
    const int Hi = (int)o->attn_idx_heads, Di = (int)o->attn_idx_dim;
    if (H % K != 0) { fprintf(stderr, "ds4 %s: --attn-heads must be a multiple of --attn-kv-heads\n", CMD); return 2; }
    ds4_config c;
    ds4_config_defaults(&c);
    c.index_topk = (int)o->attn_topk;
    c.index_n_heads = Hi;
    c.index_head_dim = Di;
    c.sliding_window = 0;
    long maxT = 0;
    for (int i = 0; i < o->n_attn_ctx; i++) maxT = DS4_MAX(maxT, o->attn_ctx[i]);
    const size_t KD = (size_t)K * Dh, Q = (size_t)H * Dh;
    float *k = ds4_alloc_aligned((size_t)maxT * KD * sizeof(float)), *v = ds4_alloc_aligned((size_t)maxT * KD * sizeof(float));
    const size_t nki = ds4_indexer_keys_floats((int)maxT, Di);      /* blocked indexer keys */
    float *ki = ds4_alloc_aligned(nki * sizeof(float)), *q = ds4_alloc_aligned(Q * sizeof(float));
    float *iq = ds4_alloc_aligned((size_t)Hi * Di * sizeof(float)), *iw = ds4_alloc_aligned((size_t)Hi * sizeof(float));
    float *out = ds4_alloc_aligned(Q * sizeof(float));
    int *pos = malloc(sizeof(int) * (size_t)maxT), *sel = malloc(sizeof(int) * (size_t)c.index_topk);
    if (!k || !v || !ki || !q || !iq || !iw || !out || !pos || !sel) return cli_fail(CMD);
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    for (size_t i = 0; i < (size_t)maxT * KD; i++) { k[i] = ds4_rng_normal(&r); v[i] = ds4_rng_normal(&r); }
    for (size_t i = 0; i < nki; i++) ki[i] = ds4_rng_normal(&r);
    for (size_t i = 0; i < Q; i++) q[i] = ds4_rng_normal(&r);
    for (int i = 0; i < Hi * Di; i++) iq[i] = ds4_rng_normal(&r);
    for (int i = 0; i < Hi; i++) iw[i] = 1.0f + 0.1f * ds4_rng_normal(&r);
    for (long i = 0; i < maxT; i++) pos[i] = (int)i;
    printf("\nds4 bench prune --attn (%d threads): one decode query over T cached keys, H %d, KV heads %d, Dh %d;\n"
           "  indexed: indexer %d heads x %d scores all T keys, exact top-%ld, sparse tiled attention over them.\n"
           "  Times: fastest of 25 interleaved calls in this run (least disturbed by other load).\n\n", omp_get_max_threads(), H, K, Dh, Hi, Di, o->attn_topk);
    printf("  %-7s %12s %12s %12s %9s %12s %12s\n", "T", "dense ms", "indexed ms", "(select ms)", "speedup",
           "dense MB rd", "indexed MB rd");
    double speed = 0;
    for (int ti = 0; ti < o->n_attn_ctx; ti++) {
        const int T = (int)o->attn_ctx[ti], qp = T - 1;
        enum { REPS = 25 };
        double td[REPS], tx[REPS], tsel[REPS];
        ds4_attn a = {.n_q = 1, .q = q, .qpos = &qp, .n_kv = T, .k = k, .v = v, .kpos = pos, .n_heads = H,
                      .n_kv_heads = K, .head_dim = Dh};
        for (int rep = 0; rep < REPS; rep++) {
            double t0 = ds4_time_s();
            ds4_attention_forward(&a, out, NULL);
            td[rep] = ds4_time_s() - t0;
            t0 = ds4_time_s();
            if (ds4_indexer_select(&c, iq, iw, 1, &qp, ki, pos, T, sel) != 0) return cli_fail(CMD);
            const double t1 = ds4_time_s();
            ds4_attn s = a;
            s.sel = sel;
            s.sel_k = c.index_topk;
            ds4_attention_forward(&s, out, NULL);
            tx[rep] = ds4_time_s() - t0;
            tsel[rep] = t1 - t0;
        }
        const double md = fastest(td, REPS), mx = fastest(tx, REPS), ms = fastest(tsel, REPS);
        const double topk = DS4_MIN(T, o->attn_topk);
        printf("  %-7d %12.3f %12.3f %12.3f %8.1fx %12.1f %12.1f\n", T, 1e3 * md, 1e3 * mx, 1e3 * ms, md / mx,
               2.0 * T * KD * 4 / 1e6, ((double)T * Di + 2 * topk * KD) * 4 / 1e6);
        speed = md / mx;
    }
    *speedup_out = speed;
    free(k); free(v); free(ki); free(q); free(iq); free(iw); free(out); free(pos); free(sel);

    /* memory of dense tiled prefill attention, one fresh process per T */
    const long Hm = o->attn_mem_heads, Dm = o->attn_mem_dim;
    printf("\n  dense tiled causal prefill attention over T tokens, H %ld x Dh %ld, one fresh process per T:\n"
           "  peak RSS above the process start (inputs q, k, v, out, lse are O(T); 'attn own' is what the\n"
           "  call added on top) against the naive T x T x H fp32 score matrix:\n\n", Hm, Dm);
    printf("  %-7s %10s %10s %12s %10s %14s %8s\n", "T", "inputs MB", "peak MB", "attn own MB", "peak x", "naive TxT MB",
           "time s");
    double prev = 0;
    for (int ti = 0; ti < o->n_attn_ctx; ti++) {
        char sT[32], sH[32], sD[32];
        snprintf(sT, sizeof sT, "%ld", o->attn_ctx[ti]);
        snprintf(sH, sizeof sH, "%ld", Hm);
        snprintf(sD, sizeof sD, "%ld", Dm);
        char *args[] = {"ds4", "bench", "prune", "--child-attn", sT, "--child-heads", sH, "--child-dim", sD, NULL};
        char *outs = run_child(args);
        if (!outs) return cli_fail(CMD);
        cJSON *j = cJSON_Parse(outs);
        free(outs);
        if (!j) return 1;
        const double T = (double)o->attn_ctx[ti];
        const double inputs = jnum(j, "inputs") - jnum(j, "base"), extra = jnum(j, "peak") - jnum(j, "base");
        char growth[32] = "-";
        if (prev > 0) snprintf(growth, sizeof growth, "%.2f", extra / prev);
        printf("  %-7.0f %10.1f %10.1f %12.2f %10s %14.0f %8.2f\n", T, inputs / 1e6, extra / 1e6,
               (extra - inputs) / 1e6, growth, T * T * Hm * 4 / 1e6, jnum(j, "seconds"));
        prev = extra;
        cJSON_Delete(j);
    }
    printf("  (linear: doubling T doubles the peak; the naive score matrix quadruples)\n");
    return 0;
}

/* ---- entry ------------------------------------------------------------------------------------------ */

int bench_prune(int argc, char **argv) {
    prune_opts o;
    opts_defaults(&o);
    const char *child_model = NULL, *child_ids = NULL;
    long child_ctx = 0, child_decode = 0, child_attn = 0, child_heads = 2, child_dim = 32;
    int parts = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { help(); return 0; }
        if (!strcmp(a, "--study")) { parts |= 1; continue; }
        if (!strcmp(a, "--timing")) { parts |= 2; continue; }
        if (!strcmp(a, "--attn")) { parts |= 4; continue; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        double f;
        long n;
        if (!strcmp(a, "--runs")) {
            long rl[MAX_CTX], nr;
            if (parse_list(v, rl, &nr, 0, N_RUNS - 1)) {
                fprintf(stderr, "ds4 %s: --runs expects run numbers 0..%d separated by commas, got '%s'\n", CMD,
                        N_RUNS - 1, v);
                return 2;
            }
            o.runs = 0;
            for (long k = 0; k < nr; k++) o.runs |= 1u << rl[k];
        } else if (!strcmp(a, "--data")) o.data = v;
        else if (!strcmp(a, "--val")) o.val = v;
        else if (!strcmp(a, "--tokenizer")) o.tokenizer = v;
        else if (!strcmp(a, "--work")) o.work = v;
        else if (!strcmp(a, "--child-model")) child_model = v;
        else if (!strcmp(a, "--child-ids")) child_ids = v;
        else if (!strcmp(a, "--ctx") || !strcmp(a, "--attn-ctx")) {
            int at = !strcmp(a, "--attn-ctx");
            if (parse_list(v, at ? o.attn_ctx : o.ctx, at ? &o.n_attn_ctx : &o.n_ctx, 2, 1 << 22)) {
                fprintf(stderr, "ds4 %s: %s expects a comma-separated list of up to %d lengths, got '%s'\n", CMD, a,
                        MAX_CTX, v);
                return 2;
            }
        } else if (!strcmp(a, "--lr") || !strcmp(a, "--prune-loss-weight") || !strcmp(a, "--price-per-hour")) {
            if (cli_float(CMD, a, v, &f)) return 2;
            if (!strcmp(a, "--lr")) o.lr = f;
            else if (!strcmp(a, "--price-per-hour")) o.price = f;
            else o.loss_weight = f;
        } else {
            static const struct { const char *name; size_t off; long lo, hi; } I[] = {
                {"--vocab", offsetof(prune_opts, vocab), 260, 1 << 20}, {"--hidden", offsetof(prune_opts, hidden), 8, 1 << 16},
                {"--layers", offsetof(prune_opts, layers), 1, DS4_MAX_LAYERS}, {"--heads", offsetof(prune_opts, heads), 1, 256},
                {"--head-dim", offsetof(prune_opts, head_dim), 2, 1024}, {"--ffn", offsetof(prune_opts, ffn), 1, 1 << 20},
                {"--steps", offsetof(prune_opts, steps), 1, 1 << 30}, {"--batch", offsetof(prune_opts, batch), 1, 4096},
                {"--seq", offsetof(prune_opts, seq), 2, 1 << 20}, {"--seed", offsetof(prune_opts, seed), 0, 1L << 40},
                {"--eval-tokens", offsetof(prune_opts, eval_tokens), 2, 1L << 40},
                {"--seeds", offsetof(prune_opts, seeds), 1, MAX_SEEDS},
                {"--ramp-seeds", offsetof(prune_opts, ramp_seeds), 1, MAX_SEEDS},
                {"--indexer-warmup", offsetof(prune_opts, indexer_warmup), 0, 1 << 30},
                {"--index-topk", offsetof(prune_opts, index_topk), 1, 1 << 20},
                {"--index-heads", offsetof(prune_opts, index_heads), 1, 256},
                {"--index-dim", offsetof(prune_opts, index_dim), 2, 1024}, {"--window", offsetof(prune_opts, window), 0, 1 << 20},
                {"--decode", offsetof(prune_opts, decode), 1, 1 << 16},
                {"--attn-heads", offsetof(prune_opts, attn_heads), 1, 256},
                {"--attn-kv-heads", offsetof(prune_opts, attn_kv_heads), 1, 256},
                {"--attn-head-dim", offsetof(prune_opts, attn_head_dim), 1, 1024},
                {"--attn-topk", offsetof(prune_opts, attn_topk), 1, 1 << 22},
                {"--attn-index-heads", offsetof(prune_opts, attn_idx_heads), 1, 256},
                {"--attn-index-dim", offsetof(prune_opts, attn_idx_dim), 2, 1024},
                {"--attn-mem-heads", offsetof(prune_opts, attn_mem_heads), 1, 256},
                {"--attn-mem-dim", offsetof(prune_opts, attn_mem_dim), 1, 1024},
            };
            int found = 0;
            for (size_t k = 0; k < sizeof I / sizeof I[0] && !found; k++)
                if (!strcmp(a, I[k].name)) {
                    if (cli_int(CMD, a, v, I[k].lo, I[k].hi, &n)) return 2;
                    *(long *)((char *)&o + I[k].off) = n;
                    found = 1;
                }
            if (found) continue;
            if (!strcmp(a, "--child-ctx")) { if (cli_int(CMD, a, v, 1, 1 << 24, &child_ctx)) return 2; }
            else if (!strcmp(a, "--child-decode")) { if (cli_int(CMD, a, v, 0, 1 << 20, &child_decode)) return 2; }
            else if (!strcmp(a, "--child-attn")) { if (cli_int(CMD, a, v, 1, 1 << 24, &child_attn)) return 2; }
            else if (!strcmp(a, "--child-heads")) { if (cli_int(CMD, a, v, 1, 256, &child_heads)) return 2; }
            else if (!strcmp(a, "--child-dim")) { if (cli_int(CMD, a, v, 1, 1024, &child_dim)) return 2; }
            else return cli_unknown(CMD, a);
        }
    }
    if (child_model) return child_model_run(child_model, child_ids, child_ctx, child_decode);
    if (child_attn) return child_attn_mem(child_attn, child_heads, child_dim);
    if (parts) { o.do_study = parts & 1; o.do_timing = (parts >> 1) & 1; o.do_attn = (parts >> 2) & 1; }
    if (o.index_topk >= o.seq)
        fprintf(stderr, "ds4 %s: note: --index-topk %ld >= --seq %ld: training attention is dense\n", CMD, o.index_topk, o.seq);

    run_result res[N_RUNS];
    val_stats vs[N_RUNS];
    memset(res, 0, sizeof res);
    memset(vs, 0, sizeof vs);
    int vocab = 0, rc, timing_pass = 0;
    double speed = 0;
    /* each part's table reaches the output as soon as it is done (stdout to a file is buffered) */
    if (o.do_study && (rc = run_study(&o, &vocab, res, vs)) != 0) return rc;
    fflush(stdout);
    if (o.do_timing && (rc = run_timing(&o, &timing_pass)) != 0) return rc;
    fflush(stdout);
    if (o.do_attn && (rc = run_attn(&o, &speed)) != 0) return rc;
    printf("\nsummary (each a ratio measured in this run):\n");
    if (o.do_study && (o.runs & 1)) {
        if (o.runs >> 3 & 1) {
            const val_stats *s = &vs[3];
            printf("  30%% schedule val loss vs unpruned      %+.2f%%", 100 * s->rel);
            if (!isnan(s->rel_se))
                printf(" +- %.2f%% (se; paired %+.2f%% +- %.2f%%) over %ld seeds", 100 * s->rel_se, 100 * s->paired,
                       100 * s->paired_se, s->n);
            printf("   (target within 1%%)  %s\n", fabs(s->rel) <= 0.01 ? "met" : "NOT met");
            if (!isnan(s->rel_se))
                printf("    95%% interval of the difference (+-2 se): [%+.2f%%, %+.2f%%]%s\n", 100 * (s->rel - 2 * s->rel_se),
                       100 * (s->rel + 2 * s->rel_se),
                       fabs(s->rel) + 2 * s->rel_se <= 0.01 ? ", inside +-1%" : ", not entirely inside +-1%");
        }
        for (int r = 1; r < N_RUNS; r++)
            if (r != 3 && (o.runs >> r & 1))
                printf("  %-22s val loss vs unpruned  %+.2f%% (%ld seed%s)\n", RUN_NAME[r], 100 * vs[r].rel, vs[r].n,
                       vs[r].n > 1 ? "s" : "");
        if ((o.runs >> 3 & 1) && (o.runs >> 4 & 1))
            printf("  causal decision agreement (held-out)   %.1f%% (30%%), %.1f%% (30%% + indexer)  (target >= 95%%)  %s\n",
                   100 * res[3].agree, 100 * res[4].agree, res[3].agree >= 0.95 && res[4].agree >= 0.95 ? "met" : "NOT met");
        /* JSON: one entry per run, null for runs not trained */
        double vl[N_RUNS], sdv[N_RUNS], rel[N_RUNS], se[N_RUNS], pr[N_RUNS], pse[N_RUNS], ag[N_RUNS], ta[N_RUNS], ns[N_RUNS];
        for (int r = 0; r < N_RUNS; r++) {
            const int on = o.runs >> r & 1;
            vl[r] = on ? vs[r].mean : NAN;
            sdv[r] = on ? vs[r].sd : NAN;
            rel[r] = on ? vs[r].rel : NAN;
            se[r] = on ? vs[r].rel_se : NAN;
            pr[r] = on ? vs[r].paired : NAN;
            pse[r] = on ? vs[r].paired_se : NAN;
            ns[r] = on ? (double)vs[r].n : NAN;
            ag[r] = on ? res[r].agree : NAN;
            ta[r] = on ? res[r].train_agree : NAN;
        }
        printf("{\"bench\":\"prune_study\",\"threads\":%d,\"tokens_per_run\":%ld,\"eval_tokens\":%ld",
               omp_get_max_threads(), o.steps * o.batch * o.seq, eval_tokens_used);
        json_array("seeds", ns);
        json_array("val_loss", vl);
        json_array("val_loss_sd", sdv);
        json_array("val_rel_diff", rel);
        json_array("val_rel_diff_se", se);
        json_array("val_paired_diff", pr);
        json_array("val_paired_diff_se", pse);
        json_array("agreement", ag);
        json_array("train_agreement", ta);
        printf("}\n");
    }
    if (o.do_timing)
        printf("  full configuration wall time at %ld ctx  %s (see the timing table)\n", o.ctx[o.n_ctx - 1],
               timing_pass ? "met (>= 40% less, prefill and decode)" : "NOT met for prefill and decode both");
    if (o.do_attn) {
        printf("  indexed vs dense tiled decode at %ld    %.1fx  (target >= 5x)  %s\n", o.attn_ctx[o.n_attn_ctx - 1],
               speed, speed >= 5 ? "met" : "NOT met");
        printf("{\"bench\":\"prune_attn\",\"threads\":%d,\"T\":%ld,\"speedup\":%.3f}\n", omp_get_max_threads(),
               o.attn_ctx[o.n_attn_ctx - 1], speed);
    }
    (void)vocab;
    return 0;
}
