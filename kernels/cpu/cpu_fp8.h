/* cpu_fp8.h - FP8 e4m3 twins of the CUDA FP8 kernels: per-tensor quantization, the FP8
 * matmul, and the FP8 paged KV cache. Each function rounds exactly as its GPU kernel does,
 * so CPU and GPU results differ only by float32 summation order.
 *
 * Conventions (FACTS.md section 3): a per-tensor scale is a dequant multiplier,
 * x ~= e4m3 * scale, scale = max(amax, CPU_FP8_MIN_AMAX) / 448. Quantizing multiplies
 * by inv = 1.0f / scale (one float32 division, then one multiply per element) and
 * rounds to nearest even, saturating at +-448 (cvt.rn.satfinite.e4m3). */
#ifndef GM_CPU_FP8_H
#define GM_CPU_FP8_H

#include <stdint.h>

#include "../../common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CPU_FP8_MAX 448.0f
#define CPU_FP8_MIN_AMAX 1e-12f /* an all-zero tensor still gets a finite, invertible scale */

/* e4m3 code of f (round to nearest even, saturating; NaN -> 0x7f). Same result as
 * gm_f32_to_e4m3, by bit arithmetic (fast enough for a 7B checkpoint). */
uint8_t cpu_fp8_e4m3(float f);

/* scale = max(amax, CPU_FP8_MIN_AMAX) / 448. */
float cpu_fp8_scale(float amax);

/* max |x| over n elements of type dt (f32, bf16, f16 or e4m3). NaN is ignored. */
float cpu_fp8_amax(const void *x, gm_dtype dt, int64_t n);

/* q[i] = e4m3(x[i] * (1.0f / scale)).   x [n] dt (f32, bf16, f16); q [n] e4m3 */
void cpu_fp8_quantize(const void *x, gm_dtype dt, int64_t n, float scale, uint8_t *q);

/* Activation quantization as the fused GPU kernels do it: each value is first rounded to
 * bf16 (what the unfused bf16 kernel would store), then quantized.   x [n] f32; q [n] e4m3 */
void cpu_fp8_quantize_act(const float *x, int64_t n, float scale, uint8_t *q);

/* Dynamic scale of an activation: cpu_fp8_scale(max |bf16(x)|).   x [n] f32 */
float cpu_fp8_act_scale(const float *x, int64_t n);

/* The static activation scale of an FP8 LM head: no RMS-normed row can exceed it, since
 * |x_i| / rms(x) <= sqrt(H): sqrtf(H) * max_i |1 + w_i| / 448, w the final norm's weight [H] of
 * type dt. Both engines use it (--lm-head fp8), so their logits agree and do not depend on the
 * batch; e4m3 keeps 3 mantissa bits over 2^14 of range, so values far below the bound lose no
 * precision until they are below 2^-6 of the scale times 448. */
float cpu_fp8_lm_head_act_scale(const void *w, gm_dtype dt, int64_t H);

/* x[i] = e4m3_value(q[i]) * scale.   q [n] e4m3; x [n] f32 */
void cpu_fp8_dequantize(const uint8_t *q, int64_t n, float scale, float *x);

/* The FP8 GEMM twin (cuBLASLt e4m3 x e4m3, float32 accumulation, bf16 output):
 *   y[t, j] = bf16( (sum_k xq[t, k] * Wq[j, k]) * (x_scale * w_scale) )
 * where xq = the e4m3 values of x quantized with x_scale (cpu_fp8_quantize_act: x rounded to
 * bf16 first). x [T, K] f32 (row stride ldx); Wq [N, K] e4m3 (row stride ldw);
 * y [T, N] f32 holding bf16-representable values (row stride ldy). Returns 0, or -1 when out of
 * memory (staging copy of x). */
int cpu_fp8_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                    int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy);

/* As cpu_fp8_matmul with x already quantized.   xq [T, K] e4m3 (row stride ldx) */
int cpu_fp8_matmul_q(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                      int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy);

/* As cpu_fp8_matmul_q with float32 output (no bf16 rounding): gemm_fp8's y_f32 = 1. */
int cpu_fp8_matmul_q_f32(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                         int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy);

/* FP8 paged KV pool of one layer: k8, v8 each [num_blocks, n_kv, block_size, head_dim] e4m3,
 * one scalar kv_scale for K and V (vLLM/TRT-LLM convention): stored = e4m3(bf16(x) / kv_scale)
 * (as inv multiply), read = e4m3_value * kv_scale. Writes T tokens at start_pos.. of one
 * sequence.   k, v [T, n_kv, head_dim] f32 (rounded to bf16 first, as the GPU writer sees bf16) */
void cpu_fp8_kv_write(uint8_t *k8, uint8_t *v8, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                      int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v, float kv_scale);

/* cpu_attention_paged over an FP8 pool: the blocks of this sequence (positions
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
