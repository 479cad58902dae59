/* sample.cu - one 512-thread block per row. Greedy = one argmax pass over the row.
 * Otherwise, fast path: one pass counts, for nested thresholds p >= 4^-j, how many tokens and
 * how much mass lie above; the largest threshold whose set surely holds every token the
 * sampler can reach (the top-k, the top-p prefix, the draw) and has at most SMP_CAND tokens
 * (refining between two levels, geometrically, up to SMP_ROUNDS passes) is collected into
 * shared memory, sorted (bitonic), and walked in order exactly as cpu_sample walks its list. When no threshold qualifies (flat distributions), each selection
 * (k-th element by count, top-p cut by mass, the draw) is a radix search over the 32-bit
 * pattern of p (4 passes of 8 bits, histograms in shared memory) followed by an id-ordered scan
 * among equal p. Every pass recomputes p from the logits (the row stays in L2). */
#include "sample.cuh"

#include <float.h>
#include <math.h>
#include <string.h>

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"

#define SMP_THREADS 512
#define SMP_COPIES 8 /* histogram copies, to spread shared-memory atomics */
#define FX_SCALE 1099511627776.0f /* 2^40: fixed-point scale of masses */
#define SMP_LEVELS 12   /* thresholds 4^-j, j < SMP_LEVELS */
#define SMP_CAND 4096   /* most candidates the fast path sorts */
#define SMP_ROUNDS 3    /* threshold refinements before the radix path takes over */

typedef unsigned long long u64;

/* Rank order: p descending, then id ascending. A limit admits e iff e ranks at or before (key, id). */
struct rank_lim {
    uint32_t key;
    int32_t id;
};

__device__ __forceinline__ bool in_lim(uint32_t key, int32_t id, rank_lim L)
{
    return key > L.key || (key == L.key && id <= L.id);
}

__device__ __forceinline__ uint32_t p_key(const float *lg, int64_t i, float mx, float invt)
{
    float p = expf((lg[i] - mx) * invt);
    if (p != p)
        p = 0.0f;
    return __float_as_uint(p); /* p >= 0: the bit pattern orders like the value */
}

__device__ __forceinline__ u64 fx_of(uint32_t key) { return __float2ull_rn(__uint_as_float(key) * FX_SCALE); }

__device__ __forceinline__ bool cond_met(u64 x, double target, bool strict)
{
    return strict ? (double)x > target : (double)x >= target;
}

struct smp_radix {
    u64 hw[SMP_COPIES][256];
    uint32_t hc[SMP_COPIES][256];
    u64 tw[256];
    uint32_t tc[256];
};

struct smp_smem {
    union {
        smp_radix r;
        u64 cand[SMP_CAND]; /* (p bits << 32) | ~id: descending = cpu_sample's order */
    } u;
    uint32_t lvl_cnt[32][SMP_LEVELS];
    u64 lvl_mass[32][SMP_LEVELS + 1];
    float theta[SMP_LEVELS], theta_hi, theta_pick;
    int32_t n_cand;
    u64 wsum[32];
    u64 bcast_u64[2];
    uint32_t bcast_u32[2];
    int32_t found_id;
    float fred[32];
    int32_t ired[32];
    double dred[32];
};

/* Block-wide exclusive prefix sum of v (thread order); *total gets the sum. */
__device__ u64 block_excl_scan(u64 v, smp_smem *sm, u64 *total)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    u64 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u64 n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o)
            inc += n;
    }
    __syncthreads();
    if (lane == 31)
        sm->wsum[w] = inc;
    __syncthreads();
    if (w == 0) {
        u64 x = lane < (int)(blockDim.x >> 5) ? sm->wsum[lane] : 0ull;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            u64 n = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o)
                x += n;
        }
        sm->wsum[lane] = x; /* inclusive over warps */
    }
    __syncthreads();
    u64 before = w > 0 ? sm->wsum[w - 1] : 0ull;
    *total = sm->wsum[(blockDim.x >> 5) - 1];
    return before + inc - v;
}

/* Find the first element e in rank order, among those within L, whose cumulative weight
 * (inclusive) meets the target: >= target, or > target when strict. Weight = 1 (count_mode)
 * or p in fixed point. If none does (rounding), the last element within L. Returns e's key and
 * id, and the cumulative weight before e plus e's own weight in *before, *w_e. */
__device__ rank_lim select_ranked(const float *lg, int64_t V, float mx, float invt, rank_lim L, bool count_mode,
                                  double target, bool strict, smp_smem *sm, u64 *before, u64 *w_e)
{
    int tid = threadIdx.x;
    uint32_t prefix = 0, pmask = 0;
    u64 acc = 0;
    bool fallback = false;
    for (int pass = 0; pass < 4; pass++) {
        int shift = 24 - 8 * pass;
        for (int i = tid; i < SMP_COPIES * 256; i += blockDim.x) {
            (&sm->u.r.hw[0][0])[i] = 0;
            (&sm->u.r.hc[0][0])[i] = 0;
        }
        __syncthreads();
        int cp = (tid >> 5) % SMP_COPIES;
        for (int64_t i = tid; i < V; i += blockDim.x) {
            uint32_t key = p_key(lg, i, mx, invt);
            if (!in_lim(key, (int32_t)i, L) || (key & pmask) != prefix)
                continue;
            uint32_t d = (key >> shift) & 255u;
            atomicAdd(&sm->u.r.hw[cp][d], count_mode ? 1ull : fx_of(key));
            atomicAdd(&sm->u.r.hc[cp][d], 1u);
        }
        __syncthreads();
        if (tid < 256) {
            u64 a = 0;
            uint32_t c = 0;
            for (int k = 0; k < SMP_COPIES; k++)
                a += sm->u.r.hw[k][tid], c += sm->u.r.hc[k][tid];
            sm->u.r.tw[tid] = a;
            sm->u.r.tc[tid] = c;
        }
        __syncthreads();
        if (tid == 0) {
            int chosen = -1;
            u64 a = acc;
            bool fb = fallback;
            if (!fb) {
                for (int d = 255; d >= 0; d--) {
                    if (!sm->u.r.tc[d])
                        continue;
                    if (cond_met(a + sm->u.r.tw[d], target, strict)) {
                        chosen = d;
                        break;
                    }
                    a += sm->u.r.tw[d];
                }
            }
            if (chosen < 0) { /* take the last element: the smallest non-empty digit */
                fb = true;
                for (int d = 0; d < 256; d++)
                    if (sm->u.r.tc[d]) {
                        chosen = d;
                        break;
                    }
                if (chosen < 0)
                    chosen = 0;
            }
            sm->bcast_u32[0] = (uint32_t)chosen;
            sm->bcast_u32[1] = fb;
            sm->bcast_u64[0] = a;
        }
        __syncthreads();
        prefix |= sm->bcast_u32[0] << shift;
        pmask |= 255u << shift;
        fallback = sm->bcast_u32[1] != 0;
        acc = sm->bcast_u64[0];
        __syncthreads();
    }
    /* ties on p: walk ids in order; each thread owns a contiguous id range */
    int64_t per = (V + blockDim.x - 1) / blockDim.x;
    int64_t lo = tid * per, hi = lo + per < V ? lo + per : V;
    u64 local = 0;
    for (int64_t i = lo; i < hi; i++) {
        uint32_t key = p_key(lg, i, mx, invt);
        if (key == prefix && in_lim(key, (int32_t)i, L))
            local += count_mode ? 1ull : fx_of(key);
    }
    if (tid == 0)
        sm->found_id = -1;
    u64 tot;
    u64 excl = block_excl_scan(local, sm, &tot);
    __syncthreads();
    if (!fallback && cond_met(acc + excl + local, target, strict) && !cond_met(acc + excl, target, strict)) {
        u64 cum = acc + excl;
        for (int64_t i = lo; i < hi; i++) {
            uint32_t key = p_key(lg, i, mx, invt);
            if (key != prefix || !in_lim(key, (int32_t)i, L))
                continue;
            u64 w = count_mode ? 1ull : fx_of(key);
            if (cond_met(cum + w, target, strict)) {
                sm->found_id = (int32_t)i;
                sm->bcast_u64[0] = cum;
                sm->bcast_u64[1] = w;
                break;
            }
            cum += w;
        }
    }
    __syncthreads();
    if (sm->found_id < 0) { /* target not met within L (rounding): the last element of L, whose
                              * key is L's smallest (every pass took the lowest digit); largest id */
        u64 all_w = 0;
        int32_t last = -1;
        for (int64_t i = lo; i < hi; i++) {
            uint32_t key = p_key(lg, i, mx, invt);
            if (!in_lim(key, (int32_t)i, L))
                continue;
            all_w += count_mode ? 1ull : fx_of(key);
            if (key == prefix)
                last = (int32_t)i;
        }
        if (last >= 0)
            atomicMax(&sm->found_id, last);
        u64 tot_l;
        (void)block_excl_scan(all_w, sm, &tot_l);
        __syncthreads();
        if (tid == 0) {
            int32_t id = sm->found_id;
            u64 w = id < 0 ? 0ull : (count_mode ? 1ull : fx_of(p_key(lg, id, mx, invt)));
            sm->bcast_u64[1] = w;
            sm->bcast_u64[0] = tot_l - w;
        }
        __syncthreads();
    }
    rank_lim r = {prefix, sm->found_id};
    *before = sm->bcast_u64[0];
    *w_e = sm->bcast_u64[1];
    __syncthreads();
    return r;
}

/* The fast path; returns the token, or -1 when no threshold qualifies (then the caller takes
 * the radix path). All threads call it and get the same answer. */
__device__ int32_t sample_fast(const float *lg, int64_t V, float mx, float invt, const gm_sampling &sp, float u,
                               smp_smem *sm)
{
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
    if (tid < SMP_LEVELS)
        sm->theta[tid] = __uint_as_float((uint32_t)(127 - 2 * tid) << 23); /* 4^-j */
    if (tid == 0)
        sm->theta_hi = 2.0f;
    __syncthreads();
    float theta = -1.0f;
    u64 Zfx = 0;
    for (int round = 0; round < SMP_ROUNDS && theta < 0.0f; round++) {
        float th[SMP_LEVELS];
#pragma unroll
        for (int j = 0; j < SMP_LEVELS; j++)
            th[j] = sm->theta[j];
        uint32_t cnt[SMP_LEVELS];
        u64 mass[SMP_LEVELS + 1];
#pragma unroll
        for (int j = 0; j < SMP_LEVELS; j++)
            cnt[j] = 0, mass[j] = 0;
        mass[SMP_LEVELS] = 0;
        for (int64_t i = tid; i < V; i += blockDim.x) {
            float p = __uint_as_float(p_key(lg, i, mx, invt));
            u64 f = __float2ull_rn(p * FX_SCALE);
            mass[SMP_LEVELS] += f;
#pragma unroll
            for (int j = 0; j < SMP_LEVELS; j++) {
                bool in = p >= th[j];
                cnt[j] += in;
                mass[j] += in ? f : 0ull;
            }
        }
#pragma unroll
        for (int j = 0; j <= SMP_LEVELS; j++) {
            u64 m = mass[j];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                m += __shfl_xor_sync(0xffffffffu, m, o);
            if (lane == 0)
                sm->lvl_mass[w][j] = m;
            if (j < SMP_LEVELS) {
                uint32_t c = cnt[j];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    c += __shfl_xor_sync(0xffffffffu, c, o);
                if (lane == 0)
                    sm->lvl_cnt[w][j] = c;
            }
        }
        __syncthreads();
        if (tid == 0) {
            u64 tm[SMP_LEVELS + 1];
            uint32_t tc[SMP_LEVELS];
            for (int j = 0; j <= SMP_LEVELS; j++) {
                tm[j] = 0;
                for (int k = 0; k < nw; k++)
                    tm[j] += sm->lvl_mass[k][j];
                if (j < SMP_LEVELS) {
                    tc[j] = 0;
                    for (int k = 0; k < nw; k++)
                        tc[j] += sm->lvl_cnt[k][j];
                }
            }
            bool topk = sp.top_k > 0 && sp.top_k < V, topp = sp.top_p > 0.0f && sp.top_p < 1.0f;
            double Z = (double)tm[SMP_LEVELS];
            /* mass the candidates must hold (with a margin over rounding differences) */
            double need = topk ? 0.0 : (topp ? (double)sp.top_p * Z : (double)u * Z) * (1.0 + 1e-5) + 2.0;
            uint32_t need_cnt = topk ? (uint32_t)sp.top_k : 1u;
            int k = -1;
            for (int j = 0; j < SMP_LEVELS; j++)
                if (tc[j] >= need_cnt && (double)tm[j] >= need) {
                    k = j;
                    break;
                }
            float chosen = -1.0f;
            if (k >= 0 && tc[k] <= SMP_CAND) {
                chosen = sm->theta[k];
            } else if (k >= 0) { /* too many at the first sufficient level: refine between it and the one above */
                float hi = k > 0 ? sm->theta[k - 1] : sm->theta_hi, lo = sm->theta[k];
                float r = powf(lo / hi, 1.0f / SMP_LEVELS);
                sm->theta_hi = hi;
                for (int j = 0; j < SMP_LEVELS - 1; j++)
                    sm->theta[j] = hi * powf(r, (float)(j + 1));
                sm->theta[SMP_LEVELS - 1] = lo;
            } else {
                chosen = -2.0f; /* not even the lowest level holds enough: give up */
            }
            sm->theta_pick = chosen;
            sm->lvl_mass[0][0] = tm[SMP_LEVELS];
            sm->n_cand = 0;
        }
        __syncthreads();
        theta = sm->theta_pick;
        Zfx = sm->lvl_mass[0][0];
        __syncthreads();
        if (theta == -2.0f)
            return -1;
    }
    if (theta < 0.0f)
        return -1;
    /* collect p >= theta */
    int64_t vr = (V + blockDim.x - 1) / blockDim.x * blockDim.x;
    for (int64_t i = tid; i < vr; i += blockDim.x) {
        uint32_t key = i < V ? p_key(lg, i, mx, invt) : 0u;
        bool in = i < V && __uint_as_float(key) >= theta;
        unsigned b = __ballot_sync(0xffffffffu, in);
        int base = 0;
        if (lane == 0 && b)
            base = atomicAdd(&sm->n_cand, __popc(b));
        base = __shfl_sync(0xffffffffu, base, 0);
        int at = base + __popc(b & ((1u << lane) - 1u));
        if (in && at < SMP_CAND)
            sm->u.cand[at] = ((u64)key << 32) | (u64)(0xffffffffu - (uint32_t)i);
    }
    __syncthreads();
    int n = min(sm->n_cand, SMP_CAND), np = 1;
    while (np < n)
        np <<= 1;
    for (int i = n + tid; i < np; i += blockDim.x)
        sm->u.cand[i] = 0ull;
    __syncthreads();
    for (int k = 2; k <= np; k <<= 1) /* bitonic sort, descending */
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = tid; i < np; i += blockDim.x) {
                int ix = i ^ j;
                if (ix > i) {
                    u64 a = sm->u.cand[i], b = sm->u.cand[ix];
                    bool desc = (i & k) == 0;
                    if ((a < b) == desc) {
                        sm->u.cand[i] = b;
                        sm->u.cand[ix] = a;
                    }
                }
            }
            __syncthreads();
        }
    /* cpu_sample's walk over its sorted candidates, in double */
    if (tid == 0) {
        bool topk = sp.top_k > 0 && sp.top_k < V;
        int nk = topk ? sp.top_k : n;
        double total = 0.0;
        if (topk)
            for (int i = 0; i < nk; i++)
                total += (double)__uint_as_float((uint32_t)(sm->u.cand[i] >> 32));
        else
            total = (double)Zfx / (double)FX_SCALE;
        int keep = nk;
        if (sp.top_p > 0.0f && sp.top_p < 1.0f) {
            double need = (double)sp.top_p * total, cum = 0.0;
            for (int i = 0; i < nk; i++) {
                cum += (double)__uint_as_float((uint32_t)(sm->u.cand[i] >> 32));
                if (cum >= need) {
                    keep = i + 1;
                    break;
                }
            }
        }
        double mass = 0.0;
        if (keep == n && !topk && !(sp.top_p > 0.0f && sp.top_p < 1.0f))
            mass = total; /* everything is kept: the draw is over all tokens */
        else
            for (int i = 0; i < keep; i++)
                mass += (double)__uint_as_float((uint32_t)(sm->u.cand[i] >> 32));
        double target = (double)u * mass, cum = 0.0;
        int pick = keep - 1;
        for (int i = 0; i < keep; i++) {
            cum += (double)__uint_as_float((uint32_t)(sm->u.cand[i] >> 32));
            if (cum > target) {
                pick = i;
                break;
            }
        }
        sm->n_cand = (int32_t)(0xffffffffu - (uint32_t)(sm->u.cand[pick] & 0xffffffffu));
    }
    __syncthreads();
    int32_t id = sm->n_cand;
    __syncthreads();
    return id;
}

/* The token of one row lg [V] (not written) under sp with the draw at counter; every thread of the block
 * calls it and gets the same id (-1 when V <= 0, GM_SAMPLE_NONFINITE for a row with a NaN or +Inf or
 * no finite value). */
__device__ int32_t sample_one(const float *lg, int64_t V, const gm_sampling &sp, uint64_t counter, smp_smem &sm)
{
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

    /* argmax, ties to the lowest id (also gives the max for the softmax); each thread walks its
     * elements in increasing id order and keeps the first of equal values (NaN counts as -inf, so a
     * NaN logit never wins, as in cpu_argmax past id 0). A 16-byte aligned row is
     * read as float4, four loads in flight per thread (the row is 1 MB at Gemma's vocabulary). */
    float bv = -INFINITY;
    int32_t bi = INT32_MAX;
    int64_t done = 0;
    bool bad = false; /* a NaN or +Inf in the row (GM_SAMPLE_NONFINITE) */
    if ((reinterpret_cast<uintptr_t>(lg) & 15) == 0) {
        const float4 *l4 = reinterpret_cast<const float4 *>(lg);
        const int64_t V4 = V / 4, step = blockDim.x;
        for (int64_t j = tid; j < V4; j += 4 * step) {
            float4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (j + u * step < V4)
                    v[u] = l4[j + u * step];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int64_t jj = j + u * step;
                if (jj < V4) {
                    float x[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        bad |= !(x[e] <= FLT_MAX);
                        x[e] = isnan(x[e]) ? -INFINITY : x[e]; /* NaN never wins */
                        if (x[e] > bv || bi == INT32_MAX)
                            bv = x[e], bi = (int32_t)(4 * jj + e);
                    }
                }
            }
        }
        done = 4 * V4;
    }
    for (int64_t i = done + tid; i < V; i += blockDim.x) {
        float x = lg[i];
        bad |= !(x <= FLT_MAX);
        x = isnan(x) ? -INFINITY : x;
        if (x > bv || bi == INT32_MAX)
            bv = x, bi = (int32_t)i;
    }
    bad = __syncthreads_or(bad);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi) || (bi == INT32_MAX && oi != INT32_MAX))
            bv = ov, bi = oi;
    }
    if (lane == 0)
        sm.fred[w] = bv, sm.ired[w] = bi;
    __syncthreads();
    if (w == 0) {
        int nw = blockDim.x >> 5;
        bv = lane < nw ? sm.fred[lane] : -INFINITY;
        bi = lane < nw ? sm.ired[lane] : INT32_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi) || (bi == INT32_MAX && oi != INT32_MAX))
                bv = ov, bi = oi;
        }
        if (lane == 0)
            sm.fred[0] = bv, sm.ired[0] = bi;
    }
    __syncthreads();
    int32_t amax = sm.ired[0];
    float mx = sm.fred[0];
    __syncthreads(); /* every thread has read fred[0] / ired[0] before anything reuses them */
    if (V > 0 && (bad || mx == -INFINITY)) /* as cpu_sample: no token from a non-finite row (bad, mx: the block's) */
        return GM_SAMPLE_NONFINITE;
    if (gm_sampling_is_greedy(&sp) || V <= 0)
        return V > 0 ? amax : -1;
    float invt = 1.0f / sp.temperature;
    float u = gm_rng_uniform(sp.seed, counter);
    int32_t fast = sample_fast(lg, V, mx, invt, sp, u, &sm);
    if (fast >= 0)
        return fast;
    rank_lim all = {0u, (int32_t)(V - 1)};
    u64 before, we;

    /* top-k set */
    rank_lim lk = all;
    if (sp.top_k > 0 && sp.top_k < V)
        lk = select_ranked(lg, V, mx, invt, all, true, (double)sp.top_k, false, &sm, &before, &we);

    /* its mass */
    u64 local = 0;
    for (int64_t i = tid; i < V; i += blockDim.x) {
        uint32_t key = p_key(lg, i, mx, invt);
        if (in_lim(key, (int32_t)i, lk))
            local += fx_of(key);
    }
    u64 total;
    (void)block_excl_scan(local, &sm, &total);
    __syncthreads();

    /* top-p cut */
    rank_lim lp = lk;
    u64 mass = total;
    if (sp.top_p > 0.0f && sp.top_p < 1.0f) {
        double need = (double)sp.top_p * (double)total;
        lp = select_ranked(lg, V, mx, invt, lk, false, need, false, &sm, &before, &we);
        mass = before + we;
    }

    /* the draw */
    double target = (double)u * (double)mass;
    rank_lim pick = select_ranked(lg, V, mx, invt, lp, false, target, true, &sm, &before, &we);
    return pick.id;
}


/* ---- the extras of k_sample_ex (sample.cuh), one block per row ---- */

__device__ __forceinline__ int32_t pen_home(int32_t tok, int32_t cap)
{
    return (int32_t)(((uint64_t)((uint32_t)tok * 2654435761u) * (uint32_t)cap) >> 32);
}

/* Row r's new tokens into its slot's table (emptied first on RESET). Ends with the block in step. */
__device__ void pen_update(const k_sample_aux &a, int32_t r, int flags, int32_t n_prompt, int32_t *keys,
                           int32_t *counts)
{
    int tid = threadIdx.x;
    if (flags & GM_PEN_RESET) {
        for (int32_t k = tid; k < a.cap; k += blockDim.x)
            keys[k] = -1, counts[k] = 0;
        __syncthreads();
    }
    int32_t q0 = a.q_start[r], n = a.n_new[r], p0 = a.start_pos[r];
    for (int32_t t = tid; t < n; t += blockDim.x) {
        int32_t tok = a.ids[q0 + t];
        if (tok < 0)
            continue;
        int32_t k = pen_home(tok, a.cap);
        for (int32_t probe = 0; probe < a.cap; probe++) {
            int32_t was = atomicCAS(&keys[k], -1, tok);
            if (was == -1 || was == tok) {
                if (p0 + t >= n_prompt)
                    atomicAdd(&counts[k], 1);
                break;
            }
            k = k + 1 == a.cap ? 0 : k + 1;
        }
    }
    __syncthreads();
}

/* The entry of tok in a slot's table, or -1. */
__device__ int32_t pen_find(const int32_t *keys, int32_t cap, int32_t tok)
{
    int32_t k = pen_home(tok, cap);
    for (int32_t probe = 0; probe < cap; probe++) {
        int32_t key = keys[k];
        if (key == tok)
            return k;
        if (key == -1)
            return -1;
        k = k + 1 == cap ? 0 : k + 1;
    }
    return -1;
}

/* Block-wide reductions (every thread gets the result; the block must be in step). */
__device__ float block_max(float v, smp_smem &sm)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0)
        sm.fred[w] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int k = 0; k < nw; k++)
        m = fmaxf(m, sm.fred[k]);
    __syncthreads();
    return m;
}

__device__ double block_sum(double v, smp_smem &sm)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0)
        sm.dred[w] = v;
    __syncthreads();
    double t = 0.0;
    for (int k = 0; k < nw; k++) /* the same order in every thread: one value for all */
        t += sm.dred[k];
    __syncthreads();
    return t;
}

/* True when (v, i) ranks before (bv, bi): larger logit, then lower id. */
__device__ __forceinline__ bool lp_before(float v, int32_t i, float bv, int32_t bi)
{
    return v > bv || (v == bv && i < bi);
}

/* cpu_logprobs on the GPU: returns lse to every thread; thread 0 writes the n_top most likely ids and
 * their log-probabilities. Each thread keeps the best n_top of its elements, sorted; then n_top rounds
 * of a block-wide best among the threads' heads. */
__device__ double logprobs_row(const float *lg, int64_t V, int32_t n_top, int32_t *top_ids, float *top_lps,
                               smp_smem &sm)
{
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
    if (n_top > V)
        n_top = (int32_t)V;
    float tv[GM_MAX_TOP_LOGPROBS];
    int32_t ti[GM_MAX_TOP_LOGPROBS];
    int32_t cnt = 0;
    float m = -INFINITY;
    for (int64_t i = tid; i < V; i += blockDim.x) {
        float x = lg[i];
        x = x == x ? x : -INFINITY;
        m = fmaxf(m, x);
        if (n_top > 0 && (cnt < n_top || x > tv[n_top - 1])) { /* ids grow: equal logits rank after */
            int32_t at = cnt < n_top ? cnt++ : n_top - 1;
            while (at > 0 && x > tv[at - 1]) {
                tv[at] = tv[at - 1];
                ti[at] = ti[at - 1];
                at--;
            }
            tv[at] = x;
            ti[at] = (int32_t)i;
        }
    }
    float mx = block_max(m, sm);
    double sum = 0.0;
    if (isfinite(mx))
        for (int64_t i = tid; i < V; i += blockDim.x) {
            float e = expf(lg[i] - mx);
            if (e == e)
                sum += (double)e;
        }
    sum = block_sum(sum, sm);
    double lse = isfinite(mx) ? (double)mx + log(sum) : (double)mx;
    int32_t h = 0;
    for (int32_t k = 0; k < n_top; k++) {
        float bv = h < cnt ? tv[h] : -INFINITY;
        int32_t bi = h < cnt ? ti[h] : INT32_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (lp_before(ov, oi, bv, bi))
                bv = ov, bi = oi;
        }
        if (lane == 0)
            sm.fred[w] = bv, sm.ired[w] = bi;
        __syncthreads();
        bv = sm.fred[0], bi = sm.ired[0];
        for (int j = 1; j < nw; j++)
            if (lp_before(sm.fred[j], sm.ired[j], bv, bi))
                bv = sm.fred[j], bi = sm.ired[j];
        __syncthreads();
        if (h < cnt && ti[h] == bi)
            h++;
        if (tid == 0) {
            top_ids[k] = bi;
            top_lps[k] = (float)((double)bv - lse);
        }
    }
    return lse;
}

__global__ void __launch_bounds__(SMP_THREADS)
    sample_kernel(float *logits, int64_t ld, int64_t V, const gm_sampling *__restrict__ params,
                  const uint64_t *__restrict__ counters, int32_t *__restrict__ tokens, k_sample_aux aux, int has_aux)
{
    __shared__ smp_smem sm;
    pdl_wait();
    int row = blockIdx.x, tid = threadIdx.x;
    float *lg = logits + (int64_t)row * ld;
    gm_sampling sp = params[row];
    int flags = has_aux ? aux.pen[row] : 0;
    int32_t n_mask = has_aux ? aux.mask_n[row] : 0;
    bool want_lp = has_aux && gm_sampling_wants_logprobs(&sp);
    int64_t at = (int64_t)(has_aux ? aux.slot[row] : 0) * aux.cap;
    int32_t *keys = aux.keys + at, *counts = aux.counts + at;
    float *raw = aux.raw + at;
    if (flags & GM_PEN_ON)
        pen_update(aux, row, flags, sp.n_prompt, keys, counts);
    double lse = 0.0;
    if (want_lp)
        lse = logprobs_row(lg, V, sp.top_logprobs, aux.top_ids + (int64_t)row * GM_MAX_TOP_LOGPROBS,
                           aux.top_lps + (int64_t)row * GM_MAX_TOP_LOGPROBS, sm);
    if (flags & GM_PEN_APPLY) {
        for (int32_t k = tid; k < aux.cap; k += blockDim.x) {
            int32_t tok = keys[k];
            if (tok < 0 || tok >= V)
                continue;
            float v = lg[tok];
            if (want_lp)
                raw[k] = v;
            lg[tok] = gm_penalize_logit(v, counts[k], &sp);
        }
        __syncthreads();
    }
    if (n_mask > 0) {
        const int32_t *ids = aux.mask_ids + aux.mask_off[row];
        for (int32_t j = tid; j < n_mask; j += blockDim.x)
            if (ids[j] >= 0 && ids[j] < V)
                lg[ids[j]] = -INFINITY;
        __syncthreads();
    }
    int32_t tok = sample_one(lg, V, sp, counters[row], sm);
    if (tid == 0) {
        tokens[row] = tok;
        if (want_lp) {
            float x = tok >= 0 ? lg[tok] : -INFINITY;
            int32_t k = tok >= 0 && (flags & GM_PEN_APPLY) ? pen_find(keys, aux.cap, tok) : -1;
            if (k >= 0)
                x = raw[k];
            aux.lp[row] = tok >= 0 ? (float)((double)x - lse) : -INFINITY;
        }
    }
}

__global__ void feed_kernel(const int32_t *tokens, const int32_t *slots, int32_t n, int32_t *last_tok)
{
    pdl_wait();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && slots[i] >= 0) /* GM_SAMPLE_NONFINITE feeds a valid id; gemmad has ended that sequence */
        last_tok[slots[i]] = tokens[i] >= 0 ? tokens[i] : 0;
}

__global__ void resolve_kernel(int32_t *ids, const int32_t *tok_slot, int64_t T, const int32_t *last_tok)
{
    pdl_wait();
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < T && ids[i] < 0)
        ids[i] = last_tok[tok_slot[i]];
}

extern "C" gm_status k_sample_ex(float *logits, int64_t ld, int64_t vocab, int32_t n, const gm_sampling *params,
                                 const uint64_t *counters, int32_t *tokens, const k_sample_aux *aux, cudaStream_t s)
{
    if (n <= 0)
        return GM_OK;
    if (vocab > INT32_MAX)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_sample: vocabulary of %lld", (long long)vocab);
    k_sample_aux a;
    memset(&a, 0, sizeof a);
    if (aux) {
        a = *aux;
        if (!a.pen || !a.slot || !a.mask_n || !a.lp || !a.top_ids || !a.top_lps || (a.keys && a.cap <= 0))
            return gm_fail(GM_ERR_INVALID_ARG, "k_sample_ex: incomplete extras");
    }
    GM_CUDA_CHECK(gm_launch(sample_kernel, dim3((unsigned)n), dim3(SMP_THREADS), 0, s, logits, ld, vocab, params, counters,
                            tokens, a, aux ? 1 : 0));
    return GM_OK;
}

extern "C" gm_status k_sample(const float *logits, int64_t ld, int64_t vocab, int32_t n, const gm_sampling *params,
                              const uint64_t *counters, int32_t *tokens, cudaStream_t s)
{
    /* without extras the kernel never writes the logits */
    return k_sample_ex(const_cast<float *>(logits), ld, vocab, n, params, counters, tokens, NULL, s);
}

extern "C" gm_status k_feed_tokens(const int32_t *tokens, const int32_t *slots, int32_t n, int32_t *last_tok,
                                   cudaStream_t s)
{
    if (n <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(feed_kernel, dim3(gm_div_up(n, 256)), dim3(256), 0, s, tokens, slots, n, last_tok));
    return GM_OK;
}

extern "C" gm_status k_resolve_ids(int32_t *ids, const int32_t *tok_slot, int64_t T, const int32_t *last_tok,
                                   cudaStream_t s)
{
    if (T <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(resolve_kernel, dim3(gm_div_up(T, 256)), dim3(256), 0, s, ids, tok_slot, T, last_tok));
    return GM_OK;
}

/* ---- Gemma 2's final soft-cap ---- */

__global__ void logits_softcap_kernel(float *__restrict__ logits, int64_t ld, int64_t vocab, int32_t n, float cap)
{
    pdl_wait();
    const int64_t total = (int64_t)n * vocab;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float *p = logits + (i / vocab) * ld + i % vocab;
        *p = tanhf(*p / cap) * cap; /* as cpu_softcap */
    }
}

extern "C" gm_status k_logits_softcap(float *logits, int64_t ld, int64_t vocab, int32_t n, float cap, cudaStream_t s)
{
    if (!(cap > 0.0f) || !isfinite(cap) || ld < vocab)
        return gm_fail(GM_ERR_INVALID_ARG, "k_logits_softcap: cap %g, ld %lld, vocab %lld", (double)cap, (long long)ld,
                       (long long)vocab);
    if (n <= 0 || vocab <= 0)
        return GM_OK;
    int64_t blocks = ((int64_t)n * vocab + 255) / 256;
    GM_CUDA_CHECK(gm_launch(logits_softcap_kernel, dim3((unsigned)(blocks < 1056 ? blocks : 1056)), dim3(256), 0, s,
                            logits, ld, vocab, n, cap));
    return GM_OK;
}
