/* cmd_finetune.c — `ds4 finetune`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_finetune(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 finetune: not implemented yet\n");
    return 1;
}
