/* cmd_finetune.c — `ds4 finetune`: parse flags into ds4_finetune_opts and
 * train a LoRA adapter on a frozen base model (src/lora). */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "lora/lora.h"

static void help(void) {
    printf("usage: ds4 finetune --model DIR --data TEXTFILE --lora-rank R --out ADAPTER [options]\n"
           "       ds4 finetune --model DIR --data TEXTFILE --out ADAPTER --resume [options]\n\n"
           "Trains a LoRA adapter (W + alpha/r * B A, B [out, r] starts at zero, A [r, in]\n"
           "Kaiming-uniform) on the attention and FFN/expert projections of a frozen base\n"
           "model, and writes ADAPTER/adapter_model.safetensors + adapter_config.json in the\n"
           "Hugging Face PEFT layout, and ADAPTER/finetune_log.jsonl. Use it with --lora on\n"
           "generate, eval and serve, or bake it in with `ds4 lora merge`.\n\n"
           "The base may be an fp32 model directory, a quantized one (ds4 quantize) or a GGUF\n"
           "file; a quantized base is dequantized to fp32 for training, so training needs the\n"
           "memory of an fp32 model (weights, their gradients and one working copy).\n\n"
           "  --model DIR       base model directory or GGUF file (with tokenizer)\n"
           "  --data TEXTFILE   training text (model tokenizer, no <|bos|>), or a token shard\n"
           "  --val TEXTFILE    validation text: val loss before training and every --eval-every steps\n"
           "  --out ADAPTER     adapter directory\n"
           "  --lora-rank R     adapter rank r (8)\n"
           "  --lora-alpha A    scale numerator: scale = A / r (default 2r)\n"
           "  --targets LIST    q,k,v,o,gate,up,down or all (default all; gate/up/down cover the\n"
           "                    dense FFN, the shared experts and every routed expert)\n"
           "  --steps N         optimizer steps (200)\n"
           "  --batch B         sequences per micro-batch (8)\n"
           "  --seq T           tokens per sequence (128)\n"
           "  --accum A         micro-batches per step (1)\n"
           "  --lr X            peak learning rate (2e-3), warmup then cosine to lr*0.1\n"
           "  --warmup N        warmup steps (5%% of steps)\n"
           "  --min-lr-frac X   final lr as a fraction of peak (0.1)\n"
           "  --wd X            AdamW weight decay on A and B (0)\n"
           "  --clip X          gradient-norm clip over A and B (1.0; 0 = off)\n"
           "  --seed S          adapter init and data sampling seed (1337)\n"
           "  --eval-every N    validation interval (50)\n"
           "  --eval-batches N  validation batches (8)\n"
           "  --save-every N    also checkpoint every N steps (always at the end)\n"
           "  --stop-after N    stop after N steps of this run, with a checkpoint (resume later)\n"
           "  --resume          continue from ADAPTER's checkpoint bit-for-bit (adapter,\n"
           "                    optimizer.safetensors, finetune_state.json; the first run's flags;\n"
           "                    rank, alpha and targets come from the adapter)\n"
           "  --log F           JSON Lines log (ADAPTER/finetune_log.jsonl)\n"
           "  --quiet           no live progress line\n"
           "Threads: OMP_NUM_THREADS (default: all cores).\n");
}

int cmd_finetune(int argc, char **argv) {
    const char *cmd = "finetune";
    ds4_finetune_opts o;
    ds4_finetune_opts_defaults(&o);
    int rank_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long n;
        double x;
        if (cli_is_help(a)) { help(); return 0; }
        if (!strcmp(a, "--quiet")) { o.quiet = 1; continue; }
        if (!strcmp(a, "--resume")) { o.resume = 1; continue; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) o.model_dir = v;
        else if (!strcmp(a, "--data")) o.data_path = v;
        else if (!strcmp(a, "--val")) o.val_path = v;
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--log")) o.log_path = v;
        else if (!strcmp(a, "--targets")) {
            if (ds4_lora_parse_targets(v, &o.targets)) { cli_fail(cmd); return 2; }
        }
        else if (!strcmp(a, "--lora-rank")) { if (cli_int(cmd, a, v, 1, DS4_LORA_MAX_RANK, &n)) return 2; o.rank = (int)n; rank_set = 1; }
        else if (!strcmp(a, "--lora-alpha")) {
            if (cli_float(cmd, a, v, &x)) return 2;
            if (!(x > 0)) { fprintf(stderr, "ds4 %s: --lora-alpha must be positive\n", cmd); return 2; }
            o.alpha = (float)x;
        }
        else if (!strcmp(a, "--steps")) { if (cli_int(cmd, a, v, 1, 1L << 40, &n)) return 2; o.steps = n; }
        else if (!strcmp(a, "--batch")) { if (cli_int(cmd, a, v, 1, 1 << 16, &n)) return 2; o.batch = (int)n; }
        else if (!strcmp(a, "--seq")) { if (cli_int(cmd, a, v, 1, 1 << 20, &n)) return 2; o.seq = (int)n; }
        else if (!strcmp(a, "--accum")) { if (cli_int(cmd, a, v, 1, 1 << 16, &n)) return 2; o.accum = (int)n; }
        else if (!strcmp(a, "--warmup")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.warmup = n; }
        else if (!strcmp(a, "--seed")) { if (cli_int(cmd, a, v, 0, 1L << 62, &n)) return 2; o.seed = (uint64_t)n; }
        else if (!strcmp(a, "--eval-every")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.eval_every = n; }
        else if (!strcmp(a, "--eval-batches")) { if (cli_int(cmd, a, v, 1, 1L << 20, &n)) return 2; o.eval_batches = n; }
        else if (!strcmp(a, "--stop-after")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.stop_after = n; }
        else if (!strcmp(a, "--save-every")) { if (cli_int(cmd, a, v, 0, 1L << 40, &n)) return 2; o.save_every = n; }
        else if (!strcmp(a, "--lr")) { if (cli_float(cmd, a, v, &x)) return 2; o.lr = (float)x; }
        else if (!strcmp(a, "--min-lr-frac")) { if (cli_float(cmd, a, v, &x)) return 2; o.min_lr_frac = (float)x; }
        else if (!strcmp(a, "--wd")) { if (cli_float(cmd, a, v, &x)) return 2; o.weight_decay = (float)x; }
        else if (!strcmp(a, "--clip")) { if (cli_float(cmd, a, v, &x)) return 2; o.grad_clip = (float)x; }
        else return cli_unknown(cmd, a);
    }
    if (!o.model_dir || !o.data_path || !o.out_dir || (!rank_set && !o.resume)) {
        fprintf(stderr, "ds4 %s: --model, --data, --lora-rank (or --resume) and --out are required (see --help)\n", cmd);
        return 2;
    }
    o.rank_given = rank_set;
    if (ds4_finetune_run(&o) != 0) return cli_fail(cmd);
    return 0;
}
