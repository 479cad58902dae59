/* attn_prefill_hopper_e4m3.cu - the Hopper prefill kernel over FP8 (e4m3) KV pools with both GEMMs on the
 * e4m3 tensor cores (QGMMA: wgmma .e4m3, twice the f16 rate), the FlashAttention-3 FP8 scheme on our paged
 * cache. Work list, masks, online softmax and the paged tensor copies are those of attn_prefill_hopper.cu
 * (shared in attn_prefill_hopper_impl.cuh); what differs, every layout assumption listed:
 *
 * Block: 384 threads, one per SM, persistent over the work list (items of 128 query rows).
 *   warpgroup 0 (setmaxnreg 40): warp 0 waits on the empty barriers and its lane 0 issues the tensor copies
 *     of K and V tiles: the pool's e4m3 rows as they are (a uint8 2D map, boxes of 128 codes = 128 bytes x R
 *     rows, R = gcd(bs, 128) a multiple of 8; 128-byte swizzle). Warps 1-3 (96 threads) transpose each V
 *     tile into V^T, the K-major B operand QGMMA needs (8-bit operands have no transposed form), zeroing the
 *     keys at and past kv_len; they walk no work list: with each V copy the copy warp posts the tile's count
 *     of keys below kv_len in shared memory (read after the Vfull wait), and -1 after the last tile.
 *   warpgroups 1, 2 (setmaxnreg 232): 64 query rows each.
 * Key tiles: BN = 128 keys, visited from the diagonal tile down, as in the bf16 kernel.
 * Q: each consumer warpgroup reads its 64 rows of q (bf16) itself, once per item: the row's scale is
 *   sq = amax / 448 over its head_dim values, codes = e4m3(q * (448 / amax)) (round to nearest even,
 *   saturating), written into Q8 (K-major, 128-byte rows, the copy engine's SW128 pattern); sq joins the
 *   row's score multiplier (with the softmax scale and kv_scale). Rows past the item's rows are zeros.
 * S = Q K^T: HD/32 QGMMA m64n128k32 per warpgroup, A = Q8, B = the K tile (both K-major SW128; k-step ks:
 *   panel ks / 4, start + 32 (ks % 4) bytes; SBO 1024).
 * P: exp2 values times 2^8 (the largest is 256 < 448, so e4m3's normal range reaches 2^-14 of the row's
 *   maximum), rounded to e4m3 in registers. The A fragment of m64nNk32 gives thread (g, t) keys 4t..4t+3
 *   and 16+4t..16+4t+3 of each 32-key step; its S accumulator holds keys 2t, 2t+1, 8+2t, 9+2t (+16): the
 *   thread packs its own values in that order, so logical key 16h + 4t + j of P stands for physical key
 *   16h + 2t + (j & 1) + 8 (j >> 1). The transposer applies the same permutation:
 *   V^T[d][16h + 4t + j] = V[16h + 2t + (j & 1) + 8 (j >> 1)][d].
 * O += P V: BN/32 QGMMA m64nHDk32, A = P (registers), B = V^T (K-major SW128: row d at d * 128 bytes, 8-row
 *   groups 1024 apart, k-step kk: start + 32 kk bytes). l sums the f32 P values (before rounding);
 *   O * kv_scale / l at the end.
 * Transposer: unit = (16-key group h, t, 4 head-dim values d..d+3): four 32-bit loads (keys
 *   16h + 2t + {0, 1, 8, 9}, bytes d..d+3 of the SW128 V tile), a 4x4 byte transpose (8 PRMT), four 32-bit
 *   stores (rows d..d+3 of V^T, bytes 16h + 4t..+3). Lane bits: h bit 0, t, d/4 bits 0-1; the unit's other
 *   bits per warp step: at most 2-way bank conflicts on both sides (checked by enumeration).
 * Shared memory (hd 256): Q8 32 KB, K 2 x 32 KB, V 2 x 32 KB (as copied), V^T 2 x 32 KB, row scales 512 B,
 *   12 mbarriers: Kfull[2] (1 + tx), Kempty[2] (8: lane 0 of each
 *   consumer warp), Vfull[2] (1 + tx), Vempty[2] (96 transposer threads), Tfull[2] (96), Tempty[2] (8).
 *   K, V and V^T of tile counter it share stage it % 2; full barriers waited with parity (it / 2) & 1, empty
 *   ones with the opposite. Named barriers HP_BAR_QCONV + wg (128 threads): a consumer warpgroup's Q8 rows and
 *   scales written; before the next item's, its previous scales read.
 * Registers: head_dim 256 runs FA3's split, 24 (producer) / 240 (consumers); the copy warp then keeps a few
 *   words of its per-tile loop state in local memory (40 bytes); the transposer and the consumers none.
 * tests/prefill_hopper_layout.py mirrors the index arithmetic of Q8, the copies, the transposer, the
 * descriptors and the P fragment, and checks S and O exactly: keep the two in step. */
#include <atomic>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "attn_prefill_hopper_impl.cuh"
#include "cuda_check.h"
#include "launch.cuh"
#include "sm90_async.cuh"

namespace gm_hp {
namespace {

constexpr int H8_BN = 128;

template <int HD> struct h8_cfg {
    static constexpr int Q_BYTES = HP_BM * HD;  /* Q8: [HD/128 panels][128 rows][128 bytes] */
    static constexpr int KV_BYTES = H8_BN * HD; /* one K, V or V^T stage */
    static constexpr int CH_Q = HP_BM * 128;    /* bytes between Q8 panels */
    static constexpr int CH_KV = H8_BN * 128;   /* bytes between K (and V) panels */
    static constexpr int OFF_K = Q_BYTES;
    static constexpr int OFF_V = OFF_K + HP_STAGES * KV_BYTES;
    static constexpr int OFF_T = OFF_V + HP_STAGES * KV_BYTES;
    static constexpr int OFF_SC = OFF_T + HP_STAGES * KV_BYTES; /* [128] f32 row scales of Q8 */
    static constexpr int OFF_BAR = OFF_SC + HP_BM * 4;     /* 12 mbarriers, then [2] int32 keys valid per V stage */
    static constexpr int SMEM = OFF_BAR + 128 + 1024;      /* + alignment slack */
    /* head_dim 256: FA3's split (at 232 the consumers' O, S and P leave ptxas too few registers and it
     * serializes the wgmmas, warning C7512; at 24 the producer keeps some loop state in local memory) */
    static constexpr int LOAD_REGS = HD == 256 ? 24 : 40, MMA_REGS = HD == 256 ? 240 : 232;
    static_assert(HD == 128 || HD == 256, "head_dim");
    static_assert(SMEM + 1024 <= HP_SMEM_MAX, "227 KB of shared memory per block (ptxas reports 1 KB static)");
    static_assert(LOAD_REGS * 128 + MMA_REGS * 256 <= 168 * HP_THREADS, "the registers the block starts with");
};

/* mbarriers: Kfull, Kempty, Vfull, Vempty, Tfull, Tempty, two stages each. */
enum { H8_KF = 0, H8_KE, H8_VF, H8_VE, H8_TF, H8_TE };
__device__ __forceinline__ uint32_t h8_bar(uint32_t b, int kind, int s) { return b + 16 * kind + 8 * s; }

/* ------------------------------------------------------------------ producer: copies */

/* Warp 0: K(n) and V(n) of every tile, the consumers' order (the last tile first). With each V copy the
 * leader posts the tile's count of keys below kv_len for the transposer (vvalid[stage], published by the
 * arrival on Vfull); after the last tile, -1 and a plain arrival: the transposer stops there. */
template <int HD> __device__ void h8_produce_tma(const hp_params &p, uint32_t sbase, uint32_t bars, int32_t *vvalid)
{
    using C = h8_cfg<HD>;
    const bool leader = (threadIdx.x & 31) == 0;
    int it = 0;
    hp_work k;
    for (int w = hp_work_next<H8_BN>(p, blockIdx.x, k); w >= 0; w = hp_work_next<H8_BN>(p, w + gridDim.x, k)) {
        const int32_t *bt = p.block_tables + (int64_t)k.seq * p.bt_stride;
        for (int n = k.n_hi - 1; n >= k.n_lo; n--, it++) {
            const int s = it % HP_STAGES;
            const uint32_t ph = ((it / HP_STAGES) & 1) ^ 1;
            sm90_mbar_wait(h8_bar(bars, H8_KE, s), ph);
            if (leader) {
                sm90_mbar_arrive_tx(h8_bar(bars, H8_KF, s), C::KV_BYTES);
                hp_tma_kv<HD / 128, H8_BN, 128>(p, &p.kmap, bt, k, n, sbase + C::OFF_K + s * C::KV_BYTES,
                                                h8_bar(bars, H8_KF, s));
            }
            sm90_mbar_wait(h8_bar(bars, H8_VE, s), ph);
            if (leader) {
                vvalid[s] = k.kv_len - n * H8_BN;
                sm90_mbar_arrive_tx(h8_bar(bars, H8_VF, s), C::KV_BYTES);
                hp_tma_kv<HD / 128, H8_BN, 128>(p, &p.vmap, bt, k, n, sbase + C::OFF_V + s * C::KV_BYTES,
                                                h8_bar(bars, H8_VF, s));
            }
            __syncwarp();
        }
    }
    const int s = it % HP_STAGES; /* the end, in the next V stage */
    sm90_mbar_wait(h8_bar(bars, H8_VE, s), ((it / HP_STAGES) & 1) ^ 1);
    if (leader) {
        vvalid[s] = -1;
        sm90_mbar_arrive(h8_bar(bars, H8_VF, s));
    }
    __syncwarp();
}

/* ------------------------------------------------------------------ producer: V transposer */

/* 4x4 bytes: out[i] byte j = x[j] byte i. */
__device__ __forceinline__ void h8_transpose4(const uint32_t (&x)[4], uint32_t (&o)[4])
{
    const uint32_t a = __byte_perm(x[0], x[1], 0x5140), b = __byte_perm(x[0], x[1], 0x7362);
    const uint32_t c = __byte_perm(x[2], x[3], 0x5140), d = __byte_perm(x[2], x[3], 0x7362);
    o[0] = __byte_perm(a, c, 0x5410);
    o[1] = __byte_perm(a, c, 0x7632);
    o[2] = __byte_perm(b, d, 0x5410);
    o[3] = __byte_perm(b, d, 0x7632);
}

/* Warps 1-3 (tt = 0..95): V tile of stage s (keys x HD, SW128 panels of 128 codes) -> V^T (HD rows x 128
 * logical keys, SW128), keys >= valid as zeros. Warp step q (warp wq takes q = wq, wq + 3, ...) and lane give
 * the unit: h = lane bit 0 | (q % 4) * 2, t = lane bits 1-2, d = 4 (lane bits 3-4) + 16 (q / 4). The swizzle
 * phases are per-thread constants: a source key 16h + 2t + c has key % 8 = 2t + c % 2, a V^T row d + i has
 * row % 8 = (4 (lane bits 3-4) + i) % 8. */
template <int HD> __device__ __forceinline__ void h8_transpose_tile(const uint8_t *src, uint8_t *dst, int valid, int tt)
{
    const int wq = tt >> 5, lane = tt & 31;
    const int hl = lane & 1, t = (lane >> 1) & 3, d4 = 4 * ((lane >> 3) & 3);
#pragma unroll 1
    for (int q = wq; q < HD / 4; q += 3) {
        const int h = hl | ((q & 3) << 1), dch = (q >> 2) & 7, d = d4 + 16 * (q >> 2);
        const uint8_t *sp = src + (q >> 5) * (H8_BN * 128) + (16 * h + 2 * t) * 128 + d4;
        uint32_t x[4], o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = (j & 1) + 8 * (j >> 1); /* keys 16h + 2t + {0, 1, 8, 9} */
            x[j] = 16 * h + 2 * t + c < valid
                       ? *reinterpret_cast<const uint32_t *>(sp + c * 128 + ((dch ^ (2 * t + (j & 1))) << 4))
                       : 0u;
        }
        h8_transpose4(x, o);
        uint8_t *dp = dst + d * 128 + 4 * t;
#pragma unroll
        for (int i = 0; i < 4; i++)
            *reinterpret_cast<uint32_t *>(dp + i * 128 + ((h ^ ((d4 + i) & 7)) << 4)) = o[i];
    }
}

/* Warps 1-3: every V tile the copy warp posts, until it posts -1 (the transposer walks no work list). */
template <int HD> __device__ void h8_transpose(uint8_t *smem, uint32_t bars, const int32_t *vvalid)
{
    using C = h8_cfg<HD>;
    const int tt = threadIdx.x - 32;
    for (int it = 0;; it++) {
        const int s = it % HP_STAGES;
        const uint32_t ph = (it / HP_STAGES) & 1;
        sm90_mbar_wait(h8_bar(bars, H8_VF, s), ph);
        const int valid = *(volatile const int32_t *)&vvalid[s];
        if (valid < 0)
            return;
        sm90_mbar_wait(h8_bar(bars, H8_TE, s), ph ^ 1);
        h8_transpose_tile<HD>(smem + C::OFF_V + s * C::KV_BYTES, smem + C::OFF_T + s * C::KV_BYTES, valid, tt);
        sm90_fence_proxy_async(); /* V^T is read by the tensor cores next */
        sm90_mbar_arrive(h8_bar(bars, H8_TF, s));
        sm90_mbar_arrive(h8_bar(bars, H8_VE, s)); /* done reading V: the next copy may land */
    }
}

/* ------------------------------------------------------------------ consumers */

/* 16 bf16 (two 16-byte pieces) -> 16 e4m3 codes of x * inv. */
__device__ __forceinline__ uint4 h8_quant16(const uint4 &a, const uint4 &b, float inv)
{
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    uint32_t o[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[2 * i]));
        const float2 f1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[2 * i + 1]));
        const uint32_t c0 = __nv_cvt_float2_to_fp8x2(make_float2(f0.x * inv, f0.y * inv), __NV_SATFINITE, __NV_E4M3);
        const uint32_t c1 = __nv_cvt_float2_to_fp8x2(make_float2(f1.x * inv, f1.y * inv), __NV_SATFINITE, __NV_E4M3);
        o[i] = (c0 & 0xFFFFu) | (c1 << 16);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

__device__ __forceinline__ float h8_amax16(const uint4 &a, const uint4 &b)
{
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[i]));
        m = fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
    }
    return m;
}

/* This warpgroup's 64 rows of the item's Q tile -> Q8 codes and row scales sc[tile row] = amax / 448 (rows
 * past the item's rows: zeros), published to the async proxy and to the warpgroup. Thread t reads 16 values
 * (32 bytes) of row t / (HD/16) + pass * (128 / (HD/16)); the row's HD/16 threads are adjacent lanes. */
template <int HD>
__device__ void h8_quantize_q(const hp_params &p, const hp_work &k, uint8_t *smem, float *sc, int wg, int t)
{
    using C = h8_cfg<HD>;
    constexpr int TPR = HD / 16, RPP = 128 / TPR, PASSES = 64 / RPP;
    const int sub = t % TPR, e0 = sub * 16;
#pragma unroll 1
    for (int ps = 0; ps < PASSES; ps++) {
        const int row = wg * 64 + ps * RPP + t / TPR; /* tile row */
        uint4 a = make_uint4(0u, 0u, 0u, 0u), b = a;
        if (row < k.rows) {
            const uint4 *src =
                reinterpret_cast<const uint4 *>(p.q + (int64_t)(k.qrow0 + row) * p.ldq + (int64_t)k.head * HD + e0);
            a = src[0], b = src[1];
        }
        float amax = h8_amax16(a, b);
#pragma unroll
        for (int o = 1; o < TPR; o <<= 1)
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float inv = amax > 0.0f ? 448.0f / amax : 0.0f;
        if (sub == 0)
            sc[row] = amax / 448.0f;
        *reinterpret_cast<uint4 *>(smem + (e0 >> 7) * C::CH_Q + row * 128 + ((((e0 & 127) >> 4) ^ (row & 7)) << 4)) =
            h8_quant16(a, b, inv);
    }
    sm90_fence_proxy_async();
    sm90_bar_sync(HP_BAR_QCONV + wg, 128);
}

/* S = Q8 K^T for this warpgroup's 64 rows: issued and committed. */
template <int HD> __device__ __forceinline__ void h8_qk(float (&S)[H8_BN / 2], uint32_t q_wg, uint32_t k_stage)
{
    using C = h8_cfg<HD>;
    const uint64_t dq = sm90_desc(q_wg, 16, 1024), dk = sm90_desc(k_stage, 16, 1024);
    sm90_fence_regs(S);
    sm90_wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < HD / 32; ks++) {
        const uint32_t oq = (ks >> 2) * C::CH_Q + (ks & 3) * 32, ok = (ks >> 2) * C::CH_KV + (ks & 3) * 32;
        sm90_qss_n128(S, dq + (oq >> 4), dk + (ok >> 4), ks > 0);
    }
    sm90_wgmma_commit();
    sm90_fence_regs(S);
}

/* O += P V (P: e4m3 registers of the previous softmax, B = V^T of stage t_stage): issued and committed. */
template <int HD>
__device__ __forceinline__ void h8_pv(float (&O)[HD / 2], uint32_t (&P)[H8_BN / 8], uint32_t t_stage)
{
    const uint64_t dt = sm90_desc(t_stage, 16, 1024);
    sm90_fence_regs(O);
    sm90_fence_regs(P);
    sm90_wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < H8_BN / 32; kk++)
        sm90_qrs<HD>(O, &P[4 * kk], dt + ((kk * 32) >> 4), 1);
    sm90_wgmma_commit();
    sm90_fence_regs(O);
    sm90_fence_regs(P);
}

__device__ __forceinline__ uint32_t h8_pack4(float a, float b, float c, float d)
{
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
    return (lo & 0xFFFFu) | (hi << 16);
}

/* S (exp2 values) -> the A fragments of the BN/32 k-steps (the key order in the header comment). */
__device__ __forceinline__ void h8_pack_p(const float (&S)[H8_BN / 2], uint32_t (&P)[H8_BN / 8])
{
#pragma unroll
    for (int kk = 0; kk < H8_BN / 32; kk++) {
        const float *s = &S[16 * kk];
        P[4 * kk] = h8_pack4(s[0], s[1], s[4], s[5]);      /* row g, keys 2t, 2t+1, 8+2t, 9+2t */
        P[4 * kk + 1] = h8_pack4(s[2], s[3], s[6], s[7]);  /* row g + 8 */
        P[4 * kk + 2] = h8_pack4(s[8], s[9], s[12], s[13]); /* row g, the same + 16 */
        P[4 * kk + 3] = h8_pack4(s[10], s[11], s[14], s[15]);
    }
}

template <int HD>
__device__ __forceinline__ void h8_pv_issue(float (&O)[HD / 2], const float (&alpha)[2], uint32_t (&P)[H8_BN / 8],
                                            uint32_t bars, int sv, uint32_t phv, uint32_t sbase)
{
    hp_rescale<HD>(O, alpha);
    sm90_mbar_wait(h8_bar(bars, H8_TF, sv), phv);
    h8_pv<HD>(O, P, sbase + h8_cfg<HD>::OFF_T + sv * h8_cfg<HD>::KV_BYTES);
}

template <int HD> __device__ void h8_consume(const hp_params &p, uint8_t *smem, uint32_t bars)
{
    using C = h8_cfg<HD>;
    constexpr int BN = H8_BN;
    const int ct = threadIdx.x - 128, wg = ct >> 7, warp = (ct >> 5) & 3, lane = ct & 31, tq = lane & 3;
    const int row_a = wg * 64 + warp * 16 + (lane >> 2); /* tile row of d[4i], d[4i+1]; + 8 for the others */
    const uint32_t sbase = sm90_smem(smem), q_wg = sbase + wg * 64 * 128;
    float O[HD / 2], S[BN / 2], m[2], l[2], alpha[2];
    uint32_t P[BN / 8];
    int it = 0, item = 0;
    hp_work k;
    for (int w = hp_work_next<BN>(p, blockIdx.x, k); w >= 0; w = hp_work_next<BN>(p, w + gridDim.x, k), item++) {
        const int pos0 = k.sp + k.r0 + row_a;
        float *sc = reinterpret_cast<float *>(smem + C::OFF_SC);
        if (item > 0) /* every thread of the warpgroup has read the previous item's scales */
            sm90_bar_sync(HP_BAR_QCONV + wg, 128);
        h8_quantize_q<HD>(p, k, smem, sc, wg, ct & 127);
        const float qs[2] = {sc[row_a], sc[row_a + 8]}; /* the rows' q scales */

        /* the last key tile (diagonal, masked): S, softmax, P; O starts at zero */
        int n = k.n_hi - 1, s = it % HP_STAGES;
        uint32_t ph = (it / HP_STAGES) & 1;
        sm90_mbar_wait(h8_bar(bars, H8_KF, s), ph);
        h8_qk<HD>(S, q_wg, sbase + C::OFF_K + s * C::KV_BYTES);
        sm90_wgmma_wait<0>();
        sm90_fence_regs(S);
        hp_release(h8_bar(bars, H8_KE, s), lane);
        m[0] = m[1] = -INFINITY;
        l[0] = l[1] = 0.0f;
        hp_softmax<BN, true, true>(p, S, m, l, alpha, n * BN, pos0, k.kv_len, tq, qs);
        h8_pack_p(S, P);
#pragma unroll
        for (int i = 0; i < HD / 2; i++)
            O[i] = 0.0f;
        int sv = s;
        uint32_t phv = ph;
        it++;

        /* the other tiles: S(n) and P(n+1) V(n+1) in flight together */
        for (n = k.n_hi - 2; n >= k.n_lo; n--, it++) {
            s = it % HP_STAGES;
            ph = (it / HP_STAGES) & 1;
            sm90_mbar_wait(h8_bar(bars, H8_KF, s), ph);
            h8_qk<HD>(S, q_wg, sbase + C::OFF_K + s * C::KV_BYTES);
            h8_pv_issue<HD>(O, alpha, P, bars, sv, phv, sbase);
            sm90_wgmma_wait<1>();
            sm90_fence_regs(S);
            hp_release(h8_bar(bars, H8_KE, s), lane);
            const int j0 = n * BN;
            const bool mask = j0 + BN - 1 > k.sp + k.r0 || (p.window > 0 && j0 <= k.sp + k.r0 + HP_BM - 1 - p.window);
            if (mask)
                hp_softmax<BN, true, true>(p, S, m, l, alpha, j0, pos0, k.kv_len, tq, qs);
            else
                hp_softmax<BN, false, true>(p, S, m, l, alpha, j0, pos0, k.kv_len, tq, qs);
            sm90_wgmma_wait<0>();
            sm90_fence_regs(O);
            sm90_fence_regs(P);
            hp_release(h8_bar(bars, H8_TE, sv), lane);
            h8_pack_p(S, P);
            sv = s;
            phv = ph;
        }
        h8_pv_issue<HD>(O, alpha, P, bars, sv, phv, sbase);
        sm90_wgmma_wait<0>();
        sm90_fence_regs(O);
        hp_release(h8_bar(bars, H8_TE, sv), lane);

        /* O * kv_scale / l, bf16, rows of this sequence only */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lt = l[r];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const float inv = lt > 0.0f ? p.out_mul / lt : 0.0f;
            const int row = row_a + 8 * r;
            if (row < k.rows) {
                __nv_bfloat16 *orow = p.out + (int64_t)(k.qrow0 + row) * p.ldo + (int64_t)k.head * HD + 2 * tq;
#pragma unroll
                for (int i = 0; i < HD / 8; i++)
                    *reinterpret_cast<__nv_bfloat162 *>(orow + 8 * i) =
                        __floats2bfloat162_rn(O[4 * i + 2 * r] * inv, O[4 * i + 2 * r + 1] * inv);
            }
        }
    }
}

template <int HD>
__global__ void __launch_bounds__(HP_THREADS, 1) h8_prefill_kernel(const __grid_constant__ hp_params p)
{
    using C = h8_cfg<HD>;
    extern __shared__ __align__(128) uint8_t h8_smem_raw[];
    uint8_t *smem = h8_smem_raw + ((1024u - (sm90_smem(h8_smem_raw) & 1023u)) & 1023u);
    const uint32_t sbase = sm90_smem(smem), bars = sbase + C::OFF_BAR;
    if (threadIdx.x == 0) {
        for (int s = 0; s < HP_STAGES; s++) {
            sm90_mbar_init(h8_bar(bars, H8_KF, s), 1);
            sm90_mbar_init(h8_bar(bars, H8_KE, s), 8);
            sm90_mbar_init(h8_bar(bars, H8_VF, s), 1);
            sm90_mbar_init(h8_bar(bars, H8_VE, s), 96);
            sm90_mbar_init(h8_bar(bars, H8_TF, s), 96);
            sm90_mbar_init(h8_bar(bars, H8_TE, s), 8);
        }
        sm90_mbar_fence_init();
    }
    __syncthreads();
    pdl_wait();
    int32_t *vvalid = reinterpret_cast<int32_t *>(smem + C::OFF_BAR + 96);
    if (threadIdx.x < 128) {
        sm90_reg_dealloc<C::LOAD_REGS>();
        if (threadIdx.x < 32)
            h8_produce_tma<HD>(p, sbase, bars, vvalid);
        else
            h8_transpose<HD>(smem, bars, vvalid);
    } else {
        sm90_reg_alloc<C::MMA_REGS>();
        h8_consume<HD>(p, smem, bars);
    }
}

template <int HD> gm_status h8_launch(const hp_params &prm, int grid, cudaStream_t s)
{
    using C = h8_cfg<HD>;
    static std::atomic<int> attr_set(0); /* per instantiation: raise the dynamic shared-memory limit once */
    if (!attr_set.load()) {
        GM_CUDA_CHECK(
            cudaFuncSetAttribute(h8_prefill_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
        attr_set.store(1);
    }
    GM_CUDA_CHECK(gm_launch(h8_prefill_kernel<HD>, dim3((unsigned)grid), dim3(HP_THREADS), (size_t)C::SMEM, s, prm));
    return GM_OK;
}

} // namespace

gm_status hp_e4m3_launch(const hp_params &prm, int32_t hd, int grid, cudaStream_t s)
{
    if (hd == 256)
        return h8_launch<256>(prm, grid, s);
    if (hd == 128)
        return h8_launch<128>(prm, grid, s);
    return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_prefill_hopper (e4m3): head_dim %d (128 or 256)", hd);
}

} // namespace gm_hp
