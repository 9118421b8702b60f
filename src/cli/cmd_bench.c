/* cmd_bench.c — `ds4 bench`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_bench(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 bench: not implemented yet\n");
    return 1;
}
