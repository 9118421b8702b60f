/* cmd_train.c — `ds4 train`: parse flags into ds4_train_opts and run or
 * resume training (src/train). */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "train/train.h"

static void help(void) {
    printf("usage: ds4 train --config F --tokenizer F --data SHARD --out DIR [options]\n"
           "       ds4 train --out DIR --data SHARD --resume [options]\n\n"
           "Trains a ds4 model on a token shard (see `ds4 tokenize`) and writes a checkpoint\n"
           "directory: config.json, model.safetensors, tokenizer.json, optimizer.safetensors,\n"
           "trainer_state.json, train_log.jsonl. --resume continues bit-for-bit.\n\n"
           "  --config F        config.json of the model (new runs)\n"
           "  --tokenizer F     tokenizer.json, copied into the checkpoint\n"
           "  --data SHARD      training tokens\n"
           "  --val SHARD       validation tokens (val loss every --eval-every steps)\n"
           "  --out DIR         checkpoint directory\n"
           "  --resume          continue from DIR (same flags as the first run)\n"
           "  --steps N         optimizer steps in total (1000)\n"
           "  --batch B         sequences per micro-batch (8)\n"
           "  --seq T           tokens per sequence (256)\n"
           "  --accum A         micro-batches per step, gradient accumulation (1)\n"
           "  --lr X            peak learning rate (1e-3), warmup then cosine to lr*0.1\n"
           "  --warmup N        warmup steps (5%% of steps)\n"
           "  --min-lr-frac X   final lr as a fraction of peak (0.1)\n"
           "  --wd X            AdamW decoupled weight decay (0.1; matrices only)\n"
           "  --clip X          global gradient-norm clip (1.0; 0 = off)\n"
           "  --seed S          initialisation and data-sampling seed (1337)\n"
           "  --eval-every N    validation interval in steps (100)\n"
           "  --eval-batches N  validation batches (8)\n"
           "  --save-every N    checkpoint interval in steps (500; always at the end)\n"
           "  --stop-after N    stop after N steps of this run, with a checkpoint (resume later)\n"
           "  --indexer-warmup N  first N steps train only the lightning indexer (its KL loss, dense\n"
           "                    attention; SPEC 1.4); models with index_topk > 0 only (0 = off)\n"
           "  --bias-settle N   MoE: after the last step, N forward-only batches of the training data,\n"
           "                    each followed by the load-bias sign rule with u decaying to 0: the bias\n"
           "                    balances the final router, not a moving one (0 = off; needs\n"
           "                    router_bias_update_rate > 0)\n"
           "  --settle-ema B    the settling's sign rule on an EMA (beta B) of the batch loads (0)\n"
           "  --log F           JSON Lines log (DIR/train_log.jsonl)\n"
           "  --quiet           no live progress line\n"
           "Threads: OMP_NUM_THREADS (default: all cores).\n");
}

int cmd_train(int argc, char **argv) {
    ds4_train_opts o;
    ds4_train_opts_defaults(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long n;
        double x;
        if (cli_is_help(a)) { help(); return 0; }
        if (!strcmp(a, "--resume")) { o.resume = 1; continue; }
        if (!strcmp(a, "--quiet")) { o.quiet = 1; continue; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--config")) o.config_path = v;
        else if (!strcmp(a, "--tokenizer")) o.tokenizer_path = v;
        else if (!strcmp(a, "--data")) o.data_path = v;
        else if (!strcmp(a, "--val")) o.val_path = v;
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--log")) o.log_path = v;
        else if (!strcmp(a, "--steps")) { if (cli_int("train", a, v, 1, 1L << 40, &n)) return 2; o.steps = n; }
        else if (!strcmp(a, "--batch")) { if (cli_int("train", a, v, 1, 1 << 16, &n)) return 2; o.batch = (int)n; }
        else if (!strcmp(a, "--seq")) { if (cli_int("train", a, v, 1, 1 << 20, &n)) return 2; o.seq = (int)n; }
        else if (!strcmp(a, "--accum")) { if (cli_int("train", a, v, 1, 1 << 16, &n)) return 2; o.accum = (int)n; }
        else if (!strcmp(a, "--warmup")) { if (cli_int("train", a, v, 0, 1L << 40, &n)) return 2; o.warmup = n; }
        else if (!strcmp(a, "--seed")) { if (cli_int("train", a, v, 0, 1L << 62, &n)) return 2; o.seed = (uint64_t)n; }
        else if (!strcmp(a, "--eval-every")) { if (cli_int("train", a, v, 0, 1L << 40, &n)) return 2; o.eval_every = n; }
        else if (!strcmp(a, "--eval-batches")) { if (cli_int("train", a, v, 1, 1L << 20, &n)) return 2; o.eval_batches = n; }
        else if (!strcmp(a, "--indexer-warmup")) { if (cli_int("train", a, v, 0, 1L << 40, &n)) return 2; o.indexer_warmup = n; }
        else if (!strcmp(a, "--stop-after")) { if (cli_int("train", a, v, 0, 1L << 40, &n)) return 2; o.stop_after = n; }
        else if (!strcmp(a, "--save-every")) { if (cli_int("train", a, v, 0, 1L << 40, &n)) return 2; o.save_every = n; }
        else if (!strcmp(a, "--bias-settle")) { if (cli_int("train", a, v, 0, 1L << 30, &n)) return 2; o.bias_settle = n; }
        else if (!strcmp(a, "--settle-ema")) {
            if (cli_float("train", a, v, &x)) return 2;
            if (!(x >= 0 && x < 1)) { fprintf(stderr, "ds4 train: --settle-ema must be in [0, 1), not %s\n", v); return 2; }
            o.settle_ema = x;
        }
        else if (!strcmp(a, "--lr")) { if (cli_float("train", a, v, &x)) return 2; o.lr = (float)x; }
        else if (!strcmp(a, "--min-lr-frac")) { if (cli_float("train", a, v, &x)) return 2; o.min_lr_frac = (float)x; }
        else if (!strcmp(a, "--wd")) { if (cli_float("train", a, v, &x)) return 2; o.weight_decay = (float)x; }
        else if (!strcmp(a, "--clip")) { if (cli_float("train", a, v, &x)) return 2; o.grad_clip = (float)x; }
        else return cli_unknown("train", a);
    }
    if (!o.out_dir || !o.data_path || (!o.resume && !o.config_path)) {
        fprintf(stderr, "ds4 train: --out, --data and (for a new run) --config are required (see --help)\n");
        return 2;
    }
    if (ds4_train_run(&o) != 0) return cli_fail("train");
    return 0;
}
