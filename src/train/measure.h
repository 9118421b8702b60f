/* measure.h — probes of the machine's limits for benchmarks: best observed
 * sgemm GFLOP/s (C[m,n] = A[m,k] B[n,k]^T) and memory read bandwidth GB/s. */
#ifndef DS4_MEASURE_H
#define DS4_MEASURE_H

#include <stddef.h>

double ds4_measure_sgemm_gflops(int m, int n, int k, double min_seconds);
double ds4_measure_read_bandwidth(size_t bytes, double min_seconds);

#endif
