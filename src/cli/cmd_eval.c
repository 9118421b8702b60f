/* cmd_eval.c — `ds4 eval`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_eval(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 eval: not implemented yet\n");
    return 1;
}
