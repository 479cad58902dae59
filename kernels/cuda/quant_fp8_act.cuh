/* quant_fp8_act.cuh - internal to kernels/cuda (no launcher API): the pieces of the FP8 activation
 * quantizers that quant_fp8.cu (k_fp8_quantize), norm.cu (k_rmsnorm_fp8, k_add_rmsnorm_fp8) and geglu.cu
 * (k_geglu_fp8) share: device helpers, the one-block dynamic quantizer of a few rows (small_dyn_kernel;
 * each MODE is instantiated by the one file that launches it) and host helpers.
 *
 * Scales are dequant multipliers (x ~= e4m3 * scale), scale = max(amax, 1e-12) / 448, quantizing computes
 * e4m3_satfinite(x * (1.0f / scale)); activations are rounded to bf16 first (quant_fp8.cuh). */
#ifndef GM_K_QUANT_FP8_ACT_CUH
#define GM_K_QUANT_FP8_ACT_CUH

#include <cuda_fp8.h>

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "geglu.cuh"
#include "quant_fp8.cuh"

#define Q_THREADS 256
#define NORM_CHUNKS 4 /* 16-byte chunks per thread: dim <= 256*4*8 = 8192 */
#define FP8_MIN_AMAX 1e-12f
#define SMALL_DYN_ROWS 8 /* dynamic scales of at most this many rows: small_dyn_kernel, one launch */

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

/* Gemma 2/3's sandwich norm of a residual delta: the row d [dim] (bf16 or f32) RMS-normed with dw1 (1 + the
 * post-attention or post-feed-forward weight, f32) and rounded to bf16, as HF's norm before the residual add
 * computes it. out: this thread's NORM_CHUNKS chunks of 8 (chunk c: 8-element group threadIdx.x + c * STRIDE,
 * the norm kernels' mapping). Every thread of the block calls it (a block reduction). red: __shared__ [32]. */
template <int STRIDE, typename DT>
__device__ __forceinline__ void normed_delta(const DT *d, const float *dw1, int64_t n8, int64_t dim, float eps,
                                             float *red, float out[NORM_CHUNKS][8])
{
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * STRIDE;
        if (i < n8) {
            load_delta(d, i, out[c]);
#pragma unroll
            for (int j = 0; j < 8; j++)
                ss += out[c][j] * out[c][j];
        }
    }
    ss = block_sum(ss, red);
    const float r = rsqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * STRIDE;
        if (i < n8) {
            float w[8];
            load_delta(dw1, i, w); /* 8 floats of the weight */
#pragma unroll
            for (int j = 0; j < 8; j++)
                out[c][j] = round_bf16(out[c][j] * r * w[j]);
        }
    }
}

static inline unsigned fp8q_grid_for(int64_t total8)
{
    int64_t b = (total8 + Q_THREADS - 1) / Q_THREADS;
    if (b > 132 * 8)
        b = 132 * 8;
    return (unsigned)(b < 1 ? 1 : b);
}

static inline gm_status fp8q_act_args(const k_fp8_act *a, const char *fn)
{
    if (!a || !a->scale)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: no activation scale pointer", fn);
    return GM_OK;
}

/* Second half of the dynamic path (quant_fp8.cu): scale from *a->amax, quantize a->tmp [rows, dim] (dense)
 * into q. */
gm_status fp8q_dyn_finish(const k_fp8_act *a, int64_t rows, int64_t dim, void *q, cudaStream_t s);

/* Dynamic scale for a few rows (decode batches): ONE block does what the memset + fused kernel +
 * quant_kernel sequence does (no amax atomics, no memset: 3 launches become 1, ~5 us per quantization
 * point at batch 1). Same per-row arithmetic as rmsnorm_fp8_kernel / geglu_fp8_kernel (same thread
 * mapping and reductions), so the codes are the same. MODE 0: rmsnorm; 1: add (bf16 delta) + rmsnorm;
 * 2: add (f32 delta) + rmsnorm; 3: GeGLU of gu [rows, 2 dim]; 4: plain quantization of x (row stride
 * ldx; tmp unused); 5, 6: as 1, 2 with the delta RMS-normed by dw1 first (Gemma 2/3's sandwich,
 * normed_delta). tmp [rows, dim] bf16 scratch. */
template <int MODE>
__global__ void __launch_bounds__(Q_THREADS)
    small_dyn_kernel(bf16 *__restrict__ x, int64_t ldx, const void *__restrict__ delta, const float *__restrict__ w1,
                     int64_t dim, float eps, int64_t rows, float *__restrict__ scale, bf16 *__restrict__ tmp,
                     uint8_t *__restrict__ q, const float *__restrict__ dw1 = nullptr)
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
                    o[j] = round_bf16(round_bf16(gelu_tanh(g[j])) * u[j]);
                reinterpret_cast<uint4 *>(tmp + row * dim)[c] = f32_to_bf16x8(o);
                m = fmaxf(m, amax8(o));
            }
            continue;
        }
        uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
        float v[NORM_CHUNKS][8];
        float ss = 0.0f;
        float dn[MODE >= 5 ? NORM_CHUNKS : 1][8]; /* MODE 5, 6: the normed delta */
        if constexpr (MODE == 5)
            normed_delta<Q_THREADS>(reinterpret_cast<const bf16 *>(delta) + row * dim, dw1, n8, dim, eps, red, dn);
        if constexpr (MODE == 6)
            normed_delta<Q_THREADS>(reinterpret_cast<const float *>(delta) + row * dim, dw1, n8, dim, eps, red, dn);
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
            if (i < n8) {
                bf16x8_to_f32(xr[i], v[c]);
                if (MODE != 0) {
                    float d[8];
                    if constexpr (MODE >= 5) {
#pragma unroll
                        for (int j = 0; j < 8; j++)
                            d[j] = dn[c][j];
                    } else if (MODE == 1)
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

#endif
