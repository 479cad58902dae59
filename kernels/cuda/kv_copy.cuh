/* kv_copy.cuh - copy whole blocks of a paged KV pool on the device (copy-on-write of a shared block),
 * every layer's K and V of every copy in one launch. CPU twin: kernels/cpu/kv_copy.h. */
#ifndef GM_K_KV_COPY_CUH
#define GM_K_KV_COPY_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* As cpu_kv_copy_blocks: pool is n_planes planes plane_bytes apart, each [num_blocks, block_bytes]
 * bytes; pairs [2 n] int32 (device): block pairs[2i] -> block pairs[2i + 1] in every plane. The
 * copies run at once, so no dst may appear twice or as a src (ctl_check_copies). block_bytes and
 * plane_bytes multiples of 16, pool 16-byte aligned. Grid: (n, n_planes), 256 threads moving 16 bytes
 * each; memory-bound (reads and writes n * n_planes * block_bytes). */
gm_status k_kv_copy_blocks(void *pool, int64_t n_planes, int64_t plane_bytes, int64_t block_bytes,
                           const int32_t *pairs, int32_t n, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
