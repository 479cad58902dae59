/* attn.h - causal attention over a paged KV pool, f32 or FP8 e4m3 (the CPU twin of both CUDA
 * attention families: kernels/cuda/attn_decode.cu with its XQA variant, and attn_prefill.cu /
 * attn_prefill_hopper.cu), with Gemma 2/3's soft-capped scores and sliding windows. */
#ifndef GM_CPU_ATTN_H
#define GM_CPU_ATTN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Causal attention of T new query tokens (positions start_pos..start_pos+T-1) of one
 * sequence over its paged KV (positions 0..start_pos+T-1 already written, cpu_kv_write).
 * q [T, n_heads, head_dim]; out [T, n_heads, head_dim]; query head h reads KV head
 * h / (n_heads / n_kv). scale = 1/sqrt(head_dim) for Gemma. Softmax in float32. */
void cpu_attention_paged(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                         int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                         int32_t block_size, float scale, float *out);

/* cpu_attention_paged over an FP8 pool (cpu_fp8_kv_write): the blocks of this sequence (positions
 * 0..start_pos+T-1) are dequantized into a float32 copy, then attended to exactly as
 * cpu_attention_paged does. Returns 0, or -1 when out of memory.
 * q [T, n_heads, head_dim] f32; out [T, n_heads, head_dim] f32 */
int cpu_fp8_attention_paged(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, const uint8_t *k8, const uint8_t *v8, const int32_t *block_table,
                            int32_t block_size, float scale, float kv_scale, float *out);

/* Soft-capping in place: x[i] = tanh(x[i] / cap) * cap (float32), for n values; cap > 0.
 * Gemma 2's attention scores (cap 50, after scaling, before the mask) and final logits (cap 30). */
void cpu_softcap(float *x, int64_t n, float cap);

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

/* The double-precision reference of the same op (every score, the softmax and the weighted sum in
 * double, rounded at the end): the twin the CUDA prefill kernels are tested against. */
/* Scores and masks of cpu_attention_paged_opts. */
typedef struct cpu_attn_opts {
    float scale;   /* s = q.k * scale (Gemma 2/3: query_pre_attn_scalar^-0.5) */
    float softcap; /* > 0: s = tanh(s / softcap) * softcap, after scaling and before the mask; 0 = off */
    int32_t window; /* > 0: the query at position i sees keys i - window < j <= i; 0 = all j <= i */
} cpu_attn_opts;

/* Causal attention of T new query tokens (positions start_pos .. start_pos + T - 1) of one
 * sequence over its paged KV (positions 0 .. start_pos + T - 1 already written), accumulated in
 * double and rounded to float at the end. q [T, n_heads, head_dim] f32; out [T, n_heads, head_dim]
 * f32; k_pool, v_pool [num_blocks, n_kv, block_size, head_dim] f32; query head h reads KV head
 * h / (n_heads / n_kv). Returns 0, or -1 when out of memory or the arguments are invalid. */
int cpu_attention_paged_opts(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                             int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                             int32_t block_size, const cpu_attn_opts *opt, float *out);

#ifdef __cplusplus
}
#endif
#endif
