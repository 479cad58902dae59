/* rope_kv.h - RoPE and the paged KV-cache write, bf16-rounded f32 or FP8 e4m3 pools (CPU twins of
 * kernels/cuda/rope_kv.cu). */
#ifndef GM_CPU_ROPE_KV_H
#define GM_CPU_ROPE_KV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RoPE, rotate-half (NeoX) layout over all head_dim dims, in place.
 * x [T, n_heads, head_dim] f32; token t sits at position pos[t].
 * inv_freq_i = theta^(-2i/head_dim) (float32), angle = pos * inv_freq_i (float32). */
void cpu_rope(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta);

/* Element offset of (position pos, KV head g) in one layer's pool [num_blocks, n_kv, block_size,
 * head_dim], through the sequence's block table bt (logical block -> physical block). */
static inline int64_t cpu_kv_offset(const int32_t *bt, int32_t bs, int64_t pos, int64_t g, int64_t n_kv, int64_t hd)
{
    int64_t blk = bt[pos / bs], off = pos % bs;
    return ((blk * n_kv + g) * bs + off) * hd;
}

/* Paged KV pool of one layer: k and v each [num_blocks, n_kv, block_size, head_dim] f32.
 * Write the keys/values of T tokens at positions start_pos.. of one sequence.
 * k, v [T, n_kv, head_dim]; block_table [*] maps logical block -> physical block. */
void cpu_kv_write(float *k_pool, float *v_pool, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                  int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v);

/* FP8 paged KV pool of one layer: k8, v8 each [num_blocks, n_kv, block_size, head_dim] e4m3,
 * one scalar kv_scale for K and V (vLLM/TRT-LLM convention): stored = e4m3(bf16(x) / kv_scale)
 * (as inv multiply), read = e4m3_value * kv_scale. Writes T tokens at start_pos.. of one
 * sequence.   k, v [T, n_kv, head_dim] f32 (rounded to bf16 first, as the GPU writer sees bf16) */
void cpu_fp8_kv_write(uint8_t *k8, uint8_t *v8, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                      int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v, float kv_scale);

/* RoPE (rotate-half layout) as cpu_rope, in place on x [T, n_heads, head_dim] f32 at positions pos[T],
 * with linear scaling: inv_freq_i = theta^(-2i/head_dim) / scale (float32, as transformers divides its
 * inv_freq by the factor), angle = pos * inv_freq_i. scale 1 gives cpu_rope's values exactly. */
void cpu_rope_scaled(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta,
                     float scale);

#ifdef __cplusplus
}
#endif
#endif
