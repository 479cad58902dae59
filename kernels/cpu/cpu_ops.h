/* cpu_ops.h - the plain-C reference ops of the Gemma forward pass (float32 arithmetic).
 *
 * These are the CPU backend and the twins every CUDA kernel is tested against.
 * Activations are float32 row-major; weights may be bf16, f16, f32 (or e4m3
 * with a scale, for the FP8 twin) and are converted as they are read. */
#ifndef GM_CPU_OPS_H
#define GM_CPU_OPS_H

#include <stdint.h>

#include "../../common/dtype.h"
#include "../../common/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, :] = table[ids[t], :] * normalizer.   table [vocab, hidden] dt; out [n, hidden] f32 */
void cpu_embed(const void *table, gm_dtype dt, int64_t hidden, const int32_t *ids, int64_t n, float normalizer,
               float *out);

/* Gemma RMSNorm: out = x * rsqrt(mean(x^2) + eps) * (1 + w).   x, out [n, dim] f32 (may alias); w [dim] dt */
void cpu_rmsnorm(const float *x, const void *w, gm_dtype wdt, int64_t n, int64_t dim, float eps, float *out);

/* y[t, j] = sum_k x[t, k] * W[j, k].   x [T, K] (row stride ldx); W [N, K] dt (row stride ldw
 * elements, so a column slice of a larger matrix works); y [T, N] (row stride ldy). Each output
 * is a float32 dot product whose order does not depend on T (batch invariance). */
void cpu_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                int64_t N, float *y, int64_t ldy);

/* As cpu_matmul, accumulating in double and writing double: the partial sums that the
 * tensor-parallel ranks all-reduce, so that tp=N rounds like tp=1. */
void cpu_matmul_f64(const float *x, int64_t T, int64_t K, int64_t ldx, const void *W, gm_dtype wdt, int64_t ldw,
                    int64_t N, double *y, int64_t ldy);

/* RoPE, rotate-half (NeoX) layout over all head_dim dims, in place.
 * x [T, n_heads, head_dim] f32; token t sits at position pos[t].
 * inv_freq_i = theta^(-2i/head_dim) (float32), angle = pos * inv_freq_i (float32). */
void cpu_rope(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta);

/* tanh-approximation GELU. */
float cpu_gelu_tanh(float x);

/* out[t, i] = gelu_tanh(gate[t, i]) * up[t, i].   gate, up, out [T, n] (out may alias gate) */
void cpu_geglu(const float *gate, const float *up, int64_t T, int64_t n, float *out);

/* Paged KV pool of one layer: k and v each [num_blocks, n_kv, block_size, head_dim] f32.
 * Write the keys/values of T tokens at positions start_pos.. of one sequence.
 * k, v [T, n_kv, head_dim]; block_table [*] maps logical block -> physical block. */
void cpu_kv_write(float *k_pool, float *v_pool, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                  int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v);

/* Causal attention of T new query tokens (positions start_pos..start_pos+T-1) of one
 * sequence over its paged KV (positions 0..start_pos+T-1 already written).
 * q [T, n_heads, head_dim]; out [T, n_heads, head_dim]; query head h reads KV head
 * h / (n_heads / n_kv). scale = 1/sqrt(head_dim) for Gemma. Softmax in float32. */
void cpu_attention_paged(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                         int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                         int32_t block_size, float scale, float *out);

/* Sample one id from logits [vocab] (not modified): argmax when greedy (ties to the
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
