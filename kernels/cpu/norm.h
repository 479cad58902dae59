/* norm.h - Gemma's RMSNorm (CPU twin of kernels/cuda/norm.cu; the FP8 variants there quantize this
 * result with kernels/cpu/quant_fp8.h). */
#ifndef GM_CPU_NORM_H
#define GM_CPU_NORM_H

#include <stdint.h>

#include "../../common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Gemma RMSNorm: out = x * rsqrt(mean(x^2) + eps) * (1 + w).   x, out [n, dim] f32 (may alias); w [dim] dt */
void cpu_rmsnorm(const float *x, const void *w, gm_dtype wdt, int64_t n, int64_t dim, float eps, float *out);

/* Gemma 3's QK-norm, in place: each head vector of x [T, n_heads, head_dim] f32 gets the Gemma RMSNorm
 * x * rsqrt(mean(x^2) + eps) * (1 + w), w [head_dim] of dtype wdt shared by every head. */
void cpu_head_rmsnorm(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const void *w, gm_dtype wdt, float eps);

#ifdef __cplusplus
}
#endif
#endif
