/* embed.cu - embedding gather (memory-bound: reads and writes n*hidden bf16). */
#include "embed.cuh"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

/* One block per token row; each thread moves 8 bf16 at a time. */
__global__ void embed_kernel(const bf16 *__restrict__ table, int64_t vocab, int64_t hidden,
                             const int32_t *__restrict__ ids, float norm, bf16 *__restrict__ out)
{
    pdl_wait();
    int64_t t = blockIdx.x;
    int32_t id = ids[t];
    uint4 *o = reinterpret_cast<uint4 *>(out + t * hidden);
    int64_t n8 = hidden / 8;
    if (id < 0 || id >= vocab) {
        for (int64_t i = threadIdx.x; i < n8; i += blockDim.x)
            o[i] = make_uint4(0, 0, 0, 0);
        return;
    }
    const uint4 *r = reinterpret_cast<const uint4 *>(table + (int64_t)id * hidden);
    for (int64_t i = threadIdx.x; i < n8; i += blockDim.x) {
        float f[8];
        bf16x8_to_f32(__ldg(r + i), f);
#pragma unroll
        for (int j = 0; j < 8; j++)
            f[j] *= norm;
        o[i] = f32_to_bf16x8(f);
    }
}

__global__ void gather_rows_kernel(const bf16 *__restrict__ src, int64_t ld, const int32_t *__restrict__ rows,
                                   int64_t dim, bf16 *__restrict__ dst)
{
    pdl_wait();
    int64_t i = blockIdx.x;
    const uint4 *r = reinterpret_cast<const uint4 *>(src + (int64_t)rows[i] * ld);
    uint4 *o = reinterpret_cast<uint4 *>(dst + i * dim);
    for (int64_t j = threadIdx.x; j < dim / 8; j += blockDim.x)
        o[j] = r[j];
}

extern "C" gm_status k_embed(const void *table, int64_t vocab, int64_t hidden, const int32_t *ids, int64_t n,
                             float normalizer, void *out, cudaStream_t s)
{
    if (hidden % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_embed: hidden %lld is not a multiple of 8", (long long)hidden);
    if (n <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(embed_kernel, dim3((unsigned)n), dim3(128), 0, s, (const bf16 *)table, vocab, hidden, ids,
                            normalizer, (bf16 *)out));
    return GM_OK;
}

extern "C" gm_status k_gather_rows(const void *src, int64_t ld_src, const int32_t *rows, int64_t n, int64_t dim,
                                   void *dst, cudaStream_t s)
{
    if (dim % 8 || ld_src % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_gather_rows: dim %lld / ld %lld not multiples of 8", (long long)dim,
                       (long long)ld_src);
    if (n <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(gather_rows_kernel, dim3((unsigned)n), dim3(128), 0, s, (const bf16 *)src, ld_src, rows, dim,
                            (bf16 *)dst));
    return GM_OK;
}
