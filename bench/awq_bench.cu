/* awq_bench.cu - W4A16 kernel micro-benchmark at Gemma's Linear shapes.
 *
 * GEMV (M = 1..4, k_gemv_awq): GB/s counting the int4 weights, zeros, scales, x and y once, beside the
 * 4.2 TB/s copy ceiling of the H200 (bench/history/NOTES.md; ~3.0 TB/s on the H100) and beside cuBLAS bf16
 * (dense weights, 4x the bytes) in the same run. k_gemv_awq launches with PDL when k_get_pdl() is on,
 * as in the engine: its first weight copies overlap the previous call's tail; "noPDL" is the same
 * kernel launched plainly. Weights rotate through copies that together exceed L2, so every call reads
 * DRAM.
 * GEMM (M = 16..4096, k_gemm_awq_mma): TFLOP/s (2MNK) beside cuBLAS bf16 on the same shape and the
 * 770 TFLOP/s bf16 ceiling. Usage: awq_bench [--quick] [--gemv] [--only NAME]. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/gemm_awq.cuh"
#include "kernels/cuda/launch.cuh"

#define CK(x)                                                                                                      \
    do {                                                                                                           \
        cudaError_t e_ = (x);                                                                                      \
        if (e_ != cudaSuccess) {                                                                                   \
            fprintf(stderr, "awq_bench: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__);                 \
            exit(1);                                                                                               \
        }                                                                                                          \
    } while (0)

#define L2_FLUSH_BYTES (512ll << 20) /* copies of the weights rotate through at least this much */

typedef struct shape {
    const char *name;
    int64_t K, N;
} shape;

static const shape g_shapes[] = {
    {"2b q/o", 2048, 2048},   {"2b gate/up", 2048, 16384}, {"2b down", 16384, 2048},
    {"7b q", 3072, 4096},     {"7b o", 4096, 3072},        {"7b gate/up", 3072, 24576},
    {"7b down", 24576, 3072}, {"2b qkv", 2048, 2560},      {"7b qkv", 3072, 12288},
    {"2b gu fused", 2048, 32768}, {"7b gu fused", 3072, 49152}, /* gate|up as the CUDA engine runs them */
};

/* Mean microseconds of one k_gemv_awq call, weights rotating
 * through `copies` copies: `iters` calls launched one by one (graph = 0), or captured into one
 * CUDA graph and replayed (graph = 1: no host launch cost, as the engine runs them); -1 when a
 * call fails. */
static double time_gemv(int graph, const void *x, int64_t M, int64_t K, const cpu_awq_w *w, int copies,
                        void *y, int64_t N, void *ws, size_t wsb, cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1,
                        int iters)
{
    for (int c = 0; c < copies; c++) { /* warm-up */
        gm_status st = k_gemv_awq(x, M, K, &w[c], y, N, ws, wsb, s);
        if (st) {
            fprintf(stderr, "awq_bench: %s\n", gm_last_error());
            return -1.0;
        }
    }
    cudaGraphExec_t exec = NULL;
    if (graph) {
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < iters; i++)
            k_gemv_awq(x, M, K, &w[i % copies], y, N, ws, wsb, s);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&exec, g, 0));
        CK(cudaGraphDestroy(g));
        CK(cudaGraphLaunch(exec, s)); /* warm-up */
    }
    CK(cudaEventRecord(e0, s));
    if (graph) {
        CK(cudaGraphLaunch(exec, s));
    } else {
        for (int i = 0; i < iters; i++)
            k_gemv_awq(x, M, K, &w[i % copies], y, N, ws, wsb, s);
    }
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (exec)
        CK(cudaGraphExecDestroy(exec));
    return 1000.0 * ms / iters;
}

static void fill_rand(void *p, size_t bytes)
{
    uint32_t *u = (uint32_t *)malloc(bytes);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < bytes / 4; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        u[i] = (uint32_t)s;
    }
    CK(cudaMemcpy(p, u, bytes, cudaMemcpyHostToDevice));
    free(u);
}

/* fp16 scales in [0.001, 0.01] and bf16 values in [-1, 1): no inf/nan in the timed math */
static void fill_half(void *p, size_t n, bool bf16)
{
    uint16_t *h = (uint16_t *)malloc(n * 2);
    uint64_t s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((s >> 40) & 0xffff) / 65536.0f;
        if (bf16) {
            float f = v * 2.0f - 1.0f;
            uint32_t u;
            memcpy(&u, &f, 4);
            h[i] = (uint16_t)(u >> 16);
        } else {
            __half hv = __float2half(0.001f + 0.009f * v);
            memcpy(&h[i], &hv, 2);
        }
    }
    CK(cudaMemcpy(p, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
}

int main(int argc, char **argv)
{
    bool quick = false, gemv_only = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--gemv"))
            gemv_only = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            printf("usage: awq_bench [--quick] [--gemv] [--only NAME]\nW4A16 GEMV/GEMM throughput at Gemma "
                   "shapes, beside cuBLAS bf16.\n  --quick      fewer iterations, GEMM up to M = 1024\n  --gemv       the "
                   "GEMV table only\n  --only NAME  the shapes whose name contains NAME (\"7b down\", ...)\n");
            return strcmp(argv[i], "--help") ? 1 : 0;
        }
    }
    int dev = 0, n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "awq_bench: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    cublasHandle_t cb;
    if (cublasCreate(&cb) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "awq_bench: cublasCreate failed\n");
        return 1;
    }
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cublasSetStream(cb, s);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int64_t group = 128, Mmax = 4096;
    const int iters = quick ? 20 : 100;

    printf("\nGEMV (W4A16, group 128): GB/s of int4 weights + zeros + scales + x + y; ceiling 4200 GB/s (H200)\n");
    printf("k_gemv_awq: 'us' = launched one by one, 'gr' = replayed from a CUDA graph (GB/s and %% of 4.2 TB/s from\n"
           "the graph times); noPDL = graph without programmatic launch; speedup = cuBLAS / gr\n");
    printf("%-16s %6s %6s %2s %8s %8s %8s %7s %8s %9s %8s\n", "shape", "K", "N", "M", "us", "gr", "GB/s", "%4.2T",
           "noPDL", "cublas us", "speedup");
    printf("\nGEMM: TFLOP/s = 2MNK / time; cuBLAS bf16 on the same shape; bf16 ceiling 770 TFLOP/s (H200)\n");
    for (size_t si = 0; si < sizeof g_shapes / sizeof g_shapes[0]; si++) {
        const shape *sh = &g_shapes[si];
        if (only && !strstr(sh->name, only))
            continue;
        int64_t K = sh->K, N = sh->N, G = K / group;
        size_t qb = (size_t)(K * N / 2), zb = (size_t)(G * N / 2), sb = (size_t)(G * N * 2);
        size_t one = qb + zb + sb;
        int copies = (int)((L2_FLUSH_BYTES + (int64_t)one - 1) / (int64_t)one);
        copies = copies < 1 ? 1 : copies > 64 ? 64 : copies;
        char *wbuf;
        CK(cudaMalloc(&wbuf, one * copies));
        fill_rand(wbuf, one * copies);
        for (int c = 0; c < copies; c++)
            fill_half(wbuf + c * one + qb + zb, (size_t)(G * N), false);
        cpu_awq_w *w = (cpu_awq_w *)malloc(sizeof(cpu_awq_w) * copies);
        for (int c = 0; c < copies; c++) {
            char *b = wbuf + c * one;
            w[c] = cpu_awq_w{(const int32_t *)b, (const int32_t *)(b + qb), (const uint16_t *)(b + qb + zb), K, N, N / 8,
                             N, group};
        }
        /* dense bf16 weights for cuBLAS: one copy (bf16 GEMV reads 4x the bytes: rotate 2 copies when they fit) */
        size_t db = (size_t)(K * N * 2);
        int dcopies = db * 2 < (size_t)(4ll << 30) ? 2 : 1;
        char *dw;
        CK(cudaMalloc(&dw, db * dcopies));
        fill_half(dw, (size_t)(K * N) * dcopies, true);
        void *x, *y;
        CK(cudaMalloc(&x, (size_t)(Mmax * K) * 2));
        CK(cudaMalloc(&y, (size_t)(Mmax * N) * 2));
        fill_half(x, (size_t)(Mmax * K), true);
        size_t wsb = k_gemv_awq_workspace_bytes(N, K, group);
        void *ws = NULL;
        if (wsb) {
            CK(cudaMalloc(&ws, wsb));
            CK(cudaMemset(ws, 0, wsb));
        }
        const float one_f = 1.0f, zero_f = 0.0f;
        for (int64_t M = 1; M <= 4; M *= 2) {
            double v2 = time_gemv(0, x, M, K, w, copies, y, N, ws, wsb, s, e0, e1, iters);
            double g2 = time_gemv(1, x, M, K, w, copies, y, N, ws, wsb, s, e0, e1, iters);
            int pdl = k_get_pdl();
            k_set_pdl(0);
            double g2n = time_gemv(1, x, M, K, w, copies, y, N, ws, wsb, s, e0, e1, iters);
            k_set_pdl(pdl);
            if (v2 < 0 || g2 < 0 || g2n < 0)
                return 1;
            double bytes = (double)one + (double)(M * K * 2) + (double)(M * N * 2);
            /* cuBLAS bf16: y^T [N, M] = W [N, K] . x^T, column-major views of row-major data */
            for (int i = 0; i < 3; i++)
                cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one_f, dw, CUDA_R_16BF, (int)K, x,
                             CUDA_R_16BF, (int)K, &zero_f, y, CUDA_R_16BF, (int)N, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(e0, s));
            for (int i = 0; i < iters; i++)
                cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one_f, dw + (i % dcopies) * db,
                             CUDA_R_16BF, (int)K, x, CUDA_R_16BF, (int)K, &zero_f, y, CUDA_R_16BF, (int)N,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms2;
            CK(cudaEventElapsedTime(&ms2, e0, e1));
            double us2 = 1000.0 * ms2 / iters;
            printf("GEMV %-11s %6lld %6lld %2lld %8.2f %8.2f %8.0f %6.1f%% %8.2f %9.2f %7.2fx\n", sh->name, (long long)K,
                   (long long)N, (long long)M, v2, g2, bytes / g2 / 1e3, 100.0 * bytes / g2 / 1e3 / 4200.0, g2n, us2,
                   us2 / g2);
        }
        const int64_t Ms[] = {16, 64, 256, 1024, 4096};
        for (int mi = 0; mi < (gemv_only ? 0 : 5); mi++) {
            int64_t M = Ms[mi];
            if (quick && M > 1024)
                continue;
            int it = M >= 1024 ? iters / 4 + 1 : iters;
            if (k_gemm_awq_mma(x, M, K, &w[0], y, N, s)) {
                fprintf(stderr, "awq_bench: %s\n", gm_last_error());
                return 1;
            }
            CK(cudaEventRecord(e0, s));
            for (int i = 0; i < it; i++)
                k_gemm_awq_mma(x, M, K, &w[i % copies], y, N, s);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            double us = 1000.0 * ms / it;
            cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one_f, dw, CUDA_R_16BF, (int)K, x,
                         CUDA_R_16BF, (int)K, &zero_f, y, CUDA_R_16BF, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(e0, s));
            for (int i = 0; i < it; i++)
                cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one_f, dw + (i % dcopies) * db,
                             CUDA_R_16BF, (int)K, x, CUDA_R_16BF, (int)K, &zero_f, y, CUDA_R_16BF, (int)N,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms2;
            CK(cudaEventElapsedTime(&ms2, e0, e1));
            double us2 = 1000.0 * ms2 / it, fl = 2.0 * (double)M * (double)N * (double)K;
            printf("GEMM %-11s %6lld %6lld M %5lld: awq %9.2f us %7.1f TFLOP/s | cublas bf16 %9.2f us %7.1f TFLOP/s"
                   " | awq/cublas %.2fx\n",
                   sh->name, (long long)K, (long long)N, (long long)M, us, fl / us / 1e6, us2, fl / us2 / 1e6,
                   us2 / us);
        }
        CK(cudaGetLastError());
        cudaFree(wbuf), cudaFree(dw), cudaFree(x), cudaFree(y), cudaFree(ws);
        free(w);
    }
    cublasDestroy(cb);
    return 0;
}
