/* gemm_fp8.cu - cuBLASLt e4m3 GEMM (TN, f32 accumulate, bf16 out) with a per-shape algorithm cache,
 * the first FP8 GEMV (v1), and the rule that sends few-row products to GEMV v1 or v2
 * (gemm_fp8_gemv2.cu).
 *
 * FLOP floor: 2*T*N*K; byte floor: N*K + T*K + 2*T*N. Decode (T <= 64) is weight-read bound
 * (N*K bytes at ~4.2 TB/s on H200), prefill is FP8-tensor-core bound (1386 TFLOP/s at 8192^3). */
#include "gemm_fp8.cuh"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

typedef struct fp8_key {
    int64_t tb, n, k, ldx, ldw, ldy;
    int32_t align_x, align_w, align_y, yf32;
} fp8_key;

typedef struct fp8_entry {
    fp8_key key;
    cublasLtMatmulAlgo_t algo;
} fp8_entry;

struct k_gemm_fp8_ctx {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    void *ws;
    size_t ws_bytes;
    int8_t fast_accum;
    int32_t gemv_rows;
    fp8_entry *cache;
    int32_t n_cache, cap_cache;
    int32_t n_tuned;      /* keys whose algorithm was chosen by timing the candidates */
    int64_t n_candidates; /* algorithms timed for them */
    int8_t tune;          /* K_GEMM_TUNE_* (k_gemm_fp8_ctx_set_tune) */
};

extern "C" gm_status k_gemm_fp8_ctx_new(size_t workspace_bytes, k_gemm_fp8_ctx **out)
{
    *out = NULL;
    gm_status st = GM_OK;
    k_gemm_fp8_ctx *g = (k_gemm_fp8_ctx *)calloc(1, sizeof *g);
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "k_gemm_fp8_ctx_new: no host memory");
    g->ws_bytes = workspace_bytes ? workspace_bytes : ((size_t)32 << 20);
    g->gemv_rows = 4;
    g->tune = (int8_t)(k_gemm_tune_default() ? K_GEMM_TUNE_WIDE : K_GEMM_TUNE_OFF);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    GM_CUBLAS_GOTO(cublasLtCreate(&g->lt), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &g->fast_accum,
                                                  sizeof g->fast_accum),
                   st, fail);
    GM_CUDA_GOTO(cudaMalloc(&g->ws, g->ws_bytes), st, fail); /* cudaMalloc: 256-byte aligned */
    *out = g;
    return GM_OK;
fail:
    k_gemm_fp8_ctx_destroy(&g);
    return st;
}

extern "C" void k_gemm_fp8_ctx_destroy(k_gemm_fp8_ctx **gp)
{
    if (!gp || !*gp)
        return;
    k_gemm_fp8_ctx *g = *gp;
    if (g->ws)
        cudaFree(g->ws);
    if (g->op)
        cublasLtMatmulDescDestroy(g->op);
    if (g->lt)
        cublasLtDestroy(g->lt);
    free(g->cache);
    free(g);
    *gp = NULL;
}

extern "C" void k_gemm_fp8_ctx_set_fast_accum(k_gemm_fp8_ctx *g, int on)
{
    g->fast_accum = on ? 1 : 0;
    cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &g->fast_accum, sizeof g->fast_accum);
    g->n_cache = 0;
}

extern "C" void k_gemm_fp8_ctx_set_gemv_rows(k_gemm_fp8_ctx *g, int32_t max_rows)
{
    g->gemv_rows = max_rows < 0 ? 0 : (max_rows > 8 ? 8 : max_rows);
}

extern "C" void k_gemm_fp8_ctx_set_tune(k_gemm_fp8_ctx *g, int level)
{
    g->tune = (int8_t)(level <= K_GEMM_TUNE_OFF ? K_GEMM_TUNE_OFF : level >= K_GEMM_TUNE_WIDE ? K_GEMM_TUNE_WIDE
                                                                                             : K_GEMM_TUNE_TOP);
    g->n_cache = 0; /* choose again under the new level */
}

extern "C" int32_t k_gemm_fp8_ctx_cached(const k_gemm_fp8_ctx *g) { return g->n_cache; }
extern "C" int32_t k_gemm_fp8_ctx_tuned(const k_gemm_fp8_ctx *g) { return g->n_tuned; }
extern "C" int64_t k_gemm_fp8_ctx_candidates(const k_gemm_fp8_ctx *g) { return g->n_candidates; }

static int64_t t_bucket(int64_t T)
{
    if (T <= 16)
        return T;
    int64_t b = 32;
    while (b < T)
        b <<= 1;
    return b;
}

/* Largest power of two (<= 256) dividing the address: what the heuristic may assume. */
static int32_t ptr_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int32_t al = 256;
    while (al > 16 && a % (uintptr_t)al)
        al >>= 1;
    return al;
}

typedef struct fp8_layouts {
    cublasLtMatrixLayout_t a, b, d;
} fp8_layouts;

static void layouts_destroy(fp8_layouts *l)
{
    if (l->a)
        cublasLtMatrixLayoutDestroy(l->a);
    if (l->b)
        cublasLtMatrixLayoutDestroy(l->b);
    if (l->d)
        cublasLtMatrixLayoutDestroy(l->d);
    memset(l, 0, sizeof *l);
}

static gm_status layouts_make(int64_t T, int64_t N, int64_t K, int64_t ldx, int64_t ldw, int64_t ldy, int yf32,
                              fp8_layouts *l)
{
    gm_status st = GM_OK;
    memset(l, 0, sizeof *l);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->a, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N, ldw), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->b, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)T, ldx), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->d, yf32 ? CUDA_R_32F : CUDA_R_16BF, (uint64_t)N, (uint64_t)T, ldy),
                   st, fail);
    return GM_OK;
fail:
    layouts_destroy(l);
    return st;
}

/* The heuristic's first max_res choices for M (= T) of m under the key's alignments (best first). */
static gm_status pick_algos(k_gemm_fp8_ctx *g, const fp8_key *key, int64_t m, cublasLtMatmulHeuristicResult_t *res,
                            int max_res, int *n_out)
{
    gm_status st = GM_OK;
    fp8_layouts l;
    cublasLtMatmulPreference_t pref = NULL;
    int n_res = 0;
    *n_out = 0;
    uint32_t aw = (uint32_t)key->align_w, ax = (uint32_t)key->align_x, ay = (uint32_t)key->align_y;
    GM_CHECK(layouts_make(m, key->n, key->k, key->ldx, key->ldw, key->ldy, key->yf32, &l));
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceCreate(&pref), st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes,
                                                        sizeof g->ws_bytes),
                   st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                                        sizeof aw),
                   st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax,
                                                        sizeof ax),
                   st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay,
                                                        sizeof ay),
                   st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay,
                                                        sizeof ay),
                   st, done);
    GM_CUBLAS_GOTO(cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, l.a, l.b, l.d, l.d, pref, max_res, res, &n_res), st,
                   done);
    if (n_res < 1) {
        st = gm_fail(GM_ERR_CUBLAS, "cuBLASLt has no e4m3 algorithm for T=%lld N=%lld K=%lld (ld %lld/%lld/%lld)",
                     (long long)m, (long long)key->n, (long long)key->k, (long long)key->ldx, (long long)key->ldw,
                     (long long)key->ldy);
        goto done;
    }
    *n_out = n_res;
done:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    layouts_destroy(&l);
    return st;
}

static gm_status pick_algo(k_gemm_fp8_ctx *g, const fp8_key *key, int64_t m, cublasLtMatmulAlgo_t *algo)
{
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    GM_CHECK(pick_algos(g, key, m, &res, 1, &n));
    *algo = res.algo;
    return GM_OK;
}

static gm_status run_lt(k_gemm_fp8_ctx *g, const cublasLtMatmulAlgo_t *algo, const void *xq, int64_t T, int64_t K,
                        int64_t ldx, const void *Wq, int64_t ldw, int64_t N, void *y, int yf32, int64_t ldy,
                        cudaStream_t s, cublasStatus_t *cs)
{
    fp8_layouts l;
    float alpha = 1.0f, beta = 0.0f;
    *cs = CUBLAS_STATUS_SUCCESS;
    GM_CHECK(layouts_make(T, N, K, ldx, ldw, ldy, yf32, &l));
    *cs = cublasLtMatmul(g->lt, g->op, &alpha, Wq, l.a, xq, l.b, &beta, y, l.d, y, l.d, algo, g->ws, g->ws_bytes, s);
    layouts_destroy(&l);
    return GM_OK;
}

/* Autotuning (the first call of a (T bucket, shape) key with M >= GEMM_TUNE_MIN_M, outside stream
 * capture, unless the context's tune level is K_GEMM_TUNE_OFF: GM_GEMM_TUNE=0): candidates each run once
 * to warm up and GEMM_TUNE_REPS times timed on the call's own operands; the fastest is kept (the
 * heuristic's order breaks ties). The output is recomputed each time, so the call's result is unchanged.
 * K_GEMM_TUNE_TOP: the heuristic's first GEMM_TUNE_N candidates. K_GEMM_TUNE_WIDE (the default) at
 * M >= GEMM_WIDE_MIN_M (prefill: 2048-16384 rows, where one product takes 0.1-4 ms and a wrong tile
 * costs 13-39% of the FP8 rate, bench/RESULTS.md): the first GEMM_WIDE_N candidates, plus, for the first
 * GEMM_SPLIT_N of them that take split-K, their split-K variants (1, 2, 4 splits; reduction through the
 * workspace, never in place, so results stay deterministic) that cuBLASLt accepts for this shape and the
 * workspace; below it as K_GEMM_TUNE_TOP. */
#define GEMM_TUNE_N 8
#define GEMM_TUNE_REPS 3
#define GEMM_TUNE_MIN_M 64
#define GEMM_WIDE_MIN_M 1024
#define GEMM_WIDE_N 24
#define GEMM_SPLIT_N 4
#define GEMM_CAND_MAX (GEMM_WIDE_N + 2 * GEMM_SPLIT_N)

/* Split-K variants of candidate `base` (splits 1, 2, 4 other than its own) that cuBLASLt accepts for the
 * key's shape within the workspace, appended to out[*n] (capacity cap). */
static void split_variants(k_gemm_fp8_ctx *g, const fp8_key *key, int64_t T, const cublasLtMatmulAlgo_t *base,
                           cublasLtMatmulAlgo_t *out, int *n, int cap)
{
    int32_t can = 0, own = 1;
    uint32_t schemes = 0, scheme = 0;
    size_t got = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &can, sizeof can, &got) !=
            CUBLAS_STATUS_SUCCESS || !can ||
        cublasLtMatmulAlgoCapGetAttribute(base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes,
                                          &got) != CUBLAS_STATUS_SUCCESS)
        return;
    if (schemes & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)
        scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    else if (schemes & CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE)
        scheme = CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    else
        return; /* in-place reduction only: its order of additions may vary between runs */
    cublasLtMatmulAlgoConfigGetAttribute(base, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &own, sizeof own, &got);
    fp8_layouts l;
    if (layouts_make(T, key->n, key->k, key->ldx, key->ldw, key->ldy, key->yf32, &l) != GM_OK)
        return;
    static const int32_t splits[3] = {1, 2, 4};
    for (int i = 0; i < 3 && *n < cap; i++) {
        if (splits[i] == own)
            continue;
        cublasLtMatmulAlgo_t a = *base;
        uint32_t sch = splits[i] > 1 ? scheme : CUBLASLT_REDUCTION_SCHEME_NONE;
        cublasLtMatmulHeuristicResult_t chk;
        memset(&chk, 0, sizeof chk);
        if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits[i], sizeof splits[i]) !=
                CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &sch, sizeof sch) !=
                CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulAlgoCheck(g->lt, g->op, l.a, l.b, l.d, l.d, &a, &chk) != CUBLAS_STATUS_SUCCESS ||
            chk.state != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > g->ws_bytes)
            continue;
        out[(*n)++] = a;
    }
    layouts_destroy(&l);
}

static gm_status tune_algo(k_gemm_fp8_ctx *g, const fp8_key *key, const void *xq, int64_t T, int64_t K, int64_t ldx,
                           const void *Wq, int64_t ldw, int64_t N, void *y, int64_t ldy, cudaStream_t s,
                           cublasLtMatmulAlgo_t *algo)
{
    const int wide = g->tune >= K_GEMM_TUNE_WIDE && T >= GEMM_WIDE_MIN_M;
    cublasLtMatmulHeuristicResult_t res[GEMM_WIDE_N];
    cublasLtMatmulAlgo_t cand[GEMM_CAND_MAX];
    int n = 0, nc = 0;
    GM_CHECK(pick_algos(g, key, key->tb, res, wide ? GEMM_WIDE_N : GEMM_TUNE_N, &n));
    *algo = res[0].algo;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (g->tune == K_GEMM_TUNE_OFF || T < GEMM_TUNE_MIN_M || cudaStreamIsCapturing(s, &cap) != cudaSuccess ||
        cap != cudaStreamCaptureStatusNone)
        return GM_OK;
    for (int i = 0; i < n; i++)
        cand[nc++] = res[i].algo;
    for (int i = 0; wide && i < n && i < GEMM_SPLIT_N; i++)
        split_variants(g, key, T, &res[i].algo, cand, &nc, GEMM_CAND_MAX);
    if (nc < 2)
        return GM_OK;
    cudaEvent_t e0 = NULL, e1 = NULL;
    gm_status st = GM_OK;
    float best = -1.0f;
    /* products of over ~1 ms (2 T N K > 1e12 FLOP) are timed once: the tuning of a 16k-row 7b gate|up then costs
     * ~0.3 s, once per key */
    const int reps = 2.0 * (double)T * (double)N * (double)K > 1e12 ? 1 : GEMM_TUNE_REPS;
    GM_CUDA_GOTO(cudaEventCreate(&e0), st, done);
    GM_CUDA_GOTO(cudaEventCreate(&e1), st, done);
    for (int i = 0; i < nc; i++) {
        cublasStatus_t cs;
        GM_GOTO(run_lt(g, &cand[i], xq, T, K, ldx, Wq, ldw, N, y, key->yf32, ldy, s, &cs), st, done);
        if (cs != CUBLAS_STATUS_SUCCESS)
            continue; /* this candidate does not take the exact T */
        GM_CUDA_GOTO(cudaEventRecord(e0, s), st, done);
        for (int r = 0; r < reps; r++)
            GM_GOTO(run_lt(g, &cand[i], xq, T, K, ldx, Wq, ldw, N, y, key->yf32, ldy, s, &cs), st, done);
        GM_CUDA_GOTO(cudaEventRecord(e1, s), st, done);
        GM_CUDA_GOTO(cudaEventSynchronize(e1), st, done);
        float ms = 0.0f;
        GM_CUDA_GOTO(cudaEventElapsedTime(&ms, e0, e1), st, done);
        if (best < 0.0f || ms < best) {
            best = ms;
            *algo = cand[i];
        }
    }
    g->n_tuned++;
    g->n_candidates += nc;
done:
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    return st;
}

static gm_status check_args(const void *xq, int64_t K, int64_t ldx, const float *x_scale, const void *Wq, int64_t ldw,
                            const float *w_scale, int64_t N, const void *y, int64_t ldy)
{
    if (K % 16 || ldx % 16 || ldw % 16 || N % 8 || ldy % 8 || K <= 0 || N <= 0 || ldx < K || ldw < K || ldy < N)
        return gm_fail(GM_ERR_UNSUPPORTED,
                       "k_gemm_fp8: K %lld, ldx %lld, ldw %lld must be multiples of 16 and N %lld, ldy %lld of 8",
                       (long long)K, (long long)ldx, (long long)ldw, (long long)N, (long long)ldy);
    if ((uintptr_t)xq % 16 || (uintptr_t)Wq % 16 || (uintptr_t)y % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_gemm_fp8: x %p, W %p, y %p must be 16-byte aligned", xq, Wq, y);
    if (!x_scale || !w_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "k_gemm_fp8: missing scale pointer");
    return GM_OK;
}

/* ---- GEMV: T <= 8 rows, mma.sync m16n8k32 e4m3 ----
 * CTA = 8 warps = 16 output columns; warp w takes a contiguous K slice. Per 64-byte
 * K step a lane loads 16 bytes of weight rows gid and gid+8 and 16 bytes of x row gid (token),
 * which feed two MMAs (the k order inside the step is permuted identically for W and x). */
#define GV_WARPS 8
#define GV_UNROLL 4

__device__ __forceinline__ void mma_e4m3(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename OT>
__global__ void __launch_bounds__(GV_WARPS * 32)
    gemv_fp8_kernel(const uint8_t *__restrict__ x, int64_t ldx, int32_t T, const uint8_t *__restrict__ W,
                    int64_t ldw, int64_t K, const float *__restrict__ sx, const float *__restrict__ sw,
                    OT *__restrict__ y, int64_t ldy)
{
    __shared__ float red[GV_WARPS][16][8];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, c = lane & 3;
    const int64_t n0 = (int64_t)blockIdx.x * 16;
    const int64_t nsteps = K / 64;
    const int64_t per = (nsteps + GV_WARPS - 1) / GV_WARPS;
    const int64_t s0 = warp * per, s1 = s0 + per < nsteps ? s0 + per : nsteps;
    const uint8_t *w0 = W + (n0 + gid) * ldw + 16 * c, *w1 = w0 + 8 * ldw;
    const uint8_t *xr = x + (int64_t)gid * ldx + 16 * c;
    const bool xv = gid < T;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t s = s0; s < s1; s += GV_UNROLL) {
        uint4 a[GV_UNROLL], b[GV_UNROLL], xx[GV_UNROLL];
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            if (s + u < s1) {
                a[u] = __ldcs(reinterpret_cast<const uint4 *>(w0 + (s + u) * 64));
                b[u] = __ldcs(reinterpret_cast<const uint4 *>(w1 + (s + u) * 64));
                xx[u] = xv ? __ldg(reinterpret_cast<const uint4 *>(xr + (s + u) * 64)) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            if (s + u < s1) {
                mma_e4m3(acc, a[u].x, b[u].x, a[u].y, b[u].y, xx[u].x, xx[u].y);
                mma_e4m3(acc, a[u].z, b[u].z, a[u].w, b[u].w, xx[u].z, xx[u].w);
            }
        }
    }
    /* acc: (column gid, tokens 2c, 2c+1), (column gid + 8, tokens 2c, 2c+1) */
    red[warp][gid][2 * c] = acc[0];
    red[warp][gid][2 * c + 1] = acc[1];
    red[warp][gid + 8][2 * c] = acc[2];
    red[warp][gid + 8][2 * c + 1] = acc[3];
    __syncthreads();
    if (tid < 128) {
        int r = tid >> 3, t = tid & 7;
        if (t < T) {
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < GV_WARPS; w++)
                sum += red[w][r][t];
            float v = sum * (*sx * *sw);
            if (sizeof(OT) == 4)
                reinterpret_cast<float *>(y)[(int64_t)t * ldy + n0 + r] = v;
            else
                reinterpret_cast<bf16 *>(y)[(int64_t)t * ldy + n0 + r] = __float2bfloat16_rn(v);
        }
    }
}

extern "C" gm_status k_gemv_fp8_v1(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                                 const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                                 int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CHECK(check_args(xq, K, ldx, x_scale, Wq, ldw, w_scale, N, y, ldy));
    if (T > 8 || K % 64 || N % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_gemv_fp8: T %lld (<= 8), K %lld (%% 64), N %lld (%% 16)", (long long)T,
                       (long long)K, (long long)N);
    if (y_f32)
        gemv_fp8_kernel<float><<<(unsigned)(N / 16), GV_WARPS * 32, 0, s>>>(
            (const uint8_t *)xq, ldx, (int32_t)T, (const uint8_t *)Wq, ldw, K, x_scale, w_scale, (float *)y, ldy);
    else
        gemv_fp8_kernel<bf16><<<(unsigned)(N / 16), GV_WARPS * 32, 0, s>>>(
            (const uint8_t *)xq, ldx, (int32_t)T, (const uint8_t *)Wq, ldw, K, x_scale, w_scale, (bf16 *)y, ldy);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* The GEMV for this shape: v2 when K is a power of two (or a shape v1 does not take). Measured (run F,
 * CUDA graphs, H200): v2 is faster at K = 2048, 4096 and 16384 (gemma-2b's shapes, 7b's o_proj, the LM
 * heads) and slower at K = 3072 and 24576 (7b's qkv, gate|up, down: 0.84-0.97x), where its K split
 * leaves lanes idle. (Timing both at the first call was tried: eager launches at T = 1 measure launch
 * overhead more than the kernels, and the picks were worse than this rule.) */
static int gemv_choose(int64_t T, int64_t K, int64_t N)
{
    if (T > 4)
        return 1;
    if (K % 64 || N % 16) /* shapes only v2 takes */
        return 2;
    return (K & (K - 1)) == 0 ? 2 : 1;
}

extern "C" int k_gemv_fp8_v2_for(int64_t T, int64_t K, int64_t N) { return gemv_choose(T, K, N) == 2; }

extern "C" gm_status k_gemv_fp8(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale, const void *Wq,
                              int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32, int64_t ldy,
                              cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    if (gemv_choose(T, K, N) == 2)
        return k_gemv_fp8_v2(xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32, ldy, s);
    return k_gemv_fp8_v1(xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32, ldy, s);
}

extern "C" gm_status k_gemm_fp8(k_gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx,
                                const float *x_scale, const void *Wq, int64_t ldw, const float *w_scale, int64_t N,
                                void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (T > 0 && T <= g->gemv_rows && K % 64 == 0 && N % 16 == 0) {
        if (gemv_choose(T, K, N) == 2)
            return k_gemv_fp8_v2(xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32, ldy, s);
        return k_gemv_fp8_v1(xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32, ldy, s);
    }
    return k_gemm_fp8_lt(g, xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32, ldy, s);
}

extern "C" gm_status k_gemm_fp8_lt(k_gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx,
                                 const float *x_scale, const void *Wq, int64_t ldw, const float *w_scale, int64_t N,
                                 void *y, int y_f32, int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CHECK(check_args(xq, K, ldx, x_scale, Wq, ldw, w_scale, N, y, ldy));
    /* the scale attributes are read when the call is enqueued (and frozen into a captured graph) */
    GM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                                   sizeof w_scale));
    GM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale,
                                                   sizeof x_scale));
    fp8_key key;
    memset(&key, 0, sizeof key);
    key.tb = t_bucket(T), key.n = N, key.k = K, key.ldx = ldx, key.ldw = ldw, key.ldy = ldy;
    key.align_x = ptr_align(xq), key.align_w = ptr_align(Wq), key.align_y = ptr_align(y);
    key.yf32 = y_f32 ? 1 : 0;
    fp8_entry *e = NULL;
    for (int32_t i = 0; i < g->n_cache; i++)
        if (!memcmp(&g->cache[i].key, &key, sizeof key)) {
            e = &g->cache[i];
            break;
        }
    if (!e) {
        if (g->n_cache == g->cap_cache) {
            int32_t cap = g->cap_cache ? 2 * g->cap_cache : 64;
            fp8_entry *c = (fp8_entry *)realloc(g->cache, (size_t)cap * sizeof *c);
            if (!c)
                return gm_fail(GM_ERR_NOMEM, "k_gemm_fp8: no host memory for the algorithm cache");
            g->cache = c;
            g->cap_cache = cap;
        }
        e = &g->cache[g->n_cache];
        memset(e, 0, sizeof *e);
        e->key = key;
        GM_CHECK(tune_algo(g, &key, xq, T, K, ldx, Wq, ldw, N, y, ldy, s, &e->algo));
        g->n_cache++;
    }
    cublasStatus_t cs;
    GM_CHECK(run_lt(g, &e->algo, xq, T, K, ldx, Wq, ldw, N, y, key.yf32, ldy, s, &cs));
    if (cs == CUBLAS_STATUS_NOT_SUPPORTED || cs == CUBLAS_STATUS_INVALID_VALUE) {
        /* the bucket's algorithm does not take this exact T: ask for one that does */
        cublasLtMatmulAlgo_t algo;
        GM_CHECK(pick_algo(g, &key, T, &algo));
        GM_CHECK(run_lt(g, &algo, xq, T, K, ldx, Wq, ldw, N, y, key.yf32, ldy, s, &cs));
    }
    if (cs != CUBLAS_STATUS_SUCCESS)
        return gm_fail(GM_ERR_CUBLAS, "cublasLtMatmul e4m3 T=%lld N=%lld K=%lld: %s", (long long)T, (long long)N,
                       (long long)K, cublasGetStatusString(cs));
    return GM_OK;
}
