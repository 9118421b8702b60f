/* main.c — the ds4 binary: sets the OpenMP wait policy, then hands argv to
 * the command dispatcher in src/cli. */
#include <stdlib.h>
#include <unistd.h>
#include "cli/cli.h"

int main(int argc, char **argv) {
    /* OpenMP workers that spin between parallel regions take the cores from
     * the thread doing the work whenever anything else runs on the machine
     * (measured on 2 busy cores: a training step 2.5x slower, one server
     * stream from ~100 to ~2 tokens/s). libgomp reads OMP_WAIT_POLICY only
     * when it loads, so default it to PASSIVE and start again; a policy the
     * user set is kept. */
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0) {
        execv("/proc/self/exe", argv);
        /* could not re-execute: run with the default policy */
    }
    return ds4_cli_main(argc, argv);
}
