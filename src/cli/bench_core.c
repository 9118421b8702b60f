/* bench_core.c — `ds4 bench train` and `ds4 bench decode`: the engine-core
 * benchmarks, each measured against the machine's limit in the same run. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/bench.h"
#include "cli/cli.h"
#include "model/cost.h"
#include "model/forward.h"
#include "train/measure.h"
#include "train/train.h"
#include "util/util.h"

void bench_preset_17m(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 4096;
    c->hidden_size = 384;
    c->intermediate_size = 1024;
    c->num_hidden_layers = 8;
    c->num_attention_heads = 6;
    c->num_key_value_heads = 6;
    c->head_dim = 64;
    c->max_position_embeddings = 1024;
    c->first_k_dense_replace = 8;
    c->tie_word_embeddings = 0;
}

static int load_cfg(const char *cmd, const char *path, ds4_config *c) {
    if (!path) { bench_preset_17m(c); return 0; }
    if (ds4_config_load(c, path) != 0) { cli_fail(cmd); return -1; }
    return 0;
}

/* Runs bench/torch_train.py on the same dense config; returns its tokens/s or 0. */
static double run_torch_peer(const ds4_config *c, int threads, long steps, long B, long T) {
    if (c->n_routed_experts > 0 || c->num_key_value_heads != c->num_attention_heads) {
        fprintf(stderr, "bench train: the PyTorch peer covers dense models without GQA only\n");
        return 0;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 bench/torch_train.py --threads %d --steps %ld --batch %ld --seq %ld "
             "--vocab %d --hidden %d --layers %d --heads %d --ffn %d 2>&1",
             threads, steps, B, T, c->vocab_size, c->hidden_size, c->num_hidden_layers,
             c->num_attention_heads, c->intermediate_size);
    fprintf(stderr, "running the PyTorch peer...\n");
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[1024];
    double tps = 0;
    while (fgets(line, sizeof line, p)) {
        const char *k = strstr(line, "\"tokens_per_s\": ");
        if (k) tps = strtod(k + 16, NULL);
    }
    if (pclose(p) != 0 || tps <= 0) {
        fprintf(stderr, "bench train: the PyTorch peer did not run (needs /usr/bin/python3 with torch, run from the repo root)\n");
        return 0;
    }
    return tps;
}

/* sgemm GFLOP/s at the model's own GEMM shapes (rows = tokens of a batch):
 * the projections and FFN of a dense layer and lm_head, C = A B^T as in the
 * forward, weighted by their FLOPs (total FLOPs / total time). */
static double sgemm_at_model_shapes(const ds4_config *c, int n, double secs_each) {
    const int D = c->hidden_size, Q = c->num_attention_heads * c->head_dim;
    const int KD = c->num_key_value_heads * c->head_dim, F = c->intermediate_size;
    const int shapes[][2] = {{Q, D}, {KD, D}, {D, Q}, {F, D}, {D, F}, {c->vocab_size, D}};   /* out, in */
    const double count[] = {1, 2, 1, 2, 1, 1.0 / c->num_hidden_layers};                    /* per layer */
    double flops = 0, time = 0;
    for (int i = 0; i < 6; i++) {
        const double g = ds4_measure_sgemm_gflops(n, shapes[i][0], shapes[i][1], secs_each);
        if (g <= 0) return 0;
        const double f = 2.0 * n * shapes[i][0] * shapes[i][1] * count[i];
        flops += f;
        time += f / (g * 1e9);
    }
    return flops / time / 1e9;
}

int bench_train(int argc, char **argv) {
    const char *cfg_path = NULL;
    long steps = 4, B = 8, T = 256;
    double price = 0;
    int torch = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--torch")) { torch = 1; continue; }
        if (cli_is_help(a)) {
            printf("usage: ds4 bench train [--config F] [--steps N] [--batch B] [--seq T] [--torch] [--price-per-hour X]\n"
                   "Times forward+backward+AdamW steps on random tokens (default: the dense 17.3M model of\n"
                   "SPEC §4, B 8 x T 256) and compares achieved GFLOP/s with OpenBLAS sgemm measured in the\n"
                   "same run (1024^3 between the steps, and at the model's GEMM shapes; the higher counts).\n"
                   "--torch also runs the PyTorch peer (bench/torch_train.py, Debian python3-torch) on the\n"
                   "same dense config, threads, batch and steps, right after ds4, and reports the ratio.\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--config")) cfg_path = v;
        else if (!strcmp(a, "--steps")) { if (cli_int("bench train", a, v, 1, 100000, &steps)) return 2; }
        else if (!strcmp(a, "--batch")) { if (cli_int("bench train", a, v, 1, 4096, &B)) return 2; }
        else if (!strcmp(a, "--seq")) { if (cli_int("bench train", a, v, 1, 1 << 20, &T)) return 2; }
        else if (!strcmp(a, "--price-per-hour")) { if (cli_float("bench train", a, v, &price)) return 2; }
        else return cli_unknown("bench train", a);
    }
    ds4_config c;
    if (load_cfg("bench train", cfg_path, &c) != 0) return 1;
    ds4_model *m = ds4_model_create(&c, 1);
    if (!m) return cli_fail("bench train");
    const int threads = omp_get_max_threads();
    fprintf(stderr, "measuring sgemm at the model's shapes...\n");
    const double shape_gflops = sgemm_at_model_shapes(&c, (int)(B * T), 0.2);
    ds4_train_ctx *ctx = ds4_train_ctx_create(m, (int)B, (int)T);
    float *grads = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    int *ids = malloc(sizeof(int) * (size_t)B * (T + 1));
    if (!ctx || !grads || !ids) return cli_fail("bench train");
    ds4_rng rng;
    ds4_rng_seed(&rng, 7);
    for (long i = 0; i < B * (T + 1); i++) ids[i] = (int)(ds4_rng_u64(&rng) % (uint64_t)c.vocab_size);
    ds4_adamw opt = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    if (ds4_adamw_init(&opt, m) != 0) return cli_fail("bench train");
    double best = 1e30, total = 0, peak = 0;
    const size_t nfl = m->layout.n_floats;
    for (long s = 0; s <= steps; s++) {      /* step 0 is warm-up */
        /* sgemm 1024^3 probes between the steps: the same load as the steps */
        const double g = ds4_measure_sgemm_gflops(1024, 1024, 1024, 0.3);
        if (g > peak) peak = g;
        double t0 = ds4_time_s();
        #pragma omp parallel for schedule(static)
        for (size_t k0 = 0; k0 < nfl; k0 += 65536)
            memset(grads + k0, 0, DS4_MIN((size_t)65536, nfl - k0) * sizeof(float));
        if (isnan(ds4_train_ctx_step(ctx, m, ids, grads, 1.0f))) return cli_fail("bench train");
        ds4_clip_grad_norm(m, grads, 1.0f);
        ds4_adamw_step(&opt, m, grads, 1e-4f);
        double dt = ds4_time_s() - t0;
        if (s > 0) { total += dt; if (dt < best) best = dt; }
    }
    ds4_cost cost;
    ds4_cost_per_token(&c, (T + 1) / 2.0, &cost);
    const double tok = (double)B * T, mean = total / steps;
    /* FLOPs: 3 x forward = 6 N per token for the N weights used in matmuls
     * (lm_head included, embedding lookups excluded) plus attention QK^T and
     * PV over the average causal context (T+1)/2, forward and backward */
    const double tps = tok / mean, gflops = 3.0 * cost.total * tok / mean / 1e9;
    const double ref = peak > shape_gflops ? peak : shape_gflops;   /* the stricter reference */
    printf("ds4 bench train (%d threads)\n", threads);
    printf("  model              %.1fM params (V %d, D %d, L %d, FFN %d)\n", ds4_model_n_params(m) / 1e6,
           c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size);
    printf("  batch              %ld x %ld tokens\n", B, T);
    printf("  step time          %.3f s mean, %.3f s best (%ld steps)\n", mean, best, steps);
    printf("  tokens/s           %.0f\n", tps);
    printf("  achieved GFLOP/s   %.1f (3 x forward FLOPs, %.1f MFLOP/token)\n", gflops, 3 * cost.total / 1e6);
    printf("  sgemm GFLOP/s      %.1f (OpenBLAS 1024^3, best of probes between the steps)\n", peak);
    printf("  sgemm at shapes    %.1f (the model's GEMMs, %ld rows, same threads)\n", shape_gflops, B * T);
    printf("  fraction of sgemm  %.1f%% of the higher  (target >= 50%%); best step %.1f%%\n", 100 * gflops / ref,
           100 * 3.0 * cost.total * tok / best / 1e9 / ref);
    double torch_tps = 0;
    if (torch) torch_tps = run_torch_peer(&c, threads, steps, B, T);
    if (torch_tps > 0)
        printf("  PyTorch peer         %.0f tok/s (same run) -> ds4 is %.2fx  (target >= 1.5x)\n", torch_tps, tps / torch_tps);
    else
        printf("  PyTorch peer         not run (--torch); SPEC §4 figure 469 tok/s at 2 threads -> %.2fx\n", tps / 469.0);
    if (price > 0) printf("  cost               $%.4f per 1M tokens at $%.3f/h\n", price / (3600 * tps) * 1e6, price);
    printf("{\"bench\":\"train\",\"threads\":%d,\"params\":%zu,\"batch\":%ld,\"seq\":%ld,\"tokens_per_s\":%.1f,"
           "\"gflops\":%.2f,\"sgemm_gflops\":%.2f,\"sgemm_shapes_gflops\":%.2f,\"fraction_of_sgemm\":%.4f,"
           "\"step_s\":%.4f,\"best_step_s\":%.4f,\"torch_tokens_per_s\":%.1f,\"ratio_vs_torch\":%.3f}\n",
           threads, ds4_model_n_params(m), B, T, tps, gflops, peak, shape_gflops, gflops / ref, mean, best, torch_tps,
           torch_tps > 0 ? tps / torch_tps : 0.0);
    ds4_adamw_free(&opt);
    free(ids); free(grads);
    ds4_train_ctx_free(ctx);
    ds4_model_free(m);
    return 0;
}

int bench_decode(int argc, char **argv) {
    const char *cfg_path = NULL, *model_dir = NULL;
    long n = 128, prompt = 16, every = 4;
    double price = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 bench decode [--model DIR | --config F] [-n N] [--prompt-len P] [--bw-every K]\n"
                   "                        [--price-per-hour X]\n"
                   "Batch-1 fp32 decode of N tokens after a P-token prefill (default: random weights of the\n"
                   "dense 17.3M model of SPEC §4, 65 MB of weights: twice a 32 MB last-level cache). The\n"
                   "bound is read bandwidth / bytes read per token (weights + KV). Bandwidth: a streaming\n"
                   "read, on the same threads, of a buffer as big as those bytes (so it meets the same\n"
                   "cache level), one pass every K decode steps in the same loop; fraction of bound =\n"
                   "median pass time / median step time x buffer bytes / token bytes (also best vs best).\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--config")) cfg_path = v;
        else if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "-n")) { if (cli_int("bench decode", a, v, 1, 1 << 20, &n)) return 2; }
        else if (!strcmp(a, "--prompt-len")) { if (cli_int("bench decode", a, v, 1, 1 << 20, &prompt)) return 2; }
        else if (!strcmp(a, "--bw-every")) { if (cli_int("bench decode", a, v, 1, 1 << 20, &every)) return 2; }
        else if (!strcmp(a, "--price-per-hour")) { if (cli_float("bench decode", a, v, &price)) return 2; }
        else return cli_unknown("bench decode", a);
    }
    ds4_model *m;
    if (model_dir) m = ds4_model_load(model_dir);
    else {
        ds4_config c;
        if (load_cfg("bench decode", cfg_path, &c) != 0) return 1;
        m = ds4_model_create(&c, 1);
    }
    if (!m) return cli_fail("bench decode");
    const ds4_config *c = &m->cfg;
    const int cap = (int)(prompt + n);
    if (cap > c->max_position_embeddings) {
        fprintf(stderr, "ds4 bench decode: prompt + n = %d exceeds max_position_embeddings %d\n", cap,
                c->max_position_embeddings);
        return 2;
    }
    ds4_cost cost;
    ds4_cost_per_token(c, prompt + n / 2.0, &cost);
    const double bytes = cost.weight_bytes + cost.kv_bytes * (prompt + n / 2.0);
    bench_bw bw;
    const int n_bw = (int)((n + every - 1) / every);
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, cap);
    float *logits = malloc(sizeof(float) * c->vocab_size);
    int *ids = malloc(sizeof(int) * (size_t)prompt), *seq = calloc((size_t)prompt, sizeof(int));
    double *t_step = malloc(sizeof(double) * (size_t)n), *t_bw = malloc(sizeof(double) * (size_t)n_bw);
    if (!kv || !logits || !ids || !seq || !t_step || !t_bw || bench_bw_init(&bw, (size_t)bytes) != 0)
        return cli_fail("bench decode");
    const double bw_bytes = (double)bw.n * sizeof(float);
    for (long i = 0; i < prompt; i++) ids[i] = (int)(i * 7 % c->vocab_size);
    ds4_batch b = {.n = (int)prompt, .tokens = ids, .seq = seq};
    int last = (int)prompt - 1;
    double t0 = ds4_time_s();
    if (ds4_forward(m, &b, kv, &last, 1, logits) != 0) return cli_fail("bench decode");
    const double t_prefill = ds4_time_s() - t0;
    bench_bw_pass(&bw);                      /* warm-up: page the buffer in */
    int tok = 1, zero = 0, k = 0;
    double t_dec = 0;
    for (long i = 0; i < n; i++) {
        if (i % every == 0) t_bw[k++] = bench_bw_pass(&bw);
        ds4_batch d = {.n = 1, .tokens = &tok, .seq = &zero};
        t0 = ds4_time_s();
        if (ds4_forward(m, &d, kv, NULL, 1, logits) != 0) return cli_fail("bench decode");
        t_step[i] = ds4_time_s() - t0;
        t_dec += t_step[i];
        int best = 0;
        for (int v = 1; v < c->vocab_size; v++) if (logits[v] > logits[best]) best = v;
        tok = best;
    }
    const double tps = n / t_dec, step_med = bench_median(t_step, (int)n), bw_med = bench_median(t_bw, k);
    const double gbs = bw_bytes / bw_med / 1e9, gbs_best = bw_bytes / bench_min(t_bw, k) / 1e9;
    const double bound = gbs * 1e9 / bytes, frac = 1.0 / step_med / bound;
    const double frac_best = (1.0 / bench_min(t_step, (int)n)) / (gbs_best * 1e9 / bytes);
    const long llc = bench_llc_bytes();
    double load[1] = {-1};
    if (getloadavg(load, 1) < 1) load[0] = -1;
    printf("ds4 bench decode (batch 1, fp32, %d threads, load average %.1f)\n", omp_get_max_threads(), load[0]);
    printf("  model              %.1fM params, %.1f MB read per token (last-level cache %.0f MB: %s)\n",
           ds4_model_n_params(m) / 1e6, bytes / 1e6, llc / 1e6,
           bytes > llc ? "exceeds it: weights stream from DRAM every token"
                       : "fits: the bound is cache bandwidth");
    printf("  prefill            %ld tokens in %.3f s (%.0f tok/s)\n", prompt, t_prefill, prompt / t_prefill);
    printf("  decode             %ld tokens, %.1f tok/s mean, %.1f tok/s median step\n", n, tps, 1.0 / step_med);
    printf("  read bandwidth     %.1f GB/s median, %.1f GB/s best (%d passes over %.1f MB, interleaved)\n", gbs,
           gbs_best, k, bw_bytes / 1e6);
    printf("  bandwidth bound    %.1f tok/s\n", bound);
    printf("  fraction of bound  %.1f%% median vs median, %.1f%% best vs best  (target >= 70%%)\n", 100 * frac,
           100 * frac_best);
    if (price > 0) printf("  cost               $%.4f per 1M tokens at $%.3f/h\n", price / (3600 * tps) * 1e6, price);
    printf("{\"bench\":\"decode\",\"threads\":%d,\"load_avg\":%.2f,\"params\":%zu,\"tokens_per_s\":%.2f,"
           "\"median_step_tokens_per_s\":%.2f,\"prefill_tokens_per_s\":%.1f,\"bytes_per_token\":%.0f,\"llc_bytes\":%ld,"
           "\"bandwidth_gbs\":%.2f,\"bandwidth_best_gbs\":%.2f,\"bound_tokens_per_s\":%.2f,\"fraction_of_bound\":%.4f,"
           "\"fraction_of_bound_best\":%.4f}\n",
           omp_get_max_threads(), load[0], ds4_model_n_params(m), tps, 1.0 / step_med, prompt / t_prefill, bytes, llc,
           gbs, gbs_best, bound, frac, frac_best);
    bench_bw_free(&bw);
    free(ids); free(seq); free(logits); free(t_step); free(t_bw);
    ds4_kv_cache_free(kv);
    ds4_model_free(m);
    return 0;
}
