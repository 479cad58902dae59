/* quant_fp8.cu - e4m3 quantization of weights (at load) and of activations (k_fp8_quantize: static or
 * dynamic per-tensor scale), and the dequantizer. The quantizers fused into RMSNorm and GeGLU are in
 * norm.cu and geglu.cu, the FP8 KV write in rope_kv.cu; the pieces they share in quant_fp8_act.cuh.
 * All memory-bound (bytes: bf16 in, one byte out per element); 16-byte loads, 8-byte stores. */
#include "quant_fp8.cuh"

#include "quant_fp8_act.cuh"

/* ---- generic: amax, scale, quantize of bf16 arrays ---- */

/* amax over rows x dim (row stride ld) bf16, folded into *amax (zeroed by the caller). */
__global__ void amax_kernel(const bf16 *__restrict__ x, int64_t ld, int64_t dim8, int64_t total8,
                            float *__restrict__ amax)
{
    __shared__ float red[32];
    float m = 0.0f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total8; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / dim8, c = i % dim8;
        float f[8];
        bf16x8_to_f32(*reinterpret_cast<const uint4 *>(x + r * ld + c * 8), f);
        m = fmaxf(m, amax8(f));
    }
    m = block_max(m, red);
    if (threadIdx.x == 0)
        atomic_max_pos(amax, m);
}

__global__ void scale_kernel(const float *__restrict__ amax, float *__restrict__ scale)
{
    *scale = fp8_scale_of(*amax);
}

/* q = e4m3(x * inv). FROM_AMAX: the scale is derived from *amax (block 0 also stores it to *scale);
 * otherwise read from *scale. */
template <bool FROM_AMAX>
__global__ void quant_kernel(const bf16 *__restrict__ x, int64_t ld, int64_t dim8, int64_t total8,
                             const float *__restrict__ amax, float *__restrict__ scale, uint8_t *__restrict__ q)
{
    float sc = FROM_AMAX ? fp8_scale_of(*amax) : *scale;
    if (FROM_AMAX && blockIdx.x == 0 && threadIdx.x == 0)
        *scale = sc;
    float inv = 1.0f / sc;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total8; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / dim8, c = i % dim8;
        float f[8];
        bf16x8_to_f32(*reinterpret_cast<const uint4 *>(x + r * ld + c * 8), f);
        *reinterpret_cast<uint2 *>(q + r * dim8 * 8 + c * 8) = f32x8_to_fp8(f, inv);
    }
}

/* Odd-length weights (n % 8 != 0) take this scalar path. */
__global__ void amax_scalar_kernel(const bf16 *__restrict__ x, int64_t n, float *__restrict__ amax)
{
    __shared__ float red[32];
    float m = 0.0f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(__bfloat162float(x[i])));
    m = block_max(m, red);
    if (threadIdx.x == 0)
        atomic_max_pos(amax, m);
}

__global__ void quant_scalar_kernel(const bf16 *__restrict__ x, int64_t n, const float *__restrict__ scale,
                                    uint8_t *__restrict__ q)
{
    float inv = 1.0f / *scale;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        q[i] = (uint8_t)__nv_cvt_float_to_fp8(__bfloat162float(x[i]) * inv, __NV_SATFINITE, __NV_E4M3);
}

static gm_status check_ptr16(const void *p, const char *what)
{
    if ((uintptr_t)p % 16)
        return gm_fail(GM_ERR_INVALID_ARG, "fp8: %s pointer %p is not 16-byte aligned", what, p);
    return GM_OK;
}

extern "C" gm_status k_fp8_quantize_weight(const void *w, int64_t n, float *scale, float *amax, void *q,
                                           cudaStream_t s)
{
    if (n <= 0)
        return gm_fail(GM_ERR_INVALID_ARG, "k_fp8_quantize_weight: %lld elements", (long long)n);
    GM_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), s));
    if (n % 8 == 0 && (uintptr_t)w % 16 == 0 && (uintptr_t)q % 8 == 0) {
        int64_t t8 = n / 8;
        amax_kernel<<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)w, n, t8, t8, amax);
        GM_LAUNCH_CHECK();
        quant_kernel<true><<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)w, n, t8, t8, amax, scale,
                                                                  (uint8_t *)q);
    } else {
        amax_scalar_kernel<<<fp8q_grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)w, n, amax);
        GM_LAUNCH_CHECK();
        scale_kernel<<<1, 1, 0, s>>>(amax, scale);
        GM_LAUNCH_CHECK();
        quant_scalar_kernel<<<fp8q_grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)w, n, scale, (uint8_t *)q);
    }
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_fp8_quantize_static(const void *x, int64_t n, const float *scale, void *q, cudaStream_t s)
{
    if (n <= 0)
        return GM_OK;
    if (n % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 8 == 0) {
        int64_t t8 = n / 8;
        quant_kernel<false><<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, n, t8, t8, NULL, (float *)scale,
                                                              (uint8_t *)q);
    } else {
        quant_scalar_kernel<<<fp8q_grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)x, n, scale, (uint8_t *)q);
    }
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_fp8_quantize(const void *x, int64_t ldx, int64_t rows, int64_t dim, const k_fp8_act *a, void *q,
                                    cudaStream_t s)
{
    GM_CHECK(fp8q_act_args(a, "k_fp8_quantize"));
    if (dim % 8 || ldx % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_fp8_quantize: dim %lld and row stride %lld must be multiples of 8",
                       (long long)dim, (long long)ldx);
    GM_CHECK(check_ptr16(x, "x"));
    if (rows <= 0)
        return GM_OK;
    int64_t d8 = dim / 8, t8 = rows * d8;
    if (a->amax && rows <= SMALL_DYN_ROWS) {
        small_dyn_kernel<4><<<1, Q_THREADS, 0, s>>>((bf16 *)x, ldx, NULL, NULL, dim, 0.0f, rows, a->scale, NULL,
                                                   (uint8_t *)q);
        GM_LAUNCH_CHECK();
        return GM_OK;
    }
    if (a->amax) {
        GM_CUDA_CHECK(cudaMemsetAsync(a->amax, 0, sizeof(float), s));
        amax_kernel<<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, a->amax);
        GM_LAUNCH_CHECK();
        quant_kernel<true><<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, a->amax, a->scale,
                                                             (uint8_t *)q);
    } else {
        quant_kernel<false><<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, NULL, a->scale,
                                                              (uint8_t *)q);
    }
    GM_LAUNCH_CHECK();
    return GM_OK;
}

gm_status fp8q_dyn_finish(const k_fp8_act *a, int64_t rows, int64_t dim, void *q, cudaStream_t s)
{
    int64_t d8 = dim / 8, t8 = rows * d8;
    quant_kernel<true><<<fp8q_grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)a->tmp, dim, d8, t8, a->amax, a->scale,
                                                         (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* ---- dequantize ---- */

__global__ void dequant_kernel(const uint8_t *__restrict__ q, int64_t n, const float *__restrict__ scale,
                               bf16 *__restrict__ out)
{
    float sc = *scale;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        __half_raw h = __nv_cvt_fp8_to_halfraw(q[i], __NV_E4M3);
        out[i] = __float2bfloat16_rn(__half2float(*reinterpret_cast<__half *>(&h)) * sc);
    }
}

extern "C" gm_status k_fp8_dequantize(const void *q, int64_t n, const float *scale, void *out, cudaStream_t s)
{
    if (n <= 0)
        return GM_OK;
    dequant_kernel<<<fp8q_grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const uint8_t *)q, n, scale, (bf16 *)out);
    GM_LAUNCH_CHECK();
    return GM_OK;
}
