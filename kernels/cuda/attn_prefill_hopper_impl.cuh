/* attn_prefill_hopper_impl.cuh - internal to the Hopper prefill kernels (attn_prefill_hopper.cu: bf16 and
 * f16-converted FP8 pools; attn_prefill_hopper_e4m3.cu: e4m3 QGMMA): the launch parameters, the work list,
 * the mbarrier layout, the paged-KV tensor copies, the online softmax and the host helpers they share.
 * The design and every layout assumption: the header comment of attn_prefill_hopper.cu. CUDA C++ only. */
#ifndef GM_K_ATTN_PREFILL_HOPPER_IMPL_CUH
#define GM_K_ATTN_PREFILL_HOPPER_IMPL_CUH

#include <stdint.h>

#include <cuda_bf16.h>

#include "../../common/status.h"
#include "sm90_async.cuh"

namespace gm_hp {

constexpr int HP_BM = 128; /* query rows per work item (2 consumer warpgroups x 64) */
constexpr int HP_STAGES = 2;
constexpr int HP_THREADS = 384;
/* named barrier ids (0 is __syncthreads'); HP_BAR_QCONV + wg for the two consumer warpgroups */
constexpr int HP_BAR_QEMPTY = 1, HP_BAR_VTAIL = 2, HP_BAR_STAGED = 3, HP_BAR_QCONV = 4;
constexpr int HP_SMEM_MAX = 232448; /* 227 KB of shared memory per block (sm_90) */
constexpr float HP_LOG2E = 1.4426950408889634f;

/* Kernel arguments (a __grid_constant__ parameter: the tensor maps stay in parameter space). */
struct hp_params {
    CUtensorMap qmap, kmap, vmap; /* kmap, vmap: bf16 pools, or e4m3 ones for the QGMMA kernel */
    const uint8_t *k8, *v8;       /* FP8 pools */
    const __nv_bfloat16 *q;       /* the QGMMA kernel reads q itself (row stride ldq) */
    int64_t ldq;
    const int32_t *q_start, *n_new, *start_pos, *block_tables;
    __nv_bfloat16 *out;
    int64_t ldo;
    int32_t bt_stride, nh, nkv, group, bs, n_seqs, n_qt, total, window;
    int32_t kv_rows, box_rows; /* pool rows (first row past the tensor), TMA box rows R */
    int32_t n_tokens;          /* rows of q */
    float score_mul;           /* logit (base 2) = acc * score_mul, without soft-capping (QGMMA: times the
                                * row's q scale) */
    float cap_in, cap_out;     /* soft-capping: x = cap_out * tanh(acc * cap_in), logit = x * log2 e */
    float out_mul;             /* O = out_mul * (P V) / l (kv_scale for FP8) */
};

/* One work item. */
struct hp_work {
    int32_t seq, head, kvh, r0, rows, sp, kv_len, n_lo, n_hi, qrow0;
};

template <int BN> __device__ __forceinline__ bool hp_work_at(const hp_params &p, int w, hp_work &k)
{
    const int per = p.nh * p.n_seqs, qt = p.n_qt - 1 - w / per, rem = w % per;
    k.seq = rem / p.nh;
    k.head = rem % p.nh;
    const int nq = p.n_new[k.seq];
    k.r0 = qt * HP_BM;
    if (k.r0 >= nq)
        return false;
    k.rows = min(HP_BM, nq - k.r0);
    k.sp = p.start_pos[k.seq];
    k.qrow0 = p.q_start[k.seq] + k.r0;
    k.kvh = k.head / p.group;
    k.kv_len = k.sp + k.r0 + k.rows;
    const int lo = p.window > 0 ? max(0, k.sp + k.r0 - p.window + 1) : 0;
    k.n_lo = lo / BN;
    k.n_hi = (k.kv_len + BN - 1) / BN;
    return true;
}

/* The first non-empty item at or after w of this block's list (w, w + grid, ...); -1 at the end. */
template <int BN> __device__ __forceinline__ int hp_work_next(const hp_params &p, int w, hp_work &k)
{
    for (; w < p.total; w += gridDim.x)
        if (hp_work_at<BN>(p, w, k))
            return w;
    return -1;
}

/* mbarrier addresses: Qfull, Kfull[2], Kempty[2], Vfull[2], Vempty[2]. */
__device__ __forceinline__ uint32_t hp_bar_q(uint32_t b) { return b; }
__device__ __forceinline__ uint32_t hp_bar_kf(uint32_t b, int s) { return b + 8 + 8 * s; }
__device__ __forceinline__ uint32_t hp_bar_ke(uint32_t b, int s) { return b + 24 + 8 * s; }
__device__ __forceinline__ uint32_t hp_bar_vf(uint32_t b, int s) { return b + 40 + 8 * s; }
__device__ __forceinline__ uint32_t hp_bar_ve(uint32_t b, int s) { return b + 56 + 8 * s; }
__device__ __forceinline__ uint32_t hp_bar_sk(uint32_t b) { return b + 72; } /* FP8 staging of K */
__device__ __forceinline__ uint32_t hp_bar_sv(uint32_t b) { return b + 80; } /* FP8 staging of V */

__device__ __forceinline__ float hp_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float hp_tanh(float x)
{
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Row of key `key` (< kv_len) of KV head kvh in the pool's 2D view; past the tensor (zero fill) only
 * when its block id is out of range (a corrupt block table). */
__device__ __forceinline__ int hp_kv_row(const hp_params &p, const int32_t *bt, const hp_work &k, int key)
{
    const int64_t r = ((int64_t)bt[key / p.bs] * p.nkv + k.kvh) * p.bs + key % p.bs;
    return r >= 0 && r < p.kv_rows ? (int)r : p.kv_rows;
}

/* Tensor copies of key tile n (BN keys, PANELS panels of 128-byte rows, COLS elements each) into dst,
 * completing on bar. A box that starts at or past kv_len (the last tile's tail) copies the tile's first
 * box again instead of pointing outside the tensor: its keys are masked and their V rows zeroed (by the
 * consumers, or by the V transposer), so no copy depends on how the copy engine counts the bytes of a box
 * that lies wholly outside the tensor. */
template <int PANELS, int BN, int COLS>
__device__ __forceinline__ void hp_tma_kv(const hp_params &p, const CUtensorMap *map, const int32_t *bt,
                                          const hp_work &k, int n, uint32_t dst, uint32_t bar)
{
    const uint64_t pol = sm90_evict_last();
    const int row0 = hp_kv_row(p, bt, k, n * BN); /* n * BN < kv_len */
    for (int r = 0; r < BN; r += p.box_rows) {
        const int row = r == 0 || n * BN + r >= k.kv_len ? row0 : hp_kv_row(p, bt, k, n * BN + r);
#pragma unroll
        for (int c = 0; c < PANELS; c++)
            sm90_tma_2d(dst + c * (BN * 128) + r * 128, map, c * COLS, row, bar, pol);
    }
}

template <int HD> __device__ __forceinline__ void hp_rescale(float (&O)[HD / 2], const float (&alpha)[2])
{
#pragma unroll
    for (int i = 0; i < HD / 8; i++) {
        O[4 * i] *= alpha[0];
        O[4 * i + 1] *= alpha[0];
        O[4 * i + 2] *= alpha[1];
        O[4 * i + 3] *= alpha[1];
    }
}

/* Online softmax step on S (this thread's 2 rows x BN/4 keys of tile j0..j0+BN): soft-capping,
 * the mask when MASK, new maxima m, the factor alpha that rescales O and l, S -> exp2 values.
 * QS (the QGMMA kernel): the rows' scores carry the q scales qs[2] (row_a, row_a + 8), folded into the
 * multipliers, and the exp2 values are 2^8 times larger (e4m3 P in its normal range; l cancels it). */
template <int BN, bool MASK, bool QS = false>
__device__ __forceinline__ void hp_softmax(const hp_params &p, float (&S)[BN / 2], float (&m)[2], float (&l)[2],
                                           float (&alpha)[2], int j0, int pos0, int kv_len, int tq,
                                           const float (&qs)[2] = {1.0f, 1.0f})
{
    float c[2] = {QS ? p.score_mul * qs[0] : p.score_mul, QS ? p.score_mul * qs[1] : p.score_mul};
    if (p.cap_in > 0.0f) {
        const float cin[2] = {QS ? p.cap_in * qs[0] : p.cap_in, QS ? p.cap_in * qs[1] : p.cap_in};
#pragma unroll
        for (int i = 0; i < BN / 2; i++)
            S[i] = p.cap_out * hp_tanh(S[i] * cin[(i >> 1) & 1]);
        c[0] = c[1] = HP_LOG2E;
    }
    if (MASK) {
        const int pos1 = pos0 + 8, lim = min(kv_len, pos0 + 1), lim1 = min(kv_len, pos1 + 1);
        const int lo0 = p.window > 0 ? pos0 - p.window : INT32_MIN, lo1 = p.window > 0 ? pos1 - p.window : INT32_MIN;
#pragma unroll
        for (int i = 0; i < BN / 8; i++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = j0 + 8 * i + 2 * tq + e;
                S[4 * i + e] = key < lim && key > lo0 ? S[4 * i + e] : -INFINITY;
                S[4 * i + 2 + e] = key < lim1 && key > lo1 ? S[4 * i + 2 + e] : -INFINITY;
            }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < BN / 8; i++) {
        mx[0] = fmaxf(mx[0], fmaxf(S[4 * i], S[4 * i + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(S[4 * i + 2], S[4 * i + 3]));
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        ref[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * c[r]; /* a row with no key yet: exp2 gives 0, not NaN */
        alpha[r] = hp_exp2(m[r] * c[r] - ref[r]);
        m[r] = mx[r];
        if (QS)
            ref[r] -= 8.0f;
    }
#pragma unroll
    for (int i = 0; i < BN / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            S[4 * i + e] = hp_exp2(fmaf(S[4 * i + e], c[e >> 1], -ref[e >> 1]));
            sum[e >> 1] += S[4 * i + e];
        }
#pragma unroll
    for (int r = 0; r < 2; r++)
        l[r] = l[r] * alpha[r] + sum[r];
}

/* Release a stage: lane 0 of each consumer warp arrives once its warp is past the wgmma wait. */
__device__ __forceinline__ void hp_release(uint32_t bar, int lane)
{
    __syncwarp();
    if (lane == 0)
        sm90_mbar_arrive(bar);
}

/* ------------------------------------------------------------------ host */

/* A 2D map [rows, cols] of bf16 (bytes 2: 64-column boxes) or of e4m3 codes (bytes 1: 128-column boxes),
 * row stride row_bytes, boxes of box_rows rows, 128-byte swizzle. */
inline gm_status hp_map(CUtensorMap *m, const void *base, int bytes, uint64_t cols, uint64_t rows, uint64_t row_bytes,
                        uint32_t box_rows, const char *what)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = sm90_tensor_map_encoder();
    if (!encode)
        return gm_fail(GM_ERR_CUDA, "k_attn_prefill_hopper: the driver has no cuTensorMapEncodeTiled");
    const cuuint64_t dims[2] = {cols, rows}, strides[1] = {row_bytes};
    const cuuint32_t box[2] = {bytes == 1 ? 128u : 64u, box_rows}, estr[2] = {1, 1};
    const CUtensorMapDataType ty = bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    CUresult r = encode(m, ty, 2, const_cast<void *>(base), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return gm_fail(GM_ERR_CUDA, "k_attn_prefill_hopper: cuTensorMapEncodeTiled (%s: %llu x %llu, row %llu bytes, "
                       "box %u rows): error %d", what, (unsigned long long)rows, (unsigned long long)cols,
                       (unsigned long long)row_bytes, box_rows, (int)r);
    return GM_OK;
}

inline int hp_gcd(int a, int b)
{
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* 0 when the current device is an sm_90 part; its SM count in *sms. */
inline int hp_device(int *sms)
{
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) ||
        cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev)) {
        (void)cudaGetLastError();
        return -1;
    }
    return major == 9 && minor == 0 ? 0 : -1;
}

/* The e4m3 QGMMA kernel for head_dim hd (128 or 256) on grid blocks (attn_prefill_hopper_e4m3.cu). */
gm_status hp_e4m3_launch(const hp_params &prm, int32_t hd, int grid, cudaStream_t s);

} // namespace gm_hp
#endif
