/* test_gpu_util.h - what the GPU kernel tests share: random bf16 inputs (both sides see the same rounded
 * values), device buffers (NaN-poisoned outputs), normalized errors, random block tables and KV pools.
 * Include after <cmocka.h> and tests/test_check.h; C only. */
#ifndef GM_TEST_GPU_UTIL_H
#define GM_TEST_GPU_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

#define CK(x) assert_int_equal((int)(x), 0)

static uint64_t g_rng = 0x1234567887654321ull; /* each test program draws its own sequence */

static inline float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static inline float nrand(void) /* roughly normal */
{
    return (frand() + frand() + frand()) * 1.0f;
}

/* n random values in [-scale, scale], rounded to bf16: f32 copy in *f, bf16 bits in *b. */
static inline void rand_bf16(int64_t n, float scale, float **f, uint16_t **b)
{
    *f = malloc((size_t)n * sizeof(float));
    *b = malloc((size_t)n * sizeof(uint16_t));
    assert_non_null(*f);
    assert_non_null(*b);
    for (int64_t i = 0; i < n; i++) {
        (*b)[i] = gm_f32_to_bf16(frand() * scale);
        (*f)[i] = gm_bf16_to_f32((*b)[i]);
    }
}

static inline void *dev_put(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 16));
    if (h)
        CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* A bf16 device buffer poisoned with NaN. */
static inline void *dev_poison_bf16(int64_t n)
{
    void *d = dev_put(NULL, (size_t)n * 2);
    CK(cudaMemset(d, 0xff, (size_t)n * 2));
    return d;
}

static inline float *get_bf16(const void *d, int64_t n)
{
    uint16_t *b = malloc((size_t)n * 2);
    float *f = malloc((size_t)n * sizeof(float));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(b, d, (size_t)n * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; i++)
        f[i] = gm_bf16_to_f32(b[i]);
    free(b);
    return f;
}

static inline float *get_f32(const void *d, int64_t n)
{
    float *f = malloc((size_t)n * sizeof(float));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(f, d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return f;
}

/* ||a - b|| / ||b||; NaN anywhere gives +inf. */
static inline double nerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

static inline void expect_close(const char *what, const float *gpu, const float *cpu, int64_t n, double tol)
{
    double e = nerr(gpu, cpu, n);
    printf("  %-44s nerr %.2e (tol %.0e)\n", what, e, tol);
    if (!(e <= tol))
        fail_msg("%s: normalized error %.3e > %.1e", what, e, tol);
}

/* A random block table: a permutation of nb blocks out of pool_blocks. */
static inline void rand_table(int32_t *bt, int32_t nb, int32_t pool_blocks)
{
    int32_t *perm = malloc((size_t)pool_blocks * sizeof(int32_t));
    for (int32_t i = 0; i < pool_blocks; i++)
        perm[i] = i;
    for (int32_t i = pool_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)(((frand() + 1.0f) * 0.5f) * (float)(i + 1)) % (i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(bt, perm, (size_t)nb * sizeof(int32_t));
    free(perm);
}

typedef struct attn_case {
    int32_t nh, nkv, hd, bs;
} attn_case;

/* Random K/V pools for n_seqs sequences of ctx[i] positions each; bt [n_seqs, max_blocks]. */
static inline void make_pools(const attn_case *ac, int32_t n_seqs, const int32_t *ctx, int32_t max_blocks,
                              int32_t *bt, int32_t *pool_blocks, float **kf, uint16_t **kb, float **vf, uint16_t **vb)
{
    int32_t total = 0;
    for (int32_t i = 0; i < n_seqs; i++)
        total += (ctx[i] + ac->bs - 1) / ac->bs;
    *pool_blocks = total + 3;
    int32_t *perm = malloc((size_t)*pool_blocks * 4);
    rand_table(perm, *pool_blocks, *pool_blocks);
    int32_t used = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t nb = (ctx[i] + ac->bs - 1) / ac->bs;
        for (int32_t j = 0; j < max_blocks; j++)
            bt[i * max_blocks + j] = j < nb ? perm[used + j] : 0;
        used += nb;
    }
    free(perm);
    int64_t elems = (int64_t)*pool_blocks * ac->nkv * ac->bs * ac->hd;
    rand_bf16(elems, 2.0f, kf, kb);
    rand_bf16(elems, 1.0f, vf, vb);
}

/* One fused q|k|v row [qw + 2 kw] f32 into q [qw], k [kw] and v [kw] (v may be NULL). */
static inline void qkv_row_split(const float *row, int64_t qw, int64_t kw, float *q, float *k, float *v)
{
    memcpy(q, row, (size_t)qw * 4);
    memcpy(k, row + qw, (size_t)kw * 4);
    if (v)
        memcpy(v, row + qw + kw, (size_t)kw * 4);
}

/* The token layout of a prefill step of n_seqs sequences, n_new[i] new tokens from start[i] each: ctx[i] =
 * start + n_new, qs[i] = the sequence's first token row; *max_ctx, *max_new, *T (total tokens). */
static inline void prefill_layout(int32_t n_seqs, const int32_t *start, const int32_t *nnew, int32_t *ctx, int32_t *qs,
                                  int32_t *max_ctx, int32_t *max_new, int32_t *T)
{
    *max_ctx = *max_new = *T = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        ctx[i] = start[i] + nnew[i];
        *max_ctx = ctx[i] > *max_ctx ? ctx[i] : *max_ctx;
        *max_new = nnew[i] > *max_new ? nnew[i] : *max_new;
        qs[i] = *T;
        *T += nnew[i];
    }
}

#endif
