/* testutil.h — helpers shared by the cmocka tests: a per-run temporary
 * directory (made in setup, removed recursively in teardown) and paths in it. */
#ifndef DS4_TESTUTIL_H
#define DS4_TESTUTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];                /* this run's temporary directory */

/* g_dir/name; four rotating buffers so a call can take two or three paths. */
static inline const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

/* Makes /tmp/ds4_test_<tag>_XXXXXX in g_dir; 0 on success. */
static inline int tmpdir_make(const char *tag) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ds4_test_%s_XXXXXX", tag);
    return mkdtemp(g_dir) ? 0 : -1;
}

static inline int tmpdir_rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s; (void)flag; (void)f;
    return remove(p);
}

/* Removes g_dir and everything below it; 0 on success. */
static inline int tmpdir_remove(void) {
    if (!g_dir[0]) return 0;
    return nftw(g_dir, tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
