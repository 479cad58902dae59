/* norm.cu - Gemma RMSNorm, alone or after the residual add, writing bf16 or (FP8 weights) the next
 * product's e4m3 input. One block per row; the row stays in registers between the two passes
 * (memory-bound: n*dim bf16 read, written; plus h rewritten by the fused add). */
#include "norm.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"
#include "quant_fp8_act.cuh"

#define NORM_THREADS 256

/* ADD: h = bf16(h + delta) first (h written back). */
template <bool ADD, typename DT>
__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_kernel(bf16 *__restrict__ x, int64_t ldx,
                                                              const DT *__restrict__ delta,
                                                              const float *__restrict__ w1, int64_t dim, float eps,
                                                              bf16 *__restrict__ out, int64_t ldo)
{
    pdl_wait();
    __shared__ float red[32];
    int64_t row = blockIdx.x;
    int64_t n8 = dim / 8;
    uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
    float v[NORM_CHUNKS][8];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * NORM_THREADS;
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
    uint4 *o = reinterpret_cast<uint4 *>(out + row * ldo);
    const float4 *w4 = reinterpret_cast<const float4 *>(w1);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * NORM_THREADS;
        if (i < n8) {
            float4 wa = w4[2 * i], wb = w4[2 * i + 1];
            float w[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
            float f[8];
#pragma unroll
            for (int j = 0; j < 8; j++)
                f[j] = v[c][j] * r * w[j];
            o[i] = f32_to_bf16x8(f);
        }
    }
}

static gm_status norm_args(int64_t dim)
{
    if (dim % 8 || dim > (int64_t)NORM_THREADS * NORM_CHUNKS * 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "rmsnorm: dim %lld must be a multiple of 8 and at most %d",
                       (long long)dim, NORM_THREADS * NORM_CHUNKS * 8);
    return GM_OK;
}

extern "C" gm_status k_rmsnorm(const void *x, int64_t ldx, const float *w1, int64_t n, int64_t dim, float eps,
                               void *out, int64_t ldo, cudaStream_t s)
{
    GM_CHECK(norm_args(dim));
    if (ldx % 8 || ldo % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_rmsnorm: row strides %lld, %lld not multiples of 8", (long long)ldx,
                       (long long)ldo);
    if (n <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<false, bf16>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s, (bf16 *)x, ldx,
                            (const bf16 *)NULL, w1, dim, eps, (bf16 *)out, ldo));
    return GM_OK;
}

extern "C" gm_status k_add_rmsnorm(void *h, const void *delta, int delta_f32, const float *w1, int64_t n, int64_t dim,
                                   float eps, void *out, cudaStream_t s)
{
    GM_CHECK(norm_args(dim));
    if (n <= 0)
        return GM_OK;
    if (delta_f32)
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, float>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s, (bf16 *)h,
                                dim, (const float *)delta, w1, dim, eps, (bf16 *)out, dim));
    else
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, bf16>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s, (bf16 *)h,
                                dim, (const bf16 *)delta, w1, dim, eps, (bf16 *)out, dim));
    return GM_OK;
}

/* ---- RMSNorm -> e4m3 (FP8 weights) ---- */

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

static gm_status norm_fp8_args(int64_t dim, const k_fp8_act *a, const char *fn)
{
    GM_CHECK(fp8q_act_args(a, fn));
    if (dim % 8 || dim > (int64_t)Q_THREADS * NORM_CHUNKS * 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: dim %lld must be a multiple of 8 and at most %d", fn,
                       (long long)dim, Q_THREADS * NORM_CHUNKS * 8);
    if (a->amax && !a->tmp)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: dynamic scale needs a bf16 tmp buffer", fn);
    return GM_OK;
}

extern "C" gm_status k_rmsnorm_fp8(const void *x, int64_t ldx, const float *w1, int64_t n, int64_t dim, float eps,
                                   const k_fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(norm_fp8_args(dim, a, "k_rmsnorm_fp8"));
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
        return fp8q_dyn_finish(a, n, dim, q, s);
    }
    rmsnorm_fp8_kernel<false, false, bf16><<<(unsigned)n, Q_THREADS, 0, s>>>(
        (bf16 *)x, ldx, (const bf16 *)NULL, w1, dim, eps, a->scale, NULL, NULL, (uint8_t *)q);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *w1, int64_t n,
                                       int64_t dim, float eps, const k_fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(norm_fp8_args(dim, a, "k_add_rmsnorm_fp8"));
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
        return fp8q_dyn_finish(a, n, dim, q, s);
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
