/* cmd_vtok.c — `ds4 vtok`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_vtok(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 vtok: not implemented yet\n");
    return 1;
}
