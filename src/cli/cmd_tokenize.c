/* cmd_tokenize.c — `ds4 tokenize`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_tokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 tokenize: not implemented yet\n");
    return 1;
}
