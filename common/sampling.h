/* sampling.h - per-request sampling parameters, the counter-based random draw, and the
 * penalty formula every backend applies.
 *
 * The draw for a sequence's token at position p is a pure function of
 * (seed, p), so results do not depend on the batch a sequence ran in, on
 * preemption and recompute, or on the backend (CPU and GPU share this code).
 *
 * Order of the transformations of a row of logits (both backends):
 *   1. log-probabilities, when asked: log_softmax of the raw logits (after Gemma 2's final
 *      soft-capping), before anything below; vLLM's default ("raw_logprobs"), and what
 *      OpenAI's API describes: the model's distribution, not the sampler's;
 *   2. penalties (gm_penalize_logit) on every token of the sequence so far;
 *   3. min_tokens: the stop ids' logits become -inf while fewer than min_tokens outputs exist;
 *   4. temperature, top-k, top-p, and the draw (or argmax when greedy). */
#ifndef GM_SAMPLING_H
#define GM_SAMPLING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GM_MAX_TOP_LOGPROBS 20 /* alternatives per token, as OpenAI and vLLM allow */
#define GM_MAX_STOP_SET 66     /* ids min_tokens masks: 64 stop ids, EOS, <end_of_turn> */

typedef struct gm_sampling {
    float temperature; /* 0 = greedy */
    int32_t top_k;     /* 0 = off; 1 = greedy */
    float top_p;       /* 1 = off; (0, 1] */
    uint64_t seed;
    /* penalties (OpenAI / vLLM meanings), on the logits before temperature, top-k and top-p */
    float presence_penalty;   /* logit -= p once if the token is among the outputs so far; 0 = off */
    float frequency_penalty;  /* logit -= f * the token's count among the outputs; 0 = off */
    float repetition_penalty; /* tokens of the prompt or the outputs: logit / r if > 0, else logit * r;
                               * 0 or 1 = off */
    int32_t n_prompt;         /* positions < n_prompt are the prompt, the rest outputs (the penalties'
                               * counts, min_tokens); 0: every position is an output */
    int32_t min_tokens;       /* the sequence's stop ids (gm_seq_step.stops) are masked while fewer
                               * outputs precede the token sampled; 0 = off */
    int32_t logprobs;         /* 1: the sampled token's log-probability comes back with it */
    int32_t top_logprobs;     /* and this many most likely alternatives, 0..GM_MAX_TOP_LOGPROBS */
} gm_sampling;

#define GM_SAMPLING_GREEDY ((gm_sampling){0.0f, 0, 1.0f, 0})

/* The ids min_tokens keeps from ending a sequence (EOS, <end_of_turn> in chat, the stop ids). */
typedef struct gm_stop_set {
    int32_t n;
    int32_t ids[GM_MAX_STOP_SET];
} gm_stop_set;

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

/* True when any penalty changes logits. */
static inline GM_HD int gm_sampling_has_penalties(const gm_sampling *s)
{
    return s->presence_penalty != 0.0f || s->frequency_penalty != 0.0f ||
           (s->repetition_penalty != 0.0f && s->repetition_penalty != 1.0f);
}

/* True when the sampled token's log-probability is wanted. */
static inline GM_HD int gm_sampling_wants_logprobs(const gm_sampling *s)
{
    return s->logprobs != 0 || s->top_logprobs > 0;
}

/* What an engine does with a slot's token history for an entry (worker/engine_pen.h decides; the CUDA
 * sampler reads them per row). */
enum {
    GM_PEN_ON = 1,    /* add the entry's tokens to the slot's history */
    GM_PEN_RESET = 2, /* empty the history first (the entry starts at position 0) */
    GM_PEN_APPLY = 4, /* penalize the entry's sampled row */
};

/* Entries of one slot's penalty table on the device (kernels/cuda/sample.cuh): over 1.5 times the most
 * distinct tokens a sequence can hold, so that open addressing stays short. */
static inline GM_HD int32_t gm_pen_table_cap(int32_t max_context, int64_t vocab)
{
    int64_t d = (int64_t)max_context < vocab ? (int64_t)max_context : vocab;
    int64_t c = d + d / 2 + 64;
    return (int32_t)((c + 63) & ~(int64_t)63);
}

/* One rounding per operation on both backends (nvcc would fuse a * b - c into one FMA), so the
 * CPU and the GPU penalize a logit to the same float. */
#if defined(__CUDA_ARCH__)
#define GM_FMUL(a, b) __fmul_rn((a), (b))
#define GM_FDIV(a, b) __fdiv_rn((a), (b))
#define GM_FSUB(a, b) __fsub_rn((a), (b))
#else
#define GM_FMUL(a, b) ((a) * (b))
#define GM_FDIV(a, b) ((a) / (b))
#define GM_FSUB(a, b) ((a) - (b))
#endif

/* The logit l of a token that occurs in the sequence so far (prompt or outputs), n_out times among
 * the outputs, penalized: repetition first (HF/vLLM: l / r when l > 0, else l * r), then frequency
 * (l -= f * n_out) and presence (l -= p when n_out > 0), as vLLM applies them. */
static inline GM_HD float gm_penalize_logit(float l, int32_t n_out, const gm_sampling *s)
{
    float r = s->repetition_penalty;
    if (r > 0.0f && r != 1.0f)
        l = l > 0.0f ? GM_FDIV(l, r) : GM_FMUL(l, r);
    if (n_out > 0) {
        l = GM_FSUB(l, GM_FMUL(s->frequency_penalty, (float)n_out));
        l = GM_FSUB(l, s->presence_penalty);
    }
    return l;
}

#ifdef __cplusplus
}
#endif
#endif
