/* gemm_fp8.cuh - y = (x_scale * w_scale) * xq . Wq^T with e4m3 operands on Hopper's FP8 tensor
 * cores through cuBLASLt (TN, float32 accumulation, bf16 output), per-tensor scales read from
 * device memory (so one captured CUDA graph serves static and dynamic activation scales).
 *
 * Row-major everywhere: xq [T, K] e4m3, Wq [N, K] e4m3 (nn.Linear's [out, in]), y [T, N] bf16 or f32
 * (f32: the tensor-parallel partial sums that are all-reduced in f32).
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

/* Products with T <= max_rows (at most 8) take the FP8 GEMV kernel when K % 64 == 0 and
 * N % 16 == 0 (0 = always cuBLASLt). Default 4. */
void gemm_fp8_ctx_set_gemv_rows(gemm_fp8_ctx *g, int32_t max_rows);

/* Algorithms chosen so far (one per T bucket, shape, strides and pointer alignment). */
int32_t gemm_fp8_ctx_cached(const gemm_fp8_ctx *g);

/* y[T, N] = (*x_scale * *w_scale) * sum_k xq[t, k] * Wq[n, k], float32 accumulation, stored as bf16
 * (y_f32 = 0) or f32 (y_f32 = 1). xq e4m3 (row stride ldx); Wq e4m3 (row stride ldw); y row stride ldy;
 * x_scale, w_scale [1] f32 device. K, ldx, ldw % 16 == 0; N, ldy % 8 == 0; pointers 16-byte
 * aligned (256-byte aligned ones get the widest choice of algorithms). The algorithm is chosen
 * by cuBLASLt's heuristic once per (T bucket: T <= 16 exactly, larger T by the next power of two,
 * N, K, strides, alignment); run every shape once before capturing a graph. */
gm_status gemm_fp8(gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                   const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                   int64_t ldy, cudaStream_t s);

/* The two paths on their own (benchmarks and tests); same arguments as gemm_fp8.
 * gemv_fp8: T <= 8, K % 64 == 0, N % 16 == 0; mma.sync m16n8k32 e4m3 (float32 accumulation),
 * one CTA per 16 output columns, K split over its 8 warps: weight-read bound. */
gm_status gemm_fp8_lt(gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                      const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                      int64_t ldy, cudaStream_t s);
gm_status gemv_fp8(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wq,
                   int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
