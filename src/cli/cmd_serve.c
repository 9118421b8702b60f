/* cmd_serve.c — `ds4 serve`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_serve(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 serve: not implemented yet\n");
    return 1;
}
