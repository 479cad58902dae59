/* sample.cuh - token sampling on the GPU (greedy, temperature, top-k, top-p) with the same
 * counter-based draw as cpu_sample, the same block's log-probabilities, penalties and min_tokens mask
 * (k_sample_ex; their order: common/sampling.h), and the device-side token feed between decode steps. */
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

/* What k_sample_ex does besides sampling, per row r < n; device pointers. Rows that ask for nothing
 * (pen[r] == 0, mask_n[r] == 0, params[r] without logprobs) cost two loads.
 *
 * Penalties: each slot owns a table of cap entries in keys / counts / raw (open addressing from a
 * multiplicative hash, linear probing; keys -1 = empty), holding every token of its sequence so far
 * once, with how many times it came at an output position (>= params[r].n_prompt). pen[r] (GM_PEN_*,
 * common/sampling.h): ON adds row r's new tokens ids[q_start[r] .. + n_new[r]) at positions
 * start_pos[r].. to slot[r]'s table (RESET empties it first); APPLY penalizes row r's logits in place
 * (gm_penalize_logit) for every token of the table, keeping the raw logit in raw for log-probabilities.
 * cap = gm_pen_table_cap(max_context, vocab) keeps the probes short; a slot's tokens never exceed it.
 *
 * min_tokens: row r's logits at mask_ids[mask_off[r] .. + mask_n[r]) become -inf (after penalties).
 *
 * Log-probabilities (params[r] asks: gm_sampling_wants_logprobs): of the raw logits, before the above;
 * lp[r] the sampled token's, top_ids / top_lps [n, GM_MAX_TOP_LOGPROBS] the top_logprobs most likely
 * (ties: lower id), as cpu_logprobs computes them. A sampled token that was masked and is not in the
 * penalty table (possible only when every other logit is -inf or NaN) reads -inf. */
typedef struct k_sample_aux {
    const int32_t *ids;       /* [T] the step's input tokens (fed-back ones resolved) */
    const int32_t *q_start;   /* [n] first token of row r's sequence in ids */
    const int32_t *n_new;     /* [n] its new tokens */
    const int32_t *start_pos; /* [n] position of the first */
    const int32_t *slot;      /* [n] its slot (penalty table) */
    const int32_t *pen;       /* [n] GM_PEN_* */
    int32_t *keys;            /* [slots, cap] */
    int32_t *counts;          /* [slots, cap] */
    float *raw;               /* [slots, cap] */
    int32_t cap;
    const int32_t *mask_off, *mask_n, *mask_ids; /* [n], [n], [sum of mask_n] */
    float *lp;                /* [n] */
    int32_t *top_ids;         /* [n, GM_MAX_TOP_LOGPROBS] */
    float *top_lps;           /* [n, GM_MAX_TOP_LOGPROBS] */
} k_sample_aux;

/* k_sample with aux's extras (aux is copied; NULL = k_sample). logits are modified in place where a row is
 * penalized or masked. A row with a NaN or +Inf, or no finite value, once penalized and masked (as
 * cpu_sample sees it) gets GM_SAMPLE_NONFINITE, and lp[r] -inf when it asked for log-probabilities. */
gm_status k_sample_ex(float *logits, int64_t ld, int64_t vocab, int32_t n, const gm_sampling *params,
                      const uint64_t *counters, int32_t *tokens, const k_sample_aux *aux, cudaStream_t s);

/* last_tok[slots[i]] = tokens[i] where slots[i] >= 0 (i < n); a negative token (GM_SAMPLE_NONFINITE)
 * becomes 0, a valid id to feed.  All device arrays. */
gm_status k_feed_tokens(const int32_t *tokens, const int32_t *slots, int32_t n, int32_t *last_tok, cudaStream_t s);

/* ids[t] = last_tok[tok_slot[t]] where ids[t] < 0 (t < T): a decode step's token that the
 * previous step sampled on the device.  All device arrays. */
gm_status k_resolve_ids(int32_t *ids, const int32_t *tok_slot, int64_t T, const int32_t *last_tok, cudaStream_t s);

/* Gemma 2's final logit soft-cap, in place: logits[r, i] = tanhf(logits[r, i] / cap) * cap for r < n,
 * i < vocab (row stride ld), before sampling and in dumped logits. cap > 0. CPU twin: cpu_softcap. */
gm_status k_logits_softcap(float *logits, int64_t ld, int64_t vocab, int32_t n, float cap, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
