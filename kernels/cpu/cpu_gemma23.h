/* cpu_gemma23.h - the CPU reference ops that Gemma 2 and Gemma 3 add to Gemma 1's (cpu_ops.h):
 * soft-capping, per-head QK RMSNorm, RoPE with a per-layer base and linear scaling, and paged causal
 * attention with soft-capped scores and a sliding window. float32 activations, as in cpu_ops.h; these
 * are the twins the CUDA kernels of Gemma 2/3 are tested against. */
#ifndef GM_CPU_GEMMA23_H
#define GM_CPU_GEMMA23_H

#include <stdint.h>

#include "../../common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Soft-capping in place: x[i] = tanh(x[i] / cap) * cap (float32), for n values; cap > 0.
 * Gemma 2's attention scores (cap 50, after scaling, before the mask) and final logits (cap 30). */
void cpu_softcap(float *x, int64_t n, float cap);

/* Gemma 3's QK-norm, in place: each head vector of x [T, n_heads, head_dim] f32 gets the Gemma RMSNorm
 * x * rsqrt(mean(x^2) + eps) * (1 + w), w [head_dim] of dtype wdt shared by every head. */
void cpu_head_rmsnorm(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const void *w, gm_dtype wdt, float eps);

/* RoPE (rotate-half layout) as cpu_rope, in place on x [T, n_heads, head_dim] f32 at positions pos[T],
 * with linear scaling: inv_freq_i = theta^(-2i/head_dim) / scale (float32, as transformers divides its
 * inv_freq by the factor), angle = pos * inv_freq_i. scale 1 gives cpu_rope's values exactly. */
void cpu_rope_scaled(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta,
                     float scale);

/* The first key position a query at position p sees: p - window + 1 (not below 0) for a sliding
 * window of `window` > 0 tokens (transformers: key j is seen when p - window < j <= p); 0 for window 0. */
static inline int64_t cpu_window_start(int64_t p, int32_t window)
{
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* Causal attention of T new query tokens (positions start_pos..start_pos+T-1) of one sequence over its
 * paged KV, as cpu_attention_paged (same pool layout, block_table, GQA mapping h / (n_heads / n_kv)) with
 * Gemma 2/3's options: score s = dot(q, k) * scale (dot in float64, rounded to float32), then
 * s = tanh(s / softcap) * softcap when softcap > 0; keys limited to [cpu_window_start(p, window), p].
 * Softmax and the weighted sum of V in float32. q, out [T, n_heads, head_dim]. */
void cpu_attention_paged_ex(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                            int32_t block_size, float scale, float softcap, int32_t window, float *out);

#ifdef __cplusplus
}
#endif
#endif
