/* kv_copy.h - copy whole blocks of a paged KV pool (copy-on-write of a shared block). CPU twin of
 * kernels/cuda/kv_copy.cu (k_kv_copy_blocks). */
#ifndef GM_CPU_KV_COPY_H
#define GM_CPU_KV_COPY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The pool is n_planes planes (every layer's K, then its V: 2 * layers), plane_bytes apart, each
 * [num_blocks, block_bytes] bytes (block_bytes = n_kv * block_size * head_dim * element size).
 * For copy i (in order), block pairs[2i]'s bytes of every plane go to block pairs[2i + 1].
 * Ids are the caller's to check (ctl_check_copies). */
void cpu_kv_copy_blocks(void *pool, int64_t n_planes, int64_t plane_bytes, int64_t block_bytes, const int32_t *pairs,
                        int32_t n);

#ifdef __cplusplus
}
#endif
#endif
