/* fp8_gemm_bench.cu - cuBLASLt e4m3 GEMM (k_gemm_fp8) at Gemma's linear shapes, beside 1386 TFLOP/s
 * (H200, 8192^3 FP8; 1404 measured in run B, bench/history/NOTES.md) and beside the bf16 path (k_gemm_bf16,
 * GEMV for T <= 4) on the same shapes in the same run. Small T is weight-read bound, so the weight GB/s is printed beside
 * 4.2 TB/s too. The 8192^3 FP8 and bf16 rates measured in this run are printed first.
 * Weights rotate over enough copies to exceed the L2 cache. Median of 5 timed groups.
 * First a GEMV section: k_gemv_fp8_v1 (the first FP8 GEMV) vs k_gemv_fp8_v2 at T = 1, 2, 4, timed eagerly
 * (back-to-back launches) and replayed from a CUDA graph (as decode runs; v2's PDL edges included), in
 * us and weight GB/s beside the device-to-device copy rate measured in the same run, plus the GeGLU
 * paths of the gate|up shapes (v1 GEMV + k_geglu[_fp8] vs one v2 launch).
 *
 *   fp8_gemm_bench [--models 2b,7b] [--t 1,2,4,8,16,64,256,1024,4096] [--fast 0|1|2 (both)] [--csv FILE]
 *                  [--gemv-t 1,2,4] [--gemv-only] [--no-gemv] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/status.h"
#include "kernels/cuda/quant_fp8.cuh"
#include "kernels/cuda/geglu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemm_fp8.cuh"

#define BENCH_NAME "fp8_gemm_bench"
#include "bench/bench_check.h"

#define CEIL_FP8 1386.0 /* TFLOP/s, H200 8192^3 (the rate this bench prints measured: ~1400) */
#define CEIL_GBS 4200.0

/* e4m3 codes (fp8 = 1; |v| in [2^-3, 2^4], never NaN) or bf16 values in [-1, 1) (fp8 = 0). */
__global__ void fill_kernel(uint8_t *p, int64_t nbytes, uint64_t seed, int fp8)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nbytes / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t h = (uint64_t)i * 0x9e3779b97f4a7c15ull + seed;
        h ^= h >> 29;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 32;
        uint32_t r = (uint32_t)h, v = 0;
        if (fp8) {
            for (int k = 0; k < 4; k++) {
                uint32_t b = (r >> (8 * k)) & 0xff;
                b = (b & 0x87) | ((4 + ((b >> 3) & 7)) << 3);
                if ((b & 0x7f) == 0x7f)
                    b ^= 1;
                v |= b << (8 * k);
            }
        } else {
            uint32_t lo = (r & 0x807f) | ((120 + ((r >> 7) & 7)) << 7);
            uint32_t hi = ((r >> 16) & 0x807f) | ((120 + ((r >> 23) & 7)) << 7);
            v = (lo & 0xffff) | (hi << 16);
        }
        reinterpret_cast<uint32_t *>(p)[i] = v;
    }
}

static void *dev_rand(size_t bytes, uint64_t seed, int fp8)
{
    void *p;
    CU(cudaMalloc(&p, bytes < 256 ? 256 : bytes));
    fill_kernel<<<132 * 16, 256>>>((uint8_t *)p, (int64_t)bytes, seed, fp8);
    CU(cudaGetLastError());
    return p;
}

typedef struct gctx {
    k_gemm_fp8_ctx *g8;
    k_gemm_ctx *g16;
    void *x8, *x16, *y;
    void *w8[64], *w16[64];
    int nrot;
    float *sx, *sw;
    int64_t T, N, K;
    int bf16;
    int path; /* 0 k_gemm_fp8 (dispatch), 1 cuBLASLt, 2 GEMV */
} gctx;

static void run_one(gctx *c, int rep)
{
    int r = rep % c->nrot;
    if (c->bf16)
        GOK(k_gemm_bf16(c->g16, c->x16, c->T, c->K, c->K, c->w16[r], c->K, c->N, c->y, 0, c->N, 0));
    else if (c->path == 1)
        GOK(k_gemm_fp8_lt(c->g8, c->x8, c->T, c->K, c->K, c->sx, c->w8[r], c->K, c->sw, c->N, c->y, 0, c->N, 0));
    else if (c->path == 2)
        GOK(k_gemv_fp8(c->x8, c->T, c->K, c->K, c->sx, c->w8[r], c->K, c->sw, c->N, c->y, 0, c->N, 0));
    else
        GOK(k_gemm_fp8(c->g8, c->x8, c->T, c->K, c->K, c->sx, c->w8[r], c->K, c->sw, c->N, c->y, 0, c->N, 0));
}

static void run_one_v(void *c, int rep) { run_one((gctx *)c, rep); }

static double time_us(gctx *c, int reps) { return bench_time_us(run_one_v, c, reps); }

/* The x and w scales on the device, each 256-byte aligned (cuBLASLt refused the 8192^3 product with the
 * weight scale 4 bytes after the input scale: "the requested functionality is not supported", H200 run of
 * 23:00Z). */
static void gctx_scales(gctx *c)
{
    float s[65] = {0.01f};
    s[64] = 0.002f;
    CU(cudaMalloc(&c->sx, sizeof s));
    CU(cudaMemcpy(c->sx, s, sizeof s, cudaMemcpyHostToDevice));
    c->sw = c->sx + 64;
}

/* Time one shape in fp8 (and bf16 when with_bf16); returns fp8 microseconds. */
static double bench_shape(k_gemm_fp8_ctx *g8, k_gemm_ctx *g16, const char *name, int64_t T, int64_t N, int64_t K,
                          int with_bf16, int fast, FILE *csv)
{
    gctx c;
    memset(&c, 0, sizeof c);
    c.g8 = g8, c.g16 = g16, c.T = T, c.N = N, c.K = K;
    size_t wb = (size_t)N * K;
    c.nrot = (int)ceil(256e6 / (double)wb);
    if (c.nrot < 1 || T >= 256)
        c.nrot = 1;
    if (c.nrot > 64)
        c.nrot = 64;
    for (int i = 0; i < c.nrot; i++) {
        c.w8[i] = dev_rand(wb, 100 + i, 1);
        if (with_bf16)
            c.w16[i] = dev_rand(wb * 2, 200 + i, 0);
    }
    c.x8 = dev_rand((size_t)T * K, 3, 1);
    c.x16 = dev_rand((size_t)T * K * 2, 4, 0);
    CU(cudaMalloc(&c.y, (size_t)T * N * 2));
    gctx_scales(&c);
    double flops = 2.0 * T * N * K;
    double est = flops / (CEIL_FP8 * 1e12) + wb / (CEIL_GBS * 1e9);
    int reps = (int)(20e-3 / est);
    reps = reps < 3 ? 3 : (reps > 3000 ? 3000 : reps);
    double us = time_us(&c, reps);
    double tf = flops / (us * 1e-6) / 1e12, gbs = wb / (us * 1e-6) / 1e9;
    printf("fp8%s  %-12s T=%-5lld N=%-6lld K=%-6lld | %8.1f us %7.1f TFLOP/s %5.1f%% of %g | W %6.0f GB/s %5.1f%%\n",
           fast ? "f" : " ", name, (long long)T, (long long)N, (long long)K, us, tf, 100.0 * tf / CEIL_FP8, CEIL_FP8,
           gbs, 100.0 * gbs / CEIL_GBS);
    if (csv)
        fprintf(csv, "fp8%s,%s,%lld,%lld,%lld,%.2f,%.2f,%.1f\n", fast ? "_fast" : "", name, (long long)T, (long long)N,
                (long long)K, us, tf, gbs);
    if (T <= 8 && !fast) { /* the two small-T paths side by side */
        for (int path = 1; path <= 2; path++) {
            c.path = path;
            double up = time_us(&c, reps);
            double gp = wb / (up * 1e-6) / 1e9;
            printf("  %s %-12s T=%-5lld N=%-6lld K=%-6lld | %8.1f us                            | W %6.0f GB/s %5.1f%%\n",
                   path == 1 ? "lt  " : "gemv", name, (long long)T, (long long)N, (long long)K, up, gp,
                   100.0 * gp / CEIL_GBS);
            if (csv)
                fprintf(csv, "fp8_%s,%s,%lld,%lld,%lld,%.2f,%.2f,%.1f\n", path == 1 ? "lt" : "gemv", name,
                        (long long)T, (long long)N, (long long)K, up, flops / (up * 1e-6) / 1e12, gp);
        }
        c.path = 0;
    }
    if (with_bf16) {
        c.bf16 = 1;
        double ub = time_us(&c, reps);
        double tfb = flops / (ub * 1e-6) / 1e12, gbb = 2.0 * wb / (ub * 1e-6) / 1e9;
        printf("bf16  %-12s T=%-5lld N=%-6lld K=%-6lld | %8.1f us %7.1f TFLOP/s        (fp8 %.2fx) | W %6.0f GB/s %5.1f%%\n",
               name, (long long)T, (long long)N, (long long)K, ub, tfb, ub / us, gbb, 100.0 * gbb / CEIL_GBS);
        if (csv)
            fprintf(csv, "bf16,%s,%lld,%lld,%lld,%.2f,%.2f,%.1f\n", name, (long long)T, (long long)N, (long long)K, ub,
                    tfb, gbb);
    }
    fflush(stdout);
    for (int i = 0; i < c.nrot; i++) {
        cudaFree(c.w8[i]);
        if (c.w16[i])
            cudaFree(c.w16[i]);
    }
    cudaFree(c.x8), cudaFree(c.x16), cudaFree(c.y), cudaFree(c.sx);
    return us;
}

/* ---- prefill section: the algorithm choice at prefill rows (issue 18 item 4) ----
 * Per shape and T: k_gemm_fp8_lt with the algorithm cuBLASLt's heuristic puts first (K_GEMM_TUNE_OFF), the
 * fastest of its first 8 (K_GEMM_TUNE_TOP, the choice before issue 18) and the wide search (K_GEMM_TUNE_WIDE:
 * 24 candidates + split-K variants, the default now), each after forgetting the cached choice; TFLOP/s and %
 * of the 8192^3 FP8 rate measured first in the same run. One line per (shape, T), then a Markdown row. */
static void prefill_row(k_gemm_fp8_ctx *g8, const char *name, int64_t T, int64_t N, int64_t K, double ceil_tf,
                        FILE *csv)
{
    gctx c;
    memset(&c, 0, sizeof c);
    c.g8 = g8, c.T = T, c.N = N, c.K = K, c.nrot = 1, c.path = 1;
    c.w8[0] = dev_rand((size_t)N * K, 100, 1);
    c.x8 = dev_rand((size_t)T * K, 3, 1);
    CU(cudaMalloc(&c.y, (size_t)T * N * 2));
    gctx_scales(&c);
    const double flops = 2.0 * T * N * K;
    int reps = (int)(30e-3 / (flops / (ceil_tf * 1e12)));
    reps = reps < 3 ? 3 : (reps > 200 ? 200 : reps);
    double tf[3];
    static const char *lv[3] = {"heuristic", "top-8", "wide"};
    for (int level = K_GEMM_TUNE_OFF; level <= K_GEMM_TUNE_WIDE; level++) {
        k_gemm_fp8_ctx_set_tune(g8, level);
        const int64_t cand0 = k_gemm_fp8_ctx_candidates(g8);
        const double us = time_us(&c, reps);
        tf[level] = flops / (us * 1e-6) / 1e12;
        printf("prefill %-12s T=%-6lld N=%-6lld K=%-6lld %-9s | %9.1f us %7.1f TFLOP/s %5.1f%% of 8192^3 "
               "(%lld timed)\n",
               name, (long long)T, (long long)N, (long long)K, lv[level], us, tf[level], 100.0 * tf[level] / ceil_tf,
               (long long)(k_gemm_fp8_ctx_candidates(g8) - cand0));
        if (csv)
            fprintf(csv, "prefill_%s,%s,%lld,%lld,%lld,%.2f,%.2f,0\n", lv[level], name, (long long)T, (long long)N,
                    (long long)K, us, tf[level]);
    }
    printf("| %s | %lld | %.0f (%.0f%%) | %.0f (%.0f%%) | %.0f (%.0f%%) |\n", name, (long long)T, tf[0],
           100.0 * tf[0] / ceil_tf, tf[1], 100.0 * tf[1] / ceil_tf, tf[2], 100.0 * tf[2] / ceil_tf);
    fflush(stdout);
    cudaFree(c.w8[0]), cudaFree(c.x8), cudaFree(c.y), cudaFree(c.sx);
}

/* ---- GEMV section: k_gemv_fp8_v1 vs k_gemv_fp8_v2 ---- */

enum {
    GV_V1,       /* k_gemv_fp8_v1 */
    GV_V2,       /* k_gemv_fp8_v2 */
    GV_V1_GEGLU, /* k_gemv_fp8_v1 into gu [T, 2 ni] bf16, then k_geglu -> act bf16 */
    GV_V2_GEGLU, /* k_gemv_fp8_v2_geglu -> act bf16 */
    GV_V1_GEGLU8, /* k_gemv_fp8_v1 into gu, then k_geglu_fp8 (static scale) -> act e4m3 */
    GV_V2_GEGLU8, /* k_gemv_fp8_v2_geglu_fp8 -> act e4m3 */
};

typedef struct gvctx {
    void *x8, *gu, *y;
    void *w8[64];
    int nrot;
    float *sc; /* [0] x scale, [64] w scale, [128] act scale (256-byte apart) */
    int64_t T, N, K; /* GeGLU kinds: N = ni (the weight has 2 ni rows) */
    int yf32, kind;
    cudaStream_t st;
} gvctx;

static void gv_run(gvctx *c, int rep)
{
    const void *w = c->w8[rep % c->nrot];
    const float *sx = c->sc, *sw = c->sc + 64, *sa = c->sc + 128;
    k_fp8_act a = {c->sc + 128, NULL, NULL};
    switch (c->kind) {
    case GV_V1: GOK(k_gemv_fp8_v1(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, c->N, c->y, c->yf32, c->N, c->st)); break;
    case GV_V2: GOK(k_gemv_fp8_v2(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, c->N, c->y, c->yf32, c->N, c->st)); break;
    case GV_V1_GEGLU:
        GOK(k_gemv_fp8_v1(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, 2 * c->N, c->gu, 0, 2 * c->N, c->st));
        GOK(k_geglu(c->gu, c->T, c->N, c->y, c->st));
        break;
    case GV_V2_GEGLU: GOK(k_gemv_fp8_v2_geglu(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, c->N, c->y, c->N, c->st)); break;
    case GV_V1_GEGLU8:
        GOK(k_gemv_fp8_v1(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, 2 * c->N, c->gu, 0, 2 * c->N, c->st));
        GOK(k_geglu_fp8(c->gu, c->T, c->N, &a, c->y, c->st));
        break;
    default:
        GOK(k_gemv_fp8_v2_geglu_fp8(c->x8, c->T, c->K, c->K, sx, w, c->K, sw, c->N, sa, c->y, c->N, c->st));
        break;
    }
}

static void gv_run_v(void *c, int rep) { gv_run((gvctx *)c, rep); }

/* Median over 5 replays of a CUDA graph of reps calls (captured on a non-blocking stream). */
static double gv_graph_us(gvctx *c, int reps)
{
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    c->st = st;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; i++)
        gv_run(c, i);
    CU(cudaStreamEndCapture(st, &g));
    CU(cudaGraphInstantiate(&ge, g, 0));
    CU(cudaGraphLaunch(ge, st));
    CU(cudaStreamSynchronize(st));
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    double t[5];
    for (int r = 0; r < 5; r++) {
        CU(cudaEventRecord(a, st));
        CU(cudaGraphLaunch(ge, st));
        CU(cudaEventRecord(b, st));
        CU(cudaEventSynchronize(b));
        float ms;
        CU(cudaEventElapsedTime(&ms, a, b));
        t[r] = ms * 1000.0 / reps;
    }
    CU(cudaEventDestroy(a));
    CU(cudaEventDestroy(b));
    CU(cudaGraphExecDestroy(ge));
    CU(cudaGraphDestroy(g));
    CU(cudaStreamDestroy(st));
    c->st = 0;
    return bench_median5(t);
}

static const char *gv_kind_name(int k)
{
    static const char *n[] = {"v1", "v2", "v1+geglu", "v2 geglu", "v1+geglu8", "v2 geglu8"};
    return n[k];
}

/* One shape: kinds a (old) and b (new) at T; prints eager and graph times. wrows: weight rows. */
static void gv_shape(const char *name, int64_t T, int64_t N, int64_t K, int yf32, int ka, int kb, double copy,
                     FILE *csv)
{
    const int gg = ka != GV_V1;
    const int64_t wrows = gg ? 2 * N : N;
    gvctx c;
    memset(&c, 0, sizeof c);
    c.T = T, c.N = N, c.K = K, c.yf32 = yf32;
    size_t wb = (size_t)wrows * K;
    c.nrot = (int)ceil(256e6 / (double)wb);
    c.nrot = c.nrot < 1 ? 1 : (c.nrot > 64 ? 64 : c.nrot);
    for (int i = 0; i < c.nrot; i++)
        c.w8[i] = dev_rand(wb, 300 + i, 1);
    c.x8 = dev_rand((size_t)T * K, 5, 1);
    CU(cudaMalloc(&c.y, (size_t)T * wrows * 4));
    CU(cudaMalloc(&c.gu, (size_t)T * wrows * 2));
    float s[129] = {0.01f};
    s[64] = 0.002f;
    s[128] = 0.05f;
    CU(cudaMalloc(&c.sc, sizeof s));
    CU(cudaMemcpy(c.sc, s, sizeof s, cudaMemcpyHostToDevice));
    double est = wb / (CEIL_GBS * 1e9) + 3e-6;
    int reps = (int)(10e-3 / est);
    reps = reps < 20 ? 20 : (reps > 2000 ? 2000 : reps);
    double us[2][2];
    for (int v = 0; v < 2; v++) {
        c.kind = v ? kb : ka;
        us[v][0] = bench_time_us(gv_run_v, &c, reps);
        us[v][1] = gv_graph_us(&c, reps);
    }
    printf("gemv %-10s %-9s T=%lld N=%-6lld K=%-6lld |", name, gg ? "geglu" : (yf32 ? "f32 out" : "bf16 out"),
           (long long)T, (long long)N, (long long)K);
    for (int v = 0; v < 2; v++) {
        double ge = wb / (us[v][0] * 1e-6) / 1e9, gg2 = wb / (us[v][1] * 1e-6) / 1e9;
        printf(" %-9s %6.1f us %5.0f GB/s %3.0f%% | graph %6.1f us %5.0f GB/s %3.0f%% |", gv_kind_name(v ? kb : ka),
               us[v][0], ge, 100.0 * ge / copy, us[v][1], gg2, 100.0 * gg2 / copy);
        if (csv)
            fprintf(csv, "gemv_%s,%s,%lld,%lld,%lld,%.2f,%.2f,%.1f\n", gv_kind_name(v ? kb : ka), name, (long long)T,
                    (long long)N, (long long)K, us[v][1], 0.0, gg2);
    }
    printf(" v2/v1 %.2fx (graph %.2fx)\n", us[0][0] / us[1][0], us[0][1] / us[1][1]);
    fflush(stdout);
    for (int i = 0; i < c.nrot; i++)
        cudaFree(c.w8[i]);
    cudaFree(c.x8), cudaFree(c.y), cudaFree(c.gu), cudaFree(c.sc);
}

static void gemv_section(const char *models, const int *ts, int nt, FILE *csv)
{
    double copy = bench_copy_gbs((size_t)1 << 30);
    printf("-- FP8 GEMV: k_gemv_fp8_v1 vs k_gemv_fp8_v2 (weight GB/s; %% of the copy rate %.0f GB/s measured here "
           "(read + write of a 1 GiB cudaMemcpy D2D); floor = weight bytes / copy rate) --\n",
           copy);
    struct {
        const char *model, *name;
        int64_t N, K;
        int yf32;
    } shapes[] = {
        {"2b", "2b qkv", 2560, 2048, 0},      {"2b", "2b o", 2048, 2048, 0},     {"2b", "2b gate_up", 32768, 2048, 0},
        {"2b", "2b down", 2048, 16384, 0},    {"7b", "7b qkv", 12288, 3072, 0},  {"7b", "7b o", 3072, 4096, 0},
        {"7b", "7b gate_up", 49152, 3072, 0}, {"7b", "7b down", 3072, 24576, 0}, {"2b", "2b lm_head", 256000, 2048, 1},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        if (!strstr(models, shapes[s].model))
            continue;
        for (int i = 0; i < nt; i++) {
            if (ts[i] < 1 || ts[i] > 4)
                continue;
            gv_shape(shapes[s].name, ts[i], shapes[s].N, shapes[s].K, shapes[s].yf32, GV_V1, GV_V2, copy, csv);
            if (strstr(shapes[s].name, "gate_up")) {
                gv_shape(shapes[s].name, ts[i], shapes[s].N / 2, shapes[s].K, 0, GV_V1_GEGLU, GV_V2_GEGLU, copy, csv);
                gv_shape(shapes[s].name, ts[i], shapes[s].N / 2, shapes[s].K, 0, GV_V1_GEGLU8, GV_V2_GEGLU8, copy,
                         csv);
            }
        }
    }
}

/* Gemma's linear shapes (N x K of each fused product). */
static const struct {
    const char *model, *name;
    int64_t N, K;
} g_shapes[] = {
    {"2b", "2b qkv", 2560, 2048},    {"2b", "2b o", 2048, 2048},     {"2b", "2b gate_up", 32768, 2048},
    {"2b", "2b down", 2048, 16384},  {"7b", "7b qkv", 12288, 3072},  {"7b", "7b o", 3072, 4096},
    {"7b", "7b gate_up", 49152, 3072}, {"7b", "7b down", 3072, 24576},
};

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s)
            s++;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *models = "2b,7b", *csv_path = NULL;
    int ts[16], nt = parse_list("1,2,4,8,16,64,256,1024,4096", ts, 16), fast_mode = 2;
    int gts[8], ngt = parse_list("1,2,4", gts, 8), gemv = 1, gemm = 1, prefill = 0, t_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: fp8_gemm_bench [--models 2b,7b] [--t 1,2,4,8,16,64,256,1024,4096] [--fast 0|1|2] [--csv FILE]\n"
                   "                      [--gemv-t 1,2,4] [--gemv-only] [--no-gemv] [--prefill]\n"
                   "FP8 (cuBLASLt e4m3, bf16 out) GEMM TFLOP/s at Gemma's shapes beside 1386 TFLOP/s, and bf16\n"
                   "(k_gemm_bf16) on the same shapes. --fast: 0 accurate accumulation, 1 fast, 2 both (default).\n"
                   "First the FP8 GEMV section (k_gemv_fp8_v1 vs k_gemv_fp8_v2, T in --gemv-t, 1..4) beside the\n"
                   "measured device copy rate; --gemv-only stops after it, --no-gemv skips it.\n"
                   "--prefill: only the 8192^3 rate, then the algorithm choice at prefill rows (--t, default\n"
                   "2048,4096,8192,16384): cuBLASLt's heuristic, the fastest of its first 8, the wide search.\n");
            return 0;
        } else if (v && !strcmp(a, "--models")) {
            models = v, i++;
        } else if (v && !strcmp(a, "--t")) {
            nt = parse_list(v, ts, 16), i++, t_given = 1;
        } else if (v && !strcmp(a, "--fast")) {
            fast_mode = atoi(v), i++;
        } else if (v && !strcmp(a, "--csv")) {
            csv_path = v, i++;
        } else if (v && !strcmp(a, "--gemv-t")) {
            ngt = parse_list(v, gts, 8), i++;
        } else if (!strcmp(a, "--gemv-only")) {
            gemm = 0;
        } else if (!strcmp(a, "--no-gemv")) {
            gemv = 0;
        } else if (!strcmp(a, "--prefill")) {
            prefill = 1, gemv = 0;
        } else {
            fprintf(stderr, "fp8_gemm_bench: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "fp8_gemm_bench: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv)
        fprintf(csv, "kind,shape,T,N,K,us,tflops,w_gbs\n");
    k_gemm_fp8_ctx *g8 = NULL;
    k_gemm_ctx *g16 = NULL;
    GOK(k_gemm_fp8_ctx_new(0, &g8));
    GOK(k_gemm_ctx_new(0, &g16));
    printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    if (gemv)
        gemv_section(models, gts, ngt, csv);
    if (!gemm) {
        k_gemm_fp8_ctx_destroy(&g8);
        k_gemm_ctx_destroy(&g16);
        if (csv)
            fclose(csv);
        return 0;
    }
    printf("-- ceilings measured here (8192^3) --\n");
    const double us8k = bench_shape(g8, g16, "8192^3", 8192, 8192, 8192, !prefill, 0, csv);
    const double tf8k = 2.0 * 8192.0 * 8192.0 * 8192.0 / (us8k * 1e-6) / 1e12;
    if (prefill) {
        if (!t_given)
            nt = parse_list("2048,4096,8192,16384", ts, 16);
        printf("-- prefill rows: algorithm choice (8192^3 here: %.0f TFLOP/s) --\n", tf8k);
        printf("| shape | T | heuristic | top-8 | wide |\n|---|---|---|---|---|\n");
        for (size_t sh = 0; sh < sizeof g_shapes / sizeof g_shapes[0]; sh++)
            if (strstr(models, g_shapes[sh].model))
                for (int i = 0; i < nt; i++)
                    prefill_row(g8, g_shapes[sh].name, ts[i], g_shapes[sh].N, g_shapes[sh].K, tf8k, csv);
        k_gemm_fp8_ctx_destroy(&g8);
        k_gemm_ctx_destroy(&g16);
        if (csv)
            fclose(csv);
        return 0;
    }
    k_gemm_fp8_ctx_set_fast_accum(g8, 1);
    bench_shape(g8, g16, "8192^3", 8192, 8192, 8192, 0, 1, csv);
    k_gemm_fp8_ctx_set_fast_accum(g8, 0);

    const size_t n_shapes = sizeof g_shapes / sizeof g_shapes[0];
    for (int fast = 0; fast < 2; fast++) {
        if (fast_mode != 2 && fast != fast_mode)
            continue;
        k_gemm_fp8_ctx_set_fast_accum(g8, fast);
        printf("-- Gemma shapes, fast accumulation %s --\n", fast ? "on" : "off");
        for (size_t s = 0; s < n_shapes; s++) {
            if (!strstr(models, g_shapes[s].model))
                continue;
            for (int i = 0; i < nt; i++)
                bench_shape(g8, g16, g_shapes[s].name, ts[i], g_shapes[s].N, g_shapes[s].K, !fast, fast, csv);
        }
    }
    k_gemm_fp8_ctx_destroy(&g8);
    k_gemm_ctx_destroy(&g16);
    if (csv)
        fclose(csv);
    return 0;
}
