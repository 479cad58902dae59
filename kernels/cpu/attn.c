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

void cpu_softcap(float *x, int64_t n, float cap)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = tanhf(x[i] / cap) * cap;
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
                float s = score_at(qv, k_pool, cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim), head_dim,
                                   scale, softcap);
                mx = s > mx ? s : mx;
            }
            for (int64_t d = 0; d < head_dim; d++)
                o[d] = 0.0f;
            for (int64_t j = j0; j <= p; j++) {
                int64_t at = cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim);
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

int cpu_attention_paged_opts(const float *q, int64_t T, int32_t start_pos, int64_t n_heads, int64_t n_kv,
                             int64_t head_dim, const float *k_pool, const float *v_pool, const int32_t *block_table,
                             int32_t block_size, const cpu_attn_opts *opt, float *out)
{
    if (T < 0 || start_pos < 0 || n_kv < 1 || n_heads % n_kv || head_dim < 1 || block_size < 1 || !opt)
        return -1;
    int64_t n_ctx = (int64_t)start_pos + T, group = n_heads / n_kv;
    double *s = malloc((size_t)(n_ctx > 0 ? n_ctx : 1) * sizeof(double));
    double *o = malloc((size_t)head_dim * sizeof(double));
    if (!s || !o) {
        free(s);
        free(o);
        return -1;
    }
    for (int64_t t = 0; t < T; t++) {
        int64_t pos = (int64_t)start_pos + t;
        int64_t lo = opt->window > 0 && pos - opt->window + 1 > 0 ? pos - opt->window + 1 : 0;
        for (int64_t h = 0; h < n_heads; h++) {
            const float *qv = q + (t * n_heads + h) * head_dim;
            int64_t g = h / group;
            double mx = -INFINITY;
            for (int64_t j = lo; j <= pos; j++) {
                const float *kv = k_pool + cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim);
                double d = 0.0;
                for (int64_t i = 0; i < head_dim; i++)
                    d += (double)qv[i] * (double)kv[i];
                d *= (double)opt->scale;
                if (opt->softcap > 0.0f)
                    d = tanh(d / (double)opt->softcap) * (double)opt->softcap;
                s[j] = d;
                mx = d > mx ? d : mx;
            }
            for (int64_t i = 0; i < head_dim; i++)
                o[i] = 0.0;
            double sum = 0.0;
            for (int64_t j = lo; j <= pos; j++) {
                double e = exp(s[j] - mx);
                const float *vv = v_pool + cpu_kv_offset(block_table, block_size, j, g, n_kv, head_dim);
                sum += e;
                for (int64_t i = 0; i < head_dim; i++)
                    o[i] += e * (double)vv[i];
            }
            float *ov = out + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < head_dim; i++)
                ov[i] = (float)(o[i] / sum);
        }
    }
    free(s);
    free(o);
    return 0;
}
