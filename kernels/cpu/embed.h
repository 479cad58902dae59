/* embed.h - the embedding gather with Gemma's normalizer (CPU twin of kernels/cuda/embed.cu). */
#ifndef GM_CPU_EMBED_H
#define GM_CPU_EMBED_H

#include <stdint.h>

#include "../../common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, :] = table[ids[t], :] * normalizer.   table [vocab, hidden] dt; out [n, hidden] f32 */
void cpu_embed(const void *table, gm_dtype dt, int64_t hidden, const int32_t *ids, int64_t n, float normalizer,
               float *out);

#ifdef __cplusplus
}
#endif
#endif
