/* attn_decode_xqa.cu - XQA-style paged decode attention (attn_decode.cuh): the host side, the
 * device helpers, and the kernel (attn_decode_xqa_kernel.cuh).
 *
 * Grid (nb_sub_seq, n_kv, batch), 4 warps. A CTA owns the G*q_len query rows of one KV head
 * (G = n_heads / n_kv; at most 16 rows, padded to one or two n8 tiles) and a range of 64-key tiles
 * (the split plan, xqa_split). Byte floor (what the bandwidth is measured against): seq_len * n_kv *
 * head_dim * 2 (K and V) * elem bytes per sequence; everything else (Q, out, the merge) is < 1% at
 * context >= 1k. */
#include "attn_decode.cuh"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>

#include "cuda_check.h"
#include "cuda_util.cuh"

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
    int32_t window;       /* > 0: each row reads keys pos - window < j <= pos (kernels with OPT only) */
    float cap_l2;         /* > 0: score = cap_l2 * tanh(q . k * qk_log2), qk_log2 = scale / softcap * kv factor
                           * (kernels with OPT only) */
} xqa_kargs;

/* ---- small PTX wrappers ---- */

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

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

__device__ __forceinline__ uint32_t pack2(float a, float b, bool f16)
{
    if (f16) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* The split plan. The keys sequence b (length L) reads, [lo, L) (lo = the first row's window start with
 * OPT and a window, else 0), are cut into ns_eff splits of whole XQA_TILE tiles, at most a.nb; split
 * blockIdx.x takes keys [k0, k1). Returns 0 when this CTA has nothing to do: past the last split, or a
 * padding row (L <= 0), whose output split 0 zeroes (nthreads threads). */
template <int HD, bool OPT>
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
    const int lo = OPT && a.window > 0 ? max(0, L - a.q_len + 1 - a.window) : 0;
    const int n_tiles = (L - lo + XQA_TILE - 1) / XQA_TILE;
    const int ns = a.nb < n_tiles ? a.nb : n_tiles;
    const int per = (n_tiles + ns - 1) / ns;
    ns_eff = (n_tiles + per - 1) / per;
    if (x >= ns_eff)
        return 0;
    k0 = lo + x * per * XQA_TILE;
    k1 = min(L, lo + (x + 1) * per * XQA_TILE);
    return 1;
}

#include "attn_decode_xqa_kernel.cuh"

/* ---- host side ---- */

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

extern "C" size_t k_xqa_scratch_bytes(int32_t batch, int32_t n_kv, int32_t n_heads, int32_t q_len, int32_t head_dim,
                                    int32_t nb_sub_seq)
{
    if (batch <= 0 || n_kv <= 0 || n_heads <= 0 || q_len <= 0 || head_dim <= 0 || nb_sub_seq <= 0)
        return 0;
    int64_t rows = (int64_t)(n_heads / n_kv) * q_len;
    return scratch_layout(batch, n_kv, rows, head_dim, nb_sub_seq).total;
}

template <bool FP8, int HD, int NR, bool OPT>
static gm_status ensure_attr2(void)
{
    static bool done = false;
    if (!done) {
        GM_CUDA_CHECK(cudaFuncSetAttribute(xqa2_kernel<FP8, HD, NR, OPT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, xq2_cfg<FP8, HD, NR>::SMEM));
        GM_CUDA_CHECK(cudaFuncSetAttribute(xqa2_kernel<FP8, HD, NR, OPT>,
                                           cudaFuncAttributePreferredSharedMemoryCarveout, 100));
        done = true;
    }
    return GM_OK;
}

template <bool FP8, int HD, int NR, bool OPT>
static gm_status launch2_one(const xqa_kargs &k, int batch, int n_kv, cudaStream_t s)
{
    GM_CHECK((ensure_attr2<FP8, HD, NR, OPT>()));
    dim3 grid((unsigned)k.nb, (unsigned)n_kv, (unsigned)batch);
    xqa2_kernel<FP8, HD, NR, OPT><<<grid, XQ2_THREADS, xq2_cfg<FP8, HD, NR>::SMEM, s>>>(k);
    GM_LAUNCH_CHECK();
    return GM_OK;
}

/* OPT: the layer has a soft-cap or a window (OPT false is Gemma 1's code, instruction for instruction). */
template <bool FP8, int NR, bool OPT>
static gm_status launch2_hd_opt(const xqa_kargs &k, int hd, int batch, int n_kv, cudaStream_t s)
{
    switch (hd) {
    case 32: return launch2_one<FP8, 32, NR, OPT>(k, batch, n_kv, s);
    case 64: return launch2_one<FP8, 64, NR, OPT>(k, batch, n_kv, s);
    case 128: return launch2_one<FP8, 128, NR, OPT>(k, batch, n_kv, s);
    default: return launch2_one<FP8, 256, NR, OPT>(k, batch, n_kv, s);
    }
}

template <bool FP8, int NR>
static gm_status launch2_hd(const xqa_kargs &k, int hd, int batch, int n_kv, cudaStream_t s)
{
    if (k.window > 0 || k.cap_l2 > 0.0f)
        return launch2_hd_opt<FP8, NR, true>(k, hd, batch, n_kv, s);
    return launch2_hd_opt<FP8, NR, false>(k, hd, batch, n_kv, s);
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

static gm_status check_params(const k_xqa_params *p)
{
    if (!p || !p->q || !p->out || !p->k_pool || !p->v_pool || !p->block_tables || !p->seq_lens)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: a required pointer is NULL");
    if (p->head_dim != 32 && p->head_dim != 64 && p->head_dim != 128 && p->head_dim != 256)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_decode_xqa: head_dim %d (supported: 32, 64, 128, 256)", p->head_dim);
    if (p->n_kv <= 0 || p->n_heads <= 0 || p->n_heads % p->n_kv)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: %d query heads over %d KV heads", p->n_heads, p->n_kv);
    if (p->q_len < 1 || (p->n_heads / p->n_kv) * p->q_len > XQA_MAX_ROWS)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_decode_xqa: group %d x q_len %d exceeds %d rows per KV head",
                       p->n_heads / p->n_kv, p->q_len, XQA_MAX_ROWS);
    if (p->block_size < 1 || p->bt_stride < 1)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: block_size %d, bt_stride %d", p->block_size,
                       p->bt_stride);
    if (p->nb_sub_seq < 1 || p->nb_sub_seq > XQA_MAX_SUB_SEQ)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: nb_sub_seq %d outside 1..%d", p->nb_sub_seq,
                       XQA_MAX_SUB_SEQ);
    if (p->ldq % 8 || p->ldo % 8 || (uintptr_t)p->q % 16 || (uintptr_t)p->out % 16 || (uintptr_t)p->k_pool % 16 ||
        (uintptr_t)p->v_pool % 16)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_attn_decode_xqa: q/out/pool pointers must be 16-byte aligned and "
                                           "ldq %lld, ldo %lld multiples of 8",
                       (long long)p->ldq, (long long)p->ldo);
    if (p->kv_type != XQA_KV_BF16 && p->kv_type != XQA_KV_FP8)
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: kv_type %d", (int)p->kv_type);
    if (p->kv_type == XQA_KV_FP8 && !(p->kv_scale > 0.0f && isfinite(p->kv_scale)))
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: kv_scale %g", (double)p->kv_scale);
    const k_attn_opts o = {p->scale, p->softcap, p->window};
    if (!k_attn_opts_valid(&o))
        return gm_fail(GM_ERR_INVALID_ARG, "k_attn_decode_xqa: scale %g, softcap %g, window %d", (double)p->scale,
                       (double)p->softcap, p->window);
    if (p->nb_sub_seq > 1) {
        size_t need = k_xqa_scratch_bytes(p->batch, p->n_kv, p->n_heads, p->q_len, p->head_dim, p->nb_sub_seq);
        if (!p->scratch || p->scratch_bytes < need || (uintptr_t)p->scratch % 256)
            return gm_fail(GM_ERR_INVALID_ARG,
                           "k_attn_decode_xqa: scratch %p of %zu bytes (need %zu, 256-byte aligned)", p->scratch,
                           p->scratch_bytes, need);
    }
    return GM_OK;
}

extern "C" gm_status k_attn_decode_xqa(const k_xqa_params *p, cudaStream_t s)
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
    k.qk_log2 = p->softcap > 0.0f ? p->scale / p->softcap * kvf : p->scale * kvf * XQA_LOG2E;
    k.cap_l2 = p->softcap > 0.0f ? p->softcap * XQA_LOG2E : 0.0f;
    k.window = p->window;
    k.v_fac = kvf;
    k.nb = p->nb_sub_seq;
    xqa_layout l = scratch_layout(p->batch, p->n_kv, rows, p->head_dim, p->nb_sub_seq);
    uint8_t *sc = (uint8_t *)p->scratch;
    k.sem = sc ? (uint32_t *)(sc + l.sem) : NULL;
    k.ml = sc ? (float *)(sc + l.ml) : NULL;
    k.opart = sc ? (float *)(sc + l.op) : NULL;
    if (fp8)
        return rows <= 8 ? launch2_hd<true, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                         : launch2_hd<true, 2>(k, p->head_dim, p->batch, p->n_kv, s);
    return rows <= 8 ? launch2_hd<false, 1>(k, p->head_dim, p->batch, p->n_kv, s)
                     : launch2_hd<false, 2>(k, p->head_dim, p->batch, p->n_kv, s);
}

template <bool FP8, int HD, int NR>
static int occ2_one(void)
{
    int n = 0;
    if ((ensure_attr2<FP8, HD, NR, false>()) != GM_OK ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, xqa2_kernel<FP8, HD, NR, false>, XQ2_THREADS,
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

extern "C" int32_t k_xqa_ctas_per_sm(const k_xqa_params *p)
{
    if (!p || p->n_kv <= 0 || p->n_heads <= 0 || p->q_len <= 0)
        return 1;
    int rows = (p->n_heads / p->n_kv) * p->q_len;
    if (rows > XQA_MAX_ROWS)
        return 1;
    if (p->kv_type == XQA_KV_FP8)
        return rows <= 8 ? occ2_hd<true, 1>(p->head_dim) : occ2_hd<true, 2>(p->head_dim);
    return rows <= 8 ? occ2_hd<false, 1>(p->head_dim) : occ2_hd<false, 2>(p->head_dim);
}

extern "C" int32_t k_xqa_pick_sub_seq(const k_xqa_params *p, int32_t max_ctx, int32_t n_sm)
{
    if (!p)
        return 1;
    int64_t ctas = (int64_t)(p->batch > 0 ? p->batch : 1) * (p->n_kv > 0 ? p->n_kv : 1);
    int64_t tiles = (max_ctx + XQA_TILE - 1) / XQA_TILE;
    int64_t slots = (int64_t)n_sm * k_xqa_ctas_per_sm(p);
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
extern "C" int32_t k_xqa_smem_bytes(int32_t head_dim, int32_t rows, int32_t fp8)
{
    if (rows < 1 || rows > XQA_MAX_ROWS)
        return 0;
    if (fp8)
        return rows <= 8 ? smem2_of<true, 1>(head_dim) : smem2_of<true, 2>(head_dim);
    return rows <= 8 ? smem2_of<false, 1>(head_dim) : smem2_of<false, 2>(head_dim);
}
