/* gemm.cuh - y = x . W^T in bf16 on tensor cores through cuBLASLt, plus an own GEMV
 * for the few-row products of batch-1..4 decode (weight-read bound).
 *
 * Row-major everywhere: x [T, K], W [N, K] (nn.Linear's [out, in]), y [T, N]. */
#ifndef GM_K_GEMM_CUH
#define GM_K_GEMM_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct k_gemm_ctx k_gemm_ctx;

/* A cuBLASLt handle, its workspace (workspace_bytes, 0 = 32 MiB; allocated here, once, so
 * that calls can be captured in CUDA graphs) and the algorithm cache. Caller owns *out. */
gm_status k_gemm_ctx_new(size_t workspace_bytes, k_gemm_ctx **out);
void k_gemm_ctx_destroy(k_gemm_ctx **g);

/* Products with T <= max_rows go to the GEMV kernel (0 = always cuBLASLt; at most 8).
 * Default 2 (measured on an H200: the GEMV leads at 1-2 rows, cuBLASLt from 4). */
void k_gemm_ctx_set_gemv_rows(k_gemm_ctx *g, int32_t max_rows);

/* Algorithms chosen so far (one per shape and T bucket). */
int32_t k_gemm_ctx_cached(const k_gemm_ctx *g);

/* y[T, N] = x[T, K] . W[N, K]^T, float32 accumulation.
 * x bf16 (row stride ldx); W bf16 (row stride ldw); y bf16 (y_f32 = 0) or f32 (y_f32 = 1), row
 * stride ldy. K, strides % 8 == 0, pointers 16-byte aligned. The cuBLASLt algorithm is chosen
 * by its heuristic once per (T bucket, N, K, strides, output type): T <= 16 exactly, larger T
 * by the next power of two. */
gm_status k_gemm_bf16(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw,
                    int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);

/* The MLP's first half: act[T, ni] = bf16(bf16(gelu_tanh(bf16(x . Wg^T))) * bf16(x . Wu^T)), with
 * Wgu [2 ni, K] bf16 holding the gate rows then the up rows (row stride ldw). Few rows: one GEMV
 * with the GeGLU in its epilogue (gu untouched); else cuBLASLt into gu [T, 2 ni] bf16 (scratch),
 * then k_geglu. act dense [T, ni]. */
gm_status k_gemm_bf16_geglu(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *Wgu,
                          int64_t ldw, int64_t ni, void *gu, void *act, cudaStream_t s);

/* The two paths on their own (benchmarks and tests). */
gm_status k_gemm_bf16_lt(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw,
                       int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);
gm_status k_gemv_bf16(const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw, int64_t N, void *y,
                    int y_f32, int64_t ldy, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
