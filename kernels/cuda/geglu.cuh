/* geglu.cuh - gelu_tanh(gate) * up of Gemma's MLP: bf16 out (k_geglu) or e4m3 out under an FP8
 * activation scale (k_geglu_fp8), and the device gelu_tanh that every GeGLU of kernels/cuda computes,
 * these two and the GeGLU epilogues of the bf16 GEMV (gemm.cu, k_gemm_bf16_geglu) and the FP8 GEMV v2
 * (gemm_fp8_gemv2.cu, k_gemv_fp8_v2_geglu*). CPU twin: kernels/cpu/geglu.h. */
#ifndef GM_K_GEGLU_CUH
#define GM_K_GEGLU_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"
#include "quant_fp8.cuh"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, i] = bf16(bf16(gelu_tanh(gate[t, i])) * up[t, i]), rounding as HF's bf16 ops.
 * gu [T, 2n] bf16: gate at columns [0, n), up at [n, 2n) (the fused gate/up projection);
 * out [T, n] bf16. n % 8 == 0. */
gm_status k_geglu(const void *gu, int64_t T, int64_t n, void *out, cudaStream_t s);

/* q[t, i] = e4m3(bf16(bf16(gelu_tanh(gate)) * up) / scale), k_geglu's math with the quantization
 * fused (k_fp8_act: static or dynamic scale, quant_fp8.cuh).   gu [T, 2n] bf16 (gate | up); q [T, n]
 * e4m3. n % 8 == 0. */
gm_status k_geglu_fp8(const void *gu, int64_t T, int64_t n, const k_fp8_act *a, void *q, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/* tanh-approximation GELU in float32 (cpu_gelu_tanh's expression). */
__device__ __forceinline__ float gelu_tanh(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
#endif
#endif
