/* main.c — the ds4 binary: hands argv to the command dispatcher in src/cli. */
#include "cli/cli.h"

int main(int argc, char **argv) { return ds4_cli_main(argc, argv); }
