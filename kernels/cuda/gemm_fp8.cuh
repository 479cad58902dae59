/* gemm_fp8.cuh - y = (x_scale * w_scale) * xq . Wq^T with e4m3 operands on Hopper's FP8 tensor
 * cores through cuBLASLt (TN, float32 accumulation, bf16 output), per-tensor scales read from
 * device memory (so one captured CUDA graph serves static and dynamic activation scales).
 *
 * Row-major everywhere: xq [T, K] e4m3, Wq [N, K] e4m3 (nn.Linear's [out, in]), y [T, N] bf16.
 * cuBLASLt mapping (FACTS.md section 2): A = Wq (transa = T, lda = ldw), B = xq (ldb = ldx),
 * D = y column-major [N, T] (ldd = ldy), m = N, n = T, k = K; A scale = w_scale, B scale = x_scale.
 * The CPU twin is cpu_fp8_matmul_q (kernels/cpu/cpu_fp8.h). */
#ifndef GM_K_GEMM_FP8_CUH
#define GM_K_GEMM_FP8_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gemm_fp8_ctx gemm_fp8_ctx;

/* A cuBLASLt handle, its workspace (workspace_bytes, 0 = 32 MiB, allocated once here so that
 * calls can be captured in CUDA graphs) and the algorithm cache. Caller owns *out. */
gm_status gemm_fp8_ctx_new(size_t workspace_bytes, gemm_fp8_ctx **out);
void gemm_fp8_ctx_destroy(gemm_fp8_ctx **g);

/* CUBLASLT_MATMUL_DESC_FAST_ACCUM: 1 = no periodic promotion of the FP8 partial sums (faster,
 * less accurate). Default 0. Clears the algorithm cache. */
void gemm_fp8_ctx_set_fast_accum(gemm_fp8_ctx *g, int on);

/* Algorithms chosen so far (one per T bucket, shape, strides and pointer alignment). */
int32_t gemm_fp8_ctx_cached(const gemm_fp8_ctx *g);

/* y[T, N] = bf16((*x_scale * *w_scale) * sum_k xq[t, k] * Wq[n, k]), float32 accumulation.
 * xq e4m3 (row stride ldx); Wq e4m3 (row stride ldw); y bf16 (row stride ldy);
 * x_scale, w_scale [1] f32 device. K, ldx, ldw % 16 == 0; N, ldy % 8 == 0; pointers 16-byte
 * aligned (256-byte aligned ones get the widest choice of algorithms). The algorithm is chosen
 * by cuBLASLt's heuristic once per (T bucket: T <= 16 exactly, larger T by the next power of two,
 * N, K, strides, alignment); run every shape once before capturing a graph. */
gm_status gemm_fp8(gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                   const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int64_t ldy,
                   cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
