/* cmd_lora.c — `ds4 lora`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_lora(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 lora: not implemented yet\n");
    return 1;
}
