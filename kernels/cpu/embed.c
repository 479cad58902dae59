/* embed.c - the embedding gather (see embed.h). */
#include "embed.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

void cpu_embed(const void *table, gm_dtype dt, int64_t hidden, const int32_t *ids, int64_t n, float normalizer,
               float *out)
{
    size_t row = (size_t)hidden * gm_dtype_size(dt);
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * hidden;
        gm_to_f32(dt, (const char *)table + (size_t)ids[t] * row, o, hidden);
        for (int64_t i = 0; i < hidden; i++)
            o[i] *= normalizer;
    }
}
