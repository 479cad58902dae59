/* bench_check.h - the GPU benchmarks' check macros: a failed CUDA call or gm_status ends the
 * benchmark with the statement, the reason and the line (benchmarks have no cleanup to do).
 * Define BENCH_NAME ("xqa_bench", ...) before including. Also: a median event timer and the copy rate. */
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

/* The median of five timings (sorts t). */
static inline double bench_median5(double t[5])
{
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (t[j] < t[i]) {
                double x = t[i];
                t[i] = t[j];
                t[j] = x;
            }
    return t[2];
}

/* Device-to-device copy rate in GB/s, read + write bytes (2 * bytes per copy), of five back-to-back
 * cudaMemcpyAsync of `bytes` after one warm-up copy: the bandwidth ceiling the benchmarks print. */
static inline double bench_copy_gbs(size_t bytes)
{
    void *a, *b;
    CU(cudaMalloc(&a, bytes));
    CU(cudaMalloc(&b, bytes));
    CU(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CU(cudaEventRecord(e0, 0));
    for (int i = 0; i < 5; i++)
        CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
    CU(cudaEventRecord(e1, 0));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    CU(cudaEventDestroy(e0));
    CU(cudaEventDestroy(e1));
    CU(cudaFree(a));
    CU(cudaFree(b));
    return 2.0 * (double)bytes * 5 / (ms * 1e-3) / 1e9;
}

/* Median over 5 groups of the mean microseconds of f(ctx, i) for i = 0..reps-1, timed with events
 * on the default stream after 3 warm-up calls. */
static inline double bench_time_us(void (*f)(void *ctx, int rep), void *ctx, int reps)
{
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++)
        f(ctx, i);
    CU(cudaDeviceSynchronize());
    double t[5];
    for (int g = 0; g < 5; g++) {
        CU(cudaEventRecord(a, 0));
        for (int i = 0; i < reps; i++)
            f(ctx, i);
        CU(cudaEventRecord(b, 0));
        CU(cudaEventSynchronize(b));
        float ms;
        CU(cudaEventElapsedTime(&ms, a, b));
        t[g] = ms * 1000.0 / reps;
    }
    CU(cudaEventDestroy(a));
    CU(cudaEventDestroy(b));
    return bench_median5(t);
}

#endif
