/* quant_fp8.c - FP8 e4m3 codes, scales and per-tensor quantization (see quant_fp8.h). */
#include "quant_fp8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


uint8_t cpu_fp8_e4m3(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) /* NaN */
        return 0x7f;
    if (u >= 0x43e00000u) /* >= 448 (and inf): saturate */
        return sign | 0x7e;
    if (u < 0x3c800000u) { /* below 2^-6: subnormal grid of 2^-9 (m = 8 is the smallest normal, 0x08) */
        float a;
        memcpy(&a, &u, 4);
        return sign | (uint8_t)lrintf(a * 512.0f); /* exact product, ties to even */
    }
    /* normal: keep 3 mantissa bits, ties to even, re-bias the exponent 127 -> 7 */
    uint32_t r = u + 0x7ffffu + ((u >> 20) & 1u);
    return sign | (uint8_t)((r >> 20) - (120u << 3));
}

float cpu_fp8_scale(float amax)
{
    return fmaxf(amax, CPU_FP8_MIN_AMAX) / CPU_FP8_MAX;
}

static float elem(const void *x, gm_dtype dt, int64_t i)
{
    switch (dt) {
    case GM_DT_BF16:
        return gm_bf16_to_f32(((const uint16_t *)x)[i]);
    case GM_DT_F16:
        return gm_f16_to_f32(((const uint16_t *)x)[i]);
    case GM_DT_F8_E4M3:
        return gm_e4m3_to_f32(((const uint8_t *)x)[i]);
    default:
        return ((const float *)x)[i];
    }
}

float cpu_fp8_amax(const void *x, gm_dtype dt, int64_t n)
{
    float m = 0.0f;
    if (dt == GM_DT_BF16) { /* the checkpoint case: max over the bits, no float conversion */
        const uint16_t *s = x;
        uint16_t mb = 0;
        for (int64_t i = 0; i < n; i++) {
            uint16_t a = s[i] & 0x7fffu;
            if (a <= 0x7f80u && a > mb)
                mb = a;
        }
        return gm_bf16_to_f32(mb);
    }
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(elem(x, dt, i));
        if (a > m) /* false for NaN */
            m = a;
    }
    return m;
}

void cpu_fp8_quantize(const void *x, gm_dtype dt, int64_t n, float scale, uint8_t *q)
{
    float inv = 1.0f / scale;
    if (dt == GM_DT_BF16) {
        const uint16_t *s = x;
        for (int64_t i = 0; i < n; i++)
            q[i] = cpu_fp8_e4m3(gm_bf16_to_f32(s[i]) * inv);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        q[i] = cpu_fp8_e4m3(elem(x, dt, i) * inv);
}

void cpu_fp8_quantize_act(const float *x, int64_t n, float scale, uint8_t *q)
{
    float inv = 1.0f / scale;
    for (int64_t i = 0; i < n; i++)
        q[i] = cpu_fp8_e4m3(gm_round_bf16(x[i]) * inv);
}

float cpu_fp8_act_scale(const float *x, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(gm_round_bf16(x[i]));
        if (a > m)
            m = a;
    }
    return cpu_fp8_scale(m);
}

float cpu_fp8_lm_head_act_scale(const void *w, gm_dtype dt, int64_t H)
{
    float m = 0.0f, v;
    size_t es = gm_dtype_size(dt);
    for (int64_t i = 0; i < H; i++) {
        gm_to_f32(dt, (const char *)w + (size_t)i * es, &v, 1);
        float a = fabsf(1.0f + v);
        if (a > m)
            m = a;
    }
    return cpu_fp8_scale(sqrtf((float)H) * m);
}

void cpu_fp8_dequantize(const uint8_t *q, int64_t n, float scale, float *x)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = gm_e4m3_to_f32(q[i]) * scale;
}
