/* gemm_fp8.cuh - y = (x_scale * w_scale) * xq . Wq^T with e4m3 operands on Hopper's FP8 tensor
 * cores through cuBLASLt (TN, float32 accumulation, bf16 output), per-tensor scales read from
 * device memory (so one captured CUDA graph serves static and dynamic activation scales).
 *
 * Row-major everywhere: xq [T, K] e4m3, Wq [N, K] e4m3 (nn.Linear's [out, in]), y [T, N] bf16 or f32
 * (f32: the tensor-parallel partial sums that are all-reduced in f32).
 * cuBLASLt mapping (row-major y = x . W^T as column-major y^T = W . x^T): A = Wq (transa = T,
 * lda = ldw), B = xq (ldb = ldx), D = y column-major [N, T] (ldd = ldy), m = N, n = T, k = K; A scale =
 * w_scale, B scale = x_scale.
 * The GEMVs: v1 here (gemm_fp8.cu), v2 with its GeGLU epilogues in gemm_fp8_gemv2.cu.
 * The CPU twin is cpu_fp8_matmul_q (kernels/cpu/gemm_fp8.h). */
#ifndef GM_K_GEMM_FP8_CUH
#define GM_K_GEMM_FP8_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct k_gemm_fp8_ctx k_gemm_fp8_ctx;

/* A cuBLASLt handle, its workspace (workspace_bytes, 0 = 32 MiB, allocated once here so that
 * calls can be captured in CUDA graphs) and the algorithm cache. Caller owns *out. */
gm_status k_gemm_fp8_ctx_new(size_t workspace_bytes, k_gemm_fp8_ctx **out);
void k_gemm_fp8_ctx_destroy(k_gemm_fp8_ctx **g);

/* CUBLASLT_MATMUL_DESC_FAST_ACCUM: 1 = no periodic promotion of the FP8 partial sums (faster,
 * less accurate). Default 0. Clears the algorithm cache. */
void k_gemm_fp8_ctx_set_fast_accum(k_gemm_fp8_ctx *g, int on);

/* Products with T <= max_rows (at most 8) take the FP8 GEMV kernel when K % 64 == 0 and
 * N % 16 == 0 (0 = always cuBLASLt). Default 4. */
void k_gemm_fp8_ctx_set_gemv_rows(k_gemm_fp8_ctx *g, int32_t max_rows);

/* Algorithms chosen so far (one per T bucket, shape, strides and pointer alignment). */
int32_t k_gemm_fp8_ctx_cached(const k_gemm_fp8_ctx *g);
/* Keys whose algorithm was picked by timing cuBLASLt's top candidates on the first call (M >= 64,
 * outside stream capture, tuning on). */
int32_t k_gemm_fp8_ctx_tuned(const k_gemm_fp8_ctx *g);

/* How a key's algorithm is chosen on its first call (M >= 64, outside stream capture). */
enum {
    K_GEMM_TUNE_OFF = 0,  /* cuBLASLt's heuristic's first choice */
    K_GEMM_TUNE_TOP = 1,  /* the fastest of the heuristic's first 8, timed on the call's operands */
    K_GEMM_TUNE_WIDE = 2, /* M >= 1024: the fastest of its first 24 and the split-K variants (1, 2, 4 splits,
                           * deterministic reductions) of its first 4; below as K_GEMM_TUNE_TOP */
};
/* Set the tuning level (clamped to the three above) and forget the algorithms chosen so far. Default:
 * K_GEMM_TUNE_WIDE, or K_GEMM_TUNE_OFF under GM_GEMM_TUNE=0 (k_gemm_tune_default(), launch.cuh). */
void k_gemm_fp8_ctx_set_tune(k_gemm_fp8_ctx *g, int level);
/* Algorithms timed so far over all tuned keys (candidates plus split-K variants). */
int64_t k_gemm_fp8_ctx_candidates(const k_gemm_fp8_ctx *g);

/* y[T, N] = (*x_scale * *w_scale) * sum_k xq[t, k] * Wq[n, k], float32 accumulation, stored as bf16
 * (y_f32 = 0) or f32 (y_f32 = 1). xq e4m3 (row stride ldx); Wq e4m3 (row stride ldw); y row stride ldy;
 * x_scale, w_scale [1] f32 device. K, ldx, ldw % 16 == 0; N, ldy % 8 == 0; pointers 16-byte
 * aligned (256-byte aligned ones get the widest choice of algorithms). The algorithm is chosen
 * by cuBLASLt's heuristic once per (T bucket: T <= 16 exactly, larger T by the next power of two,
 * N, K, strides, alignment); run every shape once before capturing a graph. */
gm_status k_gemm_fp8(k_gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                   const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                   int64_t ldy, cudaStream_t s);

/* The two paths on their own (benchmarks and tests); same arguments as k_gemm_fp8.
 * k_gemv_fp8: T <= 8; weight-read bound. Takes k_gemv_fp8_v2 where k_gemv_fp8_v2_for says so, else
 * k_gemv_fp8_v1 (T <= 8, K % 64 == 0, N % 16 == 0).
 * k_gemv_fp8_v1: the first FP8 GEMV: mma.sync m16n8k32 e4m3 (float32 accumulation), one CTA per 16
 * output columns, K split over its 8 warps. */
gm_status k_gemm_fp8_lt(k_gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                      const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                      int64_t ldy, cudaStream_t s);
gm_status k_gemv_fp8(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wq,
                   int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);
gm_status k_gemv_fp8_v1(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wq,
                      int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);

/* 1 when k_gemv_fp8 and k_gemm_fp8's GEMV path take k_gemv_fp8_v2 for a [T, K] x [N, K]^T product: T <= 4
 * and K a power of two (v2 measured faster at K = 2048/4096/16384, slower at 3072/24576; bench/history/NOTES.md,
 * runs F-K) or a shape v1 does not take (K % 64, N % 16). The engine asks it before calling the fused
 * GeGLU entries below. */
int k_gemv_fp8_v2_for(int64_t T, int64_t K, int64_t N);

/* ---- FP8 GEMV v2 (gemm_fp8_gemv2.cu): T = 1..4 rows, built for batch-1..4 decode ----
 * y[t, n] = (*x_scale * *w_scale) * sum_k xq[t, k] * Wq[n, k]: the products exact (tensor cores,
 * mma.sync e4m3), float32 sums; the same semantics and arguments as k_gemv_fp8, with looser shape rules:
 * T 1..4 (T <= 0 does nothing); K, ldx, ldw % 16 == 0, ldx, ldw >= K; any N >= 1, ldy >= N; xq and Wq
 * 16-byte aligned, y aligned to its element. One launch, PDL (launch.cuh), no workspace, capturable.
 * Wq is read before the kernel's PDL wait (it overlaps the previous kernel): it must not be written by
 * the kernel launched just before this one on the stream (weights never are during a step).
 * x_scale and w_scale [1] f32 device, read after the wait. */
gm_status k_gemv_fp8_v2(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wq,
                      int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s);

/* The MLP's first half in one launch: with g, u = bf16((*x_scale * *w_scale) * sum_k xq[t, k] * Wgu[r, k])
 * for r = j (gate) and r = ni + j (up),
 *   act[t, j] = bf16(bf16(gelu_tanh(g)) * u)                       (k_gemv_fp8_v2_geglu; bf16 act)
 *   actq[t, j] = e4m3_satfinite(bf16(bf16(gelu_tanh(g)) * u) * (1.0f / *act_scale))
 *                                                                 (k_gemv_fp8_v2_geglu_fp8; e4m3 act)
 * i.e. k_gemm_fp8 into gu then k_geglu, or then k_geglu_fp8 with a static scale, bit for bit when the
 * sums agree. Wgu [2 ni, K] e4m3 (row stride ldw; gate rows, then up rows); act [T, ni] bf16 / actq
 * [T, ni] e4m3 (row stride ld_act); act_scale [1] f32 device (a static activation scale). Other rules
 * as k_gemv_fp8_v2 (any ni >= 1). */
gm_status k_gemv_fp8_v2_geglu(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wgu,
                            int64_t ldw, const float *w_scale, int64_t ni, void *act, int64_t ld_act, cudaStream_t s);
gm_status k_gemv_fp8_v2_geglu_fp8(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                                const void *Wgu, int64_t ldw, const float *w_scale, int64_t ni, const float *act_scale,
                                void *actq, int64_t ld_act, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
