/* bench_bw.c — the read-bandwidth probe of the decode benchmarks: a streaming
 * read of a buffer as big as the bytes one token reads, interleaved with decode steps. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/bench.h"
#include "util/util.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

int bench_bw_init(bench_bw *p, size_t bytes) {
    p->n = (bytes / 4096 + 1) * 1024;               /* floats, whole 4 KiB pages */
    p->buf = ds4_alloc_aligned(p->n * sizeof(float));
    if (!p->buf) return -1;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < p->n; i++) p->buf[i] = 1.0f;
    p->sink = 0;
    return 0;
}

void bench_bw_free(bench_bw *p) { free(p->buf); p->buf = NULL; }

/* One pass: every thread of the decode's team sums its contiguous share with
 * four independent vector accumulators (loads, not arithmetic, are the limit).
 * A buffer under 16 MB is read several times in the pass (each thread its own
 * share again, no barrier between) so the time is not the fork and join;
 * the result is the time of one read. */
double bench_bw_pass(bench_bw *p) {
    const float *x = p->buf;
    const size_t n = p->n;
    const int reps = (int)DS4_MAX(1, ((size_t)16 << 20) / (n * sizeof(float)));
    float s = 0;
    double t0 = ds4_time_s();
    #pragma omp parallel reduction(+ : s)
    for (int r = 0; r < reps; r++) {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const size_t per = (n / 32 + nt - 1) / nt * 32, i0 = DS4_MIN(n, per * t), i1 = DS4_MIN(n, i0 + per);
        size_t i = i0;
#if defined(__AVX2__)
        __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
        for (; i + 32 <= i1; i += 32) {
            a = _mm256_add_ps(a, _mm256_load_ps(x + i));
            b = _mm256_add_ps(b, _mm256_load_ps(x + i + 8));
            c = _mm256_add_ps(c, _mm256_load_ps(x + i + 16));
            d = _mm256_add_ps(d, _mm256_load_ps(x + i + 24));
        }
        float lane[8];
        _mm256_storeu_ps(lane, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
        for (int j = 0; j < 8; j++) s += lane[j];
#endif
        for (; i < i1; i++) s += x[i];
    }
    double dt = (ds4_time_s() - t0) / reps;
    p->sink += s;
    return dt;
}

/* sysfs first: glibc's sysconf figure is wrong on some virtual machines
 * (256 MB for this 32 MB L3 under KVM) */
long bench_llc_bytes(void) {
    long best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], unit = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        long v = 0;
        if (fscanf(f, "%ld%c", &v, &unit) >= 1) {
            v *= unit == 'K' ? 1024L : unit == 'M' ? 1048576L : 1L;
            if (v > best) best = v;
        }
        fclose(f);
    }
    if (best > 0) return best;
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l3 > 0 ? l3 : l2 > 0 ? l2 : 0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(const double *v, int n) {
    if (n <= 0) return 0;
    double *s = malloc(sizeof(double) * (size_t)n);
    if (!s) return v[0];
    memcpy(s, v, sizeof(double) * (size_t)n);
    qsort(s, (size_t)n, sizeof(double), cmp_d);
    double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    free(s);
    return m;
}

double bench_min(const double *v, int n) {
    double m = n > 0 ? v[0] : 0;
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}
