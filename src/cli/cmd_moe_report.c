/* cmd_moe_report.c — `ds4 moe-report`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_moe_report(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 moe-report: not implemented yet\n");
    return 1;
}
