/* norm.cu - Gemma RMSNorm, alone or after the residual add, writing bf16 or (FP8 weights) the next
 * product's e4m3 input. One block per row; the row stays in registers between the two passes
 * (memory-bound: n*dim bf16 read, written; plus h rewritten by the fused add). */
#include "norm.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"
#include "quant_fp8_act.cuh"

#define NORM_THREADS 256

/* The residual delta of chunk c (group i) of a row: as stored, or (DN) the sandwich-normed copy dn. */
template <bool DN, typename DT>
__device__ __forceinline__ void delta_chunk(const DT *d, int64_t i, const float dn[][8], int c, float out[8])
{
    if constexpr (DN) {
#pragma unroll
        for (int j = 0; j < 8; j++)
            out[j] = dn[c][j];
    } else {
        load_delta(d, i, out);
    }
}

/* ADD: h = bf16(h + delta) first (h written back). DN (with ADD): the delta RMS-normed with dw1 and rounded to
 * bf16 before the add (Gemma 2/3's post-attention / post-feed-forward norm, normed_delta). */
template <bool ADD, typename DT, bool DN>
__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_kernel(bf16 *__restrict__ x, int64_t ldx,
                                                              const DT *__restrict__ delta,
                                                              const float *__restrict__ w1, int64_t dim, float eps,
                                                              bf16 *__restrict__ out, int64_t ldo,
                                                              const float *__restrict__ dw1)
{
    pdl_wait();
    __shared__ float red[32];
    int64_t row = blockIdx.x;
    int64_t n8 = dim / 8;
    uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
    float v[NORM_CHUNKS][8];
    float ss = 0.0f;
    float dn[DN ? NORM_CHUNKS : 1][8];
    if constexpr (DN)
        normed_delta<NORM_THREADS>(delta + row * dim, dw1, n8, dim, eps, red, dn);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * NORM_THREADS;
        if (i < n8) {
            bf16x8_to_f32(xr[i], v[c]);
            if (ADD) {
                float d[8];
                delta_chunk<DN>(delta + row * dim, i, dn, c, d);
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
    GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<false, bf16, false>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s, (bf16 *)x,
                            ldx, (const bf16 *)NULL, w1, dim, eps, (bf16 *)out, ldo, (const float *)NULL));
    return GM_OK;
}

extern "C" gm_status k_add_rmsnorm(void *h, const void *delta, int delta_f32, const float *w1, int64_t n, int64_t dim,
                                   float eps, void *out, cudaStream_t s)
{
    GM_CHECK(norm_args(dim));
    if (n <= 0)
        return GM_OK;
    if (delta_f32)
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, float, false>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s,
                                (bf16 *)h, dim, (const float *)delta, w1, dim, eps, (bf16 *)out, dim,
                                (const float *)NULL));
    else
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, bf16, false>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s,
                                (bf16 *)h, dim, (const bf16 *)delta, w1, dim, eps, (bf16 *)out, dim,
                                (const float *)NULL));
    return GM_OK;
}

extern "C" gm_status k_norm_add_rmsnorm(void *h, const void *delta, int delta_f32, const float *dw1, const float *w1,
                                        int64_t n, int64_t dim, float eps, void *out, cudaStream_t s)
{
    GM_CHECK(norm_args(dim));
    if (!dw1)
        return gm_fail(GM_ERR_INVALID_ARG, "k_norm_add_rmsnorm: no weight for the delta's norm");
    if (n <= 0)
        return GM_OK;
    if (delta_f32)
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, float, true>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s,
                                (bf16 *)h, dim, (const float *)delta, w1, dim, eps, (bf16 *)out, dim, dw1));
    else
        GM_CUDA_CHECK(gm_launch(rmsnorm_kernel<true, bf16, true>, dim3((unsigned)n), dim3(NORM_THREADS), 0, s,
                                (bf16 *)h, dim, (const bf16 *)delta, w1, dim, eps, (bf16 *)out, dim, dw1));
    return GM_OK;
}

/* ---- RMSNorm -> e4m3 (FP8 weights) ---- */

/* One block per row (the row stays in registers). DYN: write bf16 values to tmp and fold the row's
 * amax into *amax; else quantize with *scale. ADD: h = bf16(h + delta) first, written back. DN: the delta
 * sandwich-normed with dw1 first (as rmsnorm_kernel). */
template <bool ADD, bool DYN, typename DT, bool DN>
__global__ void __launch_bounds__(Q_THREADS)
    rmsnorm_fp8_kernel(bf16 *__restrict__ x, int64_t ldx, const DT *__restrict__ delta, const float *__restrict__ w1,
                       int64_t dim, float eps, const float *__restrict__ scale, float *__restrict__ amax,
                       bf16 *__restrict__ tmp, uint8_t *__restrict__ q, const float *__restrict__ dw1)
{
    __shared__ float red[32];
    int64_t row = blockIdx.x;
    int64_t n8 = dim / 8;
    uint4 *xr = reinterpret_cast<uint4 *>(x + row * ldx);
    float v[NORM_CHUNKS][8];
    float ss = 0.0f;
    float dn[DN ? NORM_CHUNKS : 1][8];
    if constexpr (DN)
        normed_delta<Q_THREADS>(delta + row * dim, dw1, n8, dim, eps, red, dn);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        int64_t i = threadIdx.x + (int64_t)c * Q_THREADS;
        if (i < n8) {
            bf16x8_to_f32(xr[i], v[c]);
            if (ADD) {
                float d[8];
                delta_chunk<DN>(delta + row * dim, i, dn, c, d);
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
        rmsnorm_fp8_kernel<false, true, bf16, false><<<(unsigned)n, Q_THREADS, 0, s>>>(
            (bf16 *)x, ldx, (const bf16 *)NULL, w1, dim, eps, a->scale, a->amax, (bf16 *)a->tmp, (uint8_t *)q, NULL);
        GM_LAUNCH_CHECK();
        return fp8q_dyn_finish(a, n, dim, q, s);
    }
    rmsnorm_fp8_kernel<false, false, bf16, false><<<(unsigned)n, Q_THREADS, 0, s>>>(
        (bf16 *)x, ldx, (const bf16 *)NULL, w1, dim, eps, a->scale, NULL, NULL, (uint8_t *)q, NULL);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* k_add_rmsnorm_fp8 (dw1 NULL) and k_norm_add_rmsnorm_fp8 (DN: the delta normed with dw1 first). */
template <bool DN>
static gm_status add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *dw1, const float *w1,
                                 int64_t n, int64_t dim, float eps, const k_fp8_act *a, void *q, cudaStream_t s)
{
    bf16 *hb = (bf16 *)h;
    uint8_t *qb = (uint8_t *)q;
    if (a->amax && n <= SMALL_DYN_ROWS) {
        if (delta_f32)
            small_dyn_kernel<DN ? 6 : 2><<<1, Q_THREADS, 0, s>>>(hb, dim, delta, w1, dim, eps, n, a->scale,
                                                               (bf16 *)a->tmp, qb, dw1);
        else
            small_dyn_kernel<DN ? 5 : 1><<<1, Q_THREADS, 0, s>>>(hb, dim, delta, w1, dim, eps, n, a->scale,
                                                               (bf16 *)a->tmp, qb, dw1);
        GM_LAUNCH_CHECK();
        return GM_OK;
    }
    if (a->amax) {
        GM_CUDA_CHECK(cudaMemsetAsync(a->amax, 0, sizeof(float), s));
        bf16 *tb = (bf16 *)a->tmp;
        if (delta_f32)
            rmsnorm_fp8_kernel<true, true, float, DN><<<(unsigned)n, Q_THREADS, 0, s>>>(
                hb, dim, (const float *)delta, w1, dim, eps, a->scale, a->amax, tb, qb, dw1);
        else
            rmsnorm_fp8_kernel<true, true, bf16, DN><<<(unsigned)n, Q_THREADS, 0, s>>>(
                hb, dim, (const bf16 *)delta, w1, dim, eps, a->scale, a->amax, tb, qb, dw1);
        GM_LAUNCH_CHECK();
        return fp8q_dyn_finish(a, n, dim, q, s);
    }
    if (delta_f32)
        rmsnorm_fp8_kernel<true, false, float, DN><<<(unsigned)n, Q_THREADS, 0, s>>>(
            hb, dim, (const float *)delta, w1, dim, eps, a->scale, NULL, NULL, qb, dw1);
    else
        rmsnorm_fp8_kernel<true, false, bf16, DN><<<(unsigned)n, Q_THREADS, 0, s>>>(
            hb, dim, (const bf16 *)delta, w1, dim, eps, a->scale, NULL, NULL, qb, dw1);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *w1, int64_t n,
                                       int64_t dim, float eps, const k_fp8_act *a, void *q, cudaStream_t s)
{
    GM_CHECK(norm_fp8_args(dim, a, "k_add_rmsnorm_fp8"));
    if (n <= 0)
        return GM_OK;
    return add_rmsnorm_fp8<false>(h, delta, delta_f32, NULL, w1, n, dim, eps, a, q, s);
}

extern "C" gm_status k_norm_add_rmsnorm_fp8(void *h, const void *delta, int delta_f32, const float *dw1,
                                            const float *w1, int64_t n, int64_t dim, float eps, const k_fp8_act *a,
                                            void *q, cudaStream_t s)
{
    GM_CHECK(norm_fp8_args(dim, a, "k_norm_add_rmsnorm_fp8"));
    if (!dw1)
        return gm_fail(GM_ERR_INVALID_ARG, "k_norm_add_rmsnorm_fp8: no weight for the delta's norm");
    if (n <= 0)
        return GM_OK;
    return add_rmsnorm_fp8<true>(h, delta, delta_f32, dw1, w1, n, dim, eps, a, q, s);
}
