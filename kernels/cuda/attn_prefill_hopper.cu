/* attn_prefill_hopper.cu - causal prefill attention over the paged KV cache on Hopper (sm_90a):
 * the FlashAttention-3 design (warp specialisation, TMA, wgmma, intra-warpgroup overlap of the
 * softmax with both GEMMs), written for our cache layout. Not yet run on a GPU when written:
 * every layout assumption is listed here so that a failure can be traced to one of them.
 *
 * Block: 384 threads, one block per SM, persistent over a static work list.
 *   warpgroup 0 (threads 0..127): producer, setmaxnreg down to 40 (bf16) / 56 (FP8) registers.
 *     bf16 pools: warp 0 waits on the barriers, its lane 0 issues every tensor copy (TMA); the
 *     other three warps exit.
 *     FP8 pools: thread 0 starts bulk copies (cp.async.bulk, one per run of keys inside a page)
 *     of the tile's e4m3 rows into a staging buffer; then all 128 threads convert them exactly to
 *     f16 (cvt.rn.f16x2.e4m3x2) into the same swizzled layout the copy engine writes, then
 *     fence.proxy.async + mbarrier arrive (128 arrivals per phase). Q still comes by TMA.
 *   warpgroups 1, 2 (threads 128..383): consumers, 64 query rows each (rows 0..63, 64..127 of
 *     the 128-row tile), setmaxnreg up to 232 (bf16) / 224 (FP8). 168 registers per thread at
 *     launch (__launch_bounds__(384, 1)): 128 * 40 + 256 * 232 = 128 * 56 + 256 * 224 = 168 * 384.
 * Work item = (sequence, query head, 128-row query tile); items are numbered heaviest tile
 *   first (tile index descending, then sequence, then head so that the heads sharing a KV head
 *   run side by side) and block b takes items b, b + grid, ... Items past a sequence's n_new
 *   are skipped by producer and consumers alike (they walk the same list).
 * Key tiles of BN keys (BN = 80 for head_dim 256, 64 with FP8, 128 for 128) are visited from the last
 *   (diagonal) tile down to the first one the window allows, as FA3 does: the masked tiles come
 *   first, the rest run unmasked.
 *
 * Shared memory (dynamic, base rounded up to 1024 bytes; every tile 1024-aligned):
 *   Q  [HD/64 panels][128 rows][64 cols] bf16 (f16 after the FP8 kernels convert it), 128-byte
 *      rows, 128-byte swizzle: panel stride 128*128 bytes; consumer wg's rows start at wg*8192.
 *   K[s], V[s], s < 2 stages: [HD/64 panels][BN keys][64 cols], panel stride BN*128 bytes.
 *   FP8 only: staging [BN keys][HD] e4m3 for K, then for V (plain rows, bulk-copy targets).
 *   11 mbarriers: Qfull (1 arrival + tx), Kfull[2], Vfull[2] (1 + tx with TMA, 128 with the FP8
 *   producer), Kempty[2], Vempty[2] (8 arrivals: lane 0 of each consumer warp after its wgmma
 *   wait), FP8 staging K, V (1 + tx). Named barriers: 1 = Q empty (256 consumer arrivals +
 *   producer warp 0 syncs, 288), 2 = V tail zeroed (256 consumers), 3 = FP8 staging free (the
 *   128 producer threads), 4, 5 = Q converted to f16 (FP8, 128 per consumer warpgroup).
 *   hd 256, BN 80: Q 64 KB + 2 x (K 40 KB + V 40 KB) = 224 KB + barriers (limit 227 KB);
 *   FP8, BN 64: Q 64 KB + 2 x (32 + 32) KB + staging 2 x 16 KB = 224 KB.
 * Phases: tile counter it (per block, over all items; K and V of tile it share stage it % 2):
 *   full barriers are waited with parity (it / 2) & 1, empty ones by the producer with the
 *   opposite parity (a fresh barrier passes parity 1 at once). Qfull's parity = item count & 1;
 *   the FP8 staging barriers complete once per tile: parity = tile count & 1.
 *
 * Paged KV by TMA (bf16): the pool [blocks, nkv, bs, hd] is one 2D tensor of rows
 *   (block * nkv + kvh) * bs + slot, hd columns; box = 64 columns (128 bytes, the swizzle width)
 *   x R rows with R = gcd(bs, BN) (a multiple of 8 so every box fills whole 1024-byte swizzle
 *   blocks). A key tile is BN/R boxes per 64-column panel, each inside one page (R divides bs),
 *   at the page's row; a box starting at or past kv_len copies the tile's first box again (its
 *   block-table entry is never read, and no box lies wholly outside the tensor). A page that ends
 *   past kv_len still brings the unwritten slots after kv_len: K garbage is masked (select, not
 *   add), V garbage would be 0 * NaN in P.V, so the consumers zero V rows >= kv_len of that one
 *   (diagonal) tile (generic stores, fence.proxy.async, named barrier 2) before it is used. Q: a
 *   2D map over [n_tokens, nh*hd], boxes 64 x 64; rows past n_tokens read zeros (a box partly
 *   outside: the copy engine fills and counts the whole box), rows of the next sequence are
 *   computed but never stored.
 *
 * GEMMs per consumer warpgroup (64 rows) and key tile:
 *   S[64, BN] = Q K^T: HD/16 wgmma m64nBNk16, A = Q (K-major, SW128), B = K (K-major, SW128);
 *     k-step ks: panel ks/4, start + 32*(ks%4) bytes; SBO 1024.
 *   O[64, HD] += P V: BN/16 wgmma m64nHDk16, A = P from registers, B = V MN-major (SW128,
 *     LBO = panel stride BN*128, SBO = 1024), k-step kk: start + 2048*kk bytes (16 keys).
 *   Accumulator rows of a thread: row_a = wg*64 + warp*16 + lane/4 (d[4i], d[4i+1]) and
 *   row_a + 8 (d[4i+2], d[4i+3]); columns 8i + 2*(lane%4) + {0,1} (sm90_async.cuh).
 *   Intra-warpgroup overlap (FA3): issue S(n), rescale O, issue O += P(n+1) V(n+1), wait S,
 *   softmax(n) while P.V runs, wait P.V, pack P(n). Inter-warpgroup ping-pong is not used
 *   (FA3 does not use it for head_dim 256 either).
 * Softmax (base 2, float32): soft-capping (tanh.approx) then the mask (select -inf: key <= pos,
 *   key < kv_len, key > pos - window); row max over the quad (shfl 1, 2); a row still at -inf
 *   uses 0 as reference (no NaN); P rounded to bf16 (f16 for FP8) for P.V, l summed in f32.
 * FP8 KV (this kernel's choice): K/V codes become f16 exactly (the producer converts, the
 *   consumers' tensor cores never see e4m3), Q is rounded bf16 -> f16 in
 *   shared memory (saturating at 65504), both GEMMs run on f16 tensor cores; kv_scale is folded
 *   into the score scale and the final 1/l. Not done: e4m3 QGMMA (needs V transposed in shared
 *   memory and P permuted for the 8-bit A layout).
 * Output: bf16x2 stores straight from the accumulators (rows < the tile's real rows).
 * tests/prefill_hopper_layout.py mirrors the bf16 index arithmetic (copies, descriptors, P fragment) and
 * checks S and O exactly: keep the two in step. */
#include "attn_prefill_hopper.cuh"

#include <atomic>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "attn_prefill_hopper_impl.cuh"
#include "cuda_check.h"
#include "launch.cuh"
#include "sm90_async.cuh"

using namespace gm_hp;

namespace {

template <int HD, int BN, bool F8> struct hp_cfg {
    static constexpr int Q_BYTES = HP_BM * HD * 2;  /* Q tile */
    static constexpr int KV_BYTES = BN * HD * 2;    /* one K (or V) stage */
    static constexpr int CH_Q = HP_BM * 128;        /* bytes between Q panels */
    static constexpr int CH_KV = BN * 128;          /* bytes between K/V panels */
    static constexpr int OFF_K = Q_BYTES;
    static constexpr int OFF_V = OFF_K + HP_STAGES * KV_BYTES;
    static constexpr int OFF_STG = OFF_V + HP_STAGES * KV_BYTES; /* FP8: e4m3 staging, K then V [BN][HD] */
    static constexpr int OFF_BAR = OFF_STG + (F8 ? 2 * BN * HD : 0);
    static constexpr int SMEM = OFF_BAR + 128 + 1024; /* + barriers + alignment slack */
    static constexpr int LOAD_REGS = F8 ? 56 : 40;
    static constexpr int MMA_REGS = F8 ? 224 : 232;
    static_assert(HD % 64 == 0 && BN % 16 == 0 && BN <= 256, "tile shape");
    static_assert(SMEM + 1024 <= HP_SMEM_MAX, "227 KB of shared memory per block (ptxas reports 1 KB static)");
    static_assert(LOAD_REGS * 128 + MMA_REGS * 256 <= 168 * HP_THREADS, "the registers the block starts with");
};

/* ------------------------------------------------------------------ producer */

/* Tensor copies of the item's Q tile (128 rows x HD) into shared memory at sq. Rows past n_tokens read
 * zeros (a box partly outside the tensor); the second 64-row box starts at row n_tokens - 1 at the
 * latest, so no box lies wholly outside (its rows then belong to no query of the item: never stored). */
template <int HD>
__device__ __forceinline__ void hp_tma_q(const hp_params &p, const hp_work &k, uint32_t sq, uint32_t bar, uint64_t pol)
{
    sm90_mbar_arrive_tx(bar, HP_BM * HD * 2);
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++)
#pragma unroll
        for (int c = 0; c < HD / 64; c++)
            sm90_tma_2d(sq + c * (HP_BM * 128) + h2 * 64 * 128, &p.qmap, k.head * HD + c * 64,
                        min(k.qrow0 + h2 * 64, p.n_tokens - 1), bar, pol);
}

/* bf16 pools: warp 0 of the producer warpgroup (all lanes wait, lane 0 issues the copies). Per
 * item: K(n_hi-1), Q, then K(n) and V(n+1) for n descending, then V(n_lo): the consumers' order.
 * Tile counters it (K) and iv (V) give the stage (% 2) and the empty barrier's parity. */
template <int HD, int BN> __device__ void hp_produce_tma(const hp_params &p, uint32_t sbase, uint32_t bars)
{
    using C = hp_cfg<HD, BN, false>;
    const bool leader = (threadIdx.x & 31) == 0;
    int it = 0, iv = 0, item = 0;
    hp_work k;
    for (int w = hp_work_next<BN>(p, blockIdx.x, k); w >= 0; w = hp_work_next<BN>(p, w + gridDim.x, k), item++) {
        const int32_t *bt = p.block_tables + (int64_t)k.seq * p.bt_stride;
        for (int n = k.n_hi - 1; n >= k.n_lo - 1; n--) {
            if (n >= k.n_lo) { /* K(n) */
                const int s = it % HP_STAGES;
                sm90_mbar_wait(hp_bar_ke(bars, s), ((it / HP_STAGES) & 1) ^ 1);
                if (leader) {
                    sm90_mbar_arrive_tx(hp_bar_kf(bars, s), C::KV_BYTES);
                    hp_tma_kv<HD / 64, BN, 64>(p, &p.kmap, bt, k, n, sbase + C::OFF_K + s * C::KV_BYTES,
                                               hp_bar_kf(bars, s));
                }
                it++;
            }
            if (n == k.n_hi - 1) { /* Q, once the consumers are done with the previous item's */
                __syncwarp();
                if (item > 0)
                    sm90_bar_sync(HP_BAR_QEMPTY, 256 + 32);
                if (leader)
                    hp_tma_q<HD>(p, k, sbase, hp_bar_q(bars), sm90_evict_first());
            } else { /* V(n+1) */
                const int s = iv % HP_STAGES;
                sm90_mbar_wait(hp_bar_ve(bars, s), ((iv / HP_STAGES) & 1) ^ 1);
                if (leader) {
                    sm90_mbar_arrive_tx(hp_bar_vf(bars, s), C::KV_BYTES);
                    hp_tma_kv<HD / 64, BN, 64>(p, &p.vmap, bt, k, n + 1, sbase + C::OFF_V + s * C::KV_BYTES,
                                               hp_bar_vf(bars, s));
                }
                iv++;
            }
            __syncwarp();
        }
    }
}

/* 16 e4m3 codes -> 16 f16 (exact), as two 16-byte halves. */
__device__ __forceinline__ void hp_e4m3x16_f16(const uint4 &v, uint4 &lo, uint4 &hi)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    uint32_t o[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __half2_raw a = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] & 0xFFFFu), __NV_E4M3);
        const __half2_raw b = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] >> 16), __NV_E4M3);
        o[2 * i] = (uint32_t)a.x | ((uint32_t)a.y << 16);
        o[2 * i + 1] = (uint32_t)b.x | ((uint32_t)b.y << 16);
    }
    lo = make_uint4(o[0], o[1], o[2], o[3]);
    hi = make_uint4(o[4], o[5], o[6], o[7]);
}

/* FP8: bulk copies of the e4m3 rows of key tile n (keys < kv_len; one copy per run of keys inside
 * a page) into the staging buffer st [BN][HD] bytes, completing on bar. One thread. */
template <int HD, int BN>
__device__ __forceinline__ void hp_bulk_kv(const hp_params &p, const uint8_t *pool, const int32_t *bt, const hp_work &k,
                                           int n, uint32_t st, uint32_t bar)
{
    const int j0 = n * BN, end = min(j0 + BN, k.kv_len);
    sm90_mbar_arrive_tx(bar, (uint32_t)(end - j0) * HD);
    for (int key = j0; key < end;) {
        const int off = key % p.bs, run = min(p.bs - off, end - key);
        const uint8_t *src = pool + (((int64_t)bt[key / p.bs] * p.nkv + k.kvh) * p.bs + off) * HD;
        sm90_bulk(st + (key - j0) * HD, src, (uint32_t)run * HD, bar);
        key += run;
    }
}

/* FP8: the 128 producer threads turn the staged e4m3 rows of a tile into f16 in the swizzled
 * operand layout at dst (the copy engine's SW128 pattern), zeros for rows >= valid. Thread t owns
 * the 16-byte piece t % (HD/16) of rows t / (HD/16) + (128 / (HD/16)) * u, so its swizzle phase
 * row % 8 is fixed. */
template <int HD, int BN>
__device__ __forceinline__ void hp_convert_kv(const uint8_t *st, uint8_t *dst, int valid, int t)
{
    constexpr int PR = HD / 16, PER = BN * PR / 128, RSTEP = 128 / PR;
    static_assert((BN * PR) % 128 == 0 && RSTEP % 8 == 0, "FP8 tile split");
    const int r0 = t / PR, e0 = (t % PR) * 16, j = (e0 % 64) / 8, sw = r0 & 7;
    const uint8_t *src = st + r0 * HD + e0;
    uint8_t *d = dst + (e0 / 64) * (BN * 128) + r0 * 128;
#pragma unroll
    for (int u = 0; u < PER; u++) {
        uint4 v = make_uint4(0u, 0u, 0u, 0u), lo, hi;
        if (r0 + RSTEP * u < valid)
            v = *reinterpret_cast<const uint4 *>(src + RSTEP * u * HD);
        hp_e4m3x16_f16(v, lo, hi);
        *reinterpret_cast<uint4 *>(d + RSTEP * u * 128 + ((j ^ sw) << 4)) = lo;
        *reinterpret_cast<uint4 *>(d + RSTEP * u * 128 + (((j + 1) ^ sw) << 4)) = hi;
    }
}

/* FP8 pools: all 128 producer threads. Per tile step: thread 0 starts the bulk copies of K(n)
 * and V(n+1) into the two staging buffers (both in flight together), then everyone converts K(n)
 * into its stage, then V(n+1), and a producer-only barrier frees the staging buffers. Warp 0 also
 * loads Q by TMA. Same tile order as hp_produce_tma. */
template <int HD, int BN> __device__ void hp_produce_f8(const hp_params &p, uint8_t *smem, uint32_t bars)
{
    using C = hp_cfg<HD, BN, true>;
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const uint32_t sbase = sm90_smem(smem), stk = sbase + C::OFF_STG, stv = stk + BN * HD;
    int it = 0, iv = 0, item = 0;
    hp_work k;
    for (int w = hp_work_next<BN>(p, blockIdx.x, k); w >= 0; w = hp_work_next<BN>(p, w + gridDim.x, k), item++) {
        const int32_t *bt = p.block_tables + (int64_t)k.seq * p.bt_stride;
        for (int n = k.n_hi - 1; n >= k.n_lo - 1; n--) {
            const bool do_k = n >= k.n_lo, do_v = n < k.n_hi - 1; /* K(n) and V(n+1) of this step */
            if (t == 0) {
                if (do_k)
                    hp_bulk_kv<HD, BN>(p, p.k8, bt, k, n, stk, hp_bar_sk(bars));
                if (do_v)
                    hp_bulk_kv<HD, BN>(p, p.v8, bt, k, n + 1, stv, hp_bar_sv(bars));
            }
            if (n == k.n_hi - 1 && warp == 0) {
                __syncwarp();
                if (item > 0) /* the consumers are done with the previous item's Q */
                    sm90_bar_sync(HP_BAR_QEMPTY, 256 + 32);
                if (lane == 0)
                    hp_tma_q<HD>(p, k, sbase, hp_bar_q(bars), sm90_evict_first());
                __syncwarp();
            }
            if (do_k) {
                const int s = it % HP_STAGES;
                sm90_mbar_wait(hp_bar_ke(bars, s), ((it / HP_STAGES) & 1) ^ 1);
                sm90_mbar_wait(hp_bar_sk(bars), it & 1);
                hp_convert_kv<HD, BN>(smem + C::OFF_STG, smem + C::OFF_K + s * C::KV_BYTES, k.kv_len - n * BN, t);
                sm90_fence_proxy_async();
                sm90_mbar_arrive(hp_bar_kf(bars, s));
                it++;
            }
            if (do_v) {
                const int s = iv % HP_STAGES;
                sm90_mbar_wait(hp_bar_ve(bars, s), ((iv / HP_STAGES) & 1) ^ 1);
                sm90_mbar_wait(hp_bar_sv(bars), iv & 1);
                hp_convert_kv<HD, BN>(smem + C::OFF_STG + BN * HD, smem + C::OFF_V + s * C::KV_BYTES,
                                      k.kv_len - (n + 1) * BN, t);
                sm90_fence_proxy_async();
                sm90_mbar_arrive(hp_bar_vf(bars, s));
                iv++;
            }
            sm90_bar_sync(HP_BAR_STAGED, 128); /* staging buffers free again */
        }
    }
}

/* ------------------------------------------------------------------ consumers */

/* S = Q K^T for this warpgroup's 64 rows: issued and committed, not waited for. */
template <int HD, int BN, bool F8>
__device__ __forceinline__ void hp_qk(float (&S)[BN / 2], uint32_t q_wg, uint32_t k_stage)
{
    using C = hp_cfg<HD, BN, F8>;
    const uint64_t dq = sm90_desc(q_wg, 16, 1024), dk = sm90_desc(k_stage, 16, 1024);
    sm90_fence_regs(S);
    sm90_wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        const uint32_t oq = (ks >> 2) * C::CH_Q + (ks & 3) * 32, ok = (ks >> 2) * C::CH_KV + (ks & 3) * 32;
        sm90_ss<BN, F8>(S, dq + (oq >> 4), dk + (ok >> 4), ks > 0);
    }
    sm90_wgmma_commit();
    sm90_fence_regs(S);
}

/* O += P V (P: the packed registers of the previous softmax): issued and committed. */
template <int HD, int BN, bool F8>
__device__ __forceinline__ void hp_pv(float (&O)[HD / 2], uint32_t (&P)[BN / 4], uint32_t v_stage)
{
    const uint64_t dv = sm90_desc(v_stage, BN * 128, 1024);
    sm90_fence_regs(O);
    sm90_fence_regs(P);
    sm90_wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
        sm90_rs<HD, F8>(O, &P[4 * kk], dv + ((kk * 2048) >> 4), 1);
    sm90_wgmma_commit();
    sm90_fence_regs(O);
    sm90_fence_regs(P);
}

/* Rescale O to the newest row maxima, wait for V of stage sv, issue O += P V. */
template <int HD, int BN, bool F8>
__device__ __forceinline__ void hp_pv_issue(float (&O)[HD / 2], const float (&alpha)[2], uint32_t (&P)[BN / 4],
                                            uint32_t bars, int sv, uint32_t phv, uint32_t sbase)
{
    hp_rescale<HD>(O, alpha);
    sm90_mbar_wait(hp_bar_vf(bars, sv), phv);
    hp_pv<HD, BN, F8>(O, P, sbase + hp_cfg<HD, BN, F8>::OFF_V + sv * hp_cfg<HD, BN, F8>::KV_BYTES);
}

template <int BN, bool F8> __device__ __forceinline__ void hp_pack_p(const float (&S)[BN / 2], uint32_t (&P)[BN / 4])
{
#pragma unroll
    for (int i = 0; i < BN / 4; i++) {
        if constexpr (F8) {
            __half2 h = __floats2half2_rn(S[2 * i], S[2 * i + 1]);
            P[i] = *reinterpret_cast<uint32_t *>(&h);
        } else {
            __nv_bfloat162 b = __floats2bfloat162_rn(S[2 * i], S[2 * i + 1]);
            P[i] = *reinterpret_cast<uint32_t *>(&b);
        }
    }
}

/* bf16: zero V rows [r_lo, r_hi) of a stage (the keys at and past kv_len of the diagonal tile:
 * unwritten slots of the last page, repeated boxes), both consumer warpgroups, then publish to the
 * async proxy. Whole 128-byte rows, so the swizzle does not matter. */
template <int HD, int BN> __device__ void hp_zero_v_tail(uint8_t *vst, int r_lo, int r_hi, int ct)
{
    const int units = (r_hi - r_lo) * (HD / 64) * 8; /* 16-byte pieces */
    for (int u = ct; u < units; u += 256) {
        const int row = r_lo + u / ((HD / 64) * 8), rest = u % ((HD / 64) * 8);
        *reinterpret_cast<uint4 *>(vst + (rest >> 3) * (BN * 128) + row * 128 + (rest & 7) * 16) =
            make_uint4(0u, 0u, 0u, 0u);
    }
    sm90_fence_proxy_async();
    sm90_bar_sync(HP_BAR_VTAIL, 256);
}

/* FP8: this warpgroup's 64 Q rows, bf16 -> f16 in place (elementwise, so the swizzle does not
 * matter), saturating at +-65504, then published to the async proxy. */
template <int HD> __device__ void hp_q_to_f16(uint8_t *smem, int wg, int t)
{
    for (int u = t; u < (HD / 64) * 512; u += 128) {
        uint4 *ptr = reinterpret_cast<uint4 *>(smem + (u >> 9) * (HP_BM * 128) + wg * 8192 + (u & 511) * 16);
        uint4 v = *ptr;
        uint32_t *w = reinterpret_cast<uint32_t *>(&v);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 f = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&w[i]));
            __half2 h = __floats2half2_rn(fminf(fmaxf(f.x, -65504.0f), 65504.0f), fminf(fmaxf(f.y, -65504.0f), 65504.0f));
            w[i] = *reinterpret_cast<uint32_t *>(&h);
        }
        *ptr = v;
    }
    sm90_fence_proxy_async();
    if (wg == 0)
        sm90_bar_sync(HP_BAR_QCONV, 128);
    else
        sm90_bar_sync(HP_BAR_QCONV + 1, 128);
}

/* The two consumer warpgroups. */
template <int HD, int BN, bool F8> __device__ void hp_consume(const hp_params &p, uint8_t *smem, uint32_t bars)
{
    using C = hp_cfg<HD, BN, F8>;
    const int ct = threadIdx.x - 128, wg = ct >> 7, warp = (ct >> 5) & 3, lane = ct & 31, tq = lane & 3;
    const int row_a = wg * 64 + warp * 16 + (lane >> 2); /* tile row of d[4i], d[4i+1]; + 8 for the others */
    const uint32_t sbase = sm90_smem(smem), q_wg = sbase + wg * 64 * 128;
    float O[HD / 2], S[BN / 2], m[2], l[2], alpha[2];
    uint32_t P[BN / 4];
    int it = 0, item = 0;
    hp_work k;
    for (int w = hp_work_next<BN>(p, blockIdx.x, k); w >= 0; w = hp_work_next<BN>(p, w + gridDim.x, k), item++) {
        const int pos0 = k.sp + k.r0 + row_a;
        sm90_mbar_wait(hp_bar_q(bars), item & 1);
        if constexpr (F8)
            hp_q_to_f16<HD>(smem, wg, ct & 127);

        /* the last key tile (diagonal, masked): S, softmax, P; O starts at zero */
        int n = k.n_hi - 1, s = it % HP_STAGES;
        uint32_t ph = (it / HP_STAGES) & 1;
        sm90_mbar_wait(hp_bar_kf(bars, s), ph);
        hp_qk<HD, BN, F8>(S, q_wg, sbase + C::OFF_K + s * C::KV_BYTES);
        sm90_wgmma_wait<0>();
        sm90_fence_regs(S);
        hp_release(hp_bar_ke(bars, s), lane);
        m[0] = m[1] = -INFINITY;
        l[0] = l[1] = 0.0f;
        hp_softmax<BN, true>(p, S, m, l, alpha, n * BN, pos0, k.kv_len, tq);
        hp_pack_p<BN, F8>(S, P);
#pragma unroll
        for (int i = 0; i < HD / 2; i++)
            O[i] = 0.0f;
        if (!F8 && k.kv_len < (n + 1) * BN) { /* V rows at and past kv_len: unwritten slots, repeated boxes */
            sm90_mbar_wait(hp_bar_vf(bars, s), ph);
            hp_zero_v_tail<HD, BN>(smem + C::OFF_V + s * C::KV_BYTES, k.kv_len - n * BN, BN, ct);
        }
        int sv = s;
        uint32_t phv = ph;
        it++;

        /* the other tiles: S(n) and P(n+1) V(n+1) in flight together */
        for (n = k.n_hi - 2; n >= k.n_lo; n--, it++) {
            s = it % HP_STAGES;
            ph = (it / HP_STAGES) & 1;
            sm90_mbar_wait(hp_bar_kf(bars, s), ph);
            hp_qk<HD, BN, F8>(S, q_wg, sbase + C::OFF_K + s * C::KV_BYTES);
            hp_pv_issue<HD, BN, F8>(O, alpha, P, bars, sv, phv, sbase);
            sm90_wgmma_wait<1>();
            sm90_fence_regs(S);
            hp_release(hp_bar_ke(bars, s), lane);
            const int j0 = n * BN;
            /* masked when a key may pass a row's position or fall out of a row's window */
            const bool mask = j0 + BN - 1 > k.sp + k.r0 || (p.window > 0 && j0 <= k.sp + k.r0 + HP_BM - 1 - p.window);
            if (mask)
                hp_softmax<BN, true>(p, S, m, l, alpha, j0, pos0, k.kv_len, tq);
            else
                hp_softmax<BN, false>(p, S, m, l, alpha, j0, pos0, k.kv_len, tq);
            sm90_wgmma_wait<0>();
            sm90_fence_regs(O);
            sm90_fence_regs(P);
            hp_release(hp_bar_ve(bars, sv), lane);
            hp_pack_p<BN, F8>(S, P);
            sv = s;
            phv = ph;
        }

        /* this warpgroup is done with Q: let the producer load the next item's */
        hp_work nx;
        if (hp_work_next<BN>(p, w + gridDim.x, nx) >= 0)
            sm90_bar_arrive(HP_BAR_QEMPTY, 256 + 32);
        hp_pv_issue<HD, BN, F8>(O, alpha, P, bars, sv, phv, sbase);
        sm90_wgmma_wait<0>();
        sm90_fence_regs(O);
        hp_release(hp_bar_ve(bars, sv), lane);

        /* O / l, bf16, rows of this sequence only */
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

template <int HD, int BN, bool F8>
__global__ void __launch_bounds__(HP_THREADS, 1) hp_prefill_kernel(const __grid_constant__ hp_params p)
{
    using C = hp_cfg<HD, BN, F8>;
    extern __shared__ __align__(1024) uint8_t hp_smem_raw[];
    uint8_t *smem = hp_smem_raw + ((1024u - (sm90_smem(hp_smem_raw) & 1023u)) & 1023u);
    const uint32_t bars = sm90_smem(smem) + C::OFF_BAR;
    if (threadIdx.x == 0) {
        sm90_mbar_init(hp_bar_q(bars), 1);
        for (int s = 0; s < HP_STAGES; s++) {
            sm90_mbar_init(hp_bar_kf(bars, s), F8 ? 128 : 1);
            sm90_mbar_init(hp_bar_vf(bars, s), F8 ? 128 : 1);
            sm90_mbar_init(hp_bar_ke(bars, s), 8);
            sm90_mbar_init(hp_bar_ve(bars, s), 8);
        }
        sm90_mbar_init(hp_bar_sk(bars), 1);
        sm90_mbar_init(hp_bar_sv(bars), 1);
        sm90_mbar_fence_init();
    }
    __syncthreads();
    pdl_wait();
    if (threadIdx.x < 128) {
        sm90_reg_dealloc<C::LOAD_REGS>();
        if constexpr (F8)
            hp_produce_f8<HD, BN>(p, smem, bars);
        else if (threadIdx.x < 32)
            hp_produce_tma<HD, BN>(p, sm90_smem(smem), bars);
    } else {
        sm90_reg_alloc<C::MMA_REGS>();
        hp_consume<HD, BN, F8>(p, smem, bars);
    }
}

/* ------------------------------------------------------------------ host */

/* Key tile width per head_dim (FP8 256: 64, to leave room for the staging buffers). */
int hp_bn(int32_t hd, int32_t fp8) { return hd == 256 ? (fp8 ? 64 : 80) : 128; }

template <int HD, int BN, bool F8> gm_status hp_launch(const hp_params &prm, int grid, cudaStream_t s)
{
    using C = hp_cfg<HD, BN, F8>;
    static std::atomic<int> attr_set(0); /* per instantiation: raise the dynamic shared-memory limit once */
    if (!attr_set.load()) {
        GM_CUDA_CHECK(cudaFuncSetAttribute(hp_prefill_kernel<HD, BN, F8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::SMEM));
        attr_set.store(1);
    }
    GM_CUDA_CHECK(gm_launch(hp_prefill_kernel<HD, BN, F8>, dim3((unsigned)grid), dim3(HP_THREADS), (size_t)C::SMEM, s, prm));
    return GM_OK;
}

} // namespace

extern "C" int k_attn_prefill_hopper_supported(int32_t hd, int32_t bs, int32_t kv_fp8)
{
    int sms = 0;
    if (hp_device(&sms) || (hd != 128 && hd != 256) || bs < 1)
        return 0;
    return kv_fp8 || hp_gcd(bs, hp_bn(hd, 0)) % 8 == 0;
}

extern "C" int k_attn_prefill_hopper_e4m3_supported(int32_t hd, int32_t bs)
{
    int sms = 0;
    return !hp_device(&sms) && (hd == 128 || hd == 256) && bs >= 1 && hp_gcd(bs, 128) % 8 == 0;
}

extern "C" gm_status k_attn_prefill_hopper(const void *q, int64_t ldq, int64_t n_tokens, int32_t n_seqs,
                                           const int32_t *q_start, const int32_t *n_new, const int32_t *start_pos,
                                           int32_t max_new, int32_t nh, int32_t nkv, int32_t hd, const void *k_pool,
                                           const void *v_pool, int32_t bs, int32_t pool_blocks,
                                           const int32_t *block_tables, int32_t bt_stride, const k_prefill_opts *opt,
                                           void *out, int64_t ldo, cudaStream_t s)
{
    const char *fn = "k_attn_prefill_hopper";
    if (!opt)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: no options", fn);
    if (n_seqs <= 0 || max_new <= 0)
        return GM_OK;
    if (!q || !out || !k_pool || !v_pool || !q_start || !n_new || !start_pos || !block_tables || nkv < 1 || nh < 1 ||
        nh % nkv || bs < 1 || pool_blocks < 1 || bt_stride < 1 || n_tokens < 1 || ldq < (int64_t)nh * hd ||
        ldo < (int64_t)nh * hd || ldq % 8 || ldo % 2 || ((uintptr_t)q & 15) || ((uintptr_t)out & 3) ||
        ((uintptr_t)k_pool & 15) || ((uintptr_t)v_pool & 15))
        return gm_fail(GM_ERR_INVALID_ARG, "%s: nh %d nkv %d bs %d pool_blocks %d bt_stride %d n_tokens %lld ldq %lld "
                       "ldo %lld (or a NULL or misaligned pointer)", fn, nh, nkv, bs, pool_blocks, bt_stride,
                       (long long)n_tokens, (long long)ldq, (long long)ldo);
    if (!(opt->scale > 0.0f) || !(opt->softcap >= 0.0f) || opt->window < 0 || (opt->kv_fp8 && !(opt->kv_scale > 0.0f)))
        return gm_fail(GM_ERR_INVALID_ARG, "%s: scale %g softcap %g window %d kv_scale %g", fn, opt->scale,
                       opt->softcap, opt->window, opt->kv_scale);
    int sms = 0;
    if (hp_device(&sms))
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: needs an sm_90 (Hopper) device", fn);
    if (hd != 128 && hd != 256)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: head_dim %d (128 or 256)", fn, hd);
    const int e4m3 = opt->kv_fp8 && opt->kv_fp8_mma; /* both GEMMs on e4m3 tensor cores */
    const int bn = e4m3 ? 128 : hp_bn(hd, opt->kv_fp8), box = hp_gcd(bs, bn);
    if ((!opt->kv_fp8 || e4m3) && box % 8)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: block size %d shares %d rows with the %d-key tile (needs a multiple "
                       "of 8)", fn, bs, box, bn);
    const int64_t kv_rows = (int64_t)pool_blocks * nkv * bs, n_qt = ((int64_t)max_new + HP_BM - 1) / HP_BM;
    const int64_t total = n_qt * nh * n_seqs;
    if (kv_rows >= INT32_MAX || n_tokens >= INT32_MAX - HP_BM || total >= INT32_MAX)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: pool of %lld rows, %lld tokens, %lld work items (2^31 limits)", fn,
                       (long long)kv_rows, (long long)n_tokens, (long long)total);

    hp_params prm;
    memset(&prm, 0, sizeof prm);
    if (!e4m3) /* the QGMMA kernel's consumers read q themselves */
        GM_CHECK(hp_map(&prm.qmap, q, 2, (uint64_t)nh * hd, (uint64_t)n_tokens, (uint64_t)ldq * 2, 64, "q"));
    if (!opt->kv_fp8 || e4m3) {
        const int eb = e4m3 ? 1 : 2; /* bytes per element of the pools */
        GM_CHECK(hp_map(&prm.kmap, k_pool, eb, (uint64_t)hd, (uint64_t)kv_rows, (uint64_t)hd * eb, (uint32_t)box,
                        "k pool"));
        GM_CHECK(hp_map(&prm.vmap, v_pool, eb, (uint64_t)hd, (uint64_t)kv_rows, (uint64_t)hd * eb, (uint32_t)box,
                        "v pool"));
    }
    prm.q = (const __nv_bfloat16 *)q;
    prm.ldq = ldq;
    prm.k8 = (const uint8_t *)k_pool;
    prm.v8 = (const uint8_t *)v_pool;
    prm.q_start = q_start;
    prm.n_new = n_new;
    prm.start_pos = start_pos;
    prm.block_tables = block_tables;
    prm.out = (__nv_bfloat16 *)out;
    prm.ldo = ldo;
    prm.bt_stride = bt_stride;
    prm.nh = nh;
    prm.nkv = nkv;
    prm.group = nh / nkv;
    prm.bs = bs;
    prm.n_seqs = n_seqs;
    prm.n_qt = (int32_t)n_qt;
    prm.total = (int32_t)total;
    prm.window = opt->window;
    prm.kv_rows = (int32_t)kv_rows;
    prm.n_tokens = (int32_t)n_tokens;
    prm.box_rows = box;
    const float kvs = opt->kv_fp8 ? opt->kv_scale : 1.0f, sc = opt->scale * kvs;
    prm.score_mul = sc * HP_LOG2E;
    prm.cap_in = opt->softcap > 0.0f ? sc / opt->softcap : 0.0f;
    prm.cap_out = opt->softcap;
    prm.out_mul = kvs;
    const int grid = (int)(total < sms ? total : sms);
    if (e4m3)
        return hp_e4m3_launch(prm, hd, grid, s);
    if (hd == 256)
        return opt->kv_fp8 ? hp_launch<256, 64, true>(prm, grid, s) : hp_launch<256, 80, false>(prm, grid, s);
    return opt->kv_fp8 ? hp_launch<128, 128, true>(prm, grid, s) : hp_launch<128, 128, false>(prm, grid, s);
}
