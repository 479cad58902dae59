/* gemm_awq.cuh - W4A16 products with AutoAWQ GEMM-layout int4 weights on Hopper (sm_90a).
 *
 * y [M, N] = x [M, K] . W, W[k, n] = (q[k, n] - z[k/g, n]) * s[k/g, n]  (kernels/cpu/gemm_awq.h:
 * qweight [K, N/8] int32, qzeros [K/g, N/8] int32, scales [K/g, N] fp16; the weight struct is
 * cpu_awq_w with device pointers). Activations and outputs are bf16, accumulation float32.
 * CPU twin: cpu_awq_matmul (kernels/cpu/gemm_awq.h).
 *
 * - k_gemm_awq: the product for any M: k_gemv_awq for M <= AWQ_GEMV_ROWS (and group 32/64/128),
 *   else k_gemm_awq_mma.
 * - k_gemv_awq (M <= 8, decode batches; gemm_awq_gemv.cu): bound by reading the packed weights.
 *   Per warp one 64-column tile and a run of whole groups; four warps share a 16-step shared-memory
 *   ring that 16-byte cp.async copies fill in whole 128-byte lines of qweight; nibbles become exact
 *   bf16 (128 + q) integers (lop3 with magic 0x4300 = 128.0), the weights are the MMA's A operand
 *   (x as B: 8 batch columns, no padding rows), group sums scaled in float32, so the product is exact
 *   up to float32 rounding; one wave of blocks, K split across blocks where the columns do not fill
 *   it (workspace, the last block adds the partials in split order: deterministic).
 * - k_gemm_awq_mma (any M; gemm_awq.cu): tiles of 32*MT x 128 x 32 through a 3-stage cp.async
 *   pipeline, weights dequantized in registers to bf16 ((q - z) * s rounded once) and fed to
 *   mma.sync m16n8k16 with float32 accumulators.
 *
 * Requirements (checked, GM_ERR_INVALID_ARG / GM_ERR_UNSUPPORTED): group 32, 64 or 128
 * (gemm: any multiple of 32), K % group == 0, N % 64 == 0, ldq % 4 == 0, lds % 8 == 0,
 * ldx and ldy % 8 == 0, x, y, scales 16-byte aligned. Launchers take a stream, allocate
 * nothing and do not synchronise (graph-capturable). */
#ifndef GM_K_GEMM_AWQ_CUH
#define GM_K_GEMM_AWQ_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/status.h"
#include "../cpu/gemm_awq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most rows k_gemv_awq takes; k_gemm_awq sends M <= AWQ_GEMV_ROWS rows to it. */
#define AWQ_GEMV_MAX_ROWS 8
#define AWQ_GEMV_ROWS 4

/* Workspace bytes k_gemv_awq needs for a weight of N outputs, K inputs, this group, on the current
 * device (split-K partials and per-tile counters; 0: none). Zero it (cudaMemset) once after
 * allocating; every call leaves it ready for the next. One workspace per stream AND per (N, K, group):
 * the split counters sit before the partial sums at an offset that depends on N, so a call of
 * another shape would read the previous call's partials as counters (seen in the CUDA engine on
 * the H200, 2026-11-24: decode logits error 1.29 with one shared workspace). */
size_t k_gemv_awq_workspace_bytes(int64_t N, int64_t K, int64_t group);

/* y [M, N] (row stride ldy) = x [M, K] (row stride ldx) . dequant(w); M in 1..8; bf16; group 32, 64
 * or 128. Deterministic, and row r of a batch gives the bits of the 1-row call. Launched with PDL
 * (launch.cuh): its first weight copies start before the previous kernel finishes. */
gm_status k_gemv_awq(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy, void *ws,
                     size_t ws_bytes, cudaStream_t s);

/* The tensor-core GEMM for any M >= 1. */
gm_status k_gemm_awq_mma(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                         cudaStream_t s);

/* k_gemv_awq for M <= AWQ_GEMV_ROWS and group 32, 64 or 128 (ws needed then), else k_gemm_awq_mma. */
gm_status k_gemm_awq(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy, void *ws,
                     size_t ws_bytes, cudaStream_t s);

#ifdef __cplusplus
}
#endif

/* ---- device helpers shared by gemm_awq.cu and gemm_awq_gemv.cu ---- */
#ifdef __CUDACC__
#include <cuda_bf16.h>

/* Two nibbles of w as bf16x2 {128 + nibble 0, 128 + nibble 4} (low half first): with
 * AutoAWQ's order those are logical columns 2i and 2i+1 when w was shifted right by 4i. */
__device__ __forceinline__ uint32_t awq_nib2_bf16(uint32_t w)
{
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "n"(0x000F000F), "n"(0x43004300));
    return r;
}

__device__ __forceinline__ uint32_t awq_bf16x2_sub(uint32_t a, uint32_t b)
{
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}

__device__ __forceinline__ uint32_t awq_bf16x2_mul(uint32_t a, uint32_t b)
{
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}

/* d = a . b + d, m16n8k16, bf16 inputs, float32 accumulators (PTX fragment layouts). */
__device__ __forceinline__ void awq_mma_bf16(float d[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* B fragments of the two n8 tiles fed by nibble pair i of one packed column.
 * w[r]: the words of k rows 2q, 2q+1, 2q+8, 2q+9 of the k16 step (q = lane % 4);
 * zz: awq_nib2_bf16(zero word >> 4i); sc: bf16x2 scales of the pair, or 0 for none.
 * lo (tile of logical column 2i) and hi (2i+1) get {b0, b1}: b0 = (k 2q, 2q+1), b1 = (k 2q+8, 2q+9). */
__device__ __forceinline__ void awq_dequant_pair(const uint32_t w[4], int i, uint32_t zz, uint32_t sc, bool scaled,
                                                 uint32_t lo[2], uint32_t hi[2])
{
    uint32_t d[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        d[r] = awq_bf16x2_sub(awq_nib2_bf16(w[r] >> (4 * i)), zz);
        if (scaled)
            d[r] = awq_bf16x2_mul(d[r], sc);
    }
    lo[0] = __byte_perm(d[0], d[1], 0x5410);
    lo[1] = __byte_perm(d[2], d[3], 0x5410);
    hi[0] = __byte_perm(d[0], d[1], 0x7632);
    hi[1] = __byte_perm(d[2], d[3], 0x7632);
}

/* Validate the common shape rules; `what` names the kernel in the message. */
static inline gm_status awq_check_common(const char *what, const void *x, int64_t M, int64_t ldx,
                                         const cpu_awq_w *w, const void *y, int64_t ldy)
{
    if (!x || !y || !w || !w->qweight || !w->qzeros || !w->scales)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: null pointer", what);
    if (M < 1 || w->K < 1 || w->N < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: empty product M %lld K %lld N %lld", what, (long long)M,
                       (long long)w->K, (long long)w->N);
    if (w->group < 32 || w->group % 32 || w->K % w->group)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: group %lld must be a multiple of 32 dividing K %lld", what,
                       (long long)w->group, (long long)w->K);
    if (w->N % 64)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: N %lld is not a multiple of 64", what, (long long)w->N);
    if (w->ldq % 4 || w->ldq < w->N / 8 || w->lds % 8 || w->lds < w->N || ldx % 8 || ldx < w->K || ldy % 8 ||
        ldy < w->N)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: strides ldq %lld lds %lld ldx %lld ldy %lld (need %% 4, 8, 8, 8)",
                       what, (long long)w->ldq, (long long)w->lds, (long long)ldx, (long long)ldy);
    if (((uintptr_t)x | (uintptr_t)y | (uintptr_t)w->scales) & 15u)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: x, y and scales must be 16-byte aligned", what);
    if (((uintptr_t)w->qweight | (uintptr_t)w->qzeros) & 15u)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: qweight and qzeros must be 16-byte aligned", what);
    if (w->K > INT32_MAX / 2 || w->N > INT32_MAX / 2 || M > INT32_MAX / 2)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: dimensions too large", what);
    return GM_OK;
}
#endif /* __CUDACC__ */

#endif
