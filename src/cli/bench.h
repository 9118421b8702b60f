/* bench.h — `ds4 bench <what>`: each benchmark is one function, prints a
 * readable table and one JSON line of ratios measured in the same run. */
#ifndef DS4_BENCH_H
#define DS4_BENCH_H

#include "ds4.h"

int bench_train(int argc, char **argv);
int bench_decode(int argc, char **argv);
int bench_prune(int argc, char **argv);
int bench_moe(int argc, char **argv);      /* bench_moe.c */
int bench_serve(int argc, char **argv);    /* bench_serve.c */
int bench_world(int argc, char **argv);    /* bench_world.c; world_eval there is `ds4 world eval` */
int bench_quant(int argc, char **argv);    /* bench_quant.c */
int world_eval(int argc, char **argv);
/* The dense 17.3M model of SPEC §4 (V 4096, D 384, L 8, FFN 1024, 6 heads). */
void bench_preset_17m(ds4_config *c);

/* Decode benchmarks' bandwidth probe (bench_bw.c): a buffer of `bytes`
 * (rounded up to whole pages) read in full by one pass on all OpenMP threads,
 * so it sits in the same cache level as the weights a token reads. */
typedef struct { float *buf; size_t n; volatile float sink; } bench_bw;
int bench_bw_init(bench_bw *p, size_t bytes);
double bench_bw_pass(bench_bw *p);             /* seconds for one pass */
void bench_bw_free(bench_bw *p);
long bench_llc_bytes(void);                    /* last-level cache bytes (0 if unknown) */
double bench_median(const double *v, int n);
double bench_min(const double *v, int n);

#endif
