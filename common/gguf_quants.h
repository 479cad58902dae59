/* gguf_quants.h - dequantize GGUF (ggml) tensor blocks to float32 or bf16.
 *
 * Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
 * The float32 results equal the gguf Python package's `gguf.quants.dequantize` bit for bit
 * (same operations in the same order, no fused multiply-add); bf16 is that float32 rounded
 * to nearest even. */
#ifndef GM_GGUF_QUANTS_H
#define GM_GGUF_QUANTS_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether gguf_dequant_* handle this gguf_type. */
bool gguf_can_dequant(uint32_t type);

/* Dequantize n elements (a multiple of the type's block size) of `type` at src (n / block * block_bytes
 * bytes, any alignment) into dst [n] float32. GM_ERR_UNSUPPORTED for a type gguf_can_dequant refuses,
 * GM_ERR_INVALID_ARG for an n that is not whole blocks. */
gm_status gguf_dequant_f32(uint32_t type, const void *src, float *dst, int64_t n);
/* The same into dst [n] bf16 (as uint16_t bits), rounded to nearest even. */
gm_status gguf_dequant_bf16(uint32_t type, const void *src, uint16_t *dst, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
