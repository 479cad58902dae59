/* attn_decode.cu - split kernel (grid n_split x nkv x B, 4 warps; warps take keys in turn,
 * each lane holds hd/32 dims of every query head of the group, online softmax in base 2),
 * then a merge kernel that combines the splits by their lse.
 * Memory-bound on the KV read: ctx * nkv * hd * 2 (K and V) * 2 bytes per sequence. */
#include "attn_decode.cuh"

#include <math.h>

#include "cuda_check.h"
#include "cuda_util.cuh"

#define DEC_WARPS 4
#define LOG2E 1.4426950408889634f

template <int VEC>
struct kv_vec;
template <>
struct kv_vec<1> {
    typedef unsigned short t;
};
template <>
struct kv_vec<2> {
    typedef unsigned int t;
};
template <>
struct kv_vec<4> {
    typedef uint2 t;
};
template <>
struct kv_vec<8> {
    typedef uint4 t;
};

template <int VEC>
__device__ __forceinline__ void to_f32(const typename kv_vec<VEC>::t &v, float f[VEC])
{
    const bf16 *p = reinterpret_cast<const bf16 *>(&v);
#pragma unroll
    for (int i = 0; i < VEC; i++)
        f[i] = __bfloat162float(p[i]);
}

/* Splits actually used for a context of L keys. */
__device__ __forceinline__ void split_plan(int L, int n_split, int &n_eff, int &chunk)
{
    int n = (L + ATTN_DECODE_MIN_CHUNK - 1) / ATTN_DECODE_MIN_CHUNK;
    if (n > n_split)
        n = n_split;
    if (n < 1)
        n = 1;
    chunk = (L + n - 1) / n;
    n_eff = (L + chunk - 1) / chunk;
}

template <int G, int HD>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    attn_decode_split(const bf16 *__restrict__ q, int64_t ldq, int32_t nh, int32_t nkv, const bf16 *__restrict__ kp,
                      const bf16 *__restrict__ vp, int32_t bs, const int32_t *__restrict__ bt, int32_t bt_stride,
                      const int32_t *__restrict__ ctx_lens, float scale, int32_t n_split, float *__restrict__ po,
                      float *__restrict__ plse, bf16 *__restrict__ out, int64_t ldo)
{
    constexpr int VEC = HD / 32;
    typedef typename kv_vec<VEC>::t vec_t;
    __shared__ float s_m[DEC_WARPS][G], s_l[DEC_WARPS][G];
    __shared__ float s_acc[DEC_WARPS][G][HD];

    int b = blockIdx.z, kvh = blockIdx.y, sp = blockIdx.x;
    int L = ctx_lens[b];
    if (L <= 0)
        return;
    int n_eff, chunk;
    split_plan(L, n_split, n_eff, chunk);
    if (sp >= n_eff)
        return;
    int j0 = sp * chunk, j1 = min(L, j0 + chunk);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    float qf[G][VEC], acc[G][VEC], m[G], l[G];
    const float qs = scale * LOG2E;
#pragma unroll
    for (int g = 0; g < G; g++) {
        vec_t qv = *reinterpret_cast<const vec_t *>(q + b * ldq + (int64_t)(kvh * G + g) * HD + lane * VEC);
        to_f32<VEC>(qv, qf[g]);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            qf[g][i] *= qs;
            acc[g][i] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    const int32_t *tb = bt + (int64_t)b * bt_stride;
    vec_t kn, vn;
    int j = j0 + warp;
    if (j < j1) {
        int64_t base = (((int64_t)tb[j / bs] * nkv + kvh) * bs + j % bs) * HD + lane * VEC;
        kn = __ldg(reinterpret_cast<const vec_t *>(kp + base));
        vn = __ldg(reinterpret_cast<const vec_t *>(vp + base));
    }
    for (; j < j1; j += DEC_WARPS) {
        vec_t kc = kn, vc = vn;
        int jn = j + DEC_WARPS;
        if (jn < j1) {
            int64_t base = (((int64_t)tb[jn / bs] * nkv + kvh) * bs + jn % bs) * HD + lane * VEC;
            kn = __ldg(reinterpret_cast<const vec_t *>(kp + base));
            vn = __ldg(reinterpret_cast<const vec_t *>(vp + base));
        }
        float kf[VEC], vf[VEC];
        to_f32<VEC>(kc, kf);
        to_f32<VEC>(vc, vf);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float sdot = 0.0f;
#pragma unroll
            for (int i = 0; i < VEC; i++)
                sdot = fmaf(qf[g][i], kf[i], sdot);
            sdot = warp_sum(sdot);
            float mn = fmaxf(m[g], sdot);
            float corr = exp2f(m[g] - mn), p = exp2f(sdot - mn);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int i = 0; i < VEC; i++)
                acc[g][i] = acc[g][i] * corr + p * vf[i];
            m[g] = mn;
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < VEC; i++)
            s_acc[warp][g][lane * VEC + i] = acc[g][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        int g = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++)
            M = fmaxf(M, s_m[w][g]);
        float Lsum = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            float wt = s_m[w][g] == -INFINITY ? 0.0f : exp2f(s_m[w][g] - M);
            Lsum += wt * s_l[w][g];
            O += wt * s_acc[w][g][d];
        }
        O /= Lsum;
        int h = kvh * G + g;
        if (n_eff == 1) {
            out[b * ldo + (int64_t)h * HD + d] = __float2bfloat16_rn(O);
        } else {
            int64_t r = ((int64_t)b * nh + h) * n_split + sp;
            po[r * HD + d] = O;
            if (d == 0)
                plse[r] = M + log2f(Lsum);
        }
    }
}

/* One block per (head, sequence): combine the used splits, or zero a padding row. */
template <int HD>
__global__ void attn_decode_merge(int32_t nh, const int32_t *__restrict__ ctx_lens, int32_t n_split,
                                  const float *__restrict__ po, const float *__restrict__ plse,
                                  bf16 *__restrict__ out, int64_t ldo)
{
    int h = blockIdx.x, b = blockIdx.y;
    int L = ctx_lens[b];
    bf16 *o = out + b * ldo + (int64_t)h * HD;
    if (L <= 0) {
        for (int d = threadIdx.x; d < HD; d += blockDim.x)
            o[d] = __float2bfloat16_rn(0.0f);
        return;
    }
    int n_eff, chunk;
    split_plan(L, n_split, n_eff, chunk);
    if (n_eff == 1)
        return; /* the split kernel wrote it */
    int64_t r0 = ((int64_t)b * nh + h) * n_split;
    float M = -INFINITY;
    for (int i = 0; i < n_eff; i++)
        M = fmaxf(M, plse[r0 + i]);
    float wsum = 0.0f;
    for (int i = 0; i < n_eff; i++)
        wsum += exp2f(plse[r0 + i] - M);
    float inv = 1.0f / wsum;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float O = 0.0f;
        for (int i = 0; i < n_eff; i++)
            O += exp2f(plse[r0 + i] - M) * po[(r0 + i) * HD + d];
        o[d] = __float2bfloat16_rn(O * inv);
    }
}

extern "C" size_t k_attn_decode_scratch_bytes(int32_t B, int32_t nh, int32_t hd, int32_t n_split)
{
    size_t rows = (size_t)B * (size_t)nh * (size_t)n_split;
    return rows * (size_t)hd * sizeof(float) + rows * sizeof(float) + 256;
}

extern "C" int32_t k_attn_decode_splits(int32_t B, int32_t nkv, int32_t max_ctx, int32_t n_sm)
{
    int64_t want = (2 * (int64_t)n_sm + (int64_t)B * nkv - 1) / ((int64_t)B * nkv);
    int64_t most = (max_ctx + ATTN_DECODE_MIN_CHUNK - 1) / ATTN_DECODE_MIN_CHUNK;
    if (want > most)
        want = most;
    return want < 1 ? 1 : (int32_t)want;
}

template <int G, int HD>
static void launch_dec(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, const void *kp,
                       const void *vp, int32_t bs, const int32_t *bt, int32_t bt_stride, const int32_t *ctx,
                       float scale, int32_t n_split, float *po, float *plse, void *out, int64_t ldo,
                       cudaStream_t s)
{
    dim3 grid((unsigned)n_split, (unsigned)nkv, (unsigned)B);
    attn_decode_split<G, HD><<<grid, DEC_WARPS * 32, 0, s>>>((const bf16 *)q, ldq, nh, nkv, (const bf16 *)kp,
                                                             (const bf16 *)vp, bs, bt, bt_stride, ctx, scale,
                                                             n_split, po, plse, (bf16 *)out, ldo);
    attn_decode_merge<HD><<<dim3((unsigned)nh, (unsigned)B), HD < 128 ? HD : 128, 0, s>>>(nh, ctx, n_split, po, plse,
                                                                                        (bf16 *)out, ldo);
}

template <int HD>
static gm_status dispatch_g(int G, const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, const void *kp,
                            const void *vp, int32_t bs, const int32_t *bt, int32_t bt_stride, const int32_t *ctx,
                            float scale, int32_t n_split, float *po, float *plse, void *out, int64_t ldo,
                            cudaStream_t s)
{
    switch (G) {
    case 1: launch_dec<1, HD>(q, ldq, B, nh, nkv, kp, vp, bs, bt, bt_stride, ctx, scale, n_split, po, plse, out, ldo, s); break;
    case 2: launch_dec<2, HD>(q, ldq, B, nh, nkv, kp, vp, bs, bt, bt_stride, ctx, scale, n_split, po, plse, out, ldo, s); break;
    case 4: launch_dec<4, HD>(q, ldq, B, nh, nkv, kp, vp, bs, bt, bt_stride, ctx, scale, n_split, po, plse, out, ldo, s); break;
    case 8: launch_dec<8, HD>(q, ldq, B, nh, nkv, kp, vp, bs, bt, bt_stride, ctx, scale, n_split, po, plse, out, ldo, s); break;
    default:
        return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_decode: %d query heads per KV head (supported: 1, 2, 4, 8)", G);
    }
    return GM_OK;
}

extern "C" gm_status k_attn_decode(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                                   const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                                   int32_t bt_stride, const int32_t *ctx_lens, float scale, int32_t n_split,
                                   void *scratch, void *out, int64_t ldo, cudaStream_t s)
{
    if (B <= 0)
        return GM_OK;
    if (nkv < 1 || nh % nkv || n_split < 1 || ldq % 8 || ldo % 8)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode: nh %d, nkv %d, n_split %d, ldq %lld, ldo %lld", nh, nkv,
                       n_split, (long long)ldq, (long long)ldo);
    int G = nh / nkv;
    float *po = (float *)scratch;
    float *plse = po + (size_t)B * nh * n_split * hd;
    gm_status st;
    switch (hd) {
    case 32: st = dispatch_g<32>(G, q, ldq, B, nh, nkv, k_pool, v_pool, bs, block_tables, bt_stride, ctx_lens, scale, n_split, po, plse, out, ldo, s); break;
    case 64: st = dispatch_g<64>(G, q, ldq, B, nh, nkv, k_pool, v_pool, bs, block_tables, bt_stride, ctx_lens, scale, n_split, po, plse, out, ldo, s); break;
    case 128: st = dispatch_g<128>(G, q, ldq, B, nh, nkv, k_pool, v_pool, bs, block_tables, bt_stride, ctx_lens, scale, n_split, po, plse, out, ldo, s); break;
    case 256: st = dispatch_g<256>(G, q, ldq, B, nh, nkv, k_pool, v_pool, bs, block_tables, bt_stride, ctx_lens, scale, n_split, po, plse, out, ldo, s); break;
    default:
        return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_decode: head_dim %d (supported: 32, 64, 128, 256)", hd);
    }
    if (st)
        return st;
    GM_LAUNCH_CHECK();
    return GM_OK;
}
