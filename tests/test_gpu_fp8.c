/* test_gpu_fp8.c - the FP8 kernels against their CPU twins (kernels/cpu/quant_fp8.h, gemm_fp8.h, rope_kv.h) and against
 * the unfused bf16 kernels they replace:
 *   - weight / static / dynamic quantization: bit-exact scale and codes vs the CPU twin;
 *   - rmsnorm_fp8, add_rmsnorm_fp8, geglu_fp8: bit-exact vs k_rmsnorm/k_add_rmsnorm/k_geglu followed
 *     by k_fp8_quantize, and close (normalized error of the dequantized values) to the CPU twin;
 *   - the FP8 KV write: bit-exact vs cpu_fp8_kv_write;
 *   - k_gemm_fp8 (cuBLASLt e4m3): normalized error vs cpu_fp8_matmul_q at Gemma's shapes, T in
 *     {1, 16, 64, 256, 1024} (rows sampled for large T), accurate and fast accumulation.
 *   - k_gemv_fp8_v2 (T = 1..4): bf16 and f32 output vs the exact CPU twin (e4m3 decoded exactly, f32
 *     sums) at Gemma's shapes and odd ones (N % 16 != 0, K % 64 != 0, padded strides whose padding holds
 *     NaN codes), against the first GEMV, rows/columns it must not touch; its GeGLU epilogues (bf16 and
 *     e4m3 act) vs the CPU twin and bit for bit vs v2 -> k_geglu / k_geglu_fp8 on the GPU.
 * Exit 77 without a GPU. GM_TEST_FILTER (a cmocka pattern, e.g. 'test_gemv*') runs a subset. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "kernels/cpu/geglu.h"
#include "kernels/cpu/gemm_fp8.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/quant_fp8.h"
#include "kernels/cpu/rope_kv.h"
#include "kernels/cuda/geglu.cuh"
#include "kernels/cuda/gemm_fp8.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/quant_fp8.cuh"
#include "kernels/cuda/rope_kv.cuh"
#include "tests/test_check.h"

#define CK(x) assert_int_equal((int)(x), 0)

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33);
}
static float frand(void) /* [-1, 1) */
{
    return (float)(rnd() & 0xffffff) / 8388608.0f - 1.0f;
}

static void *dev_put(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 16));
    if (h)
        CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void *get(const void *d, size_t bytes)
{
    void *h = malloc(bytes ? bytes : 1);
    CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    return h;
}

static float get_f32(const float *d)
{
    float v;
    CK(cudaMemcpy(&v, d, 4, cudaMemcpyDeviceToHost));
    return v;
}

/* n bf16 values of roughly normal shape times scale: bits in *b, values in *f. */
static void rand_bf16(int64_t n, float scale, uint16_t **b, float **f)
{
    *b = malloc(n * 2);
    *f = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        (*b)[i] = gm_f32_to_bf16((frand() + frand() + frand()) * scale);
        (*f)[i] = gm_bf16_to_f32((*b)[i]);
    }
}

static int64_t count_diff(const uint8_t *a, const uint8_t *b, int64_t n)
{
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++)
        d += a[i] != b[i];
    return d;
}

static double nerr_codes(const uint8_t *a, float sa, const uint8_t *b, float sb, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = gm_e4m3_to_f32(a[i]) * sa, y = gm_e4m3_to_f32(b[i]) * sb;
        num += (x - y) * (x - y);
        den += y * y;
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* Weight and activation quantization: bit-exact against the CPU twin. */
static void test_quantize(void **st)
{
    (void)st;
    const int64_t sizes[] = {2048 * 256, 8 * 1000 + 8, 1001};
    for (int s = 0; s < 3; s++) {
        int64_t n = sizes[s];
        uint16_t *wb;
        float *wf;
        rand_bf16(n, 0.02f, &wb, &wf);
        void *dw = dev_put(wb, n * 2), *dq = dev_put(NULL, n);
        float *dsc = dev_put(NULL, 4), *damax = dev_put(NULL, 4);
        GOK(k_fp8_quantize_weight(dw, n, dsc, damax, dq, 0));
        CK(cudaDeviceSynchronize());
        float sc = cpu_fp8_scale(cpu_fp8_amax(wb, GM_DT_BF16, n));
        assert_true(get_f32(dsc) == sc);
        uint8_t *qg = get(dq, n), *qc = malloc(n);
        cpu_fp8_quantize(wb, GM_DT_BF16, n, sc, qc);
        assert_int_equal(count_diff(qg, qc, n), 0);
        /* static quantization with a given scale */
        float sc2 = sc * 1.7f;
        CK(cudaMemcpy(dsc, &sc2, 4, cudaMemcpyHostToDevice));
        GOK(k_fp8_quantize_static(dw, n, dsc, dq, 0));
        free(qg);
        qg = get(dq, n);
        cpu_fp8_quantize(wb, GM_DT_BF16, n, sc2, qc);
        assert_int_equal(count_diff(qg, qc, n), 0);
        free(wb), free(wf), free(qg), free(qc);
        cudaFree(dw), cudaFree(dq), cudaFree(dsc), cudaFree(damax);
    }
    /* activations [rows, dim] inside a wider row: static and dynamic */
    const int64_t rows = 37, dim = 2048, ld = 2560;
    uint16_t *xb;
    float *xf;
    rand_bf16(rows * ld, 3.0f, &xb, &xf);
    void *dx = dev_put(xb, rows * ld * 2), *dq = dev_put(NULL, rows * dim);
    float *dsc = dev_put(NULL, 4), *damax = dev_put(NULL, 4);
    float *xs = malloc(rows * dim * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        memcpy(xs + r * dim, xf + r * ld, dim * sizeof(float));
    uint8_t *qc = malloc(rows * dim);
    k_fp8_act a = {dsc, damax, NULL};
    GOK(k_fp8_quantize(dx, ld, rows, dim, &a, dq, 0));
    float dyn = cpu_fp8_act_scale(xs, rows * dim);
    assert_true(get_f32(dsc) == dyn);
    cpu_fp8_quantize_act(xs, rows * dim, dyn, qc);
    uint8_t *qg = get(dq, rows * dim);
    assert_int_equal(count_diff(qg, qc, rows * dim), 0);
    free(qg);
    float stat = 0.01f;
    CK(cudaMemcpy(dsc, &stat, 4, cudaMemcpyHostToDevice));
    k_fp8_act as = {dsc, NULL, NULL};
    GOK(k_fp8_quantize(dx, ld, rows, dim, &as, dq, 0));
    cpu_fp8_quantize_act(xs, rows * dim, stat, qc); /* saturates: |x| up to 9 > 448 * 0.01 */
    qg = get(dq, rows * dim);
    assert_int_equal(count_diff(qg, qc, rows * dim), 0);
    free(qg), free(qc), free(xb), free(xf), free(xs);
    cudaFree(dx), cudaFree(dq), cudaFree(dsc), cudaFree(damax);
}

/* Fused RMSNorm -> fp8 equals k_rmsnorm then k_fp8_quantize, and is close to the CPU twin. */
static void check_rmsnorm_fp8(int64_t n, int64_t dim, int add, int delta_f32, int dynamic)
{
    uint16_t *xb, *db;
    float *xf, *df;
    rand_bf16(n * dim, 1.5f, &xb, &xf);
    rand_bf16(n * dim, 0.5f, &db, &df);
    float *w1 = malloc(dim * sizeof(float));
    for (int64_t i = 0; i < dim; i++)
        w1[i] = 1.0f + gm_round_bf16(frand() * 0.5f);
    void *dx = dev_put(xb, n * dim * 2), *dx2 = dev_put(xb, n * dim * 2);
    void *ddelta = delta_f32 ? dev_put(df, n * dim * 4) : dev_put(db, n * dim * 2);
    float *dw = dev_put(w1, dim * 4);
    void *dq = dev_put(NULL, n * dim), *dq2 = dev_put(NULL, n * dim), *dnorm = dev_put(NULL, n * dim * 2);
    void *dtmp = dev_put(NULL, n * dim * 2);
    float *dsc = dev_put(NULL, 4), *dsc2 = dev_put(NULL, 4), *damax = dev_put(NULL, 4), *damax2 = dev_put(NULL, 4);
    float stat = 0.02f;
    CK(cudaMemcpy(dsc, &stat, 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dsc2, &stat, 4, cudaMemcpyHostToDevice));
    k_fp8_act a = {dsc, dynamic ? damax : NULL, dynamic ? dtmp : NULL};
    k_fp8_act a2 = {dsc2, dynamic ? damax2 : NULL, NULL};
    if (add) {
        GOK(k_add_rmsnorm_fp8(dx, ddelta, delta_f32, dw, n, dim, 1e-6f, &a, dq, 0));
        GOK(k_add_rmsnorm(dx2, ddelta, delta_f32, dw, n, dim, 1e-6f, dnorm, 0));
    } else {
        GOK(k_rmsnorm_fp8(dx, dim, dw, n, dim, 1e-6f, &a, dq, 0));
        GOK(k_rmsnorm(dx2, dim, dw, n, dim, 1e-6f, dnorm, dim, 0));
    }
    GOK(k_fp8_quantize(dnorm, dim, n, dim, &a2, dq2, 0));
    CK(cudaDeviceSynchronize());
    uint8_t *q1 = get(dq, n * dim), *q2 = get(dq2, n * dim);
    assert_int_equal(count_diff(q1, q2, n * dim), 0);
    float s1 = get_f32(dsc), s2 = get_f32(dsc2);
    assert_true(s1 == s2);
    if (add) { /* the residual stream was updated identically */
        uint16_t *h1 = get(dx, n * dim * 2), *h2 = get(dx2, n * dim * 2);
        assert_memory_equal(h1, h2, n * dim * 2);
        free(h1), free(h2);
    }
    /* CPU twin: rmsnorm in f32, bf16, quantize */
    float *h = malloc(n * dim * sizeof(float)), *y = malloc(n * dim * sizeof(float));
    for (int64_t i = 0; i < n * dim; i++)
        h[i] = add ? gm_round_bf16(xf[i] + (delta_f32 ? df[i] : gm_bf16_to_f32(db[i]))) : xf[i];
    float *wraw = malloc(dim * sizeof(float));
    for (int64_t i = 0; i < dim; i++)
        wraw[i] = w1[i] - 1.0f;
    cpu_rmsnorm(h, wraw, GM_DT_F32, n, dim, 1e-6f, y);
    float sc = dynamic ? cpu_fp8_act_scale(y, n * dim) : stat;
    uint8_t *qc = malloc(n * dim);
    cpu_fp8_quantize_act(y, n * dim, sc, qc);
    double e = nerr_codes(q1, s1, qc, sc, n * dim);
    int64_t diff = count_diff(q1, qc, n * dim);
    print_message("rmsnorm_fp8 n=%lld dim=%lld add=%d f32=%d dyn=%d: vs CPU %.2e, %lld/%lld codes differ\n",
                  (long long)n, (long long)dim, add, delta_f32, dynamic, e, (long long)diff, (long long)(n * dim));
    assert_true(e < 0.01);
    assert_true(diff * 50 < n * dim); /* only rounding-boundary cases (rsqrt, sum order) */
    free(xb), free(db), free(xf), free(df), free(w1), free(q1), free(q2), free(h), free(y), free(wraw), free(qc);
    cudaFree(dx), cudaFree(dx2), cudaFree(ddelta), cudaFree(dw), cudaFree(dq), cudaFree(dq2), cudaFree(dnorm);
    cudaFree(dtmp), cudaFree(dsc), cudaFree(dsc2), cudaFree(damax), cudaFree(damax2);
}

static void test_rmsnorm_fp8(void **st)
{
    (void)st;
    check_rmsnorm_fp8(17, 2048, 0, 0, 0);
    check_rmsnorm_fp8(17, 2048, 0, 0, 1);
    check_rmsnorm_fp8(5, 3072, 1, 0, 0);
    check_rmsnorm_fp8(5, 3072, 1, 1, 1);
    check_rmsnorm_fp8(64, 2048, 1, 1, 0);
    check_rmsnorm_fp8(3, 128, 1, 0, 1);
}

static void check_geglu_fp8(int64_t T, int64_t n, int dynamic)
{
    uint16_t *gb;
    float *gf;
    rand_bf16(T * 2 * n, 1.0f, &gb, &gf);
    void *dgu = dev_put(gb, T * 2 * n * 2), *dout = dev_put(NULL, T * n * 2), *dtmp = dev_put(NULL, T * n * 2);
    void *dq = dev_put(NULL, T * n), *dq2 = dev_put(NULL, T * n);
    float *dsc = dev_put(NULL, 4), *dsc2 = dev_put(NULL, 4), *damax = dev_put(NULL, 4), *damax2 = dev_put(NULL, 4);
    float stat = 0.005f;
    CK(cudaMemcpy(dsc, &stat, 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dsc2, &stat, 4, cudaMemcpyHostToDevice));
    k_fp8_act a = {dsc, dynamic ? damax : NULL, dynamic ? dtmp : NULL};
    k_fp8_act a2 = {dsc2, dynamic ? damax2 : NULL, NULL};
    GOK(k_geglu_fp8(dgu, T, n, &a, dq, 0));
    GOK(k_geglu(dgu, T, n, dout, 0));
    GOK(k_fp8_quantize(dout, n, T, n, &a2, dq2, 0));
    CK(cudaDeviceSynchronize());
    uint8_t *q1 = get(dq, T * n), *q2 = get(dq2, T * n);
    assert_int_equal(count_diff(q1, q2, T * n), 0);
    float s1 = get_f32(dsc);
    assert_true(s1 == get_f32(dsc2));
    /* CPU twin */
    float *y = malloc(T * n * sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n; i++)
            y[t * n + i] = gm_round_bf16(gm_round_bf16(cpu_gelu_tanh(gf[t * 2 * n + i])) * gf[t * 2 * n + n + i]);
    float sc = dynamic ? cpu_fp8_act_scale(y, T * n) : stat;
    uint8_t *qc = malloc(T * n);
    cpu_fp8_quantize_act(y, T * n, sc, qc);
    double e = nerr_codes(q1, s1, qc, sc, T * n);
    print_message("geglu_fp8 T=%lld n=%lld dyn=%d: vs CPU %.2e\n", (long long)T, (long long)n, dynamic, e);
    assert_true(e < 0.01);
    free(gb), free(gf), free(q1), free(q2), free(y), free(qc);
    cudaFree(dgu), cudaFree(dout), cudaFree(dtmp), cudaFree(dq), cudaFree(dq2), cudaFree(dsc), cudaFree(dsc2);
    cudaFree(damax), cudaFree(damax2);
}

static void test_geglu_fp8(void **st)
{
    (void)st;
    check_geglu_fp8(9, 16384, 0);
    check_geglu_fp8(9, 16384, 1);
    check_geglu_fp8(2, 24576, 1);
}

/* FP8 KV write: bit-exact against cpu_fp8_kv_write. */
static void test_kv_write_fp8(void **st)
{
    (void)st;
    const int32_t nh = 8, nkv = 2, hd = 256, bs = 16, T = 21;
    const int64_t ld = (nh + 2 * nkv) * hd, nblk = 8;
    uint16_t *qkv;
    float *qf;
    rand_bf16(T * ld, 2.0f, &qkv, &qf);
    int32_t slot[T], bt[4] = {5, 1, 6, 3};
    for (int t = 0; t < T; t++)
        slot[t] = (t == 4) ? -1 : bt[(t + 9) / bs] * bs + (t + 9) % bs; /* positions 9..29, token 4 skipped */
    int64_t pool = nblk * nkv * bs * hd;
    void *dqkv = dev_put(qkv, T * ld * 2), *dk = dev_put(NULL, pool), *dv = dev_put(NULL, pool);
    int32_t *dslot = dev_put(slot, sizeof slot);
    CK(cudaMemset(dk, 0, pool));
    CK(cudaMemset(dv, 0, pool));
    float kvs = 0.011f;
    GOK(k_kv_write_fp8(dqkv, ld, T, nh, nkv, hd, dslot, kvs, dk, dv, bs, 0));
    CK(cudaDeviceSynchronize());
    uint8_t *kg = get(dk, pool), *vg = get(dv, pool);
    uint8_t *kc = calloc(pool, 1), *vc = calloc(pool, 1);
    float *k = malloc(nkv * hd * sizeof(float)), *v = malloc(nkv * hd * sizeof(float));
    for (int t = 0; t < T; t++) {
        if (slot[t] < 0)
            continue;
        memcpy(k, qf + t * ld + nh * hd, nkv * hd * sizeof(float));
        memcpy(v, qf + t * ld + (nh + nkv) * hd, nkv * hd * sizeof(float));
        cpu_fp8_kv_write(kc, vc, bt, bs, 9 + t, 1, nkv, hd, k, v, kvs);
    }
    assert_int_equal(count_diff(kg, kc, pool), 0);
    assert_int_equal(count_diff(vg, vc, pool), 0);
    free(qkv), free(qf), free(kg), free(vg), free(kc), free(vc), free(k), free(v);
    cudaFree(dqkv), cudaFree(dk), cudaFree(dv), cudaFree(dslot);
}

/* k_gemm_fp8 vs cpu_fp8_matmul_q on up to 6 rows spread over T. w [N, K] e4m3 (host and device). */
/* path: 0 k_gemm_fp8 (dispatch), 1 cuBLASLt only, 2 GEMV only. */
static int g_yf32; /* check_gemm_path writes f32 output when set */

static double check_gemm_path(k_gemm_fp8_ctx *g, int path, const uint8_t *w, const void *dw, int64_t T, int64_t N,
                              int64_t K, int64_t ldy_extra)
{
    const int yf = g_yf32;
    const size_t ys = yf ? 4 : 2;
    const int64_t ldy = N + ldy_extra;
    uint8_t *x = malloc(T * K);
    for (int64_t i = 0; i < T * K; i++) /* codes of normal-ish values */
        x[i] = cpu_fp8_e4m3((frand() + frand() + frand()) * 120.0f);
    float sw = 0.0003f, sx = 0.02f;
    void *dx = dev_put(x, T * K), *dy = dev_put(NULL, T * ldy * ys);
    float *dsw = dev_put(&sw, 4), *dsx = dev_put(&sx, 4);
    CK(cudaMemset(dy, 0xff, T * ldy * ys));
    if (path == 1)
        GOK(k_gemm_fp8_lt(g, dx, T, K, K, dsx, dw, K, dsw, N, dy, yf, ldy, 0));
    else if (path == 2)
        GOK(k_gemv_fp8(dx, T, K, K, dsx, dw, K, dsw, N, dy, yf, ldy, 0));
    else
        GOK(k_gemm_fp8(g, dx, T, K, K, dsx, dw, K, dsw, N, dy, yf, ldy, 0));
    CK(cudaDeviceSynchronize());
    void *ygv = get(dy, T * ldy * ys);
    const uint16_t *yg = ygv;
    const float *ygf = ygv;
    int64_t nrow = T < 8 ? T : 6;
    float *yc = malloc(N * sizeof(float));
    double num = 0, den = 0;
    for (int64_t i = 0; i < nrow; i++) {
        int64_t t = nrow == T ? i : (i * (T - 1)) / (nrow - 1);
        assert_int_equal(cpu_fp8_matmul_q(x + t * K, 1, K, K, sx, w, K, N, sw, yc, N), 0);
        for (int64_t j = 0; j < N; j++) {
            float gv = yf ? ygf[t * ldy + j] : gm_bf16_to_f32(yg[t * ldy + j]);
            if (isnan(gv))
                fail_msg("k_gemm_fp8 T=%lld N=%lld K=%lld: NaN at (%lld, %lld)", (long long)T, (long long)N,
                         (long long)K, (long long)t, (long long)j);
            num += ((double)gv - yc[j]) * ((double)gv - yc[j]);
            den += (double)yc[j] * yc[j];
        }
        if (ldy_extra) /* columns past N untouched */
            for (int64_t j = N; j < ldy; j++)
                assert_true(yf ? isnan(ygf[t * ldy + j]) : yg[t * ldy + j] == 0xffff);
    }
    free(x), free(ygv), free(yc);
    cudaFree(dx), cudaFree(dy), cudaFree(dsw), cudaFree(dsx);
    return sqrt(num / (den > 0 ? den : 1));
}

static double check_gemm(k_gemm_fp8_ctx *g, const uint8_t *w, const void *dw, int64_t T, int64_t N, int64_t K,
                         int64_t ldy_extra)
{
    return check_gemm_path(g, 0, w, dw, T, N, K, ldy_extra);
}

static void test_gemm_fp8(void **st)
{
    (void)st;
    k_gemm_fp8_ctx *g = NULL;
    GOK(k_gemm_fp8_ctx_new(0, &g));
    /* Gemma 2b: qkv 2048->2560, o 2048->2048, gate|up 2048->32768, down 16384->2048;
     * 7b: qkv 3072->12288, o 4096->3072, gate|up 3072->49152, down 24576->3072 */
    static const int64_t shapes[][2] = {{2560, 2048}, {2048, 2048}, {32768, 2048}, {2048, 16384},
                                        {12288, 3072}, {3072, 4096}, {49152, 3072}, {3072, 24576}};
    static const int64_t Ts[] = {1, 16, 64, 256, 1024};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t N = shapes[s][0], K = shapes[s][1];
        uint8_t *w = malloc(N * K);
        for (int64_t i = 0; i < N * K; i++) {
            uint32_t r = rnd(); /* random sign, exponent 4..10 (2^-3 .. 2^3), mantissa */
            w[i] = (uint8_t)((r & 0x80) | ((4 + (r >> 8) % 7) << 3) | ((r >> 16) & 7));
        }
        void *dw = dev_put(w, N * K);
        for (int fast = 0; fast < 2; fast++) {
            k_gemm_fp8_ctx_set_fast_accum(g, fast);
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                if (fast && ti % 2) /* fast accumulation: a subset */
                    continue;
                int64_t T = Ts[ti];
                double e = check_gemm(g, w, dw, T, N, K, 0);
                print_message("k_gemm_fp8 fast=%d T=%-5lld N=%-6lld K=%-6lld err %.2e\n", fast, (long long)T,
                              (long long)N, (long long)K, e);
                assert_true(e < (fast ? 2e-2 : 5e-3));
            }
        }
        k_gemm_fp8_ctx_set_fast_accum(g, 0);
        if (s == 1) { /* output into a column slice of a wider y; odd T */
            double e = check_gemm(g, w, dw, 7, N, K, 512);
            assert_true(e < 5e-3);
        }
        /* both small-T paths on their own: the FP8 GEMV for T = 1..8, cuBLASLt at T = 1 and 3 */
        for (int64_t T = 1; T <= 8; T++) {
            if (s % 2 && T != 1 && T != 8)
                continue;
            double e = check_gemm_path(g, 2, w, dw, T, N, K, T == 3 ? 64 : 0);
            print_message("k_gemv_fp8 T=%lld N=%-6lld K=%-6lld err %.2e\n", (long long)T, (long long)N, (long long)K,
                          e);
            assert_true(e < 5e-3);
        }
        if (s == 3 || s == 5) { /* f32 output (tensor-parallel partial sums): both paths */
            g_yf32 = 1;
            double e1 = check_gemm_path(g, 1, w, dw, 33, N, K, 8), e2 = check_gemm_path(g, 2, w, dw, 2, N, K, 8);
            g_yf32 = 0;
            print_message("k_gemm_fp8 f32 out N=%-6lld K=%-6lld err lt %.2e gemv %.2e\n", (long long)N, (long long)K,
                          e1, e2);
            assert_true(e1 < 5e-3 && e2 < 5e-3);
        }
        for (int64_t T = 1; T <= 3; T += 2) {
            double e = check_gemm_path(g, 1, w, dw, T, N, K, 0);
            print_message("k_gemm_fp8_lt T=%lld N=%-6lld K=%-6lld err %.2e\n", (long long)T, (long long)N, (long long)K,
                          e);
            assert_true(e < 5e-3);
        }
        free(w);
        cudaFree(dw);
    }
    assert_true(k_gemm_fp8_ctx_cached(g) > 0);
    /* the T >= 64 keys had their algorithm picked by timing the candidates (the results above checked) */
    print_message("k_gemm_fp8: %d keys cached, %d tuned\n", k_gemm_fp8_ctx_cached(g), k_gemm_fp8_ctx_tuned(g));
    if (k_gemm_tune_default()) /* on unless GM_GEMM_TUNE=0 */
        assert_true(k_gemm_fp8_ctx_tuned(g) > 0);
    /* bad shapes are errors */
    assert_int_equal(k_gemm_fp8(g, NULL, 1, 100, 100, NULL, NULL, 100, NULL, 64, NULL, 0, 64, 0), GM_ERR_UNSUPPORTED);
    k_gemm_fp8_ctx_destroy(&g);
    assert_null(g);
}

/* The three algorithm-choice levels at prefill rows (T = 2048, where K_GEMM_TUNE_WIDE times 24 candidates and
 * split-K variants): each level's pick matches the CPU twin, and the wide search's pick (a split-K variant when
 * it wins) gives the same bits twice. */
static void test_gemm_fp8_tune_levels(void **st)
{
    (void)st;
    k_gemm_fp8_ctx *g = NULL;
    GOK(k_gemm_fp8_ctx_new(0, &g));
    static const int64_t shapes[][2] = {{2048, 2048}, {2048, 16384}, {3072, 4096}}; /* 2b o, 2b down, 7b o */
    const int64_t T = 2048;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t N = shapes[s][0], K = shapes[s][1];
        uint8_t *w = malloc(N * K), *x = malloc(T * K);
        assert_true(w && x);
        for (int64_t i = 0; i < N * K; i++) {
            uint32_t r = rnd();
            w[i] = (uint8_t)((r & 0x80) | ((4 + (r >> 8) % 7) << 3) | ((r >> 16) & 7));
        }
        for (int64_t i = 0; i < T * K; i++)
            x[i] = cpu_fp8_e4m3((frand() + frand() + frand()) * 120.0f);
        void *dw = dev_put(w, N * K);
        for (int level = K_GEMM_TUNE_OFF; level <= K_GEMM_TUNE_WIDE; level++) {
            k_gemm_fp8_ctx_set_tune(g, level);
            const double e = check_gemm_path(g, 1, w, dw, T, N, K, 0);
            print_message("k_gemm_fp8_lt tune level %d T=%lld N=%-6lld K=%-6lld err %.2e\n", level, (long long)T,
                          (long long)N, (long long)K, e);
            assert_true(e < 5e-3);
        }
        float sw = 0.0003f, sx = 0.02f; /* the wide pick, cached now: same bits twice */
        void *dx = dev_put(x, T * K), *dy = dev_put(NULL, T * N * 2);
        float *dsw = dev_put(&sw, 4), *dsx = dev_put(&sx, 4);
        uint16_t *y[2];
        for (int r = 0; r < 2; r++) {
            CK(cudaMemset(dy, 0xff, T * N * 2));
            GOK(k_gemm_fp8_lt(g, dx, T, K, K, dsx, dw, K, dsw, N, dy, 0, N, 0));
            CK(cudaDeviceSynchronize());
            y[r] = get(dy, T * N * 2);
        }
        assert_memory_equal(y[0], y[1], T * N * 2);
        free(y[0]), free(y[1]), free(w), free(x);
        cudaFree(dw), cudaFree(dx), cudaFree(dy), cudaFree(dsw), cudaFree(dsx);
    }
    print_message("k_gemm_fp8: %d keys tuned, %lld algorithms timed\n", k_gemm_fp8_ctx_tuned(g),
                  (long long)k_gemm_fp8_ctx_candidates(g));
    if (k_gemm_tune_default()) /* the top-8 and wide levels timed candidates (where cuBLASLt offered two or more) */
        assert_true(k_gemm_fp8_ctx_tuned(g) > 0 && k_gemm_fp8_ctx_candidates(g) >= 2 * k_gemm_fp8_ctx_tuned(g));
    k_gemm_fp8_ctx_destroy(&g);
}

/* ---- FP8 GEMV v2 ---- */

/* n e4m3 codes: mostly |v| in [2^-3, 2^4) (random sign and mantissa), one in 64 any finite code
 * (zeros, subnormals, 448). */
static void rand_w_codes(uint8_t *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t r = rnd();
        uint8_t b = (uint8_t)((r & 0x80) | ((4 + (r >> 8) % 7) << 3) | ((r >> 16) & 7));
        if ((r >> 24) % 64 == 0) {
            b = (uint8_t)(r >> 11);
            if ((b & 0x7f) == 0x7f)
                b ^= 1;
        }
        w[i] = b;
    }
}

/* [rows, ld] e4m3 with the K used columns random (rand_w_codes for W, activation-like for x) and the
 * padding columns NaN (0x7f): a kernel that reads past K turns its sums into NaN. */
static uint8_t *rand_mat(int64_t rows, int64_t K, int64_t ld, int is_x)
{
    uint8_t *m = malloc(rows * ld);
    for (int64_t r = 0; r < rows; r++) {
        if (is_x)
            for (int64_t k = 0; k < K; k++)
                m[r * ld + k] = cpu_fp8_e4m3((frand() + frand() + frand()) * 120.0f);
        else
            rand_w_codes(m + r * ld, K);
        memset(m + r * ld + K, 0x7f, ld - K);
    }
    return m;
}

/* Tolerance on a normalized error vs a bf16/f32 reference: sums that land on the other side of a bf16
 * rounding boundary differ by one bf16 step (2^-8 relative); a short vector may hold one such value. */
static double v2_tol(int64_t n) { return n >= 4096 ? 1e-3 : 5e-3; }

static double nerr_f32(const float *a, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += isnan(a[i]) ? 1e30 : d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* Columns [n, ld) of rows 0..T-1 and all of rows T..3 of y (4 rows of ld elements of es bytes) still 0xff. */
static int untouched(const uint8_t *y, int64_t T, int64_t n, int64_t ld, size_t es)
{
    for (int64_t t = 0; t < 4; t++)
        for (int64_t j = t < T ? n : 0; j < ld; j++)
            for (size_t b = 0; b < es; b++)
                if (y[(t * ld + j) * es + b] != 0xff)
                    return 0;
    return 1;
}

/* a and b are the same e4m3 value or neighbours (the rounding of a sum on either side of a boundary). */
static int codes_adjacent(uint8_t a, uint8_t b)
{
    if (a == b)
        return 1;
    int ma = a & 0x7f, mb = b & 0x7f;
    if ((a & 0x80) != (b & 0x80))
        return ma + mb <= 1; /* +-0 and the smallest subnormal of either sign */
    return abs(ma - mb) <= 1;
}

/* One weight through k_gemv_fp8_v2 at T = 1..4, bf16 and f32 out, vs sums [4, N] (raw, unscaled f32 sums
 * of the exact products: the CPU twin with unit scales); where v1 takes the shape, vs k_gemv_fp8_v1 too,
 * and k_gemv_fp8 (the dispatcher) is v2 bit for bit where k_gemv_fp8_v2_for says it takes v2. */
static void check_v2_plain(const char *name, const void *dw, int64_t N, int64_t K, int64_t ldw, const void *dx,
                           int64_t ldx, const float *sums, float sx, float sw, int64_t ldy)
{
    float *dsx = dev_put(&sx, 4), *dsw = dev_put(&sw, 4);
    const float s = sx * sw; /* the kernels' and the CPU twin's order: sum * (sx * sw) */
    float *ref = malloc(4 * N * sizeof(float)), *got = malloc(4 * N * sizeof(float));
    void *dy = dev_put(NULL, 4 * ldy * 4), *dy1 = dev_put(NULL, 4 * ldy * 4);
    const int v1_ok = K % 64 == 0 && N % 16 == 0 && ldy % 8 == 0;
    for (int64_t T = 1; T <= 4; T++)
        for (int yf = 0; yf < 2; yf++) {
            const size_t es = yf ? 4 : 2;
            for (int64_t i = 0; i < T * N; i++)
                ref[i] = yf ? sums[i] * s : gm_round_bf16(sums[i] * s);
            CK(cudaMemset(dy, 0xff, 4 * ldy * es));
            GOK(k_gemv_fp8_v2(dx, T, K, ldx, dsx, dw, ldw, dsw, N, dy, yf, ldy, 0));
            CK(cudaDeviceSynchronize());
            uint8_t *yh = get(dy, 4 * ldy * es);
            for (int64_t t = 0; t < T; t++)
                for (int64_t j = 0; j < N; j++)
                    got[t * N + j] = yf ? ((float *)yh)[t * ldy + j] : gm_bf16_to_f32(((uint16_t *)yh)[t * ldy + j]);
            double e = nerr_f32(got, ref, T * N);
            print_message("k_gemv_fp8_v2 %-10s T=%lld N=%-6lld K=%-6lld %s err %.2e\n", name, (long long)T,
                          (long long)N, (long long)K, yf ? "f32 " : "bf16", e);
            assert_true(e < v2_tol(T * N));
            assert_true(untouched(yh, T, N, ldy, es));
            if (v1_ok) { /* the first GEMV (same products, other summation order) and the dispatcher */
                CK(cudaMemset(dy1, 0xff, 4 * ldy * es));
                GOK(k_gemv_fp8_v1(dx, T, K, ldx, dsx, dw, ldw, dsw, N, dy1, yf, ldy, 0));
                CK(cudaDeviceSynchronize());
                uint8_t *y1 = get(dy1, 4 * ldy * es);
                float *g1 = malloc(T * N * sizeof(float));
                for (int64_t t = 0; t < T; t++)
                    for (int64_t j = 0; j < N; j++)
                        g1[t * N + j] =
                            yf ? ((float *)y1)[t * ldy + j] : gm_bf16_to_f32(((uint16_t *)y1)[t * ldy + j]);
                double e1 = nerr_f32(got, g1, T * N);
                assert_true(e1 < v2_tol(T * N));
                free(y1), free(g1);
                CK(cudaMemset(dy1, 0xff, 4 * ldy * es));
                GOK(k_gemv_fp8(dx, T, K, ldx, dsx, dw, ldw, dsw, N, dy1, yf, ldy, 0));
                CK(cudaDeviceSynchronize());
                y1 = get(dy1, 4 * ldy * es);
                if (k_gemv_fp8_v2_for(T, K, N))
                    assert_memory_equal(y1, yh, 4 * ldy * es);
                free(y1);
            }
            free(yh);
        }
    free(ref), free(got);
    cudaFree(dy), cudaFree(dy1), cudaFree(dsx), cudaFree(dsw);
}

/* The GeGLU epilogues over a gate|up weight [2 ni, K] (row stride ldw) at T = 1..4: vs the CPU twin
 * (sums [4, 2 ni] as in check_v2_plain), and, when ni % 8 == 0, bit for bit vs k_gemv_fp8_v2 into gu
 * then k_geglu / k_geglu_fp8 (static scale) on the GPU. ld: the act row stride. */
static void check_v2_geglu(const char *name, const void *dw, int64_t ni, int64_t K, int64_t ldw, const void *dx,
                           int64_t ldx, const float *sums, float sx, float sw, int64_t ld)
{
    float *dsx = dev_put(&sx, 4), *dsw = dev_put(&sw, 4);
    const float s = sx * sw;
    /* CPU twin: gate, up rounded to bf16, act = bf16(bf16(gelu(g)) * u), codes with a static scale that
     * saturates the largest few */
    float *act = malloc(4 * ni * sizeof(float));
    float amax = 0.0f;
    for (int64_t t = 0; t < 4; t++)
        for (int64_t j = 0; j < ni; j++) {
            float g = gm_round_bf16(sums[t * 2 * ni + j] * s), u = gm_round_bf16(sums[t * 2 * ni + ni + j] * s);
            act[t * ni + j] = gm_round_bf16(gm_round_bf16(cpu_gelu_tanh(g)) * u);
            amax = fabsf(act[t * ni + j]) > amax ? fabsf(act[t * ni + j]) : amax;
        }
    float as = cpu_fp8_scale(amax) * 0.9f;
    float *das = dev_put(&as, 4);
    uint8_t *qref = malloc(4 * ni);
    cpu_fp8_quantize_act(act, 4 * ni, as, qref);
    void *dact = dev_put(NULL, 4 * ld * 2), *dq = dev_put(NULL, 4 * ld);
    void *dgu = dev_put(NULL, 4 * 2 * ni * 2), *dact2 = dev_put(NULL, 4 * ni * 2), *dq2 = dev_put(NULL, 4 * ni);
    float *got = malloc(4 * ni * sizeof(float));
    for (int64_t T = 1; T <= 4; T++) {
        CK(cudaMemset(dact, 0xff, 4 * ld * 2));
        CK(cudaMemset(dq, 0xff, 4 * ld));
        GOK(k_gemv_fp8_v2_geglu(dx, T, K, ldx, dsx, dw, ldw, dsw, ni, dact, ld, 0));
        GOK(k_gemv_fp8_v2_geglu_fp8(dx, T, K, ldx, dsx, dw, ldw, dsw, ni, das, dq, ld, 0));
        CK(cudaDeviceSynchronize());
        uint16_t *ah = get(dact, 4 * ld * 2);
        uint8_t *qh = get(dq, 4 * ld);
        int64_t ndiff = 0, far = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < ni; j++) {
                got[t * ni + j] = gm_bf16_to_f32(ah[t * ld + j]);
                uint8_t a = qh[t * ld + j], b = qref[t * ni + j];
                ndiff += a != b;
                far += !codes_adjacent(a, b);
            }
        double e = nerr_f32(got, act, T * ni);
        uint8_t *qc = malloc(T * ni);
        for (int64_t t = 0; t < T; t++)
            memcpy(qc + t * ni, qh + t * ld, ni);
        double eq = nerr_codes(qc, as, qref, as, T * ni);
        print_message("k_gemv_fp8_v2_geglu %-10s T=%lld ni=%-6lld K=%-6lld err bf16 %.2e, e4m3 %.2e (%lld/%lld codes "
                      "differ, %lld not adjacent)\n",
                      name, (long long)T, (long long)ni, (long long)K, e, eq, (long long)ndiff, (long long)(T * ni),
                      (long long)far);
        assert_true(e < v2_tol(T * ni));
        assert_true(eq < 1e-2);
        assert_int_equal(far, 0);
        assert_true(ndiff <= 1 + T * ni / 100);
        assert_true(untouched((const uint8_t *)ah, T, ni, ld, 2));
        assert_true(untouched(qh, T, ni, ld, 1));
        if (ni % 8 == 0) { /* the unfused GPU path: same sums, same roundings */
            GOK(k_gemv_fp8_v2(dx, T, K, ldx, dsx, dw, ldw, dsw, 2 * ni, dgu, 0, 2 * ni, 0));
            GOK(k_geglu(dgu, T, ni, dact2, 0));
            k_fp8_act a = {das, NULL, NULL};
            GOK(k_geglu_fp8(dgu, T, ni, &a, dq2, 0));
            CK(cudaDeviceSynchronize());
            uint16_t *a2 = get(dact2, T * ni * 2);
            uint8_t *q2 = get(dq2, T * ni);
            int64_t d_act = 0, d_q = 0;
            for (int64_t t = 0; t < T; t++)
                for (int64_t j = 0; j < ni; j++) {
                    d_act += a2[t * ni + j] != ah[t * ld + j];
                    d_q += q2[t * ni + j] != qh[t * ld + j];
                }
            if (d_act || d_q)
                print_message("  vs v2 + k_geglu: %lld bf16 and %lld e4m3 values differ\n", (long long)d_act,
                              (long long)d_q);
            assert_int_equal(d_act, 0);
            assert_int_equal(d_q, 0);
            free(a2), free(q2);
        }
        free(ah), free(qh), free(qc);
    }
    free(act), free(qref), free(got);
    cudaFree(dact), cudaFree(dq), cudaFree(dgu), cudaFree(dact2), cudaFree(dq2), cudaFree(das), cudaFree(dsx);
    cudaFree(dsw);
}

/* Raw sums [4, N] of x [4, K] (row stride ldx) . W [N, K]^T (row stride ldw): exact e4m3 values, f32 sums. */
static float *v2_sums(const uint8_t *x, int64_t K, int64_t ldx, const uint8_t *w, int64_t ldw, int64_t N)
{
    float *y = malloc(4 * N * sizeof(float));
    assert_int_equal(cpu_fp8_matmul_q_f32(x, 4, K, ldx, 1.0f, w, ldw, N, 1.0f, y, N), 0);
    return y;
}

static void test_gemv_fp8_v2(void **st)
{
    (void)st;
    /* Gemma 2b: qkv, o, gate|up, down; 7b: qkv, o, gate|up, down (N x K) */
    static const int64_t shapes[][2] = {{2560, 2048}, {2048, 2048}, {32768, 2048}, {2048, 16384},
                                        {12288, 3072}, {3072, 4096}, {49152, 3072}, {3072, 24576}};
    static const char *names[] = {"2b qkv", "2b o", "2b gate_up", "2b down", "7b qkv", "7b o", "7b gate_up", "7b down"};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int64_t N = shapes[i][0], K = shapes[i][1];
        uint8_t *w = rand_mat(N, K, K, 0), *x = rand_mat(4, K, K, 1);
        void *dw = dev_put(w, N * K), *dx = dev_put(x, 4 * K);
        float *sums = v2_sums(x, K, K, w, K, N);
        check_v2_plain(names[i], dw, N, K, K, dx, K, sums, 0.02f, 0.0003f, N);
        if (i == 2 || i == 6) /* the fused gate|up weight: its GeGLU epilogues */
            check_v2_geglu(names[i], dw, N / 2, K, K, dx, K, sums, 0.02f, 0.003f, N / 2);
        free(w), free(x), free(sums);
        cudaFree(dw), cudaFree(dx);
    }
    /* odd shapes: N % 16 != 0, K % 64 != 0, row strides past K (NaN padding) and past N */
    static const int64_t odd[][5] = { /* N, K, ldx, ldw, ldy */
                                     {8, 64, 64, 64, 8},
                                     {24, 2048, 2048, 2048, 24},
                                     {40, 80, 96, 112, 48},
                                     {100, 1040, 1056, 1040, 101},
                                     {2056, 2048, 2080, 2064, 2080},
                                     {3, 16, 32, 16, 5}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        int64_t N = odd[i][0], K = odd[i][1], ldx = odd[i][2], ldw = odd[i][3], ldy = odd[i][4];
        uint8_t *w = rand_mat(N, K, ldw, 0), *x = rand_mat(4, K, ldx, 1);
        void *dw = dev_put(w, N * ldw), *dx = dev_put(x, 4 * ldx);
        float *sums = v2_sums(x, K, ldx, w, ldw, N);
        check_v2_plain("odd", dw, N, K, ldw, dx, ldx, sums, 0.02f, 0.0003f, ldy);
        free(w), free(x), free(sums);
        cudaFree(dw), cudaFree(dx);
    }
    /* odd GeGLU widths (the weight is [2 ni, K]) */
    static const int64_t oddg[][4] = {{8, 64, 64, 8}, {24, 2048, 2048, 32}, {40, 1040, 1056, 40}, {20, 48, 64, 21}};
    for (size_t i = 0; i < sizeof oddg / sizeof oddg[0]; i++) {
        int64_t ni = oddg[i][0], K = oddg[i][1], ldw = oddg[i][2], ld = oddg[i][3];
        uint8_t *w = rand_mat(2 * ni, K, ldw, 0), *x = rand_mat(4, K, K, 1);
        void *dw = dev_put(w, 2 * ni * ldw), *dx = dev_put(x, 4 * K);
        float *sums = v2_sums(x, K, K, w, ldw, 2 * ni);
        check_v2_geglu("odd", dw, ni, K, ldw, dx, K, sums, 0.02f, 0.003f, ld);
        free(w), free(x), free(sums);
        cudaFree(dw), cudaFree(dx);
    }
    /* argument checks */
    void *d = dev_put(NULL, 4096);
    float *sc = dev_put(NULL, 4);
    uint8_t *b = d;
    assert_int_equal(k_gemv_fp8_v2(d, 0, 64, 64, sc, d, 64, sc, 8, d, 0, 8, 0), GM_OK);
    assert_int_equal(k_gemv_fp8_v2(d, 5, 64, 64, sc, d, 64, sc, 8, d, 0, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 40, 48, sc, d, 48, sc, 8, d, 0, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 64, 72, sc, d, 64, sc, 8, d, 0, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 64, 64, sc, b + 8, 64, sc, 8, d, 0, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 64, 64, sc, d, 64, sc, 8, b + 2, 1, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 64, 64, sc, d, 64, sc, 8, d, 0, 7, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2(d, 1, 64, 64, NULL, d, 64, sc, 8, d, 0, 8, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_fp8_v2_geglu(d, 1, 64, 64, sc, d, 64, sc, 8, b + 1, 8, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemv_fp8_v2_geglu_fp8(d, 1, 64, 64, sc, d, 64, sc, 8, NULL, d, 8, 0), GM_ERR_INVALID_ARG);
    cudaFree(d), cudaFree(sc);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "test_gpu_fp8: no CUDA device, skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_rmsnorm_fp8),
        cmocka_unit_test(test_geglu_fp8),
        cmocka_unit_test(test_kv_write_fp8),
        cmocka_unit_test(test_gemm_fp8),
        cmocka_unit_test(test_gemm_fp8_tune_levels),
        cmocka_unit_test(test_gemv_fp8_v2),
    };
    const char *only = getenv("GM_TEST_FILTER"); /* e.g. GM_TEST_FILTER='test_gemv*': a subset */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
