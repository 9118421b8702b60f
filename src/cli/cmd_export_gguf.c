/* cmd_export_gguf.c — `ds4 export-gguf`: write a model (fp32 or quantized,
 * optionally quantized on the way) and its tokenizer as one GGUF file. */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/infer.h"
#include "model/quantized.h"
#include "util/util.h"

static void usage(void) {
    printf("usage: ds4 export-gguf --model DIR --out F.gguf [--type f32|q8_0|q4_0|q4_k]\n\n"
           "Writes GGUF v3 with the tokenizer as metadata (tokenizer.ggml.model \"gpt2\",\n"
           "tokens, token_type, merges, bos/eos ids). A dense model without pruning,\n"
           "indexer, sinks or sliding window is written as llama.cpp's \"llama\"\n"
           "architecture (llama.cpp runs it); anything else as \"ds4\" (llama.cpp names\n"
           "where they exist; ds4.llama_cpp_lacks says what is missing). Every ds4\n"
           "command loads the file (--model F.gguf). --type quantizes first (default:\n"
           "keep the model's own types).\n");
}

int cmd_export_gguf(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *type = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--type")) type = v;
        else return cli_unknown("export-gguf", a);
    }
    if (!model || !out) { fprintf(stderr, "ds4 export-gguf: --model and --out are required\n"); return 2; }
    int qt = type ? ds4_q_type_from_name(type) : DS4_Q_F32;
    if (qt < 0) { fprintf(stderr, "ds4 export-gguf: --type must be f32, q8_0, q4_0 or q4_k\n"); return 2; }
    ds4_model *m;
    ds4_tokenizer *tok;
    if (ds4_gguf_is_gguf(model) ? ds4_model_open_gguf(model, &m, &tok) : ds4_open_model_dir(model, &m, &tok))
        return cli_fail("export-gguf");
    int rc = 0;
    if (qt > DS4_Q_F32 && m->quant) {
        fprintf(stderr, "ds4 export-gguf: %s is already quantized; --type applies to fp32 models\n", model);
        rc = 1;
    } else if (qt > DS4_Q_F32 && ds4_model_quantize(m, (ds4_qtype)qt)) {
        rc = cli_fail("export-gguf");
    }
    const char *arch = NULL;
    if (!rc && ds4_model_export_gguf(m, tok, out, &arch)) rc = cli_fail("export-gguf");
    if (!rc) {
        const char *why;
        printf("wrote %s: architecture %s, %.2f MB of weights%s\n", out, arch, ds4_model_weight_bytes(m) / 1e6,
               m->quant ? " (quantized)" : " (f32)");
        if (!ds4_gguf_llama_compatible(&m->cfg, &why)) printf("llama.cpp would lack: %s\n", why);
    }
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    return rc;
}
