/* cmd_tokenizer.c — `ds4 tokenizer`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_tokenizer(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 tokenizer: not implemented yet\n");
    return 1;
}
