/* bench_kernels.c - CUDA kernel micro-benchmarks at Gemma's shapes, each figure beside its
 * ceiling: GB/s against the measured device-copy bandwidth (bytes read + written), TFLOP/s
 * against the measured 8192^3 bf16 cuBLASLt rate.
 *
 * Timing: CUDA events around `reps` launches after warm-up, median of 7 such groups. Memory-
 * bound kernels rotate among enough input copies to exceed the L2 cache. Inputs are random
 * (never zeros). Output: one line per case, "name | time | rate | ceiling | %". */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "common/sampling.h"
#include "kernels/cuda/attn_decode.cuh"
#include "kernels/cuda/attn_prefill.cuh"
#include "kernels/cuda/embed.cuh"
#include "kernels/cuda/geglu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/rope_kv.cuh"
#include "kernels/cuda/sample.cuh"

#define BENCH_NAME "bench_kernels"
#include "bench/bench_check.h"

static double g_bw;     /* measured copy GB/s */
static double g_tflops; /* measured bf16 GEMM TFLOP/s */
static cudaStream_t g_s;
static FILE *g_csv;

/* A random bf16 device buffer of n elements in [-scale, scale]: up to 16 Mi values drawn on the
 * host, tiled by device copies beyond that. */
static void *rand_dev(int64_t n, float scale, uint64_t seed)
{
    int64_t m = n < (16ll << 20) ? n : (16ll << 20);
    uint16_t *h = malloc((size_t)m * 2);
    uint64_t r = seed * 2654435761ull + 1;
    for (int64_t i = 0; i < m; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = gm_f32_to_bf16(((float)(r >> 40) / 16777216.0f * 2.0f - 1.0f) * scale);
    }
    char *d;
    CU(cudaMalloc((void **)&d, (size_t)n * 2));
    CU(cudaMemcpy(d, h, (size_t)m * 2, cudaMemcpyHostToDevice));
    for (int64_t done = m; done < n;) {
        int64_t c = n - done < done ? n - done : done;
        CU(cudaMemcpy(d + done * 2, d, (size_t)c * 2, cudaMemcpyDeviceToDevice));
        done += c;
    }
    free(h);
    return d;
}

typedef void (*run_fn)(void *ctx, int rep);

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median microseconds of one call of fn (rep = call index, for buffer rotation). */
static double time_us(run_fn fn, void *ctx, int reps)
{
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++)
        fn(ctx, i);
    CU(cudaStreamSynchronize(g_s));
    float t[7];
    int k = 0;
    for (int g = 0; g < 7; g++) {
        CU(cudaEventRecord(a, g_s));
        for (int i = 0; i < reps; i++)
            fn(ctx, k++);
        CU(cudaEventRecord(b, g_s));
        CU(cudaEventSynchronize(b));
        CU(cudaEventElapsedTime(&t[g], a, b));
        t[g] = t[g] * 1000.0f / (float)reps;
    }
    CU(cudaGetLastError());
    qsort(t, 7, sizeof t[0], cmp_f);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return t[3];
}

static void report_bw(const char *name, double us, double bytes)
{
    double gbs = bytes / (us * 1e3);
    printf("%-52s | %9.2f us | %7.0f GB/s     | copy %4.0f GB/s | %5.1f%%\n", name, us, gbs, g_bw, 100.0 * gbs / g_bw);
    if (g_csv)
        fprintf(g_csv, "%s,%.3f,%.1f,GB/s,%.1f\n", name, us, gbs, 100.0 * gbs / g_bw);
}

static void report_fl(const char *name, double us, double flops, double bytes)
{
    double tf = flops / (us * 1e6); /* TFLOP/s */
    double gbs = bytes / (us * 1e3);
    printf("%-52s | %9.2f us | %7.1f TFLOP/s  | bf16 %4.0f TF/s | %5.1f%% (%5.0f GB/s)\n", name, us, tf, g_tflops,
           100.0 * tf / g_tflops, gbs);
    if (g_csv)
        fprintf(g_csv, "%s,%.3f,%.2f,TFLOP/s,%.1f,%.0f\n", name, us, tf, 100.0 * tf / g_tflops, gbs);
}

/* ---------------------------------------------------------------- ceilings */

typedef struct copy_ctx {
    void *a, *b;
    size_t bytes;
} copy_ctx;

static void run_copy(void *p, int rep)
{
    copy_ctx *c = p;
    CU(cudaMemcpyAsync(rep & 1 ? c->a : c->b, rep & 1 ? c->b : c->a, c->bytes, cudaMemcpyDeviceToDevice, g_s));
}

typedef struct gemm_bctx {
    k_gemm_ctx *g;
    void *x[8], *w[8], *y[8], *gu;
    int nrot;
    int64_t T, K, N;
    int yf32, path; /* 0 auto, 1 cuBLASLt, 2 gemv, 3 gate_up + GeGLU (N = 2 ni) */
} gemm_bctx;

static void run_gemm(void *p, int rep)
{
    gemm_bctx *c = p;
    int i = rep % c->nrot;
    if (c->path == 3)
        GOK(k_gemm_bf16_geglu(c->g, c->x[i], c->T, c->K, c->K, c->w[i], c->K, c->N / 2, c->gu, c->y[i], g_s));
    else if (c->path == 1)
        GOK(k_gemm_bf16_lt(c->g, c->x[i], c->T, c->K, c->K, c->w[i], c->K, c->N, c->y[i], c->yf32, c->N, g_s));
    else if (c->path == 2)
        GOK(k_gemv_bf16(c->x[i], c->T, c->K, c->K, c->w[i], c->K, c->N, c->y[i], c->yf32, c->N, g_s));
    else
        GOK(k_gemm_bf16(c->g, c->x[i], c->T, c->K, c->K, c->w[i], c->K, c->N, c->y[i], c->yf32, c->N, g_s));
}

static void ceilings(k_gemm_ctx *g)
{
    copy_ctx c;
    c.bytes = (size_t)2 << 30;
    CU(cudaMalloc(&c.a, c.bytes));
    CU(cudaMalloc(&c.b, c.bytes));
    CU(cudaMemset(c.a, 0x3c, c.bytes));
    CU(cudaMemset(c.b, 0x41, c.bytes));
    double us = time_us(run_copy, &c, 5);
    g_bw = 2.0 * (double)c.bytes / (us * 1e3);
    cudaFree(c.a);
    cudaFree(c.b);

    gemm_bctx b;
    memset(&b, 0, sizeof b);
    b.g = g;
    b.T = b.K = b.N = 8192;
    b.nrot = 1;
    b.path = 1;
    b.x[0] = rand_dev(b.T * b.K, 1.0f, 1);
    b.w[0] = rand_dev(b.N * b.K, 1.0f, 2);
    CU(cudaMalloc(&b.y[0], (size_t)(b.T * b.N * 2)));
    us = time_us(run_gemm, &b, 10);
    g_tflops = 2.0 * 8192.0 * 8192.0 * 8192.0 / (us * 1e6);
    cudaFree(b.x[0]), cudaFree(b.w[0]), cudaFree(b.y[0]);
    printf("ceilings: device copy %.0f GB/s (read + write, 2 GiB), bf16 GEMM 8192^3 %.0f TFLOP/s (cuBLASLt)\n\n", g_bw,
           g_tflops);
    if (g_csv)
        fprintf(g_csv, "ceiling_copy,,%.1f,GB/s\nceiling_gemm,,%.1f,TFLOP/s\n", g_bw, g_tflops);
}

/* ---------------------------------------------------------------- gemm at model shapes */

static void bench_gemm(k_gemm_ctx *g, const char *model, const char *op, int64_t T, int64_t K, int64_t N, int yf32,
                       int path)
{
    gemm_bctx b;
    memset(&b, 0, sizeof b);
    b.g = g, b.T = T, b.K = K, b.N = N, b.yf32 = yf32, b.path = path;
    int64_t wbytes = N * K * 2;
    b.nrot = (int)((256ll << 20) / wbytes) + 1; /* > 4x L2 of weights in rotation */
    if (b.nrot > 8)
        b.nrot = 8;
    for (int i = 0; i < b.nrot; i++) {
        b.x[i] = rand_dev(T * K, 1.0f, 10 + i);
        b.w[i] = i == 0 ? rand_dev(N * K, 0.05f, 20) : NULL;
        CU(cudaMalloc(&b.y[i], (size_t)(T * N * (yf32 ? 4 : 2))));
    }
    for (int i = 1; i < b.nrot; i++) { /* copies of the same weights at distinct addresses */
        CU(cudaMalloc(&b.w[i], (size_t)wbytes));
        CU(cudaMemcpy(b.w[i], b.w[0], (size_t)wbytes, cudaMemcpyDeviceToDevice));
    }
    if (path == 3)
        CU(cudaMalloc(&b.gu, (size_t)(T * N * 2)));
    double us = time_us(run_gemm, &b, 20);
    if (b.gu)
        cudaFree(b.gu);
    char name[96];
    snprintf(name, sizeof name, "gemm %s %s T=%lld K=%lld N=%lld %s", model, op, (long long)T, (long long)K,
             (long long)N, path == 3 ? "+geglu" : path == 2 ? "gemv" : path == 1 ? "lt" : "auto");
    double bytes = (double)wbytes + (double)(T * K * 2) + (double)(T * N * (yf32 ? 4 : 2));
    if (T <= 16)
        report_bw(name, us, bytes);
    else
        report_fl(name, us, 2.0 * (double)T * (double)K * (double)N, bytes);
    for (int i = 0; i < b.nrot; i++)
        cudaFree(b.x[i]), cudaFree(b.w[i]), cudaFree(b.y[i]);
}

/* ---------------------------------------------------------------- elementwise */

typedef struct ew_ctx {
    int kind;
    void *a[8], *b[8], *o[8];
    float *w;
    int32_t *ids;
    int nrot;
    int64_t n, dim;
} ew_ctx;

static void run_ew(void *p, int rep)
{
    ew_ctx *c = p;
    int i = rep % c->nrot;
    switch (c->kind) {
    case 0: GOK(k_rmsnorm(c->a[i], c->dim, c->w, c->n, c->dim, 1e-6f, c->o[i], c->dim, g_s)); break;
    case 1: GOK(k_add_rmsnorm(c->a[i], c->b[i], 0, c->w, c->n, c->dim, 1e-6f, c->o[i], g_s)); break;
    case 2: GOK(k_geglu(c->a[i], c->n, c->dim, c->o[i], g_s)); break;
    case 3: GOK(k_embed(c->a[0], 256000, c->dim, c->ids, c->n, 45.25f, c->o[i], g_s)); break;
    }
}

static void bench_ew(const char *name, int kind, int64_t n, int64_t dim)
{
    ew_ctx c;
    memset(&c, 0, sizeof c);
    c.kind = kind, c.n = n, c.dim = dim;
    int64_t in_w = kind == 2 ? 2 * dim : dim;
    int64_t bytes1 = n * in_w * 2;
    c.nrot = (int)((256ll << 20) / (bytes1 + 1)) + 1;
    if (c.nrot > 8)
        c.nrot = 8;
    for (int i = 0; i < c.nrot; i++) {
        c.a[i] = kind == 3 && i > 0 ? NULL : rand_dev(kind == 3 ? 256000 * dim : n * in_w, 1.0f, 30 + i);
        c.b[i] = kind == 1 ? rand_dev(n * dim, 1.0f, 40 + i) : NULL;
        CU(cudaMalloc(&c.o[i], (size_t)(n * dim * 2)));
    }
    float *w = malloc((size_t)dim * 4);
    for (int64_t i = 0; i < dim; i++)
        w[i] = 1.0f + 0.01f * (float)(i % 7);
    CU(cudaMalloc((void **)&c.w, (size_t)dim * 4));
    CU(cudaMemcpy(c.w, w, (size_t)dim * 4, cudaMemcpyHostToDevice));
    free(w);
    int32_t *ids = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 7919) % 256000);
    CU(cudaMalloc((void **)&c.ids, (size_t)n * 4));
    CU(cudaMemcpy(c.ids, ids, (size_t)n * 4, cudaMemcpyHostToDevice));
    free(ids);
    double us = time_us(run_ew, &c, 20);
    double bytes = kind == 0 ? 2.0 * n * dim * 2 : kind == 1 ? 4.0 * n * dim * 2 : kind == 2 ? 3.0 * n * dim * 2
                                                                                                 : 2.0 * n * dim * 2;
    report_bw(name, us, bytes);
    for (int i = 0; i < c.nrot; i++)
        cudaFree(c.a[i]), cudaFree(c.b[i]), cudaFree(c.o[i]);
    cudaFree(c.w), cudaFree(c.ids);
}

/* ---------------------------------------------------------------- rope + kv write */

typedef struct rope_ctx {
    void *qkv, *kp, *vp;
    float *inv;
    int32_t *pos, *slot;
    int64_t T;
    int32_t nh, nkv;
} rope_ctx;

static void run_rope(void *p, int rep)
{
    rope_ctx *c = p;
    GOK(k_rope_kv_write(c->qkv, (int64_t)(c->nh + 2 * c->nkv) * 256, c->T, c->nh, c->nkv, 256, c->pos, c->inv, c->slot,
                        c->kp, c->vp, 16, g_s));
}

static void bench_rope(const char *model, int32_t nh, int32_t nkv, int64_t T)
{
    rope_ctx c;
    c.T = T, c.nh = nh, c.nkv = nkv;
    int64_t ld = (int64_t)(nh + 2 * nkv) * 256;
    c.qkv = rand_dev(T * ld, 1.0f, 50);
    int64_t blocks = (T + 15) / 16 + 1;
    CU(cudaMalloc(&c.kp, (size_t)(blocks * nkv * 16 * 256 * 2)));
    CU(cudaMalloc(&c.vp, (size_t)(blocks * nkv * 16 * 256 * 2)));
    float inv[128];
    k_rope_inv_freq(10000.0f, 256, inv);
    CU(cudaMalloc((void **)&c.inv, sizeof inv));
    CU(cudaMemcpy(c.inv, inv, sizeof inv, cudaMemcpyHostToDevice));
    int32_t *pos = malloc((size_t)T * 4);
    for (int64_t i = 0; i < T; i++)
        pos[i] = (int32_t)i;
    CU(cudaMalloc((void **)&c.pos, (size_t)T * 4));
    CU(cudaMalloc((void **)&c.slot, (size_t)T * 4));
    CU(cudaMemcpy(c.pos, pos, (size_t)T * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(c.slot, pos, (size_t)T * 4, cudaMemcpyHostToDevice));
    free(pos);
    double us = time_us(run_rope, &c, 20);
    char name[96];
    snprintf(name, sizeof name, "rope+kv %s T=%lld", model, (long long)T);
    report_bw(name, us, (double)T * ((nh + nkv) * 256 * 2 * 2 + nkv * 256 * 2 * 2 + nkv * 256 * 2 * 2 / 2));
    cudaFree(c.qkv), cudaFree(c.kp), cudaFree(c.vp), cudaFree(c.inv), cudaFree(c.pos), cudaFree(c.slot);
}

/* ---------------------------------------------------------------- attention */

typedef struct attn_ctx {
    void *q, *kp, *vp, *out, *scratch;
    int32_t *bt, *ctx, *qs, *nn, *sp;
    int32_t B, nh, nkv, max_blocks, n_split, max_new;
    int prefill; /* 1: prefill attention; 2: decode over an FP8 e4m3 pool (k_attn_decode_fp8) */
} attn_ctx;

static void run_attn(void *p, int rep)
{
    attn_ctx *c = p;
    int64_t qw = (int64_t)c->nh * 256;
    const k_attn_opts ao = {0.0625f, 0.0f, 0}; /* Gemma 1 */
    if (c->prefill == 2)
        GOK(k_attn_decode_fp8(c->q, qw, c->B, c->nh, c->nkv, 256, c->kp, c->vp, 16, c->bt, c->max_blocks, c->ctx,
                              &ao, 0.01f, c->n_split, c->scratch, c->out, qw, NULL, NULL, g_s));
    else if (c->prefill)
        GOK(k_attn_prefill(c->q, qw, c->B, c->qs, c->nn, c->sp, c->max_new, c->nh, c->nkv, 256, c->kp, c->vp, 16,
                           c->bt, c->max_blocks, 0.0625f, c->out, qw, g_s));
    else
        GOK(k_attn_decode(c->q, qw, c->B, c->nh, c->nkv, 256, c->kp, c->vp, 16, c->bt, c->max_blocks, c->ctx,
                          &ao, c->n_split, c->scratch, c->out, qw, g_s));
}

static void bench_attn(const char *model, int32_t nh, int32_t nkv, int32_t B, int32_t ctx_len, int prefill,
                       int n_sm)
{
    attn_ctx c;
    memset(&c, 0, sizeof c);
    c.B = B, c.nh = nh, c.nkv = nkv, c.prefill = prefill;
    c.max_blocks = (ctx_len + 15) / 16;
    int64_t blocks = (int64_t)B * c.max_blocks;
    int64_t kv_elems = blocks * nkv * 16 * 256;
    int fp8 = prefill == 2;
    if (fp8) { /* e4m3 codes: 0x38 is 1.0 (timing only) */
        CU(cudaMalloc(&c.kp, (size_t)kv_elems));
        CU(cudaMalloc(&c.vp, (size_t)kv_elems));
        CU(cudaMemset(c.kp, 0x38, (size_t)kv_elems));
        CU(cudaMemset(c.vp, 0x30, (size_t)kv_elems));
        prefill = 0;
    } else {
        c.kp = rand_dev(kv_elems, 1.0f, 60);
        c.vp = rand_dev(kv_elems, 1.0f, 61);
    }
    int64_t T = prefill ? (int64_t)B * ctx_len : B;
    c.q = rand_dev(T * nh * 256, 1.0f, 62);
    CU(cudaMalloc(&c.out, (size_t)(T * nh * 256 * 2)));
    int32_t *bt = malloc((size_t)blocks * 4), *cl = malloc((size_t)B * 4), *qs = malloc((size_t)B * 4),
            *nn = malloc((size_t)B * 4), *sp = malloc((size_t)B * 4);
    for (int64_t i = 0; i < blocks; i++)
        bt[i] = (int32_t)((i * 40503) % blocks); /* scattered blocks */
    for (int32_t i = 0; i < B; i++)
        cl[i] = ctx_len, qs[i] = prefill ? i * ctx_len : i, nn[i] = prefill ? ctx_len : 1, sp[i] = 0;
    CU(cudaMalloc((void **)&c.bt, (size_t)blocks * 4));
    CU(cudaMemcpy(c.bt, bt, (size_t)blocks * 4, cudaMemcpyHostToDevice));
    int32_t **dst[4] = {&c.ctx, &c.qs, &c.nn, &c.sp};
    int32_t *src[4] = {cl, qs, nn, sp};
    for (int i = 0; i < 4; i++) {
        CU(cudaMalloc((void **)dst[i], (size_t)B * 4));
        CU(cudaMemcpy(*dst[i], src[i], (size_t)B * 4, cudaMemcpyHostToDevice));
    }
    c.max_new = ctx_len;
    c.n_split = k_attn_decode_splits(B, nkv, 8192, n_sm);
    size_t sb = k_attn_decode_scratch_bytes(B, nh, nkv, 256, c.n_split);
    CU(cudaMalloc(&c.scratch, sb));
    CU(cudaMemset(c.scratch, 0, sb));
    double us = time_us(run_attn, &c, prefill ? 3 : 20);
    char name[96];
    if (prefill) {
        snprintf(name, sizeof name, "prefill attn %s B=%d T=%d", model, B, ctx_len);
        double flops = 4.0 * B * (double)ctx_len * (ctx_len + 1) / 2.0 * 256.0 * nh;
        report_fl(name, us, flops, (double)kv_elems * 4 + (double)T * nh * 256 * 4);
    } else {
        snprintf(name, sizeof name, "decode attn%s %s B=%d ctx=%d split=%d", fp8 ? " fp8" : "", model, B, ctx_len,
                 c.n_split);
        report_bw(name, us, (double)kv_elems * (fp8 ? 2 : 4) + (double)B * nh * 256 * 4);
    }
    free(bt), free(cl), free(qs), free(nn), free(sp);
    cudaFree(c.q), cudaFree(c.kp), cudaFree(c.vp), cudaFree(c.out), cudaFree(c.scratch), cudaFree(c.bt);
    cudaFree(c.ctx), cudaFree(c.qs), cudaFree(c.nn), cudaFree(c.sp);
}

/* ---------------------------------------------------------------- sampling */

typedef struct smp_ctx {
    float *lg;
    gm_sampling *p;
    uint64_t *ctr;
    int32_t *tok;
    int32_t n;
} smp_ctx;

static void run_smp(void *p, int rep)
{
    smp_ctx *c = p;
    GOK(k_sample(c->lg, 256000, 256000, c->n, c->p, c->ctr, c->tok, g_s));
}

static void bench_sample(const char *name, int32_t n, gm_sampling sp)
{
    smp_ctx c;
    c.n = n;
    int64_t V = 256000;
    float *h = malloc((size_t)(n * V) * 4);
    uint64_t r = 99;
    for (int64_t i = 0; i < n * V; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = ((float)(r >> 40) / 16777216.0f - 0.5f) * 20.0f;
    }
    CU(cudaMalloc((void **)&c.lg, (size_t)(n * V) * 4));
    CU(cudaMemcpy(c.lg, h, (size_t)(n * V) * 4, cudaMemcpyHostToDevice));
    free(h);
    gm_sampling *ps = malloc((size_t)n * sizeof *ps);
    uint64_t *ct = malloc((size_t)n * 8);
    for (int32_t i = 0; i < n; i++)
        ps[i] = sp, ct[i] = (uint64_t)i;
    CU(cudaMalloc((void **)&c.p, (size_t)n * sizeof *ps));
    CU(cudaMalloc((void **)&c.ctr, (size_t)n * 8));
    CU(cudaMalloc((void **)&c.tok, (size_t)n * 4));
    CU(cudaMemcpy(c.p, ps, (size_t)n * sizeof *ps, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(c.ctr, ct, (size_t)n * 8, cudaMemcpyHostToDevice));
    free(ps), free(ct);
    double us = time_us(run_smp, &c, 10);
    report_bw(name, us, (double)n * V * 4);
    cudaFree(c.lg), cudaFree(c.p), cudaFree(c.ctr), cudaFree(c.tok);
}

int main(int argc, char **argv)
{
    const char *csv = NULL;
    int quick = 0, only_attn = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: bench_kernels [--csv FILE] [--quick] [--attn]\n"
                   "CUDA kernel micro-benchmarks at gemma-2b/7b shapes beside the measured ceilings.\n"
                   "  --attn   the ceilings and the attention kernels only\n");
            return 0;
        } else if (!strcmp(argv[i], "--attn")) {
            only_attn = 1;
        } else if (!strcmp(argv[i], "--csv") && i + 1 < argc) {
            csv = argv[++i];
        } else if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else {
            fprintf(stderr, "bench_kernels: unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        fprintf(stderr, "bench_kernels: no CUDA device\n");
        return 1;
    }
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    if (csv)
        g_csv = fopen(csv, "w");
    CU(cudaStreamCreate(&g_s));
    k_gemm_ctx *g = NULL;
    GOK(k_gemm_ctx_new(0, &g));
    ceilings(g);
    if (only_attn)
        goto attention;

    /* decode-sized products: GEMV vs cuBLASLt; then batched (prefill-sized) */
    struct {
        const char *m, *op;
        int64_t K, N;
        int f32;
    } shapes[] = {
        {"2b", "qkv", 2048, 2560, 0},   {"2b", "o", 2048, 2048, 0},   {"2b", "gate_up", 2048, 32768, 0},
        {"2b", "down", 16384, 2048, 0}, {"2b", "lm_head", 2048, 256000, 1}, {"7b", "qkv", 3072, 12288, 0},
        {"7b", "o", 4096, 3072, 0},     {"7b", "gate_up", 3072, 49152, 0},  {"7b", "down", 24576, 3072, 0},
        {"7b", "lm_head", 3072, 256000, 1},
    };
    int64_t small_t[] = {1, 2, 4, 8};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t ti = 0; ti < (quick ? 1 : sizeof small_t / sizeof small_t[0]); ti++) {
            bench_gemm(g, shapes[s].m, shapes[s].op, small_t[ti], shapes[s].K, shapes[s].N, shapes[s].f32, 2);
            bench_gemm(g, shapes[s].m, shapes[s].op, small_t[ti], shapes[s].K, shapes[s].N, shapes[s].f32, 1);
            if (!strcmp(shapes[s].op, "gate_up"))
                bench_gemm(g, shapes[s].m, shapes[s].op, small_t[ti], shapes[s].K, shapes[s].N, 0, 3);
        }
    printf("\n");
    int64_t big_t[] = {64, 256, 2048};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t ti = 0; ti < sizeof big_t / sizeof big_t[0]; ti++)
            if (!(shapes[s].N == 256000 && big_t[ti] > 256))
                bench_gemm(g, shapes[s].m, shapes[s].op, big_t[ti], shapes[s].K, shapes[s].N, shapes[s].f32, 1);
    printf("\n");
    bench_ew("rmsnorm 2b T=2048", 0, 2048, 2048);
    bench_ew("add+rmsnorm 7b T=2048", 1, 2048, 3072);
    bench_ew("add+rmsnorm 7b T=1", 1, 1, 3072);
    bench_ew("geglu 2b T=2048", 2, 2048, 16384);
    bench_ew("geglu 7b T=1", 2, 1, 24576);
    bench_ew("embed 7b T=2048", 3, 2048, 3072);
    bench_rope("2b", 8, 1, 2048);
    bench_rope("7b", 16, 16, 2048);
    bench_rope("7b", 16, 16, 1);
    printf("\n");
attention:;
    int32_t ctxs[] = {1024, 4096, 8192};
    int32_t bs_[] = {1, 8, 64};
    for (int m = 0; m < 2; m++)
        for (size_t ci = 0; ci < 3; ci++)
            for (size_t bi = 0; bi < 3; bi++)
                bench_attn(m ? "7b" : "2b", m ? 16 : 8, m ? 16 : 1, bs_[bi], ctxs[ci], 0, prop.multiProcessorCount);
    for (int m = 0; m < 2; m++) /* FP8 KV: k_attn_decode_fp8 (XQA is in xqa_bench) */
        for (int bi = 0; bi < 3; bi++)
            for (int ci = 0; ci < 3; ci++)
                bench_attn(m ? "7b" : "2b", m ? 16 : 8, m ? 16 : 1, bs_[bi], ctxs[ci], 2, prop.multiProcessorCount);
    bench_attn("2b", 8, 1, 1, 2048, 1, prop.multiProcessorCount);
    bench_attn("7b", 16, 16, 1, 2048, 1, prop.multiProcessorCount);
    bench_attn("7b", 16, 16, 1, 8192, 1, prop.multiProcessorCount);
    printf("\n");
    if (only_attn)
        goto done;
    bench_sample("sample greedy B=1 V=256000", 1, GM_SAMPLING_GREEDY);
    bench_sample("sample greedy B=64", 64, GM_SAMPLING_GREEDY);
    bench_sample("sample T=0.8 top-k 50 B=1", 1, (gm_sampling){0.8f, 50, 1.0f, 1});
    bench_sample("sample T=1 top-p 0.9 B=1", 1, (gm_sampling){1.0f, 0, 0.9f, 1});
    bench_sample("sample T=1 top-k 50 top-p 0.9 B=64", 64, (gm_sampling){1.0f, 50, 0.9f, 1});
done:
    k_gemm_ctx_destroy(&g);
    if (g_csv)
        fclose(g_csv);
    return 0;
}
