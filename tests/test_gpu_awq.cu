/* test_gpu_awq.cu - the CUDA W4A16 GEMV and GEMM against the CPU twin (cpu_awq_matmul on
 * the same bf16 activations) by normalized error, at Gemma's shapes (tiny, 2b, 7b Linears),
 * plus determinism, batch invariance of the GEMV, strides and argument errors.
 * Exits 77 (skipped) without a GPU. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

extern "C" {
#include <cmocka.h>
}

#include "common/dtype.h"
#include "kernels/cpu/cpu_awq.h"
#include "kernels/cuda/awq.cuh"

#define CK(x) assert_int_equal((int)(x), (int)cudaSuccess)

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* A random int4 weight [K, N] on host and device. */
typedef struct wt {
    int64_t K, N, G, group;
    int32_t *qw, *qz;   /* host */
    uint16_t *sc;
    void *dqw, *dqz, *dsc; /* device */
    cpu_awq_w host, dev;
} wt;

static void wt_make(wt *w, int64_t K, int64_t N, int64_t group)
{
    memset(w, 0, sizeof *w);
    w->K = K, w->N = N, w->group = group, w->G = K / group;
    w->qw = (int32_t *)malloc((size_t)(K * N / 8) * 4);
    w->qz = (int32_t *)malloc((size_t)(w->G * N / 8) * 4);
    w->sc = (uint16_t *)malloc((size_t)(w->G * N) * 2);
    /* random nibbles, zeros and scales directly (quantizing a float matrix is slow at 7b sizes) */
    for (int64_t i = 0; i < K * N / 8; i++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        w->qw[i] = (int32_t)(uint32_t)(g_rng >> 32);
    }
    for (int64_t i = 0; i < w->G * N / 8; i++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        w->qz[i] = (int32_t)(uint32_t)(g_rng >> 32);
    }
    for (int64_t i = 0; i < w->G * N; i++)
        w->sc[i] = gm_f32_to_f16(0.002f + 0.01f * (frand() + 1.0f));
    CK(cudaMalloc(&w->dqw, (size_t)(K * N / 8) * 4));
    CK(cudaMalloc(&w->dqz, (size_t)(w->G * N / 8) * 4));
    CK(cudaMalloc(&w->dsc, (size_t)(w->G * N) * 2));
    CK(cudaMemcpy(w->dqw, w->qw, (size_t)(K * N / 8) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w->dqz, w->qz, (size_t)(w->G * N / 8) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w->dsc, w->sc, (size_t)(w->G * N) * 2, cudaMemcpyHostToDevice));
    w->host = cpu_awq_w{w->qw, w->qz, w->sc, K, N, N / 8, N, group};
    w->dev = cpu_awq_w{(const int32_t *)w->dqw, (const int32_t *)w->dqz, (const uint16_t *)w->dsc, K, N, N / 8, N,
                       group};
}

static void wt_free(wt *w)
{
    free(w->qw), free(w->qz), free(w->sc);
    cudaFree(w->dqw), cudaFree(w->dqz), cudaFree(w->dsc);
}

/* Run one product on the GPU (gemv when use_gemv) and on the CPU; return the normalized error.
 * ldx = K + 8, ldy = N + 64 to exercise strides. y_out (optional, [M, ldy] bf16 bits) keeps the GPU result. */
static double check(const wt *w, int64_t M, bool use_gemv, uint16_t *y_out, const uint16_t *x_in)
{
    int64_t K = w->K, N = w->N, ldx = K + 8, ldy = N + 64;
    uint16_t *xb = (uint16_t *)calloc((size_t)(M * ldx), 2);
    float *xf = (float *)malloc((size_t)(M * K) * 4);
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            uint16_t v = x_in ? x_in[m * K + k] : gm_f32_to_bf16(frand());
            xb[m * ldx + k] = v;
            xf[m * K + k] = gm_bf16_to_f32(v);
        }
    void *dx, *dy, *ws = NULL;
    CK(cudaMalloc(&dx, (size_t)(M * ldx) * 2));
    CK(cudaMalloc(&dy, (size_t)(M * ldy) * 2));
    CK(cudaMemcpy(dx, xb, (size_t)(M * ldx) * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dy, 0, (size_t)(M * ldy) * 2));
    size_t wsb = awq_gemv_workspace_bytes(N, K, w->group);
    if (wsb) {
        CK(cudaMalloc(&ws, wsb));
        CK(cudaMemset(ws, 0, wsb));
    }
    gm_status st = use_gemv ? awq_gemv(dx, M, ldx, &w->dev, dy, ldy, ws, wsb, 0)
                            : awq_gemm(dx, M, ldx, &w->dev, dy, ldy, 0);
    if (st)
        print_error("%s\n", gm_last_error());
    assert_int_equal(st, GM_OK);
    CK(cudaDeviceSynchronize());
    uint16_t *yb = (uint16_t *)malloc((size_t)(M * ldy) * 2);
    CK(cudaMemcpy(yb, dy, (size_t)(M * ldy) * 2, cudaMemcpyDeviceToHost));
    if (use_gemv && wsb) { /* a second call (counters reset by the first) gives the same bits */
        assert_int_equal(awq_gemv(dx, M, ldx, &w->dev, dy, ldy, ws, wsb, 0), GM_OK);
        uint16_t *y2 = (uint16_t *)malloc((size_t)(M * ldy) * 2);
        CK(cudaMemcpy(y2, dy, (size_t)(M * ldy) * 2, cudaMemcpyDeviceToHost));
        assert_memory_equal(y2, yb, (size_t)(M * ldy) * 2);
        free(y2);
    }
    float *yc = (float *)malloc((size_t)(M * N) * 4);
    assert_int_equal(cpu_awq_matmul(xf, M, K, &w->host, yc, N), 0);
    double num = 0, den = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double g = gm_bf16_to_f32(yb[m * ldy + n]), c = yc[m * N + n];
            num += (g - c) * (g - c), den += c * c;
        }
    if (y_out)
        memcpy(y_out, yb, (size_t)(M * ldy) * 2);
    free(xb), free(xf), free(yb), free(yc);
    cudaFree(dx), cudaFree(dy), cudaFree(ws);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct shape {
    const char *name;
    int64_t K, N, group;
} shape;

static const shape g_shapes[] = {
    {"tiny kv", 128, 64, 32},        {"tiny gate", 128, 512, 32},     {"tiny down", 512, 128, 64},
    {"2b q/o", 2048, 2048, 128},     {"2b kv", 2048, 256, 128},       {"2b gate/up", 2048, 16384, 128},
    {"2b down", 16384, 2048, 128},   {"7b q", 3072, 4096, 128},       {"7b o", 4096, 3072, 128},
    {"7b gate/up", 3072, 24576, 128}, {"7b down", 24576, 3072, 128},
};

static void test_gemv(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_shapes / sizeof g_shapes[0]; i++) {
        wt w;
        wt_make(&w, g_shapes[i].K, g_shapes[i].N, g_shapes[i].group);
        const int64_t Ms[] = {1, 2, 4, 8};
        for (int j = 0; j < 4; j++) {
            double e = check(&w, Ms[j], true, NULL, NULL);
            print_message("gemv %-10s K %6lld N %6lld g %3lld M %lld: normalized error %.2e\n", g_shapes[i].name,
                          (long long)w.K, (long long)w.N, (long long)w.group, (long long)Ms[j], e);
            assert_true(e < 5e-3);
        }
        wt_free(&w);
    }
}

static void test_gemm(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_shapes / sizeof g_shapes[0]; i++) {
        wt w;
        wt_make(&w, g_shapes[i].K, g_shapes[i].N, g_shapes[i].group);
        bool big = w.K * w.N > 20000000;
        const int64_t Ms[] = {1, 5, 16, 33, 64, 200, 515};
        for (int j = 0; j < 7; j++) {
            if (big && Ms[j] > 64)
                continue; /* the CPU twin would take minutes */
            double e = check(&w, Ms[j], false, NULL, NULL);
            print_message("gemm %-10s K %6lld N %6lld g %3lld M %lld: normalized error %.2e\n", g_shapes[i].name,
                          (long long)w.K, (long long)w.N, (long long)w.group, (long long)Ms[j], e);
            assert_true(e < 1e-2);
        }
        wt_free(&w);
    }
}

/* Row r of a 4-row GEMV is bit-identical to the 1-row GEMV of x's row r. */
static void test_gemv_batch_invariant(void **state)
{
    (void)state;
    wt w;
    wt_make(&w, 2048, 2048, 128);
    const int64_t K = w.K, ldy = w.N + 64;
    uint16_t *x = (uint16_t *)malloc((size_t)(4 * K) * 2);
    for (int64_t i = 0; i < 4 * K; i++)
        x[i] = gm_f32_to_bf16(frand());
    uint16_t *y4 = (uint16_t *)malloc((size_t)(4 * ldy) * 2), *y1 = (uint16_t *)malloc((size_t)ldy * 2);
    check(&w, 4, true, y4, x);
    for (int r = 0; r < 4; r++) {
        check(&w, 1, true, y1, x + r * K);
        assert_memory_equal(y1, y4 + r * ldy, (size_t)w.N * 2);
    }
    free(x), free(y4), free(y1);
    wt_free(&w);
}

static void test_errors(void **state)
{
    (void)state;
    wt w;
    wt_make(&w, 256, 128, 64);
    void *dx, *dy;
    CK(cudaMalloc(&dx, 16 * 256 * 2));
    CK(cudaMalloc(&dy, 16 * 256 * 2));
    cpu_awq_w bad = w.dev;
    bad.N = 96, bad.lds = 96, bad.ldq = 12;
    assert_int_equal(awq_gemm(dx, 4, 256, &bad, dy, 128, 0), GM_ERR_UNSUPPORTED);
    bad = w.dev;
    bad.group = 48;
    assert_int_equal(awq_gemv(dx, 1, 256, &bad, dy, 128, NULL, 0, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(awq_gemv(dx, 9, 256, &w.dev, dy, 128, NULL, 0, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(awq_gemm(dx, 4, 250, &w.dev, dy, 128, 0), GM_ERR_INVALID_ARG); /* ldx < K */
    assert_int_equal(awq_gemm((char *)dx + 2, 4, 256, &w.dev, dy, 128, 0), GM_ERR_INVALID_ARG);
    wt big;
    wt_make(&big, 16384, 2048, 128); /* split K: needs a workspace */
    if (awq_gemv_workspace_bytes(2048, 16384, 128) > 0)
        assert_int_equal(awq_gemv(dx, 1, 16384, &big.dev, dy, 2048, NULL, 0, 0), GM_ERR_INVALID_ARG);
    wt_free(&big);
    cudaFree(dx), cudaFree(dy);
    wt_free(&w);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("test_gpu_awq: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_gemv_batch_invariant),
        cmocka_unit_test(test_gemm),
    };
    return cmocka_run_group_tests_name("gpu_awq", tests, NULL, NULL);
}
