/* gemm_fp8.h - y = x . W^T with e4m3 operands and per-tensor scales: the CPU twin of
 * kernels/cuda/gemm_fp8.cu (cuBLASLt and the FP8 GEMVs), rounding exactly as they do, so CPU and
 * GPU differ only by float32 summation order. */
#ifndef GM_CPU_GEMM_FP8_H
#define GM_CPU_GEMM_FP8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif
#endif
