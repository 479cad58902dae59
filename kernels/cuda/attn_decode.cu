/* attn_decode.cu - grid n_split x nkv x B, 4 warps: warps take keys in turn, each lane holds
 * hd/32 dims of every query head of the group, online softmax in base 2 per warp, warps
 * combined in shared memory. With several splits, each block stores its normalized partial O
 * and lse; a merge kernel (grid hd/32 x nh x B, 8 warps sharing the splits) combines them:
 * O = sum_i exp2(lse_i - M) O_i / sum_i exp2(lse_i - M), M = max lse_i (base-2 lse).
 * Memory-bound on the KV read: ctx * nkv * hd * 2 (K and V) * 2 bytes per sequence (a sliding layer
 * reads its window only: the splits cover [L - window, L)).
 * Template switches: OPT = the layer has a soft-cap or a window (k_attn_opts_plain false; OPT false is
 * Gemma 1's code, instruction for instruction), QKN = Gemma 3's QK-norm in the RoPE fold. */
#include "attn_decode.cuh"

#include <math.h>

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

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

template <int VEC>
__device__ __forceinline__ typename kv_vec<VEC>::t to_bf16(const float f[VEC])
{
    typename kv_vec<VEC>::t v;
    bf16 *p = reinterpret_cast<bf16 *>(&v);
#pragma unroll
    for (int i = 0; i < VEC; i++)
        p[i] = __float2bfloat16_rn(f[i]);
    return v;
}

/* e4m3 pools: VEC bytes per lane */
template <int VEC>
struct kv8_vec;
template <>
struct kv8_vec<1> {
    typedef uint8_t t;
};
template <>
struct kv8_vec<2> {
    typedef unsigned short t;
};
template <>
struct kv8_vec<4> {
    typedef unsigned int t;
};
template <>
struct kv8_vec<8> {
    typedef uint2 t;
};

/* What a lane loads from a bf16 (KV8 false) or e4m3 (KV8 true) pool and how it becomes floats
 * (e4m3 exactly, without the pool's scale: the kernel folds that into q and the output). */
template <bool KV8, int VEC>
struct kv_io {
    typedef typename kv_vec<VEC>::t t;
    static constexpr int esz = 2;
    static __device__ __forceinline__ void cvt(const t &v, float f[VEC]) { to_f32<VEC>(v, f); }
};
template <int VEC>
struct kv_io<true, VEC> {
    typedef typename kv8_vec<VEC>::t t;
    static constexpr int esz = 1;
    static __device__ __forceinline__ void cvt(const t &v, float f[VEC])
    {
        const uint8_t *p = reinterpret_cast<const uint8_t *>(&v);
#pragma unroll
        for (int i = 0; i < VEC; i += 2) {
            if (i + 1 < VEC) {
                __nv_fp8x2_storage_t two = (__nv_fp8x2_storage_t)(p[i] | (p[i + 1] << 8));
                __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3);
                float2 t2 = __half22float2(*reinterpret_cast<__half2 *>(&h));
                f[i] = t2.x;
                f[i + 1] = t2.y;
            } else {
                __half_raw h = __nv_cvt_fp8_to_halfraw(p[i], __NV_E4M3);
                f[i] = __half2float(*reinterpret_cast<__half *>(&h));
            }
        }
    }
};

/* Rotate-half RoPE of one head held across the warp (lane holds dims lane*VEC ..; the partner
 * of dim d is d +- hd/2, 16 lanes away), rounding as HF's bf16 ops. cs: [hd/2][2] (cos, sin). */
template <int VEC, int HD>
__device__ __forceinline__ void rope_warp(float f[VEC], const float *cs, int lane)
{
    bool lo = lane < 16;
#pragma unroll
    for (int i = 0; i < VEC; i++) {
        float other = __shfl_xor_sync(0xffffffffu, f[i], 16);
        int d = (lane * VEC + i) % (HD / 2);
        float c = cs[2 * d], sn = cs[2 * d + 1];
        float a = round_bf16(f[i] * c), b = round_bf16((lo ? -other : other) * sn);
        f[i] = round_bf16(a + b);
    }
}

/* Gemma 3's QK-norm of one head held across the warp as rope_warp holds it: x * rsqrt(mean(x^2) + eps) * w1,
 * rounded to bf16 (HF's Gemma3RMSNorm). w1 [HD] f32. */
template <int VEC, int HD>
__device__ __forceinline__ void qk_norm_warp(float f[VEC], const float *w1, float eps, int lane)
{
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; i++)
        ss += f[i] * f[i];
    const float r = rsqrtf(warp_sum(ss) / (float)HD + eps);
#pragma unroll
    for (int i = 0; i < VEC; i++)
        f[i] = round_bf16(f[i] * r * w1[lane * VEC + i]);
}

/* First key a sliding layer's query at position L - 1 reads (0 without a window). */
__device__ __forceinline__ int window_lo(int L, int32_t window) { return window > 0 && L > window ? L - window : 0; }

/* Splits actually used for a context of L keys (at most n_split, at least ATTN_DECODE_MIN_CHUNK keys
 * each but the last); the merge kernel plans the same way. */
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

/* The attention output as the o_proj's FP8 input: e4m3(bf16(O) * (1 / scale)), bit for bit what
 * k_fp8_quantize makes of the bf16 output. */
__device__ __forceinline__ uint8_t q8_code(float O, const float *scale)
{
    float ob = __bfloat162float(__float2bfloat16_rn(O));
    return (uint8_t)__nv_cvt_float_to_fp8(ob * (1.0f / *scale), __NV_SATFINITE, __NV_E4M3);
}

/* KV8: the pools hold e4m3 codes (value = code * kv_scale); never with ROPE (the FP8 pool is
 * written by k_kv_write_fp8 before). OPT: keys from window_lo(L, window); cap_l2 > 0: the score is
 * cap_l2 * tanh(q . k) with q pre-scaled by scale (the host passes scale / softcap and softcap * log2 e),
 * else q . k with q pre-scaled by scale * log2 e. QKN (with ROPE): q and k QK-normed by qn_w1 / kn_w1 first. */
template <int G, int HD, bool ROPE, bool KV8, bool OPT, bool QKN>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    attn_decode_kernel(const bf16 *__restrict__ q, int64_t ldq, int32_t nh, int32_t nkv, void *__restrict__ kpool,
                       void *__restrict__ vpool, int32_t bs, const int32_t *__restrict__ bt, int32_t bt_stride,
                       const int32_t *__restrict__ ctx_lens, const int32_t *__restrict__ slots,
                       const float *__restrict__ rope_table, float scale, float kv_scale, int32_t n_split,
                       float *__restrict__ po, float *__restrict__ plse, bf16 *__restrict__ out, int64_t ldo,
                       uint8_t *__restrict__ out8, const float *__restrict__ out8_scale, int32_t window, float cap_l2,
                       const float *__restrict__ qn_w1, const float *__restrict__ kn_w1, float qk_eps)
{
    static_assert(!(ROPE && KV8), "the FP8 pool is written before the attention");
    static_assert(!QKN || ROPE, "QK-norm rides on the RoPE fold");
    constexpr int VEC = HD / 32;
    typedef kv_io<KV8, VEC> io;
    typedef typename io::t vec_t;
    char *kp = reinterpret_cast<char *>(kpool), *vp = reinterpret_cast<char *>(vpool);
    __shared__ float s_m[DEC_WARPS][G], s_l[DEC_WARPS][G];
    __shared__ float s_acc[DEC_WARPS][G][HD];

    pdl_wait();
    int b = blockIdx.z, kvh = blockIdx.y, sp = blockIdx.x;
    int L = ctx_lens[b];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (L <= 0) /* padding row: the merge kernel writes its zeros */
        return;
    const int lo = OPT ? window_lo(L, window) : 0;
    int n_eff, chunk;
    split_plan(L - lo, n_split, n_eff, chunk);
    if (sp >= n_eff)
        return;
    int j0 = lo + sp * chunk, j1 = min(L, j0 + chunk);
    const float *cs = ROPE ? rope_table + (int64_t)(L - 1) * HD : nullptr; /* [HD/2][2] of this position */

    float qf[G][VEC], acc[G][VEC], m[G], l[G];
    float qs = scale * LOG2E * (KV8 ? kv_scale : 1.0f); /* K's scale folded into q */
    if (OPT && cap_l2 > 0.0f)
        qs = scale * (KV8 ? kv_scale : 1.0f); /* scale / softcap: the argument of the tanh */
#pragma unroll
    for (int g = 0; g < G; g++) {
        typedef typename kv_vec<VEC>::t qvec_t; /* q is bf16 whatever the pool holds */
        qvec_t qv = *reinterpret_cast<const qvec_t *>(q + b * ldq + (int64_t)(kvh * G + g) * HD + lane * VEC);
        to_f32<VEC>(qv, qf[g]);
        if constexpr (QKN)
            qk_norm_warp<VEC, HD>(qf[g], qn_w1, qk_eps, lane);
        if (ROPE)
            rope_warp<VEC, HD>(qf[g], cs, lane);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            qf[g][i] *= qs;
            acc[g][i] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    /* the new token's k and v (from qkv), for the block holding the last key */
    vec_t knew, vnew;
    bool has_new = ROPE && j1 == L;
    if constexpr (ROPE) {
        if (has_new) {
            const bf16 *row = q + b * ldq;
            float kf[VEC];
            to_f32<VEC>(*reinterpret_cast<const vec_t *>(row + (int64_t)(nh + kvh) * HD + lane * VEC), kf);
            if constexpr (QKN)
                qk_norm_warp<VEC, HD>(kf, kn_w1, qk_eps, lane);
            rope_warp<VEC, HD>(kf, cs, lane);
            knew = to_bf16<VEC>(kf);
            vnew = *reinterpret_cast<const vec_t *>(row + (int64_t)(nh + nkv + kvh) * HD + lane * VEC);
            int32_t sl = slots[b];
            if (warp == 0 && sl >= 0) {
                int64_t base = (((int64_t)(sl / bs) * nkv + kvh) * bs + sl % bs) * HD + lane * VEC;
                *reinterpret_cast<vec_t *>(kp + base * io::esz) = knew;
                *reinterpret_cast<vec_t *>(vp + base * io::esz) = vnew;
            }
        }
    }
    const int32_t *tb = bt + (int64_t)b * bt_stride;
    int last_pool = has_new ? L - 1 : L; /* keys read from the pool: [j0, last_pool) */
    /* each warp walks its keys with the next one's load in flight (nothing past this split: another
     * split's block may be writing key L - 1) */
    vec_t kn, vn;
    int j = j0 + warp;
    if (j < last_pool) {
        int64_t base = ((((int64_t)tb[j / bs] * nkv + kvh) * bs + j % bs) * HD + lane * VEC) * io::esz;
        kn = __ldg(reinterpret_cast<const vec_t *>(kp + base));
        vn = __ldg(reinterpret_cast<const vec_t *>(vp + base));
    }
    for (; j < j1; j += DEC_WARPS) {
        vec_t kc = kn, vc = vn;
        if constexpr (ROPE) {
            if (j >= last_pool)
                kc = knew, vc = vnew;
        }
        int jn = j + DEC_WARPS;
        if (jn < last_pool && jn < j1) {
            int64_t base = ((((int64_t)tb[jn / bs] * nkv + kvh) * bs + jn % bs) * HD + lane * VEC) * io::esz;
            kn = __ldg(reinterpret_cast<const vec_t *>(kp + base));
            vn = __ldg(reinterpret_cast<const vec_t *>(vp + base));
        }
        float kf[VEC], vf[VEC];
        io::cvt(kc, kf);
        io::cvt(vc, vf);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float sdot = 0.0f;
#pragma unroll
            for (int i = 0; i < VEC; i++)
                sdot = fmaf(qf[g][i], kf[i], sdot);
            sdot = warp_sum(sdot);
            if (OPT && cap_l2 > 0.0f)
                sdot = cap_l2 * tanh_fast(sdot);
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
        if (KV8)
            O *= kv_scale; /* V's scale */
        int h = kvh * G + g;
        if (n_eff == 1) {
            if (out8)
                out8[((int64_t)b * nh + h) * HD + d] = q8_code(O, out8_scale);
            else
                out[b * ldo + (int64_t)h * HD + d] = __float2bfloat16_rn(O);
        } else {
            int64_t r = ((int64_t)b * nh + h) * n_split + sp;
            po[r * HD + d] = O;
            if (d == 0)
                plse[r] = M + log2f(Lsum);
        }
    }
}

/* Block (dim chunk, head, sequence): combine the used splits of 32 dims, or zero a padding row. */
template <int HD, bool OPT>
__global__ void __launch_bounds__(256)
    attn_decode_merge(int32_t nh, const int32_t *__restrict__ ctx_lens, int32_t n_split, const float *__restrict__ po,
                      const float *__restrict__ plse, bf16 *__restrict__ out, int64_t ldo, uint8_t *__restrict__ out8,
                      const float *__restrict__ out8_scale, int32_t window)
{
    constexpr int DW = HD < 32 ? HD : 32; /* dims per block */
    __shared__ float s_max[8], s_w[8], s_acc[8][32];
    pdl_wait();
    int h = blockIdx.y, b = blockIdx.z, d = blockIdx.x * DW + (threadIdx.x & 31);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int L = ctx_lens[b];
    bf16 *o = out + b * ldo + (int64_t)h * HD;
    uint8_t *o8 = out8 ? out8 + ((int64_t)b * nh + h) * HD : NULL;
    if (L <= 0) {
        if (warp == 0 && lane < DW) {
            if (o8)
                o8[d] = 0;
            else
                o[d] = __float2bfloat16_rn(0.0f);
        }
        return;
    }
    int n_eff, chunk;
    split_plan(OPT ? L - window_lo(L, window) : L, n_split, n_eff, chunk);
    if (n_eff == 1)
        return; /* the split kernel wrote it */
    int64_t r0 = ((int64_t)b * nh + h) * n_split;
    float m = -INFINITY;
    for (int i = warp; i < n_eff; i += 8)
        m = fmaxf(m, plse[r0 + i]);
    if (lane == 0)
        s_max[warp] = m;
    __syncthreads();
    float M = s_max[0];
#pragma unroll
    for (int w = 1; w < 8; w++)
        M = fmaxf(M, s_max[w]);
    float acc = 0.0f, ws = 0.0f;
#pragma unroll 4
    for (int i = warp; i < n_eff; i += 8) {
        float w = exp2f(plse[r0 + i] - M);
        ws += w;
        if (lane < DW)
            acc += w * po[(r0 + i) * HD + d];
    }
    if (lane == 0)
        s_w[warp] = ws;
    s_acc[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && lane < DW) {
        float a = 0.0f, wsum = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++)
            a += s_acc[w][lane], wsum += s_w[w];
        if (o8)
            o8[d] = q8_code(a / wsum, out8_scale);
        else
            o[d] = __float2bfloat16_rn(a / wsum);
    }
}

extern "C" size_t k_attn_decode_scratch_bytes(int32_t B, int32_t nh, int32_t nkv, int32_t hd, int32_t n_split)
{
    size_t rows = (size_t)B * (size_t)nh * (size_t)n_split;
    (void)nkv;
    return rows * (size_t)hd * sizeof(float) + rows * sizeof(float) + 256;
}

extern "C" int32_t k_attn_decode_splits(int32_t B, int32_t nkv, int32_t max_ctx, int32_t n_sm)
{
    int64_t want = (2 * (int64_t)n_sm + (int64_t)B * nkv - 1) / ((int64_t)B * nkv);
    int64_t most = (max_ctx + ATTN_DECODE_MIN_CHUNK - 1) / ATTN_DECODE_MIN_CHUNK;
    if (want > most)
        want = most;
    if (want > ATTN_DECODE_MAX_SPLIT)
        want = ATTN_DECODE_MAX_SPLIT;
    return want < 1 ? 1 : (int32_t)want;
}

typedef struct dec_args {
    const bf16 *q;
    int64_t ldq;
    int32_t B, nh, nkv;
    void *kp, *vp;
    int32_t bs;
    const int32_t *bt;
    int32_t bt_stride;
    const int32_t *ctx, *slots;
    const float *rope;
    float scale, kv_scale;
    int32_t n_split;
    float *po, *plse;
    bf16 *out;
    int64_t ldo;
    uint8_t *out8;            /* non-NULL: e4m3 codes [B, nh*hd] dense instead of out */
    const float *out8_scale;
    int32_t window;           /* the layer's options as the kernel takes them (dec_set_opts) */
    float cap_l2;
    const k_qk_norm *qkn;     /* ROPE: Gemma 3's QK-norm, or NULL */
} dec_args;

/* The layer's options into a: the kernel's scale (scale / softcap under a soft-cap, whose tanh output is
 * scaled by softcap * log2 e), window. */
static gm_status dec_set_opts(dec_args *a, const k_attn_opts *opt)
{
    if (!k_attn_opts_valid(opt))
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention: options scale %g, softcap %g, window %d",
                       opt ? (double)opt->scale : 0.0, opt ? (double)opt->softcap : 0.0, opt ? opt->window : 0);
    a->scale = opt->softcap > 0.0f ? opt->scale / opt->softcap : opt->scale;
    a->cap_l2 = opt->softcap > 0.0f ? opt->softcap * LOG2E : 0.0f;
    a->window = opt->window;
    return GM_OK;
}

template <int G, int HD, bool ROPE, bool KV8, bool OPT, bool QKN>
static cudaError_t launch_dec(const dec_args *a, cudaStream_t s)
{
    dim3 grid((unsigned)a->n_split, (unsigned)a->nkv, (unsigned)a->B);
    const float *qn = QKN ? a->qkn->q_w1 : NULL, *kn = QKN ? a->qkn->k_w1 : NULL;
    cudaError_t e = gm_launch(attn_decode_kernel<G, HD, ROPE, KV8, OPT, QKN>, grid, dim3(DEC_WARPS * 32), 0, s, a->q,
                              a->ldq, a->nh, a->nkv, a->kp, a->vp, a->bs, a->bt, a->bt_stride, a->ctx, a->slots,
                              a->rope, a->scale, a->kv_scale, a->n_split, a->po, a->plse, a->out, a->ldo, a->out8,
                              a->out8_scale, a->window, a->cap_l2, qn, kn, QKN ? a->qkn->eps : 0.0f);
    if (e != cudaSuccess)
        return e;
    dim3 mgrid((unsigned)(HD < 32 ? 1 : HD / 32), (unsigned)a->nh, (unsigned)a->B);
    return gm_launch(attn_decode_merge<HD, OPT>, mgrid, dim3(256), 0, s, a->nh, a->ctx, a->n_split, a->po, a->plse,
                     a->out, a->ldo, a->out8, a->out8_scale, a->window);
}

template <int HD, bool ROPE, bool KV8, bool OPT, bool QKN>
static gm_status dispatch_g(int G, const dec_args *a, cudaStream_t s)
{
    cudaError_t e;
    switch (G) {
    case 1: e = launch_dec<1, HD, ROPE, KV8, OPT, QKN>(a, s); break;
    case 2: e = launch_dec<2, HD, ROPE, KV8, OPT, QKN>(a, s); break;
    case 4: e = launch_dec<4, HD, ROPE, KV8, OPT, QKN>(a, s); break;
    case 8: e = launch_dec<8, HD, ROPE, KV8, OPT, QKN>(a, s); break;
    default:
        return gm_fail(GM_ERR_UNSUPPORTED, "decode attention: %d query heads per KV head (supported: 1, 2, 4, 8)", G);
    }
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "decode attention launch: %s", cudaGetErrorString(e));
    return GM_OK;
}

/* The template switches from the arguments: OPT where the options are not plain, QKN where a QK-norm rides
 * on the RoPE fold. */
template <int HD, bool ROPE, bool KV8>
static gm_status dispatch_opt(int G, const dec_args *a, cudaStream_t s)
{
    const bool opt = a->window > 0 || a->cap_l2 > 0.0f;
    if constexpr (ROPE) {
        if (a->qkn)
            return opt ? dispatch_g<HD, ROPE, KV8, true, true>(G, a, s)
                       : dispatch_g<HD, ROPE, KV8, false, true>(G, a, s);
    }
    return opt ? dispatch_g<HD, ROPE, KV8, true, false>(G, a, s) : dispatch_g<HD, ROPE, KV8, false, false>(G, a, s);
}

template <bool ROPE, bool KV8>
static gm_status run_dec(int32_t hd, dec_args *a, void *scratch, cudaStream_t s)
{
    if (a->B <= 0)
        return GM_OK;
    if (a->nkv < 1 || a->nh % a->nkv || a->n_split < 1 || a->n_split > ATTN_DECODE_MAX_SPLIT || a->ldq % 8 ||
        a->ldo % 8)
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention: nh %d, nkv %d, n_split %d (1..%d), ldq %lld, ldo %lld",
                       a->nh, a->nkv, a->n_split, ATTN_DECODE_MAX_SPLIT, (long long)a->ldq, (long long)a->ldo);
    if (a->qkn && (!a->qkn->q_w1 || !a->qkn->k_w1))
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention: QK-norm without its weights");
    int G = a->nh / a->nkv;
    size_t rows = (size_t)a->B * a->nh * a->n_split;
    a->po = (float *)scratch;
    a->plse = a->po + rows * hd;
    gm_status st;
    switch (hd) {
    case 32: st = dispatch_opt<32, ROPE, KV8>(G, a, s); break;
    case 64: st = dispatch_opt<64, ROPE, KV8>(G, a, s); break;
    case 128: st = dispatch_opt<128, ROPE, KV8>(G, a, s); break;
    case 256: st = dispatch_opt<256, ROPE, KV8>(G, a, s); break;
    default:
        return gm_fail(GM_ERR_UNSUPPORTED, "decode attention: head_dim %d (supported: 32, 64, 128, 256)", hd);
    }
    if (st)
        return st;
    GM_LAUNCH_CHECK();
    return GM_OK;
}

extern "C" gm_status k_attn_decode(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                                   const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                                   int32_t bt_stride, const int32_t *ctx_lens, const k_attn_opts *opt,
                                   int32_t n_split, void *scratch, void *out, int64_t ldo, cudaStream_t s)
{
    dec_args a = {(const bf16 *)q, ldq, B, nh, nkv, (void *)k_pool, (void *)v_pool, bs, block_tables, bt_stride,
                  ctx_lens, NULL, NULL, 0.0f, 1.0f, n_split, NULL, NULL, (bf16 *)out, ldo, NULL, NULL, 0, 0.0f, NULL};
    GM_CHECK(dec_set_opts(&a, opt));
    return run_dec<false, false>(hd, &a, scratch, s);
}

extern "C" gm_status k_attn_decode_fp8(const void *q, int64_t ldq, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                                       const void *k_pool, const void *v_pool, int32_t bs, const int32_t *block_tables,
                                       int32_t bt_stride, const int32_t *ctx_lens, const k_attn_opts *opt,
                                       float kv_scale, int32_t n_split, void *scratch, void *out, int64_t ldo,
                                       void *out8, const float *out8_scale, cudaStream_t s)
{
    if (!(kv_scale > 0.0f) || !isfinite(kv_scale))
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention (FP8 KV): kv_scale %g must be positive and finite",
                       (double)kv_scale);
    if (out8 && !out8_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention: e4m3 output without a scale");
    dec_args a = {(const bf16 *)q, ldq, B, nh, nkv, (void *)k_pool, (void *)v_pool, bs, block_tables, bt_stride,
                  ctx_lens, NULL, NULL, 0.0f, kv_scale, n_split, NULL, NULL, (bf16 *)out, ldo, (uint8_t *)out8,
                  out8_scale, 0, 0.0f, NULL};
    GM_CHECK(dec_set_opts(&a, opt));
    return run_dec<false, true>(hd, &a, scratch, s);
}

extern "C" gm_status k_attn_decode_rope(const void *qkv, int64_t ld, int32_t B, int32_t nh, int32_t nkv, int32_t hd,
                                        void *k_pool, void *v_pool, int32_t bs, const int32_t *block_tables,
                                        int32_t bt_stride, const int32_t *ctx_lens, const int32_t *slots,
                                        const float *rope_table, const k_qk_norm *qkn, const k_attn_opts *opt,
                                        int32_t n_split, void *scratch, void *out, int64_t ldo, void *out8,
                                        const float *out8_scale, cudaStream_t s)
{
    if (out8 && !out8_scale)
        return gm_fail(GM_ERR_INVALID_ARG, "decode attention: e4m3 output without a scale");
    dec_args a = {(const bf16 *)qkv, ld, B, nh, nkv, k_pool, v_pool, bs, block_tables, bt_stride,
                  ctx_lens, slots, rope_table, 0.0f, 1.0f, n_split, NULL, NULL, (bf16 *)out, ldo, (uint8_t *)out8,
                  out8_scale, 0, 0.0f, qkn};
    GM_CHECK(dec_set_opts(&a, opt));
    return run_dec<true, false>(hd, &a, scratch, s);
}
