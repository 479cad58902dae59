/* attn_decode_xqa_kernel.cuh - the XQA decode-attention kernel (its second version, "v2" in the lab
 * notes; the first one was removed once v2 measured faster everywhere: bench/history/NOTES.md run F). Internal:
 * included by attn_decode_xqa.cu only (after its PTX wrappers and xqa_kargs); the contract is
 * attn_decode.cuh. Analysis and predictions: bench/history/NOTES_FP8.md, "XQA v2".
 *
 * Grid (nb_sub_seq, n_kv, batch) and the split rule are xqa_split's; the CTA is 4 warps, but each warp is
 * its own pipeline: chunk c (16 keys) of the CTA's key range belongs to warp c % 4, which copies it
 * into its own 3-slot cp.async ring, runs QK^T, an online softmax and PV on it, and never waits
 * for the other warps until the end, where the four (max, sum, O) states are merged through
 * shared memory (and splits through scratch, with a merge that keeps its loads in flight).
 *
 * MMAs are swapped (A = keys for QK^T, A = head dims for PV; B = query rows, 8 per n8 tile), so
 * G * q_len <= 8 rows cost 16 + 16 MMAs per 16 keys at head_dim 256. Per thread, QK^T leaves
 * S^T[key gid, gid+8][row 2c, 2c+1]; movmatrix turns P^T into PV's B fragment.
 *
 * Copies: lanes 0..15 look up one key's block each (one chunk ahead); every copy instruction
 * takes its row offset by shuffle. Shared rows are 16-byte-chunk swizzled: bf16 chunk ^ (key & 7)
 * (ldmatrix / ldmatrix.trans conflict-free), FP8 chunk ^ 2 * (key & 3).
 *
 * FP8: QK^T runs on e4m3 MMAs (m16n8k32) straight from the cache bytes. Q is split per row into
 * two e4m3 terms times 2^(E-8), E the row max's exponent: hi = e4m3(q * 2^(8-E)), lo =
 * e4m3(rest); hi and lo are two n8 tiles of B and their products add in f32. That is exact for
 * every element of at least 2^-9 of the row's largest magnitude (bf16 has 8 significant bits, hi
 * and lo 4 each) and off by at most 2^-17 of that largest otherwise (lo's subnormal step). An
 * e4m3 NaN code (0x7f, 0xff) in K gives a NaN score here; the
 * KV writers saturate, so pools hold none. Keys are permuted inside a chunk so both the K
 * (8 bytes per lane) and the V (4 keys x 4 bytes per lane) reads are conflict-free: MMA index
 * s = 2c + j + 8u <-> key c + 4j + 8u. PV stays f16 (P rounded to f16): V bytes go to
 * f16 by the bit move (value * 2^-8, the 2^8 back in v_fac), byte-transposed with one prmt.
 *
 * Lazy rescaling: a row's reference max moves only when a score passes it by 2^8 (then O, l
 * scale by 2^(old - new)), so p <= 256 (fine for bf16 and f16) and most chunks skip the O scale. */

#define XQ2_WARPS 4
#define XQ2_THREADS (XQ2_WARPS * 32)
#define XQ2_CHUNK 16  /* keys per warp step */
#define XQ2_STAGES 3  /* ring slots per warp */
#define XQ2_LAZY 8.0f /* log2 units a score may pass the reference max before a rescale */

template <bool FP8, int HD, int NR>
struct xq2_cfg {
    static constexpr int ES = FP8 ? 1 : 2;
    static constexpr int ROW_B = HD * ES;                 /* bytes of one key's K (or V) row */
    static constexpr int CH = ROW_B / 16;                 /* 16-byte chunks per row */
    static constexpr int KPI = 32 / CH;                   /* key rows per warp-wide copy instruction */
    static constexpr int SLOT_B = 2 * XQ2_CHUNK * ROW_B;  /* 16 K rows, then 16 V rows */
    static constexpr int WARP_B = XQ2_STAGES * SLOT_B;
    static constexpr int RING_B = XQ2_WARPS * WARP_B;
    static constexpr int QR = 8 * NR;                     /* query rows held (padded to n8 tiles) */
    static constexpr int QSTR = FP8 ? HD + 32 : 2 * HD + 16; /* bytes per staged Q row */
    static constexpr int Q_OFF = RING_B;                  /* bf16 [QR][QSTR]; FP8 hi [QR][QSTR], lo [QR][QSTR] */
    static constexpr int F_OFF = Q_OFF + (FP8 ? 2 : 1) * QR * QSTR; /* [QR] f32: FP8 score factor per row */
    static constexpr int ML_OFF = F_OFF + QR * 4;         /* [WARPS][QR][2] f32: warp reference max, sum */
    static constexpr int WT_OFF = ML_OFF + XQ2_WARPS * QR * 2 * 4; /* [WARPS][QR] f32: warp weights */
    static constexpr int RV_OFF = WT_OFF + XQ2_WARPS * QR * 4;     /* [QR][2] f32: CTA max, sum (or M, 1/L) */
    static constexpr int SMEM = RV_OFF + QR * 2 * 4;
    static constexpr int XSTR = HD + 4;                   /* f32 per row of the O exchange (in the ring) */
    static constexpr int QREG = NR == 1 ? HD / 8 : 4;     /* Q fragments kept in registers (NR == 1) */
    static constexpr int P2 = NR == 1 ? 2 : 1;            /* QK^T partial accumulators per tile */
    static_assert(XQ2_WARPS * QR * XSTR * 4 <= RING_B, "the O exchange must fit in the ring");
    static_assert(CH >= 2 && CH <= 32 && XQ2_CHUNK % KPI == 0, "row chunks");
    static_assert(HD % 32 == 0, "head_dim");
};

__device__ __forceinline__ void xq2_cp16(uint32_t dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void xq2_cp16z(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void xq2_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void xq2_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* 8x8 b16 matrix transpose across the warp (fragment: row lane/4, columns 2(lane%4), +1). */
__device__ __forceinline__ uint32_t xq2_movt(uint32_t x)
{
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

/* c += a . b, m16n8k32 e4m3 -> f32. */
__device__ __forceinline__ void xq2_mma8(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* e4m3 bytes 1 (low half) and 3 (high half) of t -> f16x2 holding value * 2^-8 (exact; bytes 0, 2
 * are ignored). */
__device__ __forceinline__ uint32_t xq2_e4m3_13(uint32_t t)
{
    return (t & 0x80008000u) | ((t >> 1) & 0x3f803f80u);
}

/* Chunk XOR of key row k of a chunk (see the file comment). */
template <class C, bool FP8>
__device__ __forceinline__ int xq2_swz(int k)
{
    return (FP8 ? 2 * (k & 3) : (k & 7)) & (C::CH - 1);
}

/* Byte offset in a pool of key `pos` of KV head g (0, a valid address, at or beyond L). */
__device__ __forceinline__ int64_t xq2_row(const xqa_kargs &a, const int32_t *bt, int L, int pos, int g, int row_b)
{
    if (pos >= L)
        return 0;
    int lb, off;
    if (a.bs_shift >= 0) {
        lb = pos >> a.bs_shift;
        off = pos & (a.bs - 1);
    } else {
        lb = pos / a.bs;
        off = pos - lb * a.bs;
    }
    return (((int64_t)bt[lb] * a.n_kv + g) * a.bs + off) * (int64_t)row_b;
}

/* Copy one chunk (16 keys, K and V) into a ring slot. my: this lane's row offset for key lane & 15;
 * keys >= n_valid are zero-filled. Warp-uniform arguments except my. */
template <class C, bool FP8>
__device__ __forceinline__ void xq2_issue(uint32_t slot, const uint8_t *kb, const uint8_t *vb, int64_t my, int n_valid,
                                          int lane)
{
    const int c = lane % C::CH, ks = lane / C::CH;
    const uint32_t lo = (uint32_t)my, hi = (uint32_t)((uint64_t)my >> 32);
    if (n_valid >= XQ2_CHUNK) {
#pragma unroll
        for (int it = 0; it < XQ2_CHUNK / C::KPI; it++) {
            const int key = it * C::KPI + ks;
            const uint64_t off =
                ((uint64_t)__shfl_sync(0xffffffffu, hi, key) << 32) | __shfl_sync(0xffffffffu, lo, key);
            const uint32_t d = slot + (uint32_t)(key * C::ROW_B + ((c ^ xq2_swz<C, FP8>(key)) << 4));
            xq2_cp16(d, kb + off);
            xq2_cp16(d + XQ2_CHUNK * C::ROW_B, vb + off);
        }
    } else {
#pragma unroll
        for (int it = 0; it < XQ2_CHUNK / C::KPI; it++) {
            const int key = it * C::KPI + ks;
            const uint64_t off =
                ((uint64_t)__shfl_sync(0xffffffffu, hi, key) << 32) | __shfl_sync(0xffffffffu, lo, key);
            const uint32_t d = slot + (uint32_t)(key * C::ROW_B + ((c ^ xq2_swz<C, FP8>(key)) << 4));
            const int nb = key < n_valid ? 16 : 0;
            xq2_cp16z(d, kb + off, nb);
            xq2_cp16z(d + XQ2_CHUNK * C::ROW_B, vb + off, nb);
        }
    }
}

/* B fragments of Q^T for row tile rt and 32 head dims j: f[0..1], f[2..3] = bf16: k-steps 2j and
 * 2j+1; FP8: the hi and the lo tile of k32 step j. */
template <class C, bool FP8>
__device__ __forceinline__ void xq2_qfrag(const uint8_t *Qs, int rt, int j, int lane, uint32_t f[4])
{
    if (FP8) {
        const int gid = lane >> 2, c4 = lane & 3;
        const uint8_t *p = Qs + (8 * rt + gid) * C::QSTR + 32 * j + 8 * c4;
        uint2 h = *reinterpret_cast<const uint2 *>(p);
        uint2 l = *reinterpret_cast<const uint2 *>(p + C::QR * C::QSTR);
        f[0] = h.x, f[1] = h.y, f[2] = l.x, f[3] = l.y;
    } else {
        ldsm_x4(smem_u32(Qs + (8 * rt + (lane & 7)) * C::QSTR + (32 * j + 8 * (lane >> 3)) * 2), f);
    }
}

/* Head dim of PV output row m (0..15) of m-tile t (see the file comment). */
template <bool FP8>
__device__ __forceinline__ int xq2_dim(int t, int m)
{
    if (FP8)
        return 32 * (t >> 1) + 4 * (m & 7) + 2 * (t & 1) + (m >> 3);
    return 16 * t + m;
}

/* OPT: a soft-cap (cap_l2 * tanh of the scaled score, before the mask) and a window (each row masks keys
 * before its window start; the CTAs cover the first row's window only: xqa_split). */
template <bool FP8, int HD, int NR, bool OPT>
__global__ void __launch_bounds__(XQ2_THREADS, FP8 ? 2 : 1) xqa2_kernel(const xqa_kargs a)
{
    typedef xq2_cfg<FP8, HD, NR> C;
    constexpr int MT = HD / 16; /* PV m-tiles (16 head dims each) */
    constexpr int KJ = HD / 32; /* QK^T steps of 32 head dims */
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ int s_last;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, gid = lane >> 2, c4 = lane & 3;
    const int x = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int G = a.group, rows = a.rows;
    const int L = a.seq_lens[b];

    int k0, k1, ns_eff;
    if (!xqa_split<HD, OPT>(a, L, XQ2_THREADS, k0, k1, ns_eff))
        return;
    const int n_chunks = (k1 - k0 + XQ2_CHUNK - 1) / XQ2_CHUNK;
    const int n_mine = w < n_chunks ? (n_chunks - w + XQ2_WARPS - 1) / XQ2_WARPS : 0; /* warp-uniform */
    const int32_t *bt = a.bt + (int64_t)b * a.bt_stride;
    const uint8_t *kb = a.kp + (lane % C::CH) * 16, *vb = a.vp + (lane % C::CH) * 16;
    const uint32_t ring = smem_u32(smem) + w * C::WARP_B;
    const uint8_t *ringp = smem + w * C::WARP_B;
    const int cbase = k0 + w * XQ2_CHUNK; /* first key of this warp's chunk i: cbase + i * 64 */

    /* start the KV stream first: chunks 0 .. STAGES-2 */
#pragma unroll
    for (int s = 0; s < XQ2_STAGES - 1; s++) {
        if (s < n_mine) {
            const int p0 = cbase + s * XQ2_WARPS * XQ2_CHUNK;
            xq2_issue<C, FP8>(ring + s * C::SLOT_B, kb, vb, xq2_row(a, bt, L, p0 + (lane & 15), g, C::ROW_B), L - p0,
                              lane);
        }
        xq2_commit();
    }
    int64_t nxt = XQ2_STAGES - 1 < n_mine
                      ? xq2_row(a, bt, L, cbase + (XQ2_STAGES - 1) * XQ2_WARPS * XQ2_CHUNK + (lane & 15), g, C::ROW_B)
                      : 0;

    /* ---- Q to shared memory (FP8: hi/lo e4m3 and the per-row score factor) ---- */
    uint8_t *Qs = smem + C::Q_OFF;
    float *s_f = reinterpret_cast<float *>(smem + C::F_OFF);
    const float qk = FP8 ? a.qk_log2 * (1.0f / 256.0f) : a.qk_log2; /* FP8 K is read at its value */
    {
        constexpr int CPR = HD / 8; /* 8-element chunks per row (lanes sharing a row) */
        constexpr int TOT = C::QR * CPR;
        static_assert(TOT % 32 == 0 && CPR <= 32, "whole warps per staging pass");
#pragma unroll
        for (int i0 = 0; i0 < TOT; i0 += XQ2_THREADS) {
            if (i0 + 32 * w < TOT) { /* warp-uniform */
                const int i = i0 + tid, r = i / CPR, ch = i % CPR;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (r < rows) {
                    int t = r / G, h = r % G;
                    v = *reinterpret_cast<const uint4 *>(a.q + ((int64_t)b * a.q_len + t) * a.ldq +
                                                         (int64_t)(g * G + h) * HD + ch * 8);
                }
                if constexpr (!FP8) {
                    *reinterpret_cast<uint4 *>(Qs + r * C::QSTR + ch * 16) = v;
                } else {
                    float f[8];
                    bf16x8_to_f32(v, f);
                    float m = 0.0f;
#pragma unroll
                    for (int u = 0; u < 8; u++)
                        m = fmaxf(m, fabsf(f[u]));
#pragma unroll
                    for (int o = 1; o < CPR; o <<= 1)
                        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                    int E = 0;
                    frexpf(m, &E); /* m = f * 2^E, f in [0.5, 1); m = 0 gives E = 0 */
                    const int sh = 8 - E; /* the row max scales into [128, 256) */
                    uint32_t hw[4], lw[4];
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        float2 xs = make_float2(ldexpf(f[2 * u], sh), ldexpf(f[2 * u + 1], sh));
                        __nv_fp8x2_storage_t hc = __nv_cvt_float2_to_fp8x2(xs, __NV_SATFINITE, __NV_E4M3);
                        float2 hv = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(hc, __NV_E4M3)));
                        __nv_fp8x2_storage_t lc =
                            __nv_cvt_float2_to_fp8x2(make_float2(xs.x - hv.x, xs.y - hv.y), __NV_SATFINITE, __NV_E4M3);
                        hw[u] = hc;
                        lw[u] = lc;
                    }
                    uint2 hp = make_uint2(hw[0] | (hw[1] << 16), hw[2] | (hw[3] << 16));
                    uint2 lp = make_uint2(lw[0] | (lw[1] << 16), lw[2] | (lw[3] << 16));
                    *reinterpret_cast<uint2 *>(Qs + r * C::QSTR + ch * 8) = hp;
                    *reinterpret_cast<uint2 *>(Qs + (C::QR + r) * C::QSTR + ch * 8) = lp;
                    if (ch == 0)
                        s_f[r] = ldexpf(qk, -sh); /* q = (hi + lo) * 2^-sh */
                }
            }
        }
    }
    __syncthreads();

    uint32_t qreg[C::QREG];
    if constexpr (NR == 1) {
#pragma unroll
        for (int j = 0; j < KJ; j++)
            xq2_qfrag<C, FP8>(Qs, 0, j, lane, qreg + 4 * j);
    }

    /* per thread: rows 2*c4 + jj + 8*rt (jj = 0, 1) */
    int lim[NR][2], wlo[NR][2]; /* wlo: OPT only */
    float fac[NR][2], m_run[NR][2], l_run[NR][2];
#pragma unroll
    for (int rt = 0; rt < NR; rt++)
#pragma unroll
        for (int jj = 0; jj < 2; jj++) {
            const int r = 8 * rt + 2 * c4 + jj;
            const int t = r < rows ? r / G : a.q_len - 1;
            lim[rt][jj] = L - a.q_len + t; /* last key this row may see */
            if (OPT)
                wlo[rt][jj] = a.window > 0 ? lim[rt][jj] - a.window + 1 : 0; /* its first (window) */
            fac[rt][jj] = FP8 ? s_f[r] : qk;
            m_run[rt][jj] = -INFINITY;
            l_run[rt][jj] = 0.0f;
        }
    float o[MT][NR][4];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int rt = 0; rt < NR; rt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                o[t][rt][e] = 0.0f;

    /* lane offsets inside a slot (the row part of a 128-byte group; +128 per 4 groups) */
    uint32_t kofs[4], vofs[4];
    const int kA = FP8 ? (gid >> 1) + 4 * (gid & 1) : gid; /* key of MMA row gid (gid + 8: kA + 8) */
#pragma unroll
    for (int u = 0; u < 4; u++) {
        if (FP8) {
            const int h = (kA & 3) & (C::CH / 2 - 1), hv = c4 & (C::CH / 2 - 1);
            kofs[u] = (uint32_t)(kA * C::ROW_B + (((2 * (u ^ h) + (c4 >> 1)) << 4) & (C::ROW_B - 1)) + 8 * (c4 & 1));
            vofs[u] = (uint32_t)(c4 * C::ROW_B + (((2 * (u ^ hv) + (gid >> 2)) << 4) & (C::ROW_B - 1)) + 4 * (gid & 3));
        } else {
            const int key = lane & 15, sw = key & 7 & (C::CH - 1);
            kofs[u] = (uint32_t)(key * C::ROW_B + ((((2 * u + (lane >> 4)) ^ sw) << 4) & (C::ROW_B - 1)));
            const int mi = lane >> 3, vkey = (lane & 7) + 8 * (mi >> 1), vsw = vkey & 7 & (C::CH - 1);
            vofs[u] = (uint32_t)(vkey * C::ROW_B + ((((2 * u + (mi & 1)) ^ vsw) << 4) & (C::ROW_B - 1)));
        }
    }

    for (int i = 0; i < n_mine; i++) {
        { /* copy chunk i + STAGES-1 into the slot chunk i-1 used; look up the blocks of the one after */
            const int nx = i + XQ2_STAGES - 1;
            if (nx < n_mine) {
                const int pn = cbase + nx * XQ2_WARPS * XQ2_CHUNK;
                xq2_issue<C, FP8>(ring + (nx % XQ2_STAGES) * C::SLOT_B, kb, vb, nxt, L - pn, lane);
            }
            xq2_commit();
            const int nn = nx + 1;
            nxt = nn < n_mine ? xq2_row(a, bt, L, cbase + nn * XQ2_WARPS * XQ2_CHUNK + (lane & 15), g, C::ROW_B) : 0;
        }
        xq2_wait<XQ2_STAGES - 1>();
        __syncwarp(); /* chunk i visible to the whole warp */
        const int slot = i % XQ2_STAGES;
        const uint32_t ks = ring + slot * C::SLOT_B, vs = ks + XQ2_CHUNK * C::ROW_B;
        const uint8_t *ksp = ringp + slot * C::SLOT_B, *vsp = ksp + XQ2_CHUNK * C::ROW_B;
        const int p0 = cbase + i * XQ2_WARPS * XQ2_CHUNK;

        /* ---- S^T = K Q^T: [key gid, gid+8][rows 2c4, 2c4+1 (+8 rt)] ---- */
        float sc[NR][2 * C::P2][4];
#pragma unroll
        for (int rt = 0; rt < NR; rt++)
#pragma unroll
            for (int u = 0; u < 2 * C::P2; u++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sc[rt][u][e] = 0.0f;
#pragma unroll
        for (int j = 0; j < KJ; j++) {
            uint32_t ka[2][4];
            if constexpr (FP8) {
                const uint8_t *kp = ksp + kofs[j & 3] + (j >> 2) * 128;
                uint2 u0 = *reinterpret_cast<const uint2 *>(kp);
                uint2 u1 = *reinterpret_cast<const uint2 *>(kp + 8 * C::ROW_B);
                ka[0][0] = u0.x, ka[0][1] = u1.x, ka[0][2] = u0.y, ka[0][3] = u1.y;
            } else {
                ldsm_x4(ks + kofs[(2 * j) & 3] + ((2 * j) >> 2) * 128, ka[0]);
                ldsm_x4(ks + kofs[(2 * j + 1) & 3] + ((2 * j + 1) >> 2) * 128, ka[1]);
            }
            const int pu = 2 * (j % C::P2);
#pragma unroll
            for (int rt = 0; rt < NR; rt++) {
                uint32_t qb[4];
                if constexpr (NR == 1) {
#pragma unroll
                    for (int u = 0; u < 4; u++)
                        qb[u] = qreg[4 * j + u];
                } else {
                    xq2_qfrag<C, FP8>(Qs, rt, j, lane, qb);
                }
                if (FP8) {
                    xq2_mma8(sc[rt][pu], ka[0], qb[0], qb[1]);     /* hi */
                    xq2_mma8(sc[rt][pu + 1], ka[0], qb[2], qb[3]); /* lo */
                } else {
                    mma16816<false>(sc[rt][pu], ka[0], qb[0], qb[1]);
                    mma16816<false>(sc[rt][pu + 1], ka[1], qb[2], qb[3]);
                }
            }
        }

        /* ---- scale, causal/length mask, chunk max per row (over the 8 lanes of a column) ---- */
        const int posA = p0 + kA, posB = posA + 8;
        float v[NR][4], mx[NR][2];
        bool need = false;
#pragma unroll
        for (int rt = 0; rt < NR; rt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float s = 0.0f;
#pragma unroll
                for (int u = 0; u < 2 * C::P2; u++)
                    s += sc[rt][u][e];
                const int jj = e & 1;
                if constexpr (OPT) {
                    const int pos = e < 2 ? posA : posB;
                    float x = s * fac[rt][jj];
                    if (a.cap_l2 > 0.0f)
                        x = a.cap_l2 * tanh_fast(x);
                    v[rt][e] = pos <= lim[rt][jj] && pos >= wlo[rt][jj] ? x : -INFINITY;
                } else {
                    v[rt][e] = ((e < 2 ? posA : posB) <= lim[rt][jj]) ? s * fac[rt][jj] : -INFINITY;
                }
            }
#pragma unroll
            for (int jj = 0; jj < 2; jj++) {
                float m = fmaxf(v[rt][jj], v[rt][jj + 2]);
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
                mx[rt][jj] = m;
                need |= m > m_run[rt][jj] + XQ2_LAZY;
            }
        }
        if (__any_sync(0xffffffffu, need)) { /* move the reference max; rare after the first chunk */
#pragma unroll
            for (int rt = 0; rt < NR; rt++)
#pragma unroll
                for (int jj = 0; jj < 2; jj++) {
                    const float mn = fmaxf(m_run[rt][jj], mx[rt][jj]);
                    const float alpha = mn == -INFINITY ? 1.0f : ex2(m_run[rt][jj] - mn);
                    m_run[rt][jj] = mn;
                    l_run[rt][jj] *= alpha;
#pragma unroll
                    for (int t = 0; t < MT; t++) {
                        o[t][rt][jj] *= alpha;
                        o[t][rt][jj + 2] *= alpha;
                    }
                }
        }
        uint32_t pb[NR][2]; /* B fragments of P^T: keys (slots) 2c4.. and 2c4+8.., row gid */
#pragma unroll
        for (int rt = 0; rt < NR; rt++) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float mu = m_run[rt][e & 1] == -INFINITY ? 0.0f : m_run[rt][e & 1];
                p[e] = ex2(v[rt][e] - mu);
            }
            l_run[rt][0] += p[0] + p[2];
            l_run[rt][1] += p[1] + p[3];
            pb[rt][0] = xq2_movt(pack2(p[0], p[1], FP8));
            pb[rt][1] = xq2_movt(pack2(p[2], p[3], FP8));
        }

        /* ---- O^T += V^T P^T: m-tiles of 16 head dims ---- */
        if constexpr (FP8) {
#pragma unroll
            for (int pp = 0; pp < HD / 32; pp++) {
                const uint8_t *vp = vsp + vofs[pp & 3] + (pp >> 2) * 128;
                uint32_t wv[4];
#pragma unroll
                for (int k = 0; k < 4; k++) /* keys c4 + 4k: 4 bytes = head dims 32pp + 4gid .. +3 */
                    wv[k] = *reinterpret_cast<const uint32_t *>(vp + 4 * k * C::ROW_B);
                uint32_t va[2][4];
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint32_t sel = (uint32_t)(q | (q << 4) | ((q + 4) << 8) | ((q + 4) << 12));
                    va[q >> 1][q & 1] = xq2_e4m3_13(__byte_perm(wv[0], wv[1], sel));
                    va[q >> 1][2 + (q & 1)] = xq2_e4m3_13(__byte_perm(wv[2], wv[3], sel));
                }
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int rt = 0; rt < NR; rt++)
                        mma16816<true>(o[2 * pp + h][rt], va[h], pb[rt][0], pb[rt][1]);
            }
        } else {
#pragma unroll
            for (int t = 0; t < MT; t++) {
                uint32_t va[4];
                ldsm_x4_t(vs + vofs[t & 3] + (t >> 2) * 128, va);
#pragma unroll
                for (int rt = 0; rt < NR; rt++)
                    mma16816<false>(o[t][rt], va, pb[rt][0], pb[rt][1]);
            }
        }
        __syncwarp(); /* every lane is done with this slot before it is refilled */
    }
    xq2_wait<0>();

    /* ---- merge the four warps: (reference max, sum) per row, O through the idle rings ---- */
    float *s_ml = reinterpret_cast<float *>(smem + C::ML_OFF);
    float *s_wt = reinterpret_cast<float *>(smem + C::WT_OFF);
    float *s_rv = reinterpret_cast<float *>(smem + C::RV_OFF);
#pragma unroll
    for (int rt = 0; rt < NR; rt++)
#pragma unroll
        for (int jj = 0; jj < 2; jj++) {
            float l = l_run[rt][jj];
            l += __shfl_xor_sync(0xffffffffu, l, 4);
            l += __shfl_xor_sync(0xffffffffu, l, 8);
            l += __shfl_xor_sync(0xffffffffu, l, 16);
            if (gid == 0) {
                const int r = 8 * rt + 2 * c4 + jj;
                s_ml[(w * C::QR + r) * 2] = m_run[rt][jj];
                s_ml[(w * C::QR + r) * 2 + 1] = l;
            }
        }
    __syncthreads(); /* all rings idle */
    float *X = reinterpret_cast<float *>(smem); /* [WARPS][QR][XSTR] f32 */
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int rt = 0; rt < NR; rt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = 8 * rt + 2 * c4 + (e & 1);
                X[(w * C::QR + r) * C::XSTR + xq2_dim<FP8>(t, gid + 8 * (e >> 1))] = o[t][rt][e];
            }
    if (tid < C::QR) {
        float M = -INFINITY;
#pragma unroll
        for (int ww = 0; ww < XQ2_WARPS; ww++)
            M = fmaxf(M, s_ml[(ww * C::QR + tid) * 2]);
        float Ls = 0.0f;
#pragma unroll
        for (int ww = 0; ww < XQ2_WARPS; ww++) {
            const float mw = s_ml[(ww * C::QR + tid) * 2];
            const float wt = M == -INFINITY ? 0.0f : ex2(mw - M); /* mw = -inf: 0 */
            s_wt[ww * C::QR + tid] = wt;
            Ls += wt * s_ml[(ww * C::QR + tid) * 2 + 1];
        }
        s_rv[2 * tid] = M;
        s_rv[2 * tid + 1] = Ls;
    }
    __syncthreads();

    const int64_t bg = (int64_t)b * a.n_kv + g;
    float *opx = a.opart + ((bg * a.nb + x) * rows) * HD; /* this split's partial (ns_eff > 1) */
    for (int i = tid; i < rows * (HD / 4); i += XQ2_THREADS) {
        const int r = i / (HD / 4), d4 = i % (HD / 4);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int ww = 0; ww < XQ2_WARPS; ww++) {
            const float wt = s_wt[ww * C::QR + r];
            const float4 xv = *reinterpret_cast<const float4 *>(X + (ww * C::QR + r) * C::XSTR + 4 * d4);
            acc.x += wt * xv.x, acc.y += wt * xv.y, acc.z += wt * xv.z, acc.w += wt * xv.w;
        }
        if (ns_eff == 1) {
            const float Ls = s_rv[2 * r + 1], inv = Ls > 0.0f ? a.v_fac / Ls : 0.0f;
            const int t = r / G, h = r % G;
            __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
            __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
            uint2 pk;
            pk.x = *reinterpret_cast<uint32_t *>(&lo);
            pk.y = *reinterpret_cast<uint32_t *>(&hi);
            *reinterpret_cast<uint2 *>(a.out + ((int64_t)b * a.q_len + t) * a.ldo + (int64_t)(g * G + h) * HD +
                                       d4 * 4) = pk;
        } else {
            reinterpret_cast<float4 *>(opx)[i] = acc;
        }
    }
    if (ns_eff == 1)
        return;

    /* ---- split: (m, l) to scratch; the last CTA of (b, g) merges every split ---- */
    if (tid < rows) {
        float *ml = a.ml + ((bg * a.nb + x) * rows) * 2;
        ml[2 * tid] = s_rv[2 * tid];
        ml[2 * tid + 1] = s_rv[2 * tid + 1];
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
    { /* per row (8 threads each): M = max m_s, 1/L with L = sum exp2(m_s - M) l_s */
        const int r = tid >> 3, sub = tid & 7;
        float M = -INFINITY;
        if (r < rows)
            for (int sp = sub; sp < ns_eff; sp += 8)
                M = fmaxf(M, __ldcg(ml0 + (sp * rows + r) * 2));
        M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, 1));
        M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, 2));
        M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, 4));
        float Ls = 0.0f;
        if (r < rows && M != -INFINITY)
            for (int sp = sub; sp < ns_eff; sp += 8) {
                const float2 mlv = __ldcg(reinterpret_cast<const float2 *>(ml0 + (sp * rows + r) * 2));
                Ls += ex2(mlv.x - M) * mlv.y;
            }
        Ls += __shfl_xor_sync(0xffffffffu, Ls, 1);
        Ls += __shfl_xor_sync(0xffffffffu, Ls, 2);
        Ls += __shfl_xor_sync(0xffffffffu, Ls, 4);
        if (sub == 0 && r < rows) {
            s_rv[2 * r] = M == -INFINITY ? 0.0f : M;
            s_rv[2 * r + 1] = Ls > 0.0f ? a.v_fac / Ls : 0.0f;
        }
    }
    __syncthreads();
    { /* O = sum_s exp2(m_s - M) O_s / L: every element of this thread, two splits per round in flight */
        constexpr int EM = (C::QR * (HD / 4) + XQ2_THREADS - 1) / XQ2_THREADS;
        const int nel = rows * (HD / 4);
        float4 acc[EM];
        float Mr[EM];
#pragma unroll
        for (int e = 0; e < EM; e++) {
            acc[e] = make_float4(0.f, 0.f, 0.f, 0.f);
            const int i = tid + e * XQ2_THREADS;
            Mr[e] = i < nel ? s_rv[2 * (i / (HD / 4))] : 0.0f;
        }
        for (int s0 = 0; s0 < ns_eff; s0 += 2) {
            float mv[2][EM];
            float4 ov[2][EM];
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
                for (int e = 0; e < EM; e++) {
                    const int i = tid + e * XQ2_THREADS, sp = s0 + u;
                    if (sp < ns_eff && i < nel) {
                        const int r = i / (HD / 4), d4 = i % (HD / 4);
                        mv[u][e] = __ldcg(ml0 + (sp * rows + r) * 2);
                        ov[u][e] = __ldcg(reinterpret_cast<const float4 *>(op0 + ((int64_t)sp * rows + r) * HD) + d4);
                    } else {
                        mv[u][e] = -INFINITY;
                        ov[u][e] = make_float4(0.f, 0.f, 0.f, 0.f);
                    }
                }
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
                for (int e = 0; e < EM; e++) {
                    const float wt = ex2(mv[u][e] - Mr[e]); /* empty split (m = -inf): 0 */
                    acc[e].x += wt * ov[u][e].x, acc[e].y += wt * ov[u][e].y;
                    acc[e].z += wt * ov[u][e].z, acc[e].w += wt * ov[u][e].w;
                }
        }
#pragma unroll
        for (int e = 0; e < EM; e++) {
            const int i = tid + e * XQ2_THREADS;
            if (i < nel) {
                const int r = i / (HD / 4), d4 = i % (HD / 4), t = r / G, h = r % G;
                const float inv = s_rv[2 * r + 1];
                __nv_bfloat162 lo = __floats2bfloat162_rn(acc[e].x * inv, acc[e].y * inv);
                __nv_bfloat162 hi = __floats2bfloat162_rn(acc[e].z * inv, acc[e].w * inv);
                uint2 pk;
                pk.x = *reinterpret_cast<uint32_t *>(&lo);
                pk.y = *reinterpret_cast<uint32_t *>(&hi);
                *reinterpret_cast<uint2 *>(a.out + ((int64_t)b * a.q_len + t) * a.ldo + (int64_t)(g * G + h) * HD +
                                           d4 * 4) = pk;
            }
        }
    }
}
