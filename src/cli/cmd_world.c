/* cmd_world.c — `ds4 world`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_world(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 world: not implemented yet\n");
    return 1;
}
