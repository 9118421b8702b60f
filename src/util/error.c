/* error.c — the thread-local error message behind ds4_error(): library code
 * records what went wrong here and returns -1/NULL; only the CLI prints and exits. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "ds4.h"

static _Thread_local char g_err[2048];

const char *ds4_error(void) { return g_err[0] ? g_err : "unknown error"; }

void ds4_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
}

void ds4_error_prefix(const char *fmt, ...) {
    char pre[1024], old[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    size_t np = strlen(pre);
    while (np > 0 && (pre[np - 1] == ' ' || pre[np - 1] == ':')) np--;   /* callers may end with ": " */
    memcpy(g_err, pre, np);
    memcpy(g_err + np, ": ", 2);
    const char *o = old[0] ? old : "unknown error";
    size_t room = sizeof g_err - np - 3, no = strlen(o);
    if (no > room) no = room;
    memcpy(g_err + np + 2, o, no);
    g_err[np + 2 + no] = 0;
}
