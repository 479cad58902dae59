/* prefill_bench.cu - causal prefill attention TFLOP/s at Gemma's shapes: the Hopper kernel
 * (k_attn_prefill_hopper: wgmma, TMA, warp specialisation) beside the mma.sync kernel
 * (k_attn_prefill_kv) on the same paged cache, in one run on one card.
 *
 * Shapes: models 2b (8 query heads over 1 KV head) and 7b (16 over 16), head_dim 256, prompt
 * lengths T, batch = max(1, tokens / T) sequences of T tokens each (start 0), block size 16 with
 * shuffled block tables, bf16 or e4m3 pools. FLOPs = batch * 4 * T^2 * head_dim * heads / 2 (QK^T
 * and PV, causal half) - the FlashAttention papers' count, the same one bench/sdpa_peer.py uses.
 * Timing: CUDA events around each launch after 3 warm-ups, median of --reps launches. Inputs are
 * random (never zeros). Each shape also prints the normalized difference between the two kernels'
 * outputs (a sanity check only; tests/test_gpu_prefill_hopper.c is the correctness test).
 *
 * Output: one CSV line per kernel and shape (prefix "prefill,"; header line "prefill,kernel,...")
 * for joining with bench/sdpa_peer.py, then a table.
 * kv: bf16, fp8 (e4m3 pool; the Hopper kernel on f16 tensor cores after an exact conversion), e4m3 (the
 * same pool, the Hopper kernel on e4m3 tensor cores: q and P rounded to e4m3; its check_nerr is against the
 * mma.sync kernel's exact-KV output, so a few percent).
 *   prefill_bench [--T 1024,2048,4096,8192] [--models 2b,7b] [--kv bf16,fp8,e4m3] [--tokens 16384]
 *                 [--reps 20] [--kernels hopper,mma] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "common/status.h"
#include "kernels/cuda/attn_prefill.cuh"
#include "kernels/cuda/attn_prefill_hopper.cuh"

#define BENCH_NAME "prefill_bench"
#include "bench/bench_check.h"

#define PB_HD 256
#define PB_BS 16
#define PB_MAX_LIST 16

/* Pseudo-random bytes of a given kind: bf16 in (-1, 1) or e4m3 codes of magnitude 2^-4 .. 2^3. */
__global__ void pb_fill(uint16_t *p, int64_t n16, uint32_t seed, int e4m3)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n16; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 15;
        x *= 0x2c1b3c6du;
        x ^= x >> 12;
        if (e4m3) { /* two codes: sign, exponent 3..10, mantissa */
            uint32_t a = (x & 0x87u) | ((3u + ((x >> 3) & 7u)) << 3);
            uint32_t b = ((x >> 8) & 0x87u) | ((3u + ((x >> 11) & 7u)) << 3);
            p[i] = (uint16_t)(a | (b << 8));
        } else {
            float f = (float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
            __nv_bfloat16 h = __float2bfloat16_rn(f);
            p[i] = *reinterpret_cast<uint16_t *>(&h);
        }
    }
}

static void fill_dev(void *p, size_t bytes, uint32_t seed, int e4m3)
{
    pb_fill<<<132 * 8, 256>>>((uint16_t *)p, (int64_t)(bytes / 2), seed, e4m3);
    CU(cudaGetLastError());
}

/* Comma-separated list of positive integers or names into out (returns the count). */
static int parse_list(const char *s, char out[][16], int max)
{
    int n = 0;
    while (*s && n < max) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len >= 16)
            len = 15;
        memcpy(out[n], s, len);
        out[n++][len] = 0;
        s = e ? e + 1 : s + len;
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct pb_shape {
    const char *model;
    int32_t nh, nkv, T, batch, fp8, mma8; /* mma8: the Hopper kernel on e4m3 tensor cores (kv "e4m3") */
} pb_shape;

typedef struct pb_bufs {
    void *q, *k, *v, *out, *out_ref;
    int32_t *bt, *q_start, *n_new, *start;
    int32_t pool_blocks, bt_stride;
} pb_bufs;

static void bufs_make(const pb_shape *s, pb_bufs *b)
{
    const int64_t tokens = (int64_t)s->batch * s->T, qw = (int64_t)s->nh * PB_HD;
    b->bt_stride = (s->T + PB_BS - 1) / PB_BS;
    b->pool_blocks = s->batch * b->bt_stride;
    const size_t kv_bytes = (size_t)b->pool_blocks * s->nkv * PB_BS * PB_HD * (s->fp8 ? 1 : 2);
    CU(cudaMalloc(&b->q, (size_t)tokens * qw * 2));
    CU(cudaMalloc(&b->out, (size_t)tokens * qw * 2));
    CU(cudaMalloc(&b->out_ref, (size_t)tokens * qw * 2));
    CU(cudaMalloc(&b->k, kv_bytes));
    CU(cudaMalloc(&b->v, kv_bytes));
    fill_dev(b->q, (size_t)tokens * qw * 2, 0x1234u + (uint32_t)s->T, 0);
    fill_dev(b->k, kv_bytes, 0x5678u + (uint32_t)s->T, s->fp8);
    fill_dev(b->v, kv_bytes, 0x9abcu + (uint32_t)s->T, s->fp8);
    /* shuffled block tables over the whole pool */
    int32_t *perm = (int32_t *)malloc((size_t)b->pool_blocks * 4), *h = (int32_t *)malloc((size_t)s->batch * 4 * 3);
    if (!perm || !h) {
        fprintf(stderr, BENCH_NAME ": out of host memory\n");
        exit(1);
    }
    uint64_t r = 88172645463325252ull;
    for (int32_t i = 0; i < b->pool_blocks; i++)
        perm[i] = i;
    for (int32_t i = b->pool_blocks - 1; i > 0; i--) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int32_t j = (int32_t)(r % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    CU(cudaMalloc(&b->bt, (size_t)b->pool_blocks * 4));
    CU(cudaMemcpy(b->bt, perm, (size_t)b->pool_blocks * 4, cudaMemcpyHostToDevice));
    for (int32_t i = 0; i < s->batch; i++)
        h[i] = i * s->T, h[s->batch + i] = s->T, h[2 * s->batch + i] = 0;
    CU(cudaMalloc(&b->q_start, (size_t)s->batch * 4 * 3));
    CU(cudaMemcpy(b->q_start, h, (size_t)s->batch * 4 * 3, cudaMemcpyHostToDevice));
    b->n_new = b->q_start + s->batch;
    b->start = b->q_start + 2 * s->batch;
    free(perm);
    free(h);
}

static void bufs_free(pb_bufs *b)
{
    CU(cudaFree(b->q));
    CU(cudaFree(b->out));
    CU(cudaFree(b->out_ref));
    CU(cudaFree(b->k));
    CU(cudaFree(b->v));
    CU(cudaFree(b->bt));
    CU(cudaFree(b->q_start));
}

/* One launch of kernel `which` (0 hopper, 1 mma.sync) into out. */
static void launch(int which, const pb_shape *s, const pb_bufs *b, void *out)
{
    const int64_t qw = (int64_t)s->nh * PB_HD, tokens = (int64_t)s->batch * s->T;
    const float scale = 1.0f / 16.0f, kvs = s->fp8 ? 0.05f : 1.0f;
    if (which == 0) {
        k_prefill_opts o = {scale, 0.0f, 0, s->fp8, kvs, s->mma8};
        GOK(k_attn_prefill_hopper(b->q, qw, tokens, s->batch, b->q_start, b->n_new, b->start, s->T, s->nh, s->nkv,
                                  PB_HD, b->k, b->v, PB_BS, b->pool_blocks, b->bt, b->bt_stride, &o, out, qw, 0));
    } else {
        const k_attn_opts ao = {scale, 0.0f, 0};
        GOK(k_attn_prefill_kv(b->q, qw, s->batch, b->q_start, b->n_new, b->start, s->T, s->nh, s->nkv, PB_HD, b->k,
                              b->v, PB_BS, b->bt, b->bt_stride, &ao, out, qw, s->fp8, kvs, 0));
    }
    CU(cudaGetLastError());
}

/* Median microseconds of reps launches (events around each, after 3 warm-ups). */
static double time_kernel(int which, const pb_shape *s, const pb_bufs *b, int reps)
{
    cudaEvent_t e[2];
    CU(cudaEventCreate(&e[0]));
    CU(cudaEventCreate(&e[1]));
    for (int i = 0; i < 3; i++)
        launch(which, s, b, b->out);
    CU(cudaDeviceSynchronize());
    double *t = (double *)malloc((size_t)reps * sizeof(double));
    for (int i = 0; i < reps; i++) {
        CU(cudaEventRecord(e[0], 0));
        launch(which, s, b, b->out);
        CU(cudaEventRecord(e[1], 0));
        CU(cudaEventSynchronize(e[1]));
        float ms;
        CU(cudaEventElapsedTime(&ms, e[0], e[1]));
        t[i] = ms * 1000.0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double med = t[reps / 2];
    free(t);
    CU(cudaEventDestroy(e[0]));
    CU(cudaEventDestroy(e[1]));
    return med;
}

/* ||a - b|| / ||b|| over n bf16 values on the device (NaN: inf). */
static double dev_nerr(const void *a, const void *b, int64_t n)
{
    uint16_t *ha = (uint16_t *)malloc((size_t)n * 2), *hb = (uint16_t *)malloc((size_t)n * 2);
    CU(cudaMemcpy(ha, a, (size_t)n * 2, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hb, b, (size_t)n * 2, cudaMemcpyDeviceToHost));
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t ua = (uint32_t)ha[i] << 16, ub = (uint32_t)hb[i] << 16;
        float fa, fb;
        memcpy(&fa, &ua, 4);
        memcpy(&fb, &ub, 4);
        if (isnan(fa) || isnan(fb)) {
            num = INFINITY;
            break;
        }
        num += ((double)fa - fb) * ((double)fa - fb);
        den += (double)fb * fb;
    }
    free(ha);
    free(hb);
    return sqrt(num / (den > 0.0 ? den : 1e-30));
}

int main(int argc, char **argv)
{
    char Ts[PB_MAX_LIST][16] = {"1024", "2048", "4096", "8192"}, models[PB_MAX_LIST][16] = {"2b", "7b"};
    char kvs[PB_MAX_LIST][16] = {"bf16", "fp8", "e4m3"}, kernels[PB_MAX_LIST][16] = {"hopper", "mma"};
    int nT = 4, nm = 2, nkv = 3, nk = 2, reps = 20;
    int64_t tokens = 16384;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "usage: %s [--T list] [--models 2b,7b] [--kv bf16,fp8,e4m3] [--tokens N] [--reps N] "
                            "[--kernels hopper,mma]\n", argv[0]);
            return 2;
        }
        if (!strcmp(a, "--T"))
            nT = parse_list(v, Ts, PB_MAX_LIST);
        else if (!strcmp(a, "--models"))
            nm = parse_list(v, models, PB_MAX_LIST);
        else if (!strcmp(a, "--kv"))
            nkv = parse_list(v, kvs, PB_MAX_LIST);
        else if (!strcmp(a, "--kernels"))
            nk = parse_list(v, kernels, PB_MAX_LIST);
        else if (!strcmp(a, "--tokens"))
            tokens = atoll(v);
        else if (!strcmp(a, "--reps"))
            reps = atoi(v);
        else {
            fprintf(stderr, BENCH_NAME ": unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (reps < 1 || tokens < 1) {
        fprintf(stderr, BENCH_NAME ": --reps and --tokens must be positive\n");
        return 2;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, BENCH_NAME ": no CUDA device\n");
        return 77;
    }
    for (char *c = prop.name; *c; c++)
        if (*c == ',')
            *c = ' ';
    printf("# %s, %d SMs; FLOPs = batch*4*T^2*hd*heads/2; median of %d launches\n", prop.name,
           prop.multiProcessorCount, reps);
    printf("prefill,kernel,model,kv,T,batch,nh,nkv,hd,us,tflops,device,check_nerr\n");
    char table[8192] = "";
    size_t tl = 0;
    for (int mi = 0; mi < nm; mi++)
        for (int ki = 0; ki < nkv; ki++)
            for (int ti = 0; ti < nT; ti++) {
                pb_shape s;
                s.model = models[mi];
                s.nh = !strcmp(models[mi], "7b") ? 16 : 8;
                s.nkv = !strcmp(models[mi], "7b") ? 16 : 1;
                s.T = atoi(Ts[ti]);
                s.mma8 = !strcmp(kvs[ki], "e4m3");
                s.fp8 = s.mma8 || !strcmp(kvs[ki], "fp8");
                if (s.T < 1) {
                    fprintf(stderr, BENCH_NAME ": bad T %s\n", Ts[ti]);
                    return 2;
                }
                s.batch = (int32_t)(tokens / s.T > 0 ? tokens / s.T : 1);
                pb_bufs b;
                bufs_make(&s, &b);
                const int64_t n_out = (int64_t)s.batch * s.T * s.nh * PB_HD;
                const double flops = (double)s.batch * 4.0 * (double)s.T * s.T * PB_HD * s.nh / 2.0;
                double nerr = NAN;
                const int hop = s.mma8 ? k_attn_prefill_hopper_e4m3_supported(PB_HD, PB_BS)
                                       : k_attn_prefill_hopper_supported(PB_HD, PB_BS, s.fp8);
                if (hop) {
                    launch(0, &s, &b, b.out);
                    launch(1, &s, &b, b.out_ref);
                    CU(cudaDeviceSynchronize());
                    nerr = dev_nerr(b.out, b.out_ref, n_out);
                }
                for (int k = 0; k < nk; k++) {
                    const int which = !strcmp(kernels[k], "mma") ? 1 : 0;
                    if ((which == 0 && !hop) || (which == 1 && s.mma8)) /* e4m3: the mma.sync kernel is fp8's */
                        continue;
                    const double us = time_kernel(which, &s, &b, reps), tf = flops / (us * 1e-6) / 1e12;
                    printf("prefill,%s,%s,%s,%d,%d,%d,%d,%d,%.1f,%.1f,%s,%.2e\n", which ? "mma_sync" : "hopper",
                           s.model, kvs[ki], s.T, s.batch, s.nh, s.nkv, PB_HD, us, tf, prop.name, nerr);
                    fflush(stdout);
                    int w = snprintf(table + tl, sizeof table - tl, "| %-8s | %-2s | %-4s | %5d | %3d | %10.1f | %7.1f |\n",
                                     which ? "mma_sync" : "hopper", s.model, kvs[ki], s.T, s.batch, us, tf);
                    if (w > 0 && (size_t)w < sizeof table - tl)
                        tl += (size_t)w;
                }
                bufs_free(&b);
            }
    printf("\n| kernel   | m  | kv   |     T | bat |    time us | TFLOP/s |\n|---|---|---|---|---|---|---|\n%s", table);
    return 0;
}
