/* rmsnorm.cu - one block per row; the row stays in registers between the two passes
 * (memory-bound: n*dim bf16 read, written; plus h rewritten by the fused add). */
#include "rmsnorm.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

#define NORM_THREADS 256
#define NORM_CHUNKS 4 /* 16-byte chunks per thread: dim <= 256*4*8 = 8192 */

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
