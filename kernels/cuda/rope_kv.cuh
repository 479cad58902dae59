/* rope_kv.cuh - RoPE on q and k fused with the paged KV-cache write (bf16 pool; Gemma 3's QK-norm fused
 * in front), and the FP8 pool's writer. CPU twins: kernels/cpu/rope_kv.h (cpu_rope, cpu_rope_scaled,
 * cpu_kv_write, cpu_fp8_kv_write) and kernels/cpu/norm.h (cpu_head_rmsnorm). */
#ifndef GM_K_ROPE_KV_CUH
#define GM_K_ROPE_KV_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* inv_freq[i] = 1 / theta^(2i/head_dim) in float32, i < head_dim/2 (host; as cpu_rope). */
void k_rope_inv_freq(float theta, int32_t head_dim, float *inv_freq);

/* Gemma 3's QK-norm: each head vector of q and of k gets the Gemma RMSNorm x * rsqrt(mean(x^2) + eps) * w1
 * (float32, rounded to bf16 as HF stores it) before RoPE. q_w1, k_w1 [hd] f32 (device) hold 1 + weight. */
typedef struct k_qk_norm {
    const float *q_w1, *k_w1;
    float eps;
} k_qk_norm;

/* Fill table [max_pos, hd/2, 2] f32 (device) with (cos, sin) of the float angle pos * inv_freq[i] with
 * inv_freq[i] = k_rope_inv_freq's / scale (linear RoPE scaling, Gemma 3's full layers; scale 1 = none),
 * computed in double on the host as cpu_rope_scaled does, then rounded to bf16 (HF casts cos and sin to
 * the activation dtype). Synchronous. scale > 0. */
gm_status k_rope_table(float *table, int32_t max_pos, int32_t hd, float theta, float scale);

/* qkv [T, ld] bf16 holds, per token, q heads at columns [0, nh*hd), k heads at [nh*hd, (nh+nkv)*hd)
 * and v heads after them (the fused QKV projection's output). Rotates q and k in place
 * (rotate-half over all hd dims; products rounded to bf16 as HF does), then writes token t's k
 * and v to slot[t] of the pools (slot = block * bs + offset; < 0 = skip, for padding rows).
 * pos [T] int32 (< the table's max_pos); rope_table from k_rope_table (device);
 * k_pool, v_pool [num_blocks, nkv, bs, hd] bf16. hd % 16 == 0, hd <= 512. */
gm_status k_rope_kv_write(void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd, const int32_t *pos,
                          const float *rope_table, const int32_t *slot, void *k_pool, void *v_pool, int32_t bs,
                          cudaStream_t s);

/* k_rope_kv_write with Gemma 3's QK-norm first (qkn, not NULL): every q and k head is RMS-normed and rounded
 * to bf16, then rotated and written as k_rope_kv_write does. */
gm_status k_rope_kv_write_qkn(void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                              const int32_t *pos, const float *rope_table, const k_qk_norm *qkn, const int32_t *slot,
                              void *k_pool, void *v_pool, int32_t bs, cudaStream_t s);

/* The FP8 KV-cache write: token t's K and V (already rotated, in the fused qkv row: k heads at
 * columns [nh*hd, (nh+nkv)*hd), v heads after them) go to slot[t] (= block * bs + offset; < 0 =
 * skip) of the e4m3 pools as e4m3(x / kv_scale). Run k_rope_kv_write first with every slot < 0
 * (it still rotates q and k in qkv) so that nothing is written to a bf16 pool.
 * qkv [T, ld] bf16; slot [T] int32; k_pool, v_pool [num_blocks, nkv, bs, hd] e4m3. hd % 8 == 0. */
gm_status k_kv_write_fp8(const void *qkv, int64_t ld, int64_t T, int32_t nh, int32_t nkv, int32_t hd,
                         const int32_t *slot, float kv_scale, void *k_pool, void *v_pool, int32_t bs,
                         cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
