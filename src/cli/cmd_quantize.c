/* cmd_quantize.c — `ds4 quantize`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_quantize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 quantize: not implemented yet\n");
    return 1;
}
