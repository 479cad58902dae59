/* gemm_fp8.cu - cuBLASLt e4m3 GEMM (TN, f32 accumulate, bf16 out) with a per-shape algorithm cache.
 *
 * FLOP floor: 2*T*N*K; byte floor: N*K + T*K + 2*T*N. Decode (T <= 64) is weight-read bound
 * (N*K bytes at ~4.2 TB/s on H200), prefill is FP8-tensor-core bound (1386 TFLOP/s at 8192^3). */
#include "gemm_fp8.cuh"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"

typedef struct fp8_key {
    int64_t tb, n, k, ldx, ldw, ldy;
    int32_t align_x, align_w, align_y, pad;
} fp8_key;

typedef struct fp8_entry {
    fp8_key key;
    cublasLtMatmulAlgo_t algo;
} fp8_entry;

struct gemm_fp8_ctx {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    void *ws;
    size_t ws_bytes;
    int8_t fast_accum;
    fp8_entry *cache;
    int32_t n_cache, cap_cache;
};

extern "C" gm_status gemm_fp8_ctx_new(size_t workspace_bytes, gemm_fp8_ctx **out)
{
    *out = NULL;
    gm_status st = GM_OK;
    gemm_fp8_ctx *g = (gemm_fp8_ctx *)calloc(1, sizeof *g);
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "gemm_fp8_ctx_new: no host memory");
    g->ws_bytes = workspace_bytes ? workspace_bytes : ((size_t)32 << 20);
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
    gemm_fp8_ctx_destroy(&g);
    return st;
}

extern "C" void gemm_fp8_ctx_destroy(gemm_fp8_ctx **gp)
{
    if (!gp || !*gp)
        return;
    gemm_fp8_ctx *g = *gp;
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

extern "C" void gemm_fp8_ctx_set_fast_accum(gemm_fp8_ctx *g, int on)
{
    g->fast_accum = on ? 1 : 0;
    cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &g->fast_accum, sizeof g->fast_accum);
    g->n_cache = 0;
}

extern "C" int32_t gemm_fp8_ctx_cached(const gemm_fp8_ctx *g) { return g->n_cache; }

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

static gm_status layouts_make(int64_t T, int64_t N, int64_t K, int64_t ldx, int64_t ldw, int64_t ldy, fp8_layouts *l)
{
    gm_status st = GM_OK;
    memset(l, 0, sizeof *l);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->a, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N, ldw), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->b, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)T, ldx), st, fail);
    GM_CUBLAS_GOTO(cublasLtMatrixLayoutCreate(&l->d, CUDA_R_16BF, (uint64_t)N, (uint64_t)T, ldy), st, fail);
    return GM_OK;
fail:
    layouts_destroy(l);
    return st;
}

/* The heuristic's first choice for M (= T) of m under the key's alignments. */
static gm_status pick_algo(gemm_fp8_ctx *g, const fp8_key *key, int64_t m, cublasLtMatmulAlgo_t *algo)
{
    gm_status st = GM_OK;
    fp8_layouts l;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    uint32_t aw = (uint32_t)key->align_w, ax = (uint32_t)key->align_x, ay = (uint32_t)key->align_y;
    GM_CHECK(layouts_make(m, key->n, key->k, key->ldx, key->ldw, key->ldy, &l));
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
    GM_CUBLAS_GOTO(cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, l.a, l.b, l.d, l.d, pref, 1, &res, &n_res), st, done);
    if (n_res < 1) {
        st = gm_fail(GM_ERR_CUBLAS, "cuBLASLt has no e4m3 algorithm for T=%lld N=%lld K=%lld (ld %lld/%lld/%lld)",
                     (long long)m, (long long)key->n, (long long)key->k, (long long)key->ldx, (long long)key->ldw,
                     (long long)key->ldy);
        goto done;
    }
    *algo = res.algo;
done:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    layouts_destroy(&l);
    return st;
}

static gm_status run_lt(gemm_fp8_ctx *g, const cublasLtMatmulAlgo_t *algo, const void *xq, int64_t T, int64_t K,
                        int64_t ldx, const void *Wq, int64_t ldw, int64_t N, void *y, int64_t ldy, cudaStream_t s,
                        cublasStatus_t *cs)
{
    fp8_layouts l;
    float alpha = 1.0f, beta = 0.0f;
    *cs = CUBLAS_STATUS_SUCCESS;
    GM_CHECK(layouts_make(T, N, K, ldx, ldw, ldy, &l));
    *cs = cublasLtMatmul(g->lt, g->op, &alpha, Wq, l.a, xq, l.b, &beta, y, l.d, y, l.d, algo, g->ws, g->ws_bytes, s);
    layouts_destroy(&l);
    return GM_OK;
}

extern "C" gm_status gemm_fp8(gemm_fp8_ctx *g, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                              const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int64_t ldy,
                              cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    if (K % 16 || ldx % 16 || ldw % 16 || N % 8 || ldy % 8 || K <= 0 || N <= 0 || ldx < K || ldw < K || ldy < N)
        return gm_fail(GM_ERR_UNSUPPORTED,
                       "gemm_fp8: K %lld, ldx %lld, ldw %lld must be multiples of 16 and N %lld, ldy %lld of 8",
                       (long long)K, (long long)ldx, (long long)ldw, (long long)N, (long long)ldy);
    if ((uintptr_t)xq % 16 || (uintptr_t)Wq % 16 || (uintptr_t)y % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "gemm_fp8: x %p, W %p, y %p must be 16-byte aligned", xq, Wq, y);
    if (!x_scale || !w_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "gemm_fp8: missing scale pointer");
    /* the scale attributes are read when the call is enqueued (and frozen into a captured graph) */
    GM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                                   sizeof w_scale));
    GM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale,
                                                   sizeof x_scale));
    fp8_key key;
    memset(&key, 0, sizeof key);
    key.tb = t_bucket(T), key.n = N, key.k = K, key.ldx = ldx, key.ldw = ldw, key.ldy = ldy;
    key.align_x = ptr_align(xq), key.align_w = ptr_align(Wq), key.align_y = ptr_align(y);
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
                return gm_fail(GM_ERR_NOMEM, "gemm_fp8: no host memory for the algorithm cache");
            g->cache = c;
            g->cap_cache = cap;
        }
        e = &g->cache[g->n_cache];
        memset(e, 0, sizeof *e);
        e->key = key;
        GM_CHECK(pick_algo(g, &key, key.tb, &e->algo));
        g->n_cache++;
    }
    cublasStatus_t cs;
    GM_CHECK(run_lt(g, &e->algo, xq, T, K, ldx, Wq, ldw, N, y, ldy, s, &cs));
    if (cs == CUBLAS_STATUS_NOT_SUPPORTED || cs == CUBLAS_STATUS_INVALID_VALUE) {
        /* the bucket's algorithm does not take this exact T: ask for one that does */
        cublasLtMatmulAlgo_t algo;
        GM_CHECK(pick_algo(g, &key, T, &algo));
        GM_CHECK(run_lt(g, &algo, xq, T, K, ldx, Wq, ldw, N, y, ldy, s, &cs));
    }
    if (cs != CUBLAS_STATUS_SUCCESS)
        return gm_fail(GM_ERR_CUBLAS, "cublasLtMatmul e4m3 T=%lld N=%lld K=%lld: %s", (long long)T, (long long)N,
                       (long long)K, cublasGetStatusString(cs));
    return GM_OK;
}
