/* cmd_info.c — `ds4 info`: a model's config, parameter counts and its cost
 * per token (FLOPs by component, bytes read, KV cache) from src/model/cost.h,
 * per layer when the model prunes tokens or uses sparse attention. */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "model/cost.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/prune.h"

int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    long ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            printf("usage: ds4 info --model DIR [--ctx T]\n\n"
                   "Prints the model's shape, parameter counts, and forward cost per token\n"
                   "(FLOPs by component, fp32 weight bytes read, KV-cache bytes) at context T\n"
                   "(default: max_position_embeddings).\n");
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--ctx")) { if (cli_int("info", a, v, 1, 1 << 24, &ctx)) return 2; }
        else return cli_unknown("info", a);
    }
    if (!dir) { fprintf(stderr, "ds4 info: --model is required\n"); return 2; }
    ds4_model *m = ds4_model_load(dir);
    if (!m) return cli_fail("info");
    const ds4_config *c = &m->cfg;
    if (ctx == 0) ctx = c->max_position_embeddings;
    ds4_cost k;
    ds4_layer_cost lc[DS4_MAX_LAYERS];
    ds4_cost_layers(c, (double)ctx, NULL, lc, &k);
    int moe_layers = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) moe_layers += ds4_layer_is_moe(c, l);
    printf("model        %s\n", dir);
    printf("shape        vocab %d, hidden %d, layers %d (%d MoE), heads %d (kv %d) x %d, ctx %d\n",
           c->vocab_size, c->hidden_size, c->num_hidden_layers, moe_layers, c->num_attention_heads,
           c->num_key_value_heads, c->head_dim, c->max_position_embeddings);
    if (moe_layers)
        printf("experts      %d routed in %d groups (%d active per token), %d shared, width %d\n",
               c->n_routed_experts, c->n_group, ds4_moe_k(c), c->n_shared_experts, c->moe_intermediate_size);
    else
        printf("ffn          dense SwiGLU, width %d\n", c->intermediate_size);
    printf("parameters   %.3fM total, %.3fM active per token (excl. embedding table)\n",
           ds4_model_n_params(m) / 1e6, ds4_model_n_active_params(m) / 1e6);
    printf("per token at context %ld:\n", ctx);
    printf("  attention projections  %8.2f MFLOP\n", k.attn_proj / 1e6);
    printf("  attention core         %8.2f MFLOP\n", k.attn_core / 1e6);
    if (c->index_topk > 0) printf("  lightning indexer      %8.2f MFLOP\n", k.indexer / 1e6);
    if (ds4_prune_any(c)) printf("  pruning routers        %8.2f MFLOP\n", k.prune_router / 1e6);
    printf("  FFN / experts          %8.2f MFLOP\n", k.ffn / 1e6);
    printf("  router                 %8.2f MFLOP\n", k.router / 1e6);
    printf("  lm_head                %8.2f MFLOP\n", k.lm_head / 1e6);
    printf("  total forward          %8.2f MFLOP (training ~3x)\n", k.total / 1e6);
    printf("  weights read (fp32)    %8.2f MB\n", k.weight_bytes / 1e6);
    printf("  KV cache               %8.2f KB per token of context\n", k.kv_bytes / 1e3);
    if (ds4_prune_any(c) || c->index_topk > 0 || c->sliding_window > 0) {
        /* SPEC 1.3/1.4: what pruning and sparse attention save, layer by layer (nominal keep = 1 - ratio) */
        ds4_config plain = *c;
        plain.n_prune_layers = 0;
        plain.index_topk = plain.index_n_heads = plain.index_head_dim = 0;
        plain.sliding_window = 0;
        ds4_cost d;
        ds4_cost_per_token(&plain, (double)ctx, &d);
        if (c->index_topk > 0)
            printf("sparse attention: top-%d keys + window %d, indexer %d heads x %d\n", c->index_topk,
                   c->sliding_window, c->index_n_heads, c->index_head_dim);
        printf("per layer at context %ld (keep = 1 - prune_ratio):\n", ctx);
        printf("  %5s %6s %9s %11s %11s %10s\n", "layer", "keep", "attended", "MFLOP/tok", "KV B/tok", "wt MB/tok");
        for (int l = 0; l < c->num_hidden_layers; l++)
            printf("  %5d %5.0f%% %9.0f %11.3f %11.0f %10.3f\n", l, 100 * lc[l].keep, lc[l].attended, lc[l].total / 1e6,
                   lc[l].kv_bytes, lc[l].weight_bytes / 1e6);
        printf("  vs the same model dense and unpruned: %.1f%% fewer FLOPs, %.1f%% fewer KV bytes per token\n",
               100 * (1 - k.total / d.total), 100 * (1 - k.kv_bytes / d.kv_bytes));
    }
    ds4_model_free(m);
    return 0;
}
