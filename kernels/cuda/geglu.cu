/* geglu.cu - the MLP's GeGLU to bf16 (k_geglu) or to e4m3 (k_geglu_fp8): elementwise, memory-bound:
 * reads T*2n bf16, writes T*n. */
#include "geglu.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"
#include "quant_fp8_act.cuh"

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

/* ---- GeGLU -> e4m3 (FP8 weights) ---- */

template <bool DYN>
__global__ void geglu_fp8_kernel(const bf16 *__restrict__ gu, int64_t n, int64_t total8,
                                 const float *__restrict__ scale, float *__restrict__ amax, bf16 *__restrict__ tmp,
                                 uint8_t *__restrict__ q)
{
    __shared__ float red[32];
    int64_t n8 = n / 8;
    float inv = DYN ? 0.0f : 1.0f / *scale;
    float m = 0.0f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total8; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / n8, c = i % n8;
        const uint4 *row = reinterpret_cast<const uint4 *>(gu + t * 2 * n);
        float g[8], u[8], o[8];
        bf16x8_to_f32(row[c], g);
        bf16x8_to_f32(row[n8 + c], u);
#pragma unroll
        for (int j = 0; j < 8; j++)
            o[j] = round_bf16(round_bf16(gelu_tanh(g[j])) * u[j]);
        if (DYN) {
            reinterpret_cast<uint4 *>(tmp + t * n)[c] = f32_to_bf16x8(o);
            m = fmaxf(m, amax8(o));
        } else {
            reinterpret_cast<uint2 *>(q + t * n)[c] = f32x8_to_fp8(o, inv);
        }
    }
    if (DYN) {
        m = block_max(m, red);
        if (threadIdx.x == 0)
            atomic_max_pos(amax, m);
    }
}

extern "C" gm_status k_geglu_fp8(const void *gu, int64_t T, int64_t n, const k_fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(fp8q_act_args(a, "k_geglu_fp8"));
    if (n % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_geglu_fp8: width %lld is not a multiple of 8", (long long)n);
    if (a->amax && !a->tmp)
        return gm_fail(GM_ERR_INVALID_ARG, "k_geglu_fp8: dynamic scale needs a bf16 tmp buffer");
    int64_t total8 = T * (n / 8);
    if (total8 <= 0)
        return GM_OK;
    unsigned blocks = fp8q_grid_for(total8);
    if (a->amax && T <= SMALL_DYN_ROWS) {
        small_dyn_kernel<3><<<1, Q_THREADS, 0, s>>>((bf16 *)gu, 2 * n, NULL, NULL, n, 0.0f, T, a->scale,
                                                   (bf16 *)a->tmp, (uint8_t *)q);
        GM_LAUNCH_CHECK();
        return GM_OK;
    }
    if (a->amax) {
        GM_CUDA_CHECK(cudaMemsetAsync(a->amax, 0, sizeof(float), s));
        geglu_fp8_kernel<true><<<blocks, Q_THREADS, 0, s>>>((const bf16 *)gu, n, total8, a->scale, a->amax,
                                                           (bf16 *)a->tmp, (uint8_t *)q);
        GM_LAUNCH_CHECK();
        return fp8q_dyn_finish(a, T, n, q, s);
    }
    geglu_fp8_kernel<false><<<blocks, Q_THREADS, 0, s>>>((const bf16 *)gu, n, total8, a->scale, NULL, NULL,
                                                        (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}
