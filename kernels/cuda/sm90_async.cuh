/* sm90_async.cuh - Hopper (sm_90a) building blocks: mbarriers, tensor copies (TMA), proxy fences,
 * named barriers, setmaxnreg and wgmma with shared-memory descriptors. CUDA C++ device code only;
 * each wrapper is one PTX instruction (or a wait loop around one).
 *
 * wgmma facts used here (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
 * - A warpgroup = 4 consecutive warps starting at a warp index divisible by 4; every wgmma,
 *   fence, commit and wait below is executed by all 128 threads of it.
 * - Accumulator D of m64nNk16 (f32): thread (warp w of the group, lane l; g = l / 4, t = l % 4)
 *   holds d[4i + 0] = D[16w + g][8i + 2t], d[4i + 1] = D[16w + g][8i + 2t + 1],
 *        d[4i + 2] = D[16w + g + 8][8i + 2t], d[4i + 3] = D[16w + g + 8][8i + 2t + 1], i < N/8.
 * - A from registers (16-bit types, m64nNk16): 4 b32 registers, each two elements (low half =
 *   lower column): a0 = A[16w + g][2t, 2t+1], a1 = A[16w + g + 8][2t, 2t+1],
 *   a2 = A[16w + g][8 + 2t, 8 + 2t + 1], a3 = A[16w + g + 8][8 + 2t, 8 + 2t + 1]. This is D's
 *   layout for columns 0..15, so an accumulator becomes the next product's A by packing
 *   (d[4i], d[4i + 1]), (d[4i + 2], d[4i + 3]) in order: registers 4kk..4kk+3 are k-step kk.
 * - Shared-memory descriptor (64 bits): [13:0] start address >> 4, [29:16] leading byte offset
 *   (LBO) >> 4, [45:32] stride byte offset (SBO) >> 4, [51:49] base offset (0 when every 1024-byte
 *   swizzle pattern starts on a 1024-byte boundary), [63:62] swizzle (1 = 128-byte).
 * - 128-byte swizzle: the tile is stored in 128-byte rows; inside each 1024-byte block (8 rows)
 *   the 16-byte chunk j of row r sits at chunk position j ^ (r % 8). The copy engine's
 *   CU_TENSOR_MAP_SWIZZLE_128B writes exactly this pattern (it is a function of the shared
 *   address bits [6:4] ^= [9:7]), so TMA boxes with 1024-aligned destinations produce it.
 * - K-major operand (rows = M or N, 64 elements of K = 128 bytes per row, 8-row groups 1024
 *   bytes apart): SBO = 1024, LBO unused (encoded 1). The k16 step s inside a 128-byte row is
 *   the start address + 32 s bytes; the next 64 columns of K live in another 128-byte-wide
 *   panel (its own start address).
 * - MN-major operand (B of P.V: rows = K (keys), 64 N elements per 128-byte row): LBO = the byte
 *   distance between 64-element panels of N, SBO = the distance between 8-row groups of K
 *   (1024). imm-trans-b = 1 selects it; only 16-bit types may be transposed. */
#ifndef GM_SM90_ASYNC_CUH
#define GM_SM90_ASYNC_CUH

#include <atomic>

#include <cuda.h> /* CUtensorMap (types only: the encoder comes from the runtime's driver entry point) */
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <stdint.h>

/* The driver's tensor-map encoder, looked up once (host); NULL when the driver has none. */
static inline PFN_cuTensorMapEncodeTiled_v12000 sm90_tensor_map_encoder(void)
{
    static std::atomic<void *> fn(nullptr);
    void *f = fn.load(std::memory_order_acquire);
    if (!f) {
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            f = nullptr;
        (void)cudaGetLastError();
        if (f)
            fn.store(f, std::memory_order_release);
    }
    return (PFN_cuTensorMapEncodeTiled_v12000)f;
}

__device__ __forceinline__ uint32_t sm90_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* ---- mbarriers ---- */

__device__ __forceinline__ void sm90_mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

/* Make the initialised barriers visible to the async proxy (the copy engine) before first use. */
__device__ __forceinline__ void sm90_mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

/* Arrive (release) and expect tx bytes of copies on the current phase. */
__device__ __forceinline__ void sm90_mbar_arrive_tx(uint32_t bar, uint32_t tx)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(tx) : "memory");
}

/* Arrive (release semantics: this thread's earlier memory accesses happen before the phase completes). */
__device__ __forceinline__ void sm90_mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

/* Wait (acquire) until the phase with this parity has completed. A phase that never completes is a
 * bug: trap after ~2^26 polls (seconds) so that it shows as a launch error, not a hang. */
__device__ __forceinline__ void sm90_mbar_wait(uint32_t bar, uint32_t parity)
{
    uint32_t done = 0;
    for (uint32_t spins = 0; !done; spins++) {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
        if (spins > (1u << 26))
            __trap();
    }
}

/* ---- copies and fences ---- */

/* L2 policy for data many blocks read again (K/V tiles). */
__device__ __forceinline__ uint64_t sm90_evict_last()
{
    uint64_t p;
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(p));
    return p;
}

/* L2 policy for data read once (Q tiles). */
__device__ __forceinline__ uint64_t sm90_evict_first()
{
    uint64_t p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
    return p;
}

/* bytes (a multiple of 16; both addresses 16-aligned) global -> shared, completing tx on bar. */
__device__ __forceinline__ void sm90_bulk(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

/* 2D tensor copy of the box at element coordinates {c0 (inner), c1} -> shared dst (1024-aligned for
 * the 128-byte swizzle), completing tx bytes on bar. Coordinates outside the tensor read zeros. */
__device__ __forceinline__ void sm90_tma_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar,
                                            uint64_t pol)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "l"(pol)
                 : "memory");
}

/* Order this thread's generic-proxy shared-memory writes before later async-proxy accesses
 * (wgmma operand reads, tensor copies) that a barrier makes depend on them. */
__device__ __forceinline__ void sm90_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* Named barriers 1..15 (0 is __syncthreads'); count = threads taking part, a multiple of 32. */
__device__ __forceinline__ void sm90_bar_sync(int id, int count)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void sm90_bar_arrive(int id, int count)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

/* Per-warpgroup register budget (the kernel needs __launch_bounds__(threads, 1)). */
template <int N> __device__ __forceinline__ void sm90_reg_dealloc() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void sm90_reg_alloc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

/* ---- wgmma ---- */

/* Descriptor of a 128-byte-swizzled operand at shared address saddr (see the header comment). */
__device__ __forceinline__ uint64_t sm90_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void sm90_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void sm90_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void sm90_wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Keep the compiler from moving accesses of r across the asynchronous wgmma boundaries. */
__device__ __forceinline__ void sm90_fence_reg(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void sm90_fence_reg(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }
template <int N, class T> __device__ __forceinline__ void sm90_fence_regs(T (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        sm90_fence_reg(r[i]);
}

/* Accumulator register lists: "%0, ..., %(n-1)" and the matching "+f" operands. */
#define SM90_R10(x) "%" #x "0, %" #x "1, %" #x "2, %" #x "3, %" #x "4, %" #x "5, %" #x "6, %" #x "7, %" #x "8, %" #x "9"
#define SM90_R0_9 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9"
#define SM90_D32 SM90_R0_9 ", " SM90_R10(1) ", " SM90_R10(2) ", %30, %31"
#define SM90_D40 SM90_R0_9 ", " SM90_R10(1) ", " SM90_R10(2) ", " SM90_R10(3)
#define SM90_D64 SM90_R0_9 ", " SM90_R10(1) ", " SM90_R10(2) ", " SM90_R10(3) ", " SM90_R10(4) ", " SM90_R10(5) \
    ", %60, %61, %62, %63"
#define SM90_D128 SM90_R0_9 ", " SM90_R10(1) ", " SM90_R10(2) ", " SM90_R10(3) ", " SM90_R10(4) ", " SM90_R10(5)  \
    ", " SM90_R10(6) ", " SM90_R10(7) ", " SM90_R10(8) ", " SM90_R10(9) ", " SM90_R10(10) ", " SM90_R10(11)     \
    ", %120, %121, %122, %123, %124, %125, %126, %127"
#define SM90_F8(d, i)                                                                                              \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]),    \
        "+f"(d[i + 7])
#define SM90_ACC32(d) SM90_F8(d, 0), SM90_F8(d, 8), SM90_F8(d, 16), SM90_F8(d, 24)
#define SM90_ACC40(d) SM90_ACC32(d), SM90_F8(d, 32)
#define SM90_ACC64(d) SM90_ACC32(d), SM90_F8(d, 32), SM90_F8(d, 40), SM90_F8(d, 48), SM90_F8(d, 56)
#define SM90_ACC128(d)                                                                                             \
    SM90_ACC64(d), SM90_F8(d, 64), SM90_F8(d, 72), SM90_F8(d, 80), SM90_F8(d, 88), SM90_F8(d, 96), SM90_F8(d, 104), \
        SM90_F8(d, 112), SM90_F8(d, 120)

/* d[N/2] (+)= A . B, both operands K-major in shared memory (descriptors da, db); acc = 0 starts
 * from zero. TY is "bf16" or "f16" (the PTX type of A and B). */
#define SM90_WGMMA_SS(NAME, N, TY, DLIST, ACC, IA, IB, IS)                                                        \
    __device__ __forceinline__ void NAME(float(&d)[N / 2], uint64_t da, uint64_t db, int acc)                      \
    {                                                                                                              \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " IS ", 0;\n wgmma.mma_async.sync.aligned.m64n" #N       \
                     "k16.f32." TY "." TY " {" DLIST "}, " IA ", " IB ", p, 1, 1, 0, 0;\n}\n"                      \
                     : ACC(d)                                                                                      \
                     : "l"(da), "l"(db), "r"(acc));                                                                \
    }

/* d[N/2] (+)= A . B with A in registers (a[4], the layout in the header comment) and B MN-major in
 * shared memory (descriptor db, imm-trans-b = 1). */
#define SM90_WGMMA_RS(NAME, N, TY, DLIST, ACC, IA, IB, IS)                                                        \
    __device__ __forceinline__ void NAME(float(&d)[N / 2], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,     \
                                         uint64_t db, int acc)                                                     \
    {                                                                                                              \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " IS ", 0;\n wgmma.mma_async.sync.aligned.m64n" #N       \
                     "k16.f32." TY "." TY " {" DLIST "}, {" IA "}, " IB ", p, 1, 1, 1;\n}\n"                       \
                     : ACC(d)                                                                                      \
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(acc));                                     \
    }

SM90_WGMMA_SS(sm90_ss_n64_bf16, 64, "bf16", SM90_D32, SM90_ACC32, "%32", "%33", "%34")
SM90_WGMMA_SS(sm90_ss_n64_f16, 64, "f16", SM90_D32, SM90_ACC32, "%32", "%33", "%34")
SM90_WGMMA_SS(sm90_ss_n80_bf16, 80, "bf16", SM90_D40, SM90_ACC40, "%40", "%41", "%42")
SM90_WGMMA_SS(sm90_ss_n80_f16, 80, "f16", SM90_D40, SM90_ACC40, "%40", "%41", "%42")
SM90_WGMMA_SS(sm90_ss_n128_bf16, 128, "bf16", SM90_D64, SM90_ACC64, "%64", "%65", "%66")
SM90_WGMMA_SS(sm90_ss_n128_f16, 128, "f16", SM90_D64, SM90_ACC64, "%64", "%65", "%66")
SM90_WGMMA_RS(sm90_rs_n128_bf16, 128, "bf16", SM90_D64, SM90_ACC64, "%64, %65, %66, %67", "%68", "%69")
SM90_WGMMA_RS(sm90_rs_n128_f16, 128, "f16", SM90_D64, SM90_ACC64, "%64, %65, %66, %67", "%68", "%69")
SM90_WGMMA_RS(sm90_rs_n256_bf16, 256, "bf16", SM90_D128, SM90_ACC128, "%128, %129, %130, %131", "%132", "%133")
SM90_WGMMA_RS(sm90_rs_n256_f16, 256, "f16", SM90_D128, SM90_ACC128, "%128, %129, %130, %131", "%132", "%133")

/* e4m3 x e4m3 -> f32 (QGMMA), m64nNk32: 8-bit operands are K-major only (no transpose arguments).
 * A in registers (m64nNk32, 8-bit): 4 b32 registers of 4 codes each (lowest byte = lowest k):
 * a0 = A[16w + g][4t .. 4t+3], a1 = A[16w + g + 8][4t .. 4t+3], a2 = A[16w + g][16+4t .. 16+4t+3],
 * a3 = A[16w + g + 8][16+4t .. 16+4t+3]. D as for k16. A k32 step of a K-major SW128 operand is 32 bytes
 * along its 128-byte row, as a k16 step of a 16-bit one. */
#define SM90_QGMMA_SS(NAME, N, DLIST, ACC, IA, IB, IS)                                                             \
    __device__ __forceinline__ void NAME(float(&d)[N / 2], uint64_t da, uint64_t db, int acc)                      \
    {                                                                                                              \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " IS ", 0;\n wgmma.mma_async.sync.aligned.m64n" #N       \
                     "k32.f32.e4m3.e4m3 {" DLIST "}, " IA ", " IB ", p, 1, 1;\n}\n"                                 \
                     : ACC(d)                                                                                      \
                     : "l"(da), "l"(db), "r"(acc));                                                                \
    }
#define SM90_QGMMA_RS(NAME, N, DLIST, ACC, IA, IB, IS)                                                             \
    __device__ __forceinline__ void NAME(float(&d)[N / 2], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,     \
                                         uint64_t db, int acc)                                                     \
    {                                                                                                              \
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " IS ", 0;\n wgmma.mma_async.sync.aligned.m64n" #N       \
                     "k32.f32.e4m3.e4m3 {" DLIST "}, {" IA "}, " IB ", p, 1, 1;\n}\n"                               \
                     : ACC(d)                                                                                      \
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(acc));                                     \
    }

SM90_QGMMA_SS(sm90_qss_n128, 128, SM90_D64, SM90_ACC64, "%64", "%65", "%66")
SM90_QGMMA_RS(sm90_qrs_n128, 128, SM90_D64, SM90_ACC64, "%64, %65, %66, %67", "%68", "%69")
SM90_QGMMA_RS(sm90_qrs_n256, 256, SM90_D128, SM90_ACC128, "%128, %129, %130, %131", "%132", "%133")

template <int N> __device__ __forceinline__ void sm90_qrs(float (&d)[N / 2], const uint32_t *a, uint64_t db, int acc)
{
    if constexpr (N == 128)
        sm90_qrs_n128(d, a[0], a[1], a[2], a[3], db, acc);
    else {
        static_assert(N == 256, "QGMMA P.V width (head_dim): 128 or 256");
        sm90_qrs_n256(d, a[0], a[1], a[2], a[3], db, acc);
    }
}

/* Dispatch by shape and type (F16 = the FP8-KV kernels' f16 operands). */
template <int N, bool F16> __device__ __forceinline__ void sm90_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int acc)
{
    if constexpr (N == 64)
        F16 ? sm90_ss_n64_f16(d, da, db, acc) : sm90_ss_n64_bf16(d, da, db, acc);
    else if constexpr (N == 80)
        F16 ? sm90_ss_n80_f16(d, da, db, acc) : sm90_ss_n80_bf16(d, da, db, acc);
    else {
        static_assert(N == 128, "QK^T tile width: 64, 80 or 128");
        F16 ? sm90_ss_n128_f16(d, da, db, acc) : sm90_ss_n128_bf16(d, da, db, acc);
    }
}

template <int N, bool F16>
__device__ __forceinline__ void sm90_rs(float (&d)[N / 2], const uint32_t *a, uint64_t db, int acc)
{
    if constexpr (N == 128)
        F16 ? sm90_rs_n128_f16(d, a[0], a[1], a[2], a[3], db, acc) : sm90_rs_n128_bf16(d, a[0], a[1], a[2], a[3], db, acc);
    else {
        static_assert(N == 256, "P.V width (head_dim): 128 or 256");
        F16 ? sm90_rs_n256_f16(d, a[0], a[1], a[2], a[3], db, acc) : sm90_rs_n256_bf16(d, a[0], a[1], a[2], a[3], db, acc);
    }
}

#endif
