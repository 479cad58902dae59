/* embed.cuh - embedding gather with Gemma's normalizer, and a row gather. */
#ifndef GM_K_EMBED_CUH
#define GM_K_EMBED_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, :] = bf16(table[ids[t], :] * normalizer), as HF multiplies a bf16 embedding by a
 * bf16 normalizer. An id outside [0, vocab) gives a zero row.
 * table [vocab, hidden] bf16; ids [n] int32 (device); out [n, hidden] bf16. hidden % 8 == 0. */
gm_status k_embed(const void *table, int64_t vocab, int64_t hidden, const int32_t *ids, int64_t n, float normalizer,
                  void *out, cudaStream_t s);

/* dst[i, :] = src[rows[i], :].  src [*, dim] bf16 with row stride ld_src; rows [n] int32 (device);
 * dst [n, dim] bf16 (dense). dim and ld_src % 8 == 0. */
gm_status k_gather_rows(const void *src, int64_t ld_src, const int32_t *rows, int64_t n, int64_t dim, void *dst,
                        cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
