/* gemm_awq_gemv.cu - k_gemv_awq, the W4A16 GEMV of decode batches (M <= 8): streams the int4 weights
 * through shared-memory rings in whole 128-byte lines.
 *
 * Work: a warp owns one 64-column tile (8 packed words, 32 bytes, of each k row) and a run of
 * whole groups of K. Four warps with adjacent tiles and the same run form a quad that shares
 * one ring of G2_STAGES k16 steps: each step holds the 16 rows x 128 bytes of qweight of the
 * quad's 256 columns, the step's x (M rows x 16 k) and, on a group's first step, the group's
 * zero words (128 B) and scales (512 B). 15 steps (30 KB of weights) are in flight per quad,
 * 120 KB per SM. A named barrier per quad and step frees the previous slot. The first stages'
 * weight copies start before griddepcontrol.wait: weights never depend on the previous kernel.
 * Every thread of the quad copies one 16-byte chunk per step with cp.async (eight lanes per
 * 128-byte line); cp.async groups + the quad barrier publish a slot. Measured on an H200
 * (bench/history/NOTES.md, session 2 and run E): 37-60% of 4.2 TB/s on the large shapes, 1.3-2.5x the first
 * AWQ GEMV (removed); filling the rings by TMA instead measured no faster (removed too).
 *
 * Product: mma.sync m16n8k16 with the WEIGHTS as A (16 MMA rows = output columns) and x as B
 * (8 MMA columns = batch rows: M <= 8 needs no padding rows). Lane (g = lane/4, q = lane%4)
 * reads packed word g of its tile in the four k rows of its k16 slots (2q, 2q+1, 2q+8, 2q+9
 * in either order the kernel's layout makes conflict-free; x is read in the same order). Rows
 * are paired byte-wise (prmt) so that one lop3 gives an A register: bf16 {128 + q[k][n],
 * 128 + q[k'][n]}, exact. The MMA sums (128 + q) x; a fifth MMA with A = 1 gives sum x, and at
 * the group's end (sum - (128 + z) sum x) * s is added in f32. MMA tile i: row g <-> column
 * 8g + 2i, row g + 8 <-> column 8g + 2i + 1 (AutoAWQ's nibble order).
 *
 * Block: 4 quads = QC column quads x (4 / QC) K runs, reduced in shared memory in a fixed order;
 * when the block's runs do not cover K, blocks split K (grid.y) and the last block of a column
 * group adds the partials in split order (workspace, deterministic). One block per SM; the plan
 * sizes the grid to one wave. */
#include <atomic>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm_awq.cuh"
#include "cuda_check.h"
#include "launch.cuh"

#define G2_QUADS 4 /* quads (4 warps each) per block */
#define G2_THREADS (G2_QUADS * 128)
#define G2_STAGES 16                /* ring slots per quad (k16 steps); a multiple of group / 16 */
#define G2_SLOT_X 2048              /* slot: [0, 2048) qweight 16 rows x 128 B (16-byte chunks swizzled) */
#define G2_SLOT_Z (G2_SLOT_X + 256) /*       [2048, 2304) x 8 rows x 16 bf16 */
#define G2_SLOT_S (G2_SLOT_Z + 128) /*       [2304, 2432) zero words of 4 tiles */
#define G2_SLOT (G2_SLOT_S + 512)   /*       [2432, 2944) scales of 4 tiles (256 fp16) */
#define G2_SMEM (G2_QUADS * G2_STAGES * G2_SLOT) /* 188416 bytes of dynamic shared memory */
#define G2_RED_FLOATS (G2_QUADS * 4 * AWQ_GEMV_MAX_ROWS * 64) /* reduction, reuses the rings */

static_assert(G2_RED_FLOATS * 4 <= G2_SMEM, "the reduction buffer must fit in the rings");
static_assert((G2_STAGES & (G2_STAGES - 1)) == 0 && G2_STAGES >= 8, "stages: a power of two >= 128 / 16");

__device__ __forceinline__ uint64_t g2_evict_first(void)
{
    uint64_t p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    return p;
}

/* 16 bytes global -> shared when pred, L2 only; read-once weights: evict first. */
__device__ __forceinline__ void g2_cp16_stream(uint32_t dst, const void *src, bool pred, uint64_t pol)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
                 " @p cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %3;\n}\n" ::"r"(dst),
                 "l"(src), "r"((int)pred), "l"(pol)
                 : "memory");
}

/* 16 bytes global -> shared when pred (zeros, scales: small, default policy) */
__device__ __forceinline__ void g2_cp16(uint32_t dst, const void *src, bool pred)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n @p cp.async.cg.shared.global [%0], [%1], 16;\n}\n" ::"r"(
                     dst),
                 "l"(src), "r"((int)pred)
                 : "memory");
}

/* 16 bytes of x global -> shared when pred, through L1: other quads of the SM read the same x. */
__device__ __forceinline__ void g2_cp16_x(uint32_t dst, const void *src, bool pred)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n @p cp.async.ca.shared.global [%0], [%1], 16;\n}\n" ::"r"(
                     dst),
                 "l"(src), "r"((int)pred)
                 : "memory");
}

__device__ __forceinline__ void g2_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N> __device__ __forceinline__ void g2_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* The 128 threads of quad `id - 1` (barrier 0 is __syncthreads'). */
__device__ __forceinline__ void g2_quad_sync(int id) { asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory"); }

/* Let the next PDL kernel in the stream be scheduled; it still waits (griddepcontrol.wait) for
 * this grid to complete before touching memory, as every kernel of kernels/cuda does. */
__device__ __forceinline__ void g2_trigger(void) { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

/* d += A . b with A = all ones: every row of d gets sum over k of x (b's columns). */
__device__ __forceinline__ void g2_mma_ones(float d[4], uint32_t b0, uint32_t b1)
{
    const uint32_t one = 0x3F803F80u; /* bf16x2 {1, 1} */
    awq_mma_bf16(d, one, one, one, one, b0, b1);
}

__device__ __forceinline__ void g2_zero(float (&acc)[4][4], float (&accg)[4][4], float (&xs)[4])
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        xs[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++)
            acc[i][c] = accg[i][c] = 0.0f;
    }
}

/* End of a group: acc += s * (sum (128 + q) x - (128 + z) sum x), then the group sums restart.
 * acc[i], accg[i]: {col 8g+2i row 2q, col 8g+2i row 2q+1, col 8g+2i+1 row 2q, col 8g+2i+1 row 2q+1};
 * xs: {sum x[2q], sum x[2q+1], same, same}; zw: zero word of columns 8g .. 8g+7; sv: their scales. */
__device__ __forceinline__ void g2_flush(float (&acc)[4][4], float (&accg)[4][4], float (&xs)[4], uint32_t zw,
                                         const uint4 &sv)
{
    const uint32_t svw[4] = {sv.x, sv.y, sv.z, sv.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t zb = awq_nib2_bf16(zw >> (4 * i)); /* {128 + z col 2i, 128 + z col 2i+1} */
        const float zlo = __uint_as_float(zb << 16), zhi = __uint_as_float(zb & 0xFFFF0000u);
        const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&svw[i]));
        acc[i][0] = fmaf(f.x, fmaf(-zlo, xs[0], accg[i][0]), acc[i][0]);
        acc[i][1] = fmaf(f.x, fmaf(-zlo, xs[1], accg[i][1]), acc[i][1]);
        acc[i][2] = fmaf(f.y, fmaf(-zhi, xs[0], accg[i][2]), acc[i][2]);
        acc[i][3] = fmaf(f.y, fmaf(-zhi, xs[1], accg[i][3]), acc[i][3]);
        accg[i][0] = accg[i][1] = accg[i][2] = accg[i][3] = 0.0f;
    }
    xs[0] = xs[1] = xs[2] = xs[3] = 0.0f;
}

/* After the main loop (shared memory free, __syncthreads done): the block's reduction over its K
 * runs in a fixed order, then y (one split) or the partials and, in the last block of the column
 * group, their sum in split order. red: the rings, as [warp 16][row 8][col 64] f32. */
__device__ __forceinline__ void g2_epilogue(const float (&acc)[4][4], float *red, bool *s_last, int QC, int M,
                                            int NT, int N, int splits, __nv_bfloat16 *__restrict__ y, int ldy,
                                            float *__restrict__ part, unsigned *__restrict__ counters)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float *r0 = red + ((size_t)warp * AWQ_GEMV_MAX_ROWS + 2 * q) * 64 + 8 * g + 2 * i;
        r0[0] = acc[i][0];
        r0[64] = acc[i][1];
        r0[1] = acc[i][2];
        r0[65] = acc[i][3];
    }
    __syncthreads();
    /* output (column quad c of the block, row m, column n of 256): sum over the runs kc of
     * red[warp (kc * QC + c) * 4 + n / 64][m][n % 64], in kc order */
    const int KW = G2_QUADS / QC, per = M * 256;
    for (int e = threadIdx.x; e < QC * per; e += G2_THREADS) {
        const int c = e / per, m = (e % per) >> 8, n = e & 255, t = 4 * (blockIdx.x * QC + c) + (n >> 6);
        if (t >= NT)
            continue;
        float v = 0.0f;
        for (int u = 0; u < KW; u++)
            v += red[((size_t)((u * QC + c) * 4 + (n >> 6)) * AWQ_GEMV_MAX_ROWS + m) * 64 + (n & 63)];
        const int col = 64 * t + (n & 63);
        if (splits == 1)
            y[(size_t)m * ldy + col] = __float2bfloat16_rn(v);
        else
            part[((size_t)blockIdx.y * AWQ_GEMV_MAX_ROWS + m) * N + col] = v;
    }
    if (splits == 1)
        return;
    /* the last block of this column group adds the splits in order */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        *s_last = atomicAdd(&counters[blockIdx.x], 1u) == (unsigned)(splits - 1);
    __syncthreads();
    if (!*s_last)
        return;
    __threadfence();
    const size_t pstep = (size_t)AWQ_GEMV_MAX_ROWS * N;
    for (int e = threadIdx.x; e < QC * per; e += G2_THREADS) {
        const int c = e / per, m = (e % per) >> 8, n = e & 255, t = 4 * (blockIdx.x * QC + c) + (n >> 6);
        if (t >= NT)
            continue;
        const int col = 64 * t + (n & 63);
        const float *pp = part + (size_t)m * N + col;
        float v = 0.0f;
        int u = 0;
        for (; u + 8 <= splits; u += 8) { /* eight loads in flight, added in split order */
            float pv[8];
#pragma unroll
            for (int i = 0; i < 8; i++)
                pv[i] = __ldcg(pp + (size_t)(u + i) * pstep);
#pragma unroll
            for (int i = 0; i < 8; i++)
                v += pv[i];
        }
        for (; u < splits; u++)
            v += __ldcg(pp + (size_t)u * pstep);
        y[(size_t)m * ldy + col] = __float2bfloat16_rn(v);
    }
    if (threadIdx.x == 0)
        counters[blockIdx.x] = 0u; /* ready for the next call */
}

/* Common to both kernels: x [M, ldx] bf16; qz [K/GS, ldq] u32; sc [K/GS, lds] fp16; y [M, ldy]
 * bf16; part [splits, 8, N] f32 and counters [gridDim.x] u32 (zero) when splits > 1.
 * Block (bx, by), quad d: column quad cq = bx*QC + d % QC (tiles 4cq .. 4cq+3, 256 columns),
 * run kc = d / QC: groups [by*GB + kc*GW, +GW) within [by*GB, by*GB + GB). */
#define G2_KERNEL_SETUP                                                                                            \
    constexpr int SPG = GS / 16, P = G2_STAGES;                                                                    \
    static_assert(P % SPG == 0, "a group's steps must not wrap around the ring");                                  \
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;                       \
    const int quad = warp >> 2, ct = warp & 3;                                                                     \
    const int cq = blockIdx.x * QC + quad % QC, kc = quad / QC;                                                    \
    const int NT = N / 64, G = K / GS;                                                                             \
    const int jb = blockIdx.y * GB, je = min(G, jb + GB), j0 = jb + kc * GW;                                       \
    const int NQ = (NT + 3) >> 2;                                                                                  \
    const int ngroups = (cq < NQ && j0 < je) ? min(je, j0 + GW) - j0 : 0; /* the same for the quad's 4 warps */    \
    const int nsteps = ngroups * SPG;                                                                              \
    (void)warp

/* qweight [K, ldq] u32 through cp.async, 16 bytes a thread. */
template <int GS>
__global__ void __launch_bounds__(G2_THREADS, 1)
    awq_gemv2_kernel(const __nv_bfloat16 *__restrict__ x, int M, int ldx, const uint32_t *__restrict__ qw,
                     const uint32_t *__restrict__ qz, const __half *__restrict__ sc, int K, int N, int ldq, int lds,
                     int QC, int GB, int GW, int splits, __nv_bfloat16 *__restrict__ y, int ldy,
                     float *__restrict__ part, unsigned *__restrict__ counters)
{
    G2_KERNEL_SETUP;
    extern __shared__ __align__(16) unsigned char g2_smem[];
    __shared__ bool s_last;
    const int qt = threadIdx.x & 127;
    const int cql = ngroups ? cq : 0, jl = ngroups ? j0 : 0; /* in-range stand-ins for idle quads */

    unsigned char *ring = g2_smem + quad * (P * G2_SLOT);
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    const uint64_t pol = g2_evict_first();

    /* copies of this thread (32-bit element offsets: the host checks that they fit).
     * Weights: row qt/8 of a step, 16-byte chunk c = qt%8 (tile c/2) of the quad's 128 bytes,
     * stored at chunk position c ^ (2 * ((row / 4) % 4)) of the row. */
    const int crow = qt >> 3, cch = qt & 7;
    const bool wlane = 4 * cql + (cch >> 1) < NT;
    const uint32_t wdst = ring_s + (uint32_t)(crow * 128 + 16 * (cch ^ (2 * ((crow >> 2) & 3))));
    uint32_t woff = (uint32_t)((jl * GS + crow) * ldq + cql * 32 + 4 * cch); /* u32 words into qw */
    const uint32_t wstep = (uint32_t)(16 * ldq);                                /* words per k16 step */
    /* x: warp 1 of the quad, lanes 0..15: row lane/2 < M, 8 k (16 B) half lane%2 of the step's 16 */
    const int xm = lane >> 1;
    const bool xlane = ct == 1 && lane < 16 && xm < M;
    const uint32_t xdst = ring_s + G2_SLOT_X + (uint32_t)((xm & 7) * 32 + (lane & 1) * 16);
    uint32_t xoff = (uint32_t)((xlane ? xm : 0) * ldx + jl * GS + 8 * (lane & 1)); /* bf16 elements into x */
    /* warps 2, 3: chunk zc = 32 (ct - 2) + lane < 40: zero words (zc < 8, tile zc/2) or scales
     * (zc - 8, tile (zc - 8)/8) of the quad's 4 tiles for a group */
    const int zc = ct >= 2 ? 32 * (ct - 2) + lane : 64;
    const bool zlane = zc < 40 && 4 * cql + (zc < 8 ? zc >> 1 : (zc - 8) >> 3) < NT;
    const char *zbase = zc < 8 ? (const char *)qz : (const char *)sc;
    uint32_t zoff = zc < 8 ? (uint32_t)((jl * ldq + cql * 32 + 4 * zc) * 4)
                           : (uint32_t)((jl * lds + cql * 256 + 8 * (zlane ? zc - 8 : 0)) * 2); /* bytes */
    const uint32_t zstep = zc < 8 ? (uint32_t)(ldq * 4) : (uint32_t)(lds * 2);                    /* per group */
    const uint32_t zdst = ring_s + (zc < 8 ? G2_SLOT_Z + 16 * zc : G2_SLOT_S + 16 * (zlane ? zc - 8 : 0));

    /* prologue: weights (and the zeros and scales) of the first P - 1 steps, then x once the
     * previous kernel is done; one commit group per step (the first holds every weight). */
#pragma unroll
    for (int s = 0; s < P - 1; s++) {
        g2_cp16_stream(wdst + s * G2_SLOT, qw + woff, wlane && s < nsteps, pol);
        woff += wstep;
        if (s % SPG == 0) {
            g2_cp16(zdst + s * G2_SLOT, zbase + zoff, zlane && s < nsteps);
            zoff += zstep;
        }
    }
    g2_trigger();
    pdl_wait();
#pragma unroll
    for (int s = 0; s < P - 1; s++) {
        g2_cp16_x(xdst + s * G2_SLOT, x + xoff, xlane && s < nsteps);
        xoff += 16;
        g2_commit();
    }

    /* reads of this lane in a slot: word g of tile ct in rows 4q + r (chunk 2ct + g/4 of the row,
     * swizzled), x row min(g, M - 1) k 4q .. 4q + 3, zero word g and scales of columns 8g .. 8g + 7
     * of tile ct */
    const int rw = 512 * q + 16 * ((2 * ct + (g >> 2)) ^ (2 * q)) + 4 * (g & 3);
    const int rx = G2_SLOT_X + 32 * min(g, M - 1) + 8 * q;
    const int rz = G2_SLOT_Z + 32 * ct + 4 * g, rs = G2_SLOT_S + 128 * ct + 16 * g;

    float acc[4][4], accg[4][4], xs[4]; /* as g2_flush says */
    g2_zero(acc, accg, xs);
#pragma unroll 1
    for (int jg = 0; jg < ngroups; jg++) {
        const int sb = (jg * SPG) & (P - 1); /* slot of the group's first step */
        uint32_t zw = 0u;
        uint4 sv = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int t = 0; t < SPG; t++) {
            const int s = jg * SPG + t;
            g2_wait<P - 2>();        /* this thread's copies of step s have landed */
            g2_quad_sync(1 + quad); /* ... and the quad's; the slot of step s - 1 is no longer read */
            {                        /* step s + P - 1 into the slot of step s - 1 */
                const bool live = s + P - 1 < nsteps;
                const uint32_t o = (uint32_t)(((sb + t + P - 1) & (P - 1)) * G2_SLOT);
                g2_cp16_stream(wdst + o, qw + woff, live && wlane, pol);
                g2_cp16_x(xdst + o, x + xoff, live && xlane);
                woff += wstep;
                xoff += 16;
                if ((t + P - 1) % SPG == 0) { /* that step starts a group */
                    g2_cp16(zdst + o, zbase + zoff, live && zlane);
                    zoff += zstep;
                }
                g2_commit();
            }
            const unsigned char *sl = ring + (sb + t) * G2_SLOT;
            if (t == 0) {
                zw = *reinterpret_cast<const uint32_t *>(sl + rz);
                sv = *reinterpret_cast<const uint4 *>(sl + rs);
            }
            uint32_t w[4];
#pragma unroll
            for (int r = 0; r < 4; r++)
                w[r] = *reinterpret_cast<const uint32_t *>(sl + rw + 128 * r);
            const uint2 xv = *reinterpret_cast<const uint2 *>(sl + rx);
            /* bytes of nibbles 0..3 (columns 0, 2, 4, 6) and 4..7 (1, 3, 5, 7), rows paired */
            const uint32_t lo01 = __byte_perm(w[0], w[1], 0x5410), hi01 = __byte_perm(w[0], w[1], 0x7632);
            const uint32_t lo23 = __byte_perm(w[2], w[3], 0x5410), hi23 = __byte_perm(w[2], w[3], 0x7632);
#pragma unroll
            for (int i = 0; i < 4; i++)
                awq_mma_bf16(accg[i], awq_nib2_bf16(lo01 >> (4 * i)), awq_nib2_bf16(hi01 >> (4 * i)),
                             awq_nib2_bf16(lo23 >> (4 * i)), awq_nib2_bf16(hi23 >> (4 * i)), xv.x, xv.y);
            g2_mma_ones(xs, xv.x, xv.y);
            if (t == SPG - 1) /* end of the group */
                g2_flush(acc, accg, xs, zw, sv);
        }
    }
    g2_wait<0>();
    __syncthreads(); /* every ring is idle: reuse the shared memory for the reduction */
    g2_epilogue(acc, reinterpret_cast<float *>(g2_smem), &s_last, QC, M, NT, N, splits, y, ldy, part, counters);
}

/* ---- plan: one wave of blocks ---- */

typedef struct g2_plan {
    int qc;     /* column quads per block (1, 2, 4); K runs per block = 4 / qc */
    int gb, gw; /* groups per block split, per run */
    int splits; /* block splits of K (grid.y) */
    unsigned gx;
} g2_plan;

#define G2_DEVS 64
/* (SMs << 8 | blocks per SM) per device and group; 0 = unknown */
static std::atomic<int> g2_cache[G2_DEVS][3];

template <int GS> static cudaError_t g2_setup(int *blocks)
{
    const void *fn = (const void *)awq_gemv2_kernel<GS>;
    const int smem = G2_SMEM;
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, fn, G2_THREADS, (size_t)smem);
    return e;
}

/* SMs and resident blocks per SM of the kernel for `group` on the current device (also sets its
 * shared-memory limit, needed before the first launch). Cached per device. */
static gm_status g2_resources(int64_t group, int *sms, int *blocks)
{
    int dev = 0, gi = group == 32 ? 0 : group == 64 ? 1 : 2;
    GM_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= 0 && dev < G2_DEVS) {
        int v = g2_cache[dev][gi].load(std::memory_order_acquire);
        if (v) {
            *sms = v >> 8, *blocks = v & 255;
            return GM_OK;
        }
    }
    GM_CUDA_CHECK(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev));
    cudaError_t e = gi == 0 ? g2_setup<32>(blocks) : gi == 1 ? g2_setup<64>(blocks) : g2_setup<128>(blocks);
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "k_gemv_awq: kernel setup (group %lld, %d bytes of shared memory): %s",
                       (long long)group, G2_SMEM, cudaGetErrorString(e));
    if (*blocks < 1)
        return gm_fail(GM_ERR_CUDA, "k_gemv_awq: no block of %d threads and %d bytes of shared memory fits an SM",
                       G2_THREADS, G2_SMEM);
    if (*blocks > 255)
        *blocks = 255;
    if (dev >= 0 && dev < G2_DEVS)
        g2_cache[dev][gi].store(*sms << 8 | *blocks, std::memory_order_release);
    return GM_OK;
}

/* Split the (column quads of 256) x (K/group groups) work over at most one wave of blocks, each
 * run a whole number of groups: the fewest groups per run (the critical path), then the most
 * runs (parallelism), then the fewest K splits (partial sums through the workspace). Depends
 * only on the shape and the device (never on M): every M gives the same sums. */
static void g2_make_plan(int64_t N, int64_t K, int64_t group, int sms, int blocks, g2_plan *p)
{
    const int64_t NQ = (N / 64 + 3) / 4, G = K / group, cap = (int64_t)sms * blocks;
    int64_t best_gw = INT64_MAX, best_runs = 0, best_splits = 0;
    for (int qc = 4; qc >= 1; qc /= 2) {
        const int64_t kw = G2_QUADS / qc, gx = (NQ + qc - 1) / qc;
        int64_t bs_max = cap / gx;
        bs_max = bs_max < 1 ? 1 : bs_max > G ? G : bs_max;
        for (int64_t bs = 1; bs <= bs_max; bs++) {
            const int64_t gb = (G + bs - 1) / bs, splits = (G + gb - 1) / gb, gw = (gb + kw - 1) / kw;
            const int64_t last = G - (splits - 1) * gb;
            const int64_t runs = (splits - 1) * ((gb + gw - 1) / gw) + (last + gw - 1) / gw; /* per column quad */
            const int64_t waves = (gx * splits + cap - 1) / cap, cost = gw * waves;
            if (cost < best_gw || (cost == best_gw && (runs > best_runs || (runs == best_runs && splits < best_splits)))) {
                best_gw = cost, best_runs = runs, best_splits = splits;
                p->qc = qc, p->gb = (int)gb, p->gw = (int)gw, p->splits = (int)splits, p->gx = (unsigned)gx;
            }
        }
    }
}

static size_t g2_ws_bytes(const g2_plan *p, int64_t N)
{
    if (p->splits <= 1)
        return 0;
    /* counters [N/64] padded to 256 bytes, then the partial sums */
    size_t counters = ((size_t)(N / 64) * sizeof(unsigned) + 255) & ~(size_t)255;
    return counters + (size_t)p->splits * AWQ_GEMV_MAX_ROWS * (size_t)N * sizeof(float);
}

static bool g2_shape_ok(int64_t N, int64_t K, int64_t group)
{
    return N > 0 && K > 0 && (group == 32 || group == 64 || group == 128) && K % group == 0 && N % 64 == 0 &&
           K <= INT32_MAX / 2 && N <= INT32_MAX / 2;
}

extern "C" size_t k_gemv_awq_workspace_bytes(int64_t N, int64_t K, int64_t group)
{
    if (!g2_shape_ok(N, K, group))
        return 0;
    int sms, blocks;
    if (g2_resources(group, &sms, &blocks))
        return 0;
    g2_plan p;
    g2_make_plan(N, K, group, sms, blocks, &p);
    return g2_ws_bytes(&p, N);
}

extern "C" gm_status k_gemv_awq(const void *x, int64_t M, int64_t ldx, const cpu_awq_w *w, void *y, int64_t ldy,
                                void *ws, size_t ws_bytes, cudaStream_t s)
{
    const char *what = "k_gemv_awq";
    gm_status st = awq_check_common(what, x, M, ldx, w, y, ldy);
    if (st)
        return st;
    if (M > AWQ_GEMV_MAX_ROWS)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: %lld rows; at most %d (use k_gemm_awq_mma)", what, (long long)M,
                       AWQ_GEMV_MAX_ROWS);
    if (w->group != 32 && w->group != 64 && w->group != 128)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: group %lld (32, 64 or 128 supported)", what, (long long)w->group);
    /* the cp.async kernel keeps 32-bit element offsets into qweight, scales and x (+ prefetch overrun) */
    const int64_t lim = INT32_MAX / 2, G = w->K / w->group;
    if (w->ldq > lim / (w->K + 16 * G2_STAGES) || w->ldq > lim / (4 * (G + G2_STAGES)) ||
        w->lds > lim / (2 * (G + G2_STAGES)) || ldx > lim / (M + 1) || w->K + 16 * G2_STAGES > lim / 2 ||
        ldy > lim / M)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: K %lld with strides ldq %lld lds %lld ldx %lld ldy %lld: "
                       "tensors too large for 32-bit offsets", what, (long long)w->K, (long long)w->ldq,
                       (long long)w->lds, (long long)ldx, (long long)ldy);
    int sms, blocks;
    GM_CHECK(g2_resources(w->group, &sms, &blocks));
    g2_plan p;
    g2_make_plan(w->N, w->K, w->group, sms, blocks, &p);
    size_t need = g2_ws_bytes(&p, w->N);
    if (need > 0 && (!ws || ws_bytes < need || ((uintptr_t)ws & 255u)))
        return gm_fail(GM_ERR_INVALID_ARG,
                       "%s: N %lld K %lld group %lld needs a 256-byte aligned workspace of %zu bytes (got %zu)", what,
                       (long long)w->N, (long long)w->K, (long long)w->group, need, ws ? ws_bytes : (size_t)0);
    unsigned *counters = (unsigned *)ws;
    float *part = need ? (float *)((char *)ws + (((size_t)(w->N / 64) * sizeof(unsigned) + 255) & ~(size_t)255))
                       : NULL;
    dim3 grid(p.gx, (unsigned)p.splits), block(G2_THREADS);
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x;
    const uint32_t *qw = (const uint32_t *)w->qweight, *qz = (const uint32_t *)w->qzeros;
    const __half *sc = (const __half *)w->scales;
    __nv_bfloat16 *yb = (__nv_bfloat16 *)y;
    cudaError_t e;
#define G2_LAUNCH(GS)                                                                                              \
    gm_launch(awq_gemv2_kernel<GS>, grid, block, (size_t)G2_SMEM, s, xb, (int)M, (int)ldx, qw, qz, sc, (int)w->K,  \
              (int)w->N, (int)w->ldq, (int)w->lds, p.qc, p.gb, p.gw, p.splits, yb, (int)ldy, part, counters)
    e = w->group == 32 ? G2_LAUNCH(32) : w->group == 64 ? G2_LAUNCH(64) : G2_LAUNCH(128);
#undef G2_LAUNCH
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "%s launch (M %lld K %lld N %lld group %lld): %s", what, (long long)M,
                       (long long)w->K, (long long)w->N, (long long)w->group, cudaGetErrorString(e));
    return GM_OK;
}
