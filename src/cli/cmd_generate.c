/* cmd_generate.c — `ds4 generate`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_generate(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 generate: not implemented yet\n");
    return 1;
}
