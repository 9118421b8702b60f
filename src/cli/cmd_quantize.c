/* cmd_quantize.c — `ds4 quantize`: load a model (fp32 directory or GGUF),
 * quantize its weight matrices to Q8_0, Q4_0 or Q4_K (ggml block layouts),
 * and write a quantized model directory (format in src/model/quantized.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "model/quantized.h"
#include "util/util.h"

static void usage(void) {
    printf("usage: ds4 quantize --model DIR|F.gguf --type q8_0|q4_0|q4_k --out DIR\n\n"
           "Writes DIR/config.json, DIR/model.safetensors (quantized matrices as U8 ggml\n"
           "blocks, described in the safetensors metadata) and DIR/tokenizer.json.\n"
           "Stay in fp32: the embedding table (and so a tied lm_head), RMSNorm scales,\n"
           "the MoE router and its bias, pruning routers, indexer weights_proj, sinks.\n"
           "An untied lm_head uses Q8_0 under q4_0/q4_k. A matrix whose input width is\n"
           "not a multiple of the block (32; 256 for q4_k) falls back to Q8_0, else fp32.\n"
           "ds4 generate, eval, serve, logits and info run the result like any model.\n");
}

int cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *type = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--type")) type = v;
        else if (!strcmp(a, "--out")) out = v;
        else return cli_unknown("quantize", a);
    }
    if (!model || !type || !out) { fprintf(stderr, "ds4 quantize: --model, --type and --out are required\n"); return 2; }
    int qt = ds4_q_type_from_name(type);
    if (qt <= DS4_Q_F32) { fprintf(stderr, "ds4 quantize: --type must be q8_0, q4_0 or q4_k (got '%s')\n", type); return 2; }
    double t0 = ds4_time_s();
    ds4_model *m = ds4_model_load(model);
    if (!m) return cli_fail("quantize");
    if (m->quant) { ds4_model_free(m); fprintf(stderr, "ds4 quantize: %s is already quantized\n", model); return 1; }
    size_t fp32 = ds4_model_weight_bytes(m);
    if (ds4_model_quantize(m, (ds4_qtype)qt) || ds4_model_save(m, out)) { ds4_model_free(m); return cli_fail("quantize"); }
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/tokenizer.json", model);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", out);
    int have_tok = ds4_file_exists(src);
    if (have_tok && ds4_copy_file(src, dst)) { ds4_model_free(m); return cli_fail("quantize"); }
    int counts[DS4_Q_COUNT] = {0};
    for (int i = 0; i < m->layout.n_tensors; i++) counts[m->quant->t[i].type]++;
    printf("quantized %s -> %s (%s): tensors q8_0 %d, q4_0 %d, q4_k %d, f32 %d (norms included)\n", model, out,
           ds4_q_type_name((ds4_qtype)qt), counts[DS4_Q_Q8_0], counts[DS4_Q_Q4_0], counts[DS4_Q_Q4_K],
           counts[DS4_Q_F32]);
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        int ty = m->quant->t[i].type;
        if (t->ndim == 2 && ty != qt)
            printf("  %-48s [%lld, %lld] stays %s\n", t->name, (long long)t->shape[0], (long long)t->shape[1],
                   ds4_q_type_name((ds4_qtype)ty));
    }
    printf("weights %.2f MB -> %.2f MB in %.2f s%s\n", fp32 / 1e6, ds4_model_weight_bytes(m) / 1e6,
           ds4_time_s() - t0, have_tok ? "" : " (no tokenizer.json copied: source has none)");
    ds4_model_free(m);
    return 0;
}
