/* cmd_logits.c — `ds4 logits`: the verification hook. Runs the model over
 * exactly the given token ids (nothing prepended) from position 0 and writes
 * float32 little-endian logits [T, vocab_size] to a file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/infer.h"
#include "lora/lora.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 logits --model DIR --tokens IDS --out FILE\n\n"
        "Writes the logits of every position for exactly the given ids (nothing\n"
        "prepended), float32 little-endian, shape [T, vocab_size], row-major.\n\n"
        "  --model DIR    model directory (config.json, model.safetensors)\n"
        "  --lora ADAPTER apply a LoRA adapter (ds4 finetune, PEFT layout)\n"
        "  --tokens IDS   comma-separated token ids, e.g. \"1,17,42\"\n"
        "  --out FILE     output file (written atomically)\n");
}

/* Parse "1, 2,3" into a malloc'd array; prints the problem and returns -1. */
static int parse_ids(const char *cmd, const char *s, int **out, int *n_out) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int *ids = malloc(cap * sizeof *ids);
    if (!ids) { fprintf(stderr, "ds4 %s: out of memory\n", cmd); return -1; }
    int n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        const char *q = end;
        while (*q == ' ' || *q == '\t') q++;
        if (end == p || errno || (*q && *q != ',')) {
            const char *stop = strchr(p, ',');
            int len = stop ? (int)(stop - p) : (int)strlen(p);
            fprintf(stderr, "ds4 %s: --tokens: item %d '%.*s' is not an integer id\n", cmd, n, len, p);
            free(ids);
            return -1;
        }
        if (v < 0 || v > 0x7fffffffL) {
            fprintf(stderr, "ds4 %s: --tokens: id %ld (item %d) is out of range\n", cmd, v, n);
            free(ids);
            return -1;
        }
        ids[n++] = (int)v;
        if (!*q) break;
        p = q + 1;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

int cmd_logits(int argc, char **argv) {
    const char *cmd = "logits", *lora = NULL, *model_dir = NULL, *tokens = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        else if (!strcmp(a, "--model") || !strcmp(a, "--lora") || !strcmp(a, "--tokens") || !strcmp(a, "--out")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora = v;
            else if (!strcmp(a, "--tokens")) tokens = v;
            else out = v;
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir) { fprintf(stderr, "ds4 %s: --model DIR is required (see --help)\n", cmd); return 2; }
    if (!tokens) { fprintf(stderr, "ds4 %s: --tokens IDS is required (see --help)\n", cmd); return 2; }
    if (!out) { fprintf(stderr, "ds4 %s: --out FILE is required (see --help)\n", cmd); return 2; }
    const char *t = tokens;
    while (*t == ' ' || *t == '\t') t++;
    if (!*t) { fprintf(stderr, "ds4 %s: --tokens is empty: give at least one id\n", cmd); return 2; }
    int *ids, T;
    if (parse_ids(cmd, tokens, &ids, &T)) return 2;

    ds4_model *m;
    if (ds4_open_model_lora(model_dir, lora, &m, NULL)) { free(ids); return cli_fail(cmd); }
    int V = m->cfg.vocab_size, rc = 1;
    float *logits = NULL;
    for (int i = 0; i < T; i++)
        if (ids[i] >= V) {
            fprintf(stderr, "ds4 %s: --tokens: id %d (item %d) is not below vocab_size %d\n", cmd, ids[i], i, V);
            goto done;
        }
    if (T > m->cfg.max_position_embeddings) {
        fprintf(stderr, "ds4 %s: %d tokens exceed max_position_embeddings %d\n", cmd, T,
                m->cfg.max_position_embeddings);
        goto done;
    }
    logits = malloc((size_t)T * V * sizeof *logits);   /* [T, V] */
    if (!logits) { fprintf(stderr, "ds4 %s: out of memory for [%d, %d] logits\n", cmd, T, V); goto done; }
    if (ds4_forward_logits(m, ids, T, logits)) { cli_fail(cmd); goto done; }
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) {                  /* big-endian host: byte-swap */
        uint32_t *w = (uint32_t *)logits;
        for (size_t i = 0; i < (size_t)T * V; i++) w[i] = __builtin_bswap32(w[i]);
    }
    if (ds4_write_file_atomic(out, logits, (size_t)T * V * sizeof *logits)) { cli_fail(cmd); goto done; }
    fprintf(stderr, "ds4 %s: wrote [%d, %d] float32 logits to %s\n", cmd, T, V, out);
    rc = 0;
done:
    free(logits);
    free(ids);
    ds4_model_free(m);
    return rc;
}
