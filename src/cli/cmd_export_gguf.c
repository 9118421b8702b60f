/* cmd_export_gguf.c — `ds4 export-gguf`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_export_gguf(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 export-gguf: not implemented yet\n");
    return 1;
}
