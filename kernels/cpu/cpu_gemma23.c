/* cpu_gemma23.c - soft-capping, QK-norm, scaled RoPE and windowed, soft-capped paged attention. */
#include "cpu_gemma23.h"

#include <math.h>

#include "cpu_ops.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

void cpu_softcap(float *x, int64_t n, float cap)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = tanhf(x[i] / cap) * cap;
}

void cpu_head_rmsnorm(float *x, int64_t T, int64_t n_heads, int64_t head_dim, const void *w, gm_dtype wdt, float eps)
{
    cpu_rmsnorm(x, w, wdt, T * n_heads, head_dim, eps, x); /* one row per (token, head) */
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

/* Element offset of (position pos, KV head g) in a pool [num_blocks, n_kv, block_size, head_dim]. */
static inline int64_t pool_at(const int32_t *bt, int32_t bs, int64_t pos, int64_t g, int64_t n_kv, int64_t hd)
{
    return (((int64_t)bt[pos / bs] * n_kv + g) * bs + pos % bs) * hd;
}

/* The attention score of query vector qv against the key at element offset `at`. */
static inline float score_at(const float *qv, const float *k_pool, int64_t at, int64_t hd, float scale, float cap)
{
    double d = 0.0;
    for (int64_t i = 0; i < hd; i++)
        d += (double)qv[i] * (double)k_pool[at + i];
    float s = (float)d * scale;
    return cap > 0.0f ? tanhf(s / cap) * cap : s;
}

void cpu_attention_paged_ex(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                            int32_t block_size, float scale, float softcap, int32_t window, float *out)
{
    int64_t group = n_heads / n_kv;
    for (int64_t t = 0; t < T; t++) {
        int64_t p = (int64_t)start_pos + t, j0 = cpu_window_start(p, window);
        for (int64_t h = 0; h < n_heads; h++) {
            const float *qv = q + (t * n_heads + h) * head_dim;
            float *o = out + (t * n_heads + h) * head_dim;
            int64_t g = h / group;
            float mx = -INFINITY, sum = 0.0f;
            for (int64_t j = j0; j <= p; j++) {
                float s = score_at(qv, k_pool, pool_at(block_table, block_size, j, g, n_kv, head_dim), head_dim,
                                   scale, softcap);
                mx = s > mx ? s : mx;
            }
            for (int64_t d = 0; d < head_dim; d++)
                o[d] = 0.0f;
            for (int64_t j = j0; j <= p; j++) {
                int64_t at = pool_at(block_table, block_size, j, g, n_kv, head_dim);
                float e = expf(score_at(qv, k_pool, at, head_dim, scale, softcap) - mx);
                sum += e;
                for (int64_t d = 0; d < head_dim; d++)
                    o[d] += e * v_pool[at + d];
            }
            for (int64_t d = 0; d < head_dim; d++)
                o[d] /= sum;
        }
    }
}
