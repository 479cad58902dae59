/* sample.h - token sampling with the counter-based draw (CPU twin of kernels/cuda/sample.cu). */
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

#ifdef __cplusplus
}
#endif
#endif
