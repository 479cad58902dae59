/* cuda_check.h - one family of check macros for CUDA, cuBLAS(Lt), NCCL and gm_status calls.
 *
 * Each failure is recorded with gm_fail(): the statement's text, the library's
 * message, file and line. Two forms:
 *   GM_CUDA_CHECK(stmt);             return the failure from the current function
 *   GM_CUDA_GOTO(stmt, st, fail);    set gm_status st and jump to the cleanup label
 * Same for GM_CUBLAS_*, GM_NCCL_* (include cublasLt.h / nccl.h first) and
 * GM_CHECK / GM_GOTO for calls that already return gm_status.
 * GM_LAUNCH_CHECK() checks the last kernel launch. Usable from C and C++. */
#ifndef GM_CUDA_CHECK_H
#define GM_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "../../common/status.h"

#define GM_CUDA_FAIL_(e_, stmt)                                                                                      \
    gm_fail(GM_ERR_CUDA, "%s: %s (%s:%d)", stmt, cudaGetErrorString(e_), __FILE__, __LINE__)

#define GM_CUDA_CHECK(stmt)                                                                                          \
    do {                                                                                                             \
        cudaError_t e_ = (stmt);                                                                                     \
        if (e_ != cudaSuccess)                                                                                       \
            return GM_CUDA_FAIL_(e_, #stmt);                                                                         \
    } while (0)

#define GM_CUDA_GOTO(stmt, st, label)                                                                                \
    do {                                                                                                             \
        cudaError_t e_ = (stmt);                                                                                     \
        if (e_ != cudaSuccess) {                                                                                     \
            (st) = GM_CUDA_FAIL_(e_, #stmt);                                                                         \
            goto label;                                                                                              \
        }                                                                                                            \
    } while (0)

/* After a kernel launch: launch-configuration errors (and earlier async errors). */
#define GM_LAUNCH_CHECK() GM_CUDA_CHECK(cudaGetLastError())

#define GM_CUBLAS_FAIL_(e_, stmt)                                                                                    \
    gm_fail(GM_ERR_CUBLAS, "%s: %s (%s:%d)", stmt, cublasGetStatusString(e_), __FILE__, __LINE__)

#define GM_CUBLAS_CHECK(stmt)                                                                                        \
    do {                                                                                                             \
        cublasStatus_t e_ = (stmt);                                                                                  \
        if (e_ != CUBLAS_STATUS_SUCCESS)                                                                             \
            return GM_CUBLAS_FAIL_(e_, #stmt);                                                                       \
    } while (0)

#define GM_CUBLAS_GOTO(stmt, st, label)                                                                              \
    do {                                                                                                             \
        cublasStatus_t e_ = (stmt);                                                                                  \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                                           \
            (st) = GM_CUBLAS_FAIL_(e_, #stmt);                                                                       \
            goto label;                                                                                              \
        }                                                                                                            \
    } while (0)

#define GM_NCCL_FAIL_(e_, stmt)                                                                                      \
    gm_fail(GM_ERR_NCCL, "%s: %s (%s:%d)", stmt, ncclGetErrorString(e_), __FILE__, __LINE__)

#define GM_NCCL_CHECK(stmt)                                                                                          \
    do {                                                                                                             \
        ncclResult_t e_ = (stmt);                                                                                    \
        if (e_ != ncclSuccess)                                                                                       \
            return GM_NCCL_FAIL_(e_, #stmt);                                                                         \
    } while (0)

#define GM_NCCL_GOTO(stmt, st, label)                                                                                \
    do {                                                                                                             \
        ncclResult_t e_ = (stmt);                                                                                    \
        if (e_ != ncclSuccess) {                                                                                     \
            (st) = GM_NCCL_FAIL_(e_, #stmt);                                                                         \
            goto label;                                                                                              \
        }                                                                                                            \
    } while (0)

/* For calls returning gm_status (their callee already recorded the detail). */
#define GM_CHECK(stmt)                                                                                               \
    do {                                                                                                             \
        gm_status s_ = (stmt);                                                                                       \
        if (s_ != GM_OK)                                                                                             \
            return s_;                                                                                               \
    } while (0)

#define GM_GOTO(stmt, st, label)                                                                                     \
    do {                                                                                                             \
        (st) = (stmt);                                                                                               \
        if ((st) != GM_OK)                                                                                           \
            goto label;                                                                                              \
    } while (0)

#endif
