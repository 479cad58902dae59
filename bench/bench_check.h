/* bench_check.h - the GPU benchmarks' check macros: a failed CUDA call or gm_status ends the
 * benchmark with the statement, the reason and the line (benchmarks have no cleanup to do).
 * Define BENCH_NAME ("xqa_bench", ...) before including. */
#ifndef GM_BENCH_CHECK_H
#define GM_BENCH_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "common/status.h"

#ifndef BENCH_NAME
#define BENCH_NAME "bench"
#endif

#define CU(x)                                                                                                        \
    do {                                                                                                             \
        cudaError_t e_ = (x);                                                                                        \
        if (e_ != cudaSuccess) {                                                                                     \
            fprintf(stderr, BENCH_NAME ": %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__);               \
            exit(1);                                                                                                 \
        }                                                                                                            \
    } while (0)

#define GOK(x)                                                                                                       \
    do {                                                                                                             \
        gm_status s_ = (x);                                                                                          \
        if (s_ != GM_OK) {                                                                                           \
            fprintf(stderr, BENCH_NAME ": %s: %s: %s\n", #x, gm_status_str(s_), gm_last_error());                   \
            exit(1);                                                                                                 \
        }                                                                                                            \
    } while (0)

#endif
