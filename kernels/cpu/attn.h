/* attn.h - causal attention over a paged KV pool, f32 or FP8 e4m3 (the CPU twin of both CUDA
 * attention families: kernels/cuda/attn_decode.cu with its XQA variant, and attn_prefill.cu). */
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

#ifdef __cplusplus
}
#endif
#endif
