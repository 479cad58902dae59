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
#include "geglu.cuh"
#include "launch.cuh"

typedef struct gemm_key {
    int64_t tb, n, k, ldx, ldw, ldy;
    int32_t yf32;
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
} gemm_entry;

struct k_gemm_ctx {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatmulPreference_t pref;
    void *ws;
    size_t ws_bytes;
    int32_t gemv_rows;
    gemm_entry *cache;
    int32_t n_cache, cap_cache;
};

extern "C" gm_status k_gemm_ctx_new(size_t workspace_bytes, k_gemm_ctx **out)
{
    *out = NULL;
    gm_status st = GM_OK;
    k_gemm_ctx *g = (k_gemm_ctx *)calloc(1, sizeof *g);
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "k_gemm_ctx_new: no host memory");
    g->ws_bytes = workspace_bytes ? workspace_bytes : (32u << 20);
    g->gemv_rows = 2;
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
    k_gemm_ctx_destroy(&g);
    return st;
}

extern "C" void k_gemm_ctx_destroy(k_gemm_ctx **gp)
{
    if (!gp || !*gp)
        return;
    k_gemm_ctx *g = *gp;
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

extern "C" void k_gemm_ctx_set_gemv_rows(k_gemm_ctx *g, int32_t max_rows)
{
    g->gemv_rows = max_rows < 0 ? 0 : (max_rows > 8 ? 8 : max_rows);
}

extern "C" int32_t k_gemm_ctx_cached(const k_gemm_ctx *g) { return g->n_cache; }

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
static gm_status pick_algo(k_gemm_ctx *g, int64_t m, int64_t N, int64_t K, int64_t ldx, int64_t ldw, int64_t ldy,
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

static gm_status run_lt(k_gemm_ctx *g, const cublasLtMatmulAlgo_t *algo, const void *x, int64_t T, int64_t K,
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

extern "C" gm_status k_gemm_bf16_lt(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W,
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

/* ---- GEMV: a block of 256 threads computes R output columns over the whole K, the K chunks
 * (16 bytes) strided across all threads, so every load of a step is one coalesced 4 KB run of a
 * weight row; R = 16384 / K (1..8) keeps 8 weight loads in flight per thread. Partial sums are
 * reduced across the block. MODE 0: bf16 out, 1: f32 out, 2: GeGLU epilogue (columns j of
 * gelu(gate_j) * up_j from rows j and ni + j, rounded as HF's bf16 ops). ---- */

#define GV_THREADS 256

__device__ __forceinline__ float dot8f(const uint4 &w, const float x[8])
{
    const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&w);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(p[i]);
        s = fmaf(f.x, x[2 * i], s);
        s = fmaf(f.y, x[2 * i + 1], s);
    }
    return s;
}

template <int TR, int R, int MODE>
__global__ void __launch_bounds__(GV_THREADS, 2)
    gemv_kernel(const bf16 *__restrict__ x, int64_t K, int64_t ldx, const bf16 *__restrict__ W, int64_t ldw,
                int64_t N, void *__restrict__ y, int64_t ldy)
{
    constexpr int U = 8 / R > 0 ? 8 / R : 1;
    constexpr int NW = GV_THREADS / 32;
    constexpr int RH = R / 2 > 0 ? R / 2 : 1; /* GeGLU mode: act columns per block */
    pdl_wait();
    __shared__ float red[NW][TR][R];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const bf16 *wrow[R]; /* weight rows of this block (row 0 stands in past N) */
#pragma unroll
    for (int r = 0; r < R; r++) {
        int64_t row;
        if (MODE == 2) { /* N = ni: act columns j0 .. j0 + RH, gate row j and up row N + j */
            int64_t j = (int64_t)blockIdx.x * RH + (r % RH);
            row = j < N ? (r < RH ? j : N + j) : 0;
        } else {
            row = (int64_t)blockIdx.x * R + r;
            row = row < N ? row : 0;
        }
        wrow[r] = W + row * ldw;
    }
    int64_t nc = K / 8;
    float acc[TR][R];
#pragma unroll
    for (int t = 0; t < TR; t++)
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[t][r] = 0.0f;
    for (int64_t c0 = tid; c0 < nc; c0 += (int64_t)GV_THREADS * U) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t c = c0 + (int64_t)u * GV_THREADS;
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[u][r] = c < nc ? __ldcs(reinterpret_cast<const uint4 *>(wrow[r]) + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t c = c0 + (int64_t)u * GV_THREADS;
            if (c < nc) {
#pragma unroll
                for (int t = 0; t < TR; t++) {
                    float xf[8];
                    bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(x + t * ldx) + c), xf);
#pragma unroll
                    for (int r = 0; r < R; r++)
                        acc[t][r] += dot8f(wv[u][r], xf);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TR; t++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = warp_sum(acc[t][r]);
            if (lane == 0)
                red[warp][t][r] = v;
        }
    __syncthreads();
    if (tid < TR * R) {
        int t = tid / R, r = tid % R;
        if (MODE == 2 && r >= RH)
            return;
        int64_t row = MODE == 2 ? (int64_t)blockIdx.x * RH + r : (int64_t)blockIdx.x * R + r;
        if (row >= N)
            return;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; w++)
            sum += red[w][t][r];
        if (MODE == 1) {
            reinterpret_cast<float *>(y)[t * ldy + row] = sum;
        } else if (MODE == 0) {
            reinterpret_cast<bf16 *>(y)[t * ldy + row] = __float2bfloat16_rn(sum);
        } else {
            float up = 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++)
                up += red[w][t][(r + RH) % R];
            float g = round_bf16(sum), u = round_bf16(up);
            reinterpret_cast<bf16 *>(y)[t * ldy + row] = __float2bfloat16_rn(round_bf16(gelu_tanh(g)) * u);
        }
    }
}

template <int TR, int R>
static cudaError_t launch_gemv_r(const bf16 *x, int64_t K, int64_t ldx, const bf16 *W, int64_t ldw, int64_t N, void *y,
                          int mode, int64_t ldy, cudaStream_t s)
{
    cudaError_t e;
    if (mode == 2)
        e = gm_launch(gemv_kernel<TR, R, 2>, dim3(gm_div_up(N, R / 2 > 0 ? R / 2 : 1)), dim3(GV_THREADS), 0, s, x, K,
                      ldx, W, ldw, N, y, ldy);
    else if (mode == 1)
        e = gm_launch(gemv_kernel<TR, R, 1>, dim3(gm_div_up(N, R)), dim3(GV_THREADS), 0, s, x, K, ldx, W, ldw, N, y, ldy);
    else
        e = gm_launch(gemv_kernel<TR, R, 0>, dim3(gm_div_up(N, R)), dim3(GV_THREADS), 0, s, x, K, ldx, W, ldw, N, y, ldy);
    return e;
}

template <int TR>
static cudaError_t launch_gemv_t(const bf16 *x, int64_t K, int64_t ldx, const bf16 *W, int64_t ldw, int64_t N, void *y,
                          int mode, int64_t ldy, cudaStream_t s)
{
    int64_t r = 16384 / K;
    if (mode == 2 && r < 2)
        r = 2;
    if (r >= 8)
        return launch_gemv_r<TR, 8>(x, K, ldx, W, ldw, N, y, mode, ldy, s);
    if (r >= 4)
        return launch_gemv_r<TR, 4>(x, K, ldx, W, ldw, N, y, mode, ldy, s);
    if (r >= 2)
        return launch_gemv_r<TR, 2>(x, K, ldx, W, ldw, N, y, mode, ldy, s);
    return launch_gemv_r<TR, 1>(x, K, ldx, W, ldw, N, y, mode, ldy, s);
}

/* mode 0/1/2 as the kernel's; rows of x in groups of at most 4. */
static gm_status gemv_any(const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw, int64_t N,
                          void *y, int mode, int64_t ldy, cudaStream_t s)
{
    if (K % 8 || ldx % 8 || ldw % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "gemv: K %lld and strides must be multiples of 8", (long long)K);
    const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)W;
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        int64_t tr = T - t0 < 4 ? T - t0 : 4;
        const bf16 *xt = xb + t0 * ldx;
        void *yt = mode == 1 ? (void *)((float *)y + t0 * ldy) : (void *)((bf16 *)y + t0 * ldy);
        cudaError_t e;
        switch (tr) {
        case 1: e = launch_gemv_t<1>(xt, K, ldx, wb, ldw, N, yt, mode, ldy, s); break;
        case 2: e = launch_gemv_t<2>(xt, K, ldx, wb, ldw, N, yt, mode, ldy, s); break;
        case 3: e = launch_gemv_t<3>(xt, K, ldx, wb, ldw, N, yt, mode, ldy, s); break;
        default: e = launch_gemv_t<4>(xt, K, ldx, wb, ldw, N, yt, mode, ldy, s); break;
        }
        if (e != cudaSuccess)
            return gm_fail(GM_ERR_CUDA, "gemv launch (T=%lld K=%lld N=%lld): %s", (long long)tr, (long long)K,
                           (long long)N, cudaGetErrorString(e));
    }
    return GM_OK;
}

extern "C" gm_status k_gemv_bf16(const void *x, int64_t T, int64_t K, int64_t ldx, const void *W, int64_t ldw,
                               int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    return gemv_any(x, T, K, ldx, W, ldw, N, y, y_f32 ? 1 : 0, ldy, s);
}

extern "C" gm_status k_gemm_bf16_geglu(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *Wgu,
                                     int64_t ldw, int64_t ni, void *gu, void *act, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    if (ni % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_gemm_bf16_geglu: width %lld is not a multiple of 8", (long long)ni);
    if (T <= g->gemv_rows)
        return gemv_any(x, T, K, ldx, Wgu, ldw, ni, act, 2, ni, s);
    GM_CHECK(k_gemm_bf16_lt(g, x, T, K, ldx, Wgu, ldw, 2 * ni, gu, 0, 2 * ni, s));
    return k_geglu(gu, T, ni, act, s);
}

extern "C" gm_status k_gemm_bf16(k_gemm_ctx *g, const void *x, int64_t T, int64_t K, int64_t ldx, const void *W,
                               int64_t ldw, int64_t N, void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    if (K % 8 || ldx % 8 || ldw % 8 || ldy % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "gemm: K %lld and strides (%lld, %lld, %lld) must be multiples of 8",
                       (long long)K, (long long)ldx, (long long)ldw, (long long)ldy);
    if (T <= g->gemv_rows)
        return k_gemv_bf16(x, T, K, ldx, W, ldw, N, y, y_f32, ldy, s);
    return k_gemm_bf16_lt(g, x, T, K, ldx, W, ldw, N, y, y_f32, ldy, s);
}
