/* norm.cuh - Gemma RMSNorm, alone and fused with the residual add before it (and, for Gemma 2/3's sandwich,
 * with the norm of the delta before that add); bf16 out, or e4m3 out as the next product's FP8 input
 * (k_rmsnorm_fp8, k_add_rmsnorm_fp8, k_norm_add_rmsnorm_fp8). CPU twin: kernels/cpu/norm.h (then
 * kernels/cpu/quant_fp8.h for the e4m3 codes). */
#ifndef GM_K_NORM_CUH
#define GM_K_NORM_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"
#include "quant_fp8.cuh"

#ifdef __cplusplus
extern "C" {
#endif

/* out = bf16(x * rsqrt(mean(x^2) + eps) * w1), float32 inside, as HF's GemmaRMSNorm.
 * x [n, dim] bf16 (row stride ldx); w1 [dim] f32 holding (1 + weight); out [n, dim] bf16 (row stride ldo).
 * dim % 8 == 0, dim <= 8192. */
gm_status k_rmsnorm(const void *x, int64_t ldx, const float *w1, int64_t n, int64_t dim, float eps, void *out,
                    int64_t ldo, cudaStream_t s);

/* The residual add then the next norm, one pass:
 *   h = bf16(h + delta);  out = rmsnorm(h) as above.
 * h [n, dim] bf16 (in/out, dense); delta [n, dim] bf16 (delta_f32 = 0) or f32 (delta_f32 = 1, the
 * tensor-parallel all-reduce result); out [n, dim] bf16 (dense). */
gm_status k_add_rmsnorm(void *h, const void *delta, int delta_f32, const float *w1, int64_t n, int64_t dim, float eps,
                        void *out, cudaStream_t s);

/* Gemma 2/3's sandwich between two sub-blocks, one pass:
 *   d = bf16(rmsnorm(delta) * dw1);  h = bf16(h + d);  out = rmsnorm(h) * w1 as above.
 * dw1 [dim] f32 (1 + the post-attention or post-feed-forward weight); the rest as k_add_rmsnorm. */
gm_status k_norm_add_rmsnorm(void *h, const void *delta, int delta_f32, const float *dw1, const float *w1, int64_t n,
                             int64_t dim, float eps, void *out, cudaStream_t s);

/* q = e4m3(bf16(rmsnorm(x)) / scale): k_rmsnorm's math (x * rsqrt(mean(x^2) + eps) * w1, float32)
 * with the quantization fused. x [n, dim] bf16 (row stride ldx); w1 [dim] f32 (1 + weight);
 * q [n, dim] e4m3 (dense). dim % 8 == 0, dim <= 8192. */
gm_status k_rmsnorm_fp8(const void *x, int64_t ldx, const float *w1, int64_t n, int64_t dim, float eps,
                        const k_fp8_act *a, void *q, cudaStream_t s);

/* As k_add_rmsnorm (h = bf16(h + delta) written back, delta bf16 or f32 when delta_f32), then the
 * norm quantized as k_rmsnorm_fp8.   h [n, dim] bf16 dense; q [n, dim] e4m3 dense. */
gm_status k_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *w1, int64_t n, int64_t dim,
                            float eps, const k_fp8_act *a, void *q, cudaStream_t s);

/* k_norm_add_rmsnorm with the result quantized as k_rmsnorm_fp8.   h [n, dim] bf16 dense; q [n, dim] e4m3. */
gm_status k_norm_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *dw1, const float *w1,
                                 int64_t n, int64_t dim, float eps, const k_fp8_act *a, void *q, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
