/* cmd_generate.c — `ds4 generate`: stream a continuation of a prompt to
 * stdout as it is produced, with a statistics line on stderr at the end. */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/infer.h"
#include "lora/lora.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 generate --model DIR --prompt TEXT [options]\n\n"
        "Streams generated text to stdout; statistics go to stderr.\n\n"
        "  --model DIR     model directory (config.json, model.safetensors, tokenizer.json)\n"
        "  --lora ADAPTER  apply a LoRA adapter (ds4 finetune, PEFT layout)\n"
        "  --prompt TEXT   prompt text (may be empty when <|bos|> is prepended)\n"
        "  -n N            tokens to generate at most (default 128)\n"
        "  --temp X        temperature, 0 = greedy (default 0.8)\n"
        "  --top-k K       keep the K most likely tokens, 0 = off (default 0)\n"
        "  --top-p X       nucleus mass in (0, 1], 1 = off (default 1)\n"
        "  --min-p X       keep tokens with p >= X * p_max, 0 = off (default 0)\n"
        "  --seed S        sampler seed (default 42)\n"
        "  --stop STR      stop when STR appears (not printed); repeatable, up to %d\n"
        "  --ctx N         context size, capped at max_position_embeddings (default: that)\n"
        "  --no-bos        do not prepend <|bos|>\n"
        "  --ignore-eos    keep going past the end-of-sequence token\n\n"
        "Sampling order: temperature, top-k, top-p, min-p. Generation stops on\n"
        "<|eos|>, -n tokens, a stop string, or a full context.\n", DS4_MAX_STOP);
}

static int print_piece(const char *text, size_t len, void *user) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return ferror(stdout) ? 1 : 0;     /* stdout closed: stop generating */
}

int cmd_generate(int argc, char **argv) {
    const char *cmd = "generate", *model_dir = NULL, *prompt = NULL, *lora = NULL;
    ds4_gen_params p;
    ds4_gen_params_default(&p);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long iv;
        double fv;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        else if (!strcmp(a, "--no-bos")) p.add_bos = 0;
        else if (!strcmp(a, "--ignore-eos")) p.ignore_eos = 1;
        else if (!strcmp(a, "--model") || !strcmp(a, "--prompt") || !strcmp(a, "-n") ||
                 !strcmp(a, "--temp") || !strcmp(a, "--top-k") || !strcmp(a, "--top-p") ||
                 !strcmp(a, "--min-p") || !strcmp(a, "--seed") || !strcmp(a, "--stop") ||
                 !strcmp(a, "--ctx") || !strcmp(a, "--lora")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora = v;
            else if (!strcmp(a, "--prompt")) prompt = v;
            else if (!strcmp(a, "-n")) {
                if (cli_int(cmd, a, v, 0, 1L << 30, &iv)) return 2;
                p.max_tokens = (int)iv;
            } else if (!strcmp(a, "--top-k")) {
                if (cli_int(cmd, a, v, 0, 1L << 30, &iv)) return 2;
                p.sampler.top_k = (int)iv;
            } else if (!strcmp(a, "--ctx")) {
                if (cli_int(cmd, a, v, 1, 1L << 30, &iv)) return 2;
                p.ctx = (int)iv;
            } else if (!strcmp(a, "--seed")) {
                if (cli_int(cmd, a, v, 0, 0x7fffffffffffffffL, &iv)) return 2;
                p.sampler.seed = (uint64_t)iv;
            } else if (!strcmp(a, "--stop")) {
                if (!v[0]) { fprintf(stderr, "ds4 %s: --stop needs a non-empty string\n", cmd); return 2; }
                if (p.n_stop == DS4_MAX_STOP) {
                    fprintf(stderr, "ds4 %s: at most %d --stop strings\n", cmd, DS4_MAX_STOP);
                    return 2;
                }
                p.stop[p.n_stop++] = v;
            } else {
                if (cli_float(cmd, a, v, &fv)) return 2;
                if (!strcmp(a, "--temp")) p.sampler.temperature = (float)fv;
                else if (!strcmp(a, "--top-p")) p.sampler.top_p = (float)fv;
                else p.sampler.min_p = (float)fv;
            }
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir) { fprintf(stderr, "ds4 %s: --model DIR is required (see --help)\n", cmd); return 2; }
    if (!prompt) { fprintf(stderr, "ds4 %s: --prompt TEXT is required (see --help)\n", cmd); return 2; }
    if (ds4_sampler_params_validate(&p.sampler)) return cli_fail(cmd);

    ds4_model *m;
    ds4_tokenizer *tok;
    if (ds4_open_model_lora(model_dir, lora, &m, &tok)) return cli_fail(cmd);
    ds4_gen_stats st;
    int rc = ds4_generate(m, tok, prompt, &p, print_piece, NULL, &st);
    if (rc == 0) {
        printf("\n");
        fflush(stdout);
        fprintf(stderr,
                "[prompt %d tokens, generated %d tokens, finish %s | prefill %.1f tok/s (%.3f s), "
                "decode %.1f tok/s (%.3f s)]\n",
                st.prompt_tokens, st.generated_tokens, ds4_finish_name(st.finish),
                st.prefill_tok_s, st.prefill_s, st.decode_tok_s, st.decode_s);
    } else {
        fflush(stdout);
        cli_fail(cmd);
    }
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return rc == 0 ? 0 : 1;
}
