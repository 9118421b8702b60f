/* cmd_video.c — `ds4 video`. Not implemented yet: it says so and fails. */
#include <stdio.h>
#include "cli/cli.h"

int cmd_video(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "ds4 video: not implemented yet\n");
    return 1;
}
