/* sample.cuh - token sampling on the GPU (greedy, temperature, top-k, top-p) with the same
 * counter-based draw as cpu_sample, and the device-side token feed between decode steps. */
#ifndef GM_K_SAMPLE_CUH
#define GM_K_SAMPLE_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/sampling.h"
#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* tokens[r] = cpu_sample(logits[r, :vocab], params[r], counters[r]) for r < n (GM_SAMPLE_NONFINITE for
 * a row with a NaN or +Inf or no finite value): argmax (ties to the
 * lowest id) when greedy; else p_i = expf((l_i - max) / T), the top_k most likely (ties: lower id),
 * the shortest prefix reaching top_p of their mass, and the first token whose cumulative mass
 * exceeds u * kept mass, u = gm_rng_uniform(seed, counter). Greedy picks agree with the CPU exactly;
 * sampled picks agree except when the draw falls within ~1e-7 of a boundary (masses are summed
 * in 2^-40 fixed point here, so the result does not depend on thread timing).
 * logits [n, ld] f32; params [n] gm_sampling, counters [n] uint64, tokens [n] int32 (all device).
 * One block per row. */
gm_status k_sample(const float *logits, int64_t ld, int64_t vocab, int32_t n, const gm_sampling *params,
                   const uint64_t *counters, int32_t *tokens, cudaStream_t s);

/* last_tok[slots[i]] = tokens[i] where slots[i] >= 0 (i < n); a negative token (GM_SAMPLE_NONFINITE)
 * becomes 0, a valid id to feed.  All device arrays. */
gm_status k_feed_tokens(const int32_t *tokens, const int32_t *slots, int32_t n, int32_t *last_tok, cudaStream_t s);

/* ids[t] = last_tok[tok_slot[t]] where ids[t] < 0 (t < T): a decode step's token that the
 * previous step sampled on the device.  All device arrays. */
gm_status k_resolve_ids(int32_t *ids, const int32_t *tok_slot, int64_t T, const int32_t *last_tok, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
