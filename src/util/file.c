/* file.c — checked allocation, whole-file reads and crash-safe atomic writes
 * (temporary file, fsync, rename, fsync of the directory). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "util/util.h"

/* Buffers of 4 MB and more (weights, KV caches, big activations) ask for
 * transparent huge pages where the kernel leaves them to madvise: a streaming
 * read then misses the TLB 512x less often and the hardware prefetchers are
 * not stopped at every 4 KiB page (one core reading 64 MB: 15 -> 20 GB/s). */
#define HUGE_MIN ((size_t)4 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

static void advise_huge(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    uintptr_t a = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    uintptr_t e = ((uintptr_t)p + n) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);   /* a hint: failure is harmless */
#else
    (void)p; (void)n;
#endif
}

void *ds4_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) ds4_set_error("out of memory allocating %zu bytes", n);
    else if (n >= HUGE_MIN) advise_huge(p, n);
    return p;
}

void *ds4_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ds4_set_error("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *ds4_alloc_aligned(size_t n) {
    const size_t align = n >= HUGE_MIN ? HUGE_PAGE : 64;
    size_t sz = (n + align - 1) & ~(align - 1);
    void *p = aligned_alloc(align, sz ? sz : 64);
    if (!p) { ds4_set_error("out of memory allocating %zu bytes", n); return NULL; }
    if (n >= HUGE_MIN) advise_huge(p, sz);
    memset(p, 0, sz ? sz : 64);
    return p;
}

int ds4_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { ds4_set_error("%s: cannot open: %s", path, strerror(errno)); return -1; }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); ds4_set_error("%s: cannot seek", path); return -1; }
    long n = ftell(f);
    if (n < 0) { fclose(f); ds4_set_error("%s: cannot tell size", path); return -1; }
    rewind(f);
    char *buf = ds4_malloc((size_t)n + 1);
    if (!buf) { fclose(f); return -1; }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf); fclose(f);
        ds4_set_error("%s: short read", path);
        return -1;
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = (size_t)n;
    return 0;
}

int ds4_atomic_open(ds4_atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (strlen(path) >= sizeof af->path) { ds4_set_error("%s: path too long", path); return -1; }
    strcpy(af->path, path);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        af->direct = 1;
        af->f = fopen(path, "wb");
        if (!af->f) { ds4_set_error("%s: cannot open: %s", path, strerror(errno)); return -1; }
        return 0;
    }
    snprintf(af->tmp, sizeof af->tmp, "%s.tmp.%d", path, (int)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) { ds4_set_error("%s: cannot create: %s", af->tmp, strerror(errno)); return -1; }
    return 0;
}

int ds4_atomic_write(ds4_atomic_file *af, const void *data, size_t len) {
    if (len && fwrite(data, 1, len, af->f) != len) {
        ds4_set_error("%s: write failed: %s", af->tmp, strerror(errno));
        return -1;
    }
    return 0;
}

void ds4_atomic_abort(ds4_atomic_file *af) {
    if (af->f) fclose(af->f);
    af->f = NULL;
    if (af->tmp[0] && !af->direct) unlink(af->tmp);
}

int ds4_atomic_commit(ds4_atomic_file *af) {
    if (af->direct) {
        int bad = fclose(af->f) != 0;
        af->f = NULL;
        if (bad) { ds4_set_error("%s: write failed: %s", af->path, strerror(errno)); return -1; }
        return 0;
    }
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) {
        ds4_set_error("%s: flush failed: %s", af->tmp, strerror(errno));
        ds4_atomic_abort(af);
        return -1;
    }
    fclose(af->f);
    af->f = NULL;
    if (rename(af->tmp, af->path) != 0) {
        ds4_set_error("%s: rename failed: %s", af->path, strerror(errno));
        unlink(af->tmp);
        return -1;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", af->path);
    int fd = open(dirname(dir), O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
    return 0;
}

int ds4_write_file_atomic(const char *path, const void *data, size_t len) {
    ds4_atomic_file af;
    if (ds4_atomic_open(&af, path) != 0) return -1;
    if (ds4_atomic_write(&af, data, len) != 0) { ds4_atomic_abort(&af); return -1; }
    return ds4_atomic_commit(&af);
}

int ds4_copy_file(const char *src, const char *dst) {
    char *data;
    size_t len;
    if (ds4_read_file(src, &data, &len) != 0) return -1;
    int rc = ds4_write_file_atomic(dst, data, len);
    free(data);
    return rc;
}

int ds4_mkdir_p(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) { ds4_set_error("%s: path too long", path); return -1; }
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                ds4_set_error("%s: cannot create directory: %s", buf, strerror(errno));
                return -1;
            }
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
        ds4_set_error("%s: cannot create directory: %s", buf, strerror(errno));
        return -1;
    }
    return 0;
}

int ds4_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
