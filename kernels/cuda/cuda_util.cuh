/* cuda_util.cuh - device helpers shared by the kernels (CUDA C++ only, not a launcher API). */
#ifndef GM_CUDA_UTIL_CUH
#define GM_CUDA_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

/* 8 bf16 (16 bytes) -> 8 floats. */
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &v, float f[8])
{
    const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(p[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

/* 8 floats -> 8 bf16 (round to nearest even), packed in 16 bytes. */
__device__ __forceinline__ uint4 f32_to_bf16x8(const float f[8])
{
    uint4 v;
    __nv_bfloat162 *p = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++)
        p[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

/* Round to bf16 and back (what storing an activation in bf16 does). */
__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the result.
 * red: __shared__ float[32]. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

/* tanh(x) as 1 - 2 / (1 + 2^(2 x log2 e)) on ex2.approx and a fast reciprocal: absolute error below about
 * 5e-7 everywhere (tanh.approx.f32's relative 2^-11 would move a soft-capped score of 50 by 0.02). x is
 * clamped to +-15, where tanh is 1 to float precision. The attention soft-cap (Gemma 2). */
__device__ __forceinline__ float tanh_fast(float x)
{
    float e, t = fminf(fmaxf(x, -15.0f), 15.0f) * 2.8853900817779268f; /* 2 log2(e) */
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(t));
    return 1.0f - __fdividef(2.0f, 1.0f + e);
}

static inline unsigned gm_div_up(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

#endif
