/* kv_copy.cu - block copies within a paged KV pool (see kv_copy.cuh). */
#include "kv_copy.cuh"

#include "cuda_check.h"
#include "launch.cuh"

/* blockIdx.x: the copy; blockIdx.y: the plane (a layer's K or V). */
__global__ void kv_copy_kernel(char *__restrict__ pool, int64_t plane_bytes, int64_t block_bytes,
                               const int32_t *__restrict__ pairs)
{
    pdl_wait();
    char *plane = pool + (int64_t)blockIdx.y * plane_bytes;
    const uint4 *src = reinterpret_cast<const uint4 *>(plane + (int64_t)pairs[2 * blockIdx.x] * block_bytes);
    uint4 *dst = reinterpret_cast<uint4 *>(plane + (int64_t)pairs[2 * blockIdx.x + 1] * block_bytes);
    for (int64_t i = threadIdx.x; i < block_bytes / 16; i += blockDim.x)
        dst[i] = src[i];
}

extern "C" gm_status k_kv_copy_blocks(void *pool, int64_t n_planes, int64_t plane_bytes, int64_t block_bytes,
                                      const int32_t *pairs, int32_t n, cudaStream_t s)
{
    if (block_bytes % 16 || plane_bytes % 16 || ((uintptr_t)pool & 15))
        return gm_fail(GM_ERR_UNSUPPORTED, "k_kv_copy_blocks: block %lld / plane %lld bytes not 16-byte multiples",
                       (long long)block_bytes, (long long)plane_bytes);
    if (n_planes > 65535)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_kv_copy_blocks: %lld planes", (long long)n_planes);
    if (n <= 0 || n_planes <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(kv_copy_kernel, dim3((unsigned)n, (unsigned)n_planes), dim3(256), 0, s, (char *)pool,
                            plane_bytes, block_bytes, pairs));
    return GM_OK;
}
