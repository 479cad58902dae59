/* quant_fp8.h - FP8 e4m3 codes and per-tensor quantization: the CPU twin of
 * kernels/cuda/quant_fp8.cu (and of the quantizing tails of kernels/cuda/norm.cu and geglu.cu).
 * Each function rounds exactly as its GPU kernel does. The FP8 GEMM twin is gemm_fp8.h, the FP8
 * KV write rope_kv.h, the attention over an FP8 pool attn.h.
 *
 * Conventions: a per-tensor scale is a dequant multiplier,
 * x ~= e4m3 * scale, scale = max(amax, CPU_FP8_MIN_AMAX) / 448. Quantizing multiplies
 * by inv = 1.0f / scale (one float32 division, then one multiply per element) and
 * rounds to nearest even, saturating at +-448 (cvt.rn.satfinite.e4m3). */
#ifndef GM_CPU_QUANT_FP8_H
#define GM_CPU_QUANT_FP8_H

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

#ifdef __cplusplus
}
#endif
#endif
