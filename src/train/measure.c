/* measure.c — machine-limit probes used by the benchmarks in the same run as
 * the workload: OpenBLAS sgemm GFLOP/s and memory read bandwidth. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include "train/measure.h"
#include "util/util.h"

double ds4_measure_sgemm_gflops(int m, int n, int k, double min_seconds) {
    float *a = ds4_alloc_aligned(sizeof(float) * (size_t)m * k);
    float *b = ds4_alloc_aligned(sizeof(float) * (size_t)k * n);
    float *c = ds4_alloc_aligned(sizeof(float) * (size_t)m * n);
    if (!a || !b || !c) { free(a); free(b); free(c); return 0; }
    for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    double best = 0, t_total = 0;
    while (t_total < min_seconds) {
        double t0 = ds4_time_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
        double dt = ds4_time_s() - t0;
        t_total += dt;
        double g = 2.0 * m * n * k / dt / 1e9;
        if (g > best) best = g;
    }
    free(a); free(b); free(c);
    return best;
}

double ds4_measure_read_bandwidth(size_t bytes, double min_seconds) {
    size_t n = bytes / sizeof(float);
    float *x = ds4_alloc_aligned(n * sizeof(float));
    if (!x) return 0;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = 1.0f;
    double best = 0, t_total = 0;
    volatile float sink = 0;
    while (t_total < min_seconds) {
        double t0 = ds4_time_s();
        float s = 0;
        /* 32 independent lanes per thread: vectorises without reassociation */
        #pragma omp parallel reduction(+ : s)
        {
            float acc[32] = {0};
            #pragma omp for schedule(static)
            for (size_t i = 0; i < n / 32; i++)
                for (int j = 0; j < 32; j++) acc[j] += x[i * 32 + j];
            for (int j = 0; j < 32; j++) s += acc[j];
        }
        double dt = ds4_time_s() - t0;
        sink += s;
        t_total += dt;
        double bw = (double)n * sizeof(float) / dt / 1e9;
        if (bw > best) best = bw;
    }
    (void)sink;
    free(x);
    return best;
}
