/* cmd_info.c — `ds4 info`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_info(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 info: not implemented yet\n");
    return 1;
}
