/* cmd_logits.c — `ds4 logits`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_logits(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 logits: not implemented yet\n");
    return 1;
}
