/* attn.c - causal attention over a paged KV pool, f32 and FP8 (see attn.h). */
#include "attn.h"

#include <math.h>
#include <stdlib.h>

#include "quant_fp8.h"
#include "rope_kv.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

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
                const float *kj = k_pool + cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim);
                float s = dot_f(qv, kj, head_dim) * scale;
                if (s > mx)
                    mx = s;
            }
            for (int64_t d = 0; d < head_dim; d++)
                o[d] = 0.0f;
            float sum = 0.0f;
            for (int64_t j = 0; j < n_ctx; j++) {
                int64_t off = cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim);
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
