/* cmd_tokenizer.c — `ds4 tokenizer train`: learn a byte-level BPE tokenizer
 * from a text file and save it as a Hugging Face tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "ds4.h"
#include "util/util.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 tokenizer train --in TEXTFILE --vocab N --out tokenizer.json [--quiet]\n\n"
        "Learns a GPT-2 style byte-level BPE from TEXTFILE and writes a Hugging Face\n"
        "tokenizer.json (BPE model, ByteLevel pre-tokenizer and decoder).\n\n"
        "options:\n"
        "  --in FILE      training text (any bytes; UTF-8 expected)\n"
        "  --vocab N      total vocabulary size: 256 byte tokens + learned merges +\n"
        "                 6 special tokens (<|bos|> <|eos|> <|video|> <|eov|> <|frame|>\n"
        "                 <|pad|>, in that order after the merges); N >= 262\n"
        "  --out FILE     tokenizer.json to write (atomically)\n"
        "  --quiet        no progress on stderr\n"
        "  -h, --help     this help\n");
}

static int train(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    long vocab = -1;
    int verbose = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--in")) { if (!(in = cli_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--out")) { if (!(out = cli_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--vocab")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v || cli_int("tokenizer train", "--vocab", v, 262, 1 << 24, &vocab) < 0) return 2;
        } else if (!strcmp(a, "--quiet")) verbose = 0;
        else return cli_unknown("tokenizer train", a);
    }
    if (!in || !out || vocab < 0) {
        fprintf(stderr, "ds4 tokenizer train: --in, --vocab and --out are required (see --help)\n");
        return 2;
    }
    char *text;
    size_t len;
    if (ds4_read_file(in, &text, &len) < 0) return cli_fail("tokenizer train");
    double t0 = ds4_time_s();
    ds4_tokenizer *t = ds4_tokenizer_train(text, len, (int)vocab, verbose);
    double dt = ds4_time_s() - t0;
    if (!t) { free(text); return cli_fail("tokenizer train"); }
    if (ds4_tokenizer_save(t, out) < 0) {
        ds4_tokenizer_free(t);
        free(text);
        return cli_fail("tokenizer train");
    }
    printf("tokenizer: %s (%zu bytes) -> %s: vocab %d in %.2f s\n", in, len, out,
           ds4_tokenizer_vocab_size(t), dt);
    ds4_tokenizer_free(t);
    free(text);
    return 0;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return train(argc - 1, argv + 1);
    fprintf(stderr, "ds4 tokenizer: unknown subcommand '%s' (see ds4 tokenizer --help)\n", argv[1]);
    return 2;
}
