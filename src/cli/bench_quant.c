/* bench_quant.c — `ds4 bench quant`: in one run, perplexity of a model in
 * fp32, Q8_0, Q4_0 and Q4_K on a held-out text, and batch-1 decode tokens/s of
 * each against the memory-bandwidth bound for the bytes it reads per token. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "infer/infer.h"
#include "model/quantized.h"
#include "train/measure.h"
#include "util/util.h"

typedef struct {
    int type;
    double ppl, loss, eval_s, tps, bytes, bound, weights_mb;
    int n_q, n_q8_fallback, n_f32;
} qrow;

/* Greedy batch-1 decode of n tokens after a short prefill; tokens/s. */
static int decode_tps(const ds4_model *m, int prompt, int n, double *tps, int *first_tokens) {
    const ds4_config *c = &m->cfg;
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, prompt + n);
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int *ids = malloc(sizeof(int) * (size_t)prompt), *seq = calloc((size_t)prompt, sizeof(int));
    int rc = -1;
    if (!kv || !logits || !ids || !seq) { ds4_set_error("out of memory"); goto out; }
    for (int i = 0; i < prompt; i++) ids[i] = (i * 7 + 11) % c->vocab_size;
    ds4_batch b = {.n = prompt, .tokens = ids, .seq = seq};
    int last = prompt - 1, zero = 0, tok = 0;
    if (ds4_forward(m, &b, kv, &last, 1, logits)) goto out;
    double t0 = 0;
    for (int i = -1; i < n; i++) {                 /* i = -1: warm-up step, not timed */
        int best = 0;
        for (int v = 1; v < c->vocab_size; v++) if (logits[v] > logits[best]) best = v;
        tok = best;
        if (i >= 0 && i < 8) first_tokens[i] = tok;
        if (i == 0) t0 = ds4_time_s();
        if (i == n - 1) break;
        ds4_batch d = {.n = 1, .tokens = &tok, .seq = &zero};
        if (ds4_forward(m, &d, kv, NULL, 1, logits)) goto out;
    }
    *tps = (n - 1) / (ds4_time_s() - t0);
    rc = 0;
out:
    free(ids);
    free(seq);
    free(logits);
    ds4_kv_cache_free(kv);
    return rc;
}

int bench_quant(int argc, char **argv) {
    const char *dir = "models/default", *text_path = "/work/shared/data/brown/val.txt", *llama = NULL;
    long max_tokens = 0, n_dec = 128, T = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 bench quant [--model DIR] [--text F] [--max-tokens N] [--ctx T] [-n N]\n"
                   "                       [--llama-cpp PATH]\n"
                   "Perplexity on F (default %s) of the model in fp32, Q8_0, Q4_0, Q4_K\n"
                   "(quantized in memory, as ds4 quantize does), and batch-1 greedy decode\n"
                   "tokens/s of each as a fraction of bandwidth / bytes read per token, the read\n"
                   "bandwidth measured in this run. Targets: ppl within 0.5%% / 5%% / 3%% of fp32,\n"
                   "decode >= 80%% of the bound. --llama-cpp is accepted but the comparison with\n"
                   "llama.cpp is not implemented (use ds4 export-gguf and llama.cpp's own tools).\n",
                   text_path);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--text")) text_path = v;
        else if (!strcmp(a, "--max-tokens")) { if (cli_int("bench quant", a, v, 2, 1L << 30, &max_tokens)) return 2; }
        else if (!strcmp(a, "--ctx")) { if (cli_int("bench quant", a, v, 2, 1 << 20, &T)) return 2; }
        else if (!strcmp(a, "-n")) { if (cli_int("bench quant", a, v, 2, 1 << 20, &n_dec)) return 2; }
        else if (!strcmp(a, "--llama-cpp")) llama = v;
        else return cli_unknown("bench quant", a);
    }
    ds4_model *f32;
    ds4_tokenizer *tok;
    if (ds4_open_model_dir(dir, &f32, &tok)) return cli_fail("bench quant");
    if (f32->quant) {
        fprintf(stderr, "ds4 bench quant: %s is already quantized; give the fp32 model\n", dir);
        return 2;
    }
    char *text;
    size_t len;
    int *ids = NULL;
    size_t n_ids = 0;
    if (ds4_read_file(text_path, &text, &len) || ds4_tokenizer_encode(tok, text, len, &ids, &n_ids))
        return cli_fail("bench quant");
    free(text);
    if (max_tokens > 0 && (size_t)max_tokens < n_ids) n_ids = (size_t)max_tokens;
    const ds4_config *c = &f32->cfg;
    const int prompt = 16;
    if (prompt + n_dec > c->max_position_embeddings) n_dec = c->max_position_embeddings - prompt;
    fprintf(stderr, "measuring memory read bandwidth...\n");
    const double bw = ds4_measure_read_bandwidth((size_t)512 << 20, 1.0);
    qrow rows[DS4_Q_COUNT];
    int toks[DS4_Q_COUNT][8];
    memset(rows, 0, sizeof rows);
    memset(toks, 0, sizeof toks);
    for (int qt = DS4_Q_F32; qt < DS4_Q_COUNT; qt++) {
        qrow *r = &rows[qt];
        r->type = qt;
        ds4_model *m = f32;
        if (qt != DS4_Q_F32) {
            if (!(m = ds4_model_load(dir)) || ds4_model_quantize(m, (ds4_qtype)qt)) return cli_fail("bench quant");
            for (int i = 0; i < m->layout.n_tensors; i++) {
                int ty = m->quant->t[i].type;
                if (ty == qt) r->n_q++;
                else if (ty == DS4_Q_Q8_0) r->n_q8_fallback++;
                else if (m->layout.tensors[i].ndim == 2) r->n_f32++;
            }
        }
        fprintf(stderr, "%s: perplexity over %zu tokens...\n", ds4_q_type_name((ds4_qtype)qt), n_ids);
        ds4_eval_result er;
        if (ds4_eval_tokens(m, ids, n_ids, (int)T, 4, &er)) return cli_fail("bench quant");
        r->ppl = er.ppl;
        r->loss = er.loss;
        r->eval_s = er.seconds;
        fprintf(stderr, "%s: decode %ld tokens...\n", ds4_q_type_name((ds4_qtype)qt), n_dec);
        if (decode_tps(m, prompt, (int)n_dec, &r->tps, toks[qt])) return cli_fail("bench quant");
        r->bytes = (double)ds4_model_weight_bytes_per_token(m);
        r->bound = bw * 1e9 / r->bytes;
        r->weights_mb = ds4_model_weight_bytes(m) / 1e6;
        if (m != f32) ds4_model_free(m);
    }
    static const double target[DS4_Q_COUNT] = {0, 0.5, 5, 3};
    double load[1] = {0};
    if (getloadavg(load, 1) < 1) load[0] = -1;
    printf("ds4 bench quant — %s on %s (%zu tokens), batch-1 decode, %d threads, read bandwidth %.1f GB/s, "
           "load average %.1f\n", dir, text_path, n_ids, omp_get_max_threads(), bw, load[0]);
    printf("%-6s %10s %9s %8s %10s %10s %9s %10s %8s %s\n", "type", "ppl", "dppl%", "target", "weightsMB",
           "MB/token", "tok/s", "bound", "of bound", "tensors (quantized / q8_0 fallback / f32 matrices)");
    for (int qt = DS4_Q_F32; qt < DS4_Q_COUNT; qt++) {
        const qrow *r = &rows[qt];
        double d = 100 * (r->ppl / rows[0].ppl - 1);
        char tgt[16] = "-";
        if (qt) snprintf(tgt, sizeof tgt, "%s%.1f%%", d <= target[qt] ? "<=" : "FAIL>", target[qt]);
        printf("%-6s %10.3f %+9.3f %8s %10.2f %10.3f %9.1f %10.1f %7.1f%% %d / %d / %d\n",
               ds4_q_type_name((ds4_qtype)qt), r->ppl, d, tgt, r->weights_mb, r->bytes / 1e6, r->tps, r->bound,
               100 * r->tps / r->bound, r->n_q, r->n_q8_fallback, r->n_f32);
    }
    printf("greedy tokens (first 8) agree with fp32:");
    for (int qt = 1; qt < DS4_Q_COUNT; qt++) {
        int agree = 0;
        while (agree < 8 && toks[qt][agree] == toks[0][agree]) agree++;
        printf(" %s %d/8", ds4_q_type_name((ds4_qtype)qt), agree);
    }
    printf("\nstays fp32: embeddings (and the tied lm_head), norms, MoE router + bias, pruning routers, indexer "
           "weights_proj; an untied lm_head is Q8_0 under q4 types\n");
    if (llama) printf("llama.cpp comparison: not implemented (got --llama-cpp %s)\n", llama);
    printf("{\"bench\":\"quant\",\"model\":\"%s\",\"tokens\":%zu,\"threads\":%d,\"load_avg\":%.2f,\"bandwidth_gbs\":%.2f", dir,
           n_ids, omp_get_max_threads(), load[0], bw);
    for (int qt = DS4_Q_F32; qt < DS4_Q_COUNT; qt++) {
        const qrow *r = &rows[qt];
        printf(",\"%s\":{\"ppl\":%.4f,\"ppl_rel\":%.5f,\"tokens_per_s\":%.2f,\"bytes_per_token\":%.0f,"
               "\"bound_tokens_per_s\":%.2f,\"fraction_of_bound\":%.4f,\"weights_mb\":%.3f}",
               ds4_q_type_name((ds4_qtype)qt), r->ppl, r->ppl / rows[0].ppl - 1, r->tps, r->bytes, r->bound,
               r->tps / r->bound, r->weights_mb);
    }
    printf("}\n");
    free(ids);
    ds4_tokenizer_free(tok);
    ds4_model_free(f32);
    return 0;
}
