/* rope_kv.cu - one block per token: cos/sin once into shared memory, then 16-byte
 * chunks of the (i, i + hd/2) halves of every q and k head, then the v copy. */
#include "rope_kv.cuh"

#include <math.h>
#include <stdlib.h>

#include "../../common/dtype.h"

#include "cuda_check.h"
#include "cuda_util.cuh"
#include "launch.cuh"
#include "quant_fp8.cuh"

#define ROPE_THREADS 256

/* QKN: Gemma 3's QK-norm first: the cph = hd/16 threads of a head (consecutive lanes of one warp, since
 * blockDim and cph are powers of two) sum its squares by shuffles, then scale by rsqrt(mean + eps) * w1
 * and round to bf16, before the rotation. */
template <bool QKN>
__global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_kernel(bf16 *__restrict__ qkv, int64_t ld, int32_t nh, int32_t nkv, int32_t hd,
                   const int32_t *__restrict__ pos, const float *__restrict__ table,
                   const int32_t *__restrict__ slot, bf16 *__restrict__ kp, bf16 *__restrict__ vp, int32_t bs,
                   const float *__restrict__ qn, const float *__restrict__ kn, float eps)
{
    pdl_wait();
    __shared__ float cs[256], sn[256];
    int64_t t = blockIdx.x;
    int half = hd / 2;
    const float *tp = table + (int64_t)pos[t] * hd;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        cs[i] = tp[2 * i];
        sn[i] = tp[2 * i + 1];
    }
    __syncthreads();
    bf16 *row = qkv + t * ld;
    int32_t sl = slot[t];
    int64_t blk = sl >= 0 ? sl / bs : 0, off = sl >= 0 ? sl % bs : 0;
    int cph = half / 8; /* 16-byte chunks per half head */
    int n_rot = (nh + nkv) * cph;
    int n_loop = QKN ? (n_rot + 31) & ~31 : n_rot; /* QKN: whole warps (the shuffles) */
    for (int w = threadIdx.x; w < n_loop; w += blockDim.x) {
        const bool act = !QKN || w < n_rot;
        int h = w / cph, c = (w % cph) * 8;
        uint4 *lo_p = reinterpret_cast<uint4 *>(row + (int64_t)h * hd + c);
        uint4 *hi_p = reinterpret_cast<uint4 *>(row + (int64_t)h * hd + c + half);
        float lo[8], hi[8], a[8], b[8];
        if (act) {
            bf16x8_to_f32(*lo_p, lo);
            bf16x8_to_f32(*hi_p, hi);
        }
        if constexpr (QKN) {
            float ss = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++)
                ss += act ? lo[j] * lo[j] + hi[j] * hi[j] : 0.0f;
            for (int o = 1; o < cph; o <<= 1)
                ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if (!act)
                continue;
            const float r = rsqrtf(ss / (float)hd + eps), *w1 = h < nh ? qn : kn;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                lo[j] = round_bf16(lo[j] * r * w1[c + j]);
                hi[j] = round_bf16(hi[j] * r * w1[c + j + half]);
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float cj = cs[c + j], sj = sn[c + j];
            a[j] = round_bf16(round_bf16(lo[j] * cj) + round_bf16(-hi[j] * sj));
            b[j] = round_bf16(round_bf16(hi[j] * cj) + round_bf16(lo[j] * sj));
        }
        uint4 va = f32_to_bf16x8(a), vb = f32_to_bf16x8(b);
        if (h < nh) {
            *lo_p = va;
            *hi_p = vb;
        } else {
            *lo_p = va; /* keep the rotated k in qkv too (tests and debugging read it) */
            *hi_p = vb;
            if (sl >= 0) {
                bf16 *dst = kp + ((blk * nkv + (h - nh)) * bs + off) * hd;
                *reinterpret_cast<uint4 *>(dst + c) = va;
                *reinterpret_cast<uint4 *>(dst + c + half) = vb;
            }
        }
    }
    if (sl < 0)
        return;
    int cpv = hd / 8;
    const bf16 *vsrc = row + (int64_t)(nh + nkv) * hd;
    for (int w = threadIdx.x; w < nkv * cpv; w += blockDim.x) {
        int g = w / cpv, c = (w % cpv) * 8;
        bf16 *dst = vp + ((blk * nkv + g) * bs + off) * hd;
        *reinterpret_cast<uint4 *>(dst + c) = *reinterpret_cast<const uint4 *>(vsrc + (int64_t)g * hd + c);
    }
}

extern "C" void k_rope_inv_freq(float theta, int32_t head_dim, float *inv_freq)
{
    for (int32_t i = 0; i < head_dim / 2; i++)
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
}

extern "C" gm_status k_rope_table(float *table, int32_t max_pos, int32_t hd, float theta, float scale)
{
    if (hd % 2 || hd > 512 || max_pos < 1 || !(scale > 0.0f) || !(theta > 0.0f))
        return gm_fail(GM_ERR_INVALID_ARG, "k_rope_table: head_dim %d, max_pos %d, theta %g, scale %g", hd, max_pos,
                       (double)theta, (double)scale);
    float inv[256];
    k_rope_inv_freq(theta, hd, inv);
    for (int32_t i = 0; i < hd / 2; i++)
        inv[i] = inv[i] / scale; /* as cpu_rope_scaled (exact for scale 1) */
    size_t n = (size_t)max_pos * (size_t)hd;
    float *h = (float *)malloc(n * sizeof(float));
    if (!h)
        return gm_fail(GM_ERR_NOMEM, "k_rope_table: no host memory for %d positions", max_pos);
    for (int32_t p = 0; p < max_pos; p++)
        for (int32_t i = 0; i < hd / 2; i++) {
            float ang = (float)p * inv[i];
            h[(size_t)p * hd + 2 * i] = gm_round_bf16((float)cos((double)ang));
            h[(size_t)p * hd + 2 * i + 1] = gm_round_bf16((float)sin((double)ang));
        }
    cudaError_t e = cudaMemcpy(table, h, n * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess)
        return gm_fail(GM_ERR_CUDA, "k_rope_table: upload: %s", cudaGetErrorString(e));
    return GM_OK;
}

extern "C" gm_status k_rope_kv_write(void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                                     const int32_t *pos, const float *rope_table, const int32_t *slot, void *k_pool,
                                     void *v_pool, int32_t bs, cudaStream_t s)
{
    if (hd % 16 || hd > 512 || ld % 8 || bs < 1)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_rope_kv_write: head_dim %d (needs %% 16, <= 512), ld %lld, block %d",
                       hd, (long long)ld, bs);
    if (T <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(rope_kv_kernel<false>, dim3((unsigned)T), dim3(ROPE_THREADS), 0, s, (bf16 *)qkv, ld, nh,
                            nkv, hd, pos, rope_table, slot, (bf16 *)k_pool, (bf16 *)v_pool, bs, (const float *)NULL,
                            (const float *)NULL, 0.0f));
    return GM_OK;
}

extern "C" gm_status k_rope_kv_write_qkn(void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                                         const int32_t *pos, const float *rope_table, const k_qk_norm *qkn,
                                         const int32_t *slot, void *k_pool, void *v_pool, int32_t bs, cudaStream_t s)
{
    if (!qkn || !qkn->q_w1 || !qkn->k_w1 || !(qkn->eps >= 0.0f))
        return gm_fail(GM_ERR_INVALID_ARG, "k_rope_kv_write_qkn: no QK-norm weights");
    if (hd < 32 || hd > 512 || (hd & (hd - 1)) || ld % 8 || bs < 1)
        return gm_fail(GM_ERR_UNSUPPORTED, "k_rope_kv_write_qkn: head_dim %d (a power of two, 32..512), ld %lld, "
                       "block %d", hd, (long long)ld, bs);
    if (T <= 0)
        return GM_OK;
    GM_CUDA_CHECK(gm_launch(rope_kv_kernel<true>, dim3((unsigned)T), dim3(ROPE_THREADS), 0, s, (bf16 *)qkv, ld, nh,
                            nkv, hd, pos, rope_table, slot, (bf16 *)k_pool, (bf16 *)v_pool, bs, qkn->q_w1, qkn->k_w1,
                            qkn->eps));
    return GM_OK;
}

/* ---- FP8 KV write ---- */

/* One block per token; 8 elements per thread-step over the token's nkv K heads then V heads. */
__global__ void kv_write_fp8_kernel(const bf16 *__restrict__ qkv, int64_t ld, int32_t nh, int32_t nkv, int32_t hd,
                                    const int32_t *__restrict__ slot, float inv, uint8_t *__restrict__ kp,
                                    uint8_t *__restrict__ vp, int32_t bs)
{
    int64_t t = blockIdx.x;
    int32_t sl = slot[t];
    if (sl < 0)
        return;
    int64_t blk = sl / bs, off = sl % bs;
    const bf16 *src = qkv + t * ld + (int64_t)nh * hd; /* k heads, then v heads */
    int c8 = hd / 8, n = 2 * nkv * c8;
    for (int w = threadIdx.x; w < n; w += blockDim.x) {
        int kv = w / (nkv * c8), g = (w / c8) % nkv, c = (w % c8) * 8;
        float f[8];
        bf16x8_to_f32(*reinterpret_cast<const uint4 *>(src + ((int64_t)kv * nkv + g) * hd + c), f);
        uint8_t *dst = (kv ? vp : kp) + ((blk * nkv + g) * bs + off) * hd + c;
        *reinterpret_cast<uint2 *>(dst) = f32x8_to_fp8(f, inv);
    }
}

extern "C" gm_status k_kv_write_fp8(const void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                                    const int32_t *slot, float kv_scale, void *k_pool, void *v_pool, int32_t bs,
                                    cudaStream_t s)
{
    if (hd % 8 || ld % 8 || bs < 1 || !(kv_scale > 0.0f))
        return gm_fail(GM_ERR_UNSUPPORTED, "k_kv_write_fp8: head_dim %d, ld %lld, block %d, kv_scale %g", hd,
                       (long long)ld, bs, (double)kv_scale);
    if (T <= 0)
        return GM_OK;
    kv_write_fp8_kernel<<<(unsigned)T, 128, 0, s>>>((const bf16 *)qkv, ld, nh, nkv, hd, slot, 1.0f / kv_scale,
                                                    (uint8_t *)k_pool, (uint8_t *)v_pool, bs);
    GM_LAUNCH_CHECK();
    return GM_OK;
}
