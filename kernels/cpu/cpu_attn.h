/* cpu_attn.h - the attention reference with Gemma 2/3's options (soft-capping, sliding window,
 * any softmax scale), in double precision: the twin of the Hopper prefill kernel. */
#ifndef GM_CPU_ATTN_H
#define GM_CPU_ATTN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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
