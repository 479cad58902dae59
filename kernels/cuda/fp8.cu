/* fp8.cu - e4m3 quantization: weights, fused RMSNorm/GeGLU activations, the FP8 KV write.
 * All memory-bound (bytes: bf16 in, one byte out per element); 16-byte loads, 8-byte stores. */
#include "fp8.cuh"

#include <cuda_fp8.h>

#include "cuda_check.h"
#include "cuda_util.cuh"

#define Q_THREADS 256
#define NORM_CHUNKS 4 /* 16-byte chunks per thread: dim <= 256*4*8 = 8192 */
#define FP8_MIN_AMAX 1e-12f

__device__ __forceinline__ float fp8_scale_of(float amax) { return fmaxf(amax, FP8_MIN_AMAX) / 448.0f; }

/* amax >= 0, so its float bits order like ints. NaN never reaches here (fmaxf drops it). */
__device__ __forceinline__ void atomic_max_pos(float *a, float v)
{
    atomicMax(reinterpret_cast<int *>(a), __float_as_int(v));
}

__device__ __forceinline__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_max(t);
}

__device__ __forceinline__ float amax8(const float f[8])
{
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++)
        m = fmaxf(m, fabsf(f[j]));
    return m;
}

__device__ __forceinline__ void round8(float f[8])
{
#pragma unroll
    for (int j = 0; j < 8; j++)
        f[j] = round_bf16(f[j]);
}

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

static unsigned grid_for(int64_t total8)
{
    int64_t b = (total8 + Q_THREADS - 1) / Q_THREADS;
    if (b > 132 * 8)
        b = 132 * 8;
    return (unsigned)(b < 1 ? 1 : b);
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
        amax_kernel<<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)w, n, t8, t8, amax);
        GM_LAUNCH_CHECK();
        quant_kernel<true><<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)w, n, t8, t8, amax, scale, (uint8_t *)q);
    } else {
        amax_scalar_kernel<<<grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)w, n, amax);
        GM_LAUNCH_CHECK();
        scale_kernel<<<1, 1, 0, s>>>(amax, scale);
        GM_LAUNCH_CHECK();
        quant_scalar_kernel<<<grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)w, n, scale, (uint8_t *)q);
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
        quant_kernel<false><<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, n, t8, t8, NULL, (float *)scale,
                                                              (uint8_t *)q);
    } else {
        quant_scalar_kernel<<<grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const bf16 *)x, n, scale, (uint8_t *)q);
    }
    GM_LAUNCH_CHECK();
    return GM_OK;
}

static gm_status act_args(const fp8_act *a, const char *fn)
{
    if (!a || !a->scale)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: no activation scale pointer", fn);
    return GM_OK;
}

/* One-block dynamic quantization of a few rows (defined with the fused kernels below). */
#define SMALL_DYN_ROWS 8
template <int MODE>
__global__ void __launch_bounds__(Q_THREADS)
    small_dyn_kernel(bf16 *__restrict__ x, int64_t ldx, const void *__restrict__ delta, const float *__restrict__ w1,
                     int64_t dim, float eps, int64_t rows, float *__restrict__ scale, bf16 *__restrict__ tmp,
                     uint8_t *__restrict__ q);

extern "C" gm_status k_fp8_quantize(const void *x, int64_t ldx, int64_t rows, int64_t dim, const fp8_act *a, void *q,
                                    cudaStream_t s)
{
    GM_CHECK(act_args(a, "k_fp8_quantize"));
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
        amax_kernel<<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, a->amax);
        GM_LAUNCH_CHECK();
        quant_kernel<true><<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, a->amax, a->scale,
                                                             (uint8_t *)q);
    } else {
        quant_kernel<false><<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)x, ldx, d8, t8, NULL, a->scale,
                                                              (uint8_t *)q);
    }
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* ---- fused RMSNorm -> e4m3 ---- */

__device__ __forceinline__ float gelu_tanh_f(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}


__device__ __forceinline__ void load_delta(const bf16 *d, int64_t i8, float f[8])
{
    bf16x8_to_f32(reinterpret_cast<const uint4 *>(d)[i8], f);
}

__device__ __forceinline__ void load_delta(const float *d, int64_t i8, float f[8])
{
    const float4 *p = reinterpret_cast<const float4 *>(d) + 2 * i8;
    float4 a = p[0], b = p[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

/* One block per row (the row stays in registers). DYN: write bf16 values to tmp and fold the row's
 * amax into *amax; else quantize with *scale. ADD: h = bf16(h + delta) first, written back. */
template <bool ADD, bool DYN, typename DT>
__global__ void __launch_bounds__(Q_THREADS)
    rmsnorm_fp8_kernel(bf16 *__restrict__ x, int64_t ldx, const DT *__restrict__ delta, const float *__restrict__ w1,
                       int64_t dim, float eps, const float *__restrict__ scale, float *__restrict__ amax,
                       bf16 *__restrict__ tmp, uint8_t *__restrict__ q)
{
    __shared__ float red[32];
    int64_t row = blockIdx.x;
    int64_t n8 = dim / 8;
    uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
    float v[NORM_CHUNKS][8];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
        if (i < n8) {
            bf16x8_to_f32(xr[i], v[c]);
            if (ADD) {
                float d[8];
                load_delta(delta + row * dim, i, d);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    v[c][j] = round_bf16(v[c][j] + d[j]);
                xr[i] = f32_to_bf16x8(v[c]);
            }
#pragma unroll
            for (int j = 0; j < 8; j++)
                ss += v[c][j] * v[c][j];
        }
    }
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / (float)dim + eps);
    float inv = DYN ? 0.0f : 1.0f / *scale;
    float m = 0.0f;
    const float4 *w4 = reinterpret_cast<const float4 *>(w1);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
        if (i < n8) {
            float4 wa = w4[2 * i], wb = w4[2 * i + 1];
            float w[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
            float f[8];
#pragma unroll
            for (int j = 0; j < 8; j++)
                f[j] = v[c][j] * r * w[j];
            round8(f);
            if (DYN) {
                reinterpret_cast<uint4 *>(tmp + row * dim)[i] = f32_to_bf16x8(f);
                m = fmaxf(m, amax8(f));
            } else {
                reinterpret_cast<uint2 *>(q + row * dim)[i] = f32x8_to_fp8(f, inv);
            }
        }
    }
    if (DYN) {
        m = block_max(m, red);
        if (threadIdx.x == 0)
            atomic_max_pos(amax, m);
    }
}

static gm_status norm_args(int64_t dim, const fp8_act *a, const char *fn)
{
    GM_CHECK(act_args(a, fn));
    if (dim % 8 || dim > (int64_t)Q_THREADS * NORM_CHUNKS * 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: dim %lld must be a multiple of 8 and at most %d", fn,
                       (long long)dim, Q_THREADS * NORM_CHUNKS * 8);
    if (a->amax && !a->tmp)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: dynamic scale needs a bf16 tmp buffer", fn);
    return GM_OK;
}

/* Dynamic scale for a few rows (decode batches): ONE block does what the memset + fused kernel +
 * quant_kernel sequence does (no amax atomics, no memset: 3 launches become 1, ~5 us per quantization
 * point at batch 1). Same per-row arithmetic as rmsnorm_fp8_kernel / geglu_fp8_kernel (same thread
 * mapping and reductions), so the codes are the same. MODE 0: rmsnorm; 1: add (bf16 delta) + rmsnorm;
 * 2: add (f32 delta) + rmsnorm; 3: GeGLU of gu [rows, 2 dim]; 4: plain quantization of x (row stride
 * ldx; tmp unused). tmp [rows, dim] bf16 scratch. */
template <int MODE>
__global__ void __launch_bounds__(Q_THREADS)
    small_dyn_kernel(bf16 *__restrict__ x, int64_t ldx, const void *__restrict__ delta, const float *__restrict__ w1,
                     int64_t dim, float eps, int64_t rows, float *__restrict__ scale, bf16 *__restrict__ tmp,
                     uint8_t *__restrict__ q)
{
    __shared__ float red[32];
    int64_t n8 = dim / 8;
    float m = 0.0f;
    for (int64_t row = 0; row < rows; row++) {
        if (MODE == 4) {
            const uint4 *xr4 = reinterpret_cast<const uint4 *>(x + row * ldx);
            for (int64_t c = threadIdx.x; c < n8; c += Q_THREADS) {
                float f[8];
                bf16x8_to_f32(xr4[c], f);
                m = fmaxf(m, amax8(f));
            }
            continue;
        }
        if (MODE == 3) {
            const uint4 *gr = reinterpret_cast<const uint4 *>(x + row * 2 * dim);
            for (int64_t c = threadIdx.x; c < n8; c += Q_THREADS) {
                float g[8], u[8], o[8];
                bf16x8_to_f32(gr[c], g);
                bf16x8_to_f32(gr[n8 + c], u);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    o[j] = round_bf16(round_bf16(gelu_tanh_f(g[j])) * u[j]);
                reinterpret_cast<uint4 *>(tmp + row * dim)[c] = f32_to_bf16x8(o);
                m = fmaxf(m, amax8(o));
            }
            continue;
        }
        uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
        float v[NORM_CHUNKS][8];
        float ss = 0.0f;
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
            if (i < n8) {
                bf16x8_to_f32(xr[i], v[c]);
                if (MODE != 0) {
                    float d[8];
                    if (MODE == 1)
                        load_delta(reinterpret_cast<const bf16 *>(delta) + row * dim, i, d);
                    else
                        load_delta(reinterpret_cast<const float *>(delta) + row * dim, i, d);
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        v[c][j] = round_bf16(v[c][j] + d[j]);
                    xr[i] = f32_to_bf16x8(v[c]);
                }
#pragma unroll
                for (int j = 0; j < 8; j++)
                    ss += v[c][j] * v[c][j];
            }
        }
        ss = block_sum(ss, red);
        float r = rsqrtf(ss / (float)dim + eps);
        const float4 *w4 = reinterpret_cast<const float4 *>(w1);
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
            if (i < n8) {
                float4 wa = w4[2 * i], wb = w4[2 * i + 1];
                float w[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
                float f[8];
#pragma unroll
                for (int j = 0; j < 8; j++)
                    f[j] = v[c][j] * r * w[j];
                round8(f);
                reinterpret_cast<uint4 *>(tmp + row * dim)[i] = f32_to_bf16x8(f);
                m = fmaxf(m, amax8(f));
            }
        }
    }
    m = block_max(m, red); /* its barriers also publish tmp to the whole block */
    float sc = fp8_scale_of(m);
    if (threadIdx.x == 0)
        *scale = sc;
    float inv = 1.0f / sc;
    for (int64_t i = threadIdx.x; i < rows * n8; i += Q_THREADS) {
        float f[8];
        if (MODE == 4)
            bf16x8_to_f32(reinterpret_cast<const uint4 *>(x + (i / n8) * ldx)[i % n8], f);
        else
            bf16x8_to_f32(reinterpret_cast<const uint4 *>(tmp)[i], f);
        reinterpret_cast<uint2 *>(q)[i] = f32x8_to_fp8(f, inv);
    }
}

/* Second half of the dynamic path: scale from amax, quantize tmp [rows, dim] (dense). */
static gm_status dyn_finish(const fp8_act *a, int64_t rows, int64_t dim, void *q, cudaStream_t s)
{
    int64_t d8 = dim / 8, t8 = rows * d8;
    quant_kernel<true><<<grid_for(t8), Q_THREADS, 0, s>>>((const bf16 *)a->tmp, dim, d8, t8, a->amax, a->scale,
                                                         (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_rmsnorm_fp8(const void *x, int64_t ldx, const float *w1, int64_t n, int64_t dim, float eps,
                                   const fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(norm_args(dim, a, "k_rmsnorm_fp8"));
    if (ldx % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_rmsnorm_fp8: row stride %lld not a multiple of 8", (long long)ldx);
    if (n <= 0)
        return GM_OK;
    if (a->amax && n <= SMALL_DYN_ROWS) {
        small_dyn_kernel<0><<<1, Q_THREADS, 0, s>>>((bf16 *)x, ldx, NULL, w1, dim, eps, n, a->scale, (bf16 *)a->tmp,
                                                   (uint8_t *)q);
        GM_LAUNCH_CHECK();
        return GM_OK;
    }
    if (a->amax) {
        GM_CUDA_CHECK(cudaMemsetAsync(a->amax, 0, sizeof(float), s));
        rmsnorm_fp8_kernel<false, true, bf16><<<(unsigned)n, Q_THREADS, 0, s>>>(
            (bf16 *)x, ldx, (const bf16 *)NULL, w1, dim, eps, a->scale, a->amax, (bf16 *)a->tmp, (uint8_t *)q);
        GM_LAUNCH_CHECK();
        return dyn_finish(a, n, dim, q, s);
    }
    rmsnorm_fp8_kernel<false, false, bf16><<<(unsigned)n, Q_THREADS, 0, s>>>(
        (bf16 *)x, ldx, (const bf16 *)NULL, w1, dim, eps, a->scale, NULL, NULL, (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *w1, int64_t n,
                                       int64_t dim, float eps, const fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(norm_args(dim, a, "k_add_rmsnorm_fp8"));
    if (n <= 0)
        return GM_OK;
    bf16 *hb = (bf16 *)h;
    uint8_t *qb = (uint8_t *)q;
    if (a->amax && n <= SMALL_DYN_ROWS) {
        if (delta_f32)
            small_dyn_kernel<2><<<1, Q_THREADS, 0, s>>>(hb, dim, delta, w1, dim, eps, n, a->scale, (bf16 *)a->tmp, qb);
        else
            small_dyn_kernel<1><<<1, Q_THREADS, 0, s>>>(hb, dim, delta, w1, dim, eps, n, a->scale, (bf16 *)a->tmp, qb);
        GM_LAUNCH_CHECK();
        return GM_OK;
    }
    if (a->amax) {
        GM_CUDA_CHECK(cudaMemsetAsync(a->amax, 0, sizeof(float), s));
        bf16 *tb = (bf16 *)a->tmp;
        if (delta_f32)
            rmsnorm_fp8_kernel<true, true, float><<<(unsigned)n, Q_THREADS, 0, s>>>(
                hb, dim, (const float *)delta, w1, dim, eps, a->scale, a->amax, tb, qb);
        else
            rmsnorm_fp8_kernel<true, true, bf16><<<(unsigned)n, Q_THREADS, 0, s>>>(
                hb, dim, (const bf16 *)delta, w1, dim, eps, a->scale, a->amax, tb, qb);
        GM_LAUNCH_CHECK();
        return dyn_finish(a, n, dim, q, s);
    }
    if (delta_f32)
        rmsnorm_fp8_kernel<true, false, float><<<(unsigned)n, Q_THREADS, 0, s>>>(
            hb, dim, (const float *)delta, w1, dim, eps, a->scale, NULL, NULL, qb);
    else
        rmsnorm_fp8_kernel<true, false, bf16><<<(unsigned)n, Q_THREADS, 0, s>>>(
            hb, dim, (const bf16 *)delta, w1, dim, eps, a->scale, NULL, NULL, qb);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* ---- fused GeGLU -> e4m3 ---- */


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
            o[j] = round_bf16(round_bf16(gelu_tanh_f(g[j])) * u[j]);
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

extern "C" gm_status k_geglu_fp8(const void *gu, int64_t T, int64_t n, const fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(act_args(a, "k_geglu_fp8"));
    if (n % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_geglu_fp8: width %lld is not a multiple of 8", (long long)n);
    if (a->amax && !a->tmp)
        return gm_fail(GM_ERR_INVALID_ARG, "k_geglu_fp8: dynamic scale needs a bf16 tmp buffer");
    int64_t total8 = T * (n / 8);
    if (total8 <= 0)
        return GM_OK;
    unsigned blocks = grid_for(total8);
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
        return dyn_finish(a, T, n, q, s);
    }
    geglu_fp8_kernel<false><<<blocks, Q_THREADS, 0, s>>>((const bf16 *)gu, n, total8, a->scale, NULL, NULL,
                                                        (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* ---- FP8 KV write ---- */

/* One block per token; 8 elements per thread-step over the token's nkv K heads then V heads. */
__global__ void kv_write_fp8_kernel(const bf16 *__restrict__ qkv, int64_t ld, int32_t nh, int32_t nkv, int32_t hd,
                                    const int32_t *__restrict__ slot, float inv, uint8_t *__restrict__ kp,
                                    uint8_t *__restrict__ vp, int32_t bs)
{
    int64_t t = blockIdx.x;
    int32_t sl = slot[t];
    if (sl < 0)
        return;
    int64_t blk = sl / bs, off = sl % bs;
    const bf16 *src = qkv + t * ld + (int64_t)nh * hd; /* k heads, then v heads */
    int c8 = hd / 8, n = 2 * nkv * c8;
    for (int w = threadIdx.x; w < n; w += blockDim.x) {
        int kv = w / (nkv * c8), g = (w / c8) % nkv, c = (w % c8) * 8;
        float f[8];
        bf16x8_to_f32(*reinterpret_cast<const uint4 *>(src + ((int64_t)kv * nkv + g) * hd + c), f);
        uint8_t *dst = (kv ? vp : kp) + ((blk * nkv + g) * bs + off) * hd + c;
        *reinterpret_cast<uint2 *>(dst) = f32x8_to_fp8(f, inv);
    }
}

extern "C" gm_status k_kv_write_fp8(const void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                                    const int32_t *slot, float kv_scale, void *k_pool, void *v_pool, int32_t bs,
                                    cudaStream_t s)
{
    if (hd % 8 || ld % 8 || bs < 1 || !(kv_scale > 0.0f))
        return gm_fail(GM_ERR_UNSUPPORTED, "k_kv_write_fp8: head_dim %d, ld %lld, block %d, kv_scale %g", hd,
                       (long long)ld, bs, (double)kv_scale);
    if (T <= 0)
        return GM_OK;
    kv_write_fp8_kernel<<<(unsigned)T, 128, 0, s>>>((const bf16 *)qkv, ld, nh, nkv, hd, slot, 1.0f / kv_scale,
                                                    (uint8_t *)k_pool, (uint8_t *)v_pool, bs);
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
    dequant_kernel<<<grid_for(n / 8 + 1), Q_THREADS, 0, s>>>((const uint8_t *)q, n, scale, (bf16 *)out);
    GM_LAUNCH_CHECK();
    return GM_OK;
}
