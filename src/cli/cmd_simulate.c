/* cmd_simulate.c — `ds4 simulate`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_simulate(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 simulate: not implemented yet\n");
    return 1;
}
