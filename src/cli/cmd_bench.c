/* cmd_bench.c — `ds4 bench <what>`: dispatch to the benchmark functions. */
#include <stdio.h>
#include <string.h>
#include "cli/bench.h"
#include "cli/cli.h"

typedef struct { const char *name; int (*fn)(int, char **); const char *summary; } bench_entry;

static const bench_entry BENCHES[] = {
    {"train",  bench_train,  "training tokens/s and GFLOP/s vs OpenBLAS sgemm (and PyTorch with --torch)"},
    {"decode", bench_decode, "batch-1 fp32 decode tokens/s vs the memory-bandwidth bound"},
    {"prune",  bench_prune,  "sparse attention + token pruning study: val loss, agreement, FLOPs, wall time, memory"},
    {"moe",    bench_moe,    "hierarchical MoE study: balance, communication, MoE layer vs dense"},
    {"serve",  bench_serve,  "ds4 serve under 1/8/32/64 loopback streams: tokens/s, TTFT, errors, RSS"},
    {"world",  bench_world,  "world model physics vs the simulator: continuation, baselines, text-to-video"},
    {"quant",  bench_quant,  "Q8_0/Q4_0/Q4_K vs fp32: perplexity, batch-1 decode tokens/s vs the bandwidth bound"},
};

static void help(void) {
    printf("usage: ds4 bench <what> [options]   (ds4 bench <what> --help)\n\n");
    for (size_t i = 0; i < sizeof BENCHES / sizeof BENCHES[0]; i++)
        printf("  %-8s %s\n", BENCHES[i].name, BENCHES[i].summary);
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) { help(); return argc < 2 ? 2 : 0; }
    for (size_t i = 0; i < sizeof BENCHES / sizeof BENCHES[0]; i++)
        if (!strcmp(argv[1], BENCHES[i].name)) return BENCHES[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "ds4 bench: unknown benchmark '%s'\n\n", argv[1]);
    help();
    return 2;
}
