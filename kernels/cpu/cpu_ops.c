/* cpu_ops.c - elementwise ops, RoPE, paged KV write and attention of the CPU reference. */
#include "cpu_ops.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* One element of a weight vector as float32. */
static inline float wget(const void *w, gm_dtype dt, int64_t i)
{
    switch (dt) {
    case GM_DT_F32:
        return ((const float *)w)[i];
    case GM_DT_BF16:
        return gm_bf16_to_f32(((const uint16_t *)w)[i]);
    case GM_DT_F16:
        return gm_f16_to_f32(((const uint16_t *)w)[i]);
    default: {
        float f;
        gm_to_f32(dt, (const char *)w + (size_t)i * gm_dtype_size(dt), &f, 1);
        return f;
    }
    }
}

void cpu_embed(const void *table, gm_dtype dt, int64_t hidden, const int32_t *ids, int64_t n, float normalizer,
               float *out)
{
    size_t row = (size_t)hidden * gm_dtype_size(dt);
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * hidden;
        gm_to_f32(dt, (const char *)table + (size_t)ids[t] * row, o, hidden);
        for (int64_t i = 0; i < hidden; i++)
            o[i] *= normalizer;
    }
}

void cpu_rmsnorm(const float *x, const void *w, gm_dtype wdt, int64_t n, int64_t dim, float eps, float *out)
{
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * dim;
        float *o = out + t * dim;
        double ss = 0.0; /* sum of squares in double: exact enough to be order-insensitive */
        for (int64_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        float r = 1.0f / sqrtf((float)(ss / (double)dim) + eps);
        for (int64_t i = 0; i < dim; i++)
            o[i] = xr[i] * r * (1.0f + wget(w, wdt, i));
    }
}

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

float cpu_gelu_tanh(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

void cpu_geglu(const float *gate, const float *up, int64_t T, int64_t n, float *out)
{
    int64_t m = T * n;
    for (int64_t i = 0; i < m; i++)
        out[i] = cpu_gelu_tanh(gate[i]) * up[i];
}

/* Address of (position pos, kv head g) in a pool [num_blocks, n_kv, block_size, head_dim]. */
static inline int64_t kv_off(const int32_t *bt, int32_t bs, int64_t pos, int64_t g, int64_t n_kv, int64_t hd)
{
    int64_t blk = bt[pos / bs], off = pos % bs;
    return ((blk * n_kv + g) * bs + off) * hd;
}

void cpu_kv_write(float *k_pool, float *v_pool, const int32_t *block_table, int32_t block_size, int32_t start_pos,
                  int64_t T, int64_t n_kv, int64_t head_dim, const float *k, const float *v)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < n_kv; g++) {
            int64_t o = kv_off(block_table, block_size, start_pos + t, g, n_kv, head_dim);
            memcpy(k_pool + o, k + (t * n_kv + g) * head_dim, (size_t)head_dim * sizeof(float));
            memcpy(v_pool + o, v + (t * n_kv + g) * head_dim, (size_t)head_dim * sizeof(float));
        }
}

/* Float dot product in 8 lanes, folded in a fixed order. */
static inline float dot_f(const float *a, const float *b, int64_t n)
{
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0, n8 = n & ~(int64_t)7;
    for (; i < n8; i += 8)
        for (int j = 0; j < 8; j++)
            l[j] += a[i + j] * b[i + j];
    float s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Two passes over the keys (max, then exp-weighted sum of values) so that no
 * scratch the size of the context is needed; out doubles as the accumulator. */
void cpu_attention_paged(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                         int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                         int32_t block_size, float scale, float *out)
{
    int64_t group = n_heads / n_kv;
    for (int64_t t = 0; t < T; t++) {
        int64_t n_ctx = (int64_t)start_pos + t + 1;
        for (int64_t h = 0; h < n_heads; h++) {
            const float *qv = q + (t * n_heads + h) * head_dim;
            float *o = out + (t * n_heads + h) * head_dim;
            int64_t g = h / group;
            float mx = -INFINITY;
            for (int64_t j = 0; j < n_ctx; j++) {
                float s = dot_f(qv, k_pool + kv_off(block_table, block_size, j, g, n_kv, head_dim), head_dim) * scale;
                if (s > mx)
                    mx = s;
            }
            for (int64_t d = 0; d < head_dim; d++)
                o[d] = 0.0f;
            float sum = 0.0f;
            for (int64_t j = 0; j < n_ctx; j++) {
                int64_t off = kv_off(block_table, block_size, j, g, n_kv, head_dim);
                float s = dot_f(qv, k_pool + off, head_dim) * scale;
                float e = expf(s - mx);
                sum += e;
                const float *vv = v_pool + off;
                for (int64_t d = 0; d < head_dim; d++)
                    o[d] += e * vv[d];
            }
            float inv = 1.0f / sum;
            for (int64_t d = 0; d < head_dim; d++)
                o[d] *= inv;
        }
    }
}

int64_t cpu_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}
