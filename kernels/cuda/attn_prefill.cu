/* attn_prefill.cu - FA2-style forward: a block = 64 query rows of one head (4 warps x 16 rows),
 * K/V tiles of 64 keys gathered from the paged pool by cp.async (K of the next tile loads
 * during P.V, V during Q.K^T), S and P in registers, P reused as the A operand of P.V.
 * Compute-bound for long prompts: 4 * rows * keys/2 * hd FLOPs per head. OPT (a soft-cap or a sliding
 * window; OPT false is Gemma 1's code, instruction for instruction): the scores are soft-capped before the
 * mask, and a window starts the key walk at the tile holding the window start of the block's first row;
 * keys before that start are neither loaded nor their block-table entries read (zeros in the tile). */
#include "attn_prefill.cuh"

#include <math.h>

#include "cuda_check.h"
#include "quant_fp8.cuh"
#include "cuda_util.cuh"
#include "launch.cuh"

#define PF_BR 64
#define PF_BC 64
#define PF_THREADS 128
#define LOG2E_F 1.4426950408889634f

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int sz = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(sz));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void mma16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t lds32(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* Gather keys [j0, j0 + 64) of one KV head into a [64, LDS] tile; keys >= kv_len are zeros.
 * bf16 pool: cp.async. e4m3 pool (F8): 8 codes per load, bf16(code * kvs) stored synchronously (the
 * callers' __syncthreads after cp_async_wait publish those stores as well). */
template <int HD, bool F8, bool OPT>
__device__ __forceinline__ void load_kv_tile(bf16 *dst, const void *pool, const int32_t *bt, int32_t bs, int32_t nkv,
                                             int32_t kvh, int32_t j0, int32_t kv_len, float kvs, int32_t kv_lo)
{
    constexpr int LDS = HD + 8, CPR = HD / 8;
    for (int c = threadIdx.x; c < PF_BC * CPR; c += PF_THREADS) {
        int r = c / CPR, col = (c % CPR) * 8;
        int key = j0 + r;
        bool ok = key < kv_len && (!OPT || key >= kv_lo);
        int64_t off = ok ? (((int64_t)bt[key / bs] * nkv + kvh) * bs + key % bs) * HD + col : 0;
        if constexpr (F8) {
            uint4 val = make_uint4(0u, 0u, 0u, 0u);
            if (ok) {
                uint2 v = *reinterpret_cast<const uint2 *>(reinterpret_cast<const uint8_t *>(pool) + off);
                float f[8];
                fp8x8_to_f32(v, kvs, f);
                val.x = pack_bf16(f[0], f[1]);
                val.y = pack_bf16(f[2], f[3]);
                val.z = pack_bf16(f[4], f[5]);
                val.w = pack_bf16(f[6], f[7]);
            }
            *reinterpret_cast<uint4 *>(dst + r * LDS + col) = val;
        } else {
            cp_async16(dst + r * LDS + col, reinterpret_cast<const bf16 *>(pool) + off, ok);
        }
    }
}

/* OPT: window > 0 masks keys <= pos - window; cap_l2 > 0 makes the score cap_l2 * tanh(q . k * scale) (the
 * host passes scale / softcap and softcap * log2 e), else q . k * scale * log2 e. */
template <int HD, bool F8, bool OPT>
__global__ void __launch_bounds__(PF_THREADS)
    attn_prefill_kernel(const bf16 *__restrict__ q, int64_t ldq, const int32_t *__restrict__ q_start,
                        const int32_t *__restrict__ n_new, const int32_t *__restrict__ start_pos, int32_t nh,
                        int32_t nkv, const void *__restrict__ kp, const void *__restrict__ vp, int32_t bs,
                        const int32_t *__restrict__ block_tables, int32_t bt_stride, float scale,
                        bf16 *__restrict__ out, int64_t ldo, float kvs, int32_t window, float cap_l2)
{
    constexpr int LDS = HD + 8, CPR = HD / 8, NT = HD / 8;
    extern __shared__ uint4 smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *Ks = Qs + PF_BR * LDS;
    bf16 *Vs = Ks + PF_BC * LDS;

    pdl_wait();
    int seq = blockIdx.z, h = blockIdx.y;
    int tile = gridDim.x - 1 - blockIdx.x; /* the longest (last) tiles start first */
    int nq = n_new[seq];
    int r0 = tile * PF_BR;
    if (r0 >= nq)
        return;
    int rows = min(PF_BR, nq - r0);
    int sp = start_pos[seq];
    int64_t qrow0 = (int64_t)q_start[seq] + r0;
    int kvh = h / (nh / nkv);
    int kv_len = sp + r0 + rows;
    int n_tiles = (kv_len + PF_BC - 1) / PF_BC;
    const int32_t *bt = block_tables + (int64_t)seq * bt_stride;
    /* OPT: the first key any row of this block sees (its first row's window start), its tile */
    const int kv_lo = OPT && window > 0 ? max(0, sp + r0 - window + 1) : 0;
    const int jt0 = OPT ? kv_lo / PF_BC : 0;

    /* Q tile (rows past `rows` are zeros), then K and V of tile 0 */
    for (int c = threadIdx.x; c < PF_BR * CPR; c += PF_THREADS) {
        int r = c / CPR, col = (c % CPR) * 8;
        bool ok = r < rows;
        const bf16 *src = ok ? q + (qrow0 + r) * ldq + (int64_t)h * HD + col : q;
        cp_async16(Qs + r * LDS + col, src, ok);
    }
    load_kv_tile<HD, F8, OPT>(Ks, kp, bt, bs, nkv, kvh, jt0 * PF_BC, kv_len, kvs, kv_lo);
    cp_async_commit();
    load_kv_tile<HD, F8, OPT>(Vs, vp, bt, bs, nkv, kvh, jt0 * PF_BC, kv_len, kvs, kv_lo);
    cp_async_commit();

    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int ra = warp * 16 + g, rb = ra + 8; /* this thread's two query rows in the tile */
    int pos_a = sp + r0 + ra, pos_b = sp + r0 + rb;
    float sl2 = scale * LOG2E_F;
    int lo_a = -1, lo_b = -1; /* OPT: keys <= lo are outside the row's window */
    if (OPT) {
        if (cap_l2 > 0.0f)
            sl2 = scale; /* scale / softcap: the argument of the tanh */
        if (window > 0)
            lo_a = pos_a - window, lo_b = pos_b - window;
    }

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

    for (int jt = jt0; jt < n_tiles; jt++) {
        int j0 = jt * PF_BC;
        cp_async_wait<1>();
        __syncthreads();
        /* S = Q K^T for 16 rows x 64 keys */
        float sc[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++)
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll 4
        for (int kk = 0; kk < HD; kk += 16) {
            uint32_t a0 = lds32(Qs + ra * LDS + kk + 2 * t);
            uint32_t a1 = lds32(Qs + rb * LDS + kk + 2 * t);
            uint32_t a2 = lds32(Qs + ra * LDS + kk + 8 + 2 * t);
            uint32_t a3 = lds32(Qs + rb * LDS + kk + 8 + 2 * t);
#pragma unroll
            for (int n = 0; n < 8; n++) {
                const bf16 *kr = Ks + (n * 8 + g) * LDS + kk + 2 * t;
                mma16816(sc[n], a0, a1, a2, a3, lds32(kr), lds32(kr + 8));
            }
        }
        __syncthreads(); /* everyone is done with Ks */
        if (jt + 1 < n_tiles)
            load_kv_tile<HD, F8, OPT>(Ks, kp, bt, bs, nkv, kvh, j0 + PF_BC, kv_len, kvs, kv_lo);
        cp_async_commit();

        /* online softmax (base 2) on rows a and b */
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int key = j0 + n * 8 + 2 * t + e;
                float va, vb;
                if constexpr (OPT) {
                    float xa = sc[n][e] * sl2, xb = sc[n][2 + e] * sl2;
                    if (cap_l2 > 0.0f)
                        xa = cap_l2 * tanh_fast(xa), xb = cap_l2 * tanh_fast(xb);
                    va = (key <= pos_a && key < kv_len && key > lo_a) ? xa : -INFINITY;
                    vb = (key <= pos_b && key < kv_len && key > lo_b) ? xb : -INFINITY;
                } else {
                    va = (key <= pos_a && key < kv_len) ? sc[n][e] * sl2 : -INFINITY;
                    vb = (key <= pos_b && key < kv_len) ? sc[n][2 + e] * sl2 : -INFINITY;
                }
                sc[n][e] = va;
                sc[n][2 + e] = vb;
                mx_a = fmaxf(mx_a, va);
                mx_b = fmaxf(mx_b, vb);
            }
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        /* a row with no valid key yet keeps m = -inf; use 0 as its reference so exp2 gives 0, not NaN */
        float ref_a = mn_a == -INFINITY ? 0.0f : mn_a, ref_b = mn_b == -INFINITY ? 0.0f : mn_b;
        float al_a = exp2f(m_a - ref_a), al_b = exp2f(m_b - ref_b);
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.0f, sum_b = 0.0f;
        uint32_t pa[8], pb[8]; /* P in bf16 pairs: [n] = keys n*8 + 2t, +1 */
#pragma unroll
        for (int n = 0; n < 8; n++) {
            float p0 = exp2f(sc[n][0] - ref_a), p1 = exp2f(sc[n][1] - ref_a);
            float p2 = exp2f(sc[n][2] - ref_b), p3 = exp2f(sc[n][3] - ref_b);
            sum_a += p0 + p1;
            sum_b += p2 + p3;
            pa[n] = pack_bf16(p0, p1);
            pb[n] = pack_bf16(p2, p3);
        }
        l_a = l_a * al_a + sum_a;
        l_b = l_b * al_b + sum_b;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            o[n][0] *= al_a;
            o[n][1] *= al_a;
            o[n][2] *= al_b;
            o[n][3] *= al_b;
        }

        cp_async_wait<1>(); /* V of this tile */
        __syncthreads();
        /* O += P V */
#pragma unroll
        for (int ks = 0; ks < PF_BC / 16; ks++) {
            uint32_t a0 = pa[2 * ks], a1 = pb[2 * ks], a2 = pa[2 * ks + 1], a3 = pb[2 * ks + 1];
            int key = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, Vs + key * LDS + dp * 16 + (lane >> 4) * 8);
                mma16816(o[2 * dp], a0, a1, a2, a3, r[0], r[1]);
                mma16816(o[2 * dp + 1], a0, a1, a2, a3, r[2], r[3]);
            }
        }
        __syncthreads(); /* everyone is done with Vs */
        if (jt + 1 < n_tiles)
            load_kv_tile<HD, F8, OPT>(Vs, vp, bt, bs, nkv, kvh, j0 + PF_BC, kv_len, kvs, kv_lo);
        cp_async_commit();
    }
    cp_async_wait<0>();

    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    float ia = l_a > 0.0f ? 1.0f / l_a : 0.0f, ib = l_b > 0.0f ? 1.0f / l_b : 0.0f;
    if (ra < rows) {
        bf16 *orow = out + (qrow0 + ra) * ldo + (int64_t)h * HD;
#pragma unroll
        for (int n = 0; n < NT; n++)
            *reinterpret_cast<__nv_bfloat162 *>(orow + n * 8 + 2 * t) =
                __floats2bfloat162_rn(o[n][0] * ia, o[n][1] * ia);
    }
    if (rb < rows) {
        bf16 *orow = out + (qrow0 + rb) * ldo + (int64_t)h * HD;
#pragma unroll
        for (int n = 0; n < NT; n++)
            *reinterpret_cast<__nv_bfloat162 *>(orow + n * 8 + 2 * t) =
                __floats2bfloat162_rn(o[n][2] * ib, o[n][3] * ib);
    }
}

template <int HD, bool F8, bool OPT>
static gm_status launch_prefill(const void *q, int64_t ldq, int32_t n_seqs, const int32_t *q_start,
                                const int32_t *n_new, const int32_t *start_pos, int32_t max_new, int32_t nh,
                                int32_t nkv, const void *kp, const void *vp, int32_t bs, const int32_t *bt,
                                int32_t bt_stride, float scale, void *out, int64_t ldo, float kvs, int32_t window,
                                float cap_l2, cudaStream_t s)
{
    size_t smem = (size_t)(PF_BR + 2 * PF_BC) * (HD + 8) * sizeof(bf16);
    static int attr_set = 0; /* per instantiation: raise the dynamic shared-memory limit once */
    if (!attr_set) {
        GM_CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel<HD, F8, OPT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = 1;
    }
    dim3 grid(gm_div_up(max_new, PF_BR), (unsigned)nh, (unsigned)n_seqs);
    attn_prefill_kernel<HD, F8, OPT><<<grid, PF_THREADS, smem, s>>>((const bf16 *)q, ldq, q_start, n_new, start_pos,
                                                                    nh, nkv, kp, vp, bs, bt, bt_stride, scale,
                                                                    (bf16 *)out, ldo, kvs, window, cap_l2);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

#define PF_CASE(HD, F8)                                                                                                \
    return opt_on ? launch_prefill<HD, F8, true>(q, ldq, n_seqs, q_start, n_new, start_pos, max_new, nh, nkv, k_pool,  \
                                                 v_pool, bs, block_tables, bt_stride, sc, out, ldo, kv_scale,          \
                                                 opt->window, cap_l2, s)                                               \
                  : launch_prefill<HD, F8, false>(q, ldq, n_seqs, q_start, n_new, start_pos, max_new, nh, nkv, k_pool, \
                                                  v_pool, bs, block_tables, bt_stride, sc, out, ldo, kv_scale, 0,     \
                                                  0.0f, s)

extern "C" gm_status k_attn_prefill_kv(const void *q, int64_t ldq, int32_t n_seqs, const int32_t *q_start,
                                       const int32_t *n_new, const int32_t *start_pos, int32_t max_new, int32_t nh,
                                       int32_t nkv, int32_t hd, const void *k_pool, const void *v_pool, int32_t bs,
                                       const int32_t *block_tables, int32_t bt_stride, const k_attn_opts *opt,
                                       void *out, int64_t ldo, int kv_fp8, float kv_scale, cudaStream_t s)
{
    if (!k_attn_opts_valid(opt))
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_prefill: options scale %g, softcap %g, window %d",
                       opt ? (double)opt->scale : 0.0, opt ? (double)opt->softcap : 0.0, opt ? opt->window : 0);
    if (n_seqs <= 0 || max_new <= 0)
        return GM_OK;
    if (nkv < 1 || nh % nkv || ldq % 8 || ldo % 8)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_prefill: nh %d, nkv %d, ldq %lld, ldo %lld", nh, nkv,
                       (long long)ldq, (long long)ldo);
    const bool opt_on = !k_attn_opts_plain(opt);
    const float sc = opt->softcap > 0.0f ? opt->scale / opt->softcap : opt->scale;
    const float cap_l2 = opt->softcap > 0.0f ? opt->softcap * LOG2E_F : 0.0f;
    if (kv_fp8) {
        switch (hd) {
        case 32: PF_CASE(32, true);
        case 64: PF_CASE(64, true);
        case 128: PF_CASE(128, true);
        case 256: PF_CASE(256, true);
        }
    } else {
        switch (hd) {
        case 32: PF_CASE(32, false);
        case 64: PF_CASE(64, false);
        case 128: PF_CASE(128, false);
        case 256: PF_CASE(256, false);
        }
    }
    return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_prefill: head_dim %d (supported: 32, 64, 128, 256)", hd);
}
#undef PF_CASE

extern "C" gm_status k_attn_prefill(const void *q, int64_t ldq, int32_t n_seqs, const int32_t *q_start,
                                    const int32_t *n_new, const int32_t *start_pos, int32_t max_new, int32_t nh,
                                    int32_t nkv, int32_t hd, const void *k_pool, const void *v_pool, int32_t bs,
                                    const int32_t *block_tables, int32_t bt_stride, float scale, void *out,
                                    int64_t ldo, cudaStream_t s)
{
    const k_attn_opts opt = {scale, 0.0f, 0};
    return k_attn_prefill_kv(q, ldq, n_seqs, q_start, n_new, start_pos, max_new, nh, nkv, hd, k_pool, v_pool, bs,
                             block_tables, bt_stride, &opt, out, ldo, 0, 1.0f, s);
}
