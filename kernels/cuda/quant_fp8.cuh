/* quant_fp8.cuh - FP8 e4m3 quantization: weights at load (per-tensor scale), activations (a plain
 * quantizer, e.g. for the attention output; static or dynamic per-tensor scale), the dequantizer, and
 * the activation-quantizer type k_fp8_act that the fused producers take too: k_rmsnorm_fp8 /
 * k_add_rmsnorm_fp8 (norm.cuh), k_geglu_fp8 (geglu.cuh); the FP8 KV write is k_kv_write_fp8
 * (rope_kv.cuh). CPU twin: kernels/cpu/quant_fp8.h.
 *
 * Scales are dequant multipliers in device memory (x ~= e4m3 * scale), scale = max(amax, 1e-12) / 448,
 * and quantizing computes e4m3_satfinite(x * (1.0f / scale)): bit for bit what kernels/cpu/quant_fp8.h
 * does. Activations are rounded to bf16 first (the value the unfused bf16 kernel would have stored), so
 * fused == rmsnorm/geglu then k_fp8_quantize. */
#ifndef GM_K_QUANT_FP8_CUH
#define GM_K_QUANT_FP8_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How an activation is quantized (all pointers device memory, borrowed).
 * Static: amax == NULL; scale [1] f32 holds the calibrated input_scale and is only read.
 * Dynamic: amax [1] f32 scratch and tmp [rows, dim] bf16 scratch are given; the launcher zeroes
 * amax (cudaMemsetAsync, capturable), one kernel writes the bf16 values to tmp and the max |x| to
 * amax, a second writes scale = max(amax, 1e-12)/448 and quantizes tmp. scale then feeds
 * k_gemm_fp8's x_scale. */
typedef struct k_fp8_act {
    float *scale;
    float *amax;
    void *tmp;
} k_fp8_act;

/* Per-tensor weight quantization at load: *scale = max|w| / 448, q = e4m3(w / scale).
 * w [n] bf16; q [n] e4m3; scale [1] f32 (written); amax [1] f32 scratch. */
gm_status k_fp8_quantize_weight(const void *w, int64_t n, float *scale, float *amax, void *q, cudaStream_t s);

/* q = e4m3(x / scale) with a scale already in device memory (a checkpoint's weight_scale, or a
 * requantization to a shared scale).   x [n] bf16; q [n] e4m3 */
gm_status k_fp8_quantize_static(const void *x, int64_t n, const float *scale, void *q, cudaStream_t s);

/* Quantize an activation.   x [rows, dim] bf16 (row stride ldx); q [rows, dim] e4m3 (dense).
 * dim % 8 == 0, ldx % 8 == 0. Dynamic mode reads x twice (amax, then quantize) and needs no tmp. */
gm_status k_fp8_quantize(const void *x, int64_t ldx, int64_t rows, int64_t dim, const k_fp8_act *a, void *q,
                         cudaStream_t s);

/* out = bf16(e4m3 * scale) (tests, debugging, a bf16 fallback).   q [n] e4m3; out [n] bf16;
 * scale [1] f32 device. */
gm_status k_fp8_dequantize(const void *q, int64_t n, const float *scale, void *out, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/* Device helpers for kernels that read e4m3 (e.g. a prefill attention over an FP8 KV pool). */
#include <cuda_fp16.h>
#include <cuda_fp8.h>

/* 8 e4m3 (8 bytes) -> 8 floats, times scale. */
__device__ __forceinline__ void fp8x8_to_f32(const uint2 &v, float scale, float f[8])
{
    const __nv_fp8x2_storage_t *p = reinterpret_cast<const __nv_fp8x2_storage_t *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(p[i], __NV_E4M3);
        float2 t = __half22float2(*reinterpret_cast<__half2 *>(&h));
        f[2 * i] = t.x * scale;
        f[2 * i + 1] = t.y * scale;
    }
}

/* 8 floats -> 8 e4m3, each e4m3_satfinite(f * inv), round to nearest even. */
__device__ __forceinline__ uint2 f32x8_to_fp8(const float f[8], float inv)
{
    uint2 r;
    uint16_t *p = reinterpret_cast<uint16_t *>(&r);
#pragma unroll
    for (int i = 0; i < 4; i++)
        p[i] = __nv_cvt_float2_to_fp8x2(make_float2(f[2 * i] * inv, f[2 * i + 1] * inv), __NV_SATFINITE,
                                        __NV_E4M3);
    return r;
}
#endif

#endif
