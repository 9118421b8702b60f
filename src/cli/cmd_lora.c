/* cmd_lora.c — `ds4 lora`: merge an adapter into a base model (writing an
 * ordinary fp32 model directory) and describe an adapter (src/lora). */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "infer/infer.h"
#include "lora/lora.h"
#include "model/quantized.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: ds4 lora merge --model DIR --lora ADAPTER --out DIR\n"
        "       ds4 lora info  --lora ADAPTER [--model DIR]\n\n"
        "merge  writes an ordinary model directory (config.json, model.safetensors,\n"
        "       tokenizer.json) whose weights are W + alpha/r * B A. The merged model\n"
        "       is fp32: a quantized base (ds4 quantize dir or GGUF) is dequantized to\n"
        "       fp32 before merging (re-quantize the result with `ds4 quantize`).\n"
        "info   prints the adapter's rank, alpha, scale, targets and tensors; with\n"
        "       --model it also checks every tensor against that base.\n\n"
        "Adapters come from `ds4 finetune` or any PEFT LoRA adapter for the same\n"
        "architecture (adapter_model.safetensors + adapter_config.json).\n");
}

static int lora_merge(int argc, char **argv) {
    const char *cmd = "lora merge", *model_dir = NULL, *lora_dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--model") || !strcmp(a, "--lora") || !strcmp(a, "--out")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--lora")) lora_dir = v;
            else out = v;
        } else return cli_unknown(cmd, a);
    }
    if (!model_dir || !lora_dir || !out) {
        fprintf(stderr, "ds4 %s: --model, --lora and --out are required (see ds4 lora --help)\n", cmd);
        return 2;
    }
    ds4_model *m = NULL, *f32 = NULL;
    ds4_tokenizer *tok = NULL;
    ds4_lora *l = NULL;
    int rc = 1;
    if (ds4_open_model_dir(model_dir, &m, &tok)) { cli_fail(cmd); goto done; }
    if (!(l = ds4_lora_load(m, lora_dir))) { cli_fail(cmd); goto done; }
    if (m->quant) {              /* quantized (or a GGUF file): merge into an fp32 copy */
        const char *qt = ds4_model_qtype_name(m);
        if (qt) fprintf(stderr, "ds4 %s: the base is quantized (%s): dequantizing to fp32; the merged model is fp32\n", cmd, qt);
        if (!(f32 = ds4_model_fp32_copy(m))) { cli_fail(cmd); goto done; }
    }
    ds4_model *target = f32 ? f32 : m;
    if (ds4_lora_merge(target, l) || ds4_model_save(target, out)) { cli_fail(cmd); goto done; }
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (ds4_tokenizer_save(tok, path)) { cli_fail(cmd); goto done; }
    printf("ds4 %s: %s + %s (r %d, alpha %g, %d tensors) -> %s (fp32)\n", cmd, model_dir, lora_dir,
           l->rank, l->alpha, l->n, out);
    rc = 0;
done:
    ds4_lora_free(l);
    ds4_model_free(f32);
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
    return rc;
}

static int lora_info(int argc, char **argv) {
    const char *cmd = "lora info", *model_dir = NULL, *lora_dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--model") || !strcmp(a, "--lora")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--model")) model_dir = v;
            else lora_dir = v;
        } else return cli_unknown(cmd, a);
    }
    if (!lora_dir) { fprintf(stderr, "ds4 %s: --lora ADAPTER is required (see ds4 lora --help)\n", cmd); return 2; }
    ds4_model *m = NULL;
    if (model_dir && ds4_open_model_dir(model_dir, &m, NULL)) return cli_fail(cmd);
    ds4_lora *l = ds4_lora_load(m, lora_dir);
    if (!l) { ds4_model_free(m); return cli_fail(cmd); }
    char tg[128];
    ds4_lora_targets_str(l->targets, tg, sizeof tg);
    printf("adapter %s: r %d, alpha %g, scale %g%s, %d adapted tensors, %zu parameters\n", lora_dir, l->rank,
           l->alpha, l->scale, l->rslora ? " (rslora)" : "", l->n, ds4_lora_n_params(l));
    printf("targets: %s\nbase model: %s\n", tg, l->base_model[0] ? l->base_model : "(not recorded)");
    if (m) printf("checked against %s: every tensor fits\n", model_dir);
    ds4_lora_free(l);
    ds4_model_free(m);
    return 0;
}

int cmd_lora(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "merge")) return lora_merge(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info")) return lora_info(argc - 1, argv + 1);
    fprintf(stderr, "ds4 lora: unknown subcommand '%s' (merge, info; see ds4 lora --help)\n", argv[1]);
    return 2;
}
