/* gemm_awq.cu - k_gemm_awq (the W4A16 product for any M: GEMV or GEMM) and k_gemm_awq_mma, the W4A16
 * tensor-core GEMM (prefill and batches > 4): int4 weights dequantized in registers to bf16, mma.sync
 * m16n8k16, float32 accumulators.
 *
 * Block tile BM = 32 * MT rows x BN = 128 columns, BK = 32 (one quantization group per k
 * tile, since group % 32 == 0); 8 warps as 2 (rows) x 4 (columns), a warp computing
 * 16 * MT rows x 32 columns. A 3-stage cp.async pipeline brings x [BM, BK] bf16, the packed
 * weights [BK, BN/8] int32 and the tile's zeros [BN/8] and scales [BN] into shared memory.
 * Column mapping inside a warp (4 n8 tiles): tile t, MMA column c <-> logical column
 * 4c + t, so a lane (g = lane/4) dequantizes columns 4g .. 4g+3 (nibble pairs 2(g%2) and
 * 2(g%2)+1 of packed word g/2) and its accumulators (MMA columns 2q, 2q+1) are the 8
 * contiguous logical columns 8q .. 8q+7: one 16-byte store per row. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm_awq.cuh"
#include "cuda_check.h"

#define BN 128
#define BK 32
#define XS (BK + 8) /* padded smem row of x: 80 bytes, ldmatrix rows fall in distinct banks */
#define STAGES 3
#define THREADS 256

template <int MT>
struct gemm_smem {
    __nv_bfloat16 x[STAGES][32 * MT][XS];
    uint32_t w[STAGES][BK][BN / 8];
    uint32_t z[STAGES][BN / 8];
    __half s[STAGES][BN];
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0; /* 0: fill 16 zero bytes */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sa));
}

template <int MT>
__device__ __forceinline__ void load_stage(gemm_smem<MT> &sm, int st, int kt, const __nv_bfloat16 *x, int M,
                                           int ldx, const uint32_t *qw, const uint32_t *qz, const __half *sc,
                                           int N, int ldq, int lds, int group, int m0, int n0)
{
    constexpr int BM = 32 * MT;
    const int tid = threadIdx.x, k0 = kt * BK;
    /* x: BM rows x 4 chunks of 8 bf16 */
    for (int c = tid; c < BM * 4; c += THREADS) {
        const int r = c >> 2, part = c & 3;
        const bool ok = m0 + r < M;
        const __nv_bfloat16 *src = x + (size_t)(ok ? m0 + r : 0) * ldx + k0 + part * 8;
        cp_async16(&sm.x[st][r][part * 8], src, ok);
    }
    /* weights: BK rows x 4 chunks of 4 words; zeros 4 chunks, scales 16 chunks */
    if (tid < BK * 4) {
        const int r = tid >> 2, part = tid & 3;
        const int col = n0 + part * 32; /* first logical column of the chunk */
        const bool ok = col < N;
        const uint32_t *src = qw + (size_t)(k0 + r) * ldq + (ok ? col / 8 : 0);
        cp_async16(&sm.w[st][r][part * 4], src, ok);
    } else if (tid < BK * 4 + 4) {
        const int part = tid - BK * 4, col = n0 + part * 32;
        const bool ok = col < N;
        const uint32_t *src = qz + (size_t)(k0 / group) * ldq + (ok ? col / 8 : 0);
        cp_async16(&sm.z[st][part * 4], src, ok);
    } else if (tid < BK * 4 + 4 + 16) {
        const int part = tid - BK * 4 - 4, col = n0 + part * 8;
        const bool ok = col < N;
        const __half *src = sc + (size_t)(k0 / group) * lds + (ok ? col : 0);
        cp_async16(&sm.s[st][part * 8], src, ok);
    }
}

template <int MT>
__global__ void __launch_bounds__(THREADS)
    awq_gemm_kernel(const __nv_bfloat16 *__restrict__ x, int M, int ldx, const uint32_t *__restrict__ qw,
                    const uint32_t *__restrict__ qz, const __half *__restrict__ sc, int K, int N, int ldq, int lds,
                    int group, __nv_bfloat16 *__restrict__ y, int ldy)
{
    constexpr int BM = 32 * MT;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    gemm_smem<MT> &sm = *reinterpret_cast<gemm_smem<MT> *>(smem_raw);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int KT = K / BK;
    const bool wactive = n0 + wn * 32 < N; /* N % 64 == 0: a warp's 32 columns are all in or all out */

    float acc[MT][4][4];
#pragma unroll
    for (int a = 0; a < MT; a++)
#pragma unroll
        for (int t = 0; t < 4; t++)
            acc[a][t][0] = acc[a][t][1] = acc[a][t][2] = acc[a][t][3] = 0.0f;

#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < KT)
            load_stage<MT>(sm, st, st, x, M, ldx, qw, qz, sc, N, ldq, lds, group, m0, n0);
        cp_async_commit();
    }

    const int wword = wn * 4 + (g >> 1); /* packed column of this lane within the tile */
    const int pair0 = 2 * (g & 1);       /* its nibble pairs: pair0, pair0 + 1 */
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nk = kt + STAGES - 1;
            if (nk < KT)
                load_stage<MT>(sm, nk % STAGES, nk, x, M, ldx, qw, qz, sc, N, ldq, lds, group, m0, n0);
            cp_async_commit();
        }
        const int st = kt % STAGES;
        if (!wactive)
            continue;
        /* this k tile's zeros and scales for the lane's 4 columns 4g .. 4g+3 (= wn*32 + ...) */
        const uint32_t zw = sm.z[st][wword];
        uint32_t zz[2], s2[2];
#pragma unroll
        for (int p = 0; p < 2; p++) {
            zz[p] = awq_nib2_bf16(zw >> (4 * (pair0 + p)));
            const int c = wn * 32 + 4 * g + 2 * p;
            __nv_bfloat162 b = __floats2bfloat162_rn(__half2float(sm.s[st][c]), __half2float(sm.s[st][c + 1]));
            s2[p] = *reinterpret_cast<uint32_t *>(&b);
        }
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t w[4];
#pragma unroll
            for (int r = 0; r < 4; r++)
                w[r] = sm.w[st][ks * 16 + 2 * q + (r & 1) + (r >> 1) * 8][wword];
            uint32_t b[4][2];
#pragma unroll
            for (int p = 0; p < 2; p++)
                awq_dequant_pair(w, pair0 + p, zz[p], s2[p], true, b[2 * p], b[2 * p + 1]);
#pragma unroll
            for (int a = 0; a < MT; a++) {
                uint32_t af[4];
                ldmatrix_x4(af, &sm.x[st][wm * 16 * MT + a * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int t = 0; t < 4; t++)
                    awq_mma_bf16(acc[a][t], af[0], af[1], af[2], af[3], b[t][0], b[t][1]);
            }
        }
    }
    cp_async_wait<0>();
    if (!wactive)
        return;
    /* lane's columns: n0 + wn*32 + 8q + {t (c0/c2), 4 + t (c1/c3)} */
#pragma unroll
    for (int a = 0; a < MT; a++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + wm * 16 * MT + a * 16 + g + 8 * h;
            if (row >= M)
                continue;
            __align__(16) __nv_bfloat16 o[8];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                o[t] = __float2bfloat16_rn(acc[a][t][2 * h]);
                o[4 + t] = __float2bfloat16_rn(acc[a][t][2 * h + 1]);
            }
            *reinterpret_cast<uint4 *>(y + (size_t)row * ldy + n0 + wn * 32 + 8 * q) =
                *reinterpret_cast<const uint4 *>(o);
        }
    }
}

template <int MT>
static gm_status gemm_launch(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                             cudaStream_t s)
{
    const size_t smem = sizeof(gemm_smem<MT>); /* 38 KB at MT 4: under the 48 KB default */
    dim3 grid((unsigned)((w->N + BN - 1) / BN), (unsigned)((M + 32 * MT - 1) / (32 * MT))), block(THREADS);
    if (grid.y > 65535)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_gemm_awq_mma: %lld rows is too many for one launch", (long long)M);
    awq_gemm_kernel<MT><<<grid, block, smem, s>>>(
        (const __nv_bfloat16 *)x, (int)M, (int)ldx, (const uint32_t *)w->qweight, (const uint32_t *)w->qzeros,
        (const __half *)w->scales, (int)w->K, (int)w->N, (int)w->ldq, (int)w->lds, (int)w->group,
        (__nv_bfloat16 *)y, (int)ldy);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_gemm_awq_mma(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                              cudaStream_t s)
{
    gm_status st = awq_check_common("k_gemm_awq_mma", x, M, ldx, w, y, ldy);
    if (st)
        return st;
    if (M <= 32)
        return gemm_launch<1>(x, M, ldx, w, y, ldy, s);
    if (M <= 64)
        return gemm_launch<2>(x, M, ldx, w, y, ldy, s);
    return gemm_launch<4>(x, M, ldx, w, y, ldy, s);
}

extern "C" gm_status k_gemm_awq(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                                void *ws, size_t ws_bytes, cudaStream_t s)
{
    if (M <= AWQ_GEMV_ROWS && (w->group == 32 || w->group == 64 || w->group == 128))
        return k_gemv_awq(x, M, ldx, w, y, ldy, ws, ws_bytes, s);
    return k_gemm_awq_mma(x, M, ldx, w, y, ldy, s);
}
