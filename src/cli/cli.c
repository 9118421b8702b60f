/* cli.c — dispatch of `ds4 <command>`, `ds4 help`, and the argument helpers
 * shared by every command file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "ds4.h"

typedef struct { const char *name; int (*fn)(int, char **); const char *summary; } command;

static const command COMMANDS[] = {
    {"train",       cmd_train,       "train or resume a model on a token shard"},
    {"generate",    cmd_generate,    "generate text from a prompt (streaming)"},
    {"eval",        cmd_eval,        "perplexity on text (default), multiple choice (eval mc), code pass@k (eval code)"},
    {"logits",      cmd_logits,      "write raw logits for given token ids (verification hook)"},
    {"tokenizer",   cmd_tokenizer,   "train a byte-level BPE tokenizer (tokenizer train)"},
    {"tokenize",    cmd_tokenize,    "encode text into ids or a binary token shard"},
    {"info",        cmd_info,        "print a model's config, parameter counts and costs"},
    {"bench",       cmd_bench,       "benchmarks: train, decode, moe, prune, world, serve, quant"},
    {"moe-report",  cmd_moe_report,  "expert load, utilization and communication of a model"},
    {"world",       cmd_world,       "physics world: gen (dataset), eval (physics metrics)"},
    {"vtok",        cmd_vtok,        "video tokenizer: train, encode, decode"},
    {"video",       cmd_video,       "text to video"},
    {"simulate",    cmd_simulate,    "continue a clip by simulating its physics"},
    {"serve",       cmd_serve,       "OpenAI-compatible HTTP server"},
    {"quantize",    cmd_quantize,    "quantize weights (q8_0, q4_0, q4_k)"},
    {"export-gguf", cmd_export_gguf, "write a GGUF file"},
    {"finetune",    cmd_finetune,    "LoRA fine-tuning"},
    {"lora",        cmd_lora,        "LoRA adapters: merge into a model, info"},
};
#define N_COMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "ds4 — train, run, serve and evaluate ds4 models\n\n"
               "usage: ds4 <command> [options]   (ds4 <command> --help for its options)\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "  %-12s %s\n", "help", "this list");
}

int ds4_cli_main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *name = argv[1];
    if (!strcmp(name, "help") || cli_is_help(name)) {
        if (argc > 2) {
            for (int i = 0; i < N_COMMANDS; i++)
                if (!strcmp(argv[2], COMMANDS[i].name)) {
                    char *hargv[] = {argv[2], "--help", NULL};
                    return COMMANDS[i].fn(2, hargv);
                }
        }
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(name, COMMANDS[i].name)) return COMMANDS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "ds4: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}

int cli_is_help(const char *a) { return !strcmp(a, "-h") || !strcmp(a, "--help"); }

const char *cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "ds4 %s: %s needs a value\n", argv[0], argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "ds4 %s: %s expects an integer in [%ld, %ld], got '%s'\n", cmd, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "ds4 %s: %s expects a number, got '%s'\n", cmd, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_unknown(const char *cmd, const char *opt) {
    fprintf(stderr, "ds4 %s: unknown option '%s' (see ds4 %s --help)\n", cmd, opt, cmd);
    return 2;
}

int cli_fail(const char *cmd) {
    fprintf(stderr, "ds4 %s: %s\n", cmd, ds4_error());
    return 1;
}
