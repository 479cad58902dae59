/* rope_kv.c - RoPE and the paged KV write, f32 and FP8 pools (see rope_kv.h). */
#include "rope_kv.h"

#include <math.h>
#include <string.h>

#include "quant_fp8.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

void cpu_rope(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta)
{
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < T; t++) {
        float p = (float)pos[t];
        for (int64_t i = 0; i < half; i++) {
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            float ang = p * inv;
            float c = (float)cos((double)ang), s = (float)sin((double)ang);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = x + (t * n_heads + h) * head_dim;
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

void cpu_kv_write(float *k_pool, float *v_pool, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                  int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < n_kv; g++) {
            int64_t o = cpu_kv_offset(block_table, block_size, start_pos + t, g, n_kv, head_dim);
            memcpy(k_pool + o, k + (t * n_kv + g) * head_dim, (size_t)head_dim * sizeof(float));
            memcpy(v_pool + o, v + (t * n_kv + g) * head_dim, (size_t)head_dim * sizeof(float));
        }
}

void cpu_fp8_kv_write(uint8_t *k8, uint8_t *v8, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                      int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v, float kv_scale)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < n_kv; g++) {
            int64_t o = cpu_kv_offset(block_table, block_size, start_pos + t, g, n_kv, head_dim);
            cpu_fp8_quantize_act(k + (t * n_kv + g) * head_dim, head_dim, kv_scale, k8 + o);
            cpu_fp8_quantize_act(v + (t * n_kv + g) * head_dim, head_dim, kv_scale, v8 + o);
        }
}

/* Rotate the pair (v[i], v[i + half]) by the angle whose cosine and sine are c, s. */
static inline void rotate_pair(float *v, int64_t i, int64_t half, float c, float s)
{
    float lo = v[i], hi = v[i + half];
    v[i] = lo * c - hi * s;
    v[i + half] = hi * c + lo * s;
}

void cpu_rope_scaled(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t *pos, float theta,
                     float scale)
{
    int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        inv = inv / scale; /* exact for scale 1 */
        for (int64_t t = 0; t < T; t++) {
            float ang = (float)pos[t] * inv;
            float c = (float)cos((double)ang), s = (float)sin((double)ang);
            for (float *v = x + t * n_heads * head_dim, *end = v + n_heads * head_dim; v < end; v += head_dim)
                rotate_pair(v, i, half, c, s);
        }
    }
}
