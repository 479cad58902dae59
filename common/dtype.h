/* dtype.h - element types of tensors on disk and in memory, and scalar conversions. */
#ifndef GM_DTYPE_H
#define GM_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gm_dtype {
    GM_DT_F32 = 0,
    GM_DT_F16,
    GM_DT_BF16,
    GM_DT_F64,
    GM_DT_I64,
    GM_DT_I32,
    GM_DT_I16,
    GM_DT_I8,
    GM_DT_U8,
    GM_DT_BOOL,
    GM_DT_F8_E4M3,
    GM_DT_F8_E5M2,
    GM_DT_COUNT
} gm_dtype;

/* Bytes per element. */
size_t gm_dtype_size(gm_dtype t);
/* safetensors spelling ("BF16", "F32", "F8_E4M3", ...). */
const char *gm_dtype_name(gm_dtype t);
/* Parse the safetensors spelling; returns -1 if unknown. */
int gm_dtype_parse(const char *s, size_t len);

static inline float gm_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t gm_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Round a float to the nearest bf16 value, returned as float. */
static inline float gm_round_bf16(float f) { return gm_bf16_to_f32(gm_f32_to_bf16(f)); }

float gm_f16_to_f32(uint16_t h);
uint16_t gm_f32_to_f16(float f);

/* FP8 e4m3 (OCP "FN": max 448, no inf, NaN 0x7f/0xff); saturating, round to nearest even. */
float gm_e4m3_to_f32(uint8_t v);
uint8_t gm_f32_to_e4m3(float f);

/* Convert n elements of type t at src to float32. */
void gm_to_f32(gm_dtype t, const void *src, float *dst, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
