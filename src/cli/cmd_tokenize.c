/* cmd_tokenize.c — `ds4 tokenize`: encode a text file into a binary token
 * shard, or a string (or file) into comma-separated ids on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "ds4.h"
#include "util/util.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 tokenize --tokenizer tokenizer.json --in TEXTFILE --out SHARD\n"
        "       ds4 tokenize --tokenizer tokenizer.json --text TEXT\n\n"
        "Encodes text with a byte-level BPE tokenizer. Special-token text such as\n"
        "<|bos|> in the input is encoded as plain text.\n\n"
        "options:\n"
        "  --tokenizer FILE  tokenizer.json (from ds4 tokenizer train)\n"
        "  --in FILE         text to encode (any bytes)\n"
        "  --out FILE        token shard to write: \"DS4TOK01\", uint64 LE count,\n"
        "                    count uint32 LE ids; prints the token count and bytes/token.\n"
        "                    Without --out the ids are printed like --text does.\n"
        "  --text TEXT       encode TEXT and print its ids comma-separated on one line\n"
        "  -h, --help        this help\n");
}

static int print_ids(const int *ids, size_t n) {
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("\n");
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *tok_path = NULL, *in = NULL, *out = NULL, *text = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--tokenizer")) { if (!(tok_path = cli_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--in")) { if (!(in = cli_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--out")) { if (!(out = cli_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--text")) { if (!(text = cli_value(argc, argv, &i))) return 2; }
        else return cli_unknown("tokenize", a);
    }
    if (!tok_path || (!in && !text) || (in && text) || (out && !in)) {
        fprintf(stderr, "ds4 tokenize: give --tokenizer and either --in FILE [--out SHARD] or --text TEXT "
                        "(see --help)\n");
        return 2;
    }
    ds4_tokenizer *t = ds4_tokenizer_load(tok_path);
    if (!t) return cli_fail("tokenize");
    char *data = NULL;
    size_t len;
    if (in) {
        if (ds4_read_file(in, &data, &len) < 0) { ds4_tokenizer_free(t); return cli_fail("tokenize"); }
    } else {
        len = strlen(text);
    }
    int *ids = NULL;
    size_t n = 0;
    double t0 = ds4_time_s();
    int rc = ds4_tokenizer_encode(t, in ? data : text, len, &ids, &n);
    double dt = ds4_time_s() - t0;
    if (rc == 0 && out) rc = ds4_shard_write(out, ids, n);
    if (rc < 0) rc = cli_fail("tokenize");
    else if (out)
        printf("tokenize: %s (%zu bytes) -> %s: %zu tokens, %.3f bytes/token, encoded in %.2f s\n",
               in, len, out, n, n ? (double)len / (double)n : 0.0, dt);
    else
        print_ids(ids, n);
    free(ids);
    free(data);
    ds4_tokenizer_free(t);
    return rc;
}
