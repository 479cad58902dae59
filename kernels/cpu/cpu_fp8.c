/* cpu_fp8.c - FP8 e4m3 quantization, matmul and KV-cache twins (see cpu_fp8.h). */
#include "cpu_fp8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

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

static int matmul_q(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                    int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy, int round)
{
    float lut[256];
    for (int i = 0; i < 256; i++)
        lut[i] = gm_e4m3_to_f32((uint8_t)i);
    float *xf = malloc((size_t)(T * K) * sizeof(float));
    if (!xf)
        return -1;
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++)
            xf[t * K + k] = lut[xq[t * ldx + k]];
    /* products of two e4m3 values are exact in float32; only the sum rounds */
    cpu_matmul(xf, T, K, K, Wq, GM_DT_F8_E4M3, ldw, N, y, ldy);
    float s = x_scale * w_scale;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++)
            y[t * ldy + j] = round ? gm_round_bf16(y[t * ldy + j] * s) : y[t * ldy + j] * s;
    free(xf);
    return 0;
}

int cpu_fp8_matmul_q(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                     int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    return matmul_q(xq, T, K, ldx, x_scale, Wq, ldw, N, w_scale, y, ldy, 1);
}

int cpu_fp8_matmul_q_f32(const uint8_t *xq, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                         int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    return matmul_q(xq, T, K, ldx, x_scale, Wq, ldw, N, w_scale, y, ldy, 0);
}

int cpu_fp8_matmul(const float *x, int64_t T, int64_t K, int64_t ldx, float x_scale, const uint8_t *Wq,
                    int64_t ldw, int64_t N, float w_scale, float *y, int64_t ldy)
{
    uint8_t *xq = malloc((size_t)(T * K));
    if (!xq)
        return -1;
    for (int64_t t = 0; t < T; t++)
        cpu_fp8_quantize_act(x + t * ldx, K, x_scale, xq + t * K);
    int rc = cpu_fp8_matmul_q(xq, T, K, K, x_scale, Wq, ldw, N, w_scale, y, ldy);
    free(xq);
    return rc;
}

static inline int64_t kv_off(const int32_t *bt, int32_t bs, int64_t pos, int64_t g, int64_t n_kv, int64_t hd)
{
    int64_t blk = bt[pos / bs];
    return ((blk * n_kv + g) * bs + pos % bs) * hd;
}

void cpu_fp8_kv_write(uint8_t *k8, uint8_t *v8, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                      int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v, float kv_scale)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < n_kv; g++) {
            int64_t o = kv_off(block_table, block_size, start_pos + t, g, n_kv, head_dim);
            cpu_fp8_quantize_act(k + (t * n_kv + g) * head_dim, head_dim, kv_scale, k8 + o);
            cpu_fp8_quantize_act(v + (t * n_kv + g) * head_dim, head_dim, kv_scale, v8 + o);
        }
}

int cpu_fp8_attention_paged(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, const uint8_t *k8, const uint8_t *v8, const int32_t *block_table,
                            int32_t block_size, float scale, float kv_scale, float *out)
{
    int64_t n_ctx = (int64_t)start_pos + T;
    int64_t nb = (n_ctx + block_size - 1) / block_size;
    int64_t blk_elems = n_kv * block_size * head_dim;
    float *kf = malloc((size_t)(nb * blk_elems) * sizeof(float));
    float *vf = malloc((size_t)(nb * blk_elems) * sizeof(float));
    int32_t *bt = malloc((size_t)(nb > 0 ? nb : 1) * sizeof(int32_t));
    if (!kf || !vf || !bt) {
        free(kf);
        free(vf);
        free(bt);
        return -1;
    }
    /* compact copy: logical block i -> local block i */
    for (int64_t i = 0; i < nb; i++) {
        int64_t src = (int64_t)block_table[i] * blk_elems;
        cpu_fp8_dequantize(k8 + src, blk_elems, kv_scale, kf + i * blk_elems);
        cpu_fp8_dequantize(v8 + src, blk_elems, kv_scale, vf + i * blk_elems);
        bt[i] = (int32_t)i;
    }
    cpu_attention_paged(q, T, start_pos, n_heads, n_kv, head_dim, kf, vf, bt, block_size, scale, out);
    free(kf);
    free(vf);
    free(bt);
    return 0;
}
