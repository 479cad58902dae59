/* test_fp8.c - the FP8 CPU twins: e4m3 rounding, per-tensor scales, the FP8 matmul and the FP8 KV cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cpu/cpu_fp8.h"
#include "kernels/cpu/cpu_ops.h"

static uint64_t g_state = 777;
static uint32_t rnd32(void)
{
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_state >> 32);
}
static float frand(void) /* [-1, 1) */
{
    return (float)(rnd32() >> 8) / 8388608.0f - 1.0f;
}

static double nerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The fast encoder agrees with the exhaustive one in common/dtype.c everywhere that matters. */
static void test_e4m3_encoder(void **st)
{
    (void)st;
    /* every code, and every midpoint between neighbouring codes (ties to even), nudged both ways */
    for (int c = 0; c < 0x7e; c++) {
        float a = gm_e4m3_to_f32((uint8_t)c), b = gm_e4m3_to_f32((uint8_t)(c + 1));
        float mid = 0.5f * (a + b);
        float probes[5] = {a, mid, nextafterf(mid, 0.0f), nextafterf(mid, 1000.0f), b};
        for (int i = 0; i < 5; i++) {
            assert_int_equal(cpu_fp8_e4m3(probes[i]), gm_f32_to_e4m3(probes[i]));
            assert_int_equal(cpu_fp8_e4m3(-probes[i]), gm_f32_to_e4m3(-probes[i]));
        }
    }
    /* random bit patterns over the whole float range, and random values near the e4m3 range */
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd32();
        float f;
        memcpy(&f, &u, 4);
        if (!isnan(f))
            assert_int_equal(cpu_fp8_e4m3(f), gm_f32_to_e4m3(f));
        float g = ldexpf(frand(), (int)(rnd32() % 30) - 14);
        assert_int_equal(cpu_fp8_e4m3(g), gm_f32_to_e4m3(g));
    }
    assert_int_equal(cpu_fp8_e4m3(0.0f), 0x00);
    assert_int_equal(cpu_fp8_e4m3(-0.0f), 0x80);
    assert_int_equal(cpu_fp8_e4m3(448.0f), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(1e6f), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(-INFINITY), 0xfe);
    assert_int_equal(cpu_fp8_e4m3(INFINITY), 0x7e);
    assert_int_equal(cpu_fp8_e4m3(NAN) & 0x7f, 0x7f);
    assert_int_equal(cpu_fp8_e4m3(1.0f), 0x38);
    assert_int_equal(cpu_fp8_e4m3(0x1p-9f), 0x01);  /* smallest subnormal */
    assert_int_equal(cpu_fp8_e4m3(0x1p-10f), 0x00); /* half of it: tie to even (0) */
    assert_int_equal(cpu_fp8_e4m3(0x1.8p-9f), 0x02); /* 1.5 ulp: tie to even (2) */
}

static void test_scale_and_roundtrip(void **st)
{
    (void)st;
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    uint16_t *xb = malloc(N * 2);
    uint8_t *q = malloc(N);
    for (int i = 0; i < N; i++) {
        x[i] = frand() * 3.0f;
        xb[i] = gm_f32_to_bf16(x[i]);
    }
    x[17] = -7.25f;
    xb[17] = gm_f32_to_bf16(x[17]);
    assert_true(cpu_fp8_amax(x, GM_DT_F32, N) == 7.25f);
    assert_true(cpu_fp8_amax(xb, GM_DT_BF16, N) == 7.25f);
    float s = cpu_fp8_scale(7.25f);
    assert_true(s == 7.25f / 448.0f);
    cpu_fp8_quantize(xb, GM_DT_BF16, N, s, q);
    assert_int_equal(q[17], 0xfe); /* amax maps to -448 exactly */
    cpu_fp8_dequantize(q, N, s, y);
    /* e4m3 keeps 3 mantissa bits: relative error <= 2^-4 above the subnormal range */
    for (int i = 0; i < N; i++) {
        float xv = gm_bf16_to_f32(xb[i]);
        if (fabsf(xv) / s >= 0x1p-6f)
            assert_true(fabsf(y[i] - xv) <= fabsf(xv) * 0.0625f + 1e-7f);
        else
            assert_true(fabsf(y[i] - xv) <= 0x1p-10f * s);
    }
    assert_true(nerr(y, x, N) < 0.04);
    /* the bf16 path and the generic path agree */
    uint8_t *q2 = malloc(N);
    float *xr = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        xr[i] = gm_bf16_to_f32(xb[i]);
    cpu_fp8_quantize(xr, GM_DT_F32, N, s, q2);
    assert_memory_equal(q, q2, N);
    cpu_fp8_quantize_act(x, N, s, q2); /* rounds to bf16 first: same codes */
    assert_memory_equal(q, q2, N);
    assert_true(cpu_fp8_act_scale(x, N) == s);
    /* an all-zero tensor: finite scale, zero codes */
    memset(xr, 0, N * sizeof(float));
    float z = cpu_fp8_scale(cpu_fp8_amax(xr, GM_DT_F32, N));
    assert_true(z > 0.0f && isfinite(1.0f / z));
    cpu_fp8_quantize(xr, GM_DT_F32, N, z, q2);
    for (int i = 0; i < N; i++)
        assert_int_equal(q2[i], 0);
    free(x), free(y), free(xb), free(q), free(q2), free(xr);
}

/* FP8 matmul twin: exactly the double-checked sum of e4m3 products, scaled and rounded to bf16
 * (to 1 bf16 ulp: float32 vs double summation), and close to the unquantized product. */
static void test_fp8_matmul(void **st)
{
    (void)st;
    const int64_t T = 5, K = 256, N = 48;
    float *x = malloc(T * K * sizeof(float)), *w = malloc(N * K * sizeof(float));
    float *y = malloc(T * N * sizeof(float)), *yr = malloc(T * N * sizeof(float));
    uint8_t *wq = malloc(N * K), *xq = malloc(T * K);
    for (int64_t i = 0; i < T * K; i++)
        x[i] = frand() * 4.0f;
    for (int64_t i = 0; i < N * K; i++)
        w[i] = frand() * 0.05f;
    float sw = cpu_fp8_scale(cpu_fp8_amax(w, GM_DT_F32, N * K));
    cpu_fp8_quantize(w, GM_DT_F32, N * K, sw, wq);
    float sx = cpu_fp8_act_scale(x, T * K);
    assert_int_equal(cpu_fp8_matmul(x, T, K, K, sx, wq, K, N, sw, y, N), 0);
    for (int64_t t = 0; t < T; t++)
        cpu_fp8_quantize_act(x + t * K, K, sx, xq + t * K);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)gm_e4m3_to_f32(xq[t * K + k]) * gm_e4m3_to_f32(wq[j * K + k]);
            float ref = gm_round_bf16((float)(acc * sx * sw));
            float got = y[t * N + j];
            assert_true(got == gm_round_bf16(got));
            assert_true(fabsf(got - ref) <= fabsf(ref) * 0x1p-7f + 1e-6f);
        }
    /* pre-quantized entry point gives the same bits */
    float *y2 = malloc(T * N * sizeof(float));
    assert_int_equal(cpu_fp8_matmul_q(xq, T, K, K, sx, wq, K, N, sw, y2, N), 0);
    assert_memory_equal(y, y2, T * N * sizeof(float));
    /* against the float32 product of the unquantized operands */
    cpu_matmul(x, T, K, K, w, GM_DT_F32, K, N, yr, N);
    assert_true(nerr(y, yr, T * N) < 0.06);
    /* row strides: a column slice of a wider x and y */
    float *xw = calloc(T * (K + 32), sizeof(float)), *yw = calloc(T * (N + 8), sizeof(float));
    for (int64_t t = 0; t < T; t++)
        memcpy(xw + t * (K + 32), x + t * K, K * sizeof(float));
    assert_int_equal(cpu_fp8_matmul(xw, T, K, K + 32, sx, wq, K, N, sw, yw, N + 8), 0);
    for (int64_t t = 0; t < T; t++)
        assert_memory_equal(yw + t * (N + 8), y + t * N, N * sizeof(float));
    free(x), free(w), free(y), free(yr), free(wq), free(xq), free(y2), free(xw), free(yw);
}

/* FP8 KV: the write lands where cpu_kv_write would put it, and attention over the FP8 pool equals
 * f32 attention over the dequantized values and stays close to attention over the originals. */
static void test_fp8_kv(void **st)
{
    (void)st;
    const int64_t nh = 8, nkv = 2, hd = 64, bs = 16, ctx = 75, T = 3;
    const int64_t nblk = 12;
    int32_t bt[6] = {7, 2, 9, 0, 11, 4};
    int64_t pool = nblk * nkv * bs * hd;
    float *kf = calloc(pool, sizeof(float)), *vf = calloc(pool, sizeof(float));
    uint8_t *k8 = calloc(pool, 1), *v8 = calloc(pool, 1);
    float *k = malloc(ctx * nkv * hd * sizeof(float)), *v = malloc(ctx * nkv * hd * sizeof(float));
    for (int64_t i = 0; i < ctx * nkv * hd; i++) {
        k[i] = frand() * 6.0f;
        v[i] = frand() * 2.0f;
    }
    float kvs = 0.03f;
    /* written in two pieces, as a prefill and a decode would */
    cpu_fp8_kv_write(k8, v8, bt, bs, 0, ctx - T, nkv, hd, k, v, kvs);
    cpu_fp8_kv_write(k8, v8, bt, bs, (int32_t)(ctx - T), T, nkv, hd, k + (ctx - T) * nkv * hd,
                     v + (ctx - T) * nkv * hd, kvs);
    /* reference pools: the dequantized values, written by the f32 writer */
    float *kd = malloc(ctx * nkv * hd * sizeof(float)), *vd = malloc(ctx * nkv * hd * sizeof(float));
    for (int64_t i = 0; i < ctx * nkv * hd; i++) {
        kd[i] = gm_e4m3_to_f32(cpu_fp8_e4m3(gm_round_bf16(k[i]) * (1.0f / kvs))) * kvs;
        vd[i] = gm_e4m3_to_f32(cpu_fp8_e4m3(gm_round_bf16(v[i]) * (1.0f / kvs))) * kvs;
    }
    cpu_kv_write(kf, vf, bt, (int32_t)bs, 0, ctx, nkv, hd, kd, vd);
    for (int64_t i = 0; i < pool; i++) {
        assert_true(gm_e4m3_to_f32(k8[i]) * kvs == kf[i]);
        assert_true(gm_e4m3_to_f32(v8[i]) * kvs == vf[i]);
    }
    float *q = malloc(T * nh * hd * sizeof(float));
    for (int64_t i = 0; i < T * nh * hd; i++)
        q[i] = frand();
    float *o8 = malloc(T * nh * hd * sizeof(float)), *od = malloc(T * nh * hd * sizeof(float));
    float *oo = malloc(T * nh * hd * sizeof(float));
    assert_int_equal(cpu_fp8_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, k8, v8, bt, (int32_t)bs, 0.125f,
                                             kvs, o8),
                     0);
    cpu_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, kf, vf, bt, (int32_t)bs, 0.125f, od);
    assert_memory_equal(o8, od, T * nh * hd * sizeof(float));
    /* against the unquantized cache */
    float *ko = calloc(pool, sizeof(float)), *vo = calloc(pool, sizeof(float));
    cpu_kv_write(ko, vo, bt, (int32_t)bs, 0, ctx, nkv, hd, k, v);
    cpu_attention_paged(q, T, (int32_t)(ctx - T), nh, nkv, hd, ko, vo, bt, (int32_t)bs, 0.125f, oo);
    double e = nerr(o8, oo, T * nh * hd);
    assert_true(e < 0.08);
    free(kf), free(vf), free(k8), free(v8), free(k), free(v), free(kd), free(vd), free(q), free(o8), free(od);
    free(oo), free(ko), free(vo);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_encoder),
        cmocka_unit_test(test_scale_and_roundtrip),
        cmocka_unit_test(test_fp8_matmul),
        cmocka_unit_test(test_fp8_kv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
