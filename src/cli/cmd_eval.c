/* cmd_eval.c — `ds4 eval`: perplexity of a model on a text file or token
 * shard (the default form), multiple-choice accuracy by log-likelihood
 * (`eval mc`) and code pass@k with sandboxed tests (`eval code`). Each prints
 * lines for people and a JSON line for scripts. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/evalh.h"
#include "infer/infer.h"
#include "lora/lora.h"
#include "model/cost.h"
#include "model/prune.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 eval [perplexity] --model DIR --data FILE [options]\n"
        "       ds4 eval mc   --model DIR --data F.jsonl [options]   (ds4 eval mc --help)\n"
        "       ds4 eval code --model DIR --data F.jsonl [options]   (ds4 eval code --help)\n\n"
        "Loss (nats per token) and perplexity of next-token prediction on FILE,\n"
        "a text file encoded with the model's tokenizer (no <|bos|> added), or a\n"
        "DS4TOK01 token shard. Windows of --ctx tokens start every --ctx tokens,\n"
        "each fed from position 0; every token but the first is predicted once.\n\n"
        "  --model DIR       model directory (config.json, model.safetensors, tokenizer.json)\n"
        "  --lora ADAPTER    apply a LoRA adapter (ds4 finetune, PEFT layout)\n"
        "  --data FILE       evaluation text (or token shard)\n"
        "  --ctx T           window length (default min(512, max_position_embeddings))\n"
        "  --max-tokens N    use only the first N tokens of the data\n"
        "  --batch B         windows per forward call (default 1)\n\n"
        "Also prints the forward cost per token at context --ctx, per layer (FLOPs, KV-cache\n"
        "bytes; src/model/cost.h); for a model that prunes tokens (SPEC 1.3), each pruned\n"
        "layer's kept fraction under the causal rule and its agreement with top-k membership,\n"
        "measured on the same windows (one more pass), and the cost uses those fractions.\n");
}

static const char *fmt_num(char *buf, size_t n, const char *fmt, double v) {
    snprintf(buf, n, isfinite(v) ? fmt : "null", v);       /* JSON has no NaN/inf: null */
    return buf;
}

/* Cost per token at context T by layer (SPEC 1.3/1.4); for a pruned model the
 * causal rule's kept fraction and its agreement with top-k membership on the
 * same windows, and the cost with the measured keep fractions. */
static int eval_cost(const ds4_model *m, const int *ids, size_t n, int T, const char *cmd) {
    const ds4_config *c = &m->cfg;
    const int L = c->num_hidden_layers, pruned = ds4_prune_any(c);
    ds4_prune_counts pc[DS4_MAX_LAYERS];
    double keep[DS4_MAX_LAYERS];
    int64_t scored = 0, agree = 0;
    if (pruned && ds4_prune_eval(m, ids, n, T, pc) != 0) return cli_fail(cmd);
    for (int l = 0; l < L; l++) {
        keep[l] = pruned && pc[l].tokens ? (double)pc[l].kept / (double)pc[l].tokens : 1.0;
        if (pruned && ds4_prune_ratio(c, l) > 0) { scored += pc[l].scored; agree += pc[l].agree; }
    }
    ds4_cost k, d;
    ds4_layer_cost lc[DS4_MAX_LAYERS];
    ds4_cost_layers(c, (double)T, keep, lc, &k);
    ds4_config plain = *c;               /* the same model dense and unpruned */
    plain.n_prune_layers = 0;
    plain.index_topk = plain.index_n_heads = plain.index_head_dim = 0;
    plain.sliding_window = 0;
    ds4_cost_per_token(&plain, (double)T, &d);
    printf("cost per token at context %d%s:\n", T, pruned ? " (keep: measured on these windows)" : "");
    printf("  %5s %7s %9s %11s %9s %8s\n", "layer", "keep", "attended", "MFLOP/tok", "KV B/tok", "agree");
    for (int l = 0; l < L; l++) {
        char ag[16] = "-";
        if (pruned && ds4_prune_ratio(c, l) > 0 && pc[l].scored)
            snprintf(ag, sizeof ag, "%.1f%%", 100.0 * (double)pc[l].agree / (double)pc[l].scored);
        printf("  %5d %6.1f%% %9.0f %11.3f %9.0f %8s\n", l, 100 * lc[l].keep, lc[l].attended, lc[l].total / 1e6,
               lc[l].kv_bytes, ag);
    }
    printf("  total %.3f MFLOP/tok (lm_head %.3f), KV %.0f B/tok; vs dense unpruned: %.1f%% fewer FLOPs, "
           "%.1f%% fewer KV bytes\n", k.total / 1e6, k.lm_head / 1e6, k.kv_bytes, 100 * (1 - k.total / d.total),
           100 * (1 - k.kv_bytes / d.kv_bytes));
    if (pruned)
        printf("  causal keep decision vs top-k membership (pruned layers): %.2f%% agreement over %lld tokens\n",
               scored ? 100.0 * (double)agree / (double)scored : NAN, (long long)scored);
    char ag_s[32];
    printf("{\"cost\": {\"ctx\": %d, \"flops_per_token\": %.1f, \"kv_bytes_per_token\": %.1f, "
           "\"dense_flops_per_token\": %.1f, \"dense_kv_bytes_per_token\": %.1f, \"prune_agreement\": %s, \"layers\": [",
           T, k.total, k.kv_bytes, d.total, d.kv_bytes,
           fmt_num(ag_s, sizeof ag_s, "%.5f", pruned && scored ? (double)agree / (double)scored : NAN));
    for (int l = 0; l < L; l++)
        printf("%s{\"keep\": %.5f, \"flops\": %.1f, \"kv_bytes\": %.1f}", l ? ", " : "", lc[l].keep, lc[l].total,
               lc[l].kv_bytes);
    printf("]}}\n");
    return 0;
}

static int eval_perplexity(int argc, char **argv, const char *cmd) {
    const char *model_dir = NULL, *data = NULL, *lora = NULL;
    long ctx = 0, max_tokens = 0, batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        else if (!strcmp(a, "--model") || !strcmp(a, "--lora") || !strcmp(a, "--data") || !strcmp(a, "--ctx") ||
                 !strcmp(a, "--max-tokens") || !strcmp(a, "--batch")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora = v;
            else if (!strcmp(a, "--data")) data = v;
            else if (!strcmp(a, "--ctx")) { if (cli_int(cmd, a, v, 1, 1L << 30, &ctx)) return 2; }
            else if (!strcmp(a, "--max-tokens")) { if (cli_int(cmd, a, v, 2, 1L << 40, &max_tokens)) return 2; }
            else if (cli_int(cmd, a, v, 1, 1024, &batch)) return 2;
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir) { fprintf(stderr, "ds4 %s: --model DIR is required (see --help)\n", cmd); return 2; }
    if (!data) { fprintf(stderr, "ds4 %s: --data FILE is required (see --help)\n", cmd); return 2; }

    char *text = NULL;
    size_t len = 0;
    if (ds4_read_file(data, &text, &len)) return cli_fail(cmd);
    int is_shard = len >= 8 && !memcmp(text, "DS4TOK01", 8);

    ds4_model *m;
    ds4_tokenizer *tok = NULL;
    if (ds4_open_model_lora(model_dir, lora, &m, is_shard ? NULL : &tok)) { free(text); return cli_fail(cmd); }
    int *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (is_shard) {
        if (ds4_shard_read(data, &ids, &n)) { cli_fail(cmd); goto done; }
    } else if (ds4_tokenizer_encode(tok, text, len, &ids, &n)) {
        ds4_error_prefix("tokenizing %s: ", data);
        cli_fail(cmd);
        goto done;
    }
    if (max_tokens > 0 && n > (size_t)max_tokens) n = (size_t)max_tokens;
    if (n < 2) {
        fprintf(stderr, "ds4 %s: %s gives %zu tokens; at least 2 are needed\n", cmd, data, n);
        goto done;
    }
    ds4_eval_result r;
    if (ds4_eval_tokens(m, ids, n, (int)ctx, (int)batch, &r)) { cli_fail(cmd); goto done; }
    int T = ctx > 0 ? (int)ctx : DS4_MIN(512, m->cfg.max_position_embeddings);
    printf("loss %.6f  perplexity %.4f  tokens %ld  windows %d  ctx %d  (%.1f tok/s, %.2f s)\n",
           r.loss, r.ppl, r.tokens, r.windows, T, r.tok_s, r.seconds);
    char loss_s[32], ppl_s[32];
    printf("{\"loss\": %s, \"perplexity\": %s, \"tokens\": %ld, \"windows\": %d, \"ctx\": %d, "
           "\"tok_s\": %.2f, \"seconds\": %.3f}\n",
           fmt_num(loss_s, sizeof loss_s, "%.6f", r.loss), fmt_num(ppl_s, sizeof ppl_s, "%.6f", r.ppl),
           r.tokens, r.windows, T, r.tok_s, r.seconds);
    if (eval_cost(m, ids, n, T, cmd) != 0) goto done;
    rc = 0;
done:
    free(ids);
    free(text);
    if (tok) ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return rc;
}

/* ---- eval mc ------------------------------------------------------------------ */

static void usage_mc(FILE *f) {
    fprintf(f,
        "usage: ds4 eval mc --model DIR --data F.jsonl [options]\n\n"
        "Multiple-choice accuracy by log-likelihood. F.jsonl has one question per line\n"
        "in the MMLU layout: {\"question\": ..., \"choices\": [...], \"answer\": index or letter,\n"
        "\"subject\": optional}. Each choice is scored as the log-probability of\n"
        "\" <choice>\" after \"Question: <question>\\nAnswer:\"; acc takes the choice with the\n"
        "highest sum, acc_norm the highest mean per token.\n\n"
        "  --model DIR       model directory\n"
        "  --lora ADAPTER    apply a LoRA adapter\n"
        "  --data F.jsonl    questions\n"
        "  --limit N         only the first N questions\n"
        "  --bos             prepend <|bos|> to every context (default: no, as in training)\n"
        "  --out F.jsonl     per-question scores and predictions\n"
        "  --verbose         one line per question\n");
}

typedef struct { char *name; int n, c_sum, c_mean; } subj_acc;

typedef struct {
    FILE *out;
    int verbose;
    subj_acc subj[256];
    int n_subj;
} mc_ctx;

static void mc_item(int index, const ds4_mc_item *it, const ds4_mc_item_result *r, void *user) {
    mc_ctx *x = user;
    if (it->subject) {
        int s = 0;
        while (s < x->n_subj && strcmp(x->subj[s].name, it->subject)) s++;
        if (s == x->n_subj && s < 256 && (x->subj[s].name = strdup(it->subject))) x->n_subj++;
        if (s < x->n_subj) {
            x->subj[s].n++;
            x->subj[s].c_sum += r->pred_sum == it->answer;
            x->subj[s].c_mean += r->pred_mean == it->answer;
        }
    }
    if (x->verbose)
        printf("%5d  answer %c  pred %c (sum)  %c (mean)%s\n", index, 'A' + it->answer,
               'A' + r->pred_sum, 'A' + r->pred_mean, r->truncated ? "  [context cut]" : "");
    if (x->out) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", index);
        if (it->subject) cJSON_AddStringToObject(o, "subject", it->subject);
        cJSON_AddNumberToObject(o, "answer", it->answer);
        cJSON_AddNumberToObject(o, "pred", r->pred_sum);
        cJSON_AddNumberToObject(o, "pred_norm", r->pred_mean);
        cJSON *ls = cJSON_AddArrayToObject(o, "ll_sum"), *lm = cJSON_AddArrayToObject(o, "ll_mean"),
              *nt = cJSON_AddArrayToObject(o, "tokens");
        for (int c = 0; c < it->n_choices; c++) {
            cJSON_AddItemToArray(ls, cJSON_CreateNumber(r->ll_sum[c]));
            cJSON_AddItemToArray(lm, cJSON_CreateNumber(r->ll_mean[c]));
            cJSON_AddItemToArray(nt, cJSON_CreateNumber(r->n_tokens[c]));
        }
        cJSON_AddBoolToObject(o, "truncated", r->truncated);
        char *s = cJSON_PrintUnformatted(o);
        if (s) fprintf(x->out, "%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
}

static int eval_mc(int argc, char **argv) {
    const char *cmd = "eval mc", *lora = NULL, *model_dir = NULL, *data = NULL, *out = NULL;
    long limit = 0;
    int bos = 0, verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage_mc(stdout); return 0; }
        else if (!strcmp(a, "--bos")) bos = 1;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--model") || !strcmp(a, "--lora") || !strcmp(a, "--data") || !strcmp(a, "--limit") ||
                 !strcmp(a, "--out")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora = v;
            else if (!strcmp(a, "--data")) data = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (cli_int(cmd, a, v, 1, 1L << 30, &limit)) return 2;
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir) { fprintf(stderr, "ds4 %s: --model DIR is required (see --help)\n", cmd); return 2; }
    if (!data) { fprintf(stderr, "ds4 %s: --data F.jsonl is required (see --help)\n", cmd); return 2; }
    ds4_mc_item *items;
    int n, n_all;
    if (ds4_mc_load(data, &items, &n_all)) return cli_fail(cmd);
    n = limit > 0 && n_all > limit ? (int)limit : n_all;
    ds4_model *m;
    ds4_tokenizer *tok;
    if (ds4_open_model_lora(model_dir, lora, &m, &tok)) { ds4_mc_free(items, n_all); return cli_fail(cmd); }
    mc_ctx x = {.verbose = verbose};
    int rc = 1;
    if (out && !(x.out = fopen(out, "w"))) {
        fprintf(stderr, "ds4 %s: cannot write %s\n", cmd, out);
        goto done;
    }
    ds4_mc_result r;
    if (ds4_mc_eval(m, tok, items, n, bos, mc_item, &x, &r)) { cli_fail(cmd); goto done; }
    /* chance level: the mean of 1 / n_choices */
    double chance = 0;
    for (int i = 0; i < n; i++) chance += 1.0 / items[i].n_choices;
    chance /= n;
    for (int s = 0; s < x.n_subj; s++)
        printf("  %-40s n %5d  acc %.4f  acc_norm %.4f\n", x.subj[s].name, x.subj[s].n,
               (double)x.subj[s].c_sum / x.subj[s].n, (double)x.subj[s].c_mean / x.subj[s].n);
    printf("mc: %d questions  acc %.4f  acc_norm %.4f  (chance %.4f)  contexts cut %d  "
           "(%ld tokens, %.2f s)\n", r.n_items, r.acc, r.acc_norm, chance, r.truncated, r.tokens,
           r.seconds);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "eval", "mc");
    cJSON_AddStringToObject(j, "data", data);
    cJSON_AddNumberToObject(j, "questions", r.n_items);
    cJSON_AddNumberToObject(j, "acc", r.acc);
    cJSON_AddNumberToObject(j, "acc_norm", r.acc_norm);
    cJSON_AddNumberToObject(j, "chance", chance);
    cJSON_AddNumberToObject(j, "correct", r.correct_sum);
    cJSON_AddNumberToObject(j, "correct_norm", r.correct_mean);
    cJSON_AddNumberToObject(j, "contexts_cut", r.truncated);
    cJSON_AddBoolToObject(j, "bos", bos);
    cJSON_AddNumberToObject(j, "tokens", (double)r.tokens);
    cJSON_AddNumberToObject(j, "seconds", r.seconds);
    if (x.n_subj) {
        cJSON *so = cJSON_AddObjectToObject(j, "subjects");
        for (int s = 0; s < x.n_subj; s++) {
            cJSON *e = cJSON_AddObjectToObject(so, x.subj[s].name);
            cJSON_AddNumberToObject(e, "n", x.subj[s].n);
            cJSON_AddNumberToObject(e, "acc", (double)x.subj[s].c_sum / x.subj[s].n);
            cJSON_AddNumberToObject(e, "acc_norm", (double)x.subj[s].c_mean / x.subj[s].n);
        }
    }
    char *js = cJSON_PrintUnformatted(j);
    if (js) printf("%s\n", js);
    free(js);
    cJSON_Delete(j);
    rc = 0;
done:
    if (x.out) fclose(x.out);
    for (int s = 0; s < x.n_subj; s++) free(x.subj[s].name);
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    ds4_mc_free(items, n_all);
    return rc;
}

/* ---- eval code ------------------------------------------------------------------ */

static void usage_code(FILE *f) {
    fprintf(f,
        "usage: ds4 eval code --model DIR --data F.jsonl [options]\n"
        "       ds4 eval code --canonical --data F.jsonl      (checks the data and the sandbox)\n\n"
        "Code generation pass@k. F.jsonl has one problem per line in the HumanEval layout:\n"
        "{\"task_id\", \"prompt\", \"canonical_solution\", \"test\", \"entry_point\"}. For each\n"
        "problem, N completions are generated (greedy for N = 1, sampled otherwise), cut at\n"
        "the next top-level statement, and the program prompt + completion + test +\n"
        "check(entry_point) runs with python3 -I in a sandbox: a fresh temporary directory,\n"
        "limits on CPU time, memory, processes, file size and open files, no core dumps,\n"
        "a wall-clock timeout; as root also user nobody and new network and PID namespaces.\n"
        "pass@k is the unbiased estimator 1 - C(n-c,k)/C(n,k), averaged over problems.\n\n"
        "  --model DIR         model directory\n"
        "  --lora ADAPTER      apply a LoRA adapter\n"
        "  --data F.jsonl      problems\n"
        "  --samples N         completions per problem (default 1)\n"
        "  --k LIST            pass@k to report, comma separated (default 1,10; k <= N)\n"
        "  --temperature T     sampling temperature (default 0 for N = 1, else 0.8)\n"
        "  --top-p P           nucleus sampling (default 0.95 when sampling)\n"
        "  --max-tokens N      tokens per completion (default 256)\n"
        "  --seed S            sampling seed (default 1234)\n"
        "  --batch B           completions generated together (default min(N, 8))\n"
        "  --bos               prepend <|bos|> to prompts (default: no)\n"
        "  --limit N           only the first N problems\n"
        "  --canonical         run canonical_solution instead of model completions\n"
        "  --timeout S         wall-clock seconds per program (default 10)\n"
        "  --cpu S             CPU seconds per program (default 5)\n"
        "  --mem MB            address-space limit (default 1024)\n"
        "  --nproc N           processes a program may start (default 32)\n"
        "  --no-net-isolation  do not try to cut the network off\n"
        "  --require-isolation fail unless programs run without network\n"
        "  --python PATH       interpreter (default: the first python3 on PATH that runs\n"
        "                      in the sandbox)\n"
        "  --out F.jsonl       per-problem completions and results\n"
        "  --verbose           print each program's output when it does not pass\n");
}

static int parse_k_list(const char *s, int *ks, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000) return -1;
        ks[n++] = (int)v;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
    }
    return n;
}

static int eval_code(int argc, char **argv) {
    const char *cmd = "eval code", *lora = NULL, *model_dir = NULL, *data = NULL, *out = NULL, *python = NULL;
    long samples = 1, max_tokens = 256, seed = 1234, batch = 0, limit = 0, nproc = 32, mem_mb = 1024;
    double temperature = -1, top_p = -1, timeout = 10, cpu = 5;
    int canonical = 0, bos = 0, net = 1, require_iso = 0, verbose = 0, ks[16] = {1, 10}, n_k = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage_code(stdout); return 0; }
        else if (!strcmp(a, "--canonical")) canonical = 1;
        else if (!strcmp(a, "--bos")) bos = 1;
        else if (!strcmp(a, "--no-net-isolation")) net = 0;
        else if (!strcmp(a, "--require-isolation")) require_iso = 1;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--model") || !strcmp(a, "--lora") || !strcmp(a, "--data") || !strcmp(a, "--out") ||
                 !strcmp(a, "--python") || !strcmp(a, "--samples") || !strcmp(a, "--k") ||
                 !strcmp(a, "--temperature") || !strcmp(a, "--top-p") || !strcmp(a, "--max-tokens") ||
                 !strcmp(a, "--seed") || !strcmp(a, "--batch") || !strcmp(a, "--limit") ||
                 !strcmp(a, "--timeout") || !strcmp(a, "--cpu") || !strcmp(a, "--mem") ||
                 !strcmp(a, "--nproc")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora = v;
            else if (!strcmp(a, "--data")) data = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--python")) python = v;
            else if (!strcmp(a, "--samples")) { if (cli_int(cmd, a, v, 1, 10000, &samples)) return 2; }
            else if (!strcmp(a, "--k")) {
                if ((n_k = parse_k_list(v, ks, 16)) < 1) {
                    fprintf(stderr, "ds4 %s: --k expects positive integers separated by commas, got '%s'\n", cmd, v);
                    return 2;
                }
            }
            else if (!strcmp(a, "--temperature")) { if (cli_float(cmd, a, v, &temperature)) return 2; }
            else if (!strcmp(a, "--top-p")) { if (cli_float(cmd, a, v, &top_p)) return 2; }
            else if (!strcmp(a, "--max-tokens")) { if (cli_int(cmd, a, v, 1, 1L << 20, &max_tokens)) return 2; }
            else if (!strcmp(a, "--seed")) { if (cli_int(cmd, a, v, 0, 1L << 62, &seed)) return 2; }
            else if (!strcmp(a, "--batch")) { if (cli_int(cmd, a, v, 1, 256, &batch)) return 2; }
            else if (!strcmp(a, "--limit")) { if (cli_int(cmd, a, v, 1, 1L << 30, &limit)) return 2; }
            else if (!strcmp(a, "--nproc")) { if (cli_int(cmd, a, v, 1, 4096, &nproc)) return 2; }
            else if (!strcmp(a, "--mem")) { if (cli_int(cmd, a, v, 16, 1L << 20, &mem_mb)) return 2; }
            else if (!strcmp(a, "--timeout")) { if (cli_float(cmd, a, v, &timeout) || timeout <= 0) goto bad_num; }
            else if (cli_float(cmd, a, v, &cpu) || cpu <= 0) goto bad_num;
            continue;
        bad_num:
            fprintf(stderr, "ds4 %s: %s must be a positive number\n", cmd, a);
            return 2;
        } else return cli_unknown(cmd, a);
    }
    if (!data) { fprintf(stderr, "ds4 %s: --data F.jsonl is required (see --help)\n", cmd); return 2; }
    if (!model_dir && !canonical) {
        fprintf(stderr, "ds4 %s: --model DIR is required unless --canonical (see --help)\n", cmd);
        return 2;
    }
    if (canonical) samples = 1;
    int n_samples = (int)samples;
    if (temperature < 0) temperature = n_samples == 1 ? 0 : 0.8;
    if (top_p < 0) top_p = temperature > 0 ? 0.95 : 1.0;
    if (!(top_p > 0 && top_p <= 1)) { fprintf(stderr, "ds4 %s: --top-p must be in (0, 1]\n", cmd); return 2; }
    int kk[16], n_kk = 0;                      /* the k that fit n, 1 always first */
    kk[n_kk++] = 1;
    for (int i = 0; i < n_k; i++) {
        int dup = 0;
        for (int j = 0; j < n_kk; j++) dup |= kk[j] == ks[i];
        if (!dup && ks[i] <= n_samples && n_kk < 16) kk[n_kk++] = ks[i];
    }

    ds4_code_problem *probs;
    int n_prob, n_all;
    if (ds4_code_load(data, &probs, &n_all)) return cli_fail(cmd);
    n_prob = limit > 0 && n_all > limit ? (int)limit : n_all;

    ds4_sandbox_limits lim;
    ds4_sandbox_limits_default(&lim);
    lim.cpu_s = cpu;
    lim.wall_s = timeout;
    lim.mem_bytes = (size_t)mem_mb << 20;
    lim.nproc = (int)nproc;
    lim.isolate_net = net;
    char py[4096];
    if (python) lim.python = python;
    else {
        if (ds4_sandbox_find_python(&lim, py, sizeof py)) { ds4_code_free(probs, n_all); return cli_fail(cmd); }
        lim.python = py;
    }

    ds4_model *m = NULL;
    ds4_tokenizer *tok = NULL;
    ds4_engine *e = NULL;
    FILE *fo = NULL;
    char **comp = calloc((size_t)n_samples, sizeof *comp);
    double *pass_sum = calloc((size_t)n_kk, sizeof *pass_sum);
    int rc = 1;
    if (!comp || !pass_sum) { fprintf(stderr, "ds4 %s: out of memory\n", cmd); goto done; }
    int slots = batch > 0 ? (int)DS4_MIN(batch, samples) : DS4_MIN(n_samples, 8);
    ds4_gen_params gp;
    ds4_gen_params_default(&gp);
    gp.sampler.temperature = (float)temperature;
    gp.sampler.top_p = (float)top_p;
    gp.sampler.seed = (uint64_t)seed;
    gp.max_tokens = (int)max_tokens;
    gp.add_bos = bos;
    if (!canonical) {
        if (ds4_sampler_params_validate(&gp.sampler)) { cli_fail(cmd); goto done; }
        if (ds4_open_model_lora(model_dir, lora, &m, &tok)) { cli_fail(cmd); goto done; }
        if (!(e = ds4_engine_create(m, tok, slots, 0))) { cli_fail(cmd); goto done; }
    }
    if (out && !(fo = fopen(out, "w"))) { fprintf(stderr, "ds4 %s: cannot write %s\n", cmd, out); goto done; }

    int n_pass = 0, n_fail = 0, n_timeout = 0, n_error = 0, n_cut = 0, net_off = 1, pid_on = 1, uid = -1;
    char note[512] = "";
    double t0 = ds4_time_s(), gen_s = 0, run_s = 0;
    for (int p = 0; p < n_prob; p++) {
        const ds4_code_problem *pr = &probs[p];
        double tg = ds4_time_s();
        if (canonical) {
            if (!(comp[0] = strdup(pr->canonical_solution))) { fprintf(stderr, "ds4 %s: out of memory\n", cmd); goto done; }
        } else {
            for (int s0 = 0; s0 < n_samples; s0 += slots) {
                int nb = DS4_MIN(slots, n_samples - s0), cut = 0;
                ds4_gen_params g = gp;
                g.sampler.seed = gp.sampler.seed + (uint64_t)p * 1000003u + (uint64_t)s0;
                if (ds4_code_generate(e, pr->prompt, nb, &g, comp + s0, &cut)) {
                    ds4_error_prefix("%s: ", pr->task_id);
                    cli_fail(cmd);
                    goto done;
                }
                if (cut && s0 == 0) n_cut++;
            }
        }
        gen_s += ds4_time_s() - tg;
        double tr = ds4_time_s();
        int c = 0;
        cJSON *jp = fo ? cJSON_CreateObject() : NULL, *js = NULL;
        if (jp) {
            cJSON_AddStringToObject(jp, "task_id", pr->task_id);
            js = cJSON_AddArrayToObject(jp, "samples");
        }
        char status_line[256] = "";
        for (int s = 0; s < n_samples; s++) {
            char *prog = ds4_code_program(pr, comp[s]);
            ds4_sandbox_result r;
            if (!prog || ds4_sandbox_run_python(&lim, prog, strlen(prog), &r)) {
                free(prog);
                ds4_sandbox_result_free(&r);
                cli_fail(cmd);
                goto done;
            }
            free(prog);
            net_off &= r.net_isolated;
            pid_on &= r.pid_isolated;
            uid = r.uid;
            if (r.note[0] && !note[0]) snprintf(note, sizeof note, "%s", r.note);
            if (require_iso && !r.net_isolated) {
                fprintf(stderr, "ds4 %s: --require-isolation: %s\n", cmd,
                        r.note[0] ? r.note : "the program ran with network access");
                ds4_sandbox_result_free(&r);
                if (jp) cJSON_Delete(jp);
                goto done;
            }
            c += r.status == DS4_SANDBOX_PASS;
            n_pass += r.status == DS4_SANDBOX_PASS;
            n_fail += r.status == DS4_SANDBOX_FAIL;
            n_timeout += r.status == DS4_SANDBOX_TIMEOUT;
            n_error += r.status == DS4_SANDBOX_ERROR;
            size_t sl = strlen(status_line);
            if (s < 16 && sl + 10 < sizeof status_line)
                snprintf(status_line + sl, sizeof status_line - sl, "%s%s", s ? " " : "",
                         ds4_sandbox_status_name(r.status));
            if (verbose && r.status != DS4_SANDBOX_PASS)
                fprintf(stderr, "--- %s sample %d: %s%s%s\n%s\n", pr->task_id, s,
                        ds4_sandbox_status_name(r.status), r.note[0] ? ": " : "", r.note, r.output);
            if (js) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "completion", comp[s]);
                cJSON_AddStringToObject(o, "status", ds4_sandbox_status_name(r.status));
                cJSON_AddNumberToObject(o, "exit_code", r.exit_code);
                cJSON_AddNumberToObject(o, "signal", r.signal);
                cJSON_AddNumberToObject(o, "wall_s", r.wall_s);
                cJSON_AddNumberToObject(o, "cpu_s", r.cpu_s);
                size_t tail = r.output_len > 2000 ? r.output_len - 2000 : 0;
                cJSON_AddStringToObject(o, "output_tail", r.output + tail);
                cJSON_AddItemToArray(js, o);
            }
            ds4_sandbox_result_free(&r);
            free(comp[s]);
            comp[s] = NULL;
        }
        run_s += ds4_time_s() - tr;
        printf("%-24s %d/%d passed  pass@1 %.4f  [%s%s]\n", pr->task_id, c, n_samples,
               ds4_pass_at_k(n_samples, c, 1), status_line, n_samples > 16 ? " ..." : "");
        fflush(stdout);
        for (int i = 0; i < n_kk; i++) pass_sum[i] += ds4_pass_at_k(n_samples, c, kk[i]);
        if (jp) {
            cJSON_AddNumberToObject(jp, "n", n_samples);
            cJSON_AddNumberToObject(jp, "c", c);
            for (int i = 0; i < n_kk; i++) {
                char key[32];
                snprintf(key, sizeof key, "pass@%d", kk[i]);
                cJSON_AddNumberToObject(jp, key, ds4_pass_at_k(n_samples, c, kk[i]));
            }
            char *s = cJSON_PrintUnformatted(jp);
            if (s) fprintf(fo, "%s\n", s);
            free(s);
            cJSON_Delete(jp);
        }
    }
    if (!net_off)
        fprintf(stderr, "ds4 %s: WARNING: programs ran WITH network access (%s)\n", cmd,
                note[0] ? note : "isolation off");
    else if (note[0]) fprintf(stderr, "ds4 %s: note: %s\n", cmd, note);

    printf("code: %d problems  %d samples each  %s", n_prob, n_samples, canonical ? "(canonical solutions)  " : "");
    for (int i = 0; i < n_kk; i++) printf("pass@%d %.4f  ", kk[i], pass_sum[i] / n_prob);
    printf("\n  programs: %d passed  %d failed  %d timeouts  %d errors;  prompts cut %d;  "
           "network %s, PID namespace %s, uid %d;  python %s\n  generation %.2f s, tests %.2f s, total %.2f s\n",
           n_pass, n_fail, n_timeout, n_error, n_cut, net_off ? "isolated" : "NOT ISOLATED",
           pid_on ? "yes" : "no", uid, lim.python, gen_s, run_s, ds4_time_s() - t0);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "eval", "code");
    cJSON_AddStringToObject(j, "data", data);
    cJSON_AddNumberToObject(j, "problems", n_prob);
    cJSON_AddNumberToObject(j, "samples", n_samples);
    cJSON_AddBoolToObject(j, "canonical", canonical);
    cJSON_AddNumberToObject(j, "temperature", temperature);
    for (int i = 0; i < n_kk; i++) {
        char key[32];
        snprintf(key, sizeof key, "pass@%d", kk[i]);
        cJSON_AddNumberToObject(j, key, pass_sum[i] / n_prob);
    }
    cJSON_AddNumberToObject(j, "passed", n_pass);
    cJSON_AddNumberToObject(j, "failed", n_fail);
    cJSON_AddNumberToObject(j, "timeouts", n_timeout);
    cJSON_AddNumberToObject(j, "errors", n_error);
    cJSON_AddNumberToObject(j, "prompts_cut", n_cut);
    cJSON_AddBoolToObject(j, "network_isolated", net_off);
    cJSON_AddBoolToObject(j, "pid_namespace", pid_on);
    cJSON_AddNumberToObject(j, "uid", uid);
    if (note[0]) cJSON_AddStringToObject(j, "isolation_note", note);
    cJSON_AddStringToObject(j, "python", lim.python);
    cJSON_AddNumberToObject(j, "generation_s", gen_s);
    cJSON_AddNumberToObject(j, "tests_s", run_s);
    char *js = cJSON_PrintUnformatted(j);
    if (js) printf("%s\n", js);
    free(js);
    cJSON_Delete(j);
    rc = 0;
done:
    if (fo) fclose(fo);
    if (comp) for (int s = 0; s < n_samples; s++) free(comp[s]);
    free(comp);
    free(pass_sum);
    ds4_engine_free(e);
    if (tok) ds4_tokenizer_free(tok);
    ds4_model_free(m);
    ds4_code_free(probs, n_all);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "perplexity")) return eval_perplexity(argc - 1, argv + 1, "eval perplexity");
    if (argc > 1 && !strcmp(argv[1], "mc")) return eval_mc(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "code")) return eval_code(argc - 1, argv + 1);
    return eval_perplexity(argc, argv, "eval");
}
