/* geglu.cu - elementwise, memory-bound: reads T*2n bf16, writes T*n. */
#include "geglu.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

__device__ __forceinline__ float gelu_tanh(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__global__ void geglu_kernel(const bf16 *__restrict__ gu, int64_t n, int64_t total8, bf16 *__restrict__ out)
{
    pdl_wait();
    int64_t n8 = n / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total8;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / n8, c = i % n8;
        const uint4 *row = reinterpret_cast<const uint4 *>(gu + t * 2 * n);
        float g[8], u[8], o[8];
        bf16x8_to_f32(row[c], g);
        bf16x8_to_f32(row[n8 + c], u);
#pragma unroll
        for (int j = 0; j < 8; j++)
            o[j] = round_bf16(gelu_tanh(g[j])) * u[j];
        reinterpret_cast<uint4 *>(out + t * n)[c] = f32_to_bf16x8(o);
    }
}

extern "C" gm_status k_geglu(const void *gu, int64_t T, int64_t n, void *out, cudaStream_t s)
{
    if (n % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_geglu: width %lld is not a multiple of 8", (long long)n);
    int64_t total8 = T * (n / 8);
    if (total8 <= 0)
        return GM_OK;
    int64_t blocks = (total8 + 255) / 256;
    if (blocks > 132 * 16)
        blocks = 132 * 16;
    GM_CUDA_CHECK(gm_launch(geglu_kernel, dim3((unsigned)blocks), dim3(256), 0, s, (const bf16 *)gu, n, total8,
                            (bf16 *)out));
    return GM_OK;
}
