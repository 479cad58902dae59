/* kv_copy.c - block copies within a paged KV pool (see kv_copy.h). */
#include "kv_copy.h"

#include <string.h>

void cpu_kv_copy_blocks(void *pool, int64_t n_planes, int64_t plane_bytes, int64_t block_bytes, const int32_t *pairs,
                        int32_t n)
{
    char *base = pool;
    for (int32_t i = 0; i < n; i++)
        for (int64_t p = 0; p < n_planes; p++) {
            char *plane = base + p * plane_bytes;
            memcpy(plane + (int64_t)pairs[2 * i + 1] * block_bytes, plane + (int64_t)pairs[2 * i] * block_bytes,
                   (size_t)block_bytes);
        }
}
