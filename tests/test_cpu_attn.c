/* test_cpu_attn.c - cpu_attention_paged_opts, the Hopper prefill kernel's twin: equal to
 * cpu_attention_paged without options, soft-capping by the formula on a hand-sized case, the
 * sliding window by what it may and may not see, bad arguments refused. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope_kv.h"

static uint64_t g_rng = 0x5851f42d4c957f2dull;
static float frand(void) /* [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* A random pool of n_blocks x [n_kv, bs, hd] and a shuffled block table of n_blocks entries. */
typedef struct pool {
    int32_t n_blocks, n_kv, bs, hd;
    float *k, *v;
    int32_t *bt;
} pool;

static void pool_make(pool *p, int32_t n_blocks, int32_t n_kv, int32_t bs, int32_t hd)
{
    p->n_blocks = n_blocks, p->n_kv = n_kv, p->bs = bs, p->hd = hd;
    int64_t n = (int64_t)n_blocks * n_kv * bs * hd;
    p->k = malloc((size_t)n * 4), p->v = malloc((size_t)n * 4), p->bt = malloc((size_t)n_blocks * 4);
    assert_true(p->k && p->v && p->bt);
    for (int64_t i = 0; i < n; i++)
        p->k[i] = 2.0f * frand(), p->v[i] = frand();
    for (int32_t i = 0; i < n_blocks; i++)
        p->bt[i] = (i * 7 + 3) % n_blocks; /* 7 and n_blocks coprime in the tests */
}

static void pool_free(pool *p) { free(p->k), free(p->v), free(p->bt); }

static double max_diff(const float *a, const float *b, int64_t n)
{
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* No options: the same function as cpu_attention_paged (float vs double arithmetic). */
static void test_attn_plain(void **state)
{
    (void)state;
    pool p;
    pool_make(&p, 10, 2, 7, 32);
    const int32_t T = 37, start = 20, nh = 4;
    float *q = malloc((size_t)T * nh * 32 * 4), *a = malloc((size_t)T * nh * 32 * 4), *b = malloc((size_t)T * nh * 32 * 4);
    for (int64_t i = 0; i < (int64_t)T * nh * 32; i++)
        q[i] = 2.0f * frand();
    cpu_attn_opts o = {0.25f, 0.0f, 0};
    assert_int_equal(cpu_attention_paged_opts(q, T, start, nh, 2, 32, p.k, p.v, p.bt, 7, &o, a), 0);
    cpu_attention_paged(q, T, start, nh, 2, 32, p.k, p.v, p.bt, 7, 0.25f, b);
    assert_true(max_diff(a, b, (int64_t)T * nh * 32) < 1e-5);
    o.window = start + T; /* a window as long as the context changes nothing */
    assert_int_equal(cpu_attention_paged_opts(q, T, start, nh, 2, 32, p.k, p.v, p.bt, 7, &o, a), 0);
    assert_true(max_diff(a, b, (int64_t)T * nh * 32) < 1e-5);
    free(q), free(a), free(b);
    pool_free(&p);
}

/* Soft-capping on one query and two keys, by the formula. */
static void test_attn_softcap(void **state)
{
    (void)state;
    const float kk[2][2] = {{3.0f, 1.0f}, {-2.0f, 4.0f}}, vv[2][2] = {{1.0f, 0.0f}, {0.0f, 1.0f}};
    float k[4] = {kk[0][0], kk[0][1], kk[1][0], kk[1][1]}, v[4] = {vv[0][0], vv[0][1], vv[1][0], vv[1][1]};
    float q[2] = {2.0f, 1.5f}, out[2];
    int32_t bt[1] = {0};
    const float scale = 0.5f, cap = 2.0f;
    cpu_attn_opts o = {scale, cap, 0};
    assert_int_equal(cpu_attention_paged_opts(q, 1, 1, 1, 1, 2, k, v, bt, 2, &o, out), 0);
    double s0 = tanh((q[0] * kk[0][0] + q[1] * kk[0][1]) * scale / cap) * cap;
    double s1 = tanh((q[0] * kk[1][0] + q[1] * kk[1][1]) * scale / cap) * cap;
    double w0 = 1.0 / (1.0 + exp(s1 - s0)), w1 = 1.0 - w0;
    assert_true(fabs(out[0] - w0) < 1e-6 && fabs(out[1] - w1) < 1e-6);
}

/* The window: keys at or before pos - window do not matter, the oldest key inside it does. */
static void test_attn_window(void **state)
{
    (void)state;
    pool p;
    pool_make(&p, 9, 1, 8, 16);
    const int32_t pos = 50, W = 10, nh = 2;
    float q[2 * 16], a[2 * 16], b[2 * 16];
    for (int i = 0; i < 2 * 16; i++)
        q[i] = 2.0f * frand();
    cpu_attn_opts o = {0.25f, 0.0f, W};
    assert_int_equal(cpu_attention_paged_opts(q, 1, pos, nh, 1, 16, p.k, p.v, p.bt, 8, &o, a), 0);
    /* disturb key/value pos - W (outside): same output */
    int64_t off = ((int64_t)p.bt[(pos - W) / 8] * 8 + (pos - W) % 8) * 16;
    for (int d = 0; d < 16; d++)
        p.k[off + d] += 5.0f, p.v[off + d] += 5.0f;
    assert_int_equal(cpu_attention_paged_opts(q, 1, pos, nh, 1, 16, p.k, p.v, p.bt, 8, &o, b), 0);
    assert_true(max_diff(a, b, 2 * 16) == 0.0);
    /* disturb pos - W + 1 (inside): the output moves */
    off = ((int64_t)p.bt[(pos - W + 1) / 8] * 8 + (pos - W + 1) % 8) * 16;
    for (int d = 0; d < 16; d++)
        p.v[off + d] += 5.0f;
    assert_int_equal(cpu_attention_paged_opts(q, 1, pos, nh, 1, 16, p.k, p.v, p.bt, 8, &o, b), 0);
    assert_true(max_diff(a, b, 2 * 16) > 1e-4);
    /* window 1: each query sees only itself */
    o.window = 1;
    assert_int_equal(cpu_attention_paged_opts(q, 1, pos, nh, 1, 16, p.k, p.v, p.bt, 8, &o, a), 0);
    off = ((int64_t)p.bt[pos / 8] * 8 + pos % 8) * 16;
    assert_true(max_diff(a, p.v + off, 16) < 1e-6 && max_diff(a + 16, p.v + off, 16) < 1e-6);
    pool_free(&p);
}

static void test_attn_bad_args(void **state)
{
    (void)state;
    float x[4] = {0};
    int32_t bt[1] = {0};
    cpu_attn_opts o = {1.0f, 0.0f, 0};
    assert_int_equal(cpu_attention_paged_opts(x, 1, 0, 3, 2, 2, x, x, bt, 1, &o, x), -1); /* 3 % 2 */
    assert_int_equal(cpu_attention_paged_opts(x, 1, -1, 1, 1, 2, x, x, bt, 1, &o, x), -1);
    assert_int_equal(cpu_attention_paged_opts(x, 1, 0, 1, 1, 2, x, x, bt, 1, NULL, x), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attn_plain),
        cmocka_unit_test(test_attn_softcap),
        cmocka_unit_test(test_attn_window),
        cmocka_unit_test(test_attn_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
