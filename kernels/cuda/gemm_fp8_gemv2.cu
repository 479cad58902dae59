/* gemm_fp8_gemv2.cu - FP8 GEMV v2, the e4m3 GEMV of batch-1..4 decode: y[t, n] = (sx * sw) * sum_k xq[t, k] * Wq[n, k],
 * plus two GeGLU epilogues over a fused gate|up weight (bf16 act, or e4m3 act with a static scale).
 *
 * Byte floor: N*K weight bytes (x, y are < 0.1% of it) at ~4.2 TB/s (H200 copy rate): 2b gate|up
 * 67 MB = 16 us, down 34 MB = 8 us, qkv/o 5.2/4.2 MB = 1.2/1.0 us (these two are latency-bound).
 *
 * Layout (the bf16 GEMV's blocking, gemm.cu, with the products on the tensor cores):
 * - A warp owns a tile of MT x 16 weight rows (GeGLU: 8 MT gate rows j and their up rows N + j) and a
 *   contiguous slice of K. Lane (gid = lane / 4, c = lane % 4) loads, per 64-byte K step, the 16 bytes
 *   at 16 c of its 2 MT rows (gid + 8 h of each MMA tile; __ldcs): one warp load covers 64 contiguous
 *   bytes of 8 rows, and a batch of U = 8 / MT steps (16 loads, 256 B per lane, 8 KB per warp in
 *   flight) covers 64 U contiguous bytes of each row.
 * - The products: each 16 loaded bytes become 8 f16x2 (cvt.rn.f16x2.e4m3x2, exact) and feed 4
 *   mma.sync m16n8k16 f16 -> f32 (A = 16 weight rows, B = x with the T <= 4 tokens as columns 0..3,
 *   converted once per step for all MT tiles). MMA q takes the lane's pairs 2q, 2q + 1 as k slots
 *   (2c, 2c + 1) and (2c + 8, 2c + 9), for W and x alike, so every k of the step is used once. This is
 *   what mma.sync e4m3 compiles to on sm_90 (F2FP + HMMA.16816: it has no native FP8 mma.sync), with
 *   the x conversion shared by the MT tiles: 0.75 (MT 1) or 0.625 (MT 2) F2FP and ~1.5 / 1.2 issued
 *   instructions per weight byte and lane, whatever T is (bench/history/NOTES_FP8.md "FP8 GEMV v2").
 * - MT = 2 for the large products (>= 32 rows for 4 warps an SM), else 1 (more tiles). S warps split
 *   the K of one tile and add their partial sums through shared memory; a block is 8 warps (8 / S
 *   tiles) or 16 (S = 16, MT = 1: one tile). S is the largest power of two that keeps every warp
 *   resident in one wave (tiles * S <= 16 warps * SMs) with >= 4 K steps per warp.
 * - PDL: the first batch of weight loads is issued before griddepcontrol.wait (weights are constant
 *   while a step runs, so this overlaps the previous kernel's tail); x, the scales and y only after it.
 *   The block lets the next kernel launch (griddepcontrol.launch_dependents) once its loads are done.
 * - K % 64 != 0: the last step's lanes past K load zeros. Rows past N load nothing and store nothing. */
#include "gemm_fp8.cuh"

#include <cuda_fp8.h>

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "geglu.cuh"
#include "launch.cuh"

enum { V2_BF16 = 0, V2_F32 = 1, V2_GEGLU = 2, V2_GEGLU_FP8 = 3 };

/* D += A . B, m16n8k16, f16 inputs, f32 accumulators. */
__device__ __forceinline__ void v2_mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* 16 e4m3 -> 8 f16x2, exactly (f16 holds every e4m3 value): p[i] = bytes 2i, 2i + 1. One F2FP per pair. */
__device__ __forceinline__ void v2_cvt16(const uint4 &v, uint32_t p[8])
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++)
        asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %2;\n"
            " cvt.rn.f16x2.e4m3x2 %0, lo;\n cvt.rn.f16x2.e4m3x2 %1, hi;\n}\n"
            : "=r"(p[2 * i]), "=r"(p[2 * i + 1])
            : "r"(w[i]));
}

__device__ __forceinline__ void v2_launch_dependents()
{
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

/* Store one output: plain (gs only) or GeGLU of (gs, us), both already scaled by sx * sw. */
template <int MODE>
__device__ __forceinline__ void v2_store(void *y, int64_t ldy, int t, int64_t col, float gs, float us, float inv)
{
    if (MODE == V2_F32) {
        reinterpret_cast<float *>(y)[t * ldy + col] = gs;
    } else if (MODE == V2_BF16) {
        reinterpret_cast<bf16 *>(y)[t * ldy + col] = __float2bfloat16_rn(gs);
    } else {
        /* gate and up as the bf16 GEMM output would store them, then k_geglu / k_geglu_fp8's rounding */
        float g = round_bf16(gs), u = round_bf16(us);
        float o = round_bf16(gelu_tanh(g)) * u;
        if (MODE == V2_GEGLU)
            reinterpret_cast<bf16 *>(y)[t * ldy + col] = __float2bfloat16_rn(o);
        else
            reinterpret_cast<uint8_t *>(y)[t * ldy + col] =
                (uint8_t)__nv_cvt_float_to_fp8(round_bf16(o) * inv, __NV_SATFINITE, __NV_E4M3);
    }
}

/* NW warps per block, S of them per warp tile (NW / S tiles per block); a warp tile is MT MMA tiles of
 * 16 rows (MT = 2: each x conversion serves 4 rows). N: output rows (plain) or GeGLU columns (the
 * weight then has 2N rows). so: the e4m3 output's scale (MODE 3), else unused. */
template <int NW, int S, int MT, int MODE>
__global__ void __launch_bounds__(NW * 32, 16 / NW)
    gemv_fp8v2_kernel(const uint8_t *__restrict__ x, int64_t ldx, int32_t T, const uint8_t *__restrict__ W,
                      int64_t ldw, int64_t K, int64_t N, const float *__restrict__ sx, const float *__restrict__ sw,
                      const float *__restrict__ so, void *__restrict__ y, int64_t ldy)
{
    constexpr int TPB = NW / S;
    constexpr int U = 8 / MT; /* K steps per batch: 16 weight loads of 16 bytes per lane in flight */
    constexpr int RT = 16 * MT; /* weight rows per warp tile */
    constexpr bool GEGLU = MODE >= V2_GEGLU;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, c = lane & 3;
    const int64_t tile = (int64_t)blockIdx.x * TPB + warp / S;
    const int ks = warp % S;
    const int64_t nsteps = (K + 63) >> 6, per = (nsteps + S - 1) / S;
    const int64_t s0 = ks * per, s1 = s0 + per < nsteps ? s0 + per : nsteps;
    const int64_t kc = 16 * c;
    /* steps of this warp (warp-uniform; <= 0: none), and of this lane: those whose 16 bytes at 64 st + kc
     * lie inside K (K >= 16 and kc <= 48, so K - kc + 63 > 0) */
    const int64_t lane_end = (K - kc + 63) >> 6;
    int nw = (int)(s1 - s0);
    int nl = (int)((lane_end < s1 ? lane_end : s1) - s0);
    /* the lane's weight rows: MMA tile m, rows gid (h = 0) and gid + 8 (h = 1) */
    const uint8_t *wp[MT][2];
    bool wv[MT][2];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int64_t row;
            if (GEGLU) { /* h = 0: gate row j, h = 1: up row N + j */
                const int64_t j = tile * (8 * MT) + 8 * m + gid;
                wv[m][h] = j < N;
                row = h ? N + j : j;
            } else {
                row = tile * RT + 16 * m + 8 * h + gid;
                wv[m][h] = row < N;
            }
            wp[m][h] = W + (wv[m][h] ? row : 0) * ldw + kc + s0 * 64;
        }
    const bool xv = gid < T;
    const uint8_t *px = x + (xv ? gid : 0) * ldx + kc + s0 * 64;

    float acc[MT][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
        acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
    uint4 w[U][MT][2];
#pragma unroll
    for (int u = 0; u < U; u++) /* the first batch of weights: before the wait */
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                w[u][m][h] = u < (wv[m][h] ? nl : 0) ? __ldcs(reinterpret_cast<const uint4 *>(wp[m][h] + u * 64))
                                                     : make_uint4(0, 0, 0, 0);
    pdl_wait();
    for (;;) {
        uint4 xx[U];
        const int nx = xv ? nl : 0;
#pragma unroll
        for (int u = 0; u < U; u++)
            xx[u] = u < nx ? __ldg(reinterpret_cast<const uint4 *>(px + u * 64)) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (u < nw) { /* warp-uniform */
                /* MMA q takes the lane's byte pairs 2q (k slots 2c, 2c + 1) and 2q + 1 (slots 2c + 8, 2c + 9):
                 * the same permutation of the step's 64 k for every row and for x */
                uint32_t xb[8];
                v2_cvt16(xx[u], xb);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    uint32_t a0[8], a1[8];
                    v2_cvt16(w[u][m][0], a0);
                    v2_cvt16(w[u][m][1], a1);
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        v2_mma(acc[m], a0[2 * q], a1[2 * q], a0[2 * q + 1], a1[2 * q + 1], xb[2 * q], xb[2 * q + 1]);
                }
            }
        }
        nw -= U;
        nl -= U;
        if (nw <= 0)
            break;
        px += U * 64;
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                wp[m][h] += U * 64;
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    w[u][m][h] = u < (wv[m][h] ? nl : 0)
                                     ? __ldcs(reinterpret_cast<const uint4 *>(wp[m][h] + u * 64))
                                     : make_uint4(0, 0, 0, 0);
    }
    v2_launch_dependents();

    /* acc[m]: (row gid, tokens 2c, 2c + 1), (row gid + 8, tokens 2c, 2c + 1) of MMA tile m; tokens >= 4
     * are zero (x rows past T load zeros) */
    const float sc = *sx * *sw;
    const float inv = MODE == V2_GEGLU_FP8 ? 1.0f / *so : 0.0f;
    if (S == 1) {
        if (c < 2) {
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int t = 2 * c + i;
                    if (t >= T)
                        break;
                    if (GEGLU) {
                        if (wv[m][0])
                            v2_store<MODE>(y, ldy, t, tile * (8 * MT) + 8 * m + gid, acc[m][i] * sc,
                                           acc[m][2 + i] * sc, inv);
                    } else {
                        if (wv[m][0])
                            v2_store<MODE>(y, ldy, t, tile * RT + 16 * m + gid, acc[m][i] * sc, 0.0f, inv);
                        if (wv[m][1])
                            v2_store<MODE>(y, ldy, t, tile * RT + 16 * m + 8 + gid, acc[m][2 + i] * sc, 0.0f, inv);
                    }
                }
        }
        return;
    }
    /* S > 1: partial sums by (warp, row of the warp tile = 16 m + 8 h + gid, token) */
    __shared__ float red[NW][RT][4];
    if (c < 2) {
#pragma unroll
        for (int m = 0; m < MT; m++) {
            red[warp][16 * m + gid][2 * c] = acc[m][0];
            red[warp][16 * m + gid][2 * c + 1] = acc[m][1];
            red[warp][16 * m + 8 + gid][2 * c] = acc[m][2];
            red[warp][16 * m + 8 + gid][2 * c + 1] = acc[m][3];
        }
    }
    __syncthreads();
    if (GEGLU) {
        for (int i = tid; i < TPB * 8 * MT * 4; i += NW * 32) { /* (tile, column, token) */
            const int tt = i / (8 * MT * 4), jj = (i >> 2) % (8 * MT), t = i & 3;
            const int rg = 16 * (jj >> 3) + (jj & 7); /* the gate row in red; up is 8 further */
            const int64_t j = ((int64_t)blockIdx.x * TPB + tt) * (8 * MT) + jj;
            if (t >= T || j >= N)
                continue;
            float g = 0.0f, u = 0.0f;
#pragma unroll
            for (int q = 0; q < S; q++) {
                g += red[tt * S + q][rg][t];
                u += red[tt * S + q][rg + 8][t];
            }
            v2_store<MODE>(y, ldy, t, j, g * sc, u * sc, inv);
        }
    } else {
        for (int i = tid; i < TPB * RT * 4; i += NW * 32) { /* (tile, row, token) */
            const int tt = i / (RT * 4), r = (i >> 2) % RT, t = i & 3;
            const int64_t row = ((int64_t)blockIdx.x * TPB + tt) * RT + r;
            if (t >= T || row >= N)
                continue;
            float g = 0.0f;
#pragma unroll
            for (int q = 0; q < S; q++)
                g += red[tt * S + q][r][t];
            v2_store<MODE>(y, ldy, t, row, g * sc, 0.0f, inv);
        }
    }
}

/* SMs of the current device (cached per device). */
static int v2_sm_count(void)
{
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64)
        return 132;
    if (!cache[dev]) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
            n = 132;
        cache[dev] = n;
    }
    return cache[dev];
}

/* MMA tiles per warp tile: 2 (32 rows, x converted once for 4 rows) when the weight has at least
 * 32 rows for each of 4 warps per SM, else 1 (16 rows: more tiles for the small products). */
static int v2_mt(int64_t weight_rows, int n_sm) { return weight_rows >= 32 * 4 * (int64_t)n_sm ? 2 : 1; }

/* K split: the largest S (1..16, at most 8 when MT = 2) with tiles * S <= 16 warps per SM (one wave)
 * and >= 4 K steps (64 bytes) per warp. */
static int v2_split(int64_t tiles, int64_t K, int mt, int n_sm)
{
    int64_t nsteps = (K + 63) / 64;
    int s = 1;
    for (int c = 2; c <= (mt == 2 ? 8 : 16); c *= 2) {
        if (tiles * c > 16 * (int64_t)n_sm || (nsteps + c - 1) / c < 4)
            break;
        s = c;
    }
    return s;
}

template <int NW, int S, int MT, int MODE>
static cudaError_t v2_launch(int64_t tiles, const uint8_t *x, int64_t ldx, int32_t T, const uint8_t *W, int64_t ldw,
                             int64_t K, int64_t N, const float *sx, const float *sw, const float *so, void *y,
                             int64_t ldy, cudaStream_t s)
{
    return gm_launch(gemv_fp8v2_kernel<NW, S, MT, MODE>, dim3(gm_div_up(tiles, NW / S)), dim3(NW * 32), 0, s, x, ldx,
                     T, W, ldw, K, N, sx, sw, so, y, ldy);
}

template <int MODE>
static cudaError_t v2_launch_mode(int mt, int split, int64_t tiles, const uint8_t *x, int64_t ldx, int32_t T,
                                  const uint8_t *W, int64_t ldw, int64_t K, int64_t N, const float *sx,
                                  const float *sw, const float *so, void *y, int64_t ldy, cudaStream_t s)
{
    if (mt == 2) {
        switch (split) {
        case 1: return v2_launch<8, 1, 2, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
        case 2: return v2_launch<8, 2, 2, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
        case 4: return v2_launch<8, 4, 2, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
        default: return v2_launch<8, 8, 2, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
        }
    }
    switch (split) {
    case 1: return v2_launch<8, 1, 1, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
    case 2: return v2_launch<8, 2, 1, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
    case 4: return v2_launch<8, 4, 1, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
    case 8: return v2_launch<8, 8, 1, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
    default: return v2_launch<16, 16, 1, MODE>(tiles, x, ldx, T, W, ldw, K, N, sx, sw, so, y, ldy, s);
    }
}

/* Checks shared by the three entries; n = output rows (plain) or GeGLU columns. */
static gm_status v2_check(const char *fn, const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                          const void *Wq, int64_t ldw, const float *w_scale, int64_t n, const void *y, size_t ysz,
                          int64_t ldy)
{
    if (T > 4)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: T %lld rows (1..4)", fn, (long long)T);
    if (K <= 0 || n <= 0 || K % 16 || ldx % 16 || ldw % 16 || ldx < K || ldw < K || ldy < n)
        return gm_fail(GM_ERR_UNSUPPORTED,
                       "%s: K %lld, ldx %lld, ldw %lld must be multiples of 16 with ldx, ldw >= K; N %lld <= ldy %lld",
                       fn, (long long)K, (long long)ldx, (long long)ldw, (long long)n, (long long)ldy);
    if ((uintptr_t)xq % 16 || (uintptr_t)Wq % 16 || (uintptr_t)y % ysz)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: x %p, W %p must be 16-byte aligned, y %p %zu-byte aligned", fn, xq, Wq,
                       y, ysz);
    if (!x_scale || !w_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: missing scale pointer", fn);
    if (n > ((int64_t)1 << 34)) /* grid.x < 2^31 blocks */
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: N %lld too large", fn, (long long)n);
    return GM_OK;
}

static gm_status v2_run(const char *fn, int mode, const void *xq, int64_t T, int64_t K, int64_t ldx,
                        const float *x_scale, const void *Wq, int64_t ldw, const float *w_scale, int64_t n,
                        const float *out_scale, void *y, int64_t ldy, cudaStream_t s)
{
    /* plain and GeGLU over the same 2 ni weight rows get the same tiles, split and summation order */
    const int n_sm = v2_sm_count();
    const int64_t rows = mode >= V2_GEGLU ? 2 * n : n;
    const int mt = v2_mt(rows, n_sm);
    const int64_t tiles = (rows + 16 * mt - 1) / (16 * mt);
    const int split = v2_split(tiles, K, mt, n_sm);
    const uint8_t *x = (const uint8_t *)xq, *W = (const uint8_t *)Wq;
    const int32_t t = (int32_t)T;
    cudaError_t e;
    switch (mode) {
    case V2_BF16:
        e = v2_launch_mode<V2_BF16>(mt, split, tiles, x, ldx, t, W, ldw, K, n, x_scale, w_scale, out_scale, y, ldy, s);
        break;
    case V2_F32:
        e = v2_launch_mode<V2_F32>(mt, split, tiles, x, ldx, t, W, ldw, K, n, x_scale, w_scale, out_scale, y, ldy, s);
        break;
    case V2_GEGLU:
        e = v2_launch_mode<V2_GEGLU>(mt, split, tiles, x, ldx, t, W, ldw, K, n, x_scale, w_scale, out_scale, y, ldy,
                                     s);
        break;
    default:
        e = v2_launch_mode<V2_GEGLU_FP8>(mt, split, tiles, x, ldx, t, W, ldw, K, n, x_scale, w_scale, out_scale, y,
                                         ldy, s);
        break;
    }
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "%s launch (T=%lld K=%lld N=%lld, %d MMA tiles a warp, split %d): %s", fn,
                       (long long)T, (long long)K, (long long)n, mt, split, cudaGetErrorString(e));
    return GM_OK;
}

extern "C" gm_status k_gemv_fp8_v2(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                                 const void *Wq, int64_t ldw, const float *w_scale, int64_t N, void *y, int y_f32,
                                 int64_t ldy, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CHECK(v2_check("k_gemv_fp8_v2", xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, y, y_f32 ? 4 : 2, ldy));
    return v2_run("k_gemv_fp8_v2", y_f32 ? V2_F32 : V2_BF16, xq, T, K, ldx, x_scale, Wq, ldw, w_scale, N, NULL, y, ldy,
                  s);
}

extern "C" gm_status k_gemv_fp8_v2_geglu(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                                       const void *Wgu, int64_t ldw, const float *w_scale, int64_t ni, void *act,
                                       int64_t ld_act, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CHECK(v2_check("k_gemv_fp8_v2_geglu", xq, T, K, ldx, x_scale, Wgu, ldw, w_scale, ni, act, 2, ld_act));
    return v2_run("k_gemv_fp8_v2_geglu", V2_GEGLU, xq, T, K, ldx, x_scale, Wgu, ldw, w_scale, ni, NULL, act, ld_act, s);
}

extern "C" gm_status k_gemv_fp8_v2_geglu_fp8(const void *xq, int64_t T, int64_t K, int64_t ldx, const float *x_scale,
                                           const void *Wgu, int64_t ldw, const float *w_scale, int64_t ni,
                                           const float *act_scale, void *actq, int64_t ld_act, cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CHECK(v2_check("k_gemv_fp8_v2_geglu_fp8", xq, T, K, ldx, x_scale, Wgu, ldw, w_scale, ni, actq, 1, ld_act));
    if (!act_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "k_gemv_fp8_v2_geglu_fp8: missing act_scale");
    return v2_run("k_gemv_fp8_v2_geglu_fp8", V2_GEGLU_FP8, xq, T, K, ldx, x_scale, Wgu, ldw, w_scale, ni, act_scale,
                  actq, ld_act, s);
}
