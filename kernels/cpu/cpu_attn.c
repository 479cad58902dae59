/* cpu_attn.c - reference attention with soft-capping and a sliding window (double precision). */
#include "cpu_attn.h"

#include <math.h>
#include <stdlib.h>

/* Offset of position pos, KV head g in a [num_blocks, n_kv, block_size, head_dim] pool. */
static int64_t attn_kv_off(const int32_t *bt, int32_t bs, int64_t pos, int64_t g, int64_t n_kv, int64_t hd)
{
    return (((int64_t)bt[pos / bs] * n_kv + g) * bs + pos % bs) * hd;
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
                const float *kv = k_pool + attn_kv_off(block_table, block_size, j, g, n_kv, head_dim);
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
                const float *vv = v_pool + attn_kv_off(block_table, block_size, j, g, n_kv, head_dim);
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
