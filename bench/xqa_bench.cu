/* xqa_bench.cu - XQA decode attention bandwidth at Gemma's shapes, beside the ceiling.
 *
 * For each model (2b: 8 q heads over 1 KV head; 7b: 16 over 16), KV dtype (bf16, fp8), batch and
 * context, every sequence at the same length: achieved bandwidth = KV bytes read (seq_len * n_kv *
 * 256 * 2 (K and V) * elem bytes per sequence) / time, beside 4.2 TB/s (H200 device copy; the copy
 * measured in this run is printed too). The bf16 cases also time the engine's generic decode
 * kernel (k_attn_decode) on the same cache as the peer. Pools are filled on the device with random
 * values; block tables are shuffled; launches rotate over enough sequences to exceed the L2 cache.
 * Timing: CUDA events around `reps` launches after warm-up, median of 5 groups, with the split count
 * k_xqa_pick_sub_seq gives (--sweep: every split count too).
 *
 *   xqa_bench [--models 2b,7b] [--kv bf16,fp8] [--batch 1,64,256] [--ctx 1024,4096,8192]
 *             [--q-len 1] [--block 32] [--sweep] [--csv FILE] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/status.h"
#include "kernels/cuda/attn_decode.cuh"

#define BENCH_NAME "xqa_bench"
#include "bench/bench_check.h"

#define CEIL_GBS 4200.0 /* H200 device copy (bench/history/NOTES.md: 4222-4280 GB/s measured) */

/* Random fill: bf16 in [-1, 1) (fp8 = 0: n halves) or e4m3 codes with |v| in [2^-3, 2^4] (bytes). */
__global__ void fill_kernel(uint8_t *p, int64_t nbytes, uint64_t seed, int fp8)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nbytes / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t h = (uint64_t)i * 0x9e3779b97f4a7c15ull + seed;
        h ^= h >> 29;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 32;
        uint32_t r = (uint32_t)h, v;
        if (fp8) {
            v = 0;
            for (int k = 0; k < 4; k++) {
                uint32_t b = (r >> (8 * k)) & 0xff;
                b = (b & 0x87) | ((4 + ((b >> 3) & 7)) << 3); /* exponent 4..11 */
                if ((b & 0x7f) == 0x7f)
                    b ^= 1;
                v |= b << (8 * k);
            }
        } else { /* two bf16: sign, exponent 120..127, mantissa */
            uint32_t lo = (r & 0x807f) | ((120 + ((r >> 7) & 7)) << 7);
            uint32_t hi = ((r >> 16) & 0x807f) | ((120 + ((r >> 23) & 7)) << 7);
            v = (lo & 0xffff) | (hi << 16);
        }
        reinterpret_cast<uint32_t *>(p)[i] = v;
    }
}

static void fill(void *p, size_t bytes, uint64_t seed, int fp8)
{
    fill_kernel<<<132 * 16, 256>>>((uint8_t *)p, (int64_t)bytes, seed, fp8);
    CU(cudaGetLastError());
}

typedef void (*run_fn)(void *ctx, int rep);

static double time_us(run_fn f, void *ctx, int reps) { return bench_time_us(f, ctx, reps); }

typedef struct bctx {
    k_xqa_params p;
    int32_t *bt_all; /* [n_rot][batch][bt_stride] device */
    int32_t n_rot, bt_stride;
    /* peer */
    void *dscratch;
    int32_t n_split;
} bctx;

static void run_xqa(void *c_, int rep)
{
    bctx *c = (bctx *)c_;
    k_xqa_params p = c->p;
    p.block_tables = c->bt_all + (int64_t)(rep % c->n_rot) * p.batch * c->bt_stride;
    GOK(k_attn_decode_xqa(&p, 0));
}

static void run_peer(void *c_, int rep)
{
    bctx *c = (bctx *)c_;
    const k_xqa_params *p = &c->p;
    const k_attn_opts ao = {p->scale, p->softcap, p->window};
    GOK(k_attn_decode(p->q, p->ldq, p->batch, p->n_heads, p->n_kv, p->head_dim, p->k_pool, p->v_pool, p->block_size,
                      c->bt_all + (int64_t)(rep % c->n_rot) * p->batch * c->bt_stride, c->bt_stride, p->seq_lens,
                      &ao, c->n_split, c->dscratch, p->out, p->ldo, 0));
}

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

static void usage(void)
{
    printf("usage: xqa_bench [--models 2b,7b] [--kv bf16,fp8] [--batch 1,64,256] [--ctx 1024,4096,8192]\n"
           "                 [--q-len N] [--block N] [--sweep] [--csv FILE]\n"
           "Decode-attention bandwidth (KV bytes read / time) of k_attn_decode_xqa beside 4.2 TB/s, and of\n"
           "k_attn_decode (bf16) as the peer. --sweep also tries every split count and prints the best.\n");
}

int main(int argc, char **argv)
{
    const char *models = "2b,7b", *kvs = "bf16,fp8", *csv_path = NULL;
    int batches[16], ctxs[16], nbat = 0, nctx = 0, q_len = 1, bs = 32, sweep = 0;
    nbat = parse_list("1,64,256", batches, 16);
    nctx = parse_list("1024,4096,8192", ctxs, 16);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--sweep")) {
            sweep = 1;
        } else if (v && !strcmp(a, "--models")) {
            models = v, i++;
        } else if (v && !strcmp(a, "--kv")) {
            kvs = v, i++;
        } else if (v && !strcmp(a, "--batch")) {
            nbat = parse_list(v, batches, 16), i++;
        } else if (v && !strcmp(a, "--ctx")) {
            nctx = parse_list(v, ctxs, 16), i++;
        } else if (v && !strcmp(a, "--q-len")) {
            q_len = atoi(v), i++;
        } else if (v && !strcmp(a, "--block")) {
            bs = atoi(v), i++;
        } else if (v && !strcmp(a, "--csv")) {
            csv_path = v, i++;
        } else {
            fprintf(stderr, "xqa_bench: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (q_len < 1 || q_len > 4 || bs < 1) {
        fprintf(stderr, "xqa_bench: --q-len must be 1..4 and --block >= 1\n");
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "xqa_bench: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv)
        fprintf(csv, "kernel,model,kv,batch,ctx,q_len,block,nb,us,gbs,pct\n");
    double cp = bench_copy_gbs((size_t)2 << 30);
    printf("device %s, %d SMs; device copy %.0f GB/s (read+write); ceiling used: %.0f GB/s\n", prop.name,
           prop.multiProcessorCount, cp, CEIL_GBS);
    printf("%-7s %-3s %-4s %5s %5s %2s %3s | %9s %8s %6s | %s\n", "kernel", "mdl", "kv", "B", "ctx", "q", "nb", "us",
           "GB/s", "%ceil", "smem, resident CTAs");

    for (int mi = 0; mi < 2; mi++) {
        const char *mname = mi == 0 ? "2b" : "7b";
        if (!strstr(models, mname))
            continue;
        int nh = mi == 0 ? 8 : 16, nkv = mi == 0 ? 1 : 16, hd = 256;
        for (int ki = 0; ki < 2; ki++) {
            int fp8 = ki == 1;
            if (!strstr(kvs, fp8 ? "fp8" : "bf16"))
                continue;
            size_t es = fp8 ? 1 : 2;
            for (int bi = 0; bi < nbat; bi++)
                for (int ci = 0; ci < nctx; ci++) {
                    int B = batches[bi], ctx = ctxs[ci];
                    int max_blocks = (ctx + bs - 1) / bs;
                    size_t seq_bytes = (size_t)max_blocks * bs * nkv * hd * es; /* K (or V) of one sequence */
                    double kv_bytes = 2.0 * (double)B * ctx * nkv * hd * es;
                    int n_rot = (int)ceil(512e6 / (2.0 * B * seq_bytes));
                    if (n_rot < 1)
                        n_rot = 1;
                    if (n_rot > 64)
                        n_rot = 64;
                    int64_t nseq = (int64_t)B * n_rot;
                    size_t pool = (size_t)nseq * seq_bytes;
                    size_t free_b, total_b;
                    CU(cudaMemGetInfo(&free_b, &total_b));
                    if (2 * pool + ((size_t)1 << 30) > free_b) {
                        printf("skip %s %s B=%d ctx=%d: pools need %.1f GB, %.1f GB free\n", mname, fp8 ? "fp8" : "bf16",
                               B, ctx, 2.0 * pool / 1e9, free_b / 1e9);
                        continue;
                    }
                    bctx c;
                    memset(&c, 0, sizeof c);
                    void *kp, *vp, *q, *out;
                    CU(cudaMalloc(&kp, pool));
                    CU(cudaMalloc(&vp, pool));
                    fill(kp, pool, 11, fp8);
                    fill(vp, pool, 12, fp8);
                    size_t qbytes = (size_t)B * q_len * nh * hd * 2;
                    CU(cudaMalloc(&q, qbytes));
                    CU(cudaMalloc(&out, qbytes));
                    fill(q, qbytes, 13, 0);
                    /* block tables: sequence s owns blocks [s*max_blocks, ...), shuffled within the pool */
                    int64_t nblk = nseq * max_blocks;
                    int32_t *perm = (int32_t *)malloc(nblk * sizeof(int32_t));
                    for (int64_t i = 0; i < nblk; i++)
                        perm[i] = (int32_t)i;
                    uint64_t r = 7;
                    for (int64_t i = nblk - 1; i > 0; i--) {
                        r = r * 6364136223846793005ull + 1442695040888963407ull;
                        int64_t j = (int64_t)((r >> 33) % (uint64_t)(i + 1));
                        int32_t t = perm[i];
                        perm[i] = perm[j];
                        perm[j] = t;
                    }
                    CU(cudaMalloc(&c.bt_all, nblk * sizeof(int32_t)));
                    CU(cudaMemcpy(c.bt_all, perm, nblk * sizeof(int32_t), cudaMemcpyHostToDevice));
                    free(perm);
                    int32_t *lens_h = (int32_t *)malloc(B * sizeof(int32_t)), *lens;
                    for (int b = 0; b < B; b++)
                        lens_h[b] = ctx;
                    CU(cudaMalloc(&lens, B * sizeof(int32_t)));
                    CU(cudaMemcpy(lens, lens_h, B * sizeof(int32_t), cudaMemcpyHostToDevice));
                    free(lens_h);
                    c.n_rot = n_rot;
                    c.bt_stride = max_blocks;
                    k_xqa_params *p = &c.p;
                    p->q = q, p->ldq = (int64_t)nh * hd, p->out = out, p->ldo = (int64_t)nh * hd;
                    p->k_pool = kp, p->v_pool = vp, p->kv_type = fp8 ? XQA_KV_FP8 : XQA_KV_BF16;
                    p->bt_stride = max_blocks, p->seq_lens = lens;
                    p->batch = B, p->q_len = q_len, p->n_heads = nh, p->n_kv = nkv, p->head_dim = hd;
                    p->block_size = bs, p->scale = 0.0625f, p->kv_scale = 0.01f;
                    int maxnb = 128, pick = k_xqa_pick_sub_seq(p, ctx, prop.multiProcessorCount);
                    maxnb = pick > maxnb ? pick : maxnb;
                    size_t sbytes = k_xqa_scratch_bytes(B, nkv, nh, q_len, hd, maxnb);
                    void *scr;
                    CU(cudaMalloc(&scr, sbytes));
                    CU(cudaMemset(scr, 0, sbytes));
                    p->scratch = scr, p->scratch_bytes = sbytes;
                    int reps = (int)(20e-3 / (kv_bytes / (CEIL_GBS * 1e9))); /* ~20 ms per group */
                    if (reps < 3)
                        reps = 3;
                    if (reps > 2000)
                        reps = 2000;
                    {
                        const char *kname = "xqa";
                        int cand[12] = {pick, 1, 2, 4, 8, 16, 32, 64, 128}, ncand = sweep ? 9 : 1;
                        double best_us = 1e30;
                        int best_nb = pick;
                        for (int k = 0; k < ncand; k++) {
                            int nb = cand[k];
                            if (k > 0 && (nb == pick || nb > (ctx + XQA_TILE - 1) / XQA_TILE))
                                continue;
                            p->nb_sub_seq = nb;
                            double us = time_us(run_xqa, &c, reps);
                            double gbs = kv_bytes / (us * 1e-6) / 1e9;
                            if (k == 0 || sweep)
                                printf("%-7s %-3s %-4s %5d %5d %2d %3d | %9.1f %8.0f %5.1f%% | %d B, %d CTA/SM%s\n",
                                       kname, mname, fp8 ? "fp8" : "bf16", B, ctx, q_len, nb, us, gbs,
                                       100.0 * gbs / CEIL_GBS, k_xqa_smem_bytes(hd, nh / nkv * q_len, fp8),
                                       k_xqa_ctas_per_sm(p), k == 0 ? " (picked)" : "");
                            if (csv)
                                fprintf(csv, "xqa,%s,%s,%d,%d,%d,%d,%d,%.2f,%.1f,%.2f\n", mname,
                                        fp8 ? "fp8" : "bf16", B, ctx, q_len, bs, nb, us, gbs, 100.0 * gbs / CEIL_GBS);
                            if (us < best_us)
                                best_us = us, best_nb = nb;
                        }
                        if (sweep)
                            printf("%-7s %-3s %-4s %5d %5d %2d %3d | %9.1f %8.0f %5.1f%% | best of sweep\n", kname,
                                   mname, fp8 ? "fp8" : "bf16", B, ctx, q_len, best_nb, best_us,
                                   kv_bytes / (best_us * 1e-6) / 1e9,
                                   100.0 * kv_bytes / (best_us * 1e-6) / 1e9 / CEIL_GBS);
                    }
                    if (!fp8 && q_len == 1) { /* the peer: the engine's generic decode kernel */
                        c.n_split = k_attn_decode_splits(B, nkv, ctx, prop.multiProcessorCount);
                        size_t pb = k_attn_decode_scratch_bytes(B, nh, nkv, hd, c.n_split);
                        CU(cudaMalloc(&c.dscratch, pb ? pb : 16));
                        CU(cudaMemset(c.dscratch, 0, pb ? pb : 16));
                        double us = time_us(run_peer, &c, reps);
                        double gbs = kv_bytes / (us * 1e-6) / 1e9;
                        printf("%-7s %-3s %-4s %5d %5d %2d %3d | %9.1f %8.0f %5.1f%% | k_attn_decode (peer)\n", "peer",
                               mname, "bf16", B, ctx, q_len, c.n_split, us, gbs, 100.0 * gbs / CEIL_GBS);
                        if (csv)
                            fprintf(csv, "attn_decode,%s,bf16,%d,%d,1,%d,%d,%.2f,%.1f,%.2f\n", mname, B, ctx, bs,
                                    c.n_split, us, gbs, 100.0 * gbs / CEIL_GBS);
                        cudaFree(c.dscratch);
                    }
                    fflush(stdout);
                    cudaFree(kp), cudaFree(vp), cudaFree(q), cudaFree(out), cudaFree(c.bt_all), cudaFree(lens);
                    cudaFree(scr);
                }
        }
    }
    if (csv)
        fclose(csv);
    return 0;
}
