/* sampling.h - per-request sampling parameters and the counter-based random draw.
 *
 * The draw for a sequence's token at position p is a pure function of
 * (seed, p), so results do not depend on the batch a sequence ran in, on
 * preemption and recompute, or on the backend (CPU and GPU share this code). */
#ifndef GM_SAMPLING_H
#define GM_SAMPLING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_sampling {
    float temperature; /* 0 = greedy */
    int32_t top_k;     /* 0 = off; 1 = greedy */
    float top_p;       /* 1 = off; (0, 1] */
    uint64_t seed;
} gm_sampling;

#define GM_SAMPLING_GREEDY ((gm_sampling){0.0f, 0, 1.0f, 0})

/* What a sampler returns for a row of logits holding a NaN or +Inf, or no finite value at all: no
 * token. The worker hands it on per sequence (ctl/step.h); gemmad ends that request with
 * NONFINITE_LOGITS and feeds nothing from it. */
#define GM_SAMPLE_NONFINITE (-2)

#if defined(__CUDACC__)
#define GM_HD __host__ __device__
#else
#define GM_HD
#endif

static inline GM_HD uint64_t gm_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1) for (seed, counter), 24 bits of resolution. */
static inline GM_HD float gm_rng_uniform(uint64_t seed, uint64_t counter)
{
    uint64_t r = gm_mix64(seed ^ gm_mix64(counter));
    return (float)(r >> 40) * (1.0f / 16777216.0f);
}

/* True when the parameters reduce to argmax. */
static inline GM_HD int gm_sampling_is_greedy(const gm_sampling *s)
{
    return s->temperature <= 0.0f || s->top_k == 1;
}

#ifdef __cplusplus
}
#endif
#endif
