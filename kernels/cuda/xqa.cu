/* xqa.cu - XQA-style paged decode attention (see xqa.cuh): kernel v1 (below), the host side, and
 * kernel v2 (xqa_v2_kernel.cuh, the default for <= 16 rows; GM_XQA_V=1 keeps v1).
 *
 * v1:
 * Grid (nb_sub_seq, n_kv, batch), 4 warps. A CTA owns the G*q_len query rows of one KV head
 * (padded to 16 or 32 MMA rows) and a range of 64-key tiles, streamed through a 3-stage
 * cp.async ring in shared memory. Per tile:
 *   QK^T  warp w: keys 16w..16w+15 x all head dims (2 n8 tiles, mma m16n8k16)
 *   softmax  CTA-wide row max through shared memory, P (bf16 / f16) to shared memory
 *   PV    warp w: all 64 keys x head dims [w*hd/4, (w+1)*hd/4)
 * Byte floor (what the target is measured against): seq_len * n_kv * head_dim * 2 (K and V)
 * * elem bytes per sequence; everything else (Q, out, the merge) is < 1% at context >= 1k.
 *
 * Shared-memory layouts (all chosen to keep every warp access free of bank conflicts):
 *   K/V tile rows of hd*elem bytes, 16-byte chunk c of token t stored at chunk c ^ swz(t);
 *   bf16: ldmatrix (K) and ldmatrix.trans (V); FP8: K read 8 bytes per lane with the head dims
 *   permuted (dims 8c..8c+3 / 8c+4..8c+7 of each 32-dim chunk are the k indices of two MMAs, the
 *   same permutation applied to Q), V read 4 bytes from each of 4 keys and byte-transposed in
 *   registers (keys 4c..4c+3 are the k indices 2c,2c+1,2c+8,2c+9; P is read with the same
 *   permutation; output dims interleave as dim = 4n + q over the 4 n8 tiles of a 32-dim group).
 *   e4m3 -> f16 is a bit move: sign to bit 15, the other 7 bits to bits 13..7, value * 2^-8. */
#include "xqa.cuh"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>
#include <stdlib.h>

#include "cuda_check.h"
#include "cuda_util.cuh"

#define XQA_WARPS 4
#define XQA_THREADS (XQA_WARPS * 32)
#define XQA_STAGES 3
#define XQA_LOG2E 1.4426950408889634f

/* Kernel arguments (by value). */
typedef struct xqa_kargs {
    const bf16 *q;
    int64_t ldq;
    bf16 *out;
    int64_t ldo;
    const uint8_t *kp, *vp;
    const int32_t *bt;
    int32_t bt_stride;
    const int32_t *seq_lens;
    int32_t q_len, n_heads, n_kv, group, rows;
    int32_t bs, bs_shift; /* bs_shift >= 0 when bs is a power of two */
    float qk_log2;        /* scale * kv factor * log2(e) */
    float v_fac;          /* kv factor applied to the output */
    int32_t nb;           /* grid.x */
    uint32_t *sem;        /* [batch * n_kv] */
    float *ml;            /* [batch, n_kv, nb, rows, 2] */
    float *opart;         /* [batch, n_kv, nb, rows, hd] */
} xqa_kargs;

template <bool FP8, int HD, int MT>
struct xqa_cfg {
    static constexpr int ES = FP8 ? 1 : 2;
    static constexpr int ROW_B = HD * ES;             /* bytes of one key's K (or V) row */
    static constexpr int CH = ROW_B / 16;             /* 16-byte chunks per row */
    static constexpr int TILE_B = XQA_TILE * ROW_B;   /* one K (or V) tile */
    static constexpr int STAGE_B = 2 * TILE_B;        /* K tile then V tile */
    static constexpr int ROWS = 16 * MT;              /* MMA rows */
    static constexpr int QSTR = FP8 ? HD + 32 : HD + 8;                 /* halves per Q row */
    static constexpr int PSTR = FP8 ? XQA_TILE + 16 : XQA_TILE + 8;     /* halves per P row */
    static constexpr int NT = HD / 32;                /* PV n8 tiles per warp (hd/4 dims) */
    static constexpr int DPT = NT < 4 ? NT : 4;       /* FP8 V: dims per lane per load */
    static constexpr int Q_OFF = XQA_STAGES * STAGE_B;
    static constexpr int P_OFF = Q_OFF + ROWS * QSTR * 2;
    static constexpr int RED_OFF = P_OFF + ROWS * PSTR * 2;            /* red_max, red_l [WARPS][ROWS] */
    static constexpr int ROWV_OFF = RED_OFF + 2 * XQA_WARPS * ROWS * 4; /* s_m, s_l [ROWS] */
    static constexpr int SMEM = ROWV_OFF + 2 * ROWS * 4 + 16;
    static_assert(ROWS * HD * 4 <= Q_OFF, "output staging must fit in the KV ring");
};

/* ---- small PTX wrappers ---- */

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t r[4])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t r[4])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t addr, uint32_t r[2])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

/* c += a . b, m16n8k16, float32 accumulate; FP8 path runs in f16, bf16 path in bf16. */
template <bool F16>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    if (F16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* e4m3 bytes 0,1 (lo) or 2,3 (hi) of w -> f16x2 holding value * 2^-8 (exact). */
__device__ __forceinline__ uint32_t e4m3_f16x2(uint32_t w, bool hi)
{
    uint32_t t = __byte_perm(w, 0u, hi ? 0x3424u : 0x1404u); /* [0, b, 0, b'] */
    return (t & 0x80008000u) | ((t >> 1) & 0x3f803f80u);
}

__device__ __forceinline__ uint32_t pack2(float a, float b, bool f16)
{
    if (f16) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* 8 bf16 -> 8 f16 (FP8 path's Q). */
__device__ __forceinline__ uint4 bf16x8_to_f16x8(const uint4 &v)
{
    float f[8];
    bf16x8_to_f32(v, f);
    uint4 r;
    r.x = pack2(f[0], f[1], true);
    r.y = pack2(f[2], f[3], true);
    r.z = pack2(f[4], f[5], true);
    r.w = pack2(f[6], f[7], true);
    return r;
}

/* Chunk XOR of key row t (see the file comment). */
template <class C, bool FP8>
__device__ __forceinline__ int kv_swz(int t)
{
    if (FP8)
        return (2 * ((t ^ (t >> 2)) & 3)) & (C::CH - 1);
    return (t & 7) & (C::CH - 1);
}

/* Byte offset of (key row t, byte column col) in a swizzled K/V tile. */
template <class C, bool FP8>
__device__ __forceinline__ uint32_t kv_at(int t, int col)
{
    return (uint32_t)(t * C::ROW_B + ((((col >> 4) ^ kv_swz<C, FP8>(t))) << 4) + (col & 15));
}

/* Issue the cp.async copies of tile `tile` (keys tile*64 ..) into a stage; keys >= L are zero-filled. */
template <class C, bool FP8>
__device__ __forceinline__ void load_tile(uint32_t stage, const xqa_kargs &a, const int32_t *bt, int L, int tile,
                                          int g, int tid)
{
    constexpr int TOTAL = XQA_TILE * C::CH;
    static_assert(TOTAL % XQA_THREADS == 0, "tile chunks per thread");
#pragma unroll
    for (int k = 0; k < TOTAL / XQA_THREADS; k++) {
        int i = tid + k * XQA_THREADS;
        int t = i / C::CH, ch = i % C::CH;
        int pos = tile * XQA_TILE + t;
        const uint8_t *ks = a.kp, *vs = a.vp;
        int nbytes = 0;
        if (pos < L) {
            int lb, off;
            if (a.bs_shift >= 0) {
                lb = pos >> a.bs_shift;
                off = pos & (a.bs - 1);
            } else {
                lb = pos / a.bs;
                off = pos - lb * a.bs;
            }
            int64_t page = bt[lb];
            int64_t o = ((page * a.n_kv + g) * a.bs + off) * (int64_t)C::ROW_B + ch * 16;
            ks += o;
            vs += o;
            nbytes = 16;
        }
        uint32_t d = stage + (uint32_t)(t * C::ROW_B + ((ch ^ kv_swz<C, FP8>(t)) << 4));
        cp_async16(d, ks, nbytes);
        cp_async16(d + C::TILE_B, vs, nbytes);
    }
}

/* Pull the block-table entries of tile `tile` into L1 ahead of its load_tile (whose address math
 * would otherwise wait on an L2 round trip once per tile). */
__device__ __forceinline__ void prefetch_bt(const xqa_kargs &a, const int32_t *bt, int L, int tile, int tid)
{
    int first = tile * XQA_TILE, last = first + XQA_TILE - 1;
    if (last >= L)
        last = L - 1;
    if (first > last)
        return;
    int b0 = a.bs_shift >= 0 ? first >> a.bs_shift : first / a.bs;
    int b1 = a.bs_shift >= 0 ? last >> a.bs_shift : last / a.bs;
    if (tid <= b1 - b0)
        asm volatile("prefetch.global.L1 [%0];\n" ::"l"(bt + b0 + tid));
}

/* A fragments of Q for the 32 head dims of chunk j, rows 16*mt..: f[0..3] for the first MMA of
 * the chunk, f[4..7] for the second (bf16: dims 32j..+15 then +16..+31; FP8: the permuted dims). */
template <class C, bool FP8>
__device__ __forceinline__ void load_qfrag(const uint16_t *Qs, int mt, int j, int lane, uint32_t f[8])
{
    if (FP8) {
        int gid = lane >> 2, c4 = lane & 3;
        const uint16_t *r0 = Qs + (16 * mt + gid) * C::QSTR + 32 * j + 8 * c4;
        uint4 a = *reinterpret_cast<const uint4 *>(r0);
        uint4 b = *reinterpret_cast<const uint4 *>(r0 + 8 * C::QSTR);
        f[0] = a.x, f[1] = b.x, f[2] = a.y, f[3] = b.y;
        f[4] = a.z, f[5] = b.z, f[6] = a.w, f[7] = b.w;
    } else {
        int row = 16 * mt + (lane & 7) + 8 * ((lane >> 3) & 1);
        int col = 32 * j + 8 * (lane >> 4);
        uint32_t base = smem_u32(Qs + row * C::QSTR + col);
        ldsm_x4(base, f);
        ldsm_x4(base + 32, f + 4); /* +16 halves */
    }
}

/* B fragments of K for keys tb..tb+7 (tb = 16w + 8nt) and chunk j: kf[0..1] first MMA, kf[2..3] second. */
template <class C, bool FP8>
__device__ __forceinline__ void load_kfrag(uint32_t ks, const uint8_t *ksp, int tb, int j, int lane, uint32_t kf[4])
{
    if (FP8) {
        int t = tb + (lane >> 2);
        uint2 v = *reinterpret_cast<const uint2 *>(ksp + kv_at<C, FP8>(t, 32 * j + 8 * (lane & 3)));
        kf[0] = e4m3_f16x2(v.x, false);
        kf[1] = e4m3_f16x2(v.x, true);
        kf[2] = e4m3_f16x2(v.y, false);
        kf[3] = e4m3_f16x2(v.y, true);
    } else {
        int t = tb + (lane & 7);
        int dim = 32 * j + 8 * (lane >> 3);
        ldsm_x4(ks + kv_at<C, FP8>(t, dim * 2), kf);
    }
}

/* The split plan both kernels share. Sequence b (length L) is cut into ns_eff splits of whole XQA_TILE
 * tiles, at most a.nb; split blockIdx.x takes keys [k0, k1). Returns 0 when this CTA has nothing to
 * do: past the last split, or a padding row (L <= 0), whose output split 0 zeroes (nthreads threads). */
template <int HD>
__device__ __forceinline__ int xqa_split(const xqa_kargs &a, int L, int nthreads, int &k0, int &k1, int &ns_eff)
{
    const int x = blockIdx.x, g = blockIdx.y, b = blockIdx.z, G = a.group;
    if (L <= 0) { /* padding row: zeros, so the output is defined */
        if (x == 0)
            for (int i = threadIdx.x; i < a.rows * (HD / 8); i += nthreads) {
                int r = i / (HD / 8), ch = i % (HD / 8), t = r / G, h = r % G;
                *reinterpret_cast<uint4 *>(a.out + ((int64_t)b * a.q_len + t) * a.ldo + (int64_t)(g * G + h) * HD +
                                           ch * 8) = make_uint4(0, 0, 0, 0);
            }
        return 0;
    }
    const int n_tiles = (L + XQA_TILE - 1) / XQA_TILE;
    const int ns = a.nb < n_tiles ? a.nb : n_tiles;
    const int per = (n_tiles + ns - 1) / ns;
    ns_eff = (n_tiles + per - 1) / per;
    if (x >= ns_eff)
        return 0;
    k0 = x * per * XQA_TILE;
    k1 = min(L, (x + 1) * per * XQA_TILE);
    return 1;
}

template <bool FP8, int HD, int MT>
__global__ void __launch_bounds__(XQA_THREADS, 1) xqa_kernel(const xqa_kargs a)
{
    typedef xqa_cfg<FP8, HD, MT> C;
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, gid = lane >> 2, c4 = lane & 3;
    const int x = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int G = a.group, rows = a.rows;
    const int L = a.seq_lens[b];

    int k0, k1, ns_eff;
    if (!xqa_split<HD>(a, L, XQA_THREADS, k0, k1, ns_eff))
        return;
    const int t0 = k0 / XQA_TILE;
    const int n_my = (k1 - k0 + XQA_TILE - 1) / XQA_TILE;
    const int32_t *bt = a.bt + (int64_t)b * a.bt_stride;
    const uint32_t ring = smem_u32(smem);

    /* start the KV stream first; Q loads while it is in flight */
#pragma unroll
    for (int s = 0; s < XQA_STAGES - 1; s++) {
        if (s < n_my)
            load_tile<C, FP8>(ring + s * C::STAGE_B, a, bt, L, t0 + s, g, tid);
        cp_async_commit();
    }
    if (XQA_STAGES - 1 < n_my)
        prefetch_bt(a, bt, L, t0 + XQA_STAGES - 1, tid);

    uint16_t *Qs = reinterpret_cast<uint16_t *>(smem + C::Q_OFF);
    uint16_t *Ps = reinterpret_cast<uint16_t *>(smem + C::P_OFF);
    float *red_max = reinterpret_cast<float *>(smem + C::RED_OFF);
    float *red_l = red_max + XQA_WARPS * C::ROWS;
    float *s_m = reinterpret_cast<float *>(smem + C::ROWV_OFF);
    float *s_l = s_m + C::ROWS;
    __shared__ int s_last;

    for (int i = tid; i < C::ROWS * (HD / 8); i += XQA_THREADS) {
        int r = i / (HD / 8), ch = i % (HD / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < rows) {
            int t = r / G, h = r % G;
            v = *reinterpret_cast<const uint4 *>(a.q + ((int64_t)b * a.q_len + t) * a.ldq + (int64_t)(g * G + h) * HD +
                                                 ch * 8);
            if (FP8)
                v = bf16x8_to_f16x8(v);
        }
        *reinterpret_cast<uint4 *>(Qs + r * C::QSTR + ch * 8) = v;
    }
    __syncthreads();

    /* Q fragments stay in registers when there is one MMA row tile */
    uint32_t qc[MT == 1 ? HD / 32 : 1][8];
    if (MT == 1) {
#pragma unroll
        for (int j = 0; j < HD / 32; j++)
            load_qfrag<C, FP8>(Qs, 0, j, lane, qc[j]);
    }

    /* per-thread rows: 16*mt + gid + 8*hf */
    int lim[MT][2];
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int r = 16 * mt + gid + 8 * hf;
            int t = r < rows ? r / G : a.q_len - 1;
            lim[mt][hf] = L - a.q_len + t; /* last key this row may see */
            m_run[mt][hf] = -INFINITY;
            l_run[mt][hf] = 0.0f;
        }
    float o[MT][C::NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < C::NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                o[mt][n][e] = 0.0f;

    const int dbase = w * (HD / 4);

    for (int it = 0; it < n_my; it++) {
        cp_async_wait<XQA_STAGES - 2>();
        __syncthreads(); /* tile `it` visible to all; everyone is done with tile it-1 */
        {
            int nx = it + XQA_STAGES - 1;
            if (nx < n_my)
                load_tile<C, FP8>(ring + (nx % XQA_STAGES) * C::STAGE_B, a, bt, L, t0 + nx, g, tid);
            cp_async_commit();
            if (nx + 1 < n_my)
                prefetch_bt(a, bt, L, t0 + nx + 1, tid);
        }
        const uint32_t ks = ring + (it % XQA_STAGES) * C::STAGE_B;
        const uint32_t vs = ks + C::TILE_B;
        const uint8_t *ksp = smem + (it % XQA_STAGES) * C::STAGE_B;
        const uint8_t *vsp = ksp + C::TILE_B;
        const int kbase = (t0 + it) * XQA_TILE;

        /* ---- S = Q K^T for keys 16w .. 16w+15 ---- */
        float sc[MT][2][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sc[mt][nt][e] = 0.0f;
#pragma unroll
        for (int j = 0; j < HD / 32; j++) {
            uint32_t kf[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                load_kfrag<C, FP8>(ks, ksp, 16 * w + 8 * nt, j, lane, kf[nt]);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                uint32_t qa[8];
                if (MT == 1) {
#pragma unroll
                    for (int u = 0; u < 8; u++)
                        qa[u] = qc[MT == 1 ? j : 0][u];
                } else {
                    load_qfrag<C, FP8>(Qs, mt, j, lane, qa);
                }
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma16816<FP8>(sc[mt][nt], qa, kf[nt][0], kf[nt][1]);
                    mma16816<FP8>(sc[mt][nt], qa + 4, kf[nt][2], kf[nt][3]);
                }
            }
        }

        /* ---- scale, causal/length mask, row max over the warp's 16 keys ---- */
        float mx[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            mx[mt][0] = mx[mt][1] = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int pos = kbase + 16 * w + 8 * nt + 2 * c4 + (e & 1);
                    float v = pos <= lim[mt][e >> 1] ? sc[mt][nt][e] * a.qk_log2 : -INFINITY;
                    sc[mt][nt][e] = v;
                    mx[mt][e >> 1] = fmaxf(mx[mt][e >> 1], v);
                }
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float m = mx[mt][hf];
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                if (c4 == 0)
                    red_max[w * C::ROWS + 16 * mt + gid + 8 * hf] = m;
            }
        }
        __syncthreads();

        /* ---- online softmax: new max, rescale, P to shared memory ---- */
        float alpha[MT][2], muse[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int r = 16 * mt + gid + 8 * hf;
                float tm = red_max[r];
#pragma unroll
                for (int ww = 1; ww < XQA_WARPS; ww++)
                    tm = fmaxf(tm, red_max[ww * C::ROWS + r]);
                float mn = fmaxf(m_run[mt][hf], tm);
                float mu = mn == -INFINITY ? 0.0f : mn;
                alpha[mt][hf] = ex2(m_run[mt][hf] - mu);
                muse[mt][hf] = mu;
                m_run[mt][hf] = mn;
            }
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float ps[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    p[e] = ex2(sc[mt][nt][e] - muse[mt][e >> 1]);
                    ps[e >> 1] += p[e];
                }
                int col = 16 * w + 8 * nt + 2 * c4;
                int r = 16 * mt + gid;
                *reinterpret_cast<uint32_t *>(Ps + r * C::PSTR + col) = pack2(p[0], p[1], FP8);
                *reinterpret_cast<uint32_t *>(Ps + (r + 8) * C::PSTR + col) = pack2(p[2], p[3], FP8);
            }
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
                l_run[mt][hf] = l_run[mt][hf] * alpha[mt][hf] + ps[hf];
#pragma unroll
            for (int n = 0; n < C::NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o[mt][n][e] *= alpha[mt][e >> 1];
        }
        __syncthreads();

        /* ---- O += P V for head dims [dbase, dbase + hd/4) ---- */
#pragma unroll
        for (int kb = 0; kb < XQA_TILE / 16; kb++) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if (FP8) {
                    const uint16_t *pr = Ps + (16 * mt + gid) * C::PSTR + 16 * kb + 4 * c4;
                    uint2 lo = *reinterpret_cast<const uint2 *>(pr);
                    uint2 hi = *reinterpret_cast<const uint2 *>(pr + 8 * C::PSTR);
                    pa[mt][0] = lo.x, pa[mt][1] = hi.x, pa[mt][2] = lo.y, pa[mt][3] = hi.y;
                } else {
                    int row = 16 * mt + (lane & 7) + 8 * ((lane >> 3) & 1);
                    ldsm_x4(smem_u32(Ps + row * C::PSTR + 16 * kb + 8 * (lane >> 4)), pa[mt]);
                }
            }
            if (FP8) {
#pragma unroll
                for (int grp = 0; grp < C::NT / C::DPT; grp++) {
                    uint32_t wv[4];
                    int col = dbase + grp * 8 * C::DPT + C::DPT * gid;
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        int t = 16 * kb + 4 * c4 + i;
                        const uint8_t *p = vsp + kv_at<C, FP8>(t, col);
                        if (C::DPT == 4)
                            wv[i] = *reinterpret_cast<const uint32_t *>(p);
                        else if (C::DPT == 2)
                            wv[i] = *reinterpret_cast<const uint16_t *>(p);
                        else
                            wv[i] = *p;
                    }
#pragma unroll
                    for (int qd = 0; qd < C::DPT; qd++) {
                        const uint32_t sel = (uint32_t)(qd | ((qd + 4) << 4));
                        uint32_t T = __byte_perm(__byte_perm(wv[0], wv[1], sel), __byte_perm(wv[2], wv[3], sel),
                                                 0x5410u);
                        uint32_t b0 = e4m3_f16x2(T, false), b1 = e4m3_f16x2(T, true);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
                            mma16816<true>(o[mt][grp * C::DPT + qd], pa[mt], b0, b1);
                    }
                }
            } else if (C::NT >= 2) {
#pragma unroll
                for (int np = 0; np < C::NT / 2; np++) {
                    int mi = lane >> 3;
                    int t = 16 * kb + (lane & 7) + 8 * (mi & 1);
                    int dim = dbase + 16 * np + 8 * (mi >> 1);
                    uint32_t v[4];
                    ldsm_x4_t(vs + kv_at<C, FP8>(t, dim * 2), v);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma16816<false>(o[mt][2 * np], pa[mt], v[0], v[1]);
                        mma16816<false>(o[mt][2 * np + 1], pa[mt], v[2], v[3]);
                    }
                }
            } else {
                int t = 16 * kb + (lane & 7) + 8 * ((lane >> 3) & 1);
                uint32_t v[2];
                ldsm_x2_t(vs + kv_at<C, FP8>(t, dbase * 2), v);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    mma16816<false>(o[mt][0], pa[mt], v[0], v[1]);
            }
        }
    }

    /* ---- epilogue: row sums, O to shared memory (the ring is free now) ---- */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float l = l_run[mt][hf];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            if (c4 == 0) {
                int r = 16 * mt + gid + 8 * hf;
                red_l[w * C::ROWS + r] = l;
                if (w == 0)
                    s_m[r] = m_run[mt][hf];
            }
        }
    cp_async_wait<0>();
    __syncthreads();
    float *Os = reinterpret_cast<float *>(smem); /* [ROWS][HD] f32 */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < C::NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = 16 * mt + gid + 8 * (e >> 1);
                int cn = 2 * c4 + (e & 1);
                int dim = FP8 ? dbase + (n / C::DPT) * 8 * C::DPT + C::DPT * cn + (n % C::DPT) : dbase + 8 * n + cn;
                Os[r * HD + dim] = o[mt][n][e];
            }
    if (tid < C::ROWS) {
        float l = 0.0f;
#pragma unroll
        for (int ww = 0; ww < XQA_WARPS; ww++)
            l += red_l[ww * C::ROWS + tid];
        s_l[tid] = l;
    }
    __syncthreads();

    if (ns_eff == 1) {
        for (int i = tid; i < rows * (HD / 8); i += XQA_THREADS) {
            int r = i / (HD / 8), ch = i % (HD / 8), t = r / G, h = r % G;
            float l = s_l[r];
            float inv = l > 0.0f ? a.v_fac / l : 0.0f;
            float f[8];
#pragma unroll
            for (int u = 0; u < 8; u++)
                f[u] = Os[r * HD + ch * 8 + u] * inv;
            *reinterpret_cast<uint4 *>(a.out + ((int64_t)b * a.q_len + t) * a.ldo + (int64_t)(g * G + h) * HD +
                                       ch * 8) = f32_to_bf16x8(f);
        }
        return;
    }

    /* ---- split: partial (m, l, unnormalized O) to scratch; the last CTA of (b, g) merges ---- */
    const int64_t bg = (int64_t)b * a.n_kv + g;
    {
        float *ml = a.ml + ((bg * a.nb + x) * rows) * 2;
        float *op = a.opart + ((bg * a.nb + x) * rows) * HD;
        for (int i = tid; i < rows * (HD / 4); i += XQA_THREADS)
            reinterpret_cast<float4 *>(op)[i] = reinterpret_cast<const float4 *>(Os)[i];
        if (tid < rows) {
            ml[2 * tid] = s_m[tid];
            ml[2 * tid + 1] = s_l[tid];
        }
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned prev = atomicAdd(&a.sem[bg], 1u);
        int last = prev == (unsigned)(ns_eff - 1);
        if (last)
            atomicExch(&a.sem[bg], 0u); /* every other split has counted: reset for the next launch */
        s_last = last;
    }
    __syncthreads();
    if (!s_last)
        return;
    __threadfence();

    const float *ml0 = a.ml + (bg * a.nb * rows) * 2;
    const float *op0 = a.opart + (bg * a.nb * rows) * HD;
    if (tid < rows) { /* per row: global max and 1/sum */
        float M = -INFINITY;
        for (int sp = 0; sp < ns_eff; sp++)
            M = fmaxf(M, __ldcg(ml0 + (sp * rows + tid) * 2));
        float Ls = 0.0f;
        for (int sp = 0; sp < ns_eff; sp++) {
            float mi = __ldcg(ml0 + (sp * rows + tid) * 2);
            if (mi != -INFINITY)
                Ls += ex2(mi - M) * __ldcg(ml0 + (sp * rows + tid) * 2 + 1);
        }
        red_max[tid] = M;
        red_l[tid] = Ls > 0.0f ? a.v_fac / Ls : 0.0f;
    }
    __syncthreads();
    for (int i = tid; i < rows * (HD / 4); i += XQA_THREADS) {
        int r = i / (HD / 4), d4 = i % (HD / 4), t = r / G, h = r % G;
        float M = red_max[r];
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int sp = 0; sp < ns_eff; sp++) {
            float mi = __ldcg(ml0 + (sp * rows + r) * 2);
            if (mi == -INFINITY)
                continue;
            float wgt = ex2(mi - M);
            float4 v = __ldcg(reinterpret_cast<const float4 *>(op0 + ((int64_t)sp * rows + r) * HD) + d4);
            acc.x += wgt * v.x, acc.y += wgt * v.y, acc.z += wgt * v.z, acc.w += wgt * v.w;
        }
        float inv = red_l[r];
        __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
        __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
        uint2 pk;
        pk.x = *reinterpret_cast<uint32_t *>(&lo);
        pk.y = *reinterpret_cast<uint32_t *>(&hi);
        *reinterpret_cast<uint2 *>(a.out + ((int64_t)b * a.q_len + t) * a.ldo + (int64_t)(g * G + h) * HD + d4 * 4) =
            pk;
    }
}

#include "xqa_v2_kernel.cuh"

/* ---- host side ---- */

/* Kernel version: 2 (xqa_v2_kernel.cuh) unless GM_XQA_V=1 (read once) or xqa_set_version says
 * otherwise; v2 serves G * q_len <= 16 rows, v1 the rest. */
static int32_t g_xqa_ver; /* 0: not chosen yet */

extern "C" int32_t xqa_version(void)
{
    if (!g_xqa_ver) {
        const char *e = getenv("GM_XQA_V");
        g_xqa_ver = e && atoi(e) == 1 ? 1 : 2;
    }
    return g_xqa_ver;
}

extern "C" void xqa_set_version(int32_t v) { g_xqa_ver = v == 1 || v == 2 ? v : 0; }

static bool use_v2(int rows) { return xqa_version() == 2 && rows <= 16; }

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

typedef struct xqa_layout {
    size_t sem, ml, op, total;
} xqa_layout;

static xqa_layout scratch_layout(int64_t batch, int64_t n_kv, int64_t rows, int64_t hd, int64_t nb)
{
    xqa_layout l;
    l.sem = 0;
    l.ml = align256((size_t)(batch * n_kv) * sizeof(uint32_t));
    l.op = l.ml + align256((size_t)(batch * n_kv * nb * rows * 2) * sizeof(float));
    l.total = l.op + align256((size_t)(batch * n_kv * nb * rows * hd) * sizeof(float));
    return l;
}

extern "C" size_t xqa_scratch_bytes(int32_t batch, int32_t n_kv, int32_t n_heads, int32_t q_len, int32_t head_dim,
                                    int32_t nb_sub_seq)
{
    if (batch <= 0 || n_kv <= 0 || n_heads <= 0 || q_len <= 0 || head_dim <= 0 || nb_sub_seq <= 0)
        return 0;
    int64_t rows = (int64_t)(n_heads / n_kv) * q_len;
    return scratch_layout(batch, n_kv, rows, head_dim, nb_sub_seq).total;
}

typedef void (*xqa_fn)(const xqa_kargs);

/* Opt in to the kernel's dynamic shared memory (once per instantiation; one device per process). */
template <bool FP8, int HD, int MT>
static gm_status ensure_attr(void)
{
    static bool done = false;
    if (!done) {
        GM_CUDA_CHECK(cudaFuncSetAttribute(xqa_kernel<FP8, HD, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           xqa_cfg<FP8, HD, MT>::SMEM));
        done = true;
    }
    return GM_OK;
}

template <bool FP8, int HD, int NR>
static gm_status ensure_attr2(void)
{
    static bool done = false;
    if (!done) {
        GM_CUDA_CHECK(cudaFuncSetAttribute(xqa2_kernel<FP8, HD, NR>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           xq2_cfg<FP8, HD, NR>::SMEM));
        GM_CUDA_CHECK(cudaFuncSetAttribute(xqa2_kernel<FP8, HD, NR>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           100));
        done = true;
    }
    return GM_OK;
}

template <bool FP8, int HD, int NR>
static gm_status launch2_one(const xqa_kargs &k, int batch, int n_kv, cudaStream_t s)
{
    GM_CHECK((ensure_attr2<FP8, HD, NR>()));
    dim3 grid((unsigned)k.nb, (unsigned)n_kv, (unsigned)batch);
    xqa2_kernel<FP8, HD, NR><<<grid, XQ2_THREADS, xq2_cfg<FP8, HD, NR>::SMEM, s>>>(k);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

template <bool FP8, int NR>
static gm_status launch2_hd(const xqa_kargs &k, int hd, int batch, int n_kv, cudaStream_t s)
{
    switch (hd) {
    case 32: return launch2_one<FP8, 32, NR>(k, batch, n_kv, s);
    case 64: return launch2_one<FP8, 64, NR>(k, batch, n_kv, s);
    case 128: return launch2_one<FP8, 128, NR>(k, batch, n_kv, s);
    default: return launch2_one<FP8, 256, NR>(k, batch, n_kv, s);
    }
}

template <bool FP8, int NR>
static int smem2_of(int hd)
{
    switch (hd) {
    case 32: return xq2_cfg<FP8, 32, NR>::SMEM;
    case 64: return xq2_cfg<FP8, 64, NR>::SMEM;
    case 128: return xq2_cfg<FP8, 128, NR>::SMEM;
    default: return xq2_cfg<FP8, 256, NR>::SMEM;
    }
}

template <bool FP8, int HD, int MT>
static gm_status launch_one(const xqa_kargs &k, int batch, int n_kv, cudaStream_t s)
{
    typedef xqa_cfg<FP8, HD, MT> C;
    GM_CHECK((ensure_attr<FP8, HD, MT>()));
    dim3 grid((unsigned)k.nb, (unsigned)n_kv, (unsigned)batch);
    xqa_kernel<FP8, HD, MT><<<grid, XQA_THREADS, C::SMEM, s>>>(k);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

template <bool FP8, int MT>
static gm_status launch_hd(const xqa_kargs &k, int hd, int batch, int n_kv, cudaStream_t s)
{
    switch (hd) {
    case 32: return launch_one<FP8, 32, MT>(k, batch, n_kv, s);
    case 64: return launch_one<FP8, 64, MT>(k, batch, n_kv, s);
    case 128: return launch_one<FP8, 128, MT>(k, batch, n_kv, s);
    default: return launch_one<FP8, 256, MT>(k, batch, n_kv, s);
    }
}

template <bool FP8, int MT>
static int smem_of(int hd)
{
    switch (hd) {
    case 32: return xqa_cfg<FP8, 32, MT>::SMEM;
    case 64: return xqa_cfg<FP8, 64, MT>::SMEM;
    case 128: return xqa_cfg<FP8, 128, MT>::SMEM;
    default: return xqa_cfg<FP8, 256, MT>::SMEM;
    }
}

static gm_status check_params(const xqa_params *p)
{
    if (!p || !p->q || !p->out || !p->k_pool || !p->v_pool || !p->block_tables || !p->seq_lens)
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: a required pointer is NULL");
    if (p->head_dim != 32 && p->head_dim != 64 && p->head_dim != 128 && p->head_dim != 256)
        return gm_fail(GM_ERR_UNSUPPORTED, "xqa_decode: head_dim %d (supported: 32, 64, 128, 256)", p->head_dim);
    if (p->n_kv <= 0 || p->n_heads <= 0 || p->n_heads % p->n_kv)
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: %d query heads over %d KV heads", p->n_heads, p->n_kv);
    if (p->q_len < 1 || (p->n_heads / p->n_kv) * p->q_len > XQA_MAX_ROWS)
        return gm_fail(GM_ERR_UNSUPPORTED, "xqa_decode: group %d x q_len %d exceeds %d rows per KV head",
                       p->n_heads / p->n_kv, p->q_len, XQA_MAX_ROWS);
    if (p->block_size < 1 || p->bt_stride < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: block_size %d, bt_stride %d", p->block_size, p->bt_stride);
    if (p->nb_sub_seq < 1 || p->nb_sub_seq > XQA_MAX_SUB_SEQ)
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: nb_sub_seq %d outside 1..%d", p->nb_sub_seq,
                       XQA_MAX_SUB_SEQ);
    if (p->ldq % 8 || p->ldo % 8 || (uintptr_t)p->q % 16 || (uintptr_t)p->out % 16 || (uintptr_t)p->k_pool % 16 ||
        (uintptr_t)p->v_pool % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "xqa_decode: q/out/pool pointers must be 16-byte aligned and ldq %lld, "
                                           "ldo %lld multiples of 8",
                       (long long)p->ldq, (long long)p->ldo);
    if (p->kv_type != XQA_KV_BF16 && p->kv_type != XQA_KV_FP8)
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: kv_type %d", (int)p->kv_type);
    if (p->kv_type == XQA_KV_FP8 && !(p->kv_scale > 0.0f && isfinite(p->kv_scale)))
        return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: kv_scale %g", (double)p->kv_scale);
    if (p->nb_sub_seq > 1) {
        size_t need = xqa_scratch_bytes(p->batch, p->n_kv, p->n_heads, p->q_len, p->head_dim, p->nb_sub_seq);
        if (!p->scratch || p->scratch_bytes < need || (uintptr_t)p->scratch % 256)
            return gm_fail(GM_ERR_INVALID_ARG, "xqa_decode: scratch %p of %zu bytes (need %zu, 256-byte aligned)",
                           p->scratch, p->scratch_bytes, need);
    }
    return GM_OK;
}

extern "C" gm_status xqa_decode(const xqa_params *p, cudaStream_t s)
{
    GM_CHECK(check_params(p));
    if (p->batch <= 0)
        return GM_OK;
    int G = p->n_heads / p->n_kv;
    int rows = G * p->q_len;
    bool fp8 = p->kv_type == XQA_KV_FP8;
    float kvf = fp8 ? p->kv_scale * 256.0f : 1.0f; /* 256: the e4m3 -> f16 exponent offset */
    xqa_kargs k;
    k.q = (const bf16 *)p->q;
    k.ldq = p->ldq;
    k.out = (bf16 *)p->out;
    k.ldo = p->ldo;
    k.kp = (const uint8_t *)p->k_pool;
    k.vp = (const uint8_t *)p->v_pool;
    k.bt = p->block_tables;
    k.bt_stride = p->bt_stride;
    k.seq_lens = p->seq_lens;
    k.q_len = p->q_len;
    k.n_heads = p->n_heads;
    k.n_kv = p->n_kv;
    k.group = G;
    k.rows = rows;
    k.bs = p->block_size;
    k.bs_shift = -1;
    for (int sh = 0; sh < 31; sh++)
        if ((1 << sh) == p->block_size)
            k.bs_shift = sh;
    k.qk_log2 = p->scale * kvf * XQA_LOG2E;
    k.v_fac = kvf;
    k.nb = p->nb_sub_seq;
    xqa_layout l = scratch_layout(p->batch, p->n_kv, rows, p->head_dim, p->nb_sub_seq);
    uint8_t *sc = (uint8_t *)p->scratch;
    k.sem = sc ? (uint32_t *)(sc + l.sem) : NULL;
    k.ml = sc ? (float *)(sc + l.ml) : NULL;
    k.opart = sc ? (float *)(sc + l.op) : NULL;
    if (use_v2(rows)) {
        if (fp8)
            return rows <= 8 ? launch2_hd<true, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                             : launch2_hd<true, 2>(k, p->head_dim, p->batch, p->n_kv, s);
        return rows <= 8 ? launch2_hd<false, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                         : launch2_hd<false, 2>(k, p->head_dim, p->batch, p->n_kv, s);
    }
    int mt = rows <= 16 ? 1 : 2;
    if (fp8)
        return mt == 1 ? launch_hd<true, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                       : launch_hd<true, 2>(k, p->head_dim, p->batch, p->n_kv, s);
    return mt == 1 ? launch_hd<false, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                   : launch_hd<false, 2>(k, p->head_dim, p->batch, p->n_kv, s);
}

template <bool FP8, int HD, int MT>
static int occ_one(void)
{
    int n = 0;
    if ((ensure_attr<FP8, HD, MT>()) != GM_OK ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, xqa_kernel<FP8, HD, MT>, XQA_THREADS,
                                                      xqa_cfg<FP8, HD, MT>::SMEM) != cudaSuccess) {
        cudaGetLastError();
        gm_clear_error();
        return 1;
    }
    return n > 0 ? n : 1;
}

template <bool FP8, int HD, int NR>
static int occ2_one(void)
{
    int n = 0;
    if ((ensure_attr2<FP8, HD, NR>()) != GM_OK ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, xqa2_kernel<FP8, HD, NR>, XQ2_THREADS,
                                                      xq2_cfg<FP8, HD, NR>::SMEM) != cudaSuccess) {
        cudaGetLastError();
        gm_clear_error();
        return 1;
    }
    return n > 0 ? n : 1;
}

template <bool FP8, int NR>
static int occ2_hd(int hd)
{
    switch (hd) {
    case 32: return occ2_one<FP8, 32, NR>();
    case 64: return occ2_one<FP8, 64, NR>();
    case 128: return occ2_one<FP8, 128, NR>();
    default: return occ2_one<FP8, 256, NR>();
    }
}

template <bool FP8, int MT>
static int occ_hd(int hd)
{
    switch (hd) {
    case 32: return occ_one<FP8, 32, MT>();
    case 64: return occ_one<FP8, 64, MT>();
    case 128: return occ_one<FP8, 128, MT>();
    default: return occ_one<FP8, 256, MT>();
    }
}

extern "C" int32_t xqa_ctas_per_sm(const xqa_params *p)
{
    if (!p || p->n_kv <= 0 || p->n_heads <= 0 || p->q_len <= 0)
        return 1;
    int rows = (p->n_heads / p->n_kv) * p->q_len;
    if (rows > XQA_MAX_ROWS)
        return 1;
    if (use_v2(rows)) {
        if (p->kv_type == XQA_KV_FP8)
            return rows <= 8 ? occ2_hd<true, 1>(p->head_dim) : occ2_hd<true, 2>(p->head_dim);
        return rows <= 8 ? occ2_hd<false, 1>(p->head_dim) : occ2_hd<false, 2>(p->head_dim);
    }
    int mt = rows <= 16 ? 1 : 2;
    if (p->kv_type == XQA_KV_FP8)
        return mt == 1 ? occ_hd<true, 1>(p->head_dim) : occ_hd<true, 2>(p->head_dim);
    return mt == 1 ? occ_hd<false, 1>(p->head_dim) : occ_hd<false, 2>(p->head_dim);
}

extern "C" int32_t xqa_pick_sub_seq(const xqa_params *p, int32_t max_ctx, int32_t n_sm)
{
    if (!p)
        return 1;
    int64_t ctas = (int64_t)(p->batch > 0 ? p->batch : 1) * (p->n_kv > 0 ? p->n_kv : 1);
    int64_t tiles = (max_ctx + XQA_TILE - 1) / XQA_TILE;
    int64_t slots = (int64_t)n_sm * xqa_ctas_per_sm(p);
    int64_t nb = slots / ctas;
    if (nb > tiles / 2)
        nb = tiles / 2;
    if (nb < 1)
        nb = 1;
    if (nb > XQA_MAX_SUB_SEQ)
        nb = XQA_MAX_SUB_SEQ;
    return (int32_t)nb;
}

/* Shared memory one launch of these parameters uses (benchmarks print it). */
extern "C" int32_t xqa_smem_bytes(int32_t head_dim, int32_t rows, int32_t fp8)
{
    if (use_v2(rows)) {
        if (fp8)
            return rows <= 8 ? smem2_of<true, 1>(head_dim) : smem2_of<true, 2>(head_dim);
        return rows <= 8 ? smem2_of<false, 1>(head_dim) : smem2_of<false, 2>(head_dim);
    }
    int mt = rows <= 16 ? 1 : 2;
    if (fp8)
        return mt == 1 ? smem_of<true, 1>(head_dim) : smem_of<true, 2>(head_dim);
    return mt == 1 ? smem_of<false, 1>(head_dim) : smem_of<false, 2>(head_dim);
}
