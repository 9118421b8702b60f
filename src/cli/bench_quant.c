/* bench_quant.c — `ds4 bench quant`: in one run, perplexity of a model in
 * fp32, Q8_0, Q4_0 and Q4_K on a held-out text, and batch-1 decode tokens/s of
 * each against the memory-bandwidth bound for the bytes it reads per token
 * (and, as the baseline, of the same blocks in ggml's row layout). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "infer/infer.h"
#include "model/quantized.h"
#include "util/util.h"

typedef struct {
    int type;
    double ppl, loss, eval_s, bytes, weights_mb;
    int n_q, n_q8_fallback, n_f32;
} qrow;

/* The decode model: random weights of a dense config whose Q4 weights (~62 MB)
 * are twice a 32 MB last-level cache, so every type streams from DRAM. */
static void decode_preset(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 4096;
    c->hidden_size = 1024;
    c->intermediate_size = 2816;
    c->num_hidden_layers = 8;
    c->num_attention_heads = 16;
    c->num_key_value_heads = 16;
    c->head_dim = 64;
    c->max_position_embeddings = 1024;
    c->first_k_dense_replace = 8;
    c->tie_word_embeddings = 0;
}

typedef struct {
    double tps, step_med, step_min, bw_med, bw_best, bytes, bound, frac, frac_best, frac_pair;
} dres;

/* Greedy batch-1 decode of n tokens after a short prefill, a streaming read of
 * `bytes` (the bytes a token reads) every `every` steps on the same threads.
 * Besides median vs median and best vs best, each pass is paired with the
 * step right after it (frac_pair: the median of those ratios), so a swing of
 * the machine's bandwidth over the run (other tenants) cancels in a pair. */
static int decode_measure(const ds4_model *m, int prompt, int n, int every, double bytes, dres *r, int *first_tokens) {
    const ds4_config *c = &m->cfg;
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, prompt + n + 1);
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int *ids = malloc(sizeof(int) * (size_t)prompt), *seq = calloc((size_t)prompt, sizeof(int));
    double *ts = malloc(sizeof(double) * (size_t)n), *tb = malloc(sizeof(double) * (size_t)(n / every + 1));
    double *pair = malloc(sizeof(double) * (size_t)(n / every + 1));   /* [passes] pass / next step */
    bench_bw bw = {0};
    int rc = -1, k = 0;
    if (!kv || !logits || !ids || !seq || !ts || !tb || !pair || bench_bw_init(&bw, (size_t)bytes)) {
        ds4_set_error("out of memory");
        goto out;
    }
    for (int i = 0; i < prompt; i++) ids[i] = (i * 7 + 11) % c->vocab_size;
    ds4_batch b = {.n = prompt, .tokens = ids, .seq = seq};
    int last = prompt - 1, zero = 0, tok = 0;
    if (ds4_forward(m, &b, kv, &last, 1, logits)) goto out;
    bench_bw_pass(&bw);
    double total = 0;
    for (int i = -1; i < n; i++) {                 /* i = -1: warm-up step, not timed */
        int best = 0;
        for (int v = 1; v < c->vocab_size; v++) if (logits[v] > logits[best]) best = v;
        tok = best;
        if (i >= 0 && i < 8 && first_tokens) first_tokens[i] = tok;
        if (i >= 0 && i % every == 0) tb[k++] = bench_bw_pass(&bw);
        ds4_batch d = {.n = 1, .tokens = &tok, .seq = &zero};
        double t0 = ds4_time_s();
        if (ds4_forward(m, &d, kv, NULL, 1, logits)) goto out;
        if (i >= 0) total += ts[i] = ds4_time_s() - t0;
        if (i >= 0 && i % every == 0) pair[k - 1] = tb[k - 1] / ts[i];
    }
    const double bwb = (double)bw.n * sizeof(float);
    r->tps = n / total;
    r->step_med = bench_median(ts, n);
    r->step_min = bench_min(ts, n);
    r->bw_med = bwb / bench_median(tb, k) / 1e9;
    r->bw_best = bwb / bench_min(tb, k) / 1e9;
    r->bytes = bytes;
    r->bound = r->bw_med * 1e9 / bytes;
    r->frac = 1.0 / r->step_med / r->bound;
    r->frac_best = 1.0 / r->step_min / (r->bw_best * 1e9 / bytes);
    r->frac_pair = bench_median(pair, k) * bytes / bwb;
    rc = 0;
out:
    bench_bw_free(&bw);
    free(ids); free(seq); free(logits); free(ts); free(tb); free(pair);
    ds4_kv_cache_free(kv);
    return rc;
}

int bench_quant(int argc, char **argv) {
    const char *dir = "models/default", *text_path = "/work/shared/data/brown/val.txt", *llama = NULL;
    const char *dec_cfg = NULL;
    long max_tokens = 0, n_dec = 64, T = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 bench quant [--model DIR] [--text F] [--max-tokens N] [--ctx T] [-n N]\n"
                   "                       [--decode-config F|model] [--llama-cpp PATH]\n"
                   "Perplexity on F (default %s) of the model in fp32, Q8_0, Q4_0, Q4_K\n"
                   "(quantized in memory, as ds4 quantize does), and batch-1 greedy decode of N tokens\n"
                   "in each type: of that model (its weights fit in the last-level cache, so its bound\n"
                   "is cache bandwidth) and of a decode model (random weights; default 120M params,\n"
                   "D 1024, L 8, FFN 2816, V 4096, whose Q4 weights are twice a 32 MB cache; or the\n"
                   "config F; `model` = the perplexity model only). Bound = read bandwidth / bytes a\n"
                   "token reads, the bandwidth a streaming read of a buffer that size on the same\n"
                   "threads, interleaved with the decode steps. Baseline in the same run: the decode model's\n"
                   "blocks in ggml's row layout with the row kernels (ds4 runs them in the x8 layout).\n"
                   "Targets: ppl within 0.5%% / 5%% / 3%%\n"
                   "of fp32, decode >= 80%% of the bound. --llama-cpp is accepted but the comparison\n"
                   "with llama.cpp is not implemented (use ds4 export-gguf and llama.cpp's tools).\n",
                   text_path);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--text")) text_path = v;
        else if (!strcmp(a, "--max-tokens")) { if (cli_int("bench quant", a, v, 2, 1L << 30, &max_tokens)) return 2; }
        else if (!strcmp(a, "--ctx")) { if (cli_int("bench quant", a, v, 2, 1 << 20, &T)) return 2; }
        else if (!strcmp(a, "-n")) { if (cli_int("bench quant", a, v, 2, 1 << 20, &n_dec)) return 2; }
        else if (!strcmp(a, "--decode-config")) dec_cfg = v;
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
    const int big = !dec_cfg || strcmp(dec_cfg, "model") != 0;
    ds4_config dc;
    if (big) {
        if (!dec_cfg) decode_preset(&dc);
        else if (ds4_config_load(&dc, dec_cfg) != 0) return cli_fail("bench quant");
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
    const int prompt = 16, every = 4;
    long n_small = n_dec;
    if (prompt + n_small + 1 > c->max_position_embeddings) n_small = c->max_position_embeddings - prompt - 1;
    if (big && prompt + n_dec + 1 > dc.max_position_embeddings) n_dec = dc.max_position_embeddings - prompt - 1;
    const long llc = bench_llc_bytes();
    qrow rows[DS4_Q_COUNT];
    dres sm[DS4_Q_COUNT], bg[DS4_Q_COUNT], br[DS4_Q_COUNT];   /* br: the decode model in row layout */
    int toks[DS4_Q_COUNT][8];
    memset(rows, 0, sizeof rows);
    memset(sm, 0, sizeof sm);
    memset(bg, 0, sizeof bg);
    memset(br, 0, sizeof br);
    memset(toks, 0, sizeof toks);
    double big_params = 0;
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
        r->bytes = (double)ds4_model_weight_bytes_per_token(m);
        r->weights_mb = ds4_model_weight_bytes(m) / 1e6;
        fprintf(stderr, "%s: decode %ld tokens of %s...\n", ds4_q_type_name((ds4_qtype)qt), n_small, dir);
        if (decode_measure(m, prompt, (int)n_small, every, r->bytes, &sm[qt], toks[qt])) return cli_fail("bench quant");
        if (m != f32) ds4_model_free(m);
        if (!big) continue;
        fprintf(stderr, "%s: decode %ld tokens of the decode model...\n", ds4_q_type_name((ds4_qtype)qt), n_dec);
        ds4_model *d = ds4_model_create(&dc, 1);
        if (!d || (qt != DS4_Q_F32 && ds4_model_quantize(d, (ds4_qtype)qt))) return cli_fail("bench quant");
        big_params = (double)ds4_model_n_params(d);
        if (decode_measure(d, prompt, (int)n_dec, every, (double)ds4_model_weight_bytes_per_token(d), &bg[qt], NULL))
            return cli_fail("bench quant");
        if (qt != DS4_Q_F32) {        /* the baseline: the same blocks in ggml's row layout, row kernels */
            fprintf(stderr, "%s: decode %ld tokens of the decode model in row layout...\n",
                    ds4_q_type_name((ds4_qtype)qt), n_dec);
            if (ds4_model_quant_rows(d) ||
                decode_measure(d, prompt, (int)n_dec, every, (double)ds4_model_weight_bytes_per_token(d), &br[qt], NULL))
                return cli_fail("bench quant");
        }
        ds4_model_free(d);
    }
    static const double target[DS4_Q_COUNT] = {0, 0.5, 5, 3};
    double load[1] = {0};
    if (getloadavg(load, 1) < 1) load[0] = -1;
    printf("ds4 bench quant — %s on %s (%zu tokens), batch-1 decode, %d threads, last-level cache %.0f MB, "
           "load average %.1f\n", dir, text_path, n_ids, omp_get_max_threads(), llc / 1e6, load[0]);
    printf("%-6s %9s %8s %8s %9s | %-35s", "type", "ppl", "dppl%", "target", "weightsMB",
           "this model: MB/tok  tok/s of bound");
    if (big) printf("| decode model: MB/tok  tok/s   GB/s   bound  of bound (best) paired");
    printf("\n");
    for (int qt = DS4_Q_F32; qt < DS4_Q_COUNT; qt++) {
        const qrow *r = &rows[qt];
        double d = 100 * (r->ppl / rows[0].ppl - 1);
        char tgt[16] = "-";
        if (qt) snprintf(tgt, sizeof tgt, "%s%.1f%%", d <= target[qt] ? "<=" : "FAIL>", target[qt]);
        printf("%-6s %9.3f %+8.3f %8s %9.2f | %18.3f %6.0f %7.1f%% ", ds4_q_type_name((ds4_qtype)qt), r->ppl, d,
               tgt, r->weights_mb, r->bytes / 1e6, sm[qt].tps, 100 * sm[qt].frac);
        if (big)
            printf("| %13.2f %6.1f %6.1f %7.1f %7.1f%% (%.1f%%) %5.1f%%", bg[qt].bytes / 1e6, bg[qt].tps,
                   bg[qt].bw_med, bg[qt].bound, 100 * bg[qt].frac, 100 * bg[qt].frac_best, 100 * bg[qt].frac_pair);
        printf("\n");
    }
    printf("tensors (quantized / q8_0 fallback / f32 matrices):");
    for (int qt = 1; qt < DS4_Q_COUNT; qt++)
        printf(" %s %d/%d/%d", ds4_q_type_name((ds4_qtype)qt), rows[qt].n_q, rows[qt].n_q8_fallback, rows[qt].n_f32);
    printf("\nthis model's bytes %s the cache: its bound is %s bandwidth\n",
           rows[0].bytes > llc ? "exceed" : "fit in", rows[0].bytes > llc ? "DRAM" : "cache");
    if (big)
        printf("decode model: %.1fM params, random weights; Q4 bytes %s the cache (of bound: median step vs median "
               "bandwidth pass; best vs best in brackets; paired: median over steps of the pass just before / the step)\n", big_params / 1e6,
               bg[DS4_Q_Q4_0].bytes > llc ? "exceed" : "fit in");
    if (big) {
        printf("decode model, the same blocks in ggml's row layout (row kernels; ds4 keeps them in the x8 layout):");
        for (int qt = 1; qt < DS4_Q_COUNT; qt++)
            printf(" %s %.1f tok/s, %.1f%% of bound (x8 %.2fx)", ds4_q_type_name((ds4_qtype)qt), br[qt].tps,
                   100 * br[qt].frac, br[qt].tps > 0 ? bg[qt].tps / br[qt].tps : 0.0);
        printf("\n");
    }
    printf("greedy tokens (first 8) agree with fp32:");
    for (int qt = 1; qt < DS4_Q_COUNT; qt++) {
        int agree = 0;
        while (agree < 8 && toks[qt][agree] == toks[0][agree]) agree++;
        printf(" %s %d/8", ds4_q_type_name((ds4_qtype)qt), agree);
    }
    printf("\nstays fp32: embeddings, norms, MoE router + bias, pruning routers, indexer weights_proj; the output "
           "projection is Q8_0 under q4 types (a tied one reads a Q8_0 copy of the embeddings)\n");
    if (llama) printf("llama.cpp comparison: not implemented (got --llama-cpp %s)\n", llama);
    printf("{\"bench\":\"quant\",\"model\":\"%s\",\"tokens\":%zu,\"threads\":%d,\"load_avg\":%.2f,\"llc_bytes\":%ld", dir,
           n_ids, omp_get_max_threads(), load[0], llc);
    for (int qt = DS4_Q_F32; qt < DS4_Q_COUNT; qt++) {
        const qrow *r = &rows[qt];
        printf(",\"%s\":{\"ppl\":%.4f,\"ppl_rel\":%.5f,\"weights_mb\":%.3f,\"bytes_per_token\":%.0f,\"tokens_per_s\":%.2f,"
               "\"bandwidth_gbs\":%.2f,\"fraction_of_bound\":%.4f",
               ds4_q_type_name((ds4_qtype)qt), r->ppl, r->ppl / rows[0].ppl - 1, r->weights_mb, r->bytes, sm[qt].tps,
               sm[qt].bw_med, sm[qt].frac);
        if (big)
            printf(",\"decode_model\":{\"bytes_per_token\":%.0f,\"tokens_per_s\":%.2f,\"bandwidth_gbs\":%.2f,"
                   "\"bound_tokens_per_s\":%.2f,\"fraction_of_bound\":%.4f,\"fraction_of_bound_best\":%.4f,"
                   "\"fraction_of_bound_paired\":%.4f",
                   bg[qt].bytes, bg[qt].tps, bg[qt].bw_med, bg[qt].bound, bg[qt].frac, bg[qt].frac_best,
                   bg[qt].frac_pair);
        if (big && qt != DS4_Q_F32)
            printf(",\"row_layout\":{\"tokens_per_s\":%.2f,\"fraction_of_bound\":%.4f},\"x8_speedup\":%.3f",
                   br[qt].tps, br[qt].frac, br[qt].tps > 0 ? bg[qt].tps / br[qt].tps : 0.0);
        if (big) printf("}");
        printf("}");
    }
    printf("}\n");
    free(ids);
    ds4_tokenizer_free(tok);
    ds4_model_free(f32);
    return 0;
}
