/* test_gpu_awq.cu - the CUDA W4A16 products (kernels/cuda/gemm_awq.cuh: k_gemv_awq, k_gemm_awq_mma and
 * the dispatcher k_gemm_awq) against the CPU twin (cpu_awq_matmul on the same bf16 activations) by
 * normalized error, at Gemma's shapes (tiny, 2b, 7b Linears, fused ones) and odd ones, plus determinism
 * (a second call on the same workspace gives the same bits), batch invariance of the GEMV, writes
 * confined to y [M, N], weight slices, graph capture, and argument errors. Exits 77 (skipped) without
 * a GPU. Usage: test_gpu_awq [PATTERN] (cmocka test filter). */
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
#include "kernels/cpu/gemm_awq.h"
#include "kernels/cuda/gemm_awq.cuh"

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

/* What check() runs on the GPU. */
enum { RUN_GEMM = 0, RUN_GEMV = 1, RUN_MATMUL = 2 };

static gm_status run_kind(int kind, const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                          void *ws, size_t wsb, cudaStream_t s)
{
    switch (kind) {
    case RUN_GEMV: return k_gemv_awq(x, M, ldx, w, y, ldy, ws, wsb, s);
    case RUN_MATMUL: return k_gemm_awq(x, M, ldx, w, y, ldy, ws, wsb, s);
    default: return k_gemm_awq_mma(x, M, ldx, w, y, ldy, s);
    }
}

static bool g_skip_cpu; /* check() runs only the GPU side (tests that compare GPU bits) */

#define Y_POISON 0x5a5au /* bf16 bits of y outside [M, N] (and before a repeated call) */

/* Run one product on the GPU (kind) and on the CPU; return the normalized error.
 * ldx = K + 8, ldy = N + 64 to exercise strides. y_out (optional, [M, ldy] bf16 bits) keeps the GPU result.
 * k_gemv_awq and k_gemm_awq: y [M + 1, ldy] starts as Y_POISON and must keep it outside [M, N]; the
 * workspace is k_gemv_awq_workspace_bytes', and a second call on the same workspace (y poisoned again)
 * must give the same bits. */
static double check(const wt *w, int64_t M, int kind, uint16_t *y_out, const uint16_t *x_in)
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
    const bool fenced = kind == RUN_GEMV || kind == RUN_MATMUL;
    const int64_t yrows = fenced ? M + 1 : M; /* one sentinel row after y */
    void *dx, *dy, *ws = NULL;
    CK(cudaMalloc(&dx, (size_t)(M * ldx) * 2));
    CK(cudaMalloc(&dy, (size_t)(yrows * ldy) * 2));
    CK(cudaMemcpy(dx, xb, (size_t)(M * ldx) * 2, cudaMemcpyHostToDevice));
    if (fenced)
        CK(cudaMemset(dy, Y_POISON & 0xff, (size_t)(yrows * ldy) * 2));
    else
        CK(cudaMemset(dy, 0, (size_t)(M * ldy) * 2));
    size_t wsb = k_gemv_awq_workspace_bytes(N, K, w->group);
    if (wsb) {
        CK(cudaMalloc(&ws, wsb));
        CK(cudaMemset(ws, 0, wsb));
    }
    gm_status st = run_kind(kind, dx, M, ldx, &w->dev, dy, ldy, ws, wsb, 0);
    if (st)
        print_error("%s\n", gm_last_error());
    assert_int_equal(st, GM_OK);
    CK(cudaDeviceSynchronize());
    uint16_t *yb = (uint16_t *)malloc((size_t)(yrows * ldy) * 2);
    CK(cudaMemcpy(yb, dy, (size_t)(yrows * ldy) * 2, cudaMemcpyDeviceToHost));
    if (fenced) /* nothing written outside y [M, N] */
        for (int64_t m = 0; m < yrows; m++)
            for (int64_t n = m < M ? N : 0; n < ldy; n++)
                if (yb[m * ldy + n] != Y_POISON)
                    fail_msg("kind %d K %lld N %lld M %lld: y[%lld][%lld] written outside [M, N]", kind, (long long)K,
                             (long long)N, (long long)M, (long long)m, (long long)n);
    if (fenced) { /* a second call (counters reset by the first) gives the same bits */
        if (fenced)
            CK(cudaMemset(dy, Y_POISON & 0xff, (size_t)(yrows * ldy) * 2));
        assert_int_equal(run_kind(kind, dx, M, ldx, &w->dev, dy, ldy, ws, wsb, 0), GM_OK);
        uint16_t *y2 = (uint16_t *)malloc((size_t)(yrows * ldy) * 2);
        CK(cudaMemcpy(y2, dy, (size_t)(yrows * ldy) * 2, cudaMemcpyDeviceToHost));
        assert_memory_equal(y2, yb, (size_t)(yrows * ldy) * 2);
        free(y2);
    }
    if (g_skip_cpu) { /* bits only (batch invariance) */
        if (y_out)
            memcpy(y_out, yb, (size_t)(M * ldy) * 2);
        free(xb), free(xf), free(yb);
        cudaFree(dx), cudaFree(dy), cudaFree(ws);
        return 0.0;
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
            double e = check(&w, Ms[j], RUN_GEMM, NULL, NULL);
            print_message("gemm %-10s K %6lld N %6lld g %3lld M %lld: normalized error %.2e\n", g_shapes[i].name,
                          (long long)w.K, (long long)w.N, (long long)w.group, (long long)Ms[j], e);
            assert_true(e < 1e-2);
        }
        wt_free(&w);
    }
}

/* Bad arguments of the GEMM are errors (the GEMV's: test_gemv_errors). */
static void test_gemm_errors(void **state)
{
    (void)state;
    wt w;
    wt_make(&w, 256, 128, 64);
    void *dx, *dy;
    CK(cudaMalloc(&dx, 16 * 256 * 2));
    CK(cudaMalloc(&dy, 16 * 256 * 2));
    cpu_awq_w bad = w.dev;
    bad.N = 96, bad.lds = 96, bad.ldq = 12;
    assert_int_equal(k_gemm_awq_mma(dx, 4, 256, &bad, dy, 128, 0), GM_ERR_UNSUPPORTED);
    assert_int_equal(k_gemm_awq_mma(dx, 4, 250, &w.dev, dy, 128, 0), GM_ERR_INVALID_ARG); /* ldx < K */
    assert_int_equal(k_gemm_awq_mma((char *)dx + 2, 4, 256, &w.dev, dy, 128, 0), GM_ERR_INVALID_ARG);
    cudaFree(dx), cudaFree(dy);
    wt_free(&w);
}

/* ---- k_gemv_awq ---- */

typedef struct shape_m {
    const char *name;
    int64_t K, N, group;
    int64_t Ms[5]; /* 0 ends the list */
} shape_m;

static const shape_m g_shapes2[] = {
    /* Gemma 2b/7b Linears (fused as the CUDA engine runs them) at other groups */
    {"2b qkv", 2048, 2560, 128, {1, 2, 3, 4, 8}},
    {"2b qkv g64", 2048, 2560, 64, {1, 4, 0}},
    {"2b qkv g32", 2048, 2560, 32, {1, 3, 0}},
    {"2b down g32", 16384, 2048, 32, {1, 4, 0}},
    {"2b down g64", 16384, 2048, 64, {1, 4, 0}},
    {"2b gu fused", 2048, 32768, 128, {1, 4, 0}},
    {"7b qkv", 3072, 12288, 128, {1, 4, 0}},
    {"7b gate/up g32", 3072, 24576, 32, {1, 4, 0}},
    {"7b gate/up g64", 3072, 24576, 64, {1, 0}},
    {"7b gu fused", 3072, 49152, 128, {1, 0}},
    /* odd shapes: one column tile, K = group, partly filled blocks, long split K */
    {"N64 K32", 32, 64, 32, {1, 2, 3, 4, 8}},
    {"N64 K64", 64, 64, 64, {1, 4, 0}},
    {"N64 K128", 128, 64, 128, {1, 3, 8, 0}},
    {"N128 K256", 256, 128, 128, {1, 4, 0}},
    {"N192 K64", 64, 192, 32, {1, 4, 0}},
    {"N320 K128", 128, 320, 64, {1, 4, 0}},
    {"N192 K256", 256, 192, 32, {2, 0}},
    {"N8192 K32", 32, 8192, 32, {1, 4, 0}},
    {"N64 K16384", 16384, 64, 128, {1, 4, 0}},
    {"N2048 K1920", 1920, 2048, 128, {1, 5, 0}},
};

static void run_gemv_shape(int kind, const char *name, int64_t K, int64_t N, int64_t group, const int64_t *Ms, int nM)
{
    wt w;
    wt_make(&w, K, N, group);
    for (int j = 0; j < nM && Ms[j]; j++) {
        double e = check(&w, Ms[j], kind, NULL, NULL);
        print_message("%s %-14s K %6lld N %6lld g %3lld M %lld: normalized error %.2e (ws %zu B)\n",
                      kind == RUN_GEMV ? "gemv" : "gemm_awq", name,
                      (long long)K, (long long)N, (long long)group, (long long)Ms[j], e,
                      k_gemv_awq_workspace_bytes(N, K, group));
        assert_true(e < 5e-3);
    }
    wt_free(&w);
}

/* k_gemv_awq at the shapes the GEMM is tested at, M = 1, 2, 3, 4, 8. */
static void test_gemv(void **state)
{
    (void)state;
    const int64_t Ms[] = {1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof g_shapes / sizeof g_shapes[0]; i++)
        run_gemv_shape(RUN_GEMV, g_shapes[i].name, g_shapes[i].K, g_shapes[i].N, g_shapes[i].group, Ms, 5);
}

/* Other groups, fused and odd shapes. */
static void test_gemv_shapes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_shapes2 / sizeof g_shapes2[0]; i++)
        run_gemv_shape(RUN_GEMV, g_shapes2[i].name, g_shapes2[i].K, g_shapes2[i].N, g_shapes2[i].group,
                        g_shapes2[i].Ms, 5);
}

/* Row r of a 4-row (and 8-row) call is bit-identical to the 1-row call on x's row r. */
static void batch_invariant(int kind)
{
    const int64_t shapes[][3] = {{2048, 2048, 128}, {16384, 2048, 128}, {3072, 24576, 128}, {2048, 2560, 32}};
    for (int si = 0; si < 4; si++) {
        wt w;
        wt_make(&w, shapes[si][0], shapes[si][1], shapes[si][2]);
        const int64_t K = w.K, ldy = w.N + 64;
        uint16_t *x = (uint16_t *)malloc((size_t)(8 * K) * 2);
        for (int64_t i = 0; i < 8 * K; i++)
            x[i] = gm_f32_to_bf16(frand());
        uint16_t *y8 = (uint16_t *)malloc((size_t)(9 * ldy) * 2), *y4 = (uint16_t *)malloc((size_t)(5 * ldy) * 2),
                 *y1 = (uint16_t *)malloc((size_t)(2 * ldy) * 2);
        g_skip_cpu = true;
        check(&w, 8, kind, y8, x);
        check(&w, 4, kind, y4, x);
        for (int r = 0; r < 8; r++) {
            check(&w, 1, kind, y1, x + r * K);
            assert_memory_equal(y1, y8 + r * ldy, (size_t)w.N * 2);
            if (r < 4)
                assert_memory_equal(y1, y4 + r * ldy, (size_t)w.N * 2);
        }
        g_skip_cpu = false;
        free(x), free(y8), free(y4), free(y1);
        wt_free(&w);
    }
}

static void test_gemv_batch_invariant(void **state)
{
    (void)state;
    batch_invariant(RUN_GEMV);
}

/* A slice of a larger weight (columns 512..1535 of 2048, rows 256..1279 of 2048): strides ldq,
 * lds larger than N, pointers inside the tensors. */
static void test_gemv_slice(void **state)
{
    (void)state;
    wt w;
    wt_make(&w, 2048, 2048, 128);
    const int64_t n0 = 512, k0 = 256, N = 1024, K = 1024, M = 3, ldx = K, ldy = N;
    cpu_awq_w hs = w.host, ds = w.dev;
    hs.qweight += k0 * hs.ldq + n0 / 8, hs.qzeros += k0 / 128 * hs.ldq + n0 / 8, hs.scales += k0 / 128 * hs.lds + n0;
    ds.qweight += k0 * ds.ldq + n0 / 8, ds.qzeros += k0 / 128 * ds.ldq + n0 / 8, ds.scales += k0 / 128 * ds.lds + n0;
    hs.K = ds.K = K, hs.N = ds.N = N;
    uint16_t *xb = (uint16_t *)malloc((size_t)(M * K) * 2), *yb = (uint16_t *)malloc((size_t)(M * N) * 2);
    float *xf = (float *)malloc((size_t)(M * K) * 4), *yc = (float *)malloc((size_t)(M * N) * 4);
    for (int64_t i = 0; i < M * K; i++) {
        xb[i] = gm_f32_to_bf16(frand());
        xf[i] = gm_bf16_to_f32(xb[i]);
    }
    void *dx, *dy, *ws = NULL;
    size_t wsb = k_gemv_awq_workspace_bytes(N, K, 128);
    CK(cudaMalloc(&dx, (size_t)(M * K) * 2));
    CK(cudaMalloc(&dy, (size_t)(M * N) * 2));
    if (wsb) {
        CK(cudaMalloc(&ws, wsb));
        CK(cudaMemset(ws, 0, wsb));
    }
    CK(cudaMemcpy(dx, xb, (size_t)(M * K) * 2, cudaMemcpyHostToDevice));
    gm_status st = k_gemv_awq(dx, M, ldx, &ds, dy, ldy, ws, wsb, 0);
    if (st)
        print_error("%s\n", gm_last_error());
    assert_int_equal(st, GM_OK);
    CK(cudaMemcpy(yb, dy, (size_t)(M * N) * 2, cudaMemcpyDeviceToHost));
    assert_int_equal(cpu_awq_matmul(xf, M, K, &hs, yc, N), 0);
    double num = 0, den = 0;
    for (int64_t i = 0; i < M * N; i++) {
        double g = gm_bf16_to_f32(yb[i]), c = yc[i];
        num += (g - c) * (g - c), den += c * c;
    }
    print_message("gemv slice K %lld N %lld of 2048 x 2048: normalized error %.2e\n", (long long)K, (long long)N,
                  sqrt(num / den));
    assert_true(sqrt(num / den) < 5e-3);
    free(xb), free(yb), free(xf), free(yc);
    cudaFree(dx), cudaFree(dy), cudaFree(ws);
    wt_free(&w);
}

/* Device buffers of one call on weight w: x [M, K] random bf16 (host copy xb too), y [M, N], and a
 * zeroed workspace of k_gemv_awq_workspace_bytes. */
typedef struct io {
    uint16_t *xb;
    void *dx, *dy, *ws;
    size_t wsb;
} io;

static void io_make(io *b, const wt *w, int64_t M)
{
    const int64_t K = w->K, N = w->N;
    b->xb = (uint16_t *)malloc((size_t)(M * K) * 2);
    for (int64_t i = 0; i < M * K; i++)
        b->xb[i] = gm_f32_to_bf16(frand());
    b->ws = NULL;
    b->wsb = k_gemv_awq_workspace_bytes(N, K, w->host.group);
    CK(cudaMalloc(&b->dx, (size_t)(M * K) * 2));
    CK(cudaMalloc(&b->dy, (size_t)(M * N) * 2));
    if (b->wsb) {
        CK(cudaMalloc(&b->ws, b->wsb));
        CK(cudaMemset(b->ws, 0, b->wsb));
    }
    CK(cudaMemcpy(b->dx, b->xb, (size_t)(M * K) * 2, cudaMemcpyHostToDevice));
}

static void io_free(io *b)
{
    free(b->xb);
    cudaFree(b->dx), cudaFree(b->dy), cudaFree(b->ws);
}

/* Captured into a CUDA graph on a stream (PDL edges and all), replays give the direct call's bits. */
static void graph_replay(int kind)
{
    wt w;
    wt_make(&w, 16384, 2048, 128); /* split K: workspace and counters in the graph */
    const int64_t M = 2, K = w.K, N = w.N;
    io b;
    io_make(&b, &w, M);
    void *dx = b.dx, *dy = b.dy, *ws = b.ws;
    size_t wsb = b.wsb;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    assert_int_equal(run_kind(kind, dx, M, K, &w.dev, dy, N, ws, wsb, s), GM_OK);
    CK(cudaStreamSynchronize(s));
    uint16_t *y0 = (uint16_t *)malloc((size_t)(M * N) * 2), *y1 = (uint16_t *)malloc((size_t)(M * N) * 2);
    CK(cudaMemcpy(y0, dy, (size_t)(M * N) * 2, cudaMemcpyDeviceToHost));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    gm_status st = run_kind(kind, dx, M, K, &w.dev, dy, N, ws, wsb, s);
    st = st ? st : run_kind(kind, dx, M, K, &w.dev, dy, N, ws, wsb, s); /* two back to back: PDL edge */
    CK(cudaStreamEndCapture(s, &graph));
    assert_int_equal(st, GM_OK);
    CK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 3; rep++) {
        CK(cudaMemset(dy, 0, (size_t)(M * N) * 2));
        CK(cudaGraphLaunch(exec, s));
        CK(cudaStreamSynchronize(s));
        CK(cudaMemcpy(y1, dy, (size_t)(M * N) * 2, cudaMemcpyDeviceToHost));
        assert_memory_equal(y1, y0, (size_t)(M * N) * 2);
    }
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    CK(cudaStreamDestroy(s));
    free(y0), free(y1);
    io_free(&b);
    wt_free(&w);
}

static void test_gemv_graph(void **state)
{
    (void)state;
    graph_replay(RUN_GEMV);
}

/* k_gemm_awq (the GEMV up to AWQ_GEMV_ROWS rows, the GEMM above) at fused and odd shapes, on one
 * workspace per shape (check() repeats each call on it and wants the same bits). */
static void test_matmul(void **state)
{
    (void)state;
    const int64_t shapes[][3] = {{128, 512, 32}, {2048, 2048, 128}, {16384, 2048, 128}, {3072, 12288, 128}};
    for (int si = 0; si < 4; si++) {
        wt w;
        wt_make(&w, shapes[si][0], shapes[si][1], shapes[si][2]);
        const int64_t Ms[] = {1, 4, 5};
        for (int j = 0; j < 3; j++) {
            double e = check(&w, Ms[j], RUN_MATMUL, NULL, NULL);
            print_message("matmul K %6lld N %6lld M %lld: normalized error %.2e\n", (long long)w.K, (long long)w.N,
                          (long long)Ms[j], e);
            assert_true(e < (Ms[j] <= AWQ_GEMV_ROWS ? 5e-3 : 1e-2));
        }
        wt_free(&w);
    }
}

static void test_gemv_errors(void **state)
{
    (void)state;
    wt w;
    wt_make(&w, 256, 128, 64);
    void *dx, *dy, *ws;
    CK(cudaMalloc(&dx, 16 * 256 * 2));
    CK(cudaMalloc(&dy, 16 * 256 * 2));
    CK(cudaMalloc(&ws, 1 << 20));
    CK(cudaMemset(ws, 0, 1 << 20));
    assert_int_equal(k_gemv_awq(NULL, 1, 256, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 1, 256, &w.dev, NULL, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 1, 256, NULL, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 0, 256, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 9, 256, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 4, 250, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG); /* ldx < K */
    assert_int_equal(k_gemv_awq(dx, 4, 260, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG); /* ldx % 8 */
    assert_int_equal(k_gemv_awq(dx, 4, 256, &w.dev, dy, 100, ws, 1 << 20, 0), GM_ERR_INVALID_ARG); /* ldy < N */
    assert_int_equal(k_gemv_awq((char *)dx + 2, 4, 256, &w.dev, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq(dx, 4, 256, &w.dev, (char *)dy + 8, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    cpu_awq_w bad = w.dev;
    bad.group = 48;
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_UNSUPPORTED);
    bad.group = 256;
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_UNSUPPORTED);
    bad = w.dev;
    bad.N = 96, bad.lds = 96, bad.ldq = 12;
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_UNSUPPORTED);
    bad = w.dev;
    bad.K = 200; /* not a multiple of the group */
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_UNSUPPORTED);
    bad = w.dev;
    bad.ldq = 18; /* ldq % 4 */
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    bad = w.dev;
    bad.scales = (const uint16_t *)((const char *)bad.scales + 2);
    assert_int_equal(k_gemv_awq(dx, 1, 256, &bad, dy, 128, ws, 1 << 20, 0), GM_ERR_INVALID_ARG);
    assert_int_equal(k_gemv_awq_workspace_bytes(96, 256, 64), (size_t)0); /* bad shapes need nothing */
    assert_int_equal(k_gemv_awq_workspace_bytes(128, 256, 256), (size_t)0);
    wt big;
    wt_make(&big, 16384, 2048, 128); /* split K: needs a workspace */
    size_t need = k_gemv_awq_workspace_bytes(2048, 16384, 128);
    if (need > 0) {
        void *bws;
        CK(cudaMalloc(&bws, need + 256));
        CK(cudaMemset(bws, 0, need + 256));
        assert_int_equal(k_gemv_awq(dx, 1, 16384, &big.dev, dy, 2048, NULL, 0, 0), GM_ERR_INVALID_ARG);
        assert_int_equal(k_gemv_awq(dx, 1, 16384, &big.dev, dy, 2048, bws, need - 4, 0), GM_ERR_INVALID_ARG);
        assert_int_equal(k_gemv_awq(dx, 1, 16384, &big.dev, dy, 2048, (char *)bws + 16, need, 0), GM_ERR_INVALID_ARG);
        cudaFree(bws);
    }
    CK(cudaDeviceSynchronize()); /* none of the refused calls launched anything that fails */
    CK(cudaGetLastError());
    wt_free(&big);
    cudaFree(dx), cudaFree(dy), cudaFree(ws);
    wt_free(&w);
}

/* test_gpu_awq [PATTERN]: only the tests whose names match PATTERN (cmocka's * and ? wildcards). */
int main(int argc, char **argv)
{
    int n = 0;
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("test_gpu_awq: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_errors),
        cmocka_unit_test(test_gemv_errors),
        cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_gemv_shapes),
        cmocka_unit_test(test_gemv_batch_invariant),
        cmocka_unit_test(test_gemv_slice),
        cmocka_unit_test(test_gemv_graph),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_gemm),
    };
    return cmocka_run_group_tests_name("gpu_awq", tests, NULL, NULL);
}
