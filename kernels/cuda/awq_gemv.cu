/* awq_gemv.cu - W4A16 GEMV for decode batches (M <= 8), bound by reading the int4 weights.
 *
 * Block: 4 warps on one 64-column tile; warp w takes groups j0 + w, j0 + w + 4, ... of the
 * block's K range. Per k16 step a lane (g = lane / 4, q = lane % 4) reads the packed word
 * of columns n0 + 8g .. 8g+7 in k rows 2q, 2q+1, 2q+8, 2q+9, and feeds 8 n8 tiles: tile t,
 * MMA column c <-> logical column n0 + 8c + t. The accumulator a lane holds (row g = batch
 * row, MMA columns 2q, 2q+1) is then logical columns n0 + 16q + t and n0 + 16q + 8 + t: 16
 * contiguous columns, whose group scales are one 32-byte load. Rows g + 8 of the MMA are
 * padding (x has at most 8 rows). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "awq.cuh"
#include "cuda_check.h"

#define GEMV_WARPS 4
#define GEMV_COLS 64 /* output columns per block */

/* Read-once weights: streaming loads that do not pollute L1. */
__device__ __forceinline__ uint32_t ld_stream(const uint32_t *p) { return __ldcs(p); }

template <int GS>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 4)
    awq_gemv_kernel(const __nv_bfloat16 *__restrict__ x, int M, int ldx, const uint32_t *__restrict__ qw,
                    const uint32_t *__restrict__ qz, const __half *__restrict__ sc, int K, int N, int ldq, int lds,
                    int gps, int splits, __nv_bfloat16 *__restrict__ y, int ldy, float *__restrict__ part,
                    unsigned *__restrict__ counters)
{
    constexpr int STEPS = GS / 16;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int n0 = blockIdx.x * GEMV_COLS, split = blockIdx.y;
    const int G = K / GS, j0 = split * gps, j1 = min(G, j0 + gps);
    const int wcol = n0 / 8 + g; /* the packed column this lane dequantizes */
    const bool xrow = g < M;
    const __nv_bfloat16 *xr = x + (size_t)(xrow ? g : 0) * ldx;

    float acc[8][2]; /* [tile t][c]: batch row g, logical column n0 + 16q + 8c + t */
#pragma unroll
    for (int t = 0; t < 8; t++)
        acc[t][0] = acc[t][1] = 0.0f;

    for (int j = j0 + warp; j < j1; j += GEMV_WARPS) {
        /* the whole group's words first: STEPS * 4 independent loads in flight */
        uint32_t w[STEPS][4];
        const uint32_t *base = qw + (size_t)j * GS * ldq + wcol;
#pragma unroll
        for (int s = 0; s < STEPS; s++)
#pragma unroll
            for (int r = 0; r < 4; r++)
                w[s][r] = ld_stream(base + (size_t)(s * 16 + 2 * q + (r & 1) + (r >> 1) * 8) * ldq);
        const uint32_t zw = __ldg(qz + (size_t)j * ldq + wcol);
        const uint4 sv0 = __ldg(reinterpret_cast<const uint4 *>(sc + (size_t)j * lds + n0 + 16 * q));
        const uint4 sv1 = __ldg(reinterpret_cast<const uint4 *>(sc + (size_t)j * lds + n0 + 16 * q + 8));
        uint32_t zz[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            zz[i] = awq_nib2_bf16(zw >> (4 * i));

        float accg[8][4];
#pragma unroll
        for (int t = 0; t < 8; t++)
            accg[t][0] = accg[t][1] = accg[t][2] = accg[t][3] = 0.0f;
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            const int k = j * GS + s * 16;
            const uint32_t a0 = xrow ? __ldg(reinterpret_cast<const uint32_t *>(xr + k + 2 * q)) : 0u;
            const uint32_t a2 = xrow ? __ldg(reinterpret_cast<const uint32_t *>(xr + k + 2 * q + 8)) : 0u;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint32_t lo[2], hi[2];
                awq_dequant_pair(w[s], i, zz[i], 0u, false, lo, hi);
                awq_mma_bf16(accg[2 * i], a0, 0u, a2, 0u, lo[0], lo[1]);
                awq_mma_bf16(accg[2 * i + 1], a0, 0u, a2, 0u, hi[0], hi[1]);
            }
        }
        /* scale the group's exact integer-weight sums: column 16q + 8c + t */
        const __half *s0 = reinterpret_cast<const __half *>(&sv0), *s1 = reinterpret_cast<const __half *>(&sv1);
#pragma unroll
        for (int t = 0; t < 8; t++) {
            acc[t][0] = fmaf(__half2float(s0[t]), accg[t][0], acc[t][0]);
            acc[t][1] = fmaf(__half2float(s1[t]), accg[t][1], acc[t][1]);
        }
    }

    /* reduce the 4 warps: red[warp][row][col] */
    __shared__ float red[GEMV_WARPS][AWQ_GEMV_MAX_ROWS][GEMV_COLS];
    __shared__ bool last;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        red[warp][g][16 * q + t] = acc[t][0];
        red[warp][g][16 * q + 8 + t] = acc[t][1];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < M * GEMV_COLS; e += GEMV_WARPS * 32) {
        const int row = e / GEMV_COLS, col = e % GEMV_COLS;
        float v = 0.0f;
#pragma unroll
        for (int u = 0; u < GEMV_WARPS; u++)
            v += red[u][row][col];
        if (splits == 1)
            y[(size_t)row * ldy + n0 + col] = __float2bfloat16_rn(v);
        else
            part[((size_t)split * AWQ_GEMV_MAX_ROWS + row) * N + n0 + col] = v;
    }
    if (splits == 1)
        return;
    /* the last block of this column tile adds the splits in order */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        last = atomicAdd(&counters[blockIdx.x], 1u) == (unsigned)(splits - 1);
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    for (int e = threadIdx.x; e < M * GEMV_COLS; e += GEMV_WARPS * 32) {
        const int row = e / GEMV_COLS, col = e % GEMV_COLS;
        float v = 0.0f;
        for (int u = 0; u < splits; u++)
            v += __ldcg(part + ((size_t)u * AWQ_GEMV_MAX_ROWS + row) * N + n0 + col);
        y[(size_t)row * ldy + n0 + col] = __float2bfloat16_rn(v);
    }
    if (threadIdx.x == 0)
        counters[blockIdx.x] = 0u; /* ready for the next call on this stream */
}

/* Split K so that about 4 blocks per SM run; groups per split a multiple of the 4 warps
 * when there are more than 4. */
static void gemv_plan(int64_t N, int64_t K, int64_t group, int *splits, int *gps)
{
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                  cudaSuccess)
        sms = 132;
    (void)cudaGetLastError();
    int64_t tiles = N / GEMV_COLS, G = K / group;
    int64_t want = (4 * (int64_t)sms + tiles - 1) / tiles;
    if (want < 1)
        want = 1;
    if (want > G)
        want = G;
    int64_t per = (G + want - 1) / want;
    if (per > GEMV_WARPS)
        per = (per + GEMV_WARPS - 1) / GEMV_WARPS * GEMV_WARPS;
    *gps = (int)per;
    *splits = (int)((G + per - 1) / per);
}

static size_t gemv1_workspace_bytes(int64_t N, int64_t K, int64_t group)
{
    if (N <= 0 || K <= 0 || group <= 0 || K % group || N % GEMV_COLS)
        return 0;
    int splits, gps;
    gemv_plan(N, K, group, &splits, &gps);
    if (splits == 1)
        return 0;
    size_t counters = (size_t)(N / GEMV_COLS) * sizeof(unsigned);
    counters = (counters + 255) & ~(size_t)255;
    return counters + (size_t)splits * AWQ_GEMV_MAX_ROWS * (size_t)N * sizeof(float);
}

/* The larger of awq_gemv's and awq_gemv2's needs: awq_matmul may use either. */
extern "C" size_t awq_gemv_workspace_bytes(int64_t N, int64_t K, int64_t group)
{
    size_t a = gemv1_workspace_bytes(N, K, group), b = awq_gemv2_workspace_bytes(N, K, group);
    return a > b ? a : b;
}

extern "C" gm_status awq_gemv(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                              void *ws, size_t ws_bytes, cudaStream_t s)
{
    gm_status st = awq_check_common("awq_gemv", x, M, ldx, w, y, ldy);
    if (st)
        return st;
    if (M > AWQ_GEMV_MAX_ROWS)
        return gm_fail(GM_ERR_INVALID_ARG, "awq_gemv: %lld rows; at most %d (use awq_gemm)", (long long)M,
                       AWQ_GEMV_MAX_ROWS);
    if (w->group != 32 && w->group != 64 && w->group != 128)
        return gm_fail(GM_ERR_UNSUPPORTED, "awq_gemv: group %lld (32, 64 or 128 supported)", (long long)w->group);
    int splits, gps;
    gemv_plan(w->N, w->K, w->group, &splits, &gps);
    size_t need = gemv1_workspace_bytes(w->N, w->K, w->group);
    if (need > 0 && (!ws || ws_bytes < need || ((uintptr_t)ws & 255u)))
        return gm_fail(GM_ERR_INVALID_ARG, "awq_gemv: N %lld K %lld needs a 256-byte aligned workspace of %zu bytes",
                       (long long)w->N, (long long)w->K, need);
    unsigned *counters = (unsigned *)ws;
    float *part = need ? (float *)((char *)ws + (((size_t)(w->N / GEMV_COLS) * sizeof(unsigned) + 255) &
                                                 ~(size_t)255))
                       : NULL;
    dim3 grid((unsigned)(w->N / GEMV_COLS), (unsigned)splits), block(GEMV_WARPS * 32);
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x;
    const uint32_t *qw = (const uint32_t *)w->qweight, *qz = (const uint32_t *)w->qzeros;
    const __half *sc = (const __half *)w->scales;
#define GEMV_LAUNCH(GS)                                                                                            \
    awq_gemv_kernel<GS><<<grid, block, 0, s>>>(xb, (int)M, (int)ldx, qw, qz, sc, (int)w->K, (int)w->N,            \
                                               (int)w->ldq, (int)w->lds, gps, splits, (__nv_bfloat16 *)y, (int)ldy, \
                                               part, counters)
    if (w->group == 32)
        GEMV_LAUNCH(32);
    else if (w->group == 64)
        GEMV_LAUNCH(64);
    else
        GEMV_LAUNCH(128);
#undef GEMV_LAUNCH
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status awq_matmul(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                                void *ws, size_t ws_bytes, cudaStream_t s)
{
    if (M <= AWQ_GEMV_ROWS_DEFAULT && (w->group == 32 || w->group == 64 || w->group == 128))
        switch (awq_gemv_get_impl()) {
        case 2: return awq_gemv2(x, M, ldx, w, y, ldy, ws, ws_bytes, s);
        case 3: return awq_gemv2_tma(x, M, ldx, w, y, ldy, ws, ws_bytes, s);
        default: return awq_gemv(x, M, ldx, w, y, ldy, ws, ws_bytes, s);
        }
    return awq_gemm(x, M, ldx, w, y, ldy, s);
}
