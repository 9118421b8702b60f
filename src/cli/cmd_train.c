/* cmd_train.c — `ds4 train`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_train(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 train: not implemented yet\n");
    return 1;
}
