/* gemm.h - y = x . W^T with dense weights (CPU twin of kernels/cuda/gemm.cu). The product the CPU
 * backend spends nearly all of its time in. */
#ifndef GM_CPU_GEMM_H
#define GM_CPU_GEMM_H

#include <stdint.h>

#include "../../common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y[t, j] = sum_k x[t, k] * W[j, k].   x [T, K] (row stride ldx); W [N, K] dt (row stride ldw
 * elements, so a column slice of a larger matrix works); y [T, N] (row stride ldy). Each output
 * is a float32 dot product whose order does not depend on T (batch invariance). Threads:
 * $GM_CPU_THREADS (read once), else the online CPUs, at most 32. */
void cpu_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                int64_t N, float *y, int64_t ldy);

/* As cpu_matmul, accumulating in double and writing double: the partial sums that the
 * tensor-parallel ranks all-reduce, so that tp=N rounds like tp=1. */
void cpu_matmul_f64(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                    int64_t N, double *y, int64_t ldy);

#ifdef __cplusplus
}
#endif
#endif
