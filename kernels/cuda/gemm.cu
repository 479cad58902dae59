/* gemm.cu - cuBLASLt bf16 GEMM with a per-shape algorithm cache, and the GEMV kernel.
 *
 * Decode at batch 1 reads every weight once per token: the GEMV is the loop that
 * bounds batch-1 tokens/s (weight bytes / device bandwidth). */
#include "gemm.cuh"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "cuda_util.cuh"

typedef struct gemm_key {
    int64_t tb, n, k, ldx, ldw, ldy;
    int32_t yf32;
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
} gemm_entry;

struct gemm_ctx {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatmulPreference_t pref;
    void *ws;
    size_t ws_bytes;
    int32_t gemv_rows;
    gemm_entry *cache;
    int32_t n_cache, cap_cache;
};

extern "C" gm_status gemm_ctx_new(size_t workspace_bytes, gemm_ctx **out)
{
    *out = NULL;
    gm_status st = GM_OK;
    gemm_ctx *g = (gemm_ctx *)calloc(1, sizeof *g);
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "gemm_ctx_new: no host memory");
    g->ws_bytes = workspace_bytes ? workspace_bytes : (32u << 20);
    g->gemv_rows = 4;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    GM_CUBLAS_GOTO(cublasLtCreate(&g->lt), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceCreate(&g->pref), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(g->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &g->ws_bytes, sizeof g->ws_bytes),
                   st, fail);
    GM_CUDA_GOTO(cudaMalloc(&g->ws, g->ws_bytes), st, fail);
    *out = g;
    return GM_OK;
fail:
    gemm_ctx_destroy(&g);
    return st;
}

extern "C" void gemm_ctx_destroy(gemm_ctx **gp)
{
    if (!gp || !*gp)
        return;
    gemm_ctx *g = *gp;
    if (g->ws)
        cudaFree(g->ws);
    if (g->pref)
        cublasLtMatmulPreferenceDestroy(g->pref);
    if (g->op)
        cublasLtMatmulDescDestroy(g->op);
    if (g->lt)
        cublasLtDestroy(g->lt);
    free(g->cache);
    free(g);
    *gp = NULL;
}

extern "C" void gemm_ctx_set_gemv_rows(gemm_ctx *g, int32_t max_rows)
{
    g->gemv_rows = max_rows < 0 ? 0 : (max_rows > 8 ? 8 : max_rows);
}

extern "C" int32_t gemm_ctx_cached(const gemm_ctx *g) { return g->n_cache; }

static int64_t t_bucket(int64_t T)
{
    if (T <= 16)
        return T;
    int64_t b = 32;
    while (b < T)
        b <<= 1;
    return b;
}

/* Heuristic's first choice for an M (= T) of m. */
static gm_status pick_algo(gemm_ctx *g, int64_t m, int64_t N, int64_t K, int64_t ldx, int64_t ldw, int64_t ldy,
                           int yf32, cublasLtMatmulAlgo_t *algo)
{
    gm_status st = GM_OK;
    cublasLtMatrixLayout_t a = NULL, b = NULL, c = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    cudaDataType_t yt = yf32 ? CUDA_R_32F : CUDA_R_16BF;
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, ldw), st, done);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, (uint64_t)K, (uint64_t)m, ldx), st, done);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&c, yt, (uint64_t)N, (uint64_t)m, ldy), st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, a, b, c, c, g->pref, 1, &res, &n_res), st, done);
    if (n_res < 1) {
        st = gm_fail(GM_ERR_CUBLAS, "cuBLASLt has no bf16 algorithm for T=%lld N=%lld K=%lld", (long long)m,
                     (long long)N, (long long)K);
        goto done;
    }
    *algo = res.algo;
done:
    if (a)
        cublasLtMatrixLayoutDestroy(a);
    if (b)
        cublasLtMatrixLayoutDestroy(b);
    if (c)
        cublasLtMatrixLayoutDestroy(c);
    return st;
}

static gm_status run_lt(gemm_ctx *g, const cublasLtMatmulAlgo_t *algo, const void *x, int64_t T, int64_t K,
                        int64_t ldx, const void *W, int64_t ldw, int64_t N, void *y, int yf32, int64_t ldy,
                        cudaStream_t s, cublasStatus_t *cs)
{
    gm_status st = GM_OK;
    cublasLtMatrixLayout_t a = NULL, b = NULL, c = NULL;
    float alpha = 1.0f, beta = 0.0f;
    cudaDataType_t yt = yf32 ? CUDA_R_32F : CUDA_R_16BF;
    *cs = CUBLAS_STATUS_SUCCESS;
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, ldw), st, done);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, (uint64_t)K, (uint64_t)T, ldx), st, done);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&c, yt, (uint64_t)N, (uint64_t)T, ldy), st, done);
    *cs = cublasLtMatmul(g->lt, g->op, &alpha, W, a, x, b, &beta, y, c, y, c, algo, g->ws, g->ws_bytes, s);
done:
    if (a)
        cublasLtMatrixLayoutDestroy(a);
    if (b)
        cublasLtMatrixLayoutDestroy(b);
    if (c)
        cublasLtMatrixLayoutDestroy(c);
    return st;
}

extern "C" gm_status gemm_bf16_lt(gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W,
                                  int64_t ldw, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    gemm_key key = {t_bucket(T), N, K, ldx, ldw, ldy, y_f32 ? 1 : 0};
    gemm_entry *e = NULL;
    for (int32_t i = 0; i < g->n_cache; i++)
        if (!memcmp(&g->cache[i].key, &key, sizeof key)) {
            e = &g->cache[i];
            break;
        }
    if (!e) {
        if (g->n_cache == g->cap_cache) {
            int32_t cap = g->cap_cache ? 2 * g->cap_cache : 64;
            gemm_entry *c = (gemm_entry *)realloc(g->cache, (size_t)cap * sizeof *c);
            if (!c)
                return gm_fail(GM_ERR_NOMEM, "gemm: no host memory for the algorithm cache");
            g->cache = c;
            g->cap_cache = cap;
        }
        e = &g->cache[g->n_cache];
        memset(e, 0, sizeof *e);
        e->key = key;
        GM_CHECK(pick_algo(g, key.tb, N, K, ldx, ldw, ldy, key.yf32, &e->algo));
        g->n_cache++;
    }
    cublasStatus_t cs;
    GM_CHECK(run_lt(g, &e->algo, x, T, K, ldx, W, ldw, N, y, key.yf32, ldy, s, &cs));
    if (cs == CUBLAS_STATUS_NOT_SUPPORTED || cs == CUBLAS_STATUS_INVALID_VALUE) {
        /* the bucket's algorithm does not take this exact T: ask for one that does */
        cublasLtMatmulAlgo_t algo;
        GM_CHECK(pick_algo(g, T, N, K, ldx, ldw, ldy, key.yf32, &algo));
        GM_CHECK(run_lt(g, &algo, x, T, K, ldx, W, ldw, N, y, key.yf32, ldy, s, &cs));
    }
    if (cs != CUBLAS_STATUS_SUCCESS)
        return gm_fail(GM_ERR_CUBLAS, "cublasLtMatmul T=%lld N=%lld K=%lld: %s", (long long)T, (long long)N,
                       (long long)K, cublasGetStatusString(cs));
    return GM_OK;
}

/* ---- GEMV: one warp per output column n, 16-byte weight loads, U loads in flight per lane ---- */

#define GEMV_WARPS 8
#define GEMV_U 8

__device__ __forceinline__ float dot8(const uint4 &a, const uint4 &b)
{
    const __nv_bfloat162 *pa = reinterpret_cast<const __nv_bfloat162 *>(&a);
    const __nv_bfloat162 *pb = reinterpret_cast<const __nv_bfloat162 *>(&b);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 fa = __bfloat1622float2(pa[i]), fb = __bfloat1622float2(pb[i]);
        s = fmaf(fa.x, fb.x, s);
        s = fmaf(fa.y, fb.y, s);
    }
    return s;
}

template <int TR, bool F32>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(const bf16 *__restrict__ x, int64_t K, int64_t ldx, const bf16 *__restrict__ W, int64_t ldw,
                int64_t N, void *__restrict__ y, int64_t ldy)
{
    int lane = threadIdx.x & 31;
    int64_t n = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N)
        return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(W + n * ldw);
    int64_t nc = K / 8;
    float acc[TR];
#pragma unroll
    for (int t = 0; t < TR; t++)
        acc[t] = 0.0f;
    for (int64_t c0 = lane; c0 < nc; c0 += 32 * GEMV_U) {
        uint4 wv[GEMV_U];
#pragma unroll
        for (int u = 0; u < GEMV_U; u++) {
            int64_t c = c0 + 32 * u;
            wv[u] = c < nc ? __ldcs(wr + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_U; u++) {
            int64_t c = c0 + 32 * u;
            if (c < nc) {
#pragma unroll
                for (int t = 0; t < TR; t++) {
                    uint4 xv = __ldg(reinterpret_cast<const uint4 *>(x + t * ldx) + c);
                    acc[t] += dot8(wv[u], xv);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TR; t++)
        acc[t] = warp_sum(acc[t]);
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < TR; t++) {
            if (F32)
                reinterpret_cast<float *>(y)[t * ldy + n] = acc[t];
            else
                reinterpret_cast<bf16 *>(y)[t * ldy + n] = __float2bfloat16_rn(acc[t]);
        }
    }
}

template <int TR>
static void launch_gemv(const bf16 *x, int64_t K, int64_t ldx, const bf16 *W, int64_t ldw, int64_t N, void *y,
                        int yf32, int64_t ldy, cudaStream_t s)
{
    unsigned grid = gm_div_up(N, GEMV_WARPS);
    if (yf32)
        gemv_kernel<TR, true><<<grid, GEMV_WARPS * 32, 0, s>>>(x, K, ldx, W, ldw, N, y, ldy);
    else
        gemv_kernel<TR, false><<<grid, GEMV_WARPS * 32, 0, s>>>(x, K, ldx, W, ldw, N, y, ldy);
}

extern "C" gm_status gemv_bf16(const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw,
                               int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (K % 8 || ldx % 8 || ldw % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "gemv: K %lld and strides must be multiples of 8", (long long)K);
    const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)W;
    for (int64_t t0 = 0; t0 < T; t0 += 8) {
        int64_t tr = T - t0 < 8 ? T - t0 : 8;
        const bf16 *xt = xb + t0 * ldx;
        void *yt = y_f32 ? (void *)((float *)y + t0 * ldy) : (void *)((bf16 *)y + t0 * ldy);
        switch (tr) {
        case 1: launch_gemv<1>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 2: launch_gemv<2>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 3: launch_gemv<3>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 4: launch_gemv<4>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 5: launch_gemv<5>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 6: launch_gemv<6>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        case 7: launch_gemv<7>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        default: launch_gemv<8>(xt, K, ldx, wb, ldw, N, yt, y_f32, ldy, s); break;
        }
        GM_LAUNCH_CHECK();
    }
    return GM_OK;
}

extern "C" gm_status gemm_bf16(gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W,
                               int64_t ldw, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    if (K % 8 || ldx % 8 || ldw % 8 || ldy % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "gemm: K %lld and strides (%lld, %lld, %lld) must be multiples of 8",
                       (long long)K, (long long)ldx, (long long)ldw, (long long)ldy);
    if (T <= g->gemv_rows)
        return gemv_bf16(x, T, K, ldx, W, ldw, N, y, y_f32, ldy, s);
    return gemm_bf16_lt(g, x, T, K, ldx, W, ldw, N, y, y_f32, ldy, s);
}
