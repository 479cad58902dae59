/* sample.h - token sampling with the counter-based draw, log-probabilities, penalties and the min_tokens
 * mask (CPU twins of kernels/cuda/sample.cu; the order they apply in: common/sampling.h). */
#ifndef GM_CPU_SAMPLE_H
#define GM_CPU_SAMPLE_H

#include <stdint.h>

#include "../../common/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sample one id from logits [vocab] (not modified), or GM_SAMPLE_NONFINITE when the row has a NaN or
 * +Inf or no finite value: argmax when greedy (ties to the
 * lowest id); else softmax(logits / temperature), keep the top_k most likely (0 = all),
 * then the smallest prefix (by descending probability, ties by lower id) whose mass
 * reaches top_p, renormalise, and draw with u = gm_rng_uniform(seed, counter). */
int32_t cpu_sample(const float *logits, int64_t vocab, const gm_sampling *s, uint64_t counter);

/* argmax with ties to the lowest index. */
int64_t cpu_argmax(const float *x, int64_t n);

/* Log-probabilities of a row of raw logits [vocab] (a NaN counts as -inf): *lse = m + log(sum exp(l - m)),
 * m the largest logit, the sum of float expf() values in double (lse = m when m is not finite); and the
 * n_top (<= vocab) largest logits' ids, largest first (ties: lower id), in top_ids [n_top] with
 * (float)(l - lse) in top_lps [n_top]. The sampled token's log-probability is (float)(l - lse) too. */
void cpu_logprobs(const float *logits, int64_t vocab, int32_t n_top, double *lse, int32_t *top_ids, float *top_lps);

/* The penalties of s (gm_penalize_logit) on logits [vocab], in place, for every token of hist [n_hist]
 * (the sequence's tokens by position: positions >= s->n_prompt are outputs), each token once.
 * cnt [vocab] int32 scratch: all zero on entry, all zero again on return. */
void cpu_penalize(float *logits, int64_t vocab, const int32_t *hist, int64_t n_hist, const gm_sampling *s,
                  int32_t *cnt);

/* logits[ids[k]] = -inf for k < n (min_tokens' stop ids); ids outside [0, vocab) are skipped. */
void cpu_mask_ids(float *logits, int64_t vocab, const int32_t *ids, int32_t n);

#ifdef __cplusplus
}
#endif
#endif
