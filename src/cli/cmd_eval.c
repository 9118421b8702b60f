/* cmd_eval.c — `ds4 eval`: validation loss and perplexity of a model on a
 * text file (or a DS4TOK01 token shard), printed as a line for people and a
 * JSON line for scripts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/infer.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 eval --model DIR --data FILE [options]\n\n"
        "Loss (nats per token) and perplexity of next-token prediction on FILE,\n"
        "a text file encoded with the model's tokenizer (no <|bos|> added), or a\n"
        "DS4TOK01 token shard. Windows of --ctx tokens start every --ctx tokens,\n"
        "each fed from position 0; every token but the first is predicted once.\n\n"
        "  --model DIR       model directory (config.json, model.safetensors, tokenizer.json)\n"
        "  --data FILE       evaluation text (or token shard)\n"
        "  --ctx T           window length (default min(512, max_position_embeddings))\n"
        "  --max-tokens N    use only the first N tokens of the data\n"
        "  --batch B         windows per forward call (default 1)\n");
}

int cmd_eval(int argc, char **argv) {
    const char *cmd = "eval", *model_dir = NULL, *data = NULL;
    long ctx = 0, max_tokens = 0, batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        else if (!strcmp(a, "--model") || !strcmp(a, "--data") || !strcmp(a, "--ctx") ||
                 !strcmp(a, "--max-tokens") || !strcmp(a, "--batch")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
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
    if (ds4_open_model_dir(model_dir, &m, is_shard ? NULL : &tok)) { free(text); return cli_fail(cmd); }
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
    char loss_s[32], ppl_s[32];                        /* JSON has no NaN/inf: null */
    snprintf(loss_s, sizeof loss_s, isfinite(r.loss) ? "%.6f" : "null", r.loss);
    snprintf(ppl_s, sizeof ppl_s, isfinite(r.ppl) ? "%.6f" : "null", r.ppl);
    printf("{\"loss\": %s, \"perplexity\": %s, \"tokens\": %ld, \"windows\": %d, \"ctx\": %d, "
           "\"tok_s\": %.2f, \"seconds\": %.3f}\n",
           loss_s, ppl_s, r.tokens, r.windows, T, r.tok_s, r.seconds);
    rc = 0;
done:
    free(ids);
    free(text);
    if (tok) ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return rc;
}
