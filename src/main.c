/* main.c — the ds4 binary: bounds OpenMP spin-waiting, then hands argv to the
 * command dispatcher in src/cli. */
#include <stdlib.h>
#include <unistd.h>
#include "cli/cli.h"

int main(int argc, char **argv) {
    /* Idle OpenMP workers spin before they sleep. Spinning long takes the
     * cores from the thread doing the work whenever anything else runs (2 busy
     * cores: a training step 2.5x slower, a server stream ~100 -> ~2 tok/s);
     * not spinning at all makes every decode step pay thread wake-ups (17M
     * model, 2 threads: 55 tok/s passive, 261 active, 326 with a short spin).
     * A short spin keeps both cases fast. libgomp reads these variables only
     * when it loads, so set the default and start again; a user's
     * OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept. */
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") &&
        setenv("GOMP_SPINCOUNT", "10000", 1) == 0) {
        execv("/proc/self/exe", argv);
        /* could not re-execute: run with libgomp's defaults */
    }
    return ds4_cli_main(argc, argv);
}
